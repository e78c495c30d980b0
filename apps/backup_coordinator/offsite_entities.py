"""The entities of an offsite target, in the style of a drone's (see ``entities``).

Per target ``T``: its controls (frequency, mode, sync now) and its sensors (state, last
offsite copy, next copy, bytes transferred in the last copy, problem, last error, what to do).
Its progress goes through the coordinator's progress sensor and events, with the repository
being copied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .entities import (
    FREQUENCY_HELPER,
    HINT_SENSOR,
    LAST_ERROR_SENSOR,
    MODE_HELPER,
    PROBLEM_SENSOR,
    HelperDescription,
    HelperSpec,
    Publication,
    Section,
    SensorDescription,
    byte_count,
    iso_or_unknown,
    render_helpers,
    render_sensors,
    size_sensor,
)
from .model import CopyOperation, CopySettings, CopyState


@dataclass(frozen=True)
class TargetSnapshot:
    """What the sensors of one offsite target show."""

    name: str
    state: CopyState
    repository: str | None  # being copied or waited for
    last_copy: datetime | None
    last_copy_data: Mapping[str, Any] | None
    next_copy: datetime | None
    waiting_for: Sequence[str]
    problems: Sequence[str]
    consecutive_failures: int
    last_error: str | None
    last_error_kind: str | None
    last_error_hint: str | None


TARGET_HELPERS: tuple[HelperDescription[CopySettings], ...] = (
    MODE_HELPER,
    FREQUENCY_HELPER,
    HelperDescription(
        domain="input_button",
        key="sync_now",
        label="sync now",
        icon="mdi:cloud-upload-outline",
        section=Section.ACTIONS,
        operation=CopyOperation.OFFSITE,
    ),
)


def _copied_bytes(snap: TargetSnapshot) -> int | None:
    return byte_count((snap.last_copy_data or {}).get("bytes"))


def _last_copy_attributes(snap: TargetSnapshot) -> dict[str, Any]:
    data = snap.last_copy_data or {}
    entries = data.get("repositories") or []
    return {
        "repositories": [entry.get("repository", "") for entry in entries],
        "files": data.get("files"),
        "verified": data.get("verified"),
    }


TARGET_SENSORS: tuple[SensorDescription[TargetSnapshot], ...] = (
    SensorDescription(
        domain="sensor",
        key="state",
        label="state",
        icon="mdi:cloud-sync-outline",
        device_class="enum",
        options=tuple(s.value for s in CopyState),
        value=lambda snap: snap.state.value,
        attributes=lambda snap: {
            "repository": snap.repository or "none",
            "waiting_for": list(snap.waiting_for),
        },
    ),
    SensorDescription(
        domain="sensor",
        key="last_offsite",
        label="last offsite copy",
        icon="mdi:cloud-check-outline",
        device_class="timestamp",
        value=lambda snap: iso_or_unknown(snap.last_copy),
        attributes=_last_copy_attributes,
    ),
    SensorDescription(
        domain="sensor",
        key="next_offsite",
        label="next offsite copy",
        icon="mdi:calendar-clock",
        device_class="timestamp",
        value=lambda snap: iso_or_unknown(snap.next_copy),
        attributes=lambda snap: {"waiting_for": list(snap.waiting_for)},
    ),
    size_sensor("last_copy_size", "last copy transferred", "mdi:cloud-upload", _copied_bytes),
    PROBLEM_SENSOR,
    LAST_ERROR_SENSOR,
    HINT_SENSOR,
)


def target_helpers(prefix: str, target: str, settings: CopySettings) -> list[HelperSpec]:
    """Every control of one offsite target, with the first values from apps.yaml."""
    return render_helpers(TARGET_HELPERS, prefix, target, settings)


def target_sensors(prefix: str, snap: TargetSnapshot) -> list[Publication]:
    return render_sensors(TARGET_SENSORS, prefix, snap.name, snap)
