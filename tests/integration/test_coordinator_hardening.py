"""The coordinator fails closed and never stops silently, against the real parts.

Real sshd on 127.0.0.1, the real agent and borg: a host that echoes the job back (the
passphrase arrives JSON-escaped, quoted and cut short) leaks nothing; a state file on a full
disk is a problem in HA while the backup is reported as it happened; an AppDaemon restart in the
middle of a scheduled backup's prune finishes prune and stats, and nothing else, after it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_coordinator.model import Operation
from backup_coordinator.ports import EVENT_FINISHED
from tests.integration.coordinator_support import (
    ShiftedClock,
    drone_args,
    eventually,
    make_config,
    settle,
    started_coordinator,
)
from tests.integration.test_coordinator_sessions import borg_running, pausing_drone_host
from tests.integration.transport_support import started_drone_host
from tests.secret_forms import everything_shown, leaks

pytestmark = pytest.mark.integration

# Quotes, backslashes and non-ASCII (escaped in JSON and by repr), long enough that the
# 200-character slice of a quoted agent line cuts it in the middle.
TRICKY_PASSPHRASE = 'it\'s "quoted" back\\slash é 東京 😀 ' * 5 + "end"


async def test_a_passphrase_echoed_by_the_host_leaves_no_trace(tmp_path: Path) -> None:
    """The forced command is not the agent but ``cat``: it prints the job, passphrase included."""
    with started_drone_host(tmp_path / "echo", ["/bin/cat"]) as host:
        config = make_config(
            tmp_path,
            {"nas": drone_args(host, passphrase=TRICKY_PASSPHRASE, mode="manual")},
        )
        coordinator, port, _ = await started_coordinator(config, ShiftedClock())
        await coordinator.request("nas", Operation.CREATE)
        await settle(coordinator)
        finished = port.of(EVENT_FINISHED)[-1]
        assert finished["ok"] is False
        assert finished["error"]["kind"] == "agent"
        assert "it printed" in finished["error"]["message"]
        assert "passphrase" in finished["error"]["message"]  # the echoed job is quoted ...
        await coordinator.stop()
        shown = everything_shown(port, config.state_file)
        assert leaks(TRICKY_PASSPHRASE, shown) == []  # ... with its passphrase masked


@contextlib.contextmanager
def full_tmpfs(mountpoint: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled to the last byte; unmounted after. Yields the filler file."""
    mountpoint.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)], check=True)
    try:
        filler = mountpoint / "filler"
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as stream:
            while True:  # until ENOSPC
                stream.write(b"\0" * 4096)
        yield filler
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


async def test_a_state_file_on_a_full_disk_is_a_problem_and_the_backup_counts(
    tmp_path: Path,
) -> None:
    with (
        started_drone_host(tmp_path / "nas") as host,
        full_tmpfs(tmp_path / "appdaemon") as filler,
    ):
        config = make_config(
            tmp_path,
            {"nas": drone_args(host, mode="manual")},
            state_file=str(filler.parent / "state.json"),
        )
        coordinator, port, runner = await started_coordinator(config, ShiftedClock())
        assert await coordinator.request("nas", Operation.CREATE) == "started"
        await settle(coordinator)
        assert runner.outcomes == [("nas", "create", "ok")], runner.errors
        assert len(host.archives()) == 1
        assert port.of(EVENT_FINISHED)[-1]["ok"] is True
        assert port.state("sensor.borg_nas_state") == "idle"
        assert port.state("sensor.borg_nas_last_backup") != "unknown"
        reason = port.states["binary_sensor.borg_nas_problem"].attributes["reason"]
        assert "cannot be written" in reason
        assert "No space left on device" in reason
        assert "borg_nas_problem" in port.notifications
        assert not config.state_file.exists()

        filler.unlink()  # space is back
        await coordinator.tick()
        assert port.state("binary_sensor.borg_nas_problem") == "off"
        assert "borg_nas_problem" not in port.notifications
        assert '"last_backup": "20' in config.state_file.read_text()
        await coordinator.stop()


async def test_a_restart_during_prune_runs_prune_and_stats_only(tmp_path: Path) -> None:
    context, marker = pausing_drone_host(tmp_path / "nas", "prune")
    with context as host:
        config = make_config(tmp_path, {"nas": drone_args(host, lock_wait=120)})
        clock = ShiftedClock()
        coordinator, _, runner = await started_coordinator(config, clock)
        await coordinator.tick()
        await eventually(marker.exists, "another borg to hold the lock at prune")
        holder = int(marker.read_text())
        await eventually(lambda: borg_running(host, "prune"), "borg prune to wait for the lock")
        await coordinator.stop()  # AppDaemon stops the app: the agent stops borg
        assert runner.outcomes == [("nas", "create", "ok"), ("nas", "prune", "CancelledError")]
        os.killpg(holder, signal.SIGTERM)
        await eventually(lambda: not host.borg_processes(), "every borg to end on the drone")
        await eventually(host.lock_is_free, "the repository lock to be released")

        restarted, port, runner = await started_coordinator(config, clock)
        assert "interrupted after create" in port.state("sensor.borg_nas_last_error")
        await restarted.tick()
        await settle(restarted)
        assert runner.sessions == [("nas", "sequence")]
        assert runner.outcomes == [("nas", "prune", "ok"), ("nas", "stats", "ok")], runner.errors
        assert len(host.archives()) == 1  # no second create
        record = restarted.drones["nas"].record
        assert record.last_prune is not None
        assert record.archive_count == 1
        assert port.state("sensor.borg_nas_state") == "idle"
        await restarted.tick()
        await settle(restarted)
        assert runner.sessions == [("nas", "sequence")]  # nothing else is due
        await restarted.stop()
