#!/usr/bin/env python3
"""backup-drone: the only program that runs borg on this host.

Installed as the forced command of one SSH key, it lets the coordinator ask for one of a few
operations (the table OPERATION_TABLE below) and nothing else. The job arrives as one JSON line
on stdin, is validated completely (and checked against the host's policy file) before anything
runs, and the agent answers with JSON lines on stdout (docs/protocol.md). A ``sequence`` runs
several operations as steps of one request. Run by hand (``backup_drone.py create --job
job.json``) it does the same and prints readable progress.

Python standard library only; runs on Python 3.9 to 3.13 with borg 1.2 or 1.4. It starts for
every request, so it imports only what every request needs (typing is for the type checker only;
rarely needed modules are imported where they are used).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

TYPE_CHECKING = False  # typing costs start-up time and is only needed by the type checker
if TYPE_CHECKING:
    import argparse
    from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

AGENT_VERSION = "1.3.0"
PROTOCOL_VERSION = 2  # the newest protocol this agent speaks
SUPPORTED_PROTOCOLS = (1, 2)
SEQUENCE = "sequence"
# OPERATIONS (every word the agent accepts) and STEP_OPERATIONS (what a sequence may run) come
# from OPERATION_TABLE, next to the functions it names (section "The operations").
RESERVED_OPERATIONS: Tuple[str, ...] = ()
DEFAULT_POLICY_PATH = "/etc/backup-drone/policy.json"

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_FAILED = 2
EXIT_REJECTED = 3

JOB_LINE_LIMIT = 1024 * 1024
# Bounds on what the agent keeps and sends, so that a result line stays well under 1 MiB (about
# 300 kB at most) however much borg prints: the longest borg line read as one (a longer one
# arrives in pieces), the longest message passed on, and the JSON bytes of each list in a
# result (list's archives, prune's kept and pruned names, check's findings).
BORG_LINE_LIMIT = 1024 * 1024
MESSAGE_MAX_CHARS = 8192
RESULT_LIST_BUDGET = 96 * 1024
JOB_READ_TIMEOUT = 30.0
# After SIGINT borg writes a checkpoint and releases its lock; give it time, then escalate.
SIGINT_GRACE = 30.0
SIGTERM_GRACE = 10.0
# How long to wait for borg's pipes to close after borg itself exited (an ssh child may hold them).
PIPE_DRAIN_TIMEOUT = 5.0


# ---------------------------------------------------------------------------------------------
# Validation: the job, the operation and the policy. Nothing runs before all of it passed.
# ---------------------------------------------------------------------------------------------


class Rejected(Exception):
    """A request the agent refuses to run. ``field`` names what was wrong; the message never
    repeats the offending value (it may be a passphrase)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


# Plain classes rather than dataclasses: importing dataclasses is the largest part of the
# agent's start-up time, paid by every request.


class KeepRules:
    """prune's rules: ``within`` and the non-zero counts as (rule, count), in borg's order."""

    __slots__ = ("counts", "within")

    def __init__(
        self, within: Optional[str] = None, counts: Tuple[Tuple[str, int], ...] = ()
    ) -> None:
        self.within = within
        self.counts = counts

    def is_empty(self) -> bool:
        return self.within is None and not self.counts


class Job:
    """A validated job. A field the job left out has the default given here."""

    __slots__ = (
        "archive",
        "archive_prefix",
        "borg_remote_path",
        "borg_rsh",
        "check",
        "compression",
        "destination",
        "drill",
        "exclude_if_present",
        "exclude_patterns",
        "keep",
        "keep_replaced",
        "lock_wait",
        "max_delete",
        "one_file_system",
        "passphrase",
        "paths",
        "protocol",
        "repositories",
        "repository",
        "restore_paths",
        "steps",
        "tool",
        "tool_options",
    )

    def __init__(
        self,
        *,
        protocol: int = PROTOCOL_VERSION,
        steps: Tuple[str, ...] = (),
        repository: str = "",
        passphrase: Optional[str] = None,
        archive_prefix: str = "",
        paths: Tuple[str, ...] = (),
        exclude_patterns: Tuple[str, ...] = (),
        exclude_if_present: Tuple[str, ...] = (".nobackup",),
        one_file_system: bool = False,
        compression: str = "",
        keep: Optional[KeepRules] = None,
        lock_wait: int = 60,
        borg_rsh: str = "",
        borg_remote_path: str = "",
        repositories: Tuple[str, ...] = (),
        tool: str = "",
        destination: str = "",
        tool_options: Tuple[str, ...] = (),
        keep_replaced: bool = False,
        max_delete: Optional[int] = None,
        archive: str = "",
        restore_paths: Tuple[str, ...] = (),
        drill: Optional[DrillSpec] = None,
        check: Optional[CheckOptions] = None,
    ) -> None:
        self.protocol = protocol
        self.steps = steps
        self.repository = repository
        self.passphrase = passphrase
        self.archive_prefix = archive_prefix
        self.paths = paths
        self.exclude_patterns = exclude_patterns
        self.exclude_if_present = exclude_if_present
        self.one_file_system = one_file_system
        self.compression = compression
        self.keep = keep or KeepRules()
        self.lock_wait = lock_wait
        self.borg_rsh = borg_rsh
        self.borg_remote_path = borg_remote_path
        self.repositories = repositories  # offsite: local repositories, copied in this order
        self.tool = tool
        # offsite: where the copies go; extract: the directory restored into ("" a fresh one)
        self.destination = destination
        self.tool_options = tool_options
        self.keep_replaced = keep_replaced
        self.max_delete = max_delete
        self.archive = archive
        self.restore_paths = restore_paths
        self.drill = drill or DrillSpec()
        self.check = check or CheckOptions()

    def __repr__(self) -> str:  # never the passphrase
        shown = (
            f"{name}={getattr(self, name)!r}" for name in self.__slots__ if name != "passphrase"
        )
        return f"Job({', '.join(shown)})"


class Location:
    """A borg repository location reduced to what policy matching compares."""

    __slots__ = ("authority", "components", "root")

    def __init__(self, authority: str, root: str, components: Tuple[str, ...]) -> None:
        self.authority = authority  # "" for a local path, else "[user@]host[:port]" as written
        # Where the path starts, as borg's server resolves it: "/" (absolute), "." (the login
        # directory: "host:path", "ssh://host/./path"), "~/" (borg's base directory: "~/path",
        # "/~/path") or "~NAME" (a user's home: "~zoe/path", "/~zoe", bare "~" or "/~").
        self.root = root
        self.components = components


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
ARCHIVE_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEEP_WITHIN = re.compile(r"^[1-9][0-9]{0,5}[Hdwmy]$")
KEEP_COUNT_RULES = ("hourly", "daily", "weekly", "monthly", "yearly")
KEEP_COUNT_MAX = 1000000
COMPRESSION = re.compile(
    r"^(auto,)?(none|lz4|zstd(,([1-9]|1[0-9]|2[0-2]))?|zlib(,[0-9])?|lzma(,[0-9])?)$"
)
REMOTE_PATH = re.compile(r"^[A-Za-z0-9_./+][A-Za-z0-9_./+-]*$")
# borg 1.2/1.4 locations: ssh://[user@]host[:port]/path and scp style [user@]host:path (borg
# makes the user optional in both). Host: a name (no leading "-": ssh would read an option)
# or an IPv6 address in brackets. The path is checked for "::" and ".." afterwards.
_USER = r"(?:(?P<user>[A-Za-z0-9_.][A-Za-z0-9_.-]*)@)?"
_HOST = r"(?P<host>[A-Za-z0-9][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])"
SSH_URL = re.compile(r"ssh://" + _USER + _HOST + r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/.*)", re.S)
# Like borg, the scp path must not start with ":" or "//" (so "ssh://..." is never scp style).
SCP_STYLE = re.compile(_USER + _HOST + r":(?!:|//)(?P<path>.+)", re.S)
IPV6_ADDRESS = re.compile(r"\[[0-9A-Fa-f:.]+\]")
# BORG_RSH is a command borg executes: ssh itself (from PATH, as borg would run it, or
# /usr/bin/ssh), with options that neither run other programs (ProxyCommand, LocalCommand, ...)
# nor weaken host key checking. -A is left out: it would forward an agent to a host the job names.
RSH_PROGRAMS = ("ssh", "/usr/bin/ssh")
RSH_FLAGS = {"-4", "-6", "-a", "-C", "-q", "-T", "-x"}
RSH_OPTIONS_WITH_VALUE = {"-i", "-p", "-o"}
RSH_SAFE_SSH_OPTIONS = {
    "batchmode",
    "compression",
    "connectionattempts",
    "connecttimeout",
    "identitiesonly",
    "identityfile",
    "loglevel",
    "port",
    "serveralivecountmax",
    "serveraliveinterval",
    "stricthostkeychecking",  # only "yes"
    "userknownhostsfile",  # only with StrictHostKeyChecking=yes, never /dev/null
}
# -o KEY=VALUE as one word: ssh would also read "KEY VALUE" and "KEY = VALUE"; one form only.
RSH_OPTION = re.compile(r"(?P<key>[A-Za-z]+)=(?P<value>[^\s\"'=]+)")
RSH_PORT = re.compile(r"[1-9][0-9]{0,4}")
# borg reads a pattern's style from two letters or digits and ":" (fm: when there is none).
PATTERN_STYLE = re.compile(r"(?P<style>[A-Za-z0-9]{2}):")
PATTERN_STYLES = ("fm", "sh", "pp", "pf")
PATTERN_MAX_STARS = 3


def require_text(value: object, name: str, max_length: int = 4096) -> str:
    if not isinstance(value, str):
        raise Rejected(name, "must be a string")
    if not value:
        raise Rejected(name, "must not be empty")
    if len(value) > max_length:
        raise Rejected(name, f"must be at most {max_length} characters")
    if CONTROL_CHARACTERS.search(value):
        raise Rejected(name, "must not contain control characters")
    if not is_encodable(value):
        raise Rejected(name, "must be valid text")
    return value


def is_encodable(value: str) -> bool:
    """Whether the string can become argv/env bytes (lone surrogates other than the
    surrogateescape range cannot)."""
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def require_list(value: object, name: str, max_items: int) -> List[object]:
    if not isinstance(value, list):
        raise Rejected(name, "must be a list")
    if len(value) > max_items:
        raise Rejected(name, f"must have at most {max_items} entries")
    return value


def require_int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected(name, "must be an integer")
    if not low <= value <= high:
        raise Rejected(name, f"must be between {low} and {high}")
    return value


def require_match(value: object, name: str, pattern: re.Pattern[str], expected: str) -> str:
    text = require_text(value, name, 256)
    if not pattern.match(text):
        raise Rejected(name, f"must be {expected}")
    return text


def path_components(path: str) -> Tuple[str, ...]:
    return tuple(part for part in path.split("/") if part not in ("", "."))


def require_absolute_path(value: object, name: str) -> str:
    path = require_text(value, name)
    if not path.startswith("/"):
        raise Rejected(name, "must be an absolute path")
    if ".." in path_components(path):
        raise Rejected(name, "must not contain '..'")
    return path


def split_location(text: str) -> Optional[Tuple[str, str, Optional[str]]]:
    """A repository location -> (authority, path, port): authority "" for a local path."""
    if text.startswith("/"):
        return "", text, None
    for pattern in (SSH_URL, SCP_STYLE):
        match = pattern.fullmatch(text)
        if match:
            user, port = match["user"], match.groupdict().get("port")
            authority = (f"{user}@" if user else "") + match["host"] + (f":{port}" if port else "")
            return authority, match["path"], port
    return None


def remote_root(path: str) -> Tuple[str, str]:
    """Where borg's server starts a remote path (see Location.root), and the rest."""
    if path.startswith(("/~/", "~/")):
        return "~/", path.split("/~/", 1)[1] if path.startswith("/") else path[2:]
    if path.startswith(("/~", "~")):
        first, _, rest = path.lstrip("/").partition("/")
        return first, rest
    if path.startswith("/./"):
        return ".", path[3:]
    if path.startswith("/"):
        return "/", path
    return ".", path


def parse_location(text: str) -> Optional[Location]:
    parts = split_location(text)
    if parts is None:
        return None
    authority, path, _port = parts
    root, rest = ("/", path) if not authority else remote_root(path)
    return Location(authority, root, path_components(rest))


LOCATION_FORMS = "an absolute path, ssh://[user@]host[:port]/path or [user@]host:path"


def validate_repository(value: object, name: str) -> str:
    text = require_text(value, name)
    if text.startswith("-"):
        raise Rejected(name, "must not start with '-'")
    if "{" in text or "}" in text:
        # borg expands placeholders in a location ({hostname}, {now:FORMAT}, ...) after the
        # policy check: {now:..} would become "..".
        raise Rejected(name, "must not contain '{' or '}' (borg placeholders)")
    parts = split_location(text)
    if parts is None:
        if "::" in IPV6_ADDRESS.sub("", text):
            raise Rejected(name, "must not contain '::'")
        raise Rejected(name, f"must be {LOCATION_FORMS}")
    _authority, path, port = parts
    if "::" in path:  # "::" separates borg's archive name
        raise Rejected(name, "must not contain '::'")
    if port is not None and not 1 <= int(port) <= 65535:
        raise Rejected(name, "port must be between 1 and 65535")
    location = parse_location(text)
    if location is None or ".." in location.components:
        raise Rejected(name, "must not contain '..'")
    return text


def validate_passphrase(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise Rejected(name, "must be a string")
    if len(value) > 4096 or "\x00" in value or not is_encodable(value):
        raise Rejected(name, "must be text of at most 4096 characters without NUL")
    return value


def validate_paths(value: object, name: str) -> Tuple[str, ...]:
    items = require_list(value, name, 1000)
    if not items:
        raise Rejected(name, "must not be empty")
    return tuple(require_absolute_path(item, f"{name}[{i}]") for i, item in enumerate(items))


def validate_exclude_patterns(value: object, name: str) -> Tuple[str, ...]:
    items = require_list(value, name, 1000)
    patterns = tuple(require_text(item, f"{name}[{i}]") for i, item in enumerate(items))
    for i, pattern in enumerate(patterns):
        check_exclude_pattern(pattern, f"{name}[{i}]")
    return patterns


def check_exclude_pattern(pattern: str, name: str) -> None:
    """borg matches every pattern against every file: one that backtracks could keep borg busy
    for hours. Regular expressions (re:) are refused; shell and fnmatch patterns may hold a few
    ``*`` (borg's sh: translation backtracks polynomially in their number)."""
    style = PATTERN_STYLE.match(pattern)
    kind = style["style"] if style else "fm"  # borg reads a pattern without a style as fm:
    if kind == "re":
        raise Rejected(name, "re: patterns are not accepted (use sh:, fm:, pp: or pf:)")
    if kind not in PATTERN_STYLES:
        raise Rejected(name, "unknown pattern style (use sh:, fm:, pp: or pf:)")
    if kind in ("sh", "fm") and pattern.count("*") > PATTERN_MAX_STARS:
        raise Rejected(name, f"may contain at most {PATTERN_MAX_STARS} '*' ('**' counts as two)")


def validate_exclude_if_present(value: object, name: str) -> Tuple[str, ...]:
    items = require_list(value, name, 100)
    names = tuple(require_text(item, f"{name}[{i}]", 255) for i, item in enumerate(items))
    for i, file_name in enumerate(names):
        if "/" in file_name or file_name in (".", ".."):
            raise Rejected(f"{name}[{i}]", "must be a plain file name")
    return names


def validate_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise Rejected(name, "must be true or false")
    return value


def validate_keep(value: object, name: str) -> KeepRules:
    if not isinstance(value, dict):
        raise Rejected(name, "must be an object")
    for key in value:
        if key != "within" and key not in KEEP_COUNT_RULES:
            raise Rejected(f"{name}.{key[:64]}", "unknown keep rule")
    within = None
    if "within" in value:
        within = require_match(
            value["within"], f"{name}.within", KEEP_WITHIN, "a number and a unit H, d, w, m or y"
        )
    counts = tuple(
        (rule, require_int(value[rule], f"{name}.{rule}", 0, KEEP_COUNT_MAX))
        for rule in KEEP_COUNT_RULES
        if rule in value
    )
    return KeepRules(within, tuple((rule, count) for rule, count in counts if count))


def validate_borg_rsh(value: object, name: str) -> str:
    import shlex  # only jobs with a borg_rsh need it

    text = require_text(value, name, 1024)
    try:
        words = shlex.split(text)  # as borg splits BORG_RSH
    except ValueError:
        raise Rejected(name, "is not a valid command line") from None
    if not words or words[0] not in RSH_PROGRAMS:
        raise Rejected(name, "must start with ssh or /usr/bin/ssh")
    check_rsh_options(words[1:], name)
    return text


def check_rsh_options(words: Sequence[str], name: str) -> None:
    options: Dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if word in RSH_FLAGS:
            index += 1
            continue
        if word not in RSH_OPTIONS_WITH_VALUE or index + 1 >= len(words):
            raise Rejected(
                name, "may only use the ssh options -i, -p, -o and the flags -4 -6 -a -C -q -T -x"
            )
        argument = words[index + 1]
        if argument.startswith("-"):
            raise Rejected(name, "option values must not start with '-'")
        if word == "-p" and not is_port(argument):
            raise Rejected(name, "-p must be a port number between 1 and 65535")
        if word == "-o":
            key, option_value = rsh_option(argument, name)
            options.setdefault(key, option_value)
        index += 2
    check_host_key_options(options, name)


def is_port(text: str) -> bool:
    return bool(RSH_PORT.fullmatch(text)) and int(text) <= 65535


def rsh_option(argument: str, name: str) -> Tuple[str, str]:
    match = RSH_OPTION.fullmatch(argument)
    if not match:
        raise Rejected(name, "ssh -o options must be written KEY=VALUE (one word, no quotes)")
    key = match["key"].lower()
    if key not in RSH_SAFE_SSH_OPTIONS:
        raise Rejected(name, "uses an ssh -o option that is not allowed")
    if key == "port" and not is_port(match["value"]):
        raise Rejected(name, "Port must be a port number between 1 and 65535")
    if key == "stricthostkeychecking" and match["value"].lower() != "yes":
        raise Rejected(name, "StrictHostKeyChecking may only be yes: host keys are always verified")
    if key == "userknownhostsfile" and match["value"] == "/dev/null":
        raise Rejected(
            name, "UserKnownHostsFile must not be /dev/null: host keys are always verified"
        )
    return key, match["value"]


def check_host_key_options(options: Dict[str, str], name: str) -> None:
    """Another known_hosts file is only safe when ssh may not add keys to it (a host's ssh_config
    could say StrictHostKeyChecking=accept-new, which would then trust any key)."""
    if "userknownhostsfile" in options and "stricthostkeychecking" not in options:
        raise Rejected(name, "UserKnownHostsFile needs -o StrictHostKeyChecking=yes as well")


def rsh_ports(borg_rsh: str) -> List[str]:
    """Every port a validated borg_rsh names (-p PORT, -o Port=PORT), in order."""
    import shlex

    words = shlex.split(borg_rsh)
    ports = []
    for index in range(1, len(words) - 1):
        option, argument = words[index], words[index + 1]
        if option == "-p":
            ports.append(argument)
        elif option == "-o" and argument.lower().startswith("port="):
            ports.append(argument.split("=", 1)[1])
    return ports


def check_rsh_port(job: Job) -> None:
    """ssh takes the first port it is given, and borg puts BORG_RSH's words before the
    location's port: a port in borg_rsh would reach another port than the location (and the
    policy) names. So it may only repeat the location's port; a location without a port (ssh's
    own choice for that host) accepts none. A local repository never runs ssh."""
    if not job.borg_rsh or not job.repository:
        return
    parts = split_location(job.repository)
    if parts is None or not parts[0]:
        return
    location_port = parts[2]
    for port in rsh_ports(job.borg_rsh):
        if location_port is None:
            raise Rejected(
                "borg_rsh", "must not set a port: write it in the repository location instead"
            )
        if int(port) != int(location_port):
            raise Rejected("borg_rsh", "sets a port other than the repository location's")


def validate_remote_path(value: object, name: str) -> str:
    return require_match(value, name, REMOTE_PATH, "a plain command or path (no spaces)")


def validate_protocol(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in SUPPORTED_PROTOCOLS:
        speaks = " and ".join(map(str, SUPPORTED_PROTOCOLS))
        raise Rejected(name, f"unsupported protocol version, this agent speaks {speaks}")
    return value


def validate_steps(value: object, name: str) -> Tuple[str, ...]:
    items = require_list(value, name, len(STEP_OPERATIONS))
    if not items:
        raise Rejected(name, "must name at least one step")
    steps: List[str] = []
    for i, item in enumerate(items):
        if item not in STEP_OPERATIONS:
            raise Rejected(f"{name}[{i}]", "must be one of " + ", ".join(STEP_OPERATIONS))
        if item in steps:
            raise Rejected(f"{name}[{i}]", "names a step that is already listed")
        steps.append(str(item))
    return tuple(steps)


# -- Restore and drills: the fields of extract, drill and check's options ----------------------

LATEST_ARCHIVE = "latest"
ARCHIVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,254}$")
RESTORE_PATHS_MAX = 256
DRILL_SIZE_BUDGET = 64 * 1024 * 1024
DRILL_MAX_FILES = 100
DRILL_FILES_LIMIT = 1000  # the most files one drill may sample (they all go into borg's argv)
DRILL_CANARIES_MAX = 100
CHECK_MAX_DURATION = 7 * 86400


class DrillSpec:
    """What a drill samples: ``seed`` makes the sample repeatable; at most ``max_files``
    regular files of at most ``size_budget`` bytes in all, plus every canary."""

    __slots__ = ("canaries", "max_files", "seed", "size_budget")

    def __init__(
        self,
        seed: int = 0,
        size_budget: int = DRILL_SIZE_BUDGET,
        max_files: int = DRILL_MAX_FILES,
        canaries: Tuple[str, ...] = (),
    ) -> None:
        self.seed = seed
        self.size_budget = size_budget
        self.max_files = max_files
        self.canaries = canaries


class CheckOptions:
    """check's options: ``verify_data`` reads and verifies every chunk; ``max_duration``
    (seconds) checks only the repository's segments, for at most that long."""

    __slots__ = ("max_duration", "verify_data")

    def __init__(self, verify_data: bool = False, max_duration: Optional[int] = None) -> None:
        self.verify_data = verify_data
        self.max_duration = max_duration


def validate_archive(value: object, name: str) -> str:
    """``latest`` or an archive name (whether it is one of the job's prefix is checked once
    the whole job is known: check_archive_of_prefix)."""
    return require_match(value, name, ARCHIVE_NAME, f"{LATEST_ARCHIVE} or an archive name")


def check_archive_of_prefix(job: Job) -> None:
    """An archive named exactly must be one of the job's prefix, matched as prune and list
    match it (``web`` never reaches ``web-db-...``)."""
    if not job.archive or job.archive == LATEST_ARCHIVE:
        return
    import fnmatch  # only exact restores need it

    if not job.archive_prefix or not fnmatch.fnmatchcase(
        job.archive, archive_glob(job.archive_prefix)
    ):
        raise Rejected("archive", "must be latest or an archive of the job's archive_prefix")


def validate_restore_paths(value: object, name: str) -> Tuple[str, ...]:
    """Paths inside the archive as borg stores them: relative, no '..', no control characters."""
    items = require_list(value, name, RESTORE_PATHS_MAX)
    paths = tuple(require_text(item, f"{name}[{i}]") for i, item in enumerate(items))
    for i, path in enumerate(paths):
        if path.startswith("/"):
            raise Rejected(f"{name}[{i}]", "must be relative, as the archive stores it")
        if ".." in path.split("/") or not path_components(path):
            raise Rejected(f"{name}[{i}]", "must name a path inside the archive (no '..')")
    return paths


def validate_drill(value: object, name: str) -> DrillSpec:
    if not isinstance(value, dict):
        raise Rejected(name, "must be an object")
    known = ("seed", "size_budget", "max_files", "canaries")
    for key in value:
        if key not in known:
            raise Rejected(f"{name}.{str(key)[:64]}", "unknown field")
    canaries = require_list(value.get("canaries", []), f"{name}.canaries", DRILL_CANARIES_MAX)
    return DrillSpec(
        seed=require_int(value.get("seed", 0), f"{name}.seed", 0, 2**63 - 1),
        size_budget=require_int(
            value.get("size_budget", DRILL_SIZE_BUDGET), f"{name}.size_budget", 0, 2**50
        ),
        max_files=require_int(
            value.get("max_files", DRILL_MAX_FILES), f"{name}.max_files", 0, DRILL_FILES_LIMIT
        ),
        canaries=tuple(
            require_absolute_path(item, f"{name}.canaries[{i}]") for i, item in enumerate(canaries)
        ),
    )


def validate_check_options(value: object, name: str) -> CheckOptions:
    if not isinstance(value, dict):
        raise Rejected(name, "must be an object")
    for key in value:
        if key not in ("verify_data", "max_duration"):
            raise Rejected(f"{name}.{str(key)[:64]}", "unknown field")
    verify_data = validate_bool(value.get("verify_data", False), f"{name}.verify_data")
    max_duration = value.get("max_duration")
    if max_duration is not None:
        max_duration = require_int(max_duration, f"{name}.max_duration", 1, CHECK_MAX_DURATION)
        if verify_data:
            # borg checks only the repository's segments within a time limit: no data verified
            raise Rejected(f"{name}.max_duration", "cannot be combined with verify_data")
    return CheckOptions(verify_data, max_duration)


FIELD_VALIDATORS: Dict[str, Callable[[object, str], Any]] = {
    "protocol": validate_protocol,
    "steps": validate_steps,
    "repository": validate_repository,
    "passphrase": validate_passphrase,
    "archive_prefix": lambda v, n: require_match(v, n, ARCHIVE_PREFIX, "letters, digits, . _ -"),
    "paths": validate_paths,
    "exclude_patterns": validate_exclude_patterns,
    "exclude_if_present": validate_exclude_if_present,
    "one_file_system": validate_bool,
    "compression": lambda v, n: require_match(v, n, COMPRESSION, "a borg compression spec"),
    "keep": validate_keep,
    "lock_wait": lambda v, n: require_int(v, n, 0, 86400),
    "borg_rsh": validate_borg_rsh,
    "borg_remote_path": validate_remote_path,
    "repositories": lambda v, n: validate_offsite_repositories(v, n),
    "tool": lambda v, n: validate_offsite_tool(v, n),
    "destination": lambda v, n: validate_destination(v, n),
    "tool_options": lambda v, n: validate_tool_options(v, n),
    "keep_replaced": validate_bool,
    "max_delete": lambda v, n: validate_max_delete(v, n),
    "archive": validate_archive,
    "restore_paths": validate_restore_paths,
    "drill": validate_drill,
    "check": validate_check_options,
}
# A field whose meaning depends on the operation, validated as that operation reads it (else as
# FIELD_VALIDATORS says): extract's destination is a local directory to restore into, where
# offsite's is any place its tool copies to (check_offsite_job adds the forms of that tool).
OPERATION_FIELD_VALIDATORS: Dict[Tuple[str, str], Callable[[object, str], Any]] = {
    ("extract", "destination"): require_absolute_path,
}


def field_validator(operation: str, name: str) -> Callable[[object, str], Any]:
    return OPERATION_FIELD_VALIDATORS.get((operation, name), FIELD_VALIDATORS[name])


def validate_job(operation: str, raw: object) -> Job:
    """The job object of one request -> a Job; raises Rejected naming the first bad field."""
    if not isinstance(raw, dict):
        raise Rejected("job", "must be a JSON object")
    unknown = sorted(key for key in raw if key not in FIELD_VALIDATORS)
    if unknown:
        raise Rejected(unknown[0][:64] or "job", "unknown field")
    if "protocol" not in raw:
        raise Rejected("protocol", "is required")
    values = {
        name: field_validator(operation, name)(raw[name], name)
        for name in FIELD_VALIDATORS
        if name in raw
    }
    job = Job(**values)
    check_rsh_port(job)
    check_offsite_job(operation, job, raw)
    check_archive_of_prefix(job)
    check_steps_field(operation, job, "steps" in raw)
    check_required_fields(operation, job)
    return job


def check_steps_field(operation: str, job: Job, given: bool) -> None:
    """``steps`` belongs to ``sequence`` (protocol 2 and later) and to nothing else."""
    if operation != SEQUENCE:
        if given:
            raise Rejected("steps", f"is only valid for {SEQUENCE}")
        return
    if job.protocol < 2:
        raise Rejected("protocol", f"{SEQUENCE} needs protocol 2 or later")
    if not given:
        raise Rejected("steps", f"is required for {SEQUENCE}")


def check_required_fields(operation: str, job: Job) -> None:
    """Every field that the operation, or each step of a sequence, requires (the registry says
    which), checked in the order the steps run."""
    for name in job.steps or (operation,):
        for field_name in REGISTRY[name].requires:
            if not is_set(getattr(job, field_name)):
                raise Rejected(field_name, missing_field_message(field_name, name))


def is_set(value: object) -> bool:
    return not value.is_empty() if isinstance(value, KeepRules) else bool(value)


def missing_field_message(field_name: str, operation: str) -> str:
    if field_name == "keep":
        return f"{operation} needs at least one keep rule"
    return f"is required for {operation}"


def requested_protocol(raw: object) -> int:
    """The protocol a job line asks for, when this agent speaks it (else the newest): what the
    hello line says, even when the job is then rejected for another reason."""
    asked = raw.get("protocol") if isinstance(raw, dict) else None
    if isinstance(asked, int) and not isinstance(asked, bool) and asked in SUPPORTED_PROTOCOLS:
        return asked
    return PROTOCOL_VERSION


def validate_operation(from_ssh: Optional[str], from_argv: Optional[str]) -> str:
    """SSH_ORIGINAL_COMMAND (when sshd set it) must be exactly one allowed word."""
    if from_ssh is not None and from_argv is not None and from_ssh != from_argv:
        raise Rejected("operation", "the SSH command and the configured operation differ")
    word = from_ssh if from_ssh is not None else from_argv
    if word is None:
        raise Rejected("operation", "no operation given")
    if word in RESERVED_OPERATIONS:
        raise Rejected("operation", f"{word} is not supported by this agent version")
    if word not in REGISTRY:
        raise Rejected("operation", "must be exactly one of " + ", ".join(OPERATIONS))
    return word


class Policy:
    """What the host admin allows; None means "no restriction" (no policy file, or the key left
    out). Local prefixes are stored resolved (symlinks followed), as jobs are checked."""

    __slots__ = (
        "archive_prefixes",
        "borg",
        "min_keep",
        "offsite",
        "operations",
        "paths",
        "repositories",
        "restore_anywhere",
        "restore_root",
    )

    def __init__(
        self,
        repositories: Optional[Tuple[Location, ...]] = None,
        paths: Optional[Tuple[Tuple[str, ...], ...]] = None,
        operations: Optional[Tuple[str, ...]] = None,
        borg: Optional[str] = None,
        archive_prefixes: Optional[Tuple[str, ...]] = None,
        min_keep: Optional[KeepRules] = None,
        offsite: Optional[OffsitePolicy] = None,
        restore_root: Optional[str] = None,
        restore_anywhere: bool = False,
    ) -> None:
        self.repositories = repositories
        self.paths = paths
        self.operations = operations
        self.borg = borg
        self.archive_prefixes = archive_prefixes
        self.min_keep = min_keep
        self.offsite = offsite  # None: no offsite key (offsite jobs refused when a file exists)
        self.restore_root = restore_root  # None: the default (see restore_root)
        self.restore_anywhere = restore_anywhere

    def from_file(self) -> bool:
        return self.repositories is not None  # a policy file always has ``repositories``


POLICY_KEYS = (
    "repositories",
    "paths",
    "operations",
    "borg",
    "archive_prefixes",
    "min_keep",
    "offsite",
    "restore_root",
    "restore_anywhere",
)
# borg's own units for --keep-within, in hours (borg 1.2 and 1.4: a month is 31 days).
WITHIN_HOURS = {"H": 1, "d": 24, "w": 24 * 7, "m": 24 * 31, "y": 24 * 365}


def load_policy(explicit_path: Optional[str]) -> Policy:
    path = explicit_path if explicit_path is not None else default_policy_path()
    if path is None:
        return Policy()
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError) as error:
        raise Rejected("policy", f"cannot read the policy file {path}: {error}") from None
    try:
        return parse_policy(raw)
    except Rejected as error:
        raise Rejected("policy", f"malformed policy file {path}: {error}") from None


def default_policy_path() -> Optional[str]:
    """The default policy file, or None only when it does not exist (lstat says ENOENT). Any
    other answer (a directory this user may not search, a dangling symlink, a loop) refuses
    every request: an unreadable policy must never mean "no restriction"."""
    try:
        os.lstat(DEFAULT_POLICY_PATH)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise Rejected(
            "policy", f"cannot look for the policy file {DEFAULT_POLICY_PATH}: {error.strerror}"
        ) from None
    return DEFAULT_POLICY_PATH


def parse_policy(raw: object) -> Policy:
    if not isinstance(raw, dict) or any(key not in POLICY_KEYS for key in raw):
        raise Rejected("policy", f"must be an object with the keys {', '.join(POLICY_KEYS)}")
    for key in ("repositories", "paths"):
        if key not in raw:
            raise Rejected(key, "is required")
    repositories = tuple(
        policy_location(item, f"repositories[{i}]")
        for i, item in enumerate(require_list(raw["repositories"], "repositories", 10000))
    )
    paths = tuple(
        resolved_components(require_absolute_path(item, f"paths[{i}]"))
        for i, item in enumerate(require_list(raw["paths"], "paths", 10000))
    )
    operations = None
    if "operations" in raw:
        items = require_list(raw["operations"], "operations", len(OPERATIONS))
        if any(item not in OPERATIONS for item in items):
            raise Rejected("operations", "must list operations of " + ", ".join(OPERATIONS))
        operations = tuple(str(item) for item in items)
    borg = None
    if "borg" in raw:
        borg = require_absolute_path(raw["borg"], "borg")
    return Policy(
        repositories,
        paths,
        operations,
        borg,
        policy_archive_prefixes(raw),
        policy_min_keep(raw),
        policy_offsite(raw),
        *policy_restore(raw),
    )


def policy_archive_prefixes(raw: Dict[str, Any]) -> Optional[Tuple[str, ...]]:
    if "archive_prefixes" not in raw:
        return None
    items = require_list(raw["archive_prefixes"], "archive_prefixes", 10000)
    return tuple(
        require_match(item, f"archive_prefixes[{i}]", ARCHIVE_PREFIX, "an archive prefix")
        for i, item in enumerate(items)
    )


def policy_min_keep(raw: Dict[str, Any]) -> Optional[KeepRules]:
    if "min_keep" not in raw:
        return None
    minimum = validate_keep(raw["min_keep"], "min_keep")
    if minimum.is_empty():
        raise Rejected("min_keep", "must name at least one rule with a count above 0")
    return minimum


def resolved_components(path: str) -> Tuple[str, ...]:
    """The path's components after following every symlink that exists on this host."""
    return path_components(os.path.realpath(path))


def policy_location(value: object, name: str) -> Location:
    location = job_location(validate_repository(value, name))
    assert location is not None  # validate_repository accepts only parseable locations
    return location


def job_location(repository: str) -> Optional[Location]:
    """A repository as the policy compares it: a local path resolved on this host (a symlink
    under an allowed prefix must not lead elsewhere); a remote one as written (its host
    resolves it)."""
    location = parse_location(repository)
    if location is not None and not location.authority:
        location.components = resolved_components(repository)
    return location


def is_under(components: Tuple[str, ...], prefix: Tuple[str, ...]) -> bool:
    return components[: len(prefix)] == prefix


def location_allowed(location: Location, allowed: Tuple[Location, ...]) -> bool:
    return any(
        location.authority == prefix.authority
        and location.root == prefix.root
        and is_under(location.components, prefix.components)
        for prefix in allowed
    )


def check_policy(policy: Policy, operation: str, job: Job) -> None:
    check_policy_operations(policy, operation, job)
    if job.repository and policy.repositories is not None:
        location = job_location(job.repository)
        if location is None or not location_allowed(location, policy.repositories):
            raise Rejected("repository", "not allowed by this host's policy")
    if policy.paths is not None:
        for i, path in enumerate(job.paths):
            components = resolved_components(path)
            if not any(is_under(components, prefix) for prefix in policy.paths):
                raise Rejected(f"paths[{i}]", "not allowed by this host's policy")
    check_policy_prefix(policy, job)
    check_policy_retention(policy, operation, job)
    check_policy_offsite(policy, operation, job)
    check_policy_restore(policy, operation, job)


def check_policy_operations(policy: Policy, operation: str, job: Job) -> None:
    """The policy's ``operations`` names what may run: each step of a sequence must be listed
    (``sequence`` itself needs no entry), and ``hello`` is always allowed."""
    if policy.operations is None or operation == "hello":
        return
    if operation != SEQUENCE and operation not in policy.operations:
        raise Rejected("operation", "not allowed by this host's policy")
    for i, step in enumerate(job.steps):
        if step not in policy.operations:
            raise Rejected(f"steps[{i}]", "not allowed by this host's policy")


def check_policy_prefix(policy: Policy, job: Job) -> None:
    """``archive_prefixes`` binds the key to its own archives: a job that names a prefix (create
    and prune must) names one of them."""
    if policy.archive_prefixes is None or not job.archive_prefix:
        return
    if job.archive_prefix not in policy.archive_prefixes:
        raise Rejected("archive_prefix", "not allowed by this host's policy")


def check_policy_retention(policy: Policy, operation: str, job: Job) -> None:
    """``min_keep``: a prune (alone or as a step) must keep at least what these rules keep."""
    if policy.min_keep is None or "prune" not in (job.steps or (operation,)):
        return
    rule = rule_below_minimum(job.keep, policy.min_keep)
    if rule is not None:
        raise Rejected(f"keep.{rule}", "keeps less than this host's policy requires (min_keep)")


def rule_below_minimum(keep: KeepRules, minimum: KeepRules) -> Optional[str]:
    """The first rule of ``minimum`` that ``keep`` does not reach, or None. ``keep`` reaches
    ``minimum`` when it has each of its rules with at least the same value (``within`` compared
    in borg's units). borg's prune then keeps every archive the minimum alone would keep:
    ``within`` keeps a longer span, and each count rule, applied in borg's order, skips the
    periods whose newest archive an earlier rule kept already, so a larger count and more
    earlier rules only take it further back."""
    if minimum.within is not None and (
        keep.within is None or within_hours(keep.within) < within_hours(minimum.within)
    ):
        return "within"
    counts = dict(keep.counts)
    for rule, count in minimum.counts:
        if counts.get(rule, 0) < count:
            return rule
    return None


def within_hours(within: str) -> int:
    return int(within[:-1]) * WITHIN_HOURS[within[-1]]


def parse_job_line(line: bytes) -> object:
    if len(line) > JOB_LINE_LIMIT:
        raise Rejected("job", f"the job line is longer than {JOB_LINE_LIMIT} bytes")
    if not line.strip():
        raise Rejected("job", "no job received")
    try:
        return json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        raise Rejected("job", "the job line is not valid JSON") from None


# ---------------------------------------------------------------------------------------------
# Building borg's command lines and environment (pure functions)
# ---------------------------------------------------------------------------------------------


def archive_name(prefix: str, now: float) -> str:
    """``PREFIX-YYYY-MM-DDTHH:MM:SS.ffffff`` in UTC for ``now`` (seconds since the epoch): to
    the microsecond, so two creates in the same second get different names."""
    seconds, micros = divmod(round(now * 1000000), 1000000)
    return f"{prefix}-{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{micros:06d}"


def archive_glob(prefix: str) -> str:
    """Matches this prefix's archives (and their checkpoints), named to the second (older
    agents) or to the microsecond, but not those of a longer prefix (``web`` must not match
    ``web-db-2024-...``), which a plain ``PREFIX-*`` would."""
    digits = "[0-9]"
    date = f"{digits * 4}-{digits * 2}-{digits * 2}T{digits * 2}:{digits * 2}:{digits * 2}"
    return f"{prefix}-{date}*"


def common_options(job: Job) -> List[str]:
    options = ["--log-json", f"--lock-wait={job.lock_wait}"]
    if job.borg_remote_path:
        options.append(f"--remote-path={job.borg_remote_path}")
    return options


def archive_filter(job: Job) -> List[str]:
    return [f"--glob-archives={archive_glob(job.archive_prefix)}"] if job.archive_prefix else []


def create_argv(borg: str, job: Job, name: str) -> List[str]:
    argv = [borg, "create", "--progress", "--json", *common_options(job)]
    if job.compression:
        argv.append(f"--compression={job.compression}")
    if job.one_file_system:
        argv.append("--one-file-system")
    argv += [f"--exclude={pattern}" for pattern in job.exclude_patterns]
    argv += [f"--exclude-if-present={marker}" for marker in job.exclude_if_present]
    return [*argv, "--", f"{job.repository}::{name}", *job.paths]


def prune_argv(borg: str, job: Job) -> List[str]:
    argv = [borg, "prune", "--list", *common_options(job), *archive_filter(job)]
    if job.keep.within:
        argv.append(f"--keep-within={job.keep.within}")
    argv += [f"--keep-{rule}={count}" for rule, count in job.keep.counts]
    return [*argv, "--", job.repository]


def compact_argv(borg: str, job: Job) -> List[str]:
    # --info: borg reports what compaction freed only at info level.
    return [borg, "compact", "--info", *common_options(job), "--", job.repository]


def info_argv(borg: str, job: Job) -> List[str]:
    return [borg, "info", "--json", *common_options(job), "--", job.repository]


def list_argv(borg: str, job: Job) -> List[str]:
    return [
        borg,
        "list",
        "--json",
        *common_options(job),
        *archive_filter(job),
        "--",
        job.repository,
    ]


def check_argv(borg: str, job: Job) -> List[str]:
    options = ["--verify-data"] if job.check.verify_data else []
    if job.check.max_duration is not None:  # borg allows a time limit for segments only
        options += ["--repository-only", f"--max-duration={job.check.max_duration}"]
    return [borg, "check", *common_options(job), *options, "--", job.repository]


# What borg gets from the agent's environment, and nothing else: where to find programs and
# the user's files, the temporary directory, the time zone (prune's days are local days) and
# where borg keeps its cache, config, security data and keys. Everything else is dropped: other
# BORG_* settings (BORG_RSH, BORG_REMOTE_PATH, BORG_LOGGING_CONF, BORG_*_I_KNOW_WHAT_I_AM_DOING,
# ...), PYTHON* (borg is a Python program), LANG/LC_* (which ssh clients may send).
BORG_INHERITED_ENVIRONMENT = (
    "PATH",
    "HOME",
    "TMPDIR",
    "TZ",
    "BORG_BASE_DIR",
    "BORG_CACHE_DIR",
    "BORG_CONFIG_DIR",
    "BORG_SECURITY_DIR",
    "BORG_KEYS_DIR",
)
# The host's own passphrase, for jobs without one (BORG_PASSPHRASE_FD is useless: borg gets no
# inherited file descriptors).
BORG_HOST_PASSPHRASE_ENVIRONMENT = ("BORG_PASSPHRASE", "BORG_PASSCOMMAND")
BORG_SAFE_ENVIRONMENT = {
    "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
    "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
    "BORG_DISPLAY_PASSPHRASE": "no",
    # borg 1.4 reads it: "modern" would turn errors and warnings into codes 3..127, which the
    # agent would misread. borg 1.2 ignores it.
    "BORG_EXIT_CODES": "legacy",
    # English UTF-8: the messages the agent parses (prune --list, compact) and file names.
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}


def borg_environment(base: Mapping[str, str], job: Job) -> Dict[str, str]:
    """borg's environment: the allow-listed part of the agent's (BORG_BASE_DIR etc. from the
    host) plus safe defaults; the passphrase goes here and never into argv."""
    inherited: Tuple[str, ...] = BORG_INHERITED_ENVIRONMENT
    if job.passphrase is None:
        inherited += BORG_HOST_PASSPHRASE_ENVIRONMENT
    env = {name: base[name] for name in inherited if name in base}
    env.update(BORG_SAFE_ENVIRONMENT)
    if job.passphrase is not None:
        env["BORG_PASSPHRASE"] = job.passphrase
    if job.borg_rsh:
        env["BORG_RSH"] = job.borg_rsh
    return env


# ---------------------------------------------------------------------------------------------
# Reading borg's output (pure functions)
# ---------------------------------------------------------------------------------------------

WARNING_LEVELS = ("WARNING", "ERROR", "CRITICAL")
ERROR_LEVELS = ("ERROR", "CRITICAL")
PRUNE_LINE = re.compile(
    r"^(?P<label>Keeping archive \(rule: [^)]*\):|Keeping checkpoint archive:"
    r"|Pruning archive \(\d+/\d+\):|Would prune:)\s+(?P<name>.+?)\s+"
    r"[A-Z][a-z]{2}, (?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2})"
    r"( (?P<offset>[+-]\d{4}))? \[[0-9a-f]+\]\s*$"
)
# The names borg's own `borg list` hides (without --consider-checkpoints).
CHECKPOINT_NAME = re.compile(r"\.checkpoint(\.\d+)?$")
CHECK_PARTIAL = "finished partial segment check"
FREED_LINE = re.compile(r"freed about (?P<number>[0-9.]+) (?P<unit>[A-Za-z]+) repository space")
SIZE_UNITS = {
    "B": 1,
    **{unit + "B": 1000 ** (i + 1) for i, unit in enumerate("kMGTPEZY")},
    **{unit + "iB": 1024 ** (i + 1) for i, unit in enumerate("KMGTPEZY")},
}


def parse_borg_line(text: str) -> Optional[Dict[str, Any]]:
    """One stderr line -> a borg JSON record, or a ``text`` record for anything else. A prompt
    borg printed without a newline may precede a JSON record on the same line: the text part
    is then returned and the JSON part is kept under ``embedded``."""
    text = text.rstrip("\r\n")
    if not text.strip():
        return None
    record = json_object(text)
    if record is not None:
        return record
    start = text.find('{"')
    embedded = json_object(text[start:]) if start > 0 else None
    result: Dict[str, Any] = {"type": "text", "message": text[:start] if embedded else text}
    if embedded is not None:
        result["embedded"] = embedded
    return result


def json_object(text: str) -> Optional[Dict[str, Any]]:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def progress_event(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """An unfinished ``archive_progress`` record -> a protocol progress event."""
    if record.get("type") != "archive_progress" or record.get("finished") or "nfiles" not in record:
        return None
    return {
        "type": "progress",
        "operation": "create",
        "time": record.get("time", time.time()),
        "nfiles": record.get("nfiles", 0),
        "original_size": record.get("original_size", 0),
        "compressed_size": record.get("compressed_size", 0),
        "deduplicated_size": record.get("deduplicated_size", 0),
        "path": record.get("path", ""),
    }


def log_event(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A warning-or-worse ``log_message`` record, or a text line, -> a protocol log event."""
    if record.get("type") == "text":
        level = "WARNING"
    elif record.get("type") == "log_message" and record.get("levelname") in WARNING_LEVELS:
        level = record["levelname"]
    else:
        return None
    return {
        "type": "log",
        "level": level.lower(),
        "msgid": str(record.get("msgid") or ""),
        "message": capped_text(str(record.get("message", ""))),
        "time": record.get("time", time.time()),
    }


def capped_text(text: str) -> str:
    """At most MESSAGE_MAX_CHARS characters: a long message (a traceback) keeps its start and
    its end, where the cause is."""
    if len(text) <= MESSAGE_MAX_CHARS:
        return text
    half = MESSAGE_MAX_CHARS // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"


def json_size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=True, default=str))


class BoundedList:
    """Items up to a budget of JSON bytes (as the result line will carry them), and how many
    were offered in all: a result line stays small however much borg printed."""

    __slots__ = ("budget", "count", "items", "size")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.items: List[Any] = []
        self.count = 0
        self.size = 0

    def add(self, item: object) -> None:
        self.count += 1
        if self.size <= self.budget:
            self.size += json_size(item) + 2
            if self.size <= self.budget:
                self.items.append(item)


def parse_prune_line(message: str) -> Optional[Tuple[str, str, str]]:
    """A prune --list line (borg 1.2 or 1.4 wording) -> ("kept" | "pruned", archive name,
    archive time). The time is written the way `borg list --json` writes it: local time to the
    second with ".000000" (borg 1.2 drops the fraction for both), plus the UTC offset when the
    line has one."""
    match = PRUNE_LINE.match(message)
    if not match:
        return None
    kept = match["label"].startswith("Keeping")
    offset = match["offset"]
    zone = f"{offset[:3]}:{offset[3:]}" if offset else ""
    return (
        "kept" if kept else "pruned",
        match["name"],
        f"{match['date']}T{match['time']}.000000{zone}",
    )


def parse_freed_bytes(message: str) -> Optional[int]:
    match = FREED_LINE.search(message)
    if not match or match["unit"] not in SIZE_UNITS:
        return None
    try:
        return int(float(match["number"]) * SIZE_UNITS[match["unit"]])
    except ValueError:
        return None


def create_data(final: Dict[str, Any]) -> Dict[str, Any]:
    archive = final.get("archive") or {}
    stats = archive.get("stats") or {}
    cache = (final.get("cache") or {}).get("stats") or {}
    return {
        "archive": {
            "name": archive.get("name"),
            "id": archive.get("id"),
            "start": archive.get("start"),
            "end": archive.get("end"),
            "duration": archive.get("duration"),
            "nfiles": stats.get("nfiles"),
            "original_size": stats.get("original_size"),
            "compressed_size": stats.get("compressed_size"),
            "deduplicated_size": stats.get("deduplicated_size"),
        },
        "repository": repository_totals(cache),
    }


def repository_totals(cache_stats: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "total_size": cache_stats.get("total_size"),
        "compressed_size": cache_stats.get("total_csize"),
        "deduplicated_size": cache_stats.get("unique_csize"),
        "total_chunks": cache_stats.get("total_chunks"),
        "unique_chunks": cache_stats.get("total_unique_chunks"),
    }


def archive_summaries(listing: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [
        {"name": item.get("name"), "id": item.get("id"), "time": item.get("time")}
        for item in listing.get("archives") or []
        if isinstance(item, dict)
    ]


def list_data(archives: List[Dict[str, Any]]) -> Dict[str, Any]:
    """All archives counted; the newest of them listed (oldest first) up to the budget."""
    newest = BoundedList(RESULT_LIST_BUDGET)
    for archive in reversed(archives):
        newest.add(archive)
    return {"archives": newest.items[::-1], "archive_count": newest.count}


def stats_data(info: Dict[str, Any], count: int, last: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The repository totals of `borg info --json`, how many archives this prefix has and the
    newest of them (``{"name", "time"}``), and the repository's encryption when borg says."""
    totals = repository_totals((info.get("cache") or {}).get("stats") or {})
    data = {
        "total_size": totals["total_size"],
        "compressed_size": totals["compressed_size"],
        "deduplicated_size": totals["deduplicated_size"],
        "archive_count": count,
        "last_archive": {"name": last["name"], "time": last["time"]} if last else None,
    }
    encryption = encryption_data(info)
    if encryption is not None:
        data["encryption"] = encryption
    return data


def encryption_data(info: Dict[str, Any]) -> Optional[Dict[str, str]]:
    """borg info's ``encryption``: the mode, and in keyfile modes where the key file is (on this
    host: losing the host loses the key). None when borg did not say."""
    encryption = info.get("encryption")
    if not isinstance(encryption, dict) or not isinstance(encryption.get("mode"), str):
        return None
    data = {"mode": encryption["mode"]}
    keyfile = encryption.get("keyfile")
    if isinstance(keyfile, str):
        data["keyfile"] = keyfile
    return data


class PruneTally:
    """What prune --list says, line by line, kept bounded however many archives it names: the
    kept and pruned names in borg's order (newest first, up to a budget) with their counts, and
    the archives left as `borg list` counts them (checkpoints left out): how many, and the
    newest, which is what a stats step right after the prune reports."""

    def __init__(self) -> None:
        self.kept = BoundedList(RESULT_LIST_BUDGET)
        self.pruned = BoundedList(RESULT_LIST_BUDGET)
        self.left = 0
        self.newest_left: Optional[Dict[str, str]] = None

    def add(self, record: Dict[str, Any]) -> None:
        decision = parse_prune_line(str(record.get("message", "")))
        if decision is None:
            return
        kind, name, when = decision
        if kind == "pruned":
            self.pruned.add(name)
            return
        self.kept.add(name)
        if not CHECKPOINT_NAME.search(name):
            self.left += 1
            self.newest_left = self.newest_left or {"name": name, "time": when}


class CompactTally:
    """The space compact says it freed (None when it did not say)."""

    def __init__(self) -> None:
        self.freed_bytes: Optional[int] = None

    def add(self, record: Dict[str, Any]) -> None:
        freed = parse_freed_bytes(str(record.get("message", "")))
        self.freed_bytes = freed if freed is not None else self.freed_bytes


def prune_data(pruned: PruneTally, compacted: CompactTally) -> Dict[str, Any]:
    return {
        "kept": pruned.kept.items,
        "kept_count": pruned.kept.count,
        "pruned": pruned.pruned.items,
        "pruned_count": pruned.pruned.count,
        "compact": {"freed_bytes": compacted.freed_bytes},
    }


ENOSPC_TEXT = ("No space left on device", "[Errno 28]", "ENOSPC")


def disk_full_place(record: Dict[str, Any]) -> str:
    """Where a warning-or-worse line says borg ran out of disk space: "repository" when the
    line comes from borg's repository code (its logger or a traceback through repository.py),
    "disk" for any other place, "" when it says nothing of the kind."""
    message = str(record.get("message", ""))
    if not any(text in message for text in ENOSPC_TEXT):
        return ""
    if record.get("name") == "borg.repository" or "repository.py" in message:
        return "repository"
    return "disk"


def borg_error(run: BorgRun) -> Dict[str, str]:
    """The error borg reported, for a result's ``error``: running out of disk space when borg's
    lines say so (borg itself reports only "Local Exception"), else the last error with a msgid,
    else the last error."""
    if run.disk_full == "repository":
        return {"msgid": "RepositoryDiskFull", "message": "no space left on the repository's disk"}
    if run.disk_full:
        return {
            "msgid": "DiskFull",
            "message": "no space left on a disk borg writes to "
            "(the repository's, or this host's for borg's cache and temporary files)",
        }
    last = run.last_error_with_msgid or run.last_error
    if last is None:
        return {"msgid": "BorgError", "message": f"borg exited with return code {run.rc}"}
    message = capped_text(str(last.get("message", "")))
    return {"msgid": str(last.get("msgid") or "BorgError"), "message": message}


# ---------------------------------------------------------------------------------------------
# Running borg
# ---------------------------------------------------------------------------------------------


class BorgRun:
    """One borg command, and what the agent keeps of its log lines: bounded, however long
    borg runs and however much it prints. Lines an operation parses (prune's decisions,
    compact's freed space) go to its ``watch`` as they come."""

    __slots__ = (
        "disk_full",
        "last_error",
        "last_error_with_msgid",
        "problems",
        "rc",
        "stdout",
        "watch",
    )

    def __init__(self, watch: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.rc = 0
        self.stdout = b""
        self.watch = watch
        self.last_error: Optional[Dict[str, Any]] = None
        self.last_error_with_msgid: Optional[Dict[str, Any]] = None
        # The messages of warning-or-worse lines (check's findings): up to a budget, all counted.
        self.problems = BoundedList(RESULT_LIST_BUDGET)
        self.disk_full = ""  # see disk_full_place

    def add(self, record: Dict[str, Any]) -> None:
        """One log_message or text record of this run."""
        event = log_event(record)
        if event is None:
            if self.watch is not None:
                self.watch(record)
            return
        self.problems.add(event["message"])
        if self.disk_full != "repository":
            self.disk_full = disk_full_place(record) or self.disk_full
        if record.get("type") == "log_message" and record.get("levelname") in ERROR_LEVELS:
            self.last_error = record
            if record.get("msgid"):
                self.last_error_with_msgid = record


class Session:
    """State of one request: where events go, whether to stop, what borg said."""

    def __init__(self, operation: str, output: Output) -> None:
        self.operation = operation
        self.output = output
        self.protocol = PROTOCOL_VERSION  # what the hello line says
        self.steps: Tuple[str, ...] = ()  # a sequence's steps, once its job is valid
        self.step: Optional[str] = None  # the step of a sequence that runs (or did not start)
        self.completed: List[str] = []  # the steps that ended ok, in order
        self.stop_reason: Optional[Dict[str, str]] = None
        self.interrupted = False  # a borg run was stopped because of stop_reason
        self.warnings = 0
        self.borg_rcs: List[int] = []  # every borg run's return code, in order
        self.process: Optional[subprocess.Popen[bytes]] = None  # the borg that is running
        self.hello_sent = False
        self.result_sent = False

    def request_stop(self, msgid: str, message: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = {"msgid": msgid, "message": message}

    def emit(self, event: Dict[str, Any]) -> None:
        self.hello_sent = self.hello_sent or event["type"] == "hello"
        if not self.output.write(event):
            self.request_stop("CoordinatorGone", "the agent's output was closed")

    def handle_record(self, record: Dict[str, Any]) -> None:
        running = self.step or self.operation
        reader = PROGRESS_READERS.get(running or "")
        progress = reader(record) if reader else None
        if progress:
            self.emit(progress)
        log = log_event(record)
        if log:
            self.warnings += log["level"] == "warning"
            if self.step:
                log["step"] = self.step
            self.emit(log)

    def borg_finished(self, returncode: int) -> int:
        rc = exit_status(returncode)
        self.borg_rcs.append(rc)
        self.process = None
        return rc


class Span:
    """Where one request, or one step of a sequence, began in the session's running totals:
    its result line reports only what happened since."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.started = time.monotonic()
        self.warnings_before = session.warnings
        self.runs_before = len(session.borg_rcs)

    def borg_rc(self) -> Optional[int]:
        """The highest return code of the borg runs since (None when borg did not run)."""
        return max(self.session.borg_rcs[self.runs_before :], default=None)

    def warnings(self) -> int:
        return self.session.warnings - self.warnings_before

    def duration(self) -> float:
        return round(time.monotonic() - self.started, 3)


def run_borg(
    session: Session,
    argv: List[str],
    env: Dict[str, str],
    watch: Optional[Callable[[Dict[str, Any]], None]] = None,
    cwd: Optional[str] = None,
) -> BorgRun:
    """Runs one borg command, streaming its stderr as events; stops it when asked to."""
    run = BorgRun(watch)
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,  # no terminal: borg can never prompt, and Ctrl-C is ours
        )
    except OSError as error:
        run.add(log_record("ERROR", "BorgNotStarted", f"cannot start borg: {error.strerror}"))
        run.rc = EXIT_FAILED
        return run
    events: queue.Queue[Tuple[str, bytes]] = queue.Queue()
    start_thread(pump_lines, process.stderr, events)
    start_thread(pump_all, process.stdout, events)
    session.process = process
    collect_output(session, process, events, run)
    run.rc = session.borg_finished(process.wait())
    return run


def log_record(level: str, msgid: str, message: str) -> Dict[str, Any]:
    return {
        "type": "log_message",
        "levelname": level,
        "msgid": msgid,
        "message": message,
        "time": time.time(),
    }


def start_thread(target: Callable[..., None], *args: Any) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def pump_lines(stream: IO[bytes], events: queue.Queue[Tuple[str, bytes]]) -> None:
    for line in iter(lambda: stream.readline(BORG_LINE_LIMIT), b""):
        events.put(("stderr", line))
    events.put(("stderr_end", b""))


def pump_all(stream: IO[bytes], events: queue.Queue[Tuple[str, bytes]]) -> None:
    events.put(("stdout_end", stream.read()))


def collect_output(
    session: Session,
    process: subprocess.Popen[bytes],
    events: queue.Queue[Tuple[str, bytes]],
    run: BorgRun,
) -> None:
    open_streams = {"stderr", "stdout"}
    stopped = False
    exited_at: Optional[float] = None
    while open_streams:
        if session.stop_reason and not stopped:
            stopped = True
            session.interrupted = process.poll() is None
            stop_process(process, SIGINT_GRACE, SIGTERM_GRACE)
        try:
            kind, payload = events.get(timeout=0.1)
        except queue.Empty:
            if process.poll() is not None:
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > PIPE_DRAIN_TIMEOUT:
                    return
            continue
        if kind == "stderr":
            handle_stderr_line(session, payload, run)
        else:
            open_streams.discard(kind[: -len("_end")])
            if kind == "stdout_end":
                run.stdout = payload


def handle_stderr_line(session: Session, line: bytes, run: BorgRun) -> None:
    record = parse_borg_line(line.decode("utf-8", "surrogateescape"))
    for item in (record, (record or {}).get("embedded")):
        if item:
            session.handle_record(item)
            if item.get("type") in ("log_message", "text"):
                run.add(item)


def stop_process(
    process: subprocess.Popen[bytes], sigint_grace: float, sigterm_grace: float
) -> None:
    """SIGINT (borg checkpoints and releases its lock), then SIGTERM, then SIGKILL for the
    whole process group (an ssh child must not keep the pipes open)."""
    for signum, grace in ((signal.SIGINT, sigint_grace), (signal.SIGTERM, sigterm_grace)):
        if process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()
    process.wait()


def exit_status(returncode: int) -> int:
    """Popen's -N for "killed by signal N" -> the shell's 128+N, as borg documents it."""
    return 128 - returncode if returncode < 0 else returncode


def find_borg(policy: Policy, env: Dict[str, str]) -> Optional[str]:
    if policy.borg is not None:
        return policy.borg if is_executable_file(policy.borg) else None
    return find_on_path("borg", env.get("PATH", os.defpath))


def find_on_path(name: str, search_path: str) -> Optional[str]:
    """Like shutil.which (whose import costs more than this), but only absolute directories:
    a relative PATH entry would depend on the agent's working directory."""
    for directory in search_path.split(os.pathsep):
        candidate = os.path.join(directory, name)
        if os.path.isabs(directory) and is_executable_file(candidate):
            return candidate
    return None


def is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


# borg's version, cached per binary so that a request does not start borg just to ask it (an
# interpreter start that costs more than the rest of a small request). The key is the binary's
# resolved path and its inode, size and mtime: an upgrade replaces or rewrites the file.
VERSION_CACHE_FILE = os.path.join("backup-drone", "borg-versions.json")
VERSION_CACHE_ENTRIES = 8  # binaries remembered; the least recently written is dropped
BORG_VERSION_TEXT = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")


def borg_version(borg: Optional[str], env: Dict[str, str]) -> str:
    """The version of this borg binary ("" when it does not run): from the cache when the
    binary is unchanged, else from `borg --version` (then cached)."""
    if borg is None:
        return ""
    identity = binary_identity(borg)
    cache_path = version_cache_path(os.environ)
    entries = read_version_cache(cache_path) if cache_path else {}
    if identity is not None:
        cached = entries.get(identity[0])
        if isinstance(cached, dict) and cached_version_matches(cached, identity[1]):
            return str(cached["version"])
    version = ask_borg_version(borg, env)
    if identity is not None and cache_path and BORG_VERSION_TEXT.fullmatch(version):
        entries.pop(identity[0], None)
        entries[identity[0]] = {**identity[1], "version": version}
        write_version_cache(cache_path, dict(list(entries.items())[-VERSION_CACHE_ENTRIES:]))
    return version


def binary_identity(borg: str) -> Optional[Tuple[str, Dict[str, int]]]:
    """(resolved path, {inode, size, mtime_ns}) of the binary, or None when it cannot be read."""
    resolved = os.path.realpath(borg)
    try:
        status = os.stat(resolved)
    except OSError:
        return None
    return resolved, {
        "inode": status.st_ino,
        "size": status.st_size,
        "mtime_ns": status.st_mtime_ns,
    }


def cached_version_matches(entry: Dict[str, Any], identity: Dict[str, int]) -> bool:
    version = entry.get("version")
    same_file = all(entry.get(key) == value for key, value in identity.items())
    return same_file and isinstance(version, str) and bool(BORG_VERSION_TEXT.fullmatch(version))


def version_cache_path(environ: Mapping[str, str]) -> str:
    """$XDG_CACHE_HOME (when absolute, as the XDG spec says) or ~/.cache; "" when neither is
    known."""
    base = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return ""
        base = os.path.join(home, ".cache")
    return os.path.join(base, VERSION_CACHE_FILE)


def read_version_cache(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return {}  # no cache yet, or an unreadable one: ask borg
    return content if isinstance(content, dict) else {}


def write_version_cache(path: str, entries: Dict[str, Any]) -> None:
    """Written atomically (a temporary file renamed over the old one); a cache that cannot be
    written only means asking borg again next time."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entries, handle)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def ask_borg_version(borg: str, env: Dict[str, str]) -> str:
    try:
        completed = subprocess.run(
            [borg, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    words = completed.stdout.decode("utf-8", "replace").split()
    return words[-1] if completed.returncode == 0 and words else ""


# ---------------------------------------------------------------------------------------------
# The operations: each runs borg and returns its result data (or an error); the registry
# ---------------------------------------------------------------------------------------------


class Outcome:
    """What an operation (or a step) ended with: its result line's data, ok and error."""

    __slots__ = ("data", "error", "ok")

    def __init__(
        self, data: Dict[str, Any], ok: bool = True, error: Optional[Dict[str, str]] = None
    ) -> None:
        self.data = data
        self.ok = ok
        self.error = error


def failure(msgid: str, message: str) -> Outcome:
    return Outcome({}, ok=False, error={"msgid": msgid, "message": message})


def failed(run: BorgRun) -> Optional[Outcome]:
    """An Outcome for a borg run that did not succeed (rc >= 2), else None."""
    if run.rc < EXIT_FAILED:
        return None
    return Outcome({}, ok=False, error=borg_error(run))


def stopped(session: Session) -> Outcome:
    return Outcome({}, ok=False, error=dict(session.stop_reason or {}))


def parse_stdout_json(run: BorgRun) -> Dict[str, Any]:
    value = json_object(run.stdout.decode("utf-8", "surrogateescape").strip())
    if value is None:
        raise BorgOutputInvalid()
    return value


class BorgOutputInvalid(Exception):
    """borg said it succeeded but its JSON output is missing or unreadable."""


class Runner:
    """What the operations of one request share: the session, the job, which borg to run and
    with which environment, and what an earlier step learnt about the repository."""

    def __init__(
        self, session: Session, job: Job, borg: str, env: Dict[str, str], version: str
    ) -> None:
        self.session = session
        self.job = job
        self.borg = borg
        self.env = env
        self.version = version
        # How many archives of this prefix a prune step of this sequence left, and the newest;
        # None when not known (no prune yet, or a create ran since).
        self.archives_left: Optional[Tuple[int, Optional[Dict[str, str]]]] = None
        self.restore_root = ""  # where extract and drill write (restore_root(policy))

    def run(
        self,
        argv: List[str],
        watch: Optional[Callable[[Dict[str, Any]], None]] = None,
        cwd: Optional[str] = None,
    ) -> BorgRun:
        return run_borg(self.session, argv, self.env, watch, cwd)

    def halted(self, run: BorgRun) -> Optional[Outcome]:
        """Why not to go on after this run: borg failed, or the request is being stopped."""
        return failed(run) or (stopped(self.session) if self.session.stop_reason else None)


def run_hello(runner: Runner) -> Outcome:
    return Outcome(hello_data(runner.version, runner.session.protocol))


def run_create(runner: Runner) -> Outcome:
    runner.archives_left = None  # a new archive: what an earlier prune left is out of date
    name = archive_name(runner.job.archive_prefix, time.time())
    run = runner.run(create_argv(runner.borg, runner.job, name))
    return failed(run) or Outcome(create_data(parse_stdout_json(run)))


def run_prune(runner: Runner) -> Outcome:
    """prune, then compact (which frees the space; not when prune failed or a stop came)."""
    pruned = PruneTally()
    pruning = runner.run(prune_argv(runner.borg, runner.job), pruned.add)
    halted = runner.halted(pruning)
    if halted:
        return halted
    compacted = CompactTally()
    compacting = runner.run(compact_argv(runner.borg, runner.job), compacted.add)
    outcome = failed(compacting) or Outcome(prune_data(pruned, compacted))
    if outcome.ok and pruning.rc == EXIT_OK:  # with warnings its listing may be incomplete
        runner.archives_left = (pruned.left, pruned.newest_left)
    return outcome


def run_stats(runner: Runner) -> Outcome:
    """borg info for the totals and borg list for the archives; right after a prune of the same
    sequence that ended without warnings, what prune said it kept stands in for borg list."""
    info = runner.run(info_argv(runner.borg, runner.job))
    halted = runner.halted(info)
    if halted:
        return halted
    if runner.archives_left is not None:
        return Outcome(stats_data(parse_stdout_json(info), *runner.archives_left))
    listing = runner.run(list_argv(runner.borg, runner.job))
    listing_failed = failed(listing)
    if listing_failed:
        return listing_failed
    archives = archive_summaries(parse_stdout_json(listing))
    newest = archives[-1] if archives else None
    return Outcome(stats_data(parse_stdout_json(info), len(archives), newest))


def run_list(runner: Runner) -> Outcome:
    run = runner.run(list_argv(runner.borg, runner.job))
    return failed(run) or Outcome(list_data(archive_summaries(parse_stdout_json(run))))


def run_check(runner: Runner) -> Outcome:
    """Finds problems (warnings are its findings, so borg rc 1 is a failure here too)."""
    partial: List[bool] = []  # borg says so when max_duration ended the check early
    run = runner.run(
        check_argv(runner.borg, runner.job),
        lambda record: partial.append(CHECK_PARTIAL in str(record.get("message", ""))),
    )
    findings = run.problems
    repository_ok = run.rc == EXIT_OK and not findings.count
    error = None if repository_ok else borg_error(run)
    if error and run.rc < EXIT_FAILED:
        error = {
            "msgid": "CheckFoundProblems",
            "message": capped_text("; ".join(findings.items[:5])) or error["message"],
        }
    data = {
        "findings": findings.items,
        "finding_count": findings.count,
        "repository_ok": repository_ok,
        "verify_data": runner.job.check.verify_data,
        "partial": any(partial),
    }
    return Outcome(data, ok=repository_ok, error=error)


def run_sequence(runner: Runner) -> Outcome:
    """Each step in order, each reported by a ``step`` line; the first step that fails, or a
    stop (coordinator gone, a signal), ends the sequence. The final result's data and the step
    its error names are filled in from the session (Request.result)."""
    session = runner.session
    for name in runner.job.steps:
        session.step = name
        if session.stop_reason:
            return stopped(session)  # this step does not start
        span = Span(session)
        outcome = run_operation(runner, name)
        write_outcome(session, "step", name, outcome, span)
        if not outcome.ok:
            return outcome
        session.completed.append(name)
    return Outcome({})


def run_operation(runner: Runner, name: str) -> Outcome:
    """One operation (or one step), under the liveness rule: not started when a stop came
    first, failed when borg had to be stopped."""
    session = runner.session
    if session.stop_reason and name != "hello":  # hello runs nothing: its answer is ready
        return stopped(session)
    try:
        outcome = REGISTRY[name].run(runner)
    except BorgOutputInvalid:
        outcome = failure("BorgOutputInvalid", "borg's JSON output is missing or unreadable")
    if session.interrupted:
        outcome = Outcome(outcome.data, ok=False, error=dict(session.stop_reason or {}))
    return outcome


def hello_data(version: str, protocol: int) -> Dict[str, Any]:
    return {
        "agent_version": AGENT_VERSION,
        "borg_version": version,
        "python_version": sys.version.split()[0],
        "hostname": os.uname().nodename,
        "protocol": protocol,
        "protocols": list(SUPPORTED_PROTOCOLS),
    }


def hello_event(session: Session, version: str) -> Dict[str, Any]:
    event = {
        "type": "hello",
        "operation": session.operation,
        **hello_data(version, session.protocol),
    }
    if session.steps:
        event["steps"] = list(session.steps)
    return event


# ---------------------------------------------------------------------------------------------
# Offsite copies: rclone or rsync copies local repositories elsewhere, each under its lock
# ---------------------------------------------------------------------------------------------
# For each repository the agent runs `borg with-lock REPO <this file> _offsite-locked`: borg
# holds the repository's lock while that inner agent runs the copy and then its verification,
# relaying JSON lines to the outer agent. The inner agent reads its job (one JSON line) on stdin,
# which the outer agent keeps open: EOF stops the tool, so nothing copies once the lock is gone.

LOCKED_COPY_MODE = "_offsite-locked"
OFFSITE_TOOLS = ("rclone", "rsync")
OFFSITE_REPOSITORIES_MAX = 32
TOOL_OPTIONS_MAX = 16
DESTINATION_MAX_CHARS = 1024
RCLONE_REMOTE = re.compile(r"(?P<remote>[A-Za-z0-9_][A-Za-z0-9_.-]*):(?P<path>.*)", re.S)
RSYNC_REMOTE = re.compile(_USER + _HOST + r":(?P<path>/.*)", re.S)
BANDWIDTH = re.compile(r"[0-9]+(\.[0-9]+)?[KMGkmg]?")
TOOL_OPTION = re.compile(r"(?P<name>--[a-z][a-z-]*)(=(?P<value>.*))?", re.S)
REPLACED_FOLDER = ".replaced"
BORG_LOCK_FILES = ("lock.exclusive", "lock.roster")
# How long the inner agent and its tool get to stop after stdin closed, before signals.
LOCKED_COPY_STOP_GRACE = 15.0
TOOL_STOP_GRACE = 5.0
PROGRESS_INTERVAL = 1.0
KEEP_ALIVE_INTERVAL = 10.0
# What rclone and rsync get from the agent's environment (a tool's own variables, RCLONE_*,
# could change where it copies): as for borg, an allow-list, in English.
TOOL_INHERITED_ENVIRONMENT = ("PATH", "HOME", "TMPDIR", "TZ")


def bounded_int(low: int, high: int) -> Callable[[str], bool]:
    return lambda value: value.isdigit() and low <= int(value) <= high


def valid_rsh(value: str) -> bool:
    validate_borg_rsh(value, "--rsh")  # raises Rejected with the reason
    return True


# The options a job may give each tool: a flag (None) or a check of the value. Anything else,
# notably rclone's --size-only (verification would compare sizes only), is refused.
TOOL_OPTION_RULES: Dict[str, Dict[str, Optional[Callable[[str], bool]]]] = {
    "rclone": {
        "--bwlimit": lambda value: bool(BANDWIDTH.fullmatch(value)),
        "--transfers": bounded_int(1, 64),
        "--checkers": bounded_int(1, 64),
        "--tpslimit": bounded_int(1, 1000),
        "--config": lambda value: bool(require_absolute_path(value, "--config")),
        "--fast-list": None,
    },
    "rsync": {
        "--bwlimit": lambda value: bool(BANDWIDTH.fullmatch(value)),
        "--compress": None,
        "--rsh": valid_rsh,
        "--timeout": bounded_int(1, 86400),
    },
}


class OffsitePolicy:
    """The policy's ``offsite`` key: which local repositories may be copied, and where to."""

    __slots__ = ("destinations", "repositories")

    def __init__(self, repositories: Tuple[Location, ...], destinations: Tuple[Place, ...]):
        self.repositories = repositories
        self.destinations = destinations


class Place:
    """A destination (or a policy's destination prefix) reduced to what matching compares:
    "" and resolved components for a local path, else the part before ":" (an rclone remote
    or rsync's ``[user@]host``), whether the path is absolute, and its components."""

    __slots__ = ("authority", "components", "rooted")

    def __init__(self, authority: str, rooted: bool, components: Tuple[str, ...]) -> None:
        self.authority = authority
        self.rooted = rooted
        self.components = components

    def is_under(self, prefix: Place) -> bool:
        return (
            self.authority == prefix.authority
            and self.rooted == prefix.rooted
            and is_under(self.components, prefix.components)
        )


def place_of(destination: str) -> Place:
    if destination.startswith("/"):
        return Place("", True, resolved_components(destination))
    remote = RSYNC_REMOTE.fullmatch(destination)  # [user@]host: may hold an IPv6 address
    if remote:
        authority, path = destination[: remote.start("path") - 1], remote["path"]
    else:
        authority, _, path = destination.partition(":")
    return Place(authority, path.startswith("/"), path_components(path))


def validate_offsite_repositories(value: object, name: str) -> Tuple[str, ...]:
    items = require_list(value, name, OFFSITE_REPOSITORIES_MAX)
    if not items:
        raise Rejected(name, "must name at least one repository")
    repositories = []
    for i, item in enumerate(items):
        repository = validate_repository(item, f"{name}[{i}]")
        if not repository.startswith("/") or not path_components(repository):
            raise Rejected(
                f"{name}[{i}]",
                "must be an absolute local path: the copy runs where the repository lives",
            )
        repositories.append(repository)
    return tuple(repositories)


def validate_offsite_tool(value: object, name: str) -> str:
    if value not in OFFSITE_TOOLS:
        raise Rejected(name, "must be " + " or ".join(OFFSITE_TOOLS))
    return str(value)


def validate_destination(value: object, name: str) -> str:
    """The rules every destination meets; check_offsite_job adds the forms of its tool."""
    text = require_text(value, name, DESTINATION_MAX_CHARS)
    if text.startswith("-"):
        raise Rejected(name, "must not start with '-'")
    if ".." in text.split("/") or ".." in text.split(":", 1)[-1].split("/"):
        raise Rejected(name, "must not contain '..'")
    return text


def destination_form_error(tool: str, destination: str) -> str:
    """Why the destination is not one of the forms its tool accepts ("" when it is)."""
    if destination.startswith("/"):
        return ""
    if tool == "rclone":
        if RCLONE_REMOTE.fullmatch(destination):
            return ""
        return "must be an absolute path or remote:path (remote: letters, digits, _ . -)"
    match = RSYNC_REMOTE.fullmatch(destination)
    if match and not match["path"].startswith("//") and "::" not in match["path"]:
        return ""
    return "must be an absolute path or [user@]host:/absolute/path"


def validate_tool_options(value: object, name: str) -> Tuple[str, ...]:
    """Each option must be allowed for some tool; check_offsite_job checks it for the job's."""
    items = require_list(value, name, TOOL_OPTIONS_MAX)
    options = tuple(require_text(item, f"{name}[{i}]", 1024) for i, item in enumerate(items))
    for i, option in enumerate(options):
        if not any(tool_option_allowed(tool, option, f"{name}[{i}]") for tool in OFFSITE_TOOLS):
            raise Rejected(f"{name}[{i}]", "is not an allowed option")
    return options


def tool_option_allowed(tool: str, option: str, name: str) -> bool:
    """Whether ``--name=value`` or ``--flag`` is on the tool's allow-list with a valid value;
    an --rsh whose command is refused raises its own reason."""
    match = TOOL_OPTION.fullmatch(option)
    rules = TOOL_OPTION_RULES[tool]
    if not match or match["name"] not in rules:
        return False
    check, value = rules[match["name"]], match["value"]
    if check is None:
        return value is None
    try:
        return value is not None and check(value)
    except Rejected as rejection:
        raise Rejected(name, f"{rejection.field} {rejection.message}") from None


def validate_max_delete(value: object, name: str) -> Optional[int]:
    return None if value is None else require_int(value, name, 0, 1000000000)


def check_offsite_job(operation: str, job: Job, raw: Dict[str, Any]) -> None:
    """An offsite job names its repositories in ``repositories`` (never ``repository``), a
    destination of its tool's forms, that tool's options, and no two repositories that would
    land in the same folder."""
    if operation != "offsite":
        return
    if "repository" in raw:
        raise Rejected("repository", "is not used by offsite: name the repositories instead")
    if job.tool and job.destination:
        error = destination_form_error(job.tool, job.destination)
        if error:
            raise Rejected("destination", error)
    for i, option in enumerate(job.tool_options):
        if job.tool and not tool_option_allowed(job.tool, option, f"tool_options[{i}]"):
            raise Rejected(f"tool_options[{i}]", f"is not an allowed {job.tool} option")
    seen: List[str] = []
    for i, repository in enumerate(job.repositories):
        if repository_folder(repository) in seen:
            raise Rejected(
                f"repositories[{i}]", "has the same folder name as an earlier repository"
            )
        seen.append(repository_folder(repository))


def repository_folder(repository: str) -> str:
    return path_components(repository)[-1]


def policy_offsite(raw: Dict[str, Any]) -> Optional[OffsitePolicy]:
    if "offsite" not in raw:
        return None
    value = raw["offsite"]
    if not isinstance(value, dict) or set(value) != {"repositories", "destinations"}:
        raise Rejected("offsite", "must be an object with the keys repositories, destinations")
    repositories = tuple(
        job_location(require_absolute_path(item, f"offsite.repositories[{i}]"))
        for i, item in enumerate(require_list(value["repositories"], "offsite.repositories", 10000))
    )
    destinations = tuple(
        place_of(policy_destination(item, f"offsite.destinations[{i}]"))
        for i, item in enumerate(require_list(value["destinations"], "offsite.destinations", 10000))
    )
    return OffsitePolicy(tuple(r for r in repositories if r is not None), destinations)


def policy_destination(value: object, name: str) -> str:
    """A destination prefix: a destination of either tool."""
    text = validate_destination(value, name)
    if all(destination_form_error(tool, text) for tool in OFFSITE_TOOLS):
        raise Rejected(name, "must be an absolute path, remote:path or [user@]host:/path")
    return text


def check_policy_offsite(policy: Policy, operation: str, job: Job) -> None:
    """Fails closed: a policy file without an ``offsite`` key allows no offsite copy."""
    if operation != "offsite" or not policy.from_file():
        return
    if policy.offsite is None:
        raise Rejected("operation", "not allowed by this host's policy (it has no offsite key)")
    for i, repository in enumerate(job.repositories):
        location = job_location(repository)
        if location is None or not location_allowed(location, policy.offsite.repositories):
            raise Rejected(f"repositories[{i}]", "not allowed by this host's policy")
    destination = place_of(job.destination)
    if not any(destination.is_under(prefix) for prefix in policy.offsite.destinations):
        raise Rejected("destination", "not allowed by this host's policy")


# -- where each repository goes, and the tools' command lines (pure functions) ----------------


def joined_destination(destination: str, name: str) -> str:
    """``name`` inside ``destination`` (``remote:`` alone is the remote's root)."""
    if destination.endswith(":"):
        return destination + name
    return destination.rstrip("/") + "/" + name


def utc_stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime(now))


def replaced_folder(destination: str, repository: str, stamp: str) -> str:
    """Where a copy moves what it would delete or overwrite: ``DEST/.replaced/NAME/STAMP``."""
    return joined_destination(
        destination, f"{REPLACED_FOLDER}/{repository_folder(repository)}/{stamp}"
    )


def tool_path_part(tool: str, place: str) -> str:
    """The path the receiving side uses: rsync's --backup-dir is a path on the receiver."""
    if tool == "rsync" and not place.startswith("/"):
        return place.split(":", 1)[1]
    return place


def tool_excludes(tool: str) -> List[str]:
    """The lock itself (held by borg with-lock while the copy runs) stays behind: a copy
    that carried it would look locked by a borg that no longer exists."""
    if tool == "rclone":
        return [f"--exclude=/{name}/**" for name in BORG_LOCK_FILES] + [
            f"--exclude=/{name}" for name in BORG_LOCK_FILES
        ]
    return [f"--exclude=/{name}" for name in BORG_LOCK_FILES]


def copy_argv(tool_binary: str, copy: Dict[str, Any]) -> List[str]:
    """The copy of one repository (``copy``: the inner agent's job, see locked_copy_job)."""
    options = [*copy["tool_options"], *tool_excludes(copy["tool"])]
    if copy["max_delete"] is not None:
        options.append(f"--max-delete={copy['max_delete']}")
    if copy["tool"] == "rclone":
        if copy["replaced"]:
            options.append(f"--backup-dir={copy['replaced']}")
        return [
            tool_binary,
            "sync",
            *RCLONE_LOGGING,
            *options,
            "--",
            copy["source"],
            copy["destination"],
        ]
    if copy["replaced"]:
        options += ["--backup", f"--backup-dir={tool_path_part('rsync', copy['replaced'])}"]
    return [
        tool_binary,
        "-a",
        "--delete",
        "--info=progress2",
        "--no-inc-recursive",
        "--stats",
        *options,
        "--",
        copy["source"] + "/",
        copy["destination"] + "/",
    ]


def verify_argv(tool_binary: str, copy: Dict[str, Any]) -> List[str]:
    """A comparison that changes nothing: rclone check (both ways, hashes where the remote
    has them), or an rsync dry run by checksum that lists what it would still change."""
    options = [*copy["tool_options"], *tool_excludes(copy["tool"])]
    if copy["tool"] == "rclone":
        return [
            tool_binary,
            "check",
            *RCLONE_LOGGING,
            *options,
            "--",
            copy["source"],
            copy["destination"],
        ]
    return [
        tool_binary,
        "-a",
        "--delete",
        "--checksum",
        "--dry-run",
        "--itemize-changes",
        # a borg that waited for the lock touched the repository folder's time: not a difference
        "--omit-dir-times",
        *options,
        "--",
        copy["source"] + "/",
        copy["destination"] + "/",
    ]


RCLONE_LOGGING = ["--use-json-log", "--stats=1s", "--stats-log-level=NOTICE"]


def tool_environment(base: Mapping[str, str]) -> Dict[str, str]:
    env = {name: base[name] for name in TOOL_INHERITED_ENVIRONMENT if name in base}
    env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    return env


def with_lock_environment(borg_env: Dict[str, str]) -> Dict[str, str]:
    """borg with-lock opens no key: no passphrase reaches it, nor the copy it starts."""
    hidden = (*BORG_HOST_PASSPHRASE_ENVIRONMENT, "BORG_RSH")
    return {name: value for name, value in borg_env.items() if name not in hidden}


def with_lock_argv(borg: str, job: Job, repository: str) -> List[str]:
    agent = os.path.abspath(__file__)
    return [
        borg,
        "with-lock",
        "--log-json",
        f"--lock-wait={job.lock_wait}",
        "--",
        repository,
        sys.executable,
        "-I",
        agent,
        LOCKED_COPY_MODE,
    ]


def locked_copy_job(job: Job, repository: str, now: float) -> Dict[str, Any]:
    destination = joined_destination(job.destination, repository_folder(repository))
    replaced = replaced_folder(job.destination, repository, utc_stamp(now))
    return {
        "tool": job.tool,
        "source": repository,
        "destination": destination,
        "tool_options": list(job.tool_options),
        "max_delete": job.max_delete,
        "replaced": replaced if job.keep_replaced else None,
    }


# -- reading the tools' output (pure functions) -----------------------------------------------

RSYNC_PROGRESS = re.compile(
    r"\s*(?P<bytes>[0-9][0-9,]*)\s+(?P<percent>[0-9]+)%\s+(?P<speed>[0-9.]+)(?P<unit>[kMGT]?B)/s"
    r"\s+(?P<eta>[0-9]+:[0-9]{2}:[0-9]{2})"
    r"(\s+\(xfr#(?P<files>[0-9]+), (?:to|ir)-chk=(?P<left>[0-9]+)/(?P<total>[0-9]+)\))?\s*"
)
RSYNC_STATS = {
    "files": re.compile(r"Number of regular files transferred: (?P<n>[0-9,]+)"),
    "bytes": re.compile(r"Total transferred file size: (?P<n>[0-9,]+) bytes"),
}
RSYNC_SPEED_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
RCLONE_CHECK_SUMMARY = re.compile(
    r"[0-9]+ (differences found|matching files|files missing|errors while checking"
    r"|hashes could not be checked)"
)
RCLONE_DIFFERENCES = re.compile(r"(?P<n>[0-9]+) differences found")
MAX_DELETE_TEXT = ("max-delete",)


def offsite_progress(
    repository: str, phase: str, now: float, figures: Dict[str, Optional[float]]
) -> Dict[str, Any]:
    return {
        "type": "progress",
        "operation": "offsite",
        "time": now,
        "repository": repository,
        "phase": phase,
        "bytes": figures.get("bytes") or 0,
        "total_bytes": figures.get("total_bytes"),
        "speed": figures.get("speed"),
        "eta": figures.get("eta"),
        "files": figures.get("files") or 0,
        "total_files": figures.get("total_files"),
    }


def rclone_figures(record: Dict[str, Any], phase: str) -> Optional[Dict[str, Optional[float]]]:
    """A JSON log line of rclone with a ``stats`` member -> progress figures (files are
    transfers while copying, checks while verifying)."""
    stats = record.get("stats")
    if not isinstance(stats, dict):
        return None
    counted, total = (
        ("checks", "totalChecks") if phase == "verify" else ("transfers", "totalTransfers")
    )
    return {
        "bytes": number_or_none(stats.get("bytes")),
        "total_bytes": number_or_none(stats.get("totalBytes")),
        "speed": number_or_none(stats.get("speed")),
        "eta": number_or_none(stats.get("eta")),
        "files": number_or_none(stats.get(counted)),
        "total_files": number_or_none(stats.get(total)),
    }


def number_or_none(value: object) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def rsync_figures(text: str) -> Optional[Dict[str, Optional[float]]]:
    """One ``--info=progress2`` update (``  1,234,567  45%   12.34MB/s    0:00:12 (xfr#3,
    to-chk=5/10)``) -> progress figures. rsync gives no total size: it is estimated from
    the percentage."""
    match = RSYNC_PROGRESS.fullmatch(text)
    if not match:
        return None
    done = int(match["bytes"].replace(",", ""))
    percent = int(match["percent"])
    hours, minutes, seconds = (int(part) for part in match["eta"].split(":"))
    total_files = int(match["total"]) if match["total"] else None
    return {
        "bytes": done,
        "total_bytes": round(done * 100 / percent) if 0 < percent <= 100 else None,
        "speed": round(float(match["speed"]) * RSYNC_SPEED_UNITS[match["unit"]]),
        "eta": hours * 3600 + minutes * 60 + seconds if percent < 100 else 0,
        "files": int(match["files"]) if match["files"] else 0,
        "total_files": total_files,
    }


def rsync_totals(lines: Sequence[str]) -> Dict[str, int]:
    """What ``--stats`` says the copy transferred: ``bytes`` (the size of the files sent)
    and ``files``."""
    totals = {"bytes": 0, "files": 0}
    for line in lines:
        for key, pattern in RSYNC_STATS.items():
            match = pattern.search(line)
            if match:
                totals[key] = int(match["n"].replace(",", ""))
    return totals


def rclone_record(text: str) -> Optional[Dict[str, Any]]:
    return json_object(text.strip())


def tool_log_event(tool: str, text: str) -> Optional[Dict[str, Any]]:
    """A line of the tool that is neither progress nor a summary -> a protocol log event."""
    text = text.strip()
    if not text:
        return None
    record = rclone_record(text) if tool == "rclone" else None
    level, message = "warning", text
    if record is not None:
        if "stats" in record:
            return None
        message = " ".join(str(record.get(key) or "") for key in ("object", "msg")).strip()
        if RCLONE_CHECK_SUMMARY.fullmatch(str(record.get("msg", ""))):
            return None
        level = "error" if record.get("level") in ("error", "critical") else "warning"
    return {
        "type": "log",
        "level": level,
        "msgid": "",
        "message": capped_text(message),
        "time": time.time(),
    }


def rclone_differences(lines: Sequence[str]) -> Optional[int]:
    """How many differences rclone check reported (None when it did not say)."""
    found = None
    for line in lines:
        record = rclone_record(line) or {"msg": line}
        match = RCLONE_DIFFERENCES.search(str(record.get("msg", "")))
        if match:
            found = int(match["n"])
    return found


# -- the outer agent: one borg with-lock per repository ---------------------------------------


def run_offsite(runner: Runner) -> Outcome:
    """Each repository in order, under its own lock; the first failure ends the operation,
    and the result still lists the repositories copied before it."""
    session, job = runner.session, runner.job
    copied: List[Dict[str, Any]] = []
    for repository in job.repositories:
        if session.stop_reason:
            return Outcome(offsite_data(copied), ok=False, error=dict(session.stop_reason))
        if not os.path.isfile(os.path.join(repository, "config")):
            error = {
                "msgid": "NotARepository",
                "message": f"offsite {repository}: not a borg repository (it has no config file)",
            }
            return Outcome(offsite_data(copied), ok=False, error=error)
        started = time.monotonic()
        outcome = copy_under_lock(runner, repository)
        if not outcome.ok:
            return Outcome(offsite_data(copied), ok=False, error=outcome.error)
        copied.append(
            {
                "repository": repository,
                "destination": joined_destination(job.destination, repository_folder(repository)),
                "bytes": outcome.data["bytes"],
                "files": outcome.data["files"],
                "duration": round(time.monotonic() - started, 3),
                "verified": outcome.data["verified"],
            }
        )
    return Outcome(offsite_data(copied))


def offsite_data(copied: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "repositories": copied,
        "bytes": sum(entry["bytes"] for entry in copied),
        "files": sum(entry["files"] for entry in copied),
    }


def copy_under_lock(runner: Runner, repository: str) -> Outcome:
    """One ``borg with-lock`` whose command is the inner agent; its JSON lines are relayed.
    However this ends (an exception too), the inner agent and its tool are gone when it
    returns: stdin closed first (the inner agent stops its tool, borg releases the lock), then
    signals to the whole process group."""
    session = runner.session
    run = BorgRun()
    try:
        process = subprocess.Popen(
            with_lock_argv(runner.borg, runner.job, repository),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=with_lock_environment(runner.env),
            start_new_session=True,  # one group: borg, the inner agent and the tool
        )
    except OSError as error:
        return failure("BorgNotStarted", f"cannot start borg: {error.strerror}")
    final: Dict[str, Any] = {}
    try:
        send_copy_job(process, locked_copy_job(runner.job, repository, time.time()))
        relay_locked_copy(session, process, run, final)
    finally:
        stop_locked_copy(process)
    rc = session.borg_finished(process.wait())
    return locked_copy_outcome(session, repository, run, rc, final)


def send_copy_job(process: subprocess.Popen[bytes], copy: Dict[str, Any]) -> None:
    assert process.stdin is not None
    with contextlib.suppress(OSError):  # borg ended already (no lock): its stderr says why
        process.stdin.write(json.dumps(copy).encode("ascii") + b"\n")
        process.stdin.flush()


def relay_locked_copy(
    session: Session, process: subprocess.Popen[bytes], run: BorgRun, final: Dict[str, Any]
) -> None:
    """Passes the inner agent's progress and log lines on, keeps its ``copied`` line in
    ``final``, and borg's own lines (a LockTimeout) in ``run``; stops on a stop request."""
    events: queue.Queue[Tuple[str, bytes]] = queue.Queue()
    start_thread(pump_named_lines, process.stdout, "stdout", events)
    start_thread(pump_named_lines, process.stderr, "stderr", events)
    open_streams = {"stdout", "stderr"}
    exited_at: Optional[float] = None
    while open_streams:
        if session.stop_reason and process.poll() is None:
            session.interrupted = True
            stop_locked_copy(process)
        try:
            kind, payload = events.get(timeout=0.1)
        except queue.Empty:
            if process.poll() is not None:
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > PIPE_DRAIN_TIMEOUT:
                    return
            continue
        if kind.endswith("_end"):
            open_streams.discard(kind[: -len("_end")])
        elif kind == "stderr":
            handle_stderr_line(session, payload, run)
        else:
            relay_inner_line(session, payload, final)


def pump_named_lines(stream: IO[bytes], kind: str, events: queue.Queue[Tuple[str, bytes]]) -> None:
    for line in iter(lambda: stream.readline(BORG_LINE_LIMIT), b""):
        events.put((kind, line))
    events.put((kind + "_end", b""))


def relay_inner_line(session: Session, line: bytes, final: Dict[str, Any]) -> None:
    record = json_object(line.decode("utf-8", "surrogateescape").strip())
    if record is None:
        session.handle_record({"type": "text", "message": line.decode("utf-8", "replace")})
        return
    if record.get("type") == "copied":
        final.update(record)
    elif record.get("type") in ("progress", "log"):
        session.warnings += record.get("level") == "warning"
        session.emit(record)


def stop_locked_copy(process: subprocess.Popen[bytes]) -> None:
    """Closing stdin asks the inner agent to stop its tool and exit (borg then releases the
    lock); SIGTERM, then SIGKILL to the whole group if that takes too long."""
    if process.stdin is not None and not process.stdin.closed:
        with contextlib.suppress(OSError):
            process.stdin.close()
    for signum in (None, signal.SIGTERM, signal.SIGKILL):
        if signum is not None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signum)
        try:
            process.wait(timeout=LOCKED_COPY_STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue


def locked_copy_outcome(
    session: Session, repository: str, run: BorgRun, rc: int, final: Dict[str, Any]
) -> Outcome:
    if session.interrupted:
        return stopped(session)
    error = final.get("error")
    if final and not error and rc == EXIT_OK:
        return Outcome(
            {"bytes": final["bytes"], "files": final["files"], "verified": final["verified"]}
        )
    if not isinstance(error, dict):
        error = borg_error(run)  # borg itself failed: no lock (LockTimeout), not a repository
    message = f"offsite {repository}: {error.get('message', '')}"
    return Outcome({}, ok=False, error={"msgid": str(error.get("msgid")), "message": message})


# -- the inner agent: copy and verify while borg holds the lock -------------------------------


class LockedCopy:
    """The inner agent's state: its output, and whether to stop (stdin closed, a signal, or
    the outer agent no longer reading)."""

    def __init__(self) -> None:
        self.output = JsonLinesOutput(sys.stdout.fileno())
        self.stop = threading.Event()
        self.last_progress = 0.0

    def emit(self, event: Dict[str, Any]) -> None:
        if not self.output.write(event):
            self.stop.set()

    def progress(self, event: Dict[str, Any], final: bool = False) -> bool:
        """At most one progress line a second (and the last one of a phase); True when sent."""
        now = time.monotonic()
        if not final and now - self.last_progress < PROGRESS_INTERVAL:
            return False
        self.last_progress = now
        self.emit(event)
        return True


class LockedCopySession(Session):
    """What the stdin watcher reports to: any stop request stops the copy."""

    def __init__(self, state: LockedCopy) -> None:
        super().__init__("offsite", state.output)
        self.state = state

    def request_stop(self, msgid: str, message: str) -> None:
        self.state.stop.set()


def run_locked_copy() -> int:
    """The command borg with-lock runs: reads the copy job, copies, verifies, and ends with one
    ``copied`` line (exit 0) or one ``copied`` line with an ``error`` (exit 2)."""
    state = LockedCopy()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda _signum, _frame: state.stop.set())
    try:
        copy = read_copy_job(sys.stdin.fileno(), state)
        outcome = copy_and_verify(state, copy)
    except Rejected as rejection:
        outcome = failure("JobRejected", rejection.message)
    except Exception as error:
        report_traceback()
        outcome = failure("AgentError", f"the copy failed unexpectedly ({type(error).__name__})")
    record: Dict[str, Any] = {"type": "copied", **outcome.data}
    if not outcome.ok:
        record["error"] = outcome.error
    state.emit(record)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def read_copy_job(fd: int, state: LockedCopy) -> Dict[str, Any]:
    """The first stdin line; a thread then watches for EOF (the outer agent is gone or wants
    the copy stopped). The job is checked again: the command line is reachable by hand."""
    watcher = StdinWatcher(fd, LockedCopySession(state))
    watcher.start()
    copy = parse_job_line(watcher.job_line(JOB_READ_TIMEOUT))
    if not isinstance(copy, dict):
        raise Rejected("job", "must be a JSON object")
    tool = validate_offsite_tool(copy.get("tool"), "tool")
    validate_offsite_repositories([copy.get("source")], "source")
    for field_name in ("destination", "replaced"):
        value = copy.get(field_name)
        # not held to the job's length limit: ".replaced/NAME/STAMP" was added to it
        if value is not None and destination_form_error(tool, require_text(value, field_name)):
            raise Rejected(field_name, "is not a destination of " + tool)
    for i, option in enumerate(validate_tool_options(copy.get("tool_options"), "tool_options")):
        if not tool_option_allowed(tool, option, f"tool_options[{i}]"):
            raise Rejected(f"tool_options[{i}]", "is not allowed")
    validate_max_delete(copy.get("max_delete"), "max_delete")
    return copy


def copy_and_verify(state: LockedCopy, copy: Dict[str, Any]) -> Outcome:
    binary = find_on_path(copy["tool"], os.environ.get("PATH", os.defpath))
    if binary is None:
        return failure("ToolNotFound", f"{copy['tool']} is not installed on this host")
    env = tool_environment(os.environ)
    copied = ToolRun(state, copy, "copy")
    copied.run(copy_argv(binary, copy), env)
    problem = copied.problem()
    if problem is not None:
        return problem
    verified = ToolRun(state, copy, "verify")
    verified.run(verify_argv(binary, copy), env)
    totals = copied.totals()
    differences = verified.differences()
    if state.stop.is_set():
        return failure("CopyStopped", "the copy was stopped")
    if differences:
        return failure("VerificationFailed", f"verification found {differences} differences")
    if verified.rc != 0 or differences is None:
        return failure("VerificationFailed", verified.exit_message())
    return Outcome({**totals, "verified": True})


class ToolRun:
    """One run of rclone or rsync: its lines read as they come (progress passed on at most once
    a second, other lines as log lines), stopped when the inner agent is told to stop."""

    def __init__(self, state: LockedCopy, copy: Dict[str, Any], phase: str) -> None:
        self.state = state
        self.tool = copy["tool"]
        self.repository = copy["source"]
        self.max_delete = copy["max_delete"]
        self.phase = phase
        self.rc = 0
        # What the summary is read from: rsync's stdout (not its stderr, where ssh may warn),
        # rclone's log lines.
        self.lines = BoundedList(RESULT_LIST_BUDGET)
        self.last_error = ""
        self.hit_max_delete = False
        self.figures: Optional[Dict[str, Optional[float]]] = None
        self.figures_sent: Optional[Dict[str, Optional[float]]] = None  # the last passed on

    def run(self, argv: List[str], env: Dict[str, str]) -> None:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
        except OSError as error:
            self.rc, self.last_error = 127, f"cannot start {self.tool}: {error.strerror}"
            return
        events: queue.Queue[Tuple[str, bytes]] = queue.Queue()
        start_thread(pump_pieces, process.stdout, "stdout", events)
        start_thread(pump_pieces, process.stderr, "stderr", events)
        open_streams = {"stdout", "stderr"}
        while open_streams:
            if self.state.stop.is_set() and process.poll() is None:
                stop_tool(process)
            try:
                kind, payload = events.get(timeout=0.1)
            except queue.Empty:
                self.keep_alive()
                continue
            if kind.endswith("_end"):
                open_streams.discard(kind[: -len("_end")])
            else:
                self.read(kind, payload.decode("utf-8", "surrogateescape"))
        self.rc = exit_status(process.wait())
        if self.figures is not None and self.figures is not self.figures_sent:
            self.state.progress(self.progress_event(self.figures), final=True)

    def read(self, kind: str, text: str) -> None:
        figures = self.figures_of(text)
        if figures is not None:
            self.figures = figures
            if self.state.progress(self.progress_event(figures)):
                self.figures_sent = figures
            return
        if not text.strip():
            return
        self.hit_max_delete = self.hit_max_delete or any(t in text for t in MAX_DELETE_TEXT)
        if self.tool == "rsync" and kind == "stdout":
            self.lines.add(text.strip())  # the copy's --stats, the dry run's list of changes
            return
        if self.tool == "rclone":
            self.lines.add(text.strip())  # its check summary, read when verifying
        event = tool_log_event(self.tool, text)
        if event is not None:
            self.last_error = event["message"] if event["level"] == "error" else self.last_error
            self.last_error = self.last_error or event["message"]
            self.state.emit(event)

    def keep_alive(self) -> None:
        """A tool that prints nothing for a while (rsync's dry run reading every file for its
        checksum) still sends a progress line now and then: the coordinator sees it alive."""
        if time.monotonic() - self.state.last_progress >= KEEP_ALIVE_INTERVAL:
            self.state.progress(self.progress_event(self.figures or {}), final=True)

    def figures_of(self, text: str) -> Optional[Dict[str, Optional[float]]]:
        if self.tool == "rsync":
            return rsync_figures(text)
        record = rclone_record(text)
        return rclone_figures(record, self.phase) if record else None

    def progress_event(self, figures: Dict[str, Optional[float]]) -> Dict[str, Any]:
        return offsite_progress(self.repository, self.phase, time.time(), figures)

    def problem(self) -> Optional[Outcome]:
        """Why the copy failed, or None."""
        if self.state.stop.is_set():
            return failure("CopyStopped", "the copy was stopped")
        if self.max_delete is not None and (
            self.hit_max_delete or (self.tool == "rsync" and self.rc == 25)
        ):
            return failure(
                "MaxDeleteExceeded",
                f"more than max_delete={self.max_delete} files to delete: the copy stopped",
            )
        if self.rc != 0:
            return failure("CopyFailed", self.exit_message())
        return None

    def exit_message(self) -> str:
        detail = f": {self.last_error}" if self.last_error else ""
        return capped_text(f"{self.tool} exited {self.rc}{detail}")

    def totals(self) -> Dict[str, int]:
        if self.tool == "rsync":
            return rsync_totals(self.lines.items)
        figures = self.figures or {}
        return {"bytes": int(figures.get("bytes") or 0), "files": int(figures.get("files") or 0)}

    def differences(self) -> Optional[int]:
        if self.tool == "rsync":
            # the dry run prints one line per change (all counted, beyond the kept ones too)
            return self.lines.count if self.rc == 0 else None
        return rclone_differences(self.lines.items)


def pump_pieces(stream: IO[bytes], kind: str, events: queue.Queue[Tuple[str, bytes]]) -> None:
    """Lines ended by a newline or a carriage return (rsync rewrites its progress line)."""
    pending = b""
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        pending += chunk
        pieces = re.split(rb"[\r\n]", pending)
        pending = pieces.pop()
        for piece in pieces:
            events.put((kind, piece))
        if len(pending) > BORG_LINE_LIMIT:
            events.put((kind, pending))
            pending = b""
    if pending:
        events.put((kind, pending))
    events.put((kind + "_end", b""))


def stop_tool(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=TOOL_STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- how a person sees an offsite copy ---------------------------------------------------------


def offsite_progress_text(event: Dict[str, Any]) -> str:
    total = event["total_bytes"]
    of_total = f" of {human_size(total)}" if total else ""
    speed = f", {human_size(event['speed'])}/s" if event["speed"] else ""
    return (
        f"{event['phase']} {printable(event['repository'])}: "
        f"{human_size(event['bytes'])}{of_total}, {event['files']} files{speed}"
    )


def offsite_summary(data: Dict[str, Any]) -> List[str]:
    lines = [
        f"{printable(entry['repository'])} -> {printable(entry['destination'])}: "
        f"{human_size(entry['bytes'])} in {entry['files']} files, "
        f"{'verified' if entry['verified'] else 'NOT verified'}"
        for entry in data["repositories"]
    ]
    return [*lines, f"copied {human_size(data['bytes'])} in {data['files']} files"]


# Restore and drills: extract (a restore into a directory) and drill (a sampled restore compared
# with the live files). Nothing is written outside the destination (docs/security.md).
# ---------------------------------------------------------------------------------------------

DEFAULT_RESTORE_ROOT = "/var/lib/backup-drone/restore"
# Where an agent that may not write DEFAULT_RESTORE_ROOT (not run as root) restores by default.
USER_RESTORE_ROOT = os.path.join("~", ".local", "share", "backup-drone", "restore")
DESTINATION_SUFFIXES = 1000  # <archive>, <archive>.1, ... tried for a fresh destination
HASH_BLOCK = 1024 * 1024
DRILL_LOGGED_MISMATCHES = 20  # log lines for the first mismatches (the result counts them all)


def policy_restore(raw: Dict[str, Any]) -> Tuple[Optional[str], bool]:
    """The policy's ``restore_root`` (None: the default) and ``restore_anywhere``."""
    root = None
    if "restore_root" in raw:
        root = require_absolute_path(raw["restore_root"], "restore_root")
    anywhere = validate_bool(raw.get("restore_anywhere", False), "restore_anywhere")
    return root, anywhere


def restore_root(policy: Policy) -> str:
    """The policy's restore root, else DEFAULT_RESTORE_ROOT when this user may create or write
    it, else USER_RESTORE_ROOT in this user's home; "" when there is none (no home)."""
    if policy.restore_root is not None:
        return policy.restore_root
    if may_write_at(DEFAULT_RESTORE_ROOT):
        return DEFAULT_RESTORE_ROOT
    root = os.path.expanduser(USER_RESTORE_ROOT)
    return root if os.path.isabs(root) else ""


def may_write_at(path: str) -> bool:
    """Whether this user could create ``path`` (or write into it): its nearest existing
    ancestor is a directory this user may write."""
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def check_policy_restore(policy: Policy, operation: str, job: Job) -> None:
    """An extract's destination: inside the restore root (symlinks of its existing part
    followed) and new or empty, unless the policy allows restoring anywhere (over live files)."""
    if operation != "extract" or not job.destination:
        return
    destination = os.path.realpath(job.destination)
    exists = os.path.lexists(destination)
    if exists and not os.path.isdir(destination):
        raise Rejected("destination", "must be a directory")
    if policy.restore_anywhere:
        return
    if not restore_root(policy):
        raise Rejected("destination", "this host has no restore root (set restore_root)")
    root = path_components(os.path.realpath(restore_root(policy)))
    inside = path_components(destination)
    if len(inside) <= len(root) or not is_under(inside, root):
        raise Rejected(
            "destination", "is outside the restore root and this host's policy does not allow it"
        )
    if exists and os.listdir(destination):
        raise Rejected("destination", "must be a new or empty directory inside the restore root")


def extract_argv(borg: str, job: Job, archive: str, patterns: Sequence[str]) -> List[str]:
    """borg extract writes relative to its working directory (the destination)."""
    return [
        borg,
        "extract",
        "--progress",
        *common_options(job),
        "--",
        f"{job.repository}::{archive}",
        *patterns,
    ]


def contents_argv(borg: str, job: Job, archive: str) -> List[str]:
    return [
        borg,
        "list",
        "--json-lines",
        *common_options(job),
        "--",
        f"{job.repository}::{archive}",
    ]


def extract_progress_event(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """borg extract's ``progress_percent`` record (with the file it is at) -> a progress event:
    ``current`` and ``total`` are bytes of file content."""
    info = record.get("info")
    if (
        record.get("type") != "progress_percent"
        or record.get("msgid") != "extract"
        or record.get("finished")
        or not isinstance(info, list)
        or not info
    ):
        return None
    return {
        "type": "progress",
        "operation": "extract",
        "time": record.get("time", time.time()),
        "current": record.get("current", 0),
        "total": record.get("total", 0),
        "path": str(info[-1]),
    }


PROGRESS_READERS: Dict[str, Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]] = {
    "create": progress_event,
    "extract": extract_progress_event,
}


def resolve_archive(runner: Runner) -> Tuple[Optional[str], Optional[Outcome]]:
    """(the archive the job names, None), ``latest`` being the newest of its prefix; or
    (None, why not)."""
    job = runner.job
    if job.archive and job.archive != LATEST_ARCHIVE:
        return job.archive, None
    listing = runner.run(list_argv(runner.borg, job))
    halted = runner.halted(listing)
    if halted:
        return None, halted
    archives = archive_summaries(parse_stdout_json(listing))
    if not archives:
        return None, failure("NoArchive", f"no archive of the prefix {job.archive_prefix} yet")
    name = str(archives[-1]["name"])
    if not ARCHIVE_NAME.fullmatch(name):
        return None, failure("BorgOutputInvalid", "borg listed an archive name the agent refuses")
    return name, None


def fresh_destination(root: str, archive: str) -> str:
    """A new directory ``ROOT/ARCHIVE`` (``ARCHIVE.1``, ``.2``, ... when taken), mode 0700."""
    if not root:
        raise OSError("this host has no restore root (set restore_root in the policy)")
    os.makedirs(root, mode=0o700, exist_ok=True)
    for index in range(DESTINATION_SUFFIXES):
        candidate = os.path.join(root, archive if index == 0 else f"{archive}.{index}")
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            continue
        return candidate
    raise OSError(f"{DESTINATION_SUFFIXES} restores of {archive} exist already in {root}")


def prepare_destination(runner: Runner, archive: str) -> str:
    if not runner.job.destination:
        return fresh_destination(runner.restore_root, archive)
    os.makedirs(runner.job.destination, mode=0o700, exist_ok=True)
    return runner.job.destination


def tree_size(top: str) -> Tuple[int, int]:
    """(entries that are not directories, bytes of the regular files) under ``top``, symlinks
    not followed; each hard link counted."""
    import stat  # extract and drill only

    files = size = 0
    for directory, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            try:
                status = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if not stat.S_ISDIR(status.st_mode):
                files += 1
                size += status.st_size if stat.S_ISREG(status.st_mode) else 0
    return files, size


def run_extract(runner: Runner) -> Outcome:
    """Restores the archive (or its ``restore_paths``) into the destination. When borg failed
    or was stopped the data says ``partial``: what is in the destination is incomplete."""
    archive, halted = resolve_archive(runner)
    if halted is not None or archive is None:
        return halted or failure("NoArchive", "no archive to restore")
    try:
        destination = prepare_destination(runner, archive)
    except OSError as error:
        return failure("DestinationError", f"cannot create the destination: {error}")
    patterns = [f"pp:{path}" for path in runner.job.restore_paths]
    run = runner.run(extract_argv(runner.borg, runner.job, archive, patterns), cwd=destination)
    files, size = tree_size(destination)
    data = {
        "archive": archive,
        "destination": destination,
        "files": files,
        "bytes": size,
        "warnings": run.problems.count,
        "partial": run.rc >= EXIT_FAILED or runner.session.stop_reason is not None,
    }
    borg_failed = failed(run)
    return Outcome(data, ok=False, error=borg_failed.error) if borg_failed else Outcome(data)


def archived_files(listing: bytes) -> Dict[str, int]:
    """``borg list --json-lines`` output -> {path: size} of its regular files."""
    files: Dict[str, int] = {}
    for line in listing.decode("utf-8", "surrogateescape").splitlines():
        item = json_object(line.strip())
        if item is None or item.get("type") != "-" or item.get("healthy") is False:
            continue
        path, size = item.get("path"), item.get("size")
        if isinstance(path, str) and isinstance(size, int) and not isinstance(size, bool):
            files[path] = size
    return files


def drill_sample(files: Dict[str, int], spec: DrillSpec) -> List[str]:
    """A repeatable random sample (``spec.seed``) of at most ``spec.max_files`` paths whose
    sizes add up to at most ``spec.size_budget``, in listing order."""
    import random  # drills only

    order = sorted(files)
    random.Random(spec.seed).shuffle(order)  # noqa: S311 - a repeatable sample, not a secret
    chosen: List[str] = []
    budget = spec.size_budget
    for path in order:
        if len(chosen) >= spec.max_files:
            break
        if files[path] <= budget:
            chosen.append(path)
            budget -= files[path]
    return sorted(chosen)


def file_digest(path: str) -> bytes:
    import hashlib  # drills only

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.digest()


def compare_with_live(restored: str, live: str) -> str:
    """ "verified", "mismatch", or "changed" when the live file is gone or its size or mtime
    differ from the archived ones (borg restores both), so a difference proves nothing."""
    import stat

    try:
        live_status = os.lstat(live)
        restored_status = os.lstat(restored)
    except FileNotFoundError:
        return "changed" if not os.path.lexists(live) else "mismatch"
    same = (
        stat.S_ISREG(live_status.st_mode)
        and live_status.st_size == restored_status.st_size
        and live_status.st_mtime_ns == restored_status.st_mtime_ns
    )
    if not same:
        return "changed"
    try:
        live_digest = file_digest(live)
    except OSError:
        return "changed"  # unreadable now: nothing to compare with
    return "verified" if file_digest(restored) == live_digest else "mismatch"


def drill_directory(root: str) -> str:
    """A private temporary directory under the restore root, or the system's when the root
    cannot be made."""
    import tempfile  # drills only

    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        return tempfile.mkdtemp(prefix=".drill-", dir=root)
    except OSError:
        return tempfile.mkdtemp(prefix="backup-drone-drill-")


class DrillTally:
    """What the comparison found, with the mismatching paths bounded like every result list."""

    def __init__(self, archive: str, missing_canaries: List[str]) -> None:
        self.archive = archive
        listed = BoundedList(RESULT_LIST_BUDGET)
        for canary in missing_canaries:
            listed.add(canary)
        self.files_verified = 0
        self.bytes_verified = 0
        self.skipped_changed = 0
        self.mismatches = BoundedList(RESULT_LIST_BUDGET)
        self.missing_canaries = listed.items  # within the budget, like every result list
        self.missing_canary_count = listed.count

    def add(self, path: str, verdict: str, size: int) -> None:
        if verdict == "verified":
            self.files_verified += 1
            self.bytes_verified += size
        elif verdict == "changed":
            self.skipped_changed += 1
        else:
            self.mismatches.add(path)

    def outcome(self) -> Outcome:
        data = {
            "archive": self.archive,
            "files_verified": self.files_verified,
            "bytes_verified": self.bytes_verified,
            "skipped_changed": self.skipped_changed,
            "mismatches": self.mismatches.items,
            "mismatch_count": self.mismatches.count,
            "missing_canaries": self.missing_canaries,
        }
        if self.mismatches.count:
            message = f"{self.mismatches.count} restored file(s) differ from the live files"
            return Outcome(data, ok=False, error={"msgid": "DrillMismatch", "message": message})
        if self.missing_canary_count:
            message = f"{self.missing_canary_count} canary file(s) are not in the archive"
            return Outcome(
                data, ok=False, error={"msgid": "DrillCanaryMissing", "message": message}
            )
        return Outcome(data)


def run_drill(runner: Runner) -> Outcome:
    """Restores a sample of the latest archive (plus the canaries) into a temporary directory,
    compares it with the live files, and removes the directory whatever happened."""
    archive, halted = resolve_archive(runner)
    if halted is not None or archive is None:
        return halted or failure("NoArchive", "no archive to drill")
    listing = runner.run(contents_argv(runner.borg, runner.job, archive))
    halted = runner.halted(listing)
    if halted:
        return halted
    files = archived_files(listing.stdout)
    spec = runner.job.drill
    canaries = ["/".join(path_components(canary)) for canary in spec.canaries]
    sample = sorted(set(drill_sample(files, spec)) | {path for path in canaries if path in files})
    tally = DrillTally(archive, ["/" + path for path in canaries if path not in files])
    for canary in tally.missing_canaries:
        report_drill_problem(runner.session, "DrillCanaryMissing", f"{canary} is not archived")
    if not sample:
        return tally.outcome()
    import shutil  # drills only

    directory = drill_directory(runner.restore_root)
    try:
        # pp: (a path and what is under it) rather than pf:, which borg 1.2 reports as
        # "never matched" even when it matched
        patterns = [f"pp:{path}" for path in sample]
        run = runner.run(extract_argv(runner.borg, runner.job, archive, patterns), cwd=directory)
        halted = runner.halted(run)
        if halted:
            return halted
        for path in sample:
            verdict = compare_with_live(os.path.join(directory, path), "/" + path)
            tally.add(path, verdict, files[path])
            if verdict == "mismatch" and tally.mismatches.count <= DRILL_LOGGED_MISMATCHES:
                report_drill_problem(runner.session, "DrillMismatch", f"/{path} differs")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return tally.outcome()


def report_drill_problem(session: Session, msgid: str, message: str) -> None:
    """A log line naming what the drill found, as borg's errors are named."""
    session.handle_record(log_record("ERROR", msgid, message))


def extract_summary(data: Dict[str, Any]) -> List[str]:
    partial = " (partial)" if data.get("partial") else ""
    return [
        f"restored {data['archive']} into {printable(data['destination'])}{partial}: "
        f"{data['files']} files, {human_size(data['bytes'])}"
    ]


def drill_summary(data: Dict[str, Any]) -> List[str]:
    return [
        f"drill of {data['archive']}: {data['files_verified']} files "
        f"({human_size(data['bytes_verified'])}) verified, {data['skipped_changed']} skipped "
        f"(changed since), {data['mismatch_count']} mismatches",
        *[f"mismatch: {printable(path)}" for path in data["mismatches"]],
        *[f"missing canary: {printable(path)}" for path in data["missing_canaries"]],
    ]


def progress_text(event: Dict[str, Any]) -> str:
    """One progress event as a person reads it."""
    if event.get("operation") == "offsite":
        return offsite_progress_text(event)
    if event.get("operation") == "extract":
        return (
            f"{human_size(event['current'])} of {human_size(event['total'])} restored  "
            f"{printable(event['path'])}"
        )
    return (
        f"{event['nfiles']} files, {human_size(event['original_size'])} read, "
        f"{human_size(event['deduplicated_size'])} new  {printable(event['path'])}"
    )


# -- how a person sees each result (by hand) ---------------------------------------------------


def hello_summary(data: Dict[str, Any]) -> List[str]:
    return [f"agent {data['agent_version']}, protocol {data['protocol']}"]


def create_summary(data: Dict[str, Any]) -> List[str]:
    archive, repository = data["archive"], data["repository"]
    sizes = [
        human_size(archive[key])
        for key in ("original_size", "compressed_size", "deduplicated_size")
    ]
    return [
        f"archive {archive['name']}: {archive['nfiles']} files, {sizes[0]} original, "
        f"{sizes[1]} compressed, {sizes[2]} new",
        f"repository: {human_size(repository['deduplicated_size'])} stored for "
        f"{human_size(repository['total_size'])} of archives",
    ]


def prune_summary(data: Dict[str, Any]) -> List[str]:
    freed = data["compact"]["freed_bytes"]
    return [
        *[f"kept    {name}" for name in data["kept"]],
        *[f"pruned  {name}" for name in data["pruned"]],
        *left_out(data["kept_count"] - len(data["kept"]), "kept archives"),
        *left_out(data["pruned_count"] - len(data["pruned"]), "pruned archives"),
        "compact freed " + (human_size(freed) if freed is not None else "an unknown amount"),
    ]


def left_out(count: int, what: str) -> List[str]:
    """A line about the names a result left out (see RESULT_LIST_BUDGET), if any."""
    return [f"... and {count} more {what}, not listed"] if count > 0 else []


def stats_summary(data: Dict[str, Any]) -> List[str]:
    last = data["last_archive"]
    return [
        f"{data['archive_count']} archives, {human_size(data['total_size'])} original, "
        f"{human_size(data['compressed_size'])} compressed, "
        f"{human_size(data['deduplicated_size'])} stored",
        f"last archive: {last['name']} ({last['time']})" if last else "no archives yet",
        *encryption_summary(data.get("encryption")),
    ]


def encryption_summary(encryption: Optional[Dict[str, str]]) -> List[str]:
    if not encryption:
        return []
    keyfile = encryption.get("keyfile")
    return [f"encryption: {encryption['mode']}" + (f", key file {keyfile}" if keyfile else "")]


def list_summary(data: Dict[str, Any]) -> List[str]:
    older = left_out(data["archive_count"] - len(data["archives"]), "older archives")
    return [*older, *[f"{a['name']}  {a['time']}" for a in data["archives"]]] or ["no archives"]


def check_summary(data: Dict[str, Any]) -> List[str]:
    how = " (data verified)" if data.get("verify_data") else ""
    return [
        "repository OK" + how + (" (partial: time limit reached)" if data.get("partial") else "")
    ]


def sequence_summary(data: Dict[str, Any]) -> List[str]:
    return ["completed: " + (", ".join(data["completed"]) or "no step")]


# -- the registry: every operation the agent accepts, described once -------------------------


class Operation:
    """One word the agent accepts. The argparse commands, the operation check, the required
    fields, the policy's ``operations``, the dispatch and the readable summaries all come from
    the table below."""

    __slots__ = ("help", "name", "requires", "run", "step", "summary")

    def __init__(
        self,
        name: str,
        help: str,
        run: Callable[[Runner], Outcome],
        requires: Tuple[str, ...],
        summary: Callable[[Dict[str, Any]], List[str]],
        step: bool,
    ) -> None:
        self.name = name
        self.help = help  # one line for --help
        self.run = run
        self.requires = requires  # job fields that must be set (see is_set)
        self.summary = summary  # the result's data -> lines for a person
        self.step = step  # may be a step of a sequence


OPERATION_TABLE = (
    Operation("hello", "show the agent's and borg's versions", run_hello, (), hello_summary, False),
    Operation(
        "create",
        "back up the job's paths into a new archive",
        run_create,
        ("repository", "archive_prefix", "paths"),
        create_summary,
        True,
    ),
    Operation(
        "prune",
        "prune this prefix's archives by the keep rules, then compact",
        run_prune,
        ("repository", "archive_prefix", "keep"),
        prune_summary,
        True,
    ),
    Operation(
        "stats",
        "repository totals and this prefix's archive count",
        run_stats,
        ("repository",),
        stats_summary,
        True,
    ),
    Operation("list", "list the archives", run_list, ("repository",), list_summary, True),
    Operation("check", "check the repository", run_check, ("repository",), check_summary, True),
    Operation(
        "extract",
        "restore an archive, or paths of it, into a directory",
        run_extract,
        ("repository", "archive_prefix", "archive"),
        extract_summary,
        False,
    ),
    Operation(
        "drill",
        "restore a sample of the latest archive and compare it with the live files",
        run_drill,
        ("repository", "archive_prefix"),
        drill_summary,
        True,
    ),
    Operation(
        "offsite",
        "copy local repositories elsewhere with rclone or rsync, each under its lock",
        lambda runner: run_offsite(runner),
        ("repositories", "tool", "destination"),
        lambda data: offsite_summary(data),
        False,  # the coordinator runs it alone: it holds each repository for a long time
    ),
    Operation(
        SEQUENCE,
        "run the job's steps in order as one request",
        run_sequence,
        (),
        sequence_summary,
        False,
    ),
)
REGISTRY: Dict[str, Operation] = {operation.name: operation for operation in OPERATION_TABLE}
OPERATIONS = tuple(REGISTRY)  # every word the agent accepts
STEP_OPERATIONS = tuple(operation.name for operation in OPERATION_TABLE if operation.step)


# ---------------------------------------------------------------------------------------------
# Output: JSON lines for the coordinator, or readable text for a person
# ---------------------------------------------------------------------------------------------


class Output:
    """Where events go. ``write`` returns False once the reader is gone (broken pipe)."""

    def write(self, event: Dict[str, Any]) -> bool:
        raise NotImplementedError


class JsonLinesOutput(Output):
    """One JSON object per line, written straight to the file descriptor (no buffering to
    flush, and a broken pipe is noticed on the write that hits it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False

    def write(self, event: Dict[str, Any]) -> bool:
        if self.broken:
            return False
        data = (json.dumps(event, ensure_ascii=True, default=str) + "\n").encode("ascii")
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            self.broken = True
        return not self.broken


class HumanOutput(Output):
    """Progress as one updating line on a terminal (plain lines, at most one a second,
    otherwise) and a readable summary at the end."""

    def __init__(self, stream: IO[str], errors: IO[str]) -> None:
        self.stream = stream
        self.errors = errors
        self.tty = stream.isatty()
        self.progress_shown = False
        self.last_plain_progress = 0.0

    def write(self, event: Dict[str, Any]) -> bool:
        try:
            getattr(self, "show_" + event["type"])(event)
            self.stream.flush()
        except OSError:  # a broken pipe: the reader is gone
            return False
        return True

    def show_hello(self, event: Dict[str, Any]) -> None:
        # No borg version: borg is missing (the summary says so) or the request was rejected.
        borg = f"borg {event['borg_version']}, " if event["borg_version"] else ""
        python = event["python_version"]
        self.line(f"backup-drone {AGENT_VERSION} on {event['hostname']}: {borg}Python {python}")
        if event.get("steps"):
            self.line("steps: " + ", ".join(event["steps"]))

    def show_progress(self, event: Dict[str, Any]) -> None:
        text = progress_text(event)
        if self.tty:
            import shutil  # by hand only: the coordinator's requests never need it

            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\x1b[K" + text[:width])
            self.progress_shown = True
        elif time.monotonic() - self.last_plain_progress >= 1.0:
            self.last_plain_progress = time.monotonic()
            self.line(text)

    def show_log(self, event: Dict[str, Any]) -> None:
        self.end_progress()
        msgid = f" [{event['msgid']}]" if event["msgid"] else ""
        self.errors.write(f"{event['level']}{msgid}: {printable(event['message'])}\n")
        self.errors.flush()

    def show_step(self, event: Dict[str, Any]) -> None:
        self.show_result(event)

    def show_result(self, event: Dict[str, Any]) -> None:
        self.end_progress()
        for text in summary_lines(event):
            self.line(text)

    def end_progress(self) -> None:
        if self.progress_shown:
            self.stream.write("\n")
            self.progress_shown = False

    def line(self, text: str) -> None:
        self.end_progress()
        self.stream.write(text + "\n")


def printable(text: object) -> str:
    """Text safe for a terminal: undecodable bytes and control characters shown escaped."""
    raw = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return CONTROL_CHARACTERS.sub(lambda m: repr(m.group())[1:-1], raw)


def human_size(value: object) -> str:
    size = float(value) if isinstance(value, (int, float)) else 0.0
    if size < 1000:
        return f"{size:.0f} B"
    exponent = 0
    while size >= 1000 and exponent < 4:
        size /= 1000
        exponent += 1
    return f"{size:.2f} {' kMGT'[exponent]}B"


def summary_lines(result: Dict[str, Any]) -> List[str]:
    """A result or step line -> what a person reads: the operation's summary (from the
    registry) when it succeeded, the error when not, then duration and exit code."""
    data = result.get("data") or {}
    operation = result["operation"]
    known = REGISTRY.get(operation)
    lines = known.summary(data) if result["ok"] and known else []
    if result.get("warnings"):
        lines.append(f"{result['warnings']} warning(s), see above")
    if not result["ok"]:
        error = result.get("error") or {}
        where = f" ({error['field']})" if error.get("field") else ""
        where = f" (step {error['step']})" if error.get("step") else where
        lines.append(
            f"FAILED: {error.get('msgid', '')}{where}: {printable(error.get('message', ''))}"
        )
    lines.append(
        f"{operation or 'request'} finished in {result['duration']:.1f} s, exit code {result['rc']}"
    )
    return lines


# ---------------------------------------------------------------------------------------------
# The request: validate, say hello, run, report
# ---------------------------------------------------------------------------------------------


def write_outcome(
    session: Session, kind: str, operation: str, outcome: Outcome, span: Span, field_name: str = ""
) -> int:
    """Writes a ``result`` line (the request's last) or a ``step`` line (one step of a
    sequence): the same fields, counted over ``span``. Returns the exit code it states."""
    borg_rc = span.borg_rc()
    code = exit_code(outcome, borg_rc, rejected=bool(field_name))
    event: Dict[str, Any] = {
        "type": kind,
        "operation": operation,
        "ok": outcome.ok,
        "rc": code,
        "borg_rc": borg_rc,
        "duration": span.duration(),
        "warnings": span.warnings(),
        "data": outcome.data,
    }
    if not outcome.ok:
        event["error"] = dict(outcome.error or {})
        if field_name:
            event["error"]["field"] = field_name
    if kind == "step":
        session.emit(event)  # a broken output stops what would come next
    else:
        session.output.write(event)
    return code


class Request:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.span = Span(session)

    def result(self, outcome: Outcome, field_name: str = "") -> int:
        """Writes the final ``result`` line; returns the exit code. A sequence's result lists
        the steps that completed and, when it failed, names the step that failed or did not
        start."""
        session = self.session
        if session.operation == SEQUENCE and not field_name:
            outcome = Outcome({"completed": list(session.completed)}, outcome.ok, outcome.error)
            step = session.step or (session.steps[0] if session.steps else "")
            if outcome.error is not None and step:
                outcome.error = {**outcome.error, "step": step}
        code = write_outcome(session, "result", session.operation, outcome, self.span, field_name)
        session.result_sent = True
        return code

    def reject(self, rejection: Rejected) -> int:
        self.session.emit(hello_event(self.session, ""))
        error = {"msgid": "JobRejected", "message": rejection.message}
        return self.result(Outcome({}, ok=False, error=error), field_name=rejection.field)

    def crash(self, error: Exception) -> int:
        """An exception nobody expected: the traceback goes to stderr, a running borg is
        stopped, and the result (if none was sent yet) says only the exception's type, since
        its text may hold job data. Always exit 2: 1 would mean "finished with warnings"."""
        session = self.session
        report_traceback()
        try:
            stop_running_borg(session)
            if not session.result_sent:
                if not session.hello_sent:
                    session.emit(hello_event(session, ""))
                message = (
                    f"the agent failed unexpectedly ({type(error).__name__}); "
                    "the details are on the agent's stderr"
                )
                self.result(failure("AgentError", message))
        except Exception:  # nothing more can be reported on stdout
            report_traceback()
        return EXIT_FAILED


def report_traceback() -> None:
    try:
        import traceback  # only ever needed for a bug

        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
    except Exception:  # noqa: S110 - stderr is gone too: exit 2 says enough
        pass


def stop_running_borg(session: Session) -> None:
    process = session.process
    if process is not None and process.poll() is None:
        session.interrupted = True
        stop_process(process, SIGINT_GRACE, SIGTERM_GRACE)
    if process is not None:
        session.borg_finished(process.wait())


def exit_code(outcome: Outcome, borg_rc: Optional[int], rejected: bool) -> int:
    if rejected:
        return EXIT_REJECTED
    if not outcome.ok:
        return EXIT_FAILED
    return EXIT_WARNING if borg_rc == EXIT_WARNING else EXIT_OK


def execute(request: Request, job: Job, policy: Policy) -> int:
    """Runs a validated job: hello first, then the operation, then the result."""
    session = request.session
    session.steps = job.steps
    env = borg_environment(os.environ, job)
    borg = find_borg(policy, env)
    version = borg_version(borg, env)
    session.emit(hello_event(session, version))
    if borg is None or not version:
        return request.result(failure("BorgNotFound", "borg is not installed or does not run"))
    runner = Runner(session, job, borg, env, version)
    runner.restore_root = restore_root(policy)
    return request.result(run_operation(runner, session.operation))


def install_stop_signals(session: Session) -> None:
    def stop(signum: int, _frame: object) -> None:
        session.request_stop("Interrupted", f"the agent received {signal.Signals(signum).name}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)


class StdinWatcher:
    """Reads the job line from stdin, then keeps reading: EOF or an error means the
    coordinator is gone."""

    def __init__(self, fd: int, session: Session) -> None:
        self.fd = fd
        self.session = session
        self.first_line: queue.Queue[bytes] = queue.Queue()

    def start(self) -> None:
        start_thread(self.watch)

    def watch(self) -> None:
        buffer = bytearray()
        try:
            while b"\n" not in buffer and len(buffer) <= JOB_LINE_LIMIT:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                buffer += chunk
            self.first_line.put(bytes(buffer.split(b"\n", 1)[0]))
            while os.read(self.fd, 65536):
                pass
        except OSError:
            self.first_line.put(b"")
        self.session.request_stop("CoordinatorGone", "the coordinator closed the connection")

    def job_line(self, timeout: float) -> bytes:
        try:
            return self.first_line.get(timeout=timeout)
        except queue.Empty:
            raise Rejected("job", f"no job line within {timeout:.0f} s") from None


def answer(request: Request, prepare: Callable[[], Tuple[Job, Policy]]) -> int:
    """Validates (``prepare``), runs and reports one request. Any exception nobody expected
    becomes a failed result (``AgentError``) and exit 2."""
    try:
        install_stop_signals(request.session)
        try:
            job, policy = prepare()
        except Rejected as rejection:
            return request.reject(rejection)
        return execute(request, job, policy)
    except Exception as error:  # reported as AgentError, the traceback on stderr
        return request.crash(error)


def serve(operation_argument: Optional[str], policy_path: Optional[str]) -> int:
    session = Session("", JsonLinesOutput(sys.stdout.fileno()))

    def prepare() -> Tuple[Job, Policy]:
        session.operation = validate_operation(
            os.environ.get("SSH_ORIGINAL_COMMAND"), operation_argument
        )
        policy = load_policy(policy_path)
        watcher = StdinWatcher(sys.stdin.fileno(), session)
        watcher.start()
        job = accept_job(session, parse_job_line(watcher.job_line(JOB_READ_TIMEOUT)))
        check_policy(policy, session.operation, job)
        return job, policy

    return answer(Request(session), prepare)


def run_by_hand(
    operation: str, job_path: Optional[str], policy_path: Optional[str], as_json: bool
) -> int:
    output: Output = (
        JsonLinesOutput(sys.stdout.fileno()) if as_json else HumanOutput(sys.stdout, sys.stderr)
    )
    session = Session(operation, output)

    def prepare() -> Tuple[Job, Policy]:
        policy = load_policy(policy_path)
        job = accept_job(session, read_job_file(job_path, operation))
        check_policy(policy, operation, job)
        return job, policy

    return answer(Request(session), prepare)


def accept_job(session: Session, raw: object) -> Job:
    """The validated job; its hello line will speak the protocol the job asked for."""
    session.protocol = requested_protocol(raw)
    return validate_job(session.operation, raw)


def read_job_file(path: Optional[str], operation: str) -> object:
    if path is None:
        if operation == "hello":
            return {"protocol": PROTOCOL_VERSION}
        raise Rejected("job", "--job FILE is required")
    try:
        with open(path, "rb") as handle:
            return parse_job_line(handle.read(JOB_LINE_LIMIT + 1).replace(b"\n", b" "))
    except OSError as error:
        raise Rejected("job", f"cannot read {path}: {error.strerror}") from None


def argument_parser() -> argparse.ArgumentParser:
    """The command line, with one by-hand command per operation of the registry."""
    import argparse  # not needed by the forced command's usual forms (see main)

    class ArgumentParser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:  # exit 3 like every other rejected request
            self.print_usage(sys.stderr)
            self.exit(EXIT_REJECTED, f"{self.prog}: error: {message}\n")

    parser = ArgumentParser(
        prog="backup_drone.py",
        description="Runs borg for the backup coordinator (serve) or by hand on this host.",
        epilog="Exit codes: 0 ok, 1 finished with warnings, 2 failed, 3 rejected (nothing ran).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve_parser = commands.add_parser(
        "serve", help="speak the JSON-lines protocol (SSH forced command)"
    )
    serve_parser.add_argument(
        "operation", nargs="?", help="used when SSH_ORIGINAL_COMMAND is not set"
    )
    serve_parser.add_argument(
        "--policy", metavar="FILE", help=f"policy file (default {DEFAULT_POLICY_PATH})"
    )
    for operation in OPERATION_TABLE:
        command = commands.add_parser(operation.name, help=operation.help)
        command.add_argument("--job", metavar="FILE", help="the job as a JSON file")
        command.add_argument(
            "--policy", metavar="FILE", help=f"policy file (default {DEFAULT_POLICY_PATH})"
        )
        command.add_argument("--json", action="store_true", help="print the protocol's JSON lines")
    return parser


def plain_serve_arguments(arguments: List[str]) -> Optional[Tuple[Optional[str], Optional[str]]]:
    """(operation, policy) of ``serve [OPERATION] [--policy FILE]`` in its plain forms, the
    ones a forced command uses; None for anything else, which argparse then reads (with its
    help and its errors). Importing and building the parser is a good part of the agent's
    start-up, paid by every request otherwise."""
    if arguments[:1] != ["serve"]:
        return None
    rest = arguments[1:]
    policy = None
    if "--policy" in rest:
        at = rest.index("--policy")
        if at + 1 == len(rest):
            return None
        policy = rest[at + 1]
        rest = rest[:at] + rest[at + 2 :]
    words = [*rest, *([policy] if policy is not None else [])]
    if len(rest) > 1 or any(word.startswith("-") for word in words):
        return None
    return (rest[0] if rest else None), policy


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:  # argparse's exits (--help, a usage error) are SystemExit and pass through
        if arguments == [LOCKED_COPY_MODE]:
            return run_locked_copy()
        plain_serve = plain_serve_arguments(arguments)
        if plain_serve is not None:
            return serve(*plain_serve)
        args = argument_parser().parse_args(arguments)
        if args.command == "serve":
            return serve(args.operation, args.policy)
        return run_by_hand(args.command, args.job, args.policy, args.json)
    except Exception:  # not even a session: exit 2, never Python's 1
        report_traceback()
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
