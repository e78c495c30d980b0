"""The entity catalogue: every Home Assistant entity the app owns, described once as data.

Each entity is a frozen description, as Home Assistant's own integrations describe theirs: what
it is (domain, key, label, icon, device class, unit) and functions that read its value from the
core's state. Controls are real HA helpers (``HelperDescription`` rendered as ``HelperSpec``):
the app creates the missing ones and HA keeps their values. Read-only values are sensors
(``SensorDescription`` rendered as ``Publication``). A new entity is a row in one of the tables
below; the renderers, the app and the dashboard pick it up from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, Generic, Protocol, TypeVar

from .config import EntityBackend
from .model import (
    FREQUENCY_MINUTES_RANGE,
    GLOBAL_MODES,
    KEEP_COUNT_RANGE,
    KEEP_WITHIN_PATTERN,
    MIB,
    AnyOperation,
    DroneSettings,
    DroneState,
    Mode,
)
from .operations import OPERATIONS, OperationSpec
from .store import DEFAULT_GLOBAL_MODE

STATE_MAX_LENGTH = 255  # HA rejects longer states
# What a dashboard row has room for beside its name, on a phone: a longer state squeezes the
# name away and runs off the card.
ROW_STATE_LENGTH = 28

# What a description reads its values from. Contravariant: a description that reads a protocol
# (``Scheduled``, ``Troubled``) serves every source that has it (a drone's, a target's).
Source = TypeVar("Source", contravariant=True)


class Section(Enum):
    """Where a drone's entity sits on its dashboard, in order; the value is the section's
    heading. The status at the top has none, then the progress of what runs; the problem's
    texts are shown wrapped under it (they can be long), then come the buttons, the settings,
    the repository, the diagnostics."""

    OVERVIEW = ""
    PROGRESS = "Progress"
    PROBLEM = "Problem"
    ACTIONS = "Actions"
    SETTINGS = "Settings"
    RETENTION = "Retention"
    REPOSITORY = "Repository"
    DIAGNOSTICS = "Diagnostics"


class EntityCategory(StrEnum):
    """Home Assistant's entity categories; None is a primary entity. A backend with entity
    registry entries (MQTT discovery) publishes it; helpers and set_state sensors have none."""

    CONFIG = "config"  # steers how the drone is backed up
    DIAGNOSTIC = "diagnostic"  # for finding out what went wrong


# The MQTT discovery platform that stands in for each helper domain; sensors keep theirs.
MQTT_PLATFORMS = {
    "input_number": "number",
    "input_select": "select",
    "input_text": "text",
    "input_button": "button",
}


def platform(domain: str, backend: EntityBackend) -> str:
    """The entity id's domain under ``backend``: ``input_button`` is a ``button`` over MQTT."""
    return MQTT_PLATFORMS.get(domain, domain) if backend is EntityBackend.MQTT else domain


@dataclass(frozen=True, kw_only=True)
class EntityDescription:
    """What every entity has: ``<domain>.<prefix>_<drone>_<key>``, a label for people."""

    domain: str
    key: str  # the object id's suffix
    label: str  # the name's suffix, lower case
    section: Section = Section.OVERVIEW
    category: EntityCategory | None = None

    def entity_id(
        self, prefix: str, drone: str | None, backend: EntityBackend = EntityBackend.HELPERS
    ) -> str:
        return f"{platform(self.domain, backend)}.{object_id(prefix, drone, self.key)}"


@dataclass(frozen=True, kw_only=True)
class HelperDescription(EntityDescription, Generic[Source]):
    """A control helper: steers one setting or requests one operation."""

    icon: str
    create_fields: Mapping[str, Any] = field(default_factory=dict)  # for ``<domain>/create``
    setting: str | None = None
    operation: AnyOperation | None = None
    first_value: Callable[[Source], str | float] | None = None  # set once after creation


@dataclass(frozen=True, kw_only=True)
class SensorDescription(EntityDescription, Generic[Source]):
    """A read-only value: its state and attributes are functions of the source."""

    value: Callable[[Source], str]
    attributes: Callable[[Source], Mapping[str, Any]] = lambda _source: {}
    icon: str | None = None
    device_class: str | None = None
    unit: str | None = None
    state_class: str | None = None
    options: tuple[str, ...] = ()  # the possible states of an enum sensor
    # For a backend whose entities HA can convert (MQTT discovery): the state in ``native_unit``
    # (sizes in bytes, so HA shows the unit the user picks). None: ``value`` and ``unit``.
    native_value: Callable[[Source], str] | None = None
    native_unit: str | None = None
    display_precision: int | None = None  # decimals HA shows in ``unit`` (MQTT: set in HA)


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
    operation: AnyOperation | None = None  # for buttons

    @property
    def entity_id(self) -> str:
        return f"{self.domain}.{self.object_id}"


@dataclass(frozen=True)
class Publication:
    """One sensor state as HA should show it; ``native_state`` in the description's native
    unit, for a backend that lets HA convert it (None: ``state`` is native)."""

    entity_id: str
    state: str
    attributes: Mapping[str, Any]
    native_state: str | None = None


def title(prefix: str) -> str:
    return prefix.replace("_", " ").capitalize()


def object_id(prefix: str, drone: str | None, suffix: str) -> str:
    return "_".join(part for part in (prefix, drone, suffix) if part)


def entity_name(prefix: str, drone: str | None, label: str) -> str:
    """``Borg nas keep weekly``: every entity's name, helpers' and sensors' alike. A helper's
    must slug to its object id (HA derives the entity id from it), so the label reads like the
    key."""
    return " ".join(part for part in (title(prefix), drone, label) if part)


# --- what the sensors read --------------------------------------------------------------------


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
    last_check: datetime | None = None
    last_check_data: Mapping[str, Any] | None = None
    last_drill: datetime | None = None
    last_drill_data: Mapping[str, Any] | None = None
    recent_archives: Sequence[str] = ()
    progress: ProgressSnapshot | None = None  # the running step's; None when idle
    agent_version: str | None = None  # as the drone's last agent session said hello
    borg_version: str | None = None

    @classmethod
    def empty(cls, name: str) -> DroneSnapshot:
        """A drone nothing is known about yet."""
        return cls(
            name, DroneState.IDLE, None, None, None, None, None, None, None, (), 0, None, None, None
        )


@dataclass(frozen=True)
class ProgressSnapshot:
    """How far the running step of a drone (or an offsite target's copy) is."""

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
    repository: str | None = None  # an offsite copy's repository (its sizes are bytes sent)
    phase: str | None = None  # an offsite copy's phase: copy, verify
    path: str = ""  # the file being read (a create's), as the archive stores it
    expected_size: int | None = None  # what the run is estimated to read in all
    expected_files: int | None = None

    @classmethod
    def unknown(cls, drone: str, operation: str) -> ProgressSnapshot:
        """A step running that reports no progress (or has not yet)."""
        return cls(drone, operation, 0, 0, 0, 0, None, None, None, False)


@dataclass(frozen=True)
class CoordinatorSnapshot:
    """``running``: drone -> operation; ``queue``: (drone, operation) requested, oldest first."""

    running: Mapping[str, str]
    queue: Sequence[tuple[str, str]]
    round_robin: Sequence[str]
    failing: Sequence[str]
    global_mode: str


class Scheduled(Protocol):
    """Settings with a mode and a frequency (a drone's, an offsite target's)."""

    @property
    def mode(self) -> Mode: ...
    @property
    def frequency_minutes(self) -> int: ...


class Troubled(Protocol):
    """A snapshot with problems and a last error (a drone's, an offsite target's)."""

    @property
    def problems(self) -> Sequence[str]: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def last_error_kind(self) -> str | None: ...
    @property
    def last_error_hint(self) -> str | None: ...


# --- the controls -----------------------------------------------------------------------------


def number_fields(bounds: tuple[int, int], unit: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"min": bounds[0], "max": bounds[1], "step": 1, "mode": "box"}
    if unit:
        fields["unit_of_measurement"] = unit
    return fields


def _keep_count(name: str, icon: str) -> HelperDescription[DroneSettings]:
    """One of borg prune's ``--keep-<name>`` counts."""

    def first_value(settings: DroneSettings) -> int:
        return int(getattr(settings.keep, name))

    return HelperDescription(
        domain="input_number",
        key=f"keep_{name}",
        label=f"keep {name}",
        icon=icon,
        section=Section.RETENTION,
        category=EntityCategory.CONFIG,
        create_fields=number_fields(KEEP_COUNT_RANGE, None),
        setting=f"keep_{name}",
        first_value=first_value,
    )


FREQUENCY_HELPER: HelperDescription[Scheduled] = HelperDescription(
    domain="input_number",
    key="frequency",
    label="frequency",
    icon="mdi:timer-sync-outline",
    section=Section.SETTINGS,
    category=EntityCategory.CONFIG,
    create_fields=number_fields(FREQUENCY_MINUTES_RANGE, "min"),
    setting="frequency",
    first_value=lambda settings: settings.frequency_minutes,
)
MODE_HELPER: HelperDescription[Scheduled] = HelperDescription(
    domain="input_select",
    key="mode",
    label="mode",
    icon="mdi:cog-outline",
    section=Section.SETTINGS,
    category=EntityCategory.CONFIG,
    create_fields={"options": [m.value for m in Mode]},
    setting="mode",
    first_value=lambda settings: settings.mode.value,
)

# A drone's settings: every rule prune applies is shown and can be changed.
DRONE_HELPERS: tuple[HelperDescription[DroneSettings], ...] = (
    MODE_HELPER,
    FREQUENCY_HELPER,
    HelperDescription(
        domain="input_text",
        key="keep_within",
        label="keep within",
        icon="mdi:calendar-range",
        section=Section.RETENTION,
        category=EntityCategory.CONFIG,
        # HA checks the pattern in the UI only; the core validates again.
        create_fields={"min": 0, "max": 16, "pattern": f"^$|{KEEP_WITHIN_PATTERN.pattern}"},
        setting="keep_within",
        first_value=lambda settings: settings.keep.within or "",
    ),
    _keep_count("hourly", "mdi:clock-outline"),
    _keep_count("daily", "mdi:calendar-today"),
    _keep_count("weekly", "mdi:calendar-week"),
    _keep_count("monthly", "mdi:calendar-month"),
    _keep_count("yearly", "mdi:calendar-star"),
)


def button_descriptions(
    operations: Iterable[OperationSpec],
) -> tuple[HelperDescription[DroneSettings], ...]:
    """An ``input_button`` for every operation whose registry row has a button."""
    return tuple(
        HelperDescription(
            domain="input_button",
            key=spec.button.key,
            label=spec.button.label,
            icon=spec.button.icon,
            section=Section.ACTIONS,
            operation=spec.operation,
        )
        for spec in operations
        if spec.button is not None
    )


DRONE_BUTTONS = button_descriptions(OPERATIONS.values())

# Their source is the coordinator's global mode.
COORDINATOR_HELPERS: tuple[HelperDescription[str], ...] = (
    HelperDescription(
        domain="input_select",
        key="coordinator_mode",
        label="coordinator mode",
        icon="mdi:play-pause",
        category=EntityCategory.CONFIG,
        create_fields={"options": list(GLOBAL_MODES)},
        setting="global_mode",
        first_value=lambda global_mode: global_mode,
    ),
)


def render_helpers(
    table: Iterable[HelperDescription[Source]], prefix: str, drone: str | None, source: Source
) -> list[HelperSpec]:
    """The helpers of one drone (or of the coordinator, ``drone`` None), first values read
    from ``source``."""
    return [
        HelperSpec(
            domain=description.domain,
            object_id=object_id(prefix, drone, description.key),
            name=entity_name(prefix, drone, description.label),
            icon=description.icon,
            create_fields=dict(description.create_fields),
            first_value=None
            if description.first_value is None
            else description.first_value(source),
            drone=drone,
            setting=description.setting,
            operation=description.operation,
        )
        for description in table
    ]


def drone_helpers(prefix: str, drone: str, settings: DroneSettings) -> list[HelperSpec]:
    """Every control of one drone, with the first values from apps.yaml."""
    return render_helpers((*DRONE_HELPERS, *DRONE_BUTTONS), prefix, drone, settings)


def coordinator_helpers(prefix: str) -> list[HelperSpec]:
    return render_helpers(COORDINATOR_HELPERS, prefix, None, DEFAULT_GLOBAL_MODE)


# --- the sensors ------------------------------------------------------------------------------


def _timestamp(
    key: str,
    label: str,
    icon: str,
    moment: Callable[[DroneSnapshot], datetime | None],
    section: Section = Section.OVERVIEW,
) -> SensorDescription[DroneSnapshot]:
    return SensorDescription(
        domain="sensor",
        key=key,
        label=label,
        icon=icon,
        section=section,
        device_class="timestamp",
        value=lambda snap: iso_or_unknown(moment(snap)),
    )


def _last_backup_attributes(snap: DroneSnapshot) -> dict[str, Any]:
    archive = snap.last_archive or {}
    return {
        "archive": archive.get("name", ""),
        "files": archive.get("nfiles"),
        "duration_s": archive.get("duration"),
        "archive_count": snap.archive_count,  # this drone's archives in the repository
        "recent_archives": list(snap.recent_archives),  # newest first, a few
    }


def _last_drill_attributes(snap: DroneSnapshot) -> dict[str, Any]:
    data = snap.last_drill_data or {}
    return {
        "archive": data.get("archive") or "",
        "files": data.get("files_verified"),
        "bytes": data.get("bytes_verified"),
        "skipped_changed": data.get("skipped_changed"),
        "mismatches": data.get("mismatch_count"),
    }


def _last_check_attributes(snap: DroneSnapshot) -> dict[str, Any]:
    data = snap.last_check_data or {}
    return {
        "findings": data.get("finding_count"),
        "verify_data": data.get("verify_data"),
        "partial": data.get("partial"),
    }


def byte_count(size: object) -> int | None:
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def size_sensor(
    key: str, label: str, icon: str, size: Callable[[Source], int | None]
) -> SensorDescription[Source]:
    """A data_size sensor of the repository section in MiB; the exact byte count is the
    ``bytes`` attribute and the native value (HA converts it to the unit the user picks)."""

    def state(source: Source) -> str:
        exact = size(source)
        return "unknown" if exact is None else f"{exact / MIB:.2f}"

    def native(source: Source) -> str:
        exact = size(source)
        return "unknown" if exact is None else str(exact)

    return SensorDescription(
        domain="sensor",
        key=key,
        label=label,
        icon=icon,
        device_class="data_size",
        unit="MiB",
        state_class="measurement",
        section=Section.REPOSITORY,
        value=state,
        attributes=lambda source: {"bytes": size(source)},
        native_value=native,
        native_unit="B",
        display_precision=2,
    )


def _repository_size(key: str, label: str) -> SensorDescription[DroneSnapshot]:
    """One of the repository's totals (borg's cache.stats)."""
    return size_sensor(
        key, label, "mdi:harddisk", lambda snap: byte_count((snap.repository or {}).get(key))
    )


PROBLEM_SENSOR: SensorDescription[Troubled] = SensorDescription(
    domain="binary_sensor",
    key="problem",
    label="problem",
    device_class="problem",
    value=lambda snap: "on" if snap.problems else "off",
    attributes=lambda snap: {
        "reason": "; ".join(snap.problems) or "none",
        "consecutive_failures": snap.consecutive_failures,
    },
)
LAST_ERROR_SENSOR: SensorDescription[Troubled] = SensorDescription(
    domain="sensor",
    key="last_error",
    label="last error",
    icon="mdi:alert-circle-outline",
    section=Section.PROBLEM,
    category=EntityCategory.DIAGNOSTIC,
    value=lambda snap: snap.last_error or "none",
    attributes=lambda snap: {
        "kind": snap.last_error_kind or "none",
        "hint": snap.last_error_hint or "",  # kept for automations; the hint sensor shows it
    },
)
# What to do about the last error, as a sensor of its own so a card can show it.
HINT_SENSOR: SensorDescription[Troubled] = SensorDescription(
    domain="sensor",
    key="hint",
    label="what to do",
    icon="mdi:lightbulb-on-outline",
    section=Section.PROBLEM,
    category=EntityCategory.DIAGNOSTIC,
    value=lambda snap: snap.last_error_hint or "none",
)


def _version(
    key: str, label: str, icon: str, version: Callable[[DroneSnapshot], str | None]
) -> SensorDescription[DroneSnapshot]:
    """A version the drone's agent reported in its last session's hello."""
    return SensorDescription(
        domain="sensor",
        key=key,
        label=label,
        icon=icon,
        section=Section.DIAGNOSTICS,
        category=EntityCategory.DIAGNOSTIC,
        value=lambda snap: version(snap) or "unknown",
    )


def _live(snap: DroneSnapshot, read: Callable[[ProgressSnapshot], float | None]) -> float | None:
    """A figure of the drone's running step, None when idle or not known."""
    return None if snap.progress is None else read(snap.progress)


def _current_path(snap: DroneSnapshot) -> str:
    """The file the drone's running step reads; empty when idle or not known."""
    return snap.progress.path if snap.progress else ""


def _number_or_unknown(value: float | None, decimals: int) -> str:
    return "unknown" if value is None else f"{value:.{decimals}f}"


# A drone's own progress, shown on its card whatever it is doing ("unknown" when idle).
DRONE_PROGRESS_SENSORS: tuple[SensorDescription[DroneSnapshot], ...] = (
    SensorDescription(
        domain="sensor",
        key="progress",
        label="progress",
        icon="mdi:progress-upload",
        unit="%",
        section=Section.PROGRESS,
        value=lambda snap: percent_or_unknown(snap.progress),
        attributes=lambda snap: {
            "operation": snap.progress.operation if snap.progress else "none",
            "files": _live(snap, lambda p: p.nfiles),
            "expected_files": _live(snap, lambda p: p.expected_files),
            "original_size": _live(snap, lambda p: p.original_size),
            "expected_size": _live(snap, lambda p: p.expected_size),
        },
    ),
    SensorDescription(
        domain="sensor",
        key="speed",
        label="speed",
        icon="mdi:speedometer",
        device_class="data_rate",
        unit="MB/s",
        section=Section.PROGRESS,
        value=lambda snap: _number_or_unknown(_live(snap, lambda p: p.speed and p.speed / 1e6), 2),
        native_value=lambda snap: _number_or_unknown(_live(snap, lambda p: p.speed), 0),
        native_unit="B/s",
        display_precision=1,
    ),
    SensorDescription(
        domain="sensor",
        key="eta",
        label="time left",
        icon="mdi:timer-sand",
        device_class="duration",
        unit="min",
        section=Section.PROGRESS,
        value=lambda snap: _number_or_unknown(
            _live(snap, lambda p: None if p.eta_seconds is None else p.eta_seconds / 60), 1
        ),
        native_value=lambda snap: _number_or_unknown(_live(snap, lambda p: p.eta_seconds), 0),
        native_unit="s",
    ),
    SensorDescription(
        domain="sensor",
        key="current_file",
        label="current file",
        icon="mdi:file-arrow-up-down-outline",
        section=Section.PROGRESS,
        value=lambda snap: path_tail(_current_path(snap)) or "unknown",
        attributes=lambda snap: {"path": path} if (path := _current_path(snap)) else {},
    ),
)

DRONE_SENSORS: tuple[SensorDescription[DroneSnapshot], ...] = (
    SensorDescription(
        domain="sensor",
        key="state",
        label="state",
        icon="mdi:state-machine",
        device_class="enum",
        options=tuple(s.value for s in DroneState),
        value=lambda snap: snap.state.value,
        attributes=lambda snap: {"operation": snap.operation or "none"},
    ),
    SensorDescription(
        domain="sensor",
        key="last_backup",
        label="last backup",
        icon="mdi:history",
        device_class="timestamp",
        value=lambda snap: iso_or_unknown(snap.last_backup),
        attributes=_last_backup_attributes,
    ),
    _timestamp(
        "last_prune",
        "last prune",
        "mdi:content-cut",
        lambda snap: snap.last_prune,
        Section.REPOSITORY,
    ),
    SensorDescription(
        domain="sensor",
        key="last_verified_restore",
        label="last verified restore",
        icon="mdi:file-check-outline",
        section=Section.REPOSITORY,
        device_class="timestamp",
        value=lambda snap: iso_or_unknown(snap.last_drill),
        attributes=_last_drill_attributes,
    ),
    SensorDescription(
        domain="sensor",
        key="last_check",
        label="last check",
        icon="mdi:shield-check-outline",
        section=Section.REPOSITORY,
        device_class="timestamp",
        value=lambda snap: iso_or_unknown(snap.last_check),
        attributes=_last_check_attributes,
    ),
    _timestamp("next_backup", "next backup", "mdi:calendar-clock", lambda snap: snap.next_backup),
    _repository_size("total_size", "total size"),
    _repository_size("compressed_size", "compressed size"),
    _repository_size("deduplicated_size", "deduplicated size"),
    PROBLEM_SENSOR,
    LAST_ERROR_SENSOR,
    *DRONE_PROGRESS_SENSORS,
    HINT_SENSOR,
    _version("agent_version", "agent version", "mdi:tag-outline", lambda s: s.agent_version),
    _version(
        "borg_version", "borg version", "mdi:package-variant-closed", lambda s: s.borg_version
    ),
)


def percent_or_unknown(progress: ProgressSnapshot | None) -> str:
    if progress is None or progress.percent is None:
        return "unknown"
    return f"{progress.percent:.1f}"


def readable_speed(speed: float | None) -> str | None:
    return None if speed is None else f"{speed / 1e6:.1f} MB/s"


def readable_duration(seconds: float | None) -> str | None:
    """``1 h 05 min``, ``3 min 12 s``, ``45 s``."""
    if seconds is None:
        return None
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _progress_attributes(progress: ProgressSnapshot | None) -> dict[str, Any]:
    """The coordinator's progress: what runs, how far, how fast, in words people read."""
    if progress is None:
        return {"drone": "none", "operation": "none"}
    return {
        "unit_of_measurement": "%",  # only while something runs: "idle" is no percent
        "drone": progress.drone,
        "operation": progress.operation,
        "files": progress.nfiles,
        "original_size": progress.original_size,
        "compressed_size": progress.compressed_size,
        "deduplicated_size": progress.deduplicated_size,
        "expected_size": progress.expected_size,
        "expected_files": progress.expected_files,
        "speed": readable_speed(progress.speed),
        "time_left": readable_duration(progress.eta_seconds),
        "current_file": progress.path,
        **({"repository": progress.repository} if progress.repository else {}),
        **({"phase": progress.phase} if progress.phase else {}),
    }


# Published whenever the running work changes or reports progress: the most recent one.
PROGRESS_SENSOR: SensorDescription[ProgressSnapshot | None] = SensorDescription(
    domain="sensor",
    key="progress",
    label="progress",
    icon="mdi:progress-upload",
    value=lambda progress: "idle" if progress is None else percent_or_unknown(progress),
    attributes=_progress_attributes,
    # Over MQTT a text sensor (it also reads "idle"), so the percent carries its sign.
    native_value=lambda progress: (
        "idle"
        if progress is None
        else (text if (text := percent_or_unknown(progress)) == "unknown" else f"{text} %")
    ),
)


COORDINATOR_SENSORS: tuple[SensorDescription[CoordinatorSnapshot], ...] = (
    SensorDescription(
        domain="sensor",
        key="active",
        label="active",
        icon="mdi:run",
        value=lambda coord: ", ".join(f"{d}: {op}" for d, op in coord.running.items()) or "idle",
        attributes=lambda coord: {
            "drones": list(coord.running),
            "operations": list(coord.running.values()),
            "global_mode": coord.global_mode,
        },
    ),
    SensorDescription(
        domain="sensor",
        key="queue",
        label="queue",
        icon="mdi:tray-full",
        value=lambda coord: str(len(coord.queue)),
        attributes=lambda coord: {
            "requested": [f"{drone}: {op}" for drone, op in coord.queue],
            "round_robin": list(coord.round_robin),
        },
    ),
    SensorDescription(
        domain="sensor",
        key="failing",
        label="failing drones",
        icon="mdi:alert",
        value=lambda coord: str(len(coord.failing)),
        attributes=lambda coord: {"drones": list(coord.failing)},
    ),
)


def render_sensors(
    table: Iterable[SensorDescription[Source]], prefix: str, drone: str | None, source: Source
) -> list[Publication]:
    """The sensors of one drone (or of the coordinator, ``drone`` None) for ``source``.

    Named like the helpers (``Borg nas last backup``, ``Borg queue``), so a drone's entities
    read alike. Attributes: the name and looks first, then the values."""
    return [
        Publication(
            description.entity_id(prefix, drone),
            truncate(description.value(source)),
            {
                **_looks(description, entity_name(prefix, drone, description.label)),
                **description.attributes(source),
            },
            None if description.native_value is None else description.native_value(source),
        )
        for description in table
    ]


# Attributes that say how HA shows a sensor, not what it measures (a backend with discovery
# configs sends these there).
LOOK_KEYS = frozenset(
    {"friendly_name", "icon", "device_class", "unit_of_measurement", "state_class", "options"}
)


def _looks(description: SensorDescription[Any], friendly_name: str) -> dict[str, Any]:
    looks = {
        "friendly_name": friendly_name,
        "icon": description.icon,
        "device_class": description.device_class,
        "unit_of_measurement": description.unit,
        "state_class": description.state_class,
        "options": list(description.options) or None,
    }
    return {key: value for key, value in looks.items() if value is not None}


def drone_sensors(prefix: str, snap: DroneSnapshot) -> list[Publication]:
    return render_sensors(DRONE_SENSORS, prefix, snap.name, snap)


def drone_progress_sensors(prefix: str, snap: DroneSnapshot) -> list[Publication]:
    """The drone's progress rows alone (a subset of ``drone_sensors``), for each update."""
    return render_sensors(DRONE_PROGRESS_SENSORS, prefix, snap.name, snap)


def progress_sensor(prefix: str, progress: ProgressSnapshot | None) -> Publication:
    (publication,) = render_sensors((PROGRESS_SENSOR,), prefix, None, progress)
    return publication


def coordinator_sensors(
    prefix: str,
    running: Mapping[str, str],
    queue: Sequence[tuple[str, str]],
    round_robin: Sequence[str],
    failing: Sequence[str],
    global_mode: str,
) -> list[Publication]:
    """``running``: drone -> operation; ``queue``: (drone, operation) requested, oldest first."""
    snapshot = CoordinatorSnapshot(running, queue, round_robin, failing, global_mode)
    return render_sensors(COORDINATOR_SENSORS, prefix, None, snapshot)


def iso_or_unknown(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "unknown"


def path_tail(path: str, limit: int = ROW_STATE_LENGTH) -> str:
    """The end of a path in at most ``limit`` characters, in whole components where they fit
    (``…/data/big/blob03.bin``); the start is what a person needs least."""
    if len(path) <= limit:
        return path
    tail = path.rsplit("/", 1)[-1]
    for part in reversed(path.split("/")[:-1]):
        if len(f"…/{part}/{tail}") > limit:
            break
        tail = f"{part}/{tail}"
    shown = f"…/{tail}"
    return shown if len(shown) <= limit else "…" + path[-(limit - 1) :]


def truncate(text: str) -> str:
    return text if len(text) <= STATE_MAX_LENGTH else text[: STATE_MAX_LENGTH - 1] + "…"
