"""Tests for gateway.provisioning and the provision / factory-reset commands, against a fake
claim endpoint served over real HTTP on loopback (docs/cloud-contract.md, "Claiming")."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from gateway import provisioning as prov
from gateway.app import Gateway
from gateway.cli import main
from gateway.config import parse_config
from tests.conftest import config_data, pick_free_port, toml_text

VALID = "ABCD-EFGH-2345"  # as printed: hyphens between groups
VALID_SENT = "ABCDEFGH2345"
EXPIRED = "EXPIRED0CODE"
USED = "USED0CODE000"
API_URL = "https://api.cloud.test"

Tamper = Callable[[dict[str, Any]], dict[str, Any]]


def make_ca(name: str = "Test Claim CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
) -> x509.Certificate:
    """A client certificate for ``public_key`` with ``common_name``, issued by the CA."""
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


class FakeClaimCloud:
    """The cloud's claim endpoint as the contract describes it, on loopback in its own thread.

    Codes are single use: a valid code claims once, then answers 409; ``tamper`` rewrites a
    successful answer (for malformed-answer tests); ``delay_s`` holds every answer back.
    """

    def __init__(self) -> None:
        self.ca_key, self.ca_cert = make_ca()
        self.signing_key = Ed25519PrivateKey.generate()
        self.codes: dict[str, str] = {VALID_SENT: "valid", EXPIRED: "expired", USED: "used"}
        self.requests: list[dict[str, Any]] = []
        self.tamper: Tamper | None = None
        self.split_answer = False
        self.delay_s = 0.0
        self.claimed = 0
        self.port = pick_free_port()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def signing_pem(self) -> str:
        return (
            self.signing_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/gateways/claim", self._claim)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _claim(self, request: web.Request) -> web.StreamResponse:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        body = await request.json()
        self.requests.append(body)
        state = self.codes.get(body.get("claim_code"))
        if state is None:
            return web.json_response({"error": "unknown claim code"}, status=404)
        if state == "expired":
            return web.json_response({"error": "expired"}, status=410)
        if state == "used":
            return web.json_response({"error": "already used"}, status=409)
        csr = x509.load_pem_x509_csr(body["csr_pem"].encode("ascii"))
        public_key = csr.public_key()
        if not csr.is_signature_valid or not isinstance(public_key, ec.EllipticCurvePublicKey):
            return web.json_response({"error": "bad csr"}, status=400)
        self.codes[body["claim_code"]] = "used"
        self.claimed += 1
        gateway_id = f"gw-{self.claimed}"
        answer: dict[str, Any] = {
            "gateway_id": gateway_id,
            "mqtt_host": "mqtt.cloud.test",
            "mqtt_port": 8883,
            "api_url": API_URL,
            "certificate_pem": pem(issue(self.ca_key, self.ca_cert, public_key, gateway_id)),
            "ca_pem": pem(self.ca_cert),
            "signing_key_pem": self.signing_pem,
        }
        if self.tamper is not None:
            answer = self.tamper(answer)
        if not self.split_answer:
            return web.json_response(answer, status=201)
        data = json.dumps(answer).encode()  # in two writes, the second a moment later
        response = web.StreamResponse(status=201, headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[:100])
        await asyncio.sleep(0.05)
        await response.write(data[100:])
        await response.write_eof()
        return response


@pytest.fixture
def cloud() -> Iterator[FakeClaimCloud]:
    fake = FakeClaimCloud()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


CLOUD_NAMES = {"identity.json", "gateway.pem", "ca.pem", "cloud-signing.pub"}


def cloud_files(state_dir: Path) -> set[str]:
    folder = state_dir / "cloud"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def exists(path: Path) -> bool:
    return path.exists()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the device key -------------------------------------------------------------------------


def test_the_device_key_is_made_once_0600_in_a_0700_folder(state_dir: Path) -> None:
    key = prov.ensure_device_key(state_dir)
    path = state_dir / "cloud" / "gateway.key"
    assert mode(path) == 0o600
    assert mode(state_dir / "cloud") == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    again = prov.ensure_device_key(state_dir)
    assert prov.fingerprint(again) == prov.fingerprint(key)
    assert isinstance(key.curve, ec.SECP256R1)


def test_the_device_key_refuses_a_symbolic_link(state_dir: Path, tmp_path: Path) -> None:
    (state_dir / "cloud").mkdir(parents=True)
    target = tmp_path / "elsewhere.key"
    (state_dir / "cloud" / "gateway.key").symlink_to(target)
    with pytest.raises(prov.IdentityError, match="symbolic link"):
        prov.ensure_device_key(state_dir)
    assert not target.exists()


def test_the_csr_names_the_fingerprint_and_is_signed_by_the_key(state_dir: Path) -> None:
    key = prov.ensure_device_key(state_dir)
    csr = x509.load_pem_x509_csr(prov.make_csr(key).encode("ascii"))
    assert csr.is_signature_valid
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == prov.fingerprint(key)
    assert len(cn) == 16
    int(str(cn), 16)  # hex


# --- claiming -------------------------------------------------------------------------------


async def test_a_claim_stores_the_identity_0600(cloud: FakeClaimCloud, state_dir: Path) -> None:
    identity = await prov.claim(cloud.url, VALID, state_dir)
    assert identity.gateway_id == "gw-1"
    folder = state_dir / "cloud"
    assert cloud_files(state_dir) == CLOUD_NAMES | {"gateway.key"}
    for name in CLOUD_NAMES | {"gateway.key"}:
        assert mode(folder / name) == 0o600, name
    stored = json.loads((folder / "identity.json").read_text())
    assert stored["gateway_id"] == "gw-1"
    assert stored["mqtt_host"] == "mqtt.cloud.test"
    assert stored["mqtt_port"] == 8883
    assert stored["api_url"] == API_URL
    assert stored["cloud_url"] == cloud.url
    assert datetime.fromisoformat(stored["claimed_at"]).tzinfo is not None
    cert = x509.load_pem_x509_certificate((folder / "gateway.pem").read_bytes())
    key = prov.ensure_device_key(state_dir)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
    assert (folder / "ca.pem").read_text() == pem(cloud.ca_cert)
    assert (folder / "cloud-signing.pub").read_text() == cloud.signing_pem
    assert prov.load_identity(state_dir) == identity
    # What went up: the normalised code, a CSR of the device key, its fingerprint, the version.
    (sent,) = cloud.requests
    assert sent["claim_code"] == VALID_SENT
    assert sent["device_fingerprint"] == prov.fingerprint(key)
    assert sent["software_version"]
    assert "PRIVATE" not in json.dumps(sent)


@pytest.mark.parametrize(
    ("code", "error", "words"),
    [
        ("NOSUCHCODE99", prov.UnknownClaimCode, "knows no such claim code"),
        (EXPIRED, prov.ClaimCodeExpired, "expired; make a new one"),
        (USED, prov.ClaimCodeUsed, "already used to claim a gateway; make a new one"),
    ],
)
async def test_refused_codes_say_what_to_do_and_store_nothing(
    cloud: FakeClaimCloud, state_dir: Path, code: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words) as caught:
        await prov.claim(cloud.url, code, state_dir)
    assert isinstance(caught.value, prov.ClaimError)
    assert code not in str(caught.value)
    assert cloud_files(state_dir) == {"gateway.key"}
    assert prov.load_identity(state_dir) is None


async def test_a_code_claims_once(cloud: FakeClaimCloud, tmp_path: Path) -> None:
    await prov.claim(cloud.url, VALID, tmp_path / "first")
    with pytest.raises(prov.ClaimCodeUsed):
        await prov.claim(cloud.url, VALID, tmp_path / "second")
    assert prov.load_identity(tmp_path / "second") is None


def other_key_cert(cloud: FakeClaimCloud) -> Tamper:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    return lambda a: (
        a | {"certificate_pem": pem(issue(cloud.ca_key, cloud.ca_cert, other, a["gateway_id"]))}
    )


def other_ca(answer: dict[str, Any]) -> dict[str, Any]:
    return answer | {"ca_pem": pem(make_ca("Another CA")[1])}


def without(name: str) -> Tamper:
    return lambda a: {k: v for k, v in a.items() if k != name}


def fixed(tamper: Tamper) -> Callable[[FakeClaimCloud], Tamper]:
    return lambda _cloud: tamper


@pytest.mark.parametrize(
    ("make_tamper", "field"),
    [
        (other_key_cert, "certificate_pem"),
        (fixed(lambda a: a | {"gateway_id": "gw 1/.."}), "gateway_id"),
        (fixed(lambda a: a | {"api_url": "http://api.cloud.test"}), "api_url"),
        # Loopback http would pass the claim but not [cloud] api_url: the daemon could not start.
        (fixed(lambda a: a | {"api_url": "http://127.0.0.1:8443"}), "api_url"),
        (fixed(lambda a: a | {"mqtt_port": 0}), "mqtt_port"),
        (fixed(lambda a: a | {"mqtt_port": "8883"}), "mqtt_port"),
        (fixed(without("signing_key_pem")), "signing_key_pem"),
        (fixed(without("mqtt_host")), "mqtt_host"),
        (fixed(lambda a: a | {"signing_key_pem": a["ca_pem"]}), "signing_key_pem"),
        (fixed(lambda a: a | {"certificate_pem": "not a certificate"}), "certificate_pem"),
        (fixed(other_ca), "ca_pem"),
        (fixed(lambda a: a | {"gateway_id": "gw-other"}), "certificate_pem"),  # CN differs
        (fixed(lambda a: [a]), "(body)"),  # type: ignore[arg-type,return-value]
    ],
)
async def test_malformed_answers_store_nothing(
    cloud: FakeClaimCloud,
    state_dir: Path,
    make_tamper: Callable[[FakeClaimCloud], Tamper],
    field: str,
) -> None:
    cloud.tamper = make_tamper(cloud)
    with pytest.raises(prov.BadClaimAnswer) as caught:
        await prov.claim(cloud.url, VALID, state_dir)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert cloud_files(state_dir) == {"gateway.key"}


async def test_an_unreachable_cloud_is_named(state_dir: Path) -> None:
    url = f"http://127.0.0.1:{pick_free_port()}"
    with pytest.raises(prov.CloudUnreachable, match=f"cannot reach the cloud at {url}/api"):
        await prov.claim(url, VALID, state_dir)
    assert prov.load_identity(state_dir) is None


async def test_a_slow_cloud_times_out(cloud: FakeClaimCloud, state_dir: Path) -> None:
    cloud.delay_s = 2.0
    with pytest.raises(prov.CloudUnreachable, match="no answer in time"):
        await prov.claim(cloud.url, VALID, state_dir, timeout_s=0.2)


@pytest.mark.parametrize(
    "url",
    ["http://cloud.example.com", "ftp://127.0.0.1", "https://user:pw@cloud.example.com", "cloud"],
)
async def test_a_bad_url_is_refused_before_anything_is_sent(state_dir: Path, url: str) -> None:
    with pytest.raises(prov.InvalidClaimInput, match="https://"):
        await prov.claim(url, VALID, state_dir)
    assert not exists(state_dir)


@pytest.mark.parametrize("code", ["SHORT7", "A" * 65, "ABCD_EFGH_1234", "ÄBCDEFGH1234", ""])
async def test_a_bad_code_is_refused_without_echoing_it(state_dir: Path, code: str) -> None:
    with pytest.raises(prov.InvalidClaimInput, match="8 to 64 letters and digits") as caught:
        await prov.claim("https://cloud.example.com", code, state_dir)
    assert not code or code not in str(caught.value)
    assert not exists(state_dir)


def test_codes_tolerate_spaces_and_hyphens() -> None:
    assert prov.normalize_claim_code(" abcd efgh-2345\n") == "abcdefgh2345"


async def test_claiming_again_needs_replace(cloud: FakeClaimCloud, state_dir: Path) -> None:
    await prov.claim(cloud.url, VALID, state_dir)
    cloud.codes["SECONDCODE22"] = "valid"
    with pytest.raises(prov.AlreadyClaimed, match="already claimed as gw-1"):
        await prov.claim(cloud.url, "SECONDCODE22", state_dir)
    assert len(cloud.requests) == 1  # nothing was sent
    identity = await prov.claim(cloud.url, "SECONDCODE22", state_dir, replace=True)
    assert identity.gateway_id == "gw-2"
    assert prov.load_identity(state_dir) == identity
    cert = x509.load_pem_x509_certificate((state_dir / "cloud" / "gateway.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-2"


# --- the configuration overlay --------------------------------------------------------------


async def test_the_overlay_enables_the_cloud_from_the_identity(
    cloud: FakeClaimCloud, state_dir: Path
) -> None:
    data = config_data(state_dir, pick_free_port(), cloud={"keepalive_s": 45})
    assert prov.cloud_overlay(data, state_dir) == data  # unclaimed: unchanged
    await prov.claim(cloud.url, VALID, state_dir)
    overlaid = prov.cloud_overlay(data, state_dir)
    assert "enabled" not in data["cloud"]  # the input is not changed
    config = parse_config(overlaid)
    folder = (state_dir / "cloud").absolute()
    assert config.cloud.enabled
    assert config.cloud.gateway_id == "gw-1"
    assert config.cloud.mqtt_host == "mqtt.cloud.test"
    assert config.cloud.api_url == API_URL
    assert config.cloud.keepalive_s == 45
    assert config.cloud.ca_file == folder / "ca.pem"
    assert config.cloud.cert_file == folder / "gateway.pem"
    assert config.cloud.key_file == folder / "gateway.key"
    assert config.cloud.signing_key_file == folder / "cloud-signing.pub"
    for path in (config.cloud.ca_file, config.cloud.cert_file, config.cloud.key_file):
        assert path.is_file()


async def test_an_explicit_cloud_section_wins(cloud: FakeClaimCloud, state_dir: Path) -> None:
    await prov.claim(cloud.url, VALID, state_dir)
    explicit = {
        "enabled": True,
        "gateway_id": "hand-made",
        "mqtt_host": "broker.example.com",
        "api_url": "https://other.example.com",
    }
    data = config_data(state_dir, pick_free_port(), cloud=explicit)
    overlaid = prov.cloud_overlay(data, state_dir)
    assert overlaid == data
    assert parse_config(overlaid).cloud.gateway_id == "hand-made"


def test_a_damaged_identity_is_an_error(state_dir: Path) -> None:
    (state_dir / "cloud").mkdir(parents=True)
    (state_dir / "cloud" / "identity.json").write_text("{not json")
    with pytest.raises(prov.IdentityError, match="damaged"):
        prov.cloud_overlay({}, state_dir)


# --- forgetting and factory reset -----------------------------------------------------------

LOCAL_FILES = ["cache.db", "cache.db-wal", "outbox.db", "door_modes.json", "sun_counters.db"]
KEPT_FILES = ["mech_site_key", "ble_reader_key.pem", "officernd/activation.json", "notes.txt"]


def fill_state(state_dir: Path) -> None:
    for name in LOCAL_FILES + KEPT_FILES:
        path = state_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


async def test_forget_keeps_the_device_key(cloud: FakeClaimCloud, state_dir: Path) -> None:
    await prov.claim(cloud.url, VALID, state_dir)
    fill_state(state_dir)
    before = prov.provisioning_state(state_dir)
    removed = prov.forget_identity(state_dir)
    assert {p.name for p in removed} == CLOUD_NAMES
    assert cloud_files(state_dir) == {"gateway.key"}
    after = prov.provisioning_state(state_dir)
    assert not after.claimed
    assert after.fingerprint == before.fingerprint
    assert all((state_dir / name).exists() for name in LOCAL_FILES + KEPT_FILES)


async def test_forget_with_a_new_key(cloud: FakeClaimCloud, state_dir: Path) -> None:
    await prov.claim(cloud.url, VALID, state_dir)
    old = prov.provisioning_state(state_dir).fingerprint
    prov.forget_identity(state_dir, new_key=True)
    assert cloud_files(state_dir) == set()
    assert prov.fingerprint(prov.ensure_device_key(state_dir)) != old


async def test_factory_reset_removes_exactly_its_list(
    cloud: FakeClaimCloud, state_dir: Path
) -> None:
    await prov.claim(cloud.url, VALID, state_dir)
    fill_state(state_dir)
    removed = prov.factory_reset(state_dir)
    assert {str(p.relative_to(state_dir)) for p in removed} == {
        *(f"cloud/{n}" for n in CLOUD_NAMES | {"gateway.key"}),
        *LOCAL_FILES,
    }
    assert not (state_dir / "cloud").exists()
    assert all((state_dir / name).read_text() == "x" for name in KEPT_FILES)
    assert prov.provisioning_state(state_dir).to_json()["state"] == "unclaimed"


# --- the command line -----------------------------------------------------------------------


def write_config(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(toml_text(config_data(tmp_path / "state", pick_free_port(), **sections)))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_provision_claims_and_says_to_restart(
    cloud: FakeClaimCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    status, out, _ = run(
        capsys, "provision", "--config", config, "--cloud", cloud.url, "--claim-code", VALID
    )
    assert status == 0
    assert "gateway id gw-1" in out
    assert "restart the service to start syncing: systemctl restart luckey-gateway" in out
    assert VALID not in out
    assert prov.load_identity(tmp_path / "state") is not None

    status, out, _ = run(capsys, "provision", "--config", config, "--status", "--json")
    assert status == 0
    shown = json.loads(out)
    assert shown["state"] == "claimed"
    assert shown["gateway_id"] == "gw-1"
    assert shown["device_fingerprint"] == prov.provisioning_state(tmp_path / "state").fingerprint

    status, _, err = run(
        capsys, "provision", "--config", config, "--cloud", cloud.url, "--claim-code", USED
    )
    assert status == 2
    assert "already claimed as gw-1" in err
    status, _, err = run(
        capsys,
        "provision",
        "--config",
        config,
        "--cloud",
        cloud.url,
        "--claim-code",
        USED,
        "--replace",
    )
    assert status == 1
    assert "already used" in err
    assert prov.load_identity(tmp_path / "state") is not None  # the old identity stays


def test_cli_provision_exit_codes(
    cloud: FakeClaimCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    status, _, err = run(
        capsys, "provision", "--config", config, "--cloud", cloud.url, "--claim-code", EXPIRED
    )
    assert (status, "expired" in err) == (1, True)
    status, _, err = run(
        capsys, "provision", "--config", config, "--cloud", cloud.url, "--claim-code", "x"
    )
    assert (status, "8 to 64 letters" in err) == (2, True)
    status, _, err = run(
        capsys,
        "provision",
        "--config",
        config,
        "--cloud",
        "http://cloud.test",
        "--claim-code",
        VALID,
    )
    assert (status, "https://" in err) == (2, True)
    status, _, err = run(capsys, "provision", "--config", config, "--cloud", cloud.url)
    assert (status, "--claim-code" in err) == (2, True)
    status, out, _ = run(capsys, "provision", "--config", config, "--status")
    assert status == 0
    assert out.startswith("unclaimed")


def test_cli_factory_reset_needs_the_exact_id(
    cloud: FakeClaimCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    assert (
        run(capsys, "provision", "--config", config, "--cloud", cloud.url, "--claim-code", VALID)[0]
        == 0
    )
    fill_state(state)
    for wrong in ("unclaimed", "gw-2", "GW-1"):
        status, _, err = run(capsys, "factory-reset", "--config", config, "--confirm", wrong)
        assert status == 2
        assert "must be exactly 'gw-1'" in err
    assert prov.load_identity(state) is not None
    assert (state / "cache.db").exists()

    status, _, err = run(capsys, "factory-reset", "--confirm", "gw-1")
    assert (status, "needs --config" in err) == (2, True)

    status, out, _ = run(capsys, "factory-reset", "--config", config, "--confirm", "gw-1")
    assert status == 0
    assert "removed 10 files" in out
    assert prov.load_identity(state) is None
    assert not (state / "cache.db").exists()
    assert (state / "mech_site_key").exists()

    status, out, _ = run(capsys, "factory-reset", "--config", config, "--confirm", "unclaimed")
    assert status == 0
    assert "removed 0 files" in out


def test_an_identity_that_is_not_a_regular_file_is_refused(state_dir: Path, tmp_path: Path) -> None:
    (state_dir / "cloud" / "identity.json").mkdir(parents=True)
    with pytest.raises(prov.IdentityError, match="not a regular file"):
        prov.load_identity(state_dir)
    (state_dir / "cloud" / "identity.json").rmdir()
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(json.dumps({"gateway_id": "gw-x"}))
    (state_dir / "cloud" / "identity.json").symlink_to(elsewhere)
    with pytest.raises(prov.IdentityError, match="symbolic link"):
        prov.load_identity(state_dir)


async def test_a_damaged_identity_is_replaced_only_when_asked(
    cloud: FakeClaimCloud, state_dir: Path
) -> None:
    damaged = state_dir / "cloud" / "identity.json"
    prov.ensure_device_key(state_dir)
    damaged.write_text("{")
    with pytest.raises(prov.IdentityError, match="damaged"):
        await prov.claim(cloud.url, VALID, state_dir)
    assert cloud.requests == []
    identity = await prov.claim(cloud.url, VALID, state_dir, replace=True)
    assert prov.load_identity(state_dir) == identity


async def test_the_daemon_config_takes_the_claimed_identity(
    cloud: FakeClaimCloud, state_dir: Path
) -> None:
    config = parse_config(config_data(state_dir, pick_free_port()))
    assert prov.with_identity(config) is config  # unclaimed: the file's config as it is
    await prov.claim(cloud.url, VALID, state_dir)
    claimed = prov.with_identity(config)
    assert claimed.cloud.enabled
    assert claimed.cloud.gateway_id == "gw-1"
    assert claimed.web == config.web  # nothing else changes
    gateway = Gateway(claimed)  # the cloud link is built from the stored files
    assert gateway.cloud is not None


async def test_an_answer_arriving_in_pieces_is_read_whole(
    cloud: FakeClaimCloud, state_dir: Path
) -> None:
    cloud.split_answer = True
    identity = await prov.claim(cloud.url, VALID, state_dir)
    assert identity.gateway_id == "gw-1"
    assert prov.load_identity(state_dir) == identity
