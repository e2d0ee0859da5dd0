"""MQTT and STOMP over TLS (mqtt.tls_listen, stomp.tls_listen, with the
broker's [tls] certificate): paho-mqtt and stomp.py connect trusting the
suite's CA and move messages; the TLS ports speak only TLS."""

from __future__ import annotations

import socket
import ssl
import time

import paho.mqtt.client as mqtt
import stomp

from common.broker import free_port, unique_name


def test_mqtts_and_stomp_over_tls_carry_messages(own_broker, pki):
    mqtts, stomps = free_port(), free_port()
    broker = own_broker({"mqtt.tls_listen": f"127.0.0.1:{mqtts}", "stomp.tls_listen": f"127.0.0.1:{stomps}"},
                        listeners=(), amqps=False)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", stomps), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the TLS listeners never accepted"
            time.sleep(0.1)
    topic = unique_name("secure")
    received = []
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=unique_name("tls", 10))
    client.tls_set(ca_certs=str(pki.ca_file))
    client.username_pw_set("guest", "guest")
    client.on_message = lambda _c, _u, message: received.append(message.payload)
    client.connect("localhost", mqtts)
    client.loop_start()
    try:
        subscribed = []
        client.on_subscribe = lambda *_: subscribed.append(True)
        client.subscribe(f"{topic}/#", qos=1)
        deadline = time.monotonic() + 10
        while not subscribed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert subscribed, "no SUBACK over TLS"
        conn = stomp.Connection12([("localhost", stomps)])
        conn.set_ssl(for_hosts=[("localhost", stomps)], ca_certs=str(pki.ca_file))
        conn.connect("guest", "guest", wait=True)
        conn.send(f"/topic/{topic}.from-stomp", "over TLS")
        deadline = time.monotonic() + 15
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == [b"over TLS"], "STOMP over TLS reached MQTT over TLS"
        conn.disconnect()
    finally:
        client.loop_stop()
        client.disconnect()
    # Plaintext on a TLS port: no CONNACK, no CONNECTED.
    for port, hello in [(mqtts, b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"),
                        (stomps, b"CONNECT\naccept-version:1.2\n\n\x00")]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(hello)
        try:
            answer = sock.recv(64)
        except (ConnectionResetError, TimeoutError, ssl.SSLError):
            answer = b""
        assert not answer.startswith((b"\x20", b"CONNECTED")), answer
        sock.close()
