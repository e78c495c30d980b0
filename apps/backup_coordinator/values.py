"""Reading configuration values: the checks of what a job carries, and typed readers.

The job value checks mirror ``validate_job`` in drone_agent/backup_drone.py (see
docs/protocol.md): repository locations, the passphrase, archive prefix, paths, exclude
patterns and file names, compression, lock wait, borg_rsh with its ssh option rules and the
remote path, and the text rules under all of them (no control characters, length limits, valid
text). The coordinator applies them too, so a mistake shows up once, at start, naming drone and
key, instead of as a rejected job at every backup. The agent stays authoritative; the agreement
tests in tests/unit/test_config.py keep the two in step.

Every reader takes the key (for the message) and the raw value and returns the value, typed, or
raises ``InvalidValue``.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from .locations import IPV6_ADDRESS_PATTERN, LOCATION_FORMS, parse_location, path_components

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
TEXT_MAX = 4096
FILE_NAME_MAX = 255
WORD_MAX = 256
MAX_PATHS = 1000
MAX_EXCLUDE_PATTERNS = 1000
MAX_EXCLUDE_IF_PRESENT = 100
LOCK_WAIT_RANGE = (0, 86400)
PORT_RANGE = (1, 65535)

ARCHIVE_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COMPRESSION_PATTERN = re.compile(
    r"^(auto,)?(none|lz4|zstd(,([1-9]|1[0-9]|2[0-2]))?|zlib(,[0-9])?|lzma(,[0-9])?)$"
)
REMOTE_PATH_PATTERN = re.compile(r"[A-Za-z0-9_./+][A-Za-z0-9_./+-]*")
# borg matches every exclude pattern against every file: styles and limits as the agent has them.
PATTERN_STYLE_PATTERN = re.compile(r"(?P<style>[A-Za-z0-9]{2}):")
PATTERN_STYLES = ("fm", "sh", "pp", "pf")
PATTERN_MAX_STARS = 3

# BORG_RSH is a command borg executes: ssh itself, with options that neither run other programs
# nor weaken host key checking.
RSH_PROGRAMS = ("ssh", "/usr/bin/ssh")
RSH_FLAGS = frozenset({"-4", "-6", "-a", "-C", "-q", "-T", "-x"})
RSH_OPTIONS_WITH_VALUE = frozenset({"-i", "-p", "-o"})
RSH_SAFE_SSH_OPTIONS = frozenset(
    {
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
        "stricthostkeychecking",
        "userknownhostsfile",
    }
)
RSH_OPTION_PATTERN = re.compile(r"(?P<key>[A-Za-z]+)=(?P<value>[^\s\"'=]+)")
RSH_PORT_PATTERN = re.compile(r"[1-9][0-9]{0,4}")


class InvalidValue(ValueError):
    """A value rejected by a reader: the key (path) and what is expected."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"key {key!r}: {message}")
        self.key = key
        self.message = message


# ---------------------------------------------------------------------------------------------
# Job values, as the agent's validate_job checks them


def read_repository(key: str, value: object) -> str:
    text = read_single_line(key, value, LOCATION_FORMS)
    if text.startswith("-"):
        raise InvalidValue(key, f"must be {LOCATION_FORMS}, got {shown(value)}")
    if "{" in text or "}" in text:
        raise InvalidValue(
            key,
            "must not contain '{' or '}': borg would expand them as placeholders "
            f"({{hostname}}, {{now}}, ...), got {shown(value)}",
        )
    location = parse_location(text)
    if location is None:
        if "::" in IPV6_ADDRESS_PATTERN.sub("", text):
            raise InvalidValue(key, "must not contain '::' (borg's archive separator)")
        raise InvalidValue(key, f"must be {LOCATION_FORMS}, got {shown(value)}")
    if "::" in location.path:
        raise InvalidValue(key, "must not contain '::' (borg's archive separator)")
    if location.port is not None and not PORT_RANGE[0] <= int(location.port) <= PORT_RANGE[1]:
        raise InvalidValue(key, f"port must be between 1 and 65535, got {shown(value)}")
    if ".." in location.components:
        raise InvalidValue(key, f"must not contain '..', got {shown(value)}")
    return text


def read_passphrase(key: str, value: object) -> str | None:
    # The value is never echoed: a mistyped passphrase is still a secret.
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidValue(
            key, f"must be text (quote it in YAML), got a value of type {type(value).__name__}"
        )
    if len(value) > TEXT_MAX or "\x00" in value or not _encodable(value):
        raise InvalidValue(key, f"must be text of at most {TEXT_MAX} characters without NUL")
    return value


def read_archive_prefix(key: str, value: object) -> str:
    return read_matching(
        key,
        value,
        ARCHIVE_PREFIX_PATTERN,
        "a letter or digit, then up to 63 letters, digits, '.', '_' or '-'",
    )


def read_paths(key: str, value: object) -> tuple[str, ...]:
    paths = read_text_list(key, value, _absolute_path, MAX_PATHS)
    if not paths:
        raise InvalidValue(key, "must list at least one absolute path to back up")
    return paths


def read_exclude_patterns(key: str, value: object) -> tuple[str, ...]:
    return read_text_list(key, value, _pattern_text, MAX_EXCLUDE_PATTERNS)


def read_exclude_if_present(key: str, value: object) -> tuple[str, ...]:
    return read_text_list(key, value, _file_name, MAX_EXCLUDE_IF_PRESENT)


def read_compression(key: str, value: object) -> str:
    return read_matching(
        key,
        value,
        COMPRESSION_PATTERN,
        "none, lz4, zstd[,1-22], zlib[,0-9] or lzma[,0-9], optionally prefixed by auto,",
    )


def read_lock_wait(key: str, value: object) -> int:
    return read_whole_number(key, value, *LOCK_WAIT_RANGE)


def read_borg_rsh(key: str, value: object) -> str:
    """borg runs this to reach a remote repository: ssh itself, with the few options the agent
    allows (see docs/protocol.md); host keys are always verified."""
    text = read_single_line(key, value, "an ssh command line", 1024)
    try:
        words = shlex.split(text)  # as borg splits BORG_RSH
    except ValueError:
        words = []
    if not words or words[0] not in RSH_PROGRAMS:
        raise InvalidValue(
            key,
            "must start with ssh or /usr/bin/ssh, as in 'ssh -i KEY' (a job never picks "
            f"another program), got {shown(value)}",
        )
    _check_rsh_options(key, words[1:])
    return text


def rsh_ports(borg_rsh: str) -> list[str]:
    """Every port a borg_rsh read by ``read_borg_rsh`` names (-p PORT, -o Port=PORT)."""
    words = shlex.split(borg_rsh)
    ports = []
    for option, argument in itertools.pairwise(words[1:]):
        if option == "-p":
            ports.append(argument)
        elif option == "-o" and argument.lower().startswith("port="):
            ports.append(argument.split("=", 1)[1])
    return ports


def check_rsh_port(borg_rsh: str, repository: str) -> None:
    """ssh takes the first port it is given, and borg puts BORG_RSH's words before the
    location's: a port in borg_rsh may only repeat the location's, and a location without one
    accepts none (the agent refuses anything else). A local repository never runs ssh."""
    location = parse_location(repository)
    if location is None or location.is_local:
        return
    for port in rsh_ports(borg_rsh):
        if location.port is None:
            raise InvalidValue(
                "borg_rsh", "must not set a port: write it in the repository location instead"
            )
        if int(port) != int(location.port):
            raise InvalidValue(
                "borg_rsh",
                f"sets port {port}, but the repository location says {location.port}: "
                "the port belongs in the location",
            )


def read_remote_path(key: str, value: object) -> str:
    text = read_single_line(key, value, "the borg command on the repository host", WORD_MAX)
    if not REMOTE_PATH_PATTERN.fullmatch(text):
        raise InvalidValue(
            key,
            "must be the borg command on the repository host: a command or path of letters, "
            f"digits and _ . / + - (no spaces or shell characters), got {shown(value)}",
        )
    return text


# ---------------------------------------------------------------------------------------------
# Typed readers


def read_text(key: str, value: object, what: str = "text") -> str:
    if not isinstance(value, str):
        raise InvalidValue(key, f"must be {what}, got {shown(value)}")
    return value


def read_single_line(key: str, value: object, what: str, max_length: int = TEXT_MAX) -> str:
    """One non-empty line of valid text without control characters, as the agent requires."""
    text = read_text(key, value, what)
    if not text or any(c in text for c in "\n\r"):
        raise InvalidValue(key, f"must be {what} (one non-empty line), got {shown(value)}")
    if CONTROL_CHARACTERS.search(text):
        raise InvalidValue(
            key,
            f"must be {what} without control characters (tab, escape, ...), got {shown(value)}",
        )
    if len(text) > max_length:
        raise InvalidValue(key, f"must be {what} of at most {max_length} characters")
    if not _encodable(text):
        raise InvalidValue(key, f"must be {what} in valid text, got {shown(value)}")
    return text


def read_matching(key: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    text = read_text(key, value, what)
    if not pattern.fullmatch(text):  # fullmatch: "$" alone would accept a trailing newline
        raise InvalidValue(key, f"must be {what}, got {shown(value)}")
    return text


def read_whole_number(key: str, value: object, low: int, high: int | None = None) -> int:
    expected = f"a whole number between {low} and {high}" if high else f"a whole number >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(key, f"must be {expected}, got {shown(value)}")
    if value < low or (high is not None and value > high):
        raise InvalidValue(key, f"must be {expected}, got {shown(value)}")
    return value


def read_number(
    key: str, value: object, minimum: float, unit: str, inclusive: bool = True
) -> float:
    relation = ">=" if inclusive else ">"
    expected = f"a number {relation} {minimum:g} ({unit})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValue(key, f"must be {expected}, got {shown(value)}")
    number = float(value)
    in_range = number >= minimum if inclusive else number > minimum
    if number != number or number == float("inf") or not in_range:
        raise InvalidValue(key, f"must be {expected}, got {shown(value)}")
    return number


def read_boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(key, f"must be true or false, got {shown(value)}")
    return value


def read_text_list(
    key: str, value: object, item: Callable[[str, object], str], max_items: int
) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise InvalidValue(key, f"must be a list, got {shown(value)}")
    if len(value) > max_items:
        raise InvalidValue(key, f"must have at most {max_items} entries, got {len(value)}")
    return tuple(item(f"{key}[{index}]", entry) for index, entry in enumerate(value))


def read_mapping(key: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidValue(key, f"must be a mapping of keys to values, got {shown(value)}")
    for name in value:
        if not isinstance(name, str):
            raise InvalidValue(f"{key}.{name}", "keys must be text")
    return value


def optional(
    read: Callable[[str, object], str],
) -> Callable[[str, object], str | None]:
    """The reader, except that a missing value (None) stays None."""

    def read_optional(key: str, value: object) -> str | None:
        return None if value is None else read(key, value)

    return read_optional


def shown(value: object) -> str:
    """The value as a message shows it: repr, shortened so a pasted blob stays readable."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------
# Details


def _absolute_path(key: str, value: object) -> str:
    text = read_single_line(key, value, "an absolute path")
    if not text.startswith("/"):
        raise InvalidValue(key, f"must be an absolute path, got {shown(value)}")
    if ".." in path_components(text):
        raise InvalidValue(key, f"must not contain '..', got {shown(value)}")
    return text


def _pattern_text(key: str, value: object) -> str:
    """A borg exclude pattern that cannot keep borg busy for hours: no regular expressions
    (re:), and at most a few ``*`` in shell and fnmatch patterns (borg's sh: backtracks)."""
    text = read_single_line(key, value, "a borg pattern")
    style = PATTERN_STYLE_PATTERN.match(text)
    kind = style["style"] if style else "fm"  # borg reads a pattern without a style as fm:
    if kind not in PATTERN_STYLES:
        raise InvalidValue(
            key,
            f"must be an sh:, fm:, pp: or pf: pattern (re: is not accepted), got {shown(value)}",
        )
    if kind in ("sh", "fm") and text.count("*") > PATTERN_MAX_STARS:
        raise InvalidValue(
            key,
            f"may contain at most {PATTERN_MAX_STARS} '*' ('**' counts as two), got {shown(value)}",
        )
    return text


def _file_name(key: str, value: object) -> str:
    text = read_single_line(key, value, "a file name", FILE_NAME_MAX)
    if "/" in text or text in (".", ".."):
        raise InvalidValue(
            key, f"must be a file name without '/' (not . or ..), got {shown(value)}"
        )
    return text


def _check_rsh_options(key: str, words: list[str]) -> None:
    options: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if word in RSH_FLAGS:
            index += 1
            continue
        if word not in RSH_OPTIONS_WITH_VALUE or index + 1 >= len(words):
            raise InvalidValue(
                key,
                "may only use the ssh options -i FILE, -p PORT, -o KEY=VALUE and the flags "
                f"-4 -6 -a -C -q -T -x, got {word!r}",
            )
        argument = words[index + 1]
        if argument.startswith("-"):
            raise InvalidValue(key, f"option values must not start with '-', got {argument!r}")
        if word == "-p" and not (RSH_PORT_PATTERN.fullmatch(argument) and int(argument) <= 65535):
            raise InvalidValue(key, "-p must be a port number between 1 and 65535")
        if word == "-o":
            option, option_value = _rsh_option(key, argument)
            options.setdefault(option, option_value)
        index += 2
    if "userknownhostsfile" in options and "stricthostkeychecking" not in options:
        raise InvalidValue(
            key,
            "UserKnownHostsFile needs -o StrictHostKeyChecking=yes as well, so ssh can never "
            "add an unknown key to it",
        )


def _rsh_option(key: str, argument: str) -> tuple[str, str]:
    match = RSH_OPTION_PATTERN.fullmatch(argument)
    if not match:
        raise InvalidValue(
            key, f"ssh -o options must be written KEY=VALUE (one word, no quotes), got {argument!r}"
        )
    option, option_value = match["key"].lower(), match["value"]
    if option not in RSH_SAFE_SSH_OPTIONS:
        raise InvalidValue(
            key,
            f"the ssh option {match['key']} is not allowed; allowed: BatchMode, Compression, "
            "ConnectionAttempts, ConnectTimeout, IdentitiesOnly, IdentityFile, LogLevel, Port, "
            "ServerAliveCountMax, ServerAliveInterval, StrictHostKeyChecking=yes, "
            "UserKnownHostsFile",
        )
    if option == "stricthostkeychecking" and option_value.lower() != "yes":
        raise InvalidValue(
            key, "StrictHostKeyChecking may only be yes: host keys are always verified"
        )
    if option == "userknownhostsfile" and option_value == "/dev/null":
        raise InvalidValue(
            key, "UserKnownHostsFile must not be /dev/null: host keys are always verified"
        )
    return option, option_value


def _encodable(text: str) -> bool:
    """Whether the text can become argv bytes on the drone (as the agent requires)."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True
