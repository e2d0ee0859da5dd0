"""TLS between nodes (`cluster.tls`): three nodes whose every inter-node
connection is mutual TLS still form a cluster, replicate partitions with
acks=all and carry AMQP messages to a queue's node; and the inter-node
listener refuses what is not a trusted node: a plaintext connection
(before this, one that sent the Kafka preface passed every ACL check),
a TLS client without a certificate, or one whose certificate another CA
signed. Each refusal is also found in the node's log.
"""

from __future__ import annotations

import re
import socket
import ssl
import time

import pika
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from common.broker import wait_until
from common.cluster import Cluster
from common.pki import Authority, make_pki
from common.wire import request_frame
from test_replication import create_replicated


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("link-tls")
    pki = make_pki(root / "pki")
    # Nodes have a CA of their own: the clients' CA signs no node.
    nodes_ca = Authority(root / "pki", "nodes")
    node = nodes_ca.issue_node("node")
    cluster = Cluster(root, 3, "cluster[link-tls]", settings={
        "cluster.tls": "true",
        "cluster.tls_ca_file": str(nodes_ca.pem),
        "tls.cert_file": str(node.cert),
        "tls.key_file": str(node.key),
        "tls.ca_file": str(pki.ca_file),
    })
    cluster.nodes_ca = nodes_ca
    cluster.pki = pki
    try:
        cluster.start()
        cluster.wait_registered(lambda bootstrap: AdminClient({"bootstrap.servers": bootstrap}))
        yield cluster
    finally:
        cluster.stop()


def cluster_port(node) -> int:
    return int(node.settings["cluster.listen"].rsplit(":", 1)[1])


def test_nodes_replicate_and_route_messages_over_mutual_tls(tls_cluster, name):
    nodes = tls_cluster.nodes
    create_replicated(nodes[0].bootstrap, name, 3, 3)
    delivered = []
    producer = Producer({"bootstrap.servers": nodes[0].bootstrap, "acks": "all", "message.timeout.ms": 30000})
    for i in range(30):
        producer.produce(name, f"r{i}".encode(), partition=i % 3,
                         on_delivery=lambda err, _msg: delivered.append(err))
    assert producer.flush(30) == 0
    assert delivered == [None] * 30, delivered
    consumer = Consumer({"bootstrap.servers": nodes[2].bootstrap, "group.id": f"g-{name}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([name])
    seen, deadline = [], time.monotonic() + 30
    while len(seen) < 30 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            seen.append(message.value())
    consumer.close()
    assert sorted(seen) == sorted(f"r{i}".encode() for i in range(30))

    # A queue lives on node 2; node 1 publishes to it, node 3 reads it:
    # both go over message links.
    params = lambda node: pika.ConnectionParameters(  # noqa: E731
        "127.0.0.1", node.amqp_port, credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1, socket_timeout=10)
    with pika.BlockingConnection(params(nodes[1])) as home:
        home.channel().queue_declare(name, durable=True)
    with pika.BlockingConnection(params(nodes[0])) as publisher:
        channel = publisher.channel()
        channel.confirm_delivery()
        channel.basic_publish("", name, b"over the link", mandatory=True)
    got = []
    with pika.BlockingConnection(params(nodes[2])) as reader:
        channel = reader.channel()
        wait_until(lambda: got.append(channel.basic_get(name, auto_ack=True)) or got[-1][0] is not None, 30,
                   what="the message through node 3")
    assert got[-1][2] == b"over the link"


def api_versions_answered(sock) -> bool:
    """Sends the Kafka preface and an ApiVersions request; whether a
    Kafka answer (its size, then correlation id 7) comes back before the
    connection closes (a TLS alert is no answer)."""
    try:
        sock.sendall(b"K" + request_frame(18, 0, 7, b""))
        sock.settimeout(5)
        data = b""
        while len(data) < 8:
            chunk = sock.recv(8 - len(data))
            if not chunk:
                break
            data += chunk
    except (OSError, ssl.SSLError):
        return False
    return len(data) == 8 and int.from_bytes(data[4:8], "big") == 7


@pytest.mark.parametrize("client", ["plaintext", "no certificate", "untrusted certificate",
                                    "a client's certificate"])
def test_the_inter_node_listener_refuses_anything_but_a_trusted_node(tls_cluster, client):
    node = tls_cluster.nodes[0]
    pki = tls_cluster.pki
    mark = node.log_size()
    raw = socket.create_connection(("127.0.0.1", cluster_port(node)), timeout=10)
    if client == "plaintext":
        sock = raw
        reason = r"TLS handshake failed.*listener=cluster"
    else:
        context = ssl.create_default_context(cafile=str(tls_cluster.nodes_ca.pem))
        if client in ("untrusted certificate", "a client's certificate"):
            # Another CA's; or the clients' CA's, which is not the nodes'.
            issued = pki.untrusted_client if client == "untrusted certificate" else pki.client
            context.load_cert_chain(str(issued.cert), str(issued.key))
            reason = r"(?i)TLS handshake failed.*(UnknownIssuer|unknown issuer).*listener=cluster"
        else:
            reason = r"(?i)TLS handshake failed.*no certificates.*listener=cluster"
        try:
            sock = context.wrap_socket(raw, server_hostname="localhost")
        except (OSError, ssl.SSLError):
            sock = None
    try:
        assert sock is None or not api_versions_answered(sock), f"a {client} client got a Kafka answer"
    finally:
        (sock or raw).close()
    wait_until(lambda: re.search(reason, node.log_text(mark, tail_lines=None)), 10,
               what=f"the node to log the refused {client} connection")
