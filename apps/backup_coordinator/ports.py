"""The core's only ways out: to Home Assistant, and to the agents.

``app.py`` implements the Home Assistant port with AppDaemon and ``transport`` runs agents over
SSH; tests implement both in memory. Keeping them this small is what lets the whole core run and
be tested without Home Assistant or SSH.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from .entities import Publication
from .model import SshTarget
from .protocol import AgentEvent, Result

# The events the core fires on Home Assistant's bus (docs/entities.md).
EVENT_PROGRESS = "backup_coordinator_progress"
EVENT_STARTED = "backup_coordinator_started"
EVENT_FINISHED = "backup_coordinator_finished"
EVENT_PROBLEM = "backup_coordinator_problem"
EVENT_REQUEST = "backup_coordinator_request"
# ...and the one it listens to: a restore asked for by a script or a dashboard button.
EVENT_RESTORE = "backup_coordinator_restore"

# Runs one agent session: (host, agent operation, job, a callback for each event) -> result.
AgentRunner = Callable[
    [SshTarget, str, Mapping[str, Any], Callable[[AgentEvent], Awaitable[None]] | None],
    Awaitable[Result],
]


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
