//! Sluice's STOMP front-end: STOMP 1.0, 1.1 and 1.2, with RabbitMQ's
//! destinations (`/queue/`, `/amq/queue/`, `/topic/`, `/exchange/`,
//! `/temp-queue/`, `/reply-queue/`) over the core's exchanges and queues.
//!
//! A thin adapter: `frame.rs` reads and writes frames, `destination.rs`
//! maps destinations, `message.rs` maps headers to message properties, and
//! `connection.rs` holds CONNECT, the frame loop, subscriptions,
//! acknowledgements, transactions, receipts and heart-beats. Start reading
//! at `listener.rs`. Must not depend on another front-end.

mod connection;
mod destination;
mod frame;
mod listener;
mod message;

pub use listener::{StompOptions, serve, serve_stream};
