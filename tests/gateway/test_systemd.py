"""The service under systemd: the unit passes systemd's own checks, the daemon speaks the notify
protocol (ready, watchdog fed from its loop, stopping), and the install script stages it."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.sd_notify import Notifier
from tests.conftest import config_data, pick_free_port, toml_text

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "luckey-gateway.service"
LUCKEY = str(Path(sys.executable).with_name("luckey-gateway"))
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def rendered_unit(directory: Path) -> Path:
    """The unit as installed, with this checkout's executable where /opt would have it."""
    text = UNIT.read_text().replace("/opt/luckey-gateway/.venv/bin/luckey-gateway", LUCKEY)
    path = directory / "luckey-gateway.service"
    path.write_text(text)
    return path


@needs_analyze
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "verify", str(rendered_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@needs_analyze
def test_the_unit_is_rated_at_most_2_0_exposed(tmp_path: Path) -> None:
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(rendered_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0


def test_the_unit_asks_for_notify_and_a_watchdog() -> None:
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in _settings(UNIT)}
    assert lines["Type"] == "notify"
    assert lines["NotifyAccess"] == "main"
    assert int(lines["WatchdogSec"]) > 0
    assert lines["Restart"] == "on-failure"
    assert lines["User"] == "luckey"
    assert lines["StateDirectory"] == lines["ConfigurationDirectory"] == "luckey-gateway"


def _settings(path: Path) -> list[str]:
    return [
        line for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")
    ]


# --- the notify protocol -----------------------------------------------------------------------


@dataclass
class Listener:
    """A bound notify socket recording each datagram with its arrival time."""

    path: Path
    messages: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, line: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(line in text.splitlines() for _, text in self.messages):
            assert time.monotonic() < deadline, f"no {line!r} in {self.messages}"
            time.sleep(0.02)

    def times_of(self, line: str) -> list[float]:
        return [at for at, text in self.messages if line in text.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    # A short path: unix socket paths are limited to 107 bytes, and tmp_path can be longer.
    directory = Path(f"/tmp/sdn-{os.getpid()}-{time.monotonic_ns()}")
    directory.mkdir()
    sock = Listener(directory / "notify")
    yield sock
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_the_daemon_says_ready_feeds_the_watchdog_and_says_stopping(
    tmp_path: Path, listener: Listener
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(config_data(tmp_path / "state", pick_free_port())))
    env = os.environ | {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [LUCKEY, "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        listener.wait_for("READY=1")
        ready = next(text for _, text in listener.messages if "READY=1" in text)
        doors = len(load_config(config).doors) or 4  # the demo site's four doors
        assert f"STATUS=serving {doors} doors" in ready
        time.sleep(1.0)
        pings = listener.times_of("WATCHDOG=1")
        assert len(pings) >= 3  # every 0.2 s: half the 0.4 s systemd would wait
        gaps = sorted(b - a for a, b in itertools.pairwise(pings))
        assert gaps[len(gaps) // 2] < 0.35  # about every 0.2 s, well inside 0.4
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        listener.wait_for("STOPPING=1", timeout_s=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


async def test_a_hung_event_loop_stops_feeding_the_watchdog(listener: Listener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "100000"})
    notifier.ready("testing")
    await asyncio.sleep(0.3)
    time.sleep(0.6)  # noqa: ASYNC251 - the loop hangs on purpose: the watchdog goes unfed
    await asyncio.sleep(0.3)
    await notifier.close()
    await asyncio.sleep(0.1)
    pings = listener.times_of("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= 0.55  # systemd, waiting 0.1 s, would have restarted it
    assert sorted(gaps)[len(gaps) // 2] < 0.3  # fed steadily otherwise (every 0.05 s)


def test_without_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.send(ready="1") is False
    assert notifier.watchdog_s is None


def test_a_watchdog_meant_for_another_process_is_ignored() -> None:
    other = str(os.getpid() + 1)
    notifier = Notifier(
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": other}
    )
    assert notifier.watchdog_s is None
    mine = Notifier(
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_s == 1.0


def test_an_abstract_notify_socket_is_reached() -> None:
    name = f"luckey-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send(status="hello") is True
        assert sock.recv(100) == b"STATUS=hello"


def test_a_vanished_notify_socket_is_not_fatal(tmp_path: Path) -> None:
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).send(ready="1") is False


# --- the install script ------------------------------------------------------------------------


def stage(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "systemd" / "install.sh"), "--root", str(root), "--no-venv"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_install_script_stages_code_config_and_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = stage(root)
    assert done.returncode == 0, done.stderr
    prefix = root / "opt" / "luckey-gateway"
    assert (prefix / "gateway" / "app.py").is_file()
    assert (prefix / "pyproject.toml").is_file()
    assert not (prefix / ".venv").exists()
    assert not (prefix / ".git").exists()
    unit = root / "etc" / "systemd" / "system" / "luckey-gateway.service"
    assert unit.read_text() == UNIT.read_text()
    config = root / "etc" / "luckey-gateway" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o750
    assert load_config(config).gateway.state_dir == Path("/var/lib/luckey-gateway")

    # Run again (an upgrade): the operator's config is kept.
    config.write_text(config.read_text().replace("port = 8080", "port = 8090"))
    assert stage(root).returncode == 0
    assert load_config(config).web.port == 8090


def test_the_install_script_refuses_unknown_options(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "systemd" / "install.sh"), "--frobnicate"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown option --frobnicate" in done.stderr
