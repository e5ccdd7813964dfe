"""The cache's tables and how entities become rows and back.

Users and credentials, the two collections that grow to hundreds of thousands, get one column
per field so that loading them makes no JSON and no throw-away objects (start-up time and
memory on a Pi). The small collections keep one JSON body per row in the snapshot format.
Rows were validated when they came in; reading them back trusts them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from gateway.codec import CODEC_BY_COLLECTION, COLLECTIONS, CredentialColumns
from gateway.credtable import CredentialTable
from gateway.model import AssuranceLevel, Credential, CredentialKind, User, UserStatus
from gateway.sqlite import Migration

_BODY_TABLE = "CREATE TABLE {} (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID"
BODY_COLLECTIONS = tuple(c for c in COLLECTIONS if c not in ("users", "credentials"))

MIGRATIONS: tuple[Migration, ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        # The body tables of format 1 as first released (later ones come in their migration).
        *(
            _BODY_TABLE.format(c)
            for c in ("tags", "holiday_calendars", "schedules", "doors", "rules")
        ),
        "CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, "
        "tags TEXT NOT NULL, valid_from TEXT, valid_until TEXT)",
        "CREATE TABLE credentials (id TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL, "
        "user_id TEXT NOT NULL, assurance INTEGER NOT NULL, revoked INTEGER NOT NULL, "
        "valid_from TEXT, valid_until TEXT, UNIQUE (kind, value))",
        "CREATE INDEX credentials_user ON credentials (user_id)",
    ),
    # 2: a mechatronic key's revalidation period (days) and last revalidation; NULL for the rest.
    (
        "ALTER TABLE credentials ADD COLUMN revalidation_days INTEGER",
        "ALTER TABLE credentials ADD COLUMN revalidated_at TEXT",
    ),
    # 3: a phone credential's public key (SEC1 point); NULL for the rest.
    ("ALTER TABLE credentials ADD COLUMN public_key BLOB",),
    # 4: guest invitations.
    (_BODY_TABLE.format("invitations"),),
)

USER_COLUMNS = "id, name, status, tags, valid_from, valid_until"
CREDENTIAL_COLUMNS = (
    "id, kind, value, user_id, assurance, revoked, valid_from, valid_until, "
    "revalidation_days, revalidated_at, public_key"
)
_KINDS = {k.value: k for k in CredentialKind}
_STATUSES = {s.value: s for s in UserStatus}
_ASSURANCES = {int(a): a for a in AssuranceLevel}
_LOAD_BATCH = 4096
_TAG_SEPARATOR = " "  # ids never contain a space (codec._ID)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def insert_sql(collection: str) -> str:
    """The upsert statement for one row of ``collection``."""
    if collection == "users":
        return f"INSERT OR REPLACE INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    if collection == "credentials":
        # Plain INSERT: a value held by another credential must fail, not silently replace it.
        # (Upserted credentials are deleted by id first.)
        return f"INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    return f"INSERT OR REPLACE INTO {collection} (id, body) VALUES (?, ?)"


def to_rows(collection: str, entities: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """Rows for ``insert_sql(collection)``."""
    if collection == "users":
        for u in entities:
            yield (
                u.id,
                u.name,
                u.status.value,
                _TAG_SEPARATOR.join(u.tags),
                _iso(u.valid_from),
                _iso(u.valid_until),
            )
    elif isinstance(entities, CredentialColumns):  # a streamed snapshot's: no object each
        revalidation, public_keys = entities.revalidation, entities.public_keys
        for i, (cred_id, kind, value, user, assurance, revoked, start, end) in enumerate(
            zip(
                entities.ids, entities.kinds, entities.values, entities.users,
                entities.assurances, entities.revoked, entities.valid_from, entities.valid_until,
                strict=True,
            )
        ):  # fmt: skip
            days, revalidated = revalidation.get(i, (None, None))
            yield (
                cred_id, kind.value, value, user, int(assurance), revoked,
                _iso(start), _iso(end), days, _iso(revalidated), public_keys.get(i),
            )  # fmt: skip
    elif collection == "credentials":
        for c in entities:
            yield (
                c.id, c.kind.value, c.value, c.user_id, int(c.assurance), int(c.revoked),
                _iso(c.valid_from), _iso(c.valid_until), c.revalidation_days, _iso(c.revalidated_at),
                c.public_key,
            )  # fmt: skip
    else:
        dump = CODEC_BY_COLLECTION[collection].dump
        for e in entities:
            yield (e.id, json.dumps(dump(e), separators=(",", ":")))


def user_from_row(row: Sequence[Any], strings: dict[Any, Any]) -> User:
    """A user from its row; ``strings`` keeps one copy of repeated tag sets."""
    user_id, name, status, tags, valid_from, valid_until = row
    tag_tuple = strings.get(tags)
    if tag_tuple is None:
        tag_tuple = strings[tags] = tuple(tags.split(_TAG_SEPARATOR)) if tags else ()
    return User(user_id, name, _STATUSES[status], tag_tuple, _dt(valid_from), _dt(valid_until))


def credential_from_row(row: Sequence[Any], user_ids: dict[str, str]) -> Credential:
    """A credential from its row; its user id is shared with the user's own id string."""
    (
        cred_id,
        kind,
        value,
        user_id,
        assurance,
        revoked,
        valid_from,
        valid_until,
        days,
        revalidated,
        public_key,
    ) = row
    return Credential(
        cred_id,
        user_ids.get(user_id, user_id),
        _KINDS[kind],
        value,
        AssuranceLevel(assurance),
        bool(revoked),
        _dt(valid_from),
        _dt(valid_until),
        days,
        _dt(revalidated),
        public_key,
    )


def read_credential_tables(
    conn: sqlite3.Connection, user_ids: dict[str, str]
) -> dict[CredentialKind, CredentialTable]:
    """Every credential straight from its row into its kind's table, in value order.

    No ``Credential`` objects are made: short-lived objects between the long-lived strings
    would leave memory fragmented for the life of the process.
    """
    tables: dict[CredentialKind, CredentialTable] = {}
    cursor = conn.execute(f"SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY kind, value")
    while batch := cursor.fetchmany(_LOAD_BATCH):
        for (
            cred_id, kind, value, user_id, assurance, revoked, valid_from, valid_until, days,
            revalidated, public_key,
        ) in batch:  # fmt: skip
            kind_ = _KINDS[kind]
            table = tables.get(kind_)
            if table is None:
                table = tables[kind_] = CredentialTable(kind_)
            table.append(
                cred_id, user_ids.get(user_id, user_id), value, _ASSURANCES[assurance], bool(revoked),
                _dt(valid_from), _dt(valid_until),
                revalidation_days=days, revalidated_at=_dt(revalidated), public_key=public_key,
            )  # fmt: skip
    return tables


def body_from_row(collection: str, body: str, index: int) -> Any:
    """An entity of a small collection from its JSON body."""
    return CODEC_BY_COLLECTION[collection].parse(json.loads(body), f"{collection}[{index}]")
