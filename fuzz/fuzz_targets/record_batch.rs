//! Record batch validation: bytes through the log's checks; what passes is
//! appended to a real log and read back byte for byte, and its records are
//! parsed (as compaction and the message browser parse them). The first
//! byte chooses: even, every batch's CRC-32C is recomputed first (so the
//! fuzzer gets past the checksum to the fields behind it); odd, the bytes
//! go in as they are.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_log::{Durability, Log, LogConfig, ReadBound};
use sluice_types::LeaderEpoch;

/// RecordBatch v2: length at 8..12 (of what follows it), CRC at 17..21
/// covering everything from 21 (the attributes) to the end of the batch.
fn fix_crcs(buf: &mut [u8]) {
    let mut position = 0;
    while let Some(length) = buf.get(position + 8..position + 12) {
        let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
        let Some(size) = usize::try_from(length).ok().map(|l| l + 12) else {
            return;
        };
        if size < 21 || position + size > buf.len() {
            return;
        }
        let crc = crc32c::crc32c(&buf[position + 21..position + size]);
        buf[position + 17..position + 21].copy_from_slice(&crc.to_be_bytes());
        position += size;
    }
}

fn log() -> &'static Log {
    static LOG: OnceLock<(tempfile::TempDir, Log)> = OnceLock::new();
    &LOG.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = LogConfig {
            durability: Durability::Never,
            segment_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config).expect("open log");
        (dir, log)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut batches = rest.to_vec();
    if mode % 2 == 0 {
        fix_crcs(&mut batches);
    }
    let Ok(headers) = sluice_log::batch::split_verified(&batches) else {
        return;
    };
    for (at, header) in &headers {
        let batch = &batches[*at..*at + header.size];
        if let Some(records) = sluice_log::batch::records(batch) {
            let _ = sluice_log::batch::with_records(batch, &records);
        }
    }
    let log = log();
    let Ok(info) = log.append(&mut batches, LeaderEpoch::from(0)) else {
        return;
    };
    let read = log
        .read(info.first_offset, batches.len(), ReadBound::LogEnd)
        .expect("an appended batch reads back");
    assert_eq!(
        &read.records[..batches.len()],
        &batches[..],
        "read back as appended"
    );
});
