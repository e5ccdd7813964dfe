"""Tests for gateway.access.decide: one test per reason, precedence, boundaries, a property."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway import credentials
from gateway.access import decide
from gateway.credentials import Refused, Verified
from gateway.model import (
    AccessRule,
    AssuranceLevel,
    Credential,
    CredentialKind,
    Decision,
    Door,
    DoorMode,
    Presentation,
    Reason,
    Site,
    User,
)
from gateway.view import CacheView
from tests.gateway.sitebuilder import (
    SiteBuilder,
    credential_by_id,
    exception,
    identity,
    site,
    utc,
    window,
)

NOW = utc(2026, 6, 10, 10)  # a Wednesday: 12:00 in Rome, 06:00 in New York
TODAY_ROME = date(2026, 6, 10)
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
US = timedelta(microseconds=1)
REFUSED = Refused(Reason.PROOF_INVALID, "no verifier")


def base(tz: str = "Europe/Rome") -> SiteBuilder:
    """One door accepting low assurance, one user tagged staff, one card, one rule at any time."""
    return (
        site(tz)
        .door("front", min_assurance="low")
        .door("back", min_assurance="low")
        .user("u1", tags=["staff"])
        .credential("c1", "u1")
        .rule("r1", tags=["staff"], doors=["front"])
    )


def run(
    builder: SiteBuilder,
    *,
    credential: str = "c1",
    door: str = "front",
    now: datetime = NOW,
    mode: DoorMode = DoorMode.NORMAL,
    assurance: AssuranceLevel | None = None,
) -> Decision:
    """Decide a presentation of ``credential`` at ``door``."""
    view = builder.view()
    return decide(identity(view, credential, assurance), door, now, view, mode)


# --- every reason, one by one ---------------------------------------------------------------


@pytest.mark.parametrize("mode", list(DoorMode))
def test_unknown_door(mode: DoorMode) -> None:
    decision = run(base(), door="ghost", mode=mode)
    assert decision.reason is Reason.UNKNOWN_DOOR
    assert not decision.granted
    assert decision.door_id == "ghost"
    assert decision.credential_id is None


def test_lockdown_refuses_a_valid_credential() -> None:
    assert run(base()).granted
    decision = run(base(), mode=DoorMode.LOCKDOWN)
    assert (decision.granted, decision.reason, decision.mode) == (
        False,
        Reason.DOOR_LOCKDOWN,
        DoorMode.LOCKDOWN,
    )


@pytest.mark.parametrize(
    "ident",
    [REFUSED, Verified(None, AssuranceLevel.LOW)],
    ids=["refused", "unknown-credential"],
)
def test_emergency_open_grants_anything(ident: Verified | Refused) -> None:
    view = base().view()
    decision = decide(ident, "front", NOW, view, DoorMode.EMERGENCY_OPEN)
    assert (decision.granted, decision.reason) == (True, Reason.EMERGENCY_OPEN)
    assert decision.rule_id is None


def test_proof_invalid() -> None:
    view = base().credential("c2", "u1", kind="ntag424").view()
    tag = credential_by_id(view, "c2")
    ident = credentials.verify(
        Presentation("front", tag.kind, tag.value, b"\x00" * 16), view.credential
    )
    assert isinstance(ident, Refused)
    decision = decide(ident, "front", NOW, view)
    assert (decision.granted, decision.reason) == (False, Reason.PROOF_INVALID)
    assert decision.credential_id is None


@pytest.mark.parametrize(
    ("refused", "reason"),
    [
        (Refused(Reason.PROOF_REPLAYED, "seen before"), Reason.PROOF_REPLAYED),
        # A verifier cannot make a refusal look like any other outcome.
        (Refused(Reason.GRANTED, "confused verifier"), Reason.PROOF_INVALID),
        (Refused(Reason.UNKNOWN_CREDENTIAL, "confused verifier"), Reason.PROOF_INVALID),
    ],
)
def test_a_refused_proof_keeps_only_the_replay_reason(refused: Refused, reason: Reason) -> None:
    decision = decide(refused, "front", NOW, base().view())
    assert (decision.granted, decision.reason) == (False, reason)


def test_unknown_credential_through_the_bare_uid_verifier() -> None:
    view = base().view()
    ident = credentials.verify(
        Presentation("front", CredentialKind.NFC_UID, "DEADBEEF"), view.credential
    )
    decision = decide(ident, "front", NOW, view)
    assert (decision.granted, decision.reason) == (False, Reason.UNKNOWN_CREDENTIAL)
    assert decision.assurance is AssuranceLevel.LOW
    assert decision.credential_id is None


def test_known_card_through_the_bare_uid_verifier_is_granted() -> None:
    view = base().view()
    card = credential_by_id(view, "c1")
    ident = credentials.verify(Presentation("front", card.kind, card.value), view.credential)
    decision = decide(ident, "front", NOW, view)
    assert (decision.reason, decision.credential_id) == (Reason.GRANTED, "c1")


def test_credential_revoked() -> None:
    decision = run(base().credential("c2", "u1", revoked=True), credential="c2")
    assert (decision.granted, decision.reason) == (False, Reason.CREDENTIAL_REVOKED)
    assert decision.credential_id == "c2"


def test_credential_not_yet_valid() -> None:
    builder = base().credential("c2", "u1", valid_from=NOW + timedelta(days=1))
    assert run(builder, credential="c2").reason is Reason.CREDENTIAL_NOT_YET_VALID


def test_credential_expired() -> None:
    builder = base().credential("c2", "u1", valid_until=NOW - timedelta(days=1))
    assert run(builder, credential="c2").reason is Reason.CREDENTIAL_EXPIRED


def test_unknown_user() -> None:
    # The codec refuses a credential whose user is missing, so the view is built directly.
    card = Credential("c1", "ghost", CredentialKind.NFC_UID, "04A1B2C3", AssuranceLevel.LOW)
    view = CacheView.build(
        1,
        Site("s", "Site", "Europe/Rome"),
        {
            "doors": [Door("front", "Front", AssuranceLevel.LOW)],
            "credentials": [card],
            "rules": [AccessRule("r1", "R1", frozenset({"staff"}), frozenset({"front"}))],
        },
    )
    decision = decide(Verified(card, AssuranceLevel.LOW), "front", NOW, view)
    assert (decision.granted, decision.reason) == (False, Reason.UNKNOWN_USER)
    # The decision names the missing user, so an installer can look for it upstream.
    assert (decision.credential_id, decision.user_id) == ("c1", card.user_id)


@pytest.mark.parametrize("status", ["suspended", "former"])
def test_user_disabled(status: str) -> None:
    builder = base().user("u2", tags=["staff"], status=status).credential("c2", "u2")
    decision = run(builder, credential="c2")
    assert (decision.granted, decision.reason, decision.user_id) == (
        False,
        Reason.USER_DISABLED,
        "u2",
    )


def test_user_not_yet_valid() -> None:
    builder = base().user("u2", tags=["staff"], valid_from=NOW + US).credential("c2", "u2")
    assert run(builder, credential="c2").reason is Reason.USER_NOT_YET_VALID


def test_user_expired() -> None:
    builder = base().user("u2", tags=["staff"], valid_until=NOW).credential("c2", "u2")
    assert run(builder, credential="c2").reason is Reason.USER_EXPIRED


@pytest.mark.parametrize(
    ("door_min", "assurance", "reason"),
    [
        ("medium", AssuranceLevel.LOW, Reason.ASSURANCE_TOO_LOW),
        ("high", AssuranceLevel.LOW, Reason.ASSURANCE_TOO_LOW),
        ("high", AssuranceLevel.MEDIUM, Reason.ASSURANCE_TOO_LOW),
        ("high", AssuranceLevel.HIGH, Reason.GRANTED),
        ("medium", AssuranceLevel.MEDIUM, Reason.GRANTED),
        ("low", AssuranceLevel.LOW, Reason.GRANTED),
    ],
)
def test_assurance_against_door_minimum(
    door_min: str, assurance: AssuranceLevel, reason: Reason
) -> None:
    builder = (
        base()
        .door("vault", min_assurance=door_min)
        .credential("c2", "u1", kind="desfire")
        .rule("r-vault", tags=["staff"], doors=["vault"])
    )
    decision = run(builder, credential="c2", door="vault", assurance=assurance)
    assert decision.reason is reason
    assert decision.assurance is assurance


def test_door_default_minimum_refuses_a_bare_uid() -> None:
    builder = base().door("plain").rule("r-plain", tags=["staff"], doors=["plain"])
    assert run(builder, door="plain").reason is Reason.ASSURANCE_TOO_LOW


def test_no_rule_for_door() -> None:
    decision = run(base(), door="back")
    assert (decision.granted, decision.reason, decision.rule_id) == (
        False,
        Reason.NO_RULE_FOR_DOOR,
        None,
    )


def test_no_rule_for_door_when_user_has_no_tags() -> None:
    builder = base().user("u2").credential("c2", "u2")
    assert run(builder, credential="c2").reason is Reason.NO_RULE_FOR_DOOR


def test_no_rule_for_door_when_rule_names_another_tag() -> None:
    builder = base().rule("r-back", tags=["cleaners"], doors=["back"])
    assert run(builder, door="back").reason is Reason.NO_RULE_FOR_DOOR


def test_rule_not_yet_valid() -> None:
    builder = base().rule(
        "r-back", tags=["staff"], doors=["back"], valid_from=NOW + timedelta(hours=1)
    )
    decision = run(builder, door="back")
    assert (decision.reason, decision.rule_id) == (Reason.RULE_NOT_YET_VALID, "r-back")


def test_rule_expired() -> None:
    builder = base().rule(
        "r-back", tags=["staff"], doors=["back"], valid_until=NOW - timedelta(hours=1)
    )
    decision = run(builder, door="back")
    assert (decision.reason, decision.rule_id) == (Reason.RULE_EXPIRED, "r-back")


def test_outside_schedule() -> None:
    builder = (
        base()
        .schedule("weekend", [window(["sat", "sun"], "00:00", "24:00")])
        .rule("r-back", tags=["staff"], doors=["back"], schedule="weekend")
    )
    decision = run(builder, door="back")
    assert (decision.granted, decision.reason, decision.rule_id) == (
        False,
        Reason.OUTSIDE_SCHEDULE,
        "r-back",
    )


def test_holiday() -> None:
    builder = (
        base()
        .calendar("it", [TODAY_ROME])
        .schedule("office", [window(WEEKDAYS, "08:00", "18:00")], holiday_calendars=["it"])
        .rule("r-back", tags=["staff"], doors=["back"], schedule="office")
    )
    decision = run(builder, door="back")
    assert (decision.reason, decision.rule_id) == (Reason.HOLIDAY, "r-back")
    assert run(builder, door="back", now=NOW + timedelta(days=1)).reason is Reason.GRANTED


def test_closed_by_exception() -> None:
    closure = exception(
        NOW - timedelta(hours=1), NOW + timedelta(hours=1), opens=False, note="works"
    )
    builder = (
        base()
        .schedule("office", [window(WEEKDAYS, "08:00", "18:00")], exceptions=[closure])
        .rule("r-back", tags=["staff"], doors=["back"], schedule="office")
    )
    decision = run(builder, door="back")
    assert (decision.reason, decision.rule_id) == (Reason.CLOSED_BY_EXCEPTION, "r-back")
    assert run(builder, door="back", now=NOW + timedelta(hours=1)).reason is Reason.GRANTED


def test_granted_with_the_rule_id() -> None:
    builder = (
        base()
        .schedule("office", [window(WEEKDAYS, "08:00", "18:00")])
        .rule("r-back", tags=["staff"], doors=["back"], schedule="office")
    )
    decision = run(builder, door="back")
    assert (decision.granted, decision.reason, decision.rule_id) == (True, Reason.GRANTED, "r-back")


def test_rule_with_missing_schedule_fails_secure() -> None:
    card = Credential("c1", "u1", CredentialKind.NFC_UID, "04A1B2C3", AssuranceLevel.LOW)
    view = CacheView.build(
        1,
        Site("s", "Site", "UTC"),
        {
            "doors": [Door("front", "Front", AssuranceLevel.LOW)],
            "users": [User("u1", "U1", tags=("staff",))],
            "credentials": [card],
            "rules": [AccessRule("r1", "R1", frozenset({"staff"}), frozenset({"front"}), "gone")],
        },
    )
    decision = decide(Verified(card, AssuranceLevel.LOW), "front", NOW, view)
    assert (decision.granted, decision.reason, decision.rule_id) == (
        False,
        Reason.OUTSIDE_SCHEDULE,
        "r1",
    )


@pytest.mark.parametrize(
    ("tz", "reason"),
    [("Europe/Rome", Reason.GRANTED), ("America/New_York", Reason.OUTSIDE_SCHEDULE)],
)
def test_schedule_is_read_in_site_time(tz: str, reason: Reason) -> None:
    builder = (
        base(tz)
        .schedule("office", [window(WEEKDAYS, "08:00", "18:00")])
        .rule("r-back", tags=["staff"], doors=["back"], schedule="office")
    )
    assert run(builder, door="back").reason is reason  # 12:00 in Rome, 06:00 in New York


# --- several rules --------------------------------------------------------------------------


def test_lowest_rule_id_reported_when_several_grant() -> None:
    builder = (
        base()
        .user("u2", tags=["staff", "night"])
        .credential("c2", "u2")
        .rule("r3", tags=["staff"], doors=["back"])
        .rule("r2", tags=["night"], doors=["back"])
        .rule("r4", tags=["night", "staff"], doors=["back"])
    )
    decision = run(builder, credential="c2", door="back")
    assert (decision.reason, decision.rule_id) == (Reason.GRANTED, "r2")


def test_a_granting_rule_beats_a_closer_denial() -> None:
    closure = exception(NOW - US, NOW + US, opens=False)
    builder = (
        base()
        .schedule("closed", [window(WEEKDAYS, "00:00", "24:00")], exceptions=[closure])
        .rule("a", tags=["staff"], doors=["back"], schedule="closed")
        .rule("z", tags=["staff"], doors=["back"])
    )
    decision = run(builder, door="back")
    assert (decision.reason, decision.rule_id) == (Reason.GRANTED, "z")


def denying_rules(builder: SiteBuilder, kinds: list[Reason]) -> SiteBuilder:
    """Add a rule on door back failing for each of ``kinds``; the closer, the higher its id."""
    closure = exception(NOW - timedelta(hours=1), NOW + timedelta(hours=1), opens=False)
    builder.calendar("it", [TODAY_ROME])
    builder.schedule(
        "holiday-today", [window(WEEKDAYS, "08:00", "18:00")], holiday_calendars=["it"]
    )
    builder.schedule("nights", [window(WEEKDAYS, "20:00", "22:00")])
    builder.schedule("closure", [window(WEEKDAYS, "08:00", "18:00")], exceptions=[closure])
    common = {"tags": ["staff"], "doors": ["back"]}
    if Reason.RULE_EXPIRED in kinds:
        builder.rule("x1", valid_until=NOW - timedelta(days=1), **common)
    if Reason.RULE_NOT_YET_VALID in kinds:
        builder.rule("x2", valid_from=NOW + timedelta(days=1), **common)
    if Reason.OUTSIDE_SCHEDULE in kinds:
        builder.rule("x3", schedule="nights", **common)
    if Reason.HOLIDAY in kinds:
        builder.rule("x4", schedule="holiday-today", **common)
    if Reason.CLOSED_BY_EXCEPTION in kinds:
        builder.rule("x5", schedule="closure", **common)
    return builder


RANKED = [
    Reason.CLOSED_BY_EXCEPTION,
    Reason.HOLIDAY,
    Reason.OUTSIDE_SCHEDULE,
    Reason.RULE_NOT_YET_VALID,
    Reason.RULE_EXPIRED,
]
RULE_OF = {reason: f"x{len(RANKED) - i}" for i, reason in enumerate(RANKED)}


@pytest.mark.parametrize("closest", range(len(RANKED)), ids=[r.value for r in RANKED])
def test_closest_reason_reported_when_several_deny(closest: int) -> None:
    kinds = RANKED[closest:]
    # The closest rule has the highest id: the rank must win over the id order.
    decision = run(denying_rules(base(), kinds), door="back")
    assert (decision.reason, decision.rule_id) == (RANKED[closest], RULE_OF[RANKED[closest]])


@pytest.mark.parametrize("ids", [("b", "a"), ("a", "b")])
def test_ties_between_denials_go_to_the_lowest_rule_id(ids: tuple[str, str]) -> None:
    builder = base().schedule("nights", [window(WEEKDAYS, "20:00", "22:00")])
    for rule_id in ids:
        builder.rule(rule_id, tags=["staff"], doors=["back"], schedule="nights")
    decision = run(builder, door="back")
    assert (decision.reason, decision.rule_id) == (Reason.OUTSIDE_SCHEDULE, "a")


def test_rule_ids_compare_as_strings() -> None:
    builder = (
        base()
        .rule("r9", tags=["staff"], doors=["back"])
        .rule("r10", tags=["staff"], doors=["back"])
    )
    assert run(builder, door="back").rule_id == "r10"


# --- validity boundaries --------------------------------------------------------------------

NOT_YET = {
    "credential": Reason.CREDENTIAL_NOT_YET_VALID,
    "user": Reason.USER_NOT_YET_VALID,
    "rule": Reason.RULE_NOT_YET_VALID,
}
EXPIRED = {
    "credential": Reason.CREDENTIAL_EXPIRED,
    "user": Reason.USER_EXPIRED,
    "rule": Reason.RULE_EXPIRED,
}


def bounded(entity: str, **validity: Any) -> SiteBuilder:
    """A site whose presentation of c2 at back passes unless ``entity``'s validity forbids it."""
    builder = base()
    builder.user("u2", tags=["staff"], **(validity if entity == "user" else {}))
    builder.credential("c2", "u2", **(validity if entity == "credential" else {}))
    builder.rule("r2", tags=["staff"], doors=["back"], **(validity if entity == "rule" else {}))
    return builder


@pytest.mark.parametrize("entity", ["credential", "user", "rule"])
@pytest.mark.parametrize(
    ("offset", "expect_granted"),
    [(timedelta(0), True), (-US, False)],
    ids=["at-start", "just-before"],
)
def test_valid_from_is_inclusive(entity: str, offset: timedelta, expect_granted: bool) -> None:
    decision = run(bounded(entity, valid_from=NOW), credential="c2", door="back", now=NOW + offset)
    assert decision.reason is (Reason.GRANTED if expect_granted else NOT_YET[entity])


@pytest.mark.parametrize("entity", ["credential", "user", "rule"])
@pytest.mark.parametrize(
    ("offset", "expect_granted"),
    [(timedelta(0), False), (-US, True)],
    ids=["at-end", "just-before"],
)
def test_valid_until_is_exclusive(entity: str, offset: timedelta, expect_granted: bool) -> None:
    decision = run(bounded(entity, valid_until=NOW), credential="c2", door="back", now=NOW + offset)
    assert decision.reason is (Reason.GRANTED if expect_granted else EXPIRED[entity])


@pytest.mark.parametrize("entity", ["credential", "user", "rule"])
def test_validity_compares_instants_across_offsets(entity: str) -> None:
    in_new_york = NOW.astimezone(ZoneInfo("America/New_York"))
    builder = bounded(
        entity, valid_from=in_new_york, valid_until=in_new_york + timedelta(minutes=1)
    )
    assert run(builder, credential="c2", door="back").reason is Reason.GRANTED
    assert run(builder, credential="c2", door="back", now=NOW - US).reason is NOT_YET[entity]


# --- mechatronic keys: blacklist and revalidation -------------------------------------------

KEY = "0011223344556677"
DAY = timedelta(days=1)


def keyed(**fields: Any) -> SiteBuilder:
    """``base()`` plus a mechatronic key ``k1`` of user u1 (``fields`` go to the credential)."""
    return base().credential("k1", "u1", kind="mech_key", value=KEY, **fields)


@pytest.mark.parametrize("mode", list(DoorMode))
def test_a_blacklisted_key_is_denied_in_every_mode(mode: DoorMode) -> None:
    assert run(keyed(), credential="k1", mode=mode).granted is (mode is not DoorMode.LOCKDOWN)
    decision = run(keyed().blacklist(KEY), credential="k1", mode=mode)
    assert decision == Decision(
        granted=False,
        reason=Reason.KEY_BLACKLISTED,
        door_id="front",
        at=NOW,
        mode=mode,
        credential_id="k1",
        user_id="u1",
        rule_id=None,
        assurance=AssuranceLevel.HIGH,
    )


def test_the_blacklist_beats_emergency_open_and_lockdown_override() -> None:
    builder = keyed().blacklist(KEY).lockdown_override("staff")
    for mode in (DoorMode.EMERGENCY_OPEN, DoorMode.LOCKDOWN):
        assert run(builder, credential="k1", mode=mode).reason is Reason.KEY_BLACKLISTED
    # Everyone else still passes an emergency-open door, and the override holder a lockdown.
    assert run(builder, mode=DoorMode.EMERGENCY_OPEN).reason is Reason.EMERGENCY_OPEN
    assert run(builder, mode=DoorMode.LOCKDOWN).reason is Reason.LOCKDOWN_OVERRIDE


@pytest.mark.parametrize(
    "fields",
    [
        {"revoked": True},
        {"valid_until": NOW - DAY},
        {"revalidation_days": 1},
    ],
    ids=["revoked", "expired", "revalidation-due"],
)
def test_the_blacklist_beats_every_credential_check(fields: dict[str, Any]) -> None:
    builder = keyed(**fields).blacklist(KEY)
    assert run(builder, credential="k1").reason is Reason.KEY_BLACKLISTED


def test_an_unknown_door_beats_the_blacklist() -> None:
    decision = run(keyed().blacklist(KEY), credential="k1", door="ghost")
    assert (decision.reason, decision.credential_id) == (Reason.UNKNOWN_DOOR, None)


def test_the_blacklist_names_keys_in_any_written_form() -> None:
    builder = keyed().blacklist("00:11:22:33:44:55:66:77".lower())
    assert run(builder, credential="k1").reason is Reason.KEY_BLACKLISTED


def test_other_keys_are_not_affected_by_the_blacklist() -> None:
    builder = keyed().blacklist("FFEEDDCCBBAA9988")
    assert run(builder, credential="k1").reason is Reason.GRANTED
    assert run(builder).reason is Reason.GRANTED


REVALIDATED = utc(2026, 6, 1, 10)  # nine days before NOW


@pytest.mark.parametrize(
    ("offset", "expect"),
    [
        (-US, Reason.GRANTED),
        (timedelta(0), Reason.KEY_REVALIDATION_DUE),
        (US, Reason.KEY_REVALIDATION_DUE),
    ],
    ids=["just-before", "exactly-at", "just-after"],
)
def test_revalidation_is_due_from_exactly_n_days_after_the_last(
    offset: timedelta, expect: Reason
) -> None:
    builder = keyed(revalidation_days=9, revalidated_at=REVALIDATED)
    assert REVALIDATED + 9 * DAY == NOW
    decision = run(builder, credential="k1", now=NOW + offset)
    assert (decision.reason, decision.granted) == (expect, expect.granted)
    if not decision.granted:
        assert (decision.credential_id, decision.user_id) == ("k1", "u1")


def test_revalidation_counts_instants_across_offsets() -> None:
    # 2026-06-01T12:00+02:00 is REVALIDATED; nine days later is NOW whatever the offset written.
    builder = keyed(revalidation_days=9, revalidated_at="2026-06-01T12:00:00+02:00")
    assert run(builder, credential="k1", now=NOW - US).reason is Reason.GRANTED
    assert run(builder, credential="k1", now=NOW).reason is Reason.KEY_REVALIDATION_DUE


def test_a_key_never_revalidated_is_due() -> None:
    decision = run(keyed(revalidation_days=3650), credential="k1")
    assert (decision.granted, decision.reason) == (False, Reason.KEY_REVALIDATION_DUE)


def test_a_revalidation_date_without_a_period_changes_nothing() -> None:
    builder = keyed(revalidated_at=utc(2020, 1, 1))
    assert run(builder, credential="k1").reason is Reason.GRANTED


def test_revalidation_comes_after_the_credential_validity_window() -> None:
    due = {"revalidation_days": 1, "revalidated_at": utc(2026, 1, 1)}
    assert run(keyed(**due, revoked=True), credential="k1").reason is Reason.CREDENTIAL_REVOKED
    assert (
        run(keyed(**due, valid_from=NOW + DAY), credential="k1").reason
        is Reason.CREDENTIAL_NOT_YET_VALID
    )
    assert run(keyed(**due, valid_until=NOW), credential="k1").reason is Reason.CREDENTIAL_EXPIRED


def test_revalidation_comes_before_the_user_checks() -> None:
    builder = (
        site()
        .door("front", min_assurance="high")
        .user("u1", status="suspended", tags=["staff"])
        .credential("k1", "u1", kind="mech_key", value=KEY, revalidation_days=1, assurance="low")
    )
    assert run(builder, credential="k1").reason is Reason.KEY_REVALIDATION_DUE


# --- lockdown override ----------------------------------------------------------------------


def guarded(**user: Any) -> SiteBuilder:
    """``base()`` whose site lets tag ``guards`` through lockdown; u2 (card c2) holds it."""
    return (
        base()
        .lockdown_override("guards")
        .user("u2", **{"tags": ["guards"], **user})
        .credential("c2", "u2", valid_until=utc(2027, 1, 1))
        .credential("k2", "u2", kind="mech_key", value=KEY, revalidation_days=30,
                    revalidated_at=NOW - DAY)
    )  # fmt: skip


@pytest.mark.parametrize("door", ["front", "back"])
def test_an_override_holder_passes_a_door_in_lockdown_without_any_rule(door: str) -> None:
    # u2 has no rule at all; "back" has no rule for anyone.
    assert run(guarded(), credential="c2", door=door).reason is Reason.NO_RULE_FOR_DOOR
    decision = run(guarded(), credential="c2", door=door, mode=DoorMode.LOCKDOWN)
    assert decision == Decision(
        granted=True,
        reason=Reason.LOCKDOWN_OVERRIDE,
        door_id=door,
        at=NOW,
        mode=DoorMode.LOCKDOWN,
        credential_id="c2",
        user_id="u2",
        rule_id=None,
        assurance=AssuranceLevel.LOW,
    )
    assert run(guarded(), credential="k2", door=door, mode=DoorMode.LOCKDOWN).granted


def test_an_override_holder_ignores_schedules_in_lockdown() -> None:
    builder = guarded().schedule("never", [window("sun", "03:00", "04:00")])
    builder.rule("r2", tags=["guards"], doors=["front"], schedule="never")
    assert run(builder, credential="c2").reason is Reason.OUTSIDE_SCHEDULE
    assert run(builder, credential="c2", mode=DoorMode.LOCKDOWN).reason is Reason.LOCKDOWN_OVERRIDE


def test_everyone_else_is_still_denied_in_lockdown() -> None:
    decision = run(guarded(), credential="c1", mode=DoorMode.LOCKDOWN)
    assert decision == Decision(False, Reason.DOOR_LOCKDOWN, "front", NOW, DoorMode.LOCKDOWN)


def test_without_an_override_tag_nobody_passes_lockdown() -> None:
    builder = guarded()
    del builder.site["lockdown_override_tag"]
    assert run(builder, credential="c2", mode=DoorMode.LOCKDOWN).reason is Reason.DOOR_LOCKDOWN


@pytest.mark.parametrize(
    ("credential", "fields", "user", "normal"),
    [
        ("c2", {"valid_until": NOW}, {}, Reason.CREDENTIAL_EXPIRED),
        ("c2", {"valid_from": NOW + US}, {}, Reason.CREDENTIAL_NOT_YET_VALID),
        ("c2", {"revoked": True}, {}, Reason.CREDENTIAL_REVOKED),
        ("k2", {"revalidated_at": NOW - 30 * DAY}, {}, Reason.KEY_REVALIDATION_DUE),
        ("c2", {}, {"status": "suspended"}, Reason.USER_DISABLED),
        ("c2", {}, {"valid_until": NOW}, Reason.USER_EXPIRED),
        ("c2", {}, {"valid_from": NOW + US}, Reason.USER_NOT_YET_VALID),
    ],
    ids=[
        "credential-expired",
        "credential-not-yet-valid",
        "revoked",
        "revalidation-due",
        "user-suspended",
        "user-expired",
        "user-not-yet-valid",
    ],
)
def test_an_override_holder_with_a_bad_credential_is_denied_as_lockdown(
    credential: str, fields: dict[str, Any], user: dict[str, Any], normal: Reason
) -> None:
    builder = guarded(**user)
    card = next(c for c in builder.entities["credentials"] if c["id"] == credential)
    card.update({k: v.isoformat() if isinstance(v, datetime) else v for k, v in fields.items()})
    assert run(builder, credential=credential).reason is normal
    decision = run(builder, credential=credential, mode=DoorMode.LOCKDOWN)
    assert decision == Decision(False, Reason.DOOR_LOCKDOWN, "front", NOW, DoorMode.LOCKDOWN)


def test_an_override_holder_needs_the_doors_assurance_in_lockdown() -> None:
    builder = guarded().door("vault", min_assurance="high")
    assert run(builder, credential="c2", door="vault").reason is Reason.ASSURANCE_TOO_LOW
    decision = run(builder, credential="c2", door="vault", mode=DoorMode.LOCKDOWN)
    assert decision.reason is Reason.DOOR_LOCKDOWN
    assert run(builder, credential="k2", door="vault", mode=DoorMode.LOCKDOWN).granted


def test_an_override_holder_whose_user_is_gone_is_denied_as_lockdown() -> None:
    view = guarded().view()
    card = credential_by_id(view, "c2")
    orphan = Credential(card.id, "ghost", card.kind, card.value, card.assurance)
    for mode, reason in (
        (DoorMode.NORMAL, Reason.UNKNOWN_USER),
        (DoorMode.LOCKDOWN, Reason.DOOR_LOCKDOWN),
    ):
        assert decide(Verified(orphan, card.assurance), "front", NOW, view, mode).reason is reason


@pytest.mark.parametrize(
    "ident",
    [REFUSED, Verified(None, AssuranceLevel.HIGH)],
    ids=["refused", "unknown-credential"],
)
def test_no_proof_no_override(ident: Verified | Refused) -> None:
    decision = decide(ident, "front", NOW, guarded().view(), DoorMode.LOCKDOWN)
    assert (decision.granted, decision.reason) == (False, Reason.DOOR_LOCKDOWN)


def test_the_override_tag_opens_nothing_outside_lockdown() -> None:
    for mode in (DoorMode.NORMAL, DoorMode.UNLOCKED):
        assert run(guarded(), credential="c2", mode=mode).reason is Reason.NO_RULE_FOR_DOOR


def test_new_reasons_say_whether_they_open_the_door() -> None:
    assert Reason.LOCKDOWN_OVERRIDE.granted
    assert not Reason.KEY_BLACKLISTED.granted
    assert not Reason.KEY_REVALIDATION_DUE.granted


# --- door modes and decision fields ---------------------------------------------------------


@pytest.mark.parametrize(
    ("credential", "reason"),
    [("c1", Reason.GRANTED), ("c2", Reason.CREDENTIAL_REVOKED), ("c3", Reason.USER_DISABLED)],
)
def test_unlocked_door_still_evaluates_the_credential(credential: str, reason: Reason) -> None:
    builder = (
        base()
        .credential("c2", "u1", revoked=True)
        .user("u3", status="former")
        .credential("c3", "u3")
    )
    decision = run(builder, credential=credential, mode=DoorMode.UNLOCKED)
    assert (decision.reason, decision.granted, decision.mode) == (
        reason,
        reason.granted,
        DoorMode.UNLOCKED,
    )


def test_unlocked_door_refuses_an_unknown_credential() -> None:
    view = base().view()
    decision = decide(Verified(None, AssuranceLevel.LOW), "front", NOW, view, DoorMode.UNLOCKED)
    assert (decision.granted, decision.reason) == (False, Reason.UNKNOWN_CREDENTIAL)


def test_granted_decision_fields() -> None:
    decision = run(base(), mode=DoorMode.UNLOCKED)
    assert decision == Decision(
        granted=True,
        reason=Reason.GRANTED,
        door_id="front",
        at=NOW,
        mode=DoorMode.UNLOCKED,
        credential_id="c1",
        user_id="u1",
        rule_id="r1",
        assurance=AssuranceLevel.LOW,
    )


def test_denied_decision_fields() -> None:
    builder = base().rule("r-back", tags=["staff"], doors=["back"], valid_until=NOW)
    assert run(builder, door="back") == Decision(
        granted=False,
        reason=Reason.RULE_EXPIRED,
        door_id="back",
        at=NOW,
        mode=DoorMode.NORMAL,
        credential_id="c1",
        user_id="u1",
        rule_id="r-back",
        assurance=AssuranceLevel.LOW,
    )


def test_user_stage_denial_carries_credential_user_and_assurance() -> None:
    builder = base().user("u2", tags=["staff"], status="suspended").credential("c2", "u2")
    decision = run(builder, credential="c2")
    assert (decision.credential_id, decision.user_id, decision.rule_id, decision.assurance) == (
        "c2",
        "u2",
        None,
        AssuranceLevel.LOW,
    )


# --- property: deterministic and self-consistent --------------------------------------------

TAGS = ["a", "b", "c"]
DOORS = ["d1", "d2"]
ASSURANCES = ["low", "medium", "high"]
BASE_TIME = utc(2026, 1, 1)
instants = st.integers(min_value=0, max_value=365 * 24 * 60).map(
    lambda m: BASE_TIME + timedelta(minutes=m)
)
RARELY = st.sampled_from([False, False, False, True])
SCHEDULES = {
    "office": [window(WEEKDAYS, "08:00", "18:00")],
    "nights": [window(["fri", "sat"], "22:00", "06:00", overnight=True)],
    "weekend": [window(["sat", "sun"], "00:00", "24:00")],
}


@st.composite
def validity(draw: st.DrawFn) -> dict[str, Any]:
    """An optional validity interval, valid_until after valid_from."""
    out: dict[str, Any] = {}
    if draw(RARELY):
        out["valid_from"] = draw(instants)
    if draw(RARELY):
        start = out.get("valid_from", BASE_TIME)
        out["valid_until"] = start + timedelta(minutes=draw(st.integers(1, 365 * 24 * 60)))
    return out


@st.composite
def small_sites(draw: st.DrawFn) -> tuple[SiteBuilder, datetime]:
    """A small, valid site (doors, users, cards, schedules, rules) and an instant to decide at."""
    now = draw(instants)
    near = st.integers(-72, 24).map(lambda hours: now + timedelta(hours=hours))
    builder = site(draw(st.sampled_from(["Europe/Rome", "America/New_York", "UTC"])))
    for tag in TAGS:
        builder.tag(tag)
    for door in DOORS:
        builder.door(door, min_assurance=draw(st.sampled_from(["low", *ASSURANCES])))
    holidays = draw(st.lists(near.map(lambda t: t.date()), max_size=3))
    builder.calendar("cal", holidays)
    for schedule_id, windows in SCHEDULES.items():
        closures = []
        if draw(st.booleans()):
            start = draw(near)
            closures.append(
                exception(
                    start,
                    start + timedelta(hours=draw(st.integers(1, 72))),
                    opens=draw(st.booleans()),
                )
            )
        builder.schedule(
            schedule_id,
            windows,
            holiday_calendars=["cal"] if draw(st.booleans()) else [],
            holiday_windows=[{"start": "10:00", "end": "12:00"}] if draw(st.booleans()) else [],
            exceptions=closures,
        )
    for u in range(draw(st.integers(1, 3))):
        builder.user(
            f"u{u}",
            tags=draw(
                st.lists(st.sampled_from(TAGS), min_size=0 if draw(RARELY) else 1, unique=True)
            ),
            status=draw(st.sampled_from(["active", "active", "active", "suspended", "former"])),
            **draw(validity()),
        )
        for c in range(draw(st.integers(1, 2))):
            kind = draw(st.sampled_from(["nfc_uid", "desfire", "mech_key"]))
            revalidation: dict[str, Any] = {}
            if kind == "mech_key" and draw(st.booleans()):
                revalidation["revalidation_days"] = draw(st.integers(1, 30))
                if draw(st.booleans()):
                    revalidation["revalidated_at"] = draw(near)
            builder.credential(
                f"c{u}-{c}",
                f"u{u}",
                kind=kind,
                revoked=draw(RARELY),
                **revalidation,
                **draw(validity()),
            )
    keys = [c["value"] for c in builder.entities["credentials"] if c["kind"] == "mech_key"]
    builder.blacklist(*(k for k in keys if draw(RARELY)))
    if draw(st.booleans()):
        builder.lockdown_override(draw(st.sampled_from(TAGS)))
    for r in range(draw(st.integers(0, 6))):
        builder.rule(
            f"r{r}",
            tags=draw(st.lists(st.sampled_from(TAGS), min_size=1, unique=True)),
            doors=draw(st.lists(st.sampled_from(DOORS), min_size=1, unique=True)),
            schedule=draw(st.sampled_from([None, *SCHEDULES])),
            **draw(validity()),
        )
    return builder, now


@settings(max_examples=200, deadline=None)
@given(site_and_now=small_sites())
def test_decide_is_deterministic_and_consistent(site_and_now: tuple[SiteBuilder, datetime]) -> None:
    builder, now = site_and_now
    view = builder.view()
    fresh = builder.view()  # an equal view, built again
    cards = list(view.all_credentials())
    identities: list[Verified | Refused] = [Verified(None, AssuranceLevel.LOW), REFUSED]
    for card in cards:
        identities += [Verified(card, card.assurance), Verified(card, AssuranceLevel.LOW)]
    for ident, door, mode in itertools.product(identities, [*DOORS, "ghost"], DoorMode):
        decision = decide(ident, door, now, view, mode)
        event(decision.reason.value)
        assert decide(ident, door, now, view, mode) == decision
        assert decide(ident, door, now, fresh, mode) == decision
        assert decision.granted == decision.reason.granted
        assert (decision.door_id, decision.at, decision.mode) == (door, now, mode)
        if decision.reason in RULE_STAGE:
            assert isinstance(ident, Verified)
            assert ident.credential is not None
            check_rule_stage(decision, ident.credential, view, now)
        else:
            assert decision.rule_id is None
        check_key_and_lockdown_stage(decision, ident, view)


def check_key_and_lockdown_stage(
    decision: Decision, ident: Verified | Refused, view: CacheView
) -> None:
    """A reference for the blacklist (any mode) and for lockdown (the override or nothing)."""
    card = ident.credential if isinstance(ident, Verified) else None
    known_door = decision.door_id in view.doors
    blacklisted = (
        card is not None
        and card.kind is CredentialKind.MECHATRONIC_KEY
        and card.value in view.site.key_blacklist
    )
    assert (decision.reason is Reason.KEY_BLACKLISTED) == (known_door and blacklisted)
    if decision.mode is not DoorMode.LOCKDOWN or not known_door or blacklisted:
        return
    normal = decide(ident, decision.door_id, decision.at, view, DoorMode.NORMAL)
    tag = view.site.lockdown_override_tag
    passes = (
        tag is not None
        and normal.reason in RULE_STAGE
        and tag in view.users[normal.user_id or ""].tags
    )
    assert decision.reason is (Reason.LOCKDOWN_OVERRIDE if passes else Reason.DOOR_LOCKDOWN)


def check_rule_stage(decision: Decision, card: Credential, view: CacheView, now: datetime) -> None:
    """A reference for the rule stage: the lowest granting rule, else the closest denial."""
    user = view.users[card.user_id]
    own = {
        r.id: rule_reason(r, view, now)
        for r in view.rules.values()
        if decision.door_id in r.doors and not r.tags.isdisjoint(user.tags)
    }
    granting = sorted(rule_id for rule_id, reason in own.items() if reason is Reason.GRANTED)
    expected: tuple[Reason, str | None]
    if granting:
        expected = (Reason.GRANTED, granting[0])
    elif own:
        closest = min(own.values(), key=RANKED.index)
        expected = (closest, min(rule_id for rule_id, reason in own.items() if reason is closest))
    else:
        expected = (Reason.NO_RULE_FOR_DOOR, None)
    assert (decision.reason, decision.rule_id) == expected
    assert (decision.credential_id, decision.user_id) == (card.id, user.id)


RULE_STAGE = {Reason.GRANTED, Reason.NO_RULE_FOR_DOOR, *RANKED}


def rule_reason(rule: AccessRule, view: CacheView, now: datetime) -> Reason:
    """What ``rule`` alone says at ``now``: GRANTED or its own failure reason."""
    if rule.valid_from is not None and now < rule.valid_from:
        return Reason.RULE_NOT_YET_VALID
    if rule.valid_until is not None and now >= rule.valid_until:
        return Reason.RULE_EXPIRED
    if rule.schedule_id is None:
        return Reason.GRANTED
    closed = view.compiled[rule.schedule_id].closed_reason(now, now.astimezone(view.tz))
    return Reason.GRANTED if closed is None else closed


def test_a_proof_never_lifts_a_credential_above_its_enrolled_level() -> None:
    # Enrolled at medium (e.g. a tag used only with SUN messages), presented with a strong proof.
    builder = base().credential("c2", "u1", kind="ntag424", assurance="medium")
    builder = builder.door("vault", min_assurance="high").rule(
        "r2", tags=["staff"], doors=["vault"]
    )
    decision = run(builder, credential="c2", door="vault", assurance=AssuranceLevel.HIGH)
    assert (decision.granted, decision.reason) == (False, Reason.ASSURANCE_TOO_LOW)
    assert decision.assurance is AssuranceLevel.MEDIUM


# --- offline policy ------------------------------------------------------------------------------


def offline_site_view(max_days: int | None, kinds: frozenset[CredentialKind]) -> CacheView:
    card = Credential("c1", "u1", CredentialKind.NFC_UID, "04A1B2C3", AssuranceLevel.LOW)
    key = Credential(
        "k1", "u1", CredentialKind.MECHATRONIC_KEY, "A1A2A3A4A5A6A7A8", AssuranceLevel.HIGH
    )
    return CacheView.build(
        1,
        Site("s", "Site", "Europe/Rome", max_offline_days=max_days, offline_limited_kinds=kinds),
        {
            "doors": [Door("front", "Front", AssuranceLevel.LOW)],
            "users": [User("u1", "U1", tags=("staff",))],
            "credentials": [card, key],
            "rules": [AccessRule("r1", "R1", frozenset({"staff"}), frozenset({"front"}))],
        },
    )


@pytest.mark.parametrize(
    ("offline_for", "expected"),
    [
        (None, Reason.GRANTED),  # connected, or no cloud at all
        (timedelta(days=7), Reason.GRANTED),  # exactly the limit still works
        (timedelta(days=7, seconds=1), Reason.OFFLINE_TOO_LONG),
    ],
)
def test_the_offline_policy_stops_the_limited_kinds_after_the_limit(
    offline_for: timedelta | None, expected: Reason
) -> None:
    view = offline_site_view(7, frozenset({CredentialKind.NFC_UID}))
    card, key = (
        view.credential(CredentialKind.NFC_UID, "04A1B2C3"),
        view.credential(CredentialKind.MECHATRONIC_KEY, "A1A2A3A4A5A6A7A8"),
    )
    decision = decide(
        Verified(card, AssuranceLevel.LOW), "front", NOW, view, offline_for=offline_for
    )
    assert decision.reason is expected
    assert decision.credential_id == "c1"
    # Kinds the policy does not name keep working from the cache.
    other = decide(
        Verified(key, AssuranceLevel.HIGH), "front", NOW, view, offline_for=timedelta(days=60)
    )
    assert other.reason is Reason.GRANTED


def test_without_an_offline_limit_nothing_stops_working() -> None:
    view = offline_site_view(None, frozenset({CredentialKind.NFC_UID}))
    card = view.credential(CredentialKind.NFC_UID, "04A1B2C3")
    decision = decide(
        Verified(card, AssuranceLevel.LOW), "front", NOW, view, offline_for=timedelta(days=365)
    )
    assert decision.reason is Reason.GRANTED
