//! The node-local internal logs (metadata, committed offsets, AMQP
//! definitions, queue messages and settlements): their records written as
//! one batch, and read back whole on open, every record from a start
//! offset to the log end, in order.

use bytes::BytesMut;
use kafka_protocol::records::Record;
use sluice_log::batch::{NewRecord, encode};
use sluice_log::{Log, ReadBound};
use sluice_types::Offset;
use sluice_types::{Clock as _, SystemClock};

use crate::CoreError;
use crate::partition::{Undecodable, read_chunk};

/// A record of an internal log: key and value, either may be null.
pub(crate) type Entry<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// One batch of `(key, value)` records stamped with the broker's clock;
/// `what` names the log in the error.
///
/// # Errors
/// [`CoreError::Internal`] when the encoder refuses (no records, say).
pub(crate) fn batch_of(entries: &[Entry<'_>], what: &str) -> Result<BytesMut, CoreError> {
    let now = SystemClock.now_ms();
    let records: Vec<NewRecord<'_>> = entries
        .iter()
        .map(|(key, value)| NewRecord {
            key: *key,
            value: *value,
            timestamp: now,
        })
        .collect();
    encode(&records).map_err(|reason| CoreError::Internal {
        reason: format!("cannot encode a batch of the {what} log: {reason}"),
    })
}

/// Calls `visit` with every record at or after `from`, control records
/// and the records before `from` in its batch included. A batch the
/// decoder refuses is skipped with the rest of its read, with a warning
/// ([`Undecodable::SkipRest`]).
///
/// # Errors
/// The log's read errors.
pub(crate) fn for_each_record(
    log: &Log,
    from: Offset,
    mut visit: impl FnMut(Record),
) -> Result<(), CoreError> {
    let mut next = from;
    while let Some(chunk) =
        read_chunk(log, next, 1 << 20, ReadBound::LogEnd, Undecodable::SkipRest)?
    {
        chunk.records.into_iter().for_each(&mut visit);
        next = chunk.next;
    }
    Ok(())
}
