"""Offsite copies in the coordinator: scheduled around the backups that write the repositories,
with an in-memory Home Assistant port and a scripted agent runner."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from backup_coordinator.config import Config, parse_config
from backup_coordinator.coordinator import Coordinator
from backup_coordinator.model import CopyOperation, Operation
from backup_coordinator.protocol import CopyProgress, FailureKind, Result
from tests.memory_port import MemoryPort
from tests.unit.test_coordinator import (
    START,
    Clock,
    ScriptedRunner,
    blocking,
    calls_reach,
    failing,
)

DAY = timedelta(days=1)


def offsite_config(tmp_path: Path, drone_mode: str = "manual", **target: Any) -> Config:
    """Two drones backing up into the NAS, the NAS's own drone, one target copying all three."""
    return parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "progress_interval": 1,
            "ssh": {"client_key": "/keys/id", "known_hosts": "/keys/known_hosts"},
            "defaults": {"mode": drone_mode},
            "drones": {
                "laptop": {
                    "host": "laptop",
                    "repository": "ssh://borg@nas/srv/laptop",
                    "paths": ["/home"],
                },
                "desktop": {
                    "host": "desktop",
                    "repository": "nas:/srv/desktop",
                    "paths": ["/home"],
                },
                "nas": {"host": "nas", "repository": "/srv/nas", "paths": ["/etc"]},
            },
            "offsite": {
                "cloud": {
                    "host": "nas",
                    "repositories": ["/srv/laptop", "/srv/desktop", "/srv/nas"],
                    "destination": "b2:bucket/borg",
                    "tool": "rclone",
                    **target,
                }
            },
        },
        tmp_path,
    )


async def started(
    config: Config, runner: ScriptedRunner, clock: Clock
) -> tuple[Coordinator, MemoryPort]:
    port = MemoryPort()
    coordinator = Coordinator(config, port, runner, clock=clock, monotonic=clock.monotonic)
    await coordinator.start({})
    return coordinator, port


def copied(runner: ScriptedRunner) -> list[str]:
    return [job["repositories"][0] for _, op, job in runner.calls if op == "offsite"]


def copy_result(repository: str, size: int = 1000) -> Result:
    return Result(
        "offsite",
        ok=True,
        rc=0,
        data={
            "repositories": [
                {
                    "repository": repository,
                    "destination": "b2:bucket/borg/x",
                    "bytes": size,
                    "files": 3,
                    "duration": 1.0,
                    "verified": True,
                }
            ],
            "bytes": size,
            "files": 3,
        },
    )


async def copying(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
    repository = job["repositories"][0]
    await on_event(CopyProgress(1.0, repository, "copy", 500, 1000, 100.0, 5.0, 1, 3))
    return copy_result(repository)


async def test_the_target_is_copied_one_repository_per_session_with_its_job(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "offsite")] = copying
    coordinator, port = await started(
        offsite_config(tmp_path, tool_options=["--transfers=4"], max_delete=20, mode="manual"),
        runner,
        clock,
    )
    assert port.state("sensor.borg_cloud_state") == "idle"
    assert port.state("sensor.borg_cloud_last_offsite") == "unknown"
    assert await coordinator.request("cloud", CopyOperation.OFFSITE) == "started"
    await coordinator.wait_idle()
    assert copied(runner) == ["/srv/laptop", "/srv/desktop", "/srv/nas"]
    job = next(job for _, op, job in runner.calls if op == "offsite")
    assert job["tool"] == "rclone"
    assert job["destination"] == "b2:bucket/borg"
    assert job["tool_options"] == ["--transfers=4"]
    assert job["max_delete"] == 20
    assert job["keep_replaced"] is False
    assert "passphrase" not in job
    assert "repository" not in job
    assert port.state("sensor.borg_cloud_last_offsite") == START.isoformat(timespec="seconds")
    assert port.states["sensor.borg_cloud_last_copy_size"].attributes["bytes"] == 3000
    assert port.state("sensor.borg_cloud_state") == "idle"
    finished = port.of("backup_coordinator_finished")[-1]
    assert finished["ok"] is True
    assert finished["operation"] == "offsite"
    progress = port.of("backup_coordinator_progress")
    assert {p["repository"] for p in progress} == {"/srv/laptop", "/srv/desktop", "/srv/nas"}
    assert any(p["percent"] == 50.0 for p in progress)
    assert all(p["percent"] == 100.0 for p in progress if p["final"])
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["offsite"]["targets"]["cloud"]["last_copy"].startswith("2026-11-01T12:00")


async def test_a_copy_waits_for_the_backup_running_on_its_repository(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("laptop", "create")] = blocking(runner)
    coordinator, port = await started(
        offsite_config(tmp_path, mode="manual", repositories=["/srv/laptop"]), runner, clock
    )
    assert await coordinator.request("laptop", Operation.CREATE) == "started"
    await calls_reach(runner, 1)
    assert await coordinator.request("cloud", CopyOperation.OFFSITE) == "started"
    await state_becomes(port, "sensor.borg_cloud_state", "waiting")
    assert copied(runner) == []
    # While the copy waits for it, no new work starts on the repository.
    assert await coordinator.request("laptop", Operation.PRUNE) == "queued"
    runner.release.set()
    await coordinator.wait_idle()
    order = [op for _, op, _ in runner.calls]
    assert order == ["create", "offsite", "prune"]


async def test_no_backup_starts_on_a_repository_while_it_is_copied(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "offsite")] = blocking(runner)
    config = offsite_config(tmp_path, "scheduled", mode="manual", repositories=["/srv/laptop"])
    coordinator, port = await started(config, runner, clock)
    assert await coordinator.request("cloud", CopyOperation.OFFSITE) == "started"
    await calls_reach(runner, 1)
    await coordinator.tick()  # every drone is due; laptop's repository is being copied
    await calls_reach(runner, 1 + 2 * 3)
    assert sorted(h for h, op, _ in runner.calls if op == "create") == ["desktop", "nas"]
    assert port.state("sensor.borg_laptop_state") == "offsite"
    assert port.state("sensor.borg_cloud_state") == "copying"
    runner.release.set()
    await coordinator.wait_idle()
    assert [h for h, op, _ in runner.calls if op == "create"][-1] == "laptop"
    assert port.state("sensor.borg_laptop_state") == "idle"


async def test_after_backups_the_copy_waits_for_every_writer(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "offsite")] = copying
    config = offsite_config(tmp_path, repositories=["/srv/laptop", "/srv/desktop"])
    coordinator, port = await started(config, runner, clock)
    await coordinator.tick()  # never copied: due at once
    await coordinator.wait_idle()
    assert copied(runner) == ["/srv/laptop", "/srv/desktop"]
    # A day later the copy is due by its frequency, but manual drones do not hold it...
    clock.advance(days=1)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert len(copied(runner)) == 4
    # ...scheduled ones do, until each has backed up since the last copy.
    await coordinator.apply_setting(None, "global_mode", "paused")  # backups only on request
    for name in ("laptop", "desktop"):
        await coordinator.apply_setting(name, "mode", "scheduled")
    clock.advance(days=1)
    await coordinator.tick()
    waiting = port.states["sensor.borg_cloud_next_offsite"].attributes["waiting_for"]
    assert sorted(waiting) == ["desktop", "laptop"]
    await coordinator.request("laptop", Operation.SCHEDULED)
    await coordinator.wait_idle()
    await coordinator.tick()
    waiting = port.states["sensor.borg_cloud_next_offsite"].attributes["waiting_for"]
    assert waiting == ["desktop"]
    await coordinator.request("desktop", Operation.SCHEDULED)
    await coordinator.wait_idle()
    await coordinator.tick()
    assert port.states["sensor.borg_cloud_next_offsite"].attributes["waiting_for"] == []
    assert len(copied(runner)) == 4
    await coordinator.apply_setting(None, "global_mode", "running")
    await coordinator.tick()
    await coordinator.wait_idle()
    assert len(copied(runner)) == 6


async def test_a_failing_copy_backs_off_and_raises_the_targets_problem(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "offsite")] = failing(FailureKind.BORG_ERROR, "rclone exited 7")
    for name in ("laptop", "desktop", "nas"):
        runner.behaviours[(name, "create")] = failing(FailureKind.UNREACHABLE)
    config = offsite_config(tmp_path, "scheduled", after_backups=False)
    coordinator, port = await started(config, runner, clock)
    await coordinator.tick()
    await coordinator.wait_idle()
    assert copied(runner) == ["/srv/laptop"]  # the first failure ends the copy
    assert port.state("binary_sensor.borg_cloud_problem") == "on"
    assert "rclone exited 7" in port.states["binary_sensor.borg_cloud_problem"].attributes["reason"]
    assert port.state("sensor.borg_cloud_state") == "error"
    assert port.state("sensor.borg_cloud_last_error") == "rclone exited 7"
    assert "cloud" in port.states["sensor.borg_failing"].attributes["drones"]
    finished = [e for e in port.of("backup_coordinator_finished") if e["drone"] == "cloud"][-1]
    assert finished["ok"] is False
    assert finished["error"]["repository"] == "/srv/laptop"
    await coordinator.tick()  # backing off: one minute
    await coordinator.wait_idle()
    assert len(copied(runner)) == 1
    clock.advance(minutes=1)
    runner.behaviours[("nas", "offsite")] = copying
    await coordinator.tick()
    await coordinator.wait_idle()
    assert len(copied(runner)) == 4
    assert port.state("binary_sensor.borg_cloud_problem") == "off"
    assert "borg_cloud_problem" in port.notified
    assert "borg_cloud_problem" not in port.notifications  # withdrawn


async def test_an_interrupted_copy_runs_again_after_a_restart(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    runner.behaviours[("nas", "offsite")] = blocking(runner)
    config = offsite_config(tmp_path, mode="manual")
    coordinator, _ = await started(config, runner, clock)
    await coordinator.request("cloud", CopyOperation.OFFSITE)
    await calls_reach(runner, 1)
    await coordinator.stop()
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["offsite"]["targets"]["cloud"]["running"] is not None
    second = ScriptedRunner()
    coordinator, port = await started(config, second, clock)
    assert port.state("sensor.borg_cloud_last_error").startswith("the offsite copy was interrupted")
    await coordinator.tick()
    await coordinator.wait_idle()
    assert copied(second) == ["/srv/laptop", "/srv/desktop", "/srv/nas"]


async def test_target_settings_from_home_assistant_are_validated(tmp_path: Path) -> None:
    runner, clock = ScriptedRunner(), Clock()
    coordinator, port = await started(offsite_config(tmp_path), runner, clock)
    assert await coordinator.apply_setting("cloud", "frequency", "abc") is False
    assert port.state("binary_sensor.borg_cloud_problem") == "on"
    assert await coordinator.apply_setting("cloud", "frequency", "60") is True
    assert await coordinator.apply_setting("cloud", "mode", "disabled") is True
    assert port.state("binary_sensor.borg_cloud_problem") == "off"
    assert (await coordinator.request("cloud", CopyOperation.OFFSITE)).startswith("rejected")
    assert port.state("sensor.borg_cloud_next_offsite") == "unknown"


async def state_becomes(port: MemoryPort, entity_id: str, state: str) -> None:
    """Waits, with a deadline, until the entity shows ``state`` (a save runs in a thread)."""
    async with asyncio.timeout(5):
        while entity_id not in port.states or port.state(entity_id) != state:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
