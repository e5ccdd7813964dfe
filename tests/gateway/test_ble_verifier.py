"""BlePhoneVerifier: a phone's proof from a real handshake, verified offline, once."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.reference_phone import ReferencePhone
from gateway import ble_protocol as bp
from gateway.ble_protocol import PhoneClaim, ReaderHandshake, parse_advertisement
from gateway.ble_verifier import BlePhoneVerifier
from gateway.challenges import ChallengeBook
from gateway.credentials import Refused, Verified
from gateway.model import AssuranceLevel, Credential, CredentialKind, Presentation, Reason
from gateway.reader_identity import ReaderIdentity

READER = ReaderIdentity.generate()
READER_KEYS = {READER.reader_id: READER.public_key}


class Site:
    """One gateway: a challenge book, a verifier and the enrolled phone credentials."""

    def __init__(self) -> None:
        self.challenges = ChallengeBook()
        self.verify = BlePhoneVerifier(self.challenges)
        self.credentials: dict[str, Credential] = {}
        self.lookups = 0

    def enrol(self, phone: ReferencePhone, public_key: bytes | None = None) -> Credential:
        value = phone.key_id.hex().upper()
        credential = Credential(
            f"phone-{len(self.credentials)}",
            "u1",
            CredentialKind.BLE_PHONE_KEY,
            value,
            AssuranceLevel.HIGH,
            public_key=phone.public_key_bytes if public_key is None else public_key,
        )
        self.credentials[value] = credential
        return credential

    def lookup(self, kind: CredentialKind, value: str) -> Credential | None:
        self.lookups += 1
        assert kind is CredentialKind.BLE_PHONE_KEY
        return self.credentials.get(value)

    def transact(self, phone: ReferencePhone) -> PhoneClaim:
        """What the BLE driver does: one handshake over the phone's GATT characteristics."""
        reader = ReaderHandshake(
            READER, self.challenges.issue(), parse_advertisement(phone.service_data())
        )
        phone.on_write(reader.hello())
        phone.on_write(reader.prove(phone.read_reply()))
        return reader.finish(phone.read_reply())

    def present(self, claim: PhoneClaim, value: str | None = None) -> Verified | Refused:
        presentation = Presentation(
            "front",
            CredentialKind.BLE_PHONE_KEY,
            claim.value if value is None else value,
            claim.proof,
        )
        return self.verify(presentation, self.lookup)


@pytest.fixture
def site() -> Site:
    return Site()


@pytest.fixture
def phone() -> ReferencePhone:
    return ReferencePhone.generate(READER_KEYS)


def test_an_enrolled_phone_is_verified_with_high_assurance(
    site: Site, phone: ReferencePhone
) -> None:
    credential = site.enrol(phone)
    assert site.present(site.transact(phone)) == Verified(credential, AssuranceLevel.HIGH)
    assert len(site.challenges) == 0  # the nonce was redeemed


def test_a_replayed_proof_is_refused(site: Site, phone: ReferencePhone) -> None:
    site.enrol(phone)
    claim = site.transact(phone)
    assert isinstance(site.present(claim), Verified)
    refused = site.present(claim)
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.PROOF_REPLAYED


def test_a_proof_with_a_nonce_this_gateway_never_issued_is_refused(phone: ReferencePhone) -> None:
    other, here = Site(), Site()
    here.enrol(phone)
    refused = here.present(other.transact(phone))
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.PROOF_REPLAYED


def test_an_expired_nonce_is_refused(phone: ReferencePhone) -> None:
    now = [0.0]
    site = Site()
    site.challenges = ChallengeBook(lifetime_s=10.0, monotonic=lambda: now[0])
    site.verify = BlePhoneVerifier(site.challenges)
    site.enrol(phone)
    claim = site.transact(phone)
    now[0] = 10.5
    refused = site.present(claim)
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.PROOF_REPLAYED


def test_a_phone_whose_key_is_not_the_enrolled_one_is_refused(
    site: Site, phone: ReferencePhone
) -> None:
    impostor = ReferencePhone.generate(READER_KEYS)
    site.enrol(phone, public_key=impostor.public_key_bytes)  # key id of one, key of another
    refused = site.present(site.transact(phone))
    assert refused == Refused(Reason.PROOF_INVALID, "the phone's signature does not verify")


def test_a_proof_presented_for_another_key_id_is_refused(site: Site, phone: ReferencePhone) -> None:
    site.enrol(phone)
    other = ReferencePhone.generate(READER_KEYS)
    site.enrol(other)
    refused = site.present(site.transact(phone), value=other.key_id.hex().upper())
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.PROOF_INVALID
    assert "another key id" in refused.detail


def test_an_unknown_phone_is_verified_as_nobody(site: Site, phone: ReferencePhone) -> None:
    # The decision then says unknown_credential; the nonce is spent all the same.
    assert site.present(site.transact(phone)) == Verified(None, AssuranceLevel.HIGH)
    assert len(site.challenges) == 0


@pytest.mark.parametrize(
    ("public_key", "detail"),
    [
        (None, "no public key is enrolled"),
        (b"\x04" + bytes(64), "not a P-256 point"),
        (b"\x02" + bytes(32), "not a P-256 point"),
    ],
)
def test_a_credential_without_a_usable_public_key_is_refused(
    site: Site, phone: ReferencePhone, public_key: bytes | None, detail: str
) -> None:
    credential = site.enrol(phone)
    site.credentials[credential.value] = replace(credential, public_key=public_key)
    refused = site.present(site.transact(phone))
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.PROOF_INVALID
    assert detail in refused.detail


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        (0, Reason.PROOF_INVALID),  # version
        (1, Reason.PROOF_INVALID),  # reader ephemeral key
        (70, Reason.PROOF_REPLAYED),  # nonce: not one this gateway issued
        (90, Reason.PROOF_INVALID),  # reader id
        (100, Reason.PROOF_INVALID),  # phone ephemeral key
        (165, Reason.PROOF_INVALID),  # ephemeral id
        (175, Reason.PROOF_INVALID),  # key id: not the presented value
        (bp.PROOF_BYTES - 1, Reason.PROOF_INVALID),  # signature
    ],
)
def test_a_tampered_proof_is_refused(
    site: Site, phone: ReferencePhone, at: int, reason: Reason
) -> None:
    site.enrol(phone)
    claim = site.transact(phone)
    tampered = bytearray(claim.proof)
    tampered[at] ^= 0x01
    refused = site.present(PhoneClaim(claim.key_id, bytes(tampered)))
    assert isinstance(refused, Refused)
    assert refused.reason is reason


def test_the_signature_is_checked_after_the_nonce_is_spent(
    site: Site, phone: ReferencePhone
) -> None:
    site.enrol(phone)
    claim = site.transact(phone)
    tampered = bytearray(claim.proof)
    tampered[-1] ^= 0x01
    refused = site.present(PhoneClaim(claim.key_id, bytes(tampered)))
    assert refused == Refused(Reason.PROOF_INVALID, "the phone's signature does not verify")
    assert site.present(claim) == Refused(
        Reason.PROOF_REPLAYED, "the transaction nonce was not issued here, already used or expired"
    )


def test_other_kinds_are_refused(site: Site) -> None:
    presentation = Presentation("front", CredentialKind.NFC_UID, "04A1B2C3", b"")
    refused = site.verify(presentation, site.lookup)
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.PROOF_INVALID


def test_parsed_public_keys_are_cached_and_bounded(phone: ReferencePhone) -> None:
    site = Site()
    site.verify = BlePhoneVerifier(site.challenges, keys_cached=2)
    phones = [phone, *(ReferencePhone.generate(READER_KEYS) for _ in range(3))]
    for each in phones:
        site.enrol(each)
        assert isinstance(site.present(site.transact(each)), Verified)
        assert isinstance(site.present(site.transact(each)), Verified)  # from the cache
    assert len(site.verify._keys) == 2
    # A re-enrolled key (same value, other bytes) is not served from the cache.
    credential = site.credentials[phone.key_id.hex().upper()]
    other = ReferencePhone.generate(READER_KEYS)
    site.credentials[credential.value] = replace(credential, public_key=other.public_key_bytes)
    assert isinstance(site.present(site.transact(phone)), Refused)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.binary(min_size=bp.PROOF_BYTES, max_size=bp.PROOF_BYTES),
        st.binary(min_size=bp.PROOF_BYTES - 1, max_size=bp.PROOF_BYTES - 1).map(
            lambda rest: b"\x01" + rest
        ),
    ),
    st.text(max_size=40),
)
def test_arbitrary_proofs_never_raise(proof: bytes, value: str) -> None:
    site = Site()
    key = ec.generate_private_key(ec.SECP256R1())
    key_id = bp.key_id_for(key.public_key())
    site.credentials[key_id.hex().upper()] = Credential(
        "c",
        "u",
        CredentialKind.BLE_PHONE_KEY,
        key_id.hex().upper(),
        AssuranceLevel.HIGH,
        public_key=bp.public_key_bytes(key.public_key()),
    )
    # Aim some proofs at the enrolled key, with a nonce that redeems.
    if len(proof) == bp.PROOF_BYTES:
        nonce = site.challenges.issue()
        proof = proof[:66] + nonce + proof[82:171] + key_id + proof[187:]
        value = key_id.hex().upper()
    result = site.verify(
        Presentation("front", CredentialKind.BLE_PHONE_KEY, value, proof), site.lookup
    )
    assert isinstance(result, Verified | Refused)
    if isinstance(result, Verified):
        pytest.fail("an arbitrary proof verified")


def test_many_outstanding_transactions_each_verify_once(phone: ReferencePhone) -> None:
    # What verification costs is measured by bench/credentials.py, not here.
    site = Site()
    site.challenges = ChallengeBook(monotonic=lambda: 0.0)  # no nonce expires mid-test
    site.verify = BlePhoneVerifier(site.challenges)
    site.enrol(phone)
    claims = [site.transact(phone) for _ in range(50)]
    assert all(isinstance(site.present(claim), Verified) for claim in claims)
    assert len(site.challenges) == 0  # every nonce redeemed
    assert all(isinstance(site.present(claim), Refused) for claim in claims)
