"""The entity catalogue: ids HA will really create, sensor states HA can take, and a new entity
being one row in a table of descriptions."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from backup_coordinator import entities
from backup_coordinator.config import EntityBackend
from backup_coordinator.dashboard import drone_section
from backup_coordinator.entities import (
    DRONE_HELPERS,
    DRONE_SENSORS,
    ROW_STATE_LENGTH,
    DroneSnapshot,
    EntityCategory,
    HelperDescription,
    ProgressSnapshot,
    Section,
    SensorDescription,
    button_descriptions,
    coordinator_helpers,
    coordinator_sensors,
    drone_helpers,
    drone_sensors,
    path_tail,
    progress_sensor,
    render_helpers,
    render_sensors,
)
from backup_coordinator.model import MIB, CopyState, DroneSettings, DroneState, Operation
from backup_coordinator.offsite_entities import TARGET_SENSORS, TargetSnapshot, target_sensors
from backup_coordinator.operations import OPERATIONS, Button, OperationSpec


def ha_slug(name: str) -> str:
    """HA's slugify for plain ASCII names: lower case, runs of other characters become _."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def test_every_helper_name_slugs_to_its_entity_id() -> None:
    helpers = coordinator_helpers("borg") + drone_helpers("borg", "my_pc2", DroneSettings())
    assert len(helpers) == 15  # the coordinator mode and 14 per drone
    for helper in helpers:
        assert ha_slug(helper.name) == helper.object_id, helper


def test_helpers_carry_first_values_and_no_initial() -> None:
    helpers = {h.object_id: h for h in drone_helpers("borg", "nas", DroneSettings())}
    assert helpers["borg_nas_frequency"].first_value == 1440
    assert helpers["borg_nas_keep_yearly"].first_value == 1
    assert helpers["borg_nas_mode"].first_value == "scheduled"
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
    sensors = {p.entity_id: p for p in drone_sensors("borg", snapshot())}
    assert sensors["sensor.borg_nas_last_backup"].state == "2026-11-01T12:00:00+00:00"
    assert sensors["sensor.borg_nas_last_prune"].state == "unknown"
    total = sensors["sensor.borg_nas_total_size"]
    assert total.state == "0.00"
    assert total.attributes["bytes"] == 0
    assert total.attributes["device_class"] == "data_size"
    assert sensors["sensor.borg_nas_compressed_size"].state == "3.00"
    assert sensors["binary_sensor.borg_nas_problem"].state == "off"


def test_problem_sensor_lists_every_reason() -> None:
    sensors = {p.entity_id: p for p in drone_sensors("borg", snapshot(problems=("a", "b")))}
    problem = sensors["binary_sensor.borg_nas_problem"]
    assert problem.state == "on"
    assert problem.attributes["reason"] == "a; b"


@pytest.mark.parametrize("size", [None, "12", 1.5, True])
def test_a_size_that_is_no_byte_count_is_unknown(size: object) -> None:
    sensors = {
        p.entity_id: p for p in drone_sensors("borg", snapshot(repository={"total_size": size}))
    }
    total = sensors["sensor.borg_nas_total_size"]
    assert total.state == "unknown"
    assert total.attributes["bytes"] is None


# --- every description renders ---------------------------------------------------------------


def everything(prefix: str, drones: tuple[str, ...]) -> list[str]:
    """The entity id of every entity the app owns for these drones."""
    progress = ProgressSnapshot("nas", "create", 1, 2, 3, 4, 50.0, 1.0, 1.0, False)
    ids = [h.entity_id for h in coordinator_helpers(prefix)]
    ids += [p.entity_id for p in coordinator_sensors(prefix, {}, [], [], [], "running")]
    ids.append(progress_sensor(prefix, progress).entity_id)
    for drone in drones:
        ids += [h.entity_id for h in drone_helpers(prefix, drone, DroneSettings())]
        ids += [p.entity_id for p in drone_sensors(prefix, DroneSnapshot.empty(drone))]
    return ids


def test_entity_ids_are_unique() -> None:
    ids = everything("borg", ("nas", "pc", "my_pc2"))
    assert len(ids) == 1 + 3 + 1 + 3 * (
        len(DRONE_HELPERS) + len(entities.DRONE_BUTTONS) + len(DRONE_SENSORS)
    )
    assert [entity_id for entity_id, n in Counter(ids).items() if n > 1] == []


def test_every_operation_with_a_button_has_exactly_one_input_button() -> None:
    buttons = [h for h in drone_helpers("borg", "nas", DroneSettings()) if h.operation]
    assert all(h.domain == "input_button" for h in buttons)
    assert len(buttons) == len({h.operation for h in buttons})
    for spec in OPERATIONS.values():
        matching = [h for h in buttons if h.operation is spec.operation]
        if spec.button is None:
            assert matching == [], spec.operation
        else:
            (button,) = matching
            assert button.object_id == f"borg_nas_{spec.button.key}"
            assert button.icon == spec.button.icon


def test_every_setting_helper_steers_one_setting() -> None:
    settings = [h.setting for h in drone_helpers("borg", "nas", DroneSettings()) if h.setting]
    assert sorted(settings) == sorted(
        [
            "frequency",
            "mode",
            "keep_within",
            "keep_hourly",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "keep_yearly",
        ]
    )


@pytest.mark.parametrize("state", list(DroneState))
def test_every_drone_state_is_an_option_of_the_state_sensor(state: DroneState) -> None:
    sensors = {p.entity_id: p for p in drone_sensors("borg", snapshot(state=state))}
    shown = sensors["sensor.borg_nas_state"]
    assert shown.state in shown.attributes["options"]
    assert shown.state == state.value


def test_no_state_is_longer_than_ha_takes() -> None:
    sensors = drone_sensors("borg", snapshot(last_error="e" * 1000, problems=("p" * 1000,)))
    sensors += coordinator_sensors(
        "backup", {f"drone{i}": "create" for i in range(99)}, [], [], [], "running"
    )
    assert all(len(p.state) <= entities.STATE_MAX_LENGTH for p in sensors)


def test_the_error_hint_and_versions_are_diagnostic_and_only_settings_are_configuration() -> None:
    diagnostic = [d.key for d in DRONE_SENSORS if d.category is EntityCategory.DIAGNOSTIC]
    assert diagnostic == ["last_error", "hint", "agent_version", "borg_version"]
    helpers: tuple[HelperDescription[Any], ...] = (
        *DRONE_HELPERS,
        *entities.DRONE_BUTTONS,
        *entities.COORDINATOR_HELPERS,
    )
    for helper in helpers:
        assert (helper.category is EntityCategory.CONFIG) == (helper.setting is not None)


def test_what_to_do_and_the_versions_are_sensors_of_their_own() -> None:
    sensors = {
        p.entity_id: p.state
        for p in drone_sensors(
            "borg",
            snapshot(
                last_error="lock timeout",
                last_error_hint="wait for the other borg",
                agent_version="1.7.0",
                borg_version="1.4.1",
            ),
        )
    }
    assert sensors["sensor.borg_nas_hint"] == "wait for the other borg"
    assert sensors["sensor.borg_nas_agent_version"] == "1.7.0"
    assert sensors["sensor.borg_nas_borg_version"] == "1.4.1"
    quiet = {p.entity_id: p.state for p in drone_sensors("borg", snapshot())}
    assert quiet["sensor.borg_nas_hint"] == "none"
    assert quiet["sensor.borg_nas_agent_version"] == "unknown"


def target(**changes: object) -> TargetSnapshot:
    values: dict[str, object] = {
        "name": "cloud",
        "state": CopyState.IDLE,
        "repository": None,
        "last_copy": None,
        "last_copy_data": None,
        "next_copy": None,
        "waiting_for": (),
        "problems": (),
        "consecutive_failures": 0,
        "last_error": None,
        "last_error_kind": None,
        "last_error_hint": None,
    }
    return TargetSnapshot(**(values | changes))  # type: ignore[arg-type]


def test_an_offsite_target_has_a_hint_and_its_copy_size_in_bytes_too() -> None:
    sensors = {
        p.entity_id: p
        for p in target_sensors(
            "borg",
            target(
                last_error="rclone failed",
                last_error_hint="check the remote",
                last_copy_data={"bytes": 3 * MIB},
            ),
        )
    }
    assert sensors["sensor.borg_cloud_hint"].state == "check the remote"
    assert sensors["sensor.borg_cloud_hint"].attributes["friendly_name"] == "Borg cloud what to do"
    size = sensors["sensor.borg_cloud_last_copy_size"]
    assert (size.state, size.native_state) == ("3.00", str(3 * MIB))
    assert size.attributes["friendly_name"] == "Borg cloud last copy transferred"
    (description,) = [d for d in TARGET_SENSORS if d.key == "last_copy_size"]
    assert (description.native_unit, description.display_precision) == ("B", 2)
    idle = {p.entity_id: p for p in target_sensors("borg", target())}
    assert idle["sensor.borg_cloud_last_copy_size"].native_state == "unknown"
    assert idle["sensor.borg_cloud_hint"].state == "none"


# --- a new entity is a row --------------------------------------------------------------------

ARCHIVES = SensorDescription[DroneSnapshot](
    domain="sensor",
    key="archives",
    label="archives",
    icon="mdi:archive",
    state_class="measurement",
    section=Section.REPOSITORY,
    value=lambda snap: "unknown" if snap.archive_count is None else str(snap.archive_count),
    attributes=lambda snap: {"drone": snap.name},
)

KEEP_DAILY = HelperDescription[DroneSettings](
    domain="input_number",
    key="keep_daily",
    label="keep daily",
    icon="mdi:calendar-today",
    section=Section.RETENTION,
    category=EntityCategory.CONFIG,
    create_fields={"min": 0, "max": 1000},
    setting="keep_daily",
    first_value=lambda settings: settings.keep.daily,
)


def test_a_table_with_an_extra_row_renders_it_like_the_others() -> None:
    sensors = render_sensors((*DRONE_SENSORS, ARCHIVES), "borg", "nas", snapshot(archive_count=7))
    assert sensors[:-1] == drone_sensors("borg", snapshot(archive_count=7))
    assert sensors[-1] == entities.Publication(
        "sensor.borg_nas_archives",
        "7",
        {
            "friendly_name": "Borg nas archives",
            "icon": "mdi:archive",
            "state_class": "measurement",
            "drone": "nas",
        },
    )
    helpers = render_helpers((*DRONE_HELPERS, KEEP_DAILY), "borg", "nas", DroneSettings())
    assert helpers[-1] == entities.HelperSpec(
        domain="input_number",
        object_id="borg_nas_keep_daily",
        name="Borg nas keep daily",
        icon="mdi:calendar-today",
        create_fields={"min": 0, "max": 1000},
        first_value=7,
        drone="nas",
        setting="keep_daily",
    )


def test_a_row_added_to_the_drone_tables_reaches_sensors_helpers_and_dashboard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(entities, "DRONE_SENSORS", (*DRONE_SENSORS, ARCHIVES))
    monkeypatch.setattr(entities, "DRONE_HELPERS", (*DRONE_HELPERS, KEEP_DAILY))
    sensors = {p.entity_id: p for p in drone_sensors("borg", snapshot(archive_count=3))}
    assert sensors["sensor.borg_nas_archives"].state == "3"
    helpers = {h.entity_id: h for h in drone_helpers("borg", "nas", DroneSettings())}
    assert helpers["input_number.borg_nas_keep_daily"].setting == "keep_daily"
    rows = drone_section("borg", "nas", EntityBackend.HELPERS)["cards"][-1]["entities"]
    repository = rows.index({"type": "section", "label": "Repository"})
    assert rows.index({"entity": "sensor.borg_nas_archives", "name": "Archives"}) > repository
    # a retention control lands at the end of the retention section
    assert rows[repository - 1] == {
        "entity": "input_number.borg_nas_keep_daily",
        "name": "Keep daily",
    }


def test_a_button_added_to_the_operation_registry_becomes_an_input_button() -> None:
    restore = OperationSpec(
        Operation.EXTRACT, ("extract",), Button("restore", "restore", "mdi:restore")
    )
    specs = [spec for spec in OPERATIONS.values() if spec.operation is not Operation.EXTRACT]
    buttons = button_descriptions([*specs, restore])
    assert buttons[:-1] == button_descriptions(OPERATIONS.values())
    (helper,) = render_helpers(buttons[-1:], "borg", "nas", DroneSettings())
    assert (helper.entity_id, helper.name, helper.operation) == (
        "input_button.borg_nas_restore",
        "Borg nas restore",
        Operation.EXTRACT,
    )


def test_the_current_file_shows_the_end_of_its_path_that_fits_a_row() -> None:
    assert path_tail("home/zoe/a.txt") == "home/zoe/a.txt"
    long = "work/main/.stack/demo/drones/laptop/data/big/blob03.bin"
    assert path_tail(long) == "…/laptop/data/big/blob03.bin"
    assert len(path_tail(long)) <= ROW_STATE_LENGTH
    assert path_tail("srv/" + "x" * 40) == "…" + "x" * (ROW_STATE_LENGTH - 1)
    assert path_tail("ab/" + "y" * 26) == "…/" + "y" * 26
