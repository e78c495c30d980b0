"""The dashboard shows every entity of the catalogue once, grouped by its descriptions."""

from __future__ import annotations

from collections import Counter

from backup_coordinator import entities
from backup_coordinator.dashboard import coordinator_card, drone_card, target_card
from backup_coordinator.entities import DroneSnapshot, Section
from backup_coordinator.model import CopySettings, CopyState, DroneSettings
from backup_coordinator.offsite_entities import TargetSnapshot, target_helpers, target_sensors


def test_a_drone_card_shows_each_of_the_drones_entities_once() -> None:
    helpers = [h.entity_id for h in entities.drone_helpers("borg", "nas", DroneSettings())]
    sensors = [p.entity_id for p in entities.drone_sensors("borg", DroneSnapshot.empty("nas"))]
    rows = drone_card("borg", "nas")["entities"]
    shown = [row["entity"] for row in rows if "entity" in row and "type" not in row]
    assert Counter(shown) == Counter(helpers + sensors)


def test_a_card_shows_what_to_do_under_the_last_error() -> None:
    rows = drone_card("borg", "nas")["entities"]
    error = rows.index({"entity": "sensor.borg_nas_last_error", "name": "Last error"})
    assert rows[error + 1] == {
        "type": "attribute",
        "entity": "sensor.borg_nas_last_error",
        "attribute": "hint",
        "name": "What to do",
    }


def test_a_drone_card_has_a_heading_per_section_in_section_order() -> None:
    headings = [row["label"] for row in drone_card("borg", "nas")["entities"] if "label" in row]
    assert headings == [section.value for section in Section if section.value]


def test_the_coordinator_card_shows_each_coordinator_entity_once() -> None:
    helpers = [h.entity_id for h in entities.coordinator_helpers("borg")]
    sensors = [p.entity_id for p in entities.coordinator_sensors("borg", {}, [], [], [], "")]
    progress = entities.progress_sensor("borg", None).entity_id
    shown = coordinator_card("borg")["entities"]
    assert Counter(shown) == Counter([*helpers, *sensors, progress])


def test_an_offsite_target_card_shows_each_of_its_entities_once() -> None:
    snapshot = TargetSnapshot(
        "cloud", CopyState.IDLE, None, None, None, None, (), (), 0, None, None, None
    )
    helpers = [h.entity_id for h in target_helpers("borg", "cloud", CopySettings())]
    sensors = [p.entity_id for p in target_sensors("borg", snapshot)]
    rows = target_card("borg", "cloud")["entities"]
    shown = [row["entity"] for row in rows if "entity" in row and "type" not in row]
    assert Counter(shown) == Counter(helpers + sensors)
    assert "input_button.borg_cloud_sync_now" in shown
