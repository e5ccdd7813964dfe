"""A simulated phone on a virtual radio: the reference phone app behind a real GATT server.

The phone is a bumble peripheral on a ``VirtualRadio``. It advertises the Luckey service as an
app in the foreground would: flags and the service data (``ReferencePhone.service_data()``,
rotating) in the advertisement, the 128-bit service UUID in the scan response (the two do not
fit in one 31-byte legacy advertisement). Its GATT service has the two characteristics of the
protocol; a write to READER_TO_PHONE goes to ``ReferencePhone.on_write``, a read of
PHONE_TO_READER returns ``ReferencePhone.read_reply()``, and a disconnection goes to
``ReferencePhone.on_disconnect`` (the handshake and the prepared reply are forgotten).

Knobs for tests: ``rssi_dbm`` / ``set_distance`` (how loud the gateway hears it),
``stall_after`` (answer that many requests of a connection, then fall silent),
``rotate()`` (new ephemeral id, and new address as phones do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import NoReturn, Self

from bumble import core, gatt, hci
from bumble.device import Connection, Device

from drivers.bleak_bumble import (
    VirtualPeripheral,
    VirtualRadio,
    advertising_payload,
    scan_response_payload,
)
from drivers.reference_phone import ReferencePhone
from gateway.ble_protocol import PHONE_TO_READER_UUID, READER_TO_PHONE_UUID, SERVICE_UUID

_LOGGER = logging.getLogger(__name__)

#: Android's low-latency advertising mode; iOS advertises a foreground app at a similar pace.
ADVERTISING_INTERVAL_MS = 100.0
#: How often the advertisement is refreshed from the phone (it rotates its ephemeral id itself).
REFRESH_S = 1.0
#: Hands-free phones are usually heard from a pocket a step away (about 0.5 m).
DEFAULT_RSSI_DBM = -40


class SimPhone:
    """A phone app in the foreground on a VirtualRadio: advertises, answers the gateway over GATT."""

    def __init__(
        self,
        radio: VirtualRadio,
        phone: ReferencePhone,
        *,
        name: str = "phone",
        rssi_dbm: int = DEFAULT_RSSI_DBM,
        interval_ms: float = ADVERTISING_INTERVAL_MS,
        stall_after: int | None = None,
        ios: bool = False,
    ) -> None:
        """``ios``: advertise the ephemeral id in the local name, as an iPhone must."""
        self.phone = phone
        #: Requests (writes and reads) answered per connection before the phone falls silent.
        self.stall_after = stall_after
        self._radio = radio
        self._name = name
        self._rssi_dbm = rssi_dbm
        self._interval_ms = interval_ms
        self._ios = ios
        self._peripheral: VirtualPeripheral | None = None
        self._advertised = b""
        self._requests: dict[Connection, int] = {}
        self._stalled: dict[Connection, set[asyncio.Future[None]]] = {}
        self._refresh_task: asyncio.Task[None] | None = None
        #: Connections accepted so far, and requests answered (all connections).
        self.connections = 0
        self.answered = 0

    @property
    def peripheral(self) -> VirtualPeripheral:
        """The radio device (after start)."""
        if self._peripheral is None:
            raise RuntimeError("the simulated phone is not started")
        return self._peripheral

    @property
    def connected(self) -> bool:
        """Whether a central is connected now."""
        return bool(self._requests)

    @property
    def rssi_dbm(self) -> int:
        """The RSSI the gateway hears this phone at (dBm)."""
        return self._rssi_dbm if self._peripheral is None else self._peripheral.rssi_dbm

    @rssi_dbm.setter
    def rssi_dbm(self, value: int) -> None:
        self._rssi_dbm = value
        if self._peripheral is not None:
            self._peripheral.rssi_dbm = value

    def set_distance(self, distance_m: float) -> None:
        """Be heard as a phone ``distance_m`` metres from the gateway."""
        self.peripheral.set_distance(distance_m)
        self._rssi_dbm = self.peripheral.rssi_dbm

    async def start(self) -> None:
        """Advertise (idempotent); the first start joins the radio and publishes the service."""
        if self._refresh_task is not None:
            return
        if self._peripheral is None:
            peripheral = await self._radio.add_peripheral(self._name, rssi_dbm=self._rssi_dbm)
            self._peripheral = peripheral
            peripheral.device.add_service(self._service())
            peripheral.device.on(Device.EVENT_CONNECTION, self._on_connection)
        await self._advertise()
        self._refresh_task = asyncio.create_task(self._refresh(), name=f"sim-phone-{self._name}")

    async def stop(self) -> None:
        """Stop advertising and drop any connection (idempotent; start() again resumes)."""
        task, self._refresh_task = self._refresh_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        peripheral = self._peripheral
        if peripheral is None:
            return
        await peripheral.stop_advertising()
        for connection in list(self._requests):
            with contextlib.suppress(hci.HCI_Error):
                await connection.disconnect()
        for connection in list(self._stalled):
            self._abandon(connection)

    async def rotate(self, *, address: bool = True) -> None:
        """Advertise a new ephemeral id now (and a new address, as phones rotate both)."""
        self.phone.rotate()
        if address:
            await self.peripheral.rotate_address()
        await self._advertise()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- GATT ---------------------------------------------------------------------------------

    def _service(self) -> gatt.Service:
        to_phone: gatt.Characteristic[bytes] = gatt.Characteristic(
            READER_TO_PHONE_UUID,
            gatt.Characteristic.Properties.WRITE,
            gatt.Characteristic.WRITEABLE,
            gatt.CharacteristicValue[bytes](write=self._on_write),
        )
        to_reader: gatt.Characteristic[bytes] = gatt.Characteristic(
            PHONE_TO_READER_UUID,
            gatt.Characteristic.Properties.READ,
            gatt.Characteristic.READABLE,
            gatt.CharacteristicValue[bytes](read=self._on_read),
        )
        return gatt.Service(SERVICE_UUID, [to_phone, to_reader])

    async def _on_write(self, connection: Connection, value: bytes) -> None:
        if self._silent(connection):
            await self._stall(connection)
        self.phone.on_write(bytes(value))
        if self.phone.last_error is not None:
            _LOGGER.debug("simulated phone refused: %s", self.phone.last_error)

    async def _on_read(self, connection: Connection) -> bytes:
        if self._silent(connection):
            await self._stall(connection)
        return self.phone.read_reply()

    def _silent(self, connection: Connection) -> bool:
        """Count one request; True if this one goes unanswered."""
        answered = self._requests.get(connection, 0)
        if self.stall_after is not None and answered >= self.stall_after:
            return True
        self._requests[connection] = answered + 1
        self.answered += 1
        return False

    async def _stall(self, connection: Connection) -> NoReturn:
        """Never return: the request is dropped with the link (cancelled, so no late answer)."""
        stalled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stalled.setdefault(connection, set()).add(stalled)
        await stalled
        raise RuntimeError("a stalled request is only ever dropped")  # nothing sets the future

    def _abandon(self, connection: Connection) -> None:
        for stalled in self._stalled.pop(connection, set()):
            stalled.cancel()

    def _on_connection(self, connection: Connection) -> None:
        self.connections += 1
        self._requests[connection] = 0
        connection.on(
            Connection.EVENT_DISCONNECTION, lambda _reason: self._on_disconnection(connection)
        )

    def _on_disconnection(self, connection: Connection) -> None:
        self._requests.pop(connection, None)
        self._abandon(connection)
        # As the protocol asks of a phone: back to idle, nothing left for the next reader to read.
        self.phone.on_disconnect()

    # --- advertising --------------------------------------------------------------------------

    async def _advertise(self) -> None:
        service_data = self.phone.service_data()
        self._advertised = service_data
        if self._ios:
            # What CoreBluetooth sends for a foreground app: the UUID list in the advertisement,
            # the local name (too long to fit beside it) in the scan response.
            advert = advertising_payload(service_uuids=[SERVICE_UUID])
            response = scan_response_payload(local_name=self.phone.local_name())
        else:
            advert = advertising_payload(service_data=[(SERVICE_UUID, service_data)])
            response = scan_response_payload(service_uuids=[SERVICE_UUID])
        await self.peripheral.advertise(advert, response, interval_ms=self._interval_ms)

    async def _refresh(self) -> None:
        """Follow the phone's own rotation of its ephemeral id."""
        while True:
            await asyncio.sleep(REFRESH_S)
            # Not while connected: the advertiser is paused and resumes by itself afterwards.
            if not self.connected and self.phone.service_data() != self._advertised:
                try:
                    await self._advertise()
                except (hci.HCI_Error, core.BaseBumbleError) as err:  # a connection came in
                    _LOGGER.debug("simulated phone: re-advertising failed (%r), retrying", err)
