"""Fixtures for end-to-end tests against a real Home Assistant and AppDaemon.

Import the fixtures a test module uses explicitly; each is registered under the name without
`_fixture`, so test parameters do not shadow the import:
`from tests.e2e.stack_support import ha_client_fixture  # noqa: F401` -> `ha_client` param.
Binaries come from BACKUP_COORDINATOR_HASS / BACKUP_COORDINATOR_APPDAEMON (exported by
scripts/test), falling back to where scripts/test installs them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from devstack.appdaemon import AppDaemon
from devstack.haclient import HaClient
from devstack.homeassistant import HomeAssistant

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HA_VERSION = "2025.4.4"
DEFAULT_HASS = (
    Path.home() / ".cache" / "backup-coordinator" / f"homeassistant-{HA_VERSION}" / "bin" / "hass"
)
DEFAULT_APPDAEMON = PROJECT_ROOT / ".venv" / "bin" / "appdaemon"

AppDaemonFactory = Callable[..., AppDaemon]


def stack_binary(env_var: str, default: Path) -> Path:
    """The binary named by `env_var`, else `default`; fails loudly when it is missing."""
    path = Path(os.environ.get(env_var) or default)
    if not path.is_file():
        pytest.fail(
            f"{path} is missing ({env_var} unset or wrong): run scripts/test, which installs "
            f"Home Assistant and AppDaemon, or export {env_var}",
            pytrace=False,
        )
    return path


def hass_binary() -> Path:
    return stack_binary("BACKUP_COORDINATOR_HASS", DEFAULT_HASS)


def appdaemon_binary() -> Path:
    return stack_binary("BACKUP_COORDINATOR_APPDAEMON", DEFAULT_APPDAEMON)


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
