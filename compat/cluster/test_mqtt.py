"""MQTT on a three-node cluster (paho-mqtt, pika): a message published on
one node reaches MQTT subscribers and AMQP consumers on the others; a
retained message set through one node is handed out by every node; a
persistent session's queue is a quorum queue, so the session and the QoS
1 messages queued for it survive kill -9 of the node the client used,
and the client gets them from another node. Client ids are the
cluster's: a client taking one on another node ends its holder (MQTT 5
DISCONNECT 0x8E) and settles its delayed will. Wills reach subscribers
on other nodes, and sessions end on every node when they expire."""

from __future__ import annotations

import threading
import time

from paho.mqtt.packettypes import PacketTypes

from common.broker import unique_name, wait_until
from mqtt.support import V5, V311, Client, v5_properties
from test_amqp_definitions import channel, queues_on
from test_kafka_cluster import admin


def _client(node, **options) -> Client:
    return Client(node, address=node.mqtt_address, **options)


def test_messages_subscriptions_and_retained_messages_cross_nodes(cluster):
    cluster.wait_registered(admin)
    root = unique_name("fleet")
    subscriber = _client(cluster.node(2), version=V5)
    subscriber.connect()
    subscriber.subscribe(f"{root}/#", qos=1)
    amqp_queue = unique_name("amqp-side")
    with channel(cluster.node(3)) as ch:
        ch.queue_declare(amqp_queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(amqp_queue, "amq.topic", routing_key=f"{root}.#")
    wait_until(lambda: all(amqp_queue in queues_on(cluster.node(n)) for n in (1, 2, 3)), 20,
               what="the AMQP queue on every node")
    publisher = _client(cluster.node(1), version=V5)
    publisher.connect()
    for n in range(10):
        publisher.publish(f"{root}/truck/{n}", f"pos-{n}", qos=1)
    publisher.publish(f"{root}/config", b"v2", qos=1, retain=True)
    got = subscriber.take(11)
    assert [m.payload.decode() for m in got if "/truck/" in m.topic] == [f"pos-{n}" for n in range(10)]
    bodies = []
    with channel(cluster.node(3)) as ch:
        def drained():
            while True:
                method, _, body = ch.basic_get(amqp_queue, auto_ack=True)
                if method is None:
                    return len(bodies) >= 11
                bodies.append(body)

        wait_until(drained, 20, what="11 messages on the AMQP side")
    assert sorted(bodies) == sorted([f"pos-{n}".encode() for n in range(10)] + [b"v2"])
    for node_id in (1, 2, 3):
        late = _client(cluster.node(node_id))
        late.connect()
        late.subscribe(f"{root}/config", qos=1)
        retained = late.take(1)[0]
        assert (retained.payload, retained.retain) == (b"v2", True), f"node {node_id}"
        late.disconnect()
    subscriber.disconnect()
    publisher.disconnect()


def test_a_persistent_session_survives_kill_9_of_its_node(fresh_cluster):
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    client_id = unique_name("tracker", 20)
    topic = unique_name("orders")
    session = v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=3600)
    first = _client(cluster.node(2), version=V5, client_id=client_id, clean=True, properties=session)
    first.connect()
    first.subscribe(f"{topic}/#", qos=1)
    first.disconnect()
    queue = f"mqtt-subscription-{client_id}qos1"
    wait_until(lambda: all(queue in queues_on(cluster.node(n)) for n in (1, 3)), 20,
               what="the session's queue known on nodes 1 and 3")
    assert queues_on(cluster.node(1))[queue]["type"] == "quorum"
    publisher = _client(cluster.node(1), version=V5)
    publisher.connect()
    for n in range(20):
        publisher.publish(f"{topic}/new", f"order-{n}", qos=1)
    publisher.publish(f"{topic}/state", b"open", qos=1, retain=True)
    publisher.disconnect()
    cluster.node(2).kill()
    back = _client(cluster.node(3), version=V5, client_id=client_id, clean=False, properties=session)
    session_present, _ = back.connect()
    assert session_present, "the session lives on without node 2"
    got = back.take(21, timeout=30)
    orders = [m.payload.decode() for m in got if m.topic.endswith("/new")]
    assert sorted(orders) == sorted(f"order-{n}" for n in range(20))
    assert len(orders) == 20, "each once"
    back.disconnect()
    fresh = _client(cluster.node(1))
    fresh.connect()
    fresh.subscribe(f"{topic}/state", qos=1)
    assert fresh.take(1)[0].payload == b"open"
    fresh.disconnect()


def test_shared_subscription_members_on_two_nodes_split_the_messages(cluster):
    cluster.wait_registered(admin)
    topic = unique_name("work")
    members = [_client(cluster.node(n), version=V5) for n in (2, 3)]
    for member in members:
        member.connect()
        member.subscribe(f"$share/crew/{topic}", qos=1)
    publisher = _client(cluster.node(1), version=V5)
    publisher.connect()
    for n in range(30):
        publisher.publish(topic, f"task-{n}", qos=1)
    wait_until(lambda: sum(m.received.qsize() for m in members) >= 30, 20, what="30 shared deliveries")
    counts = [member.received.qsize() for member in members]
    seen = [message.payload.decode() for member, count in zip(members, counts) for message in member.take(count)]
    assert sorted(seen) == sorted(f"task-{n}" for n in range(30)), counts
    assert all(counts), f"members on both nodes took some: {counts}"
    for client in [*members, publisher]:
        client.disconnect()


def test_a_client_id_taken_on_another_node_ends_its_holder_there(cluster):
    cluster.wait_registered(admin)
    client_id = unique_name("roamer", 20)
    topic = unique_name("roaming")
    will_topic = unique_name("roamer-will")
    watcher = _client(cluster.node(3), version=V5)
    watcher.connect()
    watcher.subscribe(will_topic, qos=1)
    session = v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=600)

    def holder(node_id, delay):
        client = _client(cluster.node(node_id), version=V5, client_id=client_id, clean=False, properties=session,
                         will=(will_topic, f"gone-{delay}".encode(), 1, False),
                         will_properties=v5_properties(PacketTypes.WILLMESSAGE, WillDelayInterval=delay))
        client.connect()
        return client

    # Node 2 takes the session node 1 holds: node 1 ends its connection
    # with "session taken over", the session goes on through node 2, and
    # the will waiting 3 s is dropped (the client came back in time).
    first = holder(1, 3)
    first.subscribe(topic, qos=1)
    second = _client(cluster.node(2), version=V5, client_id=client_id, clean=False, properties=session)
    session_present, _ = second.connect()
    assert session_present
    assert first.disconnects.get(timeout=15).value == 0x8E, "node 1 ended the session's former holder"
    publisher = _client(cluster.node(3), version=V5)
    publisher.connect()
    for n in range(10):
        publisher.publish(topic, f"fix-{n}", qos=1)
    assert [m.payload.decode() for m in second.take(10)] == [f"fix-{n}" for n in range(10)]
    first.nothing_within(0.5)
    first.disconnect()
    watcher.nothing_within(4)
    second.disconnect()

    # A clean start on node 3 ends the session node 1 holds: the will
    # waiting a minute goes out at once.
    third = holder(1, 60)
    fourth = _client(cluster.node(3), version=V5, client_id=client_id, clean=True, properties=session)
    session_present, _ = fourth.connect()
    assert not session_present
    assert third.disconnects.get(timeout=15).value == 0x8E
    (will,) = watcher.take(1, timeout=15)
    assert will.payload == b"gone-60"
    third.disconnect()
    fourth.disconnect()

    # Two clients with the id connecting to two nodes at once: exactly one
    # keeps it, without waiting out the takeover's bounds.
    racers = [_client(cluster.node(n), version=V5, client_id=client_id, clean=False, properties=session)
              for n in (1, 2)]
    started = time.monotonic()
    threads = [threading.Thread(target=racer.connect) for racer in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert time.monotonic() - started < 4, f"both connected in {time.monotonic() - started:.1f} s"
    wait_until(lambda: sum(not r.disconnects.empty() for r in racers) >= 1, 15, what="one racer ended")
    time.sleep(1)
    ended = [r for r in racers if not r.disconnects.empty()]
    assert len(ended) == 1, "exactly one of the two keeps the id"
    assert ended[0].disconnects.get().value == 0x8E
    (winner,) = [r for r in racers if r is not ended[0]]
    winner.subscribe(topic, qos=1)
    publisher.publish(topic, b"to the winner", qos=1)
    assert winner.take(1)[0].payload == b"to the winner"
    for racer in racers:
        racer.disconnect()
    publisher.disconnect()
    watcher.disconnect()


def test_wills_reach_other_nodes_and_sessions_end_everywhere(cluster):
    cluster.wait_registered(admin)
    topic = unique_name("plant")
    watcher = _client(cluster.node(3), version=V5)
    watcher.connect()
    watcher.subscribe(f"{topic}/#", qos=1)
    # A cut connection on node 1: its retained will reaches node 3's
    # subscriber and is handed out by node 2.
    cut = _client(cluster.node(1), version=V311, will=(f"{topic}/status", b"offline", 1, True))
    cut.connect()
    cut.drop()
    (will,) = watcher.take(1, timeout=15)
    assert (will.topic, will.payload) == (f"{topic}/status", b"offline")
    late = _client(cluster.node(2))
    late.connect()
    late.subscribe(f"{topic}/status", qos=1)
    assert late.take(1)[0].payload == b"offline"
    late.disconnect()

    # A session expiring 2 s after its client left is gone on every node;
    # a clean session is gone as soon as its connection ends.
    expiring_id, clean_id = unique_name("brief", 20), unique_name("clean", 20)
    expiring = _client(cluster.node(2), version=V5, client_id=expiring_id, clean=True,
                       properties=v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=2))
    expiring.connect()
    expiring.subscribe(f"{topic}/expiring", qos=1)
    clean = _client(cluster.node(1), version=V311, client_id=clean_id, clean=True)
    clean.connect()
    clean.subscribe(f"{topic}/clean", qos=1)
    queues = {f"mqtt-subscription-{expiring_id}qos1", f"mqtt-subscription-{clean_id}qos1"}
    wait_until(lambda: all(queues <= set(queues_on(cluster.node(n))) for n in (1, 2, 3)), 20,
               what="both sessions' queues on every node")
    expiring.disconnect()
    clean.disconnect()
    left_at = time.monotonic()
    wait_until(lambda: not any(queues & set(queues_on(cluster.node(n))) for n in (1, 2, 3)), 30,
               what="both sessions' queues gone from every node")
    back = _client(cluster.node(3), version=V5, client_id=expiring_id, clean=False,
                   properties=v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=2))
    session_present, _ = back.connect()
    assert not session_present, f"the session expired ({time.monotonic() - left_at:.1f} s after its client left)"
    back.disconnect()
    watcher.disconnect()
