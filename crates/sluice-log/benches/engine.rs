//! Storage engine benchmark: append and read throughput of one log beside
//! the disk's own speed for the same bytes, all in one run.
//!
//! `cargo bench -p sluice-log --bench engine -- [--mib N] [--runs N] [--dir PATH] [--only never|always1|always8]`
//!
//! Workload: 1 KiB records in 16 KiB batches (16 records), written to a
//! fresh log in a temporary directory on the same filesystem as the
//! baseline file. Scenarios:
//! - `plain write, one fdatasync`: the same bytes with `write` calls and one
//!   `fdatasync` at the end: the disk's sequential speed, the yardstick;
//! - `plain write, fdatasync per batch` / `per 8 batches`: what the disk
//!   allows when syncing as often as `always x1` must, and as `always x8`
//!   can at best (8 appenders with one batch each in flight);
//! - `never`: appends under durability `never`, then one flush;
//! - `always x1` / `always x8`: durability `always` with 1 and 8 appending
//!   threads (group commit shares each `fdatasync` among waiting appenders);
//! - `read`: the `never` log read back from the start in 1 MiB reads,
//!   every batch checked (CRC-32C), from the page cache.
//!
//! Each scenario runs `--runs` times; the median is reported with the
//! spread (min–max) and its ratio to the plain-write median.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use sluice_log::batch::{NewRecord, encode};
use sluice_log::{Durability, Log, LogConfig, ReadBound};
use sluice_types::{LeaderEpoch, Offset};

const RECORD_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 16;

struct Options {
    only: Option<String>,
    mib: usize,
    runs: usize,
    dir: PathBuf,
}

fn options() -> Options {
    let mut options = Options {
        only: None,
        mib: 512,
        runs: 3,
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mib" => {
                options.mib = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(options.mib)
            }
            "--runs" => {
                options.runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(options.runs)
            }
            "--only" => options.only = args.next(),
            "--dir" => options.dir = args.next().map(PathBuf::from).unwrap_or(options.dir),
            // `cargo bench` passes `--bench`; anything else is ignored.
            _ => {}
        }
    }
    options
}

fn template_batch() -> BytesMut {
    let value = vec![b'x'; RECORD_BYTES];
    let records: Vec<NewRecord<'_>> = (0..RECORDS_PER_BATCH)
        .map(|_| NewRecord {
            key: None,
            value: Some(&value),
            timestamp: 1_700_000_000_000,
        })
        .collect();
    encode(&records).expect("encode benchmark batch")
}

fn log_config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        retention_time: None,
        ..LogConfig::default()
    }
}

/// Seconds to write `batches` copies of `template` with plain writes and an
/// fdatasync after every `sync_every` of them (and one at the end).
fn plain_write(dir: &Path, template: &[u8], batches: usize, sync_every: usize) -> f64 {
    let path = dir.join("plain.bin");
    let mut file = File::create(&path).expect("create baseline file");
    let start = Instant::now();
    for i in 1..=batches {
        let copy = template.to_vec();
        file.write_all(&copy).expect("baseline write");
        if i % sync_every == 0 {
            file.sync_data().expect("baseline fdatasync");
        }
    }
    file.sync_data().expect("baseline fdatasync");
    let elapsed = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).expect("remove baseline file");
    elapsed
}

/// Seconds for `threads` appenders to append `batches` batches in total.
fn append(
    dir: &Path,
    durability: Durability,
    template: &BytesMut,
    batches: usize,
    threads: usize,
) -> (f64, Log) {
    let log = Arc::new(Log::open(dir, log_config(durability)).expect("open log"));
    let per_thread = batches / threads;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let log = Arc::clone(&log);
            scope.spawn(move || {
                for _ in 0..per_thread {
                    let mut batch = template.clone();
                    log.append(&mut batch, LeaderEpoch::from(0))
                        .expect("append");
                }
            });
        }
    });
    log.flush().expect("final flush");
    let elapsed = start.elapsed().as_secs_f64();
    let log = Arc::try_unwrap(log).expect("appenders are done");
    (elapsed, log)
}

/// Seconds to read the whole log from the start in 1 MiB reads.
fn read_all(log: &Log) -> (f64, u64) {
    let start = Instant::now();
    let mut next = Offset::from(0);
    let mut bytes = 0u64;
    // Everything appended: the reads follow the log end.
    while next < log.log_end() {
        let result = log.read(next, 1 << 20, ReadBound::LogEnd).expect("read");
        bytes += result.records.len() as u64;
        match result.next_offset {
            Some(after) => next = after,
            None => break,
        }
    }
    (start.elapsed().as_secs_f64(), bytes)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let options = options();
    let template = template_batch();
    let batches = options.mib * 1024 * 1024 / template.len();
    let bytes = (batches * template.len()) as f64;
    let messages = (batches * RECORDS_PER_BATCH) as f64;
    std::fs::create_dir_all(&options.dir).expect("benchmark directory");
    println!(
        "sluice-log engine benchmark: {} MiB per run, {} runs, {} B batches of {} x {} B records, in {}",
        options.mib,
        options.runs,
        template.len(),
        RECORDS_PER_BATCH,
        RECORD_BYTES,
        options.dir.display()
    );

    let scenarios = [
        "plain write, one fdatasync",
        "plain write, fdatasync per batch",
        "plain write, fdatasync per 8 batches",
        "never",
        "always x1",
        "always x8",
        "read",
    ];
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    if let Some(only) = &options.only {
        // One appending scenario alone, e.g. under strace or perf.
        let work = tempfile::tempdir_in(&options.dir).expect("temp dir");
        let (durability, threads) = match only.as_str() {
            "never" => (Durability::Never, 1),
            "always1" => (Durability::Always, 1),
            _ => (Durability::Always, 8),
        };
        let (secs, _log) = append(work.path(), durability, &template, batches, threads);
        println!("{only}: {:.0} MB/s", bytes / secs / 1e6);
        return;
    }
    for run in 0..options.runs {
        let work = tempfile::tempdir_in(&options.dir).expect("temp dir");
        let plain = plain_write(work.path(), &template, batches, usize::MAX);
        // The disk's own cost of syncing as often as the `always` runs must
        // at best: after every batch (x1), after every 8 batches (x8).
        let synced1 = plain_write(work.path(), &template, batches, 1);
        let synced8 = plain_write(work.path(), &template, batches, 8);
        let (never, never_log) = append(
            &work.path().join("never"),
            Durability::Never,
            &template,
            batches,
            1,
        );
        let (read, read_bytes) = read_all(&never_log);
        assert_eq!(read_bytes as f64, bytes, "read back every byte");
        drop(never_log);
        let (always1, log) = append(
            &work.path().join("always1"),
            Durability::Always,
            &template,
            batches,
            1,
        );
        drop(log);
        let (always8, log) = append(
            &work.path().join("always8"),
            Durability::Always,
            &template,
            batches,
            8,
        );
        drop(log);
        for (i, value) in [plain, synced1, synced8, never, always1, always8, read]
            .into_iter()
            .enumerate()
        {
            if let Some(list) = seconds.get_mut(i) {
                list.push(value);
            }
        }
        eprintln!("run {}/{} done", run + 1, options.runs);
    }

    let mb = |s: f64| bytes / s / 1e6;
    let baseline = seconds.first_mut().map_or(1.0, |s| median(s));
    println!();
    println!("| scenario | MB/s (median) | spread MB/s | msg/s (median) | vs plain write |");
    println!("|---|---:|---:|---:|---:|");
    for (name, list) in scenarios.iter().zip(seconds.iter_mut()) {
        let mid = median(list);
        let low = list.iter().copied().fold(f64::MIN, f64::max);
        let high = list.iter().copied().fold(f64::MAX, f64::min);
        println!(
            "| {name} | {:.0} | {:.0}–{:.0} | {:.0} | {:.0}% |",
            mb(mid),
            mb(low),
            mb(high),
            messages / mid,
            baseline / mid * 100.0
        );
    }
}
