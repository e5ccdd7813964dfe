"""Tests for gateway.codec and credential identifiers: round trips, one clear error per mistake."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest

from gateway import codec, credentials
from gateway.codec import FormatError
from gateway.credentials import VALUE_BYTES
from gateway.model import AssuranceLevel, CredentialKind, UserStatus
from tests.gateway.sitebuilder import (
    JSON,
    PHONE_KEY,
    PIN_HASHING,
    SiteBuilder,
    credential_json,
    door_json,
    exception,
    holiday_window,
    rule_json,
    site,
    slot,
    user_json,
    utc,
    value_for,
    window,
)

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
COLLECTIONS = "credentials, doors, holiday_calendars, invitations, rules, schedules, tags, users"


def full_site() -> SiteBuilder:
    """A site using every entity and every optional field at least once."""
    builder = (
        site("Europe/Rome", version=42)
        .tag("staff")
        .tag("cleaners", special=True, owner="officernd")
        .calendar("it", ["2026-12-25", date(2026, 1, 1)], name="Italian holidays")
        .schedule(
            "office",
            [
                window(WEEKDAYS, "08:00", "18:00"),
                window("fri", "22:00", "02:00", overnight=True),
                window("sun", "20:00", "24:00"),
            ],
            holiday_calendars=["it"],
            holiday_windows=[
                holiday_window("10:00", "12:00"),
                holiday_window("23:00", "01:00", overnight=True),
            ],
            exceptions=[
                exception(utc(2026, 8, 15, 6), utc(2026, 8, 15, 20), opens=False, note="works"),
                exception("2026-12-24T09:00:00+01:00", "2026-12-24T13:00:00+01:00", opens=True),
            ],
        )
        .schedule(
            "always", [window(["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "00:00", "24:00")]
        )
        .door(
            "front",
            min_assurance="low",
            unlock_seconds=3.5,
            unlock_schedule="office",
            unlock_after_first_grant=True,
        )
        .door("back", name="Back door")
        .user(
            "u1",
            tags=["staff"],
            valid_from="2026-01-01T00:00:00+01:00",
            valid_until="2027-01-01T00:00:00Z",
        )
        .user("u2", status="suspended", tags=["cleaners", "staff"])
        .user("u3", status="former")
        .credential("c1", "u1", value="04:a1:b2:c3", assurance="low", valid_until=utc(2026, 12, 31))
        .credential("c2", "u1", kind="desfire", assurance="medium", revoked=True)
        .credential(
            "c3",
            "u2",
            kind="ble_phone_key",
            valid_from=utc(2026, 2, 1),
            valid_until=utc(2026, 3, 1),
        )
        .credential("c4", "u2", kind="ntag424")
        .credential("c5", "u3", kind="mech_key", assurance="high")
        .credential(
            "c6",
            "u3",
            kind="mech_key",
            value="aa:bb:cc:dd:ee:ff:00:11",
            revalidation_days=30,
            revalidated_at="2026-06-01T08:00:00+02:00",
        )
        .blacklist("0011223344556677", "ff-ee-dd-cc-bb-aa-99-88")
        .lockdown_override("staff")
        .rule(
            "r1",
            tags=["staff"],
            doors=["front", "back"],
            schedule="office",
            valid_from=utc(2026, 1, 1),
        )
        .rule("r2", tags=["cleaners"], doors=["back"], valid_until=utc(2030, 1, 1))
        .door("side", tags=["ground-floor"], keypad=True)
        .credential("c7", "u1", kind="pin")
        .rule(
            "r3",
            type="pin",
            users=["u1"],
            door_tags=["ground-floor"],
            days=["mon", "fri"],
            time_slot=slot("22:00", "06:00"),
        )
        .invitation(
            "inv1",
            valid_from=utc(2026, 7, 1, 9),
            valid_until=utc(2026, 7, 1, 18),
            max_devices=2,
            doors=["front"],
            door_tags=["ground-floor"],
            days=["wed"],
            time_slot=slot("09:00", "17:30"),
        )
        .credential("c8", "guest:inv1", kind="ble_phone_key")
    )
    return builder


# --- round trips ----------------------------------------------------------------------------


def test_snapshot_round_trip() -> None:
    snapshot = full_site().snapshot()
    assert all(snapshot.entities[name] for name in codec.COLLECTIONS)  # nothing left out
    dumped = codec.snapshot_to_json(snapshot)
    again = codec.snapshot_from_json(json.loads(json.dumps(dumped)))
    assert again == snapshot
    assert codec.snapshot_to_json(again) == dumped


def test_snapshot_parses_values_to_the_domain() -> None:
    snapshot = full_site().snapshot()
    users = {u.id: u for u in snapshot.entities["users"]}
    cards = {c.id: c for c in snapshot.entities["credentials"]}
    doors = {d.id: d for d in snapshot.entities["doors"]}
    assert snapshot.version == 42
    assert snapshot.site.timezone == "Europe/Rome"
    assert cards["c1"].value == "04A1B2C3"  # canonical
    assert cards["c1"].assurance is AssuranceLevel.LOW
    assert cards["c4"].assurance is AssuranceLevel.HIGH  # the kind's strongest by default
    assert cards["c2"].revoked
    assert users["u1"].valid_until == datetime(2027, 1, 1, tzinfo=UTC)
    assert users["u2"].status is UserStatus.SUSPENDED
    assert set(users["u2"].tags) == {"cleaners", "staff"}
    assert doors["back"].min_assurance is AssuranceLevel.MEDIUM  # the default
    assert doors["front"].unlock_schedule_id == "office"
    assert doors["front"].unlock_after_first_grant is True
    assert doors["back"].unlock_after_first_grant is False  # the default
    assert cards["c6"].value == "AABBCCDDEEFF0011"
    assert cards["c6"].revalidation_days == 30
    assert cards["c6"].revalidated_at == datetime(2026, 6, 1, 6, tzinfo=UTC)
    assert (cards["c5"].revalidation_days, cards["c5"].revalidated_at) == (None, None)
    assert snapshot.site.key_blacklist == frozenset({"0011223344556677", "FFEEDDCCBBAA9988"})
    assert snapshot.site.lockdown_override_tag == "staff"


def test_minimal_snapshot_round_trip() -> None:
    minimal = {"format": 1, "version": 1, "site": {"id": "s", "name": "S", "timezone": "UTC"}}
    snapshot = codec.snapshot_from_json(minimal)
    assert all(snapshot.entities[name] == () for name in codec.COLLECTIONS)
    assert (snapshot.site.key_blacklist, snapshot.site.lockdown_override_tag) == (frozenset(), None)
    assert codec.snapshot_from_json(codec.snapshot_to_json(snapshot)) == snapshot


def test_site_serialises_its_blacklist_sorted_and_canonical() -> None:
    site_json = {
        "id": "s",
        "name": "S",
        "timezone": "UTC",
        "key_blacklist": ["ff:ee:dd:cc:bb:aa:99:88", "0011223344556677", "FFEEDDCCBBAA9988"],
        "lockdown_override_tag": None,
        "max_offline_days": None,
        "offline_limited_kinds": [],
        "require_admin_2fa": False,
        "pin_hashing": None,
    }
    parsed = codec.site_from_json(site_json)
    assert codec.site_to_json(parsed) == {
        **site_json,
        "key_blacklist": ["0011223344556677", "FFEEDDCCBBAA9988"],  # duplicates collapse
    }


def test_revalidation_fields_are_written_for_mechatronic_keys_only() -> None:
    cards = {
        c.id: codec.credential_to_json(c) for c in full_site().snapshot().entities["credentials"]
    }
    assert "revalidation_days" not in cards["c1"]
    assert "revalidated_at" not in cards["c1"]
    assert (cards["c5"]["revalidation_days"], cards["c5"]["revalidated_at"]) == (None, None)
    assert (cards["c6"]["revalidation_days"], cards["c6"]["revalidated_at"]) == (
        30,
        "2026-06-01T08:00:00+02:00",
    )


def test_null_revalidation_fields_are_accepted_on_any_kind() -> None:
    obj = small()
    obj["credentials"][0].update(revalidation_days=None, revalidated_at=None)
    card = codec.snapshot_from_json(obj).entities["credentials"][0]
    assert (card.kind, card.revalidation_days, card.revalidated_at) == (
        CredentialKind.NFC_UID,
        None,
        None,
    )


def sample_delta_json() -> JSON:
    return {
        "format": 1,
        "version": 8,
        "base_version": 7,
        "site": {
            "id": "s",
            "name": "Moved",
            "timezone": "America/New_York",
            "key_blacklist": ["0011223344556677"],
            "lockdown_override_tag": "staff",
        },
        "upsert": {
            "doors": [door_json("side", min_assurance="high")],
            "users": [user_json("u9", tags=["staff"], valid_until=utc(2027, 1, 1))],
            "credentials": [credential_json("c9", "u9", kind="desfire", value="04A1B2C3D4E5F6")],
            "rules": [rule_json("r9", tags=["staff"], doors=["side"])],
        },
        "delete": {"users": ["u1", "u2"], "credentials": ["c1"]},
    }


def test_delta_round_trip() -> None:
    delta = codec.delta_from_json(sample_delta_json())
    assert delta.upserts["credentials"][0].value == "04A1B2C3D4E5F6"
    assert delta.deletes["users"] == frozenset({"u1", "u2"})
    assert delta.site is not None
    assert delta.site.key_blacklist == frozenset({"0011223344556677"})
    assert delta.site.lockdown_override_tag == "staff"
    dumped = codec.delta_to_json(delta)
    again = codec.delta_from_json(json.loads(json.dumps(dumped)))
    assert again == delta
    assert codec.delta_to_json(again) == dumped


def test_minimal_delta_round_trip() -> None:
    delta = codec.delta_from_json({"format": 1, "version": 2, "base_version": 0})
    assert (delta.site, dict(delta.upserts), dict(delta.deletes)) == (None, {}, {})
    assert codec.delta_from_json(codec.delta_to_json(delta)) == delta


# --- good inputs at the edges ---------------------------------------------------------------


def test_touching_windows_do_not_overlap() -> None:
    builder = site().schedule(
        "s",
        [
            window("mon", "08:00", "12:00"),
            window("mon", "12:00", "13:00"),
            window("sun", "22:00", "06:00", overnight=True),
            window("mon", "06:00", "08:00"),
            window("fri", "20:00", "24:00"),
            window("sat", "00:00", "01:00"),
        ],
    )
    assert len(builder.snapshot().entities["schedules"][0].windows) == 6


def test_same_value_under_two_kinds_is_no_duplicate() -> None:
    builder = site().user("u1").credential("c1", "u1", kind="nfc_uid", value="04A1B2C3")
    builder.credential("c2", "u1", kind="desfire", value="04A1B2C3")
    assert len(builder.snapshot().entities["credentials"]) == 2


# --- bad input: one exact error path and a message that says what is allowed ----------------


def small() -> JSON:
    """A small valid snapshot whose entities sit at known positions."""
    return (
        site(auto_tags=False)
        .tag("staff")
        .calendar("it", ["2026-12-25"])
        .schedule("office", [window(WEEKDAYS, "08:00", "18:00")], holiday_calendars=["it"])
        .door("front", unlock_schedule="office")
        .door("back")
        .user("u1", tags=["staff"])
        .credential("c1", "u1", value="04A1B2C3")
        .rule("r1", tags=["staff"], doors=["front"], schedule="office")
        .json()
    )


Mutation = Callable[[JSON], Any]


def setter(*path: str | int, value: Any) -> Mutation:
    """A mutation setting the value at ``path`` (keys and list indexes)."""

    def mutate(obj: JSON) -> None:
        target: Any = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def deleter(*path: str | int) -> Mutation:
    """A mutation removing the value at ``path``."""

    def mutate(obj: JSON) -> None:
        target: Any = obj
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def windows(*items: JSON) -> Mutation:
    """A mutation replacing the first schedule's weekly windows."""
    return setter("schedules", 0, "windows", value=list(items))


Message = str | tuple[str, ...]  # what the message must say, in one piece or several

BAD_SNAPSHOTS: list[tuple[str, Mutation, str, Message]] = [
    # (id, mutation, error path, what the message must say)
    (
        "unknown-top-field",
        setter("extra", value=1),
        "extra",
        "unknown field; allowed: credentials, doors, format, holiday_calendars, invitations, rules, "
        "schedules, site, tags, users, version",
    ),
    (
        "unknown-door-field",
        setter("doors", 0, "colour", value="red"),
        "doors[0].colour",
        "unknown field; allowed: id, keypad, min_assurance, name, tags, unlock_after_first_grant, "
        "unlock_schedule, unlock_seconds",
    ),
    (
        "unknown-site-field",
        setter("site", "colour", value="red"),
        "site.colour",
        "unknown field; allowed: id, key_blacklist, lockdown_override_tag, max_offline_days, "
        "name, offline_limited_kinds, pin_hashing, require_admin_2fa, timezone",
    ),
    (
        "unlock-after-first-grant-not-bool",
        setter("doors", 0, "unlock_after_first_grant", value="yes"),
        "doors[0].unlock_after_first_grant",
        "'yes' is not allowed; expected true or false",
    ),
    (
        "revalidation-days-on-a-card",
        setter("credentials", 0, "revalidation_days", value=30),
        "credentials[0].revalidation_days",
        "30 is not allowed for nfc_uid; only mech_key credentials have revalidation_days",
    ),
    (
        "revalidated-at-on-a-card",
        setter("credentials", 0, "revalidated_at", value="2026-06-01T08:00:00Z"),
        "credentials[0].revalidated_at",
        "'2026-06-01T08:00:00Z' is not allowed for nfc_uid; "
        "only mech_key credentials have revalidated_at",
    ),
    (
        "blacklist-entry-too-short",
        setter("site", "key_blacklist", value=["0011223344556677", "00:11:22:33"]),
        "site.key_blacklist[1]",
        "mech_key value '…2:33' is not valid; expected 8 bytes of hex (16 hex digits",
    ),
    (
        "blacklist-entry-not-hex",
        setter("site", "key_blacklist", value=["00112233445566ZZ"]),
        "site.key_blacklist[0]",
        "mech_key value '…66ZZ' is not valid; expected 8 bytes of hex",
    ),
    (
        "blacklist-entry-not-a-string",
        setter("site", "key_blacklist", value=[1234]),
        "site.key_blacklist[0]",
        "1234 is not allowed; expected a mech_key value as a string",
    ),
    (
        "blacklist-not-a-list",
        setter("site", "key_blacklist", value="0011223344556677"),
        "site.key_blacklist",
        "expected a list, got str",
    ),
    (
        "dangling-lockdown-override-tag",
        setter("site", "lockdown_override_tag", value="ghost"),
        "site.lockdown_override_tag",
        "'ghost' is not a known tag",
    ),
    (
        "bad-lockdown-override-tag",
        setter("site", "lockdown_override_tag", value="-staff"),
        "site.lockdown_override_tag",
        "'-staff' is not a valid id",
    ),
    (
        "unknown-window-field",
        setter("schedules", 0, "windows", 0, "weekly", value=True),
        "schedules[0].windows[0].weekly",
        "allowed: days, end, overnight, start",
    ),
    ("missing-version", deleter("version"), "version", "missing required field"),
    ("missing-format", deleter("format"), "format", "missing required field"),
    ("missing-site", deleter("site"), "site", "missing required field"),
    ("missing-user-name", deleter("users", 0, "name"), "users[0].name", "missing required field"),
    (
        "missing-credential-value",
        deleter("credentials", 0, "value"),
        "credentials[0].value",
        "missing required field",
    ),
    (
        "missing-window-days",
        deleter("schedules", 0, "windows", 0, "days"),
        "schedules[0].windows[0].days",
        "missing",
    ),
    (
        "format-2",
        setter("format", value=2),
        "format",
        "2 is not allowed; this gateway reads format 1",
    ),
    (
        "format-string",
        setter("format", value="1"),
        "format",
        "'1' is not allowed; this gateway reads format 1",
    ),
    (
        "version-0",
        setter("version", value=0),
        "version",
        "0 is not allowed; expected an integer >= 1",
    ),
    ("version-float", setter("version", value=1.5), "version", "expected an integer >= 1"),
    (
        "unknown-timezone",
        setter("site", "timezone", value="Mars/Olympus_Mons"),
        "site.timezone",
        "'Mars/Olympus_Mons' is not allowed; expected an IANA timezone name such as Europe/Rome",
    ),
    (
        "timezone-not-a-string",
        setter("site", "timezone", value=1),
        "site.timezone",
        "expected an IANA timezone name",
    ),
    (
        "naive-user-datetime",
        setter("users", 0, "valid_from", value="2026-01-01T00:00:00"),
        "users[0].valid_from",
        "'2026-01-01T00:00:00' is not allowed; expected an ISO-8601 date-time with a UTC offset",
    ),
    (
        "date-only-valid-until",
        setter("credentials", 0, "valid_until", value="2026-01-01"),
        "credentials[0].valid_until",
        "expected an ISO-8601 date-time with a UTC offset",
    ),
    (
        "naive-exception",
        setter(
            "schedules",
            0,
            "exceptions",
            value=[exception("2026-01-01T08:00:00", utc(2026, 1, 2), opens=True)],
        ),
        "schedules[0].exceptions[0].start",
        "expected an ISO-8601 date-time with a UTC offset",
    ),
    (
        "user-valid-until-before-valid-from",
        lambda j: j["users"][0].update(
            valid_from="2026-01-01T00:00:00+00:00", valid_until="2025-12-31T00:00:00+00:00"
        ),
        "users[0].valid_until",
        "2025-12-31T00:00:00+00:00 must be after valid_from",
    ),
    (
        "credential-valid-until-equal-valid-from",
        lambda j: j["credentials"][0].update(
            valid_from="2026-01-01T00:00:00Z", valid_until="2026-01-01T01:00:00+01:00"
        ),
        "credentials[0].valid_until",
        "must be after valid_from",
    ),
    (
        "rule-valid-until-before-valid-from",
        lambda j: j["rules"][0].update(
            valid_from="2026-02-01T00:00:00Z", valid_until="2026-01-01T00:00:00Z"
        ),
        "rules[0].valid_until",
        "must be after valid_from",
    ),
    (
        "exception-end-before-start",
        setter(
            "schedules",
            0,
            "exceptions",
            value=[exception(utc(2026, 1, 2), utc(2026, 1, 1), opens=True)],
        ),
        "schedules[0].exceptions[0].end",
        "must be after start",
    ),
    (
        "inverted-window",
        windows(window("mon", "18:00", "08:00")),
        "schedules[0].windows[0].end",
        "window 18:00-08:00 is inverted or empty; the end must be after the start, "
        "or set overnight = true",
    ),
    (
        "empty-window",
        windows(window("mon", "08:00", "08:00")),
        "schedules[0].windows[0].end",
        "the end must be after the start",
    ),
    (
        "overnight-end-after-start",
        windows(window("fri", "08:00", "18:00", overnight=True)),
        "schedules[0].windows[0].end",
        "18:00 is not allowed for an overnight window starting 08:00; "
        "an overnight window must end (next day) before its start time",
    ),
    (
        "overnight-end-equal-start",
        windows(window("fri", "22:00", "22:00", overnight=True)),
        "schedules[0].windows[0].end",
        "must end (next day) before its start time",
    ),
    (
        "start-24-00",
        windows(window("mon", "24:00", "24:00")),
        "schedules[0].windows[0].start",
        "'24:00' is not allowed as a start; use 00:00",
    ),
    (
        "bad-time",
        windows(window("mon", "8:00", "12:00")),
        "schedules[0].windows[0].start",
        "'8:00' is not allowed; expected a time HH:MM from 00:00 to 24:00",
    ),
    (
        "time-25-00",
        windows(window("mon", "08:00", "25:00")),
        "schedules[0].windows[0].end",
        "from 00:00 to 24:00",
    ),
    (
        "overlap-same-day",
        windows(window("mon", "08:00", "12:00"), window(["sun", "mon"], "11:00", "13:00")),
        "schedules[0].windows[1]",
        ("overlaps schedules[0].windows[0] on mon", "at 11:00; windows must not overlap"),
    ),
    (
        "overnight-overlaps-next-morning",
        windows(window("fri", "22:00", "02:00", overnight=True), window("sat", "01:00", "05:00")),
        "schedules[0].windows[1]",
        ("overlaps schedules[0].windows[0] on sat", "at 01:00; windows must not overlap"),
    ),
    (
        "sunday-overnight-overlaps-monday-morning",
        windows(window("mon", "01:00", "03:00"), window("sun", "22:00", "02:00", overnight=True)),
        "schedules[0].windows[1]",
        ("overlaps schedules[0].windows[0] on mon", "at 01:00; windows must not overlap"),
    ),
    (
        "overlapping-holiday-windows",
        setter(
            "schedules",
            0,
            "holiday_windows",
            value=[
                holiday_window("22:00", "06:00", overnight=True),
                holiday_window("05:00", "07:00"),
            ],
        ),
        "schedules[0].holiday_windows[1]",
        "windows must not overlap",
    ),
    (
        "empty-days",
        windows(window([], "08:00", "12:00")),
        "schedules[0].windows[0].days",
        "must name at least one day",
    ),
    (
        "bad-day-name",
        windows(window(["mon", "funday"], "08:00", "12:00")),
        "schedules[0].windows[0].days[1]",
        "'funday' is not allowed; expected one of: mon, tue, wed, thu, fri, sat, sun",
    ),
    (
        "holiday-window-with-days",
        setter("schedules", 0, "holiday_windows", value=[window("mon", "10:00", "12:00")]),
        "schedules[0].holiday_windows[0].days",
        "unknown field; allowed: end, overnight, start",
    ),
    (
        "unknown-kind",
        setter("credentials", 0, "kind", value="magstripe"),
        "credentials[0].kind",
        "'magstripe' is not allowed; "
        "expected one of: ble_phone_key, nfc_uid, ntag424, desfire, mech_key, pin",
    ),
    (
        "value-not-a-string",
        setter("credentials", 0, "value", value=1234),
        "credentials[0].value",
        "must be a string",
    ),
    (
        "nfc-uid-high",
        setter("credentials", 0, "assurance", value="high"),
        "credentials[0].assurance",
        "'high' is not allowed for nfc_uid; at most low",
    ),
    (
        "nfc-uid-medium",
        setter("credentials", 0, "assurance", value="medium"),
        "credentials[0].assurance",
        "'medium' is not allowed for nfc_uid; at most low",
    ),
    (
        "unknown-assurance",
        setter("doors", 0, "min_assurance", value="extreme"),
        "doors[0].min_assurance",
        "'extreme' is not allowed; expected one of: low, medium, high",
    ),
    (
        "unknown-status",
        setter("users", 0, "status", value="banned"),
        "users[0].status",
        "'banned' is not allowed; expected one of: active, suspended, former",
    ),
    (
        "revoked-not-bool",
        setter("credentials", 0, "revoked", value="yes"),
        "credentials[0].revoked",
        "expected true or false",
    ),
    (
        "unlock-seconds-too-short",
        setter("doors", 0, "unlock_seconds", value=0),
        "doors[0].unlock_seconds",
        "expected a number from 0.5 to 3600",
    ),
    (
        "bad-id",
        setter("doors", 1, "id", value="-back"),
        "doors[1].id",
        "'-back' is not a valid id; expected 1-128 of letters, digits and ._:@-",
    ),
    ("collection-not-a-list", setter("doors", value={}), "doors", "expected a list, got dict"),
    (
        "duplicate-door-id",
        setter("doors", 1, "id", value="front"),
        "doors[1].id",
        "duplicate id 'front'",
    ),
    (
        "duplicate-user-id",
        lambda j: j["users"].append(user_json("u1", tags=["staff"])),
        "users[1].id",
        "duplicate id 'u1'",
    ),
    (
        "duplicate-rule-id",
        lambda j: j["rules"].append(rule_json("r1", tags=["staff"], doors=["back"])),
        "rules[1].id",
        "duplicate id 'r1'",
    ),
    (
        "duplicate-credential-value",
        lambda j: j["credentials"].append(credential_json("c2", "u1", value="04:a1:b2:c3")),
        "credentials[1].value",
        "nfc_uid value is already used by another credential",
    ),
    (
        "rule-without-tags",
        setter("rules", 0, "tags", value=[]),
        "rules[0].tags",
        "must name at least one",
    ),
    (
        "dangling-credential-user",
        setter("credentials", 0, "user", value="ghost"),
        "credentials[0].user",
        "'ghost' is not a known user",
    ),
    (
        "dangling-rule-door",
        setter("rules", 0, "doors", value=["front", "ghost"]),
        "rules[0].doors",
        "'ghost' is not a known door",
    ),
    (
        "dangling-rule-tag",
        setter("rules", 0, "tags", value=["ghost"]),
        "rules[0].tags",
        "'ghost' is not a known tag",
    ),
    (
        "dangling-rule-schedule",
        setter("rules", 0, "schedule", value="ghost"),
        "rules[0].schedule",
        "'ghost' is not a known schedule",
    ),
    (
        "dangling-schedule-calendar",
        setter("schedules", 0, "holiday_calendars", value=["ghost"]),
        "schedules[0].holiday_calendars",
        "'ghost' is not a known holiday calendar",
    ),
    (
        "dangling-user-tag",
        setter("users", 0, "tags", value=["staff", "ghost"]),
        "users[0].tags",
        "'ghost' is not a known tag",
    ),
    (
        "dangling-door-unlock-schedule",
        setter("doors", 0, "unlock_schedule", value="ghost"),
        "doors[0].unlock_schedule",
        "'ghost' is not a known schedule",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [case[1:] for case in BAD_SNAPSHOTS],
    ids=[case[0] for case in BAD_SNAPSHOTS],
)
def test_bad_snapshot(mutate: Mutation, path: str, message: Message) -> None:
    obj = small()
    codec.snapshot_from_json(json.loads(json.dumps(obj)))  # valid before the mutation
    mutate(obj)
    with pytest.raises(FormatError) as caught:
        codec.snapshot_from_json(json.loads(json.dumps(obj)))
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")
    for piece in (message,) if isinstance(message, str) else message:
        assert piece in str(caught.value)


def test_snapshot_not_an_object() -> None:
    with pytest.raises(FormatError, match="expected an object, got list"):
        codec.snapshot_from_json([])


def test_format_true_is_refused() -> None:
    obj = small()
    obj["format"] = True
    with pytest.raises(FormatError) as caught:
        codec.snapshot_from_json(obj)
    assert caught.value.path == "format"


# --- credential values, kind by kind --------------------------------------------------------

KINDS = list(CredentialKind)
STRONGEST = dict.fromkeys(CredentialKind, AssuranceLevel.HIGH) | {
    CredentialKind.NFC_UID: AssuranceLevel.LOW,
    CredentialKind.PIN: AssuranceLevel.LOW,
}


def with_credential(kind: CredentialKind, value: Any, **fields: Any) -> JSON:
    obj = small()
    obj["credentials"] = [credential_json("c1", "u1", kind=kind.value, value=value, **fields)]
    if kind is CredentialKind.PIN:
        obj["site"]["pin_hashing"] = PIN_HASHING
    return obj


@pytest.mark.parametrize("kind", KINDS)
def test_each_allowed_length_is_accepted(kind: CredentialKind) -> None:
    for size in VALUE_BYTES[kind]:
        value = "a1" * size
        snapshot = codec.snapshot_from_json(with_credential(kind, value))
        assert snapshot.entities["credentials"][0].value == value.upper()


def bad_values(kind: CredentialKind) -> list[str]:
    """Values wrong for ``kind``: too long, one byte short, odd, not hex, a stray symbol."""
    good = "A1" * VALUE_BYTES[kind][0]
    return [
        "A1" * (max(VALUE_BYTES[kind]) + 1),
        "A1" * (min(VALUE_BYTES[kind]) - 1),
        good[:-1],
        good[:-1] + "G",
        good[:-2] + "+1",
        "",
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_values_are_refused_for_each_kind(kind: CredentialKind) -> None:
    sizes = VALUE_BYTES[kind]
    allowed = " or ".join(str(n) for n in sizes)
    for value in bad_values(kind):
        with pytest.raises(FormatError) as caught:
            codec.snapshot_from_json(with_credential(kind, value))
        assert caught.value.path == "credentials[0].value", value
        assert f"expected {allowed} bytes of hex" in str(caught.value)
        if len(value) > 4:
            assert value not in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_assurance_up_to_what_the_kind_proves(kind: CredentialKind) -> None:
    value = value_for(kind.value, 7)
    strongest = STRONGEST[kind]
    for level in AssuranceLevel:
        obj = with_credential(kind, value, assurance=level.label)
        if level <= strongest:
            assert codec.snapshot_from_json(obj).entities["credentials"][0].assurance is level
        else:
            with pytest.raises(FormatError) as caught:
                codec.snapshot_from_json(obj)
            assert caught.value.path == "credentials[0].assurance"
            assert f"at most {strongest.label}" in str(caught.value)


# --- mechatronic key revalidation ----------------------------------------------------------

MECH = CredentialKind.MECHATRONIC_KEY
KEY = "0011223344556677"


@pytest.mark.parametrize("days", [1, 30, 3650])
def test_revalidation_days_in_range_are_accepted(days: int) -> None:
    obj = with_credential(MECH, KEY, revalidation_days=days, revalidated_at=utc(2026, 6, 1))
    card = codec.snapshot_from_json(obj).entities["credentials"][0]
    assert (card.revalidation_days, card.revalidated_at) == (days, utc(2026, 6, 1))


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        (
            {"revalidation_days": 0},
            "revalidation_days",
            "0 is not allowed; expected an integer from 1 to 3650",
        ),
        (
            {"revalidation_days": 3651},
            "revalidation_days",
            "3651 is not allowed; expected an integer from 1 to 3650",
        ),
        (
            {"revalidation_days": -5},
            "revalidation_days",
            "-5 is not allowed; expected an integer from 1 to 3650",
        ),
        (
            {"revalidation_days": 1.5},
            "revalidation_days",
            "1.5 is not allowed; expected an integer from 1 to 3650",
        ),
        (
            {"revalidation_days": "30"},
            "revalidation_days",
            "'30' is not allowed; expected an integer from 1 to 3650",
        ),
        (
            {"revalidation_days": True},
            "revalidation_days",
            "True is not allowed; expected an integer from 1 to 3650",
        ),
        (
            {"revalidated_at": "2026-06-01T08:00:00"},
            "revalidated_at",
            "'2026-06-01T08:00:00' is not allowed; expected an ISO-8601 date-time with a UTC offset",
        ),
        (
            {"revalidated_at": "2026-06-01"},
            "revalidated_at",
            "'2026-06-01' is not allowed; expected an ISO-8601 date-time with a UTC offset",
        ),
    ],
    ids=["zero", "above-3650", "negative", "float", "string", "bool", "naive", "date-only"],
)
def test_bad_revalidation_fields_are_refused(
    fields: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(FormatError) as caught:
        codec.snapshot_from_json(with_credential(MECH, KEY, **fields))
    assert caught.value.path == f"credentials[0].{path}"
    assert str(caught.value) == f"credentials[0].{path}: {message}"


@pytest.mark.parametrize("kind", [k for k in KINDS if k is not MECH])
@pytest.mark.parametrize("field", ["revalidation_days", "revalidated_at"])
def test_revalidation_fields_are_refused_on_every_other_kind(
    kind: CredentialKind, field: str
) -> None:
    given = 30 if field == "revalidation_days" else "2026-06-01T08:00:00+00:00"
    with pytest.raises(FormatError) as caught:
        codec.snapshot_from_json(with_credential(kind, value_for(kind.value, 3), **{field: given}))
    assert caught.value.path == f"credentials[0].{field}"
    assert f"{given!r} is not allowed for {kind.value}; only mech_key credentials" in str(
        caught.value
    )


# --- deltas ---------------------------------------------------------------------------------

BAD_DELTAS: list[tuple[str, Mutation, str, str]] = [
    (
        "base-equals-version",
        setter("base_version", value=8),
        "base_version",
        "8 must be lower than version 8",
    ),
    (
        "base-above-version",
        setter("base_version", value=9),
        "base_version",
        "9 must be lower than version 8",
    ),
    ("negative-base", setter("base_version", value=-1), "base_version", "expected an integer >= 0"),
    ("format-0", setter("format", value=0), "format", "this gateway reads format 1"),
    ("missing-base", deleter("base_version"), "base_version", "missing required field"),
    (
        "unknown-field",
        setter("snapshot", value=True),
        "snapshot",
        "allowed: base_version, delete, format, site, site_id, upsert, version",
    ),
    (
        "unknown-upsert-collection",
        setter("upsert", "widgets", value=[]),
        "upsert.widgets",
        f"allowed: {COLLECTIONS}",
    ),
    (
        "unknown-delete-collection",
        setter("delete", "widgets", value=[]),
        "delete.widgets",
        f"allowed: {COLLECTIONS}",
    ),
    (
        "bad-upserted-entity",
        setter("upsert", "doors", 0, "min_assurance", value="max"),
        "upsert.doors[0].min_assurance",
        "expected one of: low, medium, high",
    ),
    (
        "duplicate-upsert",
        lambda j: j["upsert"]["doors"].append(door_json("side")),
        "upsert.doors[1].id",
        "duplicate id 'side'",
    ),
    (
        "bad-delete-id",
        setter("delete", "users", value=["ok", "not ok"]),
        "delete.users[1]",
        "is not a valid id",
    ),
    (
        "upsert-and-delete-same-id",
        setter("delete", "doors", value=["back", "side"]),
        "delete.doors",
        "'side' is both upserted and deleted",
    ),
    (
        "bad-site",
        setter("site", "timezone", value="Europe/Atlantis"),
        "site.timezone",
        "expected an IANA timezone name",
    ),
    (
        "bad-site-blacklist",
        setter("site", "key_blacklist", value=["not a key"]),
        "site.key_blacklist[0]",
        "mech_key value '… key' is not valid; expected 8 bytes of hex",
    ),
    (
        "bad-upserted-revalidation",
        setter("upsert", "credentials", 0, "revalidation_days", value=7),
        "upsert.credentials[0].revalidation_days",
        "7 is not allowed for desfire; only mech_key credentials have revalidation_days",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [case[1:] for case in BAD_DELTAS],
    ids=[case[0] for case in BAD_DELTAS],
)
def test_bad_delta(mutate: Mutation, path: str, message: str) -> None:
    obj = sample_delta_json()
    codec.delta_from_json(json.loads(json.dumps(obj)))
    mutate(obj)
    with pytest.raises(FormatError) as caught:
        codec.delta_from_json(json.loads(json.dumps(obj)))
    assert caught.value.path == path
    assert message in str(caught.value)


def test_delta_references_are_not_checked_on_parse() -> None:
    obj = sample_delta_json()
    obj["upsert"]["rules"][0]["doors"] = ["nowhere"]
    assert codec.delta_from_json(obj).upserts["rules"][0].doors == frozenset({"nowhere"})


# --- credentials.parse_credential -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("nfc_uid:04a1b2c3", CredentialKind.NFC_UID, "04A1B2C3"),
        ("NFC_UID:04:A1:B2:C3", CredentialKind.NFC_UID, "04A1B2C3"),
        (" nfc_uid : 04-a1-b2-c3-d4-e5-f6 ", CredentialKind.NFC_UID, "04A1B2C3D4E5F6"),
        ("nfc_uid:04 A1 B2 C3 D4 E5 F6 07 08 09", CredentialKind.NFC_UID, "04A1B2C3D4E5F6070809"),
        ("ntag424:04A1B2C3D4E5F6", CredentialKind.NTAG424, "04A1B2C3D4E5F6"),
        ("desfire:0a0b0c0d", CredentialKind.DESFIRE, "0A0B0C0D"),
        ("desfire:04:a1:b2:c3:d4:e5:f6", CredentialKind.DESFIRE, "04A1B2C3D4E5F6"),
        (
            "ble_phone_key:" + "0123456789abcdef" * 2,
            CredentialKind.BLE_PHONE_KEY,
            "0123456789ABCDEF" * 2,
        ),
        ("mech_key:0011223344556677", CredentialKind.MECHATRONIC_KEY, "0011223344556677"),
    ],
)
def test_parse_credential(text: str, kind: CredentialKind, value: str) -> None:
    assert credentials.parse_credential(text) == (kind, value)


@pytest.mark.parametrize(
    ("text", "secret", "message"),
    [
        ("04A1B2C3D4", "04A1B2C3D4", "must be KIND:VALUE, e.g. nfc_uid:04A1B2C3"),
        ("nfc_uid:", "", "must be KIND:VALUE"),
        ("nfc_uid", "", "must be KIND:VALUE"),
        (
            "bogus:04A1B2C3",
            "04A1B2C3",
            "unknown credential kind 'bogus'; allowed: ble_phone_key, nfc_uid, ntag424",
        ),
        (
            "nfc_uid:04A1B2",
            "04A1B2",
            "expected 4 or 7 or 10 bytes of hex (8 or 14 or 20 hex digits",
        ),
        ("nfc_uid:04A1B2C3D", "04A1B2C3D", "expected 4 or 7 or 10 bytes of hex"),
        ("nfc_uid:04A1B2CG", "04A1B2CG", "is not valid"),
        (
            "ntag424:04:A1:B2:C3",
            "04:A1:B2:C3",
            "ntag424 value '…2:C3' is not valid; expected 7 bytes of hex",
        ),
        ("desfire:04A1B2C3D4", "04A1B2C3D4", "expected 4 or 7 bytes of hex"),
        ("ble_phone_key:" + "AB" * 15, "AB" * 15, "expected 16 bytes of hex (32 hex digits"),
        ("mech_key:00112233445566778899", "00112233445566778899", "expected 8 bytes of hex"),
    ],
)
def test_parse_credential_refuses_without_revealing_the_value(
    text: str, secret: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        credentials.parse_credential(text)
    if secret:
        assert secret not in str(caught.value)
        assert secret.replace(":", "") not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [("04A1B2C3", "…B2C3"), ("04A1", "…"), ("", "…"), ("A1B2C", "…1B2C")],
)
def test_redact_shows_at_most_the_last_four_characters(value: str, shown: str) -> None:
    assert credentials.redact(value) == shown


def test_an_offline_policy_round_trips() -> None:
    site_json = {
        "id": "s",
        "name": "S",
        "timezone": "UTC",
        "key_blacklist": [],
        "lockdown_override_tag": None,
        "max_offline_days": 7,
        "offline_limited_kinds": ["nfc_uid", "ble_phone_key"],
        "require_admin_2fa": True,
        "pin_hashing": None,
    }
    parsed = codec.site_from_json(site_json)
    assert parsed.max_offline_days == 7
    assert parsed.offline_limited_kinds == {CredentialKind.BLE_PHONE_KEY, CredentialKind.NFC_UID}
    assert parsed.require_admin_2fa is True
    assert codec.site_to_json(parsed) == {
        **site_json,
        "offline_limited_kinds": ["ble_phone_key", "nfc_uid"],
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "max_offline_days",
            0,
            "site.max_offline_days: 0 is not allowed; expected an integer from 1 to 30",
        ),
        (
            "max_offline_days",
            31,
            "site.max_offline_days: 31 is not allowed; expected an integer from 1 to 30",
        ),
        (
            "max_offline_days",
            True,
            "site.max_offline_days: True is not allowed; expected an integer from 1 to 30",
        ),
        (
            "offline_limited_kinds",
            ["magic"],
            "site.offline_limited_kinds[0]: 'magic' is not allowed; expected one of: ble_phone_key, nfc_uid, ntag424, desfire, mech_key, pin",
        ),
        (
            "offline_limited_kinds",
            "nfc_uid",
            "site.offline_limited_kinds: expected a list, got str",
        ),
    ],
)
def test_a_bad_offline_policy_is_named(field: str, value: Any, message: str) -> None:
    site_json = {"id": "s", "name": "S", "timezone": "UTC", field: value}
    with pytest.raises(codec.FormatError) as info:
        codec.site_from_json(site_json)
    assert str(info.value) == message


PHONE_KEY_ID = hashlib.sha256(bytes.fromhex(PHONE_KEY)).digest()[:16].hex().upper()


def test_a_phone_credential_carries_its_public_key() -> None:
    obj = with_credential(CredentialKind.BLE_PHONE_KEY, PHONE_KEY_ID, public_key=PHONE_KEY.upper())
    credential = codec.snapshot_from_json(obj).entities["credentials"][0]
    assert credential.public_key == bytes.fromhex(PHONE_KEY)
    assert codec.credential_to_json(credential)["public_key"] == PHONE_KEY
    without = codec.snapshot_from_json(with_credential(CredentialKind.BLE_PHONE_KEY, "A1" * 16))
    assert without.entities["credentials"][0].public_key is None
    assert "public_key" not in codec.credential_to_json(without.entities["credentials"][0])


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("04" + "00" * 64, "not a P-256 public key"),  # the right length, but not on the curve
        (PHONE_KEY[:-2], "expected 130 hex digits"),
        (PHONE_KEY[:-1] + "g", "not a P-256 public key"),
        ("02" + PHONE_KEY[2:66] + "00" * 32, "not a P-256 public key"),  # compressed, padded
        (12, "not a P-256 public key"),
    ],
)
def test_a_bad_public_key_is_refused(key: Any, message: str) -> None:
    obj = with_credential(CredentialKind.BLE_PHONE_KEY, PHONE_KEY_ID, public_key=key)
    with pytest.raises(FormatError) as err:
        codec.snapshot_from_json(obj)
    assert "credentials[0].public_key" in str(err.value)
    assert message in str(err.value)


def test_only_a_phone_credential_has_a_public_key() -> None:
    obj = with_credential(CredentialKind.NTAG424, "A1" * 7, public_key=PHONE_KEY)
    with pytest.raises(FormatError, match="only ble_phone_key has one"):
        codec.snapshot_from_json(obj)


def test_a_phone_credential_value_must_be_its_keys_id() -> None:
    obj = with_credential(CredentialKind.BLE_PHONE_KEY, "A1" * 16, public_key=PHONE_KEY)
    with pytest.raises(
        FormatError, match=r"credentials\[0\]\.value: .* is not this public key's id"
    ):
        codec.snapshot_from_json(obj)
