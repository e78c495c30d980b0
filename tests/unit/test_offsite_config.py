"""Offsite targets in apps.yaml: parsed, defaulted, and every mistake named by target and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backup_coordinator.config import Config, parse_config
from backup_coordinator.jobs import build_copy_job
from backup_coordinator.model import CopyTool, Mode
from tests.integration.agent_support import load_agent

SSH = {"client_key": "/keys/id", "known_hosts": "/keys/known_hosts"}
DRONES = {
    "laptop": {"host": "laptop", "repository": "ssh://borg@nas.lan/srv/borg/laptop", "paths": ["/"]}
}


def config_with(tmp_path: Path, **target: Any) -> Config:
    return parse_config(
        {
            "ssh": SSH,
            "drones": DRONES,
            "offsite": {
                "cloud": {
                    "host": "nas.lan",
                    "repositories": ["/srv/borg/laptop"],
                    "destination": "b2:bucket/borg",
                    "tool": "rclone",
                    **target,
                }
            },
        },
        tmp_path,
    )


def problem_of(tmp_path: Path, **target: Any) -> tuple[str, str]:
    config = config_with(tmp_path, **target)
    assert not config.offsite
    (problem,) = config.problems
    assert problem.drone == "cloud"
    assert str(problem).startswith("offsite target 'cloud': key ")
    return problem.key, problem.message


def test_a_target_with_its_defaults(tmp_path: Path) -> None:
    (target,) = config_with(tmp_path).offsite
    assert target.tool is CopyTool.RCLONE
    assert target.ssh.host == "nas.lan"
    assert target.ssh.client_key == "/keys/id"
    assert target.settings.mode is Mode.SCHEDULED
    assert target.settings.frequency_minutes == 1440
    assert target.after_backups is True
    assert target.keep_replaced is False
    assert target.max_delete is None
    assert target.lock_wait == 600


def test_the_target_and_the_drone_writing_into_it_name_one_repository(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    (target,) = config.offsite
    assert target.repository_keys == (config.drones[0].repository_key,)
    assert [d.name for d in config.writers(target.repository_keys[0])] == ["laptop"]


def test_a_repository_id_ties_a_repository_to_drones_that_name_it(tmp_path: Path) -> None:
    (target,) = config_with(
        tmp_path, repositories=[{"path": "/volume1/borg/laptop", "repository_id": "laptop"}]
    ).offsite
    assert target.repository_keys == ("id:laptop",)


def test_options_and_settings_are_read(tmp_path: Path) -> None:
    (target,) = config_with(
        tmp_path,
        tool="rsync",
        destination="backup@offsite.example:/srv/copies",
        tool_options=["--bwlimit=10M", "--compress", "--rsh=ssh -p 2222 -i /keys/offsite"],
        keep_replaced=True,
        max_delete=50,
        frequency=720,
        mode="manual",
        after_backups=False,
    ).offsite
    assert target.tool is CopyTool.RSYNC
    assert target.tool_options == (
        "--bwlimit=10M",
        "--compress",
        "--rsh=ssh -p 2222 -i /keys/offsite",
    )
    assert (target.keep_replaced, target.max_delete) == (True, 50)
    assert target.settings.frequency_minutes == 720
    assert target.settings.mode is Mode.MANUAL
    assert target.after_backups is False


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"tool": "scp"}, "tool", "rclone or rsync"),
        ({"destination": "-x"}, "destination", "'-'"),
        ({"destination": "/srv/../etc"}, "destination", "'..'"),
        ({"destination": ":s3,env_auth:bucket"}, "destination", "rclone remote"),
        ({"destination": "host::module", "tool": "rsync"}, "destination", "rsync over ssh"),
        ({"destination": "rsync://host/x", "tool": "rsync"}, "destination", "rsync over ssh"),
        ({"tool_options": ["--size-only"]}, "tool_options[0]", "not allowed"),
        ({"tool_options": ["--transfers=0"]}, "tool_options[0]", "from 1 to 64"),
        ({"tool_options": ["--bwlimit"]}, "tool_options[0]", "needs a value"),
        ({"tool_options": ["--fast-list=1"]}, "tool_options[0]", "takes no value"),
        ({"tool_options": ["--config=rclone.conf"]}, "tool_options[0]", "absolute path"),
        (
            {"tool": "rsync", "destination": "/x", "tool_options": ["--rsh=sh -c x"]},
            "tool_options[0]",
            "",
        ),
        ({"repositories": []}, "repositories", "list"),
        ({"repositories": ["relative/repo"]}, "repositories[0]", "absolute path"),
        ({"repositories": ["ssh://nas/srv/r"]}, "repositories[0]", "absolute path"),
        ({"repositories": ["/a/repo", "/b/repo"]}, "repositories[1]", "one folder"),
        ({"repositories": [{"path": "/a", "id": "x"}]}, "repositories[0].id", "unknown key"),
        ({"max_delete": -1}, "max_delete", ""),
        ({"frequency": 0}, "frequency", "between"),
        ({"mode": "sometimes"}, "mode", "scheduled, manual, disabled"),
        ({"color": "blue"}, "color", "unknown key"),
        ({"strict_host_key_checking": False}, "strict_host_key_checking", "always verified"),
    ],
)
def test_a_mistake_names_the_target_and_the_key(
    tmp_path: Path, change: dict[str, Any], key: str, words: str
) -> None:
    problem_key, message = problem_of(tmp_path, **change)
    assert problem_key == key
    assert words in message


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    args: dict[str, Any] = {
        "ssh": SSH,
        "drones": DRONES,
        "offsite": {"cloud": {"host": "nas", "repositories": ["/r"], "tool": "rclone"}},
    }
    (problem,) = parse_config(args, tmp_path).problems
    assert (problem.key, problem.message) == ("destination", "required")


def test_a_target_may_not_take_a_drones_name(tmp_path: Path) -> None:
    args: dict[str, Any] = {
        "ssh": SSH,
        "drones": DRONES,
        "offsite": {
            "laptop": {"host": "nas", "repositories": ["/r"], "destination": "/c", "tool": "rsync"}
        },
    }
    (problem,) = parse_config(args, tmp_path).problems
    assert problem.key == "name"
    assert "drone" in problem.message


def test_one_broken_target_leaves_the_others(tmp_path: Path) -> None:
    good = {"host": "nas", "repositories": ["/r"], "destination": "/copy", "tool": "rsync"}
    config = parse_config(
        {
            "ssh": SSH,
            "drones": DRONES,
            "offsite": {"good": good, "bad": {**good, "tool": "ftp"}},
        },
        tmp_path,
    )
    assert [t.name for t in config.offsite] == ["good"]
    assert [p.drone for p in config.problems] == ["bad"]


# --- agreement with the agent: what the coordinator accepts, the agent accepts -----------------

agent = load_agent()

DESTINATIONS = [
    ("rclone", "/srv/copies"),
    ("rclone", "b2:bucket/borg"),
    ("rclone", "sftp-box:/backups"),
    ("rclone", "remote:"),
    ("rsync", "/mnt/usb/borg"),
    ("rsync", "backup@offsite.example:/srv/copies"),
    ("rsync", "offsite:/srv/copies"),
    ("rclone", "-b2:x"),
    ("rclone", ":s3:bucket"),
    ("rclone", "/srv/../etc"),
    ("rsync", "host::module"),
    ("rsync", "rsync://host/module"),
    ("rsync", "host:relative"),
    ("rsync", "b2:bucket"),
]
OPTIONS = [
    ("rclone", "--bwlimit=10M"),
    ("rclone", "--transfers=4"),
    ("rclone", "--checkers=64"),
    ("rclone", "--tpslimit=10"),
    ("rclone", "--config=/home/backup/rclone.conf"),
    ("rclone", "--fast-list"),
    ("rsync", "--bwlimit=512K"),
    ("rsync", "--compress"),
    ("rsync", "--timeout=600"),
    ("rsync", "--rsh=ssh -p 2222 -i /keys/offsite"),
    ("rclone", "--size-only"),
    ("rclone", "--transfers=65"),
    ("rclone", "--config=rclone.conf"),
    ("rclone", "--compress"),
    ("rsync", "--fast-list"),
    ("rsync", "--rsh=sh -c reboot"),
    ("rsync", "--delete-excluded"),
]


def agent_accepts(tool: str, destination: str, options: list[str]) -> bool:
    job = {
        "protocol": 2,
        "repositories": ["/srv/borg/laptop"],
        "tool": tool,
        "destination": destination,
        "tool_options": options,
    }
    try:
        agent.validate_job("offsite", job)
    except agent.Rejected:
        return False
    return True


def coordinator_accepts(tmp_path: Path, tool: str, destination: str, options: list[str]) -> bool:
    config = config_with(tmp_path, tool=tool, destination=destination, tool_options=options)
    return bool(config.offsite)


@pytest.mark.parametrize(("tool", "destination"), DESTINATIONS)
def test_the_agent_and_the_coordinator_agree_on_destinations(
    tmp_path: Path, tool: str, destination: str
) -> None:
    assert coordinator_accepts(tmp_path, tool, destination, []) == agent_accepts(
        tool, destination, []
    )


@pytest.mark.parametrize(("tool", "option"), OPTIONS)
def test_the_agent_and_the_coordinator_agree_on_tool_options(
    tmp_path: Path, tool: str, option: str
) -> None:
    destination = "/srv/copies"
    assert coordinator_accepts(tmp_path, tool, destination, [option]) == agent_accepts(
        tool, destination, [option]
    )


def test_the_agent_accepts_every_job_the_coordinator_builds(tmp_path: Path) -> None:
    (target,) = config_with(
        tmp_path,
        repositories=["/srv/borg/laptop", {"path": "/srv/borg/nas", "repository_id": "nas"}],
        tool_options=["--transfers=4", "--fast-list"],
        keep_replaced=True,
        max_delete=20,
    ).offsite
    for repository in target.repositories:
        job = build_copy_job(target, repository)
        validated = agent.validate_job("offsite", job)
        assert validated.repositories == (repository.path,)
