"""The embedded default's twin of what people carry: genuine credentials at simulated readers.

On the virtual backend every credential kind goes the whole way through the unchanged drivers:
a mechatronic key through its virtual board and the serial bus; an NTAG 424 DNA tag or a DESFire
card (personalised with this gateway's own keys, so genuine) into the field of the door's
simulated NFC reader, nfcpy's udp device; a plain card as its bare UID the same way; a phone
running the reference app onto the door's virtual Bluetooth radio (bumble), where the door's
unchanged bleak-based reader finds it, judges its distance and runs the handshake. Each door's
simulated NFC reader and radio are made on first use; a radio per door, so a phone is at one door.
What each needs (nfcpy, cryptography, bumble, bleak) is imported on first use too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from firmware_protocol import ProtocolError
from gateway.challenges import ChallengeBook
from gateway.enrolment import Enrolment
from gateway.entry import EntryService
from gateway.hardware import BoardHardware, Hardware
from gateway.model import Credential, CredentialKind, Decision
from gateway.readers import ReaderSet
from gateway.verifiers import SiteSecrets

_LOGGER = logging.getLogger(__name__)

if TYPE_CHECKING:
    from drivers.bleak_bumble import VirtualRadio
    from drivers.nfc_udp_tag import UdpIsoDepTag, UdpType2Tag
    from drivers.reference_phone import ReferencePhone
    from drivers.sim_phone import SimPhone
    from gateway.nfc_cards import CardReading, Transceive

#: How long a presentation waits for its decision before the simulator gives up.
DECISION_TIMEOUT_S = 5.0
#: A simulated phone's proximity threshold where the door has none configured.
DEFAULT_PROXIMITY = "near"
#: The most simulated phones one simulator makes (each holds a key pair and a radio device).
MAX_PHONES = 1000
#: Kinds presented at the door's simulated NFC reader.
CARD_KINDS = frozenset({CredentialKind.NFC_UID, CredentialKind.NTAG424, CredentialKind.DESFIRE})


class SimulatorError(LookupError):
    """This presentation cannot be simulated here; the message says why."""


class Simulator:
    """Presents genuine credentials at the doors of a gateway on the virtual backend."""

    def __init__(
        self,
        hardware: Hardware,
        secrets: SiteSecrets,
        readers: ReaderSet,
        entry: EntryService,
        enrolment: Enrolment,
        challenges: ChallengeBook,
        read_card: Callable[[bytes, Transceive], CardReading],
        proximity: Callable[[str], str] = lambda door_id: DEFAULT_PROXIMITY,
    ) -> None:
        """``proximity(door)``: the BLE proximity setting of the door's simulated reader."""
        self._hardware = hardware
        self._secrets = secrets
        self._readers = readers
        self._entry = entry
        self._read_card = read_card
        self._enrolment = enrolment
        self._challenges = challenges
        self._proximity = proximity
        self._nfc_ports: dict[str, int] = {}  # door -> the udp port of its simulated NFC reader
        self._radios: dict[str, VirtualRadio] = {}  # door -> its virtual radio, reader on it
        self._radio_lock = asyncio.Lock()
        self._walk_lock = asyncio.Lock()
        self._phones: dict[str, ReferencePhone] = {}  # key id (hex) -> the phone holding it
        self._sim_phones: dict[tuple[str, str], SimPhone] = {}  # (door, key id) -> its device

    async def new_phone(self, user_id: str) -> Credential:
        """A phone with the reference app, enrolled for ``user_id`` (EnrolmentError if not)."""
        identity = self._secrets.reader
        if identity is None:
            raise SimulatorError("this gateway has no BLE reader key: no phone can trust it")
        from drivers.reference_phone import ReferencePhone  # noqa: PLC0415

        phone = ReferencePhone.generate({identity.reader_id: identity.public_key})
        if len(self._phones) >= MAX_PHONES:
            raise SimulatorError(f"the simulator holds {MAX_PHONES} phones already")
        credential = await self._enrolment.enrol_phone(user_id, phone.public_key_bytes)
        self._phones[credential.value] = phone
        return credential

    async def present_phone(self, door_id: str, key_id: str) -> Decision:
        """A simulated phone (made by ``new_phone``) held near the door until it is decided."""
        from drivers.sim_phone import SimPhone  # noqa: PLC0415 - bumble only when used

        phone = self._phones.get(key_id.upper())
        if phone is None:
            raise SimulatorError(
                f"no simulated phone holds key {key_id!r}; make one first (POST /api/simulator/phones)"
            )
        radio = await self._radio(door_id)
        async with self._walk_lock:  # one phone at a time walks up to a door
            sim = self._sim_phones.get((door_id, key_id.upper()))
            if sim is None:  # one device on the radio per phone and door, however often it comes
                sim = self._sim_phones[door_id, key_id.upper()] = SimPhone(radio, phone)
            phone.rotate()  # a fresh ephemeral id: the reader's cooldown is for the id it saw
            decided = self._entry.next_decision(door_id)
            await sim.start()
            try:
                return await _decision(
                    decided, f"the BLE reader at {door_id!r} did not read the phone"
                )
            finally:
                await sim.stop()  # walks away

    def radio_of(self, door_id: str) -> VirtualRadio | None:
        """The door's virtual radio, once a phone was presented there."""
        return self._radios.get(door_id)

    async def _radio(self, door_id: str) -> VirtualRadio:
        """The door's virtual radio with its BLE reader, made and started on first use."""
        from drivers.ble_reader import BleReader  # noqa: PLC0415 - bleak only when used
        from drivers.bleak_bumble import VirtualRadio  # noqa: PLC0415

        identity = self._secrets.reader
        if identity is None:
            raise SimulatorError("this gateway has no BLE reader key")
        async with self._radio_lock:
            radio = self._radios.get(door_id)
            if radio is None:
                radio = VirtualRadio()
                central = await radio.add_central(f"gateway-{door_id}")
                self._readers.add(
                    BleReader(
                        door_id,
                        self._proximity(door_id),
                        identity,
                        self._challenges,
                        scanner_backend=central.scanner_backend,
                        client_backend=central.client_backend,
                    )
                )
                self._radios[door_id] = radio
            return radio

    async def stop(self) -> None:
        """Switch the virtual radios off (after the readers on them stopped)."""
        phones, self._sim_phones = list(self._sim_phones.values()), {}
        for phone in phones:
            await phone.stop()
        radios, self._radios = list(self._radios.values()), {}
        for radio in radios:
            try:
                await radio.close()
            except Exception:  # one radio's failure must not keep the others on
                _LOGGER.exception("closing a simulated radio failed")

    def simulates_keys(self, door_id: str) -> bool:
        """Whether a mechatronic key can be presented at ``door_id`` (a virtual board's door)."""
        hardware = self._hardware
        return (
            self._secrets.mech_site_key is not None
            and isinstance(hardware, BoardHardware)
            and hardware.virtual_door(door_id) is not None
        )

    async def present_key(self, door_id: str, key_id: str) -> Decision:
        """A genuine mechatronic key at the door's board reader; its decision."""
        hardware = self._hardware
        found = hardware.virtual_door(door_id) if isinstance(hardware, BoardHardware) else None
        site_key = self._secrets.mech_site_key
        if found is None or site_key is None:
            raise SimulatorError(f"no virtual board with a key reader at door {door_id!r}")
        board, reader = found
        key = bytes.fromhex(key_id)
        decided = self._entry.next_decision(door_id)
        challenge = os.urandom(16)
        from gateway.mechkeys import respond  # noqa: PLC0415

        await board.present_key(reader, key, challenge, respond(site_key, key, challenge))
        return await _decision(decided, f"the board at {door_id!r} did not report the key")

    async def enter_pin(self, door_id: str, digits: str) -> Decision:
        """``digits`` typed on the keypad of the door's virtual board reader; its decision."""
        hardware = self._hardware
        found = hardware.virtual_door(door_id) if isinstance(hardware, BoardHardware) else None
        if found is None:
            raise SimulatorError(f"no virtual board with a keypad at door {door_id!r}")
        board, reader = found
        decided = self._entry.next_decision(door_id)
        try:
            await board.enter_pin(reader, digits)
        except (RuntimeError, ProtocolError) as err:  # no keypad; not digits the board sends
            raise SimulatorError(f"the keypad at {door_id!r} cannot send that: {err}") from None
        return await _decision(decided, f"the board at {door_id!r} did not report the PIN")

    async def present_card(self, door_id: str, kind: CredentialKind, uid: str) -> Decision:
        """A card of ``kind`` held to the door's simulated NFC reader until it is decided."""
        if kind not in CARD_KINDS:
            raise SimulatorError(f"a {kind.value} is not a card")
        card = self._card(kind, bytes.fromhex(uid), self._nfc_port(door_id))
        decided = self._entry.next_decision(door_id)
        # Starting and stopping open and join nfcpy's blocking frontend: off the event loop.
        await asyncio.to_thread(card.start)
        try:
            return await _decision(
                decided,
                f"the reader at {door_id!r} did not read the card "
                "(the same card is ignored for 2 s after it was read)",
            )
        finally:
            await asyncio.to_thread(card.stop)  # taken out of the field

    def _card(self, kind: CredentialKind, uid: bytes, port: int) -> UdpIsoDepTag | UdpType2Tag:
        from drivers.nfc_emulators import DesfireCard, Ntag424Tag  # noqa: PLC0415
        from drivers.nfc_udp_tag import UdpIsoDepTag, UdpType2Tag  # noqa: PLC0415

        if kind is CredentialKind.NFC_UID:
            return UdpType2Tag(uid, port=port)
        keys = self._secrets.nfc
        if keys is None:
            raise SimulatorError("this gateway has no NFC keys: no genuine tag can be made")
        if kind is CredentialKind.DESFIRE:
            return UdpIsoDepTag(DesfireCard.for_site(uid, keys), port=port)
        return UdpIsoDepTag(Ntag424Tag.for_site(uid, keys), port=port)

    def _nfc_port(self, door_id: str) -> int:
        """The udp port of the door's simulated NFC reader, made and started on first use."""
        port = self._nfc_ports.get(door_id)
        if port is None:
            from drivers.nfc_reader import NfcReader  # noqa: PLC0415
            from drivers.nfc_udp_tag import free_udp_port  # noqa: PLC0415

            port = self._nfc_ports[door_id] = free_udp_port()
            self._readers.add(NfcReader(door_id, f"udp:127.0.0.1:{port}", self._read_card))
        return port


async def _decision(decided: asyncio.Future[Decision], failure: str) -> Decision:
    """The decision, once taken; SimulatorError naming ``failure`` after DECISION_TIMEOUT_S."""
    try:
        return await asyncio.wait_for(decided, DECISION_TIMEOUT_S)
    except TimeoutError:
        decided.cancel()
        raise SimulatorError(f"{failure} within {DECISION_TIMEOUT_S:g} s") from None
