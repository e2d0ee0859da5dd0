//! The broker's users, shared by every front-end that logs clients in
//! (Kafka's SASL, AMQP's handshake, the admin API's basic authentication).
//!
//! Users are metadata: each change is a [`crate::MetadataCommand`], so they
//! are durable and reach every node of a cluster. No password is kept,
//! only SCRAM credentials (RFC 5802: a random salt, an iteration count,
//! and the stored and server keys PBKDF2 derives from the password), as
//! Kafka keeps them; a plain password (SASL PLAIN, AMQP PLAIN, HTTP basic)
//! is checked by deriving the stored key again. The users of the
//! configuration are a bootstrap: taken once, on the first start of a data
//! directory, after which the API, the CLI and Kafka's
//! AlterUserScramCredentials manage them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::RngCore as _;
use rsasl::mechanisms::scram::tools::{derive_keys, hash_password};
use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq as _;

/// Iterations of new credentials made from a password (Kafka's minimum,
/// and its tools' default).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Fewest iterations a credential may have (Kafka's bound).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most iterations a credential may have (Kafka's bound).
pub const MAX_ITERATIONS: u32 = 16384;

/// The SCRAM mechanisms users hold credentials for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    /// Both, in Kafka's order.
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism named `name` (as SASL names it).
    pub fn parse(name: &str) -> Option<ScramMechanism> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Kafka's ScramMechanism code (AlterUserScramCredentials).
    pub fn kafka_type(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    /// The mechanism of Kafka's code `code`.
    pub fn from_kafka_type(code: i8) -> Option<ScramMechanism> {
        Self::ALL.into_iter().find(|m| m.kafka_type() == code)
    }

    /// PBKDF2 of `password`: the salted password SCRAM starts from.
    fn salted(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut out = GenericArray::default();
                hash_password::<Sha256>(password, iterations, salt, &mut out);
                out.to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut out = GenericArray::default();
                hash_password::<Sha512>(password, iterations, salt, &mut out);
                out.to_vec()
            }
        }
    }

    /// (stored key, server key) of a salted password.
    fn keys(self, salted: &[u8]) -> (Vec<u8>, Vec<u8>) {
        match self {
            ScramMechanism::Sha256 => {
                let (client, server) = derive_keys::<Sha256>(salted);
                (Sha256::digest(client).to_vec(), server.to_vec())
            }
            ScramMechanism::Sha512 => {
                let (client, server) = derive_keys::<Sha512>(salted);
                (Sha512::digest(client).to_vec(), server.to_vec())
            }
        }
    }
}

/// What a user's SCRAM credential for one mechanism keeps: enough to
/// check a client's proof, not enough to log in as the user. Its `Debug`
/// shows only the iterations.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScramCredential {
    #[serde(with = "base64_bytes")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    #[serde(with = "base64_bytes")]
    pub stored_key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// A credential for `password` with a fresh random salt.
    pub fn from_password(mechanism: ScramMechanism, password: &str, iterations: u32) -> Self {
        let mut salt = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let salted = mechanism.salted(password.as_bytes(), &salt, iterations);
        Self::from_salted_password(mechanism, &salted, salt, iterations)
    }

    /// A credential from a password the client salted itself (Kafka's
    /// AlterUserScramCredentials sends no password, only this).
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salted: &[u8],
        salt: Vec<u8>,
        iterations: u32,
    ) -> Self {
        let (stored_key, server_key) = mechanism.keys(salted);
        ScramCredential {
            salt,
            iterations,
            stored_key,
            server_key,
        }
    }

    /// Whether `password` is the one this credential was made from.
    fn verify(&self, mechanism: ScramMechanism, password: &str) -> bool {
        let salted = mechanism.salted(password.as_bytes(), &self.salt, self.iterations);
        let (stored_key, _) = mechanism.keys(&salted);
        bool::from(stored_key.ct_eq(&self.stored_key))
    }
}

/// A user as the metadata keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// RabbitMQ's user tags (administrator, monitoring, management,
    /// policymaker, or any other).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// May connect only from a loopback address (RabbitMQ's rule for
    /// guest).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub loopback_only: bool,
    /// Credentials by mechanism; a user may have none (Kafka may hold a
    /// credential for one mechanism only).
    #[serde(default)]
    pub scram: BTreeMap<ScramMechanism, ScramCredential>,
}

impl UserRecord {
    /// A user whose password is `password`, with credentials for every
    /// mechanism.
    pub fn with_password(password: &str, tags: Vec<String>, loopback_only: bool) -> Self {
        UserRecord {
            tags,
            loopback_only,
            scram: ScramMechanism::ALL
                .into_iter()
                .map(|m| {
                    (
                        m,
                        ScramCredential::from_password(m, password, DEFAULT_ITERATIONS),
                    )
                })
                .collect(),
        }
    }

    /// Whether the user carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// The same user with `password` instead.
    pub fn with_new_password(&self, password: &str) -> Self {
        UserRecord::with_password(password, self.tags.clone(), self.loopback_only)
    }
}

/// A logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub tags: Vec<String>,
}

impl Principal {
    /// Whether the user carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// The users as applied on this node, for the login paths.
#[derive(Debug, Default)]
pub struct Users {
    records: RwLock<BTreeMap<String, UserRecord>>,
    /// Whether the metadata took the configuration's users; until then
    /// `bootstrap` answers logins (a cluster's quorum may take a moment).
    bootstrapped: AtomicBool,
    bootstrap: RwLock<BTreeMap<String, UserRecord>>,
    /// Per user, a digest of the last password that passed with its
    /// current credential: PBKDF2 runs once per password, not on every
    /// API request or connection. A changed credential misses.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Recent failed logins by source address.
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// No delay after failed logins (the fuzz harness, which fails on
    /// purpose thousands of times a second).
    no_failure_delay: AtomicBool,
}

/// Failed logins from one address within [`FAILURE_WINDOW`].
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
    logged: Instant,
    unlogged: u32,
}

/// Failed logins count for this long.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// One warning per address per this long; the others are counted in it.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// Each failure in the window delays the refusal by this much more ...
const FAILURE_DELAY_STEP: Duration = Duration::from_millis(100);
/// ... up to this.
const FAILURE_DELAY_MAX: Duration = Duration::from_secs(5);

impl Users {
    /// Users that answer logins before the metadata has taken any (the
    /// configuration's users, hashed).
    pub fn set_bootstrap(&self, users: BTreeMap<String, UserRecord>) {
        *self.bootstrap.write().unwrap_or_else(|e| e.into_inner()) = users;
    }

    /// The configuration's users, to be taken by the metadata.
    pub fn bootstrap_users(&self) -> BTreeMap<String, UserRecord> {
        self.bootstrap
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the metadata took the configuration's users.
    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped.load(Ordering::Acquire)
    }

    /// The users that answer now: the metadata's, or the configuration's
    /// until the metadata took them.
    fn current(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, UserRecord>> {
        let table = if self.bootstrapped() {
            &self.records
        } else {
            &self.bootstrap
        };
        table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The user `name`, if any.
    pub fn get(&self, name: &str) -> Option<UserRecord> {
        self.current().get(name).cloned()
    }

    /// Whether user `name` exists and has `tag` (no copy of the record).
    pub fn has_tag(&self, name: &str, tag: &str) -> bool {
        self.current()
            .get(name)
            .is_some_and(|user| user.has_tag(tag))
    }

    /// Every user, by name.
    pub fn list(&self) -> BTreeMap<String, UserRecord> {
        self.current().clone()
    }

    /// The user `name` when `password` is theirs and they may log in from
    /// `peer`; `None` otherwise (logged, with the user name, never the
    /// password).
    ///
    /// The password must fit every credential the user holds, so a
    /// password changed for one SCRAM mechanism only (Kafka's
    /// AlterUserScramCredentials sets one at a time) no longer logs in with
    /// the old one. Blocking: PBKDF2 runs once per mechanism the first time
    /// a password is seen; callers on async threads use `spawn_blocking`.
    pub fn authenticate(&self, name: &str, password: &str, peer: IpAddr) -> Option<Principal> {
        let user = self.get(name)?;
        if user.scram.is_empty() {
            return None;
        }
        if user.loopback_only && !peer.is_loopback() {
            // Before any hashing: a remote guess at guest costs nothing.
            tracing::debug!(%peer, user = %name, "user may log in only from loopback");
            return None;
        }
        let digest = {
            let mut hasher = Sha256::new();
            for credential in user.scram.values() {
                for part in [
                    &credential.salt,
                    &credential.stored_key,
                    &credential.server_key,
                ] {
                    hasher.update((part.len() as u64).to_be_bytes());
                    hasher.update(part);
                }
            }
            hasher.update(password.as_bytes());
            <[u8; 32]>::from(hasher.finalize())
        };
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|known| bool::from(known.ct_eq(&digest)));
        if !cached {
            if !user
                .scram
                .iter()
                .all(|(mechanism, credential)| credential.verify(*mechanism, password))
            {
                return None;
            }
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_owned(), digest);
        }
        Some(Principal {
            name: name.to_owned(),
            tags: user.tags,
        })
    }

    /// Notes a failed login from `peer` as `user` over `via` (a protocol
    /// and mechanism) and logs it, with user and peer, at most once per
    /// address every 10 s (the rest are counted into the next warning).
    /// Returns how long to wait before answering: 100 ms more for each
    /// failure from that address in the last minute, up to 5 s, so that
    /// guessing passwords is slow (Kafka delays failed authentications
    /// the same way).
    pub fn login_failed(&self, peer: IpAddr, user: &str, via: &str) -> Duration {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() > 10_000 {
            failures.retain(|_, f| now.duration_since(f.since) < FAILURE_WINDOW);
        }
        let entry = failures.entry(peer).or_insert(Failures {
            since: now,
            count: 0,
            logged: now.checked_sub(FAILURE_LOG_EVERY).unwrap_or(now),
            unlogged: 0,
        });
        if now.duration_since(entry.since) >= FAILURE_WINDOW {
            entry.since = now;
            entry.count = 0;
        }
        entry.count += 1;
        if now.duration_since(entry.logged) >= FAILURE_LOG_EVERY || entry.count == 1 {
            tracing::warn!(
                %peer,
                %user,
                via,
                failures_in_last_minute = entry.count,
                not_logged_since_last = entry.unlogged,
                "login failed"
            );
            entry.logged = now;
            entry.unlogged = 0;
        } else {
            entry.unlogged += 1;
        }
        if self.no_failure_delay.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        (FAILURE_DELAY_STEP * entry.count).min(FAILURE_DELAY_MAX)
    }

    /// Turns the delay after failed logins off (for fuzzing only: it is
    /// what slows password guessing).
    pub fn disable_failure_delay(&self) {
        self.no_failure_delay.store(true, Ordering::Relaxed);
    }

    /// [`Users::authenticate`] from an async task: the first check of a
    /// password runs PBKDF2, off the async threads.
    pub async fn authenticate_async(
        self: &Arc<Self>,
        name: String,
        password: String,
        peer: IpAddr,
    ) -> Option<Principal> {
        let users = Arc::clone(self);
        tokio::task::spawn_blocking(move || users.authenticate(&name, &password, peer))
            .await
            .ok()
            .flatten()
    }

    /// A refused login: noted and logged as [`Users::login_failed`], then
    /// the wait it sets before the refusal is answered.
    pub async fn login_refused(&self, peer: IpAddr, user: &str, via: &str) {
        tokio::time::sleep(self.login_failed(peer, user, via)).await;
    }

    /// The SCRAM credential of `name` for `mechanism`.
    pub fn scram(&self, name: &str, mechanism: ScramMechanism) -> Option<ScramCredential> {
        self.get(name)?.scram.get(&mechanism).cloned()
    }

    /// Applies one user's change.
    pub(crate) fn set(&self, name: &str, user: Option<&UserRecord>) {
        let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
        match user {
            Some(user) => {
                records.insert(name.to_owned(), user.clone());
            }
            None => {
                records.remove(name);
            }
        }
    }

    /// Replaces every user (a snapshot, or the state at open).
    pub(crate) fn replace_all(&self, users: &BTreeMap<String, UserRecord>, bootstrapped: bool) {
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = users.clone();
        self.bootstrapped.store(bootstrapped, Ordering::Release);
    }
}

/// Whether `name` may name a user: not empty, at most 255 bytes, no
/// control characters, no `:` (the AMQP and HTTP credential separator).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.chars().any(|c| c.is_control() || c == ':')
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        let users = Users::default();
        let mut records = BTreeMap::new();
        records.insert(
            "guest".to_owned(),
            UserRecord::with_password("guest", vec![], true),
        );
        records.insert(
            "alice".to_owned(),
            UserRecord::with_password("secret", vec!["administrator".into()], false),
        );
        users.replace_all(&records, true);
        users
    }

    #[test]
    fn records_keep_no_password_and_debug_shows_no_key() {
        let record = UserRecord::with_password("secret", vec![], false);
        let json = serde_json::to_string(&record).expect("serialises");
        assert!(!json.contains("secret"), "{json}");
        let back: UserRecord = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, record);
        let printed = format!("{record:?}");
        let key = &record.scram[&ScramMechanism::Sha256].stored_key;
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(key);
        assert!(!printed.contains(&encoded), "{printed}");
    }

    #[test]
    fn passwords_are_checked_against_the_credential_and_loopback_users_stay_local() {
        let users = users();
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let remote = IpAddr::from([10, 0, 0, 7]);
        assert!(users.authenticate("guest", "guest", loopback).is_some());
        assert!(users.authenticate("guest", "guest", remote).is_none());
        let alice = users
            .authenticate("alice", "secret", remote)
            .expect("alice");
        assert!(alice.has_tag("administrator"));
        // The cached check still refuses a wrong password.
        assert!(users.authenticate("alice", "wrong", loopback).is_none());
        assert!(users.authenticate("alice", "secret", loopback).is_some());
        assert!(users.authenticate("bob", "secret", loopback).is_none());
        // A new password replaces the old at once, cache or not.
        let changed = users
            .get("alice")
            .expect("alice")
            .with_new_password("other");
        users.set("alice", Some(&changed));
        assert!(users.authenticate("alice", "secret", loopback).is_none());
        assert!(users.authenticate("alice", "other", loopback).is_some());
    }

    #[test]
    fn a_password_changed_for_one_mechanism_retires_the_old_one_everywhere() {
        let users = users();
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let mut alice = users.get("alice").expect("alice");
        alice.scram.insert(
            ScramMechanism::Sha512,
            ScramCredential::from_password(ScramMechanism::Sha512, "rotated", 4096),
        );
        users.set("alice", Some(&alice));
        // Neither fits both credentials any more.
        assert!(users.authenticate("alice", "secret", loopback).is_none());
        assert!(users.authenticate("alice", "rotated", loopback).is_none());
        alice.scram.insert(
            ScramMechanism::Sha256,
            ScramCredential::from_password(ScramMechanism::Sha256, "rotated", 4096),
        );
        users.set("alice", Some(&alice));
        assert!(users.authenticate("alice", "rotated", loopback).is_some());
    }

    #[test]
    fn a_salted_password_gives_the_same_credential_as_the_password() {
        for mechanism in ScramMechanism::ALL {
            let made = ScramCredential::from_password(mechanism, "pencil", 4096);
            let salted = mechanism.salted(b"pencil", &made.salt, 4096);
            let given =
                ScramCredential::from_salted_password(mechanism, &salted, made.salt.clone(), 4096);
            assert_eq!(made, given);
            assert!(given.verify(mechanism, "pencil"));
            assert!(!given.verify(mechanism, "pen"));
        }
    }

    #[test]
    fn until_bootstrapped_the_configuration_users_answer() {
        let users = Users::default();
        let mut config = BTreeMap::new();
        config.insert(
            "cfg".to_owned(),
            UserRecord::with_password("pw", vec![], false),
        );
        users.set_bootstrap(config);
        let loopback = IpAddr::from([127, 0, 0, 1]);
        assert!(users.authenticate("cfg", "pw", loopback).is_some());
        // Once the metadata holds users, it alone answers: a deleted
        // configuration user stays deleted.
        users.replace_all(&BTreeMap::new(), true);
        assert!(users.authenticate("cfg", "pw", loopback).is_none());
    }

    #[test]
    fn failed_logins_are_delayed_more_each_time_up_to_a_bound() {
        let users = Users::default();
        let peer = IpAddr::from([10, 0, 0, 9]);
        let first = users.login_failed(peer, "mallory", "test");
        let second = users.login_failed(peer, "mallory", "test");
        assert!(second > first, "{first:?} then {second:?}");
        for _ in 0..100 {
            users.login_failed(peer, "mallory", "test");
        }
        assert_eq!(
            users.login_failed(peer, "mallory", "test"),
            FAILURE_DELAY_MAX
        );
        // Another address starts afresh.
        assert_eq!(
            users.login_failed(IpAddr::from([10, 0, 0, 10]), "mallory", "test"),
            FAILURE_DELAY_STEP
        );
    }

    #[test]
    fn user_names_exclude_separators() {
        assert!(valid_user_name("alice"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("a:b"));
        assert!(!valid_user_name("a\nb"));
    }
}
