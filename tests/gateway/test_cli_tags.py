"""``luckey-gateway tags verify-sun``: an installer checks a tag's SUN message with its keys."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from drivers.nfc_emulators import Ntag424Tag
from gateway import ntag424
from gateway.cli import EXIT_DENIED, EXIT_OK, EXIT_USAGE, main
from gateway.nfc_cards import NTAG424_AID, NfcKeys
from tests.gateway.test_cli import LUCKEY

ZERO_KEY = "00" * 16
VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "nfc.json").read_text())
[PLAIN] = VECTORS["ntag424_sun_plain"]
PLAIN_URL = f"https://tags.example/t?picc_data={PLAIN['picc_data']}&cmac={PLAIN['cmac']}"
# AN12196 §3.4.4: SUN with encrypted file data, all keys zero.
ENC_QUERY = (
    "picc_data=FD91EC264309878BE6345CBE53BADF40"
    "&enc=CEE9A53E3E463EF1F459635736738962&cmac=ECC1E7F6C6C73BF6"
)


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["tags", "verify-sun", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_public_vector_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = verify(
        capsys, PLAIN_URL, "--meta-key", PLAIN["k_sdm_meta_read"], "--file-key", ZERO_KEY
    )
    assert status == EXIT_OK
    assert out.splitlines() == [
        "valid: yes (the MAC verifies)",
        f"uid: {PLAIN['expect']['uid']}",
        f"read counter: {PLAIN['expect']['read_counter']}",
    ]


def test_json_output_with_encrypted_file_data(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = verify(
        capsys, ENC_QUERY, "--meta-key", ZERO_KEY, "--file-key", ZERO_KEY, "--json"
    )
    assert status == EXIT_OK
    assert json.loads(out) == {
        "valid": True,
        "uid": "04958CAA5C5E80",
        "read_counter": 8,
        "file_data": b"xxxxxxxxxxxxxxxx".hex().upper(),
        "reason": "the MAC verifies",
    }


def test_a_wrong_file_key_says_the_mac_does_not_verify(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = verify(capsys, PLAIN_URL, "--meta-key", ZERO_KEY, "--file-key", "11" * 16)
    assert status == EXIT_DENIED
    assert out.splitlines()[0].startswith("valid: no (the MAC does not verify")
    assert "(not authenticated)" in out


def test_a_wrong_meta_key_says_it_does_not_decrypt(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = verify(
        capsys, PLAIN_URL, "--meta-key", "22" * 16, "--file-key", ZERO_KEY, "--json"
    )
    assert status == EXIT_DENIED
    result = json.loads(out)
    assert (result["valid"], result["uid"], result["read_counter"]) == (False, None, None)
    assert "meta-read key does not decrypt" in result["reason"]


def test_a_key_can_come_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "meta.key"
    key_file.write_text(ZERO_KEY + "\n")
    status, _, _ = verify(capsys, PLAIN_URL, "--meta-key", f"@{key_file}", "--file-key", ZERO_KEY)
    assert status == EXIT_OK


@pytest.mark.parametrize(
    ("url", "meta_key", "message"),
    [
        ("https://tags.example/t?cmac=94EED9EE65337086", ZERO_KEY, "not a SUN message"),
        ("picc_data=EF96&cmac=94EED9EE65337086", ZERO_KEY, "not a SUN message"),
        (PLAIN_URL, "abcd" * 4, "--meta-key must be a 16-byte AES key"),
        (PLAIN_URL, "@/nonexistent/key", "--meta-key: cannot read the key file"),
    ],
)
def test_bad_input_is_named_and_exits_2(
    capsys: pytest.CaptureFixture[str], url: str, meta_key: str, message: str
) -> None:
    status, out, err = verify(capsys, url, "--meta-key", meta_key, "--file-key", ZERO_KEY)
    assert status == EXIT_USAGE
    assert message in err
    assert out == ""
    assert "abcd" * 4 not in err  # a key is never echoed, even a wrong one


def test_the_installed_command() -> None:
    done = subprocess.run(
        [LUCKEY, "tags", "verify-sun", PLAIN_URL, "--meta-key", ZERO_KEY, "--file-key", ZERO_KEY],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == EXIT_OK
    assert done.stdout.startswith("valid: yes")


# --- --file-master: the per-tag key derived as the gateway derives it --------------------------

TAG_UID = bytes.fromhex("04A0B0C0D0E0F1")
META_KEY = bytes(range(16, 32))
FILE_MASTER = bytes(range(32, 48))


def site(system_identifier: bytes = bytes.fromhex("4C55434B4559")) -> NfcKeys:
    """A site's keys as the gateway holds them (the default [nfc] system_identifier)."""
    return NfcKeys(
        ntag424_master=None,
        sun_meta_key=META_KEY,
        sun_file_master=FILE_MASTER,
        desfire_master=None,
        desfire_aid=bytes.fromhex("4C5501"),
        system_identifier=system_identifier,
    )


def sun_url(keys: NfcKeys, *, file_data: bytes | None = None, counter: int = 7) -> str:
    tag = Ntag424Tag.for_site(TAG_UID, keys, sun_enabled=True, counter=counter, file_data=file_data)
    return tag.sun_url()


def test_a_file_master_verifies_a_tag_of_its_site(capsys: pytest.CaptureFixture[str]) -> None:
    url = sun_url(site(), file_data=b"door 7 / floor 2")
    status, out, _ = verify(
        capsys, url, "--meta-key", META_KEY.hex(), "--file-master", FILE_MASTER.hex(), "--json"
    )
    assert status == EXIT_OK
    assert json.loads(out) == {
        "valid": True,
        "uid": TAG_UID.hex().upper(),
        "read_counter": 7,
        "file_data": b"door 7 / floor 2".hex().upper(),
        "reason": "the MAC verifies",
    }


def test_the_file_master_derives_the_gateways_per_tag_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The same URL verifies with the tag's own key, which is what NfcKeys.sun_file_key gives.
    keys = site()
    tag_key = keys.sun_file_key(TAG_UID)
    assert tag_key == ntag424.tag_key(FILE_MASTER, TAG_UID, NTAG424_AID, keys.system_identifier)
    url = sun_url(keys)
    by_key = verify(capsys, url, "--meta-key", META_KEY.hex(), "--file-key", tag_key.hex())
    by_master = verify(
        capsys, url, "--meta-key", META_KEY.hex(), "--file-master", FILE_MASTER.hex()
    )
    assert by_key == by_master
    assert by_master[0] == EXIT_OK


def test_a_site_with_its_own_system_identifier_and_aid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = dataclasses.replace(site(b"ACME-SITE-7"), ntag424_aid=bytes.fromhex("F00D01"))
    url = sun_url(keys)
    master_file = tmp_path / "sun-file-master.key"
    master_file.write_text(FILE_MASTER.hex() + "\n")
    args = [url, "--meta-key", META_KEY.hex(), "--file-master", f"@{master_file}"]
    sid = ["--system-identifier", b"ACME-SITE-7".hex()]

    assert verify(capsys, *args, *sid, "--aid", "f00d01")[0] == EXIT_OK
    assert verify(capsys, *args, *sid)[0] == EXIT_DENIED  # the default AID: another key
    assert verify(capsys, *args, "--aid", "F00D01")[0] == EXIT_DENIED  # the default identifier


def test_a_wrong_file_master_is_not_valid(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = verify(
        capsys, sun_url(site()), "--meta-key", META_KEY.hex(), "--file-master", "11" * 16
    )
    assert status == EXIT_DENIED
    lines = out.splitlines()
    assert lines[0].startswith("valid: no (the MAC does not verify with the file key derived")
    assert lines[1] == f"uid: {TAG_UID.hex().upper()} (not authenticated)"
    assert "11" * 16 not in out


@pytest.mark.parametrize(
    "keys",
    [
        [],
        ["--file-key", ZERO_KEY, "--file-master", ZERO_KEY],
    ],
    ids=["neither", "both"],
)
def test_exactly_one_of_file_key_and_file_master(
    capsys: pytest.CaptureFixture[str], keys: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tags", "verify-sun", PLAIN_URL, "--meta-key", ZERO_KEY, *keys])
    assert exited.value.code == EXIT_USAGE
    _, err = capsys.readouterr()
    assert "--file-key" in err
    assert "--file-master" in err
    assert ZERO_KEY not in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--file-master", "abcd" * 4], "--file-master must be a 16-byte AES key"),
        (["--file-master", "@/nonexistent/key"], "--file-master: cannot read the key file"),
        (
            ["--file-master", ZERO_KEY, "--system-identifier", ""],
            "--system-identifier must be 1 to 21 bytes of hex",
        ),
        (
            ["--file-master", ZERO_KEY, "--system-identifier", "00" * 22],
            "--system-identifier must be 1 to 21 bytes of hex",
        ),
        (
            ["--file-master", ZERO_KEY, "--system-identifier", "LUCKEY"],
            "--system-identifier must be 1 to 21 bytes of hex",
        ),
        (["--file-master", ZERO_KEY, "--aid", "D276"], "--aid must be 3 bytes of hex"),
        (["--file-master", ZERO_KEY, "--aid", "D2760000"], "--aid must be 3 bytes of hex"),
        (["--file-key", ZERO_KEY, "--aid", "D27600"], "apply to --file-master only"),
        (["--file-key", ZERO_KEY, "--system-identifier", "01"], "apply to --file-master only"),
    ],
)
def test_bad_file_master_options_are_named_and_exit_2(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    status, out, err = verify(capsys, PLAIN_URL, "--meta-key", ZERO_KEY, *options)
    assert status == EXIT_USAGE
    assert message in err
    assert out == ""
    assert "abcd" * 4 not in err
    assert ZERO_KEY not in err


def test_the_installed_command_with_a_file_master() -> None:
    done = subprocess.run(
        [
            LUCKEY,
            "tags",
            "verify-sun",
            sun_url(site()),
            "--meta-key",
            META_KEY.hex(),
            "--file-master",
            FILE_MASTER.hex(),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == EXIT_OK
    assert done.stdout.startswith("valid: yes")
