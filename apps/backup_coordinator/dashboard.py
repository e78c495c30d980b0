"""A Lovelace dashboard for the configured drones: one card per drone plus the coordinator's.

Built from the entity descriptions, so the dashboard and the entities can never disagree: a
drone's card shows each section of its descriptions in turn, controls before sensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import entities
from .config import Config
from .entities import EntityDescription, Section, SensorDescription
from .offsite_entities import TARGET_HELPERS, TARGET_SENSORS


def dashboard(config: Config, title: str = "Backups") -> dict[str, Any]:
    prefix = config.entity_prefix
    cards = (
        [coordinator_card(prefix)]
        + [drone_card(prefix, d.name) for d in config.drones]
        + [target_card(prefix, t.name) for t in config.offsite]
    )
    return {"title": title, "views": [{"title": title, "path": "backups", "cards": cards}]}


def coordinator_entities() -> tuple[EntityDescription, ...]:
    """The coordinator's entities as its card reads top-down: the mode, what runs and how far
    it got, what waits, what fails."""
    active, *others = entities.COORDINATOR_SENSORS
    return (*entities.COORDINATOR_HELPERS, active, entities.PROGRESS_SENSOR, *others)


def coordinator_card(prefix: str) -> dict[str, Any]:
    return {
        "type": "entities",
        "title": f"{entities.title(prefix)} coordinator",
        "entities": [description.entity_id(prefix, None) for description in coordinator_entities()],
    }


def drone_card(prefix: str, drone: str) -> dict[str, Any]:
    """The overview (mode, frequency, state, times, problem), then the repository's sizes, the
    buttons and the retention rules."""
    descriptions: Sequence[EntityDescription] = (
        *entities.DRONE_HELPERS,
        *entities.DRONE_BUTTONS,
        *entities.DRONE_SENSORS,
    )
    return _card(prefix, drone, descriptions)


def target_card(prefix: str, target: str) -> dict[str, Any]:
    """An offsite target's card: the same layout as a drone's."""
    return _card(prefix, target, (*TARGET_HELPERS, *TARGET_SENSORS))


def _card(prefix: str, drone: str, descriptions: Sequence[EntityDescription]) -> dict[str, Any]:
    rows: list[dict[str, str]] = []
    for section in Section:
        chosen = [d for d in descriptions if d.section is section]
        if chosen and section.value:
            rows.append({"type": "section", "label": section.value})
        for description in chosen:
            rows += _rows(description, description.entity_id(prefix, drone))
    return {"type": "entities", "title": drone, "state_color": True, "entities": rows}


def _rows(description: EntityDescription, entity_id: str) -> list[dict[str, str]]:
    """The entity's row, then a row for each attribute it shows on the card (an error's hint:
    what to do about it)."""
    rows = [_row(entity_id, description.label)]
    if isinstance(description, SensorDescription):
        rows += [
            {"type": "attribute", "entity": entity_id, "attribute": attribute, "name": _name(label)}
            for attribute, label in description.card_attributes
        ]
    return rows


def _row(entity_id: str, name: str) -> dict[str, str]:
    return {"entity": entity_id, "name": _name(name)}


def _name(label: str) -> str:
    return label[:1].upper() + label[1:]
