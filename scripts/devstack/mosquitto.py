"""A real MQTT broker (Debian's mosquitto 2.0) on 127.0.0.1 for end-to-end tests.

It runs as an ordinary process with its own configuration, never as the system service: one
listener on a free loopback port, anonymous clients allowed, its log and its persistence
database in its own directory. With persistence, retained messages survive `restart` (mosquitto
writes its database when it gets SIGTERM). Started as root, mosquitto would switch to the
`mosquitto` user, which cannot write the test's directory: the config names the current user,
so it stays who started it.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.process import ServerProcess, file_size, read_from, read_text, tail
from devstack.waiting import free_port, port_open, wait_until

START_TIMEOUT = 15.0
DEFAULT_MOSQUITTO = Path("/usr/sbin/mosquitto")
CONFIG_NAME = "mosquitto.conf"
LOG_NAME = "mosquitto.log"
CONSOLE_LOG_NAME = "mosquitto-console.log"

CONFIG_TEMPLATE = """\
user {user}
listener {port} 127.0.0.1
allow_anonymous true
persistence {persistence}
persistence_location {data_dir}
log_dest file {log}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


class MosquittoError(RuntimeError):
    """The broker did not start."""


class Mosquitto(ServerProcess):
    """One mosquitto process with its own directory and port; `running()` starts and stops it."""

    display_name = "mosquitto"
    error_type = MosquittoError
    stop_timeout = 10.0

    def __init__(
        self,
        data_dir: Path,
        mosquitto_bin: Path = DEFAULT_MOSQUITTO,
        port: int | None = None,
        *,
        persistence: bool = True,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.mosquitto_bin = mosquitto_bin
        self.port = port if port is not None else free_port()
        self.persistence = persistence
        self._log_offset_at_start = 0

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def console_log_path(self) -> Path:
        return self.data_dir / CONSOLE_LOG_NAME

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            CONFIG_TEMPLATE.format(
                user=getpass.getuser(),
                port=self.port,
                persistence="true" if self.persistence else "false",
                data_dir=self.data_dir,
                log=self.log_path,
            )
        )

    def start(self) -> None:
        """Launches mosquitto (writing its config first) and waits until it accepts clients."""
        self._refuse_if_running()
        self.write_config()
        self._log_offset_at_start = file_size(self.log_path)
        self._launch([str(self.mosquitto_bin), "-c", str(self.config_path)], self.console_log_path)
        wait_until(self._accepts_clients, f"mosquitto on port {self.port}", timeout=START_TIMEOUT)

    @contextmanager
    def running(self) -> Iterator[Mosquitto]:
        """Starts the broker; stops it by PID on the way out."""
        try:
            self.start()
            yield self
        finally:
            self.stop()

    def log_text(self) -> str:
        """The broker's log (all starts in this directory)."""
        return read_text(self.log_path)

    def _accepts_clients(self) -> bool:
        returncode = self._exit_code()
        if returncode is not None:
            log = read_from(self.log_path, self._log_offset_at_start)
            console = read_text(self.console_log_path)
            raise MosquittoError(
                f"mosquitto exited with {returncode}; log tail:\n{tail(log)}\n"
                f"console:\n{tail(console)}"
            )
        return port_open(self.port, self.host)
