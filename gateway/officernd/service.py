"""The OfficeRnD integration inside the daemon: activation on disk → client → sync and webhooks.

Not activated, it holds nothing from OfficeRnD in the cache (a deactivation made while the
daemon was stopped is carried out at its next start). Activated, it runs the sync, registers
its webhook when ``[officernd] webhook_url`` is set, serves the webhook endpoint and answers
the status page; ``reload`` picks up an activation or deactivation made by the CLI or web app.
A damaged activation is reported and nothing is removed (the cache keeps what it had).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from gateway.cache import Cache
from gateway.config import OfficeRnDSection
from gateway.events import EventLog
from gateway.officernd.activation import (
    Activation,
    ActivationError,
    load_activation,
    save_webhook,
    scopes_for,
)
from gateway.officernd.client import OfficeRnDClient, OfficeRnDError
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


def sync_options(section: OfficeRnDSection) -> SyncOptions:
    """The sync's options from the ``[officernd]`` config section."""
    return SyncOptions(
        mapping=section.mapping_settings(),
        rules={
            name: RuleSpec(tuple(rule.plans), tuple(rule.doors), rule.schedule)
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
        self.problem: str | None = None  # why it is not running, when activation is unusable
        self.receiver = WebhookReceiver(self._webhook_secret, self._submit)

    @property
    def webhook_path(self) -> str:
        """Where the web server serves the receiver."""
        return PATH

    async def start(self) -> None:
        """Load the activation and, if there is one, start syncing (never raises for OfficeRnD)."""
        self._session = aiohttp.ClientSession()
        await self._load()

    async def stop(self) -> None:
        """Stop syncing and close connections; the cache keeps what was synced."""
        await self._stop_sync()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def reload(self) -> int:
        """Take up the activation now on disk (made, replaced or removed since).

        Returns how many entities were removed because OfficeRnD is no longer activated.
        """
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
        if self._section.webhook_url and activation.webhook_id is None:
            await self._register_webhook(activation)
        return 0

    async def _register_webhook(self, activation: Activation) -> None:
        """Register the configured webhook URL with OfficeRnD and keep its secret (0600)."""
        assert self.client is not None
        try:
            hook_id, secret = await self.client.create_webhook(
                self._section.webhook_url, EVENT_TYPES, "Luckey gateway"
            )
        except OfficeRnDError as err:
            self.problem = f"the webhook could not be registered ({err}); polling covers it"
            _LOGGER.warning("OfficeRnD: %s", self.problem)
            return
        self.activation = save_webhook(self._state_dir, hook_id, secret)

    async def _stop_sync(self) -> None:
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
