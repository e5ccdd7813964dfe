"""The BLE phone reader (bleak's public API) against simulated phones on a virtual radio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.exc import BleakError

from drivers import ble_reader, sim_phone
from drivers.base import CredentialRead, Feedback
from drivers.ble_reader import (
    FAR_DBM,
    NEAR_DBM,
    TOUCH_DBM,
    BleReader,
    ExchangeTiming,
    ReaderState,
)
from drivers.bleak_bumble import (
    BumbleCentral,
    VirtualRadio,
    advertising_payload,
    scan_response_payload,
)
from drivers.reference_phone import ReferencePhone
from drivers.sim_phone import SimPhone
from gateway.ble_protocol import PHONE_TO_READER_UUID, SERVICE_UUID, parse_proof
from gateway.challenges import ChallengeBook
from gateway.proximity import ProximityError, proximity_threshold
from gateway.reader_identity import ReaderIdentity

DOOR = "front"
WAIT_S = 5.0  # upper bound for one expected event; the happy path takes tens of milliseconds
INTERVAL_MS = 20.0  # phones advertise fast here, so tests take tens of milliseconds
#: A cooldown no test outlives (pytest's own timeout is 60 s): a second read within a test can
#: then only come from a new ephemeral id, never from the cooldown running out.
ENDLESS_COOLDOWN_S = 60.0


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing constants shrunk so that each behaviour shows within a fraction of a second.

    The exchange's own timeouts are not shrunk: a phone that answers must never be cut off,
    however loaded the machine. A test that needs one to fire shortens it itself.
    """
    monkeypatch.setattr(ble_reader, "COOLDOWN_S", 1.0)
    monkeypatch.setattr(ble_reader, "RETRY_AFTER_FAILURE_S", 0.3)
    monkeypatch.setattr(ble_reader, "CONNECT_TIMEOUT_S", WAIT_S)
    monkeypatch.setattr(ble_reader, "STEP_TIMEOUT_S", WAIT_S)
    monkeypatch.setattr(ble_reader, "EXCHANGE_TIMEOUT_S", 2 * WAIT_S)
    monkeypatch.setattr(ble_reader, "RSSI_WINDOW_S", 0.5)
    monkeypatch.setattr(ble_reader, "SCAN_RETRY_BASE_S", 0.02)


async def until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Return once ``condition()`` holds; fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - counters and link state have no event to await
            await asyncio.sleep(0.005)


class Rig:
    """A gateway's radio with one door's BLE reader, and phones to bring to it."""

    def __init__(self, radio: VirtualRadio, central: BumbleCentral) -> None:
        self.radio = radio
        self.central = central
        self.identity = ReaderIdentity.generate()
        self.challenges = ChallengeBook()
        self.reads: asyncio.Queue[CredentialRead] = asyncio.Queue()
        #: When each read was handed over (loop time, in the reader's own turn).
        self.read_at: list[float] = []
        self.timings: list[ExchangeTiming] = []
        self.reader = self.make_reader(NEAR_DBM)

    def make_reader(self, threshold_dbm: int) -> BleReader:
        reader = BleReader(
            DOOR,
            threshold_dbm,
            self.identity,
            self.challenges,
            scanner_backend=self.central.scanner_backend,
            client_backend=self.central.client_backend,
            on_timing=self.timings.append,
        )
        reader.set_handler(self._on_read)
        return reader

    def _on_read(self, read: CredentialRead) -> None:
        self.read_at.append(asyncio.get_running_loop().time())
        self.reads.put_nowait(read)

    def enrolled_phone(self) -> ReferencePhone:
        return ReferencePhone.generate({self.identity.reader_id: self.identity.public_key})

    async def phone(
        self, phone: ReferencePhone | None = None, *, rssi_dbm: int = -40, **knobs: Any
    ) -> SimPhone:
        sim = SimPhone(
            self.radio,
            phone or self.enrolled_phone(),
            rssi_dbm=rssi_dbm,
            interval_ms=INTERVAL_MS,
            **knobs,
        )
        await sim.start()
        return sim

    async def read(self) -> CredentialRead:
        return await asyncio.wait_for(self.reads.get(), WAIT_S)

    async def heard(self, adverts: int) -> None:
        """Wait until the reader has heard ``adverts`` more advertisements."""
        target = self.reader.counts["adverts"] + adverts
        await until(lambda: self.reader.counts["adverts"] >= target)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with VirtualRadio() as radio:
        rig = Rig(radio, await radio.add_central())
        try:
            yield rig
        finally:
            await rig.reader.stop()


# --- proximity settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "dbm"),
    [("touch", TOUCH_DBM), ("NEAR", NEAR_DBM), (" far ", FAR_DBM), (-52, -52), ("-52", -52)],
)
def test_proximity_presets_and_custom_thresholds(value: str | int, dbm: int) -> None:
    assert proximity_threshold(value) == dbm
    assert proximity_threshold("-70 dBm") == -70


@pytest.mark.parametrize("value", ["loud", "", -10, -130, 5, "-5", True, "45"])
def test_proximity_refuses_the_rest_and_says_what_is_allowed(value: str | int) -> None:
    with pytest.raises(ProximityError, match=r"touch \(-35 dBm\).*from -100 to -20"):
        proximity_threshold(value)


def test_the_presets_are_the_published_reference_thresholds() -> None:
    assert (TOUCH_DBM, NEAR_DBM, FAR_DBM) == (-35, -45, -60)


# --- presentations --------------------------------------------------------------------------------


async def test_a_near_phone_presents_its_key_once_and_is_disconnected(rig: Rig) -> None:
    sim = await rig.phone(rssi_dbm=-40)
    rig.reader.start()

    read = await rig.read()

    assert read.reader_id == DOOR
    assert read.kind == "ble_phone_key"
    assert read.value == sim.phone.key_id.hex().upper()
    proof = parse_proof(read.proof)
    assert proof.key_id == sim.phone.key_id
    assert proof.transcript.reader_id == rig.identity.reader_id
    assert rig.challenges.redeem(proof.transcript.nonce)  # a nonce this gateway issued
    await until(lambda: not sim.connected)
    assert sim.connections == 1
    assert rig.reader.counts["reads"] == 1
    [timing] = rig.timings
    assert timing.reader_id == DOOR
    # How fast a presentation is belongs to bench/, not here: only that the timing is coherent.
    assert 0 < timing.exchange_s <= timing.first_advert_to_read_s < WAIT_S
    assert rig.reader.last_timing == timing


async def test_an_iphone_carrying_its_id_in_the_local_name_presents(rig: Rig) -> None:
    sim = await rig.phone(rssi_dbm=-40, ios=True)
    rig.reader.start()

    read = await rig.read()

    assert read.value == sim.phone.key_id.hex().upper()
    proof = parse_proof(read.proof)
    assert proof.transcript.ephemeral_id == sim.phone.ephemeral_id  # taken from the name


async def test_a_phone_too_far_away_is_never_connected(rig: Rig) -> None:
    sim = await rig.phone(rssi_dbm=-70)
    rig.reader.start()

    await rig.heard(20)

    assert rig.reads.empty()
    assert rig.reader.counts["exchanges"] == 0
    assert sim.connections == 0


async def test_a_phone_walking_up_presents_once_it_is_near(rig: Rig) -> None:
    sim = await rig.phone(rssi_dbm=-70)
    rig.reader.start()
    await rig.heard(5)

    sim.set_distance(0.5)  # about -40 dBm, through the radio and the real scanner path
    read = await rig.read()

    assert read.value == sim.phone.key_id.hex().upper()


async def test_the_median_ignores_a_single_loud_sample(rig: Rig) -> None:
    sim = await rig.phone(rssi_dbm=-70)
    rig.reader.start()
    await rig.heard(5)
    loud = asyncio.Event()

    def one_reflection(_device: BLEDevice, data: AdvertisementData) -> None:
        # A second scanner on the same adapter hears what the reader hears, in the same turn.
        if data.rssi == -30:
            sim.rssi_dbm = -70  # ...and back at once: exactly one loud sample
            loud.set()

    async with BleakScanner(one_reflection, [SERVICE_UUID], backend=rig.central.scanner_backend):
        sim.rssi_dbm = -30  # one reflection...
        await asyncio.wait_for(loud.wait(), WAIT_S)
        await rig.heard(10)

    assert rig.reader.counts["exchanges"] == 0


async def test_jittery_rssi_around_the_threshold_is_smoothed(rig: Rig) -> None:
    sim = await rig.phone(rssi_dbm=-40)
    sim.peripheral.jitter_db = 8  # single samples reach -48, below the threshold
    rig.reader.start()

    read = await rig.read()

    assert read.value == sim.phone.key_id.hex().upper()


async def test_two_phones_at_once_both_present(rig: Rig) -> None:
    first = await rig.phone()
    second = await rig.phone()
    rig.reader.start()

    reads = {(await rig.read()).value, (await rig.read()).value}

    assert reads == {first.phone.key_id.hex().upper(), second.phone.key_id.hex().upper()}


async def test_phones_beyond_the_connection_bound_wait_their_turn(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ble_reader, "MAX_CONCURRENT_EXCHANGES", 1)
    phones = [await rig.phone() for _ in range(3)]
    rig.reader.start()

    reads = {(await rig.read()).value for _ in phones}

    assert reads == {sim.phone.key_id.hex().upper() for sim in phones}
    assert rig.reader.counts["deferred"] > 0


async def test_cooldown_gives_one_read_per_phone_then_another_after_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hearing a handful of adverts takes about 0.1 s: the cooldown outlasts that many times over.
    monkeypatch.setattr(ble_reader, "COOLDOWN_S", 2.0)
    sim = await rig.phone()
    rig.reader.start()
    loop = asyncio.get_running_loop()

    await rig.read()
    await rig.heard(5)  # the phone stays in front of the reader...
    heard_at = loop.time()
    await rig.read()  # ...and presents again once the cooldown is over

    first, second = rig.read_at  # taken as each read was handed over, not when the test woke
    assert heard_at - first < ble_reader.COOLDOWN_S  # it was heard within the cooldown...
    assert second - first >= ble_reader.COOLDOWN_S  # ...yet presented no second time in it
    assert sim.connections == 2


async def test_a_new_address_with_the_same_ephemeral_id_is_the_same_phone(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ble_reader, "COOLDOWN_S", ENDLESS_COOLDOWN_S)
    sim = await rig.phone()
    rig.reader.start()
    await rig.read()
    loop = asyncio.get_running_loop()
    read_at = loop.time()

    before = sim.peripheral.address
    await sim.peripheral.rotate_address()  # the MAC rotates, the ephemeral id does not
    assert sim.peripheral.address != before
    await rig.heard(10)

    assert loop.time() - read_at < ble_reader.COOLDOWN_S
    assert rig.reads.empty()
    assert sim.connections == 1


async def test_a_rotated_ephemeral_id_is_a_new_presentation(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ble_reader, "COOLDOWN_S", ENDLESS_COOLDOWN_S)
    sim = await rig.phone()
    rig.reader.start()
    first = await rig.read()

    await sim.rotate()

    read = await rig.read()  # no cooldown: the id is new (the reader cannot link the two)
    assert read.value == sim.phone.key_id.hex().upper()
    assert parse_proof(read.proof).transcript.ephemeral_id != (
        parse_proof(first.proof).transcript.ephemeral_id
    )


async def test_the_phones_own_rotation_reaches_the_advertisement(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim_phone, "REFRESH_S", 0.02)
    monkeypatch.setattr(ble_reader, "COOLDOWN_S", ENDLESS_COOLDOWN_S)
    phone = ReferencePhone.generate(
        {rig.identity.reader_id: rig.identity.public_key}, rotate_every_s=0.2
    )
    await rig.phone(phone)
    rig.reader.start()
    loop = asyncio.get_running_loop()

    first = await rig.read()
    first_at = loop.time()
    second = await rig.read()  # a new ephemeral id after 0.2 s: the cooldown does not apply

    assert loop.time() - first_at < ble_reader.COOLDOWN_S
    assert first.value == second.value == phone.key_id.hex().upper()
    assert parse_proof(first.proof).transcript.ephemeral_id != (
        parse_proof(second.proof).transcript.ephemeral_id
    )


# --- failures -------------------------------------------------------------------------------------


async def test_a_phone_that_stalls_mid_exchange_times_out_and_the_next_phone_still_reads(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ble_reader, "STEP_TIMEOUT_S", 0.2)  # the stalled step: time out soon
    stalling = await rig.phone(stall_after=2)  # answers message 1 and 2, never message 3
    rig.reader.start()

    await until(lambda: rig.reader.counts["failed_timeout"] >= 1)
    await until(lambda: not stalling.connected)  # torn down, not left hanging
    assert rig.reads.empty()
    await stalling.stop()

    # The next phone answers: no short timeout may cut it off on a loaded machine.
    monkeypatch.setattr(ble_reader, "STEP_TIMEOUT_S", WAIT_S)
    healthy = await rig.phone()
    read = await rig.read()
    assert read.value == healthy.phone.key_id.hex().upper()
    assert rig.reader.state is ReaderState.SCANNING


async def test_garbage_and_truncated_adverts_are_ignored_and_counted(rig: Rig) -> None:
    garbage = await rig.radio.add_peripheral("garbage", rssi_dbm=-30)
    await garbage.advertise(
        advertising_payload(service_data=[(SERVICE_UUID, b"\x01\x02\x03")]),  # truncated
        scan_response_payload(service_uuids=[SERVICE_UUID]),
        interval_ms=INTERVAL_MS,
    )
    wrong_version = await rig.radio.add_peripheral("v9", rssi_dbm=-30)
    await wrong_version.advertise(
        advertising_payload(service_data=[(SERVICE_UUID, b"\x09" + bytes(8))]),
        scan_response_payload(service_uuids=[SERVICE_UUID]),
        interval_ms=INTERVAL_MS,
    )
    no_data = await rig.radio.add_peripheral("bare", rssi_dbm=-30)
    await no_data.advertise(
        scan_response_payload(service_uuids=[SERVICE_UUID]), interval_ms=INTERVAL_MS
    )
    rig.reader.start()

    await until(lambda: rig.reader.counts["adverts_ignored"] >= 10)
    await until(lambda: rig.reader.counts["adverts_without_id"] >= 3)
    assert rig.reader.counts["exchanges"] == 0

    sim = await rig.phone()  # a real phone among them still reads
    assert (await rig.read()).value == sim.phone.key_id.hex().upper()


async def test_a_phone_not_enrolled_with_this_reader_refuses_and_nothing_is_read(
    rig: Rig,
) -> None:
    other = ReaderIdentity.generate()
    sim = await rig.phone(ReferencePhone.generate({other.reader_id: other.public_key}))
    rig.reader.start()

    await until(lambda: rig.reader.counts["failed_refused"] >= 2)  # and it is retried later

    assert rig.reads.empty()
    assert sim.phone.last_error is not None
    assert "not one this phone was enrolled with" in sim.phone.last_error
    await until(lambda: not sim.connected)


async def test_a_phone_leaving_mid_exchange_counts_as_disconnected(rig: Rig) -> None:
    sim = await rig.phone(stall_after=3)  # holds message 4 back...
    rig.reader.start()
    await until(lambda: sim.answered >= 3)

    await sim.stop()  # ...and walks off with the link

    await until(lambda: rig.reader.counts["failed_disconnected"] >= 1)
    assert rig.reads.empty()
    assert not sim.peripheral.device.is_advertising  # gone: not back after the disconnection

    sim.stall_after = None
    await sim.start()  # it comes back, in working order
    assert (await rig.read()).value == sim.phone.key_id.hex().upper()


async def test_stop_is_prompt_with_an_exchange_in_flight_and_disconnects(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stalled exchange would run into these long after the bound below: stop() must not
    # wait for them (it takes milliseconds; the bound only has to tell the two apart).
    monkeypatch.setattr(ble_reader, "STEP_TIMEOUT_S", 6 * WAIT_S)
    monkeypatch.setattr(ble_reader, "EXCHANGE_TIMEOUT_S", 6 * WAIT_S)
    sim = await rig.phone(stall_after=1)
    rig.reader.start()
    await until(lambda: sim.connected and sim.answered >= 1)
    loop = asyncio.get_running_loop()

    started = loop.time()
    await rig.reader.stop()

    assert loop.time() - started < WAIT_S
    assert rig.reader.state is ReaderState.STOPPED
    await until(lambda: not sim.connected)
    assert not [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("ble-")]
    await rig.reader.stop()  # idempotent


async def test_a_phone_disconnected_mid_exchange_keeps_no_stale_reply(rig: Rig) -> None:
    sim = await rig.phone(stall_after=3)  # prepares message 4, then holds it back...
    rig.reader.start()
    await until(lambda: sim.answered >= 3)

    await rig.reader.stop()  # ...and the reader leaves with it unread
    await until(lambda: not sim.connected)
    assert rig.reads.empty()

    # Whoever connects next reads nothing: the prepared message 4 went with the link.
    sim.stall_after = None
    address = sim.peripheral.address.to_string(with_type_qualifier=False)
    async with BleakClient(address, backend=rig.central.client_backend, timeout=WAIT_S) as client:
        assert await client.read_gatt_char(PHONE_TO_READER_UUID) == b""

    rig.reader.start()  # and a fresh exchange is answered as usual
    read = await rig.read()
    assert read.value == sim.phone.key_id.hex().upper()
    proof = parse_proof(read.proof)
    assert proof.key_id == sim.phone.key_id
    assert rig.challenges.redeem(proof.transcript.nonce)  # this exchange's nonce, fresh


async def test_start_is_idempotent_and_stop_before_start_is_harmless(rig: Rig) -> None:
    reader = rig.make_reader(TOUCH_DBM)
    await reader.stop()
    reader.start()
    reader.start()
    await until(lambda: reader.state is ReaderState.SCANNING)
    await reader.stop()
    assert reader.state is ReaderState.STOPPED


async def test_feedback_is_accepted_and_shows_nothing(rig: Rig) -> None:
    rig.reader.feedback(DOOR, Feedback.GRANTED)


class _NoAdapter(BaseBleakScanner):
    """A scanner backend whose adapter is missing."""

    starts = 0

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        *_args: Any,
        **_kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)

    async def start(self) -> None:
        type(self).starts += 1
        raise BleakError("no Bluetooth adapter")

    async def stop(self) -> None:
        raise AssertionError("never started")


async def test_a_missing_adapter_is_retried_with_backoff_and_stop_still_works(rig: Rig) -> None:
    reader = BleReader(DOOR, NEAR_DBM, rig.identity, rig.challenges, scanner_backend=_NoAdapter)
    reader.start()

    await until(lambda: _NoAdapter.starts >= 3)
    waiting = reader.state
    await reader.stop()
    assert (waiting, reader.state) == (ReaderState.WAITING, ReaderState.STOPPED)
