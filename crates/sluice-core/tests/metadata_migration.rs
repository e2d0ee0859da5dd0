//! Contract: topics live in the metadata log. A data directory written
//! before it existed (one TOML file per topic under `topics/`, as main
//! wrote them until 2026-12, and the producer-id block file) is migrated on
//! first start: its topics, ids, partition counts, settings and records
//! are all there, producer ids go on past the old block, the files move
//! aside, and later changes replay from the log alone.

use bytes::BytesMut;
use sluice_core::records::{NewRecord, encode};
use sluice_core::{Broker, BrokerOptions, Position, TopicConfig, Undecodable};
use sluice_types::{LeaderEpoch, Offset, PartitionId};

fn one(value: &[u8]) -> BytesMut {
    encode(&[NewRecord {
        key: None,
        value: Some(value),
        timestamp: 1_000,
    }])
    .expect("encode")
}

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
