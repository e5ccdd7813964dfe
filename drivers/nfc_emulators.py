"""Card-side emulators of an NTAG 424 DNA tag and a MIFARE DESFire EV2/EV3 card.

For tests and the simulated twin: each answers command APDUs (``respond``) as the real chip
does for the commands gateway.nfc_cards sends, built from the same cryptography
(gateway.ntag424): GetVersion, ISO SELECT, AuthenticateEV2First, SelectApplication, ISO SELECT
FILE and ISO READ BINARY. A reader that does not prove the card's key gets 91 AE like a real
card; anything else gets a proper error status (91 1C illegal command, 6D00, 6A82, …).

``checks_reader=False`` models a clone: a device that copies the UID but not the key, so it
cannot check the reader's cryptogram and answers anyway (its answer then fails verification).

SUN: the NDEF file holds a URI record whose SUN message is made on the first READ BINARY after
each SELECT FILE, when the SDM read counter is incremented; further reads in that selection
return the same bytes, so a reader may read NLEN and then the message.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway import ntag424
from gateway.nfc_cards import NDEF_APPLICATION_DF_NAME, NfcKeys

Random = Callable[[int], bytes]

SW_OK = b"\x90\x00"
SW_END_OF_FILE = b"\x62\x82"
SW_WRONG_LENGTH = b"\x67\x00"
SW_CONDITIONS = b"\x69\x85"
SW_NO_CURRENT_FILE = b"\x69\x86"
SW_NOT_FOUND = b"\x6a\x82"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_OUTSIDE_FILE = b"\x6b\x00"
SW_INS_UNKNOWN = b"\x6d\x00"
SW_CLA_UNKNOWN = b"\x6e\x00"

NATIVE_OK = b"\x91\x00"
NATIVE_MORE = b"\x91\xaf"
NATIVE_ILLEGAL_COMMAND = b"\x91\x1c"
NATIVE_NO_SUCH_KEY = b"\x91\x40"
NATIVE_LENGTH_ERROR = b"\x91\x7e"
NATIVE_PERMISSION_DENIED = b"\x91\x9d"
NATIVE_APPLICATION_NOT_FOUND = b"\x91\xa0"
NATIVE_AUTHENTICATION_ERROR = b"\x91\xae"

# GetVersion frames of an NTAG 424 DNA as logged from a real tag (vendor 04 NXP, type 04 NTAG,
# major 0x30); the third frame is UID ‖ batch number ‖ fabrication week and year.
NTAG424_HARDWARE = bytes.fromhex("04040830001105")
NTAG424_SOFTWARE = bytes.fromhex("04040201021105")
# DESFire: type 01, major 0x12 for EV2 and 0x33 for EV3, 0x1A: 8 KB storage.
DESFIRE_EV3_MAJOR = 0x33
BATCH_AND_DATE = bytes.fromhex("BA5C0FFEE01924")

CC_FILE_ID = bytes.fromhex("E103")
NDEF_FILE_ID = bytes.fromhex("E104")
PROPRIETARY_FILE_ID = bytes.fromhex("E105")
NDEF_FILE_BYTES = 256
# The capability container of an NTAG 424 DNA as delivered (NT4H2421Gx datasheet).
CC_FILE = bytes.fromhex("001720007F007F0406E10401000000" + "0506E10500808283")
NTAG424_KEYS = 5

# NFC Forum URI record prefixes (URI RTD), longest first so "https://www." wins over "https://".
_URI_PREFIXES = (
    (0x02, "https://www."),
    (0x01, "http://www."),
    (0x04, "https://"),
    (0x03, "http://"),
)


@dataclass(frozen=True, slots=True)
class Apdu:
    """An ISO 7816-4 short command APDU; ``le`` is None when absent (256 when 00)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None


def parse_apdu(apdu: bytes) -> Apdu | None:
    """Split a short APDU into its fields; None if it is not one (extended length included)."""
    if len(apdu) < 4:
        return None
    cla, ins, p1, p2 = apdu[:4]
    body = apdu[4:]
    if not body:
        return Apdu(cla, ins, p1, p2, b"", None)
    if len(body) == 1:
        return Apdu(cla, ins, p1, p2, b"", body[0] or 256)
    lc = body[0]
    if lc == 0 or len(body) not in (1 + lc, 2 + lc):
        return None
    le = (body[-1] or 256) if len(body) == 2 + lc else None
    return Apdu(cla, ins, p1, p2, body[1 : 1 + lc], le)


def ndef_uri_message(url: str) -> bytes:
    """An NDEF message of one URI record (NFC Forum URI RTD) holding ``url``."""
    code, rest = 0x00, url
    for prefix_code, prefix in _URI_PREFIXES:
        if url.startswith(prefix):
            code, rest = prefix_code, url[len(prefix) :]
            break
    payload = bytes([code]) + rest.encode("utf-8")
    if len(payload) < 256:  # MB ME SR, TNF 1 (well-known), type "U"
        return bytes([0xD1, 1, len(payload)]) + b"U" + payload
    return bytes([0xC1, 1]) + len(payload).to_bytes(4, "big") + b"U" + payload


class _IsoDepCard(abc.ABC):
    """What both chips share: APDU framing, GetVersion and AuthenticateEV2First."""

    def __init__(
        self,
        uid: bytes,
        hardware: bytes,
        software: bytes,
        *,
        checks_reader: bool,
        random: Random,
    ) -> None:
        self.uid = uid
        self.commands: list[bytes] = []  # every APDU received, for tests
        self.authenticated_key: int | None = None
        # A 4-byte UID (random ID) shows zero-padded to 7 bytes.
        self._version = (hardware, software, uid.ljust(7, b"\x00") + BATCH_AND_DATE)
        self._checks_reader = checks_reader
        self._random = random
        self._chain: str | None = None  # "version1", "version2" or "auth": what AF continues
        self._auth: tuple[int, bytes, bytes] | None = None  # key no, key, RndB

    def respond(self, apdu: bytes) -> bytes:
        """Answer one command APDU with response data ‖ SW1 SW2."""
        self.commands.append(bytes(apdu))
        command = parse_apdu(apdu)
        if command is None:
            self._chain = None
            return SW_WRONG_LENGTH
        if command.cla == 0x90:
            return self._native(command)
        self._chain = None
        if command.cla == 0x00:
            return self._iso(command)
        return SW_CLA_UNKNOWN

    def _native(self, command: Apdu) -> bytes:
        chain, self._chain = self._chain, None
        if command.p1 or command.p2 or command.le != 256:
            return NATIVE_LENGTH_ERROR  # ISO wrapping: P1 = P2 = 00 and Le = 00
        if command.ins == 0xAF:
            return self._additional_frame(chain, command.data)
        if command.ins == 0x60:
            if command.data:
                return NATIVE_LENGTH_ERROR
            self._chain = "version1"
            return self._version[0] + NATIVE_MORE
        if command.ins == 0x71:
            self.authenticated_key = None  # a new authentication ends the previous one
            return self._authenticate_part1(command.data)
        return self._other_native(command)

    def _additional_frame(self, chain: str | None, data: bytes) -> bytes:
        if chain == "version1" and not data:
            self._chain = "version2"
            return self._version[1] + NATIVE_MORE
        if chain == "version2" and not data:
            return self._version[2] + NATIVE_OK
        if chain == "auth":
            return self._authenticate_part2(data)
        return NATIVE_ILLEGAL_COMMAND

    def _authenticate_part1(self, data: bytes) -> bytes:
        # KeyNo ‖ LenCap ‖ PCDcap2 (LenCap bytes) (AN12196 §6.6).
        if len(data) < 2 or len(data) != 2 + data[1]:
            return NATIVE_LENGTH_ERROR
        if not self._may_authenticate():
            return NATIVE_PERMISSION_DENIED
        key = self._key(data[0])
        if key is None:
            return NATIVE_NO_SUCH_KEY
        rnd_b = self._random(ntag424.RND_BYTES)
        self._auth = (data[0], key, rnd_b)
        self._chain = "auth"
        return ntag424.ev2_card_part1(key, rnd_b) + NATIVE_MORE

    def _authenticate_part2(self, data: bytes) -> bytes:
        if self._auth is None:
            return NATIVE_ILLEGAL_COMMAND
        (key_no, key, rnd_b), self._auth = self._auth, None
        if len(data) != ntag424.EV2_READER_MESSAGE_BYTES:
            return NATIVE_LENGTH_ERROR
        if self._checks_reader:
            rnd_a = ntag424.ev2_card_check(key, rnd_b, data)
            if rnd_a is None:
                return NATIVE_AUTHENTICATION_ERROR
        else:
            rnd_a = ntag424.ev2_reader_rnd_a(key, data)
        self.authenticated_key = key_no
        ti = self._random(ntag424.TI_BYTES)
        return ntag424.ev2_card_response(key, ti, rnd_a) + NATIVE_OK

    @abc.abstractmethod
    def _may_authenticate(self) -> bool:
        """Whether AuthenticateEV2First is allowed in the card's current state."""

    @abc.abstractmethod
    def _key(self, key_no: int) -> bytes | None:
        """The card's key ``key_no`` in its selected application; None: no such key."""

    def _other_native(self, command: Apdu) -> bytes:
        return NATIVE_ILLEGAL_COMMAND

    def _iso(self, command: Apdu) -> bytes:
        return SW_INS_UNKNOWN


class Ntag424Tag(_IsoDepCard):
    """An NTAG 424 DNA: the NDEF application with five AES keys and an NDEF file with SUN.

    ``app_keys`` maps key numbers 0-4 to keys (missing ones are the factory all-zero key).
    With ``sun_enabled`` the NDEF file's URL (``url``) carries a SUN message made with
    ``sun_meta_key`` and ``sun_file_key``, mirroring ``file_data`` (16*n bytes) encrypted
    when given; ``counter`` is the SDM read counter before the next read.
    """

    def __init__(
        self,
        uid: bytes,
        *,
        app_keys: Mapping[int, bytes] | None = None,
        sun_meta_key: bytes | None = None,
        sun_file_key: bytes | None = None,
        sun_enabled: bool = False,
        counter: int = 0,
        url: str = "https://luckey.example/t",
        file_data: bytes | None = None,
        checks_reader: bool = True,
        random: Random = secrets.token_bytes,
    ) -> None:
        if len(uid) != ntag424.UID_BYTES:
            raise ValueError("an NTAG 424 DNA UID is 7 bytes")
        if sun_enabled and (sun_meta_key is None or sun_file_key is None):
            raise ValueError("SUN needs the meta-read key and the file-read key")
        if not 0 <= counter <= ntag424.COUNTER_MAX:
            raise ValueError("the SDM read counter is 24 bits")
        super().__init__(
            uid, NTAG424_HARDWARE, NTAG424_SOFTWARE, checks_reader=checks_reader, random=random
        )
        self._keys = {n: bytes(16) for n in range(NTAG424_KEYS)}
        for key_no, key in (app_keys or {}).items():
            if key_no not in self._keys or len(key) != ntag424.KEY_BYTES:
                raise ValueError("application keys are numbered 0 to 4 and 16 bytes long")
            self._keys[key_no] = key
        self._sun_meta_key = sun_meta_key
        self._sun_file_key = sun_file_key
        self.sun_enabled = sun_enabled
        self.counter = counter
        self.url = url
        self._file_data = file_data
        self._application_selected = False
        self._file: bytes | None = None  # the selected file's id
        self._snapshot: bytes | None = None  # the NDEF file as made for this selection

    @classmethod
    def for_site(
        cls,
        uid: bytes,
        keys: NfcKeys,
        *,
        sun_enabled: bool = False,
        counter: int = 0,
        url: str = "https://luckey.example/t",
        file_data: bytes | None = None,
        checks_reader: bool = True,
        random: Random = secrets.token_bytes,
    ) -> Ntag424Tag:
        """A tag personalised for the site of ``keys``: diversified auth and SUN keys."""
        app_keys = {}
        auth_key = keys.ntag424_key(uid)
        if auth_key is not None:
            app_keys[keys.ntag424_key_no] = auth_key
        return cls(
            uid,
            app_keys=app_keys,
            sun_meta_key=keys.sun_meta_key,
            sun_file_key=keys.sun_file_key(uid),
            sun_enabled=sun_enabled,
            counter=counter,
            url=url,
            file_data=file_data,
            checks_reader=checks_reader,
            random=random,
        )

    def _may_authenticate(self) -> bool:
        return self._application_selected

    def _key(self, key_no: int) -> bytes | None:
        return self._keys.get(key_no)

    def _iso(self, command: Apdu) -> bytes:
        if command.ins == 0xA4:
            return self._select(command)
        if command.ins == 0xB0:
            return self._read_binary(command)
        return SW_INS_UNKNOWN

    def _select(self, command: Apdu) -> bytes:
        if command.p2 != 0x0C:
            return SW_WRONG_P1P2  # only "no response data" is emulated
        if command.p1 == 0x04:
            if command.data != NDEF_APPLICATION_DF_NAME:
                return SW_NOT_FOUND
            self._application_selected, self._file, self._snapshot = True, None, None
            self.authenticated_key = None
            return SW_OK
        if command.p1 == 0x00:
            if not self._application_selected or command.data not in (
                CC_FILE_ID,
                NDEF_FILE_ID,
                PROPRIETARY_FILE_ID,
            ):
                return SW_NOT_FOUND
            self._file, self._snapshot = command.data, None
            return SW_OK
        return SW_WRONG_P1P2

    def _read_binary(self, command: Apdu) -> bytes:
        if self._file is None:
            return SW_NO_CURRENT_FILE
        if command.p1 & 0x80:
            return SW_WRONG_P1P2  # short EF identifiers are not emulated
        if command.le is None:
            return SW_WRONG_LENGTH
        if self._snapshot is None:
            if self._file == NDEF_FILE_ID and self.sun_enabled:
                if self.counter >= ntag424.COUNTER_MAX:
                    return SW_CONDITIONS
                self.counter += 1
            self._snapshot = self._file_content(self._file)
        offset = (command.p1 << 8) | command.p2
        if offset >= len(self._snapshot):
            return SW_OUTSIDE_FILE
        data = self._snapshot[offset : offset + command.le]
        if len(data) < command.le:
            return data + SW_END_OF_FILE
        return data + SW_OK

    def _file_content(self, file_id: bytes) -> bytes:
        if file_id == CC_FILE_ID:
            return CC_FILE
        if file_id == PROPRIETARY_FILE_ID:
            return bytes(128)
        message = ndef_uri_message(self.sun_url() if self.sun_enabled else self.url)
        content = len(message).to_bytes(2, "big") + message
        if len(content) > NDEF_FILE_BYTES:
            raise ValueError("the NDEF message does not fit the tag's file")
        return content + bytes(NDEF_FILE_BYTES - len(content))

    def sun_url(self) -> str:
        """The URL with a SUN message for the current counter (what the next read shows)."""
        if self._sun_meta_key is None or self._sun_file_key is None:
            raise ValueError("this tag has no SUN keys")
        picc_data = ntag424.encrypt_picc_data(
            self._sun_meta_key, self.uid, self.counter, self._random(5)
        )
        session = ntag424.sun_session_keys(self._sun_file_key, self.uid, self.counter)
        separator = "&" if "?" in self.url else "?"
        url = f"{self.url}{separator}picc_data={picc_data.hex().upper()}"
        mac_input = b""
        if self._file_data is not None:
            enc = ntag424.encrypt_file_data(session.enc, self.counter, self._file_data)
            enc_hex = enc.hex().upper()
            url += f"&enc={enc_hex}"
            mac_input = f"{enc_hex}&cmac=".encode("ascii")  # SDMMACInputOffset at enc
        cmac = ntag424.sun_mac(session.mac, mac_input)
        return f"{url}&cmac={cmac.hex().upper()}"


class DesfireCard(_IsoDepCard):
    """A MIFARE DESFire EV2/EV3 card with one AES application ``aid`` holding ``key``."""

    def __init__(
        self,
        uid: bytes,
        aid: bytes,
        key: bytes,
        *,
        key_no: int = 0,
        major: int = DESFIRE_EV3_MAJOR,
        checks_reader: bool = True,
        random: Random = secrets.token_bytes,
    ) -> None:
        if len(aid) != ntag424.AID_BYTES or len(key) != ntag424.KEY_BYTES:
            raise ValueError("the AID is 3 bytes and the key 16")
        hardware = bytes([0x04, 0x01, 0x01, major, 0x00, 0x1A, 0x05])
        software = bytes([0x04, 0x01, 0x01, major, 0x00, 0x1A, 0x05])
        super().__init__(uid, hardware, software, checks_reader=checks_reader, random=random)
        self.aid = aid
        self._app_key = (key_no, key)
        self._selected: bytes | None = None  # None: the PICC level

    @classmethod
    def for_site(
        cls,
        uid: bytes,
        keys: NfcKeys,
        *,
        major: int = DESFIRE_EV3_MAJOR,
        checks_reader: bool = True,
        random: Random = secrets.token_bytes,
    ) -> DesfireCard:
        """A card personalised for the site of ``keys`` (its diversified application key)."""
        key = keys.desfire_key(uid)
        if key is None:
            raise ValueError("the site has no DESFire master key")
        return cls(
            uid,
            keys.desfire_aid,
            key,
            key_no=keys.desfire_key_no,
            major=major,
            checks_reader=checks_reader,
            random=random,
        )

    def _may_authenticate(self) -> bool:
        return self._selected is not None  # the PICC master key is not emulated

    def _key(self, key_no: int) -> bytes | None:
        return self._app_key[1] if key_no == self._app_key[0] else None

    def _other_native(self, command: Apdu) -> bytes:
        if command.ins != 0x5A:
            return NATIVE_ILLEGAL_COMMAND
        self.authenticated_key = None
        if len(command.data) != ntag424.AID_BYTES:
            return NATIVE_LENGTH_ERROR
        if command.data == bytes(3):
            self._selected = None
            return NATIVE_OK
        if command.data != self.aid:
            return NATIVE_APPLICATION_NOT_FOUND
        self._selected = command.data
        return NATIVE_OK

    def _iso(self, command: Apdu) -> bytes:
        return SW_NOT_FOUND if command.ins == 0xA4 else SW_INS_UNKNOWN
