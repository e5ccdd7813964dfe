"""OfficeRnD webhooks: signature check, event parsing and deduplication; no I/O.

A delivery carries ``officernd-signature: t=<unix seconds>,v1=<hex>`` where the hex is
HMAC-SHA256(webhook secret, raw body + "." + t) (OFFICERND.md, "Webhooks"). The receiver calls
``verify`` on the raw bytes first, then ``parse_event``, then ``SeenEvents.first_time``, answers
2xx at once and re-fetches the entity by id afterwards: objects inside webhooks may use the older
v1 field names, so only the event's id, type and object id are taken from the body.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SIGNATURE_HEADER = "officernd-signature"
#: How far a delivery's timestamp may be from now, either way, in seconds (replay window).
TOLERANCE_S = 300
#: The largest body accepted; one event with its previous attributes is a few KB.
MAX_BODY_BYTES = 256 * 1024
#: The longest signature header parsed, and the most v1 values in it (secret rotation needs two).
MAX_HEADER_CHARS = 2048
MAX_SIGNATURES = 8
#: Longest event id, event type and object id kept (ids are 24 hex characters).
MAX_ID_CHARS = 128

_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() accepts "²"
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_EVENT_TYPE = re.compile(r"([a-z][a-zA-Z]*)\.[a-zA-Z][a-zA-Z_.]*")
#: Plural of each event type's prefix: the API resource to re-fetch the entity from.
_ENTITIES = {"member": "members", "membership": "memberships", "company": "companies"}


class WebhookRejected(Exception):
    """A delivery that must not be acted on; ``reason`` is a short fixed phrase for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """What a delivery says happened: to be confirmed by re-fetching ``entity``/``object_id``."""

    event_id: str
    event_type: str
    object_id: str | None
    entity: str  # members, memberships, companies... (the type's prefix, as a resource)
    created_at: str  # as sent; "" if absent


def signature(secret: str, raw_body: bytes, timestamp: int) -> str:
    """The header value OfficeRnD would send for ``raw_body`` at ``timestamp`` (for tests and tools)."""
    return f"t={timestamp},v1={_digest(secret, raw_body, str(timestamp))}"


def _digest(secret: str, raw_body: bytes, timestamp: str) -> str:
    signed = raw_body + b"." + timestamp.encode("ascii")
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify(secret: str, raw_body: bytes, header: str | None, *, now: float) -> None:
    """Accept the delivery or raise WebhookRejected; ``now`` is wall-clock Unix seconds.

    Any of several ``v1`` values may match (a secret being rotated); unknown schemes are ignored.
    ValueError if ``secret`` is empty: an empty key would make every signature forgeable.
    """
    if not secret:
        raise ValueError("no webhook secret configured")
    if header is None or not header.strip():
        raise WebhookRejected("unsigned")
    if len(raw_body) > MAX_BODY_BYTES:
        raise WebhookRejected("body too large", f"over {MAX_BODY_BYTES} bytes")
    if len(header) > MAX_HEADER_CHARS:
        raise WebhookRejected("malformed signature", "header too long")
    timestamp: str | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, equals, value = part.partition("=")
        if not equals:
            raise WebhookRejected("malformed signature", "a part without '='")
        key, value = key.strip(), value.strip()
        if key == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(value):
                raise WebhookRejected("malformed signature", "bad or repeated timestamp")
            timestamp = value
        elif key == "v1":
            if not _HEX_SHA256.fullmatch(value):
                raise WebhookRejected("malformed signature", "a v1 value is not 64 hex digits")
            candidates.append(value.lower())
    if timestamp is None:
        raise WebhookRejected("malformed signature", "no timestamp")
    if not candidates:
        raise WebhookRejected("malformed signature", "no v1 signature")
    if len(candidates) > MAX_SIGNATURES:
        raise WebhookRejected("malformed signature", "too many signatures")
    expected = _digest(secret, raw_body, timestamp).encode("ascii")
    matched = False
    for candidate in candidates:  # every one compared, in constant time each
        matched |= hmac.compare_digest(expected, candidate.encode("ascii"))
    if not matched:
        raise WebhookRejected("bad signature")
    # Checked after the signature, so "stale" only ever names a genuine delivery (a replay or a
    # late retry); written so that a NaN ``now`` counts as stale, not as fresh.
    if not abs(now - int(timestamp)) <= TOLERANCE_S:
        raise WebhookRejected("stale timestamp", f"t={timestamp}, now={now:.0f}")


def parse_event(raw_body: bytes) -> WebhookEvent:
    """The event in a delivery whose signature ``verify`` has already accepted (call it first).

    Parsing unverified input would let anyone feed the JSON parser; WebhookRejected if malformed.
    """
    if len(raw_body) > MAX_BODY_BYTES:
        raise WebhookRejected("body too large", f"over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw_body)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise WebhookRejected("malformed body", "not JSON") from err
    if not isinstance(data, dict):
        raise WebhookRejected("malformed body", "not a JSON object")
    event_id = _text(data, "event")
    event_type = _text(data, "eventType")
    if event_id is None or not event_id:
        raise WebhookRejected("malformed body", "no event id")
    if event_type is None:
        raise WebhookRejected("malformed body", "no event type")
    match = _EVENT_TYPE.fullmatch(event_type)
    if match is None:
        raise WebhookRejected("malformed body", "event type not like 'member.updated'")
    created_at = data.get("createdAt", "")
    if not isinstance(created_at, str):
        raise WebhookRejected("malformed body", "createdAt is not a string")
    return WebhookEvent(
        event_id=event_id,
        event_type=event_type,
        object_id=_object_id(data.get("data")),
        entity=_entity(match.group(1)),
        created_at=created_at[:MAX_ID_CHARS],
    )


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        raise WebhookRejected("malformed body", f"{key} is not a short string")
    return value


def _object_id(data: Any) -> str | None:
    """The id of ``data.object`` (``_id``, or ``id`` in older shapes), if it has a usable one."""
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return None
    for key in ("_id", "id"):
        value = obj.get(key)
        if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
            return value
    return None


def _entity(prefix: str) -> str:
    known = _ENTITIES.get(prefix)
    if known is not None:
        return known
    # Types beyond the three the notes list ("booking.created", "fee.updated"...): plural.
    if prefix.endswith("y") and prefix[-2:-1] not in ("a", "e", "i", "o", "u"):
        return prefix[:-1] + "ies"
    return prefix + "s"


class SeenEvents:
    """Event ids already taken, to drop OfficeRnD's redeliveries; bounded in count and age.

    Only record ids of verified deliveries: an unsigned flood must not push real ids out.
    """

    def __init__(
        self,
        capacity: int = 10_000,
        ttl_s: float = 24 * 3600,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        # Insertion order is expiry order (one ttl for all), so the oldest is always first.
        self._expiry: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def first_time(self, event_id: str) -> bool:
        """True the first time an id is seen (and records it); False for a repeat within the ttl."""
        now = self._monotonic()
        while self._expiry:
            oldest, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[oldest]
        if event_id in self._expiry:
            return False
        self._expiry[event_id] = now + self._ttl_s
        while len(self._expiry) > self._capacity:
            # Past capacity the oldest id is forgotten: a very late redelivery of it would be
            # processed again, which re-fetching by id makes harmless.
            self._expiry.popitem(last=False)
        return True

    def forget(self, event_id: str) -> None:
        """Let a redelivery through again (processing of this event failed)."""
        self._expiry.pop(event_id, None)
