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
    AccessRule,
    AssuranceLevel,
    Credential,
    CredentialKind,
    Decision,
    Door,
    DoorMode,
    Reason,
    Site,
    User,
    UserStatus,
)
from gateway.view import CacheView

# How close a failing rule came to granting; the highest rank is the reason reported.
_RULE_RANK = {
    Reason.RULE_EXPIRED: 0,
    Reason.RULE_NOT_YET_VALID: 1,
    Reason.OUTSIDE_SCHEDULE: 2,
    Reason.HOLIDAY: 3,
    Reason.CLOSED_BY_EXCEPTION: 4,
}


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
    granting, closest = _rules(user, door_id, now, view)
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
    user = view.users.get(credential.user_id)
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
    user: User, door_id: str, now: datetime, view: CacheView
) -> tuple[AccessRule | None, tuple[Reason, AccessRule] | None]:
    """The lowest-id rule granting ``user`` this door now, else the closest denial and its rule."""
    index = view.rule_index
    granting: AccessRule | None = None
    best: tuple[int, Reason, AccessRule] | None = None
    local: datetime | None = None
    for tag in user.tags:
        for rule in index.get((door_id, tag), ()):
            if rule.valid_from is not None and now < rule.valid_from:
                reason: Reason | None = Reason.RULE_NOT_YET_VALID
            elif rule.valid_until is not None and now >= rule.valid_until:
                reason = Reason.RULE_EXPIRED
            elif rule.schedule_id is None:
                reason = None
            else:
                schedule = view.compiled.get(rule.schedule_id)
                if schedule is None:  # cannot happen after reference checks; fail secure anyway
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
