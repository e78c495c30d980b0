"""AppDaemon glue: the only module that imports appdaemon.

It turns ``apps.yaml`` into the core's configuration, makes sure every control helper exists in
Home Assistant, feeds helper changes and button presses to the coordinator, drives its tick, and
implements the core's Home Assistant port (sensors, events, notifications, log).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import appdaemon.plugins.hass.hassapi as hass

from . import entities
from .config import ConfigError, parse_config
from .coordinator import Coordinator
from .entities import HelperSpec, Publication
from .transport import Connections

HELPER_DOMAINS = ("input_number", "input_select", "input_text", "input_button")
NOT_A_VALUE = ("unknown", "unavailable", None)  # "" is a value: an empty keep within


class BackupCoordinator(hass.Hass):  # type: ignore[misc]
    """``module: backup_coordinator.app``, ``class: BackupCoordinator`` in apps.yaml."""

    coordinator: Coordinator | None = None
    connections: Connections | None = None
    helpers_by_entity: dict[str, HelperSpec]

    async def initialize(self) -> None:
        await self.terminate()  # initialised again without terminate()
        self.coordinator = None
        self.helpers_by_entity = {}
        try:
            config = parse_config(self.args, Path(self.config_dir))
        except ConfigError as error:
            self.log(f"configuration error: {error}; nothing runs until it is fixed", level="ERROR")
            return
        helpers = entities.coordinator_helpers(config.entity_prefix) + [
            helper
            for drone in config.drones
            for helper in entities.drone_helpers(config.entity_prefix, drone.name, drone.settings)
        ]
        created = await self._ensure_helpers(helpers)
        self.helpers_by_entity = {helper.entity_id: helper for helper in helpers}
        self.connections = Connections(limits=config.limits)
        self.coordinator = Coordinator(
            config, HomeAssistantAdapter(self, config.notify), self.connections.run_agent
        )
        # A helper created just now holds the apps.yaml value the config already has.
        existing = [helper for helper in helpers if helper.entity_id not in created]
        await self.coordinator.start(await self._helper_values(existing))
        for helper in helpers:
            # An event filter rather than listen_state: AppDaemon does not yet know helpers
            # created a moment ago and would log a warning for each of them.
            await self.listen_event(
                self._on_state_changed, "state_changed", entity_id=helper.entity_id
            )
        await self.run_every(self._on_tick, "now", config.tick_seconds)
        await self.run_in(self._on_tick, 0)  # run_every's first call is one interval away
        self.log(
            f"watching {len(config.drones)} drone(s): {', '.join(d.name for d in config.drones)};"
            f" tick every {config.tick_seconds:g} s"
        )

    async def terminate(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.stop()
        if self.connections is not None:
            await self.connections.close()

    # --- callbacks ----------------------------------------------------------------------------

    async def _on_tick(self, _kwargs: Mapping[str, Any]) -> None:
        if self.coordinator is not None:
            await self.coordinator.tick()

    async def _on_state_changed(
        self, _event: str, data: Mapping[str, Any], _kwargs: Mapping[str, Any]
    ) -> None:
        helper = self.helpers_by_entity.get(str(data.get("entity_id")))
        old = (data.get("old_state") or {}).get("state")
        new = (data.get("new_state") or {}).get("state")
        if self.coordinator is None or helper is None or new in NOT_A_VALUE or new == old:
            return
        if helper.operation is not None:
            if old in (None, "unavailable"):  # the button appearing or HA coming back
                return
            if helper.drone is not None:
                await self.coordinator.request(helper.drone, helper.operation)
        elif helper.setting is not None:
            await self.coordinator.apply_setting(helper.drone, helper.setting, new)

    # --- helpers ------------------------------------------------------------------------------

    async def _ensure_helpers(self, helpers: Sequence[HelperSpec]) -> set[str]:
        """Create the helpers HA does not have yet (existing ones keep the user's values);
        returns the entity ids created."""
        created: set[str] = set()
        for domain in HELPER_DOMAINS:
            wanted = [helper for helper in helpers if helper.domain == domain]
            if not wanted:
                continue
            existing = {item["id"] for item in await self._ws(f"{domain}/list")}
            for helper in wanted:
                if helper.object_id not in existing:
                    await self._create_missing_helper(helper)
                    created.add(helper.entity_id)
        return created

    async def _create_missing_helper(self, helper: HelperSpec) -> None:
        created = await self._ws(
            f"{helper.domain}/create", name=helper.name, icon=helper.icon, **helper.create_fields
        )
        if created.get("id") != helper.object_id:
            self.log(
                f"helper {helper.name!r} was created as {helper.domain}.{created.get('id')},"
                f" expected {helper.entity_id}",
                level="WARNING",
            )
        self.log(f"created {helper.entity_id}")
        if helper.first_value is not None:
            # HA has added the entity by the time `create` answers: set the first value now.
            await self._set_helper_value(helper, helper.first_value)

    async def _set_helper_value(self, helper: HelperSpec, value: str | float) -> None:
        if helper.domain == "input_select":
            await self.call_service(
                "input_select/select_option", entity_id=helper.entity_id, option=str(value)
            )
        else:
            # str(): AppDaemon drops a literal 0 from service data
            await self.call_service(
                f"{helper.domain}/set_value", entity_id=helper.entity_id, value=str(value)
            )

    async def _helper_values(
        self, helpers: Sequence[HelperSpec]
    ) -> dict[str | None, dict[str, object]]:
        values: dict[str | None, dict[str, object]] = {}
        for helper in helpers:
            if helper.setting is None:
                continue
            value = await self.get_state(helper.entity_id)
            if value not in NOT_A_VALUE:
                values.setdefault(helper.drone, {})[helper.setting] = value
        return values

    async def _ws(self, command: str, **fields: Any) -> Any:
        """One websocket command to HA; its ``result``. Prefers AppDaemon's public call."""
        call_ws = getattr(self, "call_ws", None)  # public from AppDaemon 4.5.14 on
        if call_ws is not None:
            reply = await call_ws(type=command, **fields)
        else:
            reply = await self._plugin.websocket_send_json(type=command, **fields)
        if not reply or not reply.get("success"):
            error = (reply or {}).get("error", {}).get("message", "no answer")
            raise RuntimeError(f"Home Assistant refused {command}: {error}")
        return reply.get("result")


class HomeAssistantAdapter:
    """The core's Home Assistant port, implemented with AppDaemon calls."""

    def __init__(self, app: BackupCoordinator, notify_service: str | None) -> None:
        self.app = app
        self.notify_service = notify_service
        # AppDaemon 4.5.13 mixes up concurrent set_state replies (HA then stores last_changed
        # etc. as attributes): one at a time, and attributes replaced, never merged.
        self._publishing = asyncio.Lock()

    async def publish(self, publication: Publication) -> None:
        async with self._publishing:
            await self.app.set_state(
                publication.entity_id,
                state=publication.state,
                attributes=_survives_appdaemon(publication.attributes),
                replace=True,
                check_existence=False,
            )

    async def fire_event(self, event_type: str, data: Mapping[str, Any]) -> None:
        await self.app.fire_event(event_type, **data)

    async def notify(self, notification_id: str, title: str, message: str) -> None:
        await self._call(
            "persistent_notification/create",
            notification_id=notification_id,
            title=title,
            message=message,
        )
        if self.notify_service:
            await self._call(self.notify_service.replace(".", "/", 1), title=title, message=message)

    async def dismiss(self, notification_id: str) -> None:
        await self._call("persistent_notification/dismiss", notification_id=notification_id)

    async def _call(self, service: str, **data: Any) -> None:
        """A notification that cannot be delivered (a mistyped notify service, HA away) is
        logged; it must never stop the coordinator from recording what happened."""
        try:
            await self.app.call_service(service, **data)
        except Exception as error:
            self.app.log(f"could not call {service}: {error}", level="WARNING")

    def log(self, message: str, level: str = "INFO") -> None:
        self.app.log(message, level=level)


def _survives_appdaemon(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """AppDaemon 4.5.13's set_state drops attributes equal to 0 or False: send those as text."""
    return {
        key: _as_text(value) if isinstance(value, bool) or value == 0 else value
        for key, value in attributes.items()
        if value is not None  # dropped by AppDaemon anyway; absent reads better than "None"
    }


def _as_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
