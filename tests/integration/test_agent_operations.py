"""The agent's operations against real borg, started the way sshd starts a forced command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devstack.borg import AGENT_PATH, borg_json, create_archive, list_archives, run_borg
from devstack.waiting import wait_until
from tests.integration.agent_support import (
    PASSPHRASE,
    SYSTEM_PYTHON,
    AgentProcess,
    Repo,
    agent_python,
    assert_framing,
    lines_without_progress,
    load_agent,
    make_recording_borg,
    repo,
    run_agent,
    wait_for_next_second,
    write_policy,
)

pytestmark = pytest.mark.integration
__all__ = ["agent_python", "repo"]  # fixtures, used by name


def make_archive(repo: Repo, name: str, timestamp: str = "") -> None:
    create_archive(repo.path, name, [repo.data], repo.passphrase, repo.base_dir, timestamp)


def borg_info(repo: Repo, target: str) -> dict[str, Any]:
    return borg_json(["info", "--json", target], repo.passphrase, repo.base_dir)


def borg_would_prune(repo: Repo, *options: str) -> set[str]:
    """The archives borg itself would prune (a dry run changes nothing)."""
    args = ["prune", "--dry-run", "--list", *options, str(repo.path)]
    output = run_borg(args, repo.passphrase, repo.base_dir).stderr
    return {line.split()[2] for line in output.splitlines() if line.startswith("Would prune:")}


def run_by_hand(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(AGENT_PATH), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_hello(agent_python: str, repo: Repo) -> None:
    result = run_agent(agent_python, "hello", {"protocol": 1}, repo.env())
    assert_framing(result)
    assert result.exit_code == 0
    hello = result.events[0]
    assert hello["protocol"] == 1  # what the job asked for: an older coordinator keeps working
    assert hello["protocols"] == [1, 2]
    assert hello["operation"] == "hello"
    assert hello["borg_version"] == "1.2.4"
    assert hello["agent_version"] == "1.3.0"
    data = result.result["data"]
    assert set(data) == {
        "agent_version",
        "borg_version",
        "python_version",
        "hostname",
        "protocol",
        "protocols",
    }
    assert data["python_version"] == hello["python_version"]
    assert result.result["ok"] is True


def test_create_makes_an_archive_matching_borg_info(agent_python: str, repo: Repo) -> None:
    result = run_agent(agent_python, "create", repo.job(), repo.env())
    assert_framing(result)
    assert result.exit_code == 0, result.events
    outcome = result.result
    assert (outcome["ok"], outcome["rc"], outcome["borg_rc"], outcome["warnings"]) == (
        True,
        0,
        0,
        0,
    )
    archive = outcome["data"]["archive"]
    assert archive["name"].startswith("drone-")
    assert list_archives(repo.path, repo.passphrase, repo.base_dir) == [archive["name"]]

    info = borg_info(repo, f"{repo.path}::{archive['name']}")["archives"][0]
    assert (archive["id"], archive["nfiles"]) == (info["id"], info["stats"]["nfiles"])
    # borg create's own figures count the archive's metadata stream too; borg info's do not.
    metadata = archive["original_size"] - info["stats"]["original_size"]
    assert 0 <= metadata < 4096
    cache = borg_info(repo, str(repo.path))["cache"]["stats"]
    assert outcome["data"]["repository"] == {
        "total_size": cache["total_size"],
        "compressed_size": cache["total_csize"],
        "deduplicated_size": cache["unique_csize"],
        "total_chunks": cache["total_chunks"],
        "unique_chunks": cache["total_unique_chunks"],
    }
    assert result.of_type("progress"), "create reports progress"


def test_a_second_create_deduplicates(agent_python: str, repo: Repo) -> None:
    first = run_agent(agent_python, "create", repo.job(), repo.env()).result["data"]["archive"]
    wait_for_next_second()
    second = run_agent(agent_python, "create", repo.job(), repo.env()).result["data"]["archive"]
    assert second["name"] != first["name"]
    assert second["original_size"] == first["original_size"]
    assert second["deduplicated_size"] < first["deduplicated_size"] / 20


def test_archives_named_to_the_second_by_an_older_agent_do_not_block_a_create(
    agent_python: str, repo: Repo
) -> None:
    # Names an older agent would give in the next few seconds: a create never collides with them.
    now = int(time.time())
    for second in range(now + 1, now + 4):
        stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        make_archive(repo, f"drone-{stamp}")
    wait_until(lambda: int(time.time()) >= now + 1, "the first taken second", 5, 0.02)
    result = run_agent(agent_python, "create", repo.job(), repo.env())
    assert_framing(result)
    assert result.exit_code == 0, result.events
    assert len(list_archives(repo.path, repo.passphrase, repo.base_dir)) == 4


def second_of(archive_name: str) -> str:
    """``drone-YYYY-MM-DDTHH:MM:SS.ffffff`` -> ``YYYY-MM-DDTHH:MM:SS``."""
    return archive_name.split("-", 1)[1].rsplit(".", 1)[0]


def test_two_creates_in_the_same_second_both_succeed(agent_python: str, repo: Repo) -> None:
    """Both start together (the second waits for the first's lock); until they happened to
    name their archives in the same second, try again."""
    for _attempt in range(5):
        wait_for_next_second()
        agents = [
            AgentProcess(agent_python, repo.job(lock_wait=120), repo.env(), ssh_command="create")
            for _ in range(2)
        ]
        results = [agent.finish() for agent in agents]
        assert [result.exit_code for result in results] == [0, 0], [r.events for r in results]
        names = [result.result["data"]["archive"]["name"] for result in results]
        assert names[0] != names[1]
        if second_of(names[0]) == second_of(names[1]):
            break
    else:
        pytest.fail("the two creates never named their archives in the same second")
    assert set(names) <= set(list_archives(repo.path, repo.passphrase, repo.base_dir))


def test_odd_file_names_are_backed_up_and_listed(
    agent_python: str, repo: Repo, tmp_path: Path
) -> None:
    odd = repo.data / "odd"
    odd.mkdir()
    names = [b"with space", b"new\nline", b"caf\xe9 latin-1", b"-leading-dash", b"quote'\"$(id)"]
    for name in names:
        with open(os.fsencode(odd) + b"/" + name, "wb") as handle:
            handle.write(name)
    result = run_agent(agent_python, "create", repo.job(paths=[str(odd)]), repo.env())
    assert_framing(result)
    assert result.exit_code == 0, result.events
    assert result.result["data"]["archive"]["nfiles"] == len(names)
    archive = f"{repo.path}::{result.result['data']['archive']['name']}"

    listing = run_borg(["list", "--json-lines", archive], repo.passphrase, repo.base_dir).stdout
    listed = {json.loads(line)["path"].rsplit("/", 1)[1] for line in listing.splitlines()}
    # borg 1.2 lists an undecodable byte as "?"; the exact bytes are checked by extracting.
    assert listed == {
        "odd",
        "with space",
        "new\nline",
        "caf? latin-1",
        "-leading-dash",
        "quote'\"$(id)",
    }
    restore = tmp_path / "restore"
    restore.mkdir()
    subprocess.run(
        ["borg", "extract", archive],
        cwd=restore,
        env=repo.env(passphrase=repo.passphrase),
        check=True,
        capture_output=True,
        timeout=60,
    )
    restored = os.fsencode(restore) + b"/" + os.fsencode(odd).lstrip(b"/")
    assert sorted(os.listdir(restored)) == sorted(names)
    for name in names:
        with open(restored + b"/" + name, "rb") as handle:
            assert handle.read() == name


def test_stats_counts_only_the_prefix(agent_python: str, repo: Repo) -> None:
    for name in ("drone-2024-01-01T00:00:00", "drone-2024-01-02T00:00:00", "other-2024-01-03"):
        make_archive(repo, name, timestamp=name.split("-", 1)[1][:10] + "T00:00:00")
    result = run_agent(agent_python, "stats", repo.job(), repo.env())
    assert result.exit_code == 0, result.events
    data = result.result["data"]
    assert data["archive_count"] == 2
    last = {"name": "drone-2024-01-02T00:00:00", "time": "2024-01-02T00:00:00.000000"}
    assert data["last_archive"] == last
    cache = borg_info(repo, str(repo.path))["cache"]["stats"]
    totals = (cache["total_size"], cache["total_csize"], cache["unique_csize"])
    assert (data["total_size"], data["compressed_size"], data["deduplicated_size"]) == totals
    everything = run_agent(agent_python, "stats", repo.job(archive_prefix=None), repo.env())
    assert everything.result["data"]["archive_count"] == 3
    assert everything.result["data"]["last_archive"]["name"] == "other-2024-01-03"


def test_stats_of_an_empty_repository(agent_python: str, repo: Repo) -> None:
    data = run_agent(agent_python, "stats", repo.job(), repo.env()).result["data"]
    assert data["archive_count"] == 0
    assert data["last_archive"] is None


def test_stats_says_the_encryption_mode_and_the_key_file_of_a_keyfile_repository(
    agent_python: str, repo: Repo, tmp_path: Path
) -> None:
    repokey = run_agent(agent_python, "stats", repo.job(), repo.env()).result["data"]
    assert repokey["encryption"] == {"mode": "repokey-blake2"}
    keyfile_repo = tmp_path / "keyfile-repo"
    run_borg(
        ["init", "--encryption=keyfile-blake2", "--", str(keyfile_repo)], PASSPHRASE, repo.base_dir
    )
    job = repo.job(repository=str(keyfile_repo))
    encryption = run_agent(agent_python, "stats", job, repo.env()).result["data"]["encryption"]
    assert encryption["mode"] == "keyfile-blake2"
    keys = repo.base_dir / ".config" / "borg" / "keys"
    assert Path(encryption["keyfile"]).parent == keys
    assert Path(encryption["keyfile"]).is_file()


def test_list(agent_python: str, repo: Repo) -> None:
    for name in ("drone-2024-01-01T00:00:00", "drone-db-2024-01-01T00:00:00", "other-2024"):
        make_archive(repo, name, timestamp="2024-01-01T00:00:00")
    result = run_agent(agent_python, "list", repo.job(), repo.env())
    assert result.exit_code == 0, result.events
    archives = result.result["data"]["archives"]
    assert [a["name"] for a in archives] == ["drone-2024-01-01T00:00:00"]
    assert result.result["data"]["archive_count"] == 1
    assert set(archives[0]) == {"name", "id", "time"}
    everything = run_agent(agent_python, "list", repo.job(archive_prefix=None), repo.env())
    assert len(everything.result["data"]["archives"]) == 3


def test_prune_follows_borgs_rules_and_spares_others(agent_python: str, repo: Repo) -> None:
    # One archive a day at noon from Fri 2024-01-05 to Wed 01-10, and a later one on 01-10.
    ours = [f"2024-01-{day:02d}T12:00:00" for day in range(5, 11)] + ["2024-01-10T13:00:00"]
    for stamp in ours:
        make_archive(repo, f"drone-{stamp}", timestamp=stamp)
    # Another drone's archives, one of them under a longer prefix that "drone-*" would match.
    others = ["drone-db-2024-01-02T12:00:00", "other-2024-01-03T12:00:00"]
    for name in others:
        make_archive(repo, name, timestamp="2024-01-02T12:00:00")
    would_prune = borg_would_prune(
        repo, "--glob-archives=drone-2024-*", "--keep-daily=3", "--keep-weekly=1"
    )

    result = run_agent(agent_python, "prune", repo.job(keep={"daily": 3, "weekly": 1}), repo.env())
    assert_framing(result)
    assert result.exit_code == 0, result.events
    data = result.result["data"]
    # Daily: the newest of 01-10, 01-09 and 01-08; weekly: the newest of the week before (Sun
    # 01-07). Pruned: 01-10 at noon, 01-06 and 01-05.
    kept = [f"drone-2024-01-{day}" for day in ("10T13", "09T12", "08T12", "07T12")]
    kept = [f"{name}:00:00" for name in kept]
    assert data["kept"] == kept
    assert set(data["pruned"]) == {f"drone-{stamp}" for stamp in ours} - set(kept)
    assert set(data["pruned"]) == would_prune
    assert (data["kept_count"], data["pruned_count"]) == (len(kept), len(data["pruned"]))
    assert isinstance(data["compact"]["freed_bytes"], int)
    remaining = list_archives(repo.path, repo.passphrase, repo.base_dir)
    assert sorted(remaining) == sorted(kept + others)


def test_check_of_a_healthy_repository(agent_python: str, repo: Repo) -> None:
    run_agent(agent_python, "create", repo.job(), repo.env())
    result = run_agent(agent_python, "check", repo.job(), repo.env())
    assert result.exit_code == 0, result.events
    assert result.result["data"] == {
        "findings": [],
        "finding_count": 0,
        "repository_ok": True,
        "verify_data": False,
        "partial": False,
    }


def test_check_reports_a_damaged_repository(agent_python: str, repo: Repo) -> None:
    run_agent(agent_python, "create", repo.job(), repo.env())
    biggest = max((repo.path / "data" / "0").iterdir(), key=lambda p: p.stat().st_size)
    damaged = bytearray(biggest.read_bytes())
    damaged[60:80] = bytes(b ^ 0xFF for b in damaged[60:80])
    biggest.write_bytes(bytes(damaged))
    result = run_agent(agent_python, "check", repo.job(), repo.env())
    assert_framing(result)
    assert result.exit_code == 2
    assert result.result["ok"] is False
    data = result.result["data"]
    assert data["repository_ok"] is False
    assert any("integrity" in finding or "mismatch" in finding for finding in data["findings"])
    assert result.error["msgid"] == "CheckFoundProblems"


def test_human_mode_prints_a_readable_summary(repo: Repo, tmp_path: Path) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(repo.job(), indent=2))
    completed = run_by_hand("create", "--job", str(job_file), env=repo.env())
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("backup-drone 1.3.0 on ")
    assert any(line.startswith("archive drone-") and " files, " in line for line in lines)
    assert lines[-1].startswith("create finished in ")
    assert repo.passphrase not in completed.stdout + completed.stderr


def test_human_mode_with_the_hosts_passphrase_and_json(repo: Repo, tmp_path: Path) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(repo.job(passphrase=None)))
    env = repo.env(passphrase=repo.passphrase)
    completed = run_by_hand("list", "--job", str(job_file), "--json", env=env)
    assert completed.returncode == 0, completed.stderr
    events = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [e["type"] for e in events] == ["hello", "result"]
    assert events[-1]["data"] == {"archives": [], "archive_count": 0}


def test_human_mode_rejects_a_bad_job_file(repo: Repo, tmp_path: Path) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(repo.job(paths=["relative"])))
    completed = run_by_hand("create", "--job", str(job_file), env=repo.env())
    assert completed.returncode == 3
    assert "FAILED: JobRejected (paths[0]): must be an absolute path" in completed.stdout


def test_help() -> None:
    completed = run_by_hand("--help", env={})
    assert completed.returncode == 0
    assert "serve" in completed.stdout
    assert "Exit codes" in completed.stdout


# -- protocol 2: a scheduled backup as one sequence -----------------------------------------------


def borg_list_count(repo: Repo, prefix: str) -> int:
    """How many archives `borg list --glob-archives` shows (it hides checkpoints)."""
    glob = f"--glob-archives={prefix}-[0-9][0-9][0-9][0-9]-*"
    listing = borg_json(["list", "--json", glob, str(repo.path)], repo.passphrase, repo.base_dir)
    return len(listing["archives"])


def test_hello_speaks_protocol_2_when_asked(agent_python: str, repo: Repo) -> None:
    result = run_agent(agent_python, "hello", {"protocol": 2}, repo.env())
    assert result.events[0]["protocol"] == result.result["data"]["protocol"] == 2


def test_a_scheduled_backup_is_one_session(agent_python: str, repo: Repo, tmp_path: Path) -> None:
    borg = make_recording_borg(tmp_path)
    policy = write_policy(
        tmp_path / "policy.json", repositories=["/"], paths=["/"], borg=str(borg.path)
    )
    args = ("serve", "--policy", str(policy))
    for stamp in ("2024-01-01T00:00:00", "2024-01-02T00:00:00"):
        make_archive(repo, f"drone-{stamp}", timestamp=stamp)
    # Newer than anything: prune keeps it as a checkpoint, borg list hides it.
    make_archive(repo, "drone-2030-01-01T00:00:00.checkpoint", timestamp="2030-01-01T00:00:00")
    run_agent(agent_python, "hello", {"protocol": 2}, repo.env(), args=args)  # caches the version
    probed = len(borg.invocations())

    job = repo.sequence_job(["create", "prune", "stats"], keep={"daily": 2})
    result = run_agent(agent_python, "sequence", job, repo.env(), args=args)
    assert_framing(result)
    assert result.exit_code == 0, result.events
    assert lines_without_progress(result) == [
        ("hello", "sequence"),
        ("step", "create"),
        ("step", "prune"),
        ("step", "stats"),
        ("result", "sequence"),
    ]
    assert result.events[0]["protocol"] == 2
    assert result.events[0]["steps"] == ["create", "prune", "stats"]
    assert all(event["operation"] == "create" for event in result.of_type("progress"))
    # One borg per command, no `borg --version`: stats after prune runs borg info only.
    assert borg.commands()[probed:] == ["create", "prune", "compact", "info"]

    create, prune, stats = result.of_type("step")
    assert all(
        (step["ok"], step["rc"], step["borg_rc"]) == (True, 0, 0) for step in (create, prune)
    )
    new_archive = create["data"]["archive"]["name"]
    assert prune["data"]["pruned"] == ["drone-2024-01-01T00:00:00"]
    assert stats["data"]["archive_count"] == borg_list_count(repo, "drone") == 2
    assert stats["data"]["last_archive"]["name"] == new_archive
    outcome = result.result
    assert (outcome["ok"], outcome["rc"], outcome["borg_rc"]) == (True, 0, 0)
    assert outcome["data"] == {"completed": ["create", "prune", "stats"]}
    # Exactly what a standalone stats (borg info + borg list) says.
    standalone = run_agent(agent_python, "stats", repo.job(), repo.env(), args=args)
    assert standalone.result["data"] == stats["data"]


def test_a_step_with_warnings_does_not_stop_the_sequence(agent_python: str, repo: Repo) -> None:
    job = repo.sequence_job(["create", "list"], paths=[str(repo.data), str(repo.data / "gone")])
    result = run_agent(agent_python, "sequence", job, repo.env())
    assert_framing(result)
    assert result.exit_code == 1, result.events
    create, listing = result.of_type("step")
    assert (create["ok"], create["rc"], create["borg_rc"]) == (True, 1, 1)
    assert create["warnings"] >= 1
    assert (listing["ok"], listing["rc"], listing["warnings"]) == (True, 0, 0)
    assert [a["name"] for a in listing["data"]["archives"]] == [create["data"]["archive"]["name"]]
    logs = result.of_type("log")
    assert logs
    assert all(log["step"] == "create" for log in logs)
    outcome = result.result
    assert (outcome["ok"], outcome["rc"], outcome["borg_rc"]) == (True, 1, 1)
    assert outcome["warnings"] == create["warnings"]


def test_a_sequence_by_hand_prints_each_steps_summary(repo: Repo, tmp_path: Path) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(repo.sequence_job(["create", "stats"]), indent=2))
    completed = run_by_hand("sequence", "--job", str(job_file), env=repo.env())
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[1] == "steps: create, stats"
    assert any(line.startswith("archive drone-") for line in lines)
    assert any(line.startswith("create finished in ") for line in lines)
    assert "1 archives, " in completed.stdout
    assert any(line.startswith("stats finished in ") for line in lines)
    assert lines[-2:] == [
        "completed: create, stats",
        lines[-1],
    ]
    assert lines[-1].startswith("sequence finished in ")
    assert lines[-1].endswith("exit code 0")


def test_the_documented_forced_command_runs_a_scheduled_backup(repo: Repo, tmp_path: Path) -> None:
    """`/usr/bin/python3 -I AGENT serve --policy FILE`, as docs/security.md shows it: isolated
    mode ignores PYTHON* variables (a sitecustomize on PYTHONPATH would break the agent)."""
    injected = tmp_path / "python-injection"
    injected.mkdir()
    (injected / "sitecustomize.py").write_text("raise SystemExit('PYTHONPATH was used')\n")
    policy = write_policy(
        tmp_path / "policy.json",
        repositories=[str(repo.path)],
        paths=[str(repo.data)],
        archive_prefixes=["drone"],
        min_keep={"daily": 7},
    )
    agent = AgentProcess(
        SYSTEM_PYTHON,
        repo.sequence_job(["create", "prune", "stats"]),
        {**repo.env(), "PYTHONPATH": str(injected)},
        ssh_command="sequence",
        args=("serve", "--policy", str(policy)),
        python_options=("-I",),
    )
    result = agent.finish()
    assert_framing(result)
    assert result.exit_code == 0, (result.events, result.stderr)
    assert result.result["data"] == {"completed": ["create", "prune", "stats"]}


# -- min_keep: what the policy accepts keeps at least what the minimum keeps, by borg's own rules --

MIN_KEEP_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"daily": 5}, {"hourly": 3, "daily": 5}),
    ({"within": "2d"}, {"within": "3d"}),
    ({"daily": 3, "weekly": 2}, {"daily": 4, "weekly": 2, "monthly": 1}),
    ({"within": "1d", "daily": 4}, {"within": "24H", "hourly": 2, "daily": 4, "yearly": 1}),
]


def keep_options(keep: dict[str, Any]) -> list[str]:
    return [f"--keep-{rule}={value}" for rule, value in keep.items()]


def test_a_prune_the_policy_accepts_keeps_what_min_keep_keeps(repo: Repo) -> None:
    """Archives every 13 hours over ten days; borg's own dry run decides what each rule set
    keeps."""
    now = int(time.time())
    for step in range(18):
        stamp = datetime.fromtimestamp(now - step * 13 * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        make_archive(repo, f"drone-{stamp}", timestamp=stamp)
    agent = load_agent()
    for minimum, keep in MIN_KEEP_CASES:
        policy = agent.parse_policy({"repositories": ["/"], "paths": ["/"], "min_keep": minimum})
        job = agent.validate_job("prune", repo.job(protocol=2, keep=keep))
        agent.check_policy(policy, "prune", job)  # accepted
        pruned_by_minimum = borg_would_prune(repo, *keep_options(minimum))
        pruned_by_job = borg_would_prune(repo, *keep_options(keep))
        assert pruned_by_job <= pruned_by_minimum, (minimum, keep)
