"""The coordinator's runtime with an in-memory Home Assistant port and a scripted agent runner."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backup_coordinator.config import Config, parse_config
from backup_coordinator.coordinator import Coordinator
from backup_coordinator.model import MIB, DroneState, Operation, SshTarget
from backup_coordinator.protocol import (
    SEQUENCE_OPERATION,
    AgentEvent,
    FailureKind,
    Hello,
    OperationFailed,
    Progress,
    Result,
    StepResult,
)
from tests.memory_port import MemoryPort

START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


Behaviour = Callable[[str, Mapping[str, Any], Any], Awaitable[Result]]


@dataclass
class ScriptedRunner:
    """Plays the agent: every session and every step is recorded; behaviours per
    (host, step) may be set. A ``sequence`` plays its steps in order, with a step line each."""

    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # per step
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (host, agent operation)
    behaviours: dict[tuple[str, str], Behaviour] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(
        self,
        target: SshTarget,
        operation: str,
        job: Mapping[str, Any],
        on_event: Callable[[AgentEvent], Awaitable[None]] | None,
    ) -> Result:
        self.sessions.append((target.host, operation))
        if operation != SEQUENCE_OPERATION:
            return await self._step(target.host, operation, job, on_event)
        completed = []
        for step in job["steps"]:
            try:
                result = await self._step(target.host, step, job, on_event)
            except OperationFailed as failure:
                failure.step = step
                raise
            if on_event is not None:
                await on_event(StepResult(**vars(result)))
            completed.append(step)
        return Result(SEQUENCE_OPERATION, ok=True, rc=0, data={"completed": completed})

    async def _step(
        self,
        host: str,
        step: str,
        job: Mapping[str, Any],
        on_event: Callable[[AgentEvent], Awaitable[None]] | None,
    ) -> Result:
        self.calls.append((host, step, dict(job)))
        self.called.set()
        behaviour = self.behaviours.get((host, step))
        if behaviour is not None:
            return await behaviour(step, job, on_event)
        return ok_result(step)

    def operations(self, host: str | None = None) -> list[str]:
        return [op for h, op, _ in self.calls if host is None or h == host]


def ok_result(operation: str) -> Result:
    data_by_operation: dict[str, dict[str, Any]] = {
        "create": {
            "archive": {
                "name": "a-2026",
                "original_size": 1000,
                "deduplicated_size": 10,
                "nfiles": 3,
            },
            "repository": {"total_size": 1000, "compressed_size": 500, "deduplicated_size": 0},
        },
        "prune": {"kept": ["a-2026"], "pruned": []},
        "stats": {
            "total_size": 2000,
            "compressed_size": 900,
            "deduplicated_size": 0,
            "archive_count": 1,
        },
    }
    return Result(operation=operation, ok=True, rc=0, data=data_by_operation.get(operation, {}))


def failing(kind: FailureKind, message: str = "boom") -> Behaviour:
    async def behave(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        raise OperationFailed(kind, message, "a hint")

    return behave


def blocking(runner: ScriptedRunner) -> Behaviour:
    async def behave(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        await runner.release.wait()
        return ok_result(operation)

    return behave


class Clock:
    def __init__(self) -> None:
        self.now = START
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, **delta: float) -> None:
        step = timedelta(**delta)
        self.now += step
        self.mono += step.total_seconds()


def make_config(tmp_path: Path, **drones: dict[str, Any]) -> Config:
    args: dict[str, Any] = {
        "module": "backup_coordinator.app",
        "class": "BackupCoordinator",
        "state_file": str(tmp_path / "state.json"),
        "progress_interval": 1,
        "ssh": {"client_key": "/keys/id", "known_hosts": "/keys/known_hosts"},
        "drones": {
            name: {"host": name, "repository": f"/srv/{name}", "paths": ["/data"], **settings}
            for name, settings in drones.items()
        },
    }
    return parse_config(args, tmp_path)


async def calls_reach(runner: ScriptedRunner, count: int) -> None:
    """Waits (with a deadline) until the runner has been called ``count`` times."""
    async with asyncio.timeout(5):
        while len(runner.calls) < count:
            runner.called.clear()
            await runner.called.wait()


async def started(
    config: Config, runner: ScriptedRunner, clock: Clock
) -> tuple[Coordinator, MemoryPort]:
    port = MemoryPort()
    coordinator = Coordinator(config, port, runner, clock=clock, monotonic=clock.monotonic)
    await coordinator.start({})
    return coordinator, port


async def test_start_publishes_every_sensor_with_nothing_known(tmp_path: Path) -> None:
    _, port = await started(make_config(tmp_path, nas={}), ScriptedRunner(), Clock())
    assert port.state("sensor.borg_nas_state") == "idle"
    assert port.state("sensor.borg_nas_last_backup") == "unknown"
    assert port.state("sensor.borg_nas_total_size") == "unknown"
    assert port.state("binary_sensor.borg_nas_problem") == "off"
    assert port.state("sensor.borg_progress") == "idle"
    assert "unit_of_measurement" not in port.states["sensor.borg_progress"].attributes
    assert port.state("sensor.borg_nas_progress") == "unknown"
    assert port.state("sensor.borg_nas_current_file") == "unknown"
    assert port.state("sensor.borg_queue") == "0"


async def test_tick_runs_a_due_drone_create_prune_stats_and_records_it(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    coordinator, port = await started(make_config(tmp_path, nas={}), runner, clock)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "prune", "stats"]
    assert port.state("sensor.borg_nas_last_backup") == START.isoformat(timespec="seconds")
    assert port.state("sensor.borg_nas_total_size") == f"{2000 / 1024 / 1024:.2f}"
    assert port.states["sensor.borg_nas_total_size"].attributes["bytes"] == 2000
    assert port.state("sensor.borg_nas_deduplicated_size") == "0.00"
    assert port.state("sensor.borg_nas_state") == "idle"
    finished = port.of("backup_coordinator_finished")
    assert finished[-1]["ok"] is True
    assert finished[-1]["operation"] == "scheduled"
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["drones"]["nas"]["last_backup"].startswith("2026-11-01T12:00")
    assert saved["drones"]["nas"]["running"] is None
    # Not due again until a frequency has passed.
    await coordinator.tick()
    await coordinator.wait_idle()
    assert len(runner.calls) == 3


def saying_hello(agent: str, borg: str, then: Behaviour | None = None) -> Behaviour:
    """The agent's hello (the transport passes it on first), then ``then`` or success."""

    async def behave(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        await on_event(Hello(1, agent, borg, "host", operation))
        return ok_result(operation) if then is None else await then(operation, job, on_event)

    return behave


async def test_the_versions_a_session_says_hello_with_are_recorded_shown_and_kept(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    config = make_config(tmp_path, nas={"mode": "manual"})
    coordinator, port = await started(config, runner, clock)
    assert port.state("sensor.borg_nas_agent_version") == "unknown"
    runner.behaviours[("nas", "stats")] = saying_hello("1.4.0", "1.2.4")
    await coordinator.request("nas", Operation.STATS)
    await coordinator.wait_idle()
    assert port.state("sensor.borg_nas_agent_version") == "1.4.0"
    assert port.state("sensor.borg_nas_borg_version") == "1.2.4"
    # A session that fails still said hello first: an upgrade shows even then.
    failure = failing(FailureKind.BORG_ERROR)
    runner.behaviours[("nas", "stats")] = saying_hello("1.5.0", "1.4.1", failure)
    await coordinator.request("nas", Operation.STATS)
    await coordinator.wait_idle()
    assert port.state("sensor.borg_nas_agent_version") == "1.5.0"
    assert port.state("sensor.borg_nas_borg_version") == "1.4.1"
    assert port.state("sensor.borg_nas_hint") == "a hint"
    saved = json.loads((tmp_path / "state.json").read_text())["drones"]["nas"]
    assert (saved["agent_version"], saved["borg_version"]) == ("1.5.0", "1.4.1")
    await coordinator.stop()
    # After a restart they are shown before any session.
    _, again = await started(config, ScriptedRunner(), clock)
    assert again.state("sensor.borg_nas_agent_version") == "1.5.0"


async def test_jobs_carry_the_drone_settings_and_never_the_wrong_fields(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    config = make_config(
        tmp_path, nas={"passphrase": "s3cret", "keep": {"weekly": 2, "within": "3d"}}
    )
    coordinator, port = await started(config, runner, clock)
    await coordinator.tick()  # the scheduled backup: one session, one job for its three steps
    await coordinator.wait_idle()
    assert runner.sessions == [("nas", "sequence")]
    scheduled = runner.calls[0][2]
    assert scheduled["steps"] == ["create", "prune", "stats"]
    assert scheduled["paths"] == ["/data"]
    assert scheduled["keep"] == {"weekly": 2, "within": "3d", "daily": 7, "monthly": 6, "yearly": 1}
    for operation in (Operation.CREATE, Operation.PRUNE):
        await coordinator.request("nas", operation)
        await coordinator.wait_idle()
    jobs = {op: job for _, op, job in runner.calls[3:]}
    assert runner.sessions[1:] == [("nas", "create"), ("nas", "prune")]
    assert jobs["create"]["paths"] == ["/data"]
    assert jobs["create"]["passphrase"] == "s3cret"
    assert "keep" not in jobs["create"]
    assert "steps" not in jobs["create"]
    assert jobs["prune"]["keep"]["weekly"] == 2
    assert jobs["prune"]["keep"]["within"] == "3d"
    assert "paths" not in jobs["prune"]
    assert all("s3cret" not in line for line in port.lines)
    assert "s3cret" not in json.dumps(port.events)
    assert "s3cret" not in (tmp_path / "state.json").read_text()


async def test_request_starts_at_once_queues_when_busy_and_is_refused_when_disabled(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = blocking(runner)
    config = make_config(tmp_path, nas={"mode": "manual"}, off={"mode": "disabled"})
    coordinator, port = await started(config, runner, clock)
    assert await coordinator.request("nas", Operation.CREATE) == "started"
    await calls_reach(runner, 1)
    assert port.state("sensor.borg_nas_state") == "creating"
    assert await coordinator.request("nas", Operation.PRUNE) == "queued"
    assert await coordinator.request("nas", Operation.PRUNE) == "already queued"
    assert port.state("sensor.borg_queue") == "1"
    assert (await coordinator.request("off", Operation.CREATE)).startswith("rejected")
    runner.release.set()
    await coordinator.wait_idle()
    assert runner.operations("nas") == ["create", "prune"]
    assert runner.operations("off") == []
    outcomes = [e["outcome"] for e in port.of("backup_coordinator_request")]
    assert outcomes == [
        "started",
        "queued",
        "already queued",
        "rejected: the drone's mode is disabled",
    ]


async def test_manual_and_disabled_drones_are_never_scheduled(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    config = make_config(tmp_path, man={"mode": "manual"}, off={"mode": "disabled"})
    coordinator, port = await started(config, runner, clock)
    clock.advance(days=30)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.calls == []
    assert port.state("binary_sensor.borg_man_problem") == "off"
    assert port.state("binary_sensor.borg_off_problem") == "off"


async def test_failure_raises_a_problem_backs_off_and_success_clears_it(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = failing(FailureKind.UNREACHABLE, "host down")
    coordinator, port = await started(make_config(tmp_path, nas={"frequency": 60}), runner, clock)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert port.state("sensor.borg_nas_state") == "unreachable"
    assert port.state("binary_sensor.borg_nas_problem") == "on"
    assert "host down" in port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
    assert port.of("backup_coordinator_problem") == [
        {
            "drone": "nas",
            "raised": True,
            "reason": port.of("backup_coordinator_problem")[0]["reason"],
        }
    ]
    assert "borg_nas_problem" in port.notifications
    assert port.of("backup_coordinator_finished")[-1]["error"]["kind"] == "unreachable"
    # Backing off: the next tick a moment later starts nothing.
    clock.advance(seconds=30)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create"]
    # The host is back and the backoff (1 min after one failure) has passed.
    del runner.behaviours[("nas", "create")]
    clock.advance(seconds=31)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "create", "prune", "stats"]
    assert port.state("sensor.borg_nas_state") == "idle"
    assert port.state("binary_sensor.borg_nas_problem") == "off"
    assert port.of("backup_coordinator_problem")[-1]["raised"] is False
    assert "borg_nas_problem" not in port.notifications


async def test_backoff_grows_with_consecutive_failures(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = failing(FailureKind.BORG_ERROR, "LockTimeout")
    coordinator, _ = await started(make_config(tmp_path, nas={"frequency": 600}), runner, clock)
    delays = []
    for _ in range(4):
        await coordinator.tick()
        await coordinator.wait_idle()
        record = coordinator.drones["nas"].record
        assert record.backoff_until is not None
        delays.append(record.backoff_until - clock.now)
        clock.now = record.backoff_until
    assert delays == [
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=4),
        timedelta(minutes=8),
    ]
    assert coordinator.drones["nas"].record.consecutive_failures == 4


async def test_invalid_setting_is_rejected_reported_and_never_sent(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    config = make_config(tmp_path, nas={"mode": "manual", "keep": {"within": "30d"}})
    coordinator, port = await started(config, runner, clock)
    assert await coordinator.apply_setting("nas", "keep_within", "7x") is False
    assert port.state("binary_sensor.borg_nas_problem") == "on"
    assert (
        "keep within rejected" in port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
    )
    assert any("nas: keep_within value '7x' rejected" in line for line in port.lines)
    await coordinator.request("nas", Operation.PRUNE)
    await coordinator.wait_idle()
    assert runner.calls[-1][2]["keep"]["within"] == "30d"
    assert await coordinator.apply_setting("nas", "keep_within", "14d") is True
    assert port.state("binary_sensor.borg_nas_problem") == "off"
    assert await coordinator.apply_setting("nas", "keep_weekly", "4.0") is True
    assert await coordinator.apply_setting("nas", "keep_weekly", "-1") is False
    assert await coordinator.apply_setting("nas", "frequency", "0") is False
    assert await coordinator.apply_setting("nas", "mode", "sometimes") is False
    assert coordinator.drones["nas"].settings.keep.weekly == 4


async def test_zero_keep_rules_refuse_to_prune(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    config = make_config(tmp_path, nas={"mode": "manual"})
    coordinator, port = await started(config, runner, clock)
    for setting in ("keep_weekly", "keep_monthly", "keep_yearly"):
        assert await coordinator.apply_setting("nas", setting, "0") is True
    coordinator.drones["nas"].settings = coordinator.drones["nas"].settings.with_keep(daily=0)
    await coordinator.request("nas", Operation.PRUNE)
    await coordinator.wait_idle()
    assert runner.calls == []
    assert port.of("backup_coordinator_finished")[-1]["error"]["kind"] == "rejected"


async def test_progress_is_throttled_and_the_final_update_always_sent(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()

    async def progressing(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        for i in range(1, 11):
            clock.advance(seconds=0.25)
            await on_event(Progress("create", 0.0, i, i * 100, i * 50, i * 10, f"/data/{i}"))
        return ok_result(operation)

    runner.behaviours[("nas", "create")] = progressing
    coordinator, port = await started(make_config(tmp_path, nas={"mode": "manual"}), runner, clock)
    coordinator.drones["nas"].record.last_archive = {"original_size": 2000}
    await coordinator.request("nas", Operation.CREATE)
    await coordinator.wait_idle()
    progress = port.of("backup_coordinator_progress")
    # 2.5 s of progress at a 1 s interval: the first, two throttled ones, and the final one.
    assert [p["final"] for p in progress] == [False, False, False, True]
    assert [p["nfiles"] for p in progress[:-1]] == [1, 5, 9]
    assert progress[0]["percent"] == pytest.approx(5.0)
    # The closing update carries the finished archive's own totals, not borg's last line.
    assert (progress[-1]["nfiles"], progress[-1]["original_size"]) == (3, 1000)
    assert progress[-1]["percent"] == 100.0
    assert progress[-2]["path"] == "/data/9"
    # The run showed 0 % at once, its updates, 100 % once finished, then idle again.
    assert port.history("sensor.borg_progress") == [
        "idle",
        "0.0",
        "5.0",
        "25.0",
        "45.0",
        "100.0",
        "idle",
    ]
    assert port.history("sensor.borg_nas_progress") == [
        "unknown",
        "0.0",
        "5.0",
        "25.0",
        "45.0",
        "100.0",
        "unknown",
    ]
    assert port.history("sensor.borg_nas_current_file") == [
        "unknown",
        "/data/1",
        "/data/5",
        "/data/9",
        "/data/10",
        "unknown",
    ]
    assert port.state("sensor.borg_nas_speed") == "unknown"
    assert port.state("sensor.borg_nas_eta") == "unknown"


async def test_stop_mid_operation_leaves_it_to_be_retried_after_restart(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = blocking(runner)
    config = make_config(tmp_path, nas={})
    coordinator, _ = await started(config, runner, clock)
    await coordinator.tick()
    await calls_reach(runner, 1)
    assert coordinator.drones["nas"].state is DroneState.CREATING
    await coordinator.stop()
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["drones"]["nas"]["running"]["operation"] == "scheduled"

    runner2 = ScriptedRunner()
    restarted, port = await started(config, runner2, clock)
    record = restarted.drones["nas"].record
    assert record.last_error_kind == "interrupted"
    assert record.pending == []  # scheduled work: still due, so the tick takes it up
    await restarted.tick()
    await restarted.wait_idle()
    assert runner2.operations() == ["create", "prune", "stats"]
    assert port.state("sensor.borg_nas_last_backup") != "unknown"


async def test_restart_restores_last_backup_and_sizes(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    config = make_config(tmp_path, nas={})
    coordinator, _ = await started(config, runner, clock)
    await coordinator.tick()
    await coordinator.wait_idle()
    await coordinator.stop()
    _, port = await started(config, ScriptedRunner(), clock)
    assert port.state("sensor.borg_nas_last_backup") == START.isoformat(timespec="seconds")
    assert port.state("sensor.borg_nas_total_size") != "unknown"


async def test_one_repository_never_runs_twice_at_once(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    for host in ("a", "b"):
        runner.behaviours[(host, "create")] = blocking(runner)
    config = make_config(
        tmp_path, a={"repository": "ssh://nas/srv/repo"}, b={"repository": "ssh://nas/srv/repo"}
    )
    config = replace(config, max_concurrent=2)
    coordinator, _ = await started(config, runner, clock)
    await coordinator.tick()
    await calls_reach(runner, 1)
    assert runner.operations() == ["create"]
    runner.release.set()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "prune", "stats", "create", "prune", "stats"]


async def test_overdue_raises_a_problem_only_in_scheduled_mode(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = failing(FailureKind.BORG_ERROR)
    config = replace(make_config(tmp_path, nas={"frequency": 60}), overdue_factor=2.0)
    coordinator, port = await started(config, runner, clock)
    clock.advance(minutes=121)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert "overdue" in port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
    await coordinator.apply_setting("nas", "mode", "manual")
    await coordinator.tick()
    assert "overdue" not in port.states["binary_sensor.borg_nas_problem"].attributes["reason"]


async def test_timeout_stops_a_stuck_operation(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = blocking(runner)
    config = replace(make_config(tmp_path, nas={"mode": "manual"}), max_runtime_minutes=0.0002)
    coordinator, port = await started(config, runner, clock)
    await coordinator.request("nas", Operation.CREATE)
    task = coordinator.drones["nas"].task
    assert task is not None
    await asyncio.wait_for(task, 5)
    assert port.of("backup_coordinator_finished")[-1]["error"]["kind"] == "timeout"
    assert port.state("sensor.borg_nas_state") == "error"


async def test_an_unexpected_error_is_recorded_and_leaves_nothing_stuck(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()

    async def crashing(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        raise ValueError(f"a bug near {dict(job)}")

    runner.behaviours[("nas", "create")] = crashing
    config = make_config(tmp_path, nas={"mode": "manual", "passphrase": "s3cret"})
    coordinator, port = await started(config, runner, clock)
    await coordinator.request("nas", Operation.CREATE)
    await coordinator.wait_idle()
    assert port.state("sensor.borg_nas_state") == "error"
    finished = port.of("backup_coordinator_finished")[-1]
    assert finished["error"]["kind"] == "agent"
    assert "a bug" in finished["error"]["message"]
    assert "s3cret" not in finished["error"]["message"]
    assert not [line for line in port.lines if "s3cret" in line]
    assert "s3cret" not in port.states["sensor.borg_nas_last_error"].state
    assert json.loads((tmp_path / "state.json").read_text())["drones"]["nas"]["running"] is None
    del runner.behaviours[("nas", "create")]
    assert await coordinator.request("nas", Operation.CREATE) == "started"
    await coordinator.wait_idle()
    assert port.state("sensor.borg_nas_state") == "idle"


async def test_a_person_is_notified_once_per_problem_and_a_restart_does_not_repeat_it(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = failing(FailureKind.BORG_ERROR, "LockTimeout")
    config = make_config(tmp_path, nas={"mode": "manual"})
    coordinator, port = await started(config, runner, clock)
    for _ in range(2):
        await coordinator.request("nas", Operation.CREATE)
        await coordinator.wait_idle()
    assert port.notified == ["borg_nas_problem"]
    assert (
        port.states["binary_sensor.borg_nas_problem"]
        .attributes["reason"]
        .startswith("2 failed operation(s) in a row")
    )
    assert [e["raised"] for e in port.of("backup_coordinator_problem")] == [True]
    await coordinator.stop()
    _, restarted_port = await started(config, ScriptedRunner(), clock)
    assert restarted_port.of("backup_coordinator_problem") == []
    assert restarted_port.notified == []
    assert restarted_port.state("binary_sensor.borg_nas_problem") == "on"


async def test_an_interrupted_request_runs_again_first(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = blocking(runner)
    config = make_config(tmp_path, nas={"mode": "manual"})
    coordinator, _ = await started(config, runner, clock)
    await coordinator.request("nas", Operation.CREATE)
    await calls_reach(runner, 1)
    await coordinator.stop()
    runner2 = ScriptedRunner()
    restarted, _ = await started(config, runner2, clock)
    assert restarted.drones["nas"].record.pending == ["create"]
    await restarted.tick()
    await restarted.wait_idle()
    assert runner2.operations() == ["create"]


async def test_a_rejected_job_finishes_with_the_agents_exit_code(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()

    async def rejecting(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        raise OperationFailed(FailureKind.REJECTED, "paths[0]: must be absolute", rc=3)

    runner.behaviours[("nas", "create")] = rejecting
    coordinator, port = await started(make_config(tmp_path, nas={"mode": "manual"}), runner, clock)
    await coordinator.request("nas", Operation.CREATE)
    await coordinator.wait_idle()
    finished = port.of("backup_coordinator_finished")[-1]
    assert (finished["rc"], finished["error"]["kind"]) == (3, "rejected")


# --- a scheduled backup is one session --------------------------------------------------------


async def test_each_step_of_a_session_is_recorded_and_shown_when_it_ends(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "prune")] = blocking(runner)
    coordinator, port = await started(make_config(tmp_path, nas={}), runner, clock)
    await coordinator.tick()
    await calls_reach(runner, 2)  # create ended, prune runs
    assert runner.sessions == [("nas", "sequence")]
    assert port.state("sensor.borg_nas_state") == "pruning"
    assert port.state("sensor.borg_nas_last_backup") == START.isoformat(timespec="seconds")
    assert port.state("sensor.borg_nas_last_prune") == "unknown"
    saved = json.loads((tmp_path / "state.json").read_text())["drones"]["nas"]
    assert saved["last_backup"] is not None  # persisted before the next step ended
    assert saved["running"]["operation"] == "scheduled"
    runner.release.set()
    await coordinator.wait_idle()
    assert port.state("sensor.borg_nas_state") == "idle"
    assert port.state("sensor.borg_nas_last_prune") == START.isoformat(timespec="seconds")
    assert port.state("sensor.borg_nas_total_size") == f"{2000 / MIB:.2f}"  # from stats
    finished = port.of("backup_coordinator_finished")[-1]
    assert finished["ok"] is True
    assert list(finished["results"]) == ["create", "prune", "stats"]


async def test_a_failed_step_ends_the_session_and_keeps_what_the_steps_before_it_did(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "prune")] = failing(FailureKind.BORG_ERROR, "prune failed: lock")
    coordinator, port = await started(make_config(tmp_path, nas={}), runner, clock)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "prune"]  # stats never ran
    assert port.state("sensor.borg_nas_state") == "error"
    assert port.state("sensor.borg_nas_last_backup") == START.isoformat(timespec="seconds")
    assert port.state("sensor.borg_nas_last_prune") == "unknown"
    finished = port.of("backup_coordinator_finished")[-1]
    assert finished["ok"] is False
    assert finished["error"]["step"] == "prune"
    assert port.state("binary_sensor.borg_nas_problem") == "on"
    assert coordinator.drones["nas"].record.last_error == "prune failed: lock"


# --- hardening: nothing stops silently --------------------------------------------------------


def write_state(tmp_path: Path, drones: dict[str, Any]) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "drones": drones}))


async def test_a_state_file_naming_unknown_operations_never_stops_the_coordinator(
    tmp_path: Path,
) -> None:
    started_at = START.isoformat()
    write_state(
        tmp_path,
        {
            "nas": {
                "pending": ["check_all", "create", "create"],
                "running": {"operation": "offsite", "started": started_at, "requested": True},
            },
            "pc": {"running": {"operation": "defrag", "started": started_at, "requested": False}},
        },
    )
    runner, clock = ScriptedRunner(), Clock()
    config = replace(make_config(tmp_path, nas={}, pc={}), max_concurrent=2)
    coordinator, port = await started(config, runner, clock)
    warnings = "\n".join(line for line in port.lines if line.startswith("WARNING"))
    assert "'check_all' dropped" in warnings
    assert "'offsite' dropped" in warnings
    assert "'defrag' dropped" in warnings
    assert coordinator.drones["nas"].record.pending == ["create"]
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations("nas") == ["create"]  # the request that was known
    assert runner.operations("pc") == ["create", "prune", "stats"]  # due as ever
    saved = json.loads((tmp_path / "state.json").read_text())["drones"]
    assert saved["nas"]["pending"] == []
    assert saved["pc"]["running"] is None


async def test_an_unwritable_state_file_is_a_problem_never_a_failed_backup(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state file's directory should be")
    runner, clock = ScriptedRunner(), Clock()
    config = replace(
        make_config(tmp_path, nas={"mode": "manual"}), state_file=blocker / "state.json"
    )
    coordinator, port = await started(config, runner, clock)  # the first save fails already
    assert await coordinator.request("nas", Operation.CREATE) == "started"  # does not raise
    await coordinator.wait_idle()
    # The backup is reported as what it was: a success.
    assert port.of("backup_coordinator_finished")[-1]["ok"] is True
    assert port.state("sensor.borg_nas_state") == "idle"
    assert port.state("sensor.borg_nas_last_backup") == START.isoformat(timespec="seconds")
    assert port.state("sensor.borg_nas_last_error") == "none"
    # The failed save is a problem in HA, notified, and logged.
    assert port.state("binary_sensor.borg_nas_problem") == "on"
    reason = port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
    assert "state file" in reason
    assert "cannot be written" in reason
    assert "borg_nas_problem" in port.notifications
    assert any(line.startswith("ERROR") and "state file" in line for line in port.lines)
    # Space is back: the next tick saves, and the problem clears.
    blocker.unlink()
    await coordinator.tick()
    assert port.state("binary_sensor.borg_nas_problem") == "off"
    assert "borg_nas_problem" not in port.notifications
    saved = json.loads((blocker / "state.json").read_text())
    assert saved["drones"]["nas"]["last_backup"].startswith("2026-11-01T12:00")


async def test_a_last_backup_in_the_future_is_a_problem_and_the_backup_runs(
    tmp_path: Path,
) -> None:
    future = START + timedelta(days=400)
    write_state(tmp_path, {"nas": {"last_backup": future.isoformat()}})
    runner, clock = ScriptedRunner(), Clock()
    coordinator, port = await started(make_config(tmp_path, nas={}), runner, clock)
    assert port.state("binary_sensor.borg_nas_problem") == "on"
    reason = port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
    assert "in the future" in reason
    assert "borg_nas_problem" in port.notifications
    assert any("in the future" in line for line in port.lines)
    assert port.state("sensor.borg_nas_next_backup") == START.isoformat(timespec="seconds")
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "prune", "stats"]
    assert port.state("sensor.borg_nas_last_backup") == START.isoformat(timespec="seconds")
    assert port.state("binary_sensor.borg_nas_problem") == "off"
    assert [e["raised"] for e in port.of("backup_coordinator_problem")] == [True, False]


async def test_a_retry_time_beyond_any_backoff_is_a_problem_and_the_backup_runs(
    tmp_path: Path,
) -> None:
    write_state(
        tmp_path,
        {
            "nas": {
                "last_backup": (START - timedelta(days=2)).isoformat(),
                "backoff_until": (START + timedelta(days=400)).isoformat(),
            }
        },
    )
    runner, clock = ScriptedRunner(), Clock()
    coordinator, port = await started(make_config(tmp_path, nas={}), runner, clock)
    assert "the clock jumped" in port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "prune", "stats"]
    assert port.state("binary_sensor.borg_nas_problem") == "off"


async def test_a_recorded_time_slightly_ahead_is_clock_drift_not_a_problem(tmp_path: Path) -> None:
    write_state(tmp_path, {"nas": {"last_backup": (START + timedelta(minutes=2)).isoformat()}})
    runner, clock = ScriptedRunner(), Clock()
    coordinator, port = await started(make_config(tmp_path, nas={}), runner, clock)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert port.state("binary_sensor.borg_nas_problem") == "off"
    assert runner.operations() == []  # backed up two minutes "ago": not due


async def test_a_restart_during_prune_finishes_prune_and_stats_in_one_session(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "prune")] = blocking(runner)
    config = make_config(tmp_path, nas={})
    coordinator, _ = await started(config, runner, clock)
    await coordinator.tick()
    await calls_reach(runner, 2)  # create ended, prune runs
    await coordinator.stop()
    saved = json.loads((tmp_path / "state.json").read_text())["drones"]["nas"]
    assert saved["running"]["done"] == ["create"]

    clock.advance(minutes=1)
    runner2 = ScriptedRunner()
    runner2.behaviours[("nas", "stats")] = blocking(runner2)
    restarted, port = await started(config, runner2, clock)
    record = restarted.drones["nas"].record
    assert record.last_error == (
        "scheduled was interrupted after create (the coordinator stopped while it ran)"
    )
    await restarted.tick()
    await calls_reach(runner2, 2)  # prune ended, stats runs
    assert runner2.sessions == [("nas", "sequence")]
    assert runner2.calls[0][2]["steps"] == ["prune", "stats"]
    assert port.state("sensor.borg_nas_last_prune") != "unknown"
    await restarted.stop()  # interrupted again, now during stats

    runner3 = ScriptedRunner()
    again, port = await started(config, runner3, clock)
    await again.tick()
    await again.wait_idle()
    assert runner3.sessions == [("nas", "stats")]
    assert port.state("sensor.borg_nas_total_size") == f"{2000 / MIB:.2f}"
    assert port.of("backup_coordinator_finished")[-1]["ok"] is True
    assert again.drones["nas"].record.resume is None
    await again.tick()
    await again.wait_idle()
    assert runner3.sessions == [("nas", "stats")]  # nothing more is due


async def test_a_request_for_what_runs_now_is_already_running_not_queued(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = blocking(runner)
    coordinator, port = await started(make_config(tmp_path, nas={"mode": "manual"}), runner, clock)
    assert await coordinator.request("nas", Operation.CREATE) == "started"
    await calls_reach(runner, 1)
    assert await coordinator.request("nas", Operation.CREATE) == "already running"
    assert await coordinator.request("nas", Operation.SCHEDULED) == "queued"  # more than runs
    runner.release.set()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "create", "prune", "stats"]
    outcomes = [e["outcome"] for e in port.of("backup_coordinator_request")]
    assert outcomes == ["started", "already running", "queued"]
    assert any("create requested: already running" in line for line in port.lines)


async def test_steps_still_to_come_in_a_scheduled_backup_are_already_running(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "prune")] = blocking(runner)
    coordinator, _ = await started(make_config(tmp_path, nas={}), runner, clock)
    await coordinator.tick()
    await calls_reach(runner, 2)  # create ended, prune runs
    assert await coordinator.request("nas", Operation.PRUNE) == "already running"
    assert await coordinator.request("nas", Operation.STATS) == "already running"
    assert await coordinator.request("nas", Operation.CREATE) == "queued"  # that one has ended
    runner.release.set()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "prune", "stats", "create"]


@pytest.mark.parametrize(
    "done", [["bogus"], ["prune"], ["create", "prune", "stats"]], ids=["unknown", "order", "all"]
)
async def test_a_resume_that_does_not_fit_its_operation_runs_it_whole(
    tmp_path: Path, done: list[str]
) -> None:
    resume = {"operation": "scheduled", "started": START.isoformat(), "requested": True}
    write_state(tmp_path, {"nas": {"pending": ["scheduled"], "resume": {**resume, "done": done}}})
    runner, clock = ScriptedRunner(), Clock()
    coordinator, port = await started(make_config(tmp_path, nas={"mode": "manual"}), runner, clock)
    assert any("cannot resume" in line for line in port.lines if line.startswith("WARNING"))
    assert coordinator.drones["nas"].record.resume is None
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "prune", "stats"]


async def test_a_first_sighting_in_the_future_does_not_silence_overdue(tmp_path: Path) -> None:
    write_state(tmp_path, {"nas": {"first_seen": (START + timedelta(days=400)).isoformat()}})
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = failing(FailureKind.UNREACHABLE)
    config = replace(make_config(tmp_path, nas={"frequency": 60}), overdue_factor=2.0)
    coordinator, port = await started(config, runner, clock)
    clock.advance(minutes=121)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert "overdue" in port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
