"""Tests for drivers.gpio_relays: relays on GPIO lines, over the simulated chip and (HIL) a real one.

The tests taking the ``bench`` fixture run twice: on ``SimulatedLines``, and on a real chip through
``LibgpiodLines`` when ``LUCKEY_HIL_GPIOCHIP`` names one (``/dev/gpiochip0`` on a Pi). The lines
driven there are ``LUCKEY_HIL_GPIO_LINES`` (comma-separated names, default ``GPIO17,GPIO27``):
wire nothing to them but relays or LEDs. Elsewhere the hardware run is skipped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from drivers.base import CommandFailed, RelayBank
from drivers.gpio_relays import (
    CONSUMER,
    DEFAULT_CHIP,
    PI_HEADER_LINES,
    GpioConfig,
    GpiodUnavailableError,
    GpioError,
    GpioLines,
    GpioRelays,
    GpioState,
    LibgpiodLines,
    LineSpec,
    SimulatedLines,
    UnknownChannelError,
    UnknownLineError,
    make_gpio_relays,
)

HIL_CHIP = os.environ.get("LUCKEY_HIL_GPIOCHIP", "")
HIL_LINES = tuple(
    name.strip()
    for name in os.environ.get("LUCKEY_HIL_GPIO_LINES", "GPIO17,GPIO27").split(",")
    if name.strip()
)
PULSE_S = 0.05
LONG_PULSE_S = 0.2
WAIT_S = 5.0


@dataclass
class Bench:
    """The lines under test: a chip, two line names on it, and the simulated chip if it is one."""

    lines: GpioLines
    front: str
    lobby: str
    sim: SimulatedLines | None

    def relays(self, *, lobby_active_low: bool = False) -> GpioRelays:
        return GpioRelays(
            self.lines,
            {"front": LineSpec(self.front), "lobby": LineSpec(self.lobby, lobby_active_low)},
        )


@pytest.fixture(params=["simulated", "libgpiod"])
def bench(request: pytest.FixtureRequest) -> Bench:
    if request.param == "simulated":
        sim = SimulatedLines()
        return Bench(sim, "GPIO17", "GPIO27", sim)
    if not HIL_CHIP:
        pytest.skip(
            "hardware-in-the-loop: set LUCKEY_HIL_GPIOCHIP to a GPIO chip (e.g. /dev/gpiochip0)"
        )
    if len(HIL_LINES) < 2:
        pytest.skip("hardware-in-the-loop: LUCKEY_HIL_GPIO_LINES must name two lines")
    return Bench(LibgpiodLines(HIL_CHIP), HIL_LINES[0], HIL_LINES[1], None)


@pytest.fixture
def relays(bench: Bench) -> Iterator[GpioRelays]:
    relays = bench.relays()
    relays.start()
    yield relays
    relays.close()


@pytest.fixture
def sim() -> SimulatedLines:
    return SimulatedLines()


class Recorder:
    """Relay changes as (channel, on, loop time), with a gate per awaited change."""

    def __init__(self, relays: GpioRelays) -> None:
        self.changes: list[tuple[str, bool, float]] = []
        self._loop = asyncio.get_running_loop()  # close() may report changes after the test
        self._changed = asyncio.Event()
        self.remove = relays.add_listener(self._on_change)

    def _on_change(self, channel: str, on: bool) -> None:
        self.changes.append((channel, on, self._loop.time()))
        self._changed.set()

    def seen(self) -> list[tuple[str, bool]]:
        return [(channel, on) for channel, on, _ in self.changes]

    async def wait_for(self, channel: str, on: bool) -> float:
        """Wait for ``channel`` to become ``on``; the loop time it did."""
        async with asyncio.timeout(WAIT_S):
            while True:
                for ch, state, when in self.changes:
                    if (ch, state) == (channel, on):
                        return when
                self._changed.clear()
                await self._changed.wait()


# -- RelayBank behaviour, on the simulated chip and (HIL) on a real one ---------------------------


def test_gpio_relays_implement_the_relay_bank(sim: SimulatedLines) -> None:
    relays: RelayBank = GpioRelays(sim, {"front": LineSpec("GPIO17")})

    assert not relays.is_on("front")


def test_start_requests_every_line_inactive(bench: Bench) -> None:
    relays = bench.relays()

    relays.start()
    try:
        assert relays.state is GpioState.RUNNING
        assert not relays.is_on("front")
        assert not relays.is_on("lobby")
        assert not relays.read("front")
        assert not relays.read("lobby")
        if bench.sim is not None:
            assert bench.sim.writes == [("GPIO17", 0), ("GPIO27", 0)]
            assert bench.sim.held("GPIO17")
            assert bench.sim.held("GPIO27")
    finally:
        relays.close()


def test_set_drives_the_line(bench: Bench, relays: GpioRelays) -> None:
    relays.set("front", True)

    assert relays.is_on("front")
    assert relays.read("front")
    assert not relays.read("lobby")

    relays.set("front", False)

    assert not relays.is_on("front")
    assert not relays.read("front")
    if bench.sim is not None:
        assert bench.sim.writes[2:] == [("GPIO17", 1), ("GPIO17", 0)]


async def test_pulse_releases_after_its_duration(relays: GpioRelays) -> None:
    recorder = Recorder(relays)
    loop = asyncio.get_running_loop()

    started = loop.time()
    relays.pulse("front", PULSE_S)

    assert relays.is_on("front")
    assert relays.read("front")
    released = await recorder.wait_for("front", False)
    assert released - started >= PULSE_S - 0.005
    assert not relays.read("front")
    assert recorder.seen() == [("front", True), ("front", False)]


async def test_a_new_pulse_restarts_the_countdown(relays: GpioRelays) -> None:
    recorder = Recorder(relays)
    loop = asyncio.get_running_loop()

    relays.pulse("front", PULSE_S)
    restarted = loop.time()
    relays.pulse("front", LONG_PULSE_S)

    released = await recorder.wait_for("front", False)
    assert released - restarted >= LONG_PULSE_S - 0.005
    assert recorder.seen() == [("front", True), ("front", False)]  # one opening, not two


async def test_set_cancels_a_pending_release(relays: GpioRelays) -> None:
    recorder = Recorder(relays)

    relays.pulse("front", PULSE_S)
    relays.set("front", True)  # now held until told otherwise
    relays.pulse("lobby", LONG_PULSE_S)  # a reference that outlives front's cancelled pulse
    await recorder.wait_for("lobby", False)

    assert relays.is_on("front")
    assert relays.read("front")
    assert ("front", False) not in recorder.seen()


async def test_set_off_ends_a_pulse_early(relays: GpioRelays) -> None:
    recorder = Recorder(relays)

    relays.pulse("front", PULSE_S)
    relays.set("front", False)
    relays.pulse("lobby", LONG_PULSE_S)
    await recorder.wait_for("lobby", False)

    assert recorder.seen().count(("front", False)) == 1  # the pending release did not fire again
    assert not relays.read("front")


def test_listeners_hear_only_real_changes(bench: Bench, relays: GpioRelays) -> None:
    heard: list[tuple[str, bool]] = []
    remove = relays.add_listener(lambda channel, on: heard.append((channel, on)))

    relays.set("front", False)  # off already
    relays.set("front", True)
    relays.set("front", True)
    relays.set("lobby", True)
    relays.set("front", False)
    relays.set("front", False)

    assert heard == [("front", True), ("lobby", True), ("front", False)]
    if bench.sim is not None:  # and the chip was not written to for nothing
        assert bench.sim.writes[2:] == [("GPIO17", 1), ("GPIO27", 1), ("GPIO17", 0)]

    remove()
    relays.set("lobby", False)
    assert heard == [("front", True), ("lobby", True), ("front", False)]


def test_every_listener_is_called(relays: GpioRelays) -> None:
    first: list[bool] = []
    second: list[bool] = []
    relays.add_listener(lambda _channel, on: first.append(on))
    relays.add_listener(lambda _channel, on: second.append(on))

    relays.set("front", True)

    assert first == [True]
    assert second == [True]


async def test_close_releases_pending_pulses_and_drives_every_line_inactive(bench: Bench) -> None:
    relays = bench.relays()
    relays.start()
    recorder = Recorder(relays)
    relays.pulse("front", PULSE_S)
    relays.set("lobby", True)

    relays.close()
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(PULSE_S * 3, done.set)
    await asyncio.wait_for(done.wait(), timeout=WAIT_S)

    assert relays.state is GpioState.CLOSED
    assert not relays.is_on("front")
    assert not relays.is_on("lobby")
    assert sorted(recorder.seen()) == [("front", False), ("front", True), ("lobby", False), ("lobby", True)]  # fmt: skip
    assert recorder.seen()[-2:] in ([("front", False), ("lobby", False)], [("lobby", False), ("front", False)])  # fmt: skip
    with pytest.raises(GpioError, match="closed"):
        relays.set("front", True)
    relays.close()  # idempotent
    if bench.sim is not None:
        assert bench.sim.level("GPIO17") == 0
        assert bench.sim.level("GPIO27") == 0
        assert not bench.sim.held("GPIO17")
        assert not bench.sim.held("GPIO27")
        assert bench.sim.releases == 1


def test_the_lines_can_be_requested_again_after_close(bench: Bench) -> None:
    with bench.relays() as first:
        first.set("front", True)
    with bench.relays() as second:
        assert not second.read("front")


def test_an_unknown_line_name_lists_the_chip_s_names(bench: Bench) -> None:
    relays = GpioRelays(
        bench.lines, {"front": LineSpec(bench.front), "garage": LineSpec("NO_SUCH_LINE")}
    )

    with pytest.raises(UnknownLineError) as caught:
        relays.start()

    assert caught.value.lines == ("NO_SUCH_LINE",)
    assert bench.front in caught.value.available
    assert "no line named NO_SUCH_LINE; its lines are: " in str(caught.value)
    assert bench.front in str(caught.value)
    assert relays.state is GpioState.IDLE
    with bench.relays():  # nothing was left held
        pass


def test_lines_held_by_another_request_are_refused_by_name(bench: Bench) -> None:
    with bench.relays():
        second = bench.relays()

        with pytest.raises(GpioError) as caught:
            second.start()

    assert caught.value.lines == (bench.front, bench.lobby)
    assert bench.front in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


# -- The simulated chip: electrical levels and failures --------------------------------------------


def test_an_active_low_line_records_the_inverted_electrical_level(sim: SimulatedLines) -> None:
    relays = GpioRelays(sim, {"front": LineSpec("GPIO17"), "lobby": LineSpec("GPIO27", True)})

    relays.start()
    assert sim.level("GPIO27") == 1  # inactive: held high, the board's relay is off
    relays.set("lobby", True)
    assert sim.level("GPIO27") == 0
    assert relays.is_on("lobby")
    assert relays.read("lobby")
    relays.close()

    assert sim.writes == [("GPIO17", 0), ("GPIO27", 1), ("GPIO27", 0), ("GPIO27", 1)]
    assert sim.level("GPIO27") == 1


def test_a_failing_line_raises_gpio_error_naming_it(sim: SimulatedLines) -> None:
    relays = GpioRelays(sim, {"front": LineSpec("GPIO17"), "lobby": LineSpec("GPIO27")})
    relays.start()
    heard: list[tuple[str, bool]] = []
    relays.add_listener(lambda channel, on: heard.append((channel, on)))
    sim.fail("GPIO17")

    with pytest.raises(GpioError, match=r"GPIO line GPIO17 \(relay front\)") as caught:
        relays.set("front", True)
    with pytest.raises(GpioError, match="GPIO17"):
        relays.read("front")

    assert caught.value.lines == ("GPIO17",)
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.EIO
    assert not relays.is_on("front")  # not driven, so not reported
    relays.set("lobby", True)  # the others keep working
    assert relays.read("lobby")
    assert heard == [("lobby", True)]

    sim.heal("GPIO17")
    relays.set("front", True)
    assert relays.is_on("front")
    assert heard == [("lobby", True), ("front", True)]
    relays.close()


async def test_a_pulse_that_cannot_release_is_logged_and_stays_on(
    sim: SimulatedLines, caplog: pytest.LogCaptureFixture
) -> None:
    relays = GpioRelays(sim, {"front": LineSpec("GPIO17"), "lobby": LineSpec("GPIO27")})
    relays.start()
    recorder = Recorder(relays)
    relays.pulse("front", PULSE_S)
    sim.fail("GPIO17")

    with caplog.at_level(logging.ERROR, logger="drivers.gpio_relays"):
        relays.pulse("lobby", LONG_PULSE_S)  # outlives front's pulse
        await recorder.wait_for("lobby", False)

    assert "Relay front did not release" in caplog.text
    assert relays.is_on("front")
    sim.heal("GPIO17")
    relays.close()


def test_close_with_a_failing_line_still_releases_the_others(
    sim: SimulatedLines, caplog: pytest.LogCaptureFixture
) -> None:
    relays = GpioRelays(sim, {"front": LineSpec("GPIO17"), "lobby": LineSpec("GPIO27")})
    relays.start()
    relays.set("front", True)
    relays.set("lobby", True)
    sim.fail("GPIO17")

    with caplog.at_level(logging.ERROR, logger="drivers.gpio_relays"):
        relays.close()

    assert "Relay front may not be at rest" in caplog.text
    assert sim.level("GPIO27") == 0
    assert sim.level("GPIO17") == 1
    assert not sim.held("GPIO17")
    assert relays.state is GpioState.CLOSED


def test_a_pulse_needs_a_running_loop(relays: GpioRelays) -> None:
    with pytest.raises(RuntimeError):
        relays.pulse("front", 1.0)

    assert not relays.is_on("front")


def test_a_relays_bank_starts_once(sim: SimulatedLines) -> None:
    relays = GpioRelays(sim, {"front": LineSpec("GPIO17")})
    relays.start()

    with pytest.raises(GpioError, match="running, not idle"):
        relays.start()
    relays.close()
    with pytest.raises(GpioError, match="closed, not idle"):
        relays.start()


def test_driving_before_start_is_an_error(sim: SimulatedLines) -> None:
    relays = GpioRelays(sim, {"front": LineSpec("GPIO17")})

    with pytest.raises(GpioError, match="idle, not running"):
        relays.set("front", True)
    assert sim.writes == []


def test_an_unknown_channel_is_an_error(relays: GpioRelays) -> None:
    with pytest.raises(GpioError, match="no GPIO relay channel 'garage'; configured: front, lobby"):
        relays.set("garage", True)
    with pytest.raises(GpioError, match="garage"):
        relays.is_on("garage")


def test_two_channels_on_one_line_are_refused(sim: SimulatedLines) -> None:
    with pytest.raises(GpioError, match="'front' and 'lobby' both use GPIO line GPIO17"):
        GpioRelays(sim, {"front": LineSpec("GPIO17"), "lobby": LineSpec("GPIO17")})


# -- Configuration and backends -----------------------------------------------------------------


def test_the_config_defaults_and_is_frozen() -> None:
    channels = {"front": LineSpec("GPIO17")}
    config = GpioConfig(channels)
    channels["lobby"] = LineSpec("GPIO27")

    assert config.chip == DEFAULT_CHIP == "/dev/gpiochip0"
    assert config.consumer == CONSUMER == "luckey-gateway"
    assert dict(config.channels) == {"front": LineSpec("GPIO17")}
    assert not LineSpec("GPIO17").active_low


def test_the_simulated_factory_knows_the_header_and_the_configured_names() -> None:
    config = GpioConfig({"front": LineSpec("GPIO17"), "garage": LineSpec("RELAY_2", True)})
    relays = make_gpio_relays(config, simulated=True)

    with relays:
        relays.set("garage", True)
        assert relays.read("garage")
        assert relays.is_on("garage")
    assert relays.state is GpioState.CLOSED
    assert len(PI_HEADER_LINES) == 28


def test_libgpiod_lines_need_gpiod_only_when_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # as if it were not installed
    lines = LibgpiodLines("/dev/gpiochip0")
    relays = make_gpio_relays(GpioConfig({"front": LineSpec("GPIO17")}))

    assert lines.chip == "/dev/gpiochip0"
    with pytest.raises(GpiodUnavailableError, match=r"pip install 'gpiod>=2\.1'"):
        lines.request({"GPIO17": False})
    with pytest.raises(GpiodUnavailableError, match="gpiod package"):
        relays.start()
    assert relays.state is GpioState.IDLE


def test_libgpiod_lines_name_a_missing_chip() -> None:
    pytest.importorskip("gpiod", reason="the gpiod package is not installed")
    relays = GpioRelays(LibgpiodLines("/dev/no-such-gpiochip"), {"front": LineSpec("GPIO17")})

    with pytest.raises(GpioError, match="cannot open GPIO chip /dev/no-such-gpiochip") as caught:
        relays.start()

    assert caught.value.lines == ("GPIO17",)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_libgpiod_lines_refuse_the_1_x_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    old = types.ModuleType("gpiod")
    old.__version__ = "1.6.3"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpiod", old)

    with pytest.raises(GpiodUnavailableError, match=r"libgpiod 2\.x bindings, found gpiod 1\.6\.3"):
        LibgpiodLines().request({"GPIO17": False})


def test_unknown_line_error_lists_the_names() -> None:
    error = UnknownLineError("/dev/gpiochip0", ["RELAY9"], ["GPIO2", "GPIO3"])

    assert (
        str(error)
        == "GPIO chip /dev/gpiochip0 has no line named RELAY9; its lines are: GPIO2, GPIO3"
    )
    assert error.lines == ("RELAY9",)
    assert isinstance(error, GpioError)
    assert "(no named lines)" in str(UnknownLineError("/dev/gpiochip9", ["X"], []))


# -- rest levels and unknown channels ---------------------------------------------------------------


def test_a_line_that_rests_energised_is_energised_at_start_and_left_so_at_close(
    sim: SimulatedLines,
) -> None:
    relays = GpioRelays(sim, {"front": LineSpec("GPIO17"), "garage": LineSpec("GPIO27", rest=True)})

    relays.start()
    assert relays.is_on("garage")
    assert sim.level("GPIO27") == 1
    assert sim.level("GPIO17") == 0
    relays.set("garage", False)  # unlocked for a while
    relays.set("front", True)

    relays.close()

    assert sim.level("GPIO27") == 1  # back at rest: the maglock stays locked
    assert sim.level("GPIO17") == 0
    assert not sim.held("GPIO27")


async def test_a_door_without_a_line_is_an_unknown_channel_not_a_crash(sim: SimulatedLines) -> None:
    relays = GpioRelays(sim, {"front": LineSpec("GPIO17")})
    relays.start()
    try:
        with pytest.raises(UnknownChannelError, match="no GPIO relay channel 'lobby'") as info:
            relays.is_on("lobby")
        assert isinstance(info.value, LookupError)  # "not a door this gateway drives"
        with pytest.raises(CommandFailed, match="no GPIO relay channel 'lobby'"):
            await relays.drive("lobby", True)
        await relays.drive("front", True)
        assert sim.level("GPIO17") == 1
    finally:
        relays.close()
