"""The member API: what the mobile app and the member web page call, after an OfficeRnD login.

A member logs in with their OfficeRnD email and password (``gateway.officernd.login``) and gets
a gateway session, as a bearer token for the app and as an HttpOnly cookie for the page. A
browser sends cookies with cross-site requests too, so a POST authenticated by the cookie must
carry ``X-Requested-With: luckey``: a cross-site form cannot set a header, and a cross-site
``fetch`` that sets one needs a CORS preflight this server never grants. Every answer is JSON,
``{"error": ...}`` on failure, and is not cached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from importlib import resources
from typing import Any

from aiohttp import web

from gateway.codec import credential_to_json
from gateway.enrolment import EnrolmentError
from gateway.model import AccessRule, Credential, CredentialKind, User
from gateway.officernd.login import LoginRefused, MemberLogin
from gateway.sessions import Session
from gateway.view import CacheView
from gateway.web import BadRequest, _body

_LOGGER = logging.getLogger(__name__)

COOKIE = "luckey_member"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "luckey"
#: The refusal that tells an enrolment policy's "no Member App access" from a bad key.
MEMBER_APP_ACCESS = "Member App access"
#: A P-256 public key as an uncompressed SEC1 point is 65 bytes; anything much longer is not one.
MAX_PUBLIC_KEY_HEX = 2 * 133
_NO_STORE = {"Cache-Control": "no-store"}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    429: web.HTTPTooManyRequests,
    502: web.HTTPBadGateway,
    503: web.HTTPServiceUnavailable,
}

EnrolPhone = Callable[[str, bytes], Awaitable[Credential]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    """An HTTP error whose JSON body is ``{"error": message}``."""
    cls = _ERRORS.get(status, web.HTTPInternalServerError)
    return cls(
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=_NO_STORE | (headers or {}),
    )


def _unauthorized(message: str) -> web.HTTPException:
    return _error(401, message, {"WWW-Authenticate": "Bearer"})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=_NO_STORE)


# --- what /me shows -------------------------------------------------------------------------------


def _rules_by_door(view: CacheView, user: User) -> dict[str, list[AccessRule]]:
    """The rules naming a tag ``user`` carries, per door they name, each list in rule id order."""
    held = set(user.tags)
    by_door: dict[str, list[AccessRule]] = {}
    for rule in sorted(view.rules.values(), key=lambda r: r.id):
        if held.isdisjoint(rule.tags):
            continue
        for door in rule.doors:
            by_door.setdefault(door, []).append(rule)
    return by_door


def _schedule_name(view: CacheView, schedule_id: str | None) -> str | None:
    if schedule_id is None:
        return None  # the rule applies at any time
    schedule = view.schedules.get(schedule_id)
    return schedule.name if schedule is not None else schedule_id


def _phone_keys(view: CacheView, user_id: str) -> Iterator[Credential]:
    # A scan of the phone keys: the table is indexed by value, not by user. Fine for a
    # member's own page; a decision never does this.
    for credential in view.credentials[CredentialKind.BLE_PHONE_KEY]:
        if credential.user_id == user_id:
            yield credential


def member_summary(view: CacheView, user: User) -> dict[str, Any]:
    """What ``/api/member/me`` answers: the user, the doors their tags reach, their phone keys."""
    doors = []
    for door_id, rules in sorted(_rules_by_door(view, user).items()):
        door = view.doors.get(door_id)
        if door is None:
            continue
        doors.append(
            {
                "id": door.id,
                "name": door.name,
                "rules": [
                    {
                        "id": rule.id,
                        "name": rule.name,
                        "schedule": _schedule_name(view, rule.schedule_id),
                    }
                    for rule in rules
                ],
            }
        )
    tags = [
        {"id": tag_id, "name": view.tags[tag_id].name if tag_id in view.tags else tag_id}
        for tag_id in user.tags
    ]
    return {
        "user": {"id": user.id, "name": user.name, "status": user.status.value, "tags": tags},
        "doors": doors,
        "phone_keys": [{"id": c.id, "revoked": c.revoked} for c in _phone_keys(view, user.id)],
    }


# --- the page -------------------------------------------------------------------------------------

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _page() -> tuple[str, str]:
    """The member page and its Content-Security-Policy (its inline script and style by hash)."""
    page = resources.files("gateway").joinpath("web/member.html").read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(page):
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii")
        hashes[kind].append(f"'sha256-{digest}'")
    sources = {kind: " ".join(found) or "'none'" for kind, found in hashes.items()}
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {sources['script']}",
            f"style-src {sources['style']}",
            "connect-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",  # no clickjacking of the login form
        ]
    )
    return page, policy


# --- the routes -----------------------------------------------------------------------------------


class _MemberApi:
    """The handlers, bound to what they use."""

    def __init__(
        self,
        login: MemberLogin,
        view: Callable[[], CacheView],
        enrol_phone: EnrolPhone,
        secure_cookies: bool,
    ) -> None:
        self._login = login
        self._sessions = login.sessions
        self._view = view
        self._enrol_phone = enrol_phone
        self._secure = secure_cookies
        self._page, self._policy = _page()

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The member web page (plain HTML and JS, no build step, no external assets)."""
        return web.Response(
            text=self._page,
            content_type="text/html",
            headers={
                "Content-Security-Policy": self._policy,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
            },
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        """``{email, password}`` → a session token (and cookie); LoginRefused as its status."""
        body = await _body(request)
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise BadRequest("'email' and 'password' are required and must be strings")
        try:
            session = await self._login.login(email, password, request.remote or "unknown")
        except LoginRefused as err:
            headers = {}
            if err.retry_after_s is not None:
                headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
            raise _error(err.status, str(err), headers) from None
        response = _json(
            {
                "token": session.token,
                "expires_at": session.expires_at_utc.isoformat(timespec="seconds"),
                "user": {"id": session.user_id, "name": session.name},
            }
        )
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=math.ceil(self._sessions.ttl_s),
            path="/",
            secure=self._secure,
            httponly=True,
            samesite="Strict",
        )
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """End the session presented (204 even if it had already ended)."""
        token = self._token(request)
        self._sessions.revoke(token)
        response = web.Response(status=204, headers=_NO_STORE)
        response.del_cookie(COOKIE, path="/", secure=self._secure, httponly=True, samesite="Strict")
        return response

    async def me(self, request: web.Request) -> web.StreamResponse:
        """The member, the doors their tags reach (with the rules and schedules), their phones."""
        _, user, view = self._authenticate(request)
        return _json(member_summary(view, user))

    async def enrol_phone(self, request: web.Request) -> web.StreamResponse:
        """``{public_key: hex}`` becomes the member's phone credential: 201 with it."""
        session, _, _ = self._authenticate(request)
        body = await _body(request)
        text = body.get("public_key")
        if not isinstance(text, str) or not 0 < len(text) <= MAX_PUBLIC_KEY_HEX:
            raise BadRequest("'public_key' is required: the phone's P-256 key as hex")
        try:
            public_key = bytes.fromhex(text)
        except ValueError:
            raise BadRequest(
                "'public_key' must be hex: the phone's P-256 key as an uncompressed SEC1 point"
            ) from None
        try:
            credential = await self._enrol_phone(session.user_id, public_key)
        except EnrolmentError as err:
            status = 403 if MEMBER_APP_ACCESS.casefold() in str(err).casefold() else 400
            raise _error(status, str(err)) from None
        _LOGGER.info("member %s enrolled phone key %s", session.user_id, credential.id)
        return _json({"credential": credential_to_json(credential)}, status=201)

    def _token(self, request: web.Request) -> str:
        """The session token presented, by bearer header or by cookie (with the CSRF header)."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("the Authorization header must be 'Bearer <token>'")
            return token.strip()
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            raise _unauthorized("log in first")
        if request.method not in _SAFE_METHODS and request.headers.get(CSRF_HEADER) != CSRF_VALUE:
            raise _error(403, f"a request authenticated by cookie must send '{CSRF_HEADER}'")
        return cookie

    def _authenticate(self, request: web.Request) -> tuple[Session, User, CacheView]:
        """The live session presented, its user and the view it was found in; 401 otherwise."""
        session = self._sessions.get(self._token(request))
        if session is None:
            raise _unauthorized("your session has ended; log in again")
        view = self._view()
        user = view.users.get(session.user_id)
        if user is None:
            # Removed in OfficeRnD (or no longer synced): nothing of theirs may go on working.
            ended = self._sessions.revoke_user(session.user_id)
            _LOGGER.info("user %s is gone; %d member session(s) ended", session.user_id, ended)
            raise _unauthorized("your account is no longer on this gateway")
        return session, user, view


def add_member_routes(
    app: web.Application,
    *,
    login: MemberLogin,
    view: Callable[[], CacheView],
    enrol_phone: EnrolPhone,
    secure_cookies: bool,
) -> None:
    """Add ``/member`` and ``/api/member/...`` to ``app``.

    ``view()``: the current cache view; ``enrol_phone(user_id, public_key)`` stores a phone
    credential (EnrolmentError if refused); ``secure_cookies``: the session cookie is sent over
    HTTPS only (set it whenever the app is served over TLS).
    """
    api = _MemberApi(login, view, enrol_phone, secure_cookies)
    app.router.add_get("/member", api.page)
    app.router.add_post("/api/member/login", api.login)
    app.router.add_post("/api/member/logout", api.logout)
    app.router.add_get("/api/member/me", api.me)
    app.router.add_post("/api/member/phones", api.enrol_phone)
