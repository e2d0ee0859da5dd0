//! Sluice's MQTT front-end: MQTT 3.1, 3.1.1 and 5.0, as RabbitMQ's MQTT
//! plugin maps them onto exchanges and queues.
//!
//! A thin adapter: packets are decoded and encoded by the `rmqtt-codec`
//! crate (`packets.rs` gives its two versions one shape); topics route
//! through a topic exchange (`amq.topic` unless configured), and each
//! session's subscriptions are bindings of its queue, so AMQP, MQTT and
//! (through stream queues) Kafka clients exchange messages. Start reading
//! at `listener.rs` (accept), then `connection.rs` (CONNECT, the packet
//! loop, ordered acknowledgements), `session.rs` (login, the session's
//! queue, subscriptions, deliveries) and `publish.rs` (routing, retained
//! messages, wills). Must not depend on another front-end.

mod connection;
mod listener;
mod message;
mod packets;
mod publish;
mod session;
mod topic;

pub use listener::{MqttNode, MqttOptions, serve};
