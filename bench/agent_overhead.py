"""What the drone agent and the SSH path cost on top of plain borg, measured on one machine.

One generated data set (incompressible random files and compressible text) is backed up by
four modes, each into its own fresh repository with its own fresh BORG_BASE_DIR (cache,
security and config), so every mode does exactly the same work:

- ``plain borg``: what a cron job would run: ``borg create --compression lz4 REPO::NAME DATA``;
- ``borg with the agent's flags``: borg run directly with the argv the agent builds
  (``--progress --json --log-json`` ...), its output thrown away: borg's share of the cost;
- ``agent, local``: the drone agent started as sshd starts it (``serve`` with
  ``SSH_ORIGINAL_COMMAND=create``, the job on stdin, stdin kept open, every output line parsed
  with the coordinator's parser);
- ``agent over ssh``: ``transport.run_agent`` through a real OpenSSH sshd on 127.0.0.1 whose
  key forces the agent: the whole path the coordinator uses.

Each mode runs twice per round: a first (full) backup into the empty repository and a second
one of the unchanged data (deduplicated, files cache warm). Modes are interleaved (their order
rotates from round to round) and the table shows medians over the rounds and the ratio of each
median to plain borg's. The agents' job comes from ``jobs.build_job``, as the coordinator
builds it (lz4, like the plain run).

Run it through ``scripts/bench`` (see bench/README.md); ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncssh

from backup_coordinator.config import DroneConfig
from backup_coordinator.jobs import build_job, hello_job
from backup_coordinator.model import DroneSettings, SshTarget
from backup_coordinator.progress import ProgressTracker
from backup_coordinator.protocol import AgentEvent, OperationFailed, Progress, Result, parse_line
from backup_coordinator.transport import error_text, run_agent
from devstack.borg import AGENT_PATH, borg_env, borg_json, init_repository
from devstack.sshd import LoopbackDrone

MB = 1_000_000  # as borg counts, and as --size-mb means
ARCHIVE_PREFIX = "bench"
RUN_TIMEOUT_SECONDS = 1800
PROGRESS_INTERVAL_SECONDS = 5.0  # the coordinator's default progress_interval
FIRST, SECOND = "first", "second"
RUNS = (FIRST, SECOND)


class BenchError(RuntimeError):
    """A run that did not do what the benchmark needs (borg or the agent failed)."""


# --- the data set ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    path: Path
    files: int
    random_bytes: int
    text_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.random_bytes + self.text_bytes


def file_sizes(rng: random.Random, count: int, total: int) -> list[int]:
    """``count`` sizes summing to ``total``: log-normal, so a few big files and many small."""
    if count <= 0:
        return []
    weights = [rng.lognormvariate(0.0, 1.5) for _ in range(count)]
    scale = total / sum(weights)
    sizes = [int(weight * scale) for weight in weights]
    sizes[sizes.index(max(sizes))] += total - sum(sizes)
    return sizes


def text_content(
    rng: random.Random, vocabulary: Sequence[str], file_index: int, size: int
) -> bytes:
    """Log-like lines of words from a small vocabulary (lz4 makes it about 2.3x smaller)."""
    pieces: list[bytes] = []
    length = 0
    line = 0
    while length < size:
        words = rng.choices(vocabulary, k=max(size // 5, 16))
        for index in range(0, len(words), 10):
            words[index] = f"\n{file_index:05d}.{line:07d} INFO {words[index]}:"
            line += 1
        piece = " ".join(words).encode()
        pieces.append(piece)
        length += len(piece)
    return b"".join(pieces)[:size]


def generate_data(folder: Path, size_bytes: int, files: int, seed: int) -> DataSet:
    """Half the bytes (and files) random, half text, spread over a few directories."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    vocabulary = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(400)
    ]
    random_files = files // 2
    text_files = files - random_files
    random_bytes = size_bytes // 2 if random_files else 0
    text_bytes = size_bytes - random_bytes
    plan = [("random", "bin", size) for size in file_sizes(rng, random_files, random_bytes)]
    plan += [("text", "txt", size) for size in file_sizes(rng, text_files, text_bytes)]
    for index, (kind, suffix, size) in enumerate(plan):
        directory = folder / kind / f"d{index % max(1, files // 50):03d}"
        directory.mkdir(parents=True, exist_ok=True)
        content = (
            rng.randbytes(size) if kind == "random" else text_content(rng, vocabulary, index, size)
        )
        (directory / f"file-{index:05d}.{suffix}").write_bytes(content)
    return DataSet(folder, files, random_bytes, text_bytes)


# --- the modes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float
    archive: str


class Mode:
    """One way of running borg, with its own repository and BORG_BASE_DIR."""

    label = ""
    no_op = ""  # what ``timed_no_op`` runs: the cheapest thing this mode can do

    def __init__(self, root: Path, data: DataSet, passphrase: str) -> None:
        self.root = root
        self.data = data
        self.passphrase = passphrase
        self.repository = root / "repo"
        self.base_dir = root / "borg-base"
        self._last_end = 0.0

    def prepare(self) -> None:
        """A fresh repository and a fresh borg base dir (no cache, no security records)."""
        for path in (self.repository, self.base_dir):
            shutil.rmtree(path, ignore_errors=True)
        self.base_dir.mkdir(parents=True)
        init_repository(self.repository, self.passphrase, self.base_dir)

    def run(self, which: str) -> Run:
        # The agent names archives to the second: never start two runs within one second.
        pause = self._last_end + 1.05 - time.time()
        if pause > 0:
            time.sleep(pause)
        os.sync()  # earlier runs' repository writes are not flushed during this one
        try:
            return self.timed_run(which)
        finally:
            self._last_end = time.time()

    def timed_run(self, which: str) -> Run:
        """Seconds of one ``borg create`` of the data set into this mode's repository."""
        raise NotImplementedError

    def timed_no_op(self) -> float:
        """Seconds of this mode's cheapest complete run: its fixed cost per operation."""
        raise NotImplementedError

    def archive_stats(self, archive: str) -> tuple[int, int]:
        """(nfiles, original_size) of one archive, as borg reports them."""
        info = borg_json(
            ["info", "--json", "--", f"{self.repository}::{archive}"],
            self.passphrase,
            self.base_dir,
        )
        stats = info["archives"][0]["stats"]
        return int(stats["nfiles"]), int(stats["original_size"])

    def stored_bytes(self) -> int:
        """The repository's deduplicated, compressed size."""
        info = borg_json(
            ["info", "--json", "--", str(self.repository)], self.passphrase, self.base_dir
        )
        return int(info["cache"]["stats"]["unique_csize"])

    def close(self) -> None:
        """Stops what the mode started."""


def timed_borg(argv: list[str], env: dict[str, str], stderr_path: Path) -> float:
    """Seconds of ``borg ARGV``; its output goes to /dev/null and ``stderr_path``."""
    with stderr_path.open("wb") as stderr:
        start = time.perf_counter()
        done = subprocess.run(
            ["borg", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            timeout=RUN_TIMEOUT_SECONDS,
            check=False,
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = stderr_path.read_text(errors="replace").strip()[-2000:]
        raise BenchError(f"borg {argv[0]} failed (rc {done.returncode}): {tail}")
    return seconds


class PlainBorg(Mode):
    label = "plain borg create"
    no_op = "borg --version"

    def timed_run(self, which: str) -> Run:
        archive = f"{ARCHIVE_PREFIX}-{which}"
        argv = ["create", "--compression", "lz4", f"{self.repository}::{archive}"]
        return Run(self.timed_borg([*argv, str(self.data.path)]), archive)

    def timed_no_op(self) -> float:
        return self.timed_borg(["--version"])

    def timed_borg(self, argv: list[str]) -> float:
        env = borg_env(self.base_dir, self.passphrase)
        return timed_borg(argv, env, self.root / "borg.stderr")


class BorgWithAgentFlags(PlainBorg):
    """borg run directly with the agent's argv (``--progress --log-json --json`` ...), its
    output thrown away: what borg's own extra output costs, without the agent reading it."""

    label = "borg with the agent's flags"

    def timed_run(self, which: str) -> Run:
        archive = f"{ARCHIVE_PREFIX}-{which}"
        agent = load_agent()
        job = agent.validate_job("create", agent_job(self, SshTarget(host="127.0.0.1")))
        argv: list[str] = agent.create_argv("borg", job, archive)
        return Run(self.timed_borg(argv[1:]), archive)


def load_agent() -> ModuleType:
    """The agent file as a module (it is a script, not a package)."""
    if "backup_drone" in sys.modules:
        return sys.modules["backup_drone"]
    spec = importlib.util.spec_from_file_location("backup_drone", AGENT_PATH)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load the agent from {AGENT_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["backup_drone"] = module  # dataclasses look their module up while loading
    spec.loader.exec_module(module)
    return module


def agent_job(mode: Mode, target: SshTarget) -> dict[str, Any]:
    """The create job exactly as the coordinator builds it for a drone backing up the data."""
    drone = DroneConfig(
        name="bench",
        ssh=target,
        repository=str(mode.repository),
        passphrase=mode.passphrase,
        archive_prefix=ARCHIVE_PREFIX,
        paths=(str(mode.data.path),),
        compression="lz4",
    )
    return build_job(drone, DroneSettings(), ("create",))


def checked_result(result: Result | None, what: str, stderr: str = "") -> Result:
    if result is None:
        raise BenchError(f"{what}: no result line; stderr: {stderr[-2000:]}")
    if not result.ok:
        raise BenchError(f"{what}: {result.operation} failed: {error_text(result)}")
    return result


def archive_name(result: Result) -> str:
    archive = result.data.get("archive")
    if not isinstance(archive, dict) or not isinstance(archive.get("name"), str):
        raise BenchError(f"the agent's result names no archive: {result.data!r}")
    return str(archive["name"])


class LocalAgent(Mode):
    label = "agent, local (as sshd runs it)"
    no_op = "agent hello"

    def timed_run(self, which: str) -> Run:
        job = agent_job(self, SshTarget(host="127.0.0.1"))
        seconds, result = self.timed_agent("create", job)
        return Run(seconds, archive_name(result))

    def timed_no_op(self) -> float:
        return self.timed_agent("hello", hello_job())[0]

    def timed_agent(self, operation: str, job: dict[str, Any]) -> tuple[float, Result]:
        """Starts the agent as sshd would, sends the job, parses every line until the result."""
        job_line = (json.dumps(job) + "\n").encode()
        env = {**borg_env(self.base_dir, None), "SSH_ORIGINAL_COMMAND": operation}
        stderr_path = self.root / "agent.stderr"
        result: Result | None = None
        with stderr_path.open("wb") as stderr:
            start = time.perf_counter()
            agent = subprocess.Popen(
                [sys.executable, str(AGENT_PATH), "serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
            try:
                assert agent.stdin is not None
                assert agent.stdout is not None
                agent.stdin.write(job_line)
                agent.stdin.flush()  # and kept open: it is the agent's liveness signal
                for line in agent.stdout:
                    event = parse_line(line.decode("utf-8", errors="replace"))
                    if isinstance(event, Result):
                        result = event
                        break
                agent.stdin.close()
                agent.wait(timeout=RUN_TIMEOUT_SECONDS)
                seconds = time.perf_counter() - start
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait()
                for stream in (agent.stdin, agent.stdout):
                    if stream is not None:
                        stream.close()
        stderr_text = stderr_path.read_text(errors="replace")
        return seconds, checked_result(result, "agent (local)", stderr_text)


class SshAgent(Mode):
    label = "agent over ssh (run_agent)"
    no_op = "hello over ssh"

    def __init__(self, root: Path, data: DataSet, passphrase: str) -> None:
        super().__init__(root, data, passphrase)
        # The forced command's BORG_BASE_DIR is fixed; prepare() empties it every round.
        self.sshd = LoopbackDrone(
            root / "sshd",
            [sys.executable, str(AGENT_PATH), "serve"],
            env={"BORG_BASE_DIR": str(self.base_dir)},
        )
        try:
            self.sshd.start()
        except BaseException:
            self.sshd.stop()
            raise
        self.target = self.sshd.target()

    def timed_run(self, which: str) -> Run:
        seconds, result = asyncio.run(self.timed_agent("create", agent_job(self, self.target)))
        return Run(seconds, archive_name(result))

    def timed_no_op(self) -> float:
        return asyncio.run(self.timed_agent("hello", hello_job()))[0]

    async def timed_agent(self, operation: str, job: dict[str, Any]) -> tuple[float, Result]:
        """The coordinator's path: connect, verify, start the agent, stream its events into
        the progress estimate the coordinator keeps (without Home Assistant)."""
        start = time.perf_counter()
        tracker = ProgressTracker(
            drone="bench",
            operation=operation,
            started=time.monotonic(),
            expected_size=self.data.total_bytes,
            interval=PROGRESS_INTERVAL_SECONDS,
        )

        async def on_event(event: AgentEvent) -> None:
            if isinstance(event, Progress):
                tracker.update(event, time.monotonic())

        try:
            result = await run_agent(self.target, operation, job, on_event)
        except OperationFailed as failure:
            raise BenchError(f"agent (ssh): {failure}") from None
        return time.perf_counter() - start, checked_result(result, "agent (ssh)")

    def close(self) -> None:
        self.sshd.stop()


MODE_CLASSES: tuple[type[Mode], ...] = (PlainBorg, BorgWithAgentFlags, LocalAgent, SshAgent)


# --- running and reporting -------------------------------------------------------------------


NO_OP = "no-op"
NO_OP_REPEATS = 3  # per round


@dataclass
class Measurements:
    """Seconds per (mode, run kind): ``first``, ``second`` or ``no-op``."""

    seconds: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, mode: Mode, kind: str, seconds: float) -> None:
        self.seconds.setdefault((mode.label, kind), []).append(seconds)
        if kind != NO_OP:
            print(f"  {mode.label:<31} {kind:<6} {seconds:7.2f} s", file=sys.stderr, flush=True)

    def of(self, mode: Mode, kind: str) -> list[float]:
        return self.seconds.get((mode.label, kind), [])


def run_rounds(modes: list[Mode], rounds: int, data: DataSet) -> tuple[Measurements, int]:
    """All rounds; returns the measurements and the stored size of plain borg's repository."""
    measurements = Measurements()
    stored = 0
    # Untimed: the first borg run after the data was written was always the fastest here, so
    # no mode gets that run.
    modes[0].prepare()
    warm_up = modes[0].run(FIRST)
    print(f"warm-up (not counted): {modes[0].label} {warm_up.seconds:.2f} s", file=sys.stderr)
    for number in range(rounds):
        print(f"round {number + 1}/{rounds}", file=sys.stderr, flush=True)
        order = modes[number % len(modes) :] + modes[: number % len(modes)]
        for mode in order:
            mode.prepare()
        archives: dict[Mode, list[str]] = {mode: [] for mode in modes}
        for which in RUNS:
            for mode in order:
                run = mode.run(which)
                measurements.add(mode, which, run.seconds)
                archives[mode].append(run.archive)
        for _ in range(NO_OP_REPEATS):
            for mode in order:
                measurements.add(mode, NO_OP, mode.timed_no_op())
        no_ops = ", ".join(
            f"{mode.no_op} {statistics.median(measurements.of(mode, NO_OP)[-NO_OP_REPEATS:]):.2f} s"
            for mode in modes
        )
        print(f"  no-op runs (medians): {no_ops}", file=sys.stderr, flush=True)
        for mode in modes:
            check_same_work(mode, archives[mode], data)
        stored = modes[0].stored_bytes()
    return measurements, stored


def check_same_work(mode: Mode, archives: list[str], data: DataSet) -> None:
    """Every archive holds every file of the data set with all its bytes."""
    for archive in archives:
        nfiles, original = mode.archive_stats(archive)
        if (nfiles, original) != (data.files, data.total_bytes):
            raise BenchError(
                f"{mode.label}: archive {archive} holds {nfiles} files, {original} bytes; "
                f"expected {data.files} files, {data.total_bytes} bytes"
            )


def command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_line(load: float) -> str:
    cpus = len(os.sched_getaffinity(0))
    borg = command_output(["borg", "--version"])
    ssh = command_output(["ssh", "-V"]).split(",")[0]
    python = platform.python_version()
    return (
        f"{cpus} CPUs (nproc), {cpu_model()}, Linux {platform.release()}; {borg}, "
        f"Python {python}, {ssh}, asyncssh {asyncssh.__version__}; "
        f"load average at start {load:.2f}"
    )


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def report(
    modes: list[Mode],
    measurements: Measurements,
    data: DataSet,
    stored: int,
    rounds: int,
    load: float,
) -> str:
    plain = modes[0]
    base = {which: statistics.median(measurements.of(plain, which)) for which in RUNS}
    header = (
        f"{'mode':<31} {'first s':>8} {'ratio':>6} {'range':>11}"
        f"  {'second s':>8} {'ratio':>6} {'range':>11}  no-op s"
    )
    lines = [
        f"borg create: plain borg vs the drone agent; {rounds} rounds, medians",
        f"data:    {data.total_bytes / MB:.1f} MB in {data.files} files "
        f"({data.random_bytes / MB:.1f} MB random, {data.text_bytes / MB:.1f} MB text); "
        f"stored by borg (lz4, deduplicated): {stored / MB:.1f} MB",
        f"machine: {machine_line(load)}",
        "",
        header,
        "-" * (len(header) + 16),
    ]
    for mode in modes:
        row = f"{mode.label:<31}"
        for which in RUNS:
            values = measurements.of(mode, which)
            median = statistics.median(values)
            row += f" {median:8.2f} {median / base[which]:6.2f} {spread(values):>11} "
        no_op = statistics.median(measurements.of(mode, NO_OP))
        row += f" {no_op:7.2f} ({mode.no_op})"
        lines.append(row.rstrip())
    lines += [
        "",
        "first: full backup into an empty repository; second: the same data again "
        "(deduplicated, files cache warm);",
        "ratio: median / plain borg's median; range: min-max over the rounds;",
        f"no-op: the mode's cheapest complete run, its fixed cost per operation "
        f"({NO_OP_REPEATS} per round).",
    ]
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="borg create through the drone agent (locally and over a loopback sshd) "
        "against plain borg, on the same generated data in the same run.",
    )
    parser.add_argument(
        "--size-mb", type=float, default=200, help="size of the data set in MB (default 200)"
    )
    parser.add_argument(
        "--files", type=int, default=2000, help="number of files in the data set (default 2000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every mode (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated data")
    parser.add_argument(
        "--workdir", type=Path, help="where the temporary directory goes (default: system temp)"
    )
    args = parser.parse_args(argv)
    if args.size_mb <= 0 or args.files < 1 or args.rounds < 1:
        parser.error("--size-mb must be positive, --files and --rounds at least 1")
    return args


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so servers are stopped and temp data removed."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def remove_tree(path: Path) -> None:
    # An agent stopped mid-run may still be writing its checkpoint for a moment.
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.25)
    print(f"warning: could not remove {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    stop_on_sigterm()
    load = os.getloadavg()[0]  # other work on the machine makes every figure noisier
    root = Path(tempfile.mkdtemp(prefix="backup-coordinator-bench-", dir=args.workdir))
    modes: list[Mode] = []
    try:
        print(f"generating {args.size_mb:g} MB in {args.files} files under {root}", file=sys.stderr)
        data = generate_data(root / "data", int(args.size_mb * MB), args.files, args.seed)
        passphrase = secrets.token_urlsafe(16)
        for mode_class in MODE_CLASSES:
            modes.append(mode_class(root / mode_class.__name__.lower(), data, passphrase))
        measurements, stored = run_rounds(modes, args.rounds, data)
        print(report(modes, measurements, data, stored, args.rounds, load))
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        for mode in modes:
            mode.close()
        remove_tree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
