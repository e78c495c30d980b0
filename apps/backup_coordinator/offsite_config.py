"""Offsite targets in apps.yaml: where the repositories are copied, how and how often.

An offsite target names the host that holds the repositories (reached like a drone: the
ssh: block's values apply, the host's agent runs the copy), the repositories as that host sees
them, a destination, a tool and its options, and when to copy. A mistake in one target is a
``ConfigProblem`` for it alone. The destination and option rules mirror the agent's own
(``validate_job`` for ``offsite`` in drone_agent/backup_drone.py); tests/unit/test_offsite_config.py
keeps the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    REPOSITORY_ID_PATTERN,
    SLUG_PATTERN,
    SSH_BLOCK_KEYS,
    ConfigProblem,
    mapping_any_keys,
    missing_message,
    parse_drone_value,
    read_frequency,
    reject_unknown_keys,
    setting_value,
    ssh_target,
    strict_int,
)
from .locations import parse_location, path_components, repository_key
from .model import CopySettings, CopyTool, Mode, SshTarget, parse_mode
from .values import (
    CONTROL_CHARACTERS,
    InvalidValue,
    read_boolean,
    read_borg_rsh,
    read_lock_wait,
    read_mapping,
    read_matching,
    read_single_line,
    read_text,
    read_whole_number,
    shown,
)

TARGET_KEYS = frozenset(
    {
        "host",
        "repositories",
        "destination",
        "tool",
        "tool_options",
        "keep_replaced",
        "max_delete",
        "lock_wait",
        "mode",
        "frequency",
        "after_backups",
    }
    | SSH_BLOCK_KEYS
)
REPOSITORY_ENTRY_KEYS = frozenset({"path", "repository_id"})
MAX_REPOSITORIES = 32
MAX_TOOL_OPTIONS = 16
DESTINATION_MAX = 1024
DEFAULT_COPY_LOCK_WAIT = 600  # a backup may be finishing when the copy starts

RCLONE_REMOTE_PATTERN = re.compile(r"(?P<remote>[A-Za-z0-9_][A-Za-z0-9_.-]*):(?P<path>.*)", re.S)
RSYNC_SSH_PATTERN = re.compile(
    r"(?:(?P<user>[A-Za-z0-9_.][A-Za-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9._-]*):(?P<path>/(?!/).*)",
    re.S,
)
RATE_PATTERN = re.compile(r"[0-9]+(?:\.[0-9]+)?[KMGkmg]?")


@dataclass(frozen=True)
class OffsiteRepository:
    path: str  # as the target's host sees it
    repository_id: str | None = None

    @property
    def name(self) -> str:
        """The folder the copy goes into at the destination."""
        return path_components(self.path)[-1]


@dataclass(frozen=True)
class OffsiteTargetConfig:
    name: str
    ssh: SshTarget
    repositories: tuple[OffsiteRepository, ...]
    destination: str
    tool: CopyTool
    tool_options: tuple[str, ...] = ()
    keep_replaced: bool = False
    max_delete: int | None = None
    lock_wait: int = DEFAULT_COPY_LOCK_WAIT
    after_backups: bool = True
    settings: CopySettings = field(default_factory=CopySettings)

    def repository_key(self, repository: OffsiteRepository) -> str:
        """The key a drone writing into this repository has too (see DroneConfig)."""
        if repository.repository_id is not None:
            return f"id:{repository.repository_id}"
        location = parse_location(repository.path)
        assert location is not None  # checked when read
        return repository_key(location, self.ssh.host)

    @property
    def repository_keys(self) -> tuple[str, ...]:
        return tuple(self.repository_key(r) for r in self.repositories)


# ---------------------------------------------------------------------------------------------
# Targets


def parse_offsite_targets(
    value: object, ssh_defaults: Mapping[str, Any], base_dir: Path, taken_names: frozenset[str]
) -> tuple[tuple[OffsiteTargetConfig, ...], tuple[ConfigProblem, ...]]:
    """The ``offsite:`` section; ``taken_names`` are the drones' (their entities would clash)."""
    if value is None:
        return (), ()
    section = mapping_any_keys("offsite", value)
    targets: list[OffsiteTargetConfig] = []
    problems: list[ConfigProblem] = []
    for name in sorted(section, key=str):
        try:
            targets.append(parse_target(name, section[name], ssh_defaults, base_dir, taken_names))
        except InvalidValue as error:
            problems.append(ConfigProblem(str(name), error.key, error.message, "offsite target"))
    return tuple(targets), tuple(problems)


def parse_target(
    name: object,
    value: object,
    ssh_defaults: Mapping[str, Any],
    base_dir: Path,
    taken_names: frozenset[str] = frozenset(),
) -> OffsiteTargetConfig:
    if not isinstance(name, str) or not SLUG_PATTERN.fullmatch(name):
        raise InvalidValue(
            "name",
            "an offsite target's name must be a slug: a lowercase letter, then up to 30 "
            f"lowercase letters, digits or _, got {shown(name)}",
        )
    if name in taken_names:
        raise InvalidValue(
            "name", f"{name!r} is also a drone's name (or reserved); their entities would clash"
        )
    own = read_mapping(f"offsite.{name}", value)
    reject_unknown_keys("", own, TARGET_KEYS)
    merged = {**{k: v for k, v in ssh_defaults.items() if k in SSH_BLOCK_KEYS}, **own}
    for required in ("host", "repositories", "destination", "tool", "client_key", "known_hosts"):
        if required not in merged:
            raise InvalidValue(required, missing_message(required))
    ssh_values = {
        key: parse_drone_value(key, key, raw, base_dir)
        for key, raw in merged.items()
        if key in SSH_BLOCK_KEYS or key == "host"
    }
    tool = _tool(merged["tool"])
    repositories = _repositories(merged["repositories"])
    settings = CopySettings(
        mode=setting_value(
            "mode", parse_mode, read_text("mode", merged.get("mode", Mode.SCHEDULED))
        ),
        frequency_minutes=read_frequency("frequency", merged.get("frequency", 1440)),
    )
    return OffsiteTargetConfig(
        name=name,
        ssh=ssh_target(ssh_values),
        repositories=repositories,
        destination=read_destination("destination", merged["destination"], tool),
        tool=tool,
        tool_options=read_tool_options("tool_options", merged.get("tool_options", []), tool),
        keep_replaced=read_boolean("keep_replaced", merged.get("keep_replaced", False)),
        max_delete=_max_delete(merged.get("max_delete")),
        lock_wait=read_lock_wait("lock_wait", merged.get("lock_wait", DEFAULT_COPY_LOCK_WAIT)),
        after_backups=read_boolean("after_backups", merged.get("after_backups", True)),
        settings=settings,
    )


def _tool(value: object) -> CopyTool:
    try:
        return CopyTool(str(value))
    except ValueError:
        raise InvalidValue("tool", f"must be rclone or rsync, got {shown(value)}") from None


def _max_delete(value: object) -> int | None:
    if value is None:
        return None
    strict_int("max_delete", value, "a whole number of files")
    return read_whole_number("max_delete", value, 0)


def _repositories(value: object) -> tuple[OffsiteRepository, ...]:
    key = "repositories"
    if not isinstance(value, list) or not value:
        raise InvalidValue(key, f"must be a list of repository paths, got {shown(value)}")
    if len(value) > MAX_REPOSITORIES:
        raise InvalidValue(key, f"must list at most {MAX_REPOSITORIES}, got {len(value)}")
    repositories = tuple(_repository(f"{key}[{i}]", entry) for i, entry in enumerate(value))
    names: dict[str, int] = {}
    for index, repository in enumerate(repositories):
        if repository.name in names:
            raise InvalidValue(
                f"{key}[{index}]",
                f"ends in {repository.name!r} like {key}[{names[repository.name]}]: both would be"
                " copied into one folder at the destination",
            )
        names[repository.name] = index
    return repositories


def _repository(key: str, value: object) -> OffsiteRepository:
    if isinstance(value, Mapping):
        entry = read_mapping(key, value)
        reject_unknown_keys(f"{key}.", entry, REPOSITORY_ENTRY_KEYS)
        if "path" not in entry:
            raise InvalidValue(f"{key}.path", "required")
        repository_id = entry.get("repository_id")
        return OffsiteRepository(
            local_path(f"{key}.path", entry["path"]),
            None
            if repository_id is None
            else read_matching(
                f"{key}.repository_id",
                repository_id,
                REPOSITORY_ID_PATTERN,
                "a name for the repository: letters, digits, ._-",
            ),
        )
    return OffsiteRepository(local_path(key, value))


def local_path(key: str, value: object) -> str:
    """An absolute path on the target's host, without ``..``, not the root itself."""
    text = read_single_line(key, value, "an absolute path on the target's host")
    if not text.startswith("/") or not path_components(text):
        raise InvalidValue(key, f"must be an absolute path below /, got {shown(value)}")
    if ".." in path_components(text):
        raise InvalidValue(key, f"must not contain '..', got {shown(value)}")
    return text


# ---------------------------------------------------------------------------------------------
# Destinations and tool options (the agent checks the same rules again)


def read_destination(key: str, value: object, tool: CopyTool) -> str:
    text = read_single_line(key, value, "a destination", DESTINATION_MAX)
    if CONTROL_CHARACTERS.search(text) or text.startswith("-"):
        raise InvalidValue(key, f"must not start with '-', got {shown(value)}")
    if text.startswith("/"):
        return local_path(key, text)
    if tool is CopyTool.RCLONE:
        match = RCLONE_REMOTE_PATTERN.fullmatch(text)
        what = "an absolute path or an rclone remote:path (remote: letters, digits, _.-)"
    else:
        match = RSYNC_SSH_PATTERN.fullmatch(text)
        what = "an absolute path or [user@]host:/absolute/path (rsync over ssh)"
    if match is None:
        raise InvalidValue(key, f"must be {what}, got {shown(value)}")
    if ".." in path_components(match["path"]):
        raise InvalidValue(key, f"must not contain '..', got {shown(value)}")
    return text


def _rate(key: str, value: str) -> None:
    if not RATE_PATTERN.fullmatch(value):
        raise InvalidValue(key, f"must be a rate like 10M or 512K, got {value!r}")


def _count_between(low: int, high: int) -> Any:
    def check(key: str, value: str) -> None:
        if not value.isdigit() or not low <= int(value) <= high:
            raise InvalidValue(key, f"must be a whole number from {low} to {high}, got {value!r}")

    return check


def _absolute(key: str, value: str) -> None:
    local_path(key, value)


def _rsh(key: str, value: str) -> None:
    read_borg_rsh(key, value)


# option -> check of its value (None: a flag without a value)
TOOL_OPTIONS: Mapping[CopyTool, Mapping[str, Any]] = {
    CopyTool.RCLONE: {
        "--bwlimit": _rate,
        "--transfers": _count_between(1, 64),
        "--checkers": _count_between(1, 64),
        "--tpslimit": _count_between(1, 1000),
        "--config": _absolute,
        "--fast-list": None,
    },
    CopyTool.RSYNC: {
        "--bwlimit": _rate,
        "--compress": None,
        "--rsh": _rsh,
        "--timeout": _count_between(1, 86400),
    },
}


def read_tool_options(key: str, value: object, tool: CopyTool) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidValue(key, f"must be a list of options like --bwlimit=10M, got {shown(value)}")
    if len(value) > MAX_TOOL_OPTIONS:
        raise InvalidValue(key, f"must have at most {MAX_TOOL_OPTIONS} entries")
    return tuple(_tool_option(f"{key}[{i}]", entry, tool) for i, entry in enumerate(value))


def _tool_option(key: str, value: object, tool: CopyTool) -> str:
    text = read_single_line(key, value, "an option")
    name, equals, argument = text.partition("=")
    allowed = TOOL_OPTIONS[tool]
    if name not in allowed:
        raise InvalidValue(
            key,
            f"{tool.value} option {name!r} is not allowed; allowed: {', '.join(sorted(allowed))}",
        )
    check = allowed[name]
    if check is None:
        if equals:
            raise InvalidValue(key, f"{name} takes no value, got {shown(value)}")
    elif not equals:
        raise InvalidValue(key, f"{name} needs a value: {name}=VALUE")
    else:
        check(key, argument)
    return text
