"""OfficeRnD Flex API v2 over HTTP: client-credentials tokens, cursor paging, classified errors.

One client per organisation, on the daemon's shared aiohttp session. Tokens are cached and
renewed a margin before they expire; the identity host allows five token requests a minute, so
this client never sends more than that, whatever its callers do. Every request has a timeout;
429, 5xx, timeouts and refused connections are retried (``Retry-After`` first, otherwise the
shared backoff with jitter) up to ``max_retries`` times, then classified. The client secret, the
access token and members' passwords never reach a log line or an exception; emails are redacted.

API facts: the design notes, OFFICERND.md ("API facts").
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import logging
import math
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import aiohttp

from gateway.backoff import Backoff
from gateway.credentials import redact

_LOGGER = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://app.officernd.com/api/v2"
DEFAULT_IDENTITY_URL = "https://identity.officernd.com/oauth/token"

# Scopes are ``flex.{module}.{resource}.{action}`` (OFFICERND.md, "Token").
MEMBERS_READ = "flex.community.members.read"
MEMBERSHIPS_READ = "flex.community.memberships.read"
COMPANIES_READ = "flex.community.companies.read"
PLANS_READ = "flex.billing.plans.read"
WEBHOOKS_READ = "flex.settings.webhooks.read"
WEBHOOKS_CREATE = "flex.settings.webhooks.create"
PORTAL_ACCESS_UPDATE = "flex.community.members.portalAccess.update"
SIGNIN = "flex.user.auth.signin"

#: What syncing needs: members, memberships, companies, plans and webhooks, read only.
READ_SCOPES: tuple[str, ...] = (
    MEMBERS_READ,
    MEMBERSHIPS_READ,
    COMPANIES_READ,
    PLANS_READ,
    WEBHOOKS_READ,
)
#: Everything the connector can use: reading, creating its webhook, portal access and sign-in.
ALL_SCOPES: tuple[str, ...] = (*READ_SCOPES, WEBHOOKS_CREATE, PORTAL_ACCESS_UPDATE, SIGNIN)

#: Module of each resource, for naming the scope a refused request needed.
_MODULES = {
    "members": "community",
    "memberships": "community",
    "companies": "community",
    "plans": "billing",
    "webhooks": "settings",
}
_ACTIONS = {"GET": "read", "POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}

#: A token is renewed this long before it expires (it lasts an hour and has no refresh token).
TOKEN_RENEW_MARGIN_S = 300.0
#: Near its end a cached token is no longer a fallback when renewing it fails.
TOKEN_SAFETY_S = 30.0
#: The identity host's limit: 5 token requests per rolling minute, then 429 (OFFICERND.md).
TOKEN_REQUESTS_PER_WINDOW = 5
TOKEN_WINDOW_S = 60.0
#: ``expires_in`` when the answer lacks a usable one (the documented value).
DEFAULT_EXPIRES_IN_S = 3599.0
#: ``$limit`` above this is a 400.
MAX_PAGE_SIZE = 50
#: The shared backoff between attempts when the server gives no ``Retry-After``.
RETRY_BASE_S = 1.0
RETRY_CAP_S = 30.0
#: A ``Retry-After`` longer than this is not waited out inside one call: RateLimited at once.
RETRY_AFTER_MAX_S = 120.0
#: The largest answer read (a page of 50 members is a few tens of KB).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
#: Server messages are cut to this in errors and logs.
MAX_MESSAGE_CHARS = 300

_RESOURCE = re.compile(r"[A-Za-z][A-Za-z0-9-]*(?:/[A-Za-z][A-Za-z0-9-]*)*")
_SCOPE_NAME = re.compile(r"flex(?:\.[A-Za-z][A-Za-z0-9]*){3,4}")  # portalAccess has 4 parts
_RETRY_SECONDS = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,6})?")
# A sign-in 401 that is about our token, not the member's password (refresh and retry once).
_TOKEN_TROUBLE = re.compile(r"token|expired|jwt", re.IGNORECASE)


# --- errors -------------------------------------------------------------------------------------


class OfficeRnDError(Exception):
    """Base of the connector's errors; ``str()`` is a sentence for an operator, with no secret."""


class BadCredentials(OfficeRnDError):
    """The Client ID and Secret (or a member's email and password) were refused: fix, do not retry."""


class MissingScope(OfficeRnDError):
    """The application lacks a permission; ``scope`` names it when known."""

    def __init__(self, message: str, scope: str | None = None) -> None:
        super().__init__(message)
        self.scope = scope


class OrganizationNotFound(OfficeRnDError):
    """No organisation has the configured slug: fix the administration portal name."""


class RateLimited(OfficeRnDError):
    """OfficeRnD (or this client's token budget) says wait; ``retry_after_s`` says how long if known."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unreachable(OfficeRnDError):
    """DNS, connection, timeout or 5xx after the retries: try again later."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the last 5xx, if the server answered at all


class ApiError(OfficeRnDError):
    """Any other refusal (4xx) or an answer that is not what the API documents; not retried."""

    def __init__(self, status: int, message: str, what: str) -> None:
        super().__init__(f"OfficeRnD answered HTTP {status} to {what}: {message}")
        self.status = status
        self.message = message


# --- settings and results -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfficeRnDSettings:
    """One organisation and the API application that reads it; hosts configurable for regions."""

    org: str
    client_id: str
    client_secret: str = field(repr=False)
    api_base: str = DEFAULT_API_BASE
    identity_url: str = DEFAULT_IDENTITY_URL
    scopes: tuple[str, ...] = READ_SCOPES


@dataclass(frozen=True, slots=True)
class ActivationReport:
    """What a successful ``check`` found."""

    org: str
    scopes: tuple[str, ...]  # granted, as the token answer lists them
    members_visible: bool  # the first members page held at least one member
    token_expires_in_s: float
    read_rate_remaining: int | None  # x-ratelimit-remaining-read-minute, if sent


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    scopes: tuple[str, ...]
    expires_in_s: float
    renew_at: float  # monotonic
    expires_at: float  # monotonic


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None

    def message(self, secrets: Sequence[str]) -> str:
        """The server's explanation (NestJS ``message``, string or list; or OAuth's), scrubbed."""
        data = self.json()
        text = ""
        if isinstance(data, dict):
            message = data.get("message")
            if isinstance(message, list):
                text = "; ".join(str(item) for item in message)
            elif isinstance(message, str):
                text = message
            else:
                for key in ("error_description", "error"):
                    if isinstance(data.get(key), str):
                        text = data[key]
                        break
        elif data is None:
            text = self.body[:MAX_MESSAGE_CHARS].decode("utf-8", "replace").strip()
        return _scrub(text or "no explanation given", secrets)[:MAX_MESSAGE_CHARS]

    def oauth_error(self) -> str | None:
        """The OAuth 2 ``error`` code of a token answer (RFC 6749 §5.2), if any."""
        data = self.json()
        code = data.get("error") if isinstance(data, dict) else None
        return code if isinstance(code, str) else None


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "…")
    return text


def redact_email(address: str) -> str:
    """An email for logs: the last characters of the local part, and the domain."""
    local, at, domain = address.rpartition("@")
    return f"{redact(local)}@{domain}" if at else redact(address)


def _retry_after_s(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds from ``now`` (wall clock): delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if _RETRY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are GMT (RFC 9110 §5.6.7)
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _is_org_missing(reply: _Reply) -> bool:
    # An unknown slug comes back as 500 "Organization not found" (OFFICERND.md, "Errors"):
    # permanent, so it must be told apart from a real server error and not retried.
    if reply.status not in (404, 500):
        return False
    text = reply.message(()).lower()
    return "organization not found" in text or "organisation not found" in text


def scope_for(method: str, resource: str) -> str | None:
    """The scope a request needs, by the ``flex.{module}.{resource}.{action}`` pattern."""
    parts = resource.split("/")
    if parts[0] == "members" and parts[-1] == "portal-access":
        return PORTAL_ACCESS_UPDATE
    if parts[:2] == ["auth", "signin"]:
        return SIGNIN
    module = _MODULES.get(parts[0])
    action = _ACTIONS.get(method.upper())
    if module is None or action is None:
        return None
    return f"flex.{module}.{parts[0]}.{action}"


def _named_scope(text: str, candidates: Sequence[str]) -> str | None:
    """The scope an error text names (one of ``candidates`` first), or the only candidate."""
    named = _SCOPE_NAME.findall(text)
    for scope in named:
        if scope in candidates:
            return str(scope)
    if named:
        return str(named[0])
    return candidates[0] if len(candidates) == 1 else None


def _missing_scope(scope: str | None, requested: Sequence[str]) -> MissingScope:
    where = "under Settings → Data & Extensibility → Developer Tools"
    if scope is None:
        listed = ", ".join(requested)
        return MissingScope(
            f"the OfficeRnD application lacks one of the permissions {listed}: "
            f"check its permissions {where}"
        )
    return MissingScope(
        f"the OfficeRnD application lacks the permission {scope}: grant it {where}", scope
    )


# --- the client ---------------------------------------------------------------------------------


class OfficeRnDClient:
    """The Flex API v2 of one organisation; safe to share between tasks."""

    def __init__(
        self,
        settings: OfficeRnDSettings,
        session: aiohttp.ClientSession,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        request_timeout_s: float = 15.0,
        max_retries: int = 4,
    ) -> None:
        """``monotonic``/``sleep`` drive token lifetimes and waits; ``wall_clock`` HTTP dates."""
        self._settings = settings
        self._session = session
        self._monotonic = monotonic
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._max_retries = max(0, max_retries)
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self._token_times: collections.deque[float] = collections.deque()
        self._trouble: str | None = None  # the failure being logged, for transitions only
        self._budget_logged = False
        self.requests_made = 0  # every HTTP request sent, token requests included
        self.token_requests = 0

    # -- tokens -----------------------------------------------------------------------------------

    async def token(self) -> str:
        """A valid access token: cached, renewed early, at most 5 requests per rolling minute."""
        return (await self._current_token(wait=True)).value

    async def _current_token(self, *, wait: bool) -> _Token:
        async with self._token_lock:  # concurrent callers share one token request
            cached = self._token
            now = self._monotonic()
            if cached is not None and now < cached.renew_at:
                return cached
            usable = cached is not None and now < cached.expires_at - TOKEN_SAFETY_S
            try:
                # While the old token still works there is no point waiting for the budget.
                fresh = await self._fetch_token(self._settings.scopes, wait=wait and not usable)
            except (RateLimited, Unreachable) as err:
                if cached is None or not usable:
                    raise
                # Renewal is early precisely so that a failed one costs nothing yet.
                _LOGGER.debug("token renewal postponed (%s); the current token still works", err)
                return cached
            self._token = fresh
            return fresh

    def _drop_token(self, used: str, why: str) -> None:
        """Forget the token a request was refused with (unless another task renewed it since)."""
        if self._token is not None and self._token.value == used:
            _LOGGER.info("OfficeRnD refused the access token (%s); asking for a new one", why)
            self._token = None

    async def _take_token_slot(self, wait: bool) -> None:
        """Count one token request against the budget; wait for a slot or raise RateLimited."""
        while True:
            now = self._monotonic()
            while self._token_times and now - self._token_times[0] >= TOKEN_WINDOW_S:
                self._token_times.popleft()
            if len(self._token_times) < TOKEN_REQUESTS_PER_WINDOW:
                self._token_times.append(now)
                self.token_requests += 1
                self._budget_logged = False
                return
            delay = self._token_times[0] + TOKEN_WINDOW_S - now
            if not wait:
                raise RateLimited(
                    f"this gateway asked OfficeRnD for {TOKEN_REQUESTS_PER_WINDOW} access tokens "
                    f"in the last minute, the most it allows; try again in {math.ceil(delay)} s",
                    delay,
                )
            if not self._budget_logged:
                self._budget_logged = True
                _LOGGER.warning(
                    "OfficeRnD token budget (%d a minute) spent; waiting %.0f s",
                    TOKEN_REQUESTS_PER_WINDOW,
                    delay,
                )
            await self._sleep(delay)

    async def _fetch_token(self, scopes: Sequence[str], *, wait: bool) -> _Token:
        settings = self._settings
        form = {
            "client_id": settings.client_id,
            "client_secret": settings.client_secret,
            "grant_type": "client_credentials",
            "scope": " ".join(scopes),
        }

        async def gate() -> None:
            await self._take_token_slot(wait)

        reply = await self._exchange(
            "POST",
            settings.identity_url,
            what="the token request",
            idempotent=True,
            headers={"Accept": "application/json"},
            form=form,
            gate=gate,
        )
        # Measured on arrival: the server's clock started a little earlier, which the renewal
        # margin (minutes) dwarfs.
        received = self._monotonic()
        secrets = (settings.client_secret,)
        if reply.status in (400, 401, 403):
            text = reply.message(secrets)
            if reply.oauth_error() == "invalid_scope" or "scope" in text.lower():
                raise _missing_scope(_named_scope(text, scopes), scopes)
            raise BadCredentials(
                f"OfficeRnD did not accept the Client ID ({redact(settings.client_id)}) and Client "
                f"Secret: copy both again from Settings → Data & Extensibility → Developer Tools "
                f"({text})"
            )
        data = reply.json()
        if reply.status != 200 or not isinstance(data, dict):
            raise ApiError(reply.status, reply.message(secrets), "the token request")
        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            raise ApiError(reply.status, "the answer carries no access_token", "the token request")
        expires_in = data.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            expires_in = DEFAULT_EXPIRES_IN_S
        lifetime = float(expires_in)
        if not math.isfinite(lifetime) or lifetime <= 0:
            lifetime = DEFAULT_EXPIRES_IN_S
        granted = data.get("scope")
        # RFC 6749 §5.1: the answer lists the scopes only if they differ from those requested.
        granted_scopes = tuple(granted.split()) if isinstance(granted, str) else tuple(scopes)
        margin = min(TOKEN_RENEW_MARGIN_S, lifetime / 2)  # a short-lived token is still used
        _LOGGER.debug("OfficeRnD access token obtained, valid %.0f s", lifetime)
        return _Token(
            value,
            granted_scopes,
            lifetime,
            renew_at=received + lifetime - margin,
            expires_at=received + lifetime,
        )

    # -- HTTP ---------------------------------------------------------------------------------------

    def _url(self, resource: str, entity_id: str | None = None, suffix: str | None = None) -> str:
        """The URL of ``resource`` (optionally one object, and a sub-resource of it)."""
        for part in (resource, suffix):
            if part is not None and not _RESOURCE.fullmatch(part):
                raise ValueError(f"not an OfficeRnD resource path: {part!r}")
        org = urllib.parse.quote(self._settings.org, safe="")
        url = f"{self._settings.api_base.rstrip('/')}/organizations/{org}/{resource}"
        if entity_id is not None:
            if entity_id in ("", ".", ".."):  # ".." would climb out of the resource
                raise ValueError(f"not an OfficeRnD id: {entity_id!r}")
            # Ids may come from webhook bodies: quoted, so an id can never reach another path.
            url += "/" + urllib.parse.quote(entity_id, safe="")
        return url if suffix is None else f"{url}/{suffix}"

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        form: Mapping[str, str] | None,
        body: Any,
        what: str,
    ) -> _Reply:
        """One HTTP exchange within the request timeout; the body read up to the size limit."""
        self.requests_made += 1
        async with self._session.request(
            method,
            url,
            headers=headers,
            params=params,
            data=form,
            json=body,
            timeout=self._timeout,
            allow_redirects=False,  # a redirect is not in the API; never carry the token elsewhere
        ) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ApiError(
                        response.status, f"the answer is over {MAX_RESPONSE_BYTES} bytes", what
                    )
                chunks.append(chunk)
            return _Reply(response.status, response.headers, b"".join(chunks))

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        what: str,
        idempotent: bool,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        body: Any = None,
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> _Reply:
        """Send with retries on 429, 5xx, timeouts and refused connections; the final answer.

        A request that may have reached the server (timeout, 5xx) is repeated only if
        ``idempotent``: a second POST could create a second webhook.
        """
        backoff = Backoff(base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S)
        host = urllib.parse.urlsplit(url).netloc or url
        attempt = 0
        while True:
            if gate is not None:
                await gate()
            retry_after: float | None = None
            status: int | None = None
            last_error: BaseException | None = None
            try:
                reply = await self._send(
                    method, url, headers=headers, params=params, form=form, body=body, what=what
                )
            except aiohttp.InvalidURL as err:
                raise Unreachable(f"the OfficeRnD address {err} is not a valid URL") from err
            except aiohttp.ClientSSLError as err:  # a certificate problem does not fix itself
                raise Unreachable(f"OfficeRnD at {host}: TLS failed ({err})") from err
            except aiohttp.ClientConnectorError as err:
                # Never connected, so nothing was sent: repeating is safe for any method.
                failure = f"cannot connect to {host} ({err.os_error or err})"
                retryable = True
                last_error = err
            except (TimeoutError, aiohttp.ClientError) as err:
                failure = f"no answer from {host} ({str(err) or type(err).__name__})"
                retryable = idempotent
                last_error = err
            else:
                if reply.status == 429:
                    retry_after = _retry_after_s(
                        reply.headers.get("Retry-After"), self._wall_clock()
                    )
                    if attempt >= self._max_retries or (retry_after or 0.0) > RETRY_AFTER_MAX_S:
                        self._failed(what, "rate limited", final=True)
                        wait = f"; try again in {math.ceil(retry_after)} s" if retry_after else ""
                        raise RateLimited(
                            f"OfficeRnD is rate limiting this gateway ({what}){wait}", retry_after
                        )
                    failure, retryable = "rate limited (HTTP 429)", True  # it was not carried out
                elif reply.status >= 500 and not _is_org_missing(reply):
                    status = reply.status
                    failure = f"HTTP {reply.status} from {host}"
                    retryable = idempotent
                    # A 503 may say when to come back (RFC 9110 §10.2.3); if sensible, do so.
                    hint = _retry_after_s(reply.headers.get("Retry-After"), self._wall_clock())
                    retry_after = hint if hint is not None and hint <= RETRY_AFTER_MAX_S else None
                else:
                    if self._trouble is not None:
                        _LOGGER.info("OfficeRnD answers again (%s)", what)
                        self._trouble = None
                    return reply
            if not retryable or attempt >= self._max_retries:
                self._failed(what, failure, final=True)
                tries = f" after {attempt + 1} attempts" if attempt else ""
                error = Unreachable(
                    f"OfficeRnD could not be reached for {what}: {failure}{tries}", status
                )
                raise error from last_error
            delay = retry_after if retry_after is not None else backoff.next_delay()
            self._failed(what, f"{failure}; retrying in {delay:.1f} s", final=False)
            await self._sleep(delay)
            attempt += 1

    def _failed(self, what: str, failure: str, *, final: bool) -> None:
        """Log a failure: the first of a run at WARNING, repeats at DEBUG."""
        level = logging.DEBUG if self._trouble is not None else logging.WARNING
        self._trouble = failure
        _LOGGER.log(level, "OfficeRnD %s: %s%s", what, failure, "; giving up" if final else "")

    async def _api(
        self,
        method: str,
        resource: str,
        *,
        what: str,
        idempotent: bool,
        entity_id: str | None = None,
        suffix: str | None = None,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        wait: bool = True,
        not_found_ok: bool = False,
    ) -> _Reply:
        """An authenticated API request, classified: the 2xx answer (or a 404 if ``not_found_ok``)."""
        url = self._url(resource, entity_id, suffix)
        scope = scope_for(method, resource if suffix is None else f"{resource}/{suffix}")
        for second_try in (False, True):
            token = (await self._current_token(wait=wait)).value
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            reply = await self._exchange(
                method,
                url,
                what=what,
                idempotent=idempotent,
                headers=headers,
                params=params,
                body=body,
            )
            if reply.status != 401 or second_try:
                break
            text = reply.message((token,))
            if "scope" in text.lower():  # a missing scope can come back as 401 (OFFICERND.md)
                break
            # Revoked, or expired early: one new token, one more try.
            self._drop_token(token, text)
        self._classify(reply, what=what, scope=scope, secrets=(token,), not_found_ok=not_found_ok)
        return reply

    def _classify(
        self,
        reply: _Reply,
        *,
        what: str,
        scope: str | None,
        secrets: Sequence[str],
        not_found_ok: bool = False,
    ) -> None:
        """Raise the error an answer means, or return for 2xx (and 404 if ``not_found_ok``)."""
        if 200 <= reply.status < 300:
            return
        if _is_org_missing(reply):
            raise OrganizationNotFound(
                f"OfficeRnD has no organisation {self._settings.org!r}: check the administration "
                f"portal name (OfficeRnD → Settings → General, or the admin URL …/admin/<name>)"
            )
        text = reply.message(secrets)
        if reply.status in (401, 403):
            requested = self._settings.scopes
            named = _named_scope(text, [scope] if scope else requested)
            error = _missing_scope(named if named else scope, requested)
            if named and named not in requested:
                error = MissingScope(
                    f"{error}; this gateway does not ask for it yet: add it to the scopes", named
                )
            raise error
        if reply.status == 404 and not_found_ok:
            return
        raise ApiError(reply.status, text, what)

    # -- the API ------------------------------------------------------------------------------------

    async def list(
        self, resource: str, params: Mapping[str, str] | None = None, *, page_size: int = 50
    ) -> AsyncIterator[dict[str, Any]]:
        """Every object of a list, page after page (``$limit``/``$cursorNext``), in order."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}, not {page_size}")
        query = dict(params or {})
        if "$limit" in query or "$cursorNext" in query:
            raise ValueError("paging parameters are set by list() itself")
        query["$limit"] = str(page_size)
        cursors: set[str] = set()
        what = f"listing {resource}"
        while True:
            reply = await self._api("GET", resource, what=what, idempotent=True, params=query)
            results, cursor = _page(reply, what)
            for item in results:
                yield item
            # The last page has cursorNext absent or null (both seen); "" ends it too.
            if cursor is None or cursor == "":
                return
            if not isinstance(cursor, str) or cursor in cursors:
                # A repeated cursor would page forever; a silently short listing would make a
                # sync remove members that exist: fail instead.
                raise ApiError(reply.status, "the page cursor repeats or is not a string", what)
            cursors.add(cursor)
            query["$cursorNext"] = cursor

    async def get(self, resource: str, entity_id: str) -> dict[str, Any] | None:
        """One object by id, or None if OfficeRnD has no such object (404)."""
        what = f"reading {resource} {entity_id}"
        reply = await self._api(
            "GET", resource, what=what, idempotent=True, entity_id=entity_id, not_found_ok=True
        )
        if reply.status == 404:
            return None
        data = reply.json()
        if not isinstance(data, dict):
            raise ApiError(reply.status, "the answer is not a JSON object", what)
        return data

    async def set_portal_access(
        self, member_id: str, enabled: bool, *, send_invitation: bool = False
    ) -> None:
        """Turn a member's Member App (portal) access on or off (``PUT …/portal-access``)."""
        body = {"isPortalAccessEnabled": enabled, "shouldSendInvitation": send_invitation}
        await self._api(
            "PUT",
            "members",
            what=f"setting portal access of member {member_id}",
            idempotent=True,  # a PUT of the same state twice is the same state
            entity_id=member_id,
            suffix="portal-access",
            body=body,
        )

    async def create_webhook(
        self, url: str, event_types: Sequence[str], description: str
    ) -> tuple[str, str]:
        """Register a webhook; its id and its signing secret (shown only in this answer)."""
        what = "creating the webhook"
        body = {"url": url, "eventTypes": [*event_types], "description": description}
        reply = await self._api("POST", "webhooks", what=what, idempotent=False, body=body)
        data = reply.json()
        hook_id = data.get("_id") if isinstance(data, dict) else None
        secret = data.get("secret") if isinstance(data, dict) else None
        if not isinstance(hook_id, str) or not hook_id or not isinstance(secret, str) or not secret:
            raise ApiError(reply.status, "the answer lacks the webhook's _id or secret", what)
        _LOGGER.info("OfficeRnD webhook %s created for %s", hook_id, url)
        return hook_id, secret

    async def sign_in(self, email: str, password: str) -> dict[str, Any]:
        """A member's email and password checked by OfficeRnD; the signed-in user's profile.

        BadCredentials if refused. The password goes to OfficeRnD only, once per attempt (no
        retry that could count twice against a lockout), and into no log line or exception.
        """
        who = redact_email(email)
        what = f"signing in {who}"
        if SIGNIN not in self._settings.scopes:
            # Never send a password that cannot succeed.
            raise _missing_scope(SIGNIN, self._settings.scopes)
        url = self._url("auth/signin")
        body = {"email": email, "password": password}
        for second_try in (False, True):
            token = (await self._current_token(wait=True)).value
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            reply = await self._exchange(
                "POST", url, what=what, idempotent=False, headers=headers, body=body
            )
            secrets = (password, email, token)
            if reply.status != 401:
                break
            text = reply.message(secrets)
            if "scope" in text.lower():
                raise _missing_scope(SIGNIN, self._settings.scopes)
            if second_try or not _TOKEN_TROUBLE.search(text):
                # Only a 401 about the token earns a retry: a member guessing passwords must
                # not spend the token budget (5 a minute) that syncing depends on.
                _LOGGER.info("OfficeRnD refused the sign-in of %s", who)
                raise BadCredentials(f"OfficeRnD did not accept the email and password of {who}")
            self._drop_token(token, text)
        self._classify(reply, what=what, scope=SIGNIN, secrets=secrets)
        data = reply.json()
        if not isinstance(data, dict):
            raise ApiError(reply.status, "the answer is not a JSON object", what)
        _LOGGER.debug("OfficeRnD accepted the sign-in of %s", who)
        return data

    async def check(self) -> ActivationReport:
        """Activation: a token with the configured scopes, then one real request; classified.

        Interactive, so nothing waits on the token budget: RateLimited says how long instead.
        """
        scopes = self._settings.scopes
        try:
            token = await self._current_token(wait=False)
        except MissingScope as err:
            if err.scope is not None or len(scopes) < 2:
                raise
            raise _missing_scope(await self._find_missing_scope(scopes), scopes) from err
        missing = [scope for scope in scopes if scope not in token.scopes]
        if missing:
            raise _missing_scope(missing[0], scopes)
        try:
            reply = await self._api(
                "GET",
                "members",
                what="reading members",
                idempotent=True,
                params={"$limit": "1"},
                wait=False,
            )
        except ApiError as err:
            if err.status != 404:
                raise
            # The organisation is checked before the route: a 404 here is a wrong base URL.
            raise ApiError(
                404,
                f"{err.message} (is the API base URL {self._settings.api_base} right?)",
                "reading members",
            ) from err
        results, _ = _page(reply, "reading members")
        remaining = reply.headers.get("x-ratelimit-remaining-read-minute", "")
        report = ActivationReport(
            org=self._settings.org,
            scopes=token.scopes,
            members_visible=bool(results),
            token_expires_in_s=token.expires_in_s,
            read_rate_remaining=int(remaining) if remaining.isdecimal() else None,
        )
        _LOGGER.info("OfficeRnD organisation %r reachable with this application", report.org)
        return report

    async def _find_missing_scope(self, scopes: Sequence[str]) -> str | None:
        """Which scope the application lacks, by halving the set (within the token budget)."""
        # A refused token request does not say which scope; halving finds one in ⌈log2 n⌉
        # requests, 3 for the 5 read scopes, so activation stays within 5 a minute.
        candidates = [*scopes]
        while len(candidates) > 1:
            half = candidates[: len(candidates) // 2]
            try:
                await self._fetch_token(half, wait=False)
            except MissingScope:
                candidates = half
            except OfficeRnDError:  # budget spent, or worse: say what is known
                return None
            else:
                candidates = candidates[len(half) :]
        return candidates[0]


def _page(reply: _Reply, what: str) -> tuple[Sequence[dict[str, Any]], Any]:
    """The results and ``cursorNext`` of a list answer (ApiError if it is not one)."""
    data = reply.json()
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or not all(isinstance(item, dict) for item in results):
        raise ApiError(reply.status, "the answer is not a page of objects", what)
    return results, data.get("cursorNext") if isinstance(data, dict) else None
