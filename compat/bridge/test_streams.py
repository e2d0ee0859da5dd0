"""Kafka topics read as AMQP stream queues.

Contract (docs/bridging.md, "Stream queues"): records produced with
librdkafka (confluent-kafka) and kafka-python are read by pika from a
stream queue of the topic's name; `x-stream-offset` starts a consumer at
`first`, `last`, `next`, an offset, an AMQP timestamp or an interval back
from now; every delivery's `x-stream-offset` header is the record's Kafka
offset (and `x-stream-partition` its partition when there are several);
the key is the routing key, the value the body, Kafka headers long-string
entries of the headers table. Every consumer reads everything, acks only
return credit, and nothing is ever removed. Declaring a stream creates
its topic (partitions and retention from the arguments) or opens the
existing one; deleting the queue deletes the topic.
"""

from __future__ import annotations

import datetime
import time

import pika.compat
from kafka import KafkaProducer

from support import (
    CLIENT_TIMEOUT_S,
    close_quietly,
    connect,
    consume_stream,
    create_topic,
    declare_stream,
    headers_of,
    producer,
    produce_all,
    read_topic,
    topic_config,
    topic_partitions,
    wait_until,
)

FROM_CONFLUENT = 30
FROM_KAFKA_PYTHON = 20
# How long before a stream consumer's start the records it must skip
# were written, for the interval offset ("2s").
INTERVAL_GAP_S = 2.6


def expected_delivery(msg, partitioned: bool = False):
    """What the mapping makes of a record with no amqp.* headers:
    (offset, routing key, body, headers table)."""
    table = {name: (None if value is None else value.decode()) for name, value in headers_of(msg).items()}
    table["x-stream-offset"] = msg.offset()
    if partitioned:
        table["x-stream-partition"] = msg.partition()
    return msg.offset(), msg.key().decode(), msg.value(), table


def delivered(deliveries):
    """(offset, routing key, body, headers table) of pika deliveries."""
    return [
        (properties.headers.get("x-stream-offset") if properties.headers else None,
         method.routing_key, body, properties.headers)
        for method, properties, body in deliveries
    ]


def offsets_of(deliveries):
    return [properties.headers["x-stream-offset"] for _, properties, _ in deliveries]


def send_kafka_python(broker, topic, records):
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", request_timeout_ms=20000)
    try:
        futures = [kp.send(topic, **record) for record in records]
        kp.flush(timeout=CLIENT_TIMEOUT_S)
        return [future.get(timeout=CLIENT_TIMEOUT_S) for future in futures]
    finally:
        kp.close(timeout=10)


def test_records_from_both_kafka_clients_read_as_a_stream_from_every_start(broker, conn, name):
    create_topic(broker, name)
    rdkafka = producer(broker)
    first_batch = [
        dict(key=f"ck-{i}".encode(), value=f"confluent-{i}".encode(),
             headers=[("src", b"confluent"), ("n", str(i).encode())])
        for i in range(FROM_CONFLUENT)
    ]
    # A header with a null value becomes a void entry.
    first_batch[3]["headers"].append(("trace", None))
    produce_all(rdkafka, name, first_batch)

    # Everything before the next whole second is older than `boundary`
    # (AMQP timestamps have whole seconds), everything after is newer.
    boundary = int(time.time()) + 1
    time.sleep(boundary - time.time() + 0.05)
    sent = send_kafka_python(broker, name, [
        dict(key=f"kp-{i}".encode(), value=f"kafka-python-{i}".encode(), headers=[("src", b"kafka-python")])
        for i in range(FROM_KAFKA_PYTHON)
    ])
    assert [m.offset for m in sent] == list(range(FROM_CONFLUENT, FROM_CONFLUENT + FROM_KAFKA_PYTHON))

    # Records older than the interval below, then a few younger ones.
    time.sleep(INTERVAL_GAP_S)
    late = produce_all(rdkafka, name, [dict(key=b"late", value=f"late-{i}".encode()) for i in range(5)])
    late_written = time.monotonic()
    total = FROM_CONFLUENT + FROM_KAFKA_PYTHON + 5

    records = read_topic(broker, name)
    assert [m.offset() for m in records] == list(range(total))
    expected = [expected_delivery(m) for m in records]
    assert expected[3][3]["trace"] is None

    ch = conn.channel()
    declare_stream(ch, name)

    # An interval: only what is younger than 2 s (the late ones).
    assert time.monotonic() - late_written < 1.8, "the machine is too slow for the interval check"
    got = consume_stream(conn, conn.channel(), name, 5, offset="2s")
    assert offsets_of(got) == [m.offset() for m in late], "x-stream-offset '2s'"

    got = consume_stream(conn, conn.channel(), name, total, offset="first")
    assert delivered(got) == expected, "x-stream-offset 'first'"
    # The offset header is a long-long ('l', which pika reads as its `long`).
    assert all(isinstance(p.headers["x-stream-offset"], pika.compat.long) for _, p, _ in got)

    got = consume_stream(conn, conn.channel(), name, total - 35, offset=35)
    assert delivered(got) == expected[35:], "x-stream-offset 35"

    # pika writes a datetime as an AMQP timestamp (type 'T', seconds).
    at = datetime.datetime.fromtimestamp(boundary, datetime.timezone.utc)
    got = consume_stream(conn, conn.channel(), name, total - FROM_CONFLUENT, offset=at)
    assert delivered(got) == expected[FROM_CONFLUENT:], f"x-stream-offset timestamp {at}"

    got = consume_stream(conn, conn.channel(), name, total, offset="1h")
    assert delivered(got) == expected, "x-stream-offset '1h'"

    got = consume_stream(conn, conn.channel(), name, 1, offset="last")
    assert delivered(got) == expected[-1:], "x-stream-offset 'last'"


def test_next_and_the_default_start_read_only_new_records(broker, conn, name):
    create_topic(broker, name)
    rdkafka = producer(broker)
    produce_all(rdkafka, name, [dict(key=b"old", value=f"old-{i}".encode()) for i in range(10)])
    declare_stream(conn.channel(), name)

    for offset in ("next", None):
        got = []
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)
        arguments = {} if offset is None else {"x-stream-offset": offset}
        ch.basic_consume(name, lambda c, m, p, b: (got.append((m, p, b)), c.basic_ack(m.delivery_tag)),
                         arguments=arguments)
        conn.process_data_events(time_limit=0.5)
        assert got == [], f"x-stream-offset {offset!r} delivered records written before the consumer"
        [new] = produce_all(rdkafka, name, [dict(key=b"new", value=f"new-{offset}".encode())])
        wait_until(lambda: got, CLIENT_TIMEOUT_S, what="the new record",
                   pause=lambda interval: conn.process_data_events(time_limit=interval))
        conn.process_data_events(time_limit=0.3)
        assert [(p.headers["x-stream-offset"], b) for _, p, b in got] == [(new.offset(), new.value())], offset
        ch.close()


def test_every_consumer_reads_everything_and_acks_remove_nothing(broker, name):
    count = 40
    create_topic(broker, name)
    records = produce_all(producer(broker), name, [dict(key=b"k", value=f"m-{i}".encode()) for i in range(count)])
    offsets = [m.offset() for m in records]

    first, second = connect(broker), connect(broker)
    try:
        declare_stream(first.channel(), name)
        # Two consumers at once, on two connections, each acking everything.
        got = {id(first): [], id(second): []}

        def recorder(into):
            def on_message(channel, method, properties, _body):
                into.append(properties.headers["x-stream-offset"])
                channel.basic_ack(method.delivery_tag)
            return on_message

        for connection in (first, second):
            ch = connection.channel()
            ch.basic_qos(prefetch_count=7)
            ch.basic_consume(name, recorder(got[id(connection)]), arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while time.monotonic() < deadline and any(len(v) < count for v in got.values()):
            first.process_data_events(time_limit=0.05)
            second.process_data_events(time_limit=0.05)
        for _ in range(5):
            first.process_data_events(time_limit=0.05)
            second.process_data_events(time_limit=0.05)
        assert got[id(first)] == offsets, "first consumer"
        assert got[id(second)] == offsets, "second consumer"
    finally:
        close_quietly(first)
        close_quietly(second)

    # After every delivery was acked (twice), a new consumer still reads all.
    conn = connect(broker)
    try:
        got = consume_stream(conn, conn.channel(), name, count, offset="first")
        assert offsets_of(got) == offsets
    finally:
        close_quietly(conn)
    assert len(read_topic(broker, name)) == count, "acks removed records from the topic"


def test_acks_return_credit(broker, conn, name):
    """With prefetch 5 a consumer gets 5 deliveries and no more until it
    acks; each ack lets more through."""
    create_topic(broker, name)
    produce_all(producer(broker), name, [dict(key=b"k", value=f"m-{i}".encode()) for i in range(12)])
    ch = conn.channel()
    declare_stream(ch, name)
    ch.basic_qos(prefetch_count=5)
    got = []
    ch.basic_consume(name, lambda c, m, p, b: got.append(m), arguments={"x-stream-offset": "first"})
    wait_until(lambda: len(got) >= 5, CLIENT_TIMEOUT_S, what="5 deliveries",
               pause=lambda interval: conn.process_data_events(time_limit=interval))
    conn.process_data_events(time_limit=0.5)
    assert len(got) == 5, "deliveries beyond the prefetch window before any ack"
    ch.basic_ack(got[1].delivery_tag, multiple=True)
    wait_until(lambda: len(got) >= 7, CLIENT_TIMEOUT_S, what="2 more deliveries after acking 2",
               pause=lambda interval: conn.process_data_events(time_limit=interval))
    conn.process_data_events(time_limit=0.5)
    assert len(got) == 7, "an ack of 2 must let exactly 2 more through"


def test_partitioned_stream_tags_each_delivery_with_partition_and_offset(broker, conn, name):
    ch = conn.channel()
    declare_stream(ch, name, **{"x-stream-partitions": 3})
    assert topic_partitions(broker, name) == 3
    records = produce_all(producer(broker), name, [
        dict(key=f"key-{i}".encode(), value=f"m-{i}".encode(), headers=[("i", str(i).encode())]) for i in range(60)
    ])
    assert len({m.partition() for m in records}) == 3, "the keys should spread over the 3 partitions"
    expected = {m.value(): expected_delivery(m, partitioned=True) for m in read_topic(broker, name, partitions=3)}

    got = consume_stream(conn, ch, name, 60, offset="first")
    assert sorted(body for _, _, body in got) == sorted(expected)
    for method, properties, body in got:
        assert (properties.headers["x-stream-offset"], method.routing_key, body, properties.headers) == expected[body]
    # Within a partition, deliveries come in offset order.
    for partition in range(3):
        in_partition = [p.headers["x-stream-offset"] for _, p, _ in got if p.headers["x-stream-partition"] == partition]
        assert in_partition == sorted(in_partition), f"partition {partition} out of order"


def test_declare_creates_the_topic_with_its_retention_and_delete_removes_it(broker, conn, name):
    ch = conn.channel()
    week, hour = f"{name}-week", f"{name}-hour"
    declare_stream(ch, week, **{"x-max-age": "7D", "x-max-length-bytes": 10_000_000})
    declare_stream(ch, hour, **{"x-max-age": "1h", "x-stream-partitions": 2})
    assert topic_partitions(broker, week) == 1
    assert topic_partitions(broker, hour) == 2
    week_config, hour_config = topic_config(broker, week), topic_config(broker, hour)
    assert (week_config["retention.ms"], week_config["retention.bytes"]) == ("604800000", "10000000")
    assert hour_config["retention.ms"] == "3600000"

    # Declaring again with the same arguments is fine and changes nothing.
    declare_stream(ch, week, **{"x-max-age": "7D", "x-max-length-bytes": 10_000_000})
    assert topic_partitions(broker, week) == 1

    ch.queue_delete(week)
    wait_until(lambda: topic_partitions(broker, week) is None, 10, what=f"topic {week} to be deleted")
    assert topic_partitions(broker, hour) == 2, "deleting one stream touched another topic"


def test_declaring_an_existing_topic_opens_it(broker, conn, name):
    create_topic(broker, name, partitions=4, config={"retention.ms": "7200000"})
    records = produce_all(producer(broker), name, [
        dict(key=f"k{i}".encode(), value=f"m-{i}".encode()) for i in range(12)
    ])
    ch = conn.channel()
    declare_stream(ch, name)
    assert topic_partitions(broker, name) == 4, "declaring the stream changed the topic's partitions"
    assert topic_config(broker, name)["retention.ms"] == "7200000", "declaring the stream changed its retention"
    got = consume_stream(conn, ch, name, 12, offset="first")
    assert sorted((p.headers["x-stream-partition"], p.headers["x-stream-offset"], b) for _, p, b in got) == sorted(
        (m.partition(), m.offset(), m.value()) for m in records
    )
