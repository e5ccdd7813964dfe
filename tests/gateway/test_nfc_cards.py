"""The reader's card dialogue against the emulated chips, and everything that can go wrong in it."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.nfc_emulators import DesfireCard, Ntag424Tag, ndef_uri_message
from gateway import ntag424
from gateway.challenges import ChallengeBook
from gateway.model import CredentialKind
from gateway.nfc_cards import (
    EV2_PROOF_BYTES,
    NTAG424_AID,
    CardError,
    CardGone,
    CardReading,
    Ev2Proof,
    NfcKeys,
    NotOurCard,
    SunProof,
    Transceive,
    parse_proof,
    read_iso_dep_card,
)
from gateway.ntag424 import SunMessage

UID = bytes.fromhex("04A1B2C3D4E5F6")
UID_HEX = "04A1B2C3D4E5F6"
KEYS = NfcKeys(
    ntag424_master=bytes(range(16)),
    sun_meta_key=bytes(range(16, 32)),
    sun_file_master=bytes(range(32, 48)),
    desfire_master=bytes(range(48, 64)),
    desfire_aid=bytes.fromhex("4C4B01"),
    system_identifier=b"LUCKEY-TEST",
)
SUN_ONLY = dataclasses.replace(KEYS, ntag424_master=None)
SECRETS = [k.hex() for k in (KEYS.ntag424_master, KEYS.sun_meta_key, KEYS.sun_file_master) if k] + [
    KEYS.desfire_master.hex() if KEYS.desfire_master else ""
]


def read(card: Ntag424Tag | DesfireCard, keys: NfcKeys = KEYS) -> CardReading:
    return read_iso_dep_card(card.uid, card.respond, keys, ChallengeBook())


def refused(card: Ntag424Tag | DesfireCard, keys: NfcKeys = KEYS) -> CardError:
    """The CardError of a card of a covered type whose dialogue fails: never NotOurCard."""
    with pytest.raises(CardError) as caught:
        read(card, keys)
    assert not isinstance(caught.value, NotOurCard), "a failing covered card was downgraded"
    return caught.value


def assert_plain(err: CardError) -> None:
    """A CardError names no key and no full UID."""
    text = str(err)
    assert UID_HEX not in text.upper()
    for secret in SECRETS:
        assert secret.upper() not in text.upper()


# --- Successful dialogues ----------------------------------------------------------------------


def test_an_ntag424_authenticates_with_its_diversified_key() -> None:
    tag = Ntag424Tag.for_site(UID, KEYS)
    challenges = ChallengeBook()
    reading = read_iso_dep_card(UID, tag.respond, KEYS, challenges)
    assert (reading.kind, reading.value) == (CredentialKind.NTAG424, UID_HEX)
    assert len(reading.proof) == EV2_PROOF_BYTES
    proof = parse_proof(reading.proof)
    assert isinstance(proof, Ev2Proof)
    assert challenges.redeem(proof.rnd_a)  # RndA came from the book
    assert tag.authenticated_key == 0
    assert [c.hex().upper() for c in tag.commands[:5]] == [
        "9060000000",
        "90AF000000",
        "90AF000000",
        "00A4040C07D276000085010100",
        "9071000002000000",
    ]
    assert tag.commands[5][:5] == bytes.fromhex("90AF000020")
    assert len(tag.commands[5]) == 38


def test_the_configured_key_number_is_used() -> None:
    keys = dataclasses.replace(KEYS, ntag424_key_no=3)
    tag = Ntag424Tag.for_site(UID, keys)
    read(tag, keys)
    assert tag.authenticated_key == 3
    assert bytes.fromhex("9071000002030000") in tag.commands


def test_without_the_auth_key_the_sun_message_is_read() -> None:
    tag = Ntag424Tag.for_site(UID, KEYS, sun_enabled=True, counter=41)
    reading = read(tag, SUN_ONLY)
    assert (reading.kind, reading.value) == (CredentialKind.NTAG424, UID_HEX)
    proof = parse_proof(reading.proof)
    assert isinstance(proof, SunProof)
    assert proof.message.enc is None
    assert proof.message.mac_input == b""
    assert tag.counter == 42
    assert bytes.fromhex("00A4000C02E10400") in tag.commands
    result = ntag424.verify_sun(proof.message, bytes(range(16, 32)), _sun_file_key)
    assert (result.valid, result.uid, result.read_counter) == (True, UID, 42)


def _sun_file_key(uid: bytes) -> bytes:
    key = KEYS.sun_file_key(uid)
    assert key is not None
    return key


def test_a_sun_message_with_file_data_keeps_its_mac_input() -> None:
    tag = Ntag424Tag.for_site(UID, KEYS, sun_enabled=True, file_data=b"door 7 / floor 2")
    proof = parse_proof(read(tag, SUN_ONLY).proof)
    assert isinstance(proof, SunProof)
    assert proof.message.enc is not None
    assert proof.message.mac_input == proof.message.enc.hex().upper().encode() + b"&cmac="
    result = ntag424.verify_sun(proof.message, bytes(range(16, 32)), _sun_file_key)
    assert result.valid
    assert result.file_data == b"door 7 / floor 2"


def test_a_long_url_is_read_in_several_chunks() -> None:
    url = "https://luckey.example/" + "t" * 150
    tag = Ntag424Tag.for_site(UID, KEYS, sun_enabled=True, url=url)
    proof = parse_proof(read(tag, SUN_ONLY).proof)
    assert isinstance(proof, SunProof)
    reads = [c for c in tag.commands if c[:2] == b"\x00\xb0"]
    assert len(reads) == 3  # NLEN, then 128 bytes, then the rest
    assert tag.counter == 1  # one read session, one increment


@pytest.mark.parametrize("major", [0x12, 0x33])
def test_a_desfire_card_authenticates_in_the_sites_application(major: int) -> None:
    card = DesfireCard.for_site(UID, KEYS, major=major)
    reading = read(card)
    assert (reading.kind, reading.value) == (CredentialKind.DESFIRE, UID_HEX)
    assert isinstance(parse_proof(reading.proof), Ev2Proof)
    assert bytes.fromhex("905A0000034C4B0100") in card.commands


def test_a_desfire_card_with_a_4_byte_uid_is_read() -> None:
    uid = bytes.fromhex("1A2B3C4D")
    reading = read(DesfireCard.for_site(uid, KEYS))
    assert reading.value == "1A2B3C4D"


# --- Not one of the site's cards: NotOurCard (the reader takes the bare UID) ----------------

NTAG_KEYS_ONLY = dataclasses.replace(KEYS, desfire_master=None)
DESFIRE_KEY_ONLY = dataclasses.replace(
    KEYS, ntag424_master=None, sun_meta_key=None, sun_file_master=None
)


def test_an_ntag424_without_any_key_configured_is_not_ours() -> None:
    tag = Ntag424Tag.for_site(UID, KEYS)
    with pytest.raises(NotOurCard, match="no key configured for NTAG 424 DNA"):
        read(tag, DESFIRE_KEY_ONLY)
    assert len(tag.commands) == 3  # GetVersion only: no SELECT, no authentication


def test_an_ntag_with_a_short_uid_on_a_site_without_ntag_keys_is_not_ours() -> None:
    tag = Ntag424Tag.for_site(UID, KEYS)
    with pytest.raises(NotOurCard, match="no key configured for NTAG 424 DNA"):
        read_iso_dep_card(bytes.fromhex("04A1B2C3"), tag.respond, DESFIRE_KEY_ONLY, ChallengeBook())


def test_a_desfire_card_without_a_key_configured_is_not_ours() -> None:
    card = DesfireCard.for_site(UID, KEYS)
    with pytest.raises(NotOurCard, match="no key configured for DESFire"):
        read(card, NTAG_KEYS_ONLY)
    assert len(card.commands) == 3  # GetVersion only


def test_a_desfire_ev1_is_not_ours() -> None:
    with pytest.raises(NotOurCard, match="older than EV2"):
        read(DesfireCard.for_site(UID, KEYS, major=0x01))


def test_a_random_id_is_not_ours() -> None:
    card = DesfireCard.for_site(bytes.fromhex("08112233"), KEYS)
    with pytest.raises(NotOurCard, match="random ID"):
        read(card)
    assert card.commands == []  # not even asked what it is


def test_another_card_type_is_not_ours() -> None:
    def ultralight_like(apdu: bytes) -> bytes:
        if apdu[:2] == b"\x90\x60":
            return bytes.fromhex("04030104000F03") + b"\x91\xaf"
        return bytes(7) + b"\x91\xaf" if apdu[:2] == b"\x90\xaf" else b"\x6d\x00"

    with pytest.raises(NotOurCard, match="hardware type 0x03"):
        read_iso_dep_card(UID, _three_frames(ultralight_like), KEYS, ChallengeBook())


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b"\x6e\x00", "GetVersion: the card answered 6E 00 \\(class not supported\\)"),  # bank card
        (b"\x6d\x00", "GetVersion: the card answered 6D 00"),  # a phone's HCE service
        (b"\x6a\x82", "GetVersion: the card answered 6A 82"),
        (b"\x91\x1c", "GetVersion: the card answered 91 1C \\(illegal command\\)"),
    ],
)
def test_a_card_refusing_get_version_is_not_ours(answer: bytes, complaint: str) -> None:
    commands: list[bytes] = []

    def refusing(apdu: bytes) -> bytes:
        commands.append(apdu)
        return answer

    with pytest.raises(NotOurCard, match=complaint):
        read_iso_dep_card(UID, refusing, KEYS, ChallengeBook())
    assert commands == [bytes.fromhex("9060000000")]


# --- A card of a covered type that fails: CardError, never NotOurCard --------------------------


def test_a_tag_without_sun_is_an_error_in_sun_mode() -> None:
    tag = Ntag424Tag.for_site(UID, KEYS, sun_enabled=False)
    err = refused(tag, SUN_ONLY)
    assert "not a SUN message: SUN parameter 'picc_data' is missing" in str(err)


@pytest.mark.parametrize("keys", [KEYS, NTAG_KEYS_ONLY], ids=["all keys", "ntag keys only"])
def test_a_tag_of_another_site_refuses_the_key(keys: NfcKeys) -> None:
    other = dataclasses.replace(KEYS, ntag424_master=bytes([7]) * 16)
    err = refused(Ntag424Tag.for_site(UID, other), keys)
    assert "refused the key" in str(err)
    assert_plain(err)


def test_a_uid_clone_claiming_to_be_an_ntag424_is_never_downgraded() -> None:
    # A clone answering GetVersion as an NTAG 424 DNA without the site's key looks like one of
    # ours: it is refused (or its proof goes to the verifier), never read as its bare UID.
    clone = Ntag424Tag(UID, app_keys={0: bytes(range(16))})
    assert "refused the key" in str(refused(clone))
    lax_clone = Ntag424Tag(UID, app_keys={0: bytes(range(16))}, checks_reader=False)
    reading = read(lax_clone)
    assert reading.kind is CredentialKind.NTAG424  # gateway/nfc_verifiers.py refuses its proof


def test_a_desfire_card_of_another_site_refuses_the_key() -> None:
    card = DesfireCard(UID, KEYS.desfire_aid, bytes([9]) * 16)
    assert "refused the key" in str(refused(card))


def test_a_desfire_card_without_the_application_is_an_error() -> None:
    card = DesfireCard(UID, bytes.fromhex("000042"), bytes(16))
    assert "91 A0 (application not found)" in str(refused(card))


def test_an_ntag_with_a_short_uid_is_refused() -> None:
    tag = Ntag424Tag.for_site(UID, KEYS)
    with pytest.raises(CardError, match="7-byte UID") as caught:
        read_iso_dep_card(bytes.fromhex("04A1B2C3"), tag.respond, KEYS, ChallengeBook())
    assert not isinstance(caught.value, NotOurCard)


def _three_frames(transceive: Transceive) -> Transceive:
    """GetVersion's third frame ends with 91 00."""
    count = 0

    def wrapped(apdu: bytes) -> bytes:
        nonlocal count
        count += 1
        response = transceive(apdu)
        return bytes(14) + b"\x91\x00" if count == 3 else response

    return wrapped


# --- Damaged transport -------------------------------------------------------------------------

Damage = Callable[[bytes], bytes]


def _damaging(respond: Transceive, at: int, damage: Damage, changed: list[bool]) -> Transceive:
    """``respond`` with the ``at``-th answer damaged; ``changed`` says whether that altered it."""
    count = 0

    def transceive(apdu: bytes) -> bytes:
        nonlocal count
        count += 1
        response = respond(apdu)
        if count != at:
            return response
        damaged = damage(response)
        changed.append(damaged != response)
        return damaged

    return transceive


DAMAGES: dict[str, Damage] = {
    "empty": lambda r: b"",
    "one byte": lambda r: r[:1],
    "last byte cut": lambda r: r[:-1],
    "status only": lambda r: r[-2:],
    "data cut": lambda r: r[:-3] + r[-2:] if len(r) > 2 else b"\x00",
    "extra byte": lambda r: r[:-2] + b"\x00" + r[-2:],
    "status flipped": lambda r: r[:-1] + bytes([r[-1] ^ 0x01]),
    "class flipped": lambda r: r[:-2] + bytes([r[-2] ^ 0x01]) + r[-1:],
}
CARDS: dict[str, tuple[Callable[[], Ntag424Tag | DesfireCard], NfcKeys, int]] = {
    # name: (card factory, keys, number of exchanges)
    "ntag ev2": (lambda: Ntag424Tag.for_site(UID, KEYS), KEYS, 6),
    "ntag sun": (lambda: Ntag424Tag.for_site(UID, KEYS, sun_enabled=True), SUN_ONLY, 7),
    "desfire": (lambda: DesfireCard.for_site(UID, KEYS), KEYS, 6),
}


@pytest.mark.parametrize("card_name", CARDS)
def test_the_exchange_counts_are_right(card_name: str) -> None:
    factory, keys, exchanges = CARDS[card_name]
    card = factory()
    read(card, keys)
    assert len(card.commands) == exchanges


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("card_name", CARDS)
def test_a_damaged_answer_never_gives_a_reading(card_name: str, damage: str) -> None:
    factory, keys, exchanges = CARDS[card_name]
    for at in range(1, exchanges + 1):
        if (at, damage) == (3, "extra byte"):
            continue  # GetVersion's last frame may be longer (EV3 adds bytes): not damage
        card = factory()
        changed: list[bool] = []
        transceive = _damaging(card.respond, at, DAMAGES[damage], changed)
        error: CardError | None = None
        try:
            read_iso_dep_card(card.uid, transceive, keys, ChallengeBook())
        except CardError as err:
            error = err
        if error is None:
            assert changed == [False], f"damaged answer {at} gave a reading"
            continue
        assert_plain(error)
        # Only the first answer identifies the card: once it said what it is, a failure is
        # never NotOurCard (which would let the reader take the bare UID).
        assert at == 1 or not isinstance(error, NotOurCard), f"answer {at} was downgraded"


@pytest.mark.parametrize("card_name", CARDS)
def test_card_gone_propagates_at_every_step(card_name: str) -> None:
    factory, keys, exchanges = CARDS[card_name]
    for at in range(1, exchanges + 1):
        card = factory()
        count = 0

        def transceive(apdu: bytes, card: Ntag424Tag | DesfireCard = card, at: int = at) -> bytes:
            nonlocal count
            count += 1
            if count == at:
                raise CardGone
            return card.respond(apdu)

        with pytest.raises(CardGone):
            read_iso_dep_card(card.uid, transceive, keys, ChallengeBook())


# --- NDEF edge cases ---------------------------------------------------------------------------


def _ndef_tag(ndef_file: bytes) -> Transceive:
    """A minimal NTAG 424 DNA whose NDEF file holds ``ndef_file``."""
    frames = iter(
        [
            bytes.fromhex("04040830001105") + b"\x91\xaf",
            bytes.fromhex("04040201021105") + b"\x91\xaf",
            UID + bytes(7) + b"\x91\x00",
        ]
    )

    def transceive(apdu: bytes) -> bytes:
        if apdu[0] == 0x90:
            return next(frames)
        if apdu[1] == 0xA4:
            return b"\x90\x00"
        offset, size = (apdu[2] << 8) | apdu[3], apdu[4]
        return ndef_file[offset : offset + size] + b"\x90\x00"

    return transceive


def _file(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message + bytes(256)


SUN_URL = "https://x.example/?picc_data=" + "00" * 16 + "&cmac=" + "11" * 8


def test_a_long_ndef_record_and_a_leading_text_record_are_understood() -> None:
    text_record = bytes([0x91, 1, 3]) + b"T" + b"\x02en"  # MB, SR, not the last record
    uri_payload = b"\x04" + SUN_URL.removeprefix("https://").encode()
    long_uri = bytes([0x41, 1]) + len(uri_payload).to_bytes(4, "big") + b"U" + uri_payload
    reading = read_iso_dep_card(
        UID, _ndef_tag(_file(text_record + long_uri)), SUN_ONLY, ChallengeBook()
    )
    proof = parse_proof(reading.proof)
    assert isinstance(proof, SunProof)
    assert proof.message.picc_data == bytes(16)


@pytest.mark.parametrize(
    ("ndef_file", "complaint"),
    [
        (bytes(256), "no NDEF message"),
        (b"\x01\x00" + bytes(254), "larger than its file"),
        (_file(bytes([0xD1, 1, 3]) + b"T" + b"\x02en"), "no URI record"),
        (_file(bytes([0xD1, 1, 40]) + b"U" + b"\x04abc"), "truncated"),
        (_file(bytes([0xD1])), "truncated"),
        (_file(bytes([0xD1, 1, 3]) + b"U" + b"\x04\xff\xfe"), "UTF-8"),
    ],
)
def test_a_bad_ndef_message_is_an_error(ndef_file: bytes, complaint: str) -> None:
    with pytest.raises(CardError, match=complaint):
        read_iso_dep_card(UID, _ndef_tag(ndef_file), SUN_ONLY, ChallengeBook())


def test_the_emulators_ndef_message_is_what_the_reader_expects() -> None:
    message = ndef_uri_message(SUN_URL)
    reading = read_iso_dep_card(UID, _ndef_tag(_file(message)), SUN_ONLY, ChallengeBook())
    assert reading.kind is CredentialKind.NTAG424


# --- Keys and proofs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"ntag424_master": bytes(15)}, "ntag424_master must be 16 bytes"),
        ({"sun_meta_key": None}, "both sun_meta_key and sun_file_master"),
        ({"desfire_aid": bytes(4)}, "desfire_aid must be 3 bytes"),
        ({"ntag424_aid": bytes(2)}, "ntag424_aid must be 3 bytes"),
        ({"system_identifier": b""}, "system_identifier must be 1 to 21 bytes"),
        ({"system_identifier": bytes(22)}, "system_identifier must be 1 to 21 bytes"),
        ({"ntag424_key_no": 5}, "ntag424_key_no must be 0 to 4"),
        ({"desfire_key_no": -1}, "desfire_key_no must be 0 to 13"),
    ],
)
def test_nfc_keys_are_checked(change: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        dataclasses.replace(KEYS, **change)  # type: ignore[arg-type]


def test_keys_never_show_in_repr() -> None:
    text = repr(KEYS)
    for secret in SECRETS:
        assert secret not in text
    assert "desfire_aid" in text


def test_per_tag_keys_use_uid_aid_and_system_identifier() -> None:
    assert bytes.fromhex("D27600") == NTAG424_AID
    assert KEYS.ntag424_key(UID) == ntag424.tag_key(
        bytes(range(16)), UID, NTAG424_AID, b"LUCKEY-TEST"
    )
    assert KEYS.desfire_key(UID) == ntag424.tag_key(
        bytes(range(48, 64)), UID, bytes.fromhex("4C4B01"), b"LUCKEY-TEST"
    )
    assert KEYS.sun_file_key(UID) != KEYS.sun_file_key(bytes.fromhex("04A1B2C3D4E5F7"))
    assert SUN_ONLY.ntag424_key(UID) is None


def test_a_reading_shows_its_uid_redacted() -> None:
    reading = CardReading(CredentialKind.NTAG424, UID_HEX, bytes(65))
    assert repr(reading) == "CardReading(kind=ntag424, value='…E5F6', proof=65 bytes)"


def test_proofs_round_trip() -> None:
    ev2 = Ev2Proof(bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 64)))
    assert parse_proof(ev2.to_bytes()) == ev2
    assert ev2.to_bytes()[0] == 0x01
    sun = SunProof(SunMessage(bytes(16), bytes(8), bytes(32), b"00" * 32 + b"&cmac="))
    assert parse_proof(sun.to_bytes()) == sun
    plain = SunProof(SunMessage(bytes(16), bytes(8), None, b""))
    assert plain.to_bytes() == b"\x02" + bytes(24) + b"\x00\x00\x00\x00"
    assert parse_proof(plain.to_bytes()) == plain


@pytest.mark.parametrize(
    ("proof", "complaint"),
    [
        (b"", "empty"),
        (b"\x03" + bytes(64), "unknown proof layout 0x03"),
        (b"\x01" + bytes(63), "65 bytes"),
        (b"\x02" + bytes(10), "ends before"),
        (b"\x02" + bytes(24) + b"\x00\x10" + bytes(4), "ends inside its enc"),
        (b"\x02" + bytes(24) + b"\x00\x00\x00\x00\x00", "1 bytes too many"),
        (b"\x02" + bytes(24) + b"\x00\x01\x00\x00\x00", "multiple of 16"),
        (b"\x02" + bytes(24) + b"\x00\x10" + bytes(16) + b"\x00\x00", "does not cover"),
    ],
)
def test_malformed_proofs_say_what_is_wrong(proof: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_proof(proof)


@given(st.binary(max_size=120))
def test_parse_proof_raises_nothing_but_value_error(proof: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_proof(proof)
