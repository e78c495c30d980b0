"""Borg repository locations: the forms a job may name, split the way borg reads them.

This mirrors the location parsing of drone_agent/backup_drone.py (``split_location``,
``remote_root``, ``parse_location``), on which its ``validate_job`` checks every job's
repository; the agreement tests in tests/unit/test_config.py keep the two in step. The
coordinator also uses a location's one spelling (``Location.remote_key``) to recognise the same
repository written two ways, so no two operations ever run on it at once.
"""

from __future__ import annotations

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

    @property
    def remote_key(self) -> str:
        """One spelling per remote location: ``ssh://borg@nas/srv/r`` and ``borg@nas:/srv/r``
        give the same key; a different user, port or root gives another."""
        start = {"/": "/", ".": "/./", "~/": "/~/"}.get(self.root, f"/{self.root}/")
        return f"ssh://{self.authority}{start}{'/'.join(self.components)}"


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
            return Location(authority, root, path_components(rest), port, path)
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
