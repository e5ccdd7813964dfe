"""The setup wizard's routes: the state it shows, and claiming from the web app."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import GatewayFactory
from tests.gateway.test_provisioning import EXPIRED, VALID, FakeClaimCloud, cloud  # noqa: F401


async def test_the_wizard_claims_the_gateway_and_asks_for_a_restart(
    start_gateway: GatewayFactory,
    cloud: FakeClaimCloud,  # noqa: F811
) -> None:
    gw = await start_gateway()
    base = f"http://127.0.0.1:{gw.web.port}"
    claim_url = f"{base}/api/provisioning/claim"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/setup") as response:
            state = await response.json()
        assert state["provisioning"]["state"] == "unclaimed"
        assert state["site"]["timezone"] == gw.cache.view.site.timezone
        assert state["doors"] == len(gw.cache.view.doors)

        async with session.post(claim_url, json={"cloud_url": cloud.url}) as response:
            assert response.status == 400
            assert (await response.json())["field"] == "claim_code"
        body = {"cloud_url": cloud.url, "claim_code": EXPIRED}
        async with session.post(claim_url, json=body) as response:
            assert response.status == 422
            refused = await response.json()
            assert refused["field"] == "claim_code"
            assert "expired" in refused["error"]
        body = {"cloud_url": "http://127.0.0.1:9", "claim_code": VALID}  # nothing listens
        async with session.post(claim_url, json=body) as response:
            assert response.status == 502
            assert (await response.json())["field"] == "cloud_url"
        assert not gw.restart_requested.is_set()
        assert not (gw.config.gateway.state_dir / "cloud" / "identity.json").exists()

        body = {"cloud_url": cloud.url, "claim_code": VALID}
        async with session.post(claim_url, json=body) as response:
            assert response.status == 200
            assert (await response.json())["gateway_id"] == "gw-1"
        async with asyncio.timeout(2):
            await gw.restart_requested.wait()  # the run loop starts the cloud link next
        identity = json.loads((gw.config.gateway.state_dir / "cloud" / "identity.json").read_text())
        assert identity["gateway_id"] == "gw-1"

        async with session.post(claim_url, json=body) as response:
            assert response.status == 409  # claimed already: re-provisioning is explicit
        async with session.get(f"{base}/setup") as response:
            assert response.status == 200
            assert 'id="claim-code"' in await response.text()


async def test_claiming_needs_the_admin_off_this_machine(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    url = f"http://127.0.0.1:{gw.web.port}/api/provisioning/claim"
    headers = {"Host": f"rebound.example:{gw.web.port}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"cloud_url": "x", "claim_code": "y"}, headers=headers) as response,
    ):
        assert response.status == 401
