//! The AMQP 0-9-1 workload: publishers and consumers through lapin.
//!
//! Each run declares its own queues (durable when `--persistent`), starts
//! the consumers, then the publishers, which publish numbered messages (see
//! `payload.rs`) to the default exchange with the queue's name as routing
//! key: as fast as the confirm window allows, or at a fixed total rate.
//! Publisher `p` uses queue `p % queues`, consumer `c` queue `c % queues`.
//! Every consumed message is checked; the queues are deleted at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;

use crate::payload;
use crate::process;
use crate::report::{Report, Run};
use crate::seen::{Progress, Seen, Sent};

/// `sluice-bench amqp`: one workload against one AMQP 0-9-1 broker.
#[derive(Debug, Args)]
pub(crate) struct AmqpArgs {
    /// Broker URL (user, password and virtual host included).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Consumers connect here instead (another node of a cluster).
    #[arg(long)]
    consumer_url: Option<String>,
    /// `classic` or `quorum` (`x-queue-type`; quorum queues are durable).
    #[arg(long, default_value = "classic", value_parser = ["classic", "quorum"])]
    queue_type: String,
    /// Queues to spread publishers and consumers over.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// Use this queue (with `--queues 1`), declared beforehand or here,
    /// instead of one named for the run; it is not deleted afterwards.
    #[arg(long)]
    queue: Option<String>,
    #[arg(long, default_value_t = 1)]
    producers: u32,
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Message size in bytes (at least 20, the checked header).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages to publish in total (split across publishers).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Total publish rate in messages per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Durable queues and persistent messages (delivery mode 2).
    #[arg(long)]
    persistent: bool,
    /// Publisher confirms, with `--confirm-window` outstanding at most.
    #[arg(long)]
    confirms: bool,
    #[arg(long, default_value_t = 1000)]
    confirm_window: usize,
    /// Consumer prefetch (basic.qos).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Acknowledge every N deliveries with `multiple` (at most half the prefetch).
    #[arg(long, default_value_t = 100)]
    ack_every: u64,
    /// Consume without acknowledgements (auto-ack).
    #[arg(long)]
    no_ack: bool,
    /// Start consuming only once everything is published (and confirmed),
    /// so that the queues hold the whole run as a backlog first.
    #[arg(long)]
    consume_after_produce: bool,
    /// Pid of the broker, to report its CPU time and memory.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Give up waiting for consumers after this many seconds without progress.
    #[arg(long, default_value_t = 20)]
    drain_timeout_s: u64,
    /// Print progress to stderr every this many seconds (0: never).
    #[arg(long, default_value_t = 5)]
    progress_s: u64,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

fn queue_name(args: &AmqpArgs, run: &str, index: u32) -> String {
    match &args.queue {
        Some(queue) => queue.clone(),
        None => format!("{run}-{index}"),
    }
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

async fn declare_queues(args: &AmqpArgs, run: &str) -> anyhow::Result<()> {
    let connection = connect(&args.url).await?;
    let channel = connection.create_channel().await.context("channel")?;
    let mut arguments = FieldTable::default();
    if args.queue_type != "classic" {
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString(args.queue_type.clone().into()),
        );
    }
    for index in 0..args.queues.max(1) {
        channel
            .queue_declare(
                queue_name(args, run, index).into(),
                QueueDeclareOptions {
                    durable: args.persistent || args.queue_type == "quorum",
                    ..QueueDeclareOptions::default()
                },
                arguments.clone(),
            )
            .await
            .context("queue.declare")?;
    }
    let _ = connection.close(200, "declared".into()).await;
    Ok(())
}

async fn delete_queues(args: &AmqpArgs, run: &str) -> anyhow::Result<()> {
    if args.queue.is_some() {
        return Ok(());
    }
    let connection = connect(&args.url).await?;
    let channel = connection.create_channel().await.context("channel")?;
    for index in 0..args.queues.max(1) {
        channel
            .queue_delete(
                queue_name(args, run, index).into(),
                QueueDeleteOptions::default(),
            )
            .await
            .context("queue.delete")?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn consume(
    args: Arc<AmqpArgsShared>,
    index: u32,
    queue: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let connection = connect(&args.consumer_url).await?;
    let channel = connection.create_channel().await.context("channel")?;
    channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await
        .context("basic.qos")?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("bench-{index}").into(),
            BasicConsumeOptions {
                no_ack: args.no_ack,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    let _ = ready.send(()).await;
    let ack_every = args.ack_every.clamp(1, u64::from(args.prefetch / 2).max(1));
    let mut unacked = 0u64;
    let mut last_tag = 0u64;
    let stream = i32::try_from(index).unwrap_or(i32::MAX);
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(50), consumer.next()).await;
        match next {
            Ok(Some(Ok(delivery))) => {
                seen.lock().unwrap_or_else(|e| e.into_inner()).record(
                    stream,
                    Some(&delivery.data),
                    args.size,
                );
                if !args.no_ack {
                    unacked += 1;
                    last_tag = delivery.delivery_tag;
                    if unacked >= ack_every {
                        channel
                            .basic_ack(last_tag, BasicAckOptions { multiple: true })
                            .await
                            .context("basic.ack")?;
                        unacked = 0;
                    }
                }
            }
            Ok(Some(Err(error))) => bail!("consumer failed: {error}"),
            Ok(None) => break,
            Err(_) => {
                // Idle: settle what is outstanding so the prefetch window
                // never holds the last messages back.
                if unacked > 0 {
                    channel
                        .basic_ack(last_tag, BasicAckOptions { multiple: true })
                        .await
                        .context("basic.ack")?;
                    unacked = 0;
                }
            }
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn publish(
    args: Arc<AmqpArgsShared>,
    index: u32,
    queue: String,
    count: u64,
    published: Arc<Sent>,
) -> anyhow::Result<()> {
    let connection = connect(&args.url).await?;
    let channel = connection.create_channel().await.context("channel")?;
    if args.confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
    }
    let properties =
        BasicProperties::default().with_delivery_mode(if args.persistent { 2 } else { 1 });
    let interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(f64::from(args.producers.max(1)) / args.rate as f64));
    // lapin hands every publish to its I/O thread and resolves it once
    // written; keeping a window of publishes in flight (the confirm window,
    // or SEND_WINDOW without confirms) lets one hand-off carry many.
    let window = if args.confirms {
        args.confirm_window.max(1)
    } else {
        SEND_WINDOW
    };
    let settle = |outcome: anyhow::Result<bool>| match outcome {
        Ok(true) => published.acknowledge(),
        Ok(false) => published.error("publish nacked by the broker"),
        Err(error) => published.error(error),
    };
    let start = tokio::time::Instant::now();
    let mut in_flight = FuturesOrdered::new();
    for sequence in 0..count {
        if let Some(interval) = interval {
            let due = start + interval.mul_f64(sequence as f64);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    Some(outcome) = in_flight.next(), if !in_flight.is_empty() => settle(outcome),
                }
            }
        }
        let body = payload::build(index, sequence, args.size);
        let channel = channel.clone();
        let queue = queue.clone();
        let properties = properties.clone();
        let confirms = args.confirms;
        in_flight.push_back(async move {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .context("basic.publish")?;
            if confirms {
                Ok(confirm.await.context("publisher confirm")?.is_ack())
            } else {
                Ok(true)
            }
        });
        // Start the new publish now (futures run only when polled), and
        // collect whatever finished meanwhile.
        while let Some(Some(outcome)) = in_flight.next().now_or_never() {
            settle(outcome);
        }
        while in_flight.len() >= window {
            if let Some(outcome) = in_flight.next().await {
                settle(outcome);
            }
        }
    }
    while let Some(outcome) = in_flight.next().await {
        settle(outcome);
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Publishes in flight without confirms.
const SEND_WINDOW: usize = 256;

/// The parts of the arguments tasks need.
#[derive(Debug)]
struct AmqpArgsShared {
    url: String,
    consumer_url: String,
    size: usize,
    rate: u64,
    producers: u32,
    persistent: bool,
    confirms: bool,
    confirm_window: usize,
    prefetch: u16,
    ack_every: u64,
    no_ack: bool,
}

pub(crate) fn run(args: &AmqpArgs) -> anyhow::Result<Report> {
    if args.queue.is_some() && args.queues > 1 {
        bail!("--queue names one queue: use it with --queues 1");
    }
    if args.size < payload::HEADER {
        bail!("--size must be at least {} bytes", payload::HEADER);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &AmqpArgs) -> anyhow::Result<Report> {
    let run = format!(
        "bench-{}-{}",
        std::process::id(),
        payload::now_ns() ^ u64::from(std::process::id())
    );
    declare_queues(args, &run).await?;
    let shared = Arc::new(AmqpArgsShared {
        url: args.url.clone(),
        consumer_url: args
            .consumer_url
            .clone()
            .unwrap_or_else(|| args.url.clone()),
        size: args.size,
        rate: args.rate,
        producers: args.producers,
        persistent: args.persistent,
        confirms: args.confirms,
        confirm_window: args.confirm_window,
        prefetch: args.prefetch,
        ack_every: args.ack_every,
        no_ack: args.no_ack,
    });
    let queues = args.queues.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::new()?));
    // Starts the consumers and waits until each has subscribed.
    let start_consumers = || async {
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.consumers.max(1) as usize);
        let mut consumers = Vec::new();
        for index in 0..args.consumers.max(1) {
            consumers.push(tokio::spawn(consume(
                Arc::clone(&shared),
                index,
                queue_name(args, &run, index % queues),
                Arc::clone(&stop),
                Arc::clone(&seen),
                ready_tx.clone(),
            )));
        }
        drop(ready_tx);
        for _ in 0..args.consumers.max(1) {
            if ready_rx.recv().await.is_none() {
                break;
            }
        }
        consumers
    };
    let mut consumers = Vec::new();
    if !args.consume_after_produce {
        consumers = start_consumers().await;
    }

    let published = Arc::new(Sent::default());
    let broker_before = args.broker_pid.and_then(process::sample);
    let started = Instant::now();
    let per_producer = args.count / u64::from(args.producers.max(1));
    let mut producers = Vec::new();
    for index in 0..args.producers.max(1) {
        producers.push(tokio::spawn(publish(
            Arc::clone(&shared),
            index,
            queue_name(args, &run, index % queues),
            per_producer,
            Arc::clone(&published),
        )));
    }
    let progress = Progress::start(
        Duration::from_secs(if args.json { 0 } else { args.progress_s }),
        per_producer * u64::from(args.producers.max(1)),
        Arc::clone(&published.acknowledged),
        Arc::clone(&seen),
    );
    for producer in producers {
        producer.await.context("publisher task")??;
    }
    let produced_at = started.elapsed();
    let (acknowledged, produce_errors) = published.counts();
    let consume_started = if args.consume_after_produce {
        let at = Instant::now();
        seen.lock().unwrap_or_else(|e| e.into_inner()).last_at = at;
        consumers = start_consumers().await;
        at
    } else {
        started
    };

    let drain = Duration::from_secs(args.drain_timeout_s);
    loop {
        let (consumed, idle) = {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            (seen.consumed, seen.last_at.elapsed())
        };
        if consumed >= acknowledged || idle > drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consumed_at = started.elapsed();
    let consume_time = consume_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    drop(progress);
    for consumer in consumers {
        consumer.await.context("consumer task")??;
    }
    let broker_after = args.broker_pid.and_then(process::sample);
    delete_queues(args, &run).await?;
    published.print_first_error();
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let broker = process::usage(
        args.broker_pid,
        broker_before,
        broker_after,
        consumed_at.as_secs_f64(),
    );
    Ok(Report::from_run(Run {
        protocol: "amqp",
        workload: json!({
            "url": redact(&args.url),
            "consumer_url": args.consumer_url.as_deref().map(redact),
            "queue_type": args.queue_type,
            "queues": queues,
            "producers": args.producers,
            "consumers": args.consumers,
            "size": args.size,
            "count": per_producer * u64::from(args.producers.max(1)),
            "rate": args.rate,
            "persistent": args.persistent,
            "confirms": args.confirms,
            "confirm_window": args.confirm_window,
            "prefetch": args.prefetch,
            "ack_every": args.ack_every,
            "no_ack": args.no_ack,
            "consume_after_produce": args.consume_after_produce,
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

/// The URL without its password, for reports.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_report() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
