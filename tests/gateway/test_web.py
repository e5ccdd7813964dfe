"""Tests for gateway.web: the JSON API and page, served by a real gateway on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Gateway
from gateway.model import DoorMode
from gateway.web import MAX_BODY_BYTES, make_app
from tests.conftest import ADA, BOB, CARLA, UNKNOWN, GatewayFactory, sim_readers


@dataclass
class Api:
    """A started gateway and an HTTP session pointed at its web server."""

    gw: Gateway
    session: aiohttp.ClientSession
    base: str

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path) as response:
            return response.status, await response.json(content_type=None)

    async def post(
        self, path: str, body: Any = None, *, data: bytes | None = None
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"json": body} if data is None else {"data": data}
        async with self.session.post(self.base + path, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except json.JSONDecodeError:
                return response.status, text


@pytest.fixture
async def api(start_gateway: GatewayFactory) -> AsyncIterator[Api]:
    gw = await start_gateway()
    assert gw.web.port == gw.config.web.port
    async with aiohttp.ClientSession() as session:
        yield Api(gw, session, f"http://127.0.0.1:{gw.web.port}")


async def test_health(api: Api) -> None:
    status, body = await api.get("/api/health")

    assert status == 200
    assert body["status"] == "ok"
    assert body["site"] == "Demo coworking"
    assert body["cache"]["version"] == 1
    assert body["cache"]["needs_resync"] is True  # demo data: any upstream snapshot replaces it
    assert body["cache"]["reset_reason"] is None
    assert body["cache"]["counts"]["users"] == 5
    assert body["cache"]["counts"]["doors"] == 4
    assert body["outbox"]["rows"] == 2  # cache.updated, gateway.started
    assert body["outbox"]["dropped"] == {"routine": 0, "notable": 0, "security": 0}


async def test_index_page(api: Api) -> None:
    async with api.session.get(api.base + "/") as response:
        text = await response.text()
        assert response.status == 200
        assert response.content_type == "text/html"
    assert "<title>Luckey gateway</title>" in text


async def test_doors_show_mode_and_relay(api: Api) -> None:
    await api.gw.doors.set_mode("server-room", DoorMode.LOCKDOWN, source="test")
    await api.gw.doors.set_mode("office-3", DoorMode.EMERGENCY_OPEN, source="test")

    status, body = await api.get("/api/doors")

    assert status == 200
    assert body == [
        door_json("front", "Front door", "normal", unlocked=False, min_assurance="low"),
        door_json("lobby", "Lobby", "normal", unlocked=False, min_assurance="low"),
        door_json("office-3", "Private office 3", "emergency_open", unlocked=True),
        door_json("server-room", "Server room", "lockdown", unlocked=False, min_assurance="high"),
    ]


def door_json(
    door: str, name: str, mode: str, *, unlocked: bool, min_assurance: str = "medium"
) -> dict[str, object]:
    """A door as /api/doors shows it on simulated hardware (fail-secure: energised = unlocked)."""
    return {
        "id": door,
        "name": name,
        "mode": mode,
        "unlocked": unlocked,
        "open": None,  # simulated relays have no door contacts
        "alarms": [],
        "relay_energised": unlocked,
        "min_assurance": min_assurance,
    }


async def test_users_page_through_the_cache(api: Api) -> None:
    status, body = await api.get("/api/users")
    assert status == 200
    assert body["total"] == 5
    assert [u["id"] for u in body["users"]] == ["ada", "bob", "carla", "dan", "eve"]
    assert body["users"][0] == {
        "id": "ada",
        "name": "Ada Lovelace",
        "status": "active",
        "tags": ["it", "staff"],
    }
    assert body["users"][2]["status"] == "suspended"

    _, page = await api.get("/api/users?offset=1&limit=2")
    assert page["total"] == 5
    assert [u["id"] for u in page["users"]] == ["bob", "carla"]

    _, tail = await api.get("/api/users?offset=4&limit=1000")
    assert [u["id"] for u in tail["users"]] == ["eve"]
    _, beyond = await api.get("/api/users?offset=50")
    assert beyond == {"total": 5, "users": []}
    _, clamped = await api.get("/api/users?offset=-3&limit=0")
    assert [u["id"] for u in clamped["users"]] == ["ada"]


@pytest.mark.parametrize(
    ("query", "name"),
    [("offset=abc", "offset"), ("limit=ten", "limit"), ("limit=1.5", "limit")],
)
async def test_users_bad_params_are_400(api: Api, query: str, name: str) -> None:
    async with api.session.get(f"{api.base}/api/users?{query}") as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        body = await response.json()
    assert name in body["error"]


async def test_events_newest_first(api: Api) -> None:
    await api.post("/api/simulator/doors/front/present", {"credential": f"nfc_uid:{ADA}"})
    await api.post("/api/simulator/doors/front/present", {"credential": f"nfc_uid:{UNKNOWN}"})

    status, body = await api.get("/api/events")

    assert status == 200
    seqs = [e["seq"] for e in body]
    assert seqs == sorted(seqs, reverse=True)
    types = [e["type"] for e in body]
    assert types[0] == "access.denied"
    assert "access.granted" in types
    assert types[-2:] == ["gateway.started", "cache.updated"]
    assert all({"id", "type", "at", "data", "seq"} <= set(e) for e in body)
    assert all(ADA not in json.dumps(e) for e in body)

    _, two = await api.get("/api/events?limit=2")
    assert [e["seq"] for e in two] == seqs[:2]


async def test_events_bad_limit_is_400(api: Api) -> None:
    status, body = await api.get("/api/events?limit=lots")

    assert status == 400
    assert "limit" in body["error"]


# --- what-if decisions ----------------------------------------------------------------------


async def test_decide_is_a_what_if(api: Api) -> None:
    before = [e.seq for e in api.gw.events.recent()]

    status, body = await api.post("/api/decide", {"door": "front", "credential": f"nfc_uid:{ADA}"})

    assert status == 200
    assert body["decision"]["granted"] is True
    assert body["decision"]["reason"] == "granted"
    assert body["decision"]["user"] == "ada"
    assert body["decision"]["rule"] == "staff-everywhere"
    assert body["explanation"].startswith('GRANTED at "Front door" (granted)')
    assert not any(api.gw.relays.is_on(door) for door in ("front", "lobby", "office-3"))
    assert not api.gw.relays.is_on("server-room")
    assert [e.seq for e in api.gw.events.recent()] == before
    assert "front" not in sim_readers(api.gw).shown


@pytest.mark.parametrize(
    ("at", "granted", "reason"),
    [
        ("2026-12-01T10:00:00+01:00", True, "granted"),
        ("2026-12-01T21:00:00+01:00", False, "outside_schedule"),
        ("2026-12-25T10:00:00+01:00", False, "holiday"),
        ("2026-12-01T19:30:00Z", False, "outside_schedule"),  # 20:30 in Rome
    ],
)
async def test_decide_at_an_instant(api: Api, at: str, granted: bool, reason: str) -> None:
    status, body = await api.post(
        "/api/decide", {"door": "front", "credential": f"nfc_uid:{BOB}", "at": at}
    )

    assert status == 200
    assert body["decision"]["granted"] is granted
    assert body["decision"]["reason"] == reason


async def test_decide_explains_a_denial(api: Api) -> None:
    _, body = await api.post("/api/decide", {"door": "office-3", "credential": f"nfc_uid:{CARLA}"})

    assert body["decision"]["reason"] == "user_disabled"
    assert "Carla Suspended" in body["explanation"]
    assert "suspended" in body["explanation"]


async def test_decide_bad_credential_names_the_kinds(api: Api) -> None:
    status, body = await api.post("/api/decide", {"door": "front", "credential": "magic:1234"})

    assert status == 400
    for kind in ("nfc_uid", "ntag424", "desfire", "ble_phone_key", "mech_key"):
        assert kind in body["error"]


async def test_decide_bad_value_is_not_echoed(api: Api) -> None:
    value = ADA + "99"  # 8 bytes: no such UID size
    status, body = await api.post(
        "/api/decide", {"door": "front", "credential": f"nfc_uid:{value}"}
    )

    assert status == 400
    assert value not in body["error"]
    assert "nfc_uid" in body["error"]


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"door": "front", "credential": f"nfc_uid:{ADA}", "at": "2026-12-01T10:00:00"}, "UTC"),
        ({"door": "front", "credential": f"nfc_uid:{ADA}", "at": "next tuesday"}, "isoformat"),
        ({"door": "front", "credential": f"nfc_uid:{ADA}", "at": 12}, "'at'"),
        (
            {"door": "lobby", "credential": f"nfc_uid:{ADA}", "at": "0001-01-01T00:00:00+14:00"},
            "out of range",
        ),
        (
            {"door": "front", "credential": f"nfc_uid:{ADA}", "at": "9999-12-31T23:59:59-12:00"},
            "out of range",
        ),
        ({"credential": f"nfc_uid:{ADA}"}, "'door'"),
        ({"door": "front"}, "'credential'"),
        ({"door": "", "credential": f"nfc_uid:{ADA}"}, "'door'"),
        ([1, 2], "JSON object"),
    ],
)
async def test_decide_bad_requests_are_400(api: Api, body: Any, word: str) -> None:
    status, answer = await api.post("/api/decide", body)

    assert status == 400
    assert word in answer["error"]


# --- the simulator --------------------------------------------------------------------------


async def test_present_granted_opens_the_door(api: Api) -> None:
    status, body = await api.post(
        "/api/simulator/doors/front/present", {"credential": f"nfc_uid:{ADA}"}
    )

    assert status == 200
    assert body["decision"]["granted"] is True
    assert body["explanation"].startswith("GRANTED")
    assert api.gw.relays.is_on("front")
    granted = [e.event for e in api.gw.events.recent() if e.event.type == "access.granted"]
    assert [e.data["door"] for e in granted] == ["front"]


async def test_present_denied(api: Api) -> None:
    status, body = await api.post(
        "/api/simulator/doors/server-room/present", {"credential": f"nfc_uid:{ADA}"}
    )

    assert status == 200
    assert body["decision"]["granted"] is False
    assert body["decision"]["reason"] == "assurance_too_low"
    assert not api.gw.relays.is_on("server-room")


async def test_present_malformed_value_is_a_denial_not_an_error(api: Api) -> None:
    status, body = await api.post(
        "/api/simulator/doors/front/present", {"credential": "nfc_uid:xyz"}
    )

    assert status == 200
    assert body["decision"]["reason"] == "unknown_credential"


async def test_present_at_an_unknown_door_is_404(api: Api) -> None:
    status, body = await api.post(
        "/api/simulator/doors/garage/present", {"credential": f"nfc_uid:{ADA}"}
    )

    assert status == 404
    assert "garage" in body["error"]
    assert api.gw.events.recent(1)[0].event.type == "gateway.started"


@pytest.mark.parametrize(
    "data", [b"credential=nfc_uid", b"", b"\xff\xfe{}", b'"nfc_uid:04A1B2C3D4E5F6"']
)
async def test_present_non_json_body_is_400(api: Api, data: bytes) -> None:
    status, body = await api.post("/api/simulator/doors/front/present", data=data)

    assert status == 400
    assert "JSON" in body["error"]
    assert not api.gw.relays.is_on("front")


async def test_present_credential_without_kind_is_400(api: Api) -> None:
    status, body = await api.post("/api/simulator/doors/front/present", {"credential": ADA})

    assert status == 400
    assert "KIND:VALUE" in body["error"]


async def test_present_body_over_16_kib_is_413(api: Api) -> None:
    padding = "x" * MAX_BODY_BYTES
    status, _ = await api.post(
        "/api/simulator/doors/front/present",
        {"credential": f"nfc_uid:{ADA}", "padding": padding},
    )

    assert status == 413
    assert not api.gw.relays.is_on("front")


async def test_a_body_just_under_the_limit_is_read(api: Api) -> None:
    body = {"credential": f"nfc_uid:{ADA}", "padding": ""}
    body["padding"] = "x" * (MAX_BODY_BYTES - len(json.dumps(body)))
    assert len(json.dumps(body)) == MAX_BODY_BYTES

    status, answer = await api.post("/api/simulator/doors/front/present", body)

    assert status == 200
    assert answer["decision"]["granted"] is True


async def test_simulator_routes_only_on_simulated_hardware(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    async with TestClient(TestServer(make_app(gw, simulated=False))) as client:
        present = await client.post(
            "/api/simulator/doors/front/present", json={"credential": f"nfc_uid:{ADA}"}
        )
        health = await client.get("/api/health")

        assert present.status in (404, 405)
        assert health.status == 200
    assert not gw.relays.is_on("front")
