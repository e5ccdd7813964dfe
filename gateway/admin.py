"""The local admin account: a one-time setup code, a scrypt-hashed password, sessions and CSRF.

There is no default password. While no admin exists the daemon makes a one-time setup code at
each start, kept only in memory and printed to its log (the journal): whoever can read the
console of the machine may create the admin. The password is hashed with scrypt (memory-hard,
32 MiB per hash) off the event loop. Sessions are random tokens kept as their SHA-256
(``gateway.sessions.Sessions``, a separate store from the members': a member login never
reaches an admin route). A cookie-authenticated request that changes anything must carry the
session's CSRF token, an HMAC of the session token under a key made at each start.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


class AdminError(Exception):
    """A refused admin operation; ``str()`` is for the person, ``status`` for HTTP, ``field``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        field: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.retry_after_s = retry_after_s


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
    """The admin account file, the setup code while none exists, logins and sessions."""

    def __init__(self, state_dir: Path, *, ttl_s: float = SESSION_TTL_S) -> None:
        self._path = state_dir / ACCOUNT_FILE
        self._account: tuple[str, PasswordHash] | None = self._load()
        self.setup_code: str | None = None if self._account else new_setup_code()
        self.sessions = Sessions(ttl_s=ttl_s, max_sessions=MAX_SESSIONS)
        self._limiter = LoginLimiter(
            per_email=FAILURES_PER_USERNAME, per_address=FAILURES_PER_ADDRESS
        )
        self._csrf_key = secrets.token_bytes(32)
        self._lock = asyncio.Lock()
        self._hashing = asyncio.Lock()

    @property
    def setup_required(self) -> bool:
        """True until the admin account exists."""
        return self._account is None

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
            account = {
                "username": name,
                "password": hashed.to_json(),
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            await asyncio.to_thread(self._write, json.dumps(account, indent=2))
            self._account = (name, hashed)
            self.setup_code = None
            self._limiter.succeeded(setup_key)
            _LOGGER.info("admin account %r created", name)
            return self.sessions.create(name, "", name)

    async def login(self, username: object, password: object, address: str) -> Session:
        """A session for the right username and password; AdminError (401/429) otherwise."""
        if self._account is None:
            raise AdminError("no admin account yet: create it with the setup code", status=409)
        if not isinstance(username, str) or not isinstance(password, str):
            raise AdminError("'username' and 'password' are required and must be strings")
        if len(username) > 64 or len(password) > PASSWORD_CHARS[1]:
            raise AdminError("wrong username or password", status=401)
        name, hashed = self._account
        # One hash at a time, the budget checked and the attempt counted before hashing:
        # concurrent attempts can neither slip past the limit nor pile up 32 MiB hashes.
        async with self._hashing:
            self._check_budget(username, address)
            self._limiter.failed(username, address)
            ok = await asyncio.to_thread(hashed.matches, password)
        same_name = hmac.compare_digest(
            username.encode("utf-8", "surrogatepass"), name.encode("utf-8")
        )
        if not ok or not same_name:
            _LOGGER.info("admin login refused from %s", address)
            raise AdminError("wrong username or password", status=401)
        self._limiter.succeeded(username)
        return self.sessions.create(name, "", name)

    def csrf_token(self, session_token: str) -> str:
        """The CSRF token that goes with a session token."""
        return hmac.new(self._csrf_key, session_token.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session_token: str, presented: str | None) -> bool:
        """True if ``presented`` is the session's CSRF token (constant-time)."""
        if not presented:
            return False
        return hmac.compare_digest(self.csrf_token(session_token).encode(), presented.encode())

    def _write(self, text: str) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(self._path, text)

    def _check_budget(self, key: str, address: str) -> None:
        try:
            self._limiter.check(key, address)
        except TooManyAttempts as err:
            raise AdminError(str(err), status=429, retry_after_s=err.retry_after_s) from None

    def _load(self) -> tuple[str, PasswordHash] | None:
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
        except (KeyError, TypeError, ValueError) as err:
            raise AdminError(f"{self._path}: not an admin account file ({err})") from err
        if os.stat(self._path).st_mode & 0o077:
            _LOGGER.warning("%s is readable by others: chmod 600 it", self._path)
        return str(name), hashed
