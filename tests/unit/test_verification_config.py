"""A drone's check: and drill: settings in apps.yaml."""

from __future__ import annotations

from typing import Any

import pytest

from backup_coordinator.config import parse_config
from backup_coordinator.verification_config import CheckSettings, DrillSettings
from tests.unit.test_config import BASE, app_args, minimal_drone, only_problem


def test_defaults_check_monthly_and_drill_weekly() -> None:
    (drone,) = parse_config(app_args(), BASE).drones
    assert drone.check == CheckSettings(frequency_minutes=43200)
    assert drone.drill == DrillSettings(frequency_minutes=10080)


def test_settings_merge_key_by_key_with_the_defaults() -> None:
    args = app_args(
        defaults={"drill": {"size_mib": 16, "frequency": 1440}, "check": {"verify_data": True}},
        drones={
            "nas": minimal_drone(drill={"canaries": ["/etc/hostname"]}, check={"frequency": 0})
        },
    )
    (drone,) = parse_config(args, BASE).drones
    assert drone.drill == DrillSettings(1440, ("/etc/hostname",), 16, 100)
    assert drone.check == CheckSettings(frequency_minutes=0, verify_data=True)


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        ({"check": {"often": 1}}, "check.often", "unknown key"),
        ({"check": {"frequency": "daily"}}, "check.frequency", "minutes"),
        ({"check": {"frequency": 50000}}, "check.frequency", "between"),
        ({"check": {"max_duration": 0}}, "check.max_duration", "between"),
        ({"check": {"verify_data": True, "max_duration": 60}}, "check.max_duration", "verify_data"),
        ({"drill": {"canaries": ["etc/hostname"]}}, "drill.canaries[0]", "absolute"),
        ({"drill": {"max_files": 0}}, "drill.max_files", "between"),
        ({"drill": {"size_mib": 1.5}}, "drill.size_mib", "whole number"),
        ({"drill": "weekly"}, "drill", "mapping"),
    ],
)
def test_a_mistake_names_the_drone_and_the_key(
    settings: dict[str, Any], key: str, words: str
) -> None:
    problem = only_problem(parse_config(app_args(drones={"nas": minimal_drone(**settings)}), BASE))
    assert problem.drone == "nas"
    assert problem.key == key
    assert words in problem.message
