"""The local admin: setup code, scrypt account, sessions, CSRF, login limits, HTTPS off loopback."""

from __future__ import annotations

import asyncio
import json
import ssl
import stat
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import pytest

from gateway.admin import ACCOUNT_FILE, AdminAccounts, AdminError, PasswordHash
from gateway.app import Gateway
from tests.conftest import ConfigFactory, GatewayFactory

PASSWORD = "correct horse battery staple"


async def test_the_admin_is_made_with_the_setup_code_and_stored_as_a_scrypt_hash(
    tmp_path: Path,
) -> None:
    accounts = AdminAccounts(tmp_path)
    assert accounts.setup_required
    code = accounts.setup_code
    assert code is not None
    assert len(code.replace("-", "")) == 12
    with pytest.raises(AdminError) as wrong:
        await accounts.create("AAAA-AAAA-AAAA", "admin", PASSWORD, "10.0.0.9")
    assert (wrong.value.status, wrong.value.field) == (403, "setup_code")
    with pytest.raises(AdminError) as short:
        await accounts.create(code, "admin", "short", "10.0.0.9")
    assert short.value.field == "password"
    assert "12 to 1024 characters" in str(short.value)
    with pytest.raises(AdminError) as bad_name:
        await accounts.create(code, "ad min", PASSWORD, "10.0.0.9")
    assert bad_name.value.field == "username"
    # Typed in lower case, without hyphens: still the code.
    session = await accounts.create(code.replace("-", "").lower(), "admin", PASSWORD, "10.0.0.9")
    assert session.name == "admin"
    assert accounts.sessions.get(session.token) is not None
    assert (accounts.setup_required, accounts.setup_code) == (False, None)  # the code is spent
    with pytest.raises(AdminError) as again:
        await accounts.create(code, "eve", PASSWORD, "10.0.0.9")
    assert again.value.status == 409

    path = tmp_path / ACCOUNT_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert PASSWORD not in path.read_text()
    assert stored["password"]["kdf"] == "scrypt"
    assert stored["password"]["n"] >= 2**14
    hashed = PasswordHash.from_json(stored["password"])
    assert hashed.matches(PASSWORD)
    assert not hashed.matches(PASSWORD + "!")


async def test_logins_are_checked_limited_and_survive_a_restart(tmp_path: Path) -> None:
    accounts = AdminAccounts(tmp_path)
    assert accounts.setup_code is not None
    await accounts.create(accounts.setup_code, "admin", PASSWORD, "10.0.0.9")

    again = AdminAccounts(tmp_path)  # the next start: no setup code, the same account
    assert not again.setup_required
    assert again.setup_code is None
    session = await again.login("admin", PASSWORD, "10.0.0.9")
    assert session.name == "admin"
    for _ in range(5):
        with pytest.raises(AdminError) as refused:
            await again.login("admin", "wrong password!", "10.0.0.7")
        assert refused.value.status == 401
        assert str(refused.value) == "wrong username or password"
    with pytest.raises(AdminError) as limited:
        await again.login("admin", PASSWORD, "10.0.0.7")  # even the right one, for a while
    assert limited.value.status == 429
    assert limited.value.retry_after_s is not None


def test_a_damaged_account_file_stops_the_gateway_instead_of_offering_a_setup_code(
    tmp_path: Path,
) -> None:
    path = tmp_path / ACCOUNT_FILE
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(AdminError, match="cannot read the admin account"):
        AdminAccounts(tmp_path)


def test_the_csrf_token_belongs_to_its_session(tmp_path: Path) -> None:
    accounts = AdminAccounts(tmp_path)
    token = accounts.csrf_token("session-a")
    assert accounts.csrf_ok("session-a", token)
    assert not accounts.csrf_ok("session-b", token)
    assert not accounts.csrf_ok("session-a", None)
    assert not accounts.csrf_ok("session-a", token[:-1] + ("0" if token[-1] != "0" else "1"))


async def _remote_gateway(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> tuple[Gateway, str, ssl.SSLContext]:
    gw = await start_gateway(gateway_config(web={"host": "0.0.0.0", "allow_remote": True}))
    assert gw.web_tls is not None
    return (
        gw,
        f"https://127.0.0.1:{gw.web.port}",
        ssl.create_default_context(cafile=gw.web_tls.cert),
    )


async def test_off_loopback_the_web_app_is_https_and_every_admin_route_needs_a_session(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw, base, trust = await _remote_gateway(start_gateway, gateway_config)
    code = gw.admin.setup_code
    assert code is not None
    decide = {"door": "front", "credential": "nfc_uid:04A1B2C3D4E5F6"}
    # unsafe: keep cookies of an IP address host, as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{base}/api/health")  # self-signed: not trusted by default
        async with session.get(f"{base}/api/health", ssl=trust) as response:
            assert response.status == 200  # liveness stays open
        async with session.get(f"{base}/api/doors", ssl=trust) as response:
            assert response.status == 401
        async with session.get(
            f"{base}/", ssl=trust, headers={"Accept": "text/html"}, allow_redirects=False
        ) as response:
            assert response.status == 302
            assert unquote(response.headers["Location"]) == "/login?next=/"
        async with session.get(f"{base}/api/admin/state", ssl=trust) as response:
            assert await response.json() == {"setup_required": True}

        setup = {"setup_code": code, "username": "installer", "password": "tooshort"}
        async with session.post(f"{base}/api/admin/setup", json=setup, ssl=trust) as response:
            assert response.status == 400
            assert (await response.json())["field"] == "password"
        setup["password"] = PASSWORD
        async with session.post(f"{base}/api/admin/setup", json=setup, ssl=trust) as response:
            assert response.status == 201
            answer = await response.json()
            cookie = response.cookies["luckey_admin"]
            assert cookie["secure"]
            assert cookie["httponly"]
            assert cookie["samesite"] == "Strict"
        csrf, token = answer["csrf_token"], answer["token"]

        async with session.get(f"{base}/api/doors", ssl=trust) as response:
            assert response.status == 200
            assert {d["id"] for d in await response.json()}
        async with session.post(f"{base}/api/decide", json=decide, ssl=trust) as response:
            assert response.status == 403
            assert "X-CSRF-Token" in (await response.json())["error"]
        headers = {"X-CSRF-Token": "0" * 64}
        async with session.post(
            f"{base}/api/decide", json=decide, ssl=trust, headers=headers
        ) as response:
            assert response.status == 403
        headers = {"X-CSRF-Token": csrf}
        async with session.post(
            f"{base}/api/decide", json=decide, ssl=trust, headers=headers
        ) as response:
            assert response.status == 200
            assert (await response.json())["decision"]["granted"]
        async with session.post(f"{base}/api/admin/logout", ssl=trust) as response:
            assert response.status == 204
        async with session.get(f"{base}/api/doors", ssl=trust) as response:
            assert response.status == 401

    async with aiohttp.ClientSession() as bearer:  # no cookies: an API client with the token
        async with bearer.get(
            f"{base}/api/doors", ssl=trust, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 401  # it was logged out
        async with bearer.post(
            f"{base}/api/admin/login",
            json={"username": "installer", "password": PASSWORD},
            ssl=trust,
        ) as response:
            assert response.status == 200
            token = (await response.json())["token"]
        async with bearer.post(
            f"{base}/api/decide",
            json=decide,
            ssl=trust,
            headers={"Authorization": f"Bearer {token}"},  # not ambient: no CSRF token needed
        ) as response:
            assert response.status == 200
        async with bearer.get(
            f"{base}/api/doors", ssl=trust, headers={"Authorization": "Bearer someone-else"}
        ) as response:
            assert response.status == 401


async def test_admin_logins_are_rate_limited_over_http(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw, base, trust = await _remote_gateway(start_gateway, gateway_config)
    assert gw.admin.setup_code is not None
    await gw.admin.create(gw.admin.setup_code, "installer", PASSWORD, "127.0.0.1")
    wrong = {"username": "installer", "password": "not the password"}
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.post(f"{base}/api/admin/login", json=wrong, ssl=trust) as response:
                assert response.status == 401
        right = {"username": "installer", "password": PASSWORD}
        async with session.post(f"{base}/api/admin/login", json=right, ssl=trust) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) > 0


async def test_on_loopback_this_machine_passes_and_a_rebound_name_does_not(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    assert gw.web_tls is None  # plain HTTP only on loopback
    base = f"http://127.0.0.1:{gw.web.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/doors") as response:
            assert response.status == 200
        headers = {"Host": f"rebound.example:{gw.web.port}"}
        async with session.get(f"{base}/api/doors", headers=headers) as response:
            assert response.status == 401
        async with session.get(f"{base}/api/doors", headers={"X-Forwarded-For": "1.2.3.4"}) as r:
            assert r.status == 401


async def test_concurrent_wrong_logins_cannot_slip_past_the_limit(tmp_path: Path) -> None:
    accounts = AdminAccounts(tmp_path)
    assert accounts.setup_code is not None
    await accounts.create(accounts.setup_code, "admin", PASSWORD, "10.0.0.9")
    results = await asyncio.gather(
        *(accounts.login("admin", f"guess number {i}", "10.0.0.7") for i in range(12)),
        return_exceptions=True,
    )
    statuses = sorted(r.status for r in results if isinstance(r, AdminError))
    assert len(statuses) == 12
    assert statuses.count(401) == 5  # the budget, not one more however many run at once
    assert statuses.count(429) == 7


async def test_wrong_setup_codes_from_one_address_do_not_lock_out_another(tmp_path: Path) -> None:
    accounts = AdminAccounts(tmp_path)
    code = accounts.setup_code
    assert code is not None
    for _ in range(5):
        with pytest.raises(AdminError):
            await accounts.create("AAAA-AAAA-AAAA", "admin", PASSWORD, "10.0.0.66")
    with pytest.raises(AdminError) as limited:
        await accounts.create(code, "admin", PASSWORD, "10.0.0.66")
    assert limited.value.status == 429
    session = await accounts.create(code, "admin", PASSWORD, "10.0.0.9")  # the installer
    assert session.name == "admin"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ],
)
async def test_on_loopback_another_site_cannot_act_as_this_machine(
    start_gateway: GatewayFactory, headers: dict[str, str]
) -> None:
    gw = await start_gateway()
    url = f"http://127.0.0.1:{gw.web.port}/api/decide"
    body = {"door": "front", "credential": "nfc_uid:04A1B2C3D4E5F6"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as response:
            assert response.status == 403
            assert "another site" in (await response.json())["error"]
        same = {"Origin": f"http://127.0.0.1:{gw.web.port}", "Sec-Fetch-Site": "same-origin"}
        async with session.post(url, json=body, headers=same) as response:
            assert response.status == 200  # the gateway's own page


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"username": ' + b"9" * 5000 + b"}", "application/json"),
        (b"[" * 15000, "application/json"),
        (b'{"username": "a"}', "application/json; charset=bogus"),
        (b'{"username": "\\ud800", "password": "x"}', "application/json"),
    ],
)
async def test_malformed_bodies_get_a_400_not_a_500(
    start_gateway: GatewayFactory, body: bytes, content_type: str
) -> None:
    gw = await start_gateway()
    assert gw.admin.setup_code is not None
    await gw.admin.create(gw.admin.setup_code, "installer", PASSWORD, "127.0.0.1")
    url = f"http://127.0.0.1:{gw.web.port}/api/admin/login"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": content_type}) as response,
    ):
        assert 400 <= response.status < 500
        assert "error" in await response.json()
