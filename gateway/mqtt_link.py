"""One MQTT 5 connection on the asyncio loop: paho-mqtt's protocol, the loop's sockets.

paho-mqtt speaks the protocol; this module runs it on the event loop instead of paho's own
thread: the socket is watched with ``add_reader``/``add_writer``, ``loop_misc`` runs every second
(keepalive, timeouts), and only connecting (TCP and the TLS handshake, which block in paho) runs
in a worker thread, its socket callbacks handed back to the loop. Reconnects wait for the shared
backoff policy, never paho's own.

The session is persistent (clean start off, a session expiry interval): QoS 1 messages queued at
the broker while the gateway was away arrive when it reconnects, and paho resends our
unacknowledged publishes on the new connection. Incoming messages are acknowledged only when
their handler says so (``ack``), so one the gateway dies on is delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

_LOGGER = logging.getLogger(__name__)

#: How often paho's housekeeping (keepalive pings, retries) runs, in seconds.
MISC_INTERVAL_S = 1.0
#: How long a connection attempt (TCP, TLS, CONNACK) may take.
CONNECT_TIMEOUT_S = 15.0
#: How long a clean stop waits for the DISCONNECT to go out.
DISCONNECT_TIMEOUT_S = 2.0


class MqttError(Exception):
    """Base of this module's errors."""


class LinkClosed(MqttError):
    """The link was stopped before the operation completed."""


class LinkState(enum.StrEnum):
    """Lifecycle of the link."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"  # disconnected, waiting for the backoff before the next attempt
    STOPPED = "stopped"


class ReconnectPolicy(Protocol):
    """The shared backoff (gateway/backoff.py)."""

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; counts one more failure."""

    def reset(self) -> None:
        """Forget past failures."""


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Where and who: the broker, this client's identity and its TLS files."""

    host: str
    port: int
    client_id: str
    ca_file: Path | None = None  # None: no TLS (loopback tests and benchmarks only)
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    will_topic: str | None = None
    will_payload: bytes = b""
    receive_maximum: int = 64
    max_packet_bytes: int = 4 * 1024 * 1024  # the broker drops a bigger message for us


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message from the broker; ``mid`` is what ``ack`` needs for QoS 1."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    user_properties: tuple[tuple[str, str], ...]

    def property(self, name: str) -> str | None:
        """The first user property called ``name``, if any."""
        return next((value for key, value in self.user_properties if key == name), None)


class MqttLink:
    """A persistent MQTT 5 session that reconnects by itself; publishes await their PUBACK."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        backoff: Callable[[], ReconnectPolicy],
        on_message: Callable[[Incoming], None],
        on_connected: Callable[[bool], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        max_inflight: int = 20,
    ) -> None:
        """``on_connected(session_present)`` runs on every connection (subscribe there)."""
        self._settings = settings
        self._backoff = backoff
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._client = self._make_client(max_inflight)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._misc: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._publishes: dict[int, asyncio.Future[ReasonCode]] = {}
        self._connected = asyncio.Event()
        self._session_present = False
        self.state = LinkState.NEW
        self.last_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting (and reconnecting); returns at once, ``connected`` says when."""
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._supervise(), name="mqtt-link")

    async def stop(self) -> None:
        """Disconnect cleanly (the broker then drops the will) and stop; idempotent."""
        if self.state is LinkState.STOPPED:
            return
        was_connected = self.state is LinkState.CONNECTED
        self._set_state(LinkState.STOPPED)
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait([self._supervisor])
        if was_connected:
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), DISCONNECT_TIMEOUT_S)
        self._close_socket()
        for future in self._publishes.values():
            if not future.done():
                future.set_exception(LinkClosed("the MQTT link stopped"))
        self._publishes.clear()

    @property
    def connected(self) -> bool:
        """Whether the session is up now."""
        return self.state is LinkState.CONNECTED

    async def wait_connected(self) -> None:
        """Return once the session is up."""
        await self._connected.wait()

    # -- messages -----------------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> ReasonCode:
        """Publish and wait for the broker's answer (PUBACK for QoS 1): its reason code.

        Across a reconnect the message is resent by paho on the new connection (same session),
        and one published while the link is down goes out on the next connection; only ``stop``
        abandons it (LinkClosed). MqttError if paho does not take the message at all.
        """
        if self.state is LinkState.STOPPED:
            raise LinkClosed("the MQTT link is stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ReasonCode] = loop.create_future()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # NO_CONN while the link is down: at QoS 1 paho keeps the message in the session and
        # sends it once connected (``is_published`` would raise on that rc), at QoS 0 it is gone.
        queued = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not queued:
            raise MqttError(f"publishing to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            future.set_result(ReasonCode(PacketTypes.PUBACK, identifier=0))
            return await future
        self._publishes[info.mid] = future
        if not queued and info.is_published():  # answered before we registered (not on the loop)
            self._publishes.pop(info.mid, None)
            future.set_result(ReasonCode(PacketTypes.PUBACK, identifier=0))
        return await future

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe (call from ``on_connected``; the session keeps it across reconnects)."""
        self._client.subscribe(topic, qos=qos)

    def ack(self, message: Incoming) -> None:
        """Acknowledge a message now that it has been dealt with (QoS 1: the PUBACK)."""
        if message.qos > 0 and self.state is LinkState.CONNECTED:
            self._client.ack(message.mid, message.qos)

    # -- the connection -----------------------------------------------------------------------

    def _make_client(self, max_inflight: int) -> mqtt.Client:
        settings = self._settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.max_inflight_messages_set(max_inflight)
        if settings.ca_file is not None:
            context = ssl.create_default_context(cafile=str(settings.ca_file))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if settings.cert_file is not None:
                context.load_cert_chain(str(settings.cert_file), str(settings.key_file or ""))
            client.tls_set_context(context)
        if settings.will_topic is not None:
            client.will_set(settings.will_topic, settings.will_payload, qos=1, retain=True)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_socket_open = self._socket_opened
        client.on_socket_close = self._socket_closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write
        return client

    async def _supervise(self) -> None:
        policy = self._backoff()
        failing = False  # the first failure of a run is a WARNING, the repeats DEBUG
        while True:
            self._set_state(LinkState.CONNECTING)
            try:
                await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT_S)
            except (OSError, MqttError, TimeoutError, ssl.SSLError) as err:
                self.last_error = str(err) or type(err).__name__
                level = logging.DEBUG if failing else logging.WARNING
                _LOGGER.log(level, "MQTT broker %s: %s", self._where(), self.last_error)
                failing = True
                self._close_socket()
            else:
                if failing:
                    _LOGGER.info("MQTT broker %s: connected again", self._where())
                failing = False
                policy.reset()
                self._set_state(LinkState.CONNECTED)
                self._connected.set()
                if self._on_connected is not None:
                    self._on_connected(self._session_present)
                await self._lost.wait()
                self._connected.clear()
                self._close_socket()
                if self._on_disconnected is not None:
                    self._on_disconnected(self.last_error or "disconnected")
            self._set_state(LinkState.WAITING)
            delay = policy.next_delay()
            _LOGGER.debug("MQTT reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _connect(self) -> None:
        """One attempt: TCP and TLS in a thread, then CONNECT/CONNACK on the loop."""
        loop = asyncio.get_running_loop()
        self._lost.clear()
        self._connack = loop.create_future()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.session_expiry_s
        # The broker may have this many QoS 1 messages unacknowledged with us: never more than
        # the handler can hold, so none is dropped and redelivered out of order later.
        properties.ReceiveMaximum = self._settings.receive_maximum
        properties.MaximumPacketSize = self._settings.max_packet_bytes
        settings = self._settings
        await asyncio.to_thread(
            self._client.connect,
            settings.host,
            settings.port,
            keepalive=settings.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        code = await self._connack
        if code.is_failure:
            raise MqttError(f"the broker refused the connection: {code}")

    def _where(self) -> str:
        return f"{self._settings.host}:{self._settings.port}"

    def _set_state(self, state: LinkState) -> None:
        if state is not self.state:
            _LOGGER.debug("MQTT link %s -> %s", self.state, state)
            self.state = state

    # -- paho callbacks (on the loop, or handed to it) ------------------------------------------

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, code: ReasonCode, props: Any
    ) -> None:
        self._session_present = bool(getattr(flags, "session_present", False))
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(code)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, code: ReasonCode, props: Any
    ) -> None:
        if code is not None and code.is_failure:
            self.last_error = f"disconnected: {code}"
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError(f"connection closed before CONNACK: {code}"))
        self._lost.set()

    def _handle_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        properties = getattr(message, "properties", None)
        user = tuple(getattr(properties, "UserProperty", None) or ())
        incoming = Incoming(message.topic, bytes(message.payload), message.qos, message.mid, user)
        try:
            self._on_message(incoming)
        except Exception:  # a handler's bug must not take the connection down
            _LOGGER.exception("MQTT message on %s could not be handled", message.topic)

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, code: ReasonCode, props: Any
    ) -> None:
        future = self._publishes.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(code)

    def _socket_opened(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._watch, sock)

    def _socket_closed(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch, sock)

    def _want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, sock)

    def _no_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._remove_writer, sock)

    def _on_loop(self, callback: Callable[[Any], None], sock: Any) -> None:
        """Run ``callback(sock)`` on the loop, also when paho calls from the connect thread."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            callback(sock)
        else:
            loop.call_soon_threadsafe(callback, sock)

    def _watch(self, sock: Any) -> None:
        loop = self._loop
        assert loop is not None
        self._sock = sock
        # Without it every PUBACK waits for the peer's delayed ACK (~40 ms): Nagle holds our small
        # packets back. 100-event batches went up 20x slower.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop.add_reader(sock, self._client.loop_read)
        if self._misc is None or self._misc.done():
            self._misc = loop.create_task(self._housekeeping(), name="mqtt-misc")

    def _unwatch(self, sock: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock)
            with contextlib.suppress(Exception):
                loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None
            self._lost.set()

    def _add_writer(self, sock: Any) -> None:
        current = self._sock
        if self._loop is not None and current is not None and sock is current:
            self._loop.add_writer(current, self._client.loop_write)

    def _remove_writer(self, sock: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(sock)

    async def _housekeeping(self) -> None:
        while self._sock is not None:
            self._client.loop_misc()
            await asyncio.sleep(MISC_INTERVAL_S)

    def _close_socket(self) -> None:
        """Stop watching the socket (paho owns it and closes it itself)."""
        sock = self._sock
        if sock is not None:
            self._unwatch(sock)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
