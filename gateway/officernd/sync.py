"""Keeps the cache in step with one OfficeRnD organisation: full sync, webhooks, polling, dates.

One task does everything in order, so a webhook's re-fetch is never overtaken by an older full
listing. It starts with a full sync (retried with backoff until it succeeds: until then the
cache keeps what it had, so an outage never locks members out), then waits for webhook events,
the polling timer, the periodic full reconciliation (the only way to see deleted members when
webhooks are missed), a new site date (memberships start and end on dates, with no webhook),
and upstream snapshots that replaced what OfficeRnD had put in the cache.

A webhook or poll re-maps only the members it concerns (``Listings``), so a change reaches the
cache in milliseconds on a 10,000-member site; a full mapping runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.backoff import Backoff
from gateway.cache import Cache
from gateway.codec import FormatError
from gateway.events import EventLog, new_event
from gateway.files import write_atomically
from gateway.model import Credential, EventType, User, UserStatus
from gateway.officernd.client import MAX_PAGE_SIZE, ApiError, OfficeRnDClient, OfficeRnDError
from gateway.officernd.listings import NOBODY, RESOURCES, Affected, Listings, Obj
from gateway.officernd.mapping import MappingSettings, map_entities
from gateway.officernd.reconcile import (
    Changes,
    RuleSpec,
    Target,
    build_target,
    merge_target,
    plan_changes,
    resolve_rules,
)
from gateway.officernd.webhooks import WebhookEvent
from gateway.view import CacheView

_LOGGER = logging.getLogger(__name__)

#: A poll asks for what changed since its last start minus this (clocks differ a little).
POLL_OVERLAP_S = 120.0
#: How often the site date is looked at (memberships start and end at local midnight).
DATE_CHECK_S = 30.0
#: Retrying a failed full sync: from a few seconds up to five minutes apart.
RETRY_BASE_S = 5.0
RETRY_CAP_S = 300.0
#: Webhook re-fetches in flight at once.
FETCH_CONCURRENCY = 4
#: A webhook event whose re-fetch failed this often is dropped for a full sync instead.
MAX_EVENT_ATTEMPTS = 5
#: Events waiting at most; past it the oldest go, and a full sync catches up.
MAX_QUEUED_EVENTS = 10_000
#: A partial re-mapping of more members than this runs in a worker thread.
THREAD_ABOVE_MEMBERS = 500
#: Problems shown in the status (all are logged once).
STATUS_PROBLEMS = 50
#: Distinct problems remembered as already logged, at most.
MAX_LOGGED = 10_000
#: Phone keys revoked for lack of Member App access, restored when it comes back.
POLICY_FILE = "phone_policy.json"


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """How the sync runs; the defaults are the documented ones (docs/officernd.md)."""

    mapping: MappingSettings = field(default_factory=MappingSettings)
    rules: Mapping[str, RuleSpec] = field(default_factory=dict)
    poll_interval_s: float = 60.0  # 0: no polling (webhooks and reconciliation only)
    reconcile_interval_s: float = 3600.0
    page_size: int = MAX_PAGE_SIZE
    date_check_s: float = DATE_CHECK_S


@dataclass(frozen=True, slots=True)
class SyncSummary:
    """What one full sync read and changed."""

    members: int
    companies: int
    memberships: int
    plans: int
    users: int
    tags: int
    cards: int
    rules: int
    changed: int
    requests: int
    seconds: float
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, problems counted rather than listed."""
        out: dict[str, Any] = {
            k: getattr(self, k) for k in self.__dataclass_fields__ if k != "problems"
        }
        out["seconds"] = round(self.seconds, 3)
        out["problems"] = len(self.problems)
        return out


class RefusedByCache(Exception):
    """The cache refused OfficeRnD's changes (removals were still applied where possible)."""


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds, as OfficeRnD writes timestamps."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OfficeRnDSync:
    """The OfficeRnD side of the cache for one organisation (``start``, ``submit``, ``stop``)."""

    def __init__(
        self,
        client: OfficeRnDClient,
        cache: Cache,
        events: EventLog,
        options: SyncOptions,
        *,
        state_dir: Path | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``state_dir``: where the phone policy is remembered (None: in memory only)."""
        self._client = client
        self._cache = cache
        self._events = events
        self._options = options
        self._settings = options.mapping
        self._policy_path = state_dir / POLICY_FILE if state_dir is not None else None
        self._clock = clock
        self._monotonic = monotonic
        self._listings = Listings()
        self._target: Target | None = None  # None until a full sync succeeded
        self._mapped_on: date | None = None
        self._policy_revoked = self._load_policy()
        self._queue: collections.deque[WebhookEvent] = collections.deque()
        self._attempts: collections.Counter[str] = collections.Counter()
        self._full_wanted = True  # a full sync is due at once (the first one, or to catch up)
        self._full_requests: list[asyncio.Future[SyncSummary]] = []
        self._next_full = 0.0
        self._next_poll = 0.0
        self._retry_at = 0.0  # OfficeRnD failed: no request before this (monotonic)
        self._offline_retry_at = 0.0  # the cache refused: no re-apply before this
        self._pending = NOBODY  # members whose listings changed but are not applied yet
        self._refused = False  # the last step's changes were refused by the cache
        self._objects_read = 0  # by polls
        self._backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S)
        self._wake = asyncio.Event()
        self._seen_version = cache.version
        self._upstream_changed = False
        self._task: asyncio.Task[None] | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._memberships_filter = True  # False once OfficeRnD refused modifiedAt on them
        self._poll_since: datetime | None = None
        self._logged: set[str] = set()
        self._link_failed = False
        # What the status shows.
        self.state = "starting"
        self.last_error: str | None = None
        self.last_full_sync: SyncSummary | None = None
        self.last_full_sync_at: datetime | None = None
        self.last_change_at: datetime | None = None
        self.last_poll_at: datetime | None = None
        self.webhooks_processed = 0
        self.changes_applied = 0
        self.applied = asyncio.Event()  # set after each apply (tests and benchmarks wait on it)

    # -- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in the background: a full sync, then webhooks, polls and reconciliation."""
        if self._task is None:
            self._remove_listener = self._cache.add_listener(self._on_view)
            self._task = asyncio.create_task(self._run(), name="officernd-sync")

    async def stop(self) -> None:
        """Stop the background task; what was applied stays in the cache."""
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        task, self._task = self._task, None
        for future in self._full_requests:
            future.cancel()
        self._full_requests = []
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def submit(self, event: WebhookEvent) -> None:
        """Queue a verified, first-seen webhook event; processed in order, soon after."""
        if len(self._queue) >= MAX_QUEUED_EVENTS:
            self._queue.popleft()
            self._full_wanted = True  # what the dropped event said, a full listing will show
            self._log_once("queue-full", "OfficeRnD webhook events pile up: a full sync follows")
        self._queue.append(event)
        self._wake.set()

    async def request_full_sync(self) -> SyncSummary:
        """A full sync now, run by the sync's own task (so nothing it does overlaps)."""
        if self._task is None:
            return await self.full_sync()
        future: asyncio.Future[SyncSummary] = asyncio.get_running_loop().create_future()
        self._full_requests.append(future)
        self._full_wanted = True
        self._retry_at = 0.0  # asked for by a person: now, not after the backoff
        self._wake.set()
        return await future

    def _on_view(self, view: CacheView) -> None:
        # Local changes keep the version; a new one came from upstream and may have replaced
        # what OfficeRnD put in (a snapshot holds only the cloud's data).
        if view.version != self._seen_version:
            self._seen_version = view.version
            self._upstream_changed = True
            self._wake.set()

    # -- the task -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        now = self._monotonic()
        self._next_full = now + self._options.reconcile_interval_s
        self._next_poll = now + self._options.poll_interval_s
        local_backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S)
        while True:
            await self._sleep_until_due()
            # Work that needs no request comes first, on its own: an OfficeRnD outage must not
            # hold up putting members back after a snapshot, or ending memberships at midnight.
            self._refused = False
            ran = await self._guarded("re-applying", self._offline_work)
            if ran is None or self._refused:
                self._offline_retry_at = self._monotonic() + local_backoff.next_delay()
            elif ran:
                local_backoff.reset()
            self._refused = False
            did = await self._guarded("sync", self._online_work)
            if self._refused:
                # OfficeRnD answered; the cache said no. Try again later, without calling the
                # link down (retrying at once would only be refused again).
                delay = local_backoff.next_delay()
                self._offline_retry_at = self._retry_at = self._monotonic() + delay
            elif did is None:
                self._link_failed = True
                self._retry_at = self._monotonic() + self._backoff.next_delay()
            elif did and self._link_failed:
                self._link_failed = False
                self._backoff.reset()
                self.state, self.last_error = "ok", None

    async def _sleep_until_due(self) -> None:
        now = self._monotonic()
        due = [now + self._options.date_check_s]
        online = max(now, self._retry_at)
        if self._full_wanted:
            due.append(online)
        due.append(max(self._next_full, self._retry_at))
        if self._queue and self._target is not None:
            due.append(online)
        if self._options.poll_interval_s > 0:
            due.append(max(self._next_poll, self._retry_at))
        if self._upstream_changed or self._pending != NOBODY:
            due.append(max(now, self._offline_retry_at))
        # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that arrives as
        # the event is set, and stop() would then wait for ever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(due) - now)):
                await self._wake.wait()
        self._wake.clear()

    async def _guarded(self, what: str, work: Callable[[], Awaitable[bool]]) -> bool | None:
        """Run one step: its result, or None if it failed (logged and shown, never fatal)."""
        try:
            return await work()
        except (OfficeRnDError, RefusedByCache, OSError) as err:
            self._failed(what, err)
        except Exception as err:  # a defect: said loudly, and the sync goes on
            _LOGGER.exception("OfficeRnD %s failed unexpectedly", what)
            self._failed(what, err)
        return None

    async def _offline_work(self) -> bool:
        """Re-apply after a snapshot, re-map at midnight, finish a re-mapping that failed."""
        if self._monotonic() < self._offline_retry_at:
            return False
        ran = False
        if self._upstream_changed:
            await self._reapply()
            ran = True
        if self._target is not None and self._today() != self._mapped_on:
            await self._remap_all()
            ran = True
        if self._pending != NOBODY and self._target is not None:
            await self._remap(NOBODY)
            ran = True
        return ran

    async def _online_work(self) -> bool:
        """A due full sync, queued webhooks, a due poll; True if any request went through."""
        now = self._monotonic()
        if now < self._retry_at:
            return False
        did = False
        if self._full_wanted or now >= self._next_full:
            self._full_wanted = True
            requests, self._full_requests = self._full_requests, []
            try:
                summary = await self.full_sync()
            except BaseException as err:
                for future in requests:
                    if not future.done():
                        future.set_exception(err)
                raise
            for future in requests:
                if not future.done():
                    future.set_result(summary)
            self._full_wanted = bool(self._full_requests)  # asked for while this one ran
            self._next_full = now + self._options.reconcile_interval_s
            self._next_poll = now + self._options.poll_interval_s
            did = True
        if self._queue and self._target is not None:
            await self._process_webhooks()
            did = True
        if self._options.poll_interval_s > 0 and now >= self._next_poll:
            self._next_poll = now + self._options.poll_interval_s
            await self.poll_once()
            did = True
        return did

    # -- full sync ------------------------------------------------------------------------------

    async def full_sync(self) -> SyncSummary:
        """Read every listing, map it and apply the difference; OfficeRnDError leaves all as was."""
        started = self._monotonic()
        requests = self._client.requests_made
        since = self._clock()
        self.state = "syncing" if self._target is None else self.state
        lists = await asyncio.gather(*(self._list(resource) for resource in RESOURCES))
        self._listings.replace(dict(zip(RESOURCES, lists, strict=True)))
        self._poll_since = since
        self._memberships_filter = True  # try the filter again once a reconciliation went well
        changes, target = await self._remap_all()
        objects = self._listings.objects
        summary = SyncSummary(
            members=len(objects["members"]),
            companies=len(objects["companies"]),
            memberships=len(objects["memberships"]),
            plans=len(objects["plans"]),
            users=len(target.users),
            tags=len(target.tags),
            cards=target.card_count,
            rules=len(target.rules),
            changed=changes.count,
            requests=self._client.requests_made - requests,
            seconds=self._monotonic() - started,
            problems=target.problems,
        )
        self.last_full_sync = summary
        self.last_full_sync_at = self._clock()
        self.state, self.last_error = "ok", None
        _LOGGER.info(
            "OfficeRnD full sync: %d members, %d plans, %d changes in %.1f s (%d requests)",
            summary.members,
            summary.plans,
            summary.changed,
            summary.seconds,
            summary.requests,
        )
        return summary

    async def _list(self, resource: str, params: Mapping[str, str] | None = None) -> list[Obj]:
        page_size = self._options.page_size
        return [obj async for obj in self._client.list(resource, params, page_size=page_size)]

    async def _remap_all(self) -> tuple[Changes, Target]:
        """Map every listing as of today and apply the difference (no requests)."""
        today = self._today()
        objects = self._listings.objects
        mapped = await asyncio.to_thread(
            functools.partial(
                map_entities,
                list(objects["members"].values()),
                list(objects["companies"].values()),
                list(objects["memberships"].values()),
                list(objects["plans"].values()),
                today=today,
                settings=self._settings,
            )
        )
        target = build_target(mapped, self._options.rules, self._cache.view)
        result = await self._apply_target(target, scope=None)
        self._mapped_on = today  # only once applied: a refusal is tried again
        self._pending = NOBODY  # everyone was just mapped
        return result

    async def _reapply(self) -> None:
        """After an upstream change: put back whatever of ours it replaced (no requests)."""
        self._upstream_changed = False
        if self._target is None:
            return
        view = self._cache.view
        rules, _ = resolve_rules(self._options.rules, self._target.tags, view)
        # Cleared first: a snapshot arriving while this runs sets it again (and is re-applied).
        try:
            await self._apply_target(replace(self._target, rules=rules), scope=None)
        except BaseException:
            self._upstream_changed = True
            raise

    # -- webhooks and polls -------------------------------------------------------------------

    async def _process_webhooks(self) -> None:
        """Re-fetch what the queued events name, then re-map the members they concern."""
        batch = list(self._queue)
        self._queue.clear()
        wanted: dict[tuple[str, str], WebhookEvent] = {}
        unnamed = False
        for event in batch:
            if event.entity not in RESOURCES:
                _LOGGER.debug("OfficeRnD event %s ignored", event.event_type)
            elif event.object_id is None:
                unnamed = True  # it says something changed, not what
            else:
                wanted[(event.entity, event.object_id)] = event
        try:
            affected = await self._refetch(list(wanted))
            if unnamed:
                affected |= await self._read_changes()
        except OfficeRnDError:
            self._requeue(batch)
            raise
        for event in batch:
            self._attempts.pop(event.event_id, None)
        try:
            await self._remap(affected)
        finally:
            # Taken either way: if the cache refused, what they changed stays pending.
            self.webhooks_processed += len(batch)

    def _requeue(self, batch: list[WebhookEvent]) -> None:
        """Keep failed events, in order, for the next attempt; give up on one after a few."""
        kept = []
        for event in batch:
            self._attempts[event.event_id] += 1
            if self._attempts[event.event_id] < MAX_EVENT_ATTEMPTS:
                kept.append(event)
            else:
                del self._attempts[event.event_id]
                self._full_wanted = True  # a full listing shows what it was about
                _LOGGER.warning(
                    "OfficeRnD event %s (%s) could not be processed %d times; a full sync follows",
                    event.event_id,
                    event.event_type,
                    MAX_EVENT_ATTEMPTS,
                )
        self._queue.extendleft(reversed(kept))

    async def _refetch(self, keys: list[tuple[str, str]]) -> Affected:
        gate = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def fetch(resource: str, key: str) -> Obj | None:
            async with gate:
                return await self._client.get(resource, key)

        found = await asyncio.gather(*(fetch(resource, key) for resource, key in keys))
        affected = NOBODY
        for (resource, key), obj in zip(keys, found, strict=True):
            if obj is None:
                affected |= self._listings.remove(resource, key)
            else:
                affected |= self._listings.upsert(resource, obj)
        self._pending |= affected  # the listings changed: remembered until applied
        return affected

    async def poll_once(self) -> int:
        """Read what changed since the last poll (``modifiedAt``) and apply it; objects read."""
        if self._poll_since is None:
            return 0
        reads = self._objects_read
        await self._remap(await self._read_changes())
        return self._objects_read - reads

    async def _read_changes(self) -> Affected:
        """Update the listings with what changed since the last poll; the members concerned."""
        if self._poll_since is None:
            return NOBODY
        started = self._clock()
        since = iso(self._poll_since - timedelta(seconds=POLL_OVERLAP_S))
        affected = NOBODY
        for resource in RESOURCES:
            if resource == "memberships" and not self._memberships_filter:
                changed, removed = await self._all_memberships()
            else:
                try:
                    changed = await self._list(resource, {"modifiedAt[$gte]": since})
                    removed = []
                except ApiError as err:
                    if resource != "memberships" or err.status != 400:
                        raise
                    self._log_once(
                        "membership-filter",
                        f"OfficeRnD refused modifiedAt on memberships ({err.message}); "
                        "polling reads every membership instead",
                    )
                    self._memberships_filter = False
                    changed, removed = await self._all_memberships()
            self._objects_read += len(changed)
            for obj in changed:
                affected |= self._listings.upsert(resource, obj)
            for key in removed:
                affected |= self._listings.remove(resource, key)
            self._pending |= affected  # remembered even if a later listing fails
        self._poll_since = started
        self.last_poll_at = started
        return affected

    async def _all_memberships(self) -> tuple[list[Obj], list[str]]:
        """Every membership: the changed ones, and the ids no longer listed."""
        now = await self._list("memberships")
        old = self._listings.objects["memberships"]
        fresh = {obj["_id"]: obj for obj in now if isinstance(obj.get("_id"), str)}
        changed = [obj for key, obj in fresh.items() if old.get(key) != obj]
        return changed, [key for key in old if key not in fresh]

    async def _remap(self, affected: Affected) -> None:
        """Map the members ``affected`` (and any a failed step left pending) and apply them."""
        affected = self._pending = self._pending | affected
        if affected.everyone or self._target is None:
            await self._remap_all()
            self._pending = NOBODY
            return
        if not affected.members:
            return
        await self._remap_members(affected)
        self._pending = NOBODY

    async def _remap_members(self, affected: Affected) -> None:
        assert self._target is not None
        remap = functools.partial(
            partial_target,
            self._target,
            self._listings,
            affected.members,
            today=self._today(),
            settings=self._settings,
            rules=self._options.rules,
            view=self._cache.view,
        )
        many = len(affected.members) > THREAD_ABOVE_MEMBERS
        found = await asyncio.to_thread(remap) if many else remap()
        if found is None:
            await self._remap_all()
            return
        target, scope = found
        await self._apply_target(target, scope=scope)

    # -- applying -------------------------------------------------------------------------------

    async def _apply_target(
        self, target: Target, *, scope: frozenset[str] | None
    ) -> tuple[Changes, Target]:
        """Bring the cache to ``target`` (for ``scope``'s users only, or for everyone)."""
        previous = self._target
        view = self._cache.view
        check_phones = (
            scope is None or previous is None or _phones_concerned(previous, target, scope)
        )
        plan = functools.partial(
            plan_changes,
            view,
            target,
            self._settings,
            scope=scope,
            previous=previous,
            policy_revoked=self._policy_revoked,
            check_phones=check_phones,
        )
        # A whole comparison scans the cache: off the loop, where decisions keep being made.
        changes = await asyncio.to_thread(plan) if scope is None else plan()
        if changes.problems:
            target = replace(target, problems=tuple(sorted({*target.problems, *changes.problems})))
        for problem in target.problems:
            self._log_once(problem, problem)
        if not changes.empty:
            if changes.revoked:  # remembered before they happen: a crash must not lose them
                await asyncio.to_thread(self._save_policy, self._policy_revoked | changes.revoked)
            await self._write(changes)
            self.changes_applied += changes.count
            self.last_change_at = self._clock()
            await self._events.record(
                new_event(
                    EventType.CACHE_UPDATED,
                    self._clock(),
                    {
                        "source": "officernd",
                        "changed": changes.count,
                        **{f"upserted_{k}": len(v) for k, v in changes.upserts.items()},
                        **{f"deleted_{k}": len(v) for k, v in changes.deletes.items()},
                    },
                )
            )
        self._target = target
        self._seen_version = self._cache.version
        if self.state == "error" and not self._link_failed:
            self.state, self.last_error = "ok", None  # a refusal, now resolved
        if changes.revoked or changes.restored:
            self._policy_revoked = (self._policy_revoked | changes.revoked) - changes.restored
            await asyncio.to_thread(self._save_policy, self._policy_revoked)
        self.applied.set()
        self.applied = asyncio.Event()
        return changes, target

    async def _write(self, changes: Changes) -> None:
        """Apply ``changes`` to the cache; if refused, at least every removal of access."""
        try:
            # Shielded: a stop() arriving mid-write must not leave the file and the view apart.
            await asyncio.shield(
                self._cache.apply_local(upserts=changes.upserts, deletes=changes.deletes)
            )
            return
        except FormatError as err:
            refusal = err
        # Not expected (plan_changes leaves out what the cache would refuse). Whatever is wrong,
        # members who lost access must lose it: their removals and revocations go through alone.
        removals = {
            k: v for k, v in changes.deletes.items() if k in ("users", "credentials", "rules")
        }
        view = self._cache.view
        narrower = tuple(
            u for u in changes.upserts.get("users", ()) if _less_access(view.users.get(u.id), u)
        )
        revoked = tuple(
            c for c in changes.upserts.get("credentials", ()) if c.id in changes.revoked
        )
        upserts: dict[str, tuple[Any, ...]] = {}
        if narrower:
            upserts["users"] = narrower
        if revoked:
            upserts["credentials"] = revoked
        with contextlib.suppress(FormatError):
            if removals or upserts:
                await asyncio.shield(self._cache.apply_local(upserts=upserts, deletes=removals))
        message = (
            f"the cache refused OfficeRnD's changes ({refusal}); what takes access away was "
            "applied, the rest is tried again"
        )
        self._log_once(f"refused {refusal}", message)
        self.state, self.last_error = "error", message
        self._refused = True
        raise RefusedByCache(message)

    # -- helpers --------------------------------------------------------------------------------

    def _today(self) -> date:
        return self._clock().astimezone(self._cache.view.tz).date()

    def _failed(self, what: str, err: Exception) -> None:
        self.state = "error"
        self.last_error = f"{what} failed: {err}"
        self._log_once(f"{what}:{type(err).__name__}", self.last_error + "; retrying")

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            if len(self._logged) >= MAX_LOGGED:
                self._logged.clear()  # bounded: a long-lived problem is then said once more
            self._logged.add(key)
            _LOGGER.warning("%s", message)

    def _load_policy(self) -> frozenset[str]:
        if self._policy_path is None or not self._policy_path.exists():
            return frozenset()
        try:
            ids = json.loads(self._policy_path.read_text(encoding="utf-8"))
            return frozenset(i for i in ids if isinstance(i, str))
        except (OSError, ValueError, TypeError) as err:
            # Lost: keys revoked for lack of Member App access stay revoked (the safe side)
            # until the member registers their phone again.
            _LOGGER.warning("cannot read %s (%s); starting afresh", self._policy_path, err)
            return frozenset()

    def _save_policy(self, revoked: frozenset[str]) -> None:
        if self._policy_path is not None:
            self._policy_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(self._policy_path, json.dumps(sorted(revoked)))

    def status(self) -> dict[str, Any]:
        """What the web app and ``officernd status`` show."""
        target = self._target
        problems = target.problems if target is not None else ()
        return {
            "state": self.state,
            "last_error": self.last_error,
            "last_full_sync_at": _iso_or_none(self.last_full_sync_at),
            "last_full_sync": self.last_full_sync.to_json() if self.last_full_sync else None,
            "last_change_at": _iso_or_none(self.last_change_at),
            "last_poll_at": _iso_or_none(self.last_poll_at),
            "poll_interval_s": self._options.poll_interval_s,
            "memberships_polled_by": "modifiedAt" if self._memberships_filter else "full listing",
            "users": len(target.users) if target else 0,
            "plan_tags": len(target.tags) if target else 0,
            "cards": target.card_count if target else 0,
            "rules": sorted(target.rules) if target else [],
            "webhook_events_processed": self.webhooks_processed,
            "webhook_events_queued": len(self._queue),
            "changes_applied": self.changes_applied,
            "requests": self._client.requests_made,
            "problem_count": len(problems),
            "problems": list(problems[:STATUS_PROBLEMS]),
        }

    def phone_allowed(self, user_id: str) -> bool | None:
        """Whether a synced member may use a phone key; None for users OfficeRnD does not own."""
        if not user_id.startswith(self._settings.user_id_prefix):
            return None
        target = self._target
        return target is not None and user_id in target.phone_allowed


def _phones_concerned(previous: Target, target: Target, scope: frozenset[str]) -> bool:
    """Whether anyone in ``scope`` gained or lost Member App access, or is new."""
    return any(
        (user in previous.phone_allowed) != (user in target.phone_allowed)
        or (user in previous.users) != (user in target.users)
        for user in scope
    )


def partial_target(
    target: Target,
    listings: Listings,
    member_ids: frozenset[str],
    *,
    today: date,
    settings: MappingSettings,
    rules: Mapping[str, RuleSpec],
    view: CacheView,
) -> tuple[Target, frozenset[str]] | None:
    """``target`` with only ``member_ids`` (OfficeRnD ids) mapped again, and their user ids;
    None when only mapping everyone gives the right answer (cards changing hands)."""
    members, memberships, companies = listings.scope(member_ids)
    plans = list(listings.objects["plans"].values())
    part = map_entities(members, companies, memberships, plans, today=today, settings=settings)
    scope = frozenset(settings.user_id_prefix + key for key in member_ids)
    before = target.cards_of(scope).values()
    if _cards_of(part.credentials, scope) != _cards_of(before, scope) or scope & (
        target.contested | part.contested
    ):
        # Cards changed hands, or one of these members lists a card someone else lists too:
        # whose card it is (or nobody's) takes every member's cards to know.
        return None
    return merge_target(target, part, scope, rules, view), scope


def _less_access(before: User | None, after: User) -> bool:
    """Whether ``after`` can open no more than ``before`` (a lower status, or fewer tags)."""
    if before is None:
        return False
    if after.status is not UserStatus.ACTIVE and before.status is UserStatus.ACTIVE:
        return True
    return after.status == before.status and set(after.tags) < set(before.tags)


def _cards_of(cards: Iterable[Credential], scope: frozenset[str]) -> set[tuple[str, str, str]]:
    """The (user, kind, value) of the cards of ``scope``'s users."""
    return {(c.user_id, c.kind.value, c.value) for c in cards if c.user_id in scope}


def _iso_or_none(moment: datetime | None) -> str | None:
    return iso(moment) if moment is not None else None
