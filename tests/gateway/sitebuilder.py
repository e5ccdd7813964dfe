"""A terse builder for site snapshots, deltas and cache views, going through the JSON codec.

    view = (
        site(tz="Europe/Rome")
        .door("front", min_assurance="low")
        .user("u1", tags=["staff"])
        .credential("c1", "u1")
        .rule("r1", tags=["staff"], doors=["front"])
        .view()
    )

Everything is written as snapshot JSON, serialised to text and parsed back with
``codec.snapshot_from_json``, so every test built here also exercises the codec.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Self
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway import codec
from gateway.credentials import VALUE_BYTES, Verified
from gateway.model import AssuranceLevel, Credential, CredentialKind
from gateway.view import CacheView

JSON = dict[str, Any]


def phone_key(n: int) -> str:
    """The ``n``-th (n ≥ 1) fixed P-256 public key, as site data writes it (hex SEC1 point)."""
    public = ec.derive_private_key(n, ec.SECP256R1()).public_key()
    return public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint).hex()


PHONE_KEY = phone_key(7)
When = datetime | str | None


# --- instants -------------------------------------------------------------------------------


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, second: int = 0
) -> datetime:
    """An aware UTC instant."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def at(tz: str, wall_clock: str, *, fold: int = 0) -> datetime:
    """The instant of ``wall_clock`` (``"2026-06-12 22:00"``) in ``tz``; ``fold`` picks the pass."""
    return datetime.fromisoformat(wall_clock).replace(tzinfo=ZoneInfo(tz), fold=fold)


def iso(value: When) -> str | None:
    """An instant as the codec wants it (strings pass through untouched, to test bad ones)."""
    return value.isoformat() if isinstance(value, datetime) else value


# --- entity JSON ----------------------------------------------------------------------------


def _put(out: JSON, **fields: Any) -> JSON:
    """Add the fields that are not None: what is left out exercises the codec's defaults."""
    out.update({key: value for key, value in fields.items() if value is not None})
    return out


def window(
    days: str | Iterable[str], start: str, end: str, *, overnight: bool | None = None
) -> JSON:
    """A weekly window; ``days`` is one day name or several (``"fri"``, ``["mon", "tue"]``)."""
    names = [days] if isinstance(days, str) else list(days)
    return _put({"days": names, "start": start, "end": end}, overnight=overnight)


def holiday_window(start: str, end: str, *, overnight: bool | None = None) -> JSON:
    """A window that applies on holidays (every day of the week)."""
    return _put({"start": start, "end": end}, overnight=overnight)


def exception(start: When, end: When, *, opens: bool, note: str | None = None) -> JSON:
    """A one-off opening (``opens``) or closing interval."""
    return _put({"start": iso(start), "end": iso(end), "open": opens}, note=note)


def door_json(
    door_id: str,
    *,
    name: str | None = None,
    min_assurance: str | None = None,
    unlock_seconds: float | None = None,
    unlock_schedule: str | None = None,
    unlock_after_first_grant: bool | None = None,
    tags: Iterable[str] | None = None,
    keypad: bool | None = None,
) -> JSON:
    """A door as snapshot JSON."""
    return _put(
        {"id": door_id, "name": name or f"Door {door_id}"},
        min_assurance=min_assurance,
        unlock_seconds=unlock_seconds,
        unlock_schedule=unlock_schedule,
        unlock_after_first_grant=unlock_after_first_grant,
        tags=None if tags is None else list(tags),
        keypad=keypad,
    )


def tag_json(
    tag_id: str,
    *,
    name: str | None = None,
    special: bool | None = None,
    owner: str | None = None,
    scope: str | None = None,
) -> JSON:
    """A tag as snapshot JSON."""
    return _put(
        {"id": tag_id, "name": name or f"Tag {tag_id}"}, special=special, owner=owner, scope=scope
    )


def user_json(
    user_id: str,
    *,
    name: str | None = None,
    tags: Iterable[str] | None = None,
    status: str | None = None,
    valid_from: When = None,
    valid_until: When = None,
) -> JSON:
    """A user as snapshot JSON."""
    return _put(
        {"id": user_id, "name": name or f"User {user_id}"},
        tags=None if tags is None else list(tags),
        status=status,
        valid_from=iso(valid_from),
        valid_until=iso(valid_until),
    )


def value_for(kind: str, n: int) -> str:
    """The ``n``-th distinct valid identifier of ``kind`` (upper-case hex of its first size)."""
    size = VALUE_BYTES[CredentialKind(kind)][0]
    return f"{n:0{2 * size}X}"


def credential_json(
    credential_id: str,
    user: str,
    *,
    kind: str = "nfc_uid",
    value: str,
    assurance: str | None = None,
    revoked: bool | None = None,
    valid_from: When = None,
    valid_until: When = None,
    revalidation_days: Any = None,
    revalidated_at: When = None,
    public_key: Any = None,
) -> JSON:
    """A credential as snapshot JSON (``revalidation_days`` untyped, to test bad ones)."""
    return _put(
        {"id": credential_id, "user": user, "kind": kind, "value": value},
        assurance=assurance,
        revoked=revoked,
        valid_from=iso(valid_from),
        valid_until=iso(valid_until),
        revalidation_days=revalidation_days,
        revalidated_at=iso(revalidated_at),
        public_key=public_key,
    )


def schedule_json(
    schedule_id: str,
    windows: Iterable[JSON] = (),
    *,
    name: str | None = None,
    holiday_calendars: Iterable[str] | None = None,
    holiday_windows: Iterable[JSON] | None = None,
    exceptions: Iterable[JSON] | None = None,
) -> JSON:
    """A schedule as snapshot JSON."""
    return _put(
        {"id": schedule_id, "name": name or f"Schedule {schedule_id}", "windows": list(windows)},
        holiday_calendars=None if holiday_calendars is None else list(holiday_calendars),
        holiday_windows=None if holiday_windows is None else list(holiday_windows),
        exceptions=None if exceptions is None else list(exceptions),
    )


def calendar_json(
    calendar_id: str, dates: Iterable[date | str], *, name: str | None = None
) -> JSON:
    """A holiday calendar as snapshot JSON."""
    return {
        "id": calendar_id,
        "name": name or f"Calendar {calendar_id}",
        "dates": [d if isinstance(d, str) else d.isoformat() for d in dates],
    }


def slot(start: str, end: str) -> JSON:
    """A daily time slot of a rule or an invitation."""
    return {"start": start, "end": end}


def _opt_list(items: Iterable[str] | None) -> list[str] | None:
    return None if items is None else list(items)


def rule_json(
    rule_id: str,
    *,
    tags: Iterable[str] | None = None,
    doors: Iterable[str] | None = None,
    name: str | None = None,
    schedule: str | None = None,
    valid_from: When = None,
    valid_until: When = None,
    type: str | None = None,
    users: Iterable[str] | None = None,
    door_tags: Iterable[str] | None = None,
    days: Iterable[str] | None = None,
    time_slot: JSON | None = None,
) -> JSON:
    """An access rule as snapshot JSON (lists left out when not given)."""
    return _put(
        {"id": rule_id, "name": name or f"Rule {rule_id}"},
        type=type,
        users=_opt_list(users),
        tags=_opt_list(tags),
        doors=_opt_list(doors),
        door_tags=_opt_list(door_tags),
        schedule=schedule,
        valid_from=iso(valid_from),
        valid_until=iso(valid_until),
        days=_opt_list(days),
        time_slot=time_slot,
    )


def invitation_json(
    invitation_id: str,
    *,
    valid_from: When,
    valid_until: When,
    max_devices: Any = 1,
    code_sha256: str = "0" * 64,
    name: str | None = None,
    doors: Iterable[str] | None = None,
    door_tags: Iterable[str] | None = None,
    days: Iterable[str] | None = None,
    time_slot: JSON | None = None,
) -> JSON:
    """A guest invitation as snapshot JSON."""
    return _put(
        {
            "id": invitation_id,
            "name": name or f"Guest {invitation_id}",
            "valid_from": iso(valid_from),
            "valid_until": iso(valid_until),
            "max_devices": max_devices,
            "code_sha256": code_sha256,
        },
        doors=_opt_list(doors),
        door_tags=_opt_list(door_tags),
        days=_opt_list(days),
        time_slot=time_slot,
    )


#: A fixed PIN salt for tests (site data carries a random one).
PIN_SALT = "c2FsdHNhbHRzYWx0c2FsdA=="  # b"saltsaltsaltsalt"
#: The cheapest PIN hashing the codec allows: tests hash many PINs.
PIN_HASHING = {"salt": PIN_SALT, "n": 4096, "r": 1, "p": 1}


# --- the builder ----------------------------------------------------------------------------


class SiteBuilder:
    """Collects a site's entities as JSON; tags that users and rules name are added for you."""

    def __init__(
        self,
        tz: str = "Europe/Rome",
        *,
        version: int = 1,
        site_id: str = "site-1",
        auto_tags: bool = True,
    ) -> None:
        self.version = version
        self.site: JSON = {"id": site_id, "name": "Test site", "timezone": tz}
        self.auto_tags = auto_tags
        self.entities: dict[str, list[JSON]] = {name: [] for name in codec.COLLECTIONS}
        self._values = 0

    def blacklist(self, *values: str) -> Self:
        """Add mechatronic key values to the site's key blacklist."""
        self.site.setdefault("key_blacklist", []).extend(values)
        return self

    def lockdown_override(self, tag_id: str) -> Self:
        """Let holders of ``tag_id`` through doors in lockdown."""
        self.site["lockdown_override_tag"] = tag_id
        return self

    def pin_hashing(self, hashing: JSON | None = None) -> Self:
        """Give the site a PIN hashing (the cheap test one unless told)."""
        self.site["pin_hashing"] = dict(hashing or PIN_HASHING)
        return self

    def invitation(self, invitation_id: str, **fields: Any) -> Self:
        """Add a guest invitation (see ``invitation_json``)."""
        self.entities["invitations"].append(invitation_json(invitation_id, **fields))
        return self

    def door(self, door_id: str, **fields: Any) -> Self:
        """Add a door (see ``door_json``)."""
        self.entities["doors"].append(door_json(door_id, **fields))
        return self

    def tag(self, tag_id: str, **fields: Any) -> Self:
        """Add a tag (see ``tag_json``)."""
        self.entities["tags"].append(tag_json(tag_id, **fields))
        return self

    def user(self, user_id: str, **fields: Any) -> Self:
        """Add a user (see ``user_json``)."""
        self.entities["users"].append(user_json(user_id, **fields))
        return self

    def credential(
        self, credential_id: str, user: str, *, value: str | None = None, **fields: Any
    ) -> Self:
        """Add a credential; without ``value``, a fresh valid one for its kind is made up."""
        if fields.get("kind") == "pin" and "pin_hashing" not in self.site:
            self.pin_hashing()
        if value is None:
            self._values += 1
            value = value_for(fields.get("kind", "nfc_uid"), self._values)
        self.entities["credentials"].append(
            credential_json(credential_id, user, value=value, **fields)
        )
        return self

    def schedule(self, schedule_id: str, windows: Iterable[JSON] = (), **fields: Any) -> Self:
        """Add a schedule (see ``schedule_json``)."""
        self.entities["schedules"].append(schedule_json(schedule_id, windows, **fields))
        return self

    def calendar(self, calendar_id: str, dates: Iterable[date | str], **fields: Any) -> Self:
        """Add a holiday calendar."""
        self.entities["holiday_calendars"].append(calendar_json(calendar_id, dates, **fields))
        return self

    def rule(self, rule_id: str, **fields: Any) -> Self:
        """Add an access rule (see ``rule_json``)."""
        self.entities["rules"].append(rule_json(rule_id, **fields))
        return self

    def json(self) -> JSON:
        """The snapshot as JSON (a fresh deep copy, free to be mangled by a test)."""
        entities = copy.deepcopy(self.entities)
        if self.auto_tags:
            declared = {t["id"] for t in entities["tags"]}
            named = [
                t for key in ("users", "rules") for e in entities[key] for t in e.get("tags", ())
            ]
            named.append(self.site.get("lockdown_override_tag"))
            for tag_id in dict.fromkeys(named):
                if isinstance(tag_id, str) and tag_id not in declared:
                    entities["tags"].append(tag_json(tag_id))
                    declared.add(tag_id)
            door_tags = [t for e in entities["doors"] for t in e.get("tags", ())]
            door_tags += [
                t
                for key in ("rules", "invitations")
                for e in entities[key]
                for t in e.get("door_tags", ())
            ]
            for tag_id in dict.fromkeys(door_tags):
                if isinstance(tag_id, str) and tag_id not in declared:
                    entities["tags"].append(tag_json(tag_id, scope="doors"))
                    declared.add(tag_id)
        return {
            "format": codec.FORMAT,
            "version": self.version,
            "site": copy.deepcopy(self.site),
            **entities,
        }

    def snapshot(self) -> codec.Snapshot:
        """The snapshot, serialised to JSON text and parsed back."""
        return codec.snapshot_from_json(json.loads(json.dumps(self.json())))

    def view(self) -> CacheView:
        """The cache view of the snapshot."""
        snapshot = self.snapshot()
        return CacheView.build(snapshot.version, snapshot.site, snapshot.entities)


def site(tz: str = "Europe/Rome", **options: Any) -> SiteBuilder:
    """Start a site in ``tz``."""
    return SiteBuilder(tz, **options)


def delta(
    version: int,
    base_version: int,
    *,
    upsert: Mapping[str, Iterable[JSON]] | None = None,
    delete: Mapping[str, Iterable[str]] | None = None,
    site_json: JSON | None = None,
) -> codec.Delta:
    """A delta, serialised to JSON text and parsed back with ``codec.delta_from_json``."""
    out: JSON = {"format": codec.FORMAT, "version": version, "base_version": base_version}
    if upsert is not None:
        out["upsert"] = {key: list(items) for key, items in upsert.items()}
    if delete is not None:
        out["delete"] = {key: list(ids) for key, ids in delete.items()}
    if site_json is not None:
        out["site"] = site_json
    return codec.delta_from_json(json.loads(json.dumps(out)))


# --- identities -----------------------------------------------------------------------------


def credential_by_id(view: CacheView, credential_id: str) -> Credential:
    """The cached credential with ``credential_id`` (KeyError if there is none)."""
    for credential in view.all_credentials():
        if credential.id == credential_id:
            return credential
    raise KeyError(credential_id)


def identity(
    view: CacheView, credential_id: str, assurance: AssuranceLevel | None = None
) -> Verified:
    """A verified presentation of a cached credential, at its own assurance unless told."""
    credential = credential_by_id(view, credential_id)
    return Verified(credential, credential.assurance if assurance is None else assurance)
