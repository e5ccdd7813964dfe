"""Prometheus metrics for ``GET /metrics``: decisions, their latency, the outbox, the links.

Counters follow the event log (every decision, cloud link change and board going offline is an
event already), so nothing else needs to know about metrics; the decision latency comes from
the entry service, and gauges are read when Prometheus scrapes. One registry per gateway (not
the library's global one), so several gateways in one process keep their own figures.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from gateway.events import LoggedEvent
from gateway.model import EventType

if TYPE_CHECKING:
    from gateway.app import Gateway

#: Decision latency buckets, in seconds: a decision takes tens of microseconds.
LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.05,
)


class Metrics:
    """The gateway's metrics; ``on_event`` and ``observe_decision`` feed them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.decisions = Counter(
            "luckey_decisions",
            "Access decisions by result, reason and credential kind.",
            ("result", "reason", "kind"),
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "luckey_decision_seconds",
            "Time from a presentation's arrival to its decision (proof checked, rules applied).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.events = Counter(
            "luckey_events", "Events recorded, by type.", ("type",), registry=registry
        )
        self.link_changes = Counter(
            "luckey_cloud_link_changes",
            "Cloud link transitions (a reconnect is a down then an up).",
            ("state",),
            registry=registry,
        )
        self.outbox_rows = Gauge(
            "luckey_outbox_events", "Events waiting in the outbox.", registry=registry
        )
        self.outbox_dropped = Gauge(
            "luckey_outbox_dropped_events",
            "Events retention dropped since the outbox was created, by priority.",
            ("priority",),
            registry=registry,
        )
        self.cache_version = Gauge(
            "luckey_cache_version", "Site data version in the cache.", registry=registry
        )
        self.cache_entities = Gauge(
            "luckey_cache_entities", "Entities in the cache.", ("collection",), registry=registry
        )
        self.offline_seconds = Gauge(
            "luckey_cloud_offline_seconds",
            "How long the cloud link has been down (0: up, or no cloud).",
            registry=registry,
        )
        self.board_online = Gauge(
            "luckey_board_online",
            "Whether each door board answers (1) or not (0).",
            ("address",),
            registry=registry,
        )
        self.boards: dict[int, dict[str, Any]] = {}  # by address: the last word on each board
        self.officernd_sync_age = Gauge(
            "luckey_officernd_sync_age_seconds",
            "Seconds since OfficeRnD's last successful full sync (absent: not activated).",
            registry=registry,
        )

    def on_event(self, logged: LoggedEvent) -> None:
        """Count a recorded event (an EventLog listener)."""
        event = logged.event
        self.events.labels(event.type.value).inc()
        if event.type in (EventType.ACCESS_GRANTED, EventType.ACCESS_DENIED):
            result = "granted" if event.type is EventType.ACCESS_GRANTED else "denied"
            reason = str(event.data.get("reason", "unknown"))
            kind = str(event.data.get("kind") or "unknown")
            self.decisions.labels(result, reason, kind).inc()
        elif event.type is EventType.CLOUD_LINK:
            self.link_changes.labels(str(event.data.get("state", "unknown"))).inc()
        elif event.type in (EventType.BOARD_ONLINE, EventType.BOARD_OFFLINE):
            address = event.data.get("address")
            if isinstance(address, int):
                online = event.type is EventType.BOARD_ONLINE
                self.boards[address] = {**event.data, "online": online, "since": event.at}
                self.board_online.labels(str(address)).set(1 if online else 0)

    def observe_decision(self, seconds: float) -> None:
        """Record how long one decision took."""
        self.decision_seconds.observe(seconds)

    async def render(self, gw: Gateway, now: datetime, accept: str) -> tuple[bytes, str]:
        """The exposition in the format the scraper accepts, and its content type."""
        stats = await gw.outbox.stats()
        self.outbox_rows.set(stats.rows)
        for priority, count in stats.dropped.items():
            self.outbox_dropped.labels(priority.name.lower()).set(count)
        self.cache_version.set(gw.cache.version)
        for collection, count in gw.cache.view.counts().items():
            self.cache_entities.labels(collection).set(count)
        offline = gw.cloud.offline_for(now) if gw.cloud is not None else None
        self.offline_seconds.set(offline.total_seconds() if offline is not None else 0.0)
        sync = gw.officernd.sync
        synced_at = sync.last_full_sync_at if sync is not None else None
        if synced_at is None:
            self.officernd_sync_age.set(float("nan"))
        else:
            self.officernd_sync_age.set((now - synced_at).total_seconds())
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
