"""One authorized_keys line for the agent, the same wherever it is shown."""

from __future__ import annotations

import pytest

from backup_coordinator.model import SshTarget
from backup_coordinator.transport import auth_hint
from devstack.borg import PROJECT_ROOT

CANONICAL = (
    'from="<coordinator-ip>",command="/usr/bin/python3 -I /usr/local/bin/backup-drone serve '
    '--policy /etc/backup-drone/policy.json",restrict'
)


@pytest.mark.parametrize("document", ["README.md", "docs/security.md", "drone_agent/README.md"])
def test_every_document_shows_the_one_line(document: str) -> None:
    text = (PROJECT_ROOT / document).read_text()
    lines = [line.strip() for line in text.splitlines() if 'command="' in line]
    assert lines, f"{document} shows no authorized_keys line"
    assert all(line.startswith(CANONICAL + " ssh-ed25519 ") for line in lines), lines


def test_the_coordinators_hint_shows_the_same_line() -> None:
    hint = auth_hint(SshTarget(host="laptop.lan", user="root", client_key="/config/id_ed25519"))
    assert f"{CANONICAL} <contents of /config/id_ed25519.pub>" in hint
    assert "~root/.ssh/authorized_keys on laptop.lan" in hint


def test_the_install_steps_put_the_agent_where_the_line_runs_it() -> None:
    steps = (PROJECT_ROOT / "drone_agent" / "README.md").read_text()
    assert "install -m 0755 backup_drone.py /usr/local/bin/backup-drone" in steps
