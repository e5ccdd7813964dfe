"""The hot path: a credential read becomes a decision, a door opening, an event, feedback.

Nothing here awaits the network or the cache database: the decision reads the in-memory view,
and the only await is the event's commit to the outbox (durable before the reader shows it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta

from drivers import base
from drivers.base import CommandFailed, CredentialRead, Feedback, ReaderBank
from gateway import access
from gateway.cache import Cache
from gateway.credentials import (
    DEFAULT_VERIFIERS,
    Refused,
    Verified,
    Verifier,
    canonical_value,
    parse_kind,
    redact,
    verify,
)
from gateway.doors import DoorController
from gateway.events import EventLog, decision_event, new_event
from gateway.keypad import KeypadGuard
from gateway.model import (
    AssuranceLevel,
    CredentialKind,
    Decision,
    EventType,
    Presentation,
    Reason,
)
from gateway.outbox import OutboxError
from gateway.pins import hash_off_loop, pin_problem

_LOGGER = logging.getLogger(__name__)

#: Longest a reader waits for its event's commit before showing the result anyway.
EVENT_COMMIT_TIMEOUT_S = 5.0
#: Keypad entries waiting for their turn at one keypad beyond which new ones are refused.
KEYPAD_QUEUE_MAX = 8
#: Longest a grant waits for the lock relay's confirmation before showing a fault.
RELAY_CONFIRM_TIMEOUT_S = 2.0


class EntryService:
    """Handles every credential presented at a reader, one decision each."""

    def __init__(
        self,
        cache: Cache,
        doors: DoorController,
        events: EventLog,
        readers: ReaderBank,
        clock: Callable[[], datetime],
        verifiers: Mapping[CredentialKind, Verifier] = DEFAULT_VERIFIERS,
        offline_for: Callable[[datetime], timedelta | None] = lambda now: None,
        on_decided: Callable[[float], None] = lambda seconds: None,
        keypads: KeypadGuard | None = None,
    ) -> None:
        """``offline_for(now)``: how long the cloud link has been down (None: up, or no cloud).
        ``on_decided(seconds)``: told how long each presentation took to decide.
        ``keypads``: the wrong-PIN lockout (3 attempts, 60 s unless given)."""
        self._cache = cache
        self._keypads = keypads or KeypadGuard()
        #: Per keypad: entries are decided one at a time (the lockout must see each wrong PIN
        #: before the next is tried), and how many wait for their turn.
        self._keypad_turns: dict[str, asyncio.Lock] = {}
        self._keypad_waiting: dict[str, int] = {}
        self._offline_for = offline_for
        self._on_decided = on_decided
        self._doors = doors
        self._events = events
        self._readers = readers
        self._clock = clock
        self._verifiers = verifiers
        self._tasks: set[asyncio.Task[Decision]] = set()
        self._accepting = False
        self._watchers: dict[str, list[asyncio.Future[Decision]]] = {}
        #: Enrol mode per reader: the waiting future and the kinds it takes (None: any).
        self._captures: dict[str, tuple[asyncio.Future[CredentialRead], frozenset[str] | None]] = {}
        #: Per door: the pending return of its reader to the door's alarm after a decision.
        self._restores: dict[str, asyncio.TimerHandle] = {}

    def start(self) -> None:
        """Start taking reads from the readers."""
        self._accepting = True
        self._readers.set_handler(self.on_read)

    async def stop(self) -> None:
        """Refuse new reads, then finish those in flight (their events get committed)."""
        self._accepting = False
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self._restores.values():
            handle.cancel()
        self._restores.clear()

    def on_read(self, read: CredentialRead) -> None:
        """Driver callback: handle the read in its own task (ignored once stopping)."""
        if not self._accepting:
            _LOGGER.warning("read at %s ignored: the gateway is stopping", read.reader_id)
            return
        capture = self._captures.get(read.reader_id)
        if capture is not None and (capture[1] is None or read.kind in capture[1]):
            del self._captures[read.reader_id]
            if not capture[0].done():
                capture[0].set_result(read)  # enrol mode: this card is enrolled, not decided
                return
        task = asyncio.create_task(self.handle(read), name=f"read-{read.reader_id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Decision]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The outbox failing is the only way here; it has logged why. Say which read it was.
            _LOGGER.error("presentation at %s failed", task.get_name(), exc_info=task.exception())

    def capture_next(
        self, reader_id: str, kinds: Collection[str] | None = None
    ) -> asyncio.Future[CredentialRead]:
        """Enrol mode: the next read at ``reader_id`` (of ``kinds``, if given) is handed over.

        Reads of other kinds (a passer-by's phone) are decided as usual meanwhile. Cancel the
        future to leave enrol mode. One capture per reader at a time: ValueError.
        """
        pending = self._captures.get(reader_id)
        if pending is not None and not pending[0].done():
            raise ValueError(f"reader {reader_id!r} is already waiting for a card to enrol")
        future: asyncio.Future[CredentialRead] = asyncio.get_running_loop().create_future()
        self._captures[reader_id] = (future, None if kinds is None else frozenset(kinds))
        return future

    def capturing(self, reader_id: str) -> bool:
        """True while ``reader_id`` is in enrol mode."""
        pending = self._captures.get(reader_id)
        return pending is not None and not pending[0].done()

    def verify(self, presentation: Presentation) -> Verified | Refused:
        """Check a presentation's proof against the cache as it is now (no decision)."""
        return verify(presentation, self._cache.view.credential, self._verifiers)

    def next_decision(self, door_id: str) -> asyncio.Future[Decision]:
        """The next decision taken at ``door_id`` (for simulators: a key presented on a board)."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(door_id, []).append(future)
        return future

    async def handle(self, read: CredentialRead) -> Decision:
        """Decide a raw read; a malformed one is denied as an unknown credential."""
        door_id = read.reader_id  # one reader per door, named after it
        if read.kind == CredentialKind.PIN.value:
            return await self._keypad_entry(read)
        try:
            kind = parse_kind(read.kind)
            value = canonical_value(kind, read.value)
        except ValueError as err:
            _LOGGER.warning("malformed read at %s: %s", door_id, err)
            identity = Verified(None, AssuranceLevel.LOW)
            now = self._clock()
            decision = access.decide(
                identity, door_id, now, self._cache.view, self._doors.mode(door_id)
            )
            await self._conclude(decision, None, read.reader_id)
            return decision
        return await self.present(
            Presentation(door_id, kind, value, read.proof), reader_id=read.reader_id
        )

    async def _keypad_entry(self, read: CredentialRead) -> Decision:
        """A PIN typed at a door's keypad, in its turn (one at a time per keypad; more than
        ``KEYPAD_QUEUE_MAX`` waiting are refused unhashed, as a keypad flooded by a rogue board
        would be locked out anyway)."""
        door_id = read.reader_id
        if door_id not in self._cache.view.doors:  # no state kept for doors that do not exist
            return await self._refuse_entry(read, Reason.UNKNOWN_DOOR)
        waiting = self._keypad_waiting.get(door_id, 0)
        if waiting >= KEYPAD_QUEUE_MAX:
            return await self._refuse_entry(read, Reason.KEYPAD_LOCKED)
        turn = self._keypad_turns.setdefault(door_id, asyncio.Lock())
        self._keypad_waiting[door_id] = waiting + 1
        try:
            async with turn:
                return await self._keypad_turn(read)
        finally:
            self._keypad_waiting[door_id] -= 1

    async def _keypad_turn(self, read: CredentialRead) -> Decision:
        """Refused while the keypad is locked out, else hashed with the site's PIN hashing and
        decided like any credential.

        Every entry that opens nothing counts towards the lockout (see gateway/keypad.py); a
        granted one clears it.
        """
        door_id = read.reader_id
        started = time.monotonic()
        if self._keypads.locked(door_id, started):
            return await self._refuse_entry(read, Reason.KEYPAD_LOCKED)
        view = self._cache.view
        hashing = view.site.pin_hashing
        problem = pin_problem(read.value)
        if problem is not None:
            decision = await self._refuse_entry(read, Reason.PIN_MALFORMED)
        elif hashing is None:  # the site has no PINs: nothing typed can be one
            decision = await self._refuse_entry(read, Reason.UNKNOWN_CREDENTIAL)
        else:
            value = await hash_off_loop(read.value, hashing)
            decision = await self.present(
                Presentation(door_id, CredentialKind.PIN, value), reader_id=read.reader_id
            )
        if decision.granted:
            self._keypads.granted(door_id)
        else:
            lockout_s = self._keypads.failed(door_id, time.monotonic())
            if lockout_s is not None:
                await self._keypad_locked(door_id, lockout_s)
        return decision

    async def _refuse_entry(self, read: CredentialRead, reason: Reason) -> Decision:
        """Deny a keypad entry without looking it up; the digits go nowhere."""
        door_id = read.reader_id
        decision = Decision(False, reason, door_id, self._clock(), self._doors.mode(door_id))
        await self._conclude(decision, None, read.reader_id)
        return decision

    async def _keypad_locked(self, door_id: str, lockout_s: float) -> None:
        """Record that ``door_id``'s keypad is now locked out for ``lockout_s``."""
        attempts = self._keypads.attempts
        _LOGGER.warning(
            "keypad at %s locked for %d s after %d refused PINs in a row",
            door_id,
            lockout_s,
            attempts,
        )
        event = new_event(
            EventType.KEYPAD_LOCKED,
            self._clock(),
            {"door": door_id, "attempts": attempts, "lockout_s": lockout_s},
        )
        try:
            await asyncio.wait_for(self._events.record(event), EVENT_COMMIT_TIMEOUT_S)
        except (OutboxError, TimeoutError) as err:
            _LOGGER.error("event %s could not be committed (%r)", event.id, err)

    async def present(
        self, presentation: Presentation, *, reader_id: str | None = None
    ) -> Decision:
        """Verify, decide, open if granted, commit the event, then show the result."""
        started = time.perf_counter()
        view = self._cache.view
        identity = verify(presentation, view.credential, self._verifiers)
        if (
            isinstance(identity, Verified)
            and presentation.kind is CredentialKind.MECHATRONIC_KEY
            and presentation.value in view.site.key_blacklist
        ):
            # A genuine lost key, even one no longer enrolled, is named as such.
            identity = Refused(Reason.KEY_BLACKLISTED, "on the site's blacklist of lost keys")
        door_id = presentation.door_id
        now = self._clock()
        mode = self._doors.mode(door_id)
        decision = access.decide(identity, door_id, now, view, mode, self._offline_for(now))
        self._on_decided(time.perf_counter() - started)
        await self._conclude(decision, presentation, reader_id or door_id)
        return decision

    async def _conclude(
        self, decision: Decision, presentation: Presentation | None, reader_id: str
    ) -> None:
        """Open the door if granted, commit the event, then show the result on the reader.

        The relay command and the event's commit run together; GRANTED is shown only once the
        hardware confirmed the unlock (a door that did not unlock shows FAULT, and the door
        controller records ``door.relay_failed``). The result is shown for ``FEEDBACK_SHOWN_S``;
        a door alarm it covered is shown again after that.
        """
        confirm = self._doors.grant(decision)
        for watcher in self._watchers.pop(decision.door_id, []):
            if not watcher.done():
                watcher.set_result(decision)
        event = decision_event(decision, presentation)
        try:
            await asyncio.wait_for(self._events.record(event), EVENT_COMMIT_TIMEOUT_S)
        except (OutboxError, TimeoutError) as err:
            # The door has already done what the decision said; the journal keeps the trace the
            # outbox could not (redacted like every log line), and the person still gets an answer.
            _LOGGER.error(
                "event %s could not be committed (%r): %s", event.id, err, dict(event.data)
            )
        feedback = _feedback_for(decision)
        if confirm is not None and not await _confirmed(confirm):
            feedback = Feedback.FAULT
        try:
            self._readers.feedback(reader_id, feedback)
        except (LookupError, CommandFailed) as err:  # a door without a reader wired here
            _LOGGER.debug("reader %s cannot show %s: %s", reader_id, feedback, err)
        else:
            self._restore_later(decision.door_id)
        if presentation is None:
            shown = "malformed read"
        elif presentation.kind is CredentialKind.PIN:
            shown = "pin"  # not even part of its hash: see events.decision_event
        else:
            shown = f"{presentation.kind.value} {redact(presentation.value)}"
        _LOGGER.info(
            "%s %s at %s: %s",
            "granted" if decision.granted else "denied",
            shown,
            decision.door_id,
            decision.reason.value,
        )

    def _restore_later(self, door_id: str) -> None:
        """The reader shows a decision's signal now: once it has run its course, show the door's
        alarm again (without one, the reader goes idle by itself)."""
        pending = self._restores.pop(door_id, None)
        if pending is not None:
            pending.cancel()  # the course of this signal is what counts now
        if self._doors.resting_signal(door_id) is Feedback.IDLE:
            return
        loop = asyncio.get_running_loop()
        self._restores[door_id] = loop.call_later(base.FEEDBACK_SHOWN_S, self._restore, door_id)

    def _restore(self, door_id: str) -> None:
        self._restores.pop(door_id, None)
        self._doors.show_resting_signal(door_id)


async def _confirmed(confirm: asyncio.Future[None]) -> bool:
    """Whether the hardware confirmed a relay command in time (its failure is recorded elsewhere)."""
    try:
        await asyncio.wait_for(asyncio.shield(confirm), RELAY_CONFIRM_TIMEOUT_S)
    except (CommandFailed, TimeoutError):
        return False
    return True


def _feedback_for(decision: Decision) -> Feedback:
    """What the reader shows for ``decision``: a credential too weak for the door has its own."""
    if decision.granted:
        return Feedback.GRANTED
    if decision.reason is Reason.ASSURANCE_TOO_LOW:
        return Feedback.LOW_ASSURANCE
    return Feedback.DENIED
