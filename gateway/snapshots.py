"""Snapshot pull over HTTPS: signed, streamed to disk, verified, then parsed and applied.

The body goes to a 0600 file in the state directory as it arrives (never whole in memory as
bytes); the Ed25519 signature is checked over that file through an mmap (no heap copy) before a
byte of it is parsed; then it is read back as a stream, validated by the codec entity by entity
and applied atomically through the cache (docs/cloud-contract.md, "Snapshots").

Neither the JSON text nor its parsed tree is ever whole in memory: each entity's JSON is decoded,
validated and dropped before the next. The reading runs in a worker thread that lets the event
loop in every ``PACE_SLICE_S`` (``cache.Pacer``), so decisions go on during a 100k-user pull.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import enum
import json
import logging
import mmap
import os
import re
import ssl
import time
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway import codec
from gateway.cache import ApplyResult, Cache, Pacer, collection_paused
from gateway.cloud_messages import RejectedWhat, cloud_rejected_event
from gateway.events import EventLog, new_event
from gateway.model import EventType
from gateway.signing import SignatureError, verify_signature

_LOGGER = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Luckey-Signature"
#: Whole request, from connecting to the last byte of a 100k-user snapshot.
PULL_TIMEOUT_S = 300.0
CHUNK_BYTES = 1 << 16
#: The largest snapshot taken, as sent and unpacked: a broken or hostile endpoint must not fill
#: the disk the outbox and the cache live on (a 100k-user site is about 37 MB).
MAX_SNAPSHOT_BYTES = 512 * 1024 * 1024


class WrongSite(ValueError):
    """A signed snapshot of another site than the one this gateway serves."""


class SnapshotTooLarge(OSError):
    """The body passed MAX_SNAPSHOT_BYTES (as sent or unpacked)."""


#: How much of the spool file is decoded at a time while it is read back.
READ_BYTES = 1 << 18
#: Content-Encoding → whether the body must be inflated (the gateway asks for gzip).
_ENCODINGS = {"identity": False, "gzip": True, "x-gzip": True, "deflate": True}
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS  # zlib: accept either header


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
        self._packed = spool_dir / "snapshot.download.packed"  # the body as sent, if compressed
        self._clock = clock
        self._etag: str | None = None
        self._running: asyncio.Task[PullResult] | None = None

    async def pull(self, reason: str) -> PullResult:
        """Pull now (or join the pull under way); never raises for network or data trouble."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._pull(reason), name="snapshot-pull")
        return await asyncio.shield(self._running)

    async def _pull(self, reason: str) -> PullResult:
        try:
            return await self._pull_once(reason)
        except Exception:  # disk full, the outbox failing...: this pull fails, the next may not
            _LOGGER.exception("snapshot pull (%s) failed", reason)
            return PullResult.FAILED
        finally:
            for path in (self._packed, self._spool):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def _pull_once(self, reason: str) -> PullResult:
        headers = {"Accept-Encoding": "gzip"}
        if self._etag is not None:
            headers["If-None-Match"] = self._etag
        timeout = aiohttp.ClientTimeout(total=PULL_TIMEOUT_S)
        try:
            # The body is inflated here, in a thread, not by aiohttp: on the event loop, each
            # 256 KiB read of a gzip body took up to 10 ms to inflate.
            async with (
                aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
                session.get(
                    self._url, headers=headers, ssl=self._ssl, allow_redirects=False
                ) as response,
            ):
                if response.status == 304:
                    return PullResult.NOT_MODIFIED
                if response.status != 200:
                    _LOGGER.warning("snapshot pull (%s): HTTP %d", reason, response.status)
                    return PullResult.FAILED
                signature = response.headers.get(SIGNATURE_HEADER)
                etag = response.headers.get("ETag")
                encoding = response.headers.get("Content-Encoding", "").strip().lower()
                encoding = encoding or "identity"
                if encoding not in _ENCODINGS:
                    _LOGGER.warning(
                        "snapshot pull (%s): unsupported Content-Encoding %r", reason, encoding
                    )
                    return PullResult.FAILED
                packed = _ENCODINGS[encoding]
                await self._download(response, self._packed if packed else self._spool)
            if packed:
                await asyncio.to_thread(self._inflate)
                self._packed.unlink()
        except (aiohttp.ClientError, TimeoutError, OSError, EOFError, zlib.error) as err:
            _LOGGER.warning("snapshot pull (%s) failed: %s", reason, err or type(err).__name__)
            return PullResult.FAILED
        result = await self._verify_and_apply(signature, reason)
        if result in (PullResult.APPLIED, PullResult.NOT_MODIFIED):
            self._etag = etag
        return result

    async def _download(self, response: aiohttp.ClientResponse, path: Path) -> None:
        """The body as it came into ``path`` (0600), chunk by chunk, up to the size limit."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        size = 0
        with os.fdopen(fd, "wb") as file:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_SNAPSHOT_BYTES:
                    raise SnapshotTooLarge(f"the body is over {MAX_SNAPSHOT_BYTES} bytes")
                file.write(chunk)

    def _inflate(self) -> None:
        """The gzip (or zlib) body into the spool file (zlib.error, EOFError if it is broken)."""
        fd = os.open(self._spool, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with self._packed.open("rb") as source, os.fdopen(fd, "wb") as target:
            inflater = zlib.decompressobj(_GZIP_OR_ZLIB)
            written = 0

            def put(data: bytes) -> None:
                nonlocal written
                written += len(data)
                if written > MAX_SNAPSHOT_BYTES:  # a few KB of gzip can unpack to gigabytes
                    raise SnapshotTooLarge(f"the unpacked body is over {MAX_SNAPSHOT_BYTES} bytes")
                target.write(data)

            while chunk := source.read(CHUNK_BYTES):
                put(inflater.decompress(chunk, CHUNK_BYTES * 64))
                while inflater.unconsumed_tail:  # at most 4 MiB out per call, never all at once
                    put(inflater.decompress(inflater.unconsumed_tail, CHUNK_BYTES * 64))
                while inflater.eof and inflater.unused_data:  # another gzip member follows
                    rest = inflater.unused_data
                    inflater = zlib.decompressobj(_GZIP_OR_ZLIB)
                    put(inflater.decompress(rest))
            put(inflater.flush())
            if not inflater.eof:
                raise EOFError("the compressed body ends early")

    async def _verify_and_apply(self, signature: str | None, reason: str) -> PullResult:
        started = time.monotonic()
        try:
            await asyncio.to_thread(self._verify, signature)
        except SignatureError as err:
            return await self._reject(f"signature: {err}")
        verified = time.monotonic()
        try:
            version, outcome, parsed = await self._read_and_apply()
        except WrongSite as err:
            return await self._reject(f"site: {err}")
        except (ValueError, UnicodeDecodeError) as err:  # FormatError, bad JSON
            return await self._reject(f"malformed: {err}")
        except RecursionError:  # a signed but absurdly nested document
            return await self._reject("malformed: nested too deeply")
        if outcome is ApplyResult.STALE:
            return await self._reject(
                f"stale: version {version} is older than the {self._cache.version} held",
                version=version,
            )
        if outcome is not ApplyResult.APPLIED:
            return PullResult.NOT_MODIFIED
        _LOGGER.info(
            "snapshot version %d applied (%s): verified in %.2f s, read in %.2f s, applied in %.2f s",
            version,
            reason,
            verified - started,
            parsed - verified,
            time.monotonic() - parsed,
        )
        await self._events.record(
            new_event(
                EventType.CACHE_UPDATED,
                self._clock(),
                {"source": "snapshot", "version": version, "reason": reason},
            )
        )
        return PullResult.APPLIED

    async def _read_and_apply(self) -> tuple[int, ApplyResult, float]:
        """Parse the verified file and hand it to the cache: (version, outcome, parse end time).

        The heavy part of a pull: every step runs in a worker thread that lets the event loop
        in, and no garbage collection walks the two sites meanwhile (``collection_paused``).
        """
        with collection_paused():
            snapshot = await asyncio.to_thread(self._read)
            parsed = time.monotonic()
            held_site = self._cache.view.site.id
            serving = self._cache.version > 0 and self._cache.origin == "upstream"
            if serving and snapshot.site.id != held_site:
                # A gateway serves one site: another site's signed snapshot is not for us.
                raise WrongSite(f"for site {snapshot.site.id!r}, this gateway serves {held_site!r}")
            outcome = await self._cache.apply_snapshot(snapshot, origin="upstream")
            version = snapshot.version
            # Dropped in a thread: freeing 300k credentials' columns takes milliseconds.
            held = [snapshot]
            del snapshot
            await asyncio.to_thread(held.clear)
        return version, outcome, parsed

    def _verify(self, signature: str | None) -> None:
        """Check the signature over the file's exact bytes (SignatureError); nothing is parsed."""
        with self._spool.open("rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                verify_signature(self._public_key, b"", signature)
                return
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
                verify_signature(self._public_key, view, signature)

    def _read(self) -> codec.Snapshot:
        """The verified file, read as a stream and validated (ValueError); runs in a thread."""
        pause = Pacer()
        with self._spool.open("rb") as file:
            return read_snapshot(file, codec.SnapshotAssembler(pause), pause)

    async def _reject(self, why: str, **data: Any) -> PullResult:
        _LOGGER.error("snapshot refused: %s", why)
        event = cloud_rejected_event(RejectedWhat.SNAPSHOT, why, self._clock(), data)
        await self._events.record(event)
        return PullResult.REJECTED


# --- reading a snapshot as a stream ---------------------------------------------------------------

_BLANK = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
#: Characters before the end of the text read within which a value may have been cut short:
#: the longest unfinished piece that still parses or fails there is a "\\u" escape's.
_NEAR_END = 8


class _JsonStream:
    """JSON text read from a file a piece at a time: one value, or one structural character.

    Values come from the standard decoder (``raw_decode``), so they are decoded exactly as
    ``json.load`` would; only the top-level object and its arrays are walked here. Syntax errors
    are ValueErrors worded as ``json.JSONDecodeError``'s, positions counted from the start.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        # UTF-8 (the contract's encoding), a byte order mark allowed as json.load allows it.
        self._decode = codecs.getincrementaldecoder("utf-8-sig")().decode
        self._text = ""
        self._pos = 0
        self._eof = False
        self._dropped = 0  # characters read and let go before self._text
        self._lines = 0  # newlines among them
        self._line_start = 0  # where the line after the last of them starts

    def _more(self, size: int) -> bool:
        """Read at least ``size`` more bytes (dropping what was used); False at the end."""
        if self._eof:
            return False
        if self._pos:
            used = self._text[: self._pos]
            newlines = used.count("\n")
            if newlines:
                self._lines += newlines
                self._line_start = self._dropped + used.rindex("\n") + 1
            self._dropped += self._pos
            self._text = self._text[self._pos :]
            self._pos = 0
        data = self._file.read(size)
        if data:
            self._text += self._decode(data)
            return True
        self._text += self._decode(b"", True)  # a truncated character raises
        self._eof = True
        return False

    def peek(self) -> str:
        """The next character after blanks ('' at the end), not consumed."""
        while True:
            end = _BLANK.match(self._text, self._pos)
            assert end is not None  # the pattern matches the empty string
            self._pos = end.end()
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not self._more(READ_BYTES):
                return ""

    def take(self, char: str, expecting: str) -> None:
        """Consume ``char`` (after blanks), or raise the syntax error ``expecting``."""
        if self.peek() != char:
            raise self.error(expecting)
        self._pos += 1

    def value(self) -> Any:
        """The next JSON value (after blanks), decoded."""
        self.peek()
        size = READ_BYTES
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._pos)
            except json.JSONDecodeError as err:
                # Cut short by the end of what was read? The scanner stops there, or at the
                # start of a string it could not finish.
                cut = err.pos >= len(self._text) - _NEAR_END or err.msg.startswith("Unterminated")
                offset = err.pos - self._pos
                if cut and self._more(size):
                    size *= 2
                    continue
                raise self.error(err.msg, self._pos + offset) from None
            # A number ending at or near the end of what was read may go on ("2." of "2.5").
            if end < len(self._text) - _NEAR_END:
                self._pos = end
                return value
            length = end - self._pos
            if not self._more(size):  # (which moves the text: the value now starts at _pos)
                self._pos += length
                return value
            size *= 2

    def error(self, message: str, pos: int | None = None) -> ValueError:
        """A syntax error at ``pos`` (default: the next character), as json.load words it."""
        pos = self._pos if pos is None else pos
        char = self._dropped + pos
        newline = self._text.rfind("\n", 0, pos)
        line = self._lines + self._text.count("\n", 0, pos) + 1
        column = pos - newline if newline >= 0 else char - self._line_start + 1
        return ValueError(f"{message}: line {line} column {column} (char {char})")


def read_snapshot(
    file: IO[bytes], assembler: codec.SnapshotAssembler, pause: Callable[[], None]
) -> codec.Snapshot:
    """Parse a snapshot from ``file`` entity by entity (ValueError, FormatError if invalid).

    Collections are arrays of entities, each decoded and handed to ``assembler`` on its own;
    anything else is decoded whole. ``pause`` is called between entities.
    """
    stream = _JsonStream(file)
    if stream.peek() != "{":
        if stream.peek() == "":
            raise stream.error("Expecting value")
        value = stream.value()  # not an object: let the codec say what it is instead
        if stream.peek():
            raise stream.error("Extra data")
        return codec.snapshot_from_json(value)
    stream.take("{", "Expecting value")
    if stream.peek() == "}":
        stream.take("}", "")
    else:
        while True:
            if stream.peek() != '"':
                raise stream.error("Expecting property name enclosed in double quotes")
            key = stream.value()
            stream.take(":", "Expecting ':' delimiter")
            if assembler.is_collection(key) and stream.peek() == "[":
                stream.take("[", "")
                assembler.begin(key)
                if stream.peek() == "]":
                    stream.take("]", "")
                else:
                    while True:
                        assembler.add(stream.value())
                        pause()
                        if stream.peek() != ",":
                            stream.take("]", "Expecting ',' delimiter")
                            break
                        stream.take(",", "")
                assembler.end()
            else:
                assembler.member(key, stream.value())
            if stream.peek() != ",":
                stream.take("}", "Expecting ',' delimiter")
                break
            stream.take(",", "")
    if stream.peek():
        raise stream.error("Extra data")
    return assembler.finish()
