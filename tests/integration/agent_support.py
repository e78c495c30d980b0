"""Helpers and fixtures for the drone agent's tests: load the agent, run it the way sshd does,
and make tiny real borg repositories. Test modules import what they use from here explicitly."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from devstack.borg import AGENT_PATH, borg_env, init_repository
from devstack.waiting import wait_until

PASSPHRASE = "correct horse battery staple 7f3a"
DEFAULT_PY39 = "/root/.pyenv/versions/3.9.18/bin/python3"
# The interpreter a Debian host runs the agent with; readable by every user (pyenv's is not).
SYSTEM_PYTHON = "/usr/bin/python3"
AGENT_TIMEOUT = 60.0


def load_agent() -> ModuleType:
    """The agent file as a module (it is a script, not a package)."""
    if "backup_drone" in sys.modules:
        return sys.modules["backup_drone"]
    spec = importlib.util.spec_from_file_location("backup_drone", AGENT_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["backup_drone"] = module  # dataclasses look their module up while loading
    spec.loader.exec_module(module)
    return module


def fed(sink: Any, records: list[dict[str, Any]]) -> Any:
    """``sink`` (a BorgRun or a tally of the agent) after it was given ``records`` one by one,
    as the agent gives them while borg runs."""
    for record in records:
        sink.add(record)
    return sink


def finished_run(records: list[dict[str, Any]], rc: int) -> Any:
    """The agent's BorgRun of a borg that printed ``records`` and exited with ``rc``."""
    run = fed(load_agent().BorgRun(), records)
    run.rc = rc
    return run


def python39() -> str:
    path = os.environ.get("BACKUP_COORDINATOR_PY39", DEFAULT_PY39)
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"Python 3.9 for the agent tests not found at {path} (set BACKUP_COORDINATOR_PY39)"
        )
    return path


@pytest.fixture(params=["default", "py39"])
def agent_python(request: pytest.FixtureRequest) -> str:
    """Each agent test runs under the default interpreter and under Python 3.9."""
    return sys.executable if request.param == "default" else python39()


@dataclass
class Repo:
    """A real, initialised borg repository and a tiny data set to back up."""

    path: Path
    base_dir: Path
    data: Path
    passphrase: str = PASSPHRASE

    def env(self, passphrase: str | None = None) -> dict[str, str]:
        """The agent's environment (no passphrase: jobs carry theirs unless a test says so),
        with a cache directory of its own for the agent's borg version cache."""
        env = borg_env(self.base_dir, passphrase)
        env["XDG_CACHE_HOME"] = str(self.base_dir.parent / "agent-cache")
        return env

    def job(self, **fields: Any) -> dict[str, Any]:
        job: dict[str, Any] = {
            "protocol": 1,
            "repository": str(self.path),
            "passphrase": self.passphrase,
            "archive_prefix": "drone",
            "paths": [str(self.data)],
            "lock_wait": 1,
        }
        job.update(fields)
        return {k: v for k, v in job.items() if v is not None}

    def sequence_job(self, steps: list[str], **fields: Any) -> dict[str, Any]:
        """A protocol-2 job for ``sequence`` with everything its steps may need."""
        return self.job(protocol=2, steps=steps, **{"keep": {"daily": 7}, **fields})


def make_repo(root: Path) -> Repo:
    base_dir = root / "borg-base"
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n" * 100)
    (data / "sub" / "b.bin").write_bytes(bytes(range(256)) * 16)
    # Incompressible content that outweighs borg's per-archive metadata, so dedup shows.
    (data / "sub" / "random.bin").write_bytes(random.Random(7).randbytes(128 * 1024))
    repo = Repo(root / "repo", base_dir, data)
    init_repository(repo.path, repo.passphrase, base_dir)
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path)


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A temp dir the ``nobody`` user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="agent-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class AgentResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def result(self) -> dict[str, Any]:
        return self.events[-1]

    @property
    def error(self) -> dict[str, Any]:
        return dict(self.result.get("error") or {})

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]


class AgentProcess:
    """The agent started as sshd starts a forced command: operation in SSH_ORIGINAL_COMMAND, the
    job as the first stdin line, stdin kept open as the liveness signal."""

    def __init__(
        self,
        python: str,
        job: dict[str, Any] | bytes,
        env: dict[str, str],
        ssh_command: str | None = None,
        args: tuple[str, ...] = ("serve",),
        user: str | None = None,
        program: Path = AGENT_PATH,
        python_options: tuple[str, ...] = (),
    ) -> None:
        env = dict(env)
        if ssh_command is not None:
            env["SSH_ORIGINAL_COMMAND"] = ssh_command
        argv = [python, *python_options, str(program), *args]
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.lines: list[bytes] = []
        self.stderr = b""
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        line = job if isinstance(job, bytes) else json.dumps(job).encode() + b"\n"
        self._send(line)

    def _send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the agent rejected the request before reading it all

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self.lines.append(line)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def wait_for_event(self, kind: str, timeout: float = AGENT_TIMEOUT) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events() if e["type"] == kind), None)

        return wait_until(found, f"a {kind!r} line from the agent", timeout)

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def finish(self, timeout: float = AGENT_TIMEOUT) -> AgentResult:
        """Waits for the result line (or the agent's exit), then closes stdin like a
        coordinator that is done, and collects everything the agent printed."""
        try:
            wait_until(
                lambda: self.process.poll() is not None or self._has_result(),
                "the agent's result",
                timeout,
            )
            self.close_stdin()
            exit_code = self.process.wait(timeout=timeout)
            for reader in self._readers:
                reader.join(timeout)
        finally:
            self.kill()
        stdout = b"".join(self.lines)
        return AgentResult(exit_code, stdout, self.stderr, self.events())

    def _has_result(self) -> bool:
        return any(e["type"] == "result" for e in self.events())

    def borg_children(self) -> list[int]:
        """PIDs of the processes whose parent is the agent (borg, while it runs)."""
        return children_of(self.process.pid)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


def children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            children.append(int(entry.name))
    return children


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited already


def run_agent(
    python: str,
    operation: str,
    job: dict[str, Any] | bytes,
    env: dict[str, str],
    args: tuple[str, ...] = ("serve",),
    user: str | None = None,
) -> AgentResult:
    agent = AgentProcess(python, job, env, ssh_command=operation, args=args, user=user)
    return agent.finish()


def lines_without_progress(result: AgentResult) -> list[tuple[str, str]]:
    """(type, operation) of every line but progress and log lines."""
    return [
        (event["type"], event["operation"])
        for event in result.events
        if event["type"] not in ("progress", "log")
    ]


def assert_framing(result: AgentResult) -> None:
    """Every stdout line is one JSON object; hello first, result last."""
    lines = result.stdout.split(b"\n")
    assert lines[-1] == b"", "output must end with a newline"
    kinds = [json.loads(line)["type"] for line in lines[:-1]]
    assert kinds[0] == "hello"
    assert kinds[-1] == "result"
    assert kinds.count("hello") == 1
    assert kinds.count("result") == 1


def wait_for_next_second() -> None:
    """Archive names carry the time to the second: never create two in the same second."""
    start = int(time.time())
    wait_until(lambda: int(time.time()) > start, "the clock to reach the next second", 5, 0.02)


@dataclass
class RecordingBorg:
    """A ``borg`` wrapper (named by the policy's ``"borg"``) that logs each invocation and then
    runs the real borg: proof of what the agent ran, and that a rejected request ran nothing."""

    path: Path
    log: Path

    def invocations(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def operations(self) -> list[list[str]]:
        """Invocations other than the ``--version`` probe behind the hello line."""
        return [argv for argv in self.invocations() if argv != ["--version"]]

    def commands(self) -> list[str]:
        """The borg command of each invocation, in order (``--version`` for the probe)."""
        return [argv[0] for argv in self.invocations()]


def make_recording_borg(directory: Path) -> RecordingBorg:
    real = shutil.which("borg")
    assert real is not None, "borg must be installed"
    wrapper = RecordingBorg(directory / "borg", directory / "borg-invocations.jsonl")
    wrapper.path.write_text(
        f"#!{SYSTEM_PYTHON}\n"
        "import json, os, sys\n"
        f"with open({str(wrapper.log)!r}, 'a') as log:\n"
        "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"os.execv({real!r}, [{real!r}] + sys.argv[1:])\n"
    )
    wrapper.path.chmod(0o755)
    return wrapper


def write_policy(path: Path, **policy: Any) -> Path:
    path.write_text(json.dumps(policy))
    return path
