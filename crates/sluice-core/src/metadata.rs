//! Metadata as commands: every change to the broker's topics, every block
//! of producer ids and every durable AMQP object is a [`MetadataCommand`],
//! committed before it is applied, and applied in commit order by one
//! applier ([`Metadata::apply`]) that changes the metadata state and then
//! brings the runtime objects (topics and their partitions) in line with
//! it.
//!
//! Where commands are committed depends on the node: a cluster of one
//! appends them to its own log (`__cluster_metadata-0`, as KRaft names its
//! own), synced, and replays it at open; a node of a cluster proposes them
//! to the Raft quorum ([`MetadataQuorum`], implemented by `sluice-cluster`),
//! which applies every committed command on every node through
//! [`MetadataMachine`]. Applying is idempotent where it touches disk: each
//! partition log carries its topic's id (`partition.metadata`, as Kafka
//! does), so a command applied again keeps the live log, and a log left
//! by a deleted topic of the same name is deleted.
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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use serde::{Deserialize, Serialize};
use sluice_log::{Log, LogManager};

use crate::CoreError;
use crate::acls::{AclBinding, Acls};
use crate::group_config::{GroupConfig, GroupConfigs};
use crate::limits::{LimitMap, LimitScope, Limits};
use crate::messaging::definitions::{
    self, BindingDefinition, Definition, Definitions, ExchangeDefinition, QueueDefinition,
};
use crate::permissions::{
    PermissionMap, Permissions, TopicPermission, TopicPermissionMap, VhostPermission,
};
use crate::quotas::{ClientQuotas, QuotaEntity, QuotaMap};
use crate::retained::{Retained, RetainedMap, RetainedMessage};
use crate::topics::Topics;
use crate::users::{ScramCredential, ScramMechanism, UserRecord, Users};

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
        /// The nodes holding each partition, its leader first; empty on a
        /// cluster of one (every partition is on the node).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replicas: Vec<Vec<i32>>,
    },
    /// The topic now has `partitions` partitions (never fewer).
    GrowTopic {
        name: String,
        partitions: u32,
        /// The nodes holding each added partition, as in `CreateTopic`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replicas: Vec<Vec<i32>>,
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
    /// A partition's new leader, chosen by the controller among its
    /// in-sync replicas (KRaft's PartitionChangeRecord), with the next
    /// leader epoch and the in-sync replicas from now.
    ChangeLeader {
        name: String,
        partition: u32,
        leader: i32,
        leader_epoch: i32,
        in_sync: Vec<i32>,
        /// An unclean election: the leader and in-sync replicas may be
        /// replicas that were not in sync. Otherwise both must come from
        /// the in-sync replicas as they are when the command applies, so
        /// a decision made on stale metadata cannot elect a replica that
        /// fell behind meanwhile.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unclean: bool,
    },
    /// The in-sync replicas of a partition (KRaft's PartitionChangeRecord,
    /// as the partition's leader asks through AlterPartition).
    SetInSync {
        name: String,
        partition: u32,
        in_sync: Vec<i32>,
        /// The leader epoch the proposer leads in (Kafka's AlterPartition
        /// carries it): a leader replaced meanwhile is refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader_epoch: Option<i32>,
        /// The in-sync replicas the change was decided on (what Kafka's
        /// partition epoch stands for): refused when they changed
        /// meanwhile. A leader counts a follower it asks to add toward the
        /// high watermark only until the metadata changes the set, so an
        /// addition decided before another change must not commit after
        /// it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Vec<i32>>,
    },
    /// Whether a registered node is fenced (KRaft's broker fencing): the
    /// controller fences a node it has not heard from for the session
    /// timeout and unfences it when it hears from it again. Clients are
    /// not told of fenced nodes, and their replicas are offline.
    FenceBroker {
        node: i32,
        fenced: bool,
    },
    /// A node of the cluster and where Kafka clients reach it (KRaft's
    /// broker registration); registering again replaces the address.
    RegisterBroker {
        node: i32,
        host: String,
        port: u16,
        /// Every Kafka listener's advertised `host:port`, by listener name.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        listeners: BTreeMap<String, String>,
    },
    /// A partition's replicas move to `target`, or the move under way is
    /// cancelled (`None`) (Kafka's AlterPartitionReassignments, KIP-455).
    /// While it moves, its replicas are the target's followed by the ones
    /// leaving; the new ones catch up as followers, and the controller
    /// finishes the move once every target replica is in sync. Leader and
    /// in-sync replicas follow from the state when it applies.
    ReassignPartition {
        name: String,
        partition: u32,
        target: Option<Vec<i32>>,
    },
    /// The controller ends a move whose target replicas are all in sync:
    /// the leaving replicas drop out; a leaving leader hands over to an
    /// in-sync target replica in the next leader epoch.
    FinishReassignment {
        name: String,
        partition: u32,
    },
    /// A partition exactly as a snapshot saw it: replicas, leader, leader
    /// epoch, in-sync replicas and the move under way. Only snapshots
    /// write it.
    RestorePartition {
        name: String,
        partition: u32,
        replicas: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
        in_sync: Vec<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        moving: Option<Reassignment>,
    },
    /// A node is being decommissioned: it gets no new replicas, and the
    /// controller moves its replicas to other nodes, then unregisters it.
    DecommissionBroker {
        node: i32,
    },
    /// A node leaves the cluster (KRaft's UnregisterBroker); it holds no
    /// replica any more.
    UnregisterBroker {
        node: i32,
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
    /// A group's settings, all of them (Kafka's ConfigRecord of a GROUP
    /// resource); empty: none left.
    SetGroupConfig {
        group: String,
        config: BTreeMap<String, String>,
        /// The settings the change was made from: refused when they are
        /// not the group's any more (two alterations at once, or through
        /// two nodes), so none is lost.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected: Option<BTreeMap<String, String>>,
    },
    /// The configuration's users, taken once, on the first start of a data
    /// directory (RabbitMQ's default user); later ones change nothing, so
    /// a user deleted since stays deleted.
    BootstrapUsers {
        users: BTreeMap<String, UserRecord>,
        /// The virtual hosts the users get every permission on, in the
        /// same change (so no user added meanwhile gets them); empty in
        /// logs from before permissions, which BootstrapPermissions then
        /// completes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vhosts: Option<Vec<String>>,
    },
    /// A user, whole: added, or replaced.
    PutUser {
        name: String,
        user: UserRecord,
        /// Refused when the user exists.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        create_only: bool,
    },
    DeleteUser {
        name: String,
    },
    /// One SCRAM credential of a user (Kafka's UserScramCredentialRecord):
    /// added or replaced, creating the user; or removed (`None`), and a
    /// user left with no credential goes, as in Kafka.
    SetScramCredential {
        name: String,
        mechanism: ScramMechanism,
        credential: Option<ScramCredential>,
    },
    /// A user's AMQP permissions on a virtual host (RabbitMQ's
    /// set_permissions), or none (clear_permissions). Refused for an
    /// unknown user.
    SetPermission {
        user: String,
        vhost: String,
        permission: Option<VhostPermission>,
    },
    /// A user's topic permission on one exchange of a virtual host
    /// (set_topic_permissions), or none. Refused for an unknown user.
    SetTopicPermission {
        user: String,
        vhost: String,
        exchange: String,
        permission: Option<TopicPermission>,
    },
    /// Full permissions on `vhosts` for every user there is, taken once:
    /// the configuration's users, and those of a data directory from
    /// before permissions existed (who could use every virtual host).
    BootstrapPermissions {
        vhosts: Vec<String>,
    },
    /// Kafka ACLs added (Kafka's AccessControlEntryRecord); one already
    /// there stays once.
    CreateAcls {
        acls: Vec<AclBinding>,
    },
    /// Kafka ACLs removed: every one a filter matches, matched as the
    /// command is applied, so no node keeps one the deleter had not seen
    /// yet.
    DeleteAcls {
        filters: Vec<crate::acls::AclFilter>,
    },
    /// A virtual host's or user's limit (`rabbitmqctl set_vhost_limits`,
    /// `set_user_limits`), or none (`clear_…`). Refused for an unknown
    /// user.
    SetLimit {
        scope: LimitScope,
        name: String,
        value: Option<i64>,
    },
    /// Kafka client quotas of one entity changed (AlterClientQuotas):
    /// each key set, or removed (`None`).
    AlterClientQuota {
        entity: QuotaEntity,
        changes: Vec<(String, Option<f64>)>,
    },
    /// The MQTT retained message of a topic set, or cleared (`None`).
    SetRetained {
        vhost: String,
        topic: String,
        message: Option<RetainedMessage>,
    },
}

/// A topic as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicMeta {
    pub(crate) id: String,
    pub(crate) partitions: u32,
    pub(crate) config: BTreeMap<String, String>,
    /// The nodes holding each partition, leader first; empty on a cluster
    /// of one.
    pub(crate) replicas: Vec<Vec<i32>>,
    /// The in-sync replicas of the partitions where they are not all of
    /// `replicas`.
    pub(crate) in_sync: BTreeMap<u32, Vec<i32>>,
    /// (leader, leader epoch) of the partitions whose leader changed;
    /// the others are led by their first replica in epoch 0.
    pub(crate) leaders: BTreeMap<u32, (i32, i32)>,
    /// The partitions moving to other replicas.
    pub(crate) moving: BTreeMap<u32, Reassignment>,
}

/// A partition's move under way: the replicas it gains and loses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

impl TopicMeta {
    /// The leader and leader epoch of `partition`.
    pub(crate) fn leader_of(&self, partition: u32) -> (i32, i32) {
        self.leaders.get(&partition).copied().unwrap_or_else(|| {
            let first = self
                .replicas
                .get(partition as usize)
                .and_then(|r| r.first().copied())
                .unwrap_or(-1);
            (first, 0)
        })
    }

    fn set_in_sync(&mut self, partition: u32, in_sync: Vec<i32>) {
        if self.replicas.get(partition as usize) == Some(&in_sync) {
            self.in_sync.remove(&partition);
        } else {
            self.in_sync.insert(partition, in_sync);
        }
    }

    /// The replicas of `partition` (empty on a cluster of one).
    pub(crate) fn replicas_of(&self, partition: u32) -> Vec<i32> {
        self.replicas
            .get(partition as usize)
            .cloned()
            .unwrap_or_default()
    }

    /// The replicas `partition` had before its move (its replicas when it
    /// is not moving).
    fn original_of(&self, partition: u32) -> Vec<i32> {
        let adding = self.moving.get(&partition).map(|m| m.adding.as_slice());
        self.replicas_of(partition)
            .into_iter()
            .filter(|r| adding.is_none_or(|a| !a.contains(r)))
            .collect()
    }

    /// The replicas `partition` will have once its move is done (its
    /// replicas when it is not moving).
    pub(crate) fn target_of(&self, partition: u32) -> Vec<i32> {
        let removing = self.moving.get(&partition).map(|m| m.removing.as_slice());
        self.replicas_of(partition)
            .into_iter()
            .filter(|r| removing.is_none_or(|a| !a.contains(r)))
            .collect()
    }

    /// Gives `partition` the replicas `replicas`; the in-sync replicas
    /// keep those still replicas, and a leader that is no longer one
    /// hands over to `preferred` if in sync, else the first in-sync
    /// replica, in the next epoch.
    fn move_replicas(&mut self, partition: u32, replicas: Vec<i32>, preferred: Option<i32>) {
        let (leader, epoch) = self.leader_of(partition);
        let in_sync: Vec<i32> = self
            .in_sync_of(partition)
            .into_iter()
            .filter(|r| replicas.contains(r))
            .collect();
        // The leader is kept explicitly: it no longer follows from the
        // first replica.
        let next = if replicas.contains(&leader) {
            (leader, epoch)
        } else {
            let chosen = preferred
                .filter(|p| in_sync.contains(p))
                .or_else(|| in_sync.first().copied())
                .unwrap_or(-1);
            (chosen, epoch + 1)
        };
        self.leaders.insert(partition, next);
        if let Some(slot) = self.replicas.get_mut(partition as usize) {
            *slot = replicas;
        }
        self.set_in_sync(partition, in_sync);
    }

    /// The in-sync replicas of `partition` (its replicas, unless changed).
    pub(crate) fn in_sync_of(&self, partition: u32) -> Vec<i32> {
        self.in_sync.get(&partition).cloned().unwrap_or_else(|| {
            self.replicas
                .get(partition as usize)
                .cloned()
                .unwrap_or_default()
        })
    }
}

/// Where Kafka clients reach a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub node: i32,
    pub host: String,
    pub port: u16,
    /// Every Kafka listener's advertised `host:port`, by listener name
    /// (empty: registered before listeners had names).
    pub listeners: BTreeMap<String, String>,
}

/// The metadata a sequence of commands leaves.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MetadataState {
    /// Topics by name.
    pub(crate) topics: BTreeMap<String, TopicMeta>,
    /// The end of the last producer-id block: ids from here are unused.
    pub(crate) producer_ids_end: i64,
    /// Registered nodes, by id.
    pub(crate) brokers: BTreeMap<i32, BrokerAddress>,
    /// Registered nodes the controller fenced.
    pub(crate) fenced: std::collections::BTreeSet<i32>,
    /// Registered nodes being decommissioned.
    pub(crate) leaving: std::collections::BTreeSet<i32>,
    /// Durable AMQP exchanges, queues and bindings.
    pub(crate) definitions: Definitions,
    /// Group settings, by group id (none empty).
    pub(crate) group_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// Users, by name.
    pub(crate) users: BTreeMap<String, UserRecord>,
    /// Whether the configuration's users were taken.
    pub(crate) users_bootstrapped: bool,
    /// Kafka ACLs.
    pub(crate) acls: std::collections::BTreeSet<AclBinding>,
    /// AMQP permissions, by user then virtual host.
    pub(crate) permissions: PermissionMap,
    /// AMQP topic permissions, by user, virtual host and exchange.
    pub(crate) topic_permissions: TopicPermissionMap,
    /// Whether the users there were got their permissions.
    pub(crate) permissions_bootstrapped: bool,
    /// Virtual hosts' limits.
    pub(crate) vhost_limits: LimitMap,
    /// Users' limits.
    pub(crate) user_limits: LimitMap,
    /// Kafka client quotas.
    pub(crate) client_quotas: QuotaMap,
    /// MQTT retained messages.
    pub(crate) retained: RetainedMap,
}

impl MetadataState {
    /// The commands that rebuild this state from nothing: a snapshot.
    fn commands(&self) -> Vec<MetadataCommand> {
        let mut commands: Vec<MetadataCommand> = self
            .brokers
            .values()
            .map(|b| MetadataCommand::RegisterBroker {
                node: b.node,
                host: b.host.clone(),
                port: b.port,
                listeners: b.listeners.clone(),
            })
            .collect();
        commands.extend(self.fenced.iter().map(|node| MetadataCommand::FenceBroker {
            node: *node,
            fenced: true,
        }));
        if self.producer_ids_end > 0 {
            commands.push(MetadataCommand::AllocateProducerIds {
                end: self.producer_ids_end,
            });
        }
        for (name, topic) in &self.topics {
            commands.push(MetadataCommand::CreateTopic {
                name: name.clone(),
                id: topic.id.clone(),
                partitions: topic.partitions,
                config: topic.config.clone(),
                replicas: topic.replicas.clone(),
            });
            // Every partition whose leader, in-sync replicas or move is
            // not what it was created with, exactly as it is.
            let changed: std::collections::BTreeSet<u32> = topic
                .leaders
                .keys()
                .chain(topic.in_sync.keys())
                .chain(topic.moving.keys())
                .copied()
                .collect();
            commands.extend(changed.into_iter().map(|partition| {
                let (leader, leader_epoch) = topic.leader_of(partition);
                MetadataCommand::RestorePartition {
                    name: name.clone(),
                    partition,
                    replicas: topic.replicas_of(partition),
                    leader,
                    leader_epoch,
                    in_sync: topic.in_sync_of(partition),
                    moving: topic.moving.get(&partition).cloned(),
                }
            }));
        }
        commands.extend(
            self.leaving
                .iter()
                .map(|node| MetadataCommand::DecommissionBroker { node: *node }),
        );
        // Keys order exchanges, then queues, then bindings.
        commands.extend(self.definitions.values().map(|d| match d {
            Definition::Exchange(e) => MetadataCommand::DeclareExchange(e.clone()),
            Definition::Queue(q) => MetadataCommand::DeclareQueue(q.clone()),
            Definition::Binding(b) => MetadataCommand::Bind(b.clone()),
        }));
        commands.extend(self.group_configs.iter().map(|(group, config)| {
            MetadataCommand::SetGroupConfig {
                group: group.clone(),
                config: config.clone(),
                expected: None,
            }
        }));
        if self.users_bootstrapped {
            commands.push(MetadataCommand::BootstrapUsers {
                users: BTreeMap::new(),
                vhosts: None,
            });
        }
        commands.extend(
            self.users
                .iter()
                .map(|(name, user)| MetadataCommand::PutUser {
                    name: name.clone(),
                    user: user.clone(),
                    create_only: false,
                }),
        );
        if self.permissions_bootstrapped {
            commands.push(MetadataCommand::BootstrapPermissions { vhosts: Vec::new() });
        }
        // Only of users there are (a snapshot replays through the checks).
        for (user, vhosts) in self
            .permissions
            .iter()
            .filter(|(u, _)| self.users.contains_key(*u))
        {
            commands.extend(vhosts.iter().map(|(vhost, permission)| {
                MetadataCommand::SetPermission {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    permission: Some(permission.clone()),
                }
            }));
        }
        for (user, vhosts) in self
            .topic_permissions
            .iter()
            .filter(|(u, _)| self.users.contains_key(*u))
        {
            for (vhost, exchanges) in vhosts {
                commands.extend(exchanges.iter().map(|(exchange, permission)| {
                    MetadataCommand::SetTopicPermission {
                        user: user.clone(),
                        vhost: vhost.clone(),
                        exchange: exchange.clone(),
                        permission: Some(permission.clone()),
                    }
                }));
            }
        }
        if !self.acls.is_empty() {
            commands.push(MetadataCommand::CreateAcls {
                acls: self.acls.iter().cloned().collect(),
            });
        }
        let scoped = |map: &LimitMap, scope: fn(String) -> LimitScope| {
            map.iter()
                .flat_map(|(key, limits)| {
                    limits
                        .iter()
                        .map(move |(name, value)| MetadataCommand::SetLimit {
                            scope: scope(key.clone()),
                            name: name.clone(),
                            value: Some(*value),
                        })
                })
                .collect::<Vec<_>>()
        };
        commands.extend(scoped(&self.vhost_limits, LimitScope::Vhost));
        commands.extend(self.retained.iter().flat_map(|(vhost, topics)| {
            topics
                .iter()
                .map(move |(topic, message)| MetadataCommand::SetRetained {
                    vhost: vhost.clone(),
                    topic: topic.clone(),
                    message: Some(message.clone()),
                })
        }));
        commands.extend(self.client_quotas.iter().map(|(entity, quotas)| {
            MetadataCommand::AlterClientQuota {
                entity: entity.clone(),
                changes: quotas
                    .iter()
                    .map(|(key, value)| (key.clone(), Some(*value)))
                    .collect(),
            }
        }));
        commands.extend(
            scoped(&self.user_limits, LimitScope::User)
                .into_iter()
                .filter(|command| {
                    matches!(command, MetadataCommand::SetLimit { scope: LimitScope::User(user), .. } if self.users.contains_key(user))
                }),
        );
        commands
    }
}

/// Whether `state` takes `command`.
///
/// # Errors
/// [`CoreError::TopicExists`], [`CoreError::UnknownTopic`],
/// [`CoreError::InvalidPartitions`] or [`CoreError::Internal`] (a
/// producer-id block that does not move forward).
fn check(state: &MetadataState, command: &MetadataCommand) -> Result<(), CoreError> {
    let topic = |name: &str| {
        state
            .topics
            .get(name)
            .ok_or_else(|| CoreError::UnknownTopic {
                topic: name.to_owned(),
            })
    };
    match command {
        MetadataCommand::CreateTopic {
            name,
            partitions,
            replicas,
            ..
        } => {
            if state.topics.contains_key(name) {
                return Err(CoreError::TopicExists {
                    topic: name.clone(),
                });
            }
            check_replicas(name, *partitions, 0, replicas)
        }
        MetadataCommand::GrowTopic {
            name,
            partitions,
            replicas,
        } => {
            let current = topic(name)?;
            if *partitions < current.partitions {
                return Err(CoreError::InvalidPartitions {
                    topic: name.clone(),
                    reason: format!(
                        "partitions never shrink: {} to {partitions}",
                        current.partitions
                    ),
                });
            }
            if current.replicas.is_empty() != replicas.is_empty()
                && *partitions > current.partitions
            {
                return Err(CoreError::InvalidPartitions {
                    topic: name.clone(),
                    reason: "the added partitions must be placed as the others are".to_owned(),
                });
            }
            check_replicas(name, *partitions, current.partitions, replicas)
        }
        MetadataCommand::SetTopicConfig { name, .. } | MetadataCommand::DeleteTopic { name } => {
            topic(name).map(|_| ())
        }
        MetadataCommand::SetInSync {
            name,
            partition,
            in_sync,
            leader_epoch,
            from,
        } => {
            let meta = topic(name)?;
            let (leader, epoch) = meta.leader_of(*partition);
            if leader_epoch.is_some_and(|e| e != epoch) {
                return Err(CoreError::InvalidPartitions {
                    topic: name.clone(),
                    reason: format!(
                        "partition {partition}: in-sync replicas proposed in leader epoch {leader_epoch:?}, now {epoch}"
                    ),
                });
            }
            if let Some(from) = from {
                let mut now = meta.in_sync_of(*partition);
                now.sort_unstable();
                let mut decided_on = from.clone();
                decided_on.sort_unstable();
                if now != decided_on {
                    return Err(CoreError::InvalidPartitions {
                        topic: name.clone(),
                        reason: format!(
                            "partition {partition}: in-sync replicas proposed from {from:?}, now {now:?}"
                        ),
                    });
                }
            }
            check_partition_change(name, meta, *partition, leader, in_sync, None)
        }
        MetadataCommand::FenceBroker { node, .. } if !state.brokers.contains_key(node) => {
            Err(CoreError::Internal {
                reason: format!("node {node} is not registered"),
            })
        }
        MetadataCommand::ChangeLeader {
            name,
            partition,
            leader,
            leader_epoch,
            in_sync,
            unclean,
        } => {
            let meta = topic(name)?;
            let current = meta.in_sync_of(*partition);
            if !unclean && !in_sync.iter().all(|r| current.contains(r)) {
                return Err(CoreError::InvalidPartitions {
                    topic: name.clone(),
                    reason: format!(
                        "partition {partition}: a clean election takes in-sync replicas {in_sync:?} from the current {current:?} only"
                    ),
                });
            }
            check_partition_change(
                name,
                meta,
                *partition,
                *leader,
                in_sync,
                Some(*leader_epoch),
            )
        }
        MetadataCommand::ReassignPartition {
            name,
            partition,
            target,
        } => check_reassignment(state, name, topic(name)?, *partition, target.as_deref()),
        MetadataCommand::FinishReassignment { name, partition } => {
            let meta = topic(name)?;
            let in_sync = meta.in_sync_of(*partition);
            if !meta.moving.contains_key(partition) {
                return Err(CoreError::NoReassignmentInProgress {
                    topic: name.clone(),
                    partition: *partition,
                });
            }
            let target = meta.target_of(*partition);
            if target.iter().all(|r| in_sync.contains(r)) {
                Ok(())
            } else {
                Err(CoreError::InvalidReplicaAssignment {
                    topic: name.clone(),
                    reason: format!(
                        "partition {partition}: target replicas {target:?} are not all in sync ({in_sync:?})"
                    ),
                })
            }
        }
        MetadataCommand::RestorePartition {
            name,
            partition,
            replicas,
            ..
        } => {
            let meta = topic(name)?;
            if *partition < meta.partitions && !replicas.is_empty() {
                Ok(())
            } else {
                Err(CoreError::InvalidPartitions {
                    topic: name.clone(),
                    reason: format!("partition {partition} cannot be restored"),
                })
            }
        }
        MetadataCommand::DecommissionBroker { node } if !state.brokers.contains_key(node) => {
            Err(CoreError::Internal {
                reason: format!("node {node} is not registered"),
            })
        }
        MetadataCommand::UnregisterBroker { node } => {
            let holding: Vec<&String> = state
                .topics
                .iter()
                .filter(|(_, t)| t.replicas.iter().any(|r| r.contains(node)))
                .map(|(name, _)| name)
                .collect();
            if holding.is_empty() {
                Ok(())
            } else {
                Err(CoreError::Internal {
                    reason: format!("node {node} still holds replicas of {holding:?}"),
                })
            }
        }
        MetadataCommand::DeclareQueue(queue)
            if state
                .definitions
                .get(&definitions::DefinitionKey::Queue {
                    vhost: queue.vhost.clone(),
                    name: queue.name.clone(),
                })
                .is_some_and(|held| {
                    matches!(held, Definition::Queue(held) if held.store_id != queue.store_id)
                }) =>
        {
            // Declared twice at once (two nodes, or two connections): the
            // first commit wins, the other declarer takes the winner's queue.
            Err(CoreError::QueueExists {
                vhost: queue.vhost.clone(),
                name: queue.name.clone(),
            })
        }
        MetadataCommand::SetGroupConfig {
            group,
            expected: Some(expected),
            ..
        } if state.group_configs.get(group).unwrap_or(&BTreeMap::new()) != expected => {
            Err(CoreError::GroupConfigChanged {
                group: group.clone(),
            })
        }
        MetadataCommand::PutUser {
            name,
            create_only: true,
            ..
        } if state.users.contains_key(name) => Err(CoreError::UserExists { name: name.clone() }),
        MetadataCommand::DeleteUser { name } if !state.users.contains_key(name) => {
            Err(CoreError::UnknownUser { name: name.clone() })
        }
        MetadataCommand::SetPermission { user, .. }
        | MetadataCommand::SetTopicPermission { user, .. }
        | MetadataCommand::SetLimit {
            scope: LimitScope::User(user),
            value: Some(_),
            ..
        } if !state.users.contains_key(user) =>
        {
            Err(CoreError::UnknownUser { name: user.clone() })
        }
        MetadataCommand::SetScramCredential {
            name,
            mechanism,
            credential: None,
        } if !state
            .users
            .get(name)
            .is_some_and(|u| u.scram.contains_key(mechanism)) =>
        {
            Err(CoreError::UnknownUser { name: name.clone() })
        }
        MetadataCommand::AllocateProducerIds { end } if *end <= state.producer_ids_end => {
            Err(CoreError::Internal {
                reason: format!(
                    "producer-id block end {end} is not past {}",
                    state.producer_ids_end
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Whether `partition` of topic `name` may move to `target`, or its move
/// be cancelled (`None`).
fn check_reassignment(
    state: &MetadataState,
    name: &str,
    topic: &TopicMeta,
    partition: u32,
    target: Option<&[i32]>,
) -> Result<(), CoreError> {
    let invalid = |reason: String| CoreError::InvalidReplicaAssignment {
        topic: name.to_owned(),
        reason: format!("partition {partition}: {reason}"),
    };
    if partition >= topic.partitions {
        return Err(CoreError::UnknownPartition {
            topic: name.to_owned(),
            partition: sluice_types::PartitionId::from(partition as i32),
        });
    }
    if topic.replicas.is_empty() {
        return Err(invalid(
            "a cluster of one has no replicas to move".to_owned(),
        ));
    }
    let Some(target) = target else {
        if !topic.moving.contains_key(&partition) {
            return Err(CoreError::NoReassignmentInProgress {
                topic: name.to_owned(),
                partition,
            });
        }
        let original = topic.original_of(partition);
        let in_sync = topic.in_sync_of(partition);
        return if original.iter().any(|r| in_sync.contains(r)) {
            Ok(())
        } else {
            Err(invalid(format!(
                "no replica of {original:?} is in sync to cancel the move"
            )))
        };
    };
    if target.is_empty() {
        return Err(invalid("no replicas given".to_owned()));
    }
    let mut unique = target.to_vec();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != target.len() {
        return Err(invalid(format!("{target:?} names a node twice")));
    }
    if let Some(node) = target.iter().find(|n| !state.brokers.contains_key(n)) {
        return Err(invalid(format!("node {node} is not registered")));
    }
    if let Some(node) = target
        .iter()
        .find(|n| state.leaving.contains(n) && !topic.replicas_of(partition).contains(n))
    {
        return Err(invalid(format!("node {node} is being decommissioned")));
    }
    Ok(())
}

/// Whether a partition may have `leader` and `in_sync`: the leader is in
/// sync, every in-sync replica is a replica, and a new leader epoch
/// (`Some`) is past the current one.
fn check_partition_change(
    name: &str,
    topic: &TopicMeta,
    partition: u32,
    leader: i32,
    in_sync: &[i32],
    leader_epoch: Option<i32>,
) -> Result<(), CoreError> {
    let replicas = topic
        .replicas
        .get(partition as usize)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (_, epoch) = topic.leader_of(partition);
    let valid = in_sync.contains(&leader)
        && in_sync.iter().all(|r| replicas.contains(r))
        && leader_epoch.is_none_or(|e| e > epoch);
    if valid {
        return Ok(());
    }
    Err(CoreError::InvalidPartitions {
        topic: name.to_owned(),
        reason: format!(
            "partition {partition}: leader {leader} (epoch {leader_epoch:?}, now {epoch}) and in-sync replicas {in_sync:?} do not fit replicas {replicas:?}"
        ),
    })
}

/// Applies one command to `state`. Deterministic: the same commands in the
/// same order leave the same state on every node.
///
/// # Errors
/// As [`check`], for a command the state refuses (then nothing changed).
pub(crate) fn apply(state: &mut MetadataState, command: MetadataCommand) -> Result<(), CoreError> {
    check(state, &command)?;
    if definitions::apply(&mut state.definitions, &command) {
        return Ok(());
    }
    let topics = &mut state.topics;
    match command {
        MetadataCommand::CreateTopic {
            name,
            id,
            partitions,
            config,
            replicas,
        } => {
            topics.insert(
                name,
                TopicMeta {
                    id,
                    partitions,
                    config,
                    replicas,
                    in_sync: BTreeMap::new(),
                    leaders: BTreeMap::new(),
                    moving: BTreeMap::new(),
                },
            );
        }
        MetadataCommand::GrowTopic {
            name,
            partitions,
            replicas,
        } => {
            if let Some(topic) = topics.get_mut(&name) {
                topic.partitions = partitions;
                topic.replicas.extend(replicas);
            }
        }
        MetadataCommand::SetTopicConfig { name, config } => {
            if let Some(topic) = topics.get_mut(&name) {
                topic.config = config;
            }
        }
        MetadataCommand::DeleteTopic { name } => {
            topics.remove(&name);
        }
        MetadataCommand::SetInSync {
            name,
            partition,
            in_sync,
            ..
        } => {
            if let Some(topic) = topics.get_mut(&name) {
                topic.set_in_sync(partition, in_sync);
            }
        }
        MetadataCommand::ChangeLeader {
            name,
            partition,
            leader,
            leader_epoch,
            in_sync,
            ..
        } => {
            if let Some(topic) = topics.get_mut(&name) {
                topic.leaders.insert(partition, (leader, leader_epoch));
                topic.set_in_sync(partition, in_sync);
            }
        }
        MetadataCommand::ReassignPartition {
            name,
            partition,
            target,
        } => {
            if let Some(topic) = topics.get_mut(&name) {
                reassign(topic, partition, target);
            }
        }
        MetadataCommand::FinishReassignment { name, partition } => {
            if let Some(topic) = topics.get_mut(&name) {
                let target = topic.target_of(partition);
                topic.moving.remove(&partition);
                let preferred = target.first().copied();
                topic.move_replicas(partition, target, preferred);
            }
        }
        MetadataCommand::RestorePartition {
            name,
            partition,
            replicas,
            leader,
            leader_epoch,
            in_sync,
            moving,
        } => {
            if let Some(topic) = topics.get_mut(&name) {
                if let Some(slot) = topic.replicas.get_mut(partition as usize) {
                    *slot = replicas;
                }
                topic.leaders.insert(partition, (leader, leader_epoch));
                topic.set_in_sync(partition, in_sync);
                match moving {
                    Some(moving) => topic.moving.insert(partition, moving),
                    None => topic.moving.remove(&partition),
                };
            }
        }
        MetadataCommand::DecommissionBroker { node } => {
            state.leaving.insert(node);
        }
        MetadataCommand::UnregisterBroker { node } => {
            state.brokers.remove(&node);
            state.fenced.remove(&node);
            state.leaving.remove(&node);
        }
        MetadataCommand::AllocateProducerIds { end } => state.producer_ids_end = end,
        MetadataCommand::RegisterBroker {
            node,
            host,
            port,
            listeners,
        } => {
            state.brokers.insert(
                node,
                BrokerAddress {
                    node,
                    host,
                    port,
                    listeners,
                },
            );
        }
        MetadataCommand::FenceBroker { node, fenced } => {
            if fenced {
                state.fenced.insert(node);
            } else {
                state.fenced.remove(&node);
            }
        }
        MetadataCommand::DeclareExchange(_)
        | MetadataCommand::DeleteExchange { .. }
        | MetadataCommand::DeclareQueue(_)
        | MetadataCommand::DeleteQueue { .. }
        | MetadataCommand::Bind(_)
        | MetadataCommand::Unbind(_) => {}
        MetadataCommand::SetGroupConfig { group, config, .. } => {
            if config.is_empty() {
                state.group_configs.remove(&group);
            } else {
                state.group_configs.insert(group, config);
            }
        }
        MetadataCommand::BootstrapUsers { users, vhosts } => {
            if !state.users_bootstrapped {
                state.users_bootstrapped = true;
                for (name, user) in users {
                    state.users.entry(name).or_insert(user);
                }
                if let Some(vhosts) = vhosts {
                    apply(state, MetadataCommand::BootstrapPermissions { vhosts })?;
                }
            }
        }
        MetadataCommand::PutUser { name, user, .. } => {
            state.users.insert(name, user);
        }
        MetadataCommand::DeleteUser { name } => {
            state.users.remove(&name);
            state.permissions.remove(&name);
            state.topic_permissions.remove(&name);
            state.user_limits.remove(&name);
        }
        MetadataCommand::AlterClientQuota { entity, changes } => {
            crate::quotas::alter(&mut state.client_quotas, entity, changes);
        }
        MetadataCommand::SetRetained {
            vhost,
            topic,
            message,
        } => crate::retained::set(&mut state.retained, vhost, topic, message),
        MetadataCommand::SetLimit { scope, name, value } => match scope {
            LimitScope::Vhost(vhost) => {
                crate::limits::set(&mut state.vhost_limits, vhost, name, value);
            }
            LimitScope::User(user) => crate::limits::set(&mut state.user_limits, user, name, value),
        },
        MetadataCommand::SetPermission {
            user,
            vhost,
            permission,
        } => match permission {
            Some(permission) => {
                state
                    .permissions
                    .entry(user)
                    .or_default()
                    .insert(vhost, permission);
            }
            None => {
                if let Some(vhosts) = state.permissions.get_mut(&user) {
                    vhosts.remove(&vhost);
                    if vhosts.is_empty() {
                        state.permissions.remove(&user);
                    }
                }
            }
        },
        MetadataCommand::SetTopicPermission {
            user,
            vhost,
            exchange,
            permission,
        } => match permission {
            Some(permission) => {
                state
                    .topic_permissions
                    .entry(user)
                    .or_default()
                    .entry(vhost)
                    .or_default()
                    .insert(exchange, permission);
            }
            None => {
                if let Some(vhosts) = state.topic_permissions.get_mut(&user) {
                    if let Some(exchanges) = vhosts.get_mut(&vhost) {
                        exchanges.remove(&exchange);
                        if exchanges.is_empty() {
                            vhosts.remove(&vhost);
                        }
                    }
                    if vhosts.is_empty() {
                        state.topic_permissions.remove(&user);
                    }
                }
            }
        },
        MetadataCommand::BootstrapPermissions { vhosts } => {
            if !state.permissions_bootstrapped {
                state.permissions_bootstrapped = true;
                for user in state.users.keys().filter(|_| !vhosts.is_empty()) {
                    let granted = state.permissions.entry(user.clone()).or_default();
                    for vhost in &vhosts {
                        granted
                            .entry(vhost.clone())
                            .or_insert_with(VhostPermission::full);
                    }
                }
            }
        }
        MetadataCommand::CreateAcls { acls } => state.acls.extend(acls),
        MetadataCommand::DeleteAcls { filters } => {
            state
                .acls
                .retain(|acl| !filters.iter().any(|f| f.matches(acl)));
        }
        MetadataCommand::SetScramCredential {
            name,
            mechanism,
            credential,
        } => match credential {
            Some(credential) => {
                state
                    .users
                    .entry(name)
                    .or_default()
                    .scram
                    .insert(mechanism, credential);
            }
            None => {
                if let Some(user) = state.users.get_mut(&name) {
                    user.scram.remove(&mechanism);
                    if user.scram.is_empty() {
                        // The user goes, and its permissions with it.
                        state.users.remove(&name);
                        state.permissions.remove(&name);
                        state.topic_permissions.remove(&name);
                        state.user_limits.remove(&name);
                    }
                }
            }
        },
    }
    Ok(())
}

/// Starts (`Some`) or cancels (`None`) the move of `partition` of `topic`
/// (checked by [`check_reassignment`]).
fn reassign(topic: &mut TopicMeta, partition: u32, target: Option<Vec<i32>>) {
    let original = topic.original_of(partition);
    match target {
        Some(target) => {
            let adding: Vec<i32> = target
                .iter()
                .copied()
                .filter(|r| !original.contains(r))
                .collect();
            let removing: Vec<i32> = original
                .iter()
                .copied()
                .filter(|r| !target.contains(r))
                .collect();
            let mut replicas = target.clone();
            replicas.extend(removing.iter().copied());
            if adding.is_empty() && removing.is_empty() {
                topic.moving.remove(&partition);
            } else {
                topic
                    .moving
                    .insert(partition, Reassignment { adding, removing });
            }
            topic.move_replicas(partition, replicas, target.first().copied());
        }
        None => {
            topic.moving.remove(&partition);
            let preferred = original.first().copied();
            topic.move_replicas(partition, original, preferred);
        }
    }
}

/// What the controller changes when the nodes in `live` are the ones
/// alive (KRaft's fencing and leader election): registered nodes not
/// alive are fenced and live fenced ones unfenced; a partition whose leader
/// is gone gets the first live in-sync replica as leader in the next epoch
/// (none: it stays offline; unclean election is off); dead followers leave
/// the in-sync replicas; a partition whose first replica (its preferred
/// leader) is alive and in sync again goes back to it.
pub(crate) fn leadership_changes(
    state: &MetadataState,
    live: &std::collections::BTreeSet<i32>,
) -> Vec<MetadataCommand> {
    // Fencing first: clients stop being sent to a dead node, and are sent
    // to one that is back.
    let mut changes: Vec<MetadataCommand> = state
        .brokers
        .keys()
        .filter_map(|node| {
            let fenced = state.fenced.contains(node);
            (fenced == live.contains(node)).then_some(MetadataCommand::FenceBroker {
                node: *node,
                fenced: !fenced,
            })
        })
        .collect();
    for (name, topic) in &state.topics {
        for (index, replicas) in topic.replicas.iter().enumerate() {
            if replicas.len() < 2 {
                continue;
            }
            let partition = index as u32;
            let (leader, epoch) = topic.leader_of(partition);
            let in_sync = topic.in_sync_of(partition);
            let alive: Vec<i32> = in_sync
                .iter()
                .copied()
                .filter(|r| live.contains(r))
                .collect();
            if !live.contains(&leader) {
                // With no in-sync replica alive, a topic that allows it
                // (`unclean.leader.election.enable`) takes any live
                // replica and loses what only the others had.
                let unclean = topic
                    .config
                    .get("unclean.leader.election.enable")
                    .is_some_and(|v| v == "true");
                let next = match alive.first() {
                    Some(next) => Some((*next, alive, false)),
                    None if unclean => replicas
                        .iter()
                        .find(|r| live.contains(r))
                        .map(|r| (*r, vec![*r], true)),
                    None => None,
                };
                if let Some((next, in_sync, unclean)) = next {
                    changes.push(MetadataCommand::ChangeLeader {
                        name: name.clone(),
                        partition,
                        leader: next,
                        leader_epoch: epoch + 1,
                        in_sync,
                        unclean,
                    });
                }
            } else if alive.len() < in_sync.len() {
                changes.push(MetadataCommand::SetInSync {
                    name: name.clone(),
                    partition,
                    in_sync: alive,
                    leader_epoch: Some(epoch),
                    from: Some(in_sync.clone()),
                });
            } else if replicas[0] != leader
                && in_sync.contains(&replicas[0])
                // A move hands over when it finishes.
                && !topic.moving.contains_key(&partition)
            {
                changes.push(MetadataCommand::ChangeLeader {
                    name: name.clone(),
                    partition,
                    leader: replicas[0],
                    leader_epoch: epoch + 1,
                    in_sync,
                    unclean: false,
                });
            }
        }
    }
    changes.extend(moves(state, live));
    changes
}

/// The controller's part in moving replicas: a move whose target replicas
/// are all in sync is finished; a replica on a node being decommissioned
/// moves to the live node holding the fewest replicas (none free: it
/// stays, and the node with it); a decommissioned node that holds nothing
/// any more is unregistered.
fn moves(state: &MetadataState, live: &std::collections::BTreeSet<i32>) -> Vec<MetadataCommand> {
    let mut changes = Vec::new();
    // Replicas per node, the moves under way counted at their target.
    let mut load: BTreeMap<i32, usize> = state.brokers.keys().map(|n| (*n, 0)).collect();
    for topic in state.topics.values() {
        for partition in 0..topic.replicas.len() as u32 {
            for node in topic.target_of(partition) {
                *load.entry(node).or_default() += 1;
            }
        }
    }
    for (name, topic) in &state.topics {
        for partition in 0..topic.replicas.len() as u32 {
            if topic.moving.contains_key(&partition) {
                let in_sync = topic.in_sync_of(partition);
                if topic
                    .target_of(partition)
                    .iter()
                    .all(|r| in_sync.contains(r))
                {
                    changes.push(MetadataCommand::FinishReassignment {
                        name: name.clone(),
                        partition,
                    });
                }
                continue;
            }
            let replicas = topic.replicas_of(partition);
            if !replicas.iter().any(|r| state.leaving.contains(r)) {
                continue;
            }
            let mut target = Vec::with_capacity(replicas.len());
            for node in &replicas {
                if !state.leaving.contains(node) {
                    target.push(*node);
                    continue;
                }
                let free = load
                    .iter()
                    .filter(|(n, _)| {
                        live.contains(n)
                            && !state.fenced.contains(n)
                            && !state.leaving.contains(n)
                            && !replicas.contains(n)
                            && !target.contains(n)
                    })
                    .min_by_key(|(n, count)| (**count, **n))
                    .map(|(n, _)| *n);
                match free {
                    Some(free) => {
                        *load.entry(free).or_default() += 1;
                        target.push(free);
                    }
                    None => target.push(*node),
                }
            }
            if target != replicas {
                changes.push(MetadataCommand::ReassignPartition {
                    name: name.clone(),
                    partition,
                    target: Some(target),
                });
            }
        }
    }
    for node in &state.leaving {
        let holds = state
            .topics
            .values()
            .any(|t| t.replicas.iter().any(|r| r.contains(node)));
        if !holds {
            changes.push(MetadataCommand::UnregisterBroker { node: *node });
        }
    }
    changes
}

/// What an election an operator asks for (Kafka's ElectLeaders) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    /// This node now leads the partition.
    Elected(i32),
    /// The preferred replica already leads (preferred), or the leader is
    /// alive (unclean).
    NotNeeded,
    /// No replica may take over: the preferred one is fenced or not in
    /// sync (preferred), or every replica is fenced (unclean).
    NotAvailable,
}

/// The election of partition `partition` of `name` as the state stands:
/// preferred moves leadership to the first replica when it is in sync and
/// not fenced; unclean gives a partition whose leader is fenced the first
/// unfenced in-sync replica, else any unfenced replica (losing what only
/// the others had). Returns the command that does it, if any.
///
/// # Errors
/// [`CoreError::UnknownTopic`] or [`CoreError::UnknownPartition`].
pub(crate) fn election(
    state: &MetadataState,
    name: &str,
    partition: u32,
    unclean: bool,
) -> Result<(Election, Option<MetadataCommand>), CoreError> {
    let topic = state
        .topics
        .get(name)
        .ok_or_else(|| CoreError::UnknownTopic {
            topic: name.to_owned(),
        })?;
    if partition >= topic.partitions {
        return Err(CoreError::UnknownPartition {
            topic: name.to_owned(),
            partition: sluice_types::PartitionId::from(partition as i32),
        });
    }
    // A cluster of one (no placements): this node leads every partition.
    let Some(replicas) = topic.replicas.get(partition as usize) else {
        return Ok((Election::NotNeeded, None));
    };
    let (leader, epoch) = topic.leader_of(partition);
    let in_sync = topic.in_sync_of(partition);
    let alive = |node: &i32| !state.fenced.contains(node);
    let change = |next: i32, in_sync: Vec<i32>, unclean: bool| MetadataCommand::ChangeLeader {
        name: name.to_owned(),
        partition,
        leader: next,
        leader_epoch: epoch + 1,
        in_sync,
        unclean,
    };
    if unclean {
        if alive(&leader) {
            return Ok((Election::NotNeeded, None));
        }
        let live_in_sync: Vec<i32> = in_sync.iter().copied().filter(alive).collect();
        return Ok(
            match (live_in_sync.first(), replicas.iter().find(|r| alive(r))) {
                (Some(next), _) => (
                    Election::Elected(*next),
                    Some(change(*next, live_in_sync.clone(), false)),
                ),
                (None, Some(next)) => (
                    Election::Elected(*next),
                    Some(change(*next, vec![*next], true)),
                ),
                (None, None) => (Election::NotAvailable, None),
            },
        );
    }
    let Some(preferred) = replicas.first().copied() else {
        return Ok((Election::NotAvailable, None));
    };
    // A fenced leader is no leader (Kafka shows -1): electing it again is
    // not possible rather than not needed.
    if !alive(&preferred) {
        Ok((Election::NotAvailable, None))
    } else if preferred == leader {
        Ok((Election::NotNeeded, None))
    } else if in_sync.contains(&preferred) {
        Ok((
            Election::Elected(preferred),
            Some(change(preferred, in_sync, false)),
        ))
    } else {
        Ok((Election::NotAvailable, None))
    }
}

/// Placements name every added partition (`from..partitions`) or none.
fn check_replicas(
    topic: &str,
    partitions: u32,
    from: u32,
    replicas: &[Vec<i32>],
) -> Result<(), CoreError> {
    let added = partitions.saturating_sub(from) as usize;
    if replicas.is_empty() || (replicas.len() == added && replicas.iter().all(|r| !r.is_empty())) {
        Ok(())
    } else {
        Err(CoreError::InvalidPartitions {
            topic: topic.to_owned(),
            reason: format!("{} placements for {added} new partitions", replicas.len()),
        })
    }
}

/// Where a node of a cluster commits metadata commands: the Raft quorum
/// (`sluice-cluster` implements it). A cluster of one has none and commits
/// to its own log.
pub trait MetadataQuorum: Send + Sync + std::fmt::Debug {
    /// Proposes a command (JSON text of a [`MetadataCommand`]) and returns
    /// once it is committed and applied on this node, with the answer of
    /// [`MetadataMachine::apply`] for it. Blocking: call it off the async
    /// runtime's workers (or inside `tokio::task::block_in_place`).
    ///
    /// # Errors
    /// [`CoreError::Quorum`] when no controller answers in time.
    fn propose(&self, command: String) -> Result<String, CoreError>;

    /// The controller (the Raft leader) as this node knows it.
    fn controller(&self) -> Option<i32>;

    /// How many times this node saw the controller change.
    fn controller_changes(&self) -> u64 {
        0
    }

    /// The nodes that vote in the quorum (the others only follow it).
    fn voters(&self) -> Vec<i32> {
        Vec::new()
    }
}

/// How long commits take, as this node's writers saw them (on a cluster:
/// through the quorum, until applied here).
#[derive(Debug, Default)]
pub struct CommitTimes {
    pub count: std::sync::atomic::AtomicU64,
    pub micros: std::sync::atomic::AtomicU64,
}

/// Where commands are committed.
#[derive(Debug)]
enum Store {
    /// This node's own log (a cluster of one).
    Local(MetadataLog),
    /// The cluster's quorum, attached once the node runs.
    Quorum(OnceLock<Arc<dyn MetadataQuorum>>),
}

/// The metadata of the broker: where commands are committed, the state
/// they left, and the one applier of committed commands.
#[derive(Debug)]
pub struct Metadata {
    /// Writers hold it from their check to their command's apply, so a
    /// node's own commands are checked and committed one at a time.
    writer: Mutex<()>,
    store: Store,
    state: Mutex<MetadataState>,
    /// The runtime topics, once the broker has opened them; commands
    /// applied before only change the state, and attaching catches up.
    topics: OnceLock<Weak<Topics>>,
    /// This node's id.
    node_id: i32,
    /// Commits this node's writers made, and their total time.
    commit_times: CommitTimes,
    /// Counts applied changes to the durable AMQP definitions (and
    /// snapshots restored), for the nodes that follow them.
    definitions_changed: tokio::sync::watch::Sender<u64>,
    /// The group settings as applied, for readers on the request path.
    group_configs: Arc<GroupConfigs>,
    /// The users as applied, for the login paths.
    users: Arc<Users>,
    /// The Kafka ACLs as applied, for the request path.
    acls: Arc<Acls>,
    /// The AMQP permissions as applied, compiled.
    permissions: Arc<Permissions>,
    /// The virtual host and user limits as applied.
    limits: Arc<Limits>,
    /// The Kafka client quotas as applied.
    client_quotas: Arc<ClientQuotas>,
    /// The MQTT retained messages as applied.
    retained: Arc<Retained>,
}

/// A refused command, as a committed command's answer carries it to its
/// proposer (on any node).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "refused", rename_all = "snake_case")]
enum Refusal {
    TopicExists { topic: String },
    QueueExists { vhost: String, name: String },
    UnknownTopic { topic: String },
    InvalidPartitions { topic: String, reason: String },
    InvalidReplicaAssignment { topic: String, reason: String },
    NoReassignmentInProgress { topic: String, partition: u32 },
    GroupConfigChanged { group: String },
    UserExists { name: String },
    UnknownUser { name: String },
    Other { reason: String },
}

impl Refusal {
    fn of(error: CoreError) -> Refusal {
        match error {
            CoreError::TopicExists { topic } => Refusal::TopicExists { topic },
            CoreError::QueueExists { vhost, name } => Refusal::QueueExists { vhost, name },
            CoreError::UnknownTopic { topic } => Refusal::UnknownTopic { topic },
            CoreError::InvalidPartitions { topic, reason } => {
                Refusal::InvalidPartitions { topic, reason }
            }
            CoreError::InvalidReplicaAssignment { topic, reason } => {
                Refusal::InvalidReplicaAssignment { topic, reason }
            }
            CoreError::NoReassignmentInProgress { topic, partition } => {
                Refusal::NoReassignmentInProgress { topic, partition }
            }
            CoreError::GroupConfigChanged { group } => Refusal::GroupConfigChanged { group },
            CoreError::UserExists { name } => Refusal::UserExists { name },
            CoreError::UnknownUser { name } => Refusal::UnknownUser { name },
            other => Refusal::Other {
                reason: other.to_string(),
            },
        }
    }

    fn into_error(self) -> CoreError {
        match self {
            Refusal::TopicExists { topic } => CoreError::TopicExists { topic },
            Refusal::QueueExists { vhost, name } => CoreError::QueueExists { vhost, name },
            Refusal::UnknownTopic { topic } => CoreError::UnknownTopic { topic },
            Refusal::InvalidPartitions { topic, reason } => {
                CoreError::InvalidPartitions { topic, reason }
            }
            Refusal::InvalidReplicaAssignment { topic, reason } => {
                CoreError::InvalidReplicaAssignment { topic, reason }
            }
            Refusal::NoReassignmentInProgress { topic, partition } => {
                CoreError::NoReassignmentInProgress { topic, partition }
            }
            Refusal::GroupConfigChanged { group } => CoreError::GroupConfigChanged { group },
            Refusal::UserExists { name } => CoreError::UserExists { name },
            Refusal::UnknownUser { name } => CoreError::UnknownUser { name },
            Refusal::Other { reason } => CoreError::Internal { reason },
        }
    }
}

impl Metadata {
    /// Opens a cluster of one's own log, migrates an older data directory
    /// into it, and replays it.
    pub(crate) fn open(
        data_dir: &Path,
        logs: &LogManager,
        node_id: i32,
    ) -> Result<Arc<Metadata>, CoreError> {
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
        let group_configs = Arc::new(GroupConfigs::default());
        group_configs.replace_all(&state.group_configs);
        let users = Arc::new(Users::default());
        users.replace_all(&state.users, state.users_bootstrapped);
        let acls = Arc::new(Acls::default());
        acls.replace_all(&state.acls);
        let permissions = Arc::new(Permissions::default());
        permissions.replace_all(
            &state.permissions,
            &state.topic_permissions,
            state.permissions_bootstrapped,
        );
        let limits = Arc::new(Limits::default());
        limits.replace_all(&state.vhost_limits, &state.user_limits);
        let client_quotas = Arc::new(ClientQuotas::default());
        client_quotas.replace_all(&state.client_quotas);
        let retained = Arc::new(Retained::default());
        retained.replace_all(&state.retained);
        Ok(Arc::new(Metadata {
            writer: Mutex::new(()),
            store: Store::Local(log),
            state: Mutex::new(state),
            topics: OnceLock::new(),
            node_id,
            commit_times: CommitTimes::default(),
            definitions_changed: tokio::sync::watch::Sender::new(0),
            group_configs,
            users,
            acls,
            permissions,
            limits,
            client_quotas,
            retained,
        }))
    }

    /// Metadata committed through a quorum: empty until the quorum applies
    /// its commands (through [`MetadataMachine`]) and writers wait for
    /// [`Metadata::attach_quorum`].
    pub fn for_quorum(node_id: i32) -> Arc<Metadata> {
        Arc::new(Metadata {
            writer: Mutex::new(()),
            store: Store::Quorum(OnceLock::new()),
            state: Mutex::new(MetadataState::default()),
            topics: OnceLock::new(),
            node_id,
            commit_times: CommitTimes::default(),
            definitions_changed: tokio::sync::watch::Sender::new(0),
            group_configs: Arc::default(),
            users: Arc::default(),
            acls: Arc::default(),
            permissions: Arc::default(),
            limits: Arc::default(),
            client_quotas: Arc::default(),
            retained: Arc::default(),
        })
    }

    /// Hands the quorum to the writers (once; a second call is ignored).
    pub fn attach_quorum(&self, quorum: Arc<dyn MetadataQuorum>) {
        if let Store::Quorum(slot) = &self.store {
            let _ = slot.set(quorum);
        }
    }

    /// The quorum, on a node of a cluster.
    pub fn quorum(&self) -> Option<&Arc<dyn MetadataQuorum>> {
        match &self.store {
            Store::Local(_) => None,
            Store::Quorum(slot) => slot.get(),
        }
    }

    /// Whether commands go through a quorum (a node of a cluster).
    pub fn clustered(&self) -> bool {
        matches!(self.store, Store::Quorum(_))
    }

    pub(crate) fn node_id(&self) -> i32 {
        self.node_id
    }

    /// The state, locked: hold it briefly.
    pub(crate) fn state(&self) -> MutexGuard<'_, MetadataState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registered nodes, by id.
    pub fn brokers(&self) -> Vec<BrokerAddress> {
        self.state().brokers.values().cloned().collect()
    }

    /// The registered nodes the controller fenced (not heard from).
    pub fn fenced(&self) -> std::collections::BTreeSet<i32> {
        self.state().fenced.clone()
    }

    /// How many registered nodes are not fenced (one state read, no
    /// copies).
    pub(crate) fn live_broker_count(&self) -> usize {
        let state = self.state();
        state
            .brokers
            .keys()
            .filter(|node| !state.fenced.contains(node))
            .count()
    }

    /// The registered nodes being decommissioned.
    pub fn leaving(&self) -> std::collections::BTreeSet<i32> {
        self.state().leaving.clone()
    }

    /// Starts decommissioning node `node`: it gets no new replicas, the
    /// controller moves its replicas to other nodes, then takes it out of
    /// the cluster. Blocking.
    ///
    /// # Errors
    /// A node that is not registered (or no longer is), or
    /// [`CoreError::Quorum`].
    pub fn decommission(&self, node: i32) -> Result<(), CoreError> {
        tracing::info!(node, "decommissioning a node");
        self.commit(MetadataCommand::DecommissionBroker { node })
    }

    /// The users as applied on this node.
    pub fn users(&self) -> &Arc<Users> {
        &self.users
    }

    /// Commits a change to the users (one of the user commands). Blocking.
    ///
    /// # Errors
    /// [`CoreError::UserExists`], [`CoreError::UnknownUser`], the log's
    /// write failure, or [`CoreError::Quorum`].
    pub(crate) fn change_user(&self, command: MetadataCommand) -> Result<(), CoreError> {
        let _writer = self.writer();
        self.commit(command)
    }

    /// The Kafka ACLs as applied on this node.
    pub fn acls(&self) -> &Arc<Acls> {
        &self.acls
    }

    /// The AMQP permissions as applied on this node.
    pub fn permissions(&self) -> &Arc<Permissions> {
        &self.permissions
    }

    /// The virtual host and user limits as applied on this node.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// The MQTT retained messages as applied on this node.
    pub fn retained(&self) -> &Arc<Retained> {
        &self.retained
    }

    /// The Kafka client quotas as applied on this node.
    pub fn client_quotas(&self) -> &Arc<ClientQuotas> {
        &self.client_quotas
    }

    /// The AMQP permissions and topic permissions as committed.
    pub(crate) fn permission_maps(&self) -> (PermissionMap, TopicPermissionMap) {
        let state = self.state();
        (state.permissions.clone(), state.topic_permissions.clone())
    }

    /// Commits an ACL change ([`MetadataCommand::CreateAcls`] or
    /// [`MetadataCommand::DeleteAcls`]). Blocking.
    ///
    /// # Errors
    /// The log's write failure, or [`CoreError::Quorum`].
    pub(crate) fn change_acls(&self, command: MetadataCommand) -> Result<(), CoreError> {
        let _writer = self.writer();
        self.commit(command)
    }

    /// The group settings as applied on this node.
    pub fn group_configs(&self) -> &Arc<GroupConfigs> {
        &self.group_configs
    }

    /// Sets all of `group`'s settings (none: back to the broker's), if
    /// they are still `before`. Blocking.
    ///
    /// # Errors
    /// [`CoreError::GroupConfigChanged`], the log's write failure, or
    /// [`CoreError::Quorum`].
    pub(crate) fn set_group_config(
        &self,
        group: &str,
        before: &GroupConfig,
        config: &GroupConfig,
    ) -> Result<(), CoreError> {
        let _writer = self.writer();
        self.commit(MetadataCommand::SetGroupConfig {
            group: group.to_owned(),
            config: config.overrides().clone(),
            expected: Some(before.overrides().clone()),
        })
    }

    /// One writer at a time: hold it from the check to [`Metadata::commit`].
    pub(crate) fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits `command` and returns once it is applied on this node.
    /// Blocking.
    ///
    /// # Errors
    /// The state's refusal (as [`apply`]), the log's write failure, or
    /// [`CoreError::Quorum`].
    pub(crate) fn commit(&self, command: MetadataCommand) -> Result<(), CoreError> {
        let started = std::time::Instant::now();
        let committed = self.commit_timed(command);
        if committed.is_ok() {
            use std::sync::atomic::Ordering::Relaxed;
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.commit_times.count.fetch_add(1, Relaxed);
            self.commit_times.micros.fetch_add(micros, Relaxed);
        }
        committed
    }

    /// The durable AMQP definitions now.
    pub(crate) fn definitions(&self) -> Definitions {
        self.state().definitions.clone()
    }

    /// The committed declarations of `vhost`'s quorum queues with a store
    /// (those that may replicate).
    pub(crate) fn quorum_queue_definitions(&self, vhost: &str) -> Vec<QueueDefinition> {
        self.state()
            .definitions
            .values()
            .filter_map(|definition| match definition {
                definitions::Definition::Queue(queue)
                    if queue.vhost == vhost
                        && !queue.store_id.is_empty()
                        && queue
                            .arguments
                            .inner()
                            .get("x-queue-type")
                            .and_then(crate::messaging::string_value)
                            .is_some_and(|kind| kind == "quorum") =>
                {
                    Some(queue.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// The committed declaration of queue `name` of `vhost`.
    pub(crate) fn queue_definition(&self, vhost: &str, name: &str) -> Option<QueueDefinition> {
        match self
            .state()
            .definitions
            .get(&definitions::DefinitionKey::Queue {
                vhost: vhost.to_owned(),
                name: name.to_owned(),
            }) {
            Some(Definition::Queue(queue)) => Some(queue.clone()),
            _ => None,
        }
    }

    /// How many classic queues live on each node (their home).
    pub fn queue_homes(&self) -> BTreeMap<i32, usize> {
        let mut homes = BTreeMap::new();
        for definition in self.state().definitions.values() {
            if let Definition::Queue(QueueDefinition {
                home: Some(home), ..
            }) = definition
            {
                *homes.entry(*home).or_insert(0) += 1;
            }
        }
        homes
    }

    /// How many quorum queues each node leads (their partition's leader).
    pub fn quorum_leaders(&self) -> BTreeMap<i32, usize> {
        let mut led = BTreeMap::new();
        for (name, topic) in &self.state().topics {
            let (leader, _) = topic.leader_of(0);
            if name.starts_with(crate::messaging::QUORUM_TOPIC_PREFIX) && leader >= 0 {
                *led.entry(leader).or_insert(0) += 1;
            }
        }
        led
    }

    /// Changes when the durable AMQP definitions change.
    pub(crate) fn watch_definitions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.definitions_changed.subscribe()
    }

    /// Commits this node's writers made and their total time.
    pub fn commit_times(&self) -> &CommitTimes {
        &self.commit_times
    }

    /// The nodes that vote in the quorum (none on a cluster of one).
    pub fn voters(&self) -> Vec<i32> {
        match &self.store {
            Store::Local(_) => Vec::new(),
            Store::Quorum(slot) => slot.get().map_or_else(Vec::new, |q| q.voters()),
        }
    }

    /// How many times this node saw the controller change (0 on a cluster
    /// of one).
    pub fn controller_changes(&self) -> u64 {
        match &self.store {
            Store::Local(_) => 0,
            Store::Quorum(slot) => slot.get().map_or(0, |q| q.controller_changes()),
        }
    }

    fn commit_timed(&self, command: MetadataCommand) -> Result<(), CoreError> {
        match &self.store {
            Store::Local(log) => {
                // Checked, written and applied under the state's lock, so
                // the log's order is the order of apply; a refused
                // command never reaches the log.
                let mut state = self.state();
                check(&state, &command)?;
                log.append(std::slice::from_ref(&command))?;
                self.apply_locked(&mut state, command)
            }
            Store::Quorum(slot) => {
                let quorum = slot.get().ok_or_else(|| CoreError::Quorum {
                    reason: "this node has not joined the metadata quorum yet".to_owned(),
                })?;
                let text =
                    serde_json::to_string(&command).map_err(|error| CoreError::Internal {
                        reason: format!("cannot encode a metadata command: {error}"),
                    })?;
                answer(&quorum.propose(text)?)
            }
        }
    }

    /// Applies a committed command: the state first, then the runtime
    /// topics (when open). Commands apply one at a time, in commit order.
    ///
    /// # Errors
    /// The state's refusal (nothing changed), or the runtime's failure to
    /// open or delete a partition log (the state has changed).
    pub(crate) fn apply(&self, command: MetadataCommand) -> Result<(), CoreError> {
        self.apply_locked(&mut self.state(), command)
    }

    fn apply_locked(
        &self,
        state: &mut MetadataState,
        command: MetadataCommand,
    ) -> Result<(), CoreError> {
        let topic = topic_of(&command).map(str::to_owned);
        let definition = is_definition(&command);
        let group = match &command {
            MetadataCommand::SetGroupConfig { group, .. } => Some(group.clone()),
            _ => None,
        };
        let acls = matches!(
            command,
            MetadataCommand::CreateAcls { .. } | MetadataCommand::DeleteAcls { .. }
        );
        let permissions = matches!(
            command,
            MetadataCommand::SetPermission { .. }
                | MetadataCommand::SetTopicPermission { .. }
                | MetadataCommand::BootstrapPermissions { .. }
                | MetadataCommand::BootstrapUsers { .. }
                | MetadataCommand::DeleteUser { .. }
                | MetadataCommand::SetScramCredential { .. }
        );
        let quotas = matches!(command, MetadataCommand::AlterClientQuota { .. });
        let retained = match &command {
            MetadataCommand::SetRetained { vhost, topic, .. } => {
                Some((vhost.clone(), topic.clone()))
            }
            _ => None,
        };
        let limits = matches!(
            command,
            MetadataCommand::SetLimit { .. }
                | MetadataCommand::DeleteUser { .. }
                | MetadataCommand::SetScramCredential { .. }
        );
        let user = match &command {
            MetadataCommand::PutUser { name, .. }
            | MetadataCommand::DeleteUser { name }
            | MetadataCommand::SetScramCredential { name, .. } => Some(Some(name.clone())),
            MetadataCommand::BootstrapUsers { .. } => Some(None),
            _ => None,
        };
        apply(state, command)?;
        if acls {
            self.acls.replace_all(&state.acls);
        }
        if permissions {
            self.permissions.replace_all(
                &state.permissions,
                &state.topic_permissions,
                state.permissions_bootstrapped,
            );
        }
        if limits {
            self.limits
                .replace_all(&state.vhost_limits, &state.user_limits);
        }
        if quotas {
            self.client_quotas.replace_all(&state.client_quotas);
        }
        if let Some((vhost, topic)) = retained {
            let value = state.retained.get(&vhost).and_then(|t| t.get(&topic));
            self.retained.set_one(&vhost, &topic, value);
        }
        match user {
            Some(Some(name)) => self.users.set(&name, state.users.get(&name)),
            Some(None) => self
                .users
                .replace_all(&state.users, state.users_bootstrapped),
            None => {}
        }
        if definition {
            self.definitions_changed.send_modify(|n| *n += 1);
        }
        if let Some(group) = group {
            self.group_configs
                .set(&group, state.group_configs.get(&group));
        }
        let Some(topics) = self.topics.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        match topic {
            Some(name) => topics.reconcile(&name, state.topics.get(&name)),
            None => Ok(()),
        }
    }

    /// Attaches the runtime topics (opened from an earlier copy of the
    /// state) and brings them in line with the state now.
    pub(crate) fn attach_topics(&self, topics: &Arc<Topics>) -> Result<(), CoreError> {
        let state = self.state();
        let _ = self.topics.set(Arc::downgrade(topics));
        topics.reconcile_all(&state.topics)
    }

    /// Replaces the state with a snapshot's commands and brings the
    /// runtime in line.
    fn restore(&self, commands: Vec<MetadataCommand>) -> Result<(), CoreError> {
        let mut fresh = MetadataState::default();
        for command in commands {
            apply(&mut fresh, command)?;
        }
        let mut state = self.state();
        *state = fresh;
        self.group_configs.replace_all(&state.group_configs);
        self.users
            .replace_all(&state.users, state.users_bootstrapped);
        self.acls.replace_all(&state.acls);
        self.permissions.replace_all(
            &state.permissions,
            &state.topic_permissions,
            state.permissions_bootstrapped,
        );
        self.limits
            .replace_all(&state.vhost_limits, &state.user_limits);
        self.client_quotas.replace_all(&state.client_quotas);
        self.retained.replace_all(&state.retained);
        self.definitions_changed.send_modify(|n| *n += 1);
        match self.topics.get().and_then(Weak::upgrade) {
            Some(topics) => topics.reconcile_all(&state.topics),
            None => Ok(()),
        }
    }
}

/// Whether a command changes the durable AMQP definitions.
fn is_definition(command: &MetadataCommand) -> bool {
    matches!(
        command,
        MetadataCommand::DeclareExchange(_)
            | MetadataCommand::DeleteExchange { .. }
            | MetadataCommand::DeclareQueue(_)
            | MetadataCommand::DeleteQueue { .. }
            | MetadataCommand::Bind(_)
            | MetadataCommand::Unbind(_)
    )
}

/// The topic a command changes, if any.
fn topic_of(command: &MetadataCommand) -> Option<&str> {
    match command {
        MetadataCommand::CreateTopic { name, .. }
        | MetadataCommand::GrowTopic { name, .. }
        | MetadataCommand::SetTopicConfig { name, .. }
        | MetadataCommand::SetInSync { name, .. }
        | MetadataCommand::ChangeLeader { name, .. }
        | MetadataCommand::ReassignPartition { name, .. }
        | MetadataCommand::FinishReassignment { name, .. }
        | MetadataCommand::RestorePartition { name, .. }
        | MetadataCommand::DeleteTopic { name } => Some(name),
        _ => None,
    }
}

/// A committed command's answer as the proposer's result.
fn answer(text: &str) -> Result<(), CoreError> {
    if text.is_empty() {
        return Ok(());
    }
    match serde_json::from_str::<Refusal>(text) {
        Ok(refusal) => Err(refusal.into_error()),
        Err(_) => Err(CoreError::Internal {
            reason: format!("unreadable answer from the metadata quorum: {text}"),
        }),
    }
}

/// The replicated state machine's side in core: what the quorum calls to
/// apply committed commands, take snapshots and restore them. Text in and
/// out (JSON), so the quorum needs no core types.
#[derive(Debug, Clone)]
pub struct MetadataMachine(Arc<Metadata>);

impl MetadataMachine {
    pub fn new(metadata: Arc<Metadata>) -> MetadataMachine {
        MetadataMachine(metadata)
    }

    /// Applies one committed command; the answer goes to its proposer
    /// (empty: applied). A command this node cannot read is answered as
    /// refused and changes nothing.
    pub fn apply(&self, command: &str) -> String {
        let result = serde_json::from_str::<MetadataCommand>(command)
            .map_err(|error| CoreError::Internal {
                reason: format!("unreadable metadata command: {error}"),
            })
            .and_then(|command| self.0.apply(command));
        match result {
            Ok(()) => String::new(),
            Err(error) => {
                tracing::debug!(%error, "metadata command refused");
                serde_json::to_string(&Refusal::of(error)).unwrap_or_default()
            }
        }
    }

    /// The state as the commands that rebuild it (a JSON array).
    pub fn snapshot(&self) -> String {
        let commands = self.0.state().commands();
        serde_json::to_string(&commands).unwrap_or_else(|_| "[]".to_owned())
    }

    /// Replaces the state with a snapshot's.
    ///
    /// # Errors
    /// A snapshot that cannot be read or applied.
    pub fn restore(&self, snapshot: &str) -> Result<(), String> {
        let commands: Vec<MetadataCommand> =
            serde_json::from_str(snapshot).map_err(|e| e.to_string())?;
        self.0.restore(commands).map_err(|e| e.to_string())
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
            replicas: Vec::new(),
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
            replicas: Vec::new(),
        }
    }

    /// A new data directory's bootstrap users get every permission in the
    /// same change, and a user added after has none; a directory whose
    /// users were taken before permissions existed gets them for all its
    /// users once; a deleted user's permissions go; a snapshot keeps them.
    #[test]
    fn permissions_are_bootstrapped_with_the_users_or_once_for_older_users() {
        let user = |name: &str| (name.to_owned(), UserRecord::default());
        let mut fresh = MetadataState::default();
        apply(
            &mut fresh,
            MetadataCommand::BootstrapUsers {
                users: BTreeMap::from([user("guest")]),
                vhosts: Some(vec!["/".into()]),
            },
        )
        .expect("bootstrap");
        assert!(fresh.permissions_bootstrapped);
        let (name, record) = user("later");
        apply(
            &mut fresh,
            MetadataCommand::PutUser {
                name,
                user: record,
                create_only: true,
            },
        )
        .expect("put");
        assert_eq!(fresh.permissions["guest"]["/"], VhostPermission::full());
        assert!(!fresh.permissions.contains_key("later"));
        let restored = fresh
            .commands()
            .into_iter()
            .fold(MetadataState::default(), |mut s, c| {
                apply(&mut s, c).expect("replay");
                s
            });
        assert_eq!(restored.permissions, fresh.permissions);
        assert!(restored.permissions_bootstrapped);

        let mut older = MetadataState::default();
        apply(
            &mut older,
            MetadataCommand::BootstrapUsers {
                users: BTreeMap::from([user("guest"), user("app")]),
                vhosts: None,
            },
        )
        .expect("bootstrap before permissions");
        assert!(!older.permissions_bootstrapped);
        apply(
            &mut older,
            MetadataCommand::BootstrapPermissions {
                vhosts: vec!["/".into(), "other".into()],
            },
        )
        .expect("permissions");
        assert_eq!(older.permissions["app"]["other"], VhostPermission::full());
        apply(
            &mut older,
            MetadataCommand::DeleteUser { name: "app".into() },
        )
        .expect("delete");
        assert!(!older.permissions.contains_key("app"));
        let refused = apply(
            &mut older,
            MetadataCommand::SetPermission {
                user: "app".into(),
                vhost: "/".into(),
                permission: Some(VhostPermission::full()),
            },
        );
        assert!(matches!(refused, Err(CoreError::UnknownUser { .. })));

        // A user whose last SCRAM credential Kafka deletes goes with its
        // permissions, and the snapshot still replays.
        let credential = ScramCredential::from_password(ScramMechanism::Sha256, "pw", 4096);
        for command in [
            MetadataCommand::SetScramCredential {
                name: "kafka-only".into(),
                mechanism: ScramMechanism::Sha256,
                credential: Some(credential),
            },
            MetadataCommand::SetPermission {
                user: "kafka-only".into(),
                vhost: "/".into(),
                permission: Some(VhostPermission::full()),
            },
            MetadataCommand::SetScramCredential {
                name: "kafka-only".into(),
                mechanism: ScramMechanism::Sha256,
                credential: None,
            },
        ] {
            apply(&mut older, command).expect("scram user");
        }
        assert!(!older.permissions.contains_key("kafka-only"));
        let mut replayed = MetadataState::default();
        for command in older.commands() {
            apply(&mut replayed, command).expect("the snapshot replays");
        }
    }

    /// Two declarations of one queue at once (on two nodes): the first
    /// commit wins, the second is refused, and it changes nothing.
    #[test]
    fn a_queue_declared_twice_at_once_keeps_the_first_declaration() {
        let declare = |store_id: &str, home: i32| {
            MetadataCommand::DeclareQueue(QueueDefinition {
                vhost: "/".into(),
                name: "tasks".into(),
                store_id: store_id.into(),
                auto_delete: false,
                arguments: amq_protocol::types::FieldTable::default(),
                home: Some(home),
            })
        };
        let mut state = MetadataState::default();
        apply(&mut state, declare("tasks-1", 1)).expect("first");
        assert!(matches!(
            apply(&mut state, declare("tasks-2", 2)),
            Err(CoreError::QueueExists { .. })
        ));
        // The same declaration again (a retried commit) is no conflict.
        apply(&mut state, declare("tasks-1", 1)).expect("the same again");
        let homes: Vec<Option<i32>> = state
            .definitions
            .values()
            .filter_map(|d| match d {
                Definition::Queue(q) => Some(q.home),
                _ => None,
            })
            .collect();
        assert_eq!(homes, vec![Some(1)]);
        // Deleted, it can be declared anew elsewhere.
        apply(
            &mut state,
            MetadataCommand::DeleteQueue {
                vhost: "/".into(),
                name: "tasks".into(),
            },
        )
        .expect("delete");
        apply(&mut state, declare("tasks-2", 2)).expect("declared anew");
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
                replicas: Vec::new(),
            },
        )
        .expect("grow");
        assert!(
            apply(
                &mut state,
                MetadataCommand::GrowTopic {
                    name: "a".into(),
                    partitions: 2,
                    replicas: Vec::new(),
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

    #[test]
    fn the_controller_fences_silent_nodes_and_a_replaced_leader_cannot_change_in_sync_replicas() {
        use std::collections::BTreeSet;
        let mut state = nodes_and_a_partition_on_three(3);
        let fence = |node, fenced| MetadataCommand::FenceBroker { node, fenced };
        let changes = leadership_changes(&state, &BTreeSet::from([2, 3]));
        assert_eq!(changes[0], fence(1, true), "{changes:?}");
        for change in changes {
            apply(&mut state, change).expect("apply");
        }
        assert_eq!(state.fenced, BTreeSet::from([1]));
        assert_eq!(state.topics["t"].leader_of(0), (2, 1));
        // Node 1 led in epoch 0; what it proposes now is refused, even an
        // in-sync set that names the current leader.
        let stale = MetadataCommand::SetInSync {
            name: "t".into(),
            partition: 0,
            in_sync: vec![2, 1],
            leader_epoch: Some(0),
            from: None,
        };
        assert!(apply(&mut state, stale).is_err());
        assert_eq!(state.topics["t"].in_sync_of(0), vec![2, 3]);
        // The leader's addition decided on a set changed since (here [2],
        // the set is [2, 3]) is refused: it counted the follower toward
        // its high watermark only until the set changed.
        let decided_before = MetadataCommand::SetInSync {
            name: "t".into(),
            partition: 0,
            in_sync: vec![2, 1],
            leader_epoch: Some(1),
            from: Some(vec![2]),
        };
        assert!(apply(&mut state, decided_before).is_err());
        assert_eq!(state.topics["t"].in_sync_of(0), vec![2, 3]);
        // A clean election decided on stale metadata cannot bring back a
        // replica that left the in-sync replicas meanwhile.
        let stale_election = MetadataCommand::ChangeLeader {
            name: "t".into(),
            partition: 0,
            leader: 1,
            leader_epoch: 2,
            in_sync: vec![1, 2, 3],
            unclean: false,
        };
        assert!(apply(&mut state, stale_election).is_err());
        // Fencing survives a snapshot; node 1 heard from again: unfenced.
        let mut rebuilt = MetadataState::default();
        for command in state.commands() {
            apply(&mut rebuilt, command).expect("rebuild");
        }
        assert_eq!(rebuilt, state);
        // The preferred replica (1) is fenced: no preferred election.
        assert_eq!(
            election(&state, "t", 0, false).expect("election").0,
            Election::NotAvailable
        );
        let changes = leadership_changes(&state, &BTreeSet::from([1, 2, 3]));
        assert_eq!(changes, vec![fence(1, false)]);
        for change in changes {
            apply(&mut state, change).expect("apply");
        }
        // Unfenced but not in sync yet: still not available; in sync: it
        // is elected in the next epoch.
        assert_eq!(
            election(&state, "t", 0, false).expect("election").0,
            Election::NotAvailable
        );
        let back = MetadataCommand::SetInSync {
            name: "t".into(),
            partition: 0,
            in_sync: vec![2, 3, 1],
            leader_epoch: Some(1),
            from: None,
        };
        apply(&mut state, back).expect("back in sync");
        let (outcome, command) = election(&state, "t", 0, false).expect("election");
        assert_eq!(outcome, Election::Elected(1));
        assert!(matches!(
            command,
            Some(MetadataCommand::ChangeLeader {
                leader: 1,
                leader_epoch: 2,
                ..
            })
        ));
        // Unclean: not needed while the leader lives; with every in-sync
        // replica fenced but one other replica alive, that one.
        assert_eq!(
            election(&state, "t", 0, true).expect("election").0,
            Election::NotNeeded
        );
        state.fenced = BTreeSet::from([2, 3]);
        state
            .topics
            .get_mut("t")
            .expect("t")
            .set_in_sync(0, vec![2, 3]);
        let (outcome, command) = election(&state, "t", 0, true).expect("election");
        assert_eq!(outcome, Election::Elected(1));
        assert!(matches!(
            command,
            Some(MetadataCommand::ChangeLeader { leader: 1, ref in_sync, .. }) if in_sync == &vec![1]
        ));
        assert!(election(&state, "t", 5, false).is_err());
        // Registering a node that does not exist cannot be fenced.
        assert!(apply(&mut state, fence(7, true)).is_err());
    }

    #[test]
    fn the_controller_moves_leaders_to_live_in_sync_replicas_and_back() {
        use std::collections::BTreeSet;
        let mut state = MetadataState::default();
        apply(
            &mut state,
            MetadataCommand::CreateTopic {
                name: "t".into(),
                id: "00".repeat(16),
                partitions: 2,
                config: BTreeMap::new(),
                replicas: vec![vec![1, 2, 3], vec![2, 3, 1]],
            },
        )
        .expect("create");
        let all = BTreeSet::from([1, 2, 3]);
        assert!(leadership_changes(&state, &all).is_empty());

        // Node 1 dies: partition 0 moves to node 2 in epoch 1; partition
        // 1 keeps its leader and drops node 1 from its in-sync replicas.
        let changes = leadership_changes(&state, &BTreeSet::from([2, 3]));
        assert_eq!(
            changes,
            vec![
                MetadataCommand::ChangeLeader {
                    name: "t".into(),
                    partition: 0,
                    leader: 2,
                    leader_epoch: 1,
                    in_sync: vec![2, 3],
                    unclean: false,
                },
                MetadataCommand::SetInSync {
                    name: "t".into(),
                    partition: 1,
                    in_sync: vec![2, 3],
                    leader_epoch: Some(0),
                    from: Some(vec![2, 3, 1]),
                },
            ]
        );
        for change in changes {
            apply(&mut state, change).expect("apply");
        }
        assert!(leadership_changes(&state, &BTreeSet::from([2, 3])).is_empty());

        // Node 1 returns, but until it is in sync again it leads nothing.
        assert!(leadership_changes(&state, &all).is_empty());
        for partition in [0, 1] {
            let leader = state.topics["t"].leader_of(partition).0;
            let mut in_sync = vec![leader];
            in_sync.extend([1, 2, 3].into_iter().filter(|r| *r != leader));
            apply(
                &mut state,
                MetadataCommand::SetInSync {
                    name: "t".into(),
                    partition,
                    in_sync,
                    leader_epoch: None,
                    from: None,
                },
            )
            .expect("back in sync");
        }
        // In sync: the preferred leader (first replica) leads again.
        let changes = leadership_changes(&state, &all);
        assert!(matches!(
            changes.as_slice(),
            [MetadataCommand::ChangeLeader {
                partition: 0,
                leader: 1,
                leader_epoch: 2,
                ..
            }]
        ));

        // With every in-sync replica gone there is no leader to choose
        // (unclean election is off), and a stale epoch is refused.
        assert!(leadership_changes(&state, &BTreeSet::new()).is_empty());
        apply(
            &mut state,
            MetadataCommand::SetInSync {
                name: "t".into(),
                partition: 1,
                in_sync: vec![2],
                leader_epoch: None,
                from: None,
            },
        )
        .expect("shrink");
        // Partition 1's only in-sync replica (2) is gone; 3 is alive but
        // was not in sync.
        let of_partition_1 = |changes: Vec<MetadataCommand>| {
            changes
                .into_iter()
                .filter(|c| matches!(c, MetadataCommand::ChangeLeader { partition: 1, .. }))
                .collect::<Vec<_>>()
        };
        assert!(of_partition_1(leadership_changes(&state, &BTreeSet::from([3]))).is_empty());
        apply(
            &mut state,
            MetadataCommand::SetTopicConfig {
                name: "t".into(),
                config: BTreeMap::from([(
                    "unclean.leader.election.enable".to_owned(),
                    "true".to_owned(),
                )]),
            },
        )
        .expect("config");
        assert_eq!(
            of_partition_1(leadership_changes(&state, &BTreeSet::from([3]))),
            vec![MetadataCommand::ChangeLeader {
                name: "t".into(),
                partition: 1,
                leader: 3,
                leader_epoch: 1,
                in_sync: vec![3],
                unclean: true,
            }]
        );
        assert!(
            apply(
                &mut state,
                MetadataCommand::ChangeLeader {
                    name: "t".into(),
                    partition: 0,
                    leader: 3,
                    leader_epoch: 1,
                    in_sync: vec![3],
                    unclean: false,
                },
            )
            .is_err()
        );
    }

    /// Nodes 1 to `nodes` registered and topic "t" with one partition on
    /// 1, 2, 3.
    fn nodes_and_a_partition_on_three(nodes: i32) -> MetadataState {
        let mut state = MetadataState::default();
        for node in 1..=nodes {
            apply(
                &mut state,
                MetadataCommand::RegisterBroker {
                    node,
                    host: "127.0.0.1".into(),
                    port: 9000 + node as u16,
                    listeners: BTreeMap::new(),
                },
            )
            .expect("register");
        }
        apply(
            &mut state,
            MetadataCommand::CreateTopic {
                name: "t".into(),
                id: "00".repeat(16),
                partitions: 1,
                config: BTreeMap::new(),
                replicas: vec![vec![1, 2, 3]],
            },
        )
        .expect("create");
        state
    }

    /// Node 4, added to partition 0 of "t", is in sync (its leader, node 1
    /// in epoch 0, says so).
    fn node_4_caught_up(state: &mut MetadataState) {
        apply(
            state,
            MetadataCommand::SetInSync {
                name: "t".into(),
                partition: 0,
                in_sync: vec![1, 2, 3, 4],
                leader_epoch: Some(0),
                from: None,
            },
        )
        .expect("4 caught up");
    }

    fn reassign(target: Option<Vec<i32>>) -> MetadataCommand {
        MetadataCommand::ReassignPartition {
            name: "t".into(),
            partition: 0,
            target,
        }
    }

    /// Rebuilds `state` from its snapshot's commands.
    fn rebuilt(state: &MetadataState) -> MetadataState {
        let mut copy = MetadataState::default();
        for command in state.commands() {
            apply(&mut copy, command).expect("snapshot command");
        }
        copy
    }

    #[test]
    fn a_partition_moves_once_its_new_replicas_are_in_sync() {
        use std::collections::BTreeSet;
        let live = BTreeSet::from([1, 2, 3, 4]);
        let mut state = nodes_and_a_partition_on_three(4);
        apply(&mut state, reassign(Some(vec![4, 2, 3]))).expect("start");
        let topic = &state.topics["t"];
        // The target first, then the replica leaving; the leader stays.
        assert_eq!(topic.replicas_of(0), vec![4, 2, 3, 1]);
        assert_eq!(topic.leader_of(0), (1, 0));
        assert_eq!(topic.in_sync_of(0), vec![1, 2, 3]);
        assert_eq!(
            topic.moving.get(&0),
            Some(&Reassignment {
                adding: vec![4],
                removing: vec![1]
            })
        );
        // A snapshot taken now restores the move.
        assert_eq!(rebuilt(&state), state);
        // Node 4 is not in sync yet: nothing to finish.
        assert!(leadership_changes(&state, &live).is_empty());
        let finish = MetadataCommand::FinishReassignment {
            name: "t".into(),
            partition: 0,
        };
        assert!(
            apply(&mut state.clone(), finish.clone()).is_err(),
            "4 is not in sync"
        );

        node_4_caught_up(&mut state);
        assert_eq!(leadership_changes(&state, &live), vec![finish.clone()]);
        apply(&mut state, finish).expect("finish");
        let topic = &state.topics["t"];
        // Node 1 is gone; node 4, the preferred replica, leads in the next
        // epoch.
        assert_eq!(topic.replicas_of(0), vec![4, 2, 3]);
        assert_eq!(topic.leader_of(0), (4, 1));
        assert_eq!(topic.in_sync_of(0), vec![2, 3, 4]);
        assert!(topic.moving.is_empty());
        assert!(leadership_changes(&state, &live).is_empty());
        assert_eq!(rebuilt(&state), state);
    }

    #[test]
    fn a_move_is_cancelled_back_to_the_replicas_it_had_and_bad_targets_are_refused() {
        let mut state = nodes_and_a_partition_on_three(4);
        assert!(matches!(
            apply(&mut state, reassign(None)),
            Err(CoreError::NoReassignmentInProgress { .. })
        ));
        for bad in [vec![], vec![1, 1, 2], vec![1, 2, 9]] {
            assert!(
                matches!(
                    apply(&mut state, reassign(Some(bad.clone()))),
                    Err(CoreError::InvalidReplicaAssignment { .. })
                ),
                "{bad:?}"
            );
        }
        let before = state.clone();
        apply(&mut state, reassign(Some(vec![4, 2, 3]))).expect("start");
        // Moving again targets from the replicas it had: 4 is dropped.
        apply(&mut state, reassign(Some(vec![1, 2, 4]))).expect("again");
        assert_eq!(state.topics["t"].replicas_of(0), vec![1, 2, 4, 3]);
        assert_eq!(
            state.topics["t"].moving.get(&0),
            Some(&Reassignment {
                adding: vec![4],
                removing: vec![3]
            })
        );
        apply(&mut state, reassign(None)).expect("cancel");
        let topic = &state.topics["t"];
        assert_eq!(topic.replicas_of(0), vec![1, 2, 3]);
        assert_eq!(topic.leader_of(0), before.topics["t"].leader_of(0));
        assert_eq!(topic.in_sync_of(0), vec![1, 2, 3]);
        assert!(topic.moving.is_empty());
    }

    #[test]
    fn a_decommissioned_node_has_its_replicas_moved_then_is_unregistered() {
        use std::collections::BTreeSet;
        let live = BTreeSet::from([1, 2, 3, 4]);
        let mut state = nodes_and_a_partition_on_three(4);
        apply(&mut state, MetadataCommand::DecommissionBroker { node: 1 }).expect("decommission");
        assert_eq!(rebuilt(&state), state);
        // Node 1's replica goes to node 4, the only node without one.
        let changes = leadership_changes(&state, &live);
        assert_eq!(changes, vec![reassign(Some(vec![4, 2, 3]))]);
        for change in changes {
            apply(&mut state, change).expect("move");
        }
        // A node being decommissioned may keep a replica it has, not get one.
        assert!(apply(&mut state.clone(), reassign(Some(vec![2, 3, 1]))).is_ok());
        let mut other = state.clone();
        apply(
            &mut other,
            MetadataCommand::CreateTopic {
                name: "u".into(),
                id: "11".repeat(16),
                partitions: 1,
                config: BTreeMap::new(),
                replicas: vec![vec![2, 3, 4]],
            },
        )
        .expect("create");
        assert!(matches!(
            apply(
                &mut other,
                MetadataCommand::ReassignPartition {
                    name: "u".into(),
                    partition: 0,
                    target: Some(vec![1, 2, 3]),
                }
            ),
            Err(CoreError::InvalidReplicaAssignment { .. })
        ));
        let unregister = MetadataCommand::UnregisterBroker { node: 1 };
        assert!(
            apply(&mut state.clone(), unregister.clone()).is_err(),
            "1 still holds a replica"
        );
        node_4_caught_up(&mut state);
        for change in leadership_changes(&state, &live) {
            apply(&mut state, change).expect("finish");
        }
        assert_eq!(leadership_changes(&state, &live), vec![unregister.clone()]);
        apply(&mut state, unregister).expect("unregister");
        assert!(!state.brokers.contains_key(&1));
        assert!(state.leaving.is_empty());
        assert_eq!(state.topics["t"].replicas_of(0), vec![4, 2, 3]);
    }

    #[test]
    fn group_configs_are_replaced_whole_survive_a_snapshot_and_go_when_emptied() {
        let set = |group: &str, pairs: &[(&str, &str)]| MetadataCommand::SetGroupConfig {
            group: group.into(),
            config: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            expected: None,
        };
        let mut state = MetadataState::default();
        for command in [
            set("a", &[("share.delivery.count.limit", "2")]),
            set("b", &[("share.auto.offset.reset", "earliest")]),
            set("a", &[("share.record.lock.duration.ms", "5000")]),
        ] {
            assert!(apply(&mut state, command).is_ok());
        }
        assert_eq!(
            state
                .group_configs
                .get("a")
                .map(|c| c.keys().collect::<Vec<_>>()),
            Some(vec![&"share.record.lock.duration.ms".to_owned()]),
            "a second command replaces the first"
        );
        assert_eq!(rebuilt(&state), state);
        let configs = GroupConfigs::default();
        configs.replace_all(&state.group_configs);
        assert!(configs.get("b").is_some());
        // A change made from settings that are not the group's any more is
        // refused: it would undo the change in between.
        let stale = MetadataCommand::SetGroupConfig {
            group: "a".into(),
            config: BTreeMap::new(),
            expected: Some(BTreeMap::from([(
                "share.delivery.count.limit".to_owned(),
                "2".to_owned(),
            )])),
        };
        assert!(matches!(
            apply(&mut state, stale),
            Err(CoreError::GroupConfigChanged { .. })
        ));
        let fresh = MetadataCommand::SetGroupConfig {
            group: "b".into(),
            config: BTreeMap::new(),
            expected: state.group_configs.get("b").cloned(),
        };
        assert!(apply(&mut state, fresh).is_ok());
        assert!(!state.group_configs.contains_key("b"));
        configs.set("b", state.group_configs.get("b"));
        assert!(configs.get("b").is_none());
        assert_eq!(rebuilt(&state), state);
    }
}
