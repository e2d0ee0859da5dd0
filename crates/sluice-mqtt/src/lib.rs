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

pub use listener::{MqttOptions, serve};

/// Decodes `bytes` as a client's packets would be read, for fuzzing: no
/// input may panic.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) {
    let mut codec = packets::Codec::new(1 << 20);
    let mut buffer = bytes::BytesMut::from(bytes);
    while let Ok(Some(packet)) = codec.decode(&mut buffer) {
        if let packets::Inbound::Publish(publish) = packet {
            let _ = topic::validate_name(&publish.topic);
            let message = message::to_message("amq.topic", &publish, 0);
            let _ = message::to_publish(&message, 1, false, 0);
        } else if let packets::Inbound::Subscribe { filters, .. } = packet {
            for (filter, _) in filters {
                let _ = topic::parse_filter(&filter);
            }
        }
    }
}
