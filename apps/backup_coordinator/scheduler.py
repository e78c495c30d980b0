"""Pure scheduling decisions: what starts next. No I/O and no clock: ``now`` is an argument.

Round robin: drones are considered from a rotating cursor, so none starves. At most
``max_concurrent`` operations run at once, never two on one repository, and requests (buttons)
go ahead of scheduled work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import Mode, Operation

# Requests run in these modes; ``disabled`` means nothing at all runs on the drone.
MODES_ACCEPTING_REQUESTS = frozenset({Mode.SCHEDULED, Mode.MANUAL})


@dataclass(frozen=True)
class DroneView:
    """What the scheduler needs to know about one drone at one instant."""

    name: str
    repository_key: str
    mode: Mode
    frequency: timedelta
    busy: bool  # an operation is running on this drone
    last_backup: datetime | None  # last successful create
    backoff_until: datetime | None
    pending: tuple[Operation, ...]  # requested operations, oldest first


@dataclass(frozen=True)
class Start:
    drone: str
    operation: Operation
    requested: bool  # from a request (button) rather than the schedule


@dataclass(frozen=True)
class Decision:
    starts: tuple[Start, ...]
    cursor: int  # the new round-robin cursor


def is_backing_off(drone: DroneView, now: datetime) -> bool:
    return drone.backoff_until is not None and now < drone.backoff_until


def is_due(drone: DroneView, now: datetime) -> bool:
    """Scheduled, idle, not backing off, and the last success is at least a frequency old."""
    if drone.mode is not Mode.SCHEDULED or drone.busy or is_backing_off(drone, now):
        return False
    return drone.last_backup is None or now - drone.last_backup >= drone.frequency


def next_due(drone: DroneView, now: datetime) -> datetime | None:
    """When the next scheduled backup is due (possibly already past); None unless scheduled."""
    if drone.mode is not Mode.SCHEDULED:
        return None
    due = now if drone.last_backup is None else drone.last_backup + drone.frequency
    if drone.backoff_until is not None and drone.backoff_until > due:
        return drone.backoff_until
    return due


def backoff_delay(
    consecutive_failures: int, frequency: timedelta, base: timedelta = timedelta(minutes=1)
) -> timedelta:
    """``base * 2**(n-1)``, capped at the frequency, so a failing drone is retried ever less
    often but at least as often as it would be backed up; zero without failures."""
    if consecutive_failures <= 0 or base <= timedelta(0):
        return timedelta(0)
    delay = base
    doublings = consecutive_failures - 1
    # Double step by step: 2**n for a large n would overflow timedelta.
    while doublings > 0 and delay < frequency:
        delay *= 2
        doublings -= 1
    return min(delay, frequency)


def is_overdue(
    mode: Mode,
    last_backup: datetime | None,
    frequency: timedelta,
    overdue_factor: float,
    now: datetime,
    since: datetime,
) -> bool:
    """No success for more than ``overdue_factor`` x frequency (only in mode scheduled).

    Without any backup yet, the time counts from ``since``: when the coordinator first knew
    the drone, so a new drone is not reported overdue at once.
    """
    if mode is not Mode.SCHEDULED:
        return False
    reference = last_backup if last_backup is not None else since
    return now - reference > frequency * overdue_factor


def _round_robin(count: int, cursor: int) -> Iterator[tuple[int, int]]:
    """(offset from the cursor, index) for every drone, starting at the cursor."""
    first = cursor % count
    for offset in range(count):
        yield offset, (first + offset) % count


class _Slots:
    """Concurrency and repositories still free within one decision."""

    def __init__(
        self, drones: Sequence[DroneView], max_concurrent: int, busy_repositories: frozenset[str]
    ) -> None:
        self.initially_free = max_concurrent - sum(1 for drone in drones if drone.busy)
        self.initially_taken = frozenset(busy_repositories).union(
            d.repository_key for d in drones if d.busy
        )
        self.free = self.initially_free
        self.taken_repositories = set(self.initially_taken)
        self.started_drones: set[str] = set()

    def could_start_before_this_decision(self, drone: DroneView) -> bool:
        return (
            self.initially_free > 0
            and not drone.busy
            and drone.mode is not Mode.DISABLED
            and drone.repository_key not in self.initially_taken
        )

    def can_start(self, drone: DroneView) -> bool:
        return (
            self.free > 0
            and self.could_start_before_this_decision(drone)
            and drone.name not in self.started_drones
            and drone.repository_key not in self.taken_repositories
        )

    def take(self, drone: DroneView) -> None:
        self.free -= 1
        self.taken_repositories.add(drone.repository_key)
        self.started_drones.add(drone.name)


def _wants_request(drone: DroneView) -> bool:
    return bool(drone.pending) and drone.mode in MODES_ACCEPTING_REQUESTS


def decide(
    drones: Sequence[DroneView],
    cursor: int,
    now: datetime,
    max_concurrent: int,
    busy_repositories: frozenset[str] = frozenset(),
    paused: bool = False,
) -> Decision:
    """What to start now.

    First one pass for requests (a drone's oldest pending one; in modes scheduled and manual,
    even while backing off), then, unless paused, one pass for due drones. Concurrency counts
    busy drones; ``busy_repositories`` adds repositories held by anything else (offsite sync).

    The new cursor points just after the started drone furthest along in round-robin order,
    or at an earlier drone that wanted to start but lost its repository or its slot to a
    drone started in this same decision: otherwise a drone sharing a repository with a
    frequently due neighbour could be passed over forever.
    """
    if not drones:
        return Decision(starts=(), cursor=cursor)
    slots = _Slots(drones, max_concurrent, busy_repositories)
    starts: list[Start] = []
    passed_over: list[int] = []  # offsets of drones that lost out to a start made here
    next_offset: int | None = None  # where the next decision begins, relative to the cursor

    def consider(offset: int, drone: DroneView, operation: Operation, requested: bool) -> None:
        nonlocal next_offset
        if slots.can_start(drone):
            slots.take(drone)
            starts.append(Start(drone=drone.name, operation=operation, requested=requested))
            next_offset = offset + 1 if next_offset is None else max(next_offset, offset + 1)
        elif drone.name not in slots.started_drones and slots.could_start_before_this_decision(
            drone
        ):
            passed_over.append(offset)

    for offset, index in _round_robin(len(drones), cursor):
        drone = drones[index]
        if _wants_request(drone):
            consider(offset, drone, drone.pending[0], requested=True)
    if not paused:
        for offset, index in _round_robin(len(drones), cursor):
            drone = drones[index]
            if is_due(drone, now):
                consider(offset, drone, Operation.SCHEDULED, requested=False)
    if next_offset is None:
        return Decision(starts=(), cursor=cursor)
    next_offset = min([next_offset, *passed_over])
    return Decision(starts=tuple(starts), cursor=(cursor % len(drones) + next_offset) % len(drones))
