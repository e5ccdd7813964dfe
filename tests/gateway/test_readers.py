"""ReaderSet: the hardware's readers and the gateway's own, as one ReaderBank."""

from __future__ import annotations

from collections.abc import Callable

from drivers.base import CredentialRead, Feedback
from drivers.simulated import SimulatedReaders
from gateway.readers import ReaderSet


class OwnReader:
    """A reader of the gateway's own that records its life and can produce a read."""

    def __init__(self, fail_stop: bool = False) -> None:
        self.handler: Callable[[CredentialRead], None] | None = None
        self.running = False
        self.fail_stop = fail_stop
        self.stops = 0

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        self.handler = handler

    def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.stops += 1
        self.running = False
        if self.fail_stop:
            raise OSError("device gone")

    def read(self, value: str) -> None:
        assert self.handler is not None
        self.handler(CredentialRead("front", "nfc_uid", value))


async def test_reads_from_every_reader_reach_the_one_handler() -> None:
    hardware = SimulatedReaders()
    readers = ReaderSet(hardware)
    early = OwnReader()
    readers.add(early)
    seen: list[str] = []
    readers.set_handler(lambda read: seen.append(read.value))
    late = OwnReader()
    readers.add(late)  # added after the handler: gets it too
    early.read("01")
    late.read("02")
    hardware.present(CredentialRead("front", "nfc_uid", "03"))
    assert seen == ["01", "02", "03"]


async def test_feedback_goes_to_the_hardware_reader() -> None:
    hardware = SimulatedReaders()
    readers = ReaderSet(hardware)
    readers.add(OwnReader())
    readers.feedback("front", Feedback.GRANTED)
    assert hardware.shown == {"front": Feedback.GRANTED}


async def test_own_readers_start_and_stop_with_the_set_even_if_one_fails() -> None:
    readers = ReaderSet(SimulatedReaders())
    first, broken = OwnReader(), OwnReader(fail_stop=True)
    readers.add(first)
    readers.add(broken)
    assert [r.running for r in (first, broken)] == [False, False]
    readers.start()
    assert [r.running for r in (first, broken)] == [True, True]
    added_later = OwnReader()
    readers.add(added_later)
    assert added_later.running  # the set is running: so is a reader added now
    await readers.stop()
    assert (first.stops, broken.stops, added_later.stops) == (1, 1, 1)
    assert [r.running for r in (first, broken, added_later)] == [False, False, False]
