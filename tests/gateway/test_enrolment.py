"""Enrolment: phones by public key, cards in a reader's enrol mode; stored, reported, decided."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from drivers.base import CredentialRead
from gateway.app import Gateway
from gateway.ble_protocol import key_id_for, public_key_bytes
from gateway.enrolment import EnrolmentError, NothingPresented
from gateway.model import AssuranceLevel, CredentialKind
from tests.conftest import (
    ADA,
    ConfigFactory,
    EventWaiter,
    GatewayFactory,
    read_outbox,
    sim_readers,
)

NEW_CARD = "04E0E0E0E0E0E1"


def phone_key(n: int) -> bytes:
    return public_key_bytes(ec.derive_private_key(n, ec.SECP256R1()).public_key())


async def test_a_phone_key_becomes_a_credential_that_survives_a_restart(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = gateway_config()
    gw = await start_gateway(config)
    key = phone_key(11)
    credential = await gw.enrolment.enrol_phone("ada", key)

    expected_id = key_id_for(ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key))
    assert credential.kind is CredentialKind.BLE_PHONE_KEY
    assert credential.value == expected_id.hex().upper()
    assert (credential.user_id, credential.public_key) == ("ada", key)
    assert credential.assurance is AssuranceLevel.HIGH
    assert gw.cache.view.credential(CredentialKind.BLE_PHONE_KEY, credential.value) == credential
    version = gw.cache.version
    await gw.stop()

    [(_, _, data)] = [
        e for e in read_outbox(config.gateway.state_dir) if e[1] == "credential.enrolled"
    ]
    assert data["by"] == "phone"
    assert data["credential"]["public_key"] == key.hex()
    assert data["credential"]["value"] == credential.value

    again = await start_gateway(config)
    assert again.cache.version == version  # a local enrolment is not a new site version
    stored = again.cache.view.credential(CredentialKind.BLE_PHONE_KEY, credential.value)
    assert stored == credential


@pytest.mark.parametrize(
    ("user", "key", "message"),
    [
        ("nobody", phone_key(1), "unknown user 'nobody'"),
        ("carla", phone_key(1), "user 'carla' is suspended, not active"),
        ("ada", b"\x04" + bytes(64), "public key refused"),
        ("ada", phone_key(1)[:-1], "public key refused"),
    ],
)
async def test_a_phone_that_cannot_be_enrolled_is_refused_with_the_reason(
    start_gateway: GatewayFactory, user: str, key: bytes, message: str
) -> None:
    gw = await start_gateway()
    before = gw.cache.view.counts()
    with pytest.raises(EnrolmentError, match=message):
        await gw.enrolment.enrol_phone(user, key)
    assert gw.cache.view.counts() == before


async def test_the_same_phone_cannot_be_enrolled_twice(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    await gw.enrolment.enrol_phone("ada", phone_key(5))
    with pytest.raises(EnrolmentError, match="already used by another credential"):
        await gw.enrolment.enrol_phone("bob", phone_key(5))


async def test_a_card_presented_in_enrol_mode_is_enrolled_not_decided(
    start_gateway: GatewayFactory, event_waiter: Callable[[Gateway], EventWaiter]
) -> None:
    gw = await start_gateway()
    waiter = event_waiter(gw)
    enrolling = asyncio.create_task(gw.enrolment.enrol_card("front", "ada", timeout_s=5))
    await asyncio.sleep(0)  # enrol mode is on once the task has run
    sim_readers(gw).present(CredentialRead("front", "nfc_uid", NEW_CARD))
    credential = await enrolling

    assert (credential.kind, credential.value, credential.user_id) == (
        CredentialKind.NFC_UID,
        NEW_CARD,
        "ada",
    )
    assert credential.assurance is AssuranceLevel.LOW  # all a bare UID proves
    [enrolled] = await waiter.wait_for("credential.enrolled", by="reader", door="front")
    assert enrolled.event.data["credential"]["id"] == credential.id
    assert not waiter.matching("access.granted")
    assert not waiter.matching("access.denied")
    assert not gw.relays.is_on("front")

    # Enrol mode is over: the same card is now decided, and opens the door.
    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", NEW_CARD))
    assert decision.granted
    assert decision.credential_id == credential.id


async def test_enrol_mode_ends_after_its_timeout(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with pytest.raises(NothingPresented, match="no card was presented at 'front' within 1 s"):
        await gw.enrolment.enrol_card("front", "ada", timeout_s=1)
    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", ADA))
    assert decision.granted  # read as usual again


async def test_a_card_already_enrolled_is_not_enrolled_again(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    enrolling = asyncio.create_task(gw.enrolment.enrol_card("front", "bob", timeout_s=5))
    await asyncio.sleep(0)
    sim_readers(gw).present(CredentialRead("front", "nfc_uid", ADA))
    with pytest.raises(
        EnrolmentError, match="already enrolled for another user as credential 'card-ada'"
    ):
        await enrolling


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (CredentialRead("front", "ntag424", NEW_CARD, b"\x01garbage"), "did not prove itself"),
        (CredentialRead("front", "nfc_uid", "not hex"), "unreadable credential"),
    ],
)
async def test_a_read_that_cannot_be_enrolled_is_refused(
    start_gateway: GatewayFactory, read: CredentialRead, message: str
) -> None:
    gw = await start_gateway()
    enrolling = asyncio.create_task(gw.enrolment.enrol_card("front", "ada", timeout_s=5))
    await asyncio.sleep(0)
    sim_readers(gw).present(read)
    with pytest.raises(EnrolmentError, match=message):
        await enrolling


async def test_a_phone_in_enrol_mode_is_decided_and_the_next_card_enrolled(
    start_gateway: GatewayFactory, event_waiter: Callable[[Gateway], EventWaiter]
) -> None:
    gw = await start_gateway()
    waiter = event_waiter(gw)
    enrolling = asyncio.create_task(gw.enrolment.enrol_card("front", "ada", timeout_s=5))
    await asyncio.sleep(0)
    sim_readers(gw).present(CredentialRead("front", "ble_phone_key", "AB" * 16))  # passing by
    await waiter.wait_for("access.denied", door="front")
    assert gw.entry.capturing("front")  # still waiting for a card
    sim_readers(gw).present(CredentialRead("front", "nfc_uid", NEW_CARD))
    assert (await enrolling).value == NEW_CARD


async def test_one_enrolment_per_reader_at_a_time(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    first = asyncio.create_task(gw.enrolment.enrol_card("front", "ada", timeout_s=5))
    await asyncio.sleep(0)
    with pytest.raises(EnrolmentError, match="already waiting for a card"):
        await gw.enrolment.enrol_card("front", "bob", timeout_s=5)
    sim_readers(gw).present(CredentialRead("front", "nfc_uid", NEW_CARD))
    assert (await first).user_id == "ada"


@pytest.mark.parametrize(
    ("door", "timeout_s", "message"),
    [("attic", 5, "unknown door 'attic'"), ("front", 0.1, "out of range; allowed: 1.0–300.0 s")],
)
async def test_enrol_mode_checks_its_arguments(
    start_gateway: GatewayFactory, door: str, timeout_s: float, message: str
) -> None:
    gw = await start_gateway()
    with pytest.raises(EnrolmentError, match=message):
        await gw.enrolment.enrol_card(door, "ada", timeout_s=timeout_s)


async def test_enrolment_over_the_local_api(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    base = f"http://127.0.0.1:{gw.web.port}"
    async with aiohttp.ClientSession() as session:
        url = f"{base}/api/users/ada/phones"
        async with session.post(url, json={"public_key": phone_key(3).hex()}) as response:
            assert response.status == 201
            body = await response.json()
        assert body["credential"]["kind"] == "ble_phone_key"
        async with session.post(url, json={"public_key": "zz"}) as response:
            assert response.status == 400
            assert "must be hex" in (await response.json())["error"]

        url = f"{base}/api/doors/front/enrol"
        async with session.post(url, json={"user": "ada", "timeout_s": 1}) as response:
            assert response.status == 409
            assert "no card was presented" in (await response.json())["error"]
        posting = asyncio.create_task(session.post(url, json={"user": "ada", "timeout_s": 5}))
        async with asyncio.timeout(5):
            # Enrol mode starts inside the server's handler: there is nothing to await on here.
            while not gw.entry.capturing("front"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        sim_readers(gw).present(CredentialRead("front", "nfc_uid", NEW_CARD))
        async with await posting as response:
            assert response.status == 201
            assert (await response.json())["credential"]["value"] == NEW_CARD


async def test_enrolment_routes_beyond_this_machine_need_an_admin_session(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(web={"host": "0.0.0.0", "allow_remote": True}))
    assert gw.web_tls is not None
    trust = ssl.create_default_context(cafile=gw.web_tls.cert)
    before = gw.cache.view.counts()
    async with aiohttp.ClientSession() as session:
        for path in ("/api/users/ada/phones", "/api/doors/front/enrol", "/api/simulator/phones"):
            url = f"https://127.0.0.1:{gw.web.port}{path}"
            async with session.post(url, json={"user": "ada"}, ssl=trust) as response:
                assert response.status == 401, path
                assert "log in as the admin" in (await response.json())["error"]
    assert gw.cache.view.counts() == before


@pytest.mark.parametrize(
    "path",
    ["/api/users/ada/phones", "/api/doors/front/enrol", "/api/simulator/phones"],
)
async def test_credential_routes_refuse_a_request_addressed_to_another_name(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, path: str
) -> None:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    before = gw.cache.view.counts()
    url = f"http://127.0.0.1:{gw.web.port}{path}"
    headers = {"Host": f"rebound.example:{gw.web.port}"}  # a DNS name rebound to 127.0.0.1
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"user": "ada"}, headers=headers) as response,
    ):
        assert response.status == 401
        assert "log in as the admin" in (await response.json())["error"]
    assert gw.cache.view.counts() == before
