"""Graceful shutdown under load: SIGTERM while an idempotent acks=all Kafka
producer and an AMQP publisher with confirms are busy. The broker exits 0
by itself, AMQP clients see connection.close 320 CONNECTION_FORCED (not a
dropped socket), everything acknowledged before the signal is there after
the restart, and the restart is quick (recovery after a clean stop reads
no data twice)."""

from __future__ import annotations

import threading
import time

import pika
import pika.exceptions
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from support import CLIENT_TIMEOUT_S, confluent_config, pika_connection

PARTITIONS = 3


def kafka_load(broker, topic, stop, acked, lock):
    producer = Producer(confluent_config(broker, **{
        "enable.idempotence": True, "acks": "all", "linger.ms": 2, "message.timeout.ms": 120000,
    }))

    def report(err, msg):
        if err is None:
            with lock:
                acked[(msg.partition(), msg.offset())] = msg.value()

    index = 0
    while not stop.is_set() and index < 500_000:
        try:
            producer.produce(topic, f"kafka-{index}".encode(), on_delivery=report)
            index += 1
        except BufferError:
            producer.poll(0.01)
        producer.poll(0)
    # What is still in flight is retried against the restarted broker.
    producer.flush(120)


def amqp_load(broker, queue, confirmed, closes):
    connection = pika_connection(broker)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for index in range(500_000):
            body = f"amqp-{index}".encode()
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
            confirmed.append(body)
    except pika.exceptions.ConnectionClosedByBroker as closed:
        closes.append((closed.reply_code, closed.reply_text))
    except pika.exceptions.AMQPError as other:
        closes.append((None, repr(other)))


def idle_consumer(broker, queue, closes):
    connection = pika_connection(broker)
    try:
        channel = connection.channel()
        channel.basic_consume(queue, lambda *_: None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            connection.process_data_events(0.2)
    except pika.exceptions.ConnectionClosedByBroker as closed:
        closes.append((closed.reply_code, closed.reply_text))
    except pika.exceptions.AMQPError as other:
        closes.append((None, repr(other)))


def test_sigterm_under_load_closes_orderly_and_loses_nothing(own_broker, name):
    with own_broker() as broker:
        admin = AdminClient(confluent_config(broker))
        admin.create_topics([NewTopic(name, PARTITIONS)])[name].result(timeout=CLIENT_TIMEOUT_S)
        setup = pika_connection(broker)
        setup.channel().queue_declare(name, durable=True)
        setup.channel().queue_declare(f"{name}-idle", durable=True)
        setup.close()

        stop = threading.Event()
        acked: dict = {}
        lock = threading.Lock()
        confirmed: list[bytes] = []
        publisher_closes: list = []
        consumer_closes: list = []
        threads = [
            threading.Thread(target=kafka_load, args=(broker, name, stop, acked, lock), daemon=True),
            threading.Thread(target=amqp_load, args=(broker, name, confirmed, publisher_closes), daemon=True),
            threading.Thread(target=idle_consumer, args=(broker, f"{name}-idle", consumer_closes), daemon=True),
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while (len(acked) < 2000 or len(confirmed) < 200) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(acked) >= 2000 and len(confirmed) >= 200, "the load did not get going"

        with lock:
            acked_before = dict(acked)
        confirmed_before = list(confirmed)
        started = time.monotonic()
        broker.stop()
        shutdown_s = time.monotonic() - started
        # No new records; those in flight are retried against the restart.
        stop.set()
        assert broker.last_returncode == 0, broker.log_text()
        assert not broker.last_stop_needed_kill
        threads[1].join(CLIENT_TIMEOUT_S)
        threads[2].join(CLIENT_TIMEOUT_S)
        for closes in (publisher_closes, consumer_closes):
            assert closes and closes[0][0] == 320, closes
            assert "CONNECTION_FORCED" in closes[0][1] and "shutdown" in closes[0][1], closes

        started = time.monotonic()
        broker.start()
        restart_s = time.monotonic() - started
        threads[0].join(150)
        confirmed_all = list(confirmed)

        # Kafka: every record acknowledged (before, during or after) is there.
        with lock:
            expected = dict(acked)
        assert set(acked_before) <= set(expected)
        consumer = Consumer(confluent_config(broker, **{"group.id": f"{name}-check", "enable.auto.commit": False}))
        consumer.assign([TopicPartition(name, p, 0) for p in range(PARTITIONS)])
        found = {}
        wanted = set(expected)
        wait = time.monotonic() + 60
        while wanted and time.monotonic() < wait:
            for message in consumer.consume(1000, 0.5):
                if not message.error():
                    key = (message.partition(), message.offset())
                    found[key] = message.value()
                    wanted.discard(key)
        consumer.close()
        missing = [k for k, v in expected.items() if found.get(k) != v]
        assert not missing, f"{len(missing)} of {len(expected)} acknowledged records missing, e.g. {missing[:3]}"

        # AMQP: every confirmed message is in the queue.
        connection = pika_connection(broker)
        channel = connection.channel()
        bodies = set()
        while (got := channel.basic_get(name, auto_ack=True))[0] is not None:
            bodies.add(got[2])
        connection.close()
        lost = [body for body in confirmed_all if body not in bodies]
        assert not lost, f"{len(lost)} of {len(confirmed_all)} confirmed messages lost"
        print(
            f"\nshutdown under load: {len(acked_before)} Kafka records and {len(confirmed_before)} AMQP messages "
            f"acknowledged before SIGTERM; stopped in {shutdown_s:.2f} s, listening again in {restart_s:.2f} s; "
            f"0 lost"
        )
