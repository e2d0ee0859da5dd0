//! Durable exchanges, queues and bindings are metadata: declaring or
//! deleting one (and binding or unbinding) is a [`MetadataCommand`] in the
//! metadata log (see [`crate::metadata`]), appended before the virtual host
//! applies it and replayed at open into [`Definition`]s, the latest per
//! object. Arguments travel as the AMQP field table they were declared with,
//! in hex, so no type is lost.
//!
//! Data directories written before kept these in a compacted log of their
//! own, `__amqp_definitions-0` (layouts in [`legacy`]); the first open turns
//! what it holds into commands and deletes it.

use std::collections::BTreeMap;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use amq_protocol::types::parsing::parse_field_table;
use serde::{Deserialize, Serialize};

use super::exchange::Destination;
use super::message::encode_table;
use crate::CoreError;
use crate::metadata::{Metadata, MetadataCommand};

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDefinition {
    pub vhost: String,
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    #[serde(with = "table_hex")]
    pub arguments: FieldTable,
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDefinition {
    pub vhost: String,
    pub name: String,
    /// Names the queue's message and settlement logs; empty for a stream
    /// (its messages are its topic's records).
    pub store_id: String,
    pub auto_delete: bool,
    #[serde(with = "table_hex")]
    pub arguments: FieldTable,
    /// The node holding a classic queue's messages, on a cluster (the
    /// node it was declared on); `None` on a cluster of one and for
    /// queues declared before clusters had homes (every node holds those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<i32>,
}

/// A binding between durable ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingDefinition {
    pub vhost: String,
    pub source: String,
    pub destination: Destination,
    pub routing_key: String,
    #[serde(with = "table_hex")]
    pub arguments: FieldTable,
}

/// A durable object as the metadata holds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Definition {
    Exchange(ExchangeDefinition),
    Queue(QueueDefinition),
    Binding(BindingDefinition),
}

/// What identifies a durable object. Ordered so that a replay restores
/// exchanges, then queues, then the bindings between them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DefinitionKey {
    Exchange {
        vhost: String,
        name: String,
    },
    Queue {
        vhost: String,
        name: String,
    },
    Binding {
        vhost: String,
        source: String,
        destination: Destination,
        routing_key: String,
        /// The arguments as on the wire: two bindings differing only in
        /// arguments are two bindings.
        arguments: Vec<u8>,
    },
}

impl BindingDefinition {
    fn key(&self) -> DefinitionKey {
        DefinitionKey::Binding {
            vhost: self.vhost.clone(),
            source: self.source.clone(),
            destination: self.destination.clone(),
            routing_key: self.routing_key.clone(),
            arguments: encode_table(&self.arguments),
        }
    }
}

impl Definition {
    /// The virtual host it belongs to.
    pub(crate) fn vhost(&self) -> &str {
        match self {
            Definition::Exchange(exchange) => &exchange.vhost,
            Definition::Queue(queue) => &queue.vhost,
            Definition::Binding(binding) => &binding.vhost,
        }
    }
}

/// The durable AMQP objects a sequence of commands leaves.
pub(crate) type Definitions = BTreeMap<DefinitionKey, Definition>;

/// Applies an AMQP command to `definitions`: a declaration or binding
/// replaces what the same key held, a deletion or unbinding removes it (and
/// removing what is absent changes nothing, as a tombstone did). Returns
/// `false` for a command that is not about AMQP objects.
pub(crate) fn apply(definitions: &mut Definitions, command: &MetadataCommand) -> bool {
    match command {
        MetadataCommand::DeclareExchange(exchange) => {
            let key = DefinitionKey::Exchange {
                vhost: exchange.vhost.clone(),
                name: exchange.name.clone(),
            };
            definitions.insert(key, Definition::Exchange(exchange.clone()));
        }
        MetadataCommand::DeleteExchange { vhost, name } => {
            definitions.remove(&DefinitionKey::Exchange {
                vhost: vhost.clone(),
                name: name.clone(),
            });
        }
        MetadataCommand::DeclareQueue(queue) => {
            let key = DefinitionKey::Queue {
                vhost: queue.vhost.clone(),
                name: queue.name.clone(),
            };
            definitions.insert(key, Definition::Queue(queue.clone()));
        }
        MetadataCommand::DeleteQueue { vhost, name } => {
            definitions.remove(&DefinitionKey::Queue {
                vhost: vhost.clone(),
                name: name.clone(),
            });
        }
        MetadataCommand::Bind(binding) => {
            definitions.insert(binding.key(), Definition::Binding(binding.clone()));
        }
        MetadataCommand::Unbind(binding) => {
            definitions.remove(&binding.key());
        }
        _ => return false,
    }
    true
}

/// The durable AMQP objects at open, and where changes to them go.
#[derive(Debug)]
pub(crate) struct DurableDefinitions {
    pub(crate) writer: DefinitionWriter,
    pub(crate) stored: Definitions,
}

/// Where a virtual host writes its durable changes.
#[derive(Debug)]
pub(crate) struct DefinitionWriter {
    metadata: Arc<Metadata>,
}

impl DefinitionWriter {
    pub(crate) fn new(metadata: Arc<Metadata>) -> DefinitionWriter {
        DefinitionWriter { metadata }
    }

    /// Commits `command`; the caller applies it to the virtual host after.
    ///
    /// # Errors
    /// The metadata's commit failure.
    pub(crate) fn commit(&self, command: MetadataCommand) -> Result<(), CoreError> {
        self.metadata.commit(command)
    }

    /// The `max-queues` limit set on virtual host `vhost`, if any.
    pub(crate) fn queue_limit(&self, vhost: &str) -> Option<u64> {
        self.metadata.limits().vhost(vhost, "max-queues")
    }

    /// The home of a classic queue declared on this node: this node on a
    /// cluster, none on a cluster of one.
    pub(crate) fn home(&self) -> Option<i32> {
        self.metadata.clustered().then(|| self.metadata.node_id())
    }

    /// The committed declaration of queue `name` of `vhost`.
    pub(crate) fn queue(&self, vhost: &str, name: &str) -> Option<QueueDefinition> {
        self.metadata.queue_definition(vhost, name)
    }

    /// The committed quorum queues of `vhost`.
    pub(crate) fn quorum_queues(&self, vhost: &str) -> Vec<QueueDefinition> {
        self.metadata.quorum_queue_definitions(vhost)
    }

    /// Whether the controller counts node `node` as down (fenced).
    pub(crate) fn is_down(&self, node: i32) -> bool {
        self.metadata.fenced().contains(&node)
    }
}

/// A field table as the hex of its wire encoding.
mod table_hex {
    use std::fmt::Write as _;

    use super::{FieldTable, encode_table, parse_field_table};
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        table: &FieldTable,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut text = String::new();
        for byte in encode_table(table) {
            let _ = write!(text, "{byte:02x}");
        }
        serializer.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<FieldTable, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = (0..text.len())
            .step_by(2)
            .map(|at| {
                text.get(at..at + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| D::Error::custom("arguments are not hex"))?;
        match parse_field_table(&bytes[..]) {
            Ok(([], table)) => Ok(table),
            _ => Err(D::Error::custom("arguments are not an AMQP field table")),
        }
    }
}

/// The log older data directories kept definitions in: compacted, one
/// record per object, the latest per key wins, a deletion is a tombstone.
///
/// Key layout: `[kind:1][vhost_len:2][vhost][name_len:2][name]` for kind 0
/// (exchange) and 1 (queue); kind 2 (binding) continues with
/// `[destination_kind:1][destination_len:2][destination][routing_key_len:2][routing_key][arguments]`.
/// Value layout: exchange `[version:1=0][type_len:2][type][flags:1][arguments]`
/// (flags: 1 auto-delete, 2 internal); queue `[version:1=0][store_id_len:2][store_id][flags:1][arguments]`
/// (flags: 1 auto-delete); binding `[version:1=0]`. Arguments are an AMQP
/// field table as on the wire; integers big-endian.
pub(crate) mod legacy {
    use std::collections::BTreeMap;

    use bytes::{Buf, Bytes};
    use sluice_log::LogManager;

    use super::{
        BindingDefinition, Destination, ExchangeDefinition, FieldTable, QueueDefinition,
        parse_field_table,
    };
    use crate::CoreError;
    use crate::fields::get_str;
    use crate::metadata::MetadataCommand;

    /// Name of the old log.
    pub(crate) const LOG: &str = "__amqp_definitions-0";

    /// The commands that declare what the old log holds, exchanges first,
    /// then queues, then bindings; `None` when there is no old log.
    ///
    /// # Errors
    /// The log's read errors.
    pub(crate) fn commands(logs: &LogManager) -> Result<Option<Vec<MetadataCommand>>, CoreError> {
        let Some(log) = logs.get(LOG) else {
            return Ok(None);
        };
        let mut latest: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
        crate::replay::for_each_record(&log, log.log_start(), |record| {
            if let Some(key) = record.key {
                latest.insert(key, record.value);
            }
        })?;
        let mut commands = Vec::new();
        for (key, value) in latest {
            let Some(value) = value else { continue };
            match decode(key, value) {
                Some(command) => commands.push(command),
                None => tracing::warn!("skipping a damaged AMQP definition record"),
            }
        }
        Ok(Some(commands))
    }

    fn get_table(bytes: &Bytes) -> Option<FieldTable> {
        let (rest, table) = parse_field_table(&bytes[..]).ok()?;
        rest.is_empty().then_some(table)
    }

    fn decode(mut key: Bytes, mut value: Bytes) -> Option<MetadataCommand> {
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
                Some(MetadataCommand::DeclareExchange(ExchangeDefinition {
                    vhost,
                    name,
                    kind: exchange_kind,
                    auto_delete: flags & 1 != 0,
                    internal: flags & 2 != 0,
                    arguments: get_table(&value)?,
                }))
            }
            1 => {
                let name = get_str(&mut key)?;
                let store_id = get_str(&mut value)?;
                if !value.has_remaining() {
                    return None;
                }
                let flags = value.get_u8();
                Some(MetadataCommand::DeclareQueue(QueueDefinition {
                    home: None,
                    vhost,
                    name,
                    store_id,
                    auto_delete: flags & 1 != 0,
                    arguments: get_table(&value)?,
                }))
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
                Some(MetadataCommand::Bind(BindingDefinition {
                    vhost,
                    source,
                    destination,
                    routing_key,
                    arguments: get_table(&key)?,
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn declarations_replace_deletions_remove_and_replay_orders_by_kind() {
        let mut arguments = FieldTable::default();
        arguments.insert("x-match".into(), AMQPValue::LongString("any".into()));
        let exchange = ExchangeDefinition {
            vhost: "/".into(),
            name: "orders".into(),
            kind: "topic".into(),
            auto_delete: false,
            internal: true,
            arguments: FieldTable::default(),
        };
        let queue = QueueDefinition {
            home: None,
            vhost: "/".into(),
            name: "q1".into(),
            store_id: "abc".into(),
            auto_delete: true,
            arguments: arguments.clone(),
        };
        let binding = BindingDefinition {
            vhost: "/".into(),
            source: "orders".into(),
            destination: Destination::Queue("q1".into()),
            routing_key: "a.*".into(),
            arguments,
        };
        let other_binding = BindingDefinition {
            arguments: FieldTable::default(),
            ..binding.clone()
        };
        let commands = [
            MetadataCommand::Bind(binding.clone()),
            MetadataCommand::Bind(other_binding.clone()),
            MetadataCommand::DeclareQueue(queue.clone()),
            MetadataCommand::DeclareExchange(exchange.clone()),
            MetadataCommand::DeleteQueue {
                vhost: "/".into(),
                name: "q1".into(),
            },
            MetadataCommand::Unbind(other_binding),
            MetadataCommand::DeleteQueue {
                vhost: "/".into(),
                name: "absent".into(),
            },
        ];
        let mut definitions = Definitions::new();
        for command in &commands {
            assert!(apply(&mut definitions, command));
        }
        let left: Vec<Definition> = definitions.into_values().collect();
        assert_eq!(
            left,
            vec![Definition::Exchange(exchange), Definition::Binding(binding)]
        );
        assert!(!apply(
            &mut Definitions::new(),
            &MetadataCommand::AllocateProducerIds { end: 1 }
        ));
    }

    #[test]
    fn commands_keep_every_argument_type_through_json() {
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        arguments.insert("x-flag".into(), AMQPValue::Boolean(true));
        let command = MetadataCommand::DeclareQueue(QueueDefinition {
            home: Some(2),
            vhost: "v".into(),
            name: "q".into(),
            store_id: String::new(),
            auto_delete: false,
            arguments,
        });
        let text = serde_json::to_string(&command).expect("json");
        assert!(
            text.starts_with(r#"{"command":"declare_queue","vhost":"v","#),
            "{text}"
        );
        let back: MetadataCommand = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, command);
        let bad = text.replace(r#""arguments":""#, r#""arguments":"zz"#);
        assert!(serde_json::from_str::<MetadataCommand>(&bad).is_err());
    }
}
