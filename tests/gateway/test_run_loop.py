"""The daemon's run loop: a restart the gateway asks for starts a fresh one on the new settings."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal

import pytest

from gateway.app import Gateway, run
from gateway.config import Config, DoorEntry
from tests.conftest import ConfigFactory


async def test_a_requested_restart_runs_the_reloaded_config_or_else_the_previous_one(
    gateway_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    first = gateway_config()
    second = dataclasses.replace(first, doors={"front": DoorEntry(held_open_s=60.0)})
    reloads: list[Config | Exception] = [second, ValueError("a broken settings file")]

    def reload() -> Config:
        outcome = reloads.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    started: asyncio.Queue[Gateway] = asyncio.Queue()
    task = asyncio.create_task(run(first, started=started.put_nowait, reload=reload))
    try:
        async with asyncio.timeout(20):
            one = await started.get()
            assert one.config is first
            one.request_restart("door front mapping saved")
            two = await started.get()
            assert two is not one
            assert two.config is second
            assert two.config.doors["front"].held_open_s == 60.0
            assert not one._started  # the first one was stopped before the second started
            assert two.admin is one.admin  # the installer stays logged in

            two.request_restart("again, with settings that do not load")
            three = await started.get()
            # The broken reload did not leave the doors dark: the previous config runs again.
            assert three.config is second
            assert "could not start; running with the previous ones" in caplog.text
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # run's own handler: a clean stop
        async with asyncio.timeout(20):
            await task
    assert not three._started


async def test_door_settings_that_cannot_start_are_set_aside_for_the_previous_ones(
    gateway_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    first = gateway_config()
    state_dir = first.gateway.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    good = '{"version": 1, "doors": {"front": {"held_open_s": 60.0}}}\n'
    bad = '{"version": 1, "doors": {"front": {"gpio_line": "NO-SUCH-LINE"}}}\n'
    (state_dir / "settings.previous.json").write_text(good)
    (state_dir / "settings.json").write_text(bad)
    # Settings that validate but cannot drive the doors: a GPIO chip this machine lacks.
    hardware = dataclasses.replace(first.hardware, backend="gpio", gpio_chip="/dev/no-such-chip")
    broken = dataclasses.replace(
        first, hardware=hardware, doors={"front": DoorEntry(gpio_line="NO-SUCH-LINE")}
    )
    started: asyncio.Queue[Gateway] = asyncio.Queue()
    task = asyncio.create_task(run(first, started=started.put_nowait, reload=lambda: broken))
    try:
        async with asyncio.timeout(20):
            one = await started.get()
            one.request_restart("door front mapping saved")
            two = await started.get()
        assert two.config is first  # the doors kept running on what they had
        assert (state_dir / "settings.json").read_text() == good  # and the next boot will too
        assert (state_dir / "settings.rejected.json").read_text() == bad
        assert not (state_dir / "settings.previous.json").exists()
        assert "set aside" in caplog.text
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(20):
            await task
