//! The Rust harness's cluster (`sluice_e2e::cluster`): three nodes, every
//! inter-node link through a fault-injecting proxy, driven with librdkafka
//! (rdkafka). A partition's leader cut off from the others loses the
//! partition to an in-sync replica; acks=all idempotent produces go on
//! through the new leader; healed, the old leader follows again, and every
//! acknowledged record is read back once and in order. With lapin, a queue
//! declared on node 1, published to on node 2 and consumed on node 3. (The
//! Python suite, `compat/cluster`, runs the nemesis and the other faults.)

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sluice_e2e::cluster::ClusterProcess;

const TOPIC: &str = "cut-off";

/// Polls `check` every 200 ms until it gives a value or `within` passes.
fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (brokers, leader, in-sync replicas) of partition 0 as node `bootstrap` says.
fn layout(bootstrap: &str) -> Option<(usize, i32, Vec<i32>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
        .ok()?;
    let topic = metadata.topics().first()?;
    let partition = topic.partitions().first()?;
    Some((
        metadata.brokers().len(),
        partition.leader(),
        partition.isr().to_vec(),
    ))
}

/// Produces `count` numbered records from `first`, acks=all; the
/// acknowledged (offset, value) pairs.
async fn produce(producer: &FutureProducer, first: usize, count: usize) -> Vec<(i64, String)> {
    let sends: Vec<_> = (first..first + count)
        .map(|n| {
            let value = format!("r{n}");
            let record = FutureRecord::to(TOPIC).partition(0).key("").payload(&value);
            let sent = producer.send_result(record).expect("queued");
            (value, sent)
        })
        .collect();
    let mut acked = Vec::new();
    for (value, sent) in sends {
        if let Ok(Ok(delivery)) = sent.await {
            acked.push((delivery.offset, value));
        }
    }
    acked
}

#[test]
fn a_leader_cut_off_loses_its_partition_and_nothing_acknowledged_is_lost() {
    let cluster = ClusterProcess::start(3, &["cluster.replica_lag_max=2s"]);
    let bootstrap = cluster.bootstrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Nodes register with the controller first: until then three replicas
    // do not fit, and the admin client finds no controller.
    wait_for("three registered nodes", Duration::from_secs(30), || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .ok()?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5)).ok()?;
        (metadata.brokers().len() == 3).then_some(())
    });
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    // Generous: a loaded CI machine has taken more than 30 s here.
    wait_for(
        "the topic created on three nodes",
        Duration::from_secs(90),
        || {
            let created = runtime.block_on(admin.create_topics(
                &[NewTopic::new(TOPIC, 1, TopicReplication::Fixed(3))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            ));
            let created = match created {
                Ok(created) => created,
                Err(error) => {
                    eprintln!("CreateTopics failed: {error}");
                    return None;
                }
            };
            // A try that timed out may have created it.
            let done = created
                .iter()
                .all(|r| matches!(r, Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists))));
            if !done {
                eprintln!("CreateTopics answered {created:?}");
            }
            done.then_some(())
        },
    );
    let (brokers, leader, _) = wait_for("partition 0 led", Duration::from_secs(30), || {
        layout(&bootstrap).filter(|(_, leader, isr)| *leader > 0 && isr.len() == 3)
    });
    assert_eq!(brokers, 3);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let mut acked = runtime.block_on(produce(&producer, 0, 500));
    assert_eq!(acked.len(), 500, "before the fault");

    // The leader is cut off: another node leads, and writes go on there.
    let leader = usize::try_from(leader).expect("a node id");
    cluster.isolate(leader);
    let other = (1..=3).find(|n| *n != leader).expect("another node");
    let elsewhere = format!("127.0.0.1:{}", cluster.kafka_port(other));
    let (_, moved_to, _) = wait_for("a new leader", Duration::from_secs(30), || {
        layout(&elsewhere).filter(|(_, l, _)| *l > 0 && *l != i32::try_from(leader).unwrap_or(-1))
    });
    acked.extend(runtime.block_on(produce(&producer, 500, 500)));

    // Healed: the old leader follows and is in sync again.
    cluster.heal();
    wait_for("every replica in sync", Duration::from_secs(60), || {
        layout(&elsewhere).filter(|(_, _, isr)| isr.len() == 3)
    });
    acked.extend(runtime.block_on(produce(&producer, 1000, 500)));
    assert!(
        acked.len() >= 1000,
        "only {} of 1500 acknowledged",
        acked.len()
    );

    // Every acknowledged record once, in order, from the new leader.
    let reader = format!(
        "127.0.0.1:{}",
        cluster.kafka_port(usize::try_from(moved_to).expect("id"))
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &reader)
        .set("group.id", "cut-off-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut stored: Vec<(i64, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored.last().map_or(0, |(o, _)| o + 1) < high && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            stored.push((message.offset(), value));
        }
    }
    let position: std::collections::HashMap<&str, (usize, i64)> = stored
        .iter()
        .enumerate()
        .map(|(index, (offset, value))| (value.as_str(), (index, *offset)))
        .collect();
    assert_eq!(position.len(), stored.len(), "a record stored twice");
    let mut last = None;
    for (offset, value) in &acked {
        let Some((index, at)) = position.get(value.as_str()) else {
            panic!("acknowledged {value} at {offset} is lost");
        };
        assert_eq!(
            at, offset,
            "{value} acknowledged at {offset}, stored at {at}"
        );
        assert!(last < Some(*index), "{value} out of order");
        last = Some(*index);
    }
}

/// AMQP on the cluster with lapin: a durable queue and a topic exchange
/// declared on node 1, 300 persistent messages published with confirms on
/// node 2, consumed with manual acks and prefetch 20 on node 3; every
/// message arrives once, in order, none flagged redelivered, and the queue
/// ends empty on its home.
#[test]
fn declared_on_one_node_published_on_another_consumed_on_a_third_with_lapin() {
    use futures_util::StreamExt as _;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

    const COUNT: usize = 300;
    let cluster = ClusterProcess::start(3, &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connect = |id: usize| {
            let url = cluster.amqp_url(id);
            async move {
                let connection = Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .expect("connect");
                let channel = connection.create_channel().await.expect("channel");
                (connection, channel)
            }
        };
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let passive = |channel: lapin::Channel| async move {
            channel
                .queue_declare(
                    "eu-orders".into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
        };
        let (first, declaring) = connect(1).await;
        declaring
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
        declaring
            .queue_declare("eu-orders".into(), durable, FieldTable::default())
            .await
            .expect("queue.declare");
        declaring
            .queue_bind(
                "eu-orders".into(),
                "orders".into(),
                "eu.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
        first.close(200, "done".into()).await.expect("close");

        // Node 2 routes through the binding once it has applied it.
        let (second, publishing) = connect(2).await;
        publishing
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A refused passive declare closes its channel: a new one each try.
            let checking = second.create_channel().await.expect("channel");
            let declared = passive(checking).await;
            if declared.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "node 2 never saw the queue");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut confirms = Vec::new();
        for n in 0..COUNT {
            confirms.push(
                publishing
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
            assert!(
                confirm.await.expect("confirm").is_ack(),
                "a publish was nacked"
            );
        }
        second.close(200, "done".into()).await.expect("close");

        let (third, consuming) = connect(3).await;
        consuming
            .basic_qos(20, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = consuming
            .basic_consume(
                "eu-orders".into(),
                "on-node-3".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut got = Vec::new();
        while got.len() < COUNT {
            let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
                .await
                .expect("a delivery within 20 s")
                .expect("the consumer goes on")
                .expect("a delivery");
            assert!(
                !delivery.redelivered,
                "a first delivery flagged redelivered"
            );
            got.push(String::from_utf8_lossy(&delivery.data).into_owned());
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let expected: Vec<String> = (0..COUNT).map(|n| n.to_string()).collect();
        assert_eq!(got, expected, "every message once, in order");
        third.close(200, "done".into()).await.expect("close");

        let (home, checking) = connect(1).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let queue = passive(checking.clone())
                .await
                .expect("passive declare on the home");
            if queue.message_count() == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "acked messages left on the home");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        home.close(200, "done".into()).await.expect("close");
    });
}
