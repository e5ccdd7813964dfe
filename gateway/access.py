"""The one decision function: may this identity open this door now?

Pure and deterministic: no I/O, no clock, no logging. Checks run from the door outwards to
the rules, and the first failing check is the reason. When several rules grant, the one with
the lowest id is reported. When none grants, the reason reported is that of the rule that
came closest (a closed schedule beats an expired rule), ties broken by the lowest rule id.
"""

from __future__ import annotations

from datetime import datetime

from gateway.credentials import Refused, Verified
from gateway.model import AccessRule, Decision, DoorMode, Reason
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
) -> Decision:
    """Decide a presentation at ``door_id`` at the aware instant ``now`` against ``view``."""
    door = view.doors.get(door_id)
    if door is None:
        return Decision(False, Reason.UNKNOWN_DOOR, door_id, now, mode)
    if mode is DoorMode.LOCKDOWN:
        return Decision(False, Reason.DOOR_LOCKDOWN, door_id, now, mode)
    if mode is DoorMode.EMERGENCY_OPEN:
        return Decision(True, Reason.EMERGENCY_OPEN, door_id, now, mode)
    if isinstance(identity, Refused):
        return Decision(False, Reason.PROOF_INVALID, door_id, now, mode)

    credential = identity.credential
    assurance = identity.assurance
    if credential is None:
        return Decision(False, Reason.UNKNOWN_CREDENTIAL, door_id, now, mode, assurance=assurance)
    # A proof never lifts a credential above the level it was enrolled at.
    assurance = min(assurance, credential.assurance)

    def deny(
        reason: Reason, user_id: str = credential.user_id, rule: AccessRule | None = None
    ) -> Decision:
        return Decision(
            False,
            reason,
            door_id,
            now,
            mode,
            credential.id,
            user_id,
            rule.id if rule else None,
            assurance,
        )

    if credential.revoked:
        return deny(Reason.CREDENTIAL_REVOKED)
    if credential.valid_from is not None and now < credential.valid_from:
        return deny(Reason.CREDENTIAL_NOT_YET_VALID)
    if credential.valid_until is not None and now >= credential.valid_until:
        return deny(Reason.CREDENTIAL_EXPIRED)

    user = view.users.get(credential.user_id)
    if user is None:
        return deny(Reason.UNKNOWN_USER)  # names the user id the credential points at
    user_id = user.id
    if user.status != "active":
        return deny(Reason.USER_DISABLED, user_id)
    if user.valid_from is not None and now < user.valid_from:
        return deny(Reason.USER_NOT_YET_VALID, user_id)
    if user.valid_until is not None and now >= user.valid_until:
        return deny(Reason.USER_EXPIRED, user_id)
    if assurance < door.min_assurance:
        return deny(Reason.ASSURANCE_TOO_LOW, user_id)

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
    if granting is not None:
        return Decision(
            True, Reason.GRANTED, door_id, now, mode, credential.id, user_id, granting.id, assurance
        )
    if best is None:
        return deny(Reason.NO_RULE_FOR_DOOR, user_id)
    return deny(best[1], user_id, best[2])
