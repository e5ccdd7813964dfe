"""What OfficeRnD says the gateway should hold, and the local changes that bring the cache there.

Pure: reads a ``CacheView``, never writes. ``Target`` is the whole wish (mapped members, plan
tags, cards, the access rules the config writes for plan tags, who may use a phone);
``plan_changes`` compares it with what the cache holds, for everyone or for a few members,
and returns the upserts and deletes for ``Cache.apply_local`` with one sentence per thing it
had to leave out. It never asks the cache for something the cache would refuse: a card value
already held by a credential OfficeRnD does not own is left out, and a plan tag that a rule or
user from elsewhere still names is kept (so one odd entity never blocks the whole sync).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from gateway.credentials import redact
from gateway.model import AccessRule, Credential, CredentialKind, RuleType, Tag, User
from gateway.officernd.mapping import OWNER, MappedSite, MappingSettings
from gateway.view import CacheView

RULE_ID_PREFIX = "ornd-rule-"

_E = TypeVar("_E", User, Tag, Credential, AccessRule)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """An access rule for plan tags, as the config writes it (plans by name or id)."""

    plans: tuple[str, ...]
    doors: tuple[str, ...]
    schedule: str = ""
    type: RuleType = RuleType.ANY


@dataclass(frozen=True, slots=True)
class Target:
    """Everything OfficeRnD should have in the cache, by id; ``phone_allowed`` holds user ids."""

    users: Mapping[str, User]
    tags: Mapping[str, Tag]
    cards: Mapping[str, tuple[Credential, ...]]  # by user id: a webhook's members are found fast
    rules: Mapping[str, AccessRule]
    phone_allowed: frozenset[str]
    problems: tuple[str, ...] = ()
    contested: frozenset[str] = frozenset()  # user ids in a card conflict (MappedSite.contested)

    def all_cards(self) -> dict[str, Credential]:
        """Every card, by credential id."""
        return {card.id: card for cards in self.cards.values() for card in cards}

    def cards_of(self, users: frozenset[str]) -> dict[str, Credential]:
        """The cards of ``users``, by credential id."""
        return {card.id: card for user in users for card in self.cards.get(user, ())}

    @property
    def card_count(self) -> int:
        """How many cards in all."""
        return sum(map(len, self.cards.values()))

    @classmethod
    def empty(cls) -> Target:
        """Nothing at all (deactivation: everything OfficeRnD made goes)."""
        return cls({}, {}, {}, {}, frozenset())


@dataclass(frozen=True, slots=True)
class Changes:
    """Upserts and deletes for ``Cache.apply_local``; ``revoked``/``restored``: phone key ids."""

    upserts: dict[str, tuple[Any, ...]]
    deletes: dict[str, frozenset[str]]
    revoked: frozenset[str] = frozenset()
    restored: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the cache already holds the target."""
        return not self.upserts and not self.deletes

    @property
    def count(self) -> int:
        """How many entities change."""
        return sum(map(len, self.upserts.values())) + sum(map(len, self.deletes.values()))


def build_target(mapped: MappedSite, rules: Mapping[str, RuleSpec], view: CacheView) -> Target:
    """The target for a whole mapping, with the config's rules resolved against it and ``view``."""
    tags = {tag.id: tag for tag in mapped.tags}
    resolved, problems = resolve_rules(rules, tags, view)
    return Target(
        users={user.id: user for user in mapped.users},
        tags=tags,
        cards=_by_user(mapped.credentials),
        rules=resolved,
        phone_allowed=mapped.phone_allowed,
        problems=tuple(sorted({*mapped.problems, *problems})),
        contested=mapped.contested,
    )


def merge_target(
    old: Target,
    part: MappedSite,
    scope: frozenset[str],
    rules: Mapping[str, RuleSpec],
    view: CacheView,
) -> Target:
    """``old`` with the users in ``scope`` (user ids) and all tags taken from a partial mapping.

    Problems accumulate until the next whole mapping (a partial one sees only its members').
    """
    users = dict(old.users)
    cards = dict(old.cards)
    for user_id in scope:
        users.pop(user_id, None)
        cards.pop(user_id, None)
    users.update((user.id, user) for user in part.users)
    cards.update(_by_user(part.credentials))
    phone = (old.phone_allowed - scope) | part.phone_allowed
    tags = {tag.id: tag for tag in part.tags}
    resolved, problems = resolve_rules(rules, tags, view)
    found = {*old.problems, *part.problems, *problems}
    contested = (old.contested - scope) | part.contested
    return Target(users, tags, cards, resolved, phone, tuple(sorted(found)), contested)


def _by_user(cards: Iterable[Credential]) -> dict[str, tuple[Credential, ...]]:
    grouped: dict[str, list[Credential]] = {}
    for card in cards:
        grouped.setdefault(card.user_id, []).append(card)
    return {user: tuple(held) for user, held in grouped.items()}


def resolve_rules(
    specs: Mapping[str, RuleSpec], tags: Mapping[str, Tag], view: CacheView
) -> tuple[dict[str, AccessRule], list[str]]:
    """The config's plan rules as access rules; a rule with no known plan or door is left out."""
    by_name: dict[str, list[str]] = {}
    for tag in tags.values():
        by_name.setdefault(tag.name.casefold(), []).append(tag.id)
    rules: dict[str, AccessRule] = {}
    problems: list[str] = []
    for name, spec in sorted(specs.items()):
        rule_tags: set[str] = set()
        for plan in spec.plans:
            found = [t for t in tags if t.endswith("-" + plan) or t == plan]
            found = found or by_name.get(plan.casefold(), [])
            if not found:
                problems.append(f"Rule {name}: no OfficeRnD plan is named {plan!r}.")
            elif len(found) > 1:
                problems.append(f"Rule {name}: {len(found)} plans are named {plan!r}; all count.")
            rule_tags.update(found)
        doors = {door for door in spec.doors if door in view.doors}
        for door in sorted(set(spec.doors) - doors):
            problems.append(f"Rule {name}: the site has no door {door!r}.")
        schedule = spec.schedule or None
        if schedule is not None and schedule not in view.schedules:
            problems.append(f"Rule {name}: the site has no schedule {schedule!r}; rule left out.")
            continue
        if not rule_tags or not doors:
            if rule_tags or doors:
                problems.append(f"Rule {name} opens nothing (no known plan or door); left out.")
            continue
        rule_id = RULE_ID_PREFIX + name
        rules[rule_id] = AccessRule(
            id=rule_id,
            name=f"OfficeRnD: {name}",
            tags=frozenset(rule_tags),
            doors=frozenset(doors),
            schedule_id=schedule,
            type=spec.type,
        )
    return rules, problems


def current_entities(
    view: CacheView, settings: MappingSettings
) -> tuple[dict[str, User], dict[str, Tag], dict[str, Credential], dict[str, AccessRule]]:
    """Everything in ``view`` that OfficeRnD made: users, plan tags, cards, plan rules (slow)."""
    users = {k: v for k, v in view.users.items() if k.startswith(settings.user_id_prefix)}
    tags = _plan_tags(view, settings)
    cards = {
        c.id: c
        for kind in settings.card_kinds
        for c in view.credentials[kind]
        if c.id.startswith(settings.credential_id_prefix)
    }
    rules = {k: v for k, v in view.rules.items() if k.startswith(RULE_ID_PREFIX)}
    return users, tags, cards, rules


def _plan_tags(view: CacheView, settings: MappingSettings) -> dict[str, Tag]:
    """The plan tags this integration made (its owner and its id prefix: the cloud may send
    special tags of an OfficeRnD link of its own, which are not this gateway's to remove)."""
    prefix = settings.tag_id_prefix
    return {k: v for k, v in view.tags.items() if v.owner == OWNER and k.startswith(prefix)}


def plan_changes(
    view: CacheView,
    target: Target,
    settings: MappingSettings,
    *,
    scope: frozenset[str] | None = None,
    previous: Target | None = None,
    policy_revoked: frozenset[str] = frozenset(),
    check_phones: bool = True,
) -> Changes:
    """The local changes that make ``view`` hold ``target``.

    ``scope`` (user ids): only those users and their cards are compared, with ``previous`` (the
    target last applied) saying which cards they had; None compares everything (slow: it scans
    the cache). ``check_phones`` False skips the phone policy (nobody's access changed).
    ``policy_revoked``: phone keys revoked earlier because their member had no
    Member App access, restored once they have it again.
    """
    if scope is None:
        users, tags, cards, rules = current_entities(view, settings)
        want_users, want_cards = dict(target.users), target.all_cards()
    else:
        users = {k: view.users[k] for k in scope if k in view.users}
        tags = _plan_tags(view, settings)
        rules = {k: v for k, v in view.rules.items() if k.startswith(RULE_ID_PREFIX)}
        had = previous.cards_of(scope).values() if previous is not None else ()
        cards = {c.id: c for c in had if _holds(view, c)}
        want_users = {k: target.users[k] for k in scope if k in target.users}
        want_cards = target.cards_of(scope)
    problems: list[str] = []
    upsert_users, delete_users = _changes(users, want_users)
    upsert_tags, delete_tags = _changes(tags, target.tags)
    upsert_cards, delete_cards = _changes(cards, want_cards)
    upsert_rules, delete_rules = _changes(rules, target.rules)
    delete_tags = _deletable_tags(
        view, delete_tags, set(rules) | set(target.rules), settings, problems
    )
    upsert_cards = _free_cards(view, upsert_cards, set(delete_cards), problems)
    phones: tuple[Credential, ...] = ()
    revoked = restored = frozenset[str]()
    if check_phones:  # a scan of every phone key: only when someone's Member App access changed
        phones, revoked, restored = _phone_policy(
            view, target, settings, scope, policy_revoked, delete_users
        )
    upserts = {
        "users": upsert_users,
        "tags": upsert_tags,
        "credentials": upsert_cards + phones,
        "rules": upsert_rules,
    }
    deletes = {
        "users": frozenset(delete_users),
        "tags": frozenset(delete_tags),
        "credentials": frozenset(delete_cards),
        "rules": frozenset(delete_rules),
    }
    return Changes(
        upserts={k: v for k, v in upserts.items() if v},
        deletes={k: v for k, v in deletes.items() if v},
        revoked=revoked,
        restored=restored,
        problems=tuple(problems),
    )


def _changes(
    old: Mapping[str, _E], new: Mapping[str, _E]
) -> tuple[tuple[_E, ...], tuple[str, ...]]:
    upserts = tuple(new[k] for k in sorted(new) if old.get(k) != new[k])
    deletes = tuple(sorted(k for k in old if k not in new))
    return upserts, deletes


def _holds(view: CacheView, card: Credential) -> bool:
    held = view.credential(card.kind, card.value)
    return held is not None and held.id == card.id


def _deletable_tags(
    view: CacheView,
    tag_ids: tuple[str, ...],
    our_rules: set[str],
    settings: MappingSettings,
    problems: list[str],
) -> tuple[str, ...]:
    """The plan tags that may go: none still named by a rule or user OfficeRnD did not make."""
    if not tag_ids:
        return ()
    gone = set(tag_ids)
    named: dict[str, str] = {}
    for rule in view.rules.values():
        if rule.id not in our_rules:
            for tag in rule.tags & gone:
                named.setdefault(tag, f"rule {rule.id}")
    for user in view.users.values():
        if not user.id.startswith(settings.user_id_prefix):
            for tag in gone.intersection(user.tags):
                named.setdefault(tag, f"user {user.id}")
    override = view.site.lockdown_override_tag
    if override in gone:
        named.setdefault(override, "the site's lockdown override")
    for tag, holder in sorted(named.items()):
        problems.append(
            f"Plan tag {tag} is kept: its plan is gone from OfficeRnD but {holder} still names it."
        )
    return tuple(t for t in tag_ids if t not in named)


def _free_cards(
    view: CacheView, cards: tuple[Credential, ...], deleted: set[str], problems: list[str]
) -> tuple[Credential, ...]:
    """The cards whose value no credential OfficeRnD does not own holds already."""
    out = []
    twice = Counter((card.kind, card.value) for card in cards)
    for card in cards:
        if twice[(card.kind, card.value)] > 1:
            # Two of OfficeRnD's own cards with one value (a mapping of part of the members
            # cannot see it): neither, as a whole mapping would decide.
            problems.append(
                f"Card {card.kind.value}:{redact(card.value)} is listed for more than one "
                f"member; left out for {card.user_id}."
            )
            continue
        held = view.credential(card.kind, card.value)
        if held is not None and held.id != card.id and held.id not in deleted:
            problems.append(
                f"Card {card.kind.value}:{redact(card.value)} of {card.user_id} is already "
                f"credential {held.id} of {held.user_id}; left out."
            )
            continue
        out.append(card)
    return tuple(out)


def _phone_policy(
    view: CacheView,
    target: Target,
    settings: MappingSettings,
    scope: frozenset[str] | None,
    policy_revoked: frozenset[str],
    deleted_users: tuple[str, ...],
) -> tuple[tuple[Credential, ...], frozenset[str], frozenset[str]]:
    """Phone keys to revoke (no Member App access) or restore; and the ids of each."""
    gone = set(deleted_users)
    changed: list[Credential] = []
    revoked: set[str] = set()
    restored: set[str] = set()
    for phone in view.credentials[CredentialKind.BLE_PHONE_KEY]:
        user = phone.user_id
        if not user.startswith(settings.user_id_prefix) or user in gone:
            continue
        if scope is not None and user not in scope:
            continue
        if user not in target.users:
            continue
        allowed = user in target.phone_allowed
        if not allowed and not phone.revoked:
            changed.append(replace(phone, revoked=True))
            revoked.add(phone.id)
        elif allowed and phone.revoked and phone.id in policy_revoked:
            changed.append(replace(phone, revoked=False))
            restored.add(phone.id)
    return tuple(changed), frozenset(revoked), frozenset(restored)
