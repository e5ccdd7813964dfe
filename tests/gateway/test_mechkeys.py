"""Key diversification against NXP's published vector, and mechatronic key verification."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import access, credentials
from gateway.credentials import Refused, Verified
from gateway.diversify import aes_cmac, an10922_aes128
from gateway.mechkeys import MechanicalKeyVerifier, respond
from gateway.model import AssuranceLevel, Credential, CredentialKind, Presentation, Reason
from tests.gateway.sitebuilder import SiteBuilder

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "nfc.json").read_text()
)  # NXP AN10922, AN12196
SITE_KEY = bytes(range(16))
KEY_ID = bytes.fromhex("0011223344556677")
KEY_HEX = KEY_ID.hex().upper()
CHALLENGE = bytes.fromhex("A0A1A2A3A4A5A6A7A8A9AAABACADAEAF")
CARD = Credential("key-1", "u1", CredentialKind.MECHATRONIC_KEY, KEY_HEX, AssuranceLevel.HIGH)


def lookup(kind: CredentialKind, value: str) -> Credential | None:
    return CARD if (kind, value) == (CARD.kind, CARD.value) else None


def presentation(challenge: bytes, response: bytes, key_hex: str = KEY_HEX) -> Presentation:
    return Presentation("front", CredentialKind.MECHATRONIC_KEY, key_hex, challenge + response)


@pytest.mark.parametrize("vector", VECTORS["an10922_aes128_diversification"])
def test_an10922_matches_the_published_vector(vector: dict[str, object]) -> None:
    m = b"".join(bytes.fromhex(str(vector[k])) for k in ("uid", "aid", "system_identifier"))
    key = an10922_aes128(bytes.fromhex(str(vector["master_key"])), m)
    assert key.hex().upper() == str(vector["expect"]["diversified_key"])  # type: ignore[index]


@pytest.mark.parametrize(
    ("key", "message", "mac"),
    [  # RFC 4493 §4 examples
        ("2b7e151628aed2a6abf7158809cf4f3c", "", "bb1d6929e95937287fa37d129b756746"),
        (
            "2b7e151628aed2a6abf7158809cf4f3c",
            "6bc1bee22e409f96e93d7e117393172a",
            "070a16b46b4d4144f79bdd9dd04a287c",
        ),
    ],
)
def test_aes_cmac_matches_rfc_4493(key: str, message: str, mac: str) -> None:
    assert aes_cmac(bytes.fromhex(key), bytes.fromhex(message)).hex() == mac


def test_a_genuine_answer_identifies_the_key_at_high_assurance() -> None:
    verifier = MechanicalKeyVerifier(SITE_KEY)
    result = verifier(presentation(CHALLENGE, respond(SITE_KEY, KEY_ID, CHALLENGE)), lookup)
    assert result == Verified(CARD, AssuranceLevel.HIGH)


def test_a_wrong_answer_is_refused() -> None:
    verifier = MechanicalKeyVerifier(SITE_KEY)
    good = respond(SITE_KEY, KEY_ID, CHALLENGE)
    forged = bytes([good[0] ^ 1]) + good[1:]
    result = verifier(presentation(CHALLENGE, forged), lookup)
    assert isinstance(result, Refused)
    assert result.reason is Reason.PROOF_INVALID


def test_another_sites_key_is_refused() -> None:
    verifier = MechanicalKeyVerifier(SITE_KEY)
    other = respond(bytes(16), KEY_ID, CHALLENGE)
    assert isinstance(verifier(presentation(CHALLENGE, other), lookup), Refused)


def test_a_replayed_exchange_is_refused() -> None:
    verifier = MechanicalKeyVerifier(SITE_KEY)
    exchange = presentation(CHALLENGE, respond(SITE_KEY, KEY_ID, CHALLENGE))
    assert isinstance(verifier(exchange, lookup), Verified)
    replay = verifier(exchange, lookup)
    assert isinstance(replay, Refused)
    assert replay.reason is Reason.PROOF_REPLAYED
    assert "replayed" in replay.detail


def test_a_genuine_key_not_in_the_cache_is_an_unknown_credential() -> None:
    verifier = MechanicalKeyVerifier(SITE_KEY)
    stranger = bytes.fromhex("FFEEDDCCBBAA9988")
    result = verifier(
        presentation(CHALLENGE, respond(SITE_KEY, stranger, CHALLENGE), stranger.hex().upper()),
        lookup,
    )
    assert result == Verified(None, AssuranceLevel.HIGH)


@pytest.mark.parametrize("proof_len", [0, 16, 31, 33])
def test_a_proof_of_the_wrong_size_is_refused(proof_len: int) -> None:
    verifier = MechanicalKeyVerifier(SITE_KEY)
    result = verifier(
        Presentation("front", CredentialKind.MECHATRONIC_KEY, KEY_HEX, bytes(proof_len)), lookup
    )
    assert isinstance(result, Refused)
    assert "16-byte challenge" in result.detail


def test_the_verifier_plugs_into_verify_and_decide() -> None:
    view = (
        SiteBuilder()
        .door("front", min_assurance="high")
        .user("u1", tags=["staff"])
        .credential("key-1", "u1", kind="mech_key", value=KEY_HEX)
        .rule("r1", tags=["staff"], doors=["front"])
        .view()
    )
    verifiers: dict[CredentialKind, credentials.Verifier] = {
        **credentials.DEFAULT_VERIFIERS,
        CredentialKind.MECHATRONIC_KEY: MechanicalKeyVerifier(SITE_KEY),
    }
    shown = presentation(CHALLENGE, respond(SITE_KEY, KEY_ID, CHALLENGE))
    identity = credentials.verify(shown, view.credential, verifiers)
    decision = access.decide(identity, "front", datetime(2026, 12, 1, 10, tzinfo=UTC), view)
    assert (decision.granted, decision.assurance) == (True, AssuranceLevel.HIGH)


def test_other_keys_cannot_push_a_recorded_exchange_out_of_memory() -> None:
    verifier = MechanicalKeyVerifier(SITE_KEY)
    recorded = presentation(CHALLENGE, respond(SITE_KEY, KEY_ID, CHALLENGE))
    assert isinstance(verifier(recorded, lookup), Verified)
    lost_key = bytes.fromhex("FFEEDDCCBBAA9988")  # genuine, but not enrolled (e.g. lost)
    for _ in range(5000):
        challenge = os.urandom(16)
        verifier(
            presentation(challenge, respond(SITE_KEY, lost_key, challenge), lost_key.hex().upper()),
            lookup,
        )
    assert isinstance(verifier(recorded, lookup), Refused)


def test_a_malformed_key_id_is_refused_not_raised() -> None:
    verifier = MechanicalKeyVerifier(SITE_KEY)
    result = verifier(presentation(CHALLENGE, bytes(16), "NOT-HEX"), lookup)
    assert isinstance(result, Refused)
    assert "key id" in result.detail
