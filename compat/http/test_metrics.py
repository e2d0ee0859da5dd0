"""/metrics and the API's rates during real traffic: confluent-kafka and
pika move the counters, and the scrape must show exactly what they did.

Contract: docs/http.md, "Metrics" (series names and labels) and the
overview's rates (per second over the last 5 seconds).
"""

from __future__ import annotations

import threading
import time

import pika
from confluent_kafka import Consumer, Producer, TopicPartition

from api import call, get, metrics, ok, sample
from common.broker import wait_until


def kafka(broker, **extra) -> dict:
    return {"bootstrap.servers": f"127.0.0.1:{broker.kafka_port}", **extra}


def test_kafka_series_count_what_clients_did(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name, "partitions": 2}), 201)
    producer = Producer(kafka(broker, **{"linger.ms": 0}))
    for i in range(30):
        producer.produce(name, value=b"x" * 100, partition=i % 2)
    assert producer.flush(15) == 0
    consumer = Consumer(kafka(broker, **{"group.id": name, "auto.offset.reset": "earliest",
                                         "enable.auto.commit": False}))
    consumer.subscribe([name])
    seen = 0
    deadline = time.monotonic() + 20
    while seen < 30 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            seen += 1
    consumer.commit(asynchronous=False)
    # Half of partition 1 is left unconsumed: lag 5 there.
    consumer.commit(offsets=[TopicPartition(name, 1, 10)], asynchronous=False)
    consumer.close()

    samples = metrics(broker)
    for partition in ("0", "1"):
        labels = dict(topic=name, partition=partition)
        assert sample(samples, "sluice_kafka_partition_records_in_total", **labels) == 15
        assert sample(samples, "sluice_kafka_partition_bytes_in_total", **labels) > 15 * 100
        assert sample(samples, "sluice_kafka_partition_records_out_total", **labels) >= 15
        assert sample(samples, "sluice_kafka_partition_bytes_out_total", **labels) > 15 * 100
        assert sample(samples, "sluice_kafka_partition_high_watermark", **labels) == 15
        assert sample(samples, "sluice_kafka_partition_log_size_bytes", **labels) > 15 * 100
    assert sample(samples, "sluice_kafka_group_committed_offset", group=name, topic=name, partition="1") == 10
    assert sample(samples, "sluice_kafka_group_lag_records", group=name, topic=name, partition="1") == 5
    assert sample(samples, "sluice_kafka_group_lag_records", group=name, topic=name, partition="0") == 0
    assert sample(samples, "sluice_kafka_request_duration_microseconds_count", api="Produce") >= 1
    assert sample(samples, "sluice_kafka_request_duration_microseconds_count", api="Fetch") >= 1
    assert sample(samples, "sluice_kafka_request_duration_microseconds_count", api="OffsetCommit") >= 2
    assert sample(samples, "sluice_kafka_request_duration_microseconds_bucket", api="Produce", le="+Inf") == \
        sample(samples, "sluice_kafka_request_duration_microseconds_count", api="Produce")
    assert sample(samples, "sluice_log_fsync_duration_microseconds_count") > 0
    assert sample(samples, "sluice_log_sync_batch_records_count") > 0
    assert sample(samples, "sluice_connections_opened_total", protocol="kafka") >= 2
    assert sample(samples, "sluice_process_resident_memory_bytes") > 1_000_000
    assert sample(samples, "sluice_process_open_fds") > 3
    assert sample(samples, "sluice_alarm_active", resource="memory") == 0


def test_amqp_series_count_what_clients_did(broker, name):
    connection = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=broker.amqp_port))
    channel = connection.channel()
    channel.queue_declare(name, durable=True)
    channel.confirm_delivery()
    for i in range(20):
        channel.basic_publish("", name, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    delivered = []
    channel.basic_qos(prefetch_count=50)
    channel.basic_consume(name, lambda ch, method, props, body: delivered.append(method.delivery_tag))
    deadline = time.monotonic() + 10
    while len(delivered) < 20 and time.monotonic() < deadline:
        connection.process_data_events(0.1)
    assert len(delivered) == 20
    for tag in delivered[:15]:
        channel.basic_ack(tag)
    channel.basic_nack(delivered[15], requeue=True)
    deadline = time.monotonic() + 5
    while len(delivered) < 21 and time.monotonic() < deadline:
        connection.process_data_events(0.1)

    def queue_series():
        samples = metrics(broker)
        return {series: sample(samples, f"sluice_amqp_queue_{series}", vhost="/", queue=name)
                for series in ("messages_ready", "messages_unacked", "consumers", "published_total",
                               "delivered_total", "acked_total", "redelivered_total")}
    wait_until(lambda: queue_series()["acked_total"] == 15, 10, what="15 acks counted")
    series = queue_series()
    assert series == {"messages_ready": 0, "messages_unacked": 5, "consumers": 1, "published_total": 20,
                      "delivered_total": 21, "acked_total": 15, "redelivered_total": 1}, series
    samples = metrics(broker)
    assert sample(samples, "sluice_amqp_method_duration_microseconds_count", method="basic.publish") >= 20
    assert sample(samples, "sluice_amqp_method_duration_microseconds_count", method="basic.ack") >= 15
    assert sample(samples, "sluice_amqp_method_duration_microseconds_count", method="queue.declare") >= 1
    assert sample(samples, "sluice_connections_open", protocol="amqp") >= 1
    assert sample(samples, "sluice_channels_open", protocol="amqp") >= 1
    connection.close()


def test_rates_rise_during_traffic_and_fall_after(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name}), 201)
    stop = threading.Event()

    def produce():
        producer = Producer(kafka(broker, **{"linger.ms": 5}))
        while not stop.is_set():
            for _ in range(50):
                producer.produce(name, value=b"r" * 64)
            producer.poll(0)
            time.sleep(0.02)
        producer.flush(10)

    feeder = threading.Thread(target=produce, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: ok(get(broker, "/api/overview"))["rates"]["kafka_records_in"] > 100, 15,
                   what="a Kafka input rate above 100 records/s")
        topic = next(t for t in ok(get(broker, f"/api/topics?filter={name}"))["items"] if t["name"] == name)
        assert topic["records_in_rate"] > 100 and topic["bytes_in_rate"] > 100 * 64
    finally:
        stop.set()
        feeder.join(15)
    wait_until(lambda: ok(get(broker, "/api/overview"))["rates"]["kafka_records_in"] == 0, 15,
               what="the rate back at 0 after the traffic")
