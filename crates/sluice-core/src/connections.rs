//! Every open client connection of either protocol, for the admin API and
//! metrics: who it is, what it has moved, its AMQP channels, and a way to
//! ask its task to close it.
//!
//! A front-end registers a connection when it accepts it and holds the
//! returned [`ConnectionHandle`] for the connection's life; dropping the
//! handle removes the entry. Counters are atomics the connection task
//! bumps without a lock; the details (user, client name) change once or
//! twice per connection and sit behind a mutex.
//!
//! The registry also enforces the connection caps (`limits.max_connections`
//! and `limits.max_connections_per_ip`): [`Connections::register`] refuses
//! a connection over either.
//!
//! A front-end whose clients hold a name across the cluster (an MQTT
//! client id) sets a [`SessionTakeover`]: another node whose client takes
//! the name asks this node, over the inter-node link, to end the holder
//! here ([`Connections::take_over_here`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tokio::sync::watch;

/// The wire protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Kafka,
    Amqp,
    Mqtt,
    Stomp,
}

impl Protocol {
    /// `kafka`, `amqp`, `mqtt` or `stomp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Kafka => "kafka",
            Protocol::Amqp => "amqp",
            Protocol::Mqtt => "mqtt",
            Protocol::Stomp => "stomp",
        }
    }
}

/// What a connection says about itself after the handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionDetails {
    /// The authenticated user (AMQP).
    pub user: Option<String>,
    /// The virtual host opened (AMQP).
    pub vhost: Option<String>,
    /// Kafka `client.id`, AMQP `connection_name` (else `product`), or
    /// the MQTT client id.
    pub client_name: Option<String>,
    /// The protocol's version, where a connection chooses one (MQTT
    /// `3.1.1` or `5.0`).
    pub protocol_version: Option<String>,
    /// An MQTT session's topic filters.
    pub subscriptions: Vec<String>,
}

/// What the AMQP limits count on a node (see [`Connections::amqp_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AmqpCounts {
    /// AMQP connections open to the virtual host.
    pub vhost_connections: u64,
    /// AMQP connections of the user.
    pub user_connections: u64,
    /// Channels open on the user's AMQP connections.
    pub user_channels: u64,
}

impl AmqpCounts {
    /// Adds another node's counts.
    pub fn add(&mut self, other: AmqpCounts) {
        self.vhost_connections += other.vhost_connections;
        self.user_connections += other.user_connections;
        self.user_channels += other.user_channels;
    }
}

/// One AMQP channel as the admin API shows it.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Consumers on this channel.
    pub consumers: AtomicU32,
    /// Per-consumer prefetch (basic.qos), 0 for none.
    pub prefetch: AtomicU32,
    /// Deliveries not yet acknowledged.
    pub unacked: AtomicU64,
    /// Publisher confirms are on.
    pub confirm: AtomicBool,
    /// The channel is in a transaction (tx.select).
    pub transactional: AtomicBool,
}

/// One registered connection.
#[derive(Debug)]
pub struct ConnectionStats {
    id: u64,
    protocol: Protocol,
    peer: SocketAddr,
    connected_at_ms: i64,
    details: Mutex<ConnectionDetails>,
    /// Bytes read from the client.
    pub bytes_in: AtomicU64,
    /// Bytes written to the client.
    pub bytes_out: AtomicU64,
    channels: Mutex<BTreeMap<u16, Arc<ChannelStats>>>,
    close: watch::Sender<Option<String>>,
}

impl ConnectionStats {
    /// Broker-wide connection id; never 0.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// When the connection was accepted, milliseconds since the epoch.
    pub fn connected_at_ms(&self) -> i64 {
        self.connected_at_ms
    }

    pub fn details(&self) -> ConnectionDetails {
        lock(&self.details).clone()
    }

    /// Changes the details in place.
    pub fn update_details(&self, change: impl FnOnce(&mut ConnectionDetails)) {
        change(&mut lock(&self.details));
    }

    /// The open channels by number.
    pub fn channels(&self) -> Vec<(u16, Arc<ChannelStats>)> {
        lock(&self.channels)
            .iter()
            .map(|(number, stats)| (*number, Arc::clone(stats)))
            .collect()
    }

    pub fn channel_count(&self) -> usize {
        lock(&self.channels).len()
    }

    /// Registers an opened channel and returns its counters.
    pub fn open_channel(&self, number: u16) -> Arc<ChannelStats> {
        let stats = Arc::new(ChannelStats::default());
        lock(&self.channels).insert(number, Arc::clone(&stats));
        stats
    }

    pub fn close_channel(&self, number: u16) {
        lock(&self.channels).remove(&number);
    }

    /// Asks the connection's task to close, giving `reason` to the client
    /// where the protocol can carry it.
    pub fn request_close(&self, reason: String) {
        self.close.send_replace(Some(reason));
    }

    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The live entry of a connection, held by its task; dropping it
/// unregisters the connection.
#[derive(Debug)]
pub struct ConnectionHandle {
    stats: Arc<ConnectionStats>,
    registry: Weak<Connections>,
    closed: watch::Receiver<Option<String>>,
}

impl ConnectionHandle {
    pub fn stats(&self) -> &Arc<ConnectionStats> {
        &self.stats
    }

    pub fn id(&self) -> u64 {
        self.stats.id
    }

    /// Resolves with the reason once someone asked this connection to close
    /// (the admin API); pending forever otherwise.
    pub async fn close_requested(&mut self) -> String {
        loop {
            if let Some(reason) = self.closed.borrow_and_update().clone() {
                return reason;
            }
            if self.closed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            let mut open = lock(&registry.open);
            open.entries.remove(&self.stats.id);
            let ip = self.stats.peer.ip();
            if let Some(count) = open.per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    open.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Caps on open connections; `None` is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections of both protocols together.
    pub total: Option<u32>,
    /// Open connections from one IP address.
    pub per_ip: Option<u32>,
}

/// Why [`Connections::register`] refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefused {
    #[error("connection limit ({limit}) reached (limits.max_connections)")]
    Total { limit: u32 },
    #[error(
        "connection limit per IP address ({limit}) reached by {ip} (limits.max_connections_per_ip)"
    )]
    PerIp { ip: IpAddr, limit: u32 },
}

#[derive(Debug, Default)]
struct Open {
    entries: BTreeMap<u64, Arc<ConnectionStats>>,
    per_ip: HashMap<IpAddr, u32>,
}

/// The registry of open connections.
#[derive(Debug)]
pub struct Connections {
    open: Mutex<Open>,
    limits: ConnectionLimits,
    next_id: AtomicU64,
    /// Connections accepted since start, per protocol (Kafka, AMQP).
    opened: [AtomicU64; 4],
    /// Connections refused by a cap since start.
    refused: AtomicU64,
    /// Ends a session held here that a client on another node took.
    takeover: OnceLock<Arc<dyn SessionTakeover>>,
}

/// A client that took a client id (an MQTT session) on one node of a
/// cluster, as the other nodes hear of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    pub vhost: String,
    pub client_id: String,
    /// The new connection started clean: the session ends (a will
    /// waiting for its delay goes out now; else it is dropped).
    pub clean_start: bool,
    /// When and where it claimed the id.
    pub claim: Claim,
}

/// When (wall-clock milliseconds) and on which node a connection claimed
/// a client id: of two connections racing for one id on two nodes, the
/// later claim wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    pub since_ms: i64,
    pub node: i32,
}

/// What ends this node's holder of a client id (an MQTT session) that a
/// client on another node of the cluster just took.
pub trait SessionTakeover: Send + Sync {
    /// Ends the connection holding the id here, if any (unless it is
    /// still connecting and claimed the id after `takeover` did: then it
    /// wins, and ends the other), and settles a will waiting for its
    /// delay; ready once the holder has let its session go.
    fn take_over(&self, takeover: &Takeover) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

impl std::fmt::Debug for dyn SessionTakeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionTakeover")
    }
}

impl Connections {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            open: Mutex::new(Open::default()),
            limits,
            next_id: AtomicU64::new(1),
            opened: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
            refused: AtomicU64::new(0),
            takeover: OnceLock::new(),
        })
    }

    /// Registers a newly accepted connection, unless it would pass a cap.
    ///
    /// # Errors
    /// [`ConnectionRefused`] naming the cap; nothing is registered.
    pub fn register(
        self: &Arc<Self>,
        protocol: Protocol,
        peer: SocketAddr,
    ) -> Result<ConnectionHandle, ConnectionRefused> {
        let mut open = lock(&self.open);
        let from_ip = open.per_ip.get(&peer.ip()).copied().unwrap_or(0);
        let refused = match self.limits {
            ConnectionLimits {
                total: Some(limit), ..
            } if open.entries.len() >= limit as usize => Some(ConnectionRefused::Total { limit }),
            ConnectionLimits {
                per_ip: Some(limit),
                ..
            } if from_ip >= limit => Some(ConnectionRefused::PerIp {
                ip: peer.ip(),
                limit,
            }),
            _ => None,
        };
        if let Some(refused) = refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(refused);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (close, closed) = watch::channel(None);
        let stats = Arc::new(ConnectionStats {
            id,
            protocol,
            peer,
            connected_at_ms: crate::now_ms(),
            details: Mutex::new(ConnectionDetails::default()),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            channels: Mutex::new(BTreeMap::new()),
            close,
        });
        open.entries.insert(id, Arc::clone(&stats));
        *open.per_ip.entry(peer.ip()).or_default() += 1;
        drop(open);
        self.opened[protocol_index(protocol)].fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionHandle {
            stats,
            registry: Arc::downgrade(self),
            closed,
        })
    }

    /// Every open connection, by id.
    pub fn list(&self) -> Vec<Arc<ConnectionStats>> {
        lock(&self.open).entries.values().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<ConnectionStats>> {
        lock(&self.open).entries.get(&id).cloned()
    }

    /// Open connections: (Kafka, AMQP).
    pub fn open_counts(&self) -> (u64, u64) {
        let open = lock(&self.open);
        let mut counts = (0, 0);
        for connection in open.entries.values() {
            match connection.protocol() {
                Protocol::Kafka => counts.0 += 1,
                Protocol::Amqp => counts.1 += 1,
                Protocol::Mqtt | Protocol::Stomp => {}
            }
        }
        counts
    }

    /// This node's AMQP connections open to `vhost` and of `user`, and
    /// the channels open on the latter (a connection counts once it
    /// opened its virtual host).
    pub fn amqp_counts(&self, vhost: &str, user: &str) -> AmqpCounts {
        let open = lock(&self.open);
        let mut counts = AmqpCounts::default();
        for connection in open.entries.values() {
            if connection.protocol() != Protocol::Amqp {
                continue;
            }
            let details = connection.details();
            if details.vhost.is_none() {
                continue;
            }
            if details.vhost.as_deref() == Some(vhost) {
                counts.vhost_connections += 1;
            }
            if details.user.as_deref() == Some(user) {
                counts.user_connections += 1;
                counts.user_channels += lock(&connection.channels).len() as u64;
            }
        }
        counts
    }

    /// Connections refused by a cap since start.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The caps in force.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Connections accepted since start over `protocol`.
    pub fn opened_total(&self, protocol: Protocol) -> u64 {
        self.opened[protocol_index(protocol)].load(Ordering::Relaxed)
    }

    /// Sets what ends a session held here when its client id connects to
    /// another node; the first one set stays.
    pub fn set_session_takeover(&self, takeover: Arc<dyn SessionTakeover>) {
        let _ = self.takeover.set(takeover);
    }

    /// Another node's client took a client id: the holder here (if any)
    /// is ended; ready once it let its session go. Ready at once without
    /// a [`SessionTakeover`].
    pub fn take_over_here(
        &self,
        takeover: &Takeover,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        match self.takeover.get() {
            Some(hook) => hook.take_over(takeover),
            None => Box::pin(std::future::ready(())),
        }
    }
}

fn protocol_index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Kafka => 0,
        Protocol::Amqp => 1,
        Protocol::Mqtt => 2,
        Protocol::Stomp => 3,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }

    #[test]
    fn dropping_the_handle_unregisters_the_connection() {
        let registry = Connections::new(ConnectionLimits::default());
        let first = registry.register(Protocol::Kafka, peer()).expect("no cap");
        let second = registry.register(Protocol::Amqp, peer()).expect("no cap");
        assert_ne!(first.id(), second.id());
        assert_eq!(registry.list().len(), 2);
        drop(first);
        let left: Vec<u64> = registry.list().iter().map(|c| c.id()).collect();
        assert_eq!(left, vec![second.id()]);
        assert_eq!(registry.opened_total(Protocol::Kafka), 1);
    }

    #[tokio::test]
    async fn a_close_request_reaches_the_handle() {
        let registry = Connections::new(ConnectionLimits::default());
        let mut handle = registry.register(Protocol::Amqp, peer()).expect("no cap");
        let stats = registry.get(handle.id()).expect("registered");
        stats.request_close("maintenance".to_owned());
        let reason =
            tokio::time::timeout(std::time::Duration::from_secs(5), handle.close_requested())
                .await
                .expect("close request arrives");
        assert_eq!(reason, "maintenance");
    }

    #[test]
    fn channels_are_listed_while_open() {
        let registry = Connections::new(ConnectionLimits::default());
        let handle = registry.register(Protocol::Amqp, peer()).expect("no cap");
        let stats = handle.stats();
        stats.open_channel(1).consumers.store(2, Ordering::Relaxed);
        stats.open_channel(2);
        stats.close_channel(2);
        let channels = stats.channels();
        assert_eq!(channels.len(), 1);
        assert_eq!(channels[0].0, 1);
        assert_eq!(channels[0].1.consumers.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn caps_refuse_over_the_limit_and_free_a_slot_on_close() {
        let registry = Connections::new(ConnectionLimits {
            total: Some(3),
            per_ip: Some(2),
        });
        let other = SocketAddr::from(([127, 0, 0, 2], 40000));
        let first = registry.register(Protocol::Kafka, peer()).expect("1 of 2");
        let _second = registry.register(Protocol::Amqp, peer()).expect("2 of 2");
        assert_eq!(
            registry.register(Protocol::Kafka, peer()).err(),
            Some(ConnectionRefused::PerIp {
                ip: peer().ip(),
                limit: 2
            })
        );
        let _third = registry.register(Protocol::Kafka, other).expect("3 of 3");
        assert_eq!(
            registry.register(Protocol::Amqp, other).err(),
            Some(ConnectionRefused::Total { limit: 3 })
        );
        assert_eq!(registry.refused_total(), 2);
        assert_eq!(registry.list().len(), 3);
        drop(first);
        registry
            .register(Protocol::Kafka, peer())
            .expect("a closed connection frees its slot");
    }
}
