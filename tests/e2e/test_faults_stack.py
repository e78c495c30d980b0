"""Faults that involve Home Assistant itself, against the real stack: Home Assistant, AppDaemon
running apps/backup_coordinator, a loopback drone (sshd forcing the agent) and borg.

The other faults (a silent drone, the agent or borg killed, a locked repository, a wrong
passphrase, a full repository disk) are in tests/integration/test_faults.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devstack.borg import run_borg
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
# Random data at lzma's slowest keeps borg busy long enough for Home Assistant to restart.
SLOW_COMPRESSION = "lzma,9"
BIG_FILE_BYTES = 32 * 1024 * 1024


@pytest.fixture
def drone(tmp_path: Path) -> Iterator[LocalDrone]:
    local = make_local_drone(tmp_path / "drones", "alpha")
    try:
        yield local
    finally:
        local.stop()


def lock_is_free(drone: LocalDrone) -> bool:
    done = run_borg(
        ["with-lock", "--lock-wait", "1", str(drone.repository), "true"],
        drone.passphrase,
        drone.borg_base_dir,
        check=False,
    )
    return done.returncode == 0


async def test_home_assistant_restarted_mid_backup_retries_it_and_loses_nothing(
    tmp_path: Path,
    drone: LocalDrone,
    home_assistant: HomeAssistant,
    ha_client: HaClient,
    appdaemon_factory: AppDaemonFactory,
) -> None:
    apps_yaml, secrets = app_config(
        [drone],
        tmp_path / "state.json",
        tick_seconds=1,
        progress_interval=0.5,
        drone_settings={"alpha": {"mode": "manual", "compression": SLOW_COMPRESSION}},
    )
    app = appdaemon_factory(apps_source=APP_SOURCE, apps_yaml=apps_yaml, secrets=secrets)
    app.wait_for_log("watching 1 drone(s)", TIMEOUT)

    # A first, quick backup: what is recorded must survive the restart.
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    await press_create(ha_client)
    first = await finished.wait_for(lambda e: e["data"]["drone"] == "alpha", TIMEOUT)
    assert first["data"]["ok"] is True, first
    recorded = await ha_client.wait_for_state(
        "sensor.borg_alpha_last_backup",
        lambda s: s["state"] not in ("unknown", "unavailable"),
        TIMEOUT,
    )
    first_backup = recorded["state"]
    archives_before = drone.archives()
    assert len(archives_before) == 1

    # The second backup is slow; Home Assistant restarts while borg works on it.
    (drone.data_dir / "photos" / "more.raw").write_bytes(os.urandom(BIG_FILE_BYTES))
    progress = await ha_client.subscribe_events("backup_coordinator_progress")
    await press_create(ha_client)
    await progress.wait_for(
        lambda e: e["data"]["drone"] == "alpha" and not e["data"]["final"], TIMEOUT
    )
    assert (await state_of(ha_client, "sensor.borg_alpha_state"))["state"] == "creating"
    mark = app.log_mark()
    await home_assistant.async_restart()

    # AppDaemon stopped the app when Home Assistant went away (the agent stopped borg), and
    # started it again when Home Assistant came back: the create is known interrupted and rerun.
    await asyncio.to_thread(
        app.wait_for_log, "alpha: create was interrupted; it will run again", 2 * TIMEOUT, mark
    )
    assert "alpha: create cancelled by shutdown; it will run again" in app.main_log()
    await asyncio.to_thread(app.wait_for_log, "alpha: create finished", 4 * TIMEOUT, mark)

    state = await ha_client.wait_for_state(
        "sensor.borg_alpha_state", lambda s: s["state"] == "idle", TIMEOUT
    )
    assert state["state"] == "idle"
    last_backup = await ha_client.wait_for_state(
        "sensor.borg_alpha_last_backup",
        lambda s: s["state"] not in ("unknown", "unavailable", first_backup),
        TIMEOUT,
    )
    assert datetime.fromisoformat(last_backup["state"]) > datetime.fromisoformat(first_backup)
    # Sensors are published one at a time: wait for each rather than read it once.
    await ha_client.wait_for_state(
        "sensor.borg_alpha_last_error", lambda s: s["attributes"].get("kind") == "none", TIMEOUT
    )
    await ha_client.wait_for_state(
        "binary_sensor.borg_alpha_problem", lambda s: s["state"] == "off", TIMEOUT
    )
    assert lock_is_free(drone)
    archives_after = drone.archives()
    assert archives_after[: len(archives_before)] == archives_before
    assert len(archives_after) == len(archives_before) + 1
    assert "Traceback" not in app.error_log()


async def press_create(client: HaClient) -> None:
    await client.call_service(
        "input_button", "press", {"entity_id": "input_button.borg_alpha_create"}
    )


async def state_of(client: HaClient, entity_id: str) -> dict[str, Any]:
    state = await client.get_state(entity_id)
    assert state is not None, f"{entity_id} does not exist"
    return state
