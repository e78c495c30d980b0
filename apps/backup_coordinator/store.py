"""Persisted runtime state: one JSON file, written atomically, so a restart loses nothing.

The file holds what the coordinator learned (last backup, failures, backoff, statistics, queued
requests, the operation that was running) and never any secret: a record has no passphrase,
and its free text (errors, problems, what the agent reported) is redacted before it is written.
A file that cannot be used is moved aside (``<name>.corrupt-<time>``), never overwritten. Entries
this coordinator cannot act on (an operation it does not know, e.g. written by a newer version)
are dropped with a warning rather than allowed to stop it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .model import GLOBAL_MODES, Operation
from .protocol import OperationFailed
from .redaction import Redactor

STATE_VERSION = 1
DEFAULT_GLOBAL_MODE = "running"


class CorruptState(ValueError):
    """The state file's content is not a state this coordinator can use."""


@dataclass
class RunningOperation:
    """Set when an operation starts and cleared when it ends: one found at load was interrupted.

    ``done`` lists the steps of its session that have ended, in order, so an interrupted
    operation can run only the steps it still lacks.
    """

    operation: str
    started: datetime
    requested: bool
    done: list[str] = field(default_factory=list)


@dataclass
class DroneRecord:
    last_backup: datetime | None = None  # end of the last successful create
    last_prune: datetime | None = None
    last_stats: datetime | None = None
    last_attempt: datetime | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_kind: str | None = None
    last_error_hint: str | None = None  # what to do about the last error
    backoff_until: datetime | None = None
    last_archive: dict[str, Any] | None = None  # result.data["archive"] of the last create
    repository: dict[str, int] | None = None  # total_size, compressed_size, deduplicated_size
    archive_count: int | None = None
    running: RunningOperation | None = None
    resume: RunningOperation | None = None  # interrupted after some steps: the rest runs next
    pending: list[str] = field(default_factory=list)  # queued requested operations, oldest first
    problem: str | None = None  # the reason of a raised problem
    first_seen: datetime | None = None  # when the coordinator first knew the drone
    last_check: datetime | None = None  # end of the last check that found nothing
    last_check_data: dict[str, Any] | None = None
    last_drill: datetime | None = None  # end of the last restore drill that passed
    last_drill_data: dict[str, Any] | None = None
    recent_archives: list[str] = field(default_factory=list)  # newest first, a few
    # check or drill -> {"message", "at"}: its last run found a problem (cleared when one passes)
    failed_checks: dict[str, dict[str, str]] = field(default_factory=dict)
    restore_request: dict[str, Any] | None = None  # archive, restore_paths, destination
    agent_version: str | None = None  # from the hello of the drone's last agent session
    borg_version: str | None = None
    # setting -> the last valid value HA set; replaces apps.yaml's at a restart (the MQTT
    # backend has no helpers that keep values in HA)
    settings: dict[str, str] = field(default_factory=dict)


@dataclass
class CopyRecord:
    """What the coordinator knows of one offsite target."""

    last_copy: datetime | None = None  # end of the last successful copy
    last_copy_data: dict[str, Any] | None = None  # the agent's result data of that copy
    last_attempt: datetime | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_kind: str | None = None
    last_error_hint: str | None = None
    backoff_until: datetime | None = None
    requested: bool = False  # sync now was asked for and has not started
    running: RunningOperation | None = None  # a copy running; ``done``: repositories copied
    problem: str | None = None
    first_seen: datetime | None = None
    settings: dict[str, str] = field(default_factory=dict)  # as DroneRecord.settings


def count_failure(
    record: DroneRecord | CopyRecord, failure: OperationFailed, retry_at: datetime
) -> None:
    """One more failure in a row: the error as the user sees it, and when to retry."""
    record.consecutive_failures += 1
    record.backoff_until = retry_at
    record.last_error = failure.message
    record.last_error_kind = failure.kind.value
    record.last_error_hint = failure.hint or None


def clear_failures(record: DroneRecord | CopyRecord) -> None:
    """A success: no failures in a row, no backoff, no last error."""
    record.consecutive_failures = 0
    record.backoff_until = None
    record.last_error = record.last_error_kind = record.last_error_hint = None


@dataclass(frozen=True)
class LoadResult:
    records: dict[str, DroneRecord] = field(default_factory=dict)
    cursor: int = 0
    copies: dict[str, CopyRecord] = field(default_factory=dict)
    copy_cursor: int = 0
    global_mode: str = DEFAULT_GLOBAL_MODE
    problem: str | None = None  # why the file could not be used (it was moved aside)
    warnings: tuple[str, ...] = ()  # entries dropped because this coordinator cannot use them


@dataclass(frozen=True)
class Copies:
    """The offsite targets' part of the state: their records and their round-robin cursor."""

    records: Mapping[str, CopyRecord]
    cursor: int = 0


# ---------------------------------------------------------------------------------------------
# Encoding


def _encode_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"state times must be timezone-aware, got {value!r}")
    return value.astimezone(UTC).isoformat()


def _encode_running(running: RunningOperation | None) -> dict[str, Any] | None:
    if running is None:
        return None
    return {
        "operation": running.operation,
        "started": _encode_time(running.started),
        "requested": running.requested,
        "done": list(running.done),
    }


def encode_record(record: DroneRecord, redactor: Redactor | None = None) -> dict[str, Any]:
    """The record as JSON data; its free text redacted when a ``redactor`` is given."""
    scrub = redactor.value if redactor else _unchanged
    return {
        "last_backup": _encode_time(record.last_backup),
        "last_prune": _encode_time(record.last_prune),
        "last_stats": _encode_time(record.last_stats),
        "last_attempt": _encode_time(record.last_attempt),
        "consecutive_failures": record.consecutive_failures,
        "last_error": scrub(record.last_error),
        "last_error_kind": record.last_error_kind,
        "last_error_hint": scrub(record.last_error_hint),
        "backoff_until": _encode_time(record.backoff_until),
        "last_archive": scrub(record.last_archive),
        "repository": record.repository,
        "archive_count": record.archive_count,
        "running": _encode_running(record.running),
        "resume": _encode_running(record.resume),
        "pending": list(record.pending),
        "problem": scrub(record.problem),
        "first_seen": _encode_time(record.first_seen),
        "last_check": _encode_time(record.last_check),
        "last_check_data": scrub(record.last_check_data),
        "last_drill": _encode_time(record.last_drill),
        "last_drill_data": scrub(record.last_drill_data),
        "recent_archives": scrub(list(record.recent_archives)),
        "failed_checks": scrub(record.failed_checks),
        "restore_request": scrub(record.restore_request),
        "agent_version": scrub(record.agent_version),
        "borg_version": scrub(record.borg_version),
        "settings": dict(record.settings),
    }


def encode_copy_record(record: CopyRecord, redactor: Redactor | None = None) -> dict[str, Any]:
    scrub = redactor.value if redactor else _unchanged
    return {
        "last_copy": _encode_time(record.last_copy),
        "last_copy_data": scrub(record.last_copy_data),
        "last_attempt": _encode_time(record.last_attempt),
        "consecutive_failures": record.consecutive_failures,
        "last_error": scrub(record.last_error),
        "last_error_kind": record.last_error_kind,
        "last_error_hint": scrub(record.last_error_hint),
        "backoff_until": _encode_time(record.backoff_until),
        "requested": record.requested,
        "running": _encode_running(record.running),
        "problem": scrub(record.problem),
        "first_seen": _encode_time(record.first_seen),
        "settings": dict(record.settings),
    }


def _unchanged(value: Any) -> Any:
    return value


def encode_state(
    records: Mapping[str, DroneRecord],
    cursor: int,
    global_mode: str,
    redactor: Redactor | None = None,
    copies: Copies | None = None,
) -> str:
    if global_mode not in GLOBAL_MODES:
        raise ValueError(
            f"global mode must be one of {', '.join(GLOBAL_MODES)}, got {global_mode!r}"
        )
    document = {
        "version": STATE_VERSION,
        "cursor": cursor,
        "global_mode": global_mode,
        "drones": {
            name: encode_record(record, redactor) for name, record in sorted(records.items())
        },
    }
    if copies is not None:
        document["offsite"] = {
            "cursor": copies.cursor,
            "targets": {
                name: encode_copy_record(record, redactor)
                for name, record in sorted(copies.records.items())
            },
        }
    return json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Decoding: strict about the types of known fields, tolerant of fields it does not know.


def _field(data: Mapping[str, Any], key: str, check: Callable[[Any], bool], what: str) -> Any:
    value = data.get(key)
    if value is not None and not check(value):
        raise CorruptState(f"{key} must be {what}, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _decode_time(data: Mapping[str, Any], key: str) -> datetime | None:
    text = _field(data, key, _is_text, "an ISO time")
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CorruptState(f"{key} must be an ISO time, got {text!r}") from None
    if value.tzinfo is None:
        raise CorruptState(f"{key} must carry a time zone, got {text!r}")
    return value.astimezone(UTC)


def _decode_sizes(data: Mapping[str, Any]) -> dict[str, int] | None:
    sizes = _field(data, "repository", lambda v: isinstance(v, dict), "an object")
    if sizes is None:
        return None
    if not all(isinstance(k, str) and _is_int(v) for k, v in sizes.items()):
        raise CorruptState(f"repository must map names to whole numbers, got {sizes!r}")
    return dict(sizes)


KNOWN_OPERATIONS = frozenset(operation.value for operation in Operation)


def _decode_running(
    data: Mapping[str, Any], key: str, warnings: list[str]
) -> RunningOperation | None:
    running = _field(data, key, lambda v: isinstance(v, dict), "an object")
    if running is None:
        return None
    operation = _field(running, "operation", _is_text, "text")
    started = _decode_time(running, "started")
    requested = _field(running, "requested", lambda v: isinstance(v, bool), "true or false")
    done = _field(running, "done", lambda v: isinstance(v, list), "a list") or []
    if operation is None or started is None:
        raise CorruptState(f"{key} needs operation and started, got {running!r}")
    if not all(isinstance(step, str) for step in done):
        raise CorruptState(f"{key}.done must list step names, got {done!r}")
    if operation not in KNOWN_OPERATIONS:
        warnings.append(f"{key}: unknown operation {operation!r} dropped")
        return None
    return RunningOperation(operation, started, bool(requested), list(done))


def _decode_pending(data: Mapping[str, Any], warnings: list[str]) -> list[str]:
    pending = _field(data, "pending", lambda v: isinstance(v, list), "a list")
    if pending is None:
        return []
    if not all(isinstance(entry, str) for entry in pending):
        raise CorruptState(f"pending must list operation names, got {pending!r}")
    kept: list[str] = []
    for entry in pending:
        if entry not in KNOWN_OPERATIONS:
            warnings.append(f"pending: unknown operation {entry!r} dropped")
        elif entry in kept:
            warnings.append(f"pending: {entry!r} queued twice, kept once")
        else:
            kept.append(entry)
    return kept


def decode_record(data: object, warnings: list[str] | None = None) -> DroneRecord:
    """One drone's record. Entries naming an operation this coordinator does not know are
    dropped, each with a line in ``warnings``; anything of the wrong type is CorruptState."""
    if warnings is None:
        warnings = []
    if not isinstance(data, dict):
        raise CorruptState(f"a drone record must be an object, got {data!r}")
    return DroneRecord(
        last_backup=_decode_time(data, "last_backup"),
        last_prune=_decode_time(data, "last_prune"),
        last_stats=_decode_time(data, "last_stats"),
        last_attempt=_decode_time(data, "last_attempt"),
        consecutive_failures=_field(data, "consecutive_failures", _is_int, "a whole number") or 0,
        last_error=_field(data, "last_error", _is_text, "text"),
        last_error_kind=_field(data, "last_error_kind", _is_text, "text"),
        last_error_hint=_field(data, "last_error_hint", _is_text, "text"),
        backoff_until=_decode_time(data, "backoff_until"),
        last_archive=_field(data, "last_archive", lambda v: isinstance(v, dict), "an object"),
        repository=_decode_sizes(data),
        archive_count=_field(data, "archive_count", _is_int, "a whole number"),
        running=_decode_running(data, "running", warnings),
        resume=_decode_running(data, "resume", warnings),
        pending=_decode_pending(data, warnings),
        problem=_field(data, "problem", _is_text, "text"),
        first_seen=_decode_time(data, "first_seen"),
        last_check=_decode_time(data, "last_check"),
        last_check_data=_field(data, "last_check_data", _is_object, "an object"),
        last_drill=_decode_time(data, "last_drill"),
        last_drill_data=_field(data, "last_drill_data", _is_object, "an object"),
        recent_archives=_text_list(data, "recent_archives"),
        failed_checks=_failed_checks(data),
        restore_request=_field(data, "restore_request", _is_object, "an object"),
        agent_version=_field(data, "agent_version", _is_text, "text"),
        borg_version=_field(data, "borg_version", _is_text, "text"),
        settings=_text_mapping(data, "settings"),
    )


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _text_list(data: Mapping[str, Any], key: str) -> list[str]:
    value = _field(data, key, lambda v: isinstance(v, list), "a list") or []
    if not all(isinstance(item, str) for item in value):
        raise CorruptState(f"{key} must list names, got {value!r}")
    return list(value)


def _text_mapping(data: Mapping[str, Any], key: str) -> dict[str, str]:
    value = _field(data, key, _is_object, "an object") or {}
    if not all(isinstance(item, str) for item in value.values()):
        raise CorruptState(f"{key} must map names to text, got {value!r}")
    return dict(value)


def _failed_checks(data: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    value = _field(data, "failed_checks", _is_object, "an object") or {}
    for name, failure in value.items():
        if not isinstance(failure, dict) or not all(
            isinstance(failure.get(key), str) for key in ("message", "at")
        ):
            raise CorruptState(f"failed_checks.{name} needs message and at, got {failure!r}")
    return {name: dict(failure) for name, failure in value.items()}


def decode_copy_record(data: object) -> CopyRecord:
    if not isinstance(data, dict):
        raise CorruptState(f"an offsite target's record must be an object, got {data!r}")
    running = _field(data, "running", lambda v: isinstance(v, dict), "an object")
    return CopyRecord(
        last_copy=_decode_time(data, "last_copy"),
        last_copy_data=_field(data, "last_copy_data", lambda v: isinstance(v, dict), "an object"),
        last_attempt=_decode_time(data, "last_attempt"),
        consecutive_failures=_field(data, "consecutive_failures", _is_int, "a whole number") or 0,
        last_error=_field(data, "last_error", _is_text, "text"),
        last_error_kind=_field(data, "last_error_kind", _is_text, "text"),
        last_error_hint=_field(data, "last_error_hint", _is_text, "text"),
        backoff_until=_decode_time(data, "backoff_until"),
        requested=bool(_field(data, "requested", lambda v: isinstance(v, bool), "true or false")),
        running=None if running is None else _decode_copy_running(running),
        problem=_field(data, "problem", _is_text, "text"),
        first_seen=_decode_time(data, "first_seen"),
        settings=_text_mapping(data, "settings"),
    )


def _decode_copy_running(running: Mapping[str, Any]) -> RunningOperation:
    started = _decode_time(running, "started")
    requested = _field(running, "requested", lambda v: isinstance(v, bool), "true or false")
    done = _field(running, "done", lambda v: isinstance(v, list), "a list") or []
    if started is None or not all(isinstance(path, str) for path in done):
        raise CorruptState(f"running needs started and a list of repositories, got {running!r}")
    return RunningOperation("offsite", started, bool(requested), list(done))


def _decode_copies(document: Mapping[str, Any]) -> tuple[dict[str, CopyRecord], int]:
    section = _field(document, "offsite", lambda v: isinstance(v, dict), "an object") or {}
    cursor = _field(section, "cursor", _is_int, "a whole number") or 0
    targets = _field(section, "targets", lambda v: isinstance(v, dict), "an object") or {}
    records = {}
    for name, data in targets.items():
        try:
            records[name] = decode_copy_record(data)
        except CorruptState as error:
            raise CorruptState(f"offsite target {name!r}: {error}") from None
    return records, cursor


def decode_state(text: str) -> LoadResult:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise CorruptState(f"not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise CorruptState("the state must be a JSON object")
    version = document.get("version")
    if version != STATE_VERSION:
        raise CorruptState(f"state version {version!r}, this coordinator reads {STATE_VERSION}")
    cursor = _field(document, "cursor", _is_int, "a whole number") or 0
    global_mode = document.get("global_mode", DEFAULT_GLOBAL_MODE)
    if global_mode not in GLOBAL_MODES:
        raise CorruptState(f"global_mode must be running or paused, got {global_mode!r}")
    drones = _field(document, "drones", lambda v: isinstance(v, dict), "an object") or {}
    records = {}
    warnings: list[str] = []
    for name, data in drones.items():
        dropped: list[str] = []
        try:
            records[name] = decode_record(data, dropped)
        except CorruptState as error:
            raise CorruptState(f"drone {name!r}: {error}") from None
        warnings.extend(f"drone {name!r}: {warning}" for warning in dropped)
    copies, copy_cursor = _decode_copies(document)
    return LoadResult(
        records=records,
        cursor=cursor,
        copies=copies,
        copy_cursor=copy_cursor,
        global_mode=global_mode,
        warnings=tuple(warnings),
    )


# ---------------------------------------------------------------------------------------------
# The file


class Store:
    """Loads and atomically saves the coordinator's state file; ``redactor`` keeps secrets out
    of the free text it writes."""

    def __init__(self, path: Path, redactor: Redactor | None = None) -> None:
        self.path = path
        self.redactor = redactor
        self._write_lock = threading.Lock()
        self._snapshots = itertools.count(1)
        self._written_snapshot = 0

    def load(self, set_aside: bool = True) -> LoadResult:
        """The saved state; empty when there is none. An unusable file is moved aside (unless
        ``set_aside`` is false: a read-only look such as the CLI's ``status``) and the returned
        ``problem`` says why and where it went."""

        def unusable(reason: str) -> LoadResult:
            return LoadResult(problem=self._set_aside(reason) if set_aside else reason)

        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return LoadResult()
        except (OSError, UnicodeDecodeError) as error:
            return unusable(f"cannot read {self.path}: {error}")
        try:
            return decode_state(text)
        except CorruptState as error:
            return unusable(f"unusable state file {self.path}: {error}")

    def save(
        self,
        records: Mapping[str, DroneRecord],
        cursor: int,
        global_mode: str,
        copies: Copies | None = None,
    ) -> None:
        text = encode_state(records, cursor, global_mode, self.redactor, copies)
        self._write(next(self._snapshots), text)

    async def save_async(
        self,
        records: Mapping[str, DroneRecord],
        cursor: int,
        global_mode: str,
        copies: Copies | None = None,
    ) -> None:
        """Like save, with the disk work in a thread so the event loop is not blocked."""
        # Encode here, on the loop, so the thread never reads records the loop is changing.
        snapshot = next(self._snapshots)
        text = encode_state(records, cursor, global_mode, self.redactor, copies)
        await asyncio.to_thread(self._write, snapshot, text)

    def _write(self, snapshot: int, text: str) -> None:
        with self._write_lock:
            # Saves may finish out of order; an older snapshot must not replace a newer one.
            if snapshot < self._written_snapshot:
                return
            write_atomically(self.path, text)
            self._written_snapshot = snapshot

    def _set_aside(self, reason: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for attempt in itertools.count(1):
            if not target.exists():
                break
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{attempt}")
        try:
            self.path.rename(target)
        except OSError as error:
            return f"{reason}; could not move it aside: {error}; starting with empty state"
        return f"{reason}; moved to {target.name}; starting with empty state"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a crash leaves either the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
