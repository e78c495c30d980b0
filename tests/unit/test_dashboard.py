"""The dashboard shows every entity of the catalogue once, for either entity backend, status
first; long texts in a card that wraps them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backup_coordinator import entities
from backup_coordinator.config import EntityBackend, parse_config
from backup_coordinator.dashboard import (
    QUIET_STATES,
    coordinator_section,
    dashboard,
    drone_section,
    target_section,
)
from backup_coordinator.entities import DroneSnapshot, HelperSpec, Publication
from backup_coordinator.model import CopySettings, CopyState, DroneSettings
from backup_coordinator.offsite_entities import TargetSnapshot, target_helpers, target_sensors
from tests.dashboard_support import TEMPLATE_ENTITY, referenced

BACKENDS = list(EntityBackend)
EMPTY_TARGET = TargetSnapshot(
    "cloud", CopyState.IDLE, None, None, None, None, (), (), 0, None, None, None
)


def catalogue_ids(
    helpers: list[HelperSpec], sensors: list[Publication], backend: EntityBackend
) -> list[str]:
    """The ids the rendered entities have under ``backend`` (MQTT: helpers in other domains)."""
    ids = [f"{entities.platform(h.domain, backend)}.{h.object_id}" for h in helpers]
    for sensor in sensors:
        domain, object_id = sensor.entity_id.split(".")
        ids.append(f"{entities.platform(domain, backend)}.{object_id}")
    return ids


def drone_ids(backend: EntityBackend) -> list[str]:
    helpers = entities.drone_helpers("borg", "nas", DroneSettings())
    sensors = entities.drone_sensors("borg", DroneSnapshot.empty("nas"))
    return catalogue_ids(helpers, sensors, backend)


def target_ids(backend: EntityBackend) -> list[str]:
    helpers = target_helpers("borg", "cloud", CopySettings())
    return catalogue_ids(helpers, target_sensors("borg", EMPTY_TARGET), backend)


def cards(section: dict[str, Any]) -> list[dict[str, Any]]:
    """A section's cards, a conditional card's own card in its place."""
    return [card.get("card", card) for card in section["cards"]]


def rows(section: dict[str, Any]) -> list[dict[str, str]]:
    """The rows of the section's entities cards, in order."""
    return [
        row for card in cards(section) if card["type"] == "entities" for row in card["entities"]
    ]


def row_entities(section: dict[str, Any]) -> list[str]:
    return [row["entity"] for row in rows(section) if "entity" in row]


def texts(section: dict[str, Any]) -> list[str]:
    """The entities its markdown cards read, in order, each once per card."""
    markdown = [card["content"] for card in cards(section) if card["type"] == "markdown"]
    return [e for content in markdown for e in dict.fromkeys(TEMPLATE_ENTITY.findall(content))]


def problem_card(section: dict[str, Any]) -> dict[str, Any]:
    (card,) = [card for card in section["cards"] if card["type"] == "conditional"]
    assert isinstance(card, dict)
    return card


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_drone_section_shows_each_of_the_drones_entities_once(backend: EntityBackend) -> None:
    section = drone_section("borg", "nas", backend)
    shown = row_entities(section) + texts(section)
    problem = "binary_sensor.borg_nas_problem"
    assert Counter(shown) == Counter([*drone_ids(backend), problem])  # a row and the reason
    assert set(referenced(section)) == set(drone_ids(backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_offsite_target_section_shows_each_of_its_entities_once(backend: EntityBackend) -> None:
    section = target_section("borg", "cloud", backend)
    shown = row_entities(section) + texts(section)
    assert Counter(shown) == Counter([*target_ids(backend), "binary_sensor.borg_cloud_problem"])
    assert set(referenced(section)) == set(target_ids(backend))
    button = "button" if backend is EntityBackend.MQTT else "input_button"
    assert f"{button}.borg_cloud_sync_now" in shown
    assert "sensor.borg_cloud_hint" in texts(section)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_coordinator_section_shows_each_coordinator_entity_once(
    backend: EntityBackend,
) -> None:
    helpers = entities.coordinator_helpers("borg")
    sensors = [
        *entities.coordinator_sensors("borg", {}, [], [], [], ""),
        entities.progress_sensor("borg", None),
    ]
    section = coordinator_section("borg", backend)
    assert Counter(row_entities(section)) == Counter(catalogue_ids(helpers, sensors, backend))
    assert section["cards"][0]["heading"] == "Borg coordinator"


def test_a_drone_section_reads_status_progress_problem_actions_settings_repository() -> None:
    section = drone_section("borg", "nas", EntityBackend.HELPERS)
    heading, status, problem, actions, controls = section["cards"]
    assert heading == {
        "type": "heading",
        "heading": "nas",
        "heading_style": "title",
        "icon": "mdi:server",
    }
    assert [row.get("label") or row["entity"] for row in status["entities"]] == [
        "sensor.borg_nas_state",
        "sensor.borg_nas_last_backup",
        "sensor.borg_nas_next_backup",
        "binary_sensor.borg_nas_problem",
        "Progress",
        "sensor.borg_nas_progress",
        "sensor.borg_nas_speed",
        "sensor.borg_nas_eta",
        "sensor.borg_nas_current_file",
    ]
    assert problem["type"] == "conditional"
    # Opening a card, a section's heading is a subtitle above it (no divider at the top).
    assert actions == {"type": "heading", "heading": "Actions", "heading_style": "subtitle"}
    order = [row.get("label") or row["entity"] for row in controls["entities"]]
    assert order[0] == "input_button.borg_nas_create"
    position = {entity: index for index, entity in enumerate(order)}
    assert position["input_button.borg_nas_create"] < position["Settings"]
    assert position["Settings"] < position["input_select.borg_nas_mode"] < position["Retention"]
    assert position["input_number.borg_nas_frequency"] < position["Retention"]
    assert position["Retention"] < position["input_number.borg_nas_keep_hourly"]
    assert position["input_number.borg_nas_keep_daily"] < position["Repository"]
    assert position["Repository"] < position["sensor.borg_nas_total_size"]
    assert position["sensor.borg_nas_deduplicated_size"] < position["Diagnostics"]
    assert position["Diagnostics"] < position["sensor.borg_nas_agent_version"]
    assert order[-1] == "sensor.borg_nas_borg_version"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_row_has_a_short_name_and_no_card_title_is_a_raw_key(backend: EntityBackend) -> None:
    sections = [
        coordinator_section("borg", backend),
        drone_section("borg", "nas", backend),
        target_section("borg", "cloud", backend),
    ]
    for section in sections:
        for row in rows(section):
            if "entity" in row:
                name = row["name"]
                assert name[0].isupper(), row
                assert "_" not in name, row
                assert len(name) <= 22, row
            else:
                assert row["type"] == "section"
        titles = [card.get("title") for card in cards(section)]
        assert titles == [None] * len(titles)  # the heading card names the section


def test_the_problem_card_shows_the_reason_the_last_error_and_what_to_do_in_full() -> None:
    card = problem_card(drone_section("borg", "nas", EntityBackend.HELPERS))
    (either,) = card["conditions"]
    assert either["condition"] == "or"
    assert either["conditions"] == [
        {"condition": "state", "entity": "binary_sensor.borg_nas_problem", "state": "on"},
        {
            "condition": "state",
            "entity": "sensor.borg_nas_last_error",
            "state_not": list(QUIET_STATES),
        },
        {"condition": "state", "entity": "sensor.borg_nas_hint", "state_not": list(QUIET_STATES)},
    ]
    assert card["card"]["type"] == "markdown"
    paragraphs = card["card"]["content"].split("\n\n")
    plain = "| replace('[', '\\\\[')"
    assert paragraphs == [
        "{% if is_state('binary_sensor.borg_nas_problem', 'on') %}**Problem:**"
        f" {{{{ state_attr('binary_sensor.borg_nas_problem', 'reason') {plain} }}}}{{% endif %}}",
        "{% set text = states('sensor.borg_nas_last_error') %}"
        "{% if text not in ['none', 'unknown', 'unavailable', ''] %}"
        f"**Last error:** {{{{ text {plain} }}}}{{% endif %}}",
        "{% set text = states('sensor.borg_nas_hint') %}"
        "{% if text not in ['none', 'unknown', 'unavailable', ''] %}"
        f"**What to do:** {{{{ text {plain} }}}}{{% endif %}}",
    ]


def render(content: str, states: dict[str, tuple[str, dict[str, str]]]) -> str:
    """The markdown a template gives in a sandbox like Home Assistant's, with these states."""
    environment = ImmutableSandboxedEnvironment()
    environment.globals["states"] = lambda entity: states[entity][0]
    environment.globals["is_state"] = lambda entity, state: states[entity][0] == state
    environment.globals["state_attr"] = lambda entity, name: states[entity][1].get(name)
    return environment.from_string(content).render()


def test_the_problem_card_says_only_what_there_is_and_never_makes_a_drones_text_a_link() -> None:
    content = problem_card(drone_section("borg", "nas", EntityBackend.HELPERS))["card"]["content"]
    failing = {
        "binary_sensor.borg_nas_problem": ("on", {"reason": "2 failures in a row"}),
        "sensor.borg_nas_last_error": ("cannot read /srv/![x](http://host/p.png)", {}),
        "sensor.borg_nas_hint": ("none", {}),
    }
    shown = [line for line in render(content, failing).split("\n") if line]
    assert shown == [
        "**Problem:** 2 failures in a row",
        "**Last error:** cannot read /srv/!\\[x](http://host/p.png)",
    ]
    overdue = {
        "binary_sensor.borg_nas_problem": ("on", {"reason": "overdue: no backup for 3 days"}),
        "sensor.borg_nas_last_error": ("none", {}),
        "sensor.borg_nas_hint": ("none", {}),
    }
    assert render(content, overdue).strip() == "**Problem:** overdue: no backup for 3 days"


def test_the_problem_card_follows_the_backend() -> None:
    helpers = problem_card(drone_section("borg", "nas", EntityBackend.HELPERS))
    mqtt = problem_card(drone_section("borg", "nas", EntityBackend.MQTT))
    assert mqtt == helpers  # sensors keep their domain over MQTT


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_dashboard_is_one_sections_view_for_the_configured_backend(
    backend: EntityBackend,
) -> None:
    args: dict[str, Any] = {
        "entities": backend.value,
        "ssh": {"client_key": "keys/coordinator", "known_hosts": "/etc/backup/known_hosts"},
        "drones": {
            name: {"host": f"{name}.lan", "repository": f"/srv/borg/{name}", "paths": ["/home"]}
            for name in ("pc", "nas")
        },
    }
    config = parse_config(args, Path("/conf/apps"))
    document = dashboard(config, "Backups")
    (view,) = document["views"]
    assert view["type"] == "sections"
    assert view["sections"] == [
        coordinator_section("borg", backend),
        drone_section("borg", "nas", backend),  # in name order
        drone_section("borg", "pc", backend),
    ]
    shown = set(referenced(document))
    assert shown >= set(drone_ids(backend))
    mode = "select" if backend is EntityBackend.MQTT else "input_select"
    assert f"{mode}.borg_nas_mode" in shown
