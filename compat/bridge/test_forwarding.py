"""Topics that feed exchanges: Kafka producers, AMQP queues.

Contract (docs/bridging.md, "Topics that feed queues"): a topic whose
config `sluice.forward.exchange` names an exchange (set at creation or
later, with either AlterConfigs form) publishes every record there as a
persistent message (transient when the record says
`amqp.delivery-mode: 1`), the routing key taken from the record key or,
with `sluice.forward.routing.key = header:<name>`, from that header; the
mapping turns `amqp.*` headers into properties and every other header
into a long-string entry of the headers table (a null one into void). The
queues apply their priorities, TTL and dead-lettering. A missing exchange
stalls forwarding without skipping anything. The position is the
committed offset of the group `__sluice_forward:<vhost>:<exchange>`.
"""

from __future__ import annotations

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from support import (
    CLIENT_TIMEOUT_S,
    admin,
    create_topic,
    get_all,
    producer,
    produce_all,
    topic_config,
    wait_for_count,
    wait_until,
    watermarks,
)


def forward_group(exchange: str, vhost: str = "/") -> str:
    return f"__sluice_forward:{vhost}:{exchange}"


def committed_offsets(broker, group: str, topic: str, partitions: int) -> dict[int, int]:
    client = admin(broker)
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
    [future] = client.list_consumer_group_offsets(request, request_timeout=CLIENT_TIMEOUT_S).values()
    return {tp.partition: tp.offset for tp in future.result(timeout=CLIENT_TIMEOUT_S).topic_partitions}


def test_records_reach_bound_queues_as_the_mapping_says(broker, ch, name):
    exchange, topic, queue = f"{name}-x", f"{name}-t", f"{name}-q"
    ch.exchange_declare(exchange, "direct", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, exchange, "k1")
    # Forwarding set at creation (CreateTopics with a config).
    create_topic(broker, topic, config={"sluice.forward.exchange": exchange})
    assert topic_config(broker, topic)["sluice.forward.exchange"] == exchange

    produce_all(producer(broker), topic, [
        dict(key=b"k1", value=b"v0", headers=[("h", b"v"), ("amqp.priority", b"3"),
                                              ("amqp.content-type", b"text/plain"), ("empty", None)]),
        dict(key=b"k2", value=b"not routed"),
        dict(key=b"k1", value=b"v2", headers=[("amqp.delivery-mode", b"1"), ("amqp.message-id", b"m-2")]),
    ])
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", request_timeout_ms=20000)
    try:
        kp.send(topic, key=b"k1", value=b"v3", headers=[("kp", b"yes")]).get(timeout=CLIENT_TIMEOUT_S)
    finally:
        kp.close(timeout=10)

    assert wait_for_count(ch, queue, 3) == 3
    got = get_all(ch, queue)
    assert [body for _, _, body in got] == [b"v0", b"v2", b"v3"], "the routed records, in offset order"
    (m0, p0, _), (m2, p2, _), (m3, p3, _) = got
    assert [(m.exchange, m.routing_key) for m in (m0, m2, m3)] == [(exchange, "k1")] * 3
    assert (p0.delivery_mode, p0.priority, p0.content_type, p0.headers) == (
        2, 3, "text/plain", {"h": "v", "empty": None})
    assert (p2.delivery_mode, p2.message_id, p2.headers) == (1, "m-2", None)
    assert (p3.delivery_mode, p3.headers) == (2, {"kp": "yes"})

    # The position is the forwarder's committed group offset: the end.
    end = watermarks(broker, topic)
    assert end == {0: 4}
    wait_until(lambda: committed_offsets(broker, forward_group(exchange), topic, 1) == end, 10,
               what=f"the committed offset of {forward_group(exchange)} to reach {end}")


def test_routing_key_from_a_header_set_with_alter_configs(broker, ch, name):
    exchange, topic = f"{name}-x", f"{name}-t"
    queue_a, queue_b = f"{name}-a", f"{name}-b"
    ch.exchange_declare(exchange, "direct", durable=True)
    for queue, key in ((queue_a, "a"), (queue_b, "b")):
        ch.queue_declare(queue, durable=True)
        ch.queue_bind(queue, exchange, key)
    create_topic(broker, topic)
    # kafka-python's AlterConfigs (the whole set at once).
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=20000)
    try:
        response = client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={
            "sluice.forward.exchange": exchange,
            "sluice.forward.routing.key": "header:route",
        })])
        assert [resource[0] for resource in response.resources] == [0], response
    finally:
        client.close()
    config = topic_config(broker, topic)
    assert (config["sluice.forward.exchange"], config["sluice.forward.routing.key"]) == (exchange, "header:route")

    produce_all(producer(broker), topic, [
        dict(key=b"b", value=f"m-{i}".encode(), headers=[("route", b"a" if i % 3 == 0 else b"b")])
        for i in range(12)
    ])
    assert wait_for_count(ch, queue_b, 8) == 8
    assert wait_for_count(ch, queue_a, 4) == 4
    got_a, got_b = get_all(ch, queue_a), get_all(ch, queue_b)
    assert [body for _, _, body in got_a] == [f"m-{i}".encode() for i in range(12) if i % 3 == 0]
    assert [body for _, _, body in got_b] == [f"m-{i}".encode() for i in range(12) if i % 3 != 0]
    assert {m.routing_key for m, _, _ in got_a} == {"a"}


def test_a_missing_exchange_stalls_forwarding_and_skips_nothing(broker, ch, name):
    exchange, alternate, topic, queue = f"{name}-x", f"{name}-ae", f"{name}-t", f"{name}-q"
    create_topic(broker, topic, config={"sluice.forward.exchange": exchange})
    produce_all(producer(broker), topic, [dict(key=b"k", value=f"m-{i}".encode()) for i in range(20)])
    ch.connection.sleep(1.5)  # at least one failed attempt
    # The exchange routes everything from the moment it exists: its
    # alternate exchange already leads to the queue.
    ch.exchange_declare(alternate, "fanout", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, alternate, "")
    ch.exchange_declare(exchange, "direct", durable=True, arguments={"alternate-exchange": alternate})
    assert wait_for_count(ch, queue, 20, timeout=10) == 20
    ch.connection.sleep(0.5)
    assert [body for _, _, body in get_all(ch, queue)] == [f"m-{i}".encode() for i in range(20)]


def test_a_priority_queue_orders_forwarded_records(broker, ch, name):
    exchange, topic, queue = f"{name}-x", f"{name}-t", f"{name}-q"
    ch.exchange_declare(exchange, "direct", durable=True)
    ch.queue_declare(queue, durable=True, arguments={"x-max-priority": 5})
    ch.queue_bind(queue, exchange, "p")
    create_topic(broker, topic, config={"sluice.forward.exchange": exchange})
    count = 40
    produce_all(producer(broker), topic, [
        dict(key=b"p", value=str(i).encode(), headers=[("amqp.priority", str(i % 8).encode())]) for i in range(count)
    ])
    assert wait_for_count(ch, queue, count) == count
    got = get_all(ch, queue)
    # Priorities above x-max-priority count as the maximum (RabbitMQ).
    expected = sorted(range(count), key=lambda i: (-min(i % 8, 5), i))
    assert [int(body) for _, _, body in got] == expected
    assert [p.priority for _, p, _ in got] == [i % 8 for i in expected]


def test_expired_forwarded_records_are_dead_lettered(broker, ch, name):
    exchange, topic, queue = f"{name}-x", f"{name}-t", f"{name}-q"
    dead_letters, dead_queue = f"{name}-dlx", f"{name}-dlq"
    ch.exchange_declare(dead_letters, "fanout", durable=True)
    ch.queue_declare(dead_queue, durable=True)
    ch.queue_bind(dead_queue, dead_letters, "")
    ch.exchange_declare(exchange, "topic", durable=True)
    ch.queue_declare(queue, durable=True, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": dead_letters})
    ch.queue_bind(queue, exchange, "job.#")
    create_topic(broker, topic, config={"sluice.forward.exchange": exchange})
    count = 25
    produce_all(producer(broker), topic, [dict(key=f"job.{i}".encode(), value=str(i).encode()) for i in range(count)])
    assert wait_for_count(ch, dead_queue, count) == count
    ch.connection.sleep(0.3)
    assert ch.queue_declare(queue, passive=True).method.message_count == 0
    got = get_all(ch, dead_queue)
    assert [int(body) for _, _, body in got] == list(range(count))
    for method, properties, body in got:
        [death] = properties.headers["x-death"]
        assert (death["reason"], death["queue"], death["exchange"], death["routing-keys"]) == (
            "expired", queue, exchange, [f"job.{int(body)}"])
        assert properties.delivery_mode == 2
