"""The recovery runbook (docs/recovery.md) run as written, with real borg, rclone, rsync and the
real agent.

A runnable block of the page is a fenced block right after ``<!-- test: NAME -->``. Each of its
lines is one command as a person types it: ``export NAME=VALUE``, ``cd DIR``, or a program and
its arguments, which runs from an argv list (never a shell; a test below checks that no line
needs one). A host is a folder standing in for a machine's ``/``: the page's example places
(``/root``, ``/home``, ``/srv/borg/laptop`` on the NAS, ``/mnt/usb``) are replaced, word by word,
with the test's folders; nothing else in a command is changed. Its environment is what a root
shell has (``PATH``, ``HOME``, an English locale), so borg keeps its keys, cache and security
state in that host's ``/root`` as on a real one, and losing a host is deleting its folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devstack.borg import PROJECT_ROOT, borg_env
from tests.integration.agent_support import run_agent

pytestmark = pytest.mark.integration

RUNBOOK = PROJECT_ROOT / "docs" / "recovery.md"
PASSPHRASE = "recovery runbook passphrase 91c2"
ARCHIVE = "laptop-2026-11-30T03:00:00.000000"  # the page's example archive name
LATER_ARCHIVE = "laptop-2026-12-01T03:00:00.000000"  # a backup made after the offsite copy
COMMAND_TIMEOUT = 120.0
BLOCK = re.compile(
    r"^[ \t]*<!-- test: (?P<name>[a-z-]+) -->\n(?P<indent>[ \t]*)```(?P<kind>[a-z]*)\n"
    r"(?P<body>.*?)^[ \t]*```",
    re.M | re.S,
)
# What a command line must not hold, so that typing it into a shell does what the test runs.
SHELL_SYNTAX = re.compile(r"[$`|;&<>(){}*?\[\]~\\]")


def runbook_blocks() -> dict[str, tuple[str, list[str]]]:
    """Every marked block of the page: name -> (kind, lines)."""
    blocks: dict[str, tuple[str, list[str]]] = {}
    for match in BLOCK.finditer(RUNBOOK.read_text()):
        assert match["name"] not in blocks, f"two blocks named {match['name']!r}"
        lines = textwrap.dedent(match["body"]).splitlines()
        blocks[match["name"]] = (match["kind"], [line for line in lines if line.strip()])
    return blocks


def runbook(name: str) -> list[str]:
    return runbook_blocks()[name][1]


@dataclass
class Host:
    """A machine of the runbook: ``root`` stands for its ``/``."""

    root: Path
    places: dict[str, Path]
    placeholders: dict[str, str] = field(default_factory=dict)  # words a person fills in
    env: dict[str, str] = field(init=False)
    cwd: Path = field(init=False)

    def __post_init__(self) -> None:
        home = self.root / "root"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
        }
        self.cwd = home

    def substitute(self, text: str) -> str:
        """``text`` with each example place, where a word (or a VALUE after ``=``) starts with
        it, replaced by this host's folder."""
        names = sorted(self.places, key=len, reverse=True)
        pattern = r"(?<![^\s=])(" + "|".join(map(re.escape, names)) + r")(?=/|\s|$)"
        text = re.sub(pattern, lambda match: str(self.places[match[1]]), text)
        for placeholder, value in self.placeholders.items():
            text = text.replace(placeholder, value)
        return text

    def run(self, lines: list[str]) -> list[subprocess.CompletedProcess[str]]:
        """Runs the lines in order as a person would, up to the first command that fails."""
        done: list[subprocess.CompletedProcess[str]] = []
        for line in lines:
            words = [self.substitute(word) for word in shlex.split(line, comments=True)]
            if not words:
                continue
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                self.env[name] = value
            elif words[0] == "cd":
                self.cwd = Path(words[1])
            else:
                completed = subprocess.run(
                    words,
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_TIMEOUT,
                    check=False,
                )
                done.append(completed)
                if completed.returncode != 0:
                    break
        return done

    def run_ok(self, lines: list[str]) -> list[subprocess.CompletedProcess[str]]:
        """Runs the lines; every command must succeed. Returns each command's outcome."""
        done = self.run(lines)
        commands = [
            line for line in lines if shlex.split(line, comments=True)[0] not in ("export", "cd")
        ]
        last = done[-1]
        assert last.returncode == 0, f"{last.args} exited {last.returncode}: {last.stderr}"
        assert len(done) == len(commands)
        return done

    def borg(self, *args: str) -> None:
        """borg as the host's root ran it before the loss (making repositories and archives)."""
        env = {**self.env, "BORG_PASSPHRASE": PASSPHRASE}
        subprocess.run(
            ["borg", *args],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=COMMAND_TIMEOUT,
        )

    def write_passphrase_file(self) -> None:
        path = self.root / "root" / "borg-passphrase"
        path.write_text(PASSPHRASE + "\n")
        path.chmod(0o600)


class Network:
    """The folders of one test: the NAS's repository, the USB disk, and the hosts."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.repository = tmp_path / "nas" / "srv" / "borg" / "laptop"
        self.repository.parent.mkdir(parents=True)
        self.usb = tmp_path / "usb"

    def host(self, name: str) -> Host:
        root = self.tmp_path / name
        (root / "root").mkdir(parents=True)
        (root / "home").mkdir()
        places = {
            "/root": root / "root",
            "/home": root / "home",
            "/srv/borg/laptop": self.repository,
            "/mnt/usb": self.usb,
        }
        return Host(root, places)


def tree_of(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder``: its path relative to it -> its content."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def write_zoes_files(host: Host) -> dict[str, bytes]:
    """The live files of the laptop; returns them as ``tree_of`` its /home shows them."""
    thesis = host.root / "home" / "zoe" / "thesis"
    (thesis / "notes").mkdir(parents=True)
    (thesis / "thesis.odt").write_bytes(random.Random(3).randbytes(300 * 1024))
    (thesis / "notes" / "chapter 1.txt").write_text("the first chapter\n" * 50)
    (host.root / "home" / "zoe" / "todo.txt").write_text("hand in the thesis\n")
    (host.root / "etc").mkdir()
    (host.root / "etc" / "hostname").write_text("laptop\n")
    return tree_of(host.root / "home")


def back_up_again(host: Host, repository: Path) -> None:
    (host.root / "home" / "zoe" / "thesis" / "thesis.odt").write_bytes(b"a later draft")
    host.borg("create", "--", f"{repository}::{LATER_ARCHIVE}", "home", "etc")


def back_up(host: Host, repository: Path, encryption: str) -> None:
    """The repository and one archive, made from the host's / so it stores ``home/zoe/...``
    as a backup of /home/zoe does."""
    host.borg("init", f"--encryption={encryption}", "--", str(repository))
    host.borg("create", "--", f"{repository}::{ARCHIVE}", "home", "etc")


def thesis_of(tree: dict[str, bytes]) -> dict[str, bytes]:
    prefix = "zoe/thesis/"
    return {path[len(prefix) :]: data for path, data in tree.items() if path.startswith(prefix)}


# -- the page itself ---------------------------------------------------------------------------


def test_every_runnable_line_is_a_plain_command() -> None:
    blocks = runbook_blocks()
    assert set(blocks) == {
        "by-hand",
        "key-export",
        "key-import",
        "no-key-error",
        "rebuild",
        "offsite",
        "offsite-in-place",
        "newer-error",
        "forget-newer",
    }
    for name, (kind, lines) in blocks.items():
        if kind != "sh":
            continue
        for line in lines:
            assert shlex.split(line, comments=True), f"{name}: a line without a command"
            assert not SHELL_SYNTAX.search(line), f"{name}: {line!r} needs a shell"


def test_every_proof_the_page_names_exists() -> None:
    proofs = re.findall(r"`(tests/[a-z_/]+\.py)::([a-z0-9_]+)`", RUNBOOK.read_text())
    assert len(proofs) >= 12
    for path, name in proofs:
        source = (PROJECT_ROOT / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{path}::{name} not found"


# -- 3. by hand --------------------------------------------------------------------------------


def test_by_hand_on_the_drone_restores_a_folder_and_copies_it_back(tmp_path: Path) -> None:
    network = Network(tmp_path)
    laptop = network.host("laptop")
    originals = write_zoes_files(laptop)
    back_up(laptop, network.repository, "repokey-blake2")
    laptop.write_passphrase_file()
    thesis = laptop.root / "home" / "zoe" / "thesis"
    (thesis / "thesis.odt").write_bytes(b"saved over by mistake")
    (thesis / "notes" / "chapter 1.txt").unlink()

    listing, contents, _mkdir, dry_run, extract, copy_back = laptop.run_ok(runbook("by-hand"))
    assert ARCHIVE in listing.stdout
    assert "home/zoe/thesis/thesis.odt" in contents.stdout
    assert "home/zoe/thesis/notes/chapter 1.txt" in contents.stdout
    for listed in (dry_run, extract):
        assert "home/zoe/thesis/thesis.odt" in listed.stdout + listed.stderr
    assert copy_back.returncode == 0
    restored = laptop.root / "root" / "restore" / "home" / "zoe" / "thesis"
    assert tree_of(restored) == thesis_of(originals)
    assert not (laptop.root / "root" / "restore" / "home" / "zoe" / "todo.txt").exists()
    live = tree_of(laptop.root / "home")
    assert {path: data for path, data in live.items() if not path.endswith(".~1~")} == originals
    assert live["zoe/thesis/thesis.odt.~1~"] == b"saved over by mistake"


# -- 4. rebuild a host -------------------------------------------------------------------------


def test_rebuild_a_repokey_host_with_only_the_passphrase(tmp_path: Path) -> None:
    network = Network(tmp_path)
    laptop = network.host("laptop")
    originals = write_zoes_files(laptop)
    back_up(laptop, network.repository, "repokey-blake2")
    shutil.rmtree(laptop.root)  # the host is lost, with its borg keys, cache and security dir

    new = network.host("new-laptop")
    new.write_passphrase_file()
    assert [p.name for p in (new.root / "root").iterdir()] == ["borg-passphrase"]
    done = new.run_ok(runbook("rebuild"))
    assert ARCHIVE in done[0].stdout
    assert tree_of(new.root / "home") == originals
    assert (new.root / "root" / "rebuild" / "etc" / "hostname").read_text() == "laptop\n"


def test_rebuild_a_keyfile_host_with_the_exported_key_and_not_without_it(tmp_path: Path) -> None:
    network = Network(tmp_path)
    laptop = network.host("laptop")
    originals = write_zoes_files(laptop)
    back_up(laptop, network.repository, "keyfile-blake2")
    assert list((laptop.root / "root" / ".config" / "borg" / "keys").iterdir())
    laptop.run_ok(runbook("key-export"))  # beforehand, as procedure 5 says
    kept_elsewhere = tmp_path / "password-manager"
    kept_elsewhere.mkdir()
    for name in ("laptop.borg-key", "laptop.borg-key.txt"):
        shutil.copy(laptop.root / "root" / name, kept_elsewhere / name)
    shutil.rmtree(laptop.root)  # the host is lost, and the key file with it

    new = network.host("new-laptop")
    new.write_passphrase_file()
    without_key = new.run(runbook("rebuild"))[-1]
    assert without_key.args[:2] == ["borg", "list"]
    assert without_key.returncode == 2
    (error,) = runbook("no-key-error")
    assert without_key.stderr.strip() == new.substitute(error)

    shutil.copy(kept_elsewhere / "laptop.borg-key", new.root / "root" / "laptop.borg-key")
    new.run_ok(runbook("key-import"))
    new.run_ok(runbook("rebuild"))
    assert tree_of(new.root / "home") == originals


# -- 6. from the offsite copy ------------------------------------------------------------------


def copy_offsite(network: Network, tool: str, destination: str, options: list[str]) -> None:
    """The NAS's agent copies the repository offsite, as the coordinator has it do."""
    nas_home = network.tmp_path / "nas" / "root"
    nas_home.mkdir(parents=True)
    policy = network.tmp_path / "nas" / "policy.json"
    allowed = {"repositories": [str(network.repository.parent)], "destinations": [destination]}
    policy.write_text(json.dumps({"repositories": [], "paths": [], "offsite": allowed}))
    job = {
        "protocol": 2,
        "repositories": [str(network.repository)],
        "tool": tool,
        "destination": destination,
        "tool_options": options,
        "lock_wait": 5,
    }
    env = {**borg_env(nas_home / "borg", None), "HOME": str(nas_home)}
    env["XDG_CACHE_HOME"] = str(nas_home / ".cache")
    copied = run_agent(sys.executable, "offsite", job, env, args=("serve", "--policy", str(policy)))
    assert copied.exit_code == 0, copied.events
    assert copied.result["data"]["repositories"][0]["verified"] is True


def without_line(lines: list[str], start: str) -> list[str]:
    kept = [line for line in lines if not line.startswith(start)]
    assert len(kept) == len(lines) - 1
    return kept


def test_restore_from_an_rclone_offsite_copy_after_losing_the_nas(tmp_path: Path) -> None:
    network = Network(tmp_path)
    laptop = network.host("laptop")
    originals = write_zoes_files(laptop)
    back_up(laptop, network.repository, "repokey-blake2")
    laptop.write_passphrase_file()
    bucket = tmp_path / "cloud"
    bucket.mkdir()
    rclone_config = laptop.root / "root" / ".config" / "rclone" / "rclone.conf"
    rclone_config.parent.mkdir(parents=True)
    rclone_config.write_text(f"[b2-borg]\ntype = alias\nremote = {bucket}\n")
    copy_offsite(network, "rclone", "b2-borg:my-bucket/borg", [f"--config={rclone_config}"])
    back_up_again(laptop, network.repository)
    shutil.rmtree(network.repository)  # the NAS is lost
    in_the_bucket = tree_of(bucket)
    assert "my-bucket/borg/laptop/config" in in_the_bucket

    # With this laptop's own borg state (it used the repository at its old place, and saw a
    # newer backup than the copy has), borg refuses the copy, as the page says.
    lines = runbook("offsite")
    own_state = without_line(lines, "export BORG_BASE_DIR=")
    moved = Host(laptop.root, laptop.places).run(own_state)[-1]
    assert moved.args[:2] == ["borg", "list"]
    assert "was previously located at" in moved.stderr
    assert "Repository access aborted" in moved.stderr
    relocation_allowed = [*own_state[:-4], "export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes"]
    older = Host(laptop.root, laptop.places).run([*relocation_allowed, "borg list"])[-1]
    assert older.returncode == 2
    (newer_error,) = runbook("newer-error")
    assert newer_error in older.stderr

    done = Host(laptop.root, laptop.places).run_ok(lines)
    assert ARCHIVE in done[1].stdout
    assert LATER_ARCHIVE not in done[1].stdout
    restored = laptop.root / "root" / "restore" / "home" / "zoe" / "thesis"
    assert tree_of(restored) == thesis_of(originals)
    assert tree_of(bucket) == in_the_bucket


def test_restore_from_an_rsync_copy_in_place_leaves_it_untouched(tmp_path: Path) -> None:
    network = Network(tmp_path)
    laptop = network.host("laptop")
    originals = write_zoes_files(laptop)
    back_up(laptop, network.repository, "repokey-blake2")
    laptop.write_passphrase_file()
    (network.usb / "borg").mkdir(parents=True)
    copy_offsite(network, "rsync", str(network.usb / "borg"), [])
    shutil.rmtree(network.repository)  # the NAS is lost
    on_the_disk = {
        path: (data, (network.usb / path).stat().st_mtime_ns)
        for path, data in tree_of(network.usb).items()
    }

    done = laptop.run_ok(runbook("offsite-in-place"))
    assert ARCHIVE in done[0].stdout
    restored = laptop.root / "root" / "restore" / "home" / "zoe" / "thesis"
    assert tree_of(restored) == thesis_of(originals)
    assert {
        path: (data, (network.usb / path).stat().st_mtime_ns)
        for path, data in tree_of(network.usb).items()
    } == on_the_disk


def test_the_drone_backs_up_again_into_the_copy_put_back_on_a_new_nas(tmp_path: Path) -> None:
    network = Network(tmp_path)
    laptop = network.host("laptop")
    write_zoes_files(laptop)
    back_up(laptop, network.repository, "repokey-blake2")
    (network.usb / "borg").mkdir(parents=True)
    copy_offsite(network, "rsync", str(network.usb / "borg"), [])
    back_up_again(laptop, network.repository)
    shutil.rmtree(network.repository)  # the NAS is lost; a new one gets the copy
    shutil.copytree(network.usb / "borg" / "laptop", network.repository)

    laptop.write_passphrase_file()
    with_passphrase = ['export BORG_PASSCOMMAND="cat /root/borg-passphrase"']
    refused = laptop.run([*with_passphrase, "borg list /srv/borg/laptop"])[-1]
    assert refused.returncode == 2
    (newer_error,) = runbook("newer-error")
    assert refused.stderr.strip() == newer_error

    shell = Host(laptop.root, laptop.places)  # as the drone's user, no passphrase set
    (printed_id,) = shell.run_ok(runbook("forget-newer")[:1])
    repository_id = printed_id.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", repository_id)
    shell.placeholders["REPOSITORY_ID"] = repository_id
    shell.run_ok(runbook("forget-newer"))
    security = laptop.root / "root" / ".config" / "borg" / "security" / repository_id
    assert sorted(p.name for p in security.iterdir()) == [
        "key-type",
        "location",
        "nonce",
        "tam_required",
    ]
    later = "laptop-2026-12-03T03:00:00.000000"
    laptop.borg("create", "--", f"{network.repository}::{later}", "home")
    names = laptop.run_ok(["borg list --short /srv/borg/laptop"])[0].stdout.split()
    assert names == [ARCHIVE, later]
