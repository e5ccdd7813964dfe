"""Guest invitations made at the gateway: a code to share, redeemed by phones up to a limit.

An operator creates an invitation (who, which doors, when, how many phones) and gets a code,
shown once; only its SHA-256 is stored and sent to the cloud. Whoever holds the code redeems it
from the mobile app with their phone's public key and gets a phone key (``ble_phone_key``)
belonging to the invitation's guest user, until the invitation's devices are used up. Deleting
the invitation deletes its guest's phone keys in the same transaction, so the access ends at once.

The code is normalised before hashing (``normalise_code``): upper-cased, every space and hyphen
removed. The cloud hashes codes it issues the same way, so a code made there is redeemed here.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.cache import Cache
from gateway.codec import (
    FormatError,
    credential_to_json,
    invitation_from_json,
    invitation_to_json,
)
from gateway.events import EventLog, new_event
from gateway.model import (
    KIND_ASSURANCE,
    Credential,
    CredentialKind,
    EventType,
    Invitation,
)
from gateway.sessions import LoginLimiter
from gateway.view import CacheView

_LOGGER = logging.getLogger(__name__)

#: Letters and digits that cannot be mistaken for one another (no 0/O, 1/I/L).
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
#: 12 characters of 31: about 59.5 bits, shown in groups of 4.
CODE_LENGTH = 12
CODE_GROUP = 4
#: A code longer than this (normalised) is not one: refused without hashing it.
MAX_CODE_CHARS = 64
#: Wrong codes allowed per client address within the window (then 429 until it passes).
REDEEM_FAILURES_PER_ADDRESS = 10
REDEEM_FAILURE_WINDOW_S = 900.0
#: The one answer for an unknown code and a wrong one: nothing to tell them apart by.
UNKNOWN_CODE = "no invitation has this code"
#: The longest invitation id a credential id ``inv-<id>-<n>`` is made from as it is.
MAX_ID_STEM = 120
_SEPARATORS = str.maketrans("", "", " \t\r\n-")
_PHONE = CredentialKind.BLE_PHONE_KEY


class InvitationError(Exception):
    """A redemption refused; the message says why (safe to show to whoever redeems)."""


class UnknownCode(InvitationError):
    """No invitation has this code (unknown or mistyped: one answer for both)."""


class InvitationExpired(InvitationError):
    """The invitation's end has passed."""


class DeviceLimitReached(InvitationError):
    """Every device the invitation allows has redeemed it; or this phone cannot redeem it."""


def new_code() -> str:
    """A fresh invitation code to share, grouped for reading: ``XXXX-XXXX-XXXX``."""
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(chars[i : i + CODE_GROUP] for i in range(0, CODE_LENGTH, CODE_GROUP))


def normalise_code(text: str) -> str:
    """A code as typed, upper-cased, with every space and hyphen removed."""
    return text.upper().translate(_SEPARATORS)


def code_hash(text: str) -> str:
    """The SHA-256 (lower-case hex) of the normalised code's UTF-8: what invitations store."""
    return hashlib.sha256(normalise_code(text).encode("utf-8", "surrogatepass")).hexdigest()


def phone_key_value(public_key: bytes) -> str:
    """The credential value of a phone's P-256 key (SEC1 uncompressed); FormatError if not one."""
    # Imported here: cryptography's bindings only on gateways that take phone keys.
    from gateway.ble_protocol import (  # noqa: PLC0415
        BleProtocolError,
        key_id_for,
        load_public_key,
    )

    try:
        return key_id_for(load_public_key(public_key)).hex().upper()
    except BleProtocolError as err:
        raise FormatError("public_key", f"public key refused: {err}") from None


def guest_phone_keys(view: CacheView, invitation: Invitation) -> list[Credential]:
    """The phone keys of ``invitation``'s guest, by id."""
    # A scan of the phone keys (indexed by value, not user): fine for a redemption, never a
    # decision.
    guest = invitation.guest_id
    return sorted((c for c in view.credentials[_PHONE] if c.user_id == guest), key=lambda c: c.id)


def invitation_doors(view: CacheView, invitation: Invitation) -> list[str]:
    """The ids of the doors ``invitation`` opens: named, or carrying one of its door tags."""
    doors = set(invitation.doors) & set(view.doors)
    if invitation.door_tags:
        doors.update(
            d.id for d in view.doors.values() if not invitation.door_tags.isdisjoint(d.tags)
        )
    return sorted(doors)


@dataclass(frozen=True, slots=True)
class RedeemResult:
    """A redemption: the invitation, the phone's credential, and whether it was made now."""

    invitation: Invitation
    credential: Credential
    doors: tuple[str, ...]
    new: bool


@dataclass(frozen=True, slots=True)
class Listed:
    """An invitation and how many of its devices have redeemed it."""

    invitation: Invitation
    devices_used: int


class InvitationService:
    """Creates, lists, deletes and redeems the site's guest invitations."""

    def __init__(
        self,
        cache: Cache,
        events: EventLog,
        clock: Callable[[], datetime],
        *,
        attempts: LoginLimiter | None = None,
    ) -> None:
        """``attempts``: the wrong-code budget per client address the redemption route keeps."""
        self._cache = cache
        self.attempts = (
            LoginLimiter(
                per_email=REDEEM_FAILURES_PER_ADDRESS,
                per_address=REDEEM_FAILURES_PER_ADDRESS,
                window_s=REDEEM_FAILURE_WINDOW_S,
            )
            if attempts is None
            else attempts
        )
        self._events = events
        self._clock = clock
        # One change at a time: two redemptions must not both take an invitation's last device.
        self._lock = asyncio.Lock()
        self._by_hash: dict[str, Invitation] = {}
        self._indexed: Mapping[str, Invitation] | None = None

    async def create(
        self,
        name: Any = None,
        doors: Any = (),
        door_tags: Any = (),
        valid_from: Any = None,
        valid_until: Any = None,
        max_devices: Any = 1,
        days: Any = None,
        time_slot: Any = None,
    ) -> tuple[Invitation, str]:
        """A new invitation and its code (shown once); FormatError naming the field if refused.

        Values are as in the site data's JSON (date-times may also be aware datetimes); None
        leaves a field out.
        """
        code = new_code()
        fields = {
            "name": name,
            "doors": _json_list(doors),
            "door_tags": _json_list(door_tags),
            "valid_from": _json_time(valid_from),
            "valid_until": _json_time(valid_until),
            "max_devices": max_devices,
            "days": _json_list(days),
            "time_slot": time_slot,
        }
        obj = {key: value for key, value in fields.items() if value is not None}
        obj |= {"id": f"gw-{secrets.token_hex(6)}", "code_sha256": code_hash(code)}
        invitation = invitation_from_json(obj, "")
        async with self._lock:
            try:
                await self._cache.apply_local(upserts={"invitations": (invitation,)})
            except FormatError as err:
                raise _field_error(err, "upsert.invitations[0].") from None
        await self._events.record(
            new_event(
                EventType.INVITATION_CREATED,
                self._clock(),
                {"invitation": invitation_to_json(invitation)},
            )
        )
        _LOGGER.info(
            "invitation %s created: %d device(s), until %s",
            invitation.id,
            invitation.max_devices,
            invitation.valid_until.isoformat(),
        )
        return invitation, code

    def list(self) -> builtins.list[Listed]:
        """Every invitation with its devices used, soonest start first."""
        view = self._cache.view
        used = Counter(c.user_id for c in view.credentials[_PHONE])
        return [
            Listed(i, used[i.guest_id])
            for i in sorted(view.invitations.values(), key=lambda i: (i.valid_from, i.id))
        ]

    async def delete(self, invitation_id: str) -> builtins.list[str]:
        """Delete an invitation and its guest's credentials (their ids); LookupError if unknown."""
        async with self._lock:
            view = self._cache.view
            invitation = view.invitations.get(invitation_id)
            if invitation is None:
                raise LookupError(f"no invitation {invitation_id!r}")
            gone = [c.id for c in guest_phone_keys(view, invitation)]
            await self._cache.apply_local(deletes={"invitations": frozenset({invitation_id})})
        await self._events.record(
            new_event(
                EventType.INVITATION_DELETED,
                self._clock(),
                {"invitation": invitation_id, "user": invitation.guest_id, "credentials": gone},
            )
        )
        _LOGGER.info("invitation %s deleted with %d phone key(s)", invitation_id, len(gone))
        return gone

    async def redeem(self, code: str, public_key: bytes) -> RedeemResult:
        """The phone's credential for the invitation of ``code``, made now unless it has one.

        FormatError (``public_key``) for a key that is not a P-256 point; UnknownCode,
        InvitationExpired or DeviceLimitReached otherwise.
        """
        value = phone_key_value(public_key)
        normalised = normalise_code(code)
        async with self._lock:
            view = self._cache.view
            invitation = None
            if 0 < len(normalised) <= MAX_CODE_CHARS:
                invitation = self._index(view).get(code_hash(normalised))
            if invitation is None:
                raise UnknownCode(UNKNOWN_CODE)
            if self._clock() >= invitation.valid_until:
                raise InvitationExpired(
                    f"this invitation ended at {invitation.valid_until.isoformat()}"
                )
            doors = tuple(invitation_doors(view, invitation))
            held = view.credential(_PHONE, value)
            if held is not None:
                if held.user_id != invitation.guest_id or held.revoked:
                    raise DeviceLimitReached(
                        "this phone's key is already in use here and cannot redeem this invitation"
                    )
                return RedeemResult(invitation, held, doors, new=False)  # the same phone again
            keys = guest_phone_keys(view, invitation)
            if len(keys) >= invitation.max_devices:
                raise DeviceLimitReached(
                    f"this invitation has been redeemed on all {invitation.max_devices} "
                    "device(s) it allows"
                )
            credential = Credential(
                id=_credential_id(invitation, keys),
                user_id=invitation.guest_id,
                kind=_PHONE,
                value=value,
                assurance=KIND_ASSURANCE[_PHONE],
                # No dates of its own: the guest is valid while the invitation is, so an
                # invitation extended later extends its phones too.
                public_key=public_key,
            )
            try:
                await self._cache.apply_local(upserts={"credentials": (credential,)})
            except FormatError:
                # The cache changed upstream between the lookup and the write.
                if invitation.id not in self._cache.view.invitations:
                    raise UnknownCode(UNKNOWN_CODE) from None
                raise DeviceLimitReached(
                    "this phone's key is already in use here and cannot redeem this invitation"
                ) from None
        await self._events.record(
            new_event(
                EventType.INVITATION_REDEEMED,
                self._clock(),
                {
                    "invitation": invitation.id,
                    "user": invitation.guest_id,
                    "credential": credential_to_json(credential),
                },
            )
        )
        _LOGGER.info(
            "invitation %s redeemed: phone key %s (%d of %d)",
            invitation.id,
            credential.id,
            len(keys) + 1,
            invitation.max_devices,
        )
        return RedeemResult(invitation, credential, doors, new=True)

    def _index(self, view: CacheView) -> Mapping[str, Invitation]:
        """The view's invitations by code hash, made again only when they changed."""
        if self._indexed is not view.invitations:
            self._by_hash = {i.code_sha256: i for i in view.invitations.values()}
            self._indexed = view.invitations
        return self._by_hash


def _credential_id(invitation: Invitation, keys: Iterable[Credential]) -> str:
    """``inv-<invitation id>-<n>``, the lowest n its guest's keys do not use."""
    stem = invitation.id
    if len(stem) > MAX_ID_STEM:  # ids are at most 128 characters
        stem = hashlib.sha256(stem.encode("utf-8")).hexdigest()[:32]
    taken = {c.id for c in keys}
    n = 1
    while f"inv-{stem}-{n}" in taken:
        n += 1
    return f"inv-{stem}-{n}"


def _json_list(value: Any) -> Any:
    """A list for the codec from a tuple or set of strings (anything else as it is)."""
    if isinstance(value, tuple | set | frozenset):
        return sorted(value)
    return value


def _json_time(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _field_error(err: FormatError, prefix: str) -> FormatError:
    """``err`` with its path relative to the invitation (``doors``, not ``upsert....doors``)."""
    if not err.path.startswith(prefix):
        return err
    message = str(err).removeprefix(f"{err.path}: ")
    return FormatError(err.path.removeprefix(prefix), message)
