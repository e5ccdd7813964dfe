"""Tests for BusTurns: one request on the bus at a time, commands before polls."""

from __future__ import annotations

import asyncio

from drivers.board_bank import BusTurns


async def take_turn(bus: BusTurns, name: str, order: list[str], *, poll: bool) -> None:
    async with bus.turn(poll=poll):
        order.append(name)
        await asyncio.sleep(0)


async def test_waiting_commands_go_before_waiting_polls_and_each_keeps_its_order() -> None:
    bus = BusTurns()
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with bus.turn():
            order.append("holder")
            await release.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = [
        asyncio.create_task(take_turn(bus, "poll-1", order, poll=True)),
        asyncio.create_task(take_turn(bus, "command-1", order, poll=False)),
        asyncio.create_task(take_turn(bus, "poll-2", order, poll=True)),
        asyncio.create_task(take_turn(bus, "command-2", order, poll=False)),
    ]
    await asyncio.sleep(0)
    assert order == ["holder"]  # nobody talks over the holder

    release.set()
    await asyncio.gather(first, *waiting)

    assert order == ["holder", "command-1", "command-2", "poll-1", "poll-2"]


async def test_a_waiter_cancelled_while_waiting_or_just_handed_the_bus_passes_it_on() -> None:
    bus = BusTurns()
    order: list[str] = []
    release = asyncio.Event()
    handed: list[asyncio.Task[None]] = []

    async def holder() -> None:
        async with bus.turn():
            await release.wait()
        # Same step as the hand-over: the next waiter is cancelled before it could run.
        handed[0].cancel()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    cancelled_early = asyncio.create_task(take_turn(bus, "early", order, poll=False))
    handed.append(asyncio.create_task(take_turn(bus, "handed", order, poll=False)))
    last = asyncio.create_task(take_turn(bus, "last", order, poll=True))
    await asyncio.sleep(0)
    cancelled_early.cancel()
    await asyncio.sleep(0)

    release.set()
    await first
    await asyncio.wait_for(last, timeout=5)  # the bus was passed on, not lost

    assert order == ["last"]
    assert cancelled_early.cancelled()
    assert handed[0].cancelled()
    async with asyncio.timeout(5):
        async with bus.turn():  # and it is free again
            pass
