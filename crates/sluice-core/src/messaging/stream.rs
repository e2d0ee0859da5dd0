//! Stream queues: a queue declared with `x-queue-type: stream` is an AMQP
//! view of a topic. Publishes routed to it are appended to the topic as
//! records (the mapping in `bridge.rs`); each consumer reads the topic from
//! the position its `x-stream-offset` names, as RabbitMQ Streams are read:
//! every consumer sees everything, acknowledgements only return credit and
//! nothing is ever removed by consuming. Retention is the topic's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use amq_protocol::types::AMQPValue;
use bytes::Bytes;
use sluice_log::batch::{NewRecord, RecordHeader};
use sluice_types::{Clock as _, SystemClock};
use sluice_types::{Offset, PartitionId};
use tokio::task::AbortHandle;

use super::MessagingError;
use super::bridge::{message_to_record, partition_for_key, record_to_message};
use super::message::Message;
use super::queue::{ConsumerEvent, ConsumerSpec, Delivery, Queue};
use crate::{AckLevel, CoreError, Partition, PendingAck, Position, Topic, Undecodable};

/// The header every stream delivery carries its offset in.
pub const STREAM_OFFSET_HEADER: &str = "x-stream-offset";
/// The header naming the partition of a delivery from a stream with more
/// than one.
pub const STREAM_PARTITION_HEADER: &str = "x-stream-partition";

/// Bytes a reader asks of the log at a time.
const READ_BYTES: usize = 256 << 10;
/// How long a reader out of credit sleeps before looking again, in case
/// credit came back through a channel-wide limit it is not told about.
const CREDIT_POLL: Duration = Duration::from_millis(50);
/// How long a reader waits after a failed read before trying again.
const READ_RETRY: Duration = Duration::from_millis(200);

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// The oldest record kept.
    First,
    /// The last record written.
    Last,
    /// Only records written from now on (the default).
    Next,
    /// This offset (clamped into the log).
    Offset(i64),
    /// The first record at or after this time, in milliseconds.
    Timestamp(i64),
}

impl StreamStart {
    /// Reads `x-stream-offset`: `first`, `last`, `next`, an offset, an AMQP
    /// timestamp (seconds) or an interval back from now such as `1h`.
    ///
    /// # Errors
    /// PRECONDITION_FAILED for any other value.
    pub fn parse(value: Option<&AMQPValue>) -> Result<StreamStart, MessagingError> {
        let invalid = |what: String| {
            MessagingError::PreconditionFailed(format!("invalid x-stream-offset {what}"))
        };
        let Some(value) = value else {
            return Ok(StreamStart::Next);
        };
        if let AMQPValue::Timestamp(seconds) = value {
            return Ok(StreamStart::Timestamp(
                i64::try_from(*seconds).unwrap_or(i64::MAX / 1000) * 1000,
            ));
        }
        if let Some(offset) = super::integer_value(value) {
            return if offset < 0 {
                Err(invalid(offset.to_string()))
            } else {
                Ok(StreamStart::Offset(offset))
            };
        }
        let text = super::string_value(value).ok_or_else(|| invalid(format!("{value:?}")))?;
        match text.as_str() {
            "first" => Ok(StreamStart::First),
            "last" => Ok(StreamStart::Last),
            "next" => Ok(StreamStart::Next),
            interval => {
                let age = parse_age_ms(interval).ok_or_else(|| invalid(format!("'{interval}'")))?;
                let now = SystemClock.now_ms();
                Ok(StreamStart::Timestamp(
                    now.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX)),
                ))
            }
        }
    }
}

/// An age as RabbitMQ writes `x-max-age` and interval offsets: a number and
/// one of `Y`, `M`, `D`, `h`, `m`, `s`, in milliseconds.
pub fn parse_age_ms(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let number: u64 = text.get(..text.len() - unit.len_utf8())?.parse().ok()?;
    let seconds = match unit {
        'Y' => 365 * 24 * 3600,
        'M' => 30 * 24 * 3600,
        'D' => 24 * 3600,
        'h' => 3600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    number.checked_mul(seconds)?.checked_mul(1000)
}

/// The topic behind a stream queue and the readers of its consumers.
#[derive(Debug)]
pub(crate) struct Stream {
    topic: Arc<Topic>,
    readers: Mutex<HashMap<(u64, Arc<str>), Readers>>,
}

/// A consumer's readers (one per partition) and where to tell it that the
/// stream is gone.
#[derive(Debug)]
struct Readers {
    handles: Vec<AbortHandle>,
    sink: tokio::sync::mpsc::UnboundedSender<ConsumerEvent>,
}

impl Stream {
    pub(crate) fn new(topic: Arc<Topic>) -> Stream {
        Stream {
            topic,
            readers: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }

    fn readers(&self) -> MutexGuard<'_, HashMap<(u64, Arc<str>), Readers>> {
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the topic keeps (high watermark minus log start, summed).
    pub(crate) fn message_count(&self) -> usize {
        self.topic
            .partitions()
            .iter()
            .map(|p| p.high_watermark().get() - p.log_start().get())
            .sum::<i64>()
            .max(0) as usize
    }

    pub(crate) fn consumer_count(&self) -> usize {
        self.readers().len()
    }

    /// Appends a message routed to the stream; the returned sync makes it
    /// durable (on a cluster, on every in-sync replica, as Kafka's
    /// acks=all) and visible to readers.
    pub(crate) fn append(&self, message: &Message) -> Result<Option<PendingAck>, CoreError> {
        let (partition, mut batch) = self.batch_of(message)?;
        let appended = self.topic.append_start(partition, &mut batch)?.in_sync();
        if appended.ack.level() == AckLevel::Written {
            // Nothing to wait for: readers are woken now.
            appended.ack.wait()?;
            Ok(None)
        } else {
            Ok(Some(appended.ack))
        }
    }

    /// The partition a message routed to the stream goes to, and the
    /// record batch holding it (not yet written).
    ///
    /// # Errors
    /// [`CoreError::Internal`] when the encoder refuses.
    pub(crate) fn batch_of(
        &self,
        message: &Message,
    ) -> Result<(PartitionId, bytes::BytesMut), CoreError> {
        let partition = self.partition_of(message);
        let record = message_to_record(message);
        let headers: Vec<RecordHeader<'_>> = record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_deref()))
            .collect();
        let new = NewRecord {
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            timestamp: SystemClock.now_ms(),
        };
        let batch = sluice_log::batch::encode_with_headers(&[(new, headers.as_slice())])
            .map_err(|reason| CoreError::Internal { reason })?;
        Ok((partition, batch))
    }

    /// The partition a message routed to the stream goes to: by its
    /// routing key, as Kafka's default partitioner by the record key.
    fn partition_of(&self, message: &Message) -> PartitionId {
        let partitions = self.topic.partition_count() as u32;
        let partition = if partitions <= 1 {
            0
        } else {
            partition_for_key(message.routing_key.as_str().as_bytes(), partitions)
        };
        PartitionId::from(partition as i32)
    }

    /// The node the metadata names leader of the partition `message` goes
    /// to (on a cluster).
    pub(crate) fn leader_of(&self, message: &Message) -> Option<i32> {
        self.topic
            .leader(self.partition_of(message))
            .map(|(node, _)| node)
    }

    /// Makes what was appended without a confirm durable and readable
    /// (called by the maintenance tick).
    pub(crate) fn flush(&self) {
        for partition in self.topic.partitions() {
            if partition.high_watermark() < partition.log_end() {
                match partition.log().flush() {
                    Ok(()) => partition.wake_readers(),
                    Err(error) => {
                        tracing::warn!(topic = self.topic.name(), %error, "cannot sync a stream");
                    }
                }
            }
        }
    }

    /// The oldest `count` records the topic keeps, as the messages a
    /// consumer starting at `first` would get: partition by partition, each
    /// with its offset header (and partition header when there are several).
    /// Nothing moves; a stream is never consumed. Blocking (reads the log).
    pub(crate) fn peek(&self, count: usize) -> Vec<Message> {
        let partitions = self.topic.partitions();
        let labelled = partitions.len() > 1;
        let mut out = Vec::new();
        for partition in partitions {
            let mut next = partition.log_start();
            while out.len() < count {
                let chunk = match partition.read_chunk(next, READ_BYTES, Undecodable::SkipRest) {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(topic = self.topic.name(), %error, "cannot read a stream to peek");
                        break;
                    }
                };
                for record in chunk.deliverable(next).take(count - out.len()) {
                    out.push(stream_message(record, partition.id().get(), labelled));
                }
                next = chunk.next;
            }
            if out.len() >= count {
                break;
            }
        }
        out
    }

    /// Starts one reader per partition for a new consumer.
    pub(crate) fn add_consumer(
        &self,
        queue: &Arc<Queue>,
        consumer: ConsumerSpec,
        start: StreamStart,
    ) -> Result<(), MessagingError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            MessagingError::NotImplemented("stream consumers need an async runtime".to_owned())
        })?;
        let partitions = self.topic.partitions();
        let labelled = partitions.len() > 1;
        let mut handles = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let reader = Reader {
                queue: Arc::clone(queue),
                partition,
                consumer: consumer.clone(),
                labelled,
            };
            handles.push(runtime.spawn(reader.run(start)).abort_handle());
        }
        self.readers().insert(
            (consumer.channel, Arc::clone(&consumer.tag)),
            Readers {
                handles,
                sink: consumer.sink.clone(),
            },
        );
        Ok(())
    }

    /// Stops a consumer's readers; true when it was one.
    pub(crate) fn remove_consumer(&self, channel: u64, tag: &str) -> bool {
        let mut readers = self.readers();
        let key = readers
            .keys()
            .find(|(c, t)| *c == channel && &**t == tag)
            .cloned();
        match key.and_then(|key| readers.remove(&key)) {
            Some(removed) => {
                removed.handles.iter().for_each(AbortHandle::abort);
                true
            }
            None => false,
        }
    }

    /// Stops every reader and tells the consumers (the queue is deleted).
    pub(crate) fn stop(&self) {
        for ((channel, consumer_tag), removed) in self.readers().drain() {
            removed.handles.iter().for_each(AbortHandle::abort);
            let _ = removed.sink.send(ConsumerEvent::Cancelled {
                channel,
                consumer_tag,
            });
        }
    }
}

/// One consumer's reader of one partition.
struct Reader {
    queue: Arc<Queue>,
    partition: Arc<Partition>,
    consumer: ConsumerSpec,
    /// Deliveries name their partition (the stream has several).
    labelled: bool,
}

impl Reader {
    fn first_offset(&self, start: StreamStart) -> Offset {
        let resolve = |position| match self.partition.resolve(position) {
            Ok(found) => found.map(|(offset, _)| offset),
            Err(error) => {
                tracing::warn!(%error, "cannot look up a stream offset by time; starting at the end");
                None
            }
        };
        let end = self.partition.high_watermark();
        match start {
            StreamStart::First => self.partition.log_start(),
            StreamStart::Last => resolve(Position::LastRecord).unwrap_or(end),
            StreamStart::Next => end,
            StreamStart::Offset(offset) => {
                Offset::from(offset.clamp(self.partition.log_start().get(), end.get()))
            }
            StreamStart::Timestamp(ms) => resolve(Position::Timestamp(ms)).unwrap_or(end),
        }
    }

    async fn run(self, start: StreamStart) {
        let mut next = self.first_offset(start);
        loop {
            let appended = self.partition.appended();
            tokio::pin!(appended);
            appended.as_mut().enable();
            // Stream consumers are never stuck on one batch: an undecodable
            // one is skipped with the rest of its read.
            let chunk = match self
                .partition
                .read_chunk(next, READ_BYTES, Undecodable::SkipRest)
            {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    appended.await;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(queue = self.queue.name(), %error, "stream read failed");
                    tokio::time::sleep(READ_RETRY).await;
                    continue;
                }
            };
            for record in chunk.deliverable(next) {
                if !self.deliver(record.offset, record).await {
                    return;
                }
            }
            next = chunk.next;
        }
    }

    /// Waits for credit and sends one delivery; false once the channel is gone.
    async fn deliver(&self, offset: i64, record: &kafka_protocol::records::Record) -> bool {
        while !self.consumer.credit.try_acquire() {
            let released = self.consumer.credit.released();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.consumer.credit.try_acquire() {
                break;
            }
            let _ = tokio::time::timeout(CREDIT_POLL, released).await;
        }
        let message = stream_message(record, self.partition.id().get(), self.labelled);
        self.queue.traffic().record_delivery(false);
        let delivery = Delivery {
            channel: self.consumer.channel,
            queue: Arc::clone(&self.queue),
            seq: u64::try_from(offset).unwrap_or(0),
            consumer_tag: Arc::clone(&self.consumer.tag),
            message: Arc::new(message),
            redelivered: false,
            quorum: None,
        };
        self.consumer
            .sink
            .send(ConsumerEvent::Deliver(delivery))
            .is_ok()
    }
}

/// A record as the message a stream consumer gets: its offset in
/// [`STREAM_OFFSET_HEADER`], its partition in [`STREAM_PARTITION_HEADER`]
/// when `labelled` (the stream has several).
fn stream_message(
    record: &kafka_protocol::records::Record,
    partition: i32,
    labelled: bool,
) -> Message {
    let headers: Vec<(&str, Option<&[u8]>)> = record
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_ref().map(Bytes::as_ref)))
        .collect();
    let mut extra = vec![(STREAM_OFFSET_HEADER, AMQPValue::LongLongInt(record.offset))];
    if labelled {
        extra.push((STREAM_PARTITION_HEADER, AMQPValue::LongInt(partition)));
    }
    record_to_message(
        record.key.as_deref(),
        record.value.as_deref(),
        &headers,
        &extra,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_use_rabbitmq_units() {
        assert_eq!(parse_age_ms("7D"), Some(7 * 24 * 3600 * 1000));
        assert_eq!(parse_age_ms("1h"), Some(3_600_000));
        assert_eq!(parse_age_ms("30s"), Some(30_000));
        assert_eq!(parse_age_ms("10"), None);
        assert_eq!(parse_age_ms("h"), None);
        assert_eq!(parse_age_ms(""), None);
    }

    #[test]
    fn stream_offsets_are_read_like_rabbitmq() -> Result<(), MessagingError> {
        assert_eq!(StreamStart::parse(None)?, StreamStart::Next);
        assert_eq!(
            StreamStart::parse(Some(&AMQPValue::LongString("first".into())))?,
            StreamStart::First
        );
        assert_eq!(
            StreamStart::parse(Some(&AMQPValue::LongLongInt(42)))?,
            StreamStart::Offset(42)
        );
        assert_eq!(
            StreamStart::parse(Some(&AMQPValue::Timestamp(1_700_000_000)))?,
            StreamStart::Timestamp(1_700_000_000_000)
        );
        let StreamStart::Timestamp(ago) =
            StreamStart::parse(Some(&AMQPValue::LongString("1h".into())))?
        else {
            panic!("an interval is a time");
        };
        assert!(SystemClock.now_ms() - ago >= 3_600_000);
        assert!(StreamStart::parse(Some(&AMQPValue::LongString("soon".into()))).is_err());
        assert!(StreamStart::parse(Some(&AMQPValue::LongLongInt(-1))).is_err());
        Ok(())
    }
}
