"""Snapshot pull over HTTPS: signed, streamed to disk, verified, then parsed and applied.

The body goes to a 0600 file in the state directory as it arrives (never whole in memory as
bytes); the Ed25519 signature is checked over that file through an mmap (no heap copy) before a
byte of it is parsed; then it is parsed, validated by the codec and applied atomically through
the cache (docs/cloud-contract.md, "Snapshots").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import mmap
import os
import ssl
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway import codec
from gateway.cache import ApplyResult, Cache
from gateway.events import EventLog, new_event
from gateway.model import EventType
from gateway.signing import SignatureError, verify_signature

_LOGGER = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Luckey-Signature"
#: Whole request, from connecting to the last byte of a 100k-user snapshot.
PULL_TIMEOUT_S = 300.0
CHUNK_BYTES = 1 << 16


class PullResult(enum.StrEnum):
    """What a pull did."""

    APPLIED = "applied"
    NOT_MODIFIED = "not_modified"  # 304, or the same version again
    REJECTED = "rejected"  # bad signature, malformed, stale: recorded as cloud.rejected
    FAILED = "failed"  # network or server trouble: try again later


class SnapshotPuller:
    """Pulls one gateway's snapshot; one pull at a time (concurrent requests share it)."""

    def __init__(
        self,
        cache: Cache,
        events: EventLog,
        *,
        url: str,
        ssl_context: ssl.SSLContext,
        public_key: Ed25519PublicKey,
        spool_dir: Path,
        clock: Callable[[], datetime],
    ) -> None:
        self._cache = cache
        self._events = events
        self._url = url
        self._ssl = ssl_context
        self._public_key = public_key
        self._spool = spool_dir / "snapshot.download"
        self._clock = clock
        self._etag: str | None = None
        self._running: asyncio.Task[PullResult] | None = None

    async def pull(self, reason: str) -> PullResult:
        """Pull now (or join the pull under way); never raises for network or data trouble."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._pull(reason), name="snapshot-pull")
        return await asyncio.shield(self._running)

    async def _pull(self, reason: str) -> PullResult:
        headers = {"Accept-Encoding": "gzip"}
        if self._etag is not None:
            headers["If-None-Match"] = self._etag
        timeout = aiohttp.ClientTimeout(total=PULL_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self._url, headers=headers, ssl=self._ssl) as response,
            ):
                if response.status == 304:
                    return PullResult.NOT_MODIFIED
                if response.status != 200:
                    _LOGGER.warning("snapshot pull (%s): HTTP %d", reason, response.status)
                    return PullResult.FAILED
                signature = response.headers.get(SIGNATURE_HEADER)
                etag = response.headers.get("ETag")
                await self._download(response)
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            _LOGGER.warning("snapshot pull (%s) failed: %s", reason, err or type(err).__name__)
            return PullResult.FAILED
        try:
            result = await self._verify_and_apply(signature, reason)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._spool.unlink()
        if result in (PullResult.APPLIED, PullResult.NOT_MODIFIED):
            self._etag = etag
        return result

    async def _download(self, response: aiohttp.ClientResponse) -> None:
        """The (decoded) body into the spool file, chunk by chunk."""
        fd = os.open(self._spool, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                file.write(chunk)

    async def _verify_and_apply(self, signature: str | None, reason: str) -> PullResult:
        try:
            data = await asyncio.to_thread(self._verified_json, signature)
            snapshot = codec.snapshot_from_json(data)
        except SignatureError as err:
            return await self._reject(f"signature: {err}")
        except (ValueError, UnicodeDecodeError) as err:  # FormatError, bad JSON
            return await self._reject(f"malformed: {err}")
        del data
        outcome = await self._cache.apply_snapshot(snapshot, origin="upstream")
        if outcome is ApplyResult.STALE:
            return await self._reject(
                f"stale: version {snapshot.version} is older than the {self._cache.version} held",
                version=snapshot.version,
            )
        if outcome is not ApplyResult.APPLIED:
            return PullResult.NOT_MODIFIED
        _LOGGER.info("snapshot version %d applied (%s)", snapshot.version, reason)
        await self._events.record(
            new_event(
                EventType.CACHE_UPDATED,
                self._clock(),
                {"source": "snapshot", "version": snapshot.version, "reason": reason},
            )
        )
        return PullResult.APPLIED

    def _verified_json(self, signature: str | None) -> Any:
        """Check the signature over the file's exact bytes, then (only then) parse it."""
        with self._spool.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                verify_signature(self._public_key, b"", signature)
                return json.loads(b"")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
                verify_signature(self._public_key, view, signature)
            file.seek(0)
            return json.load(file)

    async def _reject(self, why: str, **data: Any) -> PullResult:
        _LOGGER.error("snapshot refused: %s", why)
        await self._events.record(
            new_event(
                EventType.CLOUD_REJECTED,
                self._clock(),
                {"what": "snapshot", "reason": why, **data},
            )
        )
        return PullResult.REJECTED
