"""The agent's offsite operation, its pure parts: the job's fields and the tools' allow-lists,
the policy's ``offsite`` key, the tools' command lines and what the agent reads from their
output (lines captured from rclone 1.60 and rsync 3.x)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.agent_support import load_agent

agent = load_agent()

OFFSITE_JOB: dict[str, Any] = {
    "protocol": 2,
    "repositories": ["/srv/borg/laptop", "/srv/borg/nas"],
    "tool": "rclone",
    "destination": "offsite:backups",
}


def offsite_job(**fields: Any) -> dict[str, Any]:
    if fields.get("tool") == "rsync":
        fields = {"destination": "/mnt/usb/borg", **fields}
    job = {**OFFSITE_JOB, **fields}
    return {key: value for key, value in job.items() if value is not None}


def rejection(raw: object) -> Any:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job("offsite", raw)
    return caught.value


# -- the job -----------------------------------------------------------------------------------


def test_a_minimal_offsite_job_gets_the_defaults() -> None:
    job = agent.validate_job("offsite", OFFSITE_JOB)
    assert job.repositories == ("/srv/borg/laptop", "/srv/borg/nas")
    assert (job.tool, job.destination, job.tool_options) == ("rclone", "offsite:backups", ())
    assert (job.keep_replaced, job.max_delete, job.lock_wait) == (False, None, 60)


@pytest.mark.parametrize("missing", ["repositories", "tool", "destination"])
def test_offsite_requires_its_fields(missing: str) -> None:
    caught = rejection(offsite_job(**{missing: None}))
    assert (caught.field, caught.message) == (missing, "is required for offsite")


def test_offsite_rejects_the_singular_repository() -> None:
    caught = rejection(offsite_job(repository="/srv/borg/laptop"))
    assert caught.field == "repository"
    assert "repositories" in caught.message


@pytest.mark.parametrize(
    ("repositories", "field"),
    [
        ([], "repositories"),
        (["/srv/borg/r"] * 33, "repositories"),
        (["relative/repo"], "repositories[0]"),
        (["/srv/borg/a", "ssh://nas/srv/borg"], "repositories[1]"),
        (["nas:/srv/borg"], "repositories[0]"),
        (["/srv/../etc"], "repositories[0]"),
        (["/srv/borg/\nx"], "repositories[0]"),
        (["/srv/borg/{hostname}"], "repositories[0]"),
        (["/"], "repositories[0]"),
        (["/srv/a/laptop", "/srv/b/laptop"], "repositories[1]"),
        ("/srv/borg/laptop", "repositories"),
    ],
)
def test_bad_repositories(repositories: object, field: str) -> None:
    assert rejection(offsite_job(repositories=repositories)).field == field


@pytest.mark.parametrize(
    ("tool", "destination"),
    [
        ("rclone", "/mnt/usb/borg"),
        ("rclone", "offsite:"),
        ("rclone", "b2_bucket:borg/copies"),
        ("rclone", "my.remote-1:/abs/path"),
        ("rsync", "/mnt/usb/borg"),
        ("rsync", "backup@nas.lan:/volume1/borg"),
        ("rsync", "nas:/volume1/borg"),
        ("rsync", "[fd00::1]:/volume1/borg"),
    ],
)
def test_destinations_each_tool_accepts(tool: str, destination: str) -> None:
    job = agent.validate_job("offsite", offsite_job(tool=tool, destination=destination))
    assert job.destination == destination


@pytest.mark.parametrize(
    ("tool", "destination"),
    [
        ("rclone", ":sftp,host=evil:path"),
        ("rclone", "remote,opt=1:path"),
        ("rclone", "relative/path"),
        ("rclone", "-remote:path"),
        ("rclone", "remote:a/../b"),
        ("rclone", "/mnt/../etc"),
        ("rclone", "remote:a\nb"),
        ("rclone", "remote:" + "a" * 1024),
        ("rsync", "nas::module/path"),
        ("rsync", "rsync://nas/module"),
        ("rsync", "nas:relative/path"),
        ("rsync", "-e sh:/x"),
        ("rsync", "nas://x"),
        ("rsync", "remote:"),
        ("rsync", "/mnt/usb/.."),
    ],
)
def test_destinations_rejected(tool: str, destination: str) -> None:
    assert rejection(offsite_job(tool=tool, destination=destination)).field == "destination"


def test_an_unknown_tool_is_rejected() -> None:
    assert rejection(offsite_job(tool="scp")).field == "tool"


@pytest.mark.parametrize(
    ("tool", "options"),
    [
        ("rclone", ["--bwlimit=10M", "--transfers=4", "--checkers=64", "--tpslimit=1000"]),
        ("rclone", ["--bwlimit=1.5k", "--config=/etc/rclone.conf", "--fast-list"]),
        ("rsync", ["--bwlimit=500", "--compress", "--timeout=600"]),
        ("rsync", ["--rsh=ssh -i /root/.ssh/offsite -p 2222"]),
        (
            "rsync",
            ["--rsh=ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/kh -p 22"],
        ),
    ],
)
def test_tool_options_on_the_allow_list(tool: str, options: list[str]) -> None:
    job = agent.validate_job("offsite", offsite_job(tool=tool, tool_options=options))
    assert job.tool_options == tuple(options)


@pytest.mark.parametrize(
    ("tool", "options", "field"),
    [
        ("rclone", ["--size-only"], "tool_options[0]"),
        ("rclone", ["--fast-list", "--transfers=65"], "tool_options[1]"),
        ("rclone", ["--transfers=0"], "tool_options[0]"),
        ("rclone", ["--bwlimit=10Q"], "tool_options[0]"),
        ("rclone", ["--bwlimit"], "tool_options[0]"),
        ("rclone", ["--fast-list=yes"], "tool_options[0]"),
        ("rclone", ["--config=relative.conf"], "tool_options[0]"),
        ("rclone", ["--compress"], "tool_options[0]"),  # rsync's, not rclone's
        ("rclone", ["--transfers", "4"], "tool_options[0]"),
        ("rclone", ["--delete-before"], "tool_options[0]"),
        ("rsync", ["--fast-list"], "tool_options[0]"),
        ("rsync", ["--rsh=sh -c id"], "tool_options[0]"),
        ("rsync", ["--rsh=ssh -o ProxyCommand=id"], "tool_options[0]"),
        ("rsync", ["--rsh=ssh -o StrictHostKeyChecking=no"], "tool_options[0]"),
        ("rsync", ["--timeout=0"], "tool_options[0]"),
        ("rsync", ["--delete-excluded"], "tool_options[0]"),
        ("rsync", ["-e ssh"], "tool_options[0]"),
        ("rsync", ["--max-delete=5"], "tool_options[0]"),  # a job field, not an option
        ("rsync", ["--compress"] * 17, "tool_options"),
        ("rsync", "--compress", "tool_options"),
    ],
)
def test_tool_options_off_the_allow_list(tool: str, options: object, field: str) -> None:
    assert rejection(offsite_job(tool=tool, tool_options=options)).field == field


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_delete": -1}, "max_delete"),
        ({"max_delete": True}, "max_delete"),
        ({"max_delete": "10"}, "max_delete"),
        ({"keep_replaced": 1}, "keep_replaced"),
        ({"keep_replaced": None, "surprise": 1}, "surprise"),
    ],
)
def test_bad_protection_fields(fields: dict[str, Any], field: str) -> None:
    assert rejection(offsite_job(**fields)).field == field


def test_max_delete_may_be_null_or_a_bound() -> None:
    assert agent.validate_job("offsite", offsite_job(max_delete=None)).max_delete is None
    raw = {**OFFSITE_JOB, "max_delete": None}
    assert agent.validate_job("offsite", raw).max_delete is None
    assert agent.validate_job("offsite", offsite_job(max_delete=0)).max_delete == 0


def test_offsite_is_no_step_of_a_sequence() -> None:
    raw = {"protocol": 2, "repository": "/srv/r", "steps": ["offsite"]}
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job("sequence", raw)
    assert caught.value.field == "steps[0]"


def destination_verdict(tool: str, text: str) -> str:
    """ "accepted", or the field a job with this destination is rejected for."""
    try:
        job = agent.validate_job("offsite", offsite_job(tool=tool, destination=text))
    except agent.Rejected as rejected:
        return str(rejected.field)
    assert not job.destination.startswith("-")
    assert ".." not in job.destination.replace(":", "/").split("/")
    return "accepted"


@given(st.text(max_size=80))
def test_any_destination_text_is_accepted_or_rejected_by_name(text: str) -> None:
    for tool in agent.OFFSITE_TOOLS:
        assert destination_verdict(tool, text) in ("accepted", "destination")


# -- the policy --------------------------------------------------------------------------------


def offsite_policy(**offsite: Any) -> Any:
    return agent.parse_policy(
        {
            "repositories": [],
            "paths": [],
            "offsite": {
                "repositories": ["/srv/borg"],
                "destinations": ["/mnt/usb/borg", "offsite:copies", "backup@nas:/volume1"],
                **offsite,
            },
        }
    )


def policy_field(policy: Any, **fields: Any) -> str | None:
    try:
        agent.check_policy(policy, "offsite", agent.validate_job("offsite", offsite_job(**fields)))
    except agent.Rejected as rejected:
        return str(rejected.field)
    return None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "destination"),
        ({"destination": "offsite:copies"}, None),
        ({"destination": "offsite:copies/laptop"}, None),
        ({"destination": "offsite:copiesX"}, "destination"),
        ({"destination": "offsite:/copies"}, "destination"),
        ({"destination": "other:copies"}, "destination"),
        ({"destination": "/mnt/usb/borg/weekly", "tool": "rsync"}, None),
        ({"destination": "/mnt/usb/borgX", "tool": "rsync"}, "destination"),
        ({"destination": "backup@nas:/volume1/x", "tool": "rsync"}, None),
        ({"destination": "nas:/volume1/x", "tool": "rsync"}, "destination"),
        ({"destination": "offsite:copies", "repositories": ["/srv/other"]}, "repositories[0]"),
        (
            {"destination": "offsite:copies", "repositories": ["/srv/borg/a", "/srv/b"]},
            "repositories[1]",
        ),
    ],
)
def test_the_policy_bounds_repositories_and_destinations(
    fields: dict[str, Any], field: str | None
) -> None:
    assert policy_field(offsite_policy(), **fields) == field


def test_a_policy_file_without_the_offsite_key_refuses_offsite() -> None:
    policy = agent.parse_policy({"repositories": ["/"], "paths": ["/"]})
    assert policy_field(policy, destination="offsite:copies") == "operation"


def test_without_a_policy_file_offsite_is_allowed() -> None:
    assert policy_field(agent.Policy(), destination="anything:") is None


def test_a_policy_that_lists_operations_must_list_offsite() -> None:
    raw = {
        "repositories": [],
        "paths": [],
        "operations": ["create"],
        "offsite": {"repositories": ["/srv/borg"], "destinations": ["offsite:"]},
    }
    assert policy_field(agent.parse_policy(raw), destination="offsite:x") == "operation"
    raw["operations"] = ["offsite"]
    assert policy_field(agent.parse_policy(raw), destination="offsite:x") is None


def test_local_destinations_are_compared_resolved(tmp_path: Any) -> None:
    (tmp_path / "allowed").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "elsewhere")
    policy = offsite_policy(destinations=[str(tmp_path / "allowed")])
    inside = str(tmp_path / "allowed" / "new")
    escaping = str(tmp_path / "allowed" / "link" / "x")
    assert policy_field(policy, destination=inside) is None
    assert policy_field(policy, destination=escaping) == "destination"


@pytest.mark.parametrize(
    "offsite",
    [
        [],
        {"repositories": ["/srv"]},
        {"repositories": ["/srv"], "destinations": ["x:"], "more": 1},
        {"repositories": ["relative"], "destinations": []},
        {"repositories": [], "destinations": ["a/../b"]},
        {"repositories": [], "destinations": "x:"},
        {"repositories": [], "destinations": ["relative/path"]},
        {"repositories": [], "destinations": ["-x:/y"]},
    ],
)
def test_malformed_offsite_keys(offsite: object) -> None:
    with pytest.raises(agent.Rejected):
        agent.parse_policy({"repositories": [], "paths": [], "offsite": offsite})


# -- command lines -----------------------------------------------------------------------------


NOW = 1796300000.0
STAMP = "2026-12-03T121320Z"  # NOW in UTC


def copy_job(**fields: Any) -> dict[str, Any]:
    job = offsite_job(**fields)
    validated = agent.validate_job("offsite", job)
    return dict(agent.locked_copy_job(validated, validated.repositories[0], NOW))


def test_rclone_copy_and_check_command_lines() -> None:
    copy = copy_job(tool_options=["--bwlimit=1M"], max_delete=5, keep_replaced=True)
    assert copy["destination"] == "offsite:backups/laptop"
    assert copy["replaced"] == f"offsite:backups/.replaced/laptop/{STAMP}"
    argv = agent.copy_argv("/usr/bin/rclone", copy)
    assert argv[:2] == ["/usr/bin/rclone", "sync"]
    assert argv[-3:] == ["--", "/srv/borg/laptop", "offsite:backups/laptop"]
    assert "--bwlimit=1M" in argv
    assert "--max-delete=5" in argv
    assert f"--backup-dir=offsite:backups/.replaced/laptop/{STAMP}" in argv
    assert "--exclude=/lock.exclusive/**" in argv
    check = agent.verify_argv("/usr/bin/rclone", copy)
    assert check[:2] == ["/usr/bin/rclone", "check"]
    assert not any(word.startswith(("--max-delete", "--backup-dir")) for word in check)


def test_rsync_copy_and_dry_run_command_lines() -> None:
    copy = copy_job(
        tool="rsync", destination="backup@nas:/volume1/borg/", keep_replaced=True, max_delete=0
    )
    assert copy["destination"] == "backup@nas:/volume1/borg/laptop"
    argv = agent.copy_argv("/usr/bin/rsync", copy)
    assert argv[:3] == ["/usr/bin/rsync", "-a", "--delete"]
    assert argv[-3:] == ["--", "/srv/borg/laptop/", "backup@nas:/volume1/borg/laptop/"]
    assert "--max-delete=0" in argv
    # --backup-dir is a path on the receiving host
    assert f"--backup-dir=/volume1/borg/.replaced/laptop/{STAMP}" in argv
    assert "--exclude=/lock.roster" in argv
    dry_run = agent.verify_argv("/usr/bin/rsync", copy)
    assert {"--checksum", "--dry-run", "--itemize-changes", "--delete"} <= set(dry_run)
    assert "--backup" not in dry_run


def test_without_protection_fields_no_protection_options() -> None:
    argv = agent.copy_argv("/usr/bin/rsync", copy_job(tool="rsync", destination="/mnt/x"))
    assert not any(word.startswith(("--max-delete", "--backup")) for word in argv)


def test_with_lock_gets_no_passphrase() -> None:
    env = {"PATH": "/usr/bin", "BORG_PASSPHRASE": "s3cret", "BORG_PASSCOMMAND": "cat /x"}
    assert agent.with_lock_environment(env) == {"PATH": "/usr/bin"}
    job = agent.validate_job("offsite", offsite_job(passphrase="s3cret"))
    argv = agent.with_lock_argv("/usr/bin/borg", job, "/srv/borg/laptop")
    assert argv[1:6] == ["with-lock", "--log-json", "--lock-wait=60", "--", "/srv/borg/laptop"]
    assert argv[-1] == agent.LOCKED_COPY_MODE
    assert "s3cret" not in " ".join(argv)


def test_tools_get_an_allow_listed_environment() -> None:
    env = {"PATH": "/bin", "HOME": "/root", "RCLONE_CONFIG": "/tmp/evil", "LANG": "de_DE"}
    assert agent.tool_environment(env) == {
        "PATH": "/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


# -- reading the tools' output ------------------------------------------------------------------

RCLONE_STATS = (
    '{"level":"warning","msg":"\\nTransferred: ...","source":"accounting/stats.go:482",'
    '"stats":{"bytes":2125924,"checks":0,"deletedDirs":0,"deletes":0,"elapsedTime":2.1,'
    '"errors":0,"eta":1,"fatalError":false,"renames":0,"retryError":false,'
    '"speed":1076247.5,"totalBytes":3000100,"totalChecks":0,"totalTransfers":2,'
    '"transferTime":0,"transfers":1},"time":"2026-12-03T15:37:50.100861+00:00"}'
)


def test_rclone_stats_become_progress() -> None:
    record = agent.rclone_record(RCLONE_STATS)
    figures = agent.rclone_figures(record, "copy")
    event = agent.offsite_progress("/srv/borg/laptop", "copy", 1.0, figures)
    assert event == {
        "type": "progress",
        "operation": "offsite",
        "time": 1.0,
        "repository": "/srv/borg/laptop",
        "phase": "copy",
        "bytes": 2125924,
        "total_bytes": 3000100,
        "speed": 1076247.5,
        "eta": 1,
        "files": 1,
        "total_files": 2,
    }
    assert agent.rclone_figures(record, "verify")["files"] == 0  # checks while verifying


def test_rclone_stats_with_null_eta() -> None:
    record = json.loads(RCLONE_STATS)
    record["stats"]["eta"] = None
    assert agent.rclone_figures(record, "copy")["eta"] is None


def test_rclone_lines_that_are_not_progress() -> None:
    error = (
        '{"level":"error","msg":"sizes differ","object":"data/0/5",'
        '"objectType":"*local.Object","source":"operations/check.go:129","time":"x"}'
    )
    event = agent.tool_log_event("rclone", error)
    assert (event["level"], event["message"]) == ("error", "data/0/5 sizes differ")
    summary = '{"level":"warning","msg":"0 differences found","source":"check.go:249"}'
    assert agent.tool_log_event("rclone", summary) is None
    assert agent.tool_log_event("rclone", RCLONE_STATS) is None
    plain = agent.tool_log_event("rclone", "2026/12/03 15:37:51 Failed to check with 2 errors")
    assert plain["level"] == "warning"


def test_rclone_check_differences() -> None:
    lines = [
        '{"level":"warning","msg":"1 files missing","source":"check.go:246"}',
        '{"level":"warning","msg":"2 differences found","source":"check.go:249"}',
        "2026/12/03 15:37:51 Failed to check with 2 errors: last error was: 2 differences found",
    ]
    assert agent.rclone_differences(lines) == 2
    assert agent.rclone_differences(['{"level":"warning","msg":"0 differences found"}']) == 0
    assert agent.rclone_differences(["nothing"]) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "      2,129,920  70% 1000.98kB/s    0:00:01  ",
            {"bytes": 2129920, "total_bytes": 3042743, "speed": 1025004, "eta": 1, "files": 0},
        ),
        (
            "      3,000,000  99%    1.01MB/s    0:00:02 (xfr#1, to-chk=1/3)",
            {"bytes": 3000000, "speed": 1059062, "eta": 2, "files": 1, "total_files": 3},
        ),
        (
            "      3,000,100 100%  989.68kB/s    0:00:02 (xfr#2, to-chk=0/3)",
            {"bytes": 3000100, "total_bytes": 3000100, "eta": 0, "files": 2, "total_files": 3},
        ),
        ("         32,768   0%    0.00kB/s    0:00:00  ", {"bytes": 32768, "total_bytes": None}),
        (
            " 12,884,901,888  12%  112.50MB/s    0:13:20 (xfr#40, ir-chk=1000/2040)",
            {"speed": 117964800, "eta": 800, "files": 40, "total_files": 2040},
        ),
    ],
)
def test_rsync_progress2_lines(line: str, expected: dict[str, Any]) -> None:
    figures = agent.rsync_figures(line)
    assert figures is not None
    assert {key: figures[key] for key in expected} == expected


@pytest.mark.parametrize(
    "line",
    ["", "Number of files: 3 (reg: 2, dir: 1)", "sent 3,000,992 bytes  received 64 bytes", "x"],
)
def test_rsync_lines_that_are_not_progress(line: str) -> None:
    assert agent.rsync_figures(line) is None


def test_rsync_stats_give_the_transferred_totals() -> None:
    lines = [
        "Number of files: 38 (reg: 34, dir: 4)",
        "Number of regular files transferred: 8",
        "Total file size: 3,049,236 bytes",
        "Total transferred file size: 42,323 bytes",
        "Literal data: 42,323 bytes",
    ]
    assert agent.rsync_totals(lines) == {"bytes": 42323, "files": 8}


def test_a_person_reads_the_summary_and_progress() -> None:
    data = {
        "repositories": [
            {
                "repository": "/srv/borg/laptop",
                "destination": "/mnt/usb/laptop",
                "bytes": 2000,
                "files": 3,
                "duration": 1.5,
                "verified": True,
            }
        ],
        "bytes": 2000,
        "files": 3,
    }
    assert agent.offsite_summary(data) == [
        "/srv/borg/laptop -> /mnt/usb/laptop: 2.00 kB in 3 files, verified",
        "copied 2.00 kB in 3 files",
    ]
    event = agent.offsite_progress(
        "/srv/borg/laptop", "copy", 1.0, {"bytes": 1000, "total_bytes": 2000, "files": 1}
    )
    assert (
        agent.offsite_progress_text(event) == "copy /srv/borg/laptop: 1.00 kB of 2.00 kB, 1 files"
    )
