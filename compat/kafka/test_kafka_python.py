"""kafka-python 2.x (pure Python, older non-flexible request versions) against
the broker.

Contract: records with keys and headers round trip through KafkaProducer and
a manually assigned KafkaConsumer (group_id=None); beginning/end offsets and
offsets_for_times answer ListOffsets correctly; KafkaAdminClient gets a full
per-topic result from CreateTopics, DeleteTopics, CreatePartitions and
DescribeConfigs, with the right Kafka error per failing topic.
"""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import (
    InvalidPartitionsError,
    InvalidReplicationAssignmentError,
    InvalidRequestError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

from support import CLIENT_TIMEOUT_S, unique_name, wait_until

TOPIC_CONFIG_NAMES = {
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "cleanup.policy",
    "max.message.bytes",
    "min.insync.replicas",
    "message.timestamp.type",
    # Kafka 3.9 keys Sluice stores only.
    "compression.type",
    "file.delete.delay.ms",
    "flush.ms",
    "message.format.version",
    "preallocate",
    "segment.index.bytes",
}


@pytest.fixture
def producer(broker):
    instance = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", request_timeout_ms=20000)
    try:
        yield instance
    finally:
        instance.close(timeout=10)


@pytest.fixture
def consumer(broker):
    instance = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=30000,
        auto_offset_reset="none",
    )
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def admin(broker):
    instance = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=20000)
    try:
        yield instance
    finally:
        instance.close()


def send_all(producer, topic, records):
    """records: dicts of KafkaProducer.send kwargs; returns RecordMetadata."""
    futures = [producer.send(topic, **record) for record in records]
    producer.flush(timeout=CLIENT_TIMEOUT_S)
    return [future.get(timeout=CLIENT_TIMEOUT_S) for future in futures]


def poll_records(consumer, count, timeout=CLIENT_TIMEOUT_S, settle=0.5):
    records = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    settle_deadline = time.monotonic() + settle
    while time.monotonic() < settle_deadline:
        for batch in consumer.poll(timeout_ms=100).values():
            records.extend(batch)
    return records


def test_keyed_records_with_headers_round_trip(broker, producer, consumer, topic):
    records = [
        {"key": f"k{i % 3}".encode(), "value": f"v{i}".encode(), "headers": [("seq", str(i).encode()), ("h", b"")]}
        for i in range(50)
    ]
    metadata = send_all(producer, topic, records)
    assert [m.offset for m in metadata] == list(range(50))
    assert {m.partition for m in metadata} == {0}, "auto-created topics get 1 partition"

    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = poll_records(consumer, 50)
    assert [(r.offset, r.key, r.value, list(r.headers)) for r in got] == [
        (i, r["key"], r["value"], r["headers"]) for i, r in enumerate(records)
    ]


# acks=0 is left out: kafka-python 2.3.3 queues an acks=0 Produce but never
# flushes it to the socket (its future is done at once, so the connection is
# not put on the sending list), whatever the broker; see FINDINGS.md.
# librdkafka covers acks=0 in test_confluent_clients.py.
@pytest.mark.parametrize("acks", [1, "all"])
def test_each_acks_setting_stores_the_records(broker, consumer, topic, acks):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=acks, request_timeout_ms=20000)
    try:
        metadata = send_all(producer, topic, [{"value": f"acks={acks} #{i}".encode()} for i in range(20)])
    finally:
        producer.close(timeout=10)
    assert [m.offset for m in metadata] == list(range(20))
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    assert [r.value for r in poll_records(consumer, 20)] == [f"acks={acks} #{i}".encode() for i in range(20)]


def test_gzip_batches_round_trip(broker, consumer, topic):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", compression_type="gzip", linger_ms=50)
    try:
        values = [(f"gzip record {i} " * 30).encode() for i in range(100)]
        send_all(producer, topic, [{"value": v} for v in values])
    finally:
        producer.close(timeout=10)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    assert [r.value for r in poll_records(consumer, 100)] == values


def test_beginning_and_end_offsets(broker, producer, consumer, topic):
    send_all(producer, topic, [{"value": b"x"}] * 12)
    tp = TopicPartition(topic, 0)
    assert consumer.beginning_offsets([tp]) == {tp: 0}
    assert consumer.end_offsets([tp]) == {tp: 12}


def test_offsets_for_times_finds_the_first_record_at_or_after(broker, producer, consumer, topic):
    base = int(time.time() * 1000) - 3_600_000
    records = [{"value": f"early-{i}".encode(), "timestamp_ms": base + i} for i in range(10)]
    records += [{"value": f"late-{i}".encode(), "timestamp_ms": base + 100_000 + i} for i in range(5)]
    send_all(producer, topic, records)
    tp = TopicPartition(topic, 0)

    found = consumer.offsets_for_times({tp: base + 50_000})[tp]
    assert (found.offset, found.timestamp) == (10, base + 100_000)
    assert consumer.offsets_for_times({tp: base + 200_000})[tp] is None

    consumer.assign([tp])
    consumer.seek(tp, found.offset)
    got = poll_records(consumer, 5)
    assert [(r.value, r.timestamp) for r in got] == [(f"late-{i}".encode(), base + 100_000 + i) for i in range(5)]


def test_seek_to_end_then_only_new_records(broker, producer, consumer, topic):
    send_all(producer, topic, [{"value": f"old-{i}".encode()} for i in range(8)])
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    assert consumer.position(tp, timeout_ms=20000) == 8
    send_all(producer, topic, [{"value": f"new-{i}".encode()} for i in range(3)])
    got = poll_records(consumer, 3)
    assert [(r.offset, r.value) for r in got] == [(8 + i, f"new-{i}".encode()) for i in range(3)]


@pytest.fixture
def metadata_view(broker):
    """A consumer used only to read topic metadata. It never auto-creates a
    topic, and its Metadata requests do not ask for authorized operations, so
    these tests do not depend on what the admin client's describe_topics
    needs (test_admin_lists_and_describes_topics covers that)."""
    instance = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, allow_auto_create_topics=False)
    try:
        yield instance
    finally:
        instance.close()


def topic_partitions(view, name):
    """Sorted partition ids of `name`, or None if the topic does not exist."""
    if name not in view.topics():  # refreshes the metadata of every topic
        return None
    return sorted(view.partitions_for_topic(name))


def test_admin_lists_and_describes_topics(broker, admin, topic):
    admin.create_topics([NewTopic(topic, 3, 1)])
    assert topic in admin.list_topics()
    [described] = admin.describe_topics([topic])
    assert (described["topic"], described["error_code"]) == (topic, 0)
    assert sorted(p["partition"] for p in described["partitions"]) == [0, 1, 2]
    cluster = admin.describe_cluster()
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", broker.kafka_port)]


def test_create_topics_returns_a_result_per_topic(broker, admin, metadata_view):
    names = [unique_name("kp-create-a"), unique_name("kp-create-b")]
    response = admin.create_topics([NewTopic(names[0], 1, 1), NewTopic(names[1], 4, 1)])
    results = {entry[0]: entry[1] for entry in response.topic_errors}
    assert results == {names[0]: 0, names[1]: 0}
    assert topic_partitions(metadata_view, names[0]) == [0]
    assert topic_partitions(metadata_view, names[1]) == [0, 1, 2, 3]


def test_creating_an_existing_topic_raises_topic_already_exists(broker, admin, metadata_view, topic):
    admin.create_topics([NewTopic(topic, 2, 1)])
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics([NewTopic(topic, 2, 1)])
    assert topic_partitions(metadata_view, topic) == [0, 1], "the existing topic is untouched"


def test_zero_partitions_is_rejected_with_invalid_partitions(broker, admin, metadata_view, topic):
    with pytest.raises(InvalidPartitionsError):
        admin.create_topics([NewTopic(topic, 0, 1)])
    assert topic_partitions(metadata_view, topic) is None


def test_replica_assignment_follows_kafkas_rules(broker, admin, metadata_view, topic):
    """With a manual assignment Kafka wants num_partitions and
    replication_factor at -1 (else INVALID_REQUEST) and partitions numbered
    0..n-1 (else INVALID_REPLICA_ASSIGNMENT); kafka-python sends the fields
    as given, which librdkafka does not."""
    three = {0: [1], 1: [1], 2: [1]}
    with pytest.raises(InvalidRequestError):
        admin.create_topics([NewTopic(topic, 3, -1, replica_assignments=three)])
    with pytest.raises(InvalidRequestError):
        admin.create_topics([NewTopic(topic, -1, 1, replica_assignments=three)])
    with pytest.raises(InvalidReplicationAssignmentError):
        admin.create_topics([NewTopic(topic, -1, -1, replica_assignments={0: [1], 2: [1]})])
    assert topic_partitions(metadata_view, topic) is None
    admin.create_topics([NewTopic(topic, -1, -1, replica_assignments={0: [1], 1: [1]})])
    assert topic_partitions(metadata_view, topic) == [0, 1]


def test_partitions_grow_but_never_shrink(broker, admin, metadata_view, topic):
    admin.create_topics([NewTopic(topic, 1, 1)])
    response = admin.create_partitions({topic: NewPartitions(3)})
    assert [(entry[0], entry[1]) for entry in response.topic_errors] == [(topic, 0)]
    assert topic_partitions(metadata_view, topic) == [0, 1, 2]
    with pytest.raises(InvalidPartitionsError):
        admin.create_partitions({topic: NewPartitions(2)})
    assert topic_partitions(metadata_view, topic) == [0, 1, 2]


def test_delete_topics_removes_the_topic(broker, admin, metadata_view, topic):
    admin.create_topics([NewTopic(topic, 1, 1)])
    assert topic_partitions(metadata_view, topic) == [0]
    response = admin.delete_topics([topic])
    assert [(entry[0], entry[1]) for entry in response.topic_error_codes] == [(topic, 0)]
    wait_until(
        lambda: topic_partitions(metadata_view, topic) is None, timeout=10, what="deleted topic to leave the listing"
    )
    with pytest.raises(UnknownTopicOrPartitionError):
        admin.delete_topics([unique_name("kp-never-created")])


def test_describe_configs_reports_every_topic_config(broker, admin, topic):
    configs = {"retention.ms": "86400000", "cleanup.policy": "delete", "max.message.bytes": "500000"}
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
    [response] = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    [resource] = response.resources
    error_code, _error_message, resource_type, resource_name, entries = resource[:5]
    assert (error_code, resource_type, resource_name) == (0, ConfigResourceType.TOPIC.value, topic)
    values = {entry[0]: entry[1] for entry in entries}
    assert TOPIC_CONFIG_NAMES <= set(values), f"missing: {TOPIC_CONFIG_NAMES - set(values)}"
    for name, value in configs.items():
        assert values[name] == value, name
    assert values["message.timestamp.type"] == "CreateTime"

    # Asking for named keys returns exactly those.
    [response] = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": None})])
    [resource] = response.resources
    assert [(entry[0], entry[1]) for entry in resource[4]] == [("retention.ms", "86400000")]


def test_find_coordinator_returns_this_broker(broker, admin, group):
    # kafka-python has no public call for this; the admin client's own
    # request builder keeps the version choice in kafka-python's hands.
    response = admin.send_request(admin._find_coordinator_id_request(group))
    assert response.error_code == 0, response
    assert (response.host, response.port) == ("127.0.0.1", broker.kafka_port)
    node_ids = {b.nodeId for b in admin._client.cluster.brokers()}
    assert response.coordinator_id in node_ids
