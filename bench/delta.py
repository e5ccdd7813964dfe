"""A signed delta from the cloud → the first decision at the gateway that reflects it.

A real Mosquitto (tests/cloud/broker.py: mTLS, ACL) and the fake cloud (tests/cloud/fake_cloud.py)
run on loopback with a whole ``Gateway`` (simulated hardware) connected to them. Each sample, the
cloud publishes a signed delta that suspends or reactivates one user (versions increasing). The
clock (``time.perf_counter``) starts just before the cloud's publish call and stops when a
decision for that user's card, taken the way the entry service takes it (``credentials.verify``
and ``access.decide`` on the new view, the door's mode), gives the new answer: taken in a cache
listener, that is the first decision any read at the reader could get. The real entry path
(``gw.entry.handle``) is then asked too, untimed, and must agree.

The baseline is a bare MQTT publish → receive through the same broker and TLS listener: the same
cloud client publishes the same kind of signed delta at QoS 1 to another gateway's topic, where a
bare paho client (that gateway's certificate) stamps its arrival in its network thread. The ACL
lets no identity read a topic it may write, so no client can publish to itself there; cloud →
broker → subscriber is the same two legs, and the very path a delta takes. Samples alternate
between the two so machine noise hits both; a few warm-up samples of each are not counted.

Every MQTT socket here (the gateway's, the fake cloud's) runs without Nagle's delay; with it, a
publish written right after a PUBACK waits for the peer's delayed ACK (~40 ms on Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import queue
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench.stats import percentile
from drivers.base import CredentialRead
from gateway import access, credentials
from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.events import LoggedEvent
from gateway.model import CredentialKind, Decision, Presentation, Reason
from gateway.view import CacheView
from tests.cloud.broker import Broker, gateway_topic, make_pki
from tests.cloud.fake_cloud import FakeCloud
from tests.cloud.mqtt_client import tls_context
from tests.conftest import demo_json, pick_free_port

GATEWAY = "gw-1"
#: The identity of the baseline's bare subscriber (a second gateway's certificate).
PROBE = "gw-2"
WAIT_S = 10.0
#: A generated site of 100k users takes seconds to serve, check and apply.
SNAPSHOT_WAIT_S = 120.0
POLL_S = 0.005
#: Samples of each kind run first and not counted (imports, first TLS records, caches).
WARMUP = 10
#: Upper bound of the random pause between samples, so they do not run in lockstep.
GAP_MAX_S = 0.01


def cloud_gateway_config(broker: Broker, cloud: FakeCloud, state_dir: Path) -> Config:
    """A gateway provisioned for the fake cloud on in-memory hardware, without the demo site."""
    identity = broker.identity(GATEWAY)
    return parse_config(
        {
            "gateway": {"state_dir": str(state_dir)},
            "web": {"port": pick_free_port()},
            "hardware": {"backend": "simulated"},
            "demo": {"seed": False},
            "cloud": {
                "enabled": True,
                "gateway_id": GATEWAY,
                "mqtt_host": broker.host,
                "mqtt_port": broker.tls_port,
                "api_url": cloud.api_url,
                "ca_file": str(broker.ca_cert),
                "cert_file": str(identity.cert),
                "key_file": str(identity.key),
                "signing_key_file": str(cloud.public_key_file),
            },
        }
    )


@contextlib.asynccontextmanager
async def cloud_rig(
    directory: Path, site: dict[str, Any]
) -> AsyncIterator[tuple[Broker, FakeCloud]]:
    """A running broker (fresh PKI for the gateway, the probe and the cloud) and fake cloud
    serving ``site`` to the gateway; both stopped on exit."""
    pki = make_pki(directory / "pki", (GATEWAY, PROBE))
    broker = Broker(pki, directory / "broker")
    await asyncio.to_thread(broker.start)
    try:
        cloud = FakeCloud(pki, broker, directory / "cloud")
        await cloud.start()
        try:
            cloud.set_snapshot(GATEWAY, site)
            yield broker, cloud
        finally:
            await cloud.stop()
    finally:
        await asyncio.to_thread(broker.stop)


async def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``predicate`` until it holds; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"waited {timeout_s} s for {what} in vain")
        await asyncio.sleep(POLL_S)


async def connected_gateway(gw: Gateway) -> None:
    """Start ``gw`` and return once it is online and holds the cloud's snapshot."""
    await gw.start()
    assert gw.cloud is not None
    async with asyncio.timeout(WAIT_S):
        await gw.cloud.link.wait_connected()
    await wait_until(lambda: gw.cache.version >= 1, "the first snapshot", SNAPSHOT_WAIT_S)


class Probe:
    """A bare paho MQTT 5 client on its own network thread; stamps each arrival (perf_counter)."""

    def __init__(self, broker: Broker, identity: str) -> None:
        self._host, self._port = broker.host, broker.tls_port
        self.arrivals: queue.Queue[tuple[bytes, float]] = queue.Queue()
        self._ready: queue.Queue[ReasonCode | list[ReasonCode]] = queue.Queue()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=identity,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self._client.tls_set_context(tls_context(broker.credentials(identity)))
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self, topic: str) -> None:
        """Connect and subscribe to ``topic`` at QoS 1 (blocking: run it in a thread)."""
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        code = self._ready.get(timeout=WAIT_S)
        if isinstance(code, ReasonCode) and code.is_failure:
            raise ConnectionError(f"probe refused: {code}")
        self._client.subscribe(topic, qos=1)
        granted = self._ready.get(timeout=WAIT_S)
        if not isinstance(granted, list) or any(c.is_failure for c in granted):
            raise ConnectionError(f"probe subscription refused: {granted}")

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, code: ReasonCode, props: Any
    ) -> None:
        self._ready.put(code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        self._ready.put(codes)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.arrivals.put((bytes(message.payload), time.perf_counter()))


@dataclass(frozen=True, slots=True)
class Subject:
    """The user the deltas suspend and reactivate, the card they present and where."""

    user: dict[str, Any]
    door: str
    value: str
    site_id: str


def pick_subject(site: dict[str, Any]) -> Subject:
    """An active user (no validity limit) with a usable NFC card, at a low-assurance door."""
    cards = {
        c["user"]: c["value"]
        for c in reversed(site["credentials"])
        if c["kind"] == "nfc_uid" and not c.get("revoked")
    }
    user = next(
        u
        for u in site["users"]
        if u.get("status", "active") == "active" and "valid_until" not in u and u["id"] in cards
    )
    door = next(d["id"] for d in site["doors"] if d.get("min_assurance", "low") == "low")
    return Subject(user, door, cards[user["id"]], site["site"]["id"])


def decide(gw: Gateway, view: CacheView, subject: Subject) -> Decision:
    """The decision the entry service takes for the subject's card on ``view`` (no event)."""
    presentation = Presentation(subject.door, CredentialKind.NFC_UID, subject.value)
    identity = credentials.verify(presentation, view.credential, credentials.DEFAULT_VERIFIERS)
    return access.decide(identity, subject.door, gw.clock(), view, gw.doors.mode(subject.door))


def reflects(decision: Decision, suspended: bool) -> bool:
    """Whether ``decision`` shows the user as ``suspended`` (or not)."""
    return (decision.reason is Reason.USER_DISABLED) == suspended


def delta_json(version: int, subject: Subject, suspended: bool) -> dict[str, Any]:
    """The delta ``version - 1`` → ``version`` that suspends or reactivates the subject."""
    user = {**subject.user, "status": "suspended" if suspended else "active"}
    return {
        "format": 1,
        "version": version,
        "base_version": version - 1,
        "site_id": subject.site_id,
        "upsert": {"users": [user]},
    }


async def delta_sample(
    gw: Gateway, cloud: FakeCloud, subject: Subject, version: int, suspended: bool
) -> float:
    """Publish one delta; milliseconds until a decision reflects it."""
    loop = asyncio.get_running_loop()
    changed: asyncio.Future[tuple[float, Decision]] = loop.create_future()
    updated: asyncio.Future[None] = loop.create_future()

    def on_view(view: CacheView) -> None:
        if view.version == version and not changed.done():
            decision = decide(gw, view, subject)
            changed.set_result((time.perf_counter(), decision))

    def on_event(logged: LoggedEvent) -> None:
        event = logged.event
        ours = event.type == "cache.updated" and event.data.get("version") == version
        if ours and not updated.done():
            updated.set_result(None)

    remove_view = gw.cache.add_listener(on_view)
    remove_event = gw.events.add_listener(on_event)
    try:
        t0 = time.perf_counter()
        await cloud.send(GATEWAY, "delta", delta_json(version, subject, suspended))
        async with asyncio.timeout(WAIT_S):
            t1, decision = await changed
            # The delta is done with (its event committed, the PUBACK on its way) before the next.
            await updated
    finally:
        remove_view()
        remove_event()
    if not reflects(decision, suspended):
        raise AssertionError(f"version {version}: the first decision was {decision.reason}")
    entry = await gw.entry.handle(CredentialRead(subject.door, "nfc_uid", subject.value))
    if not reflects(entry, suspended):
        raise AssertionError(f"version {version}: the entry path decided {entry.reason}")
    return (t1 - t0) * 1000


async def rtt_sample(cloud: FakeCloud, probe: Probe, subject: Subject, version: int) -> float:
    """Publish one signed delta to the probe's topic; milliseconds until it arrived there."""
    t0 = time.perf_counter()
    await cloud.send(PROBE, "delta", delta_json(version, subject, version % 2 == 0))
    _, t1 = await asyncio.to_thread(probe.arrivals.get, True, WAIT_S)
    return (t1 - t0) * 1000


async def measure(samples: int, users: int) -> dict[str, Any]:
    """Run ``samples`` (plus warm-up) delta and baseline samples, interleaved; the figures."""
    rng = random.Random(1)
    if users:
        from bench.sitegen import site_json

        site = site_json(users=users, creds_per_user=3, rules=2_000, doors=50, tags=500, seed=1)
    else:
        site = demo_json()
    subject = pick_subject(site)
    delta_ms: list[float] = []
    rtt_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-delta-") as tmp:
        async with cloud_rig(Path(tmp), site) as (broker, cloud):
            probe = Probe(broker, PROBE)
            await asyncio.to_thread(probe.start, gateway_topic(PROBE, "delta"))
            gw = Gateway(cloud_gateway_config(broker, cloud, Path(tmp) / "state"))
            try:
                await connected_gateway(gw)
                if not reflects(decide(gw, gw.cache.view, subject), suspended=False):
                    raise AssertionError("the subject is not active in the snapshot")
                version = gw.cache.version
                for i in range(WARMUP + samples):
                    version += 1
                    suspended = version % 2 == 0
                    took = await delta_sample(gw, cloud, subject, version, suspended)
                    await asyncio.sleep(rng.uniform(0, GAP_MAX_S))
                    rtt = await rtt_sample(cloud, probe, subject, version)
                    await asyncio.sleep(rng.uniform(0, GAP_MAX_S))
                    if i >= WARMUP:
                        delta_ms.append(took)
                        rtt_ms.append(rtt)
            finally:
                await gw.stop()
                await asyncio.to_thread(probe.stop)
    delta_p99 = percentile(delta_ms, 0.99)
    rtt_p99 = percentile(rtt_ms, 0.99)
    return {
        "samples": samples,
        "users": len(site["users"]),
        "delta_p50_ms": round(statistics.median(delta_ms), 3),
        "delta_p99_ms": round(delta_p99, 3),
        "delta_max_ms": round(max(delta_ms), 3),
        "mqtt_rtt_p50_ms": round(statistics.median(rtt_ms), 3),
        "mqtt_rtt_p99_ms": round(rtt_p99, 3),
        "ratio_p99": round(delta_p99 / rtt_p99, 2),
    }


def main(argv: list[str]) -> int:
    """Run the benchmark; the last line printed is its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench delta")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--users",
        type=int,
        default=0,
        help="serve a generated site of this many users (bench/sitegen.py); 0: the demo site",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(asyncio.run(measure(args.samples, args.users))))
    return 0
