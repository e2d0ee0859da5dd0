//! The MQTT workload: publishers and one subscriber through rumqttc (MQTT
//! 3.1.1), so the same command measures Sluice and mosquitto.
//!
//! The subscriber subscribes to the run's topics (`bench/{run}/#`), with a
//! persistent session when `--persistent` (Sluice keeps it in a durable
//! queue; mosquitto in its persistence file when configured so); then each
//! publisher publishes numbered messages (see `payload.rs`) to its own
//! topic at `--qos`, as fast as the in-flight window allows or at a fixed
//! total rate. A QoS 1 publish counts once its PUBACK arrived. Every
//! message the subscriber gets is checked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::payload;
use crate::process;
use crate::report::{Report, Run};
use crate::seen::{Progress, Seen, Sent};

/// `sluice-bench mqtt`: one workload against one MQTT broker.
#[derive(Debug, Args)]
pub(crate) struct MqttArgs {
    /// Broker address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    address: String,
    /// User name and password (none: an anonymous login).
    #[arg(long)]
    user: Option<String>,
    #[arg(long, default_value = "guest")]
    password: String,
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Message size in bytes (at least 20, the checked header).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Messages to publish in total (split across publishers).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Total publish rate in messages per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// QoS of the publishes and the subscription (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// A persistent session for the subscriber (clean session 0).
    #[arg(long)]
    persistent: bool,
    /// QoS 1 publishes in flight per publisher (rumqttc's window).
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Pid of the broker, to report its CPU time and memory.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Give up waiting for the subscriber after this many seconds without progress.
    #[arg(long, default_value_t = 20)]
    drain_timeout_s: u64,
    /// Print progress to stderr every this many seconds (0: never).
    #[arg(long, default_value_t = 5)]
    progress_s: u64,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

fn qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn options(args: &MqttArgs, client_id: &str, clean: bool) -> anyhow::Result<MqttOptions> {
    let (host, port) = args
        .address
        .rsplit_once(':')
        .context("--address must be HOST:PORT")?;
    let port: u16 = port.parse().context("--address port")?;
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(clean);
    options.set_inflight(args.inflight.max(1));
    options.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(user) = &args.user {
        options.set_credentials(user.clone(), args.password.clone());
    }
    Ok(options)
}

/// Polls `events` until CONNACK; errors are the connection's.
async fn connected(events: &mut EventLoop) -> anyhow::Result<()> {
    loop {
        match events.poll().await.context("mqtt connection")? {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    bail!("CONNACK refused: {:?}", ack.code);
                }
                return Ok(());
            }
            _ => continue,
        }
    }
}

async fn subscribe(
    args: Arc<MqttArgs>,
    run: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let (client, mut events) = AsyncClient::new(
        options(&args, &format!("{run}-sub"), !args.persistent)?,
        1024,
    );
    connected(&mut events).await?;
    client
        .subscribe(format!("bench/{run}/#"), qos(args.qos))
        .await
        .context("subscribe")?;
    let mut ready = Some(ready);
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(50), events.poll()).await;
        match next {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                let stream = publish
                    .topic
                    .rsplit('/')
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
                    .unwrap_or(0);
                seen.lock().unwrap_or_else(|e| e.into_inner()).record(
                    stream,
                    Some(&publish.payload),
                    args.size,
                );
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(error)) => bail!("subscriber connection failed: {error}"),
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}

async fn publish(
    args: Arc<MqttArgs>,
    run: String,
    index: u32,
    count: u64,
    published: Arc<Sent>,
) -> anyhow::Result<()> {
    let (client, mut events) = AsyncClient::new(
        options(&args, &format!("{run}-pub-{index}"), true)?,
        usize::from(args.inflight.max(1)),
    );
    connected(&mut events).await?;
    let topic = format!("bench/{run}/{index}");
    let interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(f64::from(args.producers.max(1)) / args.rate as f64));
    let level = qos(args.qos);
    let sender = {
        let args = Arc::clone(&args);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for sequence in 0..count {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(start + interval.mul_f64(sequence as f64)).await;
                }
                let body = payload::build(index, sequence, args.size);
                client
                    .publish(topic.as_str(), level, false, body)
                    .await
                    .context("publish")?;
            }
            anyhow::Ok(client)
        })
    };
    // The event loop sends the publishes and takes their PUBACKs.
    let mut acknowledged = 0u64;
    let mut sent = 0u64;
    while acknowledged < count {
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acknowledged += 1;
                published.acknowledge();
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) if args.qos == 0 => {
                sent += 1;
                acknowledged = sent;
                published.acknowledge();
            }
            Ok(_) => {}
            Err(error) => {
                published.error(&error);
                bail!("publisher connection failed: {error}");
            }
        }
    }
    let client = sender.await.context("publisher task")??;
    let _ = client.disconnect().await;
    // Lets DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    Ok(())
}

pub(crate) fn run(args: MqttArgs) -> anyhow::Result<Report> {
    if args.size < payload::HEADER {
        bail!("--size must be at least {} bytes", payload::HEADER);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("runtime")?;
    runtime.block_on(run_async(Arc::new(args)))
}

async fn run_async(args: Arc<MqttArgs>) -> anyhow::Result<Report> {
    let run = format!(
        "bench-{}-{}",
        std::process::id(),
        payload::now_ns() ^ u64::from(std::process::id())
    );
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::new()?));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let subscriber = tokio::spawn(subscribe(
        Arc::clone(&args),
        run.clone(),
        Arc::clone(&stop),
        Arc::clone(&seen),
        ready_tx,
    ));
    if ready_rx.await.is_err() {
        subscriber.await.context("subscriber task")??;
        bail!("the subscriber stopped before its SUBACK");
    }
    let published = Arc::new(Sent::default());
    let broker_before = args.broker_pid.and_then(process::sample);
    let started = Instant::now();
    let producers = args.producers.max(1);
    let per_producer = args.count / u64::from(producers);
    let mut tasks = Vec::new();
    for index in 0..producers {
        tasks.push(tokio::spawn(publish(
            Arc::clone(&args),
            run.clone(),
            index,
            per_producer,
            Arc::clone(&published),
        )));
    }
    let progress = Progress::start(
        Duration::from_secs(if args.json { 0 } else { args.progress_s }),
        per_producer * u64::from(producers),
        Arc::clone(&published.acknowledged),
        Arc::clone(&seen),
    );
    for task in tasks {
        task.await.context("publisher task")??;
    }
    let produced_at = started.elapsed();
    let (acknowledged, produce_errors) = published.counts();
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
    stop.store(true, Ordering::Relaxed);
    drop(progress);
    subscriber.await.context("subscriber task")??;
    let broker_after = args.broker_pid.and_then(process::sample);
    published.print_first_error();
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let broker = process::usage(
        args.broker_pid,
        broker_before,
        broker_after,
        consumed_at.as_secs_f64(),
    );
    Ok(Report::from_run(Run {
        protocol: "mqtt",
        workload: json!({
            "address": args.address,
            "producers": producers,
            "size": args.size,
            "count": per_producer * u64::from(producers),
            "rate": args.rate,
            "qos": args.qos,
            "persistent": args.persistent,
            "inflight": args.inflight,
        }),
        size: args.size,
        seen: &seen,
        acknowledged,
        produce_errors,
        producing: produced_at,
        consuming: consumed_at,
        total: consumed_at,
        broker,
        json_only: args.json,
    }))
}
