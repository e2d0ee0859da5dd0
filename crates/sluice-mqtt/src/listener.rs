//! Accepts MQTT connections, one task each, and keeps the client ids
//! connected to this node (a second connection with a client id takes
//! the session over: MQTT 3.1.1 §3.1.4, 5.0 §3.1.4).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{Broker, Claim, Takeover};
use sluice_tls::ServerStream;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot, watch};
use tracing::Instrument;

use crate::connection::Connection;

/// Settings of the MQTT listeners.
#[derive(Debug, Clone)]
pub struct MqttOptions {
    /// The virtual host of a client that names none (`mqtt.vhost`).
    pub vhost: String,
    /// The topic exchange MQTT topics route through (`mqtt.exchange`).
    pub exchange: String,
    /// Whether a client without a user name logs in as `default_user`.
    pub allow_anonymous: bool,
    /// The user and password of anonymous clients.
    pub default_user: String,
    pub default_pass: String,
    /// Longest session expiry granted, in seconds; a persistent MQTT 3
    /// session gets this.
    pub max_session_expiry_secs: u32,
    /// Unacknowledged QoS 1 deliveries per client (the client's Receive
    /// Maximum may lower it).
    pub prefetch: u16,
    /// Largest packet taken or sent.
    pub max_packet_size: u32,
    /// The queue type of persistent sessions' queues: `quorum` survives
    /// the loss of a node on a cluster (a single node keeps it as a
    /// durable classic queue), `classic` lives on the node it was
    /// declared on.
    pub durable_queue_type: String,
    /// Most topic aliases a client may use (MQTT 5).
    pub topic_alias_max: u16,
}

impl Default for MqttOptions {
    fn default() -> Self {
        MqttOptions {
            vhost: "/".to_owned(),
            exchange: "amq.topic".to_owned(),
            allow_anonymous: true,
            default_user: "guest".to_owned(),
            default_pass: "guest".to_owned(),
            max_session_expiry_secs: 86_400,
            prefetch: 10,
            max_packet_size: 16 * 1024 * 1024,
            durable_queue_type: "quorum".to_owned(),
            topic_alias_max: 64,
        }
    }
}

/// What every MQTT connection of the node shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) options: MqttOptions,
    pub(crate) clients: Clients,
}

/// The client ids connected to this node (over any of its MQTT
/// listeners), by virtual host, and the wills waiting for their delay.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
    /// A delayed will's trigger: `true` sends it now (the session ended:
    /// its client came back with a clean start), `false` drops it (the
    /// client came back to the session in time).
    wills: Mutex<HashMap<(String, String), oneshot::Sender<bool>>>,
}

/// One connected client id.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The connection holding it.
    pub(crate) connection: u64,
    /// Whether that connection started clean (ending the session before).
    clean_start: bool,
    /// When and where it claimed the id.
    claim: Claim,
    /// Turns true once the other nodes of a cluster have let the id go
    /// (the connection is past its CONNECT): from then on another node's
    /// takeover ends it whenever it claimed the id.
    pub(crate) settled: AtomicBool,
    /// Told when another connection takes the session over.
    pub(crate) taken_over: Notify,
    /// Turns true once the connection released its session.
    pub(crate) finished: watch::Sender<bool>,
}

/// The longest a stand-in for another node's connection waits for the
/// connection here it replaced to let its session go.
const STAND_IN_LIMIT: Duration = Duration::from_secs(60);

impl Clients {
    /// Takes `client_id` for `connection`; the slot and the connection it
    /// took the id from, if any.
    pub(crate) fn claim(
        &self,
        vhost: &str,
        client_id: &str,
        connection: u64,
        clean_start: bool,
        claim: Claim,
    ) -> (Arc<Slot>, Option<Arc<Slot>>) {
        let slot = Arc::new(Slot {
            connection,
            clean_start,
            claim,
            settled: AtomicBool::new(false),
            taken_over: Notify::new(),
            finished: watch::Sender::new(false),
        });
        let key = (vhost.to_owned(), client_id.to_owned());
        if let Some(will) = self
            .wills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
        {
            let _ = will.send(clean_start);
        }
        let previous = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::clone(&slot));
        (slot, previous)
    }

    /// A client on another node of the cluster took a client id: unless
    /// the connection holding it here is still connecting and claimed it
    /// later (it wins, and its own takeover ends the other), a will
    /// waiting here for its delay is settled as [`Clients::claim`]
    /// settles it, and the connection holding the id here (returned) is
    /// to end. A stand-in for the remote holder takes its slot, so that
    /// the connection's release sees the id taken over (the new
    /// connection's clean start decides its will), and a connection here
    /// claiming the id meanwhile waits for the old one;
    /// [`Clients::retire_stand_in`] removes it.
    pub(crate) fn taken_elsewhere(&self, takeover: &Takeover) -> Option<(Arc<Slot>, Arc<Slot>)> {
        let key = (takeover.vhost.clone(), takeover.client_id.clone());
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let held = slots.get(&key).cloned();
        if held.as_ref().is_some_and(|held| {
            !held.settled.load(Ordering::Acquire) && held.claim > takeover.claim
        }) {
            return None;
        }
        if let Some(will) = self
            .wills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
        {
            let _ = will.send(takeover.clean_start);
        }
        let held = held?;
        let stand_in = Arc::new(Slot {
            connection: 0,
            clean_start: takeover.clean_start,
            claim: takeover.claim,
            settled: AtomicBool::new(true),
            taken_over: Notify::new(),
            finished: watch::Sender::new(false),
        });
        slots.insert(key, Arc::clone(&stand_in));
        Some((held, stand_in))
    }

    /// Once `held` let its session go (or [`STAND_IN_LIMIT`] passed):
    /// `stand_in` (from [`Clients::taken_elsewhere`]) is finished, and
    /// removed unless a connection here took the id since.
    pub(crate) async fn retire_stand_in(
        &self,
        key: (String, String),
        held: Arc<Slot>,
        stand_in: Arc<Slot>,
    ) {
        let mut finished = held.finished.subscribe();
        let _ = tokio::time::timeout(STAND_IN_LIMIT, finished.wait_for(|done| *done)).await;
        stand_in.finished.send_replace(true);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots
            .get(&key)
            .is_some_and(|now| Arc::ptr_eq(now, &stand_in))
        {
            slots.remove(&key);
        }
    }

    /// Gives `slot` back, unless another connection took the id since;
    /// `will` is the trigger of a will waiting for its delay.
    pub(crate) fn release(
        &self,
        vhost: &str,
        client_id: &str,
        slot: &Arc<Slot>,
        will: Option<oneshot::Sender<bool>>,
    ) {
        let key = (vhost.to_owned(), client_id.to_owned());
        let taken_by = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(&key) {
                Some(held) if Arc::ptr_eq(held, slot) => {
                    slots.remove(&key);
                    None
                }
                held => held.cloned(),
            }
        };
        if let Some(will) = will {
            if let Some(holder) = taken_by {
                // Taken over: the client is back in time, unless it
                // started clean, which ends the session (and sends the
                // will now).
                let _ = will.send(holder.clean_start);
            } else {
                let mut wills = self.wills.lock().unwrap_or_else(|e| e.into_inner());
                wills.retain(|_, pending| !pending.is_closed());
                wills.insert(key, will);
            }
        }
        slot.finished.send_replace(true);
    }
}

/// The MQTT front-end of a node: its listeners share the connected
/// client ids (a client moving from MQTT to MQTTS or WebSocket takes its
/// session). On a cluster, set as the broker's
/// [`sluice_core::SessionTakeover`], it ends its holder of a client id a
/// client on another node took.
#[derive(Debug, Clone)]
pub struct MqttNode {
    shared: Arc<Shared>,
}

impl MqttNode {
    pub fn new(options: MqttOptions) -> MqttNode {
        MqttNode {
            shared: Arc::new(Shared {
                options,
                clients: Clients::default(),
            }),
        }
    }

    /// Makes this node's holders of a client id end when a client on
    /// another node of the cluster takes the id.
    pub fn attach(&self, broker: &Broker) {
        broker
            .connections()
            .set_session_takeover(Arc::new(self.clone()));
    }

    /// Serves one client whose bytes come over another transport (MQTT
    /// over WebSocket, `/ws/mqtt` on the HTTP listener), until it ends.
    pub async fn serve_stream(
        &self,
        broker: Arc<Broker>,
        halves: (sluice_tls::ReadHalf, sluice_tls::WriteHalf),
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        let registration = match broker
            .connections()
            .register(sluice_core::Protocol::Mqtt, peer)
        {
            Ok(registration) => registration,
            Err(refused) => {
                tracing::warn!(%peer, reason = %refused, "mqtt over websocket refused");
                return;
            }
        };
        let span =
            tracing::info_span!("conn", conn_id = registration.id(), %peer, protocol = "mqtt-ws");
        serve_connection(
            registration,
            halves,
            peer,
            broker,
            Arc::clone(&self.shared),
            shutdown,
        )
        .instrument(span)
        .await;
    }
}

impl sluice_core::SessionTakeover for MqttNode {
    fn take_over(
        &self,
        takeover: &Takeover,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        let taken = self.shared.clients.taken_elsewhere(takeover);
        let shared = Arc::clone(&self.shared);
        let key = (takeover.vhost.clone(), takeover.client_id.clone());
        Box::pin(async move {
            let Some((held, stand_in)) = taken else {
                return;
            };
            tracing::info!(client_id = %key.1, connection = held.connection, "session taken over on another node");
            // The stand-in stays until the connection let its session go,
            // however long that takes; the answer goes back within the
            // takeover wait.
            tokio::spawn({
                let held = Arc::clone(&held);
                async move { shared.clients.retire_stand_in(key, held, stand_in).await }
            });
            crate::connection::wait_for_takeover(&held).await;
        })
    }
}

async fn serve_connection(
    registration: sluice_core::ConnectionHandle,
    halves: (sluice_tls::ReadHalf, sluice_tls::WriteHalf),
    peer: SocketAddr,
    broker: Arc<Broker>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    match Connection::run(registration, halves, peer, broker, shared, shutdown).await {
        Ok(()) => tracing::debug!("connection closed"),
        Err(reason) if reason.is_disconnect() => {
            tracing::debug!(reason = %sluice_types::ErrorChain(&reason), "client disconnected");
        }
        Err(reason) => {
            tracing::info!(reason = %sluice_types::ErrorChain(&reason), "connection closed");
        }
    }
}

/// Accepts MQTT connections for `node` until `shutdown` turns true;
/// `tls` makes it the MQTTS listener.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    node: MqttNode,
    tls: Option<Arc<sluice_tls::Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = node.shared;
    let scheme = if tls.is_some() { "mqtts" } else { "mqtt" };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "mqtt accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let registration = match broker
            .connections()
            .register(sluice_core::Protocol::Mqtt, peer)
        {
            Ok(registration) => registration,
            Err(refused) => {
                tracing::warn!(%peer, reason = %refused, "mqtt connection refused");
                drop(stream);
                continue;
            }
        };
        let conn_id = registration.id();
        let span = tracing::info_span!("conn", conn_id, %peer, protocol = "mqtt");
        let tasks = Arc::clone(broker.tasks());
        let broker = Arc::clone(&broker);
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(
            async move {
                let Some(stream) = ServerStream::accept(stream, tls.as_deref(), scheme, peer).await
                else {
                    return;
                };
                serve_connection(registration, stream.split(), peer, broker, shared, shutdown)
                    .await;
            }
            .instrument(span),
        );
    }
    tracing::info!(scheme, "mqtt listener stopped");
}
