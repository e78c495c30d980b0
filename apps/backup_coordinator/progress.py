"""Progress of a running create: percent and ETA estimated, updates throttled.

borg cannot know how much is left, so the estimate compares the bytes read so far with the
original size of the drone's previous archive (the best guess of this one's size).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .entities import ProgressSnapshot
from .protocol import Progress

PERCENT_CAP = 99.0  # never claim 100 % before borg says it is finished


@dataclass
class ProgressTracker:
    drone: str
    operation: str
    started: float  # monotonic seconds
    expected_size: int | None  # original size of the previous archive, if any
    interval: float  # at most one published update per interval
    _last_sent: float | None = field(default=None, init=False)
    _latest: Progress | None = field(default=None, init=False)

    def update(self, progress: Progress, now: float) -> ProgressSnapshot | None:
        """The snapshot to publish now, or None while throttled."""
        self._latest = progress
        if self._last_sent is not None and now - self._last_sent < self.interval:
            return None
        self._last_sent = now
        return self._snapshot(progress, now, final=False)

    def final(
        self, now: float, finished: bool = True, archive: Mapping[str, Any] | None = None
    ) -> ProgressSnapshot | None:
        """The closing update (always sent), or None when there never was progress.

        Only a ``finished`` operation reaches 100 %; one that failed or was stopped keeps
        its last estimate. The finished archive's own totals, when given, replace borg's last
        progress line (which lags behind the end).
        """
        if self._latest is None:
            return None
        latest = self._latest
        if archive is not None:
            latest = replace(
                latest,
                nfiles=_count(archive, "nfiles", latest.nfiles),
                original_size=_count(archive, "original_size", latest.original_size),
                compressed_size=_count(archive, "compressed_size", latest.compressed_size),
                deduplicated_size=_count(archive, "deduplicated_size", latest.deduplicated_size),
            )
        return self._snapshot(latest, now, final=True, finished=finished)

    def _snapshot(
        self, progress: Progress, now: float, final: bool, finished: bool = False
    ) -> ProgressSnapshot:
        elapsed = max(now - self.started, 1e-6)
        speed = progress.original_size / elapsed if progress.original_size else None
        return ProgressSnapshot(
            drone=self.drone,
            operation=self.operation,
            nfiles=progress.nfiles,
            original_size=progress.original_size,
            compressed_size=progress.compressed_size,
            deduplicated_size=progress.deduplicated_size,
            percent=100.0
            if finished
            else estimate_percent(progress.original_size, self.expected_size),
            speed=speed,
            eta_seconds=0.0
            if finished
            else estimate_eta(progress.original_size, self.expected_size, speed),
            final=final,
        )


def estimate_percent(done: int, expected: int | None) -> float | None:
    if not expected:
        return None
    return min(PERCENT_CAP, 100.0 * done / expected)


def estimate_eta(done: int, expected: int | None, speed: float | None) -> float | None:
    if not expected or not speed:
        return None
    return max(0.0, (expected - done) / speed)


def _count(values: Mapping[str, Any], key: str, fallback: int) -> int:
    value = values.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback
