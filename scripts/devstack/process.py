"""A server process of the dev stack: its own process group, output in files, stopped by PID.

Home Assistant and AppDaemon are both run this way. Each runs as the leader of a new session,
so stopping it can kill whatever it left behind in its group without touching anything else.
Its console output is appended to a file, never a pipe, so it cannot block on a full buffer
and the log survives the process for error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

STOP_TIMEOUT = 30.0


class ServerProcess(ABC):
    """One managed server process; subclasses start it through `_launch` and wait for readiness.

    `stop` is safe to call twice (and when nothing was started); `restart` is `stop` then the
    subclass's `start`. Both have `async_` twins that run them in a worker thread.
    """

    display_name: ClassVar[str] = "server"
    error_type: ClassVar[type[Exception]] = RuntimeError
    stop_timeout: ClassVar[float] = STOP_TIMEOUT

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @abstractmethod
    def start(self) -> None:
        """Launches the server and waits until it is ready."""

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL the process group; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        stop_process_group(process, self.stop_timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    # From async tests use these: a blocked event loop cannot answer a server's websocket close
    # handshake (Home Assistant then waits ~10 s for every such connection before it exits).
    async def async_restart(self) -> None:
        await asyncio.to_thread(self.restart)

    async def async_stop(self) -> None:
        await asyncio.to_thread(self.stop)

    def _refuse_if_running(self) -> None:
        """Raises when this object's process still runs: call first thing in `start`."""
        if self._process is not None and self._process.poll() is None:
            raise self.error_type(f"{self.display_name} already runs as PID {self._process.pid}")

    def _launch(
        self, command: Sequence[str], log_path: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        """Starts `command` in a new process group; its stdout and stderr go to `log_path`.

        The environment is this one plus `extra_env`, with bytecode writing allowed (see
        `environment_writing_bytecode`).
        """
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment_writing_bytecode(extra_env),
                start_new_session=True,
            )

    def _exit_code(self) -> int | None:
        """None while the process runs, else its exit code; raises when none was started."""
        process = self._process
        if process is None:
            raise self.error_type(f"{self.display_name} is not running")
        return process.poll()


def stop_process_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM to the PID, wait up to `timeout`, then SIGKILL its whole process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    # The process leads its own group (start_new_session): kill leftovers of that group only.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)


def environment_writing_bytecode(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without PYTHONDONTWRITEBYTECODE, plus `extra`.

    The cached venvs are installed without .pyc files and this machine sets
    PYTHONDONTWRITEBYTECODE: hass would then compile every module on every start (~5.4 s to
    initialised instead of ~2.3 s). Letting the server write its bytecode makes later starts fast.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra or {})
    return env


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def read_from(path: Path, offset: int) -> str:
    """What `path` holds past byte `offset` ("" when it does not exist)."""
    if not path.exists():
        return ""
    with path.open("rb") as file:
        file.seek(offset)
        return file.read().decode(errors="replace")
