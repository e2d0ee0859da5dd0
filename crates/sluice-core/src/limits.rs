//! RabbitMQ's virtual host limits (`max-connections`, `max-queues`) and
//! user limits (`max-connections`, `max-channels`), as `rabbitmqctl
//! set_vhost_limits` and `set_user_limits` set them.
//!
//! They are metadata: committed by the quorum on a cluster, kept in
//! snapshots, and held here as applied for the AMQP paths that check
//! them. A negative value means no limit, as in RabbitMQ; 0 allows none.
//! Connections and channels are counted over the whole cluster when they
//! open; queues of a virtual host as this node knows them.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// The limits a virtual host may have.
pub const VHOST_LIMITS: [&str; 2] = ["max-connections", "max-queues"];
/// The limits a user may have.
pub const USER_LIMITS: [&str; 2] = ["max-connections", "max-channels"];

/// Limits by virtual host (or user), then by name.
pub type LimitMap = BTreeMap<String, BTreeMap<String, i64>>;

/// What a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum LimitScope {
    Vhost(String),
    User(String),
}

impl LimitScope {
    /// The limit names this scope takes.
    pub fn names(&self) -> &'static [&'static str] {
        match self {
            LimitScope::Vhost(_) => &VHOST_LIMITS,
            LimitScope::User(_) => &USER_LIMITS,
        }
    }
}

/// The limits as applied on this node.
#[derive(Debug, Default)]
pub struct Limits {
    vhosts: RwLock<LimitMap>,
    users: RwLock<LimitMap>,
}

impl Limits {
    /// The virtual host's limit `name`; `None` when it has none (or a
    /// negative one).
    pub fn vhost(&self, vhost: &str, name: &str) -> Option<u64> {
        find(&self.vhosts, vhost, name)
    }

    /// The user's limit `name`; `None` when it has none.
    pub fn user(&self, user: &str, name: &str) -> Option<u64> {
        find(&self.users, user, name)
    }

    /// Every virtual host's limits.
    pub fn vhost_map(&self) -> LimitMap {
        self.vhosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every user's limits.
    pub fn user_map(&self) -> LimitMap {
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn replace_all(&self, vhosts: &LimitMap, users: &LimitMap) {
        vhosts.clone_into(&mut self.vhosts.write().unwrap_or_else(|e| e.into_inner()));
        users.clone_into(&mut self.users.write().unwrap_or_else(|e| e.into_inner()));
    }
}

fn find(map: &RwLock<LimitMap>, key: &str, name: &str) -> Option<u64> {
    let value = *map
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)?
        .get(name)?;
    u64::try_from(value).ok()
}

/// Sets (`Some`) or clears (`None`) limit `name` of `key` in `map`.
pub(crate) fn set(map: &mut LimitMap, key: String, name: String, value: Option<i64>) {
    match value {
        Some(value) => {
            map.entry(key).or_default().insert(name, value);
        }
        None => {
            if let Some(limits) = map.get_mut(&key) {
                limits.remove(&name);
                if limits.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_means_none_and_zero_allows_none() {
        let mut vhosts = LimitMap::new();
        set(&mut vhosts, "/".into(), "max-connections".into(), Some(0));
        set(&mut vhosts, "/".into(), "max-queues".into(), Some(-1));
        let limits = Limits::default();
        limits.replace_all(&vhosts, &LimitMap::new());
        assert_eq!(limits.vhost("/", "max-connections"), Some(0));
        assert_eq!(limits.vhost("/", "max-queues"), None);
        assert_eq!(limits.vhost("other", "max-connections"), None);
        set(&mut vhosts, "/".into(), "max-connections".into(), None);
        set(&mut vhosts, "/".into(), "max-queues".into(), None);
        assert!(vhosts.is_empty(), "a host without limits leaves no entry");
    }
}
