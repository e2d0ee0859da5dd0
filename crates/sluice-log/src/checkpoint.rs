//! Small files replaced atomically: write a temporary beside the target,
//! fsync it, rename it over the target, fsync the directory. A crash leaves
//! either the old or the new content, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use crate::error::LogError;

pub(crate) const TEMP_SUFFIX: &str = ".tmp";

pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), LogError> {
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(TEMP_SUFFIX);
    let temp = Path::new(&temp_name);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(temp)
        .map_err(LogError::io(temp))?;
    write(&mut file).map_err(LogError::io(temp))?;
    file.sync_all().map_err(LogError::io(temp))?;
    drop(file);
    fs::rename(temp, path).map_err(LogError::io(path))?;
    sync_parent(path)
}

/// Makes a file's creation, rename or removal durable.
pub(crate) fn sync_parent(path: &Path) -> Result<(), LogError> {
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LogError::io(dir))
}

/// Reads a file holding one decimal number; `Ok(None)` if it is missing.
pub(crate) fn read_number(path: &Path) -> Result<Option<i64>, LogError> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| LogError::Unrecoverable {
                path: path.to_path_buf(),
                reason: format!("expected one number, found {:?}", text.trim()),
            }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(LogError::io(path)(err)),
    }
}

/// Replaces the file at `path` with `contents` atomically (temporary,
/// fsync, rename, directory fsync), for state kept beside the logs.
///
/// # Errors
/// [`LogError::Io`] naming the file.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<(), LogError> {
    write_atomically(path, |file| io::Write::write_all(file, contents))
}

pub(crate) fn write_number(path: &Path, value: i64) -> Result<(), LogError> {
    write_atomically(path, |file| {
        io::Write::write_all(file, format!("{value}\n").as_bytes())
    })
}
