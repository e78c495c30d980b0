"""The dev stack itself: a real Home Assistant and AppDaemon, driven through the harness."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.appdaemon import AppDaemonError
from devstack.haclient import HaClient, HaCommandError
from devstack.homeassistant import HomeAssistant, HomeAssistantError
from devstack.waiting import async_wait_until
from tests.e2e.stack_support import (
    AppDaemonFactory,
    appdaemon_factory_fixture,  # noqa: F401
    ha_client_fixture,  # noqa: F401
    ha_token_fixture,  # noqa: F401
    hass_binary,
    home_assistant_fixture,  # noqa: F401
    state_is,
)

pytestmark = pytest.mark.e2e

PROBE_APP = '''\
"""Harness probe: touches HA the way the coordinator app does."""

from appdaemon.plugins.hass.hassapi import Hass

HELPER_NAME = "Harness Level"


class HarnessProbe(Hass):
    async def initialize(self):
        await self.ensure_helper()
        await self.set_state(
            "sensor.harness_probe",
            state=str(self.args.get("probe_value", "42")),
            attributes={"friendly_name": "Harness Probe", "source": "appdaemon"},
            check_existence=False,
        )
        await self.fire_event("harness_ping", value="x")
        self.log("harness probe initialised")

    async def ensure_helper(self):
        listing = await self._plugin.websocket_send_json(type="input_number/list")
        if any(item["name"] == HELPER_NAME for item in listing["result"]):
            return
        await self._plugin.websocket_send_json(
            type="input_number/create", name=HELPER_NAME, min=0, max=100, step=1
        )
'''

PROBE_APPS_YAML = """\
harness_probe:
  module: harness_probe.probe
  class: HarnessProbe
  probe_value: "{value}"
"""


@pytest.fixture
def probe_package(tmp_path: Path) -> Path:
    package = tmp_path / "harness_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "probe.py").write_text(PROBE_APP)
    return package


def probe_yaml(value: str = "42") -> str:
    return PROBE_APPS_YAML.format(value=value)


def helper_persisted(home_assistant: HomeAssistant) -> Callable[[], Awaitable[bool]]:
    store = home_assistant.config_dir / ".storage" / "input_number"

    async def persisted() -> bool:
        return store.exists() and "harness_level" in store.read_text()

    return persisted


async def test_ha_serves_rest_and_websocket_with_the_token(
    home_assistant: HomeAssistant, ha_client: HaClient
) -> None:
    config = await ha_client.ws_command("get_config")
    assert config["state"] == "RUNNING"
    assert config["time_zone"] == "UTC"
    assert await ha_client.get_state("sensor.does_not_exist") is None
    assert isinstance(await ha_client.get_states(), list)
    assert home_assistant.token_file.exists()


async def test_ws_command_raises_with_has_error(ha_client: HaClient) -> None:
    with pytest.raises(HaCommandError, match="unknown_command"):
        await ha_client.ws_command("devstack/no_such_command")


async def test_many_concurrent_commands_complete_with_a_bounded_window(
    ha_client: HaClient,
) -> None:
    replies = await asyncio.gather(*(ha_client.ws_command("ping") for _ in range(1000)))
    assert replies == [None] * 1000
    assert (await ha_client.ws_command("get_config"))["state"] == "RUNNING"


async def test_helpers_are_created_and_set_through_the_client(ha_client: HaClient) -> None:
    await ha_client.ws_command("input_number/create", name="Client Probe", min=0, max=10)
    helpers = await ha_client.ws_command("input_number/list")
    assert "Client Probe" in [helper["name"] for helper in helpers]
    await ha_client.call_service(
        "input_number", "set_value", {"entity_id": "input_number.client_probe", "value": 7}
    )
    state = await ha_client.wait_for_state("input_number.client_probe", state_is("7.0"), 10)
    assert state["attributes"]["max"] == 10


async def test_appdaemon_app_publishes_a_sensor_an_event_and_a_helper(
    ha_client: HaClient, appdaemon_factory: AppDaemonFactory, probe_package: Path
) -> None:
    pings = await ha_client.subscribe_events("harness_ping")
    appdaemon = appdaemon_factory(apps_source=probe_package, apps_yaml=probe_yaml())

    sensor = await ha_client.wait_for_state("sensor.harness_probe", state_is("42"), 15)
    assert sensor["attributes"]["source"] == "appdaemon"
    ping = await pings.next(15)
    assert ping["data"] == {"value": "x"}
    helpers = await ha_client.ws_command("input_number/list")
    assert [h for h in helpers if h["name"] == "Harness Level"]
    assert "harness probe initialised" in appdaemon.main_log()


async def test_apps_yaml_changes_reload_the_app(
    ha_client: HaClient, appdaemon_factory: AppDaemonFactory, probe_package: Path
) -> None:
    appdaemon = appdaemon_factory(apps_source=probe_package, apps_yaml=probe_yaml("42"))
    await ha_client.wait_for_state("sensor.harness_probe", state_is("42"), 15)
    mark = appdaemon.log_mark()
    appdaemon.update_apps_yaml(probe_yaml("43"))
    appdaemon.wait_for_log("harness probe initialised", timeout=20, after=mark)
    await ha_client.wait_for_state("sensor.harness_probe", state_is("43"), 10)


async def test_ha_restart_keeps_token_and_helper_and_reruns_appdaemon_apps(
    home_assistant: HomeAssistant,
    ha_client: HaClient,
    appdaemon_factory: AppDaemonFactory,
    probe_package: Path,
) -> None:
    token_before = home_assistant.token_file.read_text()
    pings = await ha_client.subscribe_events("harness_ping")
    appdaemon = appdaemon_factory(apps_source=probe_package, apps_yaml=probe_yaml())
    await pings.next(15)
    # HA writes .storage ~10 s after a change; a graceful stop would flush it too, but the
    # point here is that the helper is really on disk before HA goes away.
    await async_wait_until(helper_persisted(home_assistant), "input_number in .storage", 30)

    mark = appdaemon.log_mark()
    await home_assistant.async_restart()

    assert home_assistant.token_file.read_text() == token_before
    assert home_assistant.ensure_token() == json.loads(token_before)["token"]
    # Sensors set through the API do not survive HA; AppDaemon's initialize() brings it back.
    await ha_client.wait_for_state("sensor.harness_probe", state_is("42"), 30)
    # The subscription is renewed on the client's new connection. Whether AppDaemon's second
    # ping came before or after that renewal is a race, so prove it with an event of our own.
    await ha_client.ws_command(
        "fire_event", event_type="harness_ping", event_data={"value": "after-restart"}
    )
    await pings.wait_for(lambda event: event["data"]["value"] == "after-restart", 10)
    appdaemon.wait_for_log("harness probe initialised", timeout=10, after=mark)
    helpers = await ha_client.ws_command("input_number/list")
    assert [h["name"] for h in helpers].count("Harness Level") == 1


def test_appdaemon_fails_fast_on_a_rejected_token(appdaemon_factory: AppDaemonFactory) -> None:
    with pytest.raises(AppDaemonError, match="token was rejected"):
        appdaemon_factory(token="not-a-token", apps_yaml="")


def test_appdaemon_start_fails_when_an_app_fails(
    appdaemon_factory: AppDaemonFactory, probe_package: Path
) -> None:
    (probe_package / "probe.py").write_text(
        PROBE_APP.replace("await self.ensure_helper()", "raise RuntimeError('probe broke')")
    )
    with pytest.raises(AppDaemonError, match="probe broke"):
        appdaemon_factory(apps_source=probe_package, apps_yaml=probe_yaml())


def test_broken_configuration_raises_with_the_log_tail(tmp_path: Path) -> None:
    ha = HomeAssistant(tmp_path / "broken", hass_binary())
    ha.write_config()
    config = ha.config_dir / "configuration.yaml"
    config.write_text(config.read_text() + "input_number: [not, a, mapping\n")
    try:
        with pytest.raises(HomeAssistantError, match=r"recovery mode|exited"):
            ha.start()
    finally:
        ha.stop()
        ha.stop()  # safe twice


def test_demo_config_finishes_onboarding_without_core_config(tmp_path: Path) -> None:
    ha = HomeAssistant(tmp_path / "demo", hass_binary(), username="demo", password="demo-pass")
    ha.write_config(with_frontend=True)
    with ha.running():
        ha.restart()  # onboarded: /api/onboarding is gone, readiness must still work
        assert no_redirect_status(f"{ha.url}/") == 200  # the UI, not the onboarding wizard
        integrations = http_json(f"{ha.url}/api/config", ha.ensure_token())["components"]
        assert not {"met", "radio_browser", "google_translate", "shopping_list"} & set(integrations)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def no_redirect_status(url: str) -> int:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def http_json(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.loads(response.read())
