//! Behaviour of one log through its public API: offsets, reads, durability,
//! rolling, retention, truncation, timestamps, epochs and reopening.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{batch, decode, values, visible};
use sluice_log::{Durability, Log, LogConfig, LogError, ReadBound};
use sluice_types::ManualClock;
use sluice_types::{LeaderEpoch, Offset};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        retention_time: None,
        ..LogConfig::default()
    }
}

fn epoch(n: i32) -> LeaderEpoch {
    LeaderEpoch::from(n)
}

fn o(n: i64) -> Offset {
    Offset::from(n)
}

/// Every record from `from` to the high watermark, by repeated reads.
fn read_all(log: &Log, from: Offset) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    for _ in 0..100_000 {
        let result = log
            .read(next, 16 * 1024, ReadBound::Upto(visible(log)))
            .expect("read");
        let Some(after) = result.next_offset else {
            break;
        };
        out.extend(
            decode(&result.records)
                .into_iter()
                .filter(|r| r.0 >= next.get()),
        );
        next = after;
    }
    out
}

#[test]
fn offsets_are_assigned_in_order_and_read_back() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), config())?;
    let mut first = batch(&values(1, 3, 10), 1_000);
    let info = log.append(&mut first, epoch(0))?;
    assert_eq!((info.first_offset, info.last_offset), (o(0), o(2)));
    let info = log.append(&mut batch(&values(2, 2, 10), 2_000), epoch(0))?;
    assert_eq!((info.first_offset, info.last_offset), (o(3), o(4)));
    assert_eq!((log.log_end(), visible(&log)), (o(5), o(5)));

    let records = read_all(&log, o(0));
    let offsets: Vec<i64> = records.iter().map(|r| r.0).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    assert_eq!(
        records.get(3).map(|r| r.2.clone()),
        values(2, 1, 10).first().cloned()
    );
    Ok(())
}

#[test]
fn a_read_from_the_middle_of_a_batch_returns_that_whole_batch() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), config())?;
    log.append(&mut batch(&values(1, 5, 10), 0), epoch(0))?;
    log.append(&mut batch(&values(2, 5, 10), 0), epoch(0))?;
    let result = log.read(o(7), 1, ReadBound::Upto(visible(&log)))?;
    assert_eq!(result.first_offset, Some(o(5)));
    assert_eq!(result.next_offset, Some(o(10)));
    let offsets: Vec<i64> = decode(&result.records).iter().map(|r| r.0).collect();
    assert_eq!(
        offsets,
        vec![5, 6, 7, 8, 9],
        "one batch even though max_bytes is 1"
    );
    Ok(())
}

#[test]
fn reads_outside_the_log_are_out_of_range() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), config())?;
    log.append(&mut batch(&values(1, 2, 10), 0), epoch(0))?;
    let at_end = log.read(o(2), 1024, ReadBound::Upto(visible(&log)))?;
    assert!(at_end.records.is_empty());
    assert!(matches!(
        log.read(o(3), 1024, ReadBound::Upto(visible(&log))),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        log.read(o(-1), 1024, ReadBound::Upto(visible(&log))),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    Ok(())
}

#[test]
fn the_durable_end_follows_syncs_and_reads_stop_at_the_bound_given() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), config())?;
    let info = log.append_unsynced(&mut batch(&values(1, 2, 10), 0), epoch(0))?;
    assert_eq!((log.durable_end(), log.log_end()), (o(0), o(2)));
    // A reader bounded by the durable end (a partition under `always`)
    // sees nothing yet; one bounded by the log end sees the batch.
    assert!(
        log.read(o(0), 1024, ReadBound::Upto(log.durable_end()))?
            .records
            .is_empty()
    );
    assert!(!log.read(o(0), 1024, ReadBound::LogEnd)?.records.is_empty());
    assert!(
        !log.read(o(0), 1024, ReadBound::Upto(o(100)))?
            .records
            .is_empty(),
        "a bound past the log end is the log end"
    );
    assert!(log.is_dirty());
    log.sync_to(info.last_offset.plus(1))?;
    assert_eq!(log.durable_end(), o(2));
    assert!(!log.is_dirty());
    Ok(())
}

#[test]
fn under_never_the_durable_end_stays_until_a_flush() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            durability: Durability::Never,
            ..config()
        },
    )?;
    log.append(&mut batch(&values(1, 2, 10), 0), epoch(0))?;
    assert_eq!((log.durable_end(), log.log_end()), (o(0), o(2)));
    assert!(log.is_dirty(), "never syncs by itself");
    log.flush()?;
    assert_eq!(log.durable_end(), o(2));
    Ok(())
}

#[test]
fn a_roll_syncs_nothing_and_the_next_sync_covers_the_sealed_segments() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            durability: Durability::Never,
            segment_bytes: 4 * 1024,
            ..config()
        },
    )?;
    let syncs = || sluice_log::metrics().fsync_latency.count();
    let before = syncs();
    for i in 0..6 {
        log.append(&mut batch(&values(i, 4, 500), 1_000 + i as i64), epoch(0))?;
    }
    assert!(
        log.segment_count() >= 3,
        "rolled: {:?}",
        log.segment_bases()
    );
    assert_eq!(syncs(), before, "a roll runs no fsync");
    assert_eq!(
        log.durable_end(),
        o(0),
        "nothing counts as durable before a sync"
    );
    log.flush()?;
    assert_eq!(log.durable_end(), o(24));
    assert_eq!(
        syncs(),
        before + 1,
        "one sync covers the sealed segments too"
    );
    drop(log);
    let reopened = Log::open(dir.path(), config())?;
    assert_eq!(read_all(&reopened, o(0)).len(), 24);
    Ok(())
}

#[test]
fn concurrent_appenders_share_syncs_and_get_distinct_offsets() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(Log::open(dir.path(), config())?);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || -> Result<Vec<Offset>, LogError> {
                (0..50)
                    .map(|i| {
                        let info =
                            log.append(&mut batch(&values(t * 1000 + i, 2, 100), 0), epoch(0))?;
                        // Acknowledged under `always`: synced, so visible.
                        assert!(visible(&log) > info.last_offset);
                        Ok(info.first_offset)
                    })
                    .collect()
            })
        })
        .collect();
    let mut firsts = Vec::new();
    for thread in threads {
        firsts.extend(thread.join().expect("appender thread")?);
    }
    firsts.sort();
    let expected: Vec<Offset> = (0..400).map(|i| o(i * 2)).collect();
    assert_eq!(firsts, expected);
    assert_eq!(read_all(&log, o(0)).len(), 800);
    Ok(())
}

#[test]
fn segments_roll_by_size_and_by_age() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = Log::open_with_clock(
        dir.path(),
        LogConfig {
            segment_bytes: 4096,
            segment_time: Duration::from_secs(60),
            ..config()
        },
        clock.clone(),
    )?;
    for i in 0..10 {
        log.append(&mut batch(&values(i, 1, 1000), 1_000_000), epoch(0))?;
    }
    let by_size = log.segment_count();
    assert!(
        by_size >= 3,
        "10 KB in 4 KiB segments made {by_size} segments"
    );

    let aged = Log::open_with_clock(
        &dir.path().join("aged"),
        LogConfig {
            segment_time: Duration::from_secs(60),
            ..config()
        },
        clock.clone(),
    )?;
    aged.append(&mut batch(&values(1, 1, 10), 1_000_000), epoch(0))?;
    clock.advance(59_000);
    aged.append(&mut batch(&values(2, 1, 10), 1_059_000), epoch(0))?;
    assert_eq!(aged.segment_count(), 1);
    clock.advance(1_000);
    aged.append(&mut batch(&values(3, 1, 10), 1_060_000), epoch(0))?;
    assert_eq!(aged.segment_bases(), vec![o(0), o(2)]);
    assert_eq!(read_all(&aged, o(0)).len(), 3);
    Ok(())
}

#[test]
fn retention_by_size_deletes_oldest_segments_and_moves_the_start() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: 4096,
            retention_bytes: Some(8192),
            ..config()
        },
    )?;
    for i in 0..40 {
        log.append(&mut batch(&values(i, 1, 1000), 0), epoch(0))?;
    }
    let before = log.size_bytes();
    let outcome = log.enforce_retention()?;
    assert!(outcome.segments_deleted > 0);
    assert!(log.size_bytes() >= 8192 - 4096 && log.size_bytes() < before);
    assert_eq!(log.log_start(), outcome.log_start);
    assert_eq!(log.segment_bases().first().copied(), Some(log.log_start()));
    assert!(matches!(
        log.read(o(0), 1024, ReadBound::Upto(visible(&log))),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let remaining = read_all(&log, log.log_start());
    assert_eq!(remaining.first().map(|r| r.0), Some(log.log_start().get()));
    assert_eq!(remaining.last().map(|r| r.0), Some(39));

    drop(log);
    let reopened = Log::open(dir.path(), config())?;
    assert_eq!(
        reopened.log_start(),
        outcome.log_start,
        "log start survives reopen"
    );
    Ok(())
}

#[test]
fn retention_by_age_uses_the_newest_timestamp_of_each_segment() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(10_000_000));
    let log = Log::open_with_clock(
        dir.path(),
        LogConfig {
            segment_bytes: 2048,
            retention_time: Some(Duration::from_secs(3600)),
            ..config()
        },
        clock.clone(),
    )?;
    // Old records, then new ones; each batch fills most of a segment.
    for i in 0..3 {
        log.append(&mut batch(&values(i, 1, 1500), 1_000), epoch(0))?;
    }
    for i in 3..5 {
        log.append(&mut batch(&values(i, 1, 1500), 9_999_000), epoch(0))?;
    }
    let outcome = log.enforce_retention()?;
    assert_eq!(outcome.segments_deleted, 3);
    assert_eq!(log.log_start(), o(3));
    // Everything expires: the active segment is rolled and deleted too.
    clock.advance(10_000_000);
    log.enforce_retention()?;
    assert_eq!(log.log_start(), o(5));
    assert_eq!(log.log_end(), o(5));
    let info = log.append(&mut batch(&values(9, 1, 10), 20_000_000), epoch(0))?;
    assert_eq!(
        info.first_offset,
        o(5),
        "offsets continue after everything expired"
    );
    Ok(())
}

#[test]
fn truncation_removes_whole_batches_and_survives_reopen() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: 2048,
            ..config()
        },
    )?;
    for i in 0..20 {
        log.append(&mut batch(&values(i, 2, 300), 0), epoch(0))?;
    }
    assert!(log.segment_count() > 3);
    // Offset 21 is inside the batch [20, 21]: that batch goes whole.
    assert_eq!(log.truncate_to(o(21))?, o(20));
    assert_eq!((log.log_end(), visible(&log)), (o(20), o(20)));
    let info = log.append(&mut batch(&values(99, 1, 10), 0), epoch(1))?;
    assert_eq!(info.first_offset, o(20));
    drop(log);

    let log = Log::open(dir.path(), config())?;
    let records = read_all(&log, o(0));
    assert_eq!(records.len(), 21);
    assert_eq!(
        records.last().map(|r| r.2.clone()),
        values(99, 1, 10).first().cloned()
    );

    // Truncating below the start empties the log and restarts it there.
    log.advance_log_start(o(4))?;
    assert_eq!(log.truncate_to(o(2))?, o(2));
    assert_eq!((log.log_start(), log.log_end()), (o(2), o(2)));
    Ok(())
}

/// A follower whose leader's log starts past its end starts over there.
#[test]
fn a_log_restarts_past_its_end_and_stays_there_after_reopen() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), config())?;
    for i in 0..3 {
        log.append(&mut batch(&values(i, 2, 10), 0), epoch(0))?;
    }
    assert_eq!(log.log_end(), o(6));
    assert_eq!(log.restart_at(o(40))?, o(40));
    assert_eq!((log.log_start(), log.log_end()), (o(40), o(40)));
    assert!(read_all(&log, o(40)).is_empty());
    let info = log.append(&mut batch(&values(7, 1, 10), 0), epoch(2))?;
    assert_eq!(info.first_offset, o(40));
    drop(log);

    let log = Log::open(dir.path(), config())?;
    assert_eq!((log.log_start(), log.log_end()), (o(40), o(41)));
    assert_eq!(read_all(&log, o(40)).len(), 1);
    Ok(())
}

#[test]
fn timestamps_find_the_first_record_at_or_after() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: 2048,
            ..config()
        },
    )?;
    // Batch i holds records with timestamps 1000*i, 1000*i + 1, …, + 9.
    for i in 0..30 {
        log.append(&mut batch(&values(i, 10, 50), 1000 * i as i64), epoch(0))?;
    }
    assert!(log.segment_count() > 3);
    assert_eq!(log.offset_for_timestamp(0, visible(&log))?, Some((o(0), 0)));
    assert_eq!(
        log.offset_for_timestamp(5_005, visible(&log))?,
        Some((o(55), 5_005))
    );
    assert_eq!(
        log.offset_for_timestamp(5_010, visible(&log))?,
        Some((o(60), 6_000))
    );
    assert_eq!(
        log.offset_for_timestamp(29_009, visible(&log))?,
        Some((o(299), 29_009))
    );
    assert_eq!(log.offset_for_timestamp(29_010, visible(&log))?, None);
    assert_eq!(log.max_timestamp(visible(&log))?, Some((o(299), 29_009)));
    drop(log);
    let log = Log::open(dir.path(), config())?;
    assert_eq!(
        log.offset_for_timestamp(17_003, visible(&log))?,
        Some((o(173), 17_003)),
        "after reopen"
    );
    Ok(())
}

#[test]
fn leader_epochs_are_checkpointed_and_answer_end_offsets() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), config())?;
    log.append(&mut batch(&values(1, 5, 10), 0), epoch(1))?;
    log.append(&mut batch(&values(2, 5, 10), 0), epoch(3))?;
    log.append(&mut batch(&values(3, 5, 10), 0), epoch(3))?;
    assert_eq!(log.end_offset_for_epoch(epoch(1)), Some((epoch(1), o(5))));
    assert_eq!(log.end_offset_for_epoch(epoch(2)), Some((epoch(1), o(5))));
    assert_eq!(log.end_offset_for_epoch(epoch(3)), Some((epoch(3), o(15))));
    assert_eq!(log.end_offset_for_epoch(epoch(0)), None);
    let result = log.read(o(5), 1024, ReadBound::Upto(visible(&log)))?;
    let stamped = sluice_log::batch::BatchHeader::parse(&result.records).expect("header");
    assert_eq!(
        stamped.leader_epoch,
        epoch(3),
        "epoch written into the batch"
    );
    drop(log);
    let log = Log::open(dir.path(), config())?;
    assert_eq!(log.end_offset_for_epoch(epoch(1)), Some((epoch(1), o(5))));
    log.truncate_to(o(5))?;
    assert_eq!(log.end_offset_for_epoch(epoch(3)), Some((epoch(1), o(5))));
    Ok(())
}

#[test]
fn bad_batches_are_refused_and_nothing_is_written() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            max_batch_bytes: 2000,
            ..config()
        },
    )?;
    let mut damaged = batch(&values(1, 2, 10), 0);
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    assert!(matches!(
        log.append(&mut damaged, epoch(0)),
        Err(LogError::InvalidBatch { .. })
    ));
    assert!(matches!(
        log.append(&mut [0u8; 10], epoch(0)),
        Err(LogError::InvalidBatch { .. })
    ));
    assert!(matches!(
        log.append(&mut [], epoch(0)),
        Err(LogError::InvalidBatch { .. })
    ));
    let mut large = batch(&values(1, 1, 5000), 0);
    let err = log.append(&mut large, epoch(0)).expect_err("too large");
    assert!(
        matches!(err, LogError::BatchTooLarge { limit: 2000, .. }),
        "{err}"
    );
    assert_eq!((log.log_end(), log.size_bytes()), (o(0), 0));
    log.append(&mut batch(&values(1, 2, 10), 0), epoch(0))?;
    assert_eq!(log.log_end(), o(2), "the log still works after refusals");
    Ok(())
}

#[test]
fn clean_and_unclean_reopens_keep_every_acknowledged_batch() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let expected: Vec<Vec<u8>> = (0..50).flat_map(|i| values(i, 3, 200)).collect();
    {
        let log = Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 8192,
                ..config()
            },
        )?;
        for i in 0..25 {
            log.append(&mut batch(&values(i, 3, 200), 0), epoch(0))?;
        }
        log.close()?;
        assert!(matches!(
            log.append(&mut batch(&values(0, 1, 1), 0), epoch(0)),
            Err(LogError::Closed)
        ));
    }
    {
        let log = Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 8192,
                ..config()
            },
        )?;
        assert_eq!(log.log_end(), o(75), "clean reopen");
        for i in 25..50 {
            log.append(&mut batch(&values(i, 3, 200), 0), epoch(0))?;
        }
        // Dropped without close: the next open runs full recovery.
    }
    let log = Log::open(dir.path(), config())?;
    let values_read: Vec<Vec<u8>> = read_all(&log, o(0)).into_iter().map(|r| r.2).collect();
    assert_eq!(values_read, expected);
    Ok(())
}

#[test]
fn advancing_the_log_start_hides_earlier_offsets() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: 2048,
            ..config()
        },
    )?;
    for i in 0..10 {
        log.append(&mut batch(&values(i, 2, 500), 0), epoch(0))?;
    }
    let segments = log.segment_count();
    assert_eq!(log.advance_log_start(o(13))?, o(13));
    assert!(
        log.segment_count() < segments,
        "wholly earlier segments deleted"
    );
    assert!(matches!(
        log.read(o(12), 1024, ReadBound::Upto(visible(&log))),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(read_all(&log, o(13)).first().map(|r| r.0), Some(13));
    assert!(matches!(
        log.advance_log_start(o(21)),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    drop(log);
    assert_eq!(Log::open(dir.path(), config())?.log_start(), o(13));
    Ok(())
}

#[test]
fn timestamp_lookups_never_answer_below_the_log_start() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), config())?;
    // One batch, offsets 0..=9, timestamps 100..=109.
    log.append(&mut batch(&values(1, 10, 10), 100), epoch(0))?;
    log.advance_log_start(o(4))?;
    assert_eq!(
        log.offset_for_timestamp(0, visible(&log))?,
        Some((o(4), 104))
    );
    assert_eq!(
        log.offset_for_timestamp(106, visible(&log))?,
        Some((o(6), 106))
    );
    Ok(())
}

#[test]
fn flush_messages_makes_an_append_wait_for_a_sync_every_n_records() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            durability: Durability::Never,
            flush_messages: Some(5),
            ..config()
        },
    )?;
    // 2 + 2 records: under 5 unsynced, written without a sync.
    assert!(
        !log.append(&mut batch(&values(1, 2, 10), 0), epoch(0))?
            .sync_due
    );
    assert!(
        !log.append(&mut batch(&values(2, 2, 10), 0), epoch(0))?
            .sync_due
    );
    assert!(log.is_dirty());
    // The fifth record is due: `append` syncs before it returns.
    assert!(
        log.append(&mut batch(&values(3, 2, 10), 0), epoch(0))?
            .sync_due
    );
    assert!(!log.is_dirty(), "synced once 5 records were unsynced");
    assert!(
        !log.append(&mut batch(&values(4, 1, 10), 0), epoch(0))?
            .sync_due
    );

    let plain = Log::open(
        &dir.path().join("plain"),
        LogConfig {
            durability: Durability::Never,
            ..config()
        },
    )?;
    for i in 0..10 {
        assert!(
            !plain
                .append(&mut batch(&values(i, 2, 10), 0), epoch(0))?
                .sync_due
        );
    }
    assert!(
        plain.is_dirty(),
        "without flush_messages `never` never syncs"
    );
    Ok(())
}

#[test]
fn segment_jitter_rolls_each_segment_somewhat_early() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    // With 60 s segments and 59 s of jitter, a segment rolls after at
    // most 60 s and at least 1 s; without jitter, after exactly 60 s.
    let mut rolled_before_a_minute = 0;
    for partition in 0..8 {
        let log = Log::open_with_clock(
            &dir.path().join(format!("p-{partition}")),
            LogConfig {
                segment_time: Duration::from_secs(60),
                segment_jitter: Duration::from_secs(59),
                ..config()
            },
            clock.clone(),
        )?;
        log.append(&mut batch(&values(1, 1, 10), 1_000_000), epoch(0))?;
        log.append(&mut batch(&values(2, 1, 10), 1_000_500), epoch(0))?;
        assert_eq!(
            log.segment_count(),
            1,
            "nothing rolls within the first second"
        );
        log.append(&mut batch(&values(3, 1, 10), 1_059_999), epoch(0))?;
        if log.segment_count() == 2 {
            rolled_before_a_minute += 1;
        }
        log.append(&mut batch(&values(4, 1, 10), 1_060_000), epoch(0))?;
        assert!(log.segment_count() >= 2, "rolled by the full segment time");
    }
    assert!(
        rolled_before_a_minute >= 4,
        "jitter spreads the rolls: {rolled_before_a_minute} of 8 rolled early"
    );
    Ok(())
}

#[test]
fn a_replicated_append_keeps_the_leaders_offsets_and_epochs() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let leader = Log::open(&dir.path().join("leader"), config())?;
    leader.append(&mut batch(&values(1, 3, 10), 0), epoch(1))?;
    leader.append(&mut batch(&values(2, 2, 10), 0), epoch(1))?;
    leader.append(&mut batch(&values(3, 4, 10), 0), epoch(4))?;
    let follower = Log::open(&dir.path().join("follower"), config())?;

    // A follower copies what its leader serves, byte for byte, in two reads.
    let first = leader.read(o(0), 1, ReadBound::LogEnd)?;
    let mut copied = first.records.to_vec();
    let info = follower.append_replicated(&mut copied)?;
    assert_eq!((info.first_offset, info.last_offset), (o(0), o(2)));
    let rest = leader.read(o(3), 1 << 20, ReadBound::LogEnd)?;
    follower.append_replicated(&mut rest.records.to_vec())?;
    assert_eq!(follower.log_end(), o(9));
    assert_eq!(follower.durable_end(), o(0), "written, not yet synced");
    follower.flush()?;
    assert_eq!(read_all(&follower, o(0)), read_all(&leader, o(0)));
    assert_eq!(
        follower.end_offset_for_epoch(epoch(1)),
        Some((epoch(1), o(5))),
        "epoch 1 ends where the leader's epoch 4 began"
    );
    assert_eq!(
        follower.end_offset_for_epoch(epoch(4)),
        Some((epoch(4), o(9)))
    );
    assert_eq!(follower.latest_epoch(), Some(epoch(4)));

    // A batch that does not start at the log end is refused whole.
    let mut again = leader
        .read(o(3), 1 << 20, ReadBound::LogEnd)?
        .records
        .to_vec();
    assert!(matches!(
        follower.append_replicated(&mut again),
        Err(LogError::InvalidBatch {
            reason: sluice_log::BatchFault::UnexpectedOffset { .. }
        })
    ));
    let mut unnumbered = batch(&values(9, 1, 10), 0);
    assert!(
        follower.append_replicated(&mut unnumbered).is_err(),
        "offset 0 again"
    );
    assert_eq!(follower.log_end(), o(9), "nothing written");
    Ok(())
}
