"""The one reconnect policy every upstream link uses: capped exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of ``base * 2**n`` capped at ``cap``, drawn with "full jitter"; reset on success."""

    base_s: float = 1.0
    cap_s: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempts, 32)))
        self.attempts += 1
        # Full jitter spreads a fleet's reconnects after a broker restart (AWS architecture blog).
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.attempts = 0
