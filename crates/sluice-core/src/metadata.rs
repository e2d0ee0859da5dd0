//! Metadata as commands: every change to the broker's topics and every
//! block of producer ids is a [`MetadataCommand`], appended durably to one
//! log (`__cluster_metadata-0`, as KRaft names its own) before it is
//! applied, and replayed in order at open. A Raft log can later feed the
//! same commands to the same [`apply`] unchanged.
//!
//! Each command is one record whose value is the command as JSON.
//!
//! Data directories written before this log existed kept one TOML file per
//! topic under `topics/` and the end of the producer-id block in
//! `producer-id-block`; the first open turns them into commands and renames
//! them (`topics.migrated`, `producer-id-block.migrated`). Durable AMQP
//! objects lived in `__amqp_definitions-0`: the first open turns them into
//! commands too and deletes that log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sluice_log::{Log, LogManager};

use crate::CoreError;
use crate::messaging::definitions::{
    self, BindingDefinition, Definitions, ExchangeDefinition, QueueDefinition,
};

/// The log holding the commands.
pub(crate) const METADATA_LOG: &str = "__cluster_metadata-0";

/// One change to the broker's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum MetadataCommand {
    /// A new topic with `partitions` empty partitions.
    CreateTopic {
        name: String,
        /// Kafka's topic id (KIP-516), 32 hex digits.
        id: String,
        partitions: u32,
        config: BTreeMap<String, String>,
    },
    /// The topic now has `partitions` partitions (never fewer).
    GrowTopic {
        name: String,
        partitions: u32,
    },
    /// The topic's settings, all of them.
    SetTopicConfig {
        name: String,
        config: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Producer ids below `end` may have been handed out (KIP-98 blocks).
    AllocateProducerIds {
        end: i64,
    },
    /// A durable AMQP exchange, new or replacing its declaration.
    DeclareExchange(ExchangeDefinition),
    DeleteExchange {
        vhost: String,
        name: String,
    },
    /// A durable AMQP queue, new or replacing its declaration.
    DeclareQueue(QueueDefinition),
    DeleteQueue {
        vhost: String,
        name: String,
    },
    /// A binding between durable AMQP ends.
    Bind(BindingDefinition),
    Unbind(BindingDefinition),
}

/// A topic as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicMeta {
    pub(crate) id: String,
    pub(crate) partitions: u32,
    pub(crate) config: BTreeMap<String, String>,
}

/// The metadata a sequence of commands leaves.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MetadataState {
    /// Topics by name.
    pub(crate) topics: BTreeMap<String, TopicMeta>,
    /// The end of the last producer-id block: ids from here are unused.
    pub(crate) producer_ids_end: i64,
    /// Durable AMQP exchanges, queues and bindings.
    pub(crate) definitions: Definitions,
}

/// Applies one command to `state`. Deterministic: the same commands in the
/// same order leave the same state on every node.
///
/// # Errors
/// [`CoreError::TopicExists`], [`CoreError::UnknownTopic`],
/// [`CoreError::InvalidPartitions`] or [`CoreError::Internal`] (a
/// producer-id block that does not move forward) for a command the state
/// refuses (then nothing changed); writers check before they append, so a
/// replayed log holds none.
pub(crate) fn apply(state: &mut MetadataState, command: MetadataCommand) -> Result<(), CoreError> {
    if definitions::apply(&mut state.definitions, &command) {
        return Ok(());
    }
    let topics = &mut state.topics;
    let unknown = |name: &str| CoreError::UnknownTopic {
        topic: name.to_owned(),
    };
    match command {
        MetadataCommand::CreateTopic {
            name,
            id,
            partitions,
            config,
        } => {
            if topics.contains_key(&name) {
                return Err(CoreError::TopicExists { topic: name });
            }
            topics.insert(
                name,
                TopicMeta {
                    id,
                    partitions,
                    config,
                },
            );
        }
        MetadataCommand::GrowTopic { name, partitions } => {
            let topic = topics.get_mut(&name).ok_or_else(|| unknown(&name))?;
            if partitions < topic.partitions {
                return Err(CoreError::InvalidPartitions {
                    topic: name,
                    reason: format!(
                        "partitions never shrink: {} to {partitions}",
                        topic.partitions
                    ),
                });
            }
            topic.partitions = partitions;
        }
        MetadataCommand::SetTopicConfig { name, config } => {
            topics.get_mut(&name).ok_or_else(|| unknown(&name))?.config = config;
        }
        MetadataCommand::DeleteTopic { name } => {
            topics.remove(&name).ok_or_else(|| unknown(&name))?;
        }
        MetadataCommand::AllocateProducerIds { end } => {
            if end <= state.producer_ids_end {
                return Err(CoreError::Internal {
                    reason: format!(
                        "producer-id block end {end} is not past {}",
                        state.producer_ids_end
                    ),
                });
            }
            state.producer_ids_end = end;
        }
        MetadataCommand::DeclareExchange(_)
        | MetadataCommand::DeleteExchange { .. }
        | MetadataCommand::DeclareQueue(_)
        | MetadataCommand::DeleteQueue { .. }
        | MetadataCommand::Bind(_)
        | MetadataCommand::Unbind(_) => {}
    }
    Ok(())
}

/// The metadata log, shared by its writers (topics, producer ids): each
/// holds [`Metadata::writer`] from its check to its apply, so commands are
/// appended and applied in one order.
#[derive(Debug)]
pub(crate) struct Metadata {
    log: Mutex<MetadataLog>,
}

impl Metadata {
    /// Opens the log, migrates an older data directory into it, and
    /// replays it.
    pub(crate) fn open(
        data_dir: &Path,
        logs: &LogManager,
    ) -> Result<(Arc<Metadata>, MetadataState), CoreError> {
        let log = MetadataLog::open(logs)?;
        migrate(data_dir, &log)?;
        migrate_definitions(logs, &log)?;
        let mut state = MetadataState::default();
        for command in log.replay()? {
            if let Err(error) = apply(&mut state, command) {
                // Writers check before they append; a refused command is a
                // broken invariant, not a reason to lose the rest.
                tracing::warn!(%error, "skipping a metadata command the state refuses");
            }
        }
        let metadata = Metadata {
            log: Mutex::new(log),
        };
        Ok((Arc::new(metadata), state))
    }

    /// The log, for one writer at a time.
    pub(crate) fn writer(&self) -> MutexGuard<'_, MetadataLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Turns what a data directory written before the metadata log kept beside
/// it (topic files, the producer-id block file) into commands (once: only
/// into an empty log), then moves the files aside.
fn migrate(data_dir: &Path, log: &MetadataLog) -> Result<(), CoreError> {
    let block_file = data_dir.join(PRODUCER_ID_BLOCK_FILE);
    if log.is_empty() {
        let mut commands = topic_files(data_dir)?;
        if let Some(end) = producer_id_block(&block_file)? {
            commands.push(MetadataCommand::AllocateProducerIds { end });
        }
        if !commands.is_empty() {
            log.append(&commands)?;
            tracing::info!(
                commands = commands.len(),
                "moved topic files and the producer-id block into the metadata log"
            );
        }
    }
    let moves = [
        (data_dir.join(TOPIC_FILES_DIR), data_dir.join(MIGRATED_DIR)),
        (block_file.clone(), block_file.with_extension("migrated")),
    ];
    for (from, to) in moves {
        if from.exists() && !to.exists() {
            std::fs::rename(&from, &to).map_err(|source| CoreError::DataDir {
                path: from.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Turns the durable AMQP objects of an older data directory's
/// definitions log into commands, then deletes that log. Stopped between
/// the two, the next open declares the same objects again: a declaration
/// replaces, so nothing changes.
fn migrate_definitions(logs: &LogManager, log: &MetadataLog) -> Result<(), CoreError> {
    let Some(commands) = definitions::legacy::commands(logs)? else {
        return Ok(());
    };
    if !commands.is_empty() {
        log.append(&commands)?;
    }
    logs.delete(definitions::legacy::LOG)?;
    tracing::info!(
        commands = commands.len(),
        "moved AMQP definitions into the metadata log"
    );
    Ok(())
}

/// Where older data directories saved the end of the producer-id block.
const PRODUCER_ID_BLOCK_FILE: &str = "producer-id-block";

fn producer_id_block(path: &Path) -> Result<Option<i64>, CoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .map(|end| (end > 0).then_some(end))
            .map_err(|_| CoreError::TopicRecord {
                path: path.to_path_buf(),
                reason: format!("expected one number, found {:?}", text.trim()),
            }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CoreError::DataDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The durable log of commands.
#[derive(Debug)]
pub(crate) struct MetadataLog {
    log: Arc<Log>,
}

impl MetadataLog {
    /// Opens the log: synced on every append, never deleted by retention.
    pub(crate) fn open(logs: &LogManager) -> Result<MetadataLog, CoreError> {
        let config = sluice_log::LogConfig {
            durability: sluice_log::Durability::Always,
            cleanup_compact: false,
            cleanup_delete: false,
            retention_bytes: None,
            retention_time: None,
            ..logs.defaults().clone()
        };
        let log = logs.get_or_create(METADATA_LOG, Some(config.clone()))?;
        log.set_config(config);
        Ok(MetadataLog { log })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.log.log_end() == self.log.log_start()
    }

    /// Every command, in order.
    ///
    /// # Errors
    /// The log's read errors; [`CoreError::TopicRecord`] naming the log for
    /// a record that is not a command.
    pub(crate) fn replay(&self) -> Result<Vec<MetadataCommand>, CoreError> {
        let mut commands = Vec::new();
        let mut damaged = None;
        crate::replay::for_each_record(&self.log, self.log.log_start(), |record| {
            let Some(value) = record.value.filter(|_| damaged.is_none()) else {
                return;
            };
            match serde_json::from_slice(&value) {
                Ok(command) => commands.push(command),
                Err(error) => {
                    damaged = Some(format!("record {}: {error}", record.offset));
                }
            }
        })?;
        match damaged {
            Some(reason) => Err(CoreError::TopicRecord {
                path: self.log.dir().to_path_buf(),
                reason,
            }),
            None => Ok(commands),
        }
    }

    /// Appends commands and returns once they are on disk.
    pub(crate) fn append(&self, commands: &[MetadataCommand]) -> Result<(), CoreError> {
        let values = commands
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| CoreError::Internal {
                reason: format!("cannot encode a metadata command: {error}"),
            })?;
        let entries: Vec<_> = values.iter().map(|v| (None, Some(v.as_slice()))).collect();
        let mut batch = crate::replay::batch_of(&entries, "metadata")?;
        self.log.append(&mut batch, crate::LOCAL_EPOCH)?;
        Ok(())
    }
}

/// A topic as the TOML files of older data directories saved it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFile {
    name: String,
    id: String,
    partitions: u32,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

/// The directory of older data directories' topic files.
pub(crate) const TOPIC_FILES_DIR: &str = "topics";
/// Where that directory goes once its topics are in the metadata log.
pub(crate) const MIGRATED_DIR: &str = "topics.migrated";

/// The `CreateTopic` commands of the topic files in `data_dir/topics`,
/// sorted by name; empty when there are none.
///
/// # Errors
/// [`CoreError::TopicRecord`] naming a file that cannot be read.
pub(crate) fn topic_files(data_dir: &Path) -> Result<Vec<MetadataCommand>, CoreError> {
    let dir = data_dir.join(TOPIC_FILES_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CoreError::DataDir { path: dir, source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| CoreError::DataDir {
                path: dir.clone(),
                source,
            })?
            .path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let damaged = |reason: String| CoreError::TopicRecord {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| damaged(e.to_string()))?;
        let file: TopicFile = toml::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        files.push(file);
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files
        .into_iter()
        .map(|file| MetadataCommand::CreateTopic {
            name: file.name,
            id: file.id,
            partitions: file.partitions,
            config: file.config,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: u32) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.to_owned(),
            id: "00".repeat(16),
            partitions,
            config: BTreeMap::new(),
        }
    }

    #[test]
    fn commands_apply_in_order_and_refuse_what_the_state_forbids() {
        let mut state = MetadataState::default();
        apply(&mut state, create("a", 1)).expect("create");
        apply(&mut state, create("b", 2)).expect("create");
        assert!(matches!(
            apply(&mut state, create("a", 3)),
            Err(CoreError::TopicExists { .. })
        ));
        apply(
            &mut state,
            MetadataCommand::GrowTopic {
                name: "a".into(),
                partitions: 4,
            },
        )
        .expect("grow");
        assert!(
            apply(
                &mut state,
                MetadataCommand::GrowTopic {
                    name: "a".into(),
                    partitions: 2,
                },
            )
            .is_err(),
            "never shrinks"
        );
        let config = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]);
        apply(
            &mut state,
            MetadataCommand::SetTopicConfig {
                name: "a".into(),
                config: config.clone(),
            },
        )
        .expect("config");
        apply(
            &mut state,
            MetadataCommand::DeleteTopic { name: "b".into() },
        )
        .expect("delete");
        assert!(matches!(
            apply(
                &mut state,
                MetadataCommand::DeleteTopic { name: "b".into() }
            ),
            Err(CoreError::UnknownTopic { .. })
        ));
        assert_eq!(state.topics.len(), 1);
        assert_eq!(state.topics["a"].partitions, 4);
        assert_eq!(state.topics["a"].config, config);
        apply(
            &mut state,
            MetadataCommand::AllocateProducerIds { end: 1000 },
        )
        .expect("block");
        assert!(
            apply(
                &mut state,
                MetadataCommand::AllocateProducerIds { end: 1000 }
            )
            .is_err(),
            "blocks only move forward"
        );
        assert_eq!(state.producer_ids_end, 1000);
    }

    #[test]
    fn commands_are_json_records_that_replay_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = LogManager::open(dir.path(), sluice_log::LogConfig::default()).expect("logs");
        let metadata = MetadataLog::open(&logs).expect("open");
        assert!(metadata.is_empty());
        let commands = vec![
            create("a", 1),
            MetadataCommand::DeleteTopic { name: "a".into() },
        ];
        metadata.append(&commands[..1]).expect("append");
        metadata.append(&commands[1..]).expect("append");
        assert_eq!(metadata.replay().expect("replay"), commands);
        let text = serde_json::to_string(&commands[1]).expect("json");
        assert_eq!(text, r#"{"command":"delete_topic","name":"a"}"#);
    }
}
