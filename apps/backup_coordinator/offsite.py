"""Offsite targets at runtime: when a copy is due, how it runs, what it records.

A copy runs as one asyncio task. It takes the target's repositories one at a time: it claims
the repository (no backup, prune or check starts on it from then on), waits for the work
already running on it, and runs the agent's ``offsite`` operation for that repository alone
(one session each), then releases it. So backups of the other repositories go on while one is
copied, and a drone whose repository is being copied shows ``offsite`` and waits.

The coordinator owns the clock, the store and Home Assistant; this module asks it to save and
publish through the small ``CopyHost`` interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from traceback import format_exc
from typing import Any, Protocol

from . import scheduler
from .entities import ProgressSnapshot, Publication
from .jobs import build_copy_job
from .leases import RepositoryLeases
from .model import (
    CopyOperation,
    CopySettings,
    CopyState,
    Mode,
    SettingError,
    parse_frequency,
    parse_mode,
)
from .offsite_config import OffsiteRepository, OffsiteTargetConfig
from .offsite_entities import TargetSnapshot, target_sensors
from .ports import EVENT_FINISHED, EVENT_STARTED, AgentRunner, HomeAssistantPort
from .progress import capped_percent
from .protocol import (
    COPY_OPERATION,
    AgentEvent,
    CopyProgress,
    FailureKind,
    OperationFailed,
)
from .store import CopyRecord, RunningOperation, clear_failures, count_failure


class CopyHost(Protocol):
    """What a copy needs from the coordinator."""

    port: HomeAssistantPort
    runner: AgentRunner
    leases: RepositoryLeases

    def now(self) -> datetime: ...
    def elapsed(self) -> float: ...
    def repository_busy(self, repository_key: str) -> bool: ...
    async def save(self) -> None: ...
    async def publish(self, publication: Publication) -> None: ...
    async def relay_progress(self, snapshot: ProgressSnapshot | None) -> None: ...
    async def show_progress(self, snapshot: ProgressSnapshot) -> None: ...
    async def end_progress(self, name: str) -> None: ...
    async def repository_changed(self, repository_key: str) -> None: ...
    async def update_problem(self, unit: Target) -> bool: ...
    @property
    def max_runtime_minutes(self) -> float: ...
    @property
    def progress_interval(self) -> float: ...
    @property
    def overdue_factor(self) -> float: ...
    @property
    def entity_prefix(self) -> str: ...


@dataclass
class Target:
    """One offsite target at runtime: its configuration, HA-steered settings and record."""

    config: OffsiteTargetConfig
    settings: CopySettings
    record: CopyRecord
    state: CopyState = CopyState.IDLE
    repository: str | None = None  # the one being copied, or waited for
    task: asyncio.Task[None] | None = None
    setting_problems: dict[str, str] = field(default_factory=dict)
    overdue: bool = False
    waiting_for: tuple[str, ...] = ()  # after_backups: drones that have not backed up yet
    state_file_problem: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def problems(self) -> list[str]:
        reasons = list(self.setting_problems.values())
        if self.record.consecutive_failures:
            reasons.append(
                f"{self.record.consecutive_failures} failed offsite copies in a row:"
                f" {self.record.last_error}"
            )
        if self.overdue:
            since = self.record.last_copy
            reasons.append(
                "overdue: no successful offsite copy since "
                + (since.isoformat(timespec="seconds") if since else "the coordinator started")
            )
        if self.state_file_problem:
            reasons.append(self.state_file_problem)
        return reasons

    def view(self, now: datetime) -> scheduler.WorkView:
        return scheduler.WorkView(
            name=self.name,
            repositories=frozenset(),  # each one is claimed while it is copied (leases)
            mode=self.settings.mode,
            frequency=timedelta(minutes=self.settings.frequency_minutes),
            busy=self.busy,
            last_success=self.record.last_copy,
            backoff_until=self.record.backoff_until,
            pending=(CopyOperation.OFFSITE,) if self.record.requested else (),
            due_operation=CopyOperation.OFFSITE,
            waiting_for=self.waiting_for,
        )

    def snapshot(self, now: datetime) -> TargetSnapshot:
        return TargetSnapshot(
            name=self.name,
            state=self.state,
            repository=self.repository,
            last_copy=self.record.last_copy,
            last_copy_data=self.record.last_copy_data,
            next_copy=scheduler.next_due(self.view(now), now),
            waiting_for=self.waiting_for,
            problems=self.problems(),
            consecutive_failures=self.record.consecutive_failures,
            last_error=self.record.last_error,
            last_error_kind=self.record.last_error_kind,
            last_error_hint=self.record.last_error_hint,
        )


# --- settings ---------------------------------------------------------------------------------


def updated_settings(settings: CopySettings, setting: str, raw: object) -> CopySettings:
    if setting == "mode":
        return replace(settings, mode=parse_mode(raw))
    if setting == "frequency":
        return replace(settings, frequency_minutes=parse_frequency(raw))
    raise SettingError(f"unknown setting {setting!r}")


def resting_state(record: CopyRecord) -> CopyState:
    if not record.consecutive_failures:
        return CopyState.IDLE
    if record.last_error_kind == FailureKind.UNREACHABLE.value:
        return CopyState.UNREACHABLE
    return CopyState.ERROR


def recover_interrupted(record: CopyRecord) -> bool:
    """A copy was running when the process stopped: it runs again (from the first repository:
    rclone and rsync only transfer what is missing). Returns whether there was one."""
    running, record.running = record.running, None
    if running is None:
        return False
    if running.requested:
        record.requested = True
    if not record.consecutive_failures:
        record.last_error = (
            "the offsite copy was interrupted (the coordinator stopped while it ran)"
        )
        record.last_error_kind = FailureKind.INTERRUPTED.value
        record.last_error_hint = None
    return True


# --- progress ---------------------------------------------------------------------------------


@dataclass
class CopyProgressRelay:
    """Turns the agent's copy progress into the coordinator's progress snapshots, throttled."""

    target: str
    interval: float
    repository: str
    _last_sent: float | None = None
    _latest: CopyProgress | None = None

    def start(self) -> ProgressSnapshot:
        """Before the tool's first report: nothing sent, how much there is not known yet."""
        nothing = CopyProgress(0.0, self.repository, "copy", 0, None, None, None, 0, None)
        return self._snapshot(nothing, final=False, finished=False)

    def update(self, progress: CopyProgress, now: float) -> ProgressSnapshot | None:
        self._latest = progress
        if self._last_sent is not None and now - self._last_sent < self.interval:
            return None
        self._last_sent = now
        return self._snapshot(progress, final=False, finished=False)

    def final(self, finished: bool) -> ProgressSnapshot | None:
        if self._latest is None:
            return None
        return self._snapshot(self._latest, final=True, finished=finished)

    def _snapshot(self, progress: CopyProgress, final: bool, finished: bool) -> ProgressSnapshot:
        # The tool's total, while the copy has not outgrown it; else unknown, not a false 99 %.
        fraction = (
            progress.bytes / progress.total_bytes
            if progress.total_bytes and progress.bytes <= progress.total_bytes
            else None
        )
        percent = 100.0 if finished else capped_percent(fraction)
        return ProgressSnapshot(
            drone=self.target,
            operation=COPY_OPERATION,
            nfiles=progress.files,
            original_size=progress.bytes,
            compressed_size=progress.bytes,
            deduplicated_size=progress.bytes,
            percent=percent,
            speed=progress.speed,
            eta_seconds=0.0 if finished else None if percent is None else progress.eta,
            final=final,
            repository=progress.repository,
            phase=progress.phase,
            expected_size=progress.total_bytes,
            expected_files=progress.total_files,
        )


# --- running one copy -------------------------------------------------------------------------


async def run_copy(host: CopyHost, target: Target, requested: bool) -> None:
    """The task of one copy: every repository in turn, then the outcome recorded."""
    started = host.elapsed()
    copied: list[dict[str, Any]] = []
    on_request = " on request" if requested else ""
    host.port.log(f"{target.name}: offsite copy started{on_request}")  # its one start line
    try:
        target.record.last_attempt = host.now()
        await host.save()
        await host.port.fire_event(
            EVENT_STARTED,
            {"drone": target.name, "operation": COPY_OPERATION, "requested": requested},
        )
        for repository in target.config.repositories:
            copied.append(await _copy_one(host, target, repository))
    except OperationFailed as failure:
        await _record_failure(host, target, failure, host.elapsed() - started, copied)
    except Exception as error:  # a bug must not leave the target stuck in "copying"
        crash = OperationFailed(FailureKind.AGENT, f"internal error: {error!r}")
        await _record_failure(
            host, target, crash, host.elapsed() - started, copied, traceback=format_exc()
        )
    else:
        await _record_success(host, target, copied, host.elapsed() - started)


async def _copy_one(
    host: CopyHost, target: Target, repository: OffsiteRepository
) -> dict[str, Any]:
    """Hold one repository, copy it, release it; the agent's data for it."""
    key = target.config.repository_key(repository)
    target.state, target.repository = CopyState.WAITING, repository.path
    await publish_target(host, target)
    await host.leases.hold(key, target.name, host.repository_busy)
    relay = CopyProgressRelay(target.name, host.progress_interval, repository.path)
    try:
        target.state = CopyState.COPYING
        await publish_target(host, target)
        await host.show_progress(relay.start())  # never the last repository's 100 %
        await host.repository_changed(key)

        async def on_event(event: AgentEvent) -> None:
            if isinstance(event, CopyProgress):
                await host.relay_progress(relay.update(event, host.elapsed()))

        job = build_copy_job(target.config, repository)
        try:
            async with asyncio.timeout(host.max_runtime_minutes * 60):
                result = await host.runner(target.config.ssh, COPY_OPERATION, job, on_event)
        except TimeoutError:
            raise OperationFailed(
                FailureKind.TIMEOUT,
                f"the copy of {repository.path} ran longer than"
                f" {host.max_runtime_minutes:g} min and was stopped",
                "raise max_runtime_minutes, or limit the copy with --bwlimit less",
            ) from None
        await host.relay_progress(relay.final(True))
        relay = CopyProgressRelay(target.name, host.progress_interval, repository.path)
    finally:
        await host.relay_progress(relay.final(False))  # nothing when the copy finished
        await host.end_progress(target.name)
        host.leases.release(key, target.name)
        await host.repository_changed(key)
    if target.record.running is not None:
        target.record.running.done.append(repository.path)
    await host.save()
    return _repository_data(result.data, repository)


def _repository_data(data: Mapping[str, Any], repository: OffsiteRepository) -> dict[str, Any]:
    """The agent's entry for the repository (it copied just this one)."""
    entries = data.get("repositories")
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        return dict(entries[0])
    return {"repository": repository.path}


def copy_totals(copied: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def total(key: str) -> int:
        return sum(
            value
            for entry in copied
            if isinstance(value := entry.get(key), int) and not isinstance(value, bool)
        )

    return {
        "repositories": [dict(entry) for entry in copied],
        "bytes": total("bytes"),
        "files": total("files"),
        "verified": all(entry.get("verified") is True for entry in copied),
    }


def copy_summary(data: Mapping[str, Any]) -> str:
    repositories = data.get("repositories") or []
    bytes_copied = data.get("bytes")
    size = f"{bytes_copied / 1024 / 1024:.1f} MiB" if isinstance(bytes_copied, int) else "?"
    verified = "verified" if data.get("verified") else "NOT verified"
    return f"{len(repositories)} repositories, {size} transferred, {verified}"


async def _record_success(
    host: CopyHost, target: Target, copied: list[dict[str, Any]], duration: float
) -> None:
    record = target.record
    data = copy_totals(copied)
    record.last_copy = host.now()
    record.last_copy_data = data
    clear_failures(record)
    target.overdue = False
    target.state, target.repository = CopyState.IDLE, None
    host.port.log(f"{target.name}: offsite copy finished in {duration:.1f} s: {copy_summary(data)}")
    await host.port.fire_event(
        EVENT_FINISHED,
        {
            "drone": target.name,
            "operation": COPY_OPERATION,
            "ok": True,
            "rc": 0,
            "duration": round(duration, 3),
            "warnings": 0,
            "results": {COPY_OPERATION: data},
        },
    )


async def _record_failure(
    host: CopyHost,
    target: Target,
    failure: OperationFailed,
    duration: float,
    copied: list[dict[str, Any]],
    traceback: str = "",
) -> None:
    """The copy's end line says why it failed and when it runs next (with a crash's
    traceback)."""
    record = target.record
    frequency = timedelta(minutes=target.settings.frequency_minutes)
    retry_at = host.now() + scheduler.backoff_delay(record.consecutive_failures + 1, frequency)
    count_failure(record, failure, retry_at)
    unreachable = failure.kind is FailureKind.UNREACHABLE
    target.state = CopyState.UNREACHABLE if unreachable else CopyState.ERROR
    failed_at, target.repository = target.repository, None
    host.port.log(
        f"{target.name}: offsite copy of {failed_at} failed after {duration:.1f} s"
        f" ({failure.kind.value}): {failure.message}"
        + (f" - {failure.hint}" if failure.hint else "")
        + scheduler.next_run_note(target.view(host.now()), host.now())
        + (f"\n{traceback}" if traceback else ""),
        "ERROR" if traceback else "WARNING",
    )
    await host.port.fire_event(
        EVENT_FINISHED,
        {
            "drone": target.name,
            "operation": COPY_OPERATION,
            "ok": False,
            "rc": failure.rc,
            "duration": round(duration, 3),
            "error": {
                "kind": failure.kind.value,
                "message": failure.message,
                "hint": failure.hint,
                "step": COPY_OPERATION,
                "repository": failed_at or "",
            },
            "results": {COPY_OPERATION: copy_totals(copied)},
        },
    )


async def publish_target(host: CopyHost, target: Target) -> None:
    if await host.update_problem(target):
        await host.save()
    for publication in target_sensors(host.entity_prefix, target.snapshot(host.now())):
        await host.publish(publication)


def start_running(target: Target, requested: bool, now: datetime) -> None:
    """Record that a copy starts, before its task runs: a restart then knows it was running."""
    target.record.requested = target.record.requested and not requested
    target.record.running = RunningOperation(COPY_OPERATION, now, requested, [])


def check_overdue(target: Target, now: datetime, overdue_factor: float) -> None:
    target.overdue = scheduler.is_overdue(
        target.settings.mode,
        target.record.last_copy,
        timedelta(minutes=target.settings.frequency_minutes),
        overdue_factor,
        now,
        target.record.first_seen or now,
    )


def check_waiting(target: Target, writers: Sequence[scheduler.WriterView]) -> None:
    """after_backups: the drones the next copy waits for."""
    target.waiting_for = (
        scheduler.writers_to_wait_for(target.record.last_copy, writers)
        if target.config.after_backups and target.settings.mode is Mode.SCHEDULED
        else ()
    )
