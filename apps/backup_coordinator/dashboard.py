"""A Lovelace dashboard for the configured drones: one card per drone plus the coordinator's.

Built from the entity catalogue, so the dashboard and the entities can never disagree.
"""

from __future__ import annotations

from typing import Any

from . import entities
from .config import Config
from .model import DroneSettings


def dashboard(config: Config, title: str = "Backups") -> dict[str, Any]:
    prefix = config.entity_prefix
    cards = [coordinator_card(prefix)] + [drone_card(prefix, d.name) for d in config.drones]
    return {"title": title, "views": [{"title": title, "path": "backups", "cards": cards}]}


def coordinator_card(prefix: str) -> dict[str, Any]:
    def entity(domain: str, suffix: str) -> str:
        return f"{domain}.{entities.object_id(prefix, None, suffix)}"

    return {
        "type": "entities",
        "title": f"{entities.title(prefix)} coordinator",
        "entities": [
            entity("input_select", "coordinator_mode"),
            entity("sensor", "active"),
            entity("sensor", "progress"),
            entity("sensor", "queue"),
            entity("sensor", "failing"),
        ],
    }


def drone_card(prefix: str, drone: str) -> dict[str, Any]:
    """Mode and frequency, state and times, sizes, the four buttons, the retention rules."""
    helpers = entities.drone_helpers(prefix, drone, DroneSettings())
    sensors = entities.drone_sensors(prefix, entities.DroneSnapshot.empty(drone))
    sizes = [p for p in sensors if p.attributes.get("device_class") == "data_size"]
    helper_prefix = f"{entities.title(prefix)} {drone} "

    def helper_rows(chosen: list[entities.HelperSpec]) -> list[dict[str, str]]:
        return [_row(h.entity_id, h.name.removeprefix(helper_prefix)) for h in chosen]

    def sensor_rows(chosen: list[entities.Publication]) -> list[dict[str, str]]:
        return [
            _row(p.entity_id, str(p.attributes["friendly_name"]).removeprefix(f"{drone} "))
            for p in chosen
        ]

    return {
        "type": "entities",
        "title": drone,
        "state_color": True,
        "entities": [
            *helper_rows([h for h in helpers if h.setting in ("mode", "frequency")]),
            *sensor_rows([p for p in sensors if p not in sizes]),
            {"type": "section", "label": "Repository"},
            *sensor_rows(sizes),
            {"type": "section", "label": "Actions"},
            *helper_rows([h for h in helpers if h.operation is not None]),
            {"type": "section", "label": "Retention"},
            *helper_rows([h for h in helpers if (h.setting or "").startswith("keep_")]),
        ],
    }


def _row(entity_id: str, name: str) -> dict[str, str]:
    return {"entity": entity_id, "name": name[:1].upper() + name[1:]}
