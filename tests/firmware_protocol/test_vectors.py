"""The library against vectors.json, byte for byte (SPEC.md, "Test vectors").

vectors.json is committed; it is what a board's firmware is tested against. Any change in
encoding fails these tests: regenerate the file (``python -m firmware_protocol.vectors``) only
for a deliberate protocol change, and review its diff.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_protocol import vectors
from firmware_protocol.errors import FrameError, MessageError
from firmware_protocol.frame import Flags, Frame, MessageType
from firmware_protocol.messages import decode_message, encode_message
from firmware_protocol.wire import (
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_packet,
    encode_frame,
)

JSON = dict[str, Any]


@cache
def load() -> JSON:
    text = resources.files("firmware_protocol").joinpath("vectors.json").read_text("utf-8")
    data: JSON = json.loads(text)
    return data


def frame_from_json(data: JSON) -> Frame:
    return Frame(
        address=data["address"],
        seq=data["seq"],
        msg_type=MessageType.tolerant(data["type"]),
        payload=bytes.fromhex(data["payload"]),
        flags=Flags(data["flags"]),
        version=data["version"],
    )


def outcome(item: Frame | FrameError) -> JSON:
    """What the library makes of one packet, in the vectors' terms."""
    if isinstance(item, FrameError):
        return {"frame_error": item.kind.value}
    result: JSON = {"frame": vectors.header_json(item)}
    try:
        result["message"] = vectors.message_to_json(decode_message(item))
    except MessageError as err:
        result["message_error"] = {"nak_code": int(err.nak_code), "nak": err.nak_code.name}
    return result


def all_vectors() -> list[tuple[bytes, list[JSON]]]:
    """Every vector as (wire bytes, expected outcomes): frames first, then malformed inputs."""
    data = load()
    items = [
        (bytes.fromhex(v["wire"]), [{"frame": v["frame"], "message": v["message"]}])
        for v in data["frames"]
    ]
    items += [(bytes.fromhex(v["wire"]), v["expect"]) for v in data["malformed"]]
    return items


def names(section: str) -> list[str]:
    return [v["name"] for v in load()[section]]


def vector(section: str, name: str) -> JSON:
    found: JSON = next(v for v in load()[section] if v["name"] == name)
    return found


def test_file_is_what_the_generator_builds() -> None:
    assert load() == vectors.build_vectors()


def test_every_message_type_has_a_frame_vector() -> None:
    covered = {v["message"]["type"] for v in load()["frames"]}
    assert covered == {t.name for t in MessageType}


def test_every_frame_error_kind_but_encoding_only_ones_has_a_vector() -> None:
    kinds = {
        item["frame_error"]
        for v in load()["malformed"]
        for item in v["expect"]
        if "frame_error" in item
    }
    assert kinds == {"bad_cobs", "too_long", "truncated", "bad_crc", "bad_version"} | {
        "length_mismatch",
        "bad_address",
    }


def test_crc_examples() -> None:
    for example in load()["crc"]["examples"]:
        assert f"0x{crc16(bytes.fromhex(example['data'])):04x}" == example["crc"]


def test_cobs_examples() -> None:
    for example in load()["cobs"]:
        decoded, encoded = bytes.fromhex(example["decoded"]), bytes.fromhex(example["encoded"])
        assert cobs_encode(decoded) == encoded
        assert cobs_decode(encoded) == decoded


@pytest.mark.parametrize("name", names("frames"))
def test_frame_vector_golden_bytes(name: str) -> None:
    v = vector("frames", name)
    frame = frame_from_json(v["frame"])
    msg = vectors.message_from_json(v["message"])
    wire = bytes.fromhex(v["wire"])
    packet = bytes.fromhex(v["packet"])
    # message → payload → frame → bytes
    assert encode_message(msg) == (frame.msg_type, frame.payload)
    assert encode_frame(frame) == wire
    assert crc16(packet[:-2]) == int(v["crc"], 16) == int.from_bytes(packet[-2:], "little")
    assert cobs_encode(packet) + b"\x00" == wire
    # bytes → frame → message
    assert decode_packet(wire[:-1]) == frame
    assert decode_message(frame) == msg
    assert vectors.message_to_json(decode_message(frame)) == v["message"]
    assert v["frame"]["length"] == len(frame.payload)


@pytest.mark.parametrize("name", names("malformed"))
def test_malformed_vector_whole_and_byte_by_byte(name: str) -> None:
    v = vector("malformed", name)
    wire = bytes.fromhex(v["wire"])
    assert [outcome(item) for item in FrameDecoder().feed(wire)] == v["expect"]
    decoder = FrameDecoder()
    one_by_one = [outcome(item) for byte in wire for item in decoder.feed(bytes([byte]))]
    assert one_by_one == v["expect"]


def test_all_vectors_whole() -> None:
    stream = b"".join(wire for wire, _ in all_vectors())
    expected = [item for _, expect in all_vectors() for item in expect]
    assert [outcome(item) for item in FrameDecoder().feed(stream)] == expected


def test_all_vectors_one_byte_at_a_time() -> None:
    stream = b"".join(wire for wire, _ in all_vectors())
    expected = [item for _, expect in all_vectors() for item in expect]
    decoder = FrameDecoder()
    results = [outcome(item) for byte in stream for item in decoder.feed(bytes([byte]))]
    assert results == expected
    assert decoder.buffered == 0


@given(st.data())
def test_all_vectors_in_random_chunks(data: st.DataObject) -> None:
    stream = b"".join(wire for wire, _ in all_vectors())
    expected = [item for _, expect in all_vectors() for item in expect]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=40)))
    decoder = FrameDecoder()
    results: list[JSON] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        results += [outcome(item) for item in decoder.feed(stream[start:end])]
    assert results == expected


def test_every_single_bit_flip_of_every_frame_vector_is_caught() -> None:
    """Exhaustive over the vectors: a flipped bit never yields a frame, and the next one decodes."""
    follower = bytes.fromhex(vector("frames", "heartbeat")["wire"])
    for v in load()["frames"]:
        wire = bytes.fromhex(v["wire"])
        for position in range(len(wire)):
            for bit in range(8):
                corrupted = bytearray(wire)
                corrupted[position] ^= 1 << bit
                decoder = FrameDecoder()
                results = decoder.feed(bytes(corrupted)) + decoder.feed(b"\x00" + follower)
                where = (v["name"], position, bit)
                assert all(isinstance(item, FrameError) for item in results[:-1]), where
                assert outcome(results[-1])["frame"] == vector("frames", "heartbeat")["frame"]


def test_spec_worked_example_matches_the_vectors() -> None:
    spec = resources.files("firmware_protocol").joinpath("SPEC.md").read_text("utf-8")
    heartbeat = vector("frames", "heartbeat")
    for key in ("packet", "wire"):
        assert heartbeat[key] in spec
    assert heartbeat["crc"].removeprefix("0x") in spec.lower()
