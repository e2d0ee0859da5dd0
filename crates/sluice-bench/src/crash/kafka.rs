//! The Kafka side of the crash loop: an idempotent acks=all producer whose
//! every acknowledgement (partition, offset) is recorded, a churn producer
//! that keeps retention busy, a consumer group committing synchronously,
//! and the final read that checks every record.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::payload;

/// What the Kafka clients were told by the broker.
#[derive(Debug, Default)]
pub(crate) struct KafkaLedger {
    /// Sequence → (partition, offset) of every acknowledged record.
    pub(crate) acked: HashMap<u64, (i32, i64)>,
    /// Delivery errors by name (retriable ones are retried by librdkafka
    /// and reach here only when a record gives up).
    pub(crate) errors: BTreeMap<String, u64>,
    /// Highest offset per partition whose synchronous commit succeeded.
    pub(crate) commits: HashMap<i32, i64>,
    pub(crate) commits_acknowledged: u64,
}

/// Producer id of the verified producer in the payload header.
pub(crate) const VERIFIED: u32 = 1;
/// Producer id of the churn producer.
const CHURN: u32 = 2;

#[derive(Clone)]
struct Recorder {
    ledger: Option<Arc<Mutex<KafkaLedger>>>,
    size: usize,
}

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(message) => {
                if let Some(checked) = message.payload().and_then(|p| payload::check(p, self.size))
                {
                    ledger
                        .acked
                        .insert(checked.sequence, (message.partition(), message.offset()));
                }
            }
            Err((error, _)) => {
                *ledger.errors.entry(error_name(error)).or_default() += 1;
            }
        }
    }
}

fn error_name(error: &KafkaError) -> String {
    error
        .rdkafka_error_code()
        .map_or_else(|| error.to_string(), |code| format!("{code:?}"))
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("log_level", "3");
    config
}

/// Creates the verified topic and the churn topic (small retention, so
/// segments are deleted all through the run).
pub(crate) fn create_topics(
    bootstrap: &str,
    topic: &str,
    churn: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client(bootstrap).create().context("admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let topics = [
        NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(churn, 1, TopicReplication::Fixed(1))
            .set("retention.bytes", "131072")
            .set("segment.bytes", "32768"),
    ];
    let results = runtime
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .context("CreateTopics")?;
    for result in results {
        if let Err((name, code)) = result {
            bail!("cannot create topic {name}: {code:?}");
        }
    }
    Ok(())
}

/// One producer thread's plan.
pub(crate) struct ProducePlan {
    pub(crate) bootstrap: String,
    pub(crate) topic: String,
    pub(crate) size: usize,
    /// Messages per second.
    pub(crate) rate: u64,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) sent: Arc<AtomicU64>,
}

/// Produces numbered records until `stop`, then waits for every delivery
/// report. The verified producer (`ledger` given) is idempotent with
/// acks=all and never gives a record up within a run; the churn producer
/// uses acks=1. Returns the producer's fatal error, if it had one.
pub(crate) fn produce(
    plan: &ProducePlan,
    ledger: Option<Arc<Mutex<KafkaLedger>>>,
) -> anyhow::Result<Option<String>> {
    let verified = ledger.is_some();
    let mut config = client(&plan.bootstrap);
    config
        .set("linger.ms", "2")
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "500");
    if verified {
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "300000");
    } else {
        config.set("acks", "1").set("message.timeout.ms", "30000");
    }
    let producer: ThreadedProducer<Recorder> = config
        .create_with_context(Recorder {
            ledger,
            size: plan.size,
        })
        .context("producer")?;
    let producer_id = if verified { VERIFIED } else { CHURN };
    let started = Instant::now();
    let mut sequence = 0u64;
    while !plan.stop.load(Ordering::Relaxed) {
        let due = Duration::from_secs_f64(sequence as f64 / plan.rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait.min(Duration::from_millis(50)));
            continue;
        }
        let body = payload::build(producer_id, sequence, plan.size);
        match producer.send::<(), _>(BaseRecord::to(&plan.topic).payload(&body)) {
            Ok(()) => {
                sequence += 1;
                plan.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((error, _)) => {
                if let Some((_, reason)) = producer.client().fatal_error() {
                    note(&format!(
                        "the producer failed fatally after {sequence} records: {reason}"
                    ));
                    return Ok(Some(reason));
                }
                note(&format!("produce: {error}"));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    // Records still queued are retried until acknowledged (the broker is
    // up again by now).
    let _ = producer.flush(Duration::from_secs(120));
    Ok(producer.client().fatal_error().map(|(_, reason)| reason))
}

fn note(line: &str) {
    eprintln!("crash-loop: {line}");
}

/// A consumer-group member that commits its position synchronously every
/// 200 ms and records each commit the broker acknowledged.
pub(crate) fn group_member(
    bootstrap: &str,
    topic: &str,
    group: &str,
    stop: &AtomicBool,
    ledger: &Mutex<KafkaLedger>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .context("group consumer")?;
    consumer.subscribe(&[topic]).context("subscribe")?;
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let _ = consumer.poll(Duration::from_millis(100));
        if last_commit.elapsed() < Duration::from_millis(200) {
            continue;
        }
        last_commit = Instant::now();
        let Ok(positions) = consumer.position() else {
            continue;
        };
        let mut commit = TopicPartitionList::new();
        for element in positions.elements() {
            if let Offset::Offset(offset) = element.offset() {
                let _ =
                    commit.add_partition_offset(topic, element.partition(), Offset::Offset(offset));
            }
        }
        if commit.count() == 0 {
            continue;
        }
        if consumer.commit(&commit, CommitMode::Sync).is_ok() {
            let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
            ledger.commits_acknowledged += 1;
            for element in commit.elements() {
                if let Offset::Offset(offset) = element.offset() {
                    let highest = ledger.commits.entry(element.partition()).or_insert(offset);
                    *highest = (*highest).max(offset);
                }
            }
        }
    }
    Ok(())
}

/// The group's committed offsets, asked with OffsetFetch (retried while
/// the broker is still loading them).
pub(crate) fn committed(
    bootstrap: &str,
    topic: &str,
    group: &str,
    partitions: i32,
) -> anyhow::Result<HashMap<i32, i64>> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("offset reader")?;
    let mut wanted = TopicPartitionList::new();
    for partition in 0..partitions {
        wanted.add_partition(topic, partition);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.committed_offsets(wanted.clone(), Duration::from_secs(5)) {
            Ok(list) => {
                return Ok(list
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(offset) => Some((e.partition(), offset)),
                        _ => None,
                    })
                    .collect());
            }
            Err(error) if Instant::now() < deadline => {
                note(&format!("OffsetFetch: {error}; retrying"));
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => return Err(error).context("OffsetFetch"),
        }
    }
}

/// One record as read back at the end.
pub(crate) struct ReadRecord {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// `None` when the payload failed its check.
    pub(crate) checked: Option<payload::Checked>,
}

/// Reads every partition of `topic` from its log start to its high
/// watermark; also returns the log start per partition.
pub(crate) fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    size: usize,
) -> anyhow::Result<(Vec<ReadRecord>, HashMap<i32, i64>)> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", "crash-loop-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("reader")?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    let mut starts = HashMap::new();
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}/{partition}"))?;
        starts.insert(partition, low);
        if high > low {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .context("assign")?;
        }
    }
    consumer.assign(&assignment).context("assign")?;
    let mut records = Vec::new();
    let mut next: HashMap<i32, i64> = starts.clone();
    let deadline = Instant::now() + Duration::from_secs(180);
    while ends
        .iter()
        .any(|(p, end)| next.get(p).copied().unwrap_or(0) < *end)
    {
        if Instant::now() > deadline {
            bail!("reading {topic} back did not finish within 180 s");
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.context("fetch")?;
        records.push(ReadRecord {
            partition: message.partition(),
            offset: message.offset(),
            checked: message.payload().and_then(|p| payload::check(p, size)),
        });
        next.insert(message.partition(), message.offset() + 1);
    }
    Ok((records, starts))
}
