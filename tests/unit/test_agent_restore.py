"""The pure parts of the agent's restores and drills: their job fields, the destination rules,
the drill's sample, borg's extract progress and check's options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.agent_support import load_agent

agent = load_agent()


def job(operation: str = "extract", **fields: Any) -> Any:
    raw = {"protocol": 2, "repository": "/srv/backup/repo", "archive_prefix": "nas", **fields}
    return agent.validate_job(operation, raw)


def rejected(operation: str = "extract", **fields: Any) -> Any:
    with pytest.raises(agent.Rejected) as caught:
        job(operation, **fields)
    return caught.value


def test_extract_needs_an_archive() -> None:
    assert rejected().field == "archive"
    assert job(archive="latest").archive == "latest"
    assert job(archive="nas-2026-12-03T10:00:00.123456").restore_paths == ()


@pytest.mark.parametrize(
    "archive",
    ["web-2026-12-03T10:00:00", "nas-db-2026-12-03T10:00:00", "nas-", "nas", "-x", "a/b", "nas 1"],
)
def test_an_archive_must_be_one_of_the_jobs_prefix(archive: str) -> None:
    assert rejected(archive=archive).field == "archive"


@pytest.mark.parametrize(
    ("paths", "field"),
    [
        (["/etc/passwd"], "restore_paths[0]"),
        (["home/../etc"], "restore_paths[0]"),
        (["home/zoe", ".."], "restore_paths[1]"),
        (["home/\nzoe"], "restore_paths[0]"),
        ([""], "restore_paths[0]"),
        (["."], "restore_paths[0]"),
        (["x"] * 257, "restore_paths"),
        ("home", "restore_paths"),
    ],
)
def test_restore_paths_stay_inside_the_archive(paths: object, field: str) -> None:
    assert rejected(archive="latest", restore_paths=paths).field == field


def test_restore_paths_may_hold_any_name_borg_stores() -> None:
    names = ["home/zoe/with space", "home/caf\udce9", "srv/..hidden", "-dash"]
    assert job(archive="latest", restore_paths=names).restore_paths == tuple(names)


def test_a_destination_is_absolute_without_dotdot() -> None:
    assert rejected(archive="latest", destination="restore/x").field == "destination"
    assert rejected(archive="latest", destination="/var/x/../../etc").field == "destination"


def test_a_destination_means_what_its_operation_says() -> None:
    # offsite's forms (an rclone remote) are no directory to restore into
    assert rejected(archive="latest", destination="offsite:restore").field == "destination"
    offsite = {"protocol": 2, "repositories": ["/srv/borg/nas"], "tool": "rclone"}
    copy = agent.validate_job("offsite", {**offsite, "destination": "offsite:restore"})
    assert copy.destination == "offsite:restore"
    # an extract's destination may be longer than any offsite destination
    long_path = "/var/lib/backup-drone/restore/" + "x" * 2000
    assert job(archive="latest", destination=long_path).destination == long_path
    assert job("drill", destination="/srv/x").destination == "/srv/x"  # validated, unused


def test_drill_defaults_and_bounds() -> None:
    spec = job("drill").drill
    assert (spec.seed, spec.size_budget, spec.max_files, spec.canaries) == (
        0,
        64 * 1024 * 1024,
        100,
        (),
    )
    assert rejected("drill", drill={"seed": -1}).field == "drill.seed"
    assert rejected("drill", drill={"max_files": 1001}).field == "drill.max_files"
    assert rejected("drill", drill={"canaries": ["etc/passwd"]}).field == "drill.canaries[0]"
    assert rejected("drill", drill={"sample": 3}).field == "drill.sample"
    assert rejected("drill", drill=[]).field == "drill"


def test_check_options() -> None:
    assert job("check").check.verify_data is False
    assert job("check", check={"verify_data": True}).check.verify_data is True
    assert job("check", check={"max_duration": 60}).check.max_duration == 60
    both = rejected("check", check={"verify_data": True, "max_duration": 60})
    assert both.field == "check.max_duration"
    assert rejected("check", check={"max_duration": 0}).field == "check.max_duration"
    assert rejected("check", check={"repair": True}).field == "check.repair"


def test_check_argv_per_option() -> None:
    plain = agent.check_argv("borg", job("check"))
    assert "--verify-data" not in plain
    assert "--repository-only" not in plain
    verify = agent.check_argv("borg", job("check", check={"verify_data": True}))
    assert verify[-2:] == ["--", "/srv/backup/repo"]
    assert "--verify-data" in verify
    limited = agent.check_argv("borg", job("check", check={"max_duration": 90}))
    assert limited[-4:-2] == ["--repository-only", "--max-duration=90"]


def test_extract_argv_puts_every_path_after_the_archive_as_a_prefix_pattern() -> None:
    argv = agent.extract_argv("borg", job(archive="latest"), "nas-1", ["pp:home/-x"])
    assert argv[:3] == ["borg", "extract", "--progress"]
    assert argv[-3:] == ["--", "/srv/backup/repo::nas-1", "pp:home/-x"]


def test_extract_progress_becomes_a_progress_event() -> None:
    record = {
        "type": "progress_percent",
        "msgid": "extract",
        "finished": False,
        "current": 10,
        "total": 40,
        "info": ["home/zoe/a"],
        "time": 5.0,
    }
    assert agent.extract_progress_event(record) == {
        "type": "progress",
        "operation": "extract",
        "time": 5.0,
        "current": 10,
        "total": 40,
        "path": "home/zoe/a",
    }
    calculating = {**record, "info": None}
    permissions = {**record, "msgid": "extract.permissions"}
    for other in (calculating, permissions, {**record, "finished": True}):
        assert agent.extract_progress_event(other) is None


def test_archived_files_are_the_regular_files_of_the_listing() -> None:
    lines = [
        {"type": "d", "path": "home", "size": 0},
        {"type": "-", "path": "home/a", "size": 3},
        {"type": "l", "path": "home/link", "size": 0},
        {"type": "-", "path": "home/broken", "size": 9, "healthy": False},
    ]
    listing = ("\n".join(json.dumps(line) for line in lines) + "\nnot json\n").encode()
    assert agent.archived_files(listing) == {"home/a": 3}


FILES = {f"f{n}": size for n, size in enumerate([5, 50, 500, 5000, 1, 2, 3])}


def test_a_drill_sample_is_repeatable_and_bounded() -> None:
    spec = agent.DrillSpec(seed=42, size_budget=600, max_files=3)
    sample = agent.drill_sample(FILES, spec)
    assert sample == agent.drill_sample(FILES, spec)
    assert len(sample) <= 3
    assert sum(FILES[path] for path in sample) <= 600
    assert "f3" not in sample
    everything = agent.drill_sample(FILES, agent.DrillSpec(size_budget=10**9, max_files=100))
    assert everything == sorted(FILES)


@given(st.integers(0, 2**32), st.integers(0, 6000), st.integers(0, 10))
def test_a_drill_sample_never_exceeds_its_budget(seed: int, budget: int, count: int) -> None:
    sample = agent.drill_sample(FILES, agent.DrillSpec(seed, budget, count))
    assert len(sample) <= count
    assert sum(FILES[path] for path in sample) <= budget
    assert sample == sorted(set(sample))


# -- the destination rules ------------------------------------------------------------------


def restore_policy(root: Path, **raw: Any) -> Any:
    return agent.parse_policy(
        {"repositories": ["/"], "paths": ["/"], "restore_root": str(root), **raw}
    )


def destination_rejection(policy: Any, destination: Path) -> str | None:
    try:
        agent.check_policy(policy, "extract", job(archive="latest", destination=str(destination)))
    except agent.Rejected as rejection:
        return str(rejection.message)
    return None


def test_destinations_inside_the_restore_root(tmp_path: Path) -> None:
    root = tmp_path / "restore"
    (root / "empty").mkdir(parents=True)
    (root / "full").mkdir()
    (root / "full" / "x").write_text("")
    (root / "file").write_text("")
    (root / "out").symlink_to(tmp_path)
    policy = restore_policy(root)
    assert destination_rejection(policy, root / "new" / "deeper") is None
    assert destination_rejection(policy, root / "empty") is None
    assert "outside the restore root" in str(destination_rejection(policy, root))
    assert "outside the restore root" in str(destination_rejection(policy, root / "out" / "x"))
    assert "outside the restore root" in str(destination_rejection(policy, tmp_path / "x"))
    assert "new or empty" in str(destination_rejection(policy, root / "full"))
    assert "must be a directory" in str(destination_rejection(policy, root / "file"))


def test_restore_anywhere_allows_live_places(tmp_path: Path) -> None:
    policy = restore_policy(tmp_path / "restore", restore_anywhere=True)
    assert destination_rejection(policy, tmp_path) is None
    assert "must be a directory" in str(destination_rejection(policy, Path("/etc/hostname")))


def test_the_restore_keys_of_the_policy(tmp_path: Path) -> None:
    policy = restore_policy(tmp_path)
    assert (agent.restore_root(policy), policy.restore_anywhere) == (str(tmp_path), False)
    with pytest.raises(agent.Rejected):
        restore_policy(tmp_path, restore_anywhere="yes")
    with pytest.raises(agent.Rejected):
        agent.parse_policy({"repositories": [], "paths": [], "restore_root": "relative"})


def test_without_a_restore_root_the_default_or_the_users_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent, "DEFAULT_RESTORE_ROOT", str(tmp_path / "var" / "restore"))
    assert agent.restore_root(agent.Policy()) == str(tmp_path / "var" / "restore")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setattr(agent, "DEFAULT_RESTORE_ROOT", str(locked / "restore"))
    monkeypatch.setattr(agent.os, "access", lambda path, mode: path != str(locked))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "share" / "backup-drone" / "restore"
    assert agent.restore_root(agent.Policy()) == str(expected)


def test_a_fresh_destination_never_reuses_a_directory(tmp_path: Path) -> None:
    first = agent.fresh_destination(str(tmp_path / "root"), "nas-1")
    second = agent.fresh_destination(str(tmp_path / "root"), "nas-1")
    assert (first, second) == (str(tmp_path / "root" / "nas-1"), str(tmp_path / "root" / "nas-1.1"))
    assert (tmp_path / "root").stat().st_mode & 0o777 == 0o700


def test_without_a_home_there_is_no_restore_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent, "may_write_at", lambda path: False)
    monkeypatch.setattr(agent.os.path, "expanduser", lambda path: path)
    assert agent.restore_root(agent.Policy()) == ""
    with pytest.raises(agent.Rejected, match="no restore root"):
        agent.check_policy(
            agent.Policy(), "extract", job(archive="latest", destination=str(tmp_path))
        )
    with pytest.raises(OSError, match="no restore root"):
        agent.fresh_destination("", "nas-1")


def test_extract_progress_by_hand() -> None:
    event = {"operation": "extract", "current": 1500, "total": 3_000_000, "path": "a\x1b[2J"}
    assert agent.progress_text(event) == "1.50 kB of 3.00 MB restored  a\\x1b[2J"
