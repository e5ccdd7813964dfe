"""Members log in with their OfficeRnD email and password; the gateway issues its own sessions.

OfficeRnD has no "sign in with OfficeRnD" for members, only ``POST /auth/signin`` (OFFICERND.md,
"Member sign-in"): the password passes through to it once per attempt and is never stored,
logged or put in an exception. Failed attempts are counted per email and per client address,
and a spent budget refuses further attempts before any password leaves the gateway: OfficeRnD
must not become a password oracle reached through this gateway. A session is a random token the
gateway made; only its SHA-256 is kept, so a memory dump holds no usable token.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.officernd.client import (
    SIGNIN,
    BadCredentials,
    MissingScope,
    OfficeRnDClient,
    OfficeRnDError,
    redact_email,
)

_LOGGER = logging.getLogger(__name__)

#: Failed logins allowed per email, and per client address, within the window.
FAILURES_PER_EMAIL = 5
FAILURES_PER_ADDRESS = 20
FAILURE_WINDOW_S = 900.0
#: Keys (emails, addresses) tracked at most per budget; the least recently failing is forgotten.
MAX_TRACKED_KEYS = 10_000
SESSION_TTL_S = 3600.0
MAX_SESSIONS = 10_000
#: A login that OfficeRnD has not answered within this is given up (the client retries inside).
LOGIN_TIMEOUT_S = 30.0
#: Logins from one address waiting on OfficeRnD at once; more are refused, not queued.
MAX_PENDING_PER_ADDRESS = 4
EMAIL_CHARS = (3, 254)  # RFC 5321 §4.5.3.1.3: a path holds at most 256 octets with its brackets
PASSWORD_CHARS = (1, 1024)
#: A token longer than this is not one of ours: refused without hashing it.
MAX_TOKEN_CHARS = 128

REFUSED_MESSAGE = "wrong email or password"
NOT_ACTIVATED = "OfficeRnD is not activated on this gateway"
UNREACHABLE = "OfficeRnD could not be reached to check your password; try again in a few minutes"
NO_MEMBER = "OfficeRnD's answer did not name the member"
NOT_SYNCED = "your OfficeRnD account is not synced to this gateway yet (or has no access here)"


class TooManyAttempts(Exception):
    """A failure budget is spent; ``retry_after_s`` says when the next attempt may be made."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed logins; try again in {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


class LoginRefused(Exception):
    """A login that did not make a session; ``str()`` is for the member, ``status`` for HTTP."""

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
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


def _email_key(email: str) -> str:
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
            self._emails.retry_after_s(_email_key(email), now),
            self._addresses.retry_after_s(address, now),
        ]
        spent = [wait for wait in waits if wait is not None]
        if spent:
            raise TooManyAttempts(max(spent))

    def failed(self, email: str, address: str) -> None:
        """Count a refused password against both budgets."""
        now = self._clock()
        self._emails.add(_email_key(email), now)
        self._addresses.add(address, now)

    def succeeded(self, email: str) -> None:
        """Clear the email's failures (not the address's: one good account must not reset it)."""
        self._emails.clear(_email_key(email))


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

    def _purge(self) -> None:
        """Drop expired sessions from the front (oldest first, so the first live one stops it)."""
        now = self._clock()
        while self._held:
            key = next(iter(self._held))
            if now < self._held[key].expires_at:
                return
            del self._held[key]


# --- logging in -----------------------------------------------------------------------------------


def member_id_of(profile: Mapping[str, Any]) -> str | None:
    """The member id in a sign-in answer: ``member`` (an id or an object), else ``_id``."""
    member = profile.get("member")
    if isinstance(member, Mapping):
        member = member.get("_id")
    if not isinstance(member, str) or not member:
        member = profile.get("_id")
    return member if isinstance(member, str) and member else None


def _name_of(profile: Mapping[str, Any], fallback: str) -> str:
    name = profile.get("name")
    member = profile.get("member")
    if not isinstance(name, str) and isinstance(member, Mapping):
        name = member.get("name")
    return name.strip()[:256] if isinstance(name, str) and name.strip() else fallback


def _check_input(email: str, password: str) -> None:
    """Raise LoginRefused (400) unless both look like something OfficeRnD could accept."""
    low, high = EMAIL_CHARS
    if (
        not low <= len(email) <= high
        or "@" not in email
        # Whitespace or control characters: not an address, and nothing for a log line.
        or any(ch.isspace() or not ch.isprintable() for ch in email)
    ):
        raise LoginRefused(
            f"'email' must be an email address ({low} to {high} characters, with an @)",
            status=400,
        )
    low, high = PASSWORD_CHARS
    if not low <= len(password) <= high:
        raise LoginRefused(f"'password' must be {low} to {high} characters", status=400)


class MemberLogin:
    """Checks a member's OfficeRnD email and password and opens a gateway session."""

    def __init__(
        self,
        client: Callable[[], OfficeRnDClient | None],
        sessions: Sessions,
        limiter: LoginLimiter,
        *,
        user_id_prefix: str = "ornd-",
        user_exists: Callable[[str], bool],
        timeout_s: float = LOGIN_TIMEOUT_S,
    ) -> None:
        """``client()``: the connector's client, None while OfficeRnD is not activated."""
        self.sessions = sessions
        self._client = client
        self._limiter = limiter
        self._prefix = user_id_prefix
        self._user_exists = user_exists
        self._timeout_s = timeout_s
        # Attempts waiting on OfficeRnD: the budgets are checked before an attempt and counted
        # after it, so without these a burst of parallel guesses would all pass the check.
        self._pending_emails: set[str] = set()
        self._pending_addresses: collections.Counter[str] = collections.Counter()
        self._trouble: str | None = None  # the OfficeRnD failure being logged (transitions only)

    async def login(self, email: str, password: str, address: str) -> Session:
        """A session for the member whose password OfficeRnD accepts; LoginRefused otherwise."""
        email = email.strip()
        _check_input(email, password)
        who = redact_email(email)
        try:
            self._limiter.check(email, address)
        except TooManyAttempts as err:
            _LOGGER.warning("login of %s from %s refused: %s", who, address, err)
            raise LoginRefused(
                f"too many failed logins; try again in {_minutes(err.retry_after_s)}",
                status=429,
                retry_after_s=err.retry_after_s,
            ) from None
        client = self._client()
        if client is None:
            raise LoginRefused(NOT_ACTIVATED, status=503)
        key = _email_key(email)
        if key in self._pending_emails or (
            self._pending_addresses[address] >= MAX_PENDING_PER_ADDRESS
        ):
            raise LoginRefused(
                "a login is already in progress; try again", status=429, retry_after_s=1.0
            )
        self._pending_emails.add(key)
        self._pending_addresses[address] += 1
        try:
            profile = await self._sign_in(client, email, password, address)
        finally:
            self._pending_emails.discard(key)
            self._pending_addresses[address] -= 1
            if self._pending_addresses[address] <= 0:
                del self._pending_addresses[address]
        return self._open(profile, who)

    async def _sign_in(
        self, client: OfficeRnDClient, email: str, password: str, address: str
    ) -> dict[str, Any]:
        """OfficeRnD's answer to the password, the failure counted; LoginRefused otherwise."""
        who = redact_email(email)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._ready(client)
                profile = await client.sign_in(email, password)
        except BadCredentials:
            self._limiter.failed(email, address)
            _LOGGER.info("login of %s from %s refused: wrong email or password", who, address)
            raise LoginRefused(REFUSED_MESSAGE, status=401) from None
        except MissingScope as err:
            self._unavailable(err)
            scope = err.scope or SIGNIN
            raise LoginRefused(
                f"OfficeRnD login is not available: the OfficeRnD application lacks the "
                f"permission {scope}; tell the site operator",
                status=503,
            ) from None
        except (OfficeRnDError, TimeoutError) as err:
            self._unavailable(err)
            retry_after_s = getattr(err, "retry_after_s", None)
            raise LoginRefused(UNREACHABLE, status=503, retry_after_s=retry_after_s) from None
        if self._trouble is not None:
            _LOGGER.info("OfficeRnD checks member passwords again")
            self._trouble = None
        self._limiter.succeeded(email)
        return profile

    async def _ready(self, client: OfficeRnDClient) -> None:
        """Get the application's token first, so a refused Client Secret is not a wrong password."""
        try:
            await client.token()
        except BadCredentials as err:
            self._unavailable(err)
            raise LoginRefused(
                "OfficeRnD refused this gateway's application credentials; tell the site operator",
                status=503,
            ) from None

    def _unavailable(self, err: BaseException) -> None:
        """Log why OfficeRnD could not check a password: first of a run WARNING, repeats DEBUG."""
        text = str(err) or "no answer in time"
        level = logging.DEBUG if self._trouble is not None else logging.WARNING
        self._trouble = text
        _LOGGER.log(level, "member login unavailable: %s", text)

    def _open(self, profile: Mapping[str, Any], who: str) -> Session:
        """The session for an accepted sign-in, if the member is a user here."""
        member_id = member_id_of(profile)
        if member_id is None:
            _LOGGER.warning("OfficeRnD accepted %s but its answer names no member", who)
            raise LoginRefused(NO_MEMBER, status=502)
        user_id = self._prefix + member_id
        if not self._user_exists(user_id):
            _LOGGER.info("login of %s refused: no user %s on this gateway", who, user_id)
            raise LoginRefused(NOT_SYNCED, status=403)
        session = self.sessions.create(user_id, member_id, _name_of(profile, user_id))
        _LOGGER.info("member %s logged in as user %s", who, user_id)
        return session


def _minutes(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return "1 minute" if minutes <= 1 else f"{minutes} minutes"
