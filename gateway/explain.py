"""Plain-language explanations of decisions, for installers asking "why was I denied?"."""

from __future__ import annotations

from typing import Any

from gateway.codec import hhmm
from gateway.model import Credential, Decision, Reason, Schedule, TimeSlot, TimeWindow, Weekday
from gateway.view import CacheView

_TEXT = {
    Reason.GRANTED: "rule {rule} lets {user} through this door",
    Reason.EMERGENCY_OPEN: "the door is in emergency-open mode: everyone may pass",
    Reason.LOCKDOWN_OVERRIDE: "the door is in lockdown, but {user} holds the site's lockdown "
    "override tag {override_tag}",
    Reason.UNKNOWN_DOOR: "no door with this id is in the cache",
    Reason.KEY_BLACKLISTED: "mechatronic key {credential} is on the site's blacklist of lost keys",
    Reason.DOOR_LOCKDOWN: "the door is in lockdown: {lockdown_passes} until lockdown ends",
    Reason.UNKNOWN_CREDENTIAL: "this credential is not in the cache (not enrolled, or not synced yet)",
    Reason.PROOF_INVALID: "the credential's cryptographic proof did not verify",
    Reason.PROOF_REPLAYED: "the proof was genuine but already used: a replayed recording",
    Reason.CREDENTIAL_REVOKED: "credential {credential} has been revoked",
    Reason.CREDENTIAL_NOT_YET_VALID: "credential {credential} is valid only from {credential_from}",
    Reason.CREDENTIAL_EXPIRED: "credential {credential} expired at {credential_until}",
    Reason.KEY_REVALIDATION_DUE: "mechatronic key {credential} must be revalidated at an online "
    "reader every {revalidation_days} days; {revalidated}",
    Reason.OFFLINE_TOO_LONG: "the gateway has been without its cloud for longer than the site "
    "allows for this kind of credential ({max_offline_days} days); it works again once the gateway "
    "is back in touch",
    Reason.UNKNOWN_USER: "credential {credential} belongs to a user who is not in the cache",
    Reason.USER_DISABLED: "{user} is {user_status}",
    Reason.USER_NOT_YET_VALID: "{user} has access only from {user_from}",
    Reason.USER_EXPIRED: "{user}'s access ended at {user_until}",
    Reason.ASSURANCE_TOO_LOW: "this door needs {door_assurance} assurance; the credential proved only {assurance}",
    Reason.NO_RULE_FOR_DOOR: "no access rule gives any of {user}'s tags ({tags}) this door",
    Reason.RULE_NOT_YET_VALID: "rule {rule} applies only from {rule_from}",
    Reason.RULE_EXPIRED: "rule {rule} ended at {rule_until}",
    Reason.OUTSIDE_SCHEDULE: "rule {rule} allows this door only during {schedule}; it is {local} on site",
    Reason.HOLIDAY: "rule {rule}'s schedule {schedule} is closed on holidays, and {local_date} is one",
    Reason.CLOSED_BY_EXCEPTION: "schedule {schedule} of rule {rule} is closed by a one-off exception now",
    Reason.CREDENTIAL_TYPE_NOT_ALLOWED: "rule {rule} gives this door to {user} for {rule_type} "
    "credentials only, and this one is a {kind}",
    Reason.DAY_NOT_ALLOWED: "rule {rule} allows this door only on {rule_days}; it is {local} on site",
    Reason.OUTSIDE_TIME_SLOT: "rule {rule} allows this door only from {rule_slot}; it is {local} "
    "on site",
    Reason.NO_KEYPAD: "this door's reader has no keypad, so PIN codes are not accepted here",
    Reason.PIN_MALFORMED: "a PIN code has 4 to 7 digits; what was typed was not one",
    Reason.KEYPAD_LOCKED: "too many wrong PIN codes in a row at this reader: it accepts none until "
    "its lockout ends",
}


def describe_days(days: frozenset[Weekday] | None) -> str:
    """E.g. ``mon,tue,fri``; ``every day`` for None."""
    if days is None:
        return "every day"
    return ",".join(Weekday(d).name.lower() for d in sorted(days))


def describe_slot(slot: TimeSlot | None) -> str:
    """E.g. ``08:00-18:00`` or ``22:00-06:00(+1)``; ``all day`` for None."""
    if slot is None:
        return "all day"
    return f"{hhmm(slot.start)}-{hhmm(slot.end)}{'(+1)' if slot.overnight else ''}"


def describe_windows(windows: tuple[TimeWindow, ...]) -> str:
    """E.g. ``mon,tue 08:00-18:00; fri 22:00-02:00(+1)``."""
    parts = []
    for w in windows:
        days = ",".join(Weekday(d).name.lower() for d in sorted(w.days))
        parts.append(f"{days} {hhmm(w.start)}-{hhmm(w.end)}{'(+1)' if w.overnight else ''}")
    return "; ".join(parts) or "never"


def _schedule_text(schedule: Schedule | None) -> str:
    if schedule is None:
        return "(unknown schedule)"
    return f'"{schedule.name}" ({describe_windows(schedule.windows)})'


def _lockdown_passes(view: CacheView) -> str:
    tag = view.site.lockdown_override_tag
    if tag is None:
        return "no credential opens it"
    return f"only a valid credential of a holder of the override tag {tag} opens it"


def _revalidated(credential: Credential | None) -> str:
    if credential is None:
        return "its last revalidation is unknown"
    if credential.revalidated_at is None:
        return "it has never been revalidated"
    return f"it was last revalidated at {credential.revalidated_at}"


def facts(
    decision: Decision, view: CacheView, credential: Credential | None = None
) -> dict[str, Any]:
    """The names and values an explanation refers to; ``credential`` is the one presented."""
    door = view.doors.get(decision.door_id)
    user = view.user(decision.user_id or "")
    rule = view.rules.get(decision.rule_id or "") or view.guest_rules.get(decision.rule_id or "")
    if credential is not None and credential.id != decision.credential_id:
        credential = None
    local = decision.at.astimezone(view.tz)
    schedule = view.schedules.get(rule.schedule_id or "") if rule else None
    return {
        "door": f'"{door.name}" ({door.id})' if door else decision.door_id,
        "door_assurance": door.min_assurance.label if door else "?",
        "assurance": decision.assurance.label if decision.assurance else "?",
        "user": f'"{user.name}" ({user.id})' if user else (decision.user_id or "?"),
        "user_status": user.status.value if user else "?",
        "user_from": user.valid_from if user else "?",
        "user_until": user.valid_until if user else "?",
        "tags": ", ".join(sorted(user.tags)) if user and user.tags else "none",
        "credential": decision.credential_id or "?",
        "credential_from": credential.valid_from if credential else "?",
        "credential_until": credential.valid_until if credential else "?",
        "revalidation_days": credential.revalidation_days if credential else "?",
        "revalidated": _revalidated(credential),
        "override_tag": view.site.lockdown_override_tag or "?",
        "max_offline_days": view.site.max_offline_days or "?",
        "lockdown_passes": _lockdown_passes(view),
        "rule": f'"{rule.name}" ({rule.id})' if rule else "?",
        "rule_from": rule.valid_from if rule else "?",
        "rule_until": rule.valid_until if rule else "?",
        "schedule": _schedule_text(schedule),
        "rule_type": rule.type.value if rule else "?",
        "rule_days": describe_days(rule.days) if rule else "?",
        "rule_slot": describe_slot(rule.time_slot) if rule else "?",
        "kind": credential.kind.value if credential else "credential of another type",
        "local": f"{local:%a %Y-%m-%d %H:%M} {view.site.timezone}",
        "local_date": f"{local:%Y-%m-%d}",
    }


def explain(decision: Decision, view: CacheView, credential: Credential | None = None) -> str:
    """One sentence saying what was decided at which door, and why."""
    verdict = "GRANTED" if decision.granted else "DENIED"
    detail = _TEXT[decision.reason].format(**facts(decision, view, credential))
    door = view.doors.get(decision.door_id)
    where = f'"{door.name}"' if door else decision.door_id
    return f"{verdict} at {where} ({decision.reason.value}): {detail}."


def decision_to_json(decision: Decision) -> dict[str, Any]:
    """The JSON form of a decision (API and ``decide --json``)."""
    return {
        "granted": decision.granted,
        "reason": decision.reason.value,
        "door": decision.door_id,
        "at": decision.at.isoformat(),
        "mode": decision.mode.value,
        "credential": decision.credential_id,
        "user": decision.user_id,
        "rule": decision.rule_id,
        "assurance": decision.assurance.label if decision.assurance else None,
    }
