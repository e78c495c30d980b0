"""The accounts a drone's agent runs as: root (this machine's own login shell) and a
dedicated system account with a plain /bin/sh, as a real drone host would have.

The dedicated account is created for the benchmark and removed afterwards, with its home.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError, progress
from devstack.borg import AGENT_PATH

DRONE_USER = "bcbench-drone"
PLAIN_SHELL = "/bin/sh"


@dataclass(frozen=True)
class Account:
    name: str
    label: str  # how the tables name it

    @property
    def shell(self) -> str:
        return pwd.getpwnam(self.name).pw_shell

    def owns(self, *paths: Path) -> None:
        """Hands ``paths`` (recursively) to this account: its repository, its borg base dir."""
        entry = pwd.getpwnam(self.name)
        for path in paths:
            for folder, dirs, files in os.walk(path):
                for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                    os.lchown(name, entry.pw_uid, entry.pw_gid)


def this_account() -> Account:
    name = pwd.getpwuid(os.geteuid()).pw_name
    return Account(name, f"{name} (shell {pwd.getpwnam(name).pw_shell})")


def installed_agent(root: Path) -> list[str]:
    """The agent copied to ``root`` as on a drone host (readable by every account, wherever
    the checkout is), and the forced command that runs it."""
    path = root / "bin" / AGENT_PATH.name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(AGENT_PATH, path)
    path.chmod(0o755)
    return [drone_python(), str(path), "serve"]


def drone_python() -> str:
    """The interpreter the agent runs with, for every account: the system's python3 (the
    agent is stdlib-only), which a dedicated account can run, unlike a pyenv under /root."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


@contextmanager
def dedicated_account(home: Path) -> Iterator[Account]:
    """A system account with shell /bin/sh and its home at ``home``; removed afterwards."""
    if os.geteuid() != 0:
        raise BenchError("creating the drone account needs root")
    try:
        pwd.getpwnam(DRONE_USER)
    except KeyError:
        pass
    else:
        raise BenchError(f"account {DRONE_USER} exists already (left by an earlier run?)")
    home_options = ["--home-dir", str(home), "--create-home"]
    run_command(["useradd", "--system", "--shell", PLAIN_SHELL, *home_options, DRONE_USER])
    try:
        # A locked password ("!") makes sshd without PAM refuse even key logins; "*" does not.
        run_command(["usermod", "--password", "*", DRONE_USER])
        progress(f"created account {DRONE_USER} (shell {PLAIN_SHELL}, home {home})")
        yield Account(DRONE_USER, f"{DRONE_USER} (shell {PLAIN_SHELL})")
    finally:
        run_command(["userdel", DRONE_USER])
        shutil.rmtree(home, ignore_errors=True)
        progress(f"removed account {DRONE_USER}")


def run_command(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
