"""A consume-transform-produce application with exactly-once, for
test_transactions.py's crash test: reads partition 0 of SOURCE in group
GROUP (read_committed), writes b"out-" + each value to partition 0 of SINK
in transactions of at most 20 records under TRANSACTIONAL_ID, the offsets
committed in the same transaction (every 7th transaction aborted on
purpose and its batch read again); any failure starts over from the
committed offset with new clients. Writes "<done> <transactions>
<restarts>" to PROGRESS after each commit; exits 0 once RECORDS are done.

Run as: python eos_worker.py BOOTSTRAP SOURCE SINK GROUP TRANSACTIONAL_ID RECORDS PROGRESS

A separate process because librdkafka's send_offsets_to_transaction() can
block past its timeout while the coordinator is down
(confluentinc/librdkafka#5456): the test kills a stuck worker and starts
another, as an operator would restart a hung application.
"""

from __future__ import annotations

import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def main() -> int:
    bootstrap, source, sink, group, transactional_id, records, progress_path = sys.argv[1:8]
    records = int(records)
    common = {
        "bootstrap.servers": bootstrap,
        "broker.address.family": "v4",
        "reconnect.backoff.max.ms": 500,
        "socket.timeout.ms": 5000,
    }
    done, transactions, restarts, attempts = 0, 0, 0, 0
    consumer = producer = None
    deadline = time.monotonic() + 600
    while done < records and time.monotonic() < deadline:
        try:
            if consumer is None:
                consumer = Consumer({**common, "group.id": group, "isolation.level": "read_committed",
                                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})
                producer = Producer({**common, "transactional.id": transactional_id,
                                     "message.timeout.ms": 5000, "transaction.timeout.ms": 10000})
                # Taking the id aborts what an earlier worker left open.
                producer.init_transactions(10)
                committed = consumer.committed([TopicPartition(source, 0)], 10)[0].offset
                done = max(committed, 0)
                consumer.assign([TopicPartition(source, 0)])
            batch = [m for m in consumer.consume(20, 1.0) if not m.error()]
            if not batch:
                continue
            producer.begin_transaction()
            for message in batch:
                producer.produce(sink, b"out-" + message.value(), partition=0)
            next_offset = batch[-1].offset() + 1
            producer.send_offsets_to_transaction(
                [TopicPartition(source, 0, next_offset)], consumer.consumer_group_metadata(), 10)
            attempts += 1
            if attempts % 7 == 0:
                # Every 7th transaction is aborted on purpose, so the
                # output always holds aborted records for read_committed
                # to skip; the batch is read again from the committed
                # offset.
                producer.flush(10)  # (abort drops what is not sent yet)
                producer.abort_transaction(10)
                consumer.seek(TopicPartition(source, 0, done))
                continue
            producer.commit_transaction(10)
            done = next_offset
            transactions += 1
            with open(progress_path + ".tmp", "w") as out:
                out.write(f"{done} {transactions} {restarts}\n")
            os.replace(progress_path + ".tmp", progress_path)
            time.sleep(0.05)
        except Exception as error:  # noqa: BLE001 - any failure: start over from what is committed
            print(f"worker: starting over after {error}", file=sys.stderr)
            restarts += 1
            if consumer is not None:
                consumer.close()
            consumer = producer = None
            time.sleep(0.2)
    return 0 if done >= records else 1


if __name__ == "__main__":
    sys.exit(main())
