"""Kafka client quotas on the real broker: AlterClientQuotas and
DescribeClientQuotas through kafka-python's client and protocol codec
(its admin client has no call for them, nor has librdkafka:
compat/common/quotas.py), with Kafka's
entity filters and errors; a producer and a consumer held within 10% of
their byte rate over 10 s (confluent-kafka; librdkafka does not wait out
throttle_time_ms, so the broker's muted connection is what holds it);
a consumer under a quota smaller than its fetch size slowed, not starved;
request-time quotas throttling; the `/metrics` series per quota entity;
quotas kept across a restart.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer
from kafka import KafkaAdminClient

from common.quotas import alter, describe
from support import unique_name

INVALID_REQUEST = 42
RATE = 200_000  # bytes per second
VALUE = b"q" * 1000


@pytest.fixture(scope="module")
def quota_broker(tmp_path_factory, pki):
    from support import running

    with running(tmp_path_factory.mktemp("quotas") / "data", "broker[test_kafka_quotas]", pki, {},
                 listeners=(), amqps=False) as broker:
        yield broker


@pytest.fixture(scope="module")
def admin(quota_broker):
    client = KafkaAdminClient(bootstrap_servers=quota_broker.bootstrap, request_timeout_ms=30000)
    yield client
    client.close()


def metrics(broker) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def metric(broker, name: str, quota: str, user: str, client_id: str) -> float:
    pattern = (rf'^{name}\{{quota="{quota}",user="{re.escape(user)}",client_id="{re.escape(client_id)}"\}} '
               rf"(\S+)$")
    found = re.search(pattern, metrics(broker), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_quotas_are_altered_described_and_removed_as_kafka_does(admin):
    user, client = unique_name("alice"), unique_name("app")
    assert alter(admin, {"user": user}, {"producer_byte_rate": 1024.0, "request_percentage": 50.0}) == (0, None)
    assert alter(admin, {"user": user, "client-id": client}, {"consumer_byte_rate": 2048.0}) == (0, None)
    assert alter(admin, {"client-id": None}, {"consumer_byte_rate": 4096.0}) == (0, None)

    code, entries = describe(admin, [("user", 0, user)], strict=True)
    assert code == 0
    assert entries == {(("user", user),): {"producer_byte_rate": 1024.0, "request_percentage": 50.0}}
    # Not strict: every entity naming the user.
    _, entries = describe(admin, [("user", 0, user)])
    assert set(entries) == {(("user", user),), (("client-id", client), ("user", user))}
    # The default client id; and any client id at all (SPECIFIED).
    _, entries = describe(admin, [("client-id", 1, None)], strict=True)
    assert entries == {(("client-id", None),): {"consumer_byte_rate": 4096.0}}
    _, entries = describe(admin, [("client-id", 2, None)])
    assert {(("client-id", None),), (("client-id", client), ("user", user))} <= set(entries)

    # Removing the last quota of an entity removes it.
    assert alter(admin, {"user": user, "client-id": client}, {"consumer_byte_rate": None}) == (0, None)
    _, entries = describe(admin, [("user", 0, user)])
    assert set(entries) == {(("user", user),)}
    # validate_only changes nothing.
    assert alter(admin, {"user": user}, {"producer_byte_rate": 1.0}, validate_only=True) == (0, None)
    assert describe(admin, [("user", 0, user)], strict=True)[1][(("user", user),)]["producer_byte_rate"] == 1024.0
    # The module's other clients must not fall under the default client id.
    assert alter(admin, {"client-id": None}, {"consumer_byte_rate": None}) == (0, None)
    assert describe(admin, [("client-id", 1, None)], strict=True)[1] == {}


def test_bad_quotas_and_filters_are_refused(admin):
    user = unique_name("bad")
    for entity, ops in [({"user": user}, {"connection_creation_rate": 5.0}),
                        ({"user": user}, {"producer_byte_rate": 0.0}),
                        ({"user": user}, {"producer_byte_rate": 10.5}),
                        ({"ip": "10.0.0.1"}, {"connection_creation_rate": 5.0}),
                        ({"group": "g"}, {"producer_byte_rate": 10.0}),
                        ({"user": ""}, {"producer_byte_rate": 10.0})]:
        code, message = alter(admin, entity, ops)
        assert code == INVALID_REQUEST and message, (entity, ops, code, message)
    assert describe(admin, [("user", 0, user)])[1] == {}
    code, _ = describe(admin, [("user", 0, None)])
    assert code == INVALID_REQUEST
    code, _ = describe(admin, [("user", 0, "a"), ("user", 1, None)])
    assert code == INVALID_REQUEST


def produce_for(broker, client_id: str, topic: str, seconds: float) -> tuple[int, float, int]:
    """Produces 1000-byte records as fast as the client may for
    `seconds` after its first acknowledgement; (bytes acknowledged in
    that time, the time, the largest throttle_time_ms it was told)."""
    acked: list[float] = []
    throttles = [0]

    def stats(text: str) -> None:
        import json

        for b in json.loads(text)["brokers"].values():
            throttles[0] = max(throttles[0], b.get("throttle", {}).get("max", 0))

    producer = Producer({"bootstrap.servers": broker.bootstrap, "client.id": client_id, "acks": "1",
                         "linger.ms": 5, "batch.size": 16384, "queue.buffering.max.kbytes": 4096,
                         "statistics.interval.ms": 500, "stats_cb": stats})
    delivered = lambda err, _msg: acked.append(time.monotonic()) if err is None else None  # noqa: E731
    producer.produce(topic, VALUE, on_delivery=delivered)
    producer.flush(30)
    start = acked[0]
    deadline = start + seconds
    while time.monotonic() < deadline:
        try:
            producer.produce(topic, VALUE, on_delivery=delivered)
        except BufferError:
            producer.poll(0.05)
        producer.poll(0)
    producer.poll(1)
    in_time = sum(1 for at in acked if at <= deadline)
    del producer
    return in_time * len(VALUE), seconds, throttles[0]


def test_a_producer_is_held_within_ten_percent_of_its_byte_rate(quota_broker, admin):
    client, topic = unique_name("slow-producer"), unique_name("quota-in")
    assert alter(admin, {"client-id": client}, {"producer_byte_rate": float(RATE)}) == (0, None)
    sent, seconds, throttle = produce_for(quota_broker, client, topic, 10.0)
    rate = sent / seconds
    print(f"producer: {rate:.0f} B/s against {RATE}")
    assert 0.9 * RATE <= rate <= 1.1 * RATE, f"{rate:.0f} B/s against a quota of {RATE}"
    assert throttle > 0, "the client was never told throttle_time_ms"
    assert metric(quota_broker, "sluice_kafka_quota_throttle_seconds_total", "producer_byte_rate", "",
                  client) > 0
    # Another client id is not held.
    free_sent, _, free_throttle = produce_for(quota_broker, unique_name("free"), topic, 3.0)
    assert free_throttle == 0 and free_sent / 3.0 > RATE, free_sent


def test_a_consumer_is_held_within_ten_percent_of_its_byte_rate(quota_broker, admin):
    topic, client = unique_name("quota-out"), unique_name("slow-consumer")
    producer = Producer({"bootstrap.servers": quota_broker.bootstrap, "linger.ms": 20})
    for _ in range(6000):  # 6 MB: three times what the consumer may take in 10 s
        producer.produce(topic, VALUE)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert alter(admin, {"client-id": client}, {"consumer_byte_rate": float(RATE)}) == (0, None)
    consumer = Consumer({"bootstrap.servers": quota_broker.bootstrap, "client.id": client,
                         "group.id": unique_name("g"), "auto.offset.reset": "earliest",
                         "max.partition.fetch.bytes": 65536,
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    received, start, begun = 0, None, time.monotonic()
    try:
        while True:
            message = consumer.poll(0.2)
            now = time.monotonic()
            if start is not None and now > start + 10.0:
                break
            if message is not None and message.error() is None:
                if start is None:
                    start = now
                received += len(message.value())
            assert start is not None or now < begun + 30, "nothing consumed in 30 s"
    finally:
        consumer.close()
    rate = received / 10.0
    print(f"consumer: {rate:.0f} B/s against {RATE}")
    assert 0.9 * RATE <= rate <= 1.1 * RATE, f"{rate:.0f} B/s against a quota of {RATE}"
    assert metric(quota_broker, "sluice_kafka_quota_throttle_seconds_total", "consumer_byte_rate", "",
                  client) > 0


def test_request_time_is_measured_and_throttled(quota_broker, admin):
    client = unique_name("busy")
    # A millionth of a percent of a thread (a microsecond over the ten
    # seconds counted): any client is over it at its first request.
    assert alter(admin, {"client-id": client}, {"request_percentage": 1e-6}) == (0, None)
    busy = KafkaAdminClient(bootstrap_servers=quota_broker.bootstrap, client_id=client, request_timeout_ms=30000)
    try:
        for _ in range(5):
            busy.list_topics()
    finally:
        busy.close()
    assert metric(quota_broker, "sluice_kafka_quota_recorded_total", "request_percentage", "", client) > 0
    assert metric(quota_broker, "sluice_kafka_quota_throttle_seconds_total", "request_percentage", "",
                  client) > 0


def test_quotas_survive_a_restart(own_broker):
    broker = own_broker({}, listeners=(), amqps=False)
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        assert alter(client, {"user": None, "client-id": None}, {"producer_byte_rate": 5000.0}) == (0, None)
    finally:
        client.close()
    broker.stop()
    broker.start()
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        _, entries = describe(client, [("user", 1, None), ("client-id", 1, None)], strict=True)
        assert entries == {(("client-id", None), ("user", None)): {"producer_byte_rate": 5000.0}}
    finally:
        client.close()


def test_a_consumer_under_a_small_quota_still_gets_data(quota_broker, admin):
    """librdkafka asks for up to 1 MB per partition; a quota letting less
    through in its windows caps each fetch (as Kafka does), so the
    consumer is slowed, not starved."""
    topic, client = unique_name("small-quota"), unique_name("trickle")
    # Batches of 16 kB at most: a fetch capped at 100 kB holds several.
    producer = Producer({"bootstrap.servers": quota_broker.bootstrap, "linger.ms": 20, "batch.size": 16384})
    for _ in range(300):  # 300 kB: three times the 100 kB ten windows allow
        producer.produce(topic, VALUE)
    assert producer.flush(30) == 0
    assert alter(admin, {"client-id": client}, {"consumer_byte_rate": 10_000.0}) == (0, None)
    consumer = Consumer({"bootstrap.servers": quota_broker.bootstrap, "client.id": client,
                         "group.id": unique_name("g"), "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    received, deadline = 0, time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                received += len(message.value())
    finally:
        consumer.close()
    assert received > 0, "the consumer got nothing"
    assert received <= 110_000, f"{received} bytes in 10 s under a 10 kB/s quota"
