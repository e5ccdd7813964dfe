"""The phone app's side of the BLE credential protocol, without a radio.

What a Luckey phone app does, as the GATT server it runs: advertise the service with a rotating
ephemeral id, answer a write of message 1 or 3 to READER_TO_PHONE_UUID by preparing message 2 or 4
for the next read of PHONE_TO_READER_UUID. The simulated phone wraps this in a virtual Bluetooth
stack; tests drive it directly; app developers read it next to docs/ble-credential-protocol.md.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.ble_protocol import (
    EPHEMERAL_ID_BYTES,
    BleProtocolError,
    MessageType,
    PhoneHandshake,
    ReaderHello,
    advertisement,
    key_id_for,
    local_name,
    message_type,
    public_key_bytes,
)

ROTATE_EVERY_S = 900.0
#: How long after a rotation the previous ephemeral id is still answered: a reader that saw the
#: old advertisement just before the rotation may still be connecting.
PREVIOUS_ID_GRACE_S = 10.0


class ReferencePhone:
    """A phone holding one credential key, enrolled with the readers in ``reader_keys``."""

    def __init__(
        self,
        private_key: ec.EllipticCurvePrivateKey,
        reader_keys: Mapping[bytes, ec.EllipticCurvePublicKey],
        *,
        rotate_every_s: float = ROTATE_EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        for reader_id, key in reader_keys.items():
            if not hmac.compare_digest(reader_id, key_id_for(key)):
                raise ValueError(f"reader id {reader_id.hex()} is not its key's id: list refused")
        self._private_key = private_key
        self._reader_keys = dict(reader_keys)
        self._key_id = key_id_for(private_key.public_key())
        self._rotate_every_s = rotate_every_s
        self._monotonic = monotonic
        self._ephemeral_id = secrets.token_bytes(EPHEMERAL_ID_BYTES)
        self._rotated_at = monotonic()
        self._previous_id: bytes | None = None
        self._handshake: PhoneHandshake | None = None
        self._reply = b""
        self.last_error: str | None = None

    @classmethod
    def generate(
        cls,
        reader_keys: Mapping[bytes, ec.EllipticCurvePublicKey],
        *,
        rotate_every_s: float = ROTATE_EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> ReferencePhone:
        """A phone with a fresh credential key (enrol its ``public_key_bytes`` and ``key_id``)."""
        return cls(
            ec.generate_private_key(ec.SECP256R1()),
            reader_keys,
            rotate_every_s=rotate_every_s,
            monotonic=monotonic,
        )

    @property
    def key_id(self) -> bytes:
        """The credential key id (16 bytes) the site enrols."""
        return self._key_id

    @property
    def public_key_bytes(self) -> bytes:
        """The credential public key as a SEC1 uncompressed point, for enrolment."""
        return public_key_bytes(self._private_key.public_key())

    @property
    def ephemeral_id(self) -> bytes:
        """The ephemeral id advertised now (rotating it first if it is due)."""
        self._rotate_if_due()
        return self._ephemeral_id

    def service_data(self) -> bytes:
        """The service data to advertise now under SERVICE_UUID."""
        return advertisement(self.ephemeral_id)

    def local_name(self) -> str:
        """The local name to advertise now instead, where service data cannot be (iOS)."""
        return local_name(self.ephemeral_id)

    def rotate(self) -> None:
        """Advertise a new ephemeral id from now on."""
        self._previous_id = self._ephemeral_id
        self._ephemeral_id = secrets.token_bytes(EPHEMERAL_ID_BYTES)
        self._rotated_at = self._monotonic()

    def on_write(self, message: bytes) -> None:
        """A write to READER_TO_PHONE_UUID: run the handshake step and prepare the reply."""
        self._reply = b""
        try:
            kind = message_type(message)
            if kind is MessageType.READER_HELLO:
                self._handshake = None  # a new message 1 always starts over
                self.last_error = None
                self._handshake = PhoneHandshake(
                    self._key_id,
                    self._private_key,
                    self._reader_keys,
                    self._advertised_id(ReaderHello.from_bytes(message).ephemeral_id),
                )
                self._reply = self._handshake.on_hello(message)
            elif kind is MessageType.READER_PROOF and self._handshake is not None:
                handshake, self._handshake = self._handshake, None
                self._reply = handshake.on_proof(message)
            else:
                raise BleProtocolError(
                    f"unexpected {kind.label}; a reader writes message 1, then message 3"
                )
        except BleProtocolError as err:
            # Nothing useful goes back: a reader that failed learns no key id.
            self._handshake = None
            self.last_error = str(err)

    def on_disconnect(self) -> None:
        """The reader disconnected: forget the handshake and the prepared reply."""
        self._handshake = None
        self._reply = b""

    def read_reply(self) -> bytes:
        """What a read of PHONE_TO_READER_UUID returns (empty before a write or after a refusal)."""
        return self._reply

    def _rotate_if_due(self) -> None:
        if self._monotonic() - self._rotated_at >= self._rotate_every_s:
            self.rotate()

    def _advertised_id(self, wanted: bytes) -> bytes:
        """The advertised id message 1 names (current, or previous just after a rotation)."""
        self._rotate_if_due()
        if hmac.compare_digest(wanted, self._ephemeral_id):
            return self._ephemeral_id
        recent = self._monotonic() - self._rotated_at <= PREVIOUS_ID_GRACE_S
        if (
            self._previous_id is not None
            and recent
            and hmac.compare_digest(wanted, self._previous_id)
        ):
            return self._previous_id
        raise BleProtocolError(
            "message 1 names an ephemeral id this phone does not advertise (any more); scan again"
        )
