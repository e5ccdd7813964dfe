"""Mechatronic keys: the key's answer to the board's challenge, verified offline.

The board sends a fresh random 16-byte challenge to the key; the key answers with
AES-CMAC(K_key, challenge), where K_key is diversified from the site's mechatronic master key
(AN10922, M = key id ‖ "LUCKEYMK"). The board reports key id, challenge and response; the
gateway recomputes the answer, compares in constant time, and refuses a challenge it has already
seen from that key (a recorded exchange never verifies twice).
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
REPLAY_MEMORY = (
    4096  # challenges remembered; far more than keys presented between restarts of a board
)


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

    def __init__(self, site_key: bytes, *, replay_memory: int = REPLAY_MEMORY) -> None:
        if len(site_key) != 16:
            raise ValueError("the mechatronic site key must be 16 bytes")
        self._site_key = site_key
        self._seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._replay_memory = replay_memory

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
        challenge, response = proof[:CHALLENGE_BYTES], proof[CHALLENGE_BYTES:]
        expected = respond(self._site_key, bytes.fromhex(presentation.value), challenge)
        if not hmac.compare_digest(expected, response):
            return Refused(Reason.PROOF_INVALID, "the key's response does not verify")
        seen = (presentation.value, challenge)
        if seen in self._seen:
            return Refused(Reason.PROOF_INVALID, "replayed challenge")
        self._seen[seen] = None
        if len(self._seen) > self._replay_memory:
            self._seen.popitem(last=False)
        return Verified(lookup(presentation.kind, presentation.value), AssuranceLevel.HIGH)
