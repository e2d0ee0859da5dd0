//! Per-topic settings under their Kafka names (`retention.ms`, …): parsed,
//! validated, and turned into the log engine's [`LogConfig`].
//!
//! A topic stores only the keys set on it; every other key takes the
//! broker's default, and DescribeConfigs reports which is which.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_log::LogConfig;

use crate::CoreError;

/// Where a topic setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic.
    Topic,
    /// The broker's default.
    Default,
}

/// One setting as DescribeConfigs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub source: ConfigSource,
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
}

/// The settings a topic may carry, by Kafka name.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "delete.retention.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    FORWARD_EXCHANGE,
    FORWARD_ROUTING_KEY,
    FORWARD_START,
    FORWARD_VHOST,
];

/// The settings whose value is a comma-separated list (Kafka's LIST type),
/// the only ones IncrementalAlterConfigs may APPEND to or SUBTRACT from.
const LIST_KEYS: &[&str] = &["cleanup.policy"];

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
        Ok(config)
    }

    /// Sets one key after checking it.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] for an unknown key or a bad value.
    pub fn set(&mut self, key: String, value: String) -> Result<(), CoreError> {
        validate(&key, &value)?;
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
        if let Some(bytes) = self.get_i64("max.message.bytes") {
            config.max_batch_bytes = u32::try_from(bytes.max(0)).unwrap_or(u32::MAX);
        }
        let (compact, delete) = match self.cleanup_policy() {
            CleanupPolicy::Delete => (false, true),
            CleanupPolicy::Compact => (true, false),
            CleanupPolicy::CompactDelete => (true, true),
        };
        config.cleanup_compact = compact;
        config.cleanup_delete = delete;
        if let Some(ms) = self.get_i64("delete.retention.ms") {
            config.delete_retention = Duration::from_millis(ms.max(0) as u64);
        }
        if let Some(ms) = self.get_i64("min.compaction.lag.ms") {
            config.min_compaction_lag = Duration::from_millis(ms.max(0) as u64);
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
            _ => CleanupPolicy::Delete,
        }
    }

    /// Every setting with its effective value and source, sorted by name.
    pub fn entries(&self, defaults: &LogConfig) -> Vec<ConfigEntry> {
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|name| match self.overrides.get(*name) {
                Some(value) => ConfigEntry {
                    name,
                    value: value.clone(),
                    source: ConfigSource::Topic,
                },
                None => ConfigEntry {
                    name,
                    value: default_value(name, defaults),
                    source: ConfigSource::Default,
                },
            })
            .collect()
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
        FORWARD_ROUTING_KEY => "key".to_owned(),
        FORWARD_VHOST => "/".to_owned(),
        FORWARD_START => "latest".to_owned(),
        _ => String::new(),
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
    match key {
        "retention.ms" | "retention.bytes" => int(-1, i64::MAX),
        "delete.retention.ms" | "min.compaction.lag.ms" => int(0, i64::MAX),
        "min.cleanable.dirty.ratio" => match value.trim().parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(()),
            _ => Err(invalid(&format!(
                "must be a number from 0 to 1, got {value:?}"
            ))),
        },
        "segment.bytes" => int(14, i64::from(i32::MAX)),
        "segment.ms" => int(1, i64::MAX),
        "max.message.bytes" => int(0, i64::from(i32::MAX)),
        "min.insync.replicas" => int(1, i64::from(i32::MAX)),
        FORWARD_EXCHANGE | FORWARD_VHOST if value.len() > 255 => {
            Err(invalid("must be at most 255 bytes"))
        }
        FORWARD_EXCHANGE | FORWARD_VHOST => Ok(()),
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
            let valid = !value.trim().is_empty()
                && value
                    .split(',')
                    .map(str::trim)
                    .all(|w| w == "compact" || w == "delete");
            if valid {
                Ok(())
            } else {
                Err(invalid("must be delete, compact, or compact,delete"))
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
        let err = config
            .subtract("cleanup.policy".into(), "compact")
            .expect_err("an empty policy");
        assert!(err.to_string().contains("cleanup.policy"), "{err}");
        assert_eq!(config.overrides()["cleanup.policy"], "compact");
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
}
