"""Fixtures for tests against a real Mosquitto: a session PKI, a broker per test, MQTT 5 clients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import pytest

from tests.cloud.broker import MOSQUITTO, Broker, Pki, TlsCredentials, make_pki
from tests.cloud.mqtt_client import MqttTestClient, Will

#: The gateways the session PKI issues certificates for (plus the cloud's, CN "cloud").
GATEWAY_IDS = ("gw-1", "gw-2")


class ClientFactory(Protocol):
    """Builds an MQTT 5 test client for the test's broker; see the ``mqtt_client`` fixture."""

    def __call__(
        self,
        identity: str,
        *,
        client_id: str | None = None,
        tls: TlsCredentials | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
        connect: bool = True,
    ) -> MqttTestClient: ...


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One test CA for the session: server cert, gw-1 and gw-2, and the cloud (EC P-256, ~10 ms)."""
    return make_pki(tmp_path_factory.mktemp("pki"), GATEWAY_IDS)


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA, unknown to the broker, issuing the same names."""
    return make_pki(tmp_path_factory.mktemp("foreign-pki"), GATEWAY_IDS, ca_name="foreign CA")


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    """A running broker (mTLS listener only) for this test; stopped at teardown, pass or fail."""
    if not MOSQUITTO.exists():
        pytest.fail(f"{MOSQUITTO} is missing: run scripts/bootstrap.sh (Debian package mosquitto)")
    broker = Broker(pki, tmp_path / "broker")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mqtt_client(broker: Broker) -> Iterator[ClientFactory]:
    """A factory of MQTT 5 clients on ``broker``'s mTLS port, all closed at teardown.

    ``identity`` picks the certificate (and so the username) from the session PKI and is the
    client id unless ``client_id`` is given; ``tls`` replaces the credentials; with
    ``connect=False`` the client is returned unconnected.
    """
    teardown = ExitStack()

    def make(
        identity: str,
        *,
        client_id: str | None = None,
        tls: TlsCredentials | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
        connect: bool = True,
    ) -> MqttTestClient:
        client = MqttTestClient(
            broker.host,
            broker.tls_port,
            client_id or identity,
            tls=tls or broker.credentials(identity),
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
            will=will,
        )
        teardown.callback(client.disconnect)
        if connect:
            client.connect()
        return client

    with teardown:  # every client is closed even if one of them fails to disconnect
        yield make
