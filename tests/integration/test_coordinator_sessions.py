"""A scheduled backup is one agent session, against the real parts: sshd, agent, borg.

One connection, one agent process, one hello for create, prune and stats; each step recorded as
it ends; a connection dropped in any step fails that step (named), stops borg, frees the
repository lock, keeps what the earlier steps did, and the next run succeeds.
"""

from __future__ import annotations

import os
import signal
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

import pytest

from backup_coordinator.ports import EVENT_FINISHED
from backup_coordinator.transport import Connections
from tests.integration.coordinator_support import (
    ShiftedClock,
    drone_args,
    eventually,
    kill_sessions,
    make_config,
    processes_gone,
    settle,
    started_coordinator,
    wrapped_borg_drone_host,
)
from tests.integration.transport_support import DroneHost, started_drone_host

pytestmark = pytest.mark.integration

STOP_PROMISE = 30 + 10 + 10  # the agent's SIGINT and SIGTERM graces, and time to exit

SCHEDULED_STEPS = ("create", "prune", "stats")
ACCEPTED = "Accepted publickey"

# borg, except that the first time it is asked for SUBCOMMAND another borg takes the repository
# lock first, so the real command waits for the lock (as behind a slow client) and is running
# when the test drops the connection. The holder's pid goes into the marker file.
PAUSING_BORG = """\
#!{python}
import os, subprocess, sys, time
real, marker, pause_at = {real!r}, {marker!r}, {subcommand!r}
args = sys.argv[1:]
if args and args[0] == pause_at and not os.path.exists(marker):
    repository = args[args.index("--") + 1].split("::")[0]
    holder = subprocess.Popen(
        [real, "with-lock", "--lock-wait=1", repository, "/bin/sleep", "3600"],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(repository, "lock.exclusive")):
        if time.monotonic() > deadline or holder.poll() is not None:
            sys.exit("the lock holder did not take the lock")
        time.sleep(0.05)
    with open(marker, "w") as file:
        file.write(str(holder.pid))
os.execv(real, [real, *args])
"""


def pausing_drone_host(
    workdir: Path, subcommand: str
) -> tuple[AbstractContextManager[DroneHost], Path]:
    """A loopback drone whose agent runs a borg that pauses once at ``subcommand``."""
    return wrapped_borg_drone_host(workdir, PAUSING_BORG, subcommand, f"paused-at-{subcommand}")


def borg_running(host: DroneHost, subcommand: str) -> bool:
    """Whether a borg ``subcommand`` (not the lock holder) works on the host's repository."""
    for pid in host.borg_processes():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # it just ended
            continue
        if subcommand.encode() in argv[1:3]:  # "borg SUBCOMMAND" or "python3 borg SUBCOMMAND"
            return True
    return False


def connections_accepted(host: DroneHost) -> int:
    return host.sshd.log_text().count(ACCEPTED)


async def test_a_scheduled_backup_is_one_connection_one_agent_and_one_hello(
    tmp_path: Path,
) -> None:
    with started_drone_host(tmp_path / "nas") as host:
        config = make_config(tmp_path, {"nas": drone_args(host)})
        coordinator, port, runner = await started_coordinator(config, ShiftedClock())
        await coordinator.tick()
        await settle(coordinator)
        assert runner.outcomes == [("nas", step, "ok") for step in SCHEDULED_STEPS], runner.errors
        assert runner.sessions == [("nas", "sequence")]
        assert runner.hellos == 1
        assert connections_accepted(host) == 1
        archives = host.archives()
        assert len(archives) == 1
        record = coordinator.drones["nas"].record
        assert record.archive_count == 1  # the stats step counted what borg list counts
        assert record.last_prune is not None
        assert record.last_stats is not None
        finished = port.of(EVENT_FINISHED)[-1]
        assert list(finished["results"]) == list(SCHEDULED_STEPS)
        await coordinator.stop()


async def test_sessions_in_a_row_reuse_one_connection(tmp_path: Path) -> None:
    with started_drone_host(tmp_path / "nas") as host:
        connections = Connections(linger=60)
        try:
            for steps in (["create"], ["stats"], ["create", "prune", "stats"]):
                operation = steps[0] if len(steps) == 1 else "sequence"
                job = host.job(keep={"daily": 7}, **({"steps": steps} if len(steps) > 1 else {}))
                result = await connections.run_agent(host.sshd.target(), operation, job)
                assert result.ok, result
        finally:
            await connections.close()
        assert connections_accepted(host) == 1
        assert len(host.archives()) == 2


@pytest.mark.parametrize(
    ("step", "borg_subcommand"),
    [("create", "create"), ("prune", "prune"), ("prune", "compact"), ("stats", "info")],
)
async def test_a_connection_dropped_in_any_step_fails_that_step_and_frees_the_lock(
    tmp_path: Path, step: str, borg_subcommand: str
) -> None:
    context, marker = pausing_drone_host(tmp_path / "nas", borg_subcommand)
    with context as host:
        config = make_config(tmp_path, {"nas": drone_args(host, lock_wait=120)})
        clock = ShiftedClock()
        coordinator, port, runner = await started_coordinator(config, clock)
        await coordinator.tick()
        await eventually(marker.exists, f"another borg to hold the lock at {borg_subcommand}")
        holder = int(marker.read_text())
        await eventually(
            lambda: borg_running(host, borg_subcommand), f"borg {borg_subcommand} to wait"
        )
        killed = kill_sessions(host)
        assert killed, "the connection's sshd session processes should exist"
        await settle(coordinator)

        done = SCHEDULED_STEPS[: SCHEDULED_STEPS.index(step)]
        assert runner.outcomes == [
            *(("nas", s, "ok") for s in done),
            ("nas", step, "OperationFailed"),
        ], runner.errors
        finished = port.of(EVENT_FINISHED)[-1]
        assert finished["ok"] is False
        assert finished["error"]["kind"] == "unreachable"
        assert finished["error"]["step"] == step
        assert f"connection lost during {step}" in finished["error"]["message"]
        record = coordinator.drones["nas"].record
        assert (record.last_backup is not None) == ("create" in done)
        assert (record.last_prune is not None) == ("prune" in done)
        assert record.last_stats is None
        assert port.state("sensor.borg_nas_state") == "unreachable"
        assert port.state("binary_sensor.borg_nas_problem") == "on"

        await eventually(lambda: processes_gone(killed), "the killed sessions to be gone")
        # The agent's promise: SIGINT, then SIGTERM 30 s later, SIGKILL 10 s after that. On a
        # loaded machine borg may take more than a moment to act on SIGINT; wait out the promise.
        await eventually(
            lambda: not borg_running(host, borg_subcommand), "borg to stop", timeout=STOP_PROMISE
        )
        await eventually(lambda: not host.agent_processes(), "the agent to exit", STOP_PROMISE)
        os.killpg(holder, signal.SIGTERM)  # the other client finishes
        await eventually(lambda: not host.borg_processes(), "every borg to end on the drone")
        await eventually(host.lock_is_free, "the repository lock to be released")

        assert record.backoff_until is not None
        clock.advance(record.backoff_until - clock() + timedelta(days=1))
        runner.outcomes.clear()
        await coordinator.tick()
        await settle(coordinator)
        assert runner.outcomes == [("nas", s, "ok") for s in SCHEDULED_STEPS], runner.errors
        assert port.state("sensor.borg_nas_state") == "idle"
        assert port.state("binary_sensor.borg_nas_problem") == "off"
        assert record.last_stats is not None
        await coordinator.stop()
