//! A message as exchanges route it and queues hold it: the routing address it
//! was published with, its properties exactly as the publisher sent them, and
//! its body.
//!
//! Properties are `amq-protocol`'s type: they are the message model of
//! queues (AMQP 0-9-1 content-header properties with the headers table), and
//! keeping the codec's own type means they go back on the wire unchanged.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::protocol::basic::{gen_properties, parse_properties};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::{Buf, BufMut, Bytes};

/// A published message. Shared (`Arc`) by every queue it was routed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Exchange it was published to (empty for the default exchange).
    pub exchange: ShortString,
    /// Routing key it was published with.
    pub routing_key: ShortString,
    /// Content-header properties, kept exactly as published.
    pub properties: BasicProperties,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// Delivery mode 2 asks durable queues to keep the message on disk.
    pub fn persistent(&self) -> bool {
        *self.properties.delivery_mode() == Some(2)
    }

    /// The `priority` property, 0 when absent.
    pub fn priority(&self) -> u8 {
        self.properties.priority().unwrap_or(0)
    }

    /// The headers table, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    /// Body plus a rough cost of the properties, for length limits in bytes.
    /// RabbitMQ's `x-max-length-bytes` counts bodies only; so does this.
    pub fn body_size(&self) -> usize {
        self.body.len()
    }

    /// The per-message TTL from the `expiration` property.
    ///
    /// # Errors
    /// RabbitMQ's text when the property is not a non-negative integer.
    pub fn expiration_ms(&self) -> Result<Option<u64>, String> {
        let Some(expiration) = self.properties.expiration() else {
            return Ok(None);
        };
        expiration
            .as_str()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("invalid expiration '{}'", expiration.as_str()))
    }

    /// Encodes for a queue's log.
    /// Layout: `[version:1=0][exchange_len:1][exchange][routing_key_len:1][routing_key]`
    /// `[properties_len:4][properties as in a content header][body]`, big-endian.
    ///
    /// # Errors
    /// The codec's message when properties cannot be encoded.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// As [`Message::encode`], appended to `out`.
    ///
    /// # Errors
    /// As [`Message::encode`] (`out` may then hold part of it).
    pub fn encode_into<B: BufMut>(&self, out: &mut B) -> Result<(), String> {
        let properties = encode_properties(&self.properties)?;
        let properties_len = u32::try_from(properties.len()).map_err(|_| "properties too large")?;
        out.put_u8(0);
        put_short(out, self.exchange.as_str());
        put_short(out, self.routing_key.as_str());
        out.put_u32(properties_len);
        out.put_slice(&properties);
        out.put_slice(&self.body);
        Ok(())
    }

    /// Bytes [`Message::encode`] writes, but for the properties.
    pub fn encoded_len_hint(&self) -> usize {
        8 + self.exchange.as_str().len() + self.routing_key.as_str().len() + self.body.len()
    }

    /// Decodes what [`Message::encode`] wrote; `None` when damaged.
    pub fn decode(mut bytes: Bytes) -> Option<Message> {
        if bytes.remaining() < 1 || bytes.get_u8() != 0 {
            return None;
        }
        let exchange = get_short(&mut bytes)?;
        let routing_key = get_short(&mut bytes)?;
        if bytes.remaining() < 4 {
            return None;
        }
        let properties_len = usize::try_from(bytes.get_u32()).ok()?;
        if bytes.remaining() < properties_len {
            return None;
        }
        let properties = bytes.split_to(properties_len);
        let (rest, properties) = parse_properties(&properties[..]).ok()?;
        if !rest.is_empty() {
            return None;
        }
        Some(Message {
            exchange,
            routing_key,
            properties,
            body: bytes,
        })
    }
}

/// Properties in content-header form (flags, then the fields present).
///
/// # Errors
/// The codec's message.
pub fn encode_properties(properties: &BasicProperties) -> Result<Vec<u8>, String> {
    gen_properties(properties)(WriteContext::from(Vec::new()))
        .map(|context| context.write)
        .map_err(|e| format!("cannot encode message properties: {e}"))
}

/// A field table as on the wire (empty when the codec refuses it, which a
/// table it parsed itself never makes it do).
pub(crate) fn encode_table(table: &FieldTable) -> Vec<u8> {
    gen_field_table(table)(WriteContext::from(Vec::new()))
        .map(|context| context.write)
        .unwrap_or_default()
}

fn put_short<B: BufMut>(out: &mut B, s: &str) {
    // ShortString values never exceed 255 bytes (the codec checks on parse).
    let bytes = s.as_bytes();
    let len = bytes.len().min(255);
    out.put_u8(len as u8);
    out.put_slice(bytes.get(..len).unwrap_or_default());
}

fn get_short(bytes: &mut Bytes) -> Option<ShortString> {
    if bytes.remaining() < 1 {
        return None;
    }
    let len = usize::from(bytes.get_u8());
    if bytes.remaining() < len {
        return None;
    }
    let raw = bytes.split_to(len);
    let text = std::str::from_utf8(&raw).ok()?;
    Some(ShortString::from(text.to_owned()))
}

/// A short string from text that may be longer than 255 bytes: cut at a
/// character boundary.
pub fn short(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(text.get(..end).unwrap_or_default().to_owned())
}

/// Reads an integer argument of any AMQP integer width.
pub fn integer_value(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// Reads a string argument (long or short string).
pub fn string_value(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    #[test]
    fn message_round_trips_through_its_log_encoding() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-trace".into(),
            AMQPValue::LongString(LongString::from("abc")),
        );
        headers.insert("n".into(), AMQPValue::LongLongInt(-7));
        let message = Message {
            exchange: "ex".into(),
            routing_key: "a.b.c".into(),
            properties: BasicProperties::default()
                .with_delivery_mode(2)
                .with_priority(3)
                .with_content_type("text/plain".into())
                .with_headers(headers)
                .with_expiration("1000".into()),
            body: Bytes::from_static(b"hello"),
        };
        let encoded = message.encode().expect("encodes");
        let decoded = Message::decode(Bytes::from(encoded)).expect("decodes");
        assert_eq!(decoded, message);
        assert!(decoded.persistent());
        assert_eq!(decoded.priority(), 3);
        assert_eq!(decoded.expiration_ms(), Ok(Some(1000)));
    }

    #[test]
    fn truncated_encoding_is_refused_not_panicking() {
        let message = Message {
            exchange: "".into(),
            routing_key: "q".into(),
            properties: BasicProperties::default().with_message_id("m1".into()),
            body: Bytes::from_static(b"body"),
        };
        let encoded = message.encode().expect("encodes");
        for cut in 0..encoded.len() - 4 {
            let bytes = Bytes::copy_from_slice(&encoded[..cut]);
            assert!(Message::decode(bytes).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn bad_expiration_is_named() {
        let message = Message {
            exchange: "".into(),
            routing_key: "q".into(),
            properties: BasicProperties::default().with_expiration("soon".into()),
            body: Bytes::new(),
        };
        assert_eq!(
            message.expiration_ms(),
            Err("invalid expiration 'soon'".to_owned())
        );
    }
}
