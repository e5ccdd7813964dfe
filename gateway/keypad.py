"""Wrong-PIN lockout per keypad: after ``attempts`` wrong PINs in a row, ``lockout_s`` of refusal.

A PIN space is small (10^4 for four digits); without a lockout a patient visitor would try them
all. The count is per reader, so one keypad being attacked does not lock the others, and a
right PIN clears it. While locked, entries are refused without being hashed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Reader:
    failures: int = 0
    locked_until: float = 0.0


class KeypadGuard:
    """Counts wrong PINs per reader on a monotonic clock (seconds)."""

    def __init__(self, attempts: int = 3, lockout_s: float = 60.0) -> None:
        if attempts < 1 or lockout_s <= 0:
            raise ValueError("attempts must be at least 1 and lockout_s positive")
        self.attempts = attempts
        self.lockout_s = lockout_s
        self._readers: dict[str, _Reader] = {}

    def locked(self, reader: str, now: float) -> bool:
        """True while ``reader`` is locked out; a lockout that ran out clears the count."""
        state = self._readers.get(reader)
        if state is None or state.locked_until == 0.0:
            return False
        if now < state.locked_until:
            return True
        del self._readers[reader]
        return False

    def failed(self, reader: str, now: float) -> bool:
        """Count a wrong PIN at ``reader``; True when this one starts a lockout."""
        state = self._readers.setdefault(reader, _Reader())
        state.failures += 1
        if state.failures >= self.attempts:
            state.locked_until = now + self.lockout_s
            return True
        return False

    def succeeded(self, reader: str) -> None:
        """A right PIN at ``reader``: its count starts again."""
        self._readers.pop(reader, None)

    def remaining_s(self, reader: str, now: float) -> float:
        """Seconds left of ``reader``'s lockout (0 when not locked)."""
        state = self._readers.get(reader)
        return max(0.0, state.locked_until - now) if state else 0.0
