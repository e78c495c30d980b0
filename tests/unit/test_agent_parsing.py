"""Reading borg's output: JSON log lines, non-JSON lines, prune and compact wording, final JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.integration.agent_support import fed, finished_run, load_agent

agent = load_agent()

PROGRESS = {
    "original_size": 1200,
    "compressed_size": 800,
    "deduplicated_size": 400,
    "nfiles": 12,
    "path": "home/zoe/file",
    "time": 1795671281.65,
    "type": "archive_progress",
    "finished": False,
}
ARCHIVE_ID = "946abf5b13bb792cc7bfd999b82c86363e23bde8d9b369773ed4d1c353d331bb"


def log_message(level: str, message: str, msgid: str | None = None) -> dict[str, Any]:
    record = {
        "type": "log_message",
        "time": 1.5,
        "message": message,
        "levelname": level,
        "name": "borg",
    }
    if msgid:
        record["msgid"] = msgid
    return record


def test_archive_progress_becomes_a_progress_event() -> None:
    record = agent.parse_borg_line(json.dumps(PROGRESS) + "\n")
    assert agent.progress_event(record) == {
        "type": "progress",
        "operation": "create",
        "time": 1795671281.65,
        "nfiles": 12,
        "original_size": 1200,
        "compressed_size": 800,
        "deduplicated_size": 400,
        "path": "home/zoe/file",
    }


def test_the_finished_progress_record_is_not_passed_on() -> None:
    finished = {"time": 1795671281.66, "type": "archive_progress", "finished": True}
    assert agent.progress_event(finished) is None


def test_other_records_are_not_progress() -> None:
    message = {"message": "Saving files cache", "type": "progress_message", "finished": False}
    assert agent.progress_event(message) is None
    assert agent.log_event(message) is None


@pytest.mark.parametrize("level", ["WARNING", "ERROR", "CRITICAL"])
def test_warnings_and_worse_become_log_events(level: str) -> None:
    record = log_message(level, "/srv/x: [Errno 13] Permission denied", "BackupPermissionError")
    assert agent.log_event(record) == {
        "type": "log",
        "level": level.lower(),
        "msgid": "BackupPermissionError",
        "message": "/srv/x: [Errno 13] Permission denied",
        "time": 1.5,
    }


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
def test_quieter_log_messages_are_dropped(level: str) -> None:
    assert agent.log_event(log_message(level, "Keeping archive ...")) is None


def test_non_json_lines_are_warnings_without_msgid() -> None:
    record = agent.parse_borg_line("Warning: Password input may be echoed.\n")
    event = agent.log_event(record)
    assert event["level"] == "warning"
    assert event["msgid"] == ""
    assert event["message"] == "Warning: Password input may be echoed."


def test_a_prompt_followed_by_json_on_the_same_line_is_split() -> None:
    error = log_message("ERROR", "can not acquire a passphrase", "NoPassphraseFailure")
    record = agent.parse_borg_line("Enter passphrase for key /srv/repo: " + json.dumps(error))
    assert record["message"] == "Enter passphrase for key /srv/repo: "
    assert record["embedded"]["msgid"] == "NoPassphraseFailure"


@pytest.mark.parametrize("line", ["", "\n", "   \r\n"])
def test_blank_lines_are_ignored(line: str) -> None:
    assert agent.parse_borg_line(line) is None


def test_json_that_is_not_an_object_is_text() -> None:
    assert agent.parse_borg_line("[1, 2]")["type"] == "text"


def test_paths_with_newlines_and_undecodable_bytes_keep_the_framing() -> None:
    raw = b'{"type": "archive_progress", "nfiles": 1, "path": "a\\nb/caf\\udce9", "time": 1}'
    record = agent.parse_borg_line(raw.decode("utf-8", "surrogateescape"))
    event = agent.progress_event(record)
    line = json.dumps(event, ensure_ascii=True)
    assert "\n" not in line
    assert json.loads(line)["path"] == "a\nb/caf\udce9"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_stderr_bytes_parse_without_crashing(raw: bytes) -> None:
    record = agent.parse_borg_line(raw.decode("utf-8", "surrogateescape"))
    if record is not None:
        for item in (record, record.get("embedded")):
            if item:
                agent.progress_event(item)
                agent.log_event(item)


# -- prune and compact -------------------------------------------------------------------------

BORG_12_PRUNE = [
    "Keeping archive (rule: daily #1):        web-2025-01-10T12:00:00              "
    f"Fri, 2025-01-10 12:00:00 [{ARCHIVE_ID}]",
    "Keeping archive (rule: weekly[oldest] #1): web-2025-01-01T12:00:00            "
    f"Wed, 2025-01-01 12:00:00 [{ARCHIVE_ID}]",
    "Keeping checkpoint archive:              web-2025-01-11T12:00:00.checkpoint   "
    f"Sat, 2025-01-11 12:00:00 [{ARCHIVE_ID}]",
    "Pruning archive (1/2):                   web-2025-01-09T12:00:00              "
    f"Thu, 2025-01-09 12:00:00 [{ARCHIVE_ID}]",
    "Would prune:                             web-2025-01-08T12:00:00              "
    f"Wed, 2025-01-08 12:00:00 [{ARCHIVE_ID}]",
]
# borg 1.4 pads the label to 44 columns and may print the time with its UTC offset.
BORG_14_PRUNE = [
    "Keeping archive (rule: daily #1):            web-2025-01-10T12:00:00              "
    f"Fri, 2025-01-10 12:00:00 +0000 [{ARCHIVE_ID}]",
    "Pruning archive (2/2):                       web-2025-01-07T12:00:00              "
    f"Tue, 2025-01-07 12:00:00 +0100 [{ARCHIVE_ID}]",
]


def test_prune_lines_of_borg_12() -> None:
    assert [agent.parse_prune_line(line) for line in BORG_12_PRUNE] == [
        ("kept", "web-2025-01-10T12:00:00", "2025-01-10T12:00:00.000000"),
        ("kept", "web-2025-01-01T12:00:00", "2025-01-01T12:00:00.000000"),
        ("kept", "web-2025-01-11T12:00:00.checkpoint", "2025-01-11T12:00:00.000000"),
        ("pruned", "web-2025-01-09T12:00:00", "2025-01-09T12:00:00.000000"),
        ("pruned", "web-2025-01-08T12:00:00", "2025-01-08T12:00:00.000000"),
    ]


def test_prune_lines_of_borg_14() -> None:
    assert [agent.parse_prune_line(line) for line in BORG_14_PRUNE] == [
        ("kept", "web-2025-01-10T12:00:00", "2025-01-10T12:00:00.000000+00:00"),
        ("pruned", "web-2025-01-07T12:00:00", "2025-01-07T12:00:00.000000+01:00"),
    ]


def test_archive_names_with_spaces_are_kept_whole() -> None:
    line = f"Would prune:   my archive  name   Thu, 2025-01-09 12:00:00 [{ARCHIVE_ID}]"
    assert agent.parse_prune_line(line) == (
        "pruned",
        "my archive  name",
        "2025-01-09T12:00:00.000000",
    )


@pytest.mark.parametrize("line", ["Pruning archives  50%", "compaction freed about 1 B", ""])
def test_other_prune_output_is_not_an_archive(line: str) -> None:
    assert agent.parse_prune_line(line) is None


@pytest.mark.parametrize(
    ("message", "freed"),
    [
        ("compaction freed about 633 B repository space.", 633),
        ("compaction freed about 4.68 kB repository space.", 4680),
        ("compaction freed about 1.50 GB repository space.", 1_500_000_000),
        ("compaction freed about 2.00 MiB repository space.", 2 * 1024 * 1024),
        ("compaction freed about 3 XB repository space.", None),
        ("Finished compaction", None),
    ],
)
def test_freed_bytes_of_compact(message: str, freed: int | None) -> None:
    assert agent.parse_freed_bytes(message) == freed


def test_prune_data_collects_kept_pruned_and_freed() -> None:
    prune_records = [log_message("INFO", line) for line in BORG_12_PRUNE[:2] + BORG_12_PRUNE[3:4]]
    compact_records = [log_message("INFO", "compaction freed about 4.68 kB repository space.")]
    pruned = fed(agent.PruneTally(), prune_records)
    compacted = fed(agent.CompactTally(), compact_records)
    assert agent.prune_data(pruned, compacted) == {
        "kept": ["web-2025-01-10T12:00:00", "web-2025-01-01T12:00:00"],
        "kept_count": 2,
        "pruned": ["web-2025-01-09T12:00:00"],
        "pruned_count": 1,
        "compact": {"freed_bytes": 4680},
    }


def test_prune_data_without_a_freed_line() -> None:
    data = agent.prune_data(agent.PruneTally(), agent.CompactTally())
    assert data["compact"] == {"freed_bytes": None}


# -- final JSON documents ------------------------------------------------------------------------

CREATE_OUTPUT = {
    "archive": {
        "command_line": ["borg", "create"],
        "duration": 0.006628,
        "end": "2026-11-26T05:34:41.000000",
        "id": ARCHIVE_ID,
        "name": "web-2026-11-26T05:34:41",
        "start": "2026-11-26T05:34:40.000000",
        "stats": {
            "compressed_size": 615,
            "deduplicated_size": 600,
            "nfiles": 2,
            "original_size": 507,
        },
    },
    "cache": {
        "path": "/root/.cache/borg/x",
        "stats": {
            "total_chunks": 4,
            "total_csize": 92,
            "total_size": 60,
            "total_unique_chunks": 3,
            "unique_csize": 870,
            "unique_size": 889,
        },
    },
}


def test_create_data() -> None:
    assert agent.create_data(CREATE_OUTPUT) == {
        "archive": {
            "name": "web-2026-11-26T05:34:41",
            "id": ARCHIVE_ID,
            "start": "2026-11-26T05:34:40.000000",
            "end": "2026-11-26T05:34:41.000000",
            "duration": 0.006628,
            "nfiles": 2,
            "original_size": 507,
            "compressed_size": 615,
            "deduplicated_size": 600,
        },
        "repository": {
            "total_size": 60,
            "compressed_size": 92,
            "deduplicated_size": 870,
            "total_chunks": 4,
            "unique_chunks": 3,
        },
    }


def test_stats_data_counts_the_listed_archives() -> None:
    listing = {
        "archives": [
            {"name": "web-1", "id": "a", "time": "2025-01-01T00:00:00.000000"},
            {"name": "web-2", "id": "b", "time": "2025-01-02T00:00:00.000000"},
        ]
    }
    archives = agent.archive_summaries(listing)
    assert agent.stats_data({"cache": CREATE_OUTPUT["cache"]}, 2, archives[-1]) == {
        "total_size": 60,
        "compressed_size": 92,
        "deduplicated_size": 870,
        "archive_count": 2,
        "last_archive": {"name": "web-2", "time": "2025-01-02T00:00:00.000000"},
    }


def test_stats_data_of_an_empty_repository() -> None:
    stats = agent.stats_data({"cache": CREATE_OUTPUT["cache"]}, 0, None)
    assert stats["archive_count"] == 0
    assert stats["last_archive"] is None


def test_stats_data_says_the_encryption_and_where_a_key_file_is() -> None:
    repokey = {"cache": CREATE_OUTPUT["cache"], "encryption": {"mode": "repokey-blake2"}}
    assert agent.stats_data(repokey, 0, None)["encryption"] == {"mode": "repokey-blake2"}
    keyfile = {"mode": "keyfile", "keyfile": "/root/.config/borg/keys/srv_borg_web"}
    stats = agent.stats_data({"encryption": keyfile}, 0, None)
    assert stats["encryption"] == keyfile
    assert agent.stats_summary(stats)[-1] == (
        "encryption: keyfile, key file /root/.config/borg/keys/srv_borg_web"
    )


def test_stats_data_leaves_encryption_out_when_borg_does_not_say() -> None:
    for info in ({}, {"encryption": None}, {"encryption": {"keyfile": "/k"}}):
        assert "encryption" not in agent.stats_data(info, 0, None)


def test_borg_error_prefers_the_last_error_with_a_msgid() -> None:
    records = [
        log_message("ERROR", "first", "Repository.DoesNotExist"),
        log_message("ERROR", "the lock timed out", "LockTimeout"),
        log_message("ERROR", "no msgid here"),
        log_message("WARNING", "only a warning", "Warn"),
    ]
    assert agent.borg_error(finished_run(records, 2)) == {
        "msgid": "LockTimeout",
        "message": "the lock timed out",
    }


def test_borg_error_without_any_error_line() -> None:
    assert agent.borg_error(finished_run([], 2)) == {
        "msgid": "BorgError",
        "message": "borg exited with return code 2",
    }
    only_text = [log_message("ERROR", "Traceback ...")]
    assert agent.borg_error(finished_run(only_text, 2)) == {
        "msgid": "BorgError",
        "message": "Traceback ...",
    }


# -- what the agent keeps and sends stays bounded however much borg prints ----------------------

ONE_MIB = 1024 * 1024
# Worst-case text: every character becomes a 6-byte \uXXXX escape in the ASCII-only JSON line.
WIDE_NAME = "\u00e9" * 200


def result_line_size(operation: str, data: dict[str, Any], error: dict[str, str] | None) -> int:
    event = {
        "type": "result",
        "operation": operation,
        "ok": error is None,
        "rc": 0 if error is None else 2,
        "borg_rc": 0,
        "duration": 1.0,
        "warnings": 0,
        "data": data,
    }
    if error is not None:
        event["error"] = error
    return len(json.dumps(event, ensure_ascii=True))


def test_a_run_with_endless_warnings_keeps_a_bounded_part_and_counts_all() -> None:
    records = [
        log_message("WARNING", f"/srv/{WIDE_NAME}/{n}: [Errno 13] Permission denied")
        for n in range(20000)
    ]
    run = finished_run([*records, log_message("ERROR", "x" * 100000, "Huge")], 2)
    assert run.problems.count == 20001
    assert len(json.dumps(run.problems.items)) <= agent.RESULT_LIST_BUDGET
    assert run.problems.items[0] == records[0]["message"]  # the first ones are kept
    error = agent.borg_error(run)
    assert error["msgid"] == "Huge"
    assert len(error["message"]) < agent.MESSAGE_MAX_CHARS + 100


def test_a_check_result_with_endless_findings_stays_well_under_one_mib() -> None:
    records = [log_message("ERROR", f"{WIDE_NAME * 40} {n}") for n in range(5000)]
    data = {
        "findings": finished_run(records, 1).problems.items,
        "finding_count": 5000,
        "repository_ok": False,
    }
    error = {"msgid": "CheckFoundProblems", "message": agent.capped_text("; ".join(["y" * 9000]))}
    assert result_line_size("check", data, error) < ONE_MIB / 2


def test_a_listing_of_many_archives_sends_the_newest_and_counts_all() -> None:
    archives = [
        {"name": f"{WIDE_NAME}-{n:06d}", "id": ARCHIVE_ID, "time": "2025-01-01T00:00:00.000000"}
        for n in range(50000)
    ]
    data = agent.list_data(archives)
    assert data["archive_count"] == 50000
    assert data["archives"] == archives[-len(data["archives"]) :]  # the newest, oldest first
    assert result_line_size("list", data, None) < ONE_MIB / 2


def test_a_prune_of_many_archives_sends_a_bounded_list_and_counts_all() -> None:
    lines = [
        f"{'Keeping archive (rule: daily #1):' if n % 2 else 'Pruning archive (1/2):':44}"
        f"web-{WIDE_NAME}-{n:06d}   Fri, 2025-01-10 12:00:00 [{ARCHIVE_ID}]"
        for n in range(40000)
    ]
    tally = fed(agent.PruneTally(), [log_message("INFO", line) for line in lines])
    data = agent.prune_data(tally, agent.CompactTally())
    assert (data["kept_count"], data["pruned_count"]) == (20000, 20000)
    assert data["kept"][0] == f"web-{WIDE_NAME}-000001"  # borg's order: newest first
    assert result_line_size("prune", data, None) < ONE_MIB / 2
    assert tally.left == 20000


def test_a_long_message_keeps_its_start_and_its_end() -> None:
    traceback = "Traceback (most recent call last):\n" + "  frame\n" * 5000 + "OSError: the cause"
    capped = agent.capped_text(traceback)
    assert len(capped) < agent.MESSAGE_MAX_CHARS + 100
    assert capped.startswith("Traceback")
    assert capped.endswith("OSError: the cause")
    assert agent.capped_text("short") == "short"


# -- a full disk is named as such, from borg's own lines ------------------------------------------

# What borg 1.2.4 printed (--log-json) when the repository's filesystem filled up during create.
DISK_FULL_LINES = [
    {
        "type": "log_message",
        "message": "data/big: read: [Errno 28] No space left on device",
        "levelname": "WARNING",
        "name": "borg.archiver",
    },
    {
        "type": "log_message",
        "message": "No space left on device, cleaning up partial transaction to free space.",
        "levelname": "WARNING",
        "name": "borg.repository",
    },
    {
        "type": "log_message",
        "message": "Local Exception",
        "levelname": "ERROR",
        "name": "borg.archiver",
        "msgid": "Exception",
    },
    {
        "type": "log_message",
        "message": "Traceback (most recent call last):\n"
        '  File "/usr/lib/python3/dist-packages/borg/repository.py", line 1468, in close_segment\n'
        "OSError: [Errno 28] No space left on device",
        "levelname": "ERROR",
        "name": "borg.archiver",
    },
]


def test_a_full_repository_disk_is_named() -> None:
    assert agent.borg_error(finished_run(DISK_FULL_LINES, 2)) == {
        "msgid": "RepositoryDiskFull",
        "message": "no space left on the repository's disk",
    }
    # the traceback alone says so too
    assert agent.borg_error(finished_run(DISK_FULL_LINES[2:], 2))["msgid"] == "RepositoryDiskFull"


def test_a_full_disk_elsewhere_is_not_blamed_on_the_repository() -> None:
    cache_full = [
        DISK_FULL_LINES[2],
        log_message(
            "ERROR",
            'Traceback ...\n  File "/usr/lib/python3/dist-packages/borg/cache.py", line 9\n'
            "OSError: [Errno 28] No space left on device",
        ),
    ]
    assert agent.borg_error(finished_run(cache_full, 2))["msgid"] == "DiskFull"


def test_other_errors_are_not_disk_full() -> None:
    records = [log_message("ERROR", "Failed to create/acquire the lock", "LockTimeout")]
    assert agent.borg_error(finished_run(records, 2))["msgid"] == "LockTimeout"


def test_a_person_is_told_what_a_result_left_out() -> None:
    listing = {"archives": [{"name": "web-9", "time": "t"}], "archive_count": 3}
    assert agent.list_summary(listing) == ["... and 2 more older archives, not listed", "web-9  t"]
    pruned = {
        "kept": ["web-9"],
        "kept_count": 1,
        "pruned": ["web-8"],
        "pruned_count": 5,
        "compact": {"freed_bytes": None},
    }
    assert agent.prune_summary(pruned) == [
        "kept    web-9",
        "pruned  web-8",
        "... and 4 more pruned archives, not listed",
        "compact freed an unknown amount",
    ]
