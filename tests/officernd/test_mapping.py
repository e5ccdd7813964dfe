"""Tests for gateway.officernd.mapping: OfficeRnD members, memberships and plans as site data."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import codec
from gateway.model import (
    KIND_ASSURANCE,
    AssuranceLevel,
    Credential,
    CredentialKind,
    Tag,
    User,
    UserStatus,
)
from gateway.officernd.mapping import (
    OWNER,
    MappedSite,
    MappingSettings,
    SiteChanges,
    diff,
    map_entities,
)

Json = dict[str, Any]

TODAY = date(2026, 12, 1)


def oid(n: int) -> str:
    """A 24-hex OfficeRnD id."""
    return f"65f1a2b3c4d5e6f7{n:08x}"


ADA, BOB, CARLA, DAN = oid(1), oid(2), oid(3), oid(4)
ACME, GLOBEX = oid(0x100), oid(0x101)
HOT, FIXED, OFFICE, UNUSED = oid(0x200), oid(0x201), oid(0x202), oid(0x203)

_MISSING: Any = object()


def stamp(day: date | str, time: str = "00:00:00.000") -> str:
    """An OfficeRnD timestamp (UTC with milliseconds)."""
    text = day.isoformat() if isinstance(day, date) else day
    return f"{text}T{time}Z"


def member(
    _id: Any,
    name: str | None = "Ada Lovelace",
    *,
    email: str | None = _MISSING,
    status: Any = "active",
    company: Any = None,
    properties: Any = _MISSING,
    **extra: Any,
) -> Json:
    """A v2 member as the API lists it."""
    out: Json = {
        "_id": _id,
        "name": name,
        "email": f"{_id}@example.com" if email is _MISSING else email,
        "phone": None,
        "company": company,
        "location": None,
        "status": status,
        "startDate": "2025-03-01T00:00:00.000Z",
        "properties": {} if properties is _MISSING else properties,
        "tags": [],
        "createdAt": "2025-03-01T09:12:44.123Z",
        "modifiedAt": "2026-11-30T17:02:01.456Z",
    }
    return out | extra


def membership(
    _id: str,
    plan: Any,
    *,
    member: Any = None,
    company: Any = None,
    start: Any = "2026-01-01",
    end: Any = _MISSING,
    status: Any = "approved",
    calculated: Any = _MISSING,
) -> Json:
    """A v2 membership; ``start``/``end`` dates become midnight-UTC timestamps."""
    out: Json = {
        "_id": _id,
        "member": member,
        "company": company,
        "plan": plan,
        "location": None,
        "status": status,
        "startDate": stamp(start) if isinstance(start, str | date) else start,
        "isPersonal": member is not None,
        "createdAt": "2025-12-20T10:00:00.000Z",
        "modifiedAt": "2025-12-20T10:00:00.000Z",
    }
    if end is not _MISSING:
        out["endDate"] = stamp(end) if isinstance(end, str | date) else end
    if calculated is not _MISSING:
        out["calculatedStatus"] = calculated
    return out


def plan(_id: str, name: Any = "Hot desk", code: Any = "HOT") -> Json:
    return {"_id": _id, "name": name, "code": code, "type": "hotdesk", "locations": []}


def company(_id: str, name: str = "Acme") -> Json:
    return {"_id": _id, "name": name, "status": "active", "location": None, "properties": {}}


PLANS = [plan(HOT), plan(FIXED, "Fixed desk", "FIX"), plan(OFFICE, "Private office", "OFF")]
COMPANIES = [company(ACME), company(GLOBEX, "Globex")]


def run(
    members: Sequence[Any],
    memberships: Sequence[Any] = (),
    *,
    plans: Sequence[Any] | None = None,
    companies: Sequence[Any] | None = None,
    today: date = TODAY,
    settings: MappingSettings | None = None,
) -> MappedSite:
    return map_entities(
        members,
        COMPANIES if companies is None else companies,
        memberships,
        PLANS if plans is None else plans,
        today=today,
        settings=settings or MappingSettings(),
    )


def user(site: MappedSite, member_id: str) -> User:
    found = [u for u in site.users if u.id == "ornd-" + member_id]
    assert len(found) == 1, site.users
    return found[0]


def cards(site: MappedSite, member_id: str) -> set[tuple[CredentialKind, str]]:
    return {(c.kind, c.value) for c in site.credentials if c.user_id == "ornd-" + member_id}


def tag_id(plan_id: str) -> str:
    return "ornd-plan-" + plan_id


def problems_with(site: MappedSite, *words: str) -> list[str]:
    return [p for p in site.problems if all(w in p for w in words)]


def snapshot_of(site: MappedSite) -> codec.Snapshot:
    """Site data as upstream would send it; codec refuses anything invalid."""
    return codec.snapshot_from_json(
        {
            "format": 1,
            "version": 1,
            "site": {"id": "site-1", "name": "Site", "timezone": "Europe/Rome"},
            "tags": [codec.tag_to_json(t) for t in site.tags],
            "users": [codec.user_to_json(u) for u in site.users],
            "credentials": [codec.credential_to_json(c) for c in site.credentials],
        }
    )


def check_invariants(site: MappedSite) -> None:
    """What every mapping guarantees, whatever its input."""
    for collection in (site.users, site.tags, site.credentials):
        ids = [e.id for e in collection]
        assert ids == sorted(set(ids))
        assert all(codec._ID.fullmatch(i) for i in ids)
    tag_ids = {t.id for t in site.tags}
    assert all(t.special and t.owner == OWNER and t.name for t in site.tags)
    for u in site.users:
        assert u.name
        assert list(u.tags) == sorted(set(u.tags))
        assert set(u.tags) <= tag_ids
        assert u.valid_from is None
        assert u.valid_until is None
    users = {u.id: u for u in site.users}
    assert all(users[c.user_id].status is not UserStatus.FORMER for c in site.credentials)
    assert len({(c.kind, c.value) for c in site.credentials}) == len(site.credentials)
    assert all(c.assurance == KIND_ASSURANCE[c.kind] for c in site.credentials)
    assert all(users[i].status is UserStatus.ACTIVE for i in site.phone_allowed)
    assert list(site.problems) == sorted(set(site.problems))
    snapshot_of(site)


# --- members become users -----------------------------------------------------------------------


def test_the_id_pattern_is_the_codecs() -> None:
    from gateway.officernd import mapping

    assert mapping._ID.pattern == codec._ID.pattern


def test_a_member_becomes_a_user_with_the_tags_of_their_memberships() -> None:
    site = run(
        [member(ADA)],
        [
            membership(oid(0x300), FIXED, member=ADA),
            membership(oid(0x301), HOT, member=ADA),
            membership(oid(0x302), HOT, member=ADA),  # the same plan twice: one tag
        ],
    )
    assert site.users == (
        User(
            id="ornd-" + ADA,
            name="Ada Lovelace",
            status=UserStatus.ACTIVE,
            tags=tuple(sorted((tag_id(FIXED), tag_id(HOT)))),
        ),
    )
    assert site.problems == ()
    check_invariants(site)


def test_names_fall_back_to_the_email_then_the_id() -> None:
    site = run(
        [
            member(ADA, "  Ada  "),
            member(BOB, None, email="bob@example.com"),
            member(CARLA, "   ", email=None),
            member(DAN, "x" * 300),
        ]
    )
    assert user(site, ADA).name == "Ada"
    assert user(site, BOB).name == "bob@example.com"
    assert user(site, CARLA).name == CARLA
    assert user(site, DAN).name == "x" * 256
    check_invariants(site)


def test_members_without_an_email_are_mapped_without_a_problem() -> None:
    no_key = member(BOB, "Bob")
    del no_key["email"]
    site = run([member(ADA, email=None), no_key])
    assert {u.id for u in site.users} == {"ornd-" + ADA, "ornd-" + BOB}
    assert site.problems == ()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("active", UserStatus.ACTIVE),
        ("drop-in", UserStatus.ACTIVE),
        ("former", UserStatus.FORMER),
        ("pending", UserStatus.SUSPENDED),
        ("contact", UserStatus.SUSPENDED),
        ("lead", UserStatus.SUSPENDED),
        ("not_approved", UserStatus.SUSPENDED),
    ],
)
def test_member_status(status: str, expected: UserStatus) -> None:
    site = run([member(ADA, status=status)])
    assert user(site, ADA).status is expected
    assert site.problems == ()


@pytest.mark.parametrize("status", ["Active", "archived", None, 1, ["active"], {"a": 1}])
def test_an_undocumented_member_status_suspends_and_is_reported(status: Any) -> None:
    site = run([member(ADA, status=status)])
    assert user(site, ADA).status is UserStatus.SUSPENDED
    assert len(problems_with(site, ADA, "status", "suspended")) == 1


def test_which_statuses_give_access_is_a_setting() -> None:
    strict = MappingSettings(member_statuses_with_access=frozenset({"active"}))
    site = run([member(ADA, status="drop-in"), member(BOB, status="active")], settings=strict)
    assert user(site, ADA).status is UserStatus.SUSPENDED
    assert user(site, BOB).status is UserStatus.ACTIVE
    loose = MappingSettings(member_statuses_with_access=frozenset({"active", "pending"}))
    assert user(run([member(ADA, status="pending")], settings=loose), ADA).status is (
        UserStatus.ACTIVE
    )


def test_a_former_member_keeps_no_access_and_no_cards() -> None:
    props = {"luckey_cards": "nfc_uid:04A1B2C3", "member_app": True}
    site = run(
        [member(ADA, status="former", properties=props)],
        [membership(oid(0x300), HOT, member=ADA)],
        settings=MappingSettings(portal_access="active_members"),
    )
    assert user(site, ADA).status is UserStatus.FORMER
    assert site.credentials == ()
    assert site.phone_allowed == frozenset()
    check_invariants(site)


def test_a_removed_member_is_deleted_with_their_cards() -> None:
    ada = member(ADA, properties={"luckey_cards": "nfc_uid:04A1B2C3"})
    before = run([ada, member(BOB, "Bob")])
    after = run([member(BOB, "Bob")])
    changes = diff(before, after)
    assert changes.delete_users == ("ornd-" + ADA,)
    assert changes.delete_credentials == tuple(c.id for c in before.credentials)
    assert changes.upsert_users == ()


def test_member_ids_that_cannot_make_an_id_are_reported_and_skipped() -> None:
    bad = [member("has space"), member(""), member(None), member(5), member("-leading"), "nope"]
    site = run([*bad, member(ADA), member(ADA, "Twin")])
    assert [u.id for u in site.users] == ["ornd-" + ADA]
    assert user(site, ADA).name == "Ada Lovelace"  # the first of a duplicate is kept
    assert len(problems_with(site, "no usable _id")) == 5
    assert len(problems_with(site, "not an object")) == 1
    assert len(problems_with(site, ADA, "twice")) == 1


# --- memberships ------------------------------------------------------------------------------


def holds_hot(m: Json, today: date = TODAY) -> bool:
    site = run([member(ADA)], [m], today=today)
    check_invariants(site)
    return tag_id(HOT) in user(site, ADA).tags


@pytest.mark.parametrize(
    ("start", "end", "active"),
    [
        (TODAY, _MISSING, True),  # starts today
        (TODAY + timedelta(days=1), _MISSING, False),  # starts tomorrow
        (TODAY - timedelta(days=30), TODAY, True),  # ends today: still today
        (TODAY - timedelta(days=30), TODAY - timedelta(days=1), False),  # ended yesterday
        (TODAY - timedelta(days=30), None, True),  # endDate null: open-ended
        (TODAY - timedelta(days=30), _MISSING, True),  # no endDate: open-ended
        (TODAY, TODAY, True),  # a one-day membership, today
        (TODAY + timedelta(days=1), TODAY + timedelta(days=9), False),  # future
    ],
)
def test_a_membership_is_active_between_its_dates_both_included(
    start: date, end: Any, active: bool
) -> None:
    assert holds_hot(membership(oid(0x300), HOT, member=ADA, start=start, end=end)) is active


def test_the_end_of_a_membership_removes_the_tag_the_day_after() -> None:
    m = membership(oid(0x300), HOT, member=ADA, start="2026-11-01", end="2026-11-30")
    last_day = run([member(ADA)], [m], today=date(2026, 11, 30))
    next_day = run([member(ADA)], [m], today=date(2026, 12, 1))
    assert user(last_day, ADA).tags == (tag_id(HOT),)
    assert user(next_day, ADA).tags == ()
    assert diff(last_day, next_day).upsert_users == (user(next_day, ADA),)


@pytest.mark.parametrize(
    "written",
    ["2026-12-01", "2026-12-01T00:00:00.000Z", "2026-12-01T23:30:00+05:00", "2026-12-01T23:59:59"],
)
def test_dates_are_the_calendar_date_written(written: str) -> None:
    assert holds_hot(membership(oid(0x300), HOT, member=ADA, start=None) | {"startDate": written})
    ends = membership(oid(0x300), HOT, member=ADA, start="2026-01-01") | {"endDate": written}
    assert holds_hot(ends)
    assert not holds_hot(ends, TODAY + timedelta(days=1))


@pytest.mark.parametrize(
    ("start", "end", "calculated", "active"),
    [
        # A listing read yesterday still says "active": the end date says it ended.
        ("2026-01-01", "2026-11-30", "active", False),
        # Read before it started: it starts today.
        ("2026-12-01", _MISSING, "not_started", True),
        # Said expired, but the end date is today (inclusive).
        ("2026-01-01", "2026-12-01", "expired", True),
        ("2026-12-02", _MISSING, "active", False),
        ("2026-01-01", _MISSING, "active", True),
    ],
)
def test_the_dates_win_over_calculated_status(
    start: str, end: Any, calculated: str, active: bool
) -> None:
    m = membership(oid(0x300), HOT, member=ADA, start=start, end=end, calculated=calculated)
    assert holds_hot(m) is active


def test_not_approved_is_never_active() -> None:
    assert not holds_hot(membership(oid(0x300), HOT, member=ADA, status="not_approved"))
    assert not holds_hot(membership(oid(0x300), HOT, member=ADA, calculated="not_approved"))
    assert holds_hot(membership(oid(0x300), HOT, member=ADA, status=None))


@pytest.mark.parametrize("status", ["pending", "APPROVED", 1, True, ["approved"]])
def test_an_unknown_membership_status_grants_nothing_and_is_reported(status: Any) -> None:
    site = run([member(ADA)], [membership(oid(0x300), HOT, member=ADA, status=status)])
    assert user(site, ADA).tags == ()
    assert problems_with(site, oid(0x300), "status")


def test_an_undocumented_calculated_status_is_reported_and_the_dates_decide() -> None:
    site = run([member(ADA)], [membership(oid(0x300), HOT, member=ADA, calculated="paused")])
    assert user(site, ADA).tags == (tag_id(HOT),)
    assert problems_with(site, oid(0x300), "calculatedStatus")


@pytest.mark.parametrize(
    ("calculated", "end", "active"),
    [
        ("active", _MISSING, True),
        ("active", "2026-11-30", False),
        ("expired", _MISSING, False),
        ("not_started", _MISSING, False),
    ],
)
def test_without_a_start_date_calculated_status_decides(
    calculated: str, end: Any, active: bool
) -> None:
    m = membership(oid(0x300), HOT, member=ADA, start=None, end=end, calculated=calculated)
    assert holds_hot(m) is active


def test_without_a_start_date_or_calculated_status_a_membership_is_reported() -> None:
    m = membership(oid(0x300), HOT, member=ADA, start=None)
    site = run([member(ADA)], [m])
    assert user(site, ADA).tags == ()
    assert problems_with(site, oid(0x300), "neither startDate nor calculatedStatus")


@pytest.mark.parametrize("value", ["", "soon", "2026-13-01", 20261201, [], {"$date": "x"}, True])
def test_an_unreadable_date_grants_nothing_and_is_reported(value: Any) -> None:
    for key in ("startDate", "endDate"):
        m = membership(oid(0x300), HOT, member=ADA, calculated="active") | {key: value}
        site = run([member(ADA)], [m])
        assert user(site, ADA).tags == ()
        assert problems_with(site, oid(0x300), key, "unreadable")


def test_a_company_membership_covers_every_member_of_the_company() -> None:
    site = run(
        [
            member(ADA, company=ACME),
            member(BOB, "Bob", company=ACME, status="former"),
            member(CARLA, "Carla", company=GLOBEX),
            member(DAN, "Dan"),
        ],
        [membership(oid(0x300), OFFICE, company=ACME)],
    )
    assert user(site, ADA).tags == (tag_id(OFFICE),)
    assert user(site, BOB).tags == (tag_id(OFFICE),)  # still former: no access
    assert user(site, BOB).status is UserStatus.FORMER
    assert user(site, CARLA).tags == ()
    assert user(site, DAN).tags == ()
    assert site.problems == ()


def test_a_personal_membership_carrying_the_company_covers_the_member_only() -> None:
    site = run(
        [member(ADA, company=ACME), member(BOB, "Bob", company=ACME)],
        [membership(oid(0x300), FIXED, member=ADA, company=ACME)],
    )
    assert user(site, ADA).tags == (tag_id(FIXED),)
    assert user(site, BOB).tags == ()


def test_a_member_leaving_the_company_loses_its_plan() -> None:
    m = [membership(oid(0x300), OFFICE, company=ACME)]
    before = run([member(ADA, company=ACME)], m)
    after = run([member(ADA, company=None)], m)
    assert user(before, ADA).tags == (tag_id(OFFICE),)
    assert user(after, ADA).tags == ()


def test_references_may_be_objects_with_an_id() -> None:
    site = run(
        [member(ADA, company={"_id": ACME, "name": "Acme"}), member(BOB, "Bob")],
        [
            membership(oid(0x300), {"_id": HOT}, member={"_id": BOB}),
            membership(oid(0x301), OFFICE, company={"_id": ACME}),
        ],
    )
    assert user(site, ADA).tags == (tag_id(OFFICE),)
    assert user(site, BOB).tags == (tag_id(HOT),)
    assert site.problems == ()


def test_memberships_pointing_at_unknown_entities_are_reported_and_ignored() -> None:
    ghost, gone_company, gone_plan = oid(0x999), oid(0x998), oid(0x997)
    site = run(
        [member(ADA, company=gone_company)],
        [
            membership(oid(0x300), HOT, member=ghost),
            membership(oid(0x301), HOT, company=gone_company),
            membership(oid(0x302), gone_plan, member=ADA),
            membership(oid(0x303), HOT),
            membership(oid(0x304), None, member=ADA),
            membership(oid(0x305), HOT, member=7),
            membership(oid(0x306), HOT, member=ADA) | {"_id": None},
        ],
    )
    assert user(site, ADA).tags == (tag_id(HOT),)  # only from the last one
    assert problems_with(site, oid(0x300), ghost, "not listed")
    assert problems_with(site, oid(0x301), gone_company, "not listed")
    assert problems_with(site, oid(0x302), gone_plan, "not listed")
    assert problems_with(site, oid(0x303), "neither a member nor a company")
    assert problems_with(site, oid(0x304), "no plan")
    assert problems_with(site, oid(0x305), "unreadable member")
    assert len(site.problems) == 6


def test_inactive_memberships_pointing_at_unknown_entities_are_not_reported() -> None:
    site = run(
        [member(ADA)],
        [
            membership(oid(0x300), oid(0x997), member=ADA, end="2025-01-31"),
            membership(oid(0x301), HOT, member=oid(0x999), status="not_approved"),
            membership(oid(0x302), HOT, company=oid(0x998), start="2027-01-01"),
        ],
    )
    assert site.problems == ()


# --- plans become special tags ------------------------------------------------------------------


def test_every_plan_is_a_special_tag_held_or_not() -> None:
    site = run(
        [member(ADA)],
        [membership(oid(0x300), HOT, member=ADA)],
        plans=[
            *PLANS,
            plan(UNUSED, None, "MTG"),
            plan(oid(0x204), "  ", None),
            {"_id": oid(0x205)},
        ],
    )
    assert site.tags == (
        Tag(tag_id(HOT), "Hot desk", special=True, owner=OWNER),
        Tag(tag_id(FIXED), "Fixed desk", special=True, owner=OWNER),
        Tag(tag_id(OFFICE), "Private office", special=True, owner=OWNER),
        Tag(tag_id(UNUSED), "MTG", special=True, owner=OWNER),
        Tag(tag_id(oid(0x204)), oid(0x204), special=True, owner=OWNER),
        Tag(tag_id(oid(0x205)), oid(0x205), special=True, owner=OWNER),
    )
    assert OWNER == "officernd"
    check_invariants(site)


def test_a_renamed_plan_keeps_its_tag_id() -> None:
    m = [membership(oid(0x300), HOT, member=ADA)]
    before = run([member(ADA)], m)
    after = run([member(ADA)], m, plans=[plan(HOT, "Flex desk"), *PLANS[1:]])
    changes = diff(before, after)
    assert changes == SiteChanges(
        upsert_tags=(Tag(tag_id(HOT), "Flex desk", special=True, owner=OWNER),)
    )
    assert user(after, ADA).tags == (tag_id(HOT),)


def test_a_deleted_plan_loses_its_tag_and_its_memberships_are_reported() -> None:
    m = [membership(oid(0x300), HOT, member=ADA), membership(oid(0x301), FIXED, member=ADA)]
    before = run([member(ADA)], m)
    after = run([member(ADA)], m, plans=PLANS[1:])
    assert user(after, ADA).tags == (tag_id(FIXED),)
    assert problems_with(after, oid(0x300), HOT, "not listed")
    changes = diff(before, after)
    assert changes.delete_tags == (tag_id(HOT),)
    assert changes.upsert_users == (user(after, ADA),)
    check_invariants(after)


def test_bad_or_duplicate_plans_are_reported() -> None:
    site = run([], plans=[plan(HOT), plan(HOT, "Again"), plan("bad id"), 3, plan(FIXED)])
    assert [t.id for t in site.tags] == sorted([tag_id(HOT), tag_id(FIXED)])
    assert site.tags[[t.id for t in site.tags].index(tag_id(HOT))].name == "Hot desk"
    assert problems_with(site, HOT, "twice")
    assert problems_with(site, "Plan #3", "no usable _id")
    assert problems_with(site, "Plan #4", "not an object")


def test_bad_companies_are_reported_and_their_memberships_then_too() -> None:
    site = run(
        [member(ADA, company=ACME)],
        [membership(oid(0x300), HOT, company=ACME)],
        companies=[company("not an id"), None],
    )
    assert user(site, ADA).tags == ()
    assert len(site.problems) == 3


# --- cards ------------------------------------------------------------------------------------


def with_cards(value: Any, _id: str = ADA, name: str = "Ada Lovelace", **kw: Any) -> Json:
    return member(_id, name, properties={"luckey_cards": value}, **kw)


def test_cards_are_read_from_the_card_property() -> None:
    site = run(
        [with_cards("nfc_uid:04a1b2c3, desfire:04:11:22:33:44:55:66;ntag424:04-AA-BB-CC-DD-EE-FF")]
    )
    assert site.credentials == (
        Credential(
            id=f"ornd-card-{ADA}-desfire-5566",
            user_id="ornd-" + ADA,
            kind=CredentialKind.DESFIRE,
            value="04112233445566",
            assurance=AssuranceLevel.HIGH,
        ),
        Credential(
            id=f"ornd-card-{ADA}-nfc-uid-B2C3",
            user_id="ornd-" + ADA,
            kind=CredentialKind.NFC_UID,
            value="04A1B2C3",
            assurance=AssuranceLevel.LOW,
        ),
        Credential(
            id=f"ornd-card-{ADA}-ntag424-EEFF",
            user_id="ornd-" + ADA,
            kind=CredentialKind.NTAG424,
            value="04AABBCCDDEEFF",
            assurance=AssuranceLevel.HIGH,
        ),
    )
    assert site.problems == ()
    check_invariants(site)


@pytest.mark.parametrize(
    "value",
    [
        "nfc_uid:04A1B2C3 desfire:04112233445566",
        "nfc_uid:04A1B2C3\ndesfire:04112233445566\n",
        "  NFC_UID: 04 A1 B2 C3 ,, desfire:04 11 22 33 44 55 66  ",
        ["nfc_uid:04A1B2C3", "desfire:04112233445566"],
        ["nfc_uid:04A1B2C3, desfire:04112233445566", ""],
        "nfc_uid:04A1B2C3, nfc_uid:04a1b2c3, desfire:04112233445566",  # twice: once
    ],
)
def test_card_property_spellings(value: Any) -> None:
    site = run([with_cards(value)])
    assert cards(site, ADA) == {
        (CredentialKind.NFC_UID, "04A1B2C3"),
        (CredentialKind.DESFIRE, "04112233445566"),
    }
    assert site.problems == ()


@pytest.mark.parametrize("value", [None, "", "  ,  ", []])
def test_no_cards_is_fine(value: Any) -> None:
    site = run([with_cards(value), member(BOB, "Bob", properties=None)])
    assert site.credentials == ()
    assert site.problems == ()


@pytest.mark.parametrize("value", [42, True, {"nfc_uid": "04A1B2C3"}, ["nfc_uid:04A1B2C3", 7]])
def test_an_unreadable_card_property_is_reported(value: Any) -> None:
    site = run([with_cards(value)])
    assert site.credentials == ()
    assert problems_with(site, ADA, "Ada Lovelace", "unreadable 'luckey_cards'")


@pytest.mark.parametrize(
    "entry",
    [
        "nfc_uid:04A1B2C3D",  # odd number of digits
        "nfc_uid:04A1B2C3D4",  # 5 bytes
        "nfc_uid:04A1B2ZZ",  # not hex
        "nfcuid:04A1B2C3",  # unknown kind
        "04A1B2C3D4E5F6",  # no kind
        "nfc_uid:",  # no value
        "ble_phone_key:00112233445566778899AABBCCDDEEFF",  # not read from a property
        "mech_key:0011223344556677",  # not a card kind by default
    ],
)
def test_a_bad_card_entry_is_reported_redacted_and_skipped(entry: str) -> None:
    site = run([with_cards(f"desfire:04112233445566, {entry}")])
    assert cards(site, ADA) == {(CredentialKind.DESFIRE, "04112233445566")}
    found = problems_with(site, ADA, "Ada Lovelace", "card entry", "skipped")
    assert len(found) == 1, site.problems
    value = entry.partition(":")[2] if ":" in entry else entry
    if len(value) > 4:
        assert value not in found[0]
    assert "…" in found[0]


def test_mechatronic_keys_can_be_allowed() -> None:
    allowed = MappingSettings(card_kinds=frozenset({CredentialKind.MECHATRONIC_KEY}))
    site = run([with_cards("mech_key:0011223344556677, nfc_uid:04A1B2C3")], settings=allowed)
    assert cards(site, ADA) == {(CredentialKind.MECHATRONIC_KEY, "0011223344556677")}
    assert problems_with(site, ADA, "not a card kind")


def test_a_card_listed_on_two_members_is_given_to_neither() -> None:
    site = run(
        [
            with_cards("nfc_uid:04A1B2C3, desfire:04112233445566"),
            with_cards("nfc_uid:04:a1:b2:c3", BOB, "Bob"),
            with_cards("nfc_uid:04A1B2C3", CARLA, "Carla", status="pending"),
        ]
    )
    assert cards(site, ADA) == {(CredentialKind.DESFIRE, "04112233445566")}
    assert cards(site, BOB) == set()
    found = problems_with(site, "nfc_uid:…B2C3", ADA, BOB, CARLA, "none of them")
    assert len(found) == 1
    assert "04A1B2C3" not in found[0]
    check_invariants(site)


def test_the_same_value_under_two_kinds_is_not_a_conflict() -> None:
    site = run(
        [with_cards("nfc_uid:04112233445566"), with_cards("desfire:04112233445566", BOB, "Bob")]
    )
    assert len(site.credentials) == 2
    assert site.problems == ()


def test_a_former_members_card_can_be_handed_on() -> None:
    site = run(
        [
            with_cards("nfc_uid:04A1B2C3", status="former"),
            with_cards("nfc_uid:04A1B2C3", BOB, "Bob"),
        ]
    )
    assert cards(site, BOB) == {(CredentialKind.NFC_UID, "04A1B2C3")}
    assert site.problems == ()


def test_card_ids_are_stable_when_other_cards_come_and_go() -> None:
    one = run([with_cards("nfc_uid:04A1B2C3")])
    two = run([with_cards("desfire:04112233445566, nfc_uid:04A1B2C3")])
    changes = diff(one, two)
    assert changes.delete_credentials == ()
    assert [c.kind for c in changes.upsert_credentials] == [CredentialKind.DESFIRE]
    assert diff(two, one).delete_credentials == (changes.upsert_credentials[0].id,)


def test_cards_sharing_their_last_digits_get_numbered_ids() -> None:
    site = run([with_cards("nfc_uid:04A1B2C3, nfc_uid:05A1B2C3, nfc_uid:0400000000B2C3")])
    base = f"ornd-card-{ADA}-nfc-uid-B2C3"
    values = sorted(["04A1B2C3", "05A1B2C3", "0400000000B2C3"])
    assert [(c.id, c.value) for c in site.credentials] == [
        (base, values[0]),
        (base + "-2", values[1]),
        (base + "-3", values[2]),
    ]
    assert site.problems == ()


def test_the_card_property_is_a_setting() -> None:
    custom = MappingSettings(card_property="badges")
    m = member(ADA, properties={"badges": "nfc_uid:04A1B2C3", "luckey_cards": "nfc_uid:04FFFFFF"})
    assert cards(run([m], settings=custom), ADA) == {(CredentialKind.NFC_UID, "04A1B2C3")}


def test_card_ids_never_exceed_the_id_rule() -> None:
    long_prefix = MappingSettings(credential_id_prefix="c" * 64)
    long_id = "a" * 100
    site = run([with_cards("nfc_uid:04A1B2C3", long_id)], settings=long_prefix)
    assert site.credentials == ()
    assert problems_with(site, long_id, "too long")
    check_invariants(site)


# --- Member App (phone) access ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        (True, True),
        ("true", True),
        (" Yes ", True),
        ("1", True),
        (1, True),
        ("on", True),
        (False, False),
        ("false", False),
        ("no", False),
        ("0", False),
        (0, False),
        ("", False),
        (None, False),
        (_MISSING, False),
    ],
)
def test_phone_access_from_a_property(value: Any, allowed: bool) -> None:
    props = {} if value is _MISSING else {"member_app": value}
    site = run([member(ADA, properties=props)])
    assert (("ornd-" + ADA) in site.phone_allowed) is allowed
    assert site.problems == ()


@pytest.mark.parametrize("value", ["maybe", 2, 1.0, ["yes"], {"value": True}])
def test_an_unreadable_phone_access_property_is_reported_and_means_no(value: Any) -> None:
    site = run([member(ADA, properties={"member_app": value})])
    assert site.phone_allowed == frozenset()
    assert problems_with(site, ADA, "'member_app'", "no phone access")


def test_phone_access_only_for_active_users() -> None:
    props = {"member_app": "yes"}
    everyone = [
        member(ADA, properties=props),
        member(BOB, "Bob", status="pending", properties=props),
        member(CARLA, "Carla", status="former", properties=props),
        member(DAN, "Dan", status="drop-in"),
    ]
    assert run(everyone).phone_allowed == {"ornd-" + ADA}
    policy = MappingSettings(portal_access="active_members")
    assert run(everyone, settings=policy).phone_allowed == {"ornd-" + ADA, "ornd-" + DAN}
    assert run(everyone, settings=MappingSettings(portal_access="nobody")).phone_allowed == set()
    custom = MappingSettings(portal_access="property:app_access")
    site = run([member(ADA, properties={"app_access": True, "member_app": False})], settings=custom)
    assert site.phone_allowed == {"ornd-" + ADA}


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"portal_access": "everyone"},
        {"portal_access": "property:"},
        {"portal_access": "property:  "},
        {"card_property": " "},
        {"user_id_prefix": "-x"},
        {"tag_id_prefix": "plan "},
        {"credential_id_prefix": "c" * 65},
        {"member_statuses_with_access": frozenset({"active", "former"})},
        {"card_kinds": frozenset({CredentialKind.BLE_PHONE_KEY})},
    ],
)
def test_unusable_settings_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"not allowed|must|may not"):
        MappingSettings(**changes)


def test_prefixes_are_settings() -> None:
    custom = MappingSettings(user_id_prefix="", tag_id_prefix="p.", credential_id_prefix="k@")
    site = run(
        [with_cards("nfc_uid:04A1B2C3")],
        [membership(oid(0x300), HOT, member=ADA)],
        settings=custom,
    )
    assert [u.id for u in site.users] == [ADA]
    assert site.users[0].tags == ("p." + HOT,)
    assert site.credentials[0].id == f"k@{ADA}-nfc-uid-B2C3"
    assert site.credentials[0].user_id == ADA
    check_invariants(site)


# --- whole sites and diffs ----------------------------------------------------------------------


def sample_site() -> tuple[list[Json], list[Json]]:
    members = [
        member(
            ADA, company=ACME, properties={"luckey_cards": "nfc_uid:04A1B2C3", "member_app": "yes"}
        ),
        with_cards("desfire:04112233445566", BOB, "Bob"),
        member(CARLA, "Carla", email=None, company=ACME, status="pending"),
        member(DAN, "Dan", status="former", company=GLOBEX),
    ]
    memberships = [
        membership(oid(0x300), OFFICE, company=ACME, end=None),
        membership(oid(0x301), HOT, member=BOB, start="2026-11-01", end="2026-12-31"),
        membership(oid(0x302), FIXED, member=BOB, start="2026-12-02"),
        membership(oid(0x303), FIXED, member=DAN, end="2026-06-30"),
    ]
    return members, memberships


def test_a_whole_site_maps_as_expected_and_is_valid_site_data() -> None:
    members, memberships = sample_site()
    site = run(members, memberships)
    assert [(u.id, u.status, u.tags) for u in site.users] == [
        ("ornd-" + ADA, UserStatus.ACTIVE, (tag_id(OFFICE),)),
        ("ornd-" + BOB, UserStatus.ACTIVE, (tag_id(HOT),)),
        ("ornd-" + CARLA, UserStatus.SUSPENDED, (tag_id(OFFICE),)),
        ("ornd-" + DAN, UserStatus.FORMER, ()),
    ]
    assert site.phone_allowed == {"ornd-" + ADA}
    assert site.problems == ()
    snapshot = snapshot_of(site)
    assert len(snapshot.entities["users"]) == 4
    check_invariants(site)


def test_the_order_of_the_input_does_not_matter() -> None:
    members, memberships = sample_site()
    site = run(members, memberships)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(members)
        rng.shuffle(memberships)
        plans = rng.sample(PLANS, len(PLANS))
        assert run(members, memberships, plans=plans) == site


def apply(old: MappedSite, changes: SiteChanges) -> tuple[tuple[Any, ...], ...]:
    """What a cache holds after ``changes``: deletes first (a user's credentials with it)."""
    users = {u.id: u for u in old.users}
    tags = {t.id: t for t in old.tags}
    credentials = {c.id: c for c in old.credentials}
    for user_id in changes.delete_users:
        del users[user_id]
        credentials = {i: c for i, c in credentials.items() if c.user_id != user_id}
    for tag in changes.delete_tags:
        del tags[tag]
    for credential_id in changes.delete_credentials:
        credentials.pop(credential_id, None)
    users.update((u.id, u) for u in changes.upsert_users)
    tags.update((t.id, t) for t in changes.upsert_tags)
    credentials.update((c.id, c) for c in changes.upsert_credentials)
    return tuple(tuple(d[i] for i in sorted(d)) for d in (users, tags, credentials))


def entities(site: MappedSite) -> tuple[tuple[Any, ...], ...]:
    return site.users, site.tags, site.credentials


def test_diff_of_two_sites() -> None:
    members, memberships = sample_site()
    old = run(members, memberships)
    assert diff(old, old).empty
    assert diff(old, old) == SiteChanges()
    members[0] = with_cards("nfc_uid:04A1B2C3 nfc_uid:04D4D4D4", company=ACME)
    del members[1]
    new = run(
        [*members, member(oid(5), "Eve")],
        memberships,
        plans=[plan(HOT, "Flex"), *PLANS[1:]],
        today=TODAY + timedelta(days=1),
    )
    changes = diff(old, new)
    assert not changes.empty
    assert changes.delete_users == ("ornd-" + BOB,)
    assert changes.delete_credentials == (f"ornd-card-{BOB}-desfire-5566",)
    assert [c.value for c in changes.upsert_credentials] == ["04D4D4D4"]
    assert [t.name for t in changes.upsert_tags] == ["Flex"]
    assert {u.id for u in changes.upsert_users} == {"ornd-" + oid(5)}
    assert apply(old, changes) == entities(new)
    assert changes.upserts() == {
        "users": changes.upsert_users,
        "tags": changes.upsert_tags,
        "credentials": changes.upsert_credentials,
    }
    assert changes.deletes() == {
        "users": frozenset({"ornd-" + BOB}),
        "credentials": frozenset({f"ornd-card-{BOB}-desfire-5566"}),
    }
    assert SiteChanges().upserts() == {}
    assert SiteChanges().deletes() == {}


def test_a_diff_is_a_valid_delta_for_the_old_snapshot() -> None:
    members, memberships = sample_site()
    old = run(members, memberships)
    new = run(members[1:], memberships, plans=PLANS[:2], today=TODAY + timedelta(days=1))
    changes = diff(old, new)
    delta = codec.delta_from_json(
        {
            "format": 1,
            "version": 2,
            "base_version": 1,
            "upsert": {
                "users": [codec.user_to_json(u) for u in changes.upsert_users],
                "tags": [codec.tag_to_json(t) for t in changes.upsert_tags],
                "credentials": [codec.credential_to_json(c) for c in changes.upsert_credentials],
            },
            "delete": {k: sorted(v) for k, v in changes.deletes().items()},
        }
    )
    assert delta.deletes == changes.deletes()


# --- properties ---------------------------------------------------------------------------------

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["", " ", "active", "approved", "2026-12-01", "former", "yes"]),
)
garbage = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_ids = st.sampled_from([oid(n) for n in range(1, 4)])
_plan_ids = st.sampled_from([HOT, FIXED, oid(0x2FF)])
_company_ids = st.sampled_from([ACME, oid(0x1FF)])


def dates_around(before: int, after: int) -> st.SearchStrategy[str]:
    """Mostly timestamps from ``before`` days before TODAY to ``after`` days after it."""
    near = st.dates(TODAY - timedelta(days=before), TODAY + timedelta(days=after)).map(stamp)
    odd = st.sampled_from(["2026-12-01", "2026-12-01T23:30:00+05:00", "soon", ""])
    return st.integers(0, 5).flatmap(lambda n: odd if n == 0 else near)


_card_entries = st.sampled_from(
    [
        "nfc_uid:04A1B2C3",
        "nfc_uid:04A1B2C4",
        "desfire:04112233445566",
        "ntag424:04 AA BB CC DD EE FF",
        "nfc_uid:zz",
        "nfc_uid:",
        "ble_phone_key:00112233445566778899AABBCCDDEEFF",
        "mech_key:0011223344556677",
        "04A1B2C3",
        "  ",
    ]
)
_card_values = st.one_of(
    st.lists(_card_entries, max_size=3).map(", ".join),
    st.lists(_card_entries, max_size=3).map(" ".join),
    st.lists(_card_entries, max_size=3),
)


def either(plausible: st.SearchStrategy[Any], odds: int = 3) -> st.SearchStrategy[Any]:
    """Mostly ``plausible``, sometimes garbage."""
    return st.integers(0, odds).flatmap(lambda n: garbage if n == 0 else plausible)


def entity(
    fields: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...]
) -> st.SearchStrategy[Any]:
    """A well-formed object (``required`` present, the odd garbage value) or a loose one."""
    well_formed = st.fixed_dictionaries(
        {k: either(v, 9) for k, v in fields.items() if k in required},
        optional={k: either(v, 9) for k, v in fields.items() if k not in required},
    )
    loose = st.fixed_dictionaries({}, optional={k: either(v) for k, v in fields.items()})
    return st.integers(0, 3).flatmap(lambda n: loose if n == 0 else well_formed)


_properties = st.fixed_dictionaries(
    {},
    optional={
        "luckey_cards": either(_card_values),
        "member_app": either(st.sampled_from([True, False, "yes", "no", "1", 0, "maybe", None])),
    },
)
members_st = entity(
    {
        "_id": _ids,
        "name": st.sampled_from(["Ada", "  ", "Bob Marley", "x" * 300]),
        "email": st.sampled_from(["a@example.com", None]),
        "status": st.sampled_from(["active", "former", "pending", "drop-in", "lead"]),
        "company": _company_ids | st.builds(lambda i: {"_id": i}, _company_ids) | st.none(),
        "properties": _properties,
    },
    ("_id", "status"),
)
memberships_st = entity(
    {
        "_id": _ids,
        "member": st.integers(0, 3).flatmap(lambda n: st.none() if n == 0 else _ids),
        "company": _company_ids | st.none(),
        "plan": _plan_ids,
        "status": st.sampled_from(["approved", "approved", "not_approved"]),
        "calculatedStatus": st.sampled_from(["active", "expired", "not_started", "not_approved"]),
        "startDate": dates_around(3, 1),
        "endDate": dates_around(1, 3) | st.none(),
    },
    ("plan", "member", "startDate"),
)
plans_st = entity({"_id": _plan_ids, "name": garbage, "code": garbage}, ("_id",))
companies_st = entity({"_id": _company_ids}, ("_id",))


def listings(entity: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(either(entity, 5), min_size=1, max_size=8)


site_inputs = st.tuples(
    listings(members_st), listings(companies_st), listings(memberships_st), listings(plans_st)
)


@settings(max_examples=300)
@given(site_inputs, st.sampled_from(["property:member_app", "active_members", "nobody"]))
def test_map_entities_never_raises_and_always_makes_valid_site_data(
    inputs: tuple[list[Any], list[Any], list[Any], list[Any]], portal: str
) -> None:
    members, companies, memberships, plans = inputs
    mapped_settings = MappingSettings(portal_access=portal)
    site = map_entities(
        members, companies, memberships, plans, today=TODAY, settings=mapped_settings
    )
    check_invariants(site)
    again = map_entities(
        iter(members),
        iter(companies),
        iter(memberships),
        iter(plans),
        today=TODAY,
        settings=mapped_settings,
    )
    assert again == site


@settings(max_examples=150)
@given(site_inputs, site_inputs, st.integers(min_value=-2, max_value=2))
def test_applying_the_diff_to_the_old_mapping_gives_the_new(
    first: tuple[list[Any], list[Any], list[Any], list[Any]],
    second: tuple[list[Any], list[Any], list[Any], list[Any]],
    days: int,
) -> None:
    old = map_entities(*first, today=TODAY)
    new = map_entities(*second, today=TODAY + timedelta(days=days))
    changes = diff(old, new)
    assert apply(old, changes) == entities(new)
    assert changes.empty == (entities(old) == entities(new))
    assert not set(changes.deletes().get("users", ())) & {u.id for u in changes.upsert_users}
    pairs: list[tuple[list[str], tuple[str, ...]]] = [
        ([u.id for u in changes.upsert_users], changes.delete_users),
        ([t.id for t in changes.upsert_tags], changes.delete_tags),
        ([c.id for c in changes.upsert_credentials], changes.delete_credentials),
    ]
    for upserted, deleted in pairs:
        assert not set(upserted) & set(deleted)
        assert upserted == sorted(set(upserted))
        assert list(deleted) == sorted(set(deleted))


def test_a_mapped_site_is_frozen() -> None:
    site = run([member(ADA)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        site.users = ()  # type: ignore[misc]
