"""Round trips card ↔ reader ↔ verifier: genuine, replayed, cloned and forged NFC proofs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.nfc_emulators import DesfireCard, Ntag424Tag
from gateway import access, credentials
from gateway.challenges import ChallengeBook
from gateway.credentials import Refused, Verified
from gateway.model import AssuranceLevel, Credential, CredentialKind, Presentation, Reason
from gateway.nfc_cards import CardError, CardReading, NfcKeys, read_iso_dep_card
from gateway.nfc_verifiers import DesfireVerifier, Ntag424Verifier
from gateway.sun_counters import SunCounters
from tests.gateway.sitebuilder import SiteBuilder

UID = bytes.fromhex("04A1B2C3D4E5F6")
UID_HEX = UID.hex().upper()
OTHER_UID = bytes.fromhex("04A1B2C3D4E5F7")
KEYS = NfcKeys(
    ntag424_master=bytes(range(16)),
    sun_meta_key=bytes(range(16, 32)),
    sun_file_master=bytes(range(32, 48)),
    desfire_master=bytes(range(48, 64)),
    desfire_aid=bytes.fromhex("4C4B01"),
    system_identifier=b"LUCKEY-TEST",
)
SUN_ONLY = dataclasses.replace(KEYS, ntag424_master=None)
OTHER_SITE = dataclasses.replace(
    KEYS,
    ntag424_master=bytes([0xA5]) * 16,
    sun_file_master=bytes([0x5A]) * 16,
    desfire_master=bytes([0x3C]) * 16,
)
TAG = Credential("tag-1", "u1", CredentialKind.NTAG424, UID_HEX, AssuranceLevel.HIGH)
CARD = Credential("card-1", "u1", CredentialKind.DESFIRE, UID_HEX, AssuranceLevel.HIGH)
SECRETS = [bytes(range(n, n + 16)).hex().upper() for n in (0, 16, 32, 48)]


def lookup(kind: CredentialKind, value: str) -> Credential | None:
    return {(TAG.kind, TAG.value): TAG, (CARD.kind, CARD.value): CARD}.get((kind, value))


class Site:
    """One gateway: its challenge book, counters, verifiers and reader keys."""

    def __init__(self, keys: NfcKeys = KEYS, verifier_keys: NfcKeys | None = None) -> None:
        self.keys = keys
        self.challenges = ChallengeBook()
        self.counters = SunCounters()
        checking = verifier_keys or keys
        self.ntag = Ntag424Verifier(checking, self.challenges, self.counters)
        self.desfire = DesfireVerifier(checking, self.challenges)

    def read(self, card: Ntag424Tag | DesfireCard) -> CardReading:
        return read_iso_dep_card(card.uid, card.respond, self.keys, self.challenges)

    def verify(self, reading: CardReading, value: str | None = None) -> Verified | Refused:
        shown = Presentation("front", reading.kind, value or reading.value, reading.proof)
        verifier = self.ntag if reading.kind is CredentialKind.NTAG424 else self.desfire
        return verifier(shown, lookup)


def refused(result: Verified | Refused, reason: Reason) -> Refused:
    assert isinstance(result, Refused), result
    assert result.reason is reason, result
    assert UID_HEX not in result.detail
    for secret in SECRETS:
        assert secret not in result.detail.upper()
    return result


# --- NTAG 424 DNA, AuthenticateEV2First --------------------------------------------------------


def test_a_genuine_tag_is_verified_at_high_assurance() -> None:
    site = Site()
    result = site.verify(site.read(Ntag424Tag.for_site(UID, KEYS)))
    assert result == Verified(TAG, AssuranceLevel.HIGH)


def test_a_genuine_tag_not_in_the_cache_is_an_unknown_credential() -> None:
    site = Site()
    result = site.verify(site.read(Ntag424Tag.for_site(OTHER_UID, KEYS)))
    assert result == Verified(None, AssuranceLevel.HIGH)


def test_a_verifier_with_another_master_key_refuses() -> None:
    site = Site(keys=KEYS, verifier_keys=OTHER_SITE)
    result = site.verify(site.read(Ntag424Tag.for_site(UID, KEYS)))
    assert "does not prove the site's key" in refused(result, Reason.PROOF_INVALID).detail


def test_a_reader_with_another_master_key_gets_no_reading() -> None:
    site = Site(keys=OTHER_SITE)
    with pytest.raises(CardError, match="refused the key"):
        site.read(Ntag424Tag.for_site(UID, KEYS))


def test_the_same_proof_twice_is_a_replay() -> None:
    site = Site()
    reading = site.read(Ntag424Tag.for_site(UID, KEYS))
    assert isinstance(site.verify(reading), Verified)
    result = refused(site.verify(reading), Reason.PROOF_REPLAYED)
    assert "already used" in result.detail


def test_a_proof_recorded_at_another_gateway_is_a_replay() -> None:
    elsewhere, here = Site(), Site()
    reading = elsewhere.read(Ntag424Tag.for_site(UID, KEYS))
    refused(here.verify(reading), Reason.PROOF_REPLAYED)


def test_a_proof_presented_too_late_is_a_replay() -> None:
    now = [0.0]
    site = Site()
    site.challenges = ChallengeBook(lifetime_s=10.0, monotonic=lambda: now[0])
    site.ntag = Ntag424Verifier(KEYS, site.challenges, site.counters)
    reading = site.read(Ntag424Tag.for_site(UID, KEYS))
    now[0] = 10.5
    refused(site.verify(reading), Reason.PROOF_REPLAYED)


def test_a_cloned_uid_without_the_key_is_refused() -> None:
    site = Site()
    # The clone copies the UID, cannot check the reader's cryptogram, and answers anyway.
    clone = Ntag424Tag(UID, app_keys={0: bytes([0x42]) * 16}, checks_reader=False)
    reading = site.read(clone)
    refused(site.verify(reading), Reason.PROOF_INVALID)


def test_a_cloned_uid_that_checks_the_reader_gives_no_reading() -> None:
    site = Site()
    with pytest.raises(CardError, match="refused the key"):
        site.read(Ntag424Tag(UID, app_keys={0: bytes([0x42]) * 16}))


def test_a_proof_moved_to_another_uid_is_refused() -> None:
    site = Site()
    reading = site.read(Ntag424Tag.for_site(UID, KEYS))
    refused(site.verify(reading, OTHER_UID.hex().upper()), Reason.PROOF_INVALID)


# RndA (bytes 1-16) and the card's answer (33-64) carry the proof. E(RndB) (17-32) is a record
# only: the card's answer does not cover it, so nothing rests on it.
@pytest.mark.parametrize("index", [1, 16, 33, 40, 48, 64])
def test_a_tampered_proof_is_refused(index: int) -> None:
    site = Site()
    reading = site.read(Ntag424Tag.for_site(UID, KEYS))
    proof = bytearray(reading.proof)
    proof[index] ^= 0x80
    result = site.verify(dataclasses.replace(reading, proof=bytes(proof)))
    assert isinstance(result, Refused)
    # Changing RndA (bytes 1-16) makes it unknown and its RndA' wrong: invalid either way.
    assert result.reason is Reason.PROOF_INVALID


def test_an_ev2_proof_without_the_master_key_cannot_be_checked() -> None:
    reading = Site().read(Ntag424Tag.for_site(UID, KEYS))
    site = Site(verifier_keys=SUN_ONLY)
    result = refused(site.verify(reading), Reason.PROOF_INVALID)
    assert "no NTAG 424 DNA key configured" in result.detail


def test_the_verifier_plugs_into_verify_and_decide() -> None:
    view = (
        SiteBuilder()
        .door("front", min_assurance="high")
        .user("u1", tags=["staff"])
        .credential("tag-1", "u1", kind="ntag424", value=UID_HEX)
        .rule("r1", tags=["staff"], doors=["front"])
        .view()
    )
    site = Site()
    verifiers: dict[CredentialKind, credentials.Verifier] = {
        **credentials.DEFAULT_VERIFIERS,
        CredentialKind.NTAG424: site.ntag,
    }
    reading = site.read(Ntag424Tag.for_site(UID, KEYS))
    shown = Presentation("front", reading.kind, reading.value, reading.proof)
    identity = credentials.verify(shown, view.credential, verifiers)
    decision = access.decide(identity, "front", datetime(2026, 12, 1, 10, tzinfo=UTC), view)
    assert (decision.granted, decision.assurance) == (True, AssuranceLevel.HIGH)


# --- NTAG 424 DNA, SUN -------------------------------------------------------------------------


def sun_site() -> Site:
    return Site(keys=SUN_ONLY)


def test_a_genuine_sun_message_is_verified_at_medium_assurance() -> None:
    site = sun_site()
    tag = Ntag424Tag.for_site(UID, KEYS, sun_enabled=True, counter=9)
    assert site.verify(site.read(tag)) == Verified(TAG, AssuranceLevel.MEDIUM)
    assert site.counters.last(UID_HEX) == 10


def test_a_sun_message_with_file_data_is_verified() -> None:
    site = sun_site()
    tag = Ntag424Tag.for_site(UID, KEYS, sun_enabled=True, file_data=bytes(32))
    assert site.verify(site.read(tag)) == Verified(TAG, AssuranceLevel.MEDIUM)


def test_a_replayed_sun_message_is_refused() -> None:
    site = sun_site()
    tag = Ntag424Tag.for_site(UID, KEYS, sun_enabled=True)
    reading = site.read(tag)
    assert isinstance(site.verify(reading), Verified)
    result = refused(site.verify(reading), Reason.PROOF_REPLAYED)
    assert "counter 1 not above" in result.detail
    assert isinstance(site.verify(site.read(tag)), Verified)  # the next read is fresh


def test_an_older_sun_message_after_a_newer_one_is_refused() -> None:
    site = sun_site()
    tag = Ntag424Tag.for_site(UID, KEYS, sun_enabled=True)
    older, newer = site.read(tag), site.read(tag)
    assert isinstance(site.verify(newer), Verified)
    refused(site.verify(older), Reason.PROOF_REPLAYED)


def test_a_sun_message_under_other_keys_is_invalid() -> None:
    site = Site(keys=SUN_ONLY, verifier_keys=dataclasses.replace(OTHER_SITE, ntag424_master=None))
    reading = site.read(Ntag424Tag.for_site(UID, KEYS, sun_enabled=True))
    assert "does not verify" in refused(site.verify(reading), Reason.PROOF_INVALID).detail
    assert site.counters.last(UID_HEX) is None  # an invalid message moves no counter


def test_another_tags_sun_message_is_invalid() -> None:
    site = sun_site()
    reading = site.read(Ntag424Tag.for_site(OTHER_UID, KEYS, sun_enabled=True))
    result = refused(site.verify(reading, UID_HEX), Reason.PROOF_INVALID)
    assert "another tag's" in result.detail


def test_a_sun_message_copied_onto_a_clone_is_a_replay() -> None:
    site = sun_site()
    genuine = Ntag424Tag.for_site(UID, KEYS, sun_enabled=True)
    first = site.read(genuine)
    assert isinstance(site.verify(first), Verified)
    # A clone replays the recorded URL: the counter gives it away.
    refused(site.verify(dataclasses.replace(first)), Reason.PROOF_REPLAYED)


def test_a_sun_proof_without_sun_keys_cannot_be_checked() -> None:
    reading = sun_site().read(Ntag424Tag.for_site(UID, KEYS, sun_enabled=True))
    keys = dataclasses.replace(KEYS, sun_meta_key=None, sun_file_master=None)
    result = refused(Site(verifier_keys=keys).verify(reading), Reason.PROOF_INVALID)
    assert "no SUN keys" in result.detail


# --- DESFire ----------------------------------------------------------------------------------


def test_a_genuine_desfire_card_is_verified_at_high_assurance() -> None:
    site = Site()
    assert site.verify(site.read(DesfireCard.for_site(UID, KEYS))) == Verified(
        CARD, AssuranceLevel.HIGH
    )


def test_a_replayed_desfire_proof_is_refused() -> None:
    site = Site()
    reading = site.read(DesfireCard.for_site(UID, KEYS))
    assert isinstance(site.verify(reading), Verified)
    refused(site.verify(reading), Reason.PROOF_REPLAYED)


def test_a_desfire_verifier_with_another_key_refuses() -> None:
    site = Site(verifier_keys=OTHER_SITE)
    refused(site.verify(site.read(DesfireCard.for_site(UID, KEYS))), Reason.PROOF_INVALID)


def test_a_desfire_clone_is_refused() -> None:
    site = Site()
    clone = DesfireCard(UID, KEYS.desfire_aid, bytes(16), checks_reader=False)
    refused(site.verify(site.read(clone)), Reason.PROOF_INVALID)


def test_a_desfire_card_cannot_present_a_sun_proof() -> None:
    site = sun_site()
    reading = site.read(Ntag424Tag.for_site(UID, KEYS, sun_enabled=True))
    moved = CardReading(CredentialKind.DESFIRE, reading.value, reading.proof)
    assert "must be an EV2" in refused(site.verify(moved), Reason.PROOF_INVALID).detail


def test_a_desfire_proof_without_a_key_cannot_be_checked() -> None:
    reading = Site().read(DesfireCard.for_site(UID, KEYS))
    site = Site(verifier_keys=dataclasses.replace(KEYS, desfire_master=None))
    assert "no DESFire key" in refused(site.verify(reading), Reason.PROOF_INVALID).detail


def test_an_ntag_proof_is_not_a_desfire_proof() -> None:
    site = Site()
    reading = site.read(Ntag424Tag.for_site(UID, KEYS))
    moved = CardReading(CredentialKind.DESFIRE, reading.value, reading.proof)
    refused(site.verify(moved), Reason.PROOF_INVALID)  # another AID: another key


# --- Malformed presentations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "complaint"),
    [
        (CredentialKind.NTAG424, "04a1b2c3d4e5f6", "upper-case hex"),
        (CredentialKind.NTAG424, "04A1B2C3", "7 bytes"),
        (CredentialKind.NTAG424, "NOT HEX!", "7 bytes"),
        (CredentialKind.DESFIRE, "04A1B2", "4 or 7 bytes"),
        (CredentialKind.DESFIRE, "", "4 or 7 bytes"),
    ],
)
def test_a_malformed_value_is_refused(kind: CredentialKind, value: str, complaint: str) -> None:
    site = Site()
    verifier = site.ntag if kind is CredentialKind.NTAG424 else site.desfire
    result = verifier(Presentation("front", kind, value, b"\x01" + bytes(64)), lookup)
    assert complaint in refused(result, Reason.PROOF_INVALID).detail


@pytest.mark.parametrize("kind", [CredentialKind.NFC_UID, CredentialKind.MECHATRONIC_KEY])
def test_another_kind_is_refused(kind: CredentialKind) -> None:
    site = Site()
    for verifier in (site.ntag, site.desfire):
        result = verifier(Presentation("front", kind, UID_HEX, b""), lookup)
        refused(result, Reason.PROOF_INVALID)


def test_a_malformed_proof_says_what_is_wrong() -> None:
    result = Site().ntag(
        Presentation("front", CredentialKind.NTAG424, UID_HEX, b"\x01\x02"), lookup
    )
    detail = refused(result, Reason.PROOF_INVALID).detail
    assert detail == "tag …E5F6: malformed proof: an EV2 proof is 65 bytes, not 2"


PROOFS = st.one_of(
    st.binary(max_size=200),
    st.binary(min_size=64, max_size=64).map(lambda b: b"\x01" + b),
    st.tuples(
        st.binary(min_size=24, max_size=24), st.binary(max_size=64), st.binary(max_size=64)
    ).map(
        lambda t: (
            b"\x02"
            + t[0]
            + len(t[1]).to_bytes(2, "big")
            + t[1]
            + len(t[2]).to_bytes(2, "big")
            + t[2]
        )
    ),
)
VALUES = st.one_of(
    st.just(UID_HEX), st.text(max_size=20), st.binary(max_size=10).map(lambda b: b.hex().upper())
)


@settings(max_examples=300)
@given(proof=PROOFS, value=VALUES)
def test_arbitrary_proofs_never_raise_and_never_verify(proof: bytes, value: str) -> None:
    site = Site()
    for kind, verifier in (
        (CredentialKind.NTAG424, site.ntag),
        (CredentialKind.DESFIRE, site.desfire),
    ):
        result = verifier(Presentation("front", kind, value, proof), lookup)
        assert isinstance(result, Refused)
        assert result.reason in (Reason.PROOF_INVALID, Reason.PROOF_REPLAYED)
