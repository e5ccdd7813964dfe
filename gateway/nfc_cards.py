"""The reader's side of the dialogue with an ISO-DEP card: identify it and capture a proof.

The transport is abstract (``Transceive``: one command APDU in, response data ‖ SW1 SW2 out),
so an nfcpy driver, a PC/SC reader or an emulator (drivers/nfc_emulators.py) can carry it.
This module never decides anything: it records what the card said, and the verifiers in
gateway/nfc_verifiers.py check it, so a failed proof becomes a refused decision with an event.

Dialogue (APDUs as in the NTAG 424 DNA datasheet NT4H2421Gx and AN12196):

1. GetVersion, ISO-wrapped native command 0x60 (``90 60 00 00 00``, then ``90 AF 00 00 00``
   twice): byte 1 of the hardware block is the type, 0x04 NTAG, 0x01/0x81 MIFARE DESFire. A
   card that refuses GetVersion (a bank card, a phone) is of neither type.
2. NTAG 424 DNA: ISO SELECT of the NDEF application by DF name D2760000850101, then
   - with ``ntag424_master``: AuthenticateEV2First (``90 71 00 00 02 KeyNo 00 00``, then
     ``90 AF 00 00 20 E(K, RndA ‖ RndB') 00``) with the tag's diversified key, RndA issued by
     the ChallengeBook, so the proof is fresh and single-use;
   - else with both SUN keys: ISO SELECT FILE E104 (the NDEF file) and ISO READ BINARY of the
     NDEF message, whose URI record carries the SUN message.
3. DESFire EV2/EV3: SelectApplication(``desfire_aid``) (``90 5A 00 00 03 AID 00``), then
   AuthenticateEV2First as above with the card's diversified key.

Proof layouts (``CardReading.proof``), the first byte is the layout version:

- ``0x01`` AuthenticateEV2First, 65 bytes:
  ``01 ‖ RndA (16) ‖ E(K, RndB) (16) ‖ E(K, TI ‖ RndA' ‖ PDcap2 ‖ PCDcap2) (32)``.
  RndA proves freshness (the gateway issued it), the last part proves the key (only a holder
  of K can encrypt RndA' of a fresh RndA). E(RndB) completes the record (with it the session
  keys can be derived); the card's answer does not cover it, so no check rests on it.
- ``0x02`` SUN message, variable length:
  ``02 ‖ picc_data (16) ‖ cmac (8) ‖ len(enc) (2, big-endian) ‖ enc ‖ len(mac_input) (2,
  big-endian) ‖ mac_input``; ``enc`` is empty when no file data is mirrored, ``mac_input`` is
  the exact ASCII the tag MACed (see gateway.ntag424.parse_sun_url).

Per-tag keys (AN10922 §2.2.1): M = UID ‖ AID ‖ system identifier. DESFire cards use the site's
``desfire_aid``; NTAG 424 DNA has no DESFire AID, so ``ntag424_aid`` defaults to ``NTAG424_AID``
below. Limits: cards with random UIDs (DESFire random ID) are not read here, LRP mode is not
supported.

Cards this dialogue does not cover: ``NotOurCard`` (a ``CardError``) says the card is of no type
the site's keys cover, so the reader may take its bare UID instead, as for a card that does not
speak ISO-DEP. Every other ``CardError`` is a card of a covered type whose dialogue failed: it
gives no reading at all (a tag that looks like an NTAG 424 DNA but fails to authenticate is
refused, never read as its UID).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from gateway import ntag424
from gateway.challenges import ChallengeBook
from gateway.credentials import redact
from gateway.model import CredentialKind
from gateway.ntag424 import SunMessage

Transceive = Callable[[bytes], bytes]

#: The NFC Forum Type 4 NDEF application of the NTAG 424 DNA (NT4H2421Gx datasheet).
NDEF_APPLICATION_DF_NAME: Final = bytes.fromhex("D2760000850101")
NDEF_FILE_ID: Final = bytes.fromhex("E104")  # the NDEF file of that application

#: The AID that stands for the NTAG 424 DNA application in its tags' key diversification.
#: The tag has no DESFire AID, so the first three bytes of its DF name are used; changing it
#: changes every tag key of a site.
NTAG424_AID: Final = NDEF_APPLICATION_DF_NAME[:3]

UID_BYTES = 7
MAX_SYSTEM_IDENTIFIER = 31 - UID_BYTES - ntag424.AID_BYTES  # AN10922: M is at most 31 bytes
NTAG424_KEYS = 5  # keys 0 to 4 (NT4H2421Gx datasheet)
DESFIRE_KEYS = 14  # keys 0 to 13 per application

PROOF_EV2: Final = 0x01
PROOF_SUN: Final = 0x02
EV2_PROOF_BYTES = 1 + 2 * ntag424.RND_BYTES + ntag424.EV2_CARD_RESPONSE_BYTES

# GetVersion hardware types (byte 1 of the first frame).
HW_TYPE_NTAG = 0x04
HW_TYPES_DESFIRE = frozenset({0x01, 0x81})
DESFIRE_EV2_MAJOR = 0x12  # EV1 is 0x01 and knows no AuthenticateEV2First; EV3 is 0x33
RANDOM_ID_FIRST_BYTE = 0x08  # ISO 14443-3: a 4-byte UID starting 08 is a random ID
_OTHER_CARD = "not an NTAG 424 DNA or DESFire card"

# Native commands (ISO-wrapped: CLA 90, P1 = P2 = 00, Le 00).
CMD_GET_VERSION = 0x60
CMD_AUTHENTICATE_EV2_FIRST = 0x71
CMD_SELECT_APPLICATION = 0x5A
CMD_ADDITIONAL_FRAME = 0xAF
NATIVE_OK = 0x00
NATIVE_MORE = 0xAF
NATIVE_AUTHENTICATION_ERROR = 0xAE

SW_OK = b"\x90\x00"
READ_CHUNK = 128  # the NTAG 424 DNA frame size is 128 bytes; stay within one frame
NDEF_FILE_BYTES = 256

_NATIVE_STATUS = {
    0x0C: "no changes",
    0x0E: "out of memory",
    0x1C: "illegal command",
    0x1E: "integrity error",
    0x40: "no such key",
    0x7E: "length error",
    0x9D: "permission denied",
    0x9E: "parameter error",
    0xA0: "application not found",
    0xAE: "authentication error",
    0xBE: "boundary error",
    0xCA: "command aborted",
    0xEE: "memory error",
    0xF0: "file not found",
}
_ISO_STATUS = {
    b"\x62\x82": "end of file reached",
    b"\x67\x00": "wrong length",
    b"\x69\x82": "security status not satisfied",
    b"\x69\x85": "conditions of use not satisfied",
    b"\x69\x86": "no file selected",
    b"\x6a\x80": "incorrect data",
    b"\x6a\x82": "file or application not found",
    b"\x6a\x86": "incorrect P1 P2",
    b"\x6b\x00": "offset outside the file",
    b"\x6d\x00": "instruction not supported",
    b"\x6e\x00": "class not supported",
}

# NFC Forum URI record type: the first payload byte abbreviates the URI's start.
_URI_PREFIXES = {
    0x00: "",
    0x01: "http://www.",
    0x02: "https://www.",
    0x03: "http://",
    0x04: "https://",
}
_TNF_WELL_KNOWN = 0x01


class CardGone(Exception):
    """The transport raises this when the tag left the field."""


class CardError(Exception):
    """The dialogue failed; ``str(err)`` says why in plain words (never key bytes)."""


class NotOurCard(CardError):
    """The card is of a type the site's keys do not cover; its bare UID may be read instead.

    Raised only while identifying the card, before it has sent anything that could be a
    proof: a card that does not answer GetVersion or is of another type, a DESFire card older
    than EV2, a random ID, a type for which the site has no key, or a gateway with no NFC keys
    at all. A card of a covered type whose dialogue or authentication fails raises a plain
    ``CardError``, never this.
    """


@dataclass(frozen=True, slots=True)
class NfcKeys:
    """A site's NFC keys and diversification parameters; ``None`` disables that credential.

    ``ntag424_master``: AuthenticateEV2First on NTAG 424 DNA with key ``ntag424_key_no``.
    ``sun_meta_key`` (KSDMMetaRead, the same on every tag) and ``sun_file_master`` (diversified
    per tag into KSDMFileRead): SUN messages. ``desfire_master``: AuthenticateEV2First on
    DESFire EV2/EV3 with key ``desfire_key_no`` of application ``desfire_aid``. Per-tag keys
    are AN10922 with M = UID ‖ AID ‖ ``system_identifier`` (1 to 21 bytes), the AID being
    ``ntag424_aid`` for NTAG 424 DNA and ``desfire_aid`` for DESFire. Keys never show in repr.
    """

    ntag424_master: bytes | None = field(repr=False)
    sun_meta_key: bytes | None = field(repr=False)
    sun_file_master: bytes | None = field(repr=False)
    desfire_master: bytes | None = field(repr=False)
    desfire_aid: bytes
    system_identifier: bytes
    ntag424_key_no: int = 0
    desfire_key_no: int = 0
    ntag424_aid: bytes = NTAG424_AID

    def __post_init__(self) -> None:
        for name in ("ntag424_master", "sun_meta_key", "sun_file_master", "desfire_master"):
            key = getattr(self, name)
            if key is not None and len(key) != ntag424.KEY_BYTES:
                raise ValueError(f"{name} must be {ntag424.KEY_BYTES} bytes, not {len(key)}")
        if (self.sun_meta_key is None) != (self.sun_file_master is None):
            raise ValueError("SUN needs both sun_meta_key and sun_file_master, or neither")
        for name in ("desfire_aid", "ntag424_aid"):
            if len(getattr(self, name)) != ntag424.AID_BYTES:
                raise ValueError(f"{name} must be {ntag424.AID_BYTES} bytes")
        if not 1 <= len(self.system_identifier) <= MAX_SYSTEM_IDENTIFIER:
            raise ValueError(f"system_identifier must be 1 to {MAX_SYSTEM_IDENTIFIER} bytes")
        if not 0 <= self.ntag424_key_no < NTAG424_KEYS:
            raise ValueError(f"ntag424_key_no must be 0 to {NTAG424_KEYS - 1}")
        if not 0 <= self.desfire_key_no < DESFIRE_KEYS:
            raise ValueError(f"desfire_key_no must be 0 to {DESFIRE_KEYS - 1}")

    def ntag424_key(self, uid: bytes) -> bytes | None:
        """The AuthenticateEV2First key of one NTAG 424 DNA tag, if configured."""
        if self.ntag424_master is None:
            return None
        return ntag424.tag_key(self.ntag424_master, uid, self.ntag424_aid, self.system_identifier)

    def sun_file_key(self, uid: bytes) -> bytes | None:
        """KSDMFileRead of one NTAG 424 DNA tag, if SUN is configured."""
        if self.sun_file_master is None:
            return None
        return ntag424.tag_key(self.sun_file_master, uid, self.ntag424_aid, self.system_identifier)

    def desfire_key(self, uid: bytes) -> bytes | None:
        """The AuthenticateEV2First key of one DESFire card, if configured."""
        if self.desfire_master is None:
            return None
        return ntag424.tag_key(self.desfire_master, uid, self.desfire_aid, self.system_identifier)


@dataclass(frozen=True, slots=True, repr=False)
class CardReading:
    """What a card presented: its kind, its UID (upper-case hex) and the captured proof."""

    kind: CredentialKind
    value: str
    proof: bytes

    def __repr__(self) -> str:
        # A reading may be logged whole: show the UID redacted, as everywhere else.
        return (
            f"CardReading(kind={self.kind.value}, value={redact(self.value)!r}, "
            f"proof={len(self.proof)} bytes)"
        )


@dataclass(frozen=True, slots=True)
class Ev2Proof:
    """An AuthenticateEV2First exchange: the issued RndA, E(K, RndB) and the card's answer."""

    rnd_a: bytes
    enc_rnd_b: bytes
    card_response: bytes

    def __post_init__(self) -> None:
        if len(self.rnd_a) != ntag424.RND_BYTES or len(self.enc_rnd_b) != ntag424.RND_BYTES:
            raise ValueError("RndA and E(RndB) must be 16 bytes each")
        if len(self.card_response) != ntag424.EV2_CARD_RESPONSE_BYTES:
            raise ValueError("the card's answer must be 32 bytes")

    def to_bytes(self) -> bytes:
        """Layout 0x01 (module docstring)."""
        return bytes([PROOF_EV2]) + self.rnd_a + self.enc_rnd_b + self.card_response


@dataclass(frozen=True, slots=True)
class SunProof:
    """A SUN message read from a tag's NDEF file."""

    message: SunMessage

    def to_bytes(self) -> bytes:
        """Layout 0x02 (module docstring)."""
        enc = self.message.enc or b""
        return (
            bytes([PROOF_SUN])
            + self.message.picc_data
            + self.message.cmac
            + len(enc).to_bytes(2, "big")
            + enc
            + len(self.message.mac_input).to_bytes(2, "big")
            + self.message.mac_input
        )


def parse_proof(proof: bytes) -> Ev2Proof | SunProof:
    """Decode a proof of layout 0x01 or 0x02; ValueError saying what is wrong."""
    if not proof:
        raise ValueError("the proof is empty")
    version, body = proof[0], proof[1:]
    if version == PROOF_EV2:
        if len(proof) != EV2_PROOF_BYTES:
            raise ValueError(f"an EV2 proof is {EV2_PROOF_BYTES} bytes, not {len(proof)}")
        return Ev2Proof(body[:16], body[16:32], body[32:])
    if version == PROOF_SUN:
        head = ntag424.PICC_DATA_BYTES + ntag424.SUN_MAC_BYTES
        picc_data, cmac = body[: ntag424.PICC_DATA_BYTES], body[ntag424.PICC_DATA_BYTES : head]
        enc, rest = _length_prefixed(body[head:], "enc")
        mac_input, rest = _length_prefixed(rest, "MAC input")
        if len(picc_data) != ntag424.PICC_DATA_BYTES or len(cmac) != ntag424.SUN_MAC_BYTES:
            raise ValueError("a SUN proof is too short")
        if rest:
            raise ValueError(f"a SUN proof has {len(rest)} bytes too many")
        return SunProof(SunMessage(picc_data, cmac, enc or None, mac_input))
    raise ValueError(f"unknown proof layout {version:#04x}; known: 0x01 (EV2), 0x02 (SUN)")


def _length_prefixed(data: bytes, name: str) -> tuple[bytes, bytes]:
    if len(data) < 2:
        raise ValueError(f"a SUN proof ends before the length of its {name}")
    size = int.from_bytes(data[:2], "big")
    if len(data) < 2 + size:
        raise ValueError(f"a SUN proof ends inside its {name}")
    return data[2 : 2 + size], data[2 + size :]


# --- The dialogue -----------------------------------------------------------------------------


def read_iso_dep_card(
    uid: bytes, transceive: Transceive, keys: NfcKeys, challenges: ChallengeBook
) -> CardReading:
    """Identify the card and capture its proof; CardGone propagates.

    NotOurCard if the card is of no type ``keys`` cover, CardError if a card of a covered type
    fails its dialogue (module docstring).
    """
    if len(uid) == 4 and uid[0] == RANDOM_ID_FIRST_BYTE:
        raise NotOurCard("the card shows a random ID: such cards are not supported")
    hardware = _get_version(transceive)
    hw_type, hw_major = hardware[1], hardware[3]
    if hw_type == HW_TYPE_NTAG:
        return _read_ntag424(uid, transceive, keys, challenges)
    if hw_type in HW_TYPES_DESFIRE:
        if hw_major < DESFIRE_EV2_MAJOR:
            raise NotOurCard("a DESFire card older than EV2: it has no AuthenticateEV2First")
        return _read_desfire(uid, transceive, keys, challenges)
    raise NotOurCard(f"{_OTHER_CARD} (hardware type {hw_type:#04x})")


def _read_ntag424(
    uid: bytes, transceive: Transceive, keys: NfcKeys, challenges: ChallengeBook
) -> CardReading:
    if keys.ntag424_master is None and keys.sun_file_master is None:
        raise NotOurCard("no key configured for NTAG 424 DNA tags")
    if len(uid) != UID_BYTES:  # a covered type that is not what it claims: refused
        raise CardError(f"an NTAG 424 DNA has a 7-byte UID, this one has {len(uid)} bytes")
    auth_key = keys.ntag424_key(uid)
    _iso(transceive, _select_df_name(NDEF_APPLICATION_DF_NAME), "selecting the NDEF application")
    if auth_key is not None:
        proof = _authenticate(transceive, auth_key, keys.ntag424_key_no, challenges).to_bytes()
    else:
        proof = SunProof(_read_sun_message(transceive)).to_bytes()
    return CardReading(CredentialKind.NTAG424, uid.hex().upper(), proof)


def _read_desfire(
    uid: bytes, transceive: Transceive, keys: NfcKeys, challenges: ChallengeBook
) -> CardReading:
    key = keys.desfire_key(uid)
    if key is None:
        raise NotOurCard("no key configured for DESFire cards")
    data, status = _native(
        transceive, CMD_SELECT_APPLICATION, keys.desfire_aid, "selecting the application"
    )
    _expect(status, NATIVE_OK, data, 0, "selecting the application")
    proof = _authenticate(transceive, key, keys.desfire_key_no, challenges)
    return CardReading(CredentialKind.DESFIRE, uid.hex().upper(), proof.to_bytes())


def _get_version(transceive: Transceive) -> bytes:
    """The 7-byte hardware block of GetVersion; the other two frames are read and dropped.

    A card that refuses GetVersion outright (an ISO status word such as 6E 00 or 6D 00, or a
    native error) does not speak the NTAG 424 DNA / DESFire command set: NotOurCard.
    """
    response = transceive(_native_apdu(CMD_GET_VERSION, b""))
    if len(response) < 2:
        raise CardError("GetVersion: the card's answer is too short")
    if response[-2] != 0x91:
        raise NotOurCard(f"GetVersion: {_iso_status(response[-2:])}: {_OTHER_CARD}")
    hardware, status = response[:-2], response[-1]
    if status != NATIVE_MORE:
        raise NotOurCard(f"GetVersion: {_native_status(status)}: {_OTHER_CARD}")
    _expect(status, NATIVE_MORE, hardware, 7, "GetVersion")
    software, status = _native(transceive, CMD_ADDITIONAL_FRAME, b"", "GetVersion")
    _expect(status, NATIVE_MORE, software, 7, "GetVersion")
    production, status = _native(transceive, CMD_ADDITIONAL_FRAME, b"", "GetVersion")
    if status != NATIVE_OK:
        raise CardError(f"GetVersion: {_native_status(status)}")
    if len(production) < 14:  # UID 7, batch 5, fab week and year; EV3 may add more
        raise CardError("GetVersion: the last frame is too short")
    return hardware


def _authenticate(
    transceive: Transceive, key: bytes, key_no: int, challenges: ChallengeBook
) -> Ev2Proof:
    """AuthenticateEV2First (AN12196 §6.6) with a gateway-issued RndA, captured as a proof."""
    rnd_a = challenges.issue(ntag424.RND_BYTES)
    what = "authentication"
    # KeyNo ‖ LenCap 00: no PCDcap2 sent (AN12196 §6.6).
    enc_rnd_b, status = _native(transceive, CMD_AUTHENTICATE_EV2_FIRST, bytes([key_no, 0]), what)
    _expect(status, NATIVE_MORE, enc_rnd_b, ntag424.RND_BYTES, what)
    reader_message, _rnd_b = ntag424.ev2_first_part2(key, rnd_a, enc_rnd_b)
    card_response, status = _native(transceive, CMD_ADDITIONAL_FRAME, reader_message, what)
    _expect(status, NATIVE_OK, card_response, ntag424.EV2_CARD_RESPONSE_BYTES, what)
    return Ev2Proof(rnd_a, enc_rnd_b, card_response)


def _read_sun_message(transceive: Transceive) -> SunMessage:
    """Read the NDEF file and return the SUN message in its URI record."""
    _iso(
        transceive, bytes.fromhex("00A4000C02") + NDEF_FILE_ID + b"\x00", "selecting the NDEF file"
    )
    length = _read_binary(transceive, 0, 2)
    nlen = int.from_bytes(length, "big")
    if nlen == 0:
        raise CardError("the tag holds no NDEF message")
    if 2 + nlen > NDEF_FILE_BYTES:
        raise CardError("the tag's NDEF length is larger than its file")
    message = b""
    while len(message) < nlen:
        size = min(READ_CHUNK, nlen - len(message))
        message += _read_binary(transceive, 2 + len(message), size)
    url = _ndef_uri(message)
    try:
        return ntag424.parse_sun_url(url)
    except ValueError as err:
        raise CardError(f"the tag's URL is not a SUN message: {err}") from None


def _read_binary(transceive: Transceive, offset: int, size: int) -> bytes:
    apdu = bytes([0x00, 0xB0, offset >> 8, offset & 0xFF, size])
    return _iso(transceive, apdu, "reading the NDEF file", size)


def _ndef_uri(message: bytes) -> str:
    """The URI of the first URI record of an NDEF message; CardError if there is none."""
    position = 0
    while position < len(message):
        header = message[position]
        short, has_id, tnf = header & 0x10, header & 0x08, header & 0x07
        position += 1
        try:
            type_length = message[position]
            position += 1
            if short:
                payload_length = message[position]
                position += 1
            else:
                payload_length = int.from_bytes(message[position : position + 4], "big")
                position += 4
            id_length = message[position] if has_id else 0
            position += 1 if has_id else 0
        except IndexError:
            raise CardError("the tag's NDEF message is truncated") from None
        record_type = message[position : position + type_length]
        position += type_length + id_length
        payload = message[position : position + payload_length]
        position += payload_length
        if position > len(message):
            raise CardError("the tag's NDEF message is truncated")
        if tnf == _TNF_WELL_KNOWN and record_type == b"U" and payload:
            try:
                return _URI_PREFIXES.get(payload[0], "") + payload[1:].decode("utf-8")
            except UnicodeDecodeError:
                raise CardError("the tag's URI is not valid UTF-8") from None
        if header & 0x40:  # ME: the last record
            break
    raise CardError("the tag's NDEF message holds no URI record")


# --- APDUs ------------------------------------------------------------------------------------


def _select_df_name(name: bytes) -> bytes:
    # ISO SELECT by DF name, P2 0C: no FCI wanted (the APDU of AN12196's examples).
    return bytes([0x00, 0xA4, 0x04, 0x0C, len(name)]) + name + b"\x00"


def _native_apdu(command: int, data: bytes) -> bytes:
    apdu = bytes([0x90, command, 0x00, 0x00])
    if data:
        apdu += bytes([len(data)]) + data
    return apdu + b"\x00"


def _native(transceive: Transceive, command: int, data: bytes, what: str) -> tuple[bytes, int]:
    """Send an ISO-wrapped native command; return its data and the native status (SW2)."""
    response = transceive(_native_apdu(command, data))
    if len(response) < 2:
        raise CardError(f"{what}: the card's answer is too short")
    if response[-2] != 0x91:
        raise CardError(f"{what}: {_iso_status(response[-2:])}")
    return response[:-2], response[-1]


def _expect(status: int, wanted: int, data: bytes, size: int, what: str) -> None:
    if status != wanted:
        if status == NATIVE_AUTHENTICATION_ERROR:
            raise CardError(f"{what}: the card refused the key (it does not hold the site's key)")
        raise CardError(f"{what}: {_native_status(status)}")
    if len(data) != size:
        raise CardError(f"{what}: expected {size} bytes from the card, got {len(data)}")


def _iso(transceive: Transceive, apdu: bytes, what: str, size: int = 0) -> bytes:
    """Send an ISO 7816-4 command; return exactly ``size`` bytes of data or raise CardError."""
    response = transceive(apdu)
    if len(response) < 2:
        raise CardError(f"{what}: the card's answer is too short")
    if response[-2:] != SW_OK:
        raise CardError(f"{what}: {_iso_status(response[-2:])}")
    if len(response) - 2 != size:
        raise CardError(f"{what}: expected {size} bytes from the card, got {len(response) - 2}")
    return response[:-2]


def _native_status(status: int) -> str:
    name = _NATIVE_STATUS.get(status, "unexpected status")
    return f"the card answered 91 {status:02X} ({name})"


def _iso_status(sw: bytes) -> str:
    name = _ISO_STATUS.get(sw, "unexpected status")
    return f"the card answered {sw.hex(' ').upper()} ({name})"
