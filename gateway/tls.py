"""The self-signed HTTPS certificate the gateway's local web app serves, made on the device.

Browsers warn about it once; the installer accepts it after comparing the SHA-256 fingerprint
printed by the gateway with the one the browser shows. The key never leaves ``tls.key`` (0600):
it is not logged, and no error message quotes it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.files import sync_directory

_LOGGER = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
VALIDITY = timedelta(days=825)
RENEW_BEFORE = timedelta(days=30)
BACKDATE = timedelta(hours=1)
_CN_PREFIX = "Luckey gateway "
_CN_MAX = 64  # X.520 upper bound on a common name

SanEntry: TypeAlias = x509.DNSName | x509.IPAddress


class TlsError(Exception):
    """The certificate files cannot be written or used safely; the message says why."""


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """Where the certificate and key are, and what a browser will show about them."""

    cert: Path
    key: Path
    fingerprint_sha256: str
    not_after: datetime
    regenerated: bool


def ensure_certificate(
    folder: Path, hosts: Sequence[str], *, now: datetime | None = None
) -> CertificateFiles:
    """A usable certificate for ``hosts`` in ``folder``: the existing one, or a new one."""
    moment = _utc(now)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    _prepare_folder(folder)
    _refuse_symlinks(cert_path, key_path)
    hostname = socket.gethostname()
    wanted = required_names(hosts, hostname)
    existing = _load_existing(cert_path, key_path)
    if existing is not None and _still_good(existing, wanted, moment):
        return _files(cert_path, key_path, existing, regenerated=False)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, hostname, wanted, moment)
    _write_atomically(key_path, _key_pem(key), 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    files = _files(cert_path, key_path, cert, regenerated=True)
    _LOGGER.info(
        "generated a self-signed TLS certificate %s: SHA-256 fingerprint %s, expires %s",
        cert_path,
        files.fingerprint_sha256,
        files.not_after.isoformat(),
    )
    return files


def server_context(files: CertificateFiles) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting the certificate and key in ``files``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=files.cert, keyfile=files.key)
    return context


def required_names(hosts: Iterable[str], hostname: str) -> list[SanEntry]:
    """The SAN entries for ``hosts`` plus localhost, 127.0.0.1, the hostname and its .local name."""
    short = hostname.split(".", 1)[0]
    candidates = [*hosts, "localhost", "127.0.0.1", hostname, f"{short}.local"]
    entries: list[SanEntry] = []
    for host in candidates:
        entry = san_entry(host)
        if entry not in entries:
            entries.append(entry)
    return entries


def san_entry(host: str) -> SanEntry:
    """An IPAddress entry for an IP literal (``[::1]`` too), else a lower-case DNSName entry."""
    text = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if not text or not text.isascii() or any(c.isspace() or c in "/[]" for c in text):
        raise ValueError(f"not a host name or IP address: {host!r}")
    return x509.DNSName(text.lower().rstrip("."))


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 of the certificate's DER, as colon-separated upper-case hex pairs."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _utc(now: datetime | None) -> datetime:
    """The aware UTC moment ``now`` names, or the current one; naive datetimes are refused."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _prepare_folder(folder: Path) -> None:
    """Create ``folder`` if needed and make it 0700; a symlinked folder is refused."""
    if folder.is_symlink():
        raise TlsError(f"{folder}: refusing to use a symlink as the TLS folder")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask, and the folder may be old


def _refuse_symlinks(*paths: Path) -> None:
    """Raise TlsError if any of ``paths`` is a symlink (dangling ones too)."""
    for path in paths:
        if path.is_symlink():
            raise TlsError(f"{path}: refusing to read or replace a symlink; remove it first")


def _load_existing(cert_path: Path, key_path: Path) -> x509.Certificate | None:
    """The stored certificate if both files parse, the key is private and matches it."""
    try:
        cert = x509.load_pem_x509_certificate(_read_private(cert_path, require_private=False))
        key = serialization.load_pem_private_key(
            _read_private(key_path, require_private=True), password=None
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, TlsError) as err:
        _LOGGER.warning(
            "TLS files in %s unusable (%s); making new ones", cert_path.parent, _why(err)
        )
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        _LOGGER.warning("TLS key in %s does not match the certificate; making a new one", key_path)
        return None
    return cert


def _why(err: Exception) -> str:
    """A reason for ``err`` safe to log: never the bytes that failed to parse."""
    if isinstance(err, TlsError):
        return str(err)
    if isinstance(err, OSError):
        return f"{err.filename}: {err.strerror}"
    return "they do not parse as a PEM certificate and key"


def _read_private(path: Path, *, require_private: bool) -> bytes:
    """Regular file ``path`` read not via a symlink; ``require_private``: no group/other bits."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise TlsError(f"{path}: not a regular file")
        if require_private and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TlsError(f"{path}: readable by others")
        return file.read()


def _still_good(cert: x509.Certificate, wanted: Sequence[SanEntry], now: datetime) -> bool:
    """Whether ``cert`` is valid now and beyond RENEW_BEFORE, naming every ``wanted`` entry."""
    if cert.not_valid_before_utc > now or cert.not_valid_after_utc - now <= RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = set(san)
    return all(entry in present for entry in wanted)


def _self_signed(
    key: ec.EllipticCurvePrivateKey, hostname: str, names: Sequence[SanEntry], now: datetime
) -> x509.Certificate:
    """A self-signed server certificate for ``names``, valid from ``now`` - 1 h for VALIDITY."""
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, (_CN_PREFIX + hostname)[:_CN_MAX])]
    )
    start = now - BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(159) + 1)  # positive, at most 20 octets
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_usage() -> x509.KeyUsage:
    """KeyUsage allowing digital signatures only (ECDHE key exchange needs nothing more)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _files(
    cert_path: Path, key_path: Path, cert: x509.Certificate, *, regenerated: bool
) -> CertificateFiles:
    """The CertificateFiles describing ``cert`` stored at the given paths."""
    return CertificateFiles(
        cert=cert_path,
        key=key_path,
        fingerprint_sha256=fingerprint(cert),
        not_after=cert.not_valid_after_utc,
        regenerated=regenerated,
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` via a synced temp file in its folder; never via a symlink."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _refuse_symlinks(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    sync_directory(path.parent)
