//! What a broker tells the operator while it opens its data directory:
//! whether the last shutdown was clean, what each kind of state took to
//! recover, and, while a phase runs long, a progress line every interval.
//!
//! The reporter is a plain thread woken by a condition variable: the
//! broker opens before any async runtime task may rely on it, and the
//! thread must speak up even while the opening thread is stuck on disk.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::CoreError;

/// Written at the end of a clean shutdown, removed at the next start.
const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";

/// How the previous run of the broker on this data directory ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastShutdown {
    /// No broker ran here before.
    NewDataDirectory,
    /// The last run closed every log and left the marker.
    Clean,
    /// The last run was killed or crashed: every log's tail is checked
    /// (it is checked after a clean stop too; this only says why it matters).
    Unclean,
}

impl LastShutdown {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LastShutdown::NewDataDirectory => "none (new data directory)",
            LastShutdown::Clean => "clean",
            LastShutdown::Unclean => "unclean (killed or crashed)",
        }
    }

    /// How the last run on `data_dir` ended, from its marker.
    pub(crate) fn read(data_dir: &Path) -> LastShutdown {
        if data_dir.join(CLEAN_SHUTDOWN_MARKER).exists() {
            LastShutdown::Clean
        } else if data_dir.join("logs").exists() {
            LastShutdown::Unclean
        } else {
            LastShutdown::NewDataDirectory
        }
    }

    /// Removes the marker, durably, once recovery is done and this run may
    /// start writing: a crash from then on is never mistaken for a clean
    /// stop. A start that fails before this leaves the marker as it was.
    ///
    /// # Errors
    /// [`CoreError::DataDir`] when the marker cannot be removed.
    pub(crate) fn clear(data_dir: &Path) -> Result<(), CoreError> {
        let marker = data_dir.join(CLEAN_SHUTDOWN_MARKER);
        let io_error = |source| CoreError::DataDir {
            path: marker.clone(),
            source,
        };
        match fs::remove_file(&marker) {
            Ok(()) => sync_dir(data_dir).map_err(io_error),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(error)),
        }
    }

    /// Leaves the marker that the next start reads as a clean shutdown.
    /// Called only after every log has been synced and closed.
    ///
    /// # Errors
    /// [`CoreError::DataDir`] when the marker cannot be written.
    pub(crate) fn mark_clean(data_dir: &Path) -> Result<(), CoreError> {
        let marker = data_dir.join(CLEAN_SHUTDOWN_MARKER);
        let io_error = |source| CoreError::DataDir {
            path: marker.clone(),
            source,
        };
        let file = fs::File::create(&marker).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        sync_dir(data_dir).map_err(io_error)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The phase being recovered and how far it got.
#[derive(Debug)]
struct State {
    phase: &'static str,
    done: usize,
    total: usize,
    stopped: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Logs a progress line every `interval` until dropped. Owned by
/// [`crate::Broker::open`]; the opening code reports through it.
#[derive(Debug)]
pub(crate) struct Progress {
    shared: Arc<Shared>,
    started: Instant,
    reporter: Option<JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(interval: Duration) -> Progress {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                phase: "starting",
                done: 0,
                total: 0,
                stopped: false,
            }),
            wake: Condvar::new(),
        });
        let started = Instant::now();
        let worker = Arc::clone(&shared);
        // Without the thread recovery still works, only silently.
        let reporter = std::thread::Builder::new()
            .name("sluice-recovery-progress".into())
            .spawn(move || report(&worker, interval, started))
            .ok();
        Progress {
            shared,
            started,
            reporter,
        }
    }

    /// Enters `phase`; its counts start from zero.
    pub(crate) fn phase(&self, phase: &'static str) {
        let mut state = self.shared.state();
        state.phase = phase;
        state.done = 0;
        state.total = 0;
    }

    /// `done` of `total` items of the current phase are recovered.
    pub(crate) fn advance(&self, done: usize, total: usize) {
        let mut state = self.shared.state();
        state.done = done;
        state.total = total;
    }

    /// Time since recovery began.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.shared.state().stopped = true;
        self.shared.wake.notify_all();
        if let Some(reporter) = self.reporter.take() {
            let _ = reporter.join();
        }
    }
}

fn report(shared: &Shared, interval: Duration, started: Instant) {
    let mut state = shared.state();
    loop {
        let deadline = Instant::now() + interval;
        while !state.stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = shared
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if state.stopped {
            return;
        }
        tracing::info!(
            phase = state.phase,
            done = state.done,
            total = state.total,
            elapsed_s = started.elapsed().as_secs(),
            "recovery in progress"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_tells_clean_from_unclean_and_new() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            LastShutdown::read(dir.path()),
            LastShutdown::NewDataDirectory
        );
        fs::create_dir(dir.path().join("logs")).expect("logs dir");
        assert_eq!(LastShutdown::read(dir.path()), LastShutdown::Unclean);
        LastShutdown::mark_clean(dir.path())?;
        // A start that fails before clearing still finds the clean stop.
        assert_eq!(LastShutdown::read(dir.path()), LastShutdown::Clean);
        assert_eq!(LastShutdown::read(dir.path()), LastShutdown::Clean);
        LastShutdown::clear(dir.path())?;
        // Cleared: a crash after this start is not a clean stop.
        assert_eq!(LastShutdown::read(dir.path()), LastShutdown::Unclean);
        LastShutdown::clear(dir.path())?;
        Ok(())
    }

    #[test]
    fn progress_stops_promptly_when_dropped() {
        let started = Instant::now();
        let progress = Progress::start(Duration::from_secs(3600));
        progress.phase("logs");
        progress.advance(1, 2);
        drop(progress);
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
