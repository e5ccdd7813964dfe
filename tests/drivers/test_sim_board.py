"""``luckey-gateway sim-board``: a virtual board in its own process, reached over a pty or TCP."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.serial_link import BoardLink
from drivers.sim_board import SimBoardError, parse_port
from firmware_protocol import RelayPulse, SafeState
from tests.drivers.test_serial_link import GatewaySide

LUCKEY = str(Path(sys.executable).with_name("luckey-gateway"))
READY_TIMEOUT_S = 15.0


@pytest.fixture
async def sim_board(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """Start ``sim-board --port <param>``; yields the URL it announced and the process."""
    process = await asyncio.create_subprocess_exec(
        LUCKEY, "sim-board", "--port", request.param, "--address", "5", "--doors", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            line = (await process.stdout.readline()).decode()
        assert "ready: connect the gateway to " in line, line
        yield line.rsplit(" ", 1)[1].strip(), process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(READY_TIMEOUT_S):
                await process.wait()


@pytest.mark.parametrize("sim_board", ["pty", "tcp://127.0.0.1:0"], indirect=True)
async def test_a_gateway_drives_a_sim_board_process(
    sim_board: tuple[str, asyncio.subprocess.Process],
) -> None:
    url, process = sim_board
    gw = GatewaySide()
    link = BoardLink(url)
    await gw.attach(link, 5)
    async with link:
        gw.start_polling()
        info = await gw.handshake((SafeState.FAIL_SECURE,))
        await gw.request(RelayPulse(0, 50))
        await gw.stop_polling()
    assert info.relay_count == 1
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(READY_TIMEOUT_S):
        assert await process.wait() == 0


@pytest.mark.parametrize(
    "port", ["com1", "tcp://nohost", "tcp://127.0.0.1:99999", "udp://1.2.3.4:5"]
)
def test_bad_ports_are_refused_with_what_is_allowed(port: str) -> None:
    with pytest.raises(SimBoardError, match="'pty' or 'tcp://HOST:PORT'"):
        parse_port(port)
    result = subprocess.run(
        [LUCKEY, "sim-board", "--port", port],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "use 'pty' or 'tcp://HOST:PORT'" in result.stderr


def test_a_bad_address_is_refused() -> None:
    result = subprocess.run(
        [LUCKEY, "sim-board", "--port", "pty", "--address", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--address 0 is not allowed; use 1 to 247" in result.stderr
