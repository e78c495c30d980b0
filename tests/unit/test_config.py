"""apps.yaml args -> Config: defaults, inheritance, and a message for every rejected value."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_coordinator.config import (
    AGENT_JOB_LINE_LIMIT,
    APPDAEMON_KEYS,
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_INACTIVITY_MINUTES,
    JOB_SIZE_MARGIN,
    Config,
    ConfigError,
    ConfigProblem,
    DroneConfig,
    load_config_file,
    parse_config,
)
from backup_coordinator.jobs import build_job
from backup_coordinator.model import DroneSettings, KeepRules, Mode, Operation, SshTarget
from backup_coordinator.operations import OPERATIONS, STEPS
from tests.integration.agent_support import load_agent

BASE = Path("/conf/apps")
SECRET = "correct horse battery staple"


def minimal_drone(**changes: Any) -> dict[str, Any]:
    return {"host": "nas.lan", "repository": "/srv/borg/nas", "paths": ["/home"], **changes}


def app_args(**top: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "module": "backup_coordinator.app",
        "class": "BackupCoordinator",
        "ssh": {"client_key": "keys/coordinator", "known_hosts": "/etc/backup/known_hosts"},
        "drones": {"nas": minimal_drone()},
    }
    args.update(top)
    return args


def only_problem(config: Config) -> ConfigProblem:
    assert len(config.problems) == 1, config.problems
    return config.problems[0]


def drone_problem(settings: dict[str, Any], **top: Any) -> ConfigProblem:
    config = parse_config(app_args(drones={"nas": settings}, **top), BASE)
    assert config.drones == ()
    problem = only_problem(config)
    assert problem.drone == "nas"
    return problem


# --- what a valid configuration gives ------------------------------------------------------


def test_a_minimal_configuration_takes_every_default() -> None:
    config = parse_config(app_args(), BASE)
    assert config == Config(
        entity_prefix="borg",
        state_file=BASE / "backup_coordinator_state.json",
        tick_seconds=60.0,
        max_concurrent=1,
        progress_interval=5.0,
        overdue_factor=2.0,
        max_runtime_minutes=720,
        notify=None,
        drones=(
            DroneConfig(
                name="nas",
                ssh=SshTarget(
                    host="nas.lan",
                    port=22,
                    user="root",
                    client_key=str(BASE / "keys/coordinator"),
                    known_hosts="/etc/backup/known_hosts",
                    connect_timeout=10.0,
                    keepalive_interval=15.0,
                ),
                repository="/srv/borg/nas",
                passphrase=None,
                archive_prefix="nas",
                paths=("/home",),
                exclude_patterns=(),
                exclude_if_present=(".nobackup",),
                one_file_system=False,
                compression="lz4",
                lock_wait=60,
                borg_rsh=None,
                borg_remote_path=None,
                settings=DroneSettings(Mode.SCHEDULED, 1440, KeepRules()),
            ),
        ),
        problems=(),
    )


def test_every_option_is_read() -> None:
    args = app_args(
        entity_prefix="borg",
        state_file="/var/lib/coordinator/state.json",
        tick_seconds=30,
        max_concurrent=3,
        progress_interval=0.5,
        overdue_factor=1.5,
        max_runtime_minutes=90,
        notify="notify.mobile_app_phone",
        ssh={
            "user": "backup",
            "port": 2222,
            "client_key": "/keys/id",
            "known_hosts": "/keys/known_hosts",
            "connect_timeout": 3,
            "keepalive_interval": 0,
        },
        drones={
            "pc": minimal_drone(
                host="192.168.1.20",
                port=22022,
                user="borg",
                client_key="~/pc_key",
                known_hosts="pc_known_hosts",
                connect_timeout=2.5,
                keepalive_interval=30,
                repository="ssh://borg@store.lan:2222/./pc",
                passphrase=SECRET,
                archive_prefix="PC.main",
                paths=["/home", "/etc"],
                exclude_patterns=["sh:**/.cache", "*.tmp"],
                exclude_if_present=[".nobackup", "CACHEDIR.TAG"],
                one_file_system=True,
                compression="auto,zstd,10",
                lock_wait=0,
                borg_rsh="ssh -i /root/.ssh/store",
                borg_remote_path="/usr/local/bin/borg1",
                mode="manual",
                frequency=360,
                keep={"within": "3d", "hourly": 24, "daily": 0, "weekly": 8},
            )
        },
    )
    config = parse_config(args, BASE)
    assert config.problems == ()
    assert (config.entity_prefix, config.state_file) == (
        "borg",
        Path("/var/lib/coordinator/state.json"),
    )
    assert (config.tick_seconds, config.max_concurrent, config.progress_interval) == (30, 3, 0.5)
    assert (config.overdue_factor, config.max_runtime_minutes) == (1.5, 90)
    assert config.notify == "notify.mobile_app_phone"
    (pc,) = config.drones
    assert pc.ssh == SshTarget(
        host="192.168.1.20",
        port=22022,
        user="borg",
        client_key=str(Path("~/pc_key").expanduser()),
        known_hosts=str(BASE / "pc_known_hosts"),
        connect_timeout=2.5,
        keepalive_interval=30,
    )
    assert pc.repository == "ssh://borg@store.lan:2222/./pc"
    assert pc.passphrase == SECRET
    assert pc.archive_prefix == "PC.main"
    assert pc.paths == ("/home", "/etc")
    assert pc.exclude_patterns == ("sh:**/.cache", "*.tmp")
    assert pc.exclude_if_present == (".nobackup", "CACHEDIR.TAG")
    assert pc.one_file_system is True
    assert (pc.compression, pc.lock_wait) == ("auto,zstd,10", 0)
    assert (pc.borg_rsh, pc.borg_remote_path) == ("ssh -i /root/.ssh/store", "/usr/local/bin/borg1")
    assert pc.settings == DroneSettings(
        mode=Mode.MANUAL,
        frequency_minutes=360,
        keep=KeepRules(within="3d", hourly=24, daily=0, weekly=8, monthly=6, yearly=1),
    )


def test_ssh_block_values_are_inherited_and_overridden_per_drone() -> None:
    args = app_args(
        ssh={"user": "backup", "client_key": "/k", "known_hosts": "/kh", "connect_timeout": 4},
        drones={"a": minimal_drone(), "b": minimal_drone(user="other", known_hosts="/b_kh")},
    )
    a, b = parse_config(args, BASE).drones
    assert (a.ssh.user, a.ssh.known_hosts, a.ssh.connect_timeout) == ("backup", "/kh", 4)
    assert (b.ssh.user, b.ssh.known_hosts, b.ssh.client_key) == ("other", "/b_kh", "/k")


def test_defaults_are_inherited_and_keep_rules_merge_rule_by_rule() -> None:
    args = app_args(
        defaults={
            "passphrase": SECRET,
            "compression": "zstd",
            "frequency": 720,
            "keep": {"weekly": 2, "yearly": 0},
            "user": "defaults_user",
        },
        drones={
            "a": minimal_drone(),
            "b": minimal_drone(compression="none", keep={"daily": 3}, repository="/r/b"),
        },
    )
    a, b = parse_config(args, BASE).drones
    assert (a.passphrase, a.compression, a.settings.frequency_minutes) == (SECRET, "zstd", 720)
    assert a.ssh.user == "defaults_user"
    assert a.settings.keep == KeepRules(daily=7, weekly=2, yearly=0)
    assert b.compression == "none"
    assert b.settings.keep == KeepRules(daily=3, weekly=2, yearly=0)


def test_drones_are_sorted_by_name() -> None:
    drones = {name: minimal_drone(repository=f"/r/{name}") for name in ("zeta", "alpha", "mid")}
    config = parse_config(app_args(drones=drones), BASE)
    assert [d.name for d in config.drones] == ["alpha", "mid", "zeta"]


def test_appdaemons_own_keys_are_ignored() -> None:
    extra = {key: "anything" for key in APPDAEMON_KEYS}
    args = {**app_args(), **extra}
    assert parse_config(args, BASE).drones[0].name == "nas"
    for key in (
        "module",
        "class",
        "dependencies",
        "priority",
        "log",
        "log_level",
        "global_dependencies",
        "plugin",
        "use_dictionary_unpacking",
        "pin_app",
        "pin_thread",
        "disable",
        "name",
        "config_path",
    ):
        assert key in APPDAEMON_KEYS


@pytest.mark.parametrize(
    ("repository", "key"),
    [
        ("/srv/borg/nas", "ssh://nas.lan:22/srv/borg/nas"),
        ("/srv/borg/nas/", "ssh://nas.lan:22/srv/borg/nas"),
        ("ssh://borg@store:22/./repo", "ssh://borg@store:22/./repo"),
        ("borg@store:repo", "ssh://borg@store:22/./repo"),
        ("borg@store:/srv/repo/", "ssh://store:22/srv/repo"),
        ("ssh://borg@localhost/srv/r", "ssh://nas.lan:22/srv/r"),
        ("ssh://borg@[::1]:22/srv/r", "ssh://nas.lan:22/srv/r"),
        ("ssh://borg@[2001:DB8::1]/srv/r", "ssh://2001:db8::1:22/srv/r"),
    ],
)
def test_repository_key_qualifies_local_paths_with_the_host(repository: str, key: str) -> None:
    config = parse_config(app_args(drones={"nas": minimal_drone(repository=repository)}), BASE)
    assert config.drones[0].repository_key == key


def test_one_broken_drone_is_skipped_while_the_others_parse() -> None:
    drones = {
        "good": minimal_drone(repository="/r/good"),
        "nas": minimal_drone(paths=["/home", "home"]),
        "other": minimal_drone(repository="/r/other"),
    }
    config = parse_config(app_args(drones=drones), BASE)
    assert [d.name for d in config.drones] == ["good", "other"]
    assert config.problems == (
        ConfigProblem("nas", "paths[1]", "must be an absolute path, got 'home'"),
    )
    assert (
        str(config.problems[0])
        == "drone 'nas': key 'paths[1]': must be an absolute path, got 'home'"
    )


def test_same_archive_prefix_in_one_repository_is_a_problem_on_the_second() -> None:
    drones = {
        "a": minimal_drone(repository="/shared", archive_prefix="box"),
        "b": minimal_drone(repository="/shared", archive_prefix="box"),
        "c": minimal_drone(repository="/shared/", archive_prefix="box-old"),
        "d": minimal_drone(repository="/shared", archive_prefix="box2"),
        "e": minimal_drone(repository="/elsewhere", archive_prefix="box"),
    }
    config = parse_config(app_args(drones=drones), BASE)
    assert [d.name for d in config.drones] == ["a", "d", "e"]
    assert [(p.drone, p.key) for p in config.problems] == [
        ("b", "archive_prefix"),
        ("c", "archive_prefix"),
    ]
    assert "drone 'a'" in config.problems[0].message
    assert "'box-old'" in config.problems[1].message  # box-* would prune box-old-* too


def test_the_same_local_path_on_different_hosts_is_a_different_repository() -> None:
    drones = {
        "a": minimal_drone(host="one", archive_prefix="x"),
        "b": minimal_drone(host="two", archive_prefix="x"),
    }
    assert len(parse_config(app_args(drones=drones), BASE).drones) == 2


# --- the passphrase never shows ------------------------------------------------------------


def test_the_passphrase_is_not_in_the_repr() -> None:
    config = parse_config(app_args(drones={"nas": minimal_drone(passphrase=SECRET)}), BASE)
    assert config.drones[0].passphrase == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in str(config)


@pytest.mark.parametrize(
    "settings",
    [
        minimal_drone(passphrase=SECRET, paths=SECRET),
        minimal_drone(passphrase=SECRET, repository=SECRET),
        minimal_drone(passphrase=SECRET, compression=SECRET),
        minimal_drone(passphrase=SECRET, mode=SECRET),
        minimal_drone(passphrase=SECRET, keep={"within": SECRET}),
        minimal_drone(passphrase=SECRET, passphrase_typo=SECRET),
        minimal_drone(passphrase=SECRET, **{SECRET: 1}),
        minimal_drone(passphrase=12345),
        minimal_drone(passphrase=["a", "list"]),
    ],
)
def test_no_problem_message_shows_the_passphrase(settings: dict[str, Any]) -> None:
    problem = drone_problem(settings)
    passphrase = str(settings["passphrase"])
    assert passphrase not in str(problem)
    assert passphrase not in repr(problem)


def test_a_passphrase_of_the_wrong_type_names_the_key_but_not_the_value() -> None:
    problem = drone_problem(minimal_drone(passphrase=987654321))
    assert problem.key == "passphrase"
    assert "must be text" in problem.message
    assert "987654321" not in str(problem)


def test_a_passphrase_from_defaults_is_redacted_too() -> None:
    args = app_args(defaults={"passphrase": SECRET}, drones={"nas": minimal_drone(host=SECRET)})
    problem = only_problem(parse_config(args, BASE))
    assert problem.key == "host"
    assert SECRET not in str(problem)


@settings(max_examples=60, deadline=None)
@given(
    tail=st.text(min_size=6, max_size=30),
    key=st.sampled_from(["host", "repository", "archive_prefix", "compression", "user", "mode"]),
    shape=st.sampled_from(["alone", "suffixed", "listed"]),
)
def test_a_passphrase_pasted_under_any_key_never_shows(tail: str, key: str, shape: str) -> None:
    passphrase = "Pw" + tail  # "Pw" appears in no message, so any hit is a leak
    value = {"alone": passphrase, "suffixed": passphrase + " x", "listed": [passphrase]}[shape]
    settings = minimal_drone(passphrase=passphrase, **{key: value})
    config = parse_config(app_args(drones={"nas": settings}), BASE)
    shown_forms = {passphrase, repr(passphrase)[1:-1]}
    for problem in config.problems:
        assert not any(form in str(problem) for form in shown_forms)
        assert not any(form in repr(problem) for form in shown_forms)


# --- top-level errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("entity_prefix", "Backup", "a slug"),
        ("entity_prefix", "1backup", "a slug"),
        ("entity_prefix", "b" * 32, "a slug"),
        ("entity_prefix", 5, "a slug"),
        ("state_file", None, "path of a file"),
        ("state_file", 3, "path of a file"),
        ("state_file", "", "path of a file"),
        ("tick_seconds", 0.5, "a number >= 1 (seconds)"),
        ("tick_seconds", "60", "a number >= 1 (seconds)"),
        ("tick_seconds", True, "a number >= 1 (seconds)"),
        ("tick_seconds", float("nan"), "a number >= 1 (seconds)"),
        ("max_concurrent", 0, "a whole number between 1 and 16"),
        ("max_concurrent", 17, "a whole number between 1 and 16"),
        ("max_concurrent", 2.0, "a whole number between 1 and 16"),
        ("max_concurrent", True, "a whole number between 1 and 16"),
        ("progress_interval", 0.4, "a number >= 0.5 (seconds)"),
        ("overdue_factor", 0.9, "a number >= 1"),
        ("max_runtime_minutes", 0, "a whole number >= 1"),
        ("max_runtime_minutes", "12", "a whole number >= 1"),
        ("notify", "mobile_app_phone", "a notify service like notify.mobile_app_phone"),
        ("notify", "notify.Phone", "a notify service like notify.mobile_app_phone"),
        ("notify", ["notify.a"], "a notify service like notify.mobile_app_phone"),
        ("ssh", ["user"], "a mapping of keys to values"),
        ("defaults", "lz4", "a mapping of keys to values"),
        ("drones", ["nas"], "a mapping of keys to values"),
        ("drones", {}, "at least one drone"),
        ("drones", None, "required"),
    ],
)
def test_a_bad_top_level_value_raises_naming_the_key(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(app_args(**{key: value}), BASE)
    message = str(raised.value)
    assert f"key {key!r}" in message
    assert expected in message


def test_a_missing_drones_key_raises() -> None:
    args = app_args()
    del args["drones"]
    with pytest.raises(ConfigError, match="key 'drones': required"):
        parse_config(args, BASE)


def test_an_unknown_top_level_key_raises_naming_it() -> None:
    with pytest.raises(
        ConfigError, match=r"key 'tick': unknown key; expected one of .*tick_seconds"
    ):
        parse_config(app_args(tick=5), BASE)


@pytest.mark.parametrize(
    ("ssh", "key", "expected"),
    [
        ({"known_hosts": None}, "ssh.known_hosts", "cannot be turned off"),
        ({"known_hosts": False}, "ssh.known_hosts", "cannot be turned off"),
        ({"known_hosts": ""}, "ssh.known_hosts", "cannot be turned off"),
        ({"strict_host_key_checking": False}, "ssh.strict_host_key_checking", "always verified"),
        ({"StrictHostKeyChecking": "no"}, "ssh.StrictHostKeyChecking", "always verified"),
        ({"insecure": True}, "ssh.insecure", "always verified"),
        ({"client_key": None}, "ssh.client_key", "path of a file"),
        ({"client_key": ["a"]}, "ssh.client_key", "path of a file"),
        ({"user": "bad user"}, "ssh.user", "a user name"),
        ({"port": 0}, "ssh.port", "between 1 and 65535"),
        ({"connect_timeout": 0}, "ssh.connect_timeout", "a number > 0 (seconds)"),
        ({"keepalive_interval": -1}, "ssh.keepalive_interval", "a number >= 0"),
        ({"host": "nas"}, "ssh.host", "unknown key"),
    ],
)
def test_a_bad_ssh_block_raises_naming_the_key(
    ssh: dict[str, Any], key: str, expected: str
) -> None:
    args = app_args()
    args["ssh"] = {**args["ssh"], **ssh}
    with pytest.raises(ConfigError) as raised:
        parse_config(args, BASE)
    assert f"key {key!r}" in str(raised.value)
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("defaults", "key", "expected"),
    [
        ({"host": "nas"}, "defaults.host", "per drone"),
        ({"repository": "/r"}, "defaults.repository", "per drone"),
        ({"compression": "gzip"}, "defaults.compression", "none, lz4"),
        ({"keep": {"weekly": -1}}, "defaults.keep.weekly", "between 0 and 1000"),
        ({"frequency": 0}, "defaults.frequency", "between 1 and 43200"),
        ({"color": "red"}, "defaults.color", "unknown key"),
        ({"known_hosts": None}, "defaults.known_hosts", "cannot be turned off"),
        (
            {"strict_host_key_checking": "no"},
            "defaults.strict_host_key_checking",
            "always verified",
        ),
    ],
)
def test_a_bad_default_raises_once_naming_the_key(
    defaults: dict[str, Any], key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(app_args(defaults=defaults), BASE)
    assert f"key {key!r}" in str(raised.value)
    assert expected in str(raised.value)


# --- per-drone problems: one test per rejected key/value ------------------------------------

NOT_ABSOLUTE = "must be an absolute path"


@pytest.mark.parametrize(
    ("changes", "key", "expected"),
    [
        # ssh target
        ({"host": ""}, "host", "a host name or address"),
        ({"host": "-oProxyCommand=x"}, "host", "a host name or address"),
        ({"host": "two words"}, "host", "a host name or address"),
        ({"host": 10}, "host", "a host name or address"),
        ({"port": 70000}, "port", "a whole number between 1 and 65535"),
        ({"port": "22"}, "port", "a whole number between 1 and 65535"),
        ({"port": True}, "port", "a whole number between 1 and 65535"),
        ({"user": "-l"}, "user", "a user name"),
        ({"client_key": ""}, "client_key", "the path of a file"),
        ({"client_key": False}, "client_key", "the path of a file"),
        ({"known_hosts": None}, "known_hosts", "host keys are always verified"),
        ({"known_hosts": False}, "known_hosts", "cannot be turned off"),
        ({"strict_host_key_checking": False}, "strict_host_key_checking", "always verified"),
        ({"connect_timeout": "10"}, "connect_timeout", "a number > 0 (seconds)"),
        ({"keepalive_interval": False}, "keepalive_interval", "a number >= 0"),
        # repository
        ({"repository": "srv/borg"}, "repository", "an absolute path, ssh://"),
        ({"repository": "ftp://host/path"}, "repository", "an absolute path, ssh://"),
        ({"repository": "-r/srv"}, "repository", "an absolute path, ssh://"),
        ({"repository": "/srv/borg\nx"}, "repository", "one non-empty line"),
        ({"repository": ["/srv"]}, "repository", "an absolute path, ssh://"),
        # archives and paths
        ({"archive_prefix": "-nas"}, "archive_prefix", "a letter or digit"),
        ({"archive_prefix": "nas/x"}, "archive_prefix", "a letter or digit"),
        ({"archive_prefix": "n" * 65}, "archive_prefix", "a letter or digit"),
        ({"paths": "/home"}, "paths", "must be a list"),
        ({"paths": []}, "paths", "at least one absolute path"),
        ({"paths": ["/home", "home"]}, "paths[1]", NOT_ABSOLUTE),
        ({"paths": [5]}, "paths[0]", NOT_ABSOLUTE),
        ({"paths": ["/a\nb"]}, "paths[0]", "one non-empty line"),
        ({"exclude_patterns": "*.tmp"}, "exclude_patterns", "must be a list"),
        ({"exclude_patterns": [""]}, "exclude_patterns[0]", "a borg pattern"),
        ({"exclude_patterns": [None]}, "exclude_patterns[0]", "a borg pattern"),
        ({"exclude_patterns": ["re:(a+)+$"]}, "exclude_patterns[0]", "re: is not accepted"),
        ({"exclude_patterns": ["xx:a"]}, "exclude_patterns[0]", "sh:, fm:, pp: or pf:"),
        ({"exclude_patterns": ["sh:*a*a*a*ab"]}, "exclude_patterns[0]", "at most 3 '*'"),
        ({"exclude_patterns": ["**/**/x"]}, "exclude_patterns[0]", "at most 3 '*'"),
        ({"exclude_if_present": ".nobackup"}, "exclude_if_present", "must be a list"),
        ({"exclude_if_present": ["a/b"]}, "exclude_if_present[0]", "a file name without '/'"),
        ({"one_file_system": "yes"}, "one_file_system", "true or false"),
        ({"one_file_system": 1}, "one_file_system", "true or false"),
        ({"compression": "gzip"}, "compression", "none, lz4, zstd[,1-22]"),
        ({"compression": "zstd,23"}, "compression", "none, lz4, zstd[,1-22]"),
        ({"compression": "lz4,3"}, "compression", "none, lz4, zstd[,1-22]"),
        ({"compression": "auto"}, "compression", "none, lz4, zstd[,1-22]"),
        ({"lock_wait": -1}, "lock_wait", "a whole number between 0 and 86400"),
        ({"lock_wait": 1.5}, "lock_wait", "a whole number between 0 and 86400"),
        ({"borg_rsh": ""}, "borg_rsh", "an ssh command line"),
        ({"borg_rsh": ["ssh"]}, "borg_rsh", "an ssh command line"),
        ({"borg_remote_path": "borg --x"}, "borg_remote_path", "the borg command"),
        (
            {"repository": "ssh://borg@nas:2222/srv/r", "borg_rsh": "ssh -p 22"},
            "borg_rsh",
            "the repository location says 2222",
        ),
        (
            {"repository": "borg@nas:/srv/r", "borg_rsh": "ssh -o Port=2222"},
            "borg_rsh",
            "must not set a port",
        ),
        # settings (the model's messages)
        ({"mode": "sometimes"}, "mode", "mode must be one of scheduled, manual, disabled"),
        ({"mode": 1}, "mode", "must be text"),
        ({"frequency": 0}, "frequency", "frequency (minutes) must be between 1 and 43200"),
        ({"frequency": 50000}, "frequency", "frequency (minutes) must be between 1 and 43200"),
        ({"frequency": "60"}, "frequency", "a whole number of minutes"),
        ({"frequency": True}, "frequency", "a whole number of minutes"),
        ({"frequency": 60.5}, "frequency", "a whole number of minutes"),
        ({"keep": "7d"}, "keep", "a mapping of keys to values"),
        ({"keep": {"within": "7 days"}}, "keep.within", "keep within must be a number and a unit"),
        ({"keep": {"within": 7}}, "keep.within", "keep within must be text"),
        ({"keep": {"weekly": -1}}, "keep.weekly", "keep weekly must be between 0 and 1000"),
        ({"keep": {"daily": 1001}}, "keep.daily", "keep daily must be between 0 and 1000"),
        ({"keep": {"monthly": "6"}}, "keep.monthly", "a whole number of archives"),
        ({"keep": {"yearly": False}}, "keep.yearly", "a whole number of archives"),
        ({"keep": {"forever": 1}}, "keep.forever", "unknown key; expected one of"),
        (
            {"keep": {"daily": 0, "weekly": 0, "monthly": 0, "yearly": 0}},
            "keep",
            "must keep something",
        ),
        # keys that do not exist
        ({"pathes": ["/home"]}, "pathes", "unknown key; expected one of"),
    ],
)
def test_a_bad_drone_value_is_a_problem_naming_drone_and_key(
    changes: dict[str, Any], key: str, expected: str
) -> None:
    problem = drone_problem(minimal_drone(**changes))
    assert problem.key == key
    assert expected in problem.message
    assert str(problem).startswith(f"drone 'nas': key {key!r}: ")


@pytest.mark.parametrize("key", ["host", "repository", "paths"])
def test_a_missing_required_drone_key_is_a_problem(key: str) -> None:
    settings = minimal_drone()
    del settings[key]
    problem = drone_problem(settings)
    assert (problem.key, problem.message) == (key, "required")


@pytest.mark.parametrize("key", ["client_key", "known_hosts"])
def test_a_key_file_is_required_unless_every_drone_sets_one(key: str) -> None:
    args = app_args(drones={"a": minimal_drone(**{key: "/x"}), "nas": minimal_drone()})
    del args["ssh"][key]
    config = parse_config(args, BASE)
    assert [d.name for d in config.drones] == ["a"]
    problem = only_problem(config)
    assert (problem.drone, problem.key) == ("nas", key)
    assert "ssh: block" in problem.message


@pytest.mark.parametrize(
    ("name", "expected_drone"),
    [
        ("NAS", "NAS"),
        ("1nas", "1nas"),
        ("n-a-s", "n-a-s"),
        (5, "5"),
        ("n" * 32, "n" * 32),
        ("nas\n", "nas\n"),
    ],
)
def test_a_bad_drone_name_is_a_problem(name: Any, expected_drone: str) -> None:
    config = parse_config(app_args(drones={name: minimal_drone()}), BASE)
    problem = only_problem(config)
    assert (problem.drone, problem.key) == (expected_drone, "name")
    assert "a slug" in problem.message


@pytest.mark.parametrize("settings", [None, "nas.lan", ["/home"]])
def test_drone_settings_must_be_a_mapping(settings: Any) -> None:
    problem = drone_problem(settings)
    assert problem.key == "drones.nas"
    assert "a mapping of keys to values" in problem.message


def test_the_problem_string_format() -> None:
    problem = ConfigProblem("nas", "paths[1]", "must be an absolute path, got 'home'")
    assert str(problem) == "drone 'nas': key 'paths[1]': must be an absolute path, got 'home'"


def test_parsing_does_not_change_the_args() -> None:
    args = app_args(
        defaults={"keep": {"weekly": 1}}, drones={"nas": minimal_drone(keep={"daily": 1})}
    )
    before = copy.deepcopy(args)
    parse_config(args, BASE)
    assert args == before


# --- apps.yaml files -----------------------------------------------------------------------

APPS_YAML = """
other_app:
  module: hello
  class: Hello
backup_coordinator:
  module: backup_coordinator.app
  class: BackupCoordinator
  tick_seconds: 30
  ssh:
    client_key: keys/id_ed25519
    known_hosts: !env_var KNOWN_HOSTS_FOR_TEST
  drones:
    nas:
      host: nas.lan
      repository: /srv/borg/nas
      passphrase: !secret nas_passphrase
      paths: [/home]
"""


def write_apps(directory: Path, text: str = APPS_YAML) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "apps.yaml"
    path.write_text(text)
    return path


def test_load_config_file_resolves_secrets_and_env_vars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNOWN_HOSTS_FOR_TEST", "/etc/kh")
    path = write_apps(tmp_path)
    (tmp_path / "secrets.yaml").write_text(f"nas_passphrase: {SECRET}\n")
    config = load_config_file(path)
    (nas,) = config.drones
    assert nas.passphrase == SECRET
    assert nas.ssh.known_hosts == "/etc/kh"
    assert nas.ssh.client_key == str(tmp_path / "keys/id_ed25519")
    assert config.tick_seconds == 30
    assert config.state_file == tmp_path / "backup_coordinator_state.json"


def test_secrets_are_also_found_in_appdaemons_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNOWN_HOSTS_FOR_TEST", "/etc/kh")
    path = write_apps(tmp_path / "apps")
    (tmp_path / "secrets.yaml").write_text(f"nas_passphrase: {SECRET}\n")
    assert load_config_file(path).drones[0].passphrase == SECRET


def test_a_missing_secret_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNOWN_HOSTS_FOR_TEST", "/etc/kh")
    path = write_apps(tmp_path)
    (tmp_path / "secrets.yaml").write_text("something_else: x\n")
    with pytest.raises(ConfigError, match="secret 'nas_passphrase' not found"):
        load_config_file(path)


def test_a_secret_without_a_secrets_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNOWN_HOSTS_FOR_TEST", "/etc/kh")
    with pytest.raises(ConfigError, match=r"no secrets\.yaml"):
        load_config_file(write_apps(tmp_path / "lonely" / "apps"))


def test_a_missing_env_var_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KNOWN_HOSTS_FOR_TEST", raising=False)
    path = write_apps(tmp_path)
    (tmp_path / "secrets.yaml").write_text("nas_passphrase: x\n")
    with pytest.raises(ConfigError, match="KNOWN_HOSTS_FOR_TEST"):
        load_config_file(path)


def test_the_app_is_found_by_its_class_and_by_name(tmp_path: Path) -> None:
    text = """
mine:
  class: BackupCoordinator
  module: somewhere.else
  ssh: {client_key: /k, known_hosts: /kh}
  drones: {nas: {host: nas, repository: /r, paths: [/home]}}
second:
  module: backup_coordinator.app
  class: Other
  ssh: {client_key: /k, known_hosts: /kh}
  drones: {pc: {host: pc, repository: /r, paths: [/home]}}
"""
    path = write_apps(tmp_path, text)
    with pytest.raises(ConfigError, match="several apps"):
        load_config_file(path)
    assert load_config_file(path, "second").drones[0].name == "pc"
    with pytest.raises(ConfigError, match="no app named 'third'"):
        load_config_file(path, "third")


def test_no_coordinator_app_in_the_file_is_an_error(tmp_path: Path) -> None:
    path = write_apps(tmp_path, "hello:\n  module: hello\n  class: Hello\n")
    with pytest.raises(ConfigError, match=r"no app with module backup_coordinator\.app"):
        load_config_file(path)


@pytest.mark.parametrize("text", ["a: [", "just text", ""])
def test_a_broken_apps_yaml_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_config_file(write_apps(tmp_path, text))


def test_an_unreadable_apps_yaml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")


def test_the_shipped_example_parses_without_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (Path(__file__).resolve().parents[2] / "apps.yaml.example").read_text()
    path = write_apps(tmp_path, text)
    # The example takes passphrases from secrets.yaml: give it stand-ins.
    names = sorted(set(re.findall(r"!secret\s+(\w+)", text)))
    (tmp_path / "secrets.yaml").write_text("".join(f"{n}: stand-in passphrase\n" for n in names))
    config = load_config_file(path)
    assert config.problems == ()
    assert [d.name for d in config.drones] == ["laptop", "nas"]
    assert all(d.passphrase == "stand-in passphrase" for d in config.drones)
    assert config.drones[1].ssh.client_key == str(tmp_path / "backup_coordinator/id_ed25519")


def test_relative_paths_resolve_against_appdaemons_config_dir_like_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNOWN_HOSTS_FOR_TEST", "/etc/kh")
    (tmp_path / "appdaemon.yaml").write_text("appdaemon: {}\n")
    path = write_apps(tmp_path / "apps")
    (tmp_path / "secrets.yaml").write_text("nas_passphrase: x\n")
    config = load_config_file(path)
    assert config.drones[0].ssh.client_key == str(tmp_path / "keys/id_ed25519")
    assert config.state_file == tmp_path / "backup_coordinator_state.json"
    elsewhere = load_config_file(path, base_dir=Path("/elsewhere"))
    assert elsewhere.state_file == Path("/elsewhere/backup_coordinator_state.json")


def test_another_drones_passphrase_is_redacted_too() -> None:
    drones = {"a": minimal_drone(passphrase=SECRET), "nas": minimal_drone(host=SECRET)}
    problem = only_problem(parse_config(app_args(drones=drones), BASE))
    assert problem.drone == "nas"
    assert SECRET not in str(problem)


def test_a_top_level_error_never_shows_a_passphrase() -> None:
    args = app_args(defaults={"compression": SECRET, "passphrase": SECRET})
    with pytest.raises(ConfigError) as raised:
        parse_config(args, BASE)
    assert "key 'defaults.compression'" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_borg_rsh_must_run_ssh(tmp_path: Path) -> None:
    args = {
        "ssh": {"client_key": "/k", "known_hosts": "/kh"},
        "drones": {
            "good": {
                "host": "a",
                "repository": "ssh://b/r",
                "paths": ["/d"],
                "borg_rsh": "ssh -i /k",
            },
            "bad": {
                "host": "a",
                "repository": "ssh://c/r",
                "paths": ["/d"],
                "borg_rsh": "sh -c id",
            },
        },
    }
    config = parse_config(args, tmp_path)
    assert [d.name for d in config.drones] == ["good"]
    assert [str(p) for p in config.problems] == [
        "drone 'bad': key 'borg_rsh': must start with ssh or /usr/bin/ssh, as in 'ssh -i KEY' "
        "(a job never picks another program), got 'sh -c id'"
    ]


# --- what the agent would reject at every backup is a problem at start -----------------------

agent = load_agent()


@pytest.mark.parametrize(
    ("changes", "key", "expected"),
    [
        # repository: the agent's location rules
        ({"repository": "/srv/borg::archive"}, "repository", "must not contain '::'"),
        ({"repository": "borg@nas:repo::x"}, "repository", "must not contain '::'"),
        ({"repository": "/srv/../etc"}, "repository", "must not contain '..'"),
        ({"repository": "ssh://borg@nas/srv/../x"}, "repository", "must not contain '..'"),
        ({"repository": "nas:../x"}, "repository", "must not contain '..'"),
        ({"repository": "/srv/borg\tx"}, "repository", "control characters"),
        ({"repository": "/srv/borg\x1b[2J"}, "repository", "control characters"),
        ({"repository": "/" + "r" * 4096}, "repository", "at most 4096 characters"),
        ({"repository": "ssh://borg@nas%eth0/srv"}, "repository", "an absolute path, ssh://"),
        ({"repository": "ssh://borg@-oProxy/srv"}, "repository", "an absolute path, ssh://"),
        ({"repository": "ssh://nas:0/srv"}, "repository", "port must be between 1 and 65535"),
        ({"repository": "ssh://nas:70000/srv"}, "repository", "port must be between 1 and 65535"),
        ({"repository": "nas://srv/repo"}, "repository", "an absolute path, ssh://"),
        ({"repository": "file:///srv/repo"}, "repository", "an absolute path, ssh://"),
        ({"repository": "/srv/{now:..}/etc"}, "repository", "must not contain '{' or '}'"),
        ({"repository": "nas:{hostname}"}, "repository", "must not contain '{' or '}'"),
        # paths
        ({"paths": ["/home/../etc"]}, "paths[0]", "must not contain '..'"),
        ({"paths": ["/home", "/srv/.."]}, "paths[1]", "must not contain '..'"),
        ({"paths": ["/home\tx"]}, "paths[0]", "control characters"),
        ({"paths": ["/home/\x7f"]}, "paths[0]", "control characters"),
        ({"paths": ["/" + "p" * 4096]}, "paths[0]", "at most 4096 characters"),
        ({"paths": ["/home"] * 1001}, "paths", "at most 1000 entries"),
        ({"paths": ["/home/\ud800"]}, "paths[0]", "valid text"),
        # exclude_patterns
        ({"exclude_patterns": ["*.tmp\x1b"]}, "exclude_patterns[0]", "control characters"),
        ({"exclude_patterns": ["ok", "a\tb"]}, "exclude_patterns[1]", "control characters"),
        ({"exclude_patterns": ["p" * 4097]}, "exclude_patterns[0]", "at most 4096 characters"),
        ({"exclude_patterns": ["x"] * 1001}, "exclude_patterns", "at most 1000 entries"),
        # exclude_if_present
        ({"exclude_if_present": ["."]}, "exclude_if_present[0]", "a file name"),
        ({"exclude_if_present": [".."]}, "exclude_if_present[0]", "a file name"),
        ({"exclude_if_present": ["a\x01"]}, "exclude_if_present[0]", "control characters"),
        ({"exclude_if_present": ["n" * 256]}, "exclude_if_present[0]", "at most 255 characters"),
        ({"exclude_if_present": ["x"] * 101}, "exclude_if_present", "at most 100 entries"),
        # patterns ending in a newline (a regular expression's $ matches before it)
        ({"archive_prefix": "nas\n"}, "archive_prefix", "a letter or digit"),
        ({"compression": "lz4\n"}, "compression", "none, lz4, zstd[,1-22]"),
        # borg_remote_path: borg hands it to a shell on the repository host
        ({"borg_remote_path": "borg;id"}, "borg_remote_path", "the borg command"),
        ({"borg_remote_path": "$(id)"}, "borg_remote_path", "the borg command"),
        ({"borg_remote_path": "borg|tee"}, "borg_remote_path", "the borg command"),
        ({"borg_remote_path": "'borg'"}, "borg_remote_path", "the borg command"),
        ({"borg_remote_path": "/b" * 200}, "borg_remote_path", "at most 256 characters"),
        # borg_rsh: ssh itself, host keys always verified
        ({"borg_rsh": "/tmp/evil/ssh"}, "borg_rsh", "must start with ssh or /usr/bin/ssh"),
        ({"borg_rsh": "/usr/local/bin/ssh"}, "borg_rsh", "must start with ssh or /usr/bin/ssh"),
        (
            {"borg_rsh": "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"},
            "borg_rsh",
            "StrictHostKeyChecking may only be yes",
        ),
        (
            {"borg_rsh": "ssh -o StrictHostKeyChecking=accept-new"},
            "borg_rsh",
            "StrictHostKeyChecking may only be yes",
        ),
        (
            {"borg_rsh": "ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/dev/null"},
            "borg_rsh",
            "UserKnownHostsFile must not be /dev/null",
        ),
        (
            {"borg_rsh": "ssh -o UserKnownHostsFile=/etc/kh"},
            "borg_rsh",
            "needs -o StrictHostKeyChecking=yes",
        ),
        ({"borg_rsh": "ssh -o ProxyCommand=id"}, "borg_rsh", "not allowed"),
        ({"borg_rsh": "ssh -A"}, "borg_rsh", "may only use the ssh options"),
        ({"borg_rsh": "ssh -p 0"}, "borg_rsh", "-p must be a port number"),
        ({"borg_rsh": "ssh -o 'StrictHostKeyChecking no'"}, "borg_rsh", "KEY=VALUE"),
        ({"borg_rsh": "ssh\t-v"}, "borg_rsh", "control characters"),
        # passphrase (never echoed)
        ({"passphrase": "nul\x00inside"}, "passphrase", "without NUL"),
        ({"passphrase": "p" * 4097}, "passphrase", "at most 4096 characters"),
    ],
)
def test_what_the_agent_rejects_is_a_problem_naming_drone_and_key(
    changes: dict[str, Any], key: str, expected: str
) -> None:
    problem = drone_problem(minimal_drone(**changes))
    assert problem.key == key
    assert expected in problem.message
    assert str(problem).startswith(f"drone 'nas': key {key!r}: ")
    if "passphrase" in changes:
        assert "inside" not in str(problem)
        assert "ppppp" not in str(problem)


@pytest.mark.parametrize(
    "repository",
    [
        "ssh://nas.lan/srv/borg",
        "ssh://nas.lan:2222/./borg",
        "ssh://[fd00::1]/srv/borg",
        "nas.lan:borg",
        "nas.lan:/srv/borg",
        "nas.lan:~/borg",
        "[fd00::1]:/srv/borg",
        "borg@[fd00::1]:/srv/borg",
        "ssh://my_nas/srv/borg",
    ],
)
def test_every_location_the_agent_accepts_is_accepted(repository: str) -> None:
    config = parse_config(app_args(drones={"nas": minimal_drone(repository=repository)}), BASE)
    assert config.problems == ()
    assert config.drones[0].repository == repository


@pytest.mark.parametrize(
    "borg_rsh",
    [
        "ssh -i /root/.ssh/store",
        "/usr/bin/ssh -p 2222 -o BatchMode=yes",
        "ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/backup/store_known_hosts",
    ],
)
def test_borg_rsh_the_agent_accepts_is_accepted(borg_rsh: str) -> None:
    config = parse_config(app_args(drones={"nas": minimal_drone(borg_rsh=borg_rsh)}), BASE)
    assert config.problems == ()
    assert config.drones[0].borg_rsh == borg_rsh


def agent_accepts(field: str, value: object) -> bool:
    job = {"protocol": 1, "repository": "/srv/borg", field: value}
    try:
        agent.validate_job("list", job)
    except agent.Rejected:
        return False
    return True


def config_accepts(key: str, value: object) -> bool:
    return parse_config(app_args(drones={"nas": minimal_drone(**{key: value})}), BASE).drones != ()


LOCATION_PIECES = st.sampled_from(
    [
        "ssh://",
        "borg@",
        "nas",
        "[fd00::1]",
        ":",
        "::",
        "22",
        "0",
        "/",
        "./",
        "~",
        "~zoe",
        "..",
        ".",
        "srv",
        "-o",
        "x",
        "@",
        "%",
        " ",
        "\t",
        "_",
        "//",
        "file://",
        "{now:..}",
    ]
)
RSH_PIECES = st.sampled_from(
    [
        "ssh",
        "/usr/bin/ssh",
        "/tmp/ssh",
        "-i",
        "/k",
        "-p",
        "22",
        "0",
        "-o",
        "-A",
        "-4",
        "-C",
        "StrictHostKeyChecking=yes",
        "StrictHostKeyChecking=no",
        "stricthostkeychecking=YES",
        "UserKnownHostsFile=/kh",
        "UserKnownHostsFile=/dev/null",
        "ProxyCommand=id",
        "BatchMode=yes",
        "'StrictHostKeyChecking no'",
        "HostKeyAlias=x",
        "'",
        "-F",
        "x=y=z",
    ]
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(LOCATION_PIECES, min_size=1, max_size=8))
def test_config_and_agent_agree_on_repositories(pieces: list[str]) -> None:
    repository = "".join(pieces)
    assert config_accepts("repository", repository) == agent_accepts("repository", repository)


@settings(max_examples=300, deadline=None)
@given(words=st.lists(RSH_PIECES, min_size=1, max_size=7))
def test_config_and_agent_agree_on_borg_rsh(words: list[str]) -> None:
    borg_rsh = " ".join(words)
    assert config_accepts("borg_rsh", borg_rsh) == agent_accepts("borg_rsh", borg_rsh)


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["paths", "exclude_patterns", "exclude_if_present"]),
    items=st.lists(
        st.lists(
            st.sampled_from(["/", ".", "..", "a", "*", "-", " ", "\t", "\x00", "\x7f", "é"]),
            max_size=6,
        ).map("".join),
        min_size=1,
        max_size=3,
    ),
)
def test_config_and_agent_agree_on_path_lists(key: str, items: list[str]) -> None:
    assert config_accepts(key, items) == agent_accepts(key, items)


WORD_PIECES = st.sampled_from(
    [
        "a",
        "z",
        "0",
        "9",
        ".",
        "_",
        "-",
        "+",
        "/",
        ",",
        " ",
        "\n",
        ";",
        "$",
        "lz4",
        "zstd",
        "auto,",
        "zlib",
        ",6",
        ",22",
        "none",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["archive_prefix", "compression", "borg_remote_path"]),
    text=st.lists(WORD_PIECES, min_size=1, max_size=5).map("".join),
)
def test_config_and_agent_agree_on_single_words(key: str, text: str) -> None:
    assert config_accepts(key, text) == agent_accepts(key, text)


def test_one_repository_in_two_spellings_is_one_repository() -> None:
    drones = {
        "nas": minimal_drone(repository="ssh://borg@store/srv/borg"),
        "pc": minimal_drone(repository="borg@store:/srv/borg/", archive_prefix="nas"),
    }
    config = parse_config(app_args(drones=drones), BASE)
    assert config.drones[0].repository_key == "ssh://store:22/srv/borg"
    problem = only_problem(config)
    assert (problem.drone, problem.key) == ("pc", "archive_prefix")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ssh://borg@store/./borg", "borg@store:borg"),
        ("ssh://store/~/borg", "store:~/borg"),
        ("ssh://store:2222/srv", "ssh://store:2222/srv/."),
        ("ssh://store/srv/borg", "ssh://store:22/srv/borg"),
        ("ssh://borg@store/srv/borg", "ssh://root@STORE./srv/borg/"),
        ("borg@store:/srv/borg", "store:/srv//borg"),
        ("ssh://borg@store/~alice/r", "ssh://root@store/~alice/r"),
        ("ssh://127.0.0.1/srv/r", "/srv/r"),
    ],
)
def test_repository_keys_of_the_same_location_are_equal(first: str, second: str) -> None:
    keys = [
        parse_config(app_args(drones={"nas": minimal_drone(repository=r)}), BASE)
        .drones[0]
        .repository_key
        for r in (first, second)
    ]
    assert keys[0] == keys[1]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ssh://store/./borg", "ssh://store/borg"),
        ("ssh://store/~/borg", "store:borg"),
        ("ssh://borg@store/~/r", "ssh://root@store/~/r"),
        ("borg@store:r", "root@store:r"),
        ("ssh://store/srv/borg", "ssh://store:2222/srv/borg"),
        ("ssh://store/srv/borg", "ssh://store/srv/borg2"),
    ],
)
def test_repository_keys_of_different_locations_differ(first: str, second: str) -> None:
    keys = [
        parse_config(app_args(drones={"nas": minimal_drone(repository=r)}), BASE)
        .drones[0]
        .repository_key
        for r in (first, second)
    ]
    assert keys[0] != keys[1]


def test_the_drone_name_coordinator_is_reserved() -> None:
    config = parse_config(
        app_args(drones={"coordinator": minimal_drone(), "nas": minimal_drone(repository="/r")}),
        BASE,
    )
    assert [d.name for d in config.drones] == ["nas"]
    problem = only_problem(config)
    assert (problem.drone, problem.key) == ("coordinator", "name")
    assert "input_select.borg_coordinator_mode" in problem.message
    assert "global mode" in problem.message
    assert str(problem).startswith("drone 'coordinator': key 'name': ")


def test_the_reserved_name_follows_the_entity_prefix() -> None:
    config = parse_config(
        app_args(entity_prefix="borg", drones={"coordinator": minimal_drone()}), BASE
    )
    assert "input_select.borg_coordinator_mode" in only_problem(config).message


# --- one repository, one key ------------------------------------------------------------------


def two_drones(first: dict[str, Any], second: dict[str, Any]) -> Config:
    drones = {
        "nas": minimal_drone(**first),
        "pc": minimal_drone(**{"host": "pc.lan", "archive_prefix": "pc", **second}),
    }
    return parse_config(app_args(drones=drones), BASE)


def keys(config: Config) -> list[str]:
    return [drone.repository_key for drone in config.drones]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # The NAS backs itself up to a local path; the PC reaches the same folder over ssh.
        ({"repository": "/srv/borg/r"}, {"repository": "ssh://borg@nas.lan/srv/borg/r"}),
        ({"repository": "/srv/borg/r"}, {"repository": "borg@NAS.lan:/srv/borg/r/"}),
        (
            {"host": "pc.lan", "repository": "ssh://borg@nas.lan/srv/borg/r"},
            {"repository": "ssh://borg@nas.lan:22/srv/borg/r"},
        ),
    ],
)
def test_one_repository_written_two_ways_gets_one_key(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    config = two_drones(first, second)
    assert not config.problems, config.problems
    assert keys(config)[0] == keys(config)[1]
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Two names that may be one host, a port that may lead to the same sshd.
        ({"repository": "ssh://borg@nas/srv/borg/r"}, {"repository": "ssh://nas.lan/srv/borg/r"}),
        ({"repository": "/srv/borg/r"}, {"repository": "ssh://borg@nas.lan:2222/srv/borg/r"}),
    ],
)
def test_repositories_that_may_be_one_are_warned_about(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    config = two_drones(first, second)
    assert not config.problems, config.problems
    assert keys(config)[0] != keys(config)[1]
    (warning,) = config.warnings
    assert "'nas'" in warning
    assert "'pc'" in warning
    assert "repository_id" in warning


def test_unrelated_repositories_are_neither_merged_nor_warned_about() -> None:
    config = two_drones({"repository": "/srv/borg/r"}, {"repository": "/srv/borg/r"})
    assert keys(config) == ["ssh://nas.lan:22/srv/borg/r", "ssh://pc.lan:22/srv/borg/r"]
    assert config.warnings == ()


def test_repository_id_is_the_key_and_settles_a_warning() -> None:
    config = two_drones(
        {"repository": "ssh://borg@nas/srv/borg/r", "repository_id": "nas-main"},
        {"repository": "ssh://nas.lan/srv/borg/r", "repository_id": "nas-main"},
    )
    assert keys(config) == ["id:nas-main", "id:nas-main"]
    assert config.warnings == ()
    assert config.drones[0].repository_id == "nas-main"


def test_repository_id_joins_the_archive_prefix_check() -> None:
    config = two_drones(
        {"repository": "/srv/a", "repository_id": "shared"},
        {"repository": "/srv/b", "repository_id": "shared", "archive_prefix": "nas"},
    )
    problem = only_problem(config)
    assert (problem.drone, problem.key) == ("pc", "archive_prefix")


@pytest.mark.parametrize("value", ["", "has space", "-x", 7, "a/b"])
def test_repository_id_must_be_a_name(value: object) -> None:
    problem = drone_problem(minimal_drone(repository_id=value))
    assert problem.key == "repository_id"


def test_repository_id_is_set_per_drone_not_in_defaults() -> None:
    with pytest.raises(ConfigError, match=re.escape("defaults.repository_id")):
        parse_config(app_args(defaults={"repository_id": "x"}), BASE)


# --- the job must fit the agent's line --------------------------------------------------------


def long_paths(count: int, length: int) -> list[str]:
    return [f"/{index:04d}" + "p" * (length - 5) for index in range(count)]


@pytest.mark.parametrize("key", ["paths", "exclude_patterns"])
def test_a_job_longer_than_the_agent_accepts_is_a_problem_naming_the_key(key: str) -> None:
    # 1000 entries of 4096 characters pass every per-value check but make a 4 MiB job line.
    settings = minimal_drone(**{key: long_paths(1000, 4096)})
    problem = drone_problem(settings)
    assert problem.key == key
    assert "the agent accepts" in problem.message


def test_the_largest_job_that_is_accepted_fits_the_agents_line() -> None:
    agent = load_agent()
    for count in (200, 240, 250, 260, 300):
        config = parse_config(
            app_args(drones={"nas": minimal_drone(paths=long_paths(count, 4096))}), BASE
        )
        if config.problems:
            assert only_problem(config).key == "paths"
            continue
        drone = config.drones[0]
        job = build_job(drone, drone.settings, OPERATIONS[Operation.SCHEDULED].steps)
        line = json.dumps(job).encode()
        assert len(line) <= agent.JOB_LINE_LIMIT - JOB_SIZE_MARGIN


def test_the_configs_job_line_limit_is_the_agents() -> None:
    assert load_agent().JOB_LINE_LIMIT == AGENT_JOB_LINE_LIMIT


# --- session limits -------------------------------------------------------------------------


def test_session_limits_default_per_step() -> None:
    config = parse_config(app_args(), BASE)
    assert config.limits.hello_seconds == DEFAULT_HELLO_TIMEOUT
    assert dict(config.limits.inactivity_minutes) == DEFAULT_INACTIVITY_MINUTES
    assert set(DEFAULT_INACTIVITY_MINUTES) == {*STEPS, "offsite"}
    # the lock wait is silent too, so it comes on top
    assert config.limits.silence_seconds("create", 60) == 30 * 60 + 60


def test_session_limits_are_read_from_apps_yaml() -> None:
    config = parse_config(
        app_args(hello_timeout=5, inactivity_timeout_minutes={"prune": 600}), BASE
    )
    assert config.limits.hello_seconds == 5
    assert config.limits.inactivity_minutes["prune"] == 600
    assert config.limits.inactivity_minutes["create"] == DEFAULT_INACTIVITY_MINUTES["create"]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"hello_timeout": 0}, "hello_timeout"),
        ({"hello_timeout": "soon"}, "hello_timeout"),
        ({"inactivity_timeout_minutes": 10}, "inactivity_timeout_minutes"),
        ({"inactivity_timeout_minutes": {"backup": 10}}, "inactivity_timeout_minutes.backup"),
        ({"inactivity_timeout_minutes": {"create": 0}}, "inactivity_timeout_minutes.create"),
        ({"inactivity_timeout_minutes": {"create": 1.5}}, "inactivity_timeout_minutes.create"),
    ],
)
def test_invalid_session_limits_are_rejected_naming_the_key(args: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"key {key!r}")):
        parse_config(app_args(**args), BASE)


@pytest.mark.parametrize(
    ("repository", "borg_rsh"),
    [
        ("ssh://borg@nas:2222/srv/r", "ssh -p 2222 -o Port=2222"),
        ("/srv/borg/nas", "ssh -p 2222"),  # a local repository never runs ssh
        ("borg@nas:/srv/r", "ssh -i /root/.ssh/borg"),
    ],
)
def test_borg_rsh_ports_the_agent_accepts_are_accepted(repository: str, borg_rsh: str) -> None:
    config = parse_config(
        app_args(drones={"nas": minimal_drone(repository=repository, borg_rsh=borg_rsh)}), BASE
    )
    assert not config.problems, config.problems
    job = build_job(config.drones[0], DroneSettings(), ("create",))
    agent.check_rsh_port(agent.validate_job("create", job))


@pytest.mark.parametrize("pattern", ["sh:**/.cache", "*.tmp", "pp:/home/x", "pf:/a/b", "fm:a*b*c"])
def test_exclude_patterns_the_agent_accepts_are_accepted(pattern: str) -> None:
    config = parse_config(app_args(drones={"nas": minimal_drone(exclude_patterns=[pattern])}), BASE)
    assert not config.problems, config.problems
    agent.validate_job("create", build_job(config.drones[0], DroneSettings(), ("create",)))
