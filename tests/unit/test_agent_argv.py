"""The borg command lines and environment the agent builds for each operation."""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.agent_support import load_agent

agent = load_agent()

BORG = "/usr/bin/borg"
SECRET = "pass-phrase-that-must-stay-out-of-argv"


def job(**fields: Any) -> Any:
    raw = {
        "protocol": 1,
        "repository": "/srv/repo",
        "archive_prefix": "web",
        "paths": ["/var/www", "/etc"],
        "passphrase": SECRET,
        "keep": {"daily": 7, "weekly": 4, "within": "2d"},
    }
    raw.update(fields)
    return agent.validate_job("create", {k: v for k, v in raw.items() if v is not None})


def all_argvs(validated: Any) -> list[list[str]]:
    return [
        agent.create_argv(BORG, validated, "web-2025-01-01T00:00:00"),
        agent.prune_argv(BORG, validated),
        agent.compact_argv(BORG, validated),
        agent.info_argv(BORG, validated),
        agent.list_argv(BORG, validated),
        agent.check_argv(BORG, validated),
    ]


def test_create_argv_with_defaults() -> None:
    assert agent.create_argv(BORG, job(), "web-2025-01-01T00:00:00") == [
        BORG,
        "create",
        "--progress",
        "--json",
        "--log-json",
        "--lock-wait=60",
        "--exclude-if-present=.nobackup",
        "--",
        "/srv/repo::web-2025-01-01T00:00:00",
        "/var/www",
        "/etc",
    ]


def test_create_argv_with_every_option() -> None:
    validated = job(
        compression="zstd,3",
        one_file_system=True,
        exclude_patterns=["*.tmp", "-looks-like-an-option"],
        exclude_if_present=["CACHEDIR.TAG"],
        lock_wait=5,
        borg_remote_path="borg1",
    )
    argv = agent.create_argv(BORG, validated, "web-x")
    assert argv[:7] == [
        BORG,
        "create",
        "--progress",
        "--json",
        "--log-json",
        "--lock-wait=5",
        "--remote-path=borg1",
    ]
    assert argv[7:] == [
        "--compression=zstd,3",
        "--one-file-system",
        "--exclude=*.tmp",
        "--exclude=-looks-like-an-option",  # joined with "=": never read as an option
        "--exclude-if-present=CACHEDIR.TAG",
        "--",
        "/srv/repo::web-x",
        "/var/www",
        "/etc",
    ]


def test_prune_argv() -> None:
    assert agent.prune_argv(BORG, job()) == [
        BORG,
        "prune",
        "--list",
        "--log-json",
        "--lock-wait=60",
        "--glob-archives=web-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*",
        "--keep-within=2d",
        "--keep-daily=7",
        "--keep-weekly=4",
        "--",
        "/srv/repo",
    ]


def test_the_archive_glob_matches_only_this_prefix() -> None:
    pattern = agent.archive_glob("web")
    assert fnmatch.fnmatchcase("web-2025-01-31T23:59:59", pattern)  # named by older agents
    assert fnmatch.fnmatchcase("web-2025-01-31T23:59:59.checkpoint", pattern)
    assert fnmatch.fnmatchcase("web-2025-01-31T23:59:59.123456", pattern)
    assert fnmatch.fnmatchcase("web-2025-01-31T23:59:59.123456.checkpoint.1", pattern)
    assert fnmatch.fnmatchcase(agent.archive_name("web", 1738367999.5), pattern)
    assert not fnmatch.fnmatchcase("web-db-2025-01-31T23:59:59", pattern)
    assert not fnmatch.fnmatchcase("webx-2025-01-31T23:59:59", pattern)
    assert not fnmatch.fnmatchcase("other-2025-01-31T23:59:59", pattern)


def test_compact_info_list_check_argv() -> None:
    validated = job()
    assert agent.compact_argv(BORG, validated) == [
        BORG,
        "compact",
        "--info",
        "--log-json",
        "--lock-wait=60",
        "--",
        "/srv/repo",
    ]
    assert agent.info_argv(BORG, validated) == [
        BORG,
        "info",
        "--json",
        "--log-json",
        "--lock-wait=60",
        "--",
        "/srv/repo",
    ]
    assert agent.check_argv(BORG, validated) == [
        BORG,
        "check",
        "--log-json",
        "--lock-wait=60",
        "--",
        "/srv/repo",
    ]
    list_argv = agent.list_argv(BORG, validated)
    assert list_argv[:5] == [BORG, "list", "--json", "--log-json", "--lock-wait=60"]
    assert list_argv[5].startswith("--glob-archives=web-")
    assert list_argv[6:] == ["--", "/srv/repo"]


def test_list_without_prefix_lists_everything() -> None:
    validated = agent.validate_job("list", {"protocol": 1, "repository": "/srv/repo"})
    assert agent.list_argv(BORG, validated) == [
        BORG,
        "list",
        "--json",
        "--log-json",
        "--lock-wait=60",
        "--",
        "/srv/repo",
    ]


def test_the_passphrase_is_in_no_argv() -> None:
    for argv in all_argvs(job()):
        assert not any(SECRET in word for word in argv)


def test_the_passphrase_goes_to_the_environment_only() -> None:
    host = {"PATH": "/usr/bin", "BORG_PASSCOMMAND": "cat /root/pass", "BORG_BASE_DIR": "/var/borg"}
    env = agent.borg_environment(host, job())
    assert env["BORG_PASSPHRASE"] == SECRET
    assert "BORG_PASSCOMMAND" not in env  # the job's passphrase wins over the host's command
    assert env["BORG_BASE_DIR"] == "/var/borg"
    assert env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] == "no"
    assert env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] == "no"
    assert env["BORG_DISPLAY_PASSPHRASE"] == "no"
    assert env["LANG"] == env["LC_ALL"] == "C.UTF-8"


def test_without_a_job_passphrase_the_hosts_own_is_kept() -> None:
    host = {
        "BORG_PASSCOMMAND": "cat /root/pass",
        "BORG_PASSPHRASE": "host-secret",
        "BORG_PASSPHRASE_FD": "3",  # borg inherits no file descriptors: useless
    }
    env = agent.borg_environment(host, job(passphrase=None))
    assert env["BORG_PASSCOMMAND"] == "cat /root/pass"
    assert env["BORG_PASSPHRASE"] == "host-secret"
    assert "BORG_PASSPHRASE_FD" not in env


HOST_ENVIRONMENT = {
    "PATH": "/usr/sbin:/usr/bin",
    "HOME": "/root",
    "TMPDIR": "/var/tmp",
    "TZ": "Europe/Berlin",
    "BORG_BASE_DIR": "/var/lib/borg",
    "BORG_CACHE_DIR": "/var/cache/borg",
    "BORG_CONFIG_DIR": "/etc/borg",
    "BORG_SECURITY_DIR": "/var/lib/borg/security",
    "BORG_KEYS_DIR": "/etc/borg/keys",
    # none of these may reach borg
    "BORG_PASSCOMMAND": "touch /tmp/passcommand-ran",
    "BORG_RSH": "sh -c id",
    "BORG_REMOTE_PATH": "sh -c id",
    "BORG_LOGGING_CONF": "/tmp/logging.conf",
    "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "YES",
    "BORG_EXIT_CODES": "modern",
    "BORG_REPO": "/elsewhere",
    "PYTHONPATH": "/tmp/evil",
    "PYTHONSTARTUP": "/tmp/evil.py",
    "LD_PRELOAD": "/tmp/evil.so",
    "LANG": "de_DE.UTF-8",
    "LC_MESSAGES": "de_DE.UTF-8",
    "SSH_ORIGINAL_COMMAND": "create",
}


def test_borg_gets_only_the_allow_listed_environment() -> None:
    env = agent.borg_environment(HOST_ENVIRONMENT, job())
    allowed = set(agent.BORG_INHERITED_ENVIRONMENT)
    assert {k: v for k, v in env.items() if k in allowed} == {
        k: v for k, v in HOST_ENVIRONMENT.items() if k in allowed
    }
    assert set(env) == allowed | set(agent.BORG_SAFE_ENVIRONMENT) | {"BORG_PASSPHRASE"}
    assert env["BORG_EXIT_CODES"] == "legacy"  # a host's "modern" cannot change what rc 2 means
    assert env["LANG"] == env["LC_ALL"] == "C.UTF-8"


def test_without_a_job_passphrase_only_the_passphrase_settings_are_added() -> None:
    env = agent.borg_environment(HOST_ENVIRONMENT, job(passphrase=None))
    assert env["BORG_PASSCOMMAND"] == HOST_ENVIRONMENT["BORG_PASSCOMMAND"]
    assert "BORG_RSH" not in env
    assert "PYTHONPATH" not in env


def test_borg_rsh_goes_to_the_environment() -> None:
    env = agent.borg_environment({}, job(borg_rsh="ssh -i /root/.ssh/backup"))
    assert env["BORG_RSH"] == "ssh -i /root/.ssh/backup"
    assert "BORG_RSH" not in agent.borg_environment({}, job())


@pytest.mark.parametrize(
    ("now", "name"),
    [
        (datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC), "web-2025-03-04T05:06:07.000000"),
        (datetime.fromisoformat("2025-03-04T07:06:07+02:00"), "web-2025-03-04T05:06:07.000000"),
        (datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC), "web-2025-03-04T05:06:07.123456"),
        (datetime(2025, 3, 4, 5, 6, 7, 999999, tzinfo=UTC), "web-2025-03-04T05:06:07.999999"),
    ],
)
def test_archive_names_are_utc_to_the_microsecond(now: datetime, name: str) -> None:
    assert agent.archive_name("web", now.timestamp()) == name


def test_two_names_in_the_same_second_differ() -> None:
    second = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp()
    assert agent.archive_name("web", second + 0.1) != agent.archive_name("web", second + 0.2)


@pytest.mark.parametrize(
    ("returncode", "status"), [(0, 0), (1, 1), (2, 2), (-2, 130), (-9, 137), (-15, 143)]
)
def test_exit_status_of_a_signalled_borg(returncode: int, status: int) -> None:
    assert agent.exit_status(returncode) == status
