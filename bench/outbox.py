"""Events buffered while the broker is down, then drained: none lost, and how fast they go up.

A real Mosquitto (tests/cloud/broker.py: mTLS, ACL, persistence) and the fake cloud run on
loopback with a whole ``Gateway`` (simulated hardware) connected to them. Once its start-up
events are delivered, the broker is stopped (SIGTERM: it saves its sessions) and the benchmark
records ``--events`` access and door events (~180 bytes of JSON each) through
``gw.events.record`` (committed to the outbox, as the entry service and the door controller
record theirs), many at a time as busy doors would. Then the broker is started again and the
uplink drains the outbox. The cloud side counts, by event id, what arrives on the
gateway's ``events`` topic: lost (recorded, never received), duplicates, and the drain rate,
events / seconds from the broker serving again to the last of them received.

The counting subscriber has the ``cloud`` identity and a persistent session, subscribed before
the outage, so nothing the gateway sends before it is back is dropped for lack of a subscriber
(the broker would answer "no matching subscribers", a success for the gateway).

The gateway reconnects after its backoff policy's delay; with the production policy (from 1 s,
doubling, capped at 300 s, full jitter) that delay alone after a long outage is anything up to
minutes, which would drown the uplink's own rate. By default the cloud service is built with a
short cap (``--backoff-cap``), and ``reconnect_s`` reports the broker → link-up part anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import queue
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench.delta import GATEWAY, cloud_gateway_config, cloud_rig, connected_gateway, wait_until
from gateway.app import Gateway
from gateway.backoff import Backoff
from gateway.model import Event, EventType
from tests.cloud.broker import Broker, gateway_topic
from tests.cloud.mqtt_client import tls_context
from tests.conftest import demo_json

WAIT_S = 10.0
#: Records awaited together: the outbox commits them in groups of ``[events] batch_max``.
RECORD_CONCURRENCY = 2_000
#: The drain is over when nothing new has arrived for this long.
STALL_S = 30.0
#: How long to keep listening after the last expected event, for late duplicates.
LINGER_S = 1.0
DOORS = ("front", "back", "lobby", "server-room", "garage", "roof")


def door_events(count: int, at: datetime) -> list[Event]:
    """``count`` events as a door sees them: a grant, unlock, open, close, relock, and so on."""
    events: list[Event] = []
    for i in range(count):
        door = DOORS[i // 5 % len(DOORS)]
        user = f"user-{(i // 5) * 7919 % 100_000}"
        step = i % 5
        event_type: EventType
        data: dict[str, Any]
        if step == 0:
            event_type = EventType.ACCESS_GRANTED
            data = {
                "door": door,
                "reason": "granted",
                "mode": "normal",
                "credential": f"cred-{user[5:]}-0",
                "user": user,
                "rule": f"rule-{i % 2000}",
                "assurance": "low",
                "kind": "nfc_uid",
                "value_hint": "04…" + f"{i:04X}"[-4:],
            }
        elif step == 1:
            event_type, data = (
                EventType.DOOR_UNLOCKED,
                {"door": door, "by": "grant", "mode": "normal"},
            )
        elif step == 2:
            event_type, data = EventType.DOOR_OPENED, {"door": door, "by": "grant"}
        elif step == 3:
            event_type, data = EventType.DOOR_CLOSED, {"door": door, "open_s": 3.2 + i % 7}
        else:
            event_type, data = (
                EventType.DOOR_LOCKED,
                {"door": door, "by": "close", "mode": "normal"},
            )
        events.append(Event(id=uuid.uuid4().hex, type=event_type, at=at, data=data))
    return events


@dataclass
class Tally:
    """What the cloud received, by event id (kept by the subscriber's network thread)."""

    expected: set[str]
    received: set[str] = field(default_factory=set)
    duplicates: int = 0
    messages: int = 0
    last_at: float | None = None  # perf_counter of the last new expected event's arrival
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, payload: bytes | bytearray) -> None:
        """Count one ``events`` message."""
        now = time.perf_counter()
        ids = [e["id"] for e in json.loads(payload)["events"]]
        with self.lock:
            self.messages += 1
            for event_id in ids:
                if event_id not in self.expected:
                    continue  # the gateway's own events (gateway.started, cache.updated…)
                if event_id in self.received:
                    self.duplicates += 1
                    continue
                self.received.add(event_id)
                self.last_at = now

    def count(self) -> int:
        """How many distinct expected events have arrived."""
        with self.lock:
            return len(self.received)

    def done(self) -> bool:
        """Whether every expected event has arrived."""
        with self.lock:
            return len(self.received) == len(self.expected)


class CloudSubscriber:
    """The cloud's counting client: a paho MQTT 5 client with a persistent session."""

    def __init__(self, broker: Broker, tally: Tally) -> None:
        self._broker = broker
        self._tally = tally
        self._client: mqtt.Client | None = None
        self._answers: queue.Queue[ReasonCode | list[ReasonCode]] = queue.Queue()

    def connect(self) -> None:
        """Connect (resuming the session) and subscribe to the gateway's events; blocking."""
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="cloud-bench-counter",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.tls_set_context(tls_context(self._broker.credentials("cloud")))
        client.on_connect = lambda c, u, f, code, p: self._answers.put(code)
        client.on_subscribe = lambda c, u, mid, codes, p: self._answers.put(codes)
        client.on_message = lambda c, u, message: self._tally.add(message.payload)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        client.connect(
            self._broker.host,
            self._broker.tls_port,
            keepalive=30,
            clean_start=False,
            properties=properties,
        )
        client.loop_start()
        self._client = client
        code = self._answers.get(timeout=WAIT_S)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # paho leaves Nagle on: the counter's PUBACKs must not hold back the broker's sends.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not isinstance(code, ReasonCode) or code.is_failure:
            raise ConnectionError(f"the counter was refused: {code}")
        client.subscribe(gateway_topic(GATEWAY, "events"), qos=1)
        codes = self._answers.get(timeout=WAIT_S)
        if not isinstance(codes, list) or any(c.is_failure for c in codes):
            raise ConnectionError(f"the counter's subscription was refused: {codes}")

    def close(self) -> None:
        """Stop the network thread (after a broker stop, the connection is gone already)."""
        client, self._client = self._client, None
        if client is not None:
            if client.is_connected():
                client.disconnect()
            client.loop_stop()


async def outbox_empty(gw: Gateway) -> None:
    """Return once the gateway's outbox holds nothing; TimeoutError after ``WAIT_S``."""
    deadline = time.perf_counter() + WAIT_S
    while (await gw.outbox.stats()).rows:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the outbox still holds events after {WAIT_S} s")
        await asyncio.sleep(0.01)


async def record_all(gw: Gateway, events: list[Event]) -> None:
    """Record ``events`` in order of their groups, ``RECORD_CONCURRENCY`` in flight at a time."""
    for start in range(0, len(events), RECORD_CONCURRENCY):
        group = events[start : start + RECORD_CONCURRENCY]
        await asyncio.gather(*(gw.events.record(e) for e in group))


async def measure(count: int, backoff_cap_s: float) -> dict[str, Any]:
    """Buffer ``count`` events with the broker down, bring it back, count what arrives."""
    # The production policy may wait up to its cap (300 s) before the next attempt.
    reconnect_wait_s = WAIT_S + (backoff_cap_s if backoff_cap_s > 0 else Backoff().cap_s)
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        async with cloud_rig(Path(tmp), demo_json()) as (broker, cloud):
            events = door_events(count, datetime.now(UTC))
            tally = Tally({e.id for e in events})
            subscriber = CloudSubscriber(broker, tally)
            await asyncio.to_thread(subscriber.connect)
            policy: Callable[[], Backoff] = Backoff
            if backoff_cap_s > 0:
                policy = partial(Backoff, base_s=min(1.0, backoff_cap_s), cap_s=backoff_cap_s)
            gw = Gateway(
                cloud_gateway_config(broker, cloud, Path(tmp) / "state"), cloud_backoff=policy
            )
            try:
                await connected_gateway(gw)
                assert gw.cloud is not None
                link = gw.cloud.link
                # The outage starts with the gateway's own start-up events delivered.
                await outbox_empty(gw)
                await asyncio.to_thread(broker.stop)
                await wait_until(lambda: not link.connected, "the gateway to notice the outage")
                t0 = time.perf_counter()
                await record_all(gw, events)
                buffer_s = time.perf_counter() - t0
                stored = (await gw.outbox.stats()).rows

                await asyncio.to_thread(broker.start)
                up = time.perf_counter()
                await asyncio.to_thread(subscriber.connect)
                await wait_until(
                    lambda: link.connected, "the gateway to reconnect", timeout_s=reconnect_wait_s
                )
                reconnect_s = time.perf_counter() - up
                progress, seen = time.perf_counter(), 0
                while not tally.done():
                    await asyncio.sleep(0.05)
                    if tally.count() != seen:
                        progress, seen = time.perf_counter(), tally.count()
                    elif time.perf_counter() - progress > STALL_S:
                        break
                await asyncio.sleep(LINGER_S)
                left = (await gw.outbox.stats()).rows
            finally:
                await gw.stop()
                await asyncio.to_thread(subscriber.close)
    with tally.lock:
        received, duplicates, last = len(tally.received), tally.duplicates, tally.last_at
    drain_s = None if last is None else last - up
    return {
        "events": count,
        "lost": count - received,
        "duplicates": duplicates,
        "drain_events_per_s": 0.0 if drain_s is None else round(received / drain_s, 1),
        "buffer_s": round(buffer_s, 2),
        "drain_s": None if drain_s is None else round(drain_s, 2),
        "reconnect_s": round(reconnect_s, 3),
        "stored_while_down": stored,
        "outbox_left": left,
        "messages": tally.messages,
    }


def main(argv: list[str]) -> int:
    """Run the benchmark; the last line printed is its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench outbox")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--backoff-cap",
        type=float,
        default=0.25,
        help="cap of the gateway's reconnect delay in seconds; 0: the production policy",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # The outage is the point: the link's warning for each failed reconnect is only noise here.
    logging.getLogger("gateway.mqtt_link").setLevel(logging.ERROR)
    print(json.dumps(asyncio.run(measure(args.events, args.backoff_cap))))
    return 0
