"""Two-factor authentication of the admin: enrolment, login with a code, the site's requirement."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import totp
from gateway.admin import ACCOUNT_FILE, TWO_FACTOR_REQUIRED, AdminAccounts, AdminError
from gateway.app import Gateway
from tests.conftest import Clock, ConfigFactory, GatewayFactory, demo_snapshot

PASSWORD = "correct horse battery staple"
REFUSED = "wrong username, password or code"


class Admin:
    """One browser (its own cookie jar) talking to a gateway over HTTPS."""

    def __init__(self, base: str, trust: ssl.SSLContext, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.trust = trust
        self.http = http
        self.csrf = ""

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        csrf: bool = True,
        html: bool = False,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"X-CSRF-Token": self.csrf} if csrf and self.csrf else {}
        if html:
            headers["Accept"] = "text/html"
        async with self.http.request(
            method,
            f"{self.base}{path}",
            json=body,
            headers=headers,
            ssl=self.trust,
            allow_redirects=False,
        ) as response:
            if response.content_type == "application/json":
                answer: Any = await response.json()
            else:
                answer = await response.text()
            return response.status, answer, response

    async def login(self, password: str = PASSWORD, code: str | None = None) -> tuple[int, Any]:
        body = {"username": "installer", "password": password}
        if code is not None:
            body["code"] = code
        status, answer, _ = await self.call("POST", "/api/admin/login", body)
        if status == 200:
            self.csrf = answer["csrf_token"]
        return status, answer

    async def enrol(self, clock: Clock) -> bytes:
        """Set TOTP up; the secret."""
        status, started, _ = await self.call("POST", "/api/admin/totp")
        assert status == 200, started
        secret = totp.from_base32(started["secret"])
        status, answer, _ = await self.call(
            "POST", "/api/admin/totp/confirm", {"code": code_now(secret, clock)}
        )
        assert status == 200, answer
        return secret


def code_now(secret: bytes, clock: Clock) -> str:
    return totp.code_at(secret, clock().timestamp())


@asynccontextmanager
async def browser(gw: Gateway) -> AsyncIterator[Admin]:
    assert gw.web_tls is not None
    trust = ssl.create_default_context(cafile=gw.web_tls.cert)
    # unsafe: keep cookies of an IP address host, as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Admin(f"https://127.0.0.1:{gw.web.port}", trust, http)


async def remote_gateway(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, clock: Clock, **web: Any
) -> Gateway:
    """A gateway off loopback (every admin route needs a session) with its admin made."""
    config = gateway_config(web={"host": "0.0.0.0", "allow_remote": True, **web})
    gw = await start_gateway(config, clock=clock)
    assert gw.admin.setup_code is not None
    await gw.admin.create(gw.admin.setup_code, "installer", PASSWORD, "127.0.0.1")
    return gw


async def require_2fa(gw: Gateway, required: bool = True, version: int = 2) -> None:
    """The cloud sends a site that requires (or not) two-factor authentication of admins."""
    snapshot = demo_snapshot(version=version)
    site = dataclasses.replace(snapshot.site, require_admin_2fa=required)
    await gw.cache.apply_snapshot(dataclasses.replace(snapshot, site=site))
    assert gw.cache.view.site.require_admin_2fa is required


# --- over HTTP ------------------------------------------------------------------------------------


async def test_enrolment_then_login_with_a_code_limits_and_replay(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await remote_gateway(start_gateway, gateway_config, clock)
    async with browser(gw) as admin:
        assert (await admin.login())[0] == 200  # no code needed yet
        status, state, _ = await admin.call("GET", "/api/admin/totp")
        assert (status, state) == (
            200,
            {"enabled": False, "required": False, "restricted": False, "username": "installer"},
        )

        status, _, _ = await admin.call("POST", "/api/admin/totp", csrf=False)
        assert status == 403  # cookie-authenticated: the CSRF token is required
        status, started, _ = await admin.call("POST", "/api/admin/totp")
        assert status == 200
        secret = totp.from_base32(started["secret"])
        assert len(secret) == 20
        assert started["secret_grouped"].replace(" ", "") == started["secret"]
        assert all(len(group) == 4 for group in started["secret_grouped"].split())
        assert started["uri"] == (
            f"otpauth://totp/Luckey%20gateway:installer?secret={started['secret']}"
            "&issuer=Luckey%20gateway"
        )
        assert (started["digits"], started["period_s"], started["expires_in_s"]) == (6, 30, 600)

        right = code_now(secret, clock)
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        status, refused, _ = await admin.call("POST", "/api/admin/totp/confirm", {"code": wrong})
        assert (status, refused["field"]) == (400, "code")
        assert not (await admin.call("GET", "/api/admin/totp"))[1]["enabled"]
        status, state, _ = await admin.call("POST", "/api/admin/totp/confirm", {"code": right})
        assert (status, state["enabled"], state["restricted"]) == (200, True, False)
        assert gw.admin.totp_enabled

        path = gw.config.gateway.state_dir / ACCOUNT_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        stored = json.loads(path.read_text())
        assert totp.from_base32(stored["totp"]["secret"]) == secret
        assert stored["totp"]["last_step"] == totp.step_at(clock().timestamp())
        assert PASSWORD not in path.read_text()

        status, _, _ = await admin.call("POST", "/api/admin/logout")
        assert status == 204

        # The password alone: the page must ask for the code.
        status, answer = await admin.login()
        assert status == 401
        assert answer["need"] == "totp"
        assert answer["field"] == "code"
        clock.now += timedelta(seconds=totp.STEP_S)
        code = code_now(secret, clock)
        assert await admin.login(code=f"{(int(code) + 1) % 1_000_000:06d}") == (
            401,
            {"error": REFUSED},
        )
        # A wrong password with the right code: the same words, nothing says which was wrong.
        assert await admin.login("not the password at all", code) == (401, {"error": REFUSED})
        status, answer = await admin.login(code=code)
        assert status == 200
        assert answer["username"] == "installer"
        status, doors, _ = await admin.call("GET", "/api/doors")
        assert status == 200
        assert doors

        # The same code again (same step, another browser): refused.
        async with browser(gw) as other:
            assert await other.login(code=code) == (401, {"error": REFUSED})

        # Five wrong codes spend the username's budget: then even the right one waits.
        clock.now += timedelta(seconds=totp.STEP_S)
        code = code_now(secret, clock)
        for n in range(4):  # the replay above was the first failure
            assert await admin.login(code=f"{(int(code) + 1 + n) % 1_000_000:06d}") == (
                401,
                {"error": REFUSED},
            )
        status, limited, response = await admin.call(
            "POST",
            "/api/admin/login",
            {"username": "installer", "password": PASSWORD, "code": code},
        )
        assert status == 429
        assert int(response.headers["Retry-After"]) > 0
        assert "too many failed logins" in limited["error"]

    text = caplog.text
    for shown in (started["secret"], started["secret_grouped"], secret.hex()):
        assert shown not in text
    assert "two-factor authentication turned on for admin 'installer'" in text


async def test_a_site_requiring_2fa_restricts_password_only_sessions_until_enrolment(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, clock: Clock
) -> None:
    gw = await remote_gateway(start_gateway, gateway_config, clock)
    decide = {"door": "front", "credential": "nfc_uid:04A1B2C3D4E5F6"}
    async with browser(gw) as admin, browser(gw) as other:
        assert (await admin.login())[0] == 200
        assert (await other.login())[0] == 200
        assert (await admin.call("GET", "/api/doors"))[0] == 200

        await require_2fa(gw)  # sessions made before the requirement are checked at each request
        status, refused, _ = await admin.call("GET", "/api/doors")
        assert (status, refused) == (403, {"error": TWO_FACTOR_REQUIRED, "need": "totp_setup"})
        status, refused, _ = await admin.call("POST", "/api/decide", decide)
        assert (status, refused["error"]) == (403, TWO_FACTOR_REQUIRED)
        status, _, response = await admin.call("GET", "/", html=True)
        assert (status, response.headers["Location"]) == (302, "/account")
        status, _, response = await admin.call("GET", "/doors", html=True)
        assert (status, response.headers["Location"]) == (302, "/account")

        # What a restricted session still reaches: its page, the state, the session, TOTP.
        status, page, response = await admin.call("GET", "/account", html=True)
        assert status == 200
        assert '<script src="/account.js"></script>' in page
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert (await admin.call("GET", "/account.js"))[0] == 200
        assert (await admin.call("GET", "/api/admin/state"))[1] == {"setup_required": False}
        assert (await admin.call("GET", "/api/admin/session"))[1]["username"] == "installer"
        status, state, _ = await admin.call("GET", "/api/admin/totp")
        assert state == {
            "enabled": False,
            "required": True,
            "restricted": True,
            "username": "installer",
        }

        secret = await admin.enrol(clock)
        # The same session is a full one now: no new login.
        status, state, _ = await admin.call("GET", "/api/admin/totp")
        assert (state["enabled"], state["restricted"]) == (True, False)
        assert (await admin.call("GET", "/api/doors"))[0] == 200
        assert (await admin.call("POST", "/api/decide", decide))[0] == 200
        assert (await admin.call("GET", "/", html=True))[0] == 200

        # The other, password-only session ended when the second factor was turned on.
        assert (await other.call("GET", "/api/doors"))[0] == 401

        # Turning it off is refused while the site requires it, even with a right code.
        clock.now += timedelta(seconds=totp.STEP_S)
        status, refused, _ = await admin.call(
            "DELETE", "/api/admin/totp", {"code": code_now(secret, clock)}
        )
        assert status == 409
        assert "required on this site" in refused["error"]
        assert gw.admin.totp_enabled

        # The site drops the requirement: signing in again takes the code all the same.
        await require_2fa(gw, required=False, version=3)
        assert (await other.login())[0] == 401
        assert (await other.call("GET", "/api/doors"))[0] == 401


async def test_the_configuration_can_require_2fa_too(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, clock: Clock
) -> None:
    gw = await remote_gateway(start_gateway, gateway_config, clock, require_admin_2fa=True)
    assert not gw.cache.view.site.require_admin_2fa
    async with browser(gw) as admin:
        assert (await admin.login())[0] == 200  # the password still signs in ...
        status, refused, _ = await admin.call("GET", "/api/events")
        assert (status, refused["error"]) == (403, TWO_FACTOR_REQUIRED)  # ... to set it up only
        await admin.enrol(clock)
        assert (await admin.call("GET", "/api/events"))[0] == 200


async def test_turning_2fa_off_takes_a_current_code(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, clock: Clock
) -> None:
    gw = await remote_gateway(start_gateway, gateway_config, clock)
    async with browser(gw) as admin:
        await admin.login()
        secret = await admin.enrol(clock)
        status, refused, _ = await admin.call("DELETE", "/api/admin/totp", {})
        assert (status, refused["field"]) == (400, "code")
        code = code_now(secret, clock)  # the code the enrolment used: spent
        status, refused, _ = await admin.call("DELETE", "/api/admin/totp", {"code": code})
        assert (status, refused["field"]) == (400, "code")
        clock.now += timedelta(seconds=totp.STEP_S)
        status, _, _ = await admin.call(
            "DELETE", "/api/admin/totp", {"code": code_now(secret, clock)}, csrf=False
        )
        assert status == 403  # the CSRF token, as for any change
        status, state, _ = await admin.call(
            "DELETE", "/api/admin/totp", {"code": code_now(secret, clock)}
        )
        assert (status, state["enabled"]) == (200, False)
        status, refused, _ = await admin.call("DELETE", "/api/admin/totp", {"code": "123456"})
        assert (status, refused["error"]) == (409, "two-factor authentication is not on")
        stored = json.loads((gw.config.gateway.state_dir / ACCOUNT_FILE).read_text())
        assert "totp" not in stored
        assert (await admin.login())[0] == 200  # the password alone again


async def test_an_enrolment_belongs_to_its_session_and_lasts_ten_minutes(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, clock: Clock
) -> None:
    gw = await remote_gateway(start_gateway, gateway_config, clock)
    async with browser(gw) as admin, browser(gw) as other:
        await admin.login()
        await other.login()
        status, started, _ = await admin.call("POST", "/api/admin/totp")
        secret = totp.from_base32(started["secret"])
        status, refused, _ = await other.call(
            "POST", "/api/admin/totp/confirm", {"code": code_now(secret, clock)}
        )
        assert status == 409  # not the session that started it
        assert "start again" in refused["error"]
        clock.now += timedelta(minutes=10)
        status, _, _ = await admin.call(
            "POST", "/api/admin/totp/confirm", {"code": code_now(secret, clock)}
        )
        assert status == 409  # expired
        assert not gw.admin.totp_enabled


async def test_on_loopback_this_machine_reads_the_state_but_changes_need_the_admin(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    base = f"http://127.0.0.1:{gw.web.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/admin/totp") as response:
            assert response.status == 200
            assert (await response.json())["username"] is None
        for method, path in (
            ("POST", "/api/admin/totp"),
            ("POST", "/api/admin/totp/confirm"),
            ("DELETE", "/api/admin/totp"),
        ):
            async with http.request(method, f"{base}{path}", json={"code": "123456"}) as response:
                assert response.status == 401, (method, path)


# --- the account store --------------------------------------------------------------------------


class WallClock:
    """Unix seconds a test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _enrolled(tmp_path: Path, clock: WallClock) -> tuple[AdminAccounts, bytes]:
    accounts = AdminAccounts(tmp_path, clock=clock)
    assert accounts.setup_code is not None
    session = await accounts.create(accounts.setup_code, "admin", PASSWORD, "10.0.0.9")
    secret = accounts.start_totp(session).secret
    await accounts.confirm_totp(session, totp.code_at(secret, clock()), "10.0.0.9")
    assert accounts.second_factor_ok(session.token)
    return accounts, secret


async def test_the_secret_and_the_last_step_survive_a_restart(tmp_path: Path) -> None:
    clock = WallClock()
    _, secret = await _enrolled(tmp_path, clock)
    clock.now += totp.STEP_S
    code = totp.code_at(secret, clock())
    again = AdminAccounts(tmp_path, clock=clock)  # the next start
    assert again.totp_enabled
    session = await again.login("admin", PASSWORD, "10.0.0.9", code)
    assert again.second_factor_ok(session.token)
    restarted = AdminAccounts(tmp_path, clock=clock)
    with pytest.raises(AdminError) as replayed:
        await restarted.login("admin", PASSWORD, "10.0.0.9", code)  # spent before the restart
    assert (replayed.value.status, str(replayed.value)) == (401, REFUSED)
    # One step of drift either way still passes (the phone's clock a little off).
    clock.now += 3 * totp.STEP_S
    late = totp.code_at(secret, clock() - totp.STEP_S)
    assert (await restarted.login("admin", PASSWORD, "10.0.0.9", late)).name == "admin"


async def test_concurrent_logins_with_one_code_let_one_in(tmp_path: Path) -> None:
    clock = WallClock()
    accounts, secret = await _enrolled(tmp_path, clock)
    clock.now += totp.STEP_S
    code = totp.code_at(secret, clock())
    results = await asyncio.gather(
        *(accounts.login("admin", PASSWORD, f"10.0.0.{i}", code) for i in range(3)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert sorted(r.status for r in results if isinstance(r, AdminError)) == [401, 401]


async def test_wrong_codes_are_counted_before_hashing_like_wrong_passwords(
    tmp_path: Path,
) -> None:
    clock = WallClock()
    accounts, _ = await _enrolled(tmp_path, clock)
    results = await asyncio.gather(
        *(accounts.login("admin", PASSWORD, "10.0.0.7", f"{i:06d}") for i in range(9)),
        return_exceptions=True,
    )
    statuses = sorted(r.status for r in results if isinstance(r, AdminError))
    assert statuses.count(401) == 5
    assert statuses.count(429) == 4


def test_a_damaged_second_factor_stops_the_gateway(tmp_path: Path) -> None:
    path = tmp_path / ACCOUNT_FILE
    path.parent.mkdir(parents=True)
    account = {
        "username": "admin",
        "password": {"kdf": "scrypt", "n": 2, "r": 1, "p": 1, "salt": "", "hash": ""},
        "totp": {"secret": "not base32!", "last_step": None},
    }
    path.write_text(json.dumps(account))
    with pytest.raises(AdminError, match="not an admin account file"):
        AdminAccounts(tmp_path)
