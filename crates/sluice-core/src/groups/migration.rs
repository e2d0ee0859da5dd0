//! A classic group's members handed to a consumer group (an upgrade) and
//! back (a downgrade): Kafka 4's online migration, the classic side. See
//! `consumer_groups/classic.rs` for the other. Both are called with the
//! consumer groups' lock held (that lock, then this coordinator's), so a
//! group is never in neither coordinator, nor in both.

use bytes::Bytes;
use tokio::time::Instant;

use super::{Group, GroupCoordinator, GroupError, GroupState, JoinResponse, Member, SyncResponse};
use crate::consumer_groups::{CONSUMER_PROTOCOL_TYPE, ClassicMember, ConsumerGroupError};

/// A classic member as an upgrade reads it, for the front-end to decode
/// its consumer-protocol subscription and assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradingMember {
    /// `topics` empty; `assigned` what it carried from a consumer group
    /// (a downgrade) and has not been given anew here.
    pub member: ClassicMember,
    /// Its assignment as its leader encoded it (empty: none yet).
    pub assignment: Bytes,
}

impl GroupCoordinator {
    /// Takes a classic group with members out for an upgrade: `Ok(None)`
    /// when there is no such group (an empty one is dropped), `Ok(Some)`
    /// with its generation and members as `decode` made them (their
    /// subscriptions and assignments read), the group gone and members
    /// waiting in a join or sync told to rejoin (REBALANCE_IN_PROGRESS), as
    /// Kafka does. The group stays when it is not of the consumer protocol
    /// or `decode` refuses a member, or it has `max_members` members or
    /// more (no room for the joining one).
    ///
    /// # Errors
    /// [`ConsumerGroupError::NotConsumerGroup`].
    pub fn take_for_upgrade(
        &self,
        group_id: &str,
        max_members: usize,
        decode: impl Fn(UpgradingMember) -> Option<ClassicMember>,
    ) -> Result<Option<(i32, Vec<ClassicMember>)>, ConsumerGroupError> {
        let mut groups = self.groups();
        let Some(group) = groups.get(group_id) else {
            return Ok(None);
        };
        if group.members.is_empty() {
            groups.remove(group_id);
            return Ok(None);
        }
        let refuse = || ConsumerGroupError::NotConsumerGroup(group_id.to_owned());
        if group.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE)
            || group.members.len() >= max_members
        {
            return Err(refuse());
        }
        let mut members = Vec::with_capacity(group.members.len());
        for (id, m) in &group.members {
            let upgrading = UpgradingMember {
                member: ClassicMember {
                    member_id: id.clone(),
                    instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout: m.session_timeout,
                    rebalance_timeout: m.rebalance_timeout,
                    protocols: m.protocols.clone(),
                    topics: Vec::new(),
                    assigned: m.carried.clone(),
                },
                assignment: m.assignment.clone(),
            };
            members.push(decode(upgrading).ok_or_else(refuse)?);
        }
        let generation = group.generation;
        let Some(group) = groups.remove(group_id) else {
            return Ok(None);
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
        Ok(Some((generation, members)))
    }

    /// Takes in a consumer group's classic members (a downgrade): a
    /// classic group at `generation`, rebalancing at once, so the members
    /// rejoin within their rebalance timeout (or are removed). Each keeps
    /// what it owned as carried until its new assignment. Handed back
    /// (`Err`) when a classic group of that id has members already.
    ///
    /// # Errors
    /// The members, untouched.
    pub fn adopt(
        &self,
        group_id: &str,
        generation: i32,
        members: Vec<ClassicMember>,
    ) -> Result<(), Vec<ClassicMember>> {
        let mut groups = self.groups();
        if members.is_empty() || groups.get(group_id).is_some_and(|g| !g.members.is_empty()) {
            return Err(members);
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
                    carried: classic.assigned,
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::GroupSettings;
    use crate::consumer_groups::Assignment;

    fn member(id: &str, owned: &[i32]) -> ClassicMember {
        ClassicMember {
            member_id: id.to_owned(),
            instance_id: None,
            client_id: id.to_owned(),
            client_host: "/127.0.0.1".to_owned(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(5),
            protocols: vec![("range".to_owned(), Bytes::from_static(&[0, 0]))],
            topics: vec!["orders".to_owned()],
            assigned: Assignment::from([([1; 16], owned.iter().copied().collect())]),
        }
    }

    /// A group downgraded and upgraded again before its members synced
    /// anew still knows what they own, so nothing is handed out twice.
    #[tokio::test]
    async fn a_downgraded_group_upgraded_again_before_its_sync_keeps_what_members_own() {
        let coordinator = GroupCoordinator::new(GroupSettings::default());
        assert_eq!(
            coordinator.adopt("g", 4, vec![member("a", &[0, 1])]),
            Ok(())
        );
        assert_eq!(
            coordinator
                .adopt("g", 4, vec![member("b", &[2])])
                .map_err(|m| m.len()),
            Err(1),
            "a classic group with members keeps its id: the members are handed back"
        );
        let described = coordinator.describe("g");
        assert_eq!(
            described.map(|d| (d.state, d.members.len())),
            Some((GroupState::PreparingRebalance, 1)),
            "it rebalances at once"
        );
        let taken = coordinator.take_for_upgrade("g", 10, |m| Some(m.member));
        let Ok(Some((generation, members))) = taken else {
            panic!("taken for the upgrade: {taken:?}");
        };
        assert_eq!(generation, 4);
        assert_eq!(
            members.first().map(|m| m.assigned.clone()),
            Some(member("a", &[0, 1]).assigned)
        );
        assert!(
            coordinator.describe("g").is_none(),
            "gone from the classic side"
        );
    }

    #[tokio::test]
    async fn a_group_that_cannot_be_upgraded_stays_as_it_is() {
        let coordinator = GroupCoordinator::new(GroupSettings::default());
        assert_eq!(coordinator.adopt("g", 2, vec![member("a", &[0])]), Ok(()));
        assert!(matches!(
            coordinator.take_for_upgrade("g", 10, |_| None),
            Err(ConsumerGroupError::NotConsumerGroup(_))
        ));
        assert!(
            coordinator.describe("g").is_some(),
            "unreadable metadata leaves the group"
        );
        assert_eq!(
            coordinator.take_for_upgrade("none", 10, |m| Some(m.member)),
            Ok(None)
        );
    }
}
