"""The Luckey access model through the real decision path: user and door tags, rules per
credential type, date intervals, days, daily time slots, guests of invitations, and the bad
input each of them can bring."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway import codec
from gateway.access import decide
from gateway.cache import Cache
from gateway.codec import Delta, FormatError
from gateway.credentials import Verified
from gateway.model import AssuranceLevel, CredentialKind, Reason, User
from gateway.view import CacheView
from tests.gateway.sitebuilder import (
    SiteBuilder,
    at,
    credential_by_id,
    delta,
    identity,
    invitation_json,
    rule_json,
    site,
    slot,
    tag_json,
    utc,
)

TZ = "Europe/Rome"
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def rome(wall_clock: str) -> datetime:
    return at(TZ, wall_clock)


def luckey_site() -> SiteBuilder:
    """Doors grouped by lock special tags; users with default and special tags; one rule per
    credential type, each with its own date interval, days and slot."""
    return (
        site(TZ)
        .door("main", min_assurance="low", keypad=True)
        .door("p1", tags=["parking"], min_assurance="low")
        .door("p2", tags=["parking"], min_assurance="low")
        .door("lab", min_assurance="low")
        .tag("parking", scope="doors")
        .user("ada", tags=["members"])
        .user("bob", tags=["members"])
        .user("cy")
        .credential("ada-phone", "ada", kind="ble_phone_key")
        .credential("ada-card", "ada", kind="nfc_uid")
        .credential("ada-pin", "ada", kind="pin")
        .credential("bob-phone", "bob", kind="ble_phone_key")
        .credential("cy-card", "cy", kind="nfc_uid")
        .rule(
            "phones-members",
            type="smartphone",
            tags=["members"],
            doors=["main"],
            door_tags=["parking"],
            valid_from=rome("2026-12-01 00:00"),
            valid_until=rome("2027-01-01 00:00"),
            days=WEEKDAYS,
            time_slot=slot("07:00", "21:00"),
        )
        .rule("card-cy", type="card", users=["cy"], doors=["lab"], time_slot=slot("22:00", "06:00"))
        .rule("pin-ada", type="pin", users=["ada"], doors=["main"], days=["sat", "sun"])
    )


@pytest.fixture(scope="module")
def view() -> CacheView:
    return luckey_site().view()


def verdict(view: CacheView, credential: str, door: str, when: str) -> tuple[bool, Reason]:
    decision = decide(identity(view, credential), door, rome(when), view)
    return decision.granted, decision.reason


@pytest.mark.parametrize(
    ("credential", "door", "when", "expected"),
    [
        # A smartphone rule: members on main and every door tagged parking.
        ("ada-phone", "main", "2026-12-02 12:00", (True, Reason.GRANTED)),
        ("ada-phone", "p1", "2026-12-02 12:00", (True, Reason.GRANTED)),
        ("bob-phone", "p2", "2026-12-02 07:00", (True, Reason.GRANTED)),  # the slot's first minute
        ("bob-phone", "p2", "2026-12-02 20:59", (True, Reason.GRANTED)),
        ("bob-phone", "p2", "2026-12-02 21:00", (False, Reason.OUTSIDE_TIME_SLOT)),  # end excluded
        ("bob-phone", "p2", "2026-12-02 06:59", (False, Reason.OUTSIDE_TIME_SLOT)),
        ("bob-phone", "main", "2026-12-05 12:00", (False, Reason.DAY_NOT_ALLOWED)),  # Saturday
        ("bob-phone", "main", "2026-11-30 12:00", (False, Reason.RULE_NOT_YET_VALID)),
        ("bob-phone", "main", "2027-01-01 12:00", (False, Reason.RULE_EXPIRED)),  # Friday
        ("bob-phone", "lab", "2026-12-02 12:00", (False, Reason.NO_RULE_FOR_DOOR)),
        # The same user's card is not a phone: the phone rule does not cover it.
        ("ada-card", "main", "2026-12-02 12:00", (False, Reason.CREDENTIAL_TYPE_NOT_ALLOWED)),
        # A PIN rule on weekends at the keypad door; a weekday PIN is refused by day, and the
        # phone rule (another type) ranks below it.
        ("ada-pin", "main", "2026-12-05 03:00", (True, Reason.GRANTED)),
        ("ada-pin", "main", "2026-12-02 12:00", (False, Reason.DAY_NOT_ALLOWED)),
        ("ada-pin", "p1", "2026-12-05 12:00", (False, Reason.NO_KEYPAD)),
        # A card rule of one user (the default tag), overnight 22:00-06:00 every day.
        ("cy-card", "lab", "2026-12-02 23:30", (True, Reason.GRANTED)),
        ("cy-card", "lab", "2026-12-03 05:59", (True, Reason.GRANTED)),
        ("cy-card", "lab", "2026-12-03 06:00", (False, Reason.OUTSIDE_TIME_SLOT)),
        ("cy-card", "lab", "2026-12-02 21:59", (False, Reason.OUTSIDE_TIME_SLOT)),
        ("cy-card", "main", "2026-12-02 23:30", (False, Reason.NO_RULE_FOR_DOOR)),
    ],
)
def test_each_rule_edge(
    view: CacheView, credential: str, door: str, when: str, expected: tuple[bool, Reason]
) -> None:
    assert verdict(view, credential, door, when) == expected


def test_an_overnight_slot_belongs_to_the_day_it_starts_on() -> None:
    view = (
        site(TZ)
        .door("lab", min_assurance="low")
        .user("cy")
        .credential("cy-card", "cy")
        .rule("fri-night", type="card", users=["cy"], doors=["lab"], days=["fri"],
              time_slot=slot("22:00", "02:00"))
        .view()
    )  # fmt: skip
    assert verdict(view, "cy-card", "lab", "2026-12-04 23:00") == (True, Reason.GRANTED)  # Fri
    assert verdict(view, "cy-card", "lab", "2026-12-05 01:59") == (True, Reason.GRANTED)  # Sat
    assert verdict(view, "cy-card", "lab", "2026-12-05 23:00")[1] is Reason.DAY_NOT_ALLOWED
    assert verdict(view, "cy-card", "lab", "2026-12-04 01:00")[1] is Reason.DAY_NOT_ALLOWED
    assert verdict(view, "cy-card", "lab", "2026-12-04 12:00")[1] is Reason.OUTSIDE_TIME_SLOT


def test_a_slot_is_read_in_site_time_across_dst() -> None:
    view = (
        site(TZ)
        .door("lab", min_assurance="low")
        .user("cy")
        .credential("cy-card", "cy")
        .rule(
            "mornings", type="card", users=["cy"], doors=["lab"], time_slot=slot("08:00", "09:00")
        )
        .view()
    )
    # 08:30 in Rome is 07:30 UTC in winter and 06:30 UTC in summer.
    assert decide(identity(view, "cy-card"), "lab", utc(2026, 1, 15, 7, 30), view).granted
    assert decide(identity(view, "cy-card"), "lab", utc(2026, 7, 15, 6, 30), view).granted
    assert not decide(identity(view, "cy-card"), "lab", utc(2026, 7, 15, 7, 30), view).granted


def test_a_new_door_in_a_tag_is_reached_at_once_by_a_delta() -> None:
    builder = luckey_site()
    view = builder.view()
    assert verdict(view, "ada-phone", "lab", "2026-12-02 12:00")[1] is Reason.NO_RULE_FOR_DOOR
    tagged = {"id": "lab", "name": "Lab", "min_assurance": "low", "tags": ["parking"]}
    after = view.apply(delta(2, 1, upsert={"doors": [tagged]}))
    assert verdict(after, "ada-phone", "lab", "2026-12-02 12:00") == (True, Reason.GRANTED)


def test_an_invitations_guest_opens_its_doors_within_its_window() -> None:
    view = (
        luckey_site()
        .invitation(
            "visit",
            valid_from=rome("2026-12-02 09:00"),
            valid_until=rome("2026-12-03 18:00"),
            doors=["lab"],
            door_tags=["parking"],
            time_slot=slot("09:00", "18:00"),
            max_devices=2,
        )
        .credential("visit-phone", "guest:visit", kind="ble_phone_key")
        .view()
    )
    assert verdict(view, "visit-phone", "lab", "2026-12-02 10:00") == (True, Reason.GRANTED)
    assert verdict(view, "visit-phone", "p2", "2026-12-03 17:59") == (True, Reason.GRANTED)
    assert verdict(view, "visit-phone", "main", "2026-12-02 10:00")[1] is Reason.NO_RULE_FOR_DOOR
    assert verdict(view, "visit-phone", "lab", "2026-12-02 19:00")[1] is Reason.OUTSIDE_TIME_SLOT
    assert verdict(view, "visit-phone", "lab", "2026-12-02 08:59")[1] is Reason.USER_NOT_YET_VALID
    assert verdict(view, "visit-phone", "lab", "2026-12-03 18:00")[1] is Reason.USER_EXPIRED
    decision = decide(identity(view, "visit-phone"), "lab", rome("2026-12-02 10:00"), view)
    assert decision.rule_id == "invitation:visit"
    assert view.user("guest:visit") is not None


async def test_deleting_an_invitation_takes_its_guest_rule_and_phone_keys(tmp_path: Path) -> None:
    builder = (
        luckey_site()
        .invitation(
            "visit",
            valid_from=rome("2026-12-02 09:00"),
            valid_until=rome("2026-12-03 18:00"),
            doors=["lab"],
        )
        .credential("visit-phone", "guest:visit", kind="ble_phone_key")
    )
    cache = Cache(tmp_path / "cache.db")
    await cache.start()
    try:
        await cache.apply_snapshot(builder.snapshot())
        phone = credential_by_id(cache.view, "visit-phone")
        assert decide(
            Verified(phone, phone.assurance), "lab", rome("2026-12-02 10:00"), cache.view
        ).granted
        await cache.apply_delta(delta(2, 1, delete={"invitations": ["visit"]}))
        view = cache.view
        assert view.user("guest:visit") is None
        assert "invitation:visit" not in view.guest_rules
        assert view.credential(CredentialKind.BLE_PHONE_KEY, phone.value) is None
        decision = decide(
            Verified(view.credential(phone.kind, phone.value), AssuranceLevel.HIGH),
            "lab",
            rome("2026-12-02 10:00"),
            view,
        )
        assert decision.reason is Reason.UNKNOWN_CREDENTIAL
    finally:
        await cache.stop()
    reopened = Cache(tmp_path / "cache.db")  # and so it stays after a restart
    await reopened.start()
    try:
        assert reopened.view.credential(CredentialKind.BLE_PHONE_KEY, phone.value) is None
        assert not reopened.view.invitations
    finally:
        await reopened.stop()


# --- bad input: a message naming the field, and nothing stored is lost ----------------------


def bad(builder: SiteBuilder, path: str, message: str) -> None:
    with pytest.raises(FormatError) as caught:
        builder.snapshot()
    assert caught.value.path == path
    assert message in str(caught.value)


def test_a_rule_naming_no_users_or_no_doors_is_refused() -> None:
    bad(
        site(TZ).door("d").rule("r", users=[], doors=["d"]),
        "rules[0].users",
        "must name at least one user (users) or user tag (tags)",
    )
    bad(
        site(TZ).door("d").tag("t").rule("r", tags=["t"]),
        "rules[0].doors",
        "must name at least one door (doors) or door tag (door_tags)",
    )


@pytest.mark.parametrize("rule_type", ["card", "pin"])
def test_card_and_pin_rules_have_exactly_one_user(rule_type: str) -> None:
    message = f"a {rule_type} rule is assigned to a single user"
    base = site(TZ).door("d").user("a").user("b")
    bad(base.rule("r", type=rule_type, users=["a", "b"], doors=["d"]), "rules[0].users", message)
    base = site(TZ).door("d").user("a", tags=["t"])
    bad(base.rule("r", type=rule_type, tags=["t"], doors=["d"]), "rules[0].users", message)


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"type": "fob"}, "rules[0].type", "expected one of: any, smartphone, card, pin, key"),
        ({"days": []}, "rules[0].days", "must name at least one day"),
        ({"days": ["funday"]}, "rules[0].days[0]", "'funday' is not allowed"),
        ({"time_slot": slot("09:00", "09:00")}, "rules[0].time_slot.end", "empty or the whole day"),
        ({"time_slot": slot("9am", "10:00")}, "rules[0].time_slot.start", "expected a time HH:MM"),
        ({"valid_from": "2027-01-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z"},
         "rules[0].valid_until", "must be after valid_from"),
        ({"users": ["nobody"]}, "rules[0].users", "'nobody' is not a known user"),
        ({"door_tags": ["members"]}, "rules[0].door_tags", "'members' is a tag of users, not of doors"),
    ],
)  # fmt: skip
def test_a_bad_rule_is_named(fields: dict[str, Any], path: str, message: str) -> None:
    builder = site(TZ).door("d").user("a", tags=["members"])
    builder.entities["rules"].append(rule_json("r", users=["a"], doors=["d"]) | fields)
    bad(builder, path, message)


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"valid_until": "2026-12-01T08:00:00+01:00"}, "invitations[0].valid_until",
         "must be after valid_from"),
        ({"max_devices": 0}, "invitations[0].max_devices", "expected an integer from 1 to 100"),
        ({"doors": []}, "invitations[0].doors", "must name at least one door"),
        ({"code_sha256": "ABC"}, "invitations[0].code_sha256", "64 lower-case hex digits"),
        ({"doors": ["nowhere"]}, "invitations[0].doors", "'nowhere' is not a known door"),
    ],
)  # fmt: skip
def test_a_bad_invitation_is_named(fields: dict[str, Any], path: str, message: str) -> None:
    builder = site(TZ).door("d")
    builder.entities["invitations"].append(
        invitation_json(
            "i", valid_from="2026-12-01T09:00:00+01:00", valid_until="2026-12-02T09:00:00+01:00",
            doors=["d"],
        ) | fields
    )  # fmt: skip
    bad(builder, path, message)


def test_user_ids_and_rule_ids_of_guests_are_reserved() -> None:
    bad(site(TZ).user("guest:x"), "users[0].id", "are the guests of invitations")
    builder = site(TZ).door("d").user("a")
    builder.rule("invitation:x", users=["a"], doors=["d"])
    bad(builder, "rules[0].id", "are the rules of invitations")


def test_a_door_tag_on_a_user_is_refused() -> None:
    builder = site(TZ, auto_tags=False).tag("parking", scope="doors").user("a", tags=["parking"])
    bad(builder, "users[0].tags", "'parking' is a tag of doors, not of users")


def test_a_tag_in_use_cannot_be_deleted_and_nothing_is_lost() -> None:
    view = luckey_site().view()
    for tag, user in (("parking", "rule 'phones-members'"), ("members", "rule 'phones-members'")):
        with pytest.raises(FormatError) as caught:
            view.check_delta(delta(2, 1, delete={"tags": [tag]}))
        assert caught.value.path == "delete.tags"
        assert f"cannot delete tag {tag!r}: {user} still uses it" in str(caught.value)
    # The door still carrying the tag keeps it in use once the rule stops naming it.
    rule = rule_json("phones-members", type="smartphone", tags=["members"], doors=["main"])
    with pytest.raises(FormatError) as caught:
        view.check_delta(delta(2, 1, upsert={"rules": [rule]}, delete={"tags": ["parking"]}))
    assert "door 'p1' still uses it" in str(caught.value)
    # A user named by a rule cannot be deleted while the rule names them.
    with pytest.raises(FormatError) as caught:
        view.check_delta(delta(2, 1, delete={"users": ["cy"]}))
    assert "cannot delete user 'cy': rule 'card-cy' still uses it" in str(caught.value)
    assert view.tags.keys() >= {"parking", "members"}  # untouched


def test_a_tag_cannot_change_scope_while_in_use() -> None:
    view = luckey_site().view()
    with pytest.raises(FormatError) as caught:
        view.check_delta(delta(2, 1, upsert={"tags": [tag_json("parking", scope="users")]}))
    assert caught.value.path == "upsert.tags"
    assert "cannot change the scope of a tag in use" in str(caught.value)


def test_the_whole_model_round_trips_through_the_codec() -> None:
    snapshot = luckey_site().snapshot()
    assert codec.snapshot_from_json(codec.snapshot_to_json(snapshot)) == snapshot


def test_extending_an_invitation_extends_its_guests_phones() -> None:
    window: dict[str, Any] = {"valid_from": rome("2026-12-02 09:00"), "doors": ["lab"]}
    view = (
        luckey_site()
        .invitation("visit", valid_until=rome("2026-12-03 18:00"), **window)
        .credential("visit-phone", "guest:visit", kind="ble_phone_key")
        .view()
    )
    assert verdict(view, "visit-phone", "lab", "2026-12-04 10:00")[1] is Reason.USER_EXPIRED
    longer = invitation_json("visit", valid_until=rome("2026-12-10 18:00"), **window)
    extended = view.apply(delta(2, 1, upsert={"invitations": [longer]}))
    assert verdict(extended, "visit-phone", "lab", "2026-12-04 10:00") == (True, Reason.GRANTED)


def test_local_changes_cannot_take_the_ids_of_invitations() -> None:
    view = luckey_site().view()
    guest = User(id="guest:visit", name="Impostor")
    with pytest.raises(FormatError) as caught:
        view.check_delta(Delta(1, 1, upserts={"users": (guest,)}))
    assert caught.value.path == "upsert.users"
    assert "belong to invitations" in str(caught.value)
