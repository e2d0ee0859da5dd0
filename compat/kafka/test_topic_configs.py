"""Every topic config of Apache Kafka 3.9, from real clients.

Contract: CreateTopics and AlterConfigs accept every topic-level key Kafka
3.9 accepts (TopicConfig), including the ones Sluice stores only
(compression.type, file.delete.delay.ms, message.format.version, …), and
check each value's type and range as Kafka does, refusing a bad one with
INVALID_CONFIG naming the key. DescribeConfigs lists the whole key set with
Kafka's defaults, DEFAULT_CONFIG or DYNAMIC_TOPIC_CONFIG as the source, not
read-only, with the config type (v3+) and synonyms (the override, then the
broker setting the default comes from, none where that setting has no
default of its own, as Kafka 3.9). Values are trimmed and reported parsed;
min.compaction.lag.ms above max.compaction.lag.ms is INVALID_CONFIG. The
configs with a meaning here act: message.timestamp.before.max.ms refuses a
record whose CreateTime is too old with INVALID_TIMESTAMP, also inside a
compressed batch; compression.type recompresses what producers send;
min.insync.replicas above 1 refuses acks=all with NOT_ENOUGH_REPLICAS on
one node; flush.messages makes appends sync on a broker that otherwise
does not.
"""

from __future__ import annotations

import socket
import struct
import time
import urllib.request

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewTopic

from support import (
    CLIENT_TIMEOUT_S,
    Reader,
    confluent_admin,
    confluent_consumer,
    confluent_producer,
    consume_confluent,
    create_topic_confluent,
    kafka_string,
    produce_all,
    recv_frame,
    request_frame,
    unique_name,
)
from common.broker import per_test_broker

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
    "remote.log.copy.disable": "false",
    "remote.log.delete.on.disable": "false",
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


def test_kafka_configs_are_accepted_and_reported_as_set(broker, topic):
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


def test_incremental_alter_sets_flush_messages(broker, topic):
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
    # As Kafka 3.9: the override only, since log.roll.ms (the first broker
    # synonym) has no default of its own; the same for retention.ms.
    assert entries["segment.ms"][4] == [("segment.ms", "3600000", DYNAMIC_TOPIC_CONFIG)]
    assert entries["retention.ms"][4] == []
    assert entries["flush.ms"][4] == []
    assert entries["segment.bytes"][4] == [("log.segment.bytes", "1073741824", DEFAULT_CONFIG)]
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


def test_a_compressed_batch_is_held_to_the_timestamp_bounds_record_by_record(broker, topic):
    create_topic_confluent(broker, topic, config={"message.timestamp.before.max.ms": "3600000"})
    producer = confluent_producer(broker, **{"acks": "all", "retries": 0, "compression.type": "gzip",
                                             "linger.ms": 50})
    reports = []
    now_ms = int(time.time() * 1000)
    # One gzip batch whose first record is fresh and whose second is a day
    # old: only decompressing finds the old one.
    producer.produce(topic, value=b"fresh", timestamp=now_ms, on_delivery=lambda err, msg: reports.append(err))
    producer.produce(topic, value=b"old", timestamp=now_ms - 24 * 3600 * 1000,
                     on_delivery=lambda err, msg: reports.append(err))
    producer.flush(CLIENT_TIMEOUT_S)
    assert len(reports) == 2, reports
    assert all(r is not None and r.code() == KafkaError.INVALID_TIMESTAMP for r in reports), reports


FETCH = 1
# Kafka's codec numbers in a batch's attributes (bits 0-2).
CODECS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def fetched_codecs(broker, topic) -> list[int]:
    """The codec of every batch of partition 0, from a raw Fetch v4."""
    body = (
        struct.pack(">iiiib", -1, 500, 1, 1 << 20, 0)  # replica, max wait, min/max bytes, isolation
        + struct.pack(">i", 1) + kafka_string(topic)
        + struct.pack(">i", 1) + struct.pack(">iqi", 0, 0, 1 << 20)  # partition 0 from offset 0
    )
    with socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request_frame(FETCH, 4, 11, body))
        reader = Reader(recv_frame(sock))
    assert reader.int32() == 11, "correlation id"
    reader.int32()  # throttle_time_ms
    assert reader.int32() == 1 and reader.string() == topic
    assert reader.int32() == 1 and reader.int32() == 0, "partition 0"
    assert reader.int16() == 0, "error code"
    reader.int64(), reader.int64()  # high watermark, last stable offset
    aborted = reader.int32()
    reader.take(16 * max(aborted, 0))
    records = reader.take(reader.int32())
    codecs = []
    at = 0
    while at + 12 <= len(records):
        length = struct.unpack(">i", records[at + 8:at + 12])[0]
        if at + 12 + length > len(records):
            break  # a partial batch at the end of the fetch
        attributes = struct.unpack(">h", records[at + 21:at + 23])[0]
        codecs.append(attributes & 0x07)
        at += 12 + length
    return codecs


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_type_recompresses_what_producers_send(broker, topic, codec):
    create_topic_confluent(broker, topic, config={"compression.type": codec})
    producer = confluent_producer(broker, **{"acks": "all", "compression.type": "none", "linger.ms": 20})
    values = [f"{codec}-{i}".encode() * 20 for i in range(20)]
    reports = produce_all(producer, [{"topic": topic, "value": v} for v in values])
    assert all(err is None for err, _ in reports), reports
    codecs = fetched_codecs(broker, topic)
    assert codecs and set(codecs) == {CODECS[codec]}, codecs
    consumer = confluent_consumer(broker, **{"auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        assert [m.value() for m in consume_confluent(consumer, len(values))] == values
    finally:
        consumer.close()


def test_compression_type_uncompressed_stores_plain_batches(broker, topic):
    create_topic_confluent(broker, topic, config={"compression.type": "uncompressed"})
    producer = confluent_producer(broker, **{"acks": "all", "compression.type": "zstd", "linger.ms": 20})
    values = [f"v{i}".encode() * 50 for i in range(10)]
    reports = produce_all(producer, [{"topic": topic, "value": v} for v in values])
    assert all(err is None for err, _ in reports), reports
    assert set(fetched_codecs(broker, topic)) == {CODECS["uncompressed"]}
    # The default, producer, keeps the producer's codec.
    kept = topic + "-producer"
    create_topic_confluent(broker, kept)
    reports = produce_all(producer, [{"topic": kept, "value": v} for v in values])
    assert all(err is None for err, _ in reports), reports
    assert set(fetched_codecs(broker, kept)) == {CODECS["zstd"]}


def test_min_insync_replicas_above_one_refuses_acks_all_on_one_node(broker, topic):
    create_topic_confluent(broker, topic, config={"min.insync.replicas": "2"})
    reports = []
    strict = confluent_producer(broker, **{"acks": "all", "retries": 0})
    strict.produce(topic, value=b"x", on_delivery=lambda err, msg: reports.append(err))
    strict.flush(CLIENT_TIMEOUT_S)
    assert len(reports) == 1 and reports[0] is not None, reports
    assert reports[0].code() == KafkaError.NOT_ENOUGH_REPLICAS, reports
    # acks=1 asks only the leader, as on Kafka.
    leader_only = confluent_producer(broker, **{"acks": "1", "retries": 0})
    leader_only.produce(topic, value=b"y", on_delivery=lambda err, msg: reports.append(err))
    leader_only.flush(CLIENT_TIMEOUT_S)
    assert reports[1:] == [None], reports


def fsync_count(broker) -> float:
    url = f"http://127.0.0.1:{broker.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=CLIENT_TIMEOUT_S) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("sluice_log_fsync_duration_microseconds_count"):
            return float(line.split()[-1])
    raise AssertionError("no fsync count in /metrics")


def test_flush_messages_syncs_appends_on_a_broker_that_does_not(tmp_path, request):
    with per_test_broker(tmp_path, request, settings={"log.durability": "never"}) as never:
        plain, flushed = unique_name("plain"), unique_name("flushed")
        create_topic_confluent(never, plain)
        create_topic_confluent(never, flushed, config={"flush.messages": "1"})
        producer = confluent_producer(never, **{"acks": "all"})

        def produce_one_by_one(name):
            for i in range(20):
                producer.produce(name, value=b"m%d" % i)
                producer.flush(CLIENT_TIMEOUT_S)

        before = fsync_count(never)
        produce_one_by_one(plain)
        after_plain = fsync_count(never)
        produce_one_by_one(flushed)
        after_flushed = fsync_count(never)
        assert after_plain - before < 5, "durability never: appends do not sync"
        assert after_flushed - after_plain >= 20, "flush.messages=1: every append synced"


def test_min_compaction_lag_above_max_is_invalid_config(broker, topic):
    admin = confluent_admin(broker)
    error = create_error(admin, topic, {"min.compaction.lag.ms": "5000", "max.compaction.lag.ms": "1000"})
    assert error.code() == KafkaError.INVALID_CONFIG
    assert "max.compaction.lag.ms" in error.str()


def test_values_are_trimmed_and_reported_parsed(broker, topic):
    admin = create_topic_confluent(broker, topic, config={
        "compression.type": " lz4", "preallocate": "TRUE", "cleanup.policy": "compact , delete",
    })
    entries = describe(admin, topic)
    assert entries["compression.type"].value == "lz4"
    assert entries["preallocate"].value == "true"
    assert entries["cleanup.policy"].value == "compact,delete"
