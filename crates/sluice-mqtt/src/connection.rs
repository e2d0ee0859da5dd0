//! One MQTT connection: CONNECT and login, then the packet loop with keep
//! alive, deliveries from the session's queues, and the ordered
//! acknowledgements of QoS 1 and 2 publishes (PUBACK and PUBREC go out in
//! the order the publishes came, once what they wrote is durable).
//! Session state (subscriptions, queues) is in `session.rs`; the publish
//! path (retained messages, wills, topic aliases) in `publish.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sluice_core::messaging::{ConsumerEvent, VirtualHost};
use sluice_core::{Acks, Broker, ConnectionHandle};
use sluice_tls::ServerStream;
use sluice_tls::{ReadHalf, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::listener::{Shared, Slot};
use crate::packets::{CodecError, ConnAck, ConnackCode, Connect, Inbound, Outbound, Version, Will};
use crate::session::Session;

/// How long a client has to send CONNECT (RabbitMQ's handshake timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection waits for the one it takes a session from.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// Consumer events handled before the socket is read again.
const EVENTS_PER_BURST: usize = 256;

/// Why a connection ended other than by the client's DISCONNECT.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("socket error")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Protocol(String),
    #[error("refused at CONNECT: {0}")]
    Refused(String),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no packet within 1.5 times the keep alive of {0} s")]
    KeepAlive(u16),
    #[error("taken over by another connection with the same client id")]
    TakenOver,
    #[error("closed by an administrator: {0}")]
    Closed(String),
    #[error("the broker is shutting down")]
    Shutdown,
}

/// A protocol violation: the connection closes, with an MQTT 5
/// DISCONNECT carrying `reason` first.
pub(crate) struct Violation {
    pub(crate) reason: u8,
    pub(crate) text: String,
}

impl Violation {
    pub(crate) fn new(reason: u8, text: impl Into<String>) -> Violation {
        Violation {
            reason,
            text: text.into(),
        }
    }
}

/// An acknowledgement waiting for the writes before it.
struct AckBatch {
    id: u64,
    packets: Vec<Outbound>,
}

pub(crate) struct Connection {
    pub(crate) broker: Arc<Broker>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) registration: ConnectionHandle,
    pub(crate) version: Version,
    pub(crate) vhost: Arc<VirtualHost>,
    pub(crate) user: String,
    pub(crate) client_id: String,
    pub(crate) session: Session,
    pub(crate) codec: crate::packets::Codec,
    out: BytesMut,
    /// Acknowledgements of this burst's publishes, and what they wait for.
    pub(crate) burst_acks: Vec<Outbound>,
    pub(crate) burst_syncs: Acks,
    /// Earlier bursts' acknowledgements, oldest first.
    waiting: VecDeque<AckBatch>,
    next_batch: u64,
    syncer: Option<std::sync::mpsc::Sender<(u64, Acks)>>,
    synced_tx: mpsc::UnboundedSender<(u64, bool)>,
    /// QoS 2 publishes received and not yet released (PUBREL).
    pub(crate) qos2_received: HashSet<u16>,
    /// Topic aliases the client set (MQTT 5).
    pub(crate) aliases: HashMap<u16, String>,
    pub(crate) will: Option<Will>,
    /// The session expiry in force (0: the session ends with the connection).
    pub(crate) session_expiry_secs: u32,
}

impl Connection {
    /// Serves one client from CONNECT to close.
    pub(crate) async fn run(
        registration: ConnectionHandle,
        stream: ServerStream,
        peer: SocketAddr,
        broker: Arc<Broker>,
        shared: Arc<Shared>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        let (mut reader, mut writer) = stream.split();
        let mut codec = crate::packets::Codec::new(shared.options.max_packet_size);
        let mut buffer = BytesMut::with_capacity(4096);
        let connect = tokio::time::timeout(
            CONNECT_TIMEOUT,
            read_connect(&mut reader, &mut codec, &mut buffer, &registration),
        )
        .await
        .map_err(|_| ConnectionError::ConnectTimeout(CONNECT_TIMEOUT))??;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let accepted = crate::session::accept(
            &broker,
            &shared,
            registration,
            peer,
            *connect,
            &mut codec,
            events_tx,
        )
        .await;
        let (mut connection, slot, connack) = match accepted {
            Ok(accepted) => accepted,
            Err((refusal, reason)) => {
                let mut out = BytesMut::new();
                codec.encode(Outbound::ConnAck(Box::new(refusal)), &mut out)?;
                writer.write_all(&out).await?;
                let _ = writer.shutdown().await;
                return Err(ConnectionError::Refused(reason));
            }
        };
        connection.write(Outbound::ConnAck(Box::new(connack)));
        connection.session.restore(&connection.shared.options);
        connection.show_subscriptions();
        let (synced_tx, mut synced_rx) = mpsc::unbounded_channel();
        connection.synced_tx = synced_tx;
        let outcome = connection
            .serve(
                &mut reader,
                &mut writer,
                &mut buffer,
                &mut events_rx,
                &mut synced_rx,
                &slot,
                &mut shutdown,
            )
            .await;
        // Deliveries still on their way here go back to their queues.
        events_rx.close();
        while let Ok(event) = events_rx.try_recv() {
            if let ConsumerEvent::Deliver(delivery) = event {
                connection.session.give_back(&delivery);
            }
        }
        let graceful = matches!(outcome, Ok(true));
        connection.teardown(graceful, &slot);
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
        outcome.map(|_| ())
    }

    /// The packet loop; `Ok(true)` after the client's DISCONNECT (no will).
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &mut self,
        reader: &mut ReadHalf,
        writer: &mut WriteHalf,
        buffer: &mut BytesMut,
        events_rx: &mut mpsc::UnboundedReceiver<ConsumerEvent>,
        synced_rx: &mut mpsc::UnboundedReceiver<(u64, bool)>,
        slot: &Arc<Slot>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, ConnectionError> {
        let keep_alive = self.session.keep_alive;
        let idle_limit =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut deadline = idle_limit.map(|limit| Instant::now() + limit);
        let mut result = Ok(false);
        // Packets already read with CONNECT.
        if let Some(done) = self.handle_buffered(buffer) {
            result = done;
        }
        while matches!(result, Ok(false)) {
            self.end_of_burst();
            if !self.out.is_empty() {
                let bytes = self.out.split().freeze();
                writer.write_all(&bytes).await?;
                self.registration.stats().add_bytes_out(bytes.len());
            }
            let keep_alive_expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = reader.read_buf(buffer) => {
                    let n = read?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                    self.registration.stats().add_bytes_in(n);
                    deadline = idle_limit.map(|limit| Instant::now() + limit);
                    if let Some(done) = self.handle_buffered(buffer) {
                        result = done;
                    }
                }
                Some(event) = events_rx.recv() => {
                    self.session.event(event, &mut self.out, &mut self.codec);
                    for _ in 0..EVENTS_PER_BURST {
                        match events_rx.try_recv() {
                            Ok(event) => self.session.event(event, &mut self.out, &mut self.codec),
                            Err(_) => break,
                        }
                    }
                }
                Some((batch, ok)) = synced_rx.recv() => self.synced(batch, ok)?,
                () = keep_alive_expired => {
                    self.violation(Violation::new(0x8D, "keep alive timeout"));
                    result = Err(ConnectionError::KeepAlive(keep_alive));
                }
                () = slot.taken_over.notified() => {
                    self.violation(Violation::new(0x8E, "session taken over"));
                    result = Err(ConnectionError::TakenOver);
                }
                reason = self.registration.close_requested() => {
                    self.violation(Violation::new(0x98, reason.clone()));
                    result = Err(ConnectionError::Closed(reason));
                }
                _ = shutdown.changed() => {
                    self.violation(Violation::new(0x8B, "server shutting down"));
                    result = Err(ConnectionError::Shutdown);
                }
            }
        }
        self.end_of_burst();
        if !self.out.is_empty() {
            let _ = writer.write_all(&self.out).await;
            self.registration.stats().add_bytes_out(self.out.len());
        }
        result
    }

    /// Handles every complete packet in `buffer`; `Some` when the
    /// connection is to end.
    fn handle_buffered(&mut self, buffer: &mut BytesMut) -> Option<Result<bool, ConnectionError>> {
        loop {
            let packet = match self.codec.decode(buffer) {
                Ok(Some(packet)) => packet,
                Ok(None) => return None,
                Err(error) => {
                    self.violation(Violation::new(0x81, error.to_string()));
                    return Some(Err(error.into()));
                }
            };
            match self.packet(packet) {
                Ok(None) => {}
                Ok(Some(graceful)) => return Some(Ok(graceful)),
                Err(violation) => {
                    let text = violation.text.clone();
                    self.violation(violation);
                    return Some(Err(ConnectionError::Protocol(text)));
                }
            }
        }
    }

    /// One packet; `Some(graceful)` once the client disconnected.
    fn packet(&mut self, packet: Inbound) -> Result<Option<bool>, Violation> {
        match packet {
            Inbound::Connect(_) => {
                return Err(Violation::new(0x82, "a second CONNECT"));
            }
            Inbound::Publish(publish) => self.publish(*publish)?,
            Inbound::PubAck(id) | Inbound::PubComp(id) => self.session.acked(id),
            Inbound::PubRec(id) => {
                // Sluice grants QoS 1 at most, so never sends QoS 2.
                return Err(Violation::new(0x82, format!("PUBREC for packet {id}")));
            }
            Inbound::PubRel(id) => {
                let reason = if self.qos2_received.remove(&id) {
                    0
                } else {
                    0x92
                };
                self.write(Outbound::PubComp {
                    packet_id: id,
                    reason,
                });
            }
            Inbound::Subscribe {
                packet_id,
                id,
                filters,
            } => {
                let codes = self.subscribe(id, &filters);
                self.write(Outbound::SubAck { packet_id, codes });
                self.send_retained(&filters, id);
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                let codes = self.unsubscribe(&filters);
                self.write(Outbound::UnsubAck { packet_id, codes });
            }
            Inbound::PingReq => self.write(Outbound::PingResp),
            Inbound::Disconnect {
                reason,
                session_expiry_secs,
            } => {
                if let Some(expiry) = session_expiry_secs {
                    if self.session_expiry_secs == 0 && expiry > 0 {
                        // MQTT 5 §3.14.2.2.2.
                        return Err(Violation::new(0x82, "session expiry set after 0"));
                    }
                    self.session_expiry_secs =
                        expiry.min(self.shared.options.max_session_expiry_secs);
                }
                // 0x04: disconnect with will message.
                return Ok(Some(reason != 0x04));
            }
            Inbound::Auth => {
                return Err(Violation::new(
                    0x8C,
                    "enhanced authentication is not offered",
                ));
            }
            Inbound::ServerOnly(name) => {
                return Err(Violation::new(0x82, format!("{name} from a client")));
            }
        }
        Ok(None)
    }

    pub(crate) fn write(&mut self, packet: Outbound) {
        if let Err(error) = self.codec.encode(packet, &mut self.out) {
            tracing::debug!(%error, "a packet was not sent");
        }
    }

    /// Sends MQTT 5's DISCONNECT with `violation`'s reason (MQTT 3 has
    /// none: the connection just closes).
    fn violation(&mut self, violation: Violation) {
        tracing::debug!(reason = violation.reason, text = %violation.text, "closing");
        self.write(Outbound::Disconnect {
            reason: violation.reason,
            text: Some(violation.text),
        });
    }

    /// Queues this burst's acknowledgements behind earlier ones, and starts
    /// waiting for what they wrote.
    fn end_of_burst(&mut self) {
        self.session.dispatch();
        if self.burst_acks.is_empty() {
            return;
        }
        let packets = std::mem::take(&mut self.burst_acks);
        let syncs = std::mem::take(&mut self.burst_syncs);
        if syncs.is_empty() && self.waiting.is_empty() {
            for packet in packets {
                self.write(packet);
            }
            return;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        self.waiting.push_back(AckBatch { id, packets });
        let syncer = self.syncer.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::channel::<(u64, Acks)>();
            let done = self.synced_tx.clone();
            tokio::task::spawn_blocking(move || {
                while let Ok((batch, acks)) = rx.recv() {
                    let ok = acks.wait().is_ok();
                    if done.send((batch, ok)).is_err() {
                        break;
                    }
                }
            });
            tx
        });
        if syncer.send((id, syncs)).is_err() {
            tracing::warn!("the acknowledgement waiter is gone");
        }
    }

    fn synced(&mut self, batch: u64, ok: bool) -> Result<(), ConnectionError> {
        while let Some(front) = self.waiting.front() {
            if front.id > batch {
                break;
            }
            let Some(done) = self.waiting.pop_front() else {
                break;
            };
            if !ok && done.id == batch {
                // Not durable: MQTT 3 has no negative acknowledgement, so
                // the client must retry on a new connection.
                if !matches!(self.version, Version::V5) {
                    return Err(ConnectionError::Protocol(
                        "a publish could not be made durable".to_owned(),
                    ));
                }
                for packet in done.packets {
                    self.write(failed(packet));
                }
                continue;
            }
            for packet in done.packets {
                self.write(packet);
            }
        }
        Ok(())
    }

    fn teardown(&mut self, graceful: bool, slot: &Arc<Slot>) {
        self.session.close(self.session_expiry_secs);
        self.shared
            .clients
            .release(self.vhost.name(), &self.client_id, slot);
        self.broker
            .vhosts()
            .connection_closed(self.registration.id());
        if graceful {
            return;
        }
        if let Some(will) = self.will.take() {
            crate::publish::send_will(self, will);
        }
    }
}

/// The acknowledgement of a publish that failed.
fn failed(packet: Outbound) -> Outbound {
    match packet {
        Outbound::PubAck { packet_id, .. } => Outbound::PubAck {
            packet_id,
            reason: 0x80,
        },
        Outbound::PubRec { packet_id, .. } => Outbound::PubRec {
            packet_id,
            reason: 0x80,
        },
        other => other,
    }
}

/// Reads until the first packet, which must be CONNECT.
async fn read_connect(
    reader: &mut ReadHalf,
    codec: &mut crate::packets::Codec,
    buffer: &mut BytesMut,
    registration: &ConnectionHandle,
) -> Result<Box<Connect>, ConnectionError> {
    loop {
        match codec.decode(buffer)? {
            Some(Inbound::Connect(connect)) => return Ok(connect),
            Some(_) => return Err(CodecError::NotConnect.into()),
            None => {}
        }
        let n = reader.read_buf(buffer).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        registration.stats().add_bytes_in(n);
    }
}

/// Builds the connection once the session is set up.
#[allow(clippy::too_many_arguments)]
pub(crate) fn new_connection(
    broker: Arc<Broker>,
    shared: Arc<Shared>,
    registration: ConnectionHandle,
    version: Version,
    vhost: Arc<VirtualHost>,
    user: String,
    client_id: String,
    session: Session,
    codec: crate::packets::Codec,
    will: Option<Will>,
    session_expiry_secs: u32,
) -> Connection {
    let (synced_tx, _) = mpsc::unbounded_channel();
    Connection {
        broker,
        shared,
        registration,
        version,
        vhost,
        user,
        client_id,
        session,
        codec,
        out: BytesMut::with_capacity(4096),
        burst_acks: Vec::new(),
        burst_syncs: Acks::default(),
        waiting: VecDeque::new(),
        next_batch: 0,
        syncer: None,
        synced_tx,
        qos2_received: HashSet::new(),
        aliases: HashMap::new(),
        will,
        session_expiry_secs,
    }
}

/// A refused CONNECT's CONNACK.
pub(crate) fn refusal(code: ConnackCode, reason: &str) -> ConnAck {
    ConnAck {
        session_present: false,
        code,
        reason: Some(reason.to_owned()),
        assigned_client_id: None,
        session_expiry_secs: None,
        receive_max: 1,
        topic_alias_max: 0,
        max_packet_size: 1,
    }
}

/// How long the new connection waits for the one it takes over.
pub(crate) async fn wait_for_takeover(previous: &Arc<Slot>) {
    let mut finished = previous.finished.subscribe();
    previous.taken_over.notify_one();
    let _ = tokio::time::timeout(TAKEOVER_WAIT, finished.wait_for(|done| *done)).await;
}
