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
            builder.credential(
                f"c{u}-{c}",
                f"u{u}",
                kind=draw(st.sampled_from(["nfc_uid", "desfire"])),
                revoked=draw(RARELY),
                **draw(validity()),
            )
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
