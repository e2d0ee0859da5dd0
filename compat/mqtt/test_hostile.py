"""Malformed and hostile MQTT input on raw sockets: each gets the
protocol's answer (a refusal code, DISCONNECT with a reason for MQTT 5)
and a closed connection, with the reason in the broker log; the broker
keeps serving everyone else."""

from __future__ import annotations

import socket
import struct

import pytest

from support import V5, WAIT_S, Client, closed_within, connect_311, open_raw, packet, unique_name


def _string(text: bytes) -> bytes:
    return struct.pack(">H", len(text)) + text


def _still_serving(broker):
    client = Client(broker, version=V5)
    client.connect()
    topic = unique_name("alive")
    client.subscribe(topic, qos=1)
    client.publish(topic, b"ok", qos=1)
    assert client.take(1)[0].payload == b"ok"
    client.disconnect()


@pytest.mark.parametrize("data", [
    pytest.param(b"\x00\x00\x00\x00garbage", id="not-a-packet"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(packet(0x30, _string(b"a/b") + b"payload"), id="publish-before-connect"),
    pytest.param(packet(0x10, _string(b"MQTT") + bytes([9, 2, 0, 30]) + _string(b"c")), id="unknown-level"),
    pytest.param(b"\x10\xff\xff\xff\xff\x7f", id="bad-length"),
    pytest.param(b"\x10\xff\xff\xff\x7f", id="oversize-connect"),
])
def test_a_bad_first_packet_closes_the_connection(broker, data):
    sock = socket.create_connection(broker.mqtt_address, timeout=WAIT_S)
    sock.sendall(data)
    assert closed_within(sock, 5)
    sock.close()
    _still_serving(broker)


@pytest.mark.parametrize("data", [
    pytest.param(packet(0x30, _string(b"a/+") + b"x"), id="wildcard-topic"),
    pytest.param(packet(0x30, _string(b"") + b"x"), id="empty-topic"),
    pytest.param(connect_311("again"), id="second-connect"),
    pytest.param(packet(0x20, b"\x00\x00"), id="connack-from-client"),
    pytest.param(packet(0x50, b"\x00\x01"), id="pubrec-for-nothing"),
    pytest.param(packet(0x82, b"\x00"), id="truncated-subscribe"),
    pytest.param(b"\x30\xff\xff\xff\x7f", id="oversize-publish"),
])
def test_a_bad_packet_after_connect_closes_the_connection(broker, data):
    sock = open_raw(broker, connect_311(unique_name("rude", 20)))
    sock.sendall(data)
    assert closed_within(sock, 5)
    sock.close()
    _still_serving(broker)


def test_invalid_filters_are_refused_in_suback_and_the_rest_granted(broker):
    sock = open_raw(broker, connect_311(unique_name("filters", 20)))
    filters = [(b"ok/+", 1), (b"bad/#/x", 1), (b"also+bad", 0), (b"$share//x", 1), (b"fine/#", 2)]
    body = b"\x00\x07" + b"".join(_string(f) + bytes([q]) for f, q in filters)
    sock.sendall(packet(0x82, body))
    suback = sock.recv(64)
    assert suback == packet(0x90, b"\x00\x07" + bytes([1, 0x80, 0x80, 0x80, 1])), suback
    sock.close()


def test_a_wrong_login_gets_connack_4_and_is_logged(broker):
    sock = socket.create_connection(broker.mqtt_address, timeout=WAIT_S)
    sock.sendall(connect_311(unique_name("intruder", 20), password="nope"))
    assert sock.recv(4) == b"\x20\x02\x00\x04", "CONNACK: bad user name or password"
    assert closed_within(sock, 5)
    sock.close()
    assert "login refused for user 'guest'" in broker.log_text()


def test_an_unsupported_protocol_level_gets_connack_1(broker):
    sock = socket.create_connection(broker.mqtt_address, timeout=WAIT_S)
    sock.sendall(packet(0x10, _string(b"MQTT") + bytes([6, 2, 0, 30]) + _string(b"future")))
    assert sock.recv(4) == b"\x20\x02\x00\x01"
    assert closed_within(sock, 5)
    sock.close()
