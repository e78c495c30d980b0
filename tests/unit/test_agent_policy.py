"""The host's policy file: parsing it, and matching jobs against its prefixes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_support import load_agent

agent = load_agent()


def policy(**raw: Any) -> Any:
    return agent.parse_policy({"repositories": ["/srv/backup"], "paths": ["/home"], **raw})


def create_job(
    repository: str = "/srv/backup/laptop", paths: tuple[str, ...] = ("/home/zoe",)
) -> Any:
    return agent.validate_job(
        "create",
        {"protocol": 1, "repository": repository, "archive_prefix": "l", "paths": list(paths)},
    )


def rejected_field(policy_: Any, operation: str, job: Any) -> str:
    with pytest.raises(agent.Rejected) as caught:
        agent.check_policy(policy_, operation, job)
    return str(caught.value.field)


@pytest.mark.parametrize(
    "repository",
    ["/srv/backup", "/srv/backup/", "/srv/backup/laptop", "/srv//backup/./x", "/srv/backup/a/b"],
)
def test_repositories_under_an_allowed_prefix(repository: str) -> None:
    agent.check_policy(policy(), "create", create_job(repository=repository))


@pytest.mark.parametrize("repository", ["/srv/backupx", "/srv", "/srv/back", "/other/backup"])
def test_repositories_outside_are_rejected(repository: str) -> None:
    assert rejected_field(policy(), "create", create_job(repository=repository)) == "repository"


def test_prefixes_compare_whole_components() -> None:
    allowed = agent.parse_policy({"repositories": ["/srv/a"], "paths": ["/srv/a"]})
    assert rejected_field(allowed, "create", create_job("/srv/ab", ("/srv/a",))) == "repository"
    assert rejected_field(allowed, "create", create_job("/srv/a", ("/srv/ab",))) == "paths[0]"


def test_every_path_must_be_allowed() -> None:
    job = create_job(paths=("/home/zoe", "/etc"))
    assert rejected_field(policy(), "create", job) == "paths[1]"
    agent.check_policy(policy(paths=["/home", "/etc"]), "create", job)


def test_root_allows_every_path() -> None:
    agent.check_policy(policy(paths=["/"]), "create", create_job(paths=("/", "/var/lib")))


@pytest.mark.parametrize(
    ("allowed", "repository", "ok"),
    [
        ("ssh://borg@nas/srv/repos", "ssh://borg@nas/srv/repos/laptop", True),
        ("ssh://borg@nas/srv/repos", "borg@nas:/srv/repos/laptop", True),
        ("ssh://borg@nas/srv/repos", "ssh://borg@nas:2222/srv/repos/laptop", False),
        ("ssh://borg@nas/srv/repos", "ssh://root@nas/srv/repos/laptop", False),
        ("ssh://borg@nas/srv/repos", "ssh://borg@nas2/srv/repos/laptop", False),
        ("ssh://borg@nas/srv/repos", "/srv/repos/laptop", False),
        ("borg@nas:repos", "borg@nas:repos/laptop", True),
        ("borg@nas:repos", "borg@nas:/repos/laptop", False),
    ],
)
def test_remote_repositories(allowed: str, repository: str, ok: bool) -> None:
    allowed_policy = agent.parse_policy({"repositories": [allowed], "paths": ["/"]})
    job = create_job(repository=repository)
    if ok:
        agent.check_policy(allowed_policy, "create", job)
    else:
        assert rejected_field(allowed_policy, "create", job) == "repository"


def test_operations_can_be_restricted_but_hello_is_always_allowed() -> None:
    only_create = policy(operations=["create"])
    agent.check_policy(only_create, "create", create_job())
    agent.check_policy(only_create, "hello", agent.validate_job("hello", {"protocol": 1}))
    assert rejected_field(only_create, "list", create_job()) == "operation"


def test_no_policy_file_allows_everything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(agent, "DEFAULT_POLICY_PATH", str(tmp_path / "absent.json"))
    unrestricted = agent.load_policy(None)
    agent.check_policy(unrestricted, "create", create_job("/anywhere", ("/etc",)))


def test_default_policy_file_is_used_when_present(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = tmp_path / "policy.json"
    default.write_text(json.dumps({"repositories": ["/srv"], "paths": ["/home"]}))
    monkeypatch.setattr(agent, "DEFAULT_POLICY_PATH", str(default))
    loaded = agent.load_policy(None)
    assert rejected_field(loaded, "create", create_job("/elsewhere")) == "repository"


def test_explicit_policy_overrides_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = tmp_path / "default.json"
    default.write_text(json.dumps({"repositories": [], "paths": []}))
    explicit = tmp_path / "explicit.json"
    explicit.write_text(
        json.dumps({"repositories": ["/srv"], "paths": ["/home"], "borg": "/opt/borg"})
    )
    monkeypatch.setattr(agent, "DEFAULT_POLICY_PATH", str(default))
    loaded = agent.load_policy(str(explicit))
    assert loaded.borg == "/opt/borg"
    agent.check_policy(loaded, "create", create_job("/srv/x"))


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        json.dumps({"repositories": ["/srv"]}),
        json.dumps({"repositories": ["relative"], "paths": []}),
        json.dumps({"repositories": [], "paths": ["relative"]}),
        json.dumps({"repositories": [], "paths": [], "operations": ["offsite"]}),
        json.dumps({"repositories": [], "paths": [], "borg": "borg"}),
        json.dumps({"repositories": [], "paths": [], "surprise": 1}),
        json.dumps({"repositories": "/srv", "paths": []}),
    ],
)
def test_malformed_policies_are_rejected(tmp_path: Path, content: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(agent.Rejected) as caught:
        agent.load_policy(str(path))
    assert caught.value.field == "policy"


def test_missing_explicit_policy_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(agent.Rejected, match="cannot read the policy file"):
        agent.load_policy(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("allowed", "repository", "ok"),
    [
        # no user: ssh's own default user; only the same spelling of the authority matches
        ("ssh://nas/srv/repos", "ssh://nas/srv/repos/laptop", True),
        ("ssh://nas/srv/repos", "nas:/srv/repos/laptop", True),
        ("ssh://nas/srv/repos", "ssh://borg@nas/srv/repos/laptop", False),
        ("ssh://borg@nas/srv/repos", "ssh://nas/srv/repos/laptop", False),
        ("ssh://nas:2222/srv/repos", "ssh://nas:2222/srv/repos/laptop", True),
        ("ssh://nas:2222/srv/repos", "ssh://nas/srv/repos/laptop", False),
        ("ssh://[fd00::1]/srv", "[fd00::1]:/srv/laptop", True),
        # /./ is relative to the login directory, like user@host:path; it is not /path
        ("ssh://borg@nas/srv", "ssh://borg@nas/./srv/laptop", False),
        ("ssh://borg@nas/./srv", "ssh://borg@nas/srv/laptop", False),
        ("borg@nas:repos", "ssh://borg@nas/./repos/laptop", True),
        ("ssh://borg@nas/./repos", "borg@nas:repos/laptop", True),
        ("ssh://borg@nas/./repos", "borg@nas:./repos/laptop", True),
        # ~/ is borg's base directory on the server (not necessarily the login directory);
        # ~user is that user's home
        ("borg@nas:~/repos", "ssh://borg@nas/~/repos/laptop", True),
        ("ssh://borg@nas/~/repos", "borg@nas:~/repos/laptop", True),
        ("borg@nas:~/repos", "borg@nas:repos/laptop", False),
        ("borg@nas:repos", "borg@nas:~/repos/laptop", False),
        ("borg@nas:~/repos", "borg@nas:~zoe/repos", False),
        ("borg@nas:/home/borg", "borg@nas:~/x", False),
        ("ssh://borg@nas/~zoe", "borg@nas:~zoe/repos", True),
        ("ssh://borg@nas/srv", "ssh://borg@nas/~/srv", False),
    ],
)
def test_remote_repositories_in_every_borg_spelling(
    allowed: str, repository: str, ok: bool
) -> None:
    test_remote_repositories(allowed, repository, ok)


def test_a_placeholder_cannot_leave_an_allowed_prefix() -> None:
    """borg expands {now:FORMAT} in a location (strftime keeps "..") after the policy check."""
    with pytest.raises(agent.Rejected) as caught:
        create_job(repository="/srv/backup/{now:..}/{now:..}/etc")
    assert caught.value.field == "repository"
