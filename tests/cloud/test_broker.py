"""The test broker's security properties, proven against a real mosquitto 2.0.

What mosquitto 2.0.11 does, as these tests assert it:

* no client certificate, or one from another CA: the TLS handshake is refused (TLS 1.3 does so
  after the client's Finished, so the client sees the connection drop before any CONNACK);
* SUBSCRIBE to a topic the ACL does not let the client read is *granted* (SUBACK 0x01 at QoS 1):
  the read ACL is applied to each message at delivery, so nothing ever arrives;
* PUBLISH to a topic the ACL does not let the client write: at QoS 1 the PUBACK carries reason
  code 0x87 "Not authorized" and the message goes nowhere; at QoS 0 it is dropped silently;
* an allowed QoS 1 PUBLISH gets 0x00, or 0x10 "No matching subscribers" when nobody subscribed.

"Nothing arrived" is proven without sleeping: a barrier message the receiver may read is
published after the forbidden one, and mosquitto queues messages to each subscriber in the order
it processed them, so the barrier arriving first means the forbidden one never will.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.reasoncodes import ReasonCode

from tests.cloud.broker import (
    CLOUD_ID,
    Broker,
    BrokerError,
    BrokerState,
    Pki,
    TlsCredentials,
    gateway_topic,
)
from tests.cloud.conftest import GATEWAY_IDS, ClientFactory
from tests.cloud.mqtt_client import (
    NOT_AUTHORIZED,
    ConnectFailed,
    MqttTestClient,
    Will,
    tls_context,
)

GRANTED_QOS_1 = 0x01
NO_MATCHING_SUBSCRIBERS = 0x10
BARRIER = b"barrier"
LEAVES = ("delta", "cmd", "events", "ack", "status")
SESSION_EXPIRY_S = 3600


def _readable(identity: str) -> set[str]:
    """The topics (among every gateway's) the ACL lets ``identity`` read."""
    if identity == CLOUD_ID:
        return {
            gateway_topic(gw, leaf) for gw in GATEWAY_IDS for leaf in ("events", "ack", "status")
        }
    return {gateway_topic(identity, leaf) for leaf in ("delta", "cmd")}


def _writable(identity: str) -> set[str]:
    """The topics (among every gateway's) the ACL lets ``identity`` write."""
    if identity == CLOUD_ID:
        return {gateway_topic(gw, leaf) for gw in GATEWAY_IDS for leaf in ("delta", "cmd")}
    return {gateway_topic(identity, leaf) for leaf in ("events", "ack", "status")}


def _code(reason: ReasonCode | None) -> int:
    """The numeric value of a PUBACK reason code (QoS 1 publishes always have one)."""
    assert reason is not None
    return reason.value


def _received_until_barrier(client: MqttTestClient) -> list[str]:
    """Topics of the messages ``client`` receives before its first barrier message."""
    topics: list[str] = []
    while (message := client.next_message()).payload != BARRIER:
        topics.append(message.topic)
    return topics


def _log_shows(broker: Broker, text: str) -> bool:
    """Whether mosquitto's log contains ``text``."""
    return text in broker.log_path.read_text(errors="replace")


# --- PKI and broker lifecycle ---


def test_pki_keys_are_private_and_certs_name_the_identities(pki: Pki) -> None:
    """Keys are 0600; clients' CNs are their ids; the server's SAN has localhost and 127.0.0.1."""
    keys = [pki.ca_key, pki.server.key, *(identity.key for identity in pki.clients.values())]
    assert all(stat.S_IMODE(key.stat().st_mode) == 0o600 for key in keys)
    for name, identity in pki.clients.items():
        cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    server = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert set(pki.clients) == {*GATEWAY_IDS, CLOUD_ID}


def test_config_requires_client_certificates_and_tls_1_2(broker: Broker) -> None:
    """The mTLS listener's settings are the ones documented, with no anonymous access."""
    config = broker.config_path.read_text().splitlines()
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        "allow_anonymous false",
        f"listener {broker.tls_port} 127.0.0.1",
    ):
        assert line in config
    assert broker.plain_port is None
    assert broker.ports() == [broker.tls_port]


def test_tls_1_2_client_connects(broker: Broker) -> None:
    """A client limited to TLS 1.2 is accepted (the floor the listener allows)."""
    context = tls_context(broker.credentials("gw-1"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((broker.host, broker.tls_port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.2"


def test_restart_keeps_port_and_persistence_file(broker: Broker) -> None:
    """stop() writes the persistence file; restart() listens on the same port again."""
    port = broker.tls_port
    broker.stop()
    assert broker.state is BrokerState.STOPPED
    assert not broker.is_running()
    assert broker.persistence_path.stat().st_size > 0
    broker.stop()  # idempotent
    broker.restart()
    assert broker.is_running()
    assert broker.tls_port == port
    assert _log_shows(broker, "Saving in-memory database")


def test_start_fails_clearly_when_the_port_is_taken(pki: Pki, tmp_path: Path) -> None:
    """A broker that cannot listen raises BrokerError with mosquitto's log, and is stopped."""
    broker = Broker(pki, tmp_path / "broker")
    with socket.socket() as squatter:
        # Bound but not listening: the port is taken, yet the readiness probe is refused.
        squatter.bind((broker.host, broker.tls_port))
        with pytest.raises(BrokerError, match="Address already in use"):
            broker.start()
    assert broker.state is BrokerState.STOPPED


def test_plain_listener_is_anonymous_and_limited_to_bench_topics(pki: Pki, tmp_path: Path) -> None:
    """The benchmark listener takes clients without TLS and lets them use bench/# only."""
    with Broker(pki, tmp_path / "broker", plain_listener=True) as broker:
        assert broker.plain_port is not None
        with MqttTestClient(broker.host, broker.plain_port, "bench") as client:
            assert client.subscribe("bench/echo")[0].value == GRANTED_QOS_1
            assert _code(client.publish("bench/echo", b"ping")) == 0
            assert client.next_message().payload == b"ping"
            assert _code(client.publish(gateway_topic("gw-1", "cmd"), b"spoof")) == NOT_AUTHORIZED


# --- who may connect ---


@pytest.mark.parametrize(
    ("case", "broker_log"),
    [
        ("no certificate", "peer did not return a certificate"),
        ("certificate from another CA", "certificate verify failed"),
    ],
)
def test_client_without_a_certificate_of_the_ca_cannot_connect(
    broker: Broker,
    mqtt_client: ClientFactory,
    foreign_pki: Pki,
    case: str,
    broker_log: str,
) -> None:
    """The TLS handshake is refused without a client certificate issued by the broker's CA."""
    foreign = foreign_pki.identity("gw-1")
    tls = {
        "no certificate": TlsCredentials(broker.ca_cert),
        "certificate from another CA": TlsCredentials(broker.ca_cert, foreign.cert, foreign.key),
    }[case]
    client = mqtt_client("gw-1", tls=tls, connect=False)
    with pytest.raises(ConnectFailed):
        client.connect()
    assert _log_shows(broker, broker_log)


def test_plain_mqtt_on_the_tls_port_is_refused(broker: Broker) -> None:
    """A client without TLS at all gets no CONNACK."""
    client = MqttTestClient(broker.host, broker.tls_port, "gw-1")
    try:
        with pytest.raises(ConnectFailed):
            client.connect()
    finally:
        client.close()


# --- the ACL ---


def test_gateway_events_reach_the_cloud(mqtt_client: ClientFactory) -> None:
    """gw-1 publishes to its events topic (PUBACK 0x00) and the cloud receives it."""
    cloud = mqtt_client(CLOUD_ID)
    assert [rc.value for rc in cloud.subscribe("luckey/v1/gw/+/events")] == [GRANTED_QOS_1]
    gateway = mqtt_client("gw-1")
    assert _code(gateway.publish(gateway_topic("gw-1", "events"), b'{"seq":1}')) == 0
    message = cloud.next_message()
    assert (message.topic, message.payload, message.qos) == (
        gateway_topic("gw-1", "events"),
        b'{"seq":1}',
        1,
    )


def test_gateway_cannot_read_another_gateways_downlink(mqtt_client: ClientFactory) -> None:
    """gw-1's subscriptions to gw-2's delta/cmd are granted (SUBACK 0x01) but never deliver."""
    spy = mqtt_client("gw-1")
    for topic in (gateway_topic("gw-2", "delta"), gateway_topic("gw-2", "cmd")):
        assert [rc.value for rc in spy.subscribe(topic)] == [GRANTED_QOS_1]
    spy.subscribe(gateway_topic("gw-1", "cmd"))
    victim = mqtt_client("gw-2")
    victim.subscribe("luckey/v1/gw/gw-2/+")
    cloud = mqtt_client(CLOUD_ID)
    for leaf in ("delta", "cmd"):
        assert _code(cloud.publish(gateway_topic("gw-2", leaf), leaf.encode())) == 0
    cloud.publish(gateway_topic("gw-1", "cmd"), BARRIER)
    assert _received_until_barrier(spy) == []
    assert [victim.next_message().topic for _ in range(2)] == [
        gateway_topic("gw-2", "delta"),
        gateway_topic("gw-2", "cmd"),
    ]


def test_publish_to_another_gateways_events_is_refused(mqtt_client: ClientFactory) -> None:
    """gw-1 → gw-2/events: PUBACK 0x87 at QoS 1, dropped at QoS 0, never delivered to the cloud."""
    cloud = mqtt_client(CLOUD_ID)
    cloud.subscribe("luckey/v1/gw/+/events")
    gateway = mqtt_client("gw-1")
    reason = gateway.publish(gateway_topic("gw-2", "events"), b"forged")
    assert _code(reason) == NOT_AUTHORIZED
    assert str(reason) == "Not authorized"
    assert gateway.publish(gateway_topic("gw-2", "events"), b"forged", qos=0) is None
    gateway.publish(gateway_topic("gw-1", "events"), BARRIER)
    assert _received_until_barrier(cloud) == []


@pytest.mark.parametrize("identity", [*GATEWAY_IDS, CLOUD_ID])
def test_each_identity_may_write_exactly_its_topics(
    mqtt_client: ClientFactory, identity: str
) -> None:
    """Every topic outside the identity's write set gets PUBACK 0x87; the others 0x00 or 0x10."""
    client = mqtt_client(identity)
    candidates = [gateway_topic(gw, leaf) for gw in (*GATEWAY_IDS, CLOUD_ID) for leaf in LEAVES]
    candidates += [gateway_topic("gw-1", "other"), "luckey/v1/other", "elsewhere"]
    outcomes = {topic: _code(client.publish(topic, b"probe")) for topic in candidates}
    allowed = {topic for topic, code in outcomes.items() if code != NOT_AUTHORIZED}
    assert allowed == _writable(identity)
    assert {outcomes[topic] for topic in allowed} == {NO_MATCHING_SUBSCRIBERS}


def test_each_identity_reads_exactly_its_topics(mqtt_client: ClientFactory) -> None:
    """Subscribed to '#', each identity receives only the topics the ACL lets it read."""
    readers = {name: mqtt_client(name) for name in (*GATEWAY_IDS, CLOUD_ID)}
    for reader in readers.values():
        assert [rc.value for rc in reader.subscribe("#")] == [GRANTED_QOS_1]
    for name, writer in readers.items():
        for topic in sorted(_writable(name)):
            assert _code(writer.publish(topic, b"data")) == 0
    for gw in GATEWAY_IDS:  # published last, so queued to every reader after the data
        readers[CLOUD_ID].publish(gateway_topic(gw, "cmd"), BARRIER)
    readers["gw-1"].publish(gateway_topic("gw-1", "status"), BARRIER)
    for name, reader in readers.items():
        assert set(_received_until_barrier(reader)) == _readable(name), name


# --- sessions, retained messages and wills ---


@pytest.mark.parametrize("restart", ["none", "after publish", "before publish"])
def test_persistent_session_gets_qos1_sent_while_away(
    broker: Broker, mqtt_client: ClientFactory, restart: str
) -> None:
    """A QoS 1 cmd for disconnected gw-1 arrives when it resumes its session, across restarts."""
    gateway = mqtt_client("gw-1", clean_start=False, session_expiry_s=SESSION_EXPIRY_S)
    gateway.subscribe(gateway_topic("gw-1", "cmd"))
    gateway.disconnect()
    if restart == "before publish":
        broker.restart()
    cloud = mqtt_client(CLOUD_ID)
    assert _code(cloud.publish(gateway_topic("gw-1", "cmd"), b"unlock")) == 0
    cloud.disconnect()
    if restart == "after publish":
        broker.restart()
    resumed = mqtt_client(
        "gw-1", clean_start=False, session_expiry_s=SESSION_EXPIRY_S, connect=False
    )
    assert resumed.connect().session_present
    message = resumed.next_message()
    assert (message.topic, message.payload, message.qos) == (
        gateway_topic("gw-1", "cmd"),
        b"unlock",
        1,
    )


@pytest.mark.parametrize("restart", [False, True])
def test_retained_status_reaches_a_later_subscriber(
    broker: Broker, mqtt_client: ClientFactory, restart: bool
) -> None:
    """A retained status is delivered, flagged retained, to a cloud that subscribes later."""
    gateway = mqtt_client("gw-1")
    reason = gateway.publish(gateway_topic("gw-1", "status"), b"online", retain=True)
    assert _code(reason) == NO_MATCHING_SUBSCRIBERS
    gateway.disconnect()
    if restart:
        broker.restart()
    cloud = mqtt_client(CLOUD_ID)
    cloud.subscribe("luckey/v1/gw/+/status")
    message = cloud.next_message()
    assert (message.topic, message.payload, message.retain) == (
        gateway_topic("gw-1", "status"),
        b"online",
        True,
    )


def test_last_will_reaches_the_cloud_on_unexpected_disconnect(mqtt_client: ClientFactory) -> None:
    """A gateway that vanishes has its will published; one that says DISCONNECT does not."""
    cloud = mqtt_client(CLOUD_ID)
    cloud.subscribe("luckey/v1/gw/+/status")
    polite = mqtt_client("gw-1", will=Will(gateway_topic("gw-1", "status"), b"offline"))
    polite.disconnect()
    crashing = mqtt_client("gw-2", will=Will(gateway_topic("gw-2", "status"), b"offline"))
    crashing.drop()
    message = cloud.next_message()
    assert (message.topic, message.payload, message.qos) == (
        gateway_topic("gw-2", "status"),
        b"offline",
        1,
    )
