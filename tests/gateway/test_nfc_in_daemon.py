"""A gateway's own NFC reader, configured per door, through nfcpy's udp device to the door."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from drivers.nfc_emulators import Ntag424Tag
from drivers.nfc_udp_tag import UdpIsoDepTag, UdpType2Tag, free_udp_port
from gateway.app import Gateway
from gateway.model import AssuranceLevel, CredentialKind
from tests.conftest import ConfigFactory, EventWaiter, GatewayFactory

TAG_UID = bytes.fromhex("04A0B0C0D0E0F1")


@pytest.fixture
def port() -> int:
    return free_udp_port()


@pytest.fixture
def field() -> Iterator[Callable[[UdpIsoDepTag | UdpType2Tag], UdpIsoDepTag | UdpType2Tag]]:
    """``field(card)``: the card starts answering on its port; taken away at teardown."""
    cards: list[UdpIsoDepTag | UdpType2Tag] = []

    def put(card: UdpIsoDepTag | UdpType2Tag) -> UdpIsoDepTag | UdpType2Tag:
        card.start()
        cards.append(card)
        return card

    yield put
    for card in cards:
        card.stop()


async def test_an_ntag424_at_the_doors_nfc_reader_opens_it(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    event_waiter: Callable[[Gateway], EventWaiter],
    port: int,
    field: Callable[[UdpIsoDepTag | UdpType2Tag], UdpIsoDepTag | UdpType2Tag],
) -> None:
    config = gateway_config(
        hardware={"backend": "virtual"},
        doors={"server-room": {"nfc_reader": f"udp:127.0.0.1:{port}"}},
    )
    gw = await start_gateway(config)
    waiter = event_waiter(gw)
    keys = gw.secrets.nfc
    assert keys is not None
    tag = Ntag424Tag.for_site(TAG_UID, keys)

    enrolling = gw.enrolment.enrol_card("server-room", "ada", timeout_s=10)
    card = field(UdpIsoDepTag(tag, port=port))
    credential = await enrolling
    assert (credential.kind, credential.assurance) == (CredentialKind.NTAG424, AssuranceLevel.HIGH)
    card.stop()

    field(UdpIsoDepTag(tag, port=port))  # presented again: now it is decided
    [granted] = await waiter.wait_for("access.granted", door="server-room", within_s=10)
    assert granted.event.data["credential"] == credential.id
    assert granted.event.data["assurance"] == "high"
    await waiter.wait_for("door.unlocked", door="server-room")


async def test_a_plain_card_at_the_nfc_reader_is_its_bare_uid(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    event_waiter: Callable[[Gateway], EventWaiter],
    port: int,
    field: Callable[[UdpIsoDepTag | UdpType2Tag], UdpIsoDepTag | UdpType2Tag],
) -> None:
    config = gateway_config(
        hardware={"backend": "virtual"},
        doors={"front": {"nfc_reader": f"udp:127.0.0.1:{port}"}},
    )
    gw = await start_gateway(config)
    waiter = event_waiter(gw)
    field(UdpType2Tag(bytes.fromhex("04A1B2C3D4E5F6"), port=port))  # Ada's demo card
    [granted] = await waiter.wait_for("access.granted", door="front", within_s=10)
    assert (granted.event.data["kind"], granted.event.data["assurance"]) == ("nfc_uid", "low")


async def test_an_iso_dep_card_at_a_gateway_without_nfc_keys_is_its_bare_uid(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    event_waiter: Callable[[Gateway], EventWaiter],
    port: int,
    field: Callable[[UdpIsoDepTag | UdpType2Tag], UdpIsoDepTag | UdpType2Tag],
) -> None:
    config = gateway_config(
        hardware={"backend": "simulated"},
        doors={"front": {"nfc_reader": f"udp:127.0.0.1:{port}"}},
    )
    gw = await start_gateway(config)
    assert gw.secrets.nfc is None  # no card type is covered: every card is its bare UID
    waiter = event_waiter(gw)
    uid = bytes.fromhex("04A1B2C3D4E5F6")  # Ada's demo card, enrolled as nfc_uid
    field(UdpIsoDepTag(Ntag424Tag(uid), port=port))  # speaks ISO-DEP, so it goes through RATS
    [granted] = await waiter.wait_for("access.granted", door="front", within_s=10)
    assert (granted.event.data["kind"], granted.event.data["assurance"]) == ("nfc_uid", "low")
