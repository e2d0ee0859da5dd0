//! MQTT retained messages: the last message published with the RETAIN flag
//! to each topic of a virtual host, handed to every new subscription whose
//! filter matches it.
//!
//! They are metadata (`SetRetained`): committed by the quorum on a
//! cluster, so every node hands out the same retained messages and they
//! survive the loss of a node and a restart; kept in snapshots. Each is
//! held here as applied. The message is stored as a queue's log stores
//! one ([`crate::messaging::Message::encode`]), so its properties (QoS,
//! MQTT 5 properties as headers) come back unchanged.

use std::collections::BTreeMap;
use std::sync::RwLock;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::messaging::Message;

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedMessage {
    /// [`Message::encode`]'s bytes, base64 in the metadata log.
    #[serde(with = "base64_bytes")]
    pub message: Vec<u8>,
    /// When it expires (MQTT 5 Message Expiry Interval), milliseconds
    /// since the epoch.
    pub expires_at_ms: Option<i64>,
}

/// Retained messages by virtual host, then by MQTT topic name.
pub type RetainedMap = BTreeMap<String, BTreeMap<String, RetainedMessage>>;

/// The retained messages as applied on this node.
#[derive(Debug, Default)]
pub struct Retained {
    map: RwLock<RetainedMap>,
}

impl Retained {
    /// The unexpired retained messages of `vhost` whose topic `matches`
    /// accepts, with their topics, in topic order.
    pub fn matching(
        &self,
        vhost: &str,
        matches: impl Fn(&str) -> bool,
        now_ms: i64,
    ) -> Vec<(String, Message, Option<i64>)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let Some(topics) = map.get(vhost) else {
            return Vec::new();
        };
        topics
            .iter()
            .filter(|(topic, retained)| {
                retained.expires_at_ms.is_none_or(|at| at > now_ms) && matches(topic)
            })
            .filter_map(|(topic, retained)| {
                let message = Message::decode(bytes::Bytes::from(retained.message.clone()))?;
                Some((topic.clone(), message, retained.expires_at_ms))
            })
            .collect()
    }

    /// Retained messages held, over every virtual host.
    pub fn count(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(BTreeMap::len)
            .sum()
    }

    pub(crate) fn replace_all(&self, map: &RetainedMap) {
        map.clone_into(&mut self.map.write().unwrap_or_else(|e| e.into_inner()));
    }

    pub(crate) fn set_one(&self, vhost: &str, topic: &str, value: Option<&RetainedMessage>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        set(&mut map, vhost.to_owned(), topic.to_owned(), value.cloned());
    }
}

/// Sets (`Some`) or clears (`None`) the retained message of `topic`.
pub(crate) fn set(
    map: &mut RetainedMap,
    vhost: String,
    topic: String,
    value: Option<RetainedMessage>,
) {
    match value {
        Some(value) => {
            map.entry(vhost).or_default().insert(topic, value);
        }
        None => {
            if let Some(topics) = map.get_mut(&vhost) {
                topics.remove(&topic);
                if topics.is_empty() {
                    map.remove(&vhost);
                }
            }
        }
    }
}

mod base64_bytes {
    use super::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;

    fn retained(body: &'static [u8], expires_at_ms: Option<i64>) -> RetainedMessage {
        let message = Message {
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
            properties: BasicProperties::default(),
            body: bytes::Bytes::from_static(body),
        };
        RetainedMessage {
            message: message.encode().expect("default properties encode"),
            expires_at_ms,
        }
    }

    #[test]
    fn matching_skips_expired_and_other_hosts_and_clearing_leaves_no_entry() {
        let mut map = RetainedMap::new();
        set(
            &mut map,
            "/".into(),
            "a/b".into(),
            Some(retained(b"x", None)),
        );
        set(
            &mut map,
            "/".into(),
            "a/c".into(),
            Some(retained(b"y", Some(10))),
        );
        set(
            &mut map,
            "v".into(),
            "a/b".into(),
            Some(retained(b"z", None)),
        );
        let store = Retained::default();
        store.replace_all(&map);
        let found = store.matching("/", |topic| topic.starts_with("a/"), 20);
        assert_eq!(found.len(), 1, "the expired one is not handed out");
        assert_eq!(found[0].0, "a/b");
        assert_eq!(&found[0].1.body[..], b"x");
        assert_eq!(store.count(), 3);
        set(&mut map, "v".into(), "a/b".into(), None);
        assert!(!map.contains_key("v"));
    }

    #[test]
    fn a_retained_message_is_a_json_string_in_the_log() {
        let value = retained(b"\x00\xff", None);
        let text = serde_json::to_string(&value).expect("serializes");
        assert!(text.contains("\"message\":\""), "{text}");
        let back: RetainedMessage = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, value);
    }
}
