"""Offsite copies for real: the coordinator with ``transport.run_agent``, loopback drones (real
sshd forcing the real agent), real borg and rclone. Two drones back up into one repository on
the host ``alpha``, whose agent also copies it offsite into a local folder."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backup_coordinator.config import Config
from backup_coordinator.model import CopyOperation
from backup_coordinator.ports import EVENT_FINISHED, EVENT_PROGRESS
from devstack.borg import list_archives
from tests.integration.coordinator_support import (
    RecordingRunner,
    ShiftedClock,
    drone_args,
    drone_hosts,
    host_settled,
    make_config,
    settle,
    started_coordinator,
)
from tests.integration.transport_support import PASSPHRASE, DroneHost
from tests.memory_port import MemoryPort

pytestmark = pytest.mark.integration

TARGET = "vault"


def offsite_args(host: DroneHost, destination: Path, **changes: Any) -> dict[str, Any]:
    ssh = drone_args(host)
    return {
        **{key: ssh[key] for key in ("host", "port", "user", "client_key", "known_hosts")},
        "repositories": [str(host.repository)],
        "destination": str(destination),
        "tool": "rclone",
        "lock_wait": 5,
        **changes,
    }


def shared_repository_config(
    tmp_path: Path, hosts: dict[str, DroneHost], destination: Path | None = None, **target: Any
) -> Config:
    """alpha and bravo back up into alpha's repository; the target copies it."""
    alpha, bravo = hosts["alpha"], hosts["bravo"]
    return make_config(
        tmp_path,
        {
            "alpha": drone_args(alpha),
            "bravo": drone_args(bravo, repository=str(alpha.repository), lock_wait=30),
        },
        max_concurrent=2,  # only the repository keeps them apart
        offsite={TARGET: offsite_args(alpha, destination or tmp_path / "offsite", **target)},
    )


def copies(runner: RecordingRunner) -> list[int]:
    """Indexes of the offsite sessions among all sessions, in order."""
    return [i for i, (_, operation) in enumerate(runner.sessions) if operation == "offsite"]


def finished_copies(port: MemoryPort) -> list[dict[str, Any]]:
    return [e for e in port.of(EVENT_FINISHED) if e["drone"] == TARGET]


async def test_the_copy_waits_for_both_writers_never_overlaps_them_and_opens_with_borg(
    tmp_path: Path,
) -> None:
    with drone_hosts(tmp_path, ["alpha", "bravo"]) as hosts:
        config = shared_repository_config(tmp_path, hosts)
        clock = ShiftedClock()
        coordinator, port, runner = await started_coordinator(config, clock)
        for _ in range(4):  # alpha, bravo (one repository: one at a time), then the copy
            await coordinator.tick()
            await settle(coordinator)
        assert [s for s in runner.sessions if s[1] == "sequence"] == [
            ("alpha", "sequence"),
            ("bravo", "sequence"),
        ]
        assert copies(runner) == [2], runner.sessions
        assert runner.max_active == 1, "a copy and a backup of one repository overlapped"
        (first,) = finished_copies(port)
        assert first["ok"] is True, first
        (entry,) = first["results"]["offsite"]["repositories"]
        assert entry["verified"] is True
        alpha = hosts["alpha"]
        copy = tmp_path / "offsite" / alpha.repository.name
        assert list_archives(copy, PASSPHRASE, tmp_path / "borg-of-the-copy") == alpha.archives()
        progress = [e for e in port.of(EVENT_PROGRESS) if e["drone"] == TARGET]
        assert progress, "the copy reported progress"
        assert progress[-1]["final"] is True
        assert progress[-1]["repository"] == str(alpha.repository)
        assert port.state(f"sensor.borg_{TARGET}_state") == "idle"
        assert port.state(f"binary_sensor.borg_{TARGET}_problem") == "off"

        # A day later: one new backup each, then the copy sends only what changed.
        clock.advance(timedelta(days=1, minutes=1))
        for _ in range(4):
            await coordinator.tick()
            await settle(coordinator)
        assert len(copies(runner)) == 2, runner.sessions
        second = finished_copies(port)[-1]
        assert second["ok"] is True, second
        assert second["results"]["offsite"]["bytes"] < first["results"]["offsite"]["bytes"]
        assert list_archives(copy, PASSPHRASE, tmp_path / "borg-of-the-copy") == alpha.archives()
        assert runner.max_active == 1
        await coordinator.stop()
        await host_settled(alpha)


async def test_a_failing_copy_backs_off_raises_the_problem_and_clears_once_a_copy_works(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the destination's folder should be\n")
    with drone_hosts(tmp_path, ["alpha", "bravo"]) as hosts:
        config = shared_repository_config(tmp_path, hosts, blocked, mode="manual")
        clock = ShiftedClock()
        coordinator, port, _ = await started_coordinator(config, clock)
        for name in ("alpha", "bravo"):
            await coordinator.apply_setting(name, "mode", "manual")
        assert await coordinator.request(TARGET, CopyOperation.OFFSITE) == "started"
        await settle(coordinator)
        (failed,) = finished_copies(port)
        assert failed["ok"] is False
        assert failed["error"]["repository"] == str(hosts["alpha"].repository)
        assert port.state(f"binary_sensor.borg_{TARGET}_problem") == "on"
        assert port.state(f"sensor.borg_{TARGET}_state") == "error"
        target = coordinator.targets[TARGET]
        assert target.record.backoff_until is not None
        assert target.record.consecutive_failures == 1
        assert f"borg_{TARGET}_problem" in port.notifications
        await host_settled(hosts["alpha"])  # nothing left running, the lock released

        blocked.unlink()  # the destination can be written now: a person's request copies
        assert await coordinator.request(TARGET, CopyOperation.OFFSITE) == "started"
        await settle(coordinator)
        assert finished_copies(port)[-1]["ok"] is True, finished_copies(port)[-1]
        assert port.state(f"binary_sensor.borg_{TARGET}_problem") == "off"
        assert f"borg_{TARGET}_problem" not in port.notifications
        assert target.record.backoff_until is None
        await coordinator.stop()
