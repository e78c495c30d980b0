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
        json.dumps({"repositories": [], "paths": [], "operations": ["delete"]}),
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


# -- an unreadable default policy refuses every job ----------------------------------------------


def test_a_dangling_default_policy_symlink_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = tmp_path / "policy.json"
    default.symlink_to(tmp_path / "gone.json")
    monkeypatch.setattr(agent, "DEFAULT_POLICY_PATH", str(default))
    with pytest.raises(agent.Rejected) as caught:
        agent.load_policy(None)
    assert caught.value.field == "policy"


def test_a_default_policy_that_cannot_be_looked_up_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only ENOENT means "no policy"; here a path component is a file (ENOTDIR)."""
    (tmp_path / "backup-drone").write_text("not a directory")
    monkeypatch.setattr(agent, "DEFAULT_POLICY_PATH", str(tmp_path / "backup-drone/policy.json"))
    with pytest.raises(agent.Rejected, match="cannot look for the policy file") as caught:
        agent.load_policy(None)
    assert caught.value.field == "policy"


# -- symlinks are resolved on the host before the prefixes are compared ---------------------------


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    """tmp/allowed (the policy's prefix) holds a link to tmp/outside."""
    (tmp_path / "allowed").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "outside")
    return tmp_path


def test_a_path_through_a_symlink_out_of_the_prefix_is_rejected(linked: Path) -> None:
    allowed = agent.parse_policy({"repositories": ["/"], "paths": [str(linked / "allowed")]})
    agent.check_policy(allowed, "create", create_job("/srv/r", (str(linked / "allowed"),)))
    job = create_job("/srv/r", (str(linked / "allowed" / "link" / "secret"),))
    assert rejected_field(allowed, "create", job) == "paths[0]"


def test_a_local_repository_through_a_symlink_out_of_the_prefix_is_rejected(
    linked: Path,
) -> None:
    allowed = agent.parse_policy({"repositories": [str(linked / "allowed")], "paths": ["/"]})
    agent.check_policy(allowed, "create", create_job(str(linked / "allowed" / "repo")))
    job = create_job(str(linked / "allowed" / "link" / "repo"))
    assert rejected_field(allowed, "create", job) == "repository"


def test_a_prefix_that_is_a_symlink_allows_where_it_leads(linked: Path) -> None:
    allowed = agent.parse_policy(
        {"repositories": [str(linked / "allowed" / "link")], "paths": [str(linked / "allowed")]}
    )
    paths = (str(linked / "allowed"),)
    agent.check_policy(allowed, "create", create_job(str(linked / "outside" / "repo"), paths))
    job = create_job(str(linked / "allowed" / "link" / "repo"), paths)
    agent.check_policy(allowed, "create", job)


# -- archive_prefixes and min_keep: what a stolen key may prune ------------------------------------


def prune_job(prefix: str = "laptop", **keep: Any) -> Any:
    raw = {"protocol": 2, "repository": "/srv/backup/r", "archive_prefix": prefix, "keep": keep}
    return agent.validate_job("prune", raw)


def sequence_job(steps: list[str], **keep: Any) -> Any:
    raw = {
        "protocol": 2,
        "steps": steps,
        "repository": "/srv/backup/r",
        "archive_prefix": "laptop",
        "paths": ["/home"],
        "keep": keep or {"daily": 1},
    }
    return agent.validate_job("sequence", raw)


def test_archive_prefixes_bind_the_key_to_its_prefixes() -> None:
    bound = policy(archive_prefixes=["laptop", "laptop-db"])
    agent.check_policy(bound, "prune", prune_job("laptop", daily=7))
    assert rejected_field(bound, "create", create_job()) == "archive_prefix"  # prefix "l"
    assert rejected_field(bound, "prune", prune_job("desktop", daily=7)) == "archive_prefix"
    assert rejected_field(bound, "prune", prune_job("laptop-d", daily=7)) == "archive_prefix"
    listing = agent.validate_job("list", {"protocol": 1, "repository": "/srv/backup/r"})
    agent.check_policy(bound, "list", listing)  # no prefix: read-only, every archive


@pytest.mark.parametrize(
    ("minimum", "keep", "below"),
    [
        ({"daily": 7}, {"daily": 7}, None),
        ({"daily": 7}, {"daily": 30, "weekly": 4}, None),
        ({"daily": 7}, {"daily": 6, "weekly": 52}, "daily"),
        ({"daily": 7}, {"within": "1y"}, "daily"),  # another kind of rule is not comparable
        ({"within": "7d"}, {"within": "1w"}, None),
        ({"within": "7d"}, {"within": "168H"}, None),
        ({"within": "7d"}, {"within": "167H"}, "within"),
        ({"within": "1m"}, {"within": "31d"}, None),  # borg's month is 31 days
        ({"within": "1m"}, {"within": "30d"}, "within"),
        ({"within": "7d"}, {"daily": 1000}, "within"),
        ({"within": "2d", "weekly": 4}, {"within": "2d", "daily": 7, "weekly": 3}, "weekly"),
        ({"within": "2d", "weekly": 4}, {"within": "3d", "weekly": 4, "yearly": 1}, None),
    ],
)
def test_min_keep(minimum: dict[str, Any], keep: dict[str, Any], below: str | None) -> None:
    floor = policy(min_keep=minimum)
    if below is None:
        agent.check_policy(floor, "prune", prune_job(**keep))
    else:
        assert rejected_field(floor, "prune", prune_job(**keep)) == f"keep.{below}"


def test_min_keep_holds_for_a_prune_step_and_not_for_other_operations() -> None:
    floor = policy(min_keep={"within": "7d"})
    job = sequence_job(["create", "prune", "stats"], within="1H")
    assert rejected_field(floor, "sequence", job) == "keep.within"
    agent.check_policy(floor, "sequence", sequence_job(["create", "stats"], within="1H"))
    agent.check_policy(floor, "create", create_job())


@pytest.mark.parametrize(
    "raw",
    [
        {"archive_prefixes": "laptop"},
        {"archive_prefixes": ["-laptop"]},
        {"archive_prefixes": ["laptop*"]},
        {"min_keep": {}},
        {"min_keep": {"daily": 0}},
        {"min_keep": {"daily": -1}},
        {"min_keep": {"within": "7 days"}},
        {"min_keep": {"secondly": 5}},
        {"min_keep": [7]},
    ],
)
def test_malformed_prefix_and_retention_policies(tmp_path: Path, raw: dict[str, Any]) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"repositories": [], "paths": [], **raw}))
    with pytest.raises(agent.Rejected) as caught:
        agent.load_policy(str(path))
    assert caught.value.field == "policy"
