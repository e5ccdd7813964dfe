"""A fake OfficeRnD for tests and benchmarks: identity, Flex API v2 and signed webhooks on loopback.

Built from the API facts in the design notes (OFFICERND.md), not from the connector. Where those
notes are silent the fake makes a choice and says so in a comment marked ``Choice:``; a connector
should not depend on a choice, only on what the notes document.

One aiohttp server on 127.0.0.1 serves both hosts: ``/oauth/token`` (identity) and ``/api/v2/...``.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import hashlib
import hmac
import json
import math
import random
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Literal, Self

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiMapping

Json = dict[str, Any]

ALL_SCOPES: Final[frozenset[str]] = frozenset(
    {
        "flex.community.members.read",
        "flex.community.memberships.read",
        "flex.community.companies.read",
        "flex.billing.plans.read",
        "flex.settings.webhooks.read",
        "flex.settings.webhooks.create",
        "flex.community.members.portalAccess.update",
        "flex.user.auth.signin",
    }
)

#: The read scope of each listable resource (``flex.{module}.{resource}.{action}``, OFFICERND.md).
READ_SCOPES: Final[Mapping[str, str]] = {
    "members": "flex.community.members.read",
    "companies": "flex.community.companies.read",
    "memberships": "flex.community.memberships.read",
    "plans": "flex.billing.plans.read",
    "webhooks": "flex.settings.webhooks.read",
}
WEBHOOKS_CREATE_SCOPE: Final = "flex.settings.webhooks.create"
PORTAL_ACCESS_SCOPE: Final = "flex.community.members.portalAccess.update"
SIGNIN_SCOPE: Final = "flex.user.auth.signin"

#: Entities the data helpers manage (webhooks are managed over HTTP or with ``add_webhook``).
KINDS: Final = ("members", "companies", "memberships", "plans")

#: Filters each list accepts besides paging (OFFICERND.md lists status[$in], modifiedAt[$gte] and
#: company; member is the obvious one for memberships). Choice: nothing else, so the connector
#: cannot come to rely on an undocumented filter.
LIST_FILTERS: Final[Mapping[str, frozenset[str]]] = {
    "members": frozenset({"status[$in]", "modifiedAt[$gte]", "company"}),
    "companies": frozenset({"status[$in]", "modifiedAt[$gte]"}),
    "memberships": frozenset({"status[$in]", "modifiedAt[$gte]", "company", "member"}),
    "plans": frozenset({"modifiedAt[$gte]"}),
    "webhooks": frozenset(),
}
PAGING_PARAMS: Final = frozenset({"$limit", "$cursorNext", "$cursorPrev"})

TOKEN_LIFETIME_S: Final = 3599  # the documented "expires_in"
TOKEN_WINDOW: Final = timedelta(minutes=1)  # the token endpoint's rolling rate-limit window
DEFAULT_LIMIT: Final = 50  # the documented default and maximum page size
WEBHOOK_TIMEOUT_S: Final = 5.0  # Choice: how long one delivery may take before it counts as failed
REDACTED: Final = "<redacted>"

# ObjectId-shaped ids: 8 hex of a fixed 2024 timestamp, then a counter, so ids sort in creation
# order and a seeded population is identical from run to run.
_ID_EPOCH: Final = 0x66000000

_BODY: Final = web.RequestKey[Json]("officernd_fake_body")


class _Unset(Enum):
    """Marks an argument that was not given (distinct from an explicit ``None``)."""

    UNSET = "unset"


UNSET: Final = _Unset.UNSET


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request the fake answered; bodies carry no password or client secret."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    body: Json | None = None


@dataclass(slots=True)
class _Failure:
    path_contains: str
    status: int
    body: Json | None
    retry_after: float | None
    times: int


@dataclass(frozen=True, slots=True)
class _Token:
    scopes: frozenset[str]
    expires_at: datetime


# -- time ---------------------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    # A naive datetime from a test clock means UTC, never the machine's zone.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as OfficeRnD writes timestamps."""
    utc = _utc(moment)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """A timestamp or date in ISO-8601 as an aware UTC datetime (no offset means UTC)."""
    return _utc(datetime.fromisoformat(text))


def _as_date_value(value: str) -> str:
    # Choice: startDate/endDate are served as midnight-UTC timestamps ("2026-01-31T00:00:00.000Z"),
    # so a connector has to treat them as dates, as OFFICERND.md asks; "YYYY-MM-DD" input is accepted.
    return iso(parse_iso(value))


def _calculated_status(membership: Mapping[str, Any], today: date) -> str:
    # Choice: computed at read time against the fake's clock, so a membership expires without its
    # modifiedAt moving (a modifiedAt[$gte] poll alone would miss it); the end date is inclusive.
    if membership.get("status") == "not_approved":
        return "not_approved"
    start = membership.get("startDate")
    if start and today < parse_iso(start).date():
        return "not_started"
    end = membership.get("endDate")
    if end and today > parse_iso(end).date():
        return "expired"
    return "active"


# -- responses ----------------------------------------------------------------------------------


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _nest(
    status: int, message: str | list[str], headers: Mapping[str, str] | None = None
) -> web.Response:
    """A NestJS-style error: ``{"statusCode", "message", "error"}``."""
    body = {"statusCode": status, "message": message, "error": _phrase(status)}
    return web.json_response(body, status=status, headers=headers)


def _oauth_error(
    status: int, error: str, description: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    # Choice: the identity host answers errors the OAuth 2 way (RFC 6749 §5.2).
    body = {"error": error, "error_description": description}
    return web.json_response(body, status=status, headers=headers)


def _retry_after(seconds: float) -> str:
    # Real servers send whole seconds; the fake passes fractions through so tests stay fast.
    return f"{seconds:g}"


def _encode_cursor(direction: Literal["a", "b"], entity_id: str, offset: int) -> str:
    raw = json.dumps({direction: entity_id, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(text: str, direction: Literal["a", "b"]) -> tuple[str, int] | None:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    entity_id, offset = data.get(direction), data.get("o")
    if not isinstance(entity_id, str) or not isinstance(offset, int) or offset < 0:
        return None
    return entity_id, offset


class FakeOfficeRnD:
    """One OfficeRnD organisation with one API application, served on a loopback port."""

    def __init__(
        self,
        *,
        org: str = "acme",
        client_id: str = "client-1",
        client_secret: str = "secret-1",
        granted_scopes: frozenset[str] = ALL_SCOPES,
        max_limit: int = DEFAULT_LIMIT,
        token_requests_per_minute: int = 5,
        last_page_cursor: Literal["absent", "null"] = "absent",
        modified_filter_on_memberships: bool = False,
        missing_scope_status: Literal[401, 403] = 401,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.org = org
        self.client_id = client_id
        self.client_secret = client_secret
        # Checked at token time and again on every API call, so a test can withdraw a permission
        # from a live application.
        self.granted_scopes = granted_scopes
        self.max_limit = max_limit
        self.token_requests_per_minute = token_requests_per_minute
        self.last_page_cursor = last_page_cursor
        self.modified_filter_on_memberships = modified_filter_on_memberships
        # OFFICERND.md: "a missing scope can come back as 401", hence the default.
        self.missing_scope_status = missing_scope_status
        self._clock = clock if clock is not None else lambda: datetime.now(UTC)
        self.requests: list[FakeRequest] = []
        self.token_requests = 0  # every POST to the token endpoint, refused ones included
        self.emitted: list[Json] = []  # every webhook body emit() built, in order
        self._store: dict[str, dict[str, Json]] = {kind: {} for kind in (*KINDS, "webhooks")}
        self._sorted: dict[str, list[str] | None] = dict.fromkeys(self._store, None)
        self._portal_access: dict[str, Json] = {}
        self._logins: dict[str, tuple[str, str]] = {}  # lower-cased email → (password, member)
        self._tokens: dict[str, _Token] = {}
        self._token_times: deque[datetime] = deque()
        self._failures: list[_Failure] = []
        self._revoked = False
        self._counter = 0
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve on a free loopback port; open the session webhooks are delivered with."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/oauth/token", self._token)
        org = "/api/v2/organizations/{org}"
        listable = "{resource:members|companies|memberships|plans|webhooks}"
        app.router.add_get(f"{org}/{listable}", self._list)
        app.router.add_get(f"{org}/{listable}/{{entity_id}}", self._get_one)
        app.router.add_post(f"{org}/webhooks", self._create_webhook)
        app.router.add_delete(f"{org}/webhooks/{{entity_id}}", self._delete_webhook)
        app.router.add_put(f"{org}/members/{{entity_id}}/portal-access", self._portal_access_put)
        app.router.add_post(f"{org}/auth/signin", self._signin)
        app.router.add_route("*", "/{tail:.*}", self._no_route)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)  # port 0: the kernel picks, no race
            await site.start()
            self._port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Stop serving and close the delivery session; safe to call twice."""
        session, self._session = self._session, None
        runner, self._runner = self._runner, None
        if session is not None:
            await session.close()
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._port is None:
            raise RuntimeError("FakeOfficeRnD is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """The Flex API v2 base; the organisation's path is ``api_base + "/organizations/{org}"``."""
        return f"{self.base_url}/api/v2"

    @property
    def org_url(self) -> str:
        """``api_base`` plus this fake's organisation path."""
        return f"{self.api_base}/organizations/{self.org}"

    @property
    def identity_url(self) -> str:
        """The token endpoint."""
        return f"{self.base_url}/oauth/token"

    def now(self) -> datetime:
        """The fake's clock, in UTC."""
        return _utc(self._clock())

    # -- data -----------------------------------------------------------------------------------

    def _new_id(self) -> str:
        self._counter += 1
        return f"{_ID_EPOCH:08x}{self._counter:016x}"

    def _insert(self, kind: str, values: Json) -> Json:
        stamp = iso(self.now())
        obj: Json = {"_id": self._new_id(), **values}
        obj.setdefault("createdAt", stamp)
        obj.setdefault("modifiedAt", stamp)
        store = self._store[kind]
        entity_id = obj["_id"]
        if entity_id in store:
            raise ValueError(f"{kind}: duplicate _id {entity_id}")
        order = self._sorted[kind]
        if order is not None and (not order or order[-1] < entity_id):
            order.append(entity_id)  # the usual case: ids grow, no re-sort
        else:
            self._sorted[kind] = None
        store[entity_id] = obj
        return obj

    def _served(self, kind: str, obj: Json) -> Json:
        if kind == "memberships":
            return {**obj, "calculatedStatus": _calculated_status(obj, self.now().date())}
        if kind == "webhooks":
            # Choice: the secret is shown once, in the creation answer, as secrets usually are.
            return {key: value for key, value in obj.items() if key != "secret"}
        return obj

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")

    def get(self, kind: str, entity_id: str) -> Json:
        """A copy of the object as ``GET .../{kind}/{id}`` would serve it (KeyError if absent)."""
        self._check_kind(kind)
        return copy.deepcopy(self._served(kind, self._store[kind][entity_id]))

    def all(self, kind: str) -> list[Json]:
        """Copies of every object of ``kind``, in list order (by ``_id``)."""
        self._check_kind(kind)
        store = self._store[kind]
        return [copy.deepcopy(self._served(kind, store[key])) for key in self._order(kind)]

    def add_plan(self, name: str, **fields: Any) -> Json:
        """Add a plan; ``fields`` override or extend the defaults."""
        code = "-".join(name.upper().split())
        obj = self._insert(
            "plans", {"name": name, "code": code, "type": "hotdesk", "locations": []} | fields
        )
        return copy.deepcopy(obj)

    def add_company(self, name: str, **fields: Any) -> Json:
        """Add a company; ``fields`` override or extend the defaults."""
        defaults: Json = {"name": name, "status": "active", "location": None, "properties": {}}
        return copy.deepcopy(self._insert("companies", defaults | fields))

    def add_member(
        self,
        name: str,
        email: str | _Unset | None = UNSET,
        *,
        status: str = "active",
        company: str | None = None,
        properties: Json | None = None,
        **fields: Any,
    ) -> Json:
        """Add a member; the email defaults to one derived from the name, ``None`` means none."""
        if isinstance(email, _Unset):
            email = ".".join(name.lower().split()) + "@example.com"
        defaults: Json = {
            "name": name,
            "email": email,
            "phone": None,
            "company": company,
            "location": None,
            "status": status,
            "startDate": iso(datetime.combine(self.now().date(), datetime.min.time())),
            "properties": dict(properties or {}),
            "tags": [],
        }
        return copy.deepcopy(self._insert("members", defaults | fields))

    def add_membership(
        self,
        plan: str,
        *,
        member: str | None = None,
        company: str | None = None,
        start: str | None = None,
        end: str | _Unset | None = UNSET,
        status: str = "approved",
        **fields: Any,
    ) -> Json:
        """Add a membership of ``plan`` (an id) for a member and/or a company.

        ``start`` defaults to the clock's date; ``end`` left out means no ``endDate`` key and
        ``end=None`` an explicit ``null`` (both are open-ended, and OFFICERND.md names both forms).
        """
        if member is None and company is None:
            raise ValueError("a membership needs a member or a company")
        if member is not None and company is None:
            # Choice (undocumented either way): a personal membership carries its member's company
            # too, so a connector must look at "member" before treating it as a company membership.
            owner = self._store["members"].get(member)
            company = owner.get("company") if owner is not None else None
        values: Json = {
            "member": member,
            "company": company,
            "plan": plan,
            "location": None,
            "status": status,
            "startDate": _as_date_value(
                start if start is not None else self.now().date().isoformat()
            ),
            "isPersonal": member is not None,
        }
        if not isinstance(end, _Unset):
            values["endDate"] = None if end is None else _as_date_value(end)
        values |= fields
        obj = self._insert("memberships", values)
        return copy.deepcopy(self._served("memberships", obj))

    def update(self, kind: str, entity_id: str, **changes: Any) -> Json:
        """Apply ``changes`` and bump ``modifiedAt`` (strictly, even on a stopped clock)."""
        self._check_kind(kind)
        obj = self._store[kind][entity_id]
        previous = parse_iso(obj["modifiedAt"])
        for key in ("startDate", "endDate"):
            if isinstance(changes.get(key), str):
                changes[key] = _as_date_value(changes[key])
        obj.update(changes)
        if "modifiedAt" not in changes:
            stamp = self.now()
            if stamp <= previous:
                stamp = previous + timedelta(milliseconds=1)
            obj["modifiedAt"] = iso(stamp)
        return copy.deepcopy(self._served(kind, obj))

    def remove(self, kind: str, entity_id: str) -> None:
        """Delete an object (KeyError if absent); its id then answers 404."""
        self._check_kind(kind)
        self.remove_any(kind, entity_id)

    def remove_any(self, kind: str, entity_id: str) -> None:
        """Delete an object of any stored kind, webhooks included (KeyError if absent)."""
        del self._store[kind][entity_id]
        self._sorted[kind] = None

    def add_login(self, email: str, password: str, member_id: str) -> None:
        """Let ``email``/``password`` sign in as ``member_id`` through ``/auth/signin``."""
        # Choice: emails match case-insensitively, as mail addresses do in practice.
        self._logins[email.lower()] = (password, member_id)

    def portal_access(self, member_id: str) -> Json | None:
        """Fake-only: the last portal-access PUT body for a member, or None if never written.

        OfficeRnD documents no field that reads portal access back, so GET bodies never show it.
        """
        value = self._portal_access.get(member_id)
        return dict(value) if value is not None else None

    # -- faults ---------------------------------------------------------------------------------

    def fail_next(
        self,
        path_contains: str,
        status: int,
        *,
        body: Json | None = None,
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests whose path contains ``path_contains`` with ``status``.

        Checked before anything else (auth, rate limit, routing); rules apply in the order added.
        The default body is NestJS-style; ``retry_after`` becomes a ``Retry-After`` header.
        """
        self._failures.append(_Failure(path_contains, status, body, retry_after, times))

    def revoke_client(self) -> None:
        """The application's credentials stop working: token endpoint and live tokens answer 401."""
        self._revoked = True

    def expire_tokens(self) -> None:
        """Every token issued so far answers 401 from now on, as at the end of its hour."""
        self._tokens.clear()

    # -- webhooks -------------------------------------------------------------------------------

    @property
    def webhooks(self) -> list[Json]:
        """The registered webhooks: ``_id``, ``url``, ``eventTypes``, ``description``, ``secret``."""
        store = self._store["webhooks"]
        return [store[key] for key in self._order("webhooks")]

    def add_webhook(
        self, url: str, event_types: Iterable[str], *, secret: str | None = None
    ) -> Json:
        """Register a webhook as if made in OfficeRnD's UI; returns it with its secret."""
        return copy.deepcopy(self._new_webhook(url, list(event_types), "", secret))

    def remove_webhook(self, webhook_id: str) -> None:
        """Delete a webhook as if in OfficeRnD's UI (KeyError if absent)."""
        self.remove_any("webhooks", webhook_id)

    def _new_webhook(
        self, url: str, event_types: list[str], description: str, secret: str | None
    ) -> Json:
        values: Json = {
            "url": url,
            "eventTypes": event_types,
            "description": description,
            "secret": secret if secret is not None else secrets.token_hex(32),
        }
        return self._insert("webhooks", values)

    @staticmethod
    def signature(secret: str, raw_body: bytes, t: int) -> str:
        """The ``officernd-signature`` value: ``t=<t>,v1=<HMAC-SHA256(secret, body + "." + t)>``."""
        digest = hmac.new(secret.encode(), raw_body + b"." + str(t).encode(), hashlib.sha256)
        return f"t={t},v1={digest.hexdigest()}"

    async def emit(
        self,
        event_type: str,
        obj: Json,
        previous: Json | None = None,
        *,
        event_id: str | None = None,
        sign_with: str | None = None,
        timestamp: int | None = None,
    ) -> list[int]:
        """POST one signed event to every webhook subscribed to ``event_type``; their statuses.

        ``sign_with`` signs with that secret instead of each webhook's own; ``timestamp`` sets
        ``t``. A delivery that cannot connect or times out counts as status 0.
        """
        if self._session is None:
            raise RuntimeError("FakeOfficeRnD is not started")
        now = self.now()
        body: Json = {
            "event": event_id if event_id is not None else self._new_id(),
            "eventType": event_type,
            "data": {"object": obj, "previousAttributes": previous if previous is not None else {}},
            "createdAt": iso(now),
        }
        self.emitted.append(body)
        raw = json.dumps(body, separators=(",", ":")).encode()
        t = timestamp if timestamp is not None else int(now.timestamp())
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        statuses: list[int] = []
        # Deliveries go one after another, in registration order, so tests see a fixed order.
        for hook in self.webhooks:
            if event_type not in hook["eventTypes"]:
                continue
            headers = {
                "Content-Type": "application/json",
                "officernd-signature": self.signature(sign_with or hook["secret"], raw, t),
            }
            try:
                async with self._session.post(
                    hook["url"], data=raw, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    statuses.append(response.status)
            except (aiohttp.ClientError, TimeoutError):
                statuses.append(0)
        return statuses

    # -- HTTP: plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/oauth/token":
            self.token_requests += 1  # injected failures included
        failure = self._take_failure(request.path)
        try:
            if failure is not None:
                response: web.StreamResponse = self._failure_response(failure)
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            self._record(request, exc.status)
            raise
        self._record(request, response.status)
        return response

    def _record(self, request: web.Request, status: int) -> None:
        body = request.get(_BODY)
        self.requests.append(
            FakeRequest(request.method, request.path, dict(request.query), status, body)
        )

    def _take_failure(self, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.path_contains in path:
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    @staticmethod
    def _failure_response(failure: _Failure) -> web.Response:
        headers = {}
        if failure.retry_after is not None:
            headers["Retry-After"] = _retry_after(failure.retry_after)
        if failure.body is None:
            return _nest(failure.status, _phrase(failure.status), headers)
        return web.json_response(failure.body, status=failure.status, headers=headers)

    async def _no_route(self, request: web.Request) -> web.Response:
        # NestJS's answer to an unknown route.
        return _nest(404, f"Cannot {request.method} {request.path}")

    def _authorize(self, request: web.Request, scope: str) -> web.Response | None:
        # Choice: token, then organisation, then scope: a valid token for a wrong slug is the
        # activation mistake the notes describe (500 "Organization not found").
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not value:
            return _nest(401, "Unauthorized", challenge)
        token = self._tokens.get(value.strip())
        if token is None or self._revoked:
            return _nest(401, "Unauthorized", challenge)
        if self.now() >= token.expires_at:
            return _nest(401, "Token expired", challenge)
        if request.match_info["org"] != self.org:
            return _nest(500, "Organization not found")
        if scope not in token.scopes or scope not in self.granted_scopes:
            return _nest(self.missing_scope_status, f"Missing required scope: {scope}")
        return None

    async def _json_body(self, request: web.Request) -> Json | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _nest(400, "Body must be valid JSON")
        if not isinstance(body, dict):
            return _nest(400, "Body must be a JSON object")
        return body

    # -- HTTP: identity -------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        now = self.now()
        while self._token_times and self._token_times[0] <= now - TOKEN_WINDOW:
            self._token_times.popleft()
        if len(self._token_times) >= self.token_requests_per_minute:
            # Choice: refused (429) requests do not count, so waiting Retry-After always works.
            wait = (self._token_times[0] + TOKEN_WINDOW - now).total_seconds()
            retry = {"Retry-After": str(max(1, math.ceil(wait)))}
            return _oauth_error(429, "rate_limited", "Too many token requests", retry)
        self._token_times.append(now)
        if request.content_type != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request", "The body must be form-encoded")
        form = await request.post()
        fields = {key: str(value) for key, value in form.items()}
        request[_BODY] = {
            key: (REDACTED if key == "client_secret" else value) for key, value in fields.items()
        }
        if fields.get("grant_type") != "client_credentials":
            return _oauth_error(
                400, "unsupported_grant_type", "Only client_credentials is supported"
            )
        id_ok = hmac.compare_digest(fields.get("client_id", "").encode(), self.client_id.encode())
        secret_ok = hmac.compare_digest(
            fields.get("client_secret", "").encode(), self.client_secret.encode()
        )
        if not (id_ok and secret_ok) or self._revoked:
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        requested = frozenset(fields.get("scope", "").split())
        if not requested:
            # Choice: scope is required; the notes always send it.
            return _oauth_error(400, "invalid_request", "scope is required")
        refused = requested - self.granted_scopes
        if refused:
            return _oauth_error(
                400, "invalid_scope", "Scope not granted: " + " ".join(sorted(refused))
            )
        access_token = secrets.token_urlsafe(32)
        self._tokens[access_token] = _Token(requested, now + timedelta(seconds=TOKEN_LIFETIME_S))
        answer = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_S,
            "scope": " ".join(sorted(requested)),
        }
        return web.json_response(answer)

    # -- HTTP: lists and objects ----------------------------------------------------------------

    def _order(self, kind: str) -> list[str]:
        order = self._sorted[kind]
        if order is None:
            order = self._sorted[kind] = sorted(self._store[kind])
        return order

    async def _list(self, request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        denied = self._authorize(request, READ_SCOPES[resource])
        if denied is not None:
            return denied
        query = request.query
        filters = set(LIST_FILTERS[resource])
        if resource == "memberships" and not self.modified_filter_on_memberships:
            filters.discard("modifiedAt[$gte]")  # OFFICERND.md: "has been seen rejected"
        unknown: list[str] = []
        for key in query:
            if key not in filters and key not in PAGING_PARAMS:
                # class-validator names the top-level property: "status[$in]" is "status".
                name = key.split("[", 1)[0]
                if name not in unknown:
                    unknown.append(name)
        if unknown:
            return _nest(400, [f"property {name} should not exist" for name in unknown])
        limit = min(DEFAULT_LIMIT, self.max_limit)
        if "$limit" in query:
            try:
                limit = int(query["$limit"])
            except ValueError:
                return _nest(400, ["$limit must be an integer number"])
            if limit < 1:
                return _nest(400, ["$limit must not be less than 1"])
            if limit > self.max_limit:
                return _nest(400, [f"$limit must not be greater than {self.max_limit}"])
        predicate = self._predicate(query)
        if isinstance(predicate, web.Response):
            return predicate
        if "$cursorNext" in query and "$cursorPrev" in query:
            return _nest(400, ["$cursorNext and $cursorPrev are mutually exclusive"])
        if "$cursorPrev" in query:
            cursor = _decode_cursor(query["$cursorPrev"], "b")
            if cursor is None:
                return _nest(400, ["$cursorPrev must be a valid cursor"])
            return web.json_response(self._page_before(resource, predicate, limit, *cursor))
        after: tuple[str, int] | None = None
        if "$cursorNext" in query:
            after = _decode_cursor(query["$cursorNext"], "a")
            if after is None:
                return _nest(400, ["$cursorNext must be a valid cursor"])
        return web.json_response(self._page_after(resource, predicate, limit, after))

    def _predicate(self, query: MultiMapping[str]) -> Callable[[Json], bool] | web.Response:
        wanted: set[str] | None = None
        if "status[$in]" in query:
            # Both "a,b" and a repeated parameter are accepted.
            wanted = {part for value in query.getall("status[$in]") for part in value.split(",")}
            wanted.discard("")
        since: datetime | None = None
        if "modifiedAt[$gte]" in query:
            try:
                since = parse_iso(query["modifiedAt[$gte]"])
            except ValueError:
                return _nest(400, ["modifiedAt.$gte must be a valid ISO 8601 date string"])
        equal = {key: query[key] for key in ("company", "member") if key in query}

        def predicate(obj: Json) -> bool:
            if wanted is not None and obj.get("status") not in wanted:
                return False
            if since is not None and parse_iso(obj["modifiedAt"]) < since:
                return False
            return all(obj.get(key) == value for key, value in equal.items())

        return predicate

    def _envelope(self, kind: str, results: list[Json], offset: int, more_after: bool) -> Json:
        # Choice: rangeStart is the 0-based index of the first result among the filtered list and
        # rangeEnd the index just past the last one (exclusive); cursorPrev is null on the first page.
        served = [self._served(kind, obj) for obj in results]
        page: Json = {"rangeStart": offset, "rangeEnd": offset + len(results)}
        if more_after and results:
            page["cursorNext"] = _encode_cursor("a", results[-1]["_id"], offset + len(results))
        elif self.last_page_cursor == "null":
            page["cursorNext"] = None
        page["cursorPrev"] = (
            _encode_cursor("b", results[0]["_id"], offset) if offset > 0 and results else None
        )
        page["results"] = served
        return page

    def _page_after(
        self,
        kind: str,
        predicate: Callable[[Json], bool],
        limit: int,
        after: tuple[str, int] | None,
    ) -> Json:
        # Cursors hold the last id seen, so objects added or removed while a client pages neither
        # repeat nor skip the others; the offset only feeds rangeStart.
        order, store = self._order(kind), self._store[kind]
        position, offset = (
            (0, 0) if after is None else (bisect.bisect_right(order, after[0]), after[1])
        )
        results: list[Json] = []
        more = False
        for entity_id in order[position:]:
            obj = store[entity_id]
            if not predicate(obj):
                continue
            if len(results) == limit:
                more = True
                break
            results.append(obj)
        return self._envelope(kind, results, offset, more)

    def _page_before(
        self, kind: str, predicate: Callable[[Json], bool], limit: int, before: str, offset: int
    ) -> Json:
        order, store = self._order(kind), self._store[kind]
        position = bisect.bisect_left(order, before)
        results: list[Json] = []
        for entity_id in reversed(order[:position]):
            obj = store[entity_id]
            if predicate(obj):
                results.append(obj)
                if len(results) == limit:
                    break
        results.reverse()
        start = max(0, offset - len(results))
        if start > 0 and results:
            # The offset is only a hint after concurrent changes: make "first page" exact.
            head = bisect.bisect_left(order, results[0]["_id"])
            if not any(predicate(store[key]) for key in order[:head]):
                start = 0
        return self._envelope(kind, results, start, more_after=True)

    async def _get_one(self, request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        denied = self._authorize(request, READ_SCOPES[resource])
        if denied is not None:
            return denied
        # Choice: an unknown or malformed id is a 404 (not a 400 or a 500 cast error).
        obj = self._store[resource].get(request.match_info["entity_id"])
        if obj is None:
            return _nest(404, f"{resource[:-1].capitalize()} not found")
        return web.json_response(self._served(resource, obj))

    # -- HTTP: webhooks -------------------------------------------------------------------------

    async def _create_webhook(self, request: web.Request) -> web.Response:
        denied = self._authorize(request, WEBHOOKS_CREATE_SCOPE)
        if denied is not None:
            return denied
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        request[_BODY] = body
        problems = [
            f"property {key} should not exist"
            for key in body
            if key not in {"url", "eventTypes", "description"}
        ]
        url = body.get("url")
        event_types = body.get("eventTypes")
        description = body.get("description", "")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            problems.append("url must be a URL address")
        if not isinstance(event_types, list) or not all(
            isinstance(item, str) for item in event_types
        ):
            problems.append("eventTypes must be an array of strings")
        elif not event_types:
            problems.append("eventTypes should not be empty")
        if not isinstance(description, str):
            problems.append("description must be a string")
        if (
            problems
            or not isinstance(url, str)
            or not isinstance(event_types, list)
            or not isinstance(description, str)
        ):
            return _nest(400, problems)
        hook = self._new_webhook(url, list(event_types), description, None)
        return web.json_response(hook, status=201)  # the one answer that carries the secret

    async def _delete_webhook(self, request: web.Request) -> web.Response:
        # Choice: the notes list no delete scope; deleting needs the create scope, and answers 204.
        denied = self._authorize(request, WEBHOOKS_CREATE_SCOPE)
        if denied is not None:
            return denied
        entity_id = request.match_info["entity_id"]
        if self._store["webhooks"].pop(entity_id, None) is None:
            return _nest(404, "Webhook not found")
        self._sorted["webhooks"] = None
        return web.Response(status=204)

    # -- HTTP: portal access and sign-in --------------------------------------------------------

    async def _portal_access_put(self, request: web.Request) -> web.Response:
        denied = self._authorize(request, PORTAL_ACCESS_SCOPE)
        if denied is not None:
            return denied
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        request[_BODY] = body
        allowed = {"isPortalAccessEnabled", "shouldSendInvitation"}
        problems = [f"property {key} should not exist" for key in body if key not in allowed]
        if not isinstance(body.get("isPortalAccessEnabled"), bool):
            problems.append("isPortalAccessEnabled must be a boolean value")
        # Choice: shouldSendInvitation may be left out (false).
        if not isinstance(body.get("shouldSendInvitation", False), bool):
            problems.append("shouldSendInvitation must be a boolean value")
        if problems:
            return _nest(400, problems)
        member_id = request.match_info["entity_id"]
        if member_id not in self._store["members"]:
            return _nest(404, "Member not found")
        self._portal_access[member_id] = {
            "isPortalAccessEnabled": body["isPortalAccessEnabled"],
            "shouldSendInvitation": body.get("shouldSendInvitation", False),
        }
        return web.Response(status=204)

    async def _signin(self, request: web.Request) -> web.Response:
        denied = self._authorize(request, SIGNIN_SCOPE)
        if denied is not None:
            return denied
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        request[_BODY] = {
            key: (REDACTED if key == "password" else value) for key, value in body.items()
        }
        email, password = body.get("email"), body.get("password")
        problems = []
        if not isinstance(email, str) or not email:
            problems.append("email must be an email")
        if not isinstance(password, str) or not password:
            problems.append("password should not be empty")
        if problems or not isinstance(email, str) or not isinstance(password, str):
            return _nest(400, problems)
        login = self._logins.get(email.lower())
        # Compare even for an unknown email, so both failures take the same path.
        expected, member_id = login if login is not None else ("", "")
        matches = hmac.compare_digest(password.encode(), expected.encode())
        member = self._store["members"].get(member_id)
        if login is None or not matches or member is None:
            # Same 401 as a bad token, told apart only by the message: a connector must not
            # refresh its token and retry on this one.
            return _nest(401, "Invalid email or password")
        # Choice: the identity shape; the notes do not document the real answer.
        return web.json_response(
            {"member": member_id, "email": member.get("email") or email, "name": member.get("name")}
        )


# -- benchmark data ---------------------------------------------------------------------------------


def populate(
    fake: FakeOfficeRnD,
    *,
    members: int,
    memberships: int,
    plans: int,
    companies: int | None = None,
    seed: int = 0,
) -> None:
    """Fill ``fake`` with a deterministic organisation (companies default to one per ten members).

    Mixes what a connector must get right: former/pending members, members without a company,
    company memberships with no member, future, ended and open-ended memberships, unapproved ones.
    """
    if memberships and not plans:
        raise ValueError("memberships need at least one plan")
    if memberships and not members and not companies:
        raise ValueError("memberships need members or companies")
    rng = random.Random(seed)
    company_count = max(1, members // 10) if companies is None else companies
    today = fake.now().date()
    plan_ids = [
        fake._insert(
            "plans",
            {"name": f"Plan {i:03d}", "code": f"P{i:03d}", "type": "hotdesk", "locations": []},
        )["_id"]
        for i in range(plans)
    ]
    company_ids = [
        fake._insert(
            "companies",
            {"name": f"Company {i:04d}", "status": "active", "location": None, "properties": {}},
        )["_id"]
        for i in range(company_count)
    ]
    member_ids: list[str] = []
    member_company: dict[str, str | None] = {}
    statuses = ("active", "former", "pending", "contact")
    for i in range(members):
        status = rng.choices(statuses, weights=(85, 8, 5, 2))[0]
        employer = rng.choice(company_ids) if company_ids and rng.random() < 0.6 else None
        obj = fake._insert(
            "members",
            {
                "name": f"Member {i:06d}",
                "email": f"member{i:06d}@example.com",
                "phone": None,
                "company": employer,
                "location": None,
                "status": status,
                "startDate": iso(
                    datetime.combine(
                        today - timedelta(days=rng.randint(0, 700)), datetime.min.time()
                    )
                ),
                "properties": {},
                "tags": [],
            },
        )
        member_ids.append(obj["_id"])
        member_company[obj["_id"]] = employer
    for _ in range(memberships):
        member: str | None = None
        company: str | None
        if company_ids and (not member_ids or rng.random() < 0.1):
            company = rng.choice(company_ids)
        else:
            member = rng.choice(member_ids)
            company = member_company[member]
        start = today + timedelta(days=rng.randint(-400, 30))
        values: Json = {
            "member": member,
            "company": company,
            "plan": rng.choice(plan_ids),
            "location": None,
            "status": "approved" if rng.random() < 0.95 else "not_approved",
            "startDate": _as_date_value(start.isoformat()),
            "isPersonal": member is not None,
        }
        shape = rng.random()
        if shape < 0.5:
            values["endDate"] = _as_date_value(
                (start + timedelta(days=rng.randint(1, 365))).isoformat()
            )
        elif shape < 0.75:
            values["endDate"] = None  # the rest leave the key out: both open-ended forms appear
        fake._insert("memberships", values)
