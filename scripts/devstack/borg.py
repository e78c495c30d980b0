"""Real borg repositories for tests, the demo and benchmarks (borg from PATH, state in a temp dir).

Every helper takes the ``base_dir`` that becomes BORG_BASE_DIR, so borg's cache, config and
security directories never touch the user's own.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
AGENT_PATH = PROJECT_ROOT / "drone_agent" / "backup_drone.py"

# Variables of the caller's environment that would make borg use another passphrase or state.
_INHERITED_BORG_SECRETS = ("BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD", "BORG_REPO")


# Never prompt, never accept a moved or unencrypted repository silently; UTC so archive times
# and prune's day boundaries do not depend on the machine's zone.
_SAFE_SETTINGS = {
    "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
    "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
    "BORG_DISPLAY_PASSPHRASE": "no",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
}


def borg_env(base_dir: Path, passphrase: str | None) -> dict[str, str]:
    """An environment for borg: this process's, with BORG_BASE_DIR set and the passphrase
    (or none at all) in BORG_PASSPHRASE, so borg never prompts."""
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_BORG_SECRETS}
    env.update(_SAFE_SETTINGS, BORG_BASE_DIR=str(base_dir))
    if passphrase is not None:
        env["BORG_PASSPHRASE"] = passphrase
    return env


def run_borg(
    args: list[str], passphrase: str | None, base_dir: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``borg ARGS...`` with stdin from /dev/null; raises with borg's stderr when ``check``."""
    completed = subprocess.run(
        ["borg", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        env=borg_env(base_dir, passphrase),
        timeout=120,
        check=False,
    )
    if check and completed.returncode != 0:
        raise RuntimeError(
            f"borg {args[0]} failed (rc {completed.returncode}): {completed.stderr.strip()}"
        )
    return completed


def init_repository(repo: Path, passphrase: str, base_dir: Path) -> None:
    run_borg(["init", "--encryption=repokey-blake2", "--", str(repo)], passphrase, base_dir)


def list_archives(repo: Path, passphrase: str, base_dir: Path) -> list[str]:
    """Archive names, oldest first (checkpoints hidden, as borg does)."""
    listing = borg_json(["list", "--json", "--", str(repo)], passphrase, base_dir)
    return [str(archive["name"]) for archive in listing["archives"]]


def borg_json(args: list[str], passphrase: str, base_dir: Path) -> dict[str, Any]:
    """The JSON document a ``--json`` borg command prints."""
    value = json.loads(run_borg(args, passphrase, base_dir).stdout)
    if not isinstance(value, dict):
        raise RuntimeError(f"borg {args[0]} printed JSON that is not an object")
    return value


def create_archive(
    repo: Path, name: str, paths: list[Path], passphrase: str, base_dir: Path, timestamp: str = ""
) -> None:
    """An archive made directly with borg; ``timestamp`` (UTC, YYYY-MM-DDTHH:MM:SS) backdates it."""
    options = [f"--timestamp={timestamp}"] if timestamp else []
    target = f"{repo}::{name}"
    run_borg(["create", *options, "--", target, *map(str, paths)], passphrase, base_dir)
