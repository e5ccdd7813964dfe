"""The one decision function: may this identity open this door now?

Pure and deterministic: no I/O, no clock, no logging. Checks run from the door outwards to
the rules, and the first failing check is the reason (the order is documented in
docs/decisions.md). When several rules grant, the one with the lowest id is reported. When none
grants, the reason reported is that of the rule that came closest (a closed schedule beats an
expired rule), ties broken by the lowest rule id.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.credentials import Refused, Verified
from gateway.model import (
    RULE_TYPE_KINDS,
    AccessRule,
    AssuranceLevel,
    Credential,
    CredentialKind,
    Decision,
    Door,
    DoorMode,
    Reason,
    Site,
    TimeSlot,
    User,
    UserStatus,
    Weekday,
)
from gateway.view import CacheView, user_key

# How close a failing rule came to granting; the highest rank is the reason reported.
_RULE_RANK = {
    Reason.CREDENTIAL_TYPE_NOT_ALLOWED: 0,
    Reason.RULE_EXPIRED: 1,
    Reason.RULE_NOT_YET_VALID: 2,
    Reason.DAY_NOT_ALLOWED: 3,
    Reason.OUTSIDE_TIME_SLOT: 4,
    Reason.OUTSIDE_SCHEDULE: 5,
    Reason.HOLIDAY: 6,
    Reason.CLOSED_BY_EXCEPTION: 7,
}
_DAY_SECONDS = 24 * 3600


def decide(
    identity: Verified | Refused,
    door_id: str,
    now: datetime,
    view: CacheView,
    mode: DoorMode = DoorMode.NORMAL,
    offline_for: timedelta | None = None,
) -> Decision:
    """Decide a presentation at ``door_id`` at the aware instant ``now`` against ``view``.

    ``offline_for``: how long the gateway has been without its cloud link (None: connected, or
    no cloud); the site's offline policy may refuse some credential kinds after a long outage.
    """
    door = view.doors.get(door_id)
    if door is None:
        return Decision(False, Reason.UNKNOWN_DOOR, door_id, now, mode)
    if isinstance(identity, Refused) and identity.reason is Reason.KEY_BLACKLISTED:
        return Decision(False, Reason.KEY_BLACKLISTED, door_id, now, mode)  # lost, not enrolled
    if (
        isinstance(identity, Verified)
        and identity.credential is not None
        and _blacklisted(identity.credential, view.site)
    ):
        key = identity.credential
        assurance = min(identity.assurance, key.assurance)
        return _about(key, assurance, False, Reason.KEY_BLACKLISTED, now, mode, door)
    if mode is DoorMode.LOCKDOWN:
        return _lockdown(identity, door, now, view, offline_for)
    if mode is DoorMode.EMERGENCY_OPEN:
        return Decision(True, Reason.EMERGENCY_OPEN, door_id, now, mode)
    if isinstance(identity, Refused):
        reason = (
            identity.reason if identity.reason is Reason.PROOF_REPLAYED else Reason.PROOF_INVALID
        )
        return Decision(False, reason, door_id, now, mode)
    credential = identity.credential
    if credential is None:
        return Decision(
            False, Reason.UNKNOWN_CREDENTIAL, door_id, now, mode, assurance=identity.assurance
        )

    # A proof never lifts a credential above the level it was enrolled at.
    assurance = min(identity.assurance, credential.assurance)
    user = _holder(credential, assurance, door, now, view, offline_for)
    if isinstance(user, Reason):
        return _about(credential, assurance, False, user, now, mode, door)
    granting, closest = _rules(user, credential.kind, door_id, now, view)
    if granting is not None:
        return _about(credential, assurance, True, Reason.GRANTED, now, mode, door, granting)
    if closest is None:
        return _about(credential, assurance, False, Reason.NO_RULE_FOR_DOOR, now, mode, door)
    return _about(credential, assurance, False, closest[0], now, mode, door, closest[1])


def _about(
    credential: Credential,
    assurance: AssuranceLevel,
    granted: bool,
    reason: Reason,
    now: datetime,
    mode: DoorMode,
    door: Door,
    rule: AccessRule | None = None,
) -> Decision:
    """A decision naming the credential, its user, the achieved assurance and maybe the rule."""
    return Decision(
        granted,
        reason,
        door.id,
        now,
        mode,
        credential.id,
        credential.user_id,
        rule.id if rule else None,
        assurance,
    )


def _blacklisted(credential: Credential, site: Site) -> bool:
    """True for a mechatronic key on the site's blacklist of lost keys."""
    return (
        credential.kind is CredentialKind.MECHATRONIC_KEY and credential.value in site.key_blacklist
    )


def _lockdown(
    identity: Verified | Refused,
    door: Door,
    now: datetime,
    view: CacheView,
    offline_for: timedelta | None,
) -> Decision:
    """In lockdown only a fully valid holder of the site's override tag passes."""
    mode = DoorMode.LOCKDOWN
    tag = view.site.lockdown_override_tag
    if tag is not None and isinstance(identity, Verified) and identity.credential is not None:
        credential = identity.credential
        assurance = min(identity.assurance, credential.assurance)
        user = _holder(credential, assurance, door, now, view, offline_for)
        if not isinstance(user, Reason) and tag in user.tags:
            return _about(credential, assurance, True, Reason.LOCKDOWN_OVERRIDE, now, mode, door)
    # Everyone else, whatever is wrong with their credential: "why not?" is "lockdown".
    return Decision(False, Reason.DOOR_LOCKDOWN, door.id, now, mode)


def _holder(
    credential: Credential,
    assurance: AssuranceLevel,
    door: Door,
    now: datetime,
    view: CacheView,
    offline_for: timedelta | None,
) -> User | Reason:
    """The credential's user if the credential, the user and ``assurance`` pass; else why not."""
    reason = _credential_refusal(credential, now)
    if reason is not None:
        return reason
    if _offline_too_long(credential, view.site, offline_for):
        return Reason.OFFLINE_TOO_LONG
    if credential.kind is CredentialKind.PIN and not door.keypad:
        return Reason.NO_KEYPAD
    user = view.users.get(credential.user_id)
    if user is None:
        user = view.guests.get(credential.user_id)  # an invitation's guest
        if user is None:
            return Reason.UNKNOWN_USER
    reason = _user_refusal(user, now)
    if reason is not None:
        return reason
    if assurance < door.min_assurance:
        return Reason.ASSURANCE_TOO_LOW
    return user


def _credential_refusal(credential: Credential, now: datetime) -> Reason | None:
    """Why the credential itself cannot open anything at ``now``, if it cannot."""
    if credential.revoked:
        return Reason.CREDENTIAL_REVOKED
    if credential.valid_from is not None and now < credential.valid_from:
        return Reason.CREDENTIAL_NOT_YET_VALID
    if credential.valid_until is not None and now >= credential.valid_until:
        return Reason.CREDENTIAL_EXPIRED
    if credential.revalidation_days is not None and (
        credential.revalidated_at is None
        or now >= credential.revalidated_at + timedelta(days=credential.revalidation_days)
    ):
        return Reason.KEY_REVALIDATION_DUE
    return None


def _offline_too_long(credential: Credential, site: Site, offline_for: timedelta | None) -> bool:
    """True when the site's offline policy stops this credential's kind after the outage so far."""
    return (
        offline_for is not None
        and site.max_offline_days is not None
        and credential.kind in site.offline_limited_kinds
        and offline_for > timedelta(days=site.max_offline_days)
    )


def _user_refusal(user: User, now: datetime) -> Reason | None:
    """Why the user cannot open anything at ``now``, if they cannot."""
    if user.status != UserStatus.ACTIVE:
        return Reason.USER_DISABLED
    if user.valid_from is not None and now < user.valid_from:
        return Reason.USER_NOT_YET_VALID
    if user.valid_until is not None and now >= user.valid_until:
        return Reason.USER_EXPIRED
    return None


def _rules(
    user: User, kind: CredentialKind, door_id: str, now: datetime, view: CacheView
) -> tuple[AccessRule | None, tuple[Reason, AccessRule] | None]:
    """The lowest-id rule granting ``user`` this door now, else the closest denial and its rule.

    Rules are found through the user's tags and the user's own id (their default tag).
    """
    index = view.rule_index
    granting: AccessRule | None = None
    best: tuple[int, Reason, AccessRule] | None = None
    local: datetime | None = None
    for principal in (*user.tags, user_key(user.id)):
        for rule in index.get((door_id, principal), ()):
            if kind not in RULE_TYPE_KINDS[rule.type]:
                reason: Reason | None = Reason.CREDENTIAL_TYPE_NOT_ALLOWED
            elif rule.valid_from is not None and now < rule.valid_from:
                reason = Reason.RULE_NOT_YET_VALID
            elif rule.valid_until is not None and now >= rule.valid_until:
                reason = Reason.RULE_EXPIRED
            else:
                reason = None
                if rule.days is not None or rule.time_slot is not None:
                    if local is None:
                        local = now.astimezone(view.tz)
                    reason = slot_reason(rule.days, rule.time_slot, local)
                if reason is None and rule.schedule_id is not None:
                    schedule = view.compiled.get(rule.schedule_id)
                    if schedule is None:  # cannot happen after reference checks; fail secure
                        reason = Reason.OUTSIDE_SCHEDULE
                    else:
                        if local is None:
                            local = now.astimezone(view.tz)
                        reason = schedule.closed_reason(now, local)
            if reason is None:
                if granting is None or rule.id < granting.id:
                    granting = rule
                continue
            rank = _RULE_RANK[reason]
            if best is None or rank > best[0] or (rank == best[0] and rule.id < best[2].id):
                best = (rank, reason, rule)
    return granting, None if best is None else (best[1], best[2])


def slot_reason(
    days: frozenset[Weekday] | None, slot: TimeSlot | None, local: datetime
) -> Reason | None:
    """None when the site-local time ``local`` is on an allowed day within the daily slot.

    An overnight slot belongs to the day it starts on: Friday 22:00-06:00 allows Saturday
    05:00 when Friday is allowed, whatever Saturday is.
    """
    weekday = local.weekday()
    if slot is None:
        return None if days is None or weekday in days else Reason.DAY_NOT_ALLOWED
    second = local.hour * 3600 + local.minute * 60 + local.second
    start, end = slot.start * 60, slot.end * 60
    if not slot.overnight:
        if days is not None and weekday not in days:
            return Reason.DAY_NOT_ALLOWED
        return None if start <= second < end else Reason.OUTSIDE_TIME_SLOT
    if second >= start:  # the evening part, on its own day
        return None if days is None or weekday in days else Reason.DAY_NOT_ALLOWED
    if second < end:  # the morning part belongs to the day before
        return None if days is None or (weekday - 1) % 7 in days else Reason.DAY_NOT_ALLOWED
    return Reason.OUTSIDE_TIME_SLOT if days is None or weekday in days else Reason.DAY_NOT_ALLOWED
