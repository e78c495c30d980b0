"""Building the agent's job for one session: the only place that decides what a drone sends.

Deciding *what* to run lives in the scheduler and coordinator; this module only turns a drone's
configuration and its current settings into the job object of the wire protocol
(docs/protocol.md). A session of one step runs that agent operation; a session of several runs
the agent's ``sequence`` operation with the steps listed in the job. Each step contributes only
the fields it uses (its ``job_fields`` in the registry).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import DroneConfig
from .model import DroneSettings
from .offsite_config import OffsiteRepository, OffsiteTargetConfig
from .operations import STEPS
from .protocol import PROTOCOL_VERSION, SEQUENCE_OPERATION


def agent_operation(steps: tuple[str, ...]) -> str:
    """The agent operation word that runs ``steps`` in one session."""
    if not steps:
        raise ValueError("a session needs at least one step")
    return steps[0] if len(steps) == 1 else SEQUENCE_OPERATION


def build_job(
    drone: DroneConfig,
    settings: DroneSettings,
    steps: tuple[str, ...],
    *,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The job that runs ``steps`` on ``drone``; raises SettingError when a setting forbids it.

    ``extra`` holds what one request adds beyond the drone's configuration (a restore's archive,
    paths and destination); it wins over the steps' fields and the agent validates it like any.
    """
    agent_operation(steps)  # rejects an empty session
    job = _repository_fields(drone)
    for name in steps:
        step = STEPS.get(name)
        if step is None:
            raise ValueError(f"no job for agent operation {name!r}")
        job.update(step.job_fields(drone, settings))
    job.update(extra or {})
    if len(steps) > 1:
        job["steps"] = list(steps)
    return job


def build_copy_job(target: OffsiteTargetConfig, repository: OffsiteRepository) -> dict[str, Any]:
    """The ``offsite`` job that copies one repository of the target (the coordinator holds
    each repository only while its copy runs, so it sends them one at a time)."""
    job: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "repositories": [repository.path],
        "tool": target.tool.value,
        "destination": target.destination,
        "tool_options": list(target.tool_options),
        "keep_replaced": target.keep_replaced,
        "lock_wait": target.lock_wait,
    }
    if target.max_delete is not None:
        job["max_delete"] = target.max_delete
    return job


def hello_job() -> dict[str, Any]:
    return {"protocol": PROTOCOL_VERSION}


def list_job(drone: DroneConfig) -> dict[str, Any]:
    """The job of the agent's ``list`` (the drone's archives; no step of the registry: it
    changes nothing a drone shows or records)."""
    return _repository_fields(drone)


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
