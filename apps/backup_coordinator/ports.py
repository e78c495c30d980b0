"""The core's only way out to Home Assistant.

``app.py`` implements this with AppDaemon; tests implement it in memory. Keeping it this small
is what lets the whole core run and be tested without Home Assistant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .entities import Publication


class HomeAssistantPort(Protocol):
    async def publish(self, publication: Publication) -> None:
        """Set one sensor's state and attributes."""

    async def fire_event(self, event_type: str, data: Mapping[str, Any]) -> None:
        """Fire an event on HA's bus."""

    async def notify(self, notification_id: str, title: str, message: str) -> None:
        """Tell a person: a persistent notification, and the configured notify service."""

    async def dismiss(self, notification_id: str) -> None:
        """Withdraw a persistent notification that no longer applies."""

    def log(self, message: str, level: str = "INFO") -> None:
        """One readable line in the user's log (never anything secret)."""
