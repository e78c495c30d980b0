"""A passphrase in every form it may take in a message, to look for it in what was shown."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from backup_coordinator.redaction import MIN_FRAGMENT
from tests.memory_port import MemoryPort

ENCODINGS: Mapping[str, Callable[[str], str]] = {
    "as is": lambda s: s,
    "json": lambda s: json.dumps(s)[1:-1],
    "json, unicode kept": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "repr": lambda s: repr(s)[1:-1],
    "ascii": lambda s: ascii(s)[1:-1],
    "unicode-escape": lambda s: s.encode("unicode_escape").decode("ascii"),
    "repr of json": lambda s: repr(json.dumps(s)[1:-1])[1:-1],
    "json of repr": lambda s: json.dumps(repr(s)[1:-1])[1:-1],
    "json of json": lambda s: json.dumps(json.dumps(s)[1:-1])[1:-1],
}


def windows(secret: str) -> list[str]:
    """Every run of MIN_FRAGMENT characters of the secret (the whole one when shorter)."""
    size = min(MIN_FRAGMENT, len(secret))
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def leaks(secret: str, output: str) -> list[str]:
    """Each encoded run of the secret that shows in ``output``."""
    return sorted(
        {
            f"{name}: {encoded!r}"
            for window in windows(secret)
            for name, encode in ENCODINGS.items()
            if (encoded := encode(window)) in output
        }
    )


def everything_shown(port: MemoryPort, state_file: Path) -> str:
    """All the coordinator showed and wrote: log lines, states and attributes, events,
    notifications and the state file, each text as it is (a repr or JSON of them would escape
    a form into another), one per line."""
    state = state_file.read_text()
    shown = [
        port.lines,
        [[key, p.state, p.attributes] for key, p in port.states.items()],
        port.events,
        port.notifications,
        json.loads(state),
    ]
    return "\n".join([state, *texts_in(shown)])


def texts_in(value: object) -> list[str]:
    """Every string inside ``value`` (keys and values), as it is."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [text for key, item in value.items() for text in texts_in(key) + texts_in(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in texts_in(item)]
    return [str(value)]
