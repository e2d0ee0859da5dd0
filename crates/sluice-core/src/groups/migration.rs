//! A classic group's members handed to a consumer group (an upgrade) and
//! back (a downgrade): Kafka 4's online migration, the classic side. See
//! `consumer_groups/classic.rs` for the other.

use bytes::Bytes;
use tokio::time::Instant;

use super::{Group, GroupCoordinator, GroupError, GroupState, JoinResponse, Member, SyncResponse};
use crate::consumer_groups::{CONSUMER_PROTOCOL_TYPE, ClassicMember};

/// A classic group as an upgrade reads it: its generation and its members,
/// with their protocols and current assignment bytes (the front-end
/// decodes the consumer protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeCandidate {
    pub generation: i32,
    /// (member, its assignment as the leader gave it).
    pub members: Vec<(ClassicMember, Bytes)>,
}

impl GroupCoordinator {
    /// A classic group of the consumer protocol with members, as an
    /// upgrade would take it; `None` for any other.
    pub fn upgrade_candidate(&self, group_id: &str) -> Option<UpgradeCandidate> {
        let groups = self.groups();
        let group = groups.get(group_id)?;
        if group.members.is_empty()
            || group.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE)
        {
            return None;
        }
        let members = group
            .members
            .iter()
            .map(|(id, m)| {
                (
                    ClassicMember {
                        member_id: id.clone(),
                        instance_id: m.group_instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        session_timeout: m.session_timeout,
                        rebalance_timeout: m.rebalance_timeout,
                        protocols: m.protocols.clone(),
                        topics: Vec::new(),
                        assigned: Default::default(),
                    },
                    m.assignment.clone(),
                )
            })
            .collect();
        Some(UpgradeCandidate {
            generation: group.generation,
            members,
        })
    }

    /// Removes a classic group for an upgrade, if it is still at
    /// `generation`; members waiting in a join or sync are told to rejoin
    /// (REBALANCE_IN_PROGRESS), as Kafka does.
    pub fn remove_for_upgrade(&self, group_id: &str, generation: i32) -> bool {
        let mut groups = self.groups();
        if groups
            .get(group_id)
            .is_none_or(|group| group.generation != generation)
        {
            return false;
        }
        let Some(group) = groups.remove(group_id) else {
            return false;
        };
        for (member_id, member) in group.members {
            if let Some(waiter) = member.join_waiter {
                let _ = waiter.send(JoinResponse {
                    error: Some(GroupError::RebalanceInProgress),
                    member_id,
                    generation: -1,
                    ..JoinResponse::default()
                });
            }
            if let Some(waiter) = member.sync_waiter {
                let _ = waiter.send(SyncResponse {
                    error: Some(GroupError::RebalanceInProgress),
                    ..SyncResponse::default()
                });
            }
        }
        true
    }

    /// Takes in a consumer group's classic members (a downgrade): a
    /// classic group at `generation`, rebalancing at once, so the members
    /// rejoin within their rebalance timeout (or are removed). `false` when
    /// a classic group of that id has members already.
    pub fn adopt(&self, group_id: &str, generation: i32, members: Vec<ClassicMember>) -> bool {
        let mut groups = self.groups();
        if groups.get(group_id).is_some_and(|g| !g.members.is_empty()) || members.is_empty() {
            return false;
        }
        let now = Instant::now();
        let mut group = Group::new();
        group.generation = generation;
        group.protocol_type = Some(CONSUMER_PROTOCOL_TYPE.to_owned());
        group.state = GroupState::Stable;
        for classic in members {
            if let Some(instance) = &classic.instance_id {
                group
                    .instances
                    .insert(instance.clone(), classic.member_id.clone());
            }
            group.members.insert(
                classic.member_id,
                Member {
                    group_instance_id: classic.instance_id,
                    client_id: classic.client_id,
                    client_host: classic.client_host,
                    session_timeout: classic.session_timeout,
                    rebalance_timeout: classic.rebalance_timeout,
                    protocols: classic.protocols,
                    assignment: Bytes::new(),
                    deadline: now + classic.session_timeout,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        group.protocol = group.choose_protocol();
        group.leader = group.members.keys().next().cloned();
        groups.insert(group_id.to_owned(), group);
        if let Some(group) = groups.get_mut(group_id) {
            self.prepare_rebalance(group_id, group);
        }
        true
    }
}
