"""A diagnostics bundle for support: what the gateway knows about itself, secrets left out.

A zip of JSON files: versions, the configuration (any key naming a secret, password, token or
key masked), health, doors, the recent events (credential values are already only hinted at in
events), OfficeRnD's status, and the state directory's listing (names, sizes, modes: never the
contents of a file, so no key, cache or outbox row leaves the gateway this way).
"""

from __future__ import annotations

import io
import json
import platform
import sys
import zipfile
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.config import config_to_dict
from gateway.outbox import event_to_json

if TYPE_CHECKING:
    from gateway.app import Gateway

MASK = "(redacted)"
_SECRET_WORDS = ("secret", "password", "token", "key")
#: The packages whose versions matter when something misbehaves.
PACKAGES = ("aiohttp", "aiosqlite", "paho-mqtt", "pyserial", "bleak", "nfcpy", "cryptography")
#: Files listed at most (a state directory holds a handful).
MAX_LISTED = 500


def redacted(value: Any) -> Any:
    """``value`` with every mapping entry whose key names a secret masked, recursively."""
    if isinstance(value, dict):
        return {
            key: MASK if _names_secret(str(key)) and not _is_path_setting(str(key)) else redacted(v)
            for key, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value


def _names_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _is_path_setting(key: str) -> bool:
    # Where a key file lives (``cloud.key_file``) is useful and not secret; its content is.
    return key.endswith(("_file", "_dir", "_path"))


def state_listing(state_dir: Path) -> list[dict[str, Any]]:
    """Names, sizes and modes of the files under ``state_dir`` (never their contents)."""
    if not state_dir.is_dir():
        return []
    listing = []
    for path in sorted(state_dir.rglob("*"))[:MAX_LISTED]:
        try:
            info = path.lstat()
        except OSError:
            continue
        listing.append(
            {
                "path": str(path.relative_to(state_dir)),
                "size": info.st_size,
                "mode": oct(info.st_mode & 0o7777),
                "kind": "dir" if path.is_dir() else "link" if path.is_symlink() else "file",
            }
        )
    return listing


def versions() -> dict[str, Any]:
    """The gateway's, Python's and the main libraries' versions, and the platform."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {
        "luckey_gateway": __version__,
        "python": sys.version,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": found,
    }


async def bundle(gw: Gateway, health: dict[str, Any], now: datetime) -> bytes:
    """The zip, built in memory (a few tens of KB)."""
    officernd = gw.officernd.status()
    files: dict[str, Any] = {
        "versions.json": versions(),
        "config.json": redacted(config_to_dict(gw.config)),
        "health.json": health,
        "doors.json": [
            {
                "id": door.id,
                "mode": gw.doors.mode(door.id).value,
                "unlocked": gw.doors.unlocked(door.id),
            }
            for door in gw.cache.view.doors.values()
        ],
        "events.json": [
            {"seq": e.seq, **json.loads(event_to_json(e.event))} for e in gw.events.recent(200)
        ],
        "officernd.json": redacted(officernd),
        "state_dir.json": state_listing(gw.config.gateway.state_dir),
        "bundle.json": {"made_at": now.isoformat()},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, json.dumps(content, indent=2, default=str))
    return buffer.getvalue()
