"""Resource alarms (RabbitMQ's connection.blocked extension): above the
memory high watermark, or under the disk free limit, publishing connections
are told `connection.blocked` and are not read from; consumers go on, and
once the alarm clears the publishers get `connection.unblocked` and every
message they sent is there. Each test runs its own broker with the limit
it needs (`--set amqp.…`)."""

from __future__ import annotations

import pika
import pytest

from common.broker import per_test_broker
from support import CLIENT_TIMEOUT_S, close_quietly, external_broker, pump


reasons: list[str] = []


def blocked_events(connection):
    """The blocked/unblocked notifications the connection gets, in order;
    the reasons of blocked ones go to `reasons`."""
    events = []
    reasons.clear()

    def on_blocked(_connection, frame):
        events.append("blocked")
        reasons.append(frame.method.reason)

    connection.add_on_connection_blocked_callback(on_blocked)
    connection.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
    return events


def connect_to(broker, blocked_timeout=CLIENT_TIMEOUT_S):
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            broker.amqp_port,
            blocked_connection_timeout=blocked_timeout,
        )
    )


@pytest.fixture
def own_broker(tmp_path, request):
    if external_broker() is not None:
        pytest.skip("needs a broker started with its own limits (COMPAT_AMQP_EXTERNAL is set)")
    return lambda settings: per_test_broker(tmp_path, request, settings)


def test_memory_alarm_blocks_publishers_until_consumers_catch_up(own_broker, name):
    with own_broker({"amqp.memory_high_watermark": "1MiB"}) as broker:
        publisher = connect_to(broker)
        events = blocked_events(publisher)
        channel = publisher.channel()
        channel.queue_declare(name)
        body = b"x" * 100_000
        for _ in range(12):  # 1.2 MB, over the 1 MiB watermark
            channel.basic_publish("", name, body)
        pump(publisher, lambda: events == ["blocked"], what="connection.blocked")
        assert reasons == ["low on memory"]

        consumer = connect_to(broker)
        consumer_channel = consumer.channel()

        def drain():
            count = 0
            while consumer_channel.basic_get(name, auto_ack=True)[0] is not None:
                count += 1
            return count

        drained = drain()
        pump(publisher, lambda: events == ["blocked", "unblocked"], what="connection.unblocked")
        # A publish held back while blocked is handled once unblocked.
        drained += drain()
        assert drained == 12

        # Publishing works again and nothing was lost on the way.
        channel.basic_publish("", name, b"after")
        pump(publisher, lambda: consumer.channel().queue_declare(name, passive=True).method.message_count == 1,
             what="the message published after the alarm")
        consumer.close()
        publisher.close()


def test_disk_alarm_blocks_publishers_but_not_consumers(own_broker, name):
    # No disk here has 1,000 TiB free: the alarm is raised from the start.
    with own_broker({"amqp.disk_free_limit": "1000TiB"}) as broker:
        consumer = connect_to(broker)
        consumer_channel = consumer.channel()
        consumer_channel.queue_declare(name)

        publisher = connect_to(broker, blocked_timeout=3)
        events = blocked_events(publisher)
        publisher.channel().basic_publish("", name, b"held back")
        pump(publisher, lambda: events == ["blocked"], what="connection.blocked")
        assert reasons == ["low on disk"]

        # The consumer's connection never published: it is not blocked, and
        # the blocked publisher's message is not read while the alarm lasts.
        assert consumer_channel.queue_declare(name, passive=True).method.message_count == 0
        consumer.close()
        # A blocked connection is not read from, so its close is not either
        # (RabbitMQ alike): the client gives up after its blocked timeout.
        close_quietly(publisher)
