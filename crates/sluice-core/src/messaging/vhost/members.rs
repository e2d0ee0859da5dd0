//! Membership of quorum queues on a cluster, as RabbitMQ's
//! `rabbitmq-queues add_member / delete_member / grow / shrink` and
//! `rebalance quorum`: each change is a reassignment of the queue's
//! partition, carried out by the controller as for any partition (a new
//! member fetches the partition from the leader and counts once in sync; a
//! removed member stops and deletes its copy; a leader removed hands over
//! to an in-sync member), and the majority a confirm waits for follows the
//! new member count.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_types::PartitionId;

use super::{VirtualHost, VirtualHosts};
use crate::Topic;
use crate::messaging::MessagingError;
use crate::messaging::quorum_store::quorum_topic;

/// Which quorum queues `grow` adds a node to (RabbitMQ's selector).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowSelector {
    /// Every quorum queue the node is not a member of.
    All,
    /// Only those with an even number of members (so that growing keeps
    /// the member count odd).
    Even,
}

/// What a membership command did to one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    pub vhost: String,
    pub queue: String,
    /// The members the queue moves to, or why it was refused.
    pub outcome: Result<Vec<i32>, String>,
}

/// A quorum queue whose leader `rebalance` moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderMove {
    pub vhost: String,
    pub queue: String,
    pub from: i32,
    pub to: i32,
}

impl VirtualHost {
    /// The partition of replicated quorum queue `name`, with its members
    /// as they will be once a move under way ends.
    fn quorum_members(&self, name: &str) -> Result<(Arc<Topic>, Vec<i32>), MessagingError> {
        let definition = self
            .definitions
            .queue(&self.name, name)
            .ok_or_else(|| self.no_queue(name))?;
        let topic = (!definition.store_id.is_empty())
            .then(|| self.topics.get(&quorum_topic(&definition.store_id)))
            .flatten()
            .ok_or_else(|| {
                MessagingError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{}' is not a quorum queue replicated on this cluster",
                    self.name
                ))
            })?;
        let mut members = topic.replicas(PartitionId::from(0)).unwrap_or_default();
        if let Some(moving) = self
            .topics
            .reassignments()
            .into_iter()
            .find(|moving| moving.topic == topic.name())
        {
            members.retain(|member| !moving.removing.contains(member));
        }
        Ok((topic, members))
    }

    /// Moves quorum queue `name`'s partition to `members` (the preferred
    /// leader first) and sets the majority a confirm waits for to theirs.
    fn move_quorum(&self, topic: &Topic, members: Vec<i32>) -> Result<Vec<i32>, MessagingError> {
        let majority = members.len() / 2 + 1;
        self.topics
            .reassign(topic.name(), 0, Some(members.clone()))?;
        let config = crate::TopicConfig::new([("min.insync.replicas", majority.to_string())])?;
        self.topics.set_config(topic.name(), config)?;
        Ok(members)
    }

    /// Adds node `node` to quorum queue `name`'s members (RabbitMQ's
    /// `add_member`); returns the members it moves to. The new member
    /// fetches the queue's partition and counts once it is in sync.
    /// Blocking.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown queue; PRECONDITION_FAILED for a queue
    /// that is not a replicated quorum queue, already has `node`, or for a
    /// node that is not registered or is fenced.
    pub fn add_quorum_member(&self, name: &str, node: i32) -> Result<Vec<i32>, MessagingError> {
        let (topic, mut members) = self.quorum_members(name)?;
        let metadata = self.topics.metadata();
        if !metadata.brokers().iter().any(|b| b.node == node) || metadata.fenced().contains(&node) {
            return Err(MessagingError::PreconditionFailed(format!(
                "node {node} is not registered in the cluster, or is fenced"
            )));
        }
        if members.contains(&node) {
            return Err(MessagingError::PreconditionFailed(format!(
                "node {node} is already a member of queue '{name}' in vhost '{}'",
                self.name
            )));
        }
        members.push(node);
        self.move_quorum(&topic, members)
    }

    /// Removes node `node` from quorum queue `name`'s members (RabbitMQ's
    /// `delete_member`); returns the members it moves to. A leader removed
    /// hands over to an in-sync member. Blocking.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown queue; PRECONDITION_FAILED for a queue
    /// that is not a replicated quorum queue, does not have `node`, or has
    /// no other member; the metadata's refusal.
    pub fn delete_quorum_member(&self, name: &str, node: i32) -> Result<Vec<i32>, MessagingError> {
        let (topic, mut members) = self.quorum_members(name)?;
        if !members.contains(&node) {
            return Err(MessagingError::PreconditionFailed(format!(
                "node {node} is not a member of queue '{name}' in vhost '{}'",
                self.name
            )));
        }
        if members.len() == 1 {
            return Err(MessagingError::PreconditionFailed(format!(
                "node {node} is the last member of queue '{name}' in vhost '{}'",
                self.name
            )));
        }
        members.retain(|member| *member != node);
        self.move_quorum(&topic, members)
    }

    /// Makes node `node`, an in-sync member, quorum queue `name`'s
    /// preferred leader and elects it. Blocking.
    fn move_quorum_leader(&self, name: &str, node: i32) -> Result<(), MessagingError> {
        let (topic, mut members) = self.quorum_members(name)?;
        members.retain(|member| *member != node);
        members.insert(0, node);
        self.topics.reassign(topic.name(), 0, Some(members))?;
        match self.topics.elect(topic.name(), 0, false) {
            Ok(_) => Ok(()),
            // The controller elected the new first member itself, first
            // (its preferred leader): the election asked for here comes
            // in an epoch that has passed.
            Err(_)
                if topic.leader(PartitionId::from(0)).map(|(leader, _)| leader) == Some(node) =>
            {
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The replicated quorum queues here, by name.
    fn replicated_quorum_names(&self) -> Vec<String> {
        self.definitions
            .quorum_queues(&self.name)
            .into_iter()
            .filter(|definition| self.is_replicated_quorum(definition))
            .map(|definition| definition.name)
            .collect()
    }
}

impl VirtualHosts {
    /// The virtual hosts named, or every one when `vhost` is `None`.
    fn chosen(&self, vhost: Option<&str>) -> Vec<Arc<VirtualHost>> {
        self.all()
            .into_iter()
            .filter(|host| vhost.is_none_or(|name| host.name == name))
            .collect()
    }

    /// Applies `change` to every quorum queue (of `vhost`, or all) whose
    /// members `wanted` picks; what it did to each.
    fn change_members(
        &self,
        vhost: Option<&str>,
        wanted: impl Fn(&[i32]) -> bool,
        change: impl Fn(&VirtualHost, &str) -> Result<Vec<i32>, MessagingError>,
    ) -> Vec<MemberChange> {
        let mut changes = Vec::new();
        for host in self.chosen(vhost) {
            for queue in host.replicated_quorum_names() {
                let Ok((_, members)) = host.quorum_members(&queue) else {
                    continue;
                };
                if !wanted(&members) {
                    continue;
                }
                let outcome = change(&host, &queue).map_err(|error| error.to_string());
                changes.push(MemberChange {
                    vhost: host.name.clone(),
                    queue,
                    outcome,
                });
            }
        }
        changes
    }

    /// Adds node `node` to every quorum queue (of `vhost`, or all) that
    /// `selector` picks and it is not a member of (RabbitMQ's `grow`).
    /// Blocking.
    pub fn grow_quorum(
        &self,
        node: i32,
        selector: GrowSelector,
        vhost: Option<&str>,
    ) -> Vec<MemberChange> {
        self.change_members(
            vhost,
            |members| {
                !members.contains(&node)
                    && (selector == GrowSelector::All || members.len() % 2 == 0)
            },
            |host, queue| host.add_quorum_member(queue, node),
        )
    }

    /// Removes node `node` from every quorum queue (of `vhost`, or all)
    /// it is a member of (RabbitMQ's `shrink`); a queue of which it is the
    /// last member is reported, not changed. Blocking.
    pub fn shrink_quorum(&self, node: i32, vhost: Option<&str>) -> Vec<MemberChange> {
        self.change_members(
            vhost,
            |members| members.contains(&node),
            |host, queue| host.delete_quorum_member(queue, node),
        )
    }

    /// Spreads the leaders of the quorum queues (of `vhost`, or all) over
    /// the live nodes (RabbitMQ's `rebalance quorum`): a queue whose
    /// leader leads more than its share moves to the in-sync member
    /// leading the fewest. Blocking.
    pub fn rebalance_quorum(&self, vhost: Option<&str>) -> Vec<LeaderMove> {
        let mut queues = Vec::new();
        for host in self.chosen(vhost) {
            for queue in host.replicated_quorum_names() {
                if let Some(placement) = host.quorum_placement(&queue)
                    && placement.leader >= 0
                {
                    queues.push((Arc::clone(&host), queue, placement));
                }
            }
        }
        let Some(host) = queues.first().map(|(host, _, _)| Arc::clone(host)) else {
            return Vec::new();
        };
        let fenced = host.topics.metadata().fenced();
        let mut led: BTreeMap<i32, usize> = host
            .topics
            .metadata()
            .brokers()
            .into_iter()
            .map(|broker| broker.node)
            .filter(|node| !fenced.contains(node))
            .map(|node| (node, 0))
            .collect();
        if led.is_empty() {
            return Vec::new();
        }
        // Leaders on fenced nodes are not counted (the controller moves
        // those queues itself) and their queues are left alone below.
        for (_, _, placement) in &queues {
            if let Some(count) = led.get_mut(&placement.leader) {
                *count += 1;
            }
        }
        let share = queues.len().div_ceil(led.len());
        let mut moves = Vec::new();
        for (host, queue, placement) in queues {
            if led.get(&placement.leader).copied().unwrap_or(0) <= share {
                continue;
            }
            let Some(to) = placement
                .in_sync
                .iter()
                .copied()
                .filter(|member| *member != placement.leader)
                .filter_map(|member| led.get(&member).map(|count| (*count, member)))
                .filter(|(count, _)| *count < share)
                .min()
                .map(|(_, member)| member)
            else {
                continue;
            };
            match host.move_quorum_leader(&queue, to) {
                Ok(()) => {
                    *led.entry(placement.leader).or_default() -= 1;
                    *led.entry(to).or_default() += 1;
                    tracing::info!(vhost = %host.name, %queue, from = placement.leader, to, "quorum queue leader moved to rebalance");
                    moves.push(LeaderMove {
                        vhost: host.name.clone(),
                        queue,
                        from: placement.leader,
                        to,
                    });
                }
                Err(error) => {
                    tracing::warn!(vhost = %host.name, %queue, %error, "cannot move a quorum queue's leader");
                }
            }
        }
        moves
    }
}
