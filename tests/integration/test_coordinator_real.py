"""The real coordinator, with ``transport.run_agent`` as its runner and an in-memory HA port,
against loopback drones: real OpenSSH sshd forcing the real agent, which runs the real borg."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_coordinator.model import MIB
from backup_coordinator.ports import EVENT_FINISHED, EVENT_PROBLEM, EVENT_PROGRESS
from devstack.borg import AGENT_PATH
from tests.integration.coordinator_support import (
    BIG_DATA_MEGABYTES,
    SLOW_COMPRESSION,
    ShiftedClock,
    all_output,
    drone_args,
    drone_hosts,
    eventually,
    kill_sessions,
    link_big_data,
    make_config,
    processes_gone,
    saved_state,
    sensor_time,
    settle,
    started_coordinator,
)
from tests.integration.transport_support import PASSPHRASE, DroneHost
from tests.memory_port import MemoryPort

pytestmark = pytest.mark.integration

SCHEDULED_STEPS = ("create", "prune", "stats")


@pytest.fixture(scope="module")
def big_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few MB of random (incompressible) files, generated once for the module."""
    folder = tmp_path_factory.mktemp("big-data")
    for index in range(BIG_DATA_MEGABYTES):
        (folder / f"random-{index}.bin").write_bytes(os.urandom(1024 * 1024))
    return folder


async def host_is_quiet(host: DroneHost) -> None:
    """On the drone: borg and the agent have exited and the repository lock is free."""
    await eventually(lambda: not host.borg_processes(), "borg to stop on the drone")
    await eventually(lambda: not host.agent_processes(), "the agent to exit")
    await eventually(host.lock_is_free, "the repository lock to be released")


def assert_sizes_published(port: MemoryPort, drone: str) -> None:
    for size in ("total_size", "compressed_size", "deduplicated_size"):
        sensor = port.states[f"sensor.borg_{drone}_{size}"]
        exact = sensor.attributes["bytes"]
        assert isinstance(exact, int), (drone, size, sensor)
        assert exact > 0, (drone, size, sensor)
        assert sensor.state == f"{exact / MIB:.2f}"
        assert sensor.attributes["unit_of_measurement"] == "MiB"
        assert sensor.attributes["device_class"] == "data_size"


def installed_versions() -> tuple[str, str]:
    """The agent's version as its file declares it, and the version the host's borg reports."""
    declared = re.search(r'^AGENT_VERSION = "([^"]+)"$', AGENT_PATH.read_text(), re.MULTILINE)
    assert declared is not None
    borg = subprocess.run(["borg", "--version"], capture_output=True, text=True, check=True)
    return declared.group(1), borg.stdout.split()[-1]


def last_error_of(port: MemoryPort, drone: str) -> dict[str, object]:
    finished = port.of(EVENT_FINISHED)[-1]
    assert finished["drone"] == drone
    assert finished["ok"] is False
    error = finished["error"]
    assert isinstance(error, dict)
    return error


async def test_three_due_drones_are_backed_up_one_at_a_time_in_round_robin(
    tmp_path: Path,
) -> None:
    names = ["alpha", "bravo", "charlie"]
    with drone_hosts(tmp_path, names) as hosts:
        config = make_config(tmp_path, {name: drone_args(host) for name, host in hosts.items()})
        clock = ShiftedClock()
        coordinator, port, runner = await started_coordinator(config, clock)
        before = clock()

        await coordinator.tick()
        assert [d.name for d in coordinator.drones.values() if d.busy] == ["alpha"]
        await coordinator.tick()  # max_concurrent 1: a second tick starts no one else
        assert [d.name for d in coordinator.drones.values() if d.busy] == ["alpha"]
        assert port.states["sensor.borg_active"].attributes["drones"] == ["alpha"]
        await settle(coordinator)
        after = clock()

        # Each finished operation asks for a new decision: the next drone in name order.
        assert runner.calls == [(name, step) for name in names for step in SCHEDULED_STEPS]
        assert all(outcome == "ok" for *_, outcome in runner.outcomes), runner.errors
        assert runner.max_active == 1
        closing = [e for e in port.of(EVENT_PROGRESS) if e["final"]]
        assert [(e["drone"], e["percent"]) for e in closing] == [(name, 100.0) for name in names]
        finished = port.of(EVENT_FINISHED)
        assert [(e["drone"], e["operation"], e["ok"]) for e in finished] == [
            (name, "scheduled", True) for name in names
        ]
        state = saved_state(config)
        agent_version, borg_version = installed_versions()
        for name, host in hosts.items():
            # Each session's hello told which agent and borg the drone runs.
            assert port.state(f"sensor.borg_{name}_agent_version") == agent_version
            assert port.state(f"sensor.borg_{name}_borg_version") == borg_version
            assert state["drones"][name]["agent_version"] == agent_version
            assert state["drones"][name]["borg_version"] == borg_version
            archives = host.archives()
            assert len(archives) == 1
            assert archives[0].startswith(f"{name}-")
            record = coordinator.drones[name].record
            assert record.last_archive is not None
            assert record.last_archive["name"] == archives[0]

            assert port.state(f"sensor.borg_{name}_state") == "idle"
            assert port.state(f"binary_sensor.borg_{name}_problem") == "off"
            last_backup = sensor_time(port, f"sensor.borg_{name}_last_backup")
            assert before - timedelta(seconds=1) <= last_backup <= after
            assert (
                port.states[f"sensor.borg_{name}_last_backup"].attributes["archive"]
                == (archives[0])
            )
            assert sensor_time(port, f"sensor.borg_{name}_last_prune") >= last_backup
            next_backup = sensor_time(port, f"sensor.borg_{name}_next_backup")
            assert next_backup == last_backup + timedelta(days=1)
            assert_sizes_published(port, name)
            assert port.states[f"sensor.borg_{name}_last_backup"].attributes["archive_count"] == 1

            saved = state["drones"][name]
            assert saved["running"] is None
            assert saved["pending"] == []
            assert saved["consecutive_failures"] == 0
            assert saved["archive_count"] == 1
            assert saved["last_archive"]["name"] == archives[0]
            assert saved["repository"]["deduplicated_size"] > 0
            assert datetime.fromisoformat(saved["last_backup"]).tzinfo is not None
            assert saved["last_prune"] is not None
            assert saved["last_stats"] is not None
        assert PASSPHRASE not in config.state_file.read_text()
        assert PASSPHRASE not in all_output(port)

        # Nobody is due again before a frequency has passed.
        await coordinator.tick()
        await settle(coordinator)
        assert len(runner.calls) == 3 * len(SCHEDULED_STEPS)
        await coordinator.stop()


async def test_a_stopped_sshd_is_unreachable_backs_off_and_recovers(tmp_path: Path) -> None:
    with drone_hosts(tmp_path, ["nas"]) as hosts:
        host = hosts["nas"]
        config = make_config(tmp_path, {"nas": drone_args(host)})
        clock = ShiftedClock()
        coordinator, port, runner = await started_coordinator(config, clock)
        port_number = host.sshd.port
        host.sshd.stop()

        await coordinator.tick()
        await settle(coordinator)
        assert runner.outcomes == [("nas", "create", "OperationFailed")]
        error = last_error_of(port, "nas")
        assert error["kind"] == "unreachable"
        assert f"sshd not running on 127.0.0.1:{port_number}" in str(error["message"])
        assert f"sshd listens on port {port_number}" in str(error["hint"])
        assert port.state("sensor.borg_nas_state") == "unreachable"
        problem = port.states["binary_sensor.borg_nas_problem"]
        assert problem.state == "on"
        assert "1 failed operation(s) in a row" in problem.attributes["reason"]
        assert "sshd not running" in problem.attributes["reason"]
        assert port.states["sensor.borg_nas_last_error"].attributes["kind"] == "unreachable"
        assert port.state("sensor.borg_failing") == "1"
        record = coordinator.drones["nas"].record
        assert record.backoff_until is not None
        assert record.backoff_until > clock()
        assert sensor_time(port, "sensor.borg_nas_next_backup") == record.backoff_until.replace(
            microsecond=0
        )
        saved = saved_state(config)["drones"]["nas"]
        assert saved["consecutive_failures"] == 1
        assert saved["last_error_kind"] == "unreachable"
        assert datetime.fromisoformat(saved["backoff_until"]) == record.backoff_until

        # Backing off: a tick starts nothing, even once the host is back.
        await coordinator.tick()
        await settle(coordinator)
        host.sshd.start()
        assert host.sshd.port == port_number
        await coordinator.tick()
        await settle(coordinator)
        assert len(runner.calls) == 1

        clock.advance(record.backoff_until - clock() + timedelta(seconds=1))
        await coordinator.tick()
        await settle(coordinator)
        assert runner.calls[1:] == [("nas", step) for step in SCHEDULED_STEPS]
        assert port.state("sensor.borg_nas_state") == "idle"
        assert port.state("binary_sensor.borg_nas_problem") == "off"
        assert port.state("sensor.borg_failing") == "0"
        assert [e["raised"] for e in port.of(EVENT_PROBLEM)] == [True, False]
        assert "borg_nas_problem" not in port.notifications
        assert coordinator.drones["nas"].record.consecutive_failures == 0
        assert coordinator.drones["nas"].record.backoff_until is None
        assert len(host.archives()) == 1
        await coordinator.stop()


async def test_a_wrong_host_key_fails_before_any_session_and_backs_off(tmp_path: Path) -> None:
    with drone_hosts(tmp_path, ["nas"]) as hosts:
        host = hosts["nas"]
        wrong = host.sshd.wrong_known_hosts()
        config = make_config(tmp_path, {"nas": drone_args(host, known_hosts=str(wrong))})
        clock = ShiftedClock()
        coordinator, port, runner = await started_coordinator(config, clock)

        await coordinator.tick()
        await settle(coordinator)
        error = last_error_of(port, "nas")
        assert error["kind"] == "host_key"
        assert f"host key of 127.0.0.1:{host.sshd.port} is not in {wrong}" in str(error["message"])
        assert f"ssh-keyscan -p {host.sshd.port} 127.0.0.1 >> {wrong}" in str(error["hint"])
        last_error = port.states["sensor.borg_nas_last_error"]
        assert last_error.attributes["kind"] == "host_key"
        assert "ssh-keyscan" in last_error.attributes["hint"]
        assert port.state("sensor.borg_nas_hint") == error["hint"]
        assert port.state("sensor.borg_nas_agent_version") == "unknown"  # no session, no hello
        assert port.state("sensor.borg_nas_state") == "error"
        assert port.state("binary_sensor.borg_nas_problem") == "on"

        # Nothing ran on the host: no session was opened, no archive was made.
        assert host.archives() == []
        log = host.sshd.log_text()
        assert "Accepted publickey" not in log
        assert "Starting session" not in log

        record = coordinator.drones["nas"].record
        assert record.consecutive_failures == 1
        assert record.backoff_until is not None
        assert record.backoff_until > clock()
        await coordinator.tick()
        await settle(coordinator)
        assert runner.calls == [("nas", "create")]
        assert PASSPHRASE not in all_output(port)
        await coordinator.stop()


async def test_a_connection_dropped_mid_create_fails_borg_stops_and_the_next_run_succeeds(
    tmp_path: Path, big_data: Path
) -> None:
    with drone_hosts(tmp_path, ["nas"]) as hosts:
        host = hosts["nas"]
        link_big_data(big_data, host.data)
        config = make_config(tmp_path, {"nas": drone_args(host, compression=SLOW_COMPRESSION)})
        clock = ShiftedClock()
        coordinator, port, runner = await started_coordinator(config, clock)

        await coordinator.tick()
        await runner.wait_for_progress()
        assert port.of(EVENT_PROGRESS), "the coordinator relayed the progress"
        assert host.borg_processes(), "borg should still be running"
        killed = kill_sessions(host)
        assert killed, "the connection's sshd session processes should exist"

        await settle(coordinator)
        assert runner.outcomes == [("nas", "create", "OperationFailed")]
        error = last_error_of(port, "nas")
        assert error["kind"] == "unreachable"
        assert "connection lost during create" in str(error["message"])
        assert port.state("sensor.borg_nas_state") == "unreachable"
        assert port.state("binary_sensor.borg_nas_problem") == "on"
        closing = port.of(EVENT_PROGRESS)[-1]
        assert closing["final"] is True
        # It did not finish: no 100 % (and no previous archive to estimate a percentage from).
        assert closing["percent"] is None
        assert closing["eta_seconds"] is None
        assert port.state("sensor.borg_progress") == "idle"  # nothing runs any more
        assert port.state("sensor.borg_nas_progress") == "unknown"
        assert coordinator.drones["nas"].record.last_backup is None

        await eventually(lambda: processes_gone(killed), "the killed sessions to be gone")
        await host_is_quiet(host)
        assert host.archives() == []  # at most a checkpoint, which borg hides

        record = coordinator.drones["nas"].record
        assert record.backoff_until is not None
        clock.advance(record.backoff_until - clock() + timedelta(seconds=1))
        await coordinator.tick()
        await settle(coordinator)
        assert runner.outcomes[1:] == [("nas", step, "ok") for step in SCHEDULED_STEPS], (
            runner.errors
        )
        archives = host.archives()
        assert len(archives) == 1
        assert coordinator.drones["nas"].record.last_archive is not None
        assert coordinator.drones["nas"].record.last_archive["name"] == archives[0]
        assert port.state("sensor.borg_nas_state") == "idle"
        assert port.state("binary_sensor.borg_nas_problem") == "off"
        await coordinator.stop()


async def test_a_real_create_shows_the_drones_progress_and_current_file_then_idle(
    tmp_path: Path, big_data: Path
) -> None:
    with drone_hosts(tmp_path, ["nas"]) as hosts:
        host = hosts["nas"]
        link_big_data(big_data, host.data)
        config = make_config(tmp_path, {"nas": drone_args(host, compression=SLOW_COMPRESSION)})
        coordinator, port, runner = await started_coordinator(config, ShiftedClock())

        await coordinator.tick()
        assert port.state("sensor.borg_active") == "nas: create"  # at once, not "starting"
        await runner.wait_for_progress()
        await eventually(
            lambda: "random-" in port.state("sensor.borg_nas_current_file"),
            "the drone's current file to show one of the big files",
        )
        # A first backup: no previous archive to estimate from, so no percent, but a speed.
        assert port.state("sensor.borg_nas_progress") == "unknown"
        assert port.state("sensor.borg_progress") == "unknown"
        assert port.states["sensor.borg_progress"].attributes["drone"] == "nas"
        await eventually(
            lambda: port.state("sensor.borg_nas_speed") != "unknown", "a speed to show"
        )
        assert float(port.state("sensor.borg_nas_speed")) >= 0
        events = port.of(EVENT_PROGRESS)
        assert any("random-" in str(e["path"]) for e in events)
        await settle(coordinator)

        assert runner.outcomes == [("nas", step, "ok") for step in SCHEDULED_STEPS]
        assert port.of(EVENT_PROGRESS)[-1]["percent"] == 100.0
        assert "100.0" in port.history("sensor.borg_nas_progress")
        # Over: idle, and nothing of the finished run is left on the drone's progress sensors.
        assert port.state("sensor.borg_active") == "idle"
        assert port.state("sensor.borg_progress") == "idle"
        assert "unit_of_measurement" not in port.states["sensor.borg_progress"].attributes
        for key in ("progress", "speed", "eta", "current_file"):
            assert port.state(f"sensor.borg_nas_{key}") == "unknown", key
        assert PASSPHRASE not in all_output(port)
        await coordinator.stop()


async def test_a_restart_mid_create_stops_borg_restores_state_and_runs_it_again(
    tmp_path: Path, big_data: Path
) -> None:
    with drone_hosts(tmp_path, ["nas"]) as hosts:
        host = hosts["nas"]
        config = make_config(tmp_path, {"nas": drone_args(host, compression=SLOW_COMPRESSION)})
        clock = ShiftedClock()
        coordinator, port, runner = await started_coordinator(config, clock)
        await coordinator.tick()  # tiny data: a quick first backup to have values to restore
        await settle(coordinator)
        first_backup = port.state("sensor.borg_nas_last_backup")
        first_total = port.states["sensor.borg_nas_total_size"].attributes["bytes"]
        assert isinstance(first_total, int)
        assert len(host.archives()) == 1

        link_big_data(big_data, host.data)
        clock.advance(timedelta(days=1, minutes=1))
        runner.progressed.clear()  # the first backup's progress does not count
        await coordinator.tick()
        await runner.wait_for_progress()
        assert host.borg_processes(), "borg should still be running"
        await coordinator.stop()

        assert runner.outcomes[-1] == ("nas", "create", "CancelledError")
        saved = saved_state(config)["drones"]["nas"]
        assert saved["running"]["operation"] == "scheduled"
        assert saved["consecutive_failures"] == 0
        await host_is_quiet(host)
        assert len(host.archives()) == 1

        restarted, port2, runner2 = await started_coordinator(config, clock)
        # The last values are back before anything runs, and the interruption is known.
        assert port2.state("sensor.borg_nas_last_backup") == first_backup
        assert port2.states["sensor.borg_nas_total_size"].attributes["bytes"] == first_total
        assert port2.state("sensor.borg_nas_state") == "idle"
        last_error = port2.states["sensor.borg_nas_last_error"]
        assert last_error.attributes["kind"] == "interrupted"
        assert "scheduled was interrupted" in last_error.state
        # Scheduled work is not queued as a request: it is still due, so the tick takes it.
        assert restarted.drones["nas"].record.pending == []
        assert restarted.drones["nas"].record.running is None
        assert any("scheduled was interrupted; it will run again" in line for line in port2.lines)
        assert json.loads(config.state_file.read_text())["drones"]["nas"]["running"] is None

        await restarted.tick()
        await settle(restarted)
        assert runner2.outcomes == [("nas", step, "ok") for step in SCHEDULED_STEPS], runner2.errors
        assert len(host.archives()) == 2
        assert sensor_time(port2, "sensor.borg_nas_last_backup") > datetime.fromisoformat(
            first_backup
        )
        assert port2.states["sensor.borg_nas_total_size"].attributes["bytes"] > first_total
        assert port2.states["sensor.borg_nas_last_error"].attributes["kind"] == "none"
        saved = saved_state(config)["drones"]["nas"]
        assert saved["running"] is None
        assert saved["pending"] == []
        assert saved["last_error"] is None
        assert datetime.fromisoformat(saved["last_backup"]) > datetime.fromisoformat(first_backup)
        assert datetime.fromisoformat(saved["last_backup"]).tzinfo == UTC
        await restarted.stop()
