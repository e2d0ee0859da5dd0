"""MQTT publish and subscribe with paho-mqtt over 3.1.1 and 5.0: QoS 0,
1 and 2, wildcards, retained messages, and MQTT 5's properties, topic
aliases, subscription identifiers, shared subscriptions and reason codes.
One broker for the module."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes

from support import V5, VERSIONS, Client, unique_name, v5_properties, version_of, wait_until


@pytest.fixture
def clients(broker):
    made: list[Client] = []

    def make(**options) -> Client:
        client = Client(broker, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - a test may have dropped it already
            pass


@pytest.mark.parametrize("version", VERSIONS)
def test_qos_0_and_1_reach_wildcard_subscribers_in_order(clients, version):
    root = unique_name("plant")
    subscriber = clients(version=version_of(version))
    subscriber.connect()
    assert [getattr(c, "value", c) for c in subscriber.subscribe(f"{root}/+/temp", qos=1)] == [1]
    assert [getattr(c, "value", c) for c in subscriber.subscribe(f"{root}/alarms/#", qos=0)] == [0]
    publisher = clients(version=version_of(version))
    publisher.connect()
    for n in range(20):
        publisher.publish(f"{root}/hall{n % 2}/temp", f"t{n}", qos=n % 2)
    publisher.publish(f"{root}/alarms", b"a0", qos=1)
    publisher.publish(f"{root}/alarms/fire/floor.2", b"a1", qos=1)
    publisher.publish(f"{root}/hall/humidity", b"not matched", qos=1)
    got = subscriber.take(22)
    temps = [m for m in got if m.topic.endswith("/temp")]
    assert [m.payload.decode() for m in temps] == [f"t{n}" for n in range(20)]
    assert [m.qos for m in temps] == [n % 2 for n in range(20)]
    alarms = [m for m in got if "/alarms" in m.topic]
    assert [(m.topic, m.payload, m.qos) for m in alarms] == [
        (f"{root}/alarms", b"a0", 0),
        (f"{root}/alarms/fire/floor.2", b"a1", 0),
    ], "the subscription's QoS 0 caps the delivery, and a '.' in a level survives"
    subscriber.nothing_within(0.5)


@pytest.mark.parametrize("version", VERSIONS)
def test_qos_2_is_granted_as_qos_1_and_taken_from_3_1_1_publishers(clients, version):
    topic = unique_name("exact")
    subscriber = clients(version=version_of(version))
    subscriber.connect()
    codes = subscriber.subscribe(topic, qos=2)
    assert [getattr(c, "value", c) for c in codes] == [1], "QoS 2 subscriptions are granted QoS 1"
    if version == "5.0":
        assert subscriber.connack_properties.MaximumQoS == 1, "CONNACK: Maximum QoS 1"
        rude = clients(version=V5)
        rude.connect()
        rude.publish(topic, b"over the maximum", qos=2, wait=False)
        assert rude.disconnects.get(timeout=10).value == 155, "DISCONNECT: QoS not supported"
        subscriber.nothing_within(0.3)
        return
    publisher = clients(version=version_of(version))
    publisher.connect()
    for n in range(5):
        reason = publisher.publish(topic, f"m{n}", qos=2)
        assert not getattr(reason, "is_failure", False)
    got = subscriber.take(5)
    assert [m.payload for m in got] == [f"m{n}".encode() for n in range(5)]
    assert {m.qos for m in got} == {1}
    subscriber.nothing_within(0.5)


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_messages_go_to_new_subscribers_until_cleared(clients, version):
    root = unique_name("status")
    publisher = clients(version=version_of(version))
    publisher.connect()
    publisher.publish(f"{root}/a", b"first", qos=1, retain=True)
    publisher.publish(f"{root}/a", b"latest", qos=1, retain=True)
    publisher.publish(f"{root}/b", b"b-state", qos=0, retain=True)
    # A QoS 1 publish after it on the same connection: once acknowledged,
    # the QoS 0 one before it was handled too.
    publisher.publish(unique_name("barrier"), b"", qos=1)
    wait_s = 0.3
    subscriber = clients(version=version_of(version))
    subscriber.connect()
    subscriber.subscribe(f"{root}/#", qos=1)
    got = sorted(subscriber.take(2), key=lambda m: m.topic)
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        (f"{root}/a", b"latest", True),
        (f"{root}/b", b"b-state", True),
    ]
    assert [m.qos for m in got] == [1, 0]
    publisher.publish(f"{root}/a", b"live", qos=1)
    live = subscriber.take(1)[0]
    assert (live.payload, live.retain) == (b"live", False), "a live message is not flagged retained"
    publisher.publish(f"{root}/a", b"", qos=1, retain=True)
    subscriber.take(1)  # the empty message that clears it is routed too
    late = clients(version=version_of(version))
    late.connect()
    late.subscribe(f"{root}/+", qos=1)
    assert [(m.topic, m.payload) for m in late.take(1)] == [(f"{root}/b", b"b-state")]
    late.nothing_within(wait_s)


def test_mqtt_5_properties_travel_with_the_message(clients):
    topic = unique_name("props")
    subscriber = clients(version=V5)
    subscriber.connect()
    subscriber.subscribe(topic, qos=1)
    publisher = clients(version=V5)
    publisher.connect()
    properties = v5_properties(
        ContentType="application/json",
        ResponseTopic="replies/42",
        CorrelationData=b"\x00\x01corr",
        UserProperty=[("site", "north"), ("unit", "C")],
        PayloadFormatIndicator=1,
        MessageExpiryInterval=3600,
    )
    publisher.publish(topic, b'{"t": 21}', qos=1, properties=properties)
    message = subscriber.take(1)[0]
    got = message.properties
    assert got.ContentType == "application/json"
    assert got.ResponseTopic == "replies/42"
    assert got.CorrelationData == b"\x00\x01corr"
    assert ("site", "north") in got.UserProperty and ("unit", "C") in got.UserProperty
    assert got.PayloadFormatIndicator == 1
    assert 3590 <= got.MessageExpiryInterval <= 3600


def test_topic_aliases_and_subscription_identifiers(clients):
    topic = unique_name("alias")
    subscriber = clients(version=V5)
    subscriber.connect()
    subscriber.subscribe(f"{topic}/#", qos=1,
                         properties=v5_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    subscriber.subscribe(f"{topic}/x", qos=1,
                         properties=v5_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=9))
    publisher = clients(version=V5)
    publisher.connect()
    publisher.publish(f"{topic}/x", b"set", qos=1, properties=v5_properties(TopicAlias=3))
    publisher.publish("", b"by alias", qos=1, properties=v5_properties(TopicAlias=3))
    got = subscriber.take(2)
    assert [(m.topic, m.payload) for m in got] == [(f"{topic}/x", b"set"), (f"{topic}/x", b"by alias")]
    assert sorted(got[0].properties.SubscriptionIdentifier) == [7, 9]


def test_a_publish_no_one_receives_gets_reason_16(clients):
    publisher = clients(version=V5)
    publisher.connect()
    reason = publisher.publish(unique_name("nobody"), b"x", qos=1)
    assert reason.value == 16, f"PUBACK reason {reason}"


def test_shared_subscriptions_split_the_messages_between_members(clients):
    topic = unique_name("jobs")
    group = unique_name("workers", 10)
    members = [clients(version=V5) for _ in range(2)]
    for member in members:
        member.connect()
        member.subscribe(f"$share/{group}/{topic}/#", qos=1)
    plain = clients(version=V5)
    plain.connect()
    plain.subscribe(f"{topic}/#", qos=1)
    publisher = clients(version=V5)
    publisher.connect()
    for n in range(20):
        publisher.publish(f"{topic}/job", f"j{n}", qos=1)
    assert len(plain.take(20)) == 20, "a plain subscription still gets every message"
    wait_until(lambda: sum(m.received.qsize() for m in members) >= 20, 15, what="20 shared deliveries")
    counts = [member.received.qsize() for member in members]
    seen = [message.payload for member, count in zip(members, counts) for message in member.take(count)]
    assert sorted(seen) == sorted(f"j{n}".encode() for n in range(20)), counts
    assert all(count > 0 for count in counts), f"both members took some: {counts}"
    for member in members:
        member.nothing_within(0.2)


@pytest.mark.parametrize("version", VERSIONS)
def test_bad_passwords_and_unknown_virtual_hosts_are_refused(broker, version):
    refused = Client(broker, version=version_of(version), username="guest", password="wrong")
    _, reason = refused.connect(expect_success=False)
    assert reason.is_failure
    # paho reports MQTT 3's return code 4 as MQTT 5's 134.
    assert reason.value == 134, reason
    refused.client.loop_stop()
    unknown = Client(broker, version=version_of(version), username="nohost:guest", password="guest")
    _, reason = unknown.connect(expect_success=False)
    unknown.client.loop_stop()
    assert reason.is_failure, "'nohost' is no virtual host, so the whole name is the user: unknown"
    named = Client(broker, version=version_of(version), username="/:guest", password="guest")
    named.connect()
    named.disconnect()


def test_no_local_and_retain_handling(clients):
    topic = unique_name("echo")
    chatty = clients(version=V5)
    chatty.connect()
    chatty.subscribe(topic, qos=1, noLocal=True)
    listener = clients(version=V5)
    listener.connect()
    listener.subscribe(topic, qos=1)
    chatty.publish(topic, b"mine", qos=1)
    assert listener.take(1)[0].payload == b"mine"
    chatty.nothing_within(0.5)
    retained_topic = unique_name("kept")
    chatty.publish(retained_topic, b"state", qos=1, retain=True)
    fresh = clients(version=V5)
    fresh.connect()
    fresh.subscribe(retained_topic, qos=1, retainHandling=2)
    fresh.nothing_within(0.3)
    other = unique_name("kept-new")
    chatty.publish(other, b"other-state", qos=1, retain=True)
    fresh.subscribe(other, qos=1, retainHandling=1)
    assert fresh.take(1)[0].payload == b"other-state", "a new subscription gets it"
    fresh.subscribe(other, qos=1, retainHandling=1)
    fresh.nothing_within(0.3)
    fresh.subscribe(other, qos=1, retainHandling=0)
    assert fresh.take(1)[0].payload == b"other-state", "Retain Handling 0: every time"


def test_amqp_keys_that_are_no_mqtt_topic_do_not_reach_wildcard_subscribers(clients, broker):
    import pika

    root = unique_name("keys")
    subscriber = clients(version=V5)
    subscriber.connect()
    subscriber.subscribe("#", qos=1)
    host, port = broker.amqp_address.split(":")
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        host, int(port), credentials=pika.PlainCredentials("guest", "guest")))
    channel = connection.channel()
    for key in ["$SYS.uptime", f"{root}.#", f"{root}.+.x", f"{root}.fine"]:
        channel.basic_publish("amq.topic", key, key.encode())
    connection.close()
    # "#" also sees other tests' messages on this broker.
    seen = []
    wait_until(lambda: seen.extend(subscriber.received.get() for _ in range(subscriber.received.qsize()))
               or f"{root}/fine" in [m.topic for m in seen], 10, what="the valid topic")
    subscriber.nothing_within(0.3)
    mine = [m.topic for m in seen if m.topic.startswith((root, "$"))]
    assert mine == [f"{root}/fine"], mine


def test_a_shared_subscriptions_queue_goes_with_its_last_member(clients, broker):
    from common.broker import api_get

    group = unique_name("g", 8)
    member = clients(version=V5)
    member.connect()
    member.subscribe(f"$share/{group}/jobs/#", qos=1)

    def shared_queues():
        return [q["name"] for q in api_get(broker, "/api/queues?page_size=500")["items"]
                if q["name"].startswith(f"mqtt-shared-{group}/")]

    assert shared_queues() == [f"mqtt-shared-{group}/jobs/#"]
    member.disconnect()
    wait_until(lambda: not shared_queues(), 10, what="the shared queue to go")
