"""Local drones for end-to-end tests and the demo: a data folder, a borg repository and a
loopback sshd whose key forces the real agent, plus the apps.yaml that points the app at them.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .borg import AGENT_PATH, init_repository, list_archives
from .sshd import LoopbackDrone


@dataclass
class LocalDrone:
    name: str
    root: Path
    passphrase: str
    sshd: LoopbackDrone

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def repository(self) -> Path:
        # Named after the drone: an offsite copy puts each repository in a folder of its name.
        return self.root / f"{self.name}-repo"

    @property
    def restore_root(self) -> Path:
        return self.root / "restore"

    @property
    def borg_base_dir(self) -> Path:
        return self.root / "borg-base"

    def archives(self) -> list[str]:
        return list_archives(self.repository, self.passphrase, self.borg_base_dir)

    def stop(self) -> None:
        self.sshd.stop()


def make_local_drone(root: Path, name: str, data_bytes: int = 64 * 1024) -> LocalDrone:
    """Creates the drone's folders, sample data and repository, and starts its sshd."""
    drone_root = root / name
    drone_root.mkdir(parents=True)
    passphrase = secrets.token_urlsafe(16)
    policy = write_policy(drone_root)
    drone = LocalDrone(
        name=name,
        root=drone_root,
        passphrase=passphrase,
        sshd=LoopbackDrone(
            drone_root / "ssh",
            [sys.executable, str(AGENT_PATH), "serve", "--policy", str(policy)],
            env={"BORG_BASE_DIR": str(drone_root / "borg-base")},
        ),
    )
    write_sample_data(drone.data_dir, data_bytes)
    drone.borg_base_dir.mkdir()
    init_repository(drone.repository, passphrase, drone.borg_base_dir)
    drone.sshd.start()
    return drone


def offsite_target(
    host: LocalDrone, drones: list[LocalDrone], destination: Path, **settings: Any
) -> dict[str, Any]:
    """An offsite target run by ``host``'s agent, copying the drones' repositories (all on this
    machine, so the host sees them at their own paths) into the local folder ``destination``."""
    return {
        "host": host.sshd.host,
        "port": host.sshd.port,
        "user": host.sshd.user,
        "client_key": str(host.sshd.client_key),
        "known_hosts": str(host.sshd.known_hosts),
        "repositories": [str(drone.repository) for drone in drones],
        "destination": str(destination),
        "tool": "rclone",
        **settings,
    }


def write_policy(drone_root: Path) -> Path:
    """The host's policy: anything on this machine may be backed up and copied (the drones of
    a test share it), and restores go into the drone's own folder, never the machine's
    /var/lib/backup-drone/restore."""
    policy = drone_root / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "repositories": ["/"],
                "paths": ["/"],
                "restore_root": str(drone_root / "restore"),
                "offsite": {"repositories": ["/"], "destinations": ["/"]},
            }
        )
    )
    return policy


def write_sample_data(folder: Path, data_bytes: int) -> None:
    """A few text files and one incompressible file of ``data_bytes`` (progress needs bulk)."""
    (folder / "documents").mkdir(parents=True)
    for index in range(5):
        (folder / "documents" / f"note-{index}.txt").write_text(f"note {index}\n" * 100)
    (folder / "photos").mkdir()
    (folder / "photos" / "holiday.raw").write_bytes(os.urandom(data_bytes))
    (folder / "cache.tmp").write_text("excluded by pattern\n")


def app_config(
    drones: list[LocalDrone],
    state_file: Path,
    tick_seconds: float = 60,
    progress_interval: float = 1,
    drone_settings: dict[str, dict[str, Any]] | None = None,
    offsite: dict[str, dict[str, Any]] | None = None,
    **options: Any,
) -> tuple[str, str]:
    """(apps.yaml, secrets.yaml) texts: the app entry, passphrases only in secrets;
    ``offsite``: the offsite targets, as apps.yaml's ``offsite:`` section; ``options``: more
    top-level keys (``entities="mqtt"``)."""
    drone_settings = drone_settings or {}
    app: dict[str, Any] = {
        "module": "backup_coordinator.app",
        "class": "BackupCoordinator",
        **options,
        "state_file": str(state_file),
        "tick_seconds": tick_seconds,
        "progress_interval": progress_interval,
        "drones": {
            drone.name: {
                "host": drone.sshd.host,
                "port": drone.sshd.port,
                "user": drone.sshd.user,
                "client_key": str(drone.sshd.client_key),
                "known_hosts": str(drone.sshd.known_hosts),
                "repository": str(drone.repository),
                "passphrase": f"!secret {drone.name}_passphrase",
                "paths": [str(drone.data_dir)],
                "exclude_patterns": ["*.tmp"],
                **drone_settings.get(drone.name, {}),
            }
            for drone in drones
        },
    }
    if offsite:
        app["offsite"] = offsite
    text = yaml.safe_dump({"backup_coordinator": app}, sort_keys=False)
    # yaml.safe_dump quotes the tag as a string; make it a real !secret tag.
    text = text.replace("'!secret ", "!secret ").replace("_passphrase'", "_passphrase")
    secrets_text = yaml.safe_dump({f"{d.name}_passphrase": d.passphrase for d in drones})
    return text, secrets_text
