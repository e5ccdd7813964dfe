"""NTAG 424 DNA cryptography against NXP's published vectors (AN12196, AN10922) and its edges."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import ntag424
from gateway.diversify import aes_cmac
from gateway.ntag424 import SunMessage, parse_sun_url, verify_sun

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "nfc.json").read_text()
)  # the same file as shared/vectors/nfc.json
ZERO = bytes(16)

# AN12196 §4.4.4.2.2 example (page 18): SUN with encrypted file data, all keys zero; also the
# second test of nfc-developer/sdm-backend. It pins down the MAC input with ``enc`` mirrored.
SUN_ENC_URL = (
    "https://www.my424dna.com/?picc_data=FD91EC264309878BE6345CBE53BADF40"
    "&enc=CEE9A53E3E463EF1F459635736738962&cmac=ECC1E7F6C6C73BF6"
)


def _zero_file_key(_uid: bytes) -> bytes:
    return ZERO


def _hex(value: object) -> bytes:
    return bytes.fromhex(str(value))


# --- SUN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["ntag424_sun_plain"])
def test_sun_plain_vector(vector: dict[str, Any]) -> None:
    url = f"https://ntag.nxp.com/424?picc_data={vector['picc_data']}&cmac={vector['cmac']}"
    message = parse_sun_url(url)
    assert message.mac_input == b""
    result = verify_sun(
        message, _hex(vector["k_sdm_meta_read"]), lambda _uid: _hex(vector["k_sdm_file_read"])
    )
    expect = vector["expect"]
    assert result.valid is expect["valid"]
    assert result.uid.hex().upper() == expect["uid"]
    assert result.read_counter == expect["read_counter"]
    assert result.file_data is None
    picc = ntag424.decrypt_picc_data(_hex(vector["k_sdm_meta_read"]), _hex(vector["picc_data"]))
    assert f"{picc.tag:02X}" == expect["picc_data_tag"]


def test_sun_with_encrypted_file_data_vector() -> None:
    message = parse_sun_url(SUN_ENC_URL)
    assert message.mac_input == b"CEE9A53E3E463EF1F459635736738962&cmac="
    result = verify_sun(message, ZERO, _zero_file_key)
    assert result.valid
    assert result.uid.hex().upper() == "04958CAA5C5E80"
    assert result.read_counter == 8
    assert result.file_data == b"xxxxxxxxxxxxxxxx"


@pytest.mark.parametrize("index", range(8))
def test_a_wrong_mac_is_invalid_not_raised(index: int) -> None:
    message = parse_sun_url(SUN_ENC_URL)
    cmac = bytearray(message.cmac)
    cmac[index] ^= 0x01
    forged = SunMessage(message.picc_data, bytes(cmac), message.enc, message.mac_input)
    result = verify_sun(forged, ZERO, _zero_file_key)
    assert not result.valid
    assert result.file_data is None


def test_altered_file_data_is_invalid() -> None:
    message = parse_sun_url(SUN_ENC_URL.replace("CEE9A53E", "CEE9A53F"))
    assert not verify_sun(message, ZERO, _zero_file_key).valid


def test_a_wrong_meta_key_is_invalid_not_raised() -> None:
    result = verify_sun(parse_sun_url(SUN_ENC_URL), bytes([1]) * 16, _zero_file_key)
    assert result == ntag424.SunResult(b"", 0, None, valid=False)


def test_a_wrong_file_key_is_invalid() -> None:
    result = verify_sun(parse_sun_url(SUN_ENC_URL), ZERO, lambda _uid: bytes([1]) * 16)
    assert not result.valid
    assert result.uid.hex().upper() == "04958CAA5C5E80"  # PICC data still decrypts


def test_decrypt_picc_data_refuses_noise() -> None:
    with pytest.raises(ValueError, match="wrong meta-read key"):
        ntag424.decrypt_picc_data(bytes([7]) * 16, bytes(16))


def test_the_mac_is_the_odd_bytes_of_the_cmac() -> None:
    keys = ntag424.sun_session_keys(ZERO, bytes.fromhex("04DE5F1EACC040"), 61)
    full = aes_cmac(keys.mac, b"")
    assert ntag424.sun_mac(keys.mac, b"") == bytes(full[i] for i in (1, 3, 5, 7, 9, 11, 13, 15))
    assert ntag424.sun_mac(keys.mac, b"").hex().upper() == "94EED9EE65337086"


def test_session_vectors_hold_uid_and_little_endian_counter() -> None:
    uid = bytes.fromhex("04DE5F1EACC040")
    keys = ntag424.sun_session_keys(ZERO, uid, 61)
    sv2 = bytes.fromhex("3CC30001008004DE5F1EACC0403D0000")
    sv1 = bytes.fromhex("C33C0001008004DE5F1EACC0403D0000")
    assert keys.mac == aes_cmac(ZERO, sv2)
    assert keys.enc == aes_cmac(ZERO, sv1)


def test_tag_side_helpers_round_trip() -> None:
    uid, counter, meta, file_key = bytes(range(7)), 0x123456, bytes([9]) * 16, bytes([5]) * 16
    picc_data = ntag424.encrypt_picc_data(meta, uid, counter, b"\xaa" * 5)
    assert ntag424.decrypt_picc_data(meta, picc_data) == ntag424.PiccData(0xC7, uid, counter)
    session = ntag424.sun_session_keys(file_key, uid, counter)
    plain = b"luckey door 0001" * 2
    enc = ntag424.encrypt_file_data(session.enc, counter, plain)
    assert ntag424.decrypt_file_data(session.enc, counter, enc) == plain
    mac_input = enc.hex().upper().encode() + b"&cmac="
    cmac = ntag424.sun_mac(session.mac, mac_input)
    url = f"picc_data={picc_data.hex()}&enc={enc.hex().upper()}&cmac={cmac.hex()}"
    result = verify_sun(parse_sun_url(url), meta, lambda _uid: file_key)
    assert (result.valid, result.uid, result.read_counter, result.file_data) == (
        True,
        uid,
        counter,
        plain,
    )


def test_counters_outside_24_bits_are_refused() -> None:
    with pytest.raises(ValueError, match="read counter"):
        ntag424.sun_session_keys(ZERO, bytes(7), 1 << 24)


# --- parse_sun_url -----------------------------------------------------------------------------

PICC = "EF963FF7828658A599F3041510671E88"
CMAC = "94EED9EE65337086"


@pytest.mark.parametrize(
    "text",
    [
        f"https://example.com/t?picc_data={PICC}&cmac={CMAC}",
        f"https://example.com/t?PICC_DATA={PICC.lower()}&CMAC={CMAC.lower()}#frag",
        f"picc_data={PICC}&cmac={CMAC}",
        f"?cmac={CMAC}&uid=ignored&picc_data={PICC}",
        f"  https://example.com/t?x=1&picc_data={PICC}&cmac={CMAC}\n",
    ],
)
def test_parse_accepts_urls_and_bare_queries(text: str) -> None:
    message = parse_sun_url(text)
    assert message == SunMessage(bytes.fromhex(PICC), bytes.fromhex(CMAC), None, b"")


def test_parse_keeps_the_mac_input_exactly_as_written() -> None:
    enc = "cee9a53e3e463ef1f459635736738962"
    message = parse_sun_url(f"https://x.example/?picc_data={PICC}&enc={enc}&CMAC={CMAC}")
    assert message.mac_input == f"{enc}&CMAC=".encode()
    assert message.enc == bytes.fromhex(enc)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (f"https://x/?cmac={CMAC}", "'picc_data' is missing"),
        (f"https://x/?picc_data={PICC}", "'cmac' is missing"),
        (f"picc_data={PICC[:-2]}&cmac={CMAC}", "16 bytes"),
        (f"picc_data={PICC}&cmac={CMAC}00", "8 bytes"),
        (f"picc_data={PICC}&cmac={CMAC[:-1]}", "hex digits"),
        (f"picc_data={PICC}&cmac=ZZ{CMAC[2:]}", "hex digits"),
        (f"picc_data={PICC}&enc=00&cmac={CMAC}", "multiple of 16"),
        (f"picc_data={PICC}&enc=&cmac={CMAC}", "multiple of 16"),
        (f"picc_data={PICC}&cmac={CMAC}&enc={'00' * 16}", "before 'cmac'"),
        (f"picc_data={PICC}&picc_data={PICC}&cmac={CMAC}", "more than once"),
        ("https://x/?picc_data=é", "ASCII"),
    ],
)
def test_parse_names_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_sun_url(text)


def test_parse_errors_list_what_is_allowed() -> None:
    with pytest.raises(ValueError, match=r"picc_data \(16 bytes hex\), cmac \(8 bytes hex\)"):
        parse_sun_url("https://example.com/t")


@given(st.text(max_size=200))
def test_parse_raises_nothing_but_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_sun_url(text)


def test_a_message_must_cover_its_file_data() -> None:
    with pytest.raises(ValueError, match="does not cover"):
        SunMessage(bytes(16), bytes(8), bytes(16), b"&cmac=")
    with pytest.raises(ValueError, match="without enc"):
        SunMessage(bytes(16), bytes(8), None, b"x")


# --- AuthenticateEV2First ----------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["ntag424_authenticate_ev2_first"])
def test_authenticate_ev2_first_vector(vector: dict[str, Any]) -> None:
    key, rnd_a = _hex(vector["key"]), _hex(vector["rnd_a"])
    response_1, response_2 = _hex(vector["card_response_1"]), _hex(vector["card_response_2"])
    assert response_1[-2:] == b"\x91\xaf"
    assert response_2[-2:] == b"\x91\x00"
    reader_message, rnd_b = ntag424.ev2_first_part2(key, rnd_a, response_1[:-2])
    assert len(reader_message) == 32
    session = ntag424.ev2_first_check(key, rnd_a, rnd_b, response_2[:-2])
    assert session is not None
    expect = vector["expect"]
    assert session.ti.hex().upper() == expect["ti"]
    assert session.k_ses_auth_enc.hex().upper() == expect["k_ses_auth_enc"]
    assert session.k_ses_auth_mac.hex().upper() == expect["k_ses_auth_mac"]


@pytest.mark.parametrize("vector", VECTORS["ntag424_authenticate_ev2_first"])
def test_the_card_side_reproduces_the_vector(vector: dict[str, Any]) -> None:
    key, rnd_a = _hex(vector["key"]), _hex(vector["rnd_a"])
    response_1, response_2 = _hex(vector["card_response_1"]), _hex(vector["card_response_2"])
    reader_message, rnd_b = ntag424.ev2_first_part2(key, rnd_a, response_1[:-2])
    assert ntag424.ev2_card_part1(key, rnd_b) == response_1[:-2]
    assert ntag424.ev2_card_check(key, rnd_b, reader_message) == rnd_a
    ti = _hex(vector["expect"]["ti"])
    assert ntag424.ev2_card_response(key, ti, rnd_a) == response_2[:-2]  # PDcap2 = PCDcap2 = 0


def test_the_card_refuses_a_reader_without_the_key() -> None:
    key, rnd_a, rnd_b = bytes([1]) * 16, bytes(range(16)), bytes(range(16, 32))
    reader_message, _ = ntag424.ev2_first_part2(
        bytes([2]) * 16, rnd_a, ntag424.ev2_card_part1(key, rnd_b)
    )
    assert ntag424.ev2_card_check(key, rnd_b, reader_message) is None
    assert ntag424.ev2_card_check(key, rnd_b, reader_message[:16]) is None


def test_a_response_under_another_key_gives_no_session() -> None:
    key, other, rnd_a, rnd_b = bytes([1]) * 16, bytes([2]) * 16, bytes(16), bytes([3]) * 16
    forged = ntag424.ev2_card_response(other, b"\x00\x01\x02\x03", rnd_a)
    assert ntag424.ev2_first_check(key, rnd_a, rnd_b, forged) is None
    genuine = ntag424.ev2_card_response(key, b"\x00\x01\x02\x03", rnd_a)
    assert ntag424.ev2_first_check(key, bytes([9]) * 16, rnd_b, genuine) is None
    assert ntag424.ev2_first_check(key, rnd_a, rnd_b, genuine) is not None


def test_session_vector_xors_the_right_bytes() -> None:
    rnd_a = bytes(range(0x10, 0x20))
    rnd_b = bytes(range(0x80, 0x90))
    context = (
        rnd_a[0:2]
        + bytes(a ^ b for a, b in zip(rnd_a[2:8], rnd_b[0:6], strict=True))
        + rnd_b[6:]
        + rnd_a[8:]
    )
    assert len(context) == 26
    enc, mac = ntag424.ev2_session_keys(ZERO, rnd_a, rnd_b)
    assert enc == aes_cmac(ZERO, bytes.fromhex("A55A00010080") + context)
    assert mac == aes_cmac(ZERO, bytes.fromhex("5AA500010080") + context)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ntag424.ev2_first_part2(bytes(15), bytes(16), bytes(16)),
        lambda: ntag424.ev2_first_part2(bytes(16), bytes(15), bytes(16)),
        lambda: ntag424.ev2_first_check(bytes(16), bytes(16), bytes(16), bytes(31)),
        lambda: ntag424.ev2_card_response(bytes(16), bytes(3), bytes(16)),
    ],
)
def test_wrong_sizes_are_value_errors(call: Any) -> None:
    with pytest.raises(ValueError, match="bytes"):
        call()


# --- Per-tag keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["an10922_aes128_diversification"])
def test_tag_key_is_an10922_with_uid_aid_system_identifier(vector: dict[str, Any]) -> None:
    key = ntag424.tag_key(
        _hex(vector["master_key"]),
        _hex(vector["uid"]),
        _hex(vector["aid"]),
        _hex(vector["system_identifier"]),
    )
    assert key.hex().upper() == vector["expect"]["diversified_key"]


def test_tag_key_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="3 bytes"):
        ntag424.tag_key(ZERO, bytes(7), bytes(2), b"S")
    with pytest.raises(ValueError, match="1 to 31"):
        ntag424.tag_key(ZERO, bytes(7), bytes(3), bytes(22))
    assert ntag424.tag_key(ZERO, bytes(7), bytes(3), b"A") != ntag424.tag_key(
        ZERO, bytes([1]) + bytes(6), bytes(3), b"A"
    )
