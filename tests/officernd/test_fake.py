"""The fake OfficeRnD over real loopback HTTP: identity, lists, faults, webhooks, sign-in."""

from __future__ import annotations

import hmac
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web

from tests.officernd.fake import ALL_SCOPES, FakeOfficeRnD, populate

T0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
Json = dict[str, Any]


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds``."""
        self.now += timedelta(seconds=seconds)


@dataclass
class Receiver:
    """A loopback endpoint that collects webhook deliveries."""

    url: str
    deliveries: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def clock() -> Clock:
    """A stopped clock at ``T0``."""
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeOfficeRnD]:
    """A started fake with default settings on the test clock."""
    async with FakeOfficeRnD(clock=clock) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The test's HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver answering 200 at ``/hook``."""
    found: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        found.append((await request.read(), dict(request.headers)))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield Receiver(f"http://127.0.0.1:{port}/hook", found)
    finally:
        await runner.cleanup()


async def token_answer(
    http: aiohttp.ClientSession,
    fake: FakeOfficeRnD,
    scopes: frozenset[str] = ALL_SCOPES,
    *,
    client_secret: str = "secret-1",
) -> tuple[int, Json, dict[str, str]]:
    """POST the token form; (status, JSON body, headers)."""
    form = {
        "client_id": "client-1",
        "client_secret": client_secret,
        "grant_type": "client_credentials",
        "scope": " ".join(sorted(scopes)),
    }
    async with http.post(fake.identity_url, data=form) as response:
        return response.status, await response.json(), dict(response.headers)


async def token(
    http: aiohttp.ClientSession, fake: FakeOfficeRnD, scopes: frozenset[str] = ALL_SCOPES
) -> str:
    """A fresh access token for ``scopes``."""
    status, body, _ = await token_answer(http, fake, scopes)
    assert status == 200, body
    access: str = body["access_token"]
    return access


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    access: str | None,
    *,
    params: dict[str, str] | None = None,
    body: Json | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One API call; (status, parsed JSON or None, headers)."""
    headers = {} if access is None else {"Authorization": f"Bearer {access}"}
    async with http.request(method, url, params=params, json=body, headers=headers) as response:
        raw = await response.read()
        return response.status, json.loads(raw) if raw else None, dict(response.headers)


# -- identity ---------------------------------------------------------------------------------------


async def test_token_happy_path(fake: FakeOfficeRnD, http: aiohttp.ClientSession) -> None:
    scopes = frozenset({"flex.community.members.read", "flex.billing.plans.read"})
    status, body, _ = await token_answer(http, fake, scopes)
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3599
    assert set(body["scope"].split()) == scopes
    assert body["access_token"]
    assert fake.token_requests == 1
    assert fake.requests[-1].body is not None
    assert fake.requests[-1].body["client_secret"] == "<redacted>"


async def test_token_wrong_client(fake: FakeOfficeRnD, http: aiohttp.ClientSession) -> None:
    status, body, _ = await token_answer(http, fake, client_secret="nope")
    assert status == 401
    assert body["error"] == "invalid_client"


async def test_token_scope_not_granted_fails_whole_request(
    clock: Clock, http: aiohttp.ClientSession
) -> None:
    granted = ALL_SCOPES - {"flex.user.auth.signin"}
    async with FakeOfficeRnD(granted_scopes=granted, clock=clock) as fake:
        status, body, _ = await token_answer(http, fake)
        assert status == 400
        assert body["error"] == "invalid_scope"
        assert "flex.user.auth.signin" in body["error_description"]
        assert (await token_answer(http, fake, granted))[0] == 200


async def test_token_rate_limit_rolling_minute(
    fake: FakeOfficeRnD, http: aiohttp.ClientSession, clock: Clock
) -> None:
    for _ in range(5):
        await token(http, fake)
        clock.advance(10)
    status, body, headers = await token_answer(http, fake)
    assert status == 429
    assert headers["Retry-After"] == "10"  # the first request leaves the window at T0 + 60 s
    assert body["error"] == "rate_limited"
    clock.advance(10)
    assert (await token_answer(http, fake))[0] == 200
    assert fake.token_requests == 7


async def test_expired_token_and_revoked_client(
    fake: FakeOfficeRnD, http: aiohttp.ClientSession, clock: Clock
) -> None:
    access = await token(http, fake)
    members = f"{fake.org_url}/members"
    assert (await call(http, "GET", members, access))[0] == 200
    assert (await call(http, "GET", members, None))[0] == 401
    assert (await call(http, "GET", members, "forged"))[0] == 401
    clock.advance(3599)
    status, body, _ = await call(http, "GET", members, access)
    assert (status, body["message"]) == (401, "Token expired")
    access = await token(http, fake)
    fake.revoke_client()
    assert (await call(http, "GET", members, access))[0] == 401
    status, body, _ = await token_answer(http, fake)
    assert (status, body["error"]) == (401, "invalid_client")


@pytest.mark.parametrize("missing_status", [401, 403])
async def test_missing_scope_names_it(
    clock: Clock, http: aiohttp.ClientSession, missing_status: Literal[401, 403]
) -> None:
    async with FakeOfficeRnD(missing_scope_status=missing_status, clock=clock) as fake:
        access = await token(http, fake, frozenset({"flex.community.members.read"}))
        status, body, _ = await call(http, "GET", f"{fake.org_url}/plans", access)
        assert status == missing_status
        assert "flex.billing.plans.read" in body["message"]
        assert (await call(http, "GET", f"{fake.org_url}/members", access))[0] == 200
        # Withdrawing the permission in OfficeRnD takes effect on live tokens too.
        fake.granted_scopes = frozenset()
        assert (await call(http, "GET", f"{fake.org_url}/members", access))[0] == missing_status


async def test_unknown_organisation_is_500(
    fake: FakeOfficeRnD, http: aiohttp.ClientSession
) -> None:
    access = await token(http, fake)
    status, body, _ = await call(http, "GET", f"{fake.api_base}/organizations/nope/members", access)
    assert status == 500
    assert body == {
        "statusCode": 500,
        "message": "Organization not found",
        "error": "Internal Server Error",
    }


# -- lists ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("last_page_cursor", ["absent", "null"])
async def test_paging_returns_every_result_once(
    clock: Clock, http: aiohttp.ClientSession, last_page_cursor: Literal["absent", "null"]
) -> None:
    async with FakeOfficeRnD(last_page_cursor=last_page_cursor, clock=clock) as fake:
        expected = [fake.add_member(f"Member {i}")["_id"] for i in range(23)]
        access = await token(http, fake)
        seen: list[str] = []
        params = {"$limit": "5"}
        pages: list[Json] = []
        while True:
            status, page, _ = await call(
                http, "GET", f"{fake.org_url}/members", access, params=params
            )
            assert status == 200
            pages.append(page)
            assert page["rangeStart"] == len(seen)
            seen.extend(item["_id"] for item in page["results"])
            assert page["rangeEnd"] == len(seen)
            if page.get("cursorNext") is None:
                break
            params = {"$limit": "5", "$cursorNext": page["cursorNext"]}
        assert seen == expected  # all, once, in _id order
        assert [len(page["results"]) for page in pages] == [5, 5, 5, 5, 3]
        assert pages[0]["cursorPrev"] is None
        if last_page_cursor == "absent":
            assert "cursorNext" not in pages[-1]
        else:
            assert pages[-1]["cursorNext"] is None
        # Back one page from the last.
        status, back, _ = await call(
            http,
            "GET",
            f"{fake.org_url}/members",
            access,
            params={"$limit": "5", "$cursorPrev": pages[-1]["cursorPrev"]},
        )
        assert status == 200
        assert [item["_id"] for item in back["results"]] == expected[15:20]
        assert back["rangeStart"] == 15


async def test_default_limit_and_limit_over_max(
    fake: FakeOfficeRnD, http: aiohttp.ClientSession
) -> None:
    for i in range(51):
        fake.add_plan(f"Plan {i}")
    access = await token(http, fake)
    plans = f"{fake.org_url}/plans"
    status, page, _ = await call(http, "GET", plans, access)
    assert status == 200
    assert len(page["results"]) == 50
    assert page["cursorNext"]
    status, body, _ = await call(http, "GET", plans, access, params={"$limit": "51"})
    assert status == 400
    assert body["message"] == ["$limit must not be greater than 50"]
    assert (await call(http, "GET", plans, access, params={"$limit": "0"}))[0] == 400
    assert (await call(http, "GET", plans, access, params={"$cursorNext": "garbage"}))[0] == 400


async def test_unknown_parameter_is_nestjs_400(
    fake: FakeOfficeRnD, http: aiohttp.ClientSession
) -> None:
    access = await token(http, fake)
    status, body, _ = await call(
        http, "GET", f"{fake.org_url}/members", access, params={"sort": "name"}
    )
    assert status == 400
    assert body == {
        "statusCode": 400,
        "message": ["property sort should not exist"],
        "error": "Bad Request",
    }
    status, body, _ = await call(
        http, "GET", f"{fake.org_url}/plans", access, params={"status[$in]": "active"}
    )
    assert (status, body["message"]) == (400, ["property status should not exist"])


async def test_filters(fake: FakeOfficeRnD, http: aiohttp.ClientSession, clock: Clock) -> None:
    firm = fake.add_company("Firm")["_id"]
    ada = fake.add_member("Ada", company=firm)["_id"]
    bob = fake.add_member("Bob", status="former")["_id"]
    cyd = fake.add_member("Cyd", status="pending", company=firm)["_id"]
    plan = fake.add_plan("Hot desk")["_id"]
    personal = fake.add_membership(plan, member=ada, start="2026-01-01")
    whole_firm = fake.add_membership(plan, company=firm, start="2026-01-01")
    access = await token(http, fake)

    async def ids(resource: str, params: dict[str, str]) -> list[str]:
        status, page, _ = await call(
            http, "GET", f"{fake.org_url}/{resource}", access, params=params
        )
        assert status == 200, page
        return [item["_id"] for item in page["results"]]

    assert await ids("members", {"status[$in]": "active,pending"}) == [ada, cyd]
    assert await ids("members", {"company": firm}) == [ada, cyd]
    assert await ids("memberships", {"member": ada}) == [personal["_id"]]
    # A personal membership carries its member's company too.
    assert await ids("memberships", {"company": firm}) == [personal["_id"], whole_firm["_id"]]
    clock.advance(60)
    since = clock.now.isoformat()
    fake.update("members", bob, name="Robert")
    assert await ids("members", {"modifiedAt[$gte]": since}) == [bob]
    status, body, _ = await call(
        http,
        "GET",
        f"{fake.org_url}/memberships",
        access,
        params={"modifiedAt[$gte]": since},
    )
    assert (status, body["message"]) == (400, ["property modifiedAt should not exist"])


async def test_modified_filter_on_memberships_when_enabled(
    clock: Clock, http: aiohttp.ClientSession
) -> None:
    async with FakeOfficeRnD(modified_filter_on_memberships=True, clock=clock) as fake:
        plan = fake.add_plan("Office")["_id"]
        company = fake.add_company("Firm")["_id"]
        old = fake.add_membership(plan, company=company)["_id"]
        clock.advance(1)
        new = fake.add_membership(plan, company=company)["_id"]
        access = await token(http, fake)
        status, page, _ = await call(
            http,
            "GET",
            f"{fake.org_url}/memberships",
            access,
            params={"modifiedAt[$gte]": clock.now.isoformat()},
        )
        assert status == 200
        assert [item["_id"] for item in page["results"]] == [new]
        assert old != new


async def test_objects_by_id_and_calculated_status(
    fake: FakeOfficeRnD, http: aiohttp.ClientSession, clock: Clock
) -> None:
    ada = fake.add_member("Ada Lovelace", properties={"door": "yes"})
    assert len(ada["_id"]) == 24
    assert int(ada["_id"], 16) >= 0
    assert ada["email"] == "ada.lovelace@example.com"
    assert ada["createdAt"] == "2026-12-01T14:00:00.000Z"
    plan = fake.add_plan("Desk")["_id"]
    ends_today = fake.add_membership(plan, member=ada["_id"], start="2026-11-01", end="2026-12-01")
    future = fake.add_membership(plan, member=ada["_id"], start="2026-12-05", end=None)
    refused = fake.add_membership(
        plan, member=ada["_id"], start="2026-11-01", status="not_approved"
    )
    assert ends_today["calculatedStatus"] == "active"
    assert ends_today["endDate"] == "2026-12-01T00:00:00.000Z"
    assert future["calculatedStatus"] == "not_started"
    assert future["endDate"] is None
    assert "endDate" not in refused
    assert refused["calculatedStatus"] == "not_approved"
    url = f"{fake.org_url}/memberships/{ends_today['_id']}"
    clock.advance(24 * 3600)
    access = await token(http, fake)
    status, body, _ = await call(http, "GET", url, access)
    assert status == 200
    # The membership expired with the clock; its modifiedAt did not move.
    assert body["calculatedStatus"] == "expired"
    assert body["modifiedAt"] == ends_today["modifiedAt"]
    status, body, _ = await call(http, "GET", f"{fake.org_url}/members/{ada['_id']}", access)
    assert (status, body["properties"]) == (200, {"door": "yes"})
    fake.remove("members", ada["_id"])
    status, body, _ = await call(http, "GET", f"{fake.org_url}/members/{ada['_id']}", access)
    assert (status, body["statusCode"]) == (404, 404)


async def test_update_bumps_modified_at_on_a_stopped_clock(fake: FakeOfficeRnD) -> None:
    member = fake.add_member("Ada")
    updated = fake.update("members", member["_id"], status="former")
    assert updated["status"] == "former"
    assert updated["modifiedAt"] > member["modifiedAt"]
    assert updated["createdAt"] == member["createdAt"]


async def test_unknown_route_is_404(fake: FakeOfficeRnD, http: aiohttp.ClientSession) -> None:
    access = await token(http, fake)
    status, body, _ = await call(http, "GET", f"{fake.org_url}/locations", access)
    assert (status, body["message"]) == (404, "Cannot GET /api/v2/organizations/acme/locations")


# -- faults -----------------------------------------------------------------------------------------


async def test_fail_next_answers_first_with_retry_after(
    fake: FakeOfficeRnD, http: aiohttp.ClientSession
) -> None:
    access = await token(http, fake)
    fake.fail_next("/members", 429, retry_after=0.5, times=2)
    members = f"{fake.org_url}/members"
    for _ in range(2):
        # Answered before authentication: no token needed to see it.
        status, body, headers = await call(http, "GET", members, None)
        assert (status, body["statusCode"], headers["Retry-After"]) == (429, 429, "0.5")
    assert (await call(http, "GET", members, access))[0] == 200
    fake.fail_next("/oauth/token", 503, body={"error": "temporarily_unavailable"})
    status, body, headers = await token_answer(http, fake)
    assert (status, body) == (503, {"error": "temporarily_unavailable"})
    assert "Retry-After" not in headers
    assert fake.token_requests == 2  # the injected failure is a token request too
    assert [r.status for r in fake.requests if r.path.endswith("/members")] == [429, 429, 200]


# -- webhooks ---------------------------------------------------------------------------------------


async def test_webhooks_register_emit_and_verify(
    fake: FakeOfficeRnD, http: aiohttp.ClientSession, receiver: Receiver, clock: Clock
) -> None:
    access = await token(http, fake)
    hooks = f"{fake.org_url}/webhooks"
    request = {
        "url": receiver.url,
        "eventTypes": ["member.updated", "member.removed"],
        "description": "gateway",
    }
    status, created, _ = await call(http, "POST", hooks, access, body=request)
    assert status == 201
    assert len(created["_id"]) == 24
    secret = created["secret"]
    assert fake.webhooks[0]["secret"] == secret
    status, listed, _ = await call(http, "GET", hooks, access)
    assert status == 200
    assert [hook["url"] for hook in listed["results"]] == [receiver.url]
    assert "secret" not in listed["results"][0]

    member = fake.add_member("Ada")
    changed = fake.update("members", member["_id"], status="former")
    statuses = await fake.emit("member.updated", changed, {"status": "active"}, event_id="e" * 24)
    assert statuses == [200]
    raw, headers = receiver.deliveries[0]
    t = int(clock.now.timestamp())
    expected = FakeOfficeRnD.signature(secret, raw, t)
    assert hmac.compare_digest(headers["officernd-signature"], expected)
    body = json.loads(raw)
    assert body["event"] == "e" * 24
    assert body["eventType"] == "member.updated"
    assert body["data"] == {"object": changed, "previousAttributes": {"status": "active"}}
    assert body["createdAt"] == "2026-12-01T14:00:00.000Z"

    assert await fake.emit("company.created", {"_id": "x"}) == []
    await fake.emit("member.removed", changed, sign_with="wrong", timestamp=1)
    _, headers = receiver.deliveries[1]
    assert headers["officernd-signature"] == FakeOfficeRnD.signature(
        "wrong", receiver.deliveries[1][0], 1
    )

    status, _, _ = await call(http, "DELETE", f"{hooks}/{created['_id']}", access)
    assert status == 204
    assert fake.webhooks == []
    assert await fake.emit("member.updated", changed) == []


async def test_webhook_signature_vector() -> None:
    # HMAC-SHA256("secret", b'{"a":1}.1700000000'), computed independently.
    value = FakeOfficeRnD.signature("secret", b'{"a":1}', 1_700_000_000)
    assert value.startswith("t=1700000000,v1=")
    digest = value.split("v1=", 1)[1]
    assert len(digest) == 64
    assert digest == hmac.new(b"secret", b'{"a":1}.1700000000', "sha256").hexdigest()


async def test_webhook_create_validation_and_unreachable_delivery(
    fake: FakeOfficeRnD, http: aiohttp.ClientSession
) -> None:
    access = await token(http, fake)
    hooks = f"{fake.org_url}/webhooks"
    status, body, _ = await call(
        http, "POST", hooks, access, body={"url": "ftp://x", "eventTypes": []}
    )
    assert status == 400
    assert body["message"] == ["url must be a URL address", "eventTypes should not be empty"]
    # A site webhooks cannot reach (a port nothing listens on): delivery counts as status 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    fake.add_webhook(f"http://127.0.0.1:{closed_port}/hook", ["member.created"])
    assert await fake.emit("member.created", {"_id": "x"}) == [0]


# -- sign-in and portal access ----------------------------------------------------------------------


async def test_signin(fake: FakeOfficeRnD, http: aiohttp.ClientSession) -> None:
    ada = fake.add_member("Ada", "ada@example.com")
    fake.add_login("ada@example.com", "hunter2", ada["_id"])
    access = await token(http, fake, frozenset({"flex.user.auth.signin"}))
    signin = f"{fake.org_url}/auth/signin"
    status, body, _ = await call(
        http, "POST", signin, access, body={"email": "Ada@Example.com", "password": "hunter2"}
    )
    assert status == 200
    assert body == {"member": ada["_id"], "email": "ada@example.com", "name": "Ada"}
    for email, password in (("ada@example.com", "wrong"), ("bob@example.com", "hunter2")):
        status, body, _ = await call(
            http, "POST", signin, access, body={"email": email, "password": password}
        )
        assert (status, body["message"]) == (401, "Invalid email or password")
    assert all("hunter2" not in repr(request) for request in fake.requests)
    members_only = await token(http, fake, frozenset({"flex.community.members.read"}))
    status, _, _ = await call(
        http, "POST", signin, members_only, body={"email": "ada@example.com", "password": "x"}
    )
    assert status == 401


async def test_portal_access_put(fake: FakeOfficeRnD, http: aiohttp.ClientSession) -> None:
    ada = fake.add_member("Ada")
    access = await token(http, fake)
    url = f"{fake.org_url}/members/{ada['_id']}/portal-access"
    assert fake.portal_access(ada["_id"]) is None
    status, body, _ = await call(
        http,
        "PUT",
        url,
        access,
        body={"isPortalAccessEnabled": True, "shouldSendInvitation": False},
    )
    assert (status, body) == (204, None)
    assert fake.portal_access(ada["_id"]) == {
        "isPortalAccessEnabled": True,
        "shouldSendInvitation": False,
    }
    status, member, _ = await call(http, "GET", f"{fake.org_url}/members/{ada['_id']}", access)
    assert "portalAccess" not in member
    assert "isPortalAccessEnabled" not in member
    status, body, _ = await call(http, "PUT", url, access, body={"isPortalAccessEnabled": "yes"})
    assert (status, body["message"]) == (400, ["isPortalAccessEnabled must be a boolean value"])
    missing = f"{fake.org_url}/members/{'0' * 24}/portal-access"
    assert (await call(http, "PUT", missing, access, body={"isPortalAccessEnabled": False}))[
        0
    ] == 404
    read_only = await token(http, fake, frozenset({"flex.community.members.read"}))
    assert (await call(http, "PUT", url, read_only, body={"isPortalAccessEnabled": False}))[
        0
    ] == 401


# -- benchmark data ---------------------------------------------------------------------------------


async def test_populate_is_deterministic(clock: Clock, http: aiohttp.ClientSession) -> None:
    first, second = FakeOfficeRnD(clock=clock), FakeOfficeRnD(clock=clock)
    populate(first, members=200, memberships=300, plans=5, seed=7)
    populate(second, members=200, memberships=300, plans=5, seed=7)
    for kind in ("members", "companies", "memberships", "plans"):
        assert first.all(kind) == second.all(kind)
    assert len(first.all("members")) == 200
    assert len(first.all("companies")) == 20
    memberships = first.all("memberships")
    assert len(memberships) == 300
    assert {m["calculatedStatus"] for m in memberships} == {
        "active",
        "expired",
        "not_started",
        "not_approved",
    }
    assert any(m["member"] is None for m in memberships)
    other = FakeOfficeRnD(clock=clock)
    populate(other, members=200, memberships=300, plans=5, seed=8)
    assert other.all("memberships") != memberships
    # And it pages over HTTP like hand-made data.
    async with first:
        access = await token(http, first)
        total = 0
        params: dict[str, str] = {}
        while True:
            status, page, _ = await call(
                http, "GET", f"{first.org_url}/memberships", access, params=params
            )
            assert status == 200
            total += len(page["results"])
            if page.get("cursorNext") is None:
                break
            params = {"$cursorNext": page["cursorNext"]}
        assert total == 300
