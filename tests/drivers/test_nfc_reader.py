"""NfcReader and the udp cards, through nfcpy's real reader and listener code over 127.0.0.1."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import nfc
import pytest

from drivers import nfc_reader, nfc_udp_tag
from drivers.base import CredentialRead, Feedback
from drivers.nfc_emulators import DesfireCard, Ntag424Tag
from drivers.nfc_reader import IgnoreReason, NfcReader, ReaderState
from drivers.nfc_udp_tag import UdpIsoDepTag, UdpTagState, UdpType2Tag, type2_memory
from gateway.challenges import ChallengeBook
from gateway.credentials import Verified
from gateway.model import AssuranceLevel, CredentialKind, Presentation
from gateway.nfc_cards import (
    CardError,
    CardReading,
    NfcKeys,
    NotOurCard,
    Transceive,
    read_iso_dep_card,
)
from gateway.nfc_verifiers import Ntag424Verifier
from gateway.sun_counters import SunCounters

UID_A = bytes.fromhex("04A1B2C3D4E5F6")
UID_B = bytes.fromhex("04B0B0B0B0B0B0")
UID_T2 = bytes.fromhex("04C0FFEE000001")
SELECT = bytes.fromhex("00A4040007D276000085010100")
WAIT_S = 5.0  # upper bound for one expected event; the happy path takes milliseconds


class Clock:
    """A monotonic clock that moves only when told: cooldowns expire on request."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds + 0.001


class SelectCard:
    """A stand-in ISO-DEP card application: SELECT answers 90 00, anything else 6D 00."""

    def __init__(self, uid: bytes, on_apdu: Callable[[bytes], None] | None = None) -> None:
        self.uid = uid
        self.commands: list[bytes] = []
        self._on_apdu = on_apdu

    def respond(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        if self._on_apdu is not None:
            self._on_apdu(apdu)
        if apdu[:2] == b"\x00\xa4":
            return b"\x90\x00"
        if apdu[:2] == b"\x00\xee":  # echo: the data back, 4 times over (tests chaining)
            return apdu[5:] * 4 + b"\x90\x00"
        return b"\x6d\x00"


class StandInReader:
    """A ``read_card`` of the nfc_cards shape: SELECT, then a reading whose proof is the SW."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.fail_with: Exception | None = None
        self.called = threading.Event()

    def __call__(self, uid: bytes, transceive: Transceive) -> CardReading:
        self.calls.append(uid)
        self.called.set()
        if self.fail_with is not None:
            raise self.fail_with
        response = transceive(SELECT)
        if response[-2:] != b"\x90\x00":
            raise CardError(f"SELECT answered {response.hex()}")
        return CardReading(CredentialKind.NTAG424, uid.hex().upper(), b"sw:" + response)


class Reads:
    """The handler: every CredentialRead, awaitable one by one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[CredentialRead] = asyncio.Queue()
        self.all: list[CredentialRead] = []

    def __call__(self, read: CredentialRead) -> None:
        self.all.append(read)
        self.queue.put_nowait(read)

    async def next(self) -> CredentialRead:
        return await asyncio.wait_for(self.queue.get(), WAIT_S)


async def until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Wait for a condition the reader thread makes true (its counters have no event to await)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - thread-side counters, nothing to await
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nfc_reader, "POLL_INTERVAL_S", 0.01)
    monkeypatch.setattr(nfc_reader, "REOPEN_BASE_S", 0.01)
    monkeypatch.setattr(nfc_reader, "REOPEN_CAP_S", 0.05)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cards() -> Iterator[Callable[[Any], Any]]:
    """Start udp cards; every one is taken out of the field at teardown."""
    started: list[Any] = []

    def start(card: Any) -> Any:
        card.start()
        started.append(card)
        return card

    yield start
    for card in started:
        card.stop()


@pytest.fixture
async def readers() -> AsyncIterator[Callable[..., NfcReader]]:
    """Make and start readers; every one is stopped at teardown."""
    made: list[NfcReader] = []

    def make(path: str, read_card: Any, handler: Any, **kwargs: Any) -> NfcReader:
        reader = NfcReader("front", path, read_card, handler=handler, **kwargs)
        reader.start()
        made.append(reader)
        return reader

    yield make
    for reader in made:
        await reader.stop()


async def test_iso_dep_card_reaches_read_card(cards: Any, readers: Any) -> None:
    card = SelectCard(UID_A)
    tag = cards(UdpIsoDepTag(card))
    read_card, reads = StandInReader(), Reads()
    reader = readers(tag.path, read_card, reads)

    read = await reads.next()

    assert read == CredentialRead("front", "ntag424", UID_A.hex().upper(), b"sw:\x90\x00")
    assert read_card.calls[0] == UID_A
    assert card.commands[0] == SELECT
    assert tag.activations >= 1
    assert reader.reads >= 1
    assert reader.state is ReaderState.POLLING


async def test_non_iso_dep_tag_is_read_as_bare_uid(cards: Any, readers: Any) -> None:
    tag = cards(UdpType2Tag(UID_T2))
    read_card, reads = StandInReader(), Reads()
    readers(tag.path, read_card, reads)

    read = await reads.next()

    assert read == CredentialRead("front", "nfc_uid", "04C0FFEE000001", b"")
    assert read_card.calls == []  # never activated, never put through an ISO-DEP dialogue


async def test_mifare_classic_like_card_is_read_as_bare_uid(cards: Any, readers: Any) -> None:
    uid = bytes.fromhex("A1B2C3D4")
    tag = cards(UdpType2Tag(uid, sel_res=0x08))
    reads = Reads()
    readers(tag.path, StandInReader(), reads)

    assert await reads.next() == CredentialRead("front", "nfc_uid", "A1B2C3D4", b"")


async def test_iso_dep_card_that_is_not_ours_is_read_as_bare_uid(
    cards: Any, readers: Any, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers")
    tag = cards(UdpIsoDepTag(SelectCard(UID_A)))
    read_card, reads = StandInReader(), Reads()
    read_card.fail_with = NotOurCard("not an NTAG 424 DNA or DESFire card")
    reader = readers(tag.path, read_card, reads, monotonic=clock)

    read = await reads.next()

    assert read == CredentialRead("front", "nfc_uid", UID_A.hex().upper(), b"")
    assert read_card.calls == [UID_A]  # it went through the dialogue first
    ours = [r for r in caplog.records if r.name.startswith("drivers.")]
    assert any(
        r.levelno == logging.DEBUG and "…E5F6" in r.getMessage() and "not an NTAG" in r.getMessage()
        for r in ours
    )
    assert not [r for r in ours if r.levelno >= logging.WARNING]
    assert not [r for r in ours if UID_A.hex().upper() in r.getMessage()]
    # The same cooldown as any read: a card resting on the reader is not read again, nor put
    # through its dialogue again, until the cooldown is over.
    await until(lambda: reader.ignored.get("cooldown", 0) >= 3)
    assert (len(reads.all), len(read_card.calls)) == (1, 1)
    assert "card_error" not in reader.ignored
    clock.advance(nfc_reader.SAME_CARD_COOLDOWN_S)
    assert (await reads.next()).kind == "nfc_uid"
    assert reader.reads == 2


async def test_card_error_is_ignored_and_the_next_card_is_read(
    cards: Any, readers: Any, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers")
    tag_a = cards(UdpIsoDepTag(SelectCard(UID_A)))
    read_card, reads = StandInReader(), Reads()
    read_card.fail_with = CardError("the card refused the key")
    reader = readers(tag_a.path, read_card, reads, monotonic=clock)

    await until(lambda: reader.ignored.get("card_error", 0) == 1)
    await asyncio.to_thread(tag_a.stop)
    read_card.fail_with = None
    cards(UdpIsoDepTag(SelectCard(UID_B), port=tag_a.port))
    read = await reads.next()

    assert read.value == UID_B.hex().upper()
    # The clock never moved: the failed card was left alone, not retried on every cycle.
    assert reader.ignored["card_error"] == 1
    assert read_card.calls.count(UID_A) == 1
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("drivers.")]
    assert any("card_error" in m and "…E5F6" in m and "refused the key" in m for m in ours)
    assert not [m for m in ours if UID_A.hex().upper() in m or UID_B.hex().upper() in m]


@pytest.mark.parametrize("leaves", ["responder_raises", "card_removed"])
async def test_card_leaving_mid_dialogue_is_ignored(
    cards: Any, readers: Any, clock: Clock, leaves: str
) -> None:
    first = True
    tag: UdpIsoDepTag | None = None

    def torn(apdu: bytes) -> None:
        nonlocal first
        if first:
            first = False
            if leaves == "responder_raises":
                raise ConnectionAbortedError("torn from the field")
            assert tag is not None
            tag.stop()  # out of the field while answering: the answer is never sent

    tag = cards(UdpIsoDepTag(SelectCard(UID_A, on_apdu=torn)))
    read_card, reads = StandInReader(), Reads()
    reader = readers(tag.path, read_card, reads, monotonic=clock)

    await until(lambda: reader.ignored.get("card_gone", 0) == 1)
    assert reads.all == []
    if leaves == "card_removed":
        removed = tag
        await until(lambda: removed.state is UdpTagState.STOPPED)
        tag = cards(UdpIsoDepTag(SelectCard(UID_A), port=removed.port))
    clock.advance(nfc_reader.RETRY_AFTER_FAILURE_S)

    read = await reads.next()  # the loop is alive: the card is read on the next presentation

    assert read.value == UID_A.hex().upper()
    assert reader.ignored["card_gone"] == 1
    assert reader.reopens == 0


async def test_card_left_on_reader_is_read_once_per_cooldown(
    cards: Any, readers: Any, clock: Clock
) -> None:
    card = SelectCard(UID_A)
    tag = cards(UdpIsoDepTag(card))
    read_card, reads = StandInReader(), Reads()
    reader = readers(tag.path, read_card, reads, monotonic=clock)

    await reads.next()
    await until(lambda: reader.ignored.get("cooldown", 0) >= 3)  # sensed again and again
    assert len(reads.all) == 1
    assert len(read_card.calls) == 1  # a resting card is not put through its dialogue again

    clock.advance(nfc_reader.SAME_CARD_COOLDOWN_S)
    await reads.next()

    assert len(reads.all) == 2
    assert len(read_card.calls) == 2


async def test_random_uid_card_is_held_by_its_credential(
    cards: Any, readers: Any, clock: Clock
) -> None:
    # A card with a random UID shows a new UID on each activation; its credential is the same.
    reads = Reads()

    def same_credential(uid: bytes, transceive: Transceive) -> CardReading:
        transceive(SELECT)
        return CardReading(CredentialKind.DESFIRE, "04DE5F1E000001", b"")

    tag = cards(UdpIsoDepTag(SelectCard(UID_A)))
    reader = readers(tag.path, same_credential, reads, monotonic=clock)
    await reads.next()
    await asyncio.to_thread(tag.stop)
    cards(UdpIsoDepTag(SelectCard(UID_B), port=tag.port))

    await until(lambda: reader.ignored.get("cooldown", 0) >= 1)

    assert len(reads.all) == 1


#: A bound stop() meets however loaded the machine: it waits STOP_TIMEOUT_S at most for its
#: thread. That the thread did end, rather than being given up on, is checked on its own.
STOP_BOUND_S = nfc_reader.STOP_TIMEOUT_S + 2.0


def reader_threads() -> set[threading.Thread]:
    """The threads of readers named "front" (a reader's thread is named after it)."""
    return {t for t in threading.enumerate() if t.name == "nfc-reader-front"}


async def test_stop_returns_promptly_and_is_idempotent(cards: Any) -> None:
    tag = cards(UdpIsoDepTag(SelectCard(UID_A)))
    reads = Reads()
    reader = NfcReader("front", tag.path, StandInReader(), handler=reads)
    await reader.stop()  # never started: nothing to do
    others = reader_threads()
    reader.start()
    reader.start()
    [thread] = reader_threads() - others
    await reads.next()

    started = time.monotonic()
    await reader.stop()
    elapsed = time.monotonic() - started
    await reader.stop()

    # The thread ends after its current sense cycle (nfcpy's udp driver waits up to 1 s for a
    # SENS_RES): stop() did not give up on it and leave it running.
    assert not thread.is_alive()
    assert elapsed < STOP_BOUND_S
    assert reader.state is ReaderState.STOPPED


async def test_stop_without_a_card_in_the_field(readers: Any) -> None:
    port = nfc_udp_tag.free_udp_port()
    reader = NfcReader("front", f"udp:127.0.0.1:{port}", StandInReader(), handler=Reads())
    others = reader_threads()
    reader.start()
    [thread] = reader_threads() - others
    await until(lambda: reader.state is ReaderState.POLLING)

    started = time.monotonic()
    await reader.stop()

    assert not thread.is_alive()
    assert time.monotonic() - started < STOP_BOUND_S
    assert reader.state is ReaderState.STOPPED


class FlakyFrontends:
    """Opens real udp frontends, after failing to open ``open_failures`` times; the first one
    opened then loses its device once (nfcpy's connect returns False after an IOError)."""

    def __init__(self, open_failures: int) -> None:
        self.open_failures = open_failures
        self.opened = 0
        self.device_lost = False

    def __call__(self, path: str) -> Any:
        if self.open_failures:
            self.open_failures -= 1
            raise OSError(19, "No such device")
        self.opened += 1
        clf = nfc.ContactlessFrontend(path)
        if self.opened == 1:
            real_connect = clf.connect

            def connect(**options: Any) -> Any:
                if not self.device_lost:
                    self.device_lost = True
                    return False
                return real_connect(**options)

            clf.connect = connect
        return clf


class CountingBackoff:
    def __init__(self) -> None:
        self.delays = 0
        self.resets = 0

    def next_delay(self) -> float:
        self.delays += 1
        return 0.01

    def reset(self) -> None:
        self.resets += 1


async def test_failing_frontend_is_reopened_with_backoff(cards: Any, readers: Any) -> None:
    tag = cards(UdpIsoDepTag(SelectCard(UID_A)))
    frontends, backoff, reads = FlakyFrontends(open_failures=2), CountingBackoff(), Reads()
    reader = readers(tag.path, StandInReader(), reads, open_frontend=frontends, backoff=backoff)

    read = await reads.next()

    assert read.value == UID_A.hex().upper()
    assert reader.reopens == 3  # two failed opens, one lost device
    assert backoff.delays == 3
    assert frontends.opened == 2
    await until(lambda: backoff.resets >= 1)  # a working frontend resets the policy


async def test_read_without_handler_is_counted(cards: Any, clock: Clock) -> None:
    tag = cards(UdpType2Tag(UID_T2))
    reader = NfcReader("front", tag.path, StandInReader(), monotonic=clock)
    reader.start()
    try:
        await until(lambda: reader.ignored.get("no_handler", 0) == 1)
    finally:
        await reader.stop()


async def test_feedback_is_a_documented_no_op(readers: Any) -> None:
    reader = readers(f"udp:127.0.0.1:{nfc_udp_tag.free_udp_port()}", StandInReader(), Reads())
    reader.feedback("front", Feedback.GRANTED)  # shown by the door board, not by nfcpy


async def test_iso_dep_chaining_both_ways(cards: Any, readers: Any) -> None:
    # 300 bytes out and 1200 back: more than one 253-byte ISO-DEP block each way.
    long_command = bytes([0x00, 0xEE, 0x00, 0x00]) + bytes(range(256))[:255]
    long_command += bytes(45)
    answers: list[bytes] = []

    def echo(uid: bytes, transceive: Transceive) -> CardReading:
        answers.append(transceive(long_command))
        return CardReading(CredentialKind.NTAG424, uid.hex().upper(), b"")

    tag = cards(UdpIsoDepTag(SelectCard(UID_A)))
    reads = Reads()
    readers(tag.path, echo, reads)
    await reads.next()

    assert answers[0] == long_command[5:] * 4 + b"\x90\x00"


def state_of(tag: UdpIsoDepTag) -> UdpTagState:
    return tag.state


def test_udp_card_binds_a_free_loopback_port_and_releases_it() -> None:
    tag = UdpIsoDepTag(SelectCard(UID_A))
    tag.start()
    try:
        assert tag.port > 0
        assert tag.path == f"udp:127.0.0.1:{tag.port}"
        assert state_of(tag) is UdpTagState.LISTENING
        with pytest.raises(OSError, match="in use"):
            UdpIsoDepTag(SelectCard(UID_B), port=tag.port).start()
    finally:
        tag.stop()
    assert state_of(tag) is UdpTagState.STOPPED
    again = UdpType2Tag(UID_T2, port=tag.port)
    again.start()
    again.stop()


def test_udp_card_rejects_what_nfcpy_cannot_anticollide() -> None:
    with pytest.raises(ValueError, match="4 or 7 byte"):
        UdpType2Tag(bytes(10))
    with pytest.raises(ValueError, match="cascade tag"):
        UdpType2Tag(bytes.fromhex("88010203"))
    with pytest.raises(ValueError, match="ISO-DEP"):
        UdpType2Tag(UID_T2, sel_res=0x20)
    with pytest.raises(ValueError, match="FWI"):
        UdpIsoDepTag(SelectCard(UID_A), fwi=15)


def test_type2_memory_image() -> None:
    memory = type2_memory(UID_T2)
    assert len(memory) == 64
    assert memory[0:4] == bytes([0x04, 0xC0, 0xFF, 0x88 ^ 0x04 ^ 0xC0 ^ 0xFF])
    assert memory[4:8] == UID_T2[3:]
    assert memory[12:16] == bytes([0xE1, 0x10, 0x06, 0x00])


async def test_type2_card_answers_nfcpy_tag_reads(cards: Any) -> None:
    # nfcpy's own Type 2 reader, activating the card and reading its memory (a bare-UID twin
    # is still a well-formed tag for other readers).
    tag = cards(UdpType2Tag(UID_T2))

    def read_with_nfcpy() -> bytes:
        deadline = time.monotonic() + WAIT_S
        clf = nfc.ContactlessFrontend(tag.path)
        try:
            nfc_tag = clf.connect(
                rdwr={"targets": ["106A"], "on-connect": lambda _tag: False},
                terminate=lambda: time.monotonic() > deadline,
            )
            return bytes(nfc_tag.read(0))
        finally:
            clf.close()

    data = await asyncio.to_thread(read_with_nfcpy)

    assert data == type2_memory(UID_T2)[0:16]


def site_keys() -> NfcKeys:
    return NfcKeys(
        ntag424_master=bytes.fromhex("00112233445566778899AABBCCDDEEFF"),
        sun_meta_key=None,
        sun_file_master=None,
        desfire_master=None,
        desfire_aid=bytes.fromhex("F0A0B0"),
        system_identifier=b"luckey-test-site",
    )


async def test_emulated_ntag424_end_to_end(cards: Any, readers: Any) -> None:
    keys, challenges = site_keys(), ChallengeBook()
    tag = cards(UdpIsoDepTag(Ntag424Tag.for_site(UID_A, keys)))
    reads = Reads()
    read_card = functools.partial(read_iso_dep_card, keys=keys, challenges=challenges)
    readers(tag.path, read_card, reads)

    read = await reads.next()

    assert (read.reader_id, read.kind, read.value) == ("front", "ntag424", UID_A.hex().upper())
    assert read.proof[0] == 0x01  # AuthenticateEV2First proof
    assert len(read.proof) == 65
    verify = Ntag424Verifier(keys, challenges, SunCounters())
    presentation = Presentation("front-door", CredentialKind.NTAG424, read.value, read.proof)
    verdict = verify(presentation, lambda kind, value: None)
    assert verdict == Verified(None, AssuranceLevel.HIGH)


async def test_ntag424_without_the_site_key_is_ignored(
    cards: Any, readers: Any, clock: Clock
) -> None:
    keys = site_keys()
    stranger = Ntag424Tag(UID_A, app_keys={0: bytes(range(16))})  # a UID clone, not the key
    tag = cards(UdpIsoDepTag(stranger))
    reads = Reads()
    read_card = functools.partial(read_iso_dep_card, keys=keys, challenges=ChallengeBook())
    reader = readers(tag.path, read_card, reads, monotonic=clock)

    await until(lambda: reader.ignored.get(IgnoreReason.CARD_ERROR.value, 0) == 1)

    assert reads.all == []  # refused: never downgraded to its bare UID
    assert reader.reads == 0


@pytest.mark.parametrize("kind", ["bank card", "desfire ev1"])
async def test_iso_dep_card_of_another_kind_is_its_bare_uid_end_to_end(
    cards: Any, readers: Any, kind: str
) -> None:
    # The real dialogue: a card refusing GetVersion (6D 00, like a bank card or a phone) or a
    # DESFire EV1 is not one the site's keys cover, so its UID is all that is read.
    card = (
        SelectCard(UID_A)
        if kind == "bank card"
        else DesfireCard(UID_A, bytes(3), bytes(16), major=1)
    )
    tag = cards(UdpIsoDepTag(card))
    reads = Reads()
    read_card = functools.partial(read_iso_dep_card, keys=site_keys(), challenges=ChallengeBook())
    reader = readers(tag.path, read_card, reads)

    read = await reads.next()

    assert read == CredentialRead("front", "nfc_uid", UID_A.hex().upper(), b"")
    assert card.commands[0] == bytes.fromhex("9060000000")  # GetVersion was asked
    assert "card_error" not in reader.ignored
