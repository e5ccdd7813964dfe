"""Tests for gateway.signing: the pinned key file, the signature value, and payloads of every form."""

from __future__ import annotations

import base64
import mmap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given
from hypothesis import strategies as st

from gateway.signing import (
    HTTP_HEADER,
    MQTT_USER_PROPERTY,
    KeyFileError,
    SignatureError,
    load_public_key,
    public_key_pem,
    signature_from_user_properties,
    signature_header,
    verify_signature,
)

#: RFC 8032 §7.1, TEST 1 and TEST 2: (secret key, public key, message, signature), in hex.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
        "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da08"
        "5ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]

EXPECTED = "expected 'ed25519=<base64 of the 64-byte signature>'"
PEM_EXPECTED = 'expected one PEM block "-----BEGIN PUBLIC KEY-----" (SubjectPublicKeyInfo)'
PAYLOAD = b'{"format":1,"id":"c-7f3a","kind":"sync"}'

# Two fixed keys: the cloud's and an impostor's (RFC 8032's, so failures are reproducible).
CLOUD = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032[0][0]))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032[1][0]))


def header_of(signature: bytes) -> str:
    return "ed25519=" + base64.b64encode(signature).decode()


def refusal(value: str | None, payload: bytes = PAYLOAD) -> str:
    """The message verify_signature gives for ``value`` over ``payload`` under the cloud key."""
    with pytest.raises(SignatureError) as info:
        verify_signature(CLOUD.public_key(), payload, value)
    return str(info.value)


# --- signing and verifying ------------------------------------------------------------------


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    value = signature_header(key, bytes.fromhex(message))
    assert value == header_of(bytes.fromhex(signature))
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
    verify_signature(public_key, bytes.fromhex(message), value)


def test_header_names() -> None:
    assert HTTP_HEADER == "X-Luckey-Signature"
    assert MQTT_USER_PROPERTY == "luckey-sig"


def test_value_is_ed25519_and_padded_base64_of_64_bytes() -> None:
    value = signature_header(CLOUD, PAYLOAD)
    algorithm, _, encoded = value.partition("=")
    assert algorithm == "ed25519"
    assert len(encoded) == 88
    assert encoded.endswith("==")
    assert len(base64.b64decode(encoded, validate=True)) == 64


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_round_trip_over_every_bytes_like(wrap: type[bytes | bytearray | memoryview]) -> None:
    payload = wrap(PAYLOAD)
    verify_signature(CLOUD.public_key(), payload, signature_header(CLOUD, payload))


def test_empty_payload_is_signed_like_any_other() -> None:
    verify_signature(CLOUD.public_key(), b"", signature_header(CLOUD, b""))
    assert "does not verify" in refusal(signature_header(CLOUD, b""), b"\x00")


def test_signature_over_other_bytes_is_refused() -> None:
    value = signature_header(CLOUD, PAYLOAD + b" ")
    assert refusal(value) == "the signature does not verify with the pinned cloud public key"


def test_signature_by_another_key_is_refused() -> None:
    assert "does not verify" in refusal(signature_header(OTHER, PAYLOAD))


@given(bit=st.integers(0, len(PAYLOAD) * 8 - 1))
def test_a_flipped_payload_bit_is_refused(bit: int) -> None:
    tampered = bytearray(PAYLOAD)
    tampered[bit // 8] ^= 1 << (bit % 8)
    assert "does not verify" in refusal(signature_header(CLOUD, PAYLOAD), bytes(tampered))


@given(bit=st.integers(0, 64 * 8 - 1))
def test_a_flipped_signature_bit_is_refused(bit: int) -> None:
    signature = bytearray(CLOUD.sign(PAYLOAD))
    signature[bit // 8] ^= 1 << (bit % 8)
    assert "does not verify" in refusal(header_of(bytes(signature)))


# --- payloads on disk -----------------------------------------------------------------------


@pytest.fixture
def mapped(tmp_path: Path) -> Iterator[tuple[bytes, mmap.mmap]]:
    """A 4 MiB snapshot-like payload and a read-only mmap of the file holding it."""
    payload = bytes(range(256)) * (16 * 1024)
    path = tmp_path / "snapshot.json"
    path.write_bytes(payload)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
        yield payload, view


def test_payload_verified_from_an_mmap(mapped: tuple[bytes, mmap.mmap]) -> None:
    payload, view = mapped
    verify_signature(CLOUD.public_key(), view, signature_header(CLOUD, payload))
    # Deterministic signatures: signing the mapping gives the same value as signing the bytes.
    assert signature_header(CLOUD, view) == signature_header(CLOUD, payload)


def test_mmap_payload_is_not_copied_to_the_heap(mapped: tuple[bytes, mmap.mmap]) -> None:
    payload, view = mapped
    value = signature_header(CLOUD, payload)
    tracemalloc.start()
    try:
        verify_signature(CLOUD.public_key(), view, value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(payload) // 100


def test_mmap_can_be_closed_after_a_refusal(tmp_path: Path) -> None:
    # A memoryview left alive would make mmap.close() raise BufferError.
    path = tmp_path / "delta.json"
    path.write_bytes(PAYLOAD)
    with path.open("rb") as file:
        view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        with pytest.raises(SignatureError, match="does not verify"):
            verify_signature(CLOUD.public_key(), view, signature_header(OTHER, PAYLOAD))
        view.close()


def test_a_tampered_file_is_refused(mapped: tuple[bytes, mmap.mmap]) -> None:
    payload, view = mapped
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(CLOUD.public_key(), view, signature_header(CLOUD, payload[:-1] + b"!"))


# --- malformed signature values -------------------------------------------------------------

GOOD = base64.b64encode(CLOUD.sign(PAYLOAD)).decode()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, f"the message is not signed (no signature); {EXPECTED}"),
        ("", f"the signature is empty; {EXPECTED}"),
        (
            "ed25519" + GOOD.rstrip("="),
            f"the signature 'ed25519Z4gB7'… (93 characters) has no '='; {EXPECTED}",
        ),
        ("rsa=" + GOOD, f"the signature algorithm 'rsa' is not allowed; {EXPECTED}"),
        ("Ed25519=" + GOOD, f"the signature algorithm 'Ed25519' is not allowed; {EXPECTED}"),
        ("=" + GOOD, f"the signature algorithm '' is not allowed; {EXPECTED}"),
        (
            "ed25519=" + GOOD.rstrip("="),
            "the signature 'Z4gB7exbKEcX'… (86 characters) is not standard base64 with padding; "
            + EXPECTED,
        ),
        (
            "ed25519=" + GOOD.replace("/", "_").replace("+", "-"),
            "the signature 'Z4gB7exbKEcX'… (88 characters) is not standard base64 with padding; "
            + EXPECTED,
        ),
        (
            "ed25519= " + GOOD,
            "the signature ' Z4gB7exbKEc'… (89 characters) is not standard base64 with padding; "
            + EXPECTED,
        ),
        ("ed25519=é", f"the signature 'é' is not standard base64 with padding; {EXPECTED}"),
        ("ed25519=", f"the signature decodes to 0 bytes, not 64; {EXPECTED}"),
        (
            header_of(CLOUD.sign(PAYLOAD)[:63]),
            f"the signature decodes to 63 bytes, not 64; {EXPECTED}",
        ),
        (
            header_of(CLOUD.sign(PAYLOAD) + b"\x00"),
            f"the signature decodes to 65 bytes, not 64; {EXPECTED}",
        ),
        (
            "ed25519=" + GOOD * 2,
            f"the signature 'ed25519=Z4gB'… (184 characters) is 184 characters long; {EXPECTED}",
        ),
    ],
)
def test_malformed_values_are_refused_with_their_own_message(
    value: str | None, message: str
) -> None:
    assert refusal(value) == message


def test_the_fixture_signature_is_what_the_table_quotes() -> None:
    # The table above quotes the first characters of GOOD: keep it honest.
    assert GOOD.startswith("Z4gB7exbKEcX")
    verify_signature(CLOUD.public_key(), PAYLOAD, "ed25519=" + GOOD)


def test_a_long_algorithm_is_quoted_only_by_its_prefix() -> None:
    message = refusal("x" * 100 + "=" + GOOD[:20])
    assert message == (
        f"the signature algorithm 'xxxxxxxxxxxx'… (100 characters) is not allowed; {EXPECTED}"
    )


@given(st.text(max_size=300))
def test_any_text_is_refused_only_with_a_signature_error_quoting_a_short_prefix(
    value: str,
) -> None:
    with pytest.raises(SignatureError) as info:
        verify_signature(CLOUD.public_key(), PAYLOAD, value)
    # The longest quote is 12 characters; a longer run of the value never appears.
    if len(value) > 20:
        assert value[:20] not in str(info.value)


# --- MQTT user properties -------------------------------------------------------------------


def test_signature_from_user_properties() -> None:
    value = signature_header(CLOUD, PAYLOAD)
    assert signature_from_user_properties([]) is None
    assert signature_from_user_properties([("trace", "1")]) is None
    assert signature_from_user_properties([("trace", "1"), ("luckey-sig", value)]) == value


def test_a_repeated_signature_property_is_refused() -> None:
    with pytest.raises(SignatureError) as info:
        signature_from_user_properties([("luckey-sig", "a"), ("luckey-sig", "b")])
    assert str(info.value) == (
        "the message carries 2 'luckey-sig' user properties; expected exactly one"
    )


# --- the pinned key file --------------------------------------------------------------------


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_load_public_key_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path / "cloud.pub", public_key_pem(CLOUD.public_key()))
    assert path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    for where in (path, str(path)):
        key = load_public_key(where)
        verify_signature(key, PAYLOAD, signature_header(CLOUD, PAYLOAD))


def test_load_public_key_tolerates_text_around_the_block(tmp_path: Path) -> None:
    pem = b"# the cloud's signing key, pinned at provisioning\n" + public_key_pem(
        CLOUD.public_key()
    )
    key = load_public_key(write(tmp_path / "cloud.pub", pem))
    assert public_key_pem(key) == public_key_pem(CLOUD.public_key())


def key_file_refusal(path: Path) -> str:
    with pytest.raises(KeyFileError) as info:
        load_public_key(path)
    return str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pub"
    assert key_file_refusal(path) == f"{path}: the cloud public key file does not exist"


def test_unreadable_key_file(tmp_path: Path) -> None:
    assert key_file_refusal(tmp_path).startswith(
        f"{tmp_path}: cannot read the cloud public key file: "
    )


def test_key_file_too_large(tmp_path: Path) -> None:
    path = write(tmp_path / "big.pub", b"A" * (16 * 1024 + 1))
    assert key_file_refusal(path) == (
        f"{path}: larger than 16384 bytes; expected one PEM public key"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPaoiMlrwIaaPcHURo=\n",
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
    ids=["empty", "bare-base64", "der"],
)
def test_key_file_not_pem(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "cloud.pub", data)
    assert key_file_refusal(path) == f"{path}: not a PEM file; {PEM_EXPECTED}"


def test_key_file_with_a_private_key(tmp_path: Path) -> None:
    pem = CLOUD.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = write(tmp_path / "cloud.pub", pem)
    message = key_file_refusal(path)
    assert message == (
        f"{path}: holds a private key (PRIVATE KEY); the gateway pins only the cloud's public "
        f"key, and the private key must not leave the cloud; {PEM_EXPECTED}"
    )


def test_key_file_with_a_certificate(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cloud.pub", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    assert key_file_refusal(path) == f"{path}: holds a PEM 'CERTIFICATE' block; {PEM_EXPECTED}"


def test_key_file_with_two_keys(tmp_path: Path) -> None:
    pem = public_key_pem(CLOUD.public_key()) + public_key_pem(OTHER.public_key())
    path = write(tmp_path / "cloud.pub", pem)
    assert key_file_refusal(path) == f"{path}: holds 2 PEM blocks; {PEM_EXPECTED}"


def test_key_file_with_a_corrupt_block(tmp_path: Path) -> None:
    pem = b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"
    path = write(tmp_path / "cloud.pub", pem)
    message = key_file_refusal(path)
    assert message.startswith(f"{path}: the PUBLIC KEY block does not decode (")
    assert message.endswith("); expected an Ed25519 public key")


@pytest.mark.parametrize(
    ("public_key", "name"),
    [
        (rsa.generate_private_key(65537, 2048).public_key(), "RSA-2048"),
        (ec.generate_private_key(ec.SECP256R1()).public_key(), "EC secp256r1"),
        (ed448.Ed448PrivateKey.generate().public_key(), "Ed448"),
    ],
    ids=["rsa", "p256", "ed448"],
)
def test_key_file_with_another_algorithm(
    tmp_path: Path,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed448.Ed448PublicKey,
    name: str,
) -> None:
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = write(tmp_path / "cloud.pub", pem)
    assert key_file_refusal(path) == (
        f"{path}: the key is {name}; only an Ed25519 public key is allowed"
    )
