"""confluent-kafka AdminClient (librdkafka's admin API) against the broker.

Contract: CreateTopics keeps the given configs and DescribeConfigs returns
them; unknown config names and invalid values are rejected with
INVALID_CONFIG and create nothing; existing topics give TOPIC_ALREADY_EXISTS;
a manual replica assignment naming this broker (id 1) once per partition
is accepted, one naming any other broker (or it twice) gets
INVALID_REPLICA_ASSIGNMENT; CreatePartitions grows a topic and refuses to shrink it; DeleteTopics removes
a topic and its data.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic

from support import (
    CLIENT_TIMEOUT_S,
    assert_all_delivered,
    confluent_admin,
    confluent_consumer,
    confluent_producer,
    consume_confluent,
    create_topic_confluent,
    produce_all,
    wait_until,
)


def error_code(future) -> int:
    with pytest.raises(KafkaException) as raised:
        future.result(timeout=CLIENT_TIMEOUT_S)
    return raised.value.args[0].code()


def partition_count(admin, topic) -> int | None:
    metadata = admin.list_topics(timeout=10)
    entry = metadata.topics.get(topic)
    return None if entry is None else len(entry.partitions)


def describe(admin, topic) -> dict:
    futures = admin.describe_configs([ConfigResource("topic", topic)], request_timeout=CLIENT_TIMEOUT_S)
    [future] = futures.values()
    return future.result(timeout=CLIENT_TIMEOUT_S)


def test_create_topic_with_configs_and_describe_them(broker, topic):
    configs = {"retention.ms": "3600000", "segment.bytes": "10485760", "cleanup.policy": "delete"}
    admin = create_topic_confluent(broker, topic, partitions=2, config=configs)
    assert partition_count(admin, topic) == 2
    entries = describe(admin, topic)
    for name, value in configs.items():
        assert entries[name].value == value, name
        assert not entries[name].is_default, name
    for name in ("retention.bytes", "segment.ms", "max.message.bytes", "min.insync.replicas", "message.timestamp.type"):
        assert name in entries, f"{name} missing from DescribeConfigs"
        assert entries[name].value is not None, name


def test_unknown_config_name_is_rejected(broker, topic):
    admin = confluent_admin(broker)
    futures = admin.create_topics([NewTopic(topic, 1, 1, config={"no.such.config": "1"})], operation_timeout=10)
    assert error_code(futures[topic]) == KafkaError.INVALID_CONFIG
    assert partition_count(admin, topic) is None, "a rejected topic must not exist"


def test_invalid_config_value_is_rejected(broker, topic):
    admin = confluent_admin(broker)
    futures = admin.create_topics([NewTopic(topic, 1, 1, config={"retention.ms": "soon"})], operation_timeout=10)
    assert error_code(futures[topic]) == KafkaError.INVALID_CONFIG
    assert partition_count(admin, topic) is None


def test_validate_only_creates_nothing(broker, topic):
    admin = confluent_admin(broker)
    futures = admin.create_topics([NewTopic(topic, 3, 1)], validate_only=True, operation_timeout=10)
    futures[topic].result(timeout=CLIENT_TIMEOUT_S)
    assert partition_count(admin, topic) is None


def test_creating_an_existing_topic_gives_topic_already_exists(broker, topic):
    admin = create_topic_confluent(broker, topic, partitions=1)
    futures = admin.create_topics([NewTopic(topic, 5, 1)], operation_timeout=10)
    assert error_code(futures[topic]) == KafkaError.TOPIC_ALREADY_EXISTS
    assert partition_count(admin, topic) == 1


def test_one_result_per_topic_in_a_mixed_create(broker, topic):
    admin = create_topic_confluent(broker, topic, partitions=1)
    fresh = topic + "-fresh"
    futures = admin.create_topics([NewTopic(topic, 1, 1), NewTopic(fresh, 2, 1)], operation_timeout=10)
    assert set(futures) == {topic, fresh}
    futures[fresh].result(timeout=CLIENT_TIMEOUT_S)
    assert error_code(futures[topic]) == KafkaError.TOPIC_ALREADY_EXISTS
    assert partition_count(admin, fresh) == 2


def test_create_topic_with_a_replica_assignment_on_this_broker(broker, topic):
    """A manual assignment naming this node (id 1) for every partition is
    accepted; the topic has the assignment's partition count."""
    admin = confluent_admin(broker)
    futures = admin.create_topics([NewTopic(topic, 3, replica_assignment=[[1], [1], [1]])], operation_timeout=10)
    futures[topic].result(timeout=CLIENT_TIMEOUT_S)
    assert partition_count(admin, topic) == 3
    [described] = admin.describe_topics(TopicCollection([topic])).values()
    partitions = described.result(timeout=CLIENT_TIMEOUT_S).partitions
    assert [p.id for p in partitions] == [0, 1, 2]
    assert all([r.id for r in p.replicas] == [1] for p in partitions)


@pytest.mark.parametrize(
    "assignment",
    [[[7]], [[1], [7]], [[1, 1]], [[1, 7]]],
    ids=["unknown-broker", "unknown-broker-in-partition-1", "broker-twice", "two-replicas"],
)
def test_replica_assignment_naming_other_brokers_is_invalid_39(broker, topic, assignment):
    admin = confluent_admin(broker)
    # librdkafka wants the partition count and sends -1 in its place.
    futures = admin.create_topics(
        [NewTopic(topic, len(assignment), replica_assignment=assignment)], operation_timeout=10
    )
    assert error_code(futures[topic]) == KafkaError.INVALID_REPLICA_ASSIGNMENT
    assert partition_count(admin, topic) is None, "a rejected topic must not exist"


def test_create_partitions_grows_and_refuses_to_shrink(broker, topic):
    admin = create_topic_confluent(broker, topic, partitions=2)
    futures = admin.create_partitions([NewPartitions(topic, 4)], operation_timeout=10)
    futures[topic].result(timeout=CLIENT_TIMEOUT_S)
    wait_until(lambda: partition_count(admin, topic) == 4, timeout=10, what="4 partitions in metadata")
    futures = admin.create_partitions([NewPartitions(topic, 3)], operation_timeout=10)
    assert error_code(futures[topic]) == KafkaError.INVALID_PARTITIONS
    assert partition_count(admin, topic) == 4

    # The new partitions take records.
    producer = confluent_producer(broker)
    assert_all_delivered(produce_all(producer, [{"topic": topic, "partition": 3, "value": b"in p3"}]))


def test_describe_configs_of_an_unknown_topic_fails(broker, topic):
    admin = confluent_admin(broker)
    futures = admin.describe_configs([ConfigResource("topic", topic)], request_timeout=CLIENT_TIMEOUT_S)
    [future] = futures.values()
    assert error_code(future) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_delete_topics_removes_topic_and_data(broker, topic):
    admin = create_topic_confluent(broker, topic, partitions=1)
    producer = confluent_producer(broker)
    assert_all_delivered(produce_all(producer, [{"topic": topic, "value": b"old"}] * 3))
    # A live producer refreshes metadata for its topics and could auto-create
    # the deleted topic again; it goes first.
    del producer

    futures = admin.delete_topics([topic], operation_timeout=10)
    futures[topic].result(timeout=CLIENT_TIMEOUT_S)
    wait_until(lambda: partition_count(admin, topic) is None, timeout=10, what="topic to leave metadata")

    # Recreated under the same name, the topic starts empty.
    create_topic_confluent(broker, topic, partitions=1)
    consumer = confluent_consumer(broker)
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 0)
    finally:
        consumer.close()


def test_deleting_an_unknown_topic_fails(broker, topic):
    admin = confluent_admin(broker)
    futures = admin.delete_topics([topic], operation_timeout=10)
    assert error_code(futures[topic]) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_node_id_is_the_broker_id_clients_see(tmp_path, request):
    from common.broker import per_test_broker

    with per_test_broker(tmp_path, request, settings={"node.id": "7"}) as node:
        admin = confluent_admin(node)
        metadata = admin.list_topics(timeout=10)
        assert list(metadata.brokers) == [7]
        assert metadata.controller_id == 7
        topic = "node-id-topic"
        create_topic_confluent(node, topic, partitions=2)
        # A manual assignment must name this node's id now.
        [bad] = admin.create_topics([NewTopic("node-id-bad", 1, replica_assignment=[[1]])]).values()
        assert error_code(bad) == KafkaError.INVALID_REPLICA_ASSIGNMENT
        [good] = admin.create_topics([NewTopic("node-id-good", 1, replica_assignment=[[7]])]).values()
        good.result(timeout=CLIENT_TIMEOUT_S)
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
        assert {p.leader for p in partitions.values()} == {7}
        assert all(p.replicas == [7] and p.isrs == [7] for p in partitions.values())
        # The group coordinator is node 7 too: a group consumer gets its data.
        assert_all_delivered(produce_all(confluent_producer(node), [{"topic": topic, "value": b"v"}]))
        consumer = confluent_consumer(node, group="node-id-group", **{"auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        try:
            messages = consume_confluent(consumer, 1)
            assert [m.value() for m in messages] == [b"v"]
        finally:
            consumer.close()
