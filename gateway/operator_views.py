"""Operator views: "who can open door D at t?" and "what can user U open, and when?".

Both are answered by ``access.decide`` itself, one credential at a time: the rule index only
narrows down whom to ask about, it never decides. Pure: no I/O, no clock.

Cost, for a command or an admin request (not for a reader's hot path): ``who_can`` scans the
rule index's keys, the users and every credential once, then decides each candidate credential:
O(index + users + credentials + candidates * rules each). ``can_open`` scans every credential
once, then decides the user's credentials at every door: O(credentials + doors * credentials of
the user * their rules).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from typing import Any

from gateway import access
from gateway.codec import hhmm
from gateway.credentials import Verified
from gateway.explain import (
    decision_to_json,
    describe_days,
    describe_slot,
    describe_windows,
    explain,
)
from gateway.model import (
    AccessRule,
    Credential,
    Decision,
    Door,
    DoorMode,
    Reason,
    RuleType,
    User,
    Weekday,
)
from gateway.view import CacheView, user_key

#: A door's mode at the instant asked about: one for every door, or each door's own.
Modes = DoorMode | Callable[[str], DoorMode]

_TYPE_WORDS: Mapping[RuleType, str] = {
    RuleType.ANY: "any credential",
    RuleType.SMARTPHONE: "phone keys only",
    RuleType.CARD: "cards only",
    RuleType.PIN: "PIN codes only",
    RuleType.KEY: "mechatronic keys only",
}


@dataclass(frozen=True, slots=True)
class Holder:
    """One credential decided at a door: whose it is, and what ``access.decide`` said."""

    user_id: str
    user_name: str | None  # None: the credential's user is not in the cache
    credential: Credential
    decision: Decision
    explanation: str | None  # denied: ``explain.explain`` of the decision (granted: None)

    @property
    def granted(self) -> bool:
        """True when the credential opens the door at that instant."""
        return self.decision.granted

    @property
    def reason(self) -> Reason:
        """The decision's reason."""
        return self.decision.reason

    @property
    def rule_id(self) -> str | None:
        """The granting rule (or, denied, the rule that came closest); None when no rule."""
        return self.decision.rule_id


@dataclass(frozen=True, slots=True)
class RuleWhen:
    """A rule that reaches a user at a door, how (``via_tags``, ``names_user``), and when."""

    rule: AccessRule
    via_tags: tuple[str, ...]  # the user's tags the rule names
    names_user: bool  # the rule names the user (their default tag)
    when: str  # the rule's type, days, slot, dates and schedule in words


@dataclass(frozen=True, slots=True)
class DoorAccess:
    """A door as one user sees it: each of their credentials decided, and the rules for it."""

    door: Door
    mode: DoorMode
    holders: tuple[Holder, ...]  # one per credential of the user, by credential id
    rules: tuple[RuleWhen, ...]  # by rule id

    @property
    def granted(self) -> bool:
        """True when at least one of the user's credentials opens the door."""
        return any(h.granted for h in self.holders)


def _check_instant(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"the instant {at.isoformat()} needs a UTC offset")


def _user_name(view: CacheView, user_id: str) -> str | None:
    user = view.user(user_id)
    return None if user is None else user.name


def _decided(
    view: CacheView,
    credential: Credential,
    door_id: str,
    at: datetime,
    mode: DoorMode,
    offline_for: timedelta | None,
    user_name: str | None,
) -> Holder:
    """The credential decided as if presented, proving itself as strongly as it can.

    Only a denial is explained: a grant's reason and rule say it all, and explaining costs
    twice as much as deciding.
    """
    identity = Verified(credential, credential.assurance)
    decision = access.decide(identity, door_id, at, view, mode, offline_for)
    why = None if decision.granted else explain(decision, view, credential)
    return Holder(credential.user_id, user_name, credential, decision, why)


def _candidate_users(view: CacheView, door_id: str, mode: DoorMode) -> frozenset[str] | None:
    """Users some rule reaches at the door (and in lockdown the override tag's holders); None:
    everyone's credentials (emergency open lets anyone through)."""
    if mode is DoorMode.EMERGENCY_OPEN:
        return None
    principals = {principal for door, principal in view.rule_index if door == door_id}
    override = view.site.lockdown_override_tag
    if mode is DoorMode.LOCKDOWN and override is not None:
        principals.add(override)
    if not principals:
        return frozenset()
    users: Iterable[User] = chain(view.users.values(), view.guests.values())
    return frozenset(
        u.id for u in users if user_key(u.id) in principals or not principals.isdisjoint(u.tags)
    )


def who_can(
    view: CacheView,
    door_id: str,
    at: datetime,
    *,
    mode: DoorMode = DoorMode.NORMAL,
    offline_for: timedelta | None = None,
    include_denied: bool = False,
) -> list[Holder]:
    """Every credential ``decide`` grants at ``door_id`` at the aware instant ``at``.

    With ``include_denied``, also the near misses: credentials of users some rule reaches at the
    door (or the door's mode concerns) that are denied, each with its reason. Granted first,
    then by user and credential id. LookupError for a door not in the view.
    """
    if door_id not in view.doors:
        raise LookupError(f"no door {door_id!r} in the cache")
    _check_instant(at)
    candidates = _candidate_users(view, door_id, mode)
    names: dict[str, str | None] = {}
    holders = []
    for credential in view.all_credentials():
        user_id = credential.user_id
        if candidates is not None and user_id not in candidates:
            continue
        if user_id not in names:
            names[user_id] = _user_name(view, user_id)
        holder = _decided(view, credential, door_id, at, mode, offline_for, names[user_id])
        if holder.granted or include_denied:
            holders.append(holder)
    holders.sort(key=lambda h: (not h.granted, h.user_id, h.credential.id))
    return holders


def _local(value: datetime, view: CacheView) -> str:
    return f"{value.astimezone(view.tz):%Y-%m-%d %H:%M}"


def describe_when(rule: AccessRule, view: CacheView) -> str:
    """A rule's type, days, time slot, date interval and schedule in words (site time)."""
    parts = [_TYPE_WORDS[rule.type], describe_days(rule.days), describe_slot(rule.time_slot)]
    if rule.valid_from is not None and rule.valid_until is not None:
        parts.append(f"from {_local(rule.valid_from, view)} until {_local(rule.valid_until, view)}")
    elif rule.valid_from is not None:
        parts.append(f"from {_local(rule.valid_from, view)}")
    elif rule.valid_until is not None:
        parts.append(f"until {_local(rule.valid_until, view)}")
    else:
        parts.append("no date limits")
    if rule.schedule_id is not None:
        schedule = view.schedules.get(rule.schedule_id)
        if schedule is None:
            parts.append(f"while schedule {rule.schedule_id} is open (not in the cache: never)")
        else:
            text = (
                f'while schedule "{schedule.name}" is open ({describe_windows(schedule.windows)})'
            )
            if schedule.holiday_calendars:
                calendars = ", ".join(schedule.holiday_calendars)
                text += f", on holidays ({calendars}): {describe_windows(schedule.holiday_windows)}"
            if schedule.exceptions:
                text += f", with {len(schedule.exceptions)} one-off exception(s)"
            parts.append(text)
    return "; ".join(parts)


def rules_for(view: CacheView, user: User, door_id: str) -> list[RuleWhen]:
    """The rules reaching ``user`` at ``door_id`` through the rule index, by rule id."""
    index = view.rule_index
    found: dict[str, tuple[AccessRule, list[str], bool]] = {}
    for tag in user.tags:
        for rule in index.get((door_id, tag), ()):
            found.setdefault(rule.id, (rule, [], False))[1].append(tag)
    for rule in index.get((door_id, user_key(user.id)), ()):
        entry = found.get(rule.id)
        found[rule.id] = (rule, [] if entry is None else entry[1], True)
    return [
        RuleWhen(rule, tuple(tags), direct, describe_when(rule, view))
        for _, (rule, tags, direct) in sorted(found.items())
    ]


def can_open(
    view: CacheView,
    user_id: str,
    at: datetime,
    *,
    mode: Modes = DoorMode.NORMAL,
    offline_for: timedelta | None = None,
) -> list[DoorAccess]:
    """Every door, by id: each of the user's credentials decided there at ``at``, and the rules
    that reach the user there. ``mode`` is every door's, or a function of the door's id.
    LookupError for a user (or invitation guest) not in the view."""
    user = view.user(user_id)
    if user is None:
        raise LookupError(f"no user {user_id!r} in the cache")
    _check_instant(at)
    owned = sorted((c for c in view.all_credentials() if c.user_id == user_id), key=lambda c: c.id)
    out = []
    for door_id in sorted(view.doors):
        door_mode = mode if isinstance(mode, DoorMode) else mode(door_id)
        holders = tuple(
            _decided(view, c, door_id, at, door_mode, offline_for, user.name) for c in owned
        )
        rules = tuple(rules_for(view, user, door_id))
        out.append(DoorAccess(view.doors[door_id], door_mode, holders, rules))
    return out


# --- JSON -----------------------------------------------------------------------------------


def local_text(at: datetime, view: CacheView) -> str:
    """``at`` on the site's wall clock, e.g. ``Tue 2026-12-01 15:00 Europe/Rome``."""
    return f"{at.astimezone(view.tz):%a %Y-%m-%d %H:%M} {view.site.timezone}"


def holder_to_json(holder: Holder, *, with_user: bool = True) -> dict[str, Any]:
    """A holder: user, credential id and kind (never its value), the decision and why."""
    out: dict[str, Any] = {}
    if with_user:
        out |= {"user": holder.user_id, "user_name": holder.user_name}
    return out | {
        "credential": holder.credential.id,
        "kind": holder.credential.kind.value,
        "granted": holder.granted,
        "reason": holder.reason.value,
        "rule": holder.rule_id,
        "explanation": holder.explanation,
        "decision": decision_to_json(holder.decision),
    }


def rule_when_to_json(item: RuleWhen) -> dict[str, Any]:
    """A rule reaching a user at a door, with its "when" as fields and in words."""
    rule = item.rule
    slot = rule.time_slot
    return {
        "rule": rule.id,
        "name": rule.name,
        "type": rule.type.value,
        "via_tags": list(item.via_tags),
        "names_user": item.names_user,
        "valid_from": None if rule.valid_from is None else rule.valid_from.isoformat(),
        "valid_until": None if rule.valid_until is None else rule.valid_until.isoformat(),
        "days": None if rule.days is None else [Weekday(d).name.lower() for d in sorted(rule.days)],
        "time_slot": None if slot is None else {"start": hhmm(slot.start), "end": hhmm(slot.end)},
        "schedule": rule.schedule_id,
        "when": item.when,
    }


def who_can_to_json(
    view: CacheView,
    door_id: str,
    at: datetime,
    mode: DoorMode,
    holders: Iterable[Holder],
    *,
    denied: bool = False,
) -> dict[str, Any]:
    """The answer of ``who-can``: the door, the instant, the granted and (asked) the denied."""
    holders = list(holders)
    out: dict[str, Any] = {
        "door": door_id,
        "door_name": view.doors[door_id].name,
        "at": at.isoformat(),
        "local": local_text(at, view),
        "mode": mode.value,
        "granted": [holder_to_json(h) for h in holders if h.granted],
    }
    if denied:
        out["denied"] = [holder_to_json(h) for h in holders if not h.granted]
    return out


def door_access_to_json(item: DoorAccess) -> dict[str, Any]:
    """One door of ``can-open``."""
    return {
        "door": item.door.id,
        "door_name": item.door.name,
        "mode": item.mode.value,
        "granted": item.granted,
        "credentials": [holder_to_json(h, with_user=False) for h in item.holders],
        "rules": [rule_when_to_json(r) for r in item.rules],
    }


def can_open_to_json(
    view: CacheView, user_id: str, at: datetime, doors: Iterable[DoorAccess]
) -> dict[str, Any]:
    """The answer of ``can-open``: the user, the instant and every door."""
    user = view.user(user_id)
    if user is None:
        raise LookupError(f"no user {user_id!r} in the cache")
    return {
        "user": {
            "id": user.id,
            "name": user.name,
            "status": user.status.value,
            "tags": sorted(user.tags),
        },
        "at": at.isoformat(),
        "local": local_text(at, view),
        "doors": [door_access_to_json(d) for d in doors],
    }
