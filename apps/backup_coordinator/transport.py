"""SSH transport: run one agent session on a drone and stream its events back.

A session is one SSH channel running one agent process (one operation, or several steps of a
``sequence``); the agent treats the channel's stdin closing as "the coordinator is gone" and
stops borg. ``run_agent`` opens a connection for one session and closes it after;
``Connections`` keeps a connection open for a few seconds after a session that succeeded, so
the next session on the same drone (a queued request) skips the handshake. A cancelled or
failed session always closes its connection.

Host keys are always verified against the target's known_hosts file: there is no way to turn
that off. Neither an ssh-agent nor ``~/.ssh/config`` is consulted; everything comes from the
``SshTarget``. The job (which may hold the repository passphrase) goes to the agent's stdin and
is never echoed into a message.

A session that goes quiet is a ``timeout`` failure: no hello within ``SessionLimits``'
``hello_seconds`` of opening it, or no line at all for the step's inactivity limit (borg
create reports progress several times a second; the quieter steps get more). Lines are read
whole up to ``MAX_LINE_CHARS``, well beyond the SSH channel's window.

Failures are raised as ``OperationFailed`` classified by ``FailureKind``, each with a hint that
tells a person what to do about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncssh

from .config import SessionLimits
from .jobs import hello_job
from .model import SshTarget
from .protocol import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_WARNING,
    PROTOCOL_VERSION,
    SEQUENCE_OPERATION,
    AgentEvent,
    FailureKind,
    Hello,
    OperationFailed,
    Outcome,
    ProtocolError,
    Result,
    StepResult,
    parse_line,
    redact,
)

# asyncssh tells of every connection and channel at INFO (about 16 lines per session): in
# AppDaemon's log that buries the app's own one line per operation. Its warnings still show.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

EventHandler = Callable[[AgentEvent], Awaitable[None]]

KEEPALIVE_COUNT_MAX = 3
LINGER_SECONDS = 10.0  # how long Connections keeps an idle connection for the next session
STDERR_TAIL_CHARS = 4096
# The longest line read from the agent (a result listing many archives or warnings); asyncssh
# hands over at most its receive window (2 MiB) at a time, so longer lines are read in parts.
MAX_LINE_CHARS = 16 * 1024 * 1024
DEFAULT_LIMITS = SessionLimits()
HELLO_OPERATION = "hello"  # the agent operation that only says hello (doctor's probe)
EXIT_WAIT_SECONDS = 5.0  # after the result (or EOF), how long the agent may take to exit
CLOSE_WAIT_SECONDS = 2.0
COMMAND_NOT_FOUND_EXIT = 127
AGENT_INSTALL_HINT = (
    "install drone_agent/backup_drone.py on the host and make it the forced command of the "
    "coordinator's key in authorized_keys"
)
BORG_ERROR_HINTS = {
    "LockTimeout": "another borg holds the repository lock; retry when it is done "
    "(borg break-lock only if no borg runs)",
    "PassphraseWrong": "the passphrase does not open this repository",
    "Repository.DoesNotExist": "initialise the repository (borg init) or fix its location",
    # The agent's msgid when borg ended with an error code but no error of its own.
    "BorgError": "borg ended without saying why: killed (by a person, the out-of-memory killer, "
    "a shutdown) or crashed; look at the host's logs (journalctl, dmesg). A lock it left is "
    "stale and borg removes it; the next run retries",
    "RepositoryDiskFull": "the disk holding the repository is full: free space there, or prune "
    "and compact old archives (borg compact frees what prune deleted); on a remote repository "
    "this is the server's disk",
    "DiskFull": "a disk on the drone is full (borg's cache or temporary files: BORG_BASE_DIR, "
    "TMPDIR, the home directory); free space there",
}


def where(target: SshTarget) -> str:
    return f"{target.host}:{target.port}"


# --- connecting ------------------------------------------------------------------------------


def unreachable(target: SshTarget, reason: object) -> OperationFailed:
    return OperationFailed(
        FailureKind.UNREACHABLE,
        f"host down or sshd not running on {where(target)} ({reason})",
        f"check that {target.host} is up and its sshd listens on port {target.port}",
    )


def host_key_hint(target: SshTarget) -> str:
    return (
        f"check the host's key fingerprint (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub "
        f"on the host), then add it: ssh-keyscan -p {target.port} {target.host} "
        f">> {target.known_hosts or 'KNOWN_HOSTS'}"
    )


def auth_hint(target: SshTarget) -> str:
    """The authorized_keys line docs/security.md shows, for this drone."""
    return (
        f"add to ~{target.user}/.ssh/authorized_keys on {target.host} "
        "(<coordinator-ip>: the address this coordinator connects from): "
        'from="<coordinator-ip>",command="/usr/bin/python3 -I /usr/local/bin/backup-drone serve '
        '--policy /etc/backup-drone/policy.json",restrict '
        f"<contents of {target.client_key}.pub>"
    )


def load_known_hosts(target: SshTarget) -> asyncssh.SSHKnownHosts:
    """The host keys to trust; a missing or unreadable file is a HOST_KEY failure."""
    try:
        return asyncssh.read_known_hosts(target.known_hosts)
    except (OSError, ValueError) as error:
        raise OperationFailed(
            FailureKind.HOST_KEY,
            f"cannot read known_hosts file {target.known_hosts!r} for {where(target)}: {error}",
            host_key_hint(target),
        ) from None


def load_client_key(target: SshTarget) -> asyncssh.SSHKey:
    try:
        return asyncssh.read_private_key(target.client_key)
    except (OSError, ValueError) as error:  # KeyImportError is a ValueError
        raise OperationFailed(
            FailureKind.AUTH,
            f"cannot read client key {target.client_key!r}: {error}",
            f"create one without passphrase (ssh-keygen -t ed25519 -N '' -f {target.client_key}) "
            f"and authorize it on the host; {auth_hint(target)}",
        ) from None


async def open_connection(
    target: SshTarget, offer_key: bool = True
) -> asyncssh.SSHClientConnection:
    """An authenticated connection to the drone with the target's key; with ``offer_key``
    false, no key at all (asyncssh reads ``None`` as that, but ``[]`` as "load ~/.ssh/id_*")."""
    known_hosts = load_known_hosts(target)
    keys = [load_client_key(target)] if offer_key else None
    try:
        return await asyncssh.connect(
            target.host,
            port=target.port,
            username=target.user,
            client_keys=keys,
            known_hosts=known_hosts,
            x509_trusted_certs=None,
            agent_path=None,
            config=[],
            preferred_auth=["publickey"],
            connect_timeout=target.connect_timeout,
            keepalive_interval=target.keepalive_interval,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
        )
    except asyncssh.HostKeyNotVerifiable as error:
        raise OperationFailed(
            FailureKind.HOST_KEY,
            f"host key of {where(target)} is not in {target.known_hosts} or has changed "
            f"({error.reason})",
            host_key_hint(target),
        ) from None
    except asyncssh.PermissionDenied:
        raise OperationFailed(
            FailureKind.AUTH,
            f"{where(target)} refused the key {target.client_key} for user {target.user}",
            auth_hint(target),
        ) from None
    except (OSError, TimeoutError, asyncssh.Error) as error:
        raise unreachable(target, describe(error)) from None


def describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, asyncssh.DisconnectError):
        return error.reason
    return str(error) or type(error).__name__


async def close_connection(conn: asyncssh.SSHClientConnection) -> None:
    conn.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.wait_closed(), CLOSE_WAIT_SECONDS)


# --- running one operation -------------------------------------------------------------------


async def run_agent(
    target: SshTarget,
    operation: str,
    job: Mapping[str, Any],
    on_event: EventHandler | None = None,
    limits: SessionLimits = DEFAULT_LIMITS,
) -> Result:
    """Runs ``operation`` on the drone's agent with ``job``; every event goes to ``on_event``.

    Returns the result when the agent succeeded (rc 0, or 1 with warnings); raises
    ``OperationFailed`` otherwise (``timeout`` when the agent goes quiet past ``limits``).
    Cancelling the awaiting task closes the connection, which makes the agent stop borg, and
    re-raises ``CancelledError``.
    """
    conn = await open_connection(target)
    try:
        return await run_on_connection(conn, target, operation, job, on_event, limits)
    finally:
        await close_connection(conn)


class Connections:
    """Runs sessions like ``run_agent``, reusing a drone's connection for the next session.

    After a session that succeeded its connection stays open for ``linger`` seconds; a session
    on the same target in that time uses it (and, should it have died meanwhile, a new one).
    Only a connection that no session uses is kept, so the liveness rule is untouched: a
    session's channel still ends with its session.
    """

    def __init__(
        self, linger: float = LINGER_SECONDS, limits: SessionLimits = DEFAULT_LIMITS
    ) -> None:
        self.linger = linger
        self.limits = limits
        self._idle: dict[SshTarget, tuple[asyncssh.SSHClientConnection, asyncio.TimerHandle]] = {}

    async def run_agent(
        self,
        target: SshTarget,
        operation: str,
        job: Mapping[str, Any],
        on_event: EventHandler | None = None,
    ) -> Result:
        kept = self._take(target)
        if kept is not None:
            try:
                return await self._run_on(kept, target, operation, job, on_event)
            except SessionNotOpened:
                pass  # the kept connection died while idle: nothing ran, start afresh
        conn = await open_connection(target)
        return await self._run_on(conn, target, operation, job, on_event)

    async def _run_on(
        self,
        conn: asyncssh.SSHClientConnection,
        target: SshTarget,
        operation: str,
        job: Mapping[str, Any],
        on_event: EventHandler | None,
    ) -> Result:
        try:
            result = await run_on_connection(conn, target, operation, job, on_event, self.limits)
        except BaseException:
            await close_connection(conn)
            raise
        self._keep(target, conn)
        return result

    async def close(self) -> None:
        """Closes every idle connection (the app stopping)."""
        idle, self._idle = self._idle, {}
        for conn, timer in idle.values():
            timer.cancel()
            await close_connection(conn)

    def _take(self, target: SshTarget) -> asyncssh.SSHClientConnection | None:
        entry = self._idle.pop(target, None)
        if entry is None:
            return None
        conn, timer = entry
        timer.cancel()
        if conn.is_closed():
            return None
        return conn

    def _keep(self, target: SshTarget, conn: asyncssh.SSHClientConnection) -> None:
        previous = self._idle.pop(target, None)
        if previous is not None:  # two sessions on one target at once: keep the newer
            previous[1].cancel()
            previous[0].close()
        timer = asyncio.get_running_loop().call_later(self.linger, self._expire, target, conn)
        self._idle[target] = (conn, timer)

    def _expire(self, target: SshTarget, conn: asyncssh.SSHClientConnection) -> None:
        entry = self._idle.get(target)
        if entry is not None and entry[0] is conn:
            del self._idle[target]
        conn.close()


async def run_on_connection(
    conn: asyncssh.SSHClientConnection,
    target: SshTarget,
    operation: str,
    job: Mapping[str, Any],
    on_event: EventHandler | None,
    limits: SessionLimits = DEFAULT_LIMITS,
) -> Result:
    process = await start_agent(conn, target, operation)
    stderr = StderrTail(process)
    lock_wait = job.get("lock_wait")
    silence = Silence(limits, lock_wait if isinstance(lock_wait, int | float) else 0)
    try:
        await send_job(process, job)
        result = await stream_events(
            process, target, session_steps(operation, job), stderr, on_event, silence
        )
        await finish(process)
        return checked(result, target)
    except OperationFailed as failure:
        # Messages quote what the host printed; something that is not the agent may have
        # echoed the job back.
        raise redacted(failure, job.get("passphrase")) from None
    finally:
        process.close()
        await stderr.stop()


def redacted(failure: OperationFailed, secret: object) -> OperationFailed:
    if not isinstance(secret, str) or not secret:
        return failure
    return type(failure)(
        failure.kind,
        redact(failure.message, secret),
        redact(failure.hint, secret),
        failure.rc,
        failure.step,
    )


class SessionNotOpened(OperationFailed):
    """The connection would not open a channel for the agent: nothing ran on the drone."""


async def start_agent(
    conn: asyncssh.SSHClientConnection, target: SshTarget, operation: str
) -> asyncssh.SSHClientProcess[str]:
    try:
        return await conn.create_process(operation, encoding="utf-8", errors="replace")
    except (OSError, asyncssh.Error) as error:
        failure = unreachable(target, f"could not open a session: {describe(error)}")
        raise SessionNotOpened(failure.kind, failure.message, failure.hint) from None


async def send_job(process: asyncssh.SSHClientProcess[str], job: Mapping[str, Any]) -> None:
    """The job is the first stdin line; stdin then stays open as the liveness signal."""
    # A write to an agent that already exited fails here; reading its output says why.
    with contextlib.suppress(OSError, asyncssh.Error):
        process.stdin.write(json.dumps(job) + "\n")
        await process.stdin.drain()


async def finish(process: asyncssh.SSHClientProcess[str]) -> None:
    """After the result: close stdin and give the agent a moment to exit."""
    with contextlib.suppress(OSError, asyncssh.Error):
        process.stdin.write_eof()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(process.wait_closed(), EXIT_WAIT_SECONDS)


class StderrTail:
    """Reads the agent's stderr in the background, keeping only the last few KiB."""

    def __init__(self, process: asyncssh.SSHClientProcess[str]) -> None:
        self._process = process
        self._text = ""
        self._task = asyncio.ensure_future(self._collect())

    async def _collect(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            while chunk := await self._process.stderr.read(STDERR_TAIL_CHARS):
                self._text = (self._text + chunk)[-STDERR_TAIL_CHARS:]

    async def text(self) -> str:
        """The tail once stderr has ended (or what there is after a short wait)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), CLOSE_WAIT_SECONDS)
        return self._text.strip()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


def session_steps(operation: str, job: Mapping[str, Any]) -> list[str]:
    """The steps a session runs: the job's ``steps`` for a sequence, else the operation."""
    steps = job.get("steps")
    if operation == SEQUENCE_OPERATION and isinstance(steps, list) and steps:
        return [str(step) for step in steps]
    return [operation]


async def stream_events(
    process: asyncssh.SSHClientProcess[str],
    target: SshTarget,
    steps: list[str],
    stderr: StderrTail,
    on_event: EventHandler | None,
    silence: Silence,
) -> Result:
    """Reads events until the result; the first must be a hello of our protocol version.

    A failure while reading names the step that was running (each ``step`` line ends one), and
    a line not arriving within what ``silence`` allows is a ``timeout``.
    """
    hello_seen = False
    ended = 0  # steps whose step line has arrived
    while True:
        step = steps[min(ended, len(steps) - 1)]
        seconds = silence.allowed(step, hello_seen)
        try:
            async with asyncio.timeout(seconds):
                line = await read_line(process, target, step, hello_seen)
        except TimeoutError:
            raise silence.failure(target, step, hello_seen) from None
        if line is None:
            raise await ended_without_result(process, target, step, stderr, hello_seen)
        event = parse_event(line, target, hello_seen)
        if not hello_seen:
            check_hello(event, target)
            hello_seen = True
        if on_event is not None:
            await on_event(event)
        if isinstance(event, StepResult):
            ended += 1
        if isinstance(event, Result):
            return event


@dataclass(frozen=True)
class Silence:
    """How long a session may stay quiet: until the hello, then per step."""

    limits: SessionLimits
    lock_wait: float

    def allowed(self, step: str, hello_seen: bool) -> float:
        # The agent's own "hello" operation (doctor) answers at once: its result is as quick.
        if not hello_seen or step == HELLO_OPERATION:
            return self.limits.hello_seconds
        return self.limits.silence_seconds(step, self.lock_wait)

    def failure(self, target: SshTarget, step: str, hello_seen: bool) -> OperationFailed:
        if not hello_seen:
            return OperationFailed(
                FailureKind.TIMEOUT,
                f"the agent on {where(target)} sent no hello within "
                f"{self.limits.hello_seconds:g} s of the session opening",
                f"something on {target.host} hangs before the agent answers (the login shell, "
                "a full disk, the forced command); try the forced command by hand there, or "
                "raise hello_timeout for a very slow host",
                step=step,
            )
        minutes = self.limits.inactivity_minutes.get(step)
        if minutes is None:  # the hello operation
            return OperationFailed(
                FailureKind.TIMEOUT,
                f"the agent on {where(target)} said hello but sent no result within "
                f"{self.limits.hello_seconds:g} s",
                AGENT_INSTALL_HINT,
                step=step,
            )
        return OperationFailed(
            FailureKind.TIMEOUT,
            f"the agent on {where(target)} sent nothing for "
            f"{self.allowed(step, True) / 60:g} min during {step}; the session was stopped",
            f"look for a hung borg or a stuck disk or network mount on {target.host}; raise "
            f"inactivity_timeout_minutes.{step} (now {minutes}) if {step} is legitimately "
            "silent this long",
            step=step,
        )


async def read_line(
    process: asyncssh.SSHClientProcess[str], target: SshTarget, operation: str, hello_seen: bool
) -> str | None:
    """The next complete line, or None at the end of the stream.

    asyncssh's readline returns at most its receive window of a longer line; the parts are
    joined up to ``MAX_LINE_CHARS``.
    """
    parts: list[str] = []
    length = 0
    while True:
        try:
            part = await process.stdout.readline()
        except (OSError, asyncssh.Error) as error:
            if hello_seen:
                raise lost_during(target, operation, describe(error)) from None
            raise unreachable(target, describe(error)) from None
        parts.append(part)
        length += len(part)
        if not part or part.endswith("\n") or process.stdout.at_eof():
            break
        if length > MAX_LINE_CHARS:
            raise OperationFailed(
                FailureKind.AGENT,
                f"the agent on {where(target)} sent a line longer than {MAX_LINE_CHARS} "
                f"characters during {operation}",
                "update the agent on the host to the coordinator's version; report it if it "
                "persists",
                step=operation,
            )
    line = "".join(parts)
    if not line:
        return None
    if not line.endswith("\n") and process.stdout.at_eof():
        # A partial last line: the stream was cut off in the middle of it.
        return line if is_event(line) else None
    return line


def is_event(line: str) -> bool:
    try:
        parse_line(line)
    except ProtocolError:
        return False
    return True


def parse_event(line: str, target: SshTarget, hello_seen: bool) -> AgentEvent:
    try:
        return parse_line(line)
    except ProtocolError as error:
        if not hello_seen:
            raise not_the_agent(target, f"it printed: {line.strip()[:200]!r}") from None
        raise OperationFailed(
            FailureKind.AGENT,
            f"the agent on {where(target)} sent an invalid line: {error}",
            "update the agent on the host to the coordinator's version",
        ) from None


def check_hello(event: AgentEvent, target: SshTarget) -> None:
    """The first line must be a hello answering in our protocol version.

    An agent older than the coordinator answers with its own, lower version (and rejects the
    job): it must be upgraded, never misread.
    """
    if not isinstance(event, Hello):
        raise not_the_agent(target, f"its first line was a {type(event).__name__}, not hello")
    if event.protocol < PROTOCOL_VERSION:
        raise OperationFailed(
            FailureKind.AGENT,
            f"the agent on {where(target)} speaks protocol {event.protocol}, this coordinator"
            f" needs {PROTOCOL_VERSION}",
            f"upgrade the agent: install drone_agent/backup_drone.py of this coordinator's"
            f" version on {target.host}",
        )
    if event.protocol != PROTOCOL_VERSION:
        raise OperationFailed(
            FailureKind.AGENT,
            f"protocol mismatch: the agent on {where(target)} speaks protocol {event.protocol}, "
            f"the coordinator speaks {PROTOCOL_VERSION}",
            "install the agent version that ships with this coordinator on the host",
        )


def not_the_agent(target: SshTarget, detail: str) -> OperationFailed:
    return OperationFailed(
        FailureKind.AGENT,
        f"agent missing or not the backup-drone agent on {where(target)}: {detail}",
        AGENT_INSTALL_HINT,
    )


def lost_during(target: SshTarget, step: str, reason: str) -> OperationFailed:
    return OperationFailed(
        FailureKind.UNREACHABLE,
        f"connection lost during {step} on {where(target)} ({reason})",
        f"check the network and that {target.host} stays up",
        step=step,
    )


async def ended_without_result(
    process: asyncssh.SSHClientProcess[str],
    target: SshTarget,
    operation: str,
    stderr: StderrTail,
    hello_seen: bool,
) -> OperationFailed:
    """Why the output ended before a result: the connection died, or the agent did."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(process.wait_closed(), EXIT_WAIT_SECONDS)
    status = process.exit_status
    signal = process.exit_signal
    errors = await stderr.text()
    exited = status is not None or signal is not None
    if hello_seen and not exited:
        return lost_during(target, operation, "the output ended without a result")
    # asyncssh reports exit status -1 along with the signal that ended the process.
    how = f"killed by signal {signal[0]}" if signal else f"exit status {status}"
    detail = f"{how}; stderr: {errors[-500:]}" if errors else how
    if not hello_seen:
        if status == COMMAND_NOT_FOUND_EXIT or "not found" in errors or not exited:
            return not_the_agent(target, f"no output ({detail})")
        return not_the_agent(target, f"it exited without a hello ({detail})")
    return OperationFailed(
        FailureKind.AGENT,
        f"the agent on {where(target)} ended {operation} without a result ({detail})",
        f"the agent was killed on {target.host} (by a person, the out-of-memory killer, a "
        "shutdown): look at the host's logs (journalctl, dmesg); the next run retries"
        if signal
        else "look at the agent's stderr above; report it if it is a crash",
        step=operation,
    )


def checked(result: Result, target: SshTarget) -> Result:
    """The result itself when the agent succeeded; otherwise the classified failure."""
    if result.rc in (EXIT_OK, EXIT_WARNING):
        return result
    step = failed_step(result)
    if result.rc == EXIT_FAILED:
        msgid = str((result.error or {}).get("msgid") or "")
        raise OperationFailed(
            FailureKind.BORG_ERROR,
            f"{step} failed: {error_text(result)}" if step else error_text(result),
            BORG_ERROR_HINTS.get(msgid, ""),
            step=step,
        )
    if result.rc == EXIT_REJECTED:
        raise OperationFailed(
            FailureKind.REJECTED,
            f"the agent on {where(target)} rejected the job: {error_text(result)}",
            "fix the drone's settings named in the message",
            rc=EXIT_REJECTED,
            step=step,
        )
    raise OperationFailed(
        FailureKind.AGENT,
        f"the agent on {where(target)} reported the unknown exit code {result.rc}",
        AGENT_INSTALL_HINT,
    )


def failed_step(result: Result) -> str | None:
    """The step a ``sequence`` session failed in (its result's ``error.step``)."""
    step = (result.error or {}).get("step")
    return step if isinstance(step, str) and step else None


def error_text(result: Outcome) -> str:
    """``msgid: field: message`` from the result's error, each part only when present."""
    error = result.error or {}
    text = str(error.get("message") or "") or f"{result.operation} failed (rc {result.rc})"
    field = str(error.get("field") or "")
    msgid = str(error.get("msgid") or "")
    if field and field not in text:
        text = f"{field}: {text}"
    if msgid and not text.startswith(msgid):
        text = f"{msgid}: {text}"
    return text


# --- doctor ----------------------------------------------------------------------------------

STEP_TCP = "TCP reachable"
STEP_HOST_KEY = "host key known and matching"
STEP_AUTH = "key accepted"
STEP_AGENT = "agent hello"
PROBE_STEPS = (STEP_TCP, STEP_HOST_KEY, STEP_AUTH, STEP_AGENT)


@dataclass(frozen=True)
class Check:
    """One step of ``probe``: what was checked, whether it passed, and what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


async def probe(target: SshTarget) -> list[Check]:
    """Checks the path to a drone's agent step by step, stopping at the first failing step."""
    checks: list[Check] = []
    for step in (probe_tcp, probe_host_key, probe_auth_and_agent):
        checks.extend(await step(target))
        if not checks[-1].ok:
            break
    done = {check.name for check in checks}
    checks.extend(
        Check(name, False, "not run: an earlier step failed")
        for name in PROBE_STEPS
        if name not in done
    )
    return checks


async def probe_tcp(target: SshTarget) -> list[Check]:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), target.connect_timeout
        )
    except (OSError, TimeoutError) as error:
        failure = unreachable(target, describe(error))
        return [Check(STEP_TCP, False, failure.message, failure.hint)]
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return [Check(STEP_TCP, True, f"{where(target)} accepts connections")]


async def probe_host_key(target: SshTarget) -> list[Check]:
    """Verifies the host key alone: a connection offering no client key gets that far (and
    offers the drone nothing: no key, no ssh-agent, no ssh config)."""
    try:
        conn = await open_connection(target, offer_key=False)
    except OperationFailed as failure:
        if failure.kind is FailureKind.AUTH:  # refused after the host key was accepted
            return [Check(STEP_HOST_KEY, True, f"matches {target.known_hosts}")]
        return [Check(STEP_HOST_KEY, False, failure.message, failure.hint)]
    await close_connection(conn)  # a host that lets anyone in: its key still matched
    return [Check(STEP_HOST_KEY, True, f"matches {target.known_hosts}")]


async def probe_auth_and_agent(target: SshTarget) -> list[Check]:
    try:
        conn = await open_connection(target)
    except OperationFailed as failure:
        return [Check(STEP_AUTH, False, failure.message, failure.hint)]
    auth = Check(STEP_AUTH, True, f"{target.user} with {target.client_key}")
    hellos: list[Hello] = []

    async def keep_hello(event: AgentEvent) -> None:
        if isinstance(event, Hello):
            hellos.append(event)

    try:
        await run_on_connection(conn, target, "hello", hello_job(), keep_hello)
    except OperationFailed as failure:
        return [auth, Check(STEP_AGENT, False, failure.message, failure.hint)]
    finally:
        await close_connection(conn)
    hello = hellos[0]
    detail = f"agent {hello.agent_version}, borg {hello.borg_version} on {hello.hostname}"
    return [auth, Check(STEP_AGENT, True, detail)]
