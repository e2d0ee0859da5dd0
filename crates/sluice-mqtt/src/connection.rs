//! One MQTT connection: CONNECT and login, then the packet loop with keep
//! alive, deliveries from the session's queues, and the ordered
//! acknowledgements of QoS 1 and 2 publishes (PUBACK and PUBREC go out in
//! the order the publishes came, once what they wrote is durable).
//! Session state (subscriptions, queues) is in `session.rs`; the publish
//! path (retained messages, wills, topic aliases) in `publish.rs`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use sluice_core::messaging::{ConsumerEvent, VirtualHost};
use sluice_core::{Acks, Broker, ConnectionHandle, OrderedAcks};
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
/// Bytes waiting for a client that stops reading before its socket is
/// no longer read either.
const OUTBOUND_HIGH_WATER: usize = 4 << 20;
/// How long the last bytes to a closing client may take.
const FINAL_WRITE: Duration = Duration::from_secs(5);

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

impl ConnectionError {
    /// Whether the client just went away (end of stream, reset, broken
    /// pipe; a port probe too): nothing an operator needs to act on.
    pub(crate) fn is_disconnect(&self) -> bool {
        matches!(self, ConnectionError::Io(error) if sluice_types::is_disconnect(error))
    }
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

/// How a connection ended at the client's DISCONNECT, or otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ended {
    send_will: bool,
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
    acks: OrderedAcks<Outbound>,
    /// QoS 2 publishes received and not yet released (PUBREL).
    pub(crate) qos2_received: HashSet<u16>,
    /// Topic aliases the client set (MQTT 5).
    pub(crate) aliases: HashMap<u16, String>,
    pub(crate) will: Option<Will>,
    /// The session expiry in force (0: the session ends with the connection).
    pub(crate) session_expiry_secs: u32,
    /// Whether CONNECT asked for no session expiry (MQTT 5: DISCONNECT
    /// may then not set one).
    connect_expiry_zero: bool,
    /// Whether the client published (resource alarms stop reading from
    /// publishers only).
    published: bool,
}

impl Connection {
    /// Serves one client from CONNECT to close.
    pub(crate) async fn run(
        registration: ConnectionHandle,
        (mut reader, mut writer): (ReadHalf, WriteHalf),
        peer: SocketAddr,
        broker: Arc<Broker>,
        shared: Arc<Shared>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        let mut codec = crate::packets::Codec::new(shared.options.max_packet_size);
        let mut buffer = BytesMut::with_capacity(4096);
        let read = tokio::time::timeout(
            CONNECT_TIMEOUT,
            read_connect(&mut reader, &mut codec, &mut buffer, &registration),
        )
        .await
        .map_err(|_| ConnectionError::ConnectTimeout(CONNECT_TIMEOUT))?;
        let connect = match read {
            Ok(connect) => connect,
            Err(error) => {
                if crate::packets::unsupported_level(&buffer) {
                    // MQTT 3.1.1 §3.1.2.2: CONNACK 0x01, then close.
                    let _ =
                        tokio::time::timeout(FINAL_WRITE, writer.write_all(b"\x20\x02\x00\x01"))
                            .await;
                }
                return Err(error);
            }
        };
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
                let _ = tokio::time::timeout(FINAL_WRITE, writer.write_all(&out)).await;
                let _ = writer.shutdown().await;
                return Err(ConnectionError::Refused(reason));
            }
        };
        connection.write(Outbound::ConnAck(Box::new(connack)));
        connection.session.restore();
        connection.show_subscriptions();
        let (acks, mut synced_rx) = OrderedAcks::new();
        connection.acks = acks;
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
        // The session leaves its queues first (an auto-delete queue sees
        // its last consumer go), then deliveries still on their way here
        // go back.
        let send_will = !matches!(outcome, Ok(Ended { send_will: false }));
        connection.teardown(send_will, &slot);
        events_rx.close();
        while let Ok(event) = events_rx.try_recv() {
            if let ConsumerEvent::Deliver(delivery) = event {
                connection.session.give_back(&delivery);
            }
        }
        connection.session.delete_auto_delete_queues();
        if !connection.out.is_empty() {
            let _ = tokio::time::timeout(FINAL_WRITE, writer.write_all(&connection.out)).await;
        }
        let _ = tokio::time::timeout(FINAL_WRITE, writer.shutdown()).await;
        outcome.map(|_| ())
    }

    /// The packet loop, until the client disconnects or the connection
    /// must end. Bytes go out as the socket takes them, in the same
    /// `select!` as everything else, so a client that stops reading
    /// still meets keep alive, takeover, an admin close and shutdown.
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
    ) -> Result<Ended, ConnectionError> {
        let keep_alive = self.session.keep_alive;
        let idle_limit =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut deadline = idle_limit.map(|limit| Instant::now() + limit);
        let mut alarm = self.broker.admission().changes();
        // Packets already read with CONNECT.
        let mut result = self.handle_buffered(buffer);
        while result.is_none() {
            self.end_of_burst();
            let blocked = self.published && *alarm.borrow();
            if blocked {
                // Not read while an alarm lasts (RabbitMQ blocks
                // publishers): keep alive waits too.
                deadline = idle_limit.map(|limit| Instant::now() + limit);
            }
            let reading = !blocked && self.out.len() < OUTBOUND_HIGH_WATER;
            if !reading {
                // Not reading is ours: a client's silence meanwhile is not.
                deadline = idle_limit.map(|limit| Instant::now() + limit);
            }
            // Deliveries wait while much is unsent (a QoS 0 delivery is
            // settled once encoded).
            let delivering = self.out.len() < OUTBOUND_HIGH_WATER;
            let keep_alive_expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let pending_out = !self.out.is_empty();
            tokio::select! {
                written = writer.write(&self.out), if pending_out => {
                    let n = written?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                    }
                    self.out.advance(n);
                    self.registration.stats().add_bytes_out(n);
                }
                read = reader.read_buf(buffer), if reading => {
                    let n = read?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                    self.registration.stats().add_bytes_in(n);
                    deadline = idle_limit.map(|limit| Instant::now() + limit);
                    result = self.handle_buffered(buffer);
                }
                Some(event) = events_rx.recv(), if delivering => {
                    let mut gone = self.session.event(event, &mut self.out, &mut self.codec);
                    for _ in 0..EVENTS_PER_BURST {
                        match events_rx.try_recv() {
                            Ok(event) => {
                                gone |= self.session.event(event, &mut self.out, &mut self.codec);
                            }
                            Err(_) => break,
                        }
                    }
                    if gone {
                        self.violation(Violation::new(0x80, "the session's queue was deleted"));
                        result = Some(Err(ConnectionError::Protocol(
                            "the session's queue was deleted".to_owned(),
                        )));
                    }
                }
                Some((batch, ok)) = synced_rx.recv() => {
                    if let Err(error) = self.synced(batch, ok) {
                        result = Some(Err(error));
                    }
                }
                Ok(()) = alarm.changed() => {}
                () = keep_alive_expired => {
                    self.violation(Violation::new(0x8D, "keep alive timeout"));
                    result = Some(Err(ConnectionError::KeepAlive(keep_alive)));
                }
                () = slot.taken_over.notified() => {
                    self.violation(Violation::new(0x8E, "session taken over"));
                    result = Some(Err(ConnectionError::TakenOver));
                }
                reason = self.registration.close_requested() => {
                    self.violation(Violation::new(0x98, reason.clone()));
                    result = Some(Err(ConnectionError::Closed(reason)));
                }
                _ = shutdown.changed() => {
                    self.violation(Violation::new(0x8B, "server shutting down"));
                    result = Some(Err(ConnectionError::Shutdown));
                }
            }
        }
        self.end_of_burst();
        result.unwrap_or(Ok(Ended { send_will: true }))
    }

    /// Handles every complete packet in `buffer`; `Some` when the
    /// connection is to end.
    fn handle_buffered(&mut self, buffer: &mut BytesMut) -> Option<Result<Ended, ConnectionError>> {
        loop {
            let packet = match self.codec.decode(buffer) {
                Ok(Some(packet)) => packet,
                Ok(None) => return None,
                Err(error) => {
                    let reason = if error.too_large() { 0x95 } else { 0x81 };
                    self.violation(Violation::new(reason, error.to_string()));
                    return Some(Err(error.into()));
                }
            };
            match self.packet(packet) {
                Ok(None) => {}
                Ok(Some(ended)) => return Some(Ok(ended)),
                Err(violation) => {
                    let text = violation.text.clone();
                    self.violation(violation);
                    return Some(Err(ConnectionError::Protocol(text)));
                }
            }
        }
    }

    /// One packet; `Some` once the client disconnected.
    fn packet(&mut self, packet: Inbound) -> Result<Option<Ended>, Violation> {
        match packet {
            Inbound::Connect(_) => {
                return Err(Violation::new(0x82, "a second CONNECT"));
            }
            Inbound::Publish(publish) => {
                self.published = true;
                self.publish(*publish)?;
            }
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
                // Behind the PUBRECs still waiting, like every answer to
                // a publish.
                self.burst_acks.push(Outbound::PubComp {
                    packet_id: id,
                    reason,
                });
            }
            Inbound::Subscribe {
                packet_id,
                id,
                filters,
            } => {
                let (codes, send_retained) = self.blocking(|c| c.subscribe(id, &filters));
                self.write(Outbound::SubAck { packet_id, codes });
                self.send_retained(&send_retained, id);
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                let codes = self.blocking(|c| c.unsubscribe(&filters));
                self.write(Outbound::UnsubAck { packet_id, codes });
            }
            Inbound::PingReq => self.write(Outbound::PingResp),
            Inbound::Disconnect {
                reason,
                session_expiry_secs,
            } => {
                if let Some(expiry) = session_expiry_secs {
                    if self.connect_expiry_zero && expiry > 0 {
                        // MQTT 5 §3.14.2.2.2.
                        return Err(Violation::new(0x82, "session expiry set after 0"));
                    }
                    self.session_expiry_secs =
                        expiry.min(self.shared.options.max_session_expiry_secs);
                }
                // Only a normal disconnection (0x00) discards the will
                // (MQTT 5 §3.1.2.5).
                return Ok(Some(Ended {
                    send_will: reason != 0,
                }));
            }
            Inbound::Auth => {
                // No Authentication Method was accepted at CONNECT.
                return Err(Violation::new(0x82, "AUTH without enhanced authentication"));
            }
            Inbound::ServerOnly(name) => {
                return Err(Violation::new(0x82, format!("{name} from a client")));
            }
        }
        Ok(None)
    }

    /// Appends `packet` to what goes out.
    pub(crate) fn encode(&mut self, packet: Outbound) -> Result<(), CodecError> {
        self.codec.encode(packet, &mut self.out)
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
        for packet in self.acks.push(packets, syncs).unwrap_or_default() {
            self.write(packet);
        }
    }

    fn synced(&mut self, batch: u64, ok: bool) -> Result<(), ConnectionError> {
        for (packets, ok) in self.acks.finished(batch, ok) {
            if ok {
                for packet in packets {
                    self.write(packet);
                }
                continue;
            }
            // Not durable: MQTT 3 has no negative acknowledgement, so the
            // client must retry on a new connection.
            if !matches!(self.version, Version::V5) {
                return Err(ConnectionError::Protocol(
                    "a publish could not be made durable".to_owned(),
                ));
            }
            for packet in packets {
                if let Outbound::PubRec { packet_id, .. } = &packet {
                    // The exchange ends with a failed PUBREC: the id is free.
                    self.qos2_received.remove(packet_id);
                }
                self.write(failed(packet));
            }
        }
        Ok(())
    }

    /// Runs `f`, off the async worker on a cluster, where declaring,
    /// binding and deleting are blocking commits through the quorum.
    fn blocking<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        if self.broker.topics().metadata().clustered() {
            tokio::task::block_in_place(|| f(self))
        } else {
            f(self)
        }
    }

    fn teardown(&mut self, send_will: bool, slot: &Arc<Slot>) {
        let expiry = self.session_expiry_secs;
        self.blocking(|c| c.session.close(expiry));
        let will = self.will.take().filter(|_| send_will);
        let delayed = will.and_then(|will| crate::publish::send_will(self, will));
        self.shared
            .clients
            .release(self.vhost.name(), &self.client_id, slot, delayed);
        self.broker
            .vhosts()
            .connection_closed(self.registration.id());
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
    connect_expiry_zero: bool,
) -> Connection {
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
        acks: OrderedAcks::new().0,
        published: false,
        connect_expiry_zero,
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
