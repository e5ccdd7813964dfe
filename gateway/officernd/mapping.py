"""OfficeRnD members, companies, memberships and plans as the gateway's users, tags and credentials.

Pure: no I/O, no clock (the caller passes ``today``, the site's local date). ``map_entities``
turns whole listings into a ``MappedSite``; ``diff`` turns two mappings into the upserts and
deletes that take a cache from one to the other. Nothing in the input can make it raise: an
entity it cannot use is skipped (or a field it cannot read is ignored) and one plain sentence
per case goes into ``MappedSite.problems``, for the caller to log once and show in its status.
Problems name members and plans by their OfficeRnD id (and a member by name when it has one),
never by email, and show card values redacted.

The rules (product behaviour: OFFICERND.md):

**Members become users.** ``User.id`` is ``user_id_prefix`` + the member's ``_id``. The name is
the member's ``name``, else their ``email``, else the id (never empty; at most 256 characters).
A member without an email is mapped like any other. The status: ``former`` → ``former``; a
status in ``member_statuses_with_access`` (default ``active`` and ``drop-in``) → ``active``;
every other (``pending``, ``contact``, ``lead``, ``not_approved``, missing or unknown) →
``suspended``, an undocumented or missing one also reported. ``former`` can never grant access.
A member missing from the listing (removed in OfficeRnD) is missing from the mapping, so
``diff`` deletes the user and, with it, their credentials. ``valid_from`` and ``valid_until``
are always left empty: what a member may do is carried by their status and their plan tags,
which follow the memberships' dates; a member's own ``startDate`` is when they joined, not a
limit on access. Because memberships start and end on dates, the caller maps again when the
site's date changes (nothing need change in OfficeRnD, so no webhook need come, when a
membership simply runs out). The member's own OfficeRnD ``tags[]`` are not mapped.

**Every plan becomes a Special User Tag**: ``Tag(id=tag_id_prefix + plan _id, name=plan name,
special=True, owner=OWNER)``; the name falls back to the plan's ``code``, then its id. A tag is
made for every plan listed, held or not, so access rules can be written for a plan before
anyone holds it. Renaming a plan renames the tag and keeps its id. A plan that is no longer
listed loses its tag (a rule still naming it makes the cache refuse the delta, which says so).

**A membership is active on ``today``** when all of:

- its ``status`` is ``approved`` (missing or null counts as approved; ``not_approved`` or any
  other value does not, the latter reported) and its ``calculatedStatus`` is not
  ``not_approved``;
- ``startDate <= today`` and (``endDate`` missing or null, or ``today <= endDate``): both days
  count, so a membership ending on the 31st still opens doors on the 31st and not on the 1st.

Dates are read as calendar dates as written: ``2026-01-31``, ``2026-01-31T00:00:00.000Z`` and
``2026-01-31T23:30:00+05:00`` are all the 31st (no timezone conversion). **The dates win over
``calculatedStatus``** when both are there: the status is computed when the listing was read
and goes stale in a cached listing (a membership that ended at midnight still says
``active``), while the dates give today's answer. ``calculatedStatus`` decides only when
``startDate`` is missing: then the membership is active only if it says ``active`` (and the
end date, if any, has not passed); without either the membership is ignored and reported. An
unreadable date is reported and the membership ignored (it grants nothing). Inactive
memberships are ignored without a word, even when they point at something unknown.

**An active membership gives its plan's tag**: to its ``member`` when it names one (a personal
membership may carry its member's company too: the member alone gets the tag); otherwise to
every listed member whose ``company`` is the membership's ``company``. A user's ``tags`` are
the tags of all their active memberships, sorted and unique. An active membership naming a
plan, member or company that is not listed (deleted, say) is reported and ignored. References
are ids (strings); an object with an ``_id`` (older payloads) is read as that id.

**Passes and smart tags** come from the member custom property ``card_property`` (default
``luckey_cards``): ``KIND:VALUE`` entries (``gateway.credentials.parse_credential``) separated
by commas, semicolons or new lines, e.g. ``nfc_uid:04A1B2C3, desfire:04112233445566``; a list
of such strings also works. Spaces separate entries too (``nfc_uid:04A1B2C3
desfire:04112233445566``) but may also split a value (``nfc_uid: 04 A1 B2 C3``): a word made
only of hex digits, ``:`` and ``-`` continues the entry before it on the same line (so a bare
value after a space is read as part of the entry before it, which then fails to parse). Only ``card_kinds`` are accepted
(default ``nfc_uid``, ``ntag424``, ``desfire``; a phone key is never read from a property: it
needs an enrolled public key). Each card becomes a ``Credential`` with the kind's strongest
assurance (``model.KIND_ASSURANCE``) and the id ``credential_id_prefix`` + member id + ``-`` +
kind (``_`` as ``-``) + ``-`` + the value's last four hex digits, with ``-2``, ``-3``... for a
member's cards of one kind sharing those digits (in value order). The id is stable across syncs
and shows no more of the value than a log line does (a hash of a 4-byte UID could be reversed).
An entry that does not parse is reported (member and redacted entry) and skipped; the same card
listed twice on one member counts once. A card listed on two or more members is reported and
given to none of them (it would be ambiguous who presented it). Former members' cards are not
mapped at all: they could not open anything, and the card can then be handed to a new member
without a conflict.

**Member App (phone) access**, ``portal_access``: OfficeRnD documents no field that reads portal
access back, so the policy is a setting. ``property:<name>`` (default ``property:member_app``):
the member custom property ``<name>``, maintained by the operator, is ``true``/``yes``/``on``/
``1`` (any case; true or 1 as JSON too); ``false``/``no``/``off``/``0``/empty/missing means no,
anything else means no and is reported. ``active_members``: every active member. ``nobody``:
no one. Whatever the policy, only users whose status is ``active`` are in ``phone_allowed``.

**Companies** are read only to know which exist (their ``_id``).

**Ids.** Every id made passes the site-data id rule (``gateway.codec``): an OfficeRnD ``_id``
that does not, alone or after its prefix, is reported and its entity skipped, and so is a
second entity with an ``_id`` already seen (the first is kept). Output collections
are sorted by id and ``problems`` sorted, so two mappings of the same data are equal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from gateway.credentials import parse_credential, redact
from gateway.model import KIND_ASSURANCE, Credential, CredentialKind, Tag, User, UserStatus

OWNER = "officernd"  # Tag.owner of every tag this integration makes

#: The site-data id rule, as ``gateway.codec`` checks it.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
NAME_MAX = 256  # the longest name site data accepts

#: Member statuses OfficeRnD documents; any other is reported.
MEMBER_STATUSES = frozenset(
    {"active", "former", "pending", "contact", "not_approved", "drop-in", "lead"}
)
_CALCULATED = frozenset({"not_started", "active", "expired", "not_approved"})
#: Credential kinds read from the card property by default: cards and fobs.
CARD_KINDS = frozenset({CredentialKind.NFC_UID, CredentialKind.NTAG424, CredentialKind.DESFIRE})
PORTAL_POLICIES = ("property:<name>", "active_members", "nobody")

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0", ""})
_CHUNKS = re.compile(r"[,;\r\n]+")
_CONTINUATION = re.compile(r"[0-9A-Fa-f:-]+")

_E = TypeVar("_E", User, Tag, Credential)
_Report = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class MappingSettings:
    """How OfficeRnD data becomes site data; the defaults are the documented behaviour.

    ``card_property``: the member custom property listing the member's cards (``KIND:VALUE``
    entries). ``portal_access``: how Member App access is known: ``property:<name>``,
    ``active_members`` or ``nobody``. The prefixes start the ids of users, plan tags and
    card credentials. ``member_statuses_with_access``: member statuses mapped to an active
    user (``former`` may not be one). ``card_kinds``: credential kinds accepted from the card
    property. ValueError if a setting is unusable.
    """

    card_property: str = "luckey_cards"
    portal_access: str = "property:member_app"
    user_id_prefix: str = "ornd-"
    tag_id_prefix: str = "ornd-plan-"
    credential_id_prefix: str = "ornd-card-"
    member_statuses_with_access: frozenset[str] = frozenset({"active", "drop-in"})
    card_kinds: frozenset[CredentialKind] = CARD_KINDS

    def __post_init__(self) -> None:
        if not self.card_property.strip():
            raise ValueError("card_property must name a member custom property")
        if self.portal_access not in ("active_members", "nobody") and not (
            self.portal_access.startswith("property:") and self.portal_property
        ):
            raise ValueError(
                f"portal_access {self.portal_access!r} is not allowed; expected one of "
                f"{', '.join(PORTAL_POLICIES)}"
            )
        for name in ("user_id_prefix", "tag_id_prefix", "credential_id_prefix"):
            prefix = getattr(self, name)
            if len(prefix) > 64 or not _ID.fullmatch(prefix + "0"):
                raise ValueError(
                    f"{name} {prefix!r} is not allowed; expected at most 64 letters, digits "
                    "and ._:@- (not starting with a symbol)"
                )
        if "former" in self.member_statuses_with_access:
            raise ValueError("member_statuses_with_access may not include 'former'")
        if CredentialKind.BLE_PHONE_KEY in self.card_kinds:
            raise ValueError("card_kinds may not include ble_phone_key (it needs an enrolled key)")

    @property
    def portal_property(self) -> str | None:
        """The custom property read by a ``property:<name>`` policy; None for the others."""
        if not self.portal_access.startswith("property:"):
            return None
        return self.portal_access.removeprefix("property:").strip() or None


@dataclass(frozen=True, slots=True)
class MappedSite:
    """The site entities one OfficeRnD organisation maps to, each collection sorted by id."""

    users: tuple[User, ...]
    tags: tuple[Tag, ...]
    credentials: tuple[Credential, ...]
    phone_allowed: frozenset[str]  # user ids allowed a phone credential (Member App access)
    problems: tuple[str, ...]  # one sentence per skipped or odd input, sorted
    # User ids listing a card another member lists too (so nobody got it): a change to one of
    # them can free the card for another, which only a whole mapping sees.
    contested: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SiteChanges:
    """What takes one mapping to another: whole entities to upsert, ids to delete (sorted)."""

    upsert_users: tuple[User, ...] = ()
    upsert_tags: tuple[Tag, ...] = ()
    upsert_credentials: tuple[Credential, ...] = ()
    delete_users: tuple[str, ...] = ()
    delete_tags: tuple[str, ...] = ()
    delete_credentials: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when there is nothing to change."""
        return not (
            self.upsert_users
            or self.upsert_tags
            or self.upsert_credentials
            or self.delete_users
            or self.delete_tags
            or self.delete_credentials
        )

    def upserts(self) -> dict[str, tuple[Any, ...]]:
        """The upserts by collection name, as a ``Delta`` or ``Cache.apply_local`` takes them."""
        out: dict[str, tuple[Any, ...]] = {
            "users": self.upsert_users,
            "tags": self.upsert_tags,
            "credentials": self.upsert_credentials,
        }
        return {name: items for name, items in out.items() if items}

    def deletes(self) -> dict[str, frozenset[str]]:
        """The deleted ids by collection name, as a ``Delta`` or ``Cache.apply_local`` takes them."""
        out = {
            "users": self.delete_users,
            "tags": self.delete_tags,
            "credentials": self.delete_credentials,
        }
        return {name: frozenset(ids) for name, ids in out.items() if ids}


class _Skip(Exception):
    """An input that cannot be used; the message is the problem sentence."""


@dataclass(slots=True)
class _Member:
    id: str  # the OfficeRnD _id
    who: str  # how problems name the member
    name: str
    status: UserStatus
    company: str | None
    properties: Mapping[Any, Any]
    tags: set[str]


def map_entities(
    members: Iterable[Any],
    companies: Iterable[Any],
    memberships: Iterable[Any],
    plans: Iterable[Any],
    *,
    today: date,
    settings: MappingSettings = MappingSettings(),
) -> MappedSite:
    """Map whole OfficeRnD listings (v2 objects) to site entities as of ``today`` (site date)."""
    found: set[str] = set()
    report = found.add

    tags = _map_plans(plans, settings, report)
    company_ids = _company_ids(companies, report)
    people: dict[str, _Member] = {}
    for index, raw in enumerate(members):
        try:
            member = _map_member(raw, index, settings, report)
        except _Skip as skip:
            report(str(skip))
            continue
        if member.id in people:
            report(f"Member {member.id} is listed twice; the second is ignored.")
            continue
        people[member.id] = member

    by_company: dict[str, list[_Member]] = {}
    for member in people.values():
        if member.company is not None:
            by_company.setdefault(member.company, []).append(member)
    for index, raw in enumerate(memberships):
        try:
            _apply_membership(raw, index, today, tags, company_ids, people, by_company, report)
        except _Skip as skip:
            report(str(skip))

    users = tuple(
        User(
            id=settings.user_id_prefix + member.id,
            name=member.name,
            status=member.status,
            tags=tuple(sorted(member.tags)),
        )
        for member in people.values()
    )
    contested: set[str] = set()
    credentials = _map_cards(people, settings, report, contested)
    phone_allowed = frozenset(
        settings.user_id_prefix + member.id
        for member in people.values()
        if member.status is UserStatus.ACTIVE and _phone_allowed(member, settings, report)
    )
    return MappedSite(
        users=tuple(sorted(users, key=lambda u: u.id)),
        tags=tuple(sorted(tags.values(), key=lambda t: t.id)),
        credentials=tuple(sorted(credentials, key=lambda c: c.id)),
        phone_allowed=phone_allowed,
        problems=tuple(sorted(found)),
        contested=frozenset(settings.user_id_prefix + member_id for member_id in contested),
    )


def diff(old: MappedSite, new: MappedSite) -> SiteChanges:
    """The upserts and deletes that turn ``old``'s entities into ``new``'s (compared by value).

    A deleted user's credentials are listed as deleted too (a cache drops them with the user
    anyway). ``phone_allowed`` and ``problems`` are not site entities and are not compared.
    """
    users = _changes(old.users, new.users)
    tags = _changes(old.tags, new.tags)
    credentials = _changes(old.credentials, new.credentials)
    return SiteChanges(
        upsert_users=users[0],
        upsert_tags=tags[0],
        upsert_credentials=credentials[0],
        delete_users=users[1],
        delete_tags=tags[1],
        delete_credentials=credentials[1],
    )


def _changes(old: Iterable[_E], new: Iterable[_E]) -> tuple[tuple[_E, ...], tuple[str, ...]]:
    before = {entity.id: entity for entity in old}
    after = {entity.id: entity for entity in new}
    upserts = tuple(after[i] for i in sorted(after) if before.get(i) != after[i])
    deletes = tuple(sorted(i for i in before if i not in after))
    return upserts, deletes


# -- entities ------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A short repr of an input value, for a problem sentence."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _text(value: Any) -> str | None:
    """A non-blank string, stripped and cut to a name's length; None otherwise."""
    if isinstance(value, str) and value.strip():
        return value.strip()[:NAME_MAX]
    return None


def _entity_id(raw: Any, what: str, index: int, prefix: str) -> str:
    """The ``_id`` of the ``index``-th ``what``, checked to make a valid id after ``prefix``."""
    if not isinstance(raw, Mapping):
        raise _Skip(f"{what.capitalize()} #{index + 1} is not an object ({_show(raw)}); skipped.")
    value = raw.get("_id")
    if not isinstance(value, str) or not _ID.fullmatch(value) or not _ID.fullmatch(prefix + value):
        raise _Skip(
            f"{what.capitalize()} #{index + 1} has no usable _id ({_show(value)}); skipped."
        )
    return value


def _ref(value: Any) -> str | None:
    """An id a field refers to: a string, or an object's ``_id``; None when there is none."""
    if isinstance(value, Mapping):
        value = value.get("_id")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    raise _Skip(_show(value))


def _map_plans(plans: Iterable[Any], settings: MappingSettings, report: _Report) -> dict[str, Tag]:
    tags: dict[str, Tag] = {}
    for index, raw in enumerate(plans):
        try:
            plan_id = _entity_id(raw, "plan", index, settings.tag_id_prefix)
        except _Skip as skip:
            report(str(skip))
            continue
        if plan_id in tags:
            report(f"Plan {plan_id} is listed twice; the second is ignored.")
            continue
        name = _text(raw.get("name")) or _text(raw.get("code")) or plan_id
        tags[plan_id] = Tag(settings.tag_id_prefix + plan_id, name, special=True, owner=OWNER)
    return tags


def _company_ids(companies: Iterable[Any], report: _Report) -> frozenset[str]:
    out: set[str] = set()
    for index, raw in enumerate(companies):
        try:
            out.add(_entity_id(raw, "company", index, ""))
        except _Skip as skip:
            report(str(skip))
    return frozenset(out)


def _map_member(raw: Any, index: int, settings: MappingSettings, report: _Report) -> _Member:
    member_id = _entity_id(raw, "member", index, settings.user_id_prefix)
    own_name = _text(raw.get("name"))
    who = f"Member {own_name!r} ({member_id})" if own_name else f"Member {member_id}"
    status_text = raw.get("status")
    if status_text == "former":
        status = UserStatus.FORMER
    elif isinstance(status_text, str) and status_text in settings.member_statuses_with_access:
        status = UserStatus.ACTIVE
    else:
        status = UserStatus.SUSPENDED
        if not isinstance(status_text, str) or status_text not in MEMBER_STATUSES:
            report(f"{who} has status {_show(status_text)}, which is not documented; suspended.")
    try:
        company = _ref(raw.get("company"))
    except _Skip as skip:
        report(f"{who} has an unreadable company ({skip}); no company memberships apply.")
        company = None
    properties = raw.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, Mapping):
        report(f"{who} has properties that are not an object ({_show(properties)}); ignored.")
        properties = {}
    return _Member(
        id=member_id,
        who=who,
        name=own_name or _text(raw.get("email")) or member_id,
        status=status,
        company=company,
        properties=properties,
        tags=set(),
    )


# -- memberships ---------------------------------------------------------------------------------


def _as_date(value: Any, label: str, key: str) -> date | None:
    """A date field read as the calendar date written; None when missing; _Skip if unreadable."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip()).date()
        except ValueError:
            pass
    raise _Skip(f"Membership {label} has an unreadable {key} ({_show(value)}); ignored.")


def _is_active(raw: Mapping[Any, Any], label: str, today: date, report: _Report) -> bool:
    status = raw.get("status")
    if status == "not_approved":
        return False
    if status not in (None, "approved"):
        report(f"Membership {label} has status {_show(status)}, not approved; ignored.")
        return False
    calculated = raw.get("calculatedStatus")
    if calculated is not None and not (isinstance(calculated, str) and calculated in _CALCULATED):
        report(
            f"Membership {label} has calculatedStatus {_show(calculated)}, which is not "
            "documented; the dates decide."
        )
        calculated = None
    if calculated == "not_approved":
        return False
    start = _as_date(raw.get("startDate"), label, "startDate")
    end = _as_date(raw.get("endDate"), label, "endDate")
    if start is None:
        if calculated is None:
            raise _Skip(f"Membership {label} has neither startDate nor calculatedStatus; ignored.")
        if calculated != "active":
            return False
    elif today < start:
        return False
    return end is None or today <= end


def _apply_membership(
    raw: Any,
    index: int,
    today: date,
    tags: Mapping[str, Tag],
    company_ids: frozenset[str],
    people: Mapping[str, _Member],
    by_company: Mapping[str, list[_Member]],
    report: _Report,
) -> None:
    if not isinstance(raw, Mapping):
        raise _Skip(f"Membership #{index + 1} is not an object ({_show(raw)}); skipped.")
    own_id = raw.get("_id")
    label = own_id if isinstance(own_id, str) and _ID.fullmatch(own_id) else f"#{index + 1}"
    if not _is_active(raw, label, today, report):
        return
    refs: dict[str, str | None] = {}
    for key in ("plan", "member", "company"):
        try:
            refs[key] = _ref(raw.get(key))
        except _Skip as skip:
            raise _Skip(f"Membership {label} has an unreadable {key} ({skip}); ignored.") from None
    plan, member, company = refs["plan"], refs["member"], refs["company"]
    if plan is None:
        raise _Skip(f"Membership {label} names no plan; ignored.")
    tag = tags.get(plan)
    if tag is None:
        raise _Skip(f"Membership {label} is for plan {plan}, which is not listed; ignored.")
    if member is not None:
        holder = people.get(member)
        if holder is None:
            raise _Skip(f"Membership {label} is for member {member}, who is not listed; ignored.")
        holder.tags.add(tag.id)
    elif company is not None:
        if company not in company_ids:
            raise _Skip(
                f"Membership {label} is for company {company}, which is not listed; ignored."
            )
        for holder in by_company.get(company, ()):
            holder.tags.add(tag.id)
    else:
        raise _Skip(f"Membership {label} names neither a member nor a company; ignored.")


# -- cards ---------------------------------------------------------------------------------------


def _card_entries(value: Any) -> list[str]:
    """The ``KIND:VALUE`` entries of a card property; _Skip (with the reason) if unreadable."""
    if value is None:
        return []
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        texts = list(value)
    else:
        raise _Skip(f"it is a {type(value).__name__}, not text or a list of text")
    entries: list[str] = []
    for text in texts:
        for chunk in _CHUNKS.split(text):
            words = chunk.split()
            start = len(entries)
            for word in words:
                if len(entries) > start and _CONTINUATION.fullmatch(word):
                    entries[-1] += " " + word
                else:
                    entries.append(word)
    return entries


def _credential_id(prefix: str, member_id: str, kind: CredentialKind, value: str) -> str:
    return f"{prefix}{member_id}-{kind.value.replace('_', '-')}-{value[-4:]}"


def _member_cards(
    member: _Member, settings: MappingSettings, report: _Report
) -> list[tuple[str, CredentialKind, str]]:
    """One member's cards as (credential id, kind, canonical value), in value order."""
    try:
        entries = _card_entries(member.properties.get(settings.card_property))
    except _Skip as skip:
        report(f"{member.who} has an unreadable {settings.card_property!r} property ({skip}).")
        return []
    cards: set[tuple[CredentialKind, str]] = set()
    for entry in entries:
        try:
            kind, value = parse_credential(entry)
            if kind not in settings.card_kinds:
                allowed = ", ".join(sorted(k.value for k in settings.card_kinds))
                raise ValueError(f"{kind.value} is not a card kind read here ({allowed})")
        except ValueError as err:
            report(f"{member.who} has a card entry {redact(entry)!r} that is skipped: {err}.")
            continue
        cards.add((kind, value))
    out: list[tuple[str, CredentialKind, str]] = []
    seen: dict[str, int] = {}
    for kind, value in sorted(cards, key=lambda card: (card[0].value, card[1])):
        base = _credential_id(settings.credential_id_prefix, member.id, kind, value)
        seen[base] = seen.get(base, 0) + 1
        credential_id = base if seen[base] == 1 else f"{base}-{seen[base]}"
        if not _ID.fullmatch(credential_id):
            report(f"{member.who} has an id too long for a card id; card {redact(value)} skipped.")
            continue
        out.append((credential_id, kind, value))
    return out


def _map_cards(
    people: Mapping[str, _Member], settings: MappingSettings, report: _Report, contested: set[str]
) -> list[Credential]:
    holders: dict[tuple[CredentialKind, str], list[tuple[str, _Member]]] = {}
    for member in people.values():
        if member.status is UserStatus.FORMER:
            continue  # cannot open anything; leaves the card free for its next holder
        for credential_id, kind, value in _member_cards(member, settings, report):
            holders.setdefault((kind, value), []).append((credential_id, member))
    credentials: list[Credential] = []
    for (kind, value), held in holders.items():
        if len(held) > 1:
            contested.update(member.id for _, member in held)
            names = ", ".join(sorted(member.id for _, member in held))
            report(
                f"Card {kind.value}:{redact(value)} is listed on several members ({names}); "
                "it is given to none of them."
            )
            continue
        credential_id, member = held[0]
        credentials.append(
            Credential(
                id=credential_id,
                user_id=settings.user_id_prefix + member.id,
                kind=kind,
                value=value,
                assurance=KIND_ASSURANCE[kind],
            )
        )
    return credentials


def _phone_allowed(member: _Member, settings: MappingSettings, report: _Report) -> bool:
    name = settings.portal_property
    if name is None:
        return settings.portal_access == "active_members"
    value = member.properties.get(name)
    if value is None or value is False or (type(value) is int and value == 0):
        return False
    if value is True or (type(value) is int and value == 1):
        return True
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    report(
        f"{member.who} has {name!r} set to {_show(value)}, neither true nor false; no phone access."
    )
    return False
