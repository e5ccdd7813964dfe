"""The whole gateway against a real Mosquitto and the fake cloud (docs/cloud-contract.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.base import CredentialRead
from gateway import cloud as cloud_module
from gateway import snapshots as snapshots_module
from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.model import DoorMode, Reason
from gateway.snapshots import PullResult
from tests.cloud.broker import Broker, Pki, gateway_topic
from tests.cloud.fake_cloud import FakeCloud, sign
from tests.conftest import ADA, BOB, Clock, EventWaiter, demo_json, pick_free_port

GATEWAY = "gw-1"
WAIT_S = 10.0


@pytest.fixture
async def cloud(pki: Pki, broker: Broker, tmp_path: Path) -> AsyncIterator[FakeCloud]:
    """The fake cloud, serving the demo site (version 1) to gw-1."""
    fake = FakeCloud(pki, broker, tmp_path / "cloud")
    await fake.start()
    fake.set_snapshot(GATEWAY, demo_json())
    yield fake
    await fake.stop()


def cloud_config(pki: Pki, broker: Broker, cloud: FakeCloud, state_dir: Path) -> Config:
    """A gateway provisioned for the fake cloud, on in-memory hardware, without the demo site."""
    identity = pki.identity(GATEWAY)
    return parse_config(
        {
            "gateway": {"state_dir": str(state_dir), "log_format": "json"},
            "web": {"port": pick_free_port()},
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
    )


GatewayStarter = Callable[..., Any]


@pytest.fixture
async def connected(
    pki: Pki, broker: Broker, cloud: FakeCloud, tmp_path: Path
) -> AsyncIterator[Callable[[], Any]]:
    """``await connected()``: a started gateway that has pulled its snapshot and is online.

    On the wall clock: commands carry real expiry times.
    """
    started: list[Gateway] = []
    config = cloud_config(pki, broker, cloud, tmp_path / "state")

    async def start() -> Gateway:
        gw = Gateway(config)
        await gw.start()
        started.append(gw)
        assert gw.cloud is not None
        waiter = EventWaiter(gw)
        async with asyncio.timeout(WAIT_S):
            await gw.cloud.link.wait_connected()
        if gw.cache.version < 1:  # the first start: its first snapshot
            await waiter.wait_for("cache.updated", source="snapshot", within_s=WAIT_S)
        waiter.remove()
        return gw

    yield start
    for gw in reversed(started):
        await gw.stop()


async def status_of(cloud: FakeCloud, state: str) -> dict[str, Any]:
    """Wait for gw-1's status with ``state``."""
    async with asyncio.timeout(WAIT_S):
        while True:
            topic, body = await cloud.next_message()
            if topic == gateway_topic(GATEWAY, "status") and body["state"] == state:
                return body


def delta(version: int, **changes: Any) -> dict[str, Any]:
    return {
        "format": 1,
        "version": version,
        "base_version": version - 1,
        "site_id": "demo",
        **changes,
    }


def suspend_ada(version: int = 2) -> dict[str, Any]:
    """A delta that makes Ada's card stop working."""
    ada = next(u for u in demo_json()["users"] if u["id"] == "ada")
    return delta(version, upsert={"users": [{**ada, "status": "suspended"}]})


def command(
    kind: str, command_id: str = "c-1", *, expired: bool = False, **fields: Any
) -> dict[str, Any]:
    """A command issued now for a minute (or one that expired a minute ago)."""
    issued = datetime.now(UTC) - timedelta(minutes=2 if expired else 0)
    return {
        "format": 1,
        "id": command_id,
        "gateway": GATEWAY,
        "kind": kind,
        "issued_at": issued.isoformat(),
        "expires_at": (issued + timedelta(minutes=1)).isoformat(),
        **fields,
    }


async def present(gw: Gateway, value: str) -> Reason:
    return (await gw.entry.handle(CredentialRead("front", "nfc_uid", value))).reason


# --- snapshot, status, events --------------------------------------------------------------------


async def test_a_gateway_pulls_its_signed_snapshot_says_online_and_sends_its_events(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()

    assert gw.cache.version == 1
    status = await status_of(cloud, "online")
    assert status["gateway"] == GATEWAY
    assert status["offline_since"] is None
    request = cloud.requests[0]
    assert "gzip" in request["Accept-Encoding"]
    assert await present(gw, ADA) is Reason.GRANTED
    events = await cloud.events(GATEWAY, 1)
    assert all(set(e) == {"id", "type", "at", "data"} for e in events)
    types: list[str] = [e["type"] for e in events]
    while "access.granted" not in types:
        types += [e["type"] for e in await cloud.events(GATEWAY, 1)]
    assert "cache.updated" in types


async def test_a_snapshot_with_a_bad_signature_is_never_applied(
    connected: Callable[[], Any],
    cloud: FakeCloud,
    pki: Pki,
    broker: Broker,
    tmp_path: Path,
    clock: Clock,
) -> None:
    cloud.set_snapshot(GATEWAY, demo_json(), signed=False)
    gw = Gateway(cloud_config(pki, broker, cloud, tmp_path / "other"), clock=clock)
    await gw.start()
    try:
        waiter = EventWaiter(gw)
        [rejected] = await waiter.wait_for("cloud.rejected", within_s=WAIT_S)
        assert rejected.event.data["what"] == "snapshot"
        assert "signature" in rejected.event.data["reason"]
        assert gw.cache.version == 0
    finally:
        await gw.stop()


# --- deltas --------------------------------------------------------------------------------------


async def test_a_signed_delta_changes_the_next_decision(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)
    assert await present(gw, ADA) is Reason.GRANTED

    await cloud.send(GATEWAY, "delta", suspend_ada())

    await waiter.wait_for("cache.updated", source="delta", within_s=WAIT_S)
    assert gw.cache.version == 2
    assert await present(gw, ADA) is Reason.USER_DISABLED


@pytest.mark.parametrize(
    ("payload", "signature", "why"),
    [
        (json.dumps(suspend_ada()).encode(), None, "signature"),
        (json.dumps(suspend_ada()).encode(), "ed25519=" + "A" * 86 + "==", "signature"),
        (b"{not json", "", "malformed"),
        (json.dumps(delta(2, upsert={"users": [{"id": "x"}]})).encode(), "", "malformed"),
    ],
)
async def test_a_bad_delta_is_rejected_with_an_event_and_never_applied(
    connected: Callable[[], Any], cloud: FakeCloud, payload: bytes, signature: str | None, why: str
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)

    await cloud.send(GATEWAY, "delta", payload, signature=signature)

    [rejected] = await waiter.wait_for("cloud.rejected", within_s=WAIT_S)
    assert rejected.event.data["what"] == "delta"
    assert rejected.event.data["reason"].startswith(why)
    assert gw.cache.version == 1
    assert await present(gw, ADA) is Reason.GRANTED


async def test_a_gap_in_deltas_pulls_a_snapshot(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)
    newer = demo_json()
    newer["version"] = 5
    for user in newer["users"]:
        if user["id"] == "ada":
            user["status"] = "suspended"
    cloud.set_snapshot(GATEWAY, newer)

    await cloud.send(GATEWAY, "delta", delta(5, upsert={}))  # based on 4: the gateway holds 1

    await waiter.wait_for("cache.updated", source="snapshot", reason="gap", within_s=WAIT_S)
    assert gw.cache.version == 5
    assert await present(gw, ADA) is Reason.USER_DISABLED


# --- commands ------------------------------------------------------------------------------------


async def test_an_unlock_command_opens_the_door_and_its_result_goes_up(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)

    await cloud.send(GATEWAY, "cmd", command("unlock", door="front", mode="momentary", seconds=1))

    [result] = await waiter.wait_for("command.result", within_s=WAIT_S)
    assert result.event.data == {"command": "c-1", "kind": "unlock", "status": "done", "detail": ""}
    assert waiter.matching("door.unlocked", door="front", by="command")
    up = [e for e in await cloud.events(GATEWAY, 1) if e["type"] == "command.result"]
    while not up:
        up = [e for e in await cloud.events(GATEWAY, 1) if e["type"] == "command.result"]
    assert up[0]["data"]["command"] == "c-1"


async def test_a_redelivered_command_runs_once_and_an_expired_one_not_at_all(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)
    lockdown = command("set_mode", "c-2", door="*", mode="lockdown")

    await cloud.send(GATEWAY, "cmd", lockdown)
    await cloud.send(GATEWAY, "cmd", lockdown)  # the same id again
    await cloud.send(
        GATEWAY, "cmd", command("set_mode", "c-3", expired=True, door="front", mode="normal")
    )
    await cloud.send(GATEWAY, "cmd", command("sync", "c-4"))

    results = await waiter.wait_for("command.result", count=3, within_s=WAIT_S)
    assert [(r.event.data["command"], r.event.data["status"]) for r in results] == [
        ("c-2", "done"),
        ("c-3", "expired"),
        ("c-4", "done"),
    ]
    assert all(gw.doors.mode(d) is DoorMode.LOCKDOWN for d in gw.cache.view.doors)
    assert await present(gw, BOB) is Reason.DOOR_LOCKDOWN


async def test_commands_sent_while_the_gateway_is_away_run_when_it_returns(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()
    await gw.stop()  # its session stays at the broker

    await cloud.send(
        GATEWAY, "cmd", command("set_mode", "c-9", door="front", mode="emergency_open")
    )
    again = await connected()

    waiter = EventWaiter(again)
    [result] = await waiter.wait_for("command.result", command="c-9", within_s=WAIT_S)
    assert result.event.data["status"] == "done"
    assert again.doors.mode("front") is DoorMode.EMERGENCY_OPEN


# --- offline policy ------------------------------------------------------------------------------


async def test_after_a_long_outage_limited_kinds_stop_until_the_cloud_is_back(
    connected: Callable[[], Any], cloud: FakeCloud, broker: Broker, tmp_path: Path
) -> None:
    site = demo_json()
    site["site"] |= {"max_offline_days": 1, "offline_limited_kinds": ["nfc_uid"]}
    cloud.set_snapshot(GATEWAY, site)
    gw = await connected()
    assert await present(gw, ADA) is Reason.GRANTED
    await gw.stop()
    # The gateway was last in touch two days ago (kept across restarts), and the broker is down.
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    (tmp_path / "state" / "cloud_link.json").write_text(
        json.dumps({"in_touch_at": two_days_ago.isoformat()})
    )
    await asyncio.to_thread(broker.stop)

    again = Gateway(gw.config)
    await again.start()
    try:
        assert again.cloud is not None
        assert again.cloud.offline_since == two_days_ago
        assert await present(again, ADA) is Reason.OFFLINE_TOO_LONG
        waiter = EventWaiter(again)

        await asyncio.to_thread(broker.start)

        [back] = await waiter.wait_for("cloud.link", state="online", within_s=30)
        assert back.event.data["offline_s"] >= 2 * 86400
        assert await present(again, ADA) is Reason.GRANTED
    finally:
        await again.stop()


async def test_a_command_signed_for_another_gateway_is_refused(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)
    replayed = command("set_mode", "c-other", door="front", mode="emergency_open")
    replayed["gateway"] = "gw-2"  # seen on gw-2's topic, replayed on ours

    await cloud.send(GATEWAY, "cmd", replayed)

    [rejected] = await waiter.wait_for("cloud.rejected", what="command", within_s=WAIT_S)
    assert rejected.event.data["reason"] == "for gateway 'gw-2'"
    assert gw.doors.mode("front") is DoorMode.NORMAL


async def test_a_signed_snapshot_of_another_site_is_refused(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)
    other = demo_json()
    other["version"] = 9
    other["site"]["id"] = "someone-elses-building"
    cloud.set_snapshot(GATEWAY, other)
    assert gw.cloud is not None

    await gw.cloud.sync("test")

    [rejected] = await waiter.wait_for("cloud.rejected", what="snapshot", within_s=WAIT_S)
    assert rejected.event.data["reason"].startswith("site: for site 'someone-elses-building'")
    assert gw.cache.version == 1


async def test_a_flood_of_rejected_messages_gives_one_event_per_interval(
    connected: Callable[[], Any], cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)
    for _ in range(3):
        await cloud.send(GATEWAY, "delta", b"junk", signature=None)
    await cloud.send(GATEWAY, "delta", suspend_ada())  # handled after the junk, in order
    await waiter.wait_for("cache.updated", source="delta", within_s=WAIT_S)
    assert len(waiter.matching("cloud.rejected")) == 1

    monkeypatch.setattr(cloud_module, "REJECTION_INTERVAL_S", 0.0)
    await cloud.send(GATEWAY, "delta", b"junk", signature=None)

    [_, summary] = await waiter.wait_for("cloud.rejected", count=2, within_s=WAIT_S)
    assert summary.event.data["refused_since_last"] == 2


async def test_a_delta_signed_for_another_site_is_refused(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)

    await cloud.send(GATEWAY, "delta", suspend_ada() | {"site_id": "someone-elses-building"})

    [rejected] = await waiter.wait_for("cloud.rejected", within_s=WAIT_S)
    assert rejected.event.data["reason"] == "site: for 'someone-elses-building', not 'demo'"
    assert gw.cache.version == 1
    assert await present(gw, ADA) is Reason.GRANTED


async def test_a_message_with_two_signatures_is_refused(
    connected: Callable[[], Any], cloud: FakeCloud
) -> None:
    gw = await connected()
    waiter = EventWaiter(gw)
    payload = json.dumps(suspend_ada()).encode()
    good = sign(cloud.key, payload)

    await asyncio.to_thread(
        cloud.mqtt.publish,
        gateway_topic(GATEWAY, "delta"),
        payload,
        1,
        user_properties=[("luckey-sig", good), ("luckey-sig", good)],
    )

    [rejected] = await waiter.wait_for("cloud.rejected", within_s=WAIT_S)
    assert rejected.event.data["reason"].startswith("signature")
    assert gw.cache.version == 1


async def test_a_snapshot_over_the_size_limit_is_not_taken(
    cloud: FakeCloud, pki: Pki, broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo site unpacks to ~6 KB; the limit applies to what gzip unpacks to, so a small
    # compressed body cannot fill the disk.
    monkeypatch.setattr(snapshots_module, "MAX_SNAPSHOT_BYTES", 2000)
    gw = Gateway(cloud_config(pki, broker, cloud, tmp_path / "capped"))
    await gw.start()
    try:
        assert gw.cloud is not None
        result = await gw.cloud.snapshots.pull("test")
        assert result is PullResult.FAILED
        assert gw.cache.version == 0
        assert not list((tmp_path / "capped").glob("snapshot.download*"))  # nothing left behind
    finally:
        await gw.stop()
