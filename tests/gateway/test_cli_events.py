"""``luckey-gateway events export``: the journal's CSV from the command line, daemon or not."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path

import aiohttp

from gateway.app import Gateway
from gateway.config import load_config
from tests.gateway.test_cli import LUCKEY, cli, write_config
from tests.gateway.test_web_journal import fill, rows

RANGE = ("--from", "2025-03-01", "--to", "2025-03-08")


def export_bytes(config: Path, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """Run ``events export`` and keep its output as bytes (CSV lines end in \\r\\n)."""
    return subprocess.run(
        [LUCKEY, "events", "export", "--config", str(config), *map(str, args)],
        capture_output=True,
        timeout=30,
        check=False,
    )


async def test_the_cli_writes_the_same_csv_as_the_web_app(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    gw = Gateway(load_config(config))
    await gw.start()
    try:
        await fill(gw, 300)  # a week of decisions from 1 March 2025 (site time 10:00)
        url = f"http://127.0.0.1:{gw.web.port}/api/events/export"
        params = {"from": "2025-03-01", "to": "2025-03-08", "type": "access.denied"}
        async with aiohttp.ClientSession() as http, http.get(url, params=params) as response:
            assert response.status == 200
            served = await response.read()
        # While the daemon runs: the CLI reads the journal beside it (WAL, read-only).
        running = await asyncio.to_thread(export_bytes, config, *RANGE, "--type", "access.denied")
    finally:
        await gw.stop()
    assert running.returncode == 0, running.stderr
    assert running.stdout == served
    assert len(rows(served.decode())) == 100
    assert rows(served.decode())[0]["user_name"] == "Ada Lovelace"  # names from the cache file

    # With the daemon stopped, into a file only its owner may read.
    output = tmp_path / "denied.csv"
    stopped = export_bytes(config, *RANGE, "--type", "access.denied", "--output", output)
    assert stopped.returncode == 0, stopped.stderr
    assert output.read_bytes() == served
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


async def test_door_and_timezone_options(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    gw = Gateway(load_config(config))
    await gw.start()
    try:
        await fill(gw, 4)
    finally:
        await gw.stop()
    done = export_bytes(config, *RANGE, "--door", "lobby", "--timezone", "America/New_York")
    assert done.returncode == 0, done.stderr
    lobby = rows(done.stdout.decode())
    assert [r["door"] for r in lobby] == ["lobby", "lobby"]
    assert lobby[0]["local_time"] == "2025-03-01T04:30:00-05:00"


def test_bad_input_names_the_option(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = cli("events", "export", "--config", config, "--from", "March", "--to", "2025-04-01")
    assert result.returncode == 2
    assert result.stderr.startswith("luckey-gateway: --from: 'from' 'March' is not a date")
    result = cli("events", "export", "--config", config, *RANGE, "--type", "door.ajar")
    assert result.returncode == 2
    assert "--type: 'type' 'door.ajar' is not an event type" in result.stderr
    result = cli("events", "export", "--config", config, *RANGE, "--timezone", "Mars/Olympus")
    assert result.returncode == 2
    assert "--timezone 'Mars/Olympus' is not an IANA timezone" in result.stderr


def test_without_a_journal_it_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    output = tmp_path / "out.csv"
    result = cli("events", "export", "--config", config, *RANGE, "--output", output)
    assert result.returncode == 2
    assert "no journal at" in result.stderr
    assert not output.exists()  # no empty file that looks like an export
