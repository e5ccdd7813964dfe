"""The in-memory, immutable view of the cache that every decision reads.

Built once from a snapshot, then derived copy-on-write for each delta: a decision holding a
view keeps a consistent picture even while a newer one is being built, and swapping the
reference is atomic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from gateway.codec import (
    COLLECTIONS,
    CredentialColumns,
    Delta,
    FormatError,
    References,
    dangling,
    misplaced_tag,
    site_dangling,
    site_dangling_error,
)
from gateway.credtable import CredentialTable
from gateway.model import (
    GUEST_USER_PREFIX,
    INVITATION_RULE_PREFIX,
    AccessRule,
    Credential,
    CredentialKind,
    Door,
    HolidayCalendar,
    Invitation,
    RuleType,
    Schedule,
    Site,
    Tag,
    User,
)
from gateway.schedule import CompiledSchedule

RuleIndex = dict[tuple[str, str], tuple[AccessRule, ...]]
EMPTY_SITE = Site(id="unprovisioned", name="Unprovisioned", timezone="UTC")
#: Values sorted in one go at most (the sort holds the GIL throughout; see ``_value_order``).
_SORT_AT_ONCE = 2048


def _no_pause() -> None:
    pass


def _by_id(items: Iterable[Any], pause: Callable[[], None] = _no_pause) -> dict[str, Any]:
    out = {}
    for item in items:
        out[item.id] = item
        pause()
    return out


def _value_order(
    values: Sequence[str], indices: list[int], pause: Callable[[], None], depth: int = 0
) -> list[int]:
    """``indices`` sorted by ``values[i]``, in pieces of at most ``_SORT_AT_ONCE``.

    One ``sort`` of 100k strings holds the GIL for about 25 ms; here values are first split by
    their next two characters (the split keeps the order: a shorter prefix sorts first), so each
    sort is short and ``pause`` runs between them. NFC UIDs all starting "04" split one level on.
    """
    if len(indices) <= _SORT_AT_ONCE:
        indices.sort(key=values.__getitem__)
        pause()
        return indices
    buckets: dict[str, list[int]] = {}
    for i in indices:
        buckets.setdefault(values[i][depth : depth + 2], []).append(i)
        pause()
    out: list[int] = []
    for key in sorted(buckets):
        bucket = buckets.pop(key)
        if len(key) == 2:
            out += _value_order(values, bucket, pause, depth + 2)
        else:  # values that end here: all the same (a table never holds two), nothing to sort
            out += bucket
    return out


def _tables_from_columns(
    columns: CredentialColumns, pause: Callable[[], None]
) -> dict[CredentialKind, CredentialTable]:
    """Each kind's table straight from the columns, without a ``Credential`` each."""
    by_kind: dict[CredentialKind, list[int]] = {kind: [] for kind in CredentialKind}
    for i, kind in enumerate(columns.kinds):
        by_kind[kind].append(i)
        pause()
    ids, users, values = columns.ids, columns.users, columns.values
    assurances, revoked = columns.assurances, columns.revoked
    starts, ends, revalidation = columns.valid_from, columns.valid_until, columns.revalidation
    public_keys = columns.public_keys
    tables = {}
    for kind, indices in by_kind.items():
        table = tables[kind] = CredentialTable(kind)
        for i in _value_order(values, indices, pause):
            days, revalidated = revalidation.get(i, (None, None))
            table.append(
                ids[i], users[i], values[i], assurances[i], bool(revoked[i]), starts[i], ends[i],
                revalidation_days=days, revalidated_at=revalidated, public_key=public_keys.get(i),
            )  # fmt: skip
            pause()
    return tables


def user_key(user_id: str) -> str:
    """The rule index's key for a rule naming a user directly (tag ids never start with '@')."""
    return "@" + user_id


def _index_rules(rules: Iterable[AccessRule], doors: Mapping[str, Door]) -> RuleIndex:
    """Rules by (door id, user tag or ``user_key(user)``), door tags expanded to their doors."""
    doors_by_tag: dict[str, list[str]] = {}
    for door in doors.values():
        for tag in door.tags:
            doors_by_tag.setdefault(tag, []).append(door.id)
    index: dict[tuple[str, str], list[AccessRule]] = {}
    for rule in sorted(rules, key=lambda r: r.id):  # sorted: the first granting rule is stable
        chosen = set(rule.doors)
        for tag in rule.door_tags:
            chosen.update(doors_by_tag.get(tag, ()))
        principals = [*rule.tags, *map(user_key, rule.users)]
        for door_id in chosen:
            for principal in principals:
                index.setdefault((door_id, principal), []).append(rule)
    return {key: tuple(value) for key, value in index.items()}


def guest_user(invitation: Invitation) -> User:
    """The user an invitation's phone keys belong to, valid while the invitation is."""
    return User(
        id=invitation.guest_id,
        name=invitation.name,
        valid_from=invitation.valid_from,
        valid_until=invitation.valid_until,
    )


def guest_rule(invitation: Invitation) -> AccessRule:
    """The smartphone rule an invitation grants its guest."""
    return AccessRule(
        id=invitation.rule_id,
        name=f"Invitation {invitation.name}",
        tags=frozenset(),
        doors=invitation.doors,
        valid_from=invitation.valid_from,
        valid_until=invitation.valid_until,
        users=frozenset({invitation.guest_id}),
        door_tags=invitation.door_tags,
        type=RuleType.SMARTPHONE,
        days=invitation.days,
        time_slot=invitation.time_slot,
    )


def _compile(
    schedules: Mapping[str, Schedule], calendars: Mapping[str, HolidayCalendar]
) -> dict[str, CompiledSchedule]:
    return {sid: CompiledSchedule(s, calendars) for sid, s in schedules.items()}


class CacheView:
    """Everything a decision needs, indexed for O(1) lookups; never mutated after build."""

    __slots__ = (
        "calendars",
        "compiled",
        "credentials",
        "doors",
        "guest_rules",
        "guests",
        "invitations",
        "rule_index",
        "rules",
        "schedules",
        "site",
        "tags",
        "tz",
        "users",
        "version",
    )

    def __init__(
        self,
        *,
        version: int,
        site: Site,
        doors: dict[str, Door],
        users: dict[str, User],
        credentials: dict[CredentialKind, CredentialTable],
        tags: dict[str, Tag],
        schedules: dict[str, Schedule],
        calendars: dict[str, HolidayCalendar],
        rules: dict[str, AccessRule],
        invitations: dict[str, Invitation] | None = None,
        rule_index: RuleIndex | None = None,
        compiled: dict[str, CompiledSchedule] | None = None,
    ) -> None:
        self.version = version
        self.site = site
        self.tz: ZoneInfo = site.tz
        self.doors = doors
        self.users = users
        self.credentials = credentials
        self.tags = tags
        self.schedules = schedules
        self.calendars = calendars
        self.rules = rules
        self.invitations = {} if invitations is None else invitations
        #: Each invitation's guest user and smartphone rule (not stored: made from it).
        self.guests = {i.guest_id: guest_user(i) for i in self.invitations.values()}
        self.guest_rules = {i.rule_id: guest_rule(i) for i in self.invitations.values()}
        self.rule_index = (
            _index_rules([*rules.values(), *self.guest_rules.values()], doors)
            if rule_index is None
            else rule_index
        )
        self.compiled = _compile(schedules, calendars) if compiled is None else compiled

    @classmethod
    def empty(cls) -> CacheView:
        """The view of a cache that holds nothing (version 0)."""
        return cls.build(0, EMPTY_SITE, {})

    @classmethod
    def build(
        cls,
        version: int,
        site: Site,
        entities: Mapping[str, Iterable[Any]],
        credential_tables: Mapping[CredentialKind, CredentialTable] | None = None,
        *,
        pause: Callable[[], None] = _no_pause,
    ) -> CacheView:
        """Index a whole site's entities; credentials come as entities or as ready tables.

        ``pause`` is called between small steps (a worker thread building a large view lets
        the event loop run).
        """
        columns = entities.get("credentials")
        if credential_tables is None and isinstance(columns, CredentialColumns):
            credential_tables = _tables_from_columns(columns, pause)
        if credential_tables is None:
            by_kind: dict[CredentialKind, list[Credential]] = {kind: [] for kind in CredentialKind}
            for credential in entities.get("credentials", ()):
                by_kind[credential.kind].append(credential)
            credentials = {
                kind: CredentialTable.build(kind, items) for kind, items in by_kind.items()
            }
        else:
            credentials = {
                kind: credential_tables.get(kind) or CredentialTable(kind)
                for kind in CredentialKind
            }
        return cls(
            version=version,
            site=site,
            doors=_by_id(entities.get("doors", ())),
            users=_by_id(entities.get("users", ()), pause),
            credentials=credentials,
            tags=_by_id(entities.get("tags", ())),
            schedules=_by_id(entities.get("schedules", ())),
            calendars=_by_id(entities.get("holiday_calendars", ())),
            rules=_by_id(entities.get("rules", ())),
            invitations=_by_id(entities.get("invitations", ())),
        )

    def dismantle(self, pause: Callable[[], None]) -> None:
        """Empty this view's large containers a few entries at a time, ``pause`` in between.

        Freeing a 100k-user view in one go holds the GIL for about 25 ms. Only for a view that
        nothing else holds any more (the cache, once it swapped in the next one); containers
        shared with another view (a delta's copy-on-write) are left alone.
        """
        # Two references to a container: this view's slot and getrefcount's own argument.
        if sys.getrefcount(self.users) == 2:
            users = self.users
            while users:
                for _ in range(min(len(users), 256)):
                    users.popitem()
                pause()
        if sys.getrefcount(self.credentials) == 2:
            tables = self.credentials
            while tables:
                tables.popitem()  # one kind's table (about 5 ms for 100k credentials)
                pause()

    def user(self, user_id: str) -> User | None:
        """The user ``user_id``, or an invitation's guest."""
        user = self.users.get(user_id)
        return self.guests.get(user_id) if user is None else user

    def credential(self, kind: CredentialKind, value: str) -> Credential | None:
        """The cached credential of ``kind`` with canonical ``value``, if any."""
        return self.credentials[kind].get(value)

    def all_credentials(self) -> Iterator[Credential]:
        """Every credential, kind by kind, in value order (slow: for tools, not decisions)."""
        for table in self.credentials.values():
            yield from table

    def collection(self, name: str) -> Mapping[str, Any]:
        """The entities of one collection by id (credentials excepted: keyed by kind/value)."""
        collections: dict[str, Mapping[str, Any]] = {
            "doors": self.doors,
            "users": self.users,
            "tags": self.tags,
            "schedules": self.schedules,
            "holiday_calendars": self.calendars,
            "rules": self.rules,
            "invitations": self.invitations,
        }
        return collections[name]

    def counts(self) -> dict[str, int]:
        """How many entities of each collection the view holds."""
        out = {name: len(self.collection(name)) for name in COLLECTIONS if name != "credentials"}
        out["credentials"] = sum(len(table) for table in self.credentials.values())
        return out

    def check_delta(self, delta: Delta) -> None:
        """Raise FormatError if applying ``delta`` would leave a reference dangling."""
        upserted = {k: {e.id for e in v} for k, v in delta.upserts.items()}
        deleted = {k: set(v) for k, v in delta.deletes.items()}

        def exists(collection: str, entity_id: str) -> bool:
            if entity_id in upserted.get(collection, ()):
                return True
            if entity_id in deleted.get(collection, ()):
                return False
            return entity_id in self.collection(collection)

        for collection, prefix in (("users", GUEST_USER_PREFIX), ("rules", INVITATION_RULE_PREFIX)):
            for entity in delta.upserts.get(collection, ()):
                if entity.id.startswith(prefix):  # the codec refuses these too; code may not
                    raise FormatError(
                        f"upsert.{collection}",
                        f"{entity.id!r}: ids starting {prefix!r} belong to invitations",
                    )
        refs = References(exists)
        found = dangling(delta.upserts, refs)
        if found is not None:
            raise found.error("upsert.")
        # What stays must not point at what goes (credentials of a deleted user go with it).
        remaining: dict[str, list[Any]] = {
            "rules": [
                r
                for r in self.rules.values()
                if r.id not in deleted.get("rules", ()) and r.id not in upserted.get("rules", ())
            ],
            "doors": [
                d
                for d in self.doors.values()
                if d.id not in deleted.get("doors", ()) and d.id not in upserted.get("doors", ())
            ],
            "schedules": [
                s
                for s in self.schedules.values()
                if s.id not in deleted.get("schedules", ())
                and s.id not in upserted.get("schedules", ())
            ],
            "invitations": [
                i
                for i in self.invitations.values()
                if i.id not in deleted.get("invitations", ())
                and i.id not in upserted.get("invitations", ())
            ],
        }
        if any(
            deleted.get(c)
            for c in ("tags", "doors", "schedules", "holiday_calendars", "users", "invitations")
        ):
            found = dangling(remaining, References(exists))
            if found is not None:
                what = found.target_collection[:-1].replace("_", " ")
                raise FormatError(
                    f"delete.{found.target_collection}",
                    f"cannot delete {what} {found.target!r}: {found.collection[:-1]} {found.entity_id!r} still uses it",
                )
        self._check_scopes(delta, remaining)
        if deleted.get("tags"):
            for user in self.users.values():
                if (
                    user.id not in deleted.get("users", ())
                    and user.id not in upserted.get("users", ())
                    and deleted["tags"].intersection(user.tags)
                ):
                    held = sorted(deleted["tags"].intersection(user.tags))[0]
                    raise FormatError(
                        "delete.tags", f"tag {held!r} is still held by user {user.id!r}"
                    )
        self._check_site(delta, refs)

    def _check_scopes(self, delta: Delta, remaining: Mapping[str, Iterable[Any]]) -> None:
        """Raise FormatError if a user tag would select doors, or a door tag users."""
        new_tags = {t.id: t for t in delta.upserts.get("tags", ())}

        def scope_of(tag_id: str) -> Any:
            tag = new_tags.get(tag_id) or self.tags.get(tag_id)
            return None if tag is None else tag.scope

        found = misplaced_tag(delta.upserts, scope_of, "upsert.")
        if found is not None:
            raise found
        rescoped = any(
            t.id in self.tags and self.tags[t.id].scope is not t.scope for t in new_tags.values()
        )
        if rescoped:  # what already names the tag must still name it in its scope
            found = misplaced_tag({**remaining, "users": self.users.values()}, scope_of)
            if found is not None:
                raise FormatError(
                    "upsert.tags", f"cannot change the scope of a tag in use: {found}"
                )

    def _check_site(self, delta: Delta, refs: References) -> None:
        """Raise FormatError if the site after ``delta`` names a tag that would not exist."""
        site = delta.site or self.site
        if site.pin_hashing is None and (
            any(c.kind is CredentialKind.PIN for c in delta.upserts.get("credentials", ()))
            or (delta.site is not None and len(self.credentials[CredentialKind.PIN]))
        ):
            raise FormatError(
                "site.pin_hashing",
                "missing: the site has pin credentials, and their hashes cannot be checked "
                "without the site's salt and scrypt parameters",
            )
        tag = site_dangling(site, refs)
        if tag is None:
            return
        if delta.site is not None:
            raise site_dangling_error(tag)
        raise FormatError(
            "delete.tags",
            f"cannot delete tag {tag!r}: site {site.id!r} still uses it as its lockdown override tag",
        )

    def apply(self, delta: Delta, deleted_credentials: Iterable[Credential] = ()) -> CacheView:
        """A new view with ``delta`` applied; ``deleted_credentials`` are those the cache removed."""
        ups = delta.upserts
        dels = delta.deletes

        def merged(name: str, current: dict[str, Any]) -> dict[str, Any]:
            if not ups.get(name) and not dels.get(name):
                return current
            out = dict(current)
            for entity_id in dels.get(name, ()):
                out.pop(entity_id, None)
            for entity in ups.get(name, ()):
                out[entity.id] = entity
            return out

        credentials = self.credentials
        gone = list(deleted_credentials)
        added = ups.get("credentials", ())
        if gone or added:
            credentials = dict(credentials)
            for kind in {c.kind for c in gone} | {c.kind for c in added}:
                credentials[kind] = credentials[kind].with_changes(
                    [c.value for c in gone if c.kind is kind], [c for c in added if c.kind is kind]
                )

        rules = merged("rules", self.rules)
        doors = merged("doors", self.doors)
        invitations = merged("invitations", self.invitations)
        schedules = merged("schedules", self.schedules)
        calendars = merged("holiday_calendars", self.calendars)
        calendars_changed = calendars is not self.calendars
        return CacheView(
            version=delta.version,
            site=delta.site or self.site,
            doors=doors,
            users=merged("users", self.users),
            credentials=credentials,
            tags=merged("tags", self.tags),
            schedules=schedules,
            calendars=calendars,
            rules=rules,
            invitations=invitations,
            rule_index=None
            if (
                rules is not self.rules
                or doors is not self.doors
                or invitations is not self.invitations
            )
            else self.rule_index,
            compiled=None
            if (schedules is not self.schedules or calendars_changed)
            else self.compiled,
        )
