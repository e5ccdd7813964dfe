"""A webhook re-maps only the members it concerns: the result must be what mapping everyone gives.

Random organisations get random edits (members, memberships, companies added, changed or
removed), each applied to the listings as a webhook's re-fetch would; after each edit the
partial result (``partial_target``, or a whole mapping where it says one is needed) must equal
a whole mapping of the same listings: users, plan tags, cards, rules and phone access.
"""

from __future__ import annotations

import random
from datetime import date
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.officernd.listings import Listings
from gateway.officernd.mapping import MappingSettings, map_entities
from gateway.officernd.reconcile import RuleSpec, Target, build_target
from gateway.officernd.sync import partial_target
from gateway.view import CacheView
from tests.gateway.sitebuilder import site

MAPPING = MappingSettings()
TODAY = date(2026, 11, 30)
RULES = {"members": RuleSpec(("P0", "P1"), ("front",))}
CARDS = ("nfc_uid:04A1B2C3D4E5F6", "nfc_uid:04A1B2C3D4E5F7", "desfire:04112233445566")
MEMBERS = [f"{i:024x}" for i in range(1, 9)]
COMPANIES = [f"{100 + i:024x}" for i in range(3)]
PLANS = [f"{200 + i:024x}" for i in range(3)]
MEMBERSHIPS = [f"{300 + i:024x}" for i in range(10)]
VIEW: CacheView = site().door("front").view()


def member(rng: random.Random, key: str) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if rng.random() < 0.6:
        properties["luckey_cards"] = ", ".join(rng.sample(CARDS, rng.randint(1, 2)))
    if rng.random() < 0.5:
        properties["member_app"] = rng.choice(["yes", "no"])
    return {
        "_id": key,
        "name": "m" + key[-2:],
        "status": rng.choice(["active", "active", "former", "pending"]),
        "company": rng.choice([None, *COMPANIES]),
        "properties": properties,
    }


def membership(rng: random.Random, key: str) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "_id": key,
        "plan": rng.choice([*PLANS, "deadbeef" * 3]),  # now and then a plan that is gone
        "startDate": rng.choice(["2026-01-01", "2027-01-01"]),
        "endDate": rng.choice([None, "2026-11-29", "2026-12-31"]),
    }
    if rng.random() < 0.6:
        obj["member"] = rng.choice(MEMBERS)
    else:
        obj["company"] = rng.choice(COMPANIES)
    if rng.random() < 0.2:
        obj["member"], obj["company"] = rng.choice(MEMBERS), rng.choice(COMPANIES)
    return obj


def whole(listings: Listings) -> Target:
    objects = listings.objects
    mapped = map_entities(
        *(
            list(objects[name].values())
            for name in ("members", "companies", "memberships", "plans")
        ),
        today=TODAY,
        settings=MAPPING,
    )
    return build_target(mapped, RULES, VIEW)


def seen(target: Target) -> tuple[Any, ...]:
    return (
        dict(target.users),
        dict(target.tags),
        target.all_cards(),
        dict(target.rules),
        target.phone_allowed,
    )


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_mapping_the_members_a_change_concerns_equals_mapping_everyone(seed: int) -> None:
    rng = random.Random(seed)
    listings = Listings()
    listings.replace(
        {
            "members": [member(rng, k) for k in MEMBERS if rng.random() < 0.8],
            "companies": [{"_id": k} for k in COMPANIES if rng.random() < 0.8],
            "memberships": [membership(rng, k) for k in MEMBERSHIPS],
            "plans": [{"_id": k, "name": f"P{i}"} for i, k in enumerate(PLANS)],
        }
    )
    target = whole(listings)
    for _ in range(12):
        resource = rng.choice(["members", "members", "memberships", "memberships", "companies"])
        key = rng.choice(
            {"members": MEMBERS, "memberships": MEMBERSHIPS, "companies": COMPANIES}[resource]
        )
        if rng.random() < 0.25:
            affected = listings.remove(resource, key)
        elif resource == "members":
            affected = listings.upsert(resource, member(rng, key))
        elif resource == "memberships":
            affected = listings.upsert(resource, membership(rng, key))
        else:
            affected = listings.upsert(resource, {"_id": key})
        if affected.everyone:
            target = whole(listings)
        elif affected.members:
            found = partial_target(
                target,
                listings,
                affected.members,
                today=TODAY,
                settings=MAPPING,
                rules=RULES,
                view=VIEW,
            )
            target = whole(listings) if found is None else found[0]
        assert seen(target) == seen(whole(listings))
