"""A drone host for the transport's integration tests: real sshd, real agent, real borg repo."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_coordinator.protocol import PROTOCOL_VERSION
from devstack.borg import AGENT_PATH, borg_env, init_repository, list_archives
from devstack.sshd import LoopbackDrone

PASSPHRASE = "loopback drone passphrase"
ARCHIVE_PREFIX = "loopback"


@dataclass
class DroneHost:
    """One loopback drone: its sshd, its borg repository and the data it backs up."""

    sshd: LoopbackDrone
    repository: Path
    base_dir: Path
    data: Path

    def job(self, **changes: Any) -> dict[str, Any]:
        job: dict[str, Any] = {
            "protocol": PROTOCOL_VERSION,
            "repository": str(self.repository),
            "passphrase": PASSPHRASE,
            "archive_prefix": ARCHIVE_PREFIX,
            "paths": [str(self.data)],
            "compression": "lz4",
            "lock_wait": 1,
        }
        job.update(changes)
        return job

    def archives(self) -> list[str]:
        return list_archives(self.repository, PASSPHRASE, self.base_dir)

    def lock_is_free(self) -> bool:
        """True when borg can take the repository lock at once."""
        env = {**os.environ, **borg_env(self.base_dir, PASSPHRASE)}
        done = subprocess.run(
            ["borg", "with-lock", "--lock-wait", "0", str(self.repository), "true"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        return done.returncode == 0

    def borg_processes(self) -> list[int]:
        """PIDs of borg processes working on this host's repository."""
        return processes_mentioning(str(self.repository), "borg")

    def agent_processes(self) -> list[int]:
        """PIDs of agents started by this host's sshd (recognised by their BORG_BASE_DIR)."""
        marker = f"BORG_BASE_DIR={self.base_dir}".encode()
        return [
            pid
            for pid in processes_mentioning(str(AGENT_PATH), "python")
            if marker in environment_of(pid)
        ]


def session_processes(listener_pid: int) -> list[int]:
    """The sshd processes serving the sessions of the listener ``listener_pid``."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        name, _, rest = stat.partition("(")[2].rpartition(")")
        parents[int(proc.name)] = int(rest.split()[1])
        names[int(proc.name)] = name
    found: list[int] = []
    frontier = [listener_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(pid for pid in children if names[pid] == "sshd")
        frontier.extend(pid for pid in children if names[pid] == "sshd")
    return found


def processes_mentioning(text: str, program: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode(errors="replace") for word in argv if word]
        if any(program in Path(word).name for word in words[:2]) and any(
            text in word for word in words
        ):
            pids.append(int(proc.name))
    return pids


def environment_of(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def write_tiny_data(data: Path) -> None:
    (data / "docs").mkdir(parents=True)
    (data / "docs" / "notes.txt").write_text("remember the milk\n")
    (data / "docs" / "todo.txt").write_text("back up everything\n")


def write_random_data(data: Path, megabytes: int) -> None:
    (data / "big").mkdir(parents=True, exist_ok=True)
    for index in range(megabytes):
        (data / "big" / f"random-{index}.bin").write_bytes(os.urandom(1024 * 1024))


def agent_command() -> list[str]:
    return [sys.executable, str(AGENT_PATH), "serve"]


@contextmanager
def started_drone_host(workdir: Path, command: list[str] | None = None) -> Iterator[DroneHost]:
    """A started loopback drone with an initialised repository and tiny data; stops sshd."""
    base_dir = workdir / "borg-base"
    repository = workdir / "repo"
    data = workdir / "data"
    write_tiny_data(data)
    init_repository(repository, PASSPHRASE, base_dir)
    sshd = LoopbackDrone(
        workdir / "sshd",
        command or agent_command(),
        env={"BORG_BASE_DIR": str(base_dir)},
    )
    with sshd:
        yield DroneHost(sshd=sshd, repository=repository, base_dir=base_dir, data=data)
