"""The uplink loses nothing (docs/cloud-contract.md, "Events up"), against a real Mosquitto.

A broker restart mid-burst, a gateway killed with SIGKILL mid-burst, a broker that refuses the
events, and the status and last will the cloud sees. Delivery is at least once: an event may
reach the cloud twice (same id, same content), never zero times.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest

from gateway.app import Gateway
from gateway.backoff import Backoff
from gateway.config import parse_config
from gateway.events import new_event
from gateway.model import EventType
from gateway.mqtt_link import MqttLink, MqttSettings
from gateway.uplink import EventUplink
from tests.cloud.broker import Broker, Pki, gateway_topic
from tests.cloud.fake_cloud import FakeCloud
from tests.cloud.mqtt_client import NOT_AUTHORIZED, MqttTestClient
from tests.conftest import ADA, EventWaiter, demo_json, pick_free_port, toml_text

GATEWAY = "gw-1"
#: Bound on every wait; generous for a loaded 2-core machine, never slept through.
WAIT_S = 30.0
#: Bound on one poll of a condition that has no event to wait on (the outbox's row count).
POLL_S = 0.02
#: How long the cloud keeps its session while the broker restarts.
CLOUD_SESSION_S = 600
#: Reconnect delays for in-process gateways: a restarted broker is back in milliseconds.
FAST_BACKOFF = functools.partial(Backoff, base_s=0.02, cap_s=0.2)
REPO = Path(__file__).resolve().parents[2]

Json = dict[str, Any]


# --- what reached the cloud ------------------------------------------------------------------------


@dataclass
class Received:
    """Everything gw-1 sent up, as the cloud saw it: events by id (with copies), statuses."""

    copies: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, Json] = field(default_factory=dict)
    statuses: list[tuple[Json, bool]] = field(default_factory=list)  # (status, retained)
    batches: int = 0  # messages on the events topic

    def add(self, message: mqtt.MQTTMessage) -> None:
        """File one message from the broker."""
        body = json.loads(message.payload)
        if message.topic == gateway_topic(GATEWAY, "status"):
            self.statuses.append((body, bool(message.retain)))
            return
        assert message.topic == gateway_topic(GATEWAY, "events"), message.topic
        assert body["format"] == 1
        assert body["gateway"] == GATEWAY
        self.batches += 1
        for event in body["events"]:
            known = self.bodies.setdefault(event["id"], event)
            # A duplicate is the same event sent again, never another event under its id.
            assert known == event, f"two different events share the id {event['id']}"
            self.copies[event["id"]] += 1

    def missing(self, ids: Iterable[str]) -> set[str]:
        """The ``ids`` that have not arrived."""
        return {i for i in ids if i not in self.copies}

    def duplicates(self) -> int:
        """How many copies arrived beyond the first of each event."""
        return sum(self.copies.values()) - len(self.copies)

    def states(self) -> list[str]:
        """The ``state`` of every status, in arrival order."""
        return [status["state"] for status, _ in self.statuses]


async def receive_until(
    client: MqttTestClient, received: Received, done: Callable[[], bool], what: str
) -> None:
    """File the client's messages into ``received`` until ``done()``; AssertionError after WAIT_S.

    Each wait is bounded by the client's own queue timeout and never cancelled: a cancelled
    ``to_thread`` would leave its thread to take (and drop) the next message.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not done():
        remaining = deadline - loop.time()
        try:
            message = await asyncio.to_thread(client.next_message, max(remaining, 0.01))
        except AssertionError:
            raise AssertionError(
                f"waited {WAIT_S} s for {what} in vain: {len(received.copies)} events and "
                f"statuses {received.states()} arrived"
            ) from None
        received.add(message)


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` (for state no event announces) until true; AssertionError after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        # Polled: the outbox's row count and another process's web API announce nothing.
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)
    assert await condition(), what


def cloud_listener(broker: Broker) -> MqttTestClient:
    """The cloud's connection with a persistent session: what is sent while it is away waits."""
    return MqttTestClient(
        broker.host,
        broker.tls_port,
        "cloud",
        tls=broker.credentials("cloud"),
        clean_start=False,
        session_expiry_s=CLOUD_SESSION_S,
    )


async def reconnect_cloud(cloud: FakeCloud) -> None:
    """Resume the cloud's session after a broker restart, keeping what it already received."""
    old, new = cloud.mqtt, cloud_listener(cloud.broker)
    await asyncio.to_thread(old.close)
    while not old.messages.empty():
        new.messages.put(old.messages.get_nowait())
    connected = await asyncio.to_thread(new.connect)
    assert connected.session_present, "the broker lost the cloud's session"
    cloud.mqtt = new


def retained_status(broker: Broker) -> tuple[Json, bool]:
    """gw-1's status as a new subscriber gets it: (status, whether it came retained)."""
    with MqttTestClient(
        broker.host, broker.tls_port, "cloud-late", tls=broker.credentials("cloud")
    ) as late:
        late.subscribe(gateway_topic(GATEWAY, "status"), 1)
        message = late.next_message()
    return json.loads(message.payload), bool(message.retain)


# --- gateways ----------------------------------------------------------------------------------------


def gateway_data(pki: Pki, broker: Broker, cloud: FakeCloud, state_dir: Path) -> Json:
    """gw-1's configuration (parsed-TOML data), provisioned for the fake cloud, simulated doors."""
    identity = pki.identity(GATEWAY)
    return {
        "gateway": {"state_dir": str(state_dir), "log_format": "json"},
        "web": {"host": "127.0.0.1", "port": pick_free_port()},
        "hardware": {"backend": "simulated"},
        "demo": {"seed": False},
        "cloud": {
            "enabled": True,
            "gateway_id": GATEWAY,
            "mqtt_host": broker.host,
            "mqtt_port": broker.tls_port,
            "api_url": cloud.api_url,
            "ca_file": str(pki.ca_cert),
            "cert_file": str(identity.cert),
            "key_file": str(identity.key),
            "signing_key_file": str(cloud.public_key_file),
        },
    }


@pytest.fixture
async def cloud(pki: Pki, broker: Broker, tmp_path: Path) -> AsyncIterator[FakeCloud]:
    """The fake cloud serving the demo site to gw-1, listening with a persistent session."""
    fake = FakeCloud(pki, broker, tmp_path / "cloud")
    fake.mqtt = cloud_listener(broker)
    await fake.start()
    fake.set_snapshot(GATEWAY, demo_json())
    yield fake
    await fake.stop()


@pytest.fixture
async def online(
    pki: Pki, broker: Broker, cloud: FakeCloud, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[Gateway]]]:
    """``await online()``: gw-1 in this process, connected, with the cloud's snapshot; it
    reconnects (and retries refused events) after milliseconds, not seconds."""
    started: list[Gateway] = []
    config_data = gateway_data(pki, broker, cloud, tmp_path / "state")

    async def start() -> Gateway:
        gw = Gateway(parse_config(config_data), cloud_backoff=FAST_BACKOFF)
        waiter = EventWaiter(gw)
        await gw.start()
        started.append(gw)
        assert gw.cloud is not None
        async with asyncio.timeout(WAIT_S):
            await gw.cloud.link.wait_connected()
        await waiter.wait_for("cache.updated", source="snapshot", within_s=WAIT_S)
        waiter.remove()
        return gw

    yield start
    for gw in reversed(started):
        await gw.stop()


async def record_burst(gw: Gateway, count: int, first: int = 0) -> list[str]:
    """Record ``count`` events at once (committed together); their ids."""
    logged = await asyncio.gather(
        *(
            gw.events.record(
                new_event(EventType.DOOR_REX, gw.clock(), {"door": "front", "burst": n})
            )
            for n in range(first, first + count)
        )
    )
    return [entry.event.id for entry in logged]


# --- 1. a broker restart mid-burst ---------------------------------------------------------------


async def test_a_publish_while_the_link_is_down_goes_out_once_it_is_back(
    broker: Broker, cloud: FakeCloud
) -> None:
    identity = broker.identity(GATEWAY)
    lost = asyncio.Event()
    link = MqttLink(
        MqttSettings(
            host=broker.host,
            port=broker.tls_port,
            client_id=GATEWAY,
            ca_file=broker.ca_cert,
            cert_file=identity.cert,
            key_file=identity.key,
        ),
        backoff=FAST_BACKOFF,
        on_message=lambda message: None,
        on_disconnected=lambda why: lost.set(),
    )
    await link.start()
    try:
        async with asyncio.timeout(WAIT_S):
            await link.wait_connected()
        await asyncio.to_thread(broker.stop)
        async with asyncio.timeout(WAIT_S):
            await lost.wait()

        # paho answers "no connection" and keeps the message for the next connection.
        sent = asyncio.create_task(
            link.publish(
                gateway_topic(GATEWAY, "events"), b'{"format":1,"gateway":"gw-1","events":[]}'
            )
        )
        await asyncio.to_thread(broker.start)
        async with asyncio.timeout(WAIT_S):
            code = await sent
    finally:
        await link.stop()

    assert code.value == 0
    await reconnect_cloud(cloud)
    received = Received()
    await receive_until(cloud.mqtt, received, lambda: received.batches == 1, "the message")


async def test_a_broker_restart_mid_burst_loses_no_event(
    online: Callable[[], Awaitable[Gateway]], cloud: FakeCloud, broker: Broker
) -> None:
    gw = await online()
    received = Received()
    ids = await record_burst(gw, 150)
    restart = asyncio.create_task(asyncio.to_thread(broker.restart))
    # More events while the broker stops and comes back: some in flight, some queued.
    during = 0
    while not restart.done() or len(ids) < 300:
        batch = await record_burst(gw, 10, first=len(ids))
        ids += batch
        during += 0 if restart.done() else len(batch)
    await restart
    await reconnect_cloud(cloud)

    await receive_until(
        cloud.mqtt,
        received,
        lambda: not received.missing(ids) and received.states().count("online") >= 2,
        "every event of the burst and the gateway back online",
    )

    assert not received.missing(ids)
    assert during > 0, "the broker restarted after the burst, not during it"
    await wait_until(
        lambda: _outbox_empty(gw), "the outbox is empty once the events are acknowledged"
    )
    print(
        f"{len(ids)} events, {during} recorded during the restart, "
        f"{received.duplicates()} duplicates"
    )


async def _outbox_empty(gw: Gateway) -> bool:
    return (await gw.outbox.stats()).rows == 0


# --- 2. a gateway killed with SIGKILL mid-burst ------------------------------------------------------


class GatewayProcess:
    """``luckey-gateway run --config …`` as its own process, its output in a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon (returns at once; see ``wait_ready``)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.process is not None and self.process.poll() is None

    def end(self, sig: signal.Signals) -> int:
        """Send ``sig`` and wait (bounded) for the exit; the exit status."""
        process = self.process
        assert process is not None
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"the gateway ignored {sig.name}:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the daemon's output."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def daemon(pki: Pki, broker: Broker, cloud: FakeCloud, tmp_path: Path) -> Iterator[GatewayProcess]:
    """gw-1 as a separate process (not started), its TOML written; killed at teardown."""
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(gateway_data(pki, broker, cloud, tmp_path / "state")))
    gw = GatewayProcess(config, tmp_path / "gateway.log")
    yield gw
    if gw.alive():
        gw.end(signal.SIGKILL)


def web_url(daemon: GatewayProcess, path: str) -> str:
    """A URL on the daemon's web server."""
    port = tomllib.loads(daemon.config.read_text())["web"]["port"]
    return f"http://127.0.0.1:{port}{path}"


async def wait_ready(daemon: GatewayProcess, http: aiohttp.ClientSession) -> None:
    """Wait until the daemon serves its web API with the cloud's site (polled: nothing to await)."""

    async def ready() -> bool:
        assert daemon.alive(), f"the gateway exited:\n{daemon.log_tail()}"
        try:
            async with http.get(web_url(daemon, "/api/health")) as response:
                return response.status == 200 and (await response.json())["cache"]["version"] >= 1
        except aiohttp.ClientError:
            return False

    await wait_until(ready, "the gateway's web API with the cloud's site")


def outbox_ids(state_dir: Path) -> set[str]:
    """The ids of the events committed to the outbox file (read with plain sqlite3)."""
    conn = sqlite3.connect(state_dir / "outbox.db")
    try:
        return {str(row[0]) for row in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()


#: Decisions the API reports before the gateway is killed (presentations keep coming meanwhile).
KILL_AFTER = 150
WORKERS = 8


async def test_a_gateway_killed_mid_burst_sends_every_committed_event_after_its_restart(
    daemon: GatewayProcess, cloud: FakeCloud, tmp_path: Path
) -> None:
    received = Received()
    daemon.start()
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await wait_ready(daemon, http)
        await receive_until(
            cloud.mqtt, received, lambda: "online" in received.states(), "gw-1 online"
        )
        granted = 0
        enough = asyncio.Event()

        async def present() -> None:
            nonlocal granted
            url = web_url(daemon, "/api/simulator/doors/front/present")
            while True:
                try:
                    async with http.post(url, json={"credential": f"nfc_uid:{ADA}"}) as response:
                        body = await response.json()
                except aiohttp.ClientError:
                    return  # the gateway is gone
                assert body["decision"]["granted"], body
                granted += 1  # committed: the decision's event is in the outbox before the answer
                if granted >= KILL_AFTER:
                    enough.set()

        workers = [asyncio.create_task(present()) for _ in range(WORKERS)]
        async with asyncio.timeout(WAIT_S):
            await enough.wait()
        assert await asyncio.to_thread(daemon.end, signal.SIGKILL) == -signal.SIGKILL
        await asyncio.gather(*workers)

        # What the killed gateway had committed and not yet handed to the broker.
        kept = outbox_ids(tmp_path / "state")
        assert kept, "the kill found nothing left in the outbox: it came after the burst"
        await receive_until(
            cloud.mqtt,
            received,
            lambda: any(s["outbox_pending"] == -1 for s, _ in received.statuses),
            "the broker's last will for the killed gateway",
        )
        will = next(s for s, _ in received.statuses if s["outbox_pending"] == -1)
        assert will["state"] == "offline"
        assert will["offline_since"] is None

        daemon.start()  # the same state directory
        await receive_until(
            cloud.mqtt,
            received,
            lambda: not received.missing(kept) and received.states().count("online") >= 2,
            "every event the killed gateway had kept",
        )
        await wait_ready(daemon, http)

    assert not received.missing(kept)
    decided = [e for e in received.bodies.values() if e["type"] == "access.granted"]
    assert len(decided) >= granted, "a decision the API reported never reached the cloud"
    assert await asyncio.to_thread(daemon.end, signal.SIGTERM) == 0, daemon.log_tail()
    print(
        f"{granted} decisions, {len(kept)} events kept at the kill, "
        f"{len(received.copies)} events up, {received.duplicates()} duplicates"
    )


# --- 3. refused by the broker --------------------------------------------------------------------


class CountingBackoff(Backoff):
    """A fast policy that says when it has been asked for ``wanted`` delays (one per refusal)."""

    def __init__(self, wanted: int) -> None:
        super().__init__(base_s=0.01, cap_s=0.05)
        self.wanted = wanted
        self.enough = asyncio.Event()

    def next_delay(self) -> float:
        """The delay; counts the attempt."""
        delay = super().next_delay()
        if self.attempts >= self.wanted:
            self.enough.set()
        return delay


async def test_refused_events_stay_in_the_outbox_with_one_alarm_and_go_up_once_allowed(
    online: Callable[[], Awaitable[Gateway]], cloud: FakeCloud, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await online()
    assert gw.cloud is not None
    link = gw.cloud.link
    await gw.cloud.uplink.stop()  # the burst waits for the uplinks of this test
    waiter = EventWaiter(gw)
    ids = await record_burst(gw, 250)
    policy = CountingBackoff(wanted=5)
    uplinks: list[EventUplink] = []

    async def uplink(owner: str, backoff: Callable[[], Backoff]) -> EventUplink:
        up = EventUplink(
            gw.outbox,
            link,
            gw.events,
            gateway_id=GATEWAY,
            topic=gateway_topic(owner, "events"),
            clock=gw.clock,
            backoff=backoff,
        )
        uplinks.append(up)
        await up.start()
        return up

    try:
        # gw-1's link publishing to gw-2's events: the ACL says no, PUBACK 0x87.
        wrong = await uplink("gw-2", lambda: policy)
        async with asyncio.timeout(WAIT_S):
            await policy.enough.wait()
        await wrong.stop()

        [alarm] = waiter.matching("uplink.refused")  # one per run of refusals, not per attempt
        assert alarm.event.data["code"] == NOT_AUTHORIZED
        assert alarm.event.data["reason"] == "Not authorized"
        assert alarm.event.data["kept"] > 0
        errors = [
            r for r in caplog.records if r.name == "gateway.uplink" and r.levelname == "ERROR"
        ]
        assert len(errors) == 1, "a refusal is logged once, not once per attempt"
        assert wrong.sent == 0
        pending = {stored.event.id for stored in await gw.outbox.pending(limit=10_000)}
        assert set(ids) | {alarm.event.id} <= pending

        await uplink(GATEWAY, FAST_BACKOFF)
        received = Received()
        everything = [*ids, alarm.event.id]
        await receive_until(
            cloud.mqtt,
            received,
            lambda: not received.missing(everything),
            "the refused events once the cause is gone",
        )
        await wait_until(lambda: _outbox_empty(gw), "the outbox is empty once accepted")
    finally:
        for up in uplinks:
            await up.stop()
        waiter.remove()
    assert received.bodies[alarm.event.id]["type"] == "uplink.refused"


# --- 4. status and last will -------------------------------------------------------------------------


async def test_the_cloud_sees_online_the_will_when_the_link_dies_and_offline_on_a_clean_stop(
    online: Callable[[], Awaitable[Gateway]], cloud: FakeCloud, broker: Broker
) -> None:
    received = Received()
    gw = await online()
    assert gw.cloud is not None
    await receive_until(cloud.mqtt, received, lambda: "online" in received.states(), "online")
    status, retained = await asyncio.to_thread(retained_status, broker)
    assert (status["state"], retained) == ("online", True)
    assert status["offline_since"] is None
    assert status["outbox_pending"] >= 0

    # The connection dies without DISCONNECT: the broker sends the will; the gateway comes back.
    sock = gw.cloud.link._client.socket()
    assert isinstance(sock, socket.socket), "not connected"
    sock.shutdown(socket.SHUT_RDWR)
    await receive_until(
        cloud.mqtt, received, lambda: received.states()[-2:] == ["offline", "online"], "will"
    )
    will = received.statuses[-2][0]
    assert will["outbox_pending"] == -1
    assert will["offline_since"] is None
    assert received.statuses[-1][0]["offline_since"] is None  # null while connected

    await gw.stop()  # "offline" is published before the DISCONNECT, which drops the will
    await receive_until(
        cloud.mqtt, received, lambda: received.states()[-1] == "offline", "offline on stop"
    )
    goodbye = received.statuses[-1][0]
    assert goodbye["outbox_pending"] >= 0
    status, retained = await asyncio.to_thread(retained_status, broker)
    assert retained
    assert status == goodbye, "the will replaced the clean goodbye"
