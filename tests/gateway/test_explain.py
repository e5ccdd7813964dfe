"""Tests for gateway.explain: every reason has a sentence, and the new ones name their facts."""

from __future__ import annotations

import pytest

from gateway.access import decide
from gateway.explain import decision_to_json, explain
from gateway.model import Decision, DoorMode, Reason
from tests.gateway.sitebuilder import SiteBuilder, credential_by_id, identity, site, utc

NOW = utc(2026, 6, 10, 10)
KEY = "0011223344556677"


def guarded() -> SiteBuilder:
    """A site with a lockdown override tag, a guard's card and two mechatronic keys."""
    return (
        site()
        .door("front", name="Front door", min_assurance="low")
        .lockdown_override("guards")
        .user("u1", name="Gina Guard", tags=["guards"])
        .credential("c1", "u1")
        .credential("k1", "u1", kind="mech_key", value=KEY)
        .credential(
            "k2",
            "u1",
            kind="mech_key",
            revalidation_days=30,
            revalidated_at="2026-05-01T09:00:00+02:00",
        )
        .credential("k3", "u1", kind="mech_key", revalidation_days=7)
        .blacklist(KEY)
    )


def explained(credential_id: str, mode: DoorMode = DoorMode.NORMAL) -> str:
    """The explanation of presenting ``credential_id`` at the front door."""
    view = guarded().view()
    decision = decide(identity(view, credential_id), "front", NOW, view, mode)
    return explain(decision, view, credential_by_id(view, credential_id))


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_has_a_sentence(reason: Reason) -> None:
    view = guarded().view()
    decision = Decision(reason.granted, reason, "front", NOW, DoorMode.NORMAL, "c1", "u1")
    text = explain(decision, view)
    assert text.startswith(("GRANTED" if reason.granted else "DENIED") + ' at "Front door"')
    assert f"({reason.value})" in text


def test_a_blacklisted_key_is_explained() -> None:
    assert explained("k1") == (
        'DENIED at "Front door" (key_blacklisted): '
        "mechatronic key k1 is on the site's blacklist of lost keys."
    )


def test_a_key_due_for_revalidation_is_explained() -> None:
    assert explained("k2") == (
        'DENIED at "Front door" (key_revalidation_due): mechatronic key k2 must be revalidated '
        "at an online reader every 30 days; it was last revalidated at 2026-05-01 09:00:00+02:00."
    )
    assert explained("k3").endswith("every 7 days; it has never been revalidated.")


def test_a_lockdown_override_is_explained() -> None:
    assert explained("c1", DoorMode.LOCKDOWN) == (
        'GRANTED at "Front door" (lockdown_override): the door is in lockdown, '
        'but "Gina Guard" (u1) holds the site\'s lockdown override tag guards.'
    )


def test_a_lockdown_denial_names_the_override_tag_when_there_is_one() -> None:
    builder = guarded().user("u2").credential("c2", "u2")
    view = builder.view()
    decision = decide(identity(view, "c2"), "front", NOW, view, DoorMode.LOCKDOWN)
    assert explain(decision, view).endswith(
        "the door is in lockdown: only a valid credential of a holder of the override tag "
        "guards opens it until lockdown ends."
    )
    del builder.site["lockdown_override_tag"]
    view = builder.view()
    decision = decide(identity(view, "c2"), "front", NOW, view, DoorMode.LOCKDOWN)
    assert explain(decision, view).endswith(
        "the door is in lockdown: no credential opens it until lockdown ends."
    )


def test_a_lockdown_override_decision_as_json() -> None:
    view = guarded().view()
    decision = decide(identity(view, "c1"), "front", NOW, view, DoorMode.LOCKDOWN)
    assert decision_to_json(decision) == {
        "granted": True,
        "reason": "lockdown_override",
        "door": "front",
        "at": NOW.isoformat(),
        "mode": "lockdown",
        "credential": "c1",
        "user": "u1",
        "rule": None,
        "assurance": "low",
    }
