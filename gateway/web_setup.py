"""The setup wizard's own routes: claiming the gateway and the clock check.

The wizard (``/setup``) walks an installer through: the admin account (done by logging in),
claiming the gateway for the cloud, checking the clock and timezone, mapping the doors
(``/doors``) and the hardware self-test (``/selftest``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.web_admin import static_page

if TYPE_CHECKING:
    from gateway.app import Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GATEWAY: web.AppKey[Gateway] = web.AppKey("setup-gateway")


def _claim_status(err: Exception) -> int:
    """A claim's HTTP status by what went wrong: the installer's mistake or the cloud's."""
    from gateway import provisioning  # noqa: PLC0415 - cryptography only when claiming

    statuses: dict[type[Exception], int] = {
        provisioning.InvalidClaimInput: 400,
        provisioning.AlreadyClaimed: 409,
        provisioning.UnknownClaimCode: 422,
        provisioning.ClaimCodeExpired: 422,
        provisioning.ClaimCodeUsed: 422,
        provisioning.CloudUnreachable: 502,
        provisioning.BadClaimAnswer: 502,
    }
    return statuses.get(type(err), 400)


def _error(status: int, message: str, field: str | None = None) -> web.HTTPException:
    body = {"error": message} | ({"field": field} if field else {})
    return _status_class(status)(text=json.dumps(body), content_type="application/json")


def _status_class(status: int) -> type[web.HTTPException]:
    for cls in (
        web.HTTPBadRequest,
        web.HTTPConflict,
        web.HTTPUnprocessableEntity,
        web.HTTPBadGateway,
    ):
        if cls.status_code == status:
            return cls
    return web.HTTPBadRequest


async def setup_state(request: web.Request) -> web.Response:
    """What the wizard shows: claimed or not, the clock, the site's timezone, the doors."""
    from gateway import provisioning  # noqa: PLC0415 - cryptography only on this page

    gw = request.app[GATEWAY]
    # Reads the identity and device key files: off the doors' event loop.
    state = await asyncio.to_thread(provisioning.provisioning_state, gw.config.gateway.state_dir)
    site = gw.cache.view.site
    return web.json_response(
        {
            "provisioning": state.to_json(),
            "cloud_link": gw.cloud is not None,
            "now": gw.clock().isoformat(timespec="seconds"),
            "site": {"name": site.name, "timezone": site.timezone},
            "doors": len(gw.cache.view.doors),
            "backend": gw.config.hardware.backend,
        },
        headers={"Cache-Control": "no-store"},
    )


async def claim(request: web.Request) -> web.Response:
    """``{cloud_url, claim_code, replace?}``: claim this gateway, then restart onto the cloud."""
    from gateway import provisioning  # noqa: PLC0415 - cryptography only when claiming
    from gateway.web import _body  # noqa: PLC0415 - gateway.web imports this module

    gw = request.app[GATEWAY]
    body = await _body(request)
    url, code, replace = body.get("cloud_url"), body.get("claim_code"), body.get("replace", False)
    if not isinstance(url, str) or not url:
        raise _error(400, "'cloud_url' is required: the cloud's https:// address", "cloud_url")
    if not isinstance(code, str) or not code:
        raise _error(
            400, "'claim_code' is required: the code the cloud console shows", "claim_code"
        )
    if not isinstance(replace, bool):
        raise _error(400, "'replace' must be true or false", "replace")
    try:
        # In a thread with its own loop: the key generation and fsynced writes would otherwise
        # hold up the doors' event loop.
        identity = await asyncio.to_thread(
            provisioning.claim_sync, url, code, gw.config.gateway.state_dir, replace=replace
        )
    except provisioning.ClaimError as err:
        status = _claim_status(err)
        field = "cloud_url" if isinstance(err, provisioning.CloudUnreachable) else "claim_code"
        raise _error(status, str(err), field) from None
    except provisioning.IdentityError as err:
        raise _error(409, str(err)) from None
    gw.request_restart(f"claimed as {identity.gateway_id}")
    return web.json_response({"gateway_id": identity.gateway_id, "restart": True})


async def page(request: web.Request) -> web.StreamResponse:
    """The setup wizard."""
    return static_page("setup.html")


async def script(request: web.Request) -> web.StreamResponse:
    """The setup wizard's script."""
    return static_page("setup.js")


def add_routes(app: web.Application, gw: Gateway, admin: Callable[[Handler], Handler]) -> None:
    """``/setup``, ``/setup.js``, ``GET /api/setup`` and ``POST /api/provisioning/claim``."""
    app[GATEWAY] = gw
    app.router.add_get("/setup", admin(page))
    app.router.add_get("/setup.js", admin(script))
    app.router.add_get("/api/setup", admin(setup_state))
    app.router.add_post("/api/provisioning/claim", admin(claim))
