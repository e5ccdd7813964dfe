"""Run a virtual door board as its own process, for a gateway to connect to.

``pty``: on a new pseudo-terminal whose path is announced (the gateway opens that path as its
serial port). ``tcp://HOST:PORT``: on a TCP server, one fresh board per connection (the gateway
connects with a ``socket://HOST:PORT`` URL, as to a board behind ser2net).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from drivers.pty_pair import PtyPair
from drivers.virtual_board import BoardConfig, FdStream, TransportStream, VirtualBoard

_LOGGER = logging.getLogger(__name__)


class SimBoardError(ValueError):
    """A ``--port`` that names no place a virtual board can run on."""


def parse_port(port: str) -> tuple[str, str, int]:
    """``("pty", "", 0)`` or ``("tcp", host, port)``; SimBoardError names what is allowed."""
    if port == "pty":
        return "pty", "", 0
    if port.startswith("tcp://"):
        host, sep, number = port.removeprefix("tcp://").rpartition(":")
        if sep and host and number.isdigit() and int(number) < 65536:  # 0: any free port
            return "tcp", host.strip("[]"), int(number)
    raise SimBoardError(
        f"--port {port!r} is not allowed; use 'pty' or 'tcp://HOST:PORT' (e.g. tcp://127.0.0.1:7000)"
    )


async def run_sim_board(
    port: str, config: BoardConfig, *, announce: Callable[[str], None], stop: asyncio.Event
) -> None:
    """Serve a virtual board on ``port`` until ``stop`` is set; ``announce`` gets the URL to use."""
    kind, host, number = parse_port(port)
    if kind == "pty":
        with PtyPair() as pair:
            board = VirtualBoard(config)
            await board.start(FdStream(pair.master_fd))
            try:
                announce(pair.slave_path)
                await stop.wait()
            finally:
                await board.stop()
        return
    boards: set[VirtualBoard] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(stream: TransportStream) -> None:
        await stream.connected.wait()
        board = VirtualBoard(config)
        boards.add(board)
        await board.start(stream)
        _LOGGER.info("gateway connected to virtual board %d", config.address)

    def factory() -> TransportStream:
        stream = TransportStream()
        task = asyncio.create_task(serve(stream), name="sim-board-connection")
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return stream

    server = await asyncio.get_running_loop().create_server(factory, host, number)
    try:
        bound = server.sockets[0].getsockname()
        announce(f"socket://{host}:{bound[1]}")
        await stop.wait()
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for board in boards:
            with contextlib.suppress(Exception):
                await board.stop()
        await server.wait_closed()
