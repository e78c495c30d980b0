"""An in-memory Home Assistant port: what the coordinator would have shown and fired."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backup_coordinator.entities import Publication


class MemoryPort:
    def __init__(self) -> None:
        self.states: dict[str, Publication] = {}
        self.published: list[Publication] = []  # every publish, in order
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.notifications: dict[str, str] = {}
        self.notified: list[str] = []  # every notify call, in order
        self.lines: list[str] = []

    async def publish(self, publication: Publication) -> None:
        self.states[publication.entity_id] = publication
        self.published.append(publication)

    async def fire_event(self, event_type: str, data: Mapping[str, Any]) -> None:
        self.events.append((event_type, dict(data)))

    async def notify(self, notification_id: str, title: str, message: str) -> None:
        self.notifications[notification_id] = message
        self.notified.append(notification_id)

    async def dismiss(self, notification_id: str) -> None:
        self.notifications.pop(notification_id, None)

    def log(self, message: str, level: str = "INFO") -> None:
        self.lines.append(f"{level} {message}")

    def state(self, entity_id: str) -> str:
        return self.states[entity_id].state

    def history(self, entity_id: str) -> list[str]:
        """Every state the entity was shown, in order."""
        return [p.state for p in self.published if p.entity_id == entity_id]

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [data for kind, data in self.events if kind == event_type]
