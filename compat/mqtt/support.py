"""Helpers of the MQTT suite: a paho-mqtt client that records what it
receives and waits with deadlines, and raw packets for the tests that
speak the wire themselves (wills on a cut connection, keep alive,
malformed input)."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.broker import Broker, unique_name, wait_until  # noqa: F401  (re-exported)

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
VERSIONS = [pytest_id for pytest_id in ("3.1.1", "5.0")]
WAIT_S = 15.0


def version_of(name: str) -> int:
    return V5 if name == "5.0" else V311


class Client:
    """A paho client on its own network thread. `received` holds every
    message; `connect` returns the CONNACK's (session_present, reason)."""

    def __init__(self, broker: Broker, version: int = V311, client_id: str | None = None,
                 clean: bool = True, username: str | None = "guest", password: str | None = "guest",
                 will: tuple[str, bytes, int, bool] | None = None, keepalive: int = 30,
                 properties: Properties | None = None, will_properties: Properties | None = None,
                 address: tuple[str, int] | None = None):
        self.broker = broker
        self.version = version
        self.client_id = client_id if client_id is not None else unique_name("mqtt", 20)
        self.clean = clean
        self.keepalive = keepalive
        self.connect_properties = properties
        self.address = address or broker.mqtt_address
        kwargs = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "client_id": self.client_id,
                  "protocol": version}
        if version != V5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(**kwargs)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain, properties=will_properties)
        self.received: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.connack_properties = None
        self.published: dict[int, object] = {}
        self._published = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, message: self.received.put(message)
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.put((mid, codes))
        self.client.on_publish = self._on_publish
        self.client.reconnect_delay_set(60, 60)

    def _on_connect(self, _client, _userdata, flags, reason, properties):
        self.connack_properties = properties
        self.connacks.put((flags.session_present, reason))

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties):
        self.disconnects.put(reason)

    def _on_publish(self, _client, _userdata, mid, reason, _properties):
        with self._published:
            self.published[mid] = reason
            self._published.notify_all()

    def connect(self, expect_success: bool = True):
        kwargs = {"keepalive": self.keepalive}
        if self.version == V5:
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = self.connect_properties
        self.client.connect(*self.address, **kwargs)
        self.client.loop_start()
        try:
            session_present, reason = self.connacks.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError("no CONNACK") from None
        if expect_success:
            assert not reason.is_failure, f"CONNACK refused: {reason}"
        return session_present, reason

    def subscribe(self, topic: str, qos: int = 1, properties: Properties | None = None, **options):
        if self.version == V5:
            sub_options = mqtt.SubscribeOptions(qos=qos, **options)
            _, mid = self.client.subscribe(topic, options=sub_options, properties=properties)
        else:
            _, mid = self.client.subscribe(topic, qos)
        got_mid, codes = self.subacks.get(timeout=WAIT_S)
        assert got_mid == mid
        return codes

    def unsubscribe(self, topic: str):
        self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                properties: Properties | None = None, wait: bool = True):
        """Publishes; with QoS 1 or 2 and `wait`, returns the PUBACK's (or
        PUBCOMP's) reason once the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        if qos == 0 or not wait:
            return info
        deadline = time.monotonic() + WAIT_S
        with self._published:
            while info.mid not in self.published:
                left = deadline - time.monotonic()
                assert left > 0, f"publish {info.mid} to {topic} was never acknowledged"
                self._published.wait(left)
            return self.published[info.mid]

    def take(self, count: int, timeout: float = WAIT_S) -> list:
        """The next `count` messages, failing after `timeout`."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            left = deadline - time.monotonic()
            try:
                out.append(self.received.get(timeout=max(left, 0.01)))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {count} messages within {timeout} s: "
                                     f"{[(m.topic, m.payload) for m in out]}") from None
        return out

    def nothing_within(self, seconds: float) -> None:
        try:
            message = self.received.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {message.topic} {message.payload!r}")

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Ends the connection without DISCONNECT (the socket is shut)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def v5_properties(packet_type=PacketTypes.PUBLISH, **values) -> Properties:
    properties = Properties(packet_type)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


# --- raw packets -----------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def connect_311(client_id: str, keepalive: int = 30, will: tuple[str, bytes, int] | None = None,
                clean: bool = True, user: str = "guest", password: str = "guest") -> bytes:
    flags = 0xC0 | (0x02 if clean else 0)
    payload = _string(client_id)
    if will is not None:
        topic, message, qos = will
        flags |= 0x04 | (qos << 3)
        payload += _string(topic) + _string(message)
    payload += _string(user) + _string(password)
    return packet(0x10, _string("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + payload)


def open_raw(broker: Broker, connect: bytes) -> socket.socket:
    """A socket that sent `connect` and read a successful CONNACK."""
    sock = socket.create_connection(broker.mqtt_address, timeout=WAIT_S)
    sock.sendall(connect)
    connack = recv_exactly(sock, 4)
    assert connack[0] == 0x20 and connack[3] == 0, f"CONNACK {connack!r}"
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    return data


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the broker closes `sock` within `seconds` (reading and
    discarding anything it sends first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False
