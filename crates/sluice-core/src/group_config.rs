//! Per-group settings under Kafka's group config names (KIP-848, KIP-932,
//! KIP-1240: `consumer.session.timeout.ms`, `share.record.lock.duration.ms`,
//! …) and Sluice's own share dead-letter keys, as DescribeConfigs and
//! IncrementalAlterConfigs reach them with resource type GROUP.
//!
//! Like Kafka, which keeps them as config records in its metadata log, a
//! group's settings are a metadata command ([`crate::MetadataCommand::SetGroupConfig`]):
//! durable, on every node of a cluster, and set whether or not the group
//! exists yet. A group stores only the keys set on it; every other key
//! takes the broker's setting.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::CoreError;
use crate::consumer_groups::ConsumerGroupSettings;
use crate::share_groups::{ShareReset, ShareSettings};
use crate::topic_config::{ConfigEntry, ConfigSource, ConfigType};

pub(crate) const CONSUMER_SESSION_TIMEOUT: &str = "consumer.session.timeout.ms";
pub(crate) const CONSUMER_HEARTBEAT_INTERVAL: &str = "consumer.heartbeat.interval.ms";
pub(crate) const SHARE_SESSION_TIMEOUT: &str = "share.session.timeout.ms";
pub(crate) const SHARE_HEARTBEAT_INTERVAL: &str = "share.heartbeat.interval.ms";
pub(crate) const SHARE_RECORD_LOCK_DURATION: &str = "share.record.lock.duration.ms";
pub(crate) const SHARE_DELIVERY_COUNT_LIMIT: &str = "share.delivery.count.limit";
pub(crate) const SHARE_MAX_RECORD_LOCKS: &str = "share.partition.max.record.locks";
pub(crate) const SHARE_AUTO_OFFSET_RESET: &str = "share.auto.offset.reset";
/// The AMQP exchange a share group dead-letters the records it archives
/// (rejected, or at the delivery limit) to; empty: none.
pub(crate) const SHARE_DEAD_LETTER_EXCHANGE: &str = "sluice.share.dead.letter.exchange";
/// The routing key of those dead letters; empty: each record's key.
pub(crate) const SHARE_DEAD_LETTER_ROUTING_KEY: &str = "sluice.share.dead.letter.routing.key";
/// The virtual host of that exchange (default `/`).
pub(crate) const SHARE_DEAD_LETTER_VHOST: &str = "sluice.share.dead.letter.vhost";

/// The keys, in the order DescribeConfigs lists them.
const KEYS: [&str; 11] = [
    CONSUMER_HEARTBEAT_INTERVAL,
    CONSUMER_SESSION_TIMEOUT,
    SHARE_AUTO_OFFSET_RESET,
    SHARE_DELIVERY_COUNT_LIMIT,
    SHARE_HEARTBEAT_INTERVAL,
    SHARE_MAX_RECORD_LOCKS,
    SHARE_RECORD_LOCK_DURATION,
    SHARE_SESSION_TIMEOUT,
    SHARE_DEAD_LETTER_EXCHANGE,
    SHARE_DEAD_LETTER_ROUTING_KEY,
    SHARE_DEAD_LETTER_VHOST,
];

/// Where a share group's archived records go: an AMQP exchange of a
/// virtual host, with a fixed routing key or each record's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterTarget {
    pub vhost: String,
    pub exchange: String,
    pub routing_key: Option<String>,
}

/// One group's settings: the keys set on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupConfig {
    overrides: BTreeMap<String, String>,
}

fn invalid(key: &str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidConfig {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn millis(value: &str) -> Option<i64> {
    value.parse::<i64>().ok()
}

/// Checks one key's value on its own (bounds are the broker settings').
fn validate(key: &str, value: &str) -> Result<(), CoreError> {
    let within = |low: i64, high: i64, what: &str| match value.parse::<i64>() {
        Ok(n) if (low..=high).contains(&n) => Ok(()),
        _ => Err(invalid(
            key,
            format!("must be {what} from {low} to {high}, got {value:?}"),
        )),
    };
    match key {
        CONSUMER_SESSION_TIMEOUT
        | CONSUMER_HEARTBEAT_INTERVAL
        | SHARE_SESSION_TIMEOUT
        | SHARE_HEARTBEAT_INTERVAL => within(1, i64::from(i32::MAX), "milliseconds"),
        SHARE_RECORD_LOCK_DURATION => within(1_000, 3_600_000, "milliseconds"),
        SHARE_DELIVERY_COUNT_LIMIT => within(2, 10, "a count"),
        SHARE_MAX_RECORD_LOCKS => within(100, 10_000, "a count"),
        SHARE_AUTO_OFFSET_RESET => match value {
            "earliest" | "latest" => Ok(()),
            _ => Err(invalid(
                key,
                format!("must be earliest or latest (by_duration is not supported), got {value:?}"),
            )),
        },
        SHARE_DEAD_LETTER_EXCHANGE | SHARE_DEAD_LETTER_ROUTING_KEY | SHARE_DEAD_LETTER_VHOST => {
            // AMQP short strings.
            if value.len() > 255 {
                Err(invalid(key, "must be at most 255 bytes"))
            } else {
                Ok(())
            }
        }
        _ => Err(invalid(
            key,
            format!("is not a group config (known: {})", KEYS.join(", ")),
        )),
    }
}

impl GroupConfig {
    /// The settings as stored (no checks: they were checked when set).
    pub(crate) fn stored(overrides: BTreeMap<String, String>) -> GroupConfig {
        GroupConfig { overrides }
    }

    /// The keys set on the group.
    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.overrides
    }

    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty()
    }

    /// Sets one key after checking its value.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] for an unknown key or a bad value.
    pub fn set(&mut self, key: String, value: &str) -> Result<(), CoreError> {
        let value = value.trim();
        validate(&key, value)?;
        self.overrides.insert(key, value.to_owned());
        Ok(())
    }

    /// Takes a key back to the broker's setting (an unknown key is no
    /// change, as Kafka takes it).
    pub fn remove(&mut self, key: &str) {
        self.overrides.remove(key);
    }

    fn duration(&self, key: &str) -> Option<Duration> {
        self.overrides
            .get(key)
            .and_then(|v| millis(v))
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis)
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.overrides.get(key).and_then(|v| v.parse().ok())
    }

    /// The consumer-group settings for this group: the broker's, with the
    /// group's session timeout and heartbeat interval.
    pub fn consumer(&self, base: &ConsumerGroupSettings) -> ConsumerGroupSettings {
        let mut settings = base.clone();
        if let Some(timeout) = self.duration(CONSUMER_SESSION_TIMEOUT) {
            settings.session_timeout = timeout;
        }
        if let Some(interval) = self.duration(CONSUMER_HEARTBEAT_INTERVAL) {
            settings.heartbeat_interval = interval;
        }
        settings
    }

    /// The share-group settings for this group: the broker's, with the
    /// group's.
    pub fn share(&self, base: &ShareSettings) -> ShareSettings {
        let mut settings = base.clone();
        if let Some(duration) = self.duration(SHARE_RECORD_LOCK_DURATION) {
            settings.lock_duration = duration;
        }
        if let Some(limit) = self.number(SHARE_DELIVERY_COUNT_LIMIT) {
            settings.delivery_limit = limit;
        }
        if let Some(locks) = self.number(SHARE_MAX_RECORD_LOCKS) {
            settings.max_record_locks = locks;
        }
        if let Some(timeout) = self.duration(SHARE_SESSION_TIMEOUT) {
            settings.session_timeout = timeout;
        }
        if let Some(interval) = self.duration(SHARE_HEARTBEAT_INTERVAL) {
            settings.heartbeat_interval = interval;
        }
        match self
            .overrides
            .get(SHARE_AUTO_OFFSET_RESET)
            .map(String::as_str)
        {
            Some("earliest") => settings.auto_offset_reset = ShareReset::Earliest,
            Some("latest") => settings.auto_offset_reset = ShareReset::Latest,
            _ => {}
        }
        settings
    }

    /// Where the group dead-letters the records it archives: `None` when
    /// the group does not say (its topic's config decides), `Some(None)`
    /// when it sets an empty exchange (no dead letters).
    pub fn share_dead_letter(&self) -> Option<Option<DeadLetterTarget>> {
        let exchange = self.overrides.get(SHARE_DEAD_LETTER_EXCHANGE)?;
        if exchange.is_empty() {
            return Some(None);
        }
        let vhost = self
            .overrides
            .get(SHARE_DEAD_LETTER_VHOST)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| "/".to_owned());
        let routing_key = self
            .overrides
            .get(SHARE_DEAD_LETTER_ROUTING_KEY)
            .filter(|k| !k.is_empty())
            .cloned();
        Some(Some(DeadLetterTarget {
            vhost,
            exchange: exchange.clone(),
            routing_key,
        }))
    }

    /// The group's dead-letter routing key, if it sets one.
    pub fn share_dead_letter_routing_key(&self) -> Option<String> {
        self.overrides
            .get(SHARE_DEAD_LETTER_ROUTING_KEY)
            .filter(|k| !k.is_empty())
            .cloned()
    }

    /// Checks the keys together, against the broker's settings: each
    /// heartbeat interval below its session timeout.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] naming the heartbeat interval.
    pub fn check(
        &self,
        consumer: &ConsumerGroupSettings,
        share: &ShareSettings,
    ) -> Result<(), CoreError> {
        let (consumer, share) = (self.consumer(consumer), self.share(share));
        let pairs = [
            (
                CONSUMER_HEARTBEAT_INTERVAL,
                CONSUMER_SESSION_TIMEOUT,
                consumer.heartbeat_interval,
                consumer.session_timeout,
            ),
            (
                SHARE_HEARTBEAT_INTERVAL,
                SHARE_SESSION_TIMEOUT,
                share.heartbeat_interval,
                share.session_timeout,
            ),
        ];
        for (interval_key, timeout_key, interval, timeout) in pairs {
            if interval >= timeout {
                return Err(invalid(
                    interval_key,
                    format!(
                        "({}) must be less than {timeout_key} ({})",
                        interval.as_millis(),
                        timeout.as_millis()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every key with its value and where it comes from, as
    /// DescribeConfigs shows them (the broker setting a key falls back to
    /// as its synonym, under Kafka's name).
    pub fn entries(
        &self,
        consumer: &ConsumerGroupSettings,
        share: &ShareSettings,
    ) -> Vec<ConfigEntry> {
        let ms = |d: Duration| d.as_millis().to_string();
        KEYS.iter()
            .map(|&name| {
                let (default, broker, config_type) = match name {
                    CONSUMER_SESSION_TIMEOUT => (
                        ms(consumer.session_timeout),
                        Some("group.consumer.session.timeout.ms"),
                        ConfigType::Int,
                    ),
                    CONSUMER_HEARTBEAT_INTERVAL => (
                        ms(consumer.heartbeat_interval),
                        Some("group.consumer.heartbeat.interval.ms"),
                        ConfigType::Int,
                    ),
                    SHARE_SESSION_TIMEOUT => (
                        ms(share.session_timeout),
                        Some("group.share.session.timeout.ms"),
                        ConfigType::Int,
                    ),
                    SHARE_HEARTBEAT_INTERVAL => (
                        ms(share.heartbeat_interval),
                        Some("group.share.heartbeat.interval.ms"),
                        ConfigType::Int,
                    ),
                    SHARE_RECORD_LOCK_DURATION => (
                        ms(share.lock_duration),
                        Some("group.share.record.lock.duration.ms"),
                        ConfigType::Int,
                    ),
                    SHARE_DELIVERY_COUNT_LIMIT => (
                        share.delivery_limit.to_string(),
                        Some("group.share.delivery.count.limit"),
                        ConfigType::Int,
                    ),
                    SHARE_MAX_RECORD_LOCKS => (
                        share.max_record_locks.to_string(),
                        Some("group.share.partition.max.record.locks"),
                        ConfigType::Int,
                    ),
                    SHARE_AUTO_OFFSET_RESET => (
                        match share.auto_offset_reset {
                            ShareReset::Earliest => "earliest",
                            ShareReset::Latest => "latest",
                        }
                        .to_owned(),
                        None,
                        ConfigType::String,
                    ),
                    SHARE_DEAD_LETTER_VHOST => ("/".to_owned(), None, ConfigType::String),
                    _ => (String::new(), None, ConfigType::String),
                };
                let set = self.overrides.get(name);
                ConfigEntry {
                    name,
                    value: set.cloned().unwrap_or_else(|| default.clone()),
                    source: if set.is_some() {
                        ConfigSource::Group
                    } else {
                        ConfigSource::Default
                    },
                    config_type,
                    broker_synonym: broker.map(|b| (b, default.clone())),
                    default,
                }
            })
            .collect()
    }
}

/// Every group's settings as the metadata last applied them, for the
/// coordinators and partition leaders that read them on each request.
#[derive(Debug, Default)]
pub struct GroupConfigs {
    groups: RwLock<HashMap<String, Arc<GroupConfig>>>,
}

impl GroupConfigs {
    /// `group`'s settings, if any key is set on it.
    pub fn get(&self, group: &str) -> Option<Arc<GroupConfig>> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(group)
            .cloned()
    }

    /// Every group with settings, by id.
    pub fn all(&self) -> BTreeMap<String, Arc<GroupConfig>> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    pub(crate) fn set(&self, group: &str, config: Option<&BTreeMap<String, String>>) {
        let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
        match config {
            Some(config) if !config.is_empty() => {
                groups.insert(
                    group.to_owned(),
                    Arc::new(GroupConfig::stored(config.clone())),
                );
            }
            _ => {
                groups.remove(group);
            }
        }
    }

    pub(crate) fn replace_all(&self, all: &BTreeMap<String, BTreeMap<String, String>>) {
        let fresh: HashMap<String, Arc<GroupConfig>> = all
            .iter()
            .filter(|(_, config)| !config.is_empty())
            .map(|(group, config)| (group.clone(), Arc::new(GroupConfig::stored(config.clone()))))
            .collect();
        *self.groups.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_checks_keys_and_bounds() -> Result<(), CoreError> {
        let mut config = GroupConfig::default();
        config.set("share.delivery.count.limit".into(), " 3 ")?;
        assert_eq!(
            config.overrides().get("share.delivery.count.limit"),
            Some(&"3".to_owned())
        );
        for (key, value) in [
            ("share.delivery.count.limit", "1"),
            ("share.delivery.count.limit", "11"),
            ("share.record.lock.duration.ms", "999"),
            ("share.partition.max.record.locks", "99"),
            ("share.auto.offset.reset", "by_duration:PT1H"),
            ("consumer.session.timeout.ms", "0"),
            ("consumer.session.timeout.ms", "ten"),
            ("retention.ms", "1"),
        ] {
            let refused = config.set(key.into(), value);
            assert!(
                matches!(refused, Err(CoreError::InvalidConfig { .. })),
                "{key}={value} was taken"
            );
        }
        config.remove("share.delivery.count.limit");
        config.remove("retention.ms");
        assert!(config.is_empty());
        Ok(())
    }

    #[test]
    fn overrides_replace_the_broker_settings_key_by_key() -> Result<(), CoreError> {
        let mut config = GroupConfig::default();
        for (key, value) in [
            ("share.record.lock.duration.ms", "2000"),
            ("share.delivery.count.limit", "2"),
            ("share.auto.offset.reset", "earliest"),
            ("consumer.session.timeout.ms", "10000"),
        ] {
            config.set(key.into(), value)?;
        }
        let base = ShareSettings::default();
        let share = config.share(&base);
        assert_eq!(share.lock_duration, Duration::from_secs(2));
        assert_eq!(share.delivery_limit, 2);
        assert_eq!(share.auto_offset_reset, ShareReset::Earliest);
        assert_eq!(share.max_record_locks, base.max_record_locks);
        let consumer = config.consumer(&ConsumerGroupSettings::default());
        assert_eq!(consumer.session_timeout, Duration::from_secs(10));
        assert_eq!(
            consumer.heartbeat_interval,
            ConsumerGroupSettings::default().heartbeat_interval
        );
        let entries = config.entries(&ConsumerGroupSettings::default(), &base);
        let shown = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .map(|e| (e.value.clone(), e.source))
        };
        assert_eq!(
            shown("share.delivery.count.limit"),
            Some(("2".to_owned(), ConfigSource::Group))
        );
        assert_eq!(
            shown("share.partition.max.record.locks"),
            Some(("2000".to_owned(), ConfigSource::Default))
        );
        Ok(())
    }

    #[test]
    fn a_heartbeat_must_stay_below_its_session_timeout() -> Result<(), CoreError> {
        let (consumer, share) = (ConsumerGroupSettings::default(), ShareSettings::default());
        let mut config = GroupConfig::default();
        config.set("share.session.timeout.ms".into(), "4000")?;
        let refused = config.check(&consumer, &share);
        assert!(
            matches!(&refused, Err(CoreError::InvalidConfig { key, .. }) if key == "share.heartbeat.interval.ms"),
            "{refused:?}"
        );
        config.set("share.heartbeat.interval.ms".into(), "1000")?;
        config.check(&consumer, &share)
    }

    #[test]
    fn dead_letters_name_an_exchange_and_maybe_a_routing_key() -> Result<(), CoreError> {
        let mut config = GroupConfig::default();
        assert_eq!(config.share_dead_letter(), None, "the topic decides");
        config.set("sluice.share.dead.letter.exchange".into(), "dlx")?;
        assert_eq!(
            config.share_dead_letter(),
            Some(Some(DeadLetterTarget {
                vhost: "/".into(),
                exchange: "dlx".into(),
                routing_key: None
            }))
        );
        config.set("sluice.share.dead.letter.routing.key".into(), "dead")?;
        assert_eq!(
            config
                .share_dead_letter()
                .flatten()
                .and_then(|t| t.routing_key),
            Some("dead".to_owned())
        );
        config.set("sluice.share.dead.letter.exchange".into(), "")?;
        assert_eq!(config.share_dead_letter(), Some(None), "turned off");
        Ok(())
    }
}
