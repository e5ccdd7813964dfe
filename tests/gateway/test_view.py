"""Tests for gateway.view.CacheView: copy-on-write deltas and reference checks."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from gateway.access import decide
from gateway.codec import Delta, FormatError
from gateway.model import AssuranceLevel, CredentialKind, Reason
from gateway.view import CacheView
from tests.gateway.sitebuilder import (
    SiteBuilder,
    calendar_json,
    credential_by_id,
    credential_json,
    delta,
    door_json,
    identity,
    rule_json,
    schedule_json,
    site,
    tag_json,
    user_json,
    utc,
    window,
)

NOW = utc(2026, 6, 10, 10)  # Wednesday, 12:00 in Rome
TODAY = date(2026, 6, 10)
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
ALL_DAYS = [*WEEKDAYS, "sat", "sun"]


def base() -> SiteBuilder:
    """Two users with a card each, a rule at any time and a rule on office hours."""
    return (
        site("Europe/Rome")
        .tag("visitors")
        .calendar("it", ["2026-12-25"])
        .schedule("office", [window(WEEKDAYS, "08:00", "18:00")], holiday_calendars=["it"])
        .schedule("always", [window(ALL_DAYS, "00:00", "24:00")])
        .door("front", min_assurance="low")
        .door("back", min_assurance="low")
        .door("side", min_assurance="low", unlock_schedule="always")
        .user("u1", tags=["staff"])
        .user("u2", tags=["cleaners"])
        .user("u3", tags=["visitors"])
        .credential("c1", "u1", value="04A1B2C3")
        .credential("c2", "u2", value="04A1B2C4")
        .rule("r1", tags=["staff"], doors=["front"])
        .rule("r2", tags=["cleaners"], doors=["back"], schedule="office")
    )


def reason(view: CacheView, credential_id: str, door: str) -> Reason:
    """The reason of a decision for a cached credential."""
    return decide(identity(view, credential_id), door, NOW, view).reason


def state(view: CacheView) -> dict[str, Any]:
    """Everything a view holds, as plain comparable values."""
    return {
        "version": view.version,
        "site": view.site,
        "doors": dict(view.doors),
        "users": dict(view.users),
        "credentials": {kind: list(table) for kind, table in view.credentials.items()},
        "tags": dict(view.tags),
        "schedules": dict(view.schedules),
        "calendars": dict(view.calendars),
        "rules": dict(view.rules),
        "rule_index": dict(view.rule_index),
        "compiled": dict(view.compiled),
    }


# --- apply ----------------------------------------------------------------------------------


def test_apply_leaves_the_old_view_unchanged() -> None:
    old = base().view()
    before = state(old)
    assert (reason(old, "c1", "front"), reason(old, "c2", "back")) == (
        Reason.GRANTED,
        Reason.GRANTED,
    )

    change = delta(
        2,
        1,
        site_json={"id": "site-1", "name": "Moved", "timezone": "America/New_York"},
        upsert={
            "credentials": [credential_json("c1", "u1", value="04A1B2C3", revoked=True)],
            "users": [user_json("u2", tags=["cleaners"], status="suspended"), user_json("u4")],
            "schedules": [
                schedule_json("office", [window("sat", "08:00", "18:00")], holiday_calendars=["it"])
            ],
            "holiday_calendars": [calendar_json("it", [TODAY])],
            "doors": [door_json("front", min_assurance="high")],
            "tags": [tag_json("staff")],
        },
        delete={"rules": ["r2"], "doors": ["side"]},
    )
    old.check_delta(change)
    new = old.apply(change)

    assert state(old) == before
    assert (reason(old, "c1", "front"), reason(old, "c2", "back")) == (
        Reason.GRANTED,
        Reason.GRANTED,
    )
    assert (reason(new, "c1", "front"), reason(new, "c2", "back")) == (
        Reason.CREDENTIAL_REVOKED,
        Reason.USER_DISABLED,
    )
    assert (new.version, new.site.timezone, str(new.tz)) == (
        2,
        "America/New_York",
        "America/New_York",
    )


def test_upserts_land_in_every_collection() -> None:
    old = base().view()
    change = delta(
        2,
        1,
        upsert={
            "tags": [tag_json("night", special=True, owner="officernd")],
            "holiday_calendars": [calendar_json("us", [TODAY])],
            "schedules": [
                schedule_json(
                    "late", [window(WEEKDAYS, "11:00", "13:00")], holiday_calendars=["us"]
                )
            ],
            "doors": [door_json("garage", min_assurance="high")],
            "users": [user_json("u9", tags=["night"])],
            "credentials": [credential_json("c9", "u9", kind="desfire", value="0A0B0C0D")],
            "rules": [rule_json("r9", tags=["night"], doors=["garage"], schedule="late")],
        },
    )
    old.check_delta(change)
    new = old.apply(change)
    assert new.tags["night"].owner == "officernd"
    assert new.calendars["us"].dates == frozenset({TODAY})
    assert "late" in new.schedules
    assert "late" in new.compiled
    assert new.doors["garage"].min_assurance is AssuranceLevel.HIGH
    assert set(new.users["u9"].tags) == {"night"}
    card = new.credential(CredentialKind.DESFIRE, "0A0B0C0D")
    assert card is not None
    assert card.id == "c9"
    assert [rule.id for rule in new.rule_index[("garage", "night")]] == ["r9"]
    assert reason(new, "c9", "garage") is Reason.HOLIDAY  # through the new calendar
    assert new.counts()["credentials"] == old.counts()["credentials"] + 1
    assert old.credential(CredentialKind.DESFIRE, "0A0B0C0D") is None


def test_deletes_land() -> None:
    old = base().view()
    gone = credential_by_id(old, "c2")
    change = delta(
        2, 1, delete={"rules": ["r2"], "users": ["u2"], "credentials": ["c2"], "doors": ["back"]}
    )
    old.check_delta(change)
    new = old.apply(change, [gone])
    assert "r2" not in new.rules
    assert all(rule.id != "r2" for rules in new.rule_index.values() for rule in rules)
    assert "u2" not in new.users
    assert "back" not in new.doors
    assert new.credential(gone.kind, gone.value) is None
    assert new.counts() == {**old.counts(), "rules": 1, "users": 2, "credentials": 1, "doors": 2}
    assert reason(old, "c2", "back") is Reason.GRANTED


def test_removing_a_rule_changes_decisions() -> None:
    old = base().view()
    new = old.apply(delta(2, 1, delete={"rules": ["r1"]}))
    assert reason(old, "c1", "front") is Reason.GRANTED
    assert reason(new, "c1", "front") is Reason.NO_RULE_FOR_DOOR


def test_changed_credential_value_drops_its_old_key() -> None:
    old = base().view()
    previous = credential_by_id(old, "c1")
    change = delta(2, 1, upsert={"credentials": [credential_json("c1", "u1", value="DEADBEEF")]})
    new = old.apply(change, [previous])
    assert new.credential(CredentialKind.NFC_UID, "04A1B2C3") is None
    moved = new.credential(CredentialKind.NFC_UID, "DEADBEEF")
    assert moved is not None
    assert moved.id == "c1"
    assert old.credential(CredentialKind.NFC_UID, "04A1B2C3") == previous


def test_changed_schedule_and_calendar_are_recompiled() -> None:
    old = base().view()
    assert reason(old, "c2", "back") is Reason.GRANTED
    closed = old.apply(
        delta(
            2, 1, upsert={"schedules": [schedule_json("office", [window("sat", "08:00", "18:00")])]}
        )
    )
    assert reason(closed, "c2", "back") is Reason.OUTSIDE_SCHEDULE
    holiday = old.apply(delta(2, 1, upsert={"holiday_calendars": [calendar_json("it", [TODAY])]}))
    assert reason(holiday, "c2", "back") is Reason.HOLIDAY
    assert reason(old, "c2", "back") is Reason.GRANTED


def test_untouched_collections_are_shared_and_touched_ones_copied() -> None:
    old = base().view()
    new = old.apply(delta(2, 1, upsert={"users": [user_json("u9")]}))
    assert new.users is not old.users
    assert (new.doors, new.tags, new.rules, new.schedules, new.calendars) == (
        old.doors,
        old.tags,
        old.rules,
        old.schedules,
        old.calendars,
    )
    assert new.doors is old.doors
    assert new.rule_index is old.rule_index
    assert new.compiled is old.compiled
    assert new.credentials is old.credentials
    assert new.site is old.site


def test_apply_to_the_empty_view() -> None:
    empty = CacheView.empty()
    assert empty.version == 0
    assert set(empty.counts().values()) == {0}
    change = delta(
        1,
        0,
        site_json={"id": "s", "name": "S", "timezone": "Europe/Rome"},
        upsert={
            "doors": [door_json("front", min_assurance="low")],
            "users": [user_json("u1")],
            "credentials": [credential_json("c1", "u1", value="04A1B2C3")],
        },
    )
    empty.check_delta(change)
    view = empty.apply(change)
    assert (view.version, view.site.id) == (1, "s")
    assert reason(view, "c1", "front") is Reason.NO_RULE_FOR_DOOR
    assert set(empty.counts().values()) == {0}


# --- check_delta ----------------------------------------------------------------------------

ACCEPTED: list[tuple[str, Delta]] = [
    (
        "references-upserted-in-the-same-delta",
        delta(
            2,
            1,
            upsert={
                "tags": [tag_json("night")],
                "doors": [door_json("garage")],
                "users": [user_json("u9", tags=["night"])],
                "credentials": [credential_json("c9", "u9", value="0A0B0C0D")],
                "rules": [rule_json("r9", tags=["night"], doors=["garage"], schedule="office")],
            },
        ),
    ),
    (
        "deleting-a-user-and-their-credentials",
        delta(2, 1, delete={"users": ["u1"], "credentials": ["c1"]}),
    ),
    ("deleting-a-user-with-credentials-left", delta(2, 1, delete={"users": ["u2"]})),
    (
        "deleting-a-tag-with-its-rule-and-holders",
        delta(2, 1, delete={"tags": ["staff"], "rules": ["r1"], "users": ["u1"]}),
    ),
    (
        "deleting-a-tag-after-moving-its-holder",
        delta(2, 1, upsert={"users": [user_json("u3")]}, delete={"tags": ["visitors"]}),
    ),
    (
        "deleting-a-door-after-moving-its-rule",
        delta(
            2,
            1,
            upsert={"rules": [rule_json("r2", tags=["cleaners"], doors=["front"])]},
            delete={"doors": ["back"]},
        ),
    ),
    (
        "deleting-a-calendar-after-updating-its-schedule",
        delta(
            2,
            1,
            upsert={"schedules": [schedule_json("office", [window("mon", "08:00", "09:00")])]},
            delete={"holiday_calendars": ["it"]},
        ),
    ),
    (
        "deleting-an-unused-schedule",
        delta(2, 1, delete={"schedules": ["always"], "doors": ["side"]}),
    ),
]


@pytest.mark.parametrize(
    "change", [case[1] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED]
)
def test_check_delta_accepts(change: Delta) -> None:
    view = base().view()
    view.check_delta(change)
    assert view.apply(change).version == 2


REFUSED: list[tuple[str, Delta, str, tuple[str, ...]]] = [
    (
        "credential-of-unknown-user",
        delta(2, 1, upsert={"credentials": [credential_json("c9", "ghost", value="0A0B0C0D")]}),
        "upsert.credentials[0].user",
        ("'ghost' is not a known user",),
    ),
    (
        "credential-of-deleted-user",
        delta(
            2,
            1,
            upsert={"credentials": [credential_json("c9", "u1", value="0A0B0C0D")]},
            delete={"users": ["u1"]},
        ),
        "upsert.credentials[0].user",
        ("'u1' is not a known user",),
    ),
    (
        "rule-on-unknown-door",
        delta(2, 1, upsert={"rules": [rule_json("r9", tags=["staff"], doors=["front", "ghost"])]}),
        "upsert.rules[0].doors",
        ("'ghost' is not a known door",),
    ),
    (
        "rule-on-unknown-schedule",
        delta(
            2,
            1,
            upsert={"rules": [rule_json("r9", tags=["staff"], doors=["front"], schedule="ghost")]},
        ),
        "upsert.rules[0].schedule",
        ("'ghost' is not a known schedule",),
    ),
    (
        "user-with-deleted-tag",
        delta(
            2,
            1,
            upsert={"users": [user_json("u9", tags=["visitors"])]},
            delete={"tags": ["visitors"], "users": ["u3"]},
        ),
        "upsert.users[0].tags",
        ("'visitors' is not a known tag",),
    ),
    (
        "schedule-with-unknown-calendar",
        delta(
            2,
            1,
            upsert={
                "schedules": [
                    schedule_json(
                        "s9", [window("mon", "08:00", "09:00")], holiday_calendars=["ghost"]
                    )
                ]
            },
        ),
        "upsert.schedules[0].holiday_calendars",
        ("'ghost' is not a known holiday calendar",),
    ),
    (
        "tag-still-used-by-a-rule",
        delta(2, 1, delete={"tags": ["cleaners"], "users": ["u2"]}),
        "delete.tags",
        ("cannot delete tag 'cleaners': rule 'r2' still uses it",),
    ),
    (
        "tag-still-held-by-a-user",
        delta(2, 1, delete={"tags": ["visitors"]}),
        "delete.tags",
        ("tag 'visitors' is still held by user 'u3'",),
    ),
    (
        "door-still-used-by-a-rule",
        delta(2, 1, delete={"doors": ["back"]}),
        "delete.doors",
        ("cannot delete door 'back': rule 'r2' still uses it",),
    ),
    (
        "schedule-still-used-by-a-rule",
        delta(2, 1, delete={"schedules": ["office"]}),
        "delete.schedules",
        ("cannot delete schedule 'office': rule 'r2' still uses it",),
    ),
    (
        "schedule-still-used-by-a-door",
        delta(2, 1, delete={"schedules": ["always"]}),
        "delete.schedules",
        ("cannot delete schedule 'always': door 'side' still uses it",),
    ),
    (
        "calendar-still-used-by-a-schedule",
        delta(2, 1, delete={"holiday_calendars": ["it"]}),
        "delete.holiday_calendars",
        ("cannot delete holiday calendar 'it': schedule 'office' still uses it",),
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "pieces"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
def test_check_delta_refuses(change: Delta, path: str, pieces: tuple[str, ...]) -> None:
    view = base().view()
    before = state(view)
    with pytest.raises(FormatError) as caught:
        view.check_delta(change)
    assert caught.value.path == path
    for piece in pieces:
        assert piece in str(caught.value)
    assert state(view) == before


# --- the site: key blacklist and lockdown override tag --------------------------------------

KEY = "0011223344556677"
SITE = {"id": "site-1", "name": "Test site", "timezone": "Europe/Rome"}


def guarded() -> SiteBuilder:
    """``base()`` whose site lets tag ``guards`` through lockdown, with a key k1 of u1."""
    builder = base().tag("guards").lockdown_override("guards")
    return builder.credential("k1", "u1", kind="mech_key", value=KEY)


def test_a_site_delta_replaces_the_blacklist_and_one_without_a_site_keeps_it() -> None:
    view = guarded().view()
    assert reason(view, "k1", "front") is Reason.GRANTED
    listed = delta(2, 1, site_json={**SITE, "key_blacklist": [KEY.lower()]})
    view.check_delta(listed)
    view = view.apply(listed)
    assert view.site.key_blacklist == frozenset({KEY})
    assert view.site.lockdown_override_tag is None  # a site in a delta is replaced whole
    assert reason(view, "k1", "front") is Reason.KEY_BLACKLISTED
    kept = view.apply(delta(3, 2, upsert={"users": [user_json("u9")]}))
    assert reason(kept, "k1", "front") is Reason.KEY_BLACKLISTED
    cleared = kept.apply(delta(4, 3, site_json=SITE))
    assert reason(cleared, "k1", "front") is Reason.GRANTED


def test_a_delta_changes_a_keys_revalidation() -> None:
    view = guarded().view()
    due = credential_json("k1", "u1", kind="mech_key", value=KEY, revalidation_days=7)
    view = view.apply(delta(2, 1, upsert={"credentials": [due]}))
    assert reason(view, "k1", "front") is Reason.KEY_REVALIDATION_DUE
    assert credential_by_id(view, "k1").revalidation_days == 7
    fresh = {**due, "revalidated_at": utc(2026, 6, 9).isoformat()}
    view = view.apply(delta(3, 2, upsert={"credentials": [fresh]}))
    assert reason(view, "k1", "front") is Reason.GRANTED
    assert credential_by_id(view, "k1").revalidated_at == utc(2026, 6, 9)


def test_a_delta_sets_unlock_after_first_grant() -> None:
    view = base().view()
    assert view.doors["side"].unlock_after_first_grant is False
    change = delta(
        2,
        1,
        upsert={
            "doors": [door_json("side", unlock_schedule="always", unlock_after_first_grant=True)]
        },
    )
    view.check_delta(change)
    assert view.apply(change).doors["side"].unlock_after_first_grant is True


SITE_ACCEPTED: list[tuple[str, Delta]] = [
    (
        "deleting-the-tag-with-a-site-that-drops-it",
        delta(2, 1, site_json=SITE, delete={"tags": ["guards"]}),
    ),
    (
        "deleting-the-tag-with-a-site-naming-another",
        delta(
            2,
            1,
            site_json={**SITE, "lockdown_override_tag": "visitors"},
            delete={"tags": ["guards"]},
        ),
    ),
    (
        "naming-a-tag-upserted-in-the-same-delta",
        delta(
            2,
            1,
            site_json={**SITE, "lockdown_override_tag": "wardens"},
            upsert={"tags": [tag_json("wardens")]},
        ),
    ),
    ("deleting-another-tag", delta(2, 1, delete={"tags": ["visitors"], "users": ["u3"]})),
]


@pytest.mark.parametrize(
    "change", [case[1] for case in SITE_ACCEPTED], ids=[case[0] for case in SITE_ACCEPTED]
)
def test_check_delta_accepts_site_changes(change: Delta) -> None:
    view = guarded().view()
    view.check_delta(change)
    assert view.apply(change).version == 2


SITE_REFUSED: list[tuple[str, Delta, str, str]] = [
    (
        "deleting-the-override-tag",
        delta(2, 1, delete={"tags": ["guards"]}),
        "delete.tags",
        "cannot delete tag 'guards': site 'site-1' still uses it as its lockdown override tag",
    ),
    (
        "a-site-naming-an-unknown-tag",
        delta(2, 1, site_json={**SITE, "lockdown_override_tag": "ghost"}),
        "site.lockdown_override_tag",
        "'ghost' is not a known tag",
    ),
    (
        "a-site-naming-a-tag-deleted-in-the-same-delta",
        delta(
            2,
            1,
            site_json={**SITE, "lockdown_override_tag": "guards"},
            delete={"tags": ["guards"]},
        ),
        "site.lockdown_override_tag",
        "'guards' is not a known tag",
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [case[1:] for case in SITE_REFUSED],
    ids=[case[0] for case in SITE_REFUSED],
)
def test_check_delta_refuses_site_changes(change: Delta, path: str, message: str) -> None:
    view = guarded().view()
    before = state(view)
    with pytest.raises(FormatError) as caught:
        view.check_delta(change)
    assert caught.value.path == path
    assert str(caught.value) == f"{path}: {message}"
    assert state(view) == before


def test_the_empty_view_takes_a_site_with_an_override_tag_and_its_tag() -> None:
    change = delta(
        1,
        0,
        site_json={**SITE, "lockdown_override_tag": "guards"},
        upsert={"tags": [tag_json("guards")]},
    )
    CacheView.empty().check_delta(change)
    assert CacheView.empty().apply(change).site.lockdown_override_tag == "guards"
