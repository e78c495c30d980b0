"""A drone's ``check:`` and ``drill:`` settings: how its repository is proven readable, and how
often. Read like ``keep:`` (a mapping, merged key by key with ``defaults:``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .model import FREQUENCY_MINUTES_RANGE
from .values import InvalidValue, read_boolean, read_mapping, read_paths, read_whole_number, shown

MIB = 1024 * 1024
DAY_MINUTES = 24 * 60
CHECK_KEYS = frozenset({"frequency", "verify_data", "max_duration"})
DRILL_KEYS = frozenset({"frequency", "canaries", "size_mib", "max_files"})
MAX_CANARIES = 100


@dataclass(frozen=True)
class CheckSettings:
    """``borg check`` on a schedule: ``verify_data`` reads every chunk back (slow, thorough);
    ``max_duration`` bounds a run to that many seconds of repository-only checking."""

    frequency_minutes: int = 30 * DAY_MINUTES  # 0: only on request
    verify_data: bool = False
    max_duration: int | None = None


@dataclass(frozen=True)
class DrillSettings:
    """A restore drill on a schedule: a sample of the latest archive restored and compared with
    the live files, plus the ``canaries`` (absolute paths that must be in every archive)."""

    frequency_minutes: int = 7 * DAY_MINUTES  # 0: only on request
    canaries: tuple[str, ...] = ()
    size_mib: int = 64
    max_files: int = 100


def _frequency(key: str, value: object) -> int:
    """Minutes between runs; 0 turns the schedule off (the button still runs one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(key, f"must be a whole number of minutes (0: off), got {shown(value)}")
    return read_whole_number(key, value, 0, FREQUENCY_MINUTES_RANGE[1])


def _reject_unknown(key: str, given: Mapping[str, object], allowed: frozenset[str]) -> None:
    for name in given:
        if name not in allowed:
            raise InvalidValue(
                f"{key}.{name}", f"unknown key; expected one of {', '.join(sorted(allowed))}"
            )


def read_check(key: str, value: object) -> CheckSettings:
    given = read_mapping(key, value)
    _reject_unknown(key, given, CHECK_KEYS)
    defaults = CheckSettings()
    verify_data = read_boolean(f"{key}.verify_data", given.get("verify_data", False))
    max_duration = given.get("max_duration")
    if max_duration is not None:
        if isinstance(max_duration, bool) or not isinstance(max_duration, int):
            raise InvalidValue(f"{key}.max_duration", f"must be seconds, got {shown(max_duration)}")
        max_duration = read_whole_number(f"{key}.max_duration", max_duration, 1, 7 * 86400)
        if verify_data:
            raise InvalidValue(
                f"{key}.max_duration",
                "cannot go with verify_data: borg bounds only its repository-only check in time",
            )
    return CheckSettings(
        frequency_minutes=_frequency(
            f"{key}.frequency", given.get("frequency", defaults.frequency_minutes)
        ),
        verify_data=verify_data,
        max_duration=max_duration,
    )


def read_drill(key: str, value: object) -> DrillSettings:
    given = read_mapping(key, value)
    _reject_unknown(key, given, DRILL_KEYS)
    defaults = DrillSettings()
    canaries = given.get("canaries", [])
    return DrillSettings(
        frequency_minutes=_frequency(
            f"{key}.frequency", given.get("frequency", defaults.frequency_minutes)
        ),
        canaries=read_paths(f"{key}.canaries", canaries) if canaries else (),
        size_mib=_whole(f"{key}.size_mib", given.get("size_mib", defaults.size_mib), 1, 65536),
        max_files=_whole(f"{key}.max_files", given.get("max_files", defaults.max_files), 1, 1000),
    )


def _whole(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(key, f"must be a whole number, got {shown(value)}")
    return read_whole_number(key, value, low, high)
