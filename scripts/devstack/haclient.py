"""A small async Home Assistant client for tests and the demo: REST plus one websocket.

The websocket is opened on first use and again on the next use after it dropped (e.g. HA
restarted); event subscriptions are renewed on every new connection. At most
`MAX_IN_FLIGHT` commands wait for their result at once, because HA closes a websocket with more
than 4096 pending messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from devstack.waiting import async_wait_until

MAX_IN_FLIGHT = 100
COMMAND_TIMEOUT = 30.0
RECONNECT_INTERVAL = 0.2
_DISCONNECTED: dict[str, Any] = {"type": "devstack/disconnected"}

EventPredicate = Callable[[dict[str, Any]], bool]
StatePredicate = Callable[[dict[str, Any]], bool]


class HaError(RuntimeError):
    """Home Assistant refused a request."""


class HaHttpError(HaError):
    """A REST call answered with an HTTP error status."""

    def __init__(self, request: str, status: int, body: str) -> None:
        super().__init__(f"{request}: HTTP {status}: {body}")
        self.status = status


class HaCommandError(HaError):
    """A websocket command answered with success false."""

    def __init__(self, command: str, code: str, message: str) -> None:
        super().__init__(f"{command}: {code}: {message}")
        self.code = code
        self.message = message


class EventSubscription:
    """Events of one type, in arrival order; `events` keeps every one received."""

    def __init__(self, client: HaClient, event_type: str) -> None:
        self._client = client
        self.event_type = event_type
        self.events: list[dict[str, Any]] = []
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.active = True

    def _deliver(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._queue.put_nowait(event)

    def _connection_lost(self) -> None:
        self._queue.put_nowait(_DISCONNECTED)

    # A timeout parameter (not asyncio.timeout) so the error can name what was awaited.
    async def next(self, timeout: float) -> dict[str, Any]:
        """The next event not returned yet; reconnects (and resubscribes) if HA went away."""
        deadline = time.monotonic() + timeout
        while True:
            await self._client._connect_before(deadline, f"the next {self.event_type} event")
            remaining = deadline - time.monotonic()
            try:
                event = await asyncio.wait_for(self._queue.get(), max(remaining, 0))
            except TimeoutError:
                raise TimeoutError(
                    f"no {self.event_type} event within {timeout:.1f}s "
                    f"({len(self.events)} received in total)"
                ) from None
            if event is not _DISCONNECTED:
                return event

    async def wait_for(
        self,
        predicate: EventPredicate,
        timeout: float,
    ) -> dict[str, Any]:
        """Skips events until one matches `predicate`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no matching {self.event_type} event within {timeout:.1f}s; "
                    f"received: {self.events[-5:]}"
                )
            try:
                event = await self.next(remaining)
            except TimeoutError:
                continue  # the check above reports it with the events seen
            if predicate(event):
                return event

    async def close(self) -> None:
        """Stops the subscription (in HA too, when connected)."""
        await self._client._unsubscribe(self)


class HaClient:
    """`async with HaClient(url, token) as ha:` REST calls, websocket commands, events."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._subscription_ids: dict[int, EventSubscription] = {}
        self._subscriptions: list[EventSubscription] = []

    async def __aenter__(self) -> HaClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._drop_connection()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    # --- REST -------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=aiohttp.ClientTimeout(total=COMMAND_TIMEOUT),
            )
        return self._session

    async def _rest(self, method: str, path: str, json: Any = None) -> Any:
        async with self._http().request(method, f"{self.url}{path}", json=json) as response:
            if response.status >= 400:
                body = await response.text()
                raise HaHttpError(f"{method} {path}", response.status, body)
            return await response.json()

    async def get_state(self, entity_id: str) -> dict[str, Any] | None:
        """The entity's state object, or None when HA does not know it."""
        try:
            state: dict[str, Any] = await self._rest("GET", f"/api/states/{entity_id}")
        except HaHttpError as error:
            if error.status == 404:
                return None
            raise
        return state

    async def get_states(self) -> list[dict[str, Any]]:
        states: list[dict[str, Any]] = await self._rest("GET", "/api/states")
        return states

    async def call_service(
        self, domain: str, service: str, data: dict[str, Any] | None = None
    ) -> Any:
        """HA's answer (the changed states). A 200 proves nothing: read the state back."""
        return await self._rest("POST", f"/api/services/{domain}/{service}", json=data or {})

    async def render_template(self, template: str) -> str:
        """What HA's template engine makes of ``template`` (as a markdown card shows it)."""
        path = "/api/template"
        async with self._http().post(f"{self.url}{path}", json={"template": template}) as response:
            text = await response.text()
            if response.status >= 400:
                raise HaHttpError(f"POST {path}", response.status, text)
            return text

    async def fire_event(self, event_type: str, data: dict[str, Any]) -> None:
        """Fires an event on HA's bus, as a script or automation would."""
        await self._rest("POST", f"/api/events/{event_type}", json=data)

    async def wait_for_state(
        self,
        entity_id: str,
        predicate: StatePredicate,
        timeout: float,
    ) -> dict[str, Any]:
        """Polls the entity until `predicate(state)` holds; HA being down counts as not yet."""
        last_seen: list[dict[str, Any] | None] = [None]

        async def matching_state() -> dict[str, Any] | None:
            try:
                state = await self.get_state(entity_id)
            except (aiohttp.ClientError, OSError, TimeoutError):
                return None
            last_seen[0] = state
            return state if state is not None and predicate(state) else None

        try:
            return await async_wait_until(
                matching_state, f"{entity_id} to reach the expected state", timeout=timeout
            )
        except TimeoutError as error:
            raise TimeoutError(f"{error}; last seen: {last_seen[0]}") from None

    # --- integrations -----------------------------------------------------------------------

    async def setup_mqtt(
        self, broker_port: int, broker_host: str = "127.0.0.1", timeout: float = 30.0
    ) -> str:
        """Sets up HA's MQTT integration against a broker, as the UI does, through the config
        flow; returns the config entry's id once the entry is loaded.

        HA allows one MQTT entry: an existing one is kept as it is (it is in `.storage`, so a
        restarted HA has it again). Discovery is on by default, prefix "homeassistant".
        """
        if not await self.config_entries("mqtt"):
            await self._create_mqtt_entry(broker_host, broker_port)

        async def loaded_entry() -> str | None:
            entries = await self.config_entries("mqtt")
            loaded = [entry for entry in entries if entry["state"] == "loaded"]
            return str(loaded[0]["entry_id"]) if loaded else None

        try:
            return await async_wait_until(loaded_entry, "the MQTT entry to load", timeout)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; entries: {await self.config_entries('mqtt')}") from None

    async def config_entries(self, domain: str) -> list[dict[str, Any]]:
        """The integration's config entries (entry_id, state, title, ...)."""
        entries: list[dict[str, Any]] = await self._rest(
            "GET", f"/api/config/config_entries/entry?domain={domain}"
        )
        return entries

    async def _create_mqtt_entry(self, broker_host: str, broker_port: int) -> None:
        flow = await self._rest("POST", "/api/config/config_entries/flow", json={"handler": "mqtt"})
        # Without a supervisor, HA 2025.4 goes straight to the broker form.
        if flow.get("step_id") != "broker":
            raise HaError(f"the MQTT config flow did not ask for a broker: {flow}")
        answer = await self._rest(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            json={"broker": broker_host, "port": broker_port},
        )
        if answer.get("type") != "create_entry":
            raise HaError(f"the MQTT config flow did not create an entry: {answer}")

    # --- websocket --------------------------------------------------------------------------

    async def ws_command(self, type_: str, **fields: Any) -> Any:
        """Sends one command and returns its `result`; raises HaCommandError on failure."""
        await self._ensure_connected()
        async with self._in_flight:
            message_id, reply = self._send_slot()
            await self._send({"id": message_id, "type": type_, **fields})
            try:
                answer = await asyncio.wait_for(reply, COMMAND_TIMEOUT)
            finally:
                self._pending.pop(message_id, None)
        if answer.get("type") == "pong":
            return None
        if not answer.get("success", False):
            error = answer.get("error", {})
            raise HaCommandError(type_, error.get("code", "?"), error.get("message", str(answer)))
        return answer.get("result")

    async def subscribe_events(self, event_type: str) -> EventSubscription:
        subscription = EventSubscription(self, event_type)
        await self._ensure_connected()
        await self._subscribe(subscription)
        self._subscriptions.append(subscription)
        return subscription

    async def reconnect(self) -> None:
        """Opens a fresh websocket now (and renews the subscriptions)."""
        await self._drop_connection()
        await self._ensure_connected()

    async def _subscribe(self, subscription: EventSubscription) -> None:
        # Registered under its id before sending: the first event may follow the result at once.
        message_id, reply = self._send_slot()
        self._subscription_ids[message_id] = subscription
        await self._send(
            {"id": message_id, "type": "subscribe_events", "event_type": subscription.event_type}
        )
        try:
            answer = await asyncio.wait_for(reply, COMMAND_TIMEOUT)
        finally:
            self._pending.pop(message_id, None)
        if not answer.get("success", False):
            self._subscription_ids.pop(message_id, None)
            raise HaCommandError("subscribe_events", "?", str(answer.get("error")))

    async def _unsubscribe(self, subscription: EventSubscription) -> None:
        subscription.active = False
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        for message_id, known in list(self._subscription_ids.items()):
            if known is subscription:
                del self._subscription_ids[message_id]
                if self.connected:
                    with contextlib.suppress(HaError, ConnectionError):
                        await self.ws_command("unsubscribe_events", subscription=message_id)

    def _send_slot(self) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        message_id = next(self._ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = reply
        return message_id, reply

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionError("websocket to Home Assistant is closed")
        await self._ws.send_json(message)

    async def _ensure_connected(self) -> None:
        async with self._connect_lock:
            if self.connected:
                return
            await self._drop_connection()
            self._ws = await self._open_authenticated()
            self._reader = asyncio.create_task(self._read_messages(self._ws))
            await self._renew_subscriptions()

    async def _connect_before(self, deadline: float, what: str) -> None:
        """Connects, retrying while HA restarts, until `deadline` (monotonic)."""
        while not self.connected:
            try:
                await self._ensure_connected()
            except (aiohttp.ClientError, OSError, ConnectionError) as error:
                if time.monotonic() + RECONNECT_INTERVAL > deadline:
                    raise TimeoutError(f"no connection to HA while waiting for {what}") from error
                await asyncio.sleep(RECONNECT_INTERVAL)

    async def _open_authenticated(self) -> aiohttp.ClientWebSocketResponse:
        ws = await self._http().ws_connect(f"{self.url}/api/websocket", max_msg_size=0)
        await ws.receive_json()  # auth_required
        await ws.send_json({"type": "auth", "access_token": self._token})
        reply = await ws.receive_json()
        if reply.get("type") != "auth_ok":
            await ws.close()
            raise HaError(f"websocket authentication failed: {reply}")
        return ws

    async def _renew_subscriptions(self) -> None:
        self._subscription_ids.clear()
        for subscription in list(self._subscriptions):
            await self._subscribe(subscription)

    async def _read_messages(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch(message.json())
        finally:
            self._connection_closed()

    def _dispatch(self, message: dict[str, Any]) -> None:
        message_id = message.get("id")
        if message.get("type") == "event" and isinstance(message_id, int):
            subscription = self._subscription_ids.get(message_id)
            if subscription is not None:
                subscription._deliver(message["event"])
            return
        if isinstance(message_id, int):
            reply = self._pending.get(message_id)
            if reply is not None and not reply.done():
                reply.set_result(message)

    def _connection_closed(self) -> None:
        for reply in self._pending.values():
            if not reply.done():
                reply.set_exception(ConnectionError("websocket to Home Assistant closed"))
        self._pending.clear()
        for subscription in self._subscriptions:
            subscription._connection_lost()

    async def _drop_connection(self) -> None:
        ws, self._ws = self._ws, None
        reader, self._reader = self._reader, None
        if ws is not None and not ws.closed:
            await ws.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
