"""The admin login of the local web app: the setup page, login, logout and the admin guard.

Every admin route is wrapped by ``AdminGuard.require``: it passes a live admin session (the
``luckey_admin`` cookie, or ``Authorization: Bearer <token>``), and a request authenticated by
the cookie that changes anything must send the session's ``X-CSRF-Token``. On a loopback
listener, requests from this machine (no forwarding headers, a loopback Host) pass as well: the
command line and whoever is logged in on the gateway itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import quote

from aiohttp import web

from gateway.admin import AdminAccounts, AdminError
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
    status: int, message: str, *, field: str | None = None, **headers: str
) -> web.HTTPException:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
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
    return _error(err.status, str(err), field=err.field, **headers)


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
    ) -> None:
        self.accounts = accounts
        self._is_local = is_local
        self._secure = secure_cookies

    def require(self, handler: Handler) -> Handler:
        """``handler`` for the admin (or this machine, on a loopback listener) only."""

        async def checked(request: web.Request) -> web.StreamResponse:
            token, by_cookie = self._presented(request)
            if token is not None and self.accounts.sessions.get(token) is not None:
                if (
                    by_cookie
                    and request.method not in _SAFE_METHODS
                    and not self.accounts.csrf_ok(token, request.headers.get(CSRF_HEADER))
                ):
                    raise _error(403, f"this request must carry the session's {CSRF_HEADER}")
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
        """``/login`` and ``/api/admin/{state,setup,login,logout,session}``."""
        app.router.add_get("/login", self.page)
        app.router.add_get("/admin.js", self.script)
        app.router.add_get("/login.js", self.login_script)
        app.router.add_get("/api/admin/state", self.state)
        app.router.add_post("/api/admin/setup", self.setup)
        app.router.add_post("/api/admin/login", self.login)
        app.router.add_post("/api/admin/logout", self.logout)
        app.router.add_get("/api/admin/session", self.require(self.session))

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The login page (and, until the admin exists, the form that creates it)."""
        return static_page("login.html")

    async def script(self, request: web.Request) -> web.StreamResponse:
        """The admin pages' shared script: fetch with the CSRF token, to /login on 401."""
        return static_page("admin.js")

    async def login_script(self, request: web.Request) -> web.StreamResponse:
        """The login page's script (served as a file: the page's policy allows no inline one)."""
        return static_page("login.js")

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
        """``{username, password}`` → a session cookie and token, and its CSRF token."""
        body = await _json_body(request)
        try:
            session = await self.accounts.login(
                body.get("username"), body.get("password"), request.remote or "unknown"
            )
        except AdminError as err:
            raise _refused(err) from None
        return self._logged_in(session)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """End the session presented (204 even if it had already ended)."""
        token, _ = self._presented(request)
        if token is not None:
            self.accounts.sessions.revoke(token)
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
