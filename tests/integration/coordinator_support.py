"""The real coordinator driven against loopback drones: real sshd, real agent, real borg.

Fixtures and helpers for ``test_coordinator_real.py`` and ``test_cli.py``. Each drone host is a
``transport_support.DroneHost`` (its own sshd, repository, BORG_BASE_DIR and data folder); the
coordinator reaches it through ``transport.run_agent``, wrapped by ``RecordingRunner`` so tests
can see which agent operation ran for which drone, how many ran at once, and when progress came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backup_coordinator.config import Config, parse_config
from backup_coordinator.coordinator import Coordinator
from backup_coordinator.model import SshTarget
from backup_coordinator.ports import EVENT_FINISHED
from backup_coordinator.protocol import AgentEvent, Hello, Progress, Result, StepResult
from backup_coordinator.transport import run_agent, session_steps
from devstack.borg import AGENT_PATH
from devstack.sshd import process_is_running
from devstack.waiting import async_wait_until
from tests.integration.transport_support import (
    PASSPHRASE,
    DroneHost,
    session_processes,
    started_drone_host,
)
from tests.memory_port import MemoryPort

APP_ENTRY = {"module": "backup_coordinator.app", "class": "BackupCoordinator"}
# Random data is incompressible, so lzma at its slowest keeps borg busy for seconds on a few MB:
# long enough to interrupt a create after its first progress event.
SLOW_COMPRESSION = "lzma,9"
BIG_DATA_MEGABYTES = 8
DEADLINE = 60.0  # seconds any one coordinator operation against a loopback drone may take


class ShiftedClock:
    """The real UTC time plus an offset a test can move forward (to pass a backoff)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class RecordingRunner:
    """``transport.run_agent`` as the coordinator's runner, recording what it was asked to do.

    ``sessions`` has one entry per agent session (one SSH connection and agent process);
    ``calls`` and ``outcomes`` one per step, so a scheduled backup's sequence shows as its
    create, prune and stats. Drones are told apart by their job's ``archive_prefix`` (the
    drone's name by default), so drones sharing one sshd are told apart too.
    """

    sessions: list[tuple[str, str]] = field(default_factory=list)  # (drone, agent operation)
    hellos: int = 0
    calls: list[tuple[str, str]] = field(default_factory=list)  # (drone, step) as each starts
    outcomes: list[tuple[str, str, str]] = field(default_factory=list)  # (drone, step, ok/error)
    errors: list[str] = field(default_factory=list)  # every failure in full, for messages
    active: int = 0
    max_active: int = 0
    progressed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(
        self,
        target: SshTarget,
        operation: str,
        job: Mapping[str, Any],
        on_event: Callable[[AgentEvent], Awaitable[None]] | None,
    ) -> Result:
        drone = str(job.get("archive_prefix", f"{target.host}:{target.port}"))
        steps = session_steps(operation, job)
        self.sessions.append((drone, operation))
        self.calls.append((drone, steps[0]))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        ended = 0

        async def relay(event: AgentEvent) -> None:
            nonlocal ended
            if isinstance(event, Progress):
                self.progressed.set()
            if isinstance(event, Hello):
                self.hellos += 1
            if isinstance(event, StepResult) and event.ok:
                self.outcomes.append((drone, event.operation, "ok"))
                ended += 1
                if ended < len(steps):
                    self.calls.append((drone, steps[ended]))
            if on_event is not None:
                await on_event(event)

        try:
            result = await run_agent(target, operation, job, relay)
        except BaseException as error:
            step = steps[min(ended, len(steps) - 1)]
            self.outcomes.append((drone, step, type(error).__name__))
            self.errors.append(f"{drone} {step}: {error!s}")
            raise
        finally:
            self.active -= 1
        if len(steps) == 1:
            self.outcomes.append((drone, operation, "ok"))
        return result

    async def wait_for_progress(self, timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout):
            await self.progressed.wait()


@contextlib.contextmanager
def drone_hosts(workdir: Path, names: list[str]) -> Iterator[dict[str, DroneHost]]:
    """One started loopback drone per name (own sshd, repository and data); all stopped after."""
    with ExitStack() as stack:
        hosts = {name: stack.enter_context(started_drone_host(workdir / name)) for name in names}
        yield hosts
    for host in hosts.values():
        assert host.sshd.pid is None, "every sshd a test started is stopped"


def drone_args(host: DroneHost, **changes: Any) -> dict[str, Any]:
    """One drone's apps.yaml entry for a loopback drone host."""
    target = host.sshd.target()
    args: dict[str, Any] = {
        "host": target.host,
        "port": target.port,
        "user": target.user,
        "client_key": target.client_key,
        "known_hosts": target.known_hosts,
        "connect_timeout": 5,
        "keepalive_interval": 5,
        "repository": str(host.repository),
        "passphrase": PASSPHRASE,
        "paths": [str(host.data)],
        "compression": "lz4",
        "lock_wait": 1,
    }
    args.update(changes)
    return args


def make_config(state_dir: Path, drones: Mapping[str, Mapping[str, Any]], **top: Any) -> Config:
    """A coordinator configuration as AppDaemon would pass it; no drone may be skipped."""
    args: dict[str, Any] = {
        **APP_ENTRY,
        "state_file": str(state_dir / "state.json"),
        "progress_interval": 0.5,
        "max_concurrent": 1,
        "drones": {name: dict(settings) for name, settings in drones.items()},
        **top,
    }
    config = parse_config(args, state_dir)
    assert not config.problems, config.problems
    return config


async def started_coordinator(
    config: Config, clock: ShiftedClock, runner: RecordingRunner | None = None
) -> tuple[Coordinator, MemoryPort, RecordingRunner]:
    port = MemoryPort()
    runner = runner or RecordingRunner()
    coordinator = Coordinator(config, port, runner, clock=clock)
    await coordinator.start({})
    return coordinator, port, runner


async def settle(coordinator: Coordinator, timeout: float = DEADLINE) -> None:
    """Waits (with a deadline) until no operation runs."""
    async with asyncio.timeout(timeout):
        await coordinator.wait_idle()


async def eventually(predicate: Callable[[], object], what: str, timeout: float = 20) -> None:
    """Polls a synchronous ``predicate`` without blocking the event loop."""

    async def check() -> bool:
        return bool(predicate())

    await async_wait_until(check, what, timeout=timeout)


def saved_state(config: Config) -> dict[str, Any]:
    value = json.loads(config.state_file.read_text())
    assert isinstance(value, dict)
    return value


def link_big_data(source: Path, data: Path) -> None:
    """Hard links the module's random files into a drone's data folder (instant, no copy)."""
    (data / "big").mkdir(parents=True, exist_ok=True)
    for file in sorted(source.iterdir()):
        os.link(file, data / "big" / file.name)


def kill_sessions(host: DroneHost) -> list[int]:
    """SIGKILLs the sshd processes serving the host's open connections (not the listener):
    to the coordinator the connection drops as if the network went away."""
    assert host.sshd.pid is not None
    sessions = session_processes(host.sshd.pid)
    for pid in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sessions


def processes_gone(pids: list[int]) -> bool:
    return not any(process_is_running(pid) for pid in pids)


def sensor_time(port: MemoryPort, entity_id: str) -> datetime:
    """A timestamp sensor's state, which must be a timezone-aware ISO timestamp."""
    moment = datetime.fromisoformat(port.state(entity_id))
    assert moment.tzinfo is not None, f"{entity_id} is not timezone-aware: {moment}"
    return moment


def all_output(port: MemoryPort) -> str:
    """Everything the coordinator showed Home Assistant: states, events, notifications, log."""
    return json.dumps(
        {
            "states": {k: [v.state, dict(v.attributes)] for k, v in port.states.items()},
            "events": port.events,
            "notifications": port.notifications,
            "lines": port.lines,
        },
        default=str,
    )


async def host_settled(host: DroneHost) -> None:
    """On the drone: borg and the agent have exited and borg can take the repository lock."""
    await eventually(lambda: not host.borg_processes(), "borg to stop on the drone")
    await eventually(lambda: not host.agent_processes(), "the agent to exit")
    await eventually(host.lock_is_free, "the repository lock to be free")


def last_failure(port: MemoryPort, drone: str) -> dict[str, Any]:
    """The error of the drone's last finished event, which must be a failure."""
    finished = [event for event in port.of(EVENT_FINISHED) if event["drone"] == drone][-1]
    assert finished["ok"] is False, finished
    error = finished["error"]
    assert isinstance(error, dict)
    return error


def pass_backoff(coordinator: Coordinator, clock: ShiftedClock, drone: str) -> None:
    """Moves the clock past the drone's backoff (and its frequency): it is due again."""
    backoff = coordinator.drones[drone].record.backoff_until
    assert backoff is not None, "a failure sets a backoff"
    assert backoff > clock()
    clock.advance(backoff - clock() + timedelta(days=1))


def wrapped_borg_drone_host(
    workdir: Path, script: str, subcommand: str, marker_name: str
) -> tuple[AbstractContextManager[DroneHost], Path]:
    """A loopback drone whose agent runs ``script`` as borg (named by the host's policy).

    ``script`` is a wrapper around the real borg with the fields ``python``, ``real``,
    ``marker`` and ``subcommand``; it writes the marker file when it acts on ``subcommand``.
    Returns the drone (a context manager, not started yet) and the marker's path.
    """
    workdir.mkdir(parents=True)
    marker = workdir / marker_name
    borg = workdir / "wrapped-borg"
    borg.write_text(
        script.format(
            python=sys.executable, real="/usr/bin/borg", marker=str(marker), subcommand=subcommand
        )
    )
    borg.chmod(0o755)
    policy = workdir / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "repositories": [str(workdir / "host" / "repo")],
                "paths": [str(workdir / "host" / "data")],
                "borg": str(borg),
            }
        )
    )
    command = [sys.executable, str(AGENT_PATH), "serve", "--policy", str(policy)]
    return started_drone_host(workdir / "host", command), marker
