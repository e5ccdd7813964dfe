"""bleak backends on bumble, and a virtual radio for them: BLE without kernel Bluetooth.

``VirtualRadio`` is one shared medium (a bumble ``LocalLink``) on which every device has its own
emulated controller and host: ``add_central()`` gives the gateway's side, ``add_peripheral()``
a device that advertises (a simulated phone, or a test's hand-made advertiser).

``BumbleCentral`` turns a bumble ``Device`` into what bleak calls an adapter: its
``scanner_backend`` and ``client_backend`` are ``BaseBleakScanner`` / ``BaseBleakClient``
subclasses bound to that device, for ``BleakScanner(..., backend=...)`` and
``BleakClient(..., backend=...)``. Code written against bleak's public API runs unchanged on
them, and on BlueZ with ``backend=None``. (A ``Device`` on a real HCI transport works too.)

The radio's controllers add what bumble's emulated controller leaves out and a scanner needs:

- **RSSI.** Every advertising report carries the RSSI of its advertiser's ``VirtualPeripheral``
  (``rssi_dbm``, optionally with seeded jitter; ``rssi_at_distance`` is a path-loss model). It
  is written into the HCI report, so the whole host and bleak path carries it as it would a
  measured value; below ``RECEIVER_SENSITIVITY_DBM`` nothing is heard. The emulated controller
  alone reports -50 dBm for everything.
- **Scan responses** carry the advertiser's scan response data (the emulated controller echoes
  the advertising data instead).
- **Connection cancel** completes the pending attempt (LE Connection Complete, status Unknown
  Connection Identifier), as the specification says; otherwise a timed-out connect would hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Literal, TypeVar

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core, gatt_client, hci
from bumble.controller import Controller
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

#: What bumble's emulated controller reports for every advertisement, and our default.
DEFAULT_RSSI_DBM = -50
#: Weaker packets are not heard at all (a typical BLE receiver's sensitivity).
RECEIVER_SENSITIVITY_DBM = -100
#: Log-distance path loss, fitted to the published reference points (about -45 dBm at 2-3 ft,
#: -60 dBm at 7-8 ft); a phone "touching" the reader (-35 dBm) is then about 0.35 m away.
RSSI_AT_1M_DBM = -49.0
PATH_LOSS_EXPONENT = 3.0
#: The ATT MTU the client asks for after connecting, as BlueZ does (the largest allowed).
CLIENT_ATT_MTU = 517
DISCONNECT_TIMEOUT_S = 2.0
#: How long to wait for the controller to confirm a cancelled connection attempt.
CONNECT_CANCEL_TIMEOUT_S = 1.0
DEFAULT_ADVERTISING_INTERVAL_MS = 100.0
#: Legacy advertising PDUs carry at most 31 bytes of data (Core Vol 6, Part B, 2.3.1.1).
LEGACY_ADVERTISING_MAX_BYTES = 31

_FLAGS_LE_GENERAL_NO_BR_EDR = 0x06  # LE General Discoverable | BR/EDR Not Supported
_ATT_MIN_MTU = 23

_PROPERTY_NAMES: tuple[tuple[int, CharacteristicPropertyName], ...] = (
    (0x01, "broadcast"),
    (0x02, "read"),
    (0x04, "write-without-response"),
    (0x08, "write"),
    (0x10, "notify"),
    (0x20, "indicate"),
    (0x40, "authenticated-signed-writes"),
    (0x80, "extended-properties"),
)


def rssi_at_distance(distance_m: float) -> int:
    """The RSSI (dBm) a central sees from a phone ``distance_m`` metres away (log-distance)."""
    if distance_m <= 0:
        raise ValueError(f"a distance must be positive, got {distance_m} m")
    return round(RSSI_AT_1M_DBM - 10 * PATH_LOSS_EXPONENT * math.log10(distance_m))


def bleak_uuid(value: core.UUID) -> str:
    """A bumble UUID as bleak writes UUIDs: 128-bit, lower case, dashed."""
    return str(uuid.UUID(bytes=value.uuid_128_bytes[::-1]))


def advertising_payload(
    *, service_data: Iterable[tuple[str, bytes]] = (), service_uuids: Iterable[str] = ()
) -> bytes:
    """AD structures: flags, 128-bit service data, then the complete 128-bit UUID list if any."""
    flags = bytes([2, core.AdvertisingData.FLAGS, _FLAGS_LE_GENERAL_NO_BR_EDR])
    return flags + _structures(service_data=service_data, service_uuids=service_uuids)


def scan_response_payload(*, service_uuids: Iterable[str] = (), local_name: str = "") -> bytes:
    """AD structures for a scan response: the complete 128-bit UUID list and a local name."""
    data = _structures(service_uuids=service_uuids)
    if local_name:
        name = local_name.encode()
        data += bytes([len(name) + 1, core.AdvertisingData.COMPLETE_LOCAL_NAME]) + name
    return data


def _structures(
    *, service_data: Iterable[tuple[str, bytes]] = (), service_uuids: Iterable[str] = ()
) -> bytes:
    data = b""
    for service, payload in service_data:
        body = uuid.UUID(service).bytes[::-1] + payload  # little-endian on the air
        data += bytes([len(body) + 1, core.AdvertisingData.SERVICE_DATA_128_BIT_UUID]) + body
    uuids = b"".join(uuid.UUID(u).bytes[::-1] for u in service_uuids)
    if uuids:
        data += bytes(
            [len(uuids) + 1, core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS]
        )
        data += uuids
    return data


# --- The radio ----------------------------------------------------------------------------------


class _RadioController(Controller):
    """An emulated controller that reports RSSI and scan responses as the radio says."""

    def __init__(self, radio: VirtualRadio, name: str, address: hci.Address) -> None:
        super().__init__(name, link=radio.link, public_address=address)
        self._radio = radio

    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        """Send ``packet`` to the host, advertising reports rewritten as the radio hears them."""
        if isinstance(packet, hci.HCI_LE_Advertising_Report_Event):
            legacy = [self._radio.heard(report) for report in packet.reports]
            packet = hci.HCI_LE_Advertising_Report_Event([r for r in legacy if r is not None])
            if not packet.reports:
                return
        elif isinstance(packet, hci.HCI_LE_Extended_Advertising_Report_Event):
            extended = [self._radio.heard_extended(report) for report in packet.reports]
            packet = hci.HCI_LE_Extended_Advertising_Report_Event(
                [r for r in extended if r is not None]
            )
            if not packet.reports:
                return
        super().send_hci_packet(packet)

    def on_hci_le_create_connection_cancel_command(
        self, _command: hci.HCI_LE_Create_Connection_Cancel_Command
    ) -> hci.HCI_StatusReturnParameters:
        """Cancel the pending connection attempt and report it failed (Vol 4, Part E, 7.8.13)."""
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        failed = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address.address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # After the Command Complete that our return value becomes, as on a real controller.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, failed)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)

    def scan_response(self, address: hci.Address) -> bytes | None:
        """The scan response data if this controller advertises as ``address`` now, else None."""
        legacy = self.le_legacy_advertiser
        if legacy.enabled and legacy.address == address:
            return legacy.scan_response_data
        for advertising_set in self.advertising_sets.values():
            if advertising_set.enabled and advertising_set.address == address:
                return bytes(advertising_set.scan_response_data)
        return None


class VirtualRadio:
    """One shared radio medium (a bumble LocalLink) for in-process BLE centrals and peripherals."""

    def __init__(self, *, seed: int = 0) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]  # bumble leaves it unannotated
        self._controllers: list[_RadioController] = []
        self._peripherals: dict[_RadioController, VirtualPeripheral] = {}
        self._devices: list[Device] = []
        self._next_address = 1
        self._rng = random.Random(seed)  # noqa: S311  # simulated RSSI jitter, not secrecy

    async def add_central(self, name: str = "gateway") -> BumbleCentral:
        """A powered-on central (the gateway's adapter) with bleak backends bound to it."""
        device = await self._add_device(name)
        return BumbleCentral(device)

    async def add_peripheral(
        self, name: str = "peripheral", *, rssi_dbm: int = DEFAULT_RSSI_DBM
    ) -> VirtualPeripheral:
        """A powered-on peripheral, heard at ``rssi_dbm`` until told otherwise."""
        device = await self._add_device(name)
        controller = self._controllers[-1]
        peripheral = VirtualPeripheral(
            device,
            rssi_dbm=rssi_dbm,
            rng=random.Random(self._rng.random()),  # noqa: S311
        )
        self._peripherals[controller] = peripheral
        return peripheral

    @property
    def devices(self) -> int:
        """How many devices are on the radio (the central and the peripherals)."""
        return len(self._devices)

    async def close(self) -> None:
        """Power every device off and leave the link (idempotent)."""
        devices, self._devices = self._devices, []
        for peripheral in self._peripherals.values():
            await peripheral.stop_advertising()
        for device in devices:
            with contextlib.suppress(Exception):  # a device that failed to start stops anyway
                await device.power_off()
        for controller in self._controllers:
            self.link.remove_controller(controller)
        self._controllers.clear()
        self._peripherals.clear()

    async def __aenter__(self) -> VirtualRadio:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def heard(
        self, report: hci.HCI_LE_Advertising_Report_Event.Report
    ) -> hci.HCI_LE_Advertising_Report_Event.Report | None:
        """A legacy report as a receiver hears it (None: too weak to be heard)."""
        found = self._advertiser(report.address)
        if found is None:
            return report
        controller, scan_response = found
        rssi = self._rssi(controller)
        if rssi < RECEIVER_SENSITIVITY_DBM:
            return None
        if report.event_type == hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP:
            return dataclasses.replace(report, rssi=rssi, data=scan_response)
        return dataclasses.replace(report, rssi=rssi)

    def heard_extended(
        self, report: hci.HCI_LE_Extended_Advertising_Report_Event.Report
    ) -> hci.HCI_LE_Extended_Advertising_Report_Event.Report | None:
        """An extended report as a receiver hears it (None: too weak to be heard)."""
        found = self._advertiser(report.address)
        if found is None:
            return report
        controller, scan_response = found
        rssi = self._rssi(controller)
        if rssi < RECEIVER_SENSITIVITY_DBM:
            return None
        scan_rsp = hci.HCI_LE_Extended_Advertising_Report_Event.EventType.SCAN_RESPONSE
        if report.event_type & scan_rsp:
            return dataclasses.replace(report, rssi=rssi, data=scan_response)
        return dataclasses.replace(report, rssi=rssi)

    def _advertiser(self, address: hci.Address) -> tuple[_RadioController, bytes] | None:
        for controller in self._controllers:
            scan_response = controller.scan_response(address)
            if scan_response is not None:
                return controller, scan_response
        return None

    def _rssi(self, controller: _RadioController) -> int:
        peripheral = self._peripherals.get(controller)
        return DEFAULT_RSSI_DBM if peripheral is None else peripheral.heard_rssi()

    async def _add_device(self, name: str) -> Device:
        # Static random addresses (two top bits set), distinct and readable: C0:00:00:00:00:01...
        address = hci.Address(
            "C0:" + ":".join(f"{b:02X}" for b in self._next_address.to_bytes(5, "big")),
            hci.Address.RANDOM_DEVICE_ADDRESS,
        )
        self._next_address += 1
        controller = _RadioController(self, name, address)
        device = Device(
            name=name, address=address, host=Host(controller, AsyncPipeSink(controller))
        )
        await device.power_on()
        self._controllers.append(controller)
        self._devices.append(device)
        return device


class VirtualPeripheral:
    """A device on the radio that advertises: its bumble Device and how loud it is heard."""

    def __init__(self, device: Device, *, rssi_dbm: int, rng: random.Random) -> None:
        self.device = device
        #: The RSSI a central hears this peripheral at (dBm), before jitter.
        self.rssi_dbm = rssi_dbm
        #: Each report is off by up to this many dB either way (seeded), as real RSSI is.
        self.jitter_db = 0.0
        self._rng = rng
        self._advertising_data = b""
        self._scan_response = b""
        self._interval_ms = DEFAULT_ADVERTISING_INTERVAL_MS

    @property
    def address(self) -> hci.Address:
        """The address it advertises as now (it changes with ``rotate_address``)."""
        return self.device.random_address

    def set_distance(self, distance_m: float) -> None:
        """Be heard as a phone ``distance_m`` metres from the central (see rssi_at_distance)."""
        self.rssi_dbm = rssi_at_distance(distance_m)

    def heard_rssi(self) -> int:
        """The RSSI of one received packet."""
        if not self.jitter_db:
            return self.rssi_dbm
        return round(self.rssi_dbm + self._rng.uniform(-self.jitter_db, self.jitter_db))

    async def advertise(
        self,
        advertising_data: bytes,
        scan_response: bytes = b"",
        *,
        interval_ms: float = DEFAULT_ADVERTISING_INTERVAL_MS,
    ) -> None:
        """Advertise (connectable, scannable) with these payloads, restarting after connections."""
        for what, payload in (
            ("advertising data", advertising_data),
            ("scan response", scan_response),
        ):
            if len(payload) > LEGACY_ADVERTISING_MAX_BYTES:
                # A phone could not send it: do not let a simulation rely on it either.
                raise ValueError(
                    f"{what} is {len(payload)} bytes; a legacy advertisement holds at most "
                    f"{LEGACY_ADVERTISING_MAX_BYTES}"
                )
        self._advertising_data = advertising_data
        self._scan_response = scan_response
        self._interval_ms = interval_ms
        await self.device.start_advertising(
            advertising_data=advertising_data,
            scan_response_data=scan_response,
            advertising_interval_min=interval_ms,
            advertising_interval_max=interval_ms,
            auto_restart=True,
        )

    async def stop_advertising(self) -> None:
        """Stop advertising, and do not resume after a connection (idempotent)."""
        # Also while connected, when the advertiser is paused: it would restart on disconnection.
        await self.device.stop_advertising()

    async def rotate_address(self) -> hci.Address:
        """Change to a new random static address, as phones do; advertising resumes on it."""
        advertising = self.device.is_advertising
        await self.stop_advertising()
        address = hci.Address.generate_static_address()
        await self.device.send_sync_command(
            hci.HCI_LE_Set_Random_Address_Command(random_address=address)
        )
        self.device.random_address = address
        self.device.static_address = address
        if advertising:
            await self.advertise(
                self._advertising_data, self._scan_response, interval_ms=self._interval_ms
            )
        return address


# --- bleak backends -------------------------------------------------------------------------------


class BumbleCentral:
    """A bumble Device as bleak's adapter: scanner and client backend classes bound to it."""

    def __init__(self, device: Device) -> None:
        self.device = device
        # The controller takes one connection attempt at a time (as BlueZ queues them).
        self._connect_lock = asyncio.Lock()
        self._scanners = 0
        self._scan_lock = asyncio.Lock()
        central = self

        class Scanner(BumbleScanner):
            _central = central

        class Client(BumbleClient):
            _central = central

        self.scanner_backend: type[BaseBleakScanner] = Scanner
        self.client_backend: type[BaseBleakClient] = Client

    async def acquire_scan(self) -> None:
        """Count one more scanner, starting the controller's (active) scan for the first."""
        async with self._scan_lock:
            if self._scanners == 0:
                await self.device.start_scanning(active=True, filter_duplicates=False)
            self._scanners += 1

    async def release_scan(self) -> None:
        """Count one scanner fewer, stopping the controller's scan after the last."""
        async with self._scan_lock:
            self._scanners -= 1
            if self._scanners == 0 and self.device.is_scanning:
                await self.device.stop_scanning()

    async def connect(self, address: hci.Address) -> Connection:
        """An LE connection to ``address``; a cancelled attempt is withdrawn from the controller."""
        async with self._connect_lock:
            try:
                return await self.device.connect_le(address, timeout=None)
            except asyncio.CancelledError:
                await self._withdraw(address)
                raise
            except core.BaseBumbleError as err:
                raise BleakError(f"cannot connect to {address}: {err}") from err

    async def _withdraw(self, address: hci.Address) -> None:
        try:
            async with asyncio.timeout(CONNECT_CANCEL_TIMEOUT_S):
                with contextlib.suppress(hci.HCI_Error):  # nothing was pending any more
                    await self.device.send_sync_command(
                        hci.HCI_LE_Create_Connection_Cancel_Command()
                    )
                # The attempt may have completed just before it was cancelled: drop it.
                orphan = self.device.find_connection_by_bd_addr(address)
                if orphan is not None:
                    await orphan.disconnect()
        except Exception:  # teardown of a cancelled attempt must not mask the cancellation
            _LOGGER.debug("withdrawing the connection attempt to %s failed", address, exc_info=True)


def _uuid_on_air(raw: bytes) -> str:
    """A 16-, 32- or 128-bit UUID as sent (little-endian), in bleak's form."""
    # Not bumble's UUID class: it registers every UUID it parses, and adverts are untrusted input.
    if len(raw) == 16:
        return str(uuid.UUID(bytes=raw[::-1]))
    return f"{int.from_bytes(raw, 'little'):08x}{_BLUETOOTH_BASE_UUID_TAIL}"


_BLUETOOTH_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"


def _advertisement_data(advertisement: Advertisement) -> AdvertisementData:
    """bleak's view of one bumble advertisement; malformed AD structures are skipped."""
    local_name: str | None = None
    manufacturer_data: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    service_uuids: list[str] = []
    tx_power: int | None = None
    for ad_type, payload in advertisement.data.ad_structures:
        size = _UUID_LIST_SIZES.get(ad_type)
        if size is not None:
            for at in range(0, len(payload) - size + 1, size):
                name = _uuid_on_air(payload[at : at + size])
                if name not in service_uuids:
                    service_uuids.append(name)
            continue
        size = _SERVICE_DATA_SIZES.get(ad_type)
        if size is not None:
            if len(payload) >= size:
                service_data[_uuid_on_air(payload[:size])] = payload[size:]
            continue
        if ad_type in (
            core.AdvertisingData.COMPLETE_LOCAL_NAME,
            core.AdvertisingData.SHORTENED_LOCAL_NAME,
        ):
            local_name = payload.decode("utf-8", errors="replace")
        elif ad_type == core.AdvertisingData.MANUFACTURER_SPECIFIC_DATA and len(payload) >= 2:
            manufacturer_data[int.from_bytes(payload[:2], "little")] = payload[2:]
        elif ad_type == core.AdvertisingData.TX_POWER_LEVEL and len(payload) == 1:
            tx_power = int.from_bytes(payload, "little", signed=True)
    return AdvertisementData(
        local_name=local_name,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=service_uuids,
        tx_power=tx_power,
        rssi=advertisement.rssi,
        platform_data=(advertisement,),
    )


_UUID_LIST_SIZES: dict[int, int] = {
    core.AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS: 2,
    core.AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS: 2,
    core.AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS: 4,
    core.AdvertisingData.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS: 4,
    core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS: 16,
    core.AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS: 16,
}
_SERVICE_DATA_SIZES: dict[int, int] = {
    core.AdvertisingData.SERVICE_DATA_16_BIT_UUID: 2,
    core.AdvertisingData.SERVICE_DATA_32_BIT_UUID: 4,
    core.AdvertisingData.SERVICE_DATA_128_BIT_UUID: 16,
}


class BumbleScanner(BaseBleakScanner):
    """bleak's scanner backend on a bumble central (bound by BumbleCentral)."""

    _central: ClassVar[BumbleCentral]

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        **_kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        if scanning_mode == "passive":
            # Passive scanning would miss the scan responses that carry the service UUIDs.
            _LOGGER.debug("passive scanning requested; the virtual radio scans actively")
        self._scanning = False

    async def start(self) -> None:
        """Start receiving advertisements (``seen_devices`` starts empty)."""
        if self._scanning:
            return
        self.seen_devices = {}
        self._central.device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        try:
            await self._central.acquire_scan()
        except BaseException:
            self._central.device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
            raise
        self._scanning = True

    async def stop(self) -> None:
        """Stop receiving advertisements (idempotent)."""
        if not self._scanning:
            return
        self._scanning = False
        self._central.device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        await self._central.release_scan()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        try:
            data = _advertisement_data(advertisement)
        except (core.BaseBumbleError, ValueError):  # defensive: the parser above skips bad ones
            _LOGGER.debug("unreadable advertisement from %s", advertisement.address)
            return
        if not self.is_allowed_uuid(data.service_uuids):
            return
        address = advertisement.address.to_string(with_type_qualifier=False)
        device = self.create_or_update_device(
            address, address, data.local_name, advertisement.address, data
        )
        try:
            self.call_detection_callbacks(device, data)
        except Exception:
            # A failing callback must not break the host's event dispatch for everyone else.
            _LOGGER.exception("a detection callback failed")


def _property_names(properties: int) -> list[CharacteristicPropertyName]:
    return [name for bit, name in _PROPERTY_NAMES if properties & bit]


class BumbleClient(BaseBleakClient):
    """bleak's client backend on a bumble central (bound by BumbleCentral)."""

    _central: ClassVar[BumbleCentral]

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        services: set[str] | None = None,
        **_kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        details = (
            address_or_ble_device.details if isinstance(address_or_ble_device, BLEDevice) else None
        )
        # A BLEDevice from our scanner carries the typed address; a bare string is taken as a
        # random address, which is what phones use.
        self._peer_address = (
            details if isinstance(details, hci.Address) else hci.Address(self.address)
        )
        self._service_filter = services
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._subscriptions: dict[int, Callable[[bytes], None]] = {}
        self._requests: set[asyncio.Future[Any]] = set()

    @property
    def name(self) -> str:
        """The peer's address (the virtual radio has no name service)."""
        return self.address

    @property
    def mtu_size(self) -> int:
        """The negotiated ATT MTU (23 before a connection)."""
        return self._connection.att_mtu if self._connection is not None else _ATT_MIN_MTU

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up."""
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect, exchange MTU and discover services, all within the timeout."""
        if self._connection is not None:
            raise BleakError("Client is already connected")
        if pair:
            _LOGGER.debug("pairing is not supported on this backend; connecting without")
        timeout: float = kwargs.get("timeout", self._timeout)
        async with asyncio.timeout(timeout):
            connection = await self._central.connect(self._peer_address)
            self._connection = connection
            self._peer = Peer(connection)
            connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)
            try:
                await self._gatt(self._peer.request_mtu(CLIENT_ATT_MTU))
                self.services = await self._gatt(self._discover(self._peer))
            except BaseException:
                await self._drop(connection)
                raise

    async def disconnect(self) -> None:
        """Disconnect (idempotent); the peer learns at once, as on the air."""
        connection = self._connection
        if connection is None:
            return
        await self._drop(connection)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Not supported on the virtual radio."""
        raise NotImplementedError("pairing is not supported by the bumble backend")

    async def unpair(self) -> None:
        """Not supported on the virtual radio."""
        raise NotImplementedError("pairing is not supported by the bumble backend")

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a characteristic's value (long values in several requests)."""
        peer = self._require()
        return bytearray(await self._gatt(peer.read_value(characteristic.handle)))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a descriptor's value."""
        peer = self._require()
        return bytearray(await self._gatt(peer.read_value(descriptor.handle)))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        """Write a characteristic: a request (``response``) or a command."""
        peer = self._require()
        await self._gatt(
            peer.write_value(characteristic.handle, bytes(data), with_response=response)
        )

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        """Write a descriptor (with response)."""
        peer = self._require()
        await self._gatt(peer.write_value(descriptor.handle, bytes(data), with_response=True))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Subscribe to notifications (indications if that is all it has)."""
        peer = self._require()
        proxy = characteristic.obj
        if not isinstance(proxy, gatt_client.CharacteristicProxy):
            raise BleakError(f"characteristic {characteristic.uuid} is not from this connection")

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        await self._gatt(peer.subscribe(proxy, deliver))
        self._subscriptions[characteristic.handle] = deliver

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Unsubscribe from notifications."""
        peer = self._require()
        deliver = self._subscriptions.pop(characteristic.handle, None)
        proxy = characteristic.obj
        if deliver is not None and isinstance(proxy, gatt_client.CharacteristicProxy):
            await self._gatt(peer.unsubscribe(proxy, deliver))

    # --- internals --------------------------------------------------------------------------------

    def _require(self) -> Peer:
        if self._peer is None:
            raise BleakError("Not connected")
        return self._peer

    async def _gatt(self, operation: Awaitable[_T]) -> _T:
        """Await a GATT operation; ATT errors and a disconnection become bleak errors."""
        connection = self._connection
        if connection is None:
            if inspect.iscoroutine(operation):
                operation.close()  # never awaited: close it, or Python warns
            raise BleakError("Not connected")
        # The request runs to its response (or the disconnection) even if our caller gives up:
        # ATT has one request outstanding per link, as a real stack keeps it, and cancelling
        # bumble's request while its response is in flight fails inside bumble's host.
        request = asyncio.ensure_future(operation)
        connection.cancel_on_disconnection(request)
        self._requests.add(request)
        request.add_done_callback(self._request_done)
        try:
            return await asyncio.shield(request)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Cancelled by the disconnection, not by our caller.
            raise BleakError("Not connected: the peripheral disconnected") from None
        except att.ATT_Error as err:
            raise BleakGATTProtocolError(err.error_code) from err
        except core.BaseBumbleError as err:
            raise BleakError(str(err)) from err

    def _request_done(self, request: asyncio.Future[Any]) -> None:
        self._requests.discard(request)
        if not request.cancelled():
            request.exception()  # retrieved: a caller that gave up is not told, nor is asyncio

    async def _discover(self, peer: Peer) -> BleakGATTServiceCollection:
        uuids = [core.UUID(u) for u in self._service_filter or ()]
        collection = BleakGATTServiceCollection()
        connection = peer.connection
        for service in await peer.discover_services(uuids):
            await service.discover_characteristics()
            bleak_service = BleakGATTService(service, service.handle, bleak_uuid(service.uuid))
            collection.add_service(bleak_service)
            for characteristic in service.characteristics:
                bleak_characteristic = BleakGATTCharacteristic(
                    characteristic,
                    characteristic.handle,
                    bleak_uuid(characteristic.uuid),
                    _property_names(characteristic.properties),
                    lambda: connection.att_mtu - 3,
                    bleak_service,
                )
                collection.add_characteristic(bleak_characteristic)
                for descriptor in await peer.discover_descriptors(characteristic):
                    collection.add_descriptor(
                        BleakGATTDescriptor(
                            descriptor,
                            descriptor.handle,
                            bleak_uuid(descriptor.type),
                            bleak_characteristic,
                        )
                    )
        return collection

    async def _drop(self, connection: Connection) -> None:
        """Disconnect ``connection`` within DISCONNECT_TIMEOUT_S; never raises but cancellation."""
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                await connection.disconnect()
        except (TimeoutError, core.BaseBumbleError, hci.HCI_Error) as err:
            _LOGGER.debug("disconnecting from %s: %r", self.address, err)
        finally:
            # The disconnection event normally did this already; a failed one must too.
            self._on_disconnection(None)

    def _on_disconnection(self, _reason: int | None) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.remove_listener(Connection.EVENT_DISCONNECTION, self._on_disconnection)
        self._peer = None
        self.services = None
        self._subscriptions.clear()
        if self._disconnected_callback is not None:
            self._disconnected_callback()
