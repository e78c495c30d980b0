"""The coordinator's runtime: drones' state machines, operations, failure detection.

It owns no clock and no I/O of its own beyond what it is given: the agent runner (SSH
transport), the store, and the Home Assistant port. A tick asks the scheduler what to start;
every started operation runs as one asyncio task that drives the agent, relays progress and
records the outcome. Everything of substance is persisted before the next await that could
lose it, so a restart of AppDaemon or Home Assistant loses nothing and leaves nothing stuck.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from traceback import format_exc
from typing import Any

from . import entities, offsite, operations, scheduler, verification
from .config import Config, DroneConfig, EntityBackend
from .entities import DroneSnapshot, ProgressSnapshot, Publication
from .jobs import agent_operation, build_job
from .leases import RepositoryLeases
from .model import (
    GLOBAL_MODES,
    KEEP_COUNT_NAMES,
    AnyOperation,
    CopyOperation,
    CopyState,
    DroneSettings,
    DroneState,
    Mode,
    Operation,
    SettingError,
    parse_frequency,
    parse_keep_count,
    parse_keep_within,
    parse_mode,
)
from .offsite import Target
from .offsite_config import OffsiteTargetConfig
from .ports import (
    EVENT_FINISHED,
    EVENT_PROBLEM,
    EVENT_PROGRESS,
    EVENT_REQUEST,
    EVENT_RESTORE,
    EVENT_STARTED,
    AgentRunner,
    HomeAssistantPort,
)
from .progress import Estimate, ProgressTracker
from .protocol import (
    AgentEvent,
    FailureKind,
    Hello,
    OperationFailed,
    Outcome,
    Progress,
    StepResult,
)
from .redaction import Redactor
from .store import (
    Copies,
    CopyRecord,
    DroneRecord,
    RunningOperation,
    Store,
    clear_failures,
    count_failure,
)

GLOBAL_MODE_SETTING = "global_mode"
OUTCOME_ALREADY_RUNNING = "already running"

# Offsite copies run one at a time: they share the uplink of the host holding the repositories.
MAX_CONCURRENT_COPIES = 1

# A recorded time later than now by more than this means the clock jumped (or jumps back).
FUTURE_TOLERANCE = timedelta(minutes=5)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Drone:
    """One drone at runtime: its configuration, HA-steered settings and persisted record."""

    config: DroneConfig
    settings: DroneSettings
    record: DroneRecord
    state: DroneState = DroneState.IDLE
    agent_operation: str | None = None
    task: asyncio.Task[None] | None = None
    setting_problems: dict[str, str] = field(default_factory=dict)
    overdue: bool = False
    overdue_checks: list[str] = field(default_factory=list)  # drill or check overdue
    clock_problem: str | None = None  # a recorded time lies in the future
    state_file_problem: str | None = None  # the coordinator cannot save its state

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def problems(self) -> list[str]:
        """Every reason this drone needs attention, most actionable first."""
        reasons = list(self.setting_problems.values())
        if self.record.consecutive_failures:
            reasons.append(
                f"{self.record.consecutive_failures} failed operation(s) in a row:"
                f" {self.record.last_error}"
            )
        if self.overdue:
            reasons.append(f"overdue: no successful backup since {_since(self.record.last_backup)}")
        for failure in self.record.failed_checks.values():
            reasons.append(failure["message"])
        reasons.extend(self.overdue_checks)
        if self.clock_problem:
            reasons.append(self.clock_problem)
        if self.state_file_problem:
            reasons.append(self.state_file_problem)
        return reasons

    def remaining_steps(self) -> tuple[str, ...]:
        """The steps of the running operation that have not ended yet (none when idle)."""
        running = self.record.running
        if running is None or not self.busy:
            return ()
        return operations.spec_of(Operation(running.operation)).steps[len(running.done) :]


class Coordinator:
    def __init__(
        self,
        config: Config,
        port: HomeAssistantPort,
        runner: AgentRunner,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        # Every passphrase is kept out of all that leaves the process: what HA is shown and
        # told, the log, and the state file.
        self.redactor = Redactor(drone.passphrase for drone in config.drones)
        self.port: HomeAssistantPort = RedactingPort(port, self.redactor)
        self.runner = runner
        self.clock = clock
        self.monotonic = monotonic
        self.store = Store(config.state_file, self.redactor)
        self.drones: dict[str, Drone] = {}
        self.targets: dict[str, Target] = {}  # offsite targets
        self.leases = RepositoryLeases()
        self.cursor = 0
        self.copy_cursor = 0
        self.global_mode = "running"
        # The progress of what runs, per drone or offsite target; the last updated one last.
        self._live: dict[str, ProgressSnapshot] = {}
        self._published: dict[str, Publication] = {}  # what HA shows, as this process set it
        self._stopping = False
        self._save_problem: str | None = None  # why the last save failed

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self, helper_values: Mapping[str | None, Mapping[str, object]]) -> None:
        """Restore persisted state, take the helpers' current values, publish everything.

        ``helper_values``: drone name (None for the coordinator) -> setting -> raw helper value.
        Operations that were running when the process died are marked for retry.
        """
        loaded = self.store.load()
        if loaded.problem:
            self.port.log(f"state file unusable, starting clean: {loaded.problem}", "WARNING")
        for warning in loaded.warnings:
            self.port.log(f"state file {self.config.state_file}: {warning}", "WARNING")
        for problem in self.config.problems:
            self.port.log(f"configuration: {problem} (this drone is skipped)", "ERROR")
        for warning in self.config.warnings:
            self.port.log(f"configuration: {warning}", "WARNING")
        self.cursor = loaded.cursor
        self.global_mode = loaded.global_mode
        now = self.clock()
        for drone_config in self.config.drones:
            record = loaded.records.get(drone_config.name) or DroneRecord(first_seen=now)
            if record.first_seen is None or _in_future(record.first_seen, now):
                record.first_seen = now  # overdue counts from here, never from the future
            drone = Drone(drone_config, drone_config.settings, record)
            self._check_resume(drone)
            self._recover_interrupted(drone)
            drone.state = _resting_state(record)
            self.drones[drone.name] = drone
        self.copy_cursor = loaded.copy_cursor
        for target_config in self.config.offsite:
            self.targets[target_config.name] = self._restored_target(
                target_config, loaded.copies.get(target_config.name), now
            )
        if self.config.entities is EntityBackend.MQTT:  # with helpers, HA keeps the values
            self._apply_saved_settings()
        for drone_name, values in helper_values.items():
            for setting, raw in values.items():
                self._apply(drone_name, setting, raw)
        await self.save()
        await self.publish_all()

    def _restored_target(
        self, config: OffsiteTargetConfig, record: CopyRecord | None, now: datetime
    ) -> Target:
        record = record or CopyRecord(first_seen=now)
        if record.first_seen is None or _in_future(record.first_seen, now):
            record.first_seen = now
        if offsite.recover_interrupted(record):
            self.port.log(f"{config.name}: the offsite copy was interrupted; it will run again")
        target = Target(config, config.settings, record)
        target.state = offsite.resting_state(record)
        return target

    def _tasks(self) -> list[asyncio.Task[None]]:
        units: list[Drone | Target] = [*self.drones.values(), *self.targets.values()]
        return [u.task for u in units if u.task is not None and not u.task.done()]

    async def stop(self) -> None:
        """Cancel running work (the agents stop borg) and persist; interrupted work is retried."""
        self._stopping = True
        tasks = self._tasks()
        for task in tasks:
            task.cancel()
        # return_exceptions: one task failing while it is cancelled must not skip the others.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.save()

    async def wait_idle(self) -> None:
        """Returns once no operation runs (including any the finished ones started)."""
        while tasks := self._tasks():
            await asyncio.wait(tasks)

    def _recover_interrupted(self, drone: Drone) -> None:
        """An operation was running when the process died or stopped: say so, finish it.

        When some of its steps had ended (a scheduled backup stopped during its prune), only
        the rest runs, first in the queue. Otherwise a requested one goes back to the head of
        the queue; a scheduled one is simply still due (its backup did not happen), so the
        tick takes it up, with backoff and mode.
        """
        record = drone.record
        running, record.running = record.running, None
        if running is None:
            return
        steps = operations.spec_of(Operation(running.operation)).steps
        if not _steps_begin(steps, running.done):
            self._log_bad_steps(drone, running)
            running.done = []
        rest = steps[len(running.done) :]
        if not rest:  # every step had ended: nothing is missing
            return
        if not record.consecutive_failures:  # keep a real error rather than hide it
            after = f" after {', '.join(running.done)}" if running.done else ""
            record.last_error = (
                f"{running.operation} was interrupted{after} (the coordinator stopped while it ran)"
            )
            record.last_error_kind = FailureKind.INTERRUPTED.value
            record.last_error_hint = None
        if running.done:
            record.resume = running
        if (running.requested or running.done) and running.operation not in record.pending:
            record.pending.insert(0, running.operation)
        self.port.log(
            f"{drone.name}: {running.operation} was interrupted after {', '.join(running.done)};"
            f" {', '.join(rest)} will run"
            if running.done
            else f"{drone.name}: {running.operation} was interrupted; it will run again"
        )

    def _check_resume(self, drone: Drone) -> None:
        """A resume left from an earlier restart must name steps its operation still lacks and
        be queued; otherwise its operation runs whole (or not at all, when not queued)."""
        resume = drone.record.resume
        if resume is None:
            return
        steps = operations.spec_of(Operation(resume.operation)).steps
        if (
            not _steps_begin(steps, resume.done)
            or len(resume.done) >= len(steps)
            or resume.operation not in drone.record.pending
        ):
            self._log_bad_steps(drone, resume)
            drone.record.resume = None

    def _log_bad_steps(self, drone: Drone, running: RunningOperation) -> None:
        self.port.log(
            f"{drone.name}: state file: {running.operation} cannot resume after"
            f" {running.done}; it runs whole when it runs",
            "WARNING",
        )

    # --- inputs from Home Assistant -----------------------------------------------------------

    async def apply_setting(self, drone_name: str | None, setting: str, raw: object) -> bool:
        """A helper changed: validate it and use it from the next decision on.

        An invalid value is rejected (the last valid one stays in effect), logged and raised as
        a problem; it never reaches borg. Returns whether it was accepted.
        """
        accepted = self._apply(drone_name, setting, raw)
        await self.save()  # an accepted value is kept for the next start
        if drone_name is None:
            await self._publish_coordinator()
        elif drone_name in self.targets:
            await offsite.publish_target(self, self.targets[drone_name])
        else:
            await self._publish_drone(self.drones[drone_name])
        return accepted

    def _apply(self, drone_name: str | None, setting: str, raw: object) -> bool:
        if drone_name is None:
            if setting != GLOBAL_MODE_SETTING or raw not in GLOBAL_MODES:
                self.port.log(f"coordinator {setting} value {raw!r} rejected", "WARNING")
                return False
            self.global_mode = str(raw)
            return True
        if drone_name in self.targets:
            return self._apply_to_target(self.targets[drone_name], setting, raw)
        drone = self.drones[drone_name]
        try:
            drone.settings = _updated_settings(drone.settings, setting, raw)
        except SettingError as error:
            drone.setting_problems[setting] = f"{setting.replace('_', ' ')} rejected: {error}"
            self.port.log(f"{drone.name}: {setting} value {raw!r} rejected: {error}", "WARNING")
            return False
        drone.setting_problems.pop(setting, None)
        drone.record.settings[setting] = str(raw)
        return True

    def _apply_to_target(self, target: Target, setting: str, raw: object) -> bool:
        try:
            target.settings = offsite.updated_settings(target.settings, setting, raw)
        except SettingError as error:
            target.setting_problems[setting] = f"{setting.replace('_', ' ')} rejected: {error}"
            self.port.log(f"{target.name}: {setting} value {raw!r} rejected: {error}", "WARNING")
            return False
        target.setting_problems.pop(setting, None)
        target.record.settings[setting] = str(raw)
        return True

    def _apply_saved_settings(self) -> None:
        """The values last set from HA, over apps.yaml's. One no longer valid is dropped (its
        rejection logged) and apps.yaml's value stays."""
        units: list[Drone | Target] = [*self.drones.values(), *self.targets.values()]
        for unit in units:
            for setting, raw in list(unit.record.settings.items()):
                if not self._apply(unit.name, setting, raw):
                    del unit.record.settings[setting]
                    unit.setting_problems.pop(setting, None)

    async def request(self, drone_name: str, operation: AnyOperation) -> str:
        """A button press: start now, or queue ahead of scheduled work. Returns the outcome."""
        if isinstance(operation, CopyOperation):
            return await self._request_copy(self.targets[drone_name])
        drone = self.drones[drone_name]
        running_steps = drone.remaining_steps()
        if drone.settings.mode is Mode.DISABLED:
            outcome = "rejected: the drone's mode is disabled"
        elif operation is Operation.EXTRACT and drone.record.restore_request is None:
            outcome = f"rejected: a restore is asked for with the {EVENT_RESTORE} event"
        elif running_steps and set(operations.spec_of(operation).steps) <= set(running_steps):
            # Everything it would do is running or about to: a second run would only repeat it.
            outcome = OUTCOME_ALREADY_RUNNING
        elif operation.value in drone.record.pending:
            outcome = "already queued"
        else:
            drone.record.pending.append(operation.value)
            await self.save()
            self._start_what_is_due()
            outcome = (
                "started"
                if drone.busy and operation.value not in drone.record.pending
                else "queued"
            )
        if outcome != "started":  # else the start line says it, "on request"
            self.port.log(f"{drone.name}: {operation.value} requested: {outcome}")
        await self.port.fire_event(
            EVENT_REQUEST, {"drone": drone.name, "operation": operation.value, "outcome": outcome}
        )
        await self._publish_coordinator()
        return outcome

    async def _request_copy(self, target: Target) -> str:
        """Sync now: copy the target's repositories at once, or as soon as one may start."""
        if target.settings.mode is Mode.DISABLED:
            outcome = "rejected: the offsite target's mode is disabled"
        elif target.busy:
            outcome = OUTCOME_ALREADY_RUNNING
        elif target.record.requested:
            outcome = "already queued"
        else:
            target.record.requested = True
            await self.save()
            self._start_what_is_due()
            outcome = "started" if target.busy else "queued"
        if outcome != "started":  # else the start line says it, "on request"
            self.port.log(f"{target.name}: offsite requested: {outcome}")
        await self.port.fire_event(
            EVENT_REQUEST,
            {"drone": target.name, "operation": CopyOperation.OFFSITE.value, "outcome": outcome},
        )
        await self._publish_coordinator()
        return outcome

    async def restore(self, data: Mapping[str, Any]) -> str:
        """A ``backup_coordinator_restore`` event: restore an archive (or paths of it) on the
        drone, into a new folder under its restore root or ``destination``. The outcome comes
        as the finished event and a notification naming where the files are."""
        drone = self.drones.get(str(data.get("drone")))
        if drone is None:
            outcome = f"rejected: no drone named {data.get('drone')!r}"
        elif drone.record.restore_request is not None:
            outcome = "rejected: a restore of this drone is already queued or running"
        else:
            try:
                drone.record.restore_request = verification.restore_request(data)
            except verification.BadRestoreRequest as error:
                outcome = f"rejected: {error}"
            else:
                outcome = await self.request(drone.name, Operation.EXTRACT)
                if outcome.startswith("rejected"):
                    drone.record.restore_request = None
                return outcome
        self.port.log(f"restore requested: {outcome}", "WARNING")
        await self.port.fire_event(
            EVENT_REQUEST,
            {"drone": str(data.get("drone")), "operation": "extract", "outcome": outcome},
        )
        return outcome

    # --- the tick -----------------------------------------------------------------------------

    async def tick(self) -> None:
        """Check every drone for overdue backups, then start what is due."""
        if self._save_problem:
            await self.save()  # so the problem clears as soon as the disk takes it again
        now = self.clock()
        for drone in self.drones.values():
            overdue = scheduler.is_overdue(
                drone.settings.mode,
                drone.record.last_backup,
                timedelta(minutes=drone.settings.frequency_minutes),
                self.config.overdue_factor,
                now,
                drone.record.first_seen or now,
            )
            overdue_checks = verification.overdue_checks(
                drone.config, drone.settings.mode, drone.record, now, self.config.overdue_factor
            )
            if overdue != drone.overdue or overdue_checks != drone.overdue_checks:
                drone.overdue, drone.overdue_checks = overdue, overdue_checks
                await self._publish_drone(drone)
        for target in self.targets.values():
            offsite.check_overdue(target, now, self.config.overdue_factor)
            offsite.check_waiting(target, self._writers(target))
            await offsite.publish_target(self, target)  # only what changed reaches HA
        self._start_what_is_due()
        await self._publish_coordinator()

    def _start_what_is_due(self) -> None:
        """Ask the scheduler and start its picks; synchronous so no decision interleaves."""
        if self._stopping:
            return
        views = [self._view(drone) for drone in self.drones.values()]
        decision = scheduler.decide(
            views,
            self.cursor,
            self.clock(),
            self.config.max_concurrent,
            busy_repositories=self.leases.taken(),
            paused=self.global_mode == "paused",
        )
        self.cursor = decision.cursor
        for start in decision.starts:
            assert isinstance(start.operation, Operation)
            drone = self.drones[start.name]
            done: list[str] = []
            if start.requested:
                drone.record.pending.remove(start.operation.value)
                resume = drone.record.resume
                if resume is not None and resume.operation == start.operation.value:
                    done = list(resume.done)  # its first steps ended before a restart
                    drone.record.resume = None
            drone.record.running = RunningOperation(
                start.operation.value, self.clock(), start.requested, done
            )
            # Shown as running its first step from now on, not once the task gets going.
            _enter_step(drone, operations.spec_of(start.operation).steps[len(done)])
            drone.task = asyncio.create_task(
                self._run(drone, start.operation, start.requested),
                name=f"backup {drone.name} {start.operation}",
            )

        self._start_due_copies()

    def _start_due_copies(self) -> None:
        now = self.clock()
        for target in self.targets.values():
            offsite.check_waiting(target, self._writers(target))
        decision = scheduler.decide(
            [target.view(now) for target in self.targets.values()],
            self.copy_cursor,
            now,
            MAX_CONCURRENT_COPIES,
            paused=self.global_mode == "paused",
        )
        self.copy_cursor = decision.cursor
        for start in decision.starts:
            target = self.targets[start.name]
            offsite.start_running(target, start.requested, now)
            target.task = asyncio.create_task(
                self._copy(target, start.requested), name=f"offsite {target.name}"
            )

    def _writers(self, target: Target) -> list[scheduler.WriterView]:
        """The drones backing up into the target's repositories."""
        keys = set(target.config.repository_keys)
        return [
            scheduler.WriterView(d.name, d.settings.mode, d.record.last_backup, d.overdue)
            for d in self.drones.values()
            if d.config.repository_key in keys
        ]

    def _view(self, drone: Drone) -> scheduler.WorkView:
        pending = tuple(Operation(op) for op in drone.record.pending)
        now = self.clock()
        frequency = timedelta(minutes=drone.settings.frequency_minutes)
        record = drone.record
        return scheduler.WorkView(
            name=drone.name,
            repositories=frozenset({drone.config.repository_key}),
            mode=drone.settings.mode,
            frequency=frequency,
            busy=drone.busy,
            # A time from the future (the clock jumped) would never come due: as if none.
            last_success=None if _in_future(record.last_backup, now) else record.last_backup,
            backoff_until=None
            if _in_future(record.backoff_until, now + frequency)
            else record.backoff_until,
            pending=pending,
            others=verification.verification_schedules(drone.config, record),
        )

    # --- running one operation ----------------------------------------------------------------

    async def _run(self, drone: Drone, operation: Operation, requested: bool) -> None:
        started = self.monotonic()
        # The operation's one start line; its one end line is logged by whatever ends it.
        self.port.log(f"{drone.name}: {operation.value} started{_on_request(requested)}")
        try:
            drone.record.last_attempt = self.clock()
            await self.save()
            await self.port.fire_event(
                EVENT_STARTED,
                {"drone": drone.name, "operation": operation.value, "requested": requested},
            )
            results = await self._run_steps(drone, operation)
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # not ours to swallow
            # Shutdown: `running` stays recorded so the next start runs it again.
            self.port.log(
                f"{drone.name}: {operation.value} cancelled by shutdown; it will run again"
            )
        except OperationFailed as failure:
            await self._record_failure(drone, operation, failure, self.monotonic() - started)
        except Exception as error:  # a bug must not leave the drone stuck in "creating"
            # The port and the store redact what leaves the process; the record holds the text.
            crash = OperationFailed(FailureKind.AGENT, f"internal error: {error!r}")
            await self._record_failure(
                drone, operation, crash, self.monotonic() - started, traceback=format_exc()
            )
        else:
            await self._record_success(drone, operation, results, self.monotonic() - started)
        finally:
            await self._finish(drone)

    async def _finish(self, drone: Drone) -> None:
        """The drone's task is ending: persist, show it, and let the drone take the next one."""
        drone.task = None
        drone.agent_operation = None
        self._live.pop(drone.name, None)  # idle: no progress, not the last run's 100 %
        self.leases.changed()  # a copy may be waiting for this repository
        if drone.state in operations.BUSY_STATES:  # ended without an outcome
            drone.state = _resting_state(drone.record)
        if self._stopping:
            await self.save()
            return
        drone.record.running = None
        await self.save()
        await self._publish_drone(drone)
        self._start_what_is_due()
        await self._publish_coordinator()

    async def _copy(self, target: Target, requested: bool) -> None:
        try:
            await offsite.run_copy(self, target, requested)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            self.port.log(f"{target.name}: offsite copy cancelled by shutdown; it will run again")
        finally:
            await self._finish_copy(target)

    async def _finish_copy(self, target: Target) -> None:
        target.task = None
        self._live.pop(target.name, None)
        if target.state in (CopyState.WAITING, CopyState.COPYING):  # ended without an outcome
            target.state, target.repository = offsite.resting_state(target.record), None
        if self._stopping:
            await self.save()
            return
        target.record.running = None
        await self.save()
        await offsite.publish_target(self, target)
        self._start_what_is_due()
        await self._publish_coordinator()

    # --- what a copy asks of the coordinator (offsite.CopyHost) ---------------------------------

    def now(self) -> datetime:
        return self.clock()

    def elapsed(self) -> float:
        return self.monotonic()

    def repository_busy(self, repository_key: str) -> bool:
        return any(
            d.busy and d.config.repository_key == repository_key for d in self.drones.values()
        )

    async def repository_changed(self, repository_key: str) -> None:
        """A copy took or gave back the repository: its drones show it, and may start."""
        for drone in self.drones.values():
            if drone.config.repository_key == repository_key:
                await self._publish_drone(drone)
        self._start_what_is_due()
        await self._publish_coordinator()

    @property
    def max_runtime_minutes(self) -> float:
        return self.config.max_runtime_minutes

    @property
    def progress_interval(self) -> float:
        return self.config.progress_interval

    @property
    def overdue_factor(self) -> float:
        return self.config.overdue_factor

    @property
    def entity_prefix(self) -> str:
        return self.config.entity_prefix

    async def _run_steps(self, drone: Drone, operation: Operation) -> dict[str, Outcome]:
        """Runs the operation's steps in one agent session.

        Each step's result is recorded, saved and shown as soon as its ``step`` line arrives;
        the first failure ends the session. Every step gets ``max_runtime_minutes`` of its own.
        """
        steps = operations.spec_of(operation).steps
        if drone.record.running is not None and drone.record.running.done:
            steps = steps[len(drone.record.running.done) :]  # resumed after a restart
        extra = drone.record.restore_request if operation is Operation.EXTRACT else None
        try:
            job = build_job(drone.config, drone.settings, steps, extra=extra)
        except SettingError as error:
            raise OperationFailed(FailureKind.REJECTED, f"{operation.value}: {error}") from None
        session = _Session(steps)
        max_runtime = self.config.max_runtime_minutes * 60
        deadline = asyncio.timeout(max_runtime)

        async def on_event(event: AgentEvent) -> None:
            if isinstance(event, Hello):
                await self._heard_hello(drone, event)
            elif isinstance(event, Progress) and session.tracker is not None:
                await self.relay_progress(session.tracker.update(event, self.monotonic()))
            elif isinstance(event, StepResult) and event.ok:
                await self._step_done(drone, session, event)
                deadline.reschedule(asyncio.get_running_loop().time() + max_runtime)

        await self._begin_step(drone, session)
        try:
            async with deadline:
                result = await self.runner(drone.config.ssh, agent_operation(steps), job, on_event)
            if len(steps) == 1:  # a single operation's result is its step's result
                await self._step_done(drone, session, result)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise OperationFailed(
                FailureKind.TIMEOUT,
                f"{session.current} ran longer than"
                f" {self.config.max_runtime_minutes} min and was stopped",
                "raise max_runtime_minutes if the backup is legitimately this slow",
                step=session.current,
            ) from None
        finally:
            if session.tracker is not None:  # the step streaming progress did not end
                await self.relay_progress(session.tracker.final(self.monotonic(), False))
        return session.results

    async def _heard_hello(self, drone: Drone, hello: Hello) -> None:
        """Every session opens with the agent's hello: keep its versions, show a change."""
        versions = (hello.agent_version or None, hello.borg_version or None)
        if versions == (drone.record.agent_version, drone.record.borg_version):
            return
        drone.record.agent_version, drone.record.borg_version = versions
        await self.save()
        await self._publish_drone(drone)

    async def _begin_step(self, drone: Drone, session: _Session) -> None:
        """Show the step as running at once: the drone's state, the coordinator's active work
        and a progress of its own (nothing of the step before it)."""
        step = _enter_step(drone, session.current)
        session.tracker = (
            ProgressTracker(
                drone=drone.name,
                operation=step.name,
                started=self.monotonic(),
                expected=Estimate.of_archive(drone.record.last_archive),
                interval=self.config.progress_interval,
            )
            if step.streams_progress
            else None
        )
        self._set_live(
            session.tracker.start()
            if session.tracker is not None
            else ProgressSnapshot.unknown(drone.name, step.name)
        )
        await self._publish_drone(drone)
        await self._publish_coordinator()

    async def _step_done(self, drone: Drone, session: _Session, outcome: Outcome) -> None:
        """Fold one finished step into the record, persist it, and show the next step."""
        step = operations.STEPS[session.current]
        if session.tracker is not None:
            archive = outcome.data.get("archive")
            final = session.tracker.final(
                self.monotonic(), True, archive if isinstance(archive, dict) else None
            )
            session.tracker = None
            await self.relay_progress(final)
        step.fold(drone.record, outcome.data, self.clock())
        session.results[step.name] = outcome
        if drone.record.running is not None:
            drone.record.running.done.append(step.name)
        if session.finished:
            drone.record.running = None  # done: a stop from here on must not redo it
            await self.save()
            return
        await self.save()
        await self._begin_step(drone, session)

    def _set_live(self, snapshot: ProgressSnapshot) -> None:
        self._live.pop(snapshot.drone, None)
        self._live[snapshot.drone] = snapshot  # the last one is the coordinator's to show

    async def show_progress(self, snapshot: ProgressSnapshot) -> None:
        """Progress without an event: work that has begun and reported nothing yet."""
        self._set_live(snapshot)
        await self._publish_live(snapshot.drone)

    async def end_progress(self, name: str) -> None:
        """The work of ``name`` (a drone or an offsite target) stopped running: idle."""
        if self._live.pop(name, None) is not None:
            await self._publish_live(name)

    async def _publish_live(self, name: str) -> None:
        await self._publish_progress()
        if name in self.drones:
            # The progress rows read the progress alone: no need for the whole snapshot.
            progress_only = replace(DroneSnapshot.empty(name), progress=self._live.get(name))
            prefix = self.config.entity_prefix
            for publication in entities.drone_progress_sensors(prefix, progress_only):
                await self.publish(publication)

    async def relay_progress(self, snapshot: ProgressSnapshot | None) -> None:
        """A progress update: the event, then the sensors showing it."""
        if snapshot is None:
            return
        self._set_live(snapshot)
        # The event first: the port sends an event only after the sensors published before it,
        # and the progress sensor need not hold up the event that carries the same figures.
        await self.port.fire_event(
            EVENT_PROGRESS,
            {
                "drone": snapshot.drone,
                "operation": snapshot.operation,
                "nfiles": snapshot.nfiles,
                "original_size": snapshot.original_size,
                "compressed_size": snapshot.compressed_size,
                "deduplicated_size": snapshot.deduplicated_size,
                "percent": snapshot.percent,
                "speed": snapshot.speed,
                "eta_seconds": snapshot.eta_seconds,
                "final": snapshot.final,
                **({"repository": snapshot.repository} if snapshot.repository else {}),
                **({"phase": snapshot.phase} if snapshot.phase else {}),
                "path": snapshot.path,
                "expected_size": snapshot.expected_size,
                "expected_files": snapshot.expected_files,
            },
        )
        await self._publish_live(snapshot.drone)

    # --- outcomes -----------------------------------------------------------------------------

    async def _record_success(
        self, drone: Drone, operation: Operation, results: Mapping[str, Outcome], duration: float
    ) -> None:
        record = drone.record
        clear_failures(record)
        if "create" in results:
            drone.overdue = False
        drone.state, drone.agent_operation = DroneState.IDLE, None
        warnings = sum(r.warnings for r in results.values())
        self.port.log(
            f"{drone.name}: {operation.value} finished in {duration:.1f} s"
            + (f" with {warnings} warning(s)" if warnings else "")
            + (
                ": " + operations.summary({n: r.data for n, r in results.items()})
                if results
                else ""
            )
        )
        await self.port.fire_event(
            EVENT_FINISHED,
            {
                "drone": drone.name,
                "operation": operation.value,
                "ok": True,
                "rc": max(r.rc for r in results.values()),
                "duration": round(duration, 3),
                "warnings": warnings,
                "results": {op: dict(r.data) for op, r in results.items()},
            },
        )
        if "extract" in results:
            await self._tell_restore_outcome(drone, results["extract"].data, None)

    async def _record_failure(
        self,
        drone: Drone,
        operation: Operation,
        failure: OperationFailed,
        duration: float,
        traceback: str = "",
    ) -> None:
        """The operation's end line says why it failed and when it runs next (the traceback of
        a crash is part of that one line)."""
        record = drone.record
        finding = verification.is_finding(operation, failure)
        refused = operation is Operation.EXTRACT and failure.kind in verification.REQUEST_KINDS
        if finding:
            verification.record_finding(record, operation, failure, self.clock())
        if finding or refused:
            # about the repository or the request, not the drone: its backups go on as due
            drone.state = _resting_state(record)
        else:
            self._count_failure(drone, failure)
        drone.agent_operation = None
        self.port.log(
            f"{drone.name}: {operation.value} failed after {duration:.1f} s ({failure.kind.value}):"
            f" {failure.message}"
            + (f" - {failure.hint}" if failure.hint else "")
            + (
                ""
                if finding or refused
                else scheduler.next_run_note(self._view(drone), self.clock())
            )
            + (f"\n{traceback}" if traceback else ""),
            "ERROR" if traceback else "WARNING",
        )
        await self.port.fire_event(
            EVENT_FINISHED,
            {
                "drone": drone.name,
                "operation": operation.value,
                "ok": False,
                "rc": failure.rc,
                "duration": round(duration, 3),
                "error": {
                    "kind": failure.kind.value,
                    "message": failure.message,
                    "hint": failure.hint,
                    "step": failure.step or "",
                },
            },
        )
        if operation is Operation.EXTRACT:
            await self._tell_restore_outcome(drone, None, failure)

    def _count_failure(self, drone: Drone, failure: OperationFailed) -> None:
        """A failed operation: counted, backed off, shown as the drone's last error."""
        record = drone.record
        frequency = timedelta(minutes=drone.settings.frequency_minutes)
        delay = scheduler.backoff_delay(record.consecutive_failures + 1, frequency)
        count_failure(record, failure, self.clock() + delay)
        unreachable = failure.kind is FailureKind.UNREACHABLE
        drone.state = DroneState.UNREACHABLE if unreachable else DroneState.ERROR

    async def _tell_restore_outcome(
        self, drone: Drone, data: Mapping[str, Any] | None, failure: OperationFailed | None
    ) -> None:
        """The person who asked for a restore learns where the files are (or why not)."""
        request, drone.record.restore_request = drone.record.restore_request or {}, None
        host = drone.config.ssh.host
        message = (
            verification.restore_done_message(host, data or {})
            if failure is None
            else verification.restore_failed_message(host, request, failure)
        )
        await self.port.notify(
            f"{self.config.entity_prefix}_{drone.name}_restore", f"Restore: {drone.name}", message
        )

    async def update_problem(self, drone: Drone | Target) -> bool:
        """Raise, update or clear the drone's problem; True when it changed.

        A person is notified when it is raised and the notification withdrawn when it clears;
        the problem sensor carries the current reasons in between.
        """
        reason = "; ".join(drone.problems()) or None
        if reason == drone.record.problem:
            return False
        was_raised = drone.record.problem is not None
        drone.record.problem = reason
        if was_raised == (reason is not None):
            return True  # still raised, for other reasons now
        notification_id = f"{self.config.entity_prefix}_{drone.name}_problem"
        if reason is None:
            await self.port.dismiss(notification_id)
            self.port.log(f"{drone.name}: problem cleared")
        else:
            await self.port.notify(notification_id, f"Backup problem: {drone.name}", reason)
        await self.port.fire_event(
            EVENT_PROBLEM,
            {"drone": drone.name, "raised": reason is not None, "reason": reason or ""},
        )
        return True

    # --- publishing ---------------------------------------------------------------------------

    async def publish_all(self) -> None:
        for drone in self.drones.values():
            await self._publish_drone(drone)
        for target in self.targets.values():
            await offsite.publish_target(self, target)
        await self._publish_coordinator()

    async def _publish_drone(self, drone: Drone) -> None:
        self._check_clock(drone)
        if await self.update_problem(drone):
            await self.save()  # so a restart neither forgets nor repeats the notification
        for publication in entities.drone_sensors(self.config.entity_prefix, self.snapshot(drone)):
            await self.publish(publication)

    def _check_clock(self, drone: Drone) -> None:
        clock_problem = _future_times_problem(drone, self.clock())
        if clock_problem != drone.clock_problem:
            drone.clock_problem = clock_problem
            if clock_problem:
                self.port.log(f"{drone.name}: {clock_problem}", "WARNING")

    async def _publish_coordinator(self) -> None:
        names = list(self.drones)
        order = (
            names[self.cursor % len(names) :] + names[: self.cursor % len(names)] if names else []
        )
        targets = self.targets.values()
        # A drone runs its first step from the decision on; once its outcome is recorded it
        # has none, and is no longer shown as active while its task winds up.
        running = {
            d.name: d.agent_operation
            for d in self.drones.values()
            if d.busy and d.agent_operation is not None
        }
        running |= {t.name: f"offsite {t.state.value}" for t in targets if t.busy}
        queue = [(d.name, op) for d in self.drones.values() for op in d.record.pending]
        queue += [(t.name, CopyOperation.OFFSITE.value) for t in targets if t.record.requested]
        publications = entities.coordinator_sensors(
            self.config.entity_prefix,
            running=running,
            queue=queue,
            round_robin=order,
            failing=[d.name for d in self.drones.values() if d.record.problem]
            + [t.name for t in targets if t.record.problem],
            global_mode=self.global_mode,
        )
        for publication in publications:
            await self.publish(publication)
        await self._publish_progress()

    async def _publish_progress(self) -> None:
        """The coordinator's progress sensor: the most recently updated running work."""
        latest = next(reversed(self._live.values()), None)
        await self.publish(entities.progress_sensor(self.config.entity_prefix, latest))

    async def publish(self, publication: Publication) -> None:
        """Sends a sensor's state unless HA already shows exactly that (the tick republishes)."""
        if self._published.get(publication.entity_id) == publication:
            return
        await self.port.publish(publication)
        self._published[publication.entity_id] = publication

    def snapshot(self, drone: Drone) -> DroneSnapshot:
        view = self._view(drone)
        copied = not drone.busy and self.leases.holder(drone.config.repository_key) is not None
        return DroneSnapshot(
            name=drone.name,
            state=DroneState.OFFSITE if copied else drone.state,
            operation=drone.agent_operation,
            last_backup=drone.record.last_backup,
            last_prune=drone.record.last_prune,
            last_archive=drone.record.last_archive,
            repository=drone.record.repository,
            archive_count=drone.record.archive_count,
            next_backup=scheduler.next_due(view, self.clock()),
            problems=drone.problems(),
            consecutive_failures=drone.record.consecutive_failures,
            last_error=drone.record.last_error,
            last_error_kind=drone.record.last_error_kind,
            last_error_hint=drone.record.last_error_hint,
            last_check=drone.record.last_check,
            last_check_data=drone.record.last_check_data,
            last_drill=drone.record.last_drill,
            last_drill_data=drone.record.last_drill_data,
            recent_archives=drone.record.recent_archives,
            progress=self._live.get(drone.name),
            agent_version=drone.record.agent_version,
            borg_version=drone.record.borg_version,
        )

    async def save(self) -> None:
        """Persist every record. A save that fails (disk full, read-only) changes nothing that
        happened: it is logged and raised as a problem of every drone until a save succeeds."""
        records = {name: drone.record for name, drone in self.drones.items()}
        problem: str | None = None
        try:
            await self.store.save_async(
                records,
                self.cursor,
                self.global_mode,
                Copies({t.name: t.record for t in self.targets.values()}, self.copy_cursor),
            )
        except OSError as error:
            problem = (
                f"the state file {self.config.state_file} cannot be written ({error}): what"
                " happens now is lost at a restart; free space on its disk or fix its permissions"
            )
        if problem == self._save_problem:
            return
        self._save_problem = problem
        if problem is None:
            self.port.log(f"state file {self.config.state_file} written again")
        else:
            self.port.log(problem, "ERROR")
        for drone in self.drones.values():
            drone.state_file_problem = problem
        for target in self.targets.values():
            target.state_file_problem = problem
        # The problem sensors and notifications follow. They save again, which is safe: the
        # problem only changes when a save's outcome does.
        for drone in list(self.drones.values()):
            await self._publish_drone(drone)
        for target in list(self.targets.values()):
            await offsite.publish_target(self, target)


# --- pure helpers -----------------------------------------------------------------------------


def _updated_settings(settings: DroneSettings, setting: str, raw: object) -> DroneSettings:
    if setting == "mode":
        return replace(settings, mode=parse_mode(raw))
    if setting == "frequency":
        return replace(settings, frequency_minutes=parse_frequency(raw))
    if setting == "keep_within":
        return settings.with_keep(within=parse_keep_within(raw))
    count = setting.removeprefix("keep_")
    if count in KEEP_COUNT_NAMES:
        return settings.with_keep(**{count: parse_keep_count(count, raw)})
    raise SettingError(f"unknown setting {setting!r}")


def _resting_state(record: DroneRecord) -> DroneState:
    if not record.consecutive_failures:
        return DroneState.IDLE
    if record.last_error_kind == FailureKind.UNREACHABLE.value:
        return DroneState.UNREACHABLE
    return DroneState.ERROR


def _enter_step(drone: Drone, step_name: str) -> operations.Step:
    """The drone is running ``step_name`` from now on."""
    step = operations.STEPS[step_name]
    drone.state, drone.agent_operation = step.busy_state, step.name
    return step


def _since(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "the coordinator started"


@dataclass
class _Session:
    """Where one agent session stands: its steps, the results so far, the create's progress."""

    steps: tuple[str, ...]
    results: dict[str, Outcome] = field(default_factory=dict)
    tracker: ProgressTracker | None = None

    @property
    def current(self) -> str:
        """The step running now (the last one once all have ended)."""
        return self.steps[min(len(self.results), len(self.steps) - 1)]

    @property
    def finished(self) -> bool:
        return len(self.results) == len(self.steps)


class RedactingPort:
    """The Home Assistant port with every passphrase masked in all it is given."""

    def __init__(self, port: HomeAssistantPort, redactor: Redactor) -> None:
        self._port = port
        self._redactor = redactor

    async def publish(self, publication: Publication) -> None:
        await self._port.publish(
            replace(
                publication,
                state=self._redactor.text(publication.state),
                attributes=self._scrub(publication.attributes),
                native_state=None
                if publication.native_state is None
                else self._redactor.text(publication.native_state),
            )
        )

    async def fire_event(self, event_type: str, data: Mapping[str, Any]) -> None:
        await self._port.fire_event(event_type, self._scrub(data))

    async def notify(self, notification_id: str, title: str, message: str) -> None:
        await self._port.notify(
            notification_id, self._redactor.text(title), self._redactor.text(message)
        )

    async def dismiss(self, notification_id: str) -> None:
        await self._port.dismiss(notification_id)

    def log(self, message: str, level: str = "INFO") -> None:
        self._port.log(self._redactor.text(message), level)

    def _scrub(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {key: self._redactor.value(value) for key, value in values.items()}


def _on_request(requested: bool) -> str:
    """How a start line says a button (or event) asked for the operation."""
    return " on request" if requested else ""


def _steps_begin(steps: tuple[str, ...], done: list[str]) -> bool:
    """Whether ``done`` are the first steps of ``steps``, in order."""
    return list(steps[: len(done)]) == done


def _in_future(moment: datetime | None, limit: datetime) -> bool:
    """Later than ``limit`` by more than the tolerance for clock drift."""
    return moment is not None and moment > limit + FUTURE_TOLERANCE


def _future_times_problem(drone: Drone, now: datetime) -> str | None:
    """Why the drone's schedule cannot trust its record's times, when one lies in the future."""
    if drone.settings.mode is not Mode.SCHEDULED:
        return None  # nothing is scheduled, so nothing stops
    record = drone.record
    frequency = timedelta(minutes=drone.settings.frequency_minutes)
    if _in_future(record.last_backup, now):
        moment = _since(record.last_backup)
        return (
            f"the last backup is recorded at {moment}, in the future: the clock jumped;"
            " backing up as if it were due"
        )
    if _in_future(record.backoff_until, now + frequency):
        moment = _since(record.backoff_until)
        return (
            f"the retry is set for {moment}, further ahead than any backoff: the clock jumped;"
            " retrying as if it were due"
        )
    return None
