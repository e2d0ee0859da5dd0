use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::CoreError;

const LOCK_FILE: &str = ".lock";

/// An exclusive advisory lock on a data directory, held while the value lives.
///
/// The lock is `flock` on `<data_dir>/.lock`; the kernel drops it when the
/// process dies, so a `kill -9` never leaves a stale lock behind. The file
/// holds the owner's pid for operators; its content is never trusted.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `data_dir` if missing and locks it.
    ///
    /// # Errors
    /// [`CoreError::DataDirLocked`] if another process holds the lock,
    /// [`CoreError::DataDir`] if the directory or lock file cannot be made.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, CoreError> {
        let io_error = |source| CoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(io_error)?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(CoreError::DataDirLocked {
                    path: data_dir.to_path_buf(),
                    lock_file: path,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }
        file.set_len(0).map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(DataDirLock { file, path })
    }

    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Unlocking can only fail if the descriptor is already gone; closing
        // the file releases the lock in any case.
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_directory_is_refused() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DataDirLock::acquire(dir.path())?;
        let err = DataDirLock::acquire(dir.path()).expect_err("already locked");
        assert!(matches!(err, CoreError::DataDirLocked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another Sluice process"));
        drop(first);
        DataDirLock::acquire(dir.path())?;
        Ok(())
    }
}
