"""ApiVersions and request ordering, checked byte by byte on a raw socket.

Contract: ApiVersions lists the APIs of this increment, each with a sane
range; the v3 (flexible) response writes
no tagged fields that hold their default (librdkafka 2.0.2 fails on them);
an ApiVersions version the broker does not know is answered in v0 with
UNSUPPORTED_VERSION and the list (KIP-511); pipelined requests on one
connection are answered in request order.
"""

from __future__ import annotations

import socket
import struct

from support import Reader, compact_string, recv_frame, request_frame, uvarint

API_VERSIONS = 18
UNSUPPORTED_VERSION = 35

# The APIs this increment implements (issue 3's first step).
IMPLEMENTED = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    8: "OffsetCommit",
    9: "OffsetFetch",
    10: "FindCoordinator",
    18: "ApiVersions",
    19: "CreateTopics",
    20: "DeleteTopics",
    32: "DescribeConfigs",
    37: "CreatePartitions",
}


def connect(broker) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def api_versions_v0(correlation_id: int) -> bytes:
    return request_frame(API_VERSIONS, 0, correlation_id, b"")


def parse_api_versions_v0(body: bytes):
    reader = Reader(body)
    correlation_id = reader.int32()
    error_code = reader.int16()
    apis = {}
    for _ in range(reader.int32()):
        key, low, high = reader.int16(), reader.int16(), reader.int16()
        apis[key] = (low, high)
    return correlation_id, error_code, apis, reader


def test_api_versions_lists_the_implemented_apis(broker):
    with connect(broker) as sock:
        sock.sendall(api_versions_v0(7))
        correlation_id, error_code, apis, reader = parse_api_versions_v0(recv_frame(sock))
    assert reader.remaining() == 0, "v0 response has trailing bytes"
    assert (correlation_id, error_code) == (7, 0)
    missing = {name for key, name in IMPLEMENTED.items() if key not in apis}
    assert not missing, f"not advertised: {missing}"
    for key, (low, high) in apis.items():
        assert 0 <= low <= high, f"api {key}: bad range {low}..{high}"
    assert apis[API_VERSIONS][0] == 0 and apis[API_VERSIONS][1] >= 3, "ApiVersions v0..v3 are all in use by clients"


def test_api_versions_v3_writes_no_default_tagged_fields(broker):
    body = compact_string("sluice-compat") + compact_string("1.0") + uvarint(0)
    with connect(broker) as sock:
        sock.sendall(request_frame(API_VERSIONS, 3, 11, body, flexible=True))
        response = recv_frame(sock)
    # ApiVersions responses always use header v0 (no tagged fields), KIP-511.
    reader = Reader(response)
    assert reader.int32() == 11
    assert reader.int16() == 0
    count = reader.uvarint() - 1
    assert count >= len(IMPLEMENTED)
    for _ in range(count):
        key, low, high = reader.int16(), reader.int16(), reader.int16()
        assert reader.tagged_fields() == [], f"api {key} entry carries tagged fields"
    reader.int32()  # throttle_time_ms
    # SupportedFeatures, FinalizedFeaturesEpoch, FinalizedFeatures and
    # ZkMigrationReady are tagged fields; with no features they hold their
    # defaults, and Apache Kafka omits defaults.
    assert reader.tagged_fields() == [], "default-valued tagged fields break librdkafka 2.0.2"
    assert reader.remaining() == 0


def test_unknown_api_versions_version_is_answered_in_v0(broker):
    body = compact_string("sluice-compat") + compact_string("1.0") + uvarint(0)
    with connect(broker) as sock:
        sock.sendall(request_frame(API_VERSIONS, 999, 12, body, flexible=True))
        correlation_id, error_code, apis, _ = parse_api_versions_v0(recv_frame(sock))
        assert (correlation_id, error_code) == (12, UNSUPPORTED_VERSION)
        assert API_VERSIONS in apis
        # The connection stays usable for the retry with a known version.
        sock.sendall(api_versions_v0(13))
        assert parse_api_versions_v0(recv_frame(sock))[:2] == (13, 0)


def test_pipelined_requests_are_answered_in_order(broker):
    ids = list(range(100, 120))
    with connect(broker) as sock:
        sock.sendall(b"".join(api_versions_v0(i) for i in ids))
        answered = [struct.unpack(">i", recv_frame(sock)[:4])[0] for _ in ids]
    assert answered == ids
