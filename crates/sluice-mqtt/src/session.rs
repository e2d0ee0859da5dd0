//! An MQTT session over the core's queues, as RabbitMQ keeps one: the
//! session's subscriptions are bindings of its queue
//! `mqtt-subscription-{client id}qos1` to the topic exchange, so they
//! outlive the connection for a persistent session (a durable queue
//! expiring `x-expires` after the session expiry interval) and die with it
//! for a clean one (an exclusive queue). A shared subscription
//! (`$share/{group}/{filter}`) is a queue of its own, consumed by every
//! session of the group in turn.
//!
//! Subscription options ride on the binding's arguments, so a persistent
//! session gets them back with its bindings when the client returns.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::BytesMut;
use sluice_core::messaging::Queue;
use sluice_core::messaging::{
    ConsumerEvent, ConsumerSpec, Credit, Delivery, Destination, QueueOptions, VirtualHost,
    integer_value, short, string_value,
};
use sluice_core::permissions::Access;
use sluice_core::{Broker, ConnectionHandle};
use tokio::sync::mpsc::UnboundedSender;

use crate::connection::{Connection, new_connection, refusal, wait_for_takeover};
use crate::listener::Slot;
use crate::message;
use crate::packets::{
    Codec, ConnAck, ConnackCode, Connect, Outbound, SubscriptionOptions, Version,
};
use crate::topic;

const QOS_ARG: &str = "x-mqtt-subscription-qos";
const ID_ARG: &str = "x-mqtt-subscription-id";
const NO_LOCAL_ARG: &str = "x-mqtt-no-local";
const RAP_ARG: &str = "x-mqtt-retain-as-published";
/// How long a clean session's queue outlives a crashed node on a cluster
/// (it is deleted when its connection ends).
const CLEAN_SESSION_EXPIRY_MS: u64 = 60_000;
/// The consumer tag on the session's queue.
const SESSION_TAG: &str = "mqtt-session";
/// How long a new connection waits for the other nodes of a cluster to
/// end their holder of its client id (each waits up to the takeover wait
/// for it to let the session go).
const REMOTE_TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(7);
/// The subscription's filter as the client wrote it.
const FILTER_ARG: &str = "x-mqtt-filter";

/// One subscription of the session's queue.
#[derive(Debug, Clone)]
struct Subscription {
    options: SubscriptionOptions,
    id: Option<u32>,
    /// The binding's arguments, which identify it.
    arguments: FieldTable,
}

/// A shared subscription: its own queue, consumed here.
#[derive(Debug)]
struct Shared {
    queue: Arc<Queue>,
    options: SubscriptionOptions,
    id: Option<u32>,
    tag: Arc<str>,
}

/// A QoS 1 delivery the client has not acknowledged.
#[derive(Debug)]
struct InFlight {
    queue: Option<Arc<Queue>>,
    seq: u64,
}

/// The session of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    vhost: Arc<VirtualHost>,
    exchange: String,
    connection: u64,
    /// Consumer key: unique in the broker (AMQP channels use
    /// `connection << 16 | channel` with channel ≥ 1).
    key: u64,
    queue_name: String,
    client_id: String,
    /// Whether the queue outlives the connection.
    durable: bool,
    /// `x-queue-type` of a durable session's queue.
    durable_type: String,
    /// Whether the node is part of a cluster.
    clustered: bool,
    expiry_ms: Option<u64>,
    queue: Option<Arc<Queue>>,
    subscriptions: BTreeMap<String, Subscription>,
    shared: BTreeMap<String, Shared>,
    credit: Arc<Credit>,
    /// Deliveries at QoS 1 in flight at most (the client's Receive
    /// Maximum and `mqtt.prefetch`).
    window: usize,
    sink: UnboundedSender<ConsumerEvent>,
    in_flight: HashMap<u16, InFlight>,
    next_packet_id: u16,
    /// Queues whose consumers got credit back.
    to_dispatch: Vec<Arc<Queue>>,
    /// Deliveries settled in this burst, by queue.
    to_settle: Vec<(Arc<Queue>, Vec<u64>)>,
    /// Shared subscriptions' queues left at close.
    left_shared: Vec<Arc<Queue>>,
    pub(crate) keep_alive: u16,
}

/// The queue of `client_id`'s session (RabbitMQ's name).
pub(crate) fn queue_name(client_id: &str) -> String {
    format!("mqtt-subscription-{client_id}qos1")
}

/// Logs a client in and sets its session up: the connection, the slot
/// of its client id, and the CONNACK; or the refusing CONNACK and why.
pub(crate) async fn accept(
    broker: &Arc<Broker>,
    shared: &Arc<crate::listener::Shared>,
    registration: ConnectionHandle,
    peer: SocketAddr,
    connect: Connect,
    codec: &mut Codec,
    sink: UnboundedSender<ConsumerEvent>,
) -> Result<(Connection, Arc<Slot>, ConnAck), (ConnAck, String)> {
    let options = &shared.options;
    let refuse = |code: ConnackCode, reason: String| Err((refusal(code, &reason), reason));
    if connect.auth_method.is_some() {
        return refuse(
            ConnackCode::BadAuthenticationMethod,
            "enhanced authentication is not offered".to_owned(),
        );
    }
    // RabbitMQ's `vhost:user` user names; else `mqtt.vhost`.
    let (vhost_name, user, password) = match (&connect.username, &connect.password) {
        (Some(name), password) => {
            let (vhost, user) = match name.split_once(':') {
                Some((vhost, user)) if broker.vhosts().get(vhost).is_some() => {
                    (vhost.to_owned(), user.to_owned())
                }
                _ => (options.vhost.clone(), name.clone()),
            };
            let password = password
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            (vhost, user, password)
        }
        (None, _) if options.allow_anonymous => (
            options.vhost.clone(),
            options.default_user.clone(),
            options.default_pass.clone(),
        ),
        (None, _) => {
            return refuse(
                ConnackCode::BadUserNameOrPassword,
                "anonymous logins are not allowed".to_owned(),
            );
        }
    };
    let principal = broker
        .users()
        .authenticate_async(user.clone(), password, peer.ip())
        .await;
    if principal.is_none() {
        broker.users().login_refused(peer.ip(), &user, "mqtt").await;
        return refuse(
            ConnackCode::BadUserNameOrPassword,
            format!("login refused for user '{user}'"),
        );
    }
    let Some(vhost) = broker.vhosts().get(&vhost_name) else {
        return refuse(
            ConnackCode::NotAuthorized,
            format!("no virtual host '{vhost_name}'"),
        );
    };
    if !broker.permissions().may_open(&user, vhost.name()) {
        return refuse(
            ConnackCode::NotAuthorized,
            format!("user '{user}' has no permissions on virtual host '{vhost_name}'"),
        );
    }
    let v5 = connect.version == Version::V5;
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            // MQTT 3.1.1 §3.1.3.1: an empty id needs a clean session.
            return refuse(
                ConnackCode::ClientIdentifierNotValid,
                "an empty client id needs a clean session".to_owned(),
            );
        }
        let id = format!("sluice-{}-{}", registration.id(), unique_suffix());
        assigned = v5.then(|| id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    // MQTT 3 sessions: clean is gone at disconnect, persistent lasts the
    // longest expiry allowed; MQTT 5 asks for its expiry.
    let expiry = if v5 {
        connect
            .session_expiry_secs
            .min(options.max_session_expiry_secs)
    } else if connect.clean_start {
        0
    } else {
        options.max_session_expiry_secs
    };
    if v5 && connect.will.as_ref().is_some_and(|will| will.qos > 1) {
        // CONNACK advertises Maximum QoS 1 (MQTT 5 §3.2.2.3.4).
        return refuse(
            ConnackCode::QosNotSupported,
            "a will at QoS 2: the server's Maximum QoS is 1".to_owned(),
        );
    }
    let claim = sluice_core::Claim {
        since_ms: now_ms(),
        node: broker.node_id(),
    };
    let (slot, previous) = shared.clients.claim(
        vhost.name(),
        &client_id,
        registration.id(),
        connect.clean_start,
        claim,
    );
    if let Some(previous) = previous {
        tracing::info!(client_id = %client_id, "taking over the session of connection {}", previous.connection);
        wait_for_takeover(&previous).await;
    }
    // The id is the cluster's: a holder on another node ends (and lets
    // the session's queue go) before this one takes it. An id the broker
    // made up is nobody else's.
    if broker.topics().metadata().clustered() && !connect.client_id.is_empty() {
        let takeover = sluice_core::Takeover {
            vhost: vhost.name().to_owned(),
            client_id: client_id.clone(),
            clean_start: connect.clean_start,
            claim,
        };
        let broker = Arc::clone(broker);
        let _ = tokio::task::spawn_blocking(move || {
            broker.take_over_elsewhere(&takeover, REMOTE_TAKEOVER_WAIT);
        })
        .await;
    }
    slot.settled
        .store(true, std::sync::atomic::Ordering::Release);
    let connection_id = registration.id();
    let name = queue_name(&client_id);
    let existing = vhost.queue(&name).is_some() || vhost.remote_queue(&name).is_some();
    if connect.clean_start
        && existing
        && let Err(error) = vhost.delete_queue(&name, false, false, connection_id)
    {
        tracing::warn!(queue = %name, %error, "cannot discard the earlier session");
    }
    let session_present = existing && !connect.clean_start;
    registration.stats().update_details(|details| {
        details.user = Some(user.clone());
        details.vhost = Some(vhost.name().to_owned());
        details.client_name = Some(client_id.clone());
        details.protocol_version = Some(connect.version.name().to_owned());
    });
    let window = options.prefetch.min(connect.receive_max).max(1);
    if let Some(limit) = connect.max_packet_size {
        codec.limit_outbound(limit);
    }
    let session = Session {
        vhost: Arc::clone(&vhost),
        exchange: options.exchange.clone(),
        connection: connection_id,
        key: connection_id << 16,
        queue_name: name,
        client_id: client_id.clone(),
        durable: expiry > 0,
        durable_type: options.durable_queue_type.clone(),
        clustered: broker.topics().metadata().clustered(),
        expiry_ms: (expiry > 0).then(|| u64::from(expiry) * 1000),
        queue: None,
        subscriptions: BTreeMap::new(),
        shared: BTreeMap::new(),
        credit: Credit::new(u32::from(window), None),
        window: usize::from(window),
        sink,
        in_flight: HashMap::new(),
        next_packet_id: 1,
        to_dispatch: Vec::new(),
        to_settle: Vec::new(),
        left_shared: Vec::new(),
        keep_alive: connect.keep_alive,
    };
    let connack = ConnAck {
        session_present,
        code: ConnackCode::Success,
        reason: None,
        assigned_client_id: assigned,
        session_expiry_secs: (v5 && expiry != connect.session_expiry_secs).then_some(expiry),
        receive_max: u16::MAX,
        topic_alias_max: options.topic_alias_max,
        max_packet_size: options.max_packet_size,
    };
    tracing::debug!(client_id = %client_id, user = %user, version = connect.version.name(), session_present, "mqtt client connected");
    let connection = new_connection(
        Arc::clone(broker),
        Arc::clone(shared),
        registration,
        connect.version,
        vhost,
        user,
        client_id,
        session,
        std::mem::replace(codec, Codec::new(options.max_packet_size)),
        connect.will,
        expiry,
        v5 && connect.session_expiry_secs == 0,
    );
    Ok((connection, slot, connack))
}

fn unique_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64 & 0xffff_ffff)
}

impl Session {
    /// For a session the client returns to: its subscriptions from the
    /// queue's bindings, and its queue consumed again.
    pub(crate) fn restore(&mut self) {
        let exists = self.vhost.queue(&self.queue_name).is_some()
            || self.vhost.remote_queue(&self.queue_name).is_some();
        if !exists {
            return;
        }
        for binding in self.vhost.bindings() {
            if binding.source != self.exchange
                || binding.destination != Destination::Queue(self.queue_name.clone())
            {
                continue;
            }
            let (options, id, filter) = options_of(&binding.arguments);
            let filter = filter.unwrap_or_else(|| topic::filter_from_amqp(&binding.routing_key));
            self.subscriptions.insert(
                filter,
                Subscription {
                    options,
                    id,
                    arguments: binding.arguments.clone(),
                },
            );
        }
        if let Err(error) = self.consume_session_queue() {
            tracing::warn!(queue = %self.queue_name, %error, "cannot consume the session's queue");
        }
    }

    /// The session queue's declaration. A persistent session's queue is
    /// durable, of `mqtt.durable_queue_type`, and expires after the
    /// session expiry. A clean session's is exclusive on a single node;
    /// on a cluster it is a durable classic queue (only durable
    /// definitions are known to every node, and other nodes must route
    /// to it), deleted when the connection ends or, after a crash, a
    /// minute unused.
    fn queue_options(&self) -> QueueOptions {
        let mut arguments = FieldTable::default();
        let (durable, queue_type, expiry_ms) = match self.expiry_ms {
            Some(expiry) if self.durable => (true, self.durable_type.as_str(), expiry),
            _ if self.clustered => (true, "classic", CLEAN_SESSION_EXPIRY_MS),
            _ => (false, "classic", 0),
        };
        if durable {
            arguments.insert(
                short("x-expires"),
                AMQPValue::LongLongInt(i64::try_from(expiry_ms).unwrap_or(i64::MAX)),
            );
            arguments.insert(
                short("x-queue-type"),
                AMQPValue::LongString(queue_type.into()),
            );
        }
        QueueOptions {
            durable,
            exclusive_owner: (!durable).then_some(self.connection),
            auto_delete: false,
            arguments,
        }
    }

    /// Declares the session's queue if need be, and consumes it.
    fn consume_session_queue(&mut self) -> Result<(), String> {
        if self.queue.is_some() {
            return Ok(());
        }
        let exists = self.vhost.queue(&self.queue_name).is_some()
            || self.vhost.remote_queue(&self.queue_name).is_some();
        if !exists {
            let options = self.queue_options();
            self.vhost
                .declare_queue(&self.queue_name, options, false, self.connection)
                .map_err(|e| e.to_string())?;
        }
        let queue = self
            .vhost
            .usable_queue(&self.queue_name, self.connection)
            .map_err(|e| e.to_string())?;
        self.add_consumer(&queue, Arc::from(SESSION_TAG))?;
        self.queue = Some(queue);
        Ok(())
    }

    fn add_consumer(&mut self, queue: &Arc<Queue>, tag: Arc<str>) -> Result<(), String> {
        let spec = ConsumerSpec {
            tag,
            channel: self.key,
            connection: self.connection,
            no_ack: false,
            exclusive: false,
            priority: 0,
            credit: Arc::clone(&self.credit),
            sink: self.sink.clone(),
            stream_start: None,
        };
        let dead = queue.add_consumer(spec).map_err(|e| e.to_string())?;
        self.vhost.dead_letter(dead);
        Ok(())
    }

    /// A delivery from a queue: a PUBLISH, at the QoS the matching
    /// subscriptions granted. True when the session's own queue went
    /// away (the connection then ends, as RabbitMQ ends it).
    pub(crate) fn event(
        &mut self,
        event: ConsumerEvent,
        out: &mut BytesMut,
        codec: &mut Codec,
    ) -> bool {
        let delivery = match event {
            ConsumerEvent::Deliver(delivery) => delivery,
            ConsumerEvent::Cancelled { consumer_tag, .. } => {
                tracing::info!(tag = %consumer_tag, "a queue of the session went away");
                if &*consumer_tag == SESSION_TAG {
                    self.queue = None;
                    return true;
                }
                self.shared.retain(|_, shared| shared.tag != consumer_tag);
                return false;
            }
        };
        let topic = topic::from_amqp(delivery.message.routing_key.as_str());
        if topic::validate_name(&topic).is_err() {
            // Published over AMQP with a key no MQTT topic has.
            tracing::debug!(
                routing_key = delivery.message.routing_key.as_str(),
                "not an MQTT topic: dropped"
            );
            self.settle(&delivery);
            return false;
        }
        let own = message::published_by(&delivery.message) == Some(self.client_id.as_str());
        let (granted, ids, retain_as_published) = if &*delivery.consumer_tag == SESSION_TAG {
            let mut granted = None;
            let mut ids = Vec::new();
            let mut rap = false;
            for (filter, subscription) in &self.subscriptions {
                if topic::matches(filter, &topic) && !(own && subscription.options.no_local) {
                    granted = granted.max(Some(subscription.options.qos));
                    ids.extend(subscription.id);
                    rap |= subscription.options.retain_as_published;
                }
            }
            let Some(granted) = granted else {
                // No subscription takes it by MQTT's rules (a `$` topic
                // under `#`, No Local, or one unsubscribed since).
                self.settle(&delivery);
                return false;
            };
            (granted, ids, rap)
        } else {
            match self
                .shared
                .values()
                .find(|s| s.tag == delivery.consumer_tag)
            {
                Some(shared) => (
                    shared.options.qos,
                    shared.id.into_iter().collect(),
                    shared.options.retain_as_published,
                ),
                None => (1, Vec::new(), false),
            }
        };
        let qos = message::published_qos(&delivery.message)
            .min(granted)
            .min(1);
        let retain = retain_as_published && message::was_retained(&delivery.message);
        let mut publish = message::to_publish(&delivery.message, qos, retain, now_ms());
        publish.properties.subscription_ids = ids;
        publish.dup = delivery.redelivered && qos > 0;
        if qos > 0 {
            let Some(id) = self.allocate_packet_id() else {
                self.credit.release(1);
                self.give_back(&delivery);
                return false;
            };
            publish.packet_id = Some(id);
            self.in_flight.insert(
                id,
                InFlight {
                    queue: Some(Arc::clone(&delivery.queue)),
                    seq: delivery.seq,
                },
            );
        }
        let packet_id = publish.packet_id;
        let sent = codec.encode(Outbound::Publish(Box::new(publish)), out);
        if qos == 0 || sent.is_err() {
            if let Err(error) = &sent {
                // Over the client's Maximum Packet Size: dropped, as MQTT 5
                // §3.1.2.11.4 says.
                tracing::debug!(%error, "a delivery was dropped");
                if let Some(id) = packet_id {
                    self.in_flight.remove(&id);
                }
            }
            self.settle(&delivery);
        }
        false
    }

    fn settle(&mut self, delivery: &Delivery) {
        self.credit.release(1);
        self.settle_later(&delivery.queue, delivery.seq);
    }

    /// Settles at the end of the burst, each queue's deliveries in one
    /// call (a durable queue writes one settlement record for them).
    fn settle_later(&mut self, queue: &Arc<Queue>, seq: u64) {
        match self
            .to_settle
            .iter_mut()
            .find(|(q, _)| Arc::ptr_eq(q, queue))
        {
            Some((_, seqs)) => seqs.push(seq),
            None => self.to_settle.push((Arc::clone(queue), vec![seq])),
        }
        self.dispatch_all();
    }

    fn flush_settlements(&mut self) {
        for (queue, seqs) in std::mem::take(&mut self.to_settle) {
            if let Err(error) = queue.ack(&seqs) {
                tracing::warn!(queue = queue.name(), %error, "cannot settle deliveries");
            }
        }
    }

    /// The session's credit is shared by its queues: each may deliver
    /// again once some came back.
    fn dispatch_all(&mut self) {
        let queues = self
            .queue
            .iter()
            .chain(self.shared.values().map(|shared| &shared.queue));
        for queue in queues {
            if !self.to_dispatch.iter().any(|q| Arc::ptr_eq(q, queue)) {
                self.to_dispatch.push(Arc::clone(queue));
            }
        }
    }

    /// Lets queues whose consumers got credit back deliver again.
    pub(crate) fn dispatch(&mut self) {
        self.flush_settlements();
        for queue in std::mem::take(&mut self.to_dispatch) {
            let dead = queue.dispatch();
            self.vhost.dead_letter(dead);
        }
    }

    /// A free packet id; `None` when all 65535 are in flight.
    fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.in_flight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// A packet id for a retained message sent at QoS 1 (no queue to
    /// settle); `None` while the client's window is full, and the
    /// message then goes at QoS 0.
    pub(crate) fn retained_packet_id(&mut self) -> Option<u16> {
        if self.in_flight.len() >= self.window {
            return None;
        }
        let id = self.allocate_packet_id()?;
        self.in_flight.insert(
            id,
            InFlight {
                queue: None,
                seq: 0,
            },
        );
        Some(id)
    }

    /// A retained message's packet id, when its PUBLISH could not be sent.
    pub(crate) fn forget_packet_id(&mut self, id: u16) {
        self.in_flight.remove(&id);
    }

    /// PUBACK of a QoS 1 delivery.
    pub(crate) fn acked(&mut self, id: u16) {
        let Some(in_flight) = self.in_flight.remove(&id) else {
            return;
        };
        let Some(queue) = in_flight.queue else {
            return;
        };
        self.credit.release(1);
        self.settle_later(&queue, in_flight.seq);
    }

    /// A delivery that never reached the client goes back to its queue.
    pub(crate) fn give_back(&self, delivery: &Delivery) {
        match delivery.queue.requeue(&[delivery.seq]) {
            Ok(dead) => self.vhost.dead_letter(dead),
            Err(error) => {
                tracing::warn!(queue = delivery.queue.name(), %error, "cannot give back a delivery");
            }
        }
    }

    /// SUBSCRIBE's filters: the reason code of each, and the filters
    /// whose retained messages go out now (MQTT 5 Retain Handling: 0
    /// always, 1 for a new subscription, 2 never; none for a shared one).
    pub(crate) fn subscribe(
        &mut self,
        user: &str,
        broker: &Broker,
        id: Option<u32>,
        filters: &[(String, SubscriptionOptions)],
        v5: bool,
    ) -> (Vec<u8>, Vec<(String, SubscriptionOptions)>) {
        let mut retained = Vec::new();
        let codes = filters
            .iter()
            .map(|(text, options)| {
                let granted = SubscriptionOptions {
                    qos: options.qos.min(1),
                    ..*options
                };
                match self.subscribe_one(user, broker, id, text, granted) {
                    Ok(new) => {
                        let send = match granted.retain_handling {
                            0 => true,
                            1 => new,
                            _ => false,
                        };
                        if send && !text.starts_with("$share/") {
                            retained.push((text.clone(), granted));
                        }
                        granted.qos
                    }
                    Err(code) => {
                        if v5 {
                            code
                        } else {
                            0x80
                        }
                    }
                }
            })
            .collect();
        (codes, retained)
    }

    /// One filter; whether the subscription is new.
    fn subscribe_one(
        &mut self,
        user: &str,
        broker: &Broker,
        id: Option<u32>,
        text: &str,
        options: SubscriptionOptions,
    ) -> Result<bool, u8> {
        let filter = topic::parse_filter(text).map_err(|invalid| {
            tracing::debug!(filter = text, reason = invalid.0, "subscription refused");
            0x8F
        })?;
        if filter.group.is_some() && options.no_local {
            // MQTT 5 §3.8.3.1: a protocol error; refused here.
            return Err(0x8F);
        }
        let key = topic::to_amqp(&filter.filter);
        if key.len() > 255 {
            tracing::debug!(
                filter = text,
                "subscription refused: longer than a routing key"
            );
            return Err(0x8F);
        }
        let permissions = broker.permissions();
        let vhost = self.vhost.name();
        let queue_name = match &filter.group {
            Some(group) => shared_queue_name(group, &filter.filter),
            None => self.queue_name.clone(),
        };
        let allowed = permissions.allows(user, vhost, Access::Read, &self.exchange)
            && permissions.allows(user, vhost, Access::Write, &queue_name)
            && permissions.allows(user, vhost, Access::Configure, &queue_name)
            && permissions.allows_topic(user, vhost, &self.exchange, Access::Read, &key);
        if !allowed {
            tracing::info!(user, filter = text, "subscription refused: no permission");
            return Err(0x87);
        }
        if let Some(group) = &filter.group {
            return self.subscribe_shared(text, group, &filter.filter, &key, options, id);
        }
        let arguments = binding_arguments(&filter.filter, options, id);
        let earlier = self.subscriptions.get(&filter.filter).cloned();
        if earlier.as_ref().is_some_and(|e| e.arguments == arguments) {
            return Ok(false);
        }
        self.consume_session_queue().map_err(|error| {
            tracing::warn!(queue = %self.queue_name, %error, "cannot set the session's queue up");
            0x80
        })?;
        // The new binding first, then the old one goes: no message is
        // missed in between (MQTT §3.8.4).
        self.vhost
            .bind(
                &self.exchange,
                Destination::Queue(self.queue_name.clone()),
                &key,
                &arguments,
                self.connection,
            )
            .map_err(|error| {
                tracing::warn!(queue = %self.queue_name, %error, "cannot bind the session's queue");
                0x80
            })?;
        if let Some(earlier) = &earlier {
            let _ = self.vhost.unbind(
                &self.exchange,
                Destination::Queue(self.queue_name.clone()),
                &key,
                &earlier.arguments,
                self.connection,
            );
        }
        self.subscriptions.insert(
            filter.filter,
            Subscription {
                options,
                id,
                arguments,
            },
        );
        Ok(earlier.is_none())
    }

    fn subscribe_shared(
        &mut self,
        text: &str,
        group: &str,
        filter: &str,
        key: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<bool, u8> {
        if let Some(shared) = self.shared.get_mut(text) {
            shared.options = options;
            shared.id = id;
            return Ok(false);
        }
        let name = shared_queue_name(group, filter);
        let declared = self.vhost.declare_queue(
            &name,
            // Durable on a cluster, so that every node routes to it.
            QueueOptions {
                durable: self.clustered,
                exclusive_owner: None,
                auto_delete: true,
                arguments: FieldTable::default(),
            },
            false,
            self.connection,
        );
        let queue = declared
            .and_then(|_| {
                self.vhost.bind(
                    &self.exchange,
                    Destination::Queue(name.clone()),
                    key,
                    &FieldTable::default(),
                    self.connection,
                )
            })
            .and_then(|()| self.vhost.usable_queue(&name, self.connection))
            .map_err(|error| {
                tracing::warn!(queue = %name, %error, "cannot set a shared subscription up");
                0x80
            })?;
        let tag: Arc<str> = Arc::from(format!("mqtt-share:{text}").as_str());
        self.add_consumer(&queue, Arc::clone(&tag))
            .map_err(|error| {
                tracing::warn!(queue = %name, %error, "cannot consume a shared subscription");
                0x80
            })?;
        self.shared.insert(
            text.to_owned(),
            Shared {
                queue,
                options,
                id,
                tag,
            },
        );
        Ok(true)
    }

    /// UNSUBSCRIBE's filters: the reason code of each.
    pub(crate) fn unsubscribe(&mut self, filters: &[String]) -> Vec<u8> {
        filters
            .iter()
            .map(|text| {
                if let Some(shared) = self.shared.remove(text) {
                    self.leave(&shared.queue, &shared.tag);
                    return 0;
                }
                let Some(subscription) = self.subscriptions.remove(text) else {
                    return 0x11;
                };
                let removed = self.vhost.unbind(
                    &self.exchange,
                    Destination::Queue(self.queue_name.clone()),
                    &topic::to_amqp(text),
                    &subscription.arguments,
                    self.connection,
                );
                match removed {
                    Ok(()) => 0,
                    Err(error) => {
                        tracing::warn!(filter = %text, %error, "cannot unbind");
                        0x80
                    }
                }
            })
            .collect()
    }

    fn leave(&self, queue: &Arc<Queue>, tag: &str) {
        let (_, dead) = self.vhost.remove_consumer(queue, self.key, tag);
        self.vhost.dead_letter(dead);
        // Also when the queue dropped the consumer itself (a delivery it
        // could not hand over): an auto-delete queue without consumers
        // goes (the call checks the consumers, not the flag).
        if queue.options().auto_delete
            && let Err(error) = self.vhost.auto_delete_queue(queue)
        {
            tracing::warn!(queue = queue.name(), %error, "cannot auto-delete a queue");
        }
    }

    /// The connection is gone: consumers leave, unacknowledged deliveries
    /// go back; a session with no expiry left is deleted.
    pub(crate) fn close(&mut self, expiry_secs: u32) {
        // What the client acknowledged is settled before the rest goes
        // back.
        self.flush_settlements();
        let shared: Vec<Arc<Queue>> = std::mem::take(&mut self.shared)
            .into_values()
            .map(|shared| {
                self.leave(&shared.queue, &shared.tag);
                shared.queue
            })
            .collect();
        self.left_shared = shared;
        if let Some(queue) = self.queue.take() {
            self.leave(&queue, SESSION_TAG);
        }
        let mut by_queue: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
        for (_, in_flight) in self.in_flight.drain() {
            let Some(queue) = in_flight.queue else {
                continue;
            };
            match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &queue)) {
                Some((_, seqs)) => seqs.push(in_flight.seq),
                None => by_queue.push((queue, vec![in_flight.seq])),
            }
        }
        for (queue, seqs) in by_queue {
            match queue.requeue(&seqs) {
                Ok(dead) => self.vhost.dead_letter(dead),
                Err(error) => {
                    tracing::warn!(queue = queue.name(), %error, "cannot requeue on close");
                }
            }
        }
        if expiry_secs == 0
            && let Err(error) =
                self.vhost
                    .delete_queue(&self.queue_name, false, false, self.connection)
        {
            tracing::warn!(queue = %self.queue_name, %error, "cannot delete the ended session's queue");
        }
    }

    /// After the last deliveries went back: shared subscriptions' queues
    /// the session left, deleted if it was their last consumer.
    pub(crate) fn delete_auto_delete_queues(&mut self) {
        for queue in std::mem::take(&mut self.left_shared) {
            if queue.options().auto_delete
                && let Err(error) = self.vhost.auto_delete_queue(&queue)
            {
                tracing::warn!(queue = queue.name(), %error, "cannot auto-delete a queue");
            }
        }
    }

    /// Every topic filter of the session, shared ones with their prefix.
    pub(crate) fn filters(&self) -> Vec<String> {
        self.subscriptions
            .keys()
            .chain(self.shared.keys())
            .cloned()
            .collect()
    }
}

/// The queue of a shared subscription: a share name holds no `/`, so
/// no two (group, filter) pairs share one.
fn shared_queue_name(group: &str, filter: &str) -> String {
    format!("mqtt-shared-{group}/{filter}")
}

fn binding_arguments(filter: &str, options: SubscriptionOptions, id: Option<u32>) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(short(FILTER_ARG), AMQPValue::LongString(filter.into()));
    arguments.insert(short(QOS_ARG), AMQPValue::ShortShortUInt(options.qos));
    if options.no_local {
        arguments.insert(short(NO_LOCAL_ARG), AMQPValue::Boolean(true));
    }
    if options.retain_as_published {
        arguments.insert(short(RAP_ARG), AMQPValue::Boolean(true));
    }
    if let Some(id) = id {
        arguments.insert(short(ID_ARG), AMQPValue::LongUInt(id));
    }
    arguments
}

/// A binding's subscription options, identifier and filter.
fn options_of(arguments: &FieldTable) -> (SubscriptionOptions, Option<u32>, Option<String>) {
    let table = arguments.inner();
    let flag = |name: &str| matches!(table.get(name), Some(AMQPValue::Boolean(true)));
    let qos = table
        .get(QOS_ARG)
        .and_then(integer_value)
        .and_then(|q| u8::try_from(q).ok())
        .unwrap_or(1);
    let id = table
        .get(ID_ARG)
        .and_then(integer_value)
        .and_then(|i| u32::try_from(i).ok());
    (
        SubscriptionOptions {
            qos,
            no_local: flag(NO_LOCAL_ARG),
            retain_as_published: flag(RAP_ARG),
            retain_handling: 0,
        },
        id,
        table.get(FILTER_ARG).and_then(string_value),
    )
}

/// Wall-clock milliseconds (the broker's clock).
pub(crate) use sluice_core::now_ms;

impl Connection {
    /// SUBSCRIBE: binds, then answers.
    pub(crate) fn subscribe(
        &mut self,
        id: Option<u32>,
        filters: &[(String, SubscriptionOptions)],
    ) -> (Vec<u8>, Vec<(String, SubscriptionOptions)>) {
        let v5 = self.version == Version::V5;
        let broker = Arc::clone(&self.broker);
        let answer = self.session.subscribe(&self.user, &broker, id, filters, v5);
        self.show_subscriptions();
        answer
    }

    /// UNSUBSCRIBE.
    pub(crate) fn unsubscribe(&mut self, filters: &[String]) -> Vec<u8> {
        let codes = self.session.unsubscribe(filters);
        self.show_subscriptions();
        codes
    }

    /// The session's filters, for the admin API.
    pub(crate) fn show_subscriptions(&self) {
        let filters = self.session.filters();
        self.registration
            .stats()
            .update_details(|details| details.subscriptions = filters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_options_come_back_from_the_binding() {
        let options = SubscriptionOptions {
            qos: 1,
            no_local: true,
            retain_as_published: true,
            retain_handling: 0,
        };
        let arguments = binding_arguments("a/+/b*c", options, Some(42));
        assert_eq!(
            options_of(&arguments),
            (options, Some(42), Some("a/+/b*c".to_owned()))
        );
        assert_eq!(queue_name("dev-1"), "mqtt-subscription-dev-1qos1");
    }
}
