"""The web app in a real headless Chromium, against the real daemon on virtual door boards.

An installer's first visit: the admin account made with the setup code the daemon logged,
a door mapped, the self-test pulsing its relay and a card presented at it. Screenshots are
kept in ``test-artifacts/browser/`` (the folder CI keeps).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import config_data, pick_free_port, toml_text
from tests.gateway.test_provisioning import EXPIRED, VALID, FakeClaimCloud, cloud  # noqa: F401

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
PASSWORD = "a long installer passphrase"
SETUP_CODE = re.compile(r"setup code ([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="Debian's chromium and chromium-driver are needed (scripts/bootstrap.sh installs them)",
)


class Daemon:
    """``luckey-gateway run`` in a subprocess, its log lines collected."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def wait_for_log(self, pattern: re.Pattern[str], timeout_s: float = 30.0) -> re.Match[str]:
        """The first log match of ``pattern``; fails the test if the daemon dies or stays silent."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = pattern.search(self.log.read_text(errors="replace"))
            if found:
                return found
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            time.sleep(0.1)
        pytest.fail(f"no {pattern.pattern!r} in the daemon's log:\n{self.log.read_text()}")

    def stop(self) -> None:
        """SIGTERM, then wait (kill after 20 s)."""
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._file.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, str]]:
    """A daemon on virtual boards with the demo site, its web app on HTTPS (not loopback)."""
    port = pick_free_port()
    data = config_data(
        tmp_path / "state",
        port,
        web={"host": "0.0.0.0", "allow_remote": True},
        hardware={"backend": "virtual"},
    )
    data["gateway"]["log_format"] = "text"
    config = tmp_path / "config.toml"
    config.write_text(toml_text(data))
    running = Daemon(config, tmp_path / "daemon.log")
    try:
        running.wait_for_log(re.compile(r"web app on https://"))
        yield running, f"https://127.0.0.1:{port}"
    finally:
        running.stop()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium through Debian's chromedriver (nothing downloaded)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    # The gateway's certificate is self-signed, made on the device: the installer accepts it.
    options.accept_insecure_certs = True
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    )
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, timeout_s: float = 15.0) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, timeout_s)


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    return path


def fill(driver: WebDriver, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def test_an_installer_creates_the_admin_maps_a_door_runs_the_self_test_and_claims(
    daemon: tuple[Daemon, str],
    browser: WebDriver,
    cloud: FakeClaimCloud,  # noqa: F811
) -> None:
    running, base = daemon
    code = running.wait_for_log(SETUP_CODE).group(1)

    # First visit: the dashboard sends us to the login page, which offers the admin setup.
    browser.get(f"{base}/")
    wait(browser).until(ec.visibility_of_element_located((By.ID, "setup")))
    assert "/login" in browser.current_url
    fill(browser, "setup_code", "WRONG-CODE-0000")
    fill(browser, "setup_username", "installer")
    fill(browser, "setup_password", PASSWORD)
    browser.find_element(By.ID, "setup_submit").click()
    wait(browser).until(
        ec.text_to_be_present_in_element((By.ID, "setup_error"), "wrong setup code")
    )
    fill(browser, "setup_code", code)
    browser.find_element(By.ID, "setup_submit").click()
    wait(browser).until(ec.url_to_be(f"{base}/"))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "doors"), "Front door"))
    screenshot(browser, "dashboard")

    # Door mapping: the front door's held-open threshold; a bad value is refused at its field.
    browser.get(f"{base}/doors")
    row = wait(browser).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, '#door-list [data-door="front"]'))
    )
    row.click()
    wait(browser).until(ec.visibility_of_element_located((By.ID, "door-form")))
    fill(browser, "f-held_open_s", "5")
    browser.find_element(By.ID, "save").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "err-held_open_s"), "30"))
    fill(browser, "f-held_open_s", "90")
    browser.find_element(By.ID, "save").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "notice"), "saved"))
    screenshot(browser, "door-mapping")
    running.wait_for_log(re.compile(r"restarted with the new settings"))
    settings = json.loads((Path(running.log).parent / "state" / "settings.json").read_text())
    assert settings["doors"]["front"]["held_open_s"] == 90

    # Self-test: pulse the relay and watch the lock; present a card and see the decision.
    browser.get(f"{base}/selftest")
    select = wait(browser).until(ec.presence_of_element_located((By.ID, "door")))
    wait(browser).until(lambda d: len(Select(d.find_element(By.ID, "door")).options) > 0)
    Select(select).select_by_value("front")
    browser.find_element(By.ID, "pulse").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "lock-state"), "unlocked"))
    fill(browser, "present-credential", "nfc_uid:04A1B2C3D4E5F6")
    browser.find_element(By.ID, "present").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "present-result"), "Ada"))
    try:
        wait(browser).until(ec.text_to_be_present_in_element((By.ID, "decisions"), "granted"))
    finally:
        screenshot(browser, "self-test")

    # The setup wizard: the clock check, then claiming the gateway for the cloud.
    browser.get(f"{base}/setup")
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "site-tz"), "Europe/Rome"))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "skew"), "The clocks agree"))
    assert "Not claimed yet" in browser.find_element(By.ID, "claim-state").text
    fill(browser, "claim-url", cloud.url)
    fill(browser, "claim-code", EXPIRED)
    browser.find_element(By.ID, "claim").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "claim-code-error"), "expired"))
    fill(browser, "claim-code", VALID)
    browser.find_element(By.ID, "claim").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "claim-state"), "Claimed as gw-1"))
    screenshot(browser, "setup-wizard")
    identity = Path(running.log).parent / "state" / "cloud" / "identity.json"
    assert json.loads(identity.read_text())["gateway_id"] == "gw-1"
