"""The composition root: builds every component from the config and runs them together."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

from drivers.base import ReaderBank, RelayBank
from gateway import codec
from gateway.admin import AdminAccounts
from gateway.backoff import Backoff
from gateway.cache import ApplyResult, Cache
from gateway.challenges import ChallengeBook
from gateway.config import Config
from gateway.door_modes import DoorModeStore
from gateway.doors import DoorController
from gateway.enrolment import Enrolment
from gateway.entry import EntryService
from gateway.events import EventLog, new_event
from gateway.hardware import Hardware, build_hardware
from gateway.invitations import InvitationService
from gateway.journal import Journal
from gateway.keypad import KeypadGuard
from gateway.local_settings import restore_previous
from gateway.metrics import Metrics
from gateway.model import EventType
from gateway.officernd.service import OfficeRnDService
from gateway.outbox import Outbox
from gateway.readers import ReaderSet
from gateway.sd_notify import Notifier
from gateway.simulator import DEFAULT_PROXIMITY, Simulator
from gateway.verifiers import SUN_COUNTERS_FILE, build_verifiers, load_secrets
from gateway.web import WebServer, make_app, make_public_app

if TYPE_CHECKING:
    from gateway.cloud import CloudService
    from gateway.nfc_cards import CardReading, Transceive
    from gateway.tls import CertificateFiles

_LOGGER = logging.getLogger(__name__)


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def demo_snapshot() -> codec.Snapshot:
    """The small demo site shipped with the gateway (used when the cache is empty)."""
    text = resources.files("gateway").joinpath("data/demo-site.json").read_text(encoding="utf-8")
    return codec.snapshot_from_json(json.loads(text))


class Gateway:
    """One running gateway: cache, outbox, doors, readers and web app, started and stopped together."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], datetime] = utc_now,
        cloud_backoff: Callable[[], Backoff] = Backoff,
        admin: AdminAccounts | None = None,
    ) -> None:
        """``cloud_backoff`` makes the cloud link's reconnect policy (tests and benchmarks
        shorten it); ``admin``: the admin accounts and sessions of the gateway this one
        replaces (an in-process restart keeps the installer logged in)."""
        self.config = config
        self.clock = clock
        self._cloud_backoff = cloud_backoff
        state_dir = config.gateway.state_dir
        self.outbox = Outbox(
            state_dir / "outbox.db",
            max_rows=config.events.max_rows,
            batch_max=config.events.batch_max,
        )
        self.events = EventLog(self.outbox)
        self.metrics = Metrics()
        self.events.add_listener(self.metrics.on_event)
        # The local history (CSV exports): fed after each outbox commit, never waited for.
        self.journal = Journal(
            state_dir / "journal.db",
            retention_days=config.journal.retention_days,
            max_rows=config.journal.max_rows,
            clock=clock,
        )
        self.events.add_listener(self.journal.on_event)
        self.cache = Cache(state_dir / "cache.db")
        self.door_modes = DoorModeStore(state_dir / "door_modes.json")
        self.challenges = ChallengeBook()  # the NFC readers'
        self.ble_challenges = ChallengeBook()  # the BLE readers'
        self.secrets = load_secrets(config)  # never logged; the virtual twin's keys use them
        # Filled in again once the SUN counters are open (start): entry reads it per presentation.
        self._verifiers = build_verifiers(
            self.secrets, None, nfc=self.challenges, ble=self.ble_challenges
        )
        self.hardware: Hardware = build_hardware(config)
        self.doors = DoorController(
            self.cache, self.door_modes, self.hardware, self.events, clock, config.doors
        )
        self.reader_set = ReaderSet(self.hardware.readers)
        nfc_doors = {d: e.nfc_reader for d, e in config.doors.items() if e.nfc_reader}
        if nfc_doors:
            # Imported here, like every kind's modules: nfcpy and libusb only where readers are.
            from drivers.nfc_reader import NfcReader  # noqa: PLC0415

            for door_id, path in nfc_doors.items():
                self.reader_set.add(NfcReader(door_id, path, self._read_card))
        if config.hardware.backend != "virtual":  # the virtual one's radios are the simulator's
            self._add_ble_readers()
        self.entry = EntryService(
            self.cache,
            self.doors,
            self.events,
            self.reader_set,
            clock,
            self._verifiers,
            offline_for=self._offline_for,
            on_decided=self.metrics.observe_decision,
            keypads=KeypadGuard(config.keypad.attempts, config.keypad.lockout_s),
        )
        self.officernd = OfficeRnDService(
            config.officernd, self.cache, self.events, config.gateway.state_dir, clock
        )
        self.enrolment = Enrolment(
            self.cache,
            self.entry,
            self.events,
            clock,
            phone_allowed=self.officernd.phone_allowed,
        )
        self.invitations = InvitationService(self.cache, self.events, clock)
        self.simulator = Simulator(
            self.hardware,
            self.secrets,
            self.reader_set,
            self.entry,
            self.enrolment,
            self.ble_challenges,
            self._read_card,
            proximity=lambda door_id: (
                config.doors[door_id].ble_proximity
                if door_id in config.doors and config.doors[door_id].ble_proximity
                else DEFAULT_PROXIMITY
            ),
        )
        self.cloud = self._cloud_service() if config.cloud.enabled else None
        self.admin = (
            admin
            if admin is not None
            else AdminAccounts(state_dir, clock=lambda: clock().timestamp())
        )
        loopback = ipaddress.ip_address(config.web.host).is_loopback
        # Off this machine the web app is HTTPS, with a certificate made here (HTTP stays
        # only on loopback, where nothing crosses a network).
        self.web_tls: CertificateFiles | None = None
        ssl_context = None
        if not loopback:
            # Imported here: cryptography's X.509 costs memory a loopback gateway need not pay.
            from gateway.tls import ensure_certificate, server_context  # noqa: PLC0415

            self.web_tls = ensure_certificate(state_dir / "web", [config.web.host])
            ssl_context = server_context(self.web_tls)
        self.web = WebServer(
            make_app(
                self,
                simulated=config.hardware.backend in ("simulated", "virtual"),
                local=loopback,
            ),
            config.web.host,
            config.web.port,
            ssl_context=ssl_context,
        )
        self.public_web = (
            WebServer(make_public_app(self), config.web.public_host, config.web.public_port)
            if config.web.public_port
            else None
        )
        self._stack = AsyncExitStack()
        self._started = False
        #: Set when new settings need a fresh gateway: ``run`` stops this one and starts another.
        self.restart_requested = asyncio.Event()

    def request_restart(self, reason: str) -> None:
        """Ask ``run`` for a fresh gateway on the reloaded configuration, shortly after now."""
        _LOGGER.info("restart requested: %s", reason)
        # Shortly after: the HTTP answer that asked for it is sent first.
        asyncio.get_running_loop().call_later(0.2, self.restart_requested.set)

    async def start(self) -> None:
        """Start everything; on any failure, whatever started is stopped again."""
        state_dir = self.config.gateway.state_dir
        # The demo site goes only into a brand-new state directory on simulated hardware: never
        # after a cache reset, never on a gateway wired to real doors.
        ran_before = (state_dir / "cache.db").exists()
        seed_demo = (
            self.config.demo.seed
            and self.config.hardware.backend in ("simulated", "virtual")
            and not ran_before
        )
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir.chmod(0o700)  # the cache and outbox name people and their credentials
        async with AsyncExitStack() as stack:
            await self.outbox.start()
            stack.push_async_callback(self.outbox.stop)
            # Stopped after gateway.stopped is recorded, before the outbox closes.
            await self.journal.start()
            stack.push_async_callback(self.journal.stop)
            stack.push_async_callback(self._record_stopped)
            if self.outbox.reset_reason:
                await self.events.record(
                    new_event(
                        EventType.CACHE_RESET,
                        self.clock(),
                        {"store": "outbox", "reason": self.outbox.reset_reason},
                    )
                )
            if self.journal.reset_reason:
                await self.events.record(
                    new_event(
                        EventType.CACHE_RESET,
                        self.clock(),
                        {"store": "journal", "reason": self.journal.reset_reason},
                    )
                )
            await self.cache.start()
            stack.push_async_callback(self.cache.stop)
            if self.secrets.nfc is not None:  # NTAG 424 DNA tags can be verified here
                from gateway.sun_counters import SunCounters  # noqa: PLC0415

                counters_path = state_dir / SUN_COUNTERS_FILE
                missing = ran_before and not counters_path.exists()
                counters = await SunCounters.open(counters_path)
                counters.start()
                stack.push_async_callback(counters.close)
                if counters.reset or missing:
                    # Counting afresh lets a copied SUN URL work once more: say so, loudly.
                    reason = "the file was unreadable" if counters.reset else "the file was missing"
                    await self.events.record(
                        new_event(
                            EventType.CACHE_RESET,
                            self.clock(),
                            {"store": "sun_counters", "reason": reason},
                        )
                    )
                self._verifiers.update(
                    build_verifiers(
                        self.secrets, counters, nfc=self.challenges, ble=self.ble_challenges
                    )
                )
            if self.cache.reset_reason:
                await self.events.record(
                    new_event(
                        EventType.CACHE_RESET,
                        self.clock(),
                        {"store": "cache", "reason": self.cache.reset_reason},
                    )
                )
            if seed_demo:
                await self._seed_demo()
            # Stopped in reverse: web, readers (in-flight reads finish), doors, then hardware.
            await self.hardware.start()
            stack.push_async_callback(self.hardware.stop)
            await self.doors.start()
            stack.push_async_callback(self.doors.stop)
            if self.cloud is not None:
                await self.cloud.start()
                stack.push_async_callback(self.cloud.stop)
            await self.officernd.start()
            stack.push_async_callback(self.officernd.stop)
            self.entry.start()
            stack.push_async_callback(self.entry.stop)
            stack.push_async_callback(self.simulator.stop)  # its radios, once readers stopped
            self.reader_set.start()
            stack.push_async_callback(self.reader_set.stop)
            stack.push_async_callback(self.web.stop)
            await self.web.start()
            if self.web_tls is not None:
                _LOGGER.info(
                    "web app certificate SHA-256 %s (compare it with what the browser shows)",
                    self.web_tls.fingerprint_sha256,
                )
            self.admin.announce()
            if self.public_web is not None:
                stack.push_async_callback(self.public_web.stop)
                await self.public_web.start()
            await self.events.record(
                new_event(
                    EventType.GATEWAY_STARTED, self.clock(), {"cache_version": self.cache.version}
                )
            )
            self._started = True
            self._stack = stack.pop_all()

    @property
    def relays(self) -> RelayBank:
        """The doors' lock relays (once started)."""
        return self.hardware.relays

    @property
    def readers(self) -> ReaderBank:
        """The doors' readers (once started)."""
        return self.hardware.readers

    def _offline_for(self, now: datetime) -> timedelta | None:
        """How long the cloud link has been down (None: up, or no cloud configured)."""
        return None if self.cloud is None else self.cloud.offline_for(now)

    def _cloud_service(self) -> CloudService:
        """The cloud link; imported here so a gateway without one does not load MQTT at all."""
        from gateway.cloud import CloudService  # noqa: PLC0415

        return CloudService(
            self.config.cloud,
            cache=self.cache,
            events=self.events,
            outbox=self.outbox,
            doors=self.doors,
            state_dir=self.config.gateway.state_dir,
            clock=self.clock,
            backoff=self._cloud_backoff,
        )

    def _add_ble_readers(self) -> None:
        """A BLE reader on the adapter for each door with a proximity (needs the reader key)."""
        doors = {d: e.ble_proximity for d, e in self.config.doors.items() if e.ble_proximity}
        if not doors:
            return
        identity = self.secrets.reader
        if identity is None:
            _LOGGER.error(
                "phones cannot open %s: this gateway has no usable BLE reader key",
                ", ".join(sorted(doors)),
            )
            return
        # Imported here: bleak and D-Bus only on gateways that read phones.
        from drivers.ble_reader import BleReader  # noqa: PLC0415

        for door_id, proximity in doors.items():
            self.reader_set.add(
                BleReader(
                    door_id,
                    proximity,
                    identity,
                    self.ble_challenges,
                    adapter=self.config.ble.adapter,
                )
            )

    def _read_card(self, uid: bytes, transceive: Transceive) -> CardReading:
        """The card dialogue of the gateway's NFC readers, with this site's keys."""
        from gateway.nfc_cards import NotOurCard, read_iso_dep_card  # noqa: PLC0415

        keys = self.secrets.nfc
        if keys is None:  # no card type is covered: the reader takes the card's bare UID
            raise NotOurCard("this gateway has no NFC keys: only bare UIDs can be read")
        return read_iso_dep_card(uid, transceive, keys, self.challenges)

    async def _seed_demo(self) -> None:
        snapshot = demo_snapshot()
        if await self.cache.apply_snapshot(snapshot, origin="demo") is ApplyResult.APPLIED:
            _LOGGER.info("empty cache: loaded the demo site %r", snapshot.site.name)
            await self.events.record(
                new_event(
                    EventType.CACHE_UPDATED,
                    self.clock(),
                    {"source": "demo", "version": snapshot.version},
                )
            )

    async def _record_stopped(self) -> None:
        if self._started:
            self._started = False
            await self.events.record(new_event(EventType.GATEWAY_STOPPED, self.clock(), {}))

    async def stop(self) -> None:
        """Stop taking presentations, finish those in flight, flush events, close files."""
        await self._stack.aclose()


async def run(
    config: Config,
    *,
    started: Callable[[Gateway], None] | None = None,
    reload: Callable[[], Config] | None = None,
) -> None:
    """Run a gateway until SIGTERM or SIGINT, then stop it cleanly.

    When the running gateway asks for a restart (settings saved in the web app, a claim), it
    is stopped and a new one started from ``reload()``'s configuration; if that one cannot
    start, the previous configuration runs again.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = Notifier()
    try:
        gateway = Gateway(config)
        await gateway.start()
        while True:
            try:
                notifier.ready(f"serving {len(gateway.cache.view.doors)} doors")
                if started is not None:
                    started(gateway)
                await _first_of(stop.wait(), gateway.restart_requested.wait())
            finally:
                if stop.is_set():
                    _LOGGER.info("stopping")
                    notifier.stopping()
                await gateway.stop()
            if stop.is_set() or reload is None:
                break
            notifier.send(RELOADING="1", STATUS="restarting with new settings")
            gateway, config = await _restarted(config, reload, gateway.admin)
    finally:
        await notifier.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
    _LOGGER.info("stopped")


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` returns; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _restarted(
    previous: Config, reload: Callable[[], Config], admin: AdminAccounts
) -> tuple[Gateway, Config]:
    """A started gateway on ``reload()``'s configuration, else on ``previous`` again."""
    config: Config | None = None
    try:
        config = reload()
        gateway = Gateway(config, admin=admin)
        await gateway.start()
    except Exception:
        # A door must not stay dark because of a setting: run as before and say why, and put
        # the previous saved settings back so that the next boot does not fail on them either.
        _LOGGER.exception("the new settings could not start; running with the previous ones")
        changed = config is None or (config.doors, config.hardware) != (
            previous.doors,
            previous.hardware,
        )
        rejected = None
        if changed:
            rejected = await asyncio.to_thread(restore_previous, previous.gateway.state_dir)
        if rejected is not None:
            _LOGGER.error("the door settings saved last were set aside in %s", rejected)
        gateway = Gateway(previous, admin=admin)
        await gateway.start()
        return gateway, previous
    _LOGGER.info("restarted with the new settings")
    return gateway, config
