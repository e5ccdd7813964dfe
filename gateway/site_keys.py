"""The mechatronic site key: 16 bytes as 32 hex digits in a 0600 file in the state directory.

Keys are diversified from it (gateway/mechkeys.py), so it is a secret: the file must be readable
by the gateway's user alone, and its bytes never appear in a log or an error. Until gateways are
provisioned with it, the installer writes it (``install -m 600``); the virtual boards of the
embedded default get a random one made on first start, unique to that gateway.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from gateway.files import create_secret

SITE_KEY_FILE = "mech_site_key"
SITE_KEY_BYTES = 16


class SiteKeyError(Exception):
    """The site key file exists but cannot be used; the message says why (never the key)."""


def load_site_key(path: Path, *, create: bool = False) -> bytes | None:
    """The key in ``path``; None if absent (a new random one first, with ``create``)."""
    if create and not path.exists():
        _write_new(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise SiteKeyError(f"{path}: cannot read the site key: {err.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SiteKeyError(
                f"{path}: permissions {stat.filemode(mode)} let others read the site key; "
                f"allowed: readable by its owner only (chmod 600 {path})"
            )
        text = file.read(256).decode("ascii", "replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != SITE_KEY_BYTES:
        raise SiteKeyError(
            f"{path}: not a site key; expected {2 * SITE_KEY_BYTES} hex digits on one line"
        )
    return key


def _write_new(path: Path) -> None:
    """A fresh random key, unless another process made one meanwhile (files.create_secret)."""
    create_secret(path, (secrets.token_hex(SITE_KEY_BYTES) + "\n").encode("ascii"))
