"""Checks, restore drills and restores in the coordinator, with an in-memory Home Assistant port
and a scripted agent runner."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from backup_coordinator.coordinator import Coordinator
from backup_coordinator.model import Operation
from backup_coordinator.protocol import FailureKind, OperationFailed, Result
from backup_coordinator.verification import BadRestoreRequest, restore_request
from tests.memory_port import MemoryPort
from tests.unit.test_coordinator import Clock, ScriptedRunner, failing, make_config

DRILL_DATA = {
    "archive": "nas-2026-11-01T12:00:00",
    "files_verified": 12,
    "bytes_verified": 4096,
    "skipped_changed": 2,
    "mismatches": [],
    "mismatch_count": 0,
    "missing_canaries": [],
}


async def started(
    tmp_path: Path, runner: ScriptedRunner, clock: Clock, **nas: Any
) -> tuple[Coordinator, MemoryPort]:
    port = MemoryPort()
    config = make_config(tmp_path, nas=nas)
    coordinator = Coordinator(config, port, runner, clock=clock, monotonic=clock.monotonic)
    await coordinator.start({})
    return coordinator, port


async def drill_ok(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
    return Result("drill", ok=True, rc=0, data=DRILL_DATA)


async def drill_mismatch(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
    raise OperationFailed(FailureKind.BORG_ERROR, "DrillMismatch: 2 restored files differ", "")


async def test_check_and_drill_come_due_on_their_own_frequencies_after_the_backup(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "drill")] = drill_ok
    coordinator, port = await started(
        tmp_path, runner, clock, check={"frequency": 120}, drill={"frequency": 60, "max_files": 5}
    )
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations() == ["create", "prune", "stats"]  # none of them due yet
    clock.advance(minutes=61)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations()[3:] == ["drill"]
    job = runner.calls[-1][2]
    assert job["drill"]["max_files"] == 5
    assert job["drill"]["size_budget"] == 64 * 1024 * 1024
    restore = port.states["sensor.borg_nas_last_verified_restore"]
    assert restore.state == clock.now.isoformat(timespec="seconds")
    assert restore.attributes["files"] == 12
    assert restore.attributes["mismatches"] == 0
    assert restore.attributes["archive"] == "nas-2026-11-01T12:00:00"
    clock.advance(minutes=60)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert runner.operations()[4:] == ["check", "drill"]
    assert port.state("sensor.borg_nas_last_check") == clock.now.isoformat(timespec="seconds")
    assert port.states["sensor.borg_nas_last_check"].attributes["findings"] == 0


async def test_a_drill_finding_raises_the_problem_until_a_drill_passes_and_backups_go_on(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "drill")] = drill_mismatch
    coordinator, port = await started(tmp_path, runner, clock, mode="manual")
    await coordinator.request("nas", Operation.DRILL)
    await coordinator.wait_idle()
    assert port.state("binary_sensor.borg_nas_problem") == "on"
    reason = port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
    assert reason == "restore drill failed: DrillMismatch: 2 restored files differ"
    record = coordinator.drones["nas"].record
    assert record.consecutive_failures == 0
    assert record.backoff_until is None
    assert port.state("sensor.borg_nas_state") == "idle"
    assert port.state("sensor.borg_nas_last_verified_restore") == "unknown"
    await coordinator.request("nas", Operation.CREATE)  # backups are not held back
    await coordinator.wait_idle()
    assert port.state("binary_sensor.borg_nas_problem") == "on"  # a backup does not clear it
    runner.behaviours[("nas", "drill")] = drill_ok
    await coordinator.request("nas", Operation.DRILL)
    await coordinator.wait_idle()
    assert port.state("binary_sensor.borg_nas_problem") == "off"
    assert runner.operations() == ["drill", "create", "drill"]


async def test_a_drill_that_could_not_run_is_an_ordinary_failure(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "drill")] = failing(FailureKind.UNREACHABLE, "connection refused")
    coordinator, port = await started(tmp_path, runner, clock, mode="manual")
    await coordinator.request("nas", Operation.DRILL)
    await coordinator.wait_idle()
    record = coordinator.drones["nas"].record
    assert record.consecutive_failures == 1
    assert record.failed_checks == {}
    assert port.state("sensor.borg_nas_state") == "unreachable"


async def test_an_overdue_drill_raises_the_problem(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "drill")] = failing(FailureKind.UNREACHABLE)
    coordinator, port = await started(tmp_path, runner, clock, drill={"frequency": 60})
    clock.advance(minutes=121)
    await coordinator.tick()
    await coordinator.wait_idle()
    reason = port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
    assert "restore drill overdue: none passed since the coordinator started" in reason


async def test_a_restore_event_runs_extract_and_the_notification_says_where(
    tmp_path: Path,
) -> None:
    runner, clock = ScriptedRunner(), Clock()

    async def extract(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        data = {
            "archive": "nas-2026-11-01T12:00:00",
            "destination": "/var/lib/backup-drone/restore/nas-2026-11-01T12:00:00",
            "files": 3,
            "bytes": 2 * 1024 * 1024,
            "warnings": [],
            "partial": False,
        }
        return Result("extract", ok=True, rc=0, data=data)

    runner.behaviours[("nas", "extract")] = extract
    coordinator, port = await started(tmp_path, runner, clock, mode="manual")
    outcome = await coordinator.restore(
        {"drone": "nas", "archive": "latest", "paths": ["/home/zoe/thesis.odt"]}
    )
    assert outcome == "started"
    await coordinator.wait_idle()
    (job,) = [job for _, op, job in runner.calls if op == "extract"]
    assert job["archive"] == "latest"
    assert job["restore_paths"] == ["home/zoe/thesis.odt"]  # as borg stores it
    assert "destination" not in job
    assert port.notifications["borg_nas_restore"] == (
        "Restored nas-2026-11-01T12:00:00 on nas into"
        " /var/lib/backup-drone/restore/nas-2026-11-01T12:00:00: 3 files, 2.0 MiB."
    )
    finished = port.of("backup_coordinator_finished")[-1]
    assert finished["operation"] == "extract"
    assert finished["ok"] is True
    assert coordinator.drones["nas"].record.restore_request is None


async def test_a_refused_restore_is_told_and_does_not_delay_backups(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "extract")] = failing(FailureKind.REJECTED, "destination: outside")
    coordinator, port = await started(tmp_path, runner, clock, mode="manual")
    await coordinator.restore({"drone": "nas", "archive": "latest", "destination": "/etc"})
    await coordinator.wait_idle()
    message = port.notifications["borg_nas_restore"]
    assert message.startswith("The restore of latest on nas into /etc failed: destination: outside")
    assert coordinator.drones["nas"].record.consecutive_failures == 0
    assert port.state("binary_sensor.borg_nas_problem") == "off"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"drone": "nas", "paths": ["../etc/shadow"]}, "'..'"),
        ({"drone": "nas", "destination": "relative/dir"}, "absolute"),
        ({"drone": "nas", "destination": "/srv/../etc"}, "'..'"),
        ({"drone": "nas", "archive": "-rf"}, "archive"),
        ({"drone": "nas", "paths": "x\ny"}, "each path"),
        ({"drone": "nas", "passphrase": "x"}, "unknown field"),
        ({"drone": "ghost"}, "no drone named 'ghost'"),
    ],
)
async def test_a_malformed_restore_is_rejected_and_never_reaches_the_agent(
    tmp_path: Path, data: dict[str, Any], words: str
) -> None:
    runner, clock = ScriptedRunner(), Clock()
    coordinator, port = await started(tmp_path, runner, clock, mode="manual")
    outcome = await coordinator.restore(data)
    assert outcome.startswith("rejected: ")
    assert words in outcome
    await coordinator.wait_idle()
    assert runner.calls == []
    assert port.of("backup_coordinator_request")[-1]["outcome"] == outcome


async def test_one_restore_at_a_time_per_drone(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    coordinator, _ = await started(tmp_path, runner, clock, mode="disabled")
    assert (await coordinator.restore({"drone": "nas"})).startswith("rejected: the drone's mode")
    assert coordinator.drones["nas"].record.restore_request is None
    await coordinator.apply_setting("nas", "mode", "manual")
    runner.behaviours[("nas", "create")] = failing(FailureKind.UNREACHABLE)
    assert (await coordinator.restore({"drone": "nas"})) == "started"
    assert (await coordinator.restore({"drone": "nas"})).startswith("rejected: a restore")
    await coordinator.wait_idle()
    assert (await coordinator.request("nas", Operation.EXTRACT)).startswith("rejected")


def test_a_restore_request_is_what_the_agent_takes() -> None:
    assert restore_request({"drone": "nas"}) == {"archive": "latest"}
    assert restore_request(
        {
            "drone": "nas",
            "archive": "nas-2026-11-01T12:00:00.123456",
            "paths": "home/a b",
            "destination": "/srv/restore/here",
        }
    ) == {
        "archive": "nas-2026-11-01T12:00:00.123456",
        "restore_paths": ["home/a b"],
        "destination": "/srv/restore/here",
    }
    with pytest.raises(BadRestoreRequest):
        restore_request({"paths": [3]})


async def test_recent_archives_follow_creates_and_prunes(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()

    async def prune(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        kept = [f"a-2026-11-0{day}T00:00:00" for day in range(1, 4)]
        return Result("prune", ok=True, rc=0, data={"kept": kept, "pruned": []})

    runner.behaviours[("nas", "prune")] = prune
    coordinator, port = await started(tmp_path, runner, clock, mode="manual")
    await coordinator.request("nas", Operation.CREATE)
    await coordinator.wait_idle()
    recent = port.states["sensor.borg_nas_last_backup"].attributes["recent_archives"]
    assert recent == ["a-2026"]
    await coordinator.request("nas", Operation.PRUNE)
    await coordinator.wait_idle()
    recent = port.states["sensor.borg_nas_last_backup"].attributes["recent_archives"]
    assert recent == ["a-2026-11-03T00:00:00", "a-2026-11-02T00:00:00", "a-2026-11-01T00:00:00"]
