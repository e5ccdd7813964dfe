"""The local web app and JSON API (aiohttp), on 127.0.0.1 unless configured otherwise."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from drivers.base import CredentialRead
from gateway import access, credentials
from gateway.codec import credential_to_json
from gateway.enrolment import EnrolmentError, NothingPresented
from gateway.explain import decision_to_json, explain
from gateway.model import CredentialKind, Decision, Door
from gateway.openapi import add_routes as add_openapi_routes
from gateway.outbox import event_to_json
from gateway.pins import parse_typed_credential_off_loop
from gateway.simulator import SimulatorError
from gateway.web_admin import AdminGuard, static_page

if TYPE_CHECKING:
    from gateway.app import Gateway

_LOGGER = logging.getLogger(__name__)
MAX_BODY_BYTES = 16 * 1024
DEFAULT_ENROL_TIMEOUT_S = 30.0
#: Cards the virtual backend presents as genuine tags at the door's simulated NFC reader.
SECURE_CARDS = frozenset({CredentialKind.NTAG424, CredentialKind.DESFIRE})
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway")


class WebServerError(Exception):
    """The web server could not start; the message says why and what to change."""


class BadRequest(web.HTTPBadRequest):
    """A 400 whose JSON body names what is wrong and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


def _gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY_KEY]


async def _body(request: web.Request) -> dict[str, Any]:
    # Only JSON: a cross-site form or text/plain post from a browser page cannot pass as one.
    if request.content_type != "application/json":
        raise BadRequest("the body must be JSON, sent with 'Content-Type: application/json'")
    try:
        body = await request.json()
    except (ValueError, RecursionError, LookupError):
        # ValueError covers bad JSON, bad UTF-8 and integers past Python's digit limit;
        # RecursionError deep nesting; LookupError an unknown charset.
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{key}' is required and must be a non-empty string")
    return value


def _int_param(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer, not {text[:20]!r}") from None


async def index(request: web.Request) -> web.StreamResponse:
    """The dashboard page (plain HTML and JS, no build step)."""
    return static_page("index.html")


async def health(request: web.Request) -> web.Response:
    """Liveness plus the cache, the outbox backlog, the links and the boards."""
    return web.json_response(await health_json(_gateway(request)))


async def diagnostics(request: web.Request) -> web.Response:
    """A zip for support: versions, redacted config, health, doors, events, state listing."""
    from gateway.diagnostics import bundle  # noqa: PLC0415

    gw = _gateway(request)
    now = gw.clock()
    body = await bundle(gw, await health_json(gw), now)
    name = f"luckey-diagnostics-{now.strftime('%Y%m%dT%H%M%SZ')}.zip"
    return web.Response(
        body=body,
        content_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def health_json(gw: Gateway) -> dict[str, Any]:
    """What ``GET /api/health`` answers."""
    stats = await gw.outbox.stats()
    return {
        "status": "ok",
        "site": gw.cache.view.site.name,
        "cache": {
            "version": gw.cache.version,
            "needs_resync": gw.cache.needs_resync,
            "reset_reason": gw.cache.reset_reason,
            "counts": gw.cache.view.counts(),
        },
        "outbox": {
            "rows": stats.rows,
            "dropped": {p.name.lower(): n for p, n in stats.dropped.items()},
        },
        "cloud": _cloud_json(gw),
        "officernd": {
            "activated": gw.officernd.activation is not None,
            "state": gw.officernd.sync.state if gw.officernd.sync is not None else None,
        },
        "boards": [
            {**board, "since": board["since"].isoformat()}
            for _, board in sorted(gw.metrics.boards.items())
        ],
    }


def _cloud_json(gw: Gateway) -> dict[str, Any]:
    """Whether the cloud link is configured and up, and for how long it has been down."""
    if gw.cloud is None:
        return {"enabled": False}
    offline = gw.cloud.offline_for(gw.clock())
    return {
        "enabled": True,
        "online": offline is None,
        "offline_s": round(offline.total_seconds(), 1) if offline is not None else 0,
    }


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics, in the exposition format the scraper asks for."""
    gw = _gateway(request)
    body, content_type = await gw.metrics.render(gw, gw.clock(), request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def doors(request: web.Request) -> web.Response:
    """Every door: its mode, lock, position and active alarms (null: not known yet)."""
    gw = _gateway(request)
    return web.json_response(
        [_door_json(gw, door) for door in sorted(gw.cache.view.doors.values(), key=lambda d: d.id)]
    )


def _door_json(gw: Gateway, door: Door) -> dict[str, Any]:
    status = gw.doors.status(door.id)
    alarms = []
    if status is not None:
        flags = (
            ("forced_open", status.forced_open_alarm),
            ("held_open", status.held_open_alarm),
            ("tamper", status.tamper_active),
        )
        alarms = [name for name, active in flags if active]
    return {
        "id": door.id,
        "name": door.name,
        "mode": gw.doors.mode(door.id).value,
        "unlocked": gw.doors.unlocked(door.id),  # as the hardware confirmed; null: not known
        "open": status.door_open if status else None,
        "alarms": alarms,
        "relay_energised": gw.doors.relay_on(door.id),
        "min_assurance": door.min_assurance.label,
    }


async def users(request: web.Request) -> web.Response:
    """Cached users with their tags, ``?offset=&limit=`` (limit at most 1000)."""
    offset = max(0, _int_param(request, "offset", 0))
    limit = min(1000, max(1, _int_param(request, "limit", 100)))
    view = _gateway(request).cache.view
    ids = sorted(view.users)[offset : offset + limit]
    return web.json_response(
        {"total": len(view.users), "users": [user_summary(view.users[i]) for i in ids]}
    )


def user_summary(user: Any) -> dict[str, Any]:
    """The JSON a user list shows for one user."""
    return {
        "id": user.id,
        "name": user.name,
        "status": user.status.value,
        "tags": sorted(user.tags),
    }


async def events(request: web.Request) -> web.Response:
    """The most recent events, newest first (``?limit=``, at most 200)."""
    limit = min(200, max(1, _int_param(request, "limit", 50)))
    return web.json_response(
        [
            {"seq": e.seq, **json.loads(event_to_json(e.event))}
            for e in _gateway(request).events.recent(limit)
        ]
    )


async def decide(request: web.Request) -> web.Response:
    """What-if: decide a credential at a door (now, or ``at``) without touching the door."""
    gw = _gateway(request)
    body = await _body(request)
    door = _field(body, "door")
    hashing = gw.cache.view.site.pin_hashing
    try:
        # A typed PIN is hashed (slow): on the PIN hashing thread.
        kind, value = await parse_typed_credential_off_loop(_field(body, "credential"), hashing)
        at = gw.clock() if body.get("at") is None else datetime.fromisoformat(_field(body, "at"))
    except ValueError as err:
        raise BadRequest(str(err)) from None
    if at.tzinfo is None:
        raise BadRequest("'at' must carry a UTC offset, e.g. 2026-12-01T09:00:00+01:00")
    view = gw.cache.view
    credential = view.credential(kind, value)
    try:
        mode = gw.doors.mode_at(door, at)
        decision = access.decide(credentials.assumed(credential, kind), door, at, view, mode)
        explanation = explain(decision, view, credential)
    except OverflowError:
        raise BadRequest(f"'at' {at.isoformat()} is out of range") from None
    return web.json_response({"decision": decision_to_json(decision), "explanation": explanation})


async def present(request: web.Request) -> web.Response:
    """Simulated hardware: hold a credential to a door's virtual reader."""
    gw = _gateway(request)
    door = request.match_info["door"]
    body = await _body(request)
    text = _field(body, "credential")
    kind, sep, value = text.partition(":")
    if not sep:
        raise BadRequest("'credential' must be KIND:VALUE, e.g. nfc_uid:04A1B2C3D4E5F6")
    if door not in gw.cache.view.doors:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no door {door!r}"}), content_type="application/json"
        )
    decision = await _present(gw, door, kind, value)
    view = gw.cache.view
    try:
        parsed_kind, parsed_value = credentials.parse_credential(text)
        credential = view.credential(parsed_kind, parsed_value)
    except ValueError:
        credential = None  # a malformed read: the decision already says unknown_credential
    return web.json_response(
        {"decision": decision_to_json(decision), "explanation": explain(decision, view, credential)}
    )


async def _present(gw: Gateway, door: str, kind: str, value: str) -> Decision:
    """A read at the door's reader; on a virtual board, a mechatronic key answers for real."""
    try:
        parsed_kind, parsed_value = credentials.parse_credential(f"{kind}:{value}")
    except ValueError:
        parsed_kind = None
    simulator = gw.simulator
    try:
        if parsed_kind is CredentialKind.MECHATRONIC_KEY and simulator.simulates_keys(door):
            return await simulator.present_key(door, parsed_value)
        if kind == CredentialKind.PIN.value and gw.config.hardware.backend == "virtual":
            return await simulator.enter_pin(door, value)
        if gw.config.hardware.backend == "virtual":
            if parsed_kind in SECURE_CARDS:
                return await simulator.present_card(door, parsed_kind, parsed_value)
            if parsed_kind is CredentialKind.BLE_PHONE_KEY:
                return await simulator.present_phone(door, parsed_value)
    except SimulatorError as err:
        raise web.HTTPConflict(
            text=json.dumps({"error": str(err)}), content_type="application/json"
        ) from None
    return await gw.entry.handle(CredentialRead(door, kind, value))


async def enrol_phone(request: web.Request) -> web.Response:
    """Register a phone's public key (hex SEC1 point) for a user: 201 with the new credential."""
    body = await _body(request)
    try:
        public_key = bytes.fromhex(_field(body, "public_key"))
    except ValueError:
        raise BadRequest(
            "'public_key' must be hex: the phone's P-256 key as an uncompressed SEC1 point"
        ) from None
    try:
        credential = await _gateway(request).enrolment.enrol_phone(
            request.match_info["user"], public_key
        )
    except EnrolmentError as err:
        raise BadRequest(str(err)) from None
    return web.json_response({"credential": credential_to_json(credential)}, status=201)


async def enrol_pin(request: web.Request) -> web.Response:
    """Set a user's PIN (``{"pin": "4827"}``, 4 to 7 digits): 201 with the new credential."""
    body = await _body(request)
    digits = body.get("pin")
    if not isinstance(digits, str):
        raise BadRequest("pin: expected the PIN as a string of 4 to 7 digits")
    try:
        credential = await _gateway(request).enrolment.enrol_pin(request.match_info["user"], digits)
    except EnrolmentError as err:
        raise BadRequest(str(err)) from None
    return web.json_response({"credential": credential_to_json(credential)}, status=201)


async def enrol_card(request: web.Request) -> web.Response:
    """Enrol mode at a door's reader: the next card presented there becomes the user's."""
    body = await _body(request)
    user = _field(body, "user")
    timeout_s = body.get("timeout_s", DEFAULT_ENROL_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise BadRequest("'timeout_s' must be a number of seconds")
    try:
        credential = await _gateway(request).enrolment.enrol_card(
            request.match_info["door"], user, float(timeout_s)
        )
    except NothingPresented as err:
        # Not 408: clients may resend that on their own, putting the reader back in enrol mode.
        raise web.HTTPConflict(
            text=json.dumps({"error": str(err)}), content_type="application/json"
        ) from None
    except EnrolmentError as err:
        raise BadRequest(str(err)) from None
    return web.json_response({"credential": credential_to_json(credential)}, status=201)


async def new_phone(request: web.Request) -> web.Response:
    """Simulator: a phone with the reference app, enrolled for a user; 201 with its credential."""
    body = await _body(request)
    try:
        credential = await _gateway(request).simulator.new_phone(_field(body, "user"))
    except (EnrolmentError, SimulatorError) as err:
        raise BadRequest(str(err)) from None
    return web.json_response({"credential": credential_to_json(credential)}, status=201)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_PROXY_HEADERS = (
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Real-IP",
)


def is_local_request(request: web.Request) -> bool:
    """True for a request addressed to this machine by its loopback name, not forwarded.

    Checking the Host header keeps a web page the gateway's own browser opens from reaching
    the admin routes through a DNS name rebound to 127.0.0.1.
    """
    # A reverse proxy in front of this port would make every request look local (it may even
    # rewrite Host to 127.0.0.1): anything it marks as forwarded is not from here.
    forwarded = any(header in request.headers for header in _PROXY_HEADERS)
    return not forwarded and request.url.host in _LOCAL_HOSTS


def local_only(handler: Handler) -> Handler:
    """Serve ``handler`` only to requests addressed to this machine by its loopback name."""

    async def checked(request: web.Request) -> web.StreamResponse:
        if not is_local_request(request):
            raise web.HTTPForbidden(
                text=json.dumps(
                    {"error": "this route answers requests to 127.0.0.1 or localhost only"}
                ),
                content_type="application/json",
            )
        return await handler(request)

    return checked


def make_app(gw: Gateway, *, simulated: bool, local: bool = False) -> web.Application:
    """The aiohttp application for a gateway.

    ``simulated``: the simulator's routes. ``local``: the server listens on loopback only, so
    requests from this machine pass the admin guard without a session (the command line).
    Everything else that reads the site or changes anything needs an admin session.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[GATEWAY_KEY] = gw
    guard = AdminGuard(
        gw.admin,
        is_local=is_local_request if local else (lambda _: False),
        secure_cookies=gw.web_tls is not None,
        two_factor_required=lambda: (
            gw.config.web.require_admin_2fa or gw.cache.view.site.require_admin_2fa
        ),
    )
    admin = guard.require
    guard.add_routes(app)
    add_openapi_routes(app)
    app.router.add_get("/", admin(index))
    app.router.add_get("/api/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/doors", admin(doors))
    app.router.add_get("/api/users", admin(users))
    app.router.add_get("/api/events", admin(events))
    app.router.add_post("/api/decide", admin(decide))
    app.router.add_get("/api/diagnostics", admin(diagnostics))
    app.router.add_post("/api/users/{user}/phones", admin(enrol_phone))
    app.router.add_post("/api/users/{user}/pin", admin(enrol_pin))
    app.router.add_post("/api/doors/{door}/enrol", admin(enrol_card))
    if simulated:
        app.router.add_post("/api/simulator/doors/{door}/present", admin(present))
        app.router.add_post("/api/simulator/phones", admin(new_phone))
    # Imported here: the OfficeRnD pages need the web module's helpers.
    from gateway.officernd.routes import add_admin_routes, add_public_routes  # noqa: PLC0415

    add_public_routes(app, gw)
    add_admin_routes(app, gw, local_only=admin)
    from gateway import (  # noqa: PLC0415
        web_access,
        web_doors,
        web_invitations,
        web_journal,
        web_live,
        web_setup,
    )

    web_live.add_routes(app, gw, admin)
    web_invitations.add_routes(app, gw, admin)
    web_journal.add_routes(app, gw, admin)
    web_doors.add_routes(app, gw, admin)
    web_setup.add_routes(app, gw, admin)
    web_access.add_routes(app, gw, admin)
    return app


def make_public_app(gw: Gateway) -> web.Application:
    """The application of ``[web] public_port``: only what outsiders may reach."""
    from gateway import web_invitations  # noqa: PLC0415
    from gateway.officernd.routes import add_public_routes  # noqa: PLC0415

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[GATEWAY_KEY] = gw
    add_public_routes(app, gw)
    web_invitations.add_public_routes(app, gw)
    return app


class WebServer:
    """Serves the app on one host and port; ``start``/``stop``."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self._ssl_context = ssl_context
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self.port: int | None = None
        self._set_up = False

    async def start(self) -> None:
        """Bind and serve; ``port`` then holds the bound port."""
        await self._runner.setup()
        self._set_up = True
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl_context)
        try:
            await site.start()
        except OSError as err:
            raise WebServerError(
                f"cannot listen on {self._host}:{self._port} ({err.strerror or err}); "
                "choose another [web] port or host in the configuration"
            ) from err
        server = site._server  # aiohttp keeps the bound socket there; needed for port 0
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        scheme = "https" if self._ssl_context is not None else "http"
        _LOGGER.info("web app on %s://%s:%d/", scheme, self._host, self.port)

    async def stop(self) -> None:
        """Stop serving (also after a failed start, e.g. port in use); idempotent."""
        if self._set_up:
            self._set_up = False
            await self._runner.cleanup()
