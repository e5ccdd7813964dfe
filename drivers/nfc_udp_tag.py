"""Contactless cards on nfcpy's ``udp`` pseudo-device: the simulated twin of a card on a reader.

How nfcpy pairs two frontends over udp (``nfc/clf/udp.py``): both open ``udp:HOST:PORT``; the role
comes from the call. The listening side (the card, ``clf.listen``) binds PORT and answers whoever
sent the datagram it is answering; the sensing side (the reader, ``clf.sense``/``connect``) never
binds: every sense cycle mutes its "field" by closing its socket (first sending ``RFOFF`` to the
card if it had heard from one) and sends from a fresh ephemeral port. Frames are ASCII datagrams
``"<bitrate> <hex>"`` such as ``"106A 26"`` (SENS_REQ). nfcpy's listener does the ISO/IEC 14443-3
anticollision itself and hands over the first frame after it (RATS, or a Type 2 command);
everything from there on is this module's: ``nfc.tag.emulate`` only emulates Type 3 tags.

Two deviations from nfcpy's listener, made on the frontend's device instance (``_open_listener``):
it binds HOST instead of ``0.0.0.0`` (the twin must not be reachable from the network), and it
keeps one socket for its whole life instead of closing and rebinding it on every ``listen()``: a
frame that arrives in that gap is lost, and the reader's SENS_REQ right after its RFOFF always
does, which would cost the reader a 1 s timeout for every re-read of a card left in the field.

A card is in the reader's field from ``start()`` to ``stop()``; one card per port at a time.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import nfc
import nfc.clf

_LOGGER = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
#: How long one ``listen()`` waits before the loop looks at the stop flag again. nfcpy's udp
#: listener waits at least 0.5 s per call, so this (plus one exchange) bounds ``stop()``.
LISTEN_SLICE_S = 0.5
#: How long one wait for the reader's next frame lasts inside a session (bounds ``stop()`` too).
SESSION_SLICE_S = 0.1
#: A reader silent this long inside a session is gone (a reader leaving normally sends RFOFF).
FIELD_LOST_AFTER_S = 2.0
#: How long ``stop()`` waits for the card's thread.
STOP_TIMEOUT_S = 3.0
#: Frame waiting time integer announced in the ATS: FWT = 256·16/fc · 2^FWI (ISO/IEC 14443-4
#: §7.2), 8 → 77 ms. The responder must answer within it; nfcpy's reader retries a silent card up
#: to 5 times before giving up, so a card leaving the field is noticed after about 6 FWT.
DEFAULT_FWI = 8
#: FSCI announced in the ATS: the card accepts frames of up to 256 bytes (ISO/IEC 14443-4 §5.2.4).
CARD_FSCI = 8

# ISO/IEC 14443-3 §6.5: the SEL_RES bit saying "ISO/IEC 14443-4 compliant".
_SEL_RES_ISO_DEP = 0x20
_SEL_RES_TYPE2 = 0x00
# Frames that open a new activation: the reader reset its field without telling us (no RFOFF).
_SENS_REQ = b"\x26"
_ALL_REQ = b"\x52"
# ISO/IEC 14443-4 §5.6.1.1 (RATS start byte), §7.1.1 (block PCBs).
_RATS = 0xE0
_FSD_BY_FSDI = (16, 24, 32, 40, 48, 64, 96, 128, 256)
_I_MASK, _I_BLOCK = 0xE2, 0x02
_R_MASK, _R_BLOCK = 0xE6, 0xA2
_S_MASK, _S_BLOCK = 0xC6, 0xC2
_PCB_CHAINING = 0x10  # I-block: more follows; R-block: NAK (same bit)
_PCB_CID_NAD = 0x0C
_S_DESELECT, _S_KIND = 0x00, 0x30
_PPS_MASK, _PPS = 0xF0, 0xD0
_EDC_AND_PCB = 3  # bytes of a frame that are not payload (PCB + CRC_A)
# NFC Forum Type 2 Tag §5: READ, and the NAK code for a bad address.
_T2_READ = 0x30
_T2_NAK = b"\x00"
_T2_PAGE = 4
_T2_READ_PAGES = 4


class UdpTagState(enum.StrEnum):
    """Where a udp card is in its life."""

    STOPPED = "stopped"
    LISTENING = "listening"  # in the field, waiting to be activated
    ACTIVE = "active"  # activated by a reader, in a dialogue


class IsoDepCard(Protocol):
    """A card application behind ISO-DEP: its UID and an APDU responder."""

    @property
    def uid(self) -> bytes:
        """The NFCID1 sent in anticollision (4 or 7 bytes)."""

    def respond(self, apdu: bytes) -> bytes:
        """Answer a command APDU with response data + SW1 SW2 (raising makes the card go silent)."""


class _EndSession(Exception):
    """The card leaves the dialogue: goes mute, or is deselected/halted."""

    def __init__(self, last_response: bytes | None = None) -> None:
        super().__init__()
        self.last_response = last_response


def free_udp_port(host: str = DEFAULT_HOST) -> int:
    """A UDP port on ``host`` that nothing was bound to a moment ago (prefer ``port=0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def _sens_res(uid: bytes) -> bytes:
    # ISO/IEC 14443-3 §6.5.2.1: ATQA bits 7-8 give the UID size, bit 3 the bit frame anticollision.
    size_bits = {4: 0x00, 7: 0x40}[len(uid)]
    return bytes([0x04 | size_bits, 0x00])


def _check_uid(uid: bytes) -> None:
    # nfcpy's udp listener mishandles cascade level 3, so 10-byte UIDs cannot be anticollided.
    if len(uid) not in (4, 7):
        raise ValueError(f"a udp card needs a 4 or 7 byte UID, not {len(uid)} bytes")
    if uid[0] == 0x88:
        raise ValueError("a UID must not start with the cascade tag 0x88")


def _tail(uid: bytes) -> str:
    return "…" + uid.hex().upper()[-4:]


def _open_listener(host: str, port: int) -> tuple[Any, socket.socket]:
    """A udp frontend that listens on ``host:port`` (0: any free port) through one bound socket."""
    clf = nfc.ContactlessFrontend(f"udp:{host}:{port}")
    device = clf.device
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((device.addr[0], port))
    except OSError:
        sock.close()
        clf.close()
        raise
    if device.socket is not None:
        device.socket.close()
    device.socket = sock
    device.sent_data = device.rcvd_data = 0
    # See the module docstring: keep this socket (nfcpy closes it in mute() and rebinds 0.0.0.0).
    device._bind_socket = lambda time_to_return: True
    device.mute = lambda: None
    return clf, sock


class _UdpCard(abc.ABC):
    """A card in a udp reader's field, served by its own thread from ``start()`` to ``stop()``."""

    def __init__(self, uid: bytes, sel_res: int, *, port: int, host: str) -> None:
        _check_uid(uid)
        self._uid = bytes(uid)
        self._sel_res = sel_res
        self._host = host
        self._port = port
        self._address = host
        self._clf: Any = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._state = UdpTagState.STOPPED
        self._activations = 0

    @property
    def uid(self) -> bytes:
        """The UID this card answers anticollision with."""
        return self._uid

    @property
    def port(self) -> int:
        """The UDP port the card listens on (the one bound, once started with ``port=0``)."""
        return self._port

    @property
    def path(self) -> str:
        """The nfcpy path a reader opens to find this card."""
        return f"udp:{self._host}:{self._port}"

    @property
    def state(self) -> UdpTagState:
        """Where the card is in its life."""
        return self._state

    @property
    def activations(self) -> int:
        """How many dialogues a reader opened with the card (after anticollision)."""
        return self._activations

    def start(self) -> None:
        """Put the card in the field: bind the port now (OSError if taken), then serve in a thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._clf, self._socket = _open_listener(self._host, self._port)
        self._address, self._port = self._socket.getsockname()
        self._stop.clear()
        self._set_state(UdpTagState.LISTENING)
        self._thread = threading.Thread(
            target=self._run, name=f"nfc-udp-card-{self._port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Take the card out of the field (idempotent); waits at most ``STOP_TIMEOUT_S``."""
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return  # called from the card's own responder: the session ends after it returns
        self._wake()
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            _LOGGER.warning(
                "udp card %s did not stop within %.1f s", _tail(self._uid), STOP_TIMEOUT_S
            )
            return
        self._thread = None

    def _wake(self) -> None:
        """Make a waiting ``listen()``/``exchange()`` return now rather than after its slice."""
        # A frame that is no anticollision command ends nfcpy's listen (it takes it for the first
        # command after activation); the loop then sees the stop flag before answering it.
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as poke:
            poke.sendto(b"106A 00", (self._address, self._port))

    def _set_state(self, state: UdpTagState) -> None:
        if state is not self._state:
            _LOGGER.debug("udp card %s: %s → %s", _tail(self._uid), self._state, state)
            self._state = state

    def _local_target(self) -> Any:
        return nfc.clf.LocalTarget(
            "106A",
            sens_res=bytearray(_sens_res(self._uid)),
            sdd_res=bytearray(self._uid),
            sel_res=bytearray([self._sel_res]),
        )

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    activated = self._clf.listen(self._local_target(), LISTEN_SLICE_S)
                except nfc.clf.CommunicationError as err:
                    _LOGGER.debug("udp card %s: listen: %s", _tail(self._uid), err)
                    continue
                if activated is None:
                    continue
                self._set_state(UdpTagState.ACTIVE)
                try:
                    self._session(activated)
                finally:
                    self._set_state(UdpTagState.LISTENING)
        except Exception:
            _LOGGER.exception("udp card %s stopped by an unexpected error", _tail(self._uid))
        finally:
            self._close()
            self._set_state(UdpTagState.STOPPED)

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._clf is not None:
            self._clf.device.socket = None
            self._clf.close()
            self._clf = None

    @abc.abstractmethod
    def _session(self, activated: Any) -> None:
        """Serve one activation; returns when the card goes mute, is released or leaves."""

    def _serve(self, first: bytes | None, handle: Callable[[bytes], bytes | None]) -> None:
        """Send ``first``, then answer each frame with ``handle`` (None: stay silent)."""
        self._activations += 1
        response = first
        last_heard = time.monotonic()
        while not self._stop.is_set():
            try:
                command = self._clf.exchange(response, SESSION_SLICE_S)
            except nfc.clf.TimeoutError:
                response = None
                if time.monotonic() - last_heard > FIELD_LOST_AFTER_S:
                    return
                continue
            except nfc.clf.BrokenLinkError:
                return  # RFOFF: the reader switched its field off
            except nfc.clf.CommunicationError:
                response = None
                continue
            last_heard = time.monotonic()
            frame = bytes(command)
            if frame in (_SENS_REQ, _ALL_REQ):
                return  # the reader restarted its field without RFOFF
            try:
                response = handle(frame)
            except _EndSession as end:
                if end.last_response is not None and not self._stop.is_set():
                    self._clf.exchange(end.last_response, 0)
                return
            if self._stop.is_set():
                return  # taken out of the field while answering: the answer is never sent


class _IsoDepPicc:
    """The card side of ISO/IEC 14443-4 block transmission (no I/O): block in, block out."""

    def __init__(self, respond: Callable[[bytes], bytes], fsd: int) -> None:
        self._respond = respond
        self._max_payload = fsd - _EDC_AND_PCB
        self._block_number = 1  # §7.5.3.1: the PICC's block number starts at 1
        self._last: bytes | None = None
        self._command = bytearray()
        self._pending = b""
        self._blocks_seen = 0

    def handle(self, frame: bytes) -> bytes | None:
        """The block answering ``frame`` (rules of §7.5.4), or None to stay silent."""
        if not frame:
            return None
        pcb = frame[0]
        first, self._blocks_seen = self._blocks_seen == 0, self._blocks_seen + 1
        if pcb & _I_MASK == _I_BLOCK:
            return self._i_block(pcb, frame[1:])
        if pcb & _R_MASK == _R_BLOCK:
            return self._r_block(pcb)
        if pcb & _S_MASK == _S_BLOCK:
            if pcb & _S_KIND == _S_DESELECT:
                raise _EndSession(bytes([pcb]))  # §8: answer S(DESELECT), then go to HALT
            return None  # S(WTX) replies: this card never asks for more time
        if first and pcb & _PPS_MASK == _PPS:
            return bytes([pcb])  # §5.3: PPS right after the ATS, answered with PPSS
        return None

    def _i_block(self, pcb: int, payload: bytes) -> bytes | None:
        if pcb & _PCB_CID_NAD:
            return None  # the ATS offers neither CID nor NAD, so a conforming reader sends none
        number = pcb & 1
        self._command += payload
        if pcb & _PCB_CHAINING:
            return self._block(_R_BLOCK | number)  # R(ACK): send the rest of the command
        apdu, self._command = bytes(self._command), bytearray()
        self._pending = self._respond(apdu)
        return self._next_chunk(number)

    def _r_block(self, pcb: int) -> bytes | None:
        number = pcb & 1
        if pcb & _PCB_CHAINING:  # R(NAK)
            if number == self._block_number and self._last is not None:
                return self._last  # rule 11: retransmit the last block
            return self._block(_R_BLOCK | self._block_number)  # rule 11: R(ACK)
        if number == self._block_number:
            return self._last  # rule 12: retransmit the last block
        if self._pending:
            return self._next_chunk(number)  # rule 13: next block of a chained response
        return None

    def _next_chunk(self, number: int) -> bytes:
        chunk, self._pending = (
            self._pending[: self._max_payload],
            self._pending[self._max_payload :],
        )
        chaining = _PCB_CHAINING if self._pending else 0
        return self._block(_I_BLOCK | chaining | number, chunk)

    def _block(self, pcb: int, payload: bytes = b"") -> bytes:
        self._block_number = pcb & 1
        self._last = bytes([pcb]) + payload
        return self._last


class UdpIsoDepTag(_UdpCard):
    """An ISO/IEC 14443-4 Type A card (Type 4A) whose APDUs ``card.respond`` answers."""

    def __init__(
        self,
        card: IsoDepCard,
        *,
        port: int = 0,
        host: str = DEFAULT_HOST,
        fwi: int = DEFAULT_FWI,
    ) -> None:
        if not 0 <= fwi <= 14:
            raise ValueError("FWI must be 0..14 (ISO/IEC 14443-4 §7.2)")
        super().__init__(card.uid, _SEL_RES_ISO_DEP, port=port, host=host)
        self._card = card
        self._fwi = fwi

    def ats(self) -> bytes:
        """The ATS sent after RATS: TL, T0 (TA, TB, TC follow; FSCI), TA, TB (FWI), TC."""
        # §5.2: TA 0x00 = 106 kbit/s only; TB = FWI << 4 | SFGI 0; TC 0x00 = no NAD, no CID.
        body = bytes([0x70 | CARD_FSCI, 0x00, self._fwi << 4, 0x00])
        return bytes([len(body) + 1]) + body

    def _session(self, activated: Any) -> None:
        rats = bytes(activated.tt4_cmd or b"")
        if len(rats) != 2 or rats[0] != _RATS:
            return  # a stray frame "activated" nfcpy's listener: stay in the field, unselected
        fsd = _FSD_BY_FSDI[min(rats[1] >> 4, len(_FSD_BY_FSDI) - 1)]
        picc = _IsoDepPicc(self._respond, fsd)
        self._serve(self.ats(), picc.handle)

    def _respond(self, apdu: bytes) -> bytes:
        try:
            return bytes(self._card.respond(apdu))
        except Exception as err:
            # A card that fails goes silent, as one torn from the field mid-dialogue would.
            _LOGGER.debug("udp card %s: responder failed, going silent: %r", _tail(self.uid), err)
            raise _EndSession from err


def type2_memory(uid: bytes, pages: int = 16) -> bytes:
    """A Type 2 tag memory image: UID pages with BCCs, CC for an empty NDEF area, empty NDEF TLV."""
    if pages < 5:
        raise ValueError("a Type 2 memory image has at least 5 pages")
    if len(uid) == 7:
        bcc0 = 0x88 ^ uid[0] ^ uid[1] ^ uid[2]  # NXP NTAG21x data sheet §8.5: BCC0 includes CT
        bcc1 = uid[3] ^ uid[4] ^ uid[5] ^ uid[6]
        header = uid[0:3] + bytes([bcc0]) + uid[3:7] + bytes([bcc1, 0x48, 0x00, 0x00])
    else:
        header = uid + bytes([uid[0] ^ uid[1] ^ uid[2] ^ uid[3]]) + bytes(7)
    data_bytes = (pages - 4) * _T2_PAGE
    # NFC Forum T2T §6.1: CC = magic E1, version 1.0, data area size / 8, read/write access.
    capability = bytes([0xE1, 0x10, data_bytes // 8, 0x00])
    ndef = bytes([0x03, 0x00, 0xFE])  # empty NDEF message TLV, terminator TLV
    return (header + capability + ndef).ljust(pages * _T2_PAGE, b"\x00")


class UdpType2Tag(_UdpCard):
    """A card with no ISO-DEP (Type 2 / NTAG21x-like, or MIFARE Classic by ``sel_res``): bare UID."""

    def __init__(
        self,
        uid: bytes,
        *,
        port: int = 0,
        host: str = DEFAULT_HOST,
        memory: bytes | None = None,
        sel_res: int = _SEL_RES_TYPE2,
    ) -> None:
        if sel_res & _SEL_RES_ISO_DEP:
            raise ValueError("a Type 2 card must not claim ISO-DEP in SEL_RES")
        super().__init__(uid, sel_res, port=port, host=host)
        self._memory = memory if memory is not None else type2_memory(bytes(uid))
        if len(self._memory) % _T2_PAGE:
            raise ValueError("a Type 2 memory image is a whole number of 4-byte pages")

    def _session(self, activated: Any) -> None:
        try:
            first = self._handle(bytes(activated.tt2_cmd or b""))
        except _EndSession:
            return  # a stray frame "activated" nfcpy's listener, or HLTA: stay in the field
        self._serve(first, self._handle)

    def _handle(self, frame: bytes) -> bytes | None:
        if len(frame) == 2 and frame[0] == _T2_READ:
            return self._read(frame[1])
        # HLTA, or a command this tag does not know: a Type 2 tag goes mute (T2T §5.1).
        raise _EndSession

    def _read(self, page: int) -> bytes:
        pages = len(self._memory) // _T2_PAGE
        if page >= pages:
            return _T2_NAK
        # T2T §5.2: READ returns 4 pages and rolls over to page 0 past the end of memory.
        wanted = [(page + i) % pages for i in range(_T2_READ_PAGES)]
        return b"".join(self._memory[p * _T2_PAGE : (p + 1) * _T2_PAGE] for p in wanted)
