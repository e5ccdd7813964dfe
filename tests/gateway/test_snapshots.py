"""Tests for gateway.snapshots: read as a stream, checked as the codec checks, pulled off the loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import io
import json
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import codec, snapshots
from gateway.cache import Cache
from gateway.events import EventLog
from gateway.model import Event
from gateway.signing import signature_header
from gateway.snapshots import PullResult, SnapshotPuller, read_snapshot
from tests.conftest import pick_free_port
from tests.gateway.sitebuilder import SiteBuilder, credential_json, site, user_json, value_for

JSON = dict[str, Any]


def rich(version: int = 1) -> SiteBuilder:
    """A small site using every collection, several credential kinds and optional fields."""
    return (
        site("Europe/Rome", version=version)
        .blacklist("0011223344556677")
        .lockdown_override("visitors")
        .tag("visitors", name="Visitors", special=True)
        .calendar("it", ["2026-12-25", "2026-01-01"])
        .schedule("always", [{"days": ["mon", "sun"], "start": "00:00", "end": "24:00"}])
        .door("front", min_assurance="low")
        .door("side", unlock_schedule="always", unlock_after_first_grant=True)
        .user("u1", name="Ada Lovelace", tags=["staff", "cleaners"])
        .user("u2", name="Bob \u00e9\u00e8 \U0001f511", tags=["cleaners", "staff"])
        .user("u3", tags=["visitors"], status="suspended", valid_until="2027-01-01T00:00:00Z")
        .credential("c1", "u1", value="04A1B2C3")
        .credential("c2", "u1", kind="ble_phone_key", assurance="medium")
        .credential("c3", "u2", kind="desfire", revoked=True, valid_from="2026-01-01T00:00:00Z")
        .credential(
            "c4",
            "u3",
            kind="mech_key",
            revalidation_days=30,
            revalidated_at="2026-06-01T09:30:00+02:00",
        )
        .credential("c5", "u3", value="04:a1:b2:c3:d4:e5:f6")
        .rule("r1", tags=["staff"], doors=["front"])
        .rule("r2", tags=["visitors"], doors=["side"], schedule="always")
    )


def big(users: int, version: int = 1) -> JSON:
    """A site with ``users`` users holding three credentials each (kept small by default)."""
    builder = (
        site("Europe/Rome", version=version)
        .door("front")
        .rule("r1", tags=["staff"], doors=["front"])
    )
    data = builder.json()
    data["users"] = [user_json(f"u{i}", tags=["staff"]) for i in range(users)]
    data["credentials"] = [
        credential_json(f"c{i}-{k}", f"u{i}", kind=kind, value=value_for(kind, i))
        for i in range(users)
        for k, kind in enumerate(("nfc_uid", "desfire", "ble_phone_key"))
    ]
    return data


def read_text(text: str | bytes) -> codec.Snapshot:
    """``text`` read as the puller reads its spool file."""
    raw = text.encode() if isinstance(text, str) else text
    return read_snapshot(io.BytesIO(raw), codec.SnapshotAssembler(), lambda: None)


def assert_same(streamed: codec.Snapshot, reference: codec.Snapshot) -> None:
    assert streamed.version == reference.version
    assert streamed.site == reference.site
    for name in codec.COLLECTIONS:
        assert list(streamed.entities[name]) == list(reference.entities[name]), name


def error_of(call: Callable[[], object]) -> str:
    """The message of the ValueError (FormatError, JSONDecodeError...) that ``call`` raises."""
    try:
        call()
    except ValueError as err:
        return str(err)
    raise AssertionError("no ValueError")


@pytest.fixture(params=[1 << 18, 3], ids=["whole", "3-byte-reads"])
def read_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Read the file in the default pieces, or three bytes at a time (every cut is met)."""
    size: int = request.param
    monkeypatch.setattr(snapshots, "READ_BYTES", size)
    return size


# --- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dump",
    [
        json.dumps,
        lambda d: json.dumps(d, separators=(",", ":")),
        lambda d: json.dumps(d, indent=2, ensure_ascii=False),
        lambda d: "\ufeff \n" + json.dumps(d, indent="\t") + "\r\n",
    ],
    ids=["default", "compact", "indented-utf8", "bom-and-blanks"],
)
def test_a_streamed_snapshot_is_the_snapshot_the_codec_reads(
    dump: Callable[[JSON], str], read_bytes: int
) -> None:
    data = rich(version=7).json()
    data["version"] = 12345678901234567890  # a number longer than a 3-byte read
    text = dump(data)

    streamed = read_text(text)

    assert_same(streamed, codec.snapshot_from_json(json.loads(text.lstrip("\ufeff"))))
    assert isinstance(streamed.entities["credentials"], codec.CredentialColumns)


@pytest.mark.parametrize("pad", range(6))
def test_a_number_cut_between_two_reads_is_read_whole(
    pad: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots, "READ_BYTES", 3)
    builder = rich().door("back", unlock_seconds=2.5).door("rear", unlock_seconds=15)
    text = " " * pad + json.dumps(builder.json())
    text = text.replace('"unlock_seconds": 2.5', '"unlock_seconds": 25e-1')
    text = text.replace('"unlock_seconds": 15', '"unlock_seconds": 1.5E+1')

    streamed = read_text(text)

    assert_same(streamed, codec.snapshot_from_json(json.loads(text)))
    assert {2.5, 15.0} <= {d.unlock_seconds for d in streamed.entities["doors"]}


def test_members_in_any_order_and_empty_collections_are_read(read_bytes: int) -> None:
    data = rich().json()
    members = dict(reversed(list(data.items())))
    members["holiday_calendars"] = []
    del members["tags"]  # an optional collection may be left out...
    members["tags"] = data["tags"]  # ...or come last

    assert_same(read_text(json.dumps(members)), codec.snapshot_from_json(members))


def test_a_member_given_twice_counts_the_last_time_as_in_json() -> None:
    data = rich().json()
    text = json.dumps(data)[:-1] + ', "version": 9, "doors": ' + json.dumps(data["doors"][:1])
    text += ', "rules": [{"id": "r1", "name": "R", "tags": ["staff"], "doors": ["front"]}]}'

    assert_same(read_text(text), codec.snapshot_from_json(json.loads(text)))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n ",
        "{",
        '{"format": 1,',
        '{"format" 1}',
        '{"format": 1 "version": 2}',
        '{"users": [{"id": "u1", "name": "A"},]}',
        '{"users": [{"id": "u1", "name": "A"} {"id": "u2"}]}',
        '{"users": [{"id": "u1", "name": "A"}',
        '{"users": [{"id": "u1", "name": "A\n\n"}]}',
        '{\n  "format": 1,\n  "users": [\n    {"id": "u1", "name": "A"},\n    nope\n  ]\n}',
        '{"format": 1}\n  x',
        '{"format": 1} {}',
        '{"version": 1e}',
        '{"version": tru}',
        "[1, 2",
        "{,}",
        "{1: 2}",
    ],
)
def test_bad_json_is_refused_in_the_words_of_json_load(text: str, read_bytes: int) -> None:
    assert error_of(lambda: read_text(text)) == error_of(lambda: json.loads(text))


def test_text_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(UnicodeDecodeError):
        read_text(b'{"format": 1, "site": {"name": "\xff"}}')
    with pytest.raises(UnicodeDecodeError):
        read_text('{"format": 1, "site": "\u00e9"}'.encode()[:-3])  # cut inside a character


def without(data: JSON, collection: str, index: int, key: str) -> JSON:
    del data[collection][index][key]
    return data


def edited(data: JSON, collection: str, index: int, **fields: Any) -> JSON:
    data[collection][index].update(fields)
    return data


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: without(d, "users", 1, "name"),
        lambda d: edited(d, "users", 2, id="-bad"),
        lambda d: edited(d, "credentials", 3, id="c1"),
        lambda d: edited(d, "credentials", 4, value=d["credentials"][0]["value"]),
        lambda d: edited(d, "credentials", 1, user="nobody"),
        lambda d: edited(d, "credentials", 2, assurance="nope"),
        lambda d: edited(d, "credentials", 0, revalidation_days=3),
        lambda d: edited(d, "rules", 1, schedule="never"),
        lambda d: edited(d, "users", 0, tags=["staff", "ghosts"]),
        lambda d: {**d, "version": 0},
        lambda d: {**d, "format": 2},
        lambda d: {**d, "format": True},
        lambda d: {**d, "extra": 1},
        lambda d: {**d, "users": {"u1": {}}},
        lambda d: {k: v for k, v in d.items() if k != "site"},
        lambda d: {**d, "site": {**d["site"], "lockdown_override_tag": "ghosts"}},
        lambda d: [d],
        lambda d: "snapshot",
    ],
)
def test_an_invalid_snapshot_is_refused_with_the_codecs_message(
    mangle: Callable[[JSON], Any], read_bytes: int
) -> None:
    data = mangle(rich().json())
    text = json.dumps(data)

    message = error_of(lambda: read_text(text))

    assert message == error_of(lambda: codec.snapshot_from_json(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_an_edited_snapshot_is_accepted_or_refused_as_by_the_codec(data: st.DataObject) -> None:
    text = json.dumps(rich().json(), separators=(",", ":"))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 2))
        insert = data.draw(st.sampled_from(["", ",", "]", "}", '"', "0", "x", " ", "[", "{"]))
        text = text[:at] + insert + text[at + cut :]
    size = data.draw(st.sampled_from([2, 5, 1 << 18]))
    default, snapshots.READ_BYTES = snapshots.READ_BYTES, size
    try:
        try:
            reference = codec.snapshot_from_json(json.loads(text))
        except ValueError:
            error_of(lambda: read_text(text))  # refused too (perhaps naming another fault first)
        else:
            assert_same(read_text(text), reference)
    finally:
        snapshots.READ_BYTES = default


# --- pulling ------------------------------------------------------------------------------------


class MemoryStore:
    """Events committed in memory."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def append(self, event: Event) -> int:
        self.events.append(event)
        return len(self.events)


class SnapshotServer:
    """The contract's snapshot endpoint over plain HTTP: one body, signed, gzip or not."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.port = pick_free_port()
        self.body = b""
        self.signature: str | None = None
        self.encoding = "gzip"
        self.packed: bytes | None = None  # the body as sent, if compressed
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/gateways/gw-1/snapshot"

    def serve(self, data: JSON | bytes, *, encoding: str = "gzip", signed: bool = True) -> None:
        """What the endpoint serves from now on (compressed here, not while serving)."""
        self.body = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.signature = signature_header(self.key, self.body) if signed else None
        self.encoding = encoding
        self.packed = None
        if encoding == "gzip":
            self.packed = gzip.compress(self.body)
        elif encoding == "deflate":
            self.packed = zlib.compress(self.body)

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        etag = f'"{zlib.crc32(self.body)}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        headers = {"ETag": etag, "Content-Type": "application/json"}
        if self.signature is not None:
            headers["X-Luckey-Signature"] = self.signature
        if self.encoding != "identity":
            headers["Content-Encoding"] = self.encoding
        body = self.body if self.packed is None else self.packed
        return web.Response(body=body, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/gateways/{gateway}/snapshot", self._snapshot)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[SnapshotServer]:
    endpoint = SnapshotServer()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    started = Cache(tmp_path / "cache.db")
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def puller(
    cache: Cache, store: MemoryStore, server: SnapshotServer, tmp_path: Path
) -> SnapshotPuller:
    return SnapshotPuller(
        cache,
        EventLog(store),
        url=server.url,
        ssl_context=ssl.create_default_context(),  # unused over plain HTTP
        public_key=server.key.public_key(),
        spool_dir=tmp_path,
        clock=lambda: datetime(2026, 6, 1, tzinfo=UTC),
    )


def rejections(store: MemoryStore) -> list[Mapping[str, Any]]:
    return [e.data for e in store.events if e.type == "cloud.rejected"]


def spool_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("snapshot."))


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
async def test_a_pull_applies_the_snapshot_and_leaves_no_file_behind(
    puller: SnapshotPuller,
    server: SnapshotServer,
    cache: Cache,
    store: MemoryStore,
    tmp_path: Path,
    encoding: str,
) -> None:
    server.serve(rich(version=3).json(), encoding=encoding)

    assert await puller.pull("test") is PullResult.APPLIED

    assert cache.version == 3
    assert cache.view.counts() == rich(version=3).view().counts()
    assert [e.data for e in store.events if e.type == "cache.updated"] == [
        {"source": "snapshot", "version": 3, "reason": "test"}
    ]
    assert spool_files(tmp_path) == []
    assert gc.isenabled()
    assert await puller.pull("again") is PullResult.NOT_MODIFIED  # 304 on its ETag


async def test_a_broken_or_unknown_encoding_fails_the_pull_and_changes_nothing(
    puller: SnapshotPuller, server: SnapshotServer, cache: Cache, tmp_path: Path
) -> None:
    server.serve(rich().json())
    server.packed = gzip.compress(server.body)[:-20]  # cut short
    assert await puller.pull("test") is PullResult.FAILED
    server.packed = b"not gzip at all"
    assert await puller.pull("test") is PullResult.FAILED
    server.serve(rich().json(), encoding="br")
    assert await puller.pull("test") is PullResult.FAILED

    assert cache.version == 0
    assert spool_files(tmp_path) == []


async def test_the_signature_is_checked_before_a_byte_is_parsed(
    puller: SnapshotPuller, server: SnapshotServer, store: MemoryStore, cache: Cache
) -> None:
    server.serve(b"{not json at all", signed=False)

    assert await puller.pull("test") is PullResult.REJECTED

    [rejected] = rejections(store)
    assert rejected["reason"].startswith("signature:")
    assert cache.version == 0


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"format": 1, "version": 2,', "malformed: Expecting property name enclosed in"),
        (
            json.dumps(edited(rich().json(), "users", 1, id="-x")).encode(),
            "malformed: users[1].id:",
        ),
    ],
)
async def test_a_signed_but_malformed_snapshot_is_rejected_with_an_event(
    puller: SnapshotPuller,
    server: SnapshotServer,
    store: MemoryStore,
    cache: Cache,
    body: bytes,
    why: str,
) -> None:
    server.serve(body)

    assert await puller.pull("test") is PullResult.REJECTED

    [rejected] = rejections(store)
    assert rejected["what"] == "snapshot"
    assert rejected["reason"].startswith(why)
    assert cache.version == 0
    assert gc.isenabled()


async def test_an_older_snapshot_is_refused_as_stale_and_the_same_one_does_nothing(
    puller: SnapshotPuller, server: SnapshotServer, store: MemoryStore, cache: Cache
) -> None:
    server.serve(rich(version=5).json())
    assert await puller.pull("test") is PullResult.APPLIED
    server.serve(rich(version=5).json(), encoding="identity")  # another ETag, the same version
    assert await puller.pull("test") is PullResult.NOT_MODIFIED

    server.serve(rich(version=4).json())
    assert await puller.pull("test") is PullResult.REJECTED

    [rejected] = rejections(store)
    assert rejected["reason"] == "stale: version 4 is older than the 5 held"
    assert rejected["version"] == 4
    assert cache.version == 5


async def test_decisions_go_on_while_a_large_snapshot_is_pulled(
    puller: SnapshotPuller, server: SnapshotServer, cache: Cache
) -> None:
    """The event loop is never blocked for long (parsing on the loop blocked it for seconds)."""
    server.serve(big(20_000, version=2))
    longest = 0.0
    ticks = 0
    pulling = asyncio.create_task(puller.pull("test"))
    last = time.perf_counter()
    while not pulling.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        longest, last, ticks = max(longest, now - last), now, ticks + 1
        assert cache.view is not None  # what a decision reads

    assert await pulling is PullResult.APPLIED
    assert cache.view.counts()["credentials"] == 60_000
    assert ticks > 100
    # Wide: a blocked loop shows as a second or more; typical gaps here are a few milliseconds.
    assert longest < 0.25, f"the event loop stalled for {longest * 1000:.0f} ms"


async def test_collection_is_back_on_after_a_pull_that_failed_midway(
    puller: SnapshotPuller, server: SnapshotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.serve(rich().json())

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Cache, "apply_snapshot", broken)
    with contextlib.suppress(RuntimeError):
        await puller.pull("test")

    assert gc.isenabled()
