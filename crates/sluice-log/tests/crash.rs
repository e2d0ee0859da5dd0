//! Contract: under durability `always`, every append the log acknowledged is
//! on disk byte for byte after the process is killed with SIGKILL at an
//! arbitrary moment, and the reopened log serves nothing past a torn tail.
//!
//! The test re-runs its own binary as a child (the ignored test
//! `crash_child`), which appends from several threads and prints one line
//! per acknowledged batch. The parent kills it at a random moment, reopens
//! the log, checks every acknowledged batch, and starts the next cycle on the
//! same directory, so recovery runs on top of earlier recoveries.
//! `LOG_CRASH_CYCLES` sets the number of cycles (default 20).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{batch, read_all, values};
use sluice_log::{Durability, Log, LogConfig};
use sluice_types::LeaderEpoch;

const CHILD_DIR_VAR: &str = "LOG_CRASH_CHILD_DIR";
const CHILD_CYCLE_VAR: &str = "LOG_CRASH_CHILD_CYCLE";
const APPENDERS: u64 = 4;
const RECORDS_PER_BATCH: usize = 4;
const RECORD_BYTES: usize = 700;

fn config() -> LogConfig {
    LogConfig {
        // Small segments, so kills also land around rolls.
        segment_bytes: 96 * 1024,
        index_interval_bytes: 4096,
        retention_time: None,
        durability: Durability::Always,
        ..LogConfig::default()
    }
}

/// A batch's tag decides its values, so the parent can rebuild what was sent.
fn tag(cycle: u64, appender: u64, sequence: u64) -> u64 {
    cycle * 1_000_000_000 + appender * 10_000_000 + sequence
}

#[test]
#[ignore = "child process of acknowledged_appends_survive_sigkill"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let cycle: u64 = std::env::var(CHILD_CYCLE_VAR)
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let log = Arc::new(Log::open(Path::new(&dir), config()).expect("child opens the log"));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..APPENDERS)
        .map(|appender| {
            let log = Arc::clone(&log);
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                // Bounded: the parent kills the child long before this ends.
                for sequence in 0..200_000 {
                    let tag = tag(cycle, appender, sequence);
                    let mut bytes = batch(&values(tag, RECORDS_PER_BATCH, RECORD_BYTES), 0);
                    let info = log
                        .append(&mut bytes, LeaderEpoch::from(0))
                        .expect("child append");
                    let mut out = out.lock().expect("stdout lock");
                    writeln!(out, "ACK {} {} {tag}", info.first_offset, info.last_offset)
                        .and_then(|()| out.flush())
                        .expect("child reports an ack");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("appender");
    }
}

/// Small deterministic generator for kill delays.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let cycles: u64 = std::env::var("LOG_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(20);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    println!("seed {seed}");
    let mut random = XorShift(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("own test binary");
    // Offset range → tag of every batch ever acknowledged.
    let mut acknowledged: BTreeMap<i64, (i64, u64)> = BTreeMap::new();
    let mut total_acks = 0usize;

    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .env(CHILD_CYCLE_VAR, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first acknowledgement, then kill after a random delay.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(20)) {
                let first_ack = line.starts_with("ACK ");
                lines.push(line);
                if first_ack {
                    break;
                }
            }
        }
        assert!(
            lines.iter().any(|l| l.starts_with("ACK ")),
            "cycle {cycle}: child acknowledged nothing within 30 s"
        );
        std::thread::sleep(Duration::from_millis(random.next() % 150));
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        reader.join().expect("reader thread");
        lines.extend(lines_rx.try_iter());

        let mut cycle_acks = 0;
        for line in &lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let ["ACK", first, last, tag] = fields.as_slice()
                && let (Ok(first), Ok(last), Ok(tag)) = (
                    first.parse::<i64>(),
                    last.parse::<i64>(),
                    tag.parse::<u64>(),
                )
            {
                assert!(
                    acknowledged.insert(first, (last, tag)).is_none(),
                    "seed {seed} cycle {cycle}: offset {first} acknowledged twice"
                );
                cycle_acks += 1;
            }
        }
        total_acks += cycle_acks;
        verify(dir.path(), &acknowledged, seed, cycle);
    }
    println!("{cycles} kill cycles, {total_acks} acknowledged batches, all intact");
}

/// Reopens the log and checks every acknowledged batch, and that the whole
/// log reads back without a damaged batch.
fn verify(dir: &Path, acknowledged: &BTreeMap<i64, (i64, u64)>, seed: u64, cycle: u64) {
    let log = Log::open(dir, config()).expect("reopen after SIGKILL");
    let max_acked = acknowledged
        .values()
        .map(|(last, _)| *last)
        .max()
        .unwrap_or(-1);
    assert!(
        log.log_end().get() > max_acked,
        "seed {seed} cycle {cycle}: log end {} is below acknowledged offset {max_acked}",
        log.log_end()
    );
    let records = read_all(&log, &format!("seed {seed} cycle {cycle}"));
    assert_eq!(
        records.len() as i64,
        log.log_end().get(),
        "seed {seed} cycle {cycle}: offsets are not contiguous"
    );
    for (first, (last, tag)) in acknowledged {
        let expected = values(*tag, RECORDS_PER_BATCH, RECORD_BYTES);
        for (i, offset) in (*first..=*last).enumerate() {
            assert_eq!(
                records.get(&offset),
                expected.get(i),
                "seed {seed} cycle {cycle}: acknowledged offset {offset} lost or changed"
            );
        }
    }
    log.close().expect("close after verification");
}
