"""Enrolment: a phone's public key, or a card presented at a reader, becomes a user's credential.

The caller (the provisioning app, an integration) has already decided that the user may have
one. The credential is stored at once, so the next presentation works offline, and a
``credential.enrolled`` event tells the cloud, which keeps it from then on. That event carries
the credential whole (the cloud has to store its value); logs still show only a redacted hint.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import datetime

from drivers.base import CredentialRead
from gateway.cache import Cache
from gateway.codec import FormatError, credential_to_json
from gateway.credentials import Refused, canonical_value, parse_kind, redact
from gateway.entry import EntryService
from gateway.events import EventLog, new_event
from gateway.model import (
    KIND_ASSURANCE,
    Credential,
    CredentialKind,
    EventType,
    Presentation,
    UserStatus,
)
from gateway.pins import hash_off_loop, pin_problem

_LOGGER = logging.getLogger(__name__)

#: Kinds a reader can enrol (a phone enrols with its public key instead).
CARD_KINDS = frozenset(
    {
        CredentialKind.NFC_UID,
        CredentialKind.NTAG424,
        CredentialKind.DESFIRE,
        CredentialKind.MECHATRONIC_KEY,
    }
)
CAPTURE_TIMEOUT_S_RANGE = (1.0, 300.0)


class EnrolmentError(ValueError):
    """The enrolment cannot be made; the message says why and what would work."""


class NothingPresented(EnrolmentError):
    """Enrol mode ended without a card being presented."""


class Enrolment:
    """Enrols phones and cards for users already in the cache."""

    def __init__(
        self,
        cache: Cache,
        entry: EntryService,
        events: EventLog,
        clock: Callable[[], datetime],
        *,
        phone_allowed: Callable[[str], bool | None] = lambda _user_id: None,
    ) -> None:
        """``phone_allowed``: an integration's say on a user's phone keys (None: no say)."""
        self._cache = cache
        self._entry = entry
        self._events = events
        self._clock = clock
        self._phone_allowed = phone_allowed

    async def enrol_phone(self, user_id: str, public_key: bytes) -> Credential:
        """Register a phone's P-256 public key (SEC1 uncompressed) as ``user_id``'s credential."""
        self._check_user(user_id)
        if self._phone_allowed(user_id) is False:
            raise EnrolmentError(
                f"user {user_id!r} has no OfficeRnD Member App access, which a phone key needs "
                "(their cards and fobs still work); grant it in OfficeRnD first, or try again "
                "once the gateway has synced with OfficeRnD"
            )
        # Imported here: cryptography's bindings only on gateways that enrol phones.
        from gateway.ble_protocol import (  # noqa: PLC0415
            BleProtocolError,
            key_id_for,
            load_public_key,
        )

        try:
            key_id = key_id_for(load_public_key(public_key))
        except BleProtocolError as err:
            raise EnrolmentError(f"public key refused: {err}") from None
        credential = Credential(
            id=_new_id(CredentialKind.BLE_PHONE_KEY),
            user_id=user_id,
            kind=CredentialKind.BLE_PHONE_KEY,
            value=key_id.hex().upper(),
            assurance=KIND_ASSURANCE[CredentialKind.BLE_PHONE_KEY],
            public_key=public_key,
        )
        return await self._store(credential, by="phone")

    async def enrol_pin(self, user_id: str, digits: str) -> Credential:
        """Set ``user_id``'s PIN (4 to 7 digits), hashed with the site's PIN hashing; a PIN the
        user had before is replaced. The digits are neither stored nor logged."""
        self._check_user(user_id)
        problem = pin_problem(digits)
        if problem is not None:
            raise EnrolmentError(f"pin: {problem}")
        hashing = self._cache.view.site.pin_hashing
        if hashing is None:
            raise EnrolmentError(
                "pin: this site cannot take PINs yet: its site data has no pin_hashing (the "
                "salt every PIN of the site is hashed with, set by the cloud)"
            )
        value = await hash_off_loop(digits, hashing)  # slow: on the PIN hashing thread
        view = self._cache.view
        held = view.credential(CredentialKind.PIN, value)
        if held is not None:
            whose = "this user's PIN already" if held.user_id == user_id else "taken on this site"
            raise EnrolmentError(f"pin: this PIN is {whose}; choose another")
        previous = [c for c in view.credentials[CredentialKind.PIN] if c.user_id == user_id]
        credential = Credential(
            id=previous[0].id if previous else _new_id(CredentialKind.PIN),
            user_id=user_id,
            kind=CredentialKind.PIN,
            value=value,
            assurance=KIND_ASSURANCE[CredentialKind.PIN],
        )
        return await self._store(credential, by="pin")

    async def enrol_card(self, door_id: str, user_id: str, timeout_s: float) -> Credential:
        """Put ``door_id``'s reader in enrol mode; the next card that proves itself is enrolled."""
        low, high = CAPTURE_TIMEOUT_S_RANGE
        if not low <= timeout_s <= high:
            raise EnrolmentError(f"timeout {timeout_s} s is out of range; allowed: {low}–{high} s")
        self._check_user(user_id)
        if door_id not in self._cache.view.doors:
            raise EnrolmentError(f"unknown door {door_id!r}")
        try:
            capture = self._entry.capture_next(door_id, kinds=[k.value for k in CARD_KINDS])
        except ValueError as err:
            raise EnrolmentError(str(err)) from None
        try:
            read = await asyncio.wait_for(capture, timeout_s)
        except TimeoutError:
            capture.cancel()  # leave enrol mode: the next read is decided again
            raise NothingPresented(
                f"no card was presented at {door_id!r} within {timeout_s:g} s"
            ) from None
        credential = self._card_credential(door_id, user_id, read)
        return await self._store(credential, by="reader", door=door_id)

    def _card_credential(self, door_id: str, user_id: str, read: CredentialRead) -> Credential:
        try:
            kind = parse_kind(read.kind)
            value = canonical_value(kind, read.value)
        except ValueError as err:
            raise EnrolmentError(f"the reader sent an unreadable credential: {err}") from None
        # The card proves itself now, as it will at every door: a tag that cannot answer the
        # site's key is not enrolled as anything stronger than what it proved.
        identity = self._entry.verify(Presentation(door_id, kind, value, read.proof))
        if isinstance(identity, Refused):
            raise EnrolmentError(f"the {kind.value} did not prove itself: {identity.detail}")
        held = identity.credential
        if held is not None:
            owner = "this user" if held.user_id == user_id else "another user"
            raise EnrolmentError(
                f"this {kind.value} ({redact(value)}) is already enrolled for {owner} "
                f"as credential {held.id!r}"
            )
        return Credential(
            id=_new_id(kind),
            user_id=user_id,
            kind=kind,
            value=value,
            assurance=identity.assurance,
        )

    def _check_user(self, user_id: str) -> None:
        user = self._cache.view.users.get(user_id)
        if user is None:
            raise EnrolmentError(f"unknown user {user_id!r}; enrol users the site data holds")
        if user.status is not UserStatus.ACTIVE:
            raise EnrolmentError(f"user {user_id!r} is {user.status.value}, not active")

    async def _store(self, credential: Credential, **data: str) -> Credential:
        """Store ``credential``, then record the event that tells the cloud (OutboxError if not)."""
        try:
            await self._cache.enrol(credential)
        except FormatError as err:
            raise EnrolmentError(str(err)) from None
        event = new_event(
            EventType.CREDENTIAL_ENROLLED,
            self._clock(),
            {"credential": credential_to_json(credential), "user": credential.user_id, **data},
        )
        await self._events.record(event)
        _LOGGER.info(
            "enrolled %s %s for user %s as %s",
            credential.kind.value,
            redact(credential.value),
            credential.user_id,
            credential.id,
        )
        return credential


def _new_id(kind: CredentialKind) -> str:
    """A fresh credential id that tells where it came from."""
    return f"{kind.value}-gw-{secrets.token_hex(6)}"
