//! The Kafka workload: producers and consumers through librdkafka.
//!
//! Consumers are assigned the topic's partitions (no group, so a rebalance
//! never pauses a measurement) and start before the producers. Producers
//! send numbered messages (see `payload.rs`) as fast as they can, or at a
//! fixed total rate; every consumed message is checked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;

use crate::payload;
use crate::process;
use crate::report::{Report, Run};
use crate::seen::{Progress, Seen, Sent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all")]
    All,
}

impl Acks {
    fn as_config(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

/// `sluice-bench kafka`: one workload against one Kafka-compatible broker.
#[derive(Debug, Args)]
pub(crate) struct KafkaArgs {
    /// Bootstrap address of the broker.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic to use; a fresh name is made up when not given.
    #[arg(long)]
    topic: Option<String>,
    /// Partitions of the topic created for the run.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Replicas of each partition of the topic created for the run (a
    /// cluster's brokers only).
    #[arg(long, default_value_t = 1)]
    replication: i32,
    #[arg(long, default_value_t = 1)]
    producers: u32,
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Message size in bytes (at least 20, the checked header).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages to send in total (split across producers).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Total send rate in messages per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, value_enum, default_value = "all")]
    acks: Acks,
    /// Producer linger.ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Producer batch.size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    batch_size: u64,
    /// Producer compression.type (none, gzip, snappy, lz4, zstd).
    #[arg(long, default_value = "none")]
    compression: String,
    /// Send keyed messages (key = sequence modulo 1000) instead of unkeyed.
    #[arg(long)]
    keyed: bool,
    /// Enable the idempotent producer.
    #[arg(long)]
    idempotent: bool,
    /// Produce in transactions of this many messages each (a transactional
    /// producer, idempotent too); 0: no transactions.
    #[arg(long, default_value_t = 0)]
    transaction_messages: u64,
    /// Consumer fetch.wait.max.ms; librdkafka's default when not given.
    #[arg(long)]
    fetch_wait_max_ms: Option<u64>,
    /// Pid of the broker, to report its CPU time and memory.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Give up waiting for consumers after this many seconds without progress.
    #[arg(long, default_value_t = 20)]
    drain_timeout_s: u64,
    /// Extra librdkafka producer setting, KEY=VALUE (repeatable).
    #[arg(long = "producer-set", value_name = "KEY=VALUE")]
    producer_set: Vec<String>,
    /// Extra librdkafka consumer setting, KEY=VALUE (repeatable).
    #[arg(long = "consumer-set", value_name = "KEY=VALUE")]
    consumer_set: Vec<String>,
    /// Start consuming only once everything is produced, so the consume
    /// rate is measured alone (end-to-end latency then includes the wait).
    #[arg(long)]
    consume_after_produce: bool,
    /// Print progress to stderr every this many seconds (0: never).
    #[arg(long, default_value_t = 5)]
    progress_s: u64,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone)]
struct DeliveryContext(Arc<Sent>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self.0.acknowledge(),
            Err((err, _)) => self.0.error(err),
        }
    }
}

fn create_topic(args: &KafkaArgs, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .create()
        .context("admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime for the admin client")?;
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(
                topic,
                args.partitions,
                TopicReplication::Fixed(args.replication),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .context("create topic")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Applies KEY=VALUE settings given on the command line.
fn apply(config: &mut ClientConfig, settings: &[String]) -> anyhow::Result<()> {
    for setting in settings {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("a client setting must be KEY=VALUE, got {setting:?}");
        };
        config.set(key, value);
    }
    Ok(())
}

/// Starts the consumers, each assigned a share of the partitions.
fn start_consumers(
    args: &KafkaArgs,
    topic: &str,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Seen>>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut consumer_threads = Vec::new();
    for index in 0..args.consumers.max(1) {
        let partitions: Vec<i32> = (0..args.partitions)
            .filter(|p| u32::try_from(*p).unwrap_or(0) % args.consumers.max(1) == index)
            .collect();
        if partitions.is_empty() {
            continue;
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.bootstrap)
            .set("group.id", "sluice-bench")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // librdkafka stops fetching once its queue holds this many
            // messages and waits fetch.queue.backoff.ms before the next
            // fetch; the default (100,000) throttles small-message runs to
            // the tool's own pace, not the broker's.
            .set("queued.min.messages", "1000000");
        if let Some(wait) = args.fetch_wait_max_ms {
            config.set("fetch.wait.max.ms", wait.to_string());
        }
        apply(&mut config, &args.consumer_set)?;
        let consumer: BaseConsumer = config.create().context("consumer")?;
        let mut assignment = TopicPartitionList::new();
        for partition in &partitions {
            assignment
                .add_partition_offset(topic, *partition, Offset::Beginning)
                .context("assignment")?;
        }
        consumer.assign(&assignment).context("assign partitions")?;
        let stop = Arc::clone(stop);
        let seen = Arc::clone(seen);
        let size = args.size;
        consumer_threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                if let Ok(message) = message {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    seen.record(message.partition(), message.payload(), size);
                }
            }
        }));
    }

    Ok(consumer_threads)
}

/// Commits the open transaction once every message is delivered.
/// rust-rdkafka's commit flushes by polling for up to 100 ms at a time on
/// the calling thread, while the producer's own thread takes the events it
/// waits for, so every commit would wait ~100 ms: the tool, not the broker,
/// would be measured. Sending what lingers and waiting here for the
/// in-flight count (which the polling thread brings down) first leaves
/// nothing for that flush.
fn commit(producer: &ThreadedProducer<DeliveryContext>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        // A flush without waiting sends what lingers at once, as the
        // commit's own flush would.
        let _ = producer.flush(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(200));
    }
    producer
        .commit_transaction(Duration::from_secs(60))
        .context("commit_transaction")
}

pub(crate) fn run(args: &KafkaArgs) -> anyhow::Result<Report> {
    if args.size < payload::HEADER {
        bail!("--size must be at least {} bytes", payload::HEADER);
    }
    let topic = args.topic.clone().unwrap_or_else(|| {
        format!(
            "bench-{}-{}",
            std::process::id(),
            payload::now_ns() ^ u64::from(std::process::id())
        )
    });
    create_topic(args, &topic)?;

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::new()?));
    let mut consumer_threads = Vec::new();
    if !args.consume_after_produce {
        consumer_threads = start_consumers(args, &topic, &stop, &seen)?;
        // Let the consumers connect and issue their first fetch.
        std::thread::sleep(Duration::from_secs(1));
    }

    let deliveries = Arc::new(Sent::default());
    let broker_before = args.broker_pid.and_then(process::sample);
    let started = Instant::now();
    let per_producer = args.count / u64::from(args.producers.max(1));
    let progress = Progress::start(
        Duration::from_secs(if args.json { 0 } else { args.progress_s }),
        per_producer * u64::from(args.producers.max(1)),
        Arc::clone(&deliveries.acknowledged),
        Arc::clone(&seen),
    );
    let mut producer_threads = Vec::new();
    for producer_index in 0..args.producers.max(1) {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.bootstrap)
            .set("acks", args.acks.as_config())
            .set("linger.ms", args.linger_ms.to_string())
            .set("batch.size", args.batch_size.to_string())
            .set("compression.type", &args.compression)
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "2097151")
            .set(
                "enable.idempotence",
                if args.idempotent || args.transaction_messages > 0 {
                    "true"
                } else {
                    "false"
                },
            );
        let transaction = args.transaction_messages;
        if transaction > 0 {
            config.set(
                "transactional.id",
                format!("sluice-bench-{}-{producer_index}", std::process::id()),
            );
        }
        apply(&mut config, &args.producer_set)?;
        let producer: ThreadedProducer<DeliveryContext> = config
            .create_with_context(DeliveryContext(Arc::clone(&deliveries)))
            .context("producer")?;
        if transaction > 0 {
            producer
                .init_transactions(Duration::from_secs(30))
                .context("init_transactions")?;
        }
        let topic = topic.clone();
        let size = args.size;
        let keyed = args.keyed;
        let interval = (args.rate > 0)
            .then(|| Duration::from_secs_f64(f64::from(args.producers.max(1)) / args.rate as f64));
        producer_threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let start = Instant::now();
            for sequence in 0..per_producer {
                if transaction > 0 && sequence % transaction == 0 {
                    if sequence > 0 {
                        commit(&producer)?;
                    }
                    producer.begin_transaction().context("begin_transaction")?;
                }
                if let Some(interval) = interval {
                    let due = start + interval.mul_f64(sequence as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let mut bytes = payload::build(producer_index, sequence, size);
                let key = (sequence % 1000).to_string();
                loop {
                    let record = BaseRecord::to(&topic).payload(&bytes);
                    let record = if keyed { record.key(&key) } else { record };
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            std::thread::sleep(Duration::from_micros(200));
                            // Resend with a fresh timestamp: the wait is not latency.
                            bytes = payload::build(producer_index, sequence, size);
                        }
                        Err((err, _)) => bail!("send failed: {err}"),
                    }
                }
            }
            if transaction > 0 && per_producer > 0 {
                commit(&producer)?;
            }
            producer
                .flush(Duration::from_secs(60))
                .context("flush producer")?;
            Ok(())
        }));
    }
    for thread in producer_threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    }
    let produced_at = started.elapsed();
    let (acknowledged, produce_errors) = deliveries.counts();

    let consume_started = if args.consume_after_produce {
        let at = Instant::now();
        seen.lock().unwrap_or_else(|e| e.into_inner()).last_at = at;
        consumer_threads = start_consumers(args, &topic, &stop, &seen)?;
        at
    } else {
        started
    };

    // Wait until everything acknowledged is consumed, or progress stops.
    let drain = Duration::from_secs(args.drain_timeout_s);
    loop {
        let (consumed, idle) = {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            (seen.consumed, seen.last_at.elapsed())
        };
        if consumed >= acknowledged || idle > drain {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let consumed_at = started.elapsed();
    let consume_time = consume_started.elapsed();
    drop(progress);
    stop.store(true, Ordering::Relaxed);
    for thread in consumer_threads {
        let _ = thread.join();
    }
    let broker_after = args.broker_pid.and_then(process::sample);
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    deliveries.print_first_error();
    let broker = process::usage(
        args.broker_pid,
        broker_before,
        broker_after,
        consumed_at.as_secs_f64(),
    );
    Ok(Report::from_run(Run {
        protocol: "kafka",
        workload: json!({
            "bootstrap": args.bootstrap,
            "topic": topic,
            "partitions": args.partitions,
            "producers": args.producers,
            "consumers": args.consumers,
            "size": args.size,
            "count": per_producer * u64::from(args.producers.max(1)),
            "rate": args.rate,
            "acks": args.acks.as_config(),
            "linger_ms": args.linger_ms,
            "batch_size": args.batch_size,
            "compression": args.compression,
            "keyed": args.keyed,
            "idempotent": args.idempotent,
            "transaction_messages": args.transaction_messages,
            "consume_after_produce": args.consume_after_produce,
            "producer_set": args.producer_set,
            "consumer_set": args.consumer_set,
        }),
        size: args.size,
        seen: &seen,
        acknowledged,
        produce_errors,
        producing: produced_at,
        consuming: consume_time,
        total: consumed_at,
        broker,
        json_only: args.json,
    }))
}
