"""Tests for gateway.officernd.activation: the stored activation, and activating against the fake."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.config import OfficeRnDSection
from gateway.officernd import activation as activation_module
from gateway.officernd.activation import (
    ACTIVATION_FILE,
    CLIENT_SECRET_FILE,
    WEBHOOK_SECRET_FILE,
    Activation,
    ActivationError,
    activate,
    describe_failure,
    folder,
    load_activation,
    remove_activation,
    save_activation,
    save_webhook,
    scopes_for,
)
from gateway.officernd.client import (
    ALL_SCOPES,
    PLANS_READ,
    READ_SCOPES,
    SIGNIN,
    WEBHOOKS_CREATE,
    ApiError,
    BadCredentials,
    MissingScope,
    OrganizationNotFound,
    RateLimited,
    Unreachable,
)
from tests.conftest import pick_free_port
from tests.officernd.fake import FakeOfficeRnD

ORG = "acme-cowork"
CLIENT_ID = "app-client-7d41"
SECRET = "s3cr3t-client-value-9f8e7d"
HOOK_SECRET = "whsec-5a6b7c8d9e0f"
WHEN = datetime(2026, 12, 1, 14, 0, 0, 123456, tzinfo=UTC)


def sample(**changes: Any) -> Activation:
    values: dict[str, Any] = {
        "org": ORG,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "api_base": "https://app.officernd.com/api/v2",
        "identity_url": "https://identity.officernd.com/oauth/token",
        "activated_at": WHEN,
    }
    return Activation(**(values | changes))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOfficeRnD]:
    async with FakeOfficeRnD(org=ORG, client_id=CLIENT_ID, client_secret=SECRET) as server:
        yield server


async def activate_on(
    fake: FakeOfficeRnD, state_dir: Path, **changes: Any
) -> tuple[Activation, Any]:
    """``activate`` against ``fake`` with the right values unless ``changes`` say otherwise."""
    values: dict[str, Any] = {
        "org": ORG,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "api_base": fake.api_base,
        "identity_url": fake.identity_url,
        "clock": lambda: WHEN,
    }
    values |= changes
    return await activate(
        state_dir,
        values.pop("org"),
        values.pop("client_id"),
        values.pop("client_secret"),
        **values,
    )


# --- the store ------------------------------------------------------------------------------------


def test_round_trip_with_private_modes(tmp_path: Path) -> None:
    saved = sample()
    save_activation(tmp_path, saved)
    directory = folder(tmp_path)
    assert mode(directory) == 0o700
    assert mode(directory / ACTIVATION_FILE) == 0o600
    assert mode(directory / CLIENT_SECRET_FILE) == 0o600
    assert not (directory / WEBHOOK_SECRET_FILE).exists()
    assert load_activation(tmp_path) == saved
    data = json.loads((directory / ACTIVATION_FILE).read_text())
    assert data == {
        "org": ORG,
        "client_id": CLIENT_ID,
        "api_base": "https://app.officernd.com/api/v2",
        "identity_url": "https://identity.officernd.com/oauth/token",
        "activated_at": "2026-12-01T14:00:00.123456Z",
    }
    assert (directory / CLIENT_SECRET_FILE).read_text() == SECRET + "\n"
    assert sorted(p.name for p in directory.iterdir()) == [ACTIVATION_FILE, CLIENT_SECRET_FILE]


def test_webhook_is_recorded_and_forgotten(tmp_path: Path) -> None:
    save_activation(tmp_path, sample())
    updated = save_webhook(tmp_path, "66000000000000000000000a", HOOK_SECRET)
    loaded = load_activation(tmp_path)
    assert loaded == updated
    assert loaded is not None
    assert (loaded.webhook_id, loaded.webhook_secret) == ("66000000000000000000000a", HOOK_SECRET)
    assert mode(folder(tmp_path) / WEBHOOK_SECRET_FILE) == 0o600
    assert HOOK_SECRET not in (folder(tmp_path) / ACTIVATION_FILE).read_text()
    save_webhook(tmp_path, None, None)
    assert load_activation(tmp_path) == sample()
    assert not (folder(tmp_path) / WEBHOOK_SECRET_FILE).exists()


def test_webhook_needs_an_activation_and_both_values(tmp_path: Path) -> None:
    with pytest.raises(ActivationError, match="not activated"):
        save_webhook(tmp_path, "hook", HOOK_SECRET)
    save_activation(tmp_path, sample())
    with pytest.raises(ActivationError, match="both its id and its signing secret"):
        save_webhook(tmp_path, "hook", None)


def test_secrets_stay_out_of_repr() -> None:
    activation = sample(webhook_id="hook", webhook_secret=HOOK_SECRET)
    assert SECRET not in repr(activation)
    assert HOOK_SECRET not in repr(activation)
    assert CLIENT_ID in repr(activation)


def test_settings_carry_the_values_and_scopes() -> None:
    settings = sample().settings(ALL_SCOPES)
    assert (settings.org, settings.client_id, settings.client_secret) == (ORG, CLIENT_ID, SECRET)
    assert settings.scopes == ALL_SCOPES
    assert sample().settings().scopes == READ_SCOPES


def test_nothing_stored_is_not_activated(tmp_path: Path) -> None:
    assert load_activation(tmp_path) is None
    folder(tmp_path).mkdir()
    assert load_activation(tmp_path) is None


@pytest.mark.parametrize("name", [CLIENT_SECRET_FILE, WEBHOOK_SECRET_FILE])
@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o660])
def test_a_secret_readable_by_others_is_refused(tmp_path: Path, name: str, bad_mode: int) -> None:
    save_activation(tmp_path, sample(webhook_id="hook", webhook_secret=HOOK_SECRET))
    path = folder(tmp_path) / name
    path.chmod(bad_mode)
    with pytest.raises(ActivationError) as caught:
        load_activation(tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert f"chmod 600 {path}" in message
    assert f"{bad_mode:04o}" in message
    assert SECRET not in message
    assert HOOK_SECRET not in message


def test_a_symlinked_secret_is_refused(tmp_path: Path) -> None:
    save_activation(tmp_path, sample())
    path = folder(tmp_path) / CLIENT_SECRET_FILE
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(SECRET + "\n")
    elsewhere.chmod(0o600)
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(ActivationError, match="symbolic link") as caught:
        load_activation(tmp_path)
    assert str(path) in str(caught.value)
    with pytest.raises(ActivationError, match="symbolic link"):
        save_activation(tmp_path, sample())
    assert elsewhere.read_text() == SECRET + "\n"  # never written through


def test_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    save_activation(real, sample())
    state = tmp_path / "state"
    state.mkdir()
    folder(state).symlink_to(folder(real))
    with pytest.raises(ActivationError, match="symbolic link"):
        load_activation(state)
    with pytest.raises(ActivationError, match="symbolic link"):
        save_activation(state, sample())
    with pytest.raises(ActivationError, match="symbolic link"):
        remove_activation(state)


def test_json_without_secret_is_half_there(tmp_path: Path) -> None:
    save_activation(tmp_path, sample())
    (folder(tmp_path) / CLIENT_SECRET_FILE).unlink()
    with pytest.raises(ActivationError) as caught:
        load_activation(tmp_path)
    assert CLIENT_SECRET_FILE in str(caught.value)
    assert "missing" in str(caught.value)
    assert "officernd activate" in str(caught.value)


def test_secret_without_json_is_half_there(tmp_path: Path) -> None:
    save_activation(tmp_path, sample())
    (folder(tmp_path) / ACTIVATION_FILE).unlink()
    with pytest.raises(ActivationError, match=f"no {ACTIVATION_FILE}"):
        load_activation(tmp_path)


def test_webhook_id_without_its_secret_is_refused(tmp_path: Path) -> None:
    save_activation(tmp_path, sample(webhook_id="hook", webhook_secret=HOOK_SECRET))
    (folder(tmp_path) / WEBHOOK_SECRET_FILE).unlink()
    with pytest.raises(ActivationError, match=f"webhook hook but {WEBHOOK_SECRET_FILE}"):
        load_activation(tmp_path)


def test_webhook_secret_without_its_id_is_no_webhook(tmp_path: Path) -> None:
    # A crash between writing the webhook's secret and activation.json leaves this.
    save_activation(tmp_path, sample())
    path = folder(tmp_path) / WEBHOOK_SECRET_FILE
    path.write_text(HOOK_SECRET + "\n")
    path.chmod(0o600)
    assert load_activation(tmp_path) == sample()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"org": "acme"}', "client_id, api_base, identity_url, activated_at missing"),
        (
            '{"org": "a b", "client_id": "c", "api_base": "https://a", '
            '"identity_url": "https://b", "activated_at": "2026-12-01T14:00:00Z"}',
            "not an administration portal name",
        ),
        (
            '{"org": "acme", "client_id": "c", "api_base": "https://a", '
            '"identity_url": "https://b", "activated_at": "yesterday"}',
            "is not a time",
        ),
        (
            '{"org": "acme", "client_id": "c", "api_base": "http://example.com", '
            '"identity_url": "https://b", "activated_at": "2026-12-01T14:00:00Z"}',
            "API base URL",
        ),
    ],
)
def test_a_damaged_json_is_refused(tmp_path: Path, text: str, why: str) -> None:
    save_activation(tmp_path, sample())
    (folder(tmp_path) / ACTIVATION_FILE).write_text(text)
    with pytest.raises(ActivationError) as caught:
        load_activation(tmp_path)
    message = str(caught.value)
    assert why in message
    assert str(folder(tmp_path) / ACTIVATION_FILE) in message
    assert "officernd deactivate" in message


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    save_activation(tmp_path, sample())
    (folder(tmp_path) / CLIENT_SECRET_FILE).write_text("\n")
    with pytest.raises(ActivationError, match="empty"):
        load_activation(tmp_path)


def test_remove(tmp_path: Path) -> None:
    assert remove_activation(tmp_path) is False
    save_activation(tmp_path, sample(webhook_id="hook", webhook_secret=HOOK_SECRET))
    assert remove_activation(tmp_path) is True
    assert list(folder(tmp_path).iterdir()) == []
    assert load_activation(tmp_path) is None
    assert remove_activation(tmp_path) is False


def test_a_crash_leaves_no_temporary_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_activation(tmp_path, sample())

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        save_activation(tmp_path, sample(client_secret="another-secret"))
    monkeypatch.undo()
    assert sorted(p.name for p in folder(tmp_path).iterdir()) == [
        ACTIVATION_FILE,
        CLIENT_SECRET_FILE,
    ]
    assert load_activation(tmp_path) == sample()


def test_scopes_follow_the_configuration() -> None:
    assert scopes_for(OfficeRnDSection(login=False)) == READ_SCOPES
    assert scopes_for(OfficeRnDSection()) == (*READ_SCOPES, SIGNIN)
    with_hook = OfficeRnDSection(login=False, webhook_url="https://gw.example/hooks/officernd")
    assert scopes_for(with_hook) == (*READ_SCOPES, WEBHOOKS_CREATE)


# --- activating against the fake ------------------------------------------------------------------


async def test_activate_saves_and_reports(fake: FakeOfficeRnD, tmp_path: Path) -> None:
    fake.add_member("Ada Lovelace")
    activation, report = await activate_on(fake, tmp_path, scopes=ALL_SCOPES)
    assert activation == sample(api_base=fake.api_base, identity_url=fake.identity_url)
    assert load_activation(tmp_path) == activation
    assert report.org == ORG
    assert report.members_visible
    assert set(report.scopes) == set(ALL_SCOPES)
    token_requests = [r for r in fake.requests if r.path == "/oauth/token"]
    assert len(token_requests) == 1
    assert token_requests[0].body is not None
    assert token_requests[0].body["scope"].split() == list(ALL_SCOPES)


async def test_activate_strips_spaces_around_names(fake: FakeOfficeRnD, tmp_path: Path) -> None:
    activation, report = await activate_on(
        fake, tmp_path, org=f" {ORG} ", client_id=CLIENT_ID + " "
    )
    assert (activation.org, activation.client_id) == (ORG, CLIENT_ID)
    assert not report.members_visible


async def test_reactivating_the_same_organisation_keeps_the_webhook(
    fake: FakeOfficeRnD, tmp_path: Path
) -> None:
    await activate_on(fake, tmp_path)
    save_webhook(tmp_path, "hook-1", HOOK_SECRET)
    again, _ = await activate_on(fake, tmp_path)
    assert (again.webhook_id, again.webhook_secret) == ("hook-1", HOOK_SECRET)
    assert load_activation(tmp_path) == again


async def test_activating_another_organisation_drops_the_webhook(tmp_path: Path) -> None:
    async with FakeOfficeRnD(org="other", client_id=CLIENT_ID, client_secret=SECRET) as other:
        save_activation(tmp_path, sample(webhook_id="hook-1", webhook_secret=HOOK_SECRET))
        activation, _ = await activate_on(other, tmp_path, org="other")
    assert activation.webhook_id is None
    assert not (folder(tmp_path) / WEBHOOK_SECRET_FILE).exists()


async def test_wrong_secret_is_bad_credentials_and_saves_nothing(
    fake: FakeOfficeRnD, tmp_path: Path
) -> None:
    with pytest.raises(BadCredentials) as caught:
        await activate_on(fake, tmp_path, client_secret="not-the-secret")
    assert load_activation(tmp_path) is None
    assert not folder(tmp_path).exists()
    sentence = describe_failure(caught.value)
    assert "refused the client id and secret" in sentence
    assert "Settings → Data & Extensibility → Developer Tools" in sentence


async def test_a_failed_activation_leaves_the_previous_one(
    fake: FakeOfficeRnD, tmp_path: Path
) -> None:
    previous = sample()
    save_activation(tmp_path, previous)
    with pytest.raises(BadCredentials):
        await activate_on(fake, tmp_path, client_secret="not-the-secret")
    assert load_activation(tmp_path) == previous


async def test_a_scope_not_granted_is_named(fake: FakeOfficeRnD, tmp_path: Path) -> None:
    fake.granted_scopes = frozenset(ALL_SCOPES) - {PLANS_READ}
    with pytest.raises(MissingScope) as caught:
        await activate_on(fake, tmp_path)
    assert caught.value.scope == PLANS_READ
    assert load_activation(tmp_path) is None
    sentence = describe_failure(caught.value)
    assert PLANS_READ in sentence
    assert "lacks the permission" in sentence
    assert "Developer Tools" in sentence


async def test_an_unknown_organisation_is_named(fake: FakeOfficeRnD, tmp_path: Path) -> None:
    with pytest.raises(OrganizationNotFound) as caught:
        await activate_on(fake, tmp_path, org="acme-typo")
    assert load_activation(tmp_path) is None
    sentence = describe_failure(caught.value, org="acme-typo")
    assert "'acme-typo'" in sentence
    assert "Settings → General" in sentence
    assert "/admin/" in sentence
    # Without the slug at hand, the client's own sentence names it.
    assert "acme-typo" in describe_failure(caught.value)


async def test_a_rate_limited_token_endpoint(fake: FakeOfficeRnD, tmp_path: Path) -> None:
    fake.fail_next("/oauth/token", 429, retry_after=600)
    with pytest.raises(RateLimited) as caught:
        await activate_on(fake, tmp_path)
    assert caught.value.retry_after_s == 600
    assert load_activation(tmp_path) is None
    assert describe_failure(caught.value) == (
        "OfficeRnD is rate limiting this gateway: try again in 600 s"
    )
    assert "in a minute" in describe_failure(RateLimited("slow down"))


async def test_a_closed_port_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activation_module, "ACTIVATION_MAX_RETRIES", 0)
    port = pick_free_port()
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(Unreachable) as caught:
        await activate(
            tmp_path,
            ORG,
            CLIENT_ID,
            SECRET,
            api_base=f"{base}/api/v2",
            identity_url=f"{base}/oauth/token",
        )
    assert load_activation(tmp_path) is None
    sentence = describe_failure(caught.value)
    assert "could not be reached" in sentence
    assert f"127.0.0.1:{port}" in sentence
    assert "(last answer HTTP 503)" in describe_failure(Unreachable("down", 503))


async def test_a_server_error_after_retries_is_unreachable_with_its_status(
    fake: FakeOfficeRnD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activation_module, "ACTIVATION_MAX_RETRIES", 0)
    fake.fail_next("/members", 503)
    with pytest.raises(Unreachable) as caught:
        await activate_on(fake, tmp_path)
    assert caught.value.status == 503
    assert "HTTP 503" in describe_failure(caught.value)
    assert load_activation(tmp_path) is None


async def test_an_api_error_is_told_as_is(fake: FakeOfficeRnD, tmp_path: Path) -> None:
    fake.fail_next("/members", 400, body={"statusCode": 400, "message": "bad filter"})
    with pytest.raises(ApiError) as caught:
        await activate_on(fake, tmp_path)
    assert "bad filter" in describe_failure(caught.value)
    assert load_activation(tmp_path) is None


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"org": ""}, "not an administration portal name"),
        ({"org": "acme/../x"}, "not an administration portal name"),
        ({"org": "a" * 101}, "not an administration portal name"),
        ({"client_id": ""}, "Client ID"),
        ({"client_id": "a\tb"}, "Client ID"),
        ({"client_id": "c" * 201}, "Client ID"),
        ({"client_secret": ""}, "Client Secret is empty"),
        ({"client_secret": SECRET + "\nmore"}, "line break"),
        ({"client_secret": "s" * 1001}, "over 1000 characters"),
        ({"api_base": "http://app.officernd.com/api/v2"}, "API base URL"),
        ({"api_base": "ftp://127.0.0.1/api/v2"}, "API base URL"),
        ({"identity_url": "https://user:pw@identity.example/oauth/token"}, "with credentials"),
        ({"identity_url": "identity.officernd.com/oauth/token"}, "identity URL"),
    ],
)
async def test_unusable_input_is_refused_before_any_request(
    fake: FakeOfficeRnD, tmp_path: Path, changes: dict[str, Any], why: str
) -> None:
    with pytest.raises(ActivationError) as caught:
        await activate_on(fake, tmp_path, **changes)
    assert why in str(caught.value)
    assert describe_failure(caught.value) == str(caught.value)
    assert SECRET not in str(caught.value)
    assert fake.requests == []
    assert load_activation(tmp_path) is None


@pytest.mark.parametrize(
    "host", ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "https://x.example"]
)
def test_loopback_http_or_any_https_is_allowed(host: str) -> None:
    sample(api_base=f"{host}/api/v2", identity_url=f"{host}/oauth/token")


async def test_the_secret_reaches_no_log_and_no_error(
    fake: FakeOfficeRnD,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(activation_module, "ACTIVATION_MAX_RETRIES", 0)
    fake.token_requests_per_minute = 100  # this test is about logs, not the token budget
    texts: list[str] = []
    await activate_on(fake, tmp_path)
    failures: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"client_secret": SECRET + "x"}, BadCredentials),  # holds the real one
        ({"org": "nowhere"}, OrganizationNotFound),
        ({"scopes": (*READ_SCOPES, "flex.never.granted.read")}, MissingScope),
        ({"client_secret": SECRET + "\n"}, ActivationError),
    ]
    for changes, error in failures:
        with pytest.raises(error) as caught:
            await activate_on(fake, tmp_path / "other", **changes)
        texts += [str(caught.value), repr(caught.value), describe_failure(caught.value)]
    fake.fail_next("/oauth/token", 503)
    with pytest.raises(Unreachable) as unreachable:
        await activate_on(fake, tmp_path / "other")
    texts += [str(unreachable.value), describe_failure(unreachable.value)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.exc_info) for record in caplog.records if record.exc_info]
    assert texts
    for text in texts:
        assert SECRET not in text
    assert any("activated for organisation" in r.getMessage() for r in caplog.records)


def test_describe_failure_of_anything_else() -> None:
    assert describe_failure(ValueError("odd")) == "activation failed: ValueError: odd"
    no_scope = MissingScope("the OfficeRnD application lacks one of the permissions a, b")
    assert "one of the permissions a, b" in describe_failure(no_scope)


def test_a_secret_that_is_not_a_file_or_too_long_is_refused(tmp_path: Path) -> None:
    save_activation(tmp_path, sample())
    path = folder(tmp_path) / CLIENT_SECRET_FILE
    path.write_text("s" * 5000)
    with pytest.raises(ActivationError, match="over 1000 characters") as caught:
        load_activation(tmp_path)
    assert str(path) in str(caught.value)
    path.unlink()
    path.mkdir(mode=0o700)
    with pytest.raises(ActivationError, match="not a regular file"):
        load_activation(tmp_path)
