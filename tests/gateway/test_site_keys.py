"""Tests for gateway.site_keys: the mechatronic site key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.site_keys import SITE_KEY_BYTES, SITE_KEY_FILE, SiteKeyError, _write_new, load_site_key

KEY = bytes(range(16))


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_missing_key_is_none_unless_asked_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "state" / "mech_site_key"
    assert load_site_key(path) is None
    assert not path.exists()

    made = load_site_key(path, create=True)

    assert made is not None
    assert len(made) == SITE_KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_site_key(path, create=True) == made  # kept, not replaced
    other = tmp_path / "other" / "mech_site_key"
    assert load_site_key(other, create=True) != made  # random per gateway, never shared


def test_an_installed_key_is_read_as_hex(tmp_path: Path) -> None:
    path = write(tmp_path / "key", KEY.hex().upper() + "\n")
    assert load_site_key(path) == KEY


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_others_can_read_is_refused_without_showing_it(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "key", KEY.hex(), mode)
    with pytest.raises(SiteKeyError) as info:
        load_site_key(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message
    assert stat.filemode(stat.S_IFREG | mode) in message
    assert KEY.hex() not in message


@pytest.mark.parametrize("text", ["", "00" * 15, "00" * 17, "zz" * 16, "00 11"])
def test_a_file_that_is_not_a_key_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "key", text)
    with pytest.raises(SiteKeyError, match="expected 32 hex digits on one line"):
        load_site_key(path)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere", KEY.hex())
    link = tmp_path / "key"
    os.symlink(target, link)
    with pytest.raises(SiteKeyError, match="cannot read the site key"):
        load_site_key(link)


def test_a_key_made_meanwhile_by_another_process_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "mech_site_key"
    theirs = write(path, KEY.hex())

    _write_new(theirs)  # lost the race: their key stays

    assert load_site_key(path) == KEY
    assert [p.name for p in tmp_path.iterdir()] == ["mech_site_key"]  # no temporary left


def test_a_stale_temporary_file_does_not_lend_its_mode_to_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / SITE_KEY_FILE
    stale = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    stale.write_text("left by a crash")
    stale.chmod(0o644)
    key = load_site_key(path, create=True)
    assert key is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not stale.exists()
