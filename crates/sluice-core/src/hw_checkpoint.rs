//! The high watermark checkpoint, `<data_dir>/replication-offset-checkpoint`,
//! in Kafka's format: a version line (0), a count line, then one
//! `topic partition offset` line per partition.
//!
//! Written every 5 s by the lifecycle and at shutdown; read and checked
//! at open. The single-node policy
//! does not need it (its high watermark is the synced or the written end,
//! known from the log), so a missing or damaged file is only warned
//! about; a replicated partition will start from it, as Kafka's do.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::CoreError;

pub(crate) const FILE: &str = "replication-offset-checkpoint";
const VERSION: &str = "0";

/// One partition's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) high_watermark: i64,
}

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Replaces the checkpoint with `entries`.
pub(crate) fn write(data_dir: &Path, entries: &[Entry]) -> Result<(), CoreError> {
    let mut text = format!("{VERSION}\n{}\n", entries.len());
    for entry in entries {
        let _ = writeln!(
            text,
            "{} {} {}",
            entry.topic, entry.partition, entry.high_watermark
        );
    }
    sluice_log::write_file_atomically(&path(data_dir), text.as_bytes())?;
    Ok(())
}

/// The checkpoint's entries: `Ok(None)` when there is none, `Err` with the
/// reason when it cannot be read as Kafka's format.
pub(crate) fn read(data_dir: &Path) -> Result<Option<Vec<Entry>>, String> {
    let text = match std::fs::read_to_string(path(data_dir)) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let mut lines = text.lines();
    if lines.next() != Some(VERSION) {
        return Err("the first line is not version 0".to_owned());
    }
    let count: usize = lines
        .next()
        .and_then(|line| line.trim().parse().ok())
        .ok_or("the second line is not a count")?;
    let entries = lines
        .map(|line| {
            let mut fields = line.split(' ');
            match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(topic), Some(partition), Some(offset), None) => Some(Entry {
                    topic: topic.to_owned(),
                    partition: partition.parse().ok()?,
                    high_watermark: offset.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect::<Option<Vec<Entry>>>()
        .ok_or("a line is not `topic partition offset`")?;
    if entries.len() != count {
        return Err(format!(
            "{count} entries announced, {} found",
            entries.len()
        ));
    }
    Ok(Some(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_in_kafkas_format() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(dir.path()), Ok(None));
        let entries = vec![
            Entry {
                topic: "orders".to_owned(),
                partition: 0,
                high_watermark: 42,
            },
            Entry {
                topic: "orders".to_owned(),
                partition: 1,
                high_watermark: 0,
            },
        ];
        write(dir.path(), &entries).expect("write");
        let text = std::fs::read_to_string(path(dir.path())).expect("file");
        assert_eq!(text, "0\n2\norders 0 42\norders 1 0\n");
        assert_eq!(read(dir.path()), Ok(Some(entries)));
        std::fs::write(path(dir.path()), "0\n3\norders 0 42\n").expect("damage");
        assert!(read(dir.path()).is_err());
        std::fs::write(path(dir.path()), "1\n0\n").expect("damage");
        assert!(read(dir.path()).is_err());
    }
}
