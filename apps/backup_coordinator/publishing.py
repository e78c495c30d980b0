"""Sending many things to Home Assistant without flooding it: no AppDaemon here, plain asyncio.

HA closes a websocket with more than 4096 pending messages, and sensors set one at a time cost
a round trip each: ``bounded`` keeps a fixed number of commands in flight, ``SensorPublisher``
sends sensor states concurrently while every sensor ends up showing its newest state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

StatePoster = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class HomeAssistantUnavailable(RuntimeError):
    """HA refused a command or did not answer (restarting, websocket dropped)."""


async def bounded(calls: Iterable[Coroutine[Any, Any, None]], limit: int) -> None:
    """Awaits every call, at most ``limit`` at a time; the first error is raised
    once the calls already running have ended (the rest are not started)."""
    running: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []

    def collect(done: set[asyncio.Task[None]]) -> None:
        errors.extend(error for task in done if (error := task.exception()) is not None)

    for call in calls:
        if errors:
            call.close()
            continue
        running.add(asyncio.ensure_future(call))
        if len(running) >= limit:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            collect(done)
    if running:
        done, _ = await asyncio.wait(running)
        collect(done)
    if errors:
        raise errors[0]


class SensorPublisher:
    """Sends sensor states to HA, up to ``in_flight`` at a time, in the order they came.

    A newer state of a sensor replaces one not sent yet, and a sensor never has two states on
    their way at once, so HA always ends up showing the newest. ``flush()`` waits until every
    state is sent and raises if any could not be; ``drain()`` only waits.
    """

    def __init__(self, post: StatePoster, in_flight: int, log: Callable[..., None]) -> None:
        self._post = post
        self._in_flight = in_flight
        self._log = log
        self._waiting: dict[str, tuple[str, dict[str, Any]]] = {}  # oldest first
        self._sending: set[str] = set()
        self._workers: set[asyncio.Task[None]] = set()
        self._failures = 0  # since the last flush
        self._first_failure = ""
        self._closed = False

    def put(self, entity_id: str, state: str, attributes: dict[str, Any]) -> None:
        if self._closed:  # stopped: what is still published is dropped
            return
        self._waiting.pop(entity_id, None)  # the newer state goes to the back of the line
        self._waiting[entity_id] = (state, attributes)
        if len(self._workers) < self._in_flight:
            worker = asyncio.create_task(self._work())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def drain(self) -> None:
        """Returns once every state put so far is sent (or failed: logged)."""
        while self._workers:
            await asyncio.wait(set(self._workers))

    async def flush(self) -> None:
        """``drain()``, then raises if any state since the last flush did not reach HA."""
        await self.drain()
        failures, self._failures = self._failures, 0
        if failures:
            raise HomeAssistantUnavailable(
                f"{failures} sensor state(s) did not reach Home Assistant: {self._first_failure}"
            )

    async def close(self) -> None:
        """Drops what was not sent yet, and all put from now on (the next start publishes
        everything again)."""
        self._closed = True
        self._waiting.clear()
        for worker in list(self._workers):
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        while (entity_id := self._next()) is not None:
            state, attributes = self._waiting.pop(entity_id)
            self._sending.add(entity_id)
            try:
                await self._post(entity_id, state, attributes)
            except Exception as error:
                self._failures += 1
                if self._failures == 1:
                    self._first_failure = f"{entity_id}: {error}"
                self._log(f"could not publish {entity_id}: {error}", level="WARNING")
            finally:
                self._sending.discard(entity_id)

    def _next(self) -> str | None:
        """The oldest waiting sensor without a state on its way (its sender takes it next)."""
        return next((e for e in self._waiting if e not in self._sending), None)
