"""Door relays wired to the Raspberry Pi's own GPIO header, through libgpiod 2.x.

``GpioRelays`` implements ``RelayBank`` on top of a small ``GpioLines`` interface with two
backends: ``LibgpiodLines`` (the kernel's GPIO character device through the ``gpiod`` package,
imported only when the lines are requested) and ``SimulatedLines`` (an in-memory chip with named
lines that records every electrical level written and can be told to fail a line).

Lines are named, never numbered (``GPIO17`` or a board label), and always spoken of in logical
terms: *active* means the relay is energised, whatever the board's polarity; an active-low line
is inverted by the kernel (``LineSettings.active_low``). Every line is requested as an output
that starts inactive, and ``close()`` drives every line inactive before giving the lines back.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from drivers.base import CommandFailed

if TYPE_CHECKING:
    from gpiod import Chip, LineRequest  # type: ignore[import-not-found, unused-ignore]

_LOGGER = logging.getLogger(__name__)

#: The chip of the Pi's 40-pin header on current kernels (``gpiodetect`` lists the chips).
DEFAULT_CHIP = "/dev/gpiochip0"
#: Shown by ``gpioinfo`` next to every line the gateway holds.
CONSUMER = "luckey-gateway"
#: The names the Raspberry Pi's device tree gives the header's lines (BCM numbering).
PI_HEADER_LINES: tuple[str, ...] = tuple(f"GPIO{n}" for n in range(28))
#: What to install when the ``gpiod`` package is missing or too old.
GPIOD_REQUIREMENT = "gpiod>=2.1"


class GpioError(Exception):
    """A GPIO line could not be requested, driven or read; ``lines`` names the lines concerned."""

    def __init__(self, message: str, lines: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.lines: tuple[str, ...] = tuple(lines)


class UnknownLineError(GpioError):
    """The chip has no line of a configured name (a configuration error: fix and restart)."""

    def __init__(self, chip: str, unknown: Iterable[str], available: Iterable[str]) -> None:
        self.chip = chip
        self.available: tuple[str, ...] = tuple(available)
        names = ", ".join(self.available) if self.available else "(no named lines)"
        missing = tuple(unknown)
        super().__init__(
            f"GPIO chip {chip} has no line named {', '.join(missing)}; its lines are: {names}",
            missing,
        )


class UnknownChannelError(GpioError, LookupError):
    """No relay is configured under that channel name (a door this gateway does not drive)."""


class GpiodUnavailableError(GpioError):
    """The ``gpiod`` package (libgpiod 2.x bindings) is not installed, or is the 1.x one."""


@dataclass(frozen=True, slots=True)
class LineSpec:
    """One relay's line: its name on the chip, whether the board energises it on low, and its
    level at rest (when the lines are requested and when they are given back)."""

    name: str
    active_low: bool = False
    rest: bool = False  # True: energised at rest (e.g. a maglock that stays locked)


@dataclass(frozen=True, slots=True)
class GpioConfig:
    """Relays on one GPIO chip: channel (door id) → line."""

    channels: Mapping[str, LineSpec]
    chip: str = DEFAULT_CHIP
    consumer: str = CONSUMER

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))


class LineHandle(Protocol):
    """Requested output lines, addressed by name, in logical levels (active = relay on)."""

    def set(self, name: str, on: bool) -> None:
        """Drive a line active (``on``) or inactive; ``OSError`` when the chip refuses."""

    def get(self, name: str) -> bool:
        """Whether a line is active now, read back from the chip; ``OSError`` on failure."""

    def release(self) -> None:
        """Give every line back to the kernel."""


class GpioLines(Protocol):
    """A GPIO chip whose lines can be requested as relay outputs."""

    @property
    def chip(self) -> str:
        """The chip, as shown in error messages."""

    def request(self, lines: Mapping[str, bool]) -> LineHandle:
        """Request each line (name → active_low) as an output, inactive; ``OSError``/``GpioError``."""


class GpioState(enum.StrEnum):
    """Lifecycle of ``GpioRelays``; it runs once."""

    IDLE = "idle"
    RUNNING = "running"
    CLOSED = "closed"


class GpioRelays:
    """``RelayBank`` over GPIO lines; pulses release themselves on the event loop's clock."""

    def __init__(self, lines: GpioLines, channels: Mapping[str, LineSpec]) -> None:
        by_line: dict[str, str] = {}
        for channel, spec in channels.items():
            other = by_line.setdefault(spec.name, channel)
            if other != channel:
                raise GpioError(
                    f"channels {other!r} and {channel!r} both use GPIO line {spec.name}",
                    (spec.name,),
                )
        self._lines = lines
        self._channels = dict(channels)
        self._handle: LineHandle | None = None
        self._state = GpioState.IDLE
        self._on: dict[str, bool] = dict.fromkeys(self._channels, False)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._listeners: list[Callable[[str, bool], None]] = []

    @property
    def state(self) -> GpioState:
        """Where the relays are in their lifecycle."""
        return self._state

    @property
    def channels(self) -> Mapping[str, LineSpec]:
        """Every configured channel and its line."""
        return MappingProxyType(self._channels)

    def start(self) -> None:
        """Request every line as an output and put it at rest; ``GpioError`` if the chip refuses."""
        if self._state is not GpioState.IDLE:
            raise GpioError(f"GPIO relays on {self._lines.chip} are {self._state}, not idle")
        wanted = {spec.name: spec.active_low for spec in self._channels.values()}
        try:
            self._handle = self._lines.request(wanted)
        except OSError as err:
            raise GpioError(
                f"cannot request GPIO lines {', '.join(wanted)} on {self._lines.chip}: {err}",
                wanted,
            ) from err
        self._set_state(GpioState.RUNNING)
        # Lines come up inactive; a relay that rests energised follows within microseconds,
        # far quicker than a relay's contacts move.
        for channel, spec in self._channels.items():
            if spec.rest:
                self._drive(self._handle, channel, True)

    def close(self) -> None:
        """Cancel pending releases, put every line at rest and give the lines back (idempotent)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        handle, self._handle = self._handle, None
        if self._state is GpioState.RUNNING and handle is not None:
            for channel, spec in self._channels.items():
                try:
                    self._drive(handle, channel, spec.rest)
                except GpioError:
                    _LOGGER.exception("Relay %s may not be at rest", channel)
            handle.release()
        self._set_state(GpioState.CLOSED)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def is_on(self, channel: str) -> bool:
        """Whether the relay is energised now (as last driven; ``read`` asks the chip)."""
        self._spec(channel)
        return self._on[channel]

    def read(self, channel: str) -> bool:
        """Whether the relay's line is active, read back from the chip."""
        spec = self._spec(channel)
        handle = self._running()
        try:
            return handle.get(spec.name)
        except OSError as err:
            raise self._line_error("read", channel, err) from err

    def set(self, channel: str, on: bool) -> None:
        """Energise or release a relay; cancels a pending pulse release."""
        self._spec(channel)
        handle = self._running()
        timer = self._timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        self._drive(handle, channel, on)

    def drive(self, channel: str, on: bool) -> asyncio.Future[None]:
        """Set a relay at once; the future is done, or failed with CommandFailed naming the line."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self.set(channel, on)
        except GpioError as err:
            done.set_exception(CommandFailed(channel, str(err)))
        else:
            done.set_result(None)
        return done

    def pulse(self, channel: str, seconds: float) -> None:
        """Energise for ``seconds``; a pulse during a pulse restarts the countdown."""
        loop = asyncio.get_running_loop()  # before driving: no pulse without its release
        self.set(channel, True)
        self._timers[channel] = loop.call_later(seconds, self._release, channel)

    def add_listener(self, listener: Callable[[str, bool], None]) -> Callable[[], None]:
        """Call ``listener(channel, on)`` on every change; returns a remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _release(self, channel: str) -> None:
        self._timers.pop(channel, None)
        handle = self._handle
        if handle is None:
            return
        try:
            self._drive(handle, channel, False)
        except GpioError:
            # Nobody awaits a timer: say it loudly, the door may be held open.
            _LOGGER.exception("Relay %s did not release at the end of its pulse", channel)

    def _drive(self, handle: LineHandle, channel: str, on: bool) -> None:
        if self._on[channel] == on:
            return
        try:
            handle.set(self._channels[channel].name, on)
        except OSError as err:
            raise self._line_error("drive", channel, err) from err
        self._on[channel] = on
        _LOGGER.debug("relay %s %s", channel, "on" if on else "off")
        for listener in list(self._listeners):
            listener(channel, on)

    def _spec(self, channel: str) -> LineSpec:
        spec = self._channels.get(channel)
        if spec is None:
            known = ", ".join(self._channels) or "(none)"
            raise UnknownChannelError(f"no GPIO relay channel {channel!r}; configured: {known}")
        return spec

    def _running(self) -> LineHandle:
        if self._handle is None:
            raise GpioError(f"GPIO relays on {self._lines.chip} are {self._state}, not running")
        return self._handle

    def _line_error(self, verb: str, channel: str, err: OSError) -> GpioError:
        name = self._channels[channel].name
        return GpioError(
            f"cannot {verb} GPIO line {name} (relay {channel}) on {self._lines.chip}: {err}",
            (name,),
        )

    def _set_state(self, state: GpioState) -> None:
        if state is not self._state:
            _LOGGER.debug("GPIO relays on %s: %s → %s", self._lines.chip, self._state, state)
            self._state = state


class LibgpiodLines:
    """Lines of a real GPIO chip through the ``gpiod`` package, imported when lines are requested."""

    def __init__(self, chip: str = DEFAULT_CHIP, consumer: str = CONSUMER) -> None:
        self._chip = chip
        self._consumer = consumer

    @property
    def chip(self) -> str:
        """The chip's device path."""
        return self._chip

    def request(self, lines: Mapping[str, bool]) -> LineHandle:
        """Look every line up by name, then request them all as outputs, inactive."""
        gpiod = _import_gpiod()
        line = gpiod.line
        try:
            opened = gpiod.Chip(self._chip)
        except OSError as err:
            raise GpioError(
                f"cannot open GPIO chip {self._chip} for lines {', '.join(lines)}: {err}"
                " (gpiodetect lists the chips; the gateway's user needs the gpio group)",
                lines,
            ) from err
        with opened as chip:
            offsets = self._offsets(chip, lines)
            config: dict[Any, Any] = {
                offsets[name]: gpiod.LineSettings(
                    direction=line.Direction.OUTPUT,
                    output_value=line.Value.INACTIVE,
                    active_low=active_low,
                )
                for name, active_low in lines.items()
            }
            try:
                request = chip.request_lines(config=config, consumer=self._consumer)
            except OSError as err:
                raise GpioError(
                    f"cannot request GPIO lines {', '.join(lines)} on {self._chip}: {err}"
                    f"{_busy_lines(chip, offsets)}",
                    lines,
                ) from err
        return _LibgpiodHandle(request, offsets, line.Value.ACTIVE, line.Value.INACTIVE)

    def _offsets(self, chip: Chip, lines: Iterable[str]) -> dict[str, int]:
        offsets: dict[str, int] = {}
        unknown: list[str] = []
        for name in lines:
            try:
                offsets[name] = chip.line_offset_from_id(name)
            except (OSError, ValueError):
                unknown.append(name)
        if unknown:
            raise UnknownLineError(self._chip, unknown, _line_names(chip))
        by_offset: dict[int, str] = {}
        for name, offset in offsets.items():
            other = by_offset.setdefault(offset, name)
            if other != name:
                raise GpioError(
                    f"GPIO lines {other} and {name} are the same line ({offset}) on {self._chip}",
                    (other, name),
                )
        return offsets


class _LibgpiodHandle:
    """A ``gpiod.LineRequest`` addressed by the names it was requested by."""

    def __init__(
        self, request: LineRequest, offsets: Mapping[str, int], active: Any, inactive: Any
    ) -> None:
        self._request = request
        self._offsets = dict(offsets)
        self._active = active
        self._inactive = inactive

    def set(self, name: str, on: bool) -> None:
        """Drive a line active or inactive."""
        self._request.set_value(self._offsets[name], self._active if on else self._inactive)

    def get(self, name: str) -> bool:
        """Whether a line is active now."""
        return bool(self._request.get_value(self._offsets[name]) == self._active)

    def release(self) -> None:
        """Give the lines back to the kernel."""
        self._request.release()


def _import_gpiod() -> Any:
    """The ``gpiod`` module, or ``GpiodUnavailableError`` saying what to install."""
    try:
        import gpiod  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - hardware library
    except ImportError as err:
        raise GpiodUnavailableError(
            "GPIO relays need the gpiod package (libgpiod 2.x bindings), which is not installed: "
            f"pip install '{GPIOD_REQUIREMENT}'"
        ) from err
    if not hasattr(gpiod, "request_lines"):
        raise GpiodUnavailableError(
            f"GPIO relays need libgpiod 2.x bindings, found gpiod {getattr(gpiod, '__version__', '1.x')} "
            f"(python3-libgpiod from apt?): pip install '{GPIOD_REQUIREMENT}'"
        )
    return gpiod


def _line_names(chip: Chip) -> list[str]:
    """Every named line of an open chip, in offset order."""
    try:
        count = chip.get_info().num_lines
        names = (chip.get_line_info(offset).name for offset in range(count))
        return [name for name in names if name]
    except OSError:
        return []


def _busy_lines(chip: Chip, offsets: Mapping[str, int]) -> str:
    """Which requested lines another consumer holds, as a sentence to append to an error."""
    busy: list[str] = []
    for name, offset in offsets.items():
        try:
            info = chip.get_line_info(offset)
        except OSError:
            continue
        if info.used:
            busy.append(f"{name} (used by {info.consumer or 'the kernel'})")
    return f"; already in use: {', '.join(busy)}" if busy else ""


@dataclass(slots=True)
class _SimLine:
    level: int = 0  # electrical: 1 high, 0 low
    active_low: bool = False
    held: bool = False
    failure: OSError | None = None


@dataclass(eq=False, slots=True)
class SimulatedLines:
    """An in-memory GPIO chip with named lines, recording every electrical level written."""

    names: Iterable[str] = PI_HEADER_LINES
    chip: str = "simulated-gpiochip"
    #: Every write, in order: (line name, electrical level: 1 high, 0 low).
    writes: list[tuple[str, int]] = field(default_factory=list)
    requests: int = 0
    releases: int = 0
    _lines: dict[str, _SimLine] = field(init=False)

    def __post_init__(self) -> None:
        self._lines = {name: _SimLine() for name in self.names}
        self.names = tuple(self._lines)

    def level(self, name: str) -> int:
        """The line's electrical level now (1 high, 0 low)."""
        return self._lines[name].level

    def held(self, name: str) -> bool:
        """Whether the line is requested now."""
        return self._lines[name].held

    def fail(self, name: str, error: OSError | None = None) -> None:
        """Make every later write or read of the line raise ``error`` (default: EIO)."""
        self._lines[name].failure = error or OSError(errno.EIO, "Input/output error")

    def heal(self, name: str) -> None:
        """Let the line work again."""
        self._lines[name].failure = None

    def request(self, lines: Mapping[str, bool]) -> LineHandle:
        """Request the lines as outputs, inactive; ``EBUSY`` for a line already held."""
        unknown = [name for name in lines if name not in self._lines]
        if unknown:
            raise UnknownLineError(self.chip, unknown, self._lines)
        busy = [name for name in lines if self._lines[name].held]
        if busy:
            raise OSError(errno.EBUSY, f"Device or resource busy ({', '.join(busy)})")
        for name, active_low in lines.items():
            line = self._lines[name]
            line.held = True
            line.active_low = active_low
            self._write(name, False)
        self.requests += 1
        return _SimulatedHandle(self, tuple(lines))

    def _write(self, name: str, on: bool) -> None:
        line = self._lines[name]
        if line.failure is not None:
            raise line.failure
        line.level = int(on != line.active_low)
        self.writes.append((name, line.level))

    def _read(self, name: str) -> bool:
        line = self._lines[name]
        if line.failure is not None:
            raise line.failure
        return (line.level == 1) != line.active_low

    def _release(self, names: Iterable[str]) -> None:
        for name in names:
            self._lines[name].held = False  # the level stays, as the Pi's pins do
        self.releases += 1


class _SimulatedHandle:
    """Lines held on a ``SimulatedLines`` chip."""

    def __init__(self, chip: SimulatedLines, names: tuple[str, ...]) -> None:
        self._chip = chip
        self._names = names
        self._released = False

    def set(self, name: str, on: bool) -> None:
        """Drive a line active or inactive."""
        self._check(name)
        self._chip._write(name, on)

    def get(self, name: str) -> bool:
        """Whether a line is active now."""
        self._check(name)
        return self._chip._read(name)

    def release(self) -> None:
        """Give the lines back (idempotent)."""
        if not self._released:
            self._released = True
            self._chip._release(self._names)

    def _check(self, name: str) -> None:
        if self._released:
            raise RuntimeError("the GPIO request has been released")
        if name not in self._names:
            raise KeyError(name)


def make_gpio_relays(config: GpioConfig, simulated: bool = False) -> GpioRelays:
    """GPIO relays for ``config`` on the real chip, or on a simulated one that has its lines."""
    lines: GpioLines
    if simulated:
        configured = (spec.name for spec in config.channels.values())
        lines = SimulatedLines(
            names=(*PI_HEADER_LINES, *configured), chip=f"simulated {config.chip}"
        )
    else:
        lines = LibgpiodLines(config.chip, config.consumer)
    return GpioRelays(lines, config.channels)
