"""The MQTT backend's pure parts: the discovery configs, topics and payloads, and the entities
kept current for a real coordinator (in-memory port, scripted agent)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from backup_coordinator.config import EntityBackend, parse_config
from backup_coordinator.coordinator import Coordinator
from backup_coordinator.entities import Publication
from backup_coordinator.model import MIB, Mode, Operation
from backup_coordinator.mqtt_discovery import (
    UNKNOWN_PAYLOAD,
    ClientStatus,
    DisplayUnit,
    Entry,
    Topics,
    catalogue,
    discovery_config,
    display_options,
    display_units,
    entity_id_keys,
    state_payload,
)
from backup_coordinator.mqtt_entities import MqttEntities, MqttPort
from tests.memory_port import MemoryPort
from tests.unit.test_coordinator import Clock, ScriptedRunner, calls_reach, make_config

STATUS = ClientStatus("appdaemon_mqtt_client/status")
TOPICS = Topics("borg", "homeassistant")


def config_with_target(tmp_path: Path) -> Any:
    args: dict[str, Any] = {
        "module": "backup_coordinator.app",
        "class": "BackupCoordinator",
        "entities": "mqtt",
        "state_file": str(tmp_path / "state.json"),
        "ssh": {"client_key": "/keys/id", "known_hosts": "/keys/known_hosts"},
        "drones": {"nas": {"host": "nas", "repository": "/srv/nas", "paths": ["/data"]}},
        "offsite": {
            "vault": {
                "host": "nas",
                "repositories": ["/srv/nas"],
                "destination": "/copy",
                "tool": "rsync",
            }
        },
    }
    return parse_config(args, tmp_path)


def entry(config: Any, owner: str | None, key: str) -> Entry:
    return next(e for e in catalogue(config) if e.owner == owner and e.key == key)


def test_every_entity_has_a_unique_id_and_the_entity_id_its_object_id_gives(
    tmp_path: Path,
) -> None:
    config = config_with_target(tmp_path)
    configs = [discovery_config(e, "borg", TOPICS, STATUS) for e in catalogue(config)]
    unique_ids = [c["unique_id"] for c in configs]
    assert len(unique_ids) == len(set(unique_ids))
    for entity, config_ in zip(catalogue(config), configs, strict=True):
        expected = entity.entity_id("borg", EntityBackend.MQTT)
        assert config_["default_entity_id"] == expected
        assert expected.split(".", 1)[1] == config_["object_id"]
    assert {e.entity_id("borg", EntityBackend.MQTT) for e in catalogue(config)} >= {
        "button.borg_nas_create",
        "number.borg_nas_keep_daily",
        "text.borg_nas_keep_within",
        "select.borg_nas_mode",
        "sensor.borg_nas_total_size",
        "binary_sensor.borg_nas_problem",
        "button.borg_vault_sync_now",
        "select.borg_coordinator_mode",
        "sensor.borg_progress",
    }


@pytest.mark.parametrize(
    ("version", "keys"),
    [
        ("2025.4.4", {"object_id"}),
        ("2025.9.3", {"object_id"}),
        ("2025.10.0b1", {"default_entity_id"}),
        ("2026.11.0", {"default_entity_id"}),
        (None, {"object_id", "default_entity_id"}),
        ("dev", {"object_id", "default_entity_id"}),
    ],
)
def test_the_entity_id_key_is_the_one_home_assistants_version_reads(
    tmp_path: Path, version: str | None, keys: set[str]
) -> None:
    assert entity_id_keys(version) == keys
    state = entry(config_with_target(tmp_path), "nas", "state")
    discovered = discovery_config(state, "borg", TOPICS, STATUS, entity_id_keys(version))
    assert {"object_id", "default_entity_id"} & discovered.keys() == keys
    assert discovered.get("object_id", "borg_nas_state") == "borg_nas_state"
    assert discovered.get("default_entity_id", "sensor.borg_nas_state") == "sensor.borg_nas_state"


def test_drones_and_targets_are_devices_under_the_coordinator(tmp_path: Path) -> None:
    config = config_with_target(tmp_path)
    drone = discovery_config(entry(config, "nas", "state"), "borg", TOPICS, STATUS)["device"]
    target = discovery_config(entry(config, "vault", "state"), "borg", TOPICS, STATUS)["device"]
    own = discovery_config(entry(config, None, "queue"), "borg", TOPICS, STATUS)
    assert own["device"]["identifiers"] == ["backup_coordinator_borg"]
    assert own["device"]["name"] == "Borg coordinator"
    assert drone["via_device"] == target["via_device"] == "backup_coordinator_borg"
    assert (drone["name"], target["name"]) == ("nas", "vault")
    assert own["origin"]["name"] == "backup-coordinator"


def test_a_size_is_sent_in_bytes_for_home_assistant_to_convert(tmp_path: Path) -> None:
    config = config_with_target(tmp_path)
    size = entry(config, "nas", "total_size")
    discovered = discovery_config(size, "borg", TOPICS, STATUS)
    assert discovered["device_class"] == "data_size"
    assert discovered["unit_of_measurement"] == "B"
    assert discovered["state_class"] == "measurement"
    assert discovered["state_topic"] == "borg/nas/total_size/state"
    shown = Publication("sensor.borg_nas_total_size", "5.00", {}, native_state=str(5 * MIB))
    assert state_payload(size.description, shown) == str(5 * MIB)  # type: ignore[arg-type]
    unknown = Publication("sensor.borg_nas_total_size", "unknown", {}, native_state="unknown")
    assert state_payload(size.description, unknown) == UNKNOWN_PAYLOAD  # type: ignore[arg-type]


def test_sensors_sent_in_a_base_unit_are_shown_in_the_unit_people_read(tmp_path: Path) -> None:
    units = display_units(catalogue(config_with_target(tmp_path)), "borg")
    assert units == {
        "sensor.borg_nas_total_size": DisplayUnit("MiB", 2),
        "sensor.borg_nas_compressed_size": DisplayUnit("MiB", 2),
        "sensor.borg_nas_deduplicated_size": DisplayUnit("MiB", 2),
        "sensor.borg_nas_speed": DisplayUnit("MB/s", 1),
        "sensor.borg_nas_eta": DisplayUnit("min", None),
        "sensor.borg_vault_last_copy_size": DisplayUnit("MiB", 2),
    }
    # Discovery suggests no precision: HA would count it in bytes (2 decimals of B, 8 of MiB).
    size = entry(config_with_target(tmp_path), "nas", "total_size")
    assert "suggested_display_precision" not in discovery_config(size, "borg", TOPICS, STATUS)


def test_display_options_leave_a_person_s_choice_alone() -> None:
    mib = DisplayUnit("MiB", 2)
    assert display_options({}, mib) == {"unit_of_measurement": "MiB", "display_precision": 2}
    assert display_options({"suggested_display_precision": 8}, DisplayUnit("min", None)) == {
        "suggested_display_precision": 8,
        "unit_of_measurement": "min",
    }
    # A person picked a unit, or only a precision: what they picked stays.
    assert display_options({"unit_of_measurement": "GiB"}, mib) is None
    assert display_options({"display_precision": 0}, mib) == {
        "display_precision": 0,
        "unit_of_measurement": "MiB",
    }


@pytest.mark.parametrize(
    ("owner", "key", "state", "payload"),
    [
        ("nas", "last_backup", "unknown", UNKNOWN_PAYLOAD),
        ("nas", "last_backup", "2026-11-01T12:00:00+00:00", "2026-11-01T12:00:00+00:00"),
        ("nas", "state", "creating", "creating"),
        ("nas", "state", "no such state", UNKNOWN_PAYLOAD),
        ("nas", "problem", "on", "on"),
        ("nas", "last_error", "none", "none"),
        (None, "progress", "idle", "idle"),
        ("nas", "progress", "unknown", UNKNOWN_PAYLOAD),
        ("nas", "progress", "42.0", "42.0"),
    ],
)
def test_states_home_assistant_would_refuse_become_unknown(
    tmp_path: Path, owner: str | None, key: str, state: str, payload: str
) -> None:
    description = entry(config_with_target(tmp_path), owner, key).description
    shown = Publication("sensor.x", state, {})
    assert state_payload(description, shown) == payload  # type: ignore[arg-type]


def test_controls_are_config_entities_with_their_limits(tmp_path: Path) -> None:
    config = config_with_target(tmp_path)

    def discovered(owner: str | None, key: str) -> dict[str, Any]:
        return discovery_config(entry(config, owner, key), "borg", TOPICS, STATUS)

    number = discovered("nas", "keep_weekly")
    assert (number["min"], number["max"], number["step"]) == (0, 1000, 1)
    assert number["command_topic"] == "borg/nas/keep_weekly/set"
    assert number["state_topic"] == "borg/nas/keep_weekly/state"
    text = discovered("nas", "keep_within")
    assert text["pattern"].startswith("^$|")
    assert discovered("nas", "mode")["options"] == [m.value for m in Mode]
    button = discovered("nas", "create")
    assert button["payload_press"] == "PRESS"
    assert "state_topic" not in button
    for control in (number, text, button, discovered(None, "coordinator_mode")):
        assert control["entity_category"] == "config"
    assert discovered("nas", "last_error")["entity_category"] == "diagnostic"
    assert "entity_category" not in discovered("nas", "state")
    assert discovered(None, "coordinator_mode")["name"] == "Mode"


def test_availability_follows_appdaemon_the_app_and_for_live_progress_the_drone(
    tmp_path: Path,
) -> None:
    config = config_with_target(tmp_path)
    client = {
        "topic": STATUS.topic,
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    app = {**client, "topic": "borg/availability"}
    for key in ("state", "create", "keep_daily", "problem"):  # a retry can be asked for
        discovered = discovery_config(entry(config, "nas", key), "borg", TOPICS, STATUS)
        assert discovered["availability"] == [client, app]
        assert discovered["availability_mode"] == "all"
    for key in ("progress", "speed", "eta", "current_file"):
        live = discovery_config(entry(config, "nas", key), "borg", TOPICS, STATUS)
        assert live["availability"] == [client, app, {**client, "topic": "borg/nas/availability"}]
    coordinator = discovery_config(entry(config, None, "progress"), "borg", TOPICS, STATUS)
    assert coordinator["availability"] == [client, app]


def test_command_topics_name_their_owner_and_key() -> None:
    assert TOPICS.command_of("borg/nas/keep_weekly/set") == ("nas", "keep_weekly")
    assert TOPICS.command_of("borg/coordinator/coordinator_mode/set") == (None, "coordinator_mode")
    assert TOPICS.command_of("borg/nas/keep_weekly/state") is None
    assert TOPICS.command_of("other/nas/keep_weekly/set") is None


# --- the entities kept current for a running coordinator ------------------------------------


class Broker:
    """What the app would have published, newest payload per topic."""

    def __init__(self) -> None:
        self.retained: dict[str, str] = {}
        self.count = 0

    async def publish(self, topic: str, payload: str) -> None:
        self.retained[topic] = payload
        self.count += 1


async def running(
    tmp_path: Path, runner: ScriptedRunner | None = None
) -> tuple[MqttEntities, Coordinator, Broker, MemoryPort]:
    config = make_config(tmp_path, nas={})
    broker, home_assistant = Broker(), MemoryPort()
    mqtt = MqttEntities(config, STATUS, broker.publish, home_assistant.log)
    clock = Clock()
    coordinator = Coordinator(
        config,
        MqttPort(mqtt, home_assistant),
        runner or ScriptedRunner(),
        clock=clock,
        monotonic=clock.monotonic,
    )
    await mqtt.announce()
    await mqtt.set_running(True)
    await coordinator.start({})
    await mqtt.show_controls(coordinator)
    await mqtt.sensors.flush()
    return mqtt, coordinator, broker, home_assistant


async def test_start_announces_every_entity_and_shows_states_and_settings(tmp_path: Path) -> None:
    mqtt, _, broker, _ = await running(tmp_path)
    configs = [t for t in broker.retained if t.endswith("/config")]
    assert len(configs) == len(mqtt.entries)
    assert broker.retained["borg/nas/state/state"] == "idle"
    assert broker.retained["borg/nas/availability"] == "online"
    assert broker.retained["borg/availability"] == "online"
    assert broker.retained["borg/nas/keep_weekly/state"] == "4"
    # JSON: an empty retained payload would delete the retained message
    assert broker.retained["borg/nas/keep_within/state"] == '{"value": ""}'
    assert broker.retained["borg/nas/frequency/state"] == "1440"
    assert broker.retained["borg/coordinator/coordinator_mode/state"] == "running"
    assert json.loads(broker.retained["borg/nas/last_backup/attributes"])["archive"] == ""
    assert "friendly_name" not in broker.retained["borg/nas/last_backup/attributes"]


async def test_a_number_from_home_assistant_is_applied_kept_and_shown(tmp_path: Path) -> None:
    mqtt, coordinator, broker, _ = await running(tmp_path)
    await mqtt.on_message("borg/nas/keep_weekly/set", "9", coordinator)
    assert coordinator.drones["nas"].settings.keep.weekly == 9
    assert broker.retained["borg/nas/keep_weekly/state"] == "9"
    assert coordinator.drones["nas"].record.settings == {"keep_weekly": "9"}
    # Kept in the state file: a restarted coordinator starts with it (over MQTT; with helpers,
    # HA keeps the values and gives them at the start).
    mqtt_config = replace(make_config(tmp_path, nas={}), entities=EntityBackend.MQTT)
    again = Coordinator(mqtt_config, MemoryPort(), ScriptedRunner())
    await again.start({})
    assert again.drones["nas"].settings.keep.weekly == 9
    with_helpers = Coordinator(make_config(tmp_path, nas={}), MemoryPort(), ScriptedRunner())
    await with_helpers.start({})
    assert with_helpers.drones["nas"].settings.keep.weekly == 4


async def test_an_invalid_text_is_rejected_reported_and_snaps_back(tmp_path: Path) -> None:
    mqtt, coordinator, broker, home_assistant = await running(tmp_path)
    await mqtt.on_message("borg/nas/keep_within/set", "10 days; rm -rf /", coordinator)
    await mqtt.sensors.flush()
    assert coordinator.drones["nas"].settings.keep.within is None
    assert broker.retained["borg/nas/keep_within/state"] == '{"value": ""}'
    assert broker.retained["borg/nas/problem/state"] == "on"
    assert (
        "keep within rejected"
        in json.loads(broker.retained["borg/nas/problem/attributes"])["reason"]
    )
    assert any("keep_within value" in line for line in home_assistant.lines)


async def test_a_button_press_runs_its_operation(tmp_path: Path) -> None:
    runner = ScriptedRunner()
    mqtt, coordinator, broker, _ = await running(tmp_path, runner)
    await mqtt.on_message("borg/nas/update_stats/set", "PRESS", coordinator)
    await calls_reach(runner, 1)
    await coordinator.wait_idle()
    assert runner.sessions[0][1] == Operation.STATS.value  # the scheduled backup follows
    await mqtt.sensors.flush()
    # Sizes in bytes, past the coordinator's redaction of all it publishes.
    assert broker.retained["borg/nas/total_size/state"] == "2000"
    assert broker.retained["borg/nas/deduplicated_size/state"] == "0"


async def test_an_unreachable_drone_makes_its_live_progress_unavailable(tmp_path: Path) -> None:
    mqtt, _, broker, _ = await running(tmp_path)
    mqtt.publish(Publication("sensor.borg_nas_state", "unreachable", {}))
    await mqtt.sensors.flush()
    assert broker.retained["borg/nas/availability"] == "offline"


async def test_home_assistant_online_again_gets_everything_again(tmp_path: Path) -> None:
    mqtt, coordinator, broker, _ = await running(tmp_path)
    broker.retained.clear()  # a broker that lost what was retained
    await mqtt.on_message("homeassistant/status", "online", coordinator)
    await mqtt.sensors.flush()
    assert len([t for t in broker.retained if t.endswith("/config")]) == len(mqtt.entries)
    assert broker.retained["borg/nas/state/state"] == "idle"
    assert broker.retained["borg/nas/keep_daily/state"] == "7"


async def test_messages_that_are_not_commands_of_ours_are_ignored(tmp_path: Path) -> None:
    mqtt, coordinator, broker, _ = await running(tmp_path)
    before = broker.count
    for topic, payload in [
        ("borg/nas/state/state", "idle"),
        ("borg/ghost/keep_daily/set", "3"),
        ("borg/nas/create/set", "not a press"),
        ("homeassistant/status", "offline"),
    ]:
        await mqtt.on_message(topic, payload, coordinator)
    await mqtt.sensors.flush()
    assert broker.count == before
    assert coordinator.drones["nas"].record.pending == []


async def test_once_closed_nothing_more_is_sent(tmp_path: Path) -> None:
    """A command handled while the app stops publishes nothing after the stop."""
    mqtt, coordinator, broker, _ = await running(tmp_path)
    await mqtt.set_running(False)
    assert broker.retained["borg/availability"] == "offline"
    await mqtt.close()
    before = broker.count
    await mqtt.on_message("borg/nas/keep_weekly/set", "9", coordinator)
    mqtt.publish(Publication("sensor.borg_nas_state", "creating", {}))
    await mqtt.sensors.drain()
    assert broker.count == before
