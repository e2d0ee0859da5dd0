//! The one applier of committed metadata commands, driven the way a Raft
//! quorum drives it (`MetadataMachine`): commands applied again after a
//! restart, snapshots restored over live topics, and topics placed on
//! other nodes.

mod common;

use sluice_core::{
    Broker, BrokerOptions, CoreError, Metadata, MetadataMachine, Position, Undecodable,
};
use sluice_types::{Offset, PartitionId};

use common::one;

const NODE: i32 = 1;

fn create(id: &str) -> String {
    format!(
        r#"{{"command":"create_topic","name":"t","id":"{id}","partitions":2,"config":{{}},"replicas":[[1],[2]]}}"#
    )
}

const FIRST_ID: &str = "0123456789abcdef0123456789abcdef";
const SECOND_ID: &str = "fedcba9876543210fedcba9876543210";

/// A node of a cluster with its metadata, opened after `replayed` were
/// applied (as openraft applies the committed log at start).
fn open(dir: &std::path::Path, replayed: &[String]) -> (Broker, MetadataMachine) {
    let metadata = Metadata::for_quorum(NODE);
    let machine = MetadataMachine::new(metadata.clone());
    for command in replayed {
        assert_eq!(machine.apply(command), "", "{command}");
    }
    let broker = Broker::open(BrokerOptions {
        node_id: NODE,
        quorum_metadata: Some(metadata),
        ..BrokerOptions::new(dir)
    })
    .expect("open");
    (broker, machine)
}

fn values(broker: &Broker) -> Vec<Vec<u8>> {
    let partition = broker
        .topics()
        .get("t")
        .and_then(|t| t.partition(PartitionId::from(0)))
        .expect("partition 0 is on this node");
    let start = partition
        .resolve(Position::Earliest)
        .expect("resolve")
        .map_or(Offset::from(0), |(offset, _)| offset);
    partition
        .read_chunk(start, 1 << 20, Undecodable::Fail)
        .expect("read")
        .map(|chunk| {
            chunk
                .deliverable(start)
                .map(|r| r.value.clone().unwrap_or_default().to_vec())
                .collect()
        })
        .unwrap_or_default()
}

fn append(broker: &Broker, value: &[u8]) {
    broker
        .topics()
        .get("t")
        .expect("topic")
        .append_blocking(PartitionId::from(0), &mut one(value))
        .expect("append");
}

#[test]
fn commands_applied_again_keep_live_partitions_and_place_partitions_on_their_nodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, machine) = open(dir.path(), &[]);
    assert_eq!(machine.apply(&create(FIRST_ID)), "");
    let topic = broker.topics().get("t").expect("created by the applier");
    assert_eq!(topic.partition_count(), 2);
    assert!(matches!(
        topic.local_partition(PartitionId::from(1)),
        Err(CoreError::NotLeader {
            leader: Some(2),
            ..
        })
    ));
    assert!(matches!(
        topic.local_partition(PartitionId::from(2)),
        Err(CoreError::UnknownPartition { .. })
    ));
    assert!(
        !dir.path().join("logs/t-1").exists(),
        "partition 1 is node 2's"
    );
    append(&broker, b"kept");

    // Applied again, the command is refused and nothing changes.
    assert!(machine.apply(&create(FIRST_ID)).contains("topic_exists"));
    assert_eq!(values(&broker), [b"kept".to_vec()]);

    // A snapshot restored over the live topic keeps it.
    let snapshot = machine.snapshot();
    machine.restore(&snapshot).expect("restore");
    assert_eq!(values(&broker), [b"kept".to_vec()]);
    broker.shutdown().expect("shutdown");
    drop(broker);

    // After a restart the committed log is applied again from the start:
    // the partition's log names its topic, so it is kept.
    let (broker, machine) = open(dir.path(), &[create(FIRST_ID)]);
    assert_eq!(values(&broker), [b"kept".to_vec()]);

    // A snapshot where `t` is another topic (deleted and created again
    // while this node looked away) replaces the old data.
    let replaced = snapshot.replace(FIRST_ID, SECOND_ID);
    assert_ne!(replaced, snapshot);
    machine.restore(&replaced).expect("restore");
    assert!(values(&broker).is_empty(), "{:?}", values(&broker));
    append(&broker, b"new");

    assert_eq!(
        machine.apply(r#"{"command":"delete_topic","name":"t"}"#),
        ""
    );
    assert!(broker.topics().get("t").is_none());
    assert!(!dir.path().join("logs/t-0").exists());
    assert!(
        machine
            .apply(r#"{"command":"delete_topic","name":"t"}"#)
            .contains("unknown_topic")
    );
    broker.shutdown().expect("shutdown");
}

#[test]
fn a_log_left_by_a_deleted_topic_is_not_taken_by_a_new_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, machine) = open(dir.path(), &[create(FIRST_ID)]);
    append(&broker, b"old");
    broker.shutdown().expect("shutdown");
    drop(broker);
    // The node restarts having missed the deletion; the new topic's
    // creation reaches it as a command.
    let (broker, _machine) = open(dir.path(), &[create(SECOND_ID)]);
    assert!(values(&broker).is_empty());
    drop(machine);
    broker.shutdown().expect("shutdown");
}

#[test]
fn a_cluster_of_one_keeps_its_commands_and_offsets_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::open(BrokerOptions::new(dir.path())).expect("open");
    let topic = broker
        .topics()
        .create("t", 1, sluice_core::TopicConfig::default())
        .expect("create");
    topic
        .append_blocking(PartitionId::from(0), &mut one(b"a"))
        .expect("append");
    assert!(matches!(
        broker
            .topics()
            .create("t", 1, sluice_core::TopicConfig::default()),
        Err(CoreError::TopicExists { .. })
    ));
    broker.topics().grow("t", 3, false).expect("grow");
    let first = broker.producer_ids().allocate().expect("id");
    broker.shutdown().expect("shutdown");
    drop(broker);
    let broker = Broker::open(BrokerOptions::new(dir.path())).expect("reopen");
    let topic = broker.topics().get("t").expect("topic");
    assert_eq!(topic.partition_count(), 3);
    assert_eq!(topic.partitions().len(), 3);
    assert_eq!(values(&broker), [b"a".to_vec()]);
    assert!(broker.producer_ids().allocate().expect("id") > first);
    assert_eq!(
        topic.partition(PartitionId::from(0)).expect("p0").log_end(),
        Offset::from(1)
    );
    broker.shutdown().expect("shutdown");
}
