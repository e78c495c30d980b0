"""A Lovelace dashboard for the configured drones: one card per drone plus the coordinator's.

Built from the entity catalogue, so the dashboard and the entities can never disagree.
"""

from __future__ import annotations

from typing import Any

from . import entities
from .config import Config


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
    def entity(domain: str, suffix: str, name: str) -> dict[str, str]:
        return {"entity": f"{domain}.{entities.object_id(prefix, drone, suffix)}", "name": name}

    return {
        "type": "entities",
        "title": drone,
        "state_color": True,
        "entities": [
            entity("input_select", "mode", "Mode"),
            entity("input_number", "frequency", "Frequency"),
            entity("sensor", "state", "State"),
            entity("binary_sensor", "problem", "Problem"),
            entity("sensor", "last_backup", "Last backup"),
            entity("sensor", "next_backup", "Next backup"),
            entity("sensor", "last_prune", "Last prune"),
            {"type": "section", "label": "Repository"},
            entity("sensor", "total_size", "Total size"),
            entity("sensor", "compressed_size", "Compressed size"),
            entity("sensor", "deduplicated_size", "Deduplicated size"),
            {"type": "section", "label": "Actions"},
            entity("input_button", "create", "Create backup"),
            entity("input_button", "prune", "Prune backups"),
            entity("input_button", "update_stats", "Update stats"),
            entity("input_button", "scheduled_backup", "Scheduled backup"),
            {"type": "section", "label": "Retention"},
            entity("input_text", "keep_within", "Keep within"),
            entity("input_number", "keep_weekly", "Keep weekly"),
            entity("input_number", "keep_monthly", "Keep monthly"),
            entity("input_number", "keep_yearly", "Keep yearly"),
            entity("sensor", "last_error", "Last error"),
        ],
    }
