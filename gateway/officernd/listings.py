"""The gateway's copy of one organisation's OfficeRnD listings, indexed for partial re-mapping.

A full sync replaces a whole listing; a webhook or a poll upserts or removes single objects.
Each change answers which members it may affect, so only those are mapped again (mapping all
10,000 members of a large site takes ~100 ms; one member's memberships, well under one).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The four listings a mapping needs, by their API resource names.
RESOURCES = ("members", "companies", "memberships", "plans")

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Affected:
    """Members a change may concern; ``everyone`` when only a whole re-map will do."""

    members: frozenset[str] = frozenset()
    everyone: bool = False

    def __or__(self, other: Affected) -> Affected:
        return Affected(self.members | other.members, self.everyone or other.everyone)


EVERYONE = Affected(everyone=True)
NOBODY = Affected()


class Listings:
    """Members, companies, memberships and plans by ``_id``, with who-belongs-where indexes."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Obj]] = {name: {} for name in RESOURCES}
        self._company_members: defaultdict[str, set[str]] = defaultdict(set)
        self._member_memberships: defaultdict[str, set[str]] = defaultdict(set)
        self._company_memberships: defaultdict[str, set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return sum(len(objects) for objects in self.objects.values())

    def replace(self, listings: Mapping[str, Iterable[Obj]]) -> None:
        """Take whole listings (every resource named in ``listings``) in place of the old ones."""
        for resource, objects in listings.items():
            self.objects[resource] = {key: obj for obj in objects if (key := _key(obj)) is not None}
        self._reindex()

    def upsert(self, resource: str, obj: Obj) -> Affected:
        """Add or replace one object; the members whose mapping it may change."""
        key = _key(obj)
        if key is None or resource not in self.objects:
            return NOBODY
        before = self.objects[resource].get(key)
        affected = self._concerns(resource, before) | self._concerns(resource, obj)
        self._unindex(resource, key, before)
        self.objects[resource][key] = obj
        self._index(resource, key, obj)
        return affected

    def remove(self, resource: str, key: str) -> Affected:
        """Forget one object (deleted in OfficeRnD); the members whose mapping it may change."""
        before = self.objects.get(resource, {}).pop(key, None)
        if before is None:
            return NOBODY
        self._unindex(resource, key, before)
        return self._concerns(resource, before)

    def scope(self, member_ids: Iterable[str]) -> tuple[list[Obj], list[Obj], list[Obj]]:
        """For ``map_entities``: the members named, every membership that can give them a plan,
        and the companies either names."""
        members = [m for key in member_ids if (m := self.objects["members"].get(key)) is not None]
        memberships: dict[str, Obj] = {}
        all_memberships = self.objects["memberships"]
        for member in members:
            keys = set(self._member_memberships.get(member["_id"], ()))
            company = ref_id(member.get("company"))
            if company is not None:
                keys |= self._company_memberships.get(company, set())
            for key in keys:
                memberships[key] = all_memberships[key]
        named = {ref_id(obj.get("company")) for obj in (*members, *memberships.values())}
        all_companies = self.objects["companies"]
        companies = [all_companies[key] for key in named if key in all_companies]
        return members, list(memberships.values()), companies

    def _concerns(self, resource: str, obj: Obj | None) -> Affected:
        if obj is None:
            return NOBODY
        if resource == "members":
            return Affected(frozenset({obj["_id"]}))
        if resource == "companies":
            return Affected(frozenset(self._company_members.get(obj["_id"], ())))
        if resource == "memberships":
            member = ref_id(obj.get("member"))
            if member is not None:
                return Affected(frozenset({member}))
            company = ref_id(obj.get("company"))
            return Affected(frozenset(self._company_members.get(company or "", ())))
        return EVERYONE  # a plan: its tag's name, and whether memberships of it count at all

    def _index(self, resource: str, key: str, obj: Obj) -> None:
        if resource == "members":
            company = ref_id(obj.get("company"))
            if company is not None:
                self._company_members[company].add(key)
        elif resource == "memberships":
            member = ref_id(obj.get("member"))
            company = ref_id(obj.get("company"))
            if member is not None:
                self._member_memberships[member].add(key)
            elif company is not None:
                self._company_memberships[company].add(key)

    def _unindex(self, resource: str, key: str, obj: Obj | None) -> None:
        if obj is None:
            return
        if resource == "members":
            self._company_members.get(ref_id(obj.get("company")) or "", set()).discard(key)
        elif resource == "memberships":
            self._member_memberships.get(ref_id(obj.get("member")) or "", set()).discard(key)
            self._company_memberships.get(ref_id(obj.get("company")) or "", set()).discard(key)

    def _reindex(self) -> None:
        self._company_members.clear()
        self._member_memberships.clear()
        self._company_memberships.clear()
        for resource in ("members", "memberships"):
            for key, obj in self.objects[resource].items():
                self._index(resource, key, obj)


def ref_id(value: Any) -> str | None:
    """The id a field refers to (a string, or an object's ``_id``); None if it has no usable one."""
    if isinstance(value, Mapping):
        value = value.get("_id")
    return value if isinstance(value, str) and value else None


def _key(obj: Any) -> str | None:
    """An object's ``_id`` if it has a usable one (mapping reports those without)."""
    key = obj.get("_id") if isinstance(obj, dict) else None
    return key if isinstance(key, str) and key else None
