"""AppDaemon glue: the only module that imports appdaemon.

It turns ``apps.yaml`` into the core's configuration, makes sure every control helper exists in
Home Assistant, feeds helper changes and button presses to the coordinator, drives its tick, and
implements the core's Home Assistant port (sensors, events, notifications, log).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from traceback import format_exc
from typing import Any

import aiohttp
import appdaemon.plugins.hass.hassapi as hass

from . import entities
from .config import Config, ConfigError, EntityBackend, parse_config
from .coordinator import Coordinator
from .entities import HelperSpec, Publication
from .mqtt_discovery import ClientStatus, DisplayUnit, display_options, display_units
from .mqtt_entities import MqttEntities, MqttPort, Publish
from .offsite_entities import target_helpers
from .ports import EVENT_RESTORE
from .publishing import HomeAssistantUnavailable, SensorPublisher, StatePoster, bounded
from .transport import Connections

MQTT_EVENT = "MQTT_MESSAGE"  # AppDaemon's MQTT plugin's event for each message received
MQTT_RECONNECTED = "Connected"  # ...and its data["state"] when it has connected again
HELPER_DOMAINS = ("input_number", "input_select", "input_text", "input_button")
APPDAEMON_EVENT_KEYS = frozenset({"metadata"})  # added by AppDaemon to every HA event's data
NOT_A_VALUE = ("unknown", "unavailable", None)  # "" is a value: an empty keep within
SENSOR_DOMAINS = ("sensor", "binary_sensor")
# HA closes a websocket with more than 4096 pending messages: keep far fewer in flight.
MAX_COMMANDS_IN_FLIGHT = 50
MAX_STATES_IN_FLIGHT = 8  # sensor states sent to HA's REST API at once
REST_TIMEOUT_SECONDS = 10.0
DRAIN_ON_STOP_SECONDS = 5.0
# A start that fails (HA restarting, the websocket dropped) is tried again after these delays.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
NAMES_LOGGED = 20  # the start line names at most this many drones
# How long the MQTT backend waits for HA to register its sensors before setting their units.
DISPLAY_UNIT_SECONDS = 60.0
DISPLAY_UNIT_POLL_SECONDS = 1.0


class BackupCoordinator(hass.Hass):  # type: ignore[misc]
    """``module: backup_coordinator.app``, ``class: BackupCoordinator`` in apps.yaml."""

    coordinator: Coordinator | None = None
    adapter: HomeAssistantAdapter | None = None
    mqtt: MqttEntities | None = None  # with ``entities: mqtt``
    connections: Connections | None = None
    helpers_by_entity: dict[str, HelperSpec]
    _starting: asyncio.Task[None] | None = None
    _listeners: list[Any]  # AppDaemon's handles of what this start registered
    _timers: list[Any]
    _background: list[asyncio.Task[None]]  # work this start left running

    async def initialize(self) -> None:
        await self._stop()
        self.helpers_by_entity = {}
        self._listeners, self._timers, self._background = [], [], []
        try:
            config = parse_config(self.args, Path(self.config_dir))
        except ConfigError as error:
            self.log(f"configuration error: {error}; nothing runs until it is fixed", level="ERROR")
            return
        # In the background: with many drones a start takes seconds, and HA may be away for
        # minutes; AppDaemon's app management would wait for initialize() all that time.
        self._starting = await self.create_task(self._start_until_done(config))

    async def terminate(self) -> None:
        await self._stop()

    async def _stop(self) -> None:
        starting, self._starting = self._starting, None
        for task in [starting, *getattr(self, "_background", [])]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.coordinator is not None:  # also when initialised again without terminate()
            await self.coordinator.stop()
        self.coordinator = None
        if self.connections is not None:
            await self.connections.close()
        self.connections = None
        for publisher in self._publishers():
            # What the stopped operations published last, if HA takes it in a moment.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(publisher.drain(), DRAIN_ON_STOP_SECONDS)
        if self.mqtt is not None:  # every entity unavailable, though AppDaemon runs on
            with contextlib.suppress(HomeAssistantUnavailable, TimeoutError):
                await asyncio.wait_for(self.mqtt.set_running(False), DRAIN_ON_STOP_SECONDS)
        await self._close_publishers()

    def _publishers(self) -> list[SensorPublisher]:
        return [owner.sensors for owner in (self.adapter, self.mqtt) if owner is not None]

    async def _close_publishers(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.close()
        if self.adapter is not None:
            await self.adapter.sensors.close()
        self.adapter = self.mqtt = None

    # --- start-up -----------------------------------------------------------------------------

    async def _start_until_done(self, config: Config) -> None:
        """Starts, and when HA fails a start, tries again: 1 s, 2 s, 4 s ... 60 s later."""
        delay = FIRST_RETRY_SECONDS
        for attempt in itertools.count(1):
            if await self._try_start(config, attempt, retry_in=delay):
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_SECONDS)

    async def _try_start(self, config: Config, attempt: int, retry_in: float) -> bool:
        """One attempt to start; False (logged, nothing left registered) when it failed."""
        try:
            await self._start(config, attempt)
        except HomeAssistantUnavailable as error:
            reason = str(error)
        except Exception as error:  # a bug: the traceback helps, and retrying costs nothing
            reason = f"{type(error).__name__}: {error}\n{format_exc()}"
        else:
            return True
        await self._undo_partial_start()
        self.log(
            f"could not start (attempt {attempt}): {reason}; trying again in {retry_in:g} s",
            level="WARNING",
        )
        return False

    async def _undo_partial_start(self) -> None:
        for listener in self._listeners:
            await self.cancel_listen_event(listener)
        for timer in self._timers:
            await self.cancel_timer(timer)
        for task in self._background:
            task.cancel()
        self._listeners, self._timers, self._background = [], [], []
        if self.coordinator is not None:
            await self.coordinator.stop()
            self.coordinator = None
        if self.connections is not None:
            await self.connections.close()
            self.connections = None
        await self._close_publishers()

    async def _start(self, config: Config, attempt: int) -> None:
        timer = _PhaseTimer()
        if config.entities is EntityBackend.MQTT:
            await self._start_with_mqtt(config, timer)
        else:
            await self._start_with_helpers(config, timer)
        self._listeners.append(await self.listen_event(self._on_restore, EVENT_RESTORE))
        self._timers.append(await self.run_every(self._on_tick, "now", config.tick_seconds))
        # run_every's first call is one interval away
        self._timers.append(await self.run_in(self._on_tick, 0))
        names = [d.name for d in config.drones]
        shown_names = ", ".join(names[:NAMES_LOGGED]) + (
            f" and {len(names) - NAMES_LOGGED} more" if len(names) > NAMES_LOGGED else ""
        )
        self.log(
            f"watching {len(names)} drone(s): {shown_names}; tick every {config.tick_seconds:g} s;"
            f" entities through {config.entities.value}; started in {timer.summary()}"
            + (f" at attempt {attempt}" if attempt > 1 else "")
        )

    async def _start_with_helpers(self, config: Config, timer: _PhaseTimer) -> None:
        helpers = (
            entities.coordinator_helpers(config.entity_prefix)
            + [
                helper
                for drone in config.drones
                for helper in entities.drone_helpers(
                    config.entity_prefix, drone.name, drone.settings
                )
            ]
            + [
                helper
                for target in config.offsite
                for helper in target_helpers(config.entity_prefix, target.name, target.settings)
            ]
        )
        created = await self._ensure_helpers(helpers)
        timer.done(f"helpers ({len(created)} created)")
        self.helpers_by_entity = {helper.entity_id: helper for helper in helpers}
        states = await self._states_in_home_assistant()
        # A helper created just now holds the apps.yaml value the config already has.
        existing = [helper for helper in helpers if helper.entity_id not in created]
        helper_values = _helper_values(existing, states)
        shown = _sensors_shown(config.entity_prefix, states)
        timer.done("read states")
        self.adapter = HomeAssistantAdapter(self, config.notify, shown)
        self.connections = Connections(limits=config.limits)
        self.coordinator = Coordinator(config, self.adapter, self.connections.run_agent)
        await self.coordinator.start(helper_values)
        await self.adapter.sensors.flush()
        timer.done(f"publish ({self.adapter.unchanged} unchanged)")
        await self._listen_to_helpers()

    async def _start_with_mqtt(self, config: Config, timer: _PhaseTimer) -> None:
        """Entities through MQTT discovery: announce them, then run the coordinator with a
        port that sends sensor states to the broker (settings come from the state file)."""
        namespace = config.mqtt.namespace
        self.adapter = HomeAssistantAdapter(self, config.notify)
        self.mqtt = MqttEntities(
            config,
            self._mqtt_client_status(namespace),
            self._mqtt_publisher(namespace),
            self.log,
            await self._home_assistant_version(),
        )
        await self.mqtt.announce()
        await self.mqtt.set_running(True)
        timer.done(f"announce {len(self.mqtt.entries)} entities")
        self.connections = Connections(limits=config.limits)
        port = MqttPort(self.mqtt, self.adapter)
        self.coordinator = Coordinator(config, port, self.connections.run_agent)
        await self.coordinator.start({})
        await self.mqtt.show_controls(self.coordinator)
        await self.mqtt.sensors.flush()
        timer.done("publish")
        self._listeners.append(
            await self.listen_event(self._on_mqtt_message, MQTT_EVENT, namespace=namespace)
        )
        for topic in (self.mqtt.topics.commands, self.mqtt.topics.home_assistant_status):
            await self.call_service("mqtt/subscribe", topic=topic, namespace=namespace)
        units = display_units(self.mqtt.entries, config.entity_prefix)
        self._background.append(await self.create_task(self._show_in_units(units)))

    async def _show_in_units(self, units: Mapping[str, DisplayUnit]) -> None:
        """Gives each sensor sent in a base unit (bytes, B/s, s) the unit people read, once HA
        has registered it and unless someone picked a unit already (their choice stays).
        The entity registry's option is what HA's entity settings set."""
        try:
            await self._set_units(dict(units))
        except HomeAssistantUnavailable as error:  # shown in bytes until the next start
            self.log(f"could not set the units sizes are shown in: {error}", level="WARNING")

    async def _set_units(self, waiting: dict[str, DisplayUnit]) -> None:
        deadline = time.monotonic() + DISPLAY_UNIT_SECONDS
        while waiting and time.monotonic() < deadline:
            registered = await self._ws(
                "config/entity_registry/get_entries", entity_ids=list(waiting)
            )
            for entity_id, entry in (registered or {}).items():
                if entry is None:
                    continue  # HA has not taken in its discovery config yet
                shown = waiting.pop(entity_id)
                current = (entry.get("options") or {}).get("sensor") or {}
                if (options := display_options(current, shown)) is not None:
                    await self._ws(
                        "config/entity_registry/update",
                        entity_id=entity_id,
                        options_domain="sensor",
                        options=options,
                    )
            if waiting:
                await asyncio.sleep(DISPLAY_UNIT_POLL_SECONDS)

    async def _home_assistant_version(self) -> str | None:
        """HA's version as the HASS plugin read it (MQTT discovery names entity ids by it)."""
        ha_config = await self.get_plugin_config()
        version = ha_config.get("version") if isinstance(ha_config, Mapping) else None
        return version if isinstance(version, str) else None

    def _mqtt_client_status(self, namespace: str) -> ClientStatus:
        """Where AppDaemon's MQTT client announces itself: every entity's availability."""
        plugin = self.AD.plugins.get_plugin_object(namespace)
        config = getattr(plugin, "config", None)
        if config is None or not hasattr(config, "will_topic"):
            raise HomeAssistantUnavailable(
                f"AppDaemon has no MQTT plugin in namespace {namespace!r}: add one to"
                " appdaemon.yaml (README: entities through MQTT) or set mqtt.namespace"
            )
        if not getattr(plugin, "mqtt_connected", False):
            raise HomeAssistantUnavailable("AppDaemon's MQTT plugin is not connected to the broker")
        if config.birth_topic != config.will_topic or not config.birth_retain:
            self.log(
                f"AppDaemon's MQTT plugin announces itself on {config.birth_topic}"
                f" (retained: {config.birth_retain}) but its last will is on {config.will_topic}:"
                " entities follow the last will's topic; keep AppDaemon's defaults for both",
                level="WARNING",
            )
        return ClientStatus(config.will_topic, config.birth_payload, config.will_payload)

    def _mqtt_publisher(self, namespace: str) -> Publish:
        plugin = self.AD.plugins.get_plugin_object(namespace)

        async def publish(topic: str, payload: str) -> None:
            if not getattr(plugin, "mqtt_connected", False):
                return  # the broker is away: everything is sent again when it is back
            sent = await self.call_service(
                "mqtt/publish", topic=topic, payload=payload, retain=True, namespace=namespace
            )
            if sent is None or getattr(sent, "rc", 0) != 0:  # None: the client is disconnected
                raise HomeAssistantUnavailable(f"the MQTT broker did not take {topic}")

        return publish

    async def _listen_to_helpers(self) -> None:
        # One listener filtered by a set lookup: AppDaemon checks every event against every
        # listener, so one per helper would cost (events x helpers) and slow it to a crawl
        # with thousands of helpers. An event filter rather than listen_state: AppDaemon does
        # not yet know helpers created a moment ago and would warn about each.
        helpers = self.helpers_by_entity
        self._listeners.append(
            await self.listen_event(
                self._on_state_changed,
                "state_changed",
                entity_id=lambda entity_id: entity_id in helpers,
            )
        )

    async def _states_in_home_assistant(self) -> dict[str, Any]:
        """AppDaemon's mirror of HA's states (read, never changed): no request to HA."""
        states: dict[str, Any] = await self.get_state(copy=False)
        return states

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

    async def _on_mqtt_message(
        self, _event: str, data: Mapping[str, Any], _kwargs: Mapping[str, Any]
    ) -> None:
        if self.coordinator is None or self.mqtt is None:
            return
        topic, payload = data.get("topic"), data.get("payload")
        try:
            if isinstance(topic, str) and isinstance(payload, str):
                await self.mqtt.on_message(topic, payload, self.coordinator)
            elif data.get("state") == MQTT_RECONNECTED:  # what the broker lost is sent again
                await self.mqtt.announce_again(self.coordinator)
        except HomeAssistantUnavailable as error:  # the broker went away again meanwhile
            self.log(f"could not answer on MQTT: {error}", level="WARNING")

    async def _on_restore(
        self, _event: str, data: Mapping[str, Any], _kwargs: Mapping[str, Any]
    ) -> None:
        if self.coordinator is not None:
            # AppDaemon adds its own keys to an event's data; the request is the rest.
            request = {k: v for k, v in data.items() if k not in APPDAEMON_EVENT_KEYS}
            await self.coordinator.restore(request)

    # --- helpers ------------------------------------------------------------------------------

    async def _ensure_helpers(self, helpers: Sequence[HelperSpec]) -> set[str]:
        """Create the helpers HA does not have yet (existing ones keep the user's values) and
        give them their first values; returns the entity ids created."""
        missing: list[HelperSpec] = []
        for domain in HELPER_DOMAINS:
            wanted = [helper for helper in helpers if helper.domain == domain]
            if wanted:
                existing = {item["id"] for item in await self._ws(f"{domain}/list")}
                missing += [helper for helper in wanted if helper.object_id not in existing]
        await bounded(
            (self._create_missing_helper(helper) for helper in missing), MAX_COMMANDS_IN_FLIGHT
        )
        await self._set_first_values(missing)
        return {helper.entity_id for helper in missing}

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

    async def _set_first_values(self, created: Sequence[HelperSpec]) -> None:
        """HA has added a helper by the time `create` answers. Helpers with the same first
        value share service calls (most drones keep the defaults)."""
        by_value: dict[tuple[str, str], list[str]] = {}
        for helper in created:
            if helper.first_value is not None:
                key = (helper.domain, str(helper.first_value))
                by_value.setdefault(key, []).append(helper.entity_id)
        # One call at a time: each one makes HA send an event per helper, and HA drops a
        # client with 4096 messages waiting.
        for (domain, value), entity_ids in by_value.items():
            for start in range(0, len(entity_ids), MAX_COMMANDS_IN_FLIGHT):
                chunk = entity_ids[start : start + MAX_COMMANDS_IN_FLIGHT]
                await self._set_helper_values(domain, value, chunk)
        if created:
            counts = {d: sum(h.domain == d for h in created) for d in HELPER_DOMAINS}
            self.log(
                f"created {len(created)} helper(s): "
                + ", ".join(f"{count} {domain}" for domain, count in counts.items() if count)
            )

    async def _set_helper_values(self, domain: str, value: str, entity_ids: list[str]) -> None:
        # Over the websocket like the rest of the start: AppDaemon's call_service would warn
        # about every helper it has not heard of yet.
        if domain == "input_select":
            service, data = "select_option", {"option": value}
        else:
            service, data = "set_value", {"value": value}
        await self._ws(
            "call_service",
            domain=domain,
            service=service,
            service_data=data,
            target={"entity_id": entity_ids},
        )

    def state_poster(self) -> tuple[StatePoster, int]:
        """How sensor states reach HA, and how many may be on their way at once.

        HA's REST API (``POST /api/states``) with AppDaemon's HA session, several at a time:
        one at a time, 10,000 sensors take many seconds. Not AppDaemon's set_state: 4.5.13 mixes
        up the replies of concurrent calls (HA then stores last_changed etc. as attributes), so
        it could only send one at a time; it is the fallback if the session is not there.
        """
        plugin = self._plugin
        base_url = getattr(getattr(plugin, "config", None), "ha_url", None)
        if base_url is None or not hasattr(plugin, "session"):
            return self._set_state, 1

        async def post(entity_id: str, state: str, attributes: dict[str, Any]) -> None:
            # The plugin opens a new session whenever it reconnects: look it up every time.
            async with plugin.session.post(
                str(base_url / f"api/states/{entity_id}"),
                json={"state": state, "attributes": attributes},
                timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT_SECONDS),
            ) as response:
                if response.status >= 400:
                    raise HomeAssistantUnavailable(
                        f"Home Assistant refused the state of {entity_id}:"
                        f" HTTP {response.status} {await response.text()}"
                    )

        return post, MAX_STATES_IN_FLIGHT

    async def _set_state(self, entity_id: str, state: str, attributes: dict[str, Any]) -> None:
        await self.set_state(
            entity_id,
            state=state,
            attributes=attributes,
            replace=True,  # attributes replaced, never merged
            check_existence=False,
            _silent=True,  # else AppDaemon logs "created" for every new sensor
        )

    async def _ws(self, command: str, **fields: Any) -> Any:
        """One websocket command to HA; its ``result``. Prefers AppDaemon's public call."""
        call_ws = getattr(self, "call_ws", None)  # public from AppDaemon 4.5.14 on
        if call_ws is not None:
            reply = await call_ws(type=command, **fields)
        else:
            reply = await self._plugin.websocket_send_json(type=command, **fields)
        return _check_reply(command, reply).get("result")


def _check_reply(command: str, reply: object) -> Mapping[str, Any]:
    """HA's answer to a websocket command or service call; raises unless it succeeded. No
    answer at all is what AppDaemon returns while its connection to HA is down."""
    if not isinstance(reply, Mapping) or not reply.get("success"):
        error = reply.get("error", {}).get("message") if isinstance(reply, Mapping) else None
        raise HomeAssistantUnavailable(f"Home Assistant refused {command}: {error or 'no answer'}")
    return reply


class HomeAssistantAdapter:
    """The core's Home Assistant port, implemented with AppDaemon calls.

    ``shown``: what HA showed for the app's sensors when it started (entity id -> state,
    attributes). A sensor's first publication is skipped when HA shows exactly that already,
    so a restart of AppDaemon does not send every sensor again. Later publications are always
    sent (the coordinator sends only changes).
    """

    def __init__(
        self,
        app: BackupCoordinator,
        notify_service: str | None,
        shown: Mapping[str, tuple[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.notify_service = notify_service
        self._shown_at_start = dict(shown or {})
        self.unchanged = 0  # first publications HA showed already
        post, in_flight = app.state_poster()
        self.sensors = SensorPublisher(post, in_flight, app.log)

    async def publish(self, publication: Publication) -> None:
        attributes = _survives_appdaemon(publication.attributes)
        shown = self._shown_at_start.pop(publication.entity_id, None)
        if shown is not None and shown == (publication.state, _as_json(attributes)):
            self.unchanged += 1
            return
        self.sensors.put(publication.entity_id, publication.state, attributes)

    async def fire_event(self, event_type: str, data: Mapping[str, Any]) -> None:
        await self.sensors.drain()  # sensors first, as the core published them
        await self.app.fire_event(event_type, **data)

    async def notify(self, notification_id: str, title: str, message: str) -> None:
        await self.sensors.drain()
        await self._call(
            "persistent_notification/create",
            notification_id=notification_id,
            title=title,
            message=message,
        )
        if self.notify_service:
            await self._call(self.notify_service.replace(".", "/", 1), title=title, message=message)

    async def dismiss(self, notification_id: str) -> None:
        await self.sensors.drain()
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


def _as_json(attributes: Mapping[str, Any]) -> Any:
    """Attributes as HA stores and returns them (tuples become lists, and so on)."""
    return json.loads(json.dumps(attributes, default=str))


def _helper_values(
    helpers: Sequence[HelperSpec], states: Mapping[str, Any]
) -> dict[str | None, dict[str, object]]:
    """drone (None: the coordinator) -> setting -> the value HA shows for its helper."""
    values: dict[str | None, dict[str, object]] = {}
    for helper in helpers:
        value = (states.get(helper.entity_id) or {}).get("state")
        if helper.setting is not None and value not in NOT_A_VALUE:
            values.setdefault(helper.drone, {})[helper.setting] = value
    return values


def _sensors_shown(prefix: str, states: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """The app's sensors as HA shows them now: entity id -> (state, attributes)."""
    own = tuple(f"{domain}.{prefix}_" for domain in SENSOR_DOMAINS)
    return {
        entity_id: (str(state.get("state")), _as_json(state.get("attributes") or {}))
        for entity_id, state in states.items()
        if entity_id.startswith(own) and isinstance(state, Mapping)
    }


class _PhaseTimer:
    """How long each phase of a start took, for the start line in the log."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.phases: list[str] = []

    def done(self, phase: str) -> None:
        now = time.monotonic()
        self.phases.append(f"{phase} {now - self.last:.2f} s")
        self.last = now

    def summary(self) -> str:
        return f"{time.monotonic() - self.started:.2f} s ({', '.join(self.phases)})"
