"""Who a client certificate says a client is, with real clients: on a
Kafka `SSL` listener its subject is the principal ACLs are checked
against (`User:CN=...,O=...`, or what `kafka.ssl_principal_mapping_rules`
maps it to; a certificate no rule maps is refused, and a client without
one is `User:ANONYMOUS`); over AMQPS, pika's EXTERNAL login names the user
by the certificate's distinguished name or common name
(`amqp.ssl_cert_login_from`), with no password, and a certificate naming
no user is refused.

Certificates come from the `pki` fixture's trusted CA. Each refusal is
also found in the broker's log, so a test cannot pass because a client
gave up on its own.
"""

from __future__ import annotations

import urllib.parse

import pika
import pika.exceptions
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from support import (
    ADMIN,
    CLIENT_TIMEOUT_S,
    FULL_PERMISSIONS,
    api,
    client_context,
    first_client_error,
    kafka_config,
    login_error,
    produce_and_consume,
    unique_name,
    wait_for_log,
)

MAPPING = "RULE:^CN=([^,]*),O=Mapped$/$1/L, DEFAULT"
SETTINGS = {
    "amqp.users": f"guest:guest,{ADMIN[0]}:{ADMIN[1]}",
    "amqp.loopback_users": "guest",
    "amqp.auth_mechanisms": "PLAIN,AMQPLAIN,EXTERNAL",
    "kafka.acls": "true",
    "kafka.ssl_principal_mapping_rules": MAPPING,
    "tls.client_auth": "optional",
}


@pytest.fixture(scope="module")
def cert_broker(tmp_path_factory, pki):
    from support import running

    settings = {**SETTINGS, "tls.ca_file": str(pki.ca_file)}
    with running(tmp_path_factory.mktemp("certs") / "data", "broker[test_certificate_logins]", pki, settings,
                 listeners=("SASL_PLAINTEXT", "SSL")) as broker:
        yield broker


def ssl_config(broker, cert=None, **extra) -> dict:
    config = kafka_config(broker, "SSL", **extra)
    if cert is not None:
        config |= {"ssl.certificate.location": str(cert.cert), "ssl.key.location": str(cert.key)}
    return config


def grant(broker, principal: str, *rules: tuple[ResourceType, str, AclOperation]) -> None:
    admin = AdminClient(kafka_config(broker, "SASL_PLAINTEXT", "SCRAM-SHA-512", ADMIN))
    bindings = [AclBinding(resource, name, ResourcePatternType.LITERAL, principal, "*", operation,
                           AclPermissionType.ALLOW) for resource, name, operation in rules]
    for future in admin.create_acls(bindings).values():
        future.result(timeout=CLIENT_TIMEOUT_S)


def produce_error(config: dict, topic: str):
    """The error of one acks=all produce to `topic` (None: it was written)."""
    errors = []
    producer = Producer({**config, "acks": "all", "message.timeout.ms": 15000})
    producer.produce(topic, b"x", on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(CLIENT_TIMEOUT_S) == 0, "the delivery report never came"
    return errors[0]


def create_topic(broker, topic: str) -> None:
    from confluent_kafka.admin import NewTopic

    admin = AdminClient(kafka_config(broker, "SASL_PLAINTEXT", "SCRAM-SHA-512", ADMIN))
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=CLIENT_TIMEOUT_S)


# --- Kafka: the certificate's principal ----------------------------------------------


def test_a_certificate_is_the_principal_acls_check_on_the_ssl_listener(cert_broker, pki, topic, group):
    broker = cert_broker
    create_topic(broker, topic)
    stem = unique_name("dn")
    dn_cert = pki.ca.issue_subject(stem, stem, "Sluice")
    # DEFAULT: the distinguished name, most specific first.
    principal = f"User:CN={stem},O=Sluice"

    code = produce_error(ssl_config(broker, dn_cert), topic)
    assert code is not None and code.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, code
    grant(broker, principal, (ResourceType.TOPIC, topic, AclOperation.WRITE),
          (ResourceType.TOPIC, topic, AclOperation.READ), (ResourceType.GROUP, group, AclOperation.READ))
    values = produce_and_consume(ssl_config(broker, dn_cert), topic, group)
    assert sorted(values) == [f"{topic}-{i}".encode() for i in range(5)]

    # The same ACLs do not admit a client with another certificate, or
    # none (User:ANONYMOUS).
    other = pki.ca.issue_subject(unique_name("other"), unique_name("other"), "Sluice")
    for cert in (other, None):
        code = produce_error(ssl_config(broker, cert), topic)
        assert code is not None and code.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (cert, code)


def test_mapping_rules_name_the_principal(cert_broker, pki, topic):
    broker = cert_broker
    create_topic(broker, topic)
    name = unique_name("Mapped-Writer")
    cert = pki.ca.issue_subject(name, name, "Mapped")
    # The first rule matches O=Mapped and lower-cases the common name.
    grant(broker, f"User:{name.lower()}", (ResourceType.TOPIC, topic, AclOperation.WRITE))
    assert produce_error(ssl_config(broker, cert), topic) is None
    # An ACL for the distinguished name itself does not apply to it.
    other_topic = topic + "-dn"
    create_topic(broker, other_topic)
    grant(broker, f"User:CN={name},O=Mapped", (ResourceType.TOPIC, other_topic, AclOperation.WRITE))
    code = produce_error(ssl_config(broker, cert), other_topic)
    assert code is not None and code.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, code


def test_a_certificate_naming_an_administrator_gets_no_administrator_rights(cert_broker, pki, topic):
    """A certificate mapped to the name of a user tagged administrator
    (who, logged in with its password, passes every ACL) is just a
    principal: ACLs apply to it, and it may not manage users."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    broker = cert_broker
    create_topic(broker, topic)
    # "CN=Admin,O=Mapped" maps to "admin", the administrator of SETTINGS.
    cert = pki.ca.issue_subject(unique_name("admin-cert"), ADMIN[0].capitalize(), "Mapped")
    code = produce_error(ssl_config(broker, cert), topic)
    assert code is not None and code.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, code
    upsert = UserScramCredentialUpsertion(unique_name("made"), ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
                                          b"Pw-made")
    admin = AdminClient(ssl_config(broker, cert))
    future = admin.alter_user_scram_credentials([upsert])[upsert.user]
    with pytest.raises(KafkaException) as refused:
        future.result(timeout=CLIENT_TIMEOUT_S)
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_a_certificate_no_rule_maps_is_refused(own_broker, pki):
    broker = own_broker({**SETTINGS, "tls.ca_file": str(pki.ca_file),
                         "kafka.ssl_principal_mapping_rules": "RULE:^CN=([^,]*),O=Mapped$/$1/"},
                        listeners=("SSL",), amqps=False)
    mapped = pki.ca.issue_subject(unique_name("m"), unique_name("m"), "Mapped")
    unmapped = pki.ca.issue_subject(unique_name("u"), unique_name("u"), "Elsewhere")
    # A mapped client gets Metadata.
    assert login_error(ssl_config(broker, mapped)) is None
    mark = broker.log_size()
    assert first_client_error(ssl_config(broker, unmapped)) is not None
    wait_for_log(broker, mark, r"no ssl principal mapping rule matches.*CN=u")


def test_bad_mapping_rules_stop_the_broker_with_the_reason(tmp_path, pki):
    from common.broker import BrokerStartError
    from support import SecureBroker

    broker = SecureBroker(tmp_path / "data", "broker[bad-rules]", pki,
                          {"kafka.ssl_principal_mapping_rules": "RULE:^CN=(.*$/$1/"}, listeners=(), amqps=False)
    with pytest.raises(BrokerStartError):
        broker.start()
    broker.stop()
    log = broker.log_path.read_text(errors="replace")
    assert "kafka.ssl_principal_mapping_rules is refused" in log, log[-2000:]


# --- AMQP: EXTERNAL --------------------------------------------------------------------


def external_parameters(broker, pki, cert) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=broker.amqps_port,
        credentials=pika.credentials.ExternalCredentials(),
        ssl_options=pika.SSLOptions(client_context(pki, cert), server_hostname="localhost"),
        connection_attempts=1,
        socket_timeout=10,
        stack_timeout=15,
    )


def add_passwordless(broker, name: str) -> None:
    """A user that exists for EXTERNAL logins, with a password no one
    uses, and full permissions on "/"."""
    quoted = urllib.parse.quote(name, safe="")
    answer = api(broker, "PUT", f"/api/users/{quoted}", {"password": unique_name("unused"), "tags": ""})
    assert answer.status == 201, (answer.status, answer.body)
    answer = api(broker, "PUT", f"/api/permissions/%2F/{quoted}", FULL_PERMISSIONS)
    assert answer.status == 201, (answer.status, answer.body)


def round_trip(parameters: pika.ConnectionParameters) -> bytes:
    queue = unique_name("external")
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, auto_delete=True)
        channel.basic_publish("", queue, b"by certificate", mandatory=True)
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None, "the message did not arrive"
        return body
    finally:
        connection.close()


def connection_users(broker) -> set[str]:
    answer = api(broker, "GET", "/api/connections?page_size=1000")
    assert answer.status == 200, answer.status
    return {c.get("user") for c in answer.body["items"]}


def test_external_logs_in_the_user_the_distinguished_name_names(cert_broker, pki):
    broker = cert_broker
    stem = unique_name("amqp-dn")
    cert = pki.ca.issue_subject(stem, stem, "Sluice")
    user = f"CN={stem},O=Sluice"

    # Not a user yet: the broker refuses the login.
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as refused:
        pika.BlockingConnection(external_parameters(broker, pki, cert))
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL" in str(refused.value)

    add_passwordless(broker, user)
    connection = pika.BlockingConnection(external_parameters(broker, pki, cert))
    try:
        assert user in connection_users(broker)
    finally:
        connection.close()
    assert round_trip(external_parameters(broker, pki, cert)) == b"by certificate"


def offered_mechanisms(broker, pki, cert) -> list[str]:
    """The mechanisms the broker's connection.start offers a TLS client
    with `cert` (read off the wire: the protocol header, then the start
    frame's method arguments)."""
    import socket
    import struct

    context = client_context(pki, cert)
    with socket.create_connection(("127.0.0.1", broker.amqps_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"AMQP\x00\x00\x09\x01")
            data = b""
            while len(data) < 7 or len(data) < 8 + struct.unpack(">I", data[3:7])[0]:
                chunk = tls.recv(65536)
                assert chunk, "the broker closed before connection.start"
                data += chunk
    payload = data[7:7 + struct.unpack(">I", data[3:7])[0]]
    assert payload[:4] == b"\x00\x0a\x00\x0a", "not connection.start"
    table = struct.unpack(">I", payload[6:10])[0]
    at = 10 + table
    length = struct.unpack(">I", payload[at:at + 4])[0]
    return payload[at + 4:at + 4 + length].decode().split()


def test_external_is_offered_only_to_a_client_with_a_certificate_when_configured(cert_broker, own_broker, pki):
    assert offered_mechanisms(cert_broker, pki, pki.client) == ["PLAIN", "AMQPLAIN", "EXTERNAL"]
    assert offered_mechanisms(cert_broker, pki, None) == ["PLAIN", "AMQPLAIN"]
    with pytest.raises(pika.exceptions.AuthenticationError):
        pika.BlockingConnection(external_parameters(cert_broker, pki, None))
    # Not configured (the default): not offered, even with a certificate.
    plain = own_broker({"tls.ca_file": str(pki.ca_file), "tls.client_auth": "optional"}, listeners=())
    assert offered_mechanisms(plain, pki, pki.client) == ["PLAIN", "AMQPLAIN"]


def test_external_by_common_name(own_broker, pki):
    broker = own_broker({**SETTINGS, "tls.ca_file": str(pki.ca_file), "amqp.ssl_cert_login_from": "common_name"},
                        listeners=(), amqps=True)
    name = unique_name("amqp-cn")
    add_passwordless(broker, name)
    cert = pki.ca.issue_subject(name, name, "Sluice")
    assert round_trip(external_parameters(broker, pki, cert)) == b"by certificate"
    # A common name that names no user is refused.
    stranger = pki.ca.issue_subject(unique_name("stranger"), unique_name("stranger"), "Sluice")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(external_parameters(broker, pki, stranger))


def test_external_with_an_untrusted_certificate_never_reaches_the_login(cert_broker, pki):
    broker = cert_broker
    mark = broker.log_size()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(external_parameters(broker, pki, pki.untrusted_client))
    wait_for_log(broker, mark, r"(?i)TLS handshake failed.*(UnknownIssuer|unknown issuer).*listener=amqps")
