"""The member API over real loopback HTTP: OfficeRnD sign-in (the fake), a real cache, enrolment."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.cache import Cache
from gateway.enrolment import Enrolment, EnrolmentError
from gateway.entry import EntryService
from gateway.events import EventLog
from gateway.member_api import COOKIE, EnrolPhone, add_member_routes
from gateway.model import Credential, CredentialKind, Event
from gateway.officernd.client import OfficeRnDClient
from gateway.officernd.login import (
    NOT_ACTIVATED,
    NOT_SYNCED,
    REFUSED_MESSAGE,
    UNREACHABLE,
    MemberLogin,
)
from gateway.sessions import LoginLimiter, Sessions
from gateway.web import MAX_BODY_BYTES
from tests.gateway.sitebuilder import SiteBuilder, phone_key, site, window
from tests.officernd.fake import FakeOfficeRnD
from tests.officernd.test_login import (
    EMAIL,
    OTHER_EMAIL,
    OTHER_PASSWORD,
    PASSWORD,
    Tick,
    fake_settings,
    new_fake,
    no_sleep,
    signins,
)

ZED_EMAIL = "zed.unsynced@example.com"
ZED_PASSWORD = "zed-password-77aa"
CSRF = {"X-Requested-With": "luckey"}
NOW = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


class MemoryStore:
    """Events committed in memory (the outbox's part in enrolment)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def append(self, event: Event) -> int:
        self.events.append(event)
        return len(self.events)


def the_site(ada: str, bob: str, *, version: int = 1, with_ada: bool = True) -> SiteBuilder:
    """Ada: hot desk and staff; Bob: hot desk; a local user with the vault's tag."""
    builder = (
        site(version=version)
        .door("front", name="Front door")
        .door("lab", name="Lab")
        .door("roof", name="Roof terrace")
        .door("vault", name="Vault")
        .tag("ornd-plan-desk", name="Hot desk", special=True, owner="officernd")
        .tag("staff", name="Staff")
        .tag("ops", name="Operations")
        .schedule("business", [window(WEEKDAYS, "08:00", "19:00")], name="Business hours")
        .rule(
            "r-desk",
            name="Hot desk",
            tags=["ornd-plan-desk"],
            doors=["front", "lab"],
            schedule="business",
        )
        .rule("r-staff", name="Staff any time", tags=["staff"], doors=["front", "roof"])
        .rule("r-ops", name="Ops", tags=["ops"], doors=["vault"])
        .user("ornd-" + bob, name="Bob Babbage", tags=["ornd-plan-desk"])
        .user("local-carla", name="Carla", tags=["ops"])
    )
    if with_ada:
        builder.user("ornd-" + ada, name="Ada Lovelace", tags=["ornd-plan-desk", "staff"])
    return builder


@dataclass
class Rig:
    """The member API on loopback, and everything behind it."""

    client: TestClient[web.Request, web.Application]
    fake: FakeOfficeRnD
    cache: Cache
    sessions: Sessions
    tick: Tick
    ada: str
    bob: str
    store: MemoryStore
    officernd: list[OfficeRnDClient | None]
    http: aiohttp.ClientSession
    seen: list[str] = field(default_factory=list)  # every response body, to look for secrets

    @property
    def ada_user(self) -> str:
        return "ornd-" + self.ada

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": sent}
        if data is not None:
            kwargs["data"] = data
        elif body is not None:
            kwargs["json"] = body
        async with self.client.request(method, path, **kwargs) as response:
            text = await response.text()
            self.seen.append(text)
            try:
                parsed: Any = json.loads(text)
            except json.JSONDecodeError:
                parsed = text
            return response.status, parsed, response

    async def login(self, email: str = EMAIL, password: str = PASSWORD) -> str:
        status, body, _ = await self.call(
            "POST", "/api/member/login", {"email": email, "password": password}
        )
        assert status == 200, body
        token: str = body["token"]
        return token

    def forget_cookies(self) -> None:
        self.client.session.cookie_jar.clear()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOfficeRnD]:
    async with new_fake() as server:
        yield server


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    started = Cache(tmp_path / "cache.db")
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Options:
    """What a test may change in the app it gets."""

    secure_cookies: bool = False
    enrol_phone: EnrolPhone | None = None


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(
    fake: FakeOfficeRnD, cache: Cache, http: aiohttp.ClientSession
) -> AsyncIterator[MakeRig]:
    """``await make_rig(**options)``: Ada, Bob and Zed in OfficeRnD, Ada and Bob synced."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**options: Any) -> Rig:
            chosen = Options(**options)
            ada = fake.add_member("Ada Lovelace", EMAIL)["_id"]
            bob = fake.add_member("Bob Babbage", OTHER_EMAIL)["_id"]
            zed = fake.add_member("Zed Unsynced", ZED_EMAIL)["_id"]
            for email, password, member in (
                (EMAIL, PASSWORD, ada),
                (OTHER_EMAIL, OTHER_PASSWORD, bob),
                (ZED_EMAIL, ZED_PASSWORD, zed),
            ):
                fake.add_login(email, password, member)
            await cache.apply_snapshot(the_site(ada, bob).snapshot())

            store = MemoryStore()
            # A phone enrols with its public key alone: the entry service (card enrol mode)
            # is never reached.
            enrolment = Enrolment(cache, cast(EntryService, None), EventLog(store), lambda: NOW)
            tick = Tick()
            sessions = Sessions(clock=tick, wall_clock=lambda: NOW)
            officernd: list[OfficeRnDClient | None] = [officernd_client(fake, http)]
            login = MemberLogin(
                lambda: officernd[0],
                sessions,
                LoginLimiter(clock=tick),
                user_exists=lambda user_id: user_id in cache.view.users,
            )
            app = web.Application(client_max_size=MAX_BODY_BYTES)
            add_member_routes(
                app,
                login=login,
                view=lambda: cache.view,
                enrol_phone=chosen.enrol_phone or enrolment.enrol_phone,
                secure_cookies=chosen.secure_cookies,
            )
            client = await stack.enter_async_context(TestClient(TestServer(app, host="127.0.0.1")))
            return Rig(client, fake, cache, sessions, tick, ada, bob, store, officernd, http)

        yield make


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    return await make_rig()


def officernd_client(fake: FakeOfficeRnD, http: aiohttp.ClientSession) -> OfficeRnDClient:
    """A client for ``fake`` that does not wait between its retries."""
    return OfficeRnDClient(fake_settings(fake), http, sleep=no_sleep, max_retries=1)


def set_cookie(response: aiohttp.ClientResponse) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie"):
        cookie.load(header)
    return cookie


# --- logging in -----------------------------------------------------------------------------------


async def test_a_login_opens_a_session_for_me_and_phones(rig: Rig) -> None:
    status, body, response = await rig.call(
        "POST", "/api/member/login", {"email": EMAIL, "password": PASSWORD}
    )
    assert status == 200
    assert body == {
        "token": body["token"],
        "expires_at": "2026-12-01T15:00:00+00:00",
        "user": {"id": rig.ada_user, "name": "Ada Lovelace"},
    }
    assert response.headers["Cache-Control"] == "no-store"
    morsel = set_cookie(response)[COOKIE]
    assert morsel.value == body["token"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert morsel["max-age"] == "3600"
    assert not morsel["secure"]

    rig.forget_cookies()  # from here on, the bearer token alone
    token = body["token"]
    status, me, _ = await rig.call("GET", "/api/member/me", token=token)
    assert status == 200
    assert me["user"]["id"] == rig.ada_user
    assert me["phone_keys"] == []

    key = phone_key(11)
    status, made, _ = await rig.call("POST", "/api/member/phones", {"public_key": key}, token=token)
    assert status == 201
    credential = made["credential"]
    assert (credential["user"], credential["kind"], credential["public_key"]) == (
        rig.ada_user,
        "ble_phone_key",
        key,
    )
    stored = rig.cache.view.credential(CredentialKind.BLE_PHONE_KEY, credential["value"])
    assert stored is not None
    assert stored.id == credential["id"]
    assert [e.type for e in rig.store.events] == ["credential.enrolled"]
    _, me, _ = await rig.call("GET", "/api/member/me", token=token)
    assert me["phone_keys"] == [{"id": credential["id"], "revoked": False}]


async def test_a_secure_app_sets_a_secure_cookie(make_rig: MakeRig) -> None:
    rig = await make_rig(secure_cookies=True)
    _, _, response = await rig.call(
        "POST", "/api/member/login", {"email": EMAIL, "password": PASSWORD}
    )
    assert set_cookie(response)[COOKIE]["secure"] is True


async def test_a_wrong_password_is_401_with_one_message_for_every_cause(rig: Rig) -> None:
    answers = [
        await rig.call("POST", "/api/member/login", {"email": email, "password": password})
        for email, password in ((EMAIL, "wrong"), ("nobody@example.com", PASSWORD))
    ]
    for status, body, response in answers:
        assert (status, body) == (401, {"error": REFUSED_MESSAGE})
        assert "Set-Cookie" not in response.headers


async def test_the_sixth_attempt_is_429_and_its_password_never_leaves(rig: Rig) -> None:
    for n in range(5):
        status, _, _ = await rig.call(
            "POST", "/api/member/login", {"email": EMAIL, "password": f"guess-{n}"}
        )
        assert status == 401
    assert signins(rig.fake) == 5
    status, body, response = await rig.call(
        "POST", "/api/member/login", {"email": EMAIL, "password": PASSWORD}
    )
    assert status == 429
    assert response.headers["Retry-After"] == "900"
    assert "too many failed logins" in body["error"]
    assert signins(rig.fake) == 5
    # Another member from the same address is not locked out by Ada's failures.
    assert await rig.login(OTHER_EMAIL, OTHER_PASSWORD)


async def test_a_member_not_synced_here_is_403(rig: Rig) -> None:
    status, body, _ = await rig.call(
        "POST", "/api/member/login", {"email": ZED_EMAIL, "password": ZED_PASSWORD}
    )
    assert (status, body) == (403, {"error": NOT_SYNCED})


async def test_officernd_down_is_503_and_not_counted(rig: Rig) -> None:
    await rig.login()  # a token is cached
    rig.fake.fail_next("auth/signin", 503, times=6)
    for _ in range(6):
        status, body, _ = await rig.call(
            "POST", "/api/member/login", {"email": EMAIL, "password": PASSWORD}
        )
        assert (status, body) == (503, {"error": UNREACHABLE})
    await rig.fake.stop()
    status, body, _ = await rig.call(
        "POST", "/api/member/login", {"email": EMAIL, "password": PASSWORD}
    )
    assert (status, body) == (503, {"error": UNREACHABLE})
    await rig.fake.start()  # on a new port: a new client, as activating again would make
    rig.officernd[0] = officernd_client(rig.fake, rig.http)
    assert await rig.login()


async def test_not_activated_is_503(rig: Rig) -> None:
    rig.officernd[0] = None
    status, body, _ = await rig.call(
        "POST", "/api/member/login", {"email": EMAIL, "password": PASSWORD}
    )
    assert (status, body) == (503, {"error": NOT_ACTIVATED})


@pytest.mark.parametrize(
    ("data", "headers", "fragment"),
    [
        (b'{"email": "a@b.c", "password": "x"}', {"Content-Type": "text/plain"}, "must be JSON"),
        (
            b"email=a@b.c&password=x",
            {"Content-Type": "application/x-www-form-urlencoded"},
            "must be JSON",
        ),
        (b'{"email": ', {"Content-Type": "application/json"}, "JSON object"),
        (b'["a@b.c", "x"]', {"Content-Type": "application/json"}, "JSON object"),
        (b'{"password": "x"}', {"Content-Type": "application/json"}, "'email' and 'password'"),
        (b'{"email": 7, "password": "x"}', {"Content-Type": "application/json"}, "'email'"),
        (
            b'{"email": "a@b.c", "password": null}',
            {"Content-Type": "application/json"},
            "'password'",
        ),
        (
            b'{"email": "not-an-address", "password": "x"}',
            {"Content-Type": "application/json"},
            "'email' must be an email address",
        ),
        (
            b'{"email": "a@b.c", "password": ""}',
            {"Content-Type": "application/json"},
            "'password' must be",
        ),
    ],
)
async def test_a_malformed_login_is_400(
    rig: Rig, data: bytes, headers: dict[str, str], fragment: str
) -> None:
    status, body, _ = await rig.call("POST", "/api/member/login", data=data, headers=headers)
    assert status == 400
    assert fragment in body["error"]
    assert rig.fake.requests == []


# --- sessions -------------------------------------------------------------------------------------


async def test_a_session_expires(rig: Rig) -> None:
    token = await rig.login()
    rig.tick.now += 3599
    assert (await rig.call("GET", "/api/member/me", token=token))[0] == 200
    rig.tick.now += 1
    status, body, response = await rig.call("GET", "/api/member/me", token=token)
    assert status == 401
    assert "log in again" in body["error"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_logout_ends_the_session_and_clears_the_cookie(rig: Rig) -> None:
    token = await rig.login()
    assert (await rig.call("GET", "/api/member/me"))[0] == 200  # by cookie
    status, _, response = await rig.call("POST", "/api/member/logout", headers=CSRF)
    assert status == 204
    assert set_cookie(response)[COOKIE].value == ""
    assert (await rig.call("GET", "/api/member/me", token=token))[0] == 401
    assert len(rig.sessions) == 0

    bearer = await rig.login()
    rig.forget_cookies()
    assert (await rig.call("POST", "/api/member/logout", token=bearer))[0] == 204
    assert (await rig.call("GET", "/api/member/me", token=bearer))[0] == 401


async def test_a_cookie_post_needs_the_csrf_header(rig: Rig) -> None:
    await rig.login()
    key = {"public_key": phone_key(12)}
    for path, body in (("/api/member/phones", key), ("/api/member/logout", None)):
        status, answer, _ = await rig.call("POST", path, body)
        assert status == 403
        assert "X-Requested-With" in answer["error"]
    wrong = {"X-Requested-With": "XMLHttpRequest"}
    assert (await rig.call("POST", "/api/member/phones", key, headers=wrong))[0] == 403
    assert rig.store.events == []
    assert (await rig.call("GET", "/api/member/me"))[0] == 200  # reading needs no header
    assert (await rig.call("POST", "/api/member/phones", key, headers=CSRF))[0] == 201


@pytest.mark.parametrize(
    "authorization", ["Bearer", "Bearer ", "Basic YWRhOnB3", "Token abc", "Bearer not-a-session"]
)
async def test_a_bad_or_unknown_token_is_401(rig: Rig, authorization: str) -> None:
    status, body, _ = await rig.call(
        "GET", "/api/member/me", headers={"Authorization": authorization}
    )
    assert status == 401
    assert set(body) == {"error"}
    assert (await rig.call("GET", "/api/member/me"))[0] == 401  # no cookie either


async def test_a_removed_member_loses_the_session(rig: Rig) -> None:
    token = await rig.login()
    other = await rig.login()
    await rig.cache.apply_snapshot(the_site(rig.ada, rig.bob, version=2, with_ada=False).snapshot())
    status, body, _ = await rig.call("GET", "/api/member/me", token=token)
    assert (status, body) == (401, {"error": "your account is no longer on this gateway"})
    # Every session of that member ended, and stays ended when the member comes back.
    await rig.cache.apply_snapshot(the_site(rig.ada, rig.bob, version=3).snapshot())
    for session in (token, other):
        assert (await rig.call("GET", "/api/member/me", token=session))[0] == 401
    key = {"public_key": phone_key(13)}
    assert (await rig.call("POST", "/api/member/phones", key, token=other))[0] == 401


# --- what a member sees ---------------------------------------------------------------------------


async def test_me_lists_exactly_the_doors_the_members_tags_reach(rig: Rig) -> None:
    token = await rig.login()
    status, me, _ = await rig.call("GET", "/api/member/me", token=token)
    assert status == 200
    assert me == {
        "user": {
            "id": rig.ada_user,
            "name": "Ada Lovelace",
            "status": "active",
            "tags": [
                {"id": "ornd-plan-desk", "name": "Hot desk"},
                {"id": "staff", "name": "Staff"},
            ],
        },
        "doors": [
            {
                "id": "front",
                "name": "Front door",
                "rules": [
                    {"id": "r-desk", "name": "Hot desk", "schedule": "Business hours"},
                    {"id": "r-staff", "name": "Staff any time", "schedule": None},
                ],
            },
            {
                "id": "lab",
                "name": "Lab",
                "rules": [{"id": "r-desk", "name": "Hot desk", "schedule": "Business hours"}],
            },
            {
                "id": "roof",
                "name": "Roof terrace",
                "rules": [{"id": "r-staff", "name": "Staff any time", "schedule": None}],
            },
        ],
        "phone_keys": [],
    }
    bob = await rig.login(OTHER_EMAIL, OTHER_PASSWORD)
    _, bobs, _ = await rig.call("GET", "/api/member/me", token=bob)
    assert [door["id"] for door in bobs["doors"]] == ["front", "lab"]


async def test_me_lists_only_the_members_own_phone_keys(rig: Rig) -> None:
    ada = await rig.login()
    bob = await rig.login(OTHER_EMAIL, OTHER_PASSWORD)
    _, mine, _ = await rig.call(
        "POST", "/api/member/phones", {"public_key": phone_key(21)}, token=ada
    )
    await rig.call("POST", "/api/member/phones", {"public_key": phone_key(22)}, token=bob)
    _, me, _ = await rig.call("GET", "/api/member/me", token=ada)
    assert me["phone_keys"] == [{"id": mine["credential"]["id"], "revoked": False}]


# --- enrolling a phone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("public_key", "fragment"),
    [
        (None, "'public_key' is required"),
        ("zz" * 65, "must be hex"),
        ("04" + "00" * 64, "public key refused"),  # not a point on the curve
        ("ab" * 500, "'public_key' is required"),
    ],
)
async def test_a_bad_phone_key_is_400(rig: Rig, public_key: str | None, fragment: str) -> None:
    token = await rig.login()
    status, body, _ = await rig.call(
        "POST", "/api/member/phones", {"public_key": public_key}, token=token
    )
    assert status == 400
    assert fragment in body["error"]
    assert rig.store.events == []


async def test_no_member_app_access_is_403(make_rig: MakeRig) -> None:
    asked: list[tuple[str, bytes]] = []

    async def policy(user_id: str, public_key: bytes) -> Credential:
        asked.append((user_id, public_key))
        raise EnrolmentError(f"user {user_id!r} has no OfficeRnD Member App access")

    rig = await make_rig(enrol_phone=policy)
    token = await rig.login()
    key = phone_key(31)
    status, body, _ = await rig.call("POST", "/api/member/phones", {"public_key": key}, token=token)
    assert status == 403
    assert "Member App access" in body["error"]
    assert asked == [(rig.ada_user, bytes.fromhex(key))]


# --- the page -------------------------------------------------------------------------------------


async def test_the_member_page_is_self_contained_and_locked_down(rig: Rig) -> None:
    status, page, response = await rig.call("GET", "/member")
    assert status == 200
    assert response.content_type == "text/html"
    assert "X-Requested-With" in page
    assert "/api/member/login" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from elsewhere
    policy = response.headers["Content-Security-Policy"]
    [script] = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "default-src 'none'" in policy


# --- secrets --------------------------------------------------------------------------------------


async def test_no_password_in_any_log_record_or_response(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for n in range(6):
        await rig.call("POST", "/api/member/login", {"email": EMAIL, "password": f"{PASSWORD}{n}"})
    await rig.login(OTHER_EMAIL, OTHER_PASSWORD)
    await rig.call("POST", "/api/member/login", {"email": ZED_EMAIL, "password": ZED_PASSWORD})
    rig.fake.fail_next("auth/signin", 500)
    await rig.call("POST", "/api/member/login", {"email": OTHER_EMAIL, "password": OTHER_PASSWORD})
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        for secret in (PASSWORD, OTHER_PASSWORD, ZED_PASSWORD):
            assert secret not in text
        assert EMAIL not in text
    for body in rig.seen:
        for secret in (PASSWORD, OTHER_PASSWORD, ZED_PASSWORD):
            assert secret not in body
