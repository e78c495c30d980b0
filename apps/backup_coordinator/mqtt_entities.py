"""The MQTT backend: the core's entities kept in Home Assistant through MQTT discovery.

No AppDaemon here: ``app.py`` hands in how to publish and feeds in the messages it receives.
Configs and states are retained, so after its own restart HA shows every entity and its last
state without the app doing anything. When HA announces itself online, everything is sent
again anyway (a broker restarted without persistence has lost what was retained).

Commands from HA reach the coordinator exactly as helper changes do: ``apply_setting`` checks
a value as it checks a helper's, and the control then shows the value in effect (a rejected
one snaps back).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from .config import Config, EntityBackend
from .entities import HelperDescription, Publication, SensorDescription
from .model import CopySettings, DroneSettings, DroneState
from .mqtt_discovery import (
    BUTTON_PRESS,
    OFFLINE,
    ONLINE,
    ClientStatus,
    Entry,
    OwnerKind,
    Topics,
    attributes_payload,
    catalogue,
    control_value,
    discovery_config,
    encode,
    entity_id_keys,
    state_payload,
)
from .ports import HomeAssistantPort
from .publishing import SensorPublisher, bounded

if TYPE_CHECKING:
    from .coordinator import Coordinator

# (topic, payload): publishes one retained message.
Publish = Callable[[str, str], Coroutine[Any, Any, None]]

MESSAGES_IN_FLIGHT = 16
UNREACHABLE_STATES = frozenset({DroneState.UNREACHABLE.value})  # a target's reads the same


class MqttEntities:
    """Announces the catalogue to HA and keeps each entity's state topic current."""

    def __init__(
        self,
        config: Config,
        status: ClientStatus,
        publish: Publish,
        log: Callable[..., None],
        home_assistant_version: str | None = None,
    ) -> None:
        self.prefix = config.entity_prefix
        self.id_keys = entity_id_keys(home_assistant_version)
        self.topics = Topics(config.mqtt.base_topic, config.mqtt.discovery_prefix)
        self.status = status
        self._send = publish
        self._log = log
        self.closed = False  # stopped: nothing more is sent
        self.entries = catalogue(config)
        # The core names a sensor by its helpers-backend entity id (a sensor's domain is the
        # same in both backends; only controls change domain over MQTT).
        self._by_entity = {e.entity_id(self.prefix, EntityBackend.HELPERS): e for e in self.entries}
        self._controls = {
            (e.owner, e.key): e
            for e in self.entries
            if isinstance(e.description, HelperDescription)
        }
        self._shown: dict[str, Publication] = {}  # each sensor's newest state, to send again
        self.sensors = SensorPublisher(self._send_sensor, MESSAGES_IN_FLIGHT, log)

    async def _publish(self, topic: str, payload: str) -> None:
        if not self.closed:  # a command handled while the app stops sends nothing more
            await self._send(topic, payload)

    async def set_running(self, running: bool) -> None:
        """The app's own availability: every entity turns unavailable when the app stops."""
        await self._publish(self.topics.app_availability, ONLINE if running else OFFLINE)

    async def close(self) -> None:
        """Drops what was not sent yet; sends nothing from now on."""
        self.closed = True
        await self.sensors.close()

    # --- what HA is told ------------------------------------------------------------------

    async def announce(self) -> None:
        """Every entity's discovery config (retained): HA creates the devices and entities."""
        await bounded(
            (
                self._publish(
                    self.topics.discovery(entry, self.prefix),
                    encode(
                        discovery_config(entry, self.prefix, self.topics, self.status, self.id_keys)
                    ),
                )
                for entry in self.entries
            ),
            MESSAGES_IN_FLIGHT,
        )

    def publish(self, publication: Publication) -> None:
        """Queues a sensor's state; the newest one of each sensor is sent."""
        if publication.entity_id not in self._by_entity:
            self._log(f"no MQTT entity for {publication.entity_id}", level="WARNING")
            return
        self._shown[publication.entity_id] = publication
        self.sensors.put(publication.entity_id, publication.state, {})

    def publish_again(self) -> None:
        """Every sensor's newest state once more."""
        for publication in list(self._shown.values()):
            self.sensors.put(publication.entity_id, publication.state, {})

    async def show_controls(self, coordinator: Coordinator) -> None:
        """Each number, select and text shows the value in effect."""
        await bounded(
            (
                self.show_control(coordinator, entry)
                for entry in self._controls.values()
                if entry.description.domain != "input_button"
            ),
            MESSAGES_IN_FLIGHT,
        )

    async def show_control(self, coordinator: Coordinator, entry: Entry) -> None:
        description = entry.description
        assert isinstance(description, HelperDescription)
        if description.first_value is None:
            return
        value = description.first_value(_control_source(coordinator, entry))
        # Only valid settings get here; still, all that leaves the process is redacted.
        shown = coordinator.redactor.text(control_value(description.domain, value))
        await self._publish(self.topics.entity(entry, "state"), shown)

    async def _send_sensor(self, entity_id: str, _state: str, _attributes: Any) -> None:
        publication = self._shown[entity_id]
        entry = self._by_entity[entity_id]
        description = entry.description
        assert isinstance(description, SensorDescription)
        await self._publish(
            self.topics.entity(entry, "attributes"), attributes_payload(publication)
        )
        await self._publish(
            self.topics.entity(entry, "state"), state_payload(description, publication)
        )
        if entry.key == "state" and entry.owner is not None:
            reachable = publication.state not in UNREACHABLE_STATES
            await self._publish(
                self.topics.availability(entry.owner), ONLINE if reachable else OFFLINE
            )

    async def announce_again(self, coordinator: Coordinator) -> None:
        """Configs, settings and states once more: HA restarted, or the broker (perhaps
        without what was retained) is back."""
        await self.announce()
        await self.set_running(True)
        await self.show_controls(coordinator)
        self.publish_again()

    # --- what HA asks -------------------------------------------------------------------------

    async def on_message(self, topic: str, payload: str, coordinator: Coordinator) -> None:
        """A message on a topic the app subscribed to: a command, or HA coming online."""
        if topic == self.topics.home_assistant_status:
            if payload == ONLINE:
                await self.announce_again(coordinator)
            return
        command = self.topics.command_of(topic)
        entry = self._controls.get(command) if command is not None else None
        if entry is None:
            return  # not one of ours (another app's topic, a removed drone)
        description = entry.description
        assert isinstance(description, HelperDescription)
        if description.operation is not None and entry.owner is not None:
            if payload == BUTTON_PRESS:
                await coordinator.request(entry.owner, description.operation)
        elif description.setting is not None:
            await coordinator.apply_setting(entry.owner, description.setting, payload)
            await self.show_control(coordinator, entry)  # a rejected value snaps back


def _control_source(coordinator: Coordinator, entry: Entry) -> DroneSettings | CopySettings | str:
    if entry.owner is None:
        return coordinator.global_mode
    if entry.kind is OwnerKind.DRONE:
        return coordinator.drones[entry.owner].settings
    return coordinator.targets[entry.owner].settings


class MqttPort:
    """The core's Home Assistant port with entities over MQTT: sensors go to the broker;
    events, notifications and the log still go to HA (``home_assistant``)."""

    def __init__(self, mqtt: MqttEntities, home_assistant: HomeAssistantPort) -> None:
        self.mqtt = mqtt
        self.home_assistant = home_assistant

    async def publish(self, publication: Publication) -> None:
        self.mqtt.publish(publication)

    async def fire_event(self, event_type: str, data: Mapping[str, Any]) -> None:
        await self.mqtt.sensors.drain()  # states first, as the core published them
        await self.home_assistant.fire_event(event_type, data)

    async def notify(self, notification_id: str, title: str, message: str) -> None:
        await self.mqtt.sensors.drain()
        await self.home_assistant.notify(notification_id, title, message)

    async def dismiss(self, notification_id: str) -> None:
        await self.mqtt.sensors.drain()
        await self.home_assistant.dismiss(notification_id)

    def log(self, message: str, level: str = "INFO") -> None:
        self.home_assistant.log(message, level)
