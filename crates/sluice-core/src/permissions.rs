//! AMQP permissions per user and virtual host, as RabbitMQ keeps and
//! evaluates them: three regular expressions (configure, write, read)
//! matched against the name of the exchange or queue an operation uses,
//! and topic permissions (write and read expressions per topic exchange)
//! matched against routing keys. They are metadata, so they are durable
//! and reach every node of a cluster.
//!
//! As in RabbitMQ, an expression matches anywhere in the name unless it
//! anchors itself (`^…$`), the empty expression matches nothing, a user
//! without permissions on a virtual host may not open it, and a user
//! with no topic permission on an exchange is not limited by topic
//! permissions there.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What a user may do in one virtual host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostPermission {
    pub configure: String,
    pub write: String,
    pub read: String,
}

impl VhostPermission {
    /// Everything (`.*` three times), as RabbitMQ's default user has.
    pub fn full() -> VhostPermission {
        VhostPermission {
            configure: ".*".to_owned(),
            write: ".*".to_owned(),
            read: ".*".to_owned(),
        }
    }
}

/// What a user may publish and bind with on one topic exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermission {
    pub write: String,
    pub read: String,
}

/// The kind of access an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// Every user's permissions, by user then virtual host.
pub type PermissionMap = BTreeMap<String, BTreeMap<String, VhostPermission>>;
/// Every user's topic permissions, by user, virtual host, then exchange.
pub type TopicPermissionMap = BTreeMap<String, BTreeMap<String, BTreeMap<String, TopicPermission>>>;

/// An expression compiled; `None` for the empty one, which matches
/// nothing.
fn compile(expression: &str) -> Result<Option<Regex>, regex::Error> {
    if expression.is_empty() {
        return Ok(None);
    }
    Regex::new(expression).map(Some)
}

/// Checks that each of `expressions` is a valid regular expression.
///
/// # Errors
/// The first invalid one, with the parser's reason.
pub fn validate(expressions: &[&str]) -> Result<(), String> {
    for expression in expressions {
        compile(expression)
            .map_err(|e| format!("invalid regular expression {expression:?}: {e}"))?;
    }
    Ok(())
}

fn matches(expression: &Option<Regex>, name: &str) -> bool {
    expression.as_ref().is_some_and(|re| re.is_match(name))
}

#[derive(Debug)]
struct Compiled {
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
}

#[derive(Debug)]
struct CompiledTopic {
    write: Option<Regex>,
    read: Option<Regex>,
}

/// By user, then virtual host (then exchange): looked up by `&str`, with
/// no allocation on the publish path.
#[derive(Debug, Default)]
struct Applied {
    vhosts: HashMap<String, HashMap<String, Compiled>>,
    topics: HashMap<String, HashMap<String, HashMap<String, CompiledTopic>>>,
    /// Whether the metadata granted the users there were when
    /// permissions began (see [`crate::MetadataCommand::BootstrapPermissions`]);
    /// swapped with the maps, so no check sees the flag without them.
    bootstrapped: bool,
}

/// The permissions as applied on this node, compiled, for the AMQP
/// front-end's checks.
#[derive(Debug, Default)]
pub struct Permissions {
    applied: RwLock<Applied>,
}

impl Permissions {
    /// Whether the users there were before permissions existed (and the
    /// configuration's) were granted theirs.
    pub fn bootstrapped(&self) -> bool {
        self.read_applied().bootstrapped
    }

    /// Whether `user` may open virtual host `vhost` (has permissions there).
    /// Until the bootstrap is applied (the first moments of a new data
    /// directory, whose only users are the configuration's, who get every
    /// permission then) everything is allowed, as before permissions.
    pub fn may_open(&self, user: &str, vhost: &str) -> bool {
        let applied = self.read_applied();
        !applied.bootstrapped
            || applied
                .vhosts
                .get(user)
                .is_some_and(|vhosts| vhosts.contains_key(vhost))
    }

    /// Whether `user` has `access` to the exchange or queue `name` in
    /// `vhost`.
    pub fn allows(&self, user: &str, vhost: &str, access: Access, name: &str) -> bool {
        let applied = self.read_applied();
        if !applied.bootstrapped {
            return true;
        }
        let Some(compiled) = applied.vhosts.get(user).and_then(|v| v.get(vhost)) else {
            return false;
        };
        matches(
            match access {
                Access::Configure => &compiled.configure,
                Access::Write => &compiled.write,
                Access::Read => &compiled.read,
            },
            name,
        )
    }

    /// Whether `user` may publish (`Write`) or bind (`Read`) with
    /// `routing_key` on the topic exchange `exchange` of `vhost`: always
    /// when no topic permission names that exchange for the user.
    pub fn allows_topic(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
        access: Access,
        routing_key: &str,
    ) -> bool {
        let applied = self.read_applied();
        let Some(topic) = applied
            .topics
            .get(user)
            .and_then(|vhosts| vhosts.get(vhost))
            .and_then(|by_exchange| by_exchange.get(exchange))
        else {
            return true;
        };
        match access {
            Access::Write => matches(&topic.write, routing_key),
            Access::Read => matches(&topic.read, routing_key),
            Access::Configure => true,
        }
    }

    pub(crate) fn replace_all(
        &self,
        permissions: &PermissionMap,
        topics: &TopicPermissionMap,
        bootstrapped: bool,
    ) {
        let mut applied = Applied {
            bootstrapped,
            ..Applied::default()
        };
        for (user, vhosts) in permissions {
            for (vhost, permission) in vhosts {
                // Validated before they were committed; an invalid one
                // (never expected) allows nothing.
                let compiled = Compiled {
                    configure: compile(&permission.configure).ok().flatten(),
                    write: compile(&permission.write).ok().flatten(),
                    read: compile(&permission.read).ok().flatten(),
                };
                applied
                    .vhosts
                    .entry(user.clone())
                    .or_default()
                    .insert(vhost.clone(), compiled);
            }
        }
        for (user, vhosts) in topics {
            for (vhost, exchanges) in vhosts {
                let compiled = exchanges
                    .iter()
                    .map(|(exchange, permission)| {
                        (
                            exchange.clone(),
                            CompiledTopic {
                                write: compile(&permission.write).ok().flatten(),
                                read: compile(&permission.read).ok().flatten(),
                            },
                        )
                    })
                    .collect();
                applied
                    .topics
                    .entry(user.clone())
                    .or_default()
                    .insert(vhost.clone(), compiled);
            }
        }
        *self.applied.write().unwrap_or_else(|e| e.into_inner()) = applied;
    }

    fn read_applied(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_match_as_rabbitmqs_do() {
        let permissions = Permissions::default();
        let mut map = PermissionMap::new();
        map.entry("bob".into()).or_default().insert(
            "/".into(),
            VhostPermission {
                configure: "^bob-".into(),
                write: "orders".into(),
                read: String::new(),
            },
        );
        let mut topics = TopicPermissionMap::new();
        topics
            .entry("bob".into())
            .or_default()
            .entry("/".into())
            .or_default()
            .insert(
                "amq.topic".into(),
                TopicPermission {
                    write: "^eu\\.".into(),
                    read: ".*".into(),
                },
            );
        permissions.replace_all(&map, &topics, true);
        assert!(permissions.may_open("bob", "/"));
        assert!(!permissions.may_open("bob", "other"));
        assert!(!permissions.may_open("alice", "/"));
        assert!(permissions.allows("bob", "/", Access::Configure, "bob-q"));
        assert!(
            !permissions.allows("bob", "/", Access::Configure, "q-bob-"),
            "anchored"
        );
        assert!(
            permissions.allows("bob", "/", Access::Write, "all-orders-eu"),
            "unanchored"
        );
        assert!(
            !permissions.allows("bob", "/", Access::Read, "anything"),
            "empty: nothing"
        );
        assert!(permissions.allows_topic("bob", "/", "amq.topic", Access::Write, "eu.sales"));
        assert!(!permissions.allows_topic("bob", "/", "amq.topic", Access::Write, "us.sales"));
        assert!(
            permissions.allows_topic("bob", "/", "other.topic", Access::Write, "us.sales"),
            "no topic permission on that exchange"
        );
        assert!(validate(&[".*", "^a$", ""]).is_ok());
        assert!(validate(&["(unclosed"]).is_err());
    }
}
