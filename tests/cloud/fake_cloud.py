"""The cloud side of docs/cloud-contract.md, for tests: built from the document, not the gateway.

It signs with its own Ed25519 key (the gateway pins the public half), serves snapshots over
HTTPS with ETag/If-None-Match and gzip, publishes signed deltas and commands to a gateway's
topics as the ``cloud`` identity, and collects what gateways send up (events, status).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.cloud.broker import Broker, Pki, gateway_topic
from tests.cloud.mqtt_client import MqttTestClient
from tests.conftest import pick_free_port

SIGNATURE = "X-Luckey-Signature"
USER_PROPERTY = "luckey-sig"


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    """The contract's signature value: ``ed25519=<standard base64>``."""
    return "ed25519=" + base64.b64encode(key.sign(payload)).decode("ascii")


class FakeCloud:
    """One test cloud: snapshot endpoint, signing key, and an MQTT client as ``cloud``."""

    def __init__(self, pki: Pki, broker: Broker, directory: Path) -> None:
        self.pki = pki
        self.broker = broker
        self.directory = directory
        self.key = Ed25519PrivateKey.generate()
        self.public_key_file = directory / "cloud-signing.pub"
        self.snapshots: dict[str, tuple[bytes, str]] = {}  # gateway → (body, signature)
        self.requests: list[Mapping[str, str]] = []  # headers of every snapshot request
        self.port = pick_free_port()
        self._runner: web.AppRunner | None = None
        self.mqtt = MqttTestClient(
            broker.host, broker.tls_port, "cloud", tls=broker.credentials("cloud")
        )

    @property
    def api_url(self) -> str:
        """The snapshot endpoint's base URL."""
        return f"https://localhost:{self.port}"

    async def start(self) -> None:
        """Write the public key, serve HTTPS, connect to the broker and listen to every gateway."""
        self.directory.mkdir(parents=True, exist_ok=True)
        pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key_file.write_bytes(pem)
        app = web.Application()
        app.router.add_get("/v1/gateways/{gateway}/snapshot", self._snapshot)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.server.cert), str(self.pki.server.key))
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as the contract says
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()
        await asyncio.to_thread(self.mqtt.connect)
        for leaf in ("events", "status"):
            await asyncio.to_thread(self.mqtt.subscribe, gateway_topic("+", leaf), 1)

    async def stop(self) -> None:
        """Stop serving and disconnect."""
        await asyncio.to_thread(self.mqtt.close)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- snapshots --------------------------------------------------------------------------

    def set_snapshot(self, gateway: str, data: dict[str, Any], *, signed: bool = True) -> None:
        """What the endpoint serves to ``gateway`` from now on."""
        body = json.dumps(data).encode()
        signature = sign(self.key, body) if signed else ""
        self.snapshots[gateway] = (body, signature)

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        entry = self.snapshots.get(request.match_info["gateway"])
        if entry is None:
            return web.Response(status=404)
        body, signature = entry
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        headers = {"ETag": etag, "Content-Type": "application/json"}
        if signature:
            headers[SIGNATURE] = signature
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=gzip.compress(body), headers=headers)
        return web.Response(body=body, headers=headers)

    # -- MQTT down --------------------------------------------------------------------------

    async def send(
        self, gateway: str, leaf: str, data: dict[str, Any] | bytes, *, signature: str | None = ""
    ) -> None:
        """Publish to the gateway's ``leaf`` (delta, cmd) at QoS 1, signed unless told otherwise.

        ``signature=""``: sign properly; ``None``: no signature; any other text: sent as is.
        """
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        value = sign(self.key, payload) if signature == "" else signature
        properties = [] if value is None else [(USER_PROPERTY, value)]
        await asyncio.to_thread(
            self.mqtt.publish, gateway_topic(gateway, leaf), payload, 1, user_properties=properties
        )

    # -- MQTT up ----------------------------------------------------------------------------

    async def next_message(self, timeout_s: float = 10.0) -> tuple[str, dict[str, Any]]:
        """The next message a gateway sent up: (topic, parsed JSON)."""
        message = await asyncio.to_thread(self.mqtt.next_message, timeout_s)
        return message.topic, json.loads(message.payload)

    async def events(
        self, gateway: str, count: int, timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """Collect ``count`` events from ``gateway`` (in the order received; statuses skipped)."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            topic, body = await self.next_message(timeout_s)
            if topic == gateway_topic(gateway, "events"):
                found.extend(body["events"])
        return found
