//! All logs of a broker under one directory, and the background jobs that
//! keep them: interval flushes, retention and closing idle file handles.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Durability, LogConfig};
use crate::error::LogError;
use crate::log::Log;

/// Threads that close logs in parallel at shutdown.
const CLOSE_THREADS: usize = 8;

/// How often the background jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceSettings {
    /// How often the maintenance thread wakes.
    pub tick: Duration,
    /// How often retention is enforced (Kafka's `log.retention.check.interval.ms`).
    pub retention_check_interval: Duration,
    /// An active segment's file is closed after this long without use.
    pub idle_handle_timeout: Duration,
    /// How often compacted logs are checked for a compaction pass.
    pub compaction_check_interval: Duration,
    /// Whether the manager runs the passes on a thread of its own; `false`
    /// when the caller's scheduler calls [`LogManager::maintain`] every
    /// `tick` (the broker's lifecycle does).
    pub own_thread: bool,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        MaintenanceSettings {
            tick: Duration::from_millis(50),
            retention_check_interval: Duration::from_secs(300),
            idle_handle_timeout: Duration::from_secs(60),
            compaction_check_interval: Duration::from_secs(15),
            own_thread: true,
        }
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    defaults: LogConfig,
    logs: Mutex<HashMap<String, Arc<Log>>>,
    stop: Mutex<bool>,
    wake: Condvar,
    settings: MaintenanceSettings,
    /// When each periodic part of maintenance last ran; one pass at a time.
    timers: Mutex<Timers>,
}

#[derive(Debug)]
struct Timers {
    last_flush: HashMap<String, Instant>,
    last_retention: Instant,
    last_compaction: Instant,
}

/// The logs under one directory, each in a subdirectory named after it.
#[derive(Debug)]
pub struct LogManager {
    shared: Arc<Shared>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
}

impl LogManager {
    /// Opens (recovering) every log under `dir` and starts the maintenance
    /// thread with default settings.
    ///
    /// # Errors
    /// The first log that fails to open, or [`LogError::Io`] on `dir`.
    pub fn open(dir: &Path, defaults: LogConfig) -> Result<LogManager, LogError> {
        Self::open_with(dir, defaults, MaintenanceSettings::default())
    }

    /// [`LogManager::open`] with given maintenance settings.
    ///
    /// # Errors
    /// As [`LogManager::open`].
    pub fn open_with(
        dir: &Path,
        defaults: LogConfig,
        settings: MaintenanceSettings,
    ) -> Result<LogManager, LogError> {
        Self::open_observed(dir, defaults, settings, &|_, _| {})
    }

    /// [`LogManager::open_with`], calling `opened(done, total)` after each
    /// log has been opened and its tail checked, so that a long recovery
    /// can report its progress.
    ///
    /// # Errors
    /// As [`LogManager::open`].
    pub fn open_observed(
        dir: &Path,
        defaults: LogConfig,
        settings: MaintenanceSettings,
        opened: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<LogManager, LogError> {
        fs::create_dir_all(dir).map_err(LogError::io(dir))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(LogError::io(dir))? {
            let entry = entry.map_err(LogError::io(dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if entry
                .file_type()
                .map_err(LogError::io(entry.path()))?
                .is_dir()
                && valid_name(&name)
            {
                found.push((name, entry.path()));
            }
        }
        let total = found.len();
        let mut logs = HashMap::with_capacity(total);
        for (name, path) in found {
            let log = Log::open(&path, defaults.clone())?;
            logs.insert(name, Arc::new(log));
            opened(logs.len(), total);
        }
        tracing::debug!(dir = %dir.display(), logs = logs.len(), "logs opened");
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            defaults,
            logs: Mutex::new(logs),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            settings,
            timers: Mutex::new(Timers {
                last_flush: HashMap::new(),
                last_retention: Instant::now(),
                last_compaction: Instant::now(),
            }),
        });
        let handle = if settings.own_thread {
            let worker = Arc::clone(&shared);
            Some(
                std::thread::Builder::new()
                    .name("sluice-log-maintenance".into())
                    .spawn(move || run_maintenance(&worker))
                    .map_err(LogError::io(dir))?,
            )
        } else {
            None
        };
        Ok(LogManager {
            shared,
            maintenance: Mutex::new(handle),
        })
    }

    /// The maintenance settings the manager was opened with.
    pub fn maintenance_settings(&self) -> MaintenanceSettings {
        self.shared.settings
    }

    /// One maintenance pass over every log: `Interval` flushes that are
    /// due, retention and compaction when their check intervals have
    /// passed, and idle file handles released. Blocking (syncs, deletes);
    /// call it every `tick` when the manager has no thread of its own.
    pub fn maintain(&self) {
        self.shared.maintain();
    }

    /// The log called `name`, created with `config` (or the defaults) if it
    /// does not exist yet.
    ///
    /// # Errors
    /// [`LogError::InvalidName`] for a name that is not a safe directory
    /// name; errors from [`Log::open`].
    pub fn get_or_create(
        &self,
        name: &str,
        config: Option<LogConfig>,
    ) -> Result<Arc<Log>, LogError> {
        if !valid_name(name) {
            return Err(LogError::InvalidName {
                name: name.to_owned(),
            });
        }
        let mut logs = self.logs();
        if let Some(log) = logs.get(name) {
            return Ok(Arc::clone(log));
        }
        let config = config.unwrap_or_else(|| self.shared.defaults.clone());
        let log = Arc::new(Log::open(&self.shared.dir.join(name), config)?);
        logs.insert(name.to_owned(), Arc::clone(&log));
        Ok(log)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Log>> {
        self.logs().get(name).cloned()
    }

    /// Names of the open logs, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.logs().keys().cloned().collect();
        names.sort();
        names
    }

    /// Closes and deletes the log called `name`. Returns whether it existed.
    ///
    /// # Errors
    /// [`LogError::Io`] when its directory cannot be removed.
    pub fn delete(&self, name: &str) -> Result<bool, LogError> {
        let Some(log) = self.logs().remove(name) else {
            return Ok(false);
        };
        // Closing may fail on a poisoned log; it is being removed either way.
        let _ = log.close();
        fs::remove_dir_all(log.dir()).map_err(LogError::io(log.dir()))?;
        Ok(true)
    }

    /// The settings new logs start from.
    pub fn defaults(&self) -> &LogConfig {
        &self.shared.defaults
    }

    /// Stops the maintenance thread, then syncs and closes every log.
    ///
    /// # Errors
    /// The first close that failed; every log is still attempted.
    pub fn shutdown(&self) -> Result<(), LogError> {
        self.stop_maintenance();
        let logs: Vec<Arc<Log>> = self.logs().values().cloned().collect();
        // Closing is bound by fsync latency, not CPU: a few threads in
        // parallel keep a shutdown of thousands of logs short.
        let chunk = logs.len().div_ceil(CLOSE_THREADS).max(1);
        let errors: Vec<LogError> = std::thread::scope(|scope| {
            let workers: Vec<_> = logs
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .filter_map(|log| {
                                log.close()
                                    .inspect_err(|err| {
                                        tracing::error!(dir = %log.dir().display(), error = %err, "closing log failed");
                                    })
                                    .err()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap_or_default())
                .collect()
        });
        let first_error = errors.into_iter().next();
        first_error.map_or(Ok(()), Err)
    }

    fn stop_maintenance(&self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        let handle = self
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("log maintenance thread panicked");
        }
    }

    fn logs(&self) -> MutexGuard<'_, HashMap<String, Arc<Log>>> {
        self.shared.logs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LogManager {
    fn drop(&mut self) {
        self.stop_maintenance();
    }
}

/// Log names become directory names: letters, digits, `.`, `_`, `-`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn run_maintenance(shared: &Shared) {
    loop {
        {
            let stop = shared.stop.lock().unwrap_or_else(|e| e.into_inner());
            if *stop {
                return;
            }
            let (stop, _) = shared
                .wake
                .wait_timeout(stop, shared.settings.tick)
                .unwrap_or_else(|e| e.into_inner());
            if *stop {
                return;
            }
        }
        shared.maintain();
    }
}

impl Shared {
    fn maintain(&self) {
        let settings = self.settings;
        let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        let Timers {
            last_flush,
            last_retention,
            last_compaction,
        } = &mut *timers;
        let logs: Vec<(String, Arc<Log>)> = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, log)| (name.clone(), Arc::clone(log)))
            .collect();
        let retention_due = last_retention.elapsed() >= settings.retention_check_interval;
        if retention_due {
            *last_retention = Instant::now();
        }
        let compaction_due = last_compaction.elapsed() >= settings.compaction_check_interval;
        if compaction_due {
            *last_compaction = Instant::now();
        }
        for (name, log) in &logs {
            if let Durability::Interval(interval) = log.durability() {
                let due = last_flush
                    .get(name)
                    .is_none_or(|at| at.elapsed() >= interval);
                if due {
                    last_flush.insert(name.clone(), Instant::now());
                    if log.is_dirty()
                        && let Err(err) = log.flush()
                    {
                        tracing::error!(log = %name, error = %err, "interval flush failed");
                    }
                }
            }
            if retention_due {
                match log.enforce_retention() {
                    Ok(outcome) if outcome.segments_deleted > 0 => tracing::info!(
                        log = %name,
                        segments = outcome.segments_deleted,
                        bytes = outcome.bytes_deleted,
                        log_start = %outcome.log_start,
                        "retention deleted segments"
                    ),
                    Ok(_) | Err(LogError::Closed) => {}
                    Err(err) => tracing::warn!(log = %name, error = %err, "retention failed"),
                }
            }
            if compaction_due {
                match log.compact() {
                    Ok(outcome) if outcome.segments_cleaned > 0 => tracing::info!(
                        log = %name,
                        segments = outcome.segments_cleaned,
                        records_removed = outcome.records_removed,
                        "compacted"
                    ),
                    Ok(_) | Err(LogError::Closed) => {}
                    Err(err) => tracing::warn!(log = %name, error = %err, "compaction failed"),
                }
            }
            log.release_idle_handles(settings.idle_handle_timeout);
        }
        last_flush.retain(|name, _| logs.iter().any(|(n, _)| n == name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\\b", "über"] {
            assert!(!valid_name(bad), "{bad:?} accepted");
        }
        for good in ["orders-0", "__consumer_offsets-12", "q.tasks_1"] {
            assert!(valid_name(good), "{good:?} refused");
        }
    }
}
