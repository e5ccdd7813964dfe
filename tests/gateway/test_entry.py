"""Tests for gateway.entry: the hot path from a read to a relay pulse, a durable event, feedback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivers import base
from drivers.base import CredentialRead, Feedback, InputEvent, InputRole
from gateway.app import Gateway
from gateway.events import LoggedEvent
from gateway.hardware import LocalHardware
from gateway.model import DoorMode, Event, Reason
from gateway.outbox import OutboxError
from tests.conftest import (
    ADA,
    BOB,
    CARLA,
    UNKNOWN,
    Clock,
    ConfigFactory,
    EventWaiter,
    GatewayFactory,
    demo_snapshot,
    outbox_types,
    read_outbox,
    sim_readers,
    sim_relays,
)

UNLOCK_S = 0.5


async def fast_gateway(start_gateway: GatewayFactory, gateway_config: ConfigFactory) -> Gateway:
    """A gateway holding the demo site with every door unlocking for 0.5 s."""
    gw = await start_gateway(gateway_config(demo={"seed": False}))
    await gw.cache.apply_snapshot(demo_snapshot(unlock_seconds=UNLOCK_S))
    assert gw.cache.view.doors["front"].unlock_seconds == UNLOCK_S
    return gw


def committed_body(state_dir: Path, event_id: str) -> str | None:
    """The outbox row of ``event_id`` as another connection sees it (None: not committed)."""
    conn = sqlite3.connect(state_dir / "outbox.db")
    try:
        row = conn.execute("SELECT body FROM events WHERE id = ?", (event_id,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


async def test_granted_read_pulses_commits_then_shows(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await fast_gateway(start_gateway, gateway_config)
    state = gw.config.gateway.state_dir
    seen_at_commit: list[dict[str, Any]] = []

    def on_event(logged: LoggedEvent) -> None:
        if logged.event.type == "access.granted":
            seen_at_commit.append(
                {
                    "shown": sim_readers(gw).shown.get("front"),
                    "relay": gw.relays.is_on("front"),
                    "row": committed_body(state, logged.event.id),
                }
            )

    gw.events.add_listener(on_event)
    released = asyncio.Event()
    gw.relays.add_listener(lambda ch, on: released.set() if ch == "front" and not on else None)
    loop = asyncio.get_running_loop()

    started = loop.time()
    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", ADA))

    assert decision.granted
    assert decision.reason is Reason.GRANTED
    assert decision.user_id == "ada"
    assert gw.relays.is_on("front")
    assert sim_readers(gw).shown["front"] is Feedback.GRANTED
    # Durable before visible: when the commit resolved, the row was readable from another
    # connection, the door was already open, and the reader showed nothing yet.
    assert len(seen_at_commit) == 1
    assert seen_at_commit[0]["shown"] is None
    assert seen_at_commit[0]["relay"] is True
    assert seen_at_commit[0]["row"] is not None

    await asyncio.wait_for(released.wait(), timeout=5)
    assert loop.time() - started >= UNLOCK_S - 0.05
    assert not gw.relays.is_on("front")


async def test_granted_event_data_is_redacted(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()

    await gw.entry.handle(CredentialRead("front", "nfc_uid", "04:a1:b2:c3:d4:e5:f6"))
    await gw.stop()

    state = gw.config.gateway.state_dir
    granted = [data for _, kind, data in read_outbox(state) if kind == "access.granted"]
    assert granted == [
        {
            "door": "front",
            "reason": "granted",
            "mode": "normal",
            "credential": "card-ada",
            "user": "ada",
            "rule": "staff-everywhere",
            "assurance": "low",
            "kind": "nfc_uid",
            "value_hint": "…E5F6",
        }
    ]
    raw = (state / "outbox.db").read_bytes()
    assert ADA.encode() not in raw
    assert ADA.lower().encode() not in raw


@pytest.mark.parametrize(
    ("value", "reason", "user"),
    [
        (UNKNOWN, "unknown_credential", None),
        (CARLA, "user_disabled", "carla"),
        ("04105700000001", "credential_revoked", "bob"),
    ],
)
async def test_denied_read_keeps_the_door_shut(
    start_gateway: GatewayFactory, value: str, reason: str, user: str | None
) -> None:
    gw = await start_gateway()
    changes: list[tuple[str, bool]] = []
    gw.relays.add_listener(lambda ch, on: changes.append((ch, on)))

    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", value))

    assert not decision.granted
    assert decision.reason.value == reason
    assert not gw.relays.is_on("front")
    assert changes == []
    assert sim_readers(gw).shown["front"] is Feedback.DENIED
    denied = [e for e in gw.events.recent() if e.event.type == "access.denied"]
    assert len(denied) == 1
    assert denied[0].event.data["reason"] == reason
    assert denied[0].event.data["user"] == user
    assert denied[0].event.data["value_hint"] == "…" + value[-4:]
    assert value not in json.dumps(dict(denied[0].event.data))


async def test_bob_is_denied_outside_business_hours(
    start_gateway: GatewayFactory, clock: Clock
) -> None:
    gw = await start_gateway()
    clock.now = clock.now.replace(hour=21)

    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", BOB))

    assert decision.reason is Reason.OUTSIDE_SCHEDULE
    assert decision.rule_id == "hotdesk-business-hours"
    assert not gw.relays.is_on("front")


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("magic_wand", ADA),  # unknown kind
        ("nfc_uid", "04A1B2C3D4E5ZZ"),  # not hex
        ("nfc_uid", "04A1B2C3D4E5"),  # 6 bytes: no such UID size
        ("nfc_uid", "04A1B2C3D4E5F"),  # odd number of digits
        ("nfc_uid", ""),
        ("nfc_uid", "０４Ａ１Ｂ２Ｃ３Ｄ４Ｅ５Ｆ６"),  # full-width digits
        ("04A1B2C3D4E5F6", "x"),  # an identifier where the kind belongs
    ],
)
async def test_malformed_read_is_denied_as_unknown(
    start_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    value: str,
) -> None:
    gw = await start_gateway()
    caplog.set_level(logging.DEBUG)

    decision = await gw.entry.handle(CredentialRead("front", kind, value))

    assert not decision.granted
    assert decision.reason is Reason.UNKNOWN_CREDENTIAL
    assert not gw.relays.is_on("front")
    assert sim_readers(gw).shown["front"] is Feedback.DENIED
    [denied] = [e for e in gw.events.recent() if e.event.type == "access.denied"]
    assert denied.event.data["reason"] == "unknown_credential"
    assert denied.event.data["credential"] is None
    assert ADA not in caplog.text
    assert ADA not in json.dumps(dict(denied.event.data))
    # The service still works after it.
    assert (await gw.entry.handle(CredentialRead("front", "nfc_uid", ADA))).granted


async def test_a_card_too_weak_for_the_door_gets_its_own_signal(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    decision = await gw.entry.handle(CredentialRead("office-3", "nfc_uid", ADA))
    assert decision.reason is Reason.ASSURANCE_TOO_LOW
    assert sim_readers(gw).shown["office-3"] is Feedback.LOW_ASSURANCE
    assert not gw.relays.is_on("office-3")


async def test_reads_from_the_reader_bank_are_handled(
    start_gateway: GatewayFactory, event_waiter: Callable[[Gateway], EventWaiter]
) -> None:
    gw = await start_gateway()
    waiter = event_waiter(gw)

    sim_readers(gw).present(CredentialRead("front", "nfc_uid", ADA))
    sim_readers(gw).present(CredentialRead("office-3", "nfc_uid", "not even hex"))

    [granted] = await waiter.wait_for("access.granted", door="front")
    [denied] = await waiter.wait_for("access.denied", door="office-3")
    assert granted.event.data["user"] == "ada"
    assert denied.event.data["reason"] == "unknown_credential"
    await gw.entry.stop()  # wait for the feedback of both reads
    assert sim_readers(gw).shown == {"front": Feedback.GRANTED, "office-3": Feedback.DENIED}


async def test_fifty_concurrent_reads_all_commit_in_order(
    start_gateway: GatewayFactory, event_waiter: Callable[[Gateway], EventWaiter]
) -> None:
    gw = await start_gateway()
    waiter = event_waiter(gw)
    values = [ADA, UNKNOWN, CARLA, BOB, "zz"]
    reads = [CredentialRead("front", "nfc_uid", values[i % len(values)]) for i in range(50)]

    for read in reads:
        sim_readers(gw).present(read)
    granted = await waiter.wait_for("access.granted", count=20)
    denied = await waiter.wait_for("access.denied", count=30)

    access = sorted(granted + denied, key=lambda e: e.seq)
    seqs = [e.seq for e in access]
    assert len(set(seqs)) == 50
    # Committed in the order presented: the kinds cycle exactly like the reads did.
    expected = ["ada", None, "carla", "bob", None] * 10
    assert [e.event.data["user"] for e in access] == expected
    await gw.stop()
    in_file = {seq: kind for seq, kind, _ in read_outbox(gw.config.gateway.state_dir)}
    assert all(in_file[e.seq] == e.event.type for e in access)
    file_seqs = [seq for seq, kind, _ in read_outbox(gw.config.gateway.state_dir)]
    assert file_seqs == sorted(set(file_seqs))


async def test_read_at_an_unknown_door_is_denied(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()

    decision = await gw.entry.handle(CredentialRead("garage", "nfc_uid", ADA))

    assert decision.reason is Reason.UNKNOWN_DOOR
    assert not gw.relays.is_on("garage")
    assert sim_readers(gw).shown["garage"] is Feedback.DENIED


async def test_unchecked_proof_kinds_never_open(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()

    decision = await gw.entry.handle(CredentialRead("front", "ntag424", "04A1B2C3D4E5F6"))

    assert decision.reason is Reason.PROOF_INVALID
    assert not gw.relays.is_on("front")


async def test_malformed_read_feedback_matches_its_decision(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    await gw.doors.set_mode("front", DoorMode.EMERGENCY_OPEN, source="test")

    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", "garbage"))

    expected = Feedback.GRANTED if decision.granted else Feedback.DENIED
    assert sim_readers(gw).shown["front"] is expected


async def test_no_door_opens_after_stop(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    await gw.stop()

    with contextlib.suppress(RuntimeError):
        sim_readers(gw).present(CredentialRead("front", "nfc_uid", ADA))
    await gw.entry.stop()  # lets a read that was taken run to its end
    opened = gw.relays.is_on("front")
    sim_relays(gw).close()

    assert not opened
    assert outbox_types(gw.config.gateway.state_dir)[-1] == "gateway.stopped"


async def test_an_event_that_cannot_be_committed_still_answers_the_reader(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway()

    async def broken_append(event: Event) -> int:
        raise OutboxError("disk full")

    monkeypatch.setattr(gw.outbox, "append", broken_append)
    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", ADA))

    assert decision.granted
    assert sim_readers(gw).shown["front"] is Feedback.GRANTED
    [record] = [r for r in caplog.records if "could not be committed" in r.getMessage()]
    assert record.levelname == "ERROR"
    assert "card-ada" in record.getMessage()  # the journal keeps who and where...
    assert ADA not in record.getMessage()  # ...but never the full credential value


# --- a decision at a door in alarm ----------------------------------------------------------


def door_inputs(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[InputEvent], None]]:
    """The door controller's input handler, once a gateway is built (the simulated backend has
    no door inputs of its own)."""
    handlers: list[Callable[[InputEvent], None]] = []
    monkeypatch.setattr(
        LocalHardware, "set_input_handler", lambda self, handler: handlers.append(handler)
    )
    return handlers


def contact(door: str, level: int) -> InputEvent:
    """The door's contact at a raw level (normally closed: 1 is open)."""
    return InputEvent(door, InputRole.CONTACT, level, board_clock_ms=0, address=0, index=0)


class ReaderLog:
    """Every signal the simulated readers are told to show, in order."""

    def __init__(self, gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
        readers = sim_readers(gw)
        show = readers.feedback
        self._signals: list[tuple[str, Feedback]] = []
        self._changed = asyncio.Event()

        def feedback(reader_id: str, signal: Feedback) -> None:
            show(reader_id, signal)
            self._signals.append((reader_id, signal))
            self._changed.set()

        monkeypatch.setattr(readers, "feedback", feedback)

    def at(self, door: str) -> list[Feedback]:
        """What ``door``'s reader was told to show, oldest first."""
        return [signal for reader, signal in self._signals if reader == door]

    async def wait_for(self, door: str, count: int) -> list[Feedback]:
        """Once ``door``'s reader was told ``count`` signals: all of them (bounded wait)."""
        async with asyncio.timeout(5):
            while len(self.at(door)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.at(door)


@pytest.mark.parametrize(("value", "shown"), [(ADA, Feedback.GRANTED), (UNKNOWN, Feedback.DENIED)])
async def test_a_forced_door_sounds_its_alarm_again_after_a_decision(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, value: str, shown: Feedback
) -> None:
    monkeypatch.setattr(base, "FEEDBACK_SHOWN_S", 0.01)
    inputs = door_inputs(monkeypatch)
    gw = await start_gateway()
    log = ReaderLog(gw, monkeypatch)
    [door_input] = inputs
    door_input(contact("front", 1))  # forced open
    assert gw.doors.resting_signal("front") is Feedback.DOOR_ALARM

    await gw.entry.handle(CredentialRead("front", "nfc_uid", value))

    assert sim_readers(gw).shown["front"] is shown
    # The decision's signal runs its course, then the door alarm is back: the card did not
    # silence it.
    assert await log.wait_for("front", 3) == [Feedback.DOOR_ALARM, shown, Feedback.DOOR_ALARM]
    status = gw.doors.status("front")
    assert status is not None
    assert status.forced_open_alarm

    door_input(contact("front", 0))  # closed: the alarm ends
    assert log.at("front")[-1] is Feedback.IDLE


async def test_a_reader_with_no_alarm_to_return_to_is_left_to_go_idle(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "FEEDBACK_SHOWN_S", 0.01)
    inputs = door_inputs(monkeypatch)
    gw = await start_gateway()
    log = ReaderLog(gw, monkeypatch)
    [door_input] = inputs

    await gw.entry.handle(CredentialRead("front", "nfc_uid", UNKNOWN))  # no alarm at front
    door_input(contact("lobby", 1))
    await gw.entry.handle(CredentialRead("lobby", "nfc_uid", UNKNOWN))
    # The lobby's alarm is back, so a return due earlier at the front would have been shown.
    assert await log.wait_for("lobby", 3) == [
        Feedback.DOOR_ALARM,
        Feedback.DENIED,
        Feedback.DOOR_ALARM,
    ]
    assert log.at("front") == [Feedback.DENIED]


async def test_stopping_cancels_a_pending_return_to_the_alarm(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "FEEDBACK_SHOWN_S", 0.01)
    inputs = door_inputs(monkeypatch)
    gw = await start_gateway()
    log = ReaderLog(gw, monkeypatch)
    [door_input] = inputs
    door_input(contact("front", 1))
    await gw.entry.handle(CredentialRead("front", "nfc_uid", UNKNOWN))

    await gw.entry.stop()  # the doors keep running
    await asyncio.sleep(2 * base.FEEDBACK_SHOWN_S)  # past when the return was due

    assert log.at("front") == [Feedback.DOOR_ALARM, Feedback.DENIED]
