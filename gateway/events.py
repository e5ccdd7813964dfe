"""Making events, and the event log: durable in the outbox first, then shown to listeners."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.credentials import redact
from gateway.model import CredentialKind, Decision, Event, EventType, Presentation


def new_event(event_type: EventType, at: datetime, data: Mapping[str, Any] | None = None) -> Event:
    """An event with a fresh unique id."""
    return Event(id=uuid.uuid4().hex, type=event_type, at=at, data=dict(data or {}))


def decision_event(decision: Decision, presentation: Presentation | None) -> Event:
    """The event recording a decision; the credential's value is redacted, never sent whole."""
    data: dict[str, Any] = {
        "door": decision.door_id,
        "reason": decision.reason.value,
        "mode": decision.mode.value,
        "credential": decision.credential_id,
        "user": decision.user_id,
        "rule": decision.rule_id,
        "assurance": decision.assurance.label if decision.assurance is not None else None,
    }
    if presentation is not None:
        data["kind"] = presentation.kind.value
        # A PIN's hash is short of the digits by one scrypt: even four of its hex digits would
        # give a four-digit PIN back to whoever holds the site's salt.
        hidden = presentation.kind is CredentialKind.PIN
        data["value_hint"] = "…" if hidden else redact(presentation.value)
    event_type = EventType.ACCESS_GRANTED if decision.granted else EventType.ACCESS_DENIED
    return new_event(event_type, decision.at, data)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event with the outbox sequence number it was committed under."""

    seq: int
    event: Event


class EventStore(Protocol):
    """Where events become durable (the outbox)."""

    async def append(self, event: Event) -> int:
        """Commit ``event``; return its sequence number."""


class EventLog:
    """Records events: committed to the outbox first, then kept in a bounded recent list."""

    def __init__(self, store: EventStore, *, recent: int = 200) -> None:
        self._store = store
        self._recent: deque[LoggedEvent] = deque(maxlen=recent)
        self._listeners: list[Callable[[LoggedEvent], None]] = []

    async def record(self, event: Event) -> LoggedEvent:
        """Make ``event`` durable, then tell listeners; returns it with its sequence number."""
        logged = LoggedEvent(await self._store.append(event), event)
        self._recent.append(logged)
        for listener in list(self._listeners):
            listener(logged)
        return logged

    def recent(self, limit: int = 50) -> list[LoggedEvent]:
        """The latest events, newest first."""
        items = list(self._recent)[-limit:]
        items.reverse()
        return items

    def add_listener(self, listener: Callable[[LoggedEvent], None]) -> Callable[[], None]:
        """Call ``listener`` after each recorded event; returns a remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
