"""Single-use challenges issued by the gateway, so a recorded proof never verifies twice.

A reader driver asks for a fresh random challenge before an exchange (an NFC tag's RndA, a BLE
transaction nonce); the verifier later *redeems* it: only a challenge this gateway issued, not
yet redeemed and not older than its lifetime, is accepted. Bounded: at most ``capacity``
challenges are outstanding; issuing beyond that forgets the oldest (its exchange then fails,
which is a denial, never a grant). Safe to use from several threads (an NFC reader's thread
issues, the event loop redeems).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

CHALLENGE_LIFETIME_S = 10.0
CAPACITY = 1024


class ChallengeBook:
    """Issues random challenges and redeems each at most once, within its lifetime."""

    def __init__(
        self,
        *,
        lifetime_s: float = CHALLENGE_LIFETIME_S,
        capacity: int = CAPACITY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lifetime = lifetime_s
        self._capacity = capacity
        self._monotonic = monotonic
        self._issued: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self, size: int = 16) -> bytes:
        """A fresh random challenge of ``size`` bytes, outstanding until redeemed or expired."""
        challenge = secrets.token_bytes(size)
        with self._lock:
            self._issued[challenge] = self._monotonic() + self._lifetime
            while len(self._issued) > self._capacity:
                self._issued.popitem(last=False)
        return challenge

    def redeem(self, challenge: bytes) -> bool:
        """True once for a challenge issued here and still fresh; False otherwise."""
        with self._lock:
            deadline = self._issued.pop(challenge, None)
        return deadline is not None and self._monotonic() <= deadline

    def __len__(self) -> int:
        return len(self._issued)
