//! Reading a whole internal log back on open (committed offsets, AMQP
//! definitions, queue messages and settlements): every record from a start
//! offset to the log end, in order.

use bytes::Buf;
use kafka_protocol::records::{Record, RecordBatchDecoder};
use sluice_log::{Log, ReadBound};
use sluice_types::Offset;

use crate::CoreError;

/// Calls `visit` with every record at or after `from`. A batch the decoder
/// refuses is skipped with a warning (the log has already checked its CRC,
/// so this is a format the reader does not know, not damage).
///
/// # Errors
/// The log's read errors.
pub(crate) fn for_each_record(
    log: &Log,
    from: Offset,
    mut visit: impl FnMut(Record),
) -> Result<(), CoreError> {
    let mut next = from.max(log.log_start());
    while next < log.log_end() {
        let read = log.read(next, 1 << 20, ReadBound::LogEnd)?;
        let Some(after) = read.next_offset else { break };
        let mut bytes = read.records;
        while bytes.has_remaining() {
            let Ok(set) = RecordBatchDecoder::decode(&mut bytes) else {
                tracing::warn!(offset = %next, log = %log.dir().display(), "skipping an undecodable batch");
                break;
            };
            set.records.into_iter().for_each(&mut visit);
        }
        next = after;
    }
    Ok(())
}
