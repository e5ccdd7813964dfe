"""Mechatronic keys: the key's answer to the board's challenge, verified offline.

The board sends a fresh random 16-byte challenge to the key; the key answers with
AES-CMAC(K_key, challenge), where K_key is diversified from the site's mechatronic master key
(AN10922, M = key id ‖ "LUCKEYMK"). The board reports key id, challenge and response; the
gateway recomputes the answer, compares in constant time, and refuses a challenge it has already
seen from that key.

Limits, stated plainly: the challenge comes from the board, so the gateway can only refuse
exchanges it remembers. It remembers the last ``CHALLENGES_PER_KEY`` challenges of each enrolled
key (so no other key, genuine or not, can push them out) for up to ``KEYS_REMEMBERED`` keys, in
memory: a restart forgets them. Closing that gap needs challenges the gateway issues itself
(a protocol change, tracked for the board protocol).
"""

from __future__ import annotations

import hmac
from collections import OrderedDict

from gateway.credentials import Lookup, Refused, Verified
from gateway.diversify import aes_cmac, an10922_aes128
from gateway.model import AssuranceLevel, CredentialKind, Presentation, Reason

KEY_ID_BYTES = 8
CHALLENGE_BYTES = 16
RESPONSE_BYTES = 16
SYSTEM_IDENTIFIER = b"LUCKEYMK"  # fixed part of the diversification input: keys, not cards
CHALLENGES_PER_KEY = 64  # challenges remembered per key
KEYS_REMEMBERED = 20_000  # keys whose challenges are remembered; the least recently presented go


def key_for(site_key: bytes, key_id: bytes) -> bytes:
    """The AES key of one mechatronic key, diversified from the site's master key."""
    if len(key_id) != KEY_ID_BYTES:
        raise ValueError(f"key id must be {KEY_ID_BYTES} bytes, not {len(key_id)}")
    return an10922_aes128(site_key, key_id + SYSTEM_IDENTIFIER)


def respond(site_key: bytes, key_id: bytes, challenge: bytes) -> bytes:
    """What a genuine key answers to ``challenge`` (the key's side, for simulators and tests)."""
    return aes_cmac(key_for(site_key, key_id), challenge)


class MechanicalKeyVerifier:
    """Verifies KEY_PRESENTED proofs (challenge ‖ response) for the ``mech_key`` kind."""

    def __init__(self, site_key: bytes) -> None:
        if len(site_key) != 16:
            raise ValueError("the mechatronic site key must be 16 bytes")
        self._site_key = site_key
        self._seen: OrderedDict[str, OrderedDict[bytes, None]] = OrderedDict()

    def __call__(self, presentation: Presentation, lookup: Lookup) -> Verified | Refused:
        """Check the proof first; only a genuine, fresh answer identifies the key."""
        if presentation.kind is not CredentialKind.MECHATRONIC_KEY:
            return Refused(
                Reason.PROOF_INVALID, f"not a mechatronic key: {presentation.kind.value}"
            )
        proof = presentation.proof
        if len(proof) != CHALLENGE_BYTES + RESPONSE_BYTES:
            return Refused(
                Reason.PROOF_INVALID, "proof must be a 16-byte challenge and a 16-byte response"
            )
        try:
            key_id = bytes.fromhex(presentation.value)
            expected = respond(self._site_key, key_id, proof[:CHALLENGE_BYTES])
        except ValueError:
            return Refused(Reason.PROOF_INVALID, "the key id is not 8 bytes of hex")
        if not hmac.compare_digest(expected, proof[CHALLENGE_BYTES:]):
            return Refused(Reason.PROOF_INVALID, "the key's response does not verify")
        credential = lookup(presentation.kind, presentation.value)
        if credential is not None and not self._first_time(
            presentation.value, proof[:CHALLENGE_BYTES]
        ):
            return Refused(Reason.PROOF_REPLAYED, "replayed challenge")
        return Verified(credential, AssuranceLevel.HIGH)

    def _first_time(self, key: str, challenge: bytes) -> bool:
        """Remember ``challenge`` for an enrolled ``key``; False if it was already there."""
        challenges = self._seen.pop(key, None) or OrderedDict()
        self._seen[key] = challenges  # most recently presented last
        if len(self._seen) > KEYS_REMEMBERED:
            self._seen.popitem(last=False)
        if challenge in challenges:
            return False
        challenges[challenge] = None
        if len(challenges) > CHALLENGES_PER_KEY:
            challenges.popitem(last=False)
        return True
