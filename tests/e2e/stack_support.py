"""Fixtures for end-to-end tests against a real Home Assistant and AppDaemon.

Import the fixtures a test module uses explicitly; each is registered under the name without
`_fixture`, so test parameters do not shadow the import:
`from tests.e2e.stack_support import ha_client_fixture  # noqa: F401` -> `ha_client` param.
MQTT: `mqtt_broker` (module), `ha_mqtt_entry` (module: HA's MQTT integration on that broker),
`mqtt` (a client per test); `appdaemon_factory(mqtt_port=mqtt_broker.port)` adds AppDaemon's
MQTT plugin.
Binaries come from BACKUP_COORDINATOR_HASS / BACKUP_COORDINATOR_APPDAEMON /
BACKUP_COORDINATOR_MOSQUITTO (exported by scripts/test), falling back to where scripts/test
installs them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from devstack.appdaemon import AppDaemon
from devstack.haclient import HaClient
from devstack.homeassistant import HomeAssistant, run_coroutine_blocking
from devstack.mosquitto import DEFAULT_MOSQUITTO, Mosquitto
from devstack.mqttclient import MqttClient

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HA_VERSION = "2025.4.4"
DEFAULT_HASS = (
    Path.home() / ".cache" / "backup-coordinator" / f"homeassistant-{HA_VERSION}" / "bin" / "hass"
)
DEFAULT_APPDAEMON = PROJECT_ROOT / ".venv" / "bin" / "appdaemon"

AppDaemonFactory = Callable[..., AppDaemon]
StatePredicate = Callable[[dict[str, Any]], bool]


def state_is(value: str) -> StatePredicate:
    """For `HaClient.wait_for_state`: the entity's state is `value`."""
    return lambda state: state["state"] == value


def stack_binary(env_var: str, default: Path) -> Path:
    """The binary named by `env_var`, else `default`; fails loudly when it is missing."""
    path = Path(os.environ.get(env_var) or default)
    if not path.is_file():
        pytest.fail(
            f"{path} is missing ({env_var} unset or wrong): run scripts/test, which installs "
            f"Home Assistant, AppDaemon and mosquitto, or export {env_var}",
            pytrace=False,
        )
    return path


def hass_binary() -> Path:
    return stack_binary("BACKUP_COORDINATOR_HASS", DEFAULT_HASS)


def appdaemon_binary() -> Path:
    return stack_binary("BACKUP_COORDINATOR_APPDAEMON", DEFAULT_APPDAEMON)


def mosquitto_binary() -> Path:
    return stack_binary("BACKUP_COORDINATOR_MOSQUITTO", DEFAULT_MOSQUITTO)


@pytest.fixture(scope="module", name="home_assistant")
def home_assistant_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    """A started, onboarded Home Assistant shared by one test module; stopped by PID after."""
    ha = HomeAssistant(tmp_path_factory.mktemp("homeassistant"), hass_binary())
    ha.write_config()
    with ha.running():
        yield ha


@pytest.fixture(name="ha_token")
def ha_token_fixture(home_assistant: HomeAssistant) -> str:
    return home_assistant.ensure_token()


@pytest_asyncio.fixture(name="ha_client")
async def ha_client_fixture(
    home_assistant: HomeAssistant, ha_token: str
) -> AsyncIterator[HaClient]:
    async with HaClient(home_assistant.url, ha_token) as client:
        yield client


@pytest.fixture(name="appdaemon_factory")
def appdaemon_factory_fixture(
    home_assistant: HomeAssistant, ha_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AppDaemonFactory]:
    """`appdaemon_factory(apps_source=..., apps_yaml=..., ...)` -> a started AppDaemon.

    Keyword arguments go to `AppDaemon`; HA's URL and token default to the module's HA. Every
    AppDaemon made here is stopped by PID when the test ends.
    """
    started: list[AppDaemon] = []

    def make(**options: object) -> AppDaemon:
        options.setdefault("ha_url", home_assistant.url)
        options.setdefault("token", ha_token)
        appdaemon = AppDaemon(
            tmp_path_factory.mktemp("appdaemon"),
            appdaemon_binary(),
            **options,  # type: ignore[arg-type]
        )
        started.append(appdaemon)
        appdaemon.start()
        return appdaemon

    try:
        yield make
    finally:
        for appdaemon in started:
            appdaemon.stop()


@pytest.fixture(scope="module", name="mqtt_broker")
def mqtt_broker_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A mosquitto on 127.0.0.1 shared by one test module; stopped by PID after."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), mosquitto_binary())
    with broker.running():
        yield broker


@pytest.fixture(scope="module", name="ha_mqtt_entry")
def ha_mqtt_entry_fixture(mqtt_broker: Mosquitto, home_assistant: HomeAssistant) -> str:
    """HA's MQTT integration set up against the module's broker (discovery on); its entry id.

    Asks for the broker first, so that (unless a test started HA before) HA stops first.
    """

    async def set_up() -> str:
        async with HaClient(home_assistant.url, home_assistant.ensure_token()) as client:
            return await client.setup_mqtt(mqtt_broker.port)

    return run_coroutine_blocking(set_up())


@pytest.fixture(name="mqtt")
def mqtt_fixture(mqtt_broker: Mosquitto) -> Iterator[MqttClient]:
    """A connected MQTT client of the module's broker, closed after the test."""
    with MqttClient(mqtt_broker.port) as client:
        yield client
