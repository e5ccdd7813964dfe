"""AES-128 key diversification as in NXP AN10922 §2.2 (CMAC-based), and AES-CMAC itself.

Pure functions over bytes. Each card, tag or key gets its own key derived from a site master
key and its identity, so one extracted key opens nothing but its own credential.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

BLOCK = 16
_RB = 0x87  # the constant of the CMAC subkey derivation for 128-bit blocks (NIST SP 800-38B)
MAX_DIVERSIFICATION_INPUT = 31  # AN10922: M is 1 to 31 bytes


def _aes_ecb(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block, as CMAC defines it
    return encryptor.update(block) + encryptor.finalize()


def _shift_left(block: bytes) -> bytes:
    value = (int.from_bytes(block, "big") << 1) & ((1 << 128) - 1)
    return value.to_bytes(BLOCK, "big")


def _subkeys(key: bytes) -> tuple[bytes, bytes]:
    """K1 and K2 of NIST SP 800-38B §6.1."""
    l_block = _aes_ecb(key, bytes(BLOCK))
    k1 = _shift_left(l_block)
    if l_block[0] & 0x80:
        k1 = k1[:-1] + bytes([k1[-1] ^ _RB])
    k2 = _shift_left(k1)
    if k1[0] & 0x80:
        k2 = k2[:-1] + bytes([k2[-1] ^ _RB])
    return k1, k2


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _cbc_mac(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(BLOCK))).encryptor()
    return (encryptor.update(data) + encryptor.finalize())[-BLOCK:]


def aes_cmac(key: bytes, message: bytes) -> bytes:
    """AES-CMAC (NIST SP 800-38B, RFC 4493) of ``message`` under a 16-byte ``key``."""
    mac = CMAC(algorithms.AES(key))
    mac.update(message)
    return mac.finalize()


def an10922_aes128(master_key: bytes, diversification_input: bytes) -> bytes:
    """The AES-128 key diversified from ``master_key`` for input M (AN10922 §2.2.1).

    D = 0x01 ‖ M, padded to 32 bytes (0x80 then zeros, last block XOR K2) unless already 32
    bytes long (last block XOR K1); the key is the last block of AES-CBC over D with a zero IV.
    This is CMAC's construction except that D is always two blocks, so it is written out here
    rather than delegated to a CMAC implementation (which pads a short D to one block).
    """
    if len(master_key) != BLOCK:
        raise ValueError(f"master key must be 16 bytes, not {len(master_key)}")
    if not 1 <= len(diversification_input) <= MAX_DIVERSIFICATION_INPUT:
        raise ValueError(
            f"diversification input must be 1 to 31 bytes, not {len(diversification_input)}"
        )
    k1, k2 = _subkeys(master_key)
    data = b"\x01" + diversification_input
    if len(data) == 2 * BLOCK:
        block = data[:BLOCK] + _xor(data[BLOCK:], k1)
    else:
        padded = data + b"\x80" + bytes(2 * BLOCK - len(data) - 1)
        block = padded[:BLOCK] + _xor(padded[BLOCK:], k2)
    return _cbc_mac(master_key, block)
