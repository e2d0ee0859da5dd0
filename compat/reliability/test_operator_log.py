"""What the broker's own log tells an operator (issue 15): one startup line
with version, node, data directory and listeners, written only after every
listener is bound; the non-default configuration as one compact line with
passwords masked and sizes in the README's units; each listener once, with
no Rust `Some(...)`; and at every start, how the last run ended and what
each kind of state recovered, with progress lines while recovery runs."""

from __future__ import annotations

import re
import socket
import struct

import pika
import pika.exceptions
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common.broker import BrokerStartError
from support import CLIENT_TIMEOUT_S, closed_by_peer, confluent_config, connect_raw, pika_connection

PASSWORD = "0perator-S3cret"
SETTINGS = {
    "amqp.users": f"guest:guest,admin:{PASSWORD}",
    "amqp.disk_free_limit": "20MB",
}


def lines_matching(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]


def one_line(text: str, pattern: str) -> str:
    found = lines_matching(text, pattern)
    assert len(found) == 1, f"expected one line matching {pattern!r}, got {found}\n{text}"
    return found[0]


def field(line: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\"[^\"]*\"|\S+)", line)
    assert match, f"no field {name} in {line}"
    return match.group(1).strip('"')


def test_startup_lines_name_version_listeners_and_mask_secrets(own_broker):
    with own_broker(SETTINGS) as broker:
        text = broker.log_text(tail_lines=None)
    assert PASSWORD not in text
    assert "Some(" not in text
    started = one_line(text, r"broker started")
    assert field(started, "version")
    assert field(started, "node") == "1"
    assert field(started, "data_dir") == str(broker.data_dir)
    assert field(started, "kafka") == broker.bootstrap
    assert field(started, "amqp") == broker.amqp_address
    assert field(started, "http") == f"127.0.0.1:{broker.http_port}"
    assert field(started, "mqtt") == f"127.0.0.1:{broker.mqtt_port}"
    assert field(started, "stomp") == f"127.0.0.1:{broker.stomp_port}"
    # Started only once every listener is bound, each listed once.
    lines = text.splitlines()
    started_at = lines.index(started)
    for protocol in ("kafka", "amqp", "mqtt", "stomp", "http"):
        listening = one_line(text, rf"\b{protocol} listening\b")
        assert lines.index(listening) < started_at, text
    config = one_line(text, r"configuration \(values other than the defaults\)")
    assert "admin:****" in config and "guest:****" in config
    assert 'amqp.disk_free_limit="20MB"' in config
    # Defaults are not repeated at INFO.
    assert "log.segment_bytes" not in config
    assert not lines_matching(text, r"INFO.*effective configuration"), text


def test_recovery_reports_last_shutdown_counts_and_progress(own_broker, name):
    partitions = 60
    with own_broker(SETTINGS) as broker:
        text = broker.log_text(tail_lines=None)
        assert "none (new data directory)" in one_line(text, r"recovering")

        admin = AdminClient(confluent_config(broker))
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(CLIENT_TIMEOUT_S)
        producer = Producer(confluent_config(broker, acks="all"))
        for index in range(partitions):
            producer.produce(name, b"v", partition=index)
        assert producer.flush(CLIENT_TIMEOUT_S) == 0
        consumer = Consumer(confluent_config(broker, **{"group.id": name, "enable.auto.commit": False}))
        consumer.commit(offsets=[TopicPartition(name, 0, 1)], asynchronous=False)
        consumer.close()

        connection = pika_connection(broker)
        channel = connection.channel()
        channel.exchange_declare(f"{name}.x", "topic", durable=True)
        channel.queue_declare(f"{name}.q", durable=True)
        channel.queue_bind(f"{name}.q", f"{name}.x", "#")
        channel.confirm_delivery()
        for _ in range(25):
            channel.basic_publish(f"{name}.x", "k", b"m", pika.BasicProperties(delivery_mode=2))
        connection.close()

        broker.stop()
        assert broker.last_returncode == 0
        mark = broker.log_size()
        broker.start()
        text = broker.log_text(mark, tail_lines=None)
        assert field(one_line(text, r"recovering"), "last_shutdown") == "clean"
        recovered = one_line(text, r"recovered partitions")
        assert int(field(recovered, "topics")) == 1
        assert int(field(recovered, "partitions")) == partitions
        assert int(field(one_line(text, r"recovered consumer group offsets"), "groups")) == 1
        queues = one_line(text, r"recovered definitions and durable queues")
        assert int(field(queues, "queues")) == 1
        assert int(field(queues, "messages")) == 25
        assert int(field(queues, "exchanges")) == 1
        assert int(field(queues, "bindings")) >= 1
        for kind in ("logs", "partitions", "consumer group offsets", "definitions and durable queues"):
            assert field(one_line(text, rf"recovered {kind}"), "elapsed_ms").isdigit()
        one_line(text, r"recovery complete")

        # A crash, and a restart that reports its progress every millisecond:
        # opening some sixty logs takes longer than that even on a fast disk.
        broker.kill()
        broker.settings["logging.progress_interval"] = "1ms"
        mark = broker.log_size()
        broker.start()
        text = broker.log_text(mark, tail_lines=None)
        assert field(one_line(text, r"recovering"), "last_shutdown").startswith("unclean")
        progress = lines_matching(text, r"recovery in progress")
        assert progress, text
        phases = ("logs", "partitions", "committed offsets", "definitions and durable queues")
        for line in progress:
            assert field(line, "phase") in phases, line
            assert int(field(line, "done")) <= int(field(line, "total")), line
        assert int(field(one_line(text, r"recovered definitions and durable queues"), "messages")) == 25


def test_client_errors_are_logged_with_what_to_act_on(own_broker, name):
    with own_broker(SETTINGS) as broker:
        mark = broker.log_size()

        # Another protocol's greeting on the Kafka port: one line naming it,
        # not a gigabyte "request".
        for greeting in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
            sock = connect_raw(broker.kafka_port)
            sock.sendall(greeting)
            assert closed_by_peer(sock)
            sock.close()

        # A channel error: passive declare of a missing queue (404).
        connection = pika_connection(broker)
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare(f"{name}-missing", passive=True)
        connection.close()

        # A refused login names the user, never the password.
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika_connection(broker, credentials=pika.PlainCredentials("admin", "wrong-Passw0rd"))

        # Clients that simply go away: mid-frame on both ports.
        for port, partial in ((broker.kafka_port, b"\x00\x00\x00\x40\x00\x12"), (broker.amqp_port, b"AMQP\x00\x00\x09\x01")):
            sock = connect_raw(port)
            sock.sendall(partial)
            if port == broker.amqp_port:
                sock.recv(7)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

        connection = pika_connection(broker)  # a marker after the disconnects
        connection.close()
        text = broker.log_text(mark, tail_lines=None)

    assert len(lines_matching(text, r"not a Kafka client: the connection opened with an HTTP request")) == 1, text
    assert len(lines_matching(text, r"not a Kafka client: the connection opened with a TLS handshake")) == 1, text
    assert not lines_matching(text, r"exceeds the limit"), text

    channel_error = one_line(text, r"AMQP channel error")
    assert "INFO" in channel_error
    assert field(channel_error, "code") == "404"
    assert f"{name}-missing" in channel_error
    assert field(channel_error, "vhost") == "/"
    assert field(channel_error, "user") == "guest"
    assert field(channel_error, "peer").startswith("127.0.0.1:")

    refused = one_line(text, r"login failed.*via=\"amqp")
    assert field(refused, "user") == "admin"
    assert "wrong-Passw0rd" not in text

    assert not lines_matching(text, r"INFO.*(i/o error|socket error|during the handshake)"), text


def test_a_start_that_cannot_bind_leaves_a_clean_shutdown(own_broker):
    with own_broker(SETTINGS) as broker:
        broker.stop()
        assert broker.last_returncode == 0
        # Another process holds the HTTP port: the start fails after recovery.
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", broker.http_port))
            squatter.listen()
            with pytest.raises(BrokerStartError):
                broker.start()
        mark = broker.log_size()
        broker.start()
        text = broker.log_text(mark, tail_lines=None)
        assert field(one_line(text, r"recovering"), "last_shutdown") == "clean", text
