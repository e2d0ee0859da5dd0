"""The order flow: one Kafka topic and one set of AMQP exchanges and queues
on the same Sluice broker, driven by the services of a small shop.

    order service ──Kafka──▶ topic orders (3 partitions, key = order id)
        │                        ├─▶ group payment-service (2 members)
        │                        │       └─AMQP─▶ exchange payments (topic)
        │                        │                  payment.completed.<region>
        │                        │                   ├─ payment.completed.* ─▶ queue notifications
        │                        │                   │     2 workers, prefetch 1, manual acks;
        │                        │                   │     rejected ─▶ exchange notifications-dlx
        │                        │                   │                 ─▶ queue notifications-dead
        │                        │                   └─ payment.#           ─▶ queue audit (auditor)
        │                        ├─▶ group notification-service (1 member)
        │                        └─▶ stream queue orders (AMQP, x-stream-offset first)

Every service runs in a thread of this one program with connections of its
own. Each run has a run id carried in every event, so a broker that kept
records, offsets or messages from earlier runs is fine: only this run's
events are counted. The dead-letter queue is purged at the start and left
full at the end, for a look at its messages and their x-death headers.

Exit codes: 0 every count matched, 1 a count did not (or a service failed),
2 the setup failed (broker unreachable, a topic or queue of another shape).
Every loop is bounded by a count and by the run's deadline.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pika
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "orders"
PARTITIONS = 3
PAYMENT_GROUP = "payment-service"
NOTIFICATION_GROUP = "notification-service"
PAYMENT_MEMBERS = 2
EXCHANGE = "payments"
DLX = "notifications-dlx"
NOTIFICATIONS = "notifications"
AUDIT = "audit"
DEAD = "notifications-dead"
NOTIFY_WORKERS = 2
REGIONS = ("eu", "us", "ap")
# Every order whose sequence number is divisible by this is rejected by
# the notification workers (requeue=False) and dead-lettered.
REJECT_EVERY = 10

# How long the consumer groups may take to join before orders are produced.
GROUP_READY_TIMEOUT_S = 30.0
# How long one client call (create topic, flush, poll) may block.
CLIENT_TIMEOUT_S = 15.0
# How long dead letters may take to reach their queue once the workers stop.
DEAD_LETTER_WAIT_S = 10.0
POLL_S = 0.2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class SetupError(Exception):
    """The broker is unreachable or holds an object of another shape."""


@dataclass
class Tally:
    """Counts shared by the service threads; every field is changed under
    `lock` only."""

    orders: int
    run: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    produced: Counter = field(default_factory=Counter)  # partition -> records
    produce_errors: list = field(default_factory=list)
    # group -> set of sequence numbers read (after their offsets were committed)
    group_seen: dict = field(default_factory=lambda: {PAYMENT_GROUP: set(), NOTIFICATION_GROUP: set()})
    group_members: Counter = field(default_factory=Counter)  # member -> events of this run
    assignments: dict = field(default_factory=dict)  # member -> partitions assigned now
    payments: Counter = field(default_factory=Counter)  # region -> published and confirmed
    payment_seqs: set = field(default_factory=set)
    notified: Counter = field(default_factory=Counter)  # worker -> acked
    rejected: Counter = field(default_factory=Counter)  # worker -> rejected
    notify_seqs: set = field(default_factory=set)
    audit: Counter = field(default_factory=Counter)  # routing key -> messages
    audit_seqs: set = field(default_factory=set)
    stream: Counter = field(default_factory=Counter)  # partition -> records
    stream_seqs: set = field(default_factory=set)
    stale: Counter = field(default_factory=Counter)  # service -> events of earlier runs skipped
    duplicates: Counter = field(default_factory=Counter)  # service -> events seen twice
    errors: list = field(default_factory=list)

    def expected_rejected(self) -> int:
        return self.orders // REJECT_EVERY

    def notifications_done(self) -> bool:
        return len(self.notify_seqs) >= self.orders

    def fail(self, service: str, error: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{service}: {type(error).__name__}: {error}")


def event_for(run: str, seq: int) -> dict:
    return {
        "type": "order-created",
        "run": run,
        "order_id": f"order-{run}-{seq:06d}",
        "seq": seq,
        "region": REGIONS[seq % len(REGIONS)],
        "amount_cents": 1000 + (seq * 37) % 9000,
    }


def parse_event(body: bytes | None) -> dict | None:
    try:
        event = json.loads(body or b"")
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


# --- setup --------------------------------------------------------------------


def kafka_config(args, **extra) -> dict:
    config = {"bootstrap.servers": args.kafka, "socket.timeout.ms": 10000}
    config.update(extra)
    return config


def amqp_parameters(args, name: str) -> pika.URLParameters:
    """The URL's parameters; `name` is shown as the connection's client name
    in the web UI."""
    params = pika.URLParameters(args.amqp)
    params.client_properties = {"connection_name": name}
    params.connection_attempts = 3
    params.retry_delay = 1
    params.socket_timeout = 10
    params.blocked_connection_timeout = 30
    return params


def set_up_topic(args) -> None:
    """Creates `orders` with 3 partitions, or checks the one there has 3."""
    admin = AdminClient(kafka_config(args))
    futures = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)],
                                  operation_timeout=CLIENT_TIMEOUT_S, request_timeout=CLIENT_TIMEOUT_S)
    try:
        futures[TOPIC].result(timeout=CLIENT_TIMEOUT_S)
        log(f"created topic {TOPIC} with {PARTITIONS} partitions")
    except KafkaException as error:
        if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise SetupError(f"cannot create topic {TOPIC}: {error}") from error
    metadata = admin.list_topics(topic=TOPIC, timeout=CLIENT_TIMEOUT_S)
    topic = metadata.topics.get(TOPIC)
    if topic is None or topic.error is not None:
        raise SetupError(f"topic {TOPIC} is not in the metadata: {topic and topic.error}")
    if len(topic.partitions) != PARTITIONS:
        raise SetupError(f"topic {TOPIC} exists with {len(topic.partitions)} partitions, not {PARTITIONS}; "
                         "delete it (sluice topics delete orders) and run again")


def set_up_amqp(args) -> int:
    """Declares the exchanges, queues and bindings; purges the dead-letter
    queue. Returns how many dead letters of earlier runs were purged."""
    connection = pika.BlockingConnection(amqp_parameters(args, "order-flow-setup"))
    try:
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, "topic", durable=True)
        channel.exchange_declare(DLX, "fanout", durable=True)
        channel.queue_declare(NOTIFICATIONS, durable=True, arguments={"x-dead-letter-exchange": DLX})
        channel.queue_declare(AUDIT, durable=True)
        channel.queue_declare(DEAD, durable=True)
        channel.queue_bind(NOTIFICATIONS, EXCHANGE, "payment.completed.*")
        channel.queue_bind(AUDIT, EXCHANGE, "payment.#")
        channel.queue_bind(DEAD, DLX, "")
        # The stream queue is a view of the topic created above (an existing
        # topic is opened, not recreated).
        channel.queue_declare(TOPIC, durable=True, arguments={"x-queue-type": "stream"})
        purged = channel.queue_purge(DEAD).method.message_count
        log(f"declared exchanges {EXCHANGE} (topic) and {DLX} (fanout); queues {NOTIFICATIONS}, "
            f"{AUDIT}, {DEAD} and the stream {TOPIC}")
        return purged
    except pika.exceptions.ChannelClosedByBroker as error:
        raise SetupError(f"AMQP setup refused ({error.reply_code} {error.reply_text}); "
                         "an object of that name exists with other arguments") from error
    finally:
        connection.close()


# --- services -------------------------------------------------------------------


def produce_orders(args, tally: Tally, deadline: float) -> None:
    """The order service: `order-created` events keyed by order id,
    idempotent and acks=all, at `--rate` orders per second (0: at once)."""
    producer = Producer(kafka_config(args, **{"enable.idempotence": True, "acks": "all",
                                              "linger.ms": 5, "client.id": "order-service"}))

    def on_delivery(err, msg):
        with tally.lock:
            if err is not None:
                tally.produce_errors.append(str(err))
            else:
                tally.produced[msg.partition()] += 1

    started = time.monotonic()
    for seq in range(1, args.orders + 1):
        if time.monotonic() > deadline:
            tally.fail("order-service", TimeoutError(f"deadline passed after {seq - 1} orders"))
            break
        if args.rate > 0:
            due = started + (seq - 1) / args.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        event = event_for(tally.run, seq)
        while True:
            try:
                producer.produce(TOPIC, key=event["order_id"], value=json.dumps(event).encode(),
                                 headers=[("event-type", b"order-created")], on_delivery=on_delivery)
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(max(0.0, deadline - time.monotonic()))
    if remaining:
        tally.fail("order-service", TimeoutError(f"{remaining} orders still unacknowledged at the deadline"))


class GroupMember(threading.Thread):
    """One member of a Kafka consumer group reading `orders`. Offsets are
    committed after each batch is handled, and only then are its events
    counted, so a finished group has lag 0."""

    def __init__(self, args, tally: Tally, group: str, member: str, deadline: float, stop: threading.Event):
        super().__init__(name=member, daemon=True)
        self.args, self.tally, self.group, self.member = args, tally, group, member
        self.deadline, self.stop = deadline, stop

    def on_assign(self, _consumer, partitions):
        with self.tally.lock:
            self.tally.assignments[self.member] = sorted(p.partition for p in partitions)

    def on_revoke(self, _consumer, _partitions):
        with self.tally.lock:
            self.tally.assignments[self.member] = []

    # What a service adds: open its other connections, handle one event of
    # this run (before the batch's offsets are committed), keep them alive
    # between batches, close them.
    def open(self) -> None:
        pass

    def handle(self, event: dict) -> None:
        pass

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass

    def done(self) -> bool:
        with self.tally.lock:
            return len(self.tally.group_seen[self.group]) >= self.tally.orders

    def run(self) -> None:
        consumer = None
        try:
            self.open()
            consumer = Consumer(kafka_config(self.args, **{
                "group.id": self.group, "client.id": self.member, "enable.auto.commit": False,
                "auto.offset.reset": "earliest"}))
            consumer.subscribe([TOPIC], on_assign=self.on_assign, on_revoke=self.on_revoke)
            while not self.stop.is_set() and not self.done() and time.monotonic() < self.deadline:
                messages = consumer.consume(num_messages=100, timeout=POLL_S)
                mine, stale, bad = [], 0, []
                for msg in messages:
                    if msg.error() is not None:
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            bad.append(str(msg.error()))
                        continue
                    event = parse_event(msg.value())
                    if event is None or event.get("run") != self.tally.run:
                        stale += 1
                        continue
                    self.handle(event)
                    mine.append(event["seq"])
                if bad:
                    raise KafkaException(bad[0])
                if mine or stale:
                    consumer.commit(asynchronous=False)
                with self.tally.lock:
                    if stale:
                        self.tally.stale[self.group] += stale
                    seen = self.tally.group_seen[self.group]
                    self.tally.duplicates[self.group] += sum(1 for seq in mine if seq in seen)
                    seen.update(mine)
                    self.tally.group_members[self.member] += len(mine)
                self.idle()
        except Exception as error:  # noqa: BLE001 - reported in the summary
            self.tally.fail(self.member, error)
        finally:
            if consumer is not None:
                consumer.close()
            self.close()


class PaymentMember(GroupMember):
    """The payment service: for every order publishes
    `payment.completed.<region>` to the topic exchange `payments`, persistent,
    mandatory and confirmed, before the order's offset is committed."""

    def open(self):
        self.connection = pika.BlockingConnection(amqp_parameters(self.args, self.member))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def handle(self, event: dict) -> None:
        payment = dict(event, type="payment-completed", status="completed")
        routing_key = f"payment.completed.{event['region']}"
        # Confirmed on return; mandatory turns a missing binding into UnroutableError.
        self.channel.basic_publish(
            EXCHANGE, routing_key, json.dumps(payment).encode(),
            pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                 message_id=event["order_id"], app_id="payment-service"),
            mandatory=True)
        with self.tally.lock:
            if event["seq"] not in self.tally.payment_seqs:
                self.tally.payments[event["region"]] += 1
            self.tally.payment_seqs.add(event["seq"])

    def idle(self) -> None:
        self.connection.process_data_events(time_limit=0)

    def close(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is not None and connection.is_open:
            connection.close()


class AmqpConsumer(threading.Thread):
    """A pika consumer on one queue in a thread of its own, stopping once
    `done()` or at the deadline."""

    queue = ""
    prefetch = 1
    consume_arguments: dict | None = None

    def __init__(self, args, tally: Tally, name: str, deadline: float, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.args, self.tally, self.deadline, self.stop = args, tally, deadline, stop

    def done(self) -> bool:
        raise NotImplementedError

    def on_message(self, channel, method, properties, body) -> None:
        raise NotImplementedError

    def run(self) -> None:
        connection = None
        try:
            connection = pika.BlockingConnection(amqp_parameters(self.args, self.name))
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            channel.basic_consume(self.queue, self.on_message, auto_ack=False,
                                  arguments=self.consume_arguments)
            while not self.stop.is_set() and not self.done() and time.monotonic() < self.deadline:
                connection.process_data_events(time_limit=POLL_S)
        except Exception as error:  # noqa: BLE001 - reported in the summary
            self.tally.fail(self.name, error)
        finally:
            if connection is not None and connection.is_open:
                connection.close()


class NotificationWorker(AmqpConsumer):
    """Sends the payment's notification: one message at a time (prefetch 1),
    acked when sent; every REJECT_EVERY-th order is rejected without
    requeue, and the queue dead-letters it."""

    queue = NOTIFICATIONS
    prefetch = 1

    def done(self) -> bool:
        with self.tally.lock:
            return self.tally.notifications_done()

    def on_message(self, channel, method, properties, body) -> None:
        event = parse_event(body)
        if event is None or event.get("run") != self.tally.run:
            channel.basic_ack(method.delivery_tag)
            with self.tally.lock:
                self.tally.stale[self.name] += 1
            return
        seq = event["seq"]
        if seq % REJECT_EVERY == 0:
            channel.basic_reject(method.delivery_tag, requeue=False)
            outcome = self.tally.rejected
        else:
            if self.args.work_ms:
                time.sleep(self.args.work_ms / 1000)  # "sending the e-mail"
            channel.basic_ack(method.delivery_tag)
            outcome = self.tally.notified
        with self.tally.lock:
            if seq in self.tally.notify_seqs:
                self.tally.duplicates[NOTIFICATIONS] += 1
            else:
                outcome[self.name] += 1
            self.tally.notify_seqs.add(seq)


class Auditor(AmqpConsumer):
    """Reads every payment event from the audit queue (`payment.#`)."""

    queue = AUDIT
    prefetch = 50

    def done(self) -> bool:
        with self.tally.lock:
            return len(self.tally.audit_seqs) >= self.tally.orders

    def on_message(self, channel, method, properties, body) -> None:
        event = parse_event(body)
        channel.basic_ack(method.delivery_tag)
        with self.tally.lock:
            if event is None or event.get("run") != self.tally.run:
                self.tally.stale[self.name] += 1
            elif event["seq"] in self.tally.audit_seqs:
                self.tally.duplicates[AUDIT] += 1
            else:
                self.tally.audit_seqs.add(event["seq"])
                self.tally.audit[method.routing_key] += 1


class StreamReader(AmqpConsumer):
    """Reads the Kafka topic `orders` over AMQP as a stream queue from its
    first offset; acks only return credit (docs/bridging.md)."""

    queue = TOPIC
    prefetch = 100
    consume_arguments = {"x-stream-offset": "first"}

    def done(self) -> bool:
        with self.tally.lock:
            return len(self.tally.stream_seqs) >= self.tally.orders

    def on_message(self, channel, method, properties, body) -> None:
        event = parse_event(body)
        headers = properties.headers or {}
        channel.basic_ack(method.delivery_tag)
        with self.tally.lock:
            if event is None or event.get("run") != self.tally.run:
                self.tally.stale[self.name] += 1
            elif event["seq"] in self.tally.stream_seqs:
                self.tally.duplicates["stream"] += 1
            else:
                self.tally.stream_seqs.add(event["seq"])
                self.tally.stream[headers.get("x-stream-partition")] += 1
                if method.routing_key != event["order_id"]:
                    self.tally.errors.append(f"stream: routing key {method.routing_key!r} is not the record key "
                                             f"{event['order_id']!r}")


def wait_for_groups(tally: Tally, deadline: float, threads: list[threading.Thread]) -> None:
    """Waits until both groups hold all 3 partitions and every payment member
    has some, so no rebalance moves partitions while orders flow."""
    payment_members = [f"payment-{i}" for i in range(1, PAYMENT_MEMBERS + 1)]
    while time.monotonic() < deadline:
        with tally.lock:
            assignments = dict(tally.assignments)
            failed = list(tally.errors)
        if failed:
            return
        payment = [assignments.get(m, []) for m in payment_members]
        notification = assignments.get("notification-1", [])
        if all(payment) and sum(len(a) for a in payment) == PARTITIONS and len(notification) == PARTITIONS:
            log("consumer groups joined: " + ", ".join(
                f"{member} has partitions {parts}" for member, parts in sorted(assignments.items())))
            return
        if not all(t.is_alive() for t in threads):
            break
        time.sleep(POLL_S)
    tally.fail("groups", TimeoutError(f"consumer groups not assigned before the deadline: {tally.assignments}"))


def check_dead_letters(args, tally: Tally, deadline: float) -> tuple[int, list[str]]:
    """Waits until the dead-letter queue holds this run's rejected orders,
    then reads each without acking (closing the channel puts them back, for
    a look in the web UI) and checks them. Returns (count, problems)."""
    expected = tally.expected_rejected()
    problems: list[str] = []
    connection = pika.BlockingConnection(amqp_parameters(args, "dead-letter-check"))
    try:
        channel = connection.channel()
        count = 0
        while time.monotonic() < deadline:
            count = channel.queue_declare(DEAD, passive=True).method.message_count
            if count >= expected:
                break
            connection.sleep(POLL_S)
        seqs = []
        for _ in range(count + 1):
            method, properties, body = channel.basic_get(DEAD, auto_ack=False)
            if method is None:
                break
            event = parse_event(body) or {}
            deaths = (properties.headers or {}).get("x-death") or [{}]
            death = deaths[0]
            reason = death.get("reason")
            queue = death.get("queue")
            if isinstance(reason, bytes):
                reason = reason.decode()
            if isinstance(queue, bytes):
                queue = queue.decode()
            if event.get("run") != tally.run or event.get("seq", 1) % REJECT_EVERY:
                problems.append(f"unexpected dead letter {event.get('order_id')!r}")
            elif reason != "rejected" or queue != NOTIFICATIONS:
                problems.append(f"dead letter {event['order_id']} has x-death reason {reason!r} queue {queue!r}")
            seqs.append(event.get("seq"))
        channel.close()  # the unacked dead letters go back, in their order
        return len(seqs), problems
    finally:
        connection.close()


# --- summary ------------------------------------------------------------------


def summarize(tally: Tally, dead: int, dead_problems: list[str], purged: int, elapsed: float) -> dict:
    n = tally.orders
    rows = [
        ("orders produced", sum(tally.produced.values()), n, tally.produced),
        (f"{PAYMENT_GROUP} read", len(tally.group_seen[PAYMENT_GROUP]), n,
         {m: c for m, c in tally.group_members.items() if m.startswith("payment-")}),
        (f"{NOTIFICATION_GROUP} read", len(tally.group_seen[NOTIFICATION_GROUP]), n, {}),
        ("payments published", sum(tally.payments.values()), n, tally.payments),
        ("notifications sent", sum(tally.notified.values()), n - tally.expected_rejected(), tally.notified),
        ("notifications rejected", sum(tally.rejected.values()), tally.expected_rejected(), tally.rejected),
        (f"dead letters in {DEAD}", dead, tally.expected_rejected(), {}),
        (f"{AUDIT} received", sum(tally.audit.values()), n, tally.audit),
        ("stream read over AMQP", sum(tally.stream.values()), n, tally.stream),
    ]
    print(f"\norder flow, run {tally.run}: {n} orders in {elapsed:.1f} s")
    ok = True
    for label, got, want, detail in rows:
        mark = "" if got == want else f"   <-- expected {want}"
        ok &= got == want
        parts = ", ".join(f"{key}: {value}" for key, value in sorted(detail.items(), key=lambda kv: str(kv[0])))
        print(f"  {label:<34} {got:>6}{f'   ({parts})' if parts else ''}{mark}")
    problems = list(tally.errors) + [f"produce: {e}" for e in tally.produce_errors[:5]] + dead_problems
    problems += [f"{service} saw {count} events twice" for service, count in sorted(tally.duplicates.items()) if count]
    if sum(tally.stale.values()) or purged:
        print(f"  skipped from earlier runs: {dict(tally.stale)}; dead letters purged at the start: {purged}")
    for problem in problems:
        print(f"  problem: {problem}")
    ok &= not problems
    print("OK: every count matches" if ok else "FAILED: see above")
    return {
        "ok": ok,
        "run": tally.run,
        "orders": n,
        "produced": sum(tally.produced.values()),
        "produced_by_partition": {str(k): v for k, v in tally.produced.items()},
        "payment_group": len(tally.group_seen[PAYMENT_GROUP]),
        "payment_members": {m: c for m, c in tally.group_members.items() if m.startswith("payment-")},
        "notification_group": len(tally.group_seen[NOTIFICATION_GROUP]),
        "payments": sum(tally.payments.values()),
        "payments_by_region": dict(tally.payments),
        "notified": sum(tally.notified.values()),
        "notified_by_worker": dict(tally.notified),
        "rejected": sum(tally.rejected.values()),
        "dead_lettered": dead,
        "audit": sum(tally.audit.values()),
        "stream": sum(tally.stream.values()),
        "stream_by_partition": {str(k): v for k, v in tally.stream.items()},
        "stale": dict(tally.stale),
        "problems": problems,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", default="127.0.0.1:9092", help="Kafka bootstrap address (default %(default)s)")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2f",
                        help="AMQP URL (default %(default)s)")
    parser.add_argument("--orders", type=int, default=200, help="orders to place (default %(default)s)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="orders per second, 0 for as fast as possible (default %(default)s)")
    parser.add_argument("--work-ms", type=float, default=10.0,
                        help="time a notification worker takes per message (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="deadline of the whole run in seconds (default: 60 + orders / rate + orders * work-ms / 2)")
    parser.add_argument("--summary-json", help="also write the counts as JSON to this file")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.rate < 0 or args.work_ms < 0:
        parser.error("--orders must be at least 1, --rate and --work-ms not negative")
    # Room for producing at --rate and for the workers' --work-ms, plus a minute.
    timeout = args.timeout or (60.0 + (args.orders / args.rate if args.rate else 0.0)
                               + args.orders * args.work_ms / 1000 / NOTIFY_WORKERS)

    started = time.monotonic()
    deadline = started + timeout
    run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    tally = Tally(orders=args.orders, run=run)
    log(f"run {run}: {args.orders} orders, Kafka {args.kafka}, AMQP {args.amqp.split('@')[-1]}, "
        f"deadline {timeout:.0f} s")
    try:
        set_up_topic(args)
        purged = set_up_amqp(args)
    except (SetupError, KafkaException, pika.exceptions.AMQPError, OSError) as error:
        print(f"setup failed: {type(error).__name__}: {str(error) or 'no answer in time'} "
              f"(is the broker running on {args.kafka} and {args.amqp.split('@')[-1]}?)", file=sys.stderr)
        return 2

    stop = threading.Event()
    members = [PaymentMember(args, tally, PAYMENT_GROUP, f"payment-{i}", deadline, stop)
               for i in range(1, PAYMENT_MEMBERS + 1)]
    members.append(GroupMember(args, tally, NOTIFICATION_GROUP, "notification-1", deadline, stop))
    consumers = [NotificationWorker(args, tally, f"notify-worker-{i}", deadline, stop)
                 for i in range(1, NOTIFY_WORKERS + 1)]
    consumers += [Auditor(args, tally, "auditor", deadline, stop), StreamReader(args, tally, "stream-reader", deadline, stop)]
    threads = members + consumers
    for thread in threads:
        thread.start()
    try:
        wait_for_groups(tally, min(deadline, time.monotonic() + GROUP_READY_TIMEOUT_S), members)
        if not tally.errors:
            log(f"producing {args.orders} orders" + (f" at {args.rate:g}/s" if args.rate else ""))
            produce_orders(args, tally, deadline)
            log(f"produced {sum(tally.produced.values())} orders: "
                + ", ".join(f"partition {p}: {c}" for p, c in sorted(tally.produced.items())))
        else:
            stop.set()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 5.0)
    except KeyboardInterrupt:
        stop.set()
        for thread in threads:
            thread.join(5.0)
        print("interrupted", file=sys.stderr)
        return 1
    stop.set()
    hung = [t.name for t in threads if t.is_alive()]
    if hung:
        tally.fail("run", TimeoutError(f"threads still running after the deadline: {hung}"))
    try:
        # Dead letters are routed as the workers reject: a few seconds suffice.
        dead, dead_problems = check_dead_letters(args, tally, time.monotonic() + DEAD_LETTER_WAIT_S)
    except pika.exceptions.AMQPError as error:
        dead, dead_problems = 0, [f"dead-letter check: {type(error).__name__}: {error}"]
    summary = summarize(tally, dead, dead_problems, purged, time.monotonic() - started)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2, sort_keys=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
