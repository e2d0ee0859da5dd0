//! Contract: an idempotent producer's sequence state is rebuilt on open from
//! more than the active segment, so a retry of a batch written just before
//! a segment roll (its acknowledgement lost to a crash) is recognised as a
//! duplicate after a restart instead of failing as out of order; and a
//! producer the partition knows nothing of is told UNKNOWN_PRODUCER_ID.
//! Found by `sluice-bench crash-loop`.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_core::{Broker, BrokerOptions, CoreError};
use sluice_types::PartitionId;

const PRODUCER: i64 = 5;

/// One idempotent batch of one 600-byte record with sequence `sequence`.
fn batch(producer_id: i64, sequence: i32) -> BytesMut {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence,
        timestamp: 1_000 + i64::from(sequence),
        key: None,
        value: Some(Bytes::from(vec![b'v'; 600])),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf
}

fn open(dir: &std::path::Path) -> Broker {
    Broker::open(BrokerOptions {
        // One batch per segment: every append rolls.
        log: sluice_log::LogConfig {
            segment_bytes: 1024,
            ..sluice_log::LogConfig::default()
        },
        ..BrokerOptions::new(dir)
    })
    .expect("open broker")
}

fn append(broker: &Broker, producer_id: i64, sequence: i32) -> Result<i64, CoreError> {
    let topic = broker.topic_or_create("t")?;
    let mut records = batch(producer_id, sequence);
    let pending = topic.append_start(PartitionId::from(0), &mut records)?;
    Ok(pending.wait()?.first_offset.get())
}

#[test]
fn a_retry_of_the_batch_before_a_roll_is_a_duplicate_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = open(dir.path());
    let offsets: Vec<i64> = (0..4)
        .map(|sequence| append(&broker, PRODUCER, sequence).expect("append"))
        .collect();
    assert_eq!(offsets, vec![0, 1, 2, 3]);
    assert!(
        broker.logs().get("t-0").expect("log").segment_bases().len() >= 4,
        "every batch rolled a segment"
    );
    broker.shutdown().expect("shutdown");
    drop(broker);

    let broker = open(dir.path());
    // The batch of sequence 2 sits in the segment before the active one.
    assert_eq!(
        append(&broker, PRODUCER, 2).expect("a retry"),
        2,
        "deduplicated"
    );
    assert_eq!(
        append(&broker, PRODUCER, 3).expect("a retry"),
        3,
        "deduplicated"
    );
    assert_eq!(append(&broker, PRODUCER, 4).expect("the next batch"), 4);
    assert!(matches!(
        append(&broker, PRODUCER, 9),
        Err(CoreError::OutOfOrderSequence { expected: 5, .. })
    ));
    assert!(matches!(
        append(&broker, 77, 3),
        Err(CoreError::UnknownProducerId {
            producer_id: 77,
            found: 3
        })
    ));
    broker.shutdown().expect("shutdown");
}

/// A transactional batch of `producer_id` (epoch 0) with `sequence`.
fn transactional(producer_id: i64, sequence: i32) -> BytesMut {
    let mut records = batch(producer_id, sequence);
    sluice_log::batch::set_producer(&mut records, producer_id, 0, sequence, true)
        .expect("producer fields");
    records
}

/// KIP-890's guard: a producer's first batch of a transaction verified
/// under a guard is refused if a marker of the producer came meanwhile
/// (the transaction it was verified for ended); batches in flight
/// together share the guard; a new guard after the marker lets it in.
#[test]
fn a_verification_overtaken_by_a_marker_writes_nothing() {
    use sluice_core::transactions::{Marker, Outcome};
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = open(dir.path());
    let topic = broker.topic_or_create("t").expect("topic");
    let id = PartitionId::from(0);
    let partition = topic.partition(id).expect("partition");
    let guard = partition.verification_guard(PRODUCER);
    assert_eq!(
        partition.verification_guard(PRODUCER),
        guard,
        "shared while it stands"
    );
    let abort = Marker {
        outcome: Outcome::Abort,
        coordinator_epoch: 0,
    };
    topic.write_marker(id, PRODUCER, 0, abort).expect("marker");
    let refused = topic.append_start_guarded(id, &mut transactional(PRODUCER, 0), Some(guard));
    assert!(
        matches!(
            refused,
            Err(CoreError::TransactionOvertaken {
                producer_id: PRODUCER
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        topic.partition(id).expect("partition").log_end().get(),
        1,
        "only the marker"
    );
    let again = partition.verification_guard(PRODUCER);
    assert_ne!(again, guard);
    topic
        .append_start_guarded(id, &mut transactional(PRODUCER, 0), Some(again))
        .expect("verified after the marker")
        .wait()
        .expect("written");
    // Open now: the next batch of the transaction passes whatever guard.
    topic
        .append_start_guarded(id, &mut transactional(PRODUCER, 1), Some(guard))
        .expect("the transaction is open here")
        .wait()
        .expect("written");
    // A batch checked while the transaction was open, written after its
    // end: refused too.
    let while_open = partition.verification_guard(PRODUCER);
    assert_eq!(while_open, again, "the standing guard");
    topic.write_marker(id, PRODUCER, 0, abort).expect("marker");
    let late = topic.append_start_guarded(id, &mut transactional(PRODUCER, 2), Some(while_open));
    assert!(
        matches!(late, Err(CoreError::TransactionOvertaken { .. })),
        "{late:?}"
    );
}
