"""MQTT sessions with paho-mqtt and raw sockets: persistent sessions keep
their subscriptions and QoS 1 messages across disconnects, a broker
restart and kill -9; clean sessions start empty; wills go out on a cut
connection (after MQTT 5's delay) and not after DISCONNECT; keep alive
closes a silent client; a second connection with the same client id
takes the session over; retained messages survive a restart."""

from __future__ import annotations

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from support import (
    V5,
    VERSIONS,
    Client,
    closed_within,
    connect_311,
    open_raw,
    packet,
    unique_name,
    v5_properties,
    version_of,
)


def _persistent(broker, version, client_id):
    if version == "5.0":
        properties = v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=3600)
        return Client(broker, version=V5, client_id=client_id, clean=False, properties=properties)
    return Client(broker, version=version_of(version), client_id=client_id, clean=False)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_persistent_session_gets_what_was_published_while_away(broker, version):
    client_id = unique_name("device", 20)
    topic = unique_name("cmd")
    first = _persistent(broker, version, client_id)
    session_present, _ = first.connect()
    assert not session_present
    first.subscribe(f"{topic}/#", qos=1)
    first.disconnect()
    publisher = Client(broker)
    publisher.connect()
    for n in range(10):
        publisher.publish(f"{topic}/set", f"c{n}", qos=1)
    publisher.disconnect()
    back = _persistent(broker, version, client_id)
    session_present, _ = back.connect()
    assert session_present, "the session was kept"
    got = back.take(10)
    assert [m.payload.decode() for m in got] == [f"c{n}" for n in range(10)]
    back.nothing_within(0.3)
    back.disconnect()
    clean = Client(broker, version=version_of(version), client_id=client_id, clean=True)
    session_present, _ = clean.connect()
    assert not session_present, "a clean start discards the session"
    clean.disconnect()
    again = _persistent(broker, version, client_id)
    session_present, _ = again.connect()
    assert not session_present, "nothing was left of it"
    again.disconnect()


@pytest.mark.parametrize("stop", ["restart", "kill -9"])
def test_sessions_and_retained_messages_survive_the_broker_stopping(own_broker, stop):
    broker = own_broker({"log.durability": "always"} if stop == "kill -9" else None)
    client_id = unique_name("sensor", 20)
    topic = unique_name("fleet")
    subscriber = Client(broker, client_id=client_id, clean=False)
    subscriber.connect()
    subscriber.subscribe(f"{topic}/#", qos=1)
    subscriber.disconnect()
    publisher = Client(broker)
    publisher.connect()
    for n in range(5):
        publisher.publish(f"{topic}/unit", f"queued-{n}", qos=1)
    publisher.publish(f"{topic}/config", b"retained-config", qos=1, retain=True)
    publisher.disconnect()
    if stop == "restart":
        broker.stop()
    else:
        broker.kill()
    broker.start()
    back = Client(broker, client_id=client_id, clean=False)
    session_present, _ = back.connect()
    assert session_present
    got = back.take(6)
    assert sorted(m.payload.decode() for m in got) == sorted(
        [f"queued-{n}" for n in range(5)] + ["retained-config"]
    )
    assert [m.payload.decode() for m in got if m.topic.endswith("/unit")] == [f"queued-{n}" for n in range(5)]
    back.disconnect()
    fresh = Client(broker)
    fresh.connect()
    fresh.subscribe(f"{topic}/config", qos=1)
    retained = fresh.take(1)[0]
    assert (retained.payload, retained.retain) == (b"retained-config", True)
    fresh.disconnect()


def test_unacknowledged_deliveries_come_again_flagged_dup(broker):
    client_id = unique_name("slow", 20)
    topic = unique_name("redeliver")
    first = Client(broker, client_id=client_id, clean=False)
    first.connect()
    first.subscribe(topic, qos=1)
    # paho acknowledges on its own; a raw session that never does.
    first.disconnect()
    sock = open_raw(broker, connect_311(client_id, clean=False))
    publisher = Client(broker)
    publisher.connect()
    publisher.publish(topic, b"once", qos=1)
    publisher.disconnect()
    data = sock.recv(4096)
    assert data[0] & 0xF0 == 0x30 and b"once" in data and not data[0] & 0x08
    sock.close()
    back = Client(broker, client_id=client_id, clean=False)
    back.connect()
    message = back.take(1)[0]
    assert message.payload == b"once"
    assert message.dup, "a redelivery carries DUP"
    back.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_will_goes_out_when_the_connection_is_cut_not_after_disconnect(broker, version):
    topic = unique_name("lwt")
    watcher = Client(broker)
    watcher.connect()
    watcher.subscribe(f"{topic}/#", qos=1)
    polite = Client(broker, version=version_of(version), will=(f"{topic}/polite", b"gone", 1, False))
    polite.connect()
    polite.disconnect()
    cut = Client(broker, version=version_of(version), will=(f"{topic}/cut", b"lost", 1, True))
    cut.connect()
    cut.drop()
    got = watcher.take(1)
    assert [(m.topic, m.payload) for m in got] == [(f"{topic}/cut", b"lost")]
    watcher.nothing_within(0.5)
    late = Client(broker)
    late.connect()
    late.subscribe(f"{topic}/cut", qos=1)
    assert late.take(1)[0].retain, "a will with RETAIN is retained"
    late.disconnect()
    watcher.disconnect()


def test_a_delayed_will_waits_and_is_dropped_if_the_client_returns(broker):
    topic = unique_name("delayed")
    watcher = Client(broker)
    watcher.connect()
    watcher.subscribe(f"{topic}/#", qos=1)
    session = v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=60)
    delay = v5_properties(PacketTypes.WILLMESSAGE, WillDelayInterval=2)
    returning_id = unique_name("returns", 20)
    returning = Client(broker, version=V5, client_id=returning_id, properties=session,
                       will=(f"{topic}/returning", b"x", 1, False), will_properties=delay)
    returning.connect()
    leaving = Client(broker, version=V5, properties=session, will=(f"{topic}/leaving", b"bye", 1, False),
                     will_properties=delay)
    leaving.connect()
    started = time.monotonic()
    returning.drop()
    leaving.drop()
    back = Client(broker, version=V5, client_id=returning_id, clean=False, properties=session)
    back.connect()
    got = watcher.take(1, timeout=10)
    assert time.monotonic() - started >= 1.5, "the will waited for its delay"
    assert [(m.topic, m.payload) for m in got] == [(f"{topic}/leaving", b"bye")]
    watcher.nothing_within(1.0)
    back.disconnect()
    watcher.disconnect()


def test_keep_alive_closes_a_silent_client_and_sends_its_will(broker):
    topic = unique_name("silent")
    watcher = Client(broker)
    watcher.connect()
    watcher.subscribe(topic, qos=1)
    sock = open_raw(broker, connect_311(unique_name("quiet", 20), keepalive=1, will=(topic, b"timed out", 1)))
    started = time.monotonic()
    assert closed_within(sock, 5), "the broker closed the connection"
    assert 1.0 <= time.monotonic() - started <= 4.0, "after about 1.5 times the keep alive"
    assert watcher.take(1)[0].payload == b"timed out"
    sock.close()
    pinging = open_raw(broker, connect_311(unique_name("pinging", 20), keepalive=1))
    for _ in range(4):
        pinging.sendall(packet(0xC0, b""))
        assert pinging.recv(2) == b"\xd0\x00", "PINGRESP"
        time.sleep(0.5)
    assert not closed_within(pinging, 0.2), "a pinging client stays"
    pinging.close()
    watcher.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_second_connection_with_the_client_id_takes_the_session_over(broker, version):
    client_id = unique_name("twin", 20)
    topic = unique_name("takeover")
    first = _persistent(broker, version, client_id)
    first.connect()
    first.subscribe(topic, qos=1)
    second = _persistent(broker, version, client_id)
    session_present, _ = second.connect()
    assert session_present
    reason = first.disconnects.get(timeout=10)
    if version == "5.0":
        assert reason.value == 142, f"DISCONNECT reason {reason}"
    publisher = Client(broker)
    publisher.connect()
    publisher.publish(topic, b"to the new one", qos=1)
    assert second.take(1)[0].payload == b"to the new one"
    first.nothing_within(0.3)
    second.disconnect()
    publisher.disconnect()


def test_messages_expire_while_the_session_is_away(broker):
    client_id = unique_name("expiry", 20)
    topic = unique_name("expiring")
    session = v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=600)
    first = Client(broker, version=V5, client_id=client_id, clean=True, properties=session)
    first.connect()
    first.subscribe(topic, qos=1)
    first.disconnect()
    publisher = Client(broker, version=V5)
    publisher.connect()
    publisher.publish(topic, b"short", qos=1, properties=v5_properties(MessageExpiryInterval=1))
    publisher.publish(topic, b"long", qos=1, properties=v5_properties(MessageExpiryInterval=600))
    publisher.disconnect()
    time.sleep(1.5)
    back = Client(broker, version=V5, client_id=client_id, clean=False, properties=session)
    session_present, _ = back.connect()
    assert session_present
    assert [m.payload for m in back.take(1)] == [b"long"]
    back.nothing_within(0.3)
    back.disconnect()


def test_a_session_with_no_expiry_ends_with_its_connection(broker):
    client_id = unique_name("ephemeral", 20)
    first = Client(broker, version=V5, client_id=client_id, clean=False)
    first.connect()
    first.subscribe(unique_name("gone"), qos=1)
    first.disconnect()
    back = Client(broker, version=V5, client_id=client_id, clean=False)
    session_present, _ = back.connect()
    assert not session_present, "Session Expiry Interval 0: nothing outlives the connection"
    back.disconnect()


def test_disconnect_with_will_message_sends_the_will_and_closes(broker):
    from paho.mqtt.reasoncodes import ReasonCode

    topic = unique_name("lwt04")
    watcher = Client(broker)
    watcher.connect()
    watcher.subscribe(topic, qos=1)
    leaving = Client(broker, version=V5, will=(topic, b"asked for", 1, False))
    leaving.connect()
    leaving.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    assert watcher.take(1)[0].payload == b"asked for"
    leaving.client.loop_stop()
    watcher.disconnect()


def test_a_delayed_will_goes_at_once_when_the_client_returns_with_a_clean_start(broker):
    topic = unique_name("clean-return")
    watcher = Client(broker)
    watcher.connect()
    watcher.subscribe(topic, qos=1)
    session = v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=60)
    delay = v5_properties(PacketTypes.WILLMESSAGE, WillDelayInterval=30)
    client_id = unique_name("phoenix", 20)
    first = Client(broker, version=V5, client_id=client_id, properties=session,
                   will=(topic, b"session over", 1, False), will_properties=delay)
    first.connect()
    first.drop()
    watcher.nothing_within(0.5)
    again = Client(broker, version=V5, client_id=client_id, clean=True)
    again.connect()
    assert watcher.take(1, timeout=5)[0].payload == b"session over", "the old session ended"
    again.disconnect()
    watcher.disconnect()
