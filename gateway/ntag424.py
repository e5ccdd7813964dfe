"""NTAG 424 DNA and DESFire EV2 cryptography: SUN messages and AuthenticateEV2First.

Pure functions over bytes, no I/O. Everything here follows NXP AN12196 ("NTAG 424 DNA and
NTAG 424 DNA TagTamper features and hints") for the AES mode (LRP is not supported) and
AN10922 §2.2.1 for per-tag keys; the published vectors are in tests/vectors/nfc.json.

Byte order: AN12196 writes multi-byte values most significant byte first ("RndA[15..0]"), so
its RndA[15] is ``rnd_a[0]`` here. Counters are little-endian in every cryptogram (AN12196
§4.4), big-endian only when shown as text.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.diversify import aes_cmac, an10922_aes128

BLOCK = 16
KEY_BYTES = 16
RND_BYTES = 16  # RndA and RndB of AuthenticateEV2First (AN12196 §6.6)
TI_BYTES = 4  # transaction identifier chosen by the card (AN12196 §6.6)
CAPS_BYTES = 6  # PDcap2 and PCDcap2, each 6 bytes in the card's final answer (AN12196 §6.6)
EV2_CARD_RESPONSE_BYTES = 2 * BLOCK  # E(K, TI ‖ RndA' ‖ PDcap2 ‖ PCDcap2)
EV2_READER_MESSAGE_BYTES = 2 * BLOCK  # E(K, RndA ‖ RndB')
AID_BYTES = 3  # a DESFire application identifier

UID_BYTES = 7  # NTAG 424 DNA UIDs are 7 bytes (NT4H2421Gx datasheet)
PICC_DATA_BYTES = BLOCK  # encrypted PICCData, AES mode (AN12196 §4.4)
SUN_MAC_BYTES = 8  # SDMMAC: CMAC truncated to its odd bytes (MACt, AN12196 §3)
COUNTER_BYTES = 3  # SDMReadCtr is 24 bits
COUNTER_MAX = (1 << 24) - 1

# PICCDataTag (AN12196 §4.4): bit 7 UID mirrored, bit 6 SDMReadCtr mirrored,
# bits 3..0 the UID length. This gateway needs both UID and counter (0xC7 for a 7-byte UID).
PICC_TAG_UID = 0x80
PICC_TAG_COUNTER = 0x40
PICC_TAG_UID_LENGTH = 0x0F
PICC_DATA_TAG = PICC_TAG_UID | PICC_TAG_COUNTER | UID_BYTES

# Session vector prefixes: label (2 bytes) ‖ counter 0001 ‖ length 0080 (128-bit keys).
SV1_SDM_ENC = bytes.fromhex("C33C00010080")  # KSesSDMFileReadENC (AN12196 §4.4)
SV2_SDM_MAC = bytes.fromhex("3CC300010080")  # KSesSDMFileReadMAC (AN12196 §4.4)
SV1_AUTH_ENC = bytes.fromhex("A55A00010080")  # KSesAuthENC (AN12196 §6.6)
SV2_AUTH_MAC = bytes.fromhex("5AA500010080")  # KSesAuthMAC (AN12196 §6.6)

# The query parameters of a SUN URL this gateway reads; the names are the site's template.
PARAM_PICC_DATA = "picc_data"
PARAM_ENC = "enc"
PARAM_CMAC = "cmac"
_HEX = re.compile(r"[0-9A-Fa-f]*")


# --- AES helpers ------------------------------------------------------------------------------


def _check_key(key: bytes, name: str) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"{name} must be {KEY_BYTES} bytes, not {len(key)}")


def _cbc_encrypt(key: bytes, data: bytes, iv: bytes = bytes(BLOCK)) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _cbc_decrypt(key: bytes, data: bytes, iv: bytes = bytes(BLOCK)) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _ecb_encrypt_block(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block: an IV
    return encryptor.update(block) + encryptor.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def rotate_left(data: bytes) -> bytes:
    """``data`` rotated left by one byte: RndA' and RndB' of AN12196 §6.6."""
    return data[1:] + data[:1]


def _pad_zeros(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


# --- Per-tag keys -----------------------------------------------------------------------------


def tag_key(master: bytes, uid: bytes, aid: bytes, system_identifier: bytes) -> bytes:
    """The AES key of one tag or card: AN10922 §2.2.1 with M = UID ‖ AID ‖ system identifier."""
    if len(aid) != AID_BYTES:
        raise ValueError(f"application identifier must be {AID_BYTES} bytes, not {len(aid)}")
    if not uid:
        raise ValueError("UID must not be empty")
    return an10922_aes128(master, uid + aid + system_identifier)


# --- SUN / SDM --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SunMessage:
    """A SUN message as the tag wrote it: encrypted PICC data, SDMMAC, file data, MAC input."""

    picc_data: bytes
    cmac: bytes
    enc: bytes | None
    mac_input: bytes  # the exact ASCII the tag MACed (see parse_sun_url)

    def __post_init__(self) -> None:
        if len(self.picc_data) != PICC_DATA_BYTES:
            raise ValueError(f"picc_data must be {PICC_DATA_BYTES} bytes")
        if len(self.cmac) != SUN_MAC_BYTES:
            raise ValueError(f"cmac must be {SUN_MAC_BYTES} bytes")
        if self.enc is not None:
            if not self.enc or len(self.enc) % BLOCK:
                raise ValueError(f"enc must be a non-empty multiple of {BLOCK} bytes")
            # Encrypted file data is only authentic when the MAC covers it.
            if self.enc.hex().upper().encode("ascii") not in self.mac_input.upper():
                raise ValueError("the MAC input does not cover the enc data")
        elif self.mac_input:
            raise ValueError("a MAC input without enc data: nothing else is mirrored")


@dataclass(frozen=True, slots=True)
class PiccData:
    """Decrypted PICC data: the PICCDataTag byte, the UID and the SDM read counter."""

    tag: int
    uid: bytes
    read_counter: int


@dataclass(frozen=True, slots=True)
class SunSessionKeys:
    """KSesSDMFileReadENC and KSesSDMFileReadMAC for one UID and read counter."""

    enc: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class SunResult:
    """What a SUN message says and whether its MAC verified; ``file_data`` only when valid."""

    uid: bytes
    read_counter: int
    file_data: bytes | None
    valid: bool


def _hex_param(name: str, value: str, size: int | None) -> bytes:
    """Decode a hex parameter; ``size`` None means a non-empty multiple of 16 bytes."""
    if not value.isascii() or not _HEX.fullmatch(value) or len(value) % 2:
        raise ValueError(f"SUN parameter {name!r} must be hex digits (an even number of them)")
    data = bytes.fromhex(value)
    if size is not None and len(data) != size:
        raise ValueError(
            f"SUN parameter {name!r} must be {size} bytes ({2 * size} hex digits), not {len(data)}"
        )
    if size is None and (not data or len(data) % BLOCK):
        raise ValueError(
            f"SUN parameter {name!r} must be a non-empty multiple of {BLOCK} bytes "
            f"({2 * BLOCK} hex digits), not {len(data)}"
        )
    return data


def parse_sun_url(text: str) -> SunMessage:
    """Read a SUN message from a URL or a bare query string; ValueError naming what is wrong.

    Parameters (names case-insensitive, values hex in either case): ``picc_data`` (16 bytes),
    ``cmac`` (8 bytes) and optionally ``enc`` (a multiple of 16 bytes); others are ignored.

    The MAC input is what the tag MACed: the file's bytes from SDMMACInputOffset up to
    SDMMACOffset (AN12196 §4.4). Without mirrored file data the two offsets are equal and the
    input is empty (AN12196 §4.4.4.2 example). With ``enc`` this assumes the tag was configured
    as in AN12196's example and nfc-developer/sdm-backend: SDMMACInputOffset at the first hex
    digit of the ``enc`` value, so the input is the ASCII from there up to and including
    ``&cmac=`` (e.g. ``CEE9A53E3E463EF1F459635736738962&cmac=``); ``enc`` must then come before
    ``cmac``. The text is taken exactly as received, so the digits keep the tag's case.
    """
    stripped = text.strip()
    if not stripped.isascii():
        raise ValueError("a SUN URL is plain ASCII")
    query = urlsplit(stripped).query if "?" in stripped else stripped
    values: dict[str, tuple[str, int]] = {}  # name -> (value, where the value starts in query)
    position = 0
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        key = name.strip().lower()
        if sep and key in (PARAM_PICC_DATA, PARAM_ENC, PARAM_CMAC):
            if key in values:
                raise ValueError(f"SUN parameter {key!r} appears more than once")
            values[key] = (value, position + len(name) + 1)
        position += len(part) + 1
    allowed = "picc_data (16 bytes hex), cmac (8 bytes hex), optional enc (16*n bytes hex)"
    for required in (PARAM_PICC_DATA, PARAM_CMAC):
        if required not in values:
            raise ValueError(f"SUN parameter {required!r} is missing; expected {allowed}")
    picc_data = _hex_param(PARAM_PICC_DATA, values[PARAM_PICC_DATA][0], PICC_DATA_BYTES)
    cmac = _hex_param(PARAM_CMAC, values[PARAM_CMAC][0], SUN_MAC_BYTES)
    enc: bytes | None = None
    mac_input = b""
    if PARAM_ENC in values:
        enc_text, enc_start = values[PARAM_ENC]
        enc = _hex_param(PARAM_ENC, enc_text, None)
        cmac_start = values[PARAM_CMAC][1]
        if cmac_start < enc_start:
            raise ValueError("SUN parameter 'enc' must come before 'cmac' (the MAC covers it)")
        mac_input = query[enc_start:cmac_start].encode("ascii")
    return SunMessage(picc_data, cmac, enc, mac_input)


def decrypt_picc_data(meta_key: bytes, picc_data: bytes) -> PiccData:
    """Decrypt PICC data with KSDMMetaRead (AN12196 §4.4); ValueError unless UID and counter."""
    _check_key(meta_key, "the SDM meta-read key")
    if len(picc_data) != PICC_DATA_BYTES:
        raise ValueError(f"PICC data must be {PICC_DATA_BYTES} bytes, not {len(picc_data)}")
    plain = _cbc_decrypt(meta_key, picc_data)  # AES-CBC, zero IV, one block (AN12196 §4.4)
    tag = plain[0]
    if tag != PICC_DATA_TAG:
        # A wrong meta-read key also lands here: the tag byte is then noise.
        raise ValueError(
            "PICC data does not hold a 7-byte UID and a read counter "
            "(wrong meta-read key, or the tag does not mirror both)"
        )
    uid = plain[1 : 1 + UID_BYTES]
    counter = int.from_bytes(plain[1 + UID_BYTES : 1 + UID_BYTES + COUNTER_BYTES], "little")
    return PiccData(tag, uid, counter)


def encrypt_picc_data(meta_key: bytes, uid: bytes, counter: int, padding: bytes) -> bytes:
    """The tag's side of decrypt_picc_data: PICCDataTag ‖ UID ‖ counter ‖ 5 random bytes."""
    _check_key(meta_key, "the SDM meta-read key")
    plain = bytes([PICC_DATA_TAG]) + uid + _counter_bytes(counter) + padding
    if len(uid) != UID_BYTES or len(plain) != PICC_DATA_BYTES:
        raise ValueError(f"a {UID_BYTES}-byte UID and {BLOCK - 11} bytes of padding are needed")
    return _cbc_encrypt(meta_key, plain)


def _counter_bytes(counter: int) -> bytes:
    if not 0 <= counter <= COUNTER_MAX:
        raise ValueError(f"the read counter must be 0 to {COUNTER_MAX}, not {counter}")
    return counter.to_bytes(COUNTER_BYTES, "little")


def sun_session_keys(file_key: bytes, uid: bytes, counter: int) -> SunSessionKeys:
    """KSesSDMFileReadENC/MAC = CMAC(KSDMFileRead, SV1/SV2) (AN12196 §4.4).

    SV = prefix ‖ UID ‖ SDMReadCtr (little-endian), zero-padded to a block.
    """
    _check_key(file_key, "the SDM file-read key")
    tail = uid + _counter_bytes(counter)
    return SunSessionKeys(
        enc=aes_cmac(file_key, _pad_zeros(SV1_SDM_ENC + tail)),
        mac=aes_cmac(file_key, _pad_zeros(SV2_SDM_MAC + tail)),
    )


def truncate_mac(full_mac: bytes) -> bytes:
    """MACt: the 8 odd-indexed bytes of a 16-byte CMAC (S14, S12, …, S0: MACt, AN12196 §3)."""
    return full_mac[1::2]


def sun_mac(session_mac_key: bytes, mac_input: bytes) -> bytes:
    """SDMMAC = MACt(KSesSDMFileReadMAC; MAC input) (AN12196 §4.4)."""
    return truncate_mac(aes_cmac(session_mac_key, mac_input))


def _file_data_iv(session_enc_key: bytes, counter: int) -> bytes:
    # IVe = E(KSesSDMFileReadENC; SDMReadCtr ‖ 13 zero bytes) (AN12196 §4.4.4.2.2 example).
    return _ecb_encrypt_block(session_enc_key, _counter_bytes(counter) + bytes(BLOCK - 3))


def decrypt_file_data(session_enc_key: bytes, counter: int, enc: bytes) -> bytes:
    """Decrypt SDMENCFileData: AES-CBC under KSesSDMFileReadENC with IVe (AN12196 §4.4)."""
    if not enc or len(enc) % BLOCK:
        raise ValueError(f"encrypted file data must be a non-empty multiple of {BLOCK} bytes")
    return _cbc_decrypt(session_enc_key, enc, _file_data_iv(session_enc_key, counter))


def encrypt_file_data(session_enc_key: bytes, counter: int, plain: bytes) -> bytes:
    """The tag's side of decrypt_file_data."""
    if not plain or len(plain) % BLOCK:
        raise ValueError(f"file data must be a non-empty multiple of {BLOCK} bytes")
    return _cbc_encrypt(session_enc_key, plain, _file_data_iv(session_enc_key, counter))


def verify_sun(
    message: SunMessage, meta_key: bytes, file_key_for: Callable[[bytes], bytes]
) -> SunResult:
    """Decrypt and check a SUN message; a wrong key or MAC gives ``valid=False``, never raises.

    ``file_key_for(uid)`` returns KSDMFileRead of that tag. ValueError only for keys of the
    wrong size.
    """
    _check_key(meta_key, "the SDM meta-read key")
    try:
        picc = decrypt_picc_data(meta_key, message.picc_data)
    except ValueError:
        # Spend the time a MAC check would, so a wrong meta key is not told apart by timing.
        aes_cmac(meta_key, message.mac_input)
        return SunResult(b"", 0, None, valid=False)
    keys = sun_session_keys(file_key_for(picc.uid), picc.uid, picc.read_counter)
    valid = hmac.compare_digest(sun_mac(keys.mac, message.mac_input), message.cmac)
    file_data = None
    if valid and message.enc is not None:
        file_data = decrypt_file_data(keys.enc, picc.read_counter, message.enc)
    return SunResult(picc.uid, picc.read_counter, file_data, valid)


# --- AuthenticateEV2First (AN12196 §6.6) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ev2Session:
    """The outcome of a successful AuthenticateEV2First: TI and the two session keys."""

    ti: bytes
    k_ses_auth_enc: bytes
    k_ses_auth_mac: bytes


def _check_rnd(value: bytes, name: str) -> None:
    if len(value) != RND_BYTES:
        raise ValueError(f"{name} must be {RND_BYTES} bytes, not {len(value)}")


def ev2_session_keys(key: bytes, rnd_a: bytes, rnd_b: bytes) -> tuple[bytes, bytes]:
    """(KSesAuthENC, KSesAuthMAC) = CMAC(K, SV1), CMAC(K, SV2) (AN12196 §6.6).

    SV = prefix ‖ RndA[15..14] ‖ (RndA[13..8] ⊕ RndB[15..10]) ‖ RndB[9..0] ‖ RndA[7..0].
    """
    _check_key(key, "the key")
    _check_rnd(rnd_a, "RndA")
    _check_rnd(rnd_b, "RndB")
    context = rnd_a[0:2] + _xor(rnd_a[2:8], rnd_b[0:6]) + rnd_b[6:16] + rnd_a[8:16]
    return aes_cmac(key, SV1_AUTH_ENC + context), aes_cmac(key, SV2_AUTH_MAC + context)


def ev2_first_part2(key: bytes, rnd_a: bytes, enc_rnd_b: bytes) -> tuple[bytes, bytes]:
    """Reader side: from E(K, RndB) make E(K, RndA ‖ RndB') (32 bytes); return it and RndB."""
    _check_key(key, "the key")
    _check_rnd(rnd_a, "RndA")
    _check_rnd(enc_rnd_b, "E(RndB)")
    rnd_b = _cbc_decrypt(key, enc_rnd_b)  # AES-CBC with a zero IV throughout the handshake
    return _cbc_encrypt(key, rnd_a + rotate_left(rnd_b)), rnd_b


def ev2_first_check(
    key: bytes, rnd_a: bytes, rnd_b: bytes, card_response: bytes
) -> Ev2Session | None:
    """Reader side: the session if the card's answer holds RndA' under ``key``, else None."""
    _check_key(key, "the key")
    _check_rnd(rnd_a, "RndA")
    _check_rnd(rnd_b, "RndB")
    if len(card_response) != EV2_CARD_RESPONSE_BYTES:
        raise ValueError(f"the card's answer must be {EV2_CARD_RESPONSE_BYTES} bytes")
    plain = _cbc_decrypt(key, card_response)
    ti, rnd_a_rotated = plain[:TI_BYTES], plain[TI_BYTES : TI_BYTES + RND_BYTES]
    if not hmac.compare_digest(rnd_a_rotated, rotate_left(rnd_a)):
        return None
    enc, mac = ev2_session_keys(key, rnd_a, rnd_b)
    return Ev2Session(ti, enc, mac)


def ev2_card_part1(key: bytes, rnd_b: bytes) -> bytes:
    """Card side, first answer: E(K, RndB)."""
    _check_key(key, "the key")
    _check_rnd(rnd_b, "RndB")
    return _cbc_encrypt(key, rnd_b)


def ev2_card_check(key: bytes, rnd_b: bytes, reader_message: bytes) -> bytes | None:
    """Card side: RndA if the reader's E(K, RndA ‖ RndB') holds our RndB', else None."""
    _check_key(key, "the key")
    _check_rnd(rnd_b, "RndB")
    if len(reader_message) != EV2_READER_MESSAGE_BYTES:
        return None
    plain = _cbc_decrypt(key, reader_message)
    if not hmac.compare_digest(plain[RND_BYTES:], rotate_left(rnd_b)):
        return None
    return plain[:RND_BYTES]


def ev2_reader_rnd_a(key: bytes, reader_message: bytes) -> bytes:
    """Card side, without checking: the RndA a reader's message decrypts to under ``key``."""
    _check_key(key, "the key")
    if len(reader_message) != EV2_READER_MESSAGE_BYTES:
        raise ValueError(f"the reader's message must be {EV2_READER_MESSAGE_BYTES} bytes")
    return _cbc_decrypt(key, reader_message)[:RND_BYTES]


def ev2_card_response(
    key: bytes,
    ti: bytes,
    rnd_a: bytes,
    pd_cap2: bytes = bytes(CAPS_BYTES),
    pcd_cap2: bytes = bytes(CAPS_BYTES),
) -> bytes:
    """Card side, final answer: E(K, TI ‖ RndA' ‖ PDcap2 ‖ PCDcap2) (32 bytes)."""
    _check_key(key, "the key")
    _check_rnd(rnd_a, "RndA")
    if len(ti) != TI_BYTES or len(pd_cap2) != CAPS_BYTES or len(pcd_cap2) != CAPS_BYTES:
        raise ValueError("TI is 4 bytes, PDcap2 and PCDcap2 are 6 bytes each")
    return _cbc_encrypt(key, ti + rotate_left(rnd_a) + pd_cap2 + pcd_cap2)
