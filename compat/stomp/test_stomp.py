"""STOMP 1.0, 1.1 and 1.2 with stomp.py: every client frame, the three
ack modes, transactions, receipts, heart-beats, RabbitMQ's destinations
with headers mapped to message properties, STOMP beside AMQP and MQTT,
and hostile input. One broker for the module."""

from __future__ import annotations

import time

import pika
import pytest

from common.broker import api_get, sluice_cli
from support import Client, closed_within, open_raw, raw_frame, read_frame, unique_name, wait_until

VERSIONS = ["1.0", "1.1", "1.2"]


@pytest.fixture
def clients(broker):
    made: list[Client] = []

    def make(**options) -> Client:
        client = Client(broker, **options).connect()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _amqp(broker):
    host, port = broker.amqp_address.split(":")
    return pika.BlockingConnection(pika.ConnectionParameters(
        host, int(port), credentials=pika.PlainCredentials("guest", "guest")))


@pytest.mark.parametrize("version", VERSIONS)
def test_send_and_subscribe_to_a_queue_with_receipts(clients, version):
    queue = unique_name("orders")
    consumer = clients(version=version)
    consumer.connection.subscribe(f"/queue/{queue}", id="s1", ack="auto")
    producer = clients(version=version)
    for n in range(10):
        producer.connection.send(f"/queue/{queue}", f"order-{n}", headers={"persistent": "true"},
                                 receipt=f"r{n}")
    producer.receipt("r9")
    got = consumer.take(10)
    assert [m.body for m in got] == [f"order-{n}" for n in range(10)]
    assert got[0].headers["destination"] == f"/queue/{queue}"
    assert got[0].headers["subscription"] == "s1"
    assert got[0].headers["persistent"] == "true"


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ack_is_cumulative_and_unacked_messages_come_back(clients, version):
    queue = unique_name("work")
    producer = clients(version=version)
    for n in range(5):
        producer.connection.send(f"/queue/{queue}", f"job-{n}")
    first = clients(version=version)
    first.connection.subscribe(f"/queue/{queue}", id="w", ack="client")
    got = first.take(5)
    first.ack(got[2])  # acknowledges jobs 0, 1 and 2
    time.sleep(0.3)
    first.close()
    second = clients(version=version)
    second.connection.subscribe(f"/queue/{queue}", id="w", ack="client-individual")
    back = second.take(2)
    assert sorted(m.body for m in back) == ["job-3", "job-4"]
    assert all(m.headers["redelivered"] == "true" for m in back)
    second.ack(back[1])
    if version == "1.0":  # no NACK in 1.0
        second.ack(back[0])
        second.nothing_within(0.3)
        return
    second.nack(back[0])  # requeued (RabbitMQ's default)
    again = second.take(1)
    assert again[0].body == back[0].body
    second.ack(again[0])
    second.nothing_within(0.3)


def test_nack_without_requeue_dead_letters(clients, broker):
    queue = unique_name("dlx-src")
    dead = unique_name("dead")
    connection = _amqp(broker)
    channel = connection.channel()
    channel.queue_declare(dead, durable=True)
    channel.queue_declare(queue, durable=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    connection.close()
    client = clients(version="1.2")
    client.connection.send(f"/amq/queue/{queue}", "bad")
    client.connection.subscribe(f"/amq/queue/{queue}", id="d", ack="client-individual")
    message = client.take(1)[0]
    client.nack(message, requeue="false")
    client.connection.subscribe(f"/amq/queue/{dead}", id="dl", ack="auto")
    assert client.take(1)[0].body == "bad"


def test_transactions_commit_and_abort(clients):
    queue = unique_name("tx")
    producer = clients(version="1.2")
    consumer = clients(version="1.2")
    consumer.connection.subscribe(f"/queue/{queue}", id="t", ack="client-individual")
    tx = producer.connection.begin()
    producer.connection.send(f"/queue/{queue}", "in-tx", transaction=tx)
    consumer.nothing_within(0.5)
    producer.connection.commit(tx)
    got = consumer.take(1)[0]
    assert got.body == "in-tx"
    aborted = consumer.connection.begin()
    consumer.connection.ack(got.headers["ack"], transaction=aborted)
    consumer.connection.abort(aborted)
    tx2 = producer.connection.begin()
    producer.connection.send(f"/queue/{queue}", "never", transaction=tx2)
    producer.connection.abort(tx2)
    consumer.nothing_within(0.5)
    committed = consumer.connection.begin()
    consumer.connection.ack(got.headers["ack"], transaction=committed)
    consumer.connection.commit(committed, receipt="done")
    consumer.receipt("done")


def test_topics_exchanges_and_headers_as_rabbitmq_maps_them(clients, broker):
    root = unique_name("news")
    a = clients(version="1.2")
    b = clients(version="1.1")
    a.connection.subscribe(f"/topic/{root}.*", id="t1")
    b.connection.subscribe(f"/exchange/amq.topic/{root}.sports", id="t2")
    time.sleep(0.2)
    sender = clients(version="1.2")
    sender.connection.send(f"/topic/{root}.sports", "goal", headers={
        "content-type": "text/plain", "priority": "3", "correlation-id": "c-9", "x-league": "north"})
    for client in (a, b):
        message = client.take(1)[0]
        assert message.body == "goal"
        assert message.headers["destination"] == f"/topic/{root}.sports"
        assert message.headers["content-type"] == "text/plain"
        assert message.headers["priority"] == "3"
        assert message.headers["correlation-id"] == "c-9"
        assert message.headers["x-league"] == "north"
    # The same message over AMQP: properties and the headers table.
    queue = unique_name("amqp-view")
    connection = _amqp(broker)
    channel = connection.channel()
    channel.queue_declare(queue, exclusive=True)
    channel.queue_bind(queue, "amq.topic", routing_key=f"{root}.#")
    sender.connection.send(f"/topic/{root}.weather", "rain", headers={"content-type": "text/plain",
                                                                      "x-region": "east"})
    method, properties, body = None, None, None
    deadline = time.monotonic() + 10
    while method is None and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        time.sleep(0.05)
    assert body == b"rain" and properties.content_type == "text/plain"
    assert properties.headers == {"x-region": "east"}
    connection.close()


def test_temp_queues_carry_replies(clients):
    service_queue = unique_name("rpc")
    service = clients(version="1.2")
    service.connection.subscribe(f"/queue/{service_queue}", id="svc")
    caller = clients(version="1.2")
    caller.connection.send(f"/queue/{service_queue}", "ping", headers={"reply-to": "/temp-queue/answers"})
    request = service.take(1)[0]
    reply_to = request.headers["reply-to"]
    assert reply_to.startswith("/reply-queue/")
    service.connection.send(reply_to, "pong")
    answer = caller.take(1)[0]
    assert answer.body == "pong"


def test_amqp_and_mqtt_reach_stomp_subscribers(clients, broker):
    import paho.mqtt.client as mqtt

    root = unique_name("devices")
    subscriber = clients(version="1.2")
    subscriber.connection.subscribe(f"/topic/{root}.#", id="all")
    time.sleep(0.2)
    connection = _amqp(broker)
    connection.channel().basic_publish("amq.topic", f"{root}.a", b"from-amqp")
    connection.close()
    publisher = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=unique_name("m", 10))
    publisher.username_pw_set("guest", "guest")
    publisher.connect(*broker.mqtt_address)
    publisher.loop_start()
    publisher.publish(f"{root}/b", b"from-mqtt", qos=1).wait_for_publish(10)
    publisher.disconnect()
    publisher.loop_stop()
    got = subscriber.take(2)
    assert sorted((m.headers["destination"], m.body) for m in got) == [
        (f"/topic/{root}.a", "from-amqp"),
        (f"/topic/{root}.b", "from-mqtt"),
    ]


def test_durable_topic_subscriptions_keep_messages_while_away(clients):
    root = unique_name("durable")
    sub_id = unique_name("keep", 12)
    first = clients(version="1.2")
    first.connection.subscribe(f"/topic/{root}", id=sub_id, headers={"durable": "true", "auto-delete": "false"})
    time.sleep(0.2)
    first.close()
    sender = clients(version="1.2")
    sender.connection.send(f"/topic/{root}", "while-away", headers={"persistent": "true"}, receipt="sent")
    sender.receipt("sent")
    back = clients(version="1.2")
    back.connection.subscribe(f"/topic/{root}", id=sub_id, headers={"durable": "true", "auto-delete": "false"})
    assert back.take(1)[0].body == "while-away"


def test_heart_beats_keep_the_connection_and_silence_closes_it(broker, clients):
    beating = clients(version="1.2", heartbeats=(500, 500))
    time.sleep(2.5)
    assert beating.connection.is_connected(), "heart-beats kept it"
    sock = __import__("socket").create_connection(broker.stomp_address, timeout=10)
    sock.sendall(raw_frame("CONNECT", {"accept-version": "1.2", "host": "/", "login": "guest",
                                       "passcode": "guest", "heart-beat": "500,0"}))
    connected = read_frame(sock)
    assert b"heart-beat:" in connected
    assert closed_within(sock, 30), "a client that promised beats and sends none is closed"
    sock.close()


def test_the_admin_api_and_cli_list_stomp_connections(clients, broker):
    client = clients(version="1.2")
    client.connection.subscribe(f"/queue/{unique_name('listed')}", id="listed-sub")
    rows = wait_until(lambda: [c for c in api_get(broker, "/api/connections")["items"]
                               if c["protocol"] == "stomp" and "listed-sub" in c["subscriptions"]],
                      10, what="the STOMP connection")
    assert rows[0]["protocol_version"] == "1.2" and rows[0]["user"] == "guest"
    table = sluice_cli(broker, "connections", "list").splitlines()
    (line,) = [line for line in table[1:] if line.split()[0] == str(rows[0]["id"])]
    assert "stomp 1.2" in line and line.split()[-1] == "listed-sub", table
    assert {"protocol": "stomp", "address": f"127.0.0.1:{broker.stomp_port}"} in api_get(broker, "/api/overview")["listeners"]


def test_queue_argument_headers_declare_the_queue_as_rabbitmq_does(clients, broker):
    # RabbitMQ's x-* queue-argument headers on the frame that declares a
    # queue: a SEND to /queue/, a SUBSCRIBE to /queue/, a durable topic
    # subscription's own queue.
    sent_to, subscribed_to = unique_name("capped"), unique_name("ttl")
    client = clients(version="1.2")
    for n in range(4):
        client.connection.send(f"/queue/{sent_to}", f"m-{n}",
                               headers={"x-queue-type": "quorum", "x-max-length": "2"}, receipt=f"s{n}")
    client.receipt("s3")
    capped = api_get(broker, f"/api/queues/%2F/{sent_to}")
    assert capped["type"] == "quorum" and capped["arguments"]["x-max-length"] == 2, capped
    wait_until(lambda: api_get(broker, f"/api/queues/%2F/{sent_to}")["messages"] == 2, 10,
               what="x-max-length dropping the oldest")
    client.connection.subscribe(f"/queue/{subscribed_to}", id="ttl", receipt="sub-ttl",
                                headers={"x-message-ttl": "60000", "x-dead-letter-exchange": "amq.fanout"})
    client.receipt("sub-ttl")
    arguments = api_get(broker, f"/api/queues/%2F/{subscribed_to}")["arguments"]
    assert arguments == {"x-message-ttl": 60000, "x-dead-letter-exchange": "amq.fanout"}, arguments
    client.connection.subscribe(f"/topic/{unique_name('news')}", id="news", receipt="sub-news",
                                headers={"durable": "true", "auto-delete": "false", "x-max-length": "5"})
    client.receipt("sub-news")
    (own,) = [q for q in api_get(broker, "/api/queues")["items"] if q["name"] == "stomp-subscription-guest-news"]
    assert own["durable"] and own["arguments"] == {"x-max-length": 5}, own
    client.connection.unsubscribe("news")

    # A number that is none, and arguments unlike the queue's, are refused.
    for headers in ({"x-max-length": "ten"}, {"x-queue-type": "quorum", "x-max-length": "3"}):
        sock = open_raw(broker)
        sock.sendall(raw_frame("SEND", {"destination": f"/queue/{sent_to}", **headers}, b"x"))
        answer = read_frame(sock)
        assert answer.startswith(b"ERROR"), answer
        assert closed_within(sock, 5)
        sock.close()
    assert api_get(broker, f"/api/queues/%2F/{sent_to}")["messages"] == 2


@pytest.mark.parametrize("data", [
    pytest.param(raw_frame("SEND", {"destination": "/nowhere/x"}, b"x"), id="unknown-destination"),
    pytest.param(raw_frame("SEND", {}, b"x"), id="no-destination"),
    pytest.param(raw_frame("ACK", {"id": "999"}), id="ack-for-nothing"),
    pytest.param(raw_frame("COMMIT", {"transaction": "none"}), id="unknown-transaction"),
    pytest.param(raw_frame("FLY", {}), id="unknown-command"),
    pytest.param(b"SEND\nnocolon\n\n\0", id="malformed-header"),
    pytest.param(b"SEND\ncontent-length:99999999999\n\n", id="oversize"),
])
def test_bad_frames_get_error_and_a_closed_connection(broker, data):
    sock = open_raw(broker)
    sock.sendall(data)
    answer = read_frame(sock)
    assert answer.startswith(b"ERROR"), answer
    assert closed_within(sock, 5)
    sock.close()
    alive = Client(broker).connect()
    alive.close()


def test_a_wrong_login_gets_error(broker):
    sock = __import__("socket").create_connection(broker.stomp_address, timeout=10)
    sock.sendall(raw_frame("CONNECT", {"accept-version": "1.2", "host": "/", "login": "guest", "passcode": "no"}))
    answer = read_frame(sock)
    assert answer.startswith(b"ERROR") and b"Access refused" in answer
    assert closed_within(sock, 5)
    sock.close()


def test_stomp_over_websocket_on_the_http_listener(broker, clients):
    import stomp

    queue = unique_name("ws")
    connection = stomp.WSStompConnection([("127.0.0.1", broker.http_port)], ws_path="/ws/stomp",
                                         heartbeats=(0, 0))
    from support import Recorder

    recorder = Recorder()
    connection.set_listener("r", recorder)
    connection.connect("guest", "guest", wait=True)
    connection.subscribe(f"/queue/{queue}", id="ws-sub", ack="client-individual")
    sender = clients(version="1.2")
    sender.connection.send(f"/queue/{queue}", "over websocket")
    message = recorder.messages.get(timeout=15)
    assert message.body == "over websocket"
    connection.ack(message.headers["ack"])
    connection.send(f"/queue/{queue}-back", "reply", receipt="ws-r")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and recorder.receipts.empty():
        time.sleep(0.05)
    assert recorder.receipts.get(timeout=1) == "ws-r"
    connection.disconnect()
