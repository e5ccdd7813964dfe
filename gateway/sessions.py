"""Login failure budgets and server-side sessions, shared by admin and member logins.

A session is a random token the gateway made; only its SHA-256 is kept, so a memory dump holds
no usable token. Failed logins are counted per account and per client address in a sliding
window, bounded in how many of each are tracked.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

_LOGGER = logging.getLogger(__name__)

#: Failed logins allowed per account, and per client address, within the window.
FAILURES_PER_EMAIL = 5
FAILURES_PER_ADDRESS = 20
FAILURE_WINDOW_S = 900.0
#: Keys (accounts, addresses) tracked at most per budget; the least recently failing is forgotten.
MAX_TRACKED_KEYS = 10_000
SESSION_TTL_S = 3600.0
MAX_SESSIONS = 10_000
#: A token longer than this is not one of ours: refused without hashing it.
MAX_TOKEN_CHARS = 128


class TooManyAttempts(Exception):
    """A failure budget is spent; ``retry_after_s`` says when the next attempt may be made."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed logins; try again in {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


# --- failure budgets ------------------------------------------------------------------------------


class _FailureWindow:
    """Failure times per key in a sliding window, at most ``limit`` each and ``max_keys`` keys."""

    def __init__(self, limit: int, window_s: float, max_keys: int) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_keys = max_keys
        # Least recently failing first: the key forgotten when the table is full.
        self._times: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._times)

    def retry_after_s(self, key: str, now: float) -> float | None:
        """How long until ``key`` may try again, or None if its budget is not spent."""
        times = self._times.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if not times:
            del self._times[key]
            return None
        if len(times) < self._limit:
            return None
        return times[0] + self._window_s - now

    def add(self, key: str, now: float) -> None:
        """Count one failure for ``key``."""
        times = self._times.get(key)
        if times is None:
            if len(self._times) >= self._max_keys:
                # Evicting takes a flood of distinct failing keys, which the other budget
                # (addresses for emails, emails for addresses) keeps slow.
                self._times.popitem(last=False)
            # Only the last ``limit`` failures can decide anything: older ones need not be kept.
            times = self._times[key] = collections.deque(maxlen=self._limit)
        else:
            self._times.move_to_end(key)
        times.append(now)

    def clear(self, key: str) -> None:
        """Forget ``key``'s failures."""
        self._times.pop(key, None)


def account_key(email: str) -> str:
    """The key an account's failures are counted under: trimmed and case-folded."""
    return email.strip().casefold()


class LoginLimiter:
    """Counts failed logins per email (case-folded) and per client address in a sliding window."""

    def __init__(
        self,
        *,
        per_email: int = FAILURES_PER_EMAIL,
        per_address: int = FAILURES_PER_ADDRESS,
        window_s: float = FAILURE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_TRACKED_KEYS,
    ) -> None:
        if per_email < 1 or per_address < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("budgets, window and max_keys must be positive")
        self._clock = clock
        self._emails = _FailureWindow(per_email, window_s, max_keys)
        self._addresses = _FailureWindow(per_address, window_s, max_keys)

    @property
    def tracked(self) -> tuple[int, int]:
        """How many emails and addresses have failures on record."""
        return len(self._emails), len(self._addresses)

    def check(self, email: str, address: str) -> None:
        """Raise TooManyAttempts if either budget is spent (then the password must not be sent)."""
        now = self._clock()
        waits = [
            self._emails.retry_after_s(account_key(email), now),
            self._addresses.retry_after_s(address, now),
        ]
        spent = [wait for wait in waits if wait is not None]
        if spent:
            raise TooManyAttempts(max(spent))

    def failed(self, email: str, address: str) -> None:
        """Count a refused password against both budgets."""
        now = self._clock()
        self._emails.add(account_key(email), now)
        self._addresses.add(address, now)

    def succeeded(self, email: str) -> None:
        """Clear the email's failures (not the address's: one good account must not reset it)."""
        self._emails.clear(account_key(email))


# --- sessions -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in member; ``expires_at`` is monotonic, ``expires_at_utc`` for API answers."""

    token: str = field(repr=False)
    user_id: str
    member_id: str
    name: str
    expires_at: float
    expires_at_utc: datetime


@dataclass(frozen=True, slots=True)
class _Held:
    """A session as kept: everything but the token."""

    user_id: str
    member_id: str
    name: str
    expires_at: float
    expires_at_utc: datetime

    def session(self, token: str) -> Session:
        return Session(
            token, self.user_id, self.member_id, self.name, self.expires_at, self.expires_at_utc
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Sessions:
    """Gateway-issued member sessions, kept by the SHA-256 of their token; bounded in number."""

    def __init__(
        self,
        *,
        ttl_s: float = SESSION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utc_now,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        if ttl_s <= 0 or max_sessions < 1:
            raise ValueError("ttl_s and max_sessions must be positive")
        self.ttl_s = ttl_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._max = max_sessions
        # Oldest first: with one lifetime for all, also the first to expire. A lookup hashes
        # the presented token and finds the digest by dict lookup, so no secret is compared
        # byte by byte with attacker-chosen input.
        self._held: dict[bytes, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def create(self, user_id: str, member_id: str, name: str) -> Session:
        """A new session for ``user_id``; the oldest is dropped when ``max_sessions`` are held."""
        self._purge()
        while len(self._held) >= self._max:
            del self._held[next(iter(self._held))]
            _LOGGER.debug("member sessions full; the oldest was dropped")
        token = secrets.token_urlsafe(32)
        held = _Held(
            user_id=user_id,
            member_id=member_id,
            name=name,
            expires_at=self._clock() + self.ttl_s,
            expires_at_utc=self._wall_clock().astimezone(UTC) + timedelta(seconds=self.ttl_s),
        )
        self._held[_digest(token)] = held
        return held.session(token)

    def get(self, token: str) -> Session | None:
        """The session of ``token``; None when unknown, revoked or expired."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        key = _digest(token)
        held = self._held.get(key)
        if held is None:
            return None
        if self._clock() >= held.expires_at:
            del self._held[key]
            return None
        return held.session(token)

    def revoke(self, token: str) -> None:
        """End the session of ``token`` (nothing if there is none)."""
        if token and len(token) <= MAX_TOKEN_CHARS:
            self._held.pop(_digest(token), None)

    def revoke_user(self, user_id: str) -> int:
        """End every session of ``user_id`` (removed, or lost access); how many there were."""
        keys = [key for key, held in self._held.items() if held.user_id == user_id]
        for key in keys:
            del self._held[key]
        return len(keys)

    def revoke_others(self, user_id: str, keep: str) -> int:
        """End every session of ``user_id`` but the one of token ``keep``; how many ended."""
        kept = _digest(keep)
        keys = [k for k, held in self._held.items() if held.user_id == user_id and k != kept]
        for key in keys:
            del self._held[key]
        return len(keys)

    def _purge(self) -> None:
        """Drop expired sessions from the front (oldest first, so the first live one stops it)."""
        now = self._clock()
        while self._held:
            key = next(iter(self._held))
            if now < self._held[key].expires_at:
                return
            del self._held[key]
