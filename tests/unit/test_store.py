"""The state file: round trips, atomic writes, and what happens to files it cannot use."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup_coordinator.redaction import Redactor
from backup_coordinator.store import (
    STATE_VERSION,
    Copies,
    CopyRecord,
    DroneRecord,
    LoadResult,
    RunningOperation,
    Store,
    encode_state,
)

WHEN = datetime(2025, 6, 1, 12, 30, 15, 250000, tzinfo=UTC)


def full_record() -> DroneRecord:
    return DroneRecord(
        last_backup=WHEN,
        last_prune=WHEN + timedelta(minutes=1),
        last_stats=WHEN + timedelta(minutes=2),
        last_attempt=WHEN + timedelta(minutes=3),
        consecutive_failures=3,
        last_error="connection refused",
        last_error_kind="unreachable",
        last_error_hint="check that nas is up",
        backoff_until=WHEN + timedelta(minutes=8),
        last_archive={"name": "nas-2025-06-01T12:30:15", "stats": {"nfiles": 12}},
        repository={"total_size": 10, "compressed_size": 7, "deduplicated_size": 0},
        archive_count=42,
        running=RunningOperation(operation="scheduled", started=WHEN, requested=True),
        resume=RunningOperation("scheduled", WHEN, requested=False, done=["create"]),
        pending=["prune", "stats"],
        problem="overdue: no backup for 3 days",
        first_seen=WHEN - timedelta(days=30),
        agent_version="1.4.0",
        borg_version="1.2.4",
    )


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_every_field_survives_a_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    records = {"nas": full_record(), "pc": DroneRecord()}
    store.save(records, cursor=5, global_mode="paused")

    loaded = Store(tmp_path / "state.json").load()

    assert loaded == LoadResult(records=records, cursor=5, global_mode="paused", problem=None)


def test_times_are_stored_as_utc_iso_strings(tmp_path: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    record = DroneRecord(last_backup=datetime(2025, 6, 1, 14, 0, tzinfo=plus_two))
    store = Store(tmp_path / "state.json")
    store.save({"nas": record}, 0, "running")

    document = json.loads((tmp_path / "state.json").read_text())
    assert document["drones"]["nas"]["last_backup"] == "2025-06-01T12:00:00+00:00"
    loaded = store.load().records["nas"].last_backup
    assert loaded is not None
    assert loaded.tzinfo == UTC
    assert loaded == record.last_backup


def test_naive_times_are_refused_on_save(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    with pytest.raises(ValueError, match="timezone-aware"):
        store.save({"nas": DroneRecord(last_backup=datetime(2025, 1, 1))}, 0, "running")
    assert files_in(tmp_path) == []


def test_an_unknown_global_mode_is_refused_on_save(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="running, paused"):
        Store(tmp_path / "state.json").save({}, 0, "stopped")


def test_the_file_is_versioned(tmp_path: Path) -> None:
    Store(tmp_path / "state.json").save({}, 0, "running")
    document = json.loads((tmp_path / "state.json").read_text())
    assert document["version"] == STATE_VERSION == 1


def test_a_save_leaves_no_temporary_files_and_replaces_the_old_state(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    store.save({"nas": DroneRecord(consecutive_failures=1)}, 0, "running")
    store.save({"nas": DroneRecord(consecutive_failures=2)}, 1, "running")

    assert files_in(tmp_path) == ["state.json"]
    assert store.load().records["nas"].consecutive_failures == 2


def test_a_failed_save_keeps_the_old_file_whole_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "state.json")
    store.save({"nas": DroneRecord(consecutive_failures=1)}, 0, "running")
    unserialisable = DroneRecord(last_archive={"bad": object()})

    with pytest.raises(TypeError):
        store.save({"nas": unserialisable}, 0, "running")

    assert files_in(tmp_path) == ["state.json"]
    assert store.load().records["nas"].consecutive_failures == 1


def test_the_directory_is_created_when_missing(tmp_path: Path) -> None:
    store = Store(tmp_path / "deeper" / "state.json")
    store.save({}, 0, "running")
    assert store.load() == LoadResult()


def test_a_missing_file_is_empty_state_without_a_problem(tmp_path: Path) -> None:
    assert Store(tmp_path / "state.json").load() == LoadResult(
        records={}, cursor=0, global_mode="running", problem=None
    )


def assert_set_aside(tmp_path: Path, result: LoadResult, original: str, reason: str) -> None:
    assert result.records == {}
    assert result.cursor == 0
    assert result.global_mode == "running"
    assert result.problem is not None
    assert reason in result.problem
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(moved) == 1
    assert moved[0].name in result.problem
    assert moved[0].read_text() == original
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"version": 1, "drones": {"nas": {"last_backup": "yesterday"}}}', "last_backup"),
        ('{"version": 1, "drones": {"nas": {"last_backup": "2025-01-01T00:00:00"}}}', "zone"),
        ('{"version": 1, "drones": {"nas": {"consecutive_failures": "3"}}}', "whole number"),
        ('{"version": 1, "drones": {"nas": {"pending": "create"}}}', "pending"),
        ('{"version": 1, "drones": {"nas": {"running": {"operation": "x"}}}}', "running"),
        ('{"version": 1, "drones": {"nas": []}}', "drone 'nas'"),
        ('{"version": 1, "global_mode": "sleeping"}', "global_mode"),
        ('{"version": 1, "cursor": true}', "cursor"),
    ],
)
def test_a_corrupt_file_is_moved_aside_and_reported(
    tmp_path: Path, content: str, reason: str
) -> None:
    (tmp_path / "state.json").write_text(content)
    result = Store(tmp_path / "state.json").load()
    assert_set_aside(tmp_path, result, content, reason)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_a_wrong_version_is_moved_aside_and_reported(tmp_path: Path, version: object) -> None:
    content = json.dumps({"version": version, "cursor": 0, "drones": {}})
    (tmp_path / "state.json").write_text(content)
    result = Store(tmp_path / "state.json").load()
    assert_set_aside(tmp_path, result, content, "version")


def test_an_unreadable_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(b"\xff\xfe not text")
    result = Store(tmp_path / "state.json").load()
    assert result.problem is not None
    assert "cannot read" in result.problem
    assert any(p.name.startswith("state.json.corrupt-") for p in tmp_path.iterdir())


def test_two_corrupt_files_in_one_second_do_not_overwrite_each_other(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    for content in ("{first", "{second"):
        (tmp_path / "state.json").write_text(content)
        assert store.load().problem is not None
    kept = sorted(p.read_text() for p in tmp_path.iterdir())
    assert kept == ["{first", "{second"]


def test_unknown_extra_keys_are_tolerated(tmp_path: Path) -> None:
    document = {
        "version": 1,
        "cursor": 2,
        "global_mode": "running",
        "written_by": "a newer coordinator",
        "drones": {"nas": {"consecutive_failures": 4, "some_new_field": [1, 2]}},
    }
    (tmp_path / "state.json").write_text(json.dumps(document))
    result = Store(tmp_path / "state.json").load()
    assert result.problem is None
    assert result.cursor == 2
    assert result.records == {"nas": DroneRecord(consecutive_failures=4)}


def test_missing_fields_take_their_defaults(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"version": 1, "drones": {"nas": {}}}')
    assert Store(tmp_path / "state.json").load() == LoadResult(records={"nas": DroneRecord()})


def test_a_file_from_before_versions_were_recorded_loads_them_as_unknown(tmp_path: Path) -> None:
    document = json.loads(encode_state({"nas": full_record()}, 0, "running"))
    for key in ("agent_version", "borg_version"):
        del document["drones"]["nas"][key]
    (tmp_path / "state.json").write_text(json.dumps(document))
    loaded = Store(tmp_path / "state.json").load()
    assert loaded.problem is None
    record = full_record()
    record.agent_version = record.borg_version = None
    assert loaded.records == {"nas": record}


def test_no_passphrase_field_exists_to_be_saved() -> None:
    text = encode_state({"nas": full_record()}, 0, "running")
    assert "passphrase" not in text


async def test_save_async_writes_the_same_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    await store.save_async({"nas": full_record()}, 3, "running")
    assert store.load().records == {"nas": full_record()}
    assert files_in(tmp_path) == ["state.json"]


async def test_concurrent_async_saves_end_with_the_newest_state(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    saves = [
        store.save_async({"nas": DroneRecord(consecutive_failures=n)}, n, "running")
        for n in range(20)
    ]
    await asyncio.gather(*saves)
    result = store.load()
    assert result.cursor == 19
    assert result.records["nas"].consecutive_failures == 19
    assert files_in(tmp_path) == ["state.json"]


def test_save_fsyncs_the_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    Store(tmp_path / "state.json").save({}, 0, "running")
    assert len(synced) == 2
    assert synced[0].startswith(str(tmp_path / ".state.json."))
    assert synced[1] == str(tmp_path)


def test_a_read_only_load_leaves_a_corrupt_file_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    loaded = Store(path).load(set_aside=False)
    assert loaded.problem is not None
    assert loaded.records == {}
    assert path.read_text() == "{not json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_entries_naming_unknown_operations_are_dropped_with_a_warning(tmp_path: Path) -> None:
    started = WHEN.isoformat()
    document = {
        "version": 1,
        "drones": {
            "nas": {
                "pending": ["check_all", "prune", "prune", "stats"],
                "running": {"operation": "offsite", "started": started, "requested": True},
                "resume": {"operation": "defrag", "started": started, "requested": False},
            }
        },
    }
    (tmp_path / "state.json").write_text(json.dumps(document))
    result = Store(tmp_path / "state.json").load()
    assert result.problem is None
    assert result.records == {"nas": DroneRecord(pending=["prune", "stats"])}
    assert result.warnings == (
        "drone 'nas': running: unknown operation 'offsite' dropped",
        "drone 'nas': resume: unknown operation 'defrag' dropped",
        "drone 'nas': pending: unknown operation 'check_all' dropped",
        "drone 'nas': pending: 'prune' queued twice, kept once",
    )
    assert (tmp_path / "state.json").exists()  # loaded, not moved aside


def test_the_steps_an_interrupted_operation_had_done_survive_a_round_trip(tmp_path: Path) -> None:
    running = RunningOperation("scheduled", WHEN, False, ["create", "prune"])
    record = DroneRecord(
        running=running, resume=RunningOperation("scheduled", WHEN, True, ["create"])
    )
    store = Store(tmp_path / "state.json")
    store.save({"nas": record}, 0, "running")
    assert store.load().records["nas"] == record


def test_free_text_is_written_redacted(tmp_path: Path) -> None:
    secret = 'pa"ss\\wörd-long'
    record = DroneRecord(
        last_error=f"agent printed: {json.dumps({'passphrase': secret})!r}",
        last_error_hint=f"job { ({'passphrase': secret})!r}",
        problem=f"failed: {secret}",
        last_archive={"name": f"x-{secret}"},
        last_backup=WHEN,
    )
    store = Store(tmp_path / "state.json", Redactor([secret]))
    store.save({"nas": record}, 0, "running")
    text = (tmp_path / "state.json").read_text()
    loaded = store.load().records["nas"]
    for value in (loaded.last_error, loaded.last_error_hint, loaded.problem, text):
        assert value is not None
        for fragment in ("ss\\w", "rd-long", "ss\\\\w", "w\\u00f6rd"):
            assert fragment not in value
    assert loaded.last_backup == WHEN  # times are never touched


def test_offsite_records_survive_a_round_trip(tmp_path: Path) -> None:
    record = CopyRecord(
        last_copy=WHEN,
        last_copy_data={"bytes": 5, "repositories": [{"repository": "/srv/a", "verified": True}]},
        last_attempt=WHEN,
        consecutive_failures=2,
        last_error="rclone exited 7",
        last_error_kind="borg_error",
        last_error_hint="check the remote",
        backoff_until=WHEN + timedelta(minutes=4),
        requested=True,
        running=RunningOperation("offsite", WHEN, True, ["/srv/a"]),
        problem="2 failed offsite copies in a row",
        first_seen=WHEN,
    )
    store = Store(tmp_path / "state.json")
    store.save({}, 0, "running", Copies({"cloud": record}, cursor=3))
    loaded = store.load()
    assert loaded.copies == {"cloud": record}
    assert loaded.copy_cursor == 3


def test_a_state_file_without_offsite_targets_loads_none(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    store.save({"nas": DroneRecord()}, 0, "running")
    assert store.load().copies == {}
    assert "offsite" not in json.loads((tmp_path / "state.json").read_text())
