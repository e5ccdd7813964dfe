"""The bleak backends on bumble: bleak's public API against plain bumble peripherals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, gatt
from bumble.device import Connection

from drivers import bleak_bumble
from drivers.bleak_bumble import (
    BumbleCentral,
    VirtualPeripheral,
    VirtualRadio,
    advertising_payload,
    rssi_at_distance,
    scan_response_payload,
)

SERVICE = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0"
OTHER_SERVICE = "11111111-2222-4333-8444-555555555555"
ECHO = "0f1e2d3d-4b5a-4978-8695-a4b3c2d1e0f0"  # read returns what was last written
COUNTER = "0f1e2d3e-4b5a-4978-8695-a4b3c2d1e0f0"  # notifies on every write to ECHO
LOCKED = "0f1e2d3f-4b5a-4978-8695-a4b3c2d1e0f0"  # reads fail with an ATT error
STALL = "0f1e2d40-4b5a-4978-8695-a4b3c2d1e0f0"  # reads never answer (until released)
WAIT_S = 5.0  # upper bound for one expected event; the happy path takes milliseconds


@pytest.fixture
async def radio() -> AsyncIterator[VirtualRadio]:
    async with VirtualRadio() as radio:
        yield radio


@pytest.fixture
async def central(radio: VirtualRadio) -> BumbleCentral:
    return await radio.add_central()


class EchoServer:
    """A plain bumble GATT server: the test's peripheral."""

    def __init__(self, peripheral: VirtualPeripheral) -> None:
        self.peripheral = peripheral
        self.value = b"initial"
        self.writes: list[bytes] = []
        self.written = asyncio.Event()
        self.stalled: set[asyncio.Future[bytes]] = set()
        self.stalling = asyncio.Event()  # a read of STALL reached the server
        self.counter = gatt.Characteristic(
            COUNTER,
            gatt.Characteristic.Properties.NOTIFY,
            gatt.Characteristic.READABLE,
            b"\x00",
        )
        echo: gatt.Characteristic[bytes] = gatt.Characteristic(
            ECHO,
            gatt.Characteristic.Properties.READ
            | gatt.Characteristic.Properties.WRITE
            | gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            gatt.Characteristic.READABLE | gatt.Characteristic.WRITEABLE,
            gatt.CharacteristicValue[bytes](read=self._read, write=self._write),
        )
        locked: gatt.Characteristic[bytes] = gatt.Characteristic(
            LOCKED,
            gatt.Characteristic.Properties.READ,
            gatt.Characteristic.READABLE,
            gatt.CharacteristicValue[bytes](read=self._refuse),
        )
        stall: gatt.Characteristic[bytes] = gatt.Characteristic(
            STALL,
            gatt.Characteristic.Properties.READ,
            gatt.Characteristic.READABLE,
            gatt.CharacteristicValue[bytes](read=self._stall),
        )
        peripheral.device.add_service(gatt.Service(SERVICE, [echo, self.counter, locked, stall]))

    async def advertise(self, service_data: bytes = b"\x01\x02") -> None:
        await self.peripheral.advertise(
            advertising_payload(service_data=[(SERVICE, service_data)]),
            scan_response_payload(service_uuids=[SERVICE], local_name="echo"),
            interval_ms=20,
        )

    def _read(self, _connection: Connection) -> bytes:
        return self.value

    def _write(self, _connection: Connection, value: bytes) -> None:
        self.value = value
        self.writes.append(value)
        self.written.set()
        asyncio.get_running_loop().create_task(
            self.peripheral.device.notify_subscribers(self.counter, bytes([len(self.writes)]))
        )

    def _refuse(self, _connection: Connection) -> bytes:
        raise att.ATT_Error(att.ErrorCode.INSUFFICIENT_AUTHORIZATION)

    async def _stall(self, _connection: Connection) -> bytes:
        stalled: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.stalled.add(stalled)
        self.stalling.set()
        return await stalled

    def abandon_stalled(self) -> None:
        """Drop the unanswered requests (after the link is gone: nobody to answer)."""
        for stalled in self.stalled:
            stalled.cancel()


async def first_advert(
    central: BumbleCentral, service_uuids: list[str] | None = None
) -> tuple[BLEDevice, AdvertisementData]:
    """The first advertisement a bleak scanner on ``central`` reports."""
    found: asyncio.Future[tuple[BLEDevice, AdvertisementData]] = (
        asyncio.get_running_loop().create_future()
    )

    def detected(device: BLEDevice, data: AdvertisementData) -> None:
        if not found.done():
            found.set_result((device, data))

    scanner = BleakScanner(detected, service_uuids, backend=central.scanner_backend)
    async with scanner:
        async with asyncio.timeout(WAIT_S):
            return await found


def connected(client: BleakClient) -> bool:
    """Whether ``client`` is connected (a call, so that type narrowing does not stick)."""
    return client.is_connected


def test_distance_model_meets_the_published_reference_points() -> None:
    assert rssi_at_distance(0.75) == pytest.approx(-45, abs=1)  # 2-3 ft
    assert rssi_at_distance(2.3) == pytest.approx(-60, abs=1)  # 7-8 ft
    assert rssi_at_distance(0.35) >= -35  # touching the reader
    with pytest.raises(ValueError, match="positive"):
        rssi_at_distance(0)


async def test_scanner_reports_service_data_uuids_name_and_the_simulated_rssi(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral(rssi_dbm=-42)
    await EchoServer(peripheral).advertise(b"\xaa\xbb")

    device, data = await first_advert(central, [SERVICE])

    assert device.address == peripheral.address.to_string(with_type_qualifier=False)
    assert data.service_uuids == [SERVICE]
    assert data.service_data == {SERVICE: b"\xaa\xbb"}
    assert data.local_name == "echo"
    assert data.rssi == -42

    peripheral.set_distance(2.3)
    _, data = await first_advert(central, [SERVICE])
    assert data.rssi == rssi_at_distance(2.3)


async def test_a_peripheral_below_the_receiver_sensitivity_is_not_heard(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    faint = await radio.add_peripheral(rssi_dbm=bleak_bumble.RECEIVER_SENSITIVITY_DBM - 1)
    await EchoServer(faint).advertise(b"faint")
    loud = await radio.add_peripheral(rssi_dbm=-60)
    await EchoServer(loud).advertise(b"loud")
    heard: list[bytes] = []
    enough = asyncio.Event()

    def detected(_device: BLEDevice, data: AdvertisementData) -> None:
        heard.append(data.service_data[SERVICE])
        if len(heard) >= 10:
            enough.set()

    async with BleakScanner(detected, [SERVICE], backend=central.scanner_backend):
        await asyncio.wait_for(enough.wait(), WAIT_S)
    assert set(heard) == {b"loud"}

    faint.rssi_dbm = bleak_bumble.RECEIVER_SENSITIVITY_DBM  # a step closer: just heard
    # One scanner, waiting for the faint one: which of two advertisers a fresh scanner hears
    # first depends on the phase of their timers, and can stay "loud" scanner after scanner.
    just_heard: asyncio.Future[AdvertisementData] = asyncio.get_running_loop().create_future()

    def faint_heard(_device: BLEDevice, data: AdvertisementData) -> None:
        if data.service_data[SERVICE] == b"faint" and not just_heard.done():
            just_heard.set_result(data)

    async with BleakScanner(faint_heard, [SERVICE], backend=central.scanner_backend):
        data = await asyncio.wait_for(just_heard, WAIT_S)
    assert data.rssi == bleak_bumble.RECEIVER_SENSITIVITY_DBM


async def test_rssi_jitter_is_seeded_and_bounded(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral(rssi_dbm=-50)
    peripheral.jitter_db = 4
    await EchoServer(peripheral).advertise()
    seen: list[int] = []
    enough = asyncio.Event()

    def detected(_device: BLEDevice, data: AdvertisementData) -> None:
        seen.append(data.rssi)
        if len(seen) >= 10:
            enough.set()

    async with BleakScanner(detected, [SERVICE], backend=central.scanner_backend):
        await asyncio.wait_for(enough.wait(), WAIT_S)
    assert all(-54 <= rssi <= -46 for rssi in seen)
    assert len(set(seen)) > 1


async def test_the_service_filter_drops_other_advertisers(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    other = await radio.add_peripheral()
    await other.advertise(
        advertising_payload(service_data=[(OTHER_SERVICE, b"x")]),
        scan_response_payload(service_uuids=[OTHER_SERVICE]),
        interval_ms=20,
    )
    ours = await radio.add_peripheral()
    await EchoServer(ours).advertise()

    for _ in range(5):
        device, _data = await first_advert(central, [SERVICE])
        assert device.address == ours.address.to_string(with_type_qualifier=False)
    _device, data = await first_advert(central, [OTHER_SERVICE])
    assert data.service_data == {OTHER_SERVICE: b"x"}


async def test_16_bit_uuids_manufacturer_data_and_tx_power_are_reported(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral()
    await peripheral.advertise(
        bytes([3, 0x03, 0x0D, 0x18])  # complete list of 16-bit UUIDs: heart rate (0x180D)
        + bytes([5, 0x16, 0x0D, 0x18, 0xAB, 0xCD])  # 16-bit service data
        + bytes([5, 0xFF, 0x4C, 0x00, 0x01, 0x02])  # manufacturer data, company 0x004C
        + bytes([2, 0x0A, 0xF8]),  # TX power -8 dBm
        interval_ms=20,
    )
    heart_rate = "0000180d-0000-1000-8000-00805f9b34fb"

    _device, data = await first_advert(central, [heart_rate])

    assert data.service_uuids == [heart_rate]
    assert data.service_data == {heart_rate: b"\xab\xcd"}
    assert data.manufacturer_data == {0x004C: b"\x01\x02"}
    assert data.tx_power == -8


async def test_payloads_a_phone_could_not_send_are_refused(radio: VirtualRadio) -> None:
    peripheral = await radio.add_peripheral()
    too_long = advertising_payload(
        service_data=[(SERVICE, b"\x01" * 9)], service_uuids=[SERVICE]
    )  # service data and UUID list do not fit together
    with pytest.raises(ValueError, match="at most 31"):
        await peripheral.advertise(too_long)


async def test_malformed_ad_structures_are_skipped_not_raised(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral()
    # A 128-bit service-data structure too short to hold its UUID, then a length running past
    # the end, after a good UUID list.
    good_uuids = scan_response_payload(service_uuids=[SERVICE])
    await peripheral.advertise(
        good_uuids + bytes([5, 0x21, 1, 2, 3, 4]) + bytes([9, 0x16, 1]), interval_ms=20
    )

    _device, data = await first_advert(central, [SERVICE])
    assert data.service_uuids == [SERVICE]
    assert data.service_data == {}


async def test_connect_discover_read_write_notify_disconnect(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral()
    server = EchoServer(peripheral)
    await server.advertise()
    device, _ = await first_advert(central, [SERVICE])
    disconnected = asyncio.Event()

    client = BleakClient(
        device,
        lambda _client: disconnected.set(),
        backend=central.client_backend,
        timeout=WAIT_S,
    )
    await client.connect()
    try:
        assert client.is_connected
        assert client.mtu_size == bleak_bumble.CLIENT_ATT_MTU
        service = client.services.get_service(SERVICE)
        assert service is not None
        echo = service.get_characteristic(ECHO)
        assert echo is not None
        assert set(echo.properties) == {"read", "write", "write-without-response"}
        counter = client.services.get_characteristic(COUNTER)
        assert counter is not None
        assert [d.uuid for d in counter.descriptors] == ["00002902-0000-1000-8000-00805f9b34fb"]

        notified: asyncio.Queue[bytearray] = asyncio.Queue()
        await client.start_notify(COUNTER, lambda _char, data: notified.put_nowait(data))

        assert await client.read_gatt_char(ECHO) == b"initial"
        long_value = bytes(range(256)) * 2  # longer than one ATT PDU at the default MTU
        await client.write_gatt_char(ECHO, long_value, response=True)
        assert await client.read_gatt_char(ECHO) == long_value
        assert await asyncio.wait_for(notified.get(), WAIT_S) == b"\x01"

        await client.stop_notify(COUNTER)
        server.written.clear()
        await client.write_gatt_char(ECHO, b"command", response=False)
        await asyncio.wait_for(server.written.wait(), WAIT_S)
        assert server.value == b"command"
        assert notified.empty()
    finally:
        await client.disconnect()
    assert not connected(client)
    assert disconnected.is_set()
    await client.disconnect()  # idempotent
    assert not peripheral.device.connections  # the peer saw the link go


async def test_att_errors_become_bleak_gatt_protocol_errors(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral()
    await EchoServer(peripheral).advertise()
    device, _ = await first_advert(central, [SERVICE])

    async with BleakClient(device, backend=central.client_backend, timeout=WAIT_S) as client:
        with pytest.raises(BleakGATTProtocolError) as caught:
            await client.read_gatt_char(LOCKED)
        assert caught.value.args  # the ATT error code travels
        await client.disconnect()
        # bleak's facade answers before the backend: the services went with the connection.
        with pytest.raises(BleakError, match="Service Discovery has not been performed"):
            await client.read_gatt_char(ECHO)


async def test_peer_disconnecting_mid_read_is_a_bleak_error_and_calls_back(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral()
    server = EchoServer(peripheral)
    await server.advertise()
    device, _ = await first_advert(central, [SERVICE])
    disconnected = asyncio.Event()
    client = BleakClient(
        device, lambda _c: disconnected.set(), backend=central.client_backend, timeout=WAIT_S
    )
    await client.connect()

    read = asyncio.create_task(client.read_gatt_char(STALL))
    await asyncio.wait_for(server.stalling.wait(), WAIT_S)  # the read is with the server now
    for connection in list(peripheral.device.connections.values()):
        await connection.disconnect()
    with pytest.raises(BleakError, match="disconnected"):
        await asyncio.wait_for(read, WAIT_S)
    assert disconnected.is_set()
    assert not client.is_connected
    server.abandon_stalled()


async def test_a_stalled_read_is_cancelled_by_the_callers_timeout(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral()
    server = EchoServer(peripheral)
    await server.advertise()
    device, _ = await first_advert(central, [SERVICE])

    async with BleakClient(device, backend=central.client_backend, timeout=WAIT_S) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.read_gatt_char(STALL)
        assert client.is_connected
    server.abandon_stalled()


async def test_connect_times_out_and_the_next_connect_still_works(
    radio: VirtualRadio, central: BumbleCentral, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were the cancelled attempt not confirmed by the controller, withdrawing it would wait
    # this long: far beyond the bound below, which a confirmed cancel (milliseconds) meets.
    monkeypatch.setattr(bleak_bumble, "CONNECT_CANCEL_TIMEOUT_S", 6 * WAIT_S)
    peripheral = await radio.add_peripheral()
    await EchoServer(peripheral).advertise()
    device, _ = await first_advert(central, [SERVICE])
    await peripheral.stop_advertising()

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await BleakClient(device, backend=central.client_backend, timeout=0.2).connect()
    assert loop.time() - started < WAIT_S

    await peripheral.advertise(
        advertising_payload(service_data=[(SERVICE, b"\x01")]),
        scan_response_payload(service_uuids=[SERVICE]),
        interval_ms=20,
    )
    async with BleakClient(device, backend=central.client_backend, timeout=WAIT_S) as client:
        assert await client.read_gatt_char(ECHO) == b"initial"


async def test_two_clients_connect_at_once(radio: VirtualRadio, central: BumbleCentral) -> None:
    servers = [EchoServer(await radio.add_peripheral(f"p{i}")) for i in range(2)]
    for index, server in enumerate(servers):
        server.value = f"server {index}".encode()
        await server.advertise()
    devices = {
        s.peripheral.address.to_string(with_type_qualifier=False): s.peripheral for s in servers
    }

    async def talk(address: str) -> bytes:
        async with BleakClient(address, backend=central.client_backend, timeout=WAIT_S) as client:
            return bytes(await client.read_gatt_char(ECHO))

    values = await asyncio.gather(*(talk(address) for address in devices))
    assert sorted(values) == [b"server 0", b"server 1"]


async def test_scanner_start_and_stop_are_idempotent_and_scanners_share_the_radio(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral()
    await EchoServer(peripheral).advertise()
    heard = asyncio.Event()
    first = BleakScanner(lambda _device, _data: heard.set(), backend=central.scanner_backend)
    await first.start()
    await first.start()
    _device, _data = await first_advert(central, [SERVICE])  # a second scanner comes and goes
    assert central.device.is_scanning
    heard.clear()
    await asyncio.wait_for(heard.wait(), WAIT_S)  # the first still hears after it left
    assert first.discovered_devices
    await first.stop()
    await first.stop()
    assert not central.device.is_scanning


async def test_an_address_rotation_is_seen_as_a_new_device(
    radio: VirtualRadio, central: BumbleCentral
) -> None:
    peripheral = await radio.add_peripheral()
    await EchoServer(peripheral).advertise(b"\x07")
    before, _ = await first_advert(central, [SERVICE])

    await peripheral.rotate_address()

    after, data = await first_advert(central, [SERVICE])
    assert after.address != before.address
    assert data.service_data == {SERVICE: b"\x07"}
    async with BleakClient(after, backend=central.client_backend, timeout=WAIT_S) as client:
        assert await client.read_gatt_char(ECHO) == b"initial"
