"""Tests of drivers.virtual_board over a real pty, driven by a gateway BoardLink."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers.virtual_board import BoardConfig, BoardState
from firmware_protocol import (
    BROADCAST_ADDRESS,
    BoardFault,
    FaultCode,
    Frame,
    Hello,
    InputChanged,
    NakCode,
    RelayPulse,
    RelaySet,
    SafeState,
    encode_message,
)
from firmware_protocol.session import NakReceived
from tests.drivers.test_serial_link import ADDRESS, WAIT_S, Rig, pty_rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A board with a short supervision timeout, configured and polled."""
    async with pty_rig() as rig:
        rig.gw.start_polling()
        await rig.gw.handshake((SafeState.FAIL_SECURE, SafeState.FAIL_SAFE), 300)
        yield rig


async def test_commands_before_the_handshake_are_refused() -> None:
    async with pty_rig() as rig:
        assert rig.board.state is BoardState.UNCONFIGURED
        with pytest.raises(NakReceived) as caught:
            await rig.gw.request(RelayPulse(0, 100))
        assert caught.value.code is NakCode.NOT_CONFIGURED
        assert rig.board.pulse_count(0) == 0


async def test_bad_relay_index_is_refused(rig: Rig) -> None:
    with pytest.raises(NakReceived) as caught:
        await rig.gw.request(RelaySet(7, True))
    assert caught.value.code is NakCode.BAD_INDEX


async def test_a_retransmitted_pulse_is_carried_out_once(rig: Rig) -> None:
    session = rig.gw.session
    assert session is not None
    await rig.gw.stop_polling()
    # The same frame twice, as the session resends it when an ACK is lost.
    frame = Frame(ADDRESS, (session.next_seq + 1000) % 65536, *encode_message(RelayPulse(0, 5000)))
    rig.link.send_frame(frame)
    rig.link.send_frame(frame)
    async with asyncio.timeout(WAIT_S):
        await rig.board.wait_for(lambda: rig.board.relay_on(0))
    await rig.gw.request(RelaySet(1, True))  # ordered behind both copies on the line
    assert rig.board.pulse_count(0) == 1


async def test_gateway_silence_drives_relays_to_safe_states(rig: Rig) -> None:
    await rig.gw.request(RelaySet(0, True))  # unlocked: fail-secure must lock it
    assert rig.board.relay_bits == 0b01
    await rig.gw.stop_polling()
    async with asyncio.timeout(WAIT_S):
        await rig.board.wait_for(lambda: rig.board.state is BoardState.FALLBACK)
    assert not rig.board.relay_on(0)  # FAIL_SECURE: de-energised, the door locks
    assert rig.board.relay_on(1)  # FAIL_SAFE: energised, the door unlocks
    # Silent in FALLBACK; the fault comes once the gateway is back and says HELLO.
    with pytest.raises(NakReceived) as caught:
        await rig.gw.request(RelaySet(0, True))
    assert caught.value.code is NakCode.NOT_CONFIGURED
    rig.gw.start_polling()
    await rig.gw.request(Hello(1, 1000))
    fault = await rig.gw.expect(BoardFault)
    assert fault.code is FaultCode.SUPERVISION_LOST
    assert rig.board.state is BoardState.IDENTIFIED
    assert rig.board.relay_bits == 0b10  # kept until commanded after the handshake


async def test_broadcast_pulse_is_carried_out_once_and_unanswered(rig: Rig) -> None:
    frame = Frame(BROADCAST_ADDRESS, 77, *encode_message(RelayPulse(1, 5000)))
    rig.link.send_frame(frame)
    rig.link.send_frame(frame)
    async with asyncio.timeout(WAIT_S):
        await rig.board.wait_for(lambda: rig.board.relay_on(1))
    await rig.gw.request(RelaySet(0, False))
    assert rig.board.pulse_count(1) == 1


async def test_physics_opens_the_door_after_unlock_and_closes_it() -> None:
    config = BoardConfig(
        address=ADDRESS, doors=1, physics=True, physics_open_delay_s=0.02, physics_open_time_s=0.1
    )
    async with pty_rig(config) as rig:
        rig.gw.start_polling()
        await rig.gw.handshake((SafeState.FAIL_SECURE,))
        await rig.gw.request(RelayPulse(0, 50))
        await rig.gw.wait_for(
            lambda: sum(isinstance(m, InputChanged) for m in rig.gw.messages) >= 2
        )
        changes = [(m.input_index, m.level) for m in rig.gw.messages if isinstance(m, InputChanged)]
        assert changes == [(0, 1), (0, 0)]
        assert not rig.board.door_open(0)
