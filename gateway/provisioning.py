"""Claiming a gateway: its device key, the cloud's claim endpoint, and the identity it stores.

docs/cloud-contract.md, "Claiming (provisioning)". The private key is made on the gateway and
never leaves it; the cloud signs a certificate for it and assigns the gateway id. Everything is
stored in ``<state_dir>/cloud/`` (0700, files 0600), under the file names CloudSection expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from gateway import __version__
from gateway.config import Config, config_to_dict, https_or_loopback, parse_config
from gateway.files import UnsafeFile, read_regular_file

#: The folder under the state directory holding the cloud identity.
CLOUD_DIR = "cloud"
KEY_FILE = "gateway.key"
CERT_FILE = "gateway.pem"
CA_FILE = "ca.pem"
SIGNING_KEY_FILE = "cloud-signing.pub"
IDENTITY_FILE = "identity.json"
#: The claim endpoint, relative to the cloud URL the installer gives.
CLAIM_PATH = "/api/gateways/claim"
CLAIM_TIMEOUT_S = 30.0
#: The most of a claim answer read (three PEM blocks and a few names fit easily).
ANSWER_MAX_BYTES = 256 * 1024
#: The most of identity.json or a key file read back.
FILE_MAX_BYTES = 64 * 1024
#: Local state files a factory reset removes (beside each database its SQLite sibling files).
STATE_DATABASES = ("cache.db", "outbox.db", "sun_counters.db", "journal.db")
SQLITE_SIBLINGS = ("-wal", "-shm", "-journal")
STATE_FILES = (
    "door_modes.json",
    "cloud_link.json",
    "commands_done.json",
    "snapshot.download",
    "snapshot.download.packed",
)

_GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLAIM_CODE = re.compile(r"[A-Za-z0-9]{8,64}")
_HOST = re.compile(r"[A-Za-z0-9.:_\[\]-]{1,253}")
CLAIM_CODE_RULE = (
    "8 to 64 letters and digits (A-Z a-z 0-9); spaces and hyphens between groups are ignored"
)


class ProvisioningError(Exception):
    """A problem with claiming or with the stored identity; the message says what to do."""


class IdentityError(ProvisioningError):
    """The stored identity or device key is damaged or unsafe (a symbolic link, bad content)."""


class ClaimError(ProvisioningError):
    """The claim did not happen; nothing was stored."""


class InvalidClaimInput(ClaimError):
    """The cloud URL or the claim code is not acceptable (nothing was sent)."""


class AlreadyClaimed(ClaimError):
    """This gateway already has a cloud identity; claiming again needs ``replace=True``."""


class UnknownClaimCode(ClaimError):
    """The cloud knows no such claim code (404)."""


class ClaimCodeExpired(ClaimError):
    """The claim code expired before it was used (410)."""


class ClaimCodeUsed(ClaimError):
    """The claim code was already used to claim a gateway (409)."""


class CloudUnreachable(ClaimError):
    """No answer from the cloud (connection refused, name unknown, TLS failure, timeout)."""


class BadClaimAnswer(ClaimError):
    """The cloud's answer is malformed or does not fit this gateway; ``field`` names the part."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(
            f"the cloud's claim answer is not usable: {field}: {problem}; nothing was stored "
            "(the claim code may be spent: make a new one in the cloud console if it is refused)"
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """What the cloud assigned this gateway (stored in identity.json; no keys in it)."""

    gateway_id: str
    mqtt_host: str
    mqtt_port: int
    api_url: str
    cloud_url: str
    claimed_at: datetime
    device_fingerprint: str

    def to_json(self) -> dict[str, Any]:
        """The identity as identity.json holds it."""
        return {
            "format": 1,
            "gateway_id": self.gateway_id,
            "mqtt_host": self.mqtt_host,
            "mqtt_port": self.mqtt_port,
            "api_url": self.api_url,
            "cloud_url": self.cloud_url,
            "claimed_at": self.claimed_at.isoformat(),
            "device_fingerprint": self.device_fingerprint,
        }


@dataclass(frozen=True, slots=True)
class ProvisioningState:
    """Claimed or not, by which id, and the device key's fingerprint (None: no key made yet)."""

    claimed: bool
    fingerprint: str | None
    identity: Identity | None

    def to_json(self) -> dict[str, Any]:
        """The state for ``provision --status --json`` (never a key)."""
        return {
            "state": "claimed" if self.claimed else "unclaimed",
            "gateway_id": None if self.identity is None else self.identity.gateway_id,
            "device_fingerprint": self.fingerprint,
            "identity": None if self.identity is None else self.identity.to_json(),
        }


# --- files ---------------------------------------------------------------------------------------


def cloud_dir(state_dir: Path) -> Path:
    """The folder of the cloud identity: ``<state_dir>/cloud``."""
    return state_dir / CLOUD_DIR


def _ensure_cloud_dir(state_dir: Path) -> Path:
    """Create ``<state_dir>/cloud`` (0700) if needed; IdentityError if it is a symbolic link."""
    folder = cloud_dir(state_dir)
    if folder.is_symlink():
        raise IdentityError(f"{folder} is a symbolic link: refusing to store keys through it")
    state_dir.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    return folder


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600) via a temporary file; refuse a symbolic link there."""
    if path.is_symlink():
        raise IdentityError(f"{path} is a symbolic link: refusing to write through it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash: O_EXCL must make a fresh one, 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_small(path: Path) -> bytes | None:
    """The bytes of regular file ``path`` (None if missing); IdentityError if unsafe or too big."""
    try:
        return read_regular_file(path, FILE_MAX_BYTES)
    except UnsafeFile as err:
        raise IdentityError(str(err)) from None


# --- the device key ------------------------------------------------------------------------------


def _load_device_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    """The P-256 key in ``path``, or None if there is none; IdentityError if it is unusable."""
    data = _read_small(path)
    if data is None:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityError(f"{path} does not hold a readable private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError(f"{path} does not hold a P-256 private key")
    return key


def ensure_device_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    """This gateway's P-256 key, made at ``<state_dir>/cloud/gateway.key`` (0600) on first use."""
    path = _ensure_cloud_dir(state_dir) / KEY_FILE
    key = _load_device_key(path)
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_atomic(path, pem)
    return key


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    """The SubjectPublicKeyInfo DER of a public key."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """The device fingerprint: the first 16 hex digits of SHA-256 of the public key's DER."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return hashlib.sha256(_public_der(public)).hexdigest()[:16]


def make_csr(key: ec.EllipticCurvePrivateKey) -> str:
    """A PEM certificate signing request for ``key``, its Common Name the device fingerprint."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fingerprint(key))])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


# --- claiming ------------------------------------------------------------------------------------


def normalize_claim_code(code: str) -> str:
    """The claim code without spaces and hyphens; InvalidClaimInput (never echoing it) if bad."""
    compact = "".join(ch for ch in code if not ch.isspace() and ch != "-")
    if not _CLAIM_CODE.fullmatch(compact):
        raise InvalidClaimInput(f"the claim code is not valid: it must be {CLAIM_CODE_RULE}")
    return compact


def check_cloud_url(url: str) -> str:
    """The cloud URL without a trailing slash; InvalidClaimInput unless https (or loopback http)."""
    if not https_or_loopback(url) or "?" in url or "#" in url:
        raise InvalidClaimInput(
            f"the cloud URL {url!r} is not allowed: give an https:// URL such as "
            "https://cloud.example.com (plain http only to 127.0.0.1, localhost or [::1]), "
            "without user, password, query or fragment"
        )
    return url.rstrip("/")


def _field(body: Mapping[str, Any], name: str, kind: type) -> Any:
    """``body[name]`` if it is a ``kind``; BadClaimAnswer naming the field otherwise."""
    if name not in body:
        raise BadClaimAnswer(name, "missing")
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadClaimAnswer(name, f"expected a {kind.__name__}")
    return value


def _check_answer(
    body: object, key: ec.EllipticCurvePrivateKey, now: datetime
) -> tuple[str, str, int, str, bytes, bytes, bytes]:
    """The checked answer: id, MQTT host and port, API URL and the three PEMs to store."""
    if not isinstance(body, dict):
        raise BadClaimAnswer("(body)", "expected a JSON object")
    gateway_id = _field(body, "gateway_id", str)
    if not _GATEWAY_ID.fullmatch(gateway_id):
        raise BadClaimAnswer("gateway_id", "expected 1 to 64 of A-Z a-z 0-9 _ -")
    mqtt_host = _field(body, "mqtt_host", str)
    if not _HOST.fullmatch(mqtt_host):
        raise BadClaimAnswer("mqtt_host", "expected a host name or address")
    mqtt_port = _field(body, "mqtt_port", int)
    if not 1 <= mqtt_port <= 65535:
        raise BadClaimAnswer("mqtt_port", "expected a port from 1 to 65535")
    api_url = _field(body, "api_url", str)
    # Exactly what [cloud] api_url accepts: an identity the daemon could not start with is
    # refused here, before the one-time code is spent on it.
    if not api_url.startswith("https://") or not https_or_loopback(api_url):
        raise BadClaimAnswer("api_url", "expected an https:// URL")
    cert_pem = _field(body, "certificate_pem", str).encode("ascii", "replace")
    ca_pem = _field(body, "ca_pem", str).encode("ascii", "replace")
    signing_pem = _field(body, "signing_key_pem", str).encode("ascii", "replace")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise BadClaimAnswer("certificate_pem", "not a PEM certificate") from None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise BadClaimAnswer("certificate_pem", "certifies another key than this gateway's")
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [attr.value for attr in common_names] != [gateway_id]:
        raise BadClaimAnswer("certificate_pem", "its Common Name is not the gateway_id")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise BadClaimAnswer("certificate_pem", "not valid now (check the gateway's clock)")
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise BadClaimAnswer("ca_pem", "not a PEM certificate") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise BadClaimAnswer("ca_pem", "this CA did not issue the gateway's certificate") from None
    if not signing_pem.lstrip().startswith(b"-----BEGIN PUBLIC KEY-----"):
        raise BadClaimAnswer("signing_key_pem", "expected a PEM PUBLIC KEY block")
    try:
        signing_key = serialization.load_pem_public_key(signing_pem)
    except (ValueError, UnsupportedAlgorithm):
        raise BadClaimAnswer("signing_key_pem", "not a PEM public key") from None
    if not isinstance(signing_key, Ed25519PublicKey):
        raise BadClaimAnswer("signing_key_pem", "expected an Ed25519 public key")
    return gateway_id, mqtt_host, mqtt_port, api_url, cert_pem, ca_pem, signing_pem


_REFUSALS: dict[int, tuple[type[ClaimError], str]] = {
    404: (
        UnknownClaimCode,
        "the cloud knows no such claim code; check it for typos, or make a new one in the "
        "cloud console",
    ),
    410: (
        ClaimCodeExpired,
        "this claim code has expired; make a new one in the cloud console",
    ),
    409: (
        ClaimCodeUsed,
        "this claim code was already used to claim a gateway; make a new one in the cloud console",
    ),
}


async def _post_claim(
    session: aiohttp.ClientSession, url: str, request: dict[str, str], timeout_s: float
) -> object:
    """POST the claim request; the answer's JSON, or the matching ClaimError."""
    try:
        async with session.post(
            url, json=request, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if response.status in _REFUSALS:
                cls, message = _REFUSALS[response.status]
                raise cls(message)
            if response.status not in (200, 201):
                raise ClaimError(
                    f"the cloud at {url} answered {response.status} {response.reason}; "
                    "nothing was stored: try again later, or ask the cloud's operator"
                )
            raw = b""
            # read(n) returns what has arrived so far: read until the end, within the bound.
            while len(raw) <= ANSWER_MAX_BYTES:
                chunk = await response.content.read(ANSWER_MAX_BYTES + 1 - len(raw))
                if not chunk:
                    break
                raw += chunk
    except (TimeoutError, aiohttp.ClientError) as err:
        what = "no answer in time" if isinstance(err, TimeoutError) else type(err).__name__
        raise CloudUnreachable(
            f"cannot reach the cloud at {url} ({what}); check the URL and the gateway's "
            "network, then try again"
        ) from None
    if len(raw) > ANSWER_MAX_BYTES:
        raise BadClaimAnswer("(body)", f"over {ANSWER_MAX_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise BadClaimAnswer("(body)", "not JSON") from None


async def claim(
    cloud_url: str,
    claim_code: str,
    state_dir: Path,
    *,
    session: aiohttp.ClientSession | None = None,
    timeout_s: float = CLAIM_TIMEOUT_S,
    replace: bool = False,
    now: datetime | None = None,
) -> Identity:
    """Claim this gateway with a one-time code; store and return its identity (ClaimError if not)."""
    base = check_cloud_url(cloud_url)
    code = normalize_claim_code(claim_code)
    try:
        current = load_identity(state_dir)
    except IdentityError:
        if not replace:
            raise
        current = None  # a damaged identity is what --replace is for
    if current is not None and not replace:
        raise AlreadyClaimed(
            f"this gateway is already claimed as {current.gateway_id} (from {current.cloud_url}); "
            "claim it again with --replace, or run factory-reset first"
        )
    key = ensure_device_key(state_dir)
    request = {
        "claim_code": code,
        "csr_pem": make_csr(key),
        "device_fingerprint": fingerprint(key),
        "software_version": __version__,
    }
    url = base + CLAIM_PATH
    if session is None:
        async with aiohttp.ClientSession() as own:
            body = await _post_claim(own, url, request, timeout_s)
    else:
        body = await _post_claim(session, url, request, timeout_s)
    at = now if now is not None else datetime.now(UTC)
    gateway_id, mqtt_host, mqtt_port, api_url, cert, ca, signing = _check_answer(body, key, at)
    identity = Identity(
        gateway_id=gateway_id,
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        api_url=api_url,
        cloud_url=base,
        claimed_at=at,
        device_fingerprint=fingerprint(key),
    )
    folder = _ensure_cloud_dir(state_dir)
    # identity.json goes last (and, on a replace, first away): it marks a complete identity.
    (folder / IDENTITY_FILE).unlink(missing_ok=True)
    _write_atomic(folder / CERT_FILE, cert)
    _write_atomic(folder / CA_FILE, ca)
    _write_atomic(folder / SIGNING_KEY_FILE, signing)
    text = json.dumps(identity.to_json(), indent=2) + "\n"
    _write_atomic(folder / IDENTITY_FILE, text.encode("utf-8"))
    return identity


def claim_sync(
    cloud_url: str, claim_code: str, state_dir: Path, *, replace: bool = False
) -> Identity:
    """``claim`` run to completion in a fresh event loop (for the command line)."""
    return asyncio.run(claim(cloud_url, claim_code, state_dir, replace=replace))


# --- the stored identity -------------------------------------------------------------------------


def load_identity(state_dir: Path) -> Identity | None:
    """The stored identity, or None if unclaimed; IdentityError if identity.json is damaged."""
    path = cloud_dir(state_dir) / IDENTITY_FILE
    if cloud_dir(state_dir).is_symlink():
        raise IdentityError(f"{cloud_dir(state_dir)} is a symbolic link: refusing to use it")
    data = _read_small(path)
    if data is None:
        return None
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        identity = Identity(
            gateway_id=str(raw["gateway_id"]),
            mqtt_host=str(raw["mqtt_host"]),
            mqtt_port=int(raw["mqtt_port"]),
            api_url=str(raw["api_url"]),
            cloud_url=str(raw["cloud_url"]),
            claimed_at=datetime.fromisoformat(str(raw["claimed_at"])),
            device_fingerprint=str(raw.get("device_fingerprint", "")),
        )
    except (ValueError, TypeError, KeyError) as err:
        raise IdentityError(
            f"{path} is damaged ({err}); claim the gateway again with `luckey-gateway "
            "provision --replace`"
        ) from None
    if not _GATEWAY_ID.fullmatch(identity.gateway_id):
        raise IdentityError(f"{path} is damaged (gateway_id); claim the gateway again")
    return identity


def cloud_overlay(data: Mapping[str, Any], state_dir: Path) -> dict[str, Any]:
    """The raw config ``data`` with ``[cloud]`` filled from the stored identity, as a new dict.

    Only when an identity is stored and the configuration does not itself set
    ``[cloud] enabled = true``: an explicit configuration wins, and is returned unchanged. Other
    ``[cloud]`` keys it sets (keepalive_s, ...) are kept. ``state_dir`` is the resolved state
    directory (``Config.gateway.state_dir``); the four file paths become absolute under it.
    IdentityError if the stored identity is damaged (the caller may run without the cloud).
    """
    result = dict(data)
    section = data.get("cloud", {})
    if not isinstance(section, Mapping) or section.get("enabled") is True:
        return result
    identity = load_identity(state_dir)
    if identity is None:
        return result
    folder = cloud_dir(state_dir).absolute()
    result["cloud"] = {
        **section,
        "enabled": True,
        "gateway_id": identity.gateway_id,
        "mqtt_host": identity.mqtt_host,
        "mqtt_port": identity.mqtt_port,
        "api_url": identity.api_url,
        "ca_file": str(folder / CA_FILE),
        "cert_file": str(folder / CERT_FILE),
        "key_file": str(folder / KEY_FILE),
        "signing_key_file": str(folder / SIGNING_KEY_FILE),
    }
    return result


def provisioning_state(state_dir: Path) -> ProvisioningState:
    """Claimed or unclaimed, the identity, and the device key's fingerprint (nothing is made)."""
    identity = load_identity(state_dir)
    key = _load_device_key(cloud_dir(state_dir) / KEY_FILE)
    return ProvisioningState(
        claimed=identity is not None,
        fingerprint=None if key is None else fingerprint(key),
        identity=identity,
    )


def _remove(paths: list[Path]) -> list[Path]:
    """Unlink each of ``paths`` that exists (a symbolic link itself, never its target)."""
    removed = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def forget_identity(state_dir: Path, *, new_key: bool = False) -> list[Path]:
    """Remove identity.json and the cloud's files (the device key too if ``new_key``); list them."""
    folder = cloud_dir(state_dir)
    if folder.is_symlink():
        raise IdentityError(f"{folder} is a symbolic link: remove it by hand")
    names = [IDENTITY_FILE, CERT_FILE, CA_FILE, SIGNING_KEY_FILE]
    if new_key:
        names.append(KEY_FILE)
    return _remove([folder / name for name in names])


def factory_reset(state_dir: Path) -> list[Path]:
    """Remove identity, device key, STATE_DATABASES and STATE_FILES (site keys stay); list them."""
    removed = forget_identity(state_dir, new_key=True)
    names = [db + suffix for db in STATE_DATABASES for suffix in ("", *SQLITE_SIBLINGS)]
    removed += _remove([state_dir / name for name in (*names, *STATE_FILES)])
    with contextlib.suppress(OSError):  # only if empty: anything else in it is kept
        cloud_dir(state_dir).rmdir()
    return removed


def with_identity(config: Config) -> Config:
    """``config`` with ``[cloud]`` filled from the claimed identity (``cloud_overlay``'s rules)."""
    data = config_to_dict(config)
    overlaid = cloud_overlay(data, config.gateway.state_dir.absolute())
    if overlaid == data:
        return config
    return parse_config(overlaid, source=config.source)
