"""The scheduler's rules, by example and as properties over random drone sets and clocks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from backup_coordinator.model import CopyOperation, Mode, Operation
from backup_coordinator.scheduler import (
    Decision,
    Schedule,
    Start,
    WorkView,
    WriterView,
    backoff_delay,
    decide,
    due_operation,
    is_due,
    is_overdue,
    next_due,
    next_run_note,
    writers_to_wait_for,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def drone(
    name: str,
    *,
    repository: str | None = None,
    mode: Mode = Mode.SCHEDULED,
    frequency: timedelta = DAY,
    busy: bool = False,
    last_success: datetime | None = None,
    backoff_until: datetime | None = None,
    pending: tuple[Operation, ...] = (),
) -> WorkView:
    return WorkView(
        name=name,
        repositories=frozenset({repository if repository is not None else f"{name}:/repo"}),
        mode=mode,
        frequency=frequency,
        busy=busy,
        last_success=last_success,
        backoff_until=backoff_until,
        pending=pending,
    )


def started(decision: Decision) -> list[str]:
    return [start.name for start in decision.starts]


# --- is_due / next_due ---------------------------------------------------------------------


def test_a_drone_never_backed_up_is_due() -> None:
    assert is_due(drone("a"), NOW)


def test_due_exactly_one_frequency_after_the_last_success() -> None:
    assert is_due(drone("a", last_success=NOW - DAY), NOW)
    assert not is_due(drone("a", last_success=NOW - DAY + timedelta(seconds=1)), NOW)


def test_only_mode_scheduled_is_due() -> None:
    assert not is_due(drone("a", mode=Mode.MANUAL), NOW)
    assert not is_due(drone("a", mode=Mode.DISABLED), NOW)


def test_a_busy_drone_is_not_due() -> None:
    assert not is_due(drone("a", busy=True), NOW)


def test_a_drone_backing_off_is_due_only_when_the_backoff_ends() -> None:
    assert not is_due(drone("a", backoff_until=NOW + timedelta(seconds=1)), NOW)
    assert is_due(drone("a", backoff_until=NOW), NOW)


def test_next_due_is_one_frequency_after_the_last_success() -> None:
    assert next_due(drone("a", last_success=NOW - timedelta(hours=5)), NOW) == NOW + timedelta(
        hours=19
    )


def test_next_due_is_now_without_any_backup_and_none_unless_scheduled() -> None:
    assert next_due(drone("a"), NOW) == NOW
    assert next_due(drone("a", mode=Mode.MANUAL), NOW) is None
    assert next_due(drone("a", mode=Mode.DISABLED), NOW) is None


def test_next_due_waits_for_the_backoff() -> None:
    later = NOW + timedelta(hours=2)
    assert next_due(drone("a", last_success=NOW - 2 * DAY, backoff_until=later), NOW) == later


def test_a_failure_after_a_recent_success_waits_for_the_frequency_and_says_so() -> None:
    """A prune that failed after a good create: the backup is not due before it is a
    frequency old; the next due time and the log's note say when that is."""
    failing = drone(
        "a", last_success=NOW - timedelta(minutes=5), backoff_until=NOW + timedelta(minutes=1)
    )
    due = NOW - timedelta(minutes=5) + failing.frequency
    assert next_due(failing, NOW) == due
    assert not is_due(failing, NOW + timedelta(minutes=2))
    assert is_due(failing, due)
    assert next_run_note(failing, NOW) == f"; next run at {due.isoformat(timespec='seconds')}"


def test_a_failed_backup_is_retried_when_the_backoff_ends() -> None:
    retry = NOW + timedelta(minutes=1)
    failing = drone("a", last_success=None, backoff_until=retry)
    assert next_due(failing, NOW) == retry
    assert not is_due(failing, NOW)
    assert is_due(failing, retry)


def test_the_next_run_note_of_a_drone_the_schedule_does_not_run() -> None:
    manual = drone("a", mode=Mode.MANUAL, backoff_until=NOW + timedelta(minutes=1))
    assert next_run_note(manual, NOW) == "; not run again by the schedule (mode manual)"


# --- backoff_delay -------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_and_is_capped_at_the_frequency() -> None:
    hour = timedelta(hours=1)
    delays = [backoff_delay(n, hour) for n in range(9)]
    minutes = [d / timedelta(minutes=1) for d in delays]
    assert minutes == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_backoff_survives_huge_failure_counts() -> None:
    assert backoff_delay(10**9, DAY) == DAY


def test_backoff_with_a_custom_base() -> None:
    assert backoff_delay(3, DAY, base=timedelta(seconds=10)) == timedelta(seconds=40)


@settings(max_examples=60, deadline=None)
@given(
    failures=st.integers(min_value=0, max_value=200),
    frequency_minutes=st.integers(min_value=1, max_value=43200),
    base_seconds=st.integers(min_value=1, max_value=3600),
)
def test_backoff_is_monotone_and_never_above_the_frequency(
    failures: int, frequency_minutes: int, base_seconds: int
) -> None:
    frequency = timedelta(minutes=frequency_minutes)
    base = timedelta(seconds=base_seconds)
    delay = backoff_delay(failures, frequency, base)
    assert timedelta(0) <= delay <= frequency
    assert backoff_delay(failures + 1, frequency, base) >= delay


# --- is_overdue ----------------------------------------------------------------------------


def test_overdue_after_factor_times_frequency_without_success() -> None:
    last = NOW - 2 * DAY
    assert not is_overdue(Mode.SCHEDULED, last, DAY, 2.0, NOW, since=NOW - 10 * DAY)
    assert is_overdue(Mode.SCHEDULED, last, DAY, 2.0, NOW + timedelta(seconds=1), NOW)


def test_never_backed_up_counts_from_when_the_drone_was_first_seen() -> None:
    assert not is_overdue(Mode.SCHEDULED, None, DAY, 2.0, NOW, since=NOW - DAY)
    assert is_overdue(Mode.SCHEDULED, None, DAY, 2.0, NOW, since=NOW - 3 * DAY)


def test_only_mode_scheduled_can_be_overdue() -> None:
    long_ago = NOW - 100 * DAY
    assert not is_overdue(Mode.MANUAL, long_ago, DAY, 2.0, NOW, since=long_ago)
    assert not is_overdue(Mode.DISABLED, long_ago, DAY, 2.0, NOW, since=long_ago)


# --- decide: examples ----------------------------------------------------------------------


def test_no_drones_no_starts() -> None:
    assert decide([], 3, NOW, 1) == Decision(starts=(), cursor=3)


def test_starts_the_first_due_drone_from_the_cursor_and_moves_the_cursor_past_it() -> None:
    drones = [drone("a"), drone("b"), drone("c")]
    decision = decide(drones, 1, NOW, 1)
    assert decision == Decision(starts=(Start("b", Operation.SCHEDULED, False),), cursor=2)


def test_the_cursor_wraps_around() -> None:
    drones = [drone("a"), drone("b"), drone("c")]
    assert decide(drones, 2, NOW, 1).cursor == 0
    assert started(decide(drones, 5, NOW, 1)) == ["c"]


def test_cursor_unchanged_when_nothing_starts() -> None:
    drones = [drone("a", last_success=NOW), drone("b", last_success=NOW)]
    assert decide(drones, 7, NOW, 1) == Decision(starts=(), cursor=7)


def test_max_concurrent_counts_the_busy_drones() -> None:
    drones = [drone("a", busy=True), drone("b"), drone("c"), drone("d")]
    assert started(decide(drones, 0, NOW, 2)) == ["b"]
    assert started(decide(drones, 0, NOW, 1)) == []


def test_several_start_up_to_max_concurrent() -> None:
    drones = [drone("a"), drone("b"), drone("c")]
    decision = decide(drones, 0, NOW, 2)
    assert started(decision) == ["a", "b"]
    assert decision.cursor == 2


def test_never_two_operations_on_one_repository_in_one_decision() -> None:
    drones = [drone("a", repository="r"), drone("b", repository="r"), drone("c")]
    assert started(decide(drones, 0, NOW, 3)) == ["a", "c"]


def test_a_busy_drone_holds_its_repository() -> None:
    drones = [drone("a", repository="r", busy=True), drone("b", repository="r")]
    assert started(decide(drones, 0, NOW, 5)) == []


def test_busy_repositories_from_outside_are_respected() -> None:
    drones = [drone("a", repository="r"), drone("b")]
    assert started(decide(drones, 0, NOW, 5, busy_repositories=frozenset({"r"}))) == ["b"]


def test_a_busy_drone_gets_nothing_new_not_even_a_request() -> None:
    drones = [drone("a", busy=True, pending=(Operation.PRUNE,))]
    assert started(decide(drones, 0, NOW, 5)) == []


def test_requests_go_ahead_of_scheduled_work() -> None:
    drones = [drone("a"), drone("b", last_success=NOW, pending=(Operation.STATS,))]
    decision = decide(drones, 0, NOW, 1)
    assert decision.starts == (Start("b", Operation.STATS, True),)
    assert decision.cursor == 0


def test_the_oldest_request_of_a_drone_starts_and_only_one() -> None:
    drones = [drone("a", pending=(Operation.PRUNE, Operation.CREATE))]
    assert decide(drones, 0, NOW, 5).starts == (Start("a", Operation.PRUNE, True),)


def test_requests_run_in_manual_mode_and_while_backing_off() -> None:
    drones = [
        drone("a", mode=Mode.MANUAL, pending=(Operation.CREATE,)),
        drone("b", backoff_until=NOW + DAY, pending=(Operation.CHECK,)),
    ]
    assert decide(drones, 0, NOW, 5).starts == (
        Start("a", Operation.CREATE, True),
        Start("b", Operation.CHECK, True),
    )


def test_a_disabled_drone_never_starts_anything() -> None:
    drones = [drone("a", mode=Mode.DISABLED, pending=(Operation.CREATE,))]
    assert decide(drones, 0, NOW, 5).starts == ()


def test_a_drone_backing_off_is_not_scheduled() -> None:
    drones = [drone("a", backoff_until=NOW + timedelta(minutes=1)), drone("b")]
    assert started(decide(drones, 0, NOW, 5)) == ["b"]


def test_paused_starts_only_requests() -> None:
    drones = [drone("a"), drone("b", pending=(Operation.CREATE,))]
    decision = decide(drones, 0, NOW, 5, paused=True)
    assert decision.starts == (Start("b", Operation.CREATE, True),)
    assert decision.cursor == 0


def test_a_drone_with_a_started_request_gets_no_scheduled_run_too() -> None:
    drones = [drone("a", pending=(Operation.STATS,))]
    assert decide(drones, 0, NOW, 5).starts == (Start("a", Operation.STATS, True),)


def test_cursor_goes_past_the_furthest_started_drone() -> None:
    drones = [drone("a"), drone("b", last_success=NOW), drone("c", pending=(Operation.PRUNE,))]
    decision = decide(drones, 0, NOW, 2)
    assert started(decision) == ["c", "a"]
    assert decision.cursor == 0  # just after c, wrapped


# --- decide: properties --------------------------------------------------------------------

NAMES = [f"d{i}" for i in range(8)]


@st.composite
def drone_sets(draw: st.DrawFn, max_frequency_minutes: int = 3000) -> list[WorkView]:
    count = draw(st.integers(min_value=1, max_value=len(NAMES)))
    repositories = draw(st.integers(min_value=1, max_value=count))
    views = []
    for name in NAMES[:count]:
        minutes = draw(st.integers(min_value=1, max_value=max_frequency_minutes))
        frequency = timedelta(minutes=minutes)
        age = draw(st.none() | st.integers(min_value=0, max_value=6000))
        backoff = draw(st.none() | st.integers(min_value=-100, max_value=100))
        views.append(
            drone(
                name,
                repository=f"r{draw(st.integers(min_value=0, max_value=repositories - 1))}",
                mode=draw(st.sampled_from(list(Mode))),
                frequency=frequency,
                busy=draw(st.booleans()),
                last_success=None if age is None else NOW - timedelta(minutes=age),
                backoff_until=None if backoff is None else NOW + timedelta(minutes=backoff),
                pending=tuple(draw(st.lists(st.sampled_from(list(Operation)), max_size=2))),
            )
        )
    return views


decide_arguments = {
    "drones": drone_sets(),
    "cursor": st.integers(min_value=0, max_value=50),
    "max_concurrent": st.integers(min_value=1, max_value=4),
    "outside": st.frozensets(st.sampled_from(["r0", "r1", "elsewhere"]), max_size=2),
    "paused": st.booleans(),
}


@settings(max_examples=150, deadline=None)
@given(**decide_arguments)
def test_decisions_respect_every_limit(
    drones: list[WorkView],
    cursor: int,
    max_concurrent: int,
    outside: frozenset[str],
    paused: bool,
) -> None:
    decision = decide(drones, cursor, NOW, max_concurrent, outside, paused)
    by_name = {d.name: d for d in drones}
    starting = [by_name[start.name] for start in decision.starts]
    busy = [d for d in drones if d.busy]

    assert len(busy) + len(starting) <= max(max_concurrent, len(busy))
    held = [key for d in busy for key in d.repositories] + [
        key for d in starting for key in d.repositories
    ]
    assert all(not d.repositories & set(outside) for d in starting)
    assert len(set().union(*(d.repositories for d in starting))) == len(starting)
    assert not set().union(*(d.repositories for d in starting)) & set().union(
        *(d.repositories for d in busy)
    )
    assert len(held) >= len(starting)
    assert len({d.name for d in starting}) == len(starting)
    assert not any(d.busy or d.mode is Mode.DISABLED for d in starting)
    assert 0 <= decision.cursor < len(drones) or (not starting and decision.cursor == cursor)

    for start, view in zip(decision.starts, starting, strict=True):
        if start.requested:
            assert start.operation == view.pending[0]
        else:
            assert not paused
            assert start.operation is Operation.SCHEDULED
            assert is_due(view, NOW)

    # Requests first: every start after the first scheduled one is scheduled too, and a
    # drone with a request that could have started was never passed over for scheduled work.
    kinds = [start.requested for start in decision.starts]
    assert kinds == sorted(kinds, reverse=True)
    if any(not start.requested for start in decision.starts):
        waiting = [
            d
            for d in drones
            if d.pending
            and d.mode is not Mode.DISABLED
            and not d.busy
            and d.name not in {s.name for s in decision.starts}
        ]
        taken = set().union(*(d.repositories for d in busy)) | set(outside)
        taken |= set().union(
            *(by_name[s.name].repositories for s in decision.starts if s.requested)
        )
        assert all(d.repositories & taken for d in waiting)


@settings(max_examples=150, deadline=None)
@given(
    drones=drone_sets(max_frequency_minutes=3),
    cursor=st.integers(min_value=0, max_value=50),
    max_concurrent=st.integers(min_value=1, max_value=4),
    step_minutes=st.integers(min_value=0, max_value=3),
)
def test_no_due_drone_starves(
    drones: list[WorkView], cursor: int, max_concurrent: int, step_minutes: int
) -> None:
    # Operations finish at once; a successful create makes a drone not due for a frequency.
    views = [replace(d, busy=False, pending=(), backoff_until=None) for d in drones]
    now = NOW
    due_at_start = {d.name for d in views if is_due(d, now)}
    served: set[str] = set()
    for _ in range(len(views)):
        decision = decide(views, cursor, now, max_concurrent)
        cursor = decision.cursor
        names = {start.name for start in decision.starts}
        served |= names
        views = [replace(d, last_success=now) if d.name in names else d for d in views]
        now += timedelta(minutes=step_minutes)
    assert due_at_start <= served


def test_a_drone_losing_its_repository_to_a_neighbour_is_first_next_time() -> None:
    minute = timedelta(minutes=1)
    views = [
        drone("a", repository="r", frequency=minute),
        drone("b", repository="r", frequency=minute),
        drone("c", frequency=minute),
    ]
    first = decide(views, 0, NOW, 2)
    assert started(first) == ["a", "c"]
    assert first.cursor == 1  # b was passed over only because a took its repository
    views = [replace(v, last_success=NOW) if v.name in {"a", "c"} else v for v in views]
    assert started(decide(views, first.cursor, NOW + minute, 2)) == ["b", "c"]


# --- offsite copies ---------------------------------------------------------------------------


def writer(name: str, last_backup: datetime | None, mode: Mode = Mode.SCHEDULED) -> WriterView:
    return WriterView(name=name, mode=mode, last_backup=last_backup, overdue=False)


def test_after_backups_waits_for_writers_that_have_not_backed_up_since_the_copy() -> None:
    last_copy = NOW - DAY
    writers = [
        writer("fresh", NOW - timedelta(hours=1)),
        writer("stale", NOW - 2 * DAY),
        writer("never", None),
        writer("manual", None, Mode.MANUAL),
        WriterView("overdue", Mode.SCHEDULED, NOW - 9 * DAY, overdue=True),
    ]
    assert writers_to_wait_for(last_copy, writers) == ("stale", "never")
    assert writers_to_wait_for(None, writers) == ("never",)  # the first copy: each backed up once


def test_a_view_waiting_for_writers_is_not_due_but_a_request_still_runs() -> None:
    copy = replace(
        drone("cloud", last_success=NOW - 2 * DAY),
        repositories=frozenset(),
        due_operation=CopyOperation.OFFSITE,
        waiting_for=("laptop",),
    )
    assert not is_due(copy, NOW)
    assert decide([copy], 0, NOW, 1).starts == ()
    requested = replace(copy, pending=(CopyOperation.OFFSITE,))
    (start,) = decide([requested], 0, NOW, 1).starts
    assert start.operation is CopyOperation.OFFSITE
    assert start.requested


def test_a_due_view_starts_its_own_operation() -> None:
    copy = replace(drone("cloud"), repositories=frozenset(), due_operation=CopyOperation.OFFSITE)
    (start,) = decide([copy], 0, NOW, 1).starts
    assert (start.name, start.operation, start.requested) == ("cloud", CopyOperation.OFFSITE, False)


def test_a_drone_waits_while_an_offsite_copy_claims_its_repository() -> None:
    views = [drone("a", repository="nas:/a"), drone("b", repository="nas:/b")]
    assert started(decide(views, 0, NOW, 2, busy_repositories=frozenset({"nas:/a"}))) == ["b"]


# --- other schedules (a drone's check and drill) -----------------------------------------------


def test_other_schedules_run_after_the_main_work_each_on_its_own_frequency() -> None:
    week = timedelta(days=7)
    view = replace(
        drone("a", last_success=NOW - 2 * DAY),
        others=(
            Schedule(Operation.CHECK, 4 * week, NOW - week),
            Schedule(Operation.STATS, week, None),
        ),
    )
    assert due_operation(view, NOW) is Operation.SCHEDULED  # the backup first
    backed_up = replace(view, last_success=NOW)
    assert due_operation(backed_up, NOW) is Operation.STATS  # never run: due
    (start,) = decide([backed_up], 0, NOW, 1).starts
    assert (start.operation, start.requested) == (Operation.STATS, False)
    done = replace(backed_up, others=(view.others[0], Schedule(Operation.STATS, week, NOW)))
    assert due_operation(done, NOW) is None
    assert due_operation(replace(done, frequency=5 * week), NOW + 3 * week) is Operation.CHECK


def test_other_schedules_wait_like_the_main_work() -> None:
    view = replace(drone("a", last_success=NOW), others=(Schedule(Operation.CHECK, DAY, None),))
    assert due_operation(replace(view, busy=True), NOW) is None
    assert due_operation(replace(view, mode=Mode.MANUAL), NOW) is None
    assert due_operation(replace(view, backoff_until=NOW + DAY), NOW) is None
    assert due_operation(view, NOW) is Operation.CHECK
