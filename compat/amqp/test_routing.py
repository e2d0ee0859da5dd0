"""Routing: which queues receive a published message, per exchange type,
through exchange-to-exchange bindings, alternate exchanges, internal
exchanges and the default exchange — as RabbitMQ routes.

Each table lists bindings (queue label → binding key and arguments) and
cases (routing key, headers → the set of labels whose queue must get the
message). Publishes go through a confirm-mode channel, so every message is
routed before the queues are drained with basic.get. A table failure lists
every mismatching case at once.
"""

from __future__ import annotations

import datetime

import pika

from support import ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED, bodies, channel_error


def run_table(conn, exchange: str, exchange_type: str, name: str, bindings: dict, cases: list):
    """Declares `exchange` and one queue per binding label, publishes each
    case and returns the mismatches as a list of strings."""
    setup = conn.channel()
    setup.exchange_declare(exchange, exchange_type, auto_delete=False)
    queues = {}
    for label, (key, arguments) in bindings.items():
        queue = f"{name}-{label}"
        setup.queue_declare(queue)
        setup.queue_bind(queue, exchange, routing_key=key, arguments=arguments)
        queues[label] = queue
    publisher = conn.channel()
    publisher.confirm_delivery()
    for index, (routing_key, headers, _) in enumerate(cases):
        publisher.basic_publish(
            exchange, routing_key, f"case-{index}".encode(),
            pika.BasicProperties(headers=headers),
        )
    received: dict[int, list[str]] = {index: [] for index in range(len(cases))}
    for label, queue in queues.items():
        for body in bodies(setup, queue):
            received[int(body.decode().removeprefix("case-"))].append(label)
    mismatches = []
    for index, (routing_key, headers, expected) in enumerate(cases):
        got = sorted(received[index])
        if got != sorted(expected) or len(set(got)) != len(got):
            mismatches.append(
                f"key={routing_key!r} headers={headers!r}: expected {sorted(expected)}, got {got}"
            )
    for queue in queues.values():
        setup.queue_delete(queue)
    setup.exchange_delete(exchange)
    return mismatches


def test_direct_exchange_routes_by_exact_key(conn, name):
    bindings = {
        "q1": ("a", None),
        "q2": ("a", None),
        "q3": ("b", None),
        "q4": ("", None),
        "q5": ("a.b", None),
    }
    cases = [
        ("a", None, {"q1", "q2"}),
        ("b", None, {"q3"}),
        ("", None, {"q4"}),
        ("a.b", None, {"q5"}),
        ("A", None, set()),  # keys are case-sensitive
        ("c", None, set()),
        ("a.*", None, set()),  # no wildcards in direct exchanges
    ]
    assert run_table(conn, f"{name}-x", "direct", name, bindings, cases) == []


def test_fanout_exchange_ignores_the_key(conn, name):
    bindings = {"q1": ("x", None), "q2": ("", None), "q3": ("#", None)}
    everyone = {"q1", "q2", "q3"}
    cases = [("x", None, everyone), ("", None, everyone), ("anything.else", None, everyone)]
    assert run_table(conn, f"{name}-x", "fanout", name, bindings, cases) == []


TOPIC_BINDINGS = {
    "a_star": "a.*",
    "a_hash": "a.#",
    "hash": "#",
    "star_b": "*.b",
    "a_star_c": "a.*.c",
    "hash_c": "#.c",
    "a_hash_c": "a.#.c",
    "star": "*",
    "empty": "",
    "exact": "a.b.c",
    "star_hash": "*.#",
    "hash_hash": "#.#",
    "star_star": "*.*",
}

# RabbitMQ splits keys on "." keeping empty words ("a." is "a" and "";
# "" is no words at all); "*" is exactly one word, empty or not; "#" is zero
# or more words.
TOPIC_CASES = [
    ("", {"empty", "hash", "hash_hash"}),
    ("a", {"a_hash", "hash", "hash_hash", "star", "star_hash"}),
    ("b", {"hash", "hash_hash", "star", "star_hash"}),
    ("a.b", {"a_hash", "a_star", "hash", "hash_hash", "star_b", "star_hash", "star_star"}),
    ("a.c", {"a_hash", "a_hash_c", "a_star", "hash", "hash_c", "hash_hash", "star_hash", "star_star"}),
    ("a.b.c", {"a_hash", "a_hash_c", "a_star_c", "exact", "hash", "hash_c", "hash_hash", "star_hash"}),
    ("a..c", {"a_hash", "a_hash_c", "a_star_c", "hash", "hash_c", "hash_hash", "star_hash"}),
    ("a.", {"a_hash", "a_star", "hash", "hash_hash", "star_hash", "star_star"}),
    (".b", {"hash", "hash_hash", "star_b", "star_hash", "star_star"}),
    (".", {"hash", "hash_hash", "star_hash", "star_star"}),
    ("a.b.d.c", {"a_hash", "a_hash_c", "hash", "hash_c", "hash_hash", "star_hash"}),
    ("x.y.z", {"hash", "hash_hash", "star_hash"}),
    ("A.b", {"hash", "hash_hash", "star_b", "star_hash", "star_star"}),
]


def test_topic_exchange_wildcards(conn, name):
    bindings = {label: (key, None) for label, key in TOPIC_BINDINGS.items()}
    cases = [(key, None, expected) for key, expected in TOPIC_CASES]
    assert run_table(conn, f"{name}-x", "topic", name, bindings, cases) == []


HEADERS_BINDINGS = {
    "all": {"x-match": "all", "a": 1, "b": "two"},
    "any": {"x-match": "any", "a": 1, "b": "two"},
    "default_is_all": {"a": 1},
    "all_no_args": {"x-match": "all"},
    "all_with_x": {"x-match": "all-with-x", "a": 1, "x-tag": "v"},
    "any_with_x": {"x-match": "any-with-x", "x-tag": "v", "c": True},
    "all_ignores_x": {"x-match": "all", "a": 1, "x-tag": "v"},
    "any_only_x": {"x-match": "any", "x-tag": "v"},
    "nested": {"x-match": "all", "t": {"k": [1, "s"]}, "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)},
}

# x-match all (the default): every non-"x-" argument present and equal;
# any: at least one; "x-" arguments count only for all-with-x/any-with-x.
# Values compare by type class and value: the string "1" is not the int 1.
HEADERS_CASES = [
    ({"a": 1, "b": "two"}, {"all", "any", "default_is_all", "all_no_args", "all_ignores_x"}),
    ({"a": 1}, {"any", "default_is_all", "all_no_args", "all_ignores_x"}),
    ({"b": "two"}, {"any", "all_no_args"}),
    ({"a": 2, "b": "two"}, {"any", "all_no_args"}),
    ({"a": 1, "x-tag": "v"}, {"any", "default_is_all", "all_no_args", "all_with_x", "any_with_x", "all_ignores_x"}),
    ({"x-tag": "v"}, {"all_no_args", "any_with_x"}),
    ({"x-tag": "w"}, {"all_no_args"}),
    ({"c": True}, {"all_no_args", "any_with_x"}),
    ({"c": False}, {"all_no_args"}),
    (None, {"all_no_args"}),
    ({"a": "1"}, {"all_no_args"}),
    ({"a": 1, "b": "two", "extra": "z"}, {"all", "any", "default_is_all", "all_no_args", "all_ignores_x"}),
    ({"t": {"k": [1, "s"]}, "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)},
     {"all_no_args", "nested"}),
    ({"t": {"k": [1, "s", 2]}, "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)},
     {"all_no_args"}),
]


def test_headers_exchange_matching(conn, name):
    bindings = {label: ("ignored-key", arguments) for label, arguments in HEADERS_BINDINGS.items()}
    # The routing key plays no part in a headers exchange.
    cases = [(f"key-{i}", headers, expected) for i, (headers, expected) in enumerate(HEADERS_CASES)]
    assert run_table(conn, f"{name}-x", "headers", name, bindings, cases) == []


def test_predeclared_exchanges_exist_and_route(conn, ch, name):
    for exchange, kind in [("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
                           ("amq.headers", "headers"), ("amq.match", "headers")]:
        ch.exchange_declare(exchange, kind, passive=True)
    queue = f"{name}-q"
    ch.queue_declare(queue, auto_delete=False)
    ch.queue_bind(queue, "amq.topic", routing_key=f"{name}.#")
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", f"{name}.x.y", b"via amq.topic")
    assert bodies(ch, queue) == [b"via amq.topic"]
    ch.queue_delete(queue)


def test_exchange_to_exchange_bindings(conn, ch, name):
    src, dst = f"{name}-src", f"{name}-dst"
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(destination=dst, source=src, routing_key="k.#")
    q_src, q_dst, q_both = f"{name}-qsrc", f"{name}-qdst", f"{name}-qboth"
    for queue in (q_src, q_dst, q_both):
        ch.queue_declare(queue)
    ch.queue_bind(q_src, src, routing_key="k.x")
    ch.queue_bind(q_dst, dst)
    # Reached twice (directly and through dst): still one copy.
    ch.queue_bind(q_both, src, routing_key="k.*")
    ch.queue_bind(q_both, dst)
    ch.confirm_delivery()
    ch.basic_publish(src, "k.x", b"one")
    ch.basic_publish(src, "k.y.z", b"two")
    ch.basic_publish(src, "j", b"three")
    ch.basic_publish(dst, "whatever", b"four")
    assert bodies(ch, q_src) == [b"one"]
    assert bodies(ch, q_dst) == [b"one", b"two", b"four"]
    assert bodies(ch, q_both) == [b"one", b"two", b"four"]

    ch.exchange_unbind(destination=dst, source=src, routing_key="k.#")
    ch.basic_publish(src, "k.y.z", b"five")
    assert bodies(ch, q_dst) == []
    assert bodies(ch, q_both) == []


def test_exchange_binding_cycle_delivers_once(conn, ch, name):
    a, b = f"{name}-a", f"{name}-b"
    ch.exchange_declare(a, "fanout")
    ch.exchange_declare(b, "fanout")
    ch.exchange_bind(destination=b, source=a)
    ch.exchange_bind(destination=a, source=b)
    queue = f"{name}-q"
    ch.queue_declare(queue)
    ch.queue_bind(queue, a)
    ch.queue_bind(queue, b)
    ch.confirm_delivery()
    ch.basic_publish(a, "", b"round and round")
    assert bodies(ch, queue) == [b"round and round"]


def test_alternate_exchange_takes_unroutable_messages(conn, ch, name):
    ae, main = f"{name}-ae", f"{name}-main"
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    q_ae, q_main = f"{name}-qae", f"{name}-qmain"
    ch.queue_declare(q_ae)
    ch.queue_declare(q_main)
    ch.queue_bind(q_ae, ae)
    ch.queue_bind(q_main, main, routing_key="known")
    ch.confirm_delivery()
    ch.basic_publish(main, "known", b"routed")
    ch.basic_publish(main, "unknown", b"unrouted")
    # Taken by the alternate exchange, so not returned even when mandatory.
    ch.basic_publish(main, "unknown", b"mandatory", mandatory=True)
    assert bodies(ch, q_main) == [b"routed"]
    assert bodies(ch, q_ae) == [b"unrouted", b"mandatory"]


def test_internal_exchange_refuses_publishes_but_routes_bound_exchanges(conn, name):
    ch = conn.channel()
    internal, public = f"{name}-internal", f"{name}-public"
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_declare(public, "fanout")
    ch.exchange_bind(destination=internal, source=public)
    queue = f"{name}-q"
    ch.queue_declare(queue)
    ch.queue_bind(queue, internal)
    ch.confirm_delivery()
    ch.basic_publish(public, "", b"through the public exchange")
    assert bodies(ch, queue) == [b"through the public exchange"]

    refused = conn.channel()
    with channel_error(ACCESS_REFUSED):
        refused.basic_publish(internal, "", b"direct to internal")
        refused.queue_declare(queue, passive=True)
    check = conn.channel()
    assert bodies(check, queue) == []


def test_default_exchange_routes_by_queue_name(conn, name):
    ch = conn.channel()
    queue = f"{name}-q"
    ch.queue_declare(queue)
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"by name")
    ch.basic_publish("", f"{name}-no-such-queue", b"dropped")  # acked, not an error
    assert bodies(ch, queue) == [b"by name"]

    # Binding to (or unbinding from) the default exchange is refused.
    with channel_error(ACCESS_REFUSED):
        conn.channel().queue_bind(queue, "", routing_key="other")


def test_publish_to_missing_exchange_closes_channel_404(conn, name):
    ch = conn.channel()
    with channel_error(NOT_FOUND):
        ch.basic_publish(f"{name}-missing", "k", b"nowhere")
        ch.queue_declare("", exclusive=True)
    # The connection survives a channel error.
    assert conn.channel().queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")


def test_queue_bound_twice_gets_one_copy(conn, ch, name):
    exchange, queue = f"{name}-x", f"{name}-q"
    ch.exchange_declare(exchange, "topic")
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange, routing_key="a.*")
    ch.queue_bind(queue, exchange, routing_key="#")
    ch.queue_bind(queue, exchange, routing_key="a.b")
    ch.confirm_delivery()
    ch.basic_publish(exchange, "a.b", b"once")
    assert bodies(ch, queue) == [b"once"]


def test_invalid_x_match_is_refused_406(conn, name):
    ch = conn.channel()
    exchange, queue = f"{name}-x", f"{name}-q"
    ch.exchange_declare(exchange, "headers")
    ch.queue_declare(queue)
    with channel_error(PRECONDITION_FAILED):
        ch.queue_bind(queue, exchange, arguments={"x-match": "most", "a": 1})
