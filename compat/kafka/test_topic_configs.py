"""Every topic config of Apache Kafka 3.9, from real clients.

Contract: CreateTopics and AlterConfigs accept every topic-level key Kafka
3.9 accepts (TopicConfig), including the ones Sluice stores only
(compression.type, file.delete.delay.ms, message.format.version, …), and
check each value's type and range as Kafka does, refusing a bad one with
INVALID_CONFIG naming the key. DescribeConfigs lists the whole key set with
Kafka's defaults, DEFAULT_CONFIG or DYNAMIC_TOPIC_CONFIG as the source, not
read-only, with the config type (v3+) and synonyms (the override, then the
broker setting the default comes from). message.timestamp.before.max.ms
refuses a record whose CreateTime is too old with INVALID_TIMESTAMP.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewTopic

from support import (
    CLIENT_TIMEOUT_S,
    Reader,
    confluent_admin,
    confluent_producer,
    create_topic_confluent,
    kafka_string,
    recv_frame,
    request_frame,
)

# Apache Kafka 3.9's TopicConfig keys and their defaults on a broker with
# default settings (`kafka-configs --describe --all` of a fresh topic).
KAFKA_39_DEFAULTS = {
    "cleanup.policy": "delete",
    "compression.gzip.level": "-1",
    "compression.lz4.level": "9",
    "compression.type": "producer",
    "compression.zstd.level": "3",
    "delete.retention.ms": "86400000",
    "file.delete.delay.ms": "60000",
    "flush.messages": "9223372036854775807",
    "flush.ms": "9223372036854775807",
    "follower.replication.throttled.replicas": "",
    "index.interval.bytes": "4096",
    "leader.replication.throttled.replicas": "",
    "local.retention.bytes": "-2",
    "local.retention.ms": "-2",
    "max.compaction.lag.ms": "9223372036854775807",
    "max.message.bytes": "1048588",
    "message.downconversion.enable": "true",
    "message.format.version": "3.0-IV1",
    "message.timestamp.after.max.ms": "9223372036854775807",
    "message.timestamp.before.max.ms": "9223372036854775807",
    "message.timestamp.difference.max.ms": "9223372036854775807",
    "message.timestamp.type": "CreateTime",
    "min.cleanable.dirty.ratio": "0.5",
    "min.compaction.lag.ms": "0",
    "min.insync.replicas": "1",
    "preallocate": "false",
    "remote.storage.enable": "false",
    "retention.bytes": "-1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
    "segment.index.bytes": "10485760",
    "segment.jitter.ms": "0",
    "segment.ms": "604800000",
    "unclean.leader.election.enable": "false",
}

DESCRIBE_CONFIGS = 32
TOPIC = 2
DYNAMIC_TOPIC_CONFIG = 1
DEFAULT_CONFIG = 5
# DescribeConfigs v3+ config_type numbers.
BOOLEAN, STRING, INT, LONG, DOUBLE, LIST = 1, 2, 3, 5, 6, 7


def describe(admin, topic) -> dict:
    [future] = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return dict(future.result(timeout=CLIENT_TIMEOUT_S).items())


def create_error(admin, topic, config) -> KafkaError:
    futures = admin.create_topics([NewTopic(topic, 1, 1, config=config)], operation_timeout=10)
    with pytest.raises(KafkaException) as raised:
        futures[topic].result(timeout=CLIENT_TIMEOUT_S)
    return raised.value.args[0]


def test_stored_only_configs_are_accepted_and_reported_as_set(broker, topic):
    configs = {
        "compression.type": "zstd",
        "file.delete.delay.ms": "1000",
        "message.format.version": "3.0-IV1",
    }
    admin = create_topic_confluent(broker, topic, config=configs)
    entries = describe(admin, topic)
    for name, value in configs.items():
        assert entries[name].value == value, name
        assert entries[name].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, name
        assert not entries[name].is_default, name
        assert not entries[name].is_read_only, name
    synonyms = entries["file.delete.delay.ms"].synonyms
    assert synonyms["file.delete.delay.ms"].value == "1000"
    assert synonyms["log.segment.delete.delay.ms"].value == "60000"
    assert synonyms["log.segment.delete.delay.ms"].source == ConfigSource.DEFAULT_CONFIG.value


def test_a_fresh_topic_lists_every_kafka_config_with_its_default(broker, topic):
    admin = create_topic_confluent(broker, topic)
    entries = describe(admin, topic)
    missing = set(KAFKA_39_DEFAULTS) - set(entries)
    assert not missing, f"missing from DescribeConfigs: {sorted(missing)}"
    for name, default in KAFKA_39_DEFAULTS.items():
        entry = entries[name]
        assert (entry.value, entry.source) == (default, ConfigSource.DEFAULT_CONFIG.value), name
        assert not entry.is_read_only, name
    # Sluice's own keys are still listed.
    assert entries["sluice.forward.routing.key"].value == "key"


@pytest.mark.parametrize(
    "name,bad,good",
    [
        ("preallocate", "maybe", "true"),
        ("flush.ms", "-5", "1000"),
        ("compression.type", "brotli", "lz4"),
        ("segment.index.bytes", "2", "4096"),
    ],
)
def test_a_bad_value_is_invalid_config_naming_the_key(broker, topic, name, bad, good):
    admin = confluent_admin(broker)
    error = create_error(admin, topic, {name: bad})
    assert error.code() == KafkaError.INVALID_CONFIG
    assert name in error.str()
    assert bad in error.str(), "the message names the value, so it is not an unknown-key refusal"
    create_topic_confluent(broker, topic, config={name: good})
    assert describe(admin, topic)[name].value == good


def test_incremental_alter_sets_a_stored_only_config(broker, topic):
    admin = create_topic_confluent(broker, topic)
    resource = ConfigResource(
        "topic",
        topic,
        incremental_configs=[ConfigEntry("flush.messages", "100", incremental_operation=AlterConfigOpType.SET)],
    )
    [future] = admin.incremental_alter_configs([resource]).values()
    future.result(timeout=CLIENT_TIMEOUT_S)
    assert describe(admin, topic)["flush.messages"].value == "100"


def raw_describe_v3(broker, topic) -> dict:
    """DescribeConfigs v3 (the first carrying config_type) with synonyms:
    {name: (value, source, read_only, config_type, [(synonym, value, source)])}."""
    body = (
        struct.pack(">ib", 1, TOPIC) + kafka_string(topic) + struct.pack(">i", -1)  # all keys
        + struct.pack(">??", True, False)  # include_synonyms, include_documentation
    )
    with socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request_frame(DESCRIBE_CONFIGS, 3, 7, body))
        reader = Reader(recv_frame(sock))
    assert reader.int32() == 7, "correlation id"
    reader.int32()  # throttle_time_ms
    assert reader.int32() == 1, "one resource"
    assert reader.int16() == 0, "error code"
    reader.string()
    assert (reader.int8(), reader.string()) == (TOPIC, topic)
    entries = {}
    for _ in range(reader.int32()):
        name, value = reader.string(), reader.string()
        read_only, source, _sensitive = reader.int8(), reader.int8(), reader.int8()
        synonyms = [(reader.string(), reader.string(), reader.int8()) for _ in range(reader.int32())]
        config_type = reader.int8()
        reader.string()  # documentation
        entries[name] = (value, source, read_only, config_type, synonyms)
    assert reader.remaining() == 0
    return entries


def test_describe_configs_v3_carries_types_and_synonyms(broker, topic):
    create_topic_confluent(broker, topic, config={"segment.ms": "3600000"})
    entries = raw_describe_v3(broker, topic)
    assert set(KAFKA_39_DEFAULTS) <= set(entries)
    expected_types = {
        "cleanup.policy": LIST,
        "compression.type": STRING,
        "segment.index.bytes": INT,
        "max.compaction.lag.ms": LONG,
        "min.cleanable.dirty.ratio": DOUBLE,
        "preallocate": BOOLEAN,
    }
    for name, config_type in expected_types.items():
        assert entries[name][3] == config_type, name
    assert entries["segment.ms"][:3] == ("3600000", DYNAMIC_TOPIC_CONFIG, 0)
    assert entries["segment.ms"][4] == [
        ("segment.ms", "3600000", DYNAMIC_TOPIC_CONFIG),
        ("log.roll.ms", "604800000", DEFAULT_CONFIG),
    ]
    assert entries["preallocate"][4] == [("log.preallocate", "false", DEFAULT_CONFIG)]


def test_a_record_older_than_timestamp_before_max_is_invalid_timestamp(broker, topic):
    create_topic_confluent(broker, topic, config={"message.timestamp.before.max.ms": "3600000"})
    producer = confluent_producer(broker, **{"acks": "all", "retries": 0})
    reports = []
    now_ms = int(time.time() * 1000)
    # Sent one at a time so each is its own batch.
    producer.produce(topic, value=b"old", timestamp=now_ms - 24 * 3600 * 1000,
                     on_delivery=lambda err, msg: reports.append(err))
    producer.flush(CLIENT_TIMEOUT_S)
    producer.produce(topic, value=b"fresh", timestamp=now_ms, on_delivery=lambda err, msg: reports.append(err))
    producer.flush(CLIENT_TIMEOUT_S)
    assert len(reports) == 2, reports
    assert reports[0] is not None and reports[0].code() == KafkaError.INVALID_TIMESTAMP, reports
    assert reports[1] is None, reports
