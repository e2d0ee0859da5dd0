"""Quorum queues on a three-node cluster (pika): a quorum queue is a
replicated partition of its own, run by the node leading it (the API's
`node`); the other nodes reach it as a remote queue. A confirmed message
is on a majority of the replicas, so it survives kill -9 of the leader: a
new leader (a live in-sync replica) rebuilds the queue from the partition,
and what was delivered and not acknowledged comes back flagged
redelivered.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pika

from common.broker import unique_name, wait_until
from common.cluster import running_cluster
from test_amqp_definitions import channel, drain, queues_on, wait_everywhere
from test_kafka_cluster import admin
from test_replication import http_get

QUORUM = {"x-queue-type": "quorum"}


def leader_of(node, queue: str) -> int:
    """The node running `queue`, as `node`'s API shows it."""
    return queues_on(node)[queue]["node"]


def publish_confirmed(node, queue: str, bodies: list[bytes], retry_nacks_for: float = 0.0) -> Counter[bytes]:
    """Publishes each body with a confirm; a nack fails, or (after a
    failover, where a publish racing the leader's move is nacked) is sent
    again until `retry_nacks_for` seconds have passed. Returns how often
    each body was sent again: a nack says the broker did not take the
    message on, not that no replica has it (a leader that loses the lead
    while waiting for its followers nacks what the next leader may hold),
    so a body sent again may arrive once more, as with RabbitMQ."""
    deadline = time.monotonic() + retry_nacks_for
    resent: Counter[bytes] = Counter()
    with channel(node) as ch:
        ch.confirm_delivery()
        for body in bodies:
            while True:
                try:
                    ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
                    break
                except pika.exceptions.NackError:
                    if time.monotonic() >= deadline:
                        raise
                    resent[body] += 1
                    time.sleep(0.1)
    return resent


def as_published(got: list[bytes], sent: list[bytes], resent: Counter[bytes]) -> None:
    """`got` holds each of `sent` once, or, for a body sent again after a
    nack, at most once more per resend; and nothing else."""
    counts = Counter(got)
    assert set(counts) == set(sent), f"got {sorted(counts)}, published {sorted(sent)}"
    extra = {body: n for body, n in counts.items() if n > 1 + resent[body]}
    assert not extra, f"delivered more often than published: {extra} (resent after nacks: {dict(resent)})"


def take(node, queue: str, count: int, timeout: float = 20.0) -> list[bytes]:
    """`count` messages got (and acknowledged) from `queue` through `node`."""
    bodies: list[bytes] = []
    with channel(node) as ch:

        def got_them():
            while len(bodies) < count:
                method, _, body = ch.basic_get(queue)
                if method is None:
                    return False
                ch.basic_ack(method.delivery_tag)
                bodies.append(body)
            return True

        wait_until(got_them, timeout, interval=0.1, what=f"{count} messages from {queue}")
    return bodies


def declared(cluster, prefix: str) -> tuple[str, int]:
    """A quorum queue declared on node 1 once every node registered (so
    it has three members), known on every node; its name and leader."""
    cluster.wait_registered(admin)
    queue = unique_name(prefix)
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True, arguments=QUORUM)
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")
    return queue, leader_of(cluster.node(1), queue)


def test_a_quorum_queue_replicates_and_runs_on_its_partitions_leader(cluster):
    cluster.wait_registered(admin)
    queue = unique_name("qq")
    with channel(cluster.node(2)) as ch:
        ch.queue_declare(queue, durable=True, arguments=QUORUM)
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")
    leader = leader_of(cluster.node(1), queue)
    assert leader in (1, 2, 3)
    for node_id in (1, 2, 3):
        seen = queues_on(cluster.node(node_id))[queue]
        assert seen["type"] == "quorum" and seen["node"] == leader, (node_id, seen)
        assert sorted(seen["members"]) == [1, 2, 3], seen
    # Published on every node, confirmed, got from every node.
    sent = [f"{n}-{i}".encode() for n in (1, 2, 3) for i in range(50)]
    for node_id in (1, 2, 3):
        publish_confirmed(cluster.node(node_id), queue, [b for b in sent if b.startswith(f"{node_id}-".encode())])
    got = []
    for node_id in (1, 2, 3):
        got += take(cluster.node(node_id), queue, 50)
    assert sorted(got) == sorted(sent)
    # Its partition is internal: three replicas, a majority needed in sync.
    with channel(cluster.node(3)) as ch:
        ch.queue_delete(queue)
    wait_everywhere(cluster, lambda node, _: queue not in queues_on(node), "the queue gone")


def test_confirmed_messages_survive_kill_9_of_the_leader_and_unacked_ones_come_back_redelivered(fresh_cluster):
    cluster = fresh_cluster
    queue, leader = declared(cluster, "qq-failover")
    others = [n for n in (1, 2, 3) if n != leader]
    publisher, consumer_node = cluster.node(others[0]), cluster.node(others[1])
    sent = [f"m-{i}".encode() for i in range(300)]
    publish_confirmed(publisher, queue, sent)

    # Ten delivered and not acknowledged when the leader dies.
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=consumer_node.amqp_port,
            credentials=pika.PlainCredentials("guest", "guest"),
        )
    )
    unacked = []
    try:
        ch = connection.channel()
        for _ in range(10):
            method, _, body = ch.basic_get(queue)
            assert method is not None and not method.redelivered
            unacked.append(body)
        cluster.node(leader).kill()
        killed = time.monotonic()
        wait_until(
            lambda: all(leader_of(node, queue) not in (leader, -1) for node in (publisher, consumer_node)),
            30,
            interval=0.2,
            what="a new leader of the quorum queue, known on both live nodes",
        )
        took = time.monotonic() - killed
    finally:
        if connection.is_open:
            connection.close()
    assert took < 15, f"the new leader took {took:.1f} s"

    # Every confirmed message is there; the ten come back flagged.
    got: dict[bytes, bool] = {}
    with channel(consumer_node) as ch:

        def drained():
            while True:
                method, _, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    return len(got) >= len(sent)
                assert body not in got, f"{body!r} delivered twice"
                got[body] = method.redelivered

        wait_until(drained, 30, interval=0.2, what=f"{len(sent)} messages from the new leader")
    assert sorted(got) == sorted(sent)
    assert all(got[body] for body in unacked), "unacknowledged messages come back redelivered"

    # The old leader returns as a follower; confirms go on through it.
    new_leader = leader_of(publisher, queue)
    cluster.node(leader).start()
    wait_until(
        lambda: leader_of(cluster.node(leader), queue) == new_leader,
        30,
        interval=0.2,
        what="the returning node following the new leader",
    )
    publish_confirmed(cluster.node(leader), queue, [b"after"])
    assert drain(cluster.node(leader), queue, 1) == [b"after"]


def test_a_consumer_on_another_node_goes_on_through_a_failover(fresh_cluster):
    """A consumer on a node that survives keeps its subscription when the
    leader is killed: no basic.cancel, and what is published afterwards
    reaches it from the new leader."""
    cluster = fresh_cluster
    queue, leader = declared(cluster, "qq-consumer")
    publisher, consumer_node = [cluster.node(n) for n in (1, 2, 3) if n != leader]

    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=consumer_node.amqp_port,
            credentials=pika.PlainCredentials("guest", "guest"),
        )
    )
    try:
        ch = connection.channel()
        ch.basic_qos(prefetch_count=10)
        got: list[bytes] = []
        cancelled = []
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))

        def on_message(channel_, method, _properties, body):
            got.append(body)
            channel_.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_message)

        def received(count: int, timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while len(set(got)) < count and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.2)
            assert len(set(got)) >= count, f"{len(set(got))} of {count} {what}"

        before = [f"before-{i}".encode() for i in range(100)]
        publish_confirmed(publisher, queue, before)
        received(100, 20, "before the kill")

        cluster.node(leader).kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and leader_of(publisher, queue) in (leader, -1):
            connection.process_data_events(time_limit=0.2)
        assert leader_of(publisher, queue) not in (leader, -1), "no new leader"
        after = [f"after-{i}".encode() for i in range(100)]
        publish_confirmed(publisher, queue, after, retry_nacks_for=20)
        received(200, 30, "in all, through the failover")
    finally:
        if connection.is_open:
            connection.close()
    assert not cancelled, "the consumer was cancelled"
    assert set(before + after) <= set(got)


def consuming(node, queue: str, prefetch: int, ack: bool, exclusive: bool = False):
    """A pika connection to `node` consuming `queue` with manual acks
    (`exclusive`: as the queue's exclusive consumer): (connection,
    channel, deliveries as (delivery tag, body, redelivered),
    cancellations). Acknowledges each delivery at once when `ack`."""
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=node.amqp_port,
            credentials=pika.PlainCredentials("guest", "guest"),
        )
    )
    ch = connection.channel()
    ch.basic_qos(prefetch_count=prefetch)
    deliveries: list[tuple[int, bytes, bool]] = []
    cancelled: list = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))

    def on_message(channel_, method, _properties, body):
        deliveries.append((method.delivery_tag, body, method.redelivered))
        if ack:
            channel_.basic_ack(method.delivery_tag)

    ch.basic_consume(queue, on_message, exclusive=exclusive)
    return connection, ch, deliveries, cancelled


def pump(connection, until, timeout: float, what: str) -> None:
    """Runs `connection`'s events until `until()` holds (at most `timeout`
    seconds)."""
    deadline = time.monotonic() + timeout
    held = until()
    while not held and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.2)
        held = until()
    assert held, what


def linger(connection, seconds: float = 3.0) -> None:
    """Runs `connection`'s events for `seconds`: anything acknowledged
    coming back would arrive by then."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        connection.process_data_events(time_limit=0.2)


def none_came_back(deliveries, acked: list[bytes], after: list[bytes], resent: Counter[bytes], cancelled) -> None:
    """After the `acked` messages, the consumer got exactly `after` (see
    `as_published`): none of those it acknowledged came back, and it was
    never cancelled."""
    later = [body for _, body, _ in deliveries[len(acked):]]
    back = [body for body in later if body in acked]
    assert not back, f"{len(back)} acknowledged messages came back, e.g. {back[:3]}"
    as_published(later, after, resent)
    assert not cancelled, "the consumer was cancelled"


def publish_and_take(
    publisher, queue: str, connection, ch, deliveries, count: int
) -> tuple[list[bytes], Counter[bytes]]:
    """Publishes `count` messages after a fault (nacks retried while the
    leader settles), waits for the consumer to get them, acknowledges
    them and lingers; returns their bodies and how often each was sent
    again."""
    after = [f"after-{i}".encode() for i in range(count)]
    first = len(deliveries)
    resent = publish_confirmed(publisher, queue, after, retry_nacks_for=20)
    pump(
        connection,
        lambda: {body for _, body, _ in deliveries[first:]} >= set(after),
        30,
        "the messages published after the fault",
    )
    for tag, _, _ in deliveries[first:]:
        ch.basic_ack(tag)
    linger(connection)
    return after, resent


def acks_across(cluster, prefix: str, fault, consumer_not_next: bool = False) -> None:
    """20 messages delivered to a consumer on a node that does not lead
    the queue (`consumer_not_next`: nor is elected next, the other
    being the first in-sync replica), then `fault(leader, publisher,
    connection, ch, deliveries)` (which acknowledges them and waits for
    the queue to be led again); then 10 more published and delivered:
    none acknowledged comes back."""
    queue, leader = declared(cluster, prefix)
    publisher, consumer_node = [cluster.node(n) for n in (1, 2, 3) if n != leader]
    if consumer_not_next:
        in_sync = [n for n in queues_on(publisher)[queue]["online"] if n != leader]
        assert len(in_sync) == 2, in_sync
        publisher, consumer_node = cluster.node(in_sync[0]), cluster.node(in_sync[1])
    held = [f"held-{i}".encode() for i in range(20)]
    publish_confirmed(publisher, queue, held)
    connection, ch, deliveries, cancelled = consuming(consumer_node, queue, prefetch=20, ack=False)
    try:
        pump(connection, lambda: len(deliveries) >= 20, 20, "20 deliveries before the fault")
        fault(queue, leader, publisher, connection, ch, deliveries)
        after, resent = publish_and_take(publisher, queue, connection, ch, deliveries, 10)
    finally:
        if connection.is_open:
            connection.close()
    none_came_back(deliveries, held, after, resent, cancelled)


def test_an_exclusive_consumer_the_leader_refuses_is_cancelled_at_its_client(cluster):
    """A second exclusive consumer of a quorum queue, through a node that
    does not lead it, is refused by the leader (the first holds the
    queue): its client gets basic.cancel at once rather than waiting for
    another leader; the first goes on consuming."""
    queue, leader = declared(cluster, "qq-exclusive")
    first_node, second_node = [cluster.node(n) for n in (1, 2, 3) if n != leader]
    first, first_ch, got, first_cancelled = consuming(first_node, queue, prefetch=10, ack=True, exclusive=True)
    second = None
    try:
        wait_until(
            lambda: queues_on(cluster.node(leader))[queue]["consumers"] == 1,
            20,
            what="the first exclusive consumer on the leader",
        )
        second, _, second_got, second_cancelled = consuming(
            second_node, queue, prefetch=10, ack=True, exclusive=True
        )
        pump(second, lambda: bool(second_cancelled), 10, "the refused exclusive consumer cancelled")
        publish_confirmed(second_node, queue, [b"one"])
        pump(first, lambda: [body for _, body, _ in got] == [b"one"], 20, "the first consumer's delivery")
        assert not second_got and not first_cancelled
    finally:
        for connection in (first, second):
            if connection is not None and connection.is_open:
                connection.close()


def test_a_consumer_of_a_deleted_queue_is_cancelled_when_another_takes_its_name(cluster):
    """A consumer, on a node that does not lead its quorum queue, of a
    queue deleted and at once declared again under its name: cancelled,
    as RabbitMQ does on a deletion, and never a consumer of the new
    queue (which it did not subscribe to), even though its node lost it
    as a quorum queue's consumer that waits for the next leader."""
    queue, leader = declared(cluster, "qq-renamed")
    node = cluster.node(next(n for n in (1, 2, 3) if n != leader))
    connection, _, deliveries, cancelled = consuming(node, queue, prefetch=10, ack=True)
    try:
        wait_until(
            lambda: queues_on(cluster.node(leader))[queue]["consumers"] == 1,
            20,
            what="the consumer on the leader",
        )
        with channel(cluster.node(leader)) as ch:
            ch.queue_delete(queue)
            ch.queue_declare(queue, durable=True, arguments=QUORUM)
        pump(connection, lambda: bool(cancelled), 20, "the consumer of the deleted queue cancelled")
        publish_confirmed(cluster.node(leader), queue, [b"for the new queue"], retry_nacks_for=20)
        linger(connection, 2.0)
        assert not deliveries, deliveries
    finally:
        if connection.is_open:
            connection.close()
    assert take(cluster.node(leader), queue, 1) == [b"for the new queue"]


def test_acks_made_as_the_leader_dies_do_not_bring_messages_back(fresh_cluster):
    """A consumer on a surviving node acknowledges deliveries just after
    the queue's leader is killed (the acks cannot reach it): its node
    hands them to the new leader, so nothing acknowledged comes back;
    what is published afterwards arrives, once."""
    cluster = fresh_cluster

    def kill_then_ack(queue, leader, publisher, connection, ch, deliveries):
        cluster.node(leader).kill()
        # Acknowledged after the kill: the former leader never sees these.
        ch.basic_ack(deliveries[-1][0], multiple=True)
        pump(connection, lambda: leader_of(publisher, queue) not in (leader, -1), 30, "a new leader")

    acks_across(cluster, "qq-acks-kill", kill_then_ack)


def test_acks_made_while_a_new_leader_rebuilds_the_queue_do_not_bring_messages_back(tmp_path, request):
    """The queue's leader is killed and, once another leads, the consumer
    (on a node that did not lead) acknowledges what the first one
    delivered while the new leader (the publisher's node) is between
    reading the queue from its partition and running it (held there 4 s
    by SLUICE_TEST_QUORUM_REBUILD_PAUSE_MS): those settlements find no
    instance running yet, and the instance settles them as it starts.
    Nothing acknowledged comes back."""
    with running_cluster(
        tmp_path,
        name=f"cluster[{request.node.name}]",
        env={"SLUICE_TEST_QUORUM_REBUILD_PAUSE_MS": "4000"},
    ) as cluster:

        def kill_lead_then_ack(queue, leader, publisher, connection, ch, deliveries):
            cluster.node(leader).kill()
            # Fenced, in the controller pass that elects the next leader
            # (the queue's listing shows the node running it, which the
            # new one is not until its pause ends).
            pump(
                connection,
                lambda: leader not in queues_on(publisher)[queue]["online"],
                30,
                "the leader fenced",
            )
            # Past the new leader's read of the partition (its next
            # follower pass, 200 ms), well inside its 4 s pause.
            linger(connection, 1.0)
            ch.basic_ack(deliveries[-1][0], multiple=True)
            pump(connection, lambda: leader_of(publisher, queue) not in (leader, -1), 30, "a new leader")

        acks_across(cluster, "qq-acks-rebuild", kill_lead_then_ack, consumer_not_next=True)


def holding_through(cluster, prefix: str, consumer_on_leader: bool, fault) -> None:
    """Ten deliveries held unacknowledged by a consumer (on the queue's
    leader's node, or on another than the publisher's) while
    `fault(queue, leader, publisher, connection)` changes the leader and
    waits for it: none is delivered again; then five acknowledged never
    come back and five requeued come back once each, flagged; five
    published afterwards arrive; the consumer is never cancelled."""
    queue, leader = declared(cluster, prefix)
    others = [cluster.node(n) for n in (1, 2, 3) if n != leader]
    publisher = others[0]
    consumer_node = cluster.node(leader) if consumer_on_leader else others[1]
    held = [f"held-{i}".encode() for i in range(10)]
    publish_confirmed(publisher, queue, held)
    connection, ch, deliveries, cancelled = consuming(consumer_node, queue, prefetch=50, ack=False)
    try:
        pump(connection, lambda: len(deliveries) >= 10, 20, "10 deliveries before the fault")
        fault(queue, leader, publisher, connection)
        # Past a new leader's wait for settlements and the consumer's
        # registration with it: a delivery again would have come by now.
        linger(connection, 4.0)
        again = [body for _, body, _ in deliveries[10:]]
        assert not again, f"delivered again what the consumer holds: {again}"
        tags = {body: tag for tag, body, _ in deliveries[:10]}
        for body in held[:5]:
            ch.basic_ack(tags[body])
        for body in held[5:]:
            ch.basic_nack(tags[body], requeue=True)
        pump(connection, lambda: len(deliveries) >= 15, 20, "the five requeued messages back")
        for tag, _, _ in deliveries[10:]:
            ch.basic_ack(tag)
        after, resent = publish_and_take(publisher, queue, connection, ch, deliveries, 5)
    finally:
        if connection.is_open:
            connection.close()
    bodies = [body for _, body, _ in deliveries]
    assert sorted(bodies[10:15]) == sorted(held[5:]), bodies
    assert all(redelivered for _, _, redelivered in deliveries[10:15]), "requeued messages come back flagged"
    as_published(bodies[15:], after, resent)
    assert not cancelled, "the consumer was cancelled"


def test_unacknowledged_deliveries_stay_with_their_consumer_through_a_failover(fresh_cluster):
    """A consumer on a surviving node holds ten deliveries while the
    queue's leader is killed: the new leader does not deliver them again
    (the consumer's node tells it what its clients hold), and they are
    settled through it (holding_through)."""
    cluster = fresh_cluster

    def kill(queue, leader, publisher, connection):
        cluster.node(leader).kill()
        pump(connection, lambda: leader_of(publisher, queue) not in (leader, -1), 30, "a new leader")

    holding_through(cluster, "qq-hold", consumer_on_leader=False, fault=kill)


def test_a_cut_off_leaders_own_clients_keep_their_deliveries(proxied_cluster):
    """A consumer on the queue's leader's node holds ten deliveries while
    that node is cut off (another leads) and the cut heals: neither the
    other leader nor the first one leading again (a new instance, its
    former instance retired with what its clients hold) delivers them
    again, and they are settled through it (holding_through)."""
    cluster = proxied_cluster

    def cut_and_heal(queue, leader, publisher, connection):
        cluster.isolate(leader)
        pump(connection, lambda: leader_of(publisher, queue) not in (leader, -1), 30, "another leader")
        cluster.heal()
        pump(
            connection,
            lambda: all(leader_of(cluster.node(n), queue) == leader for n in (1, 2, 3)),
            60,
            "the first leader leading again after the cut",
        )

    holding_through(cluster, "qq-hold-own", consumer_on_leader=True, fault=cut_and_heal)


def test_acks_lost_with_a_leader_that_comes_back_leading_do_not_bring_messages_back(tmp_path, request):
    """The queue's leader is paused, the consumer (on another node)
    acknowledges what it got (the acks wait unread on the leader's
    socket), and the leader is killed and started again at once: it
    comes back leading in the same epoch (the controller never saw it
    go, its session timeout being long), without those acks. The
    consumer's node saw its link to the leader fail, so it hands its
    acks to the leader again ahead of its consumer: nothing acknowledged
    comes back."""
    with running_cluster(
        tmp_path,
        name=f"cluster[{request.node.name}]",
        settings={"cluster.session_timeout": "60s"},
    ) as cluster:

        def pause_ack_restart(queue, leader, publisher, connection, ch, deliveries):
            node = cluster.node(leader)
            os.kill(node.proc.pid, signal.SIGSTOP)
            ch.basic_ack(deliveries[-1][0], multiple=True)
            # The consumer's node relays the acks to the paused leader.
            linger(connection, 1.0)
            node.kill()
            node.start()
            pump(
                connection,
                lambda: all(leader_of(cluster.node(n), queue) == leader for n in (1, 2, 3)),
                30,
                "the same leader on every node",
            )

        acks_across(cluster, "qq-acks-back", pause_ack_restart)


def test_a_basic_get_acked_as_the_leader_dies_does_not_come_back(fresh_cluster):
    """As for consumers, for `basic.get` through another node: messages got
    before kill -9 of the leader and acknowledged after it stay settled."""
    cluster = fresh_cluster
    queue, leader = declared(cluster, "qq-acks-get")
    publisher, getter = [cluster.node(n) for n in (1, 2, 3) if n != leader]
    held = [f"held-{i}".encode() for i in range(10)]
    publish_confirmed(publisher, queue, held)
    with channel(getter) as ch:
        tags = []
        for _ in range(10):
            method, _, body = ch.basic_get(queue)
            assert method is not None and body in held
            tags.append(method.delivery_tag)
        cluster.node(leader).kill()
        ch.basic_ack(tags[-1], multiple=True)
        wait_until(lambda: leader_of(publisher, queue) not in (leader, -1), 30, what="a new leader")
        after = [f"after-{i}".encode() for i in range(5)]
        resent = publish_confirmed(publisher, queue, after, retry_nacks_for=20)
    time.sleep(1.5)
    got = take(getter, queue, 5)
    # Then whatever else is there: nothing acknowledged, once again at
    # most what was sent again.
    as_published(got + drain(getter, queue, 0), after, resent)


def test_acks_on_a_cut_off_leader_do_not_bring_messages_back(proxied_cluster):
    """A consumer on the queue's leader goes on consuming there while the
    leader is cut off from the others (which elect another); once healed,
    the former leader's log loses what it wrote alone, acknowledgements
    included, and hands them to the new leader: nothing acknowledged comes
    back, and the consumer goes on with the new leader."""
    cluster = proxied_cluster
    queue, leader = declared(cluster, "qq-acks-cut")
    others = [cluster.node(n) for n in (1, 2, 3) if n != leader]
    first = [f"first-{i}".encode() for i in range(50)]
    publish_confirmed(others[0], queue, first)
    wait_until(
        lambda: queues_on(cluster.node(leader))[queue]["messages"] == 50,
        20,
        what="the 50 messages on the leader",
    )
    cluster.isolate(leader)
    connection = None
    try:
        connection, ch, deliveries, cancelled = consuming(cluster.node(leader), queue, prefetch=100, ack=True)
        # The cut-off leader still runs the queue and delivers what it has.
        pump(connection, lambda: len(deliveries) >= 50, 20, "the 50 messages from the cut-off leader")
        # The others elect a new leader meanwhile.
        pump(connection, lambda: leader_of(others[0], queue) not in (leader, -1), 30, "a new leader")
        cluster.heal()
        # Once healed, the controller may hand the leadership back to the
        # preferred (former) leader at a later epoch: what matters is that
        # the former leader agrees with the others on who leads.
        pump(
            connection,
            lambda: leader_of(cluster.node(leader), queue) == leader_of(others[0], queue) != -1,
            30,
            "the former leader agreeing with the others on the leader",
        )
        after = [f"after-{i}".encode() for i in range(10)]
        resent = publish_confirmed(others[0], queue, after, retry_nacks_for=20)
        pump(
            connection,
            lambda: {body for _, body, _ in deliveries[50:]} >= set(after),
            30,
            "the messages published after healing",
        )
        linger(connection)
    finally:
        if connection is not None and connection.is_open:
            connection.close()
    none_came_back(deliveries, first, after, resent, cancelled)


def test_late_acks_for_a_former_instance_do_not_settle_the_next_ones_deliveries(proxied_cluster):
    """A consumer on another node holds deliveries of the queue's leader;
    the leader is cut off briefly (the others lead meanwhile, holding
    them for the consumer, and the consumer's link to it stays open),
    then leads again with a new
    instance of the queue, which delivers a fresh message. The consumer
    then acknowledges the first instance's deliveries: those acks must
    not settle the fresh message (each instance numbers its deliveries
    apart), which comes back once the consumer leaves without acking it."""
    cluster = proxied_cluster
    queue, leader = declared(cluster, "qq-late-acks")
    consumer_node, publisher = [cluster.node(n) for n in (1, 2, 3) if n != leader]
    old = [f"old-{i}".encode() for i in range(5)]
    publish_confirmed(publisher, queue, old)
    connection, ch, deliveries, _ = consuming(consumer_node, queue, prefetch=50, ack=False)
    try:
        pump(connection, lambda: len(deliveries) >= 5, 20, "the first instance's deliveries")
        first = [tag for tag, _, _ in deliveries[:5]]
        cluster.isolate(leader)
        pump(connection, lambda: leader_of(publisher, queue) not in (leader, -1), 30, "another leader")
        pump(connection, lambda: leader_of(consumer_node, queue) not in (leader, -1), 30,
             "the other leader known on the consumer's node")
        # The other leader holds them for the consumer (not delivered
        # again), past its wait and the consumer's registration.
        linger(connection, 3.0)
        assert len(deliveries) == 5, deliveries
        cluster.heal()
        # The preferred leader leads again, with a new instance.
        pump(
            connection,
            lambda: all(leader_of(cluster.node(n), queue) == leader for n in (1, 2, 3)),
            60,
            "the first leader leading again",
        )
        resent = publish_confirmed(publisher, queue, [b"fresh"], retry_nacks_for=20)
        pump(connection, lambda: any(body == b"fresh" for _, body, _ in deliveries), 30, "the fresh message")
        # Late: the first instance's deliveries.
        for tag in first:
            ch.basic_ack(tag)
        linger(connection, 1.0)
    finally:
        if connection.is_open:
            connection.close()
    # Left unacknowledged: the fresh message is ready again, and only it.
    got = take(publisher, queue, 1)
    assert got == [b"fresh"], f"a first delivery acknowledged late is still in the queue: {got}"
    as_published(got + drain(publisher, queue, 0), [b"fresh"], resent)


def high_watermark(node, topic: str) -> int | None:
    """A partition's high watermark on one node (its /metrics)."""
    wanted = f'sluice_kafka_partition_high_watermark{{topic="{topic}",partition="0"}}'
    for line in http_get(node, "/metrics", raw=True).splitlines():
        if line.startswith(wanted + " "):
            return int(float(line.split()[-1]))
    return None


def test_delivery_counts_survive_a_failover_and_the_limit_holds(fresh_cluster):
    """A message nacked twice on the leader (x-delivery-limit 2) comes from
    the new leader after kill -9 with x-delivery-count 2, and one more
    return dead-letters it (reason delivery_limit), as on one node. The
    quorum queue's metrics show its leader, epoch and replication."""
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    queue = unique_name("qq-poison")
    dead = f"{queue}-dead"
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(
            queue,
            durable=True,
            arguments={
                **QUORUM,
                "x-delivery-limit": 2,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead,
            },
        )
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")
    leader = leader_of(cluster.node(1), queue)
    consumer_node = cluster.node(next(n for n in (1, 2, 3) if n != leader))
    # The dead-letter target is a classic queue: its home (the node that
    # declares it) must not be the leader killed below.
    with channel(consumer_node) as ch:
        ch.queue_declare(dead, durable=True)
    wait_everywhere(cluster, lambda node, _: dead in queues_on(node), "the dead-letter queue")
    publish_confirmed(consumer_node, queue, [b"poison"])

    def get_one(ch):
        got = []
        wait_until(lambda: got.append(ch.basic_get(queue)) or got[-1][0] is not None, 30, interval=0.1, what="the message")
        return got[-1]

    with channel(consumer_node) as ch:
        # basic.get counts from 0, as RabbitMQ 3.10 does.
        for expected in (0, 1):
            method, properties, body = get_one(ch)
            assert body == b"poison"
            assert (properties.headers or {}).get("x-delivery-count") == expected, properties.headers
            ch.basic_nack(method.delivery_tag, requeue=True)
    # The message and both counts are on every replica (each node's high
    # watermark covers the three records).
    [topic] = [
        p["topic"]
        for p in http_get(cluster.node(1), "/api/cluster")["partitions"]
        if p["topic"].startswith(f"__amqp_quorum.{queue}")
    ]
    wait_everywhere(cluster, lambda node, _: (high_watermark(node, topic) or 0) >= 3, "the counts replicated")

    # /metrics: every node knows the leader and its epoch; the leader's
    # node has nothing left to replicate.
    label = f'{{vhost="/",queue="{queue}"}}'

    def metric(node, name: str) -> float | None:
        for line in http_get(node, "/metrics", raw=True).splitlines():
            if line.startswith(f"{name}{label} "):
                return float(line.split()[-1])
        return None

    # A loaded machine can drop a follower from the in-sync set for a
    # moment: the metrics are waited for, not read once.
    wait_until(
        lambda: metric(consumer_node, "sluice_amqp_quorum_queue_leader") == leader
        and metric(consumer_node, "sluice_amqp_quorum_queue_members_online") == 3
        and metric(cluster.node(leader), "sluice_amqp_quorum_queue_unreplicated_records") == 0,
        30,
        interval=0.2,
        what="the leader, three members online and nothing left to replicate in /metrics",
    )
    epoch = metric(consumer_node, "sluice_amqp_quorum_queue_leader_epoch")
    assert epoch is not None
    assert metric(consumer_node, "sluice_amqp_quorum_queue_unreplicated_records") is None

    cluster.node(leader).kill()
    wait_until(
        lambda: leader_of(consumer_node, queue) not in (leader, -1),
        30,
        interval=0.2,
        what="a new leader of the quorum queue",
    )
    assert metric(consumer_node, "sluice_amqp_quorum_queue_leader_epoch") > epoch
    deadline = time.monotonic() + 30
    while True:
        try:
            with channel(consumer_node) as ch:
                method, properties, body = get_one(ch)
                assert body == b"poison" and method.redelivered
                assert (properties.headers or {}).get("x-delivery-count") == 2, properties.headers
                ch.basic_nack(method.delivery_tag, requeue=True)
            break
        except pika.exceptions.ChannelClosedByBroker as error:
            # The node still sent the get to the killed leader (it follows
            # the new one within 200 ms): NOT_FOUND, asked again.
            assert error.reply_code == 404 and time.monotonic() < deadline, error
            time.sleep(0.2)
    [(headers, body)] = [(h, b) for h, b in drain_with_headers(consumer_node, dead, 1)]
    assert body == b"poison"
    assert headers["x-first-death-reason"] == "delivery_limit", headers
    cluster.node(leader).start()


def drain_with_headers(node, queue: str, count: int) -> list[tuple[dict, bytes]]:
    got: list[tuple[dict, bytes]] = []
    with channel(node) as ch:

        def took():
            while len(got) < count:
                method, properties, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    return False
                got.append((properties.headers or {}, body))
            return True

        wait_until(took, 30, interval=0.1, what=f"{count} messages from {queue}")
    return got


def follower_of(cluster, queue: str) -> int:
    leader = leader_of(cluster.node(1), queue)
    return next(n for n in (1, 2, 3) if n != leader)


def test_length_limits_ttl_and_single_active_consumer_hold_through_other_nodes(cluster):
    """A quorum queue's own rules hold for clients on nodes that do not
    lead it: reject-publish nacks what is over x-max-length, drop-head
    dead-letters the oldest, an expired message dies as expired, and a
    single active consumer on one node keeps the other node's waiting
    until it goes."""
    cluster.wait_registered(admin)
    dead = unique_name("qq-rules-dead")
    full, dropping, expiring, single = (unique_name(f"qq-{kind}") for kind in ("full", "drop", "ttl", "sac"))
    dlx = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(dead, durable=True)
        ch.queue_declare(full, durable=True, arguments={**QUORUM, "x-max-length": 5, "x-overflow": "reject-publish"})
        ch.queue_declare(dropping, durable=True, arguments={**QUORUM, "x-max-length": 5, **dlx})
        ch.queue_declare(expiring, durable=True, arguments={**QUORUM, "x-message-ttl": 200, **dlx})
        ch.queue_declare(single, durable=True, arguments={**QUORUM, "x-single-active-consumer": True})
    names = (full, dropping, expiring, single)
    wait_everywhere(cluster, lambda node, _: all(q in queues_on(node) for q in names), "the queues")

    # reject-publish: the sixth to eighth are nacked to a publisher on
    # another node.
    outcomes = []
    with channel(cluster.node(follower_of(cluster, full))) as ch:
        ch.confirm_delivery()
        for i in range(8):
            try:
                ch.basic_publish("", full, f"f-{i}".encode(), pika.BasicProperties(delivery_mode=2))
                outcomes.append(True)
            except pika.exceptions.NackError:
                outcomes.append(False)
    assert outcomes == [True] * 5 + [False] * 3, outcomes
    assert sorted(take(cluster.node(1), full, 5)) == [f"f-{i}".encode() for i in range(5)]

    # drop-head: the three oldest are dead-lettered with reason maxlen.
    publish_confirmed(cluster.node(follower_of(cluster, dropping)), dropping, [f"d-{i}".encode() for i in range(8)])
    assert take(cluster.node(2), dropping, 5) == [f"d-{i}".encode() for i in range(3, 8)]
    deaths = drain_with_headers(cluster.node(3), dead, 3)
    assert [body for _, body in deaths] == [f"d-{i}".encode() for i in range(3)]
    assert all(headers["x-first-death-reason"] == "maxlen" for headers, _ in deaths), deaths

    # TTL: dead-lettered as expired, nothing left.
    publish_confirmed(cluster.node(follower_of(cluster, expiring)), expiring, [b"short-lived"])
    [(headers, body)] = drain_with_headers(cluster.node(1), dead, 1)
    assert body == b"short-lived" and headers["x-first-death-reason"] == "expired", headers

    # Single active consumer over two nodes: the first takes everything
    # until it cancels, then the second does.
    others = [n for n in (1, 2, 3) if n != leader_of(cluster.node(1), single)]
    got: dict[int, list[bytes]] = {others[0]: [], others[1]: []}
    connections = {n: pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=cluster.node(n).amqp_port,
        credentials=pika.PlainCredentials("guest", "guest"))) for n in others}
    try:
        channels = {n: connections[n].channel() for n in others}
        tags = {}
        leader_node = cluster.node(leader_of(cluster.node(1), single))
        for count, n in enumerate(others, start=1):
            tags[n] = channels[n].basic_consume(
                single, lambda ch, method, _p, body, n=n: (got[n].append(body), ch.basic_ack(method.delivery_tag)))
            # The first registered at the leader is the active one: the
            # second registers once the leader counts the first.
            wait_until(lambda count=count: queues_on(leader_node)[single]["consumers"] >= count, 20,
                       interval=0.05, what=f"consumer {count} at the leader")

        def pump(until) -> None:
            def step():
                for n in others:
                    connections[n].process_data_events(time_limit=0.02)
                return until()
            wait_until(step, 20, interval=0.01, what="deliveries")

        publish_confirmed(cluster.node(1), single, [f"s-{i}".encode() for i in range(10)])
        pump(lambda: len(got[others[0]]) == 10)
        assert got[others[1]] == []
        channels[others[0]].basic_cancel(tags[others[0]])
        publish_confirmed(cluster.node(1), single, [f"t-{i}".encode() for i in range(10)])
        pump(lambda: len(got[others[1]]) == 10)
        assert got[others[1]] == [f"t-{i}".encode() for i in range(10)]
    finally:
        for connection in connections.values():
            if connection.is_open:
                connection.close()


def test_a_held_dead_letter_survives_a_failover_and_reaches_its_target(fresh_cluster):
    """At least once: a message rejected while its dead-letter exchange
    routes nowhere is held by the quorum queue; after kill -9 of the leader
    the new one holds it too (not delivered to the queue's consumers), and
    it reaches the target queue bound afterwards."""
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    queue = unique_name("qq-held")
    dlx, target = f"{queue}-dlx", f"{queue}-target"
    with channel(cluster.node(1)) as ch:
        ch.exchange_declare(dlx, "fanout", durable=True)
        ch.queue_declare(queue, durable=True, arguments={
            **QUORUM, "x-dead-letter-exchange": dlx, "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish"})
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")
    leader = leader_of(cluster.node(1), queue)
    other = cluster.node(next(n for n in (1, 2, 3) if n != leader))
    publish_confirmed(other, queue, [b"precious"])
    with channel(other) as ch:
        got = []
        wait_until(lambda: got.append(ch.basic_get(queue)) or got[-1][0] is not None, 30, interval=0.1,
                   what="the message")
        ch.basic_reject(got[-1][0].delivery_tag, requeue=False)
    # The message and its held mark are on every replica.
    [topic] = [
        p["topic"]
        for p in http_get(cluster.node(1), "/api/cluster")["partitions"]
        if p["topic"].startswith(f"__amqp_quorum.{queue}")
    ]
    wait_everywhere(cluster, lambda node, _: (high_watermark(node, topic) or 0) >= 2, "the held mark replicated")

    cluster.node(leader).kill()
    wait_until(lambda: leader_of(other, queue) not in (leader, -1), 30, interval=0.2, what="a new leader")
    deadline = time.monotonic() + 30
    while True:
        try:
            with channel(other) as ch:
                method, _, _ = ch.basic_get(queue, auto_ack=True)
                assert method is None, "a held dead letter is not delivered to the queue's consumers"
                ch.queue_declare(target, durable=True)
                ch.queue_bind(target, dlx)
            break
        except pika.exceptions.ChannelClosedByBroker as error:
            assert error.reply_code == 404 and time.monotonic() < deadline, error
            time.sleep(0.2)
    [(headers, body)] = drain_with_headers(other, target, 1)
    assert body == b"precious" and headers["x-first-death-reason"] == "rejected", headers
    cluster.node(leader).start()
