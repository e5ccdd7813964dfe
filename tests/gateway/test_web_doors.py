"""The door mapping routes over real HTTP: listing, saving, refusing, and the restart applying it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import aiohttp

from gateway.app import Gateway, run
from gateway.local_settings import settings_path, with_local_settings
from tests.conftest import ConfigFactory, GatewayFactory


async def _put(
    session: aiohttp.ClientSession, base: str, door: str, body: Any
) -> tuple[int, dict[str, Any]]:
    async with session.put(f"{base}/api/settings/doors/{door}", json=body) as response:
        return response.status, await response.json()


async def test_lists_the_sites_doors_with_their_mapping(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    base = f"http://127.0.0.1:{gw.web.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/settings/doors") as response:
            assert response.status == 200
            listing = await response.json()
        async with session.get(f"{base}/doors") as response:
            assert response.status == 200
            page = await response.text()
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        async with session.get(f"{base}/doors.js") as response:
            assert response.status == 200
            assert "adminFetch" in await response.text()
    doors = {d["id"]: d for d in listing["doors"]}
    assert set(doors) == set(gw.cache.view.doors) == {"front", "lobby", "office-3", "server-room"}
    front = doors["front"]
    assert front["name"] == "Front door"
    assert front["unlock_seconds"] == 5
    assert front["min_assurance"] == "low"
    assert front["mapping"]["held_open_s"] == 120.0
    assert front["mapping"]["wiring"] == "fail_secure"
    assert front["saved"] == []
    assert front["board"] is None
    assert listing["backend"] == "simulated"
    assert listing["restart_pending"] is False
    held = next(f for f in listing["fields"] if f["name"] == "held_open_s")
    assert (held["min"], held["max"]) == (30.0, 600.0)
    assert 'id="door-list"' in page
    assert 'src="/doors.js"' in page
    assert "<script>" not in page  # the page's policy allows no inline script


async def test_a_valid_mapping_is_saved_and_a_restart_asked_for(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    base = f"http://127.0.0.1:{gw.web.port}"
    path = settings_path(gw.config.gateway.state_dir)
    async with aiohttp.ClientSession() as session:
        status, answer = await _put(
            session, base, "front", {"held_open_s": 90, "wiring": "fail_secure"}
        )
        assert status == 200, answer
        assert answer["restart"] is True
        assert answer["door"]["mapping"]["held_open_s"] == 90.0
        assert sorted(answer["door"]["saved"]) == ["held_open_s", "wiring"]
        async with asyncio.timeout(2):
            await gw.restart_requested.wait()
        async with session.get(f"{base}/api/settings/doors") as response:
            listing = await response.json()
    assert listing["restart_pending"] is True
    saved = json.loads(path.read_text())
    assert saved["doors"] == {"front": {"held_open_s": 90, "wiring": "fail_secure"}}


async def test_invalid_requests_are_refused_and_nothing_is_written(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    base = f"http://127.0.0.1:{gw.web.port}"
    path = settings_path(gw.config.gateway.state_dir)
    async with aiohttp.ClientSession() as session:
        status, answer = await _put(session, base, "front", {"held_open_s": 5})
        assert status == 400
        assert answer["field"] == "held_open_s"
        assert "30.0 to 600.0" in answer["error"]
        assert answer["errors"] == [{"field": "held_open_s", "error": answer["error"]}]

        status, answer = await _put(session, base, "front", {"wiring": "sideways"})
        assert (status, answer["field"]) == (400, "wiring")
        assert "fail_safe" in answer["error"]

        status, answer = await _put(session, base, "front", {"unlock_seconds": 2})
        assert (status, answer["field"]) == (400, "unlock_seconds")
        assert "allowed keys" in answer["error"]
        assert "held_open_s" in answer["error"]

        status, answer = await _put(session, base, "front", {"board": {"address": 1, "slot": 0}})
        assert (status, answer["field"]) == (400, "board")
        assert "simulated" in answer["error"]

        status, answer = await _put(session, base, "back-door", {"held_open_s": 90})
        assert status == 404
        assert "back-door" in answer["error"]

        async with session.put(
            f"{base}/api/settings/doors/front",
            data="held_open_s=90",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response:
            assert response.status == 400
            assert "JSON" in (await response.json())["error"]
        async with session.put(
            f"{base}/api/settings/doors/front",
            data="{not json",
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 400
    assert not path.exists()
    assert not gw.restart_requested.is_set()


async def test_the_run_loop_restarts_with_the_saved_mapping(
    gateway_config: ConfigFactory,
) -> None:
    config = gateway_config()
    started: asyncio.Queue[Gateway] = asyncio.Queue()
    task = asyncio.create_task(
        run(config, reload=lambda: with_local_settings(config), started=started.put_nowait)
    )
    try:
        async with asyncio.timeout(15):
            first = await started.get()
            assert "front" not in first.config.doors
            base = f"http://127.0.0.1:{first.web.port}"
            async with aiohttp.ClientSession() as session:
                status, answer = await _put(session, base, "front", {"held_open_s": 75})
            assert status == 200, answer
            second = await started.get()
            assert second is not first
            assert second.config.doors["front"].held_open_s == 75.0
            assert second.doors is not first.doors
            # The new gateway serves the page again, and shows nothing left to apply.
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{base}/api/settings/doors") as response,
            ):
                listing = await response.json()
            front = next(d for d in listing["doors"] if d["id"] == "front")
            assert front["mapping"]["held_open_s"] == 75.0
            assert front["saved"] == ["held_open_s"]
            assert listing["restart_pending"] is False
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # run's own handler: a clean stop
        async with asyncio.timeout(15):
            await task
    assert not second._started


async def test_a_door_moves_to_another_boards_slot(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    boards = [{"address": 1, "doors": ["front", "lobby"]}, {"address": 2, "doors": ["office-3"]}]
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual", "boards": boards}))
    base = f"http://127.0.0.1:{gw.web.port}"
    path = settings_path(gw.config.gateway.state_dir)
    async with aiohttp.ClientSession() as session:
        status, answer = await _put(session, base, "lobby", {"board": {"address": 2, "slot": 0}})
        assert (status, answer["field"]) == (400, "board")
        assert "office-3" in answer["error"]  # that slot drives another door
        assert not path.exists()

        status, answer = await _put(session, base, "front", {"board": {"address": 2, "slot": 1}})
        assert status == 200, answer
        assert answer["door"]["board"] == {"address": 2, "slot": 1}
        assert "board" in answer["door"]["saved"]
    saved = json.loads(path.read_text())["hardware"]["boards"]
    by_address = {b["address"]: b["doors"] for b in saved}
    assert by_address[2] == ["office-3", "front"]
    assert by_address[1][1] == "lobby"  # lobby keeps its relay
