"""The fault suite: what a drone can meet, against the real parts (OpenSSH sshd, agent, borg).

For every fault: the drone ends in a clear state, the error is reported with its kind and
hint, no borg lock is left behind, the next operation succeeds and nothing recorded is lost.
Connection drops mid-step are in test_coordinator_sessions.py, restarts in
test_coordinator_real.py, Home Assistant restarting mid-backup in tests/e2e/test_faults_stack.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import yaml

from backup_coordinator.config import SessionLimits
from backup_coordinator.coordinator import Coordinator
from backup_coordinator.ports import EVENT_FINISHED, EVENT_STARTED
from backup_coordinator.protocol import PROTOCOL_VERSION
from backup_coordinator.transport import Connections
from devstack.borg import borg_env
from devstack.waiting import wait_until
from tests.integration.coordinator_support import (
    APP_ENTRY,
    BIG_DATA_MEGABYTES,
    SLOW_COMPRESSION,
    ShiftedClock,
    all_output,
    drone_args,
    eventually,
    host_settled,
    last_failure,
    link_big_data,
    make_config,
    pass_backoff,
    saved_state,
    settle,
    started_coordinator,
    wrapped_borg_drone_host,
)
from tests.integration.transport_support import (
    PASSPHRASE,
    DroneHost,
    processes_mentioning,
    started_drone_host,
)
from tests.memory_port import MemoryPort

pytestmark = pytest.mark.integration

SCHEDULED_STEPS = ("create", "prune", "stats")


@pytest.fixture(scope="module")
def big_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few MB of random (incompressible) files, generated once for the module."""
    folder = tmp_path_factory.mktemp("big-data")
    for index in range(BIG_DATA_MEGABYTES):
        (folder / f"random-{index}.bin").write_bytes(os.urandom(1024 * 1024))
    return folder


def assert_clear_failure(port: MemoryPort, drone: str, kind: str, step: str) -> dict[str, str]:
    """The drone shows the failure: its state, the problem, the error with kind and hint."""
    error = last_failure(port, drone)
    assert error["kind"] == kind, error
    assert error["step"] == step, error
    assert error["hint"], f"a failure of kind {kind} should say what to do: {error}"
    assert port.state(f"sensor.borg_{drone}_state") == "error"
    assert port.state(f"binary_sensor.borg_{drone}_problem") == "on"
    last_error = port.states[f"sensor.borg_{drone}_last_error"]
    assert last_error.attributes["kind"] == kind
    assert last_error.attributes["hint"] == error["hint"]
    return error


async def assert_next_run_succeeds(
    coordinator: Coordinator, port: MemoryPort, clock: ShiftedClock, drone: str
) -> None:
    """After the backoff the scheduled backup runs through and the problem clears."""
    pass_backoff(coordinator, clock, drone)
    await coordinator.tick()
    await settle(coordinator)
    finished = port.of(EVENT_FINISHED)[-1]
    assert finished["drone"] == drone
    assert finished["ok"] is True, finished
    assert list(finished["results"]) == list(SCHEDULED_STEPS)
    assert port.state(f"sensor.borg_{drone}_state") == "idle"
    assert port.state(f"binary_sensor.borg_{drone}_problem") == "off"
    assert coordinator.drones[drone].record.consecutive_failures == 0


# --- a drone that hangs -------------------------------------------------------------------------

# The forced command of a hung drone: it takes the session and the job and never answers,
# until the channel closes. With AFTER_HELLO it first says hello, like an agent whose borg hangs.
HUNG_AGENT = """\
import sys
if sys.argv[1:] == ["after-hello"]:
    sys.stdout.write({hello!r} + "\\n")
    sys.stdout.flush()
sys.stdin.buffer.read()
"""


def hello_line() -> str:
    return json.dumps(
        {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "agent_version": "hung",
            "borg_version": "1.2.4",
            "hostname": "hung",
            "operation": "sequence",
        }
    )


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("before-hello", "sent no hello within 2 s"),
        ("after-hello", "sent nothing for 0.05 min during create"),
    ],
    ids=["before-hello", "after-hello"],
)
async def test_a_drone_that_stays_silent_times_out_and_the_next_drone_is_not_blocked(
    tmp_path: Path, when: str, message: str
) -> None:
    script = tmp_path / "hung-agent.py"
    script.write_text(HUNG_AGENT.format(hello=hello_line()))
    hung_command = [sys.executable, str(script), when]
    with (
        started_drone_host(tmp_path / "hung", hung_command) as hung,
        started_drone_host(tmp_path / "nas") as nas,
    ):
        config = make_config(
            tmp_path,
            {"hung": drone_args(hung, lock_wait=0), "nas": drone_args(nas)},
            hello_timeout=2,
        )
        assert config.limits.hello_seconds == 2
        # apps.yaml takes whole minutes; 3 s of silence keeps the test short.
        limits = SessionLimits(2, {**config.limits.inactivity_minutes, "create": 0.05})
        connections = Connections(limits=limits)
        port = MemoryPort()
        coordinator = Coordinator(config, port, connections.run_agent, clock=ShiftedClock())
        await coordinator.start({})
        try:
            await coordinator.tick()  # both due; one at a time (max_concurrent 1), hung first
            await settle(coordinator)
        finally:
            await connections.close()

        assert [e["drone"] for e in port.of(EVENT_STARTED)] == ["hung", "nas"]
        error = assert_clear_failure(port, "hung", "timeout", "create")
        assert message in error["message"], error
        assert ("hello_timeout" if when == "before-hello" else "inactivity_timeout") in error[
            "hint"
        ]
        assert coordinator.drones["hung"].record.backoff_until is not None
        # The hung command was told the coordinator left (its stdin closed) and ended.
        await eventually(
            lambda: not processes_mentioning(str(script), "python"), "the hung command to end"
        )
        # The other drone was not held up: its backup ran through.
        finished = port.of(EVENT_FINISHED)[-1]
        assert (finished["drone"], finished["ok"]) == ("nas", True), finished
        assert len(nas.archives()) == 1
        await coordinator.stop()


def test_the_cli_run_of_a_silent_drone_ends_with_a_timeout(tmp_path: Path) -> None:
    script = tmp_path / "hung-agent.py"
    script.write_text(HUNG_AGENT.format(hello=hello_line()))
    with started_drone_host(tmp_path / "hung", [sys.executable, str(script)]) as hung:
        apps_yaml = tmp_path / "apps.yaml"
        app = {**APP_ENTRY, "hello_timeout": 2, "drones": {"hung": drone_args(hung)}}
        apps_yaml.write_text(yaml.safe_dump({"backup_coordinator": app}))
        command = [sys.executable, "-m", "backup_coordinator", "--config", str(apps_yaml)]
        done = subprocess.run(
            [*command, "run", "hung", "create"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1, done
    assert "hung: create failed: timeout: " in done.stdout, done.stdout
    assert "sent no hello within 2 s" in done.stdout
    assert PASSPHRASE not in done.stdout + done.stderr


# --- the agent or borg killed -------------------------------------------------------------------


async def test_the_agent_killed_mid_create_fails_clearly_and_the_next_run_succeeds(
    tmp_path: Path, big_data: Path
) -> None:
    with started_drone_host(tmp_path / "nas") as host:
        link_big_data(big_data, host.data)
        config = make_config(tmp_path, {"nas": drone_args(host, compression=SLOW_COMPRESSION)})
        clock = ShiftedClock()
        coordinator, port, runner = await started_coordinator(config, clock)
        await coordinator.tick()
        await runner.wait_for_progress()
        agents = host.agent_processes()
        assert len(agents) == 1, agents
        os.kill(agents[0], signal.SIGKILL)
        await settle(coordinator)

        error = assert_clear_failure(port, "nas", "agent", "create")
        assert "without a result" in error["message"], error
        assert "killed by signal KILL" in error["message"], error
        assert "killed on 127.0.0.1" in error["hint"], error
        record = coordinator.drones["nas"].record
        assert record.last_backup is None
        assert saved_state(config)["drones"]["nas"]["consecutive_failures"] == 1
        await host_settled(host)

        await assert_next_run_succeeds(coordinator, port, clock, "nas")
        assert len(host.archives()) == 1
        await coordinator.stop()


# borg, except that the first time it is asked for SUBCOMMAND it runs the real borg as its
# child and stops that child (SIGSTOP) the moment it holds the repository lock, so the test can
# SIGKILL it mid-operation, lock held. The child's pid goes into the marker file.
STOPPING_BORG = """\
#!{python}
import os, signal, subprocess, sys, time
real, marker, stop_at = {real!r}, {marker!r}, {subcommand!r}
args = sys.argv[1:]
if not args or args[0] != stop_at or os.path.exists(marker):
    os.execv(real, [real, *args])
repository = args[args.index("--") + 1].split("::")[0]
lock = os.path.join(repository, "lock.exclusive")
child = subprocess.Popen([real, *args])
deadline = time.monotonic() + 30
while child.poll() is None and time.monotonic() < deadline:
    if os.path.isdir(lock) and os.listdir(lock):
        os.kill(child.pid, signal.SIGSTOP)
        break
    time.sleep(0.001)
with open(marker, "w") as file:
    file.write(str(child.pid))
returncode = child.wait()
if returncode < 0:  # die of the same signal (SIGKILL), as borg itself did
    os.kill(os.getpid(), -returncode)
sys.exit(returncode)
"""


def stopping_drone_host(
    workdir: Path, subcommand: str
) -> tuple[AbstractContextManager[DroneHost], Path]:
    """A loopback drone whose agent runs a borg that stops once in ``subcommand``, lock held."""
    return wrapped_borg_drone_host(workdir, STOPPING_BORG, subcommand, f"stopped-in-{subcommand}")


def is_stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "T"


@pytest.mark.parametrize("subcommand", ["prune", "compact"])
async def test_borg_killed_mid_prune_or_compact_fails_the_step_and_the_next_run_succeeds(
    tmp_path: Path, subcommand: str
) -> None:
    context, marker = stopping_drone_host(tmp_path / "nas", subcommand)
    with context as host:
        config = make_config(tmp_path, {"nas": drone_args(host)})
        clock = ShiftedClock()
        coordinator, port, _ = await started_coordinator(config, clock)
        await coordinator.tick()
        await eventually(marker.exists, f"borg {subcommand} to start")
        borg = int(marker.read_text())
        await eventually(lambda: is_stopped(borg), f"borg {subcommand} stopped, lock held")
        assert (host.repository / "lock.exclusive").is_dir()
        os.kill(borg, signal.SIGKILL)
        await settle(coordinator)

        # compact runs inside the agent's prune step.
        error = assert_clear_failure(port, "nas", "borg_error", "prune")
        assert "137" in error["message"] or "KILL" in error["message"], error
        record = coordinator.drones["nas"].record
        assert record.last_backup is not None, "the create before it stays recorded"
        assert record.last_archive is not None
        assert record.last_prune is None
        # The killed borg's lock is stale (its process is gone, on this host): borg removes
        # such a lock by itself, so it blocks nobody.
        await host_settled(host)

        await assert_next_run_succeeds(coordinator, port, clock, "nas")
        assert record.last_prune is not None
        assert len(host.archives()) == 2
        await coordinator.stop()


# --- the repository refuses ---------------------------------------------------------------------


@contextmanager
def another_client_holds_the_lock(host: DroneHost) -> Iterator[None]:
    """Another borg client holds the repository lock until the block ends."""
    holder = subprocess.Popen(
        ["borg", "with-lock", "--lock-wait", "1", str(host.repository), "sleep", "3600"],
        env={**os.environ, **borg_env(host.base_dir, PASSPHRASE)},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: (host.repository / "lock.exclusive").is_dir(), "the other's lock")
        yield
    finally:
        os.killpg(holder.pid, signal.SIGTERM)  # the other client is done
        holder.wait(timeout=30)


async def test_a_repository_locked_by_another_client_times_out_backs_off_then_succeeds(
    tmp_path: Path,
) -> None:
    with started_drone_host(tmp_path / "nas") as host:
        config = make_config(tmp_path, {"nas": drone_args(host, lock_wait=1)})
        clock = ShiftedClock()
        coordinator, port, _ = await started_coordinator(config, clock)
        with another_client_holds_the_lock(host):
            await coordinator.tick()
            await settle(coordinator)
            error = assert_clear_failure(port, "nas", "borg_error", "create")
            assert "LockTimeout" in error["message"], error
            assert "another borg holds the repository lock" in error["hint"]
            assert coordinator.drones["nas"].record.backoff_until is not None
        await host_settled(host)
        assert host.archives() == []

        await assert_next_run_succeeds(coordinator, port, clock, "nas")
        assert len(host.archives()) == 1
        await coordinator.stop()


async def test_a_wrong_passphrase_fails_with_a_hint_and_the_fixed_config_succeeds(
    tmp_path: Path,
) -> None:
    # Quotes, a backslash and non-ASCII, but none of the words borg's message and the hint use:
    # the redactor masks any 8 characters in a row of a passphrase wherever they appear.
    wrong = 'wr0ng "s3cr3t" \\ mit ü'
    with started_drone_host(tmp_path / "nas") as host:
        config = make_config(tmp_path, {"nas": drone_args(host, passphrase=wrong)})
        clock = ShiftedClock()
        coordinator, port, _ = await started_coordinator(config, clock)
        await coordinator.tick()
        await settle(coordinator)
        error = assert_clear_failure(port, "nas", "borg_error", "create")
        assert "PassphraseWrong" in error["message"], error
        assert "passphrase does not open this repository" in error["hint"]
        assert wrong not in all_output(port)
        assert wrong not in config.state_file.read_text()
        await host_settled(host)
        await coordinator.stop()

        # The passphrase is fixed in apps.yaml: the app starts again with what it recorded.
        fixed = make_config(tmp_path, {"nas": drone_args(host)})
        restarted, port2, _ = await started_coordinator(fixed, clock)
        assert restarted.drones["nas"].record.consecutive_failures == 1
        assert port2.state("binary_sensor.borg_nas_problem") == "on"
        await assert_next_run_succeeds(restarted, port2, clock, "nas")
        assert len(host.archives()) == 1
        await restarted.stop()


# --- the repository's disk is full ----------------------------------------------------------------


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (created), unmounted after."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def grow_tmpfs(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


async def test_a_full_repository_disk_fails_clearly_and_succeeds_once_space_is_freed(
    tmp_path: Path, big_data: Path
) -> None:
    # The repository lives on a 3 MiB disk; the data is 8 MiB of random bytes.
    with (
        small_tmpfs(tmp_path / "nas" / "repo", "3m") as disk,
        started_drone_host(tmp_path / "nas") as host,
    ):
        assert host.repository == disk
        link_big_data(big_data, host.data)
        config = make_config(tmp_path, {"nas": drone_args(host)})
        clock = ShiftedClock()
        coordinator, port, _ = await started_coordinator(config, clock)
        await coordinator.tick()
        await settle(coordinator)

        error = last_failure(port, "nas")
        assert error["kind"] == "borg_error", error
        assert error["step"] == "create", error
        assert "RepositoryDiskFull" in error["message"], error
        assert "no space left on the repository's disk" in error["message"]
        assert "free space" in error["hint"]
        assert_clear_failure(port, "nas", "borg_error", "create")
        assert port.state("sensor.borg_nas_state") == "error"
        assert port.state("binary_sensor.borg_nas_problem") == "on"
        assert coordinator.drones["nas"].record.last_backup is None
        await host_settled(host)

        grow_tmpfs(disk, "64m")  # space freed on the repository's disk
        await assert_next_run_succeeds(coordinator, port, clock, "nas")
        assert len(host.archives()) == 1
        await coordinator.stop()
