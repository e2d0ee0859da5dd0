"""Users and SASL on a three-node cluster: users (and their AMQP
permissions, and Kafka ACLs) are metadata commands the quorum replicates,
so a user added, changed or deleted through any node (admin API or
Kafka's AlterUserScramCredentials) logs in, or no longer does, on every
node; and each node's SASL listener is registered by name,
so Metadata through a SASL listener sends clients to the other nodes'
SASL listeners, never to their plaintext ones. A client certificate names
the same principal (Kafka `SSL`) and user (AMQP EXTERNAL) on every node.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pika
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from common.broker import free_port, wait_until
from common.cluster import Cluster
from common.pki import make_pki
from test_replication import create_replicated


@pytest.fixture(scope="module")
def sasl_cluster(tmp_path_factory):
    """Three nodes, each with a SASL_PLAINTEXT listener of its own beside
    the plaintext one."""
    cluster = Cluster(tmp_path_factory.mktemp("security"), 3, "cluster[security]")
    cluster.sasl_ports = {}
    for node_id, node in enumerate(cluster.nodes, start=1):
        port = free_port()
        cluster.sasl_ports[node_id] = port
        node.settings["kafka.listeners"] = f"SASL_PLAINTEXT://127.0.0.1:{port}"
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def call(node, method: str, path: str, body=None, credentials=("guest", "guest")):
    """(status, decoded JSON or None) of one admin API call on `node`."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{node.http_port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read()
            return answer.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, None


def sasl_config(port: int, user: str, password: str, mechanism: str) -> dict:
    return {
        "bootstrap.servers": f"127.0.0.1:{port}",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }


def sasl_login_works(port: int, user: str, password: str, mechanism: str) -> bool:
    """Whether a SASL client gets Metadata through the listener on `port`."""
    client = AdminClient(sasl_config(port, user, password, mechanism))
    try:
        client.list_topics(timeout=5)
        return True
    except KafkaException:
        return False


def amqp_login_works(node, user: str, password: str) -> bool:
    params = pika.ConnectionParameters(
        "127.0.0.1", node.amqp_port, credentials=pika.PlainCredentials(user, password),
        connection_attempts=1, socket_timeout=5, blocked_connection_timeout=5,
    )
    try:
        pika.BlockingConnection(params).close()
        return True
    except pika.exceptions.AMQPError:
        return False


def test_a_user_added_on_one_node_logs_in_on_every_node_and_metadata_keeps_to_the_sasl_listeners(sasl_cluster, name):
    node1, node2, node3 = sasl_cluster.nodes
    status, _ = call(node1, "PUT", "/api/users/carol", {"password": "c4rol-pw", "tags": "monitoring"})
    assert status == 201
    # Replicated: the other nodes know her (HTTP, AMQP, Kafka SCRAM).
    wait_until(lambda: call(node3, "GET", "/api/users/carol", credentials=("carol", "c4rol-pw"))[0] == 200,
               20, what="node 3 to know carol")
    # A new user has no AMQP permissions until they are set (RabbitMQ's
    # rule); set through node 3, they open the virtual host on node 2.
    wait_until(lambda: call(node2, "GET", "/api/users/carol", credentials=("carol", "c4rol-pw"))[0] == 200,
               20, what="node 2 to know carol")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", node2.amqp_port, credentials=pika.PlainCredentials("carol", "c4rol-pw"),
            connection_attempts=1, socket_timeout=5))
    assert "access to vhost '/' refused for user 'carol'" in str(refused.value)
    assert call(node3, "PUT", "/api/permissions/%2F/carol", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    wait_until(lambda: amqp_login_works(node2, "carol", "c4rol-pw"), 20, what="node 2 to apply carol's permissions")
    assert not amqp_login_works(node2, "carol", "wrong")
    sasl3 = sasl_cluster.sasl_ports[3]
    assert sasl_login_works(sasl3, "carol", "c4rol-pw", "SCRAM-SHA-512")

    # Metadata through node 3's SASL listener names every node at its SASL port.
    client = AdminClient(sasl_config(sasl3, "carol", "c4rol-pw", "SCRAM-SHA-256"))
    brokers = wait_until(
        lambda: (found := client.list_topics(timeout=10).brokers) and len(found) == 3 and found,
        30, what="Metadata to list three brokers")
    assert {b.id: b.port for b in brokers.values()} == sasl_cluster.sasl_ports

    # Records go through SASL connections to whichever node leads.
    create_replicated(node1.bootstrap, name, 3, 3)
    producer = Producer({**sasl_config(sasl3, "carol", "c4rol-pw", "SCRAM-SHA-512"), "acks": "all"})
    failures = []
    for i in range(30):
        producer.produce(name, f"r{i}".encode(), partition=i % 3,
                         on_delivery=lambda err, _msg: err and failures.append(err))
    assert producer.flush(30) == 0 and not failures, failures
    consumer = Consumer({**sasl_config(sasl_cluster.sasl_ports[1], "carol", "c4rol-pw", "PLAIN"),
                         "group.id": f"g-{name}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(name, p, 0) for p in range(3)])
    seen = []
    deadline = time.monotonic() + 30
    while len(seen) < 30 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            seen.append(message.value())
    consumer.close()
    assert sorted(seen) == sorted(f"r{i}".encode() for i in range(30))


def test_scram_credentials_set_through_one_node_and_a_deletion_through_another_reach_every_node(sasl_cluster):
    node1, node2, node3 = sasl_cluster.nodes
    # As an administrator (guest) on node 2's SASL listener.
    admin = AdminClient(sasl_config(sasl_cluster.sasl_ports[2], "guest", "guest", "SCRAM-SHA-512"))
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion("dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"d4ve-pw")])
    futures["dave"].result(timeout=30)
    sasl1 = sasl_cluster.sasl_ports[1]
    wait_until(lambda: sasl_login_works(sasl1, "dave", "d4ve-pw", "SCRAM-SHA-256"), 30,
               what="dave to log in on node 1")
    # No SCRAM-SHA-512 credential was set for him.
    assert not sasl_login_works(sasl1, "dave", "d4ve-pw", "SCRAM-SHA-512")

    status, _ = call(node3, "DELETE", "/api/users/dave")
    assert status == 204
    wait_until(lambda: not sasl_login_works(sasl1, "dave", "d4ve-pw", "SCRAM-SHA-256"), 30,
               what="dave's login to stop working on node 1")
    assert call(node1, "GET", "/api/users/dave")[0] == 404


# --- Kafka ACLs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory):
    """Three nodes with `kafka.acls` on, each with a SASL_PLAINTEXT and an
    SSL listener and AMQPS, taking client certificates from the run's CA
    (`cluster.pki`) when clients send them."""
    root = tmp_path_factory.mktemp("acls")
    cluster = Cluster(root, 3, "cluster[acls]")
    cluster.pki = make_pki(root / "pki")
    cluster.sasl_ports, cluster.ssl_ports, cluster.amqps_ports = {}, {}, {}
    for node_id, node in enumerate(cluster.nodes, start=1):
        port, ssl_port, amqps_port = free_port(), free_port(), free_port()
        cluster.sasl_ports[node_id] = port
        cluster.ssl_ports[node_id] = ssl_port
        cluster.amqps_ports[node_id] = amqps_port
        node.settings["kafka.listeners"] = f"SASL_PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{ssl_port}"
        node.settings["kafka.acls"] = "true"
        node.settings |= {
            "amqp.vhosts": "/,limited",
            "amqp.tls_listen": f"127.0.0.1:{amqps_port}",
            "tls.cert_file": str(cluster.pki.server.cert),
            "tls.key_file": str(cluster.pki.server.key),
            "tls.ca_file": str(cluster.pki.ca_file),
            "tls.client_auth": "optional",
            "amqp.auth_mechanisms": "PLAIN,AMQPLAIN,EXTERNAL",
        }
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def admin_result(config: dict, method: str, *args):
    """The result of an admin call (a list for several futures), the
    client kept until it came."""
    client = AdminClient(config)
    answer = getattr(client, method)(*args)
    futures = list(answer.values()) if isinstance(answer, dict) else [answer]
    results = [future.result(timeout=30) for future in futures]
    return results[0] if len(results) == 1 else results


def produce_codes(config: dict, topic: str, count: int) -> list:
    """Each record's delivery error (None: acknowledged by all in sync)."""
    producer = Producer({**config, "acks": "all", "message.timeout.ms": 20000})
    outcomes = []
    for i in range(count):
        producer.produce(topic, f"r{i}".encode(), partition=i % 3,
                         on_delivery=lambda err, _msg: outcomes.append(err and err.code()))
    producer.flush(30)
    return outcomes


def test_acls_made_through_one_node_authorize_on_every_node_and_replication_needs_none(acl_cluster, name):
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                       ResourcePatternType, ResourceType)

    node1, node2, node3 = acl_cluster.nodes
    ports = acl_cluster.sasl_ports
    # Metadata lists the nodes to anyone (User:ANONYMOUS here).
    acl_cluster.wait_registered(lambda bootstrap: AdminClient({"bootstrap.servers": bootstrap}))
    for user, password in (("dana", "d4na-pw"), ("erin", "3rin-pw")):
        assert call(node1, "PUT", f"/api/users/{user}", {"password": password})[0] == 201
    # guest (an administrator, from loopback) passes every check.
    guest = {i: sasl_config(port, "guest", "guest", "SCRAM-SHA-512") for i, port in ports.items()}
    dana = {i: sasl_config(port, "dana", "d4na-pw", "SCRAM-SHA-512") for i, port in ports.items()}
    erin = {i: sasl_config(port, "erin", "3rin-pw", "SCRAM-SHA-512") for i, port in ports.items()}
    wait_until(lambda: sasl_login_works(ports[3], "erin", "3rin-pw", "SCRAM-SHA-512"), 30,
               what="the users to reach node 3")
    # Plaintext clients are User:ANONYMOUS, which no ACL names.
    with pytest.raises(KafkaException) as refused:
        create_replicated(node1.bootstrap, name, 3, 3)
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    create_replicated(f"{guest[1]['bootstrap.servers']}", name, 3, 3,
                      client_config={k: v for k, v in guest[1].items() if k != "bootstrap.servers"})
    granted = [
        AclBinding(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, "User:dana", "*",
                   AclOperation.ALL, AclPermissionType.ALLOW),
        AclBinding(ResourceType.GROUP, f"g-{name}", ResourcePatternType.LITERAL, "User:dana", "*",
                   AclOperation.READ, AclPermissionType.ALLOW),
    ]
    admin_result(guest[1], "create_acls", granted)
    dana_only = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:dana", None,
                                 AclOperation.ANY, AclPermissionType.ANY)
    wait_until(lambda: sorted(admin_result(guest[3], "describe_acls", dana_only)) == sorted(granted), 30,
               what="node 3 to know the ACLs")

    # dana writes to all three partitions (led by the three nodes) with
    # acks=all: the followers' fetches between nodes need no ACL.
    assert produce_codes(dana[3], name, 30) == [None] * 30
    consumer = Consumer({**dana[2], "group.id": f"g-{name}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([name])
    seen = []
    deadline = time.monotonic() + 30
    while len(seen) < 30 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            seen.append(message.value())
    consumer.commit(asynchronous=False)
    consumer.close()
    assert sorted(seen) == sorted(f"r{i}".encode() for i in range(30))
    # erin has no ACL: refused on whichever node she asks.
    assert set(produce_codes(erin[2], name, 3)) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}

    # Deleted through node 2: dana is refused on node 1 once it applied.
    deleted = admin_result(guest[2], "delete_acls", [dana_only])
    assert sorted(deleted) == sorted(granted)
    wait_until(lambda: admin_result(guest[1], "describe_acls", dana_only) == [], 30,
               what="node 1 to apply the deletion")
    assert set(produce_codes(dana[1], name, 3)) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}


def ssl_config(cluster, node_id: int, cert) -> dict:
    return {
        "bootstrap.servers": f"127.0.0.1:{cluster.ssl_ports[node_id]}",
        "security.protocol": "SSL",
        "ssl.ca.location": str(cluster.pki.ca_file),
        "ssl.certificate.location": str(cert.cert),
        "ssl.key.location": str(cert.key),
    }


def external_login_works(cluster, node_id: int, cert) -> bool:
    import ssl

    context = ssl.create_default_context(cafile=str(cluster.pki.ca_file))
    context.load_cert_chain(str(cert.cert), str(cert.key))
    params = pika.ConnectionParameters(
        "127.0.0.1", cluster.amqps_ports[node_id], credentials=pika.credentials.ExternalCredentials(),
        ssl_options=pika.SSLOptions(context, server_hostname="localhost"),
        connection_attempts=1, socket_timeout=5, blocked_connection_timeout=5,
    )
    try:
        pika.BlockingConnection(params).close()
        return True
    except pika.exceptions.ProbableAuthenticationError as refused:
        # The broker refused the login (not TLS, not the network).
        assert "ACCESS_REFUSED" in str(refused), refused
        return False


def test_certificate_principals_and_external_logins_hold_on_every_node(acl_cluster, name):
    """An ACL for a certificate's principal made through node 1 admits
    that certificate on node 3's SSL listener (acks=all on partitions
    every node leads), not another one; a user named by a certificate's
    distinguished name, added through node 1, logs in with AMQP EXTERNAL
    on every node."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    pki = acl_cluster.pki
    node1 = acl_cluster.nodes[0]
    tag = name[-8:]  # common names are at most 64 characters
    acl_cluster.wait_registered(lambda bootstrap: AdminClient({"bootstrap.servers": bootstrap}))
    guest = sasl_config(acl_cluster.sasl_ports[1], "guest", "guest", "SCRAM-SHA-512")
    create_replicated(guest["bootstrap.servers"], name, 3, 3,
                      client_config={k: v for k, v in guest.items() if k != "bootstrap.servers"})
    writer = pki.ca.issue_subject(f"writer-{tag}", f"writer-{tag}", "Sluice")
    stranger = pki.ca.issue_subject(f"stranger-{tag}", f"stranger-{tag}", "Sluice")
    admin_result(guest, "create_acls", [
        AclBinding(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, f"User:CN=writer-{tag},O=Sluice", "*",
                   AclOperation.WRITE, AclPermissionType.ALLOW),
    ])
    wait_until(lambda: produce_codes(ssl_config(acl_cluster, 3, writer), name, 3) == [None] * 3, 30,
               what="node 3 to admit the certificate's principal")
    assert produce_codes(ssl_config(acl_cluster, 3, writer), name, 30) == [None] * 30
    assert set(produce_codes(ssl_config(acl_cluster, 2, stranger), name, 3)) == {
        KafkaError.TOPIC_AUTHORIZATION_FAILED}

    user = f"CN=amqp-{tag},O=Sluice"
    amqp_cert = pki.ca.issue_subject(f"amqp-{tag}", f"amqp-{tag}", "Sluice")
    assert not external_login_works(acl_cluster, 2, amqp_cert), "no such user yet"
    quoted = urllib.parse.quote(user, safe="")
    assert call(node1, "PUT", f"/api/users/{quoted}", {"password": "unused-" + name})[0] == 201
    full = {"configure": ".*", "write": ".*", "read": ".*"}
    assert call(node1, "PUT", f"/api/permissions/%2F/{quoted}", full)[0] == 201
    for node_id in (1, 2, 3):
        wait_until(lambda: external_login_works(acl_cluster, node_id, amqp_cert), 30,
                   what=f"an EXTERNAL login on node {node_id}")


def amqp_connect(node, user: tuple[str, str], vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", node.amqp_port, virtual_host=vhost, credentials=pika.PlainCredentials(*user),
        connection_attempts=1, socket_timeout=5, blocked_connection_timeout=5))


def amqp_refusal(node, user: tuple[str, str], vhost: str = "/") -> str:
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
        amqp_connect(node, user, vhost).close()
    return str(refused.value)


def test_amqp_limits_count_connections_and_channels_over_every_node(acl_cluster, name):
    """Limits set through node 1 count the connections and channels open
    on every node: a user's max-connections and max-channels, and a
    virtual host's max-connections."""
    node1, node2, node3 = acl_cluster.nodes
    user = (f"limited-{name[-8:]}", "Pw-limited")
    assert call(node1, "PUT", f"/api/users/{user[0]}", {"password": user[1]})[0] == 201
    full = {"configure": ".*", "write": ".*", "read": ".*"}
    assert call(node1, "PUT", f"/api/permissions/limited/{user[0]}", full)[0] == 201
    assert call(node1, "PUT", f"/api/user-limits/{user[0]}/max-connections", {"value": 2})[0] == 204
    assert call(node1, "PUT", f"/api/user-limits/{user[0]}/max-channels", {"value": 2})[0] == 204
    assert call(node1, "PUT", "/api/vhost-limits/limited/max-connections", {"value": 3})[0] == 204
    for node in (node2, node3):
        wait_until(lambda: call(node, "GET", "/api/vhost-limits/limited")[1] == [
            {"vhost": "limited", "value": {"max-connections": 3}}], 30, what="the limits to reach every node")
    held = [amqp_connect(node2, user, "limited"), amqp_connect(node3, user, "limited")]
    try:
        text = amqp_refusal(node1, user, "limited")
        assert "user connection limit (2) is reached" in text, text
        # The virtual host has room for one more, of another user.
        held.append(amqp_connect(node1, ("guest", "guest"), "limited"))
        text = amqp_refusal(node2, ("guest", "guest"), "limited")
        assert "access to vhost 'limited' refused for user 'guest': connection limit (3) is reached" in text, text
        # Channels: one on node 2, one on node 3, then none more.
        held[0].channel()
        held[1].channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            held[0].channel()
        assert closed.value.reply_code == 530
        assert "number of channels opened for user" in closed.value.reply_text
    finally:
        for connection in held:
            if connection.is_open:
                connection.close()
    # All closed: the user connects again.
    amqp_connect(node1, user, "limited").close()


def quota_metric(node, name: str, quota: str, client_id: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    prefix = f'{name}{{quota="{quota}",user="",client_id="{client_id}"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def test_client_quotas_set_through_one_node_throttle_on_every_node(sasl_cluster, name):
    """A producer byte rate set through node 1 reaches every node, and
    each node throttles the client on what it sends there (Kafka's
    quotas are per broker)."""
    from kafka import KafkaAdminClient

    from common.quotas import alter, describe

    nodes = sasl_cluster.nodes
    sasl_cluster.wait_registered(lambda bootstrap: AdminClient({"bootstrap.servers": bootstrap}))
    client = f"quota-{name[-8:]}"
    admin = KafkaAdminClient(bootstrap_servers=nodes[0].bootstrap, request_timeout_ms=30000)
    try:
        assert alter(admin, {"client-id": client}, {"producer_byte_rate": 20_000.0}) == (0, None)
    finally:
        admin.close()
    for node in nodes[1:]:
        other = KafkaAdminClient(bootstrap_servers=node.bootstrap, request_timeout_ms=30000)
        try:
            wait_until(lambda: describe(other, [("client-id", 0, client)])[1] == {
                (("client-id", client),): {"producer_byte_rate": 20_000.0}}, 30, what="the quota on every node")
        finally:
            other.close()
    create_replicated(nodes[0].bootstrap, name, 3, 3)
    # 1 MB over the three partitions, each led by another node: far over
    # what 20 kB/s lets through at once (ten windows' worth, 200 kB).
    producer = Producer({"bootstrap.servers": nodes[0].bootstrap, "client.id": client, "acks": "all",
                         "linger.ms": 5, "batch.size": 16384})
    deadline = time.monotonic() + 5
    for i in range(1000):
        producer.produce(name, b"v" * 1000, partition=i % 3)
        producer.poll(0)
    while time.monotonic() < deadline:
        producer.poll(0.2)
    for node in nodes:
        wait_until(lambda: quota_metric(node, "sluice_kafka_quota_throttle_seconds_total", "producer_byte_rate",
                                        client) > 0, 20, what=f"node {node.name} to throttle the client")
    del producer


def test_the_bridge_follows_kafka_acls_made_through_another_node(acl_cluster, name):
    """An AMQP user declaring a stream (a topic) on node 3 needs the Kafka
    CREATE ACL, made through node 1."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    node1, _, node3 = acl_cluster.nodes
    user = (f"bridge-{name[-8:]}", "Pw-bridge")
    assert call(node1, "PUT", f"/api/users/{user[0]}", {"password": user[1]})[0] == 201
    full = {"configure": ".*", "write": ".*", "read": ".*"}
    assert call(node1, "PUT", f"/api/permissions/%2F/{user[0]}", full)[0] == 201
    stream = f"stream-{name[-8:]}"

    def declare() -> str | None:
        """None when node 3 declares the stream, else the refusal."""
        try:
            connection = amqp_connect(node3, user)
        except pika.exceptions.ProbableAccessDeniedError:
            return "the user has not reached node 3 yet"
        try:
            connection.channel().queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
            return None
        except pika.exceptions.ChannelClosedByBroker as closed:
            return closed.reply_text
        finally:
            if connection.is_open:
                connection.close()

    wait_until(lambda: "no Kafka CREATE ACL" in (declare() or ""), 30, what="node 3 to refuse the stream")
    guest = sasl_config(acl_cluster.sasl_ports[1], "guest", "guest", "SCRAM-SHA-512")
    admin_result(guest, "create_acls", [
        AclBinding(ResourceType.TOPIC, stream, ResourcePatternType.LITERAL, f"User:{user[0]}", "*",
                   AclOperation.CREATE, AclPermissionType.ALLOW)])
    wait_until(lambda: declare() is None, 30, what="node 3 to allow the stream")
