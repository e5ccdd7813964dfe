"""The gateway's BLE phone reader: scan, judge proximity, run the handshake, present the key.

For one door (CREDENTIALS.md, "Smartphone over BLE"):

1. scan for the Luckey service; each advertisement's service data (or, from an iPhone, its local
   name) names a rotating ephemeral id (garbage and truncated ones are ignored and counted).
   Everything is keyed on that id, never on the address, which phones rotate;
2. smooth the id's RSSI: the low median of its last ``RSSI_SAMPLES`` samples heard within
   ``RSSI_WINDOW_S`` (at least ``RSSI_MIN_SAMPLES``);
3. at or above the door's threshold, and outside the id's cooldown: connect and run the GATT
   flow of ``ReaderHandshake`` with a fresh nonce from the ChallengeBook, each step within
   ``STEP_TIMEOUT_S`` and all of it within ``EXCHANGE_TIMEOUT_S``, always disconnecting after;
4. hand ``CredentialRead(door, "ble_phone_key", key id in hex, proof)`` to the handler. The
   verifier redeems the nonce and checks the phone's signature.

An id that presented is left alone for ``COOLDOWN_S``; one whose exchange failed (counted by
reason in ``counts``) may try again after ``RETRY_AFTER_FAILURE_S``.

One BleReader serves one door (the reads' ``reader_id``) at one threshold, on one adapter: a
phone's signal says how near it is to the radio, not which door it is at, so the configuration
gives an adapter one door (the simulator gives each door a radio of its own).

Only bleak's public API is used: with no backends given, bleak picks the platform's (BlueZ on the
Pi); tests pass those of ``drivers.bleak_bumble``.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import statistics
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeVar

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import BlueZClientArgs, BlueZScannerArgs
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from drivers.base import CredentialRead, Feedback
from gateway import ble_protocol
from gateway.backoff import Backoff
from gateway.ble_protocol import (
    LOCAL_NAME_PREFIX,
    NONCE_BYTES,
    PHONE_TO_READER_UUID,
    READER_TO_PHONE_UUID,
    SERVICE_UUID,
    BleProtocolError,
    PhoneClaim,
    ReaderHandshake,
    parse_advertisement,
    parse_local_name,
)
from gateway.challenges import ChallengeBook
from gateway.proximity import RSSI_PRESETS_DBM, proximity_threshold
from gateway.reader_identity import ReaderIdentity

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The credential kind of the reads (gateway.model.CredentialKind.BLE_PHONE_KEY).
CREDENTIAL_KIND: Final = "ble_phone_key"

TOUCH_DBM, NEAR_DBM, FAR_DBM = (RSSI_PRESETS_DBM[p] for p in ("touch", "near", "far"))

# RSSI smoothing: a median shrugs off the single deep fades and reflections of a moving phone.
RSSI_SAMPLES = 5
RSSI_MIN_SAMPLES = 2  # with two, the weaker counts (median_low): one loud sample never opens
RSSI_WINDOW_S = 1.5

#: One presentation per ephemeral id this long after it presented (success).
COOLDOWN_S = 5.0
#: After a failed exchange the id may try again this much later (a glitch should not lock out).
RETRY_AFTER_FAILURE_S = 1.0

MAX_CONCURRENT_EXCHANGES = 3  # connections at once; an adapter holds a handful at most
CONNECT_TIMEOUT_S = 1.5
STEP_TIMEOUT_S = 0.75  # each GATT write or read
EXCHANGE_TIMEOUT_S = ble_protocol.EXCHANGE_TIMEOUT_S  # connect to message 4, in total (2.5 s)
DISCONNECT_TIMEOUT_S = 1.0

FORGET_AFTER_S = 60.0  # an id not heard this long is forgotten
MAX_TRACKED_IDS = 512  # bounded memory whatever advertises around the door

SCAN_RETRY_BASE_S = 1.0  # the adapter is missing or off: try again, backing off
SCAN_RETRY_CAP_S = 30.0


class FailureReason(enum.StrEnum):
    """Why an exchange with a phone gave no read."""

    TIMEOUT = "timeout"  # a step or the whole exchange took too long (a stalled phone)
    REFUSED = "refused"  # the phone answered nothing: it does not know this reader, or rotated
    PROTOCOL = "protocol"  # a malformed or wrong message
    DISCONNECTED = "disconnected"  # the link dropped mid-exchange
    BLUETOOTH = "bluetooth"  # the stack failed (connect refused, GATT error, no adapter)
    ERROR = "error"  # a bug: logged with its traceback


class ReaderState(enum.StrEnum):
    """The reader's lifecycle."""

    STOPPED = "stopped"
    WAITING = "waiting"  # started, the adapter is not scanning (yet, or any more)
    SCANNING = "scanning"


@dataclass(frozen=True, slots=True)
class ExchangeTiming:
    """How long a presentation took: from the id's first advertisement, and the exchange alone."""

    reader_id: str
    first_advert_to_read_s: float
    exchange_s: float
    rssi_dbm: float


@dataclass(slots=True)
class _Track:
    """What the reader knows of one ephemeral id."""

    ephemeral_id: bytes
    device: BLEDevice  # the latest one heard: its address may have rotated
    first_seen: float | None  # its first advertisement since it last presented
    last_seen: float
    samples: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=RSSI_SAMPLES)
    )
    busy: bool = False
    quiet_until: float = 0.0


class _Refused(Exception):
    """The phone's reply was empty: it declined to go on."""


class _Lost(Exception):
    """The link dropped during the exchange."""


@dataclass(slots=True)
class _Progress:
    step: str = "connect"


class BleReader:
    """The BLE phone reader of one door (a ReaderBank for that door's reader id)."""

    def __init__(
        self,
        reader_id: str,
        proximity: str | int,
        identity: ReaderIdentity,
        challenges: ChallengeBook,
        *,
        scanner_backend: type[BaseBleakScanner] | None = None,
        client_backend: type[BaseBleakClient] | None = None,
        on_timing: Callable[[ExchangeTiming], None] | None = None,
        adapter: str | None = None,
    ) -> None:
        """``adapter``: the BlueZ adapter (e.g. "hci0"); None: the system's default."""
        self.reader_id = reader_id
        self._scan_args = (
            BlueZScannerArgs() if adapter is None else BlueZScannerArgs(adapter=adapter)
        )
        self._client_args = (
            BlueZClientArgs() if adapter is None else BlueZClientArgs(adapter=adapter)
        )
        #: Smoothed RSSI at or above which a phone presents (ProximityError if out of range).
        self.threshold_dbm = proximity_threshold(proximity)
        self._identity = identity
        self._challenges = challenges
        self._scanner_backend = scanner_backend
        self._client_backend = client_backend
        self._on_timing = on_timing
        self._handler: Callable[[CredentialRead], None] | None = None
        self._state = ReaderState.STOPPED
        self._scan_task: asyncio.Task[None] | None = None
        self._exchanges: set[asyncio.Task[None]] = set()
        self._teardowns: set[asyncio.Task[None]] = set()
        self._tracks: dict[bytes, _Track] = {}
        self._counts: collections.Counter[str] = collections.Counter()
        self._failing: collections.Counter[FailureReason] = collections.Counter()
        self.last_timing: ExchangeTiming | None = None

    # --- ReaderBank ---------------------------------------------------------------------------

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        """Deliver every read to ``handler`` (called in the event loop)."""
        self._handler = handler

    def feedback(self, reader_id: str, feedback: Feedback) -> None:
        """No-op: a radio has no LED or buzzer; the door's own reader shows the outcome."""
        _LOGGER.debug("BLE reader %s: feedback %s (nothing to show)", reader_id, feedback)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def state(self) -> ReaderState:
        """Stopped, waiting for the adapter, or scanning."""
        return self._state

    @property
    def counts(self) -> Mapping[str, int]:
        """Counters: adverts, ignored (garbage) adverts, exchanges, reads, failures by reason."""
        return MappingProxyType(self._counts)

    def start(self) -> None:
        """Start scanning in the background (idempotent; needs a running event loop)."""
        if self._scan_task is not None:
            return
        self._set_state(ReaderState.WAITING)
        self._scan_task = asyncio.create_task(self._scan(), name=f"ble-reader-{self.reader_id}")

    async def stop(self) -> None:
        """Stop scanning, cancel exchanges in flight and disconnect them (idempotent)."""
        scan, self._scan_task = self._scan_task, None
        tasks = [*self._exchanges] if scan is None else [scan, *self._exchanges]
        for task in tasks:
            task.cancel()
        # Each cancelled exchange disconnects first (bounded by DISCONNECT_TIMEOUT_S).
        if tasks:
            await asyncio.wait(tasks)
        if self._teardowns:
            await asyncio.wait(list(self._teardowns))
        self._tracks.clear()
        self._set_state(ReaderState.STOPPED)

    def _set_state(self, state: ReaderState) -> None:
        if state is self._state:
            return
        previous, self._state = self._state, state
        # Losing the scan is the one transition someone should look at.
        lost = previous is ReaderState.SCANNING and state is ReaderState.WAITING
        level = logging.WARNING if lost else logging.INFO
        _LOGGER.log(level, "BLE reader %s: %s (was %s)", self.reader_id, state, previous)

    async def _scan(self) -> None:
        backoff = Backoff(base_s=SCAN_RETRY_BASE_S, cap_s=SCAN_RETRY_CAP_S)
        while True:
            try:
                scanner = BleakScanner(
                    self._on_advertisement,
                    [SERVICE_UUID],
                    bluez=self._scan_args,
                    backend=self._scanner_backend,
                )
                await scanner.start()
            except Exception as err:  # BleakError, OSError (no D-Bus), or a backend's own
                delay = backoff.next_delay()
                log = _LOGGER.warning if backoff.attempts == 1 else _LOGGER.debug
                log(
                    "BLE reader %s: cannot scan (%r); retrying in %.1f s",
                    self.reader_id,
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self._set_state(ReaderState.SCANNING)
            try:
                await asyncio.get_running_loop().create_future()  # until cancelled by stop()
            finally:
                try:
                    async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                        await scanner.stop()
                except Exception as err:  # stopping anyway: nothing to retry
                    _LOGGER.debug("BLE reader %s: stopping the scan: %r", self.reader_id, err)

    # --- advertisements -------------------------------------------------------------------------

    def _on_advertisement(self, device: BLEDevice, data: AdvertisementData) -> None:
        if self._scan_task is None:
            return  # stopping: the scanner is not stopped yet, but nothing new may start
        self._counts["adverts"] += 1
        payload = data.service_data.get(SERVICE_UUID)
        name = data.local_name
        try:
            if payload is not None:
                ephemeral_id = parse_advertisement(payload)
            elif name is not None and name.startswith(LOCAL_NAME_PREFIX):
                ephemeral_id = parse_local_name(name)  # a phone that cannot send service data
            else:
                self._counts["adverts_without_id"] += 1
                return
        except BleProtocolError as err:
            self._counts["adverts_ignored"] += 1
            log = _LOGGER.warning if self._counts["adverts_ignored"] == 1 else _LOGGER.debug
            log(
                "BLE reader %s: ignored an advertisement (%s): %s",
                self.reader_id,
                f"service data {payload[:32].hex()}" if payload is not None else "local name",
                err,
            )
            return
        now = asyncio.get_running_loop().time()
        track = self._track(ephemeral_id, device, now)
        track.samples.append((now, data.rssi))
        if track.busy or now < track.quiet_until:
            return
        if track.first_seen is None:
            track.first_seen = now
        rssi = _smoothed(track, now)
        if rssi is None or rssi < self.threshold_dbm:
            return
        if len(self._exchanges) >= MAX_CONCURRENT_EXCHANGES:
            self._counts["deferred"] += 1  # tried again on its next advertisement
            return
        track.busy = True
        task = asyncio.create_task(
            self._exchange(track, rssi), name=f"ble-exchange-{self.reader_id}-{ephemeral_id.hex()}"
        )
        self._exchanges.add(task)
        task.add_done_callback(self._exchanges.discard)

    def _track(self, ephemeral_id: bytes, device: BLEDevice, now: float) -> _Track:
        track = self._tracks.get(ephemeral_id)
        if track is None:
            self._forget_old(now)
            track = _Track(ephemeral_id, device, first_seen=now, last_seen=now)
            self._tracks[ephemeral_id] = track
        track.device = device
        track.last_seen = now
        return track

    def _forget_old(self, now: float) -> None:
        """Drop ids not heard for FORGET_AFTER_S, then the least recent beyond MAX_TRACKED_IDS."""
        for key in [k for k, t in self._tracks.items() if now - t.last_seen > FORGET_AFTER_S]:
            if not self._tracks[key].busy:
                del self._tracks[key]
        if len(self._tracks) >= MAX_TRACKED_IDS:
            idle = sorted((t.last_seen, k) for k, t in self._tracks.items() if not t.busy)
            for _, key in idle[: len(self._tracks) - MAX_TRACKED_IDS + 1]:
                del self._tracks[key]

    # --- one exchange ---------------------------------------------------------------------------

    async def _exchange(self, track: _Track, rssi: float) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        progress = _Progress()
        self._counts["exchanges"] += 1
        reason: FailureReason | None = None
        detail = ""
        claim: PhoneClaim | None = None
        try:
            claim = await self._handshake(track, progress)
        except TimeoutError:
            reason, detail = FailureReason.TIMEOUT, f"no answer in time at {progress.step}"
        except _Refused:
            reason, detail = FailureReason.REFUSED, f"the phone answered nothing at {progress.step}"
        except _Lost:
            reason, detail = FailureReason.DISCONNECTED, f"link lost at {progress.step}"
        except BleProtocolError as err:
            reason, detail = FailureReason.PROTOCOL, f"{progress.step}: {err}"
        except BleakError as err:
            reason, detail = FailureReason.BLUETOOTH, f"{progress.step}: {err!r}"
        except Exception as err:
            _LOGGER.exception("BLE reader %s: exchange failed at %s", self.reader_id, progress.step)
            reason, detail = FailureReason.ERROR, repr(err)
        finally:
            track.busy = False
            track.quiet_until = loop.time() + (
                RETRY_AFTER_FAILURE_S if claim is None else COOLDOWN_S
            )
        eid = track.ephemeral_id.hex()
        if claim is None:
            assert reason is not None
            self._failed(reason, eid, detail)
            return
        now = loop.time()
        first_seen = started if track.first_seen is None else track.first_seen
        timing = ExchangeTiming(self.reader_id, now - first_seen, now - started, rssi)
        track.first_seen = None  # the next presentation counts from its own first advertisement
        self._succeeded(eid, timing)
        read = CredentialRead(self.reader_id, CREDENTIAL_KIND, claim.value, claim.proof)
        if self._handler is None:
            _LOGGER.warning("BLE reader %s: a read with no handler set was dropped", self.reader_id)
        else:
            try:
                self._handler(read)
            except Exception:  # the handler's bug must not look like a failed exchange
                _LOGGER.exception("BLE reader %s: the read handler failed", self.reader_id)
        if self._on_timing is not None:
            try:
                self._on_timing(timing)
            except Exception:
                _LOGGER.exception("BLE reader %s: the timing listener failed", self.reader_id)

    async def _handshake(self, track: _Track, progress: _Progress) -> PhoneClaim:
        handshake = ReaderHandshake(
            self._identity, self._challenges.issue(NONCE_BYTES), track.ephemeral_id
        )
        lost = asyncio.Event()
        client = BleakClient(
            track.device,
            lambda _client: lost.set(),
            [SERVICE_UUID],
            timeout=CONNECT_TIMEOUT_S,
            bluez=self._client_args,
            backend=self._client_backend,
        )
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT_S):
                await client.connect()

                async def step(name: str, operation: Awaitable[_T]) -> _T:
                    progress.step = name
                    try:
                        async with asyncio.timeout(STEP_TIMEOUT_S):
                            return await operation
                    except BleakError as err:
                        if lost.is_set():
                            raise _Lost from err
                        raise

                await step(
                    "message 1",
                    client.write_gatt_char(READER_TO_PHONE_UUID, handshake.hello(), True),
                )
                reply = await step("message 2", client.read_gatt_char(PHONE_TO_READER_UUID))
                if not reply:
                    raise _Refused
                message3 = handshake.prove(bytes(reply))
                await step(
                    "message 3", client.write_gatt_char(READER_TO_PHONE_UUID, message3, True)
                )
                reply = await step("message 4", client.read_gatt_char(PHONE_TO_READER_UUID))
                if not reply:
                    raise _Refused
                return handshake.finish(bytes(reply))
        finally:
            await self._disconnect(client)

    async def _disconnect(self, client: BleakClient) -> None:
        """Disconnect, even when this exchange is being cancelled (stop() waits for it)."""
        task = asyncio.create_task(
            self._disconnect_now(client), name=f"ble-disconnect-{self.reader_id}"
        )
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)
        await asyncio.shield(task)

    async def _disconnect_now(self, client: BleakClient) -> None:
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                await client.disconnect()
        except (BleakError, OSError, TimeoutError) as err:
            _LOGGER.warning("BLE reader %s: disconnecting failed: %r", self.reader_id, err)

    # --- outcomes -------------------------------------------------------------------------------

    def _failed(self, reason: FailureReason, eid: str, detail: str) -> None:
        self._counts[f"failed_{reason}"] += 1
        self._failing[reason] += 1
        # The ephemeral id is not an identity (it rotates, and only the phone can link it).
        log = _LOGGER.warning if self._failing[reason] == 1 else _LOGGER.debug
        log("BLE reader %s: exchange with %s failed (%s): %s", self.reader_id, eid, reason, detail)

    def _succeeded(self, eid: str, timing: ExchangeTiming) -> None:
        self._counts["reads"] += 1
        self.last_timing = timing
        failures = sum(self._failing.values())
        if failures:
            _LOGGER.info(
                "BLE reader %s: reads again after %d failed exchanges", self.reader_id, failures
            )
            self._failing.clear()
        _LOGGER.debug(
            "BLE reader %s: %s presented in %.3f s (exchange %.3f s, %.1f dBm)",
            self.reader_id,
            eid,
            timing.first_advert_to_read_s,
            timing.exchange_s,
            timing.rssi_dbm,
        )


def _smoothed(track: _Track, now: float) -> float | None:
    """The median RSSI of the id's recent samples; None while there are too few."""
    while track.samples and now - track.samples[0][0] > RSSI_WINDOW_S:
        track.samples.popleft()
    if len(track.samples) < RSSI_MIN_SAMPLES:
        return None
    # The low median: with an even count the weaker middle sample, so one loud reflection (a
    # phone in a pocket across the hall) cannot lift a far phone over the threshold.
    return float(statistics.median_low(rssi for _, rssi in track.samples))
