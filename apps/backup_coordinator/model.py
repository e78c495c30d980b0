"""Domain vocabulary shared by the core: operations, modes, states and the user-tunable settings.

Settings that Home Assistant controls (mode, frequency, keep rules) are validated here, once,
whether they come from ``apps.yaml`` or from a helper entity.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from enum import StrEnum


class Operation(StrEnum):
    """What a person or the schedule can ask the coordinator to do on one drone; what each
    one runs is in the registry (operations.py)."""

    CREATE = "create"
    PRUNE = "prune"
    STATS = "stats"
    CHECK = "check"
    EXTRACT = "extract"  # a restore (the CLI's restore command)
    DRILL = "drill"  # a sampled restore compared with the live files
    SCHEDULED = "scheduled"  # create, then prune, then stats


class CopyOperation(StrEnum):
    """What can be asked of an offsite target: copy its repositories now."""

    OFFSITE = "offsite"


AnyOperation = Operation | CopyOperation


class Mode(StrEnum):
    SCHEDULED = "scheduled"  # backed up by the tick when due
    MANUAL = "manual"  # only on request, no overdue alarm
    DISABLED = "disabled"  # nothing runs, no alarms


# The coordinator-wide mode (a helper): paused = the tick starts nothing, buttons still work.
GLOBAL_MODES = ("running", "paused")


class DroneState(StrEnum):
    IDLE = "idle"
    CREATING = "creating"
    PRUNING = "pruning"
    UPDATING_STATS = "updating_stats"
    CHECKING = "checking"
    RESTORING = "restoring"
    DRILLING = "drilling"
    OFFSITE = "offsite"
    ERROR = "error"
    UNREACHABLE = "unreachable"


class CopyState(StrEnum):
    """What an offsite target is doing; ``waiting`` = for a repository other work holds."""

    IDLE = "idle"
    WAITING = "waiting"
    COPYING = "copying"
    ERROR = "error"
    UNREACHABLE = "unreachable"


class CopyTool(StrEnum):
    RCLONE = "rclone"
    RSYNC = "rsync"


# borg's --keep-within interval: a positive number and one unit (hours, days, weeks, months,
# years). The agent checks the same pattern on its side of SSH.
KEEP_WITHIN_PATTERN = re.compile(r"^[1-9][0-9]{0,5}[Hdwmy]$")

FREQUENCY_MINUTES_RANGE = (1, 43200)  # one minute .. 30 days
KEEP_COUNT_RANGE = (0, 1000)
KEEP_COUNT_NAMES = ("hourly", "daily", "weekly", "monthly", "yearly")


class SettingError(ValueError):
    """A setting value that must not reach borg; the message says what is expected."""


@dataclass(frozen=True)
class KeepRules:
    """borg prune's retention rules; ``within`` is None when unset."""

    within: str | None = None
    hourly: int = 0
    daily: int = 7
    weekly: int = 4
    monthly: int = 6
    yearly: int = 1

    def is_empty(self) -> bool:
        return self.within is None and not any(getattr(self, n) for n in KEEP_COUNT_NAMES)

    def as_job(self) -> dict[str, str | int]:
        """The ``keep`` object of an agent job: zero counts and an unset ``within`` left out."""
        job: dict[str, str | int] = {
            n: getattr(self, n) for n in KEEP_COUNT_NAMES if getattr(self, n)
        }
        if self.within is not None:
            job["within"] = self.within
        return job


@dataclass(frozen=True)
class DroneSettings:
    """What Home Assistant's helpers steer for one drone."""

    mode: Mode = Mode.SCHEDULED
    frequency_minutes: int = 1440
    keep: KeepRules = KeepRules()

    def with_keep(self, **changes: str | int | None) -> DroneSettings:
        return replace(self, keep=replace(self.keep, **changes))  # type: ignore[arg-type]


@dataclass(frozen=True)
class CopySettings:
    """What Home Assistant's helpers steer for one offsite target."""

    mode: Mode = Mode.SCHEDULED
    frequency_minutes: int = 1440


def parse_mode(value: object) -> Mode:
    try:
        return Mode(str(value).strip().lower())
    except ValueError:
        options = ", ".join(m.value for m in Mode)
        raise SettingError(f"mode must be one of {options}, got {value!r}") from None


def parse_keep_within(value: object) -> str | None:
    """``""``/None -> unset; otherwise a borg interval such as ``7d`` or ``12H``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise SettingError(f"keep within must be text like 7d, got {value!r}")
    text = value.strip()
    if text in ("", "unknown", "unavailable"):
        return None
    if not KEEP_WITHIN_PATTERN.match(text):
        raise SettingError(
            f"keep within must be a number and a unit H, d, w, m or y (like 7d), got {value!r}"
        )
    return text


def parse_whole_number(value: object, what: str, bounds: tuple[int, int]) -> int:
    """Integers, and floats/strings that hold one (HA's input_number reports ``4.0``)."""
    low, high = bounds
    number: float
    if isinstance(value, bool):
        raise SettingError(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise SettingError(f"{what} must be a whole number, got {value!r}") from None
    else:
        raise SettingError(f"{what} must be a whole number, got {value!r}")
    if not math.isfinite(number) or number != int(number):  # NaN, infinite or a fraction
        raise SettingError(f"{what} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise SettingError(f"{what} must be between {low} and {high}, got {value!r}")
    return int(number)


def parse_frequency(value: object) -> int:
    return parse_whole_number(value, "frequency (minutes)", FREQUENCY_MINUTES_RANGE)


def parse_keep_count(name: str, value: object) -> int:
    return parse_whole_number(value, f"keep {name}", KEEP_COUNT_RANGE)


@dataclass(frozen=True)
class SshTarget:
    """Where and how to reach one drone's agent. Host keys are always verified."""

    host: str
    port: int = 22
    user: str = "root"
    client_key: str = ""  # path of the private key whose authorized_keys line forces the agent
    known_hosts: str = ""  # path of the known_hosts file that must hold the host's key
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0


MIB = 1024 * 1024


def format_mib(size: object) -> str:
    """A byte count for people: ``12.3 MiB``, or ``?`` when unknown."""
    return f"{size / MIB:.1f} MiB" if isinstance(size, int) else "?"
