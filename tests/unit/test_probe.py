"""doctor's host-key probe offers the drone nothing: not the operator's own keys, not an agent.

asyncssh's in-process server on 127.0.0.1 plays the drone. It would accept the key in the
operator's ``~/.ssh/id_ed25519`` and records every key a client offers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from backup_coordinator.model import SshTarget
from backup_coordinator.transport import STEP_HOST_KEY, probe_host_key
from devstack.waiting import free_port


class RecordingServer(asyncssh.SSHServer):
    """Accepts ``accepted`` for any user and records every public key a client offers."""

    def __init__(self, accepted: asyncssh.SSHKey, offered: list[str]) -> None:
        self.accepted = accepted
        self.offered = offered

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is required

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fingerprint = key.get_fingerprint()
        self.offered.append(fingerprint)
        return fingerprint == self.accepted.get_fingerprint()


class Drone:
    def __init__(self, workdir: Path, personal_key: asyncssh.SSHKey) -> None:
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.personal_key = personal_key
        self.port = free_port()
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(
            f"[127.0.0.1]:{self.port} {self.host_key.export_public_key().decode().strip()}\n"
        )
        self.offered: list[str] = []

    def target(self) -> SshTarget:
        return SshTarget(
            host="127.0.0.1",
            port=self.port,
            user="coordinator",
            client_key="/nonexistent/coordinator_key",  # the probe must not need it either
            known_hosts=str(self.known_hosts),
            connect_timeout=5,
        )


@pytest.fixture
async def drone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Drone]:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    personal_key = asyncssh.generate_private_key("ssh-ed25519")
    personal_key.write_private_key(str(home / ".ssh" / "id_ed25519"))
    (home / ".ssh" / "id_ed25519.pub").write_bytes(personal_key.export_public_key())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    drone = Drone(tmp_path, personal_key)
    server = await asyncssh.listen(
        "127.0.0.1",
        drone.port,
        server_host_keys=[drone.host_key],
        server_factory=lambda: RecordingServer(personal_key, drone.offered),
    )
    try:
        yield drone
    finally:
        server.close()
        await server.wait_closed()


async def test_the_host_key_probe_offers_no_key_not_even_the_operators_own(drone: Drone) -> None:
    (check,) = await probe_host_key(drone.target())
    assert check.name == STEP_HOST_KEY
    assert check.ok, check.detail
    assert drone.offered == [], "the probe offered a key from ~/.ssh to the drone"


async def test_the_host_key_probe_still_fails_on_an_unknown_key(drone: Drone) -> None:
    drone.known_hosts.write_text(
        f"[127.0.0.1]:{drone.port} "
        f"{asyncssh.generate_private_key('ssh-ed25519').export_public_key().decode().strip()}\n"
    )
    (check,) = await probe_host_key(drone.target())
    assert not check.ok
    assert "known_hosts" in check.detail or "changed" in check.detail
    assert drone.offered == []
