//! Classic members in a consumer group: Kafka 4's online migration
//! (KIP-848, `group.consumer.migration.policy = bidirectional`).
//!
//! ```text
//!   classic group with members ──ConsumerGroupHeartbeat join──▶ upgrade:
//!     its members become classic members of a consumer group at their
//!     generation, keeping their assignment as the target
//!   classic member: JoinGroup ─▶ reconciled like any member (what it
//!     reports owning counts), generation = its member epoch
//!                   SyncGroup ─▶ the partitions it may own now
//!                   Heartbeat ─▶ REBALANCE_IN_PROGRESS while it must
//!                                rejoin to move toward its target
//!   last member of the new protocol leaves or is fenced ──▶ downgrade:
//!     the classic members go back to a classic group, which rebalances
//! ```
//!
//! The coordinator computes every member's assignment, classic ones too
//! (the classic leader's own assignment is not asked for), so a partition
//! still moves only once its previous owner gave it up.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Assignment, ConsumerGroupError, ConsumerGroups, Group, Member, MemberState};
use super::{TopicCatalog, contains};

/// The protocol type of every classic member of a consumer group.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// What a consumer group keeps of a classic member (Kafka's
/// `ClassicMemberMetadata`).
#[derive(Debug, Clone)]
pub(super) struct ClassicMeta {
    pub(super) session_timeout: Duration,
    /// (name, metadata) in the member's order of preference.
    pub(super) protocols: Vec<(String, Bytes)>,
}

impl ClassicMeta {
    pub(super) fn new(session_timeout: Duration, protocols: Vec<(String, Bytes)>) -> ClassicMeta {
        ClassicMeta {
            session_timeout,
            protocols,
        }
    }

    pub(super) fn session_timeout(&self) -> Duration {
        self.session_timeout
    }
}

/// A classic member moving between a classic group and a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    /// The topics its subscription names.
    pub topics: Vec<String>,
    /// What it was assigned.
    pub assigned: Assignment,
}

/// A JoinGroup of a classic member to a consumer group, its subscription
/// decoded by the front-end.
#[derive(Debug, Clone)]
pub struct ClassicJoin {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub topics: Vec<String>,
    /// What the subscription says it owns (cooperative protocols; eager
    /// ones own nothing when they rejoin).
    pub owned: Assignment,
}

/// The answer to a classic member's JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicJoined {
    pub member_id: String,
    /// The member epoch, which a classic member uses as its generation.
    pub generation: i32,
    /// The member's first protocol (Kafka answers with it).
    pub protocol_name: String,
}

/// A classic member's assignment from SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicSynced {
    pub assignment: Assignment,
    pub protocol_name: String,
    /// That protocol's metadata (its first two bytes are the consumer
    /// protocol version the assignment is encoded in).
    pub metadata: Bytes,
}

fn first_protocol(meta: &ClassicMeta) -> (String, Bytes) {
    meta.protocols.first().cloned().unwrap_or_default()
}

impl Group {
    /// The member `member_id` names, or the static member `instance_id`
    /// names (fenced when the ids disagree; only a leave may leave the
    /// member id out): a classic one.
    fn classic_member_id(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        leaving: bool,
    ) -> Result<String, ConsumerGroupError> {
        let id = match instance_id {
            Some(instance) => {
                let owner = self
                    .instance_owner(instance)
                    .ok_or(ConsumerGroupError::UnknownMemberId)?;
                if (!member_id.is_empty() || !leaving) && owner != member_id {
                    return Err(ConsumerGroupError::FencedInstanceId(instance.to_owned()));
                }
                owner
            }
            None => member_id.to_owned(),
        };
        match self.members.get(&id) {
            Some(member) if member.classic.is_some() => Ok(id),
            _ => Err(ConsumerGroupError::UnknownMemberId),
        }
    }

    /// Whether a classic member must rejoin: the group moved on, it must
    /// give partitions up, or partitions it waits for are free now.
    fn classic_must_rejoin(&self, member_id: &str) -> bool {
        let Some(member) = self.members.get(member_id) else {
            return false;
        };
        if member.epoch < self.epoch || member.state == MemberState::UnrevokedPartitions {
            return true;
        }
        // As Kafka: once none of the partitions it waits for is held.
        member.state == MemberState::UnreleasedPartitions
            && self.target.get(member_id).is_some_and(|target| {
                target.iter().all(|(topic, partitions)| {
                    partitions.iter().all(|p| {
                        contains(&member.assigned, topic, *p)
                            || !self.held_elsewhere(member_id, topic, *p)
                    })
                })
            })
    }

    fn supports_classic(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type != CONSUMER_PROTOCOL_TYPE || protocols.is_empty() {
            return false;
        }
        let others: Vec<&ClassicMeta> = self
            .members
            .values()
            .filter_map(|m| m.classic.as_ref())
            .collect();
        others.is_empty()
            || protocols.iter().any(|(name, _)| {
                others
                    .iter()
                    .all(|meta| meta.protocols.iter().any(|(n, _)| n == name))
            })
    }
}

impl ConsumerGroups {
    /// Takes in a classic group's members (an upgrade, as a member of the
    /// new protocol joins): the group starts at their generation with
    /// their assignments as its target, and the joining member's
    /// heartbeat then rebalances it. Refused when the group exists here
    /// already or is too large.
    ///
    /// # Errors
    /// [`ConsumerGroupError::NotConsumerGroup`].
    pub fn adopt_classic(
        &self,
        group_id: &str,
        generation: i32,
        members: Vec<ClassicMember>,
        catalog: &TopicCatalog,
        now: Instant,
    ) -> Result<(), ConsumerGroupError> {
        let mut groups = self.groups();
        if groups.get(group_id).is_some_and(|g| !g.members.is_empty())
            || members.len() >= self.settings.max_size
        {
            return Err(ConsumerGroupError::NotConsumerGroup(group_id.to_owned()));
        }
        let group = self.adopted(group_id, generation, members, catalog, now);
        groups.insert(group_id.to_owned(), group);
        Ok(())
    }

    /// A consumer group made of a classic group's members: at their
    /// generation, each keeping its assignment as its target.
    pub(super) fn adopted(
        &self,
        group_id: &str,
        generation: i32,
        members: Vec<ClassicMember>,
        catalog: &TopicCatalog,
        now: Instant,
    ) -> Group {
        let mut group = Group::new(self.default_assignor());
        group.epoch = generation;
        group.assignment_epoch = generation;
        for classic in members {
            let mut member = Member::new(&super::Heartbeat::default(), now);
            let mut names = classic.topics;
            names.sort();
            names.dedup();
            member.instance_id = classic.instance_id;
            member.client_id = classic.client_id;
            member.client_host = classic.client_host;
            member.epoch = generation;
            member.previous_epoch = generation;
            member.names = names;
            member.rebalance_timeout = classic.rebalance_timeout;
            member.session_deadline = now + classic.session_timeout;
            member.assigned = classic.assigned.clone();
            member.classic = Some(ClassicMeta {
                session_timeout: classic.session_timeout,
                protocols: classic.protocols,
            });
            group
                .target
                .insert(classic.member_id.clone(), classic.assigned);
            group.members.insert(classic.member_id, member);
        }
        group.subscribed = group.resolve(catalog);
        tracing::info!(
            group = group_id,
            members = group.members.len(),
            generation,
            "classic group upgraded to a consumer group"
        );
        group
    }

    /// JoinGroup of a classic member to a consumer group with members.
    ///
    /// # Errors
    /// [`ConsumerGroupError::UnknownMemberId`] (no such group, or an
    /// unknown member id), `InconsistentGroupProtocol`, `GroupMaxSizeReached`,
    /// `FencedInstanceId`.
    pub fn classic_join(
        &self,
        join: ClassicJoin,
        catalog: &TopicCatalog,
        now: Instant,
    ) -> Result<ClassicJoined, ConsumerGroupError> {
        let mut groups = self.groups();
        self.load(&mut groups, &join.group_id, now);
        let group = groups
            .get_mut(&join.group_id)
            .filter(|g| !g.members.is_empty())
            .ok_or(ConsumerGroupError::UnknownMemberId)?;
        if !group.supports_classic(&join.protocol_type, &join.protocols) {
            return Err(ConsumerGroupError::InconsistentGroupProtocol(format!(
                "Member {}'s protocols are not supported.",
                join.member_id
            )));
        }
        let member_id = join.member_id.clone();
        // A static member back under a new id takes its place, assignment
        // and all, as Kafka replaces it.
        if let Some(instance) = &join.instance_id
            && let Some(holder) = group.instance_owner(instance)
            && holder != member_id
            && let Some(mut member) = group.members.remove(&holder)
        {
            member.epoch = 0;
            member.previous_epoch = 0;
            member.state = MemberState::Stable;
            member.revoking.clear();
            member.revocation_deadline = None;
            // Its subscription is the joiner's (set below), not what a
            // holder of the new protocol had.
            member.regex = None;
            member.server_assignor = None;
            member.rack_id = None;
            group.members.insert(member_id.clone(), member);
            if let Some(target) = group.target.remove(&holder) {
                group.target.insert(member_id.clone(), target);
            }
        }
        let mut subscription_changed = false;
        if !group.members.contains_key(&member_id) {
            if group.members.len() >= self.settings.max_size {
                return Err(ConsumerGroupError::GroupMaxSizeReached);
            }
            group.members.insert(
                member_id.clone(),
                Member::new(&super::Heartbeat::default(), now),
            );
            subscription_changed = true;
        }
        let Some(member) = group.members.get_mut(&member_id) else {
            return Err(ConsumerGroupError::UnknownMemberId);
        };
        member.instance_id = join.instance_id.clone();
        member.client_id = join.client_id;
        member.client_host = join.client_host;
        member.rebalance_timeout = join.rebalance_timeout;
        member.session_deadline = now + join.session_timeout;
        let protocol_name = join
            .protocols
            .first()
            .map(|(name, _)| name.clone())
            .unwrap_or_default();
        member.classic = Some(ClassicMeta {
            session_timeout: join.session_timeout,
            protocols: join.protocols,
        });
        if member.state != MemberState::UnrevokedPartitions {
            member.revocation_deadline = None;
        }
        let mut names = join.topics;
        names.sort();
        names.dedup();
        if names != member.names {
            member.names = names;
            subscription_changed = true;
        }
        group.rebalance_if_changed(subscription_changed, catalog, self.default_assignor());
        group.reconcile(&member_id, Some(&join.owned), now);
        let generation = group
            .members
            .get(&member_id)
            .map_or(0, |member| member.epoch);
        Ok(ClassicJoined {
            member_id,
            generation,
            protocol_name,
        })
    }

    /// SyncGroup of a classic member: what it may own now.
    ///
    /// # Errors
    /// `UnknownMemberId`, `FencedInstanceId`, `IllegalGeneration`,
    /// `InconsistentGroupProtocol`, `RebalanceInProgress` (it must rejoin
    /// first).
    pub fn classic_sync(
        &self,
        group_id: &str,
        (member_id, instance_id): (&str, Option<&str>),
        generation: i32,
        (protocol_type, protocol_name): (Option<&str>, Option<&str>),
        now: Instant,
    ) -> Result<ClassicSynced, ConsumerGroupError> {
        let mut groups = self.groups();
        self.load(&mut groups, group_id, now);
        let group = groups
            .get_mut(group_id)
            .ok_or(ConsumerGroupError::UnknownMemberId)?;
        let id = group.classic_member_id(member_id, instance_id, false)?;
        let group_epoch = group.epoch;
        let Some(member) = group.members.get_mut(&id) else {
            return Err(ConsumerGroupError::UnknownMemberId);
        };
        let Some(meta) = &member.classic else {
            return Err(ConsumerGroupError::UnknownMemberId);
        };
        if generation != member.epoch {
            return Err(ConsumerGroupError::IllegalGeneration);
        }
        member.session_deadline = now + meta.session_timeout;
        let (name, metadata) = first_protocol(meta);
        if protocol_type.is_some_and(|t| t != CONSUMER_PROTOCOL_TYPE)
            || protocol_name.is_some_and(|n| n != name)
        {
            return Err(ConsumerGroupError::InconsistentGroupProtocol(format!(
                "the protocol of member {id}'s SyncGroup is not the one its JoinGroup was answered with"
            )));
        }
        if group_epoch > member.epoch && member.state != MemberState::UnrevokedPartitions {
            return Err(ConsumerGroupError::RebalanceInProgress);
        }
        Ok(ClassicSynced {
            assignment: member.assigned.clone(),
            protocol_name: name,
            metadata,
        })
    }

    /// Heartbeat of a classic member: its session restarts;
    /// `RebalanceInProgress` tells it to rejoin (and it must within its
    /// rebalance timeout, or be fenced).
    ///
    /// # Errors
    /// `UnknownMemberId`, `FencedInstanceId`, `IllegalGeneration`,
    /// `RebalanceInProgress`.
    pub fn classic_heartbeat(
        &self,
        group_id: &str,
        (member_id, instance_id): (&str, Option<&str>),
        generation: i32,
        now: Instant,
    ) -> Result<(), ConsumerGroupError> {
        let mut groups = self.groups();
        self.load(&mut groups, group_id, now);
        let group = groups
            .get_mut(group_id)
            .ok_or(ConsumerGroupError::UnknownMemberId)?;
        let id = group.classic_member_id(member_id, instance_id, false)?;
        let rejoin = group.classic_must_rejoin(&id);
        let Some(member) = group.members.get_mut(&id) else {
            return Err(ConsumerGroupError::UnknownMemberId);
        };
        if generation != member.epoch {
            return Err(ConsumerGroupError::IllegalGeneration);
        }
        let session = member
            .classic
            .as_ref()
            .map_or(Duration::ZERO, |meta| meta.session_timeout);
        member.session_deadline = now + session;
        if rejoin {
            member
                .revocation_deadline
                .get_or_insert(now + member.rebalance_timeout);
            return Err(ConsumerGroupError::RebalanceInProgress);
        }
        Ok(())
    }

    /// LeaveGroup of classic members, one result each.
    pub fn classic_leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), ConsumerGroupError>> {
        let mut groups = self.groups();
        self.load(&mut groups, group_id, Instant::now());
        let Some(group) = groups.get_mut(group_id) else {
            return members
                .iter()
                .map(|_| Err(ConsumerGroupError::UnknownMemberId))
                .collect();
        };
        members
            .iter()
            .map(|(member_id, instance)| {
                let id = group.classic_member_id(member_id, instance.as_deref(), true)?;
                group.remove(&id);
                Ok(())
            })
            .collect()
    }

    /// Hands the groups whose members left or were fenced and that now
    /// hold only classic members to `adopt` (a downgrade: the classic
    /// coordinator takes them at the generation their members reached),
    /// with this coordinator's lock held, so a group is never in neither
    /// coordinator. A group `adopt` hands back stays here.
    pub fn downgrade(
        &self,
        adopt: impl Fn(&str, i32, Vec<ClassicMember>) -> Result<(), Vec<ClassicMember>>,
    ) {
        let downgrades = self.settings.migration.downgrades();
        let mut groups = self.groups();
        let ready: Vec<String> = groups
            .iter_mut()
            .filter_map(|(id, group)| {
                let removed = std::mem::take(&mut group.removed) && downgrades;
                let all_classic = !group.members.is_empty()
                    && group.members.values().all(|m| m.classic.is_some());
                (removed && all_classic).then(|| id.clone())
            })
            .collect();
        for id in ready {
            let Some(group) = groups.get(&id) else {
                continue;
            };
            // The classic group goes on at the epoch its members reached,
            // as Kafka keeps the group epoch: their commits stay valid
            // while they rejoin.
            let generation = group
                .members
                .values()
                .map(|m| m.epoch)
                .max()
                .unwrap_or(group.epoch);
            let members: Vec<ClassicMember> = group
                .members
                .iter()
                .filter_map(|(member_id, member)| {
                    let meta = member.classic.as_ref()?;
                    Some(ClassicMember {
                        member_id: member_id.clone(),
                        instance_id: member.instance_id.clone(),
                        client_id: member.client_id.clone(),
                        client_host: member.client_host.clone(),
                        session_timeout: meta.session_timeout,
                        rebalance_timeout: member.rebalance_timeout,
                        protocols: meta.protocols.clone(),
                        topics: member.names.clone(),
                        // What it may still own: what it was given and
                        // what it is giving up.
                        assigned: member.assigned.iter().chain(&member.revoking).fold(
                            Assignment::new(),
                            |mut all, (topic, ps)| {
                                all.entry(*topic).or_default().extend(ps.iter().copied());
                                all
                            },
                        ),
                    })
                })
                .collect();
            match adopt(&id, generation, members) {
                Ok(()) => {
                    groups.remove(&id);
                    tracing::info!(group = %id, generation, "consumer group downgraded to a classic group");
                }
                Err(_) => {
                    tracing::warn!(group = %id, "a classic group of the id has members: the consumer group stays");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
