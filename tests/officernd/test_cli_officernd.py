"""Tests for ``luckey-gateway officernd activate|status|deactivate`` against the fake OfficeRnD."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.cli import main
from gateway.officernd.activation import (
    CLIENT_SECRET_FILE,
    Activation,
    folder,
    load_activation,
    save_activation,
)
from gateway.officernd.client import READ_SCOPES, SIGNIN, WEBHOOKS_CREATE
from tests.conftest import config_data, pick_free_port, toml_text
from tests.officernd.fake import FakeOfficeRnD

ORG = "acme-cowork"
CLIENT_ID = "app-client-7d41"
SECRET = "s3cr3t-client-value-9f8e7d"
HOOK_SECRET = "whsec-5a6b7c8d9e0f"
NOT_RUNNING = "the gateway is not running: it will use this when it starts"


@dataclass
class Setup:
    """A configuration file, its state directory and its web port."""

    config: Path
    state_dir: Path
    port: int


def make_setup(tmp_path: Path, port: int | None = None, **officernd: Any) -> Setup:
    port = pick_free_port() if port is None else port
    state_dir = tmp_path / "state"
    sections: dict[str, dict[str, Any]] = {"officernd": officernd} if officernd else {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "gateway.toml"
    path.write_text(toml_text(config_data(state_dir, port, **sections)))
    return Setup(path, state_dir, port)


def secret_file(tmp_path: Path, text: str = SECRET + "\n") -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(text)
    return path


def activate_args(setup: Setup, fake: FakeOfficeRnD, secret: Path, **changes: str) -> list[str]:
    values = {
        "--org": ORG,
        "--client-id": CLIENT_ID,
        "--client-secret-file": str(secret),
        "--api-base": fake.api_base,
        "--identity-url": fake.identity_url,
        "--config": str(setup.config),
    } | changes
    return ["officernd", "activate", *[item for pair in values.items() for item in pair]]


def stored(setup: Setup, **changes: Any) -> Activation:
    """Store an activation directly, as a successful ``activate`` would have."""
    from datetime import UTC, datetime

    values: dict[str, Any] = {
        "org": ORG,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "api_base": "https://app.officernd.com/api/v2",
        "identity_url": "https://identity.officernd.com/oauth/token",
        "activated_at": datetime(2026, 12, 1, 14, 0, tzinfo=UTC),
    }
    activation = Activation(**(values | changes))
    save_activation(setup.state_dir, activation)
    return activation


def output(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Stdout and stderr so far; neither may show a secret, whatever the command."""
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert SECRET not in text
        assert HOOK_SECRET not in text
    return captured.out, captured.err


@pytest.fixture
async def fake() -> AsyncIterator[FakeOfficeRnD]:
    async with FakeOfficeRnD(org=ORG, client_id=CLIENT_ID, client_secret=SECRET) as server:
        yield server


@dataclass
class Daemon:
    """A stand-in for the running gateway's OfficeRnD endpoints."""

    port: int
    reloads: int = 0
    reload_status: int = 200
    status: dict[str, Any] = field(default_factory=dict)


async def serve_daemon(daemon: Daemon, *, routes: bool = True) -> web.AppRunner:
    async def reload(request: web.Request) -> web.Response:
        daemon.reloads += 1
        if daemon.reload_status != 200:
            return web.json_response({"error": "sync is stuck"}, status=daemon.reload_status)
        return web.json_response({"ok": True})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(daemon.status)

    app = web.Application()
    if routes:
        app.router.add_post("/api/officernd/reload", reload)
        app.router.add_get("/api/officernd/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", daemon.port).start()
    return runner


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    stand_in = Daemon(port=pick_free_port())
    runner = await serve_daemon(stand_in)
    try:
        yield stand_in
    finally:
        await runner.cleanup()


async def run(argv: list[str]) -> int:
    """``main(argv)`` off the event loop, so loopback servers on this loop can answer it."""
    return await asyncio.to_thread(main, argv)


# --- activate ------------------------------------------------------------------------------------


async def test_activate_stores_prints_and_tells_a_stopped_gateway(
    fake: FakeOfficeRnD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add_member("Ada Lovelace")
    setup = make_setup(tmp_path)
    assert await run(activate_args(setup, fake, secret_file(tmp_path))) == 0
    out, _ = output(capsys)
    assert f"activated: OfficeRnD organisation {ORG}" in out
    assert f"client id: {CLIENT_ID}" in out
    assert "scopes granted: " in out
    assert "members visible: yes" in out
    assert "read requests left this minute: " in out
    assert out.rstrip().endswith(NOT_RUNNING)
    activation = load_activation(setup.state_dir)
    assert activation is not None
    assert (activation.org, activation.client_id, activation.client_secret) == (
        ORG,
        CLIENT_ID,
        SECRET,
    )
    assert activation.api_base == fake.api_base


async def test_activate_asks_for_the_scopes_the_configuration_needs(
    fake: FakeOfficeRnD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = make_setup(tmp_path / "plain", login=False)
    assert await run(activate_args(plain, fake, secret_file(tmp_path))) == 0
    hooked = make_setup(tmp_path / "hooked", webhook_url="https://gw.example.com/hooks/officernd")
    assert await run(activate_args(hooked, fake, secret_file(tmp_path))) == 0
    output(capsys)
    scopes = [r.body["scope"].split() for r in fake.requests if r.path == "/oauth/token" and r.body]
    assert scopes == [list(READ_SCOPES), [*READ_SCOPES, SIGNIN, WEBHOOKS_CREATE]]


async def test_activate_with_a_wrong_secret_fails_and_stores_nothing(
    fake: FakeOfficeRnD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = make_setup(tmp_path)
    wrong = secret_file(tmp_path, SECRET + "-old\n")
    assert await run(activate_args(setup, fake, wrong)) == 2
    out, err = output(capsys)
    assert out == ""
    assert "OfficeRnD refused the client id and secret" in err
    assert "Developer Tools" in err
    assert load_activation(setup.state_dir) is None


async def test_activate_an_unknown_organisation(
    fake: FakeOfficeRnD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = make_setup(tmp_path)
    assert await run(activate_args(setup, fake, secret_file(tmp_path), **{"--org": "acm"})) == 2
    _, err = output(capsys)
    assert "no organisation 'acm'" in err
    assert "Settings → General" in err


async def test_activate_a_bad_slug_is_refused_before_any_request(
    fake: FakeOfficeRnD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = make_setup(tmp_path)
    args = activate_args(setup, fake, secret_file(tmp_path), **{"--org": "acme cowork"})
    assert await run(args) == 2
    _, err = output(capsys)
    assert "not an administration portal name" in err
    assert fake.requests == []


@pytest.mark.parametrize(
    ("content", "why"),
    [("", "is empty"), ("\n", "is empty"), ("x" * 5000, "over 4096 bytes")],
)
def test_activate_refuses_an_unusable_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, why: str
) -> None:
    setup = make_setup(tmp_path)
    secret = secret_file(tmp_path, content)
    args = ["officernd", "activate", "--org", ORG, "--client-id", CLIENT_ID]
    assert main([*args, "--client-secret-file", str(secret), "--config", str(setup.config)]) == 2
    _, err = output(capsys)
    assert why in err
    assert not folder(setup.state_dir).exists()


def test_activate_refuses_a_symlinked_or_missing_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = make_setup(tmp_path)
    link = tmp_path / "link.txt"
    link.symlink_to(secret_file(tmp_path))
    args = ["officernd", "activate", "--org", ORG, "--client-id", CLIENT_ID]
    config = ["--config", str(setup.config)]
    assert main([*args, "--client-secret-file", str(link), *config]) == 2
    assert "is a symbolic link" in output(capsys)[1]
    assert main([*args, "--client-secret-file", str(tmp_path / "absent"), *config]) == 2
    assert "cannot read the client secret file" in output(capsys)[1]
    assert main([*args, "--client-secret-file", str(tmp_path), *config]) == 2
    assert "not a regular file" in output(capsys)[1]


async def test_activate_tells_a_running_gateway_to_reload(
    fake: FakeOfficeRnD,
    daemon: Daemon,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup = make_setup(tmp_path, daemon.port)
    assert await run(activate_args(setup, fake, secret_file(tmp_path))) == 0
    assert daemon.reloads == 1
    out, _ = output(capsys)
    assert "the running gateway reloaded its OfficeRnD activation" in out

    daemon.reload_status = 500
    assert await run(activate_args(setup, fake, secret_file(tmp_path))) == 0
    out, _ = output(capsys)
    assert "could not reload OfficeRnD (sync is stuck): restart it" in out


async def test_activate_with_a_gateway_that_predates_the_endpoint(
    fake: FakeOfficeRnD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = Daemon(port=pick_free_port())
    runner = await serve_daemon(old, routes=False)
    try:
        setup = make_setup(tmp_path, old.port)
        assert await run(activate_args(setup, fake, secret_file(tmp_path))) == 0
    finally:
        await runner.cleanup()
    out, _ = output(capsys)
    assert "predates this command" in out
    assert "restart it" in out


# --- status ---------------------------------------------------------------------------------------


def test_status_before_activation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup = make_setup(tmp_path)
    assert main(["officernd", "status", "--config", str(setup.config)]) == 0
    out, _ = output(capsys)
    assert "OfficeRnD is not activated: run `luckey-gateway officernd activate" in out
    assert "gateway: not running" in out
    assert main(["officernd", "status", "--json", "--config", str(setup.config)]) == 0
    assert json.loads(output(capsys)[0]) == {"activated": False, "daemon": None}


def test_status_after_activation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup = make_setup(tmp_path)
    stored(setup, webhook_id="hook-1", webhook_secret=HOOK_SECRET)
    assert main(["officernd", "status", "--config", str(setup.config)]) == 0
    out, _ = output(capsys)
    assert f"org: {ORG}\n" in out
    assert f"client id: {CLIENT_ID}\n" in out
    assert "api base: https://app.officernd.com/api/v2\n" in out
    assert "identity url: https://identity.officernd.com/oauth/token\n" in out
    assert "activated at: 2026-12-01T14:00:00+00:00\n" in out
    assert "webhook id: hook-1\n" in out
    assert "client secret: stored (0600)\n" in out
    assert "webhook secret: stored (0600)\n" in out
    assert main(["officernd", "status", "--json", "--config", str(setup.config)]) == 0
    data = json.loads(output(capsys)[0])
    assert data["activated"] is True
    assert data["org"] == ORG
    assert data["client_secret"] == "stored (0600)"
    assert data["daemon"] is None


async def test_status_shows_the_running_gateways_view(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.status = {"state": "syncing", "members": 12, "last_error": None}
    setup = make_setup(tmp_path, daemon.port)
    stored(setup)
    assert await run(["officernd", "status", "--config", str(setup.config)]) == 0
    out, _ = output(capsys)
    assert "gateway:\n  state: syncing\n  members: 12\n  last_error: null\n" in out
    assert await run(["officernd", "status", "--json", "--config", str(setup.config)]) == 0
    assert json.loads(output(capsys)[0])["daemon"] == daemon.status


def test_status_of_an_unsafe_activation_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = make_setup(tmp_path)
    stored(setup)
    (folder(setup.state_dir) / CLIENT_SECRET_FILE).chmod(0o644)
    assert main(["officernd", "status", "--config", str(setup.config)]) == 2
    _, err = output(capsys)
    assert "chmod 600" in err


# --- deactivate -----------------------------------------------------------------------------------


def test_deactivate_with_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup = make_setup(tmp_path)
    stored(setup, webhook_id="hook-1", webhook_secret=HOOK_SECRET)
    assert main(["officernd", "deactivate", "--yes", "--config", str(setup.config)]) == 0
    out, _ = output(capsys)
    assert f"removed the OfficeRnD activation of organisation {ORG}" in out
    assert "webhook hook-1 stays registered in OfficeRnD" in out
    assert out.rstrip().endswith(NOT_RUNNING)
    assert load_activation(setup.state_dir) is None
    assert main(["officernd", "status", "--config", str(setup.config)]) == 0
    assert "not activated" in output(capsys)[0]
    assert main(["officernd", "deactivate", "--yes", "--config", str(setup.config)]) == 0
    assert "not activated: nothing to remove" in output(capsys)[0]


def test_deactivate_without_yes_needs_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = make_setup(tmp_path)
    activation = stored(setup)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["officernd", "deactivate", "--config", str(setup.config)]) == 2
    _, err = output(capsys)
    assert "stdin is not a terminal; add --yes" in err
    assert load_activation(setup.state_dir) == activation


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "removed"), [("y", True), ("yes", True), ("n", False)])
def test_deactivate_asks_at_a_terminal(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    removed: bool,
) -> None:
    setup = make_setup(tmp_path)
    stored(setup)
    questions: list[str] = []

    def ask(prompt: str) -> str:
        questions.append(prompt)
        return answer

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("builtins.input", ask)
    status = main(["officernd", "deactivate", "--config", str(setup.config)])
    assert questions == [
        f"Remove the OfficeRnD activation of organisation {ORG} from this gateway? [y/N] "
    ]
    assert (load_activation(setup.state_dir) is None) is removed
    out, _ = output(capsys)
    assert status == (0 if removed else 1)
    assert ("nothing changed" in out) is not removed


def test_deactivate_clears_a_damaged_activation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = make_setup(tmp_path)
    stored(setup)
    (folder(setup.state_dir) / CLIENT_SECRET_FILE).unlink()
    assert main(["officernd", "deactivate", "--yes", "--config", str(setup.config)]) == 0
    out, _ = output(capsys)
    assert "note: " in out
    assert "removed the damaged OfficeRnD activation" in out
    assert list(folder(setup.state_dir).iterdir()) == []


async def test_deactivate_tells_a_running_gateway(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = make_setup(tmp_path, daemon.port)
    stored(setup)
    assert await run(["officernd", "deactivate", "--yes", "--config", str(setup.config)]) == 0
    assert daemon.reloads == 1
    assert "the running gateway reloaded" in output(capsys)[0]


# --- sync --once -----------------------------------------------------------------------------


async def test_sync_once_without_a_running_gateway_syncs_into_the_cache(
    fake: FakeOfficeRnD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cache import read_view

    plan = fake.add_plan("Hot desk")["_id"]
    ada = fake.add_member("Ada", properties={"luckey_cards": "nfc_uid:04D0D0D0D0D0D1"})["_id"]
    fake.add_membership(plan, member=ada, start="2026-01-01")
    fake.add_member("Bob", properties={"luckey_cards": "nfc_uid:not-hex"})
    setup = make_setup(tmp_path)
    assert await run(activate_args(setup, fake, secret_file(tmp_path))) == 0
    output(capsys)

    assert await run(["officernd", "sync", "--once", "--config", str(setup.config)]) == 0
    out, _ = output(capsys)
    assert "synced 2 members, 0 companies, 1 memberships, 1 plans" in out
    assert "→ 2 users, 1 plan tags, 1 cards, 0 plan rules" in out
    assert "problems in OfficeRnD's data" in out
    view = read_view(setup.state_dir / "cache.db")
    assert view.users["ornd-" + ada].tags == ("ornd-plan-" + plan,)


async def test_sync_once_goes_through_the_running_gateway(
    fake: FakeOfficeRnD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.app import Gateway
    from gateway.config import load_config

    fake.add_member("Ada")
    setup = make_setup(tmp_path)
    assert await run(activate_args(setup, fake, secret_file(tmp_path))) == 0
    gw = Gateway(load_config(setup.config))
    await gw.start()
    try:
        assert (
            await run(["officernd", "sync", "--once", "--json", "--config", str(setup.config)]) == 0
        )
    finally:
        await gw.stop()
    out, _ = output(capsys)
    summary = json.loads(out[out.index("{") :])
    assert summary["members"] == 1
    assert summary["users"] == 1
    assert gw.officernd.sync is None  # stopped with the gateway
    assert "ornd-" in " ".join(gw.cache.view.users)


async def test_sync_once_before_activation_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = make_setup(tmp_path)
    assert await run(["officernd", "sync", "--once", "--config", str(setup.config)]) == 2
    _, err = output(capsys)
    assert "not activated" in err
    assert "officernd activate" in err
