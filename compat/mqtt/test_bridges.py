"""MQTT beside the other protocols on one broker: an MQTT publish reaches
an AMQP consumer (pika) and, through a stream queue bound to amq.topic, a
Kafka consumer (confluent-kafka); an AMQP publish reaches MQTT
subscribers. mosquitto's command-line clients speak 3.1.1 and 5.0 to it.
The admin API, the CLI and /metrics list MQTT connections and the
listener."""

from __future__ import annotations

import json
import subprocess
import time

import pika
import pytest
from confluent_kafka import Consumer

from common.broker import api_get, sluice_cli
from support import V5, Client, unique_name, wait_until


def _amqp(broker):
    host, port = broker.amqp_address.split(":")
    return pika.BlockingConnection(pika.ConnectionParameters(host, int(port), credentials=pika.PlainCredentials("guest", "guest")))


def test_an_mqtt_publish_reaches_amqp_and_kafka_consumers(broker):
    root = unique_name("sensors")
    connection = _amqp(broker)
    channel = connection.channel()
    queue = unique_name("amqp-view")
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, "amq.topic", routing_key=f"{root}.*.temp")
    stream = unique_name("device-data")
    channel.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
    channel.queue_bind(stream, "amq.topic", routing_key=f"{root}.#")
    publisher = Client(broker, version=V5)
    publisher.connect()
    for n in range(5):
        publisher.publish(f"{root}/room.{n}/temp", f"{20 + n}", qos=1)
    publisher.disconnect()
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 5 and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        got.append((method.routing_key, body, properties.delivery_mode, properties.headers))
    assert [(key, body) for key, body, _, _ in got] == [
        (f"{root}.room/{n}.temp", f"{20 + n}".encode()) for n in range(5)
    ], "'/' becomes '.', and a '.' inside a level becomes '/'"
    assert {mode for _, _, mode, _ in got} == {2}, "QoS 1 is persistent"
    assert got[0][3]["x-mqtt-publish-qos"] == 1
    connection.close()
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": unique_name("kafka-readers"),
        "auto.offset.reset": "earliest",
    })
    try:
        consumer.subscribe([stream])
        records = []
        deadline = time.monotonic() + 30
        while len(records) < 5 and time.monotonic() < deadline:
            record = consumer.poll(0.5)
            if record is not None and record.error() is None:
                records.append(record.value())
        assert records == [f"{20 + n}".encode() for n in range(5)]
    finally:
        consumer.close()


@pytest.mark.parametrize("version", ["3.1.1", "5.0"])
def test_an_amqp_publish_reaches_mqtt_subscribers(broker, version):
    root = unique_name("commands")
    subscriber = Client(broker, version=V5 if version == "5.0" else 4)
    subscriber.connect()
    subscriber.subscribe(f"{root}/#", qos=1)
    connection = _amqp(broker)
    channel = connection.channel()
    channel.basic_publish("amq.topic", f"{root}.valve.7", b"open",
                          properties=pika.BasicProperties(delivery_mode=2, content_type="text/plain"))
    channel.basic_publish("amq.topic", f"{root}.valve.8", b"close", properties=pika.BasicProperties(delivery_mode=1))
    connection.close()
    got = subscriber.take(2)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"{root}/valve/7", b"open", 1),
        (f"{root}/valve/8", b"close", 0),
    ], "persistent AMQP messages arrive at QoS 1, transient ones at QoS 0"
    if version == "5.0":
        assert got[0].properties.ContentType == "text/plain"
    subscriber.disconnect()


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_clients_publish_and_subscribe(broker, version):
    topic = unique_name("cli")
    host, port = broker.mqtt_address
    base = ["-h", host, "-p", str(port), "-V", version, "-u", "guest", "-P", "guest"]
    subscriber = subprocess.Popen(
        ["mosquitto_sub", *base, "-t", f"{topic}/#", "-q", "1", "-C", "3", "-v", "-W", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(lambda: any(
            c["protocol"] == "mqtt" and f"{topic}/#" in c.get("subscriptions", [])
            for c in api_get(broker, "/api/connections")["items"]
        ), 10, what="mosquitto_sub's subscription")
        # MQTT 5 clients get Maximum QoS 1; 3.1.1 ones may send QoS 2.
        for n, qos in enumerate([0, 1, 2 if version == "mqttv311" else 1]):
            subprocess.run(["mosquitto_pub", *base, "-t", f"{topic}/m{n}", "-m", f"v{n}", "-q", str(qos)],
                           check=True, timeout=20)
        out, err = subscriber.communicate(timeout=25)
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.wait()
    assert subscriber.returncode == 0, err
    assert out.splitlines() == [f"{topic}/m{n} v{n}" for n in range(3)]
    retained = subprocess.run(["mosquitto_pub", *base, "-t", f"{topic}/r", "-m", "kept", "-r", "-q", "1"],
                              check=True, timeout=20)
    assert retained.returncode == 0
    got = subprocess.run(["mosquitto_sub", *base, "-t", f"{topic}/r", "-C", "1", "-W", "10", "-v"],
                         capture_output=True, text=True, timeout=20, check=True)
    assert got.stdout.strip() == f"{topic}/r kept"


def test_the_admin_api_and_metrics_show_mqtt_connections(broker):
    client_id = unique_name("visible", 20)
    client = Client(broker, version=V5, client_id=client_id)
    client.connect()
    client.subscribe("plant/+/temp", qos=1)
    client.subscribe("$share/g/plant/#", qos=0)
    listed = wait_until(lambda: [c for c in api_get(broker, "/api/connections")["items"]
                                 if c["client_name"] == client_id], 10, what="the connection")
    connection = listed[0]
    assert connection["protocol"] == "mqtt"
    assert connection["protocol_version"] == "5.0"
    assert connection["user"] == "guest" and connection["vhost"] == "/"
    assert sorted(connection["subscriptions"]) == ["$share/g/plant/#", "plant/+/temp"]
    # The CLI's table: the protocol with its version, and the filters.
    table = sluice_cli(broker, "connections", "list", "--filter", client_id).splitlines()
    assert table[0].split()[1] == "PROTOCOL" and table[0].split()[-1] == "SUBSCRIPTIONS", table
    (line,) = [line for line in table[1:] if client_id in line]
    assert "mqtt 5.0" in line, table
    assert sorted(line.split()[-1].split(",")) == ["$share/g/plant/#", "plant/+/temp"], table
    listeners = api_get(broker, "/api/overview")["listeners"]
    assert {"protocol": "mqtt", "address": f"127.0.0.1:{broker.mqtt_port}"} in listeners
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    line = next(line for line in metrics.splitlines() if line.startswith('sluice_connections_open{protocol="mqtt"}'))
    assert float(line.split()[-1]) >= 1
    client.disconnect()
    wait_until(lambda: not [c for c in api_get(broker, "/api/connections")["items"]
                            if c["client_name"] == client_id], 10, what="the connection to go")
    assert json.dumps(connection)


def test_mqtt_over_websocket_on_the_http_listener(broker):
    import paho.mqtt.client as mqtt

    topic = unique_name("ws")
    over_ws = Client(broker, version=V5, address=("127.0.0.1", broker.http_port))
    over_ws.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                 client_id=over_ws.client_id, protocol=V5, transport="websockets")
    over_ws.client.ws_set_options(path="/ws/mqtt")
    over_ws.client.username_pw_set("guest", "guest")
    over_ws.client.on_connect = over_ws._on_connect
    over_ws.client.on_message = lambda _c, _u, message: over_ws.received.put(message)
    over_ws.client.on_subscribe = lambda _c, _u, mid, codes, _p: over_ws.subacks.put((mid, codes))
    over_ws.client.on_publish = over_ws._on_publish
    over_ws.connect()
    over_ws.subscribe(f"{topic}/#", qos=1)
    plain = Client(broker)
    plain.connect()
    plain.publish(f"{topic}/a", b"x" * 100_000, qos=1)
    assert over_ws.take(1)[0].payload == b"x" * 100_000, "a packet over several WebSocket messages"
    over_ws.publish(f"{topic}/b", b"from the browser side", qos=1)
    assert over_ws.take(1)[0].payload == b"from the browser side"
    listed = [c for c in api_get(broker, "/api/connections")["items"] if c["client_name"] == over_ws.client_id]
    assert listed and listed[0]["protocol"] == "mqtt"
    over_ws.disconnect()
    plain.disconnect()
