//! Contract: a file log behaves like a plain list of batches. Random
//! sequences of appends, reads, rolls, retention by size, log-start moves,
//! truncations, clean reopens (close) and unclean reopens (drop) run against
//! a real [`Log`] in a temp dir and against an in-memory model; after every
//! operation the log's start, end and high watermark equal the model's, and
//! every read returns exactly the model's records (offsets and values) from
//! the batch holding the requested offset onward, whole batches only.
//!
//! Segments are tiny (1–4 KiB) and the index interval 256 bytes, so rolls,
//! index entries and multi-segment reads happen in almost every case.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{batch, decode, visible};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sluice_log::{Durability, Log, LogConfig, LogError, ReadBound};
use sluice_types::{Clock, ManualClock};
use sluice_types::{LeaderEpoch, Offset};

/// Record timestamps are `TIME_BASE + offset`, so they rise with offsets.
const TIME_BASE: i64 = 1_000_000;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    /// Reads at an offset picked around `[log_start, log_end]`.
    Read {
        pick: u16,
        max_bytes: u16,
    },
    Roll,
    /// Retention by size with a limit that is `keep / u16::MAX` of the size.
    RetainBytes {
        keep: u16,
    },
    AdvanceLogStart {
        pick: u16,
    },
    /// Truncates at an offset picked around `[log_start, log_end]`, or, with
    /// `near_start`, within a few offsets of the log start, where a batch
    /// holding the start may straddle the target.
    TruncateTo {
        pick: u16,
        near_start: bool,
    },
    CloseAndReopen,
    DropAndReopen,
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop::collection::vec(any::<u8>(), 0..60);
    prop_oneof![
        8 => prop::collection::vec(value, 1..5).prop_map(Op::Append),
        4 => (any::<u16>(), 1..3000u16).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => Just(Op::Roll),
        1 => any::<u16>().prop_map(|keep| Op::RetainBytes { keep }),
        1 => any::<u16>().prop_map(|pick| Op::AdvanceLogStart { pick }),
        2 => (any::<u16>(), any::<bool>())
            .prop_map(|(pick, near_start)| Op::TruncateTo { pick, near_start }),
        1 => Just(Op::CloseAndReopen),
        1 => Just(Op::DropAndReopen),
    ]
}

#[derive(Debug, Clone)]
struct ModelBatch {
    base: i64,
    values: Vec<Vec<u8>>,
}

impl ModelBatch {
    fn last(&self) -> i64 {
        self.base + self.values.len() as i64 - 1
    }
}

/// The log as a list of batches. Batches wholly below the log start are
/// gone; the one holding the log start stays whole, as reads return it so.
#[derive(Debug, Default)]
struct Model {
    batches: Vec<ModelBatch>,
    log_start: i64,
    log_end: i64,
}

impl Model {
    fn append(&mut self, values: Vec<Vec<u8>>) -> (i64, i64) {
        let base = self.log_end;
        self.log_end += values.len() as i64;
        self.batches.push(ModelBatch { base, values });
        (base, self.log_end - 1)
    }

    fn move_start(&mut self, start: i64) {
        self.log_start = start;
        self.batches.retain(|b| b.last() >= start);
    }

    /// Kafka's truncation: whole batches at or after `target` go, including
    /// one that straddles it; at or below the log start the log restarts at
    /// `target`. The start never stays above the end.
    fn truncate_to(&mut self, target: i64) -> i64 {
        if target >= self.log_end {
            return self.log_end;
        }
        if target <= self.log_start {
            self.batches.clear();
            self.log_start = target;
            self.log_end = target;
            return target;
        }
        let keep = self
            .batches
            .iter()
            .take_while(|b| b.last() < target)
            .count();
        let new_end = self.batches.get(keep).map_or(self.log_end, |b| b.base);
        self.batches.truncate(keep);
        self.log_end = new_end;
        self.log_start = self.log_start.min(new_end);
        new_end
    }

    /// Records of the batch holding `offset` and all later ones.
    fn records_from(&self, offset: i64) -> Vec<(i64, Vec<u8>)> {
        self.batches
            .iter()
            .skip_while(|b| b.last() < offset)
            .flat_map(|b| {
                b.values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (b.base + i as i64, v.clone()))
            })
            .collect()
    }

    fn is_batch_boundary(&self, offset: i64) -> bool {
        offset == self.log_end || self.batches.iter().any(|b| b.base == offset)
    }
}

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        retention_time: None,
        retention_bytes: None,
        durability: Durability::Always,
        ..LogConfig::default()
    }
}

fn o(n: i64) -> Offset {
    Offset::from(n)
}

fn ok<T>(result: Result<T, LogError>, what: &str) -> Result<T, TestCaseError> {
    result.map_err(|err| TestCaseError::fail(format!("{what}: {err}")))
}

/// An offset from `pick`, spread over `[low - 2, high + 2]`.
fn pick_offset(pick: u16, low: i64, high: i64) -> i64 {
    let span = high - low + 5;
    low - 2 + i64::from(pick) % span
}

struct Harness {
    dir: tempfile::TempDir,
    config: LogConfig,
    clock: Arc<dyn Clock>,
    log: Option<Log>,
    model: Model,
}

impl Harness {
    fn new(segment_bytes: u64) -> Result<Harness, TestCaseError> {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let config = config(segment_bytes);
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(TIME_BASE));
        let log = ok(
            Log::open_with_clock(dir.path(), config.clone(), Arc::clone(&clock)),
            "open",
        )?;
        Ok(Harness {
            dir,
            config,
            clock,
            log: Some(log),
            model: Model::default(),
        })
    }

    fn log(&self) -> Result<&Log, TestCaseError> {
        self.log
            .as_ref()
            .ok_or_else(|| TestCaseError::fail("log is not open"))
    }

    fn reopen(&mut self, clean: bool) -> Result<(), TestCaseError> {
        if let Some(log) = self.log.take() {
            if clean {
                ok(log.close(), "close")?;
            }
            drop(log);
        }
        self.log = Some(ok(
            Log::open_with_clock(
                self.dir.path(),
                self.config.clone(),
                Arc::clone(&self.clock),
            ),
            "reopen",
        )?);
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append(values) => {
                let (first, last) = self.model.append(values.clone());
                let mut bytes = batch(values, TIME_BASE + first);
                let info = ok(
                    self.log()?.append(&mut bytes, LeaderEpoch::from(0)),
                    "append",
                )?;
                prop_assert_eq!((info.first_offset, info.last_offset), (o(first), o(last)));
            }
            Op::Read { pick, max_bytes } => {
                let offset = pick_offset(*pick, self.model.log_start, self.model.log_end);
                self.check_read(offset, usize::from(*max_bytes))?;
            }
            Op::Roll => {
                let log = self.log()?;
                let before = log.segment_count();
                let active_empty = log.segment_bases().last() == Some(&o(self.model.log_end));
                ok(log.roll(), "roll")?;
                let expected = if active_empty { before } else { before + 1 };
                prop_assert_eq!(log.segment_count(), expected, "roll adds one segment");
            }
            Op::RetainBytes { keep } => self.retain_bytes(*keep)?,
            Op::AdvanceLogStart { pick } => {
                let target = pick_offset(*pick, self.model.log_start, self.model.log_end).max(0);
                let result = self.log()?.advance_log_start(o(target));
                if target > self.model.log_end {
                    prop_assert!(
                        matches!(result, Err(LogError::OffsetOutOfRange { .. })),
                        "advance past the high watermark to {}: {:?}",
                        target,
                        result
                    );
                } else {
                    let start = ok(result, "advance_log_start")?;
                    let expected = target.max(self.model.log_start);
                    prop_assert_eq!(start, o(expected));
                    self.model.move_start(expected);
                }
            }
            Op::TruncateTo { pick, near_start } => {
                let (low, high) = if *near_start {
                    (self.model.log_start, self.model.log_start + 1)
                } else {
                    (self.model.log_start, self.model.log_end)
                };
                let target = pick_offset(*pick, low, high).max(0);
                let end = ok(self.log()?.truncate_to(o(target)), "truncate_to")?;
                let expected = self.model.truncate_to(target);
                prop_assert_eq!(end, o(expected), "new end after truncate_to({})", target);
            }
            Op::CloseAndReopen => self.reopen(true)?,
            Op::DropAndReopen => self.reopen(false)?,
        }
        self.check_bounds()
    }

    fn retain_bytes(&mut self, keep: u16) -> Result<(), TestCaseError> {
        let log = self.log()?;
        let size = log.size_bytes();
        let limit = size * u64::from(keep) / u64::from(u16::MAX);
        let segments_before = log.segment_count();
        log.set_config(LogConfig {
            retention_bytes: Some(limit),
            ..self.config.clone()
        });
        let outcome = ok(log.enforce_retention(), "enforce_retention")?;
        log.set_config(self.config.clone());

        let start = log.log_start().get();
        prop_assert_eq!(outcome.log_start, o(start));
        prop_assert!(
            start >= self.model.log_start,
            "retention moved the log start back from {} to {}",
            self.model.log_start,
            start
        );
        prop_assert!(start <= self.model.log_end);
        prop_assert_eq!(
            log.segment_count(),
            segments_before - outcome.segments_deleted
        );
        if outcome.segments_deleted > 0 {
            prop_assert!(
                self.model.is_batch_boundary(start),
                "retention left the log start {} inside a batch",
                start
            );
            prop_assert_eq!(log.segment_bases().first().copied(), Some(o(start)));
            prop_assert!(
                log.size_bytes() >= limit,
                "retention deleted below its limit"
            );
            prop_assert_eq!(log.size_bytes(), size - outcome.bytes_deleted);
        } else {
            prop_assert_eq!(start, self.model.log_start);
        }
        self.model.move_start(start);
        Ok(())
    }

    fn check_read(&self, offset: i64, max_bytes: usize) -> Result<(), TestCaseError> {
        let log = self.log()?;
        let model = &self.model;
        let result = log.read(o(offset), max_bytes, ReadBound::Upto(visible(log)));
        if offset < model.log_start || offset > model.log_end {
            prop_assert!(
                matches!(
                    result,
                    Err(LogError::OffsetOutOfRange { offset: at, log_start, log_end })
                        if at == o(offset) && log_start == o(model.log_start) && log_end == o(model.log_end)
                ),
                "read at {} outside [{}, {}]: {:?}",
                offset,
                model.log_start,
                model.log_end,
                result
            );
            return Ok(());
        }
        let result = ok(result, "read")?;
        prop_assert_eq!(
            (result.log_start, result.log_end, visible(log)),
            (o(model.log_start), o(model.log_end), o(model.log_end))
        );
        let expected = model.records_from(offset);
        let decoded = decode(&result.records);
        for (at, timestamp, _) in &decoded {
            prop_assert_eq!(*timestamp, TIME_BASE + at, "timestamp of {}", at);
        }
        let got: Vec<(i64, Vec<u8>)> = decoded.into_iter().map(|(at, _, v)| (at, v)).collect();
        if offset == model.log_end {
            prop_assert!(got.is_empty(), "read at the end returned {:?}", got);
            prop_assert_eq!((result.first_offset, result.next_offset), (None, None));
            return Ok(());
        }
        prop_assert!(!got.is_empty(), "read at {} returned nothing", offset);
        prop_assert!(
            expected.starts_with(&got),
            "read at {} returned {:?}, model has {:?}",
            offset,
            got,
            expected
        );
        let first = got.first().map(|r| r.0);
        let next = got.last().map(|r| r.0 + 1);
        prop_assert_eq!(result.first_offset, first.map(o));
        prop_assert_eq!(result.next_offset, next.map(o));
        prop_assert!(
            next.is_some_and(|n| model.is_batch_boundary(n)),
            "read ended inside a batch"
        );

        // The rest, read on from where that read stopped, completes the model.
        let mut all = got;
        let mut at = next.unwrap_or(model.log_end);
        while at < model.log_end {
            let more = ok(
                log.read(o(at), 1024, ReadBound::Upto(visible(log))),
                "read on",
            )?;
            let records = decode(&more.records);
            prop_assert!(!records.is_empty(), "read at {} returned nothing", at);
            all.extend(
                records
                    .into_iter()
                    .map(|(offset, _, value)| (offset, value)),
            );
            at = more.next_offset.map_or(model.log_end, Offset::get);
        }
        prop_assert_eq!(all, expected, "everything from {}", offset);
        Ok(())
    }

    fn check_bounds(&self) -> Result<(), TestCaseError> {
        let log = self.log()?;
        let model = &self.model;
        prop_assert_eq!(log.log_start(), o(model.log_start), "log start");
        prop_assert_eq!(log.log_end(), o(model.log_end), "log end");
        prop_assert_eq!(
            visible(log),
            o(model.log_end),
            "high watermark under `always`"
        );
        let bases = log.segment_bases();
        prop_assert!(bases.first().is_some_and(|b| b.get() <= model.log_start));
        prop_assert!(bases.last().is_some_and(|b| b.get() <= model.log_end));
        let (count, bytes) = data_files(self.dir.path());
        prop_assert_eq!(count, bases.len(), "one data file per segment");
        prop_assert_eq!(log.size_bytes(), bytes, "size is the data files' size");
        Ok(())
    }
}

/// Number and total size of the `.log` files in `dir`.
fn data_files(dir: &Path) -> (usize, u64) {
    std::fs::read_dir(dir)
        .expect("list log dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .fold((0, 0), |(count, bytes), e| {
            (count + 1, bytes + e.metadata().map_or(0, |m| m.len()))
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_a_list_of_batches_under_random_operations(
        segment_bytes in 1024u64..=4096,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut harness = Harness::new(segment_bytes)?;
        for (step, op) in ops.iter().enumerate() {
            harness
                .apply(op)
                .map_err(|err| TestCaseError::fail(format!("step {step} {op:?}: {err}")))?;
        }
        // Whatever the sequence, everything left survives an unclean and a
        // clean reopen and reads back whole.
        harness.apply(&Op::DropAndReopen)?;
        harness.apply(&Op::CloseAndReopen)?;
        let start = harness.model.log_start;
        harness.check_read(start, 4096)?;
    }
}

/// Found by the model above: a truncation inside the batch that holds the log
/// start removes that batch whole, and the start must follow the end down
/// (as a reopen would put it), not stay above it.
#[test]
fn truncating_the_batch_holding_the_log_start_brings_the_start_down_to_the_new_end()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), config(4096))?;
    let values = |n: usize| vec![b"v".to_vec(); n];
    log.append(&mut batch(&values(3), TIME_BASE), LeaderEpoch::from(0))?;
    log.append(&mut batch(&values(3), TIME_BASE + 3), LeaderEpoch::from(0))?;
    assert_eq!(log.advance_log_start(o(4))?, o(4));

    // Offset 5 is inside the batch [3, 5], which also holds the start.
    assert_eq!(log.truncate_to(o(5))?, o(3));
    assert_eq!((log.log_start(), log.log_end()), (o(3), o(3)));
    let at_end = log.read(o(3), 1024, ReadBound::Upto(visible(&log)))?;
    assert!(at_end.records.is_empty());
    let info = log.append(&mut batch(&values(1), TIME_BASE + 3), LeaderEpoch::from(0))?;
    assert_eq!(info.first_offset, o(3));
    let read = log.read(o(3), 1024, ReadBound::Upto(visible(&log)))?;
    assert_eq!(decode(&read.records).len(), 1, "the new record is readable");

    drop(log);
    let log = Log::open(dir.path(), config(4096))?;
    assert_eq!(
        (log.log_start(), log.log_end()),
        (o(3), o(4)),
        "after reopen"
    );
    Ok(())
}
