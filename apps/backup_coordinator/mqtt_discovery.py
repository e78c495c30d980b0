"""MQTT discovery: the app's entities as Home Assistant devices, described over MQTT.

Pure functions of the entity catalogue: which entities exist (``catalogue``), where each one's
state, attributes and commands travel (``Topics``), the discovery config that makes HA create
it (``discovery_config``), and the payloads of its state. ``mqtt_entities`` sends them.

One device per drone and per offsite target, each under the coordinator's device
(``via_device``). Entity ids are predictable: ``object_id`` names them up to HA 2025.9,
``default_entity_id`` from 2025.10 (``entity_id_keys`` picks by HA's version).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from . import __version__, entities
from .config import Config, EntityBackend
from .entities import (
    EntityCategory,
    EntityDescription,
    HelperDescription,
    Publication,
    Section,
    SensorDescription,
)
from .offsite_entities import TARGET_HELPERS, TARGET_SENSORS

COORDINATOR_OWNER = "coordinator"  # the coordinator's topic level (no drone takes that name)
UNKNOWN_PAYLOAD = "None"  # HA's MQTT sensors read this payload (PAYLOAD_NONE) as unknown
BUTTON_PRESS = "PRESS"
ONLINE, OFFLINE = "online", "offline"
ORIGIN = {"name": "backup-coordinator", "sw_version": __version__}
# HA 2025.10 introduced default_entity_id and deprecated object_id (removed in 2026.4).
DEFAULT_ENTITY_ID_SINCE = (2025, 10)
BOTH_ID_KEYS = frozenset({"object_id", "default_entity_id"})
MANUFACTURER = "backup-coordinator"
# Device classes whose states HA reads as numbers (a sensor with a unit is numeric as well).
NUMERIC_DEVICE_CLASSES = frozenset({"data_size", "data_rate", "duration"})


class OwnerKind(StrEnum):
    COORDINATOR = "coordinator"
    DRONE = "drone"
    TARGET = "offsite target"


@dataclass(frozen=True)
class Entry:
    """One entity of the catalogue: whose it is and how it is described."""

    owner: str | None  # a drone's or an offsite target's name; None: the coordinator's
    kind: OwnerKind
    description: EntityDescription

    @property
    def key(self) -> str:
        return self.description.key

    def object_id(self, prefix: str) -> str:
        return entities.object_id(prefix, self.owner, self.description.key)

    def entity_id(self, prefix: str, backend: EntityBackend) -> str:
        return self.description.entity_id(prefix, self.owner, backend)


def catalogue(config: Config) -> list[Entry]:
    """Every entity the app owns with this configuration, coordinator first."""
    coordinator: Iterable[EntityDescription] = (
        *entities.COORDINATOR_HELPERS,
        *entities.COORDINATOR_SENSORS,
        entities.PROGRESS_SENSOR,
    )
    drone: tuple[EntityDescription, ...] = (
        *entities.DRONE_HELPERS,
        *entities.DRONE_BUTTONS,
        *entities.DRONE_SENSORS,
    )
    target: tuple[EntityDescription, ...] = (*TARGET_HELPERS, *TARGET_SENSORS)
    return (
        [Entry(None, OwnerKind.COORDINATOR, d) for d in coordinator]
        + [Entry(c.name, OwnerKind.DRONE, d) for c in config.drones for d in drone]
        + [Entry(c.name, OwnerKind.TARGET, d) for c in config.offsite for d in target]
    )


@dataclass(frozen=True)
class ClientStatus:
    """Where AppDaemon's MQTT client says whether it is connected (its birth and last will)."""

    topic: str
    online: str = ONLINE
    offline: str = OFFLINE


@dataclass(frozen=True)
class Topics:
    """``<base>/<owner>/<key>/state|attributes|set`` per entity, ``<base>/<owner>/availability``
    per drone or target, and HA's ``<discovery prefix>/<platform>/<object id>/config``."""

    base: str
    discovery_prefix: str

    def entity(self, entry: Entry, leaf: str) -> str:
        return f"{self.base}/{entry.owner or COORDINATOR_OWNER}/{entry.key}/{leaf}"

    def availability(self, owner: str) -> str:
        """``online`` while the drone (or target) can be reached."""
        return f"{self.base}/{owner}/availability"

    @property
    def app_availability(self) -> str:
        """``online`` while the app runs (AppDaemon may run on without it)."""
        return f"{self.base}/availability"

    def discovery(self, entry: Entry, prefix: str) -> str:
        platform = entities.platform(entry.description.domain, EntityBackend.MQTT)
        return f"{self.discovery_prefix}/{platform}/{entry.object_id(prefix)}/config"

    @property
    def commands(self) -> str:
        """The subscription that receives every command HA sends."""
        return f"{self.base}/+/+/set"

    @property
    def home_assistant_status(self) -> str:
        """HA says ``online`` here when it (re)starts: the cue to announce everything again."""
        return f"{self.discovery_prefix}/status"

    def command_of(self, topic: str) -> tuple[str | None, str] | None:
        """(owner, key) of a command topic; the coordinator's owner is None."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.base or parts[3] != "set":
            return None
        owner = None if parts[1] == COORDINATOR_OWNER else parts[1]
        return owner, parts[2]


class DisplayUnit(NamedTuple):
    """How HA shows a sensor sent in a base unit, until a person picks otherwise."""

    unit: str
    precision: int | None  # decimals in ``unit``; None: HA's own guess


def display_units(entries: Iterable[Entry], prefix: str) -> dict[str, DisplayUnit]:
    """Entity id -> how to show a sensor sent in a base unit: a size sent in bytes is shown in
    MiB with 2 decimals, as the helpers backend shows it (discovery cannot suggest a unit)."""
    return {
        entry.entity_id(prefix, EntityBackend.MQTT): DisplayUnit(
            description.unit, description.display_precision
        )
        for entry in entries
        if isinstance(description := entry.description, SensorDescription)
        and description.unit is not None
        and description.native_unit not in (None, description.unit)
    }


def display_options(current: Mapping[str, Any], shown: DisplayUnit) -> dict[str, Any] | None:
    """The entity registry's sensor options that show a sensor as ``shown``; None when a person
    already picked a unit (their choice stays). These are the options HA's entity settings set:
    a suggested precision would count in the base unit (2 decimals of bytes are 8 of MiB)."""
    if "unit_of_measurement" in current:
        return None
    options = {**current, "unit_of_measurement": shown.unit}
    if shown.precision is not None and "display_precision" not in current:
        options["display_precision"] = shown.precision
    return options


# --- devices ----------------------------------------------------------------------------------


def coordinator_identifier(prefix: str) -> str:
    return f"backup_coordinator_{prefix}"


def device(entry: Entry, prefix: str) -> dict[str, Any]:
    """The HA device an entity belongs to: the coordinator, or a drone or target under it."""
    if entry.owner is None:
        return {
            "identifiers": [coordinator_identifier(prefix)],
            "name": f"{entities.title(prefix)} coordinator",
            "manufacturer": MANUFACTURER,
            "model": "Backup coordinator",
            "sw_version": __version__,
        }
    return {
        "identifiers": [f"{coordinator_identifier(prefix)}_{entry.owner}"],
        "name": entry.owner,
        "manufacturer": MANUFACTURER,
        "model": "BorgBackup drone" if entry.kind is OwnerKind.DRONE else "Offsite copy target",
        "via_device": coordinator_identifier(prefix),
    }


# --- discovery configs ------------------------------------------------------------------------


def entity_name(entry: Entry) -> str:
    """The entity's own name; HA shows it after the device's (``nas Last backup``)."""
    label = entry.description.label
    if entry.owner is None:
        label = label.removeprefix("coordinator ")
    return label[:1].upper() + label[1:]


def entity_id_keys(home_assistant_version: str | None) -> frozenset[str]:
    """How the discovery config names the entity id: ``object_id`` before HA 2025.10,
    ``default_entity_id`` from then on (2026.4 no longer reads ``object_id``), both when the
    version is not known (each version ignores the key it does not read)."""
    version = _year_and_month(home_assistant_version)
    if version is None:
        return BOTH_ID_KEYS
    if version < DEFAULT_ENTITY_ID_SINCE:
        return frozenset({"object_id"})
    return frozenset({"default_entity_id"})


def _year_and_month(version: str | None) -> tuple[int, int] | None:
    parts = (version or "").split(".")
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    month = "".join(char for char in parts[1] if char.isdigit())  # 10b1 -> 10
    return (int(parts[0]), int(month)) if month else None


def discovery_config(
    entry: Entry,
    prefix: str,
    topics: Topics,
    status: ClientStatus,
    id_keys: frozenset[str] = BOTH_ID_KEYS,
) -> dict[str, Any]:
    """The retained config that makes HA create the entity (and its device)."""
    description = entry.description
    platform = entities.platform(description.domain, EntityBackend.MQTT)
    object_id = entry.object_id(prefix)
    names_entity_id = {"object_id": object_id, "default_entity_id": f"{platform}.{object_id}"}
    config: dict[str, Any] = {
        "name": entity_name(entry),
        "unique_id": f"backup_coordinator_{object_id}",
        **{key: value for key, value in names_entity_id.items() if key in id_keys},
        "device": device(entry, prefix),
        "origin": ORIGIN,
        "availability": availability(entry, topics, status),
        "availability_mode": "all",
    }
    if isinstance(description, HelperDescription):
        config.update(_control_config(description, entry, topics))
    elif isinstance(description, SensorDescription):
        config.update(_sensor_config(description, entry, topics))
    return config


def availability(entry: Entry, topics: Topics, status: ClientStatus) -> list[dict[str, str]]:
    """Every entity needs AppDaemon's MQTT client online and the app running. A drone's live
    progress (percent, speed, time left, file) also needs the drone reachable; its buttons stay
    available, so a person can ask for a retry of an unreachable drone."""
    needed = [
        {
            "topic": status.topic,
            "payload_available": status.online,
            "payload_not_available": status.offline,
        },
        _online(topics.app_availability),
    ]
    if entry.description.section is Section.PROGRESS and entry.owner is not None:
        needed.append(_online(topics.availability(entry.owner)))
    return needed


def _online(topic: str) -> dict[str, str]:
    return {"topic": topic, "payload_available": ONLINE, "payload_not_available": OFFLINE}


def _control_config(
    description: HelperDescription[Any], entry: Entry, topics: Topics
) -> dict[str, Any]:
    fields = description.create_fields
    config: dict[str, Any] = {
        "command_topic": topics.entity(entry, "set"),
        "icon": description.icon,
        "entity_category": EntityCategory.CONFIG.value,
    }
    domain = description.domain
    if domain == "input_button":
        return {**config, "payload_press": BUTTON_PRESS}
    config["state_topic"] = topics.entity(entry, "state")
    if domain == "input_number":
        number_keys = ("min", "max", "step", "mode", "unit_of_measurement")
        config.update({key: fields[key] for key in number_keys if key in fields})
    elif domain == "input_select":
        config["options"] = list(fields["options"])
    elif domain == "input_text":
        config.update({key: fields[key] for key in ("min", "max", "pattern") if key in fields})
        config["value_template"] = "{{ value_json.value }}"  # see control_value
    return config


def _sensor_config(
    description: SensorDescription[Any], entry: Entry, topics: Topics
) -> dict[str, Any]:
    looks = {
        "icon": description.icon,
        "device_class": description.device_class,
        "unit_of_measurement": description.native_unit or description.unit,
        "state_class": description.state_class,
        "options": list(description.options) or None,
        # HA refuses a sensor in the config category: those are controls.
        "entity_category": description.category.value
        if description.category is EntityCategory.DIAGNOSTIC
        else None,
    }
    config: dict[str, Any] = {
        "state_topic": topics.entity(entry, "state"),
        "json_attributes_topic": topics.entity(entry, "attributes"),
        **{key: value for key, value in looks.items() if value is not None},
    }
    if description.domain == "binary_sensor":
        config.update(payload_on="on", payload_off="off")
    return config


# --- states -----------------------------------------------------------------------------------


def state_payload(description: SensorDescription[Any], publication: Publication) -> str:
    """The sensor's state as its MQTT entity reads it. A value HA would refuse for the
    sensor's kind (``unknown`` for a size, ``idle`` for a percentage) becomes unknown."""
    state = publication.native_state if publication.native_state is not None else publication.state
    return state if _fits(description, state) else UNKNOWN_PAYLOAD


def _fits(description: SensorDescription[Any], state: str) -> bool:
    if description.domain == "binary_sensor":
        return state in ("on", "off")
    if description.device_class == "timestamp":
        return _is_timestamp(state)
    if description.device_class == "enum":
        return state in description.options
    numeric = (
        description.unit is not None
        or description.native_unit is not None
        or description.state_class is not None
        or description.device_class in NUMERIC_DEVICE_CLASSES
    )
    return _is_number(state) if numeric else state != "unknown"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_timestamp(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def attributes_payload(publication: Publication) -> str:
    """The sensor's attributes without what its discovery config already says."""
    values = {k: v for k, v in publication.attributes.items() if k not in entities.LOOK_KEYS}
    return json.dumps(values, default=str, sort_keys=True)


def control_value(domain: str, value: str | float) -> str:
    """A control's value as its state topic carries it: whole numbers without ``.0``; a text
    as JSON, because an empty retained payload would delete the retained message (an empty
    keep within is the default)."""
    if domain == "input_text":
        return json.dumps({"value": str(value)})
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def encode(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)
