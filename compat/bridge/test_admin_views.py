"""Streams and forwarding as the admin API and /metrics show them.

Contract (docs/http.md, docs/bridging.md): a stream queue is listed among
queues with type `stream`, its topic and the records the topic keeps as
`messages`; the topic lists it under `stream_queues`. A forwarded topic
shows where it forwards and each partition's position and lag, the
forwarder's group appears among groups, and /metrics has
`sluice_forward_lag_records` per partition.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request

from support import (
    create_topic,
    declare_stream,
    get_all,
    producer,
    produce_all,
    wait_until,
)


def api(broker, path: str):
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.http_port}{path}",
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def metrics(broker) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_a_stream_is_both_a_queue_and_a_topic(broker, ch, name):
    declare_stream(ch, name, **{"x-stream-partitions": 2})
    produce_all(producer(broker), name, [dict(key=f"k{i}".encode(), value=b"v") for i in range(7)])

    queue = api(broker, f"/api/queues/%2F/{urllib.parse.quote(name)}")
    assert queue["type"] == "stream"
    assert queue["topic"] == name
    wait_until(lambda: api(broker, f"/api/queues/%2F/{name}")["messages"] == 7, 10, what="7 records in the stream")

    topic = api(broker, f"/api/topics/{name}")
    assert topic["stream_queues"] == [{"vhost": "/", "name": name}]
    assert len(topic["partitions"]) == 2
    assert topic["forwarding"] is None

    classic = api(broker, "/api/queues?filter=" + urllib.parse.quote(name))["items"]
    assert [q["type"] for q in classic] == ["stream"]


def test_forwarding_position_and_lag_are_shown(broker, ch, name):
    exchange, queue = f"{name}-x", f"{name}-q"
    ch.exchange_declare(exchange, "fanout", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, exchange)
    create_topic(broker, name, partitions=2, config={"sluice.forward.exchange": exchange})
    produce_all(producer(broker), name, [dict(key=f"k{i}".encode(), value=b"v") for i in range(10)])

    def caught_up():
        forwarding = api(broker, f"/api/topics/{name}")["forwarding"]
        return forwarding and sum(p["position"] for p in forwarding["partitions"]) == 10
    wait_until(caught_up, 10, what="the forwarder to reach the end")
    forwarding = api(broker, f"/api/topics/{name}")["forwarding"]
    assert forwarding["exchange"] == exchange
    assert forwarding["vhost"] == "/"
    assert forwarding["routing_key"] == "key"
    assert forwarding["group"] == f"__sluice_forward:/:{exchange}"
    assert all(p["lag"] == 0 for p in forwarding["partitions"])
    assert len(get_all(ch, queue)) == 10

    groups = api(broker, "/api/groups")["items"]
    group = next(g for g in groups if g["group_id"] == forwarding["group"])
    assert group["lag"] == 0

    lines = [line for line in metrics(broker).splitlines()
             if line.startswith("sluice_forward_lag_records{") and f'topic="{name}"' in line]
    assert len(lines) == 2, lines
    assert all(line.endswith(" 0") for line in lines), lines
