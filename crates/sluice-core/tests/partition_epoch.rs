//! Contract: a partition knows its leader epoch: the newest its log was
//! written with (0 for a new log), and appends are stamped with it, so the
//! epoch survives a restart instead of being a literal 0. Shutdown writes
//! the high watermark checkpoint (Kafka's replication-offset-checkpoint).

mod common;

use sluice_core::{Broker, BrokerOptions, Position, Undecodable};
use sluice_types::{LeaderEpoch, Offset, PartitionId};

use common::one;

/// The leader epoch field of every batch at or after `from` (bytes 12..16).
fn batch_epochs(broker: &Broker, from: i64) -> Vec<i32> {
    let partition = broker
        .topics()
        .get("t")
        .and_then(|t| t.partition(PartitionId::from(0)))
        .expect("partition");
    let fetched = partition
        .read_for_fetch(Offset::from(from), 1 << 20)
        .expect("read");
    let mut epochs = Vec::new();
    let mut rest = &fetched.records[..];
    while rest.len() >= 16 {
        let length = i32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
        epochs.push(i32::from_be_bytes(
            rest[12..16].try_into().expect("4 bytes"),
        ));
        rest = &rest[12 + usize::try_from(length).expect("positive")..];
    }
    epochs
}

#[test]
fn appends_carry_the_partition_epoch_from_its_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::open(BrokerOptions::new(dir.path())).expect("open");
    let topic = broker.topic_or_create("t").expect("topic");
    let partition = topic.partition(PartitionId::from(0)).expect("partition");
    assert_eq!(partition.leader_epoch(), LeaderEpoch::from(0), "a new log");
    topic
        .append_blocking(PartitionId::from(0), &mut one(b"a"))
        .expect("append");
    broker.shutdown().expect("shutdown");
    drop((partition, topic, broker));
    // Shutdown checkpoints every high watermark, in Kafka's format.
    let checkpoint =
        std::fs::read_to_string(dir.path().join("replication-offset-checkpoint")).expect("file");
    assert_eq!(checkpoint, "0\n1\nt 0 1\n");

    // A later leader (say, after a failover) wrote at epoch 3.
    let log = sluice_log::Log::open(
        &dir.path().join("logs").join("t-0"),
        sluice_log::LogConfig::default(),
    )
    .expect("open the log");
    log.append(&mut one(b"b"), LeaderEpoch::from(3))
        .expect("append at epoch 3");
    log.close().expect("close");
    drop(log);

    let broker = Broker::open(BrokerOptions::new(dir.path())).expect("reopen");
    let topic = broker.topics().get("t").expect("topic");
    let partition = topic.partition(PartitionId::from(0)).expect("partition");
    assert_eq!(partition.leader_epoch(), LeaderEpoch::from(3));
    topic
        .append_blocking(PartitionId::from(0), &mut one(b"c"))
        .expect("append");
    assert_eq!(batch_epochs(&broker, 0), vec![0, 3, 3]);
    assert_eq!(
        partition.end_offset_for_epoch(LeaderEpoch::from(0)),
        Some((LeaderEpoch::from(0), Offset::from(1)))
    );
    // Reads see all three records.
    let chunk = partition
        .read_chunk(Offset::from(0), 1 << 20, Undecodable::Fail)
        .expect("read")
        .expect("records");
    assert_eq!(chunk.deliverable(Offset::from(0)).count(), 3);
    assert_eq!(
        partition.resolve(Position::Latest).expect("resolve"),
        Some((Offset::from(3), -1))
    );
}
