//! MQTT retained messages: the last message published with the RETAIN flag
//! to each topic of a virtual host, handed to every new subscription whose
//! filter matches it.
//!
//! On a cluster they are metadata (`SetRetained`): committed by the
//! quorum, so every node hands out the same retained messages and they
//! survive the loss of a node; kept in snapshots, which bound the quorum's
//! log. A single node keeps them in a compacted log of its own
//! (`RetainedLog`, keyed by virtual host and topic), so a topic retained
//! again and again costs one record once compacted, and never grows the
//! metadata log. Either way they are held here as applied. The message is
//! stored as a queue's log stores one
//! ([`crate::messaging::Message::encode`]), so its properties (QoS, MQTT 5
//! properties as headers) come back unchanged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::messaging::Message;

/// The single-node log of retained messages.
pub(crate) const RETAINED_LOG: &str = "__mqtt_retained-0";

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

/// A single node's retained messages on disk: a compacted log whose
/// records are keyed `{vhost}\0{topic}` and hold a [`RetainedMessage`] as
/// JSON, or nothing (a tombstone) once cleared.
#[derive(Debug)]
pub(crate) struct RetainedLog {
    log: Arc<sluice_log::Log>,
    /// Appending and applying happen under it, so the map follows the
    /// log's order.
    writer: Mutex<()>,
}

impl RetainedLog {
    /// Opens the log (synced on every append, compacted, segments rolled
    /// at 64 MiB so compaction has closed segments to work on) and reads
    /// every retained message back into `retained`.
    pub(crate) fn open(
        logs: &sluice_log::LogManager,
        retained: &Retained,
    ) -> Result<RetainedLog, CoreError> {
        let config = sluice_log::LogConfig {
            durability: sluice_log::Durability::Always,
            cleanup_compact: true,
            cleanup_delete: false,
            retention_bytes: None,
            retention_time: None,
            segment_bytes: 64 << 20,
            ..logs.defaults().clone()
        };
        let log = logs.get_or_create(RETAINED_LOG, Some(config.clone()))?;
        log.set_config(config);
        let mut map = RetainedMap::new();
        crate::replay::for_each_record(&log, log.log_start(), |record| {
            let Some(key) = record.key.as_deref() else {
                return;
            };
            let Some((vhost, topic)) = std::str::from_utf8(key)
                .ok()
                .and_then(|key| key.split_once('\0'))
            else {
                return;
            };
            let value = record
                .value
                .as_deref()
                .and_then(|value| serde_json::from_slice::<RetainedMessage>(value).ok());
            set(&mut map, vhost.to_owned(), topic.to_owned(), value);
        })?;
        retained.replace_all(&map);
        Ok(RetainedLog {
            log,
            writer: Mutex::new(()),
        })
    }

    /// Writes `value` for `topic` (synced), then applies it to `retained`.
    pub(crate) fn set(
        &self,
        retained: &Retained,
        vhost: &str,
        topic: &str,
        value: Option<RetainedMessage>,
    ) -> Result<(), CoreError> {
        let key = format!("{vhost}\0{topic}");
        let encoded = value
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|error| CoreError::Internal {
                reason: format!("cannot encode a retained message: {error}"),
            })?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let entries = [(Some(key.as_bytes()), encoded.as_deref())];
        let mut batch = crate::replay::batch_of(&entries, "retained")?;
        self.log.append(&mut batch, crate::LOCAL_EPOCH)?;
        retained.set_one(vhost, topic, value.as_ref());
        Ok(())
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
    fn a_single_nodes_retained_log_reads_back_the_last_value_of_each_topic()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let logs = sluice_log::LogManager::open(dir.path(), sluice_log::LogConfig::default())?;
            let store = Retained::default();
            let log = RetainedLog::open(&logs, &store)?;
            log.set(&store, "/", "a/b", Some(retained(b"old", None)))?;
            log.set(&store, "/", "a/b", Some(retained(b"new", None)))?;
            log.set(&store, "/", "gone", Some(retained(b"x", None)))?;
            log.set(&store, "/", "gone", None)?;
            log.set(
                &store,
                "v",
                "a/b",
                Some(retained(b"other host", Some(i64::MAX))),
            )?;
            assert_eq!(store.count(), 2);
        }
        let logs = sluice_log::LogManager::open(dir.path(), sluice_log::LogConfig::default())?;
        let store = Retained::default();
        RetainedLog::open(&logs, &store)?;
        let found = store.matching("/", |_| true, 0);
        assert_eq!(found.len(), 1, "a tombstone clears, the last value wins");
        assert_eq!(&found[0].1.body[..], b"new");
        assert_eq!(store.matching("v", |_| true, 0).len(), 1);
        Ok(())
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
