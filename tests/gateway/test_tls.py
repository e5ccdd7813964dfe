"""The local web app's self-signed certificate: made once, reused, renewed, served over HTTPS."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.tls import CertificateFiles, TlsError, ensure_certificate, server_context

HOSTNAME = "gw-test"
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fixed_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: HOSTNAME)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _load(files: CertificateFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.cert.read_bytes())


def _san(files: CertificateFiles) -> x509.SubjectAlternativeName:
    return _load(files).extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_first_call_generates_private_files(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "tls"
    files = ensure_certificate(folder, ["192.168.1.50"], now=NOW)
    assert files.regenerated is True
    assert files.cert == folder / "tls.crt"
    assert files.key == folder / "tls.key"
    assert _mode(folder) == 0o700
    assert _mode(files.key) == 0o600
    assert files.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert files.cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_existing_folder_is_tightened_to_0700(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    ensure_certificate(folder, [], now=NOW)
    assert _mode(folder) == 0o700


def test_second_call_reuses_the_certificate(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, ["10.0.0.7", "door.lan"], now=NOW)
    key_bytes = first.key.read_bytes()
    second = ensure_certificate(tmp_path, ["door.lan", "10.0.0.7"], now=NOW + timedelta(days=1))
    assert second.regenerated is False
    assert second.fingerprint_sha256 == first.fingerprint_sha256
    assert second.not_after == first.not_after
    assert second.key.read_bytes() == key_bytes


def test_a_host_not_covered_regenerates(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, ["10.0.0.7"], now=NOW)
    second = ensure_certificate(tmp_path, ["10.0.0.7", "10.0.0.8"], now=NOW)
    assert second.regenerated is True
    assert second.fingerprint_sha256 != first.fingerprint_sha256
    ips = _san(second).get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("10.0.0.8") in ips
    assert ipaddress.ip_address("10.0.0.7") in ips


def test_close_to_expiry_regenerates(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, [], now=NOW)
    still_fine = ensure_certificate(tmp_path, [], now=first.not_after - timedelta(days=31))
    assert still_fine.regenerated is False
    renewed = ensure_certificate(tmp_path, [], now=first.not_after - timedelta(days=29))
    assert renewed.regenerated is True
    assert renewed.fingerprint_sha256 != first.fingerprint_sha256
    assert renewed.not_after > first.not_after


def test_a_certificate_not_yet_valid_regenerates(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, [], now=NOW)
    earlier = ensure_certificate(tmp_path, [], now=NOW - timedelta(days=2))
    assert earlier.regenerated is True
    assert earlier.fingerprint_sha256 != first.fingerprint_sha256


def test_a_corrupt_certificate_regenerates(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, [], now=NOW)
    first.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    second = ensure_certificate(tmp_path, [], now=NOW)
    assert second.regenerated is True
    assert second.fingerprint_sha256 != first.fingerprint_sha256
    assert _load(second).not_valid_after_utc == second.not_after


def test_a_key_not_matching_the_certificate_regenerates(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path / "a", [], now=NOW)
    other = ensure_certificate(tmp_path / "b", [], now=NOW)
    shutil.copyfile(other.key, first.key)
    again = ensure_certificate(tmp_path / "a", [], now=NOW)
    assert again.regenerated is True
    assert again.fingerprint_sha256 not in {first.fingerprint_sha256, other.fingerprint_sha256}


def test_a_key_readable_by_others_regenerates(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, [], now=NOW)
    os.chmod(first.key, 0o644)
    again = ensure_certificate(tmp_path, [], now=NOW)
    assert again.regenerated is True
    assert _mode(again.key) == 0o600


def test_san_and_extensions(tmp_path: Path) -> None:
    hosts = ["192.168.1.50", "fd00::1", "[fe80::2]", "Door-Panel.LAN", "gw.example.com"]
    files = ensure_certificate(tmp_path, hosts, now=NOW)
    cert = _load(files)
    san = _san(files)
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("192.168.1.50"),
        ipaddress.ip_address("fd00::1"),
        ipaddress.ip_address("fe80::2"),
        ipaddress.ip_address("127.0.0.1"),
    }
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "door-panel.lan",
        "gw.example.com",
        "localhost",
        HOSTNAME,
        f"{HOSTNAME}.local",
    }
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in common_names] == [f"Luckey gateway {HOSTNAME}"]
    assert cert.issuer == cert.subject
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical is True
    assert basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature is True
    assert usage.key_cert_sign is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_before_utc == NOW - timedelta(hours=1)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=825)
    assert files.not_after == cert.not_valid_after_utc
    assert cert.serial_number > 0


def test_serials_are_random(tmp_path: Path) -> None:
    a = _load(ensure_certificate(tmp_path / "a", [], now=NOW))
    b = _load(ensure_certificate(tmp_path / "b", [], now=NOW))
    assert a.serial_number != b.serial_number


def test_an_unusable_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a host name"):
        ensure_certificate(tmp_path, ["bad host"], now=NOW)


def test_a_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ensure_certificate(tmp_path, [], now=datetime(2030, 1, 1))


def _browser_style(der: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())


def test_fingerprint_is_sha256_of_the_der(tmp_path: Path) -> None:
    files = ensure_certificate(tmp_path, [], now=NOW)
    der = ssl.PEM_cert_to_DER_cert(files.cert.read_text())
    assert files.fingerprint_sha256 == _browser_style(der)
    assert len(files.fingerprint_sha256) == 32 * 3 - 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_fingerprint_matches_openssl(tmp_path: Path) -> None:
    files = ensure_certificate(tmp_path, [], now=NOW)
    out = subprocess.run(
        ["openssl", "x509", "-in", str(files.cert), "-noout", "-fingerprint", "-sha256"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip().split("=", 1)[1] == files.fingerprint_sha256


def test_a_symlinked_key_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    ensure_certificate(folder, [], now=NOW)
    elsewhere = tmp_path / "elsewhere.key"
    elsewhere.write_bytes(b"precious")
    (folder / "tls.key").unlink()
    (folder / "tls.key").symlink_to(elsewhere)
    with pytest.raises(TlsError, match=r"tls\.key: refusing to read or replace a symlink"):
        ensure_certificate(folder, ["10.9.9.9"], now=NOW)
    assert elsewhere.read_bytes() == b"precious"
    assert (folder / "tls.key").is_symlink()


def test_a_dangling_symlinked_key_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    folder.mkdir()
    target = tmp_path / "planted.key"
    (folder / "tls.key").symlink_to(target)
    with pytest.raises(TlsError, match="symlink"):
        ensure_certificate(folder, [], now=NOW)
    assert not target.exists()
    assert not (folder / "tls.crt").exists()


def test_generation_is_logged_once_without_key_material(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.tls"):
        files = ensure_certificate(tmp_path, [], now=NOW)
        ensure_certificate(tmp_path, [], now=NOW)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    message = infos[0].getMessage()
    assert files.fingerprint_sha256 in message
    assert files.not_after.isoformat() in message
    key_pem = files.key.read_text()
    body = "".join(key_pem.splitlines()[1:-1])
    assert all("PRIVATE KEY" not in r.getMessage() for r in caplog.records)
    assert all(body[:40] not in r.getMessage() for r in caplog.records)


def test_server_context_requires_tls12(tmp_path: Path) -> None:
    context = server_context(ensure_certificate(tmp_path, [], now=NOW))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # browsers present no client certificate


async def test_https_end_to_end(tmp_path: Path) -> None:
    files = ensure_certificate(tmp_path, [])  # the real clock: the client checks validity

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello over tls")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(files))
        await site.start()
        port = runner.addresses[0][1]
        url = f"https://127.0.0.1:{port}/"
        trusting = ssl.create_default_context(cafile=files.cert)
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=trusting) as response:
                assert response.status == 200
                assert await response.text() == "hello over tls"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(url, ssl=ssl.create_default_context()):
                    pass
    finally:
        await runner.cleanup()
