"""The app with ``entities: mqtt`` for real: a Mosquitto broker, Home Assistant's MQTT
integration and AppDaemon's MQTT plugin, one loopback drone with a borg repository and an
offsite target. Observed through HA (states, the entity and device registries, events) and the
broker's retained messages.

The tests of this module share one HA, one broker and the drone, and run in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from backup_coordinator.config import load_config_file
from backup_coordinator.dashboard import dashboard
from devstack.appdaemon import AppDaemon
from devstack.drones import LocalDrone, app_config, make_local_drone, offsite_target
from devstack.haclient import HaClient, HaError
from devstack.homeassistant import HomeAssistant
from devstack.mosquitto import Mosquitto
from devstack.mqttclient import MqttClient, async_read_retained, async_wait_for_retained
from devstack.waiting import async_wait_until
from tests.dashboard_support import referenced
from tests.e2e.stack_support import (
    PROJECT_ROOT,
    AppDaemonFactory,
    appdaemon_factory_fixture,  # noqa: F401
    ha_mqtt_entry_fixture,  # noqa: F401
    ha_token_fixture,  # noqa: F401
    home_assistant_fixture,  # noqa: F401
    mqtt_broker_fixture,  # noqa: F401
)

pytestmark = pytest.mark.e2e

APP_SOURCE = PROJECT_ROOT / "apps" / "backup_coordinator"
TIMEOUT = 60.0
MIB = 1024 * 1024
# A text's state travels as JSON (an empty retained payload would delete the message).
KEEP_2D, KEEP_3D = '{"value": "2d"}', '{"value": "3d"}'
UNIQUE_ID = "backup_coordinator_{}"
MQTT_CLIENT_ID = "appdaemon-e2e"
CONTROLS = {
    "button": ("create", "prune", "update_stats", "check", "restore_drill", "scheduled_backup"),
    "number": (
        "frequency",
        "keep_hourly",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
    ),
    "text": ("keep_within",),
    "select": ("mode",),
}


@pytest.fixture(scope="module")
def drone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDrone]:
    alpha = make_local_drone(tmp_path_factory.mktemp("drones"), "alpha")
    try:
        yield alpha
    finally:
        alpha.stop()


@pytest_asyncio.fixture(name="ha_client")
async def ha_client_fixture(
    ha_mqtt_entry: str, home_assistant: HomeAssistant, ha_token: str
) -> AsyncIterator[HaClient]:
    """A client of the module's HA, whose MQTT integration uses the module's broker."""
    async with HaClient(home_assistant.url, ha_token) as client:
        yield client


@pytest.fixture(scope="module")
def apps_yaml(drone: LocalDrone) -> tuple[str, str]:
    text, secrets = app_config(
        [drone],
        drone.root / "state.json",
        tick_seconds=1,
        progress_interval=0.5,
        drone_settings={"alpha": {"mode": "manual"}},
        offsite={"vault": offsite_target(drone, [drone], drone.root / "offsite", mode="manual")},
        entities="mqtt",
    )
    return text, secrets


@pytest.fixture
def app(
    apps_yaml: tuple[str, str], appdaemon_factory: AppDaemonFactory, mqtt_broker: Mosquitto
) -> AppDaemon:
    text, secrets = apps_yaml
    appdaemon = appdaemon_factory(
        apps_source=APP_SOURCE,
        apps_yaml=text,
        secrets=secrets,
        mqtt_port=mqtt_broker.port,
        mqtt_client_id=MQTT_CLIENT_ID,  # one client, as an installation has
    )
    appdaemon.wait_for_log("watching 1 drone(s)", TIMEOUT)
    return appdaemon


async def state_of(client: HaClient, entity_id: str) -> dict[str, Any]:
    state = await client.get_state(entity_id)
    assert state is not None, f"{entity_id} does not exist"
    return state


async def known_state(client: HaClient, entity_id: str) -> str:
    """An entity's first state other than unknown or unavailable.

    HA sets up discovered entities one after another, each taking its retained state when it
    subscribes, so each is waited for on its own.
    """
    state = await client.wait_for_state(
        entity_id, lambda s: s["state"] not in ("unknown", "unavailable"), TIMEOUT
    )
    return str(state["state"])


def in_unit(unit: str) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state["attributes"].get("unit_of_measurement") == unit


async def registry(client: HaClient) -> dict[str, dict[str, Any]]:
    """HA's entity registry entries of MQTT entities, by entity id."""
    entries = await client.ws_command("config/entity_registry/list")
    return {e["entity_id"]: e for e in entries if e["platform"] == "mqtt"}


async def test_devices_and_entities_appear_with_unique_ids(
    app: AppDaemon, ha_client: HaClient
) -> None:
    await ha_client.wait_for_state(
        "sensor.borg_alpha_state", lambda s: s["state"] == "idle", TIMEOUT
    )
    entries = await async_wait_until(
        lambda: _registry_with(ha_client, "button.borg_vault_sync_now"), "the entities", TIMEOUT
    )
    for platform, keys in CONTROLS.items():
        for key in keys:
            entry = entries[f"{platform}.borg_alpha_{key}"]
            assert entry["unique_id"] == UNIQUE_ID.format(f"borg_alpha_{key}")
            assert entry["entity_category"] == "config"
    for entity_id in (
        "sensor.borg_alpha_state",
        "sensor.borg_alpha_last_backup",
        "sensor.borg_alpha_total_size",
        "binary_sensor.borg_alpha_problem",
        "sensor.borg_alpha_last_error",
        "select.borg_coordinator_mode",
        "sensor.borg_progress",
        "sensor.borg_vault_state",
    ):
        assert entity_id in entries
    assert entries["sensor.borg_alpha_last_error"]["entity_category"] == "diagnostic"
    for key in ("hint", "agent_version", "borg_version"):
        assert entries[f"sensor.borg_alpha_{key}"]["entity_category"] == "diagnostic"
    assert "sensor.borg_vault_hint" in entries
    # Every entity the CLI's dashboard for this apps.yaml shows is one HA has.
    config = load_config_file(app.apps_dir / "apps.yaml")
    shown = set(referenced(dashboard(config)))
    assert "button.borg_alpha_create" in shown
    assert shown <= set(entries)

    devices = {d["id"]: d for d in await ha_client.ws_command("config/device_registry/list")}
    by_name = {d["name"]: d for d in devices.values()}
    coordinator, alpha, vault = by_name["Borg coordinator"], by_name["alpha"], by_name["vault"]
    assert alpha["via_device_id"] == vault["via_device_id"] == coordinator["id"]
    assert entries["sensor.borg_alpha_state"]["device_id"] == alpha["id"]
    assert entries["button.borg_vault_sync_now"]["device_id"] == vault["id"]

    state = await state_of(ha_client, "sensor.borg_alpha_state")
    assert state["attributes"]["friendly_name"] == "alpha State"
    assert state["attributes"]["device_class"] == "enum"
    # Sent in bytes; shown in MiB until a person picks another unit in HA.
    size = await ha_client.wait_for_state("sensor.borg_alpha_total_size", in_unit("MiB"), TIMEOUT)
    assert size["attributes"]["device_class"] == "data_size"
    shown = await ha_client.ws_command(
        "config/entity_registry/get", entity_id="sensor.borg_alpha_total_size"
    )
    assert shown["options"]["sensor"]["display_precision"] == 2  # 8.00 MiB, not 8.00333786
    # Progress as entities with units; nothing runs, so nothing is claimed.
    for key, unit, device_class in (
        ("progress", "%", None),
        ("speed", "MB/s", "data_rate"),
        ("eta", "min", "duration"),
    ):
        progress = await ha_client.wait_for_state(
            f"sensor.borg_alpha_{key}", in_unit(unit), TIMEOUT
        )
        assert progress["state"] == "unknown"
        assert progress["attributes"].get("device_class") == device_class
    assert await known_state(ha_client, "sensor.borg_progress") == "idle"
    assert await known_state(ha_client, "sensor.borg_active") == "idle"
    assert float(await known_state(ha_client, "number.borg_alpha_keep_daily")) == 7
    assert await known_state(ha_client, "select.borg_alpha_mode") == "manual"
    # A clean first start: nothing to warn about.
    assert " WARNING " not in app.main_log()
    assert " ERROR " not in app.main_log()


async def _registry_with(client: HaClient, entity_id: str) -> dict[str, dict[str, Any]] | None:
    entries = await registry(client)
    return entries if entity_id in entries else None


async def test_a_button_pressed_in_home_assistant_backs_up(
    app: AppDaemon, ha_client: HaClient, drone: LocalDrone
) -> None:
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    await ha_client.call_service("button", "press", {"entity_id": "button.borg_alpha_create"})
    done = await finished.wait_for(lambda e: e["data"]["drone"] == "alpha", TIMEOUT)
    assert done["data"]["ok"] is True, done["data"]
    assert done["data"]["results"]["create"]["archive"]["name"] in drone.archives()
    # The run is over: its progress entities say nothing, the coordinator's is idle.
    await ha_client.wait_for_state("sensor.borg_progress", lambda s: s["state"] == "idle", TIMEOUT)
    assert (await state_of(ha_client, "sensor.borg_alpha_progress"))["state"] == "unknown"
    last = await ha_client.wait_for_state(
        "sensor.borg_alpha_last_backup", lambda s: s["state"] not in ("unknown",), TIMEOUT
    )
    assert last["attributes"]["archive"] == drone.archives()[-1]
    size = await ha_client.wait_for_state(
        "sensor.borg_alpha_total_size", lambda s: s["state"] != "unknown", TIMEOUT
    )
    assert size["attributes"]["unit_of_measurement"] == "MiB"
    assert size["attributes"]["bytes"] > 0
    assert float(size["state"]) * MIB == pytest.approx(size["attributes"]["bytes"])
    # A person shows one size in GiB (the entity settings keep the other options): HA converts
    # the bytes, and the app keeps that choice.
    dedup_id = "sensor.borg_alpha_deduplicated_size"
    await ha_client.wait_for_state(dedup_id, in_unit("MiB"), TIMEOUT)  # the app's options set
    entry = await ha_client.ws_command("config/entity_registry/get", entity_id=dedup_id)
    await ha_client.ws_command(
        "config/entity_registry/update",
        entity_id=dedup_id,
        options_domain="sensor",
        options={**entry["options"]["sensor"], "unit_of_measurement": "GiB"},
    )
    dedup = await ha_client.wait_for_state(dedup_id, in_unit("GiB"), TIMEOUT)
    assert float(dedup["state"]) * 1024 * MIB == pytest.approx(dedup["attributes"]["bytes"])
    # The session's hello told which agent and borg the drone runs.
    version = await ha_client.wait_for_state(
        "sensor.borg_alpha_agent_version", lambda s: s["state"][:1].isdigit(), TIMEOUT
    )
    assert version["attributes"]["friendly_name"] == "alpha Agent version"
    assert "alpha: create finished" in app.main_log()


async def test_a_number_changed_in_home_assistant_reaches_prune(
    app: AppDaemon, ha_client: HaClient, mqtt_broker: Mosquitto, drone: LocalDrone
) -> None:
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    for key, value in (
        ("keep_daily", 0),
        ("keep_weekly", 0),
        ("keep_monthly", 0),
        ("keep_yearly", 0),
    ):
        entity_id = f"number.borg_alpha_{key}"
        await ha_client.call_service(
            "number", "set_value", {"entity_id": entity_id, "value": value}
        )
        await ha_client.wait_for_state(entity_id, lambda s: float(s["state"]) == 0, TIMEOUT)
    await ha_client.call_service(
        "number", "set_value", {"entity_id": "number.borg_alpha_keep_hourly", "value": 1}
    )
    await async_wait_for_retained(mqtt_broker.port, "borg/alpha/keep_hourly/state", "1", TIMEOUT)
    # Two archives within the hour: keep hourly 1 leaves the newest.
    await ha_client.call_service("button", "press", {"entity_id": "button.borg_alpha_create"})
    await finished.wait_for(lambda e: e["data"]["operation"] == "create", TIMEOUT)
    before = drone.archives()
    assert len(before) == 2
    await ha_client.call_service("button", "press", {"entity_id": "button.borg_alpha_prune"})
    done = await finished.wait_for(lambda e: e["data"]["operation"] == "prune", TIMEOUT)
    assert done["data"]["ok"] is True, done["data"]
    assert drone.archives() == before[-1:]
    # A restarted app (each test starts AppDaemon) left the person's unit alone.
    dedup = await state_of(ha_client, "sensor.borg_alpha_deduplicated_size")
    assert dedup["attributes"]["unit_of_measurement"] == "GiB"


async def test_an_invalid_keep_within_is_refused_and_reported(
    app: AppDaemon, ha_client: HaClient, mqtt_broker: Mosquitto
) -> None:
    keep_within = "text.borg_alpha_keep_within"
    await ha_client.call_service("text", "set_value", {"entity_id": keep_within, "value": "2d"})
    await async_wait_for_retained(
        mqtt_broker.port, "borg/alpha/keep_within/state", KEEP_2D, TIMEOUT
    )
    # HA checks the text's pattern itself...
    with pytest.raises(HaError):
        await ha_client.call_service("text", "set_value", {"entity_id": keep_within, "value": "7x"})
    # ...and a client that skips HA is refused by the app: problem raised, the value snaps back.
    with MqttClient(mqtt_broker.port) as client:
        client.publish("borg/alpha/keep_within/set", "7x")
    problem = await ha_client.wait_for_state(
        "binary_sensor.borg_alpha_problem", lambda s: s["state"] == "on", TIMEOUT
    )
    assert "keep within rejected" in problem["attributes"]["reason"]
    assert (await state_of(ha_client, keep_within))["state"] == "2d"
    app.wait_for_log("alpha: keep_within value '7x' rejected", TIMEOUT)
    await ha_client.call_service("text", "set_value", {"entity_id": keep_within, "value": "3d"})
    await ha_client.wait_for_state(
        "binary_sensor.borg_alpha_problem", lambda s: s["state"] == "off", TIMEOUT
    )
    await ha_client.wait_for_state(keep_within, lambda s: s["state"] == "3d", TIMEOUT)


async def test_a_broker_restarted_empty_gets_everything_again_from_the_app(
    app: AppDaemon, ha_client: HaClient, mqtt_broker: Mosquitto
) -> None:
    config_topic = "homeassistant/sensor/borg_alpha_last_backup/config"
    last_backup = (await state_of(ha_client, "sensor.borg_alpha_last_backup"))["state"]
    mqtt_broker.persistence = False  # it comes back without what it retained
    await mqtt_broker.async_restart()
    assert await async_read_retained(mqtt_broker.port, "borg/alpha/last_backup/state") in (
        None,
        last_backup,  # the app may have been quicker than this read
    )
    # AppDaemon's MQTT client reconnects and the app sends configs, settings and states again.
    await async_wait_for_retained(
        mqtt_broker.port, "borg/alpha/last_backup/state", last_backup, TIMEOUT
    )
    assert await async_read_retained(mqtt_broker.port, config_topic) is not None
    await async_wait_for_retained(
        mqtt_broker.port, "borg/alpha/keep_within/state", KEEP_3D, TIMEOUT
    )
    await ha_client.wait_for_state(
        "sensor.borg_alpha_state", lambda s: s["state"] == "idle", TIMEOUT
    )
    assert (await state_of(ha_client, "sensor.borg_alpha_last_backup"))["state"] == last_backup


@contextlib.contextmanager
def frozen(process: AppDaemon) -> Iterator[None]:
    """AppDaemon stopped in its tracks (SIGSTOP) and let go again (SIGCONT)."""
    assert process.pid is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


async def test_home_assistant_restarted_shows_everything_again_by_itself(
    app: AppDaemon, home_assistant: HomeAssistant, ha_client: HaClient
) -> None:
    last_backup = (await state_of(ha_client, "sensor.borg_alpha_last_backup"))["state"]
    # AppDaemon cannot send anything while HA restarts: what comes back is the broker's.
    with frozen(app):
        await home_assistant.async_restart()
        await ha_client.reconnect()
        assert await known_state(ha_client, "sensor.borg_alpha_last_backup") == last_backup
        assert float(await known_state(ha_client, "number.borg_alpha_keep_hourly")) == 1
        assert await known_state(ha_client, "text.borg_alpha_keep_within") == "3d"
        await ha_client.wait_for_state(
            "button.borg_alpha_create", lambda s: s["state"] != "unavailable", TIMEOUT
        )


async def test_the_app_stopped_while_appdaemon_runs_makes_its_entities_unavailable(
    app: AppDaemon, ha_client: HaClient, apps_yaml: tuple[str, str]
) -> None:
    await ha_client.wait_for_state(
        "sensor.borg_alpha_state", lambda s: s["state"] == "idle", TIMEOUT
    )
    text, _ = apps_yaml
    mark = app.log_mark()
    app.update_apps_yaml(text.replace("tick_seconds: 1", "tick_seconds: soon"))
    await asyncio.to_thread(app.wait_for_log, "configuration error", TIMEOUT, mark)
    for entity_id in ("sensor.borg_alpha_state", "button.borg_alpha_create"):
        await ha_client.wait_for_state(entity_id, lambda s: s["state"] == "unavailable", TIMEOUT)
    app.update_apps_yaml(text)
    await ha_client.wait_for_state(
        "sensor.borg_alpha_state", lambda s: s["state"] == "idle", TIMEOUT
    )
    assert (await state_of(ha_client, "button.borg_alpha_create"))["state"] != "unavailable"


async def test_appdaemon_stopped_makes_every_entity_unavailable(
    app: AppDaemon, ha_client: HaClient, mqtt_broker: Mosquitto
) -> None:
    await ha_client.wait_for_state(
        "sensor.borg_alpha_state", lambda s: s["state"] == "idle", TIMEOUT
    )
    await asyncio.to_thread(app.stop)
    for entity_id in (
        "sensor.borg_alpha_state",
        "button.borg_alpha_create",
        "number.borg_alpha_keep_daily",
        "sensor.borg_progress",
    ):
        await ha_client.wait_for_state(entity_id, lambda s: s["state"] == "unavailable", TIMEOUT)
