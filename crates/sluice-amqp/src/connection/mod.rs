//! One AMQP connection: the state it owns, the loop that reads frames and
//! hands them to channels, writes deliveries from queues and publisher
//! confirms, keeps heartbeats, and closes channels and the connection.
//!
//! A separate task writes to the socket so that a client that stops
//! reading never stops this task from reading (a publisher blocked on its
//! own send would otherwise deadlock with us).
//!
//! The handshake is in `handshake.rs`, transactions (`tx.*`) in `tx.rs`,
//! and the publisher confirms' waiter in `confirms.rs`.

mod confirms;
mod handshake;
mod tx;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, channel as channel_class, connection};
use bytes::{Bytes, BytesMut};
use sluice_core::messaging::{ConsumerEvent, DeadLetters, Queue, VirtualHost};
use sluice_core::{Broker, ConnectionHandle, ConnectionStats};
use sluice_tls::{ReadHalf, ServerStream, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use self::confirms::{ConfirmDone, SyncRequest};
use self::handshake::{HANDSHAKE_FRAME_MAX, HANDSHAKE_TIMEOUT};
use crate::channel::{Channel, ChannelState, Context, confirm_select};
use crate::errors::{
    AmqpError, CHANNEL_ERROR, COMMAND_INVALID, CONNECTION_FORCED, NOT_ALLOWED, Scope,
    UNEXPECTED_FRAME,
};
use crate::frames::{self, Frame};
use crate::handlers;
use crate::listener::AmqpOptions;
use crate::metrics;

/// Most encoded bytes one turn of the loop adds before handing them to the
/// writer; with the writer's queue of 64 turns it bounds what a connection
/// holds for a client that does not read (16 MiB plus one message).
const MAX_BURST_BYTES: usize = 256 * 1024;
/// How long a closing side waits for the peer's close-ok.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("socket error")]
    Io(#[from] std::io::Error),
    #[error("client sent protocol header {0:?}, not AMQP 0-9-1")]
    BadHeader(Vec<u8>),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("closed by the broker: {0}")]
    Closed(String),
    #[error("missed heartbeats from client, timeout: {0}s")]
    MissedHeartbeats(u16),
    #[error("client closed the connection during the handshake")]
    HandshakeEof,
}

impl ConnectionError {
    /// Whether the client just went away (end of stream, reset, broken
    /// pipe): nothing an operator needs to act on.
    pub(crate) fn is_disconnect(&self) -> bool {
        match self {
            ConnectionError::Io(error) => sluice_types::is_disconnect(error),
            // A port probe, or a client that gave up before logging in.
            ConnectionError::HandshakeEof => true,
            _ => false,
        }
    }
}

/// State of one connection, owned by its task.
pub(crate) struct Connection {
    id: u64,
    peer: SocketAddr,
    broker: Arc<Broker>,
    options: Arc<AmqpOptions>,
    frame_max: usize,
    channel_max: u16,
    heartbeat: u16,
    vhost: Option<Arc<VirtualHost>>,
    /// The user who logged in.
    user: String,
    /// The client's certificate, if it sent one over AMQPS.
    certificate: Option<sluice_tls::PeerCertificate>,
    /// With `kafka.acls`, the Kafka principal and host the bridge checks
    /// (`None` also for a super user, who passes every check).
    kafka_principal: Option<(String, String)>,
    channels: HashMap<u16, Channel>,
    out: BytesMut,
    dispatch: Vec<Arc<Queue>>,
    events_tx: mpsc::UnboundedSender<ConsumerEvent>,
    confirms_tx: mpsc::UnboundedSender<ConfirmDone>,
    /// Feeds the connection's sync waiter (started on first use).
    syncer: Option<std::sync::mpsc::Sender<SyncRequest>>,
    /// Set once the server sent `connection.close`.
    closing: Option<AmqpError>,
    /// Set when the connection is finished (close-ok exchanged).
    done: bool,
    /// The client announced the `connection.blocked` capability.
    blocked_capable: bool,
    /// The connection has published; only publishers are blocked.
    published: bool,
    /// Not read from while the memory alarm lasts.
    blocked: bool,
    /// The connection's entry in the broker's registry.
    registration: ConnectionHandle,
    /// Transactional ids its channels' commits used (forgotten with it).
    transactional_ids: Vec<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) async fn run(
        registration: ConnectionHandle,
        stream: ServerStream,
        peer: SocketAddr,
        broker: Arc<Broker>,
        options: Arc<AmqpOptions>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        let certificate = match stream.peer_certificate() {
            Some(Err(error)) => {
                // No EXTERNAL login for it; a password login still works.
                tracing::info!(%peer, %error, "AMQPS client certificate ignored");
                None
            }
            other => other.and_then(Result::ok),
        };
        let (reader, writer) = stream.split();
        let (write_tx, write_rx) = mpsc::channel::<Bytes>(64);
        let writer_task = tokio::spawn(write_loop(
            writer,
            write_rx,
            Arc::clone(registration.stats()),
        ));
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let (confirms_tx, confirms_rx) = mpsc::unbounded_channel();
        let mut connection = Connection {
            id: registration.id(),
            peer,
            broker,
            frame_max: options.frame_max as usize,
            channel_max: options.channel_max,
            heartbeat: options.heartbeat,
            options,
            vhost: None,
            user: String::new(),
            certificate,
            kafka_principal: None,
            channels: HashMap::new(),
            out: BytesMut::with_capacity(64 << 10),
            dispatch: Vec::new(),
            events_tx,
            confirms_tx,
            syncer: None,
            closing: None,
            done: false,
            blocked_capable: false,
            published: false,
            blocked: false,
            registration,
            transactional_ids: Vec::new(),
        };
        let mut reader = Reader {
            half: reader,
            buf: BytesMut::with_capacity(64 << 10),
            stats: Arc::clone(connection.registration.stats()),
        };
        let result = connection
            .serve(
                &mut reader,
                &write_tx,
                &mut events_rx,
                confirms_rx,
                shutdown,
            )
            .await;
        connection.teardown();
        connection.give_back_undelivered(&mut events_rx);
        drop(write_tx);
        let _ = writer_task.await;
        result
    }

    async fn serve(
        &mut self,
        reader: &mut Reader,
        write_tx: &mpsc::Sender<Bytes>,
        events_rx: &mut mpsc::UnboundedReceiver<ConsumerEvent>,
        mut confirms_rx: mpsc::UnboundedReceiver<ConfirmDone>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(reader, write_tx)).await {
            Err(_) => return Err(ConnectionError::HandshakeTimeout),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(false)) => return self.finish_close(reader, write_tx).await,
            Ok(Ok(true)) => {}
        }
        let period = if self.heartbeat == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(u64::from(self.heartbeat) * 500)
        };
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        let mut last_read = Instant::now();
        let mut alarm = self.broker.admission().changes();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.close_connection(AmqpError::connection(
                        CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
                Ok(()) = alarm.changed() => {}
                reason = self.registration.close_requested() => {
                    self.close_connection(AmqpError::connection(CONNECTION_FORCED, reason));
                }
                read = reader.fill(), if !self.blocked => {
                    if read? == 0 {
                        return Ok(());
                    }
                    last_read = Instant::now();
                    let hold = matches!(
                        self.broker.admission().check(sluice_core::Writer::AmqpPublish),
                        sluice_core::Verdict::Wait(_)
                    );
                    self.process_buffered(reader, hold).await;
                }
                Some(event) = events_rx.recv() => {
                    self.event(event);
                    // Deliveries are encoded a burst at a time: a consumer
                    // that does not read holds up the writer, then this
                    // loop, and the rest wait as queue references instead
                    // of encoded frames.
                    for _ in 0..1024 {
                        if self.out.len() >= MAX_BURST_BYTES {
                            break;
                        }
                        match events_rx.try_recv() {
                            Ok(event) => self.event(event),
                            Err(_) => break,
                        }
                    }
                }
                Some(done) = confirms_rx.recv() => {
                    self.confirm_done(done);
                    while let Ok(done) = confirms_rx.try_recv() {
                        self.confirm_done(done);
                    }
                }
                _ = heartbeat.tick() => {
                    if self.blocked {
                        // Not reading, so the client's heartbeats wait in
                        // the socket; they are not missed.
                        last_read = Instant::now();
                    }
                    if self.heartbeat != 0 {
                        if last_read.elapsed() > Duration::from_secs(u64::from(self.heartbeat) * 2) {
                            return Err(ConnectionError::MissedHeartbeats(self.heartbeat));
                        }
                        frames::put_heartbeat(&mut self.out);
                    }
                }
            }
            self.end_of_burst();
            let hold = matches!(
                self.broker
                    .admission()
                    .check(sluice_core::Writer::AmqpPublish),
                sluice_core::Verdict::Wait(_)
            );
            if self.follow_alarm(hold) && !self.blocked {
                // Unblocked: frames held back in the buffer go first.
                self.process_buffered(reader, false).await;
                self.end_of_burst();
            }
            if !self.out.is_empty() && write_tx.send(self.out.split().freeze()).await.is_err() {
                return Ok(());
            }
            if self.done {
                return Ok(());
            }
            if self.closing.is_some() {
                return self.finish_close(reader, write_tx).await;
            }
        }
    }

    /// Handles the whole frames in the read buffer. While a resource alarm
    /// is raised, a `basic.publish` stays in the buffer (and the connection
    /// becomes a blocked publisher) instead of being handled.
    async fn process_buffered(&mut self, reader: &mut Reader, alarm: bool) {
        loop {
            if alarm && frames::starts_with_publish(&reader.buf) {
                self.published = true;
                break;
            }
            match frames::parse(&mut reader.buf, self.frame_max) {
                Ok(Some(frame)) => self.frame(frame).await,
                Ok(None) => break,
                Err(error) => {
                    self.close_connection(error);
                    break;
                }
            }
            if self.closing.is_some() || self.done {
                break;
            }
        }
    }

    /// Blocks a publishing connection while a resource alarm lasts
    /// (RabbitMQ's `connection.blocked` extension), and unblocks it after;
    /// true when the state changed.
    fn follow_alarm(&mut self, alarm: bool) -> bool {
        let block = alarm && self.published && self.closing.is_none();
        if block == self.blocked {
            return false;
        }
        self.blocked = block;
        if self.blocked_capable {
            let method = if block {
                connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: self
                        .broker
                        .admission()
                        .raised()
                        .map_or("low on memory", sluice_core::Alarm::reason)
                        .into(),
                })
            } else {
                connection::AMQPMethod::Unblocked(connection::Unblocked {})
            };
            frames::put_method(&mut self.out, 0, AMQPClass::Connection(method));
        }
        tracing::debug!(blocked = block, "publishing connection flow");
        true
    }

    /// Waits for the client's close-ok after the server closed.
    async fn finish_close(
        &mut self,
        reader: &mut Reader,
        write_tx: &mpsc::Sender<Bytes>,
    ) -> Result<(), ConnectionError> {
        if !self.out.is_empty() {
            let _ = write_tx.send(self.out.split().freeze()).await;
        }
        let reason = self
            .closing
            .as_ref()
            .map_or_else(String::new, |e| e.text.clone());
        let wait = async {
            loop {
                match frames::parse(&mut reader.buf, HANDSHAKE_FRAME_MAX.max(self.frame_max)) {
                    Ok(Some(Frame::Method(0, class))) => {
                        if matches!(
                            *class,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                                | AMQPClass::Connection(connection::AMQPMethod::Close(_))
                        ) {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => match reader.fill().await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
        Err(ConnectionError::Closed(reason))
    }

    fn queue_close(&mut self) {
        if let Some(error) = &self.closing {
            frames::put_method(
                &mut self.out,
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: error.code,
                    reply_text: error.reply_text().into(),
                    class_id: error.class_id,
                    method_id: error.method_id,
                })),
            );
        }
    }

    /// Server-initiated connection close: channels are torn down and only
    /// close-ok is awaited from now on.
    fn close_connection(&mut self, error: AmqpError) {
        if self.closing.is_some() {
            return;
        }
        tracing::info!(
            code = error.code,
            reason = %error.text,
            vhost = self.vhost.as_ref().map_or("", |vhost| vhost.name()),
            user = %self.user,
            peer = %self.peer,
            "AMQP connection error; closing the connection"
        );
        self.teardown();
        self.closing = Some(error);
        self.queue_close();
    }

    fn close_channel(&mut self, id: u16, error: AmqpError) {
        tracing::info!(
            channel = id,
            code = error.code,
            reason = %error.text,
            vhost = self.vhost.as_ref().map_or("", |vhost| vhost.name()),
            user = %self.user,
            peer = %self.peer,
            "AMQP channel error; closing the channel"
        );
        if let (Some(channel), Some(vhost)) = (self.channels.get_mut(&id), self.vhost.as_ref()) {
            channel.close(vhost);
            channel.state = ChannelState::Closing;
        }
        frames::put_method(
            &mut self.out,
            id,
            AMQPClass::Channel(channel_class::AMQPMethod::Close(channel_class::Close {
                reply_code: error.code,
                reply_text: error.reply_text().into(),
                class_id: error.class_id,
                method_id: error.method_id,
            })),
        );
    }

    fn fail(&mut self, channel: u16, error: AmqpError) {
        match error.scope {
            Scope::Channel if channel != 0 => self.close_channel(channel, error),
            _ => self.close_connection(error),
        }
    }

    /// Releases everything the connection holds in the core.
    /// Deliveries dispatched to this connection's consumers and not
    /// written before it closed go back to their queues (redelivered),
    /// as what its channels held did at teardown; later ones find the
    /// receiver closed and go back there.
    fn give_back_undelivered(&self, events_rx: &mut mpsc::UnboundedReceiver<ConsumerEvent>) {
        events_rx.close();
        while let Ok(event) = events_rx.try_recv() {
            let ConsumerEvent::Deliver(delivery) = event else {
                continue;
            };
            match delivery.queue.requeue(&[delivery.seq]) {
                Ok(dead) => {
                    if let Some(vhost) = &self.vhost {
                        vhost.dead_letter(dead);
                    }
                }
                Err(error) => {
                    tracing::warn!(queue = delivery.queue.name(), %error, "cannot give back a delivery of a closed connection");
                }
            }
        }
    }

    fn teardown(&mut self) {
        if let Some(vhost) = self.vhost.clone() {
            for (_, mut channel) in self.channels.drain() {
                channel.close(&vhost);
            }
            self.broker.vhosts().connection_closed(self.id);
        }
        let ids = std::mem::take(&mut self.transactional_ids);
        if !ids.is_empty() {
            // The coordinator forgets the ids of its commits (each was
            // this connection's alone), off the async workers.
            let broker = Arc::clone(&self.broker);
            tokio::task::spawn_blocking(move || broker.transactions().forget(&ids));
        }
    }

    async fn frame(&mut self, frame: Frame) {
        if self.closing.is_some() {
            return;
        }
        let (channel, result) = match frame {
            Frame::Heartbeat => (0, Ok(())),
            Frame::Method(0, class) => (0, self.connection_method(*class)),
            Frame::Method(id, class) => {
                let started = std::time::Instant::now();
                let method = (class.get_amqp_class_id(), class.get_amqp_method_id());
                if method == metrics::BASIC_PUBLISH {
                    self.published = true;
                }
                let result = self.channel_method(id, *class).await;
                if method != metrics::BASIC_PUBLISH {
                    self.observe(method, started);
                }
                match self.channels.get(&id) {
                    Some(channel) => channel.refresh_stats(),
                    None => self.registration.stats().close_channel(id),
                }
                (id, result)
            }
            Frame::Header(0, _) | Frame::Body(0, _) => (
                0,
                Err(AmqpError::connection(
                    UNEXPECTED_FRAME,
                    "content frame on channel 0",
                )),
            ),
            Frame::Header(id, header) => (id, self.content(id, |ch| ch.content_header(*header))),
            Frame::Body(id, body) => (id, self.content(id, |ch| ch.content_body(body))),
        };
        if let Err(error) = result {
            self.fail(channel, error);
        }
    }

    fn connection_method(&mut self, class: AMQPClass) -> Result<(), AmqpError> {
        match class {
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                tracing::debug!(
                    code = close.reply_code,
                    text = close.reply_text.as_str(),
                    "client closed the connection"
                );
                self.teardown();
                frames::put_method(
                    &mut self.out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.done = true;
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                self.done = true;
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                frames::put_method(
                    &mut self.out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            other => Err(AmqpError::connection(
                COMMAND_INVALID,
                format!(
                    "unexpected method {}.{} on channel 0",
                    other.get_amqp_class_id(),
                    other.get_amqp_method_id()
                ),
            )
            .during(other.get_amqp_class_id(), other.get_amqp_method_id())),
        }
    }

    fn content(
        &mut self,
        id: u16,
        step: impl FnOnce(
            &mut Channel,
        ) -> Result<
            Option<(
                amq_protocol::protocol::basic::Publish,
                sluice_core::messaging::Message,
            )>,
            AmqpError,
        >,
    ) -> Result<(), AmqpError> {
        let Some(channel) = self.channels.get_mut(&id) else {
            return Err(AmqpError::connection(
                CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {id}"),
            ));
        };
        if channel.state == ChannelState::Closing {
            return Ok(());
        }
        let Some((method, message)) = step(channel)? else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let result = self.with_channel(id, |ctx, channel| {
            handlers::basic::publish(ctx, channel, method, message)
        });
        self.observe(metrics::BASIC_PUBLISH, started);
        result
    }

    /// Records one handled method in the broker's request metrics.
    fn observe(&self, (class_id, method_id): (u16, u16), started: std::time::Instant) {
        if let (Some(index), Some(histograms)) = (
            metrics::index(class_id, method_id),
            self.broker.metrics().amqp.get(),
        ) {
            histograms.observe(index, started.elapsed());
        }
    }

    fn with_channel<T>(
        &mut self,
        id: u16,
        work: impl FnOnce(&mut Context<'_>, &mut Channel) -> Result<T, AmqpError>,
    ) -> Result<T, AmqpError> {
        let Some(vhost) = self.vhost.as_ref() else {
            return Err(AmqpError::connection(
                COMMAND_INVALID,
                "connection not open",
            ));
        };
        let Some(channel) = self.channels.get_mut(&id) else {
            return Err(AmqpError::connection(
                CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {id}"),
            ));
        };
        let mut ctx = Context {
            connection: self.id,
            user: &self.user,
            vhost,
            out: &mut self.out,
            frame_max: self.frame_max,
            events: &self.events_tx,
            dispatch: &mut self.dispatch,
            permissions: self.broker.permissions(),
            kafka: self.options.kafka_acls.as_ref().and_then(|rules| {
                let (principal, host) = self.kafka_principal.as_ref()?;
                Some(crate::channel::KafkaCheck {
                    acls: self.broker.acls(),
                    principal,
                    host,
                    everyone_if_none: rules.everyone_if_none,
                })
            }),
        };
        work(&mut ctx, channel)
    }

    /// What the AMQP limits count for `vhost` and `user` over the cluster,
    /// off the async threads (other nodes are asked over their links).
    async fn limit_counts(&self, vhost: &str, user: &str) -> sluice_core::AmqpCounts {
        let broker = Arc::clone(&self.broker);
        let (vhost, user) = (vhost.to_owned(), user.to_owned());
        tokio::task::spawn_blocking(move || broker.amqp_counts(&vhost, &user))
            .await
            .unwrap_or_default()
    }

    async fn channel_method(&mut self, id: u16, class: AMQPClass) -> Result<(), AmqpError> {
        if let AMQPClass::Channel(channel_class::AMQPMethod::Open(_)) = class {
            if self.channels.contains_key(&id) {
                return Err(
                    AmqpError::connection(CHANNEL_ERROR, "second 'channel.open' seen")
                        .during(20, 10),
                );
            }
            if id > self.channel_max {
                return Err(AmqpError::connection(
                    NOT_ALLOWED,
                    format!(
                        "channel id {id} exceeds negotiated channel_max {}",
                        self.channel_max
                    ),
                )
                .during(20, 10));
            }
            if let Some(limit) = self.broker.limits().user(&self.user, "max-channels") {
                let vhost = self.vhost.as_ref().map_or("", |v| v.name()).to_owned();
                let counts = self.limit_counts(&vhost, &self.user).await;
                if counts.user_channels >= limit {
                    return Err(AmqpError::connection(
                        NOT_ALLOWED,
                        format!(
                            "number of channels opened for user '{}' has reached the maximum allowed user limit of ({limit})",
                            self.user
                        ),
                    )
                    .during(20, 10));
                }
            }
            let stats = self.registration.stats().open_channel(id);
            self.channels.insert(id, Channel::new(id, self.id, stats));
            frames::put_method(
                &mut self.out,
                id,
                AMQPClass::Channel(channel_class::AMQPMethod::OpenOk(channel_class::OpenOk {})),
            );
            return Ok(());
        }
        let Some(channel) = self.channels.get_mut(&id) else {
            return Err(AmqpError::connection(
                CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {id}"),
            ));
        };
        if channel.state == ChannelState::Closing {
            match class {
                AMQPClass::Channel(channel_class::AMQPMethod::CloseOk(_)) => {
                    self.channels.remove(&id);
                }
                AMQPClass::Channel(channel_class::AMQPMethod::Close(_)) => {
                    frames::put_method(
                        &mut self.out,
                        id,
                        AMQPClass::Channel(channel_class::AMQPMethod::CloseOk(
                            channel_class::CloseOk {},
                        )),
                    );
                    self.channels.remove(&id);
                }
                _ => {}
            }
            return Ok(());
        }
        if channel.expects_content() {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "expected content header for class 60, got non content header frame instead",
            ));
        }
        let class_id = class.get_amqp_class_id();
        let method_id = class.get_amqp_method_id();
        let result = match class {
            AMQPClass::Channel(channel_class::AMQPMethod::Close(_)) => {
                if let (Some(mut channel), Some(vhost)) =
                    (self.channels.remove(&id), self.vhost.as_ref())
                {
                    channel.close(vhost);
                }
                frames::put_method(
                    &mut self.out,
                    id,
                    AMQPClass::Channel(channel_class::AMQPMethod::CloseOk(
                        channel_class::CloseOk {},
                    )),
                );
                Ok(())
            }
            AMQPClass::Channel(channel_class::AMQPMethod::Flow(flow)) => {
                channel.channel_credit.set_paused(!flow.active);
                let queues: Vec<Arc<Queue>> = channel
                    .consumers
                    .values()
                    .map(|c| Arc::clone(&c.queue))
                    .collect();
                for queue in &queues {
                    if !self.dispatch.iter().any(|q| Arc::ptr_eq(q, queue)) {
                        self.dispatch.push(Arc::clone(queue));
                    }
                }
                frames::put_method(
                    &mut self.out,
                    id,
                    AMQPClass::Channel(channel_class::AMQPMethod::FlowOk(channel_class::FlowOk {
                        active: flow.active,
                    })),
                );
                Ok(())
            }
            AMQPClass::Channel(channel_class::AMQPMethod::CloseOk(_)) => Ok(()),
            AMQPClass::Access(_) => {
                frames::put_method(
                    &mut self.out,
                    id,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                );
                Ok(())
            }
            AMQPClass::Exchange(m) => {
                self.with_channel(id, |ctx, ch| handlers::exchange::handle(ctx, ch, m))
            }
            AMQPClass::Queue(m) => {
                self.with_channel(id, |ctx, ch| handlers::queue::handle(ctx, ch, m))
            }
            AMQPClass::Basic(m) => {
                self.with_channel(id, |ctx, ch| handlers::basic::handle(ctx, ch, m))
            }
            AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::Select(m)) => {
                self.with_channel(id, |ctx, ch| confirm_select(ctx, ch, m))
            }
            AMQPClass::Tx(m) => self.tx(id, m).await,
            other => Err(handlers::unexpected_method(&other)),
        };
        result.map_err(|e| e.during(class_id, method_id))
    }

    fn event(&mut self, event: ConsumerEvent) {
        match event {
            ConsumerEvent::Deliver(delivery) => {
                let id = (delivery.channel & 0xFFFF) as u16;
                let queue = Arc::clone(&delivery.queue);
                let seq = delivery.seq;
                let delivered = self
                    .with_channel(id, |ctx, channel| {
                        let delivered = channel.state == ChannelState::Open
                            && handlers::basic::deliver(ctx, channel, delivery);
                        channel.refresh_stats();
                        Ok(delivered)
                    })
                    .unwrap_or(false);
                if !delivered {
                    // The consumer went away while this was in flight.
                    match queue.requeue(&[seq]) {
                        Ok(dead) => self.dead_letter(dead),
                        Err(error) => {
                            tracing::warn!(queue = queue.name(), %error, "cannot requeue an orphaned delivery");
                        }
                    }
                }
            }
            ConsumerEvent::Cancelled {
                channel,
                consumer_tag,
            } => {
                let id = (channel & 0xFFFF) as u16;
                if let Some(channel) = self.channels.get_mut(&id)
                    && channel.consumers.remove(&consumer_tag).is_some()
                    && channel.state == ChannelState::Open
                {
                    frames::put_method(
                        &mut self.out,
                        id,
                        AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Cancel(
                            amq_protocol::protocol::basic::Cancel {
                                consumer_tag: sluice_core::messaging::short(&consumer_tag),
                                nowait: true,
                            },
                        )),
                    );
                }
            }
        }
    }

    /// After a burst of frames or events: start waiting for the syncs of
    /// publishes to confirm, send confirms that need no wait, and dispatch
    /// queues whose consumers got credit back.
    fn end_of_burst(&mut self) {
        self.seal_confirms();
        for queue in std::mem::take(&mut self.dispatch) {
            let dead = queue.dispatch();
            self.dead_letter(dead);
        }
    }

    /// Routes what died in a queue of this connection's virtual host.
    fn dead_letter(&self, dead: DeadLetters) {
        if let Some(vhost) = &self.vhost {
            vhost.dead_letter(dead);
        }
    }
}

/// The read half with its buffer. `fill` is cancel-safe: bytes read stay in
/// `buf` when a `select!` drops the future.
struct Reader {
    half: ReadHalf,
    buf: BytesMut,
    stats: Arc<ConnectionStats>,
}

impl Reader {
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 << 10);
        }
        let read = self.half.read_buf(&mut self.buf).await?;
        self.stats.add_bytes_in(read);
        Ok(read)
    }
}

async fn write_loop(
    mut writer: WriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    stats: Arc<ConnectionStats>,
) {
    while let Some(first) = rx.recv().await {
        if writer.write_all(&first).await.is_err() {
            return;
        }
        stats.add_bytes_out(first.len());
        while let Ok(more) = rx.try_recv() {
            if writer.write_all(&more).await.is_err() {
                return;
            }
            stats.add_bytes_out(more.len());
        }
        // TLS keeps what the socket did not take in its own buffer until
        // flushed (plain TCP has none).
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}
