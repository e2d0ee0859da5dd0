//! An MQTT PUBLISH as a core message and back, as RabbitMQ's MQTT plugin
//! maps them: the topic becomes the routing key (`topic.rs`), QoS 1 and 2
//! are persistent (delivery mode 2) and the QoS travels in the
//! `x-mqtt-publish-qos` header; MQTT 5's Content Type, Correlation Data,
//! Response Topic and Message Expiry Interval become `content_type`,
//! `correlation_id`, `reply_to` and `expiration`; user properties become
//! headers. A message published over AMQP reaches MQTT subscribers with
//! QoS 1 when persistent, else QoS 0.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::Bytes;
use sluice_core::messaging::{Message, integer_value, short, string_value};

use crate::packets::{Properties, Publish};
use crate::topic;

/// The header holding the QoS a message was published with.
pub(crate) const QOS_HEADER: &str = "x-mqtt-publish-qos";
/// The header marking a message published with RETAIN.
pub(crate) const RETAIN_HEADER: &str = "x-mqtt-retain";
/// The header marking a UTF-8 payload (MQTT 5 Payload Format Indicator).
const UTF8_HEADER: &str = "x-mqtt-utf8-payload";
/// The header naming the client that published (for No Local).
const PUBLISHER_HEADER: &str = "x-mqtt-publisher";
/// Headers holding a Content Type or Response Topic too long for the
/// AMQP property.
const CONTENT_TYPE_HEADER: &str = "x-mqtt-content-type";
const RESPONSE_TOPIC_HEADER: &str = "x-mqtt-response-topic";
/// The header holding correlation data that is not a short string.
const CORRELATION_HEADER: &str = "x-correlation-id";

/// The core message of `client_id`'s PUBLISH to `exchange`, at `now_ms`.
/// The topic's routing key must fit a short string (255 bytes).
pub(crate) fn to_message(
    exchange: &str,
    publish: &Publish,
    now_ms: i64,
    client_id: &str,
) -> Message {
    let p = &publish.properties;
    let mut headers = FieldTable::default();
    for (name, value) in &p.user_properties {
        // A user property never passes for one of the headers below.
        if !name.starts_with("x-mqtt-") {
            headers.insert(short(name), AMQPValue::LongString(value.as_str().into()));
        }
    }
    headers.insert(short(QOS_HEADER), AMQPValue::ShortShortUInt(publish.qos));
    headers.insert(
        short(PUBLISHER_HEADER),
        AMQPValue::LongString(client_id.into()),
    );
    if publish.retain {
        headers.insert(short(RETAIN_HEADER), AMQPValue::Boolean(true));
    }
    if p.utf8_payload {
        headers.insert(short(UTF8_HEADER), AMQPValue::Boolean(true));
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(if publish.qos > 0 { 2 } else { 1 })
        .with_timestamp(u64::try_from(now_ms / 1000).unwrap_or(0));
    if let Some(data) = &p.correlation_data {
        match std::str::from_utf8(data) {
            Ok(text) if text.len() <= 255 => {
                properties = properties.with_correlation_id(short(text));
            }
            _ => {
                headers.insert(
                    short(CORRELATION_HEADER),
                    AMQPValue::LongString(LongString::from(data.to_vec())),
                );
            }
        }
    }
    if let Some(content_type) = &p.content_type {
        if content_type.len() <= 255 {
            properties = properties.with_content_type(short(content_type));
        } else {
            headers.insert(
                short(CONTENT_TYPE_HEADER),
                AMQPValue::LongString(content_type.as_str().into()),
            );
        }
    }
    if let Some(response) = &p.response_topic {
        if response.len() <= 255 {
            properties = properties.with_reply_to(short(response));
        } else {
            headers.insert(
                short(RESPONSE_TOPIC_HEADER),
                AMQPValue::LongString(response.as_str().into()),
            );
        }
    }
    if let Some(expiry) = p.expiry_secs {
        properties = properties.with_expiration(short(&(u64::from(expiry) * 1000).to_string()));
    }
    Message {
        exchange: short(exchange),
        routing_key: short(&topic::to_amqp(&publish.topic)),
        properties: properties.with_headers(headers),
        body: publish.payload.clone(),
    }
}

/// The QoS a message was published with (QoS 1 for a persistent
/// message published over AMQP, else 0).
pub(crate) fn published_qos(message: &Message) -> u8 {
    message
        .headers()
        .and_then(|headers| headers.inner().get(QOS_HEADER))
        .and_then(integer_value)
        .and_then(|qos| u8::try_from(qos).ok())
        .map(|qos| qos.min(2))
        .unwrap_or(if message.persistent() { 1 } else { 0 })
}

/// The client id of the MQTT client that published `message`.
pub(crate) fn published_by(message: &Message) -> Option<&str> {
    match message.headers()?.inner().get(PUBLISHER_HEADER)? {
        AMQPValue::LongString(id) => std::str::from_utf8(id.as_bytes()).ok(),
        _ => None,
    }
}

/// Whether `message` was published with RETAIN (for subscriptions that
/// keep the flag: MQTT 5 Retain As Published).
pub(crate) fn was_retained(message: &Message) -> bool {
    matches!(
        message.headers().and_then(|h| h.inner().get(RETAIN_HEADER)),
        Some(AMQPValue::Boolean(true))
    )
}

/// The PUBLISH that delivers `message` at `qos`, with `retain`, at
/// `now_ms` (the expiry left is sent, MQTT 5 §3.3.2.3.3).
pub(crate) fn to_publish(message: &Message, qos: u8, retain: bool, now_ms: i64) -> Publish {
    let props = &message.properties;
    let mut properties = Properties::default();
    if let Some(headers) = message.headers() {
        for (name, value) in headers.inner() {
            let name = name.as_str();
            if name == UTF8_HEADER {
                properties.utf8_payload = true;
            } else if name == CONTENT_TYPE_HEADER {
                properties.content_type = string_value(value);
            } else if name == RESPONSE_TOPIC_HEADER {
                properties.response_topic = string_value(value);
            } else if name == CORRELATION_HEADER {
                if let AMQPValue::LongString(data) = value {
                    properties.correlation_data = Some(Bytes::from(data.as_bytes().to_vec()));
                }
            } else if !name.starts_with("x-mqtt-")
                && let Some(text) = string_value(value)
            {
                properties.user_properties.push((name.to_owned(), text));
            }
        }
    }
    if let Some(id) = props.correlation_id() {
        properties.correlation_data = Some(Bytes::from(id.as_str().as_bytes().to_vec()));
    }
    if let Some(content_type) = props.content_type() {
        properties.content_type = Some(content_type.as_str().to_owned());
    }
    if let Some(reply_to) = props.reply_to() {
        properties.response_topic = Some(reply_to.as_str().to_owned());
    }
    if let Ok(Some(expiry_ms)) = message.expiration_ms() {
        let published_ms = props
            .timestamp()
            .and_then(|t| i64::try_from(t).ok())
            .map_or(now_ms, |secs| secs.saturating_mul(1000));
        let left_ms = i64::try_from(expiry_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(now_ms.saturating_sub(published_ms));
        properties.expiry_secs = Some(u32::try_from(left_ms.max(1000) / 1000).unwrap_or(u32::MAX));
    }
    Publish {
        topic: topic::from_amqp(message.routing_key.as_str()),
        payload: message.body.clone(),
        qos,
        retain,
        dup: false,
        packet_id: None,
        properties,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_the_round_trip_through_a_core_message() {
        let publish = Publish {
            topic: "home/room.1/temp".into(),
            payload: Bytes::from_static(b"21"),
            qos: 1,
            retain: false,
            dup: false,
            packet_id: Some(7),
            properties: Properties {
                expiry_secs: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("replies/1".into()),
                correlation_data: Some(Bytes::from_static(b"\xff\x00")),
                user_properties: vec![("site".into(), "north".into())],
                utf8_payload: true,
                topic_alias: None,
                subscription_ids: Vec::new(),
            },
        };
        let message = to_message("amq.topic", &publish, 1_000_000, "dev-1");
        assert_eq!(published_by(&message), Some("dev-1"));
        assert_eq!(message.routing_key.as_str(), "home.room/1.temp");
        assert!(message.persistent());
        assert_eq!(message.expiration_ms(), Ok(Some(60_000)));
        assert_eq!(published_qos(&message), 1);
        let back = to_publish(&message, 1, false, 1_010_000);
        assert_eq!(back.topic, "home/room.1/temp");
        assert_eq!(back.properties.expiry_secs, Some(50), "10 s of 60 went by");
        assert_eq!(back.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(back.properties.response_topic.as_deref(), Some("replies/1"));
        assert_eq!(
            back.properties.correlation_data.as_deref(),
            Some(&b"\xff\x00"[..])
        );
        assert_eq!(
            back.properties.user_properties,
            vec![("site".to_owned(), "north".to_owned())]
        );
        assert!(back.properties.utf8_payload);
    }

    #[test]
    fn an_amqp_message_gets_qos_from_its_delivery_mode() {
        let mut message = Message {
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
            properties: BasicProperties::default(),
            body: Bytes::new(),
        };
        assert_eq!(published_qos(&message), 0);
        message.properties = BasicProperties::default().with_delivery_mode(2);
        assert_eq!(published_qos(&message), 1);
    }
}
