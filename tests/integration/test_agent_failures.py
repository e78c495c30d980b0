"""How the agent fails: borg errors and warnings, a vanished coordinator, secrets kept hidden."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.borg import AGENT_PATH, init_repository, list_archives, run_borg
from devstack.waiting import wait_until
from tests.integration.agent_support import (
    SYSTEM_PYTHON,
    AgentProcess,
    AgentResult,
    Repo,
    agent_python,
    assert_framing,
    lines_without_progress,
    load_agent,
    make_repo,
    process_gone,
    repo,
    run_agent,
    wait_for_next_second,
    world_readable_dir,
    write_policy,
)

pytestmark = pytest.mark.integration
__all__ = ["agent_python", "repo", "world_readable_dir"]  # fixtures, used by name

# Incompressible data and a slow compressor: borg runs for a few seconds, long enough to watch.
# Many files, not one: borg acts on SIGINT between files.
SLOW_DATA_FILES = 32
SLOW_FILE_BYTES = 256 * 1024
SLOW_COMPRESSION = "lzma,6"


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slow-data")
    generator = random.Random(11)
    for index in range(SLOW_DATA_FILES):
        (path / f"random-{index:02d}.bin").write_bytes(generator.randbytes(SLOW_FILE_BYTES))
    return path


def slow_create(python: str, repo: Repo, slow_data: Path) -> AgentProcess:
    job = repo.job(paths=[str(slow_data)], compression=SLOW_COMPRESSION)
    agent = AgentProcess(python, job, repo.env(), ssh_command="create")
    agent.wait_for_event("progress")
    return agent


def borg_pid_of(agent: AgentProcess) -> int:
    return wait_until(lambda: next(iter(agent.borg_children()), None), "borg to start", 10)


def lock_is_free(repo: Repo) -> bool:
    probe = run_borg(
        ["with-lock", "--lock-wait=1", str(repo.path), "true"],
        repo.passphrase,
        repo.base_dir,
        check=False,
    )
    return probe.returncode == 0


def test_wrong_passphrase(agent_python: str, repo: Repo) -> None:
    result = run_agent(agent_python, "list", repo.job(passphrase="not the passphrase"), repo.env())
    assert_framing(result)
    assert result.exit_code == 2
    assert result.result["ok"] is False
    assert result.error["msgid"] == "PassphraseWrong"


def test_missing_repository(agent_python: str, repo: Repo) -> None:
    job = repo.job(repository=str(repo.path.with_name("no-such-repo")))
    result = run_agent(agent_python, "create", job, repo.env())
    assert_framing(result)
    assert result.exit_code == 2
    assert result.error["msgid"] == "Repository.DoesNotExist"


def test_hosts_own_passphrase_is_used_when_the_job_has_none(agent_python: str, repo: Repo) -> None:
    result = run_agent(
        agent_python, "list", repo.job(passphrase=None), repo.env(passphrase=repo.passphrase)
    )
    assert result.exit_code == 0, result.events
    without = run_agent(agent_python, "list", repo.job(passphrase=None), repo.env())
    assert without.exit_code == 2
    assert without.error["msgid"] == "NoPassphraseFailure"


def test_missing_borg(agent_python: str, repo: Repo, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "policy.json", repositories=["/"], paths=["/"], borg="/nonexistent/borg"
    )
    result = run_agent(
        agent_python, "list", repo.job(), repo.env(), args=("serve", "--policy", str(policy))
    )
    assert_framing(result)
    assert result.exit_code == 2
    assert result.events[0]["borg_version"] == ""
    assert result.error["msgid"] == "BorgNotFound"


def test_missing_borg_ends_a_sequence_before_its_first_step(
    agent_python: str, repo: Repo, tmp_path: Path
) -> None:
    policy = write_policy(
        tmp_path / "policy.json", repositories=["/"], paths=["/"], borg="/nonexistent/borg"
    )
    job = repo.sequence_job(["create", "prune", "stats"])
    result = run_agent(
        agent_python, "sequence", job, repo.env(), args=("serve", "--policy", str(policy))
    )
    assert_framing(result)
    assert result.exit_code == 2
    assert [event["type"] for event in result.events] == ["hello", "result"]
    assert result.result["data"] == {"completed": []}
    assert result.error["msgid"] == "BorgNotFound"
    assert result.error["step"] == "create"


def test_missing_source_path_is_a_warning(agent_python: str, repo: Repo) -> None:
    job = repo.job(paths=[str(repo.data), str(repo.data / "not-there")])
    result = run_agent(agent_python, "create", job, repo.env())
    assert_framing(result)
    assert result.exit_code == 1
    assert result.result["ok"] is True
    assert result.result["warnings"] >= 1
    assert any("not-there" in log["message"] for log in result.of_type("log"))
    assert result.result["data"]["archive"]["nfiles"] >= 2


@pytest.fixture
def repo_for_nobody(world_readable_dir: Path) -> Repo:
    """A repository nobody can write to, and data with one file only root can read."""
    repo = make_repo(world_readable_dir)
    secret = repo.data / "root-only.txt"
    secret.write_text("not for nobody\n")
    secret.chmod(0o600)
    for path in (repo.path, repo.base_dir):
        shutil.chown(path, "nobody")
        for child in path.rglob("*"):
            shutil.chown(child, "nobody")
    return repo


def test_unreadable_file_is_a_warning(repo_for_nobody: Repo) -> None:
    repo = repo_for_nobody
    result = run_agent(SYSTEM_PYTHON, "create", repo.job(), repo.env(), user="nobody")
    assert_framing(result)
    assert result.exit_code == 1, result.events
    assert result.result["ok"] is True
    assert result.result["warnings"] >= 1
    assert any(
        "root-only.txt" in log["message"] and "ermission" in log["message"]
        for log in result.of_type("log")
    )
    assert list_archives(repo.path, repo.passphrase, repo.base_dir) == [
        result.result["data"]["archive"]["name"]
    ]


def test_locked_repository(agent_python: str, repo: Repo) -> None:
    holder = subprocess.Popen(
        ["borg", "with-lock", str(repo.path), "cat"],  # holds the lock until its stdin closes
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=repo.env(passphrase=repo.passphrase),
    )
    try:
        wait_until(lambda: (repo.path / "lock.exclusive").exists(), "the lock to be taken", 30)
        result = run_agent(agent_python, "create", repo.job(lock_wait=1), repo.env())
        assert_framing(result)
        assert result.exit_code == 2
        assert result.error["msgid"] == "LockTimeout"
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        assert lock_is_free(repo)
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, 9)
            holder.wait()


class LockHolder:
    """`borg with-lock` holding the repository's lock until released."""

    def __init__(self, repo: Repo) -> None:
        self.process = subprocess.Popen(
            ["borg", "with-lock", str(repo.path), "cat"],  # holds the lock until stdin closes
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=repo.env(passphrase=repo.passphrase),
        )
        wait_until(lambda: (repo.path / "lock.exclusive").exists(), "the lock to be taken", 30)

    def release(self) -> None:
        assert self.process.stdin is not None
        if not self.process.stdin.closed:
            self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, 9)
            self.process.wait()


@pytest.fixture
def lock_holder(repo: Repo) -> Iterator[LockHolder]:
    holder = LockHolder(repo)
    yield holder
    holder.kill()


REAL_BORG = shutil.which("borg") or "borg"

# A borg (named by the policy) that runs the real one, but holds one command back until the
# test lets it go: so the test can take the repository's lock before that command starts.
GATED_BORG = """#!{python}
import os, sys, time
if sys.argv[1:2] == [{command!r}]:
    open({starting!r}, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists({go!r}) and time.monotonic() < deadline:
        time.sleep(0.01)
os.execv({real!r}, [{real!r}] + sys.argv[1:])
"""


class GatedBorg:
    def __init__(self, directory: Path, command: str) -> None:
        self.path = directory / "borg"
        self.starting = directory / f"{command}-starting"
        self.go = directory / f"{command}-go"
        self.path.write_text(
            GATED_BORG.format(
                python=SYSTEM_PYTHON,
                command=command,
                starting=str(self.starting),
                go=str(self.go),
                real=REAL_BORG,
            )
        )
        self.path.chmod(0o755)

    def wait_until_held_back(self) -> None:
        wait_until(self.starting.exists, "the gated borg command to start", 60)

    def let_go(self) -> None:
        self.go.write_text("")


def gated_policy(directory: Path, borg: GatedBorg) -> Path:
    return write_policy(
        directory / "policy.json", repositories=["/"], paths=["/"], borg=str(borg.path)
    )


def borg_running(agent: AgentProcess, command: str) -> int:
    """The PID of the agent's child that is the real borg running ``command``."""

    def find() -> int | None:
        for pid in agent.borg_children():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if REAL_BORG.encode() in argv and command.encode() in argv:
                return pid
        return None

    return wait_until(find, f"borg {command} to run", 30)


def test_a_wrong_passphrase_fails_the_first_step_and_ends_the_sequence(
    agent_python: str, repo: Repo
) -> None:
    job = repo.sequence_job(["create", "prune", "stats"], passphrase="not the passphrase")
    result = run_agent(agent_python, "sequence", job, repo.env())
    assert_framing(result)
    assert result.exit_code == 2
    assert lines_without_progress(result) == [
        ("hello", "sequence"),
        ("step", "create"),
        ("result", "sequence"),
    ]
    step = result.of_type("step")[0]
    assert (step["ok"], step["rc"], step["error"]["msgid"]) == (False, 2, "PassphraseWrong")
    assert result.result["ok"] is False
    assert result.result["data"] == {"completed": []}
    assert result.error == {**step["error"], "step": "create"}


def test_a_prune_step_on_a_locked_repository_ends_the_sequence(
    agent_python: str, repo: Repo, tmp_path: Path
) -> None:
    borg = GatedBorg(tmp_path, "prune")
    args = ("serve", "--policy", str(gated_policy(tmp_path, borg)))
    job = repo.sequence_job(["create", "prune", "stats"], lock_wait=1)
    agent = AgentProcess(agent_python, job, repo.env(), ssh_command="sequence", args=args)
    holder = None
    try:
        borg.wait_until_held_back()
        holder = LockHolder(repo)
        borg.let_go()
        result = agent.finish()
    finally:
        agent.kill()
        if holder is not None:
            holder.release()
    assert_framing(result)
    assert result.exit_code == 2
    assert lines_without_progress(result) == [
        ("hello", "sequence"),
        ("step", "create"),
        ("step", "prune"),
        ("result", "sequence"),
    ]
    create, prune = result.of_type("step")
    assert (create["ok"], prune["ok"], prune["rc"]) == (True, False, 2)
    assert result.result["data"] == {"completed": ["create"]}
    assert result.error == {**prune["error"], "step": "prune"}
    assert result.error["msgid"] == "LockTimeout"
    assert lock_is_free(repo)


def assert_stopped_in(result: AgentResult, step: str, completed: list[str]) -> None:
    """The sequence ended in ``step`` because the coordinator went away: that step's line says
    so, no later step ran, and the result names the step."""
    assert result.exit_code == 2
    lines = lines_without_progress(result)
    assert lines[-2:] == [("step", step), ("result", "sequence")]
    assert [operation for kind, operation in lines if kind == "step"] == [*completed, step]
    assert result.of_type("step")[-1]["error"]["msgid"] == "CoordinatorGone"
    assert result.error["msgid"] == "CoordinatorGone"
    assert result.error["step"] == step
    assert result.result["data"] == {"completed": completed}


def test_coordinator_gone_during_the_create_step(
    agent_python: str, repo: Repo, slow_data: Path
) -> None:
    job = repo.sequence_job(
        ["create", "prune", "stats"], paths=[str(slow_data)], compression=SLOW_COMPRESSION
    )
    agent = AgentProcess(agent_python, job, repo.env(), ssh_command="sequence")
    try:
        agent.wait_for_event("progress")
        borg_pid = borg_running(agent, "create")
        agent.close_stdin()
        result = agent.finish()
    finally:
        agent.kill()
    assert process_gone(borg_pid)
    assert_stopped_in(result, "create", [])
    assert lock_is_free(repo)
    assert list_archives(repo.path, repo.passphrase, repo.base_dir) == []  # only a checkpoint


@pytest.mark.parametrize(
    ("command", "stopped_in", "completed"),
    [
        ("prune", "prune", ["create"]),
        ("compact", "prune", ["create"]),
        ("info", "stats", ["create", "prune"]),
    ],
)
def test_coordinator_gone_during_a_later_step(
    agent_python: str,
    repo: Repo,
    tmp_path: Path,
    command: str,
    stopped_in: str,
    completed: list[str],
) -> None:
    """The step's borg starts while the test holds the repository's lock, so it is still
    running (waiting for the lock) when the coordinator goes."""
    borg = GatedBorg(tmp_path, command)
    args = ("serve", "--policy", str(gated_policy(tmp_path, borg)))
    job = repo.sequence_job(["create", "prune", "stats"], lock_wait=120)
    agent = AgentProcess(agent_python, job, repo.env(), ssh_command="sequence", args=args)
    holder = None
    try:
        borg.wait_until_held_back()
        holder = LockHolder(repo)
        borg.let_go()
        borg_pid = borg_running(agent, command)
        agent.close_stdin()
        result = agent.finish()
    finally:
        agent.kill()
        if holder is not None:
            holder.release()
    assert process_gone(borg_pid)
    assert_stopped_in(result, stopped_in, completed)
    assert lock_is_free(repo)
    assert len(list_archives(repo.path, repo.passphrase, repo.base_dir)) == 1  # create's


def test_coordinator_gone_mid_create_stops_borg(
    agent_python: str, repo: Repo, slow_data: Path
) -> None:
    agent = slow_create(agent_python, repo, slow_data)
    try:
        borg_pid = borg_pid_of(agent)
        agent.close_stdin()  # what sshd does when the coordinator's connection ends
        started = time.monotonic()
        exit_code = agent.process.wait(timeout=60)
        stopped_after = time.monotonic() - started
    finally:
        agent.kill()
    assert exit_code == 2
    assert stopped_after < 5, "borg is stopped at once, not left to finish"
    assert process_gone(borg_pid)
    events = agent.events()
    assert events[-1]["type"] == "result"
    assert events[-1]["error"]["msgid"] == "CoordinatorGone"
    assert lock_is_free(repo)
    wait_for_next_second()
    again = run_agent(agent_python, "create", repo.job(), repo.env())
    assert again.exit_code == 0, again.events


def test_broken_stdout_stops_borg(agent_python: str, repo: Repo, slow_data: Path) -> None:
    read_end, write_end = os.pipe()
    env = {**repo.env(), "SSH_ORIGINAL_COMMAND": "create"}
    process = subprocess.Popen(
        [agent_python, str(AGENT_PATH), "serve"], stdin=subprocess.PIPE, stdout=write_end, env=env
    )
    os.close(write_end)
    try:
        assert process.stdin is not None
        job = repo.job(paths=[str(slow_data)], compression=SLOW_COMPRESSION)
        process.stdin.write(json.dumps(job).encode() + b"\n")
        process.stdin.flush()
        with os.fdopen(read_end, "rb") as output:
            assert json.loads(output.readline())["type"] == "hello"
            assert json.loads(output.readline())["type"] == "progress"
        # Our end is closed: the agent's next write fails, and it must stop borg and exit.
        assert process.wait(timeout=60) == 2
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert lock_is_free(repo)


def test_passphrase_stays_out_of_output_and_borgs_cmdline(
    agent_python: str, repo: Repo, slow_data: Path
) -> None:
    agent = slow_create(agent_python, repo, slow_data)
    try:
        borg_pid = borg_pid_of(agent)
        cmdline = Path(f"/proc/{borg_pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{borg_pid}/environ").read_bytes()
        agent.close_stdin()  # seen enough: stop borg early
        result = agent.finish()
    finally:
        agent.kill()
    assert b"borg" in cmdline
    assert b"create" in cmdline
    assert repo.passphrase.encode() not in cmdline
    assert b"BORG_PASSPHRASE=" + repo.passphrase.encode() in environ.split(b"\0")
    assert_framing(result)
    assert repo.passphrase.encode() not in result.stdout
    assert repo.passphrase.encode() not in result.stderr


# The agent with one of its functions replaced by one that raises, as a bug in it would.
CRASHING_AGENT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("backup_drone", {agent!r})
agent = importlib.util.module_from_spec(spec)
sys.modules["backup_drone"] = agent
spec.loader.exec_module(agent)

def explode(*args, **kwargs):
    raise RuntimeError("job data that must stay off stdout: /home/zoe/secret-project")

setattr(agent, {function!r}, explode)
sys.exit(agent.main(sys.argv[1:]))
"""

# A borg that prints one log line, then runs until it is stopped; it writes down the signal.
WAITING_BORG = """#!{python}
import signal, sys
if sys.argv[1:] == ["--version"]:
    print("borg 1.2.4")
    sys.exit(0)

def stopped(signum, frame):
    with open({marker!r}, "w") as marker:
        marker.write(signal.Signals(signum).name)
    sys.exit(2)

signal.signal(signal.SIGINT, stopped)
sys.stderr.write('{{"type": "log_message", "levelname": "INFO", "message": "working"}}\\n')
sys.stderr.flush()
signal.alarm(60)  # never outlive a broken test
while True:
    signal.pause()
"""


def run_crashing_agent(
    python: str, repo: Repo, tmp_path: Path, function: str, borg: Path
) -> AgentResult:
    program = tmp_path / "crashing_agent.py"
    program.write_text(CRASHING_AGENT.format(agent=str(AGENT_PATH), function=function))
    policy = write_policy(tmp_path / "policy.json", repositories=["/"], paths=["/"], borg=str(borg))
    agent = AgentProcess(
        python,
        repo.job(),
        repo.env(),
        ssh_command="list",
        args=("serve", "--policy", str(policy)),
        program=program,
    )
    return agent.finish()


def assert_agent_error(result: AgentResult) -> None:
    assert_framing(result)
    assert result.exit_code == 2, result.stderr
    assert result.result["ok"] is False
    assert result.error["msgid"] == "AgentError"
    assert "RuntimeError" in result.error["message"]
    assert b"secret-project" not in result.stdout
    assert b"RuntimeError: job data that must stay off stdout" in result.stderr  # the traceback


def test_an_agent_bug_before_anything_ran_is_a_failure_not_a_warning(
    agent_python: str, repo: Repo, tmp_path: Path
) -> None:
    result = run_crashing_agent(
        agent_python, repo, tmp_path, "validate_job", Path(shutil.which("borg") or "borg")
    )
    assert_agent_error(result)
    assert result.events[0] == {**result.events[0], "operation": "list", "borg_version": ""}
    assert result.result["borg_rc"] is None


def test_an_agent_bug_while_borg_runs_stops_borg(
    agent_python: str, repo: Repo, tmp_path: Path
) -> None:
    marker = tmp_path / "borg-stopped-by"
    borg = tmp_path / "borg"
    borg.write_text(WAITING_BORG.format(python=SYSTEM_PYTHON, marker=str(marker)))
    borg.chmod(0o755)
    result = run_crashing_agent(agent_python, repo, tmp_path, "handle_stderr_line", borg)
    assert_agent_error(result)
    assert result.events[0]["borg_version"] == "1.2.4"
    assert marker.read_text() == "SIGINT"  # borg was stopped the clean way
    assert result.result["borg_rc"] == 2


# -- borg gets an allow-listed environment -------------------------------------------------------

# A borg (named by the policy) that writes down its environment, then runs the real one.
ENVIRONMENT_DUMPING_BORG = """#!{python}
import json, os, sys
if sys.argv[1:2] != ["--version"]:
    with open({dump!r}, "w") as dump:
        json.dump(dict(os.environ), dump)
os.execv({real!r}, [{real!r}] + sys.argv[1:])
"""


def test_borg_gets_only_the_allow_listed_environment(
    agent_python: str, repo: Repo, tmp_path: Path
) -> None:
    dump = tmp_path / "borg-environment.json"
    borg = tmp_path / "borg"
    borg.write_text(
        ENVIRONMENT_DUMPING_BORG.format(python=SYSTEM_PYTHON, dump=str(dump), real=REAL_BORG)
    )
    borg.chmod(0o755)
    policy = write_policy(tmp_path / "policy.json", repositories=["/"], paths=["/"], borg=str(borg))
    marker = tmp_path / "passcommand-ran"
    host = {
        **repo.env(),
        "BORG_PASSCOMMAND": f"touch {marker}",  # the job has a passphrase: never run this
        "BORG_EXIT_CODES": "modern",
        "BORG_LOGGING_CONF": str(tmp_path / "no-such-logging.conf"),
        "PYTHONPATH": str(tmp_path / "python-injection"),
        "LC_MESSAGES": "de_DE.UTF-8",
    }
    args = ("serve", "--policy", str(policy))
    result = run_agent(agent_python, "list", repo.job(), host, args=args)
    assert result.exit_code == 0, result.events
    environment = json.loads(dump.read_text())
    agent = load_agent()
    allowed = set(agent.BORG_INHERITED_ENVIRONMENT) | set(agent.BORG_SAFE_ENVIRONMENT)
    assert set(environment) <= allowed | {"BORG_PASSPHRASE"}
    assert environment["BORG_BASE_DIR"] == str(repo.base_dir)  # the host's borg state
    assert environment["BORG_EXIT_CODES"] == "legacy"
    assert environment["BORG_PASSPHRASE"] == repo.passphrase
    assert not marker.exists()


# -- a full repository disk ---------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, unmounted afterwards."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, capture_output=True, timeout=30)


def test_a_full_repository_disk_is_named(
    agent_python: str, tmp_path: Path, small_disk: Path
) -> None:
    base_dir = tmp_path / "borg-base"
    repo = Repo(small_disk / "repo", base_dir, tmp_path / "big-data")
    init_repository(repo.path, repo.passphrase, base_dir)
    repo.data.mkdir()
    (repo.data / "random.bin").write_bytes(random.Random(3).randbytes(8 * 1024 * 1024))
    result = run_agent(agent_python, "create", repo.job(), repo.env())
    assert_framing(result)
    assert result.exit_code == 2, result.events
    assert result.error == {
        "msgid": "RepositoryDiskFull",
        "message": "no space left on the repository's disk",
    }
    assert lock_is_free(repo)
    # Room again (a smaller data set): the next create succeeds.
    (repo.data / "random.bin").write_bytes(random.Random(4).randbytes(64 * 1024))
    again = run_agent(agent_python, "create", repo.job(), repo.env())
    assert again.exit_code == 0, again.events
