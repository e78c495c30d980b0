"""The MQTT parts of the stack together: mosquitto, HA's MQTT integration with discovery, and
AppDaemon's MQTT plugin, driven through the harness."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from devstack.haclient import HaClient
from devstack.homeassistant import HomeAssistant
from devstack.mosquitto import Mosquitto
from devstack.mqttclient import (
    MqttClient,
    async_read_retained,
    async_wait_for_retained,
    read_retained,
)
from devstack.waiting import async_wait_until
from tests.e2e.stack_support import (
    AppDaemonFactory,
    appdaemon_factory_fixture,  # noqa: F401
    ha_client_fixture,  # noqa: F401
    ha_mqtt_entry_fixture,  # noqa: F401
    ha_token_fixture,  # noqa: F401
    home_assistant_fixture,  # noqa: F401
    mosquitto_binary,
    mqtt_broker_fixture,  # noqa: F401
    mqtt_fixture,  # noqa: F401
    state_is,
)

pytestmark = pytest.mark.e2e

DEVICE = {
    "identifiers": ["borg_test_device"],
    "name": "Borg Test Device",
    "manufacturer": "backup-coordinator",
}
SIZE_STATE_TOPIC = "borg_test/size/state"
SUGGESTED_UNIT_STATE_TOPIC = "borg_test/suggested_unit/state"
BUTTON_COMMAND_TOPIC = "borg_test/run/set"
HA_STATUS_TOPIC = "homeassistant/status"
PROBE_PING_TOPIC = "borg_probe/ping"
PROBE_ECHO_TOPIC = "borg_probe/echo"

SIZE_SENSOR_CONFIG = {
    "name": "Test Size",
    "unique_id": "borg_test_size_uid",
    # HA 2025.4 derives the entity id from object_id; newer HA reads default_entity_id.
    "object_id": "borg_test_sensor",
    "default_entity_id": "sensor.borg_test_sensor",
    "state_topic": SIZE_STATE_TOPIC,
    "device_class": "data_size",
    "unit_of_measurement": "B",
    "suggested_display_precision": 1,
    "device": DEVICE,
}
SUGGESTED_UNIT_SENSOR_CONFIG = {
    "name": "Test Suggested Unit",
    "unique_id": "borg_test_suggested_unit_uid",
    "object_id": "borg_test_suggested_unit",
    "state_topic": SUGGESTED_UNIT_STATE_TOPIC,
    "device_class": "data_size",
    "unit_of_measurement": "B",
    "suggested_unit_of_measurement": "GiB",
    "device": DEVICE,
}
BUTTON_CONFIG = {
    "name": "Test Run",
    "unique_id": "borg_test_run_uid",
    "object_id": "borg_test_button",
    "command_topic": BUTTON_COMMAND_TOPIC,
    "payload_press": "PRESS",
    "device": DEVICE,
}

MQTT_PROBE_APP = '''\
"""Harness probe: publishes, subscribes and listens through AppDaemon's MQTT plugin."""

from appdaemon.plugins.hass.hassapi import Hass


class MqttProbe(Hass):
    async def initialize(self):
        prefix = self.args["prefix"]
        await self.listen_event(
            self.on_ping, "MQTT_MESSAGE", namespace="mqtt", topic=f"{prefix}/ping"
        )
        await self.listen_event(
            self.on_connected, "MQTT_MESSAGE", namespace="mqtt", state="Connected"
        )
        await self.call_service("mqtt/subscribe", topic=f"{prefix}/ping", namespace="mqtt")
        await self.call_service(
            "mqtt/publish", topic=f"{prefix}/hello", payload="hi", retain=True, namespace="mqtt"
        )
        self.log("mqtt probe initialised")

    async def on_connected(self, event_name, data, kwargs):
        self.log("mqtt probe saw the broker connect")

    async def on_ping(self, event_name, data, kwargs):
        await self.call_service(
            "mqtt/publish",
            topic=f"{self.args['prefix']}/echo",
            payload=data["payload"],
            namespace="mqtt",
        )
'''

MQTT_PROBE_APPS_YAML = """\
mqtt_probe:
  module: mqtt_probe.probe
  class: MqttProbe
  prefix: borg_probe
"""


def discovery_topic(component: str, config: dict[str, Any]) -> str:
    return f"homeassistant/{component}/borg_test/{config['object_id']}/config"


def publish_discovery(mqtt: MqttClient, component: str, config: dict[str, Any]) -> None:
    mqtt.publish(discovery_topic(component, config), json.dumps(config), retain=True)


async def registry_entry(ha_client: HaClient, entity_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = await ha_client.ws_command(
        "config/entity_registry/get", entity_id=entity_id
    )
    return entry


def mqtt_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "mqtt" in line.lower()]


async def ping_until_echoed(client: MqttClient, payload: str, timeout: float = 15) -> None:
    """Pings the probe app until its echo comes: right after a (re)connect its subscription
    may not be in place yet, and a ping before it would be lost."""

    async def echoed() -> bool:
        mark = client.mark()
        client.publish(PROBE_PING_TOPIC, payload)
        try:
            await client.async_wait_for_message(
                PROBE_ECHO_TOPIC, lambda message: message.payload == payload, 1.0, mark
            )
        except TimeoutError:
            return False
        return True

    await async_wait_until(echoed, f"the probe app to echo {payload}", timeout)


@pytest.fixture
def mqtt_probe_package(tmp_path: Path) -> Path:
    package = tmp_path / "mqtt_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "probe.py").write_text(MQTT_PROBE_APP)
    return package


def test_broker_keeps_retained_messages_across_a_restart(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", mosquitto_binary())
    with broker.running():
        with MqttClient(broker.port) as client:
            client.publish("borg_test/kept", "yes", retain=True)
        assert read_retained(broker.port, "borg_test/nothing") is None
        broker.restart()
        assert read_retained(broker.port, "borg_test/kept") == "yes"
    assert broker.pid is None


# Each test asks for ha_mqtt_entry first: the broker then starts before HA and stops after it.


async def test_ha_mqtt_integration_is_loaded(
    ha_mqtt_entry: str, mqtt_broker: Mosquitto, ha_client: HaClient
) -> None:
    entries = await ha_client.config_entries("mqtt")
    assert [(entry["entry_id"], entry["state"]) for entry in entries] == [(ha_mqtt_entry, "loaded")]
    # Set up again (as after an HA restart): the one entry is kept.
    assert await ha_client.setup_mqtt(mqtt_broker.port) == ha_mqtt_entry


async def test_discovered_sensor_and_button_have_unique_ids_a_device_and_work(
    ha_mqtt_entry: str, home_assistant: HomeAssistant, ha_client: HaClient, mqtt: MqttClient
) -> None:
    log_offset = len(home_assistant.log_text())
    mqtt.subscribe(BUTTON_COMMAND_TOPIC)
    publish_discovery(mqtt, "sensor", SIZE_SENSOR_CONFIG)
    publish_discovery(mqtt, "button", BUTTON_CONFIG)
    # Retained: HA subscribes to the state topic only once it has processed the discovery
    # message, so a state published right after it without retain would be lost.
    mqtt.publish(SIZE_STATE_TOPIC, "1234567", retain=True)

    size = await ha_client.wait_for_state("sensor.borg_test_sensor", state_is("1234567"), 15)
    assert size["attributes"]["unit_of_measurement"] == "B"
    assert size["attributes"]["device_class"] == "data_size"
    # has_entity_name: HA puts the device's name before the entity's.
    assert size["attributes"]["friendly_name"] == "Borg Test Device Test Size"
    sensor = await registry_entry(ha_client, "sensor.borg_test_sensor")
    button = await registry_entry(ha_client, "button.borg_test_button")
    assert (sensor["unique_id"], sensor["platform"]) == ("borg_test_size_uid", "mqtt")
    assert sensor["options"] == {"sensor": {"suggested_display_precision": 1}}
    assert (button["unique_id"], button["platform"]) == ("borg_test_run_uid", "mqtt")
    devices = await ha_client.ws_command("config/device_registry/list")
    ours = [device for device in devices if ["mqtt", "borg_test_device"] in device["identifiers"]]
    assert [device["name"] for device in ours] == ["Borg Test Device"]
    assert sensor["device_id"] == button["device_id"] == ours[0]["id"]

    mark = mqtt.mark()
    await ha_client.call_service("button", "press", {"entity_id": "button.borg_test_button"})
    pressed = await mqtt.async_wait_for_message(BUTTON_COMMAND_TOPIC, timeout=10, after=mark)
    assert pressed.payload == "PRESS"
    # default_entity_id (unknown to HA 2025.4) is dropped without a word in HA's log.
    assert mqtt_lines(home_assistant.log_text()[log_offset:]) == []


async def test_ha_2025_4_ignores_a_suggested_unit_of_measurement(
    ha_mqtt_entry: str, ha_client: HaClient, mqtt: MqttClient
) -> None:
    publish_discovery(mqtt, "sensor", SUGGESTED_UNIT_SENSOR_CONFIG)
    mqtt.publish(SUGGESTED_UNIT_STATE_TOPIC, "2147483648", retain=True)
    state = await ha_client.wait_for_state(
        "sensor.borg_test_suggested_unit", state_is("2147483648"), 15
    )
    assert state["attributes"]["unit_of_measurement"] == "B"
    entry = await registry_entry(ha_client, "sensor.borg_test_suggested_unit")
    assert entry["options"] == {}


async def test_after_ha_restarts_discovered_entities_return_from_retained_messages(
    ha_mqtt_entry: str,
    mqtt_broker: Mosquitto,
    home_assistant: HomeAssistant,
    ha_client: HaClient,
    mqtt: MqttClient,
) -> None:
    config = {**SIZE_SENSOR_CONFIG, "unique_id": "borg_test_kept_uid", "object_id": "borg_kept"}
    config.pop("default_entity_id")
    config["state_topic"] = "borg_test/kept/state"
    publish_discovery(mqtt, "sensor", config)
    mqtt.publish("borg_test/kept/state", "42", retain=True)
    await ha_client.wait_for_state("sensor.borg_kept", state_is("42"), 15)
    mqtt.subscribe(HA_STATUS_TOPIC)
    mark = mqtt.mark()

    await home_assistant.async_restart()

    assert await ha_client.setup_mqtt(mqtt_broker.port) == ha_mqtt_entry
    await ha_client.wait_for_state("sensor.borg_kept", state_is("42"), 30)
    # HA says "offline" on its status topic when it stops and "online" once it is back (not
    # retained; HA 2025.4 waits until discovery has been quiet for 5 s): the cue for a
    # publisher to send again what it did not retain.
    await mqtt.async_wait_for_message(
        HA_STATUS_TOPIC, lambda message: message.payload == "online", 30, mark
    )
    assert [m.payload for m in mqtt.messages(HA_STATUS_TOPIC, mark)] == ["offline", "online"]


async def test_appdaemon_mqtt_plugin_publishes_subscribes_and_has_a_status_topic(
    mqtt_broker: Mosquitto,
    mqtt: MqttClient,
    appdaemon_factory: AppDaemonFactory,
    mqtt_probe_package: Path,
) -> None:
    mqtt.subscribe(PROBE_ECHO_TOPIC)
    appdaemon = appdaemon_factory(
        apps_source=mqtt_probe_package,
        apps_yaml=MQTT_PROBE_APPS_YAML,
        mqtt_port=mqtt_broker.port,
    )
    status_topic = appdaemon.mqtt_status_topic
    assert status_topic is not None
    assert await async_read_retained(mqtt_broker.port, status_topic) == "online"
    # Published from initialize(): apps start only once the MQTT plugin is connected.
    assert await async_read_retained(mqtt_broker.port, "borg_probe/hello") == "hi"
    await ping_until_echoed(mqtt, "ping-1")

    # The plugin reconnects by itself and subscribes again to what the app subscribed to.
    mark = appdaemon.log_mark()
    await asyncio.to_thread(mqtt_broker.restart)
    await asyncio.to_thread(
        appdaemon.wait_for_log, "Connected to MQTT broker", timeout=30, after=mark
    )
    # A fresh client: the broker forgot the first one's subscriptions (clean session).
    with MqttClient(mqtt_broker.port) as client:
        client.subscribe(PROBE_ECHO_TOPIC)
        await ping_until_echoed(client, "ping-2")
    assert appdaemon.logged("MQTT Client Disconnected Abruptly", after=mark)
    # The app kept running (it is in HA's namespace) and heard of the new connection.
    assert appdaemon.logged("mqtt probe saw the broker connect", after=mark)
    assert not appdaemon.logged("mqtt probe initialised", after=mark)

    await appdaemon.async_stop()
    await async_wait_for_retained(mqtt_broker.port, status_topic, "offline", timeout=10)
