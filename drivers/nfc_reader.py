"""An nfcpy contactless frontend as one door's card reader (``ReaderBank`` for that reader).

How it runs: nfcpy is blocking, so a thread owns the frontend and loops over
``clf.connect(rdwr=…, terminate=…)``; reads reach the event loop with ``call_soon_threadsafe``.

* ``on-discover`` sees every card after anticollision. A card that does not speak ISO-DEP
  (Type 2, MIFARE Classic, FeliCa…) is read as its bare UID (``nfc_uid``, low assurance) and
  never activated. An ISO-DEP card is activated (RATS) and ``on-connect`` runs ``read_card``
  over the tag's ``transceive``; nfcpy's errors for a card that stopped answering become
  ``CardGone``. An ISO-DEP card of no type the site's keys cover (``NotOurCard``: a bank card,
  a phone, a DESFire EV1, any card on a gateway without NFC keys) is read as its bare UID too,
  like a card that does not speak ISO-DEP. ``on-connect`` returns False, so nfcpy does not wait
  for the card to leave and the card is sensed again on the next cycle:
  ``SAME_CARD_COOLDOWN_S`` keeps a card resting on the reader from being presented on every
  cycle.
* nfcpy calls ``terminate`` between sense cycles: waiting there on the stop event paces the
  polling (``POLL_INTERVAL_S``) and lets ``stop()`` end the loop after the current cycle.
* A failed presentation (any other ``CardError``, ``CardGone``, any nfcpy error) is logged
  with the UID redacted and counted in ``ignored`` by reason; it never ends the loop. A failing
  frontend (unplugged device: nfcpy's ``connect`` returns False) is closed and reopened with
  backoff.

nfcpy logs full UIDs at DEBUG only (``nfc.clf``, ``nfc.tag``): keep the ``nfc`` logger at INFO or
above in production.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from drivers.base import CredentialRead, Feedback
from gateway.backoff import Backoff
from gateway.model import CredentialKind
from gateway.nfc_cards import CardError, CardGone, CardReading, NotOurCard, Transceive

_LOGGER = logging.getLogger(__name__)

#: How long a card that was read is not presented again (one tap, not one read per poll cycle).
SAME_CARD_COOLDOWN_S = 2.0
#: How long a UID whose read failed is left alone before the next attempt: a shaky tap gets a
#: quick second chance, a card that always fails is not put through its dialogue every cycle.
RETRY_AFTER_FAILURE_S = 0.5
#: Pause between sense cycles (nfcpy's own interval does not apply to single-iteration cycles).
POLL_INTERVAL_S = 0.1
#: Reopening a failed frontend: capped exponential backoff with jitter (gateway.backoff).
REOPEN_BASE_S = 0.5
REOPEN_CAP_S = 30.0
#: How long ``stop()`` waits for the thread: one sense cycle (nfcpy's udp driver waits up to 1 s
#: for a SENS_RES; USB readers answer in milliseconds) plus one card dialogue.
STOP_TIMEOUT_S = 5.0
#: What to poll for. Type A covers NTAG, DESFire, MIFARE Classic and ISO-DEP phones.
POLL_TARGETS = ("106A",)
#: Cards remembered for the cooldown (a bound, not a tuning knob).
_HOLD_MEMORY = 256
# ISO/IEC 14443-3 §6.5: the SEL_RES bit saying "ISO/IEC 14443-4 compliant".
_SEL_RES_ISO_DEP = 0x20

ReadCard = Callable[[bytes, Transceive], CardReading]


class ReaderState(enum.StrEnum):
    """Where the reader's frontend is in its life."""

    STOPPED = "stopped"
    OPENING = "opening"
    POLLING = "polling"
    FAILED = "failed"  # the frontend failed; waiting to reopen it
    STOPPING = "stopping"


class IgnoreReason(enum.StrEnum):
    """Why a presentation produced no read."""

    CARD_ERROR = "card_error"  # the card dialogue failed (CardError other than NotOurCard)
    CARD_GONE = "card_gone"  # the card stopped answering mid-dialogue (CardGone)
    NFC_ERROR = "nfc_error"  # nfcpy could not activate the card, or failed mid-read
    READER_ERROR = "reader_error"  # the device failed during a read
    NO_UID = "no_uid"  # the discovery response carried no UID
    COOLDOWN = "cooldown"  # the same card again within SAME_CARD_COOLDOWN_S
    NO_HANDLER = "no_handler"  # a read arrived before set_handler()
    INTERNAL = "internal_error"  # read_card raised something unexpected (logged with traceback)


class ReconnectPolicy(Protocol):
    """Delays between attempts to reopen the frontend; ``reset()`` after a success."""

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""

    def reset(self) -> None:
        """Forget past failures."""


def _nfcpy() -> Any:
    """nfcpy with the modules this driver uses, imported when a reader first needs it."""
    import nfc  # noqa: PLC0415 - hardware library, imported by the backend that needs it
    import nfc.clf  # noqa: PLC0415
    import nfc.tag  # noqa: PLC0415
    import nfc.tag.tt4  # noqa: PLC0415

    return nfc


def _open_frontend(path: str) -> Any:
    return _nfcpy().ContactlessFrontend(path)


def _tail(uid: bytes) -> str:
    """A UID as logs may show it: its last 4 hex digits."""
    return "…" + (uid.hex().upper()[-4:] if uid else "?")


def _target_uid(target: Any) -> bytes:
    """The identifier a discovered target announced: NFCID1 (A), PUPI (B) or IDm (F)."""
    brty = str(target.brty)
    if brty.endswith("A"):
        return bytes(target.sdd_res or b"")
    if brty.endswith("B") and target.sensb_res:
        return bytes(target.sensb_res[1:5])
    if brty.endswith("F") and target.sensf_res:
        return bytes(target.sensf_res[1:9])
    return b""


def _bare_uid(uid: bytes) -> CardReading:
    """A card read as nothing but its UID (``nfc_uid``, low assurance: anyone can copy it)."""
    return CardReading(kind=CredentialKind.NFC_UID, value=uid.hex().upper(), proof=b"")


def _is_iso_dep(target: Any) -> bool:
    """Whether a discovered target speaks ISO-DEP (every Type B card does)."""
    brty = str(target.brty)
    if brty.endswith("B"):
        return True
    sel_res = target.sel_res
    return brty.endswith("A") and bool(sel_res) and bool(sel_res[0] & _SEL_RES_ISO_DEP)


class NfcReader:
    """One nfcpy frontend (``usb``, ``tty:AMA0:pn532``, ``udp:HOST:PORT``…) serving one reader id."""

    def __init__(
        self,
        reader_id: str,
        path: str,
        read_card: ReadCard,
        *,
        handler: Callable[[CredentialRead], None] | None = None,
        targets: Iterable[str] = POLL_TARGETS,
        backoff: ReconnectPolicy | None = None,
        open_frontend: Callable[[str], Any] = _open_frontend,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader_id = reader_id
        self._path = path
        self._read_card = read_card
        self._handler = handler
        self._targets = list(targets)
        self._backoff: ReconnectPolicy = backoff or Backoff(
            base_s=REOPEN_BASE_S, cap_s=REOPEN_CAP_S
        )
        self._open_frontend = open_frontend
        self._monotonic = monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._state = ReaderState.STOPPED
        self._counts_lock = threading.Lock()
        self._ignored: collections.Counter[IgnoreReason] = collections.Counter()
        self._reads = 0
        self._reopens = 0
        # Reader-thread state below.
        self._holds: dict[tuple[str, str], float] = {}
        self._pending_activation: bytes | None = None
        self._last_failure: tuple[bytes, IgnoreReason] | None = None
        self._cycles_since_open = 0
        self._healthy = True

    @property
    def reader_id(self) -> str:
        """The reader id this frontend serves."""
        return self._reader_id

    @property
    def path(self) -> str:
        """The nfcpy device path."""
        return self._path

    @property
    def state(self) -> ReaderState:
        """Where the frontend is in its life."""
        return self._state

    @property
    def ignored(self) -> dict[str, int]:
        """Presentations that produced no read, by reason (a snapshot)."""
        with self._counts_lock:
            return {reason.value: count for reason, count in self._ignored.items()}

    @property
    def reads(self) -> int:
        """Reads produced for the handler."""
        with self._counts_lock:
            return self._reads

    @property
    def reopens(self) -> int:
        """How many times the frontend failed and was (or will be) reopened."""
        with self._counts_lock:
            return self._reopens

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        """Deliver every read to ``handler`` (called in the event loop)."""
        self._handler = handler

    def feedback(self, reader_id: str, feedback: Feedback) -> None:
        """No-op: nfcpy cannot show granted vs denied; feedback goes through the door board's reader port."""
        # nfcpy's only indicator call is Device.turn_on_led_and_buzzer(), implemented for the
        # ACR122U alone as "red LED and a 300 ms beep" (nfc/clf/acr122.py): one pattern, red,
        # which cannot tell GRANTED from DENIED, and calling it from the event loop would race
        # the reading thread's USB transfers. The door's LED/buzzer is driven by its I/O board.
        _LOGGER.debug("reader %s: feedback %s is shown by the door board", reader_id, feedback)

    def start(self) -> None:
        """Start the reading thread (idempotent); call it from the loop that is to get the reads."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._set_state(ReaderState.OPENING)
        self._thread = threading.Thread(
            target=self._run, name=f"nfc-reader-{self._reader_id}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop reading (idempotent); returns within ``STOP_TIMEOUT_S``."""
        thread = self._thread
        if thread is None:
            return
        self._set_state(ReaderState.STOPPING)
        self._stop.set()
        await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
        if thread.is_alive():
            _LOGGER.warning(
                "reader %s: the nfc thread did not stop within %.1f s; leaving it",
                self._reader_id,
                STOP_TIMEOUT_S,
            )
        if self._thread is thread:
            self._thread = None
        self._set_state(ReaderState.STOPPED)

    # -- event loop side -------------------------------------------------------------------

    def _deliver(self, reading: CardReading) -> None:
        """Give a read to the handler (runs in the event loop)."""
        if self._stop.is_set():
            return
        handler = self._handler
        if handler is None:
            first = self._count(IgnoreReason.NO_HANDLER) == 1
            _LOGGER.log(
                logging.WARNING if first else logging.DEBUG,
                "reader %s: a card was read before a handler was set",
                self._reader_id,
            )
            return
        read = CredentialRead(self._reader_id, reading.kind.value, reading.value, reading.proof)
        try:
            handler(read)
        except Exception:
            _LOGGER.exception("reader %s: the read handler failed", self._reader_id)

    # -- reading thread ----------------------------------------------------------------------

    def _set_state(self, state: ReaderState) -> None:
        if self._stop.is_set() and state not in (ReaderState.STOPPING, ReaderState.STOPPED):
            return  # stop() owns the state from here on
        if state is not self._state:
            _LOGGER.debug("reader %s: %s → %s", self._reader_id, self._state, state)
            self._state = state

    def _count(self, reason: IgnoreReason) -> int:
        with self._counts_lock:
            self._ignored[reason] += 1
            return self._ignored[reason]

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._set_state(ReaderState.OPENING)
                try:
                    clf = self._open_frontend(self._path)
                except Exception as err:
                    self._frontend_failed("open", err)
                else:
                    try:
                        self._poll(clf)
                    finally:
                        self._close(clf)
                if self._stop.is_set():
                    break
                self._stop.wait(self._backoff.next_delay())
        except Exception:
            _LOGGER.exception("reader %s: the nfc thread failed", self._reader_id)
            self._set_state(ReaderState.FAILED)

    def _poll(self, clf: Any) -> None:
        """Run connect cycles on an open frontend until stopped or the frontend fails."""
        self._cycles_since_open = 0
        self._set_state(ReaderState.POLLING)
        options = {
            "targets": list(self._targets),
            "on-discover": self._on_discover,
            "on-connect": self._on_connect,
            "iterations": 1,
            "beep-on-connect": False,
        }
        while not self._stop.is_set():
            try:
                result = clf.connect(rdwr=options, terminate=self._terminate)
            except Exception as err:
                uid, self._pending_activation = self._pending_activation, None
                if uid is None:
                    self._frontend_failed("connect", err)
                    return
                # Raised while activating a card (e.g. a malformed ATS): the card's fault.
                self._failed(uid, IgnoreReason.NFC_ERROR, f"activation: {err!r}")
                continue
            if result is False:  # nfcpy caught an IOError: the device is gone or broken
                self._pending_activation = None
                self._frontend_failed("connect", OSError("the device stopped answering"))
                return

    def _close(self, clf: Any) -> None:
        try:
            clf.close()
        except Exception as err:
            _LOGGER.debug("reader %s: closing the frontend: %r", self._reader_id, err)

    def _frontend_failed(self, what: str, err: BaseException) -> None:
        with self._counts_lock:
            self._reopens += 1
        if self._healthy:
            _LOGGER.warning(
                "reader %s: %s %s failed (%s); reopening with backoff",
                self._reader_id,
                what,
                self._path,
                err,
            )
        else:
            _LOGGER.debug(
                "reader %s: %s %s failed again: %s", self._reader_id, what, self._path, err
            )
        self._healthy = False
        self._set_state(ReaderState.FAILED)

    def _terminate(self) -> bool:
        """nfcpy asks between sense cycles whether to stop; also paces the polling."""
        uid, self._pending_activation = self._pending_activation, None
        if uid is not None:  # on-discover let an ISO-DEP card through, but it never got connected
            self._failed(uid, IgnoreReason.NFC_ERROR, "activation failed (no ATS)")
        self._cycles_since_open += 1
        if self._cycles_since_open == 2:  # one full sense cycle without a device error
            self._backoff.reset()
            if not self._healthy:
                _LOGGER.info("reader %s: %s works again", self._reader_id, self._path)
                self._healthy = True
        return self._stop.wait(POLL_INTERVAL_S)

    def _on_discover(self, target: Any) -> bool:
        """Read a non-ISO-DEP card's UID here; let ISO-DEP cards through to activation."""
        try:
            uid = _target_uid(target)
            if not uid:
                self._failed(
                    uid, IgnoreReason.NO_UID, f"nothing to identify the {target.brty} card"
                )
                return False
            if self._held(("uid", uid.hex())):
                self._repeat(uid)
                return False
            if _is_iso_dep(target):
                self._pending_activation = uid
                return True
            self._emit(uid, _bare_uid(uid))
        except Exception:
            _LOGGER.exception("reader %s: handling a discovered card failed", self._reader_id)
        return False

    def _on_connect(self, tag: Any) -> bool:
        """Run the card dialogue on an activated ISO-DEP card; False: nfcpy returns at once."""
        nfc = _nfcpy()
        self._pending_activation = None
        uid = bytes(tag.identifier)
        try:
            reading = self._read_card(uid, self._transceive_for(tag))
        except CardGone as err:
            self._failed(uid, IgnoreReason.CARD_GONE, str(err))
        except NotOurCard as err:  # before CardError, its base class
            _LOGGER.debug(
                "reader %s: card %s is not of a type the site's keys cover (%s): its bare UID",
                self._reader_id,
                _tail(uid),
                err,
            )
            self._emit(uid, _bare_uid(uid))
        except CardError as err:
            self._failed(uid, IgnoreReason.CARD_ERROR, str(err))
        except OSError as err:
            self._failed(uid, IgnoreReason.READER_ERROR, str(err))
        except (nfc.tag.TagCommandError, nfc.clf.Error) as err:
            self._failed(uid, IgnoreReason.NFC_ERROR, f"{type(err).__name__}: {err}")
        except Exception as err:
            _LOGGER.exception("reader %s: read_card failed on card %s", self._reader_id, _tail(uid))
            self._failed(uid, IgnoreReason.INTERNAL, repr(err))
        else:
            self._emit(uid, reading)
        return False

    def _transceive_for(self, tag: Any) -> Transceive:
        """An APDU transport over the tag; a card that stopped answering raises CardGone."""
        nfc = _nfcpy()

        def transceive(apdu: bytes) -> bytes:
            if self._stop.is_set():
                raise CardGone("the reader is stopping")
            try:
                # Type4Tag.transceive wraps the APDU in ISO-DEP blocks (chaining, R(NAK) retries,
                # WTX) and returns the response APDU, status word included.
                response = tag.transceive(bytearray(apdu))
            except nfc.tag.TagCommandError as err:  # retries exhausted: timeout/receive/protocol
                raise CardGone(f"ISO-DEP: {err}") from err
            except nfc.clf.CommunicationError as err:  # RFOFF, timeout during WTX, bad frame
                raise CardGone(f"{type(err).__name__}: {err}") from err
            return bytes(response)

        return transceive

    def _emit(self, uid: bytes, reading: CardReading) -> None:
        """Send a read to the event loop, unless it repeats one inside the cooldown."""
        credential = ("credential", f"{reading.kind.value}:{reading.value}")
        uid_key = ("uid", uid.hex())
        # Keyed on the credential too: a card with a random UID is a new UID on every activation.
        if self._held(credential):
            self._hold(uid_key, SAME_CARD_COOLDOWN_S)
            self._repeat(uid)
            return
        self._hold(uid_key, SAME_CARD_COOLDOWN_S)
        self._hold(credential, SAME_CARD_COOLDOWN_S)
        self._last_failure = None
        with self._counts_lock:
            self._reads += 1
        _LOGGER.debug("reader %s: read %s card %s", self._reader_id, reading.kind.value, _tail(uid))
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._deliver, reading)
        except RuntimeError:  # the loop is closed: nobody is left to take the read
            _LOGGER.debug("reader %s: read dropped, the event loop is closed", self._reader_id)

    def _failed(self, uid: bytes, reason: IgnoreReason, detail: str) -> None:
        """Count and log a presentation that produced no read."""
        self._count(reason)
        if uid:
            self._hold(("uid", uid.hex()), RETRY_AFTER_FAILURE_S)
        repeat = self._last_failure == (uid, reason)
        self._last_failure = (uid, reason)
        level = logging.INFO if reason is IgnoreReason.CARD_GONE else logging.WARNING
        _LOGGER.log(
            logging.DEBUG if repeat else level,
            "reader %s: ignored card %s: %s (%s)",
            self._reader_id,
            _tail(uid),
            reason.value,
            detail,
        )

    def _repeat(self, uid: bytes) -> None:
        self._count(IgnoreReason.COOLDOWN)
        _LOGGER.debug("reader %s: card %s still in its cooldown", self._reader_id, _tail(uid))

    def _held(self, key: tuple[str, str]) -> bool:
        until = self._holds.get(key)
        return until is not None and self._monotonic() < until

    def _hold(self, key: tuple[str, str], seconds: float) -> None:
        now = self._monotonic()
        if len(self._holds) >= _HOLD_MEMORY:
            self._holds = {k: until for k, until in self._holds.items() if until > now}
            while len(self._holds) >= _HOLD_MEMORY:
                del self._holds[next(iter(self._holds))]
        self._holds.pop(key, None)  # re-insert at the end: oldest first for eviction
        self._holds[key] = now + seconds
