"""``luckey-gateway tags verify-sun``: an installer checks a tag's SUN message with its keys."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway.cli import EXIT_DENIED, EXIT_OK, EXIT_USAGE, main
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
