"""Guest invitations in the web app: the operator's page and API, and the guests' redemption.

Operator (behind the admin guard): ``/invitations`` (the page), ``GET /api/invitations``,
``POST /api/invitations`` (201 with the code: the only time it is shown), ``DELETE
/api/invitations/{id}``. Guests (no account; on the main app and the public listener):
``POST /api/invitations/redeem``, over HTTPS or from this machine only (a TLS reverse proxy),
since the code crosses that link; failed codes are counted per client address.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.codec import FormatError, invitation_to_json
from gateway.invitations import (
    MAX_CODE_CHARS,
    DeviceLimitReached,
    InvitationExpired,
    Listed,
    RedeemResult,
    UnknownCode,
)
from gateway.sessions import TooManyAttempts
from gateway.web_admin import static_page
from gateway.web_clients import client_address, private_link

if TYPE_CHECKING:
    from gateway.app import Gateway

_LOGGER = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What a POST /api/invitations may carry.
CREATE_FIELDS = (
    "name",
    "doors",
    "door_tags",
    "valid_from",
    "valid_until",
    "max_devices",
    "days",
    "time_slot",
)
#: A P-256 public key as an uncompressed SEC1 point is 65 bytes; anything much longer is not one.
MAX_PUBLIC_KEY_HEX = 2 * 133
_NO_STORE = {"Cache-Control": "no-store"}
_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    410: web.HTTPGone,
    429: web.HTTPTooManyRequests,
}


def _error(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An HTTP error whose JSON body is ``{"error": message}`` (and ``field`` when one is wrong)."""
    body = {"error": message} if field is None else {"error": message, "field": field}
    return _ERRORS[status](
        text=json.dumps(body),
        content_type="application/json",
        headers=_NO_STORE | (headers or {}),
    )


def listed_json(listed: Listed) -> dict[str, Any]:
    """An invitation as the list shows it: no code, nor its hash; with its devices used."""
    body = invitation_to_json(listed.invitation)
    del body["code_sha256"]
    return body | {"devices_used": listed.devices_used}


def redeemed_json(result: RedeemResult, gw: Gateway) -> dict[str, Any]:
    """What a phone is told after redeeming: its credential, where and when it opens."""
    invitation = invitation_to_json(result.invitation)
    doors = gw.cache.view.doors
    return {
        "credential_id": result.credential.id,
        "name": result.invitation.name,
        "valid_from": invitation["valid_from"],
        "valid_until": invitation["valid_until"],
        "doors": [{"id": d, "name": doors[d].name if d in doors else d} for d in result.doors],
        "days": invitation["days"],
        "time_slot": invitation["time_slot"],
    }


def _redeem_route(gw: Gateway) -> Handler:
    """The guests' route; failed codes count against the service's budget (both listeners)."""

    async def redeem(request: web.Request) -> web.StreamResponse:
        """``{code, public_key: hex}`` → the phone's credential for the invitation (200)."""
        from gateway.web import _body  # noqa: PLC0415 - gateway.web imports this module

        if not private_link(request):
            raise _error(
                403,
                "invitations are redeemed over HTTPS only: publish the gateway through a TLS "
                "reverse proxy",
            )
        address = client_address(request, gw.config.web.trust_forwarded_for)
        attempts = gw.invitations.attempts
        try:
            # Before the lookup: a spent budget gets no answer about any code.
            attempts.check(address, address)
        except TooManyAttempts as err:
            retry = str(max(1, math.ceil(err.retry_after_s)))
            raise _error(
                429,
                f"too many wrong invitation codes; try again in {retry} s",
                headers={"Retry-After": retry},
            ) from None
        body = await _body(request)
        code = body.get("code")
        if not isinstance(code, str) or not code.strip() or len(code) > 2 * MAX_CODE_CHARS:
            raise _error(400, "'code' is required: the invitation code, as a string", "code")
        text = body.get("public_key")
        if not isinstance(text, str) or not 0 < len(text) <= MAX_PUBLIC_KEY_HEX:
            raise _error(
                400, "'public_key' is required: the phone's P-256 key as hex", "public_key"
            )
        try:
            public_key = bytes.fromhex(text)
        except ValueError:
            raise _error(
                400,
                "'public_key' must be hex: the phone's P-256 key as an uncompressed SEC1 point",
                "public_key",
            ) from None
        try:
            result = await gw.invitations.redeem(code, public_key)
        except FormatError as err:
            raise _error(400, str(err), err.path or None) from None
        except UnknownCode as err:
            attempts.failed(address, address)
            try:
                attempts.check(address, address)
            except TooManyAttempts:
                # Logged once, when the budget is spent: the refusals that follow are not.
                _LOGGER.warning(
                    "%s presented too many wrong invitation codes: refused for a while", address
                )
            else:
                _LOGGER.debug("an unknown invitation code was presented from %s", address)
            raise _error(404, str(err)) from None
        except InvitationExpired as err:
            raise _error(410, str(err)) from None
        except DeviceLimitReached as err:
            raise _error(409, str(err)) from None
        return web.json_response(redeemed_json(result, gw), headers=_NO_STORE)

    return redeem


def add_routes(app: web.Application, gw: Gateway, admin: Callable[[Handler], Handler]) -> None:
    """The page, the operator's API (``admin`` wraps it) and the guests' redemption."""

    async def page(request: web.Request) -> web.StreamResponse:
        """The invitations page."""
        return static_page("invitations.html")

    async def script(request: web.Request) -> web.StreamResponse:
        """The invitations page's script."""
        return static_page("invitations.js")

    async def list_invitations(request: web.Request) -> web.StreamResponse:
        """Every invitation with its devices used (never a code)."""
        body = {"invitations": [listed_json(item) for item in gw.invitations.list()]}
        return web.json_response(body, headers=_NO_STORE)

    async def create(request: web.Request) -> web.StreamResponse:
        """A new invitation: 201 with it and its code (shown this once), or 400 naming the field."""
        from gateway.web import _body  # noqa: PLC0415 - gateway.web imports this module

        body = await _body(request)
        for key in body:
            if key not in CREATE_FIELDS:
                raise _error(
                    400, f"unknown field {key!r}; allowed: {', '.join(CREATE_FIELDS)}", key
                )
        try:
            invitation, code = await gw.invitations.create(**body)
        except FormatError as err:
            raise _error(400, str(err), err.path or None) from None
        answer = invitation_to_json(invitation) | {"code": code, "devices_used": 0}
        return web.json_response(answer, status=201, headers=_NO_STORE)

    async def delete(request: web.Request) -> web.StreamResponse:
        """Delete an invitation and its guest's phone keys: 204, or 404."""
        invitation_id = request.match_info["id"]
        try:
            await gw.invitations.delete(invitation_id)
        except LookupError:
            raise _error(404, f"no invitation {invitation_id!r}") from None
        return web.Response(status=204, headers=_NO_STORE)

    app.router.add_get("/invitations", admin(page))
    app.router.add_get("/invitations.js", admin(script))
    app.router.add_get("/api/invitations", admin(list_invitations))
    app.router.add_post("/api/invitations", admin(create))
    app.router.add_post("/api/invitations/redeem", _redeem_route(gw))
    app.router.add_delete("/api/invitations/{id}", admin(delete))


def add_public_routes(app: web.Application, gw: Gateway) -> None:
    """The guests' redemption on the public listener."""
    app.router.add_post("/api/invitations/redeem", _redeem_route(gw))
