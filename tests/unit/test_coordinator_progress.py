"""What the coordinator shows of running work (progress, the active step, the next backup) and
what it logs of it, with an in-memory Home Assistant port and a scripted agent runner."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backup_coordinator.coordinator import Coordinator
from backup_coordinator.model import CopyOperation, Operation
from backup_coordinator.protocol import FailureKind, OperationFailed, Progress, Result
from tests.memory_port import MemoryPort
from tests.unit.test_coordinator import (
    START,
    Behaviour,
    Clock,
    ScriptedRunner,
    calls_reach,
    failing,
    make_config,
    ok_result,
    started,
)
from tests.unit.test_offsite_coordinator import copying, offsite_config, state_becomes
from tests.unit.test_offsite_coordinator import started as started_with_offsite
from tests.unit.test_verification import drill_ok


def gated(gate: asyncio.Event, *lines: Progress, clock: Clock | None = None) -> Behaviour:
    """Sends ``lines`` as progress (a second apart on ``clock``, so none is throttled), then
    waits for ``gate`` before it succeeds."""

    async def behave(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        for progress in lines:
            if clock is not None:
                clock.advance(seconds=1)
            await on_event(progress)
        await gate.wait()
        return ok_result(operation)

    return behave


def line(files: int, size: int, path: str) -> Progress:
    return Progress("create", 0.0, files, size, size, size, path)


async def test_a_new_run_starts_from_its_own_estimate_never_the_last_runs_100(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    coordinator, port = await started(make_config(tmp_path, nas={"mode": "manual"}), runner, clock)
    await coordinator.request("nas", Operation.CREATE)
    await coordinator.wait_idle()
    assert port.state("sensor.borg_progress") == "idle"
    assert port.state("sensor.borg_nas_progress") == "unknown"

    gate = asyncio.Event()
    runner.behaviours[("nas", "create")] = gated(gate)
    await coordinator.request("nas", Operation.CREATE)
    await calls_reach(runner, 2)
    # The previous archive (1000 bytes, 3 files) is this run's estimate: nothing read yet.
    assert port.state("sensor.borg_progress") == "0.0"
    assert port.states["sensor.borg_progress"].attributes["expected_size"] == 1000
    assert port.states["sensor.borg_progress"].attributes["unit_of_measurement"] == "%"
    assert port.state("sensor.borg_nas_progress") == "0.0"
    gate.set()
    await coordinator.wait_idle()
    assert port.history("sensor.borg_progress")[-2:] == ["0.0", "idle"]  # no progress came


async def test_a_run_outgrowing_its_estimate_shows_files_then_unknown(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    gate = asyncio.Event()
    runner.behaviours[("nas", "create")] = gated(
        gate, line(1, 2000, "a"), line(2, 3000, "b"), line(4, 4000, "c"), clock=clock
    )
    coordinator, port = await started(make_config(tmp_path, nas={"mode": "manual"}), runner, clock)
    coordinator.drones["nas"].record.last_archive = {"original_size": 1000, "nfiles": 3}
    await coordinator.request("nas", Operation.CREATE)
    await calls_reach(runner, 1)
    await state_becomes(port, "sensor.borg_nas_current_file", "c")
    # More bytes than last time: by files (1 of 3, 2 of 3), then more files too: unknown.
    assert [e["percent"] for e in port.of("backup_coordinator_progress")] == [
        pytest.approx(100 / 3),
        pytest.approx(200 / 3),
        None,
    ]
    assert port.history("sensor.borg_nas_progress")[1:] == ["0.0", "33.3", "66.7", "unknown"]
    assert port.state("sensor.borg_nas_eta") == "unknown"
    assert port.states["sensor.borg_nas_progress"].attributes["expected_files"] == 4
    gate.set()
    await coordinator.wait_idle()
    assert port.history("sensor.borg_nas_progress")[-2:] == ["100.0", "unknown"]


async def test_each_step_shows_at_once_in_active_state_and_progress(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    create_gate, prune_gate = asyncio.Event(), asyncio.Event()
    runner.behaviours[("nas", "create")] = gated(create_gate, line(1, 10, "home/a"))
    runner.behaviours[("nas", "prune")] = gated(prune_gate)
    coordinator, port = await started(make_config(tmp_path, nas={}), runner, clock)
    await coordinator.tick()
    # Published by the tick that started it, before the agent answered anything.
    assert port.state("sensor.borg_active") == "nas: create"
    await calls_reach(runner, 1)
    assert port.state("sensor.borg_nas_state") == "creating"
    assert port.state("sensor.borg_nas_current_file") == "home/a"
    create_gate.set()
    await calls_reach(runner, 2)
    assert port.state("sensor.borg_active") == "nas: prune"
    assert port.state("sensor.borg_nas_state") == "pruning"
    # prune says nothing of its progress: unknown, and nothing of the create's 100 %.
    assert port.state("sensor.borg_progress") == "unknown"
    assert port.states["sensor.borg_progress"].attributes["operation"] == "prune"
    assert port.state("sensor.borg_nas_progress") == "unknown"
    assert port.state("sensor.borg_nas_current_file") == "unknown"
    prune_gate.set()
    await coordinator.wait_idle()
    assert port.state("sensor.borg_active") == "idle"
    assert port.state("sensor.borg_progress") == "idle"
    assert "starting" not in " ".join(port.history("sensor.borg_active"))


async def test_after_a_failed_backup_the_next_backup_is_the_retry_and_it_runs_then(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "create")] = failing(FailureKind.BORG_ERROR)
    coordinator, port = await started(make_config(tmp_path, nas={"frequency": 60}), runner, clock)
    await coordinator.tick()
    await coordinator.wait_idle()
    retry = START + timedelta(minutes=1)
    assert coordinator.drones["nas"].record.backoff_until == retry
    assert port.state("sensor.borg_nas_next_backup") == retry.isoformat(timespec="seconds")
    assert port.lines[-1].endswith(f"; next run at {retry.isoformat(timespec='seconds')}")
    clock.advance(seconds=59)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create"]
    clock.advance(seconds=1)
    runner.behaviours.clear()
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "create", "prune", "stats"]
    next_backup = clock.now + timedelta(minutes=60)
    assert port.state("sensor.borg_nas_next_backup") == next_backup.isoformat(timespec="seconds")


async def test_a_failed_prune_after_a_good_backup_says_the_next_run_is_the_frequencys(
    tmp_path: Path,
) -> None:
    """The backup itself is an hour old only in an hour: the log says so, as the sensor does,
    and no backup runs again a minute later to retry the prune."""
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "prune")] = failing(FailureKind.BORG_ERROR)
    coordinator, port = await started(make_config(tmp_path, nas={"frequency": 60}), runner, clock)
    await coordinator.tick()
    await coordinator.wait_idle()
    next_run = START + timedelta(minutes=60)
    assert port.state("sensor.borg_nas_next_backup") == next_run.isoformat(timespec="seconds")
    assert port.lines[-1].endswith(f"; next run at {next_run.isoformat(timespec='seconds')}")
    clock.advance(minutes=2)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "prune"]


async def test_a_failing_offsite_copy_shows_when_it_runs_next(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    coordinator, port = await started_with_offsite(offsite_config(tmp_path), runner, clock)
    coordinator.targets["cloud"].record.last_copy = START - timedelta(minutes=5)
    runner.behaviours[("nas", "offsite")] = failing(FailureKind.UNREACHABLE)
    await coordinator.request("cloud", CopyOperation.OFFSITE)
    await coordinator.wait_idle()
    retry = coordinator.targets["cloud"].record.backoff_until
    assert retry == START + timedelta(minutes=1)
    # The last copy is 5 minutes old: the next is due a frequency after it, later than the retry.
    frequency = timedelta(minutes=coordinator.targets["cloud"].settings.frequency_minutes)
    next_copy = START - timedelta(minutes=5) + frequency
    assert next_copy > retry
    assert port.state("sensor.borg_cloud_next_offsite") == next_copy.isoformat(timespec="seconds")
    assert port.state("sensor.borg_progress") == "idle"


# --- one log line per operation start and one per end -----------------------------------------


async def _crash(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
    raise RuntimeError("a bug")


OPERATIONS = ["create", "prune", "stats", "check", "drill", "scheduled", "extract"]


def lines_of(port: MemoryPort, name: str, label: str) -> list[str]:
    """The log lines about one operation's run (not its request)."""
    return [line for line in port.lines if f" {name}: {label} " in line and "requested" not in line]


async def run_once(tmp_path: Path, operation: str, behaviour: Behaviour | None) -> MemoryPort:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "drill")] = drill_ok
    first_step = "create" if operation == "scheduled" else operation
    if behaviour is not None:
        runner.behaviours[("nas", first_step)] = behaviour
    config = make_config(tmp_path, nas={"mode": "manual"})
    port = MemoryPort()
    coordinator = Coordinator(config, port, runner, clock=clock, monotonic=clock.monotonic)
    await coordinator.start({})
    if operation == "extract":
        assert await coordinator.restore({"drone": "nas", "archive": "latest"}) == "started"
    else:
        assert await coordinator.request("nas", Operation(operation)) == "started"
    await coordinator.wait_idle()
    return port


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_finished_operation_logs_one_start_and_one_end_line(
    tmp_path: Path, operation: str
) -> None:
    port = await run_once(tmp_path, operation, None)
    start, end = lines_of(port, "nas", operation)
    assert start == f"INFO nas: {operation} started on request"
    assert end.startswith(f"INFO nas: {operation} finished in ")


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_failed_operation_logs_one_start_and_one_end_line_saying_why(
    tmp_path: Path, operation: str
) -> None:
    port = await run_once(tmp_path, operation, failing(FailureKind.UNREACHABLE, "host down"))
    start, end = lines_of(port, "nas", operation)
    assert start == f"INFO nas: {operation} started on request"
    assert end.startswith(f"WARNING nas: {operation} failed after ")
    assert "(unreachable): host down" in end


async def test_a_crash_is_one_end_line_with_its_traceback(tmp_path: Path) -> None:
    port = await run_once(tmp_path, "create", _crash)
    start, end = lines_of(port, "nas", "create")
    assert start == "INFO nas: create started on request"
    assert not [line for line in port.lines if "requested: started" in line]  # one start line
    assert end.startswith("ERROR nas: create failed after ")
    assert "internal error: RuntimeError('a bug')" in end
    assert "Traceback (most recent call last)" in end


async def _copy_fails(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
    raise OperationFailed(FailureKind.BORG_ERROR, "remote full")


@pytest.mark.parametrize(
    ("behaviour", "end", "reached_100"),
    [
        (copying, "INFO cloud: offsite copy finished", True),
        (_copy_fails, "WARNING cloud: offsite copy of /srv/laptop failed", False),
    ],
)
async def test_an_offsite_copy_logs_one_start_and_one_end_line_and_ends_idle(
    tmp_path: Path, behaviour: Behaviour, end: str, reached_100: bool
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "offsite")] = behaviour
    coordinator, port = await started_with_offsite(offsite_config(tmp_path), runner, clock)
    await coordinator.request("cloud", CopyOperation.OFFSITE)
    await coordinator.wait_idle()
    start, ending = lines_of(port, "cloud", "offsite copy")
    assert start == "INFO cloud: offsite copy started on request"
    assert ending.startswith(end)
    shown = port.history("sensor.borg_progress")
    assert shown[-1] == "idle"
    assert ("100.0" in shown) is reached_100
    if reached_100:  # each repository starts afresh: unknown until the tool reports a total
        assert shown[1:5] == ["unknown", "50.0", "100.0", "idle"]
