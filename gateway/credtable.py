"""A compact, immutable table of one kind's credentials, looked up by value.

A site holds hundreds of thousands of credentials and a Pi has little memory, so instead of a
dict of objects (about 130 bytes per credential before its strings) the table keeps parallel
lists sorted by value and finds a value by binary search (about 40 bytes per credential). A
``Credential`` is made on lookup. Changes return a new table; the old one stays valid for the
decisions still holding it.

The few credentials with a revalidation period (mechatronic keys) or a public key (phones) keep
it in a side dict keyed by value, so that the many without one cost nothing extra.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime

from gateway.model import AssuranceLevel, Credential, CredentialKind

_REVOKED = 0x80  # flag bit; the low bits hold the assurance level
_ASSURANCE_MASK = 0x0F

# Above this many changes, rebuilding is cheaper than inserting one by one (each insert moves
# the tail of every column).
_REBUILD_ABOVE = 64


# Decoding a flags byte, precomputed: an enum lookup by value costs more than the binary search.
_DECODED: dict[int, tuple[AssuranceLevel, bool]] = {
    int(level) | revoked: (level, bool(revoked))
    for level in AssuranceLevel
    for revoked in (0, _REVOKED)
}


#: A credential's revalidation period in days and its last revalidation.
Revalidation = tuple[int | None, datetime | None]
_NO_REVALIDATION: Revalidation = (None, None)


def _flags(credential: Credential) -> int:
    return int(credential.assurance) | (_REVOKED if credential.revoked else 0)


def _revalidation_of(credential: Credential) -> Revalidation | None:
    if credential.revalidation_days is None and credential.revalidated_at is None:
        return None
    return (credential.revalidation_days, credential.revalidated_at)


class CredentialTable:
    """The credentials of one kind, sorted by value."""

    __slots__ = (
        "_flags",
        "_from",
        "_ids",
        "_public_keys",
        "_revalidation",
        "_until",
        "_users",
        "_values",
        "kind",
    )

    def __init__(self, kind: CredentialKind) -> None:
        self.kind = kind
        self._values: list[str] = []
        self._ids: list[str] = []
        self._users: list[str] = []
        self._flags = bytearray()
        self._from: list[datetime | None] = []
        self._until: list[datetime | None] = []
        self._revalidation: dict[str, Revalidation] = {}  # by value; only credentials with one
        self._public_keys: dict[str, bytes] = {}  # by value; only phone credentials

    @classmethod
    def build(cls, kind: CredentialKind, credentials: Iterable[Credential]) -> CredentialTable:
        """A table of ``credentials`` (all of ``kind``, values unique)."""
        table = cls(kind)
        for credential in sorted(credentials, key=lambda c: c.value):
            table._append(credential)
        return table

    def _append(self, c: Credential) -> None:
        self.append(
            c.id,
            c.user_id,
            c.value,
            c.assurance,
            c.revoked,
            c.valid_from,
            c.valid_until,
            revalidation_days=c.revalidation_days,
            revalidated_at=c.revalidated_at,
            public_key=c.public_key,
        )

    def append(
        self,
        credential_id: str,
        user_id: str,
        value: str,
        assurance: AssuranceLevel,
        revoked: bool,
        valid_from: datetime | None,
        valid_until: datetime | None,
        *,
        revalidation_days: int | None = None,
        revalidated_at: datetime | None = None,
        public_key: bytes | None = None,
    ) -> None:
        """Add a credential whose value sorts after every value held (bulk loading in order)."""
        if self._values and value <= self._values[-1]:
            raise ValueError("credentials must be appended in increasing value order")
        self._values.append(value)
        self._ids.append(credential_id)
        self._users.append(user_id)
        self._flags.append(int(assurance) | (_REVOKED if revoked else 0))
        self._from.append(valid_from)
        self._until.append(valid_until)
        if revalidation_days is not None or revalidated_at is not None:
            self._revalidation[value] = (revalidation_days, revalidated_at)
        if public_key is not None:
            self._public_keys[value] = public_key

    def _at(self, i: int) -> Credential:
        assurance, revoked = _DECODED[self._flags[i]]
        value = self._values[i]
        days, revalidated = self._revalidation.get(value, _NO_REVALIDATION)
        return Credential(
            self._ids[i],
            self._users[i],
            self.kind,
            value,
            assurance,
            revoked,
            self._from[i],
            self._until[i],
            days,
            revalidated,
            self._public_keys.get(value),
        )

    def get(self, value: str) -> Credential | None:
        """The credential with ``value``, or None."""
        values = self._values
        i = bisect_left(values, value)
        if i < len(values) and values[i] == value:
            return self._at(i)
        return None

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Credential]:
        return (self._at(i) for i in range(len(self._values)))

    def _copy(self) -> CredentialTable:
        table = CredentialTable(self.kind)
        table._values = self._values.copy()
        table._ids = self._ids.copy()
        table._users = self._users.copy()
        table._flags = self._flags.copy()
        table._from = self._from.copy()
        table._until = self._until.copy()
        table._revalidation = self._revalidation.copy()
        table._public_keys = self._public_keys.copy()
        return table

    def with_changes(
        self, removed: Collection[str], added: Collection[Credential]
    ) -> CredentialTable:
        """A new table without the values in ``removed`` and with ``added`` (which replace)."""
        if len(removed) + len(added) > _REBUILD_ABOVE:
            drop = set(removed) | {c.value for c in added}
            return CredentialTable.build(
                self.kind, [*(c for c in self if c.value not in drop), *added]
            )
        table = self._copy()
        for value in [*removed, *(c.value for c in added)]:
            table._delete(value)
        for credential in added:
            table._insert(credential)
        return table

    def _delete(self, value: str) -> None:
        i = bisect_left(self._values, value)
        if i < len(self._values) and self._values[i] == value:
            for column in (self._values, self._ids, self._users, self._from, self._until):
                del column[i]
            del self._flags[i]
            self._revalidation.pop(value, None)
            self._public_keys.pop(value, None)

    def _insert(self, c: Credential) -> None:
        i = bisect_left(self._values, c.value)
        self._values.insert(i, c.value)
        self._ids.insert(i, c.id)
        self._users.insert(i, c.user_id)
        self._flags.insert(i, _flags(c))
        self._from.insert(i, c.valid_from)
        self._until.insert(i, c.valid_until)
        revalidation = _revalidation_of(c)
        if revalidation is not None:
            self._revalidation[c.value] = revalidation
        if c.public_key is not None:
            self._public_keys[c.value] = c.public_key
