"""Tests for drivers.simulated: virtual relays on the loop's clock, and virtual readers."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import CredentialRead, Feedback, ReaderBank, RelayBank
from drivers.simulated import SimulatedReaders, SimulatedRelays


class Recorder:
    """Relay changes as (channel, on, loop time), with a gate per awaited change."""

    def __init__(self, relays: SimulatedRelays) -> None:
        self.changes: list[tuple[str, bool, float]] = []
        self._changed = asyncio.Event()
        self.remove = relays.add_listener(self._on_change)

    def _on_change(self, channel: str, on: bool) -> None:
        self.changes.append((channel, on, asyncio.get_running_loop().time()))
        self._changed.set()

    def seen(self) -> list[tuple[str, bool]]:
        return [(channel, on) for channel, on, _ in self.changes]

    async def wait_for(self, channel: str, on: bool) -> float:
        """Wait for ``channel`` to become ``on``; the loop time it did."""
        async with asyncio.timeout(5):
            while True:
                for ch, state, when in self.changes:
                    if (ch, state) == (channel, on):
                        return when
                self._changed.clear()
                await self._changed.wait()


def test_the_twins_implement_the_interfaces() -> None:
    relays: RelayBank = SimulatedRelays()
    readers: ReaderBank = SimulatedReaders()

    assert not relays.is_on("front")
    readers.feedback("front", Feedback.IDLE)


async def test_pulse_releases_after_its_duration() -> None:
    relays = SimulatedRelays()
    recorder = Recorder(relays)
    loop = asyncio.get_running_loop()

    started = loop.time()
    relays.pulse("front", 0.1)

    assert relays.is_on("front")
    released = await recorder.wait_for("front", False)
    assert released - started >= 0.1 - 0.005
    assert not relays.is_on("front")
    assert recorder.seen() == [("front", True), ("front", False)]
    assert relays.states() == {"front": False}


async def test_a_new_pulse_restarts_the_countdown() -> None:
    relays = SimulatedRelays()
    recorder = Recorder(relays)
    loop = asyncio.get_running_loop()

    relays.pulse("front", 0.05)
    restarted = loop.time()
    relays.pulse("front", 0.3)

    released = await recorder.wait_for("front", False)
    assert released - restarted >= 0.3 - 0.005
    assert recorder.seen() == [("front", True), ("front", False)]  # one opening, not two


async def test_set_cancels_a_pending_release() -> None:
    relays = SimulatedRelays()
    recorder = Recorder(relays)

    relays.pulse("front", 0.05)
    relays.set("front", True)  # now held until told otherwise
    relays.pulse("lobby", 0.15)  # a reference that outlives front's cancelled pulse
    await recorder.wait_for("lobby", False)

    assert relays.is_on("front")
    assert ("front", False) not in recorder.seen()

    relays.set("front", False)
    assert not relays.is_on("front")


async def test_set_off_ends_a_pulse_early() -> None:
    relays = SimulatedRelays()
    recorder = Recorder(relays)

    relays.pulse("front", 0.05)
    relays.set("front", False)
    relays.pulse("lobby", 0.15)
    await recorder.wait_for("lobby", False)

    assert recorder.seen().count(("front", False)) == 1  # the pending release did not fire again


def test_listeners_hear_only_real_changes() -> None:
    relays = SimulatedRelays()
    heard: list[tuple[str, bool]] = []
    remove = relays.add_listener(lambda channel, on: heard.append((channel, on)))

    relays.set("front", False)  # an unknown relay is off already
    relays.set("front", True)
    relays.set("front", True)
    relays.set("lobby", True)
    relays.set("front", False)
    relays.set("front", False)

    assert heard == [("front", True), ("lobby", True), ("front", False)]
    assert relays.states() == {"front": False, "lobby": True}

    remove()
    relays.set("lobby", False)
    assert heard == [("front", True), ("lobby", True), ("front", False)]
    assert not relays.is_on("lobby")


def test_every_listener_is_called() -> None:
    relays = SimulatedRelays()
    first: list[bool] = []
    second: list[bool] = []
    relays.add_listener(lambda _channel, on: first.append(on))
    relays.add_listener(lambda _channel, on: second.append(on))

    relays.set("front", True)

    assert first == [True]
    assert second == [True]


async def test_close_cancels_pending_releases() -> None:
    relays = SimulatedRelays()
    recorder = Recorder(relays)
    relays.pulse("front", 0.05)

    relays.close()
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.15, done.set)
    await asyncio.wait_for(done.wait(), timeout=5)

    assert recorder.seen() == [("front", True)]
    assert relays.is_on("front")


def test_pulse_needs_a_running_loop() -> None:
    relays = SimulatedRelays()

    with pytest.raises(RuntimeError):
        relays.pulse("front", 1.0)


def test_readers_deliver_reads_and_remember_feedback() -> None:
    readers = SimulatedReaders()
    delivered: list[CredentialRead] = []
    readers.set_handler(delivered.append)
    read = CredentialRead("front", "nfc_uid", "04A1B2C3D4E5F6", b"\x01")

    readers.present(read)
    readers.feedback("front", Feedback.GRANTED)
    readers.feedback("lobby", Feedback.DENIED)
    readers.feedback("front", Feedback.IDLE)

    assert delivered == [read]
    assert readers.shown == {"front": Feedback.IDLE, "lobby": Feedback.DENIED}


def test_a_new_handler_replaces_the_old() -> None:
    readers = SimulatedReaders()
    old: list[CredentialRead] = []
    new: list[CredentialRead] = []
    readers.set_handler(old.append)
    readers.set_handler(new.append)

    readers.present(CredentialRead("front", "nfc_uid", "04"))

    assert old == []
    assert len(new) == 1


def test_present_without_a_handler_raises() -> None:
    readers = SimulatedReaders()

    with pytest.raises(RuntimeError, match="not started"):
        readers.present(CredentialRead("front", "nfc_uid", "04A1B2C3D4E5F6"))
    assert readers.shown == {}
