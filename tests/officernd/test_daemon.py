"""The whole gateway with OfficeRnD: activate on the web app, members arrive, a signed webhook
opens and closes a door, members log in with their OfficeRnD account, deactivate.

Everything over real HTTP on loopback: the fake OfficeRnD, the gateway's web server, and the
fake's webhook deliveries to the gateway's receiver.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from drivers.base import CredentialRead
from gateway.app import Gateway
from gateway.config import Config
from gateway.officernd.activation import activate, remove_activation
from tests.conftest import ConfigFactory, GatewayFactory, pick_free_port, sim_readers
from tests.officernd.fake import FakeOfficeRnD

CARD = "04D0D0D0D0D0D1"
PASSWORD = "correct horse battery staple"
PHONE_KEY = (
    "04"
    "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOfficeRnD]:
    async with FakeOfficeRnD() as server:
        yield server


def officernd_config(
    gateway_config: ConfigFactory, web: dict[str, Any] | None = None, **officernd: Any
) -> Config:
    probe = gateway_config()
    url = f"http://127.0.0.1:{probe.web.port}/hooks/officernd"
    values = {
        "webhook_url": url,
        "poll_interval_s": 0,
        "rules": {"members": {"plans": ["Hot desk"], "doors": ["front"]}},
    } | officernd
    config = gateway_config(officernd=values, web={"port": probe.web.port} | (web or {}))
    return config


async def activate_for(fake: FakeOfficeRnD, config: Config) -> None:
    """Activate the gateway of ``config`` against ``fake``, as the CLI does."""
    await activate(
        config.gateway.state_dir,
        fake.org,
        fake.client_id,
        fake.client_secret,
        api_base=fake.api_base,
        identity_url=fake.identity_url,
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Web:
    def __init__(self, gw: Gateway, session: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{gw.config.web.port}"
        self.session = session

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body, **kw) as reply:
            data = await reply.json() if reply.content_type == "application/json" else None
            return reply.status, data

    async def decision(self, card: str = CARD) -> str:
        status, body = await self.call(
            "POST", "/api/simulator/doors/front/present", {"credential": f"nfc_uid:{card}"}
        )
        assert status == 200
        reason: str = body["decision"]["reason"]
        return reason


async def test_activate_sync_webhooks_login_and_deactivate(
    fake: FakeOfficeRnD, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    hot = fake.add_plan("Hot desk")["_id"]
    ada = fake.add_member("Ada Lovelace", properties={"luckey_cards": f"nfc_uid:{CARD}"})["_id"]
    membership = fake.add_membership(hot, member=ada, start="2026-01-01")
    fake.add_login("ada.lovelace@example.com", PASSWORD, ada)
    gw = await start_gateway(officernd_config(gateway_config))
    async with aiohttp.ClientSession() as session:
        web = Web(gw, session)
        assert (await web.call("GET", "/api/officernd/status"))[1]["activated"] is False

        # A wrong secret is refused with the reason, and nothing is stored.
        status, body = await web.call(
            "POST",
            "/api/officernd/activation",
            {
                "org": fake.org,
                "client_id": fake.client_id,
                "client_secret": "wrong",
                "api_base": fake.api_base,
                "identity_url": fake.identity_url,
            },
        )
        assert status == 400
        assert body["kind"] == "BadCredentials"
        assert "client id and secret" in body["error"]
        assert not (gw.config.gateway.state_dir / "officernd" / "client_secret").exists()

        status, body = await web.call(
            "POST",
            "/api/officernd/activation",
            {
                "org": fake.org,
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "api_base": fake.api_base,
                "identity_url": fake.identity_url,
            },
        )
        assert status == 200, body
        assert body["members_visible"] is True
        secret_file = gw.config.gateway.state_dir / "officernd" / "client_secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600

        async def granted() -> bool:
            return await web.decision() == "granted"

        await eventually(granted, "the member's card to open the front door")
        [hook] = fake.webhooks
        assert hook["url"].endswith("/hooks/officernd")

        # The membership ends in OfficeRnD: the webhook closes the door.
        fake.remove("memberships", membership["_id"])
        assert await fake.emit("membership.removed", membership) == [200]

        async def denied() -> bool:
            return await web.decision() == "no_rule_for_door"

        await eventually(denied, "the door to close for the member")

        # A delivery with a wrong signature is refused and counted; a repeat is dropped.
        assert await fake.emit("member.updated", {"_id": ada}, sign_with="not-the-secret") == [401]
        status, body = await web.call("GET", "/api/officernd/status")
        assert body["webhook"]["rejected"] == {"bad signature": 1}
        assert body["sync"]["state"] == "ok"
        assert body["sync"]["users"] == 1

        # Login with the OfficeRnD account; the member sees no door now, and may not add a
        # phone key without Member App access.
        status, body = await web.call(
            "POST", "/api/member/login", {"email": "ada.lovelace@example.com", "password": PASSWORD}
        )
        assert status == 200, body
        bearer = {"Authorization": f"Bearer {body['token']}"}
        status, me = await web.call("GET", "/api/member/me", headers=bearer)
        assert status == 200
        assert me["user"]["id"] == "ornd-" + ada
        assert me["doors"] == []
        status, body = await web.call(
            "POST", "/api/member/phones", {"public_key": PHONE_KEY}, headers=bearer
        )
        assert status == 403
        assert "Member App" in body["error"]
        status, body = await web.call(
            "POST", "/api/member/login", {"email": "ada.lovelace@example.com", "password": "nope"}
        )
        assert status == 401

        # Member App access granted (the documented property): the phone key is accepted.
        fake.update(
            "members",
            ada,
            properties={"luckey_cards": f"nfc_uid:{CARD}", "member_app": "yes"},
        )
        assert await fake.emit("member.updated", {"_id": ada}) == [200]

        async def phone_accepted() -> bool:
            status, _ = await web.call(
                "POST", "/api/member/phones", {"public_key": PHONE_KEY}, headers=bearer
            )
            return status == 201

        await eventually(phone_accepted, "a phone key to be accepted")

        status, body = await web.call("DELETE", "/api/officernd/activation")
        assert status == 200
        assert body["deactivated"] is True
        assert body["removed"] >= 3
        assert "ornd-" + ada not in gw.cache.view.users
        assert await web.decision() == "unknown_credential"
        assert not secret_file.exists()
        status, _ = await web.call("GET", "/api/member/me", headers=bearer)
        assert status == 401


async def test_a_gateway_restarted_after_a_cli_deactivation_drops_officernd_members(
    fake: FakeOfficeRnD, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    fake.add_member("Ada", properties={"luckey_cards": f"nfc_uid:{CARD}"})
    config = officernd_config(gateway_config, webhook_url="")
    await activate_for(fake, config)
    gw = await start_gateway(config)

    async def synced() -> bool:
        return any(u.startswith("ornd-") for u in gw.cache.view.users)

    await eventually(synced, "the member to arrive")
    await gw.stop()
    remove_activation(config.gateway.state_dir)
    again = await start_gateway(config)
    assert not any(u.startswith("ornd-") for u in again.cache.view.users)
    assert "ada" in again.cache.view.users  # the demo site's own users stay


async def test_login_limits_count_the_member_address_a_local_proxy_forwards(
    fake: FakeOfficeRnD, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = officernd_config(gateway_config, {"trust_forwarded_for": True}, webhook_url="")
    await activate_for(fake, config)
    gw = await start_gateway(config)
    async with aiohttp.ClientSession() as session:
        web = Web(gw, session)

        async def attempt(n: int, address: str) -> int:
            status, _ = await web.call(
                "POST",
                "/api/member/login",
                {"email": f"guess{n}@example.com", "password": "x"},
                headers={"X-Forwarded-For": f"198.51.100.9, {address}"},
            )
            return status

        statuses = [await attempt(n, "203.0.113.7") for n in range(21)]
        assert statuses[:20] == [401] * 20
        assert statuses[20] == 429  # that address spent its 20 failures
        # Another member behind the same proxy is not locked out by it.
        assert await attempt(99, "203.0.113.8") == 401


async def test_a_card_enrolled_at_a_reader_for_a_synced_member_opens_and_stays(
    fake: FakeOfficeRnD, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    hot = fake.add_plan("Hot desk")["_id"]
    ada = fake.add_member("Ada")["_id"]  # no card in OfficeRnD
    fake.add_membership(hot, member=ada, start="2026-01-01")
    config = officernd_config(gateway_config, webhook_url="")
    await activate_for(fake, config)
    gw = await start_gateway(config)

    async def synced() -> bool:
        return "ornd-" + ada in gw.cache.view.users

    await eventually(synced, "the member to arrive")
    enrolling = asyncio.create_task(gw.enrolment.enrol_card("front", "ornd-" + ada, timeout_s=5))
    await asyncio.sleep(0)
    sim_readers(gw).present(CredentialRead("front", "nfc_uid", CARD))
    credential = await enrolling
    assert credential.user_id == "ornd-" + ada

    assert gw.officernd.sync is not None
    summary = await gw.officernd.sync.full_sync()  # OfficeRnD does not own it: it stays
    assert summary.changed == 0
    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", CARD))
    assert decision.granted
    assert decision.rule_id == "ornd-rule-members"

    async with aiohttp.ClientSession() as session:
        web = Web(gw, session)
        async with session.get(web.base + "/officernd") as reply:
            assert reply.status == 200
            assert "Settings → OfficeRnD" in await reply.text()
        status, body = await web.call("POST", "/api/officernd/sync", {})
        assert status == 200
        assert body["members"] == 1


async def test_the_public_listener_serves_webhooks_and_members_and_nothing_else(
    fake: FakeOfficeRnD, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    public = pick_free_port()
    config = officernd_config(
        gateway_config,
        {"public_port": public},
        webhook_url=f"http://127.0.0.1:{public}/hooks/officernd",
    )
    hot = fake.add_plan("Hot desk")["_id"]
    ada = fake.add_member("Ada", properties={"luckey_cards": f"nfc_uid:{CARD}"})["_id"]
    fake.add_login("ada@example.com", PASSWORD, ada)
    await activate_for(fake, config)
    gw = await start_gateway(config)
    async with aiohttp.ClientSession() as session:
        admin = Web(gw, session)

        async def synced() -> bool:
            return "ornd-" + ada in gw.cache.view.users

        await eventually(synced, "the member to arrive")
        base = f"http://127.0.0.1:{public}"
        for method, path in (
            ("GET", "/api/officernd/status"),
            ("POST", "/api/officernd/activation"),
            ("GET", "/api/users"),
            ("POST", "/api/users/ornd-x/phones"),
            ("GET", "/"),
        ):
            async with session.request(method, base + path, json={}) as reply:
                assert reply.status == 404, path
        # The webhook registered is the public one, and it works there.
        [hook] = fake.webhooks
        assert hook["url"] == f"{base}/hooks/officernd"
        membership = fake.add_membership(hot, member=ada, start="2026-01-01")
        assert await fake.emit("membership.created", membership) == [200]

        async def granted() -> bool:
            return await admin.decision() == "granted"

        await eventually(granted, "the webhook on the public port to open the door")
        async with session.post(
            base + "/api/member/login", json={"email": "ada@example.com", "password": PASSWORD}
        ) as reply:
            assert reply.status == 200

        # A request a proxy forwarded to the admin port is not a local one.
        status, body = await admin.call(
            "GET", "/api/officernd/status", headers={"X-Forwarded-For": "203.0.113.7"}
        )
        assert status == 401
        assert "log in as the admin" in body["error"]
        assert (await admin.call("GET", "/api/officernd/status"))[0] == 200


async def test_a_webhook_deleted_in_officernd_is_registered_again(
    fake: FakeOfficeRnD, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = officernd_config(gateway_config)
    await activate_for(fake, config)
    gw = await start_gateway(config)

    async def registered() -> bool:
        return len(fake.webhooks) == 1 and gw.officernd.status()["webhook"]["registered"]

    await eventually(registered, "the webhook to be registered")
    [first] = fake.webhooks
    fake.remove_webhook(first["_id"])  # deleted by someone in OfficeRnD's settings
    await gw.officernd.reload()

    async def again() -> bool:
        return len(fake.webhooks) == 1 and fake.webhooks[0]["_id"] != first["_id"]

    await eventually(again, "a new webhook")
    # It is the one the gateway now trusts: a delivery signed with its secret is taken.
    assert await fake.emit("member.updated", {"_id": "64f0c0ffee00000000000009"}) == [200]
    await gw.officernd.reload()  # still there: nothing new is registered
    await asyncio.sleep(0.1)
    assert len(fake.webhooks) == 1


async def test_the_gateway_starts_while_officernd_is_unreachable(
    fake: FakeOfficeRnD, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = officernd_config(gateway_config)
    await activate_for(fake, config)
    await fake.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    gw = await start_gateway(config)
    # Not held up by the connector's retries (a sync, the webhook's registration).
    assert loop.time() - started < 5
    status = gw.officernd.status()
    assert status["activated"] is True
    assert status["sync"]["state"] in ("starting", "syncing", "error")
    async with aiohttp.ClientSession() as session:
        assert await Web(gw, session).decision("04A1B2C3D4E5F6") == "granted"  # the demo's Ada


async def test_overlapping_reloads_leave_one_sync_and_stop_ends_it(
    fake: FakeOfficeRnD, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = officernd_config(gateway_config, webhook_url="")
    await activate_for(fake, config)
    gw = await start_gateway(config)

    def syncs() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "officernd-sync" and not t.done()]

    await asyncio.gather(*(gw.officernd.reload() for _ in range(3)))
    assert len(syncs()) == 1
    async with aiohttp.ClientSession() as session:
        # A cross-site form cannot make the gateway reload (only JSON is taken).
        url = f"http://127.0.0.1:{gw.config.web.port}/api/officernd/reload"
        async with session.post(url, data={"x": "1"}) as reply:
            assert reply.status == 400
    await gw.stop()
    assert syncs() == []
