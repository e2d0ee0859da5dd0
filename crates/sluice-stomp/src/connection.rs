//! One STOMP connection: CONNECT (or STOMP) and login, then the frame loop
//! with heart-beats, subscriptions over the core's queues, acknowledgement
//! modes, transactions and receipts. A RECEIPT for a SEND goes out once
//! the queues the message reached hold it durably; receipts leave in the
//! order their frames came.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{Buf, BytesMut};
use sluice_core::messaging::{
    ConsumerEvent, ConsumerSpec, Credit, Delivery, Destination as Bound, Queue, QueueOptions,
    VirtualHost, short,
};
use sluice_core::permissions::Access;
use sluice_core::{Acks, Broker, ConnectionHandle, OrderedAcks};
use sluice_tls::{ReadHalf, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::destination::Destination;
use crate::frame::{self, Frame, Limits, Version};
use crate::listener::StompOptions;
use crate::message;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FINAL_WRITE: Duration = Duration::from_secs(5);
const EVENTS_PER_BURST: usize = 256;
/// Bytes waiting for a client that stops reading before its socket is no
/// longer read either.
const OUTBOUND_HIGH_WATER: usize = 4 << 20;
/// Unacknowledged deliveries per subscription without `prefetch-count`.
const DEFAULT_PREFETCH: u32 = 1000;
/// How long a subscription's own queue outlives a crashed node on a
/// cluster (it is deleted when the subscription or connection ends).
const TRANSIENT_EXPIRY_MS: i64 = 60_000;
/// Open transactions per connection, and the bytes they may buffer.
const MAX_TRANSACTIONS: usize = 100;
const MAX_TRANSACTION_BYTES: usize = 64 << 20;

/// `/queue/` destinations this connection declared with arguments, kept
/// so a producer sending them on every frame declares once; more are not
/// remembered.
const DECLARED_KEPT: usize = 1024;

/// The queue arguments a frame carries as headers (RabbitMQ's list).
fn arguments_of(frame: &Frame) -> Result<FieldTable, Refusal> {
    crate::destination::queue_arguments(|name| frame.get(name))
        .map_err(|detail| refusal("invalid header", detail))
}

/// The queue of `user`'s durable subscription `id`.
fn durable_queue_name(user: &str, id: &str) -> String {
    format!("stomp-subscription-{user}-{id}")
}

/// Why a connection ended other than by DISCONNECT.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("socket error")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("bad frame: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("ERROR sent: {0}")]
    Errored(String),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no heart-beat within {0:?}")]
    HeartBeat(Duration),
    #[error("closed by an administrator: {0}")]
    Closed(String),
    #[error("the broker is shutting down")]
    Shutdown,
}

impl ConnectionError {
    /// Whether the client just went away (end of stream, reset, broken
    /// pipe; a port probe too): nothing an operator needs to act on.
    pub(crate) fn is_disconnect(&self) -> bool {
        matches!(self, ConnectionError::Io(error) if sluice_types::is_disconnect(error))
    }
}

/// A problem answered with an ERROR frame, which ends the connection.
struct Refusal {
    message: String,
    detail: String,
}

fn refusal(message: impl Into<String>, detail: impl Into<String>) -> Refusal {
    Refusal {
        message: message.into(),
        detail: detail.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

#[derive(Debug)]
struct Subscription {
    queue: Arc<Queue>,
    /// The consumer tag: unique on the connection, so deliveries of an
    /// ended subscription never pass for a later one with the same id.
    tag: Arc<str>,
    ack: AckMode,
    credit: Arc<Credit>,
    /// A queue made for this subscription, deleted with it.
    own_queue: bool,
}

/// A delivery awaiting ACK or NACK.
#[derive(Debug)]
struct Unacked {
    subscription: String,
    queue: Arc<Queue>,
    seq: u64,
}

/// A frame of a transaction, applied at COMMIT.
enum TxAction {
    Send(Frame),
    Ack(Frame),
    Nack(Frame),
}

pub(crate) struct Connection {
    broker: Arc<Broker>,
    registration: ConnectionHandle,
    version: Version,
    vhost: Arc<VirtualHost>,
    user: String,
    key: u64,
    clustered: bool,
    out: BytesMut,
    subscriptions: HashMap<String, Subscription>,
    /// Subscription ids by consumer tag.
    tags: HashMap<Arc<str>, String>,
    next_tag: u64,
    /// Frames buffered in open transactions, in bytes.
    transaction_bytes: usize,
    scan: frame::Scan,
    unacked: BTreeMap<u64, Unacked>,
    next_ack: u64,
    transactions: HashMap<String, Vec<TxAction>>,
    /// Temporary queues by their STOMP name.
    temp_queues: HashMap<String, String>,
    /// `/queue/` names declared with arguments, and those arguments.
    declared: HashMap<String, FieldTable>,
    sink: mpsc::UnboundedSender<ConsumerEvent>,
    to_dispatch: Vec<Arc<Queue>>,
    burst_receipts: Vec<Frame>,
    burst_syncs: Acks,
    receipts: OrderedAcks<Frame>,
    published: bool,
}

impl Connection {
    /// Serves one client from CONNECT to close.
    pub(crate) async fn run(
        registration: ConnectionHandle,
        (mut reader, mut writer): (ReadHalf, WriteHalf),
        peer: SocketAddr,
        broker: Arc<Broker>,
        options: Arc<StompOptions>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        let limits = Limits {
            headers: options.max_header_bytes,
            body: options.max_body_bytes,
        };
        let mut buffer = BytesMut::with_capacity(4096);
        let connect = tokio::time::timeout(
            CONNECT_TIMEOUT,
            read_connect(&mut reader, &mut buffer, limits, &registration),
        )
        .await
        .map_err(|_| ConnectionError::ConnectTimeout(CONNECT_TIMEOUT))??;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let (receipts, mut synced_rx) = OrderedAcks::new();
        let accepted = accept(&broker, &options, registration, peer, &connect).await;
        let (mut connection, connected, heart_beat) = match accepted {
            Ok((version, vhost, user, registration, heart_beat)) => {
                let key = registration.id() << 16;
                let connected = Frame::new("CONNECTED")
                    .header("version", version.name())
                    .header("server", format!("Sluice/{}", env!("CARGO_PKG_VERSION")))
                    .header("session", format!("session-{}", registration.id()))
                    .header(
                        "heart-beat",
                        format!("{},{}", heart_beat.0.as_millis(), heart_beat.1.as_millis()),
                    );
                let connection = Connection {
                    clustered: broker.topics().metadata().clustered(),
                    broker: Arc::clone(&broker),
                    registration,
                    version,
                    vhost,
                    user,
                    key,
                    out: BytesMut::with_capacity(4096),
                    subscriptions: HashMap::new(),
                    tags: HashMap::new(),
                    next_tag: 1,
                    transaction_bytes: 0,
                    scan: frame::Scan::default(),
                    unacked: BTreeMap::new(),
                    next_ack: 1,
                    transactions: HashMap::new(),
                    temp_queues: HashMap::new(),
                    declared: HashMap::new(),
                    sink: events_tx,
                    to_dispatch: Vec::new(),
                    burst_receipts: Vec::new(),
                    burst_syncs: Acks::default(),
                    receipts,
                    published: false,
                };
                (connection, connected, heart_beat)
            }
            Err(refused) => {
                let mut out = BytesMut::new();
                error_frame(&refused, None).encode(Version::V10, &mut out);
                let _ = tokio::time::timeout(FINAL_WRITE, writer.write_all(&out)).await;
                let _ = writer.shutdown().await;
                return Err(ConnectionError::Refused(refused.message));
            }
        };
        connected.encode(connection.version, &mut connection.out);
        let outcome = connection
            .serve(
                &mut reader,
                &mut writer,
                &mut buffer,
                limits,
                heart_beat,
                &mut events_rx,
                &mut synced_rx,
                &mut shutdown,
            )
            .await;
        connection.teardown();
        events_rx.close();
        while let Ok(event) = events_rx.try_recv() {
            if let ConsumerEvent::Deliver(delivery) = event {
                give_back(&connection.vhost, &delivery);
            }
        }
        if !connection.out.is_empty() {
            let _ = tokio::time::timeout(FINAL_WRITE, writer.write_all(&connection.out)).await;
        }
        let _ = tokio::time::timeout(FINAL_WRITE, writer.shutdown()).await;
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &mut self,
        reader: &mut ReadHalf,
        writer: &mut WriteHalf,
        buffer: &mut BytesMut,
        limits: Limits,
        (send_every, expect_every): (Duration, Duration),
        events_rx: &mut mpsc::UnboundedReceiver<ConsumerEvent>,
        synced_rx: &mut mpsc::UnboundedReceiver<(u64, bool)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        // A client is given twice its interval (the spec leaves the
        // tolerance to the server).
        let silence = (!expect_every.is_zero()).then(|| expect_every * 2);
        let mut read_deadline = silence.map(|limit| Instant::now() + limit);
        let mut beat_at = (!send_every.is_zero()).then(|| Instant::now() + send_every);
        let mut alarm = self.broker.admission().changes();
        let mut result = self.handle_buffered(buffer, limits);
        while result.is_none() {
            self.end_of_burst();
            let blocked = self.published && *alarm.borrow();
            if blocked {
                read_deadline = silence.map(|limit| Instant::now() + limit);
            }
            let reading = !blocked && self.out.len() < OUTBOUND_HIGH_WATER;
            if !reading {
                // Not reading is ours: a client's silence meanwhile is not.
                read_deadline = silence.map(|limit| Instant::now() + limit);
            }
            let delivering = self.out.len() < OUTBOUND_HIGH_WATER;
            let pending_out = !self.out.is_empty();
            let silent = async {
                match read_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let beat = async {
                match beat_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                written = writer.write(&self.out), if pending_out => {
                    let n = written?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                    }
                    self.out.advance(n);
                    self.registration.stats().add_bytes_out(n);
                    beat_at = (!send_every.is_zero()).then(|| Instant::now() + send_every);
                }
                read = reader.read_buf(buffer), if reading => {
                    let n = read?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                    self.registration.stats().add_bytes_in(n);
                    read_deadline = silence.map(|limit| Instant::now() + limit);
                    result = self.handle_buffered(buffer, limits);
                }
                Some(event) = events_rx.recv(), if delivering => {
                    self.event(event);
                    for _ in 0..EVENTS_PER_BURST {
                        match events_rx.try_recv() {
                            Ok(event) => self.event(event),
                            Err(_) => break,
                        }
                    }
                }
                Some((batch, ok)) = synced_rx.recv() => self.synced(batch, ok),
                Ok(()) = alarm.changed() => {}
                () = beat => {
                    self.out.extend_from_slice(b"\n");
                    beat_at = (!send_every.is_zero()).then(|| Instant::now() + send_every);
                }
                () = silent => {
                    result = Some(Err(ConnectionError::HeartBeat(expect_every)));
                }
                reason = self.registration.close_requested() => {
                    self.fail(&refusal("connection closed", reason.clone()), None);
                    result = Some(Err(ConnectionError::Closed(reason)));
                }
                _ = shutdown.changed() => {
                    self.fail(&refusal("server shutting down", "the broker is shutting down"), None);
                    result = Some(Err(ConnectionError::Shutdown));
                }
            }
        }
        self.end_of_burst();
        if matches!(result, Some(Ok(()))) {
            // DISCONNECT: the receipts still waiting for durability go out
            // before the connection ends (bounded).
            let deadline = Instant::now() + FINAL_WRITE;
            while !self.receipts.is_empty() {
                match tokio::time::timeout_at(deadline, synced_rx.recv()).await {
                    Ok(Some((batch, ok))) => self.synced(batch, ok),
                    _ => break,
                }
            }
        }
        result.unwrap_or(Ok(()))
    }

    /// Handles every whole frame in `buffer`; `Some` when the connection
    /// is to end (`Ok` after DISCONNECT).
    fn handle_buffered(
        &mut self,
        buffer: &mut BytesMut,
        limits: Limits,
    ) -> Option<Result<(), ConnectionError>> {
        loop {
            let frame =
                match frame::decode_from(buffer, self.version, limits, &mut 0, &mut self.scan) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return None,
                    Err(error) => {
                        self.fail(&refusal("malformed frame", error.to_string()), None);
                        return Some(Err(error.into()));
                    }
                };
            let receipt = frame.get("receipt").map(str::to_owned);
            let disconnect = frame.command == "DISCONNECT";
            match self.frame(frame) {
                Ok(()) => {
                    if let Some(receipt) = receipt {
                        self.burst_receipts
                            .push(Frame::new("RECEIPT").header("receipt-id", receipt));
                    }
                    if disconnect {
                        return Some(Ok(()));
                    }
                }
                Err(refused) => {
                    self.fail(&refused, receipt.as_deref());
                    return Some(Err(ConnectionError::Errored(refused.message)));
                }
            }
        }
    }

    fn frame(&mut self, frame: Frame) -> Result<(), Refusal> {
        if let Some(tx) = frame.get("transaction").map(str::to_owned)
            && matches!(frame.command.as_str(), "SEND" | "ACK" | "NACK")
        {
            if frame.command == "SEND" {
                self.published = true;
                let destination = required(&frame, "destination")?;
                if Destination::parse(destination).is_none() {
                    return Err(refusal(
                        "unknown destination",
                        format!("'{destination}' is not a valid destination"),
                    ));
                }
            }
            let size = frame.body.len()
                + frame
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            if self.transaction_bytes + size > MAX_TRANSACTION_BYTES {
                return Err(refusal(
                    "transaction too large",
                    format!("open transactions hold more than {MAX_TRANSACTION_BYTES} bytes"),
                ));
            }
            let actions = self.transactions.get_mut(&tx).ok_or_else(|| {
                refusal(
                    "invalid transaction",
                    format!("transaction '{tx}' is not open"),
                )
            })?;
            self.transaction_bytes += size;
            let action = match frame.command.as_str() {
                "SEND" => TxAction::Send(frame),
                "ACK" => TxAction::Ack(frame),
                _ => TxAction::Nack(frame),
            };
            actions.push(action);
            return Ok(());
        }
        match frame.command.as_str() {
            "SEND" => {
                let sync = frame.get("receipt").is_some();
                self.send(&frame, sync)
            }
            "SUBSCRIBE" => self.blocking(|c| c.subscribe(&frame)),
            "UNSUBSCRIBE" => self.blocking(|c| c.unsubscribe(&frame)),
            "ACK" => self.ack(&frame, true),
            "NACK" if self.version == Version::V10 => {
                Err(refusal("unknown command", "NACK is not part of STOMP 1.0"))
            }
            "NACK" => self.ack(&frame, false),
            "BEGIN" => {
                let tx = required(&frame, "transaction")?;
                if self.transactions.len() >= MAX_TRANSACTIONS {
                    return Err(refusal(
                        "too many transactions",
                        format!("at most {MAX_TRANSACTIONS} transactions may be open"),
                    ));
                }
                if self.transactions.contains_key(tx) {
                    return Err(refusal(
                        "invalid transaction",
                        format!("transaction '{tx}' is already open"),
                    ));
                }
                self.transactions.insert(tx.to_owned(), Vec::new());
                Ok(())
            }
            "COMMIT" => {
                let tx = required(&frame, "transaction")?;
                let actions = self.transactions.remove(tx).ok_or_else(|| {
                    refusal(
                        "invalid transaction",
                        format!("transaction '{tx}' is not open"),
                    )
                })?;
                self.transaction_bytes = self.transactions_size();
                // A receipt for COMMIT waits for what the transaction sent.
                let sync = frame.get("receipt").is_some();
                for action in actions {
                    match action {
                        TxAction::Send(frame) => self.send(&frame, sync)?,
                        TxAction::Ack(frame) => self.ack(&frame, true)?,
                        TxAction::Nack(frame) => self.ack(&frame, false)?,
                    }
                }
                Ok(())
            }
            "ABORT" => {
                let tx = required(&frame, "transaction")?;
                let aborted = self.transactions.remove(tx).map(|_| ()).ok_or_else(|| {
                    refusal(
                        "invalid transaction",
                        format!("transaction '{tx}' is not open"),
                    )
                });
                self.transaction_bytes = self.transactions_size();
                aborted
            }
            "DISCONNECT" => Ok(()),
            "CONNECT" | "STOMP" => Err(refusal("protocol error", "a second CONNECT")),
            other => Err(refusal(
                "unknown command",
                format!("'{other}' is not a STOMP client frame"),
            )),
        }
    }

    /// Bytes held by the open transactions.
    fn transactions_size(&self) -> usize {
        self.transactions
            .values()
            .flatten()
            .map(|action| {
                let (TxAction::Send(frame) | TxAction::Ack(frame) | TxAction::Nack(frame)) = action;
                frame.body.len()
                    + frame
                        .headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            })
            .sum()
    }

    /// Runs `f`, off the async worker on a cluster, where declaring,
    /// binding and deleting are blocking commits through the quorum.
    fn blocking<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        if self.clustered {
            tokio::task::block_in_place(|| f(self))
        } else {
            f(self)
        }
    }

    fn send(&mut self, frame: &Frame, sync: bool) -> Result<(), Refusal> {
        self.published = true;
        let text = required(frame, "destination")?;
        let destination = Destination::parse(text).ok_or_else(|| {
            refusal(
                "unknown destination",
                format!("'{text}' is not a valid destination"),
            )
        })?;
        let reply_to = match frame.get("reply-to").and_then(Destination::parse) {
            Some(Destination::TempQueue(name)) => Some(self.temp_queue(&name)?),
            _ => None,
        };
        let (exchange, key) = match &destination {
            Destination::TempQueue(name) => (String::new(), self.temp_queue(name)?),
            Destination::Queue(name) => {
                self.declare_named(name, arguments_of(frame)?)?;
                destination.route()
            }
            _ => destination.route(),
        };
        let checked = if exchange.is_empty() {
            "amq.default"
        } else {
            exchange.as_str()
        };
        let permissions = self.broker.permissions();
        if !permissions.allows(&self.user, self.vhost.name(), Access::Write, checked)
            || !permissions.allows_topic(
                &self.user,
                self.vhost.name(),
                &exchange,
                Access::Write,
                &key,
            )
        {
            return Err(refusal(
                "access refused",
                format!(
                    "write access to exchange '{checked}' refused for user '{}'",
                    self.user
                ),
            ));
        }
        let message = message::to_message(frame, &exchange, &key, reply_to.as_deref());
        let outcome = self
            .vhost
            .publish(&exchange, message)
            .map_err(|error| refusal("not found", error.to_string()))?;
        if outcome.rejected {
            // x-overflow reject-publish, or a queue on a node not reached.
            return Err(refusal(
                "message refused",
                format!(
                    "a queue refused the message sent to '{}'",
                    required(frame, "destination")?
                ),
            ));
        }
        if sync {
            self.burst_syncs.merge(outcome.acks);
        }
        Ok(())
    }

    /// `/queue/name`: a durable queue, declared when missing (RabbitMQ);
    /// with `arguments` (from the frame's headers) also when it exists,
    /// which refuses different ones, once per connection. Nothing to do
    /// (the common SEND) costs two lookups.
    fn declare_named(&mut self, name: &str, arguments: FieldTable) -> Result<(), Refusal> {
        let exists = self.vhost.queue(name).is_some() || self.vhost.remote_queue(name).is_some();
        if exists && (arguments.inner().is_empty() || self.declared.get(name) == Some(&arguments)) {
            return Ok(());
        }
        if !self
            .broker
            .permissions()
            .allows(&self.user, self.vhost.name(), Access::Configure, name)
        {
            return Err(refusal(
                "access refused",
                format!(
                    "configure access to queue '{name}' refused for user '{}'",
                    self.user
                ),
            ));
        }
        let options = QueueOptions {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: arguments.clone(),
        };
        // A cluster's declaration waits for its metadata quorum.
        self.blocking(|c| {
            c.vhost
                .declare_queue(name, options, false, c.registration.id())
        })
        .map_err(|error| refusal("cannot declare queue", error.to_string()))?;
        if !arguments.inner().is_empty() && self.declared.len() < DECLARED_KEPT {
            self.declared.insert(name.to_owned(), arguments);
        }
        Ok(())
    }

    /// A queue of this connection alone, server-named (`amq.gen-…`, unique
    /// over the cluster and restarts): exclusive on one node; on a cluster
    /// a durable classic queue (so every node routes to it, gone a minute
    /// after a crash unless `arguments` say otherwise), deleted with its
    /// subscription or connection.
    fn transient_queue(&mut self, mut arguments: FieldTable) -> Result<Arc<Queue>, Refusal> {
        if self.clustered {
            for (name, value) in [
                ("x-expires", AMQPValue::LongLongInt(TRANSIENT_EXPIRY_MS)),
                ("x-queue-type", AMQPValue::LongString("classic".into())),
            ] {
                if !arguments.inner().contains_key(name) {
                    arguments.insert(short(name), value);
                }
            }
        }
        let options = QueueOptions {
            durable: self.clustered,
            exclusive_owner: (!self.clustered).then(|| self.registration.id()),
            auto_delete: false,
            arguments,
        };
        let connection = self.registration.id();
        let vhost = Arc::clone(&self.vhost);
        let declare = move || {
            vhost
                .declare_queue("", options, false, connection)
                .and_then(|(name, _, _)| vhost.usable_queue(&name, connection))
        };
        let declared = if self.clustered {
            tokio::task::block_in_place(declare)
        } else {
            declare()
        };
        declared.map_err(|error| refusal("cannot declare queue", error.to_string()))
    }

    /// The connection's temporary queue `name` (made and subscribed to on
    /// first use); its real name.
    fn temp_queue(&mut self, name: &str) -> Result<String, Refusal> {
        if let Some(real) = self.temp_queues.get(name) {
            return Ok(real.clone());
        }
        let queue = self.transient_queue(FieldTable::default())?;
        let real = queue.name().to_owned();
        let id = format!("/temp-queue/{name}");
        self.consume(id, queue, AckMode::Auto, DEFAULT_PREFETCH, true)?;
        self.temp_queues.insert(name.to_owned(), real.clone());
        Ok(real)
    }

    fn subscribe(&mut self, frame: &Frame) -> Result<(), Refusal> {
        let text = required(frame, "destination")?;
        let id = match frame.get("id") {
            Some(id) => id.to_owned(),
            None if self.version == Version::V10 => text.to_owned(),
            None => return Err(refusal("missing header", "SUBSCRIBE needs an 'id' header")),
        };
        if self.subscriptions.contains_key(&id) {
            return Err(refusal(
                "duplicate subscription",
                format!("subscription '{id}' exists"),
            ));
        }
        let ack = match frame.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => {
                return Err(refusal(
                    "invalid ack mode",
                    format!("'{other}' is no ack mode"),
                ));
            }
        };
        let prefetch = frame
            .get("prefetch-count")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_PREFETCH);
        let destination = Destination::parse(text).ok_or_else(|| {
            refusal(
                "unknown destination",
                format!("'{text}' is not a valid destination"),
            )
        })?;
        let broker = Arc::clone(&self.broker);
        let permissions = broker.permissions();
        let vhost = self.vhost.name().to_owned();
        let user = self.user.clone();
        let denied = |what: &str| {
            refusal(
                "access refused",
                format!("{what} refused for user '{user}'"),
            )
        };
        let (queue, own) = match &destination {
            Destination::Queue(name) | Destination::AmqQueue(name) => {
                if matches!(destination, Destination::Queue(_)) {
                    self.declare_named(name, arguments_of(frame)?)?;
                }
                if !permissions.allows(&self.user, &vhost, Access::Read, name) {
                    return Err(denied(&format!("read access to queue '{name}'")));
                }
                let queue = self
                    .vhost
                    .usable_queue(name, self.registration.id())
                    .map_err(|error| refusal("not found", error.to_string()))?;
                (queue, false)
            }
            Destination::Topic(_) | Destination::Exchange { .. } => {
                let (exchange, key) = destination.route();
                let durable = frame.get("durable").or(frame.get("persistent")) == Some("true");
                if !permissions.allows(&self.user, &vhost, Access::Read, &exchange)
                    || !permissions.allows_topic(&self.user, &vhost, &exchange, Access::Read, &key)
                {
                    return Err(denied(&format!("read access to exchange '{exchange}'")));
                }
                let queue = if durable {
                    // One per user and subscription id, checked as AMQP
                    // checks a declare, bind and consume.
                    let name = durable_queue_name(&self.user, &id);
                    for access in [Access::Configure, Access::Write, Access::Read] {
                        if !permissions.allows(&self.user, &vhost, access, &name) {
                            return Err(denied(&format!(
                                "{} access to queue '{name}'",
                                access.as_str()
                            )));
                        }
                    }
                    let options = QueueOptions {
                        durable: true,
                        exclusive_owner: None,
                        auto_delete: false,
                        arguments: arguments_of(frame)?,
                    };
                    self.vhost
                        .declare_queue(&name, options, false, self.registration.id())
                        .and_then(|_| self.vhost.usable_queue(&name, self.registration.id()))
                        .map_err(|error| refusal("cannot declare queue", error.to_string()))?
                } else {
                    self.transient_queue(arguments_of(frame)?)?
                };
                let name = queue.name().to_owned();
                self.vhost
                    .bind(
                        &exchange,
                        Bound::Queue(name.clone()),
                        &key,
                        &FieldTable::default(),
                        self.registration.id(),
                    )
                    .map_err(|error| refusal("not found", error.to_string()))?;
                (queue, !durable)
            }
            Destination::TempQueue(_) | Destination::ReplyQueue(_) => {
                return Err(refusal(
                    "invalid destination",
                    format!("cannot subscribe to '{text}'"),
                ));
            }
        };
        self.consume(id, queue, ack, prefetch, own)
    }

    fn consume(
        &mut self,
        id: String,
        queue: Arc<Queue>,
        ack: AckMode,
        prefetch: u32,
        own_queue: bool,
    ) -> Result<(), Refusal> {
        if self.subscriptions.contains_key(&id) {
            return Err(refusal(
                "duplicate subscription",
                format!("subscription '{id}' exists"),
            ));
        }
        let tag: Arc<str> = Arc::from(format!("stomp-{}", self.next_tag).as_str());
        self.next_tag += 1;
        let credit = Credit::new(prefetch, None);
        let spec = ConsumerSpec {
            tag: Arc::clone(&tag),
            channel: self.key,
            connection: self.registration.id(),
            no_ack: ack == AckMode::Auto,
            exclusive: false,
            priority: 0,
            credit: Arc::clone(&credit),
            sink: self.sink.clone(),
            stream_start: None,
        };
        let dead = queue
            .add_consumer(spec)
            .map_err(|error| refusal("cannot subscribe", error.to_string()))?;
        self.vhost.dead_letter(dead);
        self.tags.insert(Arc::clone(&tag), id.clone());
        self.subscriptions.insert(
            id,
            Subscription {
                queue,
                tag,
                ack,
                credit,
                own_queue,
            },
        );
        self.show_subscriptions();
        Ok(())
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Result<(), Refusal> {
        let id = match (frame.get("id"), frame.get("destination")) {
            (Some(id), _) => id.to_owned(),
            (None, Some(destination)) if self.version == Version::V10 => destination.to_owned(),
            _ => {
                return Err(refusal(
                    "missing header",
                    "UNSUBSCRIBE needs an 'id' header",
                ));
            }
        };
        let subscription = self
            .subscriptions
            .remove(&id)
            .ok_or_else(|| refusal("not subscribed", format!("no subscription '{id}'")))?;
        let durable = frame.get("durable").or(frame.get("persistent")) == Some("true");
        let queue = subscription.queue.name().to_owned();
        self.end_subscription(&id, subscription);
        // RabbitMQ: UNSUBSCRIBE with durable:true ends a durable
        // subscription for good.
        if durable
            && queue == durable_queue_name(&self.user, &id)
            && let Err(error) =
                self.vhost
                    .delete_queue(&queue, false, false, self.registration.id())
        {
            tracing::warn!(queue = %queue, %error, "cannot delete a durable subscription");
        }
        self.show_subscriptions();
        Ok(())
    }

    fn end_subscription(&mut self, id: &str, subscription: Subscription) {
        self.tags.remove(&subscription.tag);
        let (_, dead) =
            self.vhost
                .remove_consumer(&subscription.queue, self.key, &subscription.tag);
        self.vhost.dead_letter(dead);
        let taken: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.subscription == id)
            .map(|(ack_id, _)| *ack_id)
            .collect();
        let seqs: Vec<u64> = taken
            .iter()
            .filter_map(|ack_id| self.unacked.remove(ack_id))
            .map(|u| u.seq)
            .collect();
        if !seqs.is_empty() {
            match subscription.queue.requeue(&seqs) {
                Ok(dead) => self.vhost.dead_letter(dead),
                Err(error) => {
                    tracing::warn!(queue = subscription.queue.name(), %error, "cannot requeue")
                }
            }
        }
        if subscription.own_queue
            && let Err(error) = self.vhost.delete_queue(
                subscription.queue.name(),
                false,
                false,
                self.registration.id(),
            )
        {
            tracing::warn!(queue = subscription.queue.name(), %error, "cannot delete a subscription's queue");
        }
    }

    fn ack(&mut self, frame: &Frame, ack: bool) -> Result<(), Refusal> {
        let header = if self.version == Version::V12 {
            "id"
        } else {
            "message-id"
        };
        let id = required(frame, header)?;
        let ack_id: u64 = id.parse().map_err(|_| {
            refusal(
                "invalid ack",
                format!("'{id}' is no message of this session"),
            )
        })?;
        let Some(first) = self.unacked.get(&ack_id) else {
            return Err(refusal(
                "invalid ack",
                format!("message '{id}' is not waiting for an ack"),
            ));
        };
        let subscription = first.subscription.clone();
        let mode = self
            .subscriptions
            .get(&subscription)
            .map_or(AckMode::ClientIndividual, |s| s.ack);
        // `client` acknowledges every delivery of the subscription up to
        // this one (cumulative); `client-individual` this one alone.
        let ids: Vec<u64> = if mode == AckMode::Client {
            self.unacked
                .range(..=ack_id)
                .filter(|(_, u)| u.subscription == subscription)
                .map(|(n, _)| *n)
                .collect()
        } else {
            vec![ack_id]
        };
        let requeue = frame.get("requeue") != Some("false");
        let mut by_queue: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
        for n in ids {
            if let Some(unacked) = self.unacked.remove(&n) {
                match by_queue
                    .iter_mut()
                    .find(|(q, _)| Arc::ptr_eq(q, &unacked.queue))
                {
                    Some((_, seqs)) => seqs.push(unacked.seq),
                    None => by_queue.push((unacked.queue, vec![unacked.seq])),
                }
            }
        }
        let released = by_queue.iter().map(|(_, seqs)| seqs.len()).sum::<usize>();
        if let Some(sub) = self.subscriptions.get(&subscription) {
            sub.credit
                .release(u32::try_from(released).unwrap_or(u32::MAX));
        }
        for (queue, seqs) in by_queue {
            let settled = if ack {
                queue.ack(&seqs)
            } else {
                queue
                    .reject(&seqs, requeue)
                    .map(|dead| self.vhost.dead_letter(dead))
            };
            if let Err(error) = settled {
                tracing::warn!(queue = queue.name(), %error, "cannot settle");
            }
            if !self.to_dispatch.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                self.to_dispatch.push(queue);
            }
        }
        Ok(())
    }

    /// A delivery: a MESSAGE frame.
    fn event(&mut self, event: ConsumerEvent) {
        let delivery = match event {
            ConsumerEvent::Deliver(delivery) => delivery,
            ConsumerEvent::Cancelled { consumer_tag, .. } => {
                // The queue went away (RabbitMQ sends ERROR); the
                // subscription is gone, its deliveries with it.
                let Some(id) = self.tags.remove(&consumer_tag) else {
                    return;
                };
                self.unacked.retain(|_, unacked| unacked.subscription != id);
                if self.subscriptions.remove(&id).is_some() {
                    let frame = Frame::new("ERROR")
                        .header("message", "subscription cancelled")
                        .header("subscription", id);
                    frame.encode(self.version, &mut self.out);
                }
                return;
            }
        };
        let Some(id) = self.tags.get(&delivery.consumer_tag).cloned() else {
            give_back(&self.vhost, &delivery);
            return;
        };
        let Some(subscription) = self.subscriptions.get(&id) else {
            give_back(&self.vhost, &delivery);
            return;
        };
        let ack_id = self.next_ack;
        self.next_ack += 1;
        let destination = Destination::of_delivery(
            delivery.message.exchange.as_str(),
            delivery.message.routing_key.as_str(),
        );
        let mut frame = Frame::new("MESSAGE")
            .header("subscription", id.clone())
            .header("destination", destination)
            .header("message-id", ack_id.to_string())
            .header("redelivered", delivery.redelivered.to_string());
        if subscription.ack != AckMode::Auto && self.version == Version::V12 {
            frame = frame.header("ack", ack_id.to_string());
        }
        let frame = message::to_headers(&delivery.message, frame);
        frame.encode(self.version, &mut self.out);
        if subscription.ack == AckMode::Auto {
            // Settled on delivery (no_ack); the window reopens once sent.
            subscription.credit.release(1);
            let queue = Arc::clone(&delivery.queue);
            if !self.to_dispatch.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                self.to_dispatch.push(queue);
            }
        } else {
            self.unacked.insert(
                ack_id,
                Unacked {
                    subscription: id,
                    queue: Arc::clone(&delivery.queue),
                    seq: delivery.seq,
                },
            );
        }
    }

    fn end_of_burst(&mut self) {
        for queue in std::mem::take(&mut self.to_dispatch) {
            let dead = queue.dispatch();
            self.vhost.dead_letter(dead);
        }
        if self.burst_receipts.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut self.burst_receipts);
        let syncs = std::mem::take(&mut self.burst_syncs);
        for frame in self.receipts.push(frames, syncs).unwrap_or_default() {
            frame.encode(self.version, &mut self.out);
        }
    }

    fn synced(&mut self, batch: u64, ok: bool) {
        for (frames, ok) in self.receipts.finished(batch, ok) {
            for frame in frames {
                let frame = if ok {
                    frame
                } else {
                    // Not durable: an ERROR carrying the receipt id.
                    let receipt = frame.get("receipt-id").unwrap_or_default().to_owned();
                    Frame::new("ERROR")
                        .header("message", "message not stored")
                        .header("receipt-id", receipt)
                };
                frame.encode(self.version, &mut self.out);
            }
        }
    }

    /// Sends ERROR (the connection then ends).
    fn fail(&mut self, refused: &Refusal, receipt: Option<&str>) {
        tracing::debug!(message = %refused.message, detail = %refused.detail, "ERROR sent");
        error_frame(refused, receipt).encode(self.version, &mut self.out);
    }

    fn show_subscriptions(&self) {
        let mut ids: Vec<String> = self.subscriptions.keys().cloned().collect();
        ids.sort();
        self.registration
            .stats()
            .update_details(|details| details.subscriptions = ids);
    }

    fn teardown(&mut self) {
        let subscriptions: Vec<(String, Subscription)> = self.subscriptions.drain().collect();
        self.blocking(|c| {
            for (id, subscription) in subscriptions {
                c.end_subscription(&id, subscription);
            }
        });
        self.broker
            .vhosts()
            .connection_closed(self.registration.id());
    }
}

fn give_back(vhost: &VirtualHost, delivery: &Delivery) {
    match delivery.queue.requeue(&[delivery.seq]) {
        Ok(dead) => vhost.dead_letter(dead),
        Err(error) => tracing::warn!(queue = delivery.queue.name(), %error, "cannot give back"),
    }
}

fn required<'a>(frame: &'a Frame, name: &str) -> Result<&'a str, Refusal> {
    frame.get(name).ok_or_else(|| {
        refusal(
            "missing header",
            format!("{} needs a '{name}' header", frame.command),
        )
    })
}

fn error_frame(refused: &Refusal, receipt: Option<&str>) -> Frame {
    let mut frame = Frame::new("ERROR")
        .header("message", refused.message.clone())
        .header("content-type", "text/plain");
    if let Some(receipt) = receipt {
        frame = frame.header("receipt-id", receipt);
    }
    frame.body = bytes::Bytes::from(refused.detail.clone().into_bytes());
    frame
}

async fn read_connect(
    reader: &mut ReadHalf,
    buffer: &mut BytesMut,
    limits: Limits,
    registration: &ConnectionHandle,
) -> Result<Frame, ConnectionError> {
    loop {
        if let Some(frame) = frame::decode(buffer, Version::V12, limits, &mut 0)? {
            return Ok(frame);
        }
        let n = reader.read_buf(buffer).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        registration.stats().add_bytes_in(n);
    }
}

type Accepted = (
    Version,
    Arc<VirtualHost>,
    String,
    ConnectionHandle,
    (Duration, Duration),
);

/// CONNECT: the version, the login, the virtual host and heart-beats.
async fn accept(
    broker: &Arc<Broker>,
    options: &StompOptions,
    registration: ConnectionHandle,
    peer: SocketAddr,
    connect: &Frame,
) -> Result<Accepted, Refusal> {
    if connect.command != "CONNECT" && connect.command != "STOMP" {
        return Err(refusal(
            "protocol error",
            "the first frame must be CONNECT or STOMP",
        ));
    }
    let version = match connect.get("accept-version") {
        None => Version::V10,
        Some(list) => list
            .split(',')
            .filter_map(Version::parse)
            .max()
            .ok_or_else(|| {
                refusal(
                    "unsupported version",
                    "Supported protocol versions are 1.0,1.1,1.2",
                )
            })?,
    };
    let (user, password) = match (connect.get("login"), connect.get("passcode")) {
        (Some(login), passcode) => (login.to_owned(), passcode.unwrap_or_default().to_owned()),
        (None, _) if options.allow_anonymous => {
            (options.default_user.clone(), options.default_pass.clone())
        }
        (None, _) => return Err(refusal("access refused", "a login is required")),
    };
    if broker
        .users()
        .authenticate_async(user.clone(), password, peer.ip())
        .await
        .is_none()
    {
        broker
            .users()
            .login_refused(peer.ip(), &user, "stomp")
            .await;
        return Err(refusal(
            "access refused",
            format!("Access refused for user '{user}'"),
        ));
    }
    // RabbitMQ reads the `host` header as the virtual host; clients send
    // their host name there too, which then means the default.
    let vhost = connect
        .get("host")
        .and_then(|host| broker.vhosts().get(host))
        .or_else(|| broker.vhosts().get(&options.vhost))
        .ok_or_else(|| {
            refusal(
                "access refused",
                format!("no virtual host '{}'", options.vhost),
            )
        })?;
    if !broker.permissions().may_open(&user, vhost.name()) {
        return Err(refusal(
            "access refused",
            format!(
                "access to vhost '{}' refused for user '{user}'",
                vhost.name()
            ),
        ));
    }
    let (client_send, client_expect) = connect
        .get("heart-beat")
        .and_then(|text| text.split_once(','))
        .and_then(|(cx, cy)| {
            Some((
                cx.trim().parse::<u64>().ok()?,
                cy.trim().parse::<u64>().ok()?,
            ))
        })
        .unwrap_or((0, 0));
    // A day at most: nobody needs longer, and an Instant must not overflow.
    const DAY_MS: u64 = 86_400_000;
    let (client_send, client_expect) = (client_send.min(DAY_MS), client_expect.min(DAY_MS));
    let ours = u64::try_from(options.heartbeat.as_millis())
        .unwrap_or(DAY_MS)
        .min(DAY_MS);
    // STOMP 1.1 §heart-beating: each side's interval is the larger of
    // what one offers and the other wants, 0 when either is 0.
    let send_every = if ours == 0 || client_expect == 0 {
        0
    } else {
        ours.max(client_expect)
    };
    let expect_every = if ours == 0 || client_send == 0 {
        0
    } else {
        ours.max(client_send)
    };
    let heart_beat = if version == Version::V10 {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (
            Duration::from_millis(send_every),
            Duration::from_millis(expect_every),
        )
    };
    registration.stats().update_details(|details| {
        details.user = Some(user.clone());
        details.vhost = Some(vhost.name().to_owned());
        details.client_name = connect.get("client-id").map(str::to_owned);
        details.protocol_version = Some(version.name().to_owned());
    });
    tracing::debug!(user = %user, version = version.name(), "stomp client connected");
    Ok((version, vhost, user, registration, heart_beat))
}
