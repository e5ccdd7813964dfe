"""The admin login of the local web app: the setup page, login, logout and the admin guard.

Every admin route is wrapped by ``AdminGuard.require``: it passes a live admin session (the
``luckey_admin`` cookie, or ``Authorization: Bearer <token>``), and a request authenticated by
the cookie that changes anything must send the session's ``X-CSRF-Token``. On a loopback
listener, requests from this machine (no forwarding headers, a loopback Host) pass as well: the
command line and whoever is logged in on the gateway itself.

Where the site (or ``[web] require_admin_2fa``) requires two-factor authentication, a session
that has not proved a TOTP code is restricted, checked at each request: it reaches only
``/account`` and the routes that set TOTP up (``restricted_ok``); every other admin route
answers 403 (a page: a redirect to ``/account``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import quote

from aiohttp import web

from gateway import totp as totp_codes
from gateway.admin import TOTP_ENROL_TTL_S, TWO_FACTOR_REQUIRED, AdminAccounts, AdminError
from gateway.sessions import Session

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE = "luckey_admin"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_NO_STORE = {"Cache-Control": "no-store"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' "
    "'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    need: str | None = None,
    **headers: str,
) -> web.HTTPException:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    if need is not None:
        body["need"] = need
    cls = web.HTTPException
    for candidate in (
        web.HTTPBadRequest,
        web.HTTPUnauthorized,
        web.HTTPForbidden,
        web.HTTPConflict,
        web.HTTPTooManyRequests,
    ):
        if candidate.status_code == status:
            cls = candidate
    return cls(text=json.dumps(body), content_type="application/json", headers=_NO_STORE | headers)


def _refused(err: AdminError) -> web.HTTPException:
    headers = {}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    return _error(err.status, str(err), field=err.field, need=err.need, **headers)


def static_page(name: str) -> web.Response:
    """A page of ``gateway/web`` with the admin pages' security headers."""
    text = resources.files("gateway").joinpath(f"web/{name}").read_text(encoding="utf-8")
    kind = "application/javascript" if name.endswith(".js") else "text/html"
    return web.Response(text=text, content_type=kind, headers=_PAGE_HEADERS)


class AdminGuard:
    """Admin sessions over HTTP: the login routes and the wrapper for every admin route."""

    def __init__(
        self,
        accounts: AdminAccounts,
        *,
        is_local: Callable[[web.Request], bool],
        secure_cookies: bool,
        two_factor_required: Callable[[], bool] = lambda: False,
    ) -> None:
        """``two_factor_required``: asked at each request (the site's data may change)."""
        self.accounts = accounts
        self._is_local = is_local
        self._secure = secure_cookies
        self._two_factor_required = two_factor_required

    def restricted(self, token: str) -> bool:
        """True if the session of ``token`` may only set up two-factor authentication."""
        return self._two_factor_required() and not self.accounts.second_factor_ok(token)

    def require(self, handler: Handler, *, restricted_ok: bool = False) -> Handler:
        """``handler`` for the admin (or this machine, on a loopback listener) only.

        ``restricted_ok``: also for a session restricted to setting up two-factor
        authentication (the account page and its routes).
        """

        async def checked(request: web.Request) -> web.StreamResponse:
            token, by_cookie = self._presented(request)
            if token is not None and self.accounts.sessions.get(token) is not None:
                if (
                    by_cookie
                    and request.method not in _SAFE_METHODS
                    and not self.accounts.csrf_ok(token, request.headers.get(CSRF_HEADER))
                ):
                    raise _error(403, f"this request must carry the session's {CSRF_HEADER}")
                if not restricted_ok and self.restricted(token):
                    if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                        raise web.HTTPFound("/account")
                    raise _error(403, TWO_FACTOR_REQUIRED, need="totp_setup")
                return await handler(request)
            if self._is_local(request):
                if request.method not in _SAFE_METHODS and not _same_origin(request):
                    # A page this machine's browser opened may send simple requests (no
                    # preflight) to 127.0.0.1: it must not act as this machine.
                    raise _error(403, "a request from another site cannot change anything here")
                return await handler(request)
            if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                # A person opening a page: to the login, and back here after it.
                raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")
            raise _error(
                401,
                "log in as the admin first (/login)",
                **{"WWW-Authenticate": 'Bearer realm="luckey-gateway"'},
            )

        return checked

    def add_routes(self, app: web.Application) -> None:
        """``/login``, ``/account`` and ``/api/admin/{state,setup,login,logout,session,totp}``."""
        app.router.add_get("/login", self.page)
        app.router.add_get("/admin.js", self.script)
        app.router.add_get("/login.js", self.login_script)
        app.router.add_get("/account.js", self.account_script)
        app.router.add_get("/account", self.require(self.account_page, restricted_ok=True))
        app.router.add_get("/api/admin/state", self.state)
        app.router.add_post("/api/admin/setup", self.setup)
        app.router.add_post("/api/admin/login", self.login)
        app.router.add_post("/api/admin/logout", self.logout)
        app.router.add_get("/api/admin/session", self.require(self.session, restricted_ok=True))
        totp = "/api/admin/totp"
        app.router.add_get(totp, self.require(self.totp_state, restricted_ok=True))
        app.router.add_post(totp, self.require(self.totp_start, restricted_ok=True))
        app.router.add_delete(totp, self.require(self.totp_disable, restricted_ok=True))
        app.router.add_post(f"{totp}/confirm", self.require(self.totp_confirm, restricted_ok=True))

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The login page (and, until the admin exists, the form that creates it)."""
        return static_page("login.html")

    async def script(self, request: web.Request) -> web.StreamResponse:
        """The admin pages' shared script: fetch with the CSRF token, to /login on 401."""
        return static_page("admin.js")

    async def login_script(self, request: web.Request) -> web.StreamResponse:
        """The login page's script (served as a file: the page's policy allows no inline one)."""
        return static_page("login.js")

    async def account_page(self, request: web.Request) -> web.StreamResponse:
        """The admin's account page: two-factor authentication on or off."""
        return static_page("account.html")

    async def account_script(self, request: web.Request) -> web.StreamResponse:
        """The account page's script."""
        return static_page("account.js")

    async def state(self, request: web.Request) -> web.StreamResponse:
        """``{"setup_required": bool}``: which form the login page shows."""
        return web.json_response(
            {"setup_required": self.accounts.setup_required}, headers=_NO_STORE
        )

    async def setup(self, request: web.Request) -> web.StreamResponse:
        """``{setup_code, username, password}`` creates the admin and logs them in (201)."""
        body = await _json_body(request)
        try:
            session = await self.accounts.create(
                body.get("setup_code"),
                body.get("username"),
                body.get("password"),
                request.remote or "unknown",
            )
        except AdminError as err:
            raise _refused(err) from None
        return self._logged_in(session, status=201)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """``{username, password[, code]}`` → a session cookie and token, and its CSRF token.

        With TOTP on, a right password without a code answers 401 ``{"need": "totp"}``.
        """
        body = await _json_body(request)
        try:
            session = await self.accounts.login(
                body.get("username"),
                body.get("password"),
                request.remote or "unknown",
                body.get("code"),
            )
        except AdminError as err:
            raise _refused(err) from None
        return self._logged_in(session)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """End the session presented (204 even if it had already ended)."""
        token, _ = self._presented(request)
        if token is not None:
            self.accounts.logout(token)
        response = web.Response(status=204, headers=_NO_STORE)
        response.del_cookie(COOKIE, path="/", secure=self._secure, httponly=True, samesite="Strict")
        return response

    async def session(self, request: web.Request) -> web.StreamResponse:
        """Who is logged in and the CSRF token their page must send (``null`` for this machine)."""
        token, _ = self._presented(request)
        session = self.accounts.sessions.get(token) if token is not None else None
        if session is None:
            return web.json_response(
                {"username": None, "local": True, "csrf_token": None}, headers=_NO_STORE
            )
        return web.json_response(
            {
                "username": session.name,
                "local": False,
                "csrf_token": self.accounts.csrf_token(session.token),
                "expires_at": session.expires_at_utc.isoformat(timespec="seconds"),
            },
            headers=_NO_STORE,
        )

    async def totp_state(self, request: web.Request) -> web.StreamResponse:
        """Whether TOTP is on, the site requires it, and this session is restricted for it."""
        return web.json_response(self._totp_json(request), headers=_NO_STORE)

    async def totp_start(self, request: web.Request) -> web.StreamResponse:
        """Start setting up TOTP: a new secret (base32) and its ``otpauth://`` URI."""
        session = self._session_for_totp(request)
        try:
            enrolment = self.accounts.start_totp(session)
        except AdminError as err:
            raise _refused(err) from None
        secret = totp_codes.to_base32(enrolment.secret)
        return web.json_response(
            {
                "secret": secret,
                "secret_grouped": totp_codes.grouped(secret),
                "uri": enrolment.uri,
                "digits": totp_codes.DIGITS,
                "period_s": totp_codes.STEP_S,
                "expires_in_s": math.ceil(TOTP_ENROL_TTL_S),
            },
            headers=_NO_STORE,
        )

    async def totp_confirm(self, request: web.Request) -> web.StreamResponse:
        """``{code}``: turn TOTP on with the secret being set up, if the code is its current one."""
        session = self._session_for_totp(request)
        body = await _json_body(request)
        try:
            await self.accounts.confirm_totp(session, body.get("code"), request.remote or "unknown")
        except AdminError as err:
            raise _refused(err) from None
        return web.json_response(self._totp_json(request), headers=_NO_STORE)

    async def totp_disable(self, request: web.Request) -> web.StreamResponse:
        """``{code}``: turn TOTP off (409 while the site requires it)."""
        self._session_for_totp(request)
        body = await _json_body(request)
        try:
            await self.accounts.disable_totp(
                body.get("code"),
                request.remote or "unknown",
                required=self._two_factor_required(),
            )
        except AdminError as err:
            raise _refused(err) from None
        return web.json_response(self._totp_json(request), headers=_NO_STORE)

    def _totp_json(self, request: web.Request) -> dict[str, object]:
        token, _ = self._presented(request)
        session = self.accounts.sessions.get(token) if token is not None else None
        return {
            "enabled": self.accounts.totp_enabled,
            "required": self._two_factor_required(),
            "restricted": session is not None and self.restricted(session.token),
            "username": None if session is None else session.name,
        }

    def _session_for_totp(self, request: web.Request) -> Session:
        """The admin session of ``request``: TOTP is the admin's, not this machine's."""
        token, _ = self._presented(request)
        session = self.accounts.sessions.get(token) if token is not None else None
        if session is None:
            raise _error(
                401,
                "log in as the admin (/login) to change two-factor authentication",
                **{"WWW-Authenticate": 'Bearer realm="luckey-gateway"'},
            )
        return session

    def _logged_in(self, session: Session, *, status: int = 200) -> web.Response:
        response = web.json_response(
            {
                "username": session.name,
                "token": session.token,
                "csrf_token": self.accounts.csrf_token(session.token),
                "expires_at": session.expires_at_utc.isoformat(timespec="seconds"),
            },
            status=status,
            headers=_NO_STORE,
        )
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=math.ceil(self.accounts.sessions.ttl_s),
            path="/",
            secure=self._secure,
            httponly=True,
            samesite="Strict",
        )
        return response

    @staticmethod
    def _presented(request: web.Request) -> tuple[str | None, bool]:
        """The session token presented and whether it came by cookie."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip(), False
            return None, False
        cookie = request.cookies.get(COOKIE)
        return (cookie, True) if cookie else (None, False)


def _same_origin(request: web.Request) -> bool:
    """False if the browser says another site sent ``request`` (Sec-Fetch-Site, Origin)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


async def _json_body(request: web.Request) -> dict[str, object]:
    # Imported here: gateway.web imports this module to build the app.
    from gateway.web import _body  # noqa: PLC0415

    return await _body(request)
