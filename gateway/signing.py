"""Ed25519 signatures on what the cloud sends: the pinned public key and the detached signature.

Everything the gateway acts on from the cloud (snapshots over HTTPS, deltas and commands over
MQTT) is signed with Ed25519 over the exact payload bytes, and the signature travels beside the
payload: the HTTP header ``X-Luckey-Signature`` or the MQTT 5 user property ``luckey-sig``, both
``ed25519=<standard base64, padded, of the 64-byte signature>``. It is checked before anything
is parsed (CREDENTIALS.md, "Cloud data").
"""

from __future__ import annotations

import base64
import mmap
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

#: Where the signature travels: the HTTPS header, and the MQTT 5 user property.
HTTP_HEADER = "X-Luckey-Signature"
MQTT_USER_PROPERTY = "luckey-sig"

ALGORITHM = "ed25519"
SIGNATURE_BYTES = 64  # RFC 8032 §5.1.6: R (32 bytes) ‖ S (32 bytes)

#: ``ed25519=`` and 88 base64 characters; anything much longer is not worth parsing.
_VALUE_MAX_CHARS = 128

#: How much of a received value an error message may quote.
_ECHO_CHARS = 12

#: A pinned key file is a few hundred bytes; refuse to read a large file by mistake.
_KEY_FILE_MAX_BYTES = 16 * 1024

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")

#: What ``verify_signature`` reads: any contiguous bytes-like object, an mmap'ed file included.
Payload: TypeAlias = bytes | bytearray | memoryview | mmap.mmap


class SignatureError(ValueError):
    """A payload's signature is missing, malformed, or does not verify with the pinned key."""


class KeyFileError(ValueError):
    """The pinned public key file is missing, unreadable or not an Ed25519 public key in PEM."""


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Read the cloud's pinned Ed25519 public key (one PEM "PUBLIC KEY" block) from ``path``."""
    path = Path(path)
    data = _read_key_file(path)
    _check_pem_label(path, data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise KeyFileError(
            f"{path}: the PUBLIC KEY block does not decode ({err}); expected an Ed25519 public key"
        ) from err
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            f"{path}: the key is {_key_type(key)}; only an Ed25519 public key is allowed"
        )
    return key


def _read_key_file(path: Path) -> bytes:
    """The file's bytes; KeyFileError if it cannot be read or is too large to be a key."""
    try:
        with path.open("rb") as file:
            data = file.read(_KEY_FILE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: the cloud public key file does not exist") from None
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read the cloud public key file: {err}") from err
    if len(data) > _KEY_FILE_MAX_BYTES:
        raise KeyFileError(
            f"{path}: larger than {_KEY_FILE_MAX_BYTES} bytes; expected one PEM public key"
        )
    return data


def _check_pem_label(path: Path, data: bytes) -> None:
    """KeyFileError unless ``data`` holds exactly one PEM block, labelled PUBLIC KEY."""
    labels = [m.group(1).decode("ascii") for m in _PEM_LABEL.finditer(data)]
    expected = 'expected one PEM block "-----BEGIN PUBLIC KEY-----" (SubjectPublicKeyInfo)'
    if not labels:
        raise KeyFileError(f"{path}: not a PEM file; {expected}")
    if len(labels) > 1:
        # A pin is one key: with several blocks, which one is trusted would be a guess.
        raise KeyFileError(f"{path}: holds {len(labels)} PEM blocks; {expected}")
    label = labels[0]
    if "PRIVATE" in label:
        raise KeyFileError(
            f"{path}: holds a private key ({label}); the gateway pins only the cloud's public "
            f"key, and the private key must not leave the cloud; {expected}"
        )
    if label != "PUBLIC KEY":
        raise KeyFileError(f"{path}: holds a PEM {label!r} block; {expected}")


def _key_type(key: object) -> str:
    """A public key's algorithm as an operator would name it, e.g. ``RSA-2048`` or ``Ed448``."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.removesuffix("PublicKey")  # Ed448, X25519, X448, DSA


def verify_signature(public_key: Ed25519PublicKey, payload: Payload, value: str | None) -> None:
    """Return if ``value`` (a signature header) signs ``payload`` under ``public_key``; else raise.

    Raises SignatureError saying what is wrong; it quotes at most a short prefix of ``value``.
    ``payload`` is read in place (an mmap is not copied to the heap).
    """
    signature = _parse_value(value)
    # memoryview: zero-copy for every accepted type; released at once so an mmap can be closed.
    with memoryview(payload) as view:
        try:
            public_key.verify(signature, view)
        except InvalidSignature:
            raise SignatureError(
                "the signature does not verify with the pinned cloud public key"
            ) from None


def _parse_value(value: str | None) -> bytes:
    """The 64 signature bytes of ``ed25519=<base64>``; SignatureError naming what is wrong."""
    expected = f"expected '{ALGORITHM}=<base64 of the {SIGNATURE_BYTES}-byte signature>'"
    if value is None:
        raise SignatureError(f"the message is not signed (no signature); {expected}")
    if not value:
        raise SignatureError(f"the signature is empty; {expected}")
    if len(value) > _VALUE_MAX_CHARS:
        raise SignatureError(
            f"the signature {_echo(value)} is {len(value)} characters long; {expected}"
        )
    algorithm, equals, encoded = value.partition("=")
    if not equals:
        raise SignatureError(f"the signature {_echo(value)} has no '='; {expected}")
    if algorithm != ALGORITHM:
        raise SignatureError(
            f"the signature algorithm {_echo(algorithm)} is not allowed; {expected}"
        )
    try:
        # validate: refuse characters outside the standard alphabet (urlsafe, spaces) and
        # missing padding, rather than silently skipping them.
        signature = base64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        raise SignatureError(
            f"the signature {_echo(encoded)} is not standard base64 with padding; {expected}"
        ) from None
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(
            f"the signature decodes to {len(signature)} bytes, not {SIGNATURE_BYTES}; {expected}"
        )
    return signature


def _echo(text: str) -> str:
    """``text`` quoted for an error message, cut to a short prefix."""
    if len(text) <= _ECHO_CHARS:
        return repr(text)
    return f"{text[:_ECHO_CHARS]!r}… ({len(text)} characters)"


def signature_from_user_properties(properties: Iterable[tuple[str, str]]) -> str | None:
    """The ``luckey-sig`` value among MQTT 5 user properties; None if absent.

    SignatureError if it appears more than once: MQTT allows repeated keys, and which one
    was meant would be a guess.
    """
    values = [value for key, value in properties if key == MQTT_USER_PROPERTY]
    if len(values) > 1:
        raise SignatureError(
            f"the message carries {len(values)} {MQTT_USER_PROPERTY!r} user properties; "
            "expected exactly one"
        )
    return values[0] if values else None


def signature_header(private_key: Ed25519PrivateKey, payload: Payload) -> str:
    """The signature value (``ed25519=<base64>``) of ``payload``: the cloud's side, for tests and tools."""
    with memoryview(payload) as view:
        signature = private_key.sign(view)
    return f"{ALGORITHM}={base64.b64encode(signature).decode('ascii')}"


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """``public_key`` as the PEM file ``load_public_key`` reads (SubjectPublicKeyInfo)."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
