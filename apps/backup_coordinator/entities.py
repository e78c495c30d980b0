"""The entity catalogue: every Home Assistant entity the app owns, with ids, names and looks.

Controls are real HA helpers (``HelperSpec``): the app creates the missing ones and HA keeps
their values. Read-only values are sensors (``Publication``) computed here from the core's
state by pure functions, so what HA shows is decided in one place and tested without HA.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .model import (
    FREQUENCY_MINUTES_RANGE,
    GLOBAL_MODES,
    KEEP_COUNT_RANGE,
    KEEP_WITHIN_PATTERN,
    MIB,
    DroneSettings,
    DroneState,
    Mode,
    Operation,
)
from .operations import OPERATIONS

STATE_MAX_LENGTH = 255  # HA rejects longer states

# (setting key, label, icon) of the per-drone keep-count numbers HA steers.
KEEP_NUMBERS = (
    ("keep_weekly", "keep weekly", "mdi:calendar-week"),
    ("keep_monthly", "keep monthly", "mdi:calendar-month"),
    ("keep_yearly", "keep yearly", "mdi:calendar-star"),
)


SIZES = (
    ("total_size", "total size", "total_size"),
    ("compressed_size", "compressed size", "compressed_size"),
    ("deduplicated_size", "deduplicated size", "deduplicated_size"),
)


@dataclass(frozen=True)
class HelperSpec:
    """A control helper: created through HA's ``<domain>/create`` websocket command if missing."""

    domain: str  # input_number, input_button, input_select, input_text
    object_id: str
    name: str  # HA derives the entity id from the name's slug, so it must slug to object_id
    icon: str
    create_fields: Mapping[str, Any] = field(default_factory=dict)
    first_value: str | float | None = None  # set once after creation (no `initial`: HA keeps it)
    drone: str | None = None
    setting: str | None = None  # which setting this helper steers
    operation: Operation | None = None  # for buttons

    @property
    def entity_id(self) -> str:
        return f"{self.domain}.{self.object_id}"


@dataclass(frozen=True)
class Publication:
    """One sensor state as HA should show it."""

    entity_id: str
    state: str
    attributes: Mapping[str, Any]


def title(prefix: str) -> str:
    return prefix.replace("_", " ").capitalize()


def object_id(prefix: str, drone: str | None, suffix: str) -> str:
    return "_".join(part for part in (prefix, drone, suffix) if part)


def entity_name(prefix: str, drone: str | None, label: str) -> str:
    """``Backup nas keep weekly``: slugs to the object id, reads well in HA."""
    return " ".join(part for part in (title(prefix), drone, label) if part)


# --- controls ---------------------------------------------------------------------------------


def drone_helpers(prefix: str, drone: str, settings: DroneSettings) -> list[HelperSpec]:
    """Every control of one drone, with the first values from apps.yaml."""

    def spec(domain: str, suffix: str, label: str, icon: str, **kwargs: Any) -> HelperSpec:
        return HelperSpec(
            domain=domain,
            object_id=object_id(prefix, drone, suffix),
            name=entity_name(prefix, drone, label),
            icon=icon,
            drone=drone,
            **kwargs,
        )

    helpers = [
        spec(
            "input_number",
            "frequency",
            "frequency",
            "mdi:timer-sync-outline",
            create_fields=_number_fields(FREQUENCY_MINUTES_RANGE, "min"),
            first_value=settings.frequency_minutes,
            setting="frequency",
        ),
        spec(
            "input_select",
            "mode",
            "mode",
            "mdi:cog-outline",
            create_fields={"options": [m.value for m in Mode]},
            first_value=settings.mode.value,
            setting="mode",
        ),
        spec(
            "input_text",
            "keep_within",
            "keep within",
            "mdi:calendar-range",
            # HA checks the pattern in the UI only; the core validates again.
            create_fields={"min": 0, "max": 16, "pattern": f"^$|{KEEP_WITHIN_PATTERN.pattern}"},
            first_value=settings.keep.within or "",
            setting="keep_within",
        ),
    ]
    for setting, label, icon in KEEP_NUMBERS:
        count = getattr(settings.keep, setting.removeprefix("keep_"))
        helpers.append(
            spec(
                "input_number",
                setting,
                label,
                icon,
                create_fields=_number_fields(KEEP_COUNT_RANGE, None),
                first_value=count,
                setting=setting,
            )
        )
    for spec_ in OPERATIONS.values():
        if spec_.button is not None:
            button = spec_.button
            helpers.append(
                spec(
                    "input_button", button.key, button.label, button.icon, operation=spec_.operation
                )
            )
    return helpers


def coordinator_helpers(prefix: str) -> list[HelperSpec]:
    return [
        HelperSpec(
            domain="input_select",
            object_id=object_id(prefix, None, "coordinator_mode"),
            name=entity_name(prefix, None, "coordinator mode"),
            icon="mdi:play-pause",
            create_fields={"options": list(GLOBAL_MODES)},
            first_value="running",
            setting="global_mode",
        )
    ]


def _number_fields(bounds: tuple[int, int], unit: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"min": bounds[0], "max": bounds[1], "step": 1, "mode": "box"}
    if unit:
        fields["unit_of_measurement"] = unit
    return fields


# --- sensors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DroneSnapshot:
    """What the sensors of one drone show; built by the coordinator from its runtime state."""

    name: str
    state: DroneState
    operation: str | None
    last_backup: datetime | None
    last_prune: datetime | None
    last_archive: Mapping[str, Any] | None
    repository: Mapping[str, Any] | None
    archive_count: int | None
    next_backup: datetime | None
    problems: Sequence[str]
    consecutive_failures: int
    last_error: str | None
    last_error_kind: str | None
    last_error_hint: str | None

    @classmethod
    def empty(cls, name: str) -> DroneSnapshot:
        """A drone nothing is known about yet."""
        return cls(
            name, DroneState.IDLE, None, None, None, None, None, None, None, (), 0, None, None, None
        )


def drone_sensors(prefix: str, snap: DroneSnapshot) -> list[Publication]:
    def entity(domain: str, suffix: str) -> str:
        return f"{domain}.{object_id(prefix, snap.name, suffix)}"

    def name(label: str) -> str:
        return f"{snap.name} {label}"

    archive = snap.last_archive or {}
    sensors = [
        Publication(
            entity("sensor", "state"),
            snap.state.value,
            {
                "friendly_name": name("state"),
                "icon": "mdi:state-machine",
                "device_class": "enum",
                "options": [s.value for s in DroneState],
                "operation": snap.operation or "none",
            },
        ),
        Publication(
            entity("sensor", "last_backup"),
            iso_or_unknown(snap.last_backup),
            {
                "friendly_name": name("last backup"),
                "icon": "mdi:history",
                "device_class": "timestamp",
                "archive": archive.get("name", ""),
                "files": archive.get("nfiles"),
                "duration_s": archive.get("duration"),
                "archive_count": snap.archive_count,  # this drone's archives in the repository
            },
        ),
        Publication(
            entity("sensor", "last_prune"),
            iso_or_unknown(snap.last_prune),
            {
                "friendly_name": name("last prune"),
                "icon": "mdi:content-cut",
                "device_class": "timestamp",
            },
        ),
        Publication(
            entity("sensor", "next_backup"),
            iso_or_unknown(snap.next_backup),
            {
                "friendly_name": name("next backup"),
                "icon": "mdi:calendar-clock",
                "device_class": "timestamp",
            },
        ),
    ]
    repository = snap.repository or {}
    for suffix, label, key in SIZES:
        sensors.append(size_sensor(entity("sensor", suffix), name(label), repository.get(key)))
    sensors.append(
        Publication(
            entity("binary_sensor", "problem"),
            "on" if snap.problems else "off",
            {
                "friendly_name": name("problem"),
                "device_class": "problem",
                "reason": "; ".join(snap.problems) or "none",
                "consecutive_failures": snap.consecutive_failures,
            },
        )
    )
    sensors.append(
        Publication(
            entity("sensor", "last_error"),
            truncate(snap.last_error or "none"),
            {
                "friendly_name": name("last error"),
                "icon": "mdi:alert-circle-outline",
                "kind": snap.last_error_kind or "none",
                "hint": snap.last_error_hint or "",
            },
        )
    )
    return sensors


def size_sensor(entity_id: str, friendly_name: str, size: object) -> Publication:
    """A data_size sensor in MiB; the exact byte count is the ``bytes`` attribute."""
    if not isinstance(size, int) or isinstance(size, bool):
        state, exact = "unknown", None
    else:
        state, exact = f"{size / MIB:.2f}", size
    return Publication(
        entity_id,
        state,
        {
            "friendly_name": friendly_name,
            "icon": "mdi:harddisk",
            "device_class": "data_size",
            "unit_of_measurement": "MiB",
            "state_class": "measurement",
            "bytes": exact,
        },
    )


@dataclass(frozen=True)
class ProgressSnapshot:
    drone: str
    operation: str
    nfiles: int
    original_size: int
    compressed_size: int
    deduplicated_size: int
    percent: float | None
    speed: float | None  # bytes per second
    eta_seconds: float | None
    final: bool


def progress_sensor(prefix: str, progress: ProgressSnapshot | None) -> Publication:
    entity_id = f"sensor.{object_id(prefix, None, 'progress')}"
    base = {
        "friendly_name": f"{title(prefix)} progress",
        "icon": "mdi:progress-upload",
        "unit_of_measurement": "%",
    }
    if progress is None:
        return Publication(entity_id, "unknown", {**base, "drone": "none", "operation": "none"})
    percent = "unknown" if progress.percent is None else f"{progress.percent:.1f}"
    return Publication(
        entity_id,
        percent,
        {
            **base,
            "drone": progress.drone,
            "operation": progress.operation,
            "files": progress.nfiles,
            "original_size": progress.original_size,
            "compressed_size": progress.compressed_size,
            "deduplicated_size": progress.deduplicated_size,
            "speed_bytes_per_s": None if progress.speed is None else round(progress.speed),
            "eta_s": None if progress.eta_seconds is None else round(progress.eta_seconds),
        },
    )


def coordinator_sensors(
    prefix: str,
    running: Mapping[str, str],
    queue: Sequence[tuple[str, str]],
    round_robin: Sequence[str],
    failing: Sequence[str],
    global_mode: str,
) -> list[Publication]:
    """``running``: drone -> operation; ``queue``: (drone, operation) requested, oldest first."""
    active = ", ".join(f"{drone}: {op}" for drone, op in running.items()) or "idle"
    return [
        Publication(
            f"sensor.{object_id(prefix, None, 'active')}",
            truncate(active),
            {
                "friendly_name": f"{title(prefix)} active",
                "icon": "mdi:run",
                "drones": list(running),
                "operations": list(running.values()),
                "global_mode": global_mode,
            },
        ),
        Publication(
            f"sensor.{object_id(prefix, None, 'queue')}",
            str(len(queue)),
            {
                "friendly_name": f"{title(prefix)} queue",
                "icon": "mdi:tray-full",
                "requested": [f"{drone}: {op}" for drone, op in queue],
                "round_robin": list(round_robin),
            },
        ),
        Publication(
            f"sensor.{object_id(prefix, None, 'failing')}",
            str(len(failing)),
            {
                "friendly_name": f"{title(prefix)} failing drones",
                "icon": "mdi:alert",
                "drones": list(failing),
            },
        ),
    ]


def iso_or_unknown(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "unknown"


def truncate(text: str) -> str:
    return text if len(text) <= STATE_MAX_LENGTH else text[: STATE_MAX_LENGTH - 1] + "…"
