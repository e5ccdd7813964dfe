"""The BLE phone credential protocol: layouts against the document, the worked example, both
sides against each other, impostors, tampering, and arbitrary bytes."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import ble_protocol as bp
from gateway.ble_protocol import (
    ADVERT_BYTES,
    BleProtocolError,
    MessageType,
    PhoneHandshake,
    ReaderHandshake,
    ReaderImpostor,
    advertisement,
    key_id_for,
    load_public_key,
    parse_advertisement,
    parse_proof,
    public_key_bytes,
)
from gateway.reader_identity import (
    ReaderIdentity,
    ReaderIdentityError,
    _write_new,
    load_reader_identity,
)

DOC = Path(__file__).parents[2] / "docs" / "ble-credential-protocol.md"
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 group order


def fixed_key(label: str) -> ec.EllipticCurvePrivateKey:
    """A reproducible P-256 key: scalar = SHA-256(label) mod (n - 1) + 1."""
    scalar = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") % (N - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def scalar_hex(key: ec.EllipticCurvePrivateKey) -> str:
    return f"{key.private_numbers().private_value:064x}"


READER = ReaderIdentity.generate()
PHONE_KEY = ec.generate_private_key(ec.SECP256R1())
PHONE_ID = key_id_for(PHONE_KEY.public_key())
EPHEMERAL_ID = bytes.fromhex("0102030405060708")
NONCE = bytes(range(16))


def phone_for(
    reader: ReaderIdentity = READER, ephemeral_id: bytes = EPHEMERAL_ID
) -> PhoneHandshake:
    return PhoneHandshake(PHONE_ID, PHONE_KEY, {reader.reader_id: reader.public_key}, ephemeral_id)


def exchange(reader: ReaderHandshake, phone: PhoneHandshake) -> tuple[bytes, bytes, bytes, bytes]:
    """Run the four messages; returns them."""
    m1 = reader.hello()
    m2 = phone.on_hello(m1)
    m3 = reader.prove(m2)
    m4 = phone.on_proof(m3)
    return m1, m2, m3, m4


def recorded() -> tuple[bytes, bytes, bytes, bytes]:
    return exchange(ReaderHandshake(READER, NONCE, EPHEMERAL_ID), phone_for())


# --- The worked example of the document -----------------------------------------------------------


def worked_example() -> dict[str, bytes]:
    """Every value of the document's worked example, computed from its fixed keys."""
    reader = ReaderIdentity.from_private_key(fixed_key("luckey example reader"))
    phone = fixed_key("luckey example phone")
    reader_ephemeral = fixed_key("luckey example reader ephemeral")
    phone_ephemeral = fixed_key("luckey example phone ephemeral")
    nonce = bytes.fromhex("00112233445566778899aabbccddeeff")
    ephemeral_id = bytes.fromhex("a1a2a3a4a5a6a7a8")
    key_id = key_id_for(phone.public_key())

    gateway = ReaderHandshake(reader, nonce, ephemeral_id, ephemeral_key=reader_ephemeral)
    handset = PhoneHandshake(
        key_id,
        phone,
        {reader.reader_id: reader.public_key},
        ephemeral_id,
        ephemeral_key=phone_ephemeral,
    )
    m1, m2, m3, m4 = exchange(gateway, handset)
    claim = gateway.finish(m4)

    transcript = bp.Transcript(
        bp.PROTOCOL_VERSION,
        public_key_bytes(reader_ephemeral.public_key()),
        nonce,
        reader.reader_id,
        public_key_bytes(phone_ephemeral.public_key()),
        ephemeral_id,
    )
    digest = transcript.digest()
    shared = reader_ephemeral.exchange(ec.ECDH(), phone_ephemeral.public_key())
    to_phone, to_reader = bp.session_keys(shared, digest)
    reader_signature = AESGCM(to_phone).decrypt(bp.READER_TO_PHONE_NONCE, m3[2:], m3[:2])
    phone_plaintext = AESGCM(to_reader).decrypt(bp.PHONE_TO_READER_NONCE, m4[2:], m4[:2])
    return {
        "reader_private_key": bytes.fromhex(scalar_hex(reader.private_key)),
        "reader_public_key": public_key_bytes(reader.public_key),
        "reader_id": reader.reader_id,
        "phone_private_key": bytes.fromhex(scalar_hex(phone)),
        "phone_public_key": public_key_bytes(phone.public_key()),
        "key_id": key_id,
        "reader_ephemeral_private_key": bytes.fromhex(scalar_hex(reader_ephemeral)),
        "phone_ephemeral_private_key": bytes.fromhex(scalar_hex(phone_ephemeral)),
        "nonce": nonce,
        "ephemeral_id": ephemeral_id,
        "service_data": advertisement(ephemeral_id),
        "message_1": m1,
        "message_2": m2,
        "transcript_input": bp.TRANSCRIPT_LABEL + transcript.to_bytes(),
        "transcript_hash": digest,
        "ecdh_shared_secret": shared,
        "key_reader_to_phone": to_phone,
        "key_phone_to_reader": to_reader,
        "reader_signature": reader_signature,
        "message_3": m3,
        "phone_signature": phone_plaintext[bp.KEY_ID_BYTES :],
        "message_4": m4,
        "proof": claim.proof,
    }


def documented_example() -> dict[str, bytes]:
    """The worked example as the document prints it (name: then indented hex lines)."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- worked-example:start -->", 1)[1].split("<!-- worked-example:end -->")[
        0
    ]
    values: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        if re.fullmatch(r"[a-z0-9_]+:", line):
            name = line[:-1]
            values[name] = ""
        elif line.startswith("  ") and name:
            values[name] += line.strip()
    return {key: bytes.fromhex(value) for key, value in values.items()}


def test_the_documented_worked_example_is_what_the_code_computes() -> None:
    assert documented_example() == worked_example()


def test_the_documented_signatures_verify_with_the_documented_keys() -> None:
    # Holds even if an implementation signs with random k instead of RFC 6979.
    doc = documented_example()
    digest = hashlib.sha256(doc["transcript_input"]).digest()
    assert digest == doc["transcript_hash"]
    reader = load_public_key(doc["reader_public_key"])
    phone = load_public_key(doc["phone_public_key"])
    assert bp.signature_verifies(reader, doc["reader_signature"], b"reader" + digest)
    assert bp.signature_verifies(phone, doc["phone_signature"], b"phone" + digest)
    assert not bp.signature_verifies(phone, doc["reader_signature"], b"reader" + digest)


def test_the_documented_derivations_hold() -> None:
    doc = documented_example()
    assert hashlib.sha256(doc["reader_public_key"]).digest()[:16] == doc["reader_id"]
    assert hashlib.sha256(doc["phone_public_key"]).digest()[:16] == doc["key_id"]
    reader_ephemeral = ec.derive_private_key(
        int.from_bytes(doc["reader_ephemeral_private_key"], "big"), ec.SECP256R1()
    )
    phone_ephemeral_public = load_public_key(doc["message_2"][2:])
    assert reader_ephemeral.exchange(ec.ECDH(), phone_ephemeral_public) == doc["ecdh_shared_secret"]
    keys = bp.session_keys(doc["ecdh_shared_secret"], doc["transcript_hash"])
    assert keys == (doc["key_reader_to_phone"], doc["key_phone_to_reader"])
    header3 = doc["message_3"][:2]
    assert (
        AESGCM(doc["key_reader_to_phone"]).encrypt(
            bytes(11) + b"\x03", doc["reader_signature"], header3
        )
        == doc["message_3"][2:]
    )
    header4 = doc["message_4"][:2]
    plaintext = doc["key_id"] + doc["phone_signature"]
    assert (
        AESGCM(doc["key_phone_to_reader"]).encrypt(bytes(11) + b"\x04", plaintext, header4)
        == doc["message_4"][2:]
    )


# --- Layouts: the document's tables are the code's offsets ----------------------------------------


def documented_layouts() -> dict[str, list[tuple[int, int, str]]]:
    """Each layout table of the document: heading -> [(offset, length, field)]."""
    tables: dict[str, list[tuple[int, int, str]]] = {}
    heading = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
            continue
        row = re.match(r"\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", line)
        if row and heading:
            tables.setdefault(heading, []).append(
                (int(row.group(1)), int(row.group(2)), row.group(3))
            )
    return tables


LAYOUTS: dict[str, tuple[int, list[tuple[int, int, str]]]] = {
    # heading prefix: (total length, [(offset, length, example field it slices)])
    "Advertisement": (
        ADVERT_BYTES,
        [(0, 1, ""), (1, 8, "ephemeral_id")],
    ),
    "Message 1": (
        bp.READER_HELLO_BYTES,
        [(0, 1, ""), (1, 1, ""), (2, 65, ""), (67, 16, "nonce"), (83, 16, "reader_id"),
         (99, 8, "ephemeral_id")],
    ),
    "Message 2": (bp.PHONE_HELLO_BYTES, [(0, 1, ""), (1, 1, ""), (2, 65, "")]),
    "Message 3": (bp.READER_PROOF_BYTES, [(0, 1, ""), (1, 1, ""), (2, 64, ""), (66, 16, "")]),
    "Message 4": (
        bp.PHONE_CREDENTIAL_BYTES,
        [(0, 1, ""), (1, 1, ""), (2, 80, ""), (82, 16, "")],
    ),
    "Proof": (
        bp.PROOF_BYTES,
        [(0, 1, ""), (1, 65, ""), (66, 16, "nonce"), (82, 16, "reader_id"), (98, 65, ""),
         (163, 8, "ephemeral_id"), (171, 16, "key_id"), (187, 64, "phone_signature")],
    ),
}  # fmt: skip


def table_for(prefix: str) -> list[tuple[int, int, str]]:
    matches = [rows for heading, rows in documented_layouts().items() if heading.startswith(prefix)]
    assert len(matches) == 1, f"one table under a heading starting {prefix!r}"
    return matches[0]


@pytest.mark.parametrize("prefix", list(LAYOUTS))
def test_the_documented_layout_is_the_codes(prefix: str) -> None:
    total, fields = LAYOUTS[prefix]
    rows = table_for(prefix)
    assert [(offset, length) for offset, length, _ in rows] == [(o, n) for o, n, _ in fields]
    last_offset, last_length, _ = rows[-1]
    assert last_offset + last_length == total  # contiguous to the documented total
    for (offset, length, _), (next_offset, _, _) in itertools.pairwise(rows):
        assert offset + length == next_offset


@pytest.mark.parametrize("prefix", list(LAYOUTS))
def test_the_example_messages_slice_as_documented(prefix: str) -> None:
    example = worked_example()
    message = {
        "Advertisement": example["service_data"],
        "Message 1": example["message_1"],
        "Message 2": example["message_2"],
        "Message 3": example["message_3"],
        "Message 4": example["message_4"],
        "Proof": example["proof"],
    }[prefix]
    total, fields = LAYOUTS[prefix]
    assert len(message) == total
    for offset, length, name in fields:
        if name:
            assert message[offset : offset + length] == example[name]


def test_message_headers_and_fixed_fields() -> None:
    example = worked_example()
    for number, kind in enumerate(MessageType, start=1):
        assert example[f"message_{number}"][:2] == bytes([0x01, kind])
    assert example["message_1"][2:67] == public_key_bytes(
        ec.derive_private_key(
            int.from_bytes(example["reader_ephemeral_private_key"], "big"), ec.SECP256R1()
        ).public_key()
    )
    assert example["service_data"] == b"\x01" + example["ephemeral_id"]
    assert bp.SERVICE_UUID.lower() == bp.SERVICE_UUID
    text = DOC.read_text(encoding="utf-8")
    for uuid in (bp.SERVICE_UUID, bp.READER_TO_PHONE_UUID, bp.PHONE_TO_READER_UUID):
        assert uuid in text


# --- Both sides ---------------------------------------------------------------------------------


def test_a_handshake_gives_the_reader_the_phones_key_id_and_a_proof_that_verifies() -> None:
    reader = ReaderHandshake(READER, NONCE, EPHEMERAL_ID)
    _, _, _, m4 = exchange(reader, phone_for())
    claim = reader.finish(m4)
    assert claim.key_id == PHONE_ID
    assert claim.value == PHONE_ID.hex().upper()
    proof = parse_proof(claim.proof)
    assert proof.transcript.nonce == NONCE
    assert proof.transcript.ephemeral_id == EPHEMERAL_ID
    assert proof.transcript.reader_id == READER.reader_id
    assert bp.signature_verifies(
        PHONE_KEY.public_key(), proof.signature, b"phone" + proof.transcript.digest()
    )


def test_every_transaction_uses_fresh_ephemeral_keys() -> None:
    first, second = recorded(), recorded()
    assert first[0][2:67] != second[0][2:67]
    assert first[1] != second[1]
    assert first[3] != second[3]


def test_a_recorded_message_4_does_not_decrypt_in_a_new_session() -> None:
    _, m2, _, m4 = recorded()
    reader = ReaderHandshake(READER, bytes(16), EPHEMERAL_ID)
    reader.hello()
    reader.prove(m2)  # the recording's phone key, replayed
    with pytest.raises(BleProtocolError, match="does not decrypt under this session's key"):
        reader.finish(m4)


def test_a_reader_the_phone_was_not_enrolled_with_learns_nothing() -> None:
    stranger = ReaderIdentity.generate()
    with pytest.raises(ReaderImpostor, match="not one this phone was enrolled with"):
        phone_for().on_hello(ReaderHandshake(stranger, NONCE, EPHEMERAL_ID).hello())


def test_a_reader_claiming_a_known_id_without_its_key_gets_no_key_id() -> None:
    impostor = ReaderIdentity.generate()
    object.__setattr__(impostor, "reader_id", READER.reader_id)  # claims the real reader's id
    reader = ReaderHandshake(impostor, NONCE, EPHEMERAL_ID)
    phone = phone_for()
    m2 = phone.on_hello(reader.hello())
    assert PHONE_ID not in m2
    with pytest.raises(ReaderImpostor, match="signature does not verify"):
        phone.on_proof(reader.prove(m2))


def test_a_phone_enrolled_with_another_key_for_the_reader_id_refuses() -> None:
    other = ReaderIdentity.generate()
    phone = PhoneHandshake(PHONE_ID, PHONE_KEY, {READER.reader_id: other.public_key}, EPHEMERAL_ID)
    reader = ReaderHandshake(READER, NONCE, EPHEMERAL_ID)
    with pytest.raises(ReaderImpostor):
        phone.on_proof(reader.prove(phone.on_hello(reader.hello())))


def test_a_man_in_the_middle_swapping_the_phones_ephemeral_key_is_caught() -> None:
    reader = ReaderHandshake(READER, NONCE, EPHEMERAL_ID)
    phone = phone_for()
    phone.on_hello(reader.hello())
    attacker = ec.generate_private_key(ec.SECP256R1())
    swapped = bytes([1, 2]) + public_key_bytes(attacker.public_key())
    with pytest.raises(ReaderImpostor, match="does not decrypt"):
        phone.on_proof(reader.prove(swapped))


def test_a_message_1_for_another_advertisement_is_refused() -> None:
    reader = ReaderHandshake(READER, NONCE, bytes(8))
    with pytest.raises(BleProtocolError, match="another ephemeral id"):
        phone_for().on_hello(reader.hello())


def test_each_step_runs_once() -> None:
    reader = ReaderHandshake(READER, NONCE, EPHEMERAL_ID)
    phone = phone_for()
    m1, m2, m3, m4 = exchange(reader, phone)
    with pytest.raises(BleProtocolError, match="already answered"):
        phone.on_hello(m1)
    with pytest.raises(BleProtocolError, match="only accepted once"):
        phone.on_proof(m3)
    with pytest.raises(BleProtocolError, match="already answered"):
        reader.prove(m2)
    reader.finish(m4)
    with pytest.raises(BleProtocolError, match="only accepted once"):
        reader.finish(m4)


def test_finish_before_prove_and_an_empty_reply_are_errors() -> None:
    with pytest.raises(BleProtocolError, match="after message 3"):
        ReaderHandshake(READER, NONCE, EPHEMERAL_ID).finish(bytes(98))
    reader = ReaderHandshake(READER, NONCE, EPHEMERAL_ID)
    reader.prove(phone_for().on_hello(reader.hello()))
    with pytest.raises(BleProtocolError, match="empty: the phone refused"):
        reader.finish(b"")


def test_a_failed_step_ends_the_handshake() -> None:
    reader = ReaderHandshake(READER, NONCE, EPHEMERAL_ID)
    phone = phone_for()
    m2 = phone.on_hello(reader.hello())
    with pytest.raises(BleProtocolError):
        reader.prove(m2[:-1])
    with pytest.raises(BleProtocolError, match="already answered"):
        reader.prove(m2)  # no second try under the same ephemeral key


def test_bad_arguments_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="nonce is 16 bytes"):
        ReaderHandshake(READER, bytes(15), EPHEMERAL_ID)
    with pytest.raises(ValueError, match="ephemeral id is 8 bytes"):
        ReaderHandshake(READER, NONCE, bytes(9))
    with pytest.raises(ValueError, match="key id is 16 bytes"):
        PhoneHandshake(bytes(15), PHONE_KEY, {}, EPHEMERAL_ID)
    with pytest.raises(ValueError, match="ephemeral id is 8 bytes"):
        advertisement(bytes(7))


# --- Malformed messages -------------------------------------------------------------------------


def sent_to_reader(step: int) -> Callable[[bytes], object]:
    """A reader ready for message ``step`` (2 or 4): the function that takes it."""
    reader = ReaderHandshake(READER, NONCE, EPHEMERAL_ID)
    if step == 2:
        return reader.prove
    phone = phone_for()
    reader.prove(phone.on_hello(reader.hello()))
    return reader.finish


def sent_to_phone(step: int) -> Callable[[bytes], object]:
    """A phone ready for message ``step`` (1 or 3): the function that takes it."""
    phone = phone_for()
    if step == 1:
        return phone.on_hello
    phone.on_hello(ReaderHandshake(READER, NONCE, EPHEMERAL_ID).hello())
    return phone.on_proof


def receiver(step: int) -> Callable[[bytes], object]:
    return sent_to_phone(step) if step in (1, 3) else sent_to_reader(step)


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_a_truncated_or_extended_message_names_expected_and_actual_lengths(step: int) -> None:
    message = recorded()[step - 1]
    want = len(message)
    kind = MessageType(step).label
    with pytest.raises(
        BleProtocolError, match=rf"{re.escape(kind)} must be {want} bytes, got {want - 1}"
    ):
        receiver(step)(message[:-1])
    with pytest.raises(BleProtocolError, match=rf"must be {want} bytes, got {want + 1}"):
        receiver(step)(message + b"\x00")


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_a_message_of_another_type_or_version_is_refused(step: int) -> None:
    messages = recorded()
    other = messages[step % 4]
    with pytest.raises(BleProtocolError, match=rf"expected message {step} .*, got message"):
        receiver(step)(other)
    message = messages[step - 1]
    with pytest.raises(BleProtocolError, match="version 0x02 is not supported; allowed: 0x01"):
        receiver(step)(b"\x02" + message[1:])
    with pytest.raises(BleProtocolError, match="unknown message type 0x09; allowed"):
        receiver(step)(message[:1] + b"\x09" + message[2:])
    with pytest.raises(BleProtocolError, match="a message starts with a version and a type"):
        receiver(step)(b"\x01")


@pytest.mark.parametrize(("step", "at"), [(1, 2), (1, 40), (2, 2), (2, 66)])
def test_a_public_key_off_the_curve_is_refused(step: int, at: int) -> None:
    message = bytearray(recorded()[step - 1])
    message[at] ^= 0x01
    with pytest.raises(BleProtocolError, match="public key"):
        receiver(step)(bytes(message))


@pytest.mark.parametrize(("step", "at"), [(3, 2), (3, 81), (4, 2), (4, 97)])
def test_a_flipped_bit_in_a_sealed_message_is_refused(step: int, at: int) -> None:
    reader = ReaderHandshake(READER, NONCE, EPHEMERAL_ID)
    phone = phone_for()
    m3 = reader.prove(phone.on_hello(reader.hello()))
    if step == 3:
        tampered = bytearray(m3)
        tampered[at] ^= 0x80
        with pytest.raises(ReaderImpostor, match="does not decrypt"):
            phone.on_proof(bytes(tampered))
    else:
        tampered = bytearray(phone.on_proof(m3))
        tampered[at] ^= 0x80
        with pytest.raises(BleProtocolError, match="does not decrypt"):
            reader.finish(bytes(tampered))


def test_advertisements() -> None:
    assert parse_advertisement(advertisement(EPHEMERAL_ID)) == EPHEMERAL_ID
    assert len(advertisement(EPHEMERAL_ID)) == ADVERT_BYTES == 9
    with pytest.raises(BleProtocolError, match=r"must be 9 bytes .* got 8"):
        parse_advertisement(advertisement(EPHEMERAL_ID)[:-1])
    with pytest.raises(BleProtocolError, match="version 0x07 is not supported"):
        parse_advertisement(b"\x07" + EPHEMERAL_ID)


def test_public_keys() -> None:
    point = public_key_bytes(PHONE_KEY.public_key())
    assert len(point) == 65
    assert point[0] == 0x04
    assert public_key_bytes(load_public_key(point)) == point
    compressed = PHONE_KEY.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    with pytest.raises(BleProtocolError, match="65-byte uncompressed P-256 point"):
        load_public_key(compressed)
    with pytest.raises(BleProtocolError, match="not a point on P-256"):
        load_public_key(b"\x04" + bytes(64))
    assert key_id_for(PHONE_KEY.public_key()) == hashlib.sha256(point).digest()[:16]


def test_signatures_out_of_range_do_not_verify() -> None:
    public = PHONE_KEY.public_key()
    good = bp.sign(PHONE_KEY, b"data")
    assert bp.signature_verifies(public, good, b"data")
    assert not bp.signature_verifies(public, good, b"other")
    assert not bp.signature_verifies(public, bytes(64), b"data")
    assert not bp.signature_verifies(public, b"\xff" * 64, b"data")
    assert not bp.signature_verifies(public, good[:-1], b"data")


# --- Arbitrary bytes raise nothing but BleProtocolError -------------------------------------------

HEADERS = [bytes([1, kind]) for kind in MessageType]
# Arbitrary bytes, and bytes with a valid header and the right length, so parsing goes deep.
frames = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda header, body: header + body,
        st.sampled_from(HEADERS),
        st.binary(max_size=120),
    ),
    st.builds(
        lambda kind, body: bytes([1, kind]) + (body * 200)[: bp.MESSAGE_BYTES[kind] - 2],
        st.sampled_from(list(MessageType)),
        st.binary(min_size=1, max_size=8),
    ),
    st.builds(
        lambda body: bytes([1, 2, 4]) + body,  # a 0x04 point prefix
        st.binary(min_size=64, max_size=64),
    ),
)


def only_protocol_errors(call: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(BleProtocolError):
        call(data)


@settings(max_examples=150, deadline=None)
@given(frames)
def test_arbitrary_service_data(data: bytes) -> None:
    only_protocol_errors(parse_advertisement, data)


@settings(max_examples=150, deadline=None)
@given(frames, st.sampled_from([1, 2, 3, 4]))
def test_arbitrary_bytes_at_every_step(data: bytes, step: int) -> None:
    only_protocol_errors(receiver(step), data)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_proofs_parse_or_raise_protocol_errors(data: bytes) -> None:
    only_protocol_errors(parse_proof, data)


# --- Reader identity --------------------------------------------------------------------------------


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_a_missing_identity_is_none_unless_asked_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ble_reader_key.pem"
    assert load_reader_identity(path) is None
    assert not path.exists()

    made = load_reader_identity(path, create=True)

    assert made is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_reader_identity(path, create=True)
    assert again is not None
    assert again.reader_id == made.reader_id  # kept, not replaced
    other = load_reader_identity(tmp_path / "other" / "key.pem", create=True)
    assert other is not None
    assert other.reader_id != made.reader_id  # unique per gateway
    assert made.reader_id == hashlib.sha256(made.public_key_bytes).digest()[:16]


def test_an_installed_key_is_read(tmp_path: Path) -> None:
    key = fixed_key("installed")
    identity = load_reader_identity(write(tmp_path / "key.pem", pem(key)))
    assert identity is not None
    assert identity.public_key_bytes == public_key_bytes(key.public_key())
    assert identity.reader_id == key_id_for(key.public_key())
    assert scalar_hex(key) not in repr(identity)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "key.pem", pem(fixed_key("x")), mode)
    with pytest.raises(ReaderIdentityError) as info:
        load_reader_identity(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert stat.filemode(stat.S_IFREG | mode) in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a key",
        pem(ec.generate_private_key(ec.SECP384R1())),
        b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 20_000 + b"\n-----END PRIVATE KEY-----\n",
    ],
)
def test_a_file_that_is_not_a_p256_key_is_refused(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "key.pem", data)
    with pytest.raises(ReaderIdentityError, match=r"not a reader key; expected .*P-256"):
        load_reader_identity(path)


def test_a_symlink_or_a_directory_is_refused(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere.pem", pem(fixed_key("x")))
    link = tmp_path / "key.pem"
    os.symlink(target, link)
    with pytest.raises(ReaderIdentityError, match="cannot read the reader key"):
        load_reader_identity(link)
    folder = tmp_path / "dir.pem"
    folder.mkdir(mode=0o700)
    with pytest.raises(ReaderIdentityError, match="must be a regular file"):
        load_reader_identity(folder)


def test_a_key_made_meanwhile_by_another_process_is_kept(tmp_path: Path) -> None:
    key = fixed_key("theirs")
    path = write(tmp_path / "key.pem", pem(key))
    _write_new(path)
    identity = load_reader_identity(path)
    assert identity is not None
    assert identity.reader_id == key_id_for(key.public_key())
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_an_identity_must_match_its_key() -> None:
    with pytest.raises(ValueError, match="does not belong to this key"):
        ReaderIdentity(fixed_key("a"), key_id_for(fixed_key("b").public_key()))
    with pytest.raises(ValueError, match="must be on P-256"):
        ReaderIdentity.from_private_key(ec.generate_private_key(ec.SECP384R1()))


def test_the_local_name_carries_the_ephemeral_id() -> None:
    eid = bytes.fromhex("0123456789abcdef")
    name = bp.local_name(eid)
    assert name == "LK1AERUKZ4JVPG66"
    assert len(name) == bp.LOCAL_NAME_CHARS
    assert bp.parse_local_name(name) == eid


@pytest.mark.parametrize(
    "name",
    [
        "LK1AERUKZ4JVPG6",  # one character short
        "LK1AERUKZ4JVPG666",  # one too many
        "LK2AERUKZ4JVPG66",  # another version
        "LK1aerukz4jvpg66",  # base32 is upper case
        "LK1AERUKZ4JVPG01",  # 0 and 1 are not base32
        "Pixel 9",
        "",
    ],
)
def test_a_local_name_that_is_not_ours_is_refused(name: str) -> None:
    with pytest.raises(bp.BleProtocolError):
        bp.parse_local_name(name)


@given(st.text(max_size=40))
def test_any_local_name_parses_or_is_refused_cleanly(name: str) -> None:
    try:
        eid = bp.parse_local_name(name)
    except bp.BleProtocolError:
        return
    assert len(eid) == bp.EPHEMERAL_ID_BYTES
    assert bp.local_name(eid) == name
