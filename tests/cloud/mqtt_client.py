"""A paho MQTT 5 test client whose callbacks feed queues, so tests wait on events, not sleeps."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.cloud.broker import TlsCredentials

#: Bound on every wait for the broker; generous so a loaded 2-core machine does not flake.
WAIT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
#: MQTT 5 reason code "Not authorized" (MQTT 5.0 §2.4, table 2-6).
NOT_AUTHORIZED = 0x87

_T = TypeVar("_T")


class ConnectFailed(Exception):
    """The broker did not accept the connection (TLS refused, CONNACK refused, or dropped)."""


@dataclass(frozen=True, slots=True)
class Will:
    """A last will: published by the broker when the client goes away without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connected:
    """The broker's CONNACK: its reason code and whether it resumed a stored session."""

    reason_code: ReasonCode
    session_present: bool


@dataclass(frozen=True, slots=True)
class _Disconnected:
    """The connection ended (either side), with the reason paho reports."""

    reason_code: ReasonCode


def tls_context(credentials: TlsCredentials) -> ssl.SSLContext:
    """A client TLS 1.2+ context trusting ``credentials.ca_cert``, with its certificate if any."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(credentials.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if credentials.cert is not None:
        context.load_cert_chain(
            str(credentials.cert), None if credentials.key is None else str(credentials.key)
        )
    return context


class MqttTestClient:
    """One paho MQTT 5 client on its own network thread; it never reconnects by itself."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        tls: TlsCredentials | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
    ) -> None:
        """Configure (but do not connect) a client; ``tls=None`` means a plain TCP connection."""
        self.host, self.port, self.client_id = host, port, client_id
        self.clean_start, self.session_expiry_s = clean_start, session_expiry_s
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connection: queue.Queue[Connected | _Disconnected] = queue.Queue()
        self._subacks: dict[int, queue.Queue[list[ReasonCode]]] = {}
        self._pubacks: dict[int, queue.Queue[ReasonCode]] = {}
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        if tls is not None:
            self._client.tls_set_context(tls_context(tls))
        if will is not None:
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._looping = False
        # Held while a mid is registered and while its reply is handed over, so a fast reply
        # from the network thread never beats the registration.
        self._pending_lock = threading.RLock()

    def connect(self, timeout_s: float = WAIT_TIMEOUT_S) -> Connected:
        """Connect and wait for a successful CONNACK; ConnectFailed otherwise."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
        properties.SessionExpiryInterval = self.session_expiry_s
        try:
            self._client.connect(
                self.host,
                self.port,
                keepalive=KEEPALIVE_S,
                clean_start=self.clean_start,
                properties=properties,
            )
        except OSError as err:  # ssl.SSLError included
            raise ConnectFailed(f"{self.client_id}: {err!r}") from err
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # no Nagle delay: timing tests and benchmarks
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client.loop_start()
        self._looping = True
        outcome = self._wait(self._connection, timeout_s, "CONNACK")
        if isinstance(outcome, _Disconnected) or outcome.reason_code.is_failure:
            raise ConnectFailed(f"{self.client_id}: {outcome.reason_code}")
        return outcome

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe and return the SUBACK's reason codes (0x87 where the broker refused)."""
        replies: queue.Queue[list[ReasonCode]] = queue.Queue()
        with self._pending_lock:
            result, mid = self._client.subscribe(topic, qos)
            self._check(result, "SUBSCRIBE")
            assert mid is not None
            self._subacks[mid] = replies
        return self._wait(replies, WAIT_TIMEOUT_S, f"SUBACK for {topic}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        *,
        retain: bool = False,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> ReasonCode | None:
        """Publish; at QoS 1 wait for the PUBACK and return its reason code, at QoS 0 return None."""
        replies: queue.Queue[ReasonCode] = queue.Queue()
        properties = None
        if user_properties:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = list(user_properties)
        with self._pending_lock:
            info = self._client.publish(topic, payload, qos, retain, properties)
            self._check(info.rc, "PUBLISH")
            self._pubacks[info.mid] = replies
        reason = self._wait(replies, WAIT_TIMEOUT_S, f"PUBACK for {topic}")
        return reason if qos > 0 else None

    def next_message(self, timeout_s: float = WAIT_TIMEOUT_S) -> mqtt.MQTTMessage:
        """The next message the broker delivered; AssertionError if none comes in time."""
        return self._wait(self.messages, timeout_s, "a message")

    def wait_disconnected(self, timeout_s: float = WAIT_TIMEOUT_S) -> ReasonCode:
        """Wait until the connection ends; return paho's reason for it."""
        outcome = self._wait(self._connection, timeout_s, "the end of the connection")
        assert isinstance(outcome, _Disconnected), outcome
        return outcome.reason_code

    def disconnect(self) -> None:
        """Send DISCONNECT (normal, so the broker discards the will) and wait until closed."""
        if self._client.is_connected():
            self._client.disconnect()
            self.wait_disconnected()
        self.close()

    def drop(self) -> None:
        """End the connection without DISCONNECT, as a crash or a cut cable would."""
        sock = self._client.socket()
        assert isinstance(sock, socket.socket), "not connected"
        # shutdown sends FIN without a TLS close_notify or MQTT DISCONNECT; paho sees EOF.
        sock.shutdown(socket.SHUT_RDWR)
        self.wait_disconnected()
        self.close()

    def close(self) -> None:
        """Stop the network thread and release the socket; idempotent, never sends anything."""
        if self._looping:
            self._looping = False
            self._client.loop_stop()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.close()

    def __enter__(self) -> Self:
        """Connect."""
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect cleanly."""
        self.disconnect()

    @staticmethod
    def _check(result: MQTTErrorCode, what: str) -> None:
        """AssertionError unless paho queued the packet."""
        assert result == MQTTErrorCode.MQTT_ERR_SUCCESS, f"{what}: {mqtt.error_string(result)}"

    @staticmethod
    def _wait(source: queue.Queue[_T], timeout_s: float, what: str) -> _T:
        """The next item of ``source``; AssertionError after ``timeout_s``."""
        try:
            return source.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"waited {timeout_s} s for {what} in vain") from None

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        """Record the CONNACK."""
        self._connection.put(Connected(reason_code, flags.session_present))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        """Record the end of the connection."""
        self._connection.put(_Disconnected(reason_code))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        """Hand the SUBACK to the waiting subscribe()."""
        with self._pending_lock:
            replies = self._subacks.pop(mid)
        replies.put(reason_codes)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        """Hand the PUBACK (or, at QoS 0, the write) to the waiting publish()."""
        with self._pending_lock:
            replies = self._pubacks.pop(mid)
        replies.put(reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """Queue a delivered message."""
        self.messages.put(message)
