"""Repositories an offsite copy holds, or waits to hold, so nothing writes to them meanwhile.

A copy takes its repositories one at a time. It first *claims* one: from then on no backup,
prune or check starts on it (the scheduler counts claimed repositories as taken), so a busy
repository cannot be kept busy forever by the next backup. The claim turns into the copy's
hold as soon as the work already running on it has ended; releasing it lets that work start
again. The agent's ``borg with-lock`` guards the same repository on the host itself, against
any borg client the coordinator does not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class RepositoryLeases:
    """Claims and holds of repositories by offsite targets (repository key -> target)."""

    def __init__(self) -> None:
        self._claims: dict[str, str] = {}  # claimed or held, by the target's name
        self._held: set[str] = set()
        self._changed = asyncio.Event()

    def taken(self) -> frozenset[str]:
        """Repositories on which no drone operation may start now."""
        return frozenset(self._claims)

    def holder(self, repository_key: str) -> str | None:
        """The target whose copy holds the repository right now (None while only claimed)."""
        return self._claims.get(repository_key) if repository_key in self._held else None

    async def hold(self, repository_key: str, target: str, busy: Callable[[str], bool]) -> None:
        """Claim the repository, then wait until ``busy`` (work running on it) says it is free,
        and hold it. Another target's claim is waited out first."""
        while self._claims.get(repository_key, target) != target:
            await self._wait_for_change()
        self._claims[repository_key] = target
        try:
            while busy(repository_key):
                await self._wait_for_change()
        except BaseException:
            self._claims.pop(repository_key, None)
            self.changed()
            raise
        self._held.add(repository_key)

    def release(self, repository_key: str, target: str) -> None:
        if self._claims.get(repository_key) == target:
            del self._claims[repository_key]
            self._held.discard(repository_key)
            self.changed()

    def changed(self) -> None:
        """Something that may free a repository happened: wake every waiting copy."""
        self._changed.set()

    async def _wait_for_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()
