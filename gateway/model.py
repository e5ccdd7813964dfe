"""Domain model: the frozen values every part of the gateway speaks in."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo


class AssuranceLevel(enum.IntEnum):
    """How hard a credential is to copy; ordered so that ``>=`` means "at least as strong"."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3

    @property
    def label(self) -> str:
        """The wire name: ``low``, ``medium`` or ``high``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> AssuranceLevel:
        """Return the level named ``text`` (case-insensitive); ValueError otherwise."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown assurance level {text!r}") from None


class CredentialKind(enum.StrEnum):
    """What was presented at a reader."""

    BLE_PHONE_KEY = "ble_phone_key"
    NFC_UID = "nfc_uid"
    NTAG424 = "ntag424"
    DESFIRE = "desfire"
    MECHATRONIC_KEY = "mech_key"
    PIN = "pin"  # a PIN typed on a keypad; the value is its salted slow hash, never the digits


#: The strongest assurance each kind can prove (see CREDENTIALS.md).
KIND_ASSURANCE: Mapping[CredentialKind, AssuranceLevel] = {
    CredentialKind.BLE_PHONE_KEY: AssuranceLevel.HIGH,
    CredentialKind.NFC_UID: AssuranceLevel.LOW,
    CredentialKind.NTAG424: AssuranceLevel.HIGH,
    CredentialKind.DESFIRE: AssuranceLevel.HIGH,
    CredentialKind.MECHATRONIC_KEY: AssuranceLevel.HIGH,
    # Anyone who watched it typed can use it: as strong as a copyable card.
    CredentialKind.PIN: AssuranceLevel.LOW,
}


class RuleType(enum.StrEnum):
    """Which credentials a rule covers (Luckey keeps one set of rules per credential type)."""

    ANY = "any"  # every kind: the gateway's own rules and integrations
    SMARTPHONE = "smartphone"
    CARD = "card"  # cards and key fobs
    PIN = "pin"
    KEY = "key"  # mechatronic keys


RULE_TYPE_KINDS: Mapping[RuleType, frozenset[CredentialKind]] = {
    RuleType.ANY: frozenset(CredentialKind),
    RuleType.SMARTPHONE: frozenset({CredentialKind.BLE_PHONE_KEY}),
    RuleType.CARD: frozenset(
        {CredentialKind.NFC_UID, CredentialKind.NTAG424, CredentialKind.DESFIRE}
    ),
    RuleType.PIN: frozenset({CredentialKind.PIN}),
    RuleType.KEY: frozenset({CredentialKind.MECHATRONIC_KEY}),
}

#: Rule types assigned to exactly one user (Luckey's card and PIN rules).
SINGLE_USER_RULE_TYPES = frozenset({RuleType.CARD, RuleType.PIN})

#: PIN lengths a keypad entry may have.
PIN_DIGITS_MIN = 4
PIN_DIGITS_MAX = 7

#: User ids and rule ids made for guest invitations start with these (reserved).
GUEST_USER_PREFIX = "guest:"
INVITATION_RULE_PREFIX = "invitation:"


class UserStatus(enum.StrEnum):
    """Whether a user may open anything at all."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    FORMER = "former"


#: The longest revalidation period a mechatronic key may carry, in days (ten years).
REVALIDATION_DAYS_MAX = 3650
PUBLIC_KEY_BYTES = 65  # a phone's P-256 public key, SEC1 uncompressed: 04 ‖ X ‖ Y


class DoorMode(enum.StrEnum):
    """The mode a door is in; the door controller owns it, decisions read it."""

    NORMAL = "normal"
    UNLOCKED = "unlocked"  # held unlocked by the door's unlock schedule
    LOCKDOWN = "lockdown"
    EMERGENCY_OPEN = "emergency_open"


@dataclass(frozen=True, slots=True)
class PinHashing:
    """How the site hashes PINs: scrypt(pin, salt, n, r, p), 32 bytes, as the credential value.

    One salt per site rather than per PIN: the digits typed are all a keypad knows, so the
    gateway must find the credential from one hash (see docs/site-data.md, "PIN codes").
    """

    salt: bytes
    n: int = 2**14
    r: int = 8
    p: int = 1


class Weekday(enum.IntEnum):
    """ISO weekday numbering minus one, as ``datetime.weekday()`` returns it."""

    MON = 0
    TUE = 1
    WED = 2
    THU = 3
    FRI = 4
    SAT = 5
    SUN = 6


MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Site:
    """The building one gateway serves; all schedules are read in its timezone.

    ``key_blacklist`` holds the canonical values of lost mechatronic keys (denied whatever the
    rules or the door's mode say); holders of the tag ``lockdown_override_tag`` still pass a door
    in lockdown.
    """

    id: str
    name: str
    timezone: str
    key_blacklist: frozenset[str] = frozenset()
    lockdown_override_tag: str | None = None
    # Offline policy: after this many days without the cloud, credentials of these kinds stop
    # working (e.g. phone keys, which the cloud can revoke at once when it is reachable).
    max_offline_days: int | None = None
    offline_limited_kinds: frozenset[CredentialKind] = frozenset()
    # Local administrators must sign in with a second factor (TOTP) as well as their password.
    require_admin_2fa: bool = False
    pin_hashing: PinHashing | None = None  # needed once the site has PIN credentials

    @property
    def tz(self) -> ZoneInfo:
        """The site's IANA timezone (ZoneInfo caches instances, so this is cheap)."""
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class Door:
    """A door the gateway drives, with what it demands of a credential."""

    id: str
    name: str
    min_assurance: AssuranceLevel = AssuranceLevel.MEDIUM
    unlock_seconds: float = 5.0
    unlock_schedule_id: str | None = None
    # The unlock schedule holds the door unlocked only once someone was granted that day.
    unlock_after_first_grant: bool = False
    tags: tuple[str, ...] = ()  # lock special tags (door groups); the door's id is its default tag
    keypad: bool = False  # its reader has a keypad: PINs can be entered here


@dataclass(frozen=True, slots=True)
class User:
    """A person who may hold credentials; ``tags`` are tag ids, sorted and unique.

    A tuple rather than a frozenset: a 100k-user site holds one per user, and a small tuple
    takes a third of the memory (decisions only iterate over it).
    """

    id: str
    name: str
    status: UserStatus = UserStatus.ACTIVE
    tags: tuple[str, ...] = ()
    valid_from: datetime | None = None
    valid_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Credential:
    """Something a user presents; ``value`` is the kind's canonical identifier.

    ``revalidation_days`` (mechatronic keys only): the key stops working that many days after
    ``revalidated_at``, its last revalidation at an online reader (never: it does not work).
    """

    id: str
    user_id: str
    kind: CredentialKind
    value: str
    assurance: AssuranceLevel
    revoked: bool = False
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    revalidation_days: int | None = None
    revalidated_at: datetime | None = None
    public_key: bytes | None = None  # ble_phone_key only: the phone's P-256 key, SEC1 uncompressed


class TagScope(enum.StrEnum):
    """What a tag groups: users (user special tags) or doors (lock special tags)."""

    USERS = "users"
    DOORS = "doors"


@dataclass(frozen=True, slots=True)
class Tag:
    """A group of users or of doors; ``special`` tags are owned by an integration (``owner``)."""

    id: str
    name: str
    special: bool = False
    owner: str | None = None
    scope: TagScope = TagScope.USERS


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Open from ``start`` to ``end`` (minutes after local midnight) on each of ``days``.

    ``end`` is exclusive and may be 1440 (midnight). An ``overnight`` window ends at ``end``
    on the following day and belongs to the day it starts on.
    """

    days: frozenset[Weekday]
    start: int
    end: int
    overnight: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleException:
    """A one-off interval that opens (``open``) or closes a schedule regardless of its windows."""

    start: datetime
    end: datetime
    open: bool
    note: str = ""


@dataclass(frozen=True, slots=True)
class HolidayCalendar:
    """A named set of site-local dates on which schedules use their holiday windows."""

    id: str
    name: str
    dates: frozenset[date]


@dataclass(frozen=True, slots=True)
class Schedule:
    """Weekly windows in site time, replaced on holidays, overridden by exceptions."""

    id: str
    name: str
    windows: tuple[TimeWindow, ...]
    holiday_calendars: tuple[str, ...] = ()
    holiday_windows: tuple[TimeWindow, ...] = ()
    exceptions: tuple[ScheduleException, ...] = ()


@dataclass(frozen=True, slots=True)
class TimeSlot:
    """A daily slot from ``start`` to ``end`` (minutes after local midnight, ``end`` exclusive).

    ``end`` before ``start`` is an overnight slot: it ends the next day and belongs to the day
    it starts on.
    """

    start: int
    end: int

    @property
    def overnight(self) -> bool:
        """True when the slot runs past midnight."""
        return self.end < self.start


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Who (``users`` by id, or carrying any of ``tags``) may open which doors (``doors`` by id,
    or carrying any of ``door_tags``), with which credentials (``type``), and when: within the
    date interval, on ``days``, within ``time_slot``, while the schedule is open."""

    id: str
    name: str
    tags: frozenset[str]
    doors: frozenset[str]
    schedule_id: str | None = None  # None: at any time
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    users: frozenset[str] = frozenset()
    door_tags: frozenset[str] = frozenset()
    type: RuleType = RuleType.ANY
    days: frozenset[Weekday] | None = None  # None: every day
    time_slot: TimeSlot | None = None  # None: all day


@dataclass(frozen=True, slots=True)
class Invitation:
    """A guest invitation: whoever redeems the code gets a phone key for ``max_devices`` phones.

    ``code_sha256`` is the SHA-256 of the code (as typed, upper-case, without separators); the
    code itself is shown once, to whoever created the invitation. The guest is a user
    ``guest:<id>`` and the access a smartphone rule ``invitation:<id>`` (both made by the view).
    """

    id: str
    name: str
    valid_from: datetime
    valid_until: datetime
    max_devices: int
    code_sha256: str
    doors: frozenset[str] = frozenset()
    door_tags: frozenset[str] = frozenset()
    days: frozenset[Weekday] | None = None
    time_slot: TimeSlot | None = None

    @property
    def guest_id(self) -> str:
        """The id of the guest user its phone keys belong to."""
        return GUEST_USER_PREFIX + self.id

    @property
    def rule_id(self) -> str:
        """The id of the smartphone rule it grants."""
        return INVITATION_RULE_PREFIX + self.id


class Reason(enum.StrEnum):
    """Why a decision came out as it did; stable machine-readable codes."""

    GRANTED = "granted"
    EMERGENCY_OPEN = "emergency_open"
    LOCKDOWN_OVERRIDE = "lockdown_override"
    UNKNOWN_DOOR = "unknown_door"
    KEY_BLACKLISTED = "key_blacklisted"
    DOOR_LOCKDOWN = "door_lockdown"
    UNKNOWN_CREDENTIAL = "unknown_credential"
    PROOF_INVALID = "proof_invalid"
    PROOF_REPLAYED = "proof_replayed"  # a genuine proof seen before: a recording, not a card
    CREDENTIAL_REVOKED = "credential_revoked"
    CREDENTIAL_NOT_YET_VALID = "credential_not_yet_valid"
    CREDENTIAL_EXPIRED = "credential_expired"
    KEY_REVALIDATION_DUE = "key_revalidation_due"
    OFFLINE_TOO_LONG = "offline_too_long"  # this kind stops working after a long cloud outage
    UNKNOWN_USER = "unknown_user"
    USER_DISABLED = "user_disabled"
    USER_NOT_YET_VALID = "user_not_yet_valid"
    USER_EXPIRED = "user_expired"
    ASSURANCE_TOO_LOW = "assurance_too_low"
    NO_RULE_FOR_DOOR = "no_rule_for_door"
    RULE_NOT_YET_VALID = "rule_not_yet_valid"
    RULE_EXPIRED = "rule_expired"
    OUTSIDE_SCHEDULE = "outside_schedule"
    HOLIDAY = "holiday"
    CLOSED_BY_EXCEPTION = "closed_by_exception"
    CREDENTIAL_TYPE_NOT_ALLOWED = "credential_type_not_allowed"  # rules here cover other types
    DAY_NOT_ALLOWED = "day_not_allowed"
    OUTSIDE_TIME_SLOT = "outside_time_slot"
    NO_KEYPAD = "no_keypad"  # a PIN at a door whose reader has no keypad
    PIN_MALFORMED = "pin_malformed"  # not 4 to 7 digits
    KEYPAD_LOCKED = "keypad_locked"  # too many wrong PINs at this reader: waiting out the lockout

    @property
    def granted(self) -> bool:
        """True for the reasons that open a door."""
        return self in (Reason.GRANTED, Reason.EMERGENCY_OPEN, Reason.LOCKDOWN_OVERRIDE)


@dataclass(frozen=True, slots=True)
class Presentation:
    """A credential shown at a door's reader, with whatever proof the reader captured."""

    door_id: str
    kind: CredentialKind
    value: str
    proof: bytes = b""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of ``access.decide``: granted or not, why, and by which rule."""

    granted: bool
    reason: Reason
    door_id: str
    at: datetime
    mode: DoorMode
    credential_id: str | None = None
    user_id: str | None = None
    rule_id: str | None = None
    assurance: AssuranceLevel | None = None


class EventType(enum.StrEnum):
    """What happened; the outbox's retention ranks these by ``EVENT_PRIORITY``."""

    ACCESS_GRANTED = "access.granted"
    ACCESS_DENIED = "access.denied"
    DOOR_UNLOCKED = "door.unlocked"
    DOOR_LOCKED = "door.locked"
    DOOR_MODE_CHANGED = "door.mode_changed"
    DOOR_OPENED = "door.opened"
    DOOR_CLOSED = "door.closed"
    DOOR_HELD_OPEN = "door.held_open"
    DOOR_FORCED_OPEN = "door.forced_open"
    DOOR_TAMPER = "door.tamper"
    DOOR_REX = "door.rex"
    DOOR_RELAY_FAILED = "door.relay_failed"
    BOARD_ONLINE = "board.online"
    BOARD_OFFLINE = "board.offline"
    BOARD_FAULT = "board.fault"
    GATEWAY_STARTED = "gateway.started"
    GATEWAY_STOPPED = "gateway.stopped"
    CACHE_RESET = "cache.reset"
    CACHE_UPDATED = "cache.updated"
    CACHE_REJECTED = "cache.rejected"
    EVENTS_DROPPED = "events.dropped"
    COMMAND_RESULT = "command.result"
    CLOUD_REJECTED = "cloud.rejected"
    UPLINK_REFUSED = "uplink.refused"
    CLOUD_LINK = "cloud.link"  # the link to the cloud came up or went down
    CREDENTIAL_ENROLLED = "credential.enrolled"  # a phone or card enrolled at this gateway
    KEYPAD_LOCKED = "keypad.locked"  # too many wrong PINs in a row at one reader
    INVITATION_CREATED = "invitation.created"
    INVITATION_DELETED = "invitation.deleted"
    INVITATION_REDEEMED = "invitation.redeemed"


class EventPriority(enum.IntEnum):
    """Retention class: when the outbox is full, the lowest class is dropped first."""

    ROUTINE = 0
    NOTABLE = 1
    SECURITY = 2


EVENT_PRIORITY: Mapping[EventType, EventPriority] = {
    EventType.ACCESS_GRANTED: EventPriority.ROUTINE,
    EventType.DOOR_UNLOCKED: EventPriority.ROUTINE,
    EventType.DOOR_LOCKED: EventPriority.ROUTINE,
    EventType.DOOR_OPENED: EventPriority.ROUTINE,
    EventType.DOOR_CLOSED: EventPriority.ROUTINE,
    EventType.DOOR_REX: EventPriority.ROUTINE,
    EventType.DOOR_HELD_OPEN: EventPriority.SECURITY,
    EventType.DOOR_FORCED_OPEN: EventPriority.SECURITY,
    EventType.DOOR_TAMPER: EventPriority.SECURITY,
    EventType.DOOR_RELAY_FAILED: EventPriority.SECURITY,
    EventType.BOARD_ONLINE: EventPriority.NOTABLE,
    EventType.BOARD_OFFLINE: EventPriority.SECURITY,
    EventType.BOARD_FAULT: EventPriority.SECURITY,
    EventType.CACHE_UPDATED: EventPriority.ROUTINE,
    EventType.ACCESS_DENIED: EventPriority.NOTABLE,
    EventType.GATEWAY_STARTED: EventPriority.NOTABLE,
    EventType.GATEWAY_STOPPED: EventPriority.NOTABLE,
    EventType.DOOR_MODE_CHANGED: EventPriority.SECURITY,
    EventType.CACHE_RESET: EventPriority.SECURITY,
    EventType.CACHE_REJECTED: EventPriority.SECURITY,
    EventType.EVENTS_DROPPED: EventPriority.SECURITY,
    EventType.COMMAND_RESULT: EventPriority.SECURITY,
    EventType.CLOUD_REJECTED: EventPriority.SECURITY,
    EventType.UPLINK_REFUSED: EventPriority.SECURITY,
    EventType.CLOUD_LINK: EventPriority.NOTABLE,
    EventType.CREDENTIAL_ENROLLED: EventPriority.SECURITY,
    EventType.KEYPAD_LOCKED: EventPriority.SECURITY,
    EventType.INVITATION_CREATED: EventPriority.SECURITY,
    EventType.INVITATION_DELETED: EventPriority.SECURITY,
    EventType.INVITATION_REDEEMED: EventPriority.SECURITY,
}


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, as it goes into the outbox; ``data`` is JSON-ready."""

    id: str
    type: EventType
    at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def priority(self) -> EventPriority:
        """The retention class of this event."""
        return EVENT_PRIORITY.get(self.type, EventPriority.NOTABLE)
