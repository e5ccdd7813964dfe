"""Tests for gateway.officernd.client against small aiohttp handlers on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web

from gateway.officernd import client as client_module
from gateway.officernd.client import (
    ALL_SCOPES,
    DEFAULT_API_BASE,
    DEFAULT_IDENTITY_URL,
    MEMBERS_READ,
    PLANS_READ,
    PORTAL_ACCESS_UPDATE,
    READ_SCOPES,
    SIGNIN,
    ActivationReport,
    ApiError,
    BadCredentials,
    MissingScope,
    OfficeRnDClient,
    OfficeRnDError,
    OfficeRnDSettings,
    OrganizationNotFound,
    RateLimited,
    Unreachable,
    redact_email,
    scope_for,
)
from tests.conftest import pick_free_port
from tests.officernd.fake import FakeOfficeRnD, populate

ORG = "acme-cowork"
CLIENT_ID = "app-client-7d41"
CLIENT_SECRET = "s3cr3t-client-value-9f8e7d"
PASSWORD = "correct horse battery staple"
EMAIL = "ada.lovelace@example.com"
WALL = 1_796_000_000.0  # wall-clock "now" for HTTP dates

Handler = Callable[["Seen"], Awaitable[web.StreamResponse]]


# --- a scripted OfficeRnD on loopback --------------------------------------------------------------


class FakeTime:
    """A monotonic clock that only the injected sleep moves; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 10_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str  # after /api/v2/organizations/{org}/, or "token"
    org: str
    query: dict[str, str]
    authorization: str
    form: dict[str, str] = field(default_factory=dict)
    json: Any = None
    raw_path: str = ""  # as sent, percent-encoding and all

    @property
    def token(self) -> str:
        return self.authorization.removeprefix("Bearer ")


def nest(status: int, message: str | list[str], **headers: str) -> web.Response:
    """A NestJS-style error answer."""
    body = {"statusCode": status, "message": message, "error": "Error"}
    return web.json_response(body, status=status, headers=headers)


def page(results: list[dict[str, Any]], cursor: str | None, *, null: bool = True) -> web.Response:
    """A list answer; on the last page ``cursorNext`` is null or absent."""
    body: dict[str, Any] = {"rangeStart": 0, "rangeEnd": len(results), "results": results}
    if cursor is not None or null:
        body["cursorNext"] = cursor
    body["cursorPrev"] = None
    return web.json_response(body)


class Upstream:
    """Identity and Flex API on one loopback port; tests swap the handlers."""

    def __init__(self, time: FakeTime) -> None:
        self.time = time
        self.port = pick_free_port()
        self.seen: list[Seen] = []
        self.token_times: list[float] = []  # fake time of every token request
        self.issued = 0
        self.expires_in: Any = 3599
        self.token_handler: Handler = self.good_token
        self.api_handler: Handler = self.empty_page
        self.release = asyncio.Event()  # frees handlers that hang, at teardown
        self._runner: web.AppRunner | None = None

    @property
    def settings(self) -> OfficeRnDSettings:
        return OfficeRnDSettings(
            org=ORG,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            api_base=f"http://127.0.0.1:{self.port}/api/v2",
            identity_url=f"http://127.0.0.1:{self.port}/oauth/token",
        )

    @property
    def token_requests(self) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == "token"]

    @property
    def api_requests(self) -> list[Seen]:
        return [seen for seen in self.seen if seen.path != "token"]

    async def good_token(self, seen: Seen) -> web.Response:
        self.issued += 1
        answer = {
            "access_token": f"tok-{self.issued}-abcdefgh",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": seen.form.get("scope", ""),
        }
        return web.json_response(answer)

    async def empty_page(self, seen: Seen) -> web.Response:
        return page([], None)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = {key: str(value) for key, value in (await request.post()).items()}
        seen = Seen("POST", "token", "", dict(request.query), "", form=form)
        self.seen.append(seen)
        self.token_times.append(self.time.now)
        return await self.token_handler(seen)

    async def _api(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(
            request.method,
            request.match_info["tail"],
            request.match_info["org"],
            dict(request.query),
            request.headers.get("Authorization", ""),
            json=json.loads(body) if body else None,
            raw_path=request.raw_path,
        )
        self.seen.append(seen)
        return await self.api_handler(seen)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_route("*", "/api/v2/organizations/{org}/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


def scripted(*answers: Callable[[], web.StreamResponse]) -> Handler:
    """A handler giving these answers in turn, the last one from then on."""
    remaining = list(answers)

    async def handle(seen: Seen) -> web.StreamResponse:
        return (remaining.pop(0) if len(remaining) > 1 else remaining[0])()

    return handle


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def upstream(fake_time: FakeTime) -> AsyncIterator[Upstream]:
    server = Upstream(fake_time)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


MakeClient = Callable[..., OfficeRnDClient]


@pytest.fixture
def make_client(
    upstream: Upstream, session: aiohttp.ClientSession, fake_time: FakeTime
) -> MakeClient:
    def make(settings: OfficeRnDSettings | None = None, **options: Any) -> OfficeRnDClient:
        return OfficeRnDClient(
            settings or upstream.settings,
            session,
            monotonic=fake_time.monotonic,
            sleep=fake_time.sleep,
            wall_clock=lambda: WALL,
            **options,
        )

    return make


@pytest.fixture
def client(make_client: MakeClient) -> OfficeRnDClient:
    return make_client()


def member(i: int) -> dict[str, Any]:
    return {"_id": f"{i:024x}", "name": f"Member {i}", "status": "active"}


async def collect(client: OfficeRnDClient, resource: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [item async for item in client.list(resource, **kwargs)]


# --- settings and helpers -------------------------------------------------------------------------


def test_defaults_and_the_secret_out_of_repr() -> None:
    settings = OfficeRnDSettings(ORG, CLIENT_ID, CLIENT_SECRET)
    assert settings.api_base == DEFAULT_API_BASE == "https://app.officernd.com/api/v2"
    assert settings.identity_url == DEFAULT_IDENTITY_URL
    assert settings.scopes == READ_SCOPES
    assert CLIENT_SECRET not in repr(settings)
    assert set(READ_SCOPES) == {
        "flex.community.members.read",
        "flex.community.memberships.read",
        "flex.community.companies.read",
        "flex.billing.plans.read",
        "flex.settings.webhooks.read",
    }


@pytest.mark.parametrize(
    ("method", "resource", "scope"),
    [
        ("GET", "members", MEMBERS_READ),
        ("GET", "plans", PLANS_READ),
        ("POST", "webhooks", "flex.settings.webhooks.create"),
        ("PUT", "members/portal-access", PORTAL_ACCESS_UPDATE),
        ("POST", "auth/signin", SIGNIN),
        ("GET", "bookings", None),
    ],
)
def test_scope_for(method: str, resource: str, scope: str | None) -> None:
    assert scope_for(method, resource) == scope


def test_redact_email_keeps_the_domain_only() -> None:
    assert redact_email(EMAIL) == "…lace@example.com"
    assert "ada" not in redact_email(EMAIL)


# --- tokens --------------------------------------------------------------------------------------


async def test_token_request_is_form_encoded_with_the_configured_scopes(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    assert await client.token() == "tok-1-abcdefgh"
    (seen,) = upstream.token_requests
    assert seen.form == {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "client_credentials",
        "scope": " ".join(READ_SCOPES),
    }


async def test_token_is_cached_and_renewed_five_minutes_early(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    first = await client.token()
    assert await client.token() == first
    fake_time.now += 3599 - 300 - 0.5
    assert await client.token() == first
    assert len(upstream.token_requests) == 1
    fake_time.now += 0.5
    second = await client.token()
    assert second != first
    assert len(upstream.token_requests) == 2
    assert client.token_requests == 2
    assert client.requests_made == 2


async def test_a_short_lived_token_is_used_for_half_its_life(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    upstream.expires_in = 100
    first = await client.token()
    fake_time.now += 49
    assert await client.token() == first
    fake_time.now += 1
    assert await client.token() != first


@pytest.mark.parametrize("expires_in", [None, "3599", -5, True])
async def test_a_missing_or_odd_expires_in_means_the_documented_hour(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime, expires_in: Any
) -> None:
    upstream.expires_in = expires_in
    first = await client.token()
    fake_time.now += 3599 - 301
    assert await client.token() == first


async def test_concurrent_callers_share_one_token_request(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    tokens = await asyncio.gather(*(client.token() for _ in range(10)))
    assert set(tokens) == {"tok-1-abcdefgh"}
    assert len(upstream.token_requests) == 1


async def test_never_more_than_five_token_requests_a_minute(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    # Every API call is refused as if the token were revoked: each get() drops the token it
    # used and asks for another (the first one two).
    async def unauthorized(seen: Seen) -> web.Response:
        return nest(401, "Unauthorized")

    upstream.api_handler = unauthorized
    for _ in range(7):
        with pytest.raises(MissingScope):
            await client.get("members", "a" * 24)
    times = upstream.token_times
    assert len(times) == 8
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t - start < 60) <= 5
    assert 60.0 in fake_time.sleeps  # the sixth waited out the window, it did not hammer


async def test_check_does_not_wait_for_the_token_budget(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    async def unauthorized(seen: Seen) -> web.Response:
        return nest(401, "Unauthorized")

    upstream.api_handler = unauthorized
    with pytest.raises(MissingScope):
        await client.get("members", "a" * 24)  # tokens 1 and 2
    fake_time.now += 10
    for _ in range(3):
        with pytest.raises(MissingScope):
            await client.get("members", "a" * 24)  # tokens 3, 4 and 5
    with pytest.raises(RateLimited) as caught:
        await client.check()  # its 401 drops token 5; a sixth would be over the budget
    assert caught.value.retry_after_s == 50.0
    assert "try again in 50 s" in str(caught.value)
    assert fake_time.sleeps == []
    assert len(upstream.token_requests) == 5


async def test_a_401_drops_the_token_and_retries_once(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def first_token_revoked(seen: Seen) -> web.Response:
        if seen.token.startswith("tok-1-"):
            return nest(401, "Unauthorized")
        return web.json_response(member(1))

    upstream.api_handler = first_token_revoked
    assert await client.get("members", member(1)["_id"]) == member(1)
    assert [seen.token for seen in upstream.api_requests] == ["tok-1-abcdefgh", "tok-2-abcdefgh"]
    assert len(upstream.token_requests) == 2


async def test_a_second_401_is_not_retried_again(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def unauthorized(seen: Seen) -> web.Response:
        return nest(401, "Unauthorized")

    upstream.api_handler = unauthorized
    with pytest.raises(MissingScope) as caught:
        await collect(client, "members")
    assert caught.value.scope == MEMBERS_READ
    assert len(upstream.api_requests) == 2
    assert len(upstream.token_requests) == 2


async def test_a_401_naming_a_missing_scope_keeps_the_token(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def no_plans(seen: Seen) -> web.Response:
        return nest(401, f"Missing required scope: {PLANS_READ}")

    upstream.api_handler = no_plans
    with pytest.raises(MissingScope) as caught:
        await collect(client, "plans")
    assert caught.value.scope == PLANS_READ
    assert PLANS_READ in str(caught.value)
    assert len(upstream.token_requests) == 1
    assert len(upstream.api_requests) == 1


async def test_a_missing_scope_message_names_a_four_part_scope(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def no_scope(seen: Seen) -> web.Response:
        return nest(401, f"Missing required scope: {PORTAL_ACCESS_UPDATE}")

    upstream.api_handler = no_scope
    with pytest.raises(MissingScope) as caught:
        await client.set_portal_access("a" * 24, False)
    assert caught.value.scope == PORTAL_ACCESS_UPDATE
    assert len(upstream.token_requests) == 1


async def test_a_403_is_a_missing_scope(client: OfficeRnDClient, upstream: Upstream) -> None:
    async def forbidden(seen: Seen) -> web.Response:
        return nest(403, "Forbidden resource")

    upstream.api_handler = forbidden
    with pytest.raises(MissingScope) as caught:
        await client.set_portal_access("a" * 24, True)
    assert caught.value.scope == PORTAL_ACCESS_UPDATE
    assert "does not ask for it" in str(caught.value)  # READ_SCOPES lacks it
    assert len(upstream.api_requests) == 1


async def test_renewal_failing_keeps_using_a_still_valid_token(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    first = await client.token()
    fake_time.now += 3599 - 200  # past renewal, 200 s before expiry
    upstream.token_handler = scripted(lambda: nest(503, "Service Unavailable"))
    assert await client.token() == first
    fake_time.now += 180  # 19 s before expiry: no longer good enough
    with pytest.raises(Unreachable):
        await client.token()


# --- paging --------------------------------------------------------------------------------------


def paged(items: list[dict[str, Any]], *, null_at_end: bool) -> Handler:
    """A list endpoint over ``items``; cursors are offsets."""

    async def handle(seen: Seen) -> web.Response:
        limit = int(seen.query["$limit"])
        start = int(seen.query.get("$cursorNext", "0"))
        chunk = items[start : start + limit]
        more = start + limit < len(items)
        return page(chunk, str(start + limit) if more else None, null=null_at_end)

    return handle


@pytest.mark.parametrize("null_at_end", [True, False], ids=["cursor-null", "cursor-absent"])
async def test_paging_follows_cursor_next_to_the_end(
    client: OfficeRnDClient, upstream: Upstream, null_at_end: bool
) -> None:
    items = [member(i) for i in range(120)]
    upstream.api_handler = paged(items, null_at_end=null_at_end)
    assert await collect(client, "members", params={"status[$in]": "active,pending"}) == items
    queries = [seen.query for seen in upstream.api_requests]
    assert queries == [
        {"status[$in]": "active,pending", "$limit": "50"},
        {"status[$in]": "active,pending", "$limit": "50", "$cursorNext": "50"},
        {"status[$in]": "active,pending", "$limit": "50", "$cursorNext": "100"},
    ]
    assert client.requests_made == 1 + 3  # one token, one request per page, no more


async def test_one_page_is_one_request(client: OfficeRnDClient, upstream: Upstream) -> None:
    upstream.api_handler = paged([member(1)], null_at_end=False)
    assert await collect(client, "companies", page_size=10) == [member(1)]
    assert [seen.path for seen in upstream.api_requests] == ["companies"]
    assert upstream.api_requests[0].query == {"$limit": "10"}
    assert upstream.api_requests[0].org == ORG


async def test_a_repeated_cursor_fails_rather_than_loops(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def loop(seen: Seen) -> web.Response:
        return page([member(1)], "same")

    upstream.api_handler = loop
    with pytest.raises(ApiError, match="cursor"):
        await collect(client, "members")
    assert len(upstream.api_requests) == 2


@pytest.mark.parametrize(
    "body",
    [[], {"results": "x"}, {"results": [1, 2]}, {"cursorNext": None}],
)
async def test_an_answer_that_is_not_a_page_is_an_api_error(
    client: OfficeRnDClient, upstream: Upstream, body: Any
) -> None:
    async def odd(seen: Seen) -> web.Response:
        return web.json_response(body)

    upstream.api_handler = odd
    with pytest.raises(ApiError):
        await collect(client, "members")


@pytest.mark.parametrize("size", [0, 51])
async def test_page_size_is_bounded_by_the_api_maximum(client: OfficeRnDClient, size: int) -> None:
    with pytest.raises(ValueError, match="page_size"):
        await collect(client, "members", page_size=size)


async def test_paging_parameters_are_not_taken_from_callers(client: OfficeRnDClient) -> None:
    with pytest.raises(ValueError, match="paging"):
        await collect(client, "members", params={"$limit": "500"})


# --- retries -------------------------------------------------------------------------------------


async def test_retry_after_seconds_is_waited_then_the_request_succeeds(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    upstream.api_handler = scripted(
        lambda: nest(429, "Too Many Requests", **{"Retry-After": "7"}),
        lambda: page([member(1)], None),
    )
    assert await collect(client, "members") == [member(1)]
    assert fake_time.sleeps == [7.0]
    assert len(upstream.api_requests) == 2


async def test_retry_after_as_an_http_date(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    when = email.utils.formatdate(WALL + 12, usegmt=True)
    upstream.api_handler = scripted(
        lambda: nest(429, "Too Many Requests", **{"Retry-After": when}),
        lambda: page([], None),
    )
    await collect(client, "members")
    assert fake_time.sleeps == [12.0]


async def test_429_without_retry_after_backs_off_with_jitter(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    upstream.api_handler = scripted(
        lambda: nest(429, "Too Many Requests"),
        lambda: nest(429, "Too Many Requests", **{"Retry-After": "soon"}),
        lambda: page([], None),
    )
    await collect(client, "members")
    assert len(fake_time.sleeps) == 2
    assert 0 <= fake_time.sleeps[0] <= 1.0
    assert 0 <= fake_time.sleeps[1] <= 2.0


async def test_429_for_too_long_is_rate_limited(
    make_client: MakeClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    client = make_client(max_retries=2)
    upstream.api_handler = scripted(lambda: nest(429, "Slow down", **{"Retry-After": "3"}))
    with pytest.raises(RateLimited) as caught:
        await collect(client, "members")
    assert caught.value.retry_after_s == 3.0
    assert fake_time.sleeps == [3.0, 3.0]
    assert len(upstream.api_requests) == 3


async def test_a_retry_after_beyond_the_limit_is_not_waited(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    upstream.api_handler = scripted(lambda: nest(429, "Slow down", **{"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as caught:
        await collect(client, "members")
    assert caught.value.retry_after_s == 3600.0
    assert fake_time.sleeps == []


async def test_5xx_is_retried_with_backoff(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    upstream.api_handler = scripted(
        lambda: nest(502, "Bad Gateway"),
        lambda: nest(503, "Service Unavailable"),
        lambda: web.json_response(member(3)),
    )
    assert await client.get("members", member(3)["_id"]) == member(3)
    assert len(fake_time.sleeps) == 2
    assert 0 <= fake_time.sleeps[0] <= 1.0
    assert 0 <= fake_time.sleeps[1] <= 2.0


async def test_5xx_after_the_retries_is_unreachable(
    make_client: MakeClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    client = make_client(max_retries=3)
    upstream.api_handler = scripted(lambda: nest(500, "Internal server error"))
    with pytest.raises(Unreachable) as caught:
        await collect(client, "members")
    assert caught.value.status == 500
    assert "after 4 attempts" in str(caught.value)
    assert len(upstream.api_requests) == 4
    assert len(fake_time.sleeps) == 3
    assert all(0 <= delay <= 2**i for i, delay in enumerate(fake_time.sleeps))


async def test_a_post_is_not_repeated_after_a_5xx(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    # The webhook may have been created: a second POST could make a second one.
    upstream.api_handler = scripted(lambda: nest(502, "Bad Gateway"))
    with pytest.raises(Unreachable):
        await client.create_webhook("https://gw.example/hook", ["member.updated"], "gateway")
    assert len(upstream.api_requests) == 1
    assert fake_time.sleeps == []


async def test_a_timeout_is_retried_then_unreachable(
    make_client: MakeClient, upstream: Upstream
) -> None:
    client = make_client(request_timeout_s=0.2, max_retries=1)

    async def hang(seen: Seen) -> web.Response:
        await upstream.release.wait()
        return page([], None)

    upstream.api_handler = hang
    with pytest.raises(Unreachable, match="no answer"):
        await collect(client, "members")
    assert len(upstream.api_requests) == 2


async def test_an_unknown_parameter_is_an_api_error_and_not_retried(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    async def strict(seen: Seen) -> web.Response:
        return nest(400, ["property bogus should not exist", "$limit must not be greater than 50"])

    upstream.api_handler = strict
    with pytest.raises(ApiError) as caught:
        await collect(client, "memberships", params={"bogus": "1"})
    assert caught.value.status == 400
    assert caught.value.message == (
        "property bogus should not exist; $limit must not be greater than 50"
    )
    assert "property bogus should not exist" in str(caught.value)
    assert len(upstream.api_requests) == 1
    assert fake_time.sleeps == []


async def test_a_string_message_is_kept_as_is(client: OfficeRnDClient, upstream: Upstream) -> None:
    async def rejected(seen: Seen) -> web.Response:
        return nest(422, "modifiedAt filter is not supported")

    upstream.api_handler = rejected
    with pytest.raises(ApiError) as caught:
        await collect(client, "memberships", params={"modifiedAt[$gte]": "2026-01-01"})
    assert caught.value.message == "modifiedAt filter is not supported"


# --- objects -------------------------------------------------------------------------------------


async def test_get_returns_the_object_or_none_on_404(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def one(seen: Seen) -> web.Response:
        if seen.path == "members/" + member(1)["_id"]:
            return web.json_response(member(1))
        return nest(404, "Member not found")

    upstream.api_handler = one
    assert await client.get("members", member(1)["_id"]) == member(1)
    assert await client.get("members", member(2)["_id"]) is None


async def test_ids_are_quoted_into_one_path_segment(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def not_found(seen: Seen) -> web.Response:
        return nest(404, "Not found")

    upstream.api_handler = not_found
    assert await client.get("members", "x/../../webhooks?a=1") is None
    (seen,) = upstream.api_requests
    assert seen.path == "members/x/../../webhooks?a=1"  # one segment, decoded by the server
    assert seen.raw_path == f"/api/v2/organizations/{ORG}/members/x%2F..%2F..%2Fwebhooks%3Fa=1"
    assert seen.query == {}
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError, match="id"):
            await client.get("members", bad)
    with pytest.raises(ValueError, match="resource"):
        await client.get("../admin", "1")


async def test_set_portal_access_puts_the_documented_body(
    make_client: MakeClient, upstream: Upstream
) -> None:
    client = make_client(_settings(upstream, ALL_SCOPES))

    async def accept(seen: Seen) -> web.Response:
        return web.Response(status=204)

    upstream.api_handler = accept
    await client.set_portal_access("a" * 24, True, send_invitation=True)
    await client.set_portal_access("a" * 24, False)
    first, second = upstream.api_requests
    assert (first.method, first.path) == ("PUT", f"members/{'a' * 24}/portal-access")
    assert first.json == {"isPortalAccessEnabled": True, "shouldSendInvitation": True}
    assert second.json == {"isPortalAccessEnabled": False, "shouldSendInvitation": False}


async def test_create_webhook_returns_id_and_secret_and_logs_no_secret(
    make_client: MakeClient, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(_settings(upstream, ALL_SCOPES))

    async def created(seen: Seen) -> web.Response:
        hook = {"_id": "b" * 24, **seen.json, "secret": "whsec-very-secret"}
        return web.json_response(hook, status=201)

    upstream.api_handler = created
    hook = await client.create_webhook(
        "https://gw.example/officernd", ("member.updated", "membership.removed"), "Luckey gateway"
    )
    assert hook == ("b" * 24, "whsec-very-secret")
    (seen,) = upstream.api_requests
    assert (seen.method, seen.path) == ("POST", "webhooks")
    assert seen.json == {
        "url": "https://gw.example/officernd",
        "eventTypes": ["member.updated", "membership.removed"],
        "description": "Luckey gateway",
    }
    assert "whsec-very-secret" not in caplog.text


async def test_create_webhook_without_a_secret_in_the_answer_is_an_api_error(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def created(seen: Seen) -> web.Response:
        return web.json_response({"_id": "b" * 24}, status=201)

    upstream.api_handler = created
    with pytest.raises(ApiError, match="secret"):
        await client.create_webhook("https://gw.example/h", ["member.created"], "")


# --- sign-in -------------------------------------------------------------------------------------


def _settings(upstream: Upstream, scopes: tuple[str, ...]) -> OfficeRnDSettings:
    base = upstream.settings
    return OfficeRnDSettings(
        base.org, base.client_id, base.client_secret, base.api_base, base.identity_url, scopes
    )


def signin_handler(upstream: Upstream) -> Handler:
    async def handle(seen: Seen) -> web.Response:
        assert seen.path == "auth/signin"
        body = seen.json
        if body == {"email": EMAIL, "password": PASSWORD}:
            return web.json_response({"_id": "c" * 24, "email": EMAIL, "name": "Ada"})
        return nest(401, "Invalid email or password")

    return handle


async def test_sign_in_returns_the_profile(make_client: MakeClient, upstream: Upstream) -> None:
    client = make_client(_settings(upstream, ALL_SCOPES))
    upstream.api_handler = signin_handler(upstream)
    assert await client.sign_in(EMAIL, PASSWORD) == {
        "_id": "c" * 24,
        "email": EMAIL,
        "name": "Ada",
    }
    (seen,) = upstream.api_requests
    assert seen.method == "POST"
    assert SIGNIN in upstream.token_requests[0].form["scope"].split()


async def test_a_wrong_password_is_bad_credentials_and_leaves_no_trace(
    make_client: MakeClient, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(_settings(upstream, ALL_SCOPES))
    upstream.api_handler = signin_handler(upstream)
    wrong = PASSWORD + "!"
    with pytest.raises(BadCredentials) as caught:
        await client.sign_in(EMAIL, wrong)
    text = (
        f"{caught.value} {caught.value!r} {caught.value.__cause__!r} {caught.value.__context__!r}"
    )
    for secret in (wrong, PASSWORD, EMAIL, CLIENT_SECRET, "tok-1-abcdefgh"):
        assert secret not in text
        assert secret not in caplog.text
    assert redact_email(EMAIL) in str(caught.value)
    # Not retried: one password, one attempt, one token.
    assert len(upstream.api_requests) == 1
    assert len(upstream.token_requests) == 1


async def test_a_server_message_echoing_the_password_is_scrubbed(
    make_client: MakeClient, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(_settings(upstream, ALL_SCOPES))

    async def echo(seen: Seen) -> web.Response:
        return nest(400, [f"password {seen.json['password']} is too weak"])

    upstream.api_handler = echo
    with pytest.raises(ApiError) as caught:
        await client.sign_in(EMAIL, PASSWORD)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in caught.value.message
    assert PASSWORD not in caplog.text


async def test_a_sign_in_401_about_the_token_renews_it_once(
    make_client: MakeClient, upstream: Upstream
) -> None:
    client = make_client(_settings(upstream, ALL_SCOPES))
    succeed = signin_handler(upstream)

    async def expired_first(seen: Seen) -> web.StreamResponse:
        if seen.token.startswith("tok-1-"):
            return nest(401, "Token expired")
        return await succeed(seen)

    upstream.api_handler = expired_first
    assert (await client.sign_in(EMAIL, PASSWORD))["_id"] == "c" * 24
    assert len(upstream.token_requests) == 2


async def test_sign_in_without_the_scope_sends_no_password(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    with pytest.raises(MissingScope) as caught:
        await client.sign_in(EMAIL, PASSWORD)
    assert caught.value.scope == SIGNIN
    assert upstream.seen == []


async def test_sign_in_refused_for_a_missing_scope(
    make_client: MakeClient, upstream: Upstream
) -> None:
    client = make_client(_settings(upstream, ALL_SCOPES))

    async def no_scope(seen: Seen) -> web.Response:
        return nest(401, f"Missing required scope: {SIGNIN}")

    upstream.api_handler = no_scope
    with pytest.raises(MissingScope) as caught:
        await client.sign_in(EMAIL, PASSWORD)
    assert caught.value.scope == SIGNIN


# --- activation ----------------------------------------------------------------------------------


async def test_check_reports_what_it_found(client: OfficeRnDClient, upstream: Upstream) -> None:
    async def one_member(seen: Seen) -> web.Response:
        response = page([member(1)], "next")
        response.headers["x-ratelimit-remaining-read-minute"] = "99"
        return response

    upstream.api_handler = one_member
    report = await client.check()
    assert report == ActivationReport(
        org=ORG,
        scopes=READ_SCOPES,
        members_visible=True,
        token_expires_in_s=3599.0,
        read_rate_remaining=99,
    )
    (seen,) = upstream.api_requests
    assert (seen.path, seen.query) == ("members", {"$limit": "1"})


async def test_check_with_no_members_yet(client: OfficeRnDClient) -> None:
    assert not (await client.check()).members_visible


async def test_check_wrong_credentials(
    client: OfficeRnDClient, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def refuse(seen: Seen) -> web.Response:
        body = {"error": "invalid_client", "error_description": "Client authentication failed"}
        return web.json_response(body, status=401)

    upstream.token_handler = refuse
    with pytest.raises(BadCredentials) as caught:
        await client.check()
    assert "Client ID" in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)
    assert CLIENT_SECRET not in caplog.text
    assert upstream.api_requests == []


async def test_check_names_the_scope_the_identity_host_refused(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def refuse(seen: Seen) -> web.Response:
        body = {"error": "invalid_scope", "error_description": f"Scope not granted: {PLANS_READ}"}
        return web.json_response(body, status=400)

    upstream.token_handler = refuse
    with pytest.raises(MissingScope) as caught:
        await client.check()
    assert caught.value.scope == PLANS_READ
    assert PLANS_READ in str(caught.value)
    assert "Developer Tools" in str(caught.value)
    assert len(upstream.token_requests) == 1


async def test_check_finds_an_unnamed_missing_scope_within_the_budget(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def refuse_plans(seen: Seen) -> web.Response:
        if PLANS_READ in seen.form["scope"].split():
            return web.json_response({"error": "invalid_scope"}, status=400)
        return await upstream.good_token(seen)

    upstream.token_handler = refuse_plans
    with pytest.raises(MissingScope) as caught:
        await client.check()
    assert caught.value.scope == PLANS_READ
    assert len(upstream.token_requests) <= 5


async def test_check_when_the_token_grants_less_than_asked(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def fewer(seen: Seen) -> web.Response:
        granted = " ".join(s for s in READ_SCOPES if s != MEMBERS_READ)
        body = {"access_token": "t", "token_type": "Bearer", "expires_in": 3599, "scope": granted}
        return web.json_response(body)

    upstream.token_handler = fewer
    with pytest.raises(MissingScope) as caught:
        await client.check()
    assert caught.value.scope == MEMBERS_READ


async def test_check_missing_scope_on_the_first_request(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def no_members(seen: Seen) -> web.Response:
        return nest(403, "Forbidden resource")

    upstream.api_handler = no_members
    with pytest.raises(MissingScope) as caught:
        await client.check()
    assert caught.value.scope == MEMBERS_READ
    assert "flex.community.members.read" in str(caught.value)


async def test_check_organisation_not_found(
    client: OfficeRnDClient, upstream: Upstream, fake_time: FakeTime
) -> None:
    async def no_org(seen: Seen) -> web.Response:
        return nest(500, "Organization not found")

    upstream.api_handler = no_org
    with pytest.raises(OrganizationNotFound) as caught:
        await client.check()
    assert repr(ORG) in str(caught.value)
    assert "administration portal name" in str(caught.value)
    assert len(upstream.api_requests) == 1  # permanent: not retried like a real 500
    assert fake_time.sleeps == []


async def test_check_a_wrong_api_base_is_said_so(
    client: OfficeRnDClient, upstream: Upstream
) -> None:
    async def no_route(seen: Seen) -> web.Response:
        return nest(404, f"Cannot GET /api/v2/organizations/{ORG}/members")

    upstream.api_handler = no_route
    with pytest.raises(ApiError) as caught:
        await client.check()
    assert caught.value.status == 404
    assert "API base URL" in str(caught.value)


async def test_check_rate_limited(make_client: MakeClient, upstream: Upstream) -> None:
    client = make_client(max_retries=0)
    upstream.api_handler = scripted(lambda: nest(429, "Too Many", **{"Retry-After": "20"}))
    with pytest.raises(RateLimited) as caught:
        await client.check()
    assert caught.value.retry_after_s == 20.0
    assert "try again in 20 s" in str(caught.value)


async def test_check_token_endpoint_rate_limited(
    make_client: MakeClient, upstream: Upstream
) -> None:
    client = make_client(max_retries=1)
    upstream.token_handler = scripted(
        lambda: web.json_response(
            {"error": "rate_limited"}, status=429, headers={"Retry-After": "9"}
        )
    )
    with pytest.raises(RateLimited) as caught:
        await client.check()
    assert caught.value.retry_after_s == 9.0
    assert len(upstream.token_requests) == 2


async def test_check_connection_refused_is_unreachable(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    port = pick_free_port()  # nothing listens there
    settings = OfficeRnDSettings(
        ORG,
        CLIENT_ID,
        CLIENT_SECRET,
        api_base=f"http://127.0.0.1:{port}/api/v2",
        identity_url=f"http://127.0.0.1:{port}/oauth/token",
    )
    client = make_client(settings, max_retries=2)
    with pytest.raises(Unreachable) as caught:
        await client.check()
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "after 3 attempts" in str(caught.value)
    assert len(fake_time.sleeps) == 2
    assert client.requests_made == 3


async def test_check_5xx_after_retries_is_unreachable(
    make_client: MakeClient, upstream: Upstream
) -> None:
    client = make_client(max_retries=1)
    upstream.api_handler = scripted(lambda: nest(503, "Service Unavailable"))
    with pytest.raises(Unreachable):
        await client.check()


async def test_every_error_is_an_officernd_error() -> None:
    for error in (
        BadCredentials("x"),
        MissingScope("x", "s"),
        OrganizationNotFound("x"),
        RateLimited("x", 1.0),
        Unreachable("x"),
        ApiError(400, "m", "w"),
    ):
        assert isinstance(error, OfficeRnDError)


# --- logging -------------------------------------------------------------------------------------


async def test_failures_log_transitions_not_repetitions(
    make_client: MakeClient, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=client_module.__name__)
    client = make_client(max_retries=3)
    upstream.api_handler = scripted(
        lambda: nest(503, "Service Unavailable"),
        lambda: nest(503, "Service Unavailable"),
        lambda: nest(503, "Service Unavailable"),
        lambda: page([], None),
    )
    await collect(client, "members")
    await collect(client, "members")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if "503" in r.getMessage()]
    assert [level for level, _ in levels] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    recoveries = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(recoveries) == 1
    assert recoveries[0].levelno == logging.INFO


async def test_no_secret_or_token_in_any_log_line(
    make_client: MakeClient, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(max_retries=1)
    upstream.api_handler = scripted(
        lambda: nest(401, "Unauthorized"),
        lambda: nest(503, "down"),
        lambda: page([member(1)], None),
    )
    await collect(client, "members")
    await client.check()
    assert caplog.records  # there was something to look at
    for secret in (CLIENT_SECRET, "tok-1-abcdefgh", "tok-2-abcdefgh"):
        assert secret not in caplog.text


# --- against the shared fake OfficeRnD (tests/officernd/fake.py) ----------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeOfficeRnD]:
    async with FakeOfficeRnD(org=ORG, client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as server:
        yield server


def fake_settings(fake: FakeOfficeRnD, **changes: Any) -> OfficeRnDSettings:
    values: dict[str, Any] = {
        "org": ORG,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "api_base": fake.api_base,
        "identity_url": fake.identity_url,
        "scopes": ALL_SCOPES,
    }
    return OfficeRnDSettings(**(values | changes))


async def test_fake_activation_and_its_failures(
    fake: FakeOfficeRnD, make_client: MakeClient
) -> None:
    fake.add_member("Ada Lovelace")
    report = await make_client(fake_settings(fake)).check()
    assert report.members_visible
    assert set(report.scopes) == set(ALL_SCOPES)
    with pytest.raises(OrganizationNotFound):
        await make_client(fake_settings(fake, org="acme-typo")).check()
    with pytest.raises(BadCredentials):
        await make_client(fake_settings(fake, client_secret="wrong")).check()
    fake.granted_scopes = frozenset(ALL_SCOPES) - {PLANS_READ}
    with pytest.raises(MissingScope) as caught:
        await make_client(fake_settings(fake)).check()
    assert caught.value.scope == PLANS_READ


@pytest.mark.parametrize("last_page_cursor", ["absent", "null"])
async def test_fake_listing_takes_one_request_per_page(
    make_client: MakeClient, last_page_cursor: Literal["absent", "null"]
) -> None:
    async with FakeOfficeRnD(
        org=ORG,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        last_page_cursor=last_page_cursor,
    ) as fake:
        populate(fake, members=123, memberships=0, plans=0)
        client = make_client(fake_settings(fake))
        listed = await collect(client, "members")
        assert sorted(item["_id"] for item in listed) == sorted(
            m["_id"] for m in fake.all("members")
        )
        assert len(listed) == 123
        assert client.requests_made == 1 + 3


async def test_fake_expired_token_sign_in_and_portal_access(
    fake: FakeOfficeRnD, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ada = fake.add_member("Ada Lovelace", EMAIL)
    fake.add_login(EMAIL, PASSWORD, ada["_id"])
    client = make_client(fake_settings(fake))
    assert (await client.get("members", ada["_id"]) or {})["name"] == "Ada Lovelace"
    fake.expire_tokens()  # the next call meets "Token expired" and renews once
    await client.set_portal_access(ada["_id"], True)
    assert fake.portal_access(ada["_id"]) == {
        "isPortalAccessEnabled": True,
        "shouldSendInvitation": False,
    }
    assert client.token_requests == 2
    assert (await client.sign_in(EMAIL, PASSWORD))["email"] == EMAIL
    with pytest.raises(BadCredentials):
        await client.sign_in(EMAIL, "not-the-password")
    assert await client.get("members", "f" * 24) is None
    assert PASSWORD not in caplog.text
    assert "not-the-password" not in caplog.text
    assert CLIENT_SECRET not in caplog.text
