"""The OfficeRnD sync against the fake OfficeRnD over real HTTP, into a real SQLite cache.

Each test reads the outcome where the product reads it: the cache view, and the decision the
gateway would take for a member's card at a door.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import access
from gateway.cache import Cache
from gateway.codec import FormatError
from gateway.credentials import Verified
from gateway.events import EventLog
from gateway.model import CredentialKind, Reason, RuleType, UserStatus
from gateway.officernd.client import ALL_SCOPES, OfficeRnDClient, OfficeRnDSettings, Unreachable
from gateway.officernd.mapping import MappingSettings
from gateway.officernd.reconcile import RuleSpec
from gateway.officernd.service import remove_officernd_entities
from gateway.officernd.sync import OfficeRnDSync, SyncOptions
from gateway.officernd.webhooks import WebhookEvent
from gateway.outbox import Outbox
from tests.conftest import read_outbox
from tests.gateway.sitebuilder import PHONE_KEY, site
from tests.officernd.fake import FakeOfficeRnD

CARD = "04A1B2C3D4E5F6"


@dataclass
class Rig:
    fake: FakeOfficeRnD
    cache: Cache
    sync: OfficeRnDSync
    client: OfficeRnDClient
    state_dir: Path
    now: list[datetime]

    def decide(self, member_id: str, value: str = CARD, door: str = "front") -> Reason:
        """The decision for the member's card at ``door``, as the gateway would take it."""
        view = self.cache.view
        credential = view.credential(CredentialKind.NFC_UID, value)
        if credential is None:
            return Reason.UNKNOWN_CREDENTIAL
        assert credential.user_id == "ornd-" + member_id
        return access.decide(
            Verified(credential, credential.assurance), door, self.now[0], view
        ).reason

    async def start(self) -> None:
        """Start the sync's task and wait for its first full sync."""
        applied = self.sync.applied
        self.sync.start()
        await asyncio.wait_for(applied.wait(), 10)

    async def cloud_snapshot(self) -> None:
        """A newer snapshot from the cloud (its own data only); wait for the sync's re-apply."""
        applied = self.sync.applied
        newer = cloud_site()
        newer.version = self.cache.version + 1
        await self.cache.apply_snapshot(newer.snapshot())
        await asyncio.wait_for(applied.wait(), 10)

    async def deliver(self, *events: WebhookEvent) -> None:
        """Submit webhook events and wait until the sync has processed them all."""
        target = self.sync.webhooks_processed + len(events)
        for event in events:
            self.sync.submit(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while self.sync.webhooks_processed < target:
            assert loop.time() < deadline, "the webhook events were not processed"
            await asyncio.sleep(0.005)

    def user(self, member_id: str) -> Any:
        return self.cache.view.users.get("ornd-" + member_id)

    def event(self, event_type: str, object_id: str | None) -> WebhookEvent:
        entity = {"member": "members", "membership": "memberships", "company": "companies"}
        return WebhookEvent(
            event_id=f"ev-{object_id}-{event_type}",
            event_type=event_type,
            object_id=object_id,
            entity=entity.get(
                event_type.split(".", maxsplit=1)[0], event_type.split(".", maxsplit=1)[0] + "s"
            ),
            created_at="",
        )


def cloud_site(**extra_rules: Any) -> Any:
    builder = (
        site(tz="Europe/Rome")
        .door("front", min_assurance="low")
        .door("back", min_assurance="low")
        .user("staff-1", tags=["staff"])
        .credential("staff-card", "staff-1", value="04000000000001")
        .rule("staff-rule", tags=["staff"], doors=["front", "back"])
    )
    for rule_id, fields in extra_rules.items():
        builder = builder.rule(rule_id, **fields)
    return builder


RigFactory = Callable[..., "asyncio.Future[Rig]"]


@pytest.fixture
async def rig_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[OfficeRnDSync, Cache, Outbox, aiohttp.ClientSession, FakeOfficeRnD]] = []

    async def make(
        *,
        rules: dict[str, RuleSpec] | None = None,
        snapshot: Any = None,
        mapping: MappingSettings | None = None,
        poll_interval_s: float = 0,
        fake: FakeOfficeRnD | None = None,
    ) -> Rig:
        now = [datetime(2026, 11, 30, 10, 0, tzinfo=UTC)]
        if fake is None:
            fake = FakeOfficeRnD(clock=lambda: now[0])
            await fake.__aenter__()
        cache = Cache(tmp_path / "cache.db")
        await cache.start()
        await cache.apply_snapshot((snapshot or cloud_site()).snapshot())
        outbox = Outbox(tmp_path / "outbox.db", max_rows=10_000)
        await outbox.start()
        session = aiohttp.ClientSession()
        settings = OfficeRnDSettings(
            org=fake.org,
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            api_base=fake.api_base,
            identity_url=fake.identity_url,
            scopes=ALL_SCOPES,
        )

        async def no_wait(_: float) -> None:
            await asyncio.sleep(0)

        client = OfficeRnDClient(settings, session, sleep=no_wait, max_retries=2)
        options = SyncOptions(
            mapping=mapping or MappingSettings(),
            rules=rules if rules is not None else {"members": RuleSpec(("Hot desk",), ("front",))},
            poll_interval_s=poll_interval_s,
            date_check_s=0.05,
        )
        sync = OfficeRnDSync(
            client, cache, EventLog(outbox), options, state_dir=tmp_path, clock=lambda: now[0]
        )
        made.append((sync, cache, outbox, session, fake))
        return Rig(fake, cache, sync, client, tmp_path, now)

    yield make
    for sync, cache, outbox, session, fake in made:
        await sync.stop()
        await session.close()
        await outbox.stop()
        await cache.stop()
        await fake.__aexit__(None, None, None)


Make = Callable[..., Any]


def member_with_plan(fake: FakeOfficeRnD) -> tuple[str, str]:
    """A "Hot desk" plan and Ada, holding it since January with her card: their ids."""
    hot: str = fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(fake, "Ada")
    fake.add_membership(hot, member=ada, start="2026-01-01")
    return hot, ada


def add_member_with_card(fake: FakeOfficeRnD, name: str, *, card: str = CARD, **fields: Any) -> str:
    properties = {"luckey_cards": f"nfc_uid:{card}", **fields.pop("properties", {})}
    member: str = fake.add_member(name, properties=properties, **fields)["_id"]
    return member


async def test_a_full_sync_brings_members_plan_tags_cards_and_the_configured_rule(
    rig_factory: Make,
) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    rig.fake.add_plan("Meeting room")
    ada = add_member_with_card(rig.fake, "Ada Lovelace")
    bob = add_member_with_card(rig.fake, "Bob", card="04B0B0B0B0B0B0")
    rig.fake.add_membership(hot, member=ada, start="2026-01-01")

    summary = await rig.sync.full_sync()

    assert (summary.members, summary.plans, summary.users, summary.tags, summary.cards) == (
        2,
        2,
        2,
        2,
        2,
    )
    assert summary.rules == 1
    # One page per listing and one token: nothing more than paging needs.
    assert summary.requests == 5
    view = rig.cache.view
    assert rig.user(ada).tags == ("ornd-plan-" + hot,)
    assert rig.user(bob).tags == ()
    assert view.tags["ornd-plan-" + hot].name == "Hot desk"
    assert view.tags["ornd-plan-" + hot].special
    rule = view.rules["ornd-rule-members"]
    assert rule.tags == frozenset({"ornd-plan-" + hot})
    assert rule.doors == frozenset({"front"})
    assert rig.decide(ada) is Reason.GRANTED
    assert rig.decide(ada, door="back") is Reason.NO_RULE_FOR_DOOR
    assert rig.decide(bob, "04B0B0B0B0B0B0") is Reason.NO_RULE_FOR_DOOR
    # The cloud's own data is untouched.
    assert "staff-1" in view.users
    assert "staff-rule" in view.rules
    # A second sync with nothing changed changes nothing.
    again = await rig.sync.full_sync()
    assert again.changed == 0
    events = [data for _, kind, data in read_outbox(rig.state_dir) if kind == "cache.updated"]
    assert [e["source"] for e in events] == ["officernd"]


async def test_membership_webhooks_open_and_close_the_door(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    await rig.sync.full_sync()
    assert rig.decide(ada) is Reason.NO_RULE_FOR_DOOR
    await rig.start()

    membership = rig.fake.add_membership(hot, member=ada, start="2026-11-01")
    await rig.deliver(rig.event("membership.created", membership["_id"]))
    assert rig.decide(ada) is Reason.GRANTED

    rig.fake.remove("memberships", membership["_id"])
    await rig.deliver(rig.event("membership.removed", membership["_id"]))
    assert rig.decide(ada) is Reason.NO_RULE_FOR_DOOR
    assert rig.sync.webhooks_processed == 2


async def test_a_removed_or_former_member_loses_access_at_once(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    bob = add_member_with_card(rig.fake, "Bob", card="04B0B0B0B0B0B0")
    for member in (ada, bob):
        rig.fake.add_membership(hot, member=member, start="2026-01-01")
    await rig.sync.full_sync()
    await rig.start()

    rig.fake.update("members", ada, status="former")
    rig.fake.remove("members", bob)
    await rig.deliver(rig.event("member.updated", ada), rig.event("member.removed", bob))

    assert rig.user(ada).status is UserStatus.FORMER
    # A former member's cards are not mapped: the card is gone, nothing opens.
    assert rig.decide(ada) is Reason.UNKNOWN_CREDENTIAL
    assert rig.user(bob) is None
    assert rig.cache.view.credential(CredentialKind.NFC_UID, "04B0B0B0B0B0B0") is None


async def test_a_company_membership_covers_every_member_of_the_company(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    acme = rig.fake.add_company("Acme")["_id"]
    ada = add_member_with_card(rig.fake, "Ada", company=acme)
    bob = add_member_with_card(rig.fake, "Bob", card="04B0B0B0B0B0B0", company=acme)
    await rig.sync.full_sync()
    await rig.start()

    membership = rig.fake.add_membership(hot, company=acme, start="2026-01-01")
    await rig.deliver(rig.event("membership.created", membership["_id"]))
    assert rig.decide(ada) is Reason.GRANTED
    assert rig.decide(bob, "04B0B0B0B0B0B0") is Reason.GRANTED

    # Bob leaves the company: the company's plan no longer covers him.
    rig.fake.update("members", bob, company=None)
    await rig.deliver(rig.event("member.updated", bob))
    assert rig.decide(bob, "04B0B0B0B0B0B0") is Reason.NO_RULE_FOR_DOOR
    assert rig.decide(ada) is Reason.GRANTED


async def test_polling_finds_changes_and_falls_back_to_listing_memberships(
    rig_factory: Make,
) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    await rig.sync.full_sync()
    rig.now[0] += timedelta(minutes=5)

    membership = rig.fake.add_membership(hot, member=ada, start="2026-11-01")
    read = await rig.sync.poll_once()
    assert read >= 1
    assert rig.decide(ada) is Reason.GRANTED
    # The fake, like OfficeRnD at times, refuses modifiedAt on memberships: a full listing.
    assert rig.sync.status()["memberships_polled_by"] == "full listing"

    # A membership deleted in OfficeRnD is seen by the next poll (the full listing shows it).
    rig.now[0] += timedelta(minutes=5)
    rig.fake.remove("memberships", membership["_id"])
    await rig.sync.poll_once()
    assert rig.decide(ada) is Reason.NO_RULE_FOR_DOOR


async def test_polling_uses_modified_at_where_it_is_accepted(rig_factory: Make) -> None:
    fake = FakeOfficeRnD(modified_filter_on_memberships=True)
    await fake.__aenter__()
    rig: Rig = await rig_factory(fake=fake)
    hot = fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(fake, "Ada")
    await rig.sync.full_sync()
    fake.add_membership(hot, member=ada, start="2026-11-01")
    before = len(fake.requests)
    await rig.sync.poll_once()
    assert rig.decide(ada) is Reason.GRANTED
    assert rig.sync.status()["memberships_polled_by"] == "modifiedAt"
    paths = [r for r in fake.requests[before:] if "memberships" in r.path]
    assert paths
    assert all("modifiedAt[$gte]" in r.query for r in paths)


async def test_the_reconciliation_catches_a_member_deleted_without_a_webhook(
    rig_factory: Make,
) -> None:
    rig: Rig = await rig_factory()
    _hot, ada = member_with_plan(rig.fake)
    await rig.sync.full_sync()
    assert rig.decide(ada) is Reason.GRANTED
    rig.fake.remove("members", ada)
    await rig.sync.poll_once()  # a poll cannot see a deletion
    assert rig.user(ada) is not None
    await rig.sync.full_sync()
    assert rig.user(ada) is None
    assert rig.cache.view.credential(CredentialKind.NFC_UID, CARD) is None


async def test_an_outage_or_revoked_credentials_never_wipe_the_cache(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    _hot, ada = member_with_plan(rig.fake)
    await rig.sync.full_sync()

    rig.fake.fail_next("/members", 503, times=10)
    with pytest.raises(Unreachable) as failure:
        await rig.sync.full_sync()
    assert failure.value.status == 503
    assert rig.decide(ada) is Reason.GRANTED

    rig.fake.revoke_client()
    rig.fake.expire_tokens()
    rig.sync.start()
    rig.sync.submit(rig.event("member.updated", ada))
    for _ in range(200):
        if rig.sync.status()["state"] == "error":
            break
        await asyncio.sleep(0.02)
    status = rig.sync.status()
    assert status["state"] == "error"
    assert "did not accept the Client ID" in status["last_error"]
    assert rig.decide(ada) is Reason.GRANTED  # an OfficeRnD problem never locks members out


async def test_what_an_upstream_snapshot_replaced_is_put_back(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    _hot, ada = member_with_plan(rig.fake)
    await rig.start()
    requests = len(rig.fake.requests)

    await rig.cloud_snapshot()  # the cloud's data only

    assert rig.cache.version == 2
    assert rig.decide(ada) is Reason.GRANTED
    assert len(rig.fake.requests) == requests  # put back from what it knew: no requests


async def test_a_membership_that_ends_stops_opening_the_next_day(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    rig.fake.add_membership(hot, member=ada, start="2026-01-01", end="2026-11-30")
    await rig.start()
    assert rig.decide(ada) is Reason.GRANTED  # the last day counts
    requests = len(rig.fake.requests)

    rig.now[0] = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)  # 00:30 on 1 December in Rome
    for _ in range(200):
        if rig.user(ada).tags == ():
            break
        await asyncio.sleep(0.02)
    assert rig.decide(ada) is Reason.NO_RULE_FOR_DOOR
    assert len(rig.fake.requests) == requests  # mapped again from what it knew


async def test_phone_keys_follow_member_app_access(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada", properties={"member_app": True})
    rig.fake.add_membership(hot, member=ada, start="2026-01-01")
    await rig.sync.full_sync()
    assert rig.sync.phone_allowed("ornd-" + ada) is True
    assert rig.sync.phone_allowed("staff-1") is None
    phone = _phone_credential("ornd-" + ada)
    await rig.cache.apply_local(upserts={"credentials": (phone,)})

    rig.fake.update(
        "members", ada, properties={"member_app": False, "luckey_cards": f"nfc_uid:{CARD}"}
    )
    await rig.start()
    await rig.deliver(rig.event("member.updated", ada))
    held = rig.cache.view.credential(CredentialKind.BLE_PHONE_KEY, phone.value)
    assert held is not None
    assert held.revoked
    assert rig.sync.phone_allowed("ornd-" + ada) is False
    assert rig.decide(ada) is Reason.GRANTED  # cards and fobs keep working

    rig.fake.update(
        "members", ada, properties={"member_app": True, "luckey_cards": f"nfc_uid:{CARD}"}
    )
    await rig.deliver(rig.event("member.updated", ada))
    held = rig.cache.view.credential(CredentialKind.BLE_PHONE_KEY, phone.value)
    assert held is not None
    assert not held.revoked
    assert not (rig.state_dir / "phone_policy.json").read_text().count(phone.id)


def _phone_credential(user_id: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.ble_protocol import key_id_for
    from gateway.model import AssuranceLevel, Credential

    key = bytes.fromhex(PHONE_KEY)
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    return Credential(
        id="phone-1",
        user_id=user_id,
        kind=CredentialKind.BLE_PHONE_KEY,
        value=key_id_for(point).hex().upper(),
        assurance=AssuranceLevel.HIGH,
        public_key=key,
    )


async def test_a_deleted_plan_still_named_by_a_cloud_rule_keeps_its_tag(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    hot, ada = member_with_plan(rig.fake)
    await rig.sync.full_sync()
    tag = "ornd-plan-" + hot
    newer = cloud_site(**{"cloud-hot": {"tags": [tag], "doors": ["back"]}})
    newer.version = 2
    newer.tag(tag, special=True, owner="officernd", name="Hot desk")
    await rig.cache.apply_snapshot(newer.snapshot())

    rig.fake.remove("plans", hot)
    summary = await rig.sync.full_sync()
    assert tag in rig.cache.view.tags  # kept, or the cloud's rule would dangle
    assert any("cloud-hot" in p for p in summary.problems)
    # Memberships of an unknown plan give nothing: Ada no longer carries the tag.
    assert rig.user(ada).tags == ()
    assert rig.decide(ada, door="back") is Reason.NO_RULE_FOR_DOOR


async def test_a_card_already_held_outside_officernd_is_left_out(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    ada = add_member_with_card(rig.fake, "Ada", card="04000000000001")  # staff-1's card
    summary = await rig.sync.full_sync()
    held = rig.cache.view.credential(CredentialKind.NFC_UID, "04000000000001")
    assert held is not None
    assert held.id == "staff-card"
    assert rig.user(ada) is not None
    assert any("staff-card" in p for p in summary.problems)
    assert rig.sync.status()["problem_count"] >= 1


async def test_config_rules_name_plans_and_doors_that_must_exist(rig_factory: Make) -> None:
    rules = {
        "ok": RuleSpec(("hot desk",), ("front", "nowhere")),
        "no-plan": RuleSpec(("Moon base",), ("front",)),
        "no-schedule": RuleSpec(("Hot desk",), ("front",), schedule="weekends"),
    }
    rig: Rig = await rig_factory(rules=rules)
    hot = rig.fake.add_plan("Hot desk")["_id"]
    summary = await rig.sync.full_sync()
    assert set(rig.cache.view.rules) >= {"ornd-rule-ok"}
    assert "ornd-rule-no-plan" not in rig.cache.view.rules
    assert "ornd-rule-no-schedule" not in rig.cache.view.rules
    assert rig.cache.view.rules["ornd-rule-ok"].doors == frozenset({"front"})
    assert rig.cache.view.rules["ornd-rule-ok"].tags == frozenset({"ornd-plan-" + hot})
    text = " ".join(summary.problems)
    assert "'nowhere'" in text
    assert "'Moon base'" in text
    assert "'weekends'" in text


async def test_a_plan_rule_for_smartphones_does_not_open_for_a_card(rig_factory: Make) -> None:
    rules = {"phones": RuleSpec(("Hot desk",), ("front",), type=RuleType.SMARTPHONE)}
    rig: Rig = await rig_factory(rules=rules)
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    rig.fake.add_membership(hot, member=ada, start="2026-01-01")
    await rig.sync.full_sync()
    assert rig.cache.view.rules["ornd-rule-phones"].type is RuleType.SMARTPHONE
    assert rig.decide(ada) is Reason.CREDENTIAL_TYPE_NOT_ALLOWED


async def test_deactivation_removes_everything_officernd_made(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    member_with_plan(rig.fake)
    await rig.sync.full_sync()
    removed = await remove_officernd_entities(rig.cache, SyncOptions())
    assert removed == 4  # user, plan tag, card, rule
    view = rig.cache.view
    assert not [u for u in view.users if u.startswith("ornd-")]
    assert not [t for t in view.tags.values() if t.owner == "officernd"]
    assert "staff-1" in view.users
    assert "staff-rule" in view.rules


async def test_the_running_sync_polls_on_its_own(rig_factory: Make) -> None:
    rig: Rig = await rig_factory(poll_interval_s=0.05)
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    await rig.start()
    for _ in range(200):
        if rig.user(ada) is not None:
            break
        await asyncio.sleep(0.02)
    rig.fake.add_membership(hot, member=ada, start="2026-01-01")
    for _ in range(300):
        if rig.decide(ada) is Reason.GRANTED:
            break
        await asyncio.sleep(0.02)
    assert rig.decide(ada) is Reason.GRANTED
    assert rig.sync.status()["last_poll_at"] is not None


async def test_a_renamed_plan_renames_its_tag_and_the_rule_follows_the_new_name(
    rig_factory: Make,
) -> None:
    rig: Rig = await rig_factory(rules={"members": RuleSpec(("Flex desk",), ("front",))})
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada", email=None)  # no email: mapped all the same
    rig.fake.add_membership(hot, member=ada, start="2026-01-01")
    await rig.sync.full_sync()
    assert "ornd-rule-members" not in rig.cache.view.rules  # no plan of that name yet
    assert rig.decide(ada) is Reason.NO_RULE_FOR_DOOR
    rig.now[0] += timedelta(minutes=5)
    rig.fake.update("plans", hot, name="Flex desk")
    await rig.sync.poll_once()
    assert rig.cache.view.tags["ornd-plan-" + hot].name == "Flex desk"
    assert rig.decide(ada) is Reason.GRANTED


async def test_a_webhook_whose_re_fetch_fails_is_kept_and_processed_later(
    rig_factory: Make,
) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    await rig.start()

    membership = rig.fake.add_membership(hot, member=ada, start="2026-01-01")
    rig.fake.fail_next("/memberships/", 500, times=3)  # more than the client's own retries
    await rig.deliver(rig.event("membership.created", membership["_id"]))
    assert rig.decide(ada) is Reason.GRANTED
    assert rig.sync.status()["state"] == "ok"
    assert rig.sync.webhooks_processed == 1


async def test_a_card_added_to_a_second_member_is_nobodys_and_snapshots_still_reapply(
    rig_factory: Make,
) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    bob = rig.fake.add_member("Bob")["_id"]
    for member in (ada, bob):
        rig.fake.add_membership(hot, member=member, start="2026-01-01")
    await rig.start()
    assert rig.decide(ada) is Reason.GRANTED

    rig.fake.update("members", bob, properties={"luckey_cards": f"nfc_uid:{CARD}"})
    await rig.deliver(rig.event("member.updated", bob))
    # Whose card is it? Nobody's, as a whole mapping decides, and the status says why.
    assert rig.cache.view.credential(CredentialKind.NFC_UID, CARD) is None
    assert any("listed on several members" in p for p in rig.sync.status()["problems"])

    await rig.cloud_snapshot()
    assert rig.user(ada) is not None
    assert rig.user(bob) is not None
    assert rig.sync.status()["state"] == "ok"


async def test_the_lockdown_override_plan_tag_is_kept_when_its_plan_goes(
    rig_factory: Make,
) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    await rig.sync.full_sync()
    tag = "ornd-plan-" + hot
    newer = cloud_site().lockdown_override(tag)
    newer.version = 2
    newer.tag(tag, special=True, owner="officernd", name="Hot desk")
    await rig.cache.apply_snapshot(newer.snapshot())

    rig.fake.remove("plans", hot)
    rig.fake.update("members", ada, status="former")
    summary = await rig.sync.full_sync()
    assert tag in rig.cache.view.tags
    assert any("lockdown override" in p for p in summary.problems)
    assert rig.user(ada).status is UserStatus.FORMER  # everything else went through


async def test_an_outage_with_webhooks_queued_still_puts_members_back_after_a_snapshot(
    rig_factory: Make,
) -> None:
    rig: Rig = await rig_factory()
    _hot, ada = member_with_plan(rig.fake)
    await rig.start()

    rig.fake.revoke_client()
    rig.fake.expire_tokens()
    rig.sync.submit(rig.event("member.updated", ada))  # cannot be re-fetched: stays queued
    for _ in range(200):
        if rig.sync.status()["state"] == "error":
            break
        await asyncio.sleep(0.02)
    assert rig.sync.status()["webhook_events_queued"] == 1

    await rig.cloud_snapshot()
    assert rig.decide(ada) is Reason.GRANTED


async def test_a_full_sync_asked_for_runs_in_the_sync_task(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    add_member_with_card(rig.fake, "Ada")
    await rig.start()
    rig.fake.add_member("Bob")
    summaries = await asyncio.gather(rig.sync.request_full_sync(), rig.sync.request_full_sync())
    assert [s.members for s in summaries] == [2, 2]


async def test_special_tags_the_cloud_sends_for_officernd_are_not_this_gateways_to_remove(
    rig_factory: Make,
) -> None:
    builder = cloud_site().tag("plan-from-cloud", special=True, owner="officernd", name="Cloud")
    rig: Rig = await rig_factory(snapshot=builder)
    rig.fake.add_plan("Hot desk")
    summary = await rig.sync.full_sync()
    assert "plan-from-cloud" in rig.cache.view.tags
    assert not any("plan-from-cloud" in p for p in summary.problems)


async def test_webhooks_for_unknown_entities_or_types_change_nothing(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    _hot, ada = member_with_plan(rig.fake)
    await rig.start()
    changes = rig.sync.changes_applied
    await rig.deliver(
        rig.event("member.updated", "64f0c0ffee00000000000099"),  # OfficeRnD answers 404
        rig.event("membership.removed", "64f0c0ffee00000000000098"),
        rig.event("booking.created", "64f0c0ffee00000000000097"),  # not a kind it maps
    )
    assert rig.sync.changes_applied == changes
    assert rig.sync.status()["state"] == "ok"
    assert rig.decide(ada) is Reason.GRANTED


async def test_a_poll_that_fails_half_way_keeps_what_it_already_saw(rig_factory: Make) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    membership = rig.fake.add_membership(hot, member=ada, start="2026-01-01")
    await rig.sync.full_sync()
    await rig.sync.poll_once()  # learns that memberships must be listed whole
    rig.now[0] += timedelta(minutes=5)

    rig.fake.remove("memberships", membership["_id"])
    rig.fake.fail_next("/plans", 503, times=3)  # listed after memberships; 3 attempts
    with pytest.raises(Unreachable):
        await rig.sync.poll_once()
    assert rig.decide(ada) is Reason.GRANTED  # not applied yet...
    await rig.sync.poll_once()
    assert rig.decide(ada) is Reason.NO_RULE_FOR_DOOR  # ...but not forgotten


async def test_a_card_two_members_list_goes_to_the_other_once_one_drops_it(
    rig_factory: Make,
) -> None:
    rig: Rig = await rig_factory()
    hot = rig.fake.add_plan("Hot desk")["_id"]
    ada = add_member_with_card(rig.fake, "Ada")
    bob = add_member_with_card(rig.fake, "Bob")  # the same card
    for member in (ada, bob):
        rig.fake.add_membership(hot, member=member, start="2026-01-01")
    await rig.start()
    assert rig.cache.view.credential(CredentialKind.NFC_UID, CARD) is None

    rig.fake.update("members", ada, properties={})
    await rig.deliver(rig.event("member.updated", ada))
    assert rig.decide(bob) is Reason.GRANTED


async def test_when_the_cache_refuses_what_takes_access_away_still_goes_through(
    rig_factory: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig: Rig = await rig_factory()
    hot, ada = member_with_plan(rig.fake)
    await rig.start()

    # The cache refuses the next whole change once (it never should: plan_changes leaves out
    # what it would refuse; this stands for a case nobody foresaw).
    original = rig.cache.apply_local
    refusals = [FormatError("upsert.tags", "refused for the test")]

    async def refusing(**changes: Any) -> None:
        if refusals and "tags" in changes.get("upserts", {}):
            raise refusals.pop()
        await original(**changes)

    monkeypatch.setattr(rig.cache, "apply_local", refusing)
    rig.fake.update("plans", hot, name="Renamed")  # a tag change rides with the status change
    rig.fake.update("members", ada, status="former")
    await rig.deliver(rig.event("member.updated", ada), rig.event("plan.updated", None))
    assert rig.user(ada).status is UserStatus.FORMER  # applied alone, at once
    assert rig.decide(ada) is Reason.UNKNOWN_CREDENTIAL  # former: the card went with it
    # The retry applies the rest, then records its success: wait for both (they are two steps).
    for _ in range(400):
        renamed = rig.cache.view.tags["ornd-plan-" + hot].name == "Renamed"
        if renamed and rig.sync.status()["state"] == "ok":
            break
        await asyncio.sleep(0.02)
    assert rig.cache.view.tags["ornd-plan-" + hot].name == "Renamed"  # the rest, on retry
    assert rig.sync.status()["state"] == "ok"
