"""Tests for gateway.cli: the ``luckey-gateway`` command, run as a real subprocess."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import load_config
from gateway.model import DoorMode
from tests.conftest import (
    ADA,
    BOB,
    CARLA,
    UNKNOWN,
    config_data,
    outbox_types,
    pick_free_port,
    read_outbox,
    toml_text,
)

LUCKEY = str(Path(sys.executable).with_name("luckey-gateway"))


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``luckey-gateway *args`` to completion."""
    return subprocess.run(
        [LUCKEY, *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )


def write_config(directory: Path, **sections: dict[str, Any]) -> Path:
    """A config file in ``directory`` with its state in ``directory/state`` on a free port."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.toml"
    path.write_text(toml_text(config_data(directory / "state", pick_free_port(), **sections)))
    return path


async def start_and_stop(config_path: Path, lockdown: str | None = None) -> None:
    """Start a gateway once (seeding the demo site), optionally lock a door down, stop it."""
    gw = Gateway(load_config(config_path))
    await gw.start()
    try:
        if lockdown is not None:
            await gw.doors.set_mode(lockdown, DoorMode.LOCKDOWN, source="test")
    finally:
        await gw.stop()


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose state dir holds the demo site, written by a gateway started once."""
    path = write_config(tmp_path_factory.mktemp("demo"))
    asyncio.run(start_and_stop(path))
    return path


# --- check-config ---------------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path) -> None:
    path = write_config(tmp_path, web={"port": 8123})

    result = cli("check-config", "--config", path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"ok: {path}"
    assert "  web.port = 8123" in result.stdout
    assert f"  gateway.state_dir = {tmp_path / 'state'}" in result.stdout


def test_check_config_json(tmp_path: Path) -> None:
    path = write_config(tmp_path, events={"max_rows": 5000})

    result = cli("check-config", "--config", path, "--json")

    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["ok"] is True
    assert body["source"] == str(path)
    assert body["events"] == {"max_rows": 5000, "batch_max": 256}
    assert body["gateway"]["state_dir"] == str(tmp_path / "state")
    assert body["demo"] == {"seed": True}


def test_check_config_without_file_uses_defaults() -> None:
    result = cli("check-config")

    assert result.returncode == 0
    assert "defaults (no file)" in result.stdout


def test_check_config_names_every_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[gateway]\nlog_level = "loud"\n'
        '[web]\nport = 70000\nhost = "localhost"\n'
        "[events]\nbatch_max = 0\n"
        "[bogus]\nx = 1\n"
    )

    result = cli("check-config", "--config", path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    for key_path in ("gateway.log_level", "web.port", "web.host", "events.batch_max", "bogus"):
        assert key_path in result.stderr, key_path
    assert '"loud"' in result.stderr
    assert "70000" in result.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = cli("check-config", "--config", tmp_path / "nope.toml")

    assert result.returncode == 2
    assert "nope.toml" in result.stderr
    assert "Traceback" not in result.stderr


# --- decide ---------------------------------------------------------------------------------


def test_decide_ada_at_the_front_door(demo_config: Path) -> None:
    result = cli(
        "decide", "--config", demo_config, "--door", "front", "--credential", f"nfc_uid:{ADA}"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('GRANTED at "Front door" (granted)')
    assert "Ada Lovelace" in result.stdout


@pytest.mark.parametrize(
    ("at", "status", "reason"),
    [
        ("2026-12-01T10:00:00+01:00", 0, "granted"),  # Tuesday 10:00 in Rome
        ("2026-12-01T21:00:00+01:00", 1, "outside_schedule"),  # Tuesday 21:00
        ("2026-12-05T10:00:00+01:00", 1, "outside_schedule"),  # Saturday
        ("2026-12-25T10:00:00+01:00", 1, "holiday"),  # Christmas, a Friday
    ],
)
def test_decide_bob_follows_business_hours(
    demo_config: Path, at: str, status: int, reason: str
) -> None:
    result = cli(
        "decide",
        "--config",
        demo_config,
        "--door",
        "front",
        "--credential",
        f"nfc_uid:{BOB}",
        "--at",
        at,
        "--json",
    )

    assert result.returncode == status, result.stderr
    body = json.loads(result.stdout)
    assert body["decision"]["reason"] == reason
    assert body["decision"]["user"] == "bob"
    assert body["decision"]["at"] == at
    assert body["explanation"].startswith("GRANTED" if status == 0 else "DENIED")


def test_decide_explains_outside_schedule(demo_config: Path) -> None:
    result = cli(
        "decide",
        "--config",
        demo_config,
        "--door",
        "front",
        "--credential",
        f"nfc_uid:{BOB}",
        "--at",
        "2026-12-01T21:00:00+01:00",
    )

    assert result.returncode == 1
    assert "outside_schedule" in result.stdout
    assert "mon,tue,wed,thu,fri 08:00-20:00" in result.stdout
    assert "Tue 2026-12-01 21:00 Europe/Rome" in result.stdout


@pytest.mark.parametrize(
    ("door", "value", "reason"),
    [
        ("front", CARLA, "user_disabled"),
        ("server-room", ADA, "assurance_too_low"),
        ("front", UNKNOWN, "unknown_credential"),
        ("front", "04105700000001", "credential_revoked"),
    ],
)
def test_decide_denials(demo_config: Path, door: str, value: str, reason: str) -> None:
    result = cli(
        "decide", "--config", demo_config, "--door", door, "--credential", f"nfc_uid:{value}"
    )

    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("DENIED")
    assert f"({reason})" in result.stdout


def test_decide_unknown_door_lists_the_doors(demo_config: Path) -> None:
    result = cli(
        "decide", "--config", demo_config, "--door", "garage", "--credential", f"nfc_uid:{ADA}"
    )

    assert result.returncode == 2
    assert "garage" in result.stderr
    assert "front, lobby, office-3, server-room" in result.stderr


@pytest.mark.parametrize(
    "credential",
    [
        f"nfc_uid:{ADA}99",  # 8 bytes
        f"nfc_uid:{ADA[:-1]}Z",  # not hex
        ADA,  # no kind
        f"magic:{ADA}",  # unknown kind
        f"{ADA}:{ADA}",  # an identifier as the kind
    ],
)
def test_decide_malformed_credential_is_not_echoed(demo_config: Path, credential: str) -> None:
    result = cli("decide", "--config", demo_config, "--door", "front", "--credential", credential)

    assert result.returncode == 2
    assert result.stderr.startswith("luckey-gateway: ")
    assert ADA not in result.stderr
    assert ADA not in result.stdout


def test_decide_naive_at_is_refused(demo_config: Path) -> None:
    result = cli(
        "decide",
        "--config",
        demo_config,
        "--door",
        "front",
        "--credential",
        f"nfc_uid:{ADA}",
        "--at",
        "2026-12-01T10:00:00",
    )

    assert result.returncode == 2
    assert "UTC offset" in result.stderr


def test_decide_without_a_cache(tmp_path: Path) -> None:
    path = write_config(tmp_path)

    result = cli("decide", "--config", path, "--door", "front", "--credential", f"nfc_uid:{ADA}")

    assert result.returncode == 2
    assert "no cache" in result.stderr
    assert "luckey-gateway run" in result.stderr


def test_decide_sees_a_persisted_lockdown(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    asyncio.run(start_and_stop(path, lockdown="front"))

    result = cli("decide", "--config", path, "--door", "front", "--credential", f"nfc_uid:{ADA}")

    assert result.returncode == 1
    assert "(door_lockdown)" in result.stdout


def test_decide_sees_the_lobby_unlock_schedule(demo_config: Path) -> None:
    result = cli(
        "decide",
        "--config",
        demo_config,
        "--door",
        "lobby",
        "--credential",
        f"nfc_uid:{ADA}",
        "--at",
        "2026-12-01T10:00:00+01:00",
        "--json",
    )

    assert result.returncode == 0
    assert json.loads(result.stdout)["decision"]["mode"] == "unlocked"


# --- users list -----------------------------------------------------------------------------


def test_users_list_json(demo_config: Path) -> None:
    result = cli("users", "list", "--config", demo_config, "--json")

    assert result.returncode == 0, result.stderr
    users = json.loads(result.stdout)
    assert [u["id"] for u in users] == ["ada", "bob", "carla", "dan", "eve"]
    tags = {u["id"]: u["tags"] for u in users}
    assert tags == {
        "ada": ["it", "staff"],
        "bob": ["plan-hotdesk"],
        "carla": ["plan-office"],
        "dan": ["plan-hotdesk"],
        "eve": ["plan-hotdesk"],
    }
    assert {u["id"]: u["status"] for u in users}["dan"] == "former"


def test_users_list_text(demo_config: Path) -> None:
    result = cli("users", "list", "--config", demo_config)

    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].split()[0] == "ada"
    assert lines[0].endswith("it,staff")


def test_version() -> None:
    result = cli("--version")

    assert result.returncode == 0
    assert result.stdout.startswith("luckey-gateway ")


# --- run, present, SIGTERM ------------------------------------------------------------------


@dataclass
class Running:
    """A ``luckey-gateway run`` subprocess and where it keeps things."""

    process: subprocess.Popen[bytes]
    config: Path
    state: Path
    log: Path
    port: int


def health(port: int) -> dict[str, Any] | None:
    """The gateway's /api/health answer, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as answer:
            body: dict[str, Any] = json.load(answer)
            return body
    except (urllib.error.URLError, ConnectionError):
        return None


def start_run(directory: Path, **sections: dict[str, Any]) -> Running:
    """Start ``luckey-gateway run`` and wait (bounded) until its web API answers."""
    config = write_config(directory, **sections)
    port = load_config(config).web.port
    log = directory / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen([LUCKEY, "run", "--config", str(config)], stdout=out, stderr=out)
    running = Running(process, config, directory / "state", log, port)
    deadline = time.monotonic() + 20
    while (body := health(port)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_run(running)
            pytest.fail(f"gateway did not come up:\n{log.read_text()}")
        time.sleep(0.05)
    assert body["status"] == "ok"
    return running


def stop_run(running: Running) -> int:
    """SIGTERM the gateway if it still runs; its exit status."""
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
    try:
        return running.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait(timeout=10)
        raise


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One ``luckey-gateway run`` shared by the tests that only present credentials to it."""
    gateway = start_run(tmp_path_factory.mktemp("running"))
    yield gateway
    stop_run(gateway)


def test_present_to_a_running_gateway(running: Running) -> None:
    granted = cli(
        "present", "--config", running.config, "--door", "front", "--credential", f"nfc_uid:{ADA}"
    )
    denied = cli(
        "present",
        "--config",
        running.config,
        "--door",
        "server-room",
        "--credential",
        f"nfc_uid:{ADA}",
        "--json",
    )

    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.startswith('GRANTED at "Front door"')
    assert denied.returncode == 1
    assert json.loads(denied.stdout)["decision"]["reason"] == "assurance_too_low"


def test_present_at_an_unknown_door(running: Running) -> None:
    result = cli(
        "present", "--config", running.config, "--door", "garage", "--credential", f"nfc_uid:{ADA}"
    )

    assert result.returncode == 2
    assert result.stderr == "luckey-gateway: no door 'garage'\n"


def test_present_without_a_gateway(tmp_path: Path) -> None:
    path = write_config(tmp_path)

    result = cli("present", "--config", path, "--door", "front", "--credential", f"nfc_uid:{ADA}")

    assert result.returncode == 2
    assert "no gateway answering" in result.stderr
    assert "Traceback" not in result.stderr


def test_present_door_with_a_slash_is_a_clean_error(running: Running) -> None:
    result = cli(
        "present", "--config", running.config, "--door", "a/b", "--credential", f"nfc_uid:{ADA}"
    )

    assert "Traceback" not in result.stderr
    assert result.returncode == 2


def test_present_door_with_a_space_is_a_clean_error(running: Running) -> None:
    result = cli(
        "present",
        "--config",
        running.config,
        "--door",
        "front door",
        "--credential",
        f"nfc_uid:{ADA}",
    )

    assert "Traceback" not in result.stderr
    assert result.returncode == 2


def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    gateway = start_run(tmp_path)
    try:
        granted = cli(
            "present",
            "--config",
            gateway.config,
            "--door",
            "front",
            "--credential",
            f"nfc_uid:{ADA}",
        )
        denied = cli(
            "present",
            "--config",
            gateway.config,
            "--door",
            "front",
            "--credential",
            f"nfc_uid:{UNKNOWN}",
        )
        assert granted.returncode == 0, granted.stderr
        assert denied.returncode == 1, denied.stderr
    finally:
        started = time.monotonic()
        status = stop_run(gateway)

    assert status == 0, gateway.log.read_text()
    assert time.monotonic() - started < 5
    types = outbox_types(gateway.state)
    assert types[0] == "cache.updated"
    assert types[-1] == "gateway.stopped"
    assert {"gateway.started", "access.granted", "access.denied"} <= set(types)
    reasons = [data["reason"] for _, kind, data in read_outbox(gateway.state) if "access" in kind]
    assert reasons == ["granted", "unknown_credential"]
    # The daemon logs JSON lines on stdout, one object each.
    lines = [json.loads(line) for line in gateway.log.read_text().splitlines() if line.strip()]
    assert lines
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert lines[-1]["msg"] == "stopped"
    assert ADA not in gateway.log.read_text()


def test_run_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    gateway = start_run(tmp_path)
    gateway.process.send_signal(signal.SIGINT)

    assert stop_run(gateway) == 0
    assert outbox_types(gateway.state)[-1] == "gateway.stopped"


def test_run_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[web]\nport = 0\n")

    result = cli("run", "--config", path)

    assert result.returncode == 2
    assert "web.port" in result.stderr


def test_run_on_a_port_in_use_is_a_clean_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, web={"port": port})
        result = cli("run", "--config", config)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "[web] port" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_on_the_embedded_virtual_boards(tmp_path: Path) -> None:
    gateway = start_run(tmp_path, hardware={"backend": "virtual"})
    try:
        granted = cli(
            "present",
            "--config",
            gateway.config,
            "--door",
            "front",
            "--credential",
            f"nfc_uid:{ADA}",
        )
        assert granted.returncode == 0, granted.stderr
        # Ada's mechatronic key, answering the virtual board's challenge for real: over the
        # bus, verified under this gateway's site key, high enough for the server room.
        key = cli(
            "present",
            "--config",
            gateway.config,
            "--door",
            "server-room",
            "--credential",
            "mech_key:A1A2A3A4A5A6A7A8",
        )
        assert key.returncode == 0, key.stderr
        assert "GRANTED" in key.stdout
    finally:
        status = stop_run(gateway)

    assert status == 0, gateway.log.read_text()
    types = outbox_types(gateway.state)
    assert "board.online" in types
    decisions = [data for _, kind, data in read_outbox(gateway.state) if kind == "access.granted"]
    assert [d["credential"] for d in decisions] == ["card-ada", "key-ada"]
    assert decisions[1]["assurance"] == "high"
    assert types.index("board.online") < types.index("access.granted")
    # The board confirmed the unlock, then the gateway left the door locked on stop.
    assert "door.unlocked" in types
    assert types[-1] == "gateway.stopped"
    assert "door.relay_failed" not in types


@pytest.mark.skipif(
    importlib.util.find_spec("gpiod") is not None, reason="the gpiod package is installed"
)
def test_run_on_gpio_without_the_gpiod_package_is_a_clean_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
        f"[web]\nport = {pick_free_port()}\n"
        '[hardware]\nbackend = "gpio"\n'
        '[doors.front]\ngpio_line = "DOOR1_RELAY"\n'
    )

    result = cli("run", "--config", config)

    assert result.returncode == 2
    assert "cannot start: GPIO relays need the gpiod package" in result.stderr
    assert "Traceback" not in result.stderr


# --- status ---------------------------------------------------------------------------------


def test_status_shows_the_running_gateway(running: Running) -> None:
    done = cli("status", "--config", running.config)
    assert done.returncode == 0, done.stderr
    assert "site: Demo coworking (cache version" in done.stdout
    assert "cloud: not configured" in done.stdout
    assert "officernd: not activated" in done.stdout
    assert "door front: normal, locked" in done.stdout
    assert "ATTENTION" not in done.stdout

    as_json = cli("status", "--json", "--config", running.config)
    body = json.loads(as_json.stdout)
    assert body["problems"] == []
    assert {door["id"] for door in body["doors"]} == {"front", "lobby", "office-3", "server-room"}
    assert body["health"]["outbox"]["rows"] >= 1


def test_status_without_a_running_gateway_says_so(tmp_path: Path) -> None:
    done = cli("status", "--config", write_config(tmp_path))
    assert done.returncode == 2
    assert "no gateway answering" in done.stderr


def test_status_names_what_needs_attention() -> None:
    from gateway.cli import _degraded

    health = {
        "cloud": {"enabled": True, "online": False, "offline_s": 3725},
        "boards": [
            {"address": 2, "online": False, "reason": "no answer"},
            {"address": 1, "online": True},
        ],
        "officernd": {"activated": True, "state": "error"},
        "cache": {"needs_resync": False},
    }
    assert _degraded(health) == [
        "cloud link down for 1h02m",
        "board 2 offline (no answer)",
        "OfficeRnD sync failing (luckey-gateway officernd status)",
    ]


def test_diagnostics_are_saved_private(running: Running, tmp_path: Path) -> None:
    target = tmp_path / "bundle.zip"
    done = cli("diagnostics", "--output", target, "--config", running.config)
    assert done.returncode == 0, done.stderr
    assert f"saved {target}" in done.stdout
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with zipfile.ZipFile(target) as archive:
        assert "health.json" in archive.namelist()
