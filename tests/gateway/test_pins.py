"""PIN codes typed on a keypad: hashing, the wrong-PIN lockout, and the whole path through the
virtual board's keypad, the board protocol, the entry service and the decision."""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import timedelta

import aiohttp
import pytest

from drivers.base import CredentialRead
from gateway import codec
from gateway.app import Gateway
from gateway.keypad import KeypadGuard
from gateway.model import CredentialKind, EventType, PinHashing, Reason
from gateway.pins import hash_pin, parse_typed_credential, pin_problem
from tests.conftest import Clock, ConfigFactory, EventWaiter, GatewayFactory, demo_json

SALT = b"0123456789abcdef"
CHEAP = PinHashing(SALT, n=4096, r=1, p=1)
ADA_PIN, BOB_PIN = "4827", "7391055"


@pytest.mark.parametrize(
    ("digits", "problem"),
    [
        ("123", "a PIN has 4 to 7 digits, not 3"),
        ("12345678", "a PIN has 4 to 7 digits, not 8"),
        ("12a4", "a PIN has digits 0-9 only"),
        ("", "a PIN has digits 0-9 only"),
        ("١٢٣٤", "a PIN has digits 0-9 only"),  # Arabic-Indic digits are digits to Python
        ("1234", None),
        ("1234567", None),
    ],
)
def test_a_pin_is_four_to_seven_ascii_digits(digits: str, problem: str | None) -> None:
    assert pin_problem(digits) == problem


def test_the_hash_depends_on_the_digits_the_salt_and_the_cost() -> None:
    value = hash_pin("4827", CHEAP)
    assert len(value) == 64
    assert value == value.upper()
    assert hash_pin("4827", CHEAP) == value
    assert hash_pin("4828", CHEAP) != value
    assert hash_pin("4827", PinHashing(b"another salt 16b", n=4096, r=1, p=1)) != value
    assert hash_pin("4827", PinHashing(SALT, n=8192, r=1, p=1)) != value
    with pytest.raises(ValueError, match="4 to 7 digits"):
        hash_pin("12", CHEAP)


def test_the_site_default_and_the_dearest_cost_hash() -> None:
    # scrypt n=2^14, r=8: 16 MiB; the most the site data allows, n=2^17, r=8, p=2: 128 MiB.
    assert len(hash_pin("4827", PinHashing(SALT))) == 64
    assert len(hash_pin("4827", PinHashing(SALT, n=2**17, r=8, p=2))) == 64


def test_the_lockout_counts_refused_entries_in_a_row_per_reader() -> None:
    guard = KeypadGuard(attempts=3, lockout_s=60)
    assert guard.failed("front", 0.0) is None
    assert guard.failed("front", 1.0) is None
    assert guard.failed("lobby", 1.5) is None  # another keypad counts apart
    assert guard.failed("front", 2.0) == 60  # the third in a row locks it
    assert guard.locked("front", 2.0)
    assert guard.locked("front", 61.9)
    assert guard.remaining_s("front", 32.0) == pytest.approx(30.0)
    assert not guard.locked("lobby", 2.0)
    assert not guard.locked("front", 62.0)  # served: a fresh count
    assert guard.failed("front", 63.0) is None
    guard.granted("front")  # an entry that opened the door clears the count
    assert guard.failed("front", 64.0) is None
    assert guard.failed("front", 65.0) is None
    assert guard.failed("front", 66.0) == 60


def test_each_lockout_in_a_row_lasts_twice_the_one_before_until_a_grant() -> None:
    guard = KeypadGuard(attempts=1, lockout_s=60)
    now, lengths = 0.0, []
    for _ in range(8):
        assert not guard.locked("front", now)
        length = guard.failed("front", now)
        assert length is not None
        lengths.append(length)
        now += length
    assert lengths == [60, 120, 240, 480, 960, 1920, 3600, 3600]  # capped at an hour
    guard.granted("front")
    assert guard.failed("front", now) == 60


def test_a_lockout_needs_sensible_bounds() -> None:
    with pytest.raises(ValueError, match="attempts"):
        KeypadGuard(attempts=0)


# --- end to end, on the virtual board's keypad -------------------------------------------------


def pin_site() -> codec.Snapshot:
    """The demo site with keypads at front, lobby and office-3 and three PIN rules; the plans' rules
    cover smartphones only (in Luckey's terms: every rule is for one credential type)."""
    data = demo_json()
    for rule in data["rules"]:
        if rule["id"] != "staff-everywhere":
            rule["type"] = "smartphone"
    data["version"] = 2
    data["site"]["pin_hashing"] = {
        "salt": base64.b64encode(SALT).decode(),
        "n": CHEAP.n,
        "r": CHEAP.r,
        "p": CHEAP.p,
    }
    for door in data["doors"]:
        if door["id"] in ("front", "lobby", "office-3"):
            door["keypad"] = True
            door["min_assurance"] = "low"  # a PIN proves what a bare card does
    data["credentials"] += [
        {"id": f"pin-{user}", "user": user, "kind": "pin", "value": hash_pin(pin, CHEAP)}
        for user, pin in (("ada", ADA_PIN), ("bob", BOB_PIN))
    ]
    data["rules"] += [
        {"id": "pin-ada", "name": "Ada's PIN", "type": "pin", "users": ["ada"],
         "doors": ["front", "server-room"]},
        {"id": "pin-bob", "name": "Bob's PIN", "type": "pin", "users": ["bob"],
         "doors": ["office-3"]},
        {"id": "pin-bob-mornings", "name": "Bob's PIN mornings", "type": "pin", "users": ["bob"],
         "doors": ["front"], "days": ["mon", "tue", "wed", "thu", "fri"],
         "time_slot": {"start": "08:00", "end": "12:00"}},
    ]  # fmt: skip
    return codec.snapshot_from_json(data)


@pytest.fixture
async def gw(start_gateway: GatewayFactory, gateway_config: ConfigFactory) -> Gateway:
    """A gateway on virtual boards (their readers have keypads) with the PIN site."""
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    await gw.cache.apply_snapshot(pin_site())
    return gw


async def test_a_right_pin_opens_its_door_and_nothing_logs_the_digits(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    waiter = EventWaiter(gw)
    decision = await gw.simulator.enter_pin("front", ADA_PIN)
    assert (decision.granted, decision.rule_id, decision.credential_id) == (
        True,
        "pin-ada",
        "pin-ada",
    )
    await waiter.wait_for(EventType.DOOR_UNLOCKED, door="front")  # the board's relay, for real
    (granted,) = await waiter.wait_for(EventType.ACCESS_GRANTED)
    assert granted.event.data["kind"] == "pin"
    assert ADA_PIN not in hash_pin(ADA_PIN, CHEAP)  # so that the checks below mean something
    assert ADA_PIN not in caplog.text
    assert ADA_PIN not in str(granted.event.data)


async def test_each_rule_edge_is_named(gw: Gateway, clock: Clock) -> None:
    # Lobby: Bob's plan reaches it for smartphones only, and no PIN rule of his does.
    at_lobby = await gw.simulator.enter_pin("lobby", BOB_PIN)
    assert (at_lobby.reason, at_lobby.rule_id) == (
        Reason.CREDENTIAL_TYPE_NOT_ALLOWED,
        "hotdesk-business-hours",
    )
    assert (await gw.simulator.enter_pin("office-3", BOB_PIN)).granted
    # Front: weekdays 08:00-12:00. DEFAULT_NOW is Tuesday 15:00 in Rome.
    assert (await gw.simulator.enter_pin("front", BOB_PIN)).reason is Reason.OUTSIDE_TIME_SLOT
    clock.now = clock.now.replace(hour=9)
    assert (await gw.simulator.enter_pin("front", BOB_PIN)).rule_id == "pin-bob-mornings"
    clock.now = clock.now + timedelta(days=4)  # Saturday 09:00
    assert (await gw.simulator.enter_pin("front", BOB_PIN)).reason is Reason.DAY_NOT_ALLOWED
    # Server-room's reader has no keypad in the site data, whatever the board says.
    assert (await gw.simulator.enter_pin("server-room", ADA_PIN)).reason is Reason.NO_KEYPAD


async def test_three_refused_pins_lock_the_keypad_with_an_event(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    waiter = EventWaiter(gw)
    caplog.set_level(logging.DEBUG)
    assert (await gw.simulator.enter_pin("front", "5173")).reason is Reason.UNKNOWN_CREDENTIAL
    assert (await gw.simulator.enter_pin("front", "12")).reason is Reason.PIN_MALFORMED
    assert not waiter.matching(EventType.KEYPAD_LOCKED)
    # A right PIN refused here counts too: knowing one PIN must not buy endless guesses.
    refused_by_rule = await gw.simulator.enter_pin("front", BOB_PIN)
    assert refused_by_rule.reason is Reason.OUTSIDE_TIME_SLOT
    (locked,) = await waiter.wait_for(EventType.KEYPAD_LOCKED)
    assert locked.event.data == {"door": "front", "attempts": 3, "lockout_s": 60}
    # Now even the right PIN is refused at this keypad, and the other keypads still work.
    refused = await gw.simulator.enter_pin("front", ADA_PIN)
    assert (refused.granted, refused.reason) == (False, Reason.KEYPAD_LOCKED)
    assert refused.credential_id is None
    assert (await gw.simulator.enter_pin("office-3", BOB_PIN)).granted
    assert "keypad at front locked for 60 s after 3 refused PINs" in caplog.text
    for pin in ("5173", ADA_PIN, BOB_PIN):
        assert pin not in caplog.text
    # Events never carry any of a PIN's hash either: four hex digits of it would give a
    # four-digit PIN back to whoever holds the site's salt.
    hints = {e.event.data.get("value_hint") for e in waiter.events if e.event.data.get("kind")}
    assert hints == {"…"}


async def test_a_granted_pin_clears_the_count(gw: Gateway) -> None:
    for _ in range(2):
        assert (await gw.simulator.enter_pin("front", "5173")).reason is Reason.UNKNOWN_CREDENTIAL
    assert (await gw.simulator.enter_pin("front", ADA_PIN)).granted
    for _ in range(2):
        assert (await gw.simulator.enter_pin("front", "5173")).reason is Reason.UNKNOWN_CREDENTIAL
    assert (await gw.simulator.enter_pin("front", ADA_PIN)).granted  # not locked


async def test_the_lockout_is_configurable(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(
        gateway_config(hardware={"backend": "virtual"}, keypad={"attempts": 1, "lockout_s": 300})
    )
    await gw.cache.apply_snapshot(pin_site())
    assert (await gw.simulator.enter_pin("front", "5173")).reason is Reason.UNKNOWN_CREDENTIAL
    assert (await gw.simulator.enter_pin("front", ADA_PIN)).reason is Reason.KEYPAD_LOCKED


async def test_a_site_without_pins_refuses_every_entry_without_hashing(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    assert gw.cache.view.site.pin_hashing is None  # the demo site
    decision = await gw.simulator.enter_pin("front", ADA_PIN)
    assert decision.reason is Reason.UNKNOWN_CREDENTIAL


def test_pin_credentials_need_the_sites_hashing_and_never_take_digits() -> None:
    data = pin_site()
    raw = codec.snapshot_to_json(data)
    raw["site"]["pin_hashing"] = None
    with pytest.raises(codec.FormatError) as caught:
        codec.snapshot_from_json(raw)
    assert caught.value.path == "site.pin_hashing"
    raw = codec.snapshot_to_json(data)
    raw["credentials"][-1]["value"] = BOB_PIN  # the digits, not their hash
    with pytest.raises(codec.FormatError) as caught:
        codec.snapshot_from_json(raw)
    assert caught.value.path.endswith(".value")
    assert "never the PIN itself" in str(caught.value)
    assert BOB_PIN[-4:] not in str(caught.value)
    assert data.site.pin_hashing == CHEAP
    assert sum(c.kind is CredentialKind.PIN for c in data.entities["credentials"]) == 2


@pytest.mark.parametrize(
    ("hashing", "path", "message"),
    [
        ({"salt": "c2hvcnQ="}, "site.pin_hashing.salt", "a 5-byte salt is not allowed"),
        ({"salt": "!!"}, "site.pin_hashing.salt", "expected the salt in base64"),
        ({"salt": base64.b64encode(SALT).decode(), "n": 1000}, "site.pin_hashing.n",
         "expected an integer from 4096 to 131072"),
        ({"salt": base64.b64encode(SALT).decode(), "n": 5000}, "site.pin_hashing.n",
         "expected a power of two"),
        ({"salt": base64.b64encode(SALT).decode(), "r": 0}, "site.pin_hashing.r",
         "expected an integer from 1 to 8"),
        ({"salt": base64.b64encode(SALT).decode(), "p": 3}, "site.pin_hashing.p",
         "expected an integer from 1 to 2"),
    ],
)  # fmt: skip
def test_a_bad_pin_hashing_is_named(hashing: dict[str, object], path: str, message: str) -> None:
    raw = demo_json()
    raw["site"]["pin_hashing"] = hashing
    with pytest.raises(codec.FormatError) as caught:
        codec.snapshot_from_json(raw)
    assert caught.value.path == path
    assert message in str(caught.value)


def test_a_typed_pin_is_hashed_for_a_what_if() -> None:
    kind, value = parse_typed_credential(f"pin:{ADA_PIN}", CHEAP)
    assert (kind, value) == (CredentialKind.PIN, hash_pin(ADA_PIN, CHEAP))
    assert parse_typed_credential("nfc_uid:04a1b2c3", CHEAP) == (CredentialKind.NFC_UID, "04A1B2C3")
    with pytest.raises(ValueError, match="4 to 7 digits"):
        parse_typed_credential("pin:12", CHEAP)
    with pytest.raises(ValueError, match="no PIN codes"):
        parse_typed_credential(f"pin:{ADA_PIN}", None)


async def test_the_what_if_api_explains_a_pin(gw: Gateway) -> None:
    url = f"http://127.0.0.1:{gw.config.web.port}/api/decide"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"door": "lobby", "credential": f"pin:{BOB_PIN}"}) as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["decision"]["reason"] == "credential_type_not_allowed"
    assert body["decision"]["credential"] == "pin-bob"
    assert "for smartphone credentials only, and this one is a pin" in body["explanation"]


async def test_entries_typed_at_once_cannot_slip_past_the_lockout(gw: Gateway) -> None:
    # A rogue board (or a flood on the bus) sends many entries at once: each waits for the one
    # before it to be counted, so only three are ever hashed, and a flood beyond the queue is
    # refused at once.
    waiter = EventWaiter(gw)
    reads = [CredentialRead("front", "pin", f"{5170 + i}") for i in range(20)]
    decisions = await asyncio.gather(*(gw.entry.handle(read) for read in reads))
    reasons = [d.reason for d in decisions]
    assert reasons.count(Reason.UNKNOWN_CREDENTIAL) == 3
    assert reasons.count(Reason.KEYPAD_LOCKED) == 17
    assert len(waiter.matching(EventType.KEYPAD_LOCKED)) == 1


async def post_pin(gw: Gateway, user: str, body: object) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{gw.config.web.port}/api/users/{user}/pin"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status, await response.json()


async def test_an_operator_sets_a_pin_which_replaces_the_old_one(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    waiter = EventWaiter(gw)
    status, body = await post_pin(gw, "ada", {"pin": "9164"})
    assert status == 201
    credential = body["credential"]
    assert isinstance(credential, dict)
    assert credential["id"] == "pin-ada"  # her PIN, replaced
    assert credential["value"] == hash_pin("9164", CHEAP)
    (enrolled,) = await waiter.wait_for(EventType.CREDENTIAL_ENROLLED)
    assert enrolled.event.data["by"] == "pin"
    assert (await gw.simulator.enter_pin("front", "9164")).granted
    assert (await gw.simulator.enter_pin("front", ADA_PIN)).reason is Reason.UNKNOWN_CREDENTIAL
    assert "9164" not in caplog.text
    assert "9164" not in str(enrolled.event.data)


@pytest.mark.parametrize(
    ("user", "body", "message"),
    [
        ("ada", {"pin": "12"}, "pin: a PIN has 4 to 7 digits, not 2"),
        ("ada", {"pin": "12345678"}, "pin: a PIN has 4 to 7 digits, not 8"),
        ("ada", {"pin": "12a4"}, "pin: a PIN has digits 0-9 only"),
        ("ada", {"pin": 4827}, "pin: expected the PIN as a string"),
        ("ada", {}, "pin: expected the PIN as a string"),
        ("ada", {"pin": BOB_PIN}, "pin: this PIN is taken on this site; choose another"),
        ("ada", {"pin": ADA_PIN}, "pin: this PIN is this user's PIN already"),
        ("nobody", {"pin": "9164"}, "unknown user 'nobody'"),
        ("carla", {"pin": "9164"}, "user 'carla' is suspended, not active"),
    ],
)
async def test_a_bad_pin_is_refused_naming_the_field(
    gw: Gateway, user: str, body: object, message: str
) -> None:
    status, answer = await post_pin(gw, user, body)
    assert status == 400
    assert message in str(answer["error"])
    assert (await gw.simulator.enter_pin("front", ADA_PIN)).granted  # nothing lost


async def test_a_site_without_pin_hashing_cannot_take_pins(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    status, answer = await post_pin(gw, "ada", {"pin": "9164"})
    assert status == 400
    assert "its site data has no pin_hashing" in str(answer["error"])
