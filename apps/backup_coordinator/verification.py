"""Proving the backups can be read back: checks and restore drills on schedules of their own,
and restores a person asks for. Pure decisions; the coordinator runs them.

A check or drill that ran and found something wrong (a mismatch, a damaged segment) is a
*finding* about the repository, not a failure of the drone: it raises the drone's problem until
a later run of the same kind passes, and it neither counts as a failed backup nor delays the
drone's backups. A run that could not happen (host down, timeout) is an ordinary failure. The
same holds for a restore: what borg or the agent refused is reported to the person who asked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from .config import DroneConfig
from .locations import path_components
from .model import Mode, Operation, format_mib
from .protocol import FailureKind, OperationFailed
from .scheduler import Schedule, is_overdue
from .store import DroneRecord

# What a check or drill found (borg ran and said so), as opposed to not getting to run (a lock
# held, the host down): the agent's error ids that speak about the repository's content.
FINDING_ERRORS = (
    "DrillMismatch",
    "DrillCanaryMissing",
    "CheckFoundProblems",
    "IntegrityError",
    "ObjectNotFound",
    "Repository.ObjectNotFound",
    "Repository.CheckNeeded",
)
# What a restore request can get wrong besides: a destination or archive the agent refuses.
REQUEST_KINDS = frozenset({FailureKind.BORG_ERROR, FailureKind.REJECTED})
VERIFICATIONS = {Operation.CHECK: "check", Operation.DRILL: "drill"}
LABELS = {"check": "repository check", "drill": "restore drill"}

LATEST = "latest"
ARCHIVE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,254}$")  # as the agent's
MAX_RESTORE_PATHS = 256


class BadRestoreRequest(ValueError):
    """A restore request that must not reach the agent; the message says what is wrong."""


# --- schedules --------------------------------------------------------------------------------


def verification_schedules(drone: DroneConfig, record: DroneRecord) -> tuple[Schedule, ...]:
    """The drone's check and drill, each due a frequency after its last run (passed or not);
    a drone never checked counts from when the coordinator first knew it."""
    schedules = []
    for operation, name, minutes in (
        (Operation.CHECK, "check", drone.check.frequency_minutes),
        (Operation.DRILL, "drill", drone.drill.frequency_minutes),
    ):
        if minutes > 0:
            schedules.append(
                Schedule(operation, timedelta(minutes=minutes), last_run(record, name))
            )
    return tuple(schedules)


def last_success(record: DroneRecord, name: str) -> datetime | None:
    return record.last_check if name == "check" else record.last_drill


def last_run(record: DroneRecord, name: str) -> datetime | None:
    moments = [last_success(record, name)]
    failure = record.failed_checks.get(name)
    if failure is not None:
        moments.append(datetime.fromisoformat(failure["at"]))
    known = [moment for moment in moments if moment is not None]
    return max(known) if known else record.first_seen


def overdue_checks(
    drone: DroneConfig, mode: Mode, record: DroneRecord, now: datetime, factor: float
) -> list[str]:
    """A reason for each check or drill that has not passed for ``factor`` x its frequency."""
    reasons = []
    for name, minutes in (
        ("check", drone.check.frequency_minutes),
        ("drill", drone.drill.frequency_minutes),
    ):
        passed = last_success(record, name)
        since = record.first_seen or now
        if minutes > 0 and is_overdue(mode, passed, timedelta(minutes=minutes), factor, now, since):
            when = passed.isoformat(timespec="seconds") if passed else "the coordinator started"
            reasons.append(f"{LABELS[name]} overdue: none passed since {when}")
    return reasons


# --- findings ---------------------------------------------------------------------------------


def is_finding(operation: Operation, failure: OperationFailed) -> bool:
    """A check or drill that ran and found the repository wanting."""
    return (
        operation in VERIFICATIONS
        and failure.kind is FailureKind.BORG_ERROR
        and failure.message.startswith(FINDING_ERRORS)
    )


def record_finding(
    record: DroneRecord, operation: Operation, failure: OperationFailed, now: datetime
) -> None:
    name = VERIFICATIONS[operation]
    record.failed_checks[name] = {
        "message": f"{LABELS[name]} failed: {failure.message}",
        "at": now.isoformat(),
    }


# --- restores ---------------------------------------------------------------------------------


def restore_request(data: Mapping[str, Any]) -> dict[str, Any]:
    """A ``backup_coordinator_restore`` event's data (or the CLI's) -> the extract job's extra
    fields. Checked here as the agent checks them, so nothing malformed is sent."""
    unknown = set(data) - {"drone", "archive", "paths", "destination"}
    if unknown:
        raise BadRestoreRequest(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    archive = data.get("archive", LATEST)
    if not isinstance(archive, str) or not ARCHIVE_NAME_PATTERN.fullmatch(archive):
        raise BadRestoreRequest(f"archive must be {LATEST} or an archive name, got {archive!r}")
    request: dict[str, Any] = {"archive": archive}
    paths = data.get("paths") or []
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or len(paths) > MAX_RESTORE_PATHS:
        raise BadRestoreRequest(f"paths must be a list of at most {MAX_RESTORE_PATHS} paths")
    for path in paths:
        _check_archive_path(path)
    if paths:
        request["restore_paths"] = [path.lstrip("/") for path in paths]
    destination = data.get("destination")
    if destination not in (None, ""):
        if not isinstance(destination, str) or not destination.startswith("/"):
            raise BadRestoreRequest(f"destination must be an absolute path, got {destination!r}")
        if ".." in path_components(destination) or _has_control(destination):
            raise BadRestoreRequest(f"destination must not contain '..', got {destination!r}")
        request["destination"] = destination
    return request


def _check_archive_path(path: object) -> None:
    """A path inside the archive; a leading / is dropped (borg stores paths without it)."""
    if not isinstance(path, str) or not path.strip("/") or _has_control(path):
        raise BadRestoreRequest(f"each path must name something in the archive, got {path!r}")
    if ".." in path_components(path):
        raise BadRestoreRequest(f"paths must not contain '..', got {path!r}")


def _has_control(text: str) -> bool:
    return any(ord(character) < 32 or ord(character) == 127 for character in text)


def restore_done_message(host: str, data: Mapping[str, Any]) -> str:
    return (
        f"Restored {data.get('archive', '?')} on {host} into {data.get('destination', '?')}:"
        f" {data.get('files', '?')} files, {format_mib(data.get('bytes'))}."
    )


def restore_failed_message(host: str, request: Mapping[str, Any], failure: OperationFailed) -> str:
    where = request.get("destination") or "a new folder under the drone's restore root"
    return (
        f"The restore of {request.get('archive', LATEST)} on {host} into {where} failed:"
        f" {failure.message}" + (f" ({failure.hint})" if failure.hint else "") + "."
        " Files it wrote before it stopped stay there."
    )
