"""Requests the agent refuses: exit 3, a result naming what was wrong, and nothing run at all.

borg is a recording wrapper (named by the policy's ``"borg"``), so every test can show that a
rejected request invoked no borg, not even ``borg --version``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devstack.borg import AGENT_PATH, list_archives
from tests.integration.agent_support import (
    SYSTEM_PYTHON,
    AgentProcess,
    AgentResult,
    RecordingBorg,
    Repo,
    agent_python,
    assert_framing,
    make_recording_borg,
    make_repo,
    run_agent,
    world_readable_dir,
    write_policy,
)

pytestmark = pytest.mark.integration
__all__ = ["agent_python", "world_readable_dir"]  # fixtures, used by name


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """One repository for the whole module: no test here may change it."""
    return make_repo(tmp_path_factory.mktemp("rejections"))


@pytest.fixture
def borg(tmp_path: Path) -> RecordingBorg:
    return make_recording_borg(tmp_path)


def serve(
    python: str,
    operation: str,
    job: dict[str, Any] | bytes,
    repo: Repo,
    policy: Path,
    argv_operation: str | None = None,
) -> AgentResult:
    args = ("serve", *([argv_operation] if argv_operation else []), "--policy", str(policy))
    return run_agent(python, operation, job, repo.env(), args=args)


def open_policy(directory: Path, borg: RecordingBorg, **overrides: Any) -> Path:
    policy = {"repositories": ["/"], "paths": ["/"], "borg": str(borg.path), **overrides}
    return write_policy(directory / "policy.json", **policy)


def assert_rejected(result: AgentResult, field: str, borg: RecordingBorg) -> None:
    assert_framing(result)
    assert result.exit_code == 3, result.events
    assert [event["type"] for event in result.events] == ["hello", "result"]
    assert result.events[0]["borg_version"] == ""  # not even borg --version ran
    assert result.result["ok"] is False
    assert result.result["rc"] == 3
    assert result.result["borg_rc"] is None
    assert result.error["msgid"] == "JobRejected"
    assert result.error["field"] == field
    assert borg.invocations() == []


@pytest.mark.parametrize(
    "ssh_command",
    [
        "create; rm -rf /",
        "create --foo",
        "$(id)",
        "`id`",
        "create\nlist",
        "create\n",
        "",
        " create",
        "create ",
        "'create'",
        "backup",
        "CREATE",
    ],
)
def test_injection_in_the_ssh_command(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path, ssh_command: str
) -> None:
    policy = open_policy(tmp_path, borg)
    result = serve(agent_python, ssh_command, shared_repo.job(), shared_repo, policy)
    assert_rejected(result, "operation", borg)
    assert result.result["operation"] == ""


def test_offsite_needs_the_offsite_key_in_a_policy_file(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path
) -> None:
    job = {
        "protocol": 2,
        "repositories": [str(shared_repo.path)],
        "tool": "rsync",
        "destination": str(tmp_path / "copies"),
    }
    result = serve(agent_python, "offsite", job, shared_repo, open_policy(tmp_path, borg))
    assert_rejected(result, "operation", borg)
    assert "not allowed by this host's policy" in result.error["message"]


def test_ssh_command_differing_from_the_configured_operation(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path
) -> None:
    policy = open_policy(tmp_path, borg)
    result = serve(
        agent_python, "create", shared_repo.job(), shared_repo, policy, argv_operation="list"
    )
    assert_rejected(result, "operation", borg)


INJECTIONS: list[tuple[str, Any, str]] = [
    ("repository", "-x", "repository"),
    ("repository", "--remote-path=sh", "repository"),
    ("repository", "/srv/repo;rm -rf /", "repository"),  # a fine path, outside the policy
    ("repository", "/srv/repo::evil", "repository"),
    ("repository", "/srv/repo@[::1]", "repository"),  # borg would read "::1]" as an archive
    ("repository", "/srv/{now:..}/{now:..}/etc", "repository"),  # borg expands placeholders
    ("repository", "ssh://borg@host/x\nrm", "repository"),
    ("paths", ["relative/path"], "paths[0]"),
    ("paths", ["/ok", "/etc/../root"], "paths[1]"),
    ("paths", ["/data\n--exclude=*"], "paths[0]"),
    ("archive_prefix", "x; rm -rf /", "archive_prefix"),
    ("archive_prefix", "--dry-run", "archive_prefix"),
    ("exclude_patterns", ["ok", "bad\x00nul"], "exclude_patterns[1]"),
    ("exclude_patterns", ["re:(a+)+$"], "exclude_patterns[0]"),  # backtracks for hours
    ("exclude_patterns", ["sh:*a*a*a*ab"], "exclude_patterns[0]"),
    ("exclude_if_present", ["../../etc/passwd"], "exclude_if_present[0]"),
    ("compression", "lz4 --remote-path=sh", "compression"),
    ("keep", {"within": "1d; id"}, "keep.within"),
    ("keep", {"daily": "7"}, "keep.daily"),
    ("lock_wait", "60; id", "lock_wait"),
    ("one_file_system", "yes", "one_file_system"),
    ("borg_rsh", "sh -c 'id > /tmp/pwned'", "borg_rsh"),
    ("borg_rsh", "ssh -o ProxyCommand='id > /tmp/pwned'", "borg_rsh"),
    ("borg_rsh", "/tmp/evil/ssh", "borg_rsh"),
    ("borg_rsh", "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null", "borg_rsh"),
    ("borg_rsh", "ssh -o StrictHostKeyChecking=accept-new", "borg_rsh"),
    ("borg_remote_path", "borg; id", "borg_remote_path"),
    ("borg_remote_path", "$(id)", "borg_remote_path"),
    ("passphrase", ["not", "a", "string"], "passphrase"),
    ("protocol", 3, "protocol"),
    ("steps", ["create"], "steps"),  # only for a sequence
    ("extra_field", "anything", "extra_field"),
]


@pytest.mark.parametrize(("field", "value", "named"), INJECTIONS)
def test_injection_in_job_fields(
    agent_python: str,
    shared_repo: Repo,
    borg: RecordingBorg,
    tmp_path: Path,
    field: str,
    value: Any,
    named: str,
) -> None:
    policy = open_policy(tmp_path, borg, repositories=[str(shared_repo.path)])
    job = shared_repo.job(**{field: value})
    result = serve(agent_python, "create", job, shared_repo, policy)
    assert_rejected(result, named, borg)
    assert shared_repo.passphrase.encode() not in result.stdout


@pytest.mark.parametrize(
    ("policy_overrides", "job_overrides", "field"),
    [
        ({"repositories": ["/srv/elsewhere"]}, {}, "repository"),
        ({"paths": ["/srv/elsewhere"]}, {}, "paths[0]"),
        ({"operations": ["list"]}, {}, "operation"),
    ],
)
def test_policy_rejections(
    agent_python: str,
    shared_repo: Repo,
    borg: RecordingBorg,
    tmp_path: Path,
    policy_overrides: dict[str, Any],
    job_overrides: dict[str, Any],
    field: str,
) -> None:
    policy = open_policy(tmp_path, borg, **policy_overrides)
    result = serve(agent_python, "create", shared_repo.job(**job_overrides), shared_repo, policy)
    assert_rejected(result, field, borg)
    assert "policy" in result.error["message"]


@pytest.mark.parametrize(
    ("job_overrides", "operations", "field"),
    [
        ({"steps": ["create", "create"]}, None, "steps[1]"),
        ({"steps": ["create", "prune; id"]}, None, "steps[1]"),
        ({"steps": []}, None, "steps"),
        ({"steps": None}, None, "steps"),
        ({"protocol": 1}, None, "protocol"),
        ({"keep": None}, None, "keep"),  # prune is a step: it needs a keep rule
        ({}, ["create", "stats"], "steps[1]"),  # prune is not allowed here
        ({}, ["sequence"], "steps[0]"),
    ],
)
def test_sequence_rejections(
    agent_python: str,
    shared_repo: Repo,
    borg: RecordingBorg,
    tmp_path: Path,
    job_overrides: dict[str, Any],
    operations: list[str] | None,
    field: str,
) -> None:
    overrides = {} if operations is None else {"operations": operations}
    policy = open_policy(tmp_path, borg, **overrides)
    job = shared_repo.sequence_job(["create", "prune", "stats"])
    job.update(job_overrides)
    job = {key: value for key, value in job.items() if value is not None}
    result = serve(agent_python, "sequence", job, shared_repo, policy)
    assert_rejected(result, field, borg)
    assert "step" not in result.error
    assert result.result["data"] == {}


def test_a_prefix_does_not_allow_its_siblings(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path
) -> None:
    sibling = shared_repo.path.with_name(shared_repo.path.name + "x")
    policy = open_policy(tmp_path, borg, repositories=[str(shared_repo.path)])
    result = serve(
        agent_python, "list", shared_repo.job(repository=str(sibling)), shared_repo, policy
    )
    assert_rejected(result, "repository", borg)


def test_malformed_policy(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(
        '{"repositories": ["/"], "paths": ["/"], "borg": ' + json.dumps(str(borg.path))
    )
    result = serve(agent_python, "list", shared_repo.job(), shared_repo, policy)
    assert_rejected(result, "policy", borg)
    assert "policy file" in result.error["message"]


@pytest.mark.parametrize(
    "first_line",
    [
        b"\n",
        b"not json at all\n",
        b'{"protocol": 1, "repository": \n',
        b"[1, 2, 3]\n",
        b"\xff\xfe\xfd\n",
        b'{"protocol": 1, "padding": "' + b"x" * (1024 * 1024) + b'"}\n',
    ],
)
def test_unusable_job_lines(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path, first_line: bytes
) -> None:
    result = serve(agent_python, "list", first_line, shared_repo, open_policy(tmp_path, borg))
    assert_rejected(result, "job", borg)


def test_stdin_closed_before_a_job_arrived(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path
) -> None:
    args = ("serve", "--policy", str(open_policy(tmp_path, borg)))
    agent = AgentProcess(agent_python, b"", shared_repo.env(), ssh_command="list", args=args)
    agent.close_stdin()
    assert_rejected(agent.finish(), "job", borg)


def test_a_good_job_through_the_same_wrapper_runs_borg(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path
) -> None:
    """The control for the tests above: the wrapper does record what the agent runs."""
    result = serve(
        agent_python, "list", shared_repo.job(), shared_repo, open_policy(tmp_path, borg)
    )
    assert result.exit_code == 0, result.events
    assert borg.invocations()[0] == ["--version"]
    assert [argv[0] for argv in borg.operations()] == ["list"]
    assert all(shared_repo.passphrase not in word for argv in borg.invocations() for word in argv)


def test_nothing_was_written_to_the_repository(shared_repo: Repo) -> None:
    assert list_archives(shared_repo.path, shared_repo.passphrase, shared_repo.base_dir) == []
    assert not (shared_repo.path / "lock.exclusive").exists()


def test_a_remote_location_without_a_user_reaches_borg_as_written(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path
) -> None:
    """ssh://host[:port]/path without user@ is a borg location too. Port 1 on the loopback
    refuses the connection, so borg fails at once, but it did run with the job's location."""
    location = "ssh://127.0.0.1:1/./repo"
    policy = open_policy(tmp_path, borg, repositories=["ssh://127.0.0.1:1/./"])
    job = shared_repo.job(
        repository=location, borg_rsh="ssh -o BatchMode=yes -o StrictHostKeyChecking=yes"
    )
    result = serve(agent_python, "list", job, shared_repo, policy)
    assert_framing(result)
    assert result.exit_code == 2, result.events
    assert [argv[0] for argv in borg.operations()] == ["list"]
    assert borg.operations()[0][-2:] == ["--", location]


# -- the policy fails closed -------------------------------------------------------------------

# The agent with its default policy path moved to where the test says (the real one is /etc).
AGENT_WITH_DEFAULT_POLICY = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("backup_drone", {agent!r})
agent = importlib.util.module_from_spec(spec)
sys.modules["backup_drone"] = agent
spec.loader.exec_module(agent)
agent.DEFAULT_POLICY_PATH = {policy!r}
sys.exit(agent.main(sys.argv[1:]))
"""


def serve_with_default_policy(
    python: str, repo: Repo, borg: RecordingBorg, directory: Path, policy: Path, user: str | None
) -> AgentResult:
    program = directory / "agent_with_default_policy.py"
    program.write_text(AGENT_WITH_DEFAULT_POLICY.format(agent=str(AGENT_PATH), policy=str(policy)))
    program.chmod(0o644)
    env = {**repo.env(), "PATH": f"{borg.path.parent}:{repo.env()['PATH']}"}  # borg: the wrapper
    agent = AgentProcess(python, repo.job(), env, ssh_command="list", user=user, program=program)
    return agent.finish()


def test_a_default_policy_this_user_may_not_read_refuses_every_job(
    shared_repo: Repo, world_readable_dir: Path
) -> None:
    borg = make_recording_borg(world_readable_dir)
    private = world_readable_dir / "private"
    private.mkdir(mode=0o700)  # root's: nobody may not even look inside
    policy = write_policy(private / "policy.json", repositories=["/srv/only"], paths=["/srv"])
    result = serve_with_default_policy(
        SYSTEM_PYTHON, shared_repo, borg, world_readable_dir, policy, user="nobody"
    )
    assert_rejected(result, "policy", borg)
    assert "Permission denied" in result.error["message"]


def test_a_dangling_default_policy_symlink_refuses_every_job(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.symlink_to(tmp_path / "moved-away.json")
    result = serve_with_default_policy(agent_python, shared_repo, borg, tmp_path, policy, None)
    assert_rejected(result, "policy", borg)


def test_without_a_default_policy_file_the_job_runs(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, tmp_path: Path
) -> None:
    """The control: only a policy file that does not exist means no restriction."""
    absent = tmp_path / "absent.json"
    result = serve_with_default_policy(agent_python, shared_repo, borg, tmp_path, absent, None)
    assert result.exit_code == 0, result.events
    assert [argv[0] for argv in borg.operations()] == ["list"]


# -- symlinks cannot lead out of the policy's prefixes ---------------------------------------------


@pytest.fixture
def link_out(tmp_path: Path) -> Path:
    """tmp/allowed/link -> tmp/outside, which holds a secret."""
    (tmp_path / "allowed").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not for the backup\n")
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "outside")
    return tmp_path


def test_a_path_through_a_symlink_out_of_the_allowed_prefix(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, link_out: Path
) -> None:
    policy = open_policy(
        link_out, borg, repositories=[str(shared_repo.path)], paths=[str(link_out / "allowed")]
    )
    job = shared_repo.job(paths=[str(link_out / "allowed" / "link" / "secret.txt")])
    result = serve(agent_python, "create", job, shared_repo, policy)
    assert_rejected(result, "paths[0]", borg)


def test_a_repository_through_a_symlink_out_of_the_allowed_prefix(
    agent_python: str, shared_repo: Repo, borg: RecordingBorg, link_out: Path
) -> None:
    outside_repo = link_out / "outside" / "repo"
    outside_repo.symlink_to(shared_repo.path)
    policy = open_policy(link_out, borg, repositories=[str(link_out / "allowed")])
    job = shared_repo.job(repository=str(link_out / "allowed" / "link" / "repo"))
    result = serve(agent_python, "list", job, shared_repo, policy)
    assert_rejected(result, "repository", borg)


# -- a key bound to its prefixes and a minimum retention ---------------------------------------


@pytest.mark.parametrize(
    ("job_overrides", "field"),
    [
        ({"archive_prefix": "other-drone"}, "archive_prefix"),
        ({"keep": {"within": "1H"}}, "keep.within"),
        ({"keep": {"within": "7d", "daily": 3}}, "keep.daily"),
    ],
)
def test_a_prune_of_another_prefix_or_below_the_minimum_is_refused(
    agent_python: str,
    shared_repo: Repo,
    borg: RecordingBorg,
    tmp_path: Path,
    job_overrides: dict[str, Any],
    field: str,
) -> None:
    policy = open_policy(
        tmp_path, borg, archive_prefixes=["drone"], min_keep={"within": "7d", "daily": 7}
    )
    job = shared_repo.job(**{"keep": {"within": "7d", "daily": 7}, **job_overrides})
    result = serve(agent_python, "prune", job, shared_repo, policy)
    assert_rejected(result, field, borg)
    sequence = shared_repo.sequence_job(["create", "prune"], **job_overrides)
    assert_rejected(serve(agent_python, "sequence", sequence, shared_repo, policy), field, borg)


# -- borg_rsh cannot reach another port than the location's -------------------------------------


@pytest.mark.parametrize(
    ("location", "borg_rsh"),
    [
        ("ssh://borg@127.0.0.1/./repo", "ssh -p 2222"),
        ("ssh://borg@127.0.0.1:2222/./repo", "ssh -o Port=22"),
    ],
)
def test_a_borg_rsh_port_other_than_the_locations_is_refused(
    agent_python: str,
    shared_repo: Repo,
    borg: RecordingBorg,
    tmp_path: Path,
    location: str,
    borg_rsh: str,
) -> None:
    policy = open_policy(tmp_path, borg, repositories=[location])
    job = shared_repo.job(repository=location, borg_rsh=borg_rsh)
    assert_rejected(serve(agent_python, "list", job, shared_repo, policy), "borg_rsh", borg)
