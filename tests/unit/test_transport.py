"""The SSH transport against asyncssh's in-process server playing a drone's agent.

The in-process server does not enforce command=/restrict; the real sshd tests in
tests/integration/test_transport.py cover that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from backup_coordinator import transport
from backup_coordinator.config import SessionLimits
from backup_coordinator.model import SshTarget
from backup_coordinator.protocol import (
    PROTOCOL_VERSION,
    AgentEvent,
    FailureKind,
    Hello,
    LogLine,
    OperationFailed,
    Progress,
    Result,
    StepResult,
)
from backup_coordinator.transport import (
    PROBE_STEPS,
    Check,
    Connections,
    Silence,
    checked,
    error_text,
    probe,
    run_agent,
)
from devstack.sshd import authorized_keys_line, forced_command
from devstack.waiting import free_port

PASSPHRASE = "correct horse battery staple"
JOB: dict[str, Any] = {
    "protocol": PROTOCOL_VERSION,
    "repository": "/srv/borg/x",
    "passphrase": PASSPHRASE,
}

ServerProcess = asyncssh.SSHServerProcess[str]
Behaviour = Callable[[ServerProcess, "FakeDrone"], Awaitable[None]]


def line(obj: dict[str, Any]) -> str:
    return json.dumps(obj) + "\n"


def hello(operation: str = "create", protocol: int = PROTOCOL_VERSION) -> str:
    return line(
        {
            "type": "hello",
            "protocol": protocol,
            "agent_version": "9.9",
            "borg_version": "1.2.4",
            "hostname": "fakehost",
            "operation": operation,
        }
    )


def progress(nfiles: int) -> str:
    return line(
        {
            "type": "progress",
            "operation": "create",
            "time": 1.5,
            "nfiles": nfiles,
            "original_size": 10 * nfiles,
            "compressed_size": 5 * nfiles,
            "deduplicated_size": 2 * nfiles,
            "path": f"data/file{nfiles}",
        }
    )


def result(rc: int = 0, error: dict[str, str] | None = None, operation: str = "create") -> str:
    return line(
        {
            "type": "result",
            "operation": operation,
            "ok": rc in (0, 1),
            "rc": rc,
            "duration": 0.1,
            "warnings": 1 if rc == 1 else 0,
            "data": {"archive": {"name": "fakehost-2025-01-01T00:00:00"}} if rc < 2 else {},
            "error": error,
        }
    )


class FakeDrone:
    """asyncssh's server on 127.0.0.1 whose sessions run ``behaviour`` as the agent."""

    def __init__(self, workdir: Path) -> None:
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = free_port()
        self.client_key_path = workdir / "client_key"
        self.client_key.write_private_key(str(self.client_key_path))
        self.known_hosts_path = workdir / "known_hosts"
        self.known_hosts_path.write_text(known_hosts_line(self.port, self.host_key))
        self.behaviour: Behaviour = speak(hello(), result())
        self.commands: list[str] = []
        self.jobs: list[dict[str, Any]] = []
        self.stdin_closed = asyncio.Event()
        self.connections = 0  # connections accepted
        self.connections_changed = asyncio.Event()
        self._open: set[asyncssh.SSHServerConnection] = set()
        self._server: asyncssh.SSHAcceptor | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def drop_connections(self) -> None:
        """The host's side of every connection goes away (a reboot, a network cut)."""
        for conn in list(self._open):
            conn.abort()
        await wait_for(self.connections_changed, lambda: not self._open, "connections dropped")

    async def start(self) -> None:
        authorized = asyncssh.import_authorized_keys(self.client_key.export_public_key().decode())
        self._server = await asyncssh.listen(
            "127.0.0.1",
            self.port,
            server_host_keys=[self.host_key],
            authorized_client_keys=authorized,
            process_factory=self._run_session,
            encoding="utf-8",
            server_factory=lambda: CountingServer(self),
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def target(self, **changes: Any) -> SshTarget:
        target = SshTarget(
            host="127.0.0.1",
            port=self.port,
            user="coordinator",
            client_key=str(self.client_key_path),
            known_hosts=str(self.known_hosts_path),
            connect_timeout=5,
            keepalive_interval=5,
        )
        return replace(target, **changes)

    async def read_job(self, process: ServerProcess) -> None:
        self.jobs.append(json.loads(await process.stdin.readline()))

    async def wait_for_stdin_eof(self, process: ServerProcess) -> None:
        """What the real agent does while borg runs: watch stdin for the coordinator leaving."""
        try:
            with contextlib.suppress(OSError, asyncssh.Error):
                while await process.stdin.read(1024):
                    pass
        finally:
            self.stdin_closed.set()

    async def _run_session(self, process: ServerProcess) -> None:
        self.commands.append(process.command or "")
        await self.behaviour(process, self)


class CountingServer(asyncssh.SSHServer):
    def __init__(self, drone: FakeDrone) -> None:
        self.drone = drone
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.drone.connections += 1
        self.drone._open.add(conn)
        self.drone.connections_changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.drone._open.discard(self.conn)
        self.drone.connections_changed.set()


async def wait_for(
    changed: asyncio.Event, condition: Callable[[], bool], what: str, timeout: float = 5.0
) -> None:
    """Waits until ``condition`` holds, checking it each time ``changed`` is set."""
    async with asyncio.timeout(timeout):
        while not condition():
            changed.clear()
            await changed.wait()
    assert condition(), what


def known_hosts_line(port: int, key: asyncssh.SSHKey) -> str:
    return f"[127.0.0.1]:{port} {key.export_public_key().decode().strip()}\n"


def speak(*lines: str, exit_status: int = 0) -> Behaviour:
    """An agent that reads the job, prints ``lines`` and exits."""

    async def behaviour(process: ServerProcess, drone: FakeDrone) -> None:
        await drone.read_job(process)
        for text in lines:
            process.stdout.write(text)
        process.exit(exit_status)

    return behaviour


@pytest.fixture
async def drone(tmp_path: Path):
    fake = FakeDrone(tmp_path)
    await fake.start()
    yield fake
    await fake.stop()


async def fails(kind: FailureKind, target: SshTarget, job: dict[str, Any] = JOB) -> OperationFailed:
    with pytest.raises(OperationFailed) as caught:
        await run_agent(target, "create", job)
    assert caught.value.kind is kind, str(caught.value)
    assert PASSPHRASE not in str(caught.value)
    return caught.value


# --- success ---------------------------------------------------------------------------------


async def test_returns_the_result_and_delivers_every_event_in_order(drone: FakeDrone) -> None:
    log = line({"type": "log", "level": "warning", "msgid": "W", "message": "careful"})
    drone.behaviour = speak(hello(), progress(1), progress(2), log, result())
    events: list[AgentEvent] = []

    async def collect(event: AgentEvent) -> None:
        events.append(event)

    outcome = await run_agent(drone.target(), "create", JOB, collect)

    assert outcome.ok
    assert outcome.rc == 0
    assert outcome.data["archive"]["name"] == "fakehost-2025-01-01T00:00:00"
    assert [type(e) for e in events] == [Hello, Progress, Progress, LogLine, Result]
    assert [e.nfiles for e in events if isinstance(e, Progress)] == [1, 2]
    assert events[-1] == outcome
    assert drone.commands == ["create"]
    assert drone.jobs == [JOB]


async def test_a_result_with_warnings_is_returned(drone: FakeDrone) -> None:
    drone.behaviour = speak(hello(), result(rc=1), exit_status=1)
    outcome = await run_agent(drone.target(), "create", JOB)
    assert outcome.rc == 1
    assert outcome.warnings == 1


async def test_the_agent_sees_stdin_close_after_its_result(drone: FakeDrone) -> None:
    async def behaviour(process: ServerProcess, fake: FakeDrone) -> None:
        await fake.read_job(process)
        process.stdout.write(hello() + result())
        await fake.wait_for_stdin_eof(process)
        process.exit(0)

    drone.behaviour = behaviour
    await run_agent(drone.target(), "create", JOB)
    assert drone.stdin_closed.is_set()


# --- connection failures ---------------------------------------------------------------------


async def test_unknown_host_key_is_a_host_key_failure(drone: FakeDrone, tmp_path: Path) -> None:
    other = tmp_path / "other_known_hosts"
    other.write_text(known_hosts_line(drone.port, asyncssh.generate_private_key("ssh-ed25519")))
    failure = await fails(FailureKind.HOST_KEY, drone.target(known_hosts=str(other)))
    assert f"ssh-keyscan -p {drone.port} 127.0.0.1" in failure.hint
    assert drone.commands == []


async def test_missing_known_hosts_file_is_a_host_key_failure(
    drone: FakeDrone, tmp_path: Path
) -> None:
    await fails(FailureKind.HOST_KEY, drone.target(known_hosts=str(tmp_path / "absent")))
    await fails(FailureKind.HOST_KEY, drone.target(known_hosts=""))


async def test_wrong_client_key_is_an_auth_failure(drone: FakeDrone, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    failure = await fails(FailureKind.AUTH, drone.target(client_key=str(stranger)))
    assert "authorized_keys" in failure.hint
    assert drone.commands == []


async def test_missing_client_key_is_an_auth_failure(drone: FakeDrone, tmp_path: Path) -> None:
    await fails(FailureKind.AUTH, drone.target(client_key=str(tmp_path / "absent")))


async def test_nothing_listening_is_unreachable(drone: FakeDrone) -> None:
    failure = await fails(FailureKind.UNREACHABLE, drone.target(port=free_port()))
    assert "host down or sshd not running on 127.0.0.1:" in failure.message


async def test_a_silent_server_times_out_as_unreachable(drone: FakeDrone) -> None:
    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    silent = await asyncio.start_server(say_nothing, "127.0.0.1", free_port())
    port = silent.sockets[0].getsockname()[1]
    try:
        failure = await fails(FailureKind.UNREACHABLE, drone.target(port=port, connect_timeout=0.5))
    finally:
        silent.close()
        await silent.wait_closed()
    assert "timed out" in failure.message


# --- agent failures --------------------------------------------------------------------------


async def test_garbage_output_is_an_agent_failure(drone: FakeDrone) -> None:
    drone.behaviour = speak("Welcome to the machine!\n", hello(), result())
    failure = await fails(FailureKind.AGENT, drone.target())
    assert "not the backup-drone agent" in failure.message


async def test_protocol_mismatch_is_an_agent_failure(drone: FakeDrone) -> None:
    drone.behaviour = speak(hello(protocol=PROTOCOL_VERSION + 1), result())
    failure = await fails(FailureKind.AGENT, drone.target())
    assert "protocol mismatch" in failure.message


async def test_an_older_agent_is_refused_with_an_upgrade_message(drone: FakeDrone) -> None:
    # What a protocol-1 agent prints for a protocol-2 job: its hello, then a rejection.
    rejection = {"msgid": "JobRejected", "field": "protocol", "message": "unsupported"}
    drone.behaviour = speak(hello(protocol=1), result(3, rejection), exit_status=3)
    failure = await fails(FailureKind.AGENT, drone.target())
    assert "speaks protocol 1, this coordinator needs 2" in failure.message
    assert "upgrade the agent" in failure.hint


async def test_a_first_line_other_than_hello_is_an_agent_failure(drone: FakeDrone) -> None:
    drone.behaviour = speak(progress(1), result())
    await fails(FailureKind.AGENT, drone.target())


async def test_missing_agent_command_is_an_agent_failure(drone: FakeDrone) -> None:
    async def command_not_found(process: ServerProcess, fake: FakeDrone) -> None:
        process.stderr.write("bash: line 1: /usr/local/bin/backup-drone: command not found\n")
        process.exit(127)

    drone.behaviour = command_not_found
    failure = await fails(FailureKind.AGENT, drone.target())
    assert "agent missing" in failure.message
    assert "command not found" in failure.message


async def test_an_agent_that_dies_after_hello_is_an_agent_failure(drone: FakeDrone) -> None:
    async def crash(process: ServerProcess, fake: FakeDrone) -> None:
        await fake.read_job(process)
        process.stdout.write(hello())
        process.stderr.write("Traceback (most recent call last): KeyError\n")
        process.exit(1)

    drone.behaviour = crash
    failure = await fails(FailureKind.AGENT, drone.target())
    assert "without a result" in failure.message
    assert "KeyError" in failure.message


async def test_borg_failure_carries_msgid_and_message(drone: FakeDrone) -> None:
    error = {"msgid": "LockTimeout", "message": "Failed to create/acquire the lock"}
    drone.behaviour = speak(hello(), result(rc=2, error=error), exit_status=2)
    failure = await fails(FailureKind.BORG_ERROR, drone.target())
    assert failure.message == "LockTimeout: Failed to create/acquire the lock"
    assert "lock" in failure.hint


async def test_rejected_job_names_the_field(drone: FakeDrone) -> None:
    error = {"msgid": "JobRejected", "field": "paths", "message": "must be absolute"}
    drone.behaviour = speak(hello(), result(rc=3, error=error), exit_status=3)
    failure = await fails(FailureKind.REJECTED, drone.target())
    assert "JobRejected: paths: must be absolute" in failure.message


async def test_server_closing_mid_stream_is_unreachable(drone: FakeDrone) -> None:
    async def vanish(process: ServerProcess, fake: FakeDrone) -> None:
        await fake.read_job(process)
        process.stdout.write(hello() + progress(1))
        await process.stdout.drain()
        process.channel.get_connection().abort()

    drone.behaviour = vanish
    failure = await fails(FailureKind.UNREACHABLE, drone.target())
    assert "connection lost during create" in failure.message


# --- cancellation and handler errors ---------------------------------------------------------


def stream_until_stdin_closes() -> Behaviour:
    async def behaviour(process: ServerProcess, fake: FakeDrone) -> None:
        await fake.read_job(process)
        process.stdout.write(hello() + progress(1))
        await fake.wait_for_stdin_eof(process)
        process.exit(2)

    return behaviour


async def test_cancelling_closes_the_channel_and_the_agent_sees_eof(drone: FakeDrone) -> None:
    drone.behaviour = stream_until_stdin_closes()
    progressed = asyncio.Event()

    async def on_event(event: AgentEvent) -> None:
        if isinstance(event, Progress):
            progressed.set()

    task = asyncio.create_task(run_agent(drone.target(), "create", JOB, on_event))
    await asyncio.wait_for(progressed.wait(), 10)
    assert not drone.stdin_closed.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(drone.stdin_closed.wait(), 10)  # the agent saw stdin EOF


async def test_a_failing_event_handler_propagates_and_closes_the_channel(
    drone: FakeDrone,
) -> None:
    drone.behaviour = stream_until_stdin_closes()

    async def explode(event: AgentEvent) -> None:
        if isinstance(event, Progress):
            raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError, match="handler bug"):
        await run_agent(drone.target(), "create", JOB, explode)
    await asyncio.wait_for(drone.stdin_closed.wait(), 10)  # the agent saw stdin EOF


# --- probe -----------------------------------------------------------------------------------


def summary(checks: list[Check]) -> list[tuple[str, bool]]:
    return [(check.name, check.ok) for check in checks]


async def test_probe_passes_every_step_on_a_good_drone(drone: FakeDrone) -> None:
    drone.behaviour = speak(hello("hello"), result(operation="hello"))
    checks = await probe(drone.target())
    assert summary(checks) == [(name, True) for name in PROBE_STEPS]
    assert checks[-1].detail == "agent 9.9, borg 1.2.4 on fakehost"
    assert drone.commands == ["hello"]
    assert drone.jobs == [{"protocol": PROTOCOL_VERSION}]


async def test_probe_stops_at_an_unreachable_host(drone: FakeDrone) -> None:
    checks = await probe(drone.target(port=free_port()))
    assert summary(checks) == [(name, False) for name in PROBE_STEPS]
    assert checks[0].fix
    assert all(check.detail.startswith("not run") for check in checks[1:])


async def test_probe_reports_a_wrong_host_key(drone: FakeDrone, tmp_path: Path) -> None:
    other = tmp_path / "other_known_hosts"
    other.write_text(known_hosts_line(drone.port, asyncssh.generate_private_key("ssh-ed25519")))
    checks = await probe(drone.target(known_hosts=str(other)))
    assert summary(checks) == list(zip(PROBE_STEPS, [True, False, False, False], strict=True))
    assert "ssh-keyscan" in checks[1].fix


async def test_probe_reports_a_refused_key(drone: FakeDrone, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    checks = await probe(drone.target(client_key=str(stranger)))
    assert summary(checks) == list(zip(PROBE_STEPS, [True, True, False, False], strict=True))
    assert "authorized_keys" in checks[2].fix


async def test_probe_reports_a_missing_agent(drone: FakeDrone) -> None:
    drone.behaviour = speak("Last login: yesterday\n")
    checks = await probe(drone.target())
    assert summary(checks) == list(zip(PROBE_STEPS, [True, True, True, False], strict=True))
    assert "not the backup-drone agent" in checks[3].detail


# --- pure helpers ----------------------------------------------------------------------------


def failed_result(rc: int, error: dict[str, str] | None) -> Result:
    return Result(operation="prune", ok=False, rc=rc, error=error)


def test_error_text_combines_msgid_field_and_message() -> None:
    assert error_text(failed_result(2, None)) == "prune failed (rc 2)"
    assert error_text(failed_result(2, {"msgid": "X", "message": "X: boom"})) == "X: boom"
    assert error_text(failed_result(3, {"field": "keep", "message": "keep: bad"})) == "keep: bad"


def test_an_unknown_exit_code_is_an_agent_failure() -> None:
    with pytest.raises(OperationFailed) as caught:
        checked(failed_result(7, None), SshTarget(host="h"))
    assert caught.value.kind is FailureKind.AGENT


def test_forced_command_quotes_for_shell_and_authorized_keys() -> None:
    command = forced_command(["/usr/bin/python3", "/opt/agent.py", "serve"], {"A": 'x "y" $z'})
    assert command == "/usr/bin/env 'A=x \"y\" $z' /usr/bin/python3 /opt/agent.py serve"
    entry = authorized_keys_line(command, "ssh-ed25519 AAAA")
    assert entry == (
        'command="/usr/bin/env \'A=x \\"y\\" $z\' /usr/bin/python3 /opt/agent.py serve",'
        "restrict ssh-ed25519 AAAA\n"
    )


# --- sessions of several steps ----------------------------------------------------------------


def step_line(operation: str, rc: int = 0, error: dict[str, str] | None = None) -> str:
    return line(
        {
            "type": "step",
            "operation": operation,
            "ok": rc in (0, 1),
            "rc": rc,
            "duration": 0.1,
            "warnings": 0,
            "data": {"kept": [], "pruned": []} if rc < 2 else {},
            "error": error,
        }
    )


async def test_each_step_line_is_delivered_before_the_sessions_result(drone: FakeDrone) -> None:
    drone.behaviour = speak(
        hello("sequence"),
        progress(1),
        step_line("create"),
        step_line("prune"),
        result(operation="sequence"),
    )
    events: list[AgentEvent] = []

    async def collect(event: AgentEvent) -> None:
        events.append(event)

    outcome = await run_agent(
        drone.target(), "sequence", {**JOB, "steps": ["create", "prune"]}, collect
    )
    assert drone.commands == ["sequence"]
    assert [type(e).__name__ for e in events] == [
        "Hello",
        "Progress",
        "StepResult",
        "StepResult",
        "Result",
    ]
    steps = [e for e in events if isinstance(e, StepResult)]
    assert [s.operation for s in steps] == ["create", "prune"]
    assert steps[1].data == {"kept": [], "pruned": []}
    assert outcome.operation == "sequence"


async def test_a_failed_step_is_named_in_the_failure(drone: FakeDrone) -> None:
    error = {"msgid": "LockTimeout", "message": "Failed to create/acquire the lock"}
    drone.behaviour = speak(
        hello("sequence"),
        step_line("create"),
        step_line("prune", 2, error),
        result(2, {**error, "step": "prune"}, operation="sequence"),
        exit_status=2,
    )
    with pytest.raises(OperationFailed) as caught:
        await run_agent(drone.target(), "sequence", {**JOB, "steps": ["create", "prune"]})
    assert caught.value.kind is FailureKind.BORG_ERROR
    assert caught.value.step == "prune"
    assert caught.value.message.startswith("prune failed: LockTimeout")
    assert "lock" in caught.value.hint


# --- connection reuse -------------------------------------------------------------------------


async def test_connections_reuse_one_connection_for_sessions_in_a_row(drone: FakeDrone) -> None:
    connections = Connections(linger=30)
    try:
        for _ in range(3):
            await connections.run_agent(drone.target(), "create", JOB)
    finally:
        await connections.close()
    assert drone.commands == ["create"] * 3
    assert drone.connections == 1


async def test_connections_open_a_new_one_after_a_failure(drone: FakeDrone) -> None:
    connections = Connections(linger=30)
    error = {"msgid": "LockTimeout", "message": "lock"}
    try:
        drone.behaviour = speak(hello(), result(2, error), exit_status=2)
        with pytest.raises(OperationFailed):
            await connections.run_agent(drone.target(), "create", JOB)
        drone.behaviour = speak(hello(), result())
        await connections.run_agent(drone.target(), "create", JOB)
    finally:
        await connections.close()
    assert drone.connections == 2


async def test_connections_replace_a_kept_connection_that_died(drone: FakeDrone) -> None:
    connections = Connections(linger=30)
    try:
        await connections.run_agent(drone.target(), "create", JOB)
        await drone.drop_connections()
        await connections.run_agent(drone.target(), "create", JOB)
    finally:
        await connections.close()
    assert drone.commands == ["create", "create"]
    assert drone.connections == 2


async def test_connections_close_an_idle_connection_after_lingering(drone: FakeDrone) -> None:
    connections = Connections(linger=0.05)
    await connections.run_agent(drone.target(), "create", JOB)
    await wait_for(
        drone.connections_changed, lambda: drone.open_connections == 0, "the idle one closed"
    )
    await connections.close()


# --- long lines --------------------------------------------------------------------------------


def result_of_size(size: int) -> str:
    """A prune result whose list of pruned archives makes its line ``size`` characters long."""
    name = "fakehost-2025-01-01T00:00:00.000000-" + "x" * 64
    count = size // (len(name) + 4)
    return line(
        {
            "type": "result",
            "operation": "prune",
            "ok": True,
            "rc": 0,
            "duration": 0.1,
            "warnings": 0,
            "data": {"kept": [], "pruned": [f"{name}{i:08d}" for i in range(count)]},
            "error": None,
        }
    )


def speak_and_drain(*lines: str) -> Behaviour:
    """``speak``, waiting until everything was sent before exiting."""

    async def behaviour(process: ServerProcess, fake: FakeDrone) -> None:
        await fake.read_job(process)
        for text in lines:
            process.stdout.write(text)
            await process.stdout.drain()
        process.exit(0)

    return behaviour


async def test_a_result_line_of_5_mib_is_read_whole(drone: FakeDrone) -> None:
    # Beyond asyncssh's 2 MiB window, readline hands the line over in parts.
    big = result_of_size(5 * 1024 * 1024)
    assert len(big) > 5_000_000
    drone.behaviour = speak_and_drain(hello("prune"), big)
    outcome = await run_agent(drone.target(), "prune", JOB)
    assert outcome.ok
    assert len(outcome.data["pruned"]) == len(json.loads(big)["data"]["pruned"])


async def test_a_line_beyond_the_bound_is_a_clear_agent_failure(
    drone: FakeDrone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "MAX_LINE_CHARS", 3 * 1024 * 1024)
    drone.behaviour = speak_and_drain(hello("prune"), result_of_size(5 * 1024 * 1024))
    failure = await fails(FailureKind.AGENT, drone.target())
    assert f"longer than {3 * 1024 * 1024} characters" in failure.message
    assert "invalid line" not in failure.message


# --- a session that goes quiet ---------------------------------------------------------------


def quick_limits(hello_seconds: float = 60, **minutes: float) -> SessionLimits:
    return SessionLimits(hello_seconds=hello_seconds, inactivity_minutes=minutes or {"create": 1})


def say_then_hang(*lines: str) -> Behaviour:
    """An agent that reads the job, prints ``lines`` and then nothing until stdin closes."""

    async def behaviour(process: ServerProcess, fake: FakeDrone) -> None:
        await fake.read_job(process)
        for text in lines:
            process.stdout.write(text)
        await fake.wait_for_stdin_eof(process)
        process.exit(2)

    return behaviour


async def test_no_hello_in_time_is_a_timeout_and_the_agent_is_told_to_stop(
    drone: FakeDrone,
) -> None:
    drone.behaviour = say_then_hang()
    with pytest.raises(OperationFailed) as caught:
        await run_agent(drone.target(), "create", JOB, None, quick_limits(hello_seconds=0.5))
    assert caught.value.kind is FailureKind.TIMEOUT
    assert "no hello within 0.5 s" in caught.value.message
    assert "hello_timeout" in caught.value.hint
    await asyncio.wait_for(drone.stdin_closed.wait(), 10)


async def test_silence_after_progress_is_a_timeout_naming_the_step(drone: FakeDrone) -> None:
    drone.behaviour = say_then_hang(hello(), progress(1))
    events: list[AgentEvent] = []

    async def collect(event: AgentEvent) -> None:
        events.append(event)

    limits = quick_limits(create=0.01)  # 0.6 s
    with pytest.raises(OperationFailed) as caught:
        await run_agent(drone.target(), "create", JOB, collect, limits)
    assert [type(e) for e in events] == [Hello, Progress]
    failure = caught.value
    assert failure.kind is FailureKind.TIMEOUT
    assert failure.step == "create"
    assert "sent nothing for 0.01 min during create" in failure.message
    assert "inactivity_timeout_minutes.create" in failure.hint
    await asyncio.wait_for(drone.stdin_closed.wait(), 10)


def test_each_step_has_its_own_silence_limit_plus_the_lock_wait() -> None:
    # borg waits for the repository lock without a word, so lock_wait comes on top.
    silence = Silence(quick_limits(hello_seconds=5, create=1, prune=10), lock_wait=30)
    assert silence.allowed("create", hello_seen=False) == 5
    assert silence.allowed("create", hello_seen=True) == 60 + 30
    assert silence.allowed("prune", hello_seen=True) == 600 + 30
    assert silence.allowed("compact", hello_seen=True) == 600 + 30  # unknown: the longest
    assert silence.allowed("hello", hello_seen=True) == 5  # doctor's hello answers at once


async def test_doctors_hello_that_never_ends_is_a_timeout(drone: FakeDrone) -> None:
    drone.behaviour = say_then_hang(hello("hello"))
    with pytest.raises(OperationFailed) as caught:
        await run_agent(drone.target(), "hello", JOB, None, quick_limits(hello_seconds=0.5))
    assert caught.value.kind is FailureKind.TIMEOUT
    assert "said hello but sent no result within 0.5 s" in caught.value.message


async def test_connections_apply_their_limits(drone: FakeDrone) -> None:
    drone.behaviour = say_then_hang()
    connections = Connections(limits=quick_limits(hello_seconds=0.5))
    try:
        with pytest.raises(OperationFailed) as caught:
            await connections.run_agent(drone.target(), "create", JOB)
    finally:
        await connections.close()
    assert caught.value.kind is FailureKind.TIMEOUT


def test_a_full_repository_disk_gets_a_hint() -> None:
    error = {"msgid": "RepositoryDiskFull", "message": "no space left on the repository's disk"}
    with pytest.raises(OperationFailed) as caught:
        checked(failed_result(2, error), SshTarget(host="h"))
    assert caught.value.kind is FailureKind.BORG_ERROR
    assert "free space" in caught.value.hint
    assert "compact" in caught.value.hint


def test_a_full_disk_on_the_drone_gets_its_own_hint() -> None:
    error = {"msgid": "DiskFull", "message": "no space left on a disk of the drone"}
    with pytest.raises(OperationFailed) as caught:
        checked(failed_result(2, error), SshTarget(host="h"))
    assert "BORG_BASE_DIR" in caught.value.hint


async def test_an_agent_killed_by_a_signal_is_named_so(drone: FakeDrone) -> None:
    async def behaviour(process: ServerProcess, fake: FakeDrone) -> None:
        await fake.read_job(process)
        process.stdout.write(hello() + progress(1))
        process.exit_with_signal("KILL")

    drone.behaviour = behaviour
    failure = await fails(FailureKind.AGENT, drone.target())
    assert "killed by signal KILL" in failure.message
    assert "exit status" not in failure.message
    assert "out-of-memory" in failure.hint
