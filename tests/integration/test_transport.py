"""The SSH transport against a real OpenSSH sshd on 127.0.0.1 forcing the real agent and borg."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from backup_coordinator.jobs import hello_job
from backup_coordinator.protocol import (
    AgentEvent,
    FailureKind,
    Hello,
    OperationFailed,
    Progress,
)
from backup_coordinator.transport import PROBE_STEPS, probe, run_agent
from devstack.sshd import process_is_running
from devstack.waiting import async_wait_until, wait_until
from tests.integration.transport_support import (
    ARCHIVE_PREFIX,
    PASSPHRASE,
    DroneHost,
    session_processes,
    started_drone_host,
    write_random_data,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def host(tmp_path: Path) -> Iterator[DroneHost]:
    with started_drone_host(tmp_path) as drone_host:
        yield drone_host
    assert drone_host.sshd.pid is None


class Recorder:
    def __init__(self) -> None:
        self.events: list[AgentEvent] = []
        self.progressed = asyncio.Event()

    async def __call__(self, event: AgentEvent) -> None:
        self.events.append(event)
        if isinstance(event, Progress):
            self.progressed.set()


async def test_hello_reports_the_agent_and_borg(host: DroneHost) -> None:
    recorder = Recorder()
    result = await run_agent(host.sshd.target(), "hello", hello_job(), recorder)
    assert result.ok
    hello = recorder.events[0]
    assert isinstance(hello, Hello)
    assert hello.operation == "hello"
    assert hello.borg_version.startswith("1.")
    assert "Starting session: forced-command" in host.sshd.log_text()


async def test_create_makes_an_archive_and_streams_events(host: DroneHost) -> None:
    recorder = Recorder()
    result = await run_agent(host.sshd.target(), "create", host.job(), recorder)

    assert result.rc == 0
    name = result.data["archive"]["name"]
    assert name.startswith(f"{ARCHIVE_PREFIX}-")
    assert host.archives() == [name]
    assert isinstance(recorder.events[0], Hello)
    assert recorder.events[-1] == result
    assert all(e.operation == "create" for e in recorder.events if isinstance(e, Progress))


async def test_the_forced_command_runs_nothing_but_the_agent(
    host: DroneHost, tmp_path: Path
) -> None:
    witness = tmp_path / "pwned"
    with pytest.raises(OperationFailed) as caught:
        await run_agent(host.sshd.target(), f"create; touch {witness}", host.job())
    assert caught.value.kind is FailureKind.REJECTED
    assert not witness.exists()
    assert host.archives() == []


async def test_a_wrong_host_key_stops_before_any_session(host: DroneHost) -> None:
    target = replace(host.sshd.target(), known_hosts=str(host.sshd.wrong_known_hosts()))
    with pytest.raises(OperationFailed) as caught:
        await run_agent(target, "create", host.job())
    assert caught.value.kind is FailureKind.HOST_KEY
    assert PASSPHRASE not in str(caught.value)
    assert "Starting session" not in host.sshd.log_text()
    assert "Accepted publickey" not in host.sshd.log_text()
    assert host.archives() == []


async def test_a_stopped_sshd_is_unreachable_quickly_and_back_after_restart(
    host: DroneHost,
) -> None:
    port = host.sshd.port
    host.sshd.stop()
    started = time.monotonic()
    with pytest.raises(OperationFailed) as caught:
        await run_agent(host.sshd.target(), "hello", hello_job())
    assert caught.value.kind is FailureKind.UNREACHABLE
    assert time.monotonic() - started < 2
    host.sshd.start()
    assert host.sshd.port == port
    result = await run_agent(host.sshd.target(), "hello", hello_job())
    assert result.ok
    host.sshd.stop()
    host.sshd.stop()  # a second stop is harmless


async def test_cancelling_mid_create_stops_borg_and_releases_the_lock(host: DroneHost) -> None:
    write_random_data(host.data, megabytes=16)
    # lzma at its slowest keeps borg busy for seconds on a few MB of random data.
    slow_job = host.job(compression="lzma,9")
    recorder = Recorder()
    task = asyncio.create_task(run_agent(host.sshd.target(), "create", slow_job, recorder))
    await asyncio.wait_for(recorder.progressed.wait(), 30)
    assert host.borg_processes(), "borg should still be running"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    wait_until(lambda: not host.borg_processes(), "borg to stop on the drone", timeout=15)
    wait_until(host.lock_is_free, "the repository lock to be released", timeout=15)
    wait_until(lambda: not host.agent_processes(), "the agent to exit", timeout=15)
    result = await run_agent(host.sshd.target(), "create", host.job())
    assert result.rc == 0
    assert result.data["archive"]["name"] in host.archives()


async def test_a_silent_connection_is_lost_by_keepalive_and_borg_stops(host: DroneHost) -> None:
    write_random_data(host.data, megabytes=16)
    slow_job = host.job(compression="lzma,9")
    recorder = Recorder()
    target = host.sshd.target(keepalive_interval=0.3)
    task = asyncio.create_task(run_agent(target, "create", slow_job, recorder))
    await asyncio.wait_for(recorder.progressed.wait(), 30)
    assert host.sshd.pid is not None
    frozen = session_processes(host.sshd.pid)
    assert frozen, "the session's sshd processes should exist"
    # A frozen sshd session answers no keepalives, like a host that fell off the network.
    signal_all(frozen, signal.SIGSTOP)
    try:
        with pytest.raises(OperationFailed) as caught:
            await asyncio.wait_for(task, 15)
    finally:
        signal_all(frozen, signal.SIGCONT)
    assert caught.value.kind is FailureKind.UNREACHABLE
    assert "connection lost during create" in caught.value.message
    wait_until(lambda: not host.borg_processes(), "borg to stop on the drone", timeout=15)
    wait_until(host.lock_is_free, "the repository lock to be released", timeout=15)


def signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


async def test_probe_passes_on_a_good_drone(host: DroneHost) -> None:
    checks = await probe(host.sshd.target())
    assert [(c.name, c.ok) for c in checks] == [(name, True) for name in PROBE_STEPS]
    assert "borg 1." in checks[-1].detail


async def test_probe_stops_at_a_wrong_host_key(host: DroneHost) -> None:
    target = replace(host.sshd.target(), known_hosts=str(host.sshd.wrong_known_hosts()))
    checks = await probe(target)
    assert [c.ok for c in checks] == [True, False, False, False]
    assert "ssh-keyscan" in checks[1].fix


async def test_probe_reports_a_host_without_the_agent(tmp_path: Path) -> None:
    missing_agent = ["/usr/bin/python3", str(tmp_path / "no-such-agent.py"), "serve"]
    with started_drone_host(tmp_path, command=missing_agent) as broken:
        checks = await probe(broken.sshd.target())
        pid = broken.sshd.pid
    assert pid is not None
    assert not process_is_running(pid)
    assert [c.ok for c in checks] == [True, True, True, False]
    assert checks[3].name == "agent hello"
    assert "agent missing or not the backup-drone agent" in checks[3].detail


async def test_sessions_end_when_the_client_goes(host: DroneHost) -> None:
    """The agent's session ends with the connection, so no agent lingers after a run."""
    await run_agent(host.sshd.target(), "hello", hello_job())

    async def agent_gone() -> bool:
        return not host.agent_processes()

    await async_wait_until(agent_gone, "the agent to exit", timeout=10)
