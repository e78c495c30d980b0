"""The whole stack on this machine: a Mosquitto broker, Home Assistant with its MQTT
integration, AppDaemon running the app (entities through MQTT discovery: a device per drone),
two local drones and an offsite target copying their repositories into a local folder.

Run through ``scripts/demo`` (which installs what is missing first). Everything it starts
listens on 127.0.0.1 and is stopped when it ends (Ctrl-C, or after ``--smoke``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .appdaemon import AppDaemon
from .borg import PROJECT_ROOT, list_archives
from .drones import LocalDrone, app_config, make_local_drone, offsite_target
from .haclient import HaClient
from .homeassistant import HomeAssistant, run_coroutine_blocking
from .mosquitto import Mosquitto

DEMO_ROOT = PROJECT_ROOT / ".stack" / "demo"
USERNAME = "demo"
PASSWORD = "demo-backups"  # noqa: S105 - a local demo login, printed for the person
FIRST_ROUND_TIMEOUT = 300.0
DRONES = {"laptop": 8 * 1024 * 1024, "nas": 32 * 1024 * 1024}
# The offsite target: the nas drone's agent copies both repositories into a local folder (a
# stand-in for a cloud bucket) once both have been backed up.
TARGET = "vault"
OFFSITE_DESTINATION = DEMO_ROOT / "offsite"
MQTT_CLIENT_ID = (
    "appdaemon-demo"  # AppDaemon's MQTT client; <id>/status is every entity's availability
)
MIB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="check the first round, then stop")
    args = parser.parse_args()
    hass_bin = Path(os.environ["BACKUP_COORDINATOR_HASS"])
    appdaemon_bin = Path(os.environ["BACKUP_COORDINATOR_APPDAEMON"])
    mosquitto_bin = Path(os.environ["BACKUP_COORDINATOR_MOSQUITTO"])
    shutil.rmtree(DEMO_ROOT, ignore_errors=True)
    DEMO_ROOT.mkdir(parents=True)
    with ExitStack() as running:
        started = time.monotonic()
        broker = running.enter_context(mqtt_broker(mosquitto_bin))
        ha = running.enter_context(home_assistant(hass_bin, broker))
        drones = [running.enter_context(local_drone(name, size)) for name, size in DRONES.items()]
        appdaemon = running.enter_context(coordinator_app(appdaemon_bin, ha, broker, drones))
        ok = asyncio.run(first_round(ha, drones, appdaemon))
        elapsed = time.monotonic() - started
        say(f"stack up and first round {'done' if ok else 'FAILED'} in {elapsed:.0f} s")
        if args.smoke:
            return 0 if ok and check_archives(drones) else 1
        show_what_to_try(ha, appdaemon)
        wait_for_interrupt()
    say("stopped everything")
    return 0


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


@contextmanager
def mqtt_broker(mosquitto_bin: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(DEMO_ROOT / "mosquitto", mosquitto_bin)
    say(f"starting Mosquitto on 127.0.0.1:{broker.port}")
    with broker.running():
        yield broker


@contextmanager
def home_assistant(hass_bin: Path, broker: Mosquitto) -> Iterator[HomeAssistant]:
    ha = HomeAssistant(DEMO_ROOT / "homeassistant", hass_bin, username=USERNAME, password=PASSWORD)
    ha.write_config(with_frontend=True)
    say(f"starting Home Assistant on {ha.url}")
    with ha.running():
        run_coroutine_blocking(set_up_mqtt(ha, broker))
        yield ha


async def set_up_mqtt(ha: HomeAssistant, broker: Mosquitto) -> None:
    """HA's MQTT integration on the demo's broker, as Settings > Devices & services would."""
    async with HaClient(ha.url, ha.ensure_token()) as client:
        await client.setup_mqtt(broker.port)
    say("Home Assistant's MQTT integration is set up (discovery on)")


@contextmanager
def local_drone(name: str, data_bytes: int) -> Iterator[LocalDrone]:
    drone = make_local_drone(DEMO_ROOT / "drones", name, data_bytes)
    say(f"drone {name}: sshd on 127.0.0.1:{drone.sshd.port}, data {drone.data_dir}")
    try:
        yield drone
    finally:
        drone.stop()


@contextmanager
def coordinator_app(
    appdaemon_bin: Path, ha: HomeAssistant, broker: Mosquitto, drones: list[LocalDrone]
) -> Iterator[AppDaemon]:
    apps_yaml, secrets = app_config(
        drones,
        DEMO_ROOT / "backup_coordinator_state.json",
        tick_seconds=10,
        progress_interval=1,
        drone_settings={
            d.name: {"frequency": 60, "keep": {"within": "1d", "daily": 7}} for d in drones
        },
        offsite={
            TARGET: offsite_target(
                drones[-1], drones, OFFSITE_DESTINATION, frequency=120, keep_replaced=True
            )
        },
        entities="mqtt",
    )
    appdaemon = AppDaemon(
        DEMO_ROOT / "appdaemon",
        appdaemon_bin,
        ha.url,
        ha.ensure_token(),
        apps_source=PROJECT_ROOT / "apps" / "backup_coordinator",
        apps_yaml=apps_yaml,
        secrets=secrets,
        mqtt_port=broker.port,
        mqtt_client_id=MQTT_CLIENT_ID,
    )
    say("starting AppDaemon (HASS and MQTT plugins) with the backup_coordinator app")
    try:
        appdaemon.start()
        appdaemon.wait_for_log("watching 2 drone(s)", 60)
        yield appdaemon
    finally:
        appdaemon.stop()


async def first_round(ha: HomeAssistant, drones: list[LocalDrone], appdaemon: AppDaemon) -> bool:
    """Installs the dashboard, then waits until every drone has been backed up once."""
    async with HaClient(ha.url, ha.ensure_token()) as client:
        await client.ws_command("lovelace/config/save", config=dashboard_config(appdaemon))
        say("dashboard installed; waiting for the first round of backups")
        ok = True
        for drone in drones:
            try:
                await client.wait_for_state(
                    f"sensor.borg_{drone.name}_last_prune",
                    lambda s: s["state"] not in ("unknown", "unavailable"),
                    FIRST_ROUND_TIMEOUT,
                )
                await client.wait_for_state(
                    f"sensor.borg_{drone.name}_state", lambda s: s["state"] == "idle", 60
                )
            except TimeoutError as error:
                say(f"{drone.name}: the first scheduled backup did not finish: {error}")
                ok = False
                continue
            ok &= await report_drone(client, drone.name)
        ok &= await first_drills(client, drones)
        return ok and await first_offsite_copy(client)


async def first_drills(client: HaClient, drones: list[LocalDrone]) -> bool:
    """Presses each drone's "restore drill" (scheduled weekly, so a person starts the first):
    a sample of the archive is restored and compared with the live files."""
    ok = True
    for drone in drones:
        await client.call_service(
            "button", "press", {"entity_id": f"button.borg_{drone.name}_restore_drill"}
        )
    for drone in drones:
        try:
            drill = await client.wait_for_state(
                f"sensor.borg_{drone.name}_last_verified_restore",
                lambda s: s["state"] not in ("unknown", "unavailable"),
                FIRST_ROUND_TIMEOUT,
            )
        except TimeoutError as error:
            say(f"{drone.name}: the restore drill did not pass: {error}")
            ok = False
            continue
        attributes = drill["attributes"]
        say(
            f"{drone.name}: restore drill of {attributes.get('archive')} passed:"
            f" {attributes.get('files')} files verified, {attributes.get('mismatches')} mismatches"
        )
    return ok


async def first_offsite_copy(client: HaClient) -> bool:
    """Waits until the offsite target has copied both repositories once."""
    try:
        await client.wait_for_state(
            f"sensor.borg_{TARGET}_last_offsite",
            lambda s: s["state"] not in ("unknown", "unavailable"),
            FIRST_ROUND_TIMEOUT,
        )
    except TimeoutError as error:
        say(f"{TARGET}: the first offsite copy did not finish: {error}")
        return False
    last = await client.get_state(f"sensor.borg_{TARGET}_last_offsite") or {}
    size = await client.get_state(f"sensor.borg_{TARGET}_last_copy_size") or {}
    attributes = last.get("attributes", {})
    say(
        f"{TARGET}: offsite copy at {last.get('state')} of"
        f" {', '.join(attributes.get('repositories', []))}:"
        f" {mib(size.get('attributes', {}).get('bytes'))} transferred,"
        f" verified {attributes.get('verified')}"
    )
    return str(attributes.get("verified")).lower() == "true"  # the app sends booleans as text


async def report_drone(client: HaClient, name: str) -> bool:
    states = {
        suffix: await client.get_state(f"{domain}.borg_{name}_{suffix}")
        for domain, suffix in (
            ("sensor", "state"),
            ("sensor", "last_backup"),
            ("sensor", "total_size"),
            ("sensor", "deduplicated_size"),
            ("binary_sensor", "problem"),
        )
    }
    values: dict[str, Any] = {k: (v or {}).get("state") for k, v in states.items()}
    say(
        f"{name}: state {values['state']}, last backup {values['last_backup']},"
        f" total {size_of(states['total_size'])},"
        f" deduplicated {size_of(states['deduplicated_size'])}, problem {values['problem']}"
    )
    sized = values["total_size"] not in (None, "unknown")
    return values["problem"] == "off" and sized


def size_of(state: dict[str, Any] | None) -> str:
    """A size sensor's value in MiB, from its bytes (HA's state is in whatever unit it shows)."""
    if state is None:
        return "missing"
    return mib(state["attributes"].get("bytes", state["state"]))


def mib(size: object) -> str:
    """A size in bytes as MiB."""
    try:
        return f"{float(str(size)) / MIB:.2f} MiB"
    except ValueError:
        return str(size)


def dashboard_config(appdaemon: AppDaemon) -> dict[str, Any]:
    """The CLI's dashboard for the app's own apps.yaml (the same command a user runs)."""
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "backup_coordinator",
            "--config",
            str(appdaemon.apps_dir / "apps.yaml"),
            "dashboard",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "apps")},
    ).stdout
    config: dict[str, Any] = json.loads(output)
    return config


def check_archives(drones: list[LocalDrone]) -> bool:
    ok = True
    for drone in drones:
        archives = drone.archives()
        say(
            f"{drone.name}: {len(archives)} archive(s) in {drone.repository}: {', '.join(archives)}"
        )
        ok &= len(archives) >= 1
        copy = OFFSITE_DESTINATION / drone.repository.name
        # borg state of its own, as on a machine restoring from the copy
        copied = list_archives(copy, drone.passphrase, DEMO_ROOT / "offsite-borg" / drone.name)
        say(f"{drone.name}: the offsite copy {copy} opens with borg: {len(copied)} archive(s)")
        ok &= set(copied) <= set(archives) and len(copied) >= 1
    say("smoke check " + ("passed" if ok else "FAILED"))
    return ok


def show_what_to_try(ha: HomeAssistant, appdaemon: AppDaemon) -> None:
    print(
        f"""
Home Assistant is running: {ha.url}/lovelace/backups
  login: {USERNAME} / {PASSWORD}
  Settings > Devices & services > MQTT: a device per drone and for the offsite target, under
  "Borg coordinator" (rename entities, give them areas, show sizes in GiB).

Try:
  - press "Create backup" on a drone and watch its state and the coordinator's progress;
  - set "Keep within" to 7x: it is rejected and the drone's problem turns on; clear it again;
  - switch a drone's mode to manual or disabled, or lower its frequency;
  - press "Restore drill" or "Check" on a drone; or restore a file: Developer tools > Events,
    fire backup_coordinator_restore with
    {{"drone": "laptop", "paths": ["{DEMO_ROOT / "drones" / "laptop" / "data" / "documents"}"]}}
    and watch the notification say where the files are;
  - press "Sync now" on the vault card: the nas drone's agent copies both repositories to
    {OFFSITE_DESTINATION} with rclone, one at a time (its drone shows "offsite" meanwhile);
  - Developer tools > Events: listen to backup_coordinator_progress / _finished / _problem.
AppDaemon's log (one line per operation): {appdaemon.main_log_path}
Drones, repositories and state live under {DEMO_ROOT}.
Press Ctrl-C to stop everything.""",
        flush=True,
    )


def wait_for_interrupt() -> None:
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()

    asyncio.run(wait())


if __name__ == "__main__":
    sys.exit(main())
