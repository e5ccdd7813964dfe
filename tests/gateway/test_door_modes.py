"""Door modes set by command: their own durable file, independent of the cache."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from gateway.door_modes import DoorModeStore
from gateway.model import DoorMode


async def test_modes_round_trip_and_normal_is_absent(tmp_path: Path) -> None:
    store = DoorModeStore(tmp_path / "door_modes.json")
    assert store.load() == {}
    await store.save(
        {"front": DoorMode.LOCKDOWN, "back": DoorMode.EMERGENCY_OPEN, "side": DoorMode.NORMAL}
    )
    assert DoorModeStore(store.path).load() == {
        "front": DoorMode.LOCKDOWN,
        "back": DoorMode.EMERGENCY_OPEN,
    }
    saved = json.loads(store.path.read_text())
    assert saved == {"format": 1, "modes": {"back": "emergency_open", "front": "lockdown"}}
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert not store.path.with_name("door_modes.json.tmp").exists()


def test_an_unreadable_file_is_moved_aside_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "door_modes.json"
    path.write_text('{"format": 1, "modes": {"front": "wide-open"}}')
    assert DoorModeStore(path).load(repair=False) == {}
    assert path.exists()  # a read-only look leaves it where it is
    assert DoorModeStore(path).load() == {}
    kept = list(tmp_path.glob("door_modes.json.unreadable-*"))
    assert len(kept) == 1
    assert "wide-open" in kept[0].read_text()
    assert not path.exists()


def test_a_file_of_another_format_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "door_modes.json"
    path.write_text('{"format": 2, "modes": {"front": "lockdown"}}')
    assert DoorModeStore(path).load(repair=False) == {}
