//! The one mapping between an AMQP message and a Kafka record, used
//! wherever a message crosses from one model to the other (streams,
//! exchanges feeding topics). It is documented in `docs/bridging.md`; a
//! message that crosses twice comes back the same.
//!
//! | AMQP | record |
//! | --- | --- |
//! | body | value |
//! | routing key | key |
//! | exchange | header `amqp.exchange` |
//! | each property (content-type, …, cluster-id) | header `amqp.<property>` as text |
//! | headers table, typed | header `amqp.headers` (the table's AMQP encoding) |
//! | each text entry of the headers table | a header of the same name, UTF-8 |
//!
//! From a record without `amqp.headers`, every header outside the `amqp.`
//! prefix becomes a long-string entry of the headers table (a null value
//! becomes void).

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;

use super::message::{Message, encode_table, short};

/// Prefix of record headers that carry AMQP fields.
pub const HEADER_PREFIX: &str = "amqp.";
/// The record header holding the typed headers table.
pub const HEADERS_TABLE: &str = "amqp.headers";
/// The record header holding the exchange a message was published to.
pub const EXCHANGE_HEADER: &str = "amqp.exchange";

/// A record's fields, owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordParts {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The properties that travel as `amqp.<name>` text headers, with how to
/// read and set them.
type ReadProperty = fn(&BasicProperties) -> Option<String>;

const TEXT_PROPERTIES: &[(&str, ReadProperty)] = &[
    ("content-type", |p| text(p.content_type())),
    ("content-encoding", |p| text(p.content_encoding())),
    ("delivery-mode", |p| {
        p.delivery_mode().map(|v| v.to_string())
    }),
    ("priority", |p| p.priority().map(|v| v.to_string())),
    ("correlation-id", |p| text(p.correlation_id())),
    ("reply-to", |p| text(p.reply_to())),
    ("expiration", |p| text(p.expiration())),
    ("message-id", |p| text(p.message_id())),
    ("timestamp", |p| p.timestamp().map(|v| v.to_string())),
    ("type", |p| text(p.kind())),
    ("user-id", |p| text(p.user_id())),
    ("app-id", |p| text(p.app_id())),
    ("cluster-id", |p| text(p.cluster_id())),
];

fn text(value: &Option<ShortString>) -> Option<String> {
    value.as_ref().map(|s| s.as_str().to_owned())
}

/// Sets the property `name` from its header text; false when the text does
/// not parse (the header is then kept as an ordinary one).
fn set_property(properties: BasicProperties, name: &str, value: &str) -> Option<BasicProperties> {
    Some(match name {
        "content-type" => properties.with_content_type(short(value)),
        "content-encoding" => properties.with_content_encoding(short(value)),
        "delivery-mode" => properties.with_delivery_mode(value.parse().ok()?),
        "priority" => properties.with_priority(value.parse().ok()?),
        "correlation-id" => properties.with_correlation_id(short(value)),
        "reply-to" => properties.with_reply_to(short(value)),
        "expiration" => properties.with_expiration(short(value)),
        "message-id" => properties.with_message_id(short(value)),
        "timestamp" => properties.with_timestamp(value.parse().ok()?),
        "type" => properties.with_type(short(value)),
        "user-id" => properties.with_user_id(short(value)),
        "app-id" => properties.with_app_id(short(value)),
        "cluster-id" => properties.with_cluster_id(short(value)),
        _ => return None,
    })
}

/// The record a message becomes.
pub fn message_to_record(message: &Message) -> RecordParts {
    let properties = &message.properties;
    let mut headers: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    if !message.exchange.as_str().is_empty() {
        headers.push((
            EXCHANGE_HEADER.to_owned(),
            Some(message.exchange.as_str().as_bytes().to_vec()),
        ));
    }
    for (name, read) in TEXT_PROPERTIES {
        if let Some(value) = read(properties) {
            headers.push((format!("{HEADER_PREFIX}{name}"), Some(value.into_bytes())));
        }
    }
    if let Some(table) = properties.headers() {
        headers.push((HEADERS_TABLE.to_owned(), Some(encode_table(table))));
        for (name, value) in table.inner() {
            let text = match value {
                AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
                AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
                _ => None,
            };
            if let Some(text) = text
                && !name.as_str().starts_with(HEADER_PREFIX)
            {
                headers.push((name.as_str().to_owned(), Some(text)));
            }
        }
    }
    RecordParts {
        key: Some(message.routing_key.as_str().as_bytes().to_vec()),
        value: Some(message.body.to_vec()),
        headers,
    }
}

/// The message a record becomes. `extra` entries (the stream offset, say)
/// are added to the headers table.
pub fn record_to_message(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    extra: &[(&str, AMQPValue)],
) -> Message {
    let mut properties = BasicProperties::default();
    let mut table: Option<FieldTable> = None;
    let mut exchange = String::new();
    let mut plain: Vec<(&str, Option<&[u8]>)> = Vec::new();
    for (name, value) in headers {
        let text = value.map(String::from_utf8_lossy);
        if *name == HEADERS_TABLE {
            if let Some(decoded) = value.and_then(decode_table) {
                table = Some(decoded);
                continue;
            }
        } else if *name == EXCHANGE_HEADER {
            exchange = text.map(|t| t.into_owned()).unwrap_or_default();
            continue;
        } else if let (Some(property), Some(text)) = (name.strip_prefix(HEADER_PREFIX), &text)
            && let Some(updated) = set_property(properties.clone(), property, text)
        {
            properties = updated;
            continue;
        }
        plain.push((name, *value));
    }
    let had_table = table.is_some();
    let mut table = table.unwrap_or_default();
    if !had_table {
        for (name, value) in plain {
            let value = match value {
                Some(bytes) => AMQPValue::LongString(LongString::from(bytes.to_vec())),
                None => AMQPValue::Void,
            };
            if !table.inner().contains_key(name) {
                table.insert(short(name), value);
            }
        }
    }
    for (name, value) in extra {
        table.insert(short(name), value.clone());
    }
    if had_table || !table.inner().is_empty() {
        properties = properties.with_headers(table);
    }
    Message {
        exchange: short(&exchange),
        routing_key: short(&String::from_utf8_lossy(key.unwrap_or_default())),
        properties,
        body: Bytes::copy_from_slice(value.unwrap_or_default()),
    }
}

/// A field table from its AMQP encoding (as [`encode_table`] writes it).
fn decode_table(bytes: &[u8]) -> Option<FieldTable> {
    parse_field_table(bytes).ok().map(|(_, table)| table)
}

/// Kafka's murmur2 hash (the Java client's default partitioner and
/// librdkafka's `murmur2_random`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(first) = tail.first() {
        h ^= u32::from(*first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition the Java client's default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn borrowed(parts: &RecordParts) -> Vec<(&str, Option<&[u8]>)> {
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref()))
            .collect()
    }

    #[test]
    fn a_message_crossing_twice_comes_back_the_same() {
        let mut table = FieldTable::default();
        table.insert(short("text"), AMQPValue::LongString("v".into()));
        table.insert(short("number"), AMQPValue::LongLongInt(-7));
        table.insert(short("flag"), AMQPValue::Boolean(true));
        let message = Message {
            exchange: short("orders"),
            routing_key: short("eu.new"),
            properties: BasicProperties::default()
                .with_content_type(short("application/json"))
                .with_content_encoding(short("gzip"))
                .with_delivery_mode(2)
                .with_priority(7)
                .with_correlation_id(short("c-1"))
                .with_reply_to(short("replies"))
                .with_expiration(short("60000"))
                .with_message_id(short("m-1"))
                .with_timestamp(1_763_800_000)
                .with_type(short("created"))
                .with_user_id(short("guest"))
                .with_app_id(short("shop"))
                .with_headers(table),
            body: Bytes::from_static(b"{\"id\":1}"),
        };
        let record = message_to_record(&message);
        assert!(
            record
                .headers
                .iter()
                .any(|(n, v)| n == "text" && v.as_deref() == Some(&b"v"[..]))
        );
        let back = record_to_message(
            record.key.as_deref(),
            record.value.as_deref(),
            &borrowed(&record),
            &[],
        );
        assert_eq!(back, message);
    }

    #[test]
    fn plain_kafka_headers_become_table_entries() {
        let message = record_to_message(
            Some(b"k"),
            Some(b"v"),
            &[
                ("source", Some(b"web")),
                ("trace", None),
                ("amqp.priority", Some(b"3")),
            ],
            &[("x-stream-offset", AMQPValue::LongLongInt(42))],
        );
        assert_eq!(message.routing_key.as_str(), "k");
        assert_eq!(message.properties.priority(), &Some(3));
        let table = message
            .properties
            .headers()
            .clone()
            .expect("a headers table");
        assert_eq!(
            table.inner().get("source"),
            Some(&AMQPValue::LongString("web".into()))
        );
        assert_eq!(table.inner().get("trace"), Some(&AMQPValue::Void));
        assert_eq!(
            table.inner().get("x-stream-offset"),
            Some(&AMQPValue::LongLongInt(42))
        );
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Expected values from Apache Kafka's UtilsTest, and "kafka" from
        // librdkafka's test of its Java-compatible murmur2.
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"kafka", 0xd067_cf64_u32 as i32),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key) as i32, *expected);
        }
    }
}
