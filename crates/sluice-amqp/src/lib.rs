//! Sluice's AMQP 0-9-1 front-end, with RabbitMQ's extensions (publisher
//! confirms, basic.nack, exchange-to-exchange bindings, consumer priorities,
//! consumer cancel notification).
//!
//! A thin adapter: frames are split here and decoded by the `amq-protocol`
//! crate; exchanges, queues, bindings, routing and delivery live in
//! `sluice_core::messaging`. Start reading at `listener.rs` (accept), then
//! `connection/` (`handshake.rs`, then the frame loop and heartbeats in
//! `mod.rs`, with `tx.rs` and `confirms.rs`),
//! `channel.rs` (content assembly, delivery tags, credit) and
//! `handlers/` (one file per class); `errors.rs` maps core errors to
//! reply codes and chooses channel or connection close.

mod channel;
mod connection;
mod errors;
mod frames;
mod handlers;
mod listener;
mod metrics;

pub use listener::{AmqpOptions, CertLoginFrom, KafkaAcls, serve};
