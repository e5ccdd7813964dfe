"""Offline verification of NTAG 424 DNA and DESFire proofs captured by gateway.nfc_cards.

AuthenticateEV2First proofs (``high``): the card's answer must decrypt, under the key
diversified for the presented UID, to RndA' of a RndA this gateway issued and has not redeemed
yet. A cloned UID without the key, or a recorded exchange, fails. SUN proofs (``medium``):
the MAC must verify under the tag's keys, the encrypted UID must be the presented one, and the
read counter must be above the last one seen for that tag (gateway.sun_counters).

A malformed proof is refused with ``proof_invalid``, never raised. Details are short and go to
logs: they name at most the last four hex digits of a UID and never a key.
"""

from __future__ import annotations

import hmac

from gateway import ntag424
from gateway.challenges import ChallengeBook
from gateway.credentials import Lookup, Refused, Verified, redact
from gateway.model import AssuranceLevel, CredentialKind, Presentation, Reason
from gateway.nfc_cards import Ev2Proof, NfcKeys, SunProof, parse_proof
from gateway.sun_counters import SunCounters

_HEX_DIGITS = frozenset("0123456789ABCDEF")


def _uid(value: str, sizes: tuple[int, ...]) -> bytes | None:
    """The UID bytes of a canonical value (upper-case hex of an allowed size), else None."""
    if not value or len(value) % 2 or not set(value) <= _HEX_DIGITS:
        return None
    uid = bytes.fromhex(value)
    return uid if len(uid) in sizes else None


def _check_ev2(key: bytes, proof: Ev2Proof, challenges: ChallengeBook, who: str) -> Refused | None:
    """None if the exchange proves ``key`` on a fresh, gateway-issued RndA; else why not."""
    _reader_message, rnd_b = ntag424.ev2_first_part2(key, proof.rnd_a, proof.enc_rnd_b)
    session = ntag424.ev2_first_check(key, proof.rnd_a, rnd_b, proof.card_response)
    # Redeemed whatever the outcome: an issued challenge serves one exchange only.
    fresh = challenges.redeem(proof.rnd_a)
    if session is None:
        return Refused(Reason.PROOF_INVALID, f"{who}: the answer does not prove the site's key")
    if not fresh:
        return Refused(
            Reason.PROOF_REPLAYED, f"{who}: challenge not issued here, already used or expired"
        )
    return None


class Ntag424Verifier:
    """Verifies ``ntag424`` proofs: AuthenticateEV2First (high) or a SUN message (medium)."""

    def __init__(self, keys: NfcKeys, challenges: ChallengeBook, counters: SunCounters) -> None:
        self._keys = keys
        self._challenges = challenges
        self._counters = counters

    def __call__(self, presentation: Presentation, lookup: Lookup) -> Verified | Refused:
        """Check the proof first; only a genuine, fresh proof identifies the tag."""
        if presentation.kind is not CredentialKind.NTAG424:
            return Refused(
                Reason.PROOF_INVALID, f"not an NTAG 424 DNA tag: {presentation.kind.value}"
            )
        uid = _uid(presentation.value, (ntag424.UID_BYTES,))
        if uid is None:
            return Refused(Reason.PROOF_INVALID, "the tag's UID is not 7 bytes of upper-case hex")
        who = f"tag {redact(presentation.value)}"
        try:
            proof = parse_proof(presentation.proof)
        except ValueError as err:
            return Refused(Reason.PROOF_INVALID, f"{who}: malformed proof: {err}")
        if isinstance(proof, SunProof):
            return self._check_sun(presentation, uid, proof, lookup, who)
        key = self._keys.ntag424_key(uid)
        if key is None:
            return Refused(
                Reason.PROOF_INVALID, f"{who}: no NTAG 424 DNA key configured to check the proof"
            )
        refused = _check_ev2(key, proof, self._challenges, who)
        if refused is not None:
            return refused
        return Verified(lookup(presentation.kind, presentation.value), AssuranceLevel.HIGH)

    def _check_sun(
        self, presentation: Presentation, uid: bytes, proof: SunProof, lookup: Lookup, who: str
    ) -> Verified | Refused:
        meta_key, file_master = self._keys.sun_meta_key, self._keys.sun_file_master
        if meta_key is None or file_master is None:
            return Refused(Reason.PROOF_INVALID, f"{who}: no SUN keys configured to check it")
        keys = self._keys

        def file_key_for(tag_uid: bytes) -> bytes:
            return ntag424.tag_key(file_master, tag_uid, keys.ntag424_aid, keys.system_identifier)

        result = ntag424.verify_sun(proof.message, meta_key, file_key_for)
        if not result.valid:
            return Refused(Reason.PROOF_INVALID, f"{who}: the SUN message does not verify")
        if not hmac.compare_digest(result.uid, uid):
            return Refused(Reason.PROOF_INVALID, f"{who}: the SUN message is another tag's")
        if not self._counters.advance(presentation.value, result.read_counter):
            return Refused(
                Reason.PROOF_REPLAYED,
                f"{who}: SUN read counter {result.read_counter} not above the last seen "
                "(a copied URL)",
            )
        return Verified(lookup(presentation.kind, presentation.value), AssuranceLevel.MEDIUM)


class DesfireVerifier:
    """Verifies ``desfire`` proofs: AuthenticateEV2First with the card's key (high)."""

    def __init__(self, keys: NfcKeys, challenges: ChallengeBook) -> None:
        self._keys = keys
        self._challenges = challenges

    def __call__(self, presentation: Presentation, lookup: Lookup) -> Verified | Refused:
        """Check the proof first; only a genuine, fresh answer identifies the card."""
        if presentation.kind is not CredentialKind.DESFIRE:
            return Refused(Reason.PROOF_INVALID, f"not a DESFire card: {presentation.kind.value}")
        uid = _uid(presentation.value, (4, 7))
        if uid is None:
            return Refused(
                Reason.PROOF_INVALID, "the card's UID is not 4 or 7 bytes of upper-case hex"
            )
        who = f"card {redact(presentation.value)}"
        try:
            proof = parse_proof(presentation.proof)
        except ValueError as err:
            return Refused(Reason.PROOF_INVALID, f"{who}: malformed proof: {err}")
        if not isinstance(proof, Ev2Proof):
            return Refused(Reason.PROOF_INVALID, f"{who}: a DESFire proof must be an EV2 one")
        key = self._keys.desfire_key(uid)
        if key is None:
            return Refused(
                Reason.PROOF_INVALID, f"{who}: no DESFire key configured to check the proof"
            )
        refused = _check_ev2(key, proof, self._challenges, who)
        if refused is not None:
            return refused
        return Verified(lookup(presentation.kind, presentation.value), AssuranceLevel.HIGH)
