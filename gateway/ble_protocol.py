"""The BLE phone credential protocol, both sides, as pure functions over bytes (no Bluetooth I/O).

The phone advertises the Luckey service with a rotating ephemeral identifier; the gateway (a GATT
client) connects and runs a four-message mutual authentication, modelled on CSA Aliro 1.0:

1. reader hello: reader ephemeral key, transaction nonce, reader id, the advert's ephemeral id;
2. phone hello: phone ephemeral key;
3. reader proof: the reader's signature over the transcript, encrypted to the phone;
4. phone credential: the phone's key id and signature over the transcript, encrypted to the reader.

The phone reveals who it is (message 4) only to a reader whose signature verifies against a reader
key it received at enrolment. The byte layouts are specified in docs/ble-credential-protocol.md;
the tests check the document's tables and worked example against this code.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.credentials import phone_key_id

if TYPE_CHECKING:
    from gateway.reader_identity import ReaderIdentity

# --- GATT ---------------------------------------------------------------------------------------
# A random (version 4) UUID, chosen once; the characteristics share its base, differing in the
# first 32 bits, as is customary for vendor services.
SERVICE_UUID: Final = "2b92d7a1-7768-41c9-a11c-bba4ee78d9b0"
READER_TO_PHONE_UUID: Final = "2b92d7a2-7768-41c9-a11c-bba4ee78d9b0"  # write with response
PHONE_TO_READER_UUID: Final = "2b92d7a3-7768-41c9-a11c-bba4ee78d9b0"  # read

# --- Sizes --------------------------------------------------------------------------------------
PROTOCOL_VERSION: Final = 0x01
EPHEMERAL_ID_BYTES: Final = 8
ADVERT_BYTES: Final = 1 + EPHEMERAL_ID_BYTES  # version ‖ ephemeral id
NONCE_BYTES: Final = 16
KEY_ID_BYTES: Final = 16  # credential key id and reader id alike: SHA-256(SEC1 point)[:16]
POINT_BYTES: Final = 65  # SEC1 v2 §2.3.3 uncompressed P-256 point: 0x04 ‖ X ‖ Y
SIGNATURE_BYTES: Final = 64  # r ‖ s, 32 bytes each, big-endian
TAG_BYTES: Final = 16  # AES-GCM tag
HEADER_BYTES: Final = 2  # version ‖ message type

# --- Cryptographic labels (domain separation; ASCII, no terminator) ------------------------------
TRANSCRIPT_LABEL: Final = b"luckey-ble-v1 transcript"
READER_SIGNATURE_LABEL: Final = b"reader"
PHONE_SIGNATURE_LABEL: Final = b"phone"
SESSION_KEYS_LABEL: Final = b"luckey-ble-v1 session keys"
SESSION_KEY_BYTES: Final = 16  # AES-128-GCM (NIST SP 800-38D), keys from HKDF (RFC 5869)

# --- Behaviour the gateway promises (the driver enforces it; the phone may rely on it) -----------
EXCHANGE_TIMEOUT_S: Final = 2.5  # connect to message 4, in total
#: Reference RSSI thresholds (smoothed, dBm) for a door's proximity setting.


class MessageType(enum.IntEnum):
    """The second byte of every message."""

    READER_HELLO = 0x01
    PHONE_HELLO = 0x02
    READER_PROOF = 0x03
    PHONE_CREDENTIAL = 0x04

    @property
    def label(self) -> str:
        """How messages and errors name this message."""
        return f"message {self.value} ({self.name.lower().replace('_', ' ')})"


# Exact message lengths (the document's tables give the offsets).
READER_HELLO_BYTES: Final = (
    HEADER_BYTES + POINT_BYTES + NONCE_BYTES + KEY_ID_BYTES + EPHEMERAL_ID_BYTES
)
PHONE_HELLO_BYTES: Final = HEADER_BYTES + POINT_BYTES
READER_PROOF_BYTES: Final = HEADER_BYTES + SIGNATURE_BYTES + TAG_BYTES
PHONE_CREDENTIAL_BYTES: Final = HEADER_BYTES + KEY_ID_BYTES + SIGNATURE_BYTES + TAG_BYTES
MESSAGE_BYTES: Final[Mapping[MessageType, int]] = {
    MessageType.READER_HELLO: READER_HELLO_BYTES,
    MessageType.PHONE_HELLO: PHONE_HELLO_BYTES,
    MessageType.READER_PROOF: READER_PROOF_BYTES,
    MessageType.PHONE_CREDENTIAL: PHONE_CREDENTIAL_BYTES,
}

# AES-GCM: each direction has its own key, derived afresh for every transaction from fresh
# ephemeral keys and nonce, and each key encrypts exactly one message (3 or 4). A fixed nonce
# per direction is therefore never reused under the same key; it is the message type only so
# that the two directions differ even if keys were ever confused.
READER_TO_PHONE_NONCE: Final = bytes(11) + bytes([MessageType.READER_PROOF])
PHONE_TO_READER_NONCE: Final = bytes(11) + bytes([MessageType.PHONE_CREDENTIAL])

# The proof the reader hands to the verifier: everything needed to recompute the transcript hash,
# then the phone's key id and signature. Its first byte is the protocol version.
PROOF_BYTES: Final = (
    (1 + POINT_BYTES + NONCE_BYTES + KEY_ID_BYTES + POINT_BYTES + EPHEMERAL_ID_BYTES)
    + KEY_ID_BYTES
    + SIGNATURE_BYTES
)

_CURVE = ec.SECP256R1()
# RFC 6979 deterministic ECDSA: no dependence on the RNG at signing time, and a reproducible
# worked example. A peer may sign with random k instead; verification is the same.
_ECDSA_SIGN = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_ECDSA_VERIFY = ec.ECDSA(hashes.SHA256())
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class BleProtocolError(ValueError):
    """A malformed or unexpected message; the message says what was wrong and what is allowed."""


class ReaderImpostor(BleProtocolError):
    """The reader could not prove it is a reader this phone was enrolled with."""


# --- Keys ---------------------------------------------------------------------------------------


def public_key_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The key as a SEC1 uncompressed point (65 bytes)."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def load_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from a SEC1 uncompressed point; BleProtocolError otherwise."""
    if len(data) != POINT_BYTES or data[0] != 0x04:
        raise BleProtocolError(
            f"a public key must be a {POINT_BYTES}-byte uncompressed P-256 point starting with "
            f"0x04; got {len(data)} bytes" + (f" starting with 0x{data[0]:02x}" if data else "")
        )
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, data)
    except ValueError:
        raise BleProtocolError("the public key is not a point on P-256") from None


def key_id_for(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 16-byte identifier of a key: the first 16 bytes of SHA-256 over its SEC1 point."""
    return phone_key_id(public_key_bytes(public_key))


def sign(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 over ``data``, as 64 bytes r ‖ s."""
    r, s = decode_dss_signature(private_key.sign(data, _ECDSA_SIGN))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def signature_verifies(
    public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes
) -> bool:
    """True if ``signature`` (r ‖ s) is ``public_key``'s ECDSA P-256 / SHA-256 over ``data``."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
        return False
    try:
        public_key.verify(encode_dss_signature(r, s), data, _ECDSA_VERIFY)
    except InvalidSignature:
        return False
    return True


# --- Advertisement ------------------------------------------------------------------------------


def advertisement(ephemeral_id: bytes) -> bytes:
    """The service data a phone advertises under SERVICE_UUID: version ‖ ephemeral id."""
    if len(ephemeral_id) != EPHEMERAL_ID_BYTES:
        raise ValueError(f"an ephemeral id is {EPHEMERAL_ID_BYTES} bytes, not {len(ephemeral_id)}")
    return bytes([PROTOCOL_VERSION]) + ephemeral_id


def parse_advertisement(service_data: bytes) -> bytes:
    """The ephemeral id in a phone's service data; BleProtocolError if it is not ours."""
    if len(service_data) != ADVERT_BYTES:
        raise BleProtocolError(
            f"service data must be {ADVERT_BYTES} bytes (version and {EPHEMERAL_ID_BYTES}-byte "
            f"ephemeral id), got {len(service_data)}"
        )
    _check_version(service_data[0], "service data")
    return bytes(service_data[1:])


#: The local-name carrier of the ephemeral id, for phones that cannot advertise service data
#: (iOS): this prefix (its digit is the version), then the id in RFC 4648 base32 without padding.
LOCAL_NAME_PREFIX: Final = "LK1"
LOCAL_NAME_CHARS: Final = len(LOCAL_NAME_PREFIX) + 13  # 8 bytes are 13 base32 characters


def local_name(ephemeral_id: bytes) -> str:
    """The local name a phone advertises to carry its ephemeral id (iOS: the only way)."""
    if len(ephemeral_id) != EPHEMERAL_ID_BYTES:
        raise ValueError(f"an ephemeral id is {EPHEMERAL_ID_BYTES} bytes, not {len(ephemeral_id)}")
    return LOCAL_NAME_PREFIX + base64.b32encode(ephemeral_id).decode("ascii").rstrip("=")


def parse_local_name(name: str) -> bytes:
    """The ephemeral id in a phone's local name; BleProtocolError if it is not one of ours."""
    if len(name) != LOCAL_NAME_CHARS or not name.startswith(LOCAL_NAME_PREFIX):
        raise BleProtocolError(
            f"local name {name[:24]!r} is not {LOCAL_NAME_PREFIX!r} and 13 base32 characters"
        )
    try:
        return base64.b32decode(name[len(LOCAL_NAME_PREFIX) :] + "===", casefold=False)
    except ValueError:  # binascii.Error: a character outside A-Z 2-7
        raise BleProtocolError(f"local name {name!r} is not base32 after its prefix") from None


# --- Transcript and session keys ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transcript:
    """The public inputs both sides bind every signature and key to."""

    version: int
    reader_ephemeral: bytes  # SEC1 point
    nonce: bytes
    reader_id: bytes
    phone_ephemeral: bytes  # SEC1 point
    ephemeral_id: bytes

    def to_bytes(self) -> bytes:
        """The fields concatenated in wire order (all fixed-length, so unambiguous)."""
        return (
            bytes([self.version])
            + self.reader_ephemeral
            + self.nonce
            + self.reader_id
            + self.phone_ephemeral
            + self.ephemeral_id
        )

    def digest(self) -> bytes:
        """SHA-256(TRANSCRIPT_LABEL ‖ to_bytes()): what is signed and what the keys derive from."""
        return hashlib.sha256(TRANSCRIPT_LABEL + self.to_bytes()).digest()


def session_keys(shared_secret: bytes, transcript_hash: bytes) -> tuple[bytes, bytes]:
    """(reader→phone key, phone→reader key) from the ECDH secret, bound to the transcript."""
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * SESSION_KEY_BYTES,
        salt=transcript_hash,
        info=SESSION_KEYS_LABEL + transcript_hash,
    ).derive(shared_secret)
    return okm[:SESSION_KEY_BYTES], okm[SESSION_KEY_BYTES:]


def _ecdh(private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    return private_key.exchange(ec.ECDH(), peer)


# --- Message framing ----------------------------------------------------------------------------


def _check_version(version: int, what: str) -> None:
    if version != PROTOCOL_VERSION:
        raise BleProtocolError(
            f"{what}: protocol version 0x{version:02x} is not supported; "
            f"allowed: 0x{PROTOCOL_VERSION:02x}"
        )


def _header(kind: MessageType) -> bytes:
    return bytes([PROTOCOL_VERSION, kind])


def message_type(message: bytes) -> MessageType:
    """The type of a message after checking its version; BleProtocolError if unknown."""
    if len(message) < HEADER_BYTES:
        raise BleProtocolError(
            f"a message starts with a version and a type byte; got {len(message)} bytes"
        )
    _check_version(message[0], "message")
    try:
        return MessageType(message[1])
    except ValueError:
        allowed = ", ".join(f"0x{t:02x}" for t in MessageType)
        raise BleProtocolError(
            f"unknown message type 0x{message[1]:02x}; allowed: {allowed}"
        ) from None


def _body(message: bytes, expected: MessageType) -> bytes:
    """The body of ``message`` after checking version, type and exact length."""
    got = message_type(message)
    if got is not expected:
        raise BleProtocolError(f"expected {expected.label}, got {got.label}")
    want = MESSAGE_BYTES[expected]
    if len(message) != want:
        raise BleProtocolError(f"{expected.label} must be {want} bytes, got {len(message)}")
    return bytes(message[HEADER_BYTES:])


@dataclass(frozen=True, slots=True)
class ReaderHello:
    """Message 1, gateway → phone."""

    reader_ephemeral: bytes
    nonce: bytes
    reader_id: bytes
    ephemeral_id: bytes

    def to_bytes(self) -> bytes:
        """The wire form."""
        return (
            _header(MessageType.READER_HELLO)
            + self.reader_ephemeral
            + self.nonce
            + self.reader_id
            + self.ephemeral_id
        )

    @classmethod
    def from_bytes(cls, message: bytes) -> ReaderHello:
        """Parse message 1 (lengths only; the point is checked where it is used)."""
        body = _body(message, MessageType.READER_HELLO)
        nonce_at = POINT_BYTES
        reader_id_at = nonce_at + NONCE_BYTES
        ephemeral_id_at = reader_id_at + KEY_ID_BYTES
        return cls(
            body[:nonce_at],
            body[nonce_at:reader_id_at],
            body[reader_id_at:ephemeral_id_at],
            body[ephemeral_id_at:],
        )


def _seal(key: bytes, nonce: bytes, kind: MessageType, plaintext: bytes) -> bytes:
    header = _header(kind)
    # The header is the associated data: a ciphertext cannot be replayed as another message type.
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def _open(key: bytes, nonce: bytes, kind: MessageType, message: bytes) -> bytes | None:
    body = _body(message, kind)
    try:
        return AESGCM(key).decrypt(nonce, body, _header(kind))
    except InvalidTag:
        return None


# --- Gateway side -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhoneClaim:
    """What a phone claimed in message 4: its key id, and the proof the verifier checks."""

    key_id: bytes
    proof: bytes  # see parse_proof: transcript inputs ‖ key id ‖ signature

    @property
    def value(self) -> str:
        """The key id as a credential value (upper-case hex)."""
        return self.key_id.hex().upper()


class _Step(enum.Enum):
    HELLO = enum.auto()
    PROVE = enum.auto()
    FINISH = enum.auto()
    DONE = enum.auto()


class ReaderHandshake:
    """The gateway's side of one connection: hello(), prove(message 2), finish(message 4)."""

    def __init__(
        self,
        identity: ReaderIdentity,
        nonce: bytes,
        ephemeral_id: bytes,
        *,
        ephemeral_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"the transaction nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
        if len(ephemeral_id) != EPHEMERAL_ID_BYTES:
            raise ValueError(
                f"an ephemeral id is {EPHEMERAL_ID_BYTES} bytes, not {len(ephemeral_id)}"
            )
        self._identity = identity
        # A fresh key per transaction unless a test pins one (the worked example).
        self._ephemeral = (
            ec.generate_private_key(_CURVE) if ephemeral_key is None else ephemeral_key
        )
        self._hello = ReaderHello(
            public_key_bytes(self._ephemeral.public_key()),
            bytes(nonce),
            identity.reader_id,
            bytes(ephemeral_id),
        )
        self._step = _Step.PROVE
        self._transcript: Transcript | None = None
        self._phone_key: bytes | None = None  # phone → reader session key

    def hello(self) -> bytes:
        """Message 1: reader ephemeral key, nonce, reader id, the advert's ephemeral id."""
        return self._hello.to_bytes()

    def prove(self, phone_hello: bytes) -> bytes:
        """Message 3 (the reader's encrypted signature) in answer to message 2."""
        if self._step is not _Step.PROVE:
            raise BleProtocolError("message 2 was already answered on this connection")
        self._step = _Step.DONE  # one attempt: a failure ends the handshake
        if not phone_hello:
            raise BleProtocolError(
                f"{MessageType.PHONE_HELLO.label} is empty: the phone refused message 1 "
                "(a reader it was not enrolled with, or a stale ephemeral id)"
            )
        body = _body(phone_hello, MessageType.PHONE_HELLO)
        phone_ephemeral = load_public_key(body)
        transcript = Transcript(
            PROTOCOL_VERSION,
            self._hello.reader_ephemeral,
            self._hello.nonce,
            self._hello.reader_id,
            body,
            self._hello.ephemeral_id,
        )
        digest = transcript.digest()
        to_phone, to_reader = session_keys(_ecdh(self._ephemeral, phone_ephemeral), digest)
        signature = sign(self._identity.private_key, READER_SIGNATURE_LABEL + digest)
        self._transcript = transcript
        self._phone_key = to_reader
        self._step = _Step.FINISH
        return _seal(to_phone, READER_TO_PHONE_NONCE, MessageType.READER_PROOF, signature)

    def finish(self, phone_credential: bytes) -> PhoneClaim:
        """The phone's claim from message 4; BleProtocolError if it is not for this session."""
        if self._step is not _Step.FINISH or self._transcript is None or self._phone_key is None:
            raise BleProtocolError("message 4 is only accepted once, after message 3")
        self._step = _Step.DONE
        if not phone_credential:
            raise BleProtocolError(
                f"{MessageType.PHONE_CREDENTIAL.label} is empty: the phone refused this reader"
            )
        plaintext = _open(
            self._phone_key, PHONE_TO_READER_NONCE, MessageType.PHONE_CREDENTIAL, phone_credential
        )
        if plaintext is None:
            raise BleProtocolError(
                f"{MessageType.PHONE_CREDENTIAL.label} does not decrypt under this session's key"
            )
        key_id, signature = plaintext[:KEY_ID_BYTES], plaintext[KEY_ID_BYTES:]
        return PhoneClaim(key_id, self._transcript.to_bytes() + key_id + signature)


# --- The proof, as the verifier reads it ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proof:
    """A parsed PhoneClaim.proof."""

    transcript: Transcript
    key_id: bytes
    signature: bytes


def parse_proof(proof: bytes) -> Proof:
    """Split a proof into transcript, key id and signature; BleProtocolError if malformed."""
    if len(proof) != PROOF_BYTES:
        raise BleProtocolError(f"a BLE phone proof must be {PROOF_BYTES} bytes, got {len(proof)}")
    _check_version(proof[0], "proof")
    at = 1
    fields: list[bytes] = []
    for size in (
        POINT_BYTES,
        NONCE_BYTES,
        KEY_ID_BYTES,
        POINT_BYTES,
        EPHEMERAL_ID_BYTES,
        KEY_ID_BYTES,
        SIGNATURE_BYTES,
    ):
        fields.append(bytes(proof[at : at + size]))
        at += size
    reader_ephemeral, nonce, reader_id, phone_ephemeral, ephemeral_id, key_id, signature = fields
    transcript = Transcript(
        proof[0], reader_ephemeral, nonce, reader_id, phone_ephemeral, ephemeral_id
    )
    return Proof(transcript, key_id, signature)


# --- Phone side ---------------------------------------------------------------------------------


class PhoneHandshake:
    """The phone's side of one connection: on_hello(message 1), then on_proof(message 3)."""

    def __init__(
        self,
        key_id: bytes,
        private_key: ec.EllipticCurvePrivateKey,
        reader_keys: Mapping[bytes, ec.EllipticCurvePublicKey],
        ephemeral_id: bytes,
        *,
        ephemeral_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        if len(key_id) != KEY_ID_BYTES:
            raise ValueError(f"a key id is {KEY_ID_BYTES} bytes, not {len(key_id)}")
        self._key_id = bytes(key_id)
        self._private_key = private_key
        self._reader_keys = reader_keys
        self._ephemeral_id = bytes(ephemeral_id)
        self._ephemeral = (
            ec.generate_private_key(_CURVE) if ephemeral_key is None else ephemeral_key
        )
        self._step = _Step.HELLO
        self._transcript: Transcript | None = None
        self._reader_key: ec.EllipticCurvePublicKey | None = None
        self._keys: tuple[bytes, bytes] | None = None

    def on_hello(self, message: bytes) -> bytes:
        """Message 2 (the phone's ephemeral key) in answer to message 1."""
        if self._step is not _Step.HELLO:
            raise BleProtocolError("message 1 was already answered; start a new handshake")
        self._step = _Step.DONE
        hello = ReaderHello.from_bytes(message)
        if not hmac.compare_digest(hello.ephemeral_id, self._ephemeral_id):
            raise BleProtocolError(
                "message 1 is for another ephemeral id than the one advertised "
                "(the advertisement rotated); scan again"
            )
        reader_key = self._reader_keys.get(hello.reader_id)
        if reader_key is None:
            raise ReaderImpostor(
                f"reader id …{hello.reader_id.hex()[-4:]} is not one this phone was enrolled with"
            )
        reader_ephemeral = load_public_key(hello.reader_ephemeral)
        phone_ephemeral = public_key_bytes(self._ephemeral.public_key())
        transcript = Transcript(
            PROTOCOL_VERSION,
            hello.reader_ephemeral,
            hello.nonce,
            hello.reader_id,
            phone_ephemeral,
            self._ephemeral_id,
        )
        self._keys = session_keys(_ecdh(self._ephemeral, reader_ephemeral), transcript.digest())
        self._transcript = transcript
        self._reader_key = reader_key
        self._step = _Step.PROVE
        return _header(MessageType.PHONE_HELLO) + phone_ephemeral

    def on_proof(self, message: bytes) -> bytes:
        """Message 4 (key id and signature, encrypted) once the reader's signature verifies."""
        if (
            self._step is not _Step.PROVE
            or self._transcript is None
            or self._reader_key is None
            or self._keys is None
        ):
            raise BleProtocolError("message 3 is only accepted once, after message 1")
        self._step = _Step.DONE  # one attempt: each session key seals one message only
        to_phone, to_reader = self._keys
        signature = _open(to_phone, READER_TO_PHONE_NONCE, MessageType.READER_PROOF, message)
        if signature is None:
            raise ReaderImpostor(
                f"{MessageType.READER_PROOF.label} does not decrypt: the reader does not hold "
                "this session's key"
            )
        digest = self._transcript.digest()
        if not signature_verifies(self._reader_key, signature, READER_SIGNATURE_LABEL + digest):
            raise ReaderImpostor(
                "the reader's signature does not verify against the enrolled reader key"
            )
        own = sign(self._private_key, PHONE_SIGNATURE_LABEL + digest)
        return _seal(
            to_reader, PHONE_TO_READER_NONCE, MessageType.PHONE_CREDENTIAL, self._key_id + own
        )
