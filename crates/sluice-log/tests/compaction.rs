//! Contract of compaction: in sealed segments only the latest record per
//! key survives, tombstones go once `delete_retention` has passed, offsets
//! are never renumbered, the active segment is untouched, and the result
//! reads back the same after a reopen.

mod common;

use common::visible;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::records::RecordBatchDecoder;
use sluice_log::batch::{NewRecord, encode};
use sluice_log::{Log, LogConfig, LogError, ReadBound};
use sluice_types::ManualClock;
use sluice_types::{LeaderEpoch, Offset};

/// A batch of (key, value) records; a `None` value is a tombstone.
fn keyed(entries: &[(&str, Option<&str>)], timestamp: i64) -> BytesMut {
    let records: Vec<NewRecord<'_>> = entries
        .iter()
        .map(|(key, value)| NewRecord {
            key: Some(key.as_bytes()),
            value: value.map(str::as_bytes),
            timestamp,
        })
        .collect();
    encode(&records).expect("encode")
}

/// offset → (key, value) of every record readable from the log start.
fn contents(log: &Log) -> BTreeMap<i64, (String, Option<String>)> {
    let mut out = BTreeMap::new();
    let mut next = log.log_start();
    for _ in 0..10_000 {
        let read = log
            .read(next, 1 << 16, ReadBound::Upto(visible(log)))
            .expect("read");
        let Some(after) = read.next_offset else { break };
        let mut bytes = read.records;
        while !bytes.is_empty() {
            let set = RecordBatchDecoder::decode(&mut bytes).expect("decode");
            for r in set.records {
                let key = String::from_utf8_lossy(&r.key.unwrap_or_default()).into_owned();
                let value = r.value.map(|v| String::from_utf8_lossy(&v).into_owned());
                out.insert(r.offset, (key, value));
            }
        }
        next = after;
    }
    out
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        retention_time: None,
        cleanup_delete: false,
        cleanup_compact: true,
        delete_retention: Duration::from_secs(60),
        min_cleanable_dirty_percent: 1,
        ..LogConfig::default()
    }
}

#[test]
fn only_the_latest_value_per_key_survives_in_sealed_segments() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = Log::open_with_clock(dir.path(), config(), clock.clone())?;
    let epoch = LeaderEpoch::from(0);
    for round in 0..20 {
        let a = format!("a{round}");
        let b = format!("b{round}");
        log.append(
            &mut keyed(
                &[("a", Some(&a)), ("b", Some(&b)), ("c", Some("same"))],
                1_000_000,
            ),
            epoch,
        )?;
    }
    log.append(&mut keyed(&[("b", None)], 1_000_000), epoch)?;
    log.roll()?;
    log.append(&mut keyed(&[("a", Some("active"))], 1_000_000), epoch)?;
    let before = contents(&log);
    let end = log.log_end();

    let outcome = log.compact()?;
    assert!(outcome.segments_cleaned > 0, "{outcome:?}");
    assert!(outcome.bytes_after < outcome.bytes_before);
    let after = contents(&log);
    assert_eq!(log.log_end(), end, "offsets are not renumbered");
    // Sealed part: one record per key, the latest, at its original offset.
    let sealed: Vec<_> = after.iter().filter(|(o, _)| **o < 61).collect();
    let keys: Vec<&str> = sealed.iter().map(|(_, (k, _))| k.as_str()).collect();
    assert_eq!(keys.len(), 3, "{sealed:?}");
    assert_eq!(after.get(&57), Some(&("a".into(), Some("a19".into()))));
    assert_eq!(after.get(&59), Some(&("c".into(), Some("same".into()))));
    assert_eq!(
        after.get(&60),
        Some(&("b".into(), None)),
        "tombstone kept until its time"
    );
    assert_eq!(after.get(&61), before.get(&61), "active segment untouched");
    for (offset, record) in &after {
        assert_eq!(before.get(offset), Some(record), "offset {offset} changed");
    }

    // A second pass with nothing new does nothing.
    assert_eq!(log.compact()?.segments_cleaned, 0);

    // Once the tombstone's time is up it goes too.
    clock.advance(120_000);
    log.roll()?;
    log.append(&mut keyed(&[("d", Some("x"))], 1_120_000), epoch)?;
    log.compact()?;
    let compacted = contents(&log);
    assert_eq!(compacted.get(&60), None, "expired tombstone removed");
    // "a" was written again at 61, now sealed: that is its latest value.
    assert_eq!(compacted.get(&57), None);
    assert_eq!(
        compacted.get(&61),
        Some(&("a".into(), Some("active".into())))
    );
    assert_eq!(compacted.get(&59), Some(&("c".into(), Some("same".into()))));

    drop(log);
    let reopened = Log::open_with_clock(dir.path(), config(), clock)?;
    assert_eq!(reopened.log_end(), Offset::from(63));
    assert_eq!(
        contents(&reopened),
        compacted,
        "reads the same after a reopen"
    );
    Ok(())
}

#[test]
fn compaction_is_off_unless_configured() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            cleanup_compact: false,
            ..config()
        },
    )?;
    for _ in 0..10 {
        log.append(&mut keyed(&[("k", Some("v"))], 0), LeaderEpoch::from(0))?;
    }
    log.roll()?;
    assert_eq!(log.compact()?.segments_cleaned, 0);
    assert_eq!(contents(&log).len(), 10);
    Ok(())
}

/// Writes `k` five times into a segment compaction then cleans (all of it
/// dirty), then `k` once more at `1_000_000` and, 61 s later, one record
/// at that time: only the first is clean, so the dirty share stays below
/// a ratio of 100 %.
fn clean_then_dirty(log: &Log, clock: &ManualClock) -> Result<(), LogError> {
    let epoch = LeaderEpoch::from(0);
    for round in 0..5 {
        let value = format!("v{round}");
        log.append(&mut keyed(&[("k", Some(&value))], 1_000_000), epoch)?;
    }
    log.roll()?;
    log.append(&mut keyed(&[("k", Some("v5"))], 1_000_000), epoch)?;
    assert!(log.compact()?.segments_cleaned > 0, "all dirty: cleaned");
    log.append(&mut keyed(&[("k", Some("v6"))], 1_030_000), epoch)?;
    clock.advance(61_000);
    log.append(&mut keyed(&[("other", Some("x"))], 1_061_000), epoch)?;
    Ok(())
}

#[test]
fn max_compaction_lag_compacts_below_the_dirty_ratio_and_rolls_the_active_segment()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let lagged = LogConfig {
        segment_bytes: 1 << 20,
        min_cleanable_dirty_percent: 100,
        max_compaction_lag: Some(Duration::from_secs(60)),
        ..config()
    };
    let log = Log::open_with_clock(&dir.path().join("lagged"), lagged.clone(), clock.clone())?;
    clean_then_dirty(&log, &clock)?;
    // The active segment's first record became older than the lag: the
    // last append rolled it, and compaction takes it below the ratio.
    assert_eq!(log.segment_count(), 3, "the lag rolled the active segment");
    let outcome = log.compact()?;
    assert!(outcome.segments_cleaned > 0, "overdue: {outcome:?}");
    let ks: Vec<_> = contents(&log)
        .into_values()
        .filter(|(key, _)| key == "k")
        .collect();
    assert_eq!(ks, vec![("k".to_owned(), Some("v6".to_owned()))]);

    // Without the lag: no early roll, and once rolled by hand the ratio
    // keeps the dirty segment as it is.
    let plain = Log::open_with_clock(
        &dir.path().join("plain"),
        LogConfig {
            max_compaction_lag: None,
            ..lagged
        },
        clock.clone(),
    )?;
    clean_then_dirty(&plain, &clock)?;
    assert_eq!(plain.segment_count(), 2, "no roll without the lag");
    plain.roll()?;
    clock.advance(600_000);
    assert_eq!(plain.compact()?.segments_cleaned, 0);
    Ok(())
}

/// One transactional batch of `producer` at `timestamp`: a record
/// (`key`, `value`), or with `marker`, a marker (a control record, commit
/// when `Some(true)`; every marker of a kind has the same key).
fn transactional(
    producer: i64,
    (key, value): (&str, &str),
    marker: Option<bool>,
    timestamp: i64,
) -> BytesMut {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let record = Record {
        transactional: true,
        control: marker.is_some(),
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: producer,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: if marker.is_some() { -1 } else { 0 },
        timestamp,
        key: Some(bytes::Bytes::from(match marker {
            Some(commit) => vec![0, 0, 0, u8::from(commit)],
            None => key.as_bytes().to_vec(),
        })),
        value: Some(bytes::Bytes::from(match marker {
            Some(_) => vec![0, 0, 0, 0, 0, 0],
            None => value.as_bytes().to_vec(),
        })),
        headers: Default::default(),
    };
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    out
}

fn others(log: &Log, count: usize, timestamp: i64) -> Result<(), LogError> {
    for _ in 0..count {
        log.append(
            &mut keyed(&[("other", Some("x"))], timestamp),
            LeaderEpoch::from(0),
        )?;
    }
    Ok(())
}

/// A committed transaction's records are compacted like any others (its
/// record is the latest of its key); an aborted one's are removed; one
/// whose marker is not in the cleanable range yet is kept whole and
/// stands for nothing; markers younger than `delete_retention` stay.
#[test]
fn compaction_cleans_committed_transactions_drops_aborted_ones_and_keeps_undecided_ones()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = Log::open_with_clock(dir.path(), config(), clock)?;
    let epoch = LeaderEpoch::from(0);
    let at = 1_000_000;
    log.append(&mut keyed(&[("a", Some("plain-a"))], at), epoch)?; // 0
    log.append(&mut keyed(&[("c", Some("plain-c"))], at), epoch)?; // 1
    log.append(&mut transactional(7, ("a", "committed-a"), None, at), epoch)?; // 2
    log.append(&mut transactional(8, ("b", "aborted-b"), None, at), epoch)?; // 3
    log.append(&mut transactional(9, ("c", "undecided-c"), None, at), epoch)?; // 4
    log.append(&mut transactional(7, ("", ""), Some(true), at), epoch)?; // 5
    log.append(&mut transactional(8, ("", ""), Some(false), at), epoch)?; // 6
    others(&log, 10, at)?;
    log.roll()?;
    // Producer 9's commit is in the active segment: undecided for now.
    log.append(&mut transactional(9, ("", ""), Some(true), at), epoch)?;
    let before = contents(&log);

    assert!(log.compact()?.segments_cleaned > 0);
    let after = contents(&log);
    for gone in [0, 3] {
        assert!(!after.contains_key(&gone), "offset {gone}: {after:?}");
    }
    for kept in [1, 2, 4, 5, 6] {
        assert_eq!(after.get(&kept), before.get(&kept), "offset {kept}");
    }
    let others = after.values().filter(|(k, _)| k == "other").count();
    assert_eq!(others, 1, "{after:?}");
    Ok(())
}

/// A commit marker goes (its batch emptied, the offset kept) only once a
/// pass found its transaction with no record left and it is older than
/// `delete_retention`; an abort marker stays (readers of the aborted
/// transaction stop dropping its producer's records at it); the log reads
/// back the same after a reopen.
#[test]
fn a_commit_marker_goes_once_its_records_are_gone_and_delete_retention_passed()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = Log::open_with_clock(dir.path(), config(), clock.clone())?;
    let epoch = LeaderEpoch::from(0);
    let at = 1_000_000;
    log.append(&mut transactional(7, ("a", "committed-a"), None, at), epoch)?; // 0
    log.append(&mut transactional(7, ("", ""), Some(true), at), epoch)?; // 1
    log.append(&mut transactional(8, ("b", "aborted-b"), None, at), epoch)?; // 2
    log.append(&mut transactional(8, ("", ""), Some(false), at), epoch)?; // 3
    log.append(&mut keyed(&[("a", Some("plain-a"))], at), epoch)?; // 4
    log.append(&mut transactional(9, ("c", "committed-c"), None, at), epoch)?; // 5
    log.append(&mut transactional(9, ("", ""), Some(true), at), epoch)?; // 6
    others(&log, 10, at)?;
    log.roll()?;
    log.compact()?;
    let first = contents(&log);
    for gone in [0, 2] {
        assert!(!first.contains_key(&gone), "offset {gone}: {first:?}");
    }
    for kept in [1, 3, 4, 5, 6] {
        assert!(first.contains_key(&kept), "offset {kept}: {first:?}");
    }

    // Past delete_retention, with new records to clean: the commit
    // marker goes, the abort marker stays.
    clock.advance(61_000);
    others(&log, 10, 1_061_000)?;
    log.roll()?;
    log.compact()?;
    let second = contents(&log);
    assert!(
        !second.contains_key(&1),
        "the commit marker goes: {second:?}"
    );
    assert!(
        second.contains_key(&3),
        "the abort marker stays: {second:?}"
    );
    for kept in [5, 6] {
        assert!(
            second.contains_key(&kept),
            "a commit whose record stays keeps its marker: {second:?}"
        );
    }
    let end = log.log_end();
    drop(log);
    let reopened = Log::open_with_clock(dir.path(), config(), clock)?;
    assert_eq!(contents(&reopened), second);
    assert_eq!(reopened.log_end(), end, "offsets are never renumbered");
    Ok(())
}

/// A replica that lagged behind the leader's compaction holds a
/// transaction's records but reads its commit marker emptied: the
/// transaction counts as committed, so its records are compacted like
/// others (not kept whole as undecided forever).
#[test]
fn an_emptied_marker_after_records_still_held_commits_them() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = Log::open_with_clock(dir.path(), config(), clock)?;
    let epoch = LeaderEpoch::from(0);
    let at = 1_000_000;
    log.append(&mut transactional(7, ("a", "committed-a"), None, at), epoch)?; // 0
    let marker = transactional(7, ("", ""), Some(true), at);
    let mut emptied = BytesMut::from(&sluice_log::batch::emptied(&marker).expect("emptied")[..]);
    log.append(&mut emptied, epoch)?; // 1
    log.append(&mut keyed(&[("a", Some("plain-a"))], at), epoch)?; // 2
    others(&log, 10, at)?;
    log.roll()?;
    log.compact()?;
    let after = contents(&log);
    assert!(!after.contains_key(&0), "superseded: {after:?}");
    assert!(after.contains_key(&2), "{after:?}");
    Ok(())
}
