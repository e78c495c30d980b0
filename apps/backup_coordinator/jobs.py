"""Building the agent's job for one operation: the only place that decides what a drone sends.

Deciding *what* to run lives in the scheduler and coordinator; this module only turns a drone's
configuration and its current settings into the job object of the wire protocol
(docs/protocol.md). Each operation gets only the fields it uses.
"""

from __future__ import annotations

from typing import Any

from .config import DroneConfig
from .model import DroneSettings, SettingError
from .protocol import PROTOCOL_VERSION


def build_job(drone: DroneConfig, settings: DroneSettings, agent_operation: str) -> dict[str, Any]:
    """The job for ``agent_operation`` (create, prune, stats, list, check) on ``drone``."""
    job = _repository_fields(drone)
    if agent_operation == "create":
        job.update(_create_fields(drone))
    elif agent_operation == "prune":
        job["keep"] = _keep_field(settings)
    elif agent_operation not in ("stats", "list", "check"):
        raise ValueError(f"no job for agent operation {agent_operation!r}")
    return job


def hello_job() -> dict[str, Any]:
    return {"protocol": PROTOCOL_VERSION}


def _repository_fields(drone: DroneConfig) -> dict[str, Any]:
    job: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "repository": drone.repository,
        "archive_prefix": drone.archive_prefix,
        "lock_wait": drone.lock_wait,
    }
    if drone.passphrase is not None:
        job["passphrase"] = drone.passphrase
    if drone.borg_rsh is not None:
        job["borg_rsh"] = drone.borg_rsh
    if drone.borg_remote_path is not None:
        job["borg_remote_path"] = drone.borg_remote_path
    return job


def _create_fields(drone: DroneConfig) -> dict[str, Any]:
    return {
        "paths": list(drone.paths),
        "exclude_patterns": list(drone.exclude_patterns),
        "exclude_if_present": list(drone.exclude_if_present),
        "one_file_system": drone.one_file_system,
        "compression": drone.compression,
    }


def _keep_field(settings: DroneSettings) -> dict[str, str | int]:
    if settings.keep.is_empty():
        # borg would delete every archive of the prefix: refuse rather than guess.
        raise SettingError("no keep rule is set: prune would delete every archive")
    return settings.keep.as_job()
