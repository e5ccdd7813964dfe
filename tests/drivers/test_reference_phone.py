"""The reference phone: its GATT flow, advertisement rotation and refusals."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from drivers.reference_phone import PREVIOUS_ID_GRACE_S, ReferencePhone
from gateway import ble_protocol as bp
from gateway.ble_protocol import BleProtocolError, ReaderHandshake, parse_advertisement
from gateway.reader_identity import ReaderIdentity

READER = ReaderIdentity.generate()
READER_KEYS = {READER.reader_id: READER.public_key}
NONCE = bytes(range(16))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def phone(clock: Clock) -> ReferencePhone:
    return ReferencePhone.generate(READER_KEYS, rotate_every_s=900.0, monotonic=clock)


def connect(phone: ReferencePhone, reader: ReaderIdentity = READER) -> ReaderHandshake:
    return ReaderHandshake(reader, NONCE, parse_advertisement(phone.service_data()))


def test_the_gatt_flow_gives_the_reader_the_phones_key_id(phone: ReferencePhone) -> None:
    reader = connect(phone)
    assert phone.read_reply() == b""  # nothing before the first write
    phone.on_write(reader.hello())
    message_2 = phone.read_reply()
    assert len(message_2) == bp.PHONE_HELLO_BYTES
    assert phone.read_reply() == message_2  # a read does not consume the reply
    phone.on_write(reader.prove(message_2))
    claim = reader.finish(phone.read_reply())
    assert claim.key_id == phone.key_id
    assert phone.last_error is None


def test_enrolment_values(phone: ReferencePhone) -> None:
    assert len(phone.public_key_bytes) == 65
    assert phone.key_id == bp.key_id_for(bp.load_public_key(phone.public_key_bytes))
    key = ec.generate_private_key(ec.SECP256R1())
    assert ReferencePhone(key, READER_KEYS).key_id == bp.key_id_for(key.public_key())


def test_a_new_message_1_restarts_the_handshake(phone: ReferencePhone) -> None:
    first = connect(phone)
    phone.on_write(first.hello())
    first_reply = phone.read_reply()
    second = connect(phone)
    phone.on_write(second.hello())
    second_reply = phone.read_reply()
    assert second_reply != first_reply  # a fresh ephemeral key
    phone.on_write(second.prove(second_reply))
    assert second.finish(phone.read_reply()).key_id == phone.key_id
    # The abandoned handshake is gone: its message 3 is not answered.
    phone.on_write(first.prove(first_reply))
    assert phone.read_reply() == b""
    assert phone.last_error is not None
    assert "unexpected message 3" in phone.last_error


def test_a_reader_it_was_not_enrolled_with_gets_nothing(phone: ReferencePhone) -> None:
    stranger = connect(phone, ReaderIdentity.generate())
    phone.on_write(stranger.hello())
    assert phone.read_reply() == b""
    assert phone.last_error is not None
    assert "not one this phone was enrolled with" in phone.last_error
    with pytest.raises(BleProtocolError, match=r"message 2 .* is empty: the phone refused"):
        stranger.prove(phone.read_reply())


def test_an_impostor_with_a_known_reader_id_gets_no_key_id(phone: ReferencePhone) -> None:
    impostor_identity = ReaderIdentity.generate()
    object.__setattr__(impostor_identity, "reader_id", READER.reader_id)
    impostor = connect(phone, impostor_identity)
    replies = []
    phone.on_write(impostor.hello())
    replies.append(phone.read_reply())
    phone.on_write(impostor.prove(replies[0]))
    replies.append(phone.read_reply())
    assert replies[1] == b""
    assert all(phone.key_id not in reply for reply in replies)
    assert phone.last_error is not None
    assert "signature does not verify" in phone.last_error
    with pytest.raises(BleProtocolError, match="empty: the phone refused"):
        impostor.finish(replies[1])


@pytest.mark.parametrize(
    "message",
    [b"", b"\x01", b"\x02\x01", b"\x01\x09", b"\x01\x02" + bytes(65), b"\x01\x01" + bytes(10)],
)
def test_garbage_is_refused_quietly(phone: ReferencePhone, message: bytes) -> None:
    phone.on_write(message)
    assert phone.read_reply() == b""
    assert phone.last_error is not None


def test_message_3_before_message_1_is_refused(phone: ReferencePhone) -> None:
    phone.on_write(bytes([1, 3]) + bytes(80))
    assert phone.read_reply() == b""
    assert phone.last_error is not None
    assert "unexpected message 3" in phone.last_error


def test_a_disconnection_forgets_the_handshake(phone: ReferencePhone) -> None:
    reader = connect(phone)
    phone.on_write(reader.hello())
    message_2 = phone.read_reply()
    phone.on_disconnect()
    assert phone.read_reply() == b""
    phone.on_write(reader.prove(message_2))
    assert phone.read_reply() == b""


def test_a_disconnection_before_message_4_is_read_leaves_no_stale_reply(
    phone: ReferencePhone,
) -> None:
    gone = connect(phone)
    phone.on_write(gone.hello())
    phone.on_write(gone.prove(phone.read_reply()))  # message 4 is prepared...
    assert phone.read_reply() != b""
    phone.on_disconnect()  # ...and the reader left before reading it
    assert phone.read_reply() == b""  # the next reader to connect is not handed it
    fresh = connect(phone)
    phone.on_write(fresh.hello())
    phone.on_write(fresh.prove(phone.read_reply()))
    assert fresh.finish(phone.read_reply()).key_id == phone.key_id


def test_the_ephemeral_id_rotates(phone: ReferencePhone, clock: Clock) -> None:
    first = phone.service_data()
    assert len(first) == bp.ADVERT_BYTES
    clock.now += 899.0
    assert phone.service_data() == first
    clock.now += 1.0
    second = phone.service_data()
    assert second != first
    assert parse_advertisement(second) == phone.ephemeral_id
    assert phone.key_id not in first + second  # the advertisement never names the user


def test_a_reader_that_saw_the_previous_id_is_answered_just_after_a_rotation(
    phone: ReferencePhone, clock: Clock
) -> None:
    reader = connect(phone)  # saw the advertisement before the rotation
    clock.now += 900.0
    phone.service_data()  # rotated
    clock.now += PREVIOUS_ID_GRACE_S / 2
    phone.on_write(reader.hello())
    phone.on_write(reader.prove(phone.read_reply()))
    assert reader.finish(phone.read_reply()).key_id == phone.key_id


def test_a_reader_that_saw_a_long_gone_id_is_refused(phone: ReferencePhone, clock: Clock) -> None:
    reader = connect(phone)
    clock.now += 900.0
    phone.service_data()
    clock.now += PREVIOUS_ID_GRACE_S + 1
    phone.on_write(reader.hello())
    assert phone.read_reply() == b""
    assert phone.last_error is not None
    assert "does not advertise" in phone.last_error
    stale = connect(phone)
    stale_id = parse_advertisement(phone.service_data())
    phone.rotate()
    phone.rotate()  # two rotations: neither current nor previous
    assert phone.ephemeral_id != stale_id
    phone.on_write(stale.hello())
    assert phone.read_reply() == b""


def test_every_phone_advertises_its_own_random_id() -> None:
    ids = {
        parse_advertisement(ReferencePhone.generate(READER_KEYS).service_data()) for _ in range(20)
    }
    assert len(ids) == 20


def test_a_reader_list_with_a_wrong_id_is_refused() -> None:
    reader = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ValueError, match="is not its key's id"):
        ReferencePhone.generate({bytes(16): reader})
