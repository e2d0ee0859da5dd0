//! Per-topic settings under their Kafka names (`retention.ms`, …): parsed,
//! validated, and turned into the log engine's [`LogConfig`].
//!
//! A topic stores only the keys set on it; every other key takes the
//! broker's default, and DescribeConfigs reports which is which.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_log::batch::Compression;
use sluice_log::{Durability, LogConfig};

use crate::CoreError;

/// Where a topic setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic.
    Topic,
    /// Set on the group (group configs).
    Group,
    /// The broker's default.
    Default,
}

/// A setting's value type, as Kafka's `ConfigDef` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Long,
    Double,
    List,
}

/// One setting as DescribeConfigs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub source: ConfigSource,
    pub config_type: ConfigType,
    /// The broker setting a topic without an override takes its value
    /// from, under Kafka's name, and the default in that setting's unit:
    /// (`log.retention.hours`, `168`) for `retention.ms` at a week, as
    /// Kafka reports it; `None` for keys without one.
    pub broker_synonym: Option<(&'static str, String)>,
    /// The value the key has when the topic does not set it.
    pub default: String,
}

/// How old a topic's records are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// Kafka's `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    Delete,
    Compact,
    CompactDelete,
    /// An empty list: records are neither deleted by retention nor
    /// compacted, as in Kafka.
    Neither,
}

/// The settings a topic may carry, by Kafka name: every topic config of
/// Apache Kafka 3.9 (`TopicConfig`), then Sluice's own. Sluice acts on some
/// of Kafka's and stores the rest only (see [`STORED_ONLY_KEYS`]).
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.type",
    "compression.zstd.level",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "follower.replication.throttled.replicas",
    "index.interval.bytes",
    "leader.replication.throttled.replicas",
    "local.retention.bytes",
    "local.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.downconversion.enable",
    "message.format.version",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.difference.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "remote.log.copy.disable",
    "remote.log.delete.on.disable",
    "remote.storage.enable",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
    "unclean.leader.election.enable",
    FORWARD_EXCHANGE,
    FORWARD_ROUTING_KEY,
    FORWARD_START,
    FORWARD_VHOST,
    SHARE_DEAD_LETTER_EXCHANGE,
    SHARE_DEAD_LETTER_VHOST,
];

/// Kafka's topic configs that Sluice accepts, validates, stores and
/// reports but does not act on: recompression uses each codec's default
/// level, segments are deleted at once, the offset index is not
/// preallocated, and there is one broker, no tiered storage and no
/// down-conversion.
pub const STORED_ONLY_KEYS: &[&str] = &[
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.zstd.level",
    "file.delete.delay.ms",
    "follower.replication.throttled.replicas",
    "leader.replication.throttled.replicas",
    "local.retention.bytes",
    "local.retention.ms",
    "message.downconversion.enable",
    "message.format.version",
    "preallocate",
    "remote.log.copy.disable",
    "remote.log.delete.on.disable",
    "remote.storage.enable",
    "segment.index.bytes",
    "unclean.leader.election.enable",
];

/// The settings whose value is a comma-separated list (Kafka's LIST type),
/// the only ones IncrementalAlterConfigs may APPEND to or SUBTRACT from.
const LIST_KEYS: &[&str] = &[
    "cleanup.policy",
    "follower.replication.throttled.replicas",
    "leader.replication.throttled.replicas",
];

/// The versions Kafka 3.9's `message.format.version` validator
/// (`MetadataVersion.fromVersionString`) knows, short and with their
/// inter-broker protocol suffixes.
const MESSAGE_FORMAT_VERSIONS: &[&str] = &[
    "0.8.0",
    "0.8.1",
    "0.8.2",
    "0.9.0",
    "0.10.0",
    "0.10.0-IV0",
    "0.10.0-IV1",
    "0.10.1",
    "0.10.1-IV0",
    "0.10.1-IV1",
    "0.10.1-IV2",
    "0.10.2",
    "0.10.2-IV0",
    "0.11.0",
    "0.11.0-IV0",
    "0.11.0-IV1",
    "0.11.0-IV2",
    "1.0",
    "1.0-IV0",
    "1.1",
    "1.1-IV0",
    "2.0",
    "2.0-IV0",
    "2.0-IV1",
    "2.1",
    "2.1-IV0",
    "2.1-IV1",
    "2.1-IV2",
    "2.2",
    "2.2-IV0",
    "2.2-IV1",
    "2.3",
    "2.3-IV0",
    "2.3-IV1",
    "2.4",
    "2.4-IV0",
    "2.4-IV1",
    "2.5",
    "2.5-IV0",
    "2.6",
    "2.6-IV0",
    "2.7",
    "2.7-IV0",
    "2.7-IV1",
    "2.7-IV2",
    "2.8",
    "2.8-IV0",
    "2.8-IV1",
    "3.0",
    "3.0-IV0",
    "3.0-IV1",
    "3.1",
    "3.1-IV0",
    "3.2",
    "3.2-IV0",
    "3.3",
    "3.3-IV0",
    "3.3-IV1",
    "3.3-IV2",
    "3.3-IV3",
    "3.4",
    "3.4-IV0",
    "3.5",
    "3.5-IV0",
    "3.5-IV1",
    "3.5-IV2",
    "3.6",
    "3.6-IV0",
    "3.6-IV1",
    "3.6-IV2",
    "3.7",
    "3.7-IV0",
    "3.7-IV1",
    "3.7-IV2",
    "3.7-IV3",
    "3.7-IV4",
    "3.8",
    "3.8-IV0",
    "3.9",
    "3.9-IV0",
    "4.0",
    "4.0-IV0",
    "4.0-IV1",
];

/// A key's Kafka type and the broker setting it defaults to.
fn key_spec(name: &str) -> (ConfigType, Option<&'static str>) {
    use ConfigType::{Boolean, Double, Int, List, Long, String as Str};
    match name {
        "cleanup.policy" => (List, Some("log.cleanup.policy")),
        "compression.gzip.level" => (Int, Some("compression.gzip.level")),
        "compression.lz4.level" => (Int, Some("compression.lz4.level")),
        "compression.type" => (Str, Some("compression.type")),
        "compression.zstd.level" => (Int, Some("compression.zstd.level")),
        "delete.retention.ms" => (Long, Some("log.cleaner.delete.retention.ms")),
        "file.delete.delay.ms" => (Long, Some("log.segment.delete.delay.ms")),
        "flush.messages" => (Long, Some("log.flush.interval.messages")),
        "flush.ms" => (Long, Some("log.flush.interval.ms")),
        "follower.replication.throttled.replicas" | "leader.replication.throttled.replicas" => {
            (List, None)
        }
        "index.interval.bytes" => (Int, Some("log.index.interval.bytes")),
        "local.retention.bytes" => (Long, Some("log.local.retention.bytes")),
        "local.retention.ms" => (Long, Some("log.local.retention.ms")),
        "max.compaction.lag.ms" => (Long, Some("log.cleaner.max.compaction.lag.ms")),
        "max.message.bytes" => (Int, Some("message.max.bytes")),
        "message.downconversion.enable" => (Boolean, Some("log.message.downconversion.enable")),
        "message.format.version" => (Str, Some("log.message.format.version")),
        "message.timestamp.after.max.ms" => (Long, Some("log.message.timestamp.after.max.ms")),
        "message.timestamp.before.max.ms" => (Long, Some("log.message.timestamp.before.max.ms")),
        "message.timestamp.difference.max.ms" => {
            (Long, Some("log.message.timestamp.difference.max.ms"))
        }
        "message.timestamp.type" => (Str, Some("log.message.timestamp.type")),
        "min.cleanable.dirty.ratio" => (Double, Some("log.cleaner.min.cleanable.ratio")),
        "min.compaction.lag.ms" => (Long, Some("log.cleaner.min.compaction.lag.ms")),
        "min.insync.replicas" => (Int, Some("min.insync.replicas")),
        "preallocate" => (Boolean, Some("log.preallocate")),
        "remote.storage.enable" | "remote.log.copy.disable" | "remote.log.delete.on.disable" => {
            (Boolean, None)
        }
        "retention.bytes" => (Long, Some("log.retention.bytes")),
        "retention.ms" => (Long, Some("log.retention.ms")),
        "segment.bytes" => (Int, Some("log.segment.bytes")),
        "segment.index.bytes" => (Int, Some("log.index.size.max.bytes")),
        "segment.jitter.ms" => (Long, Some("log.roll.jitter.ms")),
        "segment.ms" => (Long, Some("log.roll.ms")),
        "unclean.leader.election.enable" => (Boolean, Some("unclean.leader.election.enable")),
        _ => (Str, None),
    }
}

/// Sluice's own topic setting: the AMQP exchange every record is also
/// published to (empty: none).
pub const FORWARD_EXCHANGE: &str = "sluice.forward.exchange";
/// Where forwarded messages take their routing key: `key` (the record's
/// key, the default) or `header:<name>` (that record header's value).
pub const FORWARD_ROUTING_KEY: &str = "sluice.forward.routing.key";
/// The virtual host of the forward exchange (default `/`).
pub const FORWARD_VHOST: &str = "sluice.forward.vhost";
/// Where forwarding begins when it is switched on for an existing topic:
/// `latest` (the default: records produced from then on, as a RabbitMQ user
/// expects of a new binding) or `earliest` (the partitions' history first).
pub const FORWARD_START: &str = "sluice.forward.start";

/// Sluice's own topic setting: the AMQP exchange that records share groups
/// archive (rejected, or at the delivery limit) are published to (empty:
/// none), as RabbitMQ dead-letters.
pub const SHARE_DEAD_LETTER_EXCHANGE: &str = "sluice.share.dead.letter.exchange";
/// The virtual host of the share dead-letter exchange (default `/`).
pub const SHARE_DEAD_LETTER_VHOST: &str = "sluice.share.dead.letter.vhost";

/// Where a topic forwards its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    pub vhost: String,
    pub exchange: String,
    /// `None`: the record key; `Some(name)`: that header's value.
    pub routing_key_header: Option<String>,
    /// Whether forwarding begins at the log start (`earliest`) rather
    /// than at the log end when it is switched on (`latest`).
    pub from_earliest: bool,
}

/// Settings set on one topic, by Kafka name, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    overrides: BTreeMap<String, String>,
}

impl TopicConfig {
    /// Checks and keeps `settings`.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] naming the first unknown key or bad value.
    pub fn new<I, K, V>(settings: I) -> Result<TopicConfig, CoreError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut config = TopicConfig::default();
        for (key, value) in settings {
            config.set(key.into(), value.into())?;
        }
        config.check()?;
        Ok(config)
    }

    /// Checks what spans keys, as Kafka's `LogConfig.validateValues`:
    /// `min.compaction.lag.ms` may not exceed `max.compaction.lag.ms`.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] naming the conflict.
    pub fn check(&self) -> Result<(), CoreError> {
        let min = self.get_i64("min.compaction.lag.ms").unwrap_or(0);
        let max = self.get_i64("max.compaction.lag.ms").unwrap_or(i64::MAX);
        if min > max {
            return Err(CoreError::InvalidConfig {
                key: "min.compaction.lag.ms".to_owned(),
                reason: format!(
                    "({min}) conflicts with max.compaction.lag.ms ({max}): it may not be larger"
                ),
            });
        }
        Ok(())
    }

    /// Sets one key after checking it.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] for an unknown key or a bad value.
    pub fn set(&mut self, key: String, value: String) -> Result<(), CoreError> {
        // Kafka trims a value before parsing it, and reports it parsed.
        let value = value.trim();
        validate(&key, value)?;
        let value = normalized(&key, value);
        self.overrides.insert(key, value);
        Ok(())
    }

    /// Adds `values` (comma-separated) to a list-valued key, each only if
    /// absent, starting from the key's current or default value (Kafka's
    /// IncrementalAlterConfigs APPEND).
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] when the key is not a list or the
    /// result is not a valid value.
    pub fn append(&mut self, key: String, values: &str) -> Result<(), CoreError> {
        let mut list = self.list(&key, "APPEND")?;
        for value in split_list(values) {
            if !list.iter().any(|v| v == value) {
                list.push(value.to_owned());
            }
        }
        self.set(key, list.join(","))
    }

    /// Removes `values` (comma-separated) from a list-valued key, starting
    /// from the key's current or default value (Kafka's
    /// IncrementalAlterConfigs SUBTRACT).
    ///
    /// # Errors
    /// As [`TopicConfig::append`].
    pub fn subtract(&mut self, key: String, values: &str) -> Result<(), CoreError> {
        let mut list = self.list(&key, "SUBTRACT")?;
        let doomed: Vec<&str> = split_list(values).collect();
        list.retain(|v| !doomed.contains(&v.as_str()));
        self.set(key, list.join(","))
    }

    /// The current or default items of a list-valued key.
    fn list(&self, key: &str, operation: &str) -> Result<Vec<String>, CoreError> {
        if !LIST_KEYS.contains(&key) {
            // Kafka 3.9 (KRaft): "Can't APPEND to key k because its type is not LIST."
            return Err(CoreError::InvalidConfig {
                key: key.to_owned(),
                reason: format!("is not a list: {operation} applies only to list configs"),
            });
        }
        let current = match self.overrides.get(key) {
            Some(value) => value.clone(),
            None => default_value(key, &LogConfig::default()),
        };
        Ok(split_list(&current).map(str::to_owned).collect())
    }

    /// Returns the key to its default.
    pub fn remove(&mut self, key: &str) {
        self.overrides.remove(key);
    }

    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.overrides
    }

    fn get_i64(&self, key: &str) -> Option<i64> {
        self.overrides.get(key).and_then(|v| v.trim().parse().ok())
    }

    /// The log settings for this topic's partitions, starting from `defaults`.
    pub fn log_config(&self, defaults: &LogConfig) -> LogConfig {
        let mut config = defaults.clone();
        if let Some(bytes) = self.get_i64("segment.bytes") {
            config.segment_bytes = bytes.max(1) as u64;
        }
        if let Some(ms) = self.get_i64("segment.ms") {
            config.segment_time = Duration::from_millis(ms.max(1) as u64);
        }
        if let Some(bytes) = self.get_i64("retention.bytes") {
            config.retention_bytes = u64::try_from(bytes).ok();
        }
        if let Some(ms) = self.get_i64("retention.ms") {
            config.retention_time = u64::try_from(ms).ok().map(Duration::from_millis);
        }
        if let Some(bytes) = self.get_i64("index.interval.bytes") {
            config.index_interval_bytes = u32::try_from(bytes.max(4)).unwrap_or(u32::MAX);
        }
        if let Some(bytes) = self.get_i64("max.message.bytes") {
            config.max_batch_bytes = u32::try_from(bytes.max(0)).unwrap_or(u32::MAX);
        }
        let (compact, delete) = match self.cleanup_policy() {
            CleanupPolicy::Delete => (false, true),
            CleanupPolicy::Compact => (true, false),
            CleanupPolicy::CompactDelete => (true, true),
            CleanupPolicy::Neither => (false, false),
        };
        config.cleanup_compact = compact;
        config.cleanup_delete = delete;
        if let Some(ms) = self.get_i64("delete.retention.ms") {
            config.delete_retention = Duration::from_millis(ms.max(0) as u64);
        }
        if let Some(ms) = self.get_i64("min.compaction.lag.ms") {
            config.min_compaction_lag = Duration::from_millis(ms.max(0) as u64);
        }
        // i64::MAX, Kafka's default for these, means "never".
        let set = |key| self.get_i64(key).filter(|&v| v != i64::MAX);
        if let Some(ms) = set("max.compaction.lag.ms") {
            config.max_compaction_lag = Some(Duration::from_millis(ms.max(1) as u64));
        }
        if let Some(ms) = self.get_i64("segment.jitter.ms") {
            config.segment_jitter = Duration::from_millis(ms.max(0) as u64);
        }
        if let Some(every) = set("flush.messages") {
            config.flush_messages = Some(every.max(1) as u64);
        }
        if let Some(ms) = set("flush.ms") {
            // A sync at least this often: tightens an interval, turns
            // `never` into one, leaves `always` as it is.
            let every = Duration::from_millis(ms.max(0) as u64);
            config.durability = match config.durability {
                Durability::Always => Durability::Always,
                Durability::Interval(interval) => Durability::Interval(interval.min(every)),
                Durability::Never => Durability::Interval(every),
            };
        }
        if let Some(ratio) = self
            .overrides
            .get("min.cleanable.dirty.ratio")
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            config.min_cleanable_dirty_percent = (ratio * 100.0).round().clamp(0.0, 100.0) as u8;
        }
        config
    }

    /// The AMQP virtual host and exchange share groups dead-letter this
    /// topic's archived records to, if any.
    pub fn share_dead_letter(&self) -> Option<(String, String)> {
        let exchange = self.overrides.get(SHARE_DEAD_LETTER_EXCHANGE)?;
        if exchange.is_empty() {
            return None;
        }
        let vhost = self
            .overrides
            .get(SHARE_DEAD_LETTER_VHOST)
            .cloned()
            .unwrap_or_else(|| "/".to_owned());
        Some((vhost, exchange.clone()))
    }

    /// Where the topic forwards its records, if anywhere.
    pub fn forwarding(&self) -> Option<Forwarding> {
        let exchange = self.overrides.get(FORWARD_EXCHANGE)?;
        if exchange.is_empty() {
            return None;
        }
        Some(Forwarding {
            vhost: self
                .overrides
                .get(FORWARD_VHOST)
                .cloned()
                .unwrap_or_else(|| "/".to_owned()),
            exchange: exchange.clone(),
            routing_key_header: self
                .overrides
                .get(FORWARD_ROUTING_KEY)
                .and_then(|v| v.strip_prefix("header:"))
                .map(str::to_owned),
            from_earliest: self
                .overrides
                .get(FORWARD_START)
                .is_some_and(|start| start == "earliest"),
        })
    }

    /// How many ms a CreateTime record's timestamp may lie before and after
    /// the broker's clock: `message.timestamp.before.max.ms` and
    /// `message.timestamp.after.max.ms`, each taking the deprecated
    /// `message.timestamp.difference.max.ms` while it is `i64::MAX` (unset),
    /// as Kafka 3.6+ does. `(i64::MAX, i64::MAX)`: no limit.
    pub fn timestamp_bounds(&self) -> (i64, i64) {
        let difference = self
            .get_i64("message.timestamp.difference.max.ms")
            .unwrap_or(i64::MAX);
        let bound = |key| match self.get_i64(key) {
            Some(ms) if ms != i64::MAX => ms,
            _ => difference,
        };
        (
            bound("message.timestamp.before.max.ms"),
            bound("message.timestamp.after.max.ms"),
        )
    }

    /// The codec of `compression.type` when it names one (`uncompressed`
    /// is [`Compression::None`]); `None` for `producer`, the default, which
    /// keeps batches as sent.
    pub fn compression(&self) -> Option<Compression> {
        match self.overrides.get("compression.type")?.as_str() {
            "uncompressed" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "snappy" => Some(Compression::Snappy),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// `min.insync.replicas`: how many replicas an acks=all produce needs
    /// in sync (1 unless set).
    pub fn min_insync_replicas(&self) -> u32 {
        self.get_i64("min.insync.replicas")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
    }

    pub fn timestamp_type(&self) -> TimestampType {
        match self
            .overrides
            .get("message.timestamp.type")
            .map(String::as_str)
        {
            Some("LogAppendTime") => TimestampType::LogAppendTime,
            _ => TimestampType::CreateTime,
        }
    }

    pub fn cleanup_policy(&self) -> CleanupPolicy {
        match self
            .overrides
            .get("cleanup.policy")
            .map(|v| policy_words(v))
        {
            Some((true, true)) => CleanupPolicy::CompactDelete,
            Some((true, false)) => CleanupPolicy::Compact,
            Some((false, false)) => CleanupPolicy::Neither,
            _ => CleanupPolicy::Delete,
        }
    }

    /// Every setting with its effective value and source, sorted by name.
    pub fn entries(&self, defaults: &LogConfig) -> Vec<ConfigEntry> {
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|name| {
                let (config_type, broker_synonym) = key_spec(name);
                let default = default_value(name, defaults);
                let broker_synonym =
                    broker_synonym.and_then(|synonym| broker_default(name, synonym, &default));
                let (value, source) = match self.overrides.get(*name) {
                    Some(value) => (value.clone(), ConfigSource::Topic),
                    None => (default.clone(), ConfigSource::Default),
                };
                ConfigEntry {
                    name,
                    value,
                    source,
                    config_type,
                    broker_synonym,
                    default,
                }
            })
            .collect()
    }
}

/// The broker setting DescribeConfigs names as the source of a default,
/// and its value; `None` where Kafka reports none: its synonyms list starts
/// at the first broker synonym, and `log.retention.ms`, `log.roll.ms`,
/// `log.roll.jitter.ms` and `log.flush.interval.ms` have no default of
/// their own (the hours and scheduler settings behind them are dropped).
fn broker_default(
    name: &str,
    synonym: &'static str,
    default: &str,
) -> Option<(&'static str, String)> {
    match name {
        "retention.ms" | "segment.ms" | "segment.jitter.ms" | "flush.ms" => None,
        _ => Some((synonym, default.to_owned())),
    }
}

fn default_value(name: &str, defaults: &LogConfig) -> String {
    let millis = |d: Option<Duration>| d.map_or(-1, |d| d.as_millis() as i64).to_string();
    match name {
        "cleanup.policy" => "delete".to_owned(),
        "delete.retention.ms" => millis(Some(defaults.delete_retention)),
        "min.compaction.lag.ms" => millis(Some(defaults.min_compaction_lag)),
        "min.cleanable.dirty.ratio" => format!(
            "{}",
            f64::from(defaults.min_cleanable_dirty_percent) / 100.0
        ),
        "max.message.bytes" => defaults.max_batch_bytes.to_string(),
        "message.timestamp.type" => "CreateTime".to_owned(),
        "min.insync.replicas" => "1".to_owned(),
        "retention.bytes" => defaults
            .retention_bytes
            .map_or(-1, |b| b as i64)
            .to_string(),
        "retention.ms" => millis(defaults.retention_time),
        "segment.bytes" => defaults.segment_bytes.to_string(),
        "segment.ms" => millis(Some(defaults.segment_time)),
        "index.interval.bytes" => defaults.index_interval_bytes.to_string(),
        // Kafka 3.9's defaults for the keys Sluice stores only.
        "compression.type" => "producer".to_owned(),
        "compression.gzip.level" => "-1".to_owned(),
        "compression.lz4.level" => "9".to_owned(),
        "compression.zstd.level" => "3".to_owned(),
        "file.delete.delay.ms" => "60000".to_owned(),
        "flush.messages"
        | "flush.ms"
        | "max.compaction.lag.ms"
        | "message.timestamp.after.max.ms"
        | "message.timestamp.before.max.ms"
        | "message.timestamp.difference.max.ms" => i64::MAX.to_string(),
        "local.retention.bytes" | "local.retention.ms" => "-2".to_owned(),
        "message.downconversion.enable" => "true".to_owned(),
        "message.format.version" => "3.0-IV1".to_owned(),
        "preallocate"
        | "remote.storage.enable"
        | "remote.log.copy.disable"
        | "remote.log.delete.on.disable"
        | "unclean.leader.election.enable" => "false".to_owned(),
        "segment.index.bytes" => "10485760".to_owned(),
        "segment.jitter.ms" => "0".to_owned(),
        FORWARD_ROUTING_KEY => "key".to_owned(),
        FORWARD_VHOST | SHARE_DEAD_LETTER_VHOST => "/".to_owned(),
        FORWARD_START => "latest".to_owned(),
        _ => String::new(),
    }
}

/// `value` (valid for `key`) as Kafka reports it once parsed: whole
/// numbers without sign or leading zeros, booleans in lower case, lists
/// without spaces.
fn normalized(key: &str, value: &str) -> String {
    match key_spec(key).0 {
        ConfigType::Int | ConfigType::Long => value
            .parse::<i64>()
            .map_or_else(|_| value.to_owned(), |n| n.to_string()),
        ConfigType::Boolean => value.to_ascii_lowercase(),
        ConfigType::List => split_list(value).collect::<Vec<_>>().join(","),
        ConfigType::String | ConfigType::Double => value.to_owned(),
    }
}

/// The non-empty items of a comma-separated list, trimmed.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

/// (has compact, has delete) of a `cleanup.policy` list.
fn policy_words(value: &str) -> (bool, bool) {
    let words: Vec<&str> = value.split(',').map(str::trim).collect();
    (words.contains(&"compact"), words.contains(&"delete"))
}

fn validate(key: &str, value: &str) -> Result<(), CoreError> {
    let invalid = |reason: &str| CoreError::InvalidConfig {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let int = |min: i64, max: i64| -> Result<(), CoreError> {
        match value.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(()),
            Ok(_) => Err(invalid(&format!(
                "must be between {min} and {max}, got {value}"
            ))),
            Err(_) => Err(invalid(&format!("must be a whole number, got {value:?}"))),
        }
    };
    let boolean = || -> Result<(), CoreError> {
        let v = value.trim();
        if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
            Ok(())
        } else {
            Err(invalid(&format!("must be true or false, got {value:?}")))
        }
    };
    let int32 = |min: i32, max: i32| int(i64::from(min), i64::from(max));
    match key {
        "retention.ms" => int(-1, i64::MAX),
        // Kafka sets no bound: any negative value means no limit.
        "retention.bytes" => int(i64::MIN, i64::MAX),
        "file.delete.delay.ms"
        | "flush.ms"
        | "segment.jitter.ms"
        | "message.timestamp.after.max.ms"
        | "message.timestamp.before.max.ms"
        | "message.timestamp.difference.max.ms" => int(0, i64::MAX),
        "flush.messages" | "max.compaction.lag.ms" => int(1, i64::MAX),
        "local.retention.bytes" | "local.retention.ms" => int(-2, i64::MAX),
        "index.interval.bytes" => int32(0, i32::MAX),
        "segment.index.bytes" => int32(4, i32::MAX),
        "compression.gzip.level" => {
            int32(-1, 9)?;
            if value.trim() == "0" {
                Err(invalid("must be -1 or between 1 and 9, got 0"))
            } else {
                Ok(())
            }
        }
        "compression.lz4.level" => int32(1, 17),
        "compression.zstd.level" => int32(-131_072, 22),
        "compression.type" => match value {
            "uncompressed" | "zstd" | "lz4" | "snappy" | "gzip" | "producer" => Ok(()),
            _ => Err(invalid(&format!(
                "must be one of uncompressed, zstd, lz4, snappy, gzip, producer, got {value:?}"
            ))),
        },
        "preallocate"
        | "message.downconversion.enable"
        | "unclean.leader.election.enable"
        | "remote.log.copy.disable"
        | "remote.log.delete.on.disable" => boolean(),
        "remote.storage.enable" => {
            boolean()?;
            if value.trim().eq_ignore_ascii_case("true") {
                // Kafka refuses it too while remote storage is off on the broker.
                Err(invalid("cannot be true: this broker has no remote storage"))
            } else {
                Ok(())
            }
        }
        "message.format.version" => {
            // Kafka keeps the first two parts (three below 1.0): 2.8.1 is 2.8.
            let parts = if value.starts_with("0.") { 3 } else { 2 };
            let short: Vec<&str> = value.split('.').take(parts).collect();
            if MESSAGE_FORMAT_VERSIONS.contains(&short.join(".").as_str()) {
                Ok(())
            } else {
                Err(invalid(&format!("is not a Kafka version, got {value:?}")))
            }
        }
        "follower.replication.throttled.replicas" | "leader.replication.throttled.replicas" => {
            let items: Vec<&str> = value.split(',').map(str::trim).collect();
            let pair = |item: &str| {
                item.is_empty()
                    || item.split_once(':').is_some_and(|(p, b)| {
                        [p, b]
                            .iter()
                            .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
                    })
            };
            if value.trim() == "*" || items.iter().all(|item| pair(item)) {
                Ok(())
            } else {
                Err(invalid(
                    "must be * or a list of partition:broker pairs, e.g. 0:1,1:1",
                ))
            }
        }
        "delete.retention.ms" | "min.compaction.lag.ms" => int(0, i64::MAX),
        "min.cleanable.dirty.ratio" => match value.trim().parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(()),
            _ => Err(invalid(&format!(
                "must be a number from 0 to 1, got {value:?}"
            ))),
        },
        "segment.bytes" => int32(14, i32::MAX),
        "segment.ms" => int(1, i64::MAX),
        "max.message.bytes" => int32(0, i32::MAX),
        "min.insync.replicas" => int32(1, i32::MAX),
        FORWARD_EXCHANGE | FORWARD_VHOST | SHARE_DEAD_LETTER_EXCHANGE | SHARE_DEAD_LETTER_VHOST
            if value.len() > 255 =>
        {
            Err(invalid("must be at most 255 bytes"))
        }
        FORWARD_EXCHANGE | FORWARD_VHOST | SHARE_DEAD_LETTER_EXCHANGE | SHARE_DEAD_LETTER_VHOST => {
            Ok(())
        }
        FORWARD_START if matches!(value, "earliest" | "latest") => Ok(()),
        FORWARD_START => Err(invalid(&format!(
            "must be earliest or latest, got {value:?}"
        ))),
        FORWARD_ROUTING_KEY => {
            if value == "key" || value.strip_prefix("header:").is_some_and(|h| !h.is_empty()) {
                Ok(())
            } else {
                Err(invalid("must be key or header:<name>"))
            }
        }
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(invalid("must be CreateTime or LogAppendTime")),
        },
        "cleanup.policy" => {
            // An empty list is valid, as in Kafka 3.9: neither deletes
            // nor compacts.
            let valid = value.trim().is_empty()
                || value
                    .split(',')
                    .map(str::trim)
                    .all(|w| w == "compact" || w == "delete");
            if valid {
                Ok(())
            } else {
                Err(invalid(
                    "must be delete, compact, compact,delete or empty (neither)",
                ))
            }
        }
        _ => Err(invalid("is not a topic config this broker knows")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_map_onto_the_log_config() -> Result<(), CoreError> {
        let config = TopicConfig::new([
            ("retention.ms", "60000"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "1048576"),
            ("max.message.bytes", "1000"),
        ])?;
        let log = config.log_config(&LogConfig::default());
        assert_eq!(log.retention_time, Some(Duration::from_secs(60)));
        assert_eq!(log.retention_bytes, None);
        assert_eq!(log.segment_bytes, 1 << 20);
        assert_eq!(log.max_batch_bytes, 1000);
        Ok(())
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = TopicConfig::new([("retention.mss", "1")]).expect_err("unknown");
        assert!(err.to_string().contains("retention.mss"), "{err}");
        let err = TopicConfig::new([("retention.ms", "soon")]).expect_err("bad value");
        assert!(err.to_string().contains("retention.ms"), "{err}");
        let err = TopicConfig::new([("cleanup.policy", "keep")]).expect_err("bad policy");
        assert!(err.to_string().contains("cleanup.policy"), "{err}");
    }

    #[test]
    fn values_are_trimmed_normalised_and_checked_across_keys_as_kafka_39() -> Result<(), CoreError>
    {
        let config = TopicConfig::new([
            ("compression.type", " zstd"),
            ("message.timestamp.type", "CreateTime "),
            ("preallocate", "TRUE"),
            ("segment.ms", "+0100"),
            ("cleanup.policy", "compact , delete"),
            ("retention.bytes", "-2"),
            ("index.interval.bytes", "0"),
            ("remote.log.copy.disable", "true"),
            ("remote.log.delete.on.disable", "false"),
            ("message.format.version", "4.0-IV1"),
        ])?;
        let set = |key: &str| config.overrides().get(key).cloned();
        assert_eq!(set("compression.type").as_deref(), Some("zstd"));
        assert_eq!(set("message.timestamp.type").as_deref(), Some("CreateTime"));
        assert_eq!(set("preallocate").as_deref(), Some("true"));
        assert_eq!(set("segment.ms").as_deref(), Some("100"));
        assert_eq!(set("cleanup.policy").as_deref(), Some("compact,delete"));
        assert_eq!(config.compression(), Some(Compression::Zstd));
        let err = TopicConfig::new([
            ("min.compaction.lag.ms", "2000"),
            ("max.compaction.lag.ms", "1000"),
        ])
        .expect_err("min above max");
        assert!(err.to_string().contains("max.compaction.lag.ms"), "{err}");
        TopicConfig::new([
            ("min.compaction.lag.ms", "1000"),
            ("max.compaction.lag.ms", "1000"),
        ])?;
        Ok(())
    }

    #[test]
    fn append_and_subtract_edit_list_configs_from_their_default() -> Result<(), CoreError> {
        let mut config = TopicConfig::default();
        config.append("cleanup.policy".into(), "compact")?;
        assert_eq!(config.overrides()["cleanup.policy"], "delete,compact");
        config.append("cleanup.policy".into(), "delete,compact")?;
        assert_eq!(config.overrides()["cleanup.policy"], "delete,compact");
        config.subtract("cleanup.policy".into(), "delete")?;
        assert_eq!(config.cleanup_policy(), CleanupPolicy::Compact);
        let err = config
            .append("retention.ms".into(), "1")
            .expect_err("not a list");
        assert!(err.to_string().contains("retention.ms"), "{err}");
        // Kafka 3.9 stores the empty list: neither deletes nor compacts.
        config.subtract("cleanup.policy".into(), "compact")?;
        assert_eq!(config.overrides()["cleanup.policy"], "");
        assert_eq!(config.cleanup_policy(), CleanupPolicy::Neither);
        let log = config.log_config(&LogConfig::default());
        assert!(!log.cleanup_delete && !log.cleanup_compact);
        Ok(())
    }

    #[test]
    fn entries_report_defaults_and_overrides() -> Result<(), CoreError> {
        let config = TopicConfig::new([("cleanup.policy", "compact,delete")])?;
        assert_eq!(config.cleanup_policy(), CleanupPolicy::CompactDelete);
        let entries = config.entries(&LogConfig::default());
        assert_eq!(entries.len(), TOPIC_CONFIG_KEYS.len());
        let policy = entries.iter().find(|e| e.name == "cleanup.policy");
        assert_eq!(policy.map(|e| e.source), Some(ConfigSource::Topic));
        let retention = entries.iter().find(|e| e.name == "retention.ms");
        assert_eq!(retention.map(|e| e.value.as_str()), Some("604800000"));
        Ok(())
    }

    #[test]
    fn every_kafka_topic_config_is_accepted_with_kafkas_defaults() -> Result<(), CoreError> {
        let config = TopicConfig::new([
            ("compression.type", "zstd"),
            ("file.delete.delay.ms", "1000"),
            ("message.format.version", "3.0-IV1"),
            ("preallocate", "TRUE"),
            ("follower.replication.throttled.replicas", "0:1,1:1"),
            ("leader.replication.throttled.replicas", "*"),
            ("compression.gzip.level", "-1"),
            ("local.retention.ms", "-2"),
        ])?;
        let entries = config.entries(&LogConfig::default());
        let find = |name: &str| entries.iter().find(|e| e.name == name).cloned();
        let zstd = find("compression.type").expect("listed");
        assert_eq!(
            (zstd.value.as_str(), zstd.source),
            ("zstd", ConfigSource::Topic)
        );
        assert_eq!(zstd.default, "producer");
        for (name, default, kind) in [
            ("segment.index.bytes", "10485760", ConfigType::Int),
            (
                "max.compaction.lag.ms",
                "9223372036854775807",
                ConfigType::Long,
            ),
            (
                "unclean.leader.election.enable",
                "false",
                ConfigType::Boolean,
            ),
            ("index.interval.bytes", "4096", ConfigType::Int),
            ("min.cleanable.dirty.ratio", "0.5", ConfigType::Double),
            ("cleanup.policy", "delete", ConfigType::List),
        ] {
            let entry = find(name).expect("listed");
            assert_eq!(
                (entry.value.as_str(), entry.source),
                (default, ConfigSource::Default)
            );
            assert_eq!(entry.config_type, kind, "{name}");
        }
        // As Kafka 3.9: no synonym where the first broker setting has no
        // default of its own.
        assert_eq!(find("segment.ms").and_then(|e| e.broker_synonym), None);
        assert_eq!(find("flush.ms").and_then(|e| e.broker_synonym), None);
        assert_eq!(
            find("segment.bytes").and_then(|e| e.broker_synonym),
            Some(("log.segment.bytes", "1073741824".to_owned()))
        );
        for name in STORED_ONLY_KEYS {
            assert!(TOPIC_CONFIG_KEYS.contains(name), "{name}");
        }
        Ok(())
    }

    #[test]
    fn values_are_checked_by_their_kafka_type_and_range() {
        for (key, value) in [
            ("preallocate", "maybe"),
            ("flush.ms", "-5"),
            ("flush.messages", "0"),
            ("compression.type", "brotli"),
            ("compression.gzip.level", "0"),
            ("compression.lz4.level", "18"),
            ("compression.zstd.level", "23"),
            ("message.format.version", "3.0-IV9"),
            ("segment.index.bytes", "3"),
            ("segment.index.bytes", "2147483648"),
            ("local.retention.bytes", "-3"),
            ("remote.storage.enable", "true"),
            ("leader.replication.throttled.replicas", "0:x"),
            ("message.timestamp.before.max.ms", "-1"),
        ] {
            let err = TopicConfig::new([(key, value)]).expect_err(value);
            assert!(err.to_string().contains(key), "{err}");
        }
        for (key, value) in [
            ("message.format.version", "2.8.1"),
            ("message.format.version", "0.10.2-IV0"),
            ("compression.zstd.level", "-131072"),
            ("remote.storage.enable", "false"),
            ("leader.replication.throttled.replicas", ""),
        ] {
            assert!(TopicConfig::new([(key, value)]).is_ok(), "{key}={value}");
        }
    }

    #[test]
    fn timestamp_bounds_fall_back_to_the_deprecated_difference() -> Result<(), CoreError> {
        assert_eq!(
            TopicConfig::default().timestamp_bounds(),
            (i64::MAX, i64::MAX)
        );
        let config = TopicConfig::new([
            ("message.timestamp.difference.max.ms", "5000"),
            ("message.timestamp.before.max.ms", "1000"),
        ])?;
        assert_eq!(config.timestamp_bounds(), (1000, 5000));
        let config = TopicConfig::new([("index.interval.bytes", "128")])?;
        assert_eq!(
            config
                .log_config(&LogConfig::default())
                .index_interval_bytes,
            128
        );
        Ok(())
    }
}
