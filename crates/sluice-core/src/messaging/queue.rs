//! A queue: ready messages in priority order, messages delivered and not yet
//! settled, and the consumers it pushes to.
//!
//! All state sits behind one mutex held only for in-memory work and short
//! page-cache writes; deliveries leave through each consumer's unbounded
//! sender, bounded in practice by the consumer's [`Credit`]. Messages that
//! expire, overflow or are rejected without requeue are handed back to the
//! virtual host for dead-lettering after the lock is released.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable};
use tokio::sync::mpsc::UnboundedSender;

use super::MessagingError;
use super::alarms::{MemoryCharge, ResourceMonitor};
use super::message::{Message, integer_value, string_value};
use super::queue_store::{QueueStore, RecoveredMessage, RecoveredRun, Source};
use super::stream::{Stream, StreamStart};
use super::vhost::VirtualHost;
use crate::CoreError;
use crate::PendingAck;

/// Bytes a queue reads back from disk at a time when its head runs dry.
const PAGE_IN_BYTES: usize = 1 << 20;

/// Unacknowledged deliveries above which a queue reads nothing back from
/// disk while the memory alarm is raised.
const PAGE_IN_UNACKED_CAP: usize = 256;

/// Pages an expiry pass may read back (the rest waits for the next tick).
const EXPIRE_PAGE_INS: usize = 16;

/// What happens when a queue is full (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready message.
    #[default]
    DropHead,
    /// Refuse the new message (nack to confirming publishers).
    RejectPublish,
    /// Refuse and dead-letter the new message.
    RejectPublishDlx,
}

/// Queue arguments Sluice acts on, read from `queue.declare`'s table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`, milliseconds unused before the queue is deleted.
    pub expires: Option<u64>,
    /// `x-max-length`, ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`, ready body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority` (1..=255).
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-queue-type: stream`: the queue is a view of a topic.
    pub stream: bool,
    /// `x-stream-partitions`: partitions of the topic a new stream creates.
    pub stream_partitions: Option<u32>,
    /// `x-max-age` of a stream, milliseconds (its topic's retention.ms).
    pub max_age_ms: Option<u64>,
}

impl QueueArgs {
    /// Reads and checks the arguments, with RabbitMQ's errors.
    ///
    /// # Errors
    /// [`MessagingError::PreconditionFailed`] naming the argument, in
    /// RabbitMQ's words (see [`InvalidArgument::rabbitmq_text`]).
    pub fn parse(
        queue: &str,
        vhost: &str,
        arguments: &FieldTable,
    ) -> Result<QueueArgs, MessagingError> {
        QueueArgs::check(arguments).map_err(|invalid| {
            MessagingError::PreconditionFailed(invalid.rabbitmq_text(queue, vhost))
        })
    }

    /// Reads and checks the arguments.
    ///
    /// # Errors
    /// The first argument refused, and why.
    pub fn check(arguments: &FieldTable) -> Result<QueueArgs, InvalidArgument> {
        let invalid = |name: &str, problem: ArgumentProblem| InvalidArgument {
            argument: name.to_owned(),
            problem,
        };
        let wrong_type =
            |name: &str, value: &AMQPValue| invalid(name, ArgumentProblem::Type(type_name(value)));
        let non_negative = |name: &str, value: &AMQPValue| -> Result<u64, InvalidArgument> {
            let n = integer_value(value).ok_or_else(|| wrong_type(name, value))?;
            u64::try_from(n).map_err(|_| invalid(name, ArgumentProblem::Negative(n)))
        };
        let positive = |name: &str, value: &AMQPValue| -> Result<u64, InvalidArgument> {
            let n = non_negative(name, value)?;
            if n == 0 {
                return Err(invalid(name, ArgumentProblem::Zero));
            }
            Ok(n)
        };
        let text = |name: &str, value: &AMQPValue| -> Result<String, InvalidArgument> {
            string_value(value).ok_or_else(|| wrong_type(name, value))
        };
        let mut args = QueueArgs::default();
        for (key, value) in arguments {
            let name = key.as_str();
            match name {
                "x-message-ttl" => args.message_ttl = Some(non_negative(name, value)?),
                "x-expires" => args.expires = Some(positive(name, value)?),
                "x-max-length" => args.max_length = Some(non_negative(name, value)?),
                "x-max-length-bytes" => args.max_length_bytes = Some(non_negative(name, value)?),
                "x-max-priority" => {
                    let n = positive(name, value)?;
                    if n > 255 {
                        return Err(invalid(name, ArgumentProblem::OutOfRange(n, 255)));
                    }
                    args.max_priority = Some(n as u8);
                }
                "x-overflow" => {
                    args.overflow = match text(name, value)?.as_str() {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        other => {
                            return Err(invalid(name, ArgumentProblem::Value(other.to_owned())));
                        }
                    }
                }
                "x-dead-letter-exchange" => args.dead_letter_exchange = Some(text(name, value)?),
                "x-dead-letter-routing-key" => {
                    args.dead_letter_routing_key = Some(text(name, value)?);
                }
                "x-single-active-consumer" => match value {
                    AMQPValue::Boolean(b) => args.single_active_consumer = *b,
                    other => return Err(wrong_type(name, other)),
                },
                "x-queue-type" => match text(name, value)?.as_str() {
                    "classic" | "quorum" => {}
                    "stream" => args.stream = true,
                    other => {
                        return Err(invalid(name, ArgumentProblem::QueueType(other.to_owned())));
                    }
                },
                "x-stream-partitions" => {
                    let n = positive(name, value)?;
                    let most = u64::from(crate::MAX_PARTITIONS);
                    if n > most {
                        return Err(invalid(name, ArgumentProblem::OutOfRange(n, most)));
                    }
                    args.stream_partitions = Some(n as u32);
                }
                "x-max-age" => {
                    let age = text(name, value)?;
                    args.max_age_ms = Some(
                        super::stream::parse_age_ms(&age)
                            .ok_or_else(|| invalid(name, ArgumentProblem::Value(age)))?,
                    );
                }
                _ => {}
            }
        }
        if args.dead_letter_routing_key.is_some() && args.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                ArgumentProblem::NeedsDeadLetterExchange,
            ));
        }
        Ok(args)
    }
}

/// A queue argument [`QueueArgs::check`] refuses. `Display` says it in
/// plain words for the admin API; [`InvalidArgument::rabbitmq_text`] gives
/// RabbitMQ's text (with its Erlang terms) for the AMQP wire, which clients
/// and their tests match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidArgument {
    /// The argument's name (`x-max-length`).
    pub argument: String,
    /// What is wrong with its value.
    pub problem: ArgumentProblem,
}

/// What is wrong with a queue argument's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgumentProblem {
    /// The value has the wrong AMQP type (RabbitMQ's name of the type given).
    Type(&'static str),
    /// A negative number where none may be.
    Negative(i64),
    /// Zero where the value must be positive.
    Zero,
    /// A number above the most allowed (the second field).
    OutOfRange(u64, u64),
    /// A string that is not one of the accepted values.
    Value(String),
    /// `x-queue-type` names a type Sluice does not have.
    QueueType(String),
    /// `x-dead-letter-routing-key` without `x-dead-letter-exchange`.
    NeedsDeadLetterExchange,
}

impl InvalidArgument {
    /// RabbitMQ's `PRECONDITION_FAILED` text for `queue.declare`.
    pub fn rabbitmq_text(&self, queue: &str, vhost: &str) -> String {
        let why = match &self.problem {
            ArgumentProblem::Type(kind) => format!("{{unacceptable_type,{kind}}}"),
            ArgumentProblem::Negative(n) => format!("{{value_negative,{n}}}"),
            ArgumentProblem::Zero => "{value_zero,0}".to_owned(),
            ArgumentProblem::OutOfRange(n, _) => format!("{{value_out_of_range,{n}}}"),
            ArgumentProblem::Value(text) => format!("{{invalid_value,<<\"{text}\">>}}"),
            ArgumentProblem::QueueType(text) => {
                format!("{{unsupported_queue_type,<<\"{text}\">>}}")
            }
            ArgumentProblem::NeedsDeadLetterExchange => {
                "Key x-dead-letter-exchange should be present".to_owned()
            }
        };
        format!(
            "invalid arg '{}' for queue '{queue}' in vhost '{vhost}': {why}",
            self.argument
        )
    }

    /// What the argument takes, for plain-words errors.
    fn expected(&self) -> &'static str {
        match self.argument.as_str() {
            "x-message-ttl" | "x-max-length" | "x-max-length-bytes" => "an integer of 0 or more",
            "x-expires" | "x-max-priority" | "x-stream-partitions" => "an integer of 1 or more",
            "x-overflow" => "drop-head, reject-publish or reject-publish-dlx",
            "x-single-active-consumer" => "a boolean",
            "x-queue-type" => "classic, quorum or stream",
            "x-max-age" => "an age such as 7D, 12h, 30m or 10s",
            _ => "a string",
        }
    }
}

impl std::fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = &self.argument;
        let expected = self.expected();
        match &self.problem {
            ArgumentProblem::Type(kind) => {
                let given = match *kind {
                    "longstr" => "a string",
                    "bool" => "a boolean",
                    "table" => "an object",
                    "array" => "an array",
                    "double" => "a number with a fraction",
                    "void" => "null",
                    _ => "a number",
                };
                write!(f, "{name} must be {expected}, got {given}")
            }
            ArgumentProblem::Negative(n) => write!(f, "{name} must be {expected}, got {n}"),
            ArgumentProblem::Zero => write!(f, "{name} must be {expected}, got 0"),
            ArgumentProblem::OutOfRange(n, most) => {
                write!(f, "{name} must be at most {most}, got {n}")
            }
            ArgumentProblem::Value(text) | ArgumentProblem::QueueType(text) => {
                write!(f, "{name} must be {expected}, got {text:?}")
            }
            ArgumentProblem::NeedsDeadLetterExchange => {
                write!(f, "{name} needs x-dead-letter-exchange as well")
            }
        }
    }
}

fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => "longstr",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Float(_) | AMQPValue::Double(_) => "double",
        AMQPValue::Void => "void",
        _ => "long",
    }
}

/// How a queue was declared.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    /// Survives a restart (and keeps persistent messages on disk).
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The declaration arguments, as given.
    pub arguments: FieldTable,
}

/// Delivery credit of a consumer: how many deliveries it may have
/// outstanding. A channel-wide credit (global `basic.qos`, channel flow) is
/// the parent of its consumers' credits.
#[derive(Debug)]
pub struct Credit {
    limit: AtomicU32,
    used: AtomicU32,
    paused: AtomicBool,
    parent: Option<Arc<Credit>>,
    /// Woken when units come back (stream readers wait on it).
    released: tokio::sync::Notify,
}

impl Credit {
    /// A credit of `limit` outstanding deliveries (0: unlimited).
    pub fn new(limit: u32, parent: Option<Arc<Credit>>) -> Arc<Credit> {
        Arc::new(Credit {
            limit: AtomicU32::new(limit),
            used: AtomicU32::new(0),
            paused: AtomicBool::new(false),
            parent,
            released: tokio::sync::Notify::new(),
        })
    }

    /// Resolves after units come back here (not through the parent alone).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    fn take_own(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        if self.paused.load(Ordering::Acquire) {
            return false;
        }
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if limit != 0 && used >= limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Takes one unit here and in the parent, or none.
    pub fn try_acquire(&self) -> bool {
        if !self.take_own() {
            return false;
        }
        if let Some(parent) = &self.parent
            && !parent.take_own()
        {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Whether a unit could be taken now (a hint; races are harmless).
    pub fn available(&self) -> bool {
        let own = {
            let limit = self.limit.load(Ordering::Acquire);
            !self.paused.load(Ordering::Acquire)
                && (limit == 0 || self.used.load(Ordering::Acquire) < limit)
        };
        own && self.parent.as_ref().is_none_or(|p| p.available())
    }

    /// Returns `n` units here and in the parent.
    pub fn release(&self, n: u32) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
        if let Some(parent) = &self.parent {
            parent.release(n);
        }
        self.released.notify_waiters();
    }

    /// Changes the limit (0: unlimited).
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
        self.released.notify_waiters();
    }

    /// Stops (or resumes) deliveries (`channel.flow`).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        self.released.notify_waiters();
    }
}

/// One delivery to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The consuming channel ([`ConsumerSpec::channel`]).
    pub channel: u64,
    /// The queue it came from; settle through it.
    pub queue: Arc<Queue>,
    /// Queue-local handle of the message.
    pub seq: u64,
    /// The consumer's tag.
    pub consumer_tag: Arc<str>,
    /// The message.
    pub message: Arc<Message>,
    /// Delivered before and not settled.
    pub redelivered: bool,
}

/// What a queue tells a consumer's channel.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// A message for the consumer.
    Deliver(Delivery),
    /// The queue went away; the consumer is gone (`basic.cancel` from the server).
    Cancelled {
        /// The consuming channel ([`ConsumerSpec::channel`]).
        channel: u64,
        /// The consumer's tag.
        consumer_tag: Arc<str>,
    },
}

/// A consumer as the front-end registers it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Consumer tag, unique per channel.
    pub tag: Arc<str>,
    /// Identifies the channel (unique in the broker).
    pub channel: u64,
    /// The connection of the channel (for exclusive queues).
    pub connection: u64,
    /// Settled on delivery.
    pub no_ack: bool,
    /// No other consumer may share the queue.
    pub exclusive: bool,
    /// `x-priority`: higher goes first while it has credit.
    pub priority: i32,
    /// Outstanding deliveries allowed.
    pub credit: Arc<Credit>,
    /// Where deliveries go.
    pub sink: UnboundedSender<ConsumerEvent>,
    /// For a stream queue: where the consumer starts (`x-stream-offset`).
    pub stream_start: Option<StreamStart>,
}

/// What `enqueue` did with a message.
#[derive(Debug, Default)]
pub struct EnqueueOutcome {
    /// For a persistent message in a durable queue: what a confirm waits for.
    pub sync: Option<PendingAck>,
    /// Refused by `x-overflow` reject-publish (nack a confirming publisher).
    pub rejected: bool,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    stored: Option<u64>,
    message: Arc<Message>,
    redelivered: bool,
    /// Wall-clock milliseconds after which the message is dead.
    expires_at: Option<i64>,
    /// Memory accounting; released when the entry goes.
    _charge: MemoryCharge,
}

/// Why a message left a queue other than by acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
}

impl DeathReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
        }
    }
}

#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) message: Arc<Message>,
    pub(crate) reason: DeathReason,
}

/// Ready messages in delivery order: the head in memory, by priority, and
/// behind it, for a durable queue without priorities whose head outgrew
/// its memory budget, what arrived since, mostly waiting on disk.
#[derive(Debug, Default)]
struct Ready {
    /// Bucket per effective priority; bucket 0 only without `x-max-priority`.
    buckets: BTreeMap<u8, VecDeque<Entry>>,
    /// Behind bucket 0, in arrival order.
    paged: VecDeque<Paged>,
    /// Ready messages, paged ones included.
    len: usize,
    /// Their body bytes.
    bytes: u64,
    /// Of `len` and `bytes`, what `paged` holds.
    paged_len: usize,
    paged_bytes: u64,
}

/// What waits behind a queue's head.
#[derive(Debug)]
enum Paged {
    /// Persistent messages on disk only.
    Run(PagedRun),
    /// A transient message that arrived behind them (it has no copy on disk).
    Entry(Entry),
}

/// Messages enqueued one after another and stored under consecutive ids.
#[derive(Debug)]
struct PagedRun {
    first_seq: u64,
    first_id: u64,
    count: u64,
    bytes: u64,
    /// Recovered after a crash: flag them all.
    redelivered: bool,
}

impl Ready {
    fn push_back(&mut self, priority: u8, entry: Entry) {
        self.len += 1;
        let size = entry.message.body_size() as u64;
        self.bytes += size;
        if self.paged.is_empty() {
            self.buckets.entry(priority).or_default().push_back(entry);
        } else {
            self.paged_len += 1;
            self.paged_bytes += size;
            self.paged.push_back(Paged::Entry(entry));
        }
    }

    /// Adds a newly published message that stays on disk until the head
    /// reaches it.
    fn push_paged(&mut self, seq: u64, id: u64, size: u64) {
        self.len += 1;
        self.bytes += size;
        self.paged_len += 1;
        self.paged_bytes += size;
        if let Some(Paged::Run(run)) = self.paged.back_mut()
            && run.first_seq + run.count == seq
            && run.first_id + run.count == id
            && !run.redelivered
        {
            run.count += 1;
            run.bytes += size;
            return;
        }
        self.paged.push_back(Paged::Run(PagedRun {
            first_seq: seq,
            first_id: id,
            count: 1,
            bytes: size,
            redelivered: false,
        }));
    }

    /// Body bytes of the in-memory head.
    fn head_bytes(&self) -> u64 {
        self.bytes - self.paged_bytes
    }

    /// Whether the in-memory head is empty.
    fn head_is_empty(&self) -> bool {
        self.len == self.paged_len
    }

    /// Adds recovered messages left on disk.
    fn push_run(&mut self, run: PagedRun) {
        let count = usize::try_from(run.count).unwrap_or(usize::MAX);
        self.len += count;
        self.paged_len += count;
        self.bytes += run.bytes;
        self.paged_bytes += run.bytes;
        self.paged.push_back(Paged::Run(run));
    }

    /// Accounts for paged messages that leave `paged` (to the head, or
    /// skipped): `count` messages, `bytes` of which are now in the head.
    fn unpage(&mut self, count: usize, bytes: u64) {
        self.paged_len = self.paged_len.saturating_sub(count);
        self.paged_bytes = self.paged_bytes.saturating_sub(bytes);
    }

    /// Accounts for paged messages that left without reaching the head.
    fn forget(&mut self, count: usize, bytes: u64) {
        self.unpage(count, bytes);
        self.len = self.len.saturating_sub(count);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Puts a returned message back in sequence order within its bucket.
    fn requeue(&mut self, priority: u8, entry: Entry) {
        self.len += 1;
        self.bytes += entry.message.body_size() as u64;
        let bucket = self.buckets.entry(priority).or_default();
        let at = bucket.partition_point(|e| e.seq < entry.seq);
        bucket.insert(at, entry);
    }

    fn front(&self) -> Option<&Entry> {
        self.buckets.values().rev().find_map(|b| b.front())
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self
            .buckets
            .values_mut()
            .rev()
            .find_map(|b| b.pop_front())?;
        self.len -= 1;
        self.bytes -= entry.message.body_size() as u64;
        Some(entry)
    }

    /// The oldest message of the lowest priority (what drop-head drops).
    fn pop_oldest(&mut self) -> Option<Entry> {
        let entry = self.buckets.values_mut().find_map(|b| b.pop_front())?;
        self.len -= 1;
        self.bytes -= entry.message.body_size() as u64;
        Some(entry)
    }

    /// The first `count` entries in delivery order, left in place.
    fn peek(&self, count: usize) -> Vec<&Entry> {
        self.buckets.values().rev().flatten().take(count).collect()
    }

    /// Empties the queue: the in-memory messages, and the stored ids of
    /// those waiting on disk.
    fn drain(&mut self) -> (Vec<Entry>, Vec<u64>) {
        self.len = 0;
        self.bytes = 0;
        self.paged_len = 0;
        self.paged_bytes = 0;
        let mut entries: Vec<Entry> = std::mem::take(&mut self.buckets)
            .into_values()
            .flatten()
            .collect();
        let mut ids = Vec::new();
        for paged in std::mem::take(&mut self.paged) {
            match paged {
                Paged::Entry(entry) => entries.push(entry),
                Paged::Run(run) => ids.extend(run.first_id..run.first_id + run.count),
            }
        }
        (entries, ids)
    }
}

#[derive(Debug)]
struct QueueState {
    ready: Ready,
    unacked: HashMap<u64, Entry>,
    consumers: Vec<ConsumerSpec>,
    next_consumer: usize,
    next_seq: u64,
    store: Option<QueueStore>,
    had_consumers: bool,
    last_used: Instant,
    deleted: bool,
}

/// A queue. Shared by the virtual host, the channels consuming from it and
/// the deliveries in flight; all mutable state is behind its own mutex.
#[derive(Debug)]
pub struct Queue {
    name: String,
    options: QueueOptions,
    args: QueueArgs,
    store_id: Option<String>,
    vhost: Weak<VirtualHost>,
    memory: Arc<ResourceMonitor>,
    state: Mutex<QueueState>,
    traffic: QueueTraffic,
    /// Set for a stream queue: the topic it is a view of.
    stream: Option<Stream>,
}

/// Messages a queue took and handed out since the broker started, for
/// metrics and the admin API's rates.
#[derive(Debug, Default)]
pub struct QueueTraffic {
    /// Messages enqueued.
    pub published: AtomicU64,
    /// Deliveries to consumers and `basic.get`.
    pub delivered: AtomicU64,
    /// Of those, deliveries of messages delivered before.
    pub redelivered: AtomicU64,
    /// Positive acknowledgements.
    pub acked: AtomicU64,
}

impl QueueTraffic {
    pub(crate) fn record_delivery(&self, redelivered: bool) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if redelivered {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A message taken by `basic.get`: its handle, the message, whether it was
/// delivered before, and how many ready messages remain.
pub type GetResult = (u64, Arc<Message>, bool, usize);

/// Wall-clock milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Queue {
    pub(crate) fn new(
        name: String,
        options: QueueOptions,
        args: QueueArgs,
        store: Option<(String, QueueStore)>,
        vhost: Weak<VirtualHost>,
        memory: Arc<ResourceMonitor>,
        stream: Option<Arc<crate::Topic>>,
    ) -> Arc<Queue> {
        let (store_id, store) = match store {
            Some((id, store)) => (Some(id), Some(store)),
            None => (None, None),
        };
        Arc::new(Queue {
            name,
            options,
            args,
            store_id,
            vhost,
            memory,
            traffic: QueueTraffic::default(),
            stream: stream.map(Stream::new),
            state: Mutex::new(QueueState {
                ready: Ready::default(),
                unacked: HashMap::new(),
                consumers: Vec::new(),
                next_consumer: 0,
                next_seq: 0,
                store,
                had_consumers: false,
                last_used: Instant::now(),
                deleted: false,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What went in and out of this queue.
    pub fn traffic(&self) -> &QueueTraffic {
        &self.traffic
    }

    /// Up to `count` ready messages in delivery order, with their redelivered
    /// flags, without taking them. For a stream: the oldest records its
    /// topic keeps, as a consumer starting at `first` would get them.
    /// Blocking when it reads from disk.
    pub fn peek(&self, count: usize) -> Vec<(Arc<Message>, bool)> {
        if let Some(stream) = &self.stream {
            return stream
                .peek(count)
                .into_iter()
                .map(|message| (Arc::new(message), false))
                .collect();
        }
        let mut state = self.state();
        self.page_in(&mut state);
        let mut out: Vec<(Arc<Message>, bool)> = state
            .ready
            .peek(count)
            .into_iter()
            .map(|entry| (Arc::clone(&entry.message), entry.redelivered))
            .collect();
        // Behind the head, read what waits on disk without moving it.
        for paged in &state.ready.paged {
            if out.len() >= count {
                break;
            }
            match paged {
                Paged::Entry(entry) => out.push((Arc::clone(&entry.message), entry.redelivered)),
                Paged::Run(run) => {
                    let Some(store) = state.store.as_ref() else {
                        break;
                    };
                    let want = run.count.min((count - out.len()) as u64);
                    match store.read(run.first_id, want, PAGE_IN_BYTES) {
                        Ok(read) => out.extend(read.into_iter().filter_map(|paged| {
                            let redelivered = run.redelivered || paged.delivered;
                            paged.message.map(|m| (Arc::new(m), redelivered))
                        })),
                        Err(error) => {
                            tracing::warn!(queue = %self.name, %error, "cannot read queued messages back from disk");
                            break;
                        }
                    }
                }
            }
        }
        out.truncate(count);
        out
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it was declared.
    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    /// Its arguments as Sluice reads them.
    pub fn args(&self) -> &QueueArgs {
        &self.args
    }

    /// Durable queues' storage id (their logs are named after it).
    pub(crate) fn store_id(&self) -> Option<&str> {
        self.store_id.as_deref()
    }

    /// For a stream queue, the topic it is a view of.
    pub fn stream_topic(&self) -> Option<&Arc<crate::Topic>> {
        self.stream.as_ref().map(Stream::topic)
    }

    /// Ready messages (for a stream: the records its topic keeps).
    pub fn message_count(&self) -> usize {
        match &self.stream {
            Some(stream) => stream.message_count(),
            None => self.state().ready.len,
        }
    }

    /// Ready messages kept on disk only, read back as consumers reach them.
    pub fn paged_out_count(&self) -> u64 {
        self.state()
            .ready
            .paged
            .iter()
            .map(|paged| match paged {
                Paged::Run(run) => run.count,
                Paged::Entry(_) => 0,
            })
            .sum()
    }

    /// Delivered and not yet settled.
    pub fn unacked_count(&self) -> usize {
        self.state().unacked.len()
    }

    /// Consumers attached.
    pub fn consumer_count(&self) -> usize {
        match &self.stream {
            Some(stream) => stream.consumer_count(),
            None => self.state().consumers.len(),
        }
    }

    fn not_for_streams(&self, operation: &str) -> MessagingError {
        MessagingError::NotImplemented(format!(
            "{operation} is not supported by stream queue '{}' in vhost '{}'",
            self.name,
            self.vhost_name()
        ))
    }

    /// Bytes the queue's logs take on disk (0 for transient queues).
    pub fn disk_bytes(&self) -> u64 {
        self.state()
            .store
            .as_ref()
            .map_or(0, QueueStore::size_bytes)
    }

    /// Whether the queue has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.state().deleted
    }

    fn effective_priority(&self, message: &Message) -> u8 {
        self.args
            .max_priority
            .map_or(0, |max| message.priority().min(max))
    }

    fn expiry_for(&self, message: &Message, now: i64) -> Option<i64> {
        let per_message = message.expiration_ms().ok().flatten();
        let ttl = match (self.args.message_ttl, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)))
    }

    /// Body bytes of ready messages this queue keeps in memory before
    /// newer persistent ones wait on disk only (unbounded for queues
    /// without a store and for priority queues, which are never paged).
    pub(crate) fn memory_budget(args: &QueueArgs, memory: &ResourceMonitor) -> u64 {
        if args.max_priority.is_some() {
            u64::MAX
        } else {
            memory.queue_budget()
        }
    }

    /// Puts recovered messages back (on open), in id order: those read into
    /// memory, then those left on disk.
    pub(crate) fn restore(&self, messages: Vec<RecoveredMessage>, paged: Vec<RecoveredRun>) {
        let mut state = self.state();
        for recovered in messages {
            let expires_at = self.expiry_for(&recovered.message, recovered.timestamp);
            let priority = self.effective_priority(&recovered.message);
            let seq = state.next_seq;
            state.next_seq += 1;
            state.ready.push_back(
                priority,
                Entry {
                    seq,
                    stored: Some(recovered.id),
                    _charge: self.memory.charge(recovered.message.body_size() as u64),
                    message: Arc::new(recovered.message),
                    redelivered: recovered.delivered,
                    expires_at,
                },
            );
        }
        for run in paged {
            let first_seq = state.next_seq;
            state.next_seq += run.count;
            state.ready.push_run(PagedRun {
                first_seq,
                first_id: run.first_id,
                count: run.count,
                bytes: run.bytes,
                redelivered: run.redelivered,
            });
        }
    }

    /// Brings messages waiting on disk into the head once it has run dry,
    /// about [`PAGE_IN_BYTES`] at a time; true when it moved any. A
    /// message that cannot be read back is settled with a warning, as on
    /// open; a failed read leaves them waiting for the next try.
    fn page_in(&self, state: &mut QueueState) -> bool {
        if !state.ready.head_is_empty() || state.ready.paged.is_empty() {
            return false;
        }
        // Over the memory watermark, a consumer already holding many
        // deliveries (no prefetch limit, slower than the disk) gets no more
        // from disk until it acknowledges some.
        if self.memory.memory_alarm() && state.unacked.len() >= PAGE_IN_UNACKED_CAP {
            return false;
        }
        let want = (PAGE_IN_BYTES as u64)
            .min(self.memory.queue_budget())
            .max(1);
        let mut loaded = 0u64;
        let mut skipped = Vec::new();
        while loaded < want {
            let Some(front) = state.ready.paged.pop_front() else {
                break;
            };
            let mut run = match front {
                Paged::Entry(entry) => {
                    let size = entry.message.body_size() as u64;
                    state.ready.unpage(1, size);
                    loaded += size.max(1);
                    state.ready.buckets.entry(0).or_default().push_back(entry);
                    continue;
                }
                Paged::Run(run) => run,
            };
            let Some(store) = state.store.as_ref() else {
                state.ready.forget(run.count as usize, run.bytes);
                continue;
            };
            let max_bytes = usize::try_from(want - loaded).unwrap_or(PAGE_IN_BYTES);
            let read = match store.read(run.first_id, run.count, max_bytes) {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(queue = %self.name, %error, "cannot read queued messages back from disk");
                    state.ready.paged.push_front(Paged::Run(run));
                    break;
                }
            };
            let end = run.first_id + run.count;
            let mut next = run.first_id;
            for paged in read {
                if paged.id < next || paged.id >= end {
                    continue;
                }
                skipped.extend(next..paged.id);
                next = paged.id + 1;
                let Some(message) = paged.message else {
                    skipped.push(paged.id);
                    continue;
                };
                let size = message.body_size() as u64;
                loaded += size.max(1);
                run.bytes = run.bytes.saturating_sub(size);
                state.ready.unpage(1, size);
                let entry = Entry {
                    seq: run.first_seq + (paged.id - run.first_id),
                    stored: Some(paged.id),
                    expires_at: self.expiry_for(&message, paged.timestamp),
                    redelivered: run.redelivered || paged.delivered,
                    _charge: self.memory.charge(size),
                    message: Arc::new(message),
                };
                state.ready.buckets.entry(0).or_default().push_back(entry);
            }
            if next == run.first_id {
                // Nothing came back: the log no longer holds them.
                skipped.extend(run.first_id..end);
                next = end;
            }
            let taken = next - run.first_id;
            run.first_id = next;
            run.first_seq += taken;
            run.count -= taken;
            if run.count > 0 {
                state.ready.paged.push_front(Paged::Run(run));
            } else {
                // Whatever was skipped leaves the byte count with its run.
                state.ready.forget(0, run.bytes);
            }
        }
        if !skipped.is_empty() {
            tracing::warn!(queue = %self.name, count = skipped.len(), first = skipped.first().copied().unwrap_or_default(), "skipping queued messages that cannot be read back");
            state.ready.forget(skipped.len(), 0);
            if let Some(store) = state.store.as_mut() {
                for id in &skipped {
                    store.settle(*id);
                }
            }
        }
        loaded > 0 || !skipped.is_empty()
    }

    /// Adds a message routed here.
    ///
    /// # Errors
    /// Storage failures of a durable queue.
    pub fn enqueue(
        self: &Arc<Self>,
        message: Arc<Message>,
    ) -> Result<EnqueueOutcome, MessagingError> {
        self.enqueue_from(message, None)
    }

    /// As [`Queue::enqueue`], for a message forwarded from a topic: a
    /// durable queue that already stored `source` (before a crash the
    /// forwarder's position did not survive) keeps the one copy.
    ///
    /// # Errors
    /// As [`Queue::enqueue`].
    pub fn enqueue_from(
        self: &Arc<Self>,
        message: Arc<Message>,
        source: Option<&Source>,
    ) -> Result<EnqueueOutcome, MessagingError> {
        if let Some(stream) = &self.stream {
            if self.is_deleted() {
                return Ok(EnqueueOutcome::default());
            }
            let sync = stream.append(&message)?;
            self.traffic.published.fetch_add(1, Ordering::Relaxed);
            return Ok(EnqueueOutcome {
                sync,
                ..EnqueueOutcome::default()
            });
        }
        let now = now_ms();
        let mut dead = Vec::new();
        let mut outcome = EnqueueOutcome::default();
        {
            let mut state = self.state();
            if state.deleted {
                return Ok(outcome);
            }
            if let (Some(source), Some(store), true) =
                (source, state.store.as_ref(), message.persistent())
                && store.has_source(source)
            {
                return Ok(outcome);
            }
            let expires_at = self.expiry_for(&message, now);
            if expires_at.is_some_and(|at| at <= now) && state.consumers.is_empty() {
                // RabbitMQ drops (or dead-letters) a message whose TTL is 0
                // when no consumer can take it at once.
                dead.push(DeadLetter {
                    message,
                    reason: DeathReason::Expired,
                });
                drop(state);
                self.dead_letter(dead);
                return Ok(outcome);
            }
            let size = message.body_size() as u64;
            let over = |ready: &Ready, extra_len: usize, extra_bytes: u64| {
                self.args
                    .max_length
                    .is_some_and(|max| (ready.len + extra_len) as u64 > max)
                    || self
                        .args
                        .max_length_bytes
                        .is_some_and(|max| ready.bytes + extra_bytes > max)
            };
            if over(&state.ready, 1, size) {
                match self.args.overflow {
                    Overflow::DropHead => {
                        while over(&state.ready, 1, size) {
                            self.page_in(&mut state);
                            let Some(entry) = state.ready.pop_oldest() else {
                                break;
                            };
                            settle_stored(&mut state, &entry);
                            dead.push(DeadLetter {
                                message: entry.message,
                                reason: DeathReason::MaxLen,
                            });
                        }
                        if over(&state.ready, 1, size) {
                            // Even alone it does not fit (a body over the byte limit).
                            dead.push(DeadLetter {
                                message,
                                reason: DeathReason::MaxLen,
                            });
                            drop(state);
                            self.dead_letter(dead);
                            return Ok(outcome);
                        }
                    }
                    Overflow::RejectPublish | Overflow::RejectPublishDlx => {
                        outcome.rejected = true;
                        if self.args.overflow == Overflow::RejectPublishDlx {
                            dead.push(DeadLetter {
                                message,
                                reason: DeathReason::MaxLen,
                            });
                        }
                        drop(state);
                        self.dead_letter(dead);
                        return Ok(outcome);
                    }
                }
            }
            let stored = match (state.store.as_mut(), message.persistent()) {
                (Some(store), true) => {
                    let (id, sync) = store.append(&message, source)?;
                    outcome.sync = sync;
                    Some(id)
                }
                _ => None,
            };
            let seq = state.next_seq;
            state.next_seq += 1;
            // A persistent message behind a full head (or behind others
            // already waiting) waits on disk only.
            match stored {
                Some(id)
                    if !state.ready.paged.is_empty()
                        || state.ready.head_bytes().saturating_add(size)
                            > Queue::memory_budget(&self.args, &self.memory) =>
                {
                    state.ready.push_paged(seq, id, size);
                }
                _ => {
                    let priority = self.effective_priority(&message);
                    state.ready.push_back(
                        priority,
                        Entry {
                            seq,
                            stored,
                            _charge: self.memory.charge(size),
                            message,
                            redelivered: false,
                            expires_at,
                        },
                    );
                }
            }
            self.traffic.published.fetch_add(1, Ordering::Relaxed);
        }
        self.dead_letter(dead);
        self.dispatch();
        Ok(outcome)
    }

    /// Pushes ready messages to consumers with credit, round robin among
    /// the highest-priority consumers that can take one.
    pub fn dispatch(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut state = self.state();
            let now = now_ms();
            self.drop_expired(&mut state, now, &mut dead);
            loop {
                if state.ready.len == 0 || state.consumers.is_empty() {
                    break;
                }
                self.page_in(&mut state);
                if state.ready.head_is_empty() {
                    break;
                }
                let Some(index) = pick_consumer(&mut state, self.args.single_active_consumer)
                else {
                    break;
                };
                let Some(entry) = state.ready.pop_front() else {
                    break;
                };
                if entry.expires_at.is_some_and(|at| at <= now) {
                    if let Some(consumer) = state.consumers.get(index) {
                        consumer.credit.release(1);
                    }
                    settle_stored(&mut state, &entry);
                    dead.push(DeadLetter {
                        message: entry.message,
                        reason: DeathReason::Expired,
                    });
                    continue;
                }
                let Some(consumer) = state.consumers.get(index) else {
                    break;
                };
                let no_ack = consumer.no_ack;
                let delivery = Delivery {
                    channel: consumer.channel,
                    queue: Arc::clone(self),
                    seq: entry.seq,
                    consumer_tag: Arc::clone(&consumer.tag),
                    message: Arc::clone(&entry.message),
                    redelivered: entry.redelivered,
                };
                if consumer
                    .sink
                    .send(ConsumerEvent::Deliver(delivery))
                    .is_err()
                {
                    // The channel is gone; its close will remove the consumer.
                    consumer.credit.release(1);
                    let priority = self.effective_priority(&entry.message);
                    state.ready.requeue(priority, entry);
                    state.consumers.remove(index);
                    continue;
                }
                self.traffic.record_delivery(entry.redelivered);
                if no_ack {
                    settle_stored(&mut state, &entry);
                } else {
                    mark_delivered(&mut state, &entry);
                    state.unacked.insert(entry.seq, entry);
                }
            }
            // Delivery marks alone wait for the next settlement or the
            // maintenance tick: writing them per delivery doubled the
            // writes of a busy queue.
            if state
                .store
                .as_ref()
                .is_some_and(QueueStore::has_pending_settlements)
                && let Err(error) = flush_store(&mut state)
            {
                tracing::warn!(queue = %self.name, %error, "cannot write settlements");
            }
        }
        self.dead_letter(dead);
    }

    /// `basic.get`: takes the next ready message, if any, with the number of
    /// messages left.
    ///
    /// # Errors
    /// Storage failures when `no_ack` settles a persistent message.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Result<Option<GetResult>, MessagingError> {
        if self.stream.is_some() {
            return Err(self.not_for_streams("basic.get"));
        }
        let mut dead = Vec::new();
        let result = {
            let mut state = self.state();
            state.last_used = Instant::now();
            self.drop_expired(&mut state, now_ms(), &mut dead);
            self.page_in(&mut state);
            let result = match state.ready.pop_front() {
                None => None,
                Some(entry) => {
                    let out = (entry.seq, Arc::clone(&entry.message), entry.redelivered);
                    self.traffic.record_delivery(entry.redelivered);
                    if no_ack {
                        settle_stored(&mut state, &entry);
                    } else {
                        mark_delivered(&mut state, &entry);
                        state.unacked.insert(entry.seq, entry);
                    }
                    Some((out.0, out.1, out.2, state.ready.len))
                }
            };
            flush_store(&mut state)?;
            result
        };
        self.dead_letter(dead);
        Ok(result)
    }

    /// Settles deliveries positively; what is written survives a crash of
    /// the broker process once this returns.
    ///
    /// # Errors
    /// Storage failures.
    pub fn ack(&self, seqs: &[u64]) -> Result<(), MessagingError> {
        if self.stream.is_some() {
            // Acknowledging a stream delivery only returns its credit.
            return Ok(());
        }
        let mut state = self.state();
        for seq in seqs {
            if let Some(entry) = state.unacked.remove(seq) {
                settle_stored(&mut state, &entry);
                self.traffic.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        flush_store(&mut state)?;
        Ok(())
    }

    /// Settles deliveries negatively: back to the queue (marked redelivered)
    /// or, without requeue, dead-lettered or dropped.
    ///
    /// # Errors
    /// Storage failures.
    pub fn reject(self: &Arc<Self>, seqs: &[u64], requeue: bool) -> Result<(), MessagingError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let mut dead = Vec::new();
        {
            let mut state = self.state();
            for seq in seqs {
                let Some(mut entry) = state.unacked.remove(seq) else {
                    continue;
                };
                if requeue && !state.deleted {
                    entry.redelivered = true;
                    let priority = self.effective_priority(&entry.message);
                    state.ready.requeue(priority, entry);
                } else {
                    settle_stored(&mut state, &entry);
                    dead.push(DeadLetter {
                        message: entry.message,
                        reason: DeathReason::Rejected,
                    });
                }
            }
            flush_store(&mut state)?;
        }
        self.dead_letter(dead);
        if requeue {
            self.dispatch();
        }
        Ok(())
    }

    /// Registers a consumer.
    ///
    /// # Errors
    /// [`MessagingError::AccessRefused`] when an exclusive consumer holds the
    /// queue, or an exclusive one is asked for while others consume.
    pub fn add_consumer(self: &Arc<Self>, consumer: ConsumerSpec) -> Result<(), MessagingError> {
        if let Some(stream) = &self.stream {
            if self.is_deleted() {
                return Err(MessagingError::NotFound(format!(
                    "no queue '{}' in vhost '{}'",
                    self.name,
                    self.vhost_name()
                )));
            }
            let start = consumer.stream_start.unwrap_or(StreamStart::Next);
            return stream.add_consumer(self, consumer, start);
        }
        {
            let mut state = self.state();
            if state.deleted {
                return Err(MessagingError::NotFound(format!(
                    "no queue '{}' in vhost '{}'",
                    self.name,
                    self.vhost_name()
                )));
            }
            if state.consumers.iter().any(|c| c.exclusive)
                || (consumer.exclusive && !state.consumers.is_empty())
            {
                return Err(MessagingError::AccessRefused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name,
                    self.vhost_name()
                )));
            }
            // Highest priority first; equal priorities keep arrival order.
            let at = state
                .consumers
                .partition_point(|c| c.priority >= consumer.priority);
            state.consumers.insert(at, consumer);
            state.had_consumers = true;
            state.last_used = Instant::now();
        }
        self.dispatch();
        Ok(())
    }

    /// Removes a consumer; true when the queue is auto-delete and this was
    /// its last consumer (the caller deletes it).
    pub fn remove_consumer(self: &Arc<Self>, channel: u64, tag: &str) -> bool {
        if let Some(stream) = &self.stream {
            stream.remove_consumer(channel, tag);
            return false;
        }
        let last = {
            let mut state = self.state();
            let before = state.consumers.len();
            state
                .consumers
                .retain(|c| !(c.channel == channel && &*c.tag == tag));
            state.last_used = Instant::now();
            before != state.consumers.len() && state.consumers.is_empty()
        };
        // With a single active consumer, the next one takes over.
        self.dispatch();
        last && self.options.auto_delete
    }

    /// Requeues deliveries of a closed channel (or `basic.recover`).
    ///
    /// # Errors
    /// Storage failures.
    pub fn requeue(self: &Arc<Self>, seqs: &[u64]) -> Result<(), MessagingError> {
        self.reject(seqs, true)
    }

    /// `queue.purge`: drops every ready message; returns how many.
    ///
    /// # Errors
    /// Storage failures.
    pub fn purge(&self) -> Result<usize, MessagingError> {
        if self.stream.is_some() {
            return Err(self.not_for_streams("queue.purge"));
        }
        let mut state = self.state();
        let (entries, paged) = state.ready.drain();
        for entry in &entries {
            settle_stored(&mut state, entry);
        }
        if let Some(store) = state.store.as_mut() {
            for id in &paged {
                store.settle(*id);
            }
        }
        flush_store(&mut state)?;
        Ok(entries.len() + paged.len())
    }

    /// Marks the queue deleted and tells its consumers; returns the number
    /// of ready messages it held.
    pub(crate) fn mark_deleted(&self) -> usize {
        if let Some(stream) = &self.stream {
            stream.stop();
        }
        let mut state = self.state();
        state.deleted = true;
        for consumer in state.consumers.drain(..) {
            let _ = consumer.sink.send(ConsumerEvent::Cancelled {
                channel: consumer.channel,
                consumer_tag: consumer.tag,
            });
        }
        let count = state.ready.len;
        state.ready.drain();
        state.unacked.clear();
        state.store = None;
        count
    }

    /// Writes pending settlements, expires heads, and tells whether an
    /// `x-expires` queue has been unused long enough to be deleted.
    pub(crate) fn maintain(self: &Arc<Self>) -> bool {
        if let Some(stream) = &self.stream {
            stream.flush();
            return false;
        }
        {
            let mut state = self.state();
            if let Some(store) = state.store.as_mut()
                && let Err(error) = store.flush()
            {
                tracing::warn!(queue = %self.name, %error, "cannot write settlements");
            }
        }
        self.dispatch();
        let state = self.state();
        self.args.expires.is_some_and(|ms| {
            state.consumers.is_empty()
                && !state.deleted
                && state.last_used.elapsed() >= Duration::from_millis(ms)
        })
    }

    /// Marks the queue as used (redeclared), for `x-expires`.
    pub(crate) fn touch(&self) {
        self.state().last_used = Instant::now();
    }

    /// Whether an exclusive queue may be used by `connection`.
    pub fn usable_by(&self, connection: u64) -> bool {
        self.options
            .exclusive_owner
            .is_none_or(|owner| owner == connection)
    }

    fn vhost_name(&self) -> String {
        self.vhost
            .upgrade()
            .map_or_else(|| "/".to_owned(), |v| v.name().to_owned())
    }

    fn dead_letter(&self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        let Some(exchange) = self.args.dead_letter_exchange.as_deref() else {
            return;
        };
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        for letter in dead {
            vhost.dead_letter(
                &self.name,
                exchange,
                self.args.dead_letter_routing_key.as_deref(),
                letter,
            );
        }
    }

    /// Writes what is pending and marks the store closed cleanly (at
    /// shutdown, once no connection can reach the queue).
    pub(crate) fn close_store(&self) -> Result<(), CoreError> {
        if let Some(store) = self.state().store.as_mut() {
            store.close()?;
        }
        Ok(())
    }
}

fn settle_stored(state: &mut QueueState, entry: &Entry) {
    if let (Some(store), Some(id)) = (state.store.as_mut(), entry.stored) {
        store.settle(id);
    }
}

fn mark_delivered(state: &mut QueueState, entry: &Entry) {
    if let (Some(store), Some(id)) = (state.store.as_mut(), entry.stored) {
        store.mark_delivered(id);
    }
}

/// Writes what the operation settled or delivered (unsynced).
fn flush_store(state: &mut QueueState) -> Result<(), CoreError> {
    match state.store.as_mut() {
        Some(store) => store.flush(),
        None => Ok(()),
    }
}

impl Queue {
    /// Dead messages at the head of each bucket leave (RabbitMQ expires only
    /// from the head, so a long-lived message can shield one behind it).
    /// Reads at most [`EXPIRE_PAGE_INS`] pages back from disk per call; the
    /// maintenance tick carries on with the rest.
    fn drop_expired(&self, state: &mut QueueState, now: i64, dead: &mut Vec<DeadLetter>) {
        let mut page_ins = 0;
        loop {
            if page_ins < EXPIRE_PAGE_INS && self.page_in(state) {
                page_ins += 1;
            }
            let expired = state
                .ready
                .front()
                .is_some_and(|e| e.expires_at.is_some_and(|at| at <= now));
            if !expired {
                break;
            }
            let Some(entry) = state.ready.pop_front() else {
                break;
            };
            settle_stored(state, &entry);
            dead.push(DeadLetter {
                message: entry.message,
                reason: DeathReason::Expired,
            });
        }
    }
}

/// Index of the consumer to deliver to next, having taken one unit of its
/// credit; `None` when no consumer can take a message.
fn pick_consumer(state: &mut QueueState, single_active: bool) -> Option<usize> {
    if single_active {
        let consumer = state.consumers.first()?;
        return consumer.credit.try_acquire().then_some(0);
    }
    let count = state.consumers.len();
    // Consumers are sorted by priority; try each priority level in turn,
    // round robin within it.
    let mut level_start = 0;
    while level_start < count {
        let priority = state.consumers.get(level_start)?.priority;
        let level_end = state
            .consumers
            .iter()
            .skip(level_start)
            .position(|c| c.priority != priority)
            .map_or(count, |p| level_start + p);
        let width = level_end - level_start;
        let offset = state.next_consumer % width;
        for i in 0..width {
            let index = level_start + (offset + i) % width;
            if state.consumers.get(index)?.credit.try_acquire() {
                state.next_consumer = (offset + i + 1) % width;
                return Some(index);
            }
        }
        level_start = level_end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_respects_own_and_parent_limits() {
        let channel = Credit::new(3, None);
        let a = Credit::new(2, Some(Arc::clone(&channel)));
        let b = Credit::new(0, Some(Arc::clone(&channel)));
        assert!(a.try_acquire());
        assert!(a.try_acquire());
        assert!(!a.try_acquire(), "consumer limit");
        assert!(b.try_acquire());
        assert!(!b.try_acquire(), "channel limit");
        a.release(1);
        assert!(b.try_acquire());
        channel.set_paused(true);
        a.release(1);
        assert!(!a.try_acquire(), "paused channel");
    }

    #[test]
    fn queue_arguments_are_checked_with_rabbitmq_errors() {
        let mut table = FieldTable::default();
        table.insert("x-max-length".into(), AMQPValue::LongInt(-1));
        let error = QueueArgs::parse("q", "/", &table).expect_err("negative");
        assert_eq!(
            error.to_string(),
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        let mut table = FieldTable::default();
        table.insert("x-max-priority".into(), AMQPValue::LongInt(256));
        assert!(QueueArgs::parse("q", "/", &table).is_err());
        let mut table = FieldTable::default();
        table.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        table.insert("x-message-ttl".into(), AMQPValue::ShortShortUInt(5));
        let args = QueueArgs::parse("q", "/", &table).expect("valid");
        assert_eq!(args.overflow, Overflow::RejectPublish);
        assert_eq!(args.message_ttl, Some(5));
    }

    #[test]
    fn refused_arguments_read_in_plain_words_off_the_wire() {
        let refused = |name: &str, value: AMQPValue| {
            let mut table = FieldTable::default();
            table.insert(name.into(), value);
            QueueArgs::check(&table).expect_err("refused")
        };
        let negative = refused("x-max-length", AMQPValue::LongInt(-1));
        assert_eq!(negative.argument, "x-max-length");
        assert_eq!(
            negative.to_string(),
            "x-max-length must be an integer of 0 or more, got -1"
        );
        let text = refused("x-message-ttl", AMQPValue::LongString("soon".into()));
        assert_eq!(
            text.to_string(),
            "x-message-ttl must be an integer of 0 or more, got a string"
        );
        assert_eq!(
            text.rabbitmq_text("q", "/"),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {unacceptable_type,longstr}"
        );
        let overflow = refused("x-overflow", AMQPValue::LongString("drop-tail".into()));
        assert_eq!(
            overflow.to_string(),
            "x-overflow must be drop-head, reject-publish or reject-publish-dlx, got \"drop-tail\""
        );
        let priority = refused("x-max-priority", AMQPValue::LongInt(300));
        assert_eq!(
            priority.to_string(),
            "x-max-priority must be at most 255, got 300"
        );
        for error in [&negative, &text, &overflow, &priority] {
            assert!(!error.to_string().contains('{'), "{error}");
        }
    }
}
