#!/usr/bin/env python3
"""TLS against plaintext on one Sluice node, in one sitting on this
machine: the same workload through a plaintext listener and a TLS listener
of the same broker, alternating, so the ratio is what to read (clients and
broker share the two cores).

- Kafka: confluent-kafka (librdkafka 2.16) producer, acks=all, 1 KiB
  records, linger 5 ms, 100,000 records to a one-partition topic;
  PLAINTEXT listener against an SSL listener (TLS 1.3, ECDSA P-256).
- AMQP: pika, persistent 1 KiB messages to a durable queue with publisher
  confirms (each publish waits for its confirm), 5,000 messages;
  `amqp.listen` against `amqp.tls_listen`.

The certificate is made here with `openssl` in a temporary directory.
Usage (from the repository root, with the venv scripts/test makes):
    target/venv/bin/python bench/tls.py [runs]
Default: 3 runs of each; prints medians and the TLS/plaintext ratio, and
writes the raw figures to target/bench/tls.json. The broker is the
release build (`cargo build --release`), stopped by its pid.
"""

from __future__ import annotations

import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import ROOT  # noqa: E402 (sets BROKER_BIN to the release build)

import pika  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from common.broker import Broker, free_port  # noqa: E402

SIZE = 1024
KAFKA_COUNT = 100_000
AMQP_COUNT = 5_000


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (ECDSA P-256)."""
    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd=directory)

    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def kafka_rate(config: dict, topic: str) -> float:
    """Records per second, acknowledged (acks=all), over the whole run."""
    producer = Producer({**config, "acks": "all", "linger.ms": 5, "queue.buffering.max.messages": 200_000})
    payload = b"x" * SIZE
    failures = []
    started = time.perf_counter()
    for _ in range(KAFKA_COUNT):
        while True:
            try:
                producer.produce(topic, payload, on_delivery=lambda err, _m: err and failures.append(err))
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - started
    assert left == 0 and not failures, (left, failures[:3])
    return KAFKA_COUNT / elapsed


def amqp_rate(parameters: pika.ConnectionParameters, queue: str) -> float:
    """Confirmed persistent messages per second."""
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()
    payload = b"x" * SIZE
    properties = pika.BasicProperties(delivery_mode=2)
    started = time.perf_counter()
    for _ in range(AMQP_COUNT):
        channel.basic_publish("", queue, payload, properties)
    elapsed = time.perf_counter() - started
    channel.queue_purge(queue)
    connection.close()
    return AMQP_COUNT / elapsed


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="sluice-tls-bench-") as temp:
        directory = Path(temp)
        ca, cert, key = make_certificate(directory)
        ssl_port, amqps_port = free_port(), free_port()
        broker = Broker(directory / "data", name="bench-tls", settings={
            "kafka.listeners": f"SSL://127.0.0.1:{ssl_port}",
            "amqp.tls_listen": f"127.0.0.1:{amqps_port}",
            "tls.cert_file": str(cert),
            "tls.key_file": str(key),
        })
        broker.start()
        try:
            plain = {"bootstrap.servers": broker.bootstrap}
            secure = {"bootstrap.servers": f"127.0.0.1:{ssl_port}", "security.protocol": "SSL",
                      "ssl.ca.location": str(ca)}
            admin = AdminClient(plain)
            topics = {f"tls-bench-{i}": NewTopic(f"tls-bench-{i}", 1, 1) for i in range(2 * runs)}
            for future in admin.create_topics(list(topics.values())).values():
                future.result(timeout=30)
            context = ssl.create_default_context(cafile=str(ca))
            amqp_plain = pika.ConnectionParameters("127.0.0.1", broker.amqp_port)
            amqp_secure = pika.ConnectionParameters("127.0.0.1", amqps_port,
                                                    ssl_options=pika.SSLOptions(context, "localhost"))
            figures: dict[str, list[float]] = {"kafka plaintext": [], "kafka tls": [],
                                               "amqp plaintext": [], "amqp tls": []}
            for run in range(runs):
                # Alternate which goes first, so a drift in the machine's
                # load does not favour one side.
                order = [("plaintext", plain), ("tls", secure)]
                if run % 2:
                    order.reverse()
                for label, config in order:
                    topic = f"tls-bench-{2 * run + (0 if label == 'plaintext' else 1)}"
                    figures[f"kafka {label}"].append(kafka_rate(config, topic))
                amqp_order = [("plaintext", amqp_plain), ("tls", amqp_secure)]
                if run % 2:
                    amqp_order.reverse()
                for label, parameters in amqp_order:
                    figures[f"amqp {label}"].append(amqp_rate(parameters, f"tls-bench-{label}"))
        finally:
            broker.stop()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for protocol, unit in (("kafka", "records/s"), ("amqp", "msg/s")):
        plaintext, tls = medians[f"{protocol} plaintext"], medians[f"{protocol} tls"]
        print(f"{protocol}: plaintext {plaintext:,.0f} {unit}, TLS {tls:,.0f} {unit}, "
              f"TLS/plaintext {tls / plaintext:.0%} (median of {runs})")
    out = ROOT / "target" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tls.json").write_text(json.dumps({"runs": runs, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
