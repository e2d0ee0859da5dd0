//! Kafka client quotas (KIP-13, KIP-55, KIP-124, KIP-546): producer and
//! consumer byte rates and a request-time percentage, per user, client id,
//! or both, with defaults; and the rates they are checked against.
//!
//! The quotas are metadata (AlterClientQuotas commits them; replicated on
//! a cluster, kept in snapshots); each node measures its own clients, as
//! each Kafka broker does. A client's quota is found as Kafka's default
//! quota callback finds it, most specific first:
//! user and client id, user and default client id, user, default user and
//! client id, default user and default client id, default user, client id,
//! default client id. The level that matched decides who shares the
//! measured rate: a quota of user `alice` is shared by all her clients; a
//! default quota is measured per user (or client id) it applies to.
//!
//! Rates are measured over 11 windows of one second (Kafka's
//! `quota.window.num` and `quota.window.size.seconds`), the elapsed time
//! counted as at least 10 windows; a client over its quota is throttled
//! for as long as its rate needs to come back to the quota.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes per second a producer may send.
pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
/// Bytes per second a consumer may fetch.
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
/// Percentage of one request thread's time the client's requests may
/// take (100: one whole thread).
pub const REQUEST_PERCENTAGE: &str = "request_percentage";
/// The quotas there are.
pub const QUOTA_KEYS: [&str; 3] = [PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE];

/// Measurement windows (Kafka's `quota.window.num`).
const WINDOWS: u32 = 11;
/// One window (Kafka's `quota.window.size.seconds`).
const WINDOW: Duration = Duration::from_secs(1);
/// The time a rate is counted over at least: ten windows, the quota's
/// room for a burst (Kafka's `getMaxValueInQuotaWindow`).
pub const COUNTED_WINDOW: Duration = Duration::from_secs((WINDOWS as u64 - 1) * WINDOW.as_secs());
/// Sensors not recorded to for this long are dropped.
const IDLE_SENSOR: Duration = Duration::from_secs(3600);

/// One side of a quota entity: a name, or the default for every name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityName {
    Default,
    Named(String),
}

impl EntityName {
    /// Kafka's wire form: `None` for the default.
    pub fn as_wire(&self) -> Option<&str> {
        match self {
            EntityName::Default => None,
            EntityName::Named(name) => Some(name),
        }
    }
}

/// What a quota applies to: a user, a client id, or both.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntity {
    pub user: Option<EntityName>,
    pub client_id: Option<EntityName>,
}

/// Quotas by entity, then by key.
pub type QuotaMap = BTreeMap<QuotaEntity, BTreeMap<String, f64>>;

/// Which measured rate a client's quota is checked against: its quota's
/// kind, and the user and client id the matching level names (empty for
/// a side the level leaves out), as Kafka's metric tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SensorKey {
    pub quota: &'static str,
    pub user: String,
    pub client_id: String,
}

/// One measured rate.
#[derive(Debug)]
struct Sensor {
    /// (window start, amount recorded in it), oldest first.
    windows: VecDeque<(Instant, f64)>,
    last: Instant,
    /// Throttle time handed out, in total.
    throttled: Duration,
    /// Amount recorded, in total.
    recorded: f64,
    /// An answer larger than the windows allow was let through: nothing
    /// more passes before this (its size at the quota's rate).
    paid_until: Option<Instant>,
}

impl Sensor {
    fn new(now: Instant) -> Sensor {
        Sensor {
            windows: VecDeque::new(),
            last: now,
            throttled: Duration::ZERO,
            recorded: 0.0,
            paid_until: None,
        }
    }

    fn record(&mut self, amount: f64, now: Instant) {
        self.last = now;
        self.recorded += amount;
        self.purge(now);
        match self.windows.back_mut() {
            Some((start, total)) if now.duration_since(*start) < WINDOW => *total += amount,
            _ => self.windows.push_back((now, amount)),
        }
    }

    /// Drops the windows that began more than `WINDOWS` windows ago
    /// (Kafka's `purgeObsoleteSamples`): an idle client's past does not
    /// lend it room.
    fn purge(&mut self, now: Instant) {
        while self
            .windows
            .front()
            .is_some_and(|(start, _)| now.duration_since(*start) >= WINDOW * WINDOWS)
            || self.windows.len() > WINDOWS as usize
        {
            self.windows.pop_front();
        }
    }

    /// Amount per second over the windows kept, the elapsed time counted
    /// as at least `WINDOWS - 1` windows (Kafka's `Rate`); with the
    /// amount and the time really elapsed since the oldest window began.
    fn rate(&self, now: Instant) -> (f64, f64, Duration) {
        let current = |(start, _): &&(Instant, f64)| now.duration_since(*start) < WINDOW * WINDOWS;
        let Some((oldest, _)) = self.windows.iter().find(current) else {
            return (0.0, 0.0, Duration::ZERO);
        };
        let elapsed = now.duration_since(*oldest);
        let total: f64 = self
            .windows
            .iter()
            .filter(current)
            .map(|(_, amount)| amount)
            .sum();
        let counted = elapsed.max(WINDOW * (WINDOWS - 1));
        (total / counted.as_secs_f64(), total, elapsed)
    }
}

/// The quotas as applied on this node, and the rates measured here.
#[derive(Debug, Default)]
pub struct ClientQuotas {
    configs: RwLock<QuotaMap>,
    /// Which of [`QUOTA_KEYS`] some entity sets, a bit each: every Kafka
    /// request asks, so a broker without quotas (or without a request
    /// quota) takes no lock and builds no key for it.
    keys_set: AtomicU8,
    sensors: Mutex<HashMap<SensorKey, Sensor>>,
}

/// The bit of quota `key` in [`ClientQuotas::keys_set`].
fn key_bit(key: &str) -> u8 {
    QUOTA_KEYS
        .iter()
        .position(|k| *k == key)
        .map_or(0, |i| 1 << i)
}

/// What one recorded request costs its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttle {
    /// How long the client must wait (Kafka's `throttle_time_ms`).
    pub time: Duration,
}

impl ClientQuotas {
    /// Whether any quota is set (nothing is measured otherwise).
    pub fn any(&self) -> bool {
        self.keys_set.load(Ordering::Relaxed) != 0
    }

    /// Every quota.
    pub fn all(&self) -> QuotaMap {
        self.configs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn replace_all(&self, quotas: &QuotaMap) {
        let mut configs = self.configs.write().unwrap_or_else(|e| e.into_inner());
        quotas.clone_into(&mut configs);
        let keys = configs
            .values()
            .flat_map(BTreeMap::keys)
            .fold(0, |bits, key| bits | key_bit(key));
        self.keys_set.store(keys, Ordering::Relaxed);
    }

    /// The quota `key` of a client of `user` with `client_id`, and the
    /// sensor it is measured by, as Kafka's default callback finds it.
    pub fn quota(
        &self,
        key: &'static str,
        user: &str,
        client_id: &str,
    ) -> Option<(f64, SensorKey)> {
        use EntityName::{Default, Named};
        if self.keys_set.load(Ordering::Relaxed) & key_bit(key) == 0 {
            return None;
        }
        let configs = self.configs.read().unwrap_or_else(|e| e.into_inner());
        let (user_name, client_name) = (Named(user.to_owned()), Named(client_id.to_owned()));
        let levels = [
            (Some(&user_name), Some(&client_name)),
            (Some(&user_name), Some(&Default)),
            (Some(&user_name), None),
            (Some(&Default), Some(&client_name)),
            (Some(&Default), Some(&Default)),
            (Some(&Default), None),
            (None, Some(&client_name)),
            (None, Some(&Default)),
        ];
        levels.into_iter().find_map(|(u, c)| {
            let entity = QuotaEntity {
                user: u.cloned(),
                client_id: c.cloned(),
            };
            let value = *configs.get(&entity)?.get(key)?;
            // The rate is shared by who the matching level names.
            let tags = SensorKey {
                quota: key,
                user: u.map_or_else(String::new, |_| user.to_owned()),
                client_id: c.map_or_else(String::new, |_| client_id.to_owned()),
            };
            Some((value, tags))
        })
    }

    /// Records `amount` (bytes, or request time in percent-seconds) of a
    /// client of `user` with `client_id` against its quota `key`, and
    /// returns how long it is throttled: nothing without a quota, or while
    /// its rate is within it. `capped` bounds the throttle time.
    pub fn record(
        &self,
        key: &'static str,
        user: &str,
        client_id: &str,
        amount: f64,
        cap: Duration,
    ) -> Throttle {
        let Some((quota, sensor)) = self.quota(key, user, client_id) else {
            return Throttle::default();
        };
        let now = Instant::now();
        let mut sensors = self.sensors.lock().unwrap_or_else(|e| e.into_inner());
        if sensors.len() > 10_000 {
            sensors.retain(|_, s| now.duration_since(s.last) < IDLE_SENSOR);
        }
        let measured = sensors.entry(sensor).or_insert_with(|| Sensor::new(now));
        measured.record(amount, now);
        let (_, total, elapsed) = measured.rate(now);
        let time = throttle_time(total, elapsed, quota).min(cap);
        measured.throttled += time;
        Throttle { time }
    }

    /// Records `amount` (a fetch answer) only if the client may have it:
    /// `Ok(throttle)` when it is recorded and sent, `Err(throttle)` when
    /// it would pass the quota (it is then answered empty and not
    /// counted, as in Kafka). An answer larger than the windows allow is
    /// let through when nothing else is in them, throttled for its size,
    /// so a client is slowed, never starved.
    pub fn record_if_within(
        &self,
        key: &'static str,
        user: &str,
        client_id: &str,
        amount: f64,
        cap: Duration,
    ) -> Result<Duration, Duration> {
        let Some((quota, sensor)) = self.quota(key, user, client_id) else {
            return Ok(Duration::ZERO);
        };
        let now = Instant::now();
        let mut sensors = self.sensors.lock().unwrap_or_else(|e| e.into_inner());
        let measured = sensors.entry(sensor).or_insert_with(|| Sensor::new(now));
        if let Some(until) = measured.paid_until.filter(|until| *until > now) {
            let time = (until - now).min(cap);
            measured.last = now;
            measured.throttled += time;
            return Err(time);
        }
        let (_, total, elapsed) = measured.rate(now);
        let time = throttle_time(total + amount, elapsed, quota).min(cap);
        measured.throttled += time;
        if time.is_zero() {
            measured.record(amount, now);
            Ok(time)
        } else if total == 0.0 {
            // Larger than the windows allow: through, then nothing until
            // its size is paid for at the quota's rate (beyond the
            // windows, which forget it after 11 s).
            measured.record(amount, now);
            measured.paid_until =
                Some(now + Duration::from_secs_f64((amount / quota).min(86_400.0)));
            Ok(time)
        } else {
            measured.last = now;
            Err(time)
        }
    }

    /// Each measured rate: its sensor, the rate now, the throttle time
    /// handed out and the amount recorded since it was made.
    pub fn measured(&self) -> Vec<(SensorKey, f64, Duration, f64)> {
        let now = Instant::now();
        let sensors = self.sensors.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = sensors
            .iter()
            .map(|(key, s)| (key.clone(), s.rate(now).0, s.throttled, s.recorded))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// How long until `total`, recorded over the windows kept (begun
/// `elapsed` ago), is back within `quota` over the time counted: none
/// while `total` fits the quota over at least `WINDOWS - 1` windows.
/// (Kafka's `QuotaUtils.throttleTime` scales the excess rate by the
/// counted window instead; while that is padded to ten windows the wait
/// does not lower the rate, so a client starting cold runs over its
/// quota by about the square root of twice its request size times the
/// quota times the time. Waiting until the rate is back holds it within
/// one request of the quota.)
fn throttle_time(total: f64, elapsed: Duration, quota: f64) -> Duration {
    if quota <= 0.0 {
        return Duration::ZERO;
    }
    let needed = total / quota;
    let counted = elapsed.max(WINDOW * (WINDOWS - 1)).as_secs_f64();
    if needed <= counted {
        return Duration::ZERO;
    }
    Duration::from_secs_f64((needed - elapsed.as_secs_f64()).min(3600.0))
}

/// Whether `value` may be set as quota `key`.
///
/// # Errors
/// An unknown key, or a value that is not a positive number (byte rates
/// are whole bytes).
pub fn validate(key: &str, value: f64) -> Result<(), String> {
    if !QUOTA_KEYS.contains(&key) {
        return Err(format!(
            "{key} is not a quota of users and client ids here; there are {}",
            QUOTA_KEYS.join(", ")
        ));
    }
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{key} must be above 0, got {value}"));
    }
    if key != REQUEST_PERCENTAGE && value.fract() != 0.0 {
        return Err(format!("{key} is a whole number of bytes, got {value}"));
    }
    Ok(())
}

/// Applies one entity's changes: a value set, or removed (`None`); an
/// entity left without quotas goes.
pub(crate) fn alter(map: &mut QuotaMap, entity: QuotaEntity, changes: Vec<(String, Option<f64>)>) {
    let quotas = map.entry(entity.clone()).or_default();
    for (key, value) in changes {
        match value {
            Some(value) => {
                quotas.insert(key, value);
            }
            None => {
                quotas.remove(&key);
            }
        }
    }
    if quotas.is_empty() {
        map.remove(&entity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(user: Option<EntityName>, client_id: Option<EntityName>) -> QuotaEntity {
        QuotaEntity { user, client_id }
    }

    fn named(name: &str) -> Option<EntityName> {
        Some(EntityName::Named(name.to_owned()))
    }

    #[test]
    fn the_most_specific_quota_wins_and_names_who_shares_it() {
        let mut map = QuotaMap::new();
        let set = |map: &mut QuotaMap, e: QuotaEntity, v: f64| {
            alter(map, e, vec![(PRODUCER_BYTE_RATE.to_owned(), Some(v))]);
        };
        set(&mut map, entity(None, Some(EntityName::Default)), 1.0);
        set(&mut map, entity(None, named("app")), 2.0);
        set(&mut map, entity(Some(EntityName::Default), None), 3.0);
        set(&mut map, entity(named("alice"), None), 4.0);
        set(&mut map, entity(named("alice"), named("app")), 5.0);
        let quotas = ClientQuotas::default();
        quotas.replace_all(&map);
        let found = |user: &str, client: &str| {
            quotas
                .quota(PRODUCER_BYTE_RATE, user, client)
                .map(|(v, k)| (v, k.user, k.client_id))
        };
        assert_eq!(
            found("alice", "app"),
            Some((5.0, "alice".into(), "app".into()))
        );
        assert_eq!(
            found("alice", "other"),
            Some((4.0, "alice".into(), String::new()))
        );
        // The default user is more specific than a client id alone.
        assert_eq!(
            found("bob", "app"),
            Some((3.0, "bob".into(), String::new()))
        );
        assert_eq!(quotas.quota(CONSUMER_BYTE_RATE, "bob", "app"), None);
        alter(
            &mut map,
            entity(Some(EntityName::Default), None),
            vec![(PRODUCER_BYTE_RATE.to_owned(), None)],
        );
        quotas.replace_all(&map);
        assert_eq!(
            found("bob", "app"),
            Some((2.0, String::new(), "app".into()))
        );
        assert_eq!(found("bob", "x"), Some((1.0, String::new(), "x".into())));
    }

    #[test]
    fn a_client_over_its_rate_is_throttled_until_it_is_back_within() {
        // 100 B/s measured over at least 10 s: 1000 bytes pass at once.
        let quotas = ClientQuotas::default();
        let mut map = QuotaMap::new();
        alter(
            &mut map,
            entity(named("u"), None),
            vec![(PRODUCER_BYTE_RATE.to_owned(), Some(100.0))],
        );
        quotas.replace_all(&map);
        let cap = Duration::from_secs(60);
        let first = quotas.record(PRODUCER_BYTE_RATE, "u", "c", 1000.0, cap);
        assert_eq!(first.time, Duration::ZERO);
        // 1500 bytes need 15 s at 100 B/s: all but the time elapsed.
        let over = quotas.record(PRODUCER_BYTE_RATE, "u", "c", 500.0, cap);
        assert!(
            (14_900..=15_000).contains(&over.time.as_millis()),
            "{:?}",
            over.time
        );
        // Another user has no quota.
        assert_eq!(
            quotas.record(PRODUCER_BYTE_RATE, "v", "c", 1e9, cap).time,
            Duration::ZERO
        );
        // A would-be fetch over the quota is not recorded.
        assert!(
            quotas
                .record_if_within(PRODUCER_BYTE_RATE, "u", "c", 10.0, cap)
                .is_err()
        );
        let (_, rate, _, recorded) = quotas
            .measured()
            .into_iter()
            .find(|(key, ..)| key.user == "u")
            .expect("a sensor");
        assert_eq!(recorded, 1500.0);
        assert!((149.0..=150.0).contains(&rate), "{rate}");
    }

    #[test]
    fn an_answer_larger_than_the_windows_passes_when_they_are_empty() {
        let quotas = ClientQuotas::default();
        let mut map = QuotaMap::new();
        alter(
            &mut map,
            entity(named("big"), None),
            vec![(CONSUMER_BYTE_RATE.to_owned(), Some(100.0))],
        );
        quotas.replace_all(&map);
        let cap = Duration::from_secs(60);
        // 5000 bytes at 100 B/s: let through, throttled for 50 s.
        let passed = quotas.record_if_within(CONSUMER_BYTE_RATE, "big", "c", 5000.0, cap);
        assert!(
            passed.is_ok_and(|t| (49..=50).contains(&t.as_secs())),
            "{passed:?}"
        );
        // The next is refused and not counted, even past the cap and the
        // windows: its size is paid for first.
        assert!(
            quotas
                .record_if_within(CONSUMER_BYTE_RATE, "big", "c", 1.0, cap)
                .is_err()
        );
        let short_cap = Duration::from_secs(1);
        let refused = quotas.record_if_within(CONSUMER_BYTE_RATE, "big", "c", 1.0, short_cap);
        assert_eq!(refused, Err(short_cap), "still paying for the large answer");
        assert_eq!(quotas.measured()[0].3, 5000.0);
    }

    #[test]
    fn an_idle_client_gets_no_room_from_its_past() {
        let mut sensor = Sensor::new(Instant::now());
        let start = Instant::now();
        sensor.record(1000.0, start);
        let later = start + Duration::from_secs(30);
        assert_eq!(sensor.rate(later).1, 0.0, "nothing left in the windows");
        sensor.record(10.0, later);
        let (_, total, elapsed) = sensor.rate(later);
        assert_eq!((total, elapsed), (10.0, Duration::ZERO));
        assert_eq!(sensor.windows.len(), 1);
    }

    #[test]
    fn values_are_checked() {
        assert!(validate(PRODUCER_BYTE_RATE, 1024.0).is_ok());
        assert!(validate(REQUEST_PERCENTAGE, 12.5).is_ok());
        assert!(validate(PRODUCER_BYTE_RATE, 0.5).is_err());
        assert!(validate(CONSUMER_BYTE_RATE, -1.0).is_err());
        assert!(validate("controller_mutation_rate", 1.0).is_err());
    }
}
