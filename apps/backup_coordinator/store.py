"""Persisted runtime state: one JSON file, written atomically, so a restart loses nothing.

The file holds what the coordinator learned (last backup, failures, backoff, statistics, queued
requests, the operation that was running) and never any secret: a record has no passphrase.
A file that cannot be used is moved aside (``<name>.corrupt-<time>``), never overwritten.
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

from .model import GLOBAL_MODES

STATE_VERSION = 1
DEFAULT_GLOBAL_MODE = "running"


class CorruptState(ValueError):
    """The state file's content is not a state this coordinator can use."""


@dataclass
class RunningOperation:
    """Set when an operation starts and cleared when it ends: one found at load was interrupted."""

    operation: str
    started: datetime
    requested: bool


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
    pending: list[str] = field(default_factory=list)  # queued requested operations, oldest first
    problem: str | None = None  # the reason of a raised problem
    first_seen: datetime | None = None  # when the coordinator first knew the drone


@dataclass(frozen=True)
class LoadResult:
    records: dict[str, DroneRecord] = field(default_factory=dict)
    cursor: int = 0
    global_mode: str = DEFAULT_GLOBAL_MODE
    problem: str | None = None  # why the file could not be used (it was moved aside)


# ---------------------------------------------------------------------------------------------
# Encoding


def _encode_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"state times must be timezone-aware, got {value!r}")
    return value.astimezone(UTC).isoformat()


def encode_record(record: DroneRecord) -> dict[str, Any]:
    running = record.running
    return {
        "last_backup": _encode_time(record.last_backup),
        "last_prune": _encode_time(record.last_prune),
        "last_stats": _encode_time(record.last_stats),
        "last_attempt": _encode_time(record.last_attempt),
        "consecutive_failures": record.consecutive_failures,
        "last_error": record.last_error,
        "last_error_kind": record.last_error_kind,
        "last_error_hint": record.last_error_hint,
        "backoff_until": _encode_time(record.backoff_until),
        "last_archive": record.last_archive,
        "repository": record.repository,
        "archive_count": record.archive_count,
        "running": None
        if running is None
        else {
            "operation": running.operation,
            "started": _encode_time(running.started),
            "requested": running.requested,
        },
        "pending": list(record.pending),
        "problem": record.problem,
        "first_seen": _encode_time(record.first_seen),
    }


def encode_state(records: Mapping[str, DroneRecord], cursor: int, global_mode: str) -> str:
    if global_mode not in GLOBAL_MODES:
        raise ValueError(
            f"global mode must be one of {', '.join(GLOBAL_MODES)}, got {global_mode!r}"
        )
    document = {
        "version": STATE_VERSION,
        "cursor": cursor,
        "global_mode": global_mode,
        "drones": {name: encode_record(record) for name, record in sorted(records.items())},
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


def _decode_running(data: Mapping[str, Any]) -> RunningOperation | None:
    running = _field(data, "running", lambda v: isinstance(v, dict), "an object")
    if running is None:
        return None
    operation = _field(running, "operation", _is_text, "text")
    started = _decode_time(running, "started")
    requested = _field(running, "requested", lambda v: isinstance(v, bool), "true or false")
    if operation is None or started is None:
        raise CorruptState(f"running needs operation and started, got {running!r}")
    return RunningOperation(operation=operation, started=started, requested=bool(requested))


def _decode_pending(data: Mapping[str, Any]) -> list[str]:
    pending = _field(data, "pending", lambda v: isinstance(v, list), "a list")
    if pending is None:
        return []
    if not all(isinstance(entry, str) for entry in pending):
        raise CorruptState(f"pending must list operation names, got {pending!r}")
    return list(pending)


def decode_record(data: object) -> DroneRecord:
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
        running=_decode_running(data),
        pending=_decode_pending(data),
        problem=_field(data, "problem", _is_text, "text"),
        first_seen=_decode_time(data, "first_seen"),
    )


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
    for name, data in drones.items():
        try:
            records[name] = decode_record(data)
        except CorruptState as error:
            raise CorruptState(f"drone {name!r}: {error}") from None
    return LoadResult(records=records, cursor=cursor, global_mode=global_mode)


# ---------------------------------------------------------------------------------------------
# The file


class Store:
    """Loads and atomically saves the coordinator's state file."""

    def __init__(self, path: Path) -> None:
        self.path = path
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

    def save(self, records: Mapping[str, DroneRecord], cursor: int, global_mode: str) -> None:
        self._write(next(self._snapshots), encode_state(records, cursor, global_mode))

    async def save_async(
        self, records: Mapping[str, DroneRecord], cursor: int, global_mode: str
    ) -> None:
        """Like save, with the disk work in a thread so the event loop is not blocked."""
        # Encode here, on the loop, so the thread never reads records the loop is changing.
        snapshot = next(self._snapshots)
        text = encode_state(records, cursor, global_mode)
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
