"""The OfficeRnD integration inside the daemon: activation on disk → client → sync and webhooks.

Not activated, it holds nothing from OfficeRnD in the cache (a deactivation made while the
daemon was stopped is carried out at its next start). Activated, it runs the sync, registers
its webhook when ``[officernd] webhook_url`` is set, serves the webhook endpoint and answers
the status page; ``reload`` picks up an activation or deactivation made by the CLI or web app.
A damaged activation is reported and nothing is removed (the cache keeps what it had).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from gateway.backoff import Backoff
from gateway.cache import Cache
from gateway.config import OfficeRnDSection
from gateway.events import EventLog
from gateway.model import RuleType
from gateway.officernd.activation import (
    Activation,
    ActivationError,
    load_activation,
    save_webhook,
    scopes_for,
)
from gateway.officernd.client import BadCredentials, MissingScope, OfficeRnDClient, OfficeRnDError
from gateway.officernd.receiver import PATH, WebhookReceiver
from gateway.officernd.reconcile import RuleSpec, Target, plan_changes
from gateway.officernd.sync import OfficeRnDSync, SyncOptions, SyncSummary
from gateway.officernd.webhooks import WebhookEvent

_LOGGER = logging.getLogger(__name__)

#: What the registered webhook subscribes to (OFFICERND.md, "Webhooks").
EVENT_TYPES = (
    "member.created",
    "member.updated",
    "member.removed",
    "membership.created",
    "membership.updated",
    "membership.removed",
    "company.created",
    "company.updated",
    "company.removed",
)


#: Registering the webhook again after a failure: from seconds up to ten minutes apart.
WEBHOOK_RETRY_BASE_S = 5.0
WEBHOOK_RETRY_CAP_S = 600.0


def sync_options(section: OfficeRnDSection) -> SyncOptions:
    """The sync's options from the ``[officernd]`` config section."""
    return SyncOptions(
        mapping=section.mapping_settings(),
        rules={
            name: RuleSpec(tuple(rule.plans), tuple(rule.doors), rule.schedule, RuleType(rule.type))
            for name, rule in section.rules.items()
        },
        poll_interval_s=float(section.poll_interval_s),
        reconcile_interval_s=float(section.reconcile_interval_s),
    )


class OfficeRnDService:
    """Starts, reloads and stops the integration; ``sync`` and ``client`` while activated."""

    def __init__(
        self,
        section: OfficeRnDSection,
        cache: Cache,
        events: EventLog,
        state_dir: Path,
        clock: Callable[[], datetime],
    ) -> None:
        self._section = section
        self._cache = cache
        self._events = events
        self._state_dir = state_dir
        self._clock = clock
        self._options = sync_options(section)
        self._session: aiohttp.ClientSession | None = None
        self.activation: Activation | None = None
        self.client: OfficeRnDClient | None = None
        self.sync: OfficeRnDSync | None = None
        self.problem: str | None = None  # what needs an operator: activation, webhook
        self._webhook_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.receiver = WebhookReceiver(self._webhook_secret, self._submit)

    @property
    def webhook_path(self) -> str:
        """Where the web server serves the receiver."""
        return PATH

    async def start(self) -> None:
        """Load the activation and, if there is one, start syncing (never raises for OfficeRnD)."""
        async with self._lock:
            self._session = aiohttp.ClientSession()
            await self._load()

    async def stop(self) -> None:
        """Stop syncing and close connections; the cache keeps what was synced."""
        async with self._lock:
            await self._stop_sync()
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def reload(self) -> int:
        """Take up the activation now on disk (made, replaced or removed since).

        Returns how many entities were removed because OfficeRnD is no longer activated.
        """
        # One at a time: two overlapping reloads would each start a sync, and one would be
        # left running with nothing to stop it.
        async with self._lock:
            await self._stop_sync()
            return await self._load()

    async def sync_now(self) -> SyncSummary:
        """A full sync at once (OfficeRnDError if it fails; RuntimeError if not activated)."""
        if self.sync is None:
            raise RuntimeError(self.problem or "OfficeRnD is not activated on this gateway")
        return await self.sync.request_full_sync()

    def phone_allowed(self, user_id: str) -> bool | None:
        """Whether a member may use a phone key; None for users OfficeRnD does not own."""
        if not user_id.startswith(self._options.mapping.user_id_prefix):
            return None
        return self.sync is not None and self.sync.phone_allowed(user_id) is True

    def status(self) -> dict[str, Any]:
        """The status page: activation, sync state, webhook counts, problems."""
        activation = self.activation
        out: dict[str, Any] = {
            "activated": activation is not None,
            "problem": self.problem,
            "webhook": {
                "url": self._section.webhook_url or None,
                "registered": activation is not None and activation.webhook_id is not None,
                **self.receiver.status(),
            },
        }
        if activation is not None:
            out |= {
                "org": activation.org,
                "client_id": activation.client_id,
                "api_base": activation.api_base,
                "activated_at": activation.activated_at.isoformat(),
            }
        if self.sync is not None:
            out["sync"] = self.sync.status()
        return out

    # -- internals ------------------------------------------------------------------------------

    async def _load(self) -> int:
        assert self._session is not None, "start() first"
        self.problem = None
        try:
            activation = load_activation(self._state_dir)
        except ActivationError as err:
            self.activation = None
            self.problem = str(err)
            _LOGGER.error("OfficeRnD is not running: %s", err)
            return 0
        self.activation = activation
        if activation is None:
            removed = await remove_officernd_entities(self._cache, self._options)
            if removed:
                _LOGGER.info("OfficeRnD is not activated: removed %d entities it had made", removed)
            return removed
        self.client = OfficeRnDClient(activation.settings(scopes_for(self._section)), self._session)
        self.sync = OfficeRnDSync(
            self.client,
            self._cache,
            self._events,
            self._options,
            state_dir=self._state_dir / "officernd",
            clock=self._clock,
        )
        self.sync.start()
        if self._section.webhook_url:
            # In the background: an OfficeRnD outage must not hold up the gateway's start.
            self._webhook_task = asyncio.create_task(
                self._ensure_webhook(self.client, activation), name="officernd-webhook"
            )
        return 0

    async def _ensure_webhook(self, client: OfficeRnDClient, activation: Activation) -> None:
        """Have OfficeRnD post to ``webhook_url``: keep the registered webhook if it still
        does, otherwise register one and keep its secret (0600); retried until done."""
        url = self._section.webhook_url
        backoff = Backoff(WEBHOOK_RETRY_BASE_S, WEBHOOK_RETRY_CAP_S)
        while True:
            try:
                if activation.webhook_id is not None:
                    hook = await client.get("webhooks", activation.webhook_id)
                    if hook is not None and hook.get("url") == url:
                        return
                    _LOGGER.info(
                        "OfficeRnD webhook %s %s; registering %s",
                        activation.webhook_id,
                        "was deleted" if hook is None else "posts elsewhere",
                        url,
                    )
                hook_id, secret = await client.create_webhook(url, EVENT_TYPES, "Luckey gateway")
                # Written off the loop: atomic writes fsync.
                saved = await asyncio.to_thread(save_webhook, self._state_dir, hook_id, secret)
                self.activation = activation = saved
                self.problem = None
                return
            except (MissingScope, BadCredentials) as err:
                self.problem = f"the webhook cannot be registered ({err}); polling covers it"
                _LOGGER.warning("OfficeRnD: %s", self.problem)
                return  # a person must act: retrying would only spend the rate budget
            except (OfficeRnDError, OSError) as err:
                self.problem = f"the webhook is not registered yet ({err}); polling covers it"
                _LOGGER.warning("OfficeRnD: %s; retrying", self.problem)
            await asyncio.sleep(backoff.next_delay())

    async def _stop_sync(self) -> None:
        task, self._webhook_task = self._webhook_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.sync is not None:
            await self.sync.stop()
        self.sync = None
        self.client = None

    def _webhook_secret(self) -> str | None:
        activation = self.activation
        return activation.webhook_secret if activation is not None else None

    def _submit(self, event: WebhookEvent) -> None:
        if self.sync is not None:
            self.sync.submit(event)


async def remove_officernd_entities(cache: Cache, options: SyncOptions) -> int:
    """Delete every user, plan tag, card and plan rule OfficeRnD made; how many went."""
    # A scan of the whole cache: off the loop, where decisions keep being made.
    changes = await asyncio.to_thread(plan_changes, cache.view, Target.empty(), options.mapping)
    if not changes.empty:
        await cache.apply_local(upserts=changes.upserts, deletes=changes.deletes)
    return changes.count
