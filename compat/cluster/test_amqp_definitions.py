"""AMQP definitions on a three-node cluster (pika): durable exchanges,
queues and bindings declared on one node are on every node once
committed. A classic queue lives on the node it was declared on (its
home, the API's `node`); the other nodes know it as a remote queue that
can be declared again (passively or equivalently), bound to, got from,
purged and deleted, while an inequivalent declaration is refused as on its
home. A deletion
made on any node reaches every node, the home included, and what a node
learnt survives its restart.
"""

from __future__ import annotations

import contextlib
import os
import signal

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from common.broker import unique_name, wait_until
from test_replication import http_get

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")


@contextlib.contextmanager
def channel(node):
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=node.amqp_port,
            credentials=pika.PlainCredentials("guest", "guest"),
            blocked_connection_timeout=30,
            socket_timeout=30,
        )
    )
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def listed(node, kind: str) -> list[dict]:
    return http_get(node, f"/api/{kind}?vhost=%2F&page_size=500")["items"]


def queues_on(node) -> dict[str, dict]:
    return {q["name"]: q for q in listed(node, "queues")}


def exchanges_on(node) -> dict[str, dict]:
    return {e["name"]: e for e in listed(node, "exchanges")}


def bindings_on(node, source_prefix: str) -> set[tuple[str, str, str]]:
    return {
        (b["source"], b["destination"], b["routing_key"])
        for b in listed(node, "bindings")
        if b["source"].startswith(source_prefix)
    }


def declare_everything(node, prefix: str) -> tuple[str, set[tuple[str, str, str]]]:
    """A durable exchange of each type, a durable classic queue bound to
    each, and an exchange-to-exchange binding, on `node`."""
    queue = f"{prefix}-q"
    expected = set()
    with channel(node) as ch:
        ch.queue_declare(queue, durable=True, arguments={"x-max-length": 1000})
        for kind in EXCHANGE_TYPES:
            exchange = f"{prefix}-{kind}"
            ch.exchange_declare(exchange, exchange_type=kind, durable=True)
            key = "" if kind in ("fanout", "headers") else f"key.{kind}"
            ch.queue_bind(queue, exchange, routing_key=key, arguments={"x-match": "any", "k": "v"} if kind == "headers" else None)
            expected.add((exchange, queue, key))
        ch.exchange_bind(f"{prefix}-fanout", f"{prefix}-direct", routing_key="to-fanout")
        expected.add((f"{prefix}-direct", f"{prefix}-fanout", "to-fanout"))
    return queue, expected


def wait_everywhere(cluster, check, what: str, timeout: float = 20.0) -> None:
    for node_id in (1, 2, 3):
        wait_until(lambda: check(cluster.node(node_id), node_id), timeout, interval=0.2, what=f"{what} on node {node_id}")


def test_definitions_declared_on_one_node_are_on_every_node(cluster):
    prefix = unique_name("defs")
    queue, bindings = declare_everything(cluster.node(1), prefix)

    def complete(node, node_id):
        exchanges = exchanges_on(node)
        queues = queues_on(node)
        return (
            all(f"{prefix}-{kind}" in exchanges for kind in EXCHANGE_TYPES)
            and queue in queues
            and bindings_on(node, prefix) == bindings
        )

    wait_everywhere(cluster, complete, "every exchange, the queue and every binding")
    for node_id in (1, 2, 3):
        node = cluster.node(node_id)
        exchanges = exchanges_on(node)
        for kind in EXCHANGE_TYPES:
            assert exchanges[f"{prefix}-{kind}"]["type"] == kind
            assert exchanges[f"{prefix}-{kind}"]["durable"] is True
        shown = queues_on(node)[queue]
        assert shown["node"] == 1, shown
        assert (shown["leader"], shown["members"], shown["online"]) == (1, [1], [1]), shown
        assert shown["state"] == ("running" if node_id == 1 else "remote"), shown
        assert shown["arguments"] == {"x-max-length": 1000}, shown
        homes = {n["id"]: n["queues"] for n in http_get(node, "/api/cluster")["nodes"]}
        assert homes[1] >= 1, homes


def test_a_remote_queue_is_declared_again_bound_got_from_and_purged_on_any_node(cluster):
    prefix = unique_name("remote")
    queue = f"{prefix}-q"
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True, arguments={"x-message-ttl": 60000})
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")

    with channel(cluster.node(2)) as ch:
        assert ch.queue_declare(queue, passive=True).method.queue == queue
        assert ch.queue_declare(queue, durable=True, arguments={"x-message-ttl": 60000}).method.queue == queue
        with pytest.raises(ChannelClosedByBroker) as refused:
            ch.queue_declare(queue, durable=True, arguments={"x-message-ttl": 5})
        assert refused.value.reply_code == 406, refused.value
        assert "inequivalent arg 'x-message-ttl'" in refused.value.reply_text

    # A binding made on node 2 to the queue living on node 1 is everywhere.
    exchange = f"{prefix}-x"
    with channel(cluster.node(2)) as ch:
        ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        ch.queue_bind(queue, exchange, routing_key="a.#")
    wait_everywhere(
        cluster,
        lambda node, _: bindings_on(node, exchange) == {(exchange, queue, "a.#")},
        "the binding made on node 2",
    )

    # basic.get and purge from nodes that do not hold the messages.
    with channel(cluster.node(1)) as ch:
        ch.confirm_delivery()
        for n in range(4):
            ch.basic_publish("", queue, f"g-{n}".encode(), pika.BasicProperties(delivery_mode=2))
    with channel(cluster.node(3)) as ch:
        method, _, body = ch.basic_get(queue)
        assert (body, method.redelivered, method.message_count) == (b"g-0", False, 3)
        _, _, second = ch.basic_get(queue, auto_ack=True)
        assert second == b"g-1"
        ch.basic_reject(method.delivery_tag, requeue=True)
        again, _, body = ch.basic_get(queue)
        assert (body, again.redelivered) == (b"g-0", True)
        ch.basic_ack(again.delivery_tag)
    with channel(cluster.node(2)) as ch:
        assert ch.queue_purge(queue).method.message_count == 2
    with channel(cluster.node(1)) as ch:
        assert ch.queue_declare(queue, passive=True).method.message_count == 0


def test_a_deletion_on_any_node_reaches_every_node_and_restarts_keep_what_was_learnt(cluster):
    prefix = unique_name("gone")
    kept, _ = declare_everything(cluster.node(1), f"{prefix}-kept")
    doomed = f"{prefix}-doomed"
    doomed_exchange = f"{prefix}-doomed-x"
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(doomed, durable=True)
        ch.exchange_declare(doomed_exchange, exchange_type="direct", durable=True)
        ch.queue_bind(doomed, doomed_exchange, routing_key="k")
        ch.basic_publish("", doomed, b"held on node 1", pika.BasicProperties(delivery_mode=2))
    wait_everywhere(
        cluster,
        lambda node, _: doomed in queues_on(node) and doomed_exchange in exchanges_on(node),
        "the doomed queue and exchange",
    )

    # Deleted on node 3, which holds neither's messages.
    with channel(cluster.node(3)) as ch:
        ch.queue_delete(doomed)
        ch.exchange_delete(doomed_exchange)
    wait_everywhere(
        cluster,
        lambda node, _: doomed not in queues_on(node) and doomed_exchange not in exchanges_on(node),
        "the deletions",
    )
    with channel(cluster.node(1)) as ch:
        with pytest.raises(ChannelClosedByBroker) as missing:
            ch.queue_declare(doomed, passive=True)
        assert missing.value.reply_code == 404

    # Node 2 restarts with what it learnt; the queue still lives on node 1.
    node = cluster.node(2)
    node.stop()
    node.start()
    shown = queues_on(node)
    assert kept in shown and shown[kept]["node"] == 1 and shown[kept]["state"] == "remote", shown.get(kept)
    assert doomed not in shown
    assert all(f"{prefix}-kept-{kind}" in exchanges_on(node) for kind in EXCHANGE_TYPES)
    with channel(node) as ch:
        assert ch.queue_declare(kept, passive=True).method.queue == kept


def drain(node, queue: str, expected: int, timeout: float = 20.0) -> list[bytes]:
    """Gets messages from `queue` on `node` (its home) until `expected` or
    the deadline, acknowledging each."""
    bodies: list[bytes] = []
    with channel(node) as ch:

        def got_all():
            while True:
                method, _, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                bodies.append(body)
            return len(bodies) >= expected

        wait_until(got_all, timeout, interval=0.1, what=f"{expected} messages in {queue}")
    return bodies


def test_messages_published_on_any_node_reach_the_queue_on_its_home_in_order(cluster):
    prefix = unique_name("carry")
    queue = f"{prefix}-q"
    exchange = f"{prefix}-x"
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True)
        ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        ch.queue_bind(queue, exchange, routing_key="orders.#")
    wait_everywhere(cluster, lambda node, _: bindings_on(node, exchange) == {(exchange, queue, "orders.#")}, "the binding")

    # Confirmed, mandatory, persistent: through the exchange from node 2,
    # through the default exchange from node 3.
    sent = []
    for node_id, via, key in ((2, exchange, "orders.eu"), (3, "", queue)):
        with channel(cluster.node(node_id)) as ch:
            ch.confirm_delivery()
            for n in range(200):
                body = f"{node_id}-{n}".encode()
                ch.basic_publish(
                    via, key, body, pika.BasicProperties(delivery_mode=2, message_id=str(n)), mandatory=True
                )
                sent.append(body)
    got = drain(cluster.node(1), queue, len(sent))
    assert sorted(got) == sorted(sent), f"{len(got)} of {len(sent)}"
    for node_id in (2, 3):
        mine = [b for b in got if b.startswith(f"{node_id}-".encode())]
        assert mine == [f"{node_id}-{n}".encode() for n in range(200)], f"node {node_id}'s messages out of order"


def test_a_queue_refusing_a_message_on_its_home_nacks_the_publisher_on_another_node(cluster):
    queue = unique_name("full")
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")
    with channel(cluster.node(2)) as ch:
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"fits", pika.BasicProperties(delivery_mode=2))
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", queue, b"refused", pika.BasicProperties(delivery_mode=2))
    assert drain(cluster.node(1), queue, 1) == [b"fits"]


def test_a_queue_whose_home_is_down_is_unavailable_elsewhere_until_it_returns(fresh_cluster):
    cluster = fresh_cluster
    queue = unique_name("homeless")
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True)
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")

    home = cluster.node(1)
    home.kill()
    other = cluster.node(2)
    wait_until(
        lambda: any(n["id"] == 1 and n["fenced"] for n in http_get(other, "/api/cluster")["nodes"]),
        30,
        interval=0.3,
        what="node 1 fenced",
    )
    with channel(other) as ch:
        with pytest.raises(ChannelClosedByBroker) as missing:
            ch.queue_declare(queue, passive=True)
        assert missing.value.reply_code == 404, missing.value
        assert f"home node '1' of durable queue '{queue}'" in missing.value.reply_text
    with channel(other) as ch:
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", queue, b"nowhere to go", pika.BasicProperties(delivery_mode=2))

    home.start()
    wait_until(
        lambda: not any(n["fenced"] for n in http_get(other, "/api/cluster")["nodes"]),
        30,
        interval=0.3,
        what="node 1 back",
    )
    with channel(other) as ch:
        ch.confirm_delivery()
        ch.queue_declare(queue, passive=True)
        ch.basic_publish("", queue, b"home again", pika.BasicProperties(delivery_mode=2))
    assert drain(home, queue, 1) == [b"home again"]


class Collector:
    """A manual-ack consumer on `node` of `queue`, prefetch `prefetch`;
    acks what it gets unless told to hold it."""

    def __init__(self, node, queue: str, prefetch: int = 10, ack: bool = True):
        self.connection = pika.BlockingConnection(
            pika.ConnectionParameters(host="127.0.0.1", port=node.amqp_port, socket_timeout=30)
        )
        self.channel = self.connection.channel()
        self.channel.basic_qos(prefetch_count=prefetch)
        self.ack = ack
        self.got: list[tuple[bytes, bool]] = []
        self.held: list[int] = []
        self.cancelled = False
        self.channel.add_on_cancel_callback(lambda _frame: setattr(self, "cancelled", True))
        self.tag = self.channel.basic_consume(queue, self.on_message)

    def on_message(self, ch, method, _properties, body):
        self.got.append((body, method.redelivered))
        if self.ack:
            ch.basic_ack(method.delivery_tag)
        else:
            self.held.append(method.delivery_tag)

    def run_until(self, done, timeout: float, what: str) -> None:
        wait_until(lambda: (self.connection.process_data_events(time_limit=0.1), done())[1], timeout, interval=0, what=what)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def test_declared_on_one_node_published_on_another_consumed_on_a_third_for_every_exchange_type(cluster):
    prefix = unique_name("three")
    queue, bindings = declare_everything(cluster.node(1), prefix)
    wait_everywhere(cluster, lambda node, _: bindings_on(node, prefix) == bindings, "the bindings")
    consumer = Collector(cluster.node(3), queue)
    try:
        sent = []
        with channel(cluster.node(2)) as ch:
            ch.confirm_delivery()
            for kind in EXCHANGE_TYPES:
                key = "" if kind in ("fanout", "headers") else f"key.{kind}"
                for n in range(25):
                    body = f"{kind}-{n}".encode()
                    ch.basic_publish(
                        f"{prefix}-{kind}", key, body,
                        pika.BasicProperties(delivery_mode=2, headers={"k": "v"}), mandatory=True,
                    )
                    sent.append(body)
            # Through the exchange-to-exchange binding, into the fanout.
            ch.basic_publish(f"{prefix}-direct", "to-fanout", b"e2e", pika.BasicProperties(delivery_mode=2), mandatory=True)
            sent.append(b"e2e")
        consumer.run_until(lambda: len(consumer.got) >= len(sent), 30, "every message consumed on node 3")
        assert sorted(body for body, _ in consumer.got) == sorted(sent)
        assert not any(redelivered for _, redelivered in consumer.got)
        for kind in EXCHANGE_TYPES:
            mine = [body for body, _ in consumer.got if body.startswith(f"{kind}-".encode())]
            assert mine == [f"{kind}-{n}".encode() for n in range(25)], f"{kind}: out of order"
    finally:
        consumer.close()
    # Acked on node 3: nothing is left on the queue's home.
    with channel(cluster.node(1)) as ch:
        assert ch.queue_declare(queue, passive=True).method.message_count == 0


def test_a_stream_takes_confirmed_publishes_on_any_node_through_each_partitions_leader(cluster):
    """A stream is its topic on every node: confirmed publishes on node 2
    into a stream whose three partitions each node leads are written by
    each message's partition leader (the routing key picks the partition,
    as Kafka's partitioner the key), confirmed once its in-sync replicas
    have it; Kafka consumers through every node and an AMQP stream
    consumer on node 3 read each once, each partition in publish order."""
    from test_kafka_cluster import admin, layout
    from test_replication import create_replicated
    from test_transactions import read

    name = unique_name("stream")
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 3, 3)
    assert {leader for leader, _, _ in layout(cluster.node(1).bootstrap, name).values()} == {1, 2, 3}
    exchange = f"{name}-x"
    with channel(cluster.node(1)) as ch:
        ch.exchange_declare(exchange, exchange_type="fanout", durable=True)
        ch.queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})
        ch.queue_bind(name, exchange)
    wait_everywhere(cluster, lambda node, _: bindings_on(node, exchange) == {(exchange, name, name)}, "the binding")
    sent = [f"m-{n}".encode() for n in range(90)]
    with channel(cluster.node(2)) as ch:
        ch.confirm_delivery()
        for n, body in enumerate(sent):
            ch.basic_publish(exchange, f"key-{n}", body, pika.BasicProperties(delivery_mode=2), mandatory=True)

    def in_order(partitions: dict[int, list[bytes]]) -> None:
        assert sorted(b for values in partitions.values() for b in values) == sorted(sent)
        for values in partitions.values():
            assert values == [b for b in sent if b in values], "a partition out of publish order"

    through_node_1 = read(cluster.node(1).bootstrap, name, 3, "read_uncommitted")
    assert all(through_node_1.values()), "the keys reach every partition"
    for node in cluster.nodes:
        in_order(read(node.bootstrap, name, 3, "read_uncommitted"))

    got: list[bytes] = []
    with channel(cluster.node(3)) as ch:
        ch.basic_qos(prefetch_count=100)
        for _, _, body in ch.consume(name, arguments={"x-stream-offset": "first"}, inactivity_timeout=10):
            if body is None:
                break
            got.append(body)
            if len(got) >= len(sent):
                break
        ch.cancel()
    assert sorted(got) == sorted(sent)


def test_deliveries_a_remote_consumer_did_not_ack_are_redelivered_flagged_and_acked_ones_never_return(cluster):
    queue = unique_name("held")
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for n in range(20):
            ch.basic_publish("", queue, f"m-{n}".encode(), pika.BasicProperties(delivery_mode=2))
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")

    # Node 2's consumer gets 5 (its prefetch, which holds), acks the first
    # 3, gets 3 more in their place, and closes holding 5.
    first = Collector(cluster.node(2), queue, prefetch=5, ack=False)
    try:
        first.run_until(lambda: len(first.got) == 5, 20, "5 deliveries on node 2")
        first.connection.process_data_events(time_limit=0.5)
        assert len(first.got) == 5, "the prefetch holds: nothing more before acks"
        for tag in first.held[:3]:
            first.channel.basic_ack(tag)
        first.run_until(lambda: len(first.got) == 8, 20, "3 more once 3 are acked")
        first.connection.process_data_events(time_limit=0.5)
        assert len(first.got) == 8
    finally:
        first.close()
    acked = {body for body, _ in first.got[:3]}
    unacked = {body for body, _ in first.got[3:]}

    second = Collector(cluster.node(3), queue, prefetch=50)
    try:
        second.run_until(lambda: len(second.got) == 17, 20, "the other 17 on node 3")
        second.connection.process_data_events(time_limit=0.5)
    finally:
        second.close()
    bodies = {body for body, _ in second.got}
    assert len(second.got) == 17 and not (bodies & acked), "an acked message came back"
    assert bodies | acked == {f"m-{n}".encode() for n in range(20)}
    flagged = {body for body, redelivered in second.got if redelivered}
    assert flagged == unacked, f"redelivered {flagged}, held unacked {unacked}"


def test_a_remote_consumers_node_dying_returns_its_deliveries_and_its_homes_death_cancels_consumers(fresh_cluster):
    cluster = fresh_cluster
    queue = unique_name("dying")
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for n in range(10):
            ch.basic_publish("", queue, f"m-{n}".encode(), pika.BasicProperties(delivery_mode=2))
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")

    doomed = Collector(cluster.node(3), queue, prefetch=10, ack=False)
    doomed.run_until(lambda: len(doomed.got) == 10, 20, "10 deliveries on node 3")
    cluster.node(3).kill()
    with contextlib.suppress(Exception):
        doomed.close()

    survivor = Collector(cluster.node(2), queue, prefetch=10)
    try:
        survivor.run_until(lambda: len(survivor.got) == 10, 30, "the 10 back, on node 2")
        assert sorted(body for body, _ in survivor.got) == sorted(f"m-{n}".encode() for n in range(10))
        assert all(redelivered for _, redelivered in survivor.got), survivor.got
        # The queue's home dies: the consumer on node 2 is cancelled.
        cluster.node(1).kill()
        survivor.run_until(lambda: survivor.cancelled, 30, "the consumer cancelled")
    finally:
        survivor.close()


def test_a_paused_consumer_node_is_given_up_on_and_its_deliveries_go_to_another_consumer(fresh_cluster):
    """A node paused (SIGSTOP) says nothing on its link: the queue's home
    closes the link after 20 s of silence and requeues what that node's
    consumer held; a consumer on another node gets it, flagged redelivered."""
    cluster = fresh_cluster
    queue = unique_name("paused")
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for n in range(5):
            ch.basic_publish("", queue, f"m-{n}".encode(), pika.BasicProperties(delivery_mode=2))
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")

    frozen = Collector(cluster.node(3), queue, prefetch=5, ack=False)
    frozen.run_until(lambda: len(frozen.got) == 5, 20, "5 deliveries on node 3")
    node3 = cluster.node(3)
    os.kill(node3.proc.pid, signal.SIGSTOP)
    try:
        other = Collector(cluster.node(2), queue, prefetch=5)
        try:
            other.run_until(lambda: len(other.got) == 5, 60, "the 5 back, on node 2")
        finally:
            other.close()
    finally:
        os.kill(node3.proc.pid, signal.SIGCONT)
        with contextlib.suppress(Exception):
            frozen.close()
    assert sorted(body for body, _ in other.got) == [f"m-{n}".encode() for n in range(5)]
    assert all(redelivered for _, redelivered in other.got)


def test_a_message_rejected_on_one_node_is_dead_lettered_into_a_queue_living_on_another(cluster):
    prefix = unique_name("dlx")
    work, dead, dlx = f"{prefix}-work", f"{prefix}-dead", f"{prefix}-dlx"
    with channel(cluster.node(2)) as ch:
        ch.exchange_declare(dlx, exchange_type="fanout", durable=True)
        ch.queue_declare(dead, durable=True)
        ch.queue_bind(dead, dlx, routing_key="")
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(work, durable=True, arguments={"x-dead-letter-exchange": dlx})
    wait_everywhere(
        cluster,
        lambda node, _: {work, dead} <= set(queues_on(node)) and bindings_on(node, dlx) == {(dlx, dead, "")},
        "both queues and the dead-letter binding",
    )
    with channel(cluster.node(3)) as ch:
        ch.confirm_delivery()
        ch.basic_publish("", work, b"poison", pika.BasicProperties(delivery_mode=2))
        method, _, body = ch.basic_get(work)
        assert body == b"poison"
        ch.basic_reject(method.delivery_tag, requeue=False)
    # Rejected through node 3, dead-lettered by node 1, kept by node 2.
    with channel(cluster.node(2)) as ch:

        def dead_lettered():
            method, properties, body = ch.basic_get(dead, auto_ack=True)
            return (body, properties.headers) if method else None

        body, headers = wait_until(dead_lettered, 20, interval=0.2, what="the message in the dead-letter queue")
    assert body == b"poison"
    [death] = headers["x-death"]
    assert (death["queue"], death["reason"], death["count"]) == (work, "rejected", 1), death


def test_a_queue_declared_on_three_nodes_at_once_is_one_queue(cluster):
    """Workers starting together each declare their task queue on their
    own node: the first commit wins, the others take that queue (their
    declarations succeed, their stores go), and every node agrees on its
    home."""
    import threading

    queues = [unique_name(f"race{n}") for n in range(5)]
    errors = []
    start = threading.Barrier(3)

    def declare(node_id):
        try:
            with channel(cluster.node(node_id)) as ch:
                start.wait(10)
                for queue in queues:
                    ch.queue_declare(queue, durable=True)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append((node_id, error))

    threads = [threading.Thread(target=declare, args=(n,)) for n in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors

    def one_home(node, _):
        shown = queues_on(node)
        return all(q in shown for q in queues)

    wait_everywhere(cluster, one_home, "every raced queue")
    for queue in queues:
        views = {n: queues_on(cluster.node(n))[queue] for n in (1, 2, 3)}
        homes = {view["node"] for view in views.values()}
        assert len(homes) == 1, (queue, views)
        [home] = homes
        for n, view in views.items():
            assert view["state"] == ("running" if n == home else "remote"), (queue, n, view)
        # One queue: what each node publishes reaches it.
        for n in (1, 2, 3):
            with channel(cluster.node(n)) as ch:
                ch.confirm_delivery()
                ch.basic_publish("", queue, f"from-{n}".encode(), pika.BasicProperties(delivery_mode=2))
        assert sorted(drain(cluster.node(home), queue, 3)) == [b"from-1", b"from-2", b"from-3"]
