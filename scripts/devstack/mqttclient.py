"""A small MQTT client for tests: publish, subscribe, collect, read retained topics.

Built on paho-mqtt 2.1 (the version AppDaemon's MQTT plugin and Home Assistant use). paho runs
its network loop in a thread; received messages are kept in order and the `wait_for_*` methods
(with `async_` twins for async tests) poll them against a deadline. `publish` and `subscribe`
return once the broker acknowledged them, so a test knows its message is in the broker.

Retained messages: a broker sends a topic's retained message right after it acknowledges a
subscription to that topic, before anything published later. `read_retained` uses that: it
subscribes to the topic and to a fresh probe topic, publishes to the probe, and returns the
retained payload if it came before the probe, or None when the topic holds no retained message.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devstack.waiting import async_wait_until, wait_until

ACK_TIMEOUT = 10.0
PROBE_TOPIC_PREFIX = "devstack/probe"

MessagePredicate = Callable[["MqttMessage"], bool]


class MqttClientError(RuntimeError):
    """The broker refused a connection, a subscription or a publish."""


@dataclass(frozen=True)
class MqttMessage:
    topic: str
    payload: str
    retain: bool
    qos: int


class MqttClient:
    """`with MqttClient(port) as mqtt:` one connection to a broker on 127.0.0.1."""

    def __init__(self, port: int, host: str = "127.0.0.1", client_id: str | None = None) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id or f"devstack-{uuid.uuid4().hex[:12]}"
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._lock = threading.Lock()
        self._messages: list[MqttMessage] = []
        self._connected = threading.Event()
        self._connect_refusal: str | None = None
        self._subscribed: dict[int, list[ReasonCode]] = {}

    def __enter__(self) -> MqttClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- connection ---------------------------------------------------------------------------

    def connect(self, timeout: float = ACK_TIMEOUT) -> None:
        """Connects and starts the network thread; returns once the broker accepted us."""
        self._client.connect(self.host, self.port)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise MqttClientError(f"no CONNACK from {self.host}:{self.port} within {timeout}s")
        if self._connect_refusal is not None:
            self.close()
            raise MqttClientError(f"the broker refused the connection: {self._connect_refusal}")

    def close(self) -> None:
        """Disconnects cleanly (no will is sent) and stops the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._connect_refusal = str(reason)
        self._connected.set()

    # --- publish and subscribe ----------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: str | bytes,
        *,
        retain: bool = False,
        qos: int = 1,
        timeout: float = ACK_TIMEOUT,
    ) -> None:
        """Publishes and waits for the broker's acknowledgement (for qos 1 and 2)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise MqttClientError(f"publishing to {topic} was not acknowledged within {timeout}s")

    def clear_retained(self, topic: str) -> None:
        """Removes the topic's retained message (an empty retained payload)."""
        self.publish(topic, b"", retain=True)

    def subscribe(self, topic: str, qos: int = 1, timeout: float = ACK_TIMEOUT) -> None:
        """Subscribes (wildcards allowed) and waits for the broker's SUBACK."""
        result, mid = self._client.subscribe(topic, qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttClientError(f"subscribing to {topic} failed: {paho.error_string(result)}")
        codes = wait_until(
            lambda: self._subscribed.pop(mid, None), f"SUBACK for {topic}", timeout, 0.01
        )
        if any(code.is_failure for code in codes):
            raise MqttClientError(f"the broker refused the subscription to {topic}: {codes}")

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed[mid] = reason_codes

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        received = MqttMessage(
            topic=message.topic,
            payload=message.payload.decode(errors="replace"),
            retain=bool(message.retain),
            qos=message.qos,
        )
        with self._lock:
            self._messages.append(received)

    # --- received messages --------------------------------------------------------------------

    def mark(self) -> int:
        """A mark of "now" for `messages(after=...)` and `wait_for_message(after=...)`."""
        with self._lock:
            return len(self._messages)

    def messages(self, topic: str | None = None, after: int = 0) -> list[MqttMessage]:
        """Received messages past the mark `after`, in order; `topic` may hold wildcards."""
        with self._lock:
            received = self._messages[after:]
        if topic is None:
            return received
        return [message for message in received if paho.topic_matches_sub(topic, message.topic)]

    def wait_for_message(
        self,
        topic: str,
        predicate: MessagePredicate | None = None,
        timeout: float = ACK_TIMEOUT,
        after: int = 0,
    ) -> MqttMessage:
        """The first message on `topic` past the mark `after` that matches `predicate`."""
        try:
            return wait_until(
                lambda: self._first_match(topic, predicate, after), topic, timeout, 0.02
            )
        except TimeoutError:
            raise self._no_match(topic, timeout, after) from None

    async def async_wait_for_message(
        self,
        topic: str,
        predicate: MessagePredicate | None = None,
        timeout: float = ACK_TIMEOUT,
        after: int = 0,
    ) -> MqttMessage:
        async def matching() -> MqttMessage | None:
            return self._first_match(topic, predicate, after)

        try:
            return await async_wait_until(matching, topic, timeout, interval=0.02)
        except TimeoutError:
            raise self._no_match(topic, timeout, after) from None

    def _first_match(
        self, topic: str, predicate: MessagePredicate | None, after: int
    ) -> MqttMessage | None:
        for message in self.messages(topic, after):
            if predicate is None or predicate(message):
                return message
        return None

    def _no_match(self, topic: str, timeout: float, after: int) -> TimeoutError:
        seen = [(m.topic, m.payload) for m in self.messages(after=after)][-5:]
        return TimeoutError(
            f"no matching message on {topic} within {timeout:.1f}s; last received: {seen}"
        )


# --- retained messages ------------------------------------------------------------------------

_probe_numbers = itertools.count(1)


def read_retained(port: int, topic: str, host: str = "127.0.0.1") -> str | None:
    """The payload retained on `topic` now, or None when it holds none.

    A short-lived connection of its own, so it sees what a newly connecting client would.
    """
    probe = f"{PROBE_TOPIC_PREFIX}/{uuid.uuid4().hex[:12]}/{next(_probe_numbers)}"
    with MqttClient(port, host) as client:
        # qos 0 for both: messages of one qos level reach a client in the order they were sent.
        client.subscribe(topic, qos=0)
        client.subscribe(probe, qos=0)
        client.publish(probe, b"probe", qos=0)
        client.wait_for_message(probe)
        retained = [message for message in client.messages(topic) if message.retain]
    return retained[0].payload if retained else None


def wait_for_retained(
    port: int, topic: str, payload: str, timeout: float = ACK_TIMEOUT, host: str = "127.0.0.1"
) -> str:
    """Waits until `topic`'s retained payload is `payload`."""
    last_seen: list[str | None] = [None]

    def retained_as_expected() -> bool:
        last_seen[0] = read_retained(port, topic, host)
        return last_seen[0] == payload

    try:
        wait_until(retained_as_expected, f"{payload!r} retained on {topic}", timeout, 0.1)
    except TimeoutError as error:
        raise TimeoutError(f"{error}; last retained: {last_seen[0]!r}") from None
    return payload


async def async_read_retained(port: int, topic: str, host: str = "127.0.0.1") -> str | None:
    return await asyncio.to_thread(read_retained, port, topic, host)


async def async_wait_for_retained(
    port: int, topic: str, payload: str, timeout: float = ACK_TIMEOUT, host: str = "127.0.0.1"
) -> str:
    return await asyncio.to_thread(wait_for_retained, port, topic, payload, timeout, host)
