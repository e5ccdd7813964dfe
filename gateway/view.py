"""The in-memory, immutable view of the cache that every decision reads.

Built once from a snapshot, then derived copy-on-write for each delta: a decision holding a
view keeps a consistent picture even while a newer one is being built, and swapping the
reference is atomic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from gateway.codec import (
    COLLECTIONS,
    Delta,
    FormatError,
    References,
    dangling,
    site_dangling,
    site_dangling_error,
)
from gateway.credtable import CredentialTable
from gateway.model import (
    AccessRule,
    Credential,
    CredentialKind,
    Door,
    HolidayCalendar,
    Schedule,
    Site,
    Tag,
    User,
)
from gateway.schedule import CompiledSchedule

RuleIndex = dict[tuple[str, str], tuple[AccessRule, ...]]
EMPTY_SITE = Site(id="unprovisioned", name="Unprovisioned", timezone="UTC")


def _by_id(items: Iterable[Any]) -> dict[str, Any]:
    return {item.id: item for item in items}


def _index_rules(rules: Iterable[AccessRule]) -> RuleIndex:
    index: dict[tuple[str, str], list[AccessRule]] = {}
    for rule in sorted(rules, key=lambda r: r.id):  # sorted: the first granting rule is stable
        for door in rule.doors:
            for tag in rule.tags:
                index.setdefault((door, tag), []).append(rule)
    return {key: tuple(value) for key, value in index.items()}


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
        self.rule_index = _index_rules(rules.values()) if rule_index is None else rule_index
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
    ) -> CacheView:
        """Index a whole site's entities; credentials come as entities or as ready tables."""
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
            users=_by_id(entities.get("users", ())),
            credentials=credentials,
            tags=_by_id(entities.get("tags", ())),
            schedules=_by_id(entities.get("schedules", ())),
            calendars=_by_id(entities.get("holiday_calendars", ())),
            rules=_by_id(entities.get("rules", ())),
        )

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
        }
        if any(deleted.get(c) for c in ("tags", "doors", "schedules", "holiday_calendars")):
            found = dangling(remaining, References(exists))
            if found is not None:
                what = found.target_collection[:-1].replace("_", " ")
                raise FormatError(
                    f"delete.{found.target_collection}",
                    f"cannot delete {what} {found.target!r}: {found.collection[:-1]} {found.entity_id!r} still uses it",
                )
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

    def _check_site(self, delta: Delta, refs: References) -> None:
        """Raise FormatError if the site after ``delta`` names a tag that would not exist."""
        site = delta.site or self.site
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
        schedules = merged("schedules", self.schedules)
        calendars = merged("holiday_calendars", self.calendars)
        calendars_changed = calendars is not self.calendars
        return CacheView(
            version=delta.version,
            site=delta.site or self.site,
            doors=merged("doors", self.doors),
            users=merged("users", self.users),
            credentials=credentials,
            tags=merged("tags", self.tags),
            schedules=schedules,
            calendars=calendars,
            rules=rules,
            rule_index=None if rules is not self.rules else self.rule_index,
            compiled=None
            if (schedules is not self.schedules or calendars_changed)
            else self.compiled,
        )
