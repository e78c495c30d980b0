"""The scheduled backup (create, prune, compact, stats): plain borg, borgmatic, the coordinator.

Three contenders back up the same generated data with the same repository options
(repokey-blake2, lz4, keep daily 7 / weekly 4 / monthly 6 / yearly 1), each into its own
repository with its own BORG_BASE_DIR:

- ``plain borg``: ``borg create``, ``borg prune``, ``borg compact``, ``borg info`` one after
  the other, as a shell script run by cron would;
- ``borgmatic``: ``borgmatic create prune compact info`` with an equivalent configuration;
- ``coordinator``: the coordinator's own code path: ``Coordinator(config, port,
  transport.run_agent)``, ``start({})``, ``request(drone, Operation.SCHEDULED)``,
  ``wait_idle()``, over a loopback sshd whose key forces the agent, which runs as a dedicated
  drone account with a plain /bin/sh login shell.

Two cases per round: ``full`` (first backup into an empty repository) and ``incremental`` (a
day's small change since the last archive). Between the two, every repository gets one more
archive of the unchanged data (untimed: an earlier run of the day), so the incremental run's
prune has one archive to delete; the check after the round proves it did.

Run it through ``scripts/bench`` (see bench/README.md); ``--help`` lists the options.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_coordinator.config import parse_config
from backup_coordinator.coordinator import Coordinator
from backup_coordinator.model import Operation
from backup_coordinator.ports import EVENT_FINISHED
from backup_coordinator.transport import run_agent
from bench.accounts import Account, dedicated_account, installed_agent
from bench.common import (
    MB,
    BenchError,
    argument_parser,
    bench_root,
    command_output,
    median,
    progress,
    rounds_of,
    run_main,
    spread,
    table,
    verdict,
)
from bench.data import DAY_CHANGE, DataSet, check_archive, generate_data
from devstack.borg import borg_env, init_repository, list_archives, run_borg
from devstack.sshd import LoopbackDrone
from tests.memory_port import MemoryPort

PREFIX = "bench"
KEEP = {"daily": 7, "weekly": 4, "monthly": 6, "yearly": 1}
RUN_TIMEOUT_SECONDS = 1800
FULL, INCREMENTAL = "full", "incremental"
CASES = (FULL, INCREMENTAL)
TARGET_FULL = 1.03  # x plain borg
TARGET_INCREMENTAL = 1.15
DRONE_NAME = "bench"


def archive_name_now() -> str:
    """To the microsecond, like borgmatic's format below: two runs never collide."""
    return f"{PREFIX}-{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')}"


class Contender:
    """One way of running the scheduled backup, with its own repository and BORG_BASE_DIR."""

    label = ""

    def __init__(self, root: Path, data: DataSet, passphrase: str) -> None:
        self.root = root
        self.data = data
        self.passphrase = passphrase
        self.repository = root / "repo"
        self.base_dir = root / "borg-base"
        self.root.mkdir(parents=True)
        self._last_end = 0.0

    def prepare(self) -> None:
        """A fresh repository and a fresh borg base dir (no cache, no security records)."""
        for path in (self.repository, self.base_dir):
            shutil.rmtree(path, ignore_errors=True)
        self.base_dir.mkdir(parents=True)
        init_repository(self.repository, self.passphrase, self.base_dir)

    def run(self, case: str) -> float:
        """Seconds of one scheduled backup; only the backup itself is timed."""
        # The agent names archives to the second: never two runs within one second.
        pause = self._last_end + 1.05 - time.time()
        if pause > 0:
            time.sleep(pause)
        os.sync()  # earlier runs' repository writes are not flushed during this one
        try:
            return self.timed_run(case)
        finally:
            self._last_end = time.time()

    def timed_run(self, case: str) -> float:
        raise NotImplementedError

    def archives(self) -> list[str]:
        return list_archives(self.repository, self.passphrase, self.base_dir)

    def add_archive_of_the_day(self) -> str:
        """An earlier run of the day (untimed, plain borg): what the next prune must delete."""
        name = archive_name_now()
        target = f"{self.repository}::{name}"
        create = ["create", "--compression=lz4", "--", target, str(self.data.path)]
        run_borg(create, self.passphrase, self.base_dir)
        self._last_end = time.time()
        return name

    def close(self) -> None:
        """Stops what the contender started."""


def timed_command(argv: list[str], env: dict[str, str], log: Path) -> float:
    """Seconds of one command; stdout thrown away, stderr kept for the error message."""
    with log.open("wb") as stderr:
        start = time.perf_counter()
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            timeout=RUN_TIMEOUT_SECONDS,
            check=False,
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip()[-2000:]
        raise BenchError(f"{argv[0]} {argv[1]} failed (rc {done.returncode}): {tail}")
    return seconds


class PlainBorg(Contender):
    label = "plain borg (4 commands)"

    def timed_run(self, case: str) -> float:
        repository = str(self.repository)
        keep = [f"--keep-{rule}={count}" for rule, count in KEEP.items()]
        archive = f"{repository}::{archive_name_now()}"
        commands = [
            ["create", "--compression=lz4", archive, str(self.data.path)],
            ["prune", f"--glob-archives={PREFIX}-*", *keep, repository],
            ["compact", repository],
            ["info", repository],
        ]
        env = borg_env(self.base_dir, self.passphrase)
        return sum(timed_command(["borg", *c], env, self.root / "borg.log") for c in commands)


def borgmatic_binary() -> Path:
    """borgmatic as scripts/bench installs it (pinned there) into its own venv."""
    path = Path(os.environ.get("BACKUP_COORDINATOR_BORGMATIC", ""))
    if not path.is_file():
        raise BenchError("BACKUP_COORDINATOR_BORGMATIC names no borgmatic: run scripts/bench")
    return path


class Borgmatic(Contender):
    def __init__(self, root: Path, data: DataSet, passphrase: str) -> None:
        super().__init__(root, data, passphrase)
        self.binary = borgmatic_binary()
        self.label = f"borgmatic {command_output([str(self.binary), '--version'])}"
        self.config = root / "borgmatic.yaml"
        keep = "".join(f"keep_{rule}: {count}\n" for rule, count in KEEP.items())
        # Microseconds in the name: two runs within one second would collide otherwise.
        self.config.write_text(
            f"source_directories:\n  - {data.path}\n"
            f"repositories:\n  - path: {self.repository}\n    label: bench\n"
            f"encryption_passphrase: '{passphrase}'\n"
            "compression: lz4\n"
            f"archive_name_format: '{PREFIX}-{{now:%Y-%m-%dT%H:%M:%S.%f}}'\n"
            f"match_archives: 'sh:{PREFIX}-*'\n"
            f"borg_base_directory: {self.base_dir}\n" + keep
        )
        self.config.chmod(0o600)

    def timed_run(self, case: str) -> float:
        argv = [str(self.binary), "-c", str(self.config), "create", "prune", "compact", "info"]
        return timed_command(argv, borg_env(self.base_dir, None), self.root / "borgmatic.log")


class CoordinatorPath(Contender):
    """The coordinator in this process, the agent behind a loopback sshd as ``account``."""

    def __init__(self, root: Path, data: DataSet, passphrase: str, account: Account) -> None:
        super().__init__(root, data, passphrase)
        self.account = account
        self.label = f"coordinator (agent as {account.name})"
        self.round = 0
        # The forced command's BORG_BASE_DIR is fixed; prepare() empties it every round.
        self.sshd = LoopbackDrone(
            root / "sshd",
            installed_agent(root),
            env={"BORG_BASE_DIR": str(self.base_dir)},
            user=account.name,
        )
        try:
            self.sshd.start()
        except BaseException:
            self.sshd.stop()
            raise

    def prepare(self) -> None:
        super().prepare()
        self.account.owns(self.repository, self.base_dir)
        self.round += 1  # a new coordinator state per round, as for a new drone

    def add_archive_of_the_day(self) -> str:
        name = super().add_archive_of_the_day()
        self.account.owns(self.repository, self.base_dir)
        return name

    def config_args(self) -> dict[str, Any]:
        target = self.sshd.target()
        drone = {
            "host": target.host,
            "port": target.port,
            "user": target.user,
            "client_key": target.client_key,
            "known_hosts": target.known_hosts,
            "repository": str(self.repository),
            "passphrase": self.passphrase,
            "archive_prefix": PREFIX,
            "paths": [str(self.data.path)],
            "compression": "lz4",
            "mode": "manual",  # nothing starts by itself: only the request below
            "keep": dict(KEEP),
        }
        return {
            "module": "backup_coordinator.app",
            "class": "BackupCoordinator",
            "state_file": str(self.root / f"state-{self.round}.json"),
            "drones": {DRONE_NAME: drone},
        }

    def timed_run(self, case: str) -> float:
        return asyncio.run(self.timed_backup())

    async def timed_backup(self) -> float:
        config = parse_config(self.config_args(), self.root)
        if config.problems:
            raise BenchError(f"coordinator configuration: {config.problems}")
        port = MemoryPort()
        coordinator = Coordinator(config, port, run_agent)
        await coordinator.start({})
        start = time.perf_counter()
        await coordinator.request(DRONE_NAME, Operation.SCHEDULED)
        await coordinator.wait_idle()
        seconds = time.perf_counter() - start
        finished = port.of(EVENT_FINISHED)
        if len(finished) != 1 or not finished[0].get("ok"):
            errors = [line for line in port.lines if not line.startswith("INFO")]
            raise BenchError(f"coordinator: the scheduled backup failed: {finished} {errors}")
        return seconds

    def close(self) -> None:
        self.sshd.stop()


# --- running and reporting -------------------------------------------------------------------


Measurements = dict[tuple[str, str], list[float]]


def run_rounds(contenders: Sequence[Contender], rounds: int, data: DataSet) -> Measurements:
    measured: Measurements = {}
    warm_up = contenders[0]
    warm_up.prepare()
    # Untimed: the first borg run after the data was written was always the fastest here.
    progress(f"warm-up (not counted): {warm_up.label} {warm_up.run(FULL):.2f} s")
    for number in range(rounds):
        progress(f"round {number + 1}/{rounds}")
        shift = number % len(contenders)
        order = [*contenders[shift:], *contenders[:shift]]
        for contender in order:
            contender.prepare()
        full_archive = run_case(order, FULL, data, measured, {})
        of_the_day = {contender: contender.add_archive_of_the_day() for contender in order}
        data.change()
        earlier = {c: (full_archive[c], of_the_day[c]) for c in order}
        new_archive = run_case(order, INCREMENTAL, data, measured, earlier)
        for contender in order:
            check_pruned(contender, full_archive[contender], of_the_day[contender])
            check_archive(
                contender.label,
                contender.repository,
                new_archive[contender],
                data,
                contender.passphrase,
                contender.base_dir,
            )
    return measured


def run_case(
    order: Sequence[Contender],
    case: str,
    data: DataSet,
    measured: Measurements,
    before_case: Mapping[Contender, Sequence[str]],
) -> dict[Contender, str]:
    """Every contender's run of one case; returns the archive each one made.

    ``before_case``: the archives each repository holds before the run (none when missing).
    """
    made: dict[Contender, str] = {}
    before = {contender: set(before_case.get(contender, ())) for contender in order}
    for contender in order:
        seconds = contender.run(case)
        measured.setdefault((contender.label, case), []).append(seconds)
        progress(f"  {contender.label:<38} {case:<11} {seconds:7.2f} s")
    for contender in order:
        new = sorted(set(contender.archives()) - before[contender])
        if len(new) != 1:
            raise BenchError(f"{contender.label}: {case} made archives {new}, expected one")
        made[contender] = new[0]
        if case == FULL:
            check_archive(
                contender.label,
                contender.repository,
                new[0],
                data,
                contender.passphrase,
                contender.base_dir,
            )
    return made


def check_pruned(contender: Contender, full: str, of_the_day: str) -> None:
    """The incremental run's prune deleted the earlier archive of the day; borg keeps the
    newest and (to fill the daily rule) the oldest, the full backup."""
    archives = contender.archives()
    if of_the_day in archives or full not in archives or len(archives) != 2:
        raise BenchError(
            f"{contender.label} did not prune as expected: archives now {archives}; "
            f"{of_the_day} should be gone, {full} kept"
        )


def report(
    contenders: Sequence[Contender], measured: Measurements, data: DataSet, rounds: int
) -> str:
    plain, borgmatic, coordinator = contenders
    medians = {key: median(values) for key, values in measured.items()}
    rows = []
    for contender in contenders:
        row = [contender.label]
        for case in CASES:
            value = medians[(contender.label, case)]
            row += [
                f"{value:.2f}",
                f"{value / medians[(plain.label, case)]:.2f}",
                spread(measured[(contender.label, case)]),
            ]
        rows.append(row)
    header = ["contender", "full s", "ratio", "range", "incremental s", "ratio", "range"]

    def ratio(contender: Contender, case: str) -> float:
        return medians[(contender.label, case)] / medians[(plain.label, case)]

    def ahead(case: str) -> bool:
        return medians[(coordinator.label, case)] < medians[(borgmatic.label, case)]

    incremental = ratio(coordinator, INCREMENTAL)
    full = ratio(coordinator, FULL)
    lines = [
        "scheduled backup (create, prune, compact, stats): plain borg, borgmatic and the "
        f"coordinator; {rounds} rounds, medians",
        f"data:    {data.describe()} at the end; the day's change: {DAY_CHANGE}",
        "",
        *table(header, rows, 38),
        "",
        "full: first backup into an empty repository; incremental: the day's change since the "
        "last archive;",
        "ratio: median / plain borg's median; range: min-max over the rounds.",
        f"target incremental <= {TARGET_INCREMENTAL:.2f} x plain borg: {incremental:.2f} "
        f"{verdict(incremental <= TARGET_INCREMENTAL)}",
        f"target full <= {TARGET_FULL:.2f} x plain borg: {full:.2f} {verdict(full <= TARGET_FULL)}",
        "target coordinator ahead of borgmatic: "
        + ", ".join(
            f"{case} {medians[(coordinator.label, case)]:.2f} s vs "
            f"{medians[(borgmatic.label, case)]:.2f} s {verdict(ahead(case))}"
            for case in CASES
        ),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(
        "bench/scheduled_backup.py",
        "The scheduled backup (create, prune, compact, stats) by plain borg, borgmatic and the "
        "coordinator on the same data in the same run.",
    )
    parser.add_argument("--size-mb", type=float, help="size of the data set (200; quick 20)")
    parser.add_argument("--files", type=int, help="number of files (4500; quick 600)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated data")
    args = parser.parse_args(argv)
    rounds = rounds_of(args, quick=2, full=3)
    size_mb = args.size_mb or (20 if args.quick else 200)
    files = args.files or (600 if args.quick else 4500)

    def body() -> str:
        with bench_root("scheduled", args.workdir) as root:
            progress(f"generating {size_mb:g} MB in {files} files under {root}")
            data = generate_data(root / "data", int(size_mb * MB), files, args.seed)
            passphrase = secrets.token_urlsafe(16)
            with dedicated_account(root / "home") as account:
                contenders: list[Contender] = []
                try:
                    contenders.append(PlainBorg(root / "plain", data, passphrase))
                    contenders.append(Borgmatic(root / "borgmatic", data, passphrase))
                    contenders.append(
                        CoordinatorPath(root / "coordinator", data, passphrase, account)
                    )
                    measured = run_rounds(contenders, rounds, data)
                finally:
                    for contender in contenders:
                        contender.close()
            return report(contenders, measured, data, rounds)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
