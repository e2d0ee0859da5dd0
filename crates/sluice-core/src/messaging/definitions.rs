//! Durable exchanges, queues and bindings, kept in the compacted internal
//! log `__amqp_definitions-0`: one record per object, the latest per key
//! wins, a deletion is a tombstone. Replayed on open.
//!
//! Key layout: `[kind:1][vhost_len:2][vhost][name_len:2][name]` for kind 0
//! (exchange) and 1 (queue); kind 2 (binding) continues with
//! `[destination_kind:1][destination_len:2][destination][routing_key_len:2][routing_key][arguments]`.
//! Value layout: exchange `[version:1=0][type_len:2][type][flags:1][arguments]`
//! (flags: 1 auto-delete, 2 internal); queue `[version:1=0][store_id_len:2][store_id][flags:1][arguments]`
//! (flags: 1 auto-delete); binding `[version:1=0]`. Arguments are an AMQP
//! field table as on the wire; integers big-endian.

use std::collections::BTreeMap;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use amq_protocol::types::parsing::parse_field_table;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_log::batch::{NewRecord, encode};
use sluice_log::{Clock, Log, LogManager, SystemClock};

use super::exchange::Destination;
use super::message::encode_table;
use crate::CoreError;
use crate::fields::{get_str, put_str};

/// Name of the log holding durable definitions.
pub(crate) const DEFINITIONS_LOG: &str = "__amqp_definitions-0";

/// A durable object as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Definition {
    Exchange {
        vhost: String,
        name: String,
        kind: String,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    },
    Queue {
        vhost: String,
        name: String,
        store_id: String,
        auto_delete: bool,
        arguments: FieldTable,
    },
    Binding {
        vhost: String,
        source: String,
        destination: Destination,
        routing_key: String,
        arguments: FieldTable,
    },
}

#[derive(Debug)]
pub(crate) struct Definitions {
    log: Arc<Log>,
}

fn get_table(bytes: &Bytes) -> Option<FieldTable> {
    let (rest, table) = parse_field_table(&bytes[..]).ok()?;
    rest.is_empty().then_some(table)
}

impl Definition {
    fn key(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Definition::Exchange { vhost, name, .. } => {
                out.put_u8(0);
                put_str(&mut out, vhost);
                put_str(&mut out, name);
            }
            Definition::Queue { vhost, name, .. } => {
                out.put_u8(1);
                put_str(&mut out, vhost);
                put_str(&mut out, name);
            }
            Definition::Binding {
                vhost,
                source,
                destination,
                routing_key,
                arguments,
            } => {
                out.put_u8(2);
                put_str(&mut out, vhost);
                put_str(&mut out, source);
                match destination {
                    Destination::Queue(name) => {
                        out.put_u8(0);
                        put_str(&mut out, name);
                    }
                    Destination::Exchange(name) => {
                        out.put_u8(1);
                        put_str(&mut out, name);
                    }
                }
                put_str(&mut out, routing_key);
                out.put_slice(&encode_table(arguments));
            }
        }
        out.freeze()
    }

    fn value(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(0);
        match self {
            Definition::Exchange {
                kind,
                auto_delete,
                internal,
                arguments,
                ..
            } => {
                put_str(&mut out, kind);
                out.put_u8(u8::from(*auto_delete) | (u8::from(*internal) << 1));
                out.put_slice(&encode_table(arguments));
            }
            Definition::Queue {
                store_id,
                auto_delete,
                arguments,
                ..
            } => {
                put_str(&mut out, store_id);
                out.put_u8(u8::from(*auto_delete));
                out.put_slice(&encode_table(arguments));
            }
            Definition::Binding { .. } => {}
        }
        out.freeze()
    }

    fn decode(mut key: Bytes, mut value: Bytes) -> Option<Definition> {
        if !key.has_remaining() || !value.has_remaining() || value.get_u8() != 0 {
            return None;
        }
        let kind = key.get_u8();
        let vhost = get_str(&mut key)?;
        match kind {
            0 => {
                let name = get_str(&mut key)?;
                let exchange_kind = get_str(&mut value)?;
                if !value.has_remaining() {
                    return None;
                }
                let flags = value.get_u8();
                Some(Definition::Exchange {
                    vhost,
                    name,
                    kind: exchange_kind,
                    auto_delete: flags & 1 != 0,
                    internal: flags & 2 != 0,
                    arguments: get_table(&value)?,
                })
            }
            1 => {
                let name = get_str(&mut key)?;
                let store_id = get_str(&mut value)?;
                if !value.has_remaining() {
                    return None;
                }
                let flags = value.get_u8();
                Some(Definition::Queue {
                    vhost,
                    name,
                    store_id,
                    auto_delete: flags & 1 != 0,
                    arguments: get_table(&value)?,
                })
            }
            2 => {
                let source = get_str(&mut key)?;
                if !key.has_remaining() {
                    return None;
                }
                let destination_kind = key.get_u8();
                let destination_name = get_str(&mut key)?;
                let destination = match destination_kind {
                    0 => Destination::Queue(destination_name),
                    1 => Destination::Exchange(destination_name),
                    _ => return None,
                };
                let routing_key = get_str(&mut key)?;
                Some(Definition::Binding {
                    vhost,
                    source,
                    destination,
                    routing_key,
                    arguments: get_table(&key)?,
                })
            }
            _ => None,
        }
    }
}

impl Definitions {
    /// Opens the log and returns what it holds, in key order (exchanges,
    /// then queues, then bindings).
    pub(crate) fn open(logs: &LogManager) -> Result<(Definitions, Vec<Definition>), CoreError> {
        let config = sluice_log::LogConfig {
            cleanup_compact: true,
            cleanup_delete: false,
            retention_bytes: None,
            retention_time: None,
            ..logs.defaults().clone()
        };
        let log = logs.get_or_create(DEFINITIONS_LOG, Some(config.clone()))?;
        log.set_config(config);
        let mut latest: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
        crate::replay::for_each_record(&log, log.log_start(), |record| {
            if let Some(key) = record.key {
                latest.insert(key, record.value);
            }
        })?;
        let mut definitions = Vec::new();
        for (key, value) in latest {
            let Some(value) = value else { continue };
            match Definition::decode(key, value) {
                Some(definition) => definitions.push(definition),
                None => tracing::warn!("skipping a damaged AMQP definition record"),
            }
        }
        Ok((Definitions { log }, definitions))
    }

    /// Stores a definition durably.
    pub(crate) fn put(&self, definition: &Definition) -> Result<(), CoreError> {
        self.append(&definition.key(), Some(&definition.value()))
    }

    /// Removes a definition durably.
    pub(crate) fn remove(&self, definition: &Definition) -> Result<(), CoreError> {
        self.append(&definition.key(), None)
    }

    fn append(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), CoreError> {
        let mut batch = encode(&[NewRecord {
            key: Some(key),
            value,
            timestamp: SystemClock.now_ms(),
        }])
        .map_err(|reason| CoreError::Internal {
            reason: format!("cannot encode a definitions batch: {reason}"),
        })?;
        self.log.append(&mut batch, crate::LOCAL_EPOCH)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn definitions_survive_reopen_and_deletions_stick() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut arguments = FieldTable::default();
        arguments.insert("x-match".into(), AMQPValue::LongString("any".into()));
        let exchange = Definition::Exchange {
            vhost: "/".into(),
            name: "orders".into(),
            kind: "topic".into(),
            auto_delete: false,
            internal: true,
            arguments: FieldTable::default(),
        };
        let queue = Definition::Queue {
            vhost: "/".into(),
            name: "q1".into(),
            store_id: "abc".into(),
            auto_delete: true,
            arguments: arguments.clone(),
        };
        let binding = Definition::Binding {
            vhost: "/".into(),
            source: "orders".into(),
            destination: Destination::Queue("q1".into()),
            routing_key: "a.*".into(),
            arguments,
        };
        {
            let logs = LogManager::open(dir.path(), sluice_log::LogConfig::default())?;
            let (store, loaded) = Definitions::open(&logs)?;
            assert!(loaded.is_empty());
            store.put(&exchange)?;
            store.put(&queue)?;
            store.put(&binding)?;
            store.remove(&queue)?;
            logs.shutdown()?;
        }
        let logs = LogManager::open(dir.path(), sluice_log::LogConfig::default())?;
        let (_, loaded) = Definitions::open(&logs)?;
        assert_eq!(loaded, vec![exchange, binding]);
        logs.shutdown()?;
        Ok(())
    }
}
