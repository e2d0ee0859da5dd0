//! Contract of the log manager: many logs stay cheap (idle file handles are
//! closed and reopened on demand), the maintenance thread flushes `interval`
//! logs and enforces retention by itself, and shutdown closes every log
//! cleanly so that they reopen with their data.

mod common;

use std::time::{Duration, Instant};

use common::{batch, decode, values, visible};
use sluice_log::{Durability, LogConfig, LogError, LogManager, MaintenanceSettings, ReadBound};
use sluice_types::{LeaderEpoch, Offset};

fn settings(idle: Duration) -> MaintenanceSettings {
    MaintenanceSettings {
        tick: Duration::from_millis(10),
        retention_check_interval: Duration::from_millis(50),
        idle_handle_timeout: idle,
        compaction_check_interval: Duration::from_millis(50),
        own_thread: true,
    }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Polls `condition` every 10 ms until it holds or `deadline` passes.
fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out after {deadline:?} waiting for {what}");
}

#[test]
fn thousands_of_logs_keep_file_handles_bounded() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = 2_000;
    let config = LogConfig {
        durability: Durability::Never,
        retention_time: None,
        ..LogConfig::default()
    };
    let manager =
        LogManager::open_with(dir.path(), config.clone(), settings(Duration::from_secs(3)))?;
    let before = open_descriptors();
    for i in 0..logs {
        let log = manager.get_or_create(&format!("topic-{i}"), None)?;
        log.append(&mut batch(&values(i, 1, 100), 0), LeaderEpoch::from(0))?;
    }
    // Logs used in the last seconds keep their handles (timing decides how
    // many, so this checks only that handles are held at all).
    let busy = open_descriptors();
    assert!(
        busy >= before + 100,
        "active segments hold handles while busy: {busy} vs {before}"
    );
    wait_for("idle handles to close", Duration::from_secs(30), || {
        open_descriptors() < before + 50
    });
    // A released log reopens its file on the next use.
    let log = manager.get("topic-7").expect("log exists");
    assert!(!log.has_open_handle());
    log.append(&mut batch(&values(99, 1, 100), 0), LeaderEpoch::from(0))?;
    let read = log.read(Offset::from(1), 4096, ReadBound::Upto(visible(&log)))?;
    assert_eq!(decode(&read.records).first().map(|r| r.0), Some(1));
    manager.shutdown()?;
    drop(manager);

    let reopened = LogManager::open(dir.path(), config)?;
    assert_eq!(reopened.names().len(), logs as usize);
    assert_eq!(
        reopened.get("topic-1999").map(|l| l.log_end()),
        Some(Offset::from(1))
    );
    reopened.shutdown()
}

#[test]
fn interval_logs_are_flushed_by_the_maintenance_thread() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = LogManager::open_with(
        dir.path(),
        LogConfig {
            durability: Durability::Interval(Duration::from_millis(30)),
            ..LogConfig::default()
        },
        settings(Duration::from_secs(60)),
    )?;
    let log = manager.get_or_create("flushed", None)?;
    log.append(&mut batch(&values(1, 3, 100), 0), LeaderEpoch::from(0))?;
    assert!(log.is_dirty(), "interval appends return before the sync");
    wait_for("the interval flush", Duration::from_secs(10), || {
        !log.is_dirty()
    });
    manager.shutdown()
}

#[test]
fn without_its_own_thread_the_manager_maintains_only_when_asked() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = LogManager::open_with(
        dir.path(),
        LogConfig {
            durability: Durability::Interval(Duration::from_millis(30)),
            ..LogConfig::default()
        },
        MaintenanceSettings {
            own_thread: false,
            ..settings(Duration::from_secs(60))
        },
    )?;
    let log = manager.get_or_create("flushed", None)?;
    log.append(&mut batch(&values(1, 3, 100), 0), LeaderEpoch::from(0))?;
    std::thread::sleep(Duration::from_millis(200));
    assert!(log.is_dirty(), "no thread flushed it");
    manager.maintain();
    assert!(!log.is_dirty(), "one pass flushes the due interval log");
    manager.shutdown()
}

#[test]
fn retention_runs_in_the_background() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = LogManager::open_with(
        dir.path(),
        LogConfig {
            segment_bytes: 4096,
            retention_bytes: Some(8192),
            ..LogConfig::default()
        },
        settings(Duration::from_secs(60)),
    )?;
    let log = manager.get_or_create("bounded", None)?;
    for i in 0..30 {
        log.append(&mut batch(&values(i, 1, 1000), 0), LeaderEpoch::from(0))?;
    }
    wait_for(
        "retention to delete segments",
        Duration::from_secs(10),
        || log.size_bytes() < 16 * 1024,
    );
    assert!(log.log_start() > Offset::from(0));
    manager.shutdown()
}

#[test]
fn bad_names_and_deleted_logs() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = LogManager::open(dir.path(), LogConfig::default())?;
    let err = manager
        .get_or_create("../escape", None)
        .expect_err("bad name");
    assert!(err.to_string().contains("../escape"), "{err}");
    manager.get_or_create("doomed", None)?;
    assert!(manager.delete("doomed")?);
    assert!(!dir.path().join("doomed").exists());
    assert!(!manager.delete("doomed")?);
    manager.shutdown()
}
