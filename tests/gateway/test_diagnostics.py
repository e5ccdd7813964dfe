"""The diagnostics bundle: what support needs, and not one secret byte."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import aiohttp

from drivers.base import CredentialRead
from gateway.diagnostics import MASK, redacted
from gateway.officernd.activation import Activation, save_activation
from tests.conftest import ADA, ConfigFactory, GatewayFactory

CLIENT_SECRET = "oRnD-client-secret-6f1e2d3c4b5a"
WEBHOOK_SECRET = "whsec-9a8b7c6d5e4f3a2b"


async def fetch(port: int, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    url = f"http://127.0.0.1:{port}/api/diagnostics"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as reply:
        return reply.status, await reply.read(), reply.headers.get("Content-Disposition", "")


async def test_the_bundle_holds_what_support_needs_and_no_secret(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    from datetime import UTC, datetime

    config = gateway_config(hardware={"backend": "virtual"})
    state = config.gateway.state_dir
    state.mkdir(parents=True, exist_ok=True)
    save_activation(
        state,
        Activation(
            org="acme",
            client_id="client-1",
            client_secret=CLIENT_SECRET,
            api_base="http://127.0.0.1:9/api/v2",  # nothing listens: the sync just retries
            identity_url="http://127.0.0.1:9/oauth/token",
            activated_at=datetime.now(UTC),
            webhook_id="hook-1",
            webhook_secret=WEBHOOK_SECRET,
        ),
    )
    gw = await start_gateway(config)
    await gw.entry.handle(CredentialRead("front", "nfc_uid", ADA))
    # The virtual backend made the site's keys: their contents must not leave either.
    key_texts = [
        path.read_bytes().strip()
        for path in state.iterdir()
        if path.is_file() and stat_private(path) and path.suffix not in (".db", ".json")
    ]
    assert key_texts, "the virtual backend should have made key files"

    status, body, disposition = await fetch(gw.config.web.port)
    assert status == 200
    assert disposition.startswith('attachment; filename="luckey-diagnostics-')
    archive = zipfile.ZipFile(io.BytesIO(body))
    names = set(archive.namelist())
    assert names >= {"versions.json", "config.json", "health.json", "events.json", "state_dir.json"}
    everything = b"".join(archive.read(name) for name in names)
    for secret in (CLIENT_SECRET.encode(), WEBHOOK_SECRET.encode(), *key_texts):
        assert secret not in everything
    assert ADA.encode() not in everything  # events carry value hints, never the value

    events = json.loads(archive.read("events.json"))
    assert any(e["type"] == "access.granted" for e in events)
    listing = json.loads(archive.read("state_dir.json"))
    assert {"path": "mech_site_key", "kind": "file", "mode": "0o600"}.items() <= next(
        entry for entry in listing if entry["path"] == "mech_site_key"
    ).items()
    officernd = json.loads(archive.read("officernd.json"))
    assert officernd["activated"] is True
    assert json.loads(archive.read("versions.json"))["packages"]["aiohttp"]

    # Served to this machine (or the admin) only.
    forwarded, _, _ = await fetch(gw.config.web.port, {"X-Forwarded-For": "203.0.113.9"})
    assert forwarded == 401


def stat_private(path: Path) -> bool:
    return path.stat().st_mode & 0o077 == 0


def test_keys_that_name_secrets_are_masked_but_paths_are_kept() -> None:
    config = {
        "cloud": {"key_file": "/etc/k.pem", "api_token": "t0k3n"},
        "x": [{"password": "p4ss", "name": "ok"}],
        "officernd": {"client_secret": "s", "client_id": "id"},
    }
    assert redacted(config) == {
        "cloud": {"key_file": "/etc/k.pem", "api_token": MASK},
        "x": [{"password": MASK, "name": "ok"}],
        "officernd": {"client_secret": MASK, "client_id": "id"},
    }
