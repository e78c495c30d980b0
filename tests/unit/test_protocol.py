"""The coordinator's parser of agent lines: typed events, and ProtocolError for anything else."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_coordinator.model import SettingError, parse_frequency
from backup_coordinator.protocol import Hello, Progress, ProtocolError, Result, parse_line


def test_each_line_type_becomes_its_event() -> None:
    hello = parse_line('{"type": "hello", "protocol": 1, "borg_version": "1.2.4"}')
    assert hello == Hello(1, "", "1.2.4", "", "")
    progress = parse_line('{"type": "progress", "time": 1.5, "nfiles": 3, "original_size": 10}')
    assert isinstance(progress, Progress)
    assert progress.nfiles == 3
    result = parse_line('{"type": "result", "ok": false, "rc": 2, "error": {"msgid": "X"}}')
    assert isinstance(result, Result)
    assert result.error == {"msgid": "X"}


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1, 2]",
        '{"type": "mystery"}',
        '{"type": "hello"}',
        '{"type": "log", "time": "x"}',
        '{"type": "progress", "time": 1, "nfiles": 1e400}',
        '{"type": "progress", "time": "soon"}',
        '{"type": "result", "ok": "yes", "rc": 0}',
    ],
)
def test_malformed_lines_are_protocol_errors(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_line(line)


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_no_json_value_crashes_the_parser(value: object) -> None:
    line = json.dumps({"type": "progress", "time": value, "nfiles": value})
    with contextlib.suppress(ProtocolError):
        parse_line(line)


@pytest.mark.parametrize("value", ["inf", "nan", float("inf"), "1e400"])
def test_infinite_numbers_are_setting_errors(value: object) -> None:
    with pytest.raises(SettingError):
        parse_frequency(value)
