"""The agent's ``offsite`` operation against real borg, rclone, rsync and a loopback sshd: each
copy opens with borg from its new place and lists the source's archives; the lock keeps borg
clients out while a copy runs, and a coordinator that goes away leaves no copy running and no
lock behind."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.borg import AGENT_PATH, borg_env, create_archive, list_archives, run_borg
from devstack.sshd import LoopbackDrone, public_key_of
from devstack.waiting import wait_until
from tests.integration.agent_support import (
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
from tests.integration.transport_support import processes_mentioning, write_random_data

pytestmark = pytest.mark.integration
__all__ = ["agent_python"]  # a fixture, used by name

# A copy this slow (about 5 s for the repository below) is still running when the test acts.
SLOW = {"rclone": "--bwlimit=1M", "rsync": "--bwlimit=1000"}
SLOW_REPOSITORY_MEGABYTES = 5
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class PlainSshd(LoopbackDrone):
    """A loopback sshd where the client key is an ordinary login (no forced command): the
    far side of an rsync or sftp copy."""

    def _prepare_files(self) -> None:
        super()._prepare_files()
        self.authorized_keys.write_text(public_key_of(self.client_key) + "\n")

    def _sshd_config(self) -> str:
        forced = "PermitRootLogin forced-commands-only"
        config = super()._sshd_config().replace(forced, "PermitRootLogin prohibit-password")
        return config + f"Subsystem sftp {SFTP_SERVER}\n"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainSshd]:
    server = PlainSshd(tmp_path_factory.mktemp("offsite-sshd"), agent_command=[])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def repo_with_archive(root: Path, megabytes: int = 0) -> Repo:
    repo = make_repo(root)
    if megabytes:
        write_random_data(repo.data, megabytes)
    create_archive(repo.path, "first", [repo.data], repo.passphrase, repo.base_dir)
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return repo_with_archive(tmp_path / "source", megabytes=1)


def offsite_job(repo: Repo, tool: str, destination: str, **fields: Any) -> dict[str, Any]:
    return {
        "protocol": 2,
        "repositories": [str(repo.path)],
        "tool": tool,
        "destination": destination,
        "lock_wait": 1,
        **fields,
    }


def offsite(python: str, job: dict[str, Any], repo: Repo, *args: str) -> AgentResult:
    result = run_agent(python, "offsite", job, repo.env(), args=("serve", *args))
    assert_framing(result)
    return result


def archives_of_copy(path: Path, repo: Repo, base_dir: Path) -> list[str]:
    """The copy opened by borg in its new place, with borg state of its own."""
    env = borg_env(base_dir, repo.passphrase)
    env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
    listing = subprocess.run(
        ["borg", "list", "--json", "--lock-wait=0", "--", str(path)],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    return [archive["name"] for archive in json.loads(listing.stdout)["archives"]]


def source_archives(repo: Repo) -> list[str]:
    return list_archives(repo.path, repo.passphrase, repo.base_dir)


def copied(result: AgentResult) -> dict[str, Any]:
    assert result.exit_code == 0, result.events
    entries = result.result["data"]["repositories"]
    assert len(entries) == 1
    assert entries[0]["verified"] is True
    return dict(entries[0])


def assert_second_copy_sends_only_changes(first: dict[str, Any], second: dict[str, Any]) -> None:
    """borg with-lock rewrites the manifest in a new segment, so a second copy sends that
    segment and borg's index, hints and integrity files: a few small files."""
    assert first["bytes"] > 1_000_000
    assert second["bytes"] * 10 < first["bytes"]
    assert 0 < second["files"] < first["files"]


# -- copies that work --------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["rclone", "rsync"])
def test_a_copy_to_a_local_folder_opens_with_borg_and_a_second_copy_sends_only_changes(
    agent_python: str, repo: Repo, tmp_path: Path, tool: str
) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    options = ["--config=/dev/null"] if tool == "rclone" else []
    job = offsite_job(repo, tool, str(copies), tool_options=options)
    first = copied(offsite(agent_python, job, repo))
    assert first["repository"] == str(repo.path)
    assert first["destination"] == str(copies / "repo")
    assert archives_of_copy(copies / "repo", repo, tmp_path / "reader") == ["first"]
    assert not (copies / "repo" / "lock.exclusive").exists()

    create_archive(repo.path, "second", [repo.data], repo.passphrase, repo.base_dir)
    second_result = offsite(agent_python, job, repo)
    second = copied(second_result)
    assert second_result.result["data"]["bytes"] == second["bytes"]
    assert archives_of_copy(copies / "repo", repo, tmp_path / "reader") == ["first", "second"]

    third = copied(offsite(agent_python, job, repo))
    assert_second_copy_sends_only_changes(first, third)


def test_rclone_over_sftp_to_an_ordinary_account(
    agent_python: str, repo: Repo, tmp_path: Path, sshd: PlainSshd
) -> None:
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[loopback]\n"
        "type = sftp\n"
        f"host = {sshd.host}\n"
        f"port = {sshd.port}\n"
        f"user = {sshd.user}\n"
        f"key_file = {sshd.client_key}\n"
        f"known_hosts_file = {sshd.known_hosts}\n"
    )
    copies = tmp_path / "sftp-copies"
    destination = f"loopback:{copies}"
    job = offsite_job(repo, "rclone", destination, tool_options=[f"--config={config}"])
    first = copied(offsite(agent_python, job, repo))
    assert first["destination"] == f"{destination}/repo"
    assert archives_of_copy(copies / "repo", repo, tmp_path / "reader") == ["first"]
    again = copied(offsite(agent_python, job, repo))
    assert_second_copy_sends_only_changes(first, again)


def test_rclone_over_sftp_refuses_an_unknown_host_key(
    agent_python: str, repo: Repo, tmp_path: Path, sshd: PlainSshd
) -> None:
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[loopback]\ntype = sftp\n"
        f"host = {sshd.host}\nport = {sshd.port}\nuser = {sshd.user}\n"
        f"key_file = {sshd.client_key}\nknown_hosts_file = {sshd.wrong_known_hosts()}\n"
    )
    copies = tmp_path / "never"
    job = offsite_job(repo, "rclone", f"loopback:{copies}", tool_options=[f"--config={config}"])
    result = offsite(agent_python, job, repo)
    assert result.exit_code == 2
    assert result.error["msgid"] == "CopyFailed"
    assert result.error["message"].startswith(f"offsite {repo.path}: rclone exited ")
    assert not copies.exists()


def rsh(sshd: PlainSshd) -> str:
    return (
        f"--rsh=ssh -i {sshd.client_key} -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={sshd.known_hosts} -p {sshd.port}"
    )


def test_rsync_over_ssh_to_an_ordinary_account(
    agent_python: str, repo: Repo, tmp_path: Path, sshd: PlainSshd
) -> None:
    copies = tmp_path / "ssh-copies"
    copies.mkdir()
    destination = f"{sshd.user}@{sshd.host}:{copies}"
    job = offsite_job(repo, "rsync", destination, tool_options=[rsh(sshd), "--compress"])
    first = copied(offsite(agent_python, job, repo))
    assert first["destination"] == f"{destination}/repo"
    assert archives_of_copy(copies / "repo", repo, tmp_path / "reader") == ["first"]
    again = copied(offsite(agent_python, job, repo))
    assert_second_copy_sends_only_changes(first, again)


def test_several_repositories_in_order_and_the_summary_for_a_person(
    agent_python: str, tmp_path: Path
) -> None:
    laptop = repo_with_archive(tmp_path / "laptop")
    nas = repo_with_archive(tmp_path / "nas")
    (tmp_path / "nas" / "repo").rename(tmp_path / "nas" / "nas-repo")
    nas.path = tmp_path / "nas" / "nas-repo"
    copies = tmp_path / "copies"
    copies.mkdir()
    job = offsite_job(laptop, "rsync", str(copies))
    job["repositories"] = [str(laptop.path), str(nas.path)]
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    by_hand = subprocess.run(
        [agent_python, str(AGENT_PATH), "offsite", "--job", str(job_file)],
        env=laptop.env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert by_hand.returncode == 0, by_hand.stderr
    lines = by_hand.stdout.splitlines()
    assert any(line.startswith(f"{laptop.path} -> {copies}/repo: ") for line in lines)
    assert any(line.startswith(f"{nas.path} -> {copies}/nas-repo: ") for line in lines)
    assert lines[-1].startswith("offsite finished in ")
    assert lines[-1].endswith("exit code 0")
    assert archives_of_copy(copies / "nas-repo", nas, tmp_path / "reader") == ["first"]


# -- what protects the copy --------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["rclone", "rsync"])
def test_keep_replaced_moves_what_the_copy_replaces_aside(
    agent_python: str, repo: Repo, tmp_path: Path, tool: str
) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    job = offsite_job(repo, tool, str(copies), keep_replaced=True)
    copied(offsite(agent_python, job, repo))
    (copies / "repo" / "planted").write_text("not in the source")
    copied(offsite(agent_python, job, repo))
    assert not (copies / "repo" / "planted").exists()
    stamps = list((copies / ".replaced" / "repo").iterdir())
    assert len(stamps) == 1  # the run that replaced something; the first replaced nothing
    kept = [path.name for stamp in stamps for path in stamp.rglob("*")]
    assert "planted" in kept
    assert any(name.startswith("index.") for name in kept)  # what borg rewrote


@pytest.mark.parametrize("tool", ["rclone", "rsync"])
def test_more_deletions_than_max_delete_fail_the_copy(
    agent_python: str, repo: Repo, tmp_path: Path, tool: str
) -> None:
    copies = tmp_path / "copies"
    (copies / "repo").mkdir(parents=True)
    for index in range(3):
        (copies / "repo" / f"stray-{index}").write_text("x")
    result = offsite(agent_python, offsite_job(repo, tool, str(copies), max_delete=2), repo)
    assert result.exit_code == 2
    assert result.error["msgid"] == "MaxDeleteExceeded"
    assert "max_delete=2" in result.error["message"]
    assert result.result["data"]["repositories"] == []


def test_a_folder_that_is_no_repository_fails_with_the_repositories_before_it(
    agent_python: str, repo: Repo, tmp_path: Path
) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    (tmp_path / "plain").mkdir()
    job = offsite_job(repo, "rsync", str(copies))
    job["repositories"] = [str(repo.path), str(tmp_path / "plain")]
    result = offsite(agent_python, job, repo)
    assert result.exit_code == 2
    assert result.error["msgid"] == "NotARepository"
    assert str(tmp_path / "plain") in result.error["message"]
    assert [e["repository"] for e in result.result["data"]["repositories"]] == [str(repo.path)]


# -- the lock ----------------------------------------------------------------------------------


@pytest.fixture
def big_repo(tmp_path: Path) -> Repo:
    return repo_with_archive(tmp_path / "big", SLOW_REPOSITORY_MEGABYTES)


def start_slow_copy(python: str, repo: Repo, tool: str, copies: Path) -> AgentProcess:
    copies.mkdir(exist_ok=True)
    job = offsite_job(repo, tool, str(copies), tool_options=[SLOW[tool]])
    agent = AgentProcess(python, job, repo.env(), ssh_command="offsite")
    progress = agent.wait_for_event("progress")
    assert (progress["repository"], progress["phase"]) == (str(repo.path), "copy")
    return agent


@pytest.mark.parametrize("tool", ["rclone", "rsync"])
def test_borg_waits_for_the_lock_while_a_copy_runs(
    agent_python: str, big_repo: Repo, tmp_path: Path, tool: str
) -> None:
    at_copy_time = source_archives(big_repo)
    agent = start_slow_copy(agent_python, big_repo, tool, tmp_path / "copies")
    blocked = run_borg(
        ["create", "--lock-wait=1", "--", f"{big_repo.path}::during", str(big_repo.data)],
        big_repo.passphrase,
        big_repo.base_dir,
        check=False,
    )
    assert blocked.returncode == 2
    assert "lock" in blocked.stderr.lower()
    result = agent.finish()
    assert result.exit_code == 0, result.events
    reader = tmp_path / "reader"
    assert archives_of_copy(tmp_path / "copies" / "repo", big_repo, reader) == at_copy_time
    assert source_archives(big_repo) == at_copy_time


@pytest.mark.parametrize("tool", ["rclone", "rsync"])
def test_a_coordinator_gone_mid_copy_stops_the_tool_and_leaves_no_lock(
    agent_python: str, big_repo: Repo, tmp_path: Path, tool: str
) -> None:
    agent = start_slow_copy(agent_python, big_repo, tool, tmp_path / "copies")
    tools = processes_mentioning(str(big_repo.path), tool)
    holders = processes_mentioning(str(big_repo.path), "borg")
    assert tools
    assert holders
    agent.close_stdin()
    exit_code = agent.process.wait(timeout=60)
    assert exit_code == 2
    assert all(process_gone(pid) for pid in tools + holders)
    assert processes_mentioning(str(big_repo.path), tool) == []
    assert processes_mentioning(str(big_repo.path), "borg") == []
    # no lock left: borg gets in at once, without break-lock
    listing = run_borg(
        ["list", "--lock-wait=0", "--", str(big_repo.path)],
        big_repo.passphrase,
        big_repo.base_dir,
    )
    assert "first" in listing.stdout
    result = wait_until(lambda: agent.events()[-1]["type"] == "result", "the result line", 10)
    assert result
    final = agent.events()[-1]
    assert final["error"]["msgid"] == "CoordinatorGone"
    assert final["data"]["repositories"] == []


def test_a_repository_locked_by_another_borg_fails_with_lock_timeout(
    agent_python: str, repo: Repo, tmp_path: Path
) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    # another holder of the lock: `cat` keeps it until its stdin closes
    holder = subprocess.Popen(
        ["borg", "with-lock", "--", str(repo.path), "cat"],
        stdin=subprocess.PIPE,
        env=borg_env(repo.base_dir, None),
    )
    try:
        wait_until((repo.path / "lock.exclusive").exists, "the other borg to hold the lock", 30)
        result = offsite(agent_python, offsite_job(repo, "rsync", str(copies)), repo)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert result.exit_code == 2
    assert result.error["msgid"] == "LockTimeout"
    assert result.error["message"].startswith(f"offsite {repo.path}: ")
    assert result.result["data"]["repositories"] == []
    assert os.listdir(copies) == []


# -- rejections: exit 3 and nothing ran --------------------------------------------------------


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    path = tmp_path / "copies"
    path.mkdir()
    return path


def rejection_cases(repo: Repo, copies: Path) -> dict[str, tuple[dict[str, Any], str]]:
    other = copies.parent / "other"
    return {
        "destination outside the policy": (
            offsite_job(repo, "rsync", str(other)),
            "destination",
        ),
        "repository outside the policy": (
            {**offsite_job(repo, "rsync", str(copies)), "repositories": ["/srv/borg/elsewhere"]},
            "repositories[0]",
        ),
        "option not on the allow-list": (
            offsite_job(repo, "rclone", str(copies), tool_options=["--size-only"]),
            "tool_options[0]",
        ),
        "dot-dot in the destination": (
            offsite_job(repo, "rsync", f"{copies}/../other"),
            "destination",
        ),
        "two repositories, one folder name": (
            {
                **offsite_job(repo, "rsync", str(copies)),
                "repositories": [str(repo.path), str(repo.path.parent / "x" / "repo")],
            },
            "repositories[1]",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "destination outside the policy",
        "repository outside the policy",
        "option not on the allow-list",
        "dot-dot in the destination",
        "two repositories, one folder name",
        "no offsite key in the policy",
    ],
)
def test_rejected_offsite_jobs_run_nothing(
    agent_python: str, repo: Repo, copies: Path, tmp_path: Path, case: str
) -> None:
    borg = make_recording_borg(tmp_path)
    policy: dict[str, Any] = {"repositories": ["/"], "paths": ["/"], "borg": str(borg.path)}
    if case != "no offsite key in the policy":
        policy["offsite"] = {
            "repositories": [str(repo.path.parent)],
            "destinations": [str(copies)],
        }
    policy_file = write_policy(tmp_path / "policy.json", **policy)
    job, field = rejection_cases(repo, copies).get(
        case, (offsite_job(repo, "rsync", str(copies)), "operation")
    )
    result = offsite(agent_python, job, repo, "--policy", str(policy_file))
    assert result.exit_code == 3
    assert [event["type"] for event in result.events] == ["hello", "result"]
    assert result.error["field"] == field
    assert "not allowed" in result.error["message"] or field != "operation"
    assert borg.invocations() == []
    assert os.listdir(copies) == []


def test_an_allowed_job_under_the_same_policy_runs(
    agent_python: str, repo: Repo, copies: Path, tmp_path: Path
) -> None:
    policy = write_policy(
        tmp_path / "policy.json",
        repositories=[],
        paths=[],
        offsite={"repositories": [str(repo.path.parent)], "destinations": [str(copies)]},
    )
    job = offsite_job(repo, "rsync", str(copies))
    copied(offsite(agent_python, job, repo, "--policy", str(policy)))
