"""The progress estimate: by bytes, then by files, else unknown; never 100 % before the end."""

from __future__ import annotations

import pytest

from backup_coordinator.offsite import CopyProgressRelay
from backup_coordinator.progress import (
    PERCENT_CAP,
    Estimate,
    ProgressTracker,
    capped_percent,
    eta_seconds,
    fraction_done,
)
from backup_coordinator.protocol import CopyProgress, Progress

PREVIOUS = Estimate(size=1000, files=10)


def line(size: int, files: int, path: str = "home/zoe/a") -> Progress:
    return Progress("create", 0.0, files, size, size // 2, size // 4, path)


def tracker(expected: Estimate = PREVIOUS) -> ProgressTracker:
    return ProgressTracker("nas", "create", started=100.0, expected=expected, interval=0)


def test_the_byte_fraction_while_the_run_is_short_of_the_previous_size() -> None:
    assert fraction_done(250, 9, PREVIOUS) == 0.25
    assert fraction_done(999, 10, PREVIOUS) == 0.999


def test_the_file_fraction_once_the_bytes_reached_their_estimate() -> None:
    assert fraction_done(1500, 4, PREVIOUS) == 0.4
    assert fraction_done(1000, 4, PREVIOUS) == 0.4


def test_unknown_once_both_estimates_are_reached_or_without_any() -> None:
    assert fraction_done(1500, 11, PREVIOUS) is None
    # Many times the bytes, as many files as last time: still going, so not 99 %.
    assert fraction_done(200_000, 10, PREVIOUS) is None
    assert fraction_done(10, 1, Estimate()) is None
    assert fraction_done(10, 1, Estimate(files=4)) == 0.25  # a first estimate by files alone


def test_the_estimate_is_read_from_the_previous_archive() -> None:
    assert Estimate.of_archive({"original_size": 1000, "nfiles": 10}) == PREVIOUS
    assert Estimate.of_archive({"original_size": 0, "nfiles": True}) == Estimate()
    assert Estimate.of_archive(None) == Estimate()


def test_a_run_that_grew_shows_the_file_fraction_not_a_stuck_99() -> None:
    snapshot = tracker().update(line(1200, 5), now=110.0)
    assert snapshot is not None
    assert snapshot.percent == 50.0
    assert snapshot.eta_seconds == pytest.approx(10.0)  # as long again as so far


def test_a_run_beyond_both_estimates_is_unknown_with_no_eta() -> None:
    snapshot = tracker().update(line(1200, 12), now=110.0)
    assert snapshot is not None
    assert (snapshot.percent, snapshot.eta_seconds) == (None, None)
    assert snapshot.speed == pytest.approx(120.0)


def test_the_expected_totals_grow_to_what_has_been_seen() -> None:
    snapshot = tracker().update(line(1200, 4), now=110.0)
    assert snapshot is not None
    assert (snapshot.expected_size, snapshot.expected_files) == (1200, 10)
    first = tracker(Estimate()).update(line(1200, 4), now=110.0)
    assert first is not None
    assert (first.expected_size, first.expected_files) == (None, None)


def test_the_percent_stays_below_100_until_finished() -> None:
    assert capped_percent(1.0) == PERCENT_CAP
    assert capped_percent(None) is None
    run = tracker()
    running = run.update(line(995, 10), now=110.0)
    assert running is not None
    assert running.percent == PERCENT_CAP
    finished = run.final(120.0, True, {"original_size": 1001, "nfiles": 10})
    assert finished is not None
    assert (finished.percent, finished.eta_seconds, finished.final) == (100.0, 0.0, True)
    assert finished.original_size == 1001


def test_a_run_that_failed_keeps_its_last_estimate() -> None:
    run = tracker()
    run.update(line(500, 5), now=110.0)
    stopped = run.final(110.0, finished=False)
    assert stopped is not None
    assert (stopped.percent, stopped.final) == (50.0, True)


def test_a_new_run_starts_at_zero_with_an_estimate_and_unknown_without() -> None:
    start = tracker().start()
    assert (start.percent, start.eta_seconds, start.original_size, start.path) == (0.0, None, 0, "")
    assert tracker(Estimate()).start().percent is None


def test_no_eta_before_anything_is_done() -> None:
    assert eta_seconds(0.0, 10.0) is None
    assert eta_seconds(None, 10.0) is None
    assert eta_seconds(0.25, 10.0) == pytest.approx(30.0)


def test_the_current_file_is_passed_on() -> None:
    snapshot = tracker().update(line(100, 1, "home/zoe/thesis.odt"), now=101.0)
    assert snapshot is not None
    assert snapshot.path == "home/zoe/thesis.odt"


def copy_line(sent: int, total: int | None) -> CopyProgress:
    return CopyProgress(1.0, "/srv/nas", "copy", sent, total, 50.0, 7.0, 1, 3)


def test_a_copy_starts_unknown_and_beyond_its_total_is_unknown_not_99() -> None:
    relay = CopyProgressRelay("cloud", 0, "/srv/nas")
    start = relay.start()
    assert (start.percent, start.repository, start.original_size) == (None, "/srv/nas", 0)
    half = relay.update(copy_line(500, 1000), 1.0)
    assert half is not None
    assert (half.percent, half.eta_seconds, half.expected_size) == (50.0, 7.0, 1000)
    beyond = relay.update(copy_line(1500, 1000), 2.0)
    assert beyond is not None
    assert (beyond.percent, beyond.eta_seconds) == (None, None)
    finished = relay.final(True)
    assert finished is not None
    assert finished.percent == 100.0
