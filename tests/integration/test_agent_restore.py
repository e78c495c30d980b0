"""Restores and drills against real borg: ``extract`` gives back exactly what was backed up and
writes nowhere but its destination; ``drill`` compares a sample with the live files; ``check``
with its options. Each request runs the way sshd starts the forced command, with a policy file
that names the restore root."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.borg import AGENT_PATH, create_archive, run_borg
from devstack.waiting import wait_until
from tests.integration.agent_support import (
    SYSTEM_PYTHON,
    AgentProcess,
    AgentResult,
    Repo,
    agent_python,
    assert_framing,
    make_recording_borg,
    make_repo,
    process_gone,
    run_agent,
    write_policy,
)

pytestmark = pytest.mark.integration
__all__ = ["agent_python"]  # a fixture, used by name

OTHER_UID, OTHER_GID = 4321, 8765  # ids no user or group of this host has


@dataclass
class RestoreHost:
    """A repository, the live data it backs up, a restore root and the policy naming it."""

    repo: Repo
    root: Path
    policy: Path
    workdir: Path

    def run(self, python: str, operation: str, **fields: Any) -> AgentResult:
        return run_agent(
            python, operation, self.repo.job(**fields), self.repo.env(), args=self.serve_args()
        )

    def serve_args(self) -> tuple[str, ...]:
        return ("serve", "--policy", str(self.policy))

    def backup(self, python: str, paths: list[Path] | None = None) -> str:
        result = self.run(python, "create", paths=[str(p) for p in paths or [self.repo.data]])
        assert result.exit_code == 0, result.events
        return str(result.result["data"]["archive"]["name"])

    def write_policy(self, **extra: Any) -> None:
        write_policy(
            self.policy, repositories=["/"], paths=["/"], restore_root=str(self.root), **extra
        )


@pytest.fixture
def host(tmp_path: Path) -> RestoreHost:
    restore_host = RestoreHost(
        make_repo(tmp_path), tmp_path / "restore", tmp_path / "policy.json", tmp_path
    )
    restore_host.write_policy()
    return restore_host


def make_odd_tree(top: Path) -> Path:
    """Names borg must carry byte for byte, modes, an owner of no name, links and empty dirs."""
    (top / "nested" / "deeper").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "empty").chmod(0o750)
    os.chown(top / "empty", OTHER_UID, OTHER_GID)
    (top / "with space.txt").write_text("space\n")
    (top / "new\nline").write_bytes(b"newline\n")
    with open(os.fsencode(top) + b"/latin-1 caf\xe9 \xff", "wb") as handle:
        handle.write(b"not a UTF-8 name\n")
    (top / "nested" / "deeper" / "file.bin").write_bytes(random.Random(3).randbytes(70000))
    secret = top / "secret.txt"
    secret.write_text("owned by someone else\n")
    secret.chmod(0o640)
    os.chown(secret, OTHER_UID, OTHER_GID)
    script = top / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    os.symlink("nested/deeper/file.bin", top / "link-relative")
    os.symlink("/nowhere/at/all", top / "link-dangling")
    os.link(top / "with space.txt", top / "hard link of space")
    return top


def tree(top: Path) -> dict[bytes, tuple[Any, ...]]:
    """Every entry under ``top``: type, mode, owner, size, mtime, content or link target."""
    entries: dict[bytes, tuple[Any, ...]] = {}
    base = os.fsencode(top)
    for directory, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            status = os.lstat(path)
            kind = stat.S_IFMT(status.st_mode)
            if stat.S_ISLNK(status.st_mode):
                content: Any = os.readlink(path)
            elif stat.S_ISREG(status.st_mode):
                content = hashlib.sha256(Path(os.fsdecode(path)).read_bytes()).hexdigest()
            else:
                content = None
            mtime = status.st_mtime_ns if stat.S_ISREG(status.st_mode) else None
            owner = (status.st_uid, status.st_gid)
            entries[os.path.relpath(path, base)] = (
                kind,
                stat.S_IMODE(status.st_mode),
                owner,
                status.st_size if content is not None else None,
                mtime,
                content,
            )
    return entries


def hard_link_groups(top: Path) -> set[frozenset[bytes]]:
    by_inode: dict[int, set[bytes]] = {}
    base = os.fsencode(top)
    for directory, _dirnames, filenames in os.walk(base):
        for name in filenames:
            path = os.path.join(directory, name)
            by_inode.setdefault(os.lstat(path).st_ino, set()).add(os.path.relpath(path, base))
    return {frozenset(paths) for paths in by_inode.values() if len(paths) > 1}


def inside(destination: str | Path, live: Path) -> Path:
    """Where borg restores the live path ``live`` under ``destination`` (it stores paths
    without their leading slash)."""
    return Path(destination) / str(live).lstrip("/")


def test_extract_latest_gives_back_the_tree_byte_for_byte(
    agent_python: str, host: RestoreHost
) -> None:
    odd = make_odd_tree(host.workdir / "odd")
    archive = host.backup(agent_python, [odd])

    result = host.run(agent_python, "extract", archive="latest")
    assert_framing(result)
    assert result.exit_code == 0, result.events
    data = result.result["data"]
    assert data["archive"] == archive
    assert data["destination"] == str(host.root / archive)
    restored = inside(data["destination"], odd)
    assert tree(restored) == tree(odd)
    assert hard_link_groups(restored) == {frozenset({b"with space.txt", b"hard link of space"})}
    assert (data["files"], data["partial"], data["warnings"]) == (9, False, 0)
    regular = [p for p in tree(odd).values() if p[0] == stat.S_IFREG]
    assert data["bytes"] == sum(entry[3] for entry in regular)
    progress = result.of_type("progress")
    assert progress, "extract reports progress"
    assert all(event["operation"] == "extract" for event in progress)
    assert {"time", "current", "total", "path"} <= progress[-1].keys()
    assert 0 < progress[-1]["current"] <= progress[-1]["total"]

    again = host.run(agent_python, "extract", archive="latest")
    assert again.exit_code == 0, again.events
    assert again.result["data"]["destination"] == str(host.root / f"{archive}.1")


def test_extract_of_some_paths_of_a_named_archive(agent_python: str, host: RestoreHost) -> None:
    odd = make_odd_tree(host.workdir / "odd")
    archive = host.backup(agent_python, [odd])
    destination = host.root / "only-nested"
    wanted = str(odd / "nested").lstrip("/")

    result = host.run(
        agent_python,
        "extract",
        archive=archive,
        restore_paths=[wanted, str(odd / "secret.txt").lstrip("/")],
        destination=str(destination),
    )
    assert result.exit_code == 0, result.events
    restored = inside(destination, odd)
    assert sorted(os.listdir(restored)) == ["nested", "secret.txt"]
    assert tree(restored / "nested") == tree(odd / "nested")
    secret = (restored / "secret.txt").stat()
    assert (secret.st_uid, secret.st_gid, stat.S_IMODE(secret.st_mode)) == (
        OTHER_UID,
        OTHER_GID,
        0o640,
    )
    assert result.result["data"]["files"] == 2


def test_an_archive_of_another_prefix_is_rejected(agent_python: str, host: RestoreHost) -> None:
    for archive in ("other-2026-01-01T00:00:00", "drone-db-2026-01-01T00:00:00", "drone-x"):
        result = host.run(agent_python, "extract", archive=archive)
        assert result.exit_code == 3
        assert result.error["field"] == "archive"


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("dotdot", "destination"),
        ("symlink_out_of_root", "destination"),
        ("outside_root", "destination"),
        ("not_empty", "destination"),
        ("absolute_restore_path", "restore_paths[0]"),
        ("dotdot_restore_path", "restore_paths[0]"),
    ],
)
def test_an_unsafe_restore_is_rejected_and_writes_nothing(
    agent_python: str, host: RestoreHost, case: str, field: str
) -> None:
    recorder = make_recording_borg(host.workdir)
    host.write_policy(borg=str(recorder.path))
    outside = host.workdir / "outside"
    outside.mkdir()
    host.root.mkdir()
    (host.root / "escape").symlink_to(outside)
    (host.root / "taken").mkdir()
    (host.root / "taken" / "file").write_text("here before\n")
    unsafe: dict[str, dict[str, Any]] = {
        "dotdot": {"destination": f"{host.root}/../outside/x"},
        "symlink_out_of_root": {"destination": str(host.root / "escape" / "x")},
        "outside_root": {"destination": str(outside / "x")},
        "not_empty": {"destination": str(host.root / "taken")},
        "absolute_restore_path": {"restore_paths": [str(host.repo.data)]},
        "dotdot_restore_path": {"restore_paths": ["tmp/../etc"]},
    }
    fields = unsafe[case]
    before = sorted(p.name for p in host.root.iterdir())

    result = host.run(agent_python, "extract", archive="latest", **fields)
    assert result.exit_code == 3, result.events
    assert result.error["field"] == field
    assert recorder.invocations() == []  # borg never ran
    assert sorted(p.name for p in host.root.iterdir()) == before
    assert list(outside.iterdir()) == []
    assert (host.root / "taken" / "file").read_text() == "here before\n"


def test_a_policy_may_allow_restoring_anywhere(agent_python: str, host: RestoreHost) -> None:
    host.backup(agent_python)
    host.write_policy(restore_anywhere=True)
    elsewhere = host.workdir / "elsewhere"
    (elsewhere).mkdir()
    (elsewhere / "kept").write_text("a live file\n")
    result = host.run(agent_python, "extract", archive="latest", destination=str(elsewhere))
    assert result.exit_code == 0, result.events
    assert (inside(elsewhere, host.repo.data) / "a.txt").read_text() == "alpha\n" * 100
    assert (elsewhere / "kept").read_text() == "a live file\n"


def test_a_drill_verifies_the_latest_archive_and_cleans_up(
    agent_python: str, host: RestoreHost
) -> None:
    archive = host.backup(agent_python)
    canary = str(host.repo.data / "a.txt")
    result = host.run(agent_python, "drill", drill={"seed": 7, "canaries": [canary]})
    assert_framing(result)
    assert result.exit_code == 0, result.events
    data = result.result["data"]
    sizes = sum(p.stat().st_size for p in host.repo.data.rglob("*") if p.is_file())
    assert data == {
        "archive": archive,
        "files_verified": 3,
        "bytes_verified": sizes,
        "skipped_changed": 0,
        "mismatches": [],
        "mismatch_count": 0,
        "missing_canaries": [],
    }
    assert list(host.root.iterdir()) == []  # the drill's directory is gone


def test_a_drill_keeps_to_its_budget_and_names_missing_canaries(
    agent_python: str, host: RestoreHost
) -> None:
    host.backup(agent_python)
    missing = str(host.workdir / "never-backed-up")
    result = host.run(
        agent_python, "drill", drill={"seed": 1, "max_files": 1, "canaries": [missing]}
    )
    assert result.exit_code == 2
    assert result.error["msgid"] == "DrillCanaryMissing"
    data = result.result["data"]
    assert data["files_verified"] == 1
    assert data["missing_canaries"] == [missing]


def test_files_changed_since_the_archive_are_skipped_not_mismatches(
    agent_python: str, host: RestoreHost
) -> None:
    host.backup(agent_python)
    with (host.repo.data / "a.txt").open("a") as handle:
        handle.write("changed after the backup\n")
    (host.repo.data / "sub" / "b.bin").unlink()
    result = host.run(agent_python, "drill", drill={"seed": 2})
    assert result.exit_code == 0, result.events
    data = result.result["data"]
    assert (data["files_verified"], data["skipped_changed"], data["mismatch_count"]) == (1, 2, 0)


def test_a_live_file_that_differs_with_the_same_size_and_mtime_is_a_mismatch(
    agent_python: str, host: RestoreHost
) -> None:
    host.backup(agent_python)
    target = host.repo.data / "sub" / "random.bin"
    before = target.stat()
    target.write_bytes(bytes(before.st_size))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = host.run(agent_python, "drill", drill={"seed": 3})
    assert result.exit_code == 2
    assert result.error["msgid"] == "DrillMismatch"
    assert "1 restored file(s)" in result.error["message"]
    data = result.result["data"]
    assert data["mismatches"] == [str(target).lstrip("/")]
    logged = [(e["level"], e["msgid"], e["message"]) for e in result.of_type("log")]
    assert ("error", "DrillMismatch", f"{target} differs") in logged
    assert (data["mismatch_count"], data["files_verified"]) == (1, 2)
    assert list(host.root.iterdir()) == []


def flip_a_byte_of_the_largest_segment(repo: Repo) -> None:
    """One byte in the middle of the largest segment file: inside the chunk of the data set's
    largest file, which the segment is mostly made of."""
    segment = max((repo.path / "data" / "0").iterdir(), key=lambda p: p.stat().st_size)
    content = bytearray(segment.read_bytes())
    content[len(content) // 2] ^= 0x01
    segment.write_bytes(bytes(content))


def test_a_flipped_byte_fails_the_drill_and_check_verify_data(
    agent_python: str, host: RestoreHost
) -> None:
    host.backup(agent_python)
    flip_a_byte_of_the_largest_segment(host.repo)

    drill = host.run(agent_python, "drill", drill={"seed": 4})
    assert drill.exit_code == 2, drill.events
    assert drill.result["ok"] is False
    assert drill.error["msgid"] not in ("DrillMismatch", "")
    assert list(host.root.iterdir()) == []

    check = host.run(agent_python, "check", check={"verify_data": True})
    assert check.exit_code == 2, check.events
    data = check.result["data"]
    assert (data["repository_ok"], data["verify_data"], data["partial"]) == (False, True, False)
    assert any("mismatch" in finding or "integrity" in finding for finding in data["findings"])


def test_check_options_reach_borg(agent_python: str, host: RestoreHost) -> None:
    host.backup(agent_python)
    recorder = make_recording_borg(host.workdir)
    host.write_policy(borg=str(recorder.path))

    limited = host.run(agent_python, "check", check={"max_duration": 600})
    assert limited.exit_code == 0, limited.events
    assert limited.result["data"]["partial"] is False  # a tiny repository checks in time
    verified = host.run(agent_python, "check", check={"verify_data": True})
    assert verified.exit_code == 0, verified.events
    assert verified.result["data"]["verify_data"] is True
    checks = [argv for argv in recorder.operations() if argv[0] == "check"]
    assert "--repository-only" in checks[0]
    assert "--max-duration=600" in checks[0]
    assert "--verify-data" not in checks[0]
    assert "--verify-data" in checks[1]
    assert "--repository-only" not in checks[1]

    both = host.run(agent_python, "check", check={"verify_data": True, "max_duration": 60})
    assert both.exit_code == 3
    assert both.error["field"] == "check.max_duration"
    assert len([argv for argv in recorder.operations() if argv[0] == "check"]) == 2


def test_drill_and_check_run_as_steps_of_a_sequence(agent_python: str, host: RestoreHost) -> None:
    job = host.repo.sequence_job(["create", "check", "drill"], drill={"seed": 5})
    result = run_agent(agent_python, "sequence", job, host.repo.env(), args=host.serve_args())
    assert result.exit_code == 0, result.events
    steps = {event["operation"]: event for event in result.of_type("step")}
    assert steps["drill"]["data"]["files_verified"] == 3
    assert steps["check"]["data"]["repository_ok"] is True

    extract_step = host.repo.sequence_job(["create", "extract"], archive="latest")
    rejected = run_agent(
        agent_python, "sequence", extract_step, host.repo.env(), args=host.serve_args()
    )
    assert rejected.exit_code == 3
    assert rejected.error["field"] == "steps[1]"


def test_the_policy_operations_gate_extract_and_drill(agent_python: str, host: RestoreHost) -> None:
    host.write_policy(operations=["create", "list"])
    for operation, fields in (("extract", {"archive": "latest"}), ("drill", {})):
        result = host.run(agent_python, operation, **fields)
        assert result.exit_code == 3
        assert result.error["field"] == "operation"


# -- the coordinator gone while a restore runs ------------------------------------------------

# A borg that runs the real one and, once extract reported progress on a file, holds it there
# (SIGSTOP) until a signal comes, which it passes on: "mid-extract" without a race.
PAUSING_BORG = """#!{python}
import os, signal, subprocess, sys
real, args = {real!r}, sys.argv[1:]
if "extract" not in args:
    os.execv(real, [real] + args)
child = subprocess.Popen([real] + args, stderr=subprocess.PIPE)
def forward(signum, frame):
    os.kill(child.pid, signum)
    os.kill(child.pid, signal.SIGCONT)
signal.signal(signal.SIGINT, forward)
signal.signal(signal.SIGTERM, forward)
paused = False
for line in child.stderr:
    sys.stderr.buffer.write(line)
    sys.stderr.buffer.flush()
    if not paused and b'"msgid": "extract"' in line and b'"info": [' in line:
        os.kill(child.pid, signal.SIGSTOP)
        paused = True
        with open({paused!r}, "w") as marker:
            marker.write(str(child.pid))
code = child.wait()
sys.exit(128 - code if code < 0 else code)
"""


@pytest.fixture
def large_file_host(host: RestoreHost) -> RestoreHost:
    big = host.workdir / "big"
    big.mkdir()
    (big / "large.bin").write_bytes(random.Random(9).randbytes(16 * 1024 * 1024))
    create_archive(
        host.repo.path,
        "drone-2026-01-01T00:00:00",
        [big],
        host.repo.passphrase,
        host.repo.base_dir,
    )
    return host


def lock_is_free(repo: Repo) -> bool:
    probe = run_borg(
        ["with-lock", "--lock-wait=0", str(repo.path), "true"],
        repo.passphrase,
        repo.base_dir,
        check=False,
    )
    return probe.returncode == 0


def test_coordinator_gone_mid_extract_stops_borg_and_reports_a_partial_restore(
    agent_python: str, large_file_host: RestoreHost
) -> None:
    host = large_file_host
    pausing = host.workdir / "pausing-borg"
    paused = host.workdir / "extract-paused"
    pausing.write_text(
        PAUSING_BORG.format(python=SYSTEM_PYTHON, real=shutil.which("borg"), paused=str(paused))
    )
    pausing.chmod(0o755)
    host.write_policy(borg=str(pausing))
    agent = AgentProcess(
        agent_python,
        host.repo.job(archive="latest"),
        host.repo.env(),
        ssh_command="extract",
        args=host.serve_args(),
    )
    try:
        wait_until(paused.exists, "extract to pause mid-file", 60)
        borg_pid = wait_until(lambda: int(paused.read_text() or 0), "the paused borg's pid", 5)
        assert not lock_is_free(host.repo)  # borg holds the repository while it extracts
        agent.close_stdin()  # what sshd does when the coordinator's connection ends
        exit_code = agent.process.wait(timeout=60)
    finally:
        agent.kill()
        if paused.exists() and paused.read_text():
            with_pid = int(paused.read_text())
            if not process_gone(with_pid):
                os.kill(with_pid, signal.SIGKILL)
    assert exit_code == 2
    assert process_gone(borg_pid)
    result = agent.events()[-1]
    assert result["type"] == "result"
    assert result["error"]["msgid"] == "CoordinatorGone"
    data = result["data"]
    assert data["partial"] is True
    assert data["destination"] == str(host.root / "drone-2026-01-01T00:00:00")
    assert lock_is_free(host.repo)


def test_a_restore_by_hand_on_the_host(host: RestoreHost) -> None:
    """What a person runs on the drone: the agent's extract command with a job file."""
    archive = host.backup(sys.executable)
    job_file = host.workdir / "restore.json"
    wanted = str(host.repo.data / "sub").lstrip("/")
    job_file.write_text(json.dumps(host.repo.job(archive="latest", restore_paths=[wanted])))
    by_hand = ["extract", "--job", str(job_file), "--policy", str(host.policy)]
    done = subprocess.run(
        [sys.executable, str(AGENT_PATH), *by_hand],
        capture_output=True,
        text=True,
        env=host.repo.env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    destination = host.root / archive
    assert f"restored {archive} into {destination}: 2 files" in done.stdout
    restored = inside(destination, host.repo.data) / "sub"
    assert tree(restored) == tree(host.repo.data / "sub")
