"""Keeping passphrases out of everything the coordinator shows or writes.

A passphrase reaches a message in many shapes: as it is; escaped as JSON writes it (an agent's
line quoted whole); escaped as Python's ``repr`` writes it (``{value!r}``, a traceback); escaped
twice (a JSON line quoted with ``repr``); and cut short by a slice (``line[:200]``, the last 500
characters of stderr), possibly in the middle of an escape sequence. Replacing the exact text
misses all of these.

``Redactor`` reads a text the way each of these escapings would be read back (it decodes
backslash escapes, up to ``DECODE_LEVELS`` times) and masks, in the original text, every run of
at least ``MIN_FRAGMENT`` consecutive characters of a passphrase found in any of these readings.
A passphrase shorter than that is masked wherever it occurs whole. A shorter fragment (what a
slice leaves of a passphrase at its very edge) is not masked: it says too little to matter, and
masking every short run would mask ordinary words. Masking errs the other way: ordinary text
that shares ``MIN_FRAGMENT`` characters in a row with a passphrase is masked too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
MIN_FRAGMENT = 8  # passphrase characters in a row that count as a leak
DECODE_LEVELS = 3  # as is, and escaped up to three times over

_SIMPLE_ESCAPES = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "/": "/",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "a": "\a",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

Span = tuple[int, int]  # where a decoded character came from in the original text


class Redactor:
    """Masks the given secrets, in every escaped and truncated form, in text and values."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._grams: dict[int, frozenset[str]] = {}
        by_length: dict[int, set[str]] = {}
        for secret in secrets:
            if not secret:
                continue
            size = min(MIN_FRAGMENT, len(secret))
            grams = by_length.setdefault(size, set())
            grams.update(secret[i : i + size] for i in range(len(secret) - size + 1))
        self._grams = {size: frozenset(grams) for size, grams in by_length.items()}
        self._shortest = min(self._grams, default=0)

    def __bool__(self) -> bool:
        return bool(self._grams)

    def text(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``MASK``."""
        if not self._grams or len(text) < self._shortest:
            return text
        masked = self._masked_spans(text)
        return _apply_mask(text, masked) if masked else text

    def value(self, value: Any) -> Any:
        """Every string inside ``value`` (mappings, lists, tuples) redacted; keys untouched."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(item) for item in value)
        return value

    def _masked_spans(self, text: str) -> list[Span]:
        masked: list[Span] = []
        reading = text
        spans: list[Span] = [(i, i + 1) for i in range(len(text))]
        for level in range(DECODE_LEVELS + 1):
            masked.extend(self._matches(reading, spans))
            if level == DECODE_LEVELS or "\\" not in reading:
                break
            decoded, spans = _decode(reading, spans)
            if decoded == reading:
                break
            reading = decoded
        return masked

    def _matches(self, reading: str, spans: list[Span]) -> Iterable[Span]:
        for size, grams in self._grams.items():
            for start in range(len(reading) - size + 1):
                if reading[start : start + size] in grams:
                    yield spans[start][0], spans[start + size - 1][1]


def _decode(text: str, spans: list[Span]) -> tuple[str, list[Span]]:
    """One level of backslash escapes read back (JSON's and Python's), with each decoded
    character's span in the original text. Anything that is not an escape stays as it is."""
    chars: list[str] = []
    origins: list[Span] = []
    index = 0
    while index < len(text):
        char, end = _escape_at(text, index)
        chars.append(char)
        origins.append((spans[index][0], spans[end - 1][1]))
        index = end
    return _join_surrogates(chars, origins)


def _escape_at(text: str, index: int) -> tuple[str, int]:
    """The character starting at ``index`` (decoded when it is an escape) and where it ends."""
    if text[index] != "\\" or index + 1 >= len(text):
        return text[index], index + 1
    kind = text[index + 1]
    if kind in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[kind], index + 2
    digits = _HEX_ESCAPES.get(kind)
    if digits is not None:
        hex_text = text[index + 2 : index + 2 + digits]
        if len(hex_text) == digits and set(hex_text) <= _HEX_DIGITS:
            code = int(hex_text, 16)
            if code <= 0x10FFFF:
                return chr(code), index + 2 + digits
    return text[index], index + 1


def _join_surrogates(chars: list[str], origins: list[Span]) -> tuple[str, list[Span]]:
    """JSON writes a character beyond U+FFFF as two escaped surrogates: make them one again."""
    joined: list[str] = []
    spans: list[Span] = []
    index = 0
    while index < len(chars):
        char = chars[index]
        if (
            "\ud800" <= char <= "\udbff"
            and index + 1 < len(chars)
            and "\udc00" <= chars[index + 1] <= "\udfff"
        ):
            low = chars[index + 1]
            joined.append(chr(0x10000 + ((ord(char) - 0xD800) << 10) + (ord(low) - 0xDC00)))
            spans.append((origins[index][0], origins[index + 1][1]))
            index += 2
            continue
        joined.append(char)
        spans.append(origins[index])
        index += 1
    return "".join(joined), spans


def _apply_mask(text: str, masked: list[Span]) -> str:
    """``text`` with each run of overlapping or touching spans replaced by one ``MASK``."""
    pieces: list[str] = []
    position = 0
    run_start, run_end = -1, -1
    for start, end in sorted(masked):
        if start <= run_end:
            run_end = max(run_end, end)
            continue
        if run_end >= 0:
            pieces.append(text[position:run_start] + MASK)
            position = run_end
        run_start, run_end = start, end
    pieces.append(text[position:run_start] + MASK + text[run_end:])
    return "".join(pieces)
