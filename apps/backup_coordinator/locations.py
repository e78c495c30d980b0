"""Borg repository locations: the forms a job may name, split the way borg reads them.

This mirrors the location parsing of drone_agent/backup_drone.py (``split_location``,
``remote_root``, ``parse_location``), on which its ``validate_job`` checks every job's
repository; the agreement tests in tests/unit/test_config.py keep the two in step. The
coordinator also uses a location's one spelling (``repository_key``) to recognise the same
repository written two ways, so no two operations ever run on it at once.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

LOCATION_FORMS = "an absolute path, ssh://[user@]host[:port]/path or [user@]host:path"

# borg 1.2/1.4 locations: ssh://[user@]host[:port]/path and scp style [user@]host:path (borg
# makes the user optional in both). Host: a name (no leading "-": ssh would read an option) or
# an IPv6 address in brackets. Like borg, the scp path must not start with ":" or "//" (so
# "ssh://..." is never scp style).
_LOCATION_USER = r"(?:(?P<user>[A-Za-z0-9_.][A-Za-z0-9_.-]*)@)?"
_LOCATION_HOST = r"(?P<host>[A-Za-z0-9][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])"
SSH_URL_PATTERN = re.compile(
    r"ssh://" + _LOCATION_USER + _LOCATION_HOST + r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/.*)",
    re.S,
)
SCP_LOCATION_PATTERN = re.compile(_LOCATION_USER + _LOCATION_HOST + r":(?!:|//)(?P<path>.+)", re.S)
IPV6_ADDRESS_PATTERN = re.compile(r"\[[0-9A-Fa-f:.]+\]")
DEFAULT_SSH_PORT = 22
# Names by which a drone reaches a repository on its own disk over ssh.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class Location:
    """A repository location as borg reads it: who serves it, where its path starts, the rest.

    ``root`` follows borg's server: "/" absolute, "." the login directory ("host:path",
    ``ssh://host/./path``), "~/" borg's base directory ("~/path"), "~NAME" a user's home.
    """

    authority: str  # "" for a local path, else "[user@]host[:port]" as written
    root: str
    components: tuple[str, ...]
    port: str | None = None
    path: str = ""
    user: str = ""  # "" when the location names none (ssh's default user)
    host: str = ""  # "" for a local path

    @property
    def is_local(self) -> bool:
        return not self.authority

    @property
    def depends_on_user(self) -> bool:
        """Whether the path starts at the login user's home ("." and "~/" roots)."""
        return self.root in (".", "~/")


def repository_key(location: Location, drone_host: str) -> str:
    """One spelling per repository, for a location used by the drone on ``drone_host``.

    ``ssh://borg@nas/srv/r``, ``nas:/srv/r/``, ``ssh://NAS.:22/srv/r`` and the local path
    ``/srv/r`` of the drone on ``nas`` are one repository: the host is compared without case
    or trailing dot, port 22 is the default, a loopback name is the drone's own host, and the
    user only counts for paths that start at the user's home. Anything the key cannot see (two
    names for one host) is what ``repository_id`` in apps.yaml is for.
    """
    if location.is_local:
        host, port = canonical_host(drone_host), DEFAULT_SSH_PORT
    else:
        host = canonical_host(location.host)
        port = int(location.port) if location.port else DEFAULT_SSH_PORT
        if is_loopback(host):
            host = canonical_host(drone_host)
    user = f"{location.user}@" if location.depends_on_user and location.user else ""
    start = {"/": "/", ".": "/./", "~/": "/~/"}.get(location.root, f"/{location.root}/")
    return f"ssh://{user}{host}:{port}{start}{'/'.join(location.components)}"


def canonical_host(host: str) -> str:
    """A host name as DNS compares it: no case, no trailing dot, IPv6 without brackets."""
    name = host.strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


def host_family(host: str) -> str:
    """What two spellings of one host are likely to share: an address, or a name's first
    label (``nas`` for ``nas.lan``)."""
    canonical = canonical_host(host)
    try:
        return ipaddress.ip_address(canonical).compressed
    except ValueError:
        return canonical.split(".", 1)[0]


def parse_location(text: str) -> Location | None:
    """The location ``text`` names, or None when it is none of the forms borg reads."""
    if text.startswith("/"):
        return Location("", "/", path_components(text), None, text)
    for pattern in (SSH_URL_PATTERN, SCP_LOCATION_PATTERN):
        match = pattern.fullmatch(text)
        if match:
            user, port, path = match["user"], match.groupdict().get("port"), match["path"]
            authority = (f"{user}@" if user else "") + match["host"] + (f":{port}" if port else "")
            root, rest = _remote_root(path)
            return Location(
                authority, root, path_components(rest), port, path, user or "", match["host"]
            )
    return None


def path_components(path: str) -> tuple[str, ...]:
    """The names along a path, without the empty and "." ones ("/a//./b" -> ("a", "b"))."""
    return tuple(part for part in path.split("/") if part not in ("", "."))


def _remote_root(path: str) -> tuple[str, str]:
    """Where borg's server starts a remote path (see ``Location.root``), and the rest."""
    if path.startswith(("/~/", "~/")):
        return "~/", path.split("~/", 1)[1]
    if path.startswith(("/~", "~")):
        first, _, rest = path.lstrip("/").partition("/")
        return first, rest
    if path.startswith("/./"):
        return ".", path[3:]
    if path.startswith("/"):
        return "/", path
    return ".", path
