"""The operation registry: everything the coordinator knows about each operation, in one place.

Two levels, as on the wire:

- a **step** is one agent operation (``create``, ``prune``, ``stats``, ``check``, ``extract``,
  ``drill``): the state a
  drone shows while it runs, the job fields it needs beyond the repository's, how its result
  folds into the drone's record, and how it is summarised for people;
- an **operation** is what a person or the schedule asks for: its steps, in order, and the
  button that requests it. A scheduled backup is create, prune and stats in one agent session.

Adding an operation means adding a row here (and its counterpart in the agent's own table);
``tests/unit/test_registry.py`` fails when any other site disagrees with these tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .config import DroneConfig
from .model import MIB, DroneSettings, DroneState, Operation, SettingError, format_mib
from .store import DroneRecord

JobFields = Callable[[DroneConfig, DroneSettings], dict[str, Any]]
Fold = Callable[[DroneRecord, Mapping[str, Any], datetime], None]
Summary = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True)
class Step:
    """One agent operation, as the coordinator runs and records it."""

    name: str  # the agent's operation word
    busy_state: DroneState
    job_fields: JobFields  # what the job needs beyond the repository's fields
    fold: Fold  # record the step's result data
    summary: Summary  # one line for people (logs, the CLI)
    streams_progress: bool = False


@dataclass(frozen=True)
class Button:
    """How Home Assistant shows the control that requests an operation."""

    key: str  # entity object id suffix, e.g. ``scheduled_backup``
    label: str
    icon: str


@dataclass(frozen=True)
class OperationSpec:
    operation: Operation
    steps: tuple[str, ...]
    button: Button | None  # None: requested from the CLI only


# --- job fields -------------------------------------------------------------------------------


def _no_fields(_drone: DroneConfig, _settings: DroneSettings) -> dict[str, Any]:
    return {}


def _create_fields(drone: DroneConfig, _settings: DroneSettings) -> dict[str, Any]:
    return {
        "paths": list(drone.paths),
        "exclude_patterns": list(drone.exclude_patterns),
        "exclude_if_present": list(drone.exclude_if_present),
        "one_file_system": drone.one_file_system,
        "compression": drone.compression,
    }


def _prune_fields(_drone: DroneConfig, settings: DroneSettings) -> dict[str, Any]:
    if settings.keep.is_empty():
        # borg would delete every archive of the prefix: refuse rather than guess.
        raise SettingError("no keep rule is set: prune would delete every archive")
    return {"keep": settings.keep.as_job()}


def _check_fields(drone: DroneConfig, _settings: DroneSettings) -> dict[str, Any]:
    """check's options (agent 1.3.0 and later), sent only when the drone sets one, so a plain
    check still runs on older agents."""
    options: dict[str, Any] = {}
    if drone.check.verify_data:
        options["verify_data"] = True
    if drone.check.max_duration is not None:
        options["max_duration"] = drone.check.max_duration
    return {"check": options} if options else {}


def _extract_fields(_drone: DroneConfig, _settings: DroneSettings) -> dict[str, Any]:
    """The whole newest archive into a fresh directory under the drone's restore root; a
    restore request names the archive, paths and destination (``build_job``'s extra)."""
    return {"archive": "latest"}


def _drill_fields(drone: DroneConfig, _settings: DroneSettings) -> dict[str, Any]:
    """A new sample each day (the seed is the UTC date), within the drone's budget."""
    drill: dict[str, Any] = {
        "seed": drill_seed(datetime.now(UTC)),
        "size_budget": drone.drill.size_mib * MIB,
        "max_files": drone.drill.max_files,
    }
    if drone.drill.canaries:
        drill["canaries"] = list(drone.drill.canaries)
    return {"drill": drill}


def drill_seed(now: datetime) -> int:
    """``YYYYMMDD`` of the UTC day: one sample per day, the same all that day."""
    return int(now.astimezone(UTC).strftime("%Y%m%d"))


# --- folding results into the record ----------------------------------------------------------


def _fold_create(record: DroneRecord, data: Mapping[str, Any], now: datetime) -> None:
    record.last_backup = now
    if isinstance(data.get("archive"), dict):
        record.last_archive = dict(data["archive"])
        name = record.last_archive.get("name")
        if isinstance(name, str):
            record.recent_archives = newest_archives([name, *record.recent_archives])
            if record.archive_count is not None:  # one more until stats counts again
                record.archive_count += 1
    if isinstance(data.get("repository"), dict):
        record.repository = repository_sizes(data["repository"])


def _fold_prune(record: DroneRecord, data: Mapping[str, Any], now: datetime) -> None:
    record.last_prune = now
    kept = data.get("kept")
    if isinstance(kept, list):
        record.recent_archives = newest_archives(name for name in kept if isinstance(name, str))
        record.archive_count = _count(data, "kept")  # what prune kept is what is left


RECENT_ARCHIVES = 10  # archive names a drone's record (and its last backup sensor) keeps


def newest_archives(names: Iterable[str]) -> list[str]:
    """The newest few names: archive names end in their UTC time, so they sort by age."""
    return sorted(set(names), reverse=True)[:RECENT_ARCHIVES]


def _fold_check(record: DroneRecord, data: Mapping[str, Any], now: datetime) -> None:
    record.last_check = now
    record.last_check_data = {
        "finding_count": _count(data, "finding", "findings"),
        "verify_data": bool(data.get("verify_data")),
        "partial": bool(data.get("partial")),
    }
    record.failed_checks.pop("check", None)


def _fold_drill(record: DroneRecord, data: Mapping[str, Any], now: datetime) -> None:
    record.last_drill = now
    record.last_drill_data = {
        key: data.get(key)
        for key in ("archive", "files_verified", "bytes_verified", "skipped_changed")
    }
    record.last_drill_data["mismatch_count"] = _count(data, "mismatch", "mismatches")
    record.failed_checks.pop("drill", None)


def _fold_stats(record: DroneRecord, data: Mapping[str, Any], now: datetime) -> None:
    record.last_stats = now
    record.repository = repository_sizes(data)
    count = data.get("archive_count")
    record.archive_count = count if isinstance(count, int) else None


def _fold_nothing(_record: DroneRecord, _data: Mapping[str, Any], _now: datetime) -> None:
    return None


REPOSITORY_SIZE_KEYS = (
    "total_size",
    "compressed_size",
    "deduplicated_size",
    "total_chunks",
    "unique_chunks",
)


def repository_sizes(data: Mapping[str, Any]) -> dict[str, int]:
    return {
        key: value
        for key, value in data.items()
        if key in REPOSITORY_SIZE_KEYS and isinstance(value, int) and not isinstance(value, bool)
    }


# --- summaries --------------------------------------------------------------------------------


def _create_summary(data: Mapping[str, Any]) -> str:
    archive = data.get("archive") or {}
    return (
        f"archive {archive.get('name', '?')}: {archive.get('nfiles', '?')} files,"
        f" {format_mib(archive.get('original_size'))} read,"
        f" {format_mib(archive.get('deduplicated_size'))} new"
    )


def _prune_summary(data: Mapping[str, Any]) -> str:
    return f"pruned {_count(data, 'pruned')}, kept {_count(data, 'kept')}"


def _count(data: Mapping[str, Any], key: str, listed: str | None = None) -> int:
    """The agent's ``<key>_count`` (its lists may be cut short), else the length of its list
    (``listed``, by default ``key``)."""
    count = data.get(f"{key}_count")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    return len(data.get(listed or key) or [])


def count_beyond(data: Mapping[str, Any], key: str, listed: str) -> int:
    """How many the agent counted beyond the list it sent (``<key>_count`` vs ``listed``)."""
    return max(0, _count(data, key, listed) - len(data.get(listed) or []))


def _stats_summary(data: Mapping[str, Any]) -> str:
    return (
        f"repository {format_mib(data.get('deduplicated_size'))} deduplicated,"
        f" {data.get('archive_count', '?')} archives"
    )


def _check_summary(data: Mapping[str, Any]) -> str:
    findings = data.get("findings") or []
    how = " (data verified)" if data.get("verify_data") else ""
    partial = " (partial: time limit reached)" if data.get("partial") else ""
    text = "repository OK" if not findings else f"{_count(data, 'finding', 'findings')} finding(s)"
    return text + how + partial


def _extract_summary(data: Mapping[str, Any]) -> str:
    partial = " (partial)" if data.get("partial") else ""
    return (
        f"restored {data.get('archive', '?')} into {data.get('destination', '?')}{partial}:"
        f" {data.get('files', '?')} files, {format_mib(data.get('bytes'))}"
    )


def _drill_summary(data: Mapping[str, Any]) -> str:
    missing = data.get("missing_canaries") or []
    return (
        f"drill of {data.get('archive', '?')}: {data.get('files_verified', '?')} verified"
        f" ({format_mib(data.get('bytes_verified'))}), {data.get('skipped_changed', '?')}"
        f" skipped (changed since), {_count(data, 'mismatch', 'mismatches')} mismatch(es)"
        + (f", {len(missing)} canary file(s) missing" if missing else "")
    )


# --- the tables -------------------------------------------------------------------------------

STEPS: Mapping[str, Step] = {
    step.name: step
    for step in (
        Step(
            "create",
            DroneState.CREATING,
            _create_fields,
            _fold_create,
            _create_summary,
            streams_progress=True,
        ),
        Step("prune", DroneState.PRUNING, _prune_fields, _fold_prune, _prune_summary),
        Step("stats", DroneState.UPDATING_STATS, _no_fields, _fold_stats, _stats_summary),
        Step("check", DroneState.CHECKING, _check_fields, _fold_check, _check_summary),
        # extract's progress (bytes restored of a total) is not create's: not streamed as such
        Step("extract", DroneState.RESTORING, _extract_fields, _fold_nothing, _extract_summary),
        Step("drill", DroneState.DRILLING, _drill_fields, _fold_drill, _drill_summary),
    )
}

OPERATIONS: Mapping[Operation, OperationSpec] = {
    spec.operation: spec
    for spec in (
        OperationSpec(
            Operation.CREATE, ("create",), Button("create", "create", "mdi:backup-restore")
        ),
        OperationSpec(Operation.PRUNE, ("prune",), Button("prune", "prune", "mdi:content-cut")),
        OperationSpec(
            Operation.STATS,
            ("stats",),
            Button("update_stats", "update stats", "mdi:chart-box-outline"),
        ),
        OperationSpec(Operation.CHECK, ("check",), Button("check", "check", "mdi:shield-search")),
        OperationSpec(Operation.EXTRACT, ("extract",), None),  # a restore event asks for it
        OperationSpec(
            Operation.DRILL,
            ("drill",),
            Button("restore_drill", "restore drill", "mdi:file-restore-outline"),
        ),
        OperationSpec(
            Operation.SCHEDULED,
            ("create", "prune", "stats"),
            Button("scheduled_backup", "scheduled backup", "mdi:calendar-sync"),
        ),
    )
}

# The states a drone shows while a step runs; any other state is a resting one.
BUSY_STATES = frozenset(step.busy_state for step in STEPS.values())


def spec_of(operation: Operation) -> OperationSpec:
    return OPERATIONS[operation]


def steps_of(operation: Operation) -> tuple[Step, ...]:
    return tuple(STEPS[name] for name in OPERATIONS[operation].steps)


def summary(results: Mapping[str, Mapping[str, Any]]) -> str:
    """``step: summary; ...`` for the steps that ended, in the order they ran."""
    return "; ".join(STEPS[name].summary(data) for name, data in results.items() if name in STEPS)
