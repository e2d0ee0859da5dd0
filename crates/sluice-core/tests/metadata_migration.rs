//! Contract: topics live in the metadata log. A data directory written
//! before it existed (one TOML file per topic under `topics/`, as main
//! wrote them until 2026-12, and the producer-id block file) is migrated on
//! first start: its topics, ids, partition counts, settings and records
//! are all there, producer ids go on past the old block, the files move
//! aside, and later changes replay from the log alone. Durable AMQP
//! exchanges, queues and bindings, which lived in the compacted log
//! `__amqp_definitions-0`, move into the metadata log the same way.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
mod common;

use sluice_core::messaging::{Destination, ExchangeKind, ExchangeOptions, Message};
use sluice_core::records::{NewRecord, encode};
use sluice_core::{Broker, BrokerOptions, Position, TopicConfig, Undecodable};
use sluice_types::{LeaderEpoch, Offset, PartitionId};

use common::one;

/// A data directory as the previous main left it: topic files and logs.
fn old_data_dir(dir: &std::path::Path) {
    let topics = dir.join("topics");
    std::fs::create_dir_all(&topics).expect("topics dir");
    std::fs::write(
        topics.join("orders.toml"),
        "name = \"orders\"\nid = \"0123456789abcdef0123456789abcdef\"\npartitions = 2\n\n\
         [config]\n\"cleanup.policy\" = \"compact\"\n\"retention.ms\" = \"60000\"\n",
    )
    .expect("topic file");
    std::fs::write(
        topics.join("events.toml"),
        "name = \"events\"\nid = \"fedcba9876543210fedcba9876543210\"\npartitions = 1\n",
    )
    .expect("topic file");
    std::fs::write(dir.join("producer-id-block"), "2000\n").expect("block file");
    for (log, value) in [("orders-1", b"paid".as_slice()), ("events-0", b"clicked")] {
        let log = sluice_log::Log::open(
            &dir.join("logs").join(log),
            sluice_log::LogConfig::default(),
        )
        .expect("open log");
        log.append(&mut one(value), LeaderEpoch::from(0))
            .expect("append");
        log.close().expect("close");
    }
}

fn values(broker: &Broker, topic: &str, partition: i32) -> Vec<Vec<u8>> {
    let partition = broker
        .topics()
        .get(topic)
        .and_then(|t| t.partition(PartitionId::from(partition)))
        .expect("partition");
    partition
        .read_chunk(Offset::from(0), 1 << 20, Undecodable::Fail)
        .expect("read")
        .map(|chunk| {
            chunk
                .deliverable(Offset::from(0))
                .map(|r| r.value.clone().unwrap_or_default().to_vec())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn topic_files_move_into_the_metadata_log_on_first_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    old_data_dir(dir.path());

    let broker = Broker::open(BrokerOptions::new(dir.path())).expect("open");
    assert_eq!(broker.topics().names(), vec!["events", "orders"]);
    let orders = broker.topics().get("orders").expect("orders");
    assert_eq!(orders.partition_count(), 2);
    assert_eq!(
        orders.id(),
        [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef
        ]
    );
    assert_eq!(
        orders
            .config()
            .overrides()
            .get("retention.ms")
            .map(String::as_str),
        Some("60000")
    );
    assert_eq!(values(&broker, "orders", 1), vec![b"paid".to_vec()]);
    assert_eq!(values(&broker, "events", 0), vec![b"clicked".to_vec()]);
    assert!(!dir.path().join("topics").exists(), "the files moved aside");
    assert!(
        dir.path()
            .join("topics.migrated")
            .join("orders.toml")
            .exists()
    );
    // Producer ids go on from the old block's end, never reused.
    assert_eq!(broker.producer_ids().allocate().expect("id"), 2000);
    assert!(!dir.path().join("producer-id-block").exists());
    assert!(dir.path().join("producer-id-block.migrated").exists());

    // Changes after the migration are commands too.
    broker.topics().grow("events", 3, false).expect("grow");
    broker
        .set_topic_config(
            "events",
            TopicConfig::new([("retention.ms", "5000")]).expect("config"),
        )
        .expect("config");
    broker.topics().delete("orders").expect("delete");
    broker
        .topics()
        .create("fresh", 1, TopicConfig::default())
        .expect("create");
    broker.shutdown().expect("shutdown");
    drop((orders, broker));

    let broker = Broker::open(BrokerOptions::new(dir.path())).expect("reopen");
    assert_eq!(broker.topics().names(), vec!["events", "fresh"]);
    let events = broker.topics().get("events").expect("events");
    assert_eq!(events.partition_count(), 3);
    assert_eq!(
        events
            .config()
            .overrides()
            .get("retention.ms")
            .map(String::as_str),
        Some("5000")
    );
    assert_eq!(values(&broker, "events", 0), vec![b"clicked".to_vec()]);
    let latest = events
        .partition(PartitionId::from(0))
        .expect("partition")
        .resolve(Position::Latest)
        .expect("resolve");
    assert_eq!(latest, Some((Offset::from(1), -1)));
    assert!(
        !dir.path().join("topics").exists(),
        "no topic files are written any more"
    );
    // The block allocated before the restart (2000..3000) is not reused.
    assert_eq!(broker.producer_ids().allocate().expect("id"), 3000);
    assert!(!dir.path().join("producer-id-block").exists());
}

#[test]
fn internal_log_names_are_reserved() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::open(BrokerOptions::new(dir.path())).expect("open");
    for name in [
        "__cluster_metadata",
        "__amqp_definitions",
        "__consumer_offsets",
    ] {
        assert!(
            broker
                .topics()
                .create(name, 1, TopicConfig::default())
                .is_err(),
            "{name}"
        );
    }
}

/// `[len:2][bytes]`, as the old definitions log wrote strings.
fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&u16::try_from(text.len()).expect("short").to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// An empty AMQP field table as on the wire.
const NO_ARGUMENTS: [u8; 4] = [0, 0, 0, 0];

/// The old definitions log, with the key and value layouts main wrote
/// until 2026-12: a topic exchange, a durable queue with its store id, a
/// binding between them, and a second queue deleted again (a tombstone).
fn old_definitions_log(dir: &std::path::Path) {
    let mut exchange_key = vec![0];
    put_str(&mut exchange_key, "/");
    put_str(&mut exchange_key, "orders");
    let mut exchange_value = vec![0];
    put_str(&mut exchange_value, "topic");
    exchange_value.push(0);
    exchange_value.extend_from_slice(&NO_ARGUMENTS);

    let queue = |name: &str, store_id: &str| {
        let mut key = vec![1];
        put_str(&mut key, "/");
        put_str(&mut key, name);
        let mut value = vec![0];
        put_str(&mut value, store_id);
        value.push(0);
        value.extend_from_slice(&NO_ARGUMENTS);
        (key, value)
    };
    let (queue_key, queue_value) = queue("paid", "paid-0000000000000001");
    let (gone_key, gone_value) = queue("gone", "gone-0000000000000002");

    let mut binding_key = vec![2];
    put_str(&mut binding_key, "/");
    put_str(&mut binding_key, "orders");
    binding_key.push(0);
    put_str(&mut binding_key, "paid");
    put_str(&mut binding_key, "order.paid.*");
    binding_key.extend_from_slice(&NO_ARGUMENTS);

    let records: [(&[u8], Option<&[u8]>); 5] = [
        (&exchange_key, Some(&exchange_value)),
        (&queue_key, Some(&queue_value)),
        (&gone_key, Some(&gone_value)),
        (&binding_key, Some(&[0])),
        (&gone_key, None),
    ];
    let log = sluice_log::Log::open(
        &dir.join("logs").join("__amqp_definitions-0"),
        sluice_log::LogConfig::default(),
    )
    .expect("open log");
    for (key, value) in records {
        let mut batch = encode(&[NewRecord {
            key: Some(key),
            value,
            timestamp: 1_000,
        }])
        .expect("encode");
        log.append(&mut batch, LeaderEpoch::from(0))
            .expect("append");
    }
    log.close().expect("close");
}

fn persistent(routing_key: &str) -> Message {
    Message {
        exchange: "orders".into(),
        routing_key: routing_key.into(),
        properties: BasicProperties::default().with_delivery_mode(2),
        body: bytes::Bytes::from_static(b"order"),
    }
}

#[test]
fn amqp_definitions_move_into_the_metadata_log_on_first_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    old_definitions_log(dir.path());

    let broker = Broker::open(BrokerOptions::new(dir.path())).expect("open");
    let vhost = broker.vhosts().get("/").expect("default vhost");
    let exchange = vhost.exchange("orders").expect("exchange migrated");
    assert_eq!(exchange.kind, ExchangeKind::Topic);
    assert!(exchange.durable);
    let queue = vhost.queue("paid").expect("queue migrated");
    assert!(queue.options().durable);
    assert!(vhost.queue("gone").is_none(), "the tombstone held");
    let bindings: Vec<(String, Destination, String)> = vhost
        .bindings()
        .into_iter()
        .map(|b| (b.source, b.destination, b.routing_key))
        .collect();
    assert_eq!(
        bindings,
        vec![(
            "orders".to_owned(),
            Destination::Queue("paid".to_owned()),
            "order.paid.*".to_owned()
        )]
    );
    assert!(
        !dir.path()
            .join("logs")
            .join("__amqp_definitions-0")
            .exists(),
        "the old log is gone"
    );
    // The binding routes; the queue keeps a persistent message in its store.
    let outcome = vhost
        .publish("orders", persistent("order.paid.eu"))
        .expect("publish");
    assert_eq!(outcome.queues, 1);
    let store_logs = std::fs::read_dir(dir.path().join("logs"))
        .expect("logs")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("paid-0000000000000001")
        })
        .count();
    assert!(store_logs > 0, "the queue kept its store id");
    // Changes after the migration are commands too.
    vhost
        .declare_exchange(
            "audit",
            "fanout",
            ExchangeOptions {
                durable: true,
                ..ExchangeOptions::default()
            },
            false,
        )
        .expect("declare");
    vhost
        .bind(
            "orders",
            Destination::Exchange("audit".into()),
            "#",
            &FieldTable::default(),
            0,
        )
        .expect("bind");
    vhost
        .unbind(
            "orders",
            Destination::Queue("paid".into()),
            "order.paid.*",
            &FieldTable::default(),
            0,
        )
        .expect("unbind");
    broker.shutdown().expect("shutdown");
    drop((queue, exchange, vhost, broker));

    let broker = Broker::open(BrokerOptions::new(dir.path())).expect("reopen");
    let vhost = broker.vhosts().get("/").expect("default vhost");
    let queue = vhost.queue("paid").expect("queue kept");
    assert_eq!(queue.message_count(), 1, "the stored message came back");
    assert!(vhost.exchange("audit").is_some_and(|e| e.durable));
    let bindings: Vec<(String, Destination)> = vhost
        .bindings()
        .into_iter()
        .map(|b| (b.source, b.destination))
        .collect();
    assert_eq!(
        bindings,
        vec![(
            "orders".to_owned(),
            Destination::Exchange("audit".to_owned())
        )]
    );
    assert!(
        !dir.path()
            .join("logs")
            .join("__amqp_definitions-0")
            .exists()
    );
}
