"""The local admin account: a one-time setup code, a scrypt-hashed password, sessions and CSRF.

There is no default password. While no admin exists the daemon makes a one-time setup code at
each start, kept only in memory and printed to its log (the journal): whoever can read the
console of the machine may create the admin. The password is hashed with scrypt (memory-hard,
32 MiB per hash) off the event loop. Sessions are random tokens kept as their SHA-256
(``gateway.sessions.Sessions``, a separate store from the members': a member login never
reaches an admin route). A cookie-authenticated request that changes anything must carry the
session's CSRF token, an HMAC of the session token under a key made at each start.

Two-factor authentication (TOTP, ``gateway.totp``) is optional: its secret lives in the account
file next to the password hash, with the last step accepted (a code is good once). A session
that proved the second factor (a login with a code, or the enrolment's confirmation) is
remembered by its token's SHA-256; where the site requires two factors, the web guard restricts
every other session to setting it up.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import totp
from gateway.files import write_atomically
from gateway.sessions import LoginLimiter, Session, Sessions, TooManyAttempts

_LOGGER = logging.getLogger(__name__)

ACCOUNT_FILE = "admin/account.json"
#: scrypt cost: n=2^15, r=8 needs 32 MiB and about 0.1 s here, a few tenths on a Pi 4.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
PASSWORD_CHARS = (12, 1024)
USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
SESSION_TTL_S = 8 * 3600.0
MAX_SESSIONS = 64
#: Failed logins (and wrong setup codes) allowed per username and per address in 15 minutes.
FAILURES_PER_USERNAME = 5
FAILURES_PER_ADDRESS = 20
SETUP_CODE_GROUPS = 3
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read off a screen
#: How long a TOTP secret being set up waits for its confirming code.
TOTP_ENROL_TTL_S = 600.0
#: A code longer than this is refused without looking at it.
MAX_CODE_CHARS = 16
REFUSED_LOGIN = "wrong username or password"
#: Once a code was given, a refusal never says whether the password or the code was wrong.
REFUSED_WITH_CODE = "wrong username, password or code"
TWO_FACTOR_REQUIRED = "two-factor authentication is required on this site; set it up at /account"


class AdminError(Exception):
    """A refused admin operation; ``str()`` is for the person, ``status`` for HTTP, ``field``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        field: str | None = None,
        retry_after_s: float | None = None,
        need: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.retry_after_s = retry_after_s
        #: What the client must add to try again (``"totp"``: the authenticator's code).
        self.need = need


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A scrypt hash with its parameters, as stored."""

    salt: bytes
    digest: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    @classmethod
    def make(cls, password: str) -> PasswordHash:
        """Hash ``password`` with a fresh 16-byte salt (blocking: call it in a thread)."""
        salt = secrets.token_bytes(16)
        return cls(salt, _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))

    def matches(self, password: str) -> bool:
        """True if ``password`` hashes to this digest (constant-time compare; blocking)."""
        candidate = _scrypt(password, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(candidate, self.digest)

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "hash": base64.b64encode(self.digest).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PasswordHash:
        """Parse the stored form; ValueError if it is not one."""
        if data.get("kdf") != "scrypt":
            raise ValueError("unknown password hash kind")
        n, r, p = (data.get(key) for key in ("n", "r", "p"))
        if not all(isinstance(v, int) and v > 0 for v in (n, r, p)):
            raise ValueError("bad scrypt parameters")
        assert isinstance(n, int)
        assert isinstance(r, int)
        assert isinstance(p, int)
        return cls(base64.b64decode(data["salt"]), base64.b64decode(data["hash"]), n, r, p)


@dataclass(slots=True)
class _Totp:
    """The account's TOTP secret and the last step a code was accepted for (never again)."""

    secret: bytes = dataclasses.field(repr=False)
    last_step: int | None
    enabled_at: str

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "secret": totp.to_base32(self.secret),
            "last_step": self.last_step,
            "enabled_at": self.enabled_at,
        }

    @classmethod
    def from_json(cls, data: object) -> _Totp:
        """Parse the stored form; ValueError if it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("secret"), str):
            raise ValueError("'totp' must hold a base32 'secret'")
        last_step = data.get("last_step")
        if last_step is not None and (
            isinstance(last_step, bool) or not isinstance(last_step, int)
        ):
            raise ValueError("'totp.last_step' must be an integer or null")
        return cls(totp.from_base32(data["secret"]), last_step, str(data.get("enabled_at", "")))


@dataclass(slots=True)
class _Account:
    """The account as loaded: its file's content (rewritten with each change) and parsed parts."""

    username: str
    password: PasswordHash
    stored: dict[str, Any]
    totp: _Totp | None = None


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """A TOTP secret being set up: what the authenticator app needs, and until when."""

    secret: bytes = dataclasses.field(repr=False)
    uri: str = dataclasses.field(repr=False)
    expires_at: float


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=SCRYPT_MAXMEM,
        dklen=32,
    )


def new_setup_code() -> str:
    """A one-time code like ``ABCD-EFGH-JKLM`` (60 bits, no look-alike characters)."""
    groups = (
        "".join(secrets.choice(_CODE_ALPHABET) for _ in range(4)) for _ in range(SETUP_CODE_GROUPS)
    )
    return "-".join(groups)


def _normalise_code(code: str) -> str:
    return re.sub(r"[\s-]", "", code).upper()


def check_new_credentials(username: object, password: object) -> tuple[str, str]:
    """``(username, password)`` if acceptable for a new admin; AdminError naming the field."""
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise AdminError("'username' must be 1 to 64 of A-Z a-z 0-9 . _ @ -", field="username")
    if not isinstance(password, str) or not (
        PASSWORD_CHARS[0] <= len(password) <= PASSWORD_CHARS[1]
    ):
        raise AdminError(
            f"'password' must be {PASSWORD_CHARS[0]} to {PASSWORD_CHARS[1]} characters "
            "(a passphrase of a few words is easiest)",
            field="password",
        )
    if password.casefold() == username.casefold():
        raise AdminError("'password' must not be the username", field="password")
    return username, password


class AdminAccounts:
    """The admin account file, the setup code while none exists, logins and sessions.

    ``clock``: the wall clock in Unix seconds (TOTP steps, the 10 minutes of a set-up).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        ttl_s: float = SESSION_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = state_dir / ACCOUNT_FILE
        self._account: _Account | None = self._load()
        self.setup_code: str | None = None if self._account else new_setup_code()
        self.sessions = Sessions(ttl_s=ttl_s, max_sessions=MAX_SESSIONS)
        self._limiter = LoginLimiter(
            per_email=FAILURES_PER_USERNAME, per_address=FAILURES_PER_ADDRESS
        )
        self._clock = clock
        self._csrf_key = secrets.token_bytes(32)
        self._lock = asyncio.Lock()
        self._hashing = asyncio.Lock()
        # SHA-256 of the tokens of sessions that proved the second factor, oldest first.
        self._two_factor: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        # TOTP secrets being set up, by the SHA-256 of their session's token.
        self._pending: dict[bytes, TotpEnrolment] = {}

    @property
    def setup_required(self) -> bool:
        """True until the admin account exists."""
        return self._account is None

    @property
    def totp_enabled(self) -> bool:
        """True if logging in takes a TOTP code as well as the password."""
        return self._account is not None and self._account.totp is not None

    def announce(self) -> None:
        """Print the setup code to the log (the journal) while no admin exists."""
        if self.setup_code is not None:
            _LOGGER.warning(
                "no admin account yet: open the web app and create it with the one-time "
                "setup code %s (a new code is made at each start until then)",
                self.setup_code,
            )

    async def create(
        self, code: object, username: object, password: object, address: str
    ) -> Session:
        """Create the admin with the setup code; the code is spent; a session for them."""
        async with self._lock:
            if self._account is not None or self.setup_code is None:
                raise AdminError("the admin account already exists; log in instead", status=409)
            # Per address: a shared budget would let anyone on the network lock the setup out.
            setup_key = f"setup {address}"
            self._check_budget(setup_key, address)
            if not isinstance(code, str) or not hmac.compare_digest(
                _normalise_code(code).encode("utf-8", "surrogatepass"),
                _normalise_code(self.setup_code).encode(),
            ):
                self._limiter.failed(setup_key, address)
                raise AdminError(
                    "wrong setup code: use the one the gateway printed to its log at its last "
                    "start (journalctl -u luckey-gateway)",
                    status=403,
                    field="setup_code",
                )
            name, secret = check_new_credentials(username, password)
            hashed = await asyncio.to_thread(PasswordHash.make, secret)
            account = _Account(
                name,
                hashed,
                {
                    "username": name,
                    "password": hashed.to_json(),
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            )
            await self._save(account)
            self._account = account
            self.setup_code = None
            self._limiter.succeeded(setup_key)
            _LOGGER.info("admin account %r created", name)
            return self.sessions.create(name, "", name)

    async def login(
        self, username: object, password: object, address: str, code: object = None
    ) -> Session:
        """A session for the right username, password and (with TOTP on) code.

        AdminError 401 otherwise (``need="totp"`` when only the code is missing), 429 while a
        budget is spent. The attempt is counted before the password is hashed.
        """
        account = self._account
        if account is None:
            raise AdminError("no admin account yet: create it with the setup code", status=409)
        if not isinstance(username, str) or not isinstance(password, str):
            raise AdminError("'username' and 'password' are required and must be strings")
        if code is not None and not isinstance(code, str):
            raise AdminError("'code' must be a string (the 6 digits of the authenticator app)")
        code = code or None  # an empty field is no code
        wrong = REFUSED_LOGIN if code is None else REFUSED_WITH_CODE
        if (
            len(username) > 64
            or len(password) > PASSWORD_CHARS[1]
            or (code is not None and len(code) > MAX_CODE_CHARS)
        ):
            raise AdminError(wrong, status=401)
        # One hash at a time, the budget checked and the attempt counted before hashing:
        # concurrent attempts can neither slip past the limit nor pile up 32 MiB hashes. A
        # wrong code costs the same budget as a wrong password.
        async with self._hashing:
            self._check_budget(username, address)
            self._limiter.failed(username, address)
            ok = await asyncio.to_thread(account.password.matches, password)
            same_name = hmac.compare_digest(
                username.encode("utf-8", "surrogatepass"), account.username.encode("utf-8")
            )
            if not ok or not same_name:
                _LOGGER.info("admin login refused from %s", address)
                raise AdminError(wrong, status=401)
            second = account.totp
            if second is not None:
                if code is None:
                    # The attempt stays counted: this answer says the password was right.
                    raise AdminError(
                        "this account has two-factor authentication: enter the 6-digit code "
                        "of the authenticator app",
                        status=401,
                        field="code",
                        need="totp",
                    )
                step = totp.accepted_step(
                    second.secret, code, self._clock(), last_step=second.last_step
                )
                if step is None:
                    _LOGGER.info("admin login refused from %s", address)
                    raise AdminError(wrong, status=401)
                # Taken before any await: the same code cannot pass twice, even at once.
                second.last_step = step
        if second is not None:
            async with self._lock:
                await self._save(account)
        self._limiter.succeeded(username)
        session = self.sessions.create(account.username, "", account.username)
        if second is not None:
            self._proved_second_factor(session.token)
        return session

    def logout(self, token: str) -> None:
        """End the session of ``token`` and forget its set-up and second factor."""
        self.sessions.revoke(token)
        key = _digest(token)
        self._two_factor.pop(key, None)
        self._pending.pop(key, None)

    def second_factor_ok(self, token: str) -> bool:
        """True if TOTP is on and the session of ``token`` proved it (login or enrolment)."""
        return self.totp_enabled and _digest(token) in self._two_factor

    def start_totp(self, session: Session) -> TotpEnrolment:
        """A new TOTP secret for ``session`` to confirm within 10 minutes (kept in memory)."""
        account = self._account
        if account is None:
            raise AdminError("no admin account yet: create it with the setup code", status=409)
        if account.totp is not None:
            raise AdminError(
                "two-factor authentication is already on; turn it off first to set up "
                "another authenticator",
                status=409,
            )
        now = self._clock()
        self._pending = {k: p for k, p in self._pending.items() if p.expires_at > now}
        while len(self._pending) >= MAX_SESSIONS:
            del self._pending[next(iter(self._pending))]
        secret = totp.new_secret()
        enrolment = TotpEnrolment(
            secret, totp.provisioning_uri(secret, account.username), now + TOTP_ENROL_TTL_S
        )
        key = _digest(session.token)
        self._pending.pop(key, None)  # a restart of the set-up goes to the end
        self._pending[key] = enrolment
        return enrolment

    async def confirm_totp(self, session: Session, code: object, address: str) -> None:
        """Turn TOTP on with the secret ``session`` started, if ``code`` is its current one."""
        async with self._lock:
            account = self._account
            if account is None:
                raise AdminError("no admin account yet", status=409)
            if account.totp is not None:
                raise AdminError("two-factor authentication is already on", status=409)
            key = _digest(session.token)
            pending = self._pending.get(key)
            now = self._clock()
            if pending is None or pending.expires_at <= now:
                self._pending.pop(key, None)
                raise AdminError(
                    "no set-up of two-factor authentication is waiting for a code (it lasts "
                    "10 minutes): start again",
                    status=409,
                )
            step = self._check_code(account.username, code, address, pending.secret, None)
            account.totp = _Totp(
                pending.secret, step, datetime.now(UTC).isoformat(timespec="seconds")
            )
            try:
                await self._save(account)
            except BaseException:
                account.totp = None
                raise
            del self._pending[key]
            self._limiter.succeeded(_totp_key(account.username))
            self._proved_second_factor(session.token)
            # Sessions signed in with the password alone would keep what the second factor
            # now guards: they end, and sign in again with a code.
            ended = self.sessions.revoke_others(account.username, session.token)
            _LOGGER.info(
                "two-factor authentication turned on for admin %r; %d other session(s) ended",
                account.username,
                ended,
            )

    async def disable_totp(self, code: object, address: str, *, required: bool) -> None:
        """Turn TOTP off with a current code; 409 while the site requires it."""
        async with self._lock:
            account = self._account
            if required:
                raise AdminError(
                    "two-factor authentication is required on this site: it cannot be turned off",
                    status=409,
                )
            if account is None or account.totp is None:
                raise AdminError("two-factor authentication is not on", status=409)
            second = account.totp
            step = self._check_code(
                account.username, code, address, second.secret, second.last_step
            )
            second.last_step = step
            account.totp = None
            try:
                await self._save(account)
            except BaseException:
                account.totp = second
                raise
            self._two_factor.clear()
            self._limiter.succeeded(_totp_key(account.username))
            _LOGGER.info("two-factor authentication turned off for admin %r", account.username)

    def csrf_token(self, session_token: str) -> str:
        """The CSRF token that goes with a session token."""
        return hmac.new(self._csrf_key, session_token.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session_token: str, presented: str | None) -> bool:
        """True if ``presented`` is the session's CSRF token (constant-time)."""
        if not presented:
            return False
        return hmac.compare_digest(self.csrf_token(session_token).encode(), presented.encode())

    def _check_code(
        self, username: str, code: object, address: str, secret: bytes, last_step: int | None
    ) -> int:
        """The step of a right ``code``; AdminError 400 (counted) or 429 otherwise."""
        if not isinstance(code, str) or not code.strip():
            raise AdminError(
                "'code' is required: the 6 digits the authenticator app shows", field="code"
            )
        key = _totp_key(username)
        self._check_budget(key, address)
        self._limiter.failed(key, address)
        step = None
        if len(code) <= MAX_CODE_CHARS:
            step = totp.accepted_step(secret, code, self._clock(), last_step=last_step)
        if step is None:
            raise AdminError(
                "wrong code: enter the 6 digits the authenticator app shows now (each code "
                "works once)",
                field="code",
            )
        return step

    def _proved_second_factor(self, token: str) -> None:
        # Bounded like the sessions: forgetting one only restricts a session, never widens one.
        while len(self._two_factor) >= 2 * MAX_SESSIONS:
            self._two_factor.popitem(last=False)
        self._two_factor[_digest(token)] = None

    async def _save(self, account: _Account) -> None:
        """Write the account file (0600, atomically) as ``account`` holds it now."""
        stored = dict(account.stored)
        stored["username"] = account.username
        stored["password"] = account.password.to_json()
        if account.totp is None:
            stored.pop("totp", None)
        else:
            stored["totp"] = account.totp.to_json()
        await asyncio.to_thread(self._write, json.dumps(stored, indent=2))
        account.stored = stored

    def _write(self, text: str) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(self._path, text)

    def _check_budget(self, key: str, address: str) -> None:
        try:
            self._limiter.check(key, address)
        except TooManyAttempts as err:
            raise AdminError(str(err), status=429, retry_after_s=err.retry_after_s) from None

    def _load(self) -> _Account | None:
        """The stored account, or None; an unreadable file is an error, never "no admin"."""
        try:
            data = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            # Treating a damaged file as "no admin" would hand the gateway to whoever sees the
            # next setup code; refusing to start says what to repair instead.
            raise AdminError(
                f"{self._path}: cannot read the admin account ({err}); repair it, or remove it "
                "to create the admin again with a setup code"
            ) from err
        try:
            name = data["username"]
            hashed = PasswordHash.from_json(data["password"])
            # A damaged second factor is not "no second factor": refuse, as for the password.
            second = _Totp.from_json(data["totp"]) if "totp" in data else None
        except (KeyError, TypeError, ValueError) as err:
            raise AdminError(f"{self._path}: not an admin account file ({err})") from err
        if os.stat(self._path).st_mode & 0o077:
            _LOGGER.warning("%s is readable by others: chmod 600 it", self._path)
        return _Account(str(name), hashed, data, second)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _totp_key(username: str) -> str:
    """The budget wrong codes of a signed-in admin (enrolment, turning off) are counted under."""
    return f"totp {username}"
