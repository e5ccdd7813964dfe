"""The operator views over real HTTP: who can open a door, what a user can open, the page."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.model import DoorMode
from tests.conftest import GatewayFactory
from tests.gateway.sitebuilder import at, site, slot

#: Tuesday 1 December 2026 in Rome: business hours are open at 15:00 (the gateway's clock).
SATURDAY_NOON = "2026-12-05T12:00:00+01:00"


@dataclass
class Api:
    """A started gateway (demo site, clock at Tuesday 15:00 in Rome) and an HTTP session."""

    gw: Gateway
    session: aiohttp.ClientSession
    base: str

    async def get(self, path: str, **headers: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path, headers=headers) as response:
            return response.status, await response.json(content_type=None)


@pytest.fixture
async def api(start_gateway: GatewayFactory) -> AsyncIterator[Api]:
    gw = await start_gateway()
    async with aiohttp.ClientSession() as session:
        yield Api(gw, session, f"http://127.0.0.1:{gw.web.port}")


def quoted(instant: str) -> str:
    """``at=...`` for a query string ('+' sent as %2B)."""
    return urllib.parse.urlencode({"at": instant})


def credentials(holders: list[dict[str, Any]]) -> list[str]:
    return [h["credential"] for h in holders]


async def test_who_can_open_the_front_door_now(api: Api) -> None:
    status, body = await api.get("/api/doors/front/who-can")

    assert status == 200, body
    assert body["door"] == "front"
    assert body["door_name"] == "Front door"
    assert body["at"] == "2026-12-01T15:00:00+01:00"
    assert body["local"] == "Tue 2026-12-01 15:00 Europe/Rome"
    assert body["mode"] == "normal"
    assert credentials(body["granted"]) == ["card-ada", "key-ada", "card-bob"]
    bob = body["granted"][2]
    assert (bob["user"], bob["user_name"], bob["rule"]) == (
        "bob",
        "Bob Hot-desk",
        "hotdesk-business-hours",
    )
    assert bob["decision"]["granted"] is True
    assert "denied" not in body
    assert "04B0B0B0B0B0B0" not in str(body)  # ids, never credential values


async def test_who_can_with_the_near_misses(api: Api) -> None:
    status, body = await api.get("/api/doors/front/who-can?denied=1")

    assert status == 200, body
    assert {h["credential"]: h["reason"] for h in body["denied"]} == {
        "card-carla": "user_disabled",
        "card-dan": "user_disabled",
        "card-eve": "user_expired",
        "card-lost": "credential_revoked",
    }
    assert [h["user"] for h in body["denied"]] == ["bob", "carla", "dan", "eve"]
    carla = body["denied"][1]
    assert carla["explanation"] == (
        'DENIED at "Front door" (user_disabled): "Carla Suspended" (carla) is suspended.'
    )


async def test_who_can_at_another_instant(api: Api) -> None:
    status, body = await api.get(f"/api/doors/front/who-can?{quoted(SATURDAY_NOON)}&denied=true")

    assert status == 200, body
    assert body["local"] == "Sat 2026-12-05 12:00 Europe/Rome"
    assert credentials(body["granted"]) == ["card-ada", "key-ada"]
    bob = next(h for h in body["denied"] if h["credential"] == "card-bob")
    assert bob["reason"] == "outside_schedule"


async def test_who_can_follows_the_doors_mode(api: Api) -> None:
    await api.gw.doors.set_mode("front", DoorMode.LOCKDOWN, source="test")

    status, body = await api.get("/api/doors/front/who-can?denied=1")

    assert status == 200, body
    assert body["mode"] == "lockdown"
    assert body["granted"] == []  # nobody holds the demo's override tag
    assert {h["reason"] for h in body["denied"]} == {"door_lockdown"}


async def test_the_lobby_is_unlocked_on_its_schedule(api: Api) -> None:
    status, body = await api.get(f"/api/doors/lobby/who-can?{quoted('2026-12-01T10:00:00+01:00')}")

    assert status == 200, body
    assert body["mode"] == "unlocked"


async def test_who_can_at_an_unknown_door_is_404(api: Api) -> None:
    status, body = await api.get("/api/doors/garage/who-can")

    assert status == 404
    assert body["error"] == "no door 'garage'; doors: front, lobby, office-3, server-room"


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ("at=yesterday", "at", "ISO 8601"),
        ("at=2026-12-01T10:00:00", "at", "UTC offset"),
        ("at=2026-12-01T10:00:00+01:00", "at", "%2B"),  # the '+' arrives as a space
        (quoted("0001-01-01T00:00:00+14:00"), "at", "out of range"),
        ("denied=yes", "denied", "one of 1, true, 0, false"),
    ],
)
async def test_bad_parameters_are_400_naming_them(
    api: Api, query: str, field: str, words: str
) -> None:
    status, body = await api.get(f"/api/doors/front/who-can?{query}")

    assert status == 400, body
    assert body["field"] == field
    assert words in body["error"]


async def test_what_ada_can_open(api: Api) -> None:
    status, body = await api.get("/api/users/ada/can-open")

    assert status == 200, body
    assert body["user"] == {
        "id": "ada",
        "name": "Ada Lovelace",
        "status": "active",
        "tags": ["it", "staff"],
    }
    doors = {d["door"]: d for d in body["doors"]}
    assert list(doors) == ["front", "lobby", "office-3", "server-room"]
    assert all(d["granted"] for d in doors.values())
    server = doors["server-room"]
    assert {c["credential"]: c["reason"] for c in server["credentials"]} == {
        "card-ada": "assurance_too_low",
        "key-ada": "granted",
    }
    assert [r["rule"] for r in server["rules"]] == ["staff-everywhere"]
    assert server["rules"][0]["via_tags"] == ["staff"]
    assert server["rules"][0]["when"] == "any credential; every day; all day; no date limits"


async def test_when_bobs_rule_applies(api: Api) -> None:
    status, body = await api.get(f"/api/users/bob/can-open?{quoted(SATURDAY_NOON)}")

    assert status == 200, body
    front = body["doors"][0]
    assert front["door"] == "front"
    assert front["granted"] is False
    assert [r["schedule"] for r in front["rules"]] == ["business-hours"]
    assert "Business hours" in front["rules"][0]["when"]
    assert "on holidays (it-holidays): never" in front["rules"][0]["when"]


async def test_an_invitations_guest_by_its_id(api: Api) -> None:
    builder = (
        site("Europe/Rome", version=2)
        .door("lab", min_assurance="low")
        .invitation(
            "visit",
            valid_from=at("Europe/Rome", "2026-12-01 09:00"),
            valid_until=at("Europe/Rome", "2026-12-02 18:00"),
            doors=["lab"],
            time_slot=slot("09:00", "18:00"),
        )
        .credential("visit-phone", "guest:visit", kind="ble_phone_key")
    )
    await api.gw.cache.apply_snapshot(builder.snapshot())

    status, body = await api.get("/api/users/guest:visit/can-open")
    assert status == 200, body
    [lab] = body["doors"]
    assert lab["granted"] is True
    assert lab["rules"][0]["rule"] == "invitation:visit"
    assert lab["rules"][0]["when"].startswith("phone keys only; every day; 09:00-18:00")

    status, body = await api.get("/api/doors/lab/who-can")
    assert status == 200, body
    assert [(h["user"], h["credential"]) for h in body["granted"]] == [
        ("guest:visit", "visit-phone")
    ]


async def test_can_open_for_an_unknown_user_is_404(api: Api) -> None:
    status, body = await api.get("/api/users/zed/can-open")

    assert status == 404
    assert body["error"] == "no user 'zed'; users: ada, bob, carla, dan, eve"


async def test_can_open_bad_at_is_400(api: Api) -> None:
    status, body = await api.get("/api/users/ada/can-open?at=soon")

    assert (status, body["field"]) == (400, "at")


@pytest.mark.parametrize(
    "path", ["/api/doors/front/who-can", "/api/users/ada/can-open", "/access", "/access.js"]
)
async def test_the_routes_need_an_admin(api: Api, path: str) -> None:
    # Forwarded: not this machine's own request, so the loopback exemption does not apply.
    async with api.session.get(
        api.base + path, headers={"X-Forwarded-For": "192.0.2.7", "Accept": "application/json"}
    ) as response:
        assert response.status == 401


async def test_the_page_and_its_script(api: Api) -> None:
    async with api.session.get(f"{api.base}/access") as response:
        assert response.status == 200
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    async with api.session.get(f"{api.base}/access.js") as response:
        assert response.status == 200
        assert response.content_type == "application/javascript"
        script = await response.text()
    assert 'src="/access.js"' in page
    assert 'src="/admin.js"' in page
    assert 'id="who-form"' in page
    assert 'id="user-form"' in page
    assert "<script>" not in page  # the page's policy allows no inline script
    assert "adminFetch" in script
    assert "/who-can?" in script
    assert "/can-open?" in script
