"""A real Mosquitto broker for tests: a throwaway PKI, a generated config and ACL, its lifecycle.

Listeners (both bound to 127.0.0.1 only):

* the mTLS listener (``Broker.tls_port``) is what every security and gateway test uses: TLS 1.2+,
  a client certificate from the test CA is required and its CN becomes the MQTT username, which
  the ACL keys on;
* the optional plain listener (``Broker.plain_port``, ``plain_listener=True``) exists only so a
  benchmark can compare against a bare MQTT round trip without TLS; its clients are anonymous and
  the ACL gives them ``bench/#`` and nothing else.

Written for mosquitto 2.0.11 (Debian 12) and uses only options that version documents.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MOSQUITTO = Path("/usr/sbin/mosquitto")
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
READY_POLL_S = 0.01
#: What mosquitto logs once its listeners and signal handlers are set up (src/mosquitto.c).
RUNNING_LOG_LINE = re.compile(r"mosquitto version \S+ running")
CERT_VALIDITY = dt.timedelta(days=2)
#: The cloud service's identity (certificate CN and so MQTT username); never a gateway id.
CLOUD_ID = "cloud"
TOPIC_ROOT = "luckey/v1/gw"
#: Topics the cloud sends to a gateway: the gateway reads them, the cloud writes them.
DOWNLINK_LEAVES = ("delta", "cmd")
#: Topics a gateway sends to the cloud: the gateway writes them, the cloud reads them.
UPLINK_LEAVES = ("events", "ack", "status")
#: Topics anonymous clients of the plain benchmark listener may use (and nothing else).
BENCH_TOPICS = "bench/#"


class BrokerError(Exception):
    """Mosquitto could not be started or stopped as asked."""


class BrokerState(StrEnum):
    """Whether the broker's process is running."""

    STOPPED = "stopped"
    RUNNING = "running"


def gateway_topic(gateway_id: str, leaf: str) -> str:
    """The topic ``luckey/v1/gw/<gateway_id>/<leaf>``."""
    return f"{TOPIC_ROOT}/{gateway_id}/{leaf}"


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate and its private key (PEM files); ``name`` is the certificate's CN."""

    name: str
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsCredentials:
    """What a client needs for TLS: the CA to trust and, for mTLS, its own certificate and key."""

    ca_cert: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class Pki:
    """A test CA's files: its certificate and key, the broker's identity and the clients'."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server: Identity
    clients: Mapping[str, Identity]

    def identity(self, name: str) -> Identity:
        """The client identity with CN ``name``; KeyError if this CA issued none."""
        return self.clients[name]

    def credentials(self, name: str) -> TlsCredentials:
        """TLS credentials for client ``name``, trusting this CA."""
        identity = self.identity(name)
        return TlsCredentials(self.ca_cert, identity.cert, identity.key)


def _name(common_name: str) -> x509.Name:
    """An X.509 name with only a CN."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key (about 0.2 ms; RSA 2048 takes about 65 ms on this machine)."""
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by its owner only (0600 from creation)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    """Write ``cert`` as PEM."""
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class CertificateAuthority:
    """An in-memory EC P-256 CA that issues server and client certificates as PEM files."""

    def __init__(self, common_name: str = "luckey test CA") -> None:
        """Generate the CA's key and self-signed certificate."""
        self._key = _new_key()
        self._name = _name(common_name)
        builder = self._builder(self._name, self._key.public_key())
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        self.cert = builder.sign(self._key, hashes.SHA256())

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        """A certificate builder for ``subject``, issued by this CA, valid from a minute ago."""
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + CERT_VALIDITY)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def _issue(
        self,
        directory: Path,
        common_name: str,
        usage: x509.ObjectIdentifier,
        san: x509.SubjectAlternativeName | None,
    ) -> Identity:
        """Issue a leaf certificate for ``common_name`` and write it and its key into ``directory``."""
        key = _new_key()
        builder = self._builder(_name(common_name), key.public_key())
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
            critical=False,
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        identity = Identity(
            common_name, directory / f"{common_name}.crt", directory / f"{common_name}.key"
        )
        _write_cert(identity.cert, builder.sign(self._key, hashes.SHA256()))
        _write_key(identity.key, key)
        return identity

    def issue_server(self, directory: Path, host_name: str = "localhost") -> Identity:
        """A server certificate for ``host_name`` and 127.0.0.1 (both in the SAN)."""
        san = x509.SubjectAlternativeName(
            [x509.DNSName(host_name), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
        )
        return self._issue(directory, host_name, ExtendedKeyUsageOID.SERVER_AUTH, san)

    def issue_client(self, directory: Path, common_name: str) -> Identity:
        """A client certificate whose CN (the MQTT username on the broker) is ``common_name``."""
        return self._issue(directory, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write the CA's certificate and key (0600) into ``directory``; return their paths."""
        cert_path, key_path = directory / "ca.crt", directory / "ca.key"
        _write_cert(cert_path, self.cert)
        _write_key(key_path, self._key)
        return cert_path, key_path


def make_pki(
    directory: Path,
    gateway_ids: Iterable[str] = ("gw-1", "gw-2"),
    *,
    ca_name: str = "luckey test CA",
) -> Pki:
    """A fresh CA in ``directory`` with a server identity and one client per gateway plus the cloud."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority(ca_name)
    ca_cert, ca_key = ca.write(directory)
    server = ca.issue_server(directory)
    names = [*gateway_ids, CLOUD_ID]
    if len(set(names)) != len(names) or server.name in names:
        raise ValueError(f"client names must be unique and differ from the server's: {names}")
    clients = {name: ca.issue_client(directory, name) for name in names}
    return Pki(directory, ca_cert, ca_key, server, clients)


def acl_text(*, plain_listener: bool) -> str:
    """The broker's ACL file: gateways by certificate CN (%u), the cloud by name, nothing else."""
    lines = ["# Generated by tests/cloud/broker.py for mosquitto 2.0 (acl_file)."]
    # Lines before the first "user" line apply to anonymous clients, who exist only on the
    # plain benchmark listener (allow_anonymous is false without it).
    if plain_listener:
        lines.append(f"topic readwrite {BENCH_TOPICS}")
    lines.append(
        "# Every identity: a gateway's own topics, named by its username (certificate CN)."
    )
    lines += [f"pattern read {TOPIC_ROOT}/%u/{leaf}" for leaf in DOWNLINK_LEAVES]
    lines += [f"pattern write {TOPIC_ROOT}/%u/{leaf}" for leaf in UPLINK_LEAVES]
    lines.append(f"user {CLOUD_ID}")
    # Patterns apply to every user, the cloud included: "deny" lines are checked before any
    # grant, so the cloud gets no gateway rights of its own under luckey/v1/gw/cloud/.
    lines.append(f"topic deny {TOPIC_ROOT}/{CLOUD_ID}/#")
    lines += [f"topic read {TOPIC_ROOT}/+/{leaf}" for leaf in UPLINK_LEAVES]
    lines += [f"topic write {TOPIC_ROOT}/+/{leaf}" for leaf in DOWNLINK_LEAVES]
    return "\n".join(lines) + "\n"


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on the loopback address that nothing listens on right now."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Broker:
    """One mosquitto process on loopback ports with a generated config, ACL and persistence file.

    ``start()`` waits until mosquitto reports it is running; ``stop()`` ends the process with
    SIGTERM so that mosquitto saves its persistence file; ``restart()`` reuses the ports and that
    file, so persistent sessions and their queued QoS 1 messages survive it.
    """

    def __init__(
        self,
        pki: Pki,
        directory: Path,
        *,
        plain_listener: bool = False,
        executable: Path = MOSQUITTO,
    ) -> None:
        """Prepare (but do not start) a broker whose files all live in ``directory``."""
        self.pki = pki
        self.directory = directory
        self.host = LOOPBACK
        self.executable = executable
        ports = _free_ports(2 if plain_listener else 1)
        self.tls_port = ports[0]
        self.plain_port: int | None = ports[1] if plain_listener else None
        self.config_path = directory / "mosquitto.conf"
        self.acl_path = directory / "acl"
        self.log_path = directory / "mosquitto.log"
        self.persistence_dir = directory / "persistence"
        self.persistence_path = self.persistence_dir / "mosquitto.db"
        self.state = BrokerState.STOPPED
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ca_cert(self) -> Path:
        """The CA certificate that clients trust and that issued every client identity."""
        return self.pki.ca_cert

    def identity(self, name: str) -> Identity:
        """The certificate and key of client ``name`` (a gateway id or ``cloud``)."""
        return self.pki.identity(name)

    def credentials(self, name: str) -> TlsCredentials:
        """TLS credentials for client ``name`` on the mTLS listener."""
        return self.pki.credentials(name)

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        server = self.pki.server
        lines = [
            "# Generated by tests/cloud/broker.py for mosquitto 2.0.",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.plain_port is not None else 'false'}",
            f"acl_file {self.acl_path}",
            "persistence true",
            f"persistence_location {self.persistence_dir}",
            f"persistence_file {self.persistence_path.name}",
            # Saved on SIGTERM only, so a test controls when the file is written.
            "autosave_interval 0",
            # As root mosquitto would drop to the "mosquitto" user, who cannot write our tmp dir.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            "",
            f"listener {self.tls_port} {self.host}",
            f"cafile {self.pki.ca_cert}",
            f"certfile {server.cert}",
            f"keyfile {server.key}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
        ]
        if self.plain_port is not None:
            lines += ["", f"listener {self.plain_port} {self.host}"]
        return "\n".join(lines) + "\n"

    def write_files(self) -> None:
        """Write the config and ACL files and create the persistence directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.persistence_dir.mkdir(mode=0o700, exist_ok=True)
        self.acl_path.write_text(acl_text(plain_listener=self.plain_port is not None))
        self.config_path.write_text(self.config_text())

    def is_running(self) -> bool:
        """Whether mosquitto's process is alive."""
        return self._process is not None and self._process.poll() is None

    def ports(self) -> list[int]:
        """Every port this broker listens on."""
        return [p for p in (self.tls_port, self.plain_port) if p is not None]

    def start(self) -> None:
        """Start mosquitto and return once it is serving; BrokerError if it cannot."""
        if self.state is BrokerState.RUNNING:
            return
        self.write_files()
        with self.log_path.open("ab") as log:
            log_offset = log.tell()
            self._process = subprocess.Popen(
                [str(self.executable), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.state = BrokerState.RUNNING
        try:
            self._wait_ready(log_offset)
        except BaseException:
            self._terminate()
            raise

    def _wait_ready(self, log_offset: int) -> None:
        """Wait (bounded) until mosquitto logs, after ``log_offset``, that it is running.

        It logs that after opening its listeners and installing its signal handlers: a listener
        accepting connections is not enough, a SIGTERM before the handlers kills it unsaved.
        """
        deadline = time.monotonic() + START_TIMEOUT_S
        while not RUNNING_LOG_LINE.search(self._log_since(log_offset)):
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise BrokerError(f"mosquitto exited with {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto not running after {START_TIMEOUT_S} s:\n{self.log_tail()}"
                )
            time.sleep(READY_POLL_S)

    def _log_since(self, offset: int) -> str:
        """mosquitto's log from byte ``offset`` on."""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        """Stop mosquitto with SIGTERM so it saves its persistence file; idempotent.

        BrokerError if mosquitto did not exit cleanly (it had crashed, or was killed unsaved).
        """
        code = self._terminate()
        if code not in (None, 0):
            raise BrokerError(f"mosquitto exited with {code}:\n{self.log_tail()}")

    def _terminate(self) -> int | None:
        """End the process (SIGTERM, SIGKILL after STOP_TIMEOUT_S); its exit code, None if none."""
        process, self._process = self._process, None
        self.state = BrokerState.STOPPED
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def restart(self) -> None:
        """Stop and start again on the same ports with the same persistence file."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of mosquitto's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        """Start the broker."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        self.stop()
