"""A real OpenSSH drone host on 127.0.0.1, for integration and end-to-end tests and the demo.

``LoopbackDrone`` runs a private ``/usr/sbin/sshd`` (its own config, host key, port and log in a
work directory; the system sshd and port 22 are never touched) whose only authorized key is
forced to run the drone agent, exactly as on a real drone host::

    command="/usr/bin/env BORG_BASE_DIR=/x /abs/python /abs/agent serve",restrict ssh-ed25519 AAAA

The client side gets a key pair without passphrase and a known_hosts file holding the host key,
so ``target()`` is an ``SshTarget`` the coordinator can use as-is. Stopping and starting again
keeps the port, the host key and the client key: tests stop sshd to simulate a host that went
down. Stopping sshd does not end sessions already running (OpenSSH behaviour); the agent only
notices the coordinator leaving when its stdin closes.
"""

from __future__ import annotations

import os
import pwd
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from backup_coordinator.model import SshTarget
from devstack.waiting import free_port, port_open, wait_until

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")
HOST = "127.0.0.1"


def generate_ed25519_key(path: Path, comment: str) -> None:
    """An ed25519 key pair without passphrase at ``path`` and ``path.pub``."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def public_key_of(private_key: Path) -> str:
    """``ssh-ed25519 AAAA...`` without the comment."""
    algorithm, blob = Path(f"{private_key}.pub").read_text().split()[:2]
    return f"{algorithm} {blob}"


def forced_command(agent_command: Sequence[str], env: Mapping[str, str]) -> str:
    """The shell command line sshd runs (through the user's login shell) for the client key."""
    assignments = [f"{name}={value}" for name, value in env.items()]
    argv = ["/usr/bin/env", *assignments, *agent_command] if assignments else list(agent_command)
    return shlex.join(argv)


def authorized_keys_line(command: str, public_key: str) -> str:
    # sshd's command="..." only knows one escape: \" for a double quote.
    escaped = command.replace('"', '\\"')
    return f'command="{escaped}",restrict {public_key}\n'


def process_is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a daemon's parent may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


class LoopbackDrone:
    """A private sshd on 127.0.0.1 whose one client key is forced to run the drone agent."""

    def __init__(
        self,
        workdir: Path,
        agent_command: Sequence[str],
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        """``user``: the account the agent runs as (default: this process's). For another
        account, ``workdir`` and everything the agent touches must be reachable by it: sshd
        reads authorized_keys as that user."""
        self.workdir = Path(workdir)
        self.agent_command = list(agent_command)
        self.env = dict(env or {})
        self.host = HOST
        self.port = free_port()
        self.user = user or pwd.getpwuid(os.geteuid()).pw_name
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "client_ed25519_key"
        self.known_hosts = self.workdir / "known_hosts"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.config_path = self.workdir / "sshd_config"
        self.pid_file = self.workdir / "sshd.pid"
        self.log_path = self.workdir / "sshd.log"
        self._pid: int | None = None

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> LoopbackDrone:
        """Starts sshd (creating keys and config on first use) and waits until it accepts."""
        if self._pid is not None and process_is_running(self._pid):
            return self
        self._prepare_files()
        PRIVILEGE_SEPARATION_DIR.mkdir(parents=True, exist_ok=True)
        PRIVILEGE_SEPARATION_DIR.chmod(0o755)
        self.pid_file.unlink(missing_ok=True)
        started = subprocess.run(
            [SSHD, "-f", str(self.config_path), "-E", str(self.log_path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            raise RuntimeError(
                f"sshd did not start (exit {started.returncode}): {started.stderr.strip()}\n"
                f"{self.log_text()[-2000:]}"
            )
        self._pid = wait_until(self._pid_from_file, "sshd's pid file", timeout=10)
        wait_until(lambda: port_open(self.port), f"sshd listening on port {self.port}", timeout=10)
        return self

    def stop(self) -> None:
        """SIGTERM to the listener; waits until it is gone and the port is closed. Idempotent."""
        pid, self._pid = self._pid, None
        if pid is None or not process_is_running(pid):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        wait_until(lambda: not process_is_running(pid), f"sshd (pid {pid}) to exit", timeout=10)
        wait_until(lambda: not port_open(self.port), f"port {self.port} to close", timeout=10)

    @property
    def pid(self) -> int | None:
        return self._pid

    def __enter__(self) -> LoopbackDrone:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what clients need ----------------------------------------------------------------

    def target(self, connect_timeout: float = 5, keepalive_interval: float = 5) -> SshTarget:
        return SshTarget(
            host=self.host,
            port=self.port,
            user=self.user,
            client_key=str(self.client_key),
            known_hosts=str(self.known_hosts),
            connect_timeout=connect_timeout,
            keepalive_interval=keepalive_interval,
        )

    def wrong_known_hosts(self) -> Path:
        """A known_hosts file that names this host:port with some other host key."""
        other_key = self.workdir / "other_host_ed25519_key"
        if not other_key.exists():
            generate_ed25519_key(other_key, "some-other-host")
        path = self.workdir / "wrong_known_hosts"
        path.write_text(f"{self._known_hosts_pattern()} {public_key_of(other_key)}\n")
        return path

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- files ----------------------------------------------------------------------------

    def _prepare_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            generate_ed25519_key(self.host_key, "loopback-drone-host")
        if not self.client_key.exists():
            generate_ed25519_key(self.client_key, "backup-coordinator")
        command = forced_command(self.agent_command, self.env)
        self.authorized_keys.write_text(
            authorized_keys_line(command, public_key_of(self.client_key))
        )
        self.known_hosts.write_text(
            f"{self._known_hosts_pattern()} {public_key_of(self.host_key)}\n"
        )
        self.config_path.write_text(self._sshd_config())

    def _known_hosts_pattern(self) -> str:
        return f"[{self.host}]:{self.port}"

    def _sshd_config(self) -> str:
        settings = [
            ("Port", str(self.port)),
            ("ListenAddress", self.host),
            ("HostKey", str(self.host_key)),
            ("PidFile", str(self.pid_file)),
            ("AuthorizedKeysFile", str(self.authorized_keys)),
            ("PermitRootLogin", "forced-commands-only"),
            ("PubkeyAuthentication", "yes"),
            ("PasswordAuthentication", "no"),
            ("KbdInteractiveAuthentication", "no"),
            ("UsePAM", "no"),
            ("StrictModes", "no"),  # the keys live in a temp dir
            ("LogLevel", "VERBOSE"),
        ]
        return "".join(f"{key} {value}\n" for key, value in settings)

    def _pid_from_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
