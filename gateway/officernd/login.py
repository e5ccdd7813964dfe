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
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from gateway.officernd.client import (
    SIGNIN,
    BadCredentials,
    MissingScope,
    OfficeRnDClient,
    OfficeRnDError,
    redact_email,
)
from gateway.sessions import (
    LoginLimiter,
    Session,
    Sessions,
    TooManyAttempts,
    account_key,
)

_LOGGER = logging.getLogger(__name__)

#: A login that OfficeRnD has not answered within this is given up (the client retries inside).
LOGIN_TIMEOUT_S = 30.0
#: Logins from one address waiting on OfficeRnD at once; more are refused, not queued.
MAX_PENDING_PER_ADDRESS = 4
EMAIL_CHARS = (3, 254)  # RFC 5321 §4.5.3.1.3: a path holds at most 256 octets with its brackets
PASSWORD_CHARS = (1, 1024)

REFUSED_MESSAGE = "wrong email or password"
NOT_ACTIVATED = "OfficeRnD is not activated on this gateway"
UNREACHABLE = "OfficeRnD could not be reached to check your password; try again in a few minutes"
NO_MEMBER = "OfficeRnD's answer did not name the member"
NOT_SYNCED = "your OfficeRnD account is not synced to this gateway yet (or has no access here)"


class LoginRefused(Exception):
    """A login that did not make a session; ``str()`` is for the member, ``status`` for HTTP."""

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


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
        key = account_key(email)
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
