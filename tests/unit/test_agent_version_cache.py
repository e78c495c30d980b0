"""borg's version, cached per binary: `borg --version` runs only for a binary the agent has not
seen, or one that changed since."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.agent_support import SYSTEM_PYTHON, load_agent

agent = load_agent()

# A stand-in borg that says its version and writes down each time it was asked.
FAKE_BORG = """#!{python}
import sys
with open({log!r}, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
print("borg {version}")
"""


class FakeBorg:
    def __init__(self, directory: Path, version: str = "1.2.4") -> None:
        self.path = directory / "borg"
        self.log = directory / "borg-asked.log"
        self.write(version)

    def write(self, version: str) -> None:
        self.path.write_text(
            FAKE_BORG.format(python=SYSTEM_PYTHON, log=str(self.log), version=version)
        )
        self.path.chmod(0o755)

    def times_asked(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def version(self) -> str:
        return str(agent.borg_version(str(self.path), {"PATH": os.defpath}))


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture
def borg(tmp_path: Path) -> FakeBorg:
    return FakeBorg(tmp_path)


def cache_file(cache_home: Path) -> Path:
    return cache_home / "backup-drone" / "borg-versions.json"


@pytest.mark.usefixtures("cache_home")
def test_the_second_request_does_not_ask_borg(borg: FakeBorg) -> None:
    assert borg.version() == "1.2.4"
    assert borg.version() == "1.2.4"
    assert borg.times_asked() == 1


def test_the_cache_is_keyed_by_the_resolved_binary(
    borg: FakeBorg, cache_home: Path, tmp_path: Path
) -> None:
    link = tmp_path / "borg-link"
    link.symlink_to(borg.path)
    assert borg.version() == "1.2.4"
    assert agent.borg_version(str(link), {}) == "1.2.4"
    assert borg.times_asked() == 1
    entries = json.loads(cache_file(cache_home).read_text())
    status = borg.path.stat()
    assert entries == {
        str(borg.path): {
            "inode": status.st_ino,
            "size": status.st_size,
            "mtime_ns": status.st_mtime_ns,
            "version": "1.2.4",
        }
    }
    assert cache_file(cache_home).stat().st_mode & 0o077 == 0


@pytest.mark.usefixtures("cache_home")
def test_a_binary_of_another_size_is_asked_again(borg: FakeBorg) -> None:
    assert borg.version() == "1.2.4"
    stat = borg.path.stat()
    borg.write("1.4.10")  # a longer file
    os.utime(borg.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert borg.version() == "1.4.10"
    assert borg.times_asked() == 2


@pytest.mark.usefixtures("cache_home")
def test_a_binary_with_another_mtime_is_asked_again(borg: FakeBorg) -> None:
    assert borg.version() == "1.2.4"
    stat = borg.path.stat()
    borg.write("1.2.5")  # the same size
    assert borg.path.stat().st_size == stat.st_size
    os.utime(borg.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert borg.version() == "1.2.5"
    assert borg.times_asked() == 2


@pytest.mark.usefixtures("cache_home")
def test_a_replaced_binary_is_asked_again(borg: FakeBorg, tmp_path: Path) -> None:
    assert borg.version() == "1.2.4"
    stat = borg.path.stat()
    replacement = tmp_path / "borg.new"
    replacement.write_bytes(borg.path.read_bytes().replace(b"1.2.4", b"1.2.8"))
    replacement.chmod(0o755)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(borg.path)  # same size and mtime, another inode
    assert borg.version() == "1.2.8"
    assert borg.times_asked() == 2


def test_an_unwritable_cache_means_asking_every_time(
    borg: FakeBorg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_directory))  # works even for root
    assert borg.version() == "1.2.4"
    assert borg.version() == "1.2.4"
    assert borg.times_asked() == 2
    assert {p.name for p in tmp_path.iterdir()} == {"borg", "borg-asked.log", "file"}  # no debris


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"BORG": "x"}',
        '{"BORG": {"inode": 1, "size": 2, "mtime_ns": 3, "version": "1.0"}}',
        '{"BORG": {"inode": "INODE", "size": "SIZE", "mtime_ns": "MTIME", "version": "1\\n"}}',
        '{"BORG": {"inode": "INODE", "size": "SIZE", "mtime_ns": "MTIME"}}',
    ],
)
def test_a_damaged_or_foreign_cache_is_ignored_and_rewritten(
    borg: FakeBorg, cache_home: Path, content: str
) -> None:
    status = borg.path.stat()
    for placeholder, value in [
        ("BORG", str(borg.path)),
        ('"INODE"', str(status.st_ino)),
        ('"SIZE"', str(status.st_size)),
        ('"MTIME"', str(status.st_mtime_ns)),
    ]:
        content = content.replace(placeholder, value)
    cache_file(cache_home).parent.mkdir(parents=True)
    cache_file(cache_home).write_text(content)
    assert borg.version() == "1.2.4"
    assert borg.times_asked() == 1
    assert json.loads(cache_file(cache_home).read_text())[str(borg.path)]["version"] == "1.2.4"


@pytest.mark.usefixtures("cache_home")
def test_a_borg_that_fails_is_not_cached(tmp_path: Path) -> None:
    failing = tmp_path / "borg"
    failing.write_text("#!/bin/sh\nexit 2\n")
    failing.chmod(0o755)
    assert agent.borg_version(str(failing), {}) == ""
    assert not (tmp_path / "cache-home").exists()


@pytest.mark.usefixtures("cache_home")
def test_only_the_newest_binaries_are_remembered(tmp_path: Path) -> None:
    borgs = []
    for index in range(agent.VERSION_CACHE_ENTRIES + 2):
        directory = tmp_path / f"b{index}"
        directory.mkdir()
        borgs.append(FakeBorg(directory))
        assert borgs[-1].version() == "1.2.4"
    entries = json.loads(cache_file(tmp_path / "cache-home").read_text())
    assert list(entries) == [str(borg.path) for borg in borgs[2:]]


def test_without_xdg_cache_home_the_cache_is_in_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/zoe")
    assert agent.version_cache_path({"XDG_CACHE_HOME": "relative/dir"}) == (
        "/home/zoe/.cache/backup-drone/borg-versions.json"
    )
    assert agent.version_cache_path({"XDG_CACHE_HOME": "/var/cache/x"}) == (
        "/var/cache/x/backup-drone/borg-versions.json"
    )


def test_a_missing_or_unexecutable_borg_is_not_found(tmp_path: Path) -> None:
    plain = tmp_path / "borg"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    assert agent.find_borg(agent.Policy(borg=str(plain)), {}) is None
    assert agent.find_borg(agent.Policy(borg=str(tmp_path / "none")), {}) is None
    assert agent.find_borg(agent.Policy(), {"PATH": str(tmp_path)}) is None
    plain.chmod(0o755)
    assert agent.find_borg(agent.Policy(), {"PATH": f"relative:{tmp_path}"}) == str(plain)
    assert agent.borg_version(None, {}) == ""
