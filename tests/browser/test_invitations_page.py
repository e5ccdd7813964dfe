"""The invitations page in a real headless Chromium, against the real daemon.

The admin invites a guest (a refused form first), sees the code once, a phone redeems it over
HTTPS, the list counts the phone, and deleting the invitation empties it.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.request

import pytest

from tests.browser.test_web_app import (  # noqa: F401 - the fixtures
    PASSWORD,
    SETUP_CODE,
    Daemon,
    browser,
    daemon,
    fill,
    screenshot,
    wait,
)
from tests.gateway.sitebuilder import phone_key

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402

CODE = re.compile(r"[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}")


def redeem(base: str, code: str, key: str) -> tuple[int, dict[str, object]]:
    """A phone redeeming ``code`` over HTTPS (the gateway's own self-signed certificate)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        f"{base}/api/invitations/redeem",
        data=json.dumps({"code": code, "public_key": key}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_the_admin_invites_a_guest_whose_phone_redeems_the_code(
    daemon: tuple[Daemon, str],  # noqa: F811
    browser: WebDriver,  # noqa: F811
) -> None:
    running, base = daemon
    setup = running.wait_for_log(SETUP_CODE).group(1)
    browser.get(f"{base}/invitations")
    wait(browser).until(ec.visibility_of_element_located((By.ID, "setup")))
    fill(browser, "setup_code", setup)
    fill(browser, "setup_username", "installer")
    fill(browser, "setup_password", PASSWORD)
    browser.find_element(By.ID, "setup_submit").click()
    wait(browser).until(ec.url_to_be(f"{base}/invitations"))
    front = wait(browser).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, '#f-doors input[value="front"]'))
    )
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "list"), "No invitations yet"))

    # No door chosen: refused at the doors.
    fill(browser, "f-name", "Grace Hopper")
    browser.find_element(By.ID, "create").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "err-doors"), "at least one door"))

    front.click()
    fill(browser, "f-max_devices", "2")
    browser.find_element(By.ID, "create").click()
    wait(browser).until(ec.visibility_of_element_located((By.ID, "code-box")))
    code = browser.find_element(By.ID, "code").text
    assert CODE.fullmatch(code), code
    assert browser.find_element(By.ID, "code-guest").text == "Grace Hopper"
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "list"), "0 / 2"))
    assert "Front door" in browser.find_element(By.ID, "list").text
    screenshot(browser, "invitation-created")

    status, redeemed = redeem(base, code, phone_key(5))
    assert status == 200
    assert redeemed["doors"] == [{"id": "front", "name": "Front door"}]

    # Shown once: a fresh visit lists the phone, never the code.
    browser.get(f"{base}/invitations")
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "list"), "1 / 2"))
    assert code not in browser.page_source
    assert browser.find_element(By.ID, "code-box").get_attribute("hidden") is not None

    browser.find_element(By.CSS_SELECTOR, "#list button").click()
    wait(browser).until(ec.alert_is_present()).accept()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "list"), "No invitations yet"))
    screenshot(browser, "invitation-deleted")
