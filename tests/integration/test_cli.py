"""The CLI as a person runs it: ``python -m backup_coordinator --config apps.yaml COMMAND`` in a
subprocess, against a loopback drone host (real sshd forcing the real agent, real borg).

The apps.yaml is written the way it sits in an AppDaemon config dir: the coordinator's entry
beside another app, the ssh block naming the client key and known_hosts, and the repository
passphrase as ``!secret`` from the secrets.yaml next to it. Two drones share the host, each with
its own repository: ``good``, and ``broken`` whose known_hosts holds another host key. The
host's agent has a policy file that names its restore root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from backup_coordinator.config import load_config_file
from backup_coordinator.transport import PROBE_STEPS
from devstack.borg import create_archive, init_repository, list_archives, run_borg
from devstack.sshd import LoopbackDrone
from tests.integration.coordinator_support import (
    ShiftedClock,
    saved_state,
    settle,
    started_coordinator,
)
from tests.integration.transport_support import agent_command, write_tiny_data

pytestmark = pytest.mark.integration

SECRET_PASSPHRASE = "cli only passphrase 4e1d-b7"
CLI_TIMEOUT = 60.0
DRONES = ("broken", "good")  # the order the CLI reports them in (by name)


@dataclass
class CliSetup:
    sshd: LoopbackDrone
    base_dir: Path
    repositories: dict[str, Path]
    apps_yaml: Path
    wrong_known_hosts: Path
    data: Path
    restore_root: Path

    def archives(self, drone: str) -> list[str]:
        return list_archives(self.repositories[drone], SECRET_PASSPHRASE, self.base_dir)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[CliSetup]:
    base_dir = tmp_path / "borg-base"
    data = tmp_path / "data"
    write_tiny_data(data)
    repositories = {name: tmp_path / "repos" / name for name in DRONES}
    (tmp_path / "repos").mkdir()
    for repository in repositories.values():
        init_repository(repository, SECRET_PASSPHRASE, base_dir)
    restore_root = tmp_path / "restore"
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"repositories": ["/"], "paths": ["/"], "restore_root": str(restore_root)})
    )
    command = [*agent_command(), "--policy", str(policy)]
    sshd = LoopbackDrone(tmp_path / "sshd", command, env={"BORG_BASE_DIR": str(base_dir)})
    with sshd:
        config_dir = tmp_path / "appdaemon"
        config_dir.mkdir()
        (config_dir / "secrets.yaml").write_text(f'borg_passphrase: "{SECRET_PASSPHRASE}"\n')
        wrong = sshd.wrong_known_hosts()
        apps_yaml = config_dir / "apps.yaml"
        apps_yaml.write_text(
            f"""\
hello_world:
  module: hello
  class: HelloWorld

backup_coordinator:
  module: backup_coordinator.app
  class: BackupCoordinator
  state_file: backup_coordinator_state.json
  progress_interval: 0.5
  ssh:
    user: {sshd.user}
    port: {sshd.port}
    client_key: {sshd.client_key}
    known_hosts: {sshd.known_hosts}
    connect_timeout: 5
    keepalive_interval: 5
  defaults:
    passphrase: !secret borg_passphrase
    paths:
      - {data}
    lock_wait: 1
  drones:
    good:
      host: 127.0.0.1
      repository: {repositories["good"]}
    broken:
      host: 127.0.0.1
      repository: {repositories["broken"]}
      known_hosts: {wrong}
"""
        )
        yield CliSetup(sshd, base_dir, repositories, apps_yaml, wrong, data, restore_root)
    assert sshd.pid is None


def cli(setup: CliSetup, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the CLI; whatever it prints, the passphrase is never in it."""
    completed = subprocess.run(
        [sys.executable, "-m", "backup_coordinator", "--config", str(setup.apps_yaml), *args],
        cwd=setup.apps_yaml.parent.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert SECRET_PASSPHRASE not in completed.stdout
    assert SECRET_PASSPHRASE not in completed.stderr
    return completed


def check_lines(stdout: str, drone: str) -> list[str]:
    """The doctor's check lines for one drone (a fix goes on the line after a FAIL)."""
    return [line for line in stdout.splitlines() if line.split()[:1] == [drone]]


def fix_after(stdout: str, check_line: str) -> str:
    lines = stdout.splitlines()
    following = lines[lines.index(check_line) + 1].strip()
    assert following.startswith("fix: "), following
    return following


def test_doctor_passes_every_check_on_a_good_drone(setup: CliSetup) -> None:
    done = cli(setup, "doctor", "good")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = check_lines(done.stdout, "good")
    assert [line.split()[1] for line in lines] == ["ok"] * (len(PROBE_STEPS) + 1)
    for line, check in zip(lines, [*PROBE_STEPS, "repository"], strict=True):
        assert check in line
    assert "borg 1." in lines[len(PROBE_STEPS) - 1]
    assert f"{setup.repositories['good']}: 0 archive(s) of good-*" in lines[-1]
    assert lines[-1].endswith(", encryption repokey-blake2")
    assert "fix:" not in done.stdout
    assert "warning:" not in done.stdout
    assert done.stdout.splitlines()[-1] == "all checks passed"
    assert check_lines(done.stdout, "broken") == []


def test_doctor_warns_that_the_key_of_a_keyfile_repository_lives_only_on_the_drone(
    setup: CliSetup,
) -> None:
    repository = setup.repositories["good"]
    shutil.rmtree(repository)
    init = ["init", "--encryption=keyfile-blake2", "--", str(repository)]
    run_borg(init, SECRET_PASSPHRASE, setup.base_dir)
    (keyfile,) = (setup.base_dir / ".config" / "borg" / "keys").iterdir()
    done = cli(setup, "doctor", "good")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = check_lines(done.stdout, "good")
    assert [line.split()[1] for line in lines] == ["ok"] * (len(PROBE_STEPS) + 1)
    assert lines[-1].endswith(", encryption keyfile-blake2")
    printed = done.stdout.splitlines()
    assert printed[printed.index(lines[-1]) + 1] == (
        f"{'':<23}warning: the key lives only on the drone (keyfile mode: {keyfile}):"
        f" export it with `borg key export {repository} FILE` and keep the file elsewhere;"
        " without it the archives cannot be read"
    )
    assert printed[-1] == "all checks passed"


def test_doctor_fails_a_wrong_host_key_with_the_fix(setup: CliSetup) -> None:
    done = cli(setup, "doctor")
    assert done.returncode == 1, done.stdout + done.stderr
    assert [line.split()[1] for line in check_lines(done.stdout, "good")] == ["ok"] * 5
    broken = check_lines(done.stdout, "broken")
    assert [line.split()[1] for line in broken] == ["ok", "FAIL", "FAIL", "FAIL"]
    assert "host key of 127.0.0.1" in broken[1]
    fix = fix_after(done.stdout, broken[1])
    assert f"ssh-keyscan -p {setup.sshd.port} 127.0.0.1 >> {setup.wrong_known_hosts}" in fix
    assert all("not run: an earlier step failed" in line for line in broken[2:])
    assert not any("repository" in line for line in broken)
    assert done.stdout.splitlines()[-1] == "3 check(s) failed"


def test_doctor_fails_a_stopped_sshd_with_the_fix(setup: CliSetup) -> None:
    port = setup.sshd.port
    setup.sshd.stop()
    done = cli(setup, "doctor", "good")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = check_lines(done.stdout, "good")
    assert lines[0].split()[1] == "FAIL"
    assert "TCP reachable" in lines[0]
    assert f"sshd not running on 127.0.0.1:{port}" in lines[0]
    assert f"sshd listens on port {port}" in fix_after(done.stdout, lines[0])
    assert done.stdout.splitlines()[-1] == f"{len(PROBE_STEPS)} check(s) failed"


def test_run_create_prints_progress_and_a_summary(setup: CliSetup) -> None:
    done = cli(setup, "run", "good", "create")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "good: create ..."
    archives = setup.archives("good")
    assert len(archives) == 1
    assert lines[-1].startswith("create done in ")
    assert f"archive {archives[0]}: 2 files" in lines[-1]
    progress = [line for line in lines[1:-1] if " files, " in line and " read, " in line]
    assert progress, f"no progress line in {done.stdout!r}"
    assert setup.archives("broken") == []


async def test_status_shows_what_a_coordinator_run_recorded(setup: CliSetup) -> None:
    config = load_config_file(setup.apps_yaml)
    assert config.state_file == setup.apps_yaml.parent / "backup_coordinator_state.json"
    coordinator, _, runner = await started_coordinator(config, ShiftedClock())
    await coordinator.tick()
    await settle(coordinator)
    await coordinator.stop()
    assert runner.outcomes[0] == ("broken", "create", "OperationFailed"), runner.errors
    assert runner.outcomes[1:] == [("good", op, "ok") for op in ("create", "prune", "stats")], (
        runner.errors
    )
    saved = saved_state(config)["drones"]

    done = cli(setup, "status")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"coordinator: running; state file {config.state_file}"
    good = check_lines(done.stdout, "good")
    assert len(good) == 1
    last_backup = datetime.fromisoformat(saved["good"]["last_backup"])
    assert f"last backup {last_backup.isoformat(timespec='seconds')}" in good[0]
    assert "last prune 20" in good[0]
    assert "MiB deduplicated, 0 failure(s) in a row" in good[0]
    broken = check_lines(done.stdout, "broken")
    assert len(broken) == 1
    assert "last backup unknown" in broken[0]
    assert "1 failure(s) in a row" in broken[0]
    error_line = lines[lines.index(broken[0]) + 1].strip()
    assert error_line.startswith("last error (host_key): host key of 127.0.0.1")
    assert SECRET_PASSPHRASE not in config.state_file.read_text()


def test_dashboard_prints_yaml_with_a_card_per_drone(setup: CliSetup) -> None:
    done = cli(setup, "dashboard")
    assert done.returncode == 0, done.stdout + done.stderr
    document = yaml.safe_load(done.stdout)
    sections = document["views"][0]["sections"]
    headings = [section["cards"][0]["heading"] for section in sections]
    assert headings == ["Borg coordinator", *DRONES]
    for drone, section in zip(DRONES, sections[1:], strict=True):
        shown = {
            row["entity"]
            for card in section["cards"]
            if card["type"] == "entities"
            for row in card["entities"]
            if "entity" in row
        }
        problem_text = section["cards"][2]["card"]["content"]
        assert f"states('sensor.borg_{drone}_hint')" in problem_text
        assert f"sensor.borg_{drone}_state" in shown
        assert f"sensor.borg_{drone}_last_backup" in shown
        assert f"binary_sensor.borg_{drone}_problem" in shown
        assert f"input_button.borg_{drone}_create" in shown


def make_archive(setup: CliSetup, name: str) -> None:
    repository = setup.repositories["good"]
    create_archive(repository, name, [setup.data], SECRET_PASSPHRASE, setup.base_dir)


def test_archives_lists_the_drones_archives_newest_first(setup: CliSetup) -> None:
    make_archive(setup, "good-2026-01-01T00:00:00")
    make_archive(setup, "good-2026-01-02T00:00:00")
    done = cli(setup, "archives", "good")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == ["good-2026-01-02T00:00:00", "good-2026-01-01T00:00:00"]
    failed = cli(setup, "archives", "broken")
    assert failed.returncode == 1
    assert "broken: list failed: host_key" in failed.stderr


def test_restore_latest_with_progress_then_prints_the_destination(setup: CliSetup) -> None:
    make_archive(setup, "good-2026-01-01T00:00:00")
    done = cli(setup, "restore", "good", "latest")
    assert done.returncode == 0, done.stdout + done.stderr
    destination = setup.restore_root / "good-2026-01-01T00:00:00"
    assert done.stdout == f"{destination}\n"
    restored = destination / str(setup.data).lstrip("/")
    for name in ("notes.txt", "todo.txt"):
        assert (restored / "docs" / name).read_bytes() == (setup.data / "docs" / name).read_bytes()
    errors = done.stderr.splitlines()
    assert errors[0] == "good: restoring latest ..."
    assert any(line.startswith("restoring ") and "docs/" in line for line in errors), errors
    assert errors[-1].startswith("extract done in ")
    assert "2 files" in errors[-1]


def test_restore_of_one_path_to_a_chosen_directory(setup: CliSetup) -> None:
    make_archive(setup, "good-2026-01-01T00:00:00")
    inside = str(setup.data / "docs" / "todo.txt").lstrip("/")
    target = setup.restore_root / "just-the-todo"
    done = cli(setup, "restore", "good", "good-2026-01-01T00:00:00", inside, "--to", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"{target}\n"
    files = [
        os.path.relpath(os.path.join(d, f), target) for d, _, fs in os.walk(target) for f in fs
    ]
    assert files == [inside]


def test_a_restore_outside_the_restore_root_is_refused(setup: CliSetup, tmp_path: Path) -> None:
    make_archive(setup, "good-2026-01-01T00:00:00")
    outside = tmp_path / "live"
    done = cli(setup, "restore", "good", "latest", "--to", str(outside))
    assert done.returncode == 1
    assert done.stdout == ""
    assert "good: extract failed: rejected" in done.stderr
    assert "destination" in done.stderr
    assert not outside.exists()


def test_drill_prints_what_it_verified(setup: CliSetup) -> None:
    make_archive(setup, "good-2026-01-01T00:00:00")
    done = cli(setup, "drill", "good")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("drill done in ")
    assert "drill of good-2026-01-01T00:00:00: 2 verified" in done.stdout
    assert "0 skipped (changed since), 0 mismatch(es)" in done.stdout
    assert list(setup.restore_root.iterdir()) == []  # the drill cleaned up after itself
