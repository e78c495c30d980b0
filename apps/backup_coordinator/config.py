"""apps.yaml args -> frozen, typed configuration.

A top-level mistake (a bad tick, an unknown key) raises ``ConfigError``. A mistake in one drone
is recorded as a ``ConfigProblem`` and that drone is skipped, so the others keep being backed up.
Every message names the key and says what is expected; none ever shows a passphrase.

This module holds the configuration's shape: its keys, defaults and inheritance (ssh: block,
defaults:, drone), the checks across drones and the apps.yaml file loader. How one value is
read and checked is in ``values`` (``locations`` for repository locations).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .locations import host_family, parse_location, repository_key
from .model import (
    KEEP_COUNT_NAMES,
    DroneSettings,
    KeepRules,
    SettingError,
    SshTarget,
    parse_frequency,
    parse_keep_count,
    parse_keep_within,
    parse_mode,
)
from .redaction import Redactor
from .values import (
    PORT_RANGE,
    InvalidValue,
    check_rsh_port,
    optional,
    read_archive_prefix,
    read_boolean,
    read_borg_rsh,
    read_compression,
    read_exclude_if_present,
    read_exclude_patterns,
    read_lock_wait,
    read_mapping,
    read_matching,
    read_number,
    read_passphrase,
    read_paths,
    read_remote_path,
    read_repository,
    read_single_line,
    read_text,
    read_whole_number,
    shown,
)
from .verification_config import CheckSettings, DrillSettings, read_check, read_drill

if TYPE_CHECKING:
    from .offsite_config import OffsiteTargetConfig

# Keys AppDaemon puts into (or accepts in) every app's args; they are not ours to check.
APPDAEMON_KEYS = frozenset(
    {
        "module",
        "class",
        "dependencies",
        "global_dependencies",
        "priority",
        "log",
        "log_level",
        "plugin",
        "use_dictionary_unpacking",
        "pin_app",
        "pin_thread",
        "disable",
        "name",
        "config_path",
    }
)

APP_MODULE = "backup_coordinator.app"
APP_CLASS = "BackupCoordinator"

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
NOTIFY_PATTERN = re.compile(r"^notify\.[a-z0-9_]+$")
HOST_PATTERN = re.compile(r"^[A-Za-z0-9_\[][A-Za-z0-9._:%\[\]-]{0,252}$")
USER_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
REPOSITORY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# A drone's helpers are named <prefix>_<drone>_<suffix>; these names would take the
# coordinator's own (<prefix>_coordinator_mode is its global mode helper).
RESERVED_DRONE_NAMES = frozenset({"coordinator"})

DEFAULT_ENTITY_PREFIX = "borg"
DEFAULT_STATE_FILE = "backup_coordinator_state.json"
DEFAULT_EXCLUDE_IF_PRESENT = (".nobackup",)
MAX_CONCURRENT_RANGE = (1, 16)

TOP_LEVEL_KEYS = frozenset(
    {
        "entity_prefix",
        "state_file",
        "tick_seconds",
        "max_concurrent",
        "progress_interval",
        "overdue_factor",
        "max_runtime_minutes",
        "hello_timeout",
        "inactivity_timeout_minutes",
        "notify",
        "ssh",
        "defaults",
        "drones",
        "offsite",
        "entities",
        "mqtt",
    }
)
MQTT_KEYS = frozenset({"namespace", "discovery_prefix", "base_topic"})
# An MQTT topic level of ours: no wildcards, no separators, nothing a broker treats specially.
TOPIC_LEVEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SSH_BLOCK_KEYS = frozenset(
    {"user", "port", "client_key", "known_hosts", "connect_timeout", "keepalive_interval"}
)
DRONE_KEYS = frozenset(
    {
        "host",
        "repository",
        "repository_id",
        "passphrase",
        "archive_prefix",
        "paths",
        "exclude_patterns",
        "exclude_if_present",
        "one_file_system",
        "compression",
        "lock_wait",
        "borg_rsh",
        "borg_remote_path",
        "mode",
        "frequency",
        "keep",
        "check",
        "drill",
    }
    | SSH_BLOCK_KEYS
)
NOT_INHERITABLE_KEYS = frozenset({"host", "repository", "repository_id"})
MERGED_SECTIONS = ("keep", "check", "drill")
KEEP_KEYS = frozenset({"within", *KEEP_COUNT_NAMES})

# How long an agent may stay silent, per step, before the session is a `timeout` failure. borg
# create reports progress about every 0.2 s; prune (with compact), stats and check print
# nothing until they are done, so they get more. Every step may also wait lock_wait seconds
# for the repository lock, silently: that is added to its limit.
DEFAULT_HELLO_TIMEOUT = 60.0
DEFAULT_INACTIVITY_MINUTES = {
    "create": 30,
    "prune": 180,
    "stats": 60,
    "check": 720,
    "extract": 60,  # borg extract --progress reports as it writes, but a listing comes first
    "drill": 120,  # lists, restores a sample and compares it, all without progress
    "offsite": 60,  # rclone and rsync report progress every second while they copy
}
# The agent refuses a job line longer than this (drone_agent's JOB_LINE_LIMIT); what Home
# Assistant can change (keep rules, as numbers) needs a little room on top of apps.yaml's values.
AGENT_JOB_LINE_LIMIT = 1024 * 1024
JOB_SIZE_MARGIN = 4096
JOB_LIST_KEYS = ("paths", "exclude_patterns", "exclude_if_present")

# Keys people reach for to turn host key checking off. Host keys are always verified, so these
# get a message that says so instead of a plain "unknown key".
HOST_KEY_BYPASS_KEYS = frozenset(
    {
        "strict_host_key_checking",
        "stricthostkeychecking",
        "host_key_checking",
        "check_host_keys",
        "verify_host_keys",
        "verify_host_key",
        "insecure",
        "accept_new_host_keys",
        "ignore_host_keys",
    }
)
HOST_KEY_BYPASS_MESSAGE = (
    "host keys are always verified and this cannot be turned off; "
    "put the host's key into the known_hosts file instead"
)


class ConfigError(ValueError):
    """The configuration as a whole is unusable; the message names the key."""


@dataclass(frozen=True)
class ConfigProblem:
    """One drone's configuration is broken; that drone is skipped."""

    drone: str  # or the offsite target's name
    key: str
    message: str
    kind: str = "drone"

    def __str__(self) -> str:
        return f"{self.kind} {self.drone!r}: key {self.key!r}: {self.message}"


@dataclass(frozen=True)
class SessionLimits:
    """How long an agent session may go without a line before it counts as hung."""

    hello_seconds: float = DEFAULT_HELLO_TIMEOUT
    inactivity_minutes: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_INACTIVITY_MINUTES)
    )

    def silence_seconds(self, step: str, lock_wait: float) -> float:
        """The longest a ``step`` may stay silent: its limit plus the wait for the lock."""
        minutes = self.inactivity_minutes.get(step, max(self.inactivity_minutes.values()))
        return minutes * 60 + lock_wait


@dataclass(frozen=True)
class DroneConfig:
    name: str
    ssh: SshTarget
    repository: str
    repository_id: str | None = None
    passphrase: str | None = field(default=None, repr=False)
    archive_prefix: str = ""
    paths: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    exclude_if_present: tuple[str, ...] = DEFAULT_EXCLUDE_IF_PRESENT
    one_file_system: bool = False
    compression: str = "lz4"
    lock_wait: int = 60
    borg_rsh: str | None = None
    borg_remote_path: str | None = None
    settings: DroneSettings = field(default_factory=DroneSettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    drill: DrillSettings = field(default_factory=DrillSettings)

    @property
    def repository_key(self) -> str:
        """Identifies the repository, so no two operations ever run on it at once.

        ``repository_id`` when apps.yaml sets one; otherwise the location's one spelling
        (``locations.repository_key``: a local path is qualified with the drone's host, and
        ``borg@nas:/r``, ``ssh://nas:22/r/`` and ``/r`` on nas are the same repository).
        """
        if self.repository_id is not None:
            return f"id:{self.repository_id}"
        location = parse_location(self.repository)
        if location is None:
            return self.repository
        return repository_key(location, self.ssh.host)


class EntityBackend(StrEnum):
    """How the app's entities reach Home Assistant."""

    HELPERS = "helpers"  # input_* helpers and sensors set over HA's API: no broker needed
    MQTT = "mqtt"  # MQTT discovery: devices, unique ids, unit conversion; needs a broker


@dataclass(frozen=True)
class MqttSettings:
    """Where the MQTT backend publishes: AppDaemon's MQTT plugin namespace, HA's discovery
    prefix, and the first level of every state and command topic (the entity prefix)."""

    namespace: str = "mqtt"
    discovery_prefix: str = "homeassistant"
    base_topic: str = DEFAULT_ENTITY_PREFIX


@dataclass(frozen=True)
class Config:
    entity_prefix: str = DEFAULT_ENTITY_PREFIX
    entities: EntityBackend = EntityBackend.HELPERS
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    state_file: Path = Path(DEFAULT_STATE_FILE)
    tick_seconds: float = 60.0
    max_concurrent: int = 1
    progress_interval: float = 5.0
    overdue_factor: float = 2.0
    max_runtime_minutes: float = 720  # whole minutes from apps.yaml
    limits: SessionLimits = field(default_factory=SessionLimits)
    notify: str | None = None
    drones: tuple[DroneConfig, ...] = ()
    offsite: tuple[OffsiteTargetConfig, ...] = ()
    problems: tuple[ConfigProblem, ...] = ()
    warnings: tuple[str, ...] = ()  # worth a look, nothing skipped

    def drone(self, name: str) -> DroneConfig | None:
        return next((d for d in self.drones if d.name == name), None)

    def writers(self, repository_key: str) -> tuple[DroneConfig, ...]:
        """The drones backing up into the repository."""
        return tuple(d for d in self.drones if d.repository_key == repository_key)


# ---------------------------------------------------------------------------------------------
# Top level


def parse_config(args: Mapping[str, Any], base_dir: Path) -> Config:
    """The app's args as AppDaemon passes them -> Config. Raises ConfigError at the top level.

    Relative paths (state file, keys) are taken relative to ``base_dir``.
    """
    try:
        return _parse_config(args, base_dir)
    except InvalidValue as error:
        raise ConfigError(_redact(str(error), _passphrases_in(args))) from None


def _parse_config(args: Mapping[str, Any], base_dir: Path) -> Config:
    reject_unknown_keys("", args, TOP_LEVEL_KEYS, ignored=APPDAEMON_KEYS)
    ssh_block = _parse_ssh_block(args.get("ssh", {}), base_dir)
    defaults = _parse_defaults(args.get("defaults", {}), ssh_block, base_dir)
    entity_prefix = read_matching(
        "entity_prefix",
        args.get("entity_prefix", DEFAULT_ENTITY_PREFIX),
        SLUG_PATTERN,
        "a slug: a lowercase letter, then up to 30 lowercase letters, digits or _",
    )
    drones, problems = _parse_drones(
        args.get("drones"), defaults, base_dir, _passphrases_in(args), entity_prefix
    )
    from .offsite_config import parse_offsite_targets  # it builds on this module

    drone_names = frozenset(str(name) for name in mapping_any_keys("drones", args["drones"]))
    targets, target_problems = parse_offsite_targets(
        args.get("offsite"), defaults, base_dir, drone_names | RESERVED_DRONE_NAMES
    )
    return Config(
        entity_prefix=entity_prefix,
        entities=_entity_backend(args.get("entities", EntityBackend.HELPERS.value)),
        mqtt=_mqtt_settings(args.get("mqtt"), entity_prefix),
        state_file=Path(
            _local_path(base_dir)("state_file", args.get("state_file", DEFAULT_STATE_FILE))
        ),
        tick_seconds=read_number("tick_seconds", args.get("tick_seconds", 60), 1, "seconds"),
        max_concurrent=read_whole_number(
            "max_concurrent", args.get("max_concurrent", 1), *MAX_CONCURRENT_RANGE
        ),
        progress_interval=read_number(
            "progress_interval", args.get("progress_interval", 5), 0.5, "seconds"
        ),
        overdue_factor=read_number("overdue_factor", args.get("overdue_factor", 2.0), 1, "factor"),
        max_runtime_minutes=read_whole_number(
            "max_runtime_minutes", args.get("max_runtime_minutes", 720), 1
        ),
        limits=SessionLimits(
            hello_seconds=read_number(
                "hello_timeout",
                args.get("hello_timeout", DEFAULT_HELLO_TIMEOUT),
                0,
                "seconds",
                inclusive=False,
            ),
            inactivity_minutes=_inactivity_minutes(args.get("inactivity_timeout_minutes")),
        ),
        notify=optional(_notify)("notify", args.get("notify")),
        drones=drones,
        offsite=targets,
        problems=problems + target_problems,
        warnings=_shared_repository_warnings(drones),
    )


def _entity_backend(value: object) -> EntityBackend:
    choices = ", ".join(backend.value for backend in EntityBackend)
    if value not in {backend.value for backend in EntityBackend}:
        raise InvalidValue("entities", f"must be one of {choices}, got {value!r}")
    return EntityBackend(value)


def _mqtt_settings(value: object, entity_prefix: str) -> MqttSettings:
    given = read_mapping("mqtt", {} if value is None else value)
    reject_unknown_keys("mqtt.", given, MQTT_KEYS)
    what = "one MQTT topic level: letters, digits, _ or -, no / + #"

    def level(key: str, default: str) -> str:
        return read_matching(f"mqtt.{key}", given.get(key, default), TOPIC_LEVEL_PATTERN, what)

    return MqttSettings(
        namespace=read_matching(
            "mqtt.namespace",
            given.get("namespace", "mqtt"),
            SLUG_PATTERN,
            "the namespace of AppDaemon's MQTT plugin (appdaemon.yaml)",
        ),
        discovery_prefix=level("discovery_prefix", "homeassistant"),
        base_topic=level("base_topic", entity_prefix),
    )


def _inactivity_minutes(value: object) -> dict[str, int]:
    """Per step, the minutes an agent may stay silent; unnamed steps keep their default."""
    key = "inactivity_timeout_minutes"
    if value is None:
        return dict(DEFAULT_INACTIVITY_MINUTES)
    given = read_mapping(key, value)
    reject_unknown_keys(f"{key}.", given, DEFAULT_INACTIVITY_MINUTES)
    minutes = dict(DEFAULT_INACTIVITY_MINUTES)
    for step, raw in given.items():
        strict_int(f"{key}.{step}", raw, "a whole number of minutes")
        minutes[step] = read_whole_number(f"{key}.{step}", raw, 1)
    return minutes


def _notify(key: str, value: object) -> str:
    return read_matching(
        key, value, NOTIFY_PATTERN, "a notify service like notify.mobile_app_phone"
    )


def reject_unknown_keys(
    prefix: str,
    section: Mapping[str, Any],
    allowed: Iterable[str],
    ignored: frozenset[str] = frozenset(),
) -> None:
    allowed = frozenset(allowed)
    for key in section:
        if key in allowed or key in ignored:
            continue
        where = f"{prefix}{key}"
        if isinstance(key, str) and key.lower() in HOST_KEY_BYPASS_KEYS:
            raise InvalidValue(where, HOST_KEY_BYPASS_MESSAGE)
        raise InvalidValue(where, f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _parse_ssh_block(value: object, base_dir: Path) -> dict[str, Any]:
    """The global ssh: block, validated; its raw values become every drone's defaults."""
    if value is None:
        return {}
    block = read_mapping("ssh", value)
    reject_unknown_keys("ssh.", block, SSH_BLOCK_KEYS)
    for key, raw in block.items():
        parse_drone_value(f"ssh.{key}", key, raw, base_dir)
    return dict(block)


def _parse_defaults(value: object, ssh_block: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """ssh: values overlaid with defaults: values, each checked here so a mistake in a shared
    default is reported once, under its own key, instead of on every drone."""
    if value is None:
        return dict(ssh_block)
    block = read_mapping("defaults", value)
    for key in block:
        if key in NOT_INHERITABLE_KEYS:
            raise InvalidValue(f"defaults.{key}", "must be set per drone, not in defaults")
    reject_unknown_keys("defaults.", block, DRONE_KEYS - NOT_INHERITABLE_KEYS)
    for key, raw in block.items():
        parse_drone_value(f"defaults.{key}", key, raw, base_dir)
    return {**ssh_block, **block}


# ---------------------------------------------------------------------------------------------
# Drones


def _parse_drones(
    value: object,
    defaults: Mapping[str, Any],
    base_dir: Path,
    secrets: tuple[str, ...],
    entity_prefix: str,
) -> tuple[tuple[DroneConfig, ...], tuple[ConfigProblem, ...]]:
    if value is None:
        raise InvalidValue("drones", "required: a mapping of drone names to their settings")
    drones_section = mapping_any_keys("drones", value)
    if not drones_section:
        raise InvalidValue("drones", "must name at least one drone")
    drones: list[DroneConfig] = []
    by_repository: dict[str, list[DroneConfig]] = {}  # checking every pair is quadratic
    problems: list[ConfigProblem] = []
    for name in sorted(drones_section, key=str):
        settings = drones_section[name]
        try:
            drone = parse_drone(name, settings, defaults, base_dir, entity_prefix)
            _check_archive_prefix_unique(drone, by_repository.get(drone.repository_key, []))
        except InvalidValue as error:
            problems.append(
                ConfigProblem(
                    *(_redact(text, secrets) for text in (str(name), error.key, error.message))
                )
            )
            continue
        drones.append(drone)
        by_repository.setdefault(drone.repository_key, []).append(drone)
    return tuple(drones), tuple(problems)


def parse_drone(
    name: object,
    value: object,
    defaults: Mapping[str, Any],
    base_dir: Path,
    entity_prefix: str = DEFAULT_ENTITY_PREFIX,
) -> DroneConfig:
    """One drone's settings, with the inherited defaults; raises InvalidValue naming the key."""
    if not isinstance(name, str) or not SLUG_PATTERN.fullmatch(name):
        raise InvalidValue(
            "name",
            "a drone name must be a slug: a lowercase letter, then up to 30 lowercase "
            f"letters, digits or _, got {shown(name)}",
        )
    if name in RESERVED_DRONE_NAMES:
        raise InvalidValue(
            "name",
            f"the drone name {name!r} is reserved: its mode helper would be "
            f"input_select.{entity_prefix}_{name}_mode, the coordinator's own global mode "
            "helper; choose another name",
        )
    own = read_mapping(f"drones.{name}", value)
    reject_unknown_keys("", own, DRONE_KEYS)
    merged = {**defaults, **own}
    for section in MERGED_SECTIONS:
        if section in defaults and section in own:
            # Merged key by key: a drone can change one rule without repeating the rest.
            merged[section] = {
                **read_mapping(section, defaults[section]),
                **read_mapping(section, own[section]),
            }
    for required in ("host", "repository", "paths", "client_key", "known_hosts"):
        if required not in merged:
            raise InvalidValue(required, missing_message(required))
    parsed = {key: parse_drone_value(key, key, raw, base_dir) for key, raw in merged.items()}
    drone = _assemble_drone(name, parsed)
    if drone.borg_rsh is not None:
        check_rsh_port(drone.borg_rsh, drone.repository)
    _check_job_size(drone)
    return drone


def missing_message(key: str) -> str:
    if key in SSH_BLOCK_KEYS:
        return f"required: set {key} on the drone, in defaults: or in the ssh: block"
    return "required"


def parse_drone_value(key: str, name: str, raw: object, base_dir: Path) -> Any:
    """Validate one per-drone value; ``key`` is how messages name it, ``name`` what it is."""
    if name == "keep":
        return _parse_keep(key, raw)
    if name == "check":
        return read_check(key, raw)
    if name == "drill":
        return read_drill(key, raw)
    parse = _drone_value_parsers(base_dir)[name]
    return parse(key, raw)


def _drone_value_parsers(base_dir: Path) -> dict[str, Callable[[str, object], Any]]:
    return {
        "host": lambda key, value: read_matching(
            key, value, HOST_PATTERN, "a host name or address"
        ),
        "port": lambda key, value: read_whole_number(key, value, *PORT_RANGE),
        "user": lambda key, value: read_matching(key, value, USER_PATTERN, "a user name"),
        "client_key": _local_path(base_dir),
        "known_hosts": _known_hosts(base_dir),
        "connect_timeout": lambda key, value: read_number(
            key, value, 0, "seconds", inclusive=False
        ),
        "keepalive_interval": lambda key, value: read_number(key, value, 0, "seconds, 0 = off"),
        "repository": read_repository,
        "repository_id": lambda key, value: read_matching(
            key, value, REPOSITORY_ID_PATTERN, "a name for the repository: letters, digits, ._-"
        ),
        "passphrase": read_passphrase,
        "archive_prefix": read_archive_prefix,
        "paths": read_paths,
        "exclude_patterns": read_exclude_patterns,
        "exclude_if_present": read_exclude_if_present,
        "one_file_system": read_boolean,
        "compression": read_compression,
        "lock_wait": read_lock_wait,
        "borg_rsh": optional(read_borg_rsh),
        "borg_remote_path": optional(read_remote_path),
        "mode": lambda key, value: setting_value(key, parse_mode, read_text(key, value, "text")),
        "frequency": read_frequency,
    }


def _local_path(base_dir: Path) -> Callable[[str, object], str]:
    def parse(key: str, value: object) -> str:
        if value is None or value is False:
            raise InvalidValue(key, "must be the path of a file, got nothing")
        text = read_single_line(key, value, "the path of a file")
        path = Path(text).expanduser()
        return str(path if path.is_absolute() else base_dir / path)

    return parse


def _known_hosts(base_dir: Path) -> Callable[[str, object], str]:
    parse_path = _local_path(base_dir)

    def parse(key: str, value: object) -> str:
        if value is None or isinstance(value, bool) or value == "":
            raise InvalidValue(
                key,
                "must be the path of a known_hosts file holding the host's key; host keys "
                f"are always verified and this cannot be turned off, got {shown(value)}",
            )
        return parse_path(key, value)

    return parse


def _parse_keep(key: str, value: object) -> KeepRules:
    rules = read_mapping(key, value)
    reject_unknown_keys(f"{key}.", rules, KEEP_KEYS)
    changes: dict[str, str | int | None] = {}
    if "within" in rules:
        changes["within"] = setting_value(f"{key}.within", parse_keep_within, rules["within"])
    for count in KEEP_COUNT_NAMES:
        if count in rules:
            changes[count] = _keep_count(f"{key}.{count}", count, rules[count])
    keep = DroneSettings().with_keep(**changes).keep
    if keep.is_empty():
        raise InvalidValue(key, "must keep something: set within or at least one count above 0")
    return keep


def _keep_count(key: str, name: str, value: object) -> int:
    strict_int(key, value, "a whole number of archives")
    count: int = setting_value(key, lambda v: parse_keep_count(name, v), value)
    return count


def read_frequency(key: str, value: object) -> int:
    strict_int(key, value, "a whole number of minutes")
    minutes: int = setting_value(key, parse_frequency, value)
    return minutes


def strict_int(key: str, value: object, what: str) -> None:
    """The model's parsers also take "60" and 60.0 (HA's helpers report those); a YAML file
    must say what it means."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(key, f"must be {what}, got {shown(value)}")


def setting_value(key: str, parse: Callable[[object], Any], value: object) -> Any:
    try:
        return parse(value)
    except SettingError as error:
        raise InvalidValue(key, str(error)) from None


def ssh_target(parsed: Mapping[str, Any]) -> SshTarget:
    """Where and how to reach a host's agent, from its parsed values (host, the ssh: keys)."""
    return SshTarget(
        host=parsed["host"],
        port=parsed.get("port", 22),
        user=parsed.get("user", "root"),
        client_key=parsed["client_key"],
        known_hosts=parsed["known_hosts"],
        connect_timeout=parsed.get("connect_timeout", 10.0),
        keepalive_interval=parsed.get("keepalive_interval", 15.0),
    )


def _assemble_drone(name: str, parsed: Mapping[str, Any]) -> DroneConfig:
    ssh = ssh_target(parsed)
    settings = DroneSettings(
        mode=parsed.get("mode", DroneSettings.mode),
        frequency_minutes=parsed.get("frequency", DroneSettings.frequency_minutes),
        keep=parsed.get("keep", KeepRules()),
    )
    return DroneConfig(
        name=name,
        ssh=ssh,
        repository=parsed["repository"],
        repository_id=parsed.get("repository_id"),
        passphrase=parsed.get("passphrase"),
        archive_prefix=parsed.get("archive_prefix", name),
        paths=parsed["paths"],
        exclude_patterns=parsed.get("exclude_patterns", ()),
        exclude_if_present=parsed.get("exclude_if_present", DEFAULT_EXCLUDE_IF_PRESENT),
        one_file_system=parsed.get("one_file_system", False),
        compression=parsed.get("compression", "lz4"),
        lock_wait=parsed.get("lock_wait", 60),
        borg_rsh=parsed.get("borg_rsh"),
        borg_remote_path=parsed.get("borg_remote_path"),
        settings=settings,
        check=parsed.get("check", CheckSettings()),
        drill=parsed.get("drill", DrillSettings()),
    )


def _check_archive_prefix_unique(drone: DroneConfig, earlier: Iterable[DroneConfig]) -> None:
    """Prune and list select ``PREFIX-*``: two drones whose selections overlap in one repository
    would prune each other's archives."""
    for other in earlier:
        if other.repository_key != drone.repository_key:
            continue
        if _prefixes_overlap(drone.archive_prefix, other.archive_prefix):
            raise InvalidValue(
                "archive_prefix",
                f"{drone.archive_prefix!r} clashes with drone {other.name!r} "
                f"(archive_prefix {other.archive_prefix!r}) in the same repository; "
                "each drone needs a prefix of its own so prune never touches another's archives",
            )


def _check_job_size(drone: DroneConfig) -> None:
    """The agent refuses a job line over its limit, so a drone whose largest job (the scheduled
    backup's, with every path and pattern) would not fit is a configuration problem now."""
    # Both build on this module's DroneConfig, so they are imported where they are used.
    from .jobs import build_job
    from .operations import OPERATIONS

    size = 0
    for spec in OPERATIONS.values():
        try:
            size = max(size, len(json.dumps(build_job(drone, drone.settings, spec.steps))))
        except SettingError:  # no keep rule: that session is refused anyway
            continue
    if size + JOB_SIZE_MARGIN <= AGENT_JOB_LINE_LIMIT:
        return
    sizes = {key: len(json.dumps(list(getattr(drone, key)))) for key in JOB_LIST_KEYS}
    culprit = max(sizes, key=lambda key: sizes[key])
    raise InvalidValue(
        culprit,
        f"the drone's job would be {size} bytes ({culprit}: {sizes[culprit]} bytes), over the "
        f"{AGENT_JOB_LINE_LIMIT - JOB_SIZE_MARGIN} the agent accepts; list fewer or shorter "
        "entries (a parent folder, or one pattern for many)",
    )


def _shared_repository_warnings(drones: Iterable[DroneConfig]) -> tuple[str, ...]:
    """Drones whose repositories look alike but get different keys: perhaps one repository
    written two ways (``nas`` and ``nas.lan``, another port), which would let two operations
    run on it at once. ``repository_id`` settles it either way, so it silences the warning."""
    warnings: list[str] = []
    seen: list[tuple[DroneConfig, tuple[str, str, tuple[str, ...]]]] = []
    for drone in drones:
        location = parse_location(drone.repository)
        if location is None or drone.repository_id is not None:
            continue
        host = location.host if not location.is_local else drone.ssh.host
        resemblance = (host_family(host), location.root, location.components)
        for other, other_resemblance in seen:
            if resemblance == other_resemblance and drone.repository_key != other.repository_key:
                warnings.append(
                    f"drones {other.name!r} ({other.repository!r} on {other.ssh.host}) and "
                    f"{drone.name!r} ({drone.repository!r} on {drone.ssh.host}) may use one "
                    "repository written two ways; if so, give both the same repository_id so "
                    "no two operations run on it at once (different ids: they are different)"
                )
        seen.append((drone, resemblance))
    return tuple(warnings)


def _prefixes_overlap(first: str, second: str) -> bool:
    return first == second or first.startswith(second + "-") or second.startswith(first + "-")


def mapping_any_keys(key: str, value: object) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise InvalidValue(key, f"must be a mapping of keys to values, got {shown(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# Passphrases never show in a message


def _passphrases_in(args: Mapping[str, Any]) -> tuple[str, ...]:
    """Every passphrase anywhere in the args, to be kept out of every message."""
    drones = args.get("drones")
    sections = [args.get("defaults"), *(drones.values() if isinstance(drones, Mapping) else ())]
    found = {
        section["passphrase"]
        for section in sections
        if isinstance(section, Mapping)
        and isinstance(section.get("passphrase"), str)
        and section["passphrase"]
    }
    return tuple(sorted(found, key=len, reverse=True))  # longest first: no partial leftovers


def _redact(message: str, secrets: Iterable[str]) -> str:
    """Belt and braces: no message may carry a passphrase, even one pasted under a wrong key
    (in any escaped or cut form: messages quote values with repr)."""
    found = tuple(secrets)
    return Redactor(found).text(message) if found else message


# ---------------------------------------------------------------------------------------------
# apps.yaml files (for the CLI)


def load_config_file(
    path: Path, app_name: str | None = None, base_dir: Path | None = None
) -> Config:
    """Read an apps.yaml like AppDaemon does and parse the coordinator's entry.

    ``!secret NAME`` comes from ``secrets.yaml`` beside the file (or in its parent directory,
    AppDaemon's config dir); ``!env_var NAME`` from the environment. With no ``app_name``, the
    single app whose module is ``backup_coordinator.app`` (or whose class is
    ``BackupCoordinator``) is used. Relative paths are taken relative to ``base_dir``, by
    default AppDaemon's config dir (the nearest directory above holding ``appdaemon.yaml``,
    which is what the app itself uses), else the file's own directory.
    """
    apps = _read_yaml(path, _secrets_for(path))
    if not isinstance(apps, Mapping):
        raise ConfigError(f"{path}: expected a mapping of app names to app settings")
    name = app_name if app_name is not None else _find_app(apps, path)
    if name not in apps:
        raise ConfigError(f"{path}: no app named {name!r}")
    args = apps[name]
    if not isinstance(args, Mapping):
        raise ConfigError(f"{path}: app {name!r} must be a mapping of keys to values")
    return parse_config(args, base_dir if base_dir is not None else appdaemon_config_dir(path))


def appdaemon_config_dir(apps_file: Path) -> Path:
    """The AppDaemon config dir an apps.yaml belongs to, so the CLI resolves relative paths
    exactly like the running app; the file's directory when there is no appdaemon.yaml."""
    for directory in apps_file.absolute().parents:
        if (directory / "appdaemon.yaml").is_file():
            return directory
    return apps_file.parent


def _find_app(apps: Mapping[Any, Any], path: Path) -> str:
    found = [
        str(name)
        for name, args in apps.items()
        if isinstance(args, Mapping)
        and (args.get("module") == APP_MODULE or args.get("class") == APP_CLASS)
    ]
    if len(found) != 1:
        which = "no app" if not found else f"several apps ({', '.join(found)})"
        raise ConfigError(
            f"{path}: {which} with module {APP_MODULE} or class {APP_CLASS}; name the app"
        )
    return found[0]


def _secrets_for(path: Path) -> Mapping[str, Any] | None:
    for candidate in (path.with_name("secrets.yaml"), path.parent.parent / "secrets.yaml"):
        if candidate.is_file():
            secrets = _read_yaml(candidate, None)
            if not isinstance(secrets, Mapping):
                raise ConfigError(f"{candidate}: expected a mapping of secret names to values")
            return secrets
    return None


def _read_yaml(path: Path, secrets: Mapping[str, Any] | None) -> Any:
    loader = _loader_class(path, secrets)
    try:
        with path.open(encoding="utf-8") as stream:
            return yaml.load(stream, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None


def _loader_class(path: Path, secrets: Mapping[str, Any] | None) -> type[yaml.SafeLoader]:
    """A SafeLoader that resolves !secret and !env_var, without touching yaml's global loaders."""

    def secret(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        name = loader.construct_scalar(node)  # type: ignore[arg-type]
        if secrets is None:
            raise ConfigError(f"{path}: !secret {name} used but there is no secrets.yaml")
        if name not in secrets:
            raise ConfigError(f"{path}: secret {name!r} not found in secrets.yaml")
        return secrets[name]

    def env_var(loader: yaml.SafeLoader, node: yaml.Node) -> str:
        name = loader.construct_scalar(node)  # type: ignore[arg-type]
        if name not in os.environ:
            raise ConfigError(f"{path}: environment variable {name!r} (!env_var) is not set")
        return os.environ[name]

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!secret", secret)
    Loader.add_constructor("!env_var", env_var)
    return Loader
