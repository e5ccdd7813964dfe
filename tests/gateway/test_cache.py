"""Tests for gateway.cache: durable snapshots and deltas, atomic swaps, recovery from bad files."""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import io
import json
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.access import decide
from gateway.cache import (
    ApplyResult,
    Cache,
    Pacer,
    collection_paused,
    lookup_sql,
    read_view,
)
from gateway.cache_rows import MIGRATIONS
from gateway.codec import (
    COLLECTIONS,
    CredentialColumns,
    FormatError,
    Snapshot,
    SnapshotAssembler,
    check_references,
)
from gateway.credentials import Verified
from gateway.model import (
    AccessRule,
    AssuranceLevel,
    Credential,
    CredentialKind,
    Decision,
    Door,
    Reason,
    Site,
    Tag,
    User,
    UserStatus,
)
from gateway.snapshots import read_snapshot
from gateway.view import EMPTY_SITE, CacheView
from tests.gateway.sitebuilder import (
    PHONE_KEY,
    SiteBuilder,
    credential_by_id,
    credential_json,
    delta,
    door_json,
    exception,
    holiday_window,
    rule_json,
    site,
    tag_json,
    user_json,
    utc,
    value_for,
    window,
)
from tests.sqlite_files import plain

NOW = utc(2026, 6, 10, 10)  # Wednesday, 12:00 in Rome
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
ALL_DAYS = [*WEEKDAYS, "sat", "sun"]
NFC = CredentialKind.NFC_UID
MECH = CredentialKind.MECHATRONIC_KEY
LOST_KEY = "0011223344556677"

MakeCache = Callable[[], Awaitable[Cache]]


# --- helpers --------------------------------------------------------------------------------


def rich(version: int = 1) -> SiteBuilder:
    """A site using every collection and most optional fields."""
    return (
        site("Europe/Rome", version=version)
        .blacklist(LOST_KEY, "ff:ee:dd:cc:bb:aa:99:88")
        .lockdown_override("visitors")
        .tag("visitors", name="Visitors", special=True, owner="officernd")
        .calendar("it", ["2026-12-25", "2026-01-01"])
        .schedule(
            "office",
            [window(WEEKDAYS, "08:00", "18:00"), window("sat", "22:00", "02:00", overnight=True)],
            holiday_calendars=["it"],
            holiday_windows=[holiday_window("10:00", "12:00")],
            exceptions=[
                exception(utc(2026, 8, 14, 6), utc(2026, 8, 14, 16), opens=False, note="Ferragosto")
            ],
        )
        .schedule("always", [window(ALL_DAYS, "00:00", "24:00")])
        .door("front", min_assurance="low")
        .door("back", name="Back door", min_assurance="high", unlock_seconds=2.5)
        .door("side", unlock_schedule="always", unlock_after_first_grant=True)
        .user("u1", name="Ada Lovelace", tags=["staff", "cleaners"])
        .user("u2", name="Bob", tags=["cleaners", "staff"])  # the same tag set as u1
        .user(
            "u3",
            tags=["visitors"],
            status="suspended",
            valid_from="2026-03-01T08:00:00+01:00",
            valid_until=utc(2027, 1, 1),
        )
        .user("u4")  # no tags at all
        .user("u5", status="former", tags=["staff"])
        .credential("c1", "u1", value="04A1B2C3")
        .credential(
            "c2",
            "u1",
            kind="ble_phone_key",
            value=hashlib.sha256(bytes.fromhex(PHONE_KEY)).digest()[:16].hex(),
            assurance="medium",
            public_key=PHONE_KEY,
        )
        .credential(
            "c3",
            "u2",
            kind="desfire",
            revoked=True,
            valid_from=utc(2026, 1, 1),
            valid_until="2026-12-31T23:00:00-05:00",
        )
        .credential("c4", "u3", kind="ntag424")
        .credential(
            "c5",
            "u4",
            kind="mech_key",
            assurance="low",
            revalidation_days=30,
            revalidated_at="2026-06-01T09:30:00+02:00",
        )
        .credential("c6", "u5", value="04:a1:b2:c3:d4:e5:f6")
        .credential("c7", "u2", value="04A1B2C4")
        .rule("r1", tags=["staff"], doors=["front", "back"])
        .rule(
            "r2",
            tags=["cleaners"],
            doors=["back"],
            schedule="office",
            valid_from=utc(2026, 1, 1),
            valid_until=utc(2027, 1, 1),
        )
        .rule("r3", tags=["visitors"], doors=["side"], schedule="always")
    )


def contents(view: CacheView) -> dict[str, Any]:
    """Everything a view holds, as plain comparable values."""
    return {
        "version": view.version,
        "site": view.site,
        **{name: dict(view.collection(name)) for name in COLLECTIONS if name != "credentials"},
        "credentials": list(view.all_credentials()),
        "credential kinds": {kind: len(table) for kind, table in view.credentials.items()},
        "rule_index": dict(view.rule_index),
        "compiled": sorted(view.compiled),
    }


def built(builder: SiteBuilder) -> dict[str, Any]:
    """The contents of the view built straight from ``builder``'s snapshot."""
    return contents(builder.view())


def decisions(view: CacheView) -> list[Decision]:
    """Every cached credential at every door at a few instants."""
    out = []
    for credential in view.all_credentials():
        for door in sorted(view.doors):
            for now in (NOW, utc(2026, 8, 14, 10), utc(2026, 12, 25, 10), utc(2027, 6, 1)):
                out.append(decide(Verified(credential, credential.assurance), door, now, view))
    return out


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with plain(path) as conn:
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]


def meta(path: Path) -> dict[str, str]:
    return {str(k): str(v) for k, v in query(path, "SELECT key, value FROM meta")}


def table_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the site, sorted: what the file holds."""
    return {c: sorted(query(path, f"SELECT * FROM {c}")) for c in COLLECTIONS}


def files(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory`` by name, with its bytes."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def write_file(path: Path, content: bytes) -> None:
    path.write_bytes(content)


async def reopen(path: Path) -> CacheView:
    """The view a freshly started cache reads back from ``path``."""
    cache = Cache(path)
    await cache.start()
    try:
        assert cache.reset_reason is None
        return cache.view
    finally:
        await cache.stop()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "cache.db"


@pytest.fixture
async def make_cache(path: Path) -> AsyncIterator[MakeCache]:
    """Start caches on ``path``; every one is stopped at the end of the test."""
    started: list[Cache] = []

    async def make() -> Cache:
        cache = Cache(path)
        await cache.start()
        started.append(cache)
        return cache

    yield make
    for cache in started:
        await cache.stop()


async def applied(make_cache: MakeCache, builder: SiteBuilder) -> Cache:
    """A started cache holding ``builder``'s snapshot."""
    cache = await make_cache()
    assert await cache.apply_snapshot(builder.snapshot()) is ApplyResult.APPLIED
    return cache


# --- start and snapshots --------------------------------------------------------------------


async def test_a_new_file_starts_empty_and_asks_for_a_resync(
    make_cache: MakeCache, path: Path
) -> None:
    cache = await make_cache()
    assert path.name in files(path.parent)
    assert cache.reset_reason is None
    assert cache.version == 0
    assert cache.view.version == 0
    assert cache.needs_resync is True
    assert cache.view.site == EMPTY_SITE
    assert set(cache.view.counts().values()) == {0}
    assert list(cache.view.all_credentials()) == []
    assert meta(path) == {}


async def test_a_snapshot_is_applied_and_read_back_after_a_restart(
    make_cache: MakeCache, path: Path
) -> None:
    builder = rich(version=7)
    cache = await make_cache()
    assert await cache.apply_snapshot(builder.snapshot()) is ApplyResult.APPLIED
    assert cache.version == 7
    assert cache.needs_resync is False
    assert contents(cache.view) == built(builder)
    assert cache.view.counts() == {
        "tags": 3,
        "holiday_calendars": 1,
        "schedules": 2,
        "doors": 3,
        "invitations": 0,
        "users": 5,
        "credentials": 7,
        "rules": 3,
    }
    assert meta(path)["version"] == "7"
    await cache.stop()

    again = await make_cache()
    assert again.reset_reason is None
    assert again.version == 7
    assert again.needs_resync is False
    assert contents(again.view) == built(builder)
    assert decisions(again.view) == decisions(builder.view())
    assert read_view(path).version == 7


async def test_strings_are_shared_after_a_reload(make_cache: MakeCache) -> None:
    cache = await applied(make_cache, rich())
    await cache.stop()
    view = (await make_cache()).view
    users = view.users
    # Users with the same tags hold one tuple.
    assert users["u1"].tags == users["u2"].tags == ("cleaners", "staff")
    assert users["u1"].tags is users["u2"].tags
    assert users["u4"].tags == ()
    # A credential's user id is the user's own id string.
    credentials = list(view.all_credentials())
    assert len(credentials) == 7
    for credential in credentials:
        assert credential.user_id is users[credential.user_id].id
    for user_id, user in users.items():
        assert user.id is user_id


async def test_a_snapshot_replaces_everything(make_cache: MakeCache, path: Path) -> None:
    cache = await applied(make_cache, rich(version=1))
    smaller = (
        site("UTC", version=2, site_id="site-2")
        .door("lobby", min_assurance="low")
        .user("u9", tags=["all"])
        .credential("c9", "u9", value="04A1B2C3")  # a value the old site gave to c1
        .rule("r9", tags=["all"], doors=["lobby"])
    )
    assert await cache.apply_snapshot(smaller.snapshot()) is ApplyResult.APPLIED
    assert contents(cache.view) == built(smaller)
    assert contents(await reopen(path)) == built(smaller)
    assert query(path, "SELECT id, value FROM credentials") == [("c9", "04A1B2C3")]
    assert [row[0] for row in query(path, "SELECT id FROM users")] == ["u9"]


async def test_a_snapshot_of_the_same_version_is_a_duplicate(
    make_cache: MakeCache, path: Path
) -> None:
    cache = await applied(make_cache, rich(version=3))
    view, on_disk, written = cache.view, table_rows(path), meta(path)
    other = site("UTC", version=3).door("elsewhere")
    assert await cache.apply_snapshot(other.snapshot()) is ApplyResult.DUPLICATE
    assert cache.view is view
    assert table_rows(path) == on_disk
    assert meta(path) == written  # not even rewritten: applied_at is unchanged
    assert contents(await reopen(path)) == built(rich(version=3))


async def test_an_older_snapshot_is_stale_and_changes_nothing(
    make_cache: MakeCache, path: Path
) -> None:
    cache = await applied(make_cache, rich(version=3))
    view, on_disk, written = cache.view, table_rows(path), meta(path)
    older = site("UTC", version=2).door("elsewhere")
    assert await cache.apply_snapshot(older.snapshot()) is ApplyResult.STALE
    assert cache.view is view
    assert cache.version == 3
    assert table_rows(path) == on_disk
    assert meta(path) == written
    assert contents(await reopen(path)) == built(rich(version=3))


# --- snapshot atomicity ---------------------------------------------------------------------

V1_USERS = 10_000
V2_USERS = 20_000
SHARED_VALUE = value_for("nfc_uid", 2 * V1_USERS - 1)  # held by the last v1 and an early v2 user
ONLY_V1_VALUE = value_for("nfc_uid", 0)
ONLY_V2_VALUE = value_for("nfc_uid", 2 * V1_USERS + 1)
PROBES = (ONLY_V1_VALUE, SHARED_VALUE, ONLY_V2_VALUE, value_for("nfc_uid", 10**6))


@functools.cache
def big(version: int) -> Snapshot:
    """A large site whose every user is named after ``version`` ("v2-user-17").

    Made from domain objects rather than JSON to keep the test fast; version 2 gives the
    values of version 1's second half to other users and adds values of its own.
    """
    users_count, first_value = {1: (V1_USERS, 0), 2: (V2_USERS, V1_USERS)}[version]
    tag = Tag(f"t{version}", f"Version {version}")
    users = tuple(
        User(f"u{i}", f"v{version}-user-{i}", UserStatus.ACTIVE, (tag.id,))
        for i in range(users_count)
    )
    credentials = tuple(
        Credential(
            f"v{version}-c{i}-{j}",
            users[i].id,
            NFC,
            value_for("nfc_uid", first_value + 2 * i + j),
            AssuranceLevel.LOW,
        )
        for i in range(users_count)
        for j in range(2)
    )
    entities = {
        "tags": (tag,),
        "doors": (Door("front", "Front", AssuranceLevel.LOW),),
        "users": users,
        "credentials": credentials,
        "rules": (AccessRule(f"r-v{version}", "Rule", frozenset({tag.id}), frozenset({"front"})),),
    }
    check_references(entities)
    return Snapshot(version, Site("site-1", f"Site v{version}", "Europe/Rome"), entities)


Observation = tuple[int, int, int, frozenset[str]]
WHOLE = {
    1: (1, V1_USERS, 2 * V1_USERS, frozenset({"v1-"})),
    2: (2, V2_USERS, 2 * V2_USERS, frozenset({"v2-"})),
}


def observe(conn: sqlite3.Connection) -> Observation:
    """Version, user and credential counts and users' name prefixes, in one read transaction."""
    conn.execute("BEGIN")
    try:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        (users,) = conn.execute("SELECT count(*) FROM users").fetchone()
        (credentials,) = conn.execute("SELECT count(*) FROM credentials").fetchone()
        prefixes = frozenset(
            str(prefix)
            for (prefix,) in conn.execute(
                "SELECT DISTINCT substr(name, 1, instr(name, '-')) FROM users"
            )
        )
    finally:
        conn.execute("COMMIT")
    return int(version), int(users), int(credentials), prefixes


async def test_a_sqlite_reader_sees_the_old_snapshot_or_the_new_never_a_mix(
    make_cache: MakeCache, path: Path
) -> None:
    cache = await make_cache()
    assert await cache.apply_snapshot(big(1)) is ApplyResult.APPLIED
    first_read, apply_started, apply_done = threading.Event(), threading.Event(), threading.Event()

    def reader() -> list[tuple[Observation, bool]]:
        """Read until a read began after the apply was done; note which reads overlapped it."""
        seen: list[tuple[Observation, bool]] = []
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            while True:
                done_before = apply_done.is_set()
                started_before = apply_started.is_set()
                observation = observe(conn)
                seen.append((observation, started_before and not apply_done.is_set()))
                first_read.set()
                if done_before:
                    return seen
        finally:
            conn.close()

    reading = asyncio.create_task(asyncio.to_thread(reader))
    try:
        assert await asyncio.to_thread(first_read.wait, 30)
        apply_started.set()
        result = await cache.apply_snapshot(big(2))
    finally:
        apply_done.set()
        seen = await reading
    assert result is ApplyResult.APPLIED
    observations = [observation for observation, _ in seen]
    mixed = [o for o in observations if o not in (WHOLE[1], WHOLE[2])]
    assert mixed == []
    assert any(during for _, during in seen), "no read overlapped the apply"
    assert observations[0] == WHOLE[1]
    assert observations[-1] == WHOLE[2]
    # Once the new snapshot is seen, the old one never comes back.
    first_new = observations.index(WHOLE[2])
    assert set(observations[first_new:]) == {WHOLE[2]}


def probe(view: CacheView, value: str) -> Decision:
    credential = view.credential(NFC, value)
    return decide(Verified(credential, AssuranceLevel.LOW), "front", NOW, view)


async def test_decisions_during_a_snapshot_see_the_old_site_or_the_new(
    make_cache: MakeCache,
) -> None:
    cache = await make_cache()
    assert await cache.apply_snapshot(big(1)) is ApplyResult.APPLIED
    views = {v: CacheView.build(v, big(v).site, big(v).entities) for v in (1, 2)}
    expected = {v: {value: probe(views[v], value) for value in PROBES} for v in (1, 2)}
    # What the two sites say, so that a mix would show.
    assert expected[1][ONLY_V1_VALUE].rule_id == "r-v1"
    assert expected[2][ONLY_V1_VALUE].reason is Reason.UNKNOWN_CREDENTIAL
    assert expected[1][ONLY_V2_VALUE].reason is Reason.UNKNOWN_CREDENTIAL
    assert expected[2][ONLY_V2_VALUE].rule_id == "r-v2"
    assert expected[1][SHARED_VALUE].user_id != expected[2][SHARED_VALUE].user_id
    assert expected[2][SHARED_VALUE].rule_id == "r-v2"

    first_round = asyncio.Event()
    applying: list[asyncio.Task[ApplyResult]] = []
    # Counted rather than kept: a kept list of every decision would grow by the million.
    seen = {1: 0, 2: 0}
    during = {1: 0, 2: 0}
    back_to_old: list[Decision] = []

    async def decider() -> None:
        while True:
            done = bool(applying) and applying[0].done()
            for value in PROBES:
                view = cache.view
                decision = probe(view, value)
                assert decision == expected[view.version][value]
                if decision.granted:
                    assert decision.user_id is not None
                    name = view.users[decision.user_id].name
                    assert name.startswith(f"v{view.version}-user-")
                if view.version == 1 and seen[2]:
                    back_to_old.append(decision)
                seen[view.version] += 1
                if applying and not done:
                    during[view.version] += 1
            first_round.set()
            if done:
                return
            # A short real pause, as between presentations: a loop that never sleeps starves the
            # SQLite worker thread of the GIL (each row it writes waits out a switch interval).
            await asyncio.sleep(0.001)

    deciding = asyncio.create_task(decider())
    await first_round.wait()
    applying.append(asyncio.create_task(cache.apply_snapshot(big(2))))
    assert await applying[0] is ApplyResult.APPLIED
    await deciding
    assert back_to_old == []
    assert seen[1] > 0
    assert seen[2] >= len(PROBES)
    assert during[1] + during[2] > 0, "no decision overlapped the apply"


# --- deltas ---------------------------------------------------------------------------------


async def test_a_delta_on_its_base_version_is_applied_and_durable(
    make_cache: MakeCache, path: Path
) -> None:
    cache = await applied(make_cache, rich(version=1))
    change = delta(
        2,
        1,
        upsert={
            "users": [user_json("u6", name="Eve", tags=["staff", "night"])],
            "tags": [tag_json("night")],
            "credentials": [credential_json("c8", "u6", value="04A1B2C5", revoked=True)],
            "doors": [door_json("front", name="Front door", min_assurance="medium")],
        },
        delete={"rules": ["r3"], "credentials": ["c5"]},
        site_json=RENAMED_SITE,
    )
    assert await cache.apply_delta(change) is ApplyResult.APPLIED

    expected = rich(version=2)
    expected.site = dict(RENAMED_SITE)
    expected.entities["rules"] = [r for r in expected.entities["rules"] if r["id"] != "r3"]
    expected.entities["credentials"] = [
        c for c in expected.entities["credentials"] if c["id"] != "c5"
    ]
    expected.entities["doors"] = [d for d in expected.entities["doors"] if d["id"] != "front"]
    expected.door("front", name="Front door", min_assurance="medium")
    expected.user("u6", name="Eve", tags=["staff", "night"])
    expected.credential("c8", "u6", value="04A1B2C5", revoked=True)

    assert cache.version == 2
    assert contents(cache.view) == built(expected)
    assert meta(path)["version"] == "2"
    await cache.stop()
    reread = await reopen(path)
    assert contents(reread) == built(expected)
    assert decisions(reread) == decisions(expected.view())


RENAMED_SITE = {
    "id": "site-1",
    "name": "Renamed",
    "timezone": "Europe/Rome",
    "key_blacklist": ["1122334455667788"],  # replaces the whole list
    "lockdown_override_tag": "night",  # a tag upserted by the same delta
}


async def test_the_same_delta_again_is_a_duplicate(make_cache: MakeCache, path: Path) -> None:
    cache = await applied(make_cache, rich(version=1))
    change = delta(2, 1, upsert={"users": [user_json("u6")]})
    assert await cache.apply_delta(change) is ApplyResult.APPLIED
    view, on_disk, written = cache.view, table_rows(path), meta(path)
    assert await cache.apply_delta(change) is ApplyResult.DUPLICATE
    # An older delta, even one whose base is not held, is a duplicate too.
    assert await cache.apply_delta(delta(2, 0, delete={"users": ["u6"]})) is ApplyResult.DUPLICATE
    assert cache.view is view
    assert table_rows(path) == on_disk
    assert meta(path) == written


@pytest.mark.parametrize(("version", "base"), [(5, 3), (5, 0), (3, 2)])
async def test_a_delta_not_based_on_the_version_held_is_a_gap(
    make_cache: MakeCache, path: Path, version: int, base: int
) -> None:
    cache = await applied(make_cache, rich(version=1))
    view, on_disk, written = cache.view, table_rows(path), meta(path)
    change = delta(version, base, upsert={"users": [user_json("u6")]}, delete={"users": ["u1"]})
    assert await cache.apply_delta(change) is ApplyResult.GAP
    assert cache.view is view
    assert cache.version == 1
    assert table_rows(path) == on_disk
    assert meta(path) == written
    assert contents(await reopen(path)) == built(rich(version=1))


async def test_an_empty_cache_takes_no_delta_until_a_snapshot(make_cache: MakeCache) -> None:
    cache = await make_cache()
    change = delta(1, 0, upsert={"tags": [tag_json("staff")], "users": [user_json("u6")]})
    assert await cache.apply_delta(change) is ApplyResult.GAP
    assert cache.version == 0
    assert cache.needs_resync is True


async def test_deleting_a_user_deletes_their_credentials(make_cache: MakeCache, path: Path) -> None:
    cache = await applied(make_cache, rich(version=1))
    assert {c.id for c in cache.view.all_credentials() if c.user_id == "u1"} == {"c1", "c2"}
    assert await cache.apply_delta(delta(2, 1, delete={"users": ["u1"]})) is ApplyResult.APPLIED

    for view in (cache.view, await reopen(path)):
        assert "u1" not in view.users
        remaining = {c.id for c in view.all_credentials()}
        assert remaining == {"c3", "c4", "c5", "c6", "c7"}
        assert view.credential(NFC, "04A1B2C3") is None
        assert len(view.credentials[CredentialKind.BLE_PHONE_KEY]) == 0
    assert query(path, "SELECT id FROM credentials WHERE user_id = 'u1'") == []
    assert query(path, "SELECT id FROM users WHERE id = 'u1'") == []
    assert len(query(path, "SELECT id FROM credentials")) == 5


@pytest.mark.parametrize(
    ("kind", "new_value"),
    [("nfc_uid", "04A1B2C3D4E5F7"), ("desfire", "04A1B2C3")],
    ids=["new value", "new kind"],
)
async def test_changing_a_credential_drops_its_old_key(
    make_cache: MakeCache, path: Path, kind: str, new_value: str
) -> None:
    cache = await applied(make_cache, rich(version=1))
    change = delta(
        2, 1, upsert={"credentials": [credential_json("c1", "u1", kind=kind, value=new_value)]}
    )
    assert await cache.apply_delta(change) is ApplyResult.APPLIED
    new_kind = CredentialKind(kind)
    for view in (cache.view, await reopen(path)):
        assert view.credential(NFC, "04A1B2C3") is None
        moved = view.credential(new_kind, new_value)
        assert moved is not None
        assert (moved.id, moved.user_id) == ("c1", "u1")
        assert [c.id for c in view.all_credentials()].count("c1") == 1
        assert len(list(view.all_credentials())) == 7
    with plain(path) as conn:
        assert lookup_sql(conn, NFC, "04A1B2C3") is None
        row = lookup_sql(conn, new_kind, new_value)
        assert row is not None
        assert row[:4] == ("c1", kind, new_value, "u1")
    assert query(path, "SELECT count(*) FROM credentials WHERE id = 'c1'") == [(1,)]


async def test_a_value_freed_in_the_same_delta_can_be_reused(
    make_cache: MakeCache, path: Path
) -> None:
    cache = await applied(make_cache, rich(version=1))
    change = delta(
        2,
        1,
        upsert={
            # c1 and c7 swap values, and c9 takes the value of c6, which goes.
            "credentials": [
                credential_json("c1", "u1", value="04A1B2C4"),
                credential_json("c7", "u2", value="04A1B2C3"),
                credential_json("c9", "u4", value="04A1B2C3D4E5F6"),
            ]
        },
        delete={"credentials": ["c6"]},
    )
    assert await cache.apply_delta(change) is ApplyResult.APPLIED
    for view in (cache.view, await reopen(path)):
        by_value = {c.value: c.id for c in view.credentials[NFC]}
        assert by_value == {"04A1B2C3": "c7", "04A1B2C4": "c1", "04A1B2C3D4E5F6": "c9"}
    assert sorted(query(path, "SELECT id, value FROM credentials WHERE kind = 'nfc_uid'")) == [
        ("c1", "04A1B2C4"),
        ("c7", "04A1B2C3"),
        ("c9", "04A1B2C3D4E5F6"),
    ]


@pytest.mark.parametrize(
    "upsert",
    [
        credential_json("c8", "u3", value="04A1B2C4"),  # a new credential on c7's value
        credential_json("c1", "u1", value="04A1B2C4"),  # c1 moved onto c7's value
    ],
    ids=["new credential", "changed credential"],
)
async def test_a_value_already_used_by_another_credential_is_refused(
    make_cache: MakeCache, path: Path, upsert: dict[str, Any]
) -> None:
    cache = await applied(make_cache, rich(version=1))
    view, on_disk, written = cache.view, table_rows(path), meta(path)
    with pytest.raises(FormatError, match="already used by another credential"):
        await cache.apply_delta(delta(2, 1, upsert={"credentials": [upsert]}))
    assert cache.view is view
    assert cache.version == 1
    assert table_rows(path) == on_disk
    assert meta(path) == written
    assert contents(await reopen(path)) == built(rich(version=1))


@pytest.mark.parametrize(
    ("upsert", "delete", "message"),
    [
        (
            {"credentials": [credential_json("c8", "ghost", value="04A1B2C5")]},
            {},
            r"upsert\.credentials\[0\]\.user: 'ghost' is not a known user",
        ),
        (
            {"rules": [rule_json("r4", tags=["staff"], doors=["nowhere"])]},
            {},
            r"upsert\.rules\[0\]\.doors: 'nowhere' is not a known door",
        ),
        (
            {"users": [user_json("u6", tags=["staff"])]},
            {"tags": ["staff"]},
            r"upsert\.users\[0\]\.tags: 'staff' is not a known tag",
        ),
        ({}, {"tags": ["visitors"]}, r"cannot delete tag 'visitors': rule 'r3' still uses it"),
        ({}, {"schedules": ["office"]}, r"cannot delete schedule 'office'"),
        ({}, {"doors": ["side"]}, r"cannot delete door 'side': rule 'r3' still uses it"),
        (
            {},
            {"holiday_calendars": ["it"]},
            r"cannot delete holiday calendar 'it': schedule 'office' still uses it",
        ),
        (
            {},
            {"tags": ["visitors"], "rules": ["r3"]},
            r"tag 'visitors' is still held by user 'u3'",
        ),
    ],
    ids=[
        "credential of unknown user",
        "rule to unknown door",
        "user with deleted tag",
        "tag still used by a rule",
        "schedule still used",
        "door still used by a rule",
        "calendar still used by a schedule",
        "tag still held",
    ],
)
async def test_a_delta_with_a_dangling_reference_is_refused(
    make_cache: MakeCache,
    path: Path,
    upsert: dict[str, list[Any]],
    delete: dict[str, list[str]],
    message: str,
) -> None:
    cache = await applied(make_cache, rich(version=1))
    view, on_disk, written = cache.view, table_rows(path), meta(path)
    with pytest.raises(FormatError, match=message):
        await cache.apply_delta(delta(2, 1, upsert=upsert, delete=delete))
    assert cache.view is view
    assert cache.version == 1
    assert table_rows(path) == on_disk
    assert meta(path) == written
    # The cache is still usable.
    assert await cache.apply_delta(delta(2, 1, upsert={"users": [user_json("u6")]})) is (
        ApplyResult.APPLIED
    )


# --- site data added in schema version 2 ---------------------------------------------------


async def test_new_fields_are_stored_in_their_columns_and_the_site(
    make_cache: MakeCache, path: Path
) -> None:
    await applied(make_cache, rich())
    sql = "SELECT id, revalidation_days, revalidated_at FROM credentials WHERE kind = ?"
    assert query(path, sql, MECH.value) == [("c5", 30, "2026-06-01T09:30:00+02:00")]
    assert query(path, "SELECT count(*) FROM credentials WHERE revalidation_days IS NULL") == [(6,)]
    stored = json.loads(meta(path)["site"])
    assert stored["key_blacklist"] == [LOST_KEY, "FFEEDDCCBBAA9988"]
    assert stored["lockdown_override_tag"] == "visitors"
    (body,) = query(path, "SELECT body FROM doors WHERE id = 'side'")[0]
    assert json.loads(body)["unlock_after_first_grant"] is True


#: Schema version 1 and rows as the released gateway wrote them (frozen: never regenerate).
V1_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE tags (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE holiday_calendars (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE schedules (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE doors (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE rules (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, "
    "tags TEXT NOT NULL, valid_from TEXT, valid_until TEXT)",
    "CREATE TABLE credentials (id TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL, "
    "user_id TEXT NOT NULL, assurance INTEGER NOT NULL, revoked INTEGER NOT NULL, "
    "valid_from TEXT, valid_until TEXT, UNIQUE (kind, value))",
    "CREATE INDEX credentials_user ON credentials (user_id)",
)
V1_ROWS = (
    "INSERT INTO meta VALUES ('version', '3'), ('origin', 'upstream'), "
    '(\'site\', \'{"id": "site-1", "name": "Old", "timezone": "Europe/Rome"}\')',
    "INSERT INTO tags VALUES "
    '(\'staff\', \'{"id":"staff","name":"Staff","special":false,"owner":null}\')',
    'INSERT INTO doors VALUES (\'front\', \'{"id":"front","name":"Front",'
    '"min_assurance":"low","unlock_seconds":5.0,"unlock_schedule":null}\')',
    "INSERT INTO users VALUES ('u1', 'Ada', 'active', 'staff', NULL, NULL)",
    "INSERT INTO credentials VALUES ('c1', 'nfc_uid', '04A1B2C3', 'u1', 1, 0, NULL, NULL)",
    "INSERT INTO credentials VALUES ('k1', 'mech_key', '0011223344556677', 'u1', 3, 0, NULL, "
    "'2027-01-01T00:00:00+00:00')",
    'INSERT INTO rules VALUES (\'r1\', \'{"id":"r1","name":"Staff","tags":["staff"],'
    '"doors":["front"],"schedule":null,"valid_from":null,"valid_until":null}\')',
)


def write_v1_cache(path: Path) -> None:
    """A cache file at schema version 1, holding a small site at version 3."""
    with plain(path) as conn:
        for statement in (*V1_SCHEMA, *V1_ROWS):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.commit()


def v1_site(version: int = 3) -> SiteBuilder:
    """What ``write_v1_cache`` holds, as a site."""
    builder = site(version=version).tag("staff", name="Staff").door("front", name="Front")
    builder.entities["doors"][0].update(min_assurance="low", unlock_seconds=5.0)
    builder.user("u1", name="Ada", tags=["staff"]).credential("c1", "u1", value="04A1B2C3")
    builder.credential(
        "k1", "u1", kind="mech_key", value=LOST_KEY, valid_until="2027-01-01T00:00:00+00:00"
    )
    builder.site["name"] = "Old"
    return builder.rule("r1", name="Staff", tags=["staff"], doors=["front"])


def test_a_released_migration_never_changes() -> None:
    assert MIGRATIONS[0] == V1_SCHEMA


async def test_a_version_1_cache_is_upgraded_in_place(make_cache: MakeCache, path: Path) -> None:
    write_v1_cache(path)
    cache = await make_cache()
    assert cache.reset_reason is None
    assert list(path.parent.glob("*.corrupt-*")) == []
    assert query(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert contents(cache.view) == built(v1_site())
    assert cache.view.site.key_blacklist == frozenset()
    key = cache.view.credential(MECH, LOST_KEY)
    assert key is not None
    assert (key.revalidation_days, key.revalidated_at) == (None, None)

    # The upgraded file takes the new fields from a delta, and keeps them across a restart.
    change = delta(
        4,
        3,
        site_json={**v1_site().site, "key_blacklist": ["ffeeddccbbaa9988"]},
        upsert={
            "credentials": [
                credential_json(
                    "k1",
                    "u1",
                    kind="mech_key",
                    value=LOST_KEY,
                    revalidation_days=90,
                    revalidated_at=utc(2026, 6, 1),
                )
            ],
            "doors": [door_json("front", name="Front", unlock_after_first_grant=True)],
        },
    )
    assert await cache.apply_delta(change) is ApplyResult.APPLIED
    await cache.stop()
    reread = await reopen(path)
    key = reread.credential(MECH, LOST_KEY)
    assert key is not None
    assert (key.revalidation_days, key.revalidated_at) == (90, utc(2026, 6, 1))
    assert reread.site.key_blacklist == frozenset({"FFEEDDCCBBAA9988"})
    assert reread.doors["front"].unlock_after_first_grant is True
    assert reread.doors["front"].min_assurance is AssuranceLevel.MEDIUM  # replaced whole
    assert decisions(reread) == decisions(cache.view)


async def test_a_blacklist_change_by_delta_survives_a_restart(
    make_cache: MakeCache, path: Path
) -> None:
    cache = await applied(make_cache, rich(version=1))
    key = credential_by_id(cache.view, "c5")
    listed = {**rich().site, "key_blacklist": [key.value]}
    assert await cache.apply_delta(delta(2, 1, site_json=listed)) is ApplyResult.APPLIED
    identity = Verified(key, key.assurance)
    assert decide(identity, "front", NOW, cache.view).reason is Reason.KEY_BLACKLISTED
    await cache.stop()
    reread = await reopen(path)
    assert reread.site.key_blacklist == frozenset({key.value})
    assert reread.site.lockdown_override_tag == "visitors"
    assert decide(identity, "front", NOW, reread).reason is Reason.KEY_BLACKLISTED


async def test_deleting_the_lockdown_override_tag_is_refused(
    make_cache: MakeCache, path: Path
) -> None:
    cache = await applied(make_cache, rich(version=1))
    on_disk, written = table_rows(path), meta(path)
    change = delta(2, 1, delete={"tags": ["visitors"], "users": ["u3"], "rules": ["r3"]})
    with pytest.raises(FormatError, match="still uses it as its lockdown override tag"):
        await cache.apply_delta(change)
    assert (cache.version, table_rows(path), meta(path)) == (1, on_disk, written)


# --- bad files ------------------------------------------------------------------------------


async def test_a_corrupt_file_is_moved_aside_and_the_cache_starts_empty(
    make_cache: MakeCache, path: Path
) -> None:
    garbage = b"this is not an SQLite database\n" * 256
    write_file(path, garbage)
    cache = await make_cache()
    assert cache.reset_reason is not None
    assert cache.needs_resync is True
    assert cache.version == 0
    assert set(cache.view.counts().values()) == {0}
    moved = {name: b for name, b in files(path.parent).items() if ".corrupt-" in name}
    assert list(moved.values()) == [garbage]
    assert next(iter(moved)).startswith("cache.db.corrupt-")
    assert files(path.parent)[path.name] != garbage  # a fresh database in its place
    # The cache works on a fresh file.
    assert await cache.apply_snapshot(rich().snapshot()) is ApplyResult.APPLIED
    assert contents(cache.view) == built(rich())
    await cache.stop()
    again = await make_cache()
    assert again.reset_reason is None
    assert contents(again.view) == built(rich())


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO credentials VALUES ('cx', 'bogus', 'AB', 'u1', 1, 0, NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO credentials VALUES ('cx', 'nfc_uid', 'AB', 'u1', 9, 0, NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO credentials "
        "VALUES ('cx', 'nfc_uid', 'AB', 'u1', 1, 0, 'yesterday', NULL, NULL, NULL, NULL)",
        "INSERT INTO credentials "
        "VALUES ('cx', 'mech_key', 'AB', 'u1', 1, 0, NULL, NULL, 30, 'last week', NULL)",
        "INSERT INTO users VALUES ('ux', 'X', 'retired', '', NULL, NULL)",
        "INSERT INTO doors VALUES ('dx', '{\"id\": \"dx\"}')",
        "INSERT INTO rules VALUES ('rx', 'not json')",
        "UPDATE meta SET value = 'seven' WHERE key = 'version'",
        "UPDATE meta SET value = '{\"id\": \"s\"}' WHERE key = 'site'",
    ],
    ids=[
        "unknown kind",
        "unknown assurance",
        "bad date",
        "bad revalidation date",
        "unknown status",
        "door body",
        "rule body",
        "version",
        "site",
    ],
)
async def test_a_row_that_cannot_be_read_back_resets_the_cache(
    make_cache: MakeCache, path: Path, sql: str
) -> None:
    cache = await applied(make_cache, rich(version=4))
    await cache.stop()
    with plain(path) as conn:
        conn.execute(sql)
        conn.commit()
    cache = await make_cache()
    assert cache.reset_reason is not None
    assert cache.reset_reason.startswith("unreadable content")
    # The unreadable file is kept for inspection, not deleted.
    assert len(list(path.parent.glob(f"{path.name}.corrupt-*"))) == 1
    assert cache.needs_resync is True
    assert cache.version == 0
    assert set(cache.view.counts().values()) == {0}
    # The cache is usable, and the bad row is gone with the rest of the content.
    assert await cache.apply_snapshot(rich(version=5).snapshot()) is ApplyResult.APPLIED
    await cache.stop()
    again = await make_cache()
    assert again.reset_reason is None
    assert contents(again.view) == built(rich(version=5))


# --- listeners, lookups ---------------------------------------------------------


async def test_listeners_get_each_new_view_and_can_be_removed(make_cache: MakeCache) -> None:
    cache = await make_cache()
    first: list[CacheView] = []
    second: list[CacheView] = []
    remove_first = cache.add_listener(first.append)
    cache.add_listener(second.append)

    assert await cache.apply_snapshot(rich(version=1).snapshot()) is ApplyResult.APPLIED
    assert len(first) == 1
    assert first[0] is cache.view
    assert first[0].version == 1
    assert await cache.apply_delta(delta(2, 1, upsert={"users": [user_json("u6")]})) is (
        ApplyResult.APPLIED
    )
    assert [v.version for v in first] == [1, 2]
    assert first[-1] is cache.view
    assert "u6" in first[-1].users

    # Nothing applied: nobody is called.
    assert await cache.apply_snapshot(rich(version=1).snapshot()) is ApplyResult.STALE
    assert await cache.apply_delta(delta(2, 1)) is ApplyResult.DUPLICATE
    assert await cache.apply_delta(delta(9, 8)) is ApplyResult.GAP
    with pytest.raises(FormatError):
        await cache.apply_delta(delta(3, 2, delete={"tags": ["staff"]}))
    assert [v.version for v in first] == [1, 2]

    remove_first()
    assert await cache.apply_delta(delta(3, 2, delete={"users": ["u6"]})) is ApplyResult.APPLIED
    assert [v.version for v in first] == [1, 2]
    assert [v.version for v in second] == [1, 2, 3]
    assert second[-1] is cache.view


async def test_lookup_sql_finds_a_credential_by_its_key(make_cache: MakeCache, path: Path) -> None:
    await applied(make_cache, rich())
    with plain(path) as conn:
        assert lookup_sql(conn, NFC, "04A1B2C3") == (
            "c1",
            "nfc_uid",
            "04A1B2C3",
            "u1",
            int(AssuranceLevel.LOW),
            0,
            None,
            None,
            None,
            None,
            None,
        )
        row = lookup_sql(conn, CredentialKind.DESFIRE, value_for("desfire", 1))
        assert row == (
            "c3",
            "desfire",
            value_for("desfire", 1),
            "u2",
            int(AssuranceLevel.HIGH),
            1,
            utc(2026, 1, 1).isoformat(),
            "2026-12-31T23:00:00-05:00",
            None,
            None,
            None,
        )
        assert lookup_sql(conn, NFC, "04A1B2C5") is None
        assert lookup_sql(conn, NFC, "04a1b2c3") is None  # the key is the canonical value
        assert lookup_sql(conn, CredentialKind.DESFIRE, "04A1B2C3") is None  # other kind


async def test_demo_data_is_replaced_by_any_upstream_snapshot(make_cache: MakeCache) -> None:
    cache = await make_cache()
    assert (
        await cache.apply_snapshot(rich(version=5).snapshot(), origin="demo") is ApplyResult.APPLIED
    )
    assert cache.needs_resync  # demo data is not upstream's
    assert (
        await cache.apply_delta(delta(6, 5, upsert={"users": [user_json("u6")]})) is ApplyResult.GAP
    )

    upstream = rich(version=1).snapshot()
    assert await cache.apply_snapshot(upstream) is ApplyResult.APPLIED  # older, yet it replaces
    assert (cache.version, cache.origin, cache.needs_resync) == (1, "upstream", False)
    await cache.stop()
    again = await make_cache()
    assert (again.version, again.origin, again.needs_resync) == (1, "upstream", False)


# --- large snapshots: streamed, built off the loop, the old view let go ----------------------


def streamed(builder: SiteBuilder) -> Snapshot:
    """``builder``'s snapshot read as a pulled one is: as a stream, credentials in columns."""
    text = json.dumps(builder.json()).encode()
    return read_snapshot(io.BytesIO(text), SnapshotAssembler(), lambda: None)


async def test_a_streamed_snapshot_is_stored_and_indexed_as_a_parsed_one(
    make_cache: MakeCache, path: Path, tmp_path: Path
) -> None:
    cache = await make_cache()
    snapshot = streamed(rich(version=3))
    assert isinstance(snapshot.entities["credentials"], CredentialColumns)

    assert await cache.apply_snapshot(snapshot) is ApplyResult.APPLIED

    reference = Cache(tmp_path / "reference.db")
    await reference.start()
    try:
        assert await reference.apply_snapshot(rich(version=3).snapshot()) is ApplyResult.APPLIED
        assert table_rows(path) == table_rows(tmp_path / "reference.db")
        assert meta(path)["site"] == meta(tmp_path / "reference.db")["site"]
    finally:
        await reference.stop()
    assert contents(cache.view) == built(rich(version=3))
    assert contents(await reopen(path)) == built(rich(version=3))


def test_credentials_in_columns_are_indexed_in_value_order() -> None:
    """Many values sharing their first digits, of several lengths: split and sorted in pieces."""
    rng = random.Random(5)
    builder = site().door("front").rule("r1", tags=["staff"], doors=["front"])
    builder.user("u1", tags=["staff"])
    values = {f"04{rng.randbytes(6).hex().upper()}" for _ in range(6000)}
    values |= {rng.randbytes(4).hex().upper() for _ in range(3000)}  # 4-byte UIDs
    values |= {f"04{rng.randbytes(9).hex().upper()}" for _ in range(500)}  # 10-byte UIDs
    values |= {"04" + "0" * 12, "04" + "0" * 18, "00" * 4}  # prefixes of one another
    for i, value in enumerate(sorted(values, key=lambda _: rng.random())):
        builder.credential(f"c{i}", "u1", value=value)
    pauses = 0

    def pause() -> None:
        nonlocal pauses
        pauses += 1

    snapshot = streamed(builder)
    view = CacheView.build(snapshot.version, snapshot.site, snapshot.entities, pause=pause)

    table = view.credentials[NFC]
    assert [c.value for c in table] == sorted(values)
    assert all(view.credential(NFC, value) is not None for value in values)
    assert contents(view) == contents(builder.view())
    assert pauses >= len(values)


async def test_a_replaced_view_still_held_stays_whole(make_cache: MakeCache) -> None:
    cache = await make_cache()
    assert await cache.apply_snapshot(rich(version=1).snapshot()) is ApplyResult.APPLIED
    held = cache.view
    before = contents(held)

    assert await cache.apply_snapshot(rich(version=2).snapshot()) is ApplyResult.APPLIED

    assert cache.view is not held
    assert contents(held) == before  # a decision holding it still sees the whole old site
    assert decisions(held) == decisions(rich(version=1).view())


def test_dismantling_a_view_empties_only_what_no_other_view_shares() -> None:
    alone = rich().view()
    first = rich().view()
    second = first.apply(delta(2, 1, upsert={"tags": [tag_json("night")]}))
    assert second.users is first.users  # a delta shares what it does not change
    pauses: list[None] = []

    alone.dismantle(lambda: pauses.append(None))
    first.dismantle(lambda: pauses.append(None))

    assert (alone.users, alone.credentials) == ({}, {})
    assert pauses
    assert second.users
    assert contents(second)["credentials"] == contents(rich().view())["credentials"]


def test_no_collection_runs_while_paused_and_what_was_made_ends_old() -> None:
    assert gc.isenabled()
    with collection_paused():
        assert not gc.isenabled()
        made = [[i] for i in range(5000)]  # enough to trigger collections
    assert gc.isenabled()
    assert gc.get_count()[0] < 700
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(item) in oldest for item in made[::500])

    gc.disable()
    try:
        with collection_paused():
            pass
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()


def test_a_pacer_lets_other_threads_in_once_per_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)

    patient = Pacer(slice_s=60)
    for _ in range(1000):
        patient()
    assert sleeps == []

    eager = Pacer(slice_s=0)
    for _ in range(80):
        eager()
    assert sleeps == [0] * 10  # the clock is read every 8th call


async def test_local_changes_keep_the_version_and_are_checked_like_a_delta(
    make_cache: MakeCache, path: Path
) -> None:
    cache = await applied(make_cache, rich(version=4))
    tag = Tag("ornd-plan-1", "Hot desk", special=True, owner="officernd")
    user = User("ornd-u1", "Local Lou", UserStatus.ACTIVE, ("ornd-plan-1",))
    await cache.apply_local(upserts={"tags": (tag,), "users": (user,)})
    assert cache.version == 4
    assert cache.view.users["ornd-u1"] == user
    with pytest.raises(FormatError, match="still held by user"):
        await cache.apply_local(deletes={"tags": frozenset({"ornd-plan-1"})})
    assert "ornd-plan-1" in cache.view.tags  # nothing applied
    await cache.apply_local(
        deletes={"users": frozenset({"ornd-u1"}), "tags": frozenset({"ornd-plan-1"})}
    )
    assert "ornd-u1" not in cache.view.users
    await cache.stop()
    again = await make_cache()
    assert again.version == 4
    assert "ornd-plan-1" not in again.view.tags
