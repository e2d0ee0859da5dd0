//! Kafka's access control lists: which principal may do what to which
//! resource, from which host. They are metadata (Kafka's AccessControlEntry
//! records), so every node of a cluster authorizes alike, and the rules
//! are Kafka's StandardAuthorizer's:
//!
//! - a DENY that matches wins over any ALLOW;
//! - an ALLOW of READ, WRITE, DELETE or ALTER also allows DESCRIBE, and
//!   one of ALTER_CONFIGS allows DESCRIBE_CONFIGS; ALL matches every
//!   operation;
//! - a LITERAL pattern matches its name (`*`: every name), a PREFIXED one
//!   every name starting with it; principal `User:*` and host `*` match
//!   any;
//! - a resource no ACL names at all is open to everyone only under
//!   `allow.everyone.if.no.acl.found`; super users pass every check.

use std::collections::BTreeSet;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// The name every ACL on the cluster resource carries.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The name and principal that match any.
pub const WILDCARD: &str = "*";
/// The principal of every principal.
pub const WILDCARD_PRINCIPAL: &str = "User:*";

macro_rules! kafka_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Kafka's number for it.
            pub fn code(self) -> i8 {
                match self { $($name::$variant => $code),+ }
            }

            /// The value Kafka numbers `code`.
            pub fn from_code(code: i8) -> Option<$name> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

kafka_enum!(
    /// What an ACL is about (Kafka's ResourceType, less the kinds Sluice
    /// has none of).
    ResourceType {
        Topic = 2,
        Group = 3,
        Cluster = 4,
        TransactionalId = 5,
    }
);

kafka_enum!(
    /// How an ACL's resource name matches (Kafka's PatternType).
    PatternType { Literal = 3, Prefixed = 4 }
);

kafka_enum!(
    /// What an ACL allows or denies (Kafka's AclOperation).
    Operation {
        All = 2,
        Read = 3,
        Write = 4,
        Create = 5,
        Delete = 6,
        Alter = 7,
        Describe = 8,
        ClusterAction = 9,
        DescribeConfigs = 10,
        AlterConfigs = 11,
        IdempotentWrite = 12,
    }
);

kafka_enum!(
    /// Allow or deny (Kafka's AclPermissionType).
    Permission { Deny = 2, Allow = 3 }
);

/// One ACL: a resource pattern and an access control entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    /// `User:NAME`, or `User:*`.
    pub principal: String,
    /// An IP address, or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// Which ACLs a DescribeAcls or DeleteAcls names: `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub resource_name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
    /// The filter names a kind of resource or operation Sluice keeps no
    /// ACL of (Kafka's DELEGATION_TOKEN and USER resources, token
    /// operations): it matches nothing, as in Kafka.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nothing: bool,
}

/// How a filter takes resource patterns (Kafka's PatternType in filters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatternFilter {
    /// Any pattern type (ANY).
    #[default]
    Any,
    /// Every pattern that would match the filter's name: the literal name,
    /// the wildcard, and prefixes of it (MATCH).
    Match,
    /// Patterns of exactly this type.
    Exactly(PatternType),
}

impl AclFilter {
    /// Whether `acl` is one of those the filter names.
    pub fn matches(&self, acl: &AclBinding) -> bool {
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        if self.nothing
            || self.resource_type.is_some_and(|t| t != acl.resource_type)
            || self.operation.is_some_and(|o| o != acl.operation)
            || self.permission.is_some_and(|p| p != acl.permission)
            || !same(&self.principal, &acl.principal)
            || !same(&self.host, &acl.host)
        {
            return false;
        }
        match self.pattern {
            PatternFilter::Any => same(&self.resource_name, &acl.resource_name),
            PatternFilter::Exactly(pattern) => {
                pattern == acl.pattern_type && same(&self.resource_name, &acl.resource_name)
            }
            PatternFilter::Match => match &self.resource_name {
                None => true,
                Some(name) => pattern_matches(acl, name),
            },
        }
    }
}

/// Whether `acl`'s resource pattern takes the resource `name`.
fn pattern_matches(acl: &AclBinding, name: &str) -> bool {
    match acl.pattern_type {
        PatternType::Literal => acl.resource_name == name || acl.resource_name == WILDCARD,
        PatternType::Prefixed => name.starts_with(acl.resource_name.as_str()),
    }
}

/// Whether an ACL for `granted` decides a request for `wanted`: ALL covers
/// every operation; as an ALLOW, READ, WRITE, DELETE and ALTER cover
/// DESCRIBE, and ALTER_CONFIGS covers DESCRIBE_CONFIGS.
fn covers(granted: Operation, permission: Permission, wanted: Operation) -> bool {
    if granted == wanted || granted == Operation::All {
        return true;
    }
    permission == Permission::Allow
        && match wanted {
            Operation::Describe => matches!(
                granted,
                Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
            ),
            Operation::DescribeConfigs => granted == Operation::AlterConfigs,
            _ => false,
        }
}

/// Who asks, from where.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// `User:NAME` (`User:ANONYMOUS` before or without SASL).
    pub principal: &'a str,
    /// The client's IP address.
    pub host: &'a str,
}

/// The ACLs as applied on this node.
#[derive(Debug, Default)]
pub struct Acls {
    acls: RwLock<BTreeSet<AclBinding>>,
}

impl Acls {
    /// Every ACL `filter` names.
    pub fn describe(&self, filter: &AclFilter) -> Vec<AclBinding> {
        self.read()
            .iter()
            .filter(|a| filter.matches(a))
            .cloned()
            .collect()
    }

    /// How many ACLs there are.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Whether `who` may do `operation` on the resource `name` of type
    /// `resource` by the ACLs alone (super users are the caller's to
    /// pass); `everyone_if_none`: a resource no ACL names is open.
    pub fn authorize(
        &self,
        who: Requester<'_>,
        operation: Operation,
        resource: ResourceType,
        name: &str,
        everyone_if_none: bool,
    ) -> bool {
        let acls = self.read();
        let mut named = false;
        let mut allowed = false;
        for acl in acls
            .iter()
            .filter(|a| a.resource_type == resource && pattern_matches(a, name))
        {
            named = true;
            let applies = (acl.principal == who.principal || acl.principal == WILDCARD_PRINCIPAL)
                && (acl.host == who.host || acl.host == WILDCARD)
                && covers(acl.operation, acl.permission, operation);
            if !applies {
                continue;
            }
            match acl.permission {
                Permission::Deny => return false,
                Permission::Allow => allowed = true,
            }
        }
        allowed || (!named && everyone_if_none)
    }

    /// Whether `who` may do `operation` on some resource of type
    /// `resource` (Kafka's authorizeByResourceType, for idempotent
    /// producers with WRITE on any topic). First as for a resource no ACL
    /// names by itself (so `allow.everyone.if.no.acl.found` and wildcard
    /// ACLs count); then an ALLOW of exactly this operation (or ALL) on
    /// some name, literal or prefixed, that no DENY covers: a literal
    /// DENY `*` covers every name, a literal DENY its own name, a
    /// prefixed DENY every name it begins.
    pub fn authorize_any(
        &self,
        who: Requester<'_>,
        operation: Operation,
        resource: ResourceType,
        everyone_if_none: bool,
    ) -> bool {
        if self.authorize(who, operation, resource, "hardcode", everyone_if_none) {
            return true;
        }
        let acls = self.read();
        let mut denied_literal = BTreeSet::new();
        let mut denied_prefixes = BTreeSet::new();
        let mut allowed = Vec::new();
        for acl in acls.iter().filter(|a| {
            a.resource_type == resource
                && (a.principal == who.principal || a.principal == WILDCARD_PRINCIPAL)
                && (a.host == who.host || a.host == WILDCARD)
                && (a.operation == operation || a.operation == Operation::All)
        }) {
            match (acl.permission, acl.pattern_type) {
                (Permission::Deny, PatternType::Literal) if acl.resource_name == WILDCARD => {
                    return false;
                }
                (Permission::Deny, PatternType::Literal) => {
                    denied_literal.insert(acl.resource_name.as_str());
                }
                (Permission::Deny, PatternType::Prefixed) => {
                    denied_prefixes.insert(acl.resource_name.as_str());
                }
                (Permission::Allow, PatternType::Literal) if acl.resource_name == WILDCARD => {
                    return true;
                }
                (Permission::Allow, pattern) => allowed.push((pattern, acl.resource_name.as_str())),
            }
        }
        allowed.into_iter().any(|(pattern, name)| {
            let literal_denied = pattern == PatternType::Literal && denied_literal.contains(name);
            let prefix_denied = name
                .char_indices()
                .map(|(at, c)| &name[..at + c.len_utf8()])
                .any(|prefix| denied_prefixes.contains(prefix));
            !literal_denied && !prefix_denied
        })
    }

    pub(crate) fn replace_all(&self, acls: &BTreeSet<AclBinding>) {
        *self.acls.write().unwrap_or_else(|e| e.into_inner()) = acls.clone();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<AclBinding>> {
        self.acls.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        resource: (ResourceType, &str, PatternType),
        principal: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: resource.0,
            resource_name: resource.1.to_owned(),
            pattern_type: resource.2,
            principal: principal.to_owned(),
            host: WILDCARD.to_owned(),
            operation,
            permission,
        }
    }

    const ALICE: Requester<'static> = Requester {
        principal: "User:alice",
        host: "127.0.0.1",
    };

    #[test]
    fn deny_wins_allow_implies_describe_and_prefixes_match() {
        let acls = Acls::default();
        acls.replace_all(&BTreeSet::from([
            acl(
                (ResourceType::Topic, "orders-", PatternType::Prefixed),
                "User:alice",
                Operation::Read,
                Permission::Allow,
            ),
            acl(
                (ResourceType::Topic, "orders-secret", PatternType::Literal),
                "User:*",
                Operation::All,
                Permission::Deny,
            ),
        ]));
        let topic = |op, name| acls.authorize(ALICE, op, ResourceType::Topic, name, false);
        assert!(topic(Operation::Read, "orders-eu"));
        assert!(
            topic(Operation::Describe, "orders-eu"),
            "READ implies DESCRIBE"
        );
        assert!(!topic(Operation::Write, "orders-eu"));
        assert!(!topic(Operation::Read, "orders-secret"), "a DENY wins");
        assert!(!topic(Operation::Read, "payments"));
        let bob = Requester {
            principal: "User:bob",
            host: "127.0.0.1",
        };
        assert!(!acls.authorize(bob, Operation::Read, ResourceType::Topic, "orders-eu", true));
        assert!(
            acls.authorize(bob, Operation::Read, ResourceType::Topic, "payments", true),
            "a resource no ACL names is open under allow.everyone.if.no.acl.found"
        );
        assert!(acls.authorize_any(ALICE, Operation::Read, ResourceType::Topic, false));
        assert!(!acls.authorize_any(bob, Operation::Read, ResourceType::Topic, false));
        assert!(
            acls.authorize_any(bob, Operation::Read, ResourceType::Topic, true),
            "allow.everyone.if.no.acl.found counts"
        );
        // A prefixed DENY covering the only ALLOW takes it back.
        acls.replace_all(&BTreeSet::from([
            acl(
                (ResourceType::Topic, "orders-eu", PatternType::Literal),
                "User:alice",
                Operation::Write,
                Permission::Allow,
            ),
            acl(
                (ResourceType::Topic, "orders", PatternType::Prefixed),
                "User:alice",
                Operation::Write,
                Permission::Deny,
            ),
        ]));
        assert!(!acls.authorize_any(ALICE, Operation::Write, ResourceType::Topic, false));
    }

    #[test]
    fn filters_match_as_kafkas_do() {
        let literal = acl(
            (ResourceType::Topic, "orders", PatternType::Literal),
            "User:alice",
            Operation::Read,
            Permission::Allow,
        );
        let prefixed = acl(
            (ResourceType::Topic, "ord", PatternType::Prefixed),
            "User:bob",
            Operation::Write,
            Permission::Allow,
        );
        let matching = AclFilter {
            resource_name: Some("orders".to_owned()),
            pattern: PatternFilter::Match,
            ..AclFilter::default()
        };
        assert!(matching.matches(&literal) && matching.matches(&prefixed));
        let exact = AclFilter {
            resource_name: Some("orders".to_owned()),
            ..AclFilter::default()
        };
        assert!(exact.matches(&literal) && !exact.matches(&prefixed));
        let bobs = AclFilter {
            principal: Some("User:bob".to_owned()),
            pattern: PatternFilter::Exactly(PatternType::Prefixed),
            ..AclFilter::default()
        };
        assert!(!bobs.matches(&literal) && bobs.matches(&prefixed));
        let tokens = AclFilter {
            nothing: true,
            ..AclFilter::default()
        };
        assert!(!tokens.matches(&literal) && !tokens.matches(&prefixed));
        assert_eq!(Operation::from_code(8), Some(Operation::Describe));
        assert_eq!(Operation::Describe.code(), 8);
        assert_eq!(ResourceType::from_code(1), None, "ANY is a filter's");
    }
}
