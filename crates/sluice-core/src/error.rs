use std::io;
use std::path::PathBuf;

/// Errors of the broker core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(
        "data directory {} is in use by another Sluice process (lock file {})",
        .path.display(),
        .lock_file.display()
    )]
    DataDirLocked { path: PathBuf, lock_file: PathBuf },
    #[error("cannot use data directory {}", .path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Log(#[from] sluice_log::LogError),
}
