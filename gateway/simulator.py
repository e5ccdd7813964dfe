"""The embedded default's twin of what people carry: genuine credentials at simulated readers.

On the virtual backend every credential kind goes the whole way through the unchanged drivers:
a mechatronic key through its virtual board and the serial bus; an NTAG 424 DNA tag or a DESFire
card (personalised with this gateway's own keys, so genuine) into the field of the door's
simulated NFC reader, nfcpy's udp device; a plain card as its bare UID the same way. Each door's
simulated NFC reader is made on its first use.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from drivers.nfc_emulators import DesfireCard, Ntag424Tag
from drivers.nfc_reader import NfcReader
from drivers.nfc_udp_tag import UdpIsoDepTag, UdpType2Tag, free_udp_port
from gateway.entry import EntryService
from gateway.hardware import BoardHardware, Hardware
from gateway.mechkeys import respond
from gateway.model import CredentialKind, Decision
from gateway.nfc_cards import CardReading, Transceive
from gateway.readers import ReaderSet
from gateway.verifiers import SiteSecrets

#: How long a presentation waits for its decision before the simulator gives up.
DECISION_TIMEOUT_S = 5.0
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
        read_card: Callable[[bytes, Transceive], CardReading],
    ) -> None:
        self._hardware = hardware
        self._secrets = secrets
        self._readers = readers
        self._entry = entry
        self._read_card = read_card
        self._nfc_ports: dict[str, int] = {}  # door -> the udp port of its simulated NFC reader

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
        await board.present_key(reader, key, challenge, respond(site_key, key, challenge))
        return await asyncio.wait_for(decided, DECISION_TIMEOUT_S)

    async def present_card(self, door_id: str, kind: CredentialKind, uid: str) -> Decision:
        """A card of ``kind`` held to the door's simulated NFC reader until it is decided."""
        if kind not in CARD_KINDS:
            raise SimulatorError(f"a {kind.value} is not a card")
        card = self._card(kind, bytes.fromhex(uid), self._nfc_port(door_id))
        decided = self._entry.next_decision(door_id)
        card.start()
        try:
            return await asyncio.wait_for(decided, DECISION_TIMEOUT_S)
        except TimeoutError:
            decided.cancel()
            raise SimulatorError(
                f"the reader at {door_id!r} did not read the card within {DECISION_TIMEOUT_S:g} s "
                "(the same card is ignored for 2 s after it was read)"
            ) from None
        finally:
            card.stop()  # taken out of the field

    def _card(self, kind: CredentialKind, uid: bytes, port: int) -> UdpIsoDepTag | UdpType2Tag:
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
            port = self._nfc_ports[door_id] = free_udp_port()
            self._readers.add(NfcReader(door_id, f"udp:127.0.0.1:{port}", self._read_card))
        return port
