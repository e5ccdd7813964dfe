"""Credential identifiers and the offline verification of a presentation.

Pure: no I/O. A verifier turns a ``Presentation`` into the cached ``Credential`` it proves
and the assurance it actually achieved. Kinds whose cryptographic proof this build does not
check are refused with ``proof_invalid``: an unchecked proof never opens a door.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.model import (
    KIND_ASSURANCE,
    AssuranceLevel,
    Credential,
    CredentialKind,
    Presentation,
    Reason,
)

_HEX = re.compile(r"[0-9A-F]*")

#: Allowed identifier lengths in bytes for each kind; the value is upper-case hex.
VALUE_BYTES: Mapping[CredentialKind, tuple[int, ...]] = {
    CredentialKind.NFC_UID: (4, 7, 10),  # ISO 14443-3 single, double, triple size UIDs
    CredentialKind.NTAG424: (7,),
    CredentialKind.DESFIRE: (4, 7),  # 4 bytes when the card uses random IDs
    CredentialKind.BLE_PHONE_KEY: (16,),  # credential key identifier
    CredentialKind.MECHATRONIC_KEY: (8,),
    CredentialKind.PIN: (32,),  # scrypt output (site.pin_hashing); never the digits
}


def phone_key_id(public_key: bytes) -> bytes:
    """A phone key's 16-byte identifier (its credential value): SHA-256 over its SEC1 point."""
    return hashlib.sha256(public_key).digest()[: VALUE_BYTES[CredentialKind.BLE_PHONE_KEY][0]]


def parse_kind(text: str) -> CredentialKind:
    """Return the credential kind named ``text``; ValueError listing the kinds otherwise."""
    try:
        return CredentialKind(text.strip().lower())
    except ValueError:
        allowed = ", ".join(k.value for k in CredentialKind)
        # An identifier typed in the wrong place must not be echoed whole.
        shown = redact(text) if _looks_like_identifier(text) else text
        raise ValueError(f"unknown credential kind {shown!r}; allowed: {allowed}") from None


def _looks_like_identifier(text: str) -> bool:
    digits = text.strip().upper().replace(":", "").replace("-", "").replace(" ", "")
    return len(digits) >= 6 and digits.isascii() and _HEX.fullmatch(digits) is not None


def canonical_value(kind: CredentialKind, text: str) -> str:
    """Return ``text`` as the kind's canonical identifier (upper-case hex, no separators)."""
    value = text.strip().upper().replace(":", "").replace("-", "").replace(" ", "")
    sizes = VALUE_BYTES[kind]
    if (
        not value.isascii()
        or not _HEX.fullmatch(value)
        or len(value) % 2
        or len(value) // 2 not in sizes
    ):
        want = " or ".join(f"{n}" for n in sizes)
        if kind is CredentialKind.PIN:  # what was given may be the digits: show none of it
            raise ValueError(
                f"a pin value is the PIN's hash under the site's pin_hashing: expected {sizes[0]} bytes of hex "
                f"({2 * sizes[0]} hex digits), never the PIN itself"
            )
        raise ValueError(
            f"{kind.value} value {redact(text)!r} is not valid; expected {want} bytes of hex "
            f"({' or '.join(str(2 * n) for n in sizes)} hex digits, ':' separators allowed)"
        )
    return value


def parse_credential(text: str) -> tuple[CredentialKind, str]:
    """Parse ``KIND:VALUE`` (as typed by an installer) into a kind and canonical value."""
    kind_text, sep, value = text.partition(":")
    if not sep or not value:
        raise ValueError(f"credential {redact(text)!r} must be KIND:VALUE, e.g. nfc_uid:04A1B2C3")
    kind = parse_kind(kind_text)
    return kind, canonical_value(kind, value)


def redact(value: str) -> str:
    """Show at most the last four characters of an identifier, for logs and messages."""
    tail = value[-4:] if len(value) > 4 else ""
    return f"…{tail}" if tail else "…"


@dataclass(frozen=True, slots=True)
class Verified:
    """A presentation whose proof checked out (or that needs none): who, and how strongly."""

    credential: Credential | None  # None: the identifier is not in the cache
    assurance: AssuranceLevel


@dataclass(frozen=True, slots=True)
class Refused:
    """A presentation whose proof failed; ``reason`` says why, ``detail`` is for humans."""

    reason: Reason
    detail: str


Lookup = Callable[[CredentialKind, str], Credential | None]
Verifier = Callable[[Presentation, Lookup], Verified | Refused]


def verify_bare_uid(presentation: Presentation, lookup: Lookup) -> Verified | Refused:
    """A bare UID proves nothing but itself: assurance is always ``low``."""
    return Verified(lookup(presentation.kind, presentation.value), AssuranceLevel.LOW)


def _unsupported(presentation: Presentation, lookup: Lookup) -> Verified | Refused:
    return Refused(
        Reason.PROOF_INVALID,
        f"no verifier for {presentation.kind.value} proofs in this build; refused",
    )


DEFAULT_VERIFIERS: Mapping[CredentialKind, Verifier] = {
    CredentialKind.NFC_UID: verify_bare_uid,
    CredentialKind.NTAG424: _unsupported,
    CredentialKind.DESFIRE: _unsupported,
    CredentialKind.BLE_PHONE_KEY: _unsupported,
    CredentialKind.MECHATRONIC_KEY: _unsupported,
    # The value is the hash of the digits typed: finding it is the proof.
    CredentialKind.PIN: verify_bare_uid,
}


def verify(
    presentation: Presentation,
    lookup: Lookup,
    verifiers: Mapping[CredentialKind, Verifier] = DEFAULT_VERIFIERS,
) -> Verified | Refused:
    """Check a presentation's proof offline with the verifier registered for its kind."""
    verifier = verifiers.get(presentation.kind, _unsupported)
    return verifier(presentation, lookup)


def assumed(credential: Credential | None, kind: CredentialKind) -> Verified:
    """A what-if identity: as if the credential had proven itself as strongly as it can.

    Used by ``luckey-gateway decide`` to explain a decision without a live presentation.
    """
    if credential is None:
        return Verified(None, KIND_ASSURANCE[kind])
    return Verified(credential, credential.assurance)
