"""The web app's saved settings: validated before they are written, applied over the file."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, ConfigError, parse_config
from gateway.local_settings import (
    SettingsError,
    load_settings,
    restore_previous,
    save_boards,
    save_door,
    settings_path,
    with_local_settings,
)


def _config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "gateway": {"state_dir": str(state)},
        "hardware": {"backend": "simulated"},
        "doors": {"front": {"contact": "normally_open", "held_open_s": 60.0}},
    }
    data.update(sections)
    return parse_config(data, source=tmp_path / "gateway.toml")


def _boards_config(tmp_path: Path) -> Config:
    return _config(
        tmp_path,
        hardware={
            "backend": "board",
            "bus": "/dev/ttyAMA0",
            "boards": [
                {"address": 1, "doors": ["front", "lobby"]},
                {"address": 2, "doors": ["office-3"]},
            ],
        },
    )


def test_nothing_saved_gives_the_same_config(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert with_local_settings(config) is config
    assert load_settings(config.gateway.state_dir).empty


def test_saved_door_keys_override_the_file_and_keep_its_other_keys(tmp_path: Path) -> None:
    config = _config(tmp_path)
    state = config.gateway.state_dir
    returned = save_door(state, config, "front", {"held_open_s": 90, "wiring": "fail_safe"})
    saved = json.loads(settings_path(state).read_text())
    assert saved == {"version": 1, "doors": {"front": {"held_open_s": 90, "wiring": "fail_safe"}}}

    applied = with_local_settings(config)
    front = applied.doors["front"]
    assert (front.held_open_s, front.wiring) == (90.0, "fail_safe")
    assert front.contact == "normally_open"  # the file's key is kept
    assert applied.source == config.source
    assert returned == applied

    # A second save adds to the first: only what the installer set, per door.
    save_door(state, config, "lobby", {"rex_unlocks": False})
    save_door(state, config, "front", {"held_open_s": 200})
    again = with_local_settings(config)
    assert again.doors["front"].held_open_s == 200.0
    assert again.doors["front"].wiring == "fail_safe"
    assert again.doors["lobby"].rex_unlocks is False


def test_settings_file_is_private(tmp_path: Path) -> None:
    config = _config(tmp_path)
    save_door(config.gateway.state_dir, config, "front", {"held_open_s": 90})
    mode = stat.S_IMODE(settings_path(config.gateway.state_dir).stat().st_mode)
    assert mode == 0o600


def test_invalid_value_is_refused_with_its_field_and_nothing_is_written(tmp_path: Path) -> None:
    config = _config(tmp_path)
    state = config.gateway.state_dir
    with pytest.raises(SettingsError) as caught:
        save_door(state, config, "front", {"held_open_s": 5, "wiring": "sideways"})
    fields = {e.field: e.error for e in caught.value.errors}
    assert set(fields) == {"held_open_s", "wiring"}
    assert "30.0 to 600.0" in fields["held_open_s"]
    assert '"fail_secure"' in fields["wiring"]
    assert not settings_path(state).exists()

    # A good save first, then a bad one: the file keeps the good one.
    save_door(state, config, "front", {"held_open_s": 90})
    before = settings_path(state).read_text()
    with pytest.raises(SettingsError):
        save_door(state, config, "front", {"rex_grace_s": -1})
    assert settings_path(state).read_text() == before


def test_unknown_door_key_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(SettingsError) as caught:
        save_door(config.gateway.state_dir, config, "front", {"unlock_seconds": 3})
    (error,) = caught.value.errors
    assert error.field == "unlock_seconds"
    assert "held_open_s" in error.error  # the allowed keys are listed
    assert not settings_path(config.gateway.state_dir).exists()


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"version": 2, "doors": {}}',
        '{"version": 1, "doors": {"front": 3}}',
        '{"version": 1, "doors": {"front": {"held_open_s": 1}}}',
    ],
)
def test_damaged_settings_file_names_the_file(tmp_path: Path, text: str) -> None:
    config = _config(tmp_path)
    path = settings_path(config.gateway.state_dir)
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        with_local_settings(config)
    message = str(caught.value)
    assert str(path) in message
    assert "remove" in message


def test_moving_a_door_to_another_board_keeps_the_other_doors_slots(tmp_path: Path) -> None:
    config = _boards_config(tmp_path)
    state = config.gateway.state_dir
    new = save_door(state, config, "front", {}, board=(2, 1))
    boards = {b.address: b.doors for b in new.hardware.boards}
    assert boards[2] == ("office-3", "front")
    assert boards[1][1] == "lobby"  # lobby stays on its relay 1
    assert "front" not in boards[1]
    assert with_local_settings(config).hardware.boards == new.hardware.boards

    with pytest.raises(SettingsError) as caught:
        save_door(state, config, "lobby", {}, board=(2, 0))  # office-3 is there
    assert caught.value.errors[0].field == "board"
    assert "office-3" in caught.value.errors[0].error


def test_saved_boards_replace_the_files_and_are_validated(tmp_path: Path) -> None:
    config = _boards_config(tmp_path)
    state = config.gateway.state_dir
    with pytest.raises(SettingsError) as caught:
        save_boards(
            state, config, [{"address": 1, "doors": ["front"]}, {"address": 1, "doors": []}]
        )
    assert {e.field for e in caught.value.errors} == {"board"}
    assert not settings_path(state).exists()

    save_boards(state, config, [{"address": 5, "doors": ["lobby", "front"]}])
    applied = with_local_settings(config)
    assert [(b.address, b.doors) for b in applied.hardware.boards] == [(5, ("lobby", "front"))]
    # The file's door mapping still applies; front is on a board, so it remains valid.
    assert applied.doors["front"].held_open_s == 60.0


def test_a_save_keeps_the_settings_before_it_and_restore_previous_puts_them_back(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    state_dir = config.gateway.state_dir
    assert restore_previous(state_dir) is None  # nothing saved: nothing to undo
    save_door(state_dir, config, "front", {"held_open_s": 90})
    first = settings_path(state_dir).read_text()
    save_door(state_dir, config, "front", {"held_open_s": 120})
    second = settings_path(state_dir).read_text()
    assert (state_dir / "settings.previous.json").read_text() == first
    rejected = restore_previous(state_dir)
    assert rejected == state_dir / "settings.rejected.json"
    assert rejected.read_text() == second
    assert settings_path(state_dir).read_text() == first
    assert with_local_settings(config).doors["front"].held_open_s == 90
