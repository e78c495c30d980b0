"""Pure scheduling decisions: what starts next. No I/O and no clock: ``now`` is an argument.

What is scheduled is *work that holds repositories*: a drone's operations hold its repository;
an offsite copy holds each of its repositories while it copies that one (the coordinator's
``leases`` hand them over, so a copy starts holding none). The same rules apply to both:
round robin from a rotating cursor, so none starves; at most ``max_concurrent`` at once; never
two holders of one repository; requests (buttons) ahead of scheduled work; backoff after a
failure; overdue when no success for too long.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import AnyOperation, Mode, Operation

# Requests run in these modes; ``disabled`` means nothing at all runs on the drone.
MODES_ACCEPTING_REQUESTS = frozenset({Mode.SCHEDULED, Mode.MANUAL})


@dataclass(frozen=True)
class Schedule:
    """Work that is due on its own frequency besides the main one (a drone's check, drill)."""

    operation: AnyOperation
    frequency: timedelta
    last_success: datetime | None


@dataclass(frozen=True)
class WorkView:
    """What the scheduler needs to know about one drone (or offsite target) at one instant."""

    name: str
    repositories: frozenset[str]  # what it holds while it runs (keys, as config spells them)
    mode: Mode
    frequency: timedelta
    busy: bool  # an operation is running on it
    last_success: datetime | None  # last successful backup (create) or copy
    backoff_until: datetime | None  # set while failing: nothing scheduled starts before it
    pending: tuple[AnyOperation, ...]  # requested operations, oldest first
    due_operation: AnyOperation = Operation.SCHEDULED  # what runs when it is due
    waiting_for: tuple[str, ...] = ()  # not due before these drones have backed up
    others: tuple[Schedule, ...] = ()  # more scheduled work, after the main one


@dataclass(frozen=True)
class WriterView:
    """A drone writing into a repository an offsite target copies (for ``after_backups``)."""

    name: str
    mode: Mode
    last_backup: datetime | None
    overdue: bool


@dataclass(frozen=True)
class Start:
    name: str
    operation: AnyOperation
    requested: bool  # from a request (button) rather than the schedule


@dataclass(frozen=True)
class Decision:
    starts: tuple[Start, ...]
    cursor: int  # the new round-robin cursor


def is_backing_off(drone: WorkView, now: datetime) -> bool:
    return drone.backoff_until is not None and now < drone.backoff_until


def is_due(drone: WorkView, now: datetime) -> bool:
    """Scheduled, idle, not backing off, and some work of it is due (``due_operation``)."""
    return due_operation(drone, now) is not None


def due_operation(drone: WorkView, now: datetime) -> AnyOperation | None:
    """What the schedule starts now: the main work when its last success is at least a
    frequency old (and no writer is waited for), else the first other schedule that is due.
    A failure's backoff only delays that: a failed prune or check after a recent backup waits
    for the frequency, not for a retry of something else."""
    if drone.mode is not Mode.SCHEDULED or drone.busy or is_backing_off(drone, now):
        return None
    if not drone.waiting_for and _elapsed(drone.last_success, drone.frequency, now):
        return drone.due_operation
    for schedule in drone.others:
        if _elapsed(schedule.last_success, schedule.frequency, now):
            return schedule.operation
    return None


def _elapsed(last_success: datetime | None, frequency: timedelta, now: datetime) -> bool:
    return last_success is None or now - last_success >= frequency


def next_due(drone: WorkView, now: datetime) -> datetime | None:
    """When the next scheduled run is due (possibly already past); None unless scheduled.
    A backoff that ends later than the frequency's due time moves it there."""
    if drone.mode is not Mode.SCHEDULED:
        return None
    due = now if drone.last_success is None else drone.last_success + drone.frequency
    if drone.backoff_until is not None and drone.backoff_until > due:
        return drone.backoff_until
    return due


def next_run_note(drone: WorkView, now: datetime) -> str:
    """``; next run at T`` for a failure's log line: when the schedule retries, as the next
    backup sensor shows it (``next_due``)."""
    due = next_due(drone, now)
    if due is None:
        return f"; not run again by the schedule (mode {drone.mode.value})"
    return f"; next run at {max(due, now).isoformat(timespec='seconds')}"


def writers_to_wait_for(
    last_copy: datetime | None, writers: Sequence[WriterView]
) -> tuple[str, ...]:
    """``after_backups``: the writers that have not backed up since the last copy (or ever,
    before the first copy), so the copy waits for them. Only scheduled drones count, and not
    one that is overdue itself: its own problem is raised, and one host that is off for a week
    must not hold up everyone's copy."""
    return tuple(
        writer.name
        for writer in writers
        if writer.mode is Mode.SCHEDULED
        and not writer.overdue
        and (
            writer.last_backup is None
            or (last_copy is not None and writer.last_backup <= last_copy)
        )
    )


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
        self, drones: Sequence[WorkView], max_concurrent: int, busy_repositories: frozenset[str]
    ) -> None:
        self.initially_free = max_concurrent - sum(1 for drone in drones if drone.busy)
        self.initially_taken = frozenset(busy_repositories).union(
            *(d.repositories for d in drones if d.busy)
        )
        self.free = self.initially_free
        self.taken_repositories = set(self.initially_taken)
        self.started_drones: set[str] = set()

    def could_start_before_this_decision(self, drone: WorkView) -> bool:
        return (
            self.initially_free > 0
            and not drone.busy
            and drone.mode is not Mode.DISABLED
            and not drone.repositories & self.initially_taken
        )

    def can_start(self, drone: WorkView) -> bool:
        return (
            self.free > 0
            and self.could_start_before_this_decision(drone)
            and drone.name not in self.started_drones
            and not drone.repositories & self.taken_repositories
        )

    def take(self, drone: WorkView) -> None:
        self.free -= 1
        self.taken_repositories.update(drone.repositories)
        self.started_drones.add(drone.name)


def _wants_request(drone: WorkView) -> bool:
    return bool(drone.pending) and drone.mode in MODES_ACCEPTING_REQUESTS


def decide(
    drones: Sequence[WorkView],
    cursor: int,
    now: datetime,
    max_concurrent: int,
    busy_repositories: frozenset[str] = frozenset(),
    paused: bool = False,
) -> Decision:
    """What to start now.

    First one pass for requests (a drone's oldest pending one; in modes scheduled and manual,
    even while backing off), then, unless paused, one pass for due drones. Concurrency counts
    busy drones; ``busy_repositories`` adds repositories held by anything else (an offsite
    copy holding or waiting for one).

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

    def consider(offset: int, drone: WorkView, operation: AnyOperation, requested: bool) -> None:
        nonlocal next_offset
        if slots.can_start(drone):
            slots.take(drone)
            starts.append(Start(name=drone.name, operation=operation, requested=requested))
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
            operation = due_operation(drone, now)
            if operation is not None:
                consider(offset, drone, operation, requested=False)
    if next_offset is None:
        return Decision(starts=(), cursor=cursor)
    next_offset = min([next_offset, *passed_over])
    return Decision(starts=tuple(starts), cursor=(cursor % len(drones) + next_offset) % len(drones))
