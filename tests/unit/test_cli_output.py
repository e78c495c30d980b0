"""The CLI shows what a drone sent, never obeys it: escape sequences arrive printed, escaped.

``run`` and ``doctor`` are driven with a stand-in for the SSH transport that plays a drone whose
file names and messages carry terminal escape sequences (the real transport has its own tests).
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from backup_coordinator import __main__ as cli
from backup_coordinator import transport
from backup_coordinator.config import Config, DroneConfig, parse_config
from backup_coordinator.model import Operation, SshTarget
from backup_coordinator.protocol import (
    AgentEvent,
    FailureKind,
    LogLine,
    OperationFailed,
    Progress,
    Result,
    StepResult,
)
from tests.unit.test_coordinator import make_config

CLEAR_SCREEN = "\x1b[2J"
SET_TITLE = "\x1b]0;pwned\x07"


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    text = f"a{CLEAR_SCREEN}b\n\r\t\x7f\x9b\u202e\udc80 é 東京 😀 \\x1b"
    assert cli.printable(text) == ("a\\x1b[2Jb\\n\\r\\t\\x7f\\x9b\\u202e\\udc80 é 東京 😀 \\x1b")


def drone(tmp_path: Path) -> tuple[DroneConfig, Config]:
    config = make_config(tmp_path, nas={"passphrase": "s3cret-passphrase"})
    found = config.drone("nas")
    assert found is not None
    return found, config


Runner = Callable[
    [SshTarget, str, Mapping[str, Any], Callable[[AgentEvent], Awaitable[None]] | None],
    Awaitable[Result],
]


def stand_in(steps_data: Mapping[str, Mapping[str, Any]], fail: str | None = None) -> Runner:
    async def run_agent(
        target: SshTarget,
        operation: str,
        job: Mapping[str, Any],
        on_event: Callable[[AgentEvent], Awaitable[None]] | None,
        limits: object = None,
    ) -> Result:
        assert on_event is not None
        await on_event(LogLine("warning", f"/data/{CLEAR_SCREEN}x: [Errno 13] Permission denied"))
        if fail is not None:
            raise OperationFailed(FailureKind.BORG_ERROR, fail, f"hint {SET_TITLE}")
        for step, data in steps_data.items():
            await on_event(StepResult(step, ok=True, rc=0, data=data))
        return Result("sequence", ok=True, rc=0, data={"completed": list(steps_data)})

    return run_agent


async def test_run_prints_remote_text_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = {"name": f"nas-{SET_TITLE}", "nfiles": 1, "original_size": 1, "deduplicated_size": 1}
    data: dict[str, dict[str, Any]] = {
        "create": {"archive": archive},
        "prune": {"kept": [], "pruned": []},
        "stats": {"deduplicated_size": 0, "archive_count": 1},
    }
    monkeypatch.setattr(transport, "run_agent", stand_in(data))
    out = io.StringIO()
    nas, config = drone(tmp_path)
    assert await cli.run(nas, Operation.SCHEDULED, out, config) == cli.EXIT_OK
    printed = out.getvalue()
    assert "\x1b" not in printed
    assert "\x07" not in printed
    assert f"/data/{cli.printable(CLEAR_SCREEN)}x" in printed
    assert "archive nas-\\x1b]0;pwned\\x07" in printed


async def test_a_failure_is_printed_escaped_and_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = f"borg said {CLEAR_SCREEN} near {json.dumps({'p': 's3cret-passphrase'})!r}"
    monkeypatch.setattr(transport, "run_agent", stand_in({}, fail=message))
    out = io.StringIO()
    nas, config = drone(tmp_path)
    assert await cli.run(nas, Operation.CREATE, out, config) == cli.EXIT_FAILED
    printed = out.getvalue()
    assert "\x1b" not in printed
    assert "borg said \\x1b[2J near" in printed
    assert "s3cret" not in printed


async def test_doctor_prints_check_details_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def probe(target: SshTarget) -> list[transport.Check]:
        return [transport.Check("agent hello", False, f"it printed {CLEAR_SCREEN}", SET_TITLE)]

    monkeypatch.setattr(transport, "probe", probe)
    config = make_config(tmp_path, nas={})
    out = io.StringIO()
    assert await cli.doctor(config, [], out) == cli.EXIT_FAILED
    printed = out.getvalue()
    assert "\x1b" not in printed
    assert "it printed \\x1b[2J" in printed
    assert "fix: \\x1b]0;pwned\\x07" in printed


def test_status_prints_a_recorded_error_escaped(tmp_path: Path) -> None:
    config = make_config(tmp_path, nas={})
    record = {"consecutive_failures": 1, "last_error": f"borg: {CLEAR_SCREEN}boom"}
    config.state_file.write_text(json.dumps({"version": 1, "drones": {"nas": record}}))
    out = io.StringIO()
    assert cli.status(config, out) == cli.EXIT_OK
    assert "\x1b" not in out.getvalue()
    assert "borg: \\x1b[2Jboom" in out.getvalue()


def test_status_shows_offsite_targets_escaped(tmp_path: Path) -> None:
    args = {
        "state_file": str(tmp_path / "state.json"),
        "ssh": {"client_key": "/keys/id", "known_hosts": "/keys/known_hosts"},
        "drones": {"nas": {"host": "nas", "repository": "/srv/nas", "paths": ["/data"]}},
        "offsite": {
            "cloud": {
                "host": "nas",
                "repositories": ["/srv/nas"],
                "destination": "/c",
                "tool": "rsync",
            },
            "usb": {
                "host": "nas",
                "repositories": ["/srv/nas"],
                "destination": "/u",
                "tool": "rsync",
            },
        },
    }
    config = parse_config(args, tmp_path)
    copy = {
        "last_copy": "2026-12-03T10:00:00+00:00",
        "last_copy_data": {"bytes": 3 * 1024 * 1024},
        "consecutive_failures": 1,
        "last_error": f"rclone: {CLEAR_SCREEN}down",
    }
    state = {"version": 1, "drones": {}, "offsite": {"targets": {"cloud": copy}}}
    config.state_file.write_text(json.dumps(state))
    out = io.StringIO()
    assert cli.status(config, out) == cli.EXIT_OK
    printed = out.getvalue()
    assert "cloud            (offsite) last copy 2026-12-03T10:00:00+00:00, 3.0 MiB sent" in printed
    assert "rclone: \\x1b[2Jdown" in printed
    assert "usb              (offsite) never run" in printed


def answering(operation: str, data: Mapping[str, Any], events: list[AgentEvent]) -> Runner:
    """A drone whose agent sends ``events`` and then the result ``data`` of ``operation``;
    the job it was given is kept in ``jobs``."""

    async def run_agent(
        target: SshTarget,
        word: str,
        job: Mapping[str, Any],
        on_event: Callable[[AgentEvent], Awaitable[None]] | None,
        limits: object = None,
    ) -> Result:
        assert word == operation
        jobs.append(dict(job))
        for event in events:
            assert on_event is not None
            await on_event(event)
        return Result(operation, ok=True, rc=0, duration=1.0, data=data)

    return run_agent


jobs: list[dict[str, Any]] = []


async def test_archives_are_printed_newest_first_and_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = [{"name": "nas-1"}, {"name": f"nas-2{SET_TITLE}"}]
    data = {"archives": listed, "archive_count": 5}
    monkeypatch.setattr(transport, "run_agent", answering("list", data, []))
    out, errors = io.StringIO(), io.StringIO()
    nas, config = drone(tmp_path)
    assert await cli.archives(nas, out, errors, config) == cli.EXIT_OK
    assert out.getvalue().splitlines() == ["nas-2\\x1b]0;pwned\\x07", "nas-1"]
    assert errors.getvalue() == "... and 3 older archive(s), not listed\n"


async def test_restore_sends_the_request_shows_progress_and_prints_the_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = f"/var/lib/backup-drone/restore/nas-1{CLEAR_SCREEN}"
    data = {"archive": "nas-1", "destination": destination, "files": 2, "bytes": 10}
    progress = Progress("extract", 1.0, 0, 0, 0, 0, f"home/{CLEAR_SCREEN}a")
    monkeypatch.setattr(transport, "run_agent", answering("extract", data, [progress]))
    jobs.clear()
    out, errors = io.StringIO(), io.StringIO()
    nas, config = drone(tmp_path)
    request = cli.restore_request("nas-1", ["home/zoe"], "/srv/restore/x")
    assert await cli.restore(nas, request, out, errors, config) == cli.EXIT_OK
    assert {k: jobs[0][k] for k in request} == {
        "archive": "nas-1",
        "restore_paths": ["home/zoe"],
        "destination": "/srv/restore/x",
    }
    assert out.getvalue() == "/var/lib/backup-drone/restore/nas-1\\x1b[2J\n"
    assert "restoring home/\\x1b[2Ja" in errors.getvalue()
    assert "\x1b" not in out.getvalue() + errors.getvalue()
    assert cli.restore_request("latest", [], None) == {"archive": "latest"}


async def test_a_failed_restore_says_why_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "run_agent", stand_in({}, fail=f"no {CLEAR_SCREEN}archive"))
    out, errors = io.StringIO(), io.StringIO()
    nas, config = drone(tmp_path)
    request = cli.restore_request("latest", [], None)
    assert await cli.restore(nas, request, out, errors, config) == cli.EXIT_FAILED
    assert out.getvalue() == ""
    assert "nas: extract failed: borg_error: no \\x1b[2Jarchive" in errors.getvalue()


async def test_drill_prints_its_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = {
        "archive": "nas-1",
        "files_verified": 4,
        "bytes_verified": 2 * 1024 * 1024,
        "skipped_changed": 1,
        "mismatches": [],
        "mismatch_count": 0,
        "missing_canaries": [],
    }
    monkeypatch.setattr(transport, "run_agent", answering("drill", data, []))
    out, errors = io.StringIO(), io.StringIO()
    nas, config = drone(tmp_path)
    assert await cli.drill(nas, out, errors, config) == cli.EXIT_OK
    assert out.getvalue() == (
        "drill done in 1.0 s: drill of nas-1: 4 verified (2.0 MiB),"
        " 1 skipped (changed since), 0 mismatch(es)\n"
    )


KEY_FILE = "/root/.config/borg/keys/srv_borg_nas"


def test_a_keyfile_repository_gets_the_key_warning() -> None:
    keyfile = {"mode": "keyfile-blake2", "keyfile": KEY_FILE}
    assert cli.key_warning("/srv/borg/nas", keyfile) == (
        f"the key lives only on the drone (keyfile mode: {KEY_FILE}): export it with"
        " `borg key export /srv/borg/nas FILE` and keep the file elsewhere;"
        " without it the archives cannot be read"
    )
    assert cli.key_warning("/srv/borg/nas", {"mode": "keyfile"}).startswith(
        "the key lives only on the drone (keyfile mode): export it with"
    )


@pytest.mark.parametrize(
    "encryption", [{"mode": "repokey-blake2"}, {"mode": "repokey"}, {"mode": "none"}, None, "x"]
)
def test_other_repositories_get_no_key_warning(encryption: object) -> None:
    assert cli.key_warning("/srv/borg/nas", encryption) == ""


async def passing_probe(target: SshTarget) -> list[transport.Check]:
    return [transport.Check("agent hello", True, "agent 1.3.0, borg 1.2.4")]


async def test_doctor_warns_under_a_passing_repository_check_of_a_keyfile_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encryption = {"mode": "keyfile", "keyfile": f"{KEY_FILE}{CLEAR_SCREEN}"}
    data = {"deduplicated_size": 0, "archive_count": 3, "encryption": encryption}
    monkeypatch.setattr(transport, "probe", passing_probe)
    monkeypatch.setattr(transport, "run_agent", answering("stats", data, []))
    config = make_config(tmp_path, nas={})
    out = io.StringIO()
    assert await cli.doctor(config, [], out) == cli.EXIT_OK
    lines = out.getvalue().splitlines()
    repository = next(line for line in lines if " repository " in line)
    assert repository.split()[:2] == ["nas", "ok"]
    assert repository.endswith(", encryption keyfile")
    warning = lines[lines.index(repository) + 1]
    assert warning.startswith(" " * 23 + "warning: the key lives only on the drone (keyfile mode: ")
    assert f"{KEY_FILE}\\x1b[2J" in warning
    assert lines[-1] == "all checks passed"


async def test_doctor_prints_no_warning_for_a_repokey_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {"deduplicated_size": 0, "archive_count": 3, "encryption": {"mode": "repokey"}}
    monkeypatch.setattr(transport, "probe", passing_probe)
    monkeypatch.setattr(transport, "run_agent", answering("stats", data, []))
    out = io.StringIO()
    assert await cli.doctor(make_config(tmp_path, nas={}), [], out) == cli.EXIT_OK
    assert "warning" not in out.getvalue()
    assert ", encryption repokey\n" in out.getvalue()
