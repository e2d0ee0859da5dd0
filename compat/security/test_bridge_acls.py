"""The bridge under Kafka ACLs (`kafka.acls`): an AMQP user reaching a
topic through a stream queue is the Kafka principal `User:<name>` and
needs what a Kafka client would (CREATE to declare a new stream,
DESCRIBE to open an existing one, READ to consume it, WRITE to bind it to
an exchange or publish to it through the default exchange, DELETE to
delete it), on top of its AMQP permissions; refusals are 403
ACCESS_REFUSED naming the missing ACL. Administrators and super users
pass, as on the Kafka side. Driven by pika, with the ACLs made through
confluent-kafka's admin client.
"""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from support import ADMIN, CLIENT_TIMEOUT_S, add_user, kafka_config, unique_name

SETTINGS = {
    "amqp.users": f"guest:guest,{ADMIN[0]}:{ADMIN[1]}",
    "amqp.loopback_users": "guest",
    "kafka.acls": "true",
}


@pytest.fixture(scope="module")
def bridge_broker(tmp_path_factory, pki):
    from support import running

    with running(tmp_path_factory.mktemp("bridge-acls") / "data", "broker[test_bridge_acls]", pki, SETTINGS,
                 listeners=("SASL_PLAINTEXT",), amqps=False) as broker:
        yield broker


def admin_config(broker) -> dict:
    return kafka_config(broker, "SASL_PLAINTEXT", "SCRAM-SHA-512", ADMIN)


def grant(broker, user: str, topic: str, operation: AclOperation) -> None:
    admin = AdminClient(admin_config(broker))
    binding = AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, f"User:{user}", "*", operation,
                         AclPermissionType.ALLOW)
    for future in admin.create_acls([binding]).values():
        future.result(timeout=CLIENT_TIMEOUT_S)


def connect(broker, user: tuple[str, str]) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.amqp_port, credentials=pika.PlainCredentials(*user),
        connection_attempts=1, socket_timeout=10, stack_timeout=15))


def refused(action) -> str:
    """The 403 text `action` is refused with."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        action()
    assert closed.value.reply_code == 403, closed.value
    return closed.value.reply_text


def new_user(broker, hint: str) -> tuple[str, str]:
    user = (unique_name(hint), "Pw-" + hint)
    add_user(broker, *user)
    return user


def test_a_stream_needs_the_kafka_acls_a_kafka_client_would(bridge_broker):
    broker = bridge_broker
    user = new_user(broker, "streamer")
    name, stream = user[0], unique_name("stream")
    stream_args = {"x-queue-type": "stream"}
    connection = connect(broker, user)
    try:
        text = refused(lambda: connection.channel().queue_declare(stream, durable=True, arguments=stream_args))
        assert text == (f"ACCESS_REFUSED - access to topic '{stream}' refused for user '{name}': "
                        "no Kafka CREATE ACL"), text
        grant(broker, name, stream, AclOperation.CREATE)
        channel = connection.channel()
        channel.queue_declare(stream, durable=True, arguments=stream_args)

        # Reading: READ on the topic (records Kafka wrote, here the admin).
        producer = Producer(admin_config(broker))
        delivered = []
        producer.produce(stream, b"from kafka", on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
        assert producer.flush(CLIENT_TIMEOUT_S) == 0
        assert delivered and delivered[0][0] is None, delivered
        channel.basic_qos(prefetch_count=10)
        text = refused(lambda: channel.basic_consume(stream, lambda *a: None,
                                                     arguments={"x-stream-offset": "first"}))
        assert "no Kafka READ ACL" in text, text
        grant(broker, name, stream, AclOperation.READ)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=10)
        got = []
        channel.basic_consume(stream, lambda ch, method, props, body: got.append(body),
                              arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.5)
        assert got and got[0] == b"from kafka", got

        # Writing: binding the stream to an exchange needs WRITE.
        exchange = unique_name("into-stream")
        channel.exchange_declare(exchange, "fanout")
        text = refused(lambda: channel.queue_bind(stream, exchange))
        assert "no Kafka WRITE ACL" in text, text
        grant(broker, name, stream, AclOperation.WRITE)
        channel = connection.channel()
        channel.queue_bind(stream, exchange)

        # Deleting the stream deletes the topic: DELETE.
        text = refused(lambda: connection.channel().queue_delete(stream))
        assert "no Kafka DELETE ACL" in text, text
    finally:
        connection.close()

    # Another user, with every AMQP permission but no Kafka ACL, may not
    # publish straight into the stream, nor open it.
    other = new_user(broker, "outsider")
    with connect(broker, other) as outsider:
        channel = outsider.channel()
        channel.confirm_delivery()
        text = refused(lambda: channel.basic_publish("", stream, b"sneaking in"))
        assert "no Kafka WRITE ACL" in text, text
        text = refused(lambda: outsider.channel().queue_declare(stream, durable=True, arguments=stream_args))
        assert "no Kafka DESCRIBE ACL" in text, text


def test_administrators_pass_as_on_the_kafka_side(bridge_broker):
    stream = unique_name("admin-stream")
    with connect(bridge_broker, ADMIN) as connection:
        channel = connection.channel()
        channel.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
        channel.confirm_delivery()
        channel.basic_publish("", stream, b"by an administrator")
        channel.queue_delete(stream)
