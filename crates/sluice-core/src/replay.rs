//! Reading a whole internal log back on open (committed offsets, AMQP
//! definitions, queue messages and settlements): every record from a start
//! offset to the log end, in order.

use kafka_protocol::records::Record;
use sluice_log::{Log, ReadBound};
use sluice_types::Offset;

use crate::CoreError;
use crate::partition::{Undecodable, read_chunk};

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
