"""A real AppDaemon connected to a devstack Home Assistant, running apps from a copied folder.

The app package is copied, not linked: AppDaemon walks every file of its apps dir, so tests and
tooling must stay outside it. The HA token travels in the process environment (`!env_var`),
never in a file. Logs are files with `filter_threshold: 0` (otherwise repeated identical lines
are collapsed) and no rotation, so byte offsets into them stay valid for `wait_for_log`.
AppDaemon retries a lost HA connection every second (default 5 s) so HA restarts in tests are
followed quickly. The HASS plugin accepts websocket messages up to `WS_MAX_MSG_SIZE` (AppDaemon's
default of 4 MiB is smaller than HA's state dump with many hundreds of drones: see the README).
With `mqtt_port`, AppDaemon's MQTT plugin joins in (namespace `mqtt`, no topics subscribed
up front: apps subscribe to what they need). Its birth and will topic is `mqtt_status_topic`,
retained "online" while connected and "offline" after a clean stop or a lost connection.
The blocking methods have `async_` twins for async tests.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from devstack.process import ServerProcess, file_size, read_from, read_text, tail
from devstack.waiting import free_port, wait_until

START_TIMEOUT = 60.0
APPS_READY_MARK = "App initialization complete"
FAILURE_MARKS = ("Failed to authenticate", "Traceback", "failed to start")
NO_ROTATION_BYTES = 1_000_000_000
# HA's state dump (AppDaemon's first message after connecting) grows ~9 KiB per drone.
WS_MAX_MSG_SIZE = 64 * 1024 * 1024

APPDAEMON_YAML_TEMPLATE = """\
appdaemon:
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  time_zone: {time_zone}
  plugins:
    HASS:
      type: hass
      ha_url: {ha_url}
      token: !env_var HA_TOKEN
      retry_secs: 1
      ws_max_msg_size: {ws_max_msg_size}
{mqtt_plugin}http:
  url: http://127.0.0.1:{port}
api:
logs:
  main_log:
    filename: {main_log}
    filter_threshold: 0
    log_size: {log_size}
  error_log:
    filename: {error_log}
    filter_threshold: 0
    log_size: {log_size}
"""

MQTT_NAMESPACE = "mqtt"
# "NONE": no subscription up front; AppDaemon's default would subscribe to every topic ("#").
MQTT_PLUGIN_TEMPLATE = """\
    MQTT:
      type: mqtt
      namespace: {namespace}
      client_host: 127.0.0.1
      client_port: {port}
      client_id: {client_id}
      client_topics: NONE
"""


class AppDaemonError(RuntimeError):
    """AppDaemon did not start its apps, or an expected log line did not come."""


class AppDaemon(ServerProcess):
    """One AppDaemon process with its own config dir, apps dir and HTTP port."""

    display_name = "AppDaemon"
    error_type = AppDaemonError

    def __init__(
        self,
        config_dir: Path,
        appdaemon_bin: Path,
        ha_url: str,
        token: str,
        apps_source: Path | None = None,
        apps_yaml: str = "",
        port: int | None = None,
        time_zone: str = "UTC",
        secrets: str = "",
        mqtt_port: int | None = None,
        mqtt_client_id: str | None = None,
    ) -> None:
        super().__init__()
        self.config_dir = config_dir
        self.appdaemon_bin = appdaemon_bin
        self.ha_url = ha_url
        self.port = port if port is not None else free_port()
        self.time_zone = time_zone
        self._token = token
        self.mqtt_port = mqtt_port
        self.mqtt_client_id = (
            (mqtt_client_id or f"appdaemon-{uuid.uuid4().hex[:12]}") if mqtt_port else None
        )
        # Mark 0 is "from the very beginning"; see log_mark().
        self._marks: list[tuple[int, int]] = [(0, 0)]
        self._write_config(apps_source, apps_yaml, secrets)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mqtt_status_topic(self) -> str | None:
        """The MQTT plugin's birth and will topic (AppDaemon's default), None without MQTT."""
        return f"{self.mqtt_client_id}/status" if self.mqtt_client_id else None

    @property
    def apps_dir(self) -> Path:
        return self.config_dir / "apps"

    @property
    def main_log_path(self) -> Path:
        return self.config_dir / "main.log"

    @property
    def error_log_path(self) -> Path:
        return self.config_dir / "error.log"

    @property
    def console_log_path(self) -> Path:
        return self.config_dir / "appdaemon-console.log"

    def _write_config(self, apps_source: Path | None, apps_yaml: str, secrets: str) -> None:
        self.apps_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "appdaemon.yaml").write_text(
            APPDAEMON_YAML_TEMPLATE.format(
                time_zone=self.time_zone,
                ha_url=self.ha_url,
                port=self.port,
                ws_max_msg_size=WS_MAX_MSG_SIZE,
                mqtt_plugin=self._mqtt_plugin_yaml(),
                main_log=self.main_log_path,
                error_log=self.error_log_path,
                log_size=NO_ROTATION_BYTES,
            )
        )
        if secrets:
            (self.config_dir / "secrets.yaml").write_text(secrets)
        if apps_source is not None:
            copy_app_package(apps_source, self.apps_dir / apps_source.name)
        self.update_apps_yaml(apps_yaml)

    def _mqtt_plugin_yaml(self) -> str:
        if self.mqtt_port is None:
            return ""
        return MQTT_PLUGIN_TEMPLATE.format(
            namespace=MQTT_NAMESPACE, port=self.mqtt_port, client_id=self.mqtt_client_id
        )

    def update_apps_yaml(self, text: str) -> None:
        """Replaces apps.yaml; a running AppDaemon notices and reloads the apps by itself."""
        target = self.apps_dir / "apps.yaml"
        staging = self.apps_dir / ".apps.yaml.new"
        staging.write_text(text)
        staging.replace(target)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Launches AppDaemon and waits until it reports its apps initialised."""
        mark = self.launch()
        self.wait_for_log(APPS_READY_MARK, timeout=timeout, after=mark)
        self._raise_on_failure_marks(mark)

    def launch(self) -> int:
        """Launches AppDaemon without waiting; returns the log mark of the launch."""
        self._refuse_if_running()
        mark = self.log_mark()
        self._launch(
            [str(self.appdaemon_bin), "-c", str(self.config_dir)],
            self.console_log_path,
            {"HA_TOKEN": self._token},
        )
        return mark

    def main_log(self) -> str:
        return read_text(self.main_log_path)

    def error_log(self) -> str:
        return read_text(self.error_log_path)

    def log_mark(self) -> int:
        """An opaque mark of "now" in both logs, for `wait_for_log(..., after=mark)`."""
        self._marks.append((file_size(self.main_log_path), file_size(self.error_log_path)))
        return len(self._marks) - 1

    def wait_for_log(self, text: str, timeout: float, after: int = 0) -> None:
        """Waits until `text` shows in the main or error log past the mark `after`."""

        def seen() -> bool:
            return self.logged(text, after)

        try:
            wait_until(seen, f"{text!r} in AppDaemon's log", timeout=timeout, interval=0.05)
        except TimeoutError as error:
            raise AppDaemonError(f"{error}\n{self._log_tails(after)}") from None

    def logged(self, text: str, after: int = 0) -> bool:
        """Whether `text` shows in the main or error log past the mark `after`; raises when
        AppDaemon exited or its token was rejected."""
        self._raise_if_exited(after)
        main, errors = self._logs_since(after)
        return text in main or text in errors

    def _logs_since(self, mark: int) -> tuple[str, str]:
        main_offset, error_offset = self._marks[mark]
        return read_from(self.main_log_path, main_offset), read_from(
            self.error_log_path, error_offset
        )

    def _raise_on_failure_marks(self, mark: int) -> None:
        main, errors = self._logs_since(mark)
        for failure in FAILURE_MARKS:
            if failure in main or failure in errors:
                raise AppDaemonError(
                    f"AppDaemon logged {failure!r} while starting\n{self._log_tails(mark)}"
                )

    def _raise_if_exited(self, mark: int) -> None:
        returncode = self._exit_code()
        if returncode is not None:
            raise AppDaemonError(f"appdaemon exited with {returncode}\n{self._log_tails(mark)}")
        main, errors = self._logs_since(mark)
        if "Failed to authenticate" in main or "Failed to authenticate" in errors:
            # AppDaemon retries a rejected token every 5 s forever: fail now instead.
            raise AppDaemonError(f"AppDaemon's HA token was rejected\n{self._log_tails(mark)}")

    def _log_tails(self, mark: int) -> str:
        main, errors = self._logs_since(mark)
        console = read_text(self.console_log_path)
        return (
            f"--- main log ---\n{tail(main)}\n--- error log ---\n{tail(errors)}\n"
            f"--- console ---\n{tail(console)}"
        )


def copy_app_package(source: Path, destination: Path) -> None:
    """Copies an app package, leaving out bytecode caches."""
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
