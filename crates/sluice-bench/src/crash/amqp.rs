//! The AMQP side of the crash loop: a publisher of persistent messages with
//! confirms into a durable queue, recording every confirmed sequence, and a
//! consumer with manual acks recording every delivery and its redelivered
//! flag. Both reconnect whenever the broker goes away.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::payload;

/// Producer id of the AMQP publisher in the payload header.
const PUBLISHER: u32 = 3;
/// Publishes awaiting their confirm at once.
const CONFIRM_WINDOW: usize = 64;
/// Longest wait for any one step (connect, publish, confirm, delivery
/// ack): a connection cut by a kill in the middle of a step is given up
/// after this and opened again.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// `future`, failing after [`STEP_TIMEOUT`].
async fn step<T>(
    what: &'static str,
    future: impl std::future::Future<Output = lapin::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .map_err(|_| anyhow::anyhow!("{what} timed out"))?
        .context(what)
}

/// `future` on `connection`, failing after [`STEP_TIMEOUT`] or as soon as
/// the connection is seen closed. lapin may leave a delivery ack or a
/// publisher confirm pending for good when a kill cut the connection just
/// before it (no reply ever settles it); waiting the whole step timeout
/// for one once swallowed four kills of a 20 s run, which the clients
/// never saw.
async fn on_connection<T>(
    connection: &Connection,
    what: &'static str,
    future: impl std::future::Future<Output = lapin::Result<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    tokio::pin!(future);
    loop {
        let poll = deadline.min(tokio::time::Instant::now() + Duration::from_millis(200));
        match tokio::time::timeout_at(poll, &mut future).await {
            Ok(done) => return done.context(what),
            Err(_) if !connection.status().connected() => {
                anyhow::bail!("{what}: the connection closed before it was settled")
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("{what} timed out")
            }
            Err(_) => {}
        }
    }
}

/// What the AMQP clients were told by the broker.
#[derive(Debug, Default)]
pub(crate) struct AmqpLedger {
    pub(crate) published: u64,
    pub(crate) confirmed: HashSet<u64>,
    pub(crate) nacked: u64,
    /// Sequence → the redelivered flag of each delivery, in order.
    pub(crate) deliveries: HashMap<u64, Vec<bool>>,
    pub(crate) corrupt: u64,
    pub(crate) reconnects: u64,
    /// Most ready messages seen at the end of a consumer pause.
    pub(crate) max_backlog: u32,
}

/// The consumer reads for this long, then pauses for [`PAUSE`], so that the
/// queue builds a backlog beyond its memory budget (and pages it to disk)
/// in every cycle.
const CONSUME_STRETCH: Duration = Duration::from_millis(2000);
const PAUSE: Duration = Duration::from_millis(1000);

async fn open(url: &str, queue: &str) -> anyhow::Result<(Connection, Channel)> {
    let connection = step(
        "connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await?;
    let channel = step("channel", connection.create_channel()).await?;
    step(
        "queue.declare",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok((connection, channel))
}

fn lock(ledger: &Mutex<AmqpLedger>) -> std::sync::MutexGuard<'_, AmqpLedger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes until `stop`, reconnecting after every failure. Messages
/// whose confirm never came are not republished: they count as
/// unacknowledged, and may or may not be in the queue.
pub(crate) async fn publish(
    url: String,
    queue: String,
    size: usize,
    rate: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<AmqpLedger>>,
) {
    let sequence = AtomicU64::new(0);
    let started = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let session =
            publish_session(&url, &queue, size, rate, started, &sequence, &stop, &ledger).await;
        if session.is_err() && !stop.load(Ordering::Relaxed) {
            lock(&ledger).reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn publish_session(
    url: &str,
    queue: &str,
    size: usize,
    rate: u64,
    started: tokio::time::Instant,
    sequence: &AtomicU64,
    stop: &AtomicBool,
    ledger: &Mutex<AmqpLedger>,
) -> anyhow::Result<()> {
    let (connection, channel) = open(url, queue).await?;
    step(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let properties = BasicProperties::default().with_delivery_mode(2);
    let mut in_flight = FuturesUnordered::new();
    let outcome: anyhow::Result<()> = async {
        while !stop.load(Ordering::Relaxed) {
            let next = sequence.load(Ordering::Relaxed);
            let due = started + Duration::from_secs_f64(next as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(due).await;
            let body = payload::build(PUBLISHER, next, size);
            let confirm = step(
                "basic.publish",
                channel.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.clone(),
                ),
            )
            .await?;
            sequence.fetch_add(1, Ordering::Relaxed);
            lock(ledger).published += 1;
            let connection = &connection;
            in_flight
                .push(async move { (next, on_connection(connection, "confirm", confirm).await) });
            while in_flight.len() >= CONFIRM_WINDOW {
                settle(in_flight.next().await, ledger)?;
            }
        }
        while !in_flight.is_empty() {
            settle(in_flight.next().await, ledger)?;
        }
        Ok(())
    }
    .await;
    let _ = tokio::time::timeout(STEP_TIMEOUT, connection.close(200, "done".into())).await;
    outcome
}

fn settle(
    outcome: Option<(u64, anyhow::Result<lapin::Confirmation>)>,
    ledger: &Mutex<AmqpLedger>,
) -> anyhow::Result<()> {
    match outcome {
        Some((sequence, Ok(confirmation))) => {
            let mut ledger = lock(ledger);
            if confirmation.is_ack() {
                ledger.confirmed.insert(sequence);
            } else {
                ledger.nacked += 1;
            }
            Ok(())
        }
        Some((_, Err(error))) => Err(error),
        None => Ok(()),
    }
}

/// Consumes with manual acks until `stop`, reconnecting after failures.
pub(crate) async fn consume(
    url: String,
    queue: String,
    size: usize,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<AmqpLedger>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let session = consume_session(&url, &queue, size, &stop, &ledger).await;
        if session.is_err() && !stop.load(Ordering::Relaxed) {
            lock(&ledger).reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn consume_session(
    url: &str,
    queue: &str,
    size: usize,
    stop: &AtomicBool,
    ledger: &Mutex<AmqpLedger>,
) -> anyhow::Result<()> {
    let (connection, channel) = open(url, queue).await?;
    step(
        "basic.qos",
        channel.basic_qos(100, BasicQosOptions::default()),
    )
    .await?;
    let mut consumer = step(
        "basic.consume",
        channel.basic_consume(
            queue.into(),
            "crash-loop".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let outcome: anyhow::Result<()> = async {
        while !stop.load(Ordering::Relaxed) {
            // On the wall clock, so that sessions cut short by kills pause too.
            let period = (CONSUME_STRETCH + PAUSE).as_millis();
            let phase = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() % period);
            if phase >= CONSUME_STRETCH.as_millis() {
                // Sampled all through the pause: a kill may cut it short.
                let until = tokio::time::Instant::now()
                    + Duration::from_millis(u64::try_from(period - phase).unwrap_or(0));
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep_until(
                        until.min(tokio::time::Instant::now() + Duration::from_millis(100)),
                    )
                    .await;
                    let count = passive_count(&channel, queue).await?;
                    let mut ledger = lock(ledger);
                    ledger.max_backlog = ledger.max_backlog.max(count);
                }
            }
            let Ok(next) = tokio::time::timeout(Duration::from_millis(100), consumer.next()).await
            else {
                continue;
            };
            let delivery = next.context("the consumer ended")?.context("delivery")?;
            {
                let mut ledger = lock(ledger);
                match payload::check(&delivery.data, size) {
                    Some(checked) => ledger
                        .deliveries
                        .entry(checked.sequence)
                        .or_default()
                        .push(delivery.redelivered),
                    None => ledger.corrupt += 1,
                }
            }
            on_connection(
                &connection,
                "basic.ack",
                delivery.ack(BasicAckOptions::default()),
            )
            .await?;
        }
        Ok(())
    }
    .await;
    let _ = tokio::time::timeout(STEP_TIMEOUT, connection.close(200, "done".into())).await;
    outcome
}

/// Ready messages left in the queue (passive declare).
pub(crate) async fn ready_count(url: &str, queue: &str) -> anyhow::Result<u32> {
    let connection = step(
        "connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await?;
    let channel = step("channel", connection.create_channel()).await?;
    let count = passive_count(&channel, queue).await;
    let _ = tokio::time::timeout(STEP_TIMEOUT, connection.close(200, "done".into())).await;
    count
}

/// Ready messages in `queue`, by a passive declare on `channel`.
async fn passive_count(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let declared = step(
        "queue.declare passive",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(declared.message_count())
}
