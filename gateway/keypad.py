"""Wrong-PIN lockout per keypad: after ``attempts`` entries in a row that open nothing, a lockout.

A PIN space is small (10^4 for four digits); without a lockout a patient visitor would try them
all. The count is per reader, so one keypad being attacked does not lock the others. Only a
granted entry clears it: a right PIN refused here (a suspended user's, one for other doors or
other hours) counts like a wrong one, or knowing one PIN would let its holder guess the others
for ever. Each lockout in a row lasts twice the one before (up to ``LOCKOUT_MAX_S``), so the
whole space of four digits takes months rather than days. While locked, entries are refused
without being hashed.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The longest a lockout lasts, however many came before it (seconds).
LOCKOUT_MAX_S = 3600.0


@dataclass(slots=True)
class _Reader:
    failures: int = 0
    locked_until: float = 0.0
    lockouts: int = 0  # lockouts in a row since the last grant


class KeypadGuard:
    """Counts refused entries per reader on a monotonic clock (seconds)."""

    def __init__(self, attempts: int = 3, lockout_s: float = 60.0) -> None:
        if attempts < 1 or lockout_s <= 0:
            raise ValueError("attempts must be at least 1 and lockout_s positive")
        self.attempts = attempts
        self.lockout_s = lockout_s
        self._readers: dict[str, _Reader] = {}

    def locked(self, reader: str, now: float) -> bool:
        """True while ``reader`` is locked out; a lockout that ran out starts a fresh count."""
        state = self._readers.get(reader)
        if state is None or state.locked_until == 0.0:
            return False
        if now < state.locked_until:
            return True
        state.failures = 0
        state.locked_until = 0.0  # the lockouts in a row are remembered until a grant
        return False

    def failed(self, reader: str, now: float) -> float | None:
        """Count an entry that opened nothing; the lockout's length if this one starts one."""
        state = self._readers.setdefault(reader, _Reader())
        state.failures += 1
        if state.failures < self.attempts:
            return None
        doubled = self.lockout_s * (1 << min(state.lockouts, 20))
        length = min(doubled, max(self.lockout_s, LOCKOUT_MAX_S))
        state.locked_until = now + length
        state.lockouts += 1
        return length

    def granted(self, reader: str) -> None:
        """An entry at ``reader`` opened the door: its count and its lockouts start again."""
        self._readers.pop(reader, None)

    def remaining_s(self, reader: str, now: float) -> float:
        """Seconds left of ``reader``'s lockout (0 when not locked)."""
        state = self._readers.get(reader)
        return max(0.0, state.locked_until - now) if state else 0.0
