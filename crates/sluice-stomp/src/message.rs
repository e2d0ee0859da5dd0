//! A SEND frame as a core message and a delivery as a MESSAGE frame, with
//! headers mapped to AMQP properties as RabbitMQ's STOMP plugin maps them:
//! `content-type`, `content-encoding`, `persistent` (delivery mode 2),
//! `priority`, `correlation-id`, `reply-to`, `expiration`,
//! `amqp-message-id`, `timestamp`, `type`, `user-id` and `app-id` are
//! properties; any other header that is not STOMP's own goes into the
//! headers table, and comes back as a header.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use sluice_core::messaging::{Message, integer_value, short, string_value};

use crate::frame::Frame;

/// Headers that belong to the protocol, never copied into a message.
const STOMP_HEADERS: [&str; 9] = [
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "subscription",
    "message-id",
    "ack",
    "id",
    "redelivered",
];

/// The core message of a SEND to `exchange` with `key`; `reply_to` is the
/// `reply-to` header as rewritten (a temporary queue's real name).
pub(crate) fn to_message(
    frame: &Frame,
    exchange: &str,
    key: &str,
    reply_to: Option<&str>,
) -> Message {
    let mut properties = BasicProperties::default();
    let mut headers = FieldTable::default();
    let mut seen = std::collections::HashSet::new();
    for (name, value) in &frame.headers {
        if !seen.insert(name.as_str()) || STOMP_HEADERS.contains(&name.as_str()) {
            continue;
        }
        match name.as_str() {
            "content-type" => properties = properties.with_content_type(short(value)),
            "content-encoding" => properties = properties.with_content_encoding(short(value)),
            "persistent" => {
                properties = properties.with_delivery_mode(if value == "true" { 2 } else { 1 });
            }
            "priority" => {
                if let Ok(priority) = value.parse::<u8>() {
                    properties = properties.with_priority(priority);
                }
            }
            "correlation-id" => properties = properties.with_correlation_id(short(value)),
            "reply-to" => {
                properties = properties.with_reply_to(short(reply_to.unwrap_or(value)));
            }
            "expiration" => properties = properties.with_expiration(short(value)),
            "amqp-message-id" => properties = properties.with_message_id(short(value)),
            "timestamp" => {
                if let Ok(timestamp) = value.parse::<u64>() {
                    properties = properties.with_timestamp(timestamp);
                }
            }
            "type" => properties = properties.with_type(short(value)),
            "user-id" => properties = properties.with_user_id(short(value)),
            "app-id" => properties = properties.with_app_id(short(value)),
            other => {
                headers.insert(short(other), AMQPValue::LongString(value.as_str().into()));
            }
        }
    }
    if !headers.inner().is_empty() {
        properties = properties.with_headers(headers);
    }
    Message {
        exchange: short(exchange),
        routing_key: short(key),
        properties,
        body: frame.body.clone(),
    }
}

/// The headers of a MESSAGE frame carrying `message` (the protocol's own
/// headers are added by the caller).
pub(crate) fn to_headers(message: &Message, mut frame: Frame) -> Frame {
    let p = &message.properties;
    let mut put = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            frame.headers.push((name.to_owned(), value));
        }
    };
    put(
        "content-type",
        p.content_type().as_ref().map(|v| v.as_str().to_owned()),
    );
    put(
        "content-encoding",
        p.content_encoding().as_ref().map(|v| v.as_str().to_owned()),
    );
    put(
        "persistent",
        (*p.delivery_mode() == Some(2)).then(|| "true".to_owned()),
    );
    put("priority", p.priority().map(|v| v.to_string()));
    put(
        "correlation-id",
        p.correlation_id().as_ref().map(|v| v.as_str().to_owned()),
    );
    put(
        "reply-to",
        p.reply_to().as_ref().map(|v| reply_header(v.as_str())),
    );
    put(
        "expiration",
        p.expiration().as_ref().map(|v| v.as_str().to_owned()),
    );
    put(
        "amqp-message-id",
        p.message_id().as_ref().map(|v| v.as_str().to_owned()),
    );
    put("timestamp", p.timestamp().map(|v| v.to_string()));
    put("type", p.kind().as_ref().map(|v| v.as_str().to_owned()));
    put(
        "user-id",
        p.user_id().as_ref().map(|v| v.as_str().to_owned()),
    );
    put("app-id", p.app_id().as_ref().map(|v| v.as_str().to_owned()));
    if let Some(table) = p.headers() {
        for (name, value) in table.inner() {
            let name = name.as_str();
            if STOMP_HEADERS.contains(&name) {
                continue;
            }
            let text = string_value(value)
                .or_else(|| integer_value(value).map(|n| n.to_string()))
                .or_else(|| match value {
                    AMQPValue::Boolean(b) => Some(b.to_string()),
                    _ => None,
                });
            if let Some(text) = text {
                frame.headers.push((name.to_owned(), text));
            }
        }
    }
    frame.body = message.body.clone();
    frame
}

/// A `reply-to` as STOMP clients read it: a plain queue name becomes a
/// `/reply-queue/` destination, a destination stays one.
fn reply_header(reply_to: &str) -> String {
    if reply_to.starts_with('/') {
        reply_to.to_owned()
    } else {
        format!("/reply-queue/{reply_to}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_properties_and_come_back() {
        let mut frame = Frame::new("SEND")
            .header("destination", "/queue/a")
            .header("content-type", "text/plain")
            .header("persistent", "true")
            .header("priority", "5")
            .header("correlation-id", "c-1")
            .header("reply-to", "/temp-queue/r")
            .header("x-custom", "v")
            .header("x-custom", "ignored");
        frame.body = bytes::Bytes::from_static(b"hi");
        let message = to_message(&frame, "", "a", Some("stomp-temp-1-r"));
        assert!(message.persistent());
        assert_eq!(message.priority(), 5);
        let back = to_headers(&message, Frame::new("MESSAGE"));
        assert_eq!(back.get("content-type"), Some("text/plain"));
        assert_eq!(back.get("persistent"), Some("true"));
        assert_eq!(back.get("correlation-id"), Some("c-1"));
        assert_eq!(back.get("reply-to"), Some("/reply-queue/stomp-temp-1-r"));
        assert_eq!(back.get("x-custom"), Some("v"));
        assert_eq!(back.get("destination"), None, "the caller adds it");
        assert_eq!(&back.body[..], b"hi");
    }
}
