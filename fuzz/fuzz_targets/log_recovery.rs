//! Log recovery from damaged files: a small valid log is written, then its
//! segment, index and time index files are mangled by the input (bytes
//! overwritten at positions, files cut short or extended with garbage).
//! Opening must give a log or an error, never a panic, and every read
//! between the recovered log start and end must answer without panicking.
#![no_main]

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

use libfuzzer_sys::fuzz_target;
use sluice_log::batch::{NewRecord, encode};
use sluice_log::{Durability, Log, LogConfig, ReadBound};
use sluice_types::LeaderEpoch;

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Never,
        segment_bytes: 2048,
        index_interval_bytes: 128,
        retention_time: None,
        ..LogConfig::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let log = Log::open(dir.path(), config()).expect("open");
        for i in 0..12u8 {
            let value = vec![i; 150];
            let records = [NewRecord {
                key: Some(&[i]),
                value: Some(&value),
                timestamp: 1_000 + i64::from(i),
            }];
            let mut batch = encode(&records).expect("encode");
            log.append(&mut batch, LeaderEpoch::from(0))
                .expect("append");
        }
        log.close().expect("close");
    }
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // Each operation: [file:1][kind:1][position:2][value:1].
    for op in data.chunks_exact(5) {
        let Some(path) = files.get(usize::from(op[0]) % files.len().max(1)) else {
            break;
        };
        let position = u64::from(u16::from_be_bytes([op[2], op[3]]));
        let Ok(mut file) = OpenOptions::new().read(true).write(true).open(path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        match op[1] % 4 {
            0 | 1 if len > 0 => {
                let _ = file.seek(SeekFrom::Start(position % len));
                let _ = file.write_all(&[op[4]]);
            }
            2 => {
                let _ = file.set_len(position % (len + 1));
            }
            _ => {
                let _ = file.seek(SeekFrom::End(0));
                let _ = file.write_all(&vec![op[4]; usize::from(op[2] % 64)]);
            }
        }
    }
    let Ok(log) = Log::open(dir.path(), config()) else {
        return;
    };
    let mut offset = log.log_start();
    while offset < log.log_end() {
        match log.read(offset, 4096, ReadBound::LogEnd) {
            Ok(read) => match read.next_offset {
                Some(next) if next > offset => offset = next,
                _ => offset = offset.plus(1),
            },
            Err(_) => offset = offset.plus(1),
        }
    }
});
