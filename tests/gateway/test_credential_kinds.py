"""Every credential kind, enrolled and then presented, through the daemon's verifiers to the door.

The proofs are made by the card emulators and the reference phone with this gateway's own keys
(the virtual backend makes them), exactly as the NFC and BLE drivers hand them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import stat

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from drivers.base import CredentialRead
from drivers.nfc_emulators import DesfireCard, Ntag424Tag
from drivers.reference_phone import ReferencePhone
from gateway.app import Gateway
from gateway.ble_protocol import ReaderHandshake, public_key_bytes
from gateway.model import AssuranceLevel, CredentialKind, Reason
from gateway.nfc_cards import CardReading, NfcKeys, read_iso_dep_card
from gateway.verifiers import (
    DESFIRE_MASTER_FILE,
    NTAG424_MASTER_FILE,
    READER_KEY_FILE,
    SUN_COUNTERS_FILE,
    SUN_FILE_MASTER_FILE,
    SUN_META_KEY_FILE,
)
from tests.conftest import ConfigFactory, GatewayFactory

TAG_UID = bytes.fromhex("04A0B0C0D0E0F1")
CARD_UID = bytes.fromhex("04D0E5F1E0C0B2")
KEY_FILES = (
    NTAG424_MASTER_FILE,
    SUN_META_KEY_FILE,
    SUN_FILE_MASTER_FILE,
    DESFIRE_MASTER_FILE,
    READER_KEY_FILE,
)


@pytest.fixture
async def gw(start_gateway: GatewayFactory, gateway_config: ConfigFactory) -> Gateway:
    """A gateway on the virtual backend: its own random site keys, the demo site."""
    return await start_gateway(gateway_config(hardware={"backend": "virtual"}))


def nfc_keys(gw: Gateway) -> NfcKeys:
    keys = gw.secrets.nfc
    assert keys is not None
    return keys


def read(gw: Gateway, door: str, reading: CardReading) -> CredentialRead:
    return CredentialRead(door, reading.kind.value, reading.value, reading.proof)


async def enrol(gw: Gateway, door: str, user: str, reading: CardReading) -> None:
    enrolling = asyncio.create_task(gw.enrolment.enrol_card(door, user, timeout_s=5))
    await asyncio.sleep(0)
    gw.entry.on_read(read(gw, door, reading))
    await enrolling


def test_the_virtual_backend_makes_its_own_keys_readable_by_it_alone(gw: Gateway) -> None:
    for name in KEY_FILES:
        mode = (gw.config.gateway.state_dir / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, name
    assert gw.secrets.reader is not None


async def test_ntag424_challenge_response_is_high_assurance(gw: Gateway) -> None:
    keys = nfc_keys(gw)
    tag = Ntag424Tag.for_site(TAG_UID, keys)
    await enrol(gw, "front", "ada", read_iso_dep_card(TAG_UID, tag.respond, keys, gw.challenges))
    enrolled = gw.cache.view.credential(CredentialKind.NTAG424, TAG_UID.hex().upper())
    assert enrolled is not None
    assert enrolled.assurance is AssuranceLevel.HIGH

    reading = read_iso_dep_card(TAG_UID, tag.respond, keys, gw.challenges)
    decision = await gw.entry.handle(read(gw, "server-room", reading))
    assert (decision.granted, decision.assurance) == (True, AssuranceLevel.HIGH)
    assert gw.doors.unlocked("server-room")

    replayed = await gw.entry.handle(read(gw, "server-room", reading))
    assert replayed.reason is Reason.PROOF_REPLAYED


async def test_a_tag_with_a_cloned_uid_is_refused(gw: Gateway) -> None:
    keys = nfc_keys(gw)
    genuine = Ntag424Tag.for_site(TAG_UID, keys)
    await enrol(
        gw, "front", "ada", read_iso_dep_card(TAG_UID, genuine.respond, keys, gw.challenges)
    )
    other_site = dataclasses.replace(keys, ntag424_master=bytes(16))
    clone = Ntag424Tag.for_site(TAG_UID, other_site, checks_reader=False)
    reading = read_iso_dep_card(TAG_UID, clone.respond, keys, gw.challenges)
    decision = await gw.entry.handle(read(gw, "front", reading))
    assert decision.reason is Reason.PROOF_INVALID
    assert not decision.granted


async def test_a_sun_message_is_medium_assurance_and_works_once(gw: Gateway) -> None:
    keys = nfc_keys(gw)
    sun_only = dataclasses.replace(keys, ntag424_master=None)  # a reader that reads SUN only
    tag = Ntag424Tag.for_site(TAG_UID, keys, sun_enabled=True, counter=5)
    await enrol(
        gw, "front", "ada", read_iso_dep_card(TAG_UID, tag.respond, sun_only, gw.challenges)
    )
    enrolled = gw.cache.view.credential(CredentialKind.NTAG424, TAG_UID.hex().upper())
    assert enrolled is not None
    assert enrolled.assurance is AssuranceLevel.MEDIUM  # all a SUN message proves

    reading = read_iso_dep_card(TAG_UID, tag.respond, sun_only, gw.challenges)
    granted = await gw.entry.handle(read(gw, "office-3", reading))
    assert (granted.granted, granted.assurance) == (True, AssuranceLevel.MEDIUM)
    replayed = await gw.entry.handle(read(gw, "office-3", reading))
    assert replayed.reason is Reason.PROOF_REPLAYED

    fresh = read_iso_dep_card(TAG_UID, tag.respond, sun_only, gw.challenges)
    too_weak = await gw.entry.handle(read(gw, "server-room", fresh))
    assert too_weak.reason is Reason.ASSURANCE_TOO_LOW


async def test_sun_counters_survive_a_restart(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = gateway_config(hardware={"backend": "virtual"})
    first = await start_gateway(config)
    keys = dataclasses.replace(nfc_keys(first), ntag424_master=None)
    tag = Ntag424Tag.for_site(TAG_UID, nfc_keys(first), sun_enabled=True, counter=5)
    await enrol(
        first, "front", "ada", read_iso_dep_card(TAG_UID, tag.respond, keys, first.challenges)
    )
    recorded = read_iso_dep_card(TAG_UID, tag.respond, keys, first.challenges)
    assert (await first.entry.handle(read(first, "front", recorded))).granted
    await first.stop()

    again = await start_gateway(config)
    replayed = await again.entry.handle(read(again, "front", recorded))
    assert replayed.reason is Reason.PROOF_REPLAYED


async def test_desfire_is_high_assurance(gw: Gateway) -> None:
    keys = nfc_keys(gw)
    card = DesfireCard.for_site(CARD_UID, keys)
    await enrol(gw, "front", "ada", read_iso_dep_card(CARD_UID, card.respond, keys, gw.challenges))
    reading = read_iso_dep_card(CARD_UID, card.respond, keys, gw.challenges)
    decision = await gw.entry.handle(read(gw, "server-room", reading))
    assert (decision.granted, decision.assurance) == (True, AssuranceLevel.HIGH)


def phone_exchange(gw: Gateway, phone: ReferencePhone) -> CredentialRead:
    """The GATT flow of the BLE driver, without the radio."""
    identity = gw.secrets.reader
    assert identity is not None
    handshake = ReaderHandshake(identity, gw.ble_challenges.issue(16), phone.ephemeral_id)
    phone.on_write(handshake.hello())
    phone.on_write(handshake.prove(phone.read_reply()))
    claim = handshake.finish(phone.read_reply())
    return CredentialRead("server-room", "ble_phone_key", claim.value, claim.proof)


async def test_an_enrolled_phone_opens_the_door(gw: Gateway) -> None:
    identity = gw.secrets.reader
    assert identity is not None
    phone = ReferencePhone.generate({identity.reader_id: identity.public_key})
    await gw.enrolment.enrol_phone("ada", phone.public_key_bytes)

    presented = phone_exchange(gw, phone)
    decision = await gw.entry.handle(presented)
    assert (decision.granted, decision.assurance) == (True, AssuranceLevel.HIGH)
    assert gw.doors.unlocked("server-room")

    replayed = await gw.entry.handle(presented)
    assert replayed.reason is Reason.PROOF_REPLAYED

    stranger = ReferencePhone.generate({identity.reader_id: identity.public_key})
    unknown = await gw.entry.handle(phone_exchange(gw, stranger))
    assert unknown.reason is Reason.UNKNOWN_CREDENTIAL


async def test_without_key_files_those_kinds_are_refused(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config())  # simulated: makes no keys
    assert gw.secrets.nfc is None
    assert gw.secrets.reader is None
    for kind in ("ntag424", "desfire", "ble_phone_key"):
        value = "A1" * (16 if kind == "ble_phone_key" else 7)
        decision = await gw.entry.handle(CredentialRead("front", kind, value, b"\x01" * 65))
        assert decision.reason is Reason.PROOF_INVALID, kind


async def test_an_unusable_key_file_refuses_its_kind_only(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = gateway_config()
    state = config.gateway.state_dir
    state.mkdir(parents=True)
    (state / DESFIRE_MASTER_FILE).write_text("00" * 16 + "\n")
    (state / DESFIRE_MASTER_FILE).chmod(0o644)  # others could read it: refused
    (state / NTAG424_MASTER_FILE).write_text("11" * 16 + "\n")
    (state / NTAG424_MASTER_FILE).chmod(0o600)
    gw = await start_gateway(config)
    keys = nfc_keys(gw)
    assert keys.desfire_master is None
    assert keys.ntag424_master == bytes.fromhex("11" * 16)


@pytest.mark.parametrize(
    ("kind", "uid", "door", "assurance"),
    [
        (CredentialKind.NTAG424, TAG_UID, "server-room", AssuranceLevel.HIGH),
        (CredentialKind.DESFIRE, CARD_UID, "server-room", AssuranceLevel.HIGH),
        (CredentialKind.NFC_UID, bytes.fromhex("04E0E0E0E0E0E1"), "front", AssuranceLevel.LOW),
    ],
)
async def test_the_simulator_presents_genuine_cards_through_nfcpy(
    gw: Gateway, kind: CredentialKind, uid: bytes, door: str, assurance: AssuranceLevel
) -> None:
    unknown = await gw.simulator.present_card(door, kind, uid.hex())
    assert unknown.reason is Reason.UNKNOWN_CREDENTIAL  # genuine, but nobody's yet
    enrolling = asyncio.create_task(gw.enrolment.enrol_card(door, "ada", timeout_s=10))
    await asyncio.sleep(0)
    reading = asyncio.create_task(gw.simulator.present_card(door, kind, uid.hex()))
    credential = await enrolling
    reading.cancel()
    assert (credential.kind, credential.assurance) == (kind, assurance)


async def test_the_simulator_over_the_web_api(gw: Gateway) -> None:
    url = f"http://127.0.0.1:{gw.web.port}/api/simulator/doors/server-room/present"
    async with aiohttp.ClientSession() as session:
        body = {"credential": f"ntag424:{TAG_UID.hex()}"}
        async with session.post(url, json=body) as response:
            assert response.status == 200
            answer = await response.json()
    assert answer["decision"]["reason"] == "unknown_credential"
    assert answer["decision"]["assurance"] == "high"  # a genuine tag of this site


async def test_a_simulated_phone_opens_the_door_through_the_ble_reader(gw: Gateway) -> None:
    credential = await gw.simulator.new_phone("ada")
    decision = await gw.simulator.present_phone("server-room", credential.value)
    assert (decision.granted, decision.assurance) == (True, AssuranceLevel.HIGH)
    assert decision.credential_id == credential.id
    again = await gw.simulator.present_phone("server-room", credential.value)
    assert again.granted  # a new ephemeral id each time: the reader's cooldown does not apply


async def test_simulated_phones_over_the_web_api(gw: Gateway) -> None:
    base = f"http://127.0.0.1:{gw.web.port}/api/simulator"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/phones", json={"user": "bob"}) as response:
            assert response.status == 201
            key_id = (await response.json())["credential"]["value"]
        async with session.post(f"{base}/phones", json={"user": "carla"}) as response:
            assert response.status == 400
            assert "suspended" in (await response.json())["error"]
        present = f"{base}/doors/server-room/present"
        body = {"credential": f"ble_phone_key:{key_id}"}
        async with session.post(present, json=body) as response:
            assert response.status == 200
            answer = await response.json()
        assert answer["decision"]["reason"] == "no_rule_for_door"  # Bob's plan: not that door
        assert answer["decision"]["assurance"] == "high"
        body = {"credential": "ble_phone_key:" + "AB" * 16}
        async with session.post(present, json=body) as response:
            assert response.status == 409
            assert "no simulated phone holds key" in (await response.json())["error"]


async def phone_read(gw: Gateway, door: str, key_id: str) -> CredentialRead:
    """What the door's BLE reader hands over for a simulated phone (captured, not decided)."""
    captured = gw.entry.capture_next(door)
    presenting = asyncio.create_task(gw.simulator.present_phone(door, key_id))
    read = await asyncio.wait_for(captured, 5)
    presenting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await presenting
    return read


async def test_a_replayed_phone_transcript_is_refused(gw: Gateway) -> None:
    credential = await gw.simulator.new_phone("ada")
    read = await phone_read(gw, "server-room", credential.value)
    assert (await gw.entry.handle(read)).granted
    replayed = await gw.entry.handle(read)
    assert (replayed.granted, replayed.reason) == (False, Reason.PROOF_REPLAYED)


async def test_a_phone_signing_with_another_key_than_enrolled_is_refused(gw: Gateway) -> None:
    # Site data cannot hold a key id that is not its key's (the codec refuses it); the verifier
    # checks the signature against the stored key all the same.
    credential = await gw.simulator.new_phone("ada")
    other = ec.derive_private_key(42, ec.SECP256R1()).public_key()
    await gw.cache.enrol(dataclasses.replace(credential, public_key=public_key_bytes(other)))
    decision = await gw.simulator.present_phone("server-room", credential.value)
    assert (decision.granted, decision.reason) == (False, Reason.PROOF_INVALID)


async def test_a_revoked_phone_is_refused(gw: Gateway) -> None:
    credential = await gw.simulator.new_phone("ada")
    await gw.cache.enrol(dataclasses.replace(credential, revoked=True))
    decision = await gw.simulator.present_phone("server-room", credential.value)
    assert (decision.granted, decision.reason) == (False, Reason.CREDENTIAL_REVOKED)
    assert decision.assurance is AssuranceLevel.HIGH  # a genuine phone, no longer allowed


async def test_lost_sun_counters_are_reported(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = gateway_config(hardware={"backend": "virtual"})
    first = await start_gateway(config)
    await first.stop()
    (config.gateway.state_dir / SUN_COUNTERS_FILE).unlink()
    again = await start_gateway(config)
    resets = [e.event.data for e in again.events.recent(50) if e.event.type == "cache.reset"]
    assert resets == [{"store": "sun_counters", "reason": "the file was missing"}]


async def test_a_phone_coming_back_is_the_same_device_on_the_radio(gw: Gateway) -> None:
    credential = await gw.simulator.new_phone("ada")
    for _ in range(3):
        assert (await gw.simulator.present_phone("front", credential.value)).granted
    radio = gw.simulator.radio_of("front")
    assert radio is not None
    assert radio.devices == 2  # the gateway's central and the one phone
