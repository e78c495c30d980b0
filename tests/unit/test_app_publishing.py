"""Publishing to HA: sensor states sent a few at a time, commands bounded; the app's reading of
HA's states at start."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backup_coordinator.app import _helper_values, _sensors_shown
from backup_coordinator.entities import drone_helpers
from backup_coordinator.model import DroneSettings
from backup_coordinator.publishing import HomeAssistantUnavailable, SensorPublisher, bounded


class SlowHomeAssistant:
    """Records what arrives and how many posts overlap; a post takes a few loop turns."""

    def __init__(self, failing: set[str] | None = None) -> None:
        self.shown: dict[str, str] = {}
        self.arrivals: list[tuple[str, str]] = []
        self.in_flight: set[str] = set()
        self.most_in_flight = 0
        self.overlapping_same_entity = False
        self.failing = failing or set()

    async def post(self, entity_id: str, state: str, attributes: dict[str, Any]) -> None:
        self.overlapping_same_entity |= entity_id in self.in_flight
        self.in_flight.add(entity_id)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        for _ in range(3):
            await asyncio.sleep(0)
        self.in_flight.discard(entity_id)
        if entity_id in self.failing:
            raise HomeAssistantUnavailable(f"refused {entity_id}")
        self.shown[entity_id] = state
        self.arrivals.append((entity_id, state))


def no_log(message: str, level: str = "INFO") -> None:
    del message, level


async def test_every_sensor_ends_with_its_newest_state_and_few_posts_overlap() -> None:
    ha = SlowHomeAssistant()
    publisher = SensorPublisher(ha.post, 4, no_log)
    for round_ in range(5):
        for index in range(20):
            publisher.put(f"sensor.s{index}", f"v{round_}", {})
        await asyncio.sleep(0)
    await publisher.flush()
    assert ha.shown == {f"sensor.s{index}": "v4" for index in range(20)}
    assert ha.most_in_flight == 4
    assert not ha.overlapping_same_entity
    # A state not sent yet is replaced, never sent after a newer one.
    for index in range(20):
        states = [state for entity, state in ha.arrivals if entity == f"sensor.s{index}"]
        assert states == sorted(states)


async def test_one_sensor_published_quickly_never_has_two_posts_at_once() -> None:
    ha = SlowHomeAssistant()
    publisher = SensorPublisher(ha.post, 8, no_log)
    for value in range(50):
        publisher.put("sensor.progress", str(value), {})
        await asyncio.sleep(0)
    await publisher.drain()
    assert not ha.overlapping_same_entity
    assert ha.shown["sensor.progress"] == "49"


async def test_flush_reports_a_failed_state_once_and_drain_only_waits() -> None:
    ha = SlowHomeAssistant(failing={"sensor.b"})
    logged: list[str] = []
    publisher = SensorPublisher(ha.post, 2, lambda message, level="INFO": logged.append(level))
    for entity_id in ("sensor.a", "sensor.b", "sensor.c"):
        publisher.put(entity_id, "on", {})
    await publisher.drain()
    assert ha.shown == {"sensor.a": "on", "sensor.c": "on"}
    assert logged == ["WARNING"]
    with pytest.raises(HomeAssistantUnavailable, match=r"1 sensor state\(s\).*sensor\.b"):
        await publisher.flush()
    await publisher.flush()  # reported once


async def test_close_drops_what_was_not_sent() -> None:
    ha = SlowHomeAssistant()
    publisher = SensorPublisher(ha.post, 1, no_log)
    for index in range(10):
        publisher.put(f"sensor.s{index}", "on", {})
    await publisher.close()
    await publisher.drain()
    assert len(ha.shown) < 10


async def test_bounded_keeps_at_most_the_limit_running_and_raises_the_first_error() -> None:
    running = 0
    most = 0
    started: list[int] = []

    async def call(index: int) -> None:
        nonlocal running, most
        started.append(index)
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)
        running -= 1
        if index == 60:
            raise HomeAssistantUnavailable("refused")

    with pytest.raises(HomeAssistantUnavailable):
        await bounded((call(index) for index in range(500)), 50)
    assert most == 50
    assert len(started) < 500  # nothing new starts after the failure


def test_helper_values_come_from_the_states_and_skip_unknown_ones() -> None:
    helpers = drone_helpers("borg", "nas", DroneSettings())
    states = {
        "input_number.borg_nas_frequency": {"state": "90.0"},
        "input_select.borg_nas_mode": {"state": "unavailable"},
        "input_text.borg_nas_keep_within": {"state": ""},
    }
    assert _helper_values(helpers, states) == {"nas": {"frequency": "90.0", "keep_within": ""}}


def test_only_the_apps_own_sensors_count_as_shown() -> None:
    states = {
        "sensor.borg_nas_state": {"state": "idle", "attributes": {"options": ("a", "b")}},
        "binary_sensor.borg_nas_problem": {"state": "off", "attributes": {}},
        "sensor.backuper_other": {"state": "x", "attributes": {}},
        "input_number.borg_nas_frequency": {"state": "60", "attributes": {}},
    }
    assert _sensors_shown("borg", states) == {
        "sensor.borg_nas_state": ("idle", {"options": ["a", "b"]}),
        "binary_sensor.borg_nas_problem": ("off", {}),
    }
