//! The real broker binary driven by lapin: routing through every exchange
//! type, work sharing with prefetch, negative acknowledgements with
//! redelivery, publisher confirms, channel errors with RabbitMQ's codes,
//! and persistent messages surviving `kill -9`.
//!
//! Contract under test: a message confirmed to a durable queue is delivered
//! after a crash unless it was acknowledged; acknowledged ones never return.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use sluice_e2e::BrokerProcess as Broker;

fn start_broker() -> Broker {
    Broker::start()
}

async fn channel(broker: &Broker) -> (Connection, Channel) {
    let connection = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// The AMQP reply code a channel or connection was closed with.
fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn declare_queue(channel: &Channel, name: &str, durable: bool) {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
}

/// Bodies of every message `basic.get` finds in `queue`, acknowledged.
async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        bodies.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
    }
    bodies
}

async fn publish(channel: &Channel, exchange: &str, key: &str, body: &str, headers: FieldTable) {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("basic.publish")
        .await
        .expect("confirm");
}

#[test]
fn every_exchange_type_routes_as_rabbitmq_does() {
    let broker = start_broker();
    runtime().block_on(async {
        let (_connection, channel) = channel(&broker).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        for (exchange, kind) in [
            ("t", ExchangeKind::Topic),
            ("d", ExchangeKind::Direct),
            ("f", ExchangeKind::Fanout),
            ("h", ExchangeKind::Headers),
        ] {
            channel
                .exchange_declare(
                    exchange.into(),
                    kind,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("exchange.declare");
        }
        let mut any = FieldTable::default();
        any.insert("x-match".into(), AMQPValue::LongString("any".into()));
        any.insert("a".into(), AMQPValue::LongInt(1));
        any.insert("b".into(), AMQPValue::LongString("x".into()));
        let mut all = any.clone();
        all.insert("x-match".into(), AMQPValue::LongString("all".into()));
        // (queue, exchange, binding key, arguments)
        let bindings = [
            ("star", "t", "a.*.c", FieldTable::default()),
            ("hash", "t", "a.#", FieldTable::default()),
            ("lead", "t", "#.c", FieldTable::default()),
            ("exact", "d", "k1", FieldTable::default()),
            ("fan1", "f", "ignored", FieldTable::default()),
            ("fan2", "f", "", FieldTable::default()),
            ("hany", "h", "", any),
            ("hall", "h", "", all),
        ];
        for (queue, exchange, key, arguments) in &bindings {
            declare_queue(&channel, queue, false).await;
            channel
                .queue_bind(
                    (*queue).into(),
                    (*exchange).into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    arguments.clone(),
                )
                .await
                .expect("queue.bind");
        }
        let mut only_a = FieldTable::default();
        only_a.insert("a".into(), AMQPValue::LongInt(1));
        let mut both = only_a.clone();
        both.insert("b".into(), AMQPValue::LongString("x".into()));
        // (exchange, routing key, headers, queues expected to get it)
        let table: Vec<(&str, &str, FieldTable, &[&str])> = vec![
            (
                "t",
                "a.b.c",
                FieldTable::default(),
                &["star", "hash", "lead"],
            ),
            ("t", "a", FieldTable::default(), &["hash"]),
            ("t", "a.c", FieldTable::default(), &["hash", "lead"]),
            ("t", "x.y.c", FieldTable::default(), &["lead"]),
            ("t", "a.b.b.c", FieldTable::default(), &["hash", "lead"]),
            ("t", "b.b.b", FieldTable::default(), &[]),
            ("d", "k1", FieldTable::default(), &["exact"]),
            ("d", "k2", FieldTable::default(), &[]),
            ("f", "anything", FieldTable::default(), &["fan1", "fan2"]),
            ("h", "", only_a, &["hany"]),
            ("h", "", both, &["hany", "hall"]),
            ("h", "", FieldTable::default(), &[]),
            ("", "exact", FieldTable::default(), &["exact"]),
        ];
        for (n, (exchange, key, headers, expected)) in table.iter().enumerate() {
            let body = format!("m{n}");
            publish(&channel, exchange, key, &body, headers.clone()).await;
            let mut reached = BTreeSet::new();
            for (queue, ..) in &bindings {
                let bodies = drain(&channel, queue).await;
                if bodies.contains(&body) {
                    reached.insert(*queue);
                }
                assert!(
                    bodies.iter().all(|b| b == &body),
                    "stray messages in {queue}: {bodies:?}"
                );
            }
            let expected: BTreeSet<&str> = expected.iter().copied().collect();
            assert_eq!(reached, expected, "{exchange} {key:?}");
        }
    });
}

#[test]
fn prefetch_shares_work_and_nack_redelivers_with_the_flag() {
    let broker = start_broker();
    runtime().block_on(async {
        let (_publisher, channel) = channel(&broker).await;
        declare_queue(&channel, "work", false).await;
        for n in 0..300 {
            publish(&channel, "", "work", &format!("{n}"), FieldTable::default()).await;
        }
        // Three consumers with prefetch 5; each acknowledges what it gets.
        let mut tasks = Vec::new();
        for index in 0..3 {
            let url = broker.amqp_url();
            tasks.push(tokio::spawn(async move {
                let connection = Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .expect("connect");
                let channel = connection.create_channel().await.expect("channel");
                channel
                    .basic_qos(5, BasicQosOptions::default())
                    .await
                    .expect("qos");
                let mut consumer = channel
                    .basic_consume(
                        "work".into(),
                        format!("c{index}").into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("consume");
                let mut got = Vec::new();
                while let Ok(Some(Ok(delivery))) =
                    tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
                {
                    got.push(String::from_utf8_lossy(&delivery.data).into_owned());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    delivery.ack(BasicAckOptions::default()).await.expect("ack");
                }
                // Close before the test goes on, so that no consumer is
                // left to take the next message.
                connection
                    .close(200, "done".into())
                    .await
                    .expect("close consumer connection");
                got
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            let got = task.await.expect("consumer task");
            assert!(
                got.len() >= 30,
                "a consumer got only {} messages",
                got.len()
            );
            all.extend(got);
        }
        all.sort_by_key(|b| b.parse::<u32>().unwrap_or(u32::MAX));
        let expected: Vec<String> = (0..300).map(|n| n.to_string()).collect();
        assert_eq!(all, expected, "every message exactly once");

        publish(&channel, "", "work", "again", FieldTable::default()).await;
        let first = channel
            .basic_get("work".into(), BasicGetOptions::default())
            .await
            .expect("get")
            .expect("a message");
        assert!(!first.delivery.redelivered);
        channel
            .basic_nack(
                first.delivery.delivery_tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
            .expect("nack");
        let second = channel
            .basic_get("work".into(), BasicGetOptions::default())
            .await
            .expect("get")
            .expect("the requeued message");
        assert_eq!(second.delivery.data, b"again");
        assert!(
            second.delivery.redelivered,
            "redelivered flag after requeue"
        );
    });
}

#[test]
fn channel_errors_carry_rabbitmq_reply_codes() {
    let broker = start_broker();
    runtime().block_on(async {
        let (connection, channel) = channel(&broker).await;
        let missing = channel
            .queue_declare(
                "nowhere".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect_err("passive declare of a missing queue");
        assert_eq!(reply_code(&missing), Some(404), "{missing}");

        let channel = connection.create_channel().await.expect("channel");
        declare_queue(&channel, "durable-q", true).await;
        let inequivalent = channel
            .queue_declare(
                "durable-q".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("redeclare with another durability");
        assert_eq!(reply_code(&inequivalent), Some(406), "{inequivalent}");

        let channel = connection.create_channel().await.expect("channel");
        let reserved = channel
            .exchange_declare(
                "amq.mine".into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("reserved name");
        assert_eq!(reply_code(&reserved), Some(403), "{reserved}");

        // The connection survives channel errors.
        let channel = connection
            .create_channel()
            .await
            .expect("channel after errors");
        declare_queue(&channel, "still-fine", false).await;
    });
}

#[test]
fn confirmed_persistent_messages_survive_kill_9_and_acked_ones_stay_gone() {
    let mut broker = start_broker();
    let rt = runtime();
    rt.block_on(async {
        let (connection, channel) = channel(&broker).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        channel
            .exchange_declare(
                "orders".into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange.declare");
        declare_queue(&channel, "kept", true).await;
        declare_queue(&channel, "transient", false).await;
        channel
            .queue_bind(
                "kept".into(),
                "orders".into(),
                "eu.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
        let mut confirms = Vec::new();
        for n in 0..2000 {
            confirms.push(
                channel
                    .basic_publish(
                        "orders".into(),
                        "eu.de".into(),
                        BasicPublishOptions::default(),
                        format!("{n}").as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
        // Acknowledge the first 500, one by one and with `multiple`.
        for _ in 0..500 {
            let message = channel
                .basic_get("kept".into(), BasicGetOptions::default())
                .await
                .expect("get")
                .expect("a message");
            channel
                .basic_ack(message.delivery.delivery_tag, BasicAckOptions::default())
                .await
                .expect("ack");
        }
        // A round trip after the acks: once the broker answered it, it has
        // handled (and written) every ack sent before.
        channel
            .queue_declare(
                "kept".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("round trip");
        drop(connection);
    });
    broker.crash_and_restart();
    rt.block_on(async {
        let (_connection, channel) = channel(&broker).await;
        let bodies = drain(&channel, "kept").await;
        let expected: Vec<String> = (500..2000).map(|n| n.to_string()).collect();
        assert_eq!(bodies, expected);
        // The durable exchange and binding route after the restart.
        publish(&channel, "orders", "eu.fr", "after", FieldTable::default()).await;
        assert_eq!(drain(&channel, "kept").await, vec!["after".to_owned()]);
        let gone = channel
            .queue_declare(
                "transient".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect_err("transient queues do not survive a restart");
        assert_eq!(reply_code(&gone), Some(404), "{gone}");
    });
}
