"""The messages of the cloud link: topics, commands down, event batches and status up.

Pure functions over bytes and values: no I/O, clock or logging. A payload reaches a parser here
only after its signature was verified (``gateway.signing``); deltas are ``codec`` deltas and have
no parser of their own. Command errors name the path of the bad value (``command.seconds``), the
value and what is allowed, in the style of ``codec``.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from gateway.codec import FormatError, _choice, _datetime, _id, _int_between, _join, _obj
from gateway.events import new_event
from gateway.model import DoorMode, Event, EventType
from gateway.outbox import StoredEvent, _format_at, event_to_json

FORMAT: Final = 1  # the format of commands, event batches and status this code reads and writes

TOPIC_ROOT: Final = "luckey/v1/gw"
QOS: Final = 1  # every topic of the link

#: Limits of one events message (the MQTT payload); a single larger event still goes alone.
BATCH_MAX_EVENTS: Final = 100
BATCH_MAX_BYTES: Final = 128 * 1024

#: A valid command is well under 1 KiB; a larger payload is refused before it is decoded.
COMMAND_MAX_BYTES: Final = 8 * 1024

#: The longest a command may stay valid, from ``issued_at`` to ``expires_at``.
COMMAND_LIFETIME_MAX: Final = timedelta(days=7)

#: ``set_mode``'s door for every door of the site.
ALL_DOORS: Final = "*"

#: How much of a rejection reason a ``cloud.rejected`` event carries.
REASON_MAX_CHARS: Final = 1000

_GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMMAND_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_PATH = "command"  # the root of every path in a command error


class MessageError(ValueError):
    """A malformed cloud message; ``path`` locates the offending value (``command.seconds``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


# --- topics ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    """The MQTT topics of one gateway, all under ``luckey/v1/gw/<gateway id>/``."""

    cmd: str  # cloud → gateway: commands
    delta: str  # cloud → gateway: site-data deltas
    events: str  # gateway → cloud: event batches
    ack: str  # gateway → cloud: reserved (command results travel as events)
    status: str  # gateway → cloud: retained status, and the last will

    @property
    def subscriptions(self) -> tuple[str, str]:
        """The topics the gateway subscribes to."""
        return (self.cmd, self.delta)


def check_gateway_id(gateway_id: str) -> str:
    """Return ``gateway_id`` if it is 1-64 of ``A-Z a-z 0-9 _ -``; ValueError otherwise."""
    # No '/', '+' or '#': the id is a topic level, and the broker ACL is written on it.
    if not _GATEWAY_ID.fullmatch(gateway_id):
        raise ValueError(
            f"gateway id {gateway_id[:80]!r} is not allowed; expected 1-64 of A-Z a-z 0-9 _ -"
        )
    return gateway_id


def topics(gateway_id: str) -> Topics:
    """The topics of ``gateway_id``; ValueError if the id is not allowed."""
    base = f"{TOPIC_ROOT}/{check_gateway_id(gateway_id)}"
    return Topics(f"{base}/cmd", f"{base}/delta", f"{base}/events", f"{base}/ack", f"{base}/status")


# --- commands -------------------------------------------------------------------------------


class CommandKind(enum.StrEnum):
    """What a command asks for."""

    UNLOCK = "unlock"
    SET_MODE = "set_mode"
    SYNC = "sync"  # pull a snapshot now


class UnlockMode(enum.StrEnum):
    """How an ``unlock`` command unlocks."""

    MOMENTARY = "momentary"  # for ``seconds``, or the door's own unlock time
    HELD = "held"  # until another command changes it


#: The modes ``set_mode`` may set; ``unlocked`` belongs to the door's schedule.
SETTABLE_MODES: Final[Mapping[str, DoorMode]] = {
    m.value: m for m in (DoorMode.NORMAL, DoorMode.LOCKDOWN, DoorMode.EMERGENCY_OPEN)
}


class CommandStatus(enum.StrEnum):
    """How a command ended, as its ``command.result`` event says."""

    DONE = "done"
    FAILED = "failed"
    REFUSED = "refused"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Command:
    """A command from the cloud, validated; the fields a kind does not use are None."""

    id: str
    kind: CommandKind
    issued_at: datetime
    expires_at: datetime
    door: str | None = None  # a door id; for set_mode also ALL_DOORS
    mode: UnlockMode | DoorMode | None = None  # UnlockMode for unlock, DoorMode for set_mode
    seconds: int | None = None  # momentary unlock only; None: the door's own unlock time
    # The gateway it is for: a signed command seen on one gateway's topic cannot be replayed
    # on another's.
    gateway: str = ""

    def expired(self, now: datetime) -> bool:
        """True once ``now`` has reached ``expires_at``."""
        return now >= self.expires_at


@dataclass(frozen=True, slots=True)
class _KindFields:
    """The fields a command kind has beyond the common ones."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


_COMMON_FIELDS = ("format", "id", "gateway", "kind", "issued_at", "expires_at")
_KIND_FIELDS: Final[Mapping[CommandKind, _KindFields]] = {
    CommandKind.UNLOCK: _KindFields(("door", "mode"), ("seconds",)),
    CommandKind.SET_MODE: _KindFields(("door", "mode")),
    CommandKind.SYNC: _KindFields(()),
}


def parse_command(payload: bytes) -> Command:
    """Decode and validate a command (UTF-8 JSON); MessageError naming the path, value and rule."""
    value = _decode_json(payload)
    try:
        return _command(value, _PATH)
    except FormatError as err:
        raise MessageError(err.path, str(err).removeprefix(f"{err.path}: ")) from err


def _decode_json(payload: bytes) -> Any:
    """The JSON value of ``payload``; MessageError if it is too large, not UTF-8 or not JSON."""
    if len(payload) > COMMAND_MAX_BYTES:
        raise MessageError(
            _PATH, f"{len(payload)} bytes is too large; a command is at most {COMMAND_MAX_BYTES}"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MessageError(_PATH, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except MessageError:
        raise
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep nesting
        raise MessageError(_PATH, f"not JSON: {err}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; MessageError on a repeated key."""
    # A signed payload must mean one thing: parsers differ on which of two equal keys wins.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MessageError(_PATH, f"field {key[:64]!r} appears twice; each field at most once")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    """Refuse NaN and the infinities, which are not JSON."""
    raise MessageError(_PATH, f"{name} is not allowed; JSON numbers only")


def _command(value: Any, path: str) -> Command:
    """Validate a decoded command: the envelope, then the fields of its kind."""
    if not isinstance(value, dict):
        raise FormatError(path, f"expected an object, got {type(value).__name__}")
    _check_format(_required(value, path, "format"), _join(path, "format"))
    kind = _choice(
        _required(value, path, "kind"),
        _join(path, "kind"),
        CommandKind,
        [k.value for k in CommandKind],
    )
    fields = _KIND_FIELDS[kind]
    obj = _obj(value, path, (*_COMMON_FIELDS, *fields.required), fields.optional)
    command_id = _command_id(obj["id"], _join(path, "id"))
    gateway = _gateway(obj["gateway"], _join(path, "gateway"))
    issued_at, expires_at = _lifetime(obj, path)
    door, mode, seconds = _KIND_PARSERS[kind](obj, path)
    return Command(command_id, kind, issued_at, expires_at, door, mode, seconds, gateway)


def _gateway(value: Any, path: str) -> str:
    """A gateway id (as in the topics); FormatError otherwise."""
    try:
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not allowed; expected a gateway id as a string")
        return check_gateway_id(value)
    except ValueError as err:
        raise FormatError(path, str(err)) from None


def _required(obj: Mapping[str, Any], path: str, key: str) -> Any:
    """``obj[key]``; FormatError if it is missing."""
    if key not in obj:
        raise FormatError(_join(path, key), "missing required field")
    return obj[key]


def _check_format(value: Any, path: str) -> None:
    """FormatError unless ``value`` is the command format this code reads."""
    if type(value) is not int or value != FORMAT:  # True == 1 in Python: insist on an int
        raise FormatError(path, f"{value!r} is not allowed; this gateway reads format {FORMAT}")


def _command_id(value: Any, path: str) -> str:
    """A command id: 1-64 of letters, digits and ``._:-``."""
    if not isinstance(value, str) or not _COMMAND_ID.fullmatch(value):
        shown = f"{value[:64]!r}…" if isinstance(value, str) and len(value) > 64 else repr(value)
        raise FormatError(
            path, f"{shown} is not a valid command id; expected 1-64 of letters, digits and ._:-"
        )
    return value


def _lifetime(obj: Mapping[str, Any], path: str) -> tuple[datetime, datetime]:
    """``issued_at`` and ``expires_at``: aware, in order, at most COMMAND_LIFETIME_MAX apart."""
    issued_at = _datetime(obj["issued_at"], _join(path, "issued_at"))
    expires_path = _join(path, "expires_at")
    expires_at = _datetime(obj["expires_at"], expires_path)
    if expires_at <= issued_at:
        raise FormatError(
            expires_path,
            f"{expires_at.isoformat()} must be after issued_at {issued_at.isoformat()}",
        )
    if expires_at - issued_at > COMMAND_LIFETIME_MAX:
        raise FormatError(
            expires_path,
            f"{expires_at.isoformat()} is {expires_at - issued_at} after issued_at "
            f"{issued_at.isoformat()}; at most {COMMAND_LIFETIME_MAX.days} days are allowed",
        )
    return issued_at, expires_at


_KindResult = tuple[str | None, UnlockMode | DoorMode | None, int | None]


def _unlock(obj: Mapping[str, Any], path: str) -> _KindResult:
    """``door``, ``mode`` (momentary or held) and, for momentary only, ``seconds``."""
    door = _id(obj["door"], _join(path, "door"))
    mode = _choice(obj["mode"], _join(path, "mode"), UnlockMode, [m.value for m in UnlockMode])
    # null is the same as absent, as for every optional field in codec.
    seconds = obj.get("seconds")
    if seconds is None:
        return door, mode, None
    seconds_path = _join(path, "seconds")
    if mode is UnlockMode.HELD:
        raise FormatError(
            seconds_path,
            f"{seconds!r} is not allowed with mode 'held'; seconds goes only with 'momentary'",
        )
    return door, mode, _int_between(seconds, seconds_path, minimum=1, maximum=3600)


def _set_mode(obj: Mapping[str, Any], path: str) -> _KindResult:
    """``door`` (a door id or ``*``) and ``mode`` (normal, lockdown or emergency_open)."""
    door = obj["door"]
    if door != ALL_DOORS:
        door = _id(door, _join(path, "door"))
    mode = _choice(
        obj["mode"], _join(path, "mode"), SETTABLE_MODES.__getitem__, list(SETTABLE_MODES)
    )
    return door, mode, None


def _sync(obj: Mapping[str, Any], path: str) -> _KindResult:
    """A sync has nothing beyond the common fields."""
    return None, None, None


_KIND_PARSERS: Final = {
    CommandKind.UNLOCK: _unlock,
    CommandKind.SET_MODE: _set_mode,
    CommandKind.SYNC: _sync,
}


def command_payload(command: Command) -> bytes:
    """Encode ``command`` as ``parse_command`` reads it: the cloud's side, for tests and tools."""
    document: dict[str, Any] = {
        "format": FORMAT,
        "id": command.id,
        "gateway": command.gateway,
        "kind": command.kind.value,
        "issued_at": command.issued_at.isoformat(),
        "expires_at": command.expires_at.isoformat(),
    }
    optional = {"door": command.door, "mode": command.mode, "seconds": command.seconds}
    document.update((key, value) for key, value in optional.items() if value is not None)
    return _compact(document)


# --- events up ------------------------------------------------------------------------------


def events_batches(
    gateway_id: str, events: Iterable[StoredEvent]
) -> Iterator[tuple[bytes, list[int]]]:
    """Pack ``events`` in order into messages; yield each payload with the seqs it carries.

    A message holds at most BATCH_MAX_EVENTS events and BATCH_MAX_BYTES bytes, except that
    an event larger than that goes alone. ValueError at once if the gateway id is not allowed.
    """
    # Checked here, not in the generator: a bad id fails at the call, not at the first next().
    gateway = json.dumps(check_gateway_id(gateway_id))
    head = f'{{"format":{FORMAT},"gateway":{gateway},"events":['.encode()
    return _batches(head, b"]}", events)


def _batches(
    head: bytes, tail: bytes, events: Iterable[StoredEvent]
) -> Iterator[tuple[bytes, list[int]]]:
    """Fill ``head`` + comma-joined events + ``tail`` up to the limits, in order."""
    # The events are already compact JSON: join their bytes rather than re-encoding a document,
    # which also makes the size of the payload exact before it is built.
    bodies: list[bytes] = []
    seqs: list[int] = []
    size = len(head) + len(tail)
    for stored in events:
        body = event_to_json(stored.event).encode()
        full = len(bodies) == BATCH_MAX_EVENTS or size + 1 + len(body) > BATCH_MAX_BYTES
        if bodies and full:
            yield head + b",".join(bodies) + tail, seqs
            bodies, seqs, size = [], [], len(head) + len(tail)
        size += len(body) + (1 if bodies else 0)  # the comma before every event but the first
        bodies.append(body)
        seqs.append(stored.seq)
    if bodies:
        yield head + b",".join(bodies) + tail, seqs


# --- status ---------------------------------------------------------------------------------


class LinkState(enum.StrEnum):
    """The ``state`` of a status message."""

    ONLINE = "online"
    OFFLINE = "offline"  # also the last will, published by the broker when the link dies


def status_payload(
    gateway_id: str,
    state: LinkState,
    *,
    at: datetime,
    cache_version: int | None,
    offline_since: datetime | None,
    outbox_pending: int,
) -> bytes:
    """The retained status message; ValueError on a bad gateway id or a naive time."""
    return _compact(
        {
            "format": FORMAT,
            "gateway": check_gateway_id(gateway_id),
            "state": state.value,
            "at": _format_at(at),
            "cache_version": cache_version,
            "offline_since": None if offline_since is None else _format_at(offline_since),
            "outbox_pending": outbox_pending,
        }
    )


# --- events about the link -----------------------------------------------------------------


def command_result_event(
    command: Command, status: CommandStatus, detail: str, at: datetime
) -> Event:
    """The ``command.result`` event for ``command``."""
    data = {
        "command": command.id,
        "kind": command.kind.value,
        "status": status.value,
        "detail": detail,
    }
    return new_event(EventType.COMMAND_RESULT, at, data)


class RejectedWhat(enum.StrEnum):
    """What a ``cloud.rejected`` event is about."""

    DELTA = "delta"
    COMMAND = "command"
    SNAPSHOT = "snapshot"


def cloud_rejected_event(
    what: RejectedWhat, reason: str, at: datetime, details: Mapping[str, Any] | None = None
) -> Event:
    """The ``cloud.rejected`` event: ``what`` was refused for ``reason`` (cut to a bounded size)."""
    if len(reason) > REASON_MAX_CHARS:
        # Reasons quote values from the message; an event in the outbox stays small anyway.
        reason = reason[: REASON_MAX_CHARS - 1] + "…"
    # what and reason last: details cannot overwrite them.
    data = {**(details or {}), "what": what.value, "reason": reason}
    return new_event(EventType.CLOUD_REJECTED, at, data)


def _compact(document: Mapping[str, Any]) -> bytes:
    """Compact JSON with sorted keys, as the outbox writes events."""
    return json.dumps(document, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
