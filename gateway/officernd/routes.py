"""The OfficeRnD pages and endpoints of the local web app.

Public (``add_public_routes``; also on ``[web] public_port``, the listener a proxy publishes):

- ``POST /hooks/officernd``: OfficeRnD's webhook deliveries (the signature is what is trusted,
  not the address).
- ``/member`` and ``/api/member/...`` (``[officernd] login``): members log in with their
  OfficeRnD email and password (``gateway.member_api``), over HTTPS or from this machine only
  (a TLS reverse proxy on the gateway), since the password crosses that link.

Settings → OfficeRnD (``add_admin_routes``; on a loopback ``[web] port`` only, to local
requests): ``GET /officernd`` (the page), ``GET /api/officernd/status``, ``POST|DELETE
/api/officernd/activation``, ``POST /api/officernd/reload``, ``POST /api/officernd/sync``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.member_api import add_member_routes
from gateway.officernd.activation import (
    ActivationError,
    activate,
    describe_failure,
    remove_activation,
    scopes_for,
)
from gateway.officernd.client import DEFAULT_API_BASE, DEFAULT_IDENTITY_URL, OfficeRnDError
from gateway.officernd.login import MemberLogin
from gateway.officernd.service import OfficeRnDService
from gateway.officernd.sync import RefusedByCache
from gateway.sessions import LoginLimiter, Sessions
from gateway.web_clients import client_address, private_link

if TYPE_CHECKING:
    from gateway.app import Gateway

_LOGGER = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE_KEY: web.AppKey[OfficeRnDService] = web.AppKey("officernd")
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("officernd-gateway")


def _json_error(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": message}), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise _json_error(
            web.HTTPBadRequest, "the body must be JSON (Content-Type: application/json)"
        )
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise _json_error(web.HTTPBadRequest, "the body must be a JSON object")
    return body


def _text(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise _json_error(web.HTTPBadRequest, f"'{key}' is required and must be a non-empty string")
    return value


async def status(request: web.Request) -> web.Response:
    """Activation, sync state, webhook counts and problems (never a secret)."""
    return web.json_response(request.app[SERVICE_KEY].status())


async def activate_route(request: web.Request) -> web.Response:
    """Check the organisation and application against OfficeRnD; store them only if they work."""
    service = request.app[SERVICE_KEY]
    gw = request.app[GATEWAY_KEY]
    body = await _body(request)
    org = _text(body, "org")
    try:
        _, report = await activate(
            gw.config.gateway.state_dir,
            org,
            _text(body, "client_id"),
            _text(body, "client_secret"),
            api_base=_text(body, "api_base", DEFAULT_API_BASE),
            identity_url=_text(body, "identity_url", DEFAULT_IDENTITY_URL),
            scopes=scopes_for(gw.config.officernd),
        )
    except ActivationError as err:
        raise _json_error(web.HTTPBadRequest, str(err)) from None
    except OfficeRnDError as err:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": describe_failure(err, org=org), "kind": type(err).__name__}),
            content_type="application/json",
        ) from None
    await service.reload()
    return web.json_response(
        {
            "activated": True,
            "org": report.org,
            "scopes": list(report.scopes),
            "members_visible": report.members_visible,
            "read_rate_remaining": report.read_rate_remaining,
        }
    )


async def deactivate_route(request: web.Request) -> web.Response:
    """Forget the activation and remove what OfficeRnD made from the cache."""
    service = request.app[SERVICE_KEY]
    gw = request.app[GATEWAY_KEY]
    had = remove_activation(gw.config.gateway.state_dir)
    removed = await service.reload()  # not activated any more: OfficeRnD's entities go
    return web.json_response({"deactivated": had, "removed": removed})


async def reload_route(request: web.Request) -> web.Response:
    """Take up an activation the CLI stored or removed."""
    await _body(request)  # JSON only: a cross-site form cannot send it
    await request.app[SERVICE_KEY].reload()
    return web.Response(status=204)


async def sync_route(request: web.Request) -> web.Response:
    """A full sync now; its summary."""
    service = request.app[SERVICE_KEY]
    await _body(request)  # JSON only: a cross-site form cannot send it
    try:
        summary = await service.sync_now()
    except RuntimeError as err:
        raise _json_error(web.HTTPConflict, str(err)) from None
    except OfficeRnDError as err:
        raise _json_error(web.HTTPBadGateway, describe_failure(err)) from None
    except RefusedByCache as err:
        raise _json_error(web.HTTPConflict, str(err)) from None
    return web.json_response(summary.to_json() | {"problem_list": list(summary.problems[:50])})


async def page(request: web.Request) -> web.StreamResponse:
    """Settings → OfficeRnD (plain HTML and JS)."""
    text = resources.files("gateway").joinpath("web/officernd.html").read_text(encoding="utf-8")
    return web.Response(text=text, content_type="text/html")


def member_over_tls(trust_forwarded_for: bool) -> Middleware:
    """Member routes only over HTTPS or from this machine (a TLS proxy): passwords cross them."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(("/api/member/", "/member")):
            return await handler(request)
        if not private_link(request):
            raise _json_error(
                web.HTTPForbidden,
                "members log in over HTTPS only: publish the gateway through a TLS reverse proxy",
            )
        # Behind the reverse proxy on this machine, the login limits count per member, not
        # per proxy.
        client = client_address(request, trust_forwarded_for)
        if client != (request.remote or "unknown"):
            request = request.clone(remote=client)
        return await handler(request)

    return middleware


def add_public_routes(app: web.Application, gw: Gateway) -> None:
    """What outsiders may reach: OfficeRnD's webhooks and, if enabled, member login."""
    service = gw.officernd
    app.router.add_post(service.webhook_path, service.receiver.handle)
    section = gw.config.officernd
    if not section.login:
        return
    login = MemberLogin(
        lambda: service.client,
        Sessions(ttl_s=section.session_minutes * 60.0),
        LoginLimiter(),
        user_id_prefix=section.mapping_settings().user_id_prefix,
        user_exists=lambda user_id: user_id in gw.cache.view.users,
    )
    app.middlewares.append(member_over_tls(gw.config.web.trust_forwarded_for))
    add_member_routes(
        app,
        login=login,
        view=lambda: gw.cache.view,
        enrol_phone=gw.enrolment.enrol_phone,
        secure_cookies=True,
    )


def add_admin_routes(
    app: web.Application, gw: Gateway, *, local_only: Callable[[Handler], Handler]
) -> None:
    """Settings → OfficeRnD: status, activation, deactivation, reload, sync (local requests)."""
    app[SERVICE_KEY] = gw.officernd
    app[GATEWAY_KEY] = gw
    app.router.add_get("/officernd", local_only(page))
    app.router.add_get("/api/officernd/status", local_only(status))
    app.router.add_post("/api/officernd/activation", local_only(activate_route))
    app.router.add_delete("/api/officernd/activation", local_only(deactivate_route))
    app.router.add_post("/api/officernd/reload", local_only(reload_route))
    app.router.add_post("/api/officernd/sync", local_only(sync_route))
