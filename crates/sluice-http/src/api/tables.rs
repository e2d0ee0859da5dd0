//! AMQP field tables and message properties as JSON, both ways.
//!
//! JSON to AMQP: integers become long-long integers, other numbers doubles,
//! strings long strings, booleans booleans, arrays field arrays, objects
//! tables, `null` void. AMQP to JSON reverses that; byte arrays and
//! non-UTF-8 strings come out as text with invalid bytes replaced.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::{Map, Value, json};
use sluice_core::messaging::short;

use crate::error::{ApiError, ApiResult};

/// Deepest nesting of tables and arrays accepted from JSON.
const MAX_DEPTH: usize = 16;

/// A JSON object as a field table; `field` names it in errors.
pub(crate) fn table_from_json(value: &Value, field: &'static str) -> ApiResult<FieldTable> {
    match value {
        Value::Null => Ok(FieldTable::default()),
        Value::Object(map) => object_to_table(map, field, 0),
        _ => Err(ApiError::field(
            field,
            format!("{field} must be a JSON object"),
        )),
    }
}

fn object_to_table(
    map: &Map<String, Value>,
    field: &'static str,
    depth: usize,
) -> ApiResult<FieldTable> {
    let mut table = FieldTable::default();
    for (key, value) in map {
        if key.len() > 255 {
            return Err(ApiError::field(field, "table keys are at most 255 bytes"));
        }
        table.insert(short(key), value_to_amqp(value, field, depth + 1)?);
    }
    Ok(table)
}

fn value_to_amqp(value: &Value, field: &'static str, depth: usize) -> ApiResult<AMQPValue> {
    if depth > MAX_DEPTH {
        return Err(ApiError::field(
            field,
            format!("{field} nests deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.clone())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items
                .iter()
                .map(|item| value_to_amqp(item, field, depth + 1))
                .collect::<ApiResult<Vec<_>>>()?,
        )),
        Value::Object(map) => AMQPValue::FieldTable(object_to_table(map, field, depth)?),
    })
}

/// A field table as a JSON object.
pub(crate) fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(key, value)| (key.as_str().to_owned(), value_to_json(value)))
            .collect(),
    )
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(i) => json!(i),
        AMQPValue::ShortShortUInt(i) => json!(i),
        AMQPValue::ShortInt(i) => json!(i),
        AMQPValue::ShortUInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::LongUInt(i) => json!(i),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => {
            json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(table) => table_to_json(table),
        AMQPValue::ByteArray(bytes) => json!(String::from_utf8_lossy(bytes.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

/// Message properties as the API shows them (absent ones left out).
pub(crate) fn properties_to_json(properties: &BasicProperties) -> Value {
    let mut out = Map::new();
    let mut text = |name: &str, value: &Option<amq_protocol::types::ShortString>| {
        if let Some(value) = value {
            out.insert(name.to_owned(), json!(value.as_str()));
        }
    };
    text("content_type", properties.content_type());
    text("content_encoding", properties.content_encoding());
    text("correlation_id", properties.correlation_id());
    text("reply_to", properties.reply_to());
    text("expiration", properties.expiration());
    text("message_id", properties.message_id());
    text("type", properties.kind());
    text("user_id", properties.user_id());
    text("app_id", properties.app_id());
    text("cluster_id", properties.cluster_id());
    if let Some(mode) = properties.delivery_mode() {
        out.insert("delivery_mode".into(), json!(mode));
    }
    if let Some(priority) = properties.priority() {
        out.insert("priority".into(), json!(priority));
    }
    if let Some(timestamp) = properties.timestamp() {
        out.insert("timestamp".into(), json!(timestamp));
    }
    if let Some(headers) = properties.headers() {
        out.insert("headers".into(), table_to_json(headers));
    }
    Value::Object(out)
}

/// Message properties from the API's JSON object.
pub(crate) fn properties_from_json(value: &Value) -> ApiResult<BasicProperties> {
    let map = match value {
        Value::Null => return Ok(BasicProperties::default()),
        Value::Object(map) => map,
        _ => {
            return Err(ApiError::field(
                "properties",
                "properties must be a JSON object",
            ));
        }
    };
    let mut properties = BasicProperties::default();
    for (key, value) in map {
        let text = || -> ApiResult<amq_protocol::types::ShortString> {
            match value {
                Value::String(s) if s.len() <= 255 => Ok(short(s)),
                _ => Err(ApiError::field(
                    "properties",
                    format!("property {key} must be a string of at most 255 bytes"),
                )),
            }
        };
        let octet = || -> ApiResult<u8> {
            value
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::field("properties", format!("property {key} must be 0 to 255"))
                })
        };
        properties = match key.as_str() {
            "content_type" => properties.with_content_type(text()?),
            "content_encoding" => properties.with_content_encoding(text()?),
            "correlation_id" => properties.with_correlation_id(text()?),
            "reply_to" => properties.with_reply_to(text()?),
            "expiration" => properties.with_expiration(text()?),
            "message_id" => properties.with_message_id(text()?),
            "type" => properties.with_type(text()?),
            "user_id" => properties.with_user_id(text()?),
            "app_id" => properties.with_app_id(text()?),
            "cluster_id" => properties.with_cluster_id(text()?),
            "delivery_mode" => properties.with_delivery_mode(octet()?),
            "priority" => properties.with_priority(octet()?),
            "timestamp" => properties.with_timestamp(value.as_u64().ok_or_else(|| {
                ApiError::field(
                    "properties",
                    "property timestamp must be seconds since the epoch",
                )
            })?),
            "headers" => properties.with_headers(table_from_json(value, "properties")?),
            other => {
                return Err(ApiError::field(
                    "properties",
                    format!("unknown property {other}"),
                ));
            }
        };
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_through_json() -> ApiResult<()> {
        let input = json!({"n": 5, "f": 1.5, "s": "x", "b": true, "a": [1, "y"], "t": {"k": null}});
        let table = table_from_json(&input, "arguments")?;
        assert_eq!(table_to_json(&table), input);
        Ok(())
    }

    #[test]
    fn properties_round_trip_through_json() -> ApiResult<()> {
        let input = json!({
            "content_type": "text/plain", "delivery_mode": 2, "priority": 7,
            "headers": {"h": 1}, "timestamp": 1763800000, "type": "t", "app_id": "a"
        });
        let properties = properties_from_json(&input)?;
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(properties_to_json(&properties), input);
        Ok(())
    }

    #[test]
    fn bad_input_names_the_field() {
        let deep = (0..40).fold(json!(1), |inner, _| json!({ "k": inner }));
        assert_eq!(
            table_from_json(&deep, "arguments").map_err(|e| e.field),
            Err(Some("arguments"))
        );
        assert!(properties_from_json(&json!({"priority": 300})).is_err());
        assert!(properties_from_json(&json!({"colour": "red"})).is_err());
        assert!(table_from_json(&json!([1]), "arguments").is_err());
    }
}
