"""The gateway's reader identity: the P-256 key it signs BLE transcripts with.

Phones are given the public half and the reader id at enrolment and reveal themselves only to a
reader that proves it holds the private half, so the key is a secret: a PEM (PKCS#8, unencrypted)
file in the state directory, readable by the gateway's user alone, whose bytes never appear in a
log or an error. A gateway makes its own on first start (``create=True``), unique to it.
"""

from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.ble_protocol import key_id_for, public_key_bytes
from gateway.files import create_secret

READER_KEY_FILE = "ble_reader_key.pem"
_MAX_FILE_BYTES = 8192  # a P-256 PKCS#8 PEM is about 240 bytes


class ReaderIdentityError(Exception):
    """The reader key file exists but cannot be used; the message says why (never the key)."""


@dataclass(frozen=True, slots=True)
class ReaderIdentity:
    """A reader key and its 16-byte id (SHA-256 of the SEC1 public point, first 16 bytes)."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    reader_id: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.private_key.curve, ec.SECP256R1):
            raise ValueError(f"a reader key must be on P-256, not {self.private_key.curve.name}")
        if not hmac.compare_digest(self.reader_id, key_id_for(self.private_key.public_key())):
            raise ValueError("the reader id does not belong to this key")

    @classmethod
    def from_private_key(cls, private_key: ec.EllipticCurvePrivateKey) -> ReaderIdentity:
        """The identity of ``private_key``, its id derived from the public point."""
        return cls(private_key, key_id_for(private_key.public_key()))

    @classmethod
    def generate(cls) -> ReaderIdentity:
        """A fresh random identity."""
        return cls.from_private_key(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half, which phones receive at enrolment."""
        return self.private_key.public_key()

    @property
    def public_key_bytes(self) -> bytes:
        """The public half as a SEC1 uncompressed point (65 bytes)."""
        return public_key_bytes(self.public_key)


def load_reader_identity(path: Path, *, create: bool = False) -> ReaderIdentity | None:
    """The identity in ``path``; None if absent (a new random one first, with ``create``)."""
    if create and not path.exists():
        _write_new(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ReaderIdentityError(f"{path}: cannot read the reader key: {err.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ReaderIdentityError(f"{path}: the reader key must be a regular file")
    with os.fdopen(fd, "rb") as file:
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ReaderIdentityError(
                f"{path}: permissions {stat.filemode(mode)} let others read the reader key; "
                f"allowed: readable by its owner only (chmod 600 {path})"
            )
        data = file.read(_MAX_FILE_BYTES + 1)
    not_a_key = ReaderIdentityError(
        f"{path}: not a reader key; expected an unencrypted PKCS#8 PEM P-256 private key"
    )
    if len(data) > _MAX_FILE_BYTES:
        raise not_a_key
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The library's message could quote the file; ours never does.
        raise not_a_key from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise not_a_key
    return ReaderIdentity.from_private_key(key)


def _write_new(path: Path) -> None:
    """A fresh random key, unless another process made one meanwhile (files.create_secret)."""
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    create_secret(path, pem)
