"""The cloud link (docs/cloud-contract.md): deltas and commands down, events and status up.

One ``MqttLink`` carries everything over MQTT; snapshots come over HTTPS (``SnapshotPuller``).
Messages from the cloud are handled one at a time in arrival order (a delta is never applied
before the one the broker delivered ahead of it), each signature checked before any parsing, and
acknowledged to the broker only once dealt with: applied, carried out, or refused with an event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway import codec
from gateway.backoff import Backoff
from gateway.cache import ApplyResult, Cache
from gateway.cloud_messages import (
    ALL_DOORS,
    Command,
    CommandKind,
    CommandStatus,
    LinkState,
    MessageError,
    RejectedWhat,
    UnlockMode,
    cloud_rejected_event,
    command_result_event,
    parse_command,
    status_payload,
    topics,
)
from gateway.config import CloudSection
from gateway.doors import DoorController
from gateway.events import EventLog, new_event
from gateway.files import write_atomically
from gateway.model import DoorMode, EventType
from gateway.mqtt_link import Incoming, MqttLink, MqttSettings
from gateway.outbox import Outbox
from gateway.signing import (
    SignatureError,
    load_public_key,
    signature_from_user_properties,
    verify_signature,
)
from gateway.snapshots import SnapshotPuller
from gateway.uplink import EventUplink

_LOGGER = logging.getLogger(__name__)

#: Snapshot pulls are spread by this share of the interval, both ways.
SNAPSHOT_JITTER = 0.1
#: Messages from the cloud waiting to be handled; the broker holds the rest (QoS 1, no PUBACK).
INBOX_SIZE = 256
#: A command issued further in the future than this (by the gateway's clock) is refused: a clock
#: set back (no RTC after a power cut) must not revive old commands already forgotten.
ISSUED_AT_SKEW = timedelta(minutes=5)
#: At most one cloud.rejected event per kind of message this often (seconds); the next one says
#: how many were refused in between.
REJECTION_INTERVAL_S = 60.0
#: While connected, "last in touch with the cloud" is saved this often (seconds): the offline age
#: after a power cut is at most this much too short.
IN_TOUCH_SAVE_S = 60.0


def tls_context(cloud: CloudSection) -> ssl.SSLContext:
    """Mutual TLS: the provisioned CA for the servers, this gateway's certificate for itself."""
    context = ssl.create_default_context(cafile=str(cloud.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cloud.cert_file), str(cloud.key_file))
    return context


class DoneCommands:
    """Ids of the commands already carried out (until they expire), saved before the PUBACK."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._done: dict[str, datetime] = {}

    def load(self) -> None:
        """Read the file (a missing or unreadable one is empty: an expired command never runs)."""
        try:
            raw = json.loads(self._path.read_text(encoding="utf-8"))
            self._done = {str(k): datetime.fromisoformat(v) for k, v in raw.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            self._done = {}

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._done

    async def add(self, command: Command, now: datetime) -> None:
        """Remember ``command`` durably; forget the expired ones."""
        self._done = {k: v for k, v in self._done.items() if v > now}
        self._done[command.id] = command.expires_at
        text = json.dumps({k: v.isoformat() for k, v in sorted(self._done.items())})
        await asyncio.to_thread(write_atomically, self._path, text)


class LinkMemory:
    """When the gateway was last in touch with its cloud, kept across restarts (the offline
    policy counts an outage from there: a power cycle must not reset it)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> datetime | None:
        """The last time in touch (None: never, or unreadable)."""
        try:
            at = datetime.fromisoformat(json.loads(self._path.read_text("utf-8"))["in_touch_at"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return at if at.tzinfo is not None else None

    async def save(self, at: datetime) -> None:
        """Remember ``at`` durably."""
        text = json.dumps({"in_touch_at": at.isoformat()})
        await asyncio.to_thread(write_atomically, self._path, text)


class CloudService:
    """The gateway's side of the cloud contract, started and stopped with the gateway."""

    def __init__(
        self,
        cloud: CloudSection,
        *,
        cache: Cache,
        events: EventLog,
        outbox: Outbox,
        doors: DoorController,
        state_dir: Path,
        clock: Callable[[], datetime],
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self._cloud = cloud
        self._cache = cache
        self._events = events
        self._outbox = outbox
        self._doors = doors
        self._clock = clock
        self._topics = topics(cloud.gateway_id)
        self._public_key = load_public_key(cloud.signing_key_file)
        context = tls_context(cloud)
        self._memory = LinkMemory(state_dir / "cloud_link.json")
        # Until the first connection: offline since the last time in touch (or since now).
        self._offline_since: datetime | None = self._memory.load() or clock()
        self.link = MqttLink(
            MqttSettings(
                host=cloud.mqtt_host,
                port=cloud.mqtt_port,
                client_id=cloud.gateway_id,
                ca_file=cloud.ca_file,
                cert_file=cloud.cert_file,
                key_file=cloud.key_file,
                keepalive_s=cloud.keepalive_s,
                session_expiry_s=cloud.session_expiry_s,
                will_topic=self._topics.status,
                # The broker sends it when the gateway vanishes: the backlog is not known then.
                will_payload=self._status(LinkState.OFFLINE, pending=-1, since=None),
            ),
            backoff=backoff,
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
        )
        self.uplink = EventUplink(
            outbox,
            self.link,
            events,
            gateway_id=cloud.gateway_id,
            topic=self._topics.events,
            clock=clock,
            backoff=backoff,
        )
        self.snapshots = SnapshotPuller(
            cache,
            events,
            url=f"{cloud.api_url.rstrip('/')}/v1/gateways/{cloud.gateway_id}/snapshot",
            ssl_context=context,
            public_key=self._public_key,
            spool_dir=state_dir,
            clock=clock,
        )
        self._done = DoneCommands(state_dir / "commands_done.json")
        self._inbox: asyncio.Queue[Incoming] = asyncio.Queue(INBOX_SIZE)
        self._workers: list[asyncio.Task[None]] = []  # run until stop
        self._spawned: set[asyncio.Task[Any]] = set()  # short jobs, finished at stop
        self._rejections: dict[str, tuple[float | None, int]] = {}
        self._rng = random.Random()  # noqa: S311 - spreads pulls in time, guards no secret

    @property
    def offline_since(self) -> datetime | None:
        """Since when the gateway has had no cloud link (None while connected)."""
        return self._offline_since

    def offline_for(self, now: datetime) -> timedelta | None:
        """How long the link has been down at ``now`` (None while connected)."""
        since = self._offline_since
        return None if since is None else max(now - since, timedelta(0))

    async def start(self) -> None:
        """Connect (in the background), start the uplink and the snapshot schedule."""
        self._done.load()
        await self.link.start()
        await self.uplink.start()
        self._workers = [
            asyncio.create_task(self._handle_inbox(), name="cloud-inbox"),
            asyncio.create_task(self._pull_on_schedule(), name="snapshot-schedule"),
            asyncio.create_task(self._remember_touch(), name="cloud-in-touch"),
        ]

    async def stop(self) -> None:
        """Say "offline" while still connected (a clean disconnect drops the will), then stop."""
        for task in self._workers:
            task.cancel()
        if self._workers:
            await asyncio.wait(self._workers)
        # Short jobs (events to record, a pull after a gap) finish; they are bounded.
        if self._spawned:
            await asyncio.wait(list(self._spawned), timeout=5.0)
        await self.uplink.stop()
        if self.link.connected:
            try:
                await asyncio.wait_for(self._publish_status(LinkState.OFFLINE), 2.0)
            except (TimeoutError, Exception) as err:  # stopping must not hang on the network
                _LOGGER.debug("no offline status on stop: %s", err)
        await self.link.stop()

    async def sync(self, reason: str) -> None:
        """Pull a snapshot now."""
        await self.snapshots.pull(reason)

    # -- the link -----------------------------------------------------------------------------

    def _on_connected(self, session_present: bool) -> None:
        self.link.subscribe(self._topics.delta, qos=1)
        self.link.subscribe(self._topics.cmd, qos=1)
        now = self._clock()
        offline = self.offline_for(now)
        self._offline_since = None
        self._spawn(self._publish_status(LinkState.ONLINE))
        self._spawn(self._memory.save(now))
        data = {"state": "online", "offline_s": round(offline.total_seconds(), 3) if offline else 0}
        self._spawn(self._events.record(new_event(EventType.CLOUD_LINK, now, data)))

    def _on_disconnected(self, why: str) -> None:
        now = self._clock()
        self._offline_since = now
        _LOGGER.warning("cloud link lost: %s", why)
        self._spawn(self._memory.save(now))
        data = {"state": "offline", "reason": why}
        self._spawn(self._events.record(new_event(EventType.CLOUD_LINK, now, data)))

    async def _remember_touch(self) -> None:
        while True:
            await asyncio.sleep(IN_TOUCH_SAVE_S)
            if self._offline_since is None:
                try:
                    await self._memory.save(self._clock())
                except OSError as err:  # a full disk: said, and tried again next time
                    _LOGGER.warning("cannot save the last time in touch: %s", err)

    def _status(self, state: LinkState, *, pending: int, since: datetime | None) -> bytes:
        return status_payload(
            gateway_id=self._cloud.gateway_id,
            state=state,
            at=self._clock(),
            cache_version=self._cache.version,
            offline_since=since,
            outbox_pending=pending,
        )

    async def _publish_status(self, state: LinkState) -> None:
        stats = await self._outbox.stats()
        payload = self._status(state, pending=stats.rows, since=self._offline_since)
        await self.link.publish(self._topics.status, payload, qos=1, retain=True)

    def _on_message(self, message: Incoming) -> None:
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            # Not acknowledged: the broker keeps it and sends it again after a reconnect.
            _LOGGER.warning("cloud inbox full; %s left with the broker", message.topic)

    async def _handle_inbox(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                if message.topic == self._topics.delta:
                    await self._handle_delta(message)
                elif message.topic == self._topics.cmd:
                    await self._handle_command(message)
                else:
                    _LOGGER.warning("message on unexpected topic %s ignored", message.topic)
            except Exception:  # one message must not stop the next: logged, acknowledged
                _LOGGER.exception("cloud message on %s failed", message.topic)
            self.link.ack(message)

    # -- deltas -------------------------------------------------------------------------------

    async def _handle_delta(self, message: Incoming) -> None:
        try:
            verify_signature(self._public_key, message.payload, self._signature(message))
            delta = codec.delta_from_json(json.loads(message.payload))
        except SignatureError as err:
            await self._reject(RejectedWhat.DELTA, f"signature: {err}")
            return
        except (ValueError, UnicodeDecodeError, RecursionError) as err:  # FormatError, bad JSON
            await self._reject(RejectedWhat.DELTA, f"malformed: {err or type(err).__name__}")
            return
        held = self._cache.view.site.id
        if self._cache.version > 0 and delta.site_id != held:
            # Signed for another site (or not saying): a replay from another gateway's topic.
            await self._reject(RejectedWhat.DELTA, f"site: for {delta.site_id!r}, not {held!r}")
            return
        try:
            outcome = await self._cache.apply_delta(delta)
        except ValueError as err:  # refused by validation against the data held
            await self._reject(RejectedWhat.DELTA, f"refused: {err}", version=delta.version)
            return
        if outcome is ApplyResult.GAP:
            _LOGGER.info(
                "delta %d does not follow %d: pulling a snapshot",
                delta.version,
                self._cache.version,
            )
            self._spawn(self.snapshots.pull("gap"))
        elif outcome is ApplyResult.APPLIED:
            await self._events.record(
                new_event(
                    EventType.CACHE_UPDATED,
                    self._clock(),
                    {"source": "delta", "version": delta.version},
                )
            )

    # -- commands -----------------------------------------------------------------------------

    async def _handle_command(self, message: Incoming) -> None:
        try:
            verify_signature(self._public_key, message.payload, self._signature(message))
            command = parse_command(message.payload)
        except SignatureError as err:
            await self._reject(RejectedWhat.COMMAND, f"signature: {err}")
            return
        except MessageError as err:
            await self._reject(RejectedWhat.COMMAND, f"malformed: {err}")
            return
        if command.gateway != self._cloud.gateway_id:  # signed for another gateway: a replay
            await self._reject(
                RejectedWhat.COMMAND, f"for gateway {command.gateway!r}", command=command.id
            )
            return
        if command.id in self._done:
            _LOGGER.info("command %s was already carried out; acknowledged again", command.id)
            return
        now = self._clock()
        if command.expired(now):
            status, detail = CommandStatus.EXPIRED, f"expired at {command.expires_at.isoformat()}"
        elif command.issued_at > now + ISSUED_AT_SKEW:
            status = CommandStatus.REFUSED
            detail = f"issued at {command.issued_at.isoformat()}, ahead of this gateway's clock"
        else:
            try:
                status, detail = await self._carry_out(command)
            except Exception as err:  # the contract promises a result for every command
                _LOGGER.exception("command %s failed", command.id)
                status, detail = CommandStatus.FAILED, f"{type(err).__name__}: {err}"
        await self._events.record(command_result_event(command, status, detail, self._clock()))
        await self._done.add(command, now)

    async def _carry_out(self, command: Command) -> tuple[CommandStatus, str]:
        """Run a command; (status, detail) for its result event."""
        if command.kind is CommandKind.SYNC:
            # Not awaited: a long pull must not hold the deltas and commands queued behind it.
            self._spawn(self.snapshots.pull("command"))
            return CommandStatus.DONE, "snapshot pull started"
        doors = self._cache.view.doors
        door = command.door or ""
        if door != ALL_DOORS and door not in doors:
            return CommandStatus.REFUSED, f"no door {door!r} on this site"
        source = f"command {command.id}"
        if command.kind is CommandKind.UNLOCK:
            if self._doors.mode(door) is DoorMode.LOCKDOWN:  # lifted only by set_mode normal
                return CommandStatus.REFUSED, f"door {door!r} is in lockdown"
            if command.mode is UnlockMode.HELD:
                ok = await self._doors.set_mode(door, DoorMode.UNLOCKED, source=source)
            else:
                ok = await self._doors.unlock(door, command.seconds, source=source)
        else:
            assert isinstance(command.mode, DoorMode)
            targets = list(doors) if door == ALL_DOORS else [door]
            results = [await self._doors.set_mode(t, command.mode, source=source) for t in targets]
            ok = all(results)
        if not ok:
            return CommandStatus.FAILED, "a relay did not confirm it; see door.relay_failed"
        return CommandStatus.DONE, ""

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _signature(message: Incoming) -> str | None:
        """The message's one signature (SignatureError if it carries several)."""
        return signature_from_user_properties(message.user_properties)

    async def _reject(self, what: RejectedWhat, reason: str, **data: Any) -> None:
        """One ``cloud.rejected`` per kind of message per interval: a flood of junk from a broken
        or hostile peer must not push real events out of a full outbox."""
        now = asyncio.get_running_loop().time()
        last, suppressed = self._rejections.get(what, (None, 0))
        if last is not None and now - last < REJECTION_INTERVAL_S:
            self._rejections[what] = (last, suppressed + 1)
            _LOGGER.debug("cloud %s refused again: %s", what, reason)
            return
        self._rejections[what] = (now, 0)
        _LOGGER.error("cloud %s refused: %s", what, reason)
        if suppressed:
            data["refused_since_last"] = suppressed
        await self._events.record(cloud_rejected_event(what, reason, self._clock(), data))

    async def _pull_on_schedule(self) -> None:
        interval = self._cloud.snapshot_interval_s
        await self.snapshots.pull("start")  # never raises: a failed pull is FAILED
        while True:
            spread = interval * SNAPSHOT_JITTER
            await asyncio.sleep(interval + self._rng.uniform(-spread, spread))
            await self.snapshots.pull("schedule")

    def _spawn(self, coro: Any) -> None:
        """Run a short job as a task; stop() waits (bounded) for it to finish."""
        task = asyncio.create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
