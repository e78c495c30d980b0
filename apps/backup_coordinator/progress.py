"""Progress of a running create: percent and ETA estimated, updates throttled.

borg cannot know how much is left, so the estimate compares what was read so far with the
drone's previous archive (the best guess of this one): its original size while this run has
read less than that, else its file count while this run has read fewer files, else nothing
("unknown", never a made-up 99 %). An estimate the run has reached while it goes on says
nothing more: a run that grew past the previous archive's bytes would otherwise sit at 99 %
the moment it has read as many files. The expected totals shown grow to what has been seen,
so they never claim less than what was already read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .entities import ProgressSnapshot
from .protocol import Progress

PERCENT_CAP = 99.0  # never claim 100 % before the operation says it is finished


@dataclass(frozen=True)
class Estimate:
    """What a create is expected to read: the previous archive's totals (None: not known)."""

    size: int | None = None
    files: int | None = None

    @classmethod
    def of_archive(cls, archive: Mapping[str, Any] | None) -> Estimate:
        archive = archive or {}
        return cls(_positive(archive.get("original_size")), _positive(archive.get("nfiles")))

    def grown(self, size: int, files: int) -> Estimate:
        """The totals grown to what has been seen (a total not known stays unknown)."""
        return Estimate(
            None if self.size is None else max(self.size, size),
            None if self.files is None else max(self.files, files),
        )


def fraction_done(size: int, files: int, expected: Estimate) -> float | None:
    """How far a run that read ``size`` bytes in ``files`` files is: by bytes while it is short
    of the expected size, else by files while it is short of the expected count, else
    unknown."""
    if expected.size and size < expected.size:
        return size / expected.size
    if expected.files and files < expected.files:
        return files / expected.files
    return None


def capped_percent(fraction: float | None) -> float | None:
    """The percent of a running operation: below 100 until it has finished."""
    return None if fraction is None else min(PERCENT_CAP, 100.0 * fraction)


def eta_seconds(fraction: float | None, elapsed: float) -> float | None:
    """Time left if the rest goes as fast as what is done; unknown before anything is done."""
    if not fraction:
        return None
    return max(0.0, elapsed * (1.0 - fraction) / fraction)


@dataclass
class ProgressTracker:
    drone: str
    operation: str
    started: float  # monotonic seconds
    expected: Estimate  # the previous archive's totals
    interval: float  # at most one published update per interval
    _last_sent: float | None = field(default=None, init=False)
    _latest: Progress | None = field(default=None, init=False)

    def start(self) -> ProgressSnapshot:
        """What the run shows before borg's first line: nothing read yet."""
        empty = Progress(self.operation, 0.0, 0, 0, 0, 0)
        return self._snapshot(empty, self.started, final=False)

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
        fraction = fraction_done(progress.original_size, progress.nfiles, self.expected)
        grown = self.expected.grown(progress.original_size, progress.nfiles)
        return ProgressSnapshot(
            drone=self.drone,
            operation=self.operation,
            nfiles=progress.nfiles,
            original_size=progress.original_size,
            compressed_size=progress.compressed_size,
            deduplicated_size=progress.deduplicated_size,
            percent=100.0 if finished else capped_percent(fraction),
            speed=speed,
            eta_seconds=0.0 if finished else eta_seconds(fraction, elapsed),
            final=final,
            path=progress.path,
            expected_size=grown.size,
            expected_files=grown.files,
        )


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _count(values: Mapping[str, Any], key: str, fallback: int) -> int:
    value = values.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback
