//! The message-broker model: virtual hosts holding exchanges, queues and the
//! bindings between them; routing; queues that push messages to consumers
//! within their credit and forget them once settled.
//!
//! ```text
//!   publish ─▶ VirtualHost::publish ─▶ Exchange routes (direct/topic/fanout/headers,
//!                 │                      exchange-to-exchange, alternate exchange)
//!                 ▼
//!              Queue::enqueue ─▶ QueueStore (durable + persistent: queue log)
//!                 │
//!                 ▼ dispatch (round robin within credit, consumer priority)
//!              ConsumerEvent::Deliver ─▶ front-end channel ─▶ ack/nack/reject ─▶ Queue
//! ```
//!
//! Durable exchanges, queues and bindings are metadata commands in the
//! metadata log (`definitions.rs`); a durable queue's persistent messages
//! live in its own logs (`queue_store.rs`).
//!
//! Start reading at [`VirtualHost::publish`].

mod alarms;
mod bridge;
pub(crate) mod definitions;
mod exchange;
mod message;
mod queue;
mod queue_store;
mod quorum_store;
mod routing;
mod stream;
mod vhost;

pub use alarms::{DEFAULT_QUEUE_BUDGET, MemoryCharge, ResourceMonitor};
pub use bridge::{
    EXCHANGE_HEADER, HEADER_PREFIX, HEADERS_TABLE, RecordParts, message_to_record, murmur2,
    partition_for_key, record_to_message,
};
pub use definitions::{BindingDefinition, ExchangeDefinition, QueueDefinition};
pub use exchange::{Binding, Destination, Exchange, ExchangeKind};
pub use message::{Message, encode_properties, integer_value, short, string_value};
pub use queue::{
    ArgumentProblem, ConsumerEvent, ConsumerSpec, Credit, DeadLetterStrategy, DeadLetters,
    Delivery, EnqueueOutcome, GetResult, InvalidArgument, Overflow, PEER_CONSUMER, Queue,
    QueueArgs, QueueOptions, QueueTraffic, QueueType, RemoteSettled, RemoteSettlement,
};
pub(crate) use queue_store::PendingWrites;
pub use queue_store::Source;
pub use quorum_store::{MessageRef, QUORUM_TOPIC_PREFIX, RecentSettlements};
pub use stream::{STREAM_OFFSET_HEADER, STREAM_PARTITION_HEADER, StreamStart, parse_age_ms};
pub(crate) use vhost::VhostShared;
pub use vhost::{
    ExchangeOptions, GrowSelector, LeaderMove, MemberChange, PublishOutcome, QuorumPlacement,
    RemoteQueues, VirtualHost, VirtualHosts,
};

/// Why a messaging operation was refused. The text is RabbitMQ's where it
/// has one (front-ends prefix the reply code name).
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// A named exchange or queue does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Redeclared with other properties, unacceptable arguments, or an
    /// `if-unused`/`if-empty` condition not met.
    #[error("{0}")]
    PreconditionFailed(String),
    /// An exclusive queue of another connection.
    #[error("{0}")]
    ResourceLocked(String),
    /// Reserved names, exclusive consumers, permissions.
    #[error("{0}")]
    AccessRefused(String),
    /// Operation not allowed in this state (an unknown virtual host, say).
    #[error("{0}")]
    NotAllowed(String),
    /// A request that makes no sense (an unknown exchange type, say).
    #[error("{0}")]
    CommandInvalid(String),
    /// Part of the protocol Sluice does not implement.
    #[error("{0}")]
    NotImplemented(String),
    /// Storage or another internal failure.
    #[error(transparent)]
    Core(#[from] crate::CoreError),
}
