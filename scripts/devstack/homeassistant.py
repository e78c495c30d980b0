"""A real Home Assistant on 127.0.0.1 for end-to-end tests and the demo.

Recipe and pitfalls: /work/shared/STACK.md and docs/operations.md. In short: a minimal
configuration, `hass --skip-pip` (nothing is installed at runtime), readiness through
`GET /api/onboarding` (needs no token, so polling it logs no failed logins), and a long-lived
token obtained once per config dir through the onboarding API and kept in a file.

Onboarding has four steps: user, core_config, analytics, integration. The frontend sends a
person to the onboarding wizard until all four are done. `user`, `analytics` and `integration`
are completed over the API here; `core_config` is never posted, because HA then sets up
integrations that need the internet (google_translate, met, radio_browser, shopping_list). For
the demo (`write_config(with_frontend=True)`) the onboarding store is seeded with `core_config`
already done before the first start, which is exactly the state that step leaves behind minus
those integrations; HA then counts as onboarded once the other three are completed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from devstack.process import ServerProcess, file_size, read_from, read_text, tail
from devstack.waiting import free_port, wait_until

T = TypeVar("T")

START_TIMEOUT = 90.0
TOKEN_FILE_NAME = "devstack-token.json"  # noqa: S105 (a file name)
CONSOLE_LOG_NAME = "hass-console.log"
RECOVERY_MODE_MARK = "Activating recovery mode"
ONBOARDING_STORE_VERSION = 4

CONFIGURATION_TEMPLATE = """\
homeassistant:
  name: Backup Coordinator Dev
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
websocket_api:
input_button:
input_number:
input_select:
input_text:
logger:
  default: warning
{frontend}"""

FRONTEND_SECTION = """\
frontend:
lovelace:
"""


class HomeAssistantError(RuntimeError):
    """Home Assistant did not start, or refused a request of the harness."""


class HomeAssistant(ServerProcess):
    """One Home Assistant process with its own config dir and port."""

    display_name = "Home Assistant"
    error_type = HomeAssistantError

    def __init__(
        self,
        config_dir: Path,
        hass_bin: Path,
        port: int | None = None,
        *,
        username: str = "owner",
        password: str = "backup-coordinator",  # noqa: S107 (loopback dev stack)
        owner_name: str = "Owner",
        language: str = "en",
    ) -> None:
        super().__init__()
        self.config_dir = config_dir
        self.hass_bin = hass_bin
        self.port = port if port is not None else free_port()
        self.username = username
        self.password = password
        self.owner_name = owner_name
        self.language = language
        self._log_offset_at_start = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_file(self) -> Path:
        return self.config_dir / TOKEN_FILE_NAME

    @property
    def console_log(self) -> Path:
        return self.config_dir / CONSOLE_LOG_NAME

    def write_config(self, with_frontend: bool = False) -> None:
        """Writes configuration.yaml; the frontend (UI + dashboards) is for the demo only."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        text = CONFIGURATION_TEMPLATE.format(
            port=self.port, frontend=FRONTEND_SECTION if with_frontend else ""
        )
        (self.config_dir / "configuration.yaml").write_text(text)
        if with_frontend:
            self._seed_onboarding_without_core_config()

    def _seed_onboarding_without_core_config(self) -> None:
        # Only before the first start: afterwards HA owns this file.
        store = self.config_dir / ".storage" / "onboarding"
        if store.exists():
            return
        store.parent.mkdir(parents=True, exist_ok=True)
        content = {
            "version": ONBOARDING_STORE_VERSION,
            "minor_version": 1,
            "key": "onboarding",
            "data": {"done": ["core_config"]},
        }
        store.write_text(json.dumps(content, indent=2))

    def start(self) -> None:
        """Launches hass and waits until it serves its API (and is RUNNING, once a token exists)."""
        self._refuse_if_running()
        self._log_offset_at_start = file_size(self.console_log)
        self._launch(
            [str(self.hass_bin), "-c", str(self.config_dir), "--skip-pip"],
            self.console_log,
        )
        wait_until(self._api_answers, f"Home Assistant on {self.url}", timeout=START_TIMEOUT)
        token = self._saved_token()
        if token is not None:
            self._wait_running(token)

    @contextmanager
    def running(self) -> Iterator[HomeAssistant]:
        """Starts and onboards this Home Assistant (see `ensure_token`); stops it on the way out."""
        try:
            self.start()
            self.ensure_token()
            yield self
        finally:
            self.stop()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """HA stopped (SIGSTOP) inside the block: connections stay open but nothing answers,
        as with an overloaded or hung HA. SIGCONT on the way out, whatever happened."""
        pid = self.pid
        if pid is None:
            raise HomeAssistantError("Home Assistant is not running")
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def log_text(self) -> str:
        """Everything hass printed (all starts of this config dir)."""
        return read_text(self.console_log)

    def ensure_token(self) -> str:
        """A long-lived admin token: onboards the owner on first use, then reuses the token file."""
        token = self._saved_token()
        if token is None:
            token = run_coroutine_blocking(self._onboard_and_create_token())
            self.token_file.write_text(json.dumps({"url": self.url, "token": token}))
            self.token_file.chmod(0o600)
        self._wait_running(token)
        return token

    def _saved_token(self) -> str | None:
        if not self.token_file.exists():
            return None
        return str(json.loads(self.token_file.read_text())["token"])

    def _raise_if_failed(self) -> None:
        returncode = self._exit_code()
        log = read_from(self.console_log, self._log_offset_at_start)
        if returncode is not None:
            raise HomeAssistantError(f"hass exited with {returncode}; log tail:\n{tail(log)}")
        if RECOVERY_MODE_MARK in log:
            raise HomeAssistantError(
                f"Home Assistant went into recovery mode (broken configuration); "
                f"log tail:\n{tail(log)}"
            )

    def _api_answers(self) -> bool:
        self._raise_if_failed()
        # Once onboarded (demo), the onboarding views are gone and this path answers 404.
        return http_status(f"{self.url}/api/onboarding") in {200, 404}

    def _wait_running(self, token: str) -> None:
        """With the frontend, the port opens before every integration is set up: wait for that."""

        def running() -> bool:
            self._raise_if_failed()
            config = http_get_json(f"{self.url}/api/config", token)
            return config is not None and config.get("state") == "RUNNING"

        wait_until(running, "Home Assistant to reach RUNNING", timeout=START_TIMEOUT)

    async def _onboard_and_create_token(self) -> str:
        client_id = f"{self.url}/"
        async with aiohttp.ClientSession() as session:
            auth_code = await self._create_owner(session, client_id)
            access_token = await self._exchange_auth_code(session, client_id, auth_code)
            await self._complete_remaining_onboarding(session, client_id, access_token)
            return await self._create_long_lived_token(session, access_token)

    async def _create_owner(self, session: aiohttp.ClientSession, client_id: str) -> str:
        owner = {
            "client_id": client_id,
            "name": self.owner_name,
            "username": self.username,
            "password": self.password,
            "language": self.language,
        }
        async with session.post(f"{self.url}/api/onboarding/users", json=owner) as response:
            body = await response.text()
            if response.status != 200:
                raise HomeAssistantError(
                    f"onboarding the owner failed ({response.status}): {body}; "
                    f"the config dir was onboarded before but {self.token_file} is missing"
                )
            return str(json.loads(body)["auth_code"])

    async def _exchange_auth_code(
        self, session: aiohttp.ClientSession, client_id: str, auth_code: str
    ) -> str:
        form = {"grant_type": "authorization_code", "code": auth_code, "client_id": client_id}
        async with session.post(f"{self.url}/auth/token", data=form) as response:
            body = await response.text()
            if response.status != 200:
                raise HomeAssistantError(f"/auth/token failed ({response.status}): {body}")
            return str(json.loads(body)["access_token"])

    async def _complete_remaining_onboarding(
        self, session: aiohttp.ClientSession, client_id: str, access_token: str
    ) -> None:
        """Analytics and integration steps: they only record that they were done."""
        headers = {"Authorization": f"Bearer {access_token}"}
        redirect_uri = f"{client_id}?auth_callback=1"
        steps: list[tuple[str, dict[str, str]]] = [
            ("analytics", {}),
            ("integration", {"client_id": client_id, "redirect_uri": redirect_uri}),
        ]
        for step, payload in steps:
            url = f"{self.url}/api/onboarding/{step}"
            async with session.post(url, json=payload, headers=headers) as response:
                if response.status != 200:
                    body = await response.text()
                    raise HomeAssistantError(
                        f"onboarding step {step} failed ({response.status}): {body}"
                    )

    async def _create_long_lived_token(
        self, session: aiohttp.ClientSession, access_token: str
    ) -> str:
        async with session.ws_connect(f"{self.url}/api/websocket") as ws:
            await ws.receive_json()  # auth_required
            await ws.send_json({"type": "auth", "access_token": access_token})
            reply = await ws.receive_json()
            if reply.get("type") != "auth_ok":
                raise HomeAssistantError(f"websocket auth failed: {reply}")
            await ws.send_json(
                {
                    "id": 1,
                    "type": "auth/long_lived_access_token",
                    "client_name": "backup-coordinator devstack",
                    "lifespan": 3650,
                }
            )
            result = await ws.receive_json()
            if not result.get("success"):
                raise HomeAssistantError(f"creating the long-lived token failed: {result}")
            return str(result["result"])


def http_status(url: str) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback URL)
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def http_get_json(url: str, token: str) -> dict[str, Any] | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
            value = json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code == 401:
            raise HomeAssistantError(f"{url} rejected the saved token") from error
        return None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return value if isinstance(value, dict) else None


def run_coroutine_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to completion from sync code, even when an event loop is running."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
