"""The emulated NTAG 424 DNA and DESFire answer like the real chips, errors included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.nfc_emulators import (
    CC_FILE,
    Apdu,
    DesfireCard,
    Ntag424Tag,
    ndef_uri_message,
    parse_apdu,
)
from gateway import ntag424

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "nfc.json").read_text()
)  # the same file as shared/vectors/nfc.json
UID = bytes.fromhex("04A1B2C3D4E5F6")
KEY = bytes(range(16))
META, FILE = bytes([1]) * 16, bytes([2]) * 16

GET_VERSION = bytes.fromhex("9060000000")
MORE = bytes.fromhex("90AF000000")
SELECT_APP = bytes.fromhex("00A4040C07D276000085010100")
SELECT_NDEF = bytes.fromhex("00A4000C02E10400")
AUTH_KEY_0 = bytes.fromhex("9071000002000000")


def read_binary(offset: int, size: int) -> bytes:
    return bytes([0x00, 0xB0, offset >> 8, offset & 0xFF, size & 0xFF])


def part2(message: bytes) -> bytes:
    return bytes.fromhex("90AF000020") + message + b"\x00"


def sequence(*values: bytes) -> Iterator[bytes]:
    return iter(values)


def randoms(*values: bytes) -> Any:
    """A ``random`` for the emulator that hands out ``values`` in order."""
    queue = list(values)

    def random(size: int) -> bytes:
        value = queue.pop(0)
        assert len(value) == size
        return value

    return random


# --- APDUs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("apdu", "parsed"),
    [
        ("00A4040C", Apdu(0x00, 0xA4, 0x04, 0x0C, b"", None)),
        ("9060000000", Apdu(0x90, 0x60, 0, 0, b"", 256)),
        ("00B0000002", Apdu(0x00, 0xB0, 0, 0, b"", 2)),
        ("00A4000C02E104", Apdu(0x00, 0xA4, 0, 0x0C, b"\xe1\x04", None)),
        ("905A0000034C4B0100", Apdu(0x90, 0x5A, 0, 0, b"LK\x01", 256)),
    ],
)
def test_apdus_are_split_into_their_fields(apdu: str, parsed: Apdu) -> None:
    assert parse_apdu(bytes.fromhex(apdu)) == parsed


@pytest.mark.parametrize(
    "apdu", ["", "00A404", "00A4040C0500", "00A4040C02E10400FF", "00A4040C0000"]
)
def test_malformed_apdus_are_not_apdus(apdu: str) -> None:
    assert parse_apdu(bytes.fromhex(apdu)) is None


# --- NTAG 424 DNA -----------------------------------------------------------------------------


def test_get_version_answers_in_three_frames() -> None:
    tag = Ntag424Tag(UID)
    first = tag.respond(GET_VERSION)
    assert first == bytes.fromhex("04040830001105") + b"\x91\xaf"
    assert tag.respond(MORE)[-2:] == b"\x91\xaf"
    last = tag.respond(MORE)
    assert last[:7] == UID
    assert len(last) == 16
    assert last[-2:] == b"\x91\x00"
    assert tag.respond(MORE) == b"\x91\x1c"  # nothing left to continue


def test_the_ndef_application_and_its_files_are_selected() -> None:
    tag = Ntag424Tag(UID)
    assert tag.respond(SELECT_NDEF) == b"\x6a\x82"  # not before the application
    assert tag.respond(bytes.fromhex("00A4040C07D276000085010200")) == b"\x6a\x82"
    assert tag.respond(bytes.fromhex("00A4040007D276000085010100")) == b"\x6a\x86"
    assert tag.respond(SELECT_APP) == b"\x90\x00"
    assert tag.respond(bytes.fromhex("00A4000C02E107")) == b"\x6a\x82"
    assert tag.respond(bytes.fromhex("00A4000C02E103")) == b"\x90\x00"
    assert tag.respond(read_binary(0, 0x17)) == CC_FILE + b"\x90\x00"


def test_read_binary_needs_a_file_and_stays_inside_it() -> None:
    tag = Ntag424Tag(UID, url="https://luckey.example/static")
    tag.respond(SELECT_APP)
    assert tag.respond(read_binary(0, 2)) == b"\x69\x86"
    tag.respond(SELECT_NDEF)
    assert tag.respond(bytes.fromhex("00B00000")) == b"\x67\x00"  # no Le
    assert tag.respond(bytes.fromhex("00B0810002")) == b"\x6a\x86"  # short EF id
    assert tag.respond(read_binary(256, 1)) == b"\x6b\x00"
    tail = tag.respond(read_binary(250, 10))
    assert tail[-2:] == b"\x62\x82"
    assert len(tail) == 6 + 2
    message = ndef_uri_message("https://luckey.example/static")
    assert tag.respond(read_binary(0, 2)) == len(message).to_bytes(2, "big") + b"\x90\x00"
    assert tag.respond(read_binary(2, len(message))) == message + b"\x90\x00"


def test_the_sun_counter_moves_once_per_selection() -> None:
    tag = Ntag424Tag(UID, sun_meta_key=META, sun_file_key=FILE, sun_enabled=True, counter=5)
    tag.respond(SELECT_APP)
    tag.respond(SELECT_NDEF)
    first = tag.respond(read_binary(0, 200))
    assert tag.respond(read_binary(0, 200)) == first
    assert tag.counter == 6
    tag.respond(SELECT_NDEF)
    second = tag.respond(read_binary(0, 200))
    assert second != first
    assert tag.counter == 7


def test_the_sun_url_verifies_and_carries_the_counter() -> None:
    tag = Ntag424Tag(
        UID, sun_meta_key=META, sun_file_key=FILE, sun_enabled=True, file_data=b"0123456789ABCDEF"
    )
    tag.respond(SELECT_APP)
    tag.respond(SELECT_NDEF)
    content = tag.respond(read_binary(0, 250))[:-2]
    nlen = int.from_bytes(content[:2], "big")
    url = content[2 + 5 : 2 + nlen].decode()  # after the record header and the prefix code
    message = ntag424.parse_sun_url(url)
    result = ntag424.verify_sun(message, META, lambda _uid: FILE)
    assert (result.valid, result.uid, result.read_counter) == (True, UID, 1)
    assert result.file_data == b"0123456789ABCDEF"


def test_a_tag_at_the_last_counter_value_refuses_to_be_read() -> None:
    tag = Ntag424Tag(
        UID, sun_meta_key=META, sun_file_key=FILE, sun_enabled=True, counter=ntag424.COUNTER_MAX
    )
    tag.respond(SELECT_APP)
    tag.respond(SELECT_NDEF)
    assert tag.respond(read_binary(0, 2)) == b"\x69\x85"


@pytest.mark.parametrize("vector", VECTORS["ntag424_authenticate_ev2_first"])
def test_the_tag_reproduces_the_an12196_exchange(vector: dict[str, Any]) -> None:
    key, rnd_a = bytes.fromhex(vector["key"]), bytes.fromhex(vector["rnd_a"])
    response_1 = bytes.fromhex(vector["card_response_1"])
    rnd_b = ntag424.ev2_first_part2(key, rnd_a, response_1[:-2])[1]
    ti = bytes.fromhex(vector["expect"]["ti"])
    tag = Ntag424Tag(UID, app_keys={0: key}, random=randoms(rnd_b, ti))
    tag.respond(SELECT_APP)
    assert tag.respond(AUTH_KEY_0) == response_1
    reader_message, _ = ntag424.ev2_first_part2(key, rnd_a, response_1[:-2])
    assert tag.respond(part2(reader_message)) == bytes.fromhex(vector["card_response_2"])
    assert tag.authenticated_key == 0


def test_authentication_errors_are_answered_like_a_real_tag() -> None:
    tag = Ntag424Tag(UID, app_keys={1: KEY})
    assert tag.respond(AUTH_KEY_0) == b"\x91\x9d"  # the application is not selected
    tag.respond(SELECT_APP)
    assert tag.respond(bytes.fromhex("9071000002050000")) == b"\x91\x40"  # key 5: none
    assert tag.respond(bytes.fromhex("907100000100" + "00")) == b"\x91\x7e"
    assert tag.respond(part2(bytes(32))) == b"\x91\x1c"  # no authentication under way
    answer = tag.respond(bytes.fromhex("9071000002010000"))
    assert answer[-2:] == b"\x91\xaf"
    wrong, _ = ntag424.ev2_first_part2(bytes(16), bytes(16), answer[:-2])
    assert tag.respond(part2(wrong)) == b"\x91\xae"
    assert tag.respond(part2(wrong)) == b"\x91\x1c"  # the attempt is over
    assert tag.authenticated_key is None


def test_a_short_part_two_is_a_length_error() -> None:
    tag = Ntag424Tag(UID)
    tag.respond(SELECT_APP)
    tag.respond(AUTH_KEY_0)
    assert tag.respond(bytes.fromhex("90AF00001000") + bytes(15) + b"\x00") == b"\x91\x7e"


def test_a_clone_answers_without_checking_the_reader() -> None:
    clone = Ntag424Tag(UID, app_keys={0: KEY}, checks_reader=False)
    clone.respond(SELECT_APP)
    answer = clone.respond(AUTH_KEY_0)
    wrong, _ = ntag424.ev2_first_part2(bytes(16), bytes(16), answer[:-2])
    final = clone.respond(part2(wrong))
    assert final[-2:] == b"\x91\x00"
    assert len(final) == 34


@pytest.mark.parametrize(
    ("apdu", "status"),
    [
        ("80CA000000", "6E00"),  # unknown class
        ("00D6000001AA", "6D00"),  # UPDATE BINARY is not emulated
        ("90AD000000", "911C"),  # ReadData: native, not emulated
        ("9060010000", "917E"),  # ISO wrapping wants P1 = P2 = 00
        ("906000000100", "917E"),  # GetVersion takes no data
        ("00", "6700"),
    ],
)
def test_unknown_commands_get_an_error_status(apdu: str, status: str) -> None:
    assert Ntag424Tag(UID).respond(bytes.fromhex(apdu)) == bytes.fromhex(status)


def test_the_emulator_keeps_what_it_received() -> None:
    tag = Ntag424Tag(UID)
    tag.respond(GET_VERSION)
    tag.respond(SELECT_APP)
    assert tag.commands == [GET_VERSION, SELECT_APP]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"uid": bytes(4)}, "7 bytes"),
        ({"sun_enabled": True}, "SUN needs"),
        ({"counter": -1}, "24 bits"),
        ({"app_keys": {5: KEY}}, "numbered 0 to 4"),
        ({"app_keys": {0: bytes(8)}}, "16 bytes"),
    ],
)
def test_a_tag_is_built_from_sound_parts(options: dict[str, Any], complaint: str) -> None:
    arguments: dict[str, Any] = {"uid": UID, **options}
    with pytest.raises(ValueError, match=complaint):
        Ntag424Tag(**arguments)


def test_ndef_uri_messages_use_the_prefix_codes() -> None:
    assert ndef_uri_message("https://a.b") == bytes([0xD1, 1, 4]) + b"U\x04a.b"
    assert ndef_uri_message("https://www.a.b")[4] == 0x02
    assert ndef_uri_message("http://a.b")[4] == 0x03
    assert ndef_uri_message("urn:x")[4] == 0x00
    long = ndef_uri_message("https://" + "a" * 300)
    assert long[0] == 0xC1
    assert int.from_bytes(long[2:6], "big") == 301


def test_a_url_too_long_for_the_file_is_refused() -> None:
    tag = Ntag424Tag(UID, url="https://" + "a" * 300)
    tag.respond(SELECT_APP)
    tag.respond(SELECT_NDEF)
    with pytest.raises(ValueError, match="does not fit"):
        tag.respond(read_binary(0, 2))


# --- DESFire ----------------------------------------------------------------------------------

AID = bytes.fromhex("4C4B01")


def select_application(aid: bytes) -> bytes:
    return bytes.fromhex("905A000003") + aid + b"\x00"


@pytest.mark.parametrize("major", [0x12, 0x33])
def test_desfire_get_version_names_type_and_generation(major: int) -> None:
    card = DesfireCard(UID, AID, KEY, major=major)
    assert card.respond(GET_VERSION)[:4] == bytes([0x04, 0x01, 0x01, major])


def test_desfire_applications_are_selected_by_aid() -> None:
    card = DesfireCard(UID, AID, KEY)
    assert card.respond(AUTH_KEY_0) == b"\x91\x9d"  # the PICC master key is not emulated
    assert card.respond(select_application(bytes.fromhex("112233"))) == b"\x91\xa0"
    assert card.respond(bytes.fromhex("905A0000024C4B00")) == b"\x91\x7e"
    assert card.respond(select_application(AID)) == b"\x91\x00"
    assert card.respond(AUTH_KEY_0)[-2:] == b"\x91\xaf"
    assert card.respond(select_application(bytes(3))) == b"\x91\x00"  # back to the PICC
    assert card.respond(AUTH_KEY_0) == b"\x91\x9d"


def test_desfire_authenticates_with_its_key_only() -> None:
    card = DesfireCard(UID, AID, KEY, key_no=2)
    card.respond(select_application(AID))
    assert card.respond(AUTH_KEY_0) == b"\x91\x40"
    answer = card.respond(bytes.fromhex("9071000002020000"))
    rnd_a = bytes(range(100, 116))
    message, rnd_b = ntag424.ev2_first_part2(KEY, rnd_a, answer[:-2])
    final = card.respond(part2(message))
    assert final[-2:] == b"\x91\x00"
    assert ntag424.ev2_first_check(KEY, rnd_a, rnd_b, final[:-2]) is not None
    assert card.authenticated_key == 2


def test_desfire_iso_commands_are_not_emulated() -> None:
    card = DesfireCard(UID, AID, KEY)
    assert card.respond(SELECT_APP) == b"\x6a\x82"
    assert card.respond(read_binary(0, 2)) == b"\x6d\x00"


def test_a_desfire_card_is_built_from_sound_parts() -> None:
    with pytest.raises(ValueError, match="AID is 3 bytes"):
        DesfireCard(UID, bytes(2), KEY)
