"""The admin API's resources and error cases against a real broker, with
confluent-kafka and pika producing the state the API shows.

Contract: docs/http.md (routes, bodies, error codes, authentication).
"""

from __future__ import annotations

import base64
import time

import pika
from confluent_kafka import Consumer, Producer

from api import call, get, ok, post_oversized, quote
from common.broker import per_test_broker, wait_until


def kafka(broker, **extra) -> dict:
    return {"bootstrap.servers": f"127.0.0.1:{broker.kafka_port}", **extra}


def pika_connection(broker, **properties):
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=broker.amqp_port, client_properties=properties or None))


# --- authentication ----------------------------------------------------------------


def test_requests_without_credentials_are_refused_with_a_challenge(broker):
    answer = get(broker, "/api/overview", credentials=None)
    assert answer.status == 401
    assert answer.error["name"] == "unauthorized" and answer.error["code"] == 5
    assert answer.headers["www-authenticate"] == 'Basic realm="sluice"'
    from_ui = get(broker, "/api/overview", credentials=None, headers={"X-Sluice-Client": "ui"})
    assert from_ui.status == 401 and "www-authenticate" not in from_ui.headers
    assert get(broker, "/api/overview", credentials=("guest", "wrong")).status == 401
    assert get(broker, "/api/overview", credentials=("nobody", "guest")).status == 401


def test_the_openapi_document_and_metrics_need_no_login(broker):
    document = ok(get(broker, "/api/openapi.json", credentials=None))
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path, methods in [("/api/topics", {"get", "post"}), ("/api/queues/{vhost}/{queue}", {"get", "put", "delete"}),
                          ("/api/groups/{group}/reset-offsets", {"post"}), ("/api/connections/{id}", {"delete"})]:
        assert methods <= set(paths[path]), (path, paths.get(path))
    assert len(paths) >= 20


def test_configured_users_log_in_and_guest_only_from_loopback(tmp_path, request):
    settings = {"amqp.users": "guest:guest,alice:secret", "amqp.loopback_users": "guest"}
    with per_test_broker(tmp_path, request, settings) as broker:
        assert ok(get(broker, "/api/overview", credentials=("alice", "secret")))["version"]
        mark = broker.log_size()
        assert get(broker, "/api/overview", credentials=("alice", "guest")).status == 401
        # Loopback is all a test can reach; guest is accepted from there.
        assert get(broker, "/api/overview").status == 200
        # The refusal is logged with the user name, never the password.
        log = broker.log_text(mark, tail_lines=None)
        refused = [line for line in log.splitlines() if "login failed" in line and "http basic" in line]
        assert len(refused) == 1 and "user=alice" in refused[0], log
        assert "secret" not in log


# --- errors ------------------------------------------------------------------------------


def test_bad_input_gets_json_errors_naming_the_field(broker, name):
    malformed = call(broker, "POST", "/api/topics", raw=b"{not json")
    assert malformed.status == 400 and malformed.error["name"] == "bad_request"
    wrong_type = call(broker, "POST", "/api/topics", {"name": name, "partitions": "three"})
    assert wrong_type.status == 400 and wrong_type.error["name"] == "bad_request"
    for body, field in [({"name": name, "partitions": 0}, "partitions"),
                        ({"name": "bad name!", "partitions": 1}, "name"),
                        ({"name": name, "configs": {"retention.ms": "soon"}}, "configs"),
                        ({"name": name, "configs": {"no.such.key": "1"}}, "configs")]:
        answer = call(broker, "POST", "/api/topics", body)
        assert answer.status == 400, (body, answer.body)
        assert answer.error["name"] == "invalid_field" and answer.error["field"] == field, answer.body
    paging = get(broker, "/api/topics?page_size=0")
    assert paging.status == 400 and paging.error["field"] == "page_size"
    deep = {"k": 1}
    for _ in range(40):
        deep = {"k": deep}
    nested = call(broker, "PUT", f"/api/queues/%2F/{name}", {"arguments": deep})
    assert nested.status == 400 and nested.error["field"] == "arguments"


def test_unknown_things_are_404_and_wrong_methods_405(broker):
    for path in ["/api/topics/nope", "/api/groups/nope", "/api/queues/%2F/nope", "/api/exchanges/%2F/nope",
                 "/api/queues/nope-vhost/q", "/api/topics/nope/partitions/0/messages", "/api/nothing",
                 "/api/connections/999999"]:
        answer = get(broker, path) if "connections" not in path else call(broker, "DELETE", path)
        assert answer.status == 404, (path, answer.body)
        assert answer.error["name"] == "not_found" and answer.error["code"] == 3
    wrong = call(broker, "PUT", "/api/topics", {})
    assert wrong.status == 405 and wrong.error["name"] == "method_not_allowed"


def test_conflicts_and_refusals(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name}), 201)
    again = call(broker, "POST", "/api/topics", {"name": name})
    assert again.status == 409 and again.error["name"] == "already_exists"
    ok(call(broker, "PUT", f"/api/queues/%2F/{name}", {"durable": True}), 201)
    inequivalent = call(broker, "PUT", f"/api/queues/%2F/{name}", {"durable": False})
    assert inequivalent.status == 409 and inequivalent.error["name"] == "precondition_failed"
    default = call(broker, "DELETE", "/api/exchanges/%2F/amq.default")
    assert default.status == 403 and default.error["name"] == "forbidden"
    reserved = call(broker, "PUT", "/api/exchanges/%2F/amq.mine", {"type": "direct"})
    assert reserved.status == 403
    bad_type = call(broker, "PUT", f"/api/exchanges/%2F/{name}", {"type": "weird"})
    assert bad_type.status == 400 and bad_type.error["field"] == "type"


def test_hostile_bodies_leave_the_broker_serving(broker):
    # Refused with 413, or cut off while still arriving (see post_oversized).
    huge = post_oversized(broker, "/api/topics", b"[" + b"1," * 3_000_000 + b"1]")
    assert huge in (400, 413, None), huge
    garbage = call(broker, "POST", "/api/topics/x/messages", raw=bytes(range(256)) * 100)
    assert garbage.status == 400
    too_many = call(broker, "POST", "/api/topics", {"name": "x" * 300})
    assert too_many.status == 400
    assert ok(get(broker, "/api/overview"))["version"]


# --- topics and the message browser ------------------------------------------------


def test_topics_created_through_the_api_are_kafka_topics(broker, name):
    created = ok(call(broker, "POST", "/api/topics",
                      {"name": name, "partitions": 3, "configs": {"retention.ms": "3600000"}}), 201)
    assert [p["partition"] for p in created["partitions"]] == [0, 1, 2]
    assert {"name": "retention.ms", "value": "3600000", "source": "topic"} in created["configs"]
    producer = Producer(kafka(broker))
    for i in range(9):
        producer.produce(name, key=f"k{i}", value=f"v{i}", partition=i % 3)
    assert producer.flush(15) == 0
    described = ok(get(broker, f"/api/topics/{name}"))
    assert [p["high_watermark"] for p in described["partitions"]] == [3, 3, 3]
    assert all(p["size_bytes"] > 0 and p["records_in"] == 3 for p in described["partitions"])

    altered = ok(call(broker, "PATCH", f"/api/topics/{name}/configs",
                      {"set": {"cleanup.policy": "compact"}, "delete": ["retention.ms"]}))
    configs = {c["name"]: c for c in altered["configs"]}
    assert configs["cleanup.policy"]["value"] == "compact" and configs["retention.ms"]["source"] == "default"
    grown = ok(call(broker, "POST", f"/api/topics/{name}/partitions", {"count": 5}))
    assert len(grown["partitions"]) == 5
    shrink = call(broker, "POST", f"/api/topics/{name}/partitions", {"count": 2})
    assert shrink.status == 400 and shrink.error["field"] == "count"
    metadata = Producer(kafka(broker)).list_topics(name, timeout=10)
    assert len(metadata.topics[name].partitions) == 5

    ok(call(broker, "DELETE", f"/api/topics/{name}"), 204)
    assert get(broker, f"/api/topics/{name}").status == 404
    assert name not in Producer(kafka(broker)).list_topics(timeout=10).topics


def test_the_message_browser_reads_by_offset_and_time_in_every_encoding(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name}), 201)
    producer = Producer(kafka(broker))
    producer.produce(name, key=b"k0", value=b"first", headers=[("h", b"v"), ("empty", None)])
    producer.produce(name, value=b"\x00\xff binary")
    assert producer.flush(15) == 0
    time.sleep(0.05)
    middle = int(time.time() * 1000)
    time.sleep(0.05)
    producer.produce(name, key=b"k2", value=b"later")
    assert producer.flush(15) == 0

    page = ok(get(broker, f"/api/topics/{name}/partitions/0/messages?offset=0&limit=2"))
    assert page["next_offset"] == 2 and page["high_watermark"] == 3
    first, second = page["messages"]
    assert (first["offset"], first["key"], first["value"]) == (0, "k0", "first")
    assert first["headers"] == [{"key": "h", "value": "v"}, {"key": "empty", "value": None}]
    assert second["key"] is None
    hexed = ok(get(broker, f"/api/topics/{name}/partitions/0/messages?offset=1&limit=1&encoding=hex"))
    assert hexed["messages"][0]["value"] == b"\x00\xff binary".hex()
    based = ok(get(broker, f"/api/topics/{name}/partitions/0/messages?offset=1&limit=1&encoding=base64"))
    assert based["messages"][0]["value"] == "AP8gYmluYXJ5"
    by_time = ok(get(broker, f"/api/topics/{name}/partitions/0/messages?timestamp={middle}"))
    assert [m["offset"] for m in by_time["messages"]] == [2]
    assert get(broker, f"/api/topics/{name}/partitions/7/messages").status == 404


def test_records_produced_through_the_api_reach_kafka_consumers(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name, "partitions": 2}), 201)
    answer = ok(call(broker, "POST", f"/api/topics/{name}/messages", {
        "records": [{"partition": 1, "key": "a", "value": "hello", "headers": [{"key": "h", "value": "v"}]},
                    {"partition": 1, "value": "AAEC", "key": None}],
        "encoding": "text"}))
    assert answer["offsets"] == [{"partition": 1, "offset": 0}, {"partition": 1, "offset": 1}]
    binary = ok(call(broker, "POST", f"/api/topics/{name}/messages",
                     {"records": [{"partition": 0, "value": "AAEC"}], "encoding": "base64"}))
    assert binary["offsets"] == [{"partition": 0, "offset": 0}]
    bad = call(broker, "POST", f"/api/topics/{name}/messages", {"records": [{"partition": 9, "value": "x"}]})
    assert bad.status == 400 and bad.error["field"] == "partition"

    consumer = Consumer(kafka(broker, **{"group.id": name, "auto.offset.reset": "earliest"}))
    consumer.subscribe([name])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got.append(message)
    consumer.close()
    by_place = {(m.partition(), m.offset()): m for m in got}
    assert by_place[(1, 0)].key() == b"a" and by_place[(1, 0)].value() == b"hello"
    assert by_place[(1, 0)].headers() == [("h", b"v")]
    assert by_place[(1, 1)].key() is None
    assert by_place[(0, 0)].value() == b"\x00\x01\x02"


def test_lists_filter_and_page(broker, name):
    for i in range(130):
        ok(call(broker, "POST", "/api/topics", {"name": f"{name}-{i:03d}"}), 201)
    first = ok(get(broker, f"/api/topics?filter={name}&page_size=100"))
    assert first["total"] == 130 and len(first["items"]) == 100
    second = ok(get(broker, f"/api/topics?filter={name.upper()}&page_size=100&page=2"))
    assert [t["name"] for t in second["items"]] == [f"{name}-{i:03d}" for i in range(100, 130)]


# --- groups ------------------------------------------------------------------------------


def test_groups_show_members_lag_and_reset_only_when_stopped(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name, "partitions": 2}), 201)
    producer = Producer(kafka(broker))
    for i in range(10):
        producer.produce(name, value=f"v{i}", partition=i % 2)
    assert producer.flush(15) == 0
    consumer = Consumer(kafka(broker, **{"group.id": name, "auto.offset.reset": "earliest",
                                         "enable.auto.commit": False}))
    consumer.subscribe([name])
    seen = 0
    deadline = time.monotonic() + 20
    while seen < 6 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            seen += 1
            if seen == 6:
                consumer.commit(asynchronous=False)
    wait_until(lambda: ok(get(broker, f"/api/groups/{name}"))["state"] == "Stable", 20, what="a stable group")
    group = ok(get(broker, f"/api/groups/{name}"))
    assert len(group["members"]) == 1
    assigned = {(a["topic"], a["partition"]) for a in group["members"][0]["assignments"]}
    assert assigned == {(name, 0), (name, 1)}
    assert sum(o["lag"] for o in group["offsets"]) == 4
    listed = next(g for g in ok(get(broker, "/api/groups"))["items"] if g["group_id"] == name)
    assert listed["members"] == 1 and listed["lag"] == 4

    busy = call(broker, "POST", f"/api/groups/{name}/reset-offsets", {"to": "earliest"})
    assert busy.status == 409 and busy.error["name"] == "precondition_failed"
    assert call(broker, "DELETE", f"/api/groups/{name}").status == 409
    consumer.close()
    wait_until(lambda: not ok(get(broker, f"/api/groups/{name}"))["members"], 20, what="the member to leave")

    earliest = ok(call(broker, "POST", f"/api/groups/{name}/reset-offsets", {"topic": name, "to": "earliest"}))
    assert {o["partition"]: o["committed_offset"] for o in earliest["offsets"]} == {0: 0, 1: 0}
    latest = ok(call(broker, "POST", f"/api/groups/{name}/reset-offsets", {"to": "latest"}))
    assert {o["partition"]: o["committed_offset"] for o in latest["offsets"]} == {0: 5, 1: 5}
    exact = ok(call(broker, "POST", f"/api/groups/{name}/reset-offsets",
                    {"topic": name, "partitions": [1], "to": "offset", "offset": 2}))
    assert {o["partition"]: o["committed_offset"] for o in exact["offsets"]} == {0: 5, 1: 2}
    missing = call(broker, "POST", f"/api/groups/{name}/reset-offsets", {"to": "timestamp"})
    assert missing.status == 400 and missing.error["field"] == "timestamp"

    resumed = Consumer(kafka(broker, **{"group.id": name, "enable.auto.commit": False}))
    resumed.subscribe([name])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        message = resumed.poll(0.5)
        if message is not None and message.error() is None:
            got.append((message.partition(), message.offset()))
    resumed.close()
    assert sorted(got) == [(1, 2), (1, 3), (1, 4)]

    wait_until(lambda: not ok(get(broker, f"/api/groups/{name}"))["members"], 20, what="the member to leave")
    ok(call(broker, "DELETE", f"/api/groups/{name}"), 204)
    assert get(broker, f"/api/groups/{name}").status == 404


# --- AMQP objects ----------------------------------------------------------------------


def test_queues_exchanges_and_bindings_made_in_the_api_work_for_pika(broker, name):
    exchange, queue = f"{name}-x", f"{name}-q"
    ok(call(broker, "PUT", f"/api/exchanges/%2F/{exchange}", {"type": "topic", "durable": True}), 201)
    ok(call(broker, "PUT", f"/api/queues/%2F/{queue}", {"durable": True, "arguments": {"x-max-priority": 5}}), 201)
    binding = ok(call(broker, "POST", "/api/bindings", {"vhost": "/", "source": exchange, "destination": queue,
                                                         "destination_type": "queue", "routing_key": "a.#"}), 201)
    assert binding["routing_key"] == "a.#"
    connection = pika_connection(broker)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(exchange, "a.b", b"routed", pika.BasicProperties(priority=3, headers={"n": 1}))
    channel.basic_publish(exchange, "z.b", b"dropped")

    shown = ok(get(broker, f"/api/queues/%2F/{quote(queue)}"))
    assert (shown["messages_ready"], shown["durable"], shown["arguments"]) == (1, True, {"x-max-priority": 5})
    peeked = ok(get(broker, f"/api/queues/%2F/{queue}/messages?count=5"))["messages"]
    assert [(m["payload"], m["routing_key"], m["properties"]["priority"], m["properties"]["headers"])
            for m in peeked] == [("routed", "a.b", 3, {"n": 1})]
    assert ok(get(broker, f"/api/queues/%2F/{queue}"))["messages_ready"] == 1

    ok(call(broker, "POST", f"/api/exchanges/%2F/{exchange}/publish", {
        "routing_key": "a.c", "payload": "from api",
        "properties": {"delivery_mode": 2, "content_type": "text/plain", "headers": {"x": "y"},
                       "correlation_id": "c1", "priority": 1}}))
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"routed"
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"from api" and properties.content_type == "text/plain"
    assert properties.headers == {"x": "y"} and properties.correlation_id == "c1" and properties.delivery_mode == 2

    channel.basic_publish(exchange, "a.d", b"taken")
    taken = ok(call(broker, "POST", f"/api/queues/%2F/{queue}/get", {"count": 5, "ack": True}))
    assert [m["payload"] for m in taken["messages"]] == ["taken"]
    assert ok(get(broker, f"/api/queues/%2F/{queue}"))["messages"] == 0
    channel.basic_publish(exchange, "a.e", b"p1")
    channel.basic_publish(exchange, "a.e", b"p2")
    assert ok(call(broker, "DELETE", f"/api/queues/%2F/{queue}/contents")) == {"purged": 2}

    listed = ok(get(broker, f"/api/bindings?vhost=%2F&filter={name}"))["items"]
    assert [(b["source"], b["destination"], b["routing_key"]) for b in listed] == [(exchange, queue, "a.#")]
    ok(call(broker, "DELETE", f"/api/bindings?vhost=%2F&source={exchange}&destination={queue}"
                             f"&destination_type=queue&routing_key={quote('a.#')}"), 204)
    channel.basic_publish(exchange, "a.b", b"unbound")
    assert ok(get(broker, f"/api/queues/%2F/{queue}"))["messages"] == 0
    connection.close()
    ok(call(broker, "DELETE", f"/api/queues/%2F/{queue}"), 204)
    ok(call(broker, "DELETE", f"/api/exchanges/%2F/{exchange}"), 204)
    assert get(broker, f"/api/exchanges/%2F/{exchange}").status == 404


def test_objects_declared_over_amqp_are_listed_with_their_counts(broker, name):
    connection = pika_connection(broker)
    channel = connection.channel()
    channel.queue_declare(name, durable=True)
    for i in range(4):
        channel.basic_publish("", name, f"m{i}".encode())
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(name, lambda *args: None)
    connection.process_data_events(0.3)
    def counts():
        queue = ok(get(broker, f"/api/queues/%2F/{name}"))
        return (queue["messages_ready"], queue["messages_unacknowledged"], queue["consumers"])
    wait_until(lambda: counts() == (3, 1, 1), 10, what="3 ready, 1 unacked, 1 consumer")
    vhost = next(v for v in ok(get(broker, "/api/vhosts"))["items"] if v["name"] == "/")
    assert vhost["messages_unacknowledged"] >= 1
    connection.close()
    wait_until(lambda: counts() == (4, 0, 0), 10, what="the delivery requeued")


def test_persistent_messages_published_through_the_api_survive_a_restart(tmp_path, request, name):
    with per_test_broker(tmp_path, request) as broker:
        ok(call(broker, "PUT", f"/api/queues/%2F/{name}", {"durable": True}), 201)
        ok(call(broker, "POST", "/api/exchanges/%2F/amq.default/publish",
                {"routing_key": name, "payload": "kept", "properties": {"delivery_mode": 2}}))
        broker.kill()
        broker.start()
        peeked = ok(get(broker, f"/api/queues/%2F/{name}/messages"))["messages"]
        assert [m["payload"] for m in peeked] == ["kept"]


def test_stream_queues_peek_at_their_records_and_refuse_purge(broker, name):
    ok(call(broker, "PUT", f"/api/queues/%2F/{name}", {"durable": True, "arguments": {"x-queue-type": "stream"}}), 201)
    ok(call(broker, "POST", "/api/exchanges/%2F/amq.default/messages",
            {"messages": [{"routing_key": name, "payload": p} for p in ["a", "b", "c"]]}))
    listed = ok(get(broker, f"/api/queues/%2F/{name}"))
    assert (listed["type"], listed["messages_ready"]) == ("stream", 3)
    peeked = ok(get(broker, f"/api/queues/%2F/{name}/messages?count=2"))["messages"]
    assert [(m["payload"], m["properties"]["headers"]["x-stream-offset"], m["redelivered"]) for m in peeked] == [
        ("a", 0, False), ("b", 1, False)]
    assert len(ok(get(broker, f"/api/queues/%2F/{name}/messages?count=10"))["messages"]) == 3
    assert ok(get(broker, f"/api/queues/%2F/{name}"))["messages_ready"] == 3
    assert call(broker, "DELETE", f"/api/queues/%2F/{name}/contents").status == 400


def test_quorum_queues_report_their_type_and_keep_it_over_a_restart(tmp_path, request, name):
    with per_test_broker(tmp_path, request) as broker:
        connection = pika_connection(broker)
        connection.channel().queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        connection.close()
        assert ok(get(broker, f"/api/queues/%2F/{name}"))["type"] == "quorum"
        broker.kill()
        broker.start()
        assert ok(get(broker, f"/api/queues/%2F/{name}"))["type"] == "quorum"


def test_queue_argument_errors_name_the_field_in_plain_words(broker, name):
    for arguments, words in [({"x-max-length": -1}, "x-max-length must be an integer of 0 or more, got -1"),
                             ({"x-message-ttl": "soon"}, "x-message-ttl must be an integer of 0 or more, got a string"),
                             ({"x-overflow": "drop-tail"}, "x-overflow must be drop-head, reject-publish or"),
                             ({"x-max-priority": 300}, "x-max-priority must be at most 255, got 300"),
                             ({"x-queue-type": "lazy"}, "x-queue-type must be classic, quorum or stream")]:
        answer = call(broker, "PUT", f"/api/queues/%2F/{name}", {"durable": True, "arguments": arguments})
        assert answer.status == 400, (arguments, answer.body)
        assert (answer.error["name"], answer.error["field"]) == ("invalid_field", "arguments"), answer.body
        assert answer.error["message"].startswith(words), answer.body
        assert "{" not in answer.error["message"] and "PRECONDITION" not in answer.error["message"], answer.body
    # The AMQP wire keeps RabbitMQ's text, which clients match on.
    connection = pika_connection(broker)
    channel = connection.channel()
    try:
        channel.queue_declare(name, arguments={"x-max-length": -1})
        raise AssertionError("declared")
    except pika.exceptions.ChannelClosedByBroker as closed:
        assert closed.reply_code == 406
        assert closed.reply_text == (f"PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '{name}' "
                                     "in vhost '/': {value_negative,-1}")
    connection.close()


def test_health_needs_no_login_and_reports_readiness(broker):
    assert ok(get(broker, "/api/health", credentials=None)) == {"status": "ok"}
    ready = ok(get(broker, "/api/health/ready", credentials=None))
    assert ready["status"] == "ready" and ready["reasons"] == []
    assert (ready["checks"]["memory_alarm"], ready["checks"]["disk_alarm"], ready["checks"]["recovery"]) == (
        False, False, True)
    assert {listener["protocol"] for listener in ready["checks"]["listeners"]} == {"kafka", "amqp", "mqtt", "stomp", "http"}
    document = ok(get(broker, "/api/openapi.json", credentials=None))
    assert document["paths"]["/api/health/ready"]["get"]["security"] == []


def test_readiness_and_api_writes_are_503_while_an_alarm_blocks_publishers(tmp_path, request):
    with per_test_broker(tmp_path, request, {"amqp.disk_free_limit": "1000TiB"}) as broker:
        def answer():
            return get(broker, "/api/health/ready", credentials=None)
        wait_until(lambda: answer().status == 503, 15, what="the disk alarm")
        body = answer().body
        assert body["status"] == "not_ready" and body["checks"]["disk_alarm"] is True
        assert any("disk alarm" in reason for reason in body["reasons"]), body
        assert ok(get(broker, "/api/health", credentials=None)) == {"status": "ok"}
        # The admission check every write path shares: the API's writes are
        # refused with 503 `blocked` while the alarm lasts.
        writes = [
            ("/api/topics/blocked-topic/messages", {"records": [{"value": "x"}]}),
            ("/api/exchanges/%2F/amq.default/publish", {"routing_key": "q", "payload": "x"}),
            ("/api/exchanges/%2F/amq.default/messages",
             {"messages": [{"routing_key": "q", "payload": "x"}]}),
            ("/api/queues/%2F/q/move", {"destination": "r"}),
        ]
        for path, body in writes:
            refused = call(broker, "POST", path, body)
            assert refused.status == 503, (path, refused.status, refused.body)
            assert refused.error["name"] == "blocked", (path, refused.body)
            assert "low on disk" in refused.error["message"], refused.body


def test_batches_of_messages_are_published_in_order_and_durable(tmp_path, request, name):
    with per_test_broker(tmp_path, request) as broker:
        ok(call(broker, "PUT", f"/api/queues/%2F/{name}", {"durable": True}), 201)
        messages = [{"routing_key": name, "payload": f"m{i}", "properties": {"delivery_mode": 2}}
                    for i in range(300)]
        messages.insert(10, {"routing_key": "nowhere", "payload": "lost"})
        answer = ok(call(broker, "POST", "/api/exchanges/%2F/amq.default/messages", {"messages": messages}))
        assert answer == {"published": 301, "routed": 300, "unroutable": [10], "rejected": []}
        binary = ok(call(broker, "POST", "/api/exchanges/%2F/amq.default/messages",
                         {"messages": [{"routing_key": name, "payload": "AAEC", "properties": {"delivery_mode": 2}}],
                          "encoding": "base64"}))
        assert binary["routed"] == 1
        for body, field in [({"messages": []}, "messages"),
                            ({"messages": [{"routing_key": "k" * 256}]}, "routing_key"),
                            ({"messages": [{"payload": "zz"}], "encoding": "hex"}, "payload")]:
            refused = call(broker, "POST", "/api/exchanges/%2F/amq.default/messages", body)
            assert refused.status == 400 and refused.error["field"] == field, refused.body
        assert call(broker, "POST", "/api/exchanges/%2F/nope/messages",
                    {"messages": [{"payload": "x"}]}).status == 404
        broker.kill()
        broker.start()
        peeked = ok(get(broker, f"/api/queues/%2F/{name}/messages?count=1000&encoding=base64"))["messages"]
        assert len(peeked) == 301
        assert [base64.b64decode(m["payload"]).decode() for m in peeked[:300]] == [f"m{i}" for i in range(300)]
        assert base64.b64decode(peeked[300]["payload"]) == b"\x00\x01\x02"


def test_producing_to_an_unknown_topic_follows_kafka_auto_create_topics(tmp_path, request, name):
    with per_test_broker(tmp_path, request, {"kafka.default_partitions": "2"}) as broker:
        answer = ok(call(broker, "POST", f"/api/topics/{name}/messages", {"records": [{"value": "first"}]}))
        assert answer["offsets"][0]["offset"] == 0
        assert len(ok(get(broker, f"/api/topics/{name}"))["partitions"]) == 2
    with per_test_broker(tmp_path / "off", request, {"kafka.auto_create_topics": "false"}) as broker:
        refused = call(broker, "POST", f"/api/topics/{name}/messages", {"records": [{"value": "x"}]})
        assert refused.status == 404 and refused.error["name"] == "not_found"
        assert "kafka.auto_create_topics is off" in refused.error["message"]
        assert get(broker, f"/api/topics/{name}").status == 404


# --- connections -----------------------------------------------------------------------


def test_connections_of_both_protocols_are_listed_and_closable(broker, name):
    connection = pika_connection(broker, connection_name=name)
    channel = connection.channel()
    channel.confirm_delivery()
    producer = Producer(kafka(broker, **{"client.id": f"{name}-kafka"}))
    producer.produce(name, value=b"x")
    producer.flush(15)

    def find(client_name):
        return [c for c in ok(get(broker, "/api/connections?page_size=1000"))["items"]
                if c["client_name"] == client_name]
    wait_until(lambda: find(name) and find(f"{name}-kafka"), 10, what="both connections listed")
    [amqp] = find(name)
    assert (amqp["protocol"], amqp["user"], amqp["vhost"], amqp["channels"]) == ("amqp", "guest", "/", 1)
    assert amqp["peer"].startswith("127.0.0.1:") and amqp["bytes_in"] > 0 and amqp["bytes_out"] > 0
    kafka_side = find(f"{name}-kafka")[0]
    assert kafka_side["protocol"] == "kafka" and kafka_side["user"] is None
    channels = [c for c in ok(get(broker, "/api/channels?page_size=1000"))["items"] if c["connection"] == amqp["id"]]
    assert [(c["number"], c["confirm"]) for c in channels] == [(1, True)]

    ok(call(broker, "DELETE", f"/api/connections/{amqp['id']}?reason=maintenance%20window"), 204)
    closed = None
    deadline = time.monotonic() + 10
    while closed is None and time.monotonic() < deadline:
        try:
            connection.process_data_events(0.2)
        except pika.exceptions.ConnectionClosedByBroker as error:
            closed = error
    assert closed is not None and closed.reply_code == 320
    assert "maintenance window" in closed.reply_text
    ok(call(broker, "DELETE", f"/api/connections/{kafka_side['id']}"), 204)

    def kafka_side_gone():
        # One listing per check: the connection may go between two.
        listed = find(f"{name}-kafka")
        return not listed or listed[0]["id"] != kafka_side["id"]

    wait_until(kafka_side_gone, 10, what="the Kafka connection dropped")
