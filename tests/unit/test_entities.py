"""The entity catalogue: ids HA will really create, and sensor states HA can take."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from backup_coordinator.entities import (
    DroneSnapshot,
    coordinator_helpers,
    drone_helpers,
    drone_sensors,
    size_sensor,
)
from backup_coordinator.model import DroneSettings, DroneState


def ha_slug(name: str) -> str:
    """HA's slugify for plain ASCII names: lower case, runs of other characters become _."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def test_every_helper_name_slugs_to_its_entity_id() -> None:
    helpers = coordinator_helpers("backup") + drone_helpers("backup", "my_pc2", DroneSettings())
    assert len(helpers) == 11
    for helper in helpers:
        assert ha_slug(helper.name) == helper.object_id, helper


def test_helpers_carry_first_values_and_no_initial() -> None:
    helpers = {h.object_id: h for h in drone_helpers("backup", "nas", DroneSettings())}
    assert helpers["backup_nas_frequency"].first_value == 1440
    assert helpers["backup_nas_keep_yearly"].first_value == 1
    assert helpers["backup_nas_mode"].first_value == "scheduled"
    assert all("initial" not in h.create_fields for h in helpers.values())


def snapshot(**changes: object) -> DroneSnapshot:
    values: dict[str, object] = {
        "name": "nas",
        "state": DroneState.IDLE,
        "operation": None,
        "last_backup": datetime(2026, 11, 1, 12, tzinfo=UTC),
        "last_prune": None,
        "last_archive": None,
        "repository": {"total_size": 0, "compressed_size": 3 * 1024 * 1024, "deduplicated_size": 0},
        "archive_count": 0,
        "next_backup": None,
        "problems": (),
        "consecutive_failures": 0,
        "last_error": None,
        "last_error_kind": None,
        "last_error_hint": None,
    }
    values.update(changes)
    return DroneSnapshot(**values)  # type: ignore[arg-type]


def test_drone_sensors_show_timestamps_and_sizes_including_zero() -> None:
    sensors = {p.entity_id: p for p in drone_sensors("backup", snapshot())}
    assert sensors["sensor.backup_nas_last_backup"].state == "2026-11-01T12:00:00+00:00"
    assert sensors["sensor.backup_nas_last_prune"].state == "unknown"
    total = sensors["sensor.backup_nas_total_size"]
    assert total.state == "0.00"
    assert total.attributes["bytes"] == 0
    assert total.attributes["device_class"] == "data_size"
    assert sensors["sensor.backup_nas_compressed_size"].state == "3.00"
    assert sensors["binary_sensor.backup_nas_problem"].state == "off"


def test_problem_sensor_lists_every_reason() -> None:
    sensors = {p.entity_id: p for p in drone_sensors("backup", snapshot(problems=("a", "b")))}
    problem = sensors["binary_sensor.backup_nas_problem"]
    assert problem.state == "on"
    assert problem.attributes["reason"] == "a; b"


def test_unknown_size_has_no_byte_count() -> None:
    publication = size_sensor("sensor.x", "x", None)
    assert publication.state == "unknown"
    assert publication.attributes["bytes"] is None
