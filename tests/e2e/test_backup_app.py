"""The app for real: Home Assistant, AppDaemon running apps/backup_coordinator, two loopback
drones (sshd forcing the agent) with borg repositories. Everything is observed through HA's REST
API and websocket, and in the repositories with borg itself.

The tests of this module share one HA and the two drones, and run in order: later ones build on
the archives and helper values of earlier ones, as a person's session would.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backup_coordinator.config import EntityBackend
from backup_coordinator.dashboard import drone_section
from devstack.appdaemon import AppDaemon
from devstack.borg import list_archives, run_borg
from devstack.drones import LocalDrone, app_config, make_local_drone, offsite_target
from devstack.haclient import HaClient
from devstack.homeassistant import HomeAssistant
from devstack.waiting import async_wait_until, wait_until
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
DRONE_SUFFIXES = {
    "input_number": (
        "frequency",
        "keep_hourly",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
    ),
    "input_button": (
        "create",
        "prune",
        "update_stats",
        "check",
        "restore_drill",
        "scheduled_backup",
    ),
    "input_select": ("mode",),
    "input_text": ("keep_within",),
    "sensor": (
        "state",
        "last_backup",
        "last_prune",
        "last_verified_restore",
        "last_check",
        "next_backup",
        "total_size",
        "compressed_size",
        "deduplicated_size",
        "last_error",
        "progress",
        "speed",
        "eta",
        "current_file",
        "hint",
        "agent_version",
        "borg_version",
    ),
    "binary_sensor": ("problem",),
}


class Stack:
    def __init__(self, root: Path, drones: dict[str, LocalDrone]) -> None:
        self.root = root
        self.drones = drones
        self.apps_yaml, self.secrets = app_config(
            list(drones.values()),
            root / "state.json",
            tick_seconds=1,
            progress_interval=0.5,
            drone_settings={
                "alpha": {"mode": "manual", "keep": {"daily": 0, "weekly": 4, "yearly": 0}},
                "beta": {"mode": "manual", "frequency": 60, "keep": {"yearly": 0}},
            },
            offsite={
                "vault": offsite_target(
                    drones["beta"], list(drones.values()), self.offsite, mode="manual"
                )
            },
        )

    @property
    def offsite(self) -> Path:
        return self.root / "offsite"

    def start_app(self, factory: AppDaemonFactory) -> AppDaemon:
        return factory(apps_source=APP_SOURCE, apps_yaml=self.apps_yaml, secrets=self.secrets)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("drones")
    drones: dict[str, LocalDrone] = {}
    try:
        drones["alpha"] = make_local_drone(root, "alpha", data_bytes=24 * 1024 * 1024)
        drones["beta"] = make_local_drone(root, "beta")
        yield Stack(root, drones)
    finally:
        for drone in drones.values():
            drone.stop()


@pytest.fixture
def app(stack: Stack, appdaemon_factory: AppDaemonFactory) -> AppDaemon:
    appdaemon = stack.start_app(appdaemon_factory)
    appdaemon.wait_for_log("watching 2 drone(s)", TIMEOUT)
    return appdaemon


async def state_of(client: HaClient, entity_id: str) -> dict[str, Any]:
    state = await client.get_state(entity_id)
    assert state is not None, f"{entity_id} does not exist"
    return state


async def press(client: HaClient, drone: str, button: str) -> None:
    await client.call_service(
        "input_button", "press", {"entity_id": f"input_button.borg_{drone}_{button}"}
    )


async def set_number(client: HaClient, entity_id: str, value: float) -> None:
    await client.call_service("input_number", "set_value", {"entity_id": entity_id, "value": value})
    await client.wait_for_state(entity_id, lambda s: float(s["state"]) == value, TIMEOUT)


async def set_text(client: HaClient, entity_id: str, value: str) -> None:
    await client.call_service("input_text", "set_value", {"entity_id": entity_id, "value": value})


async def select(client: HaClient, drone: str, mode: str) -> None:
    entity_id = f"input_select.borg_{drone}_mode"
    await client.call_service(
        "input_select", "select_option", {"entity_id": entity_id, "option": mode}
    )
    await client.wait_for_state(entity_id, lambda s: s["state"] == mode, TIMEOUT)


def wait_for_next_second(previous: str) -> None:
    """Archive names carry the second: the next create must not land in the same one."""
    wait_until(
        lambda: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) > previous, "the next second", 5
    )


async def test_entities_of_both_drones_exist_with_their_looks(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    # A clean first start (every helper created just now): nothing to warn about.
    assert " WARNING " not in app.main_log()
    assert " ERROR " not in app.main_log()
    for drone in stack.drones:
        for domain, suffixes in DRONE_SUFFIXES.items():
            for suffix in suffixes:
                await state_of(ha_client, f"{domain}.borg_{drone}_{suffix}")
    frequency = await state_of(ha_client, "input_number.borg_beta_frequency")
    assert float(frequency["state"]) == 60
    assert frequency["attributes"]["unit_of_measurement"] == "min"
    mode = await state_of(ha_client, "input_select.borg_alpha_mode")
    assert mode["state"] == "manual"
    assert mode["attributes"]["options"] == ["scheduled", "manual", "disabled"]
    # A zero keep rule is a real zero in HA, not a missing value.
    assert float((await state_of(ha_client, "input_number.borg_beta_keep_yearly"))["state"]) == 0
    # Every rule prune applies is shown: daily and hourly too.
    assert float((await state_of(ha_client, "input_number.borg_alpha_keep_daily"))["state"]) == 0
    assert float((await state_of(ha_client, "input_number.borg_beta_keep_daily"))["state"]) == 7
    last_backup = await state_of(ha_client, "sensor.borg_alpha_last_backup")
    assert last_backup["attributes"]["device_class"] == "timestamp"
    total = await state_of(ha_client, "sensor.borg_alpha_total_size")
    assert total["attributes"]["device_class"] == "data_size"
    assert total["attributes"]["unit_of_measurement"] == "MiB"
    problem = await state_of(ha_client, "binary_sensor.borg_alpha_problem")
    assert problem["state"] == "off"
    assert problem["attributes"]["device_class"] == "problem"
    # AppDaemon drops attributes equal to 0 unless the app works around it.
    assert problem["attributes"]["consecutive_failures"] == "0"
    assert (await state_of(ha_client, "sensor.borg_alpha_state"))["state"] == "idle"
    assert (await state_of(ha_client, "input_select.borg_coordinator_mode"))["state"] == "running"
    progress = await state_of(ha_client, "sensor.borg_progress")
    assert progress["state"] == "idle"  # a percent (with its unit) only while something runs
    assert "unit_of_measurement" not in progress["attributes"]
    assert (await state_of(ha_client, "sensor.borg_alpha_progress"))["state"] == "unknown"


async def test_an_empty_repository_shows_zero_sizes_not_missing_ones(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    await press(ha_client, "beta", "update_stats")
    done = await finished.wait_for(lambda e: e["data"]["drone"] == "beta", TIMEOUT)
    assert done["data"]["ok"] is True, done["data"]
    assert done["data"]["results"]["stats"]["archive_count"] == 0
    total = await ha_client.wait_for_state(
        "sensor.borg_beta_total_size", lambda s: s["state"] != "unknown", TIMEOUT
    )
    assert total["state"] == "0.00"
    assert total["attributes"]["bytes"] == "0"  # a real zero, sent past AppDaemon's 0 bug
    last_backup = await state_of(ha_client, "sensor.borg_beta_last_backup")
    assert last_backup["attributes"]["archive_count"] == "0"


async def test_create_button_makes_an_archive_with_progress_and_events(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    progress = await ha_client.subscribe_events("backup_coordinator_progress")
    started = await ha_client.subscribe_events("backup_coordinator_started")
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    await press(ha_client, "alpha", "create")
    start = await started.wait_for(lambda e: e["data"]["drone"] == "alpha", TIMEOUT)
    assert start["data"] == {"drone": "alpha", "operation": "create", "requested": True}
    done = await finished.wait_for(lambda e: e["data"]["drone"] == "alpha", TIMEOUT)
    assert done["data"]["ok"] is True, done["data"]
    archive = done["data"]["results"]["create"]["archive"]
    assert archive["name"] in stack.drones["alpha"].archives()
    assert archive["nfiles"] == 6  # the .tmp file is excluded

    updates = [e["data"] for e in progress.events if e["data"]["drone"] == "alpha"]
    assert len(updates) >= 2
    assert updates[-1]["final"] is True
    sizes = [u["original_size"] for u in updates]
    assert sizes == sorted(sizes)
    assert sizes[-1] >= 24 * 1024 * 1024

    last_backup = await ha_client.wait_for_state(
        "sensor.borg_alpha_last_backup", lambda s: s["state"] != "unknown", TIMEOUT
    )
    assert last_backup["state"].endswith("+00:00")
    assert last_backup["attributes"]["archive"] == archive["name"]
    total = await state_of(ha_client, "sensor.borg_alpha_total_size")
    assert int(total["attributes"]["bytes"]) >= 24 * 1024 * 1024
    assert float(total["state"]) == pytest.approx(
        int(total["attributes"]["bytes"]) / 2**20, abs=0.01
    )
    # The session's hello told which agent and borg the drone runs.
    agent_version = await state_of(ha_client, "sensor.borg_alpha_agent_version")
    assert agent_version["state"][:1].isdigit(), agent_version
    assert (await state_of(ha_client, "sensor.borg_alpha_borg_version"))["state"][:1].isdigit()
    assert "passphrase" not in app.main_log().lower()
    assert stack.drones["alpha"].passphrase not in app.main_log() + app.error_log()
    assert "alpha: create finished" in app.main_log()
    # asyncssh's INFO lines (about 16 per session) stay out of AppDaemon's log
    assert "Opening SSH connection" not in app.main_log()
    assert "Connected to SSH server" not in app.main_log()


async def test_sync_now_copies_both_repositories_offsite_and_shows_it(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    progress = await ha_client.subscribe_events("backup_coordinator_progress")
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    assert (await state_of(ha_client, "sensor.borg_vault_state"))["state"] == "idle"
    await press(ha_client, "vault", "sync_now")
    done = await finished.wait_for(lambda e: e["data"]["drone"] == "vault", TIMEOUT)
    assert done["data"]["ok"] is True, done["data"]
    copied = done["data"]["results"]["offsite"]["repositories"]
    assert [entry["repository"] for entry in copied] == [
        str(drone.repository) for drone in stack.drones.values()
    ]
    assert all(entry["verified"] is True for entry in copied)
    for drone in stack.drones.values():
        copy = stack.offsite / drone.repository.name
        base_dir = stack.root / "offsite-borg" / drone.name
        assert list_archives(copy, drone.passphrase, base_dir) == drone.archives()

    last = await ha_client.wait_for_state(
        "sensor.borg_vault_last_offsite", lambda s: s["state"] != "unknown", TIMEOUT
    )
    assert last["state"].endswith("+00:00")
    assert last["attributes"]["verified"] == "true"  # booleans go to HA as text (app.py)
    size = await state_of(ha_client, "sensor.borg_vault_last_copy_size")
    assert int(size["attributes"]["bytes"]) == done["data"]["results"]["offsite"]["bytes"]
    assert size["attributes"]["device_class"] == "data_size"
    assert (await state_of(ha_client, "sensor.borg_vault_state"))["state"] == "idle"
    assert (await state_of(ha_client, "binary_sensor.borg_vault_problem"))["state"] == "off"
    updates = [e["data"] for e in progress.events if e["data"]["drone"] == "vault"]
    assert {u["repository"] for u in updates} == {str(d.repository) for d in stack.drones.values()}
    assert all(u["operation"] == "offsite" for u in updates)
    assert "vault: offsite copy finished" in app.main_log()


async def test_restore_drill_button_updates_the_last_verified_restore(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    await press(ha_client, "alpha", "restore_drill")
    done = await finished.wait_for(
        lambda e: e["data"]["drone"] == "alpha" and e["data"]["operation"] == "drill", TIMEOUT
    )
    assert done["data"]["ok"] is True, done["data"]
    drill = await ha_client.wait_for_state(
        "sensor.borg_alpha_last_verified_restore", lambda s: s["state"] != "unknown", TIMEOUT
    )
    assert drill["state"].endswith("+00:00")
    assert int(drill["attributes"]["files"]) >= 1
    assert str(drill["attributes"]["mismatches"]) == "0"
    assert drill["attributes"]["archive"] == stack.drones["alpha"].archives()[-1]
    assert (await state_of(ha_client, "binary_sensor.borg_alpha_problem"))["state"] == "off"
    assert not list(stack.drones["alpha"].restore_root.glob("*")), "a drill leaves nothing"


async def test_a_restore_event_puts_the_files_in_the_restore_folder_and_says_where(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    alpha = stack.drones["alpha"]
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    wanted = alpha.data_dir / "documents"
    await ha_client.fire_event(
        "backup_coordinator_restore", {"drone": "alpha", "paths": [str(wanted)]}
    )
    done = await finished.wait_for(
        lambda e: e["data"]["drone"] == "alpha" and e["data"]["operation"] == "extract", TIMEOUT
    )
    assert done["data"]["ok"] is True, done["data"]
    restored = done["data"]["results"]["extract"]
    destination = Path(restored["destination"])
    assert destination.parent == alpha.restore_root
    assert destination.name == alpha.archives()[-1]
    copy = destination / str(wanted).lstrip("/")
    for original in sorted(wanted.iterdir()):
        assert (copy / original.name).read_bytes() == original.read_bytes()
    assert not (destination / str(alpha.data_dir).lstrip("/") / "photos").exists()
    notification = await notification_of(ha_client, "borg_alpha_restore")
    assert str(destination) in notification["message"]


async def test_a_malformed_restore_event_is_refused_and_nothing_runs(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    requests = await ha_client.subscribe_events("backup_coordinator_request")
    await ha_client.fire_event(
        "backup_coordinator_restore", {"drone": "alpha", "paths": ["../../etc/shadow"]}
    )
    refused = await requests.wait_for(lambda e: e["data"]["operation"] == "extract", TIMEOUT)
    assert refused["data"]["outcome"].startswith("rejected: paths must not contain '..'")
    assert "restore requested: rejected" in app.main_log()


async def test_the_check_button_runs_a_check(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    await press(ha_client, "beta", "check")
    done = await finished.wait_for(
        lambda e: e["data"]["drone"] == "beta" and e["data"]["operation"] == "check", TIMEOUT
    )
    assert done["data"]["ok"] is True, done["data"]
    check = await ha_client.wait_for_state(
        "sensor.borg_beta_last_check", lambda s: s["state"] != "unknown", TIMEOUT
    )
    assert str(check["attributes"]["findings"]) == "0"


async def test_prune_removes_exactly_what_borgs_rules_remove(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    alpha = stack.drones["alpha"]
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    for _ in range(2):
        wait_for_next_second(alpha.archives()[-1].removeprefix("alpha-"))
        await press(ha_client, "alpha", "create")
        await finished.wait_for(lambda e: e["data"]["operation"] == "create", TIMEOUT)
        finished.events.clear()
    before = alpha.archives()
    assert len(before) == 3
    # Keep rules set through HA's helpers; within empty: only "one per week" is left.
    await set_number(ha_client, "input_number.borg_alpha_keep_weekly", 1)
    await set_number(ha_client, "input_number.borg_alpha_keep_monthly", 0)
    dry_run = run_borg(
        [
            "prune",
            "--dry-run",
            "--list",
            "--glob-archives",
            "alpha-*",
            "--keep-weekly",
            "1",
            str(alpha.repository),
        ],
        alpha.passphrase,
        alpha.borg_base_dir,
    )
    would_prune = {
        line.split()[2] for line in dry_run.stderr.splitlines() if line.startswith("Would prune:")
    }
    assert would_prune == set(before[:-1])

    await press(ha_client, "alpha", "prune")
    done = await finished.wait_for(lambda e: e["data"]["operation"] == "prune", TIMEOUT)
    assert done["data"]["ok"] is True, done["data"]
    assert set(done["data"]["results"]["prune"]["pruned"]) == would_prune
    assert alpha.archives() == [name for name in before if name not in would_prune]
    await ha_client.wait_for_state(
        "sensor.borg_alpha_last_prune", lambda s: s["state"] != "unknown", TIMEOUT
    )


async def test_garbage_keep_within_is_rejected_and_never_reaches_borg(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    started = await ha_client.subscribe_events("backup_coordinator_started")
    problems = await ha_client.subscribe_events("backup_coordinator_problem")
    archives = stack.drones["alpha"].archives()
    await set_text(ha_client, "input_text.borg_alpha_keep_within", "7x")
    problem = await ha_client.wait_for_state(
        "binary_sensor.borg_alpha_problem", lambda s: s["state"] == "on", TIMEOUT
    )
    assert "keep within rejected" in problem["attributes"]["reason"]
    assert "7x" in problem["attributes"]["reason"]
    raised = await problems.wait_for(lambda e: e["data"]["drone"] == "alpha", TIMEOUT)
    assert raised["data"]["raised"] is True
    app.wait_for_log("alpha: keep_within value '7x' rejected", TIMEOUT)
    await set_text(ha_client, "input_text.borg_alpha_keep_within", "")
    await ha_client.wait_for_state(
        "binary_sensor.borg_alpha_problem", lambda s: s["state"] == "off", TIMEOUT
    )
    cleared = await problems.wait_for(lambda e: e["data"]["raised"] is False, TIMEOUT)
    assert cleared["data"]["drone"] == "alpha"
    assert started.events == []
    assert stack.drones["alpha"].archives() == archives


async def test_disabled_drone_runs_nothing_and_raises_no_alarm(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    requests = await ha_client.subscribe_events("backup_coordinator_request")
    await select(ha_client, "beta", "disabled")
    await press(ha_client, "beta", "create")
    refused = await requests.wait_for(lambda e: e["data"]["drone"] == "beta", TIMEOUT)
    assert refused["data"]["outcome"].startswith("rejected")
    assert stack.drones["beta"].archives() == []
    assert (await state_of(ha_client, "binary_sensor.borg_beta_problem"))["state"] == "off"
    await select(ha_client, "beta", "manual")


async def test_tick_backs_up_scheduled_drones_round_robin_and_never_a_manual_one(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    started = await ha_client.subscribe_events("backup_coordinator_started")
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    assert stack.drones["beta"].archives() == []  # so beta would be due at once if scheduled
    # Frequency lowered on a scheduled alpha: the tick backs it up within that minute, while
    # beta, manual, is passed over by every tick (one a second) meanwhile.
    await set_number(ha_client, "input_number.borg_alpha_frequency", 1)
    await select(ha_client, "alpha", "scheduled")
    first = await started.wait_for(lambda e: True, 2 * TIMEOUT)
    assert first["data"] == {"drone": "alpha", "operation": "scheduled", "requested": False}
    done = await finished.wait_for(lambda e: e["data"]["drone"] == "alpha", TIMEOUT)
    assert done["data"]["ok"] is True, done["data"]
    assert [e["data"]["drone"] for e in started.events] == ["alpha"]
    assert stack.drones["beta"].archives() == []
    # Both scheduled with a one-minute frequency: beta (never backed up) right away, then
    # alpha and beta again in turn as their minutes run out.
    await set_number(ha_client, "input_number.borg_beta_frequency", 1)
    await select(ha_client, "beta", "scheduled")
    await started.wait_for(lambda e: e["data"]["drone"] == "beta", TIMEOUT)
    await started.wait_for(lambda e: len(started.events) >= 4, 3 * TIMEOUT)
    order = [(e["data"]["drone"], e["data"]["requested"]) for e in started.events]
    assert order[:4] == [("alpha", False), ("beta", False), ("alpha", False), ("beta", False)]
    for drone in ("alpha", "beta"):
        await select(ha_client, drone, "manual")
    await app_idle(ha_client)
    assert len(stack.drones["beta"].archives()) >= 2


async def app_idle(client: HaClient) -> None:
    await client.wait_for_state("sensor.borg_active", lambda s: s["state"] == "idle", 2 * TIMEOUT)


async def test_unreachable_drone_raises_a_problem_cleared_after_recovery(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    beta = stack.drones["beta"]
    problems = await ha_client.subscribe_events("backup_coordinator_problem")
    beta.sshd.stop()
    try:
        await press(ha_client, "beta", "create")
        await ha_client.wait_for_state(
            "sensor.borg_beta_state", lambda s: s["state"] == "unreachable", TIMEOUT
        )
        problem = await ha_client.wait_for_state(
            "binary_sensor.borg_beta_problem", lambda s: s["state"] == "on", TIMEOUT
        )
        assert (
            "unreachable" in problem["attributes"]["reason"]
            or "sshd" in problem["attributes"]["reason"]
        )
        raised = await problems.wait_for(lambda e: e["data"]["drone"] == "beta", TIMEOUT)
        assert raised["data"]["raised"] is True
        error = await state_of(ha_client, "sensor.borg_beta_last_error")
        assert error["attributes"]["kind"] == "unreachable"
        hint = await state_of(ha_client, "sensor.borg_beta_hint")
        assert hint["state"] == error["attributes"]["hint"] != ""
        # The dashboard's problem card, as HA's template engine renders it.
        card = drone_section("borg", "beta", EntityBackend.HELPERS)["cards"][2]["card"]
        shown = await ha_client.render_template(card["content"])
        assert "**Problem:** " in shown
        assert "**Last error:** " in shown
        assert f"**What to do:** {hint['state']}" in shown
        assert "borg_beta_problem" in await notification_ids(ha_client)
    finally:
        beta.sshd.start()
    await press(ha_client, "beta", "create")
    await ha_client.wait_for_state(
        "binary_sensor.borg_beta_problem", lambda s: s["state"] == "off", TIMEOUT
    )
    cleared = await problems.wait_for(lambda e: e["data"]["raised"] is False, TIMEOUT)
    assert cleared["data"]["drone"] == "beta"
    assert (await state_of(ha_client, "sensor.borg_beta_state"))["state"] == "idle"
    assert "borg_beta_problem" not in await notification_ids(ha_client)


async def notification_of(client: HaClient, notification_id: str) -> dict[str, Any]:
    """The persistent notification, once HA has it (the app sends it after the event)."""

    async def current() -> dict[str, Any] | None:
        notifications = await client.ws_command("persistent_notification/get")
        return next((n for n in notifications if n["notification_id"] == notification_id), None)

    return await async_wait_until(current, f"notification {notification_id}", TIMEOUT)


async def notification_ids(client: HaClient) -> list[str]:
    return [n["notification_id"] for n in await client.ws_command("persistent_notification/get")]


async def test_home_assistant_restart_keeps_helpers_and_brings_sensors_back(
    stack: Stack, app: AppDaemon, home_assistant: HomeAssistant, ha_client: HaClient
) -> None:
    last_backup = (await state_of(ha_client, "sensor.borg_alpha_last_backup"))["state"]
    # HA writes helper storage a few seconds after a change: wait for it, not a fixed time.
    storage = home_assistant.config_dir / ".storage" / "input_number"
    wait_until(
        lambda: '"borg_alpha_keep_weekly"' in storage.read_text() if storage.exists() else False,
        "helper storage",
        TIMEOUT,
    )
    mark = app.log_mark()
    await home_assistant.async_restart()
    await asyncio.to_thread(app.wait_for_log, "watching 2 drone(s)", 2 * TIMEOUT, mark)
    restored = await ha_client.wait_for_state(
        "sensor.borg_alpha_last_backup",
        lambda s: s["state"] not in ("unknown", "unavailable"),
        TIMEOUT,
    )
    assert restored["state"] == last_backup
    assert float((await state_of(ha_client, "input_number.borg_alpha_keep_weekly"))["state"]) == 1
    ids = [item["id"] for item in await ha_client.ws_command("input_number/list")]
    assert len(ids) == len(set(ids))
    assert not [i for i in ids if i.endswith("_2")]
    assert sorted(i for i in ids if i.startswith("borg_alpha_")) == [
        "borg_alpha_frequency",
        "borg_alpha_keep_daily",
        "borg_alpha_keep_hourly",
        "borg_alpha_keep_monthly",
        "borg_alpha_keep_weekly",
        "borg_alpha_keep_yearly",
    ]


async def test_appdaemon_restart_restores_last_backup_and_sizes(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    before = {
        entity: (await state_of(ha_client, entity))["state"]
        for entity in (
            "sensor.borg_alpha_last_backup",
            "sensor.borg_alpha_total_size",
            "sensor.borg_beta_last_prune",
        )
    }
    await app.async_stop()
    mark = app.log_mark()
    await asyncio.to_thread(app.start)
    await asyncio.to_thread(app.wait_for_log, "watching 2 drone(s)", TIMEOUT, mark)
    for entity, state in before.items():
        assert (await state_of(ha_client, entity))["state"] == state, entity


async def test_appdaemon_restart_mid_backup_retries_it_and_leaves_no_lock(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    alpha = stack.drones["alpha"]
    (alpha.data_dir / "photos" / "more.raw").write_bytes(os.urandom(48 * 1024 * 1024))
    progress = await ha_client.subscribe_events("backup_coordinator_progress")
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    before = alpha.archives()
    await press(ha_client, "alpha", "create")
    try:
        await progress.wait_for(
            lambda e: e["data"]["drone"] == "alpha" and not e["data"]["final"], TIMEOUT
        )
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{app.main_log()[-3000:]}") from None
    mark = app.log_mark()
    await app.async_stop()
    assert "cancelled by shutdown" in app.main_log()
    await asyncio.to_thread(app.start)
    await asyncio.to_thread(
        app.wait_for_log, "alpha: create was interrupted; it will run again", TIMEOUT, mark
    )
    done = await finished.wait_for(
        lambda e: e["data"]["drone"] == "alpha" and e["data"]["ok"], 2 * TIMEOUT
    )
    assert done["data"]["operation"] == "create"
    after = alpha.archives()
    assert len([a for a in after if a not in before]) == 1
    run_borg(
        ["with-lock", "--lock-wait", "1", str(alpha.repository), "true"],
        alpha.passphrase,
        alpha.borg_base_dir,
    )


async def test_a_flipped_byte_in_a_segment_fails_the_check_and_raises_the_problem(
    stack: Stack, app: AppDaemon, ha_client: HaClient
) -> None:
    """Last: it damages alpha's repository for good. borg's check verifies every segment
    entry's checksum, so one flipped byte anywhere is found (a drill finds it only when its
    sample reads the damaged chunk: tests/integration/test_agent_restore.py)."""
    alpha = stack.drones["alpha"]
    segments = sorted(
        (p for p in (alpha.repository / "data").rglob("*") if p.is_file() and p.name.isdigit()),
        key=lambda p: p.stat().st_size,
    )
    biggest = segments[-1]
    content = bytearray(biggest.read_bytes())
    content[len(content) // 2] ^= 0xFF
    biggest.write_bytes(bytes(content))
    finished = await ha_client.subscribe_events("backup_coordinator_finished")
    await select(ha_client, "alpha", "manual")
    await press(ha_client, "alpha", "check")
    done = await finished.wait_for(
        lambda e: e["data"]["drone"] == "alpha" and e["data"]["operation"] == "check", 2 * TIMEOUT
    )
    assert done["data"]["ok"] is False, done["data"]
    problem = await ha_client.wait_for_state(
        "binary_sensor.borg_alpha_problem", lambda s: s["state"] == "on", TIMEOUT
    )
    assert problem["attributes"]["reason"].startswith("repository check failed: ")
    assert (await state_of(ha_client, "sensor.borg_alpha_last_check"))["state"] == "unknown"
