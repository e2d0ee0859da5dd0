"""Bad input and connection-level rules, from a raw socket where a real
client would refuse to misbehave: protocol header negotiation, garbage,
frames above the negotiated frame_max (501), methods on channels never
opened (504), content without a method (505), bad logins (403) and
vhosts (530), and heartbeats in both directions — with RabbitMQ's reply
codes.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time

import amqp
import amqp.exceptions
import pika
import pika.exceptions
import pika.frame
import pika.spec
import pytest

from support import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    FRAME_ERROR,
    NOT_ALLOWED,
    PROTOCOL_HEADER,
    RawAmqp,
    close_quietly,
    connect,
)

UNEXPECTED_FRAME = 505
# How long the broker may take to close a socket it should close.
CLOSE_DEADLINE_S = 10.0


@pytest.mark.parametrize(
    "header",
    [b"GET / HTTP/1.1\r\n\r\n", b"AMQP\x00\x00\x0a\x00", b"AMQP\x01\x01\x00\x0a"],
    ids=["http", "amqp-0-10", "amqp-0-10-legacy"],
)
def test_wrong_protocol_header_gets_ours_back_then_close(broker, header):
    with RawAmqp(broker) as raw:
        raw.send(header)
        assert raw.wait_eof(CLOSE_DEADLINE_S) == PROTOCOL_HEADER


def test_garbage_after_the_header_closes_the_connection(broker):
    with RawAmqp(broker) as raw:
        raw.send(PROTOCOL_HEADER)
        start = raw.read_method().method
        assert isinstance(start, pika.spec.Connection.Start)
        assert (start.version_major, start.version_minor) == (0, 9)
        mechanisms = start.mechanisms if isinstance(start.mechanisms, bytes) else start.mechanisms.encode()
        assert b"PLAIN" in mechanisms.split()
        raw.send(bytes(range(256)) * 4)
        raw.wait_eof(CLOSE_DEADLINE_S)


def test_bad_frame_end_after_open_is_a_frame_error_501(broker):
    with RawAmqp(broker) as raw:
        _, opened = raw.handshake()
        assert isinstance(opened, pika.spec.Connection.OpenOk)
        frame = bytearray(pika.frame.Method(1, pika.spec.Channel.Open()).marshal())
        frame[-1] = 0x00  # must be 0xCE
        raw.send(bytes(frame))
        close = raw.expect_connection_close()
        assert close.reply_code == FRAME_ERROR, close
        raw.wait_eof(CLOSE_DEADLINE_S)


def test_frame_above_negotiated_frame_max_is_a_frame_error_501(broker):
    with RawAmqp(broker) as raw:
        tune, opened = raw.handshake(frame_max=4096)
        assert isinstance(opened, pika.spec.Connection.OpenOk)
        raw.open_channel(1)
        body = os.urandom(10_000)
        raw.send(pika.frame.Method(1, pika.spec.Basic.Publish(exchange="", routing_key="x")).marshal())
        raw.send(pika.frame.Header(1, len(body), pika.spec.BasicProperties()).marshal())
        raw.send(pika.frame.Body(1, body).marshal())  # one 10,008-byte frame, frame_max 4096
        close = raw.expect_connection_close()
        assert close.reply_code == FRAME_ERROR, close
        raw.wait_eof(CLOSE_DEADLINE_S)


def test_method_on_a_channel_never_opened_is_a_channel_error_504(broker):
    with RawAmqp(broker) as raw:
        _, opened = raw.handshake()
        assert isinstance(opened, pika.spec.Connection.OpenOk)
        raw.send_method(3, pika.spec.Queue.Declare(queue="", exclusive=True))
        close = raw.expect_connection_close()
        assert close.reply_code == CHANNEL_ERROR, close
        raw.wait_eof(CLOSE_DEADLINE_S)


def test_second_channel_open_is_a_channel_error_504(broker):
    with RawAmqp(broker) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(1, pika.spec.Channel.Open())
        close = raw.expect_connection_close()
        assert close.reply_code == CHANNEL_ERROR, close


def test_content_header_without_a_method_is_unexpected_505(broker):
    with RawAmqp(broker) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send(pika.frame.Header(1, 3, pika.spec.BasicProperties()).marshal())
        close = raw.expect_connection_close()
        assert close.reply_code == UNEXPECTED_FRAME, close


def test_wrong_password_is_refused_403_raw(broker):
    with RawAmqp(broker) as raw:
        reply, _ = raw.handshake(password="wrong")
        assert isinstance(reply, pika.spec.Connection.Close), reply
        assert reply.reply_code == ACCESS_REFUSED
        raw.send_method(0, pika.spec.Connection.CloseOk())
        raw.wait_eof(CLOSE_DEADLINE_S)


@pytest.mark.parametrize("user,password", [("guest", "wrong"), ("nobody", "guest")])
def test_bad_login_is_refused_by_pika(broker, user, password):
    with pytest.raises((pika.exceptions.ProbableAuthenticationError,
                        pika.exceptions.AuthenticationError,
                        pika.exceptions.ConnectionClosedByBroker)) as raised:
        connect(broker, credentials=pika.PlainCredentials(user, password))
    error = raised.value
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        assert error.reply_code == ACCESS_REFUSED, error
    else:
        assert "403" in str(error) or "ACCESS_REFUSED" in str(error), error


def test_unknown_vhost_is_refused_530(broker):
    with RawAmqp(broker) as raw:
        _, opened = raw.handshake(vhost="/no-such-vhost")
        assert isinstance(opened, pika.spec.Connection.Close), opened
        assert opened.reply_code == NOT_ALLOWED, opened


def test_idle_pika_connection_with_heartbeat_1_stays_open(broker):
    connection = connect(broker, heartbeat=1)
    try:
        ch = connection.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        connection.sleep(4.0)  # idle: only heartbeats cross the wire
        assert connection.is_open
        ch.basic_publish("", queue, b"still here")
        assert ch.basic_get(queue, auto_ack=True)[2] == b"still here"
    finally:
        close_quietly(connection)


def test_broker_sends_heartbeats_at_the_negotiated_interval(broker):
    with RawAmqp(broker) as raw:
        tune, opened = raw.handshake(heartbeat=1)
        assert isinstance(opened, pika.spec.Connection.OpenOk)
        heartbeats = 0
        deadline = time.monotonic() + 3.5
        next_send = time.monotonic()
        while time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                raw.send(pika.frame.Heartbeat().marshal())
                next_send += 0.5
            try:
                frame = raw.read_frame(timeout=0.25)
            except (TimeoutError, OSError):
                continue
            assert isinstance(frame, pika.frame.Heartbeat), frame
            heartbeats += 1
        assert heartbeats >= 2, f"{heartbeats} heartbeats from the broker in 3.5 s at interval 1 s"


def test_silent_client_is_disconnected_after_missed_heartbeats(broker):
    with RawAmqp(broker) as raw:
        _, opened = raw.handshake(heartbeat=1)
        assert isinstance(opened, pika.spec.Connection.OpenOk)
        started = time.monotonic()
        # We send nothing; the broker's own heartbeats arrive and are dropped.
        raw.wait_eof(CLOSE_DEADLINE_S)
        assert time.monotonic() - started >= 1.0, "closed before a single heartbeat interval passed"


def test_client_close_handshake(broker):
    with RawAmqp(broker) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(0, pika.spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        reply = raw.read_method()
        assert isinstance(reply.method, pika.spec.Connection.CloseOk), reply


def test_unknown_method_closes_the_connection(broker):
    """RabbitMQ drops the connection (its reader crashes on the unknown
    method id) without a reply code; a connection.close first, if any, must
    carry a connection error code (501 frame, 503 command, 540 not
    implemented)."""
    with RawAmqp(broker) as raw:
        raw.handshake()
        raw.open_channel(1)
        # queue class (50), method 999: no such method.
        payload = struct.pack(">HH", 50, 999)
        raw.send(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
        deadline = time.monotonic() + CLOSE_DEADLINE_S
        while True:
            try:
                frame = raw.read_frame(timeout=max(0.01, deadline - time.monotonic()))
            except ConnectionError:
                break  # closed
            if isinstance(frame, pika.frame.Method) and isinstance(frame.method, pika.spec.Connection.Close):
                assert frame.method.reply_code in (FRAME_ERROR, 503, 540), frame.method
                raw.send_method(0, pika.spec.Connection.CloseOk())
                raw.wait_eof(CLOSE_DEADLINE_S)
                break


def test_truncated_method_arguments_close_the_connection(broker):
    with RawAmqp(broker) as raw:
        raw.handshake()
        raw.open_channel(1)
        full = pika.frame.Method(1, pika.spec.Queue.Declare(queue="q" * 20)).marshal()
        payload = full[7:-1][:10]  # class, method and a cut-off queue name
        raw.send(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
        close = raw.expect_connection_close()
        assert close.reply_code in (FRAME_ERROR, 502), close


@pytest.mark.parametrize("frame_max", [1 << 20, 1024], ids=["above-server-max", "below-4096"])
def test_tune_ok_frame_max_outside_limits_is_refused(broker, frame_max):
    """RabbitMQ drops the connection ("failed to negotiate connection
    parameters") without opening it; a connection.close first, if any,
    must say 530."""
    with RawAmqp(broker) as raw:
        raw.send(PROTOCOL_HEADER)
        raw.read_method()
        raw.send_method(0, pika.spec.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"))
        tune = raw.read_method().method
        assert tune.frame_max == 131072, tune
        raw.send_method(0, pika.spec.Connection.TuneOk(channel_max=0, frame_max=frame_max, heartbeat=0))
        raw.send_method(0, pika.spec.Connection.Open(virtual_host="/"))
        deadline = time.monotonic() + CLOSE_DEADLINE_S
        while True:
            try:
                frame = raw.read_frame(timeout=max(0.01, deadline - time.monotonic()))
            except ConnectionError:
                break  # dropped, as RabbitMQ does
            assert isinstance(frame, pika.frame.Method), frame
            assert not isinstance(frame.method, pika.spec.Connection.OpenOk), "opened with a bad frame_max"
            if isinstance(frame.method, pika.spec.Connection.Close):
                assert frame.method.reply_code == NOT_ALLOWED, frame.method
                raw.send_method(0, pika.spec.Connection.CloseOk())
                raw.wait_eof(CLOSE_DEADLINE_S)
                break


def test_opening_more_channels_than_channel_max_is_refused_530(broker):
    with RawAmqp(broker) as raw:
        raw.send(PROTOCOL_HEADER)
        raw.read_method()
        raw.send_method(0, pika.spec.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"))
        raw.read_method()
        raw.send_method(0, pika.spec.Connection.TuneOk(channel_max=2, frame_max=131072, heartbeat=0))
        raw.send_method(0, pika.spec.Connection.Open(virtual_host="/"))
        assert isinstance(raw.read_method().method, pika.spec.Connection.OpenOk)
        raw.open_channel(1)
        raw.open_channel(2)
        raw.send_method(3, pika.spec.Channel.Open())
        close = raw.expect_connection_close()
        assert close.reply_code == NOT_ALLOWED, close


def test_publish_with_immediate_closes_the_connection_540(broker):
    """RabbitMQ 3.0 dropped `immediate`: a publish with it set closes the
    connection (not the channel) with 540 "NOT_IMPLEMENTED - immediate=true",
    naming basic.publish (60, 40). pika cannot set the flag; py-amqp can."""
    connection = amqp.Connection(
        broker.amqp_address, userid="guest", password="guest", connect_timeout=5
    )
    connection.connect()
    try:
        channel = connection.channel()
        channel.basic_publish(amqp.Message(b"now or never"), exchange="", routing_key="nobody", immediate=True)
        with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as raised:
            # Bounded: each drain waits at most a second; the close comes on
            # the first that reads anything.
            for _ in range(int(CLOSE_DEADLINE_S)):
                try:
                    connection.drain_events(timeout=1)
                except TimeoutError:
                    continue
        error = raised.value
        assert error.reply_code == 540, error
        assert error.reply_text == "NOT_IMPLEMENTED - immediate=true", error
        assert (error.method_sig or (0, 0)) == (60, 40), error
        # A connection error, not a channel error: py-amqp saw connection.close.
        assert not connection.connected
    finally:
        with contextlib.suppress(Exception):
            connection.collect()
