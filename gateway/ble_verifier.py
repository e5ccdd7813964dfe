"""Phone credentials over BLE: the phone's signature over the transcript, verified offline.

The BLE driver runs the handshake (gateway/ble_protocol.py) with a nonce from the gateway's
ChallengeBook and presents the phone's key id (as the credential value) with the proof from
message 4. Here the nonce is redeemed, so a recorded proof never verifies twice, and the
phone's ECDSA signature over "phone" ‖ transcript hash is checked against the public key
enrolled for that key id.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.ble_protocol import (
    PHONE_SIGNATURE_LABEL,
    BleProtocolError,
    load_public_key,
    parse_proof,
    signature_verifies,
)
from gateway.challenges import ChallengeBook
from gateway.credentials import Lookup, Refused, Verified
from gateway.model import AssuranceLevel, CredentialKind, Presentation, Reason

KEYS_CACHED = 4096  # parsed public keys kept; parsing checks the point (tens of µs each)


class BlePhoneVerifier:
    """Verifies ``ble_phone_key`` presentations whose proof comes from ReaderHandshake.finish."""

    def __init__(self, challenges: ChallengeBook, *, keys_cached: int = KEYS_CACHED) -> None:
        self._challenges = challenges
        self._keys_cached = keys_cached
        self._keys: OrderedDict[tuple[str, bytes], ec.EllipticCurvePublicKey] = OrderedDict()

    def __call__(self, presentation: Presentation, lookup: Lookup) -> Verified | Refused:
        """Redeem the nonce, then check the signature; never raises on a malformed proof."""
        if presentation.kind is not CredentialKind.BLE_PHONE_KEY:
            return Refused(Reason.PROOF_INVALID, f"not a phone key: {presentation.kind.value}")
        try:
            proof = parse_proof(presentation.proof)
        except BleProtocolError as err:
            return Refused(Reason.PROOF_INVALID, str(err))
        # The key id is inside the encrypted message 4 and the proof; the value is what the
        # decision looks up. They must name the same key, or one key's proof could open for another.
        if not hmac.compare_digest(
            proof.key_id.hex().upper().encode(), presentation.value.encode()
        ):
            return Refused(Reason.PROOF_INVALID, "the proof is for another key id than presented")
        if not self._challenges.redeem(proof.transcript.nonce):
            return Refused(
                Reason.PROOF_REPLAYED,
                "the transaction nonce was not issued here, already used or expired",
            )
        credential = lookup(presentation.kind, presentation.value)
        if credential is None:
            return Verified(None, AssuranceLevel.HIGH)  # the decision says unknown_credential
        if credential.public_key is None:
            return Refused(Reason.PROOF_INVALID, "no public key is enrolled for this phone key")
        public_key = self._public_key(credential.value, credential.public_key)
        if public_key is None:
            return Refused(Reason.PROOF_INVALID, "the enrolled public key is not a P-256 point")
        signed = PHONE_SIGNATURE_LABEL + proof.transcript.digest()
        if not signature_verifies(public_key, proof.signature, signed):
            return Refused(Reason.PROOF_INVALID, "the phone's signature does not verify")
        return Verified(credential, AssuranceLevel.HIGH)

    def _public_key(self, value: str, encoded: bytes) -> ec.EllipticCurvePublicKey | None:
        """The parsed key, from a small LRU keyed by value and bytes (a re-enrolment misses)."""
        cache_key = (value, encoded)
        key = self._keys.get(cache_key)
        if key is not None:
            self._keys.move_to_end(cache_key)
            return key
        try:
            key = load_public_key(encoded)
        except BleProtocolError:
            return None
        self._keys[cache_key] = key
        if len(self._keys) > self._keys_cached:
            self._keys.popitem(last=False)
        return key
