"""JSON form of the domain: snapshots, deltas and each entity, validated on the way in.

Pure functions over already-decoded JSON values. Every error is a ``FormatError`` naming the
path of the bad value (``users[12].valid_until``), the value, and what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import re
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway import credentials as creds
from gateway.model import (
    GUEST_USER_PREFIX,
    INVITATION_RULE_PREFIX,
    KIND_ASSURANCE,
    MINUTES_PER_DAY,
    PUBLIC_KEY_BYTES,
    REVALIDATION_DAYS_MAX,
    SINGLE_USER_RULE_TYPES,
    AccessRule,
    AssuranceLevel,
    Credential,
    CredentialKind,
    Door,
    HolidayCalendar,
    Invitation,
    PinHashing,
    RuleType,
    Schedule,
    ScheduleException,
    Site,
    Tag,
    TagScope,
    TimeSlot,
    TimeWindow,
    User,
    UserStatus,
    Weekday,
)

FORMAT = 1  # the snapshot/delta format this code reads and writes

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)|24:00")
_DAY_NAMES = {d.name.lower(): d for d in Weekday}

T = TypeVar("T")


class FormatError(ValueError):
    """Bad snapshot, delta or entity JSON; ``path`` locates the offending value."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


# --- primitives -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _allowed(required: tuple[str, ...], optional: tuple[str, ...]) -> frozenset[str]:
    return frozenset(required) | frozenset(optional)


def _obj(
    value: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(path, f"expected an object, got {type(value).__name__}")
    allowed = _allowed(required, optional)
    if not allowed.issuperset(value):
        for key in value:
            if key not in allowed:
                raise FormatError(
                    _join(path, key), f"unknown field; allowed: {', '.join(sorted(allowed))}"
                )
    for key in required:
        if key not in value:
            raise FormatError(_join(path, key), "missing required field")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# The helpers below take the path of a value as ``path`` plus, optionally, the ``key`` it sits
# under: the whole path is only built for an error (100k-user snapshots, a few per field).


def _at(path: str, key: str | None) -> str:
    return path if key is None else _join(path, key)


def _str(value: Any, path: str, key: str | None = None, *, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise FormatError(
            _at(path, key),
            f"{value!r} is not allowed; expected a non-empty string of at most {max_len} characters",
        )
    return value


def _id(value: Any, path: str, key: str | None = None) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise FormatError(
            _at(path, key),
            f"{value!r} is not a valid id; expected 1-128 of letters, digits and ._:@- (not starting with a symbol)",
        )
    return value


def _bool(value: Any, path: str, key: str | None = None) -> bool:
    if not isinstance(value, bool):
        raise FormatError(_at(path, key), f"{value!r} is not allowed; expected true or false")
    return value


def _int(value: Any, path: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FormatError(path, f"{value!r} is not allowed; expected an integer >= {minimum}")
    return value


def _int_between(
    value: Any, path: str, key: str | None = None, *, minimum: int, maximum: int
) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise FormatError(
            _at(path, key),
            f"{value!r} is not allowed; expected an integer from {minimum} to {maximum}",
        )
    return value


def _number(value: Any, path: str, *, minimum: float, maximum: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not minimum <= value <= maximum
    ):
        raise FormatError(
            path, f"{value!r} is not allowed; expected a number from {minimum} to {maximum}"
        )
    return float(value)


def _datetime(value: Any, path: str, key: str | None = None) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    raise FormatError(
        _at(path, key),
        f"{value!r} is not allowed; expected an ISO-8601 date-time with a UTC offset",
    )


def _opt_datetime(value: Any, path: str, key: str | None = None) -> datetime | None:
    return None if value is None else _datetime(value, path, key)


def _date(value: Any, path: str) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise FormatError(path, f"{value!r} is not allowed; expected a date YYYY-MM-DD")


def _choice(
    value: Any,
    path: str,
    parse: Callable[[str], T],
    allowed: Iterable[str],
    key: str | None = None,
) -> T:
    if isinstance(value, str):
        try:
            return parse(value)
        except (ValueError, KeyError):
            pass
    raise FormatError(
        _at(path, key), f"{value!r} is not allowed; expected one of: {', '.join(allowed)}"
    )


def _list(value: Any, path: str, key: str | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(_at(path, key), f"expected a list, got {type(value).__name__}")
    return value


def _ids(value: Any, path: str, key: str | None = None) -> frozenset[str]:
    items = _list(value, path, key)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not _ID.fullmatch(item):
            _id(item, f"{_at(path, key)}[{i}]")  # raises, naming the item
    return frozenset(items)


def _validity(obj: Mapping[str, Any], path: str) -> tuple[datetime | None, datetime | None]:
    start = _opt_datetime(obj.get("valid_from"), path, "valid_from")
    end = _opt_datetime(obj.get("valid_until"), path, "valid_until")
    if start is not None and end is not None and end <= start:
        raise FormatError(
            _join(path, "valid_until"),
            f"{end.isoformat()} must be after valid_from {start.isoformat()}",
        )
    return start, end


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _minutes(value: Any, path: str) -> int:
    if not isinstance(value, str) or not _HHMM.fullmatch(value):
        raise FormatError(
            path, f"{value!r} is not allowed; expected a time HH:MM from 00:00 to 24:00"
        )
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# --- entities -------------------------------------------------------------------------------


def site_from_json(value: Any, path: str = "site") -> Site:
    """Parse a site; the timezone must be a known IANA name, blacklisted keys mech_key values."""
    obj = _obj(
        value,
        path,
        ("id", "name", "timezone"),
        (
            "key_blacklist",
            "lockdown_override_tag",
            "max_offline_days",
            "offline_limited_kinds",
            "require_admin_2fa",
            "pin_hashing",
        ),
    )
    tz_name = obj["timezone"]
    try:
        if not isinstance(tz_name, str):
            raise ValueError
        ZoneInfo(tz_name)
    except (ValueError, ZoneInfoNotFoundError):
        raise FormatError(
            _join(path, "timezone"),
            f"{tz_name!r} is not allowed; expected an IANA timezone name such as Europe/Rome",
        ) from None
    override = obj.get("lockdown_override_tag")
    return Site(
        _id(obj["id"], _join(path, "id")),
        _str(obj["name"], _join(path, "name")),
        tz_name,
        key_blacklist=_key_blacklist(obj.get("key_blacklist", []), _join(path, "key_blacklist")),
        lockdown_override_tag=None
        if override is None
        else _id(override, _join(path, "lockdown_override_tag")),
        max_offline_days=_max_offline_days(
            obj.get("max_offline_days"), _join(path, "max_offline_days")
        ),
        offline_limited_kinds=_kinds(
            obj.get("offline_limited_kinds", []), _join(path, "offline_limited_kinds")
        ),
        require_admin_2fa=_bool(
            obj.get("require_admin_2fa", False), _join(path, "require_admin_2fa")
        ),
        pin_hashing=_pin_hashing(obj.get("pin_hashing"), _join(path, "pin_hashing")),
    )


#: scrypt cost bounds: below, a stolen cache gives up its PINs at once; above, a Pi cannot
#: check a PIN in well under a second (n = 2^17 with r = 8 needs 128 MiB).
PIN_SCRYPT_N = (2**12, 2**17)
PIN_SCRYPT_R = (1, 8)
PIN_SCRYPT_P = (1, 2)
PIN_SALT_BYTES = (16, 64)


def _pin_hashing(value: Any, path: str) -> PinHashing | None:
    """The site's PIN hashing: a base64 salt of 16-64 bytes and scrypt's n, r and p."""
    if value is None:
        return None
    obj = _obj(value, path, ("salt",), ("n", "r", "p"))
    salt_path = _join(path, "salt")
    try:
        if not isinstance(obj["salt"], str):
            raise ValueError
        salt = base64.b64decode(obj["salt"], validate=True)
    except (ValueError, binascii.Error):
        raise FormatError(salt_path, "expected the salt in base64") from None
    if not PIN_SALT_BYTES[0] <= len(salt) <= PIN_SALT_BYTES[1]:
        raise FormatError(
            salt_path,
            f"a {len(salt)}-byte salt is not allowed; expected {PIN_SALT_BYTES[0]} to "
            f"{PIN_SALT_BYTES[1]} random bytes",
        )
    n = _int_between(
        obj.get("n", 2**14), path, "n", minimum=PIN_SCRYPT_N[0], maximum=PIN_SCRYPT_N[1]
    )
    if n & (n - 1):
        raise FormatError(_join(path, "n"), f"{n} is not allowed; expected a power of two")
    r = _int_between(obj.get("r", 8), path, "r", minimum=PIN_SCRYPT_R[0], maximum=PIN_SCRYPT_R[1])
    p = _int_between(obj.get("p", 1), path, "p", minimum=PIN_SCRYPT_P[0], maximum=PIN_SCRYPT_P[1])
    return PinHashing(salt, n, r, p)


def _pin_hashing_to_json(hashing: PinHashing | None) -> dict[str, Any] | None:
    if hashing is None:
        return None
    return {
        "salt": base64.b64encode(hashing.salt).decode(),
        "n": hashing.n,
        "r": hashing.r,
        "p": hashing.p,
    }


#: The longest outage a site's offline policy may allow (as commercial controllers do).
MAX_OFFLINE_DAYS = 30


def _max_offline_days(value: Any, path: str) -> int | None:
    """None (no limit) or 1..30 days."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OFFLINE_DAYS:
        raise FormatError(
            path, f"{value!r} is not allowed; expected an integer from 1 to {MAX_OFFLINE_DAYS}"
        )
    return value


def _kinds(value: Any, path: str) -> frozenset[CredentialKind]:
    """Credential kind names, each known."""
    allowed = [k.value for k in CredentialKind]
    return frozenset(
        _choice(raw, f"{path}[{i}]", CredentialKind, allowed)
        for i, raw in enumerate(_list(value, path))
    )


def _key_blacklist(value: Any, path: str) -> frozenset[str]:
    """Canonical mech_key values; the same forms as a credential's value are accepted."""
    keys: set[str] = set()
    for i, raw in enumerate(_list(value, path)):
        try:
            if not isinstance(raw, str):
                raise ValueError(f"{raw!r} is not allowed; expected a mech_key value as a string")
            keys.add(creds.canonical_value(CredentialKind.MECHATRONIC_KEY, raw))
        except ValueError as err:
            raise FormatError(f"{path}[{i}]", str(err)) from None
    return frozenset(keys)


def site_to_json(site: Site) -> dict[str, Any]:
    """Serialise a site."""
    return {
        "id": site.id,
        "name": site.name,
        "timezone": site.timezone,
        "key_blacklist": sorted(site.key_blacklist),
        "lockdown_override_tag": site.lockdown_override_tag,
        "max_offline_days": site.max_offline_days,
        "offline_limited_kinds": sorted(k.value for k in site.offline_limited_kinds),
        "require_admin_2fa": site.require_admin_2fa,
        "pin_hashing": _pin_hashing_to_json(site.pin_hashing),
    }


_ASSURANCE_NAMES = [a.label for a in AssuranceLevel]


def door_from_json(value: Any, path: str) -> Door:
    """Parse a door."""
    obj = _obj(
        value,
        path,
        ("id", "name"),
        (
            "min_assurance",
            "unlock_seconds",
            "unlock_schedule",
            "unlock_after_first_grant",
            "tags",
            "keypad",
        ),
    )
    schedule = obj.get("unlock_schedule")
    return Door(
        id=_id(obj["id"], _join(path, "id")),
        name=_str(obj["name"], _join(path, "name")),
        min_assurance=_choice(
            obj.get("min_assurance", "medium"),
            _join(path, "min_assurance"),
            AssuranceLevel.parse,
            _ASSURANCE_NAMES,
        ),
        unlock_seconds=_number(
            obj.get("unlock_seconds", 5), _join(path, "unlock_seconds"), minimum=0.5, maximum=3600
        ),
        unlock_schedule_id=None
        if schedule is None
        else _id(schedule, _join(path, "unlock_schedule")),
        unlock_after_first_grant=_bool(
            obj.get("unlock_after_first_grant", False), _join(path, "unlock_after_first_grant")
        ),
        tags=tuple(sorted(_ids(obj.get("tags", []), path, "tags"))),
        keypad=_bool(obj.get("keypad", False), path, "keypad"),
    )


def door_to_json(door: Door) -> dict[str, Any]:
    """Serialise a door."""
    return {
        "id": door.id,
        "name": door.name,
        "min_assurance": door.min_assurance.label,
        "unlock_seconds": door.unlock_seconds,
        "unlock_schedule": door.unlock_schedule_id,
        "unlock_after_first_grant": door.unlock_after_first_grant,
        "tags": list(door.tags),
        "keypad": door.keypad,
    }


_USER_FIELDS = (("id", "name"), ("status", "tags", "valid_from", "valid_until"))
_STATUSES = {s.value: s for s in UserStatus}
_STATUS_NAMES = tuple(_STATUSES)


def user_from_json(value: Any, path: str, strings: dict[Any, Any] | None = None) -> User:
    """Parse a user; ``strings`` interns repeated values (tag sets) across a large load."""
    obj = _obj(value, path, *_USER_FIELDS)
    start, end = _validity(obj, path)
    tags = tuple(sorted(_ids(obj.get("tags", []), path, "tags")))
    user_id = _id(obj["id"], path, "id")
    if user_id.startswith(GUEST_USER_PREFIX):
        raise FormatError(
            _join(path, "id"),
            f"{user_id!r} is not allowed; ids starting {GUEST_USER_PREFIX!r} are the guests of "
            "invitations",
        )
    if strings is not None:
        # Users often share a tag set, and credentials point at user ids: keep one copy of each.
        tags = strings.setdefault(tags, tags)
        user_id = strings.setdefault(user_id, user_id)
    return User(
        id=user_id,
        name=_str(obj["name"], path, "name"),
        status=_choice(
            obj.get("status", "active"), path, _STATUSES.__getitem__, _STATUS_NAMES, "status"
        ),
        tags=tags,
        valid_from=start,
        valid_until=end,
    )


def user_to_json(user: User) -> dict[str, Any]:
    """Serialise a user."""
    return {
        "id": user.id,
        "name": user.name,
        "status": user.status.value,
        "tags": sorted(user.tags),
        "valid_from": _iso(user.valid_from),
        "valid_until": _iso(user.valid_until),
    }


def credential_from_json(
    value: Any, path: str, strings: dict[str, Any] | None = None
) -> Credential:
    """Parse a credential; its value must match its kind and its assurance what the kind can prove."""
    return Credential(*_credential_fields(value, path, strings))


#: A credential's fields in ``Credential``'s order, as ``_credential_fields`` returns them.
CredentialFields = tuple[
    str,
    str,
    CredentialKind,
    str,
    AssuranceLevel,
    bool,
    datetime | None,
    datetime | None,
    int | None,
    datetime | None,
    bytes | None,
]


def _credential_fields(
    value: Any, path: str, strings: dict[str, Any] | None = None
) -> CredentialFields:
    """``credential_from_json`` without the object: a large snapshot keeps them in columns."""
    obj = _obj(value, path, *_CREDENTIAL_FIELDS)
    kind = _choice(obj["kind"], path, _KINDS.__getitem__, _KIND_NAMES, "kind")
    raw = obj["value"]
    try:
        if not isinstance(raw, str):
            raise ValueError(f"{kind.value} value must be a string")
        canonical = creds.canonical_value(kind, raw)
    except ValueError as err:
        raise FormatError(_join(path, "value"), str(err)) from None
    strongest = KIND_ASSURANCE[kind]
    assurance = strongest
    if "assurance" in obj:
        assurance = _choice(
            obj["assurance"], path, AssuranceLevel.parse, _ASSURANCE_NAMES, "assurance"
        )
        if assurance > strongest:
            raise FormatError(
                _join(path, "assurance"),
                f"{assurance.label!r} is not allowed for {kind.value}; at most {strongest.label}",
            )
    start, end = _validity(obj, path)
    days, revalidated = _revalidation(obj, path, kind)
    public_key = _public_key(obj, path, kind)
    if public_key is not None and canonical != creds.phone_key_id(public_key).hex().upper():
        raise FormatError(
            _join(path, "value"),
            f"{creds.redact(canonical)!r} is not this public key's id; a phone credential's value "
            "is the first 16 bytes of SHA-256 over its public key (docs/ble-credential-protocol.md)",
        )
    user = _id(obj["user"], path, "user")
    if strings is not None:
        user = strings.setdefault(user, user)
    return (
        _id(obj["id"], path, "id"),
        user,
        kind,
        canonical,
        assurance,
        _bool(obj.get("revoked", False), path, "revoked"),
        start,
        end,
        days,
        revalidated,
        public_key,
    )


_REVALIDATION_FIELDS = ("revalidation_days", "revalidated_at")
_CREDENTIAL_FIELDS = (
    ("id", "user", "kind", "value"),
    ("assurance", "revoked", "valid_from", "valid_until", *_REVALIDATION_FIELDS, "public_key"),
)
_KINDS = {k.value: k for k in CredentialKind}
_KIND_NAMES = tuple(_KINDS)


def _revalidation(
    obj: Mapping[str, Any], path: str, kind: CredentialKind
) -> tuple[int | None, datetime | None]:
    """A credential's revalidation period and last revalidation; only a mech_key has them."""
    if kind is not CredentialKind.MECHATRONIC_KEY:
        for key in _REVALIDATION_FIELDS:
            if obj.get(key) is not None:
                raise FormatError(
                    _join(path, key),
                    f"{obj[key]!r} is not allowed for {kind.value}; "
                    f"only {CredentialKind.MECHATRONIC_KEY.value} credentials have {key}",
                )
        return None, None
    days = obj.get("revalidation_days")
    if days is not None:
        days = _int_between(
            days, path, "revalidation_days", minimum=1, maximum=REVALIDATION_DAYS_MAX
        )
    return days, _opt_datetime(obj.get("revalidated_at"), path, "revalidated_at")


def _public_key(obj: Mapping[str, Any], path: str, kind: CredentialKind) -> bytes | None:
    """A phone credential's public key: a P-256 point, SEC1 uncompressed, as hex."""
    raw = obj.get("public_key")
    if raw is None:
        return None
    where = _join(path, "public_key")
    # Imported here: cryptography's bindings (~6 MB) only on sites that have phone keys.
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    if kind is not CredentialKind.BLE_PHONE_KEY:
        raise FormatError(
            where,
            f"not allowed for {kind.value}; only {CredentialKind.BLE_PHONE_KEY.value} has one",
        )
    try:
        if not isinstance(raw, str) or len(raw) != 2 * PUBLIC_KEY_BYTES:
            raise ValueError
        point = bytes.fromhex(raw)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise FormatError(
            where,
            f"{_short(raw)!r} is not a P-256 public key; expected {2 * PUBLIC_KEY_BYTES} hex "
            "digits of an uncompressed SEC1 point (04 ‖ X ‖ Y) on the curve",
        ) from None
    return point


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 20 else text[:16] + "…"


def credential_to_json(credential: Credential) -> dict[str, Any]:
    """Serialise a credential; the revalidation fields only for a mech_key."""
    out: dict[str, Any] = {
        "id": credential.id,
        "user": credential.user_id,
        "kind": credential.kind.value,
        "value": credential.value,
        "assurance": credential.assurance.label,
        "revoked": credential.revoked,
        "valid_from": _iso(credential.valid_from),
        "valid_until": _iso(credential.valid_until),
    }
    if credential.kind is CredentialKind.MECHATRONIC_KEY:
        out["revalidation_days"] = credential.revalidation_days
        out["revalidated_at"] = _iso(credential.revalidated_at)
    if credential.public_key is not None:
        out["public_key"] = credential.public_key.hex()
    return out


def tag_from_json(value: Any, path: str) -> Tag:
    """Parse a tag."""
    obj = _obj(value, path, ("id", "name"), ("special", "owner", "scope"))
    owner = obj.get("owner")
    return Tag(
        id=_id(obj["id"], _join(path, "id")),
        name=_str(obj["name"], _join(path, "name")),
        special=_bool(obj.get("special", False), _join(path, "special")),
        owner=None if owner is None else _str(owner, _join(path, "owner"), max_len=64),
        scope=_choice(obj.get("scope", "users"), path, TagScope, _SCOPE_NAMES, "scope"),
    )


_SCOPE_NAMES = tuple(s.value for s in TagScope)


def tag_to_json(tag: Tag) -> dict[str, Any]:
    """Serialise a tag."""
    return {
        "id": tag.id,
        "name": tag.name,
        "special": tag.special,
        "owner": tag.owner,
        "scope": tag.scope.value,
    }


def _window(value: Any, path: str, *, weekly: bool) -> TimeWindow:
    required = ("days", "start", "end") if weekly else ("start", "end")
    obj = _obj(value, path, required, ("overnight",))
    if weekly:
        names = _list(obj["days"], _join(path, "days"))
        if not names:
            raise FormatError(_join(path, "days"), "must name at least one day")
        days = frozenset(
            _choice(n, f"{path}.days[{i}]", lambda s: _DAY_NAMES[s.lower()], _DAY_NAMES)
            for i, n in enumerate(names)
        )
    else:
        days = frozenset(Weekday)
    start = _minutes(obj["start"], _join(path, "start"))
    end = _minutes(obj["end"], _join(path, "end"))
    overnight = _bool(obj.get("overnight", False), _join(path, "overnight"))
    if start == MINUTES_PER_DAY:
        raise FormatError(_join(path, "start"), "'24:00' is not allowed as a start; use 00:00")
    if overnight and not end < start:
        raise FormatError(
            _join(path, "end"),
            f"{hhmm(end)} is not allowed for an overnight window starting {hhmm(start)}; "
            "an overnight window must end (next day) before its start time",
        )
    if not overnight and end <= start:
        raise FormatError(
            _join(path, "end"),
            f"window {hhmm(start)}-{hhmm(end)} is inverted or empty; the end must be after the start, "
            "or set overnight = true for a window that spans midnight",
        )
    return TimeWindow(days, start, end, overnight)


def _window_to_json(window: TimeWindow, *, weekly: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "start": hhmm(window.start),
        "end": hhmm(window.end),
        "overnight": window.overnight,
    }
    if weekly:
        out = {"days": [d.name.lower() for d in sorted(window.days)], **out}
    return out


_WEEK_MINUTES = 7 * MINUTES_PER_DAY


def week_intervals(windows: Sequence[TimeWindow]) -> list[tuple[int, int, int]]:
    """Each window's pieces as (start, end, window index) in minutes since Monday 00:00."""
    pieces: list[tuple[int, int, int]] = []
    for index, window in enumerate(windows):
        for day in window.days:
            start = day * MINUTES_PER_DAY + window.start
            end = day * MINUTES_PER_DAY + window.end + (MINUTES_PER_DAY if window.overnight else 0)
            if end > _WEEK_MINUTES:  # Sunday overnight wraps to Monday morning
                pieces.append((start, _WEEK_MINUTES, index))
                pieces.append((0, end - _WEEK_MINUTES, index))
            else:
                pieces.append((start, end, index))
    return sorted(pieces)


def _check_no_overlap(windows: Sequence[TimeWindow], path: str) -> None:
    pieces = week_intervals(windows)
    for (_s1, e1, i1), (s2, _e2, i2) in itertools.pairwise(pieces):
        if s2 < e1:
            day = Weekday(s2 // MINUTES_PER_DAY).name.lower()
            raise FormatError(
                f"{path}[{max(i1, i2)}]",
                f"overlaps {path}[{min(i1, i2)}] on {day} at {hhmm(s2 % MINUTES_PER_DAY)}; windows must not overlap",
            )


def _exception(value: Any, path: str) -> ScheduleException:
    obj = _obj(value, path, ("start", "end", "open"), ("note",))
    start = _datetime(obj["start"], _join(path, "start"))
    end = _datetime(obj["end"], _join(path, "end"))
    if end <= start:
        raise FormatError(
            _join(path, "end"), f"{end.isoformat()} must be after start {start.isoformat()}"
        )
    note = obj.get("note", "")
    if not isinstance(note, str):
        raise FormatError(_join(path, "note"), "expected a string")
    return ScheduleException(start, end, _bool(obj["open"], _join(path, "open")), note)


def schedule_from_json(value: Any, path: str) -> Schedule:
    """Parse a schedule; windows may not be inverted or overlap one another."""
    obj = _obj(
        value,
        path,
        ("id", "name", "windows"),
        ("holiday_calendars", "holiday_windows", "exceptions"),
    )
    windows = tuple(
        _window(w, f"{path}.windows[{i}]", weekly=True)
        for i, w in enumerate(_list(obj["windows"], _join(path, "windows")))
    )
    _check_no_overlap(windows, _join(path, "windows"))
    holiday_windows = tuple(
        _window(w, f"{path}.holiday_windows[{i}]", weekly=False)
        for i, w in enumerate(_list(obj.get("holiday_windows", []), _join(path, "holiday_windows")))
    )
    _check_no_overlap(holiday_windows, _join(path, "holiday_windows"))
    calendars = tuple(
        sorted(_ids(obj.get("holiday_calendars", []), _join(path, "holiday_calendars")))
    )
    exceptions = tuple(
        _exception(e, f"{path}.exceptions[{i}]")
        for i, e in enumerate(_list(obj.get("exceptions", []), _join(path, "exceptions")))
    )
    return Schedule(
        id=_id(obj["id"], _join(path, "id")),
        name=_str(obj["name"], _join(path, "name")),
        windows=windows,
        holiday_calendars=calendars,
        holiday_windows=holiday_windows,
        exceptions=exceptions,
    )


def schedule_to_json(schedule: Schedule) -> dict[str, Any]:
    """Serialise a schedule."""
    return {
        "id": schedule.id,
        "name": schedule.name,
        "windows": [_window_to_json(w, weekly=True) for w in schedule.windows],
        "holiday_calendars": list(schedule.holiday_calendars),
        "holiday_windows": [_window_to_json(w, weekly=False) for w in schedule.holiday_windows],
        "exceptions": [
            {"start": e.start.isoformat(), "end": e.end.isoformat(), "open": e.open, "note": e.note}
            for e in schedule.exceptions
        ],
    }


def calendar_from_json(value: Any, path: str) -> HolidayCalendar:
    """Parse a holiday calendar."""
    obj = _obj(value, path, ("id", "name", "dates"), ())
    dates = frozenset(
        _date(d, f"{path}.dates[{i}]")
        for i, d in enumerate(_list(obj["dates"], _join(path, "dates")))
    )
    return HolidayCalendar(
        _id(obj["id"], _join(path, "id")), _str(obj["name"], _join(path, "name")), dates
    )


def calendar_to_json(calendar: HolidayCalendar) -> dict[str, Any]:
    """Serialise a holiday calendar."""
    return {
        "id": calendar.id,
        "name": calendar.name,
        "dates": sorted(d.isoformat() for d in calendar.dates),
    }


def _days(value: Any, path: str, key: str) -> frozenset[Weekday] | None:
    """Day names (``mon``..``sun``); None (left out) means every day."""
    if value is None:
        return None
    names = _list(value, path, key)
    if not names:
        raise FormatError(
            _join(path, key), "must name at least one day; leave days out for every day"
        )
    return frozenset(
        _choice(n, f"{_join(path, key)}[{i}]", lambda t: _DAY_NAMES[t.lower()], _DAY_NAMES)
        for i, n in enumerate(names)
    )


def _days_to_json(days: frozenset[Weekday] | None) -> list[str] | None:
    return None if days is None else [d.name.lower() for d in sorted(days)]


def _time_slot(value: Any, path: str, key: str) -> TimeSlot | None:
    """A daily slot ``{"start": "HH:MM", "end": "HH:MM"}``; an end before the start runs overnight."""
    if value is None:
        return None
    where = _join(path, key)
    obj = _obj(value, where, ("start", "end"), ())
    start = _minutes(obj["start"], _join(where, "start"))
    end = _minutes(obj["end"], _join(where, "end"))
    if start == MINUTES_PER_DAY:
        raise FormatError(_join(where, "start"), "'24:00' is not allowed as a start; use 00:00")
    if end == start or (end == MINUTES_PER_DAY and start == 0):
        raise FormatError(
            _join(where, "end"),
            f"a slot {hhmm(start)}-{hhmm(end)} is empty or the whole day; "
            "leave time_slot out for all day",
        )
    return TimeSlot(start, end)


def _slot_to_json(slot: TimeSlot | None) -> dict[str, str] | None:
    return None if slot is None else {"start": hhmm(slot.start), "end": hhmm(slot.end)}


def _doors_chosen(obj: Mapping[str, Any], path: str) -> tuple[frozenset[str], frozenset[str]]:
    """``doors`` and ``door_tags``; at least one door between them."""
    doors = _ids(obj.get("doors", []), path, "doors")
    door_tags = _ids(obj.get("door_tags", []), path, "door_tags")
    if not doors and not door_tags:
        raise FormatError(
            _join(path, "doors"), "must name at least one door (doors) or door tag (door_tags)"
        )
    return doors, door_tags


_RULE_TYPES = {t.value: t for t in RuleType}
_RULE_TYPE_NAMES = tuple(_RULE_TYPES)


def rule_from_json(value: Any, path: str) -> AccessRule:
    """Parse an access rule; it must name at least one user or tag and one door or door tag."""
    obj = _obj(
        value,
        path,
        ("id", "name"),
        (
            "type",
            "users",
            "tags",
            "doors",
            "door_tags",
            "schedule",
            "valid_from",
            "valid_until",
            "days",
            "time_slot",
        ),
    )
    rule_id = _id(obj["id"], path, "id")
    if rule_id.startswith(INVITATION_RULE_PREFIX):
        raise FormatError(
            _join(path, "id"),
            f"{rule_id!r} is not allowed; ids starting {INVITATION_RULE_PREFIX!r} are the rules "
            "of invitations",
        )
    rule_type = _choice(
        obj.get("type", "any"), path, _RULE_TYPES.__getitem__, _RULE_TYPE_NAMES, "type"
    )
    users = _ids(obj.get("users", []), path, "users")
    tags = _ids(obj.get("tags", []), path, "tags")
    if not users and not tags:
        raise FormatError(
            _join(path, "users" if "users" in obj else "tags"),
            "must name at least one user (users) or user tag (tags)",
        )
    if rule_type in SINGLE_USER_RULE_TYPES and (len(users) != 1 or tags):
        raise FormatError(
            _join(path, "users"),
            f"a {rule_type.value} rule is assigned to a single user: name exactly one user in "
            "users and no tags",
        )
    doors, door_tags = _doors_chosen(obj, path)
    start, end = _validity(obj, path)
    schedule = obj.get("schedule")
    return AccessRule(
        id=rule_id,
        name=_str(obj["name"], _join(path, "name")),
        tags=tags,
        doors=doors,
        schedule_id=None if schedule is None else _id(schedule, _join(path, "schedule")),
        valid_from=start,
        valid_until=end,
        users=users,
        door_tags=door_tags,
        type=rule_type,
        days=_days(obj.get("days"), path, "days"),
        time_slot=_time_slot(obj.get("time_slot"), path, "time_slot"),
    )


def rule_to_json(rule: AccessRule) -> dict[str, Any]:
    """Serialise an access rule."""
    return {
        "id": rule.id,
        "name": rule.name,
        "type": rule.type.value,
        "users": sorted(rule.users),
        "tags": sorted(rule.tags),
        "doors": sorted(rule.doors),
        "door_tags": sorted(rule.door_tags),
        "schedule": rule.schedule_id,
        "valid_from": _iso(rule.valid_from),
        "valid_until": _iso(rule.valid_until),
        "days": _days_to_json(rule.days),
        "time_slot": _slot_to_json(rule.time_slot),
    }


#: The most phones one invitation may be redeemed on.
INVITATION_DEVICES_MAX = 100
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def invitation_from_json(value: Any, path: str) -> Invitation:
    """Parse a guest invitation: an end after its start, 1 to 100 devices, at least one door."""
    obj = _obj(
        value,
        path,
        ("id", "name", "valid_from", "valid_until", "max_devices", "code_sha256"),
        ("doors", "door_tags", "days", "time_slot"),
    )
    start = _datetime(obj["valid_from"], path, "valid_from")
    end = _datetime(obj["valid_until"], path, "valid_until")
    if end <= start:
        raise FormatError(
            _join(path, "valid_until"),
            f"{end.isoformat()} must be after valid_from {start.isoformat()}",
        )
    code = obj["code_sha256"]
    if not isinstance(code, str) or not _SHA256_HEX.fullmatch(code):
        raise FormatError(
            _join(path, "code_sha256"),
            "expected the SHA-256 of the invitation code as 64 lower-case hex digits",
        )
    doors, door_tags = _doors_chosen(obj, path)
    return Invitation(
        id=_id(obj["id"], path, "id"),
        name=_str(obj["name"], path, "name"),
        valid_from=start,
        valid_until=end,
        max_devices=_int_between(
            obj["max_devices"], path, "max_devices", minimum=1, maximum=INVITATION_DEVICES_MAX
        ),
        code_sha256=code,
        doors=doors,
        door_tags=door_tags,
        days=_days(obj.get("days"), path, "days"),
        time_slot=_time_slot(obj.get("time_slot"), path, "time_slot"),
    )


def invitation_to_json(invitation: Invitation) -> dict[str, Any]:
    """Serialise a guest invitation (its code's hash, never the code)."""
    return {
        "id": invitation.id,
        "name": invitation.name,
        "valid_from": invitation.valid_from.isoformat(),
        "valid_until": invitation.valid_until.isoformat(),
        "max_devices": invitation.max_devices,
        "code_sha256": invitation.code_sha256,
        "doors": sorted(invitation.doors),
        "door_tags": sorted(invitation.door_tags),
        "days": _days_to_json(invitation.days),
        "time_slot": _slot_to_json(invitation.time_slot),
    }


@dataclass(frozen=True, slots=True)
class EntityCodec:
    """How one collection of a snapshot is named, parsed and serialised."""

    collection: str
    parse: Callable[..., Any]
    dump: Callable[[Any], dict[str, Any]]
    interns: bool = False


#: The collections of a snapshot, in the order that satisfies references on apply.
CODECS: tuple[EntityCodec, ...] = (
    EntityCodec("tags", tag_from_json, tag_to_json),
    EntityCodec("holiday_calendars", calendar_from_json, calendar_to_json),
    EntityCodec("schedules", schedule_from_json, schedule_to_json),
    EntityCodec("doors", door_from_json, door_to_json),
    EntityCodec("invitations", invitation_from_json, invitation_to_json),
    EntityCodec("users", user_from_json, user_to_json, interns=True),
    EntityCodec("credentials", credential_from_json, credential_to_json, interns=True),
    EntityCodec("rules", rule_from_json, rule_to_json),
)
CODEC_BY_COLLECTION: Mapping[str, EntityCodec] = {c.collection: c for c in CODECS}
COLLECTIONS: tuple[str, ...] = tuple(c.collection for c in CODECS)


class CredentialColumns(Sequence[Credential]):
    """Many credentials in parallel lists, in document order; a ``Credential`` is made on access.

    A 100k-user snapshot holds 300k credentials: as objects they would cost about 110 bytes and
    a garbage-collector entry each, for the few seconds until the cache's tables are built.
    """

    __slots__ = (
        "assurances",
        "ids",
        "kinds",
        "public_keys",
        "revalidation",
        "revoked",
        "users",
        "valid_from",
        "valid_until",
        "values",
    )

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.users: list[str] = []
        self.kinds: list[CredentialKind] = []
        self.values: list[str] = []
        self.assurances: list[AssuranceLevel] = []
        self.revoked = bytearray()
        self.valid_from: list[datetime | None] = []
        self.valid_until: list[datetime | None] = []
        #: (revalidation_days, revalidated_at) by index, only for credentials that have one.
        self.revalidation: dict[int, tuple[int | None, datetime | None]] = {}
        #: a phone credential's public key by index, only for credentials that have one.
        self.public_keys: dict[int, bytes] = {}

    def append(self, fields: CredentialFields) -> None:
        """Add one credential's fields (``Credential``'s order)."""
        cred_id, user, kind, value, assurance, revoked, start, end, days, revalidated, key = fields
        if days is not None or revalidated is not None:
            self.revalidation[len(self.ids)] = (days, revalidated)
        if key is not None:
            self.public_keys[len(self.ids)] = key
        self.ids.append(cred_id)
        self.users.append(user)
        self.kinds.append(kind)
        self.values.append(value)
        self.assurances.append(assurance)
        self.revoked.append(revoked)
        self.valid_from.append(start)
        self.valid_until.append(end)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Credential: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Credential]: ...

    def __getitem__(self, index: int | slice) -> Credential | Sequence[Credential]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        if index < 0:
            index += len(self.ids)
        days, revalidated = self.revalidation.get(index, (None, None))
        return Credential(
            self.ids[index],
            self.users[index],
            self.kinds[index],
            self.values[index],
            self.assurances[index],
            bool(self.revoked[index]),
            self.valid_from[index],
            self.valid_until[index],
            days,
            revalidated,
            self.public_keys.get(index),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable while it is being filled


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole site at one version: replaces everything the cache held.

    Each collection is a sequence of entities: a tuple, or for a streamed snapshot's
    credentials a ``CredentialColumns``.
    """

    version: int
    site: Site
    entities: Mapping[str, Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Delta:
    """Changes taking the cache from ``base_version`` to ``version``."""

    version: int
    base_version: int
    site: Site | None = None
    upserts: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    deletes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    site_id: str | None = None  # the site it is for (the cloud link requires it)


def _no_pause() -> None:
    pass


_SHARDS = 64  # a power of two


class _StringSet:
    """A set of strings kept in many small sets.

    Adding to one set of 300k strings now and then resizes it, rehashing everything in one call
    that holds the GIL for milliseconds; a shard stays small. Dropped shard by shard (``clear``).
    """

    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: list[set[str]] = [set() for _ in range(_SHARDS)]

    def add(self, item: str) -> bool:
        """Add ``item``; False if it was there already."""
        shard = self._shards[hash(item) & (_SHARDS - 1)]
        if item in shard:
            return False
        shard.add(item)
        return True

    def __contains__(self, item: object) -> bool:
        return item in self._shards[hash(item) & (_SHARDS - 1)]

    def clear(self, pause: Callable[[], None] = _no_pause) -> None:
        """Empty the set, calling ``pause`` between shards."""
        for shard in self._shards:
            shard.clear()
            pause()


class _Collection:
    """One collection's entities, parsed item by item (a snapshot can be read as it streams).

    Checks as a whole list would be checked: every item is parsed first, so a bad item is
    reported before a duplicate id, and a duplicate id before a duplicate credential value.
    """

    def __init__(
        self,
        codec: EntityCodec,
        path: str,
        strings: dict[Any, Any],
        *,
        columns: bool = False,
        pause: Callable[[], None] = _no_pause,
    ) -> None:
        self.codec = codec
        self.path = path
        self.ids = _StringSet()
        self._strings = strings
        self._pause = pause
        self._items: list[Any] = []
        self._columns = CredentialColumns() if columns else None
        self._count = 0
        self._duplicate_id: FormatError | None = None
        self._duplicate_value: FormatError | None = None
        # Credential values seen, by kind (a value may be reused by another kind).
        self._values: dict[CredentialKind, _StringSet] = {}

    def add(self, item: Any) -> None:
        """Parse and keep one item."""
        index = self._count
        path = f"{self.path}[{index}]"
        kind: CredentialKind | None
        if self._columns is not None:
            fields = _credential_fields(item, path, self._strings)
            self._columns.append(fields)
            entity_id, kind, value = fields[0], fields[2], fields[3]
        else:
            codec = self.codec
            entity = (
                codec.parse(item, path, self._strings) if codec.interns else codec.parse(item, path)
            )
            self._items.append(entity)
            entity_id = entity.id
            kind, value = (
                (entity.kind, entity.value) if codec.collection == "credentials" else (None, "")
            )
        self._count += 1
        if not self.ids.add(entity_id) and self._duplicate_id is None:
            self._duplicate_id = FormatError(f"{path}.id", f"duplicate id {entity_id!r}")
        if kind is not None:
            values = self._values.get(kind)
            if values is None:
                values = self._values[kind] = _StringSet()
            if not values.add(value) and self._duplicate_value is None:
                self._duplicate_value = FormatError(
                    f"{path}.value", f"{kind.value} value is already used by another credential"
                )

    def finish(self) -> Sequence[Any]:
        """The entities; FormatError for the first duplicate."""
        if self._duplicate_id is not None:
            raise self._duplicate_id
        if self._duplicate_value is not None:
            raise self._duplicate_value
        for values in self._values.values():
            values.clear(self._pause)
        self._values.clear()
        if self._columns is not None:
            return self._columns
        return tuple(self._items)


def _entities(
    value: Any, path: str, codec: EntityCodec, strings: dict[str, Any]
) -> tuple[Any, ...]:
    collection = _Collection(codec, path, strings)
    for item in _list(value, path):
        collection.add(item)
    entities = collection.finish()
    assert isinstance(entities, tuple)
    return entities


def _format(obj: Mapping[str, Any]) -> None:
    value = obj.get("format")
    if type(value) is not int or value != FORMAT:  # True == 1 in Python: insist on an int
        raise FormatError("format", f"{value!r} is not allowed; this gateway reads format {FORMAT}")


_SNAPSHOT_FIELDS = (("format", "version", "site"), COLLECTIONS)


def snapshot_from_json(value: Any) -> Snapshot:
    """Parse and validate a whole snapshot, references included."""
    obj = _obj(value, "", *_SNAPSHOT_FIELDS)
    _format(obj)
    strings: dict[Any, Any] = {}
    entities = {
        c.collection: _entities(obj.get(c.collection, []), c.collection, c, strings) for c in CODECS
    }
    snapshot = Snapshot(
        _int(obj["version"], "version", minimum=1), site_from_json(obj["site"]), entities
    )
    check_references(snapshot.entities, snapshot.site)
    return snapshot


class SnapshotAssembler:
    """Builds a snapshot from its top-level members in document order, for a streaming reader.

    The checks and messages of ``snapshot_from_json``; when a snapshot breaks several rules,
    the first one met in document order is reported. A collection can be fed item by item
    (``begin``, ``add``, ``end``), so the JSON of a whole snapshot never has to be in memory,
    and credentials are kept in columns (``CredentialColumns``). A member given twice counts
    once, the last time, as with ``json.loads`` (the first must be valid too). ``pause`` is
    called now and then during the long checks at the end (a worker thread lets others run).
    """

    def __init__(self, pause: Callable[[], None] = _no_pause) -> None:
        self._pause = pause
        self._strings: dict[Any, Any] = {}
        self._members: dict[str, Any] = {}
        self._collections: dict[str, Sequence[Any]] = {}
        self._ids: dict[str, _StringSet] = {}
        self._open: _Collection | None = None

    @staticmethod
    def is_collection(key: str) -> bool:
        """True if the member ``key`` is a collection (a list of entities)."""
        return key in CODEC_BY_COLLECTION

    def member(self, key: str, value: Any) -> None:
        """A whole top-level member."""
        if key in CODEC_BY_COLLECTION:
            items = _list(value, key)
            self.begin(key)
            for item in items:
                self.add(item)
            self.end()
            return
        if key not in _allowed(*_SNAPSHOT_FIELDS):
            _obj({key: value}, "", *_SNAPSHOT_FIELDS)  # raises: unknown field
        if key == "format":
            _format({"format": value})
        elif key == "version":
            value = _int(value, "version", minimum=1)
        else:
            value = site_from_json(value)
        self._members[key] = value

    def begin(self, key: str) -> None:
        """Start the collection ``key``, to be fed with ``add``."""
        codec = CODEC_BY_COLLECTION[key]
        self._open = _Collection(
            codec, key, self._strings, columns=key == "credentials", pause=self._pause
        )

    def add(self, item: Any) -> None:
        """The next item of the collection begun."""
        assert self._open is not None
        self._open.add(item)

    def end(self) -> None:
        """The collection begun is complete."""
        assert self._open is not None
        collection, self._open = self._open, None
        key = collection.codec.collection
        self._collections[key] = collection.finish()
        self._ids[key] = collection.ids

    def finish(self) -> Snapshot:
        """The snapshot, once every member was given; FormatError for what is missing or dangling."""
        for key in _SNAPSHOT_FIELDS[0]:
            if key not in self._members:
                raise FormatError(key, "missing required field")
        self._strings.clear()
        entities = {c: self._collections.get(c, ()) for c in COLLECTIONS}
        ids = {c: self._ids.get(c) or _StringSet() for c in COLLECTIONS}
        site: Site = self._members["site"]
        _check_references(entities, site, ids, self._pause)
        for collection_ids in ids.values():
            collection_ids.clear(self._pause)
        return Snapshot(self._members["version"], site, entities)


def snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    """Serialise a snapshot."""
    out: dict[str, Any] = {
        "format": FORMAT,
        "version": snapshot.version,
        "site": site_to_json(snapshot.site),
    }
    for codec in CODECS:
        out[codec.collection] = [codec.dump(e) for e in snapshot.entities.get(codec.collection, ())]
    return out


def delta_from_json(value: Any) -> Delta:
    """Parse a delta; references are checked against the cache when it is applied."""
    obj = _obj(
        value, "", ("format", "version", "base_version"), ("site_id", "site", "upsert", "delete")
    )
    _format(obj)
    version = _int(obj["version"], "version", minimum=1)
    base = _int(obj["base_version"], "base_version", minimum=0)
    if base >= version:
        raise FormatError("base_version", f"{base} must be lower than version {version}")
    upsert = _obj(obj.get("upsert", {}), "upsert", (), COLLECTIONS)
    delete = _obj(obj.get("delete", {}), "delete", (), COLLECTIONS)
    strings: dict[Any, Any] = {}
    upserts = {
        k: _entities(v, f"upsert.{k}", CODEC_BY_COLLECTION[k], strings) for k, v in upsert.items()
    }
    deletes = {k: _ids(v, f"delete.{k}") for k, v in delete.items()}
    for collection, ids in deletes.items():
        both = ids & {e.id for e in upserts.get(collection, ())}
        if both:
            raise FormatError(
                f"delete.{collection}", f"{sorted(both)[0]!r} is both upserted and deleted"
            )
    site = None if obj.get("site") is None else site_from_json(obj["site"])
    site_id = None if obj.get("site_id") is None else _id(obj["site_id"], "site_id")
    return Delta(version, base, site, upserts, deletes, site_id)


def delta_to_json(delta: Delta) -> dict[str, Any]:
    """Serialise a delta."""
    out: dict[str, Any] = {
        "format": FORMAT,
        "version": delta.version,
        "base_version": delta.base_version,
    }
    if delta.site_id is not None:
        out["site_id"] = delta.site_id
    if delta.site is not None:
        out["site"] = site_to_json(delta.site)
    if delta.upserts:
        out["upsert"] = {
            k: [CODEC_BY_COLLECTION[k].dump(e) for e in v] for k, v in delta.upserts.items()
        }
    if delta.deletes:
        out["delete"] = {k: sorted(v) for k, v in delta.deletes.items()}
    return out


class References:
    """Answers "does an entity with this id exist?" for each collection."""

    def __init__(self, lookup: Callable[[str, str], bool]) -> None:
        self._lookup = lookup

    def exists(self, collection: str, entity_id: str) -> bool:
        """True if ``collection`` holds ``entity_id`` (an invitation's guest counts as a user)."""
        if collection == "users" and entity_id.startswith(GUEST_USER_PREFIX):
            return self._lookup("invitations", entity_id[len(GUEST_USER_PREFIX) :])
        return self._lookup(collection, entity_id)


@dataclass(frozen=True, slots=True)
class Dangling:
    """A reference to an entity that does not exist."""

    collection: str  # where the reference is
    index: int
    entity_id: str
    key: str
    target_collection: str
    target: str

    def error(self, prefix: str = "") -> FormatError:
        """The error naming where the reference is and what it points at."""
        what = self.target_collection[:-1].replace("_", " ")
        return FormatError(
            f"{prefix}{self.collection}[{self.index}].{self.key}",
            f"{self.target!r} is not a known {what}",
        )


_REFERENCES: tuple[tuple[str, str, Callable[[Any], Iterable[str]], str], ...] = (
    ("credentials", "user", lambda c: (c.user_id,), "users"),
    ("users", "tags", lambda u: u.tags, "tags"),
    ("rules", "users", lambda r: r.users, "users"),
    ("rules", "tags", lambda r: r.tags, "tags"),
    ("rules", "doors", lambda r: r.doors, "doors"),
    ("rules", "door_tags", lambda r: r.door_tags, "tags"),
    ("doors", "tags", lambda d: d.tags, "tags"),
    ("invitations", "doors", lambda i: i.doors, "doors"),
    ("invitations", "door_tags", lambda i: i.door_tags, "tags"),
    ("rules", "schedule", lambda r: () if r.schedule_id is None else (r.schedule_id,), "schedules"),
    (
        "doors",
        "unlock_schedule",
        lambda d: () if d.unlock_schedule_id is None else (d.unlock_schedule_id,),
        "schedules",
    ),
    ("schedules", "holiday_calendars", lambda s: s.holiday_calendars, "holiday_calendars"),
)


def dangling(
    entities: Mapping[str, Iterable[Any]],
    refs: References,
    pause: Callable[[], None] = _no_pause,
) -> Dangling | None:
    """The first reference from ``entities`` to something ``refs`` does not hold, if any."""
    for collection, key, targets, target_collection in _REFERENCES:
        items = entities.get(collection, ())
        if isinstance(items, CredentialColumns):  # the one reference of a credential, unmade
            for index, user in enumerate(items.users):
                pause()
                if not refs.exists("users", user):
                    return Dangling(collection, index, items.ids[index], key, "users", user)
            continue
        for index, entity in enumerate(items):
            pause()
            for target in targets(entity):
                if not refs.exists(target_collection, target):
                    return Dangling(collection, index, entity.id, key, target_collection, target)
    return None


#: Where a tag is named, and the scope it must have there.
_SCOPED: tuple[tuple[str, str, Callable[[Any], Iterable[str]], TagScope], ...] = (
    ("users", "tags", lambda u: u.tags, TagScope.USERS),
    ("rules", "tags", lambda r: r.tags, TagScope.USERS),
    ("rules", "door_tags", lambda r: r.door_tags, TagScope.DOORS),
    ("doors", "tags", lambda d: d.tags, TagScope.DOORS),
    ("invitations", "door_tags", lambda i: i.door_tags, TagScope.DOORS),
)


def misplaced_tag(
    entities: Mapping[str, Iterable[Any]],
    scope_of: Callable[[str], TagScope | None],
    prefix: str = "",
    pause: Callable[[], None] = _no_pause,
) -> FormatError | None:
    """The first user tag used as a door tag (or the other way round) in ``entities``, if any."""
    for collection, key, targets, scope in _SCOPED:
        for index, entity in enumerate(entities.get(collection, ())):
            pause()
            for target in targets(entity):
                found = scope_of(target)
                if found is not None and found is not scope:
                    return FormatError(
                        f"{prefix}{collection}[{index}].{key}",
                        f"{target!r} is a tag of {found.value}, not of {scope.value}",
                    )
    return None


def site_dangling(site: Site, refs: References) -> str | None:
    """The tag ``site`` names as its lockdown override that ``refs`` does not hold, if any."""
    tag = site.lockdown_override_tag
    return tag if tag is not None and not refs.exists("tags", tag) else None


def site_dangling_error(tag: str) -> FormatError:
    """The error for a site whose lockdown override tag does not exist."""
    return FormatError("site.lockdown_override_tag", f"{tag!r} is not a known tag")


def _has_pins(credentials: Iterable[Any], pause: Callable[[], None] = _no_pause) -> bool:
    """True if any of ``credentials`` is a PIN (in slices, ``pause`` between them)."""
    if not isinstance(credentials, CredentialColumns):
        return any(c.kind is CredentialKind.PIN for c in credentials)
    kinds = credentials.kinds
    for start in range(0, len(kinds), 4096):
        if CredentialKind.PIN in kinds[start : start + 4096]:
            return True
        pause()
    return False


def check_references(entities: Mapping[str, Iterable[Any]], site: Site | None = None) -> None:
    """Raise FormatError if a snapshot's entities (or its site) refer to anything it lacks."""
    ids = {collection: {e.id for e in entities.get(collection, ())} for collection in COLLECTIONS}
    _check_references(entities, site, ids)


def _check_references(
    entities: Mapping[str, Iterable[Any]],
    site: Site | None,
    ids: Mapping[str, Container[str]],
    pause: Callable[[], None] = _no_pause,
) -> None:
    refs = References(lambda c, i: i in ids[c])
    found = dangling(entities, refs, pause)
    if found is not None:
        raise found.error()
    scopes = {tag.id: tag.scope for tag in entities.get("tags", ())}
    misplaced = misplaced_tag(entities, scopes.get, pause=pause)
    if misplaced is not None:
        raise misplaced
    if (
        site is not None
        and site.pin_hashing is None
        and _has_pins(entities.get("credentials", ()), pause)
    ):
        raise FormatError(
            "site.pin_hashing",
            "missing: the site has pin credentials, and their hashes cannot be checked without "
            "the site's salt and scrypt parameters",
        )
    tag = None if site is None else site_dangling(site, refs)
    if tag is not None:
        raise site_dangling_error(tag)
