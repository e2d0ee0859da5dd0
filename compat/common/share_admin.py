"""The admin side of share groups, DescribeShareGroupOffsets,
AlterShareGroupOffsets and DeleteShareGroupOffsets, on a raw socket: no
client available here speaks them (confluent-kafka 2.16.1 has no share
group offset admin calls; Kafka's kafka-share-groups.sh is Java). Each is
sent in v0, as Kafka's schemas (90.json, 91.json, 92.json) define it:
flexible versions, request header v2. `bootstrap` is a node's
"127.0.0.1:port" (the group's coordinator)."""

from __future__ import annotations

import socket
import struct
import time

from common.wire import Reader, compact_string, recv_frame, request_frame, uvarint

CLIENT_TIMEOUT_S = 30.0
# How long a call is repeated while the group is not empty yet.
EMPTY_TIMEOUT_S = 20.0

DESCRIBE_SHARE_GROUP_OFFSETS, ALTER_SHARE_GROUP_OFFSETS, DELETE_SHARE_GROUP_OFFSETS = 90, 91, 92
NONE, UNKNOWN_TOPIC_OR_PARTITION, GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP = 0, 3, 69, 68


def compact_array(items) -> bytes:
    return uvarint(len(items) + 1) + b"".join(items)


def raw_call(bootstrap: str, api_key: int, body: bytes) -> Reader:
    """Sends one v0 request and returns a reader past the response header."""
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request_frame(api_key, 0, 7, body, flexible=True))
        reader = Reader(recv_frame(sock))
    assert reader.int32() == 7, "correlation id"
    reader.tagged_fields()
    return reader


def compact_nullable_string(reader: Reader) -> str | None:
    size = reader.uvarint()
    return None if size == 0 else reader.take(size - 1).decode()


def describe_share_offsets(bootstrap: str, group: str) -> tuple[int, dict[str, dict[int, tuple[int, int]]]]:
    """(group error, {topic: {partition: (start offset, error)}}) for every
    partition with a state (topics null)."""
    body = compact_array([compact_string(group) + uvarint(0) + uvarint(0)]) + uvarint(0)
    reader = raw_call(bootstrap, DESCRIBE_SHARE_GROUP_OFFSETS, body)
    reader.int32()  # throttle
    assert reader.uvarint() == 2, "one group"
    assert compact_nullable_string(reader) == group
    topics = {}
    for _ in range(reader.uvarint() - 1):
        name = compact_nullable_string(reader)
        reader.take(16)  # topic id
        partitions = {}
        for _ in range(reader.uvarint() - 1):
            index, start, _epoch, error = reader.int32(), reader.int64(), reader.int32(), reader.int16()
            compact_nullable_string(reader)
            reader.tagged_fields()
            partitions[index] = (start, error)
        reader.tagged_fields()
        topics[name] = partitions
    error = reader.int16()
    compact_nullable_string(reader)
    return error, topics


def alter_share_offsets(bootstrap: str, group: str, topic: str, starts: dict[int, int]) -> tuple[int, dict[int, int]]:
    """(top-level error, {partition: error})."""
    partitions = [struct.pack(">iq", p, start) + uvarint(0) for p, start in starts.items()]
    body = compact_string(group) + compact_array([compact_string(topic) + compact_array(partitions) + uvarint(0)]) + uvarint(0)
    reader = raw_call(bootstrap, ALTER_SHARE_GROUP_OFFSETS, body)
    reader.int32()
    error = reader.int16()
    compact_nullable_string(reader)
    errors = {}
    for _ in range(reader.uvarint() - 1):
        compact_nullable_string(reader)
        reader.take(16)
        for _ in range(reader.uvarint() - 1):
            index, code = reader.int32(), reader.int16()
            compact_nullable_string(reader)
            reader.tagged_fields()
            errors[index] = code
        reader.tagged_fields()
    return error, errors


def delete_share_offsets(bootstrap: str, group: str, topic: str) -> tuple[int, int | None]:
    """(top-level error, the topic's error; None when the group's error
    left no topics in the answer)."""
    body = compact_string(group) + compact_array([compact_string(topic) + uvarint(0)]) + uvarint(0)
    reader = raw_call(bootstrap, DELETE_SHARE_GROUP_OFFSETS, body)
    reader.int32()
    error = reader.int16()
    compact_nullable_string(reader)
    topics = reader.uvarint() - 1
    if topics <= 0:
        return error, None
    assert topics == 1, f"{topics} topics answered for one"
    assert compact_nullable_string(reader) == topic
    reader.take(16)
    return error, reader.int16()


def until_empty(call):
    """Repeats an admin call while the group is not empty yet (a closed
    member's leave reaches the coordinator with its next heartbeat)."""
    deadline = time.monotonic() + EMPTY_TIMEOUT_S
    while True:
        result = call()
        if result[0] != NON_EMPTY_GROUP or time.monotonic() >= deadline:
            return result
        time.sleep(0.2)
