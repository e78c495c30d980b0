"""The app's start when Home Assistant does not answer: it tries again with backoff and comes up
on its own once HA answers, without AppDaemon being restarted.

HA is stopped with SIGSTOP while the app starts: AppDaemon's websocket stays open (so AppDaemon
itself sees nothing wrong and never restarts the app), but every command goes unanswered, as
with an overloaded or hung HA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.appdaemon import AppDaemon
from devstack.drones import LocalDrone, app_config, make_local_drone
from devstack.haclient import HaClient
from devstack.homeassistant import HomeAssistant
from tests.e2e.stack_support import (
    PROJECT_ROOT,
    AppDaemonFactory,
    appdaemon_factory_fixture,  # noqa: F401
    ha_client_fixture,  # noqa: F401
    ha_token_fixture,  # noqa: F401
    home_assistant_fixture,  # noqa: F401
)

pytestmark = pytest.mark.e2e

APP_SOURCE = PROJECT_ROOT / "apps" / "backup_coordinator"
TIMEOUT = 60.0
FIRST_FAILURE = "could not start (attempt 1): Home Assistant refused input_number/list"


@pytest.fixture
def drone(tmp_path: Path) -> Iterator[LocalDrone]:
    local = make_local_drone(tmp_path / "drones", "gamma")
    try:
        yield local
    finally:
        local.stop()


def apps_yaml_for(drone: LocalDrone, state_file: Path) -> tuple[str, str]:
    return app_config(
        [drone], state_file, tick_seconds=1, drone_settings={"gamma": {"mode": "manual"}}
    )


async def wait_for_log(appdaemon: AppDaemon, text: str, mark: int) -> None:
    await asyncio.to_thread(appdaemon.wait_for_log, text, TIMEOUT, mark)


async def test_app_started_while_ha_is_stopped_comes_up_when_ha_answers(
    home_assistant: HomeAssistant,
    ha_client: HaClient,
    appdaemon_factory: AppDaemonFactory,
    drone: LocalDrone,
    tmp_path: Path,
) -> None:
    apps_yaml, secrets = apps_yaml_for(drone, tmp_path / "state.json")
    appdaemon = appdaemon_factory(apps_source=APP_SOURCE, apps_yaml="", secrets=secrets)
    mark = appdaemon.log_mark()
    with home_assistant.frozen():
        appdaemon.update_apps_yaml(apps_yaml)  # AppDaemon starts the app now
        await wait_for_log(appdaemon, FIRST_FAILURE, mark)
    await wait_for_log(appdaemon, "watching 1 drone(s)", mark)
    assert "at attempt 2" in appdaemon.main_log()

    for entity_id in (
        "input_button.borg_gamma_create",
        "input_select.borg_gamma_mode",
        "sensor.borg_gamma_state",
        "binary_sensor.borg_gamma_problem",
        "sensor.borg_queue",
    ):
        assert await ha_client.get_state(entity_id) is not None, entity_id
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    await ha_client.call_service(
        "input_button", "press", {"entity_id": "input_button.borg_gamma_create"}
    )
    done = await finished.wait_for(lambda e: e["data"]["drone"] == "gamma", TIMEOUT)
    assert done["data"]["ok"] is True, done["data"]
    assert len(drone.archives()) == 1


async def test_removing_the_app_while_it_waits_for_ha_stops_its_retries(
    home_assistant: HomeAssistant,
    ha_client: HaClient,
    appdaemon_factory: AppDaemonFactory,
    drone: LocalDrone,
    tmp_path: Path,
) -> None:
    apps_yaml, secrets = apps_yaml_for(drone, tmp_path / "state.json")
    appdaemon = appdaemon_factory(apps_source=APP_SOURCE, apps_yaml="", secrets=secrets)
    mark = appdaemon.log_mark()
    with home_assistant.frozen():
        appdaemon.update_apps_yaml(apps_yaml)
        await wait_for_log(appdaemon, FIRST_FAILURE, mark)
        removed = appdaemon.log_mark()
        appdaemon.update_apps_yaml("")  # terminate() while the start waits to try again
        await wait_for_log(appdaemon, "Stopped app 'backup_coordinator'", removed)
    # Started again from scratch: a start left over from before would show as "attempt 2".
    again = appdaemon.log_mark()
    appdaemon.update_apps_yaml(apps_yaml)
    await wait_for_log(appdaemon, "watching 1 drone(s)", again)
    assert "attempt 2" not in appdaemon.main_log()
    assert await ha_client.get_state("sensor.borg_gamma_state") is not None
