"""Settings saved by the web app in the state directory, applied over the file's configuration.

The configuration file may live where the service cannot write (``/etc`` under systemd's
``ProtectSystem=strict``), so what the installer chooses in the web app (door mappings, which
board drives which door) is kept in ``<state_dir>/settings.json`` and applied at each start::

    {"version": 1,
     "doors": {"front": {"held_open_s": 90, "wiring": "fail_safe"}},
     "hardware": {"boards": [{"address": 1, "doors": ["front", "lobby"]}]}}

Only the keys the installer set are saved; saved boards replace the file's boards.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import (
    BOARD_ADDRESSES,
    DOORS_PER_BOARD,
    BoardEntry,
    Config,
    ConfigError,
    ConfigErrors,
    DoorEntry,
    config_to_dict,
    parse_config,
)
from gateway.files import write_atomically

SETTINGS_FILE = "settings.json"
PREVIOUS_FILE = "settings.previous.json"
REJECTED_FILE = "settings.rejected.json"
SETTINGS_VERSION = 1
#: The keys of ``[doors.<id>]`` the web app may save.
DOOR_KEYS = tuple(f.name for f in dataclasses.fields(DoorEntry))
#: Board slots left empty when a door moves away (no site door id starts with "_").
SPARE_PREFIX = "_spare-"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with a setting: the field it concerns and what is wrong."""

    field: str
    error: str


class SettingsError(ValueError):
    """Settings refused before anything was written; ``errors`` names each field's problem."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(f"{e.field}: {e.error}" for e in self.errors))


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """What settings.json holds: per door the keys set, and the boards (None: the file's)."""

    doors: dict[str, dict[str, Any]] = field(default_factory=dict)
    boards: list[dict[str, Any]] | None = None

    @property
    def empty(self) -> bool:
        """True when nothing is saved."""
        return not self.doors and self.boards is None


def settings_path(state_dir: Path) -> Path:
    """Where the web app's settings live."""
    return state_dir / SETTINGS_FILE


def _damaged(path: Path, reason: str) -> ConfigError:
    return ConfigError(
        "",
        str(path),
        "the web app's saved settings",
        f"{path}: the web app's saved settings are damaged ({reason}); "
        "fix the file or remove it to use the configuration file alone",
    )


def load_settings(state_dir: Path) -> LocalSettings:
    """The saved settings (empty if none); ConfigError naming the file if it is damaged."""
    path = settings_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LocalSettings()
    except (OSError, UnicodeDecodeError) as err:
        raise _damaged(path, f"cannot read it: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _damaged(path, f"not JSON: {err}") from err
    if not isinstance(data, dict) or data.get("version") != SETTINGS_VERSION:
        raise _damaged(path, f'expected a JSON object with "version": {SETTINGS_VERSION}')
    doors = data.get("doors", {})
    if not isinstance(doors, dict) or not all(isinstance(v, dict) for v in doors.values()):
        raise _damaged(path, '"doors" must map door ids to objects')
    hardware = data.get("hardware", {})
    if not isinstance(hardware, dict):
        raise _damaged(path, '"hardware" must be an object')
    boards = hardware.get("boards")
    if boards is not None and (
        not isinstance(boards, list)
        or not all(isinstance(b, dict) and set(b) <= {"address", "doors"} for b in boards)
    ):
        raise _damaged(path, '"hardware.boards" must be a list of {"address", "doors"}')
    return LocalSettings(doors={str(k): dict(v) for k, v in doors.items()}, boards=boards)


def _merged(config: Config, settings: LocalSettings) -> dict[str, Any]:
    """``config`` as plain data with ``settings`` applied over it."""
    data = config_to_dict(config)
    doors = data.setdefault("doors", {})
    for door_id, values in settings.doors.items():
        doors[door_id] = {**doors.get(door_id, {}), **values}
    if settings.boards is not None:
        data.setdefault("hardware", {})["boards"] = [dict(b) for b in settings.boards]
    return data


def with_local_settings(config: Config) -> Config:
    """``config`` with the web app's saved settings over it; ``config`` itself if none."""
    path = settings_path(config.gateway.state_dir)
    settings = load_settings(config.gateway.state_dir)
    if settings.empty:
        return config
    try:
        return parse_config(_merged(config, settings), source=config.source)
    except ConfigError as err:
        raise _damaged(path, f"they do not fit the configuration: {err}") from err


def _field_of(key_path: str, door_id: str) -> str:
    """The settings field a parse_config key path concerns (a DoorEntry key, or "board")."""
    prefix = f"doors.{door_id}."
    if key_path.startswith(prefix) and key_path[len(prefix) :] in DOOR_KEYS:
        return key_path[len(prefix) :]
    if key_path.startswith("hardware.boards") or key_path == f"doors.{door_id}":
        return "board"
    if key_path.startswith("doors."):
        last = key_path.rsplit(".", 1)[-1]
        return last if last in DOOR_KEYS else "board"
    return key_path or "settings"


def _validated(
    config: Config, settings: LocalSettings, door_id: str
) -> Config:  # raises SettingsError
    try:
        return parse_config(_merged(config, settings), source=config.source)
    except ConfigError as err:
        errors = err.errors if isinstance(err, ConfigErrors) else [err]
        raise SettingsError(
            [FieldError(_field_of(e.key_path, door_id), str(e)) for e in errors]
        ) from None


def _write(state_dir: Path, settings: LocalSettings) -> None:
    data: dict[str, Any] = {"version": SETTINGS_VERSION, "doors": settings.doors}
    if settings.boards is not None:
        data["hardware"] = {"boards": settings.boards}
    path = settings_path(state_dir)
    # The settings in effect until now, for restore_previous if the new ones cannot start.
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    write_atomically(path.with_name(PREVIOUS_FILE), previous)
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def restore_previous(state_dir: Path) -> Path | None:
    """Put back the settings saved before the last save (that one could not start the doors);
    the refused file is kept as ``settings.rejected.json``. None if there was nothing to undo."""
    path = settings_path(state_dir)
    previous = path.with_name(PREVIOUS_FILE)
    if not previous.exists() or not path.exists():
        return None
    rejected = path.with_name(REJECTED_FILE)
    path.replace(rejected)
    text = previous.read_text(encoding="utf-8")
    if text:
        write_atomically(path, text)
    previous.unlink()
    return rejected


def _boards_with(
    boards: tuple[BoardEntry, ...], door_id: str, address: int, slot: int
) -> list[dict[str, Any]]:
    """``boards`` with ``door_id`` moved to ``slot`` of board ``address`` (others keep theirs)."""
    low, high = BOARD_ADDRESSES
    if isinstance(address, bool) or not isinstance(address, int) or not low <= address <= high:
        raise SettingsError([FieldError("board", f"address: an integer from {low} to {high}")])
    if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < DOORS_PER_BOARD:
        allowed = f"slot: an integer from 0 to {DOORS_PER_BOARD - 1}"
        raise SettingsError([FieldError("board", allowed)])
    result: list[dict[str, Any]] = []
    for board in boards:
        # The slot it leaves stays empty, so the doors after it keep their relays and inputs.
        doors = [
            f"{SPARE_PREFIX}{board.address}-{i}" if d == door_id else d
            for i, d in enumerate(board.doors)
        ]
        while doors and doors[-1].startswith(SPARE_PREFIX):
            doors.pop()
        result.append({"address": board.address, "doors": doors})
    target = next((b for b in result if b["address"] == address), None)
    if target is None:
        target = {"address": address, "doors": []}
        result.append(target)
    doors = target["doors"]
    while len(doors) <= slot:
        doors.append(f"{SPARE_PREFIX}{address}-{len(doors)}")
    if not doors[slot].startswith(SPARE_PREFIX):
        message = f"slot {slot} of board {address} already drives door {doors[slot]!r}"
        raise SettingsError([FieldError("board", message)])
    doors[slot] = door_id
    return [b for b in result if b["doors"]]


def save_door(
    state_dir: Path,
    config: Config,
    door_id: str,
    values: dict[str, Any],
    *,
    board: tuple[int, int] | None = None,
) -> Config:
    """Save ``values`` (DoorEntry keys) for ``door_id``, and its board (address, slot) if given.

    The whole resulting configuration is validated first: on any problem SettingsError is
    raised and nothing is written. Returns the configuration the next start will use.
    """
    unknown = [k for k in values if k not in DOOR_KEYS]
    if unknown:
        allowed = ", ".join(DOOR_KEYS)
        raise SettingsError(
            [FieldError(k, f"unknown key {k!r}; allowed keys: {allowed}") for k in unknown]
        )
    current = load_settings(state_dir)
    doors = {k: dict(v) for k, v in current.doors.items()}
    doors[door_id] = {**doors.get(door_id, {}), **values}
    boards = current.boards
    if board is not None:
        effective = with_local_settings(config)
        boards = _boards_with(effective.hardware.boards, door_id, *board)
    settings = LocalSettings(doors=doors, boards=boards)
    new_config = _validated(config, settings, door_id)
    _write(state_dir, settings)
    return new_config


def save_boards(state_dir: Path, config: Config, boards: list[dict[str, Any]]) -> Config:
    """Save ``boards`` (``{"address", "doors"}`` each) in place of the file's boards.

    Validated with the whole configuration first: SettingsError and nothing written if wrong.
    """
    current = load_settings(state_dir)
    settings = LocalSettings(doors=current.doors, boards=[dict(b) for b in boards])
    new_config = _validated(config, settings, "")
    _write(state_dir, settings)
    return new_config
