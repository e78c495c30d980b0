"""The coordinator's side of the agent's wire protocol (version 2, see docs/protocol.md).

The agent prints one JSON object per line; ``parse_line`` turns each into a typed event and
raises ``ProtocolError`` for anything that is not one of them. Version 2 added the ``sequence``
operation (several steps in one session), whose steps each end with a ``step`` line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

from .redaction import Redactor

PROTOCOL_VERSION = 2
SEQUENCE_OPERATION = "sequence"  # runs the job's ``steps`` in one agent session
COPY_OPERATION = "offsite"  # copies repositories of the host elsewhere, never a step

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_FAILED = 2
EXIT_REJECTED = 3


class FailureKind(StrEnum):
    """Why an operation did not succeed; each kind has its own advice for the user."""

    UNREACHABLE = "unreachable"  # TCP connect failed or timed out, connection lost
    HOST_KEY = "host_key"  # host key unknown or changed
    AUTH = "auth"  # the client key was refused
    AGENT = "agent"  # agent missing, crashed, or speaks another protocol
    REJECTED = "rejected"  # the agent rejected the job (exit 3)
    BORG_ERROR = "borg_error"  # borg ran and failed (exit 2)
    TIMEOUT = "timeout"  # exceeded the maximum runtime and was cancelled
    INTERRUPTED = "interrupted"  # the coordinator died while it ran


class ProtocolError(ValueError):
    """A line from the agent that is not a valid protocol message."""


class OperationFailed(Exception):
    """An agent operation that did not succeed, classified for the user."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        hint: str = "",
        rc: int = EXIT_FAILED,
        step: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint
        self.rc = rc  # the agent's exit code when it answered (2 or 3), else 2
        self.step = step  # the step of a session that failed, when known

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}" + (f" ({self.hint})" if self.hint else "")


def redact(text: str, secret: str | None) -> str:
    """``text`` safe for a log line, an HA state or an event: the passphrase masked in every
    escaped and truncated form it may take there (see ``redaction.Redactor``)."""
    return _redactor(secret).text(text) if secret else text


@lru_cache(maxsize=32)
def _redactor(secret: str) -> Redactor:
    return Redactor((secret,))


@dataclass(frozen=True)
class Hello:
    protocol: int
    agent_version: str
    borg_version: str
    hostname: str
    operation: str


@dataclass(frozen=True)
class Progress:
    operation: str
    time: float
    nfiles: int
    original_size: int
    compressed_size: int
    deduplicated_size: int
    path: str = ""


@dataclass(frozen=True)
class CopyProgress:
    """How far an offsite copy got (``progress`` lines of the ``offsite`` operation)."""

    time: float
    repository: str
    phase: str  # copy, verify
    bytes: int
    total_bytes: int | None
    speed: float | None  # bytes per second, as the tool measures it
    eta: float | None  # seconds, as the tool estimates it
    files: int
    total_files: int | None


@dataclass(frozen=True)
class LogLine:
    level: str
    message: str
    msgid: str = ""
    time: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """How an agent operation ended: the fields of ``result`` and ``step`` lines."""

    operation: str
    ok: bool
    rc: int
    duration: float = 0.0
    warnings: int = 0
    data: Mapping[str, Any] = field(default_factory=dict)
    error: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Result(Outcome):
    """The last line of every session."""


@dataclass(frozen=True)
class StepResult(Outcome):
    """The end of one step of a ``sequence`` session, as that step alone would have ended."""


AgentEvent = Hello | Progress | CopyProgress | LogLine | StepResult | Result


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{obj.get('type')!r} line: {key!r} missing or of the wrong type")
    return value


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{obj.get('type')!r} line: {key!r} is not a number")
    return int(value)


def _optional_number(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{obj.get('type')!r} line: {key!r} is not a number")
    return float(value)


def _copy_progress(obj: Mapping[str, Any]) -> CopyProgress:
    total_bytes = _optional_number(obj, "total_bytes")
    total_files = _optional_number(obj, "total_files")
    return CopyProgress(
        time=float(_require(obj, "time", (int, float))),
        repository=str(obj.get("repository", "")),
        phase=str(obj.get("phase", "copy")),
        bytes=_int(obj, "bytes"),
        total_bytes=None if total_bytes is None else int(total_bytes),
        speed=_optional_number(obj, "speed"),
        eta=_optional_number(obj, "eta"),
        files=_int(obj, "files"),
        total_files=None if total_files is None else int(total_files),
    )


def parse_line(line: str) -> AgentEvent:
    """One line of agent output -> event; raises ProtocolError for anything else."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise ProtocolError(f"not JSON: {line[:200]!r}") from None
    try:
        return _event(obj, line)
    except (TypeError, ValueError, OverflowError) as error:  # e.g. "time": "x", 1e400 files
        raise ProtocolError(f"malformed {type(obj).__name__}: {error}") from None


def _event(obj: Any, line: str) -> AgentEvent:
    if not isinstance(obj, dict):
        raise ProtocolError(f"not a JSON object: {line[:200]!r}")
    kind = obj.get("type")
    if kind == "hello":
        return Hello(
            protocol=_require(obj, "protocol", int),
            agent_version=str(obj.get("agent_version", "")),
            borg_version=str(obj.get("borg_version", "")),
            hostname=str(obj.get("hostname", "")),
            operation=str(obj.get("operation", "")),
        )
    if kind == "progress" and obj.get("operation") == COPY_OPERATION:
        return _copy_progress(obj)
    if kind == "progress":
        return Progress(
            operation=str(obj.get("operation", "")),
            time=float(_require(obj, "time", (int, float))),
            nfiles=_int(obj, "nfiles"),
            original_size=_int(obj, "original_size"),
            compressed_size=_int(obj, "compressed_size"),
            deduplicated_size=_int(obj, "deduplicated_size"),
            path=str(obj.get("path", "")),
        )
    if kind == "log":
        return LogLine(
            level=str(obj.get("level", "info")),
            message=str(obj.get("message", "")),
            msgid=str(obj.get("msgid") or ""),
            time=float(obj.get("time") or 0.0),
        )
    if kind in ("result", "step"):
        data = obj.get("data") or {}
        error = obj.get("error")
        if not isinstance(data, dict) or not (error is None or isinstance(error, dict)):
            raise ProtocolError(f"{kind!r} line: data/error must be objects")
        return (StepResult if kind == "step" else Result)(
            operation=str(obj.get("operation", "")),
            ok=bool(_require(obj, "ok", bool)),
            rc=_require(obj, "rc", int),
            duration=float(obj.get("duration") or 0.0),
            warnings=_int(obj, "warnings"),
            data=data,
            error=error,
        )
    raise ProtocolError(f"unknown line type {kind!r}")
