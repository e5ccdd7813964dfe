"""PIN codes: what a keypad entry must look like, and the site's salted slow hash of one.

A PIN credential's value is ``scrypt(digits, site salt, n, r, p)`` (32 bytes, upper-case hex);
the digits are never stored, sent or logged. The salt is the site's, not the credential's: a
keypad gives the gateway nothing but the digits, so one hash must find the credential (a salt
per PIN would cost one slow hash per enrolled PIN at every entry). The cost of that hash is
what an attacker holding a copy of the cache pays per guess; the keypad lockout bounds the
guesses at the door.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor

from gateway import credentials
from gateway.model import PIN_DIGITS_MAX, PIN_DIGITS_MIN, CredentialKind, PinHashing

PIN_BYTES = 32


def pin_problem(digits: str) -> str | None:
    """Why ``digits`` is not a PIN (4 to 7 digits 0-9), or None; never repeats the digits."""
    if not digits.isascii() or not digits.isdigit():
        return "a PIN has digits 0-9 only"
    if not PIN_DIGITS_MIN <= len(digits) <= PIN_DIGITS_MAX:
        return f"a PIN has {PIN_DIGITS_MIN} to {PIN_DIGITS_MAX} digits, not {len(digits)}"
    return None


def scrypt_memory(hashing: PinHashing) -> int:
    """The bytes scrypt works in for ``hashing`` (its V array, and B for each of p)."""
    return 128 * hashing.r * (hashing.n + hashing.p + 2)


def hash_pin(digits: str, hashing: PinHashing) -> str:
    """The credential value of ``digits`` on a site hashing PINs with ``hashing`` (slow)."""
    problem = pin_problem(digits)
    if problem is not None:
        raise ValueError(problem)
    key = hashlib.scrypt(
        digits.encode(),
        salt=hashing.salt,
        n=hashing.n,
        r=hashing.r,
        p=hashing.p,
        maxmem=scrypt_memory(hashing) + (1 << 20),
        dklen=PIN_BYTES,
    )
    return key.hex().upper()


def parse_typed_credential(text: str, hashing: PinHashing | None) -> tuple[CredentialKind, str]:
    """``KIND:VALUE`` as an installer types it; ``pin:DIGITS`` is the PIN's hash on this site.

    For what-if decisions ("why was my PIN refused?"): slow for a PIN (one scrypt).
    """
    kind_text, sep, rest = text.partition(":")
    if sep and kind_text.strip().lower() == CredentialKind.PIN.value and rest.isdigit():
        problem = pin_problem(rest)
        if problem is not None:
            raise ValueError(problem)
        if hashing is None:
            raise ValueError("this site has no PIN codes (its site data has no pin_hashing)")
        return CredentialKind.PIN, hash_pin(rest, hashing)
    return credentials.parse_credential(text)


#: Every PIN hash of the process runs on this one thread: scrypt's memory (16 MiB at the default
#: cost, 128 MiB at the most the site data allows) is paid once at a time however many keypads,
#: what-if decisions and PIN settings come together, and a flood queues instead of exhausting
#: memory.
_HASHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pin-hash")


async def hash_off_loop(digits: str, hashing: PinHashing) -> str:
    """``hash_pin`` on the PIN hashing thread."""
    return await asyncio.get_running_loop().run_in_executor(_HASHING, hash_pin, digits, hashing)


async def parse_typed_credential_off_loop(
    text: str, hashing: PinHashing | None
) -> tuple[CredentialKind, str]:
    """``parse_typed_credential`` on the PIN hashing thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_HASHING, parse_typed_credential, text, hashing)
