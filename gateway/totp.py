"""Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP), as authenticator apps make them.

HMAC-SHA-1, 6 digits, 30 s steps and a 20-byte secret shown in base32: the parameters every
authenticator app assumes when an ``otpauth://`` URI names none. Pure functions: the caller
passes the time and keeps the last step it accepted (a code is good once).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from urllib.parse import quote

#: RFC 6238 section 4: T0 = 0 and X = 30 s; RFC 4226 section 5.3: 6 digits at least.
STEP_S = 30
DIGITS = 6
#: RFC 4226 section 4 R6 recommends 160 bits, the SHA-1 block size's HMAC key of choice.
SECRET_BYTES = 20
#: RFC 6238 section 5.2: accept the step before and after the current one (clock drift).
DRIFT_STEPS = 1
ISSUER = "Luckey gateway"


class TotpError(ValueError):
    """Text that is not a TOTP secret."""


def new_secret() -> bytes:
    """A fresh random secret."""
    return secrets.token_bytes(SECRET_BYTES)


def to_base32(secret: bytes) -> str:
    """The secret as authenticator apps take it: base32, no padding."""
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def from_base32(text: str) -> bytes:
    """The secret of ``text`` (case, spaces and padding ignored); TotpError if it is not one."""
    compact = re.sub(r"[\s=-]", "", text).upper()
    try:
        secret = base64.b32decode(compact + "=" * (-len(compact) % 8))
    except (binascii.Error, ValueError):
        raise TotpError("not a base32 secret") from None
    if not secret:
        raise TotpError("an empty secret")
    return secret


def grouped(text: str, size: int = 4) -> str:
    """``text`` in groups of ``size`` characters, for reading off a screen."""
    return " ".join(text[i : i + size] for i in range(0, len(text), size))


def step_at(unix_s: float, step_s: int = STEP_S) -> int:
    """The time step counter T of RFC 6238 section 4.2 at ``unix_s``."""
    return int(unix_s // step_s)


def hotp(secret: bytes, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226 section 5.3: the code of ``counter``, ``digits`` long, zero-padded."""
    mac = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F  # dynamic truncation
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def code_at(secret: bytes, unix_s: float, *, digits: int = DIGITS, step_s: int = STEP_S) -> str:
    """The code an authenticator shows at ``unix_s``."""
    return hotp(secret, step_at(unix_s, step_s), digits)


def accepted_step(
    secret: bytes,
    code: str,
    unix_s: float,
    *,
    last_step: int | None,
    digits: int = DIGITS,
    step_s: int = STEP_S,
) -> int | None:
    """The step ``code`` is the code of (now ±1 step, later than ``last_step``), or None.

    Every candidate is compared, in constant time, so the answer's timing says nothing of
    which step (if any) matched.
    """
    candidate = re.sub(r"\s", "", code)
    if len(candidate) != digits or not candidate.isascii() or not candidate.isdigit():
        return None
    now = step_at(unix_s, step_s)
    found: int | None = None
    for step in range(now - DRIFT_STEPS, now + DRIFT_STEPS + 1):
        matches = hmac.compare_digest(hotp(secret, step, digits).encode(), candidate.encode())
        if matches and (last_step is None or step > last_step) and found is None:
            found = step
    return found


def provisioning_uri(secret: bytes, username: str, issuer: str = ISSUER) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app imports (Key Uri Format)."""
    label = quote(f"{issuer}:{username}", safe=":@")
    return f"otpauth://totp/{label}?secret={to_base32(secret)}&issuer={quote(issuer, safe='')}"
