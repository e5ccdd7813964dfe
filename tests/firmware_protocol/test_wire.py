"""Tests for firmware_protocol.wire: CRC, COBS, frame codec and the streaming decoder."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_protocol.errors import FrameError, FrameErrorKind
from firmware_protocol.frame import (
    BROADCAST_ADDRESS,
    MAX_ADDRESS,
    MAX_PAYLOAD,
    MIN_ADDRESS,
    Flags,
    Frame,
    MessageType,
)
from firmware_protocol.wire import (
    CRC_CHECK,
    MAX_ENCODED_SIZE,
    MAX_WIRE_SIZE,
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_packet,
    encode_frame,
)

addresses = st.one_of(st.integers(MIN_ADDRESS, MAX_ADDRESS), st.just(BROADCAST_ADDRESS))
frames = st.builds(
    Frame,
    address=addresses,
    seq=st.integers(0, 0xFFFF),
    msg_type=st.integers(0, 0xFF).map(MessageType.tolerant),
    payload=st.binary(max_size=MAX_PAYLOAD),
    flags=st.integers(0, 0xFF).map(Flags),
)

HEARTBEAT = Frame(5, 0x0102, MessageType.HEARTBEAT, (1234567).to_bytes(4, "little"))


def reference_crc(data: bytes) -> int:
    """CRC-16/CCITT-FALSE bit by bit, straight from its parameters."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def code_positions(encoded: bytes) -> set[int]:
    """Offsets of the COBS code bytes in an encoded packet."""
    positions, pos = set(), 0
    while pos < len(encoded):
        positions.add(pos)
        pos += encoded[pos]
    return positions


def frames_in(results: list[Frame | FrameError]) -> list[Frame]:
    return [item for item in results if isinstance(item, Frame)]


def kinds(results: list[Frame | FrameError]) -> list[FrameErrorKind | None]:
    return [item.kind if isinstance(item, FrameError) else None for item in results]


# --- CRC ---------------------------------------------------------------------------------------


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == CRC_CHECK == 0x29B1


def test_crc_of_nothing_is_init() -> None:
    assert crc16(b"") == 0xFFFF


@given(st.binary(max_size=300))
def test_crc_matches_bitwise_reference_and_stdlib(data: bytes) -> None:
    assert crc16(data) == reference_crc(data) == binascii.crc_hqx(data, 0xFFFF)


# --- COBS --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decoded", "encoded"),
    [
        ("", "01"),
        ("00", "01 01"),
        ("00 00", "01 01 01"),
        ("00 11 00", "01 02 11 01"),
        ("11 22 00 33", "03 11 22 02 33"),
        ("11 22 33 44", "05 11 22 33 44"),
        ("11 00 00 00", "02 11 01 01 01"),
    ],
)
def test_cobs_known_encodings(decoded: str, encoded: str) -> None:
    """The examples of Cheshire & Baker's paper and its common restatements."""
    assert cobs_encode(bytes.fromhex(decoded)) == bytes.fromhex(encoded)
    assert cobs_decode(bytes.fromhex(encoded)) == bytes.fromhex(decoded)


def test_cobs_long_runs() -> None:
    run = bytes(range(1, 255))  # 254 non-zero bytes: one full block
    assert cobs_encode(run) == b"\xff" + run + b"\x01"
    assert cobs_encode(b"\x00" + run) == b"\x01\xff" + run + b"\x01"
    assert cobs_encode(run + b"\x42") == b"\xff" + run + b"\x02\x42"
    for data in (run, b"\x00" + run, run + b"\x42", run + b"\x00"):
        assert cobs_decode(cobs_encode(data)) == data
    assert cobs_decode(b"\xff" + run) == run  # the shorter form is read too


@given(st.binary(max_size=1000))
def test_cobs_round_trip(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    if len(data) < 254:
        assert len(encoded) == len(data) + 1  # what makes MAX_ENCODED_SIZE exact
    assert cobs_decode(encoded) == data


@pytest.mark.parametrize("encoded", ["05 11 22", "03 11 00 22", "00", "02 11 05 22"])
def test_cobs_decode_rejects_invalid(encoded: str) -> None:
    with pytest.raises(FrameError) as caught:
        cobs_decode(bytes.fromhex(encoded))
    assert caught.value.kind is FrameErrorKind.BAD_COBS


# --- frames ------------------------------------------------------------------------------------


@given(frames)
def test_frame_round_trip(frame: Frame) -> None:
    encoded = encode_frame(frame)
    assert encoded[-1] == 0
    assert 0 not in encoded[:-1]
    assert len(encoded) <= MAX_WIRE_SIZE
    assert decode_packet(encoded[:-1]) == frame
    assert FrameDecoder().feed(encoded) == [frame]


def test_largest_frame_fits_the_bounds() -> None:
    frame = Frame(MAX_ADDRESS, 0xFFFF, 0xFF, bytes([0xFF]) * MAX_PAYLOAD, Flags(0xFF))
    encoded = encode_frame(frame)
    assert len(encoded) == MAX_WIRE_SIZE == MAX_ENCODED_SIZE + 1 == 251
    assert FrameDecoder().feed(encoded) == [frame]


def test_worked_example() -> None:
    """SPEC.md, "Worked example"."""
    assert encode_frame(HEARTBEAT) == bytes.fromhex("03 01 05 08 02 01 03 04 87 d6 12 03 27 80 00")


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (Frame(0, 1, MessageType.ACK), FrameErrorKind.BAD_ADDRESS),
        (Frame(248, 1, MessageType.ACK), FrameErrorKind.BAD_ADDRESS),
        (Frame(256, 1, MessageType.ACK), FrameErrorKind.BAD_ADDRESS),
        (Frame(5, -1, MessageType.ACK), FrameErrorKind.BAD_FIELD),
        (Frame(5, 0x10000, MessageType.ACK), FrameErrorKind.BAD_FIELD),
        (Frame(5, 1, 0x100), FrameErrorKind.BAD_FIELD),
        (Frame(5, 1, -1), FrameErrorKind.BAD_FIELD),
        (Frame(5, 1, MessageType.ACK, flags=Flags(0x100)), FrameErrorKind.BAD_FIELD),
        (Frame(5, 1, MessageType.ACK, version=2), FrameErrorKind.BAD_VERSION),
        (Frame(5, 1, 0x55, bytes(MAX_PAYLOAD + 1)), FrameErrorKind.TOO_LONG),
    ],
)
def test_encode_refuses_out_of_range_fields(frame: Frame, kind: FrameErrorKind) -> None:
    with pytest.raises(FrameError) as caught:
        encode_frame(frame)
    assert caught.value.kind is kind


def _packet(body: bytes, crc_xor: int = 0) -> bytes:
    return cobs_encode(body + (crc16(body) ^ crc_xor).to_bytes(2, "little"))


@pytest.mark.parametrize(
    ("packet", "kind"),
    [
        (b"", FrameErrorKind.TRUNCATED),
        (_packet(bytes.fromhex("01 05 00 01 00 7e")), FrameErrorKind.TRUNCATED),
        (_packet(bytes.fromhex("01 05 00 01 00 7e 00"), crc_xor=0x0100), FrameErrorKind.BAD_CRC),
        (_packet(bytes.fromhex("02 05 00 01 00 7e 00")), FrameErrorKind.BAD_VERSION),
        (_packet(bytes.fromhex("01 05 00 01 00 7e 01")), FrameErrorKind.LENGTH_MISMATCH),
        (_packet(bytes.fromhex("01 05 00 01 00 7e 00 00")), FrameErrorKind.LENGTH_MISMATCH),
        (_packet(bytes.fromhex("01 00 00 01 00 7e 00")), FrameErrorKind.BAD_ADDRESS),
        (_packet(bytes.fromhex("01 fe 00 01 00 7e 00")), FrameErrorKind.BAD_ADDRESS),
        (b"\x05\x01\x02", FrameErrorKind.BAD_COBS),
        (b"\x01" * (MAX_ENCODED_SIZE + 1), FrameErrorKind.TOO_LONG),
    ],
)
def test_decode_packet_errors(packet: bytes, kind: FrameErrorKind) -> None:
    with pytest.raises(FrameError) as caught:
        decode_packet(packet)
    assert caught.value.kind is kind
    assert caught.value.raw == packet


def test_unknown_type_and_flags_decode() -> None:
    frame = Frame(7, 3, 0x66, b"\x01", Flags(0x81))
    decoded = decode_packet(encode_frame(frame)[:-1])
    assert decoded == frame
    assert decoded.msg_type == 0x66
    assert not isinstance(decoded.msg_type, MessageType)
    assert int(decoded.flags) == 0x81
    assert decoded.from_board


# --- streaming decoder -------------------------------------------------------------------------


@given(st.lists(frames, max_size=8), st.data())
def test_decoder_any_split_gives_the_same_frames(
    frame_list: list[Frame], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(f) for f in frame_list)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    results: list[Frame | FrameError] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        results += decoder.feed(stream[start:end])
    assert results == frame_list
    assert decoder.buffered == 0


def test_decoder_one_byte_at_a_time_keeps_partial_data() -> None:
    encoded = encode_frame(HEARTBEAT)
    decoder = FrameDecoder()
    for i, byte in enumerate(encoded[:-1]):
        assert decoder.feed(bytes([byte])) == []
        assert decoder.buffered == i + 1
    assert decoder.feed(b"\x00") == [HEARTBEAT]
    assert decoder.buffered == 0


def test_decoder_ignores_empty_packets() -> None:
    encoded = encode_frame(HEARTBEAT)
    assert FrameDecoder().feed(b"\x00\x00\x00" + encoded + b"\x00" + encoded) == [HEARTBEAT] * 2
    assert FrameDecoder().feed(b"") == []


def test_decoder_noise_between_frames_and_resync() -> None:
    encoded = encode_frame(HEARTBEAT)
    noise = bytes.fromhex("13 37 ff 00 80 00 11 22")
    results = FrameDecoder().feed(encoded + noise + b"\x00" + encoded)
    assert frames_in(results) == [HEARTBEAT, HEARTBEAT]
    assert results[0] == HEARTBEAT
    assert results[-1] == HEARTBEAT
    assert all(isinstance(item, FrameError) for item in results[1:-1])


def test_noise_without_a_flush_costs_the_next_frame_only() -> None:
    encoded = encode_frame(HEARTBEAT)
    results = FrameDecoder().feed(encoded + b"\x13\x37" + encoded + encoded)
    assert results[0] == HEARTBEAT
    assert isinstance(results[1], FrameError)
    assert results[2] == HEARTBEAT


@pytest.mark.parametrize("chunk", [1, 7, 100, 5000])
def test_over_long_run_is_one_error_then_resync(chunk: int) -> None:
    stream = b"\x41" * 5000 + b"\x00" + encode_frame(HEARTBEAT)
    decoder = FrameDecoder()
    results: list[Frame | FrameError] = []
    for start in range(0, len(stream), chunk):
        results += decoder.feed(stream[start : start + chunk])
        assert decoder.buffered <= MAX_ENCODED_SIZE
    assert kinds(results) == [FrameErrorKind.TOO_LONG, None]
    assert results[1] == HEARTBEAT
    error = results[0]
    assert isinstance(error, FrameError)
    assert len(error.raw) == MAX_ENCODED_SIZE


def test_run_of_exactly_the_largest_packet_is_decoded_not_dropped() -> None:
    results = FrameDecoder().feed(b"\x01" * MAX_ENCODED_SIZE + b"\x00")
    assert kinds(results) != [FrameErrorKind.TOO_LONG]
    assert len(results) == 1


def test_reset_forgets_partial_data() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(HEARTBEAT)[:5])
    decoder.reset()
    assert decoder.buffered == 0
    assert decoder.feed(encode_frame(HEARTBEAT)) == [HEARTBEAT]


@given(st.lists(st.binary(max_size=600), max_size=10))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        results = decoder.feed(chunk)
        assert all(isinstance(item, Frame | FrameError) for item in results)
        assert decoder.buffered <= MAX_ENCODED_SIZE


@given(st.lists(st.binary(max_size=MAX_ENCODED_SIZE + 10), max_size=5), frames)
def test_decoder_recovers_after_any_garbage(garbage: list[bytes], frame: Frame) -> None:
    decoder = FrameDecoder()
    for chunk in garbage:
        decoder.feed(chunk)
    assert decoder.feed(b"\x00" + encode_frame(frame))[-1] == frame


# --- corruption --------------------------------------------------------------------------------


@given(frames, st.data())
def test_flipped_data_byte_is_always_detected(frame: Frame, data: st.DataObject) -> None:
    """A byte that is not a COBS code is one byte of the packet: the CRC catches every such error."""
    encoded = encode_frame(frame)
    data_positions = sorted(set(range(len(encoded) - 1)) - code_positions(encoded[:-1]))
    if not data_positions:
        return
    position = data.draw(st.sampled_from(data_positions))
    flip = data.draw(st.integers(1, 0xFF).filter(lambda x: encoded[position] ^ x != 0))
    corrupted = bytearray(encoded)
    corrupted[position] ^= flip
    results = FrameDecoder().feed(bytes(corrupted))
    assert kinds(results) == [FrameErrorKind.BAD_CRC]


# A flip of a COBS code byte, or one that makes or unmakes a delimiter, moves bytes around; the
# CRC and header checks catch that with probability about 1 - 2**-16 (SPEC.md, "Error
# detection"), not always. The examples are therefore fixed (derandomize) so that the suite is
# reproducible; the always-true part is the test above and the exhaustive one in test_vectors.
@settings(derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, min_size=3, max_size=3), st.data())
def test_single_byte_flip_never_yields_a_different_frame(
    frame_list: list[Frame], data: st.DataObject
) -> None:
    first, second, third = (encode_frame(f) for f in frame_list)
    position = data.draw(st.integers(0, len(first) - 1))
    flip = data.draw(st.integers(1, 0xFF))
    corrupted = bytearray(first)
    corrupted[position] ^= flip
    decoder = FrameDecoder()
    results = decoder.feed(bytes(corrupted) + second) + decoder.feed(b"\x00" + third)
    for item in frames_in(results):
        assert item in frame_list[1:]  # never the damaged frame, never anything new
    assert results[-1] == frame_list[2]  # a sender's leading 0x00 always resyncs
    assert any(isinstance(item, FrameError) for item in results)
