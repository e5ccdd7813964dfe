"""``luckey-gateway who-can`` and ``can-open``, run through ``cli.main`` over a real cache file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway import cli
from gateway.cache import Cache
from tests.conftest import config_data, pick_free_port, toml_text
from tests.gateway.sitebuilder import SiteBuilder, site, slot

TUESDAY_10 = "2026-12-01T10:00:00+01:00"
SATURDAY_10 = "2026-12-05T10:00:00+01:00"


def small_site() -> SiteBuilder:
    """Two doors (one with a keypad), staff by tag, Bob by name on weekdays, Ada's PIN."""
    builder = (
        site("Europe/Rome")
        .door("front", name="Front door", min_assurance="low", tags=["ground"])
        .door("lab", name="Lab", min_assurance="low", keypad=True)
        .user("ada", name="Ada", tags=["staff"])
        .user("bob", name="Bob")
        .user("carla", name="Carla", tags=["staff"], status="suspended")
        .credential("ada-card", "ada")
        .credential("ada-pin", "ada", kind="pin")
        .credential("bob-card", "bob")
        .credential("carla-card", "carla")
        .rule("staff-ground", tags=["staff"], door_tags=["ground"])
        .rule("ada-pin", type="pin", users=["ada"], doors=["lab"])
        .rule(
            "bob-lab",
            type="card",
            users=["bob"],
            doors=["lab"],
            days=["mon", "tue", "wed", "thu", "fri"],
            time_slot=slot("08:00", "18:00"),
        )
    )
    for n in range(1, 11):
        builder.user(f"u{n:02d}")
    return builder


async def _write_cache(path: Path, builder: SiteBuilder) -> None:
    cache = Cache(path)
    await cache.start()
    try:
        await cache.apply_snapshot(builder.snapshot())
    finally:
        await cache.stop()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config file whose state directory holds the small site's cache."""
    directory = tmp_path_factory.mktemp("access")
    state = directory / "state"
    state.mkdir()
    asyncio.run(_write_cache(state / "cache.db", small_site()))
    path = directory / "gateway.toml"
    path.write_text(toml_text(config_data(state, pick_free_port())))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``luckey-gateway *args``: the exit status, stdout and stderr."""
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# --- who-can --------------------------------------------------------------------------------


def test_who_can_lists_the_credentials_that_open(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "who-can", "--config", config, "--door", "lab", "--at", TUESDAY_10)

    assert status == cli.EXIT_OK
    lines = out.splitlines()
    assert lines[0] == (
        'Who can open "Lab" (lab) at Tue 2026-12-01 10:00 Europe/Rome, mode normal: '
        "2 credential(s) of 2 user(s)"
    )
    assert lines[1].split() == ["ada", "Ada", "ada-pin", "pin", "granted", "(rule", "ada-pin)"]
    assert lines[2].split() == ["bob", "Bob", "bob-card", "nfc_uid", "granted", "(rule", "bob-lab)"]
    assert lines[-1].startswith("(a what-if")
    assert "Denied" not in out


def test_who_can_with_the_near_misses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "who-can", "--config", config, "--door", "lab", "--at", SATURDAY_10, "--denied"
    )

    assert status == cli.EXIT_OK
    assert "1 credential(s) of 1 user(s)" in out
    # Ada's card reaches the lab only through her PIN rule: a near miss too.
    denied = out.split("Denied (2):\n")[1].splitlines()
    assert denied[0].split() == ["ada", "Ada", "ada-card", "nfc_uid", "credential_type_not_allowed"]
    assert denied[2].split() == ["bob", "Bob", "bob-card", "nfc_uid", "day_not_allowed"]
    assert denied[3].strip().startswith('DENIED at "Lab" (day_not_allowed): rule "Rule bob-lab"')


def test_who_can_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "who-can", "--config", config, "--door", "front", "--at", TUESDAY_10, "--denied",
        "--json",
    )  # fmt: skip

    assert status == cli.EXIT_OK
    body = json.loads(out)
    assert body["door"] == "front"
    assert body["mode"] == "normal"
    assert [(h["user"], h["credential"], h["rule"]) for h in body["granted"]] == [
        ("ada", "ada-card", "staff-ground")
    ]
    assert {h["credential"]: h["reason"] for h in body["denied"]} == {
        "ada-pin": "no_keypad",
        "carla-card": "user_disabled",
    }


def test_who_can_sees_a_persisted_lockdown(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    modes = config.parent / "state" / "door_modes.json"
    modes.write_text(json.dumps({"format": 1, "modes": {"front": "lockdown"}}))
    try:
        status, out, _ = run(
            capsys, "who-can", "--config", config, "--door", "front", "--denied", "--json"
        )
    finally:
        modes.unlink()

    assert status == cli.EXIT_OK
    body = json.loads(out)
    assert body["mode"] == "lockdown"
    assert body["granted"] == []
    assert {h["reason"] for h in body["denied"]} == {"door_lockdown"}


def test_who_can_at_an_unknown_door(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "who-can", "--config", config, "--door", "garage")

    assert status == cli.EXIT_USAGE
    assert out == ""
    assert err == "luckey-gateway: unknown door 'garage'; doors in the cache: front, lab\n"


@pytest.mark.parametrize(
    ("at", "words"),
    [
        ("2026-12-01T10:00:00", "needs a UTC offset"),
        ("tomorrow", "is not an ISO 8601 instant"),
        ("0001-01-01T00:00:00+14:00", "is out of range"),
    ],
)
def test_who_can_with_a_bad_at(
    config: Path, capsys: pytest.CaptureFixture[str], at: str, words: str
) -> None:
    status, _, err = run(capsys, "who-can", "--config", config, "--door", "front", "--at", at)

    assert status == cli.EXIT_USAGE
    assert words in err


def test_who_can_without_a_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(toml_text(config_data(tmp_path / "state", pick_free_port())))

    status, _, err = run(capsys, "who-can", "--config", path, "--door", "front")

    assert status == cli.EXIT_USAGE
    assert "no cache" in err


# --- can-open -------------------------------------------------------------------------------


def test_can_open_door_by_door(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "can-open", "--config", config, "--user", "ada", "--at", TUESDAY_10
    )

    assert status == cli.EXIT_OK
    lines = out.splitlines()
    assert lines[0] == (
        'What "Ada" (ada, active) can open at Tue 2026-12-01 10:00 Europe/Rome: 2 of 2 door(s)'
    )
    assert lines[1] == 'front "Front door" (mode normal): opens'
    assert lines[2].split() == ["ada-card", "nfc_uid", "granted", "(rule", "staff-ground)"]
    assert lines[3].split()[:3] == ["ada-pin", "pin", "no_keypad"]
    assert lines[5] == (
        '  rule staff-ground "Rule staff-ground" (tag staff): '
        "any credential; every day; all day; no date limits"
    )
    assert lines[6] == 'lab "Lab" (mode normal): opens'
    assert '  rule ada-pin "Rule ada-pin" (named): PIN codes only; ' in out


def test_can_open_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "can-open", "--config", config, "--user", "bob", "--at", SATURDAY_10, "--json"
    )

    assert status == cli.EXIT_OK
    body = json.loads(out)
    assert body["user"]["id"] == "bob"
    front, lab = body["doors"]
    assert (front["door"], front["granted"], front["rules"]) == ("front", False, [])
    assert lab["granted"] is False
    assert [(c["credential"], c["reason"]) for c in lab["credentials"]] == [
        ("bob-card", "day_not_allowed")
    ]
    assert lab["rules"][0]["days"] == ["mon", "tue", "wed", "thu", "fri"]
    assert lab["rules"][0]["time_slot"] == {"start": "08:00", "end": "18:00"}
    assert lab["rules"][0]["when"] == (
        "cards only; mon,tue,wed,thu,fri; 08:00-18:00; no date limits"
    )


def test_can_open_for_a_user_without_credentials(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "can-open", "--config", config, "--user", "u01")

    assert status == cli.EXIT_OK
    assert "(the user holds no credential)" in out
    assert out.count("no rule gives this door to the user") == 2


def test_can_open_for_an_unknown_user_lists_a_few(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "can-open", "--config", config, "--user", "zed")

    assert status == cli.EXIT_USAGE
    assert out == ""
    assert err == (
        "luckey-gateway: unknown user 'zed'; users in the cache: ada, bob, carla, u01, u02, "
        "u03, u04, u05, u06, u07, … (13 in all)\n"
    )
