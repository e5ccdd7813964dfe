"""The webhook endpoint OfficeRnD posts to: verify, parse, deduplicate, queue, answer at once."""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable

from aiohttp import web

from gateway.officernd.webhooks import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    SeenEvents,
    WebhookEvent,
    WebhookRejected,
    parse_event,
    verify,
)

_LOGGER = logging.getLogger(__name__)

PATH = "/hooks/officernd"
#: A rejection reason is logged at most once per this many seconds (with the count since).
LOG_EVERY_S = 60.0


def _answer(status: int, **body: object) -> web.Response:
    return web.json_response(body, status=status)


async def _read_up_to(request: web.Request, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes (it may arrive in many pieces)."""
    body = bytearray()
    while len(body) < limit:
        chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


class WebhookReceiver:
    """``handle`` serves ``POST /hooks/officernd``; events go to ``submit`` in arrival order."""

    def __init__(
        self,
        secret: Callable[[], str | None],
        submit: Callable[[WebhookEvent], None],
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``secret`` gives the webhook's signing secret now (None: no webhook is set up)."""
        self._secret = secret
        self._submit = submit
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._seen = SeenEvents(monotonic=monotonic)
        self.accepted = 0
        self.duplicates = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self._unlogged: collections.Counter[str] = collections.Counter()
        self._logged_at: dict[str, float] = {}

    async def handle(self, request: web.Request) -> web.Response:
        """Verify the signature over the raw body before reading anything in it; 2xx at once."""
        secret = self._secret()
        if secret is None:
            return _answer(404, error="no OfficeRnD webhook is set up on this gateway")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return self._reject(413, WebhookRejected("body too large"))
        raw = await _read_up_to(request, MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return self._reject(413, WebhookRejected("body too large"))
        try:
            verify(secret, raw, request.headers.get(SIGNATURE_HEADER), now=self._wall_clock())
        except WebhookRejected as err:
            return self._reject(401, err)
        try:
            event = parse_event(raw)
        except WebhookRejected as err:
            return self._reject(413 if err.reason == "body too large" else 400, err)
        if not self._seen.first_time(event.event_id):
            self.duplicates += 1
            return _answer(200, duplicate=True)
        self.accepted += 1
        self._submit(event)
        return _answer(200, accepted=True)

    def _reject(self, status: int, err: WebhookRejected) -> web.Response:
        """Count it, log it at most once a minute per reason, and say why (no secrets in it)."""
        self.rejected[err.reason] += 1
        self._unlogged[err.reason] += 1
        now = self._monotonic()
        last = self._logged_at.get(err.reason)
        if last is None or now - last >= LOG_EVERY_S:
            count, self._unlogged[err.reason] = self._unlogged[err.reason], 0
            self._logged_at[err.reason] = now
            _LOGGER.warning("OfficeRnD webhook refused (%s), %d since last said", err, count)
        return web.Response(
            status=status,
            text=json.dumps({"error": err.reason}),
            content_type="application/json",
        )

    def status(self) -> dict[str, object]:
        """Counts for the status page."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": dict(self.rejected),
        }
