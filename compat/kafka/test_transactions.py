"""Kafka transactions on one node, driven by librdkafka (confluent-kafka).

Contract (docs/transactions.md): a transactional producer's records reach
read_committed consumers all together when it commits and never when it
aborts (read_uncommitted consumers see both, as in Kafka); a second
producer with the same transactional id fences the first; a transaction
left open past its timeout is aborted by the broker and its producer
fenced; offsets sent to a transaction become the group's committed
offsets only when it commits; committed transactions and their markers
survive a restart.
"""

from __future__ import annotations

import os
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from common.broker import per_test_broker, wait_until
from common.eos import assert_each_once_in_order, read_progress, run_worker, transform_round
from common.log_files import markers
from support import (
    CLIENT_TIMEOUT_S,
    confluent_config,
    confluent_consumer,
    consume_confluent,
    create_topic_confluent,
    unique_name,
)


def transactional(broker, **extra) -> Producer:
    producer = Producer(confluent_config(broker, **{
        "transactional.id": unique_name("txn"),
        "message.timeout.ms": 20000,
        **extra,
    }))
    producer.init_transactions(CLIENT_TIMEOUT_S)
    return producer


def values(broker, topic: str, isolation: str, count: int, settle: float = 1.0) -> list[bytes]:
    """Every value of partition 0 of `topic` read from the start under
    `isolation` (up to `count`, then `settle` s more for extras)."""
    consumer = confluent_consumer(broker, **{
        "isolation.level": isolation,
        "auto.offset.reset": "earliest",
    })
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        return [m.value() for m in consume_confluent(consumer, count, settle=settle)]
    finally:
        consumer.close()


def read_uncommitted_all(broker, topic: str) -> list[bytes]:
    """Every value of partition 0 of `topic` under read_uncommitted (the
    records of aborted transactions too, markers skipped)."""
    consumer = confluent_consumer(broker, **{
        "auto.offset.reset": "earliest",
        "isolation.level": "read_uncommitted",
    })
    try:
        partition = TopicPartition(topic, 0, 0)
        consumer.assign([partition])
        high = consumer.get_watermark_offsets(partition, CLIENT_TIMEOUT_S)[1]
        found: list[bytes] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                found.append(message.value())
            if consumer.position([partition])[0].offset >= high:
                break
        return found
    finally:
        consumer.close()


def test_committed_records_are_seen_together_and_aborted_ones_never(broker):
    topic = unique_name("txn-commit-abort")
    create_topic_confluent(broker, topic)
    producer = transactional(broker)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, f"aborted-{i}".encode())
    producer.flush(CLIENT_TIMEOUT_S)
    # Written but undecided: a read_committed consumer sees nothing yet.
    assert values(broker, topic, "read_committed", 1, settle=0) == []
    producer.abort_transaction(CLIENT_TIMEOUT_S)

    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, f"committed-{i}".encode())
    producer.commit_transaction(CLIENT_TIMEOUT_S)

    committed = [f"committed-{i}".encode() for i in range(5)]
    assert values(broker, topic, "read_committed", 5) == committed
    # read_uncommitted sees the aborted records too (markers are skipped).
    uncommitted = values(broker, topic, "read_uncommitted", 10)
    assert uncommitted == [f"aborted-{i}".encode() for i in range(5)] + committed


def test_a_second_producer_with_the_same_id_fences_the_first(broker):
    topic = unique_name("txn-fence")
    create_topic_confluent(broker, topic)
    transactional_id = unique_name("txn-fenced")
    first = transactional(broker, **{"transactional.id": transactional_id})
    first.begin_transaction()
    first.produce(topic, b"zombie")
    first.flush(CLIENT_TIMEOUT_S)

    # The second takes the id: the first's open transaction is aborted.
    second = transactional(broker, **{"transactional.id": transactional_id})
    second.begin_transaction()
    second.produce(topic, b"winner")
    second.commit_transaction(CLIENT_TIMEOUT_S)

    with pytest.raises(KafkaException) as raised:
        first.produce(topic, b"late")
        first.commit_transaction(CLIENT_TIMEOUT_S)
    error = raised.value.args[0]
    assert error.fatal(), error
    assert error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                            KafkaError.INVALID_PRODUCER_EPOCH), error
    assert values(broker, topic, "read_committed", 1) == [b"winner"]


def test_a_transaction_left_open_is_aborted_at_its_timeout(broker):
    topic = unique_name("txn-timeout")
    create_topic_confluent(broker, topic)
    # librdkafka wants its socket and message timeouts within the
    # transaction's.
    producer = transactional(broker, **{
        "transaction.timeout.ms": 3000,
        "socket.timeout.ms": 3000,
        "message.timeout.ms": 3000,
    })
    producer.begin_transaction()
    producer.produce(topic, b"abandoned")
    producer.flush(CLIENT_TIMEOUT_S)
    # Not yet decided: read_committed holds at it.
    assert values(broker, topic, "read_committed", 1, settle=0) == []
    time.sleep(5)
    # Aborted by the broker: a later producer's commit is readable, the
    # abandoned record never is.
    other = transactional(broker)
    other.begin_transaction()
    other.produce(topic, b"after")
    other.commit_transaction(CLIENT_TIMEOUT_S)
    assert values(broker, topic, "read_committed", 1) == [b"after"]
    with pytest.raises(KafkaException):
        producer.commit_transaction(CLIENT_TIMEOUT_S)


def test_a_transaction_timeout_above_the_configured_maximum_is_refused(tmp_path, request):
    """`kafka.transaction_max_timeout` (Kafka's transaction.max.timeout.ms)
    caps what a producer may ask for: above it, init_transactions fails
    with INVALID_TRANSACTION_TIMEOUT; at it, the producer works."""
    with per_test_broker(tmp_path, request, {"kafka.transaction_max_timeout": "20s"}) as broker:
        with pytest.raises(KafkaException) as refused:
            transactional(broker, **{"transaction.timeout.ms": 30000})
        assert refused.value.args[0].code() == KafkaError.INVALID_TRANSACTION_TIMEOUT
        topic = unique_name("txn-max-timeout")
        create_topic_confluent(broker, topic)
        producer = transactional(broker, **{"transaction.timeout.ms": 20000})
        producer.begin_transaction()
        producer.produce(topic, b"within the cap")
        producer.commit_transaction(CLIENT_TIMEOUT_S)
        assert values(broker, topic, "read_committed", 1) == [b"within the cap"]


def test_consume_transform_produce_commits_offsets_with_the_output(broker):
    source = unique_name("txn-in")
    sink = unique_name("txn-out")
    group = unique_name("txn-group")
    create_topic_confluent(broker, source)
    create_topic_confluent(broker, sink)
    plain = Producer(confluent_config(broker))
    for i in range(10):
        plain.produce(source, str(i).encode())
    assert plain.flush(CLIENT_TIMEOUT_S) == 0

    def process(count: int, commit: bool) -> None:
        consumer = confluent_consumer(broker, group, **{
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        })
        producer = transactional(broker)
        try:
            consumer.assign([TopicPartition(source, 0)])
            read = consume_confluent(consumer, count)
            assert len(read) == count
            transform_round(producer, consumer, read, sink, commit, CLIENT_TIMEOUT_S)
        finally:
            consumer.close()

    process(4, commit=True)
    # An aborted round leaves neither its output nor its offsets.
    process(3, commit=False)
    process(6, commit=True)

    outputs = values(broker, sink, "read_committed", 10)
    assert outputs == [f"out-{i}".encode() for i in range(10)], "each input once"
    checker = confluent_consumer(broker, group)
    try:
        committed = checker.committed([TopicPartition(source, 0)], CLIENT_TIMEOUT_S)
    finally:
        checker.close()
    assert committed[0].offset == 10


def test_transactions_survive_a_restart(fresh_broker):
    broker = fresh_broker
    topic = unique_name("txn-restart")
    create_topic_confluent(broker, topic)
    transactional_id = unique_name("txn-restart-id")
    producer = transactional(broker, **{"transactional.id": transactional_id})
    producer.begin_transaction()
    producer.produce(topic, b"aborted")
    # (abort_transaction drops what is not sent yet.)
    producer.flush(CLIENT_TIMEOUT_S)
    producer.abort_transaction(CLIENT_TIMEOUT_S)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.commit_transaction(CLIENT_TIMEOUT_S)
    producer.begin_transaction()
    producer.produce(topic, b"open at the crash")
    producer.flush(CLIENT_TIMEOUT_S)

    broker.kill()
    broker.start()
    # The aborted transaction stays aborted, the committed one committed;
    # the one open at the crash is aborted when the id is taken again
    # (its producer fenced).
    again = transactional(broker, **{"transactional.id": transactional_id})
    again.begin_transaction()
    again.produce(topic, b"after the restart")
    again.commit_transaction(CLIENT_TIMEOUT_S)
    assert values(broker, topic, "read_committed", 2) == [b"committed", b"after the restart"]
    assert values(broker, topic, "read_uncommitted", 4) == [
        b"aborted", b"committed", b"open at the crash", b"after the restart"]


def test_an_aborted_transaction_stays_aborted_behind_hundreds_of_megabytes(tmp_path, request):
    """A restart reads back only the newest segments of a partition (at
    least 256 MiB); a transaction aborted before that, and one committed,
    are known from the partition's transaction checkpoint: read_committed
    consumers still never see the aborted records, after 300 MiB more and
    a restart."""
    settings = {"log.segment_bytes": "16MiB", "log.max_batch_bytes": "2MiB"}
    with per_test_broker(tmp_path, request, settings) as broker:
        topic = unique_name("txn-far")
        create_topic_confluent(broker, topic)
        producer = transactional(broker)
        producer.begin_transaction()
        for i in range(3):
            producer.produce(topic, f"aborted-{i}".encode(), partition=0)
        producer.flush(CLIENT_TIMEOUT_S)
        producer.abort_transaction(CLIENT_TIMEOUT_S)
        producer.begin_transaction()
        producer.produce(topic, b"committed", partition=0)
        producer.commit_transaction(CLIENT_TIMEOUT_S)
        plain = Producer(confluent_config(broker, **{
            "linger.ms": 20,
            "message.max.bytes": 2_000_000,
            "batch.size": 2_000_000,
        }))
        megabyte = b"x" * (1 << 20)
        for _ in range(300):
            while True:
                try:
                    plain.produce(topic, megabyte, partition=0)
                    break
                except BufferError:
                    plain.poll(0.1)
            plain.poll(0)
        assert plain.flush(120) == 0
        watcher = confluent_consumer(broker)
        try:
            high = watcher.get_watermark_offsets(TopicPartition(topic, 0), CLIENT_TIMEOUT_S)[1]
        finally:
            watcher.close()
        # 3 aborted, their marker, 1 committed, its marker, 300 plain.
        assert high == 306, high
        before = values(broker, topic, "read_committed", 2, settle=0)
        broker.stop()
        broker.start()
        after = values(broker, topic, "read_committed", 2, settle=0)
        assert before[0] == b"committed" and after[0] == b"committed", (before[:1], after[:1])


def test_kafka_python_transactions_commit_and_abort(broker):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KafkaTopicPartition

    topic = unique_name("txn-kafka-python")
    create_topic_confluent(broker, topic)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap,
                             transactional_id=unique_name("txn-kp"),
                             request_timeout_ms=20000)
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, b"aborted", partition=0)
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, b"committed", partition=0)
        producer.commit_transaction()
    finally:
        producer.close(timeout=10)

    def read(isolation: str, count: int) -> list[bytes]:
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level=isolation,
                                 enable_auto_commit=False, consumer_timeout_ms=3000)
        try:
            consumer.assign([KafkaTopicPartition(topic, 0)])
            consumer.seek_to_beginning()
            found: list[bytes] = []
            deadline = time.monotonic() + CLIENT_TIMEOUT_S
            while len(found) < count and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    found.extend(r.value for r in records)
            return found
        finally:
            consumer.close()

    assert read("read_committed", 1) == [b"committed"]
    assert read("read_uncommitted", 2) == [b"aborted", b"committed"]


# The crash test: a consume-transform-produce loop with exactly-once from
# one topic to another while the broker is killed (-9) again and again.
# TXN_CRASH_KILLS and TXN_CRASH_RECORDS make the long version
# (RELIABILITY.md).
CRASH_KILLS = int(os.environ.get("TXN_CRASH_KILLS", "5"))
CRASH_RECORDS = int(os.environ.get("TXN_CRASH_RECORDS", "600"))


def test_exactly_once_across_kill_9(fresh_broker, tmp_path):
    broker = fresh_broker
    source = unique_name("eos-in")
    sink = unique_name("eos-out")
    group = unique_name("eos-group")
    transactional_id = unique_name("eos-txn")
    create_topic_confluent(broker, source)
    create_topic_confluent(broker, sink)
    plain = Producer(confluent_config(broker))
    for i in range(CRASH_RECORDS):
        plain.produce(source, str(i).encode(), partition=0)
    assert plain.flush(CLIENT_TIMEOUT_S) == 0

    progress = tmp_path / "progress"
    kills = 0
    next_kill = time.monotonic() + 1.0

    def kill_now_and_then(_progress) -> None:
        nonlocal kills, next_kill
        if kills < CRASH_KILLS and time.monotonic() >= next_kill:
            broker.kill()
            broker.start()
            kills += 1
            next_kill = time.monotonic() + 1.0

    returncode, worker_kills = run_worker(
        [broker.bootstrap, source, sink, group, transactional_id, str(CRASH_RECORDS)],
        progress,
        timeout_s=90 + 20 * CRASH_KILLS,
        stuck_s=15,
        between=kill_now_and_then,
    )
    assert returncode == 0, f"the worker did not finish: {read_progress(progress)}"
    assert kills >= 1, "the broker was never killed while the loop ran"

    outputs = values(broker, sink, "read_committed", CRASH_RECORDS, settle=2.0)
    assert_each_once_in_order(
        outputs, CRASH_RECORDS, f"{kills} broker kills, {worker_kills} worker restarts")
    aborted = len(read_uncommitted_all(broker, sink)) - CRASH_RECORDS
    assert aborted > 0, "the worker aborts every 7th transaction: read_committed had records to skip"
    print(f"exactly-once across kill -9: {CRASH_RECORDS} records, {kills} broker kills, "
          f"{worker_kills} worker restarts, {aborted} records of aborted transactions skipped")


def test_compaction_cleans_committed_transactions_drops_aborted_ones_and_their_markers(tmp_path, request):
    """A compacted topic written by a transactional producer (a Kafka
    Streams changelog under exactly-once): compaction keeps the latest
    committed value per key and removes an aborted transaction's records;
    a commit marker whose records are all superseded is emptied once
    delete.retention.ms has passed, the other markers stay (the abort's
    ends its transaction for read_committed readers, whom the partition
    still tells it was aborted). After a restart read_committed reads
    every committed record to the end (nothing emptied looks like an open
    transaction) and a new transaction commits."""
    # Compaction checked every second rather than every 15 s.
    with per_test_broker(tmp_path, request, {"log.compaction_check_interval": "1s"}) as broker:
        compacted_transactions(broker)


def compacted_transactions(broker) -> None:
    topic = unique_name("txn-compacted")
    create_topic_confluent(broker, topic, config={
        "cleanup.policy": "compact",
        "segment.bytes": "2048",
        "segment.ms": "1000",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100",
    })
    producer = transactional(broker)

    def transaction(prefix: str, keys: range, commit: bool) -> None:
        producer.begin_transaction()
        for k in keys:
            producer.produce(topic, key=f"k{k}".encode(), value=f"{prefix}-k{k}".encode(), partition=0)
        producer.flush(CLIENT_TIMEOUT_S)
        if commit:
            producer.commit_transaction(CLIENT_TIMEOUT_S)
        else:
            producer.abort_transaction(CLIENT_TIMEOUT_S)

    transaction("first", range(5), commit=True)
    transaction("aborted", range(5), commit=False)
    transaction("second", range(5), commit=True)
    filler = Producer(confluent_config(broker, **{"linger.ms": 0, "acks": "all"}))
    expected = {f"second-k{k}".encode() for k in range(5)}

    def compacted():
        # New sealed segments for each pass to find dirty (segment.ms rolls).
        for i in range(5):
            filler.produce(topic, key=b"filler", value=b"x" * 200, partition=0)
        assert filler.flush(CLIENT_TIMEOUT_S) == 0
        kept = {v for v in read_uncommitted_all(broker, topic) if not v.startswith(b"x")}
        held, emptied = markers(broker.data_dir, topic)
        return (kept, held, emptied) if kept == expected and emptied >= 1 else None

    _, held, emptied = wait_until(compacted, 120, interval=1, what="the transactions compacted")
    # The first commit's marker went; the abort's and the second commit's
    # stay.
    assert (held, emptied) == (2, 1)

    broker.kill()
    broker.start()
    producer = transactional(broker)
    transaction("after", range(1), commit=True)
    committed = {v for v in values(broker, topic, "read_committed", 200, settle=2.0) if not v.startswith(b"x")}
    # (second-k0 goes at the next pass.)
    assert expected - {b"second-k0"} | {b"after-k0"} <= committed <= expected | {b"after-k0"}
