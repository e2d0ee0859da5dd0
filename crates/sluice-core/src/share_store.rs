//! Where share-partition state is kept: as committed offsets of the
//! broker's own group `__sluice_share-<group>` (the start offset, with the
//! in-flight records as the metadata text), in the offsets log, which a
//! cluster replicates. The partition's leader stores and loads it through
//! the group's coordinator, itself or another node over the inter-node
//! link, so a restart or a new leader finds acknowledged records still
//! acknowledged and acquired ones available again with their delivery
//! counts.

use amq_protocol::types::AMQPValue;
use bytes::Bytes;
use sluice_types::{Offset, PartitionId};

use crate::consumer_groups::TopicId;
use crate::messaging::record_to_message;
use crate::share_groups::{DeadLetter, DeadReason};
use crate::{Acks, Broker, CommittedOffset, Coordinator, CoreError, DeadLetterTarget, Undecodable};

/// The offsets group that holds share group `group`'s state.
pub const SHARE_STATE_PREFIX: &str = "__sluice_share-";

/// DeleteGroups of `<this><group>` from another node: forget what is held
/// in memory of share group `group` (its stored state was altered).
pub const SHARE_FORGET_PREFIX: &str = "__sluice_share_forget-";

/// The stored text of a share partition whose state was deleted
/// (DeleteShareGroupOffsets): it starts anew at `share.auto.offset.reset`.
pub(crate) const DELETED_STATE: &str = "deleted";

fn state_group(group: &str) -> String {
    format!("{SHARE_STATE_PREFIX}{group}")
}

/// Why an admin change of a share group's offsets was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShareAdminError {
    #[error("the share group has members")]
    NonEmpty,
    #[error("no share group {0}")]
    NotFound(String),
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl Broker {
    /// Everything stored for `group`'s share partitions, from its
    /// coordinator.
    fn stored_shares(&self, group: &str) -> Result<Vec<(String, i32, CommittedOffset)>, CoreError> {
        let key = state_group(group);
        match self.offsets().coordinator(&key) {
            Coordinator::Here => self.offsets().committed(&key),
            Coordinator::Node(node) => match self.transactions().peers() {
                Some(peers) => peers.committed_offsets(node, &key),
                None => Err(CoreError::Internal {
                    reason: format!("no link to node {node}, the coordinator of {key:?}"),
                }),
            },
            Coordinator::Unavailable => Err(CoreError::Internal {
                reason: format!("the coordinator of {key:?} is not available"),
            }),
        }
    }

    /// Loads share partition `topic`/`partition` of `group` before this
    /// node first serves it under `leader_epoch` (blocking: it may ask
    /// another node).
    ///
    /// # Errors
    /// The coordinator's or the link's: the partition is not served yet.
    pub fn load_share_partition(
        &self,
        group: &str,
        (topic_name, topic): (&str, TopicId),
        partition: i32,
        leader_epoch: i32,
        (log_start, high_watermark): (i64, i64),
    ) -> Result<(), CoreError> {
        let stored = self
            .stored_shares(group)?
            .into_iter()
            .find(|(t, p, _)| t == topic_name && *p == partition)
            .map(|(_, _, c)| (c.offset, c.metadata.unwrap_or_default()));
        self.share_groups().install(
            (group, topic, partition),
            leader_epoch,
            stored,
            log_start,
            high_watermark,
        );
        Ok(())
    }

    /// Writes `offsets` (topic, partition, state text) to `group`'s stored
    /// share state through its coordinator (blocking).
    fn write_shares(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), CoreError> {
        let key = state_group(group);
        match self.offsets().coordinator(&key) {
            Coordinator::Here => self.offsets().commit(&key, offsets),
            Coordinator::Node(node) => match self.transactions().peers() {
                Some(peers) => peers.commit_offsets(node, &key, offsets),
                None => Err(CoreError::Internal {
                    reason: format!("no link to node {node}"),
                }),
            },
            Coordinator::Unavailable => Err(CoreError::Internal {
                reason: "the coordinator is not available".to_owned(),
            }),
        }
    }

    /// Every node forgets what it holds in memory of `group`'s share
    /// partitions, so that their leaders load the stored state afresh.
    /// Blocking.
    ///
    /// # Errors
    /// A node that could not be told (it would serve what it holds).
    fn forget_share_state_everywhere(&self, group: &str) -> Result<(), CoreError> {
        {
            let _storing = self.share_groups().storing();
            self.share_groups().forget_partitions(group);
        }
        let Some(peers) = self.transactions().peers() else {
            return Ok(());
        };
        let key = format!("{SHARE_FORGET_PREFIX}{group}");
        for node in self.other_live_nodes() {
            peers.delete_group(node, &key)?;
        }
        Ok(())
    }

    /// The other registered nodes the controller has not fenced (a fenced
    /// node leads no partition); none on a single node.
    pub(crate) fn other_live_nodes(&self) -> Vec<i32> {
        let metadata = self.topics().metadata();
        let fenced = metadata.fenced();
        let own = self.node_id();
        metadata
            .brokers()
            .into_iter()
            .map(|b| b.node)
            .filter(|node| *node != own && !fenced.contains(node))
            .collect()
    }

    /// Whether the offsets of `group` may be altered or deleted: it is not
    /// a group of another kind (GROUP_ID_NOT_FOUND, as Kafka answers for
    /// "not a share group"), and has no members.
    fn check_share_admin(&self, group: &str) -> Result<(), ShareAdminError> {
        if self.consumer_groups().exists(group).is_some() || self.groups().describe(group).is_some()
        {
            return Err(ShareAdminError::NotFound(group.to_owned()));
        }
        if self.share_groups().exists(group) == Some(true) {
            return Err(ShareAdminError::NonEmpty);
        }
        Ok(())
    }

    /// The share-partition start offsets stored for `group` (Kafka's
    /// DescribeShareGroupOffsets): (topic, partition, start). Blocking.
    ///
    /// # Errors
    /// [`ShareAdminError::NotFound`] for a group neither here nor stored,
    /// and the coordinator's.
    pub fn share_start_offsets(
        &self,
        group: &str,
    ) -> Result<Vec<(String, i32, i64)>, ShareAdminError> {
        let stored = self.stored_shares(group)?;
        if stored.is_empty() && self.share_groups().exists(group).is_none() {
            return Err(ShareAdminError::NotFound(group.to_owned()));
        }
        Ok(stored
            .into_iter()
            .filter(|(_, _, c)| c.metadata.as_deref() != Some(DELETED_STATE))
            .map(|(topic, partition, c)| (topic, partition, c.offset))
            .collect())
    }

    /// Sets the start offsets of an empty share group's partitions (Kafka's
    /// AlterShareGroupOffsets): nothing in flight, every record from
    /// `start` on delivered anew. `offsets`: (topic, its id, partition,
    /// start). Blocking.
    ///
    /// # Errors
    /// [`ShareAdminError::NonEmpty`] while it has members, the
    /// coordinator's and the links'.
    pub fn alter_share_offsets(
        &self,
        group: &str,
        offsets: &[(String, TopicId, i32, i64)],
    ) -> Result<(), ShareAdminError> {
        self.check_share_admin(group)?;
        self.forget_share_state_everywhere(group)?;
        let written: Vec<(String, i32, CommittedOffset)> = offsets
            .iter()
            .map(|(topic, id, partition, start)| {
                let (start, text) = crate::share_groups::SharePartition::new(*start).snapshot(id);
                (
                    topic.clone(),
                    *partition,
                    CommittedOffset {
                        offset: start,
                        leader_epoch: -1,
                        metadata: Some(text),
                    },
                )
            })
            .collect();
        self.write_shares(group, &written)?;
        Ok(())
    }

    /// Deletes the share state of every partition of `topics` for an empty
    /// share group (Kafka's DeleteShareGroupOffsets): they start anew at
    /// `share.auto.offset.reset`. Blocking.
    ///
    /// # Errors
    /// As [`Broker::alter_share_offsets`], and
    /// [`ShareAdminError::NotFound`] for a group neither here nor stored.
    pub fn delete_share_offsets(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<(), ShareAdminError> {
        self.check_share_admin(group)?;
        let stored = self.stored_shares(group)?;
        if stored.is_empty() && self.share_groups().exists(group).is_none() {
            return Err(ShareAdminError::NotFound(group.to_owned()));
        }
        self.forget_share_state_everywhere(group)?;
        let deleted: Vec<(String, i32, CommittedOffset)> = stored
            .into_iter()
            .filter(|(topic, _, _)| topics.contains(topic))
            .map(|(topic, partition, _)| {
                (
                    topic,
                    partition,
                    CommittedOffset {
                        offset: -1,
                        leader_epoch: -1,
                        metadata: Some(DELETED_STATE.to_owned()),
                    },
                )
            })
            .collect();
        self.write_shares(group, &deleted)?;
        Ok(())
    }

    /// Whether anything is stored for share group `group` (a group
    /// deleted after a restart has no members here, only its state).
    /// Blocking.
    pub fn has_share_state(&self, group: &str) -> bool {
        self.stored_shares(group)
            .is_ok_and(|stored| !stored.is_empty())
    }

    /// Deletes share group `group`'s partition state, as Kafka's
    /// DeleteGroups deletes a share group's state: every node forgets what
    /// it holds of it (the partitions' leaders), and its coordinator
    /// deletes what is stored, so a group of that id starts anew at
    /// `share.auto.offset.reset`. Blocking.
    ///
    /// # Errors
    /// The coordinator's or its link's; a node other than the
    /// coordinator that cannot be reached is logged (it forgets the state
    /// at its next leader change).
    pub fn delete_share_state(&self, group: &str) -> Result<(), CoreError> {
        // Every node forgets first, each after its store in progress (so no
        // store of the group is under way anywhere), then the coordinator
        // deletes: nothing written before can land after the delete.
        {
            let _storing = self.share_groups().storing();
            self.share_groups().forget_partitions(group);
        }
        if let Some(peers) = self.transactions().peers() {
            let forget = format!("{SHARE_FORGET_PREFIX}{group}");
            for node in self.other_live_nodes() {
                if let Err(error) = peers.delete_group(node, &forget) {
                    tracing::warn!(%error, group, node, "a node could not be told a share group was deleted");
                }
            }
        }
        let key = state_group(group);
        match self.offsets().coordinator(&key) {
            Coordinator::Here => self.offsets().delete_group(&key),
            Coordinator::Node(node) => match self.transactions().peers() {
                Some(peers) => peers.delete_group(node, &key),
                None => Err(CoreError::Internal {
                    reason: format!("no link to node {node}"),
                }),
            },
            Coordinator::Unavailable => Err(CoreError::Internal {
                reason: format!("the coordinator of {key:?} is not available"),
            }),
        }
    }

    /// Another node deleted share group `<group>` or altered its offsets:
    /// `key` `__sluice_share_forget-<group>` makes this node forget what
    /// it holds of it in memory (after any store of it in progress);
    /// `__sluice_share-<group>` deletes what is stored, here its
    /// coordinator. Blocking.
    ///
    /// # Errors
    /// [`CoreError::NotCoordinator`] when asked to delete what another node
    /// coordinates; the offsets log's.
    pub fn forget_share_state(&self, key: &str) -> Result<(), CoreError> {
        if let Some(group) = key.strip_prefix(SHARE_FORGET_PREFIX) {
            let _storing = self.share_groups().storing();
            self.share_groups().forget_partitions(group);
            return Ok(());
        }
        if !key.starts_with(SHARE_STATE_PREFIX) {
            return Ok(());
        }
        match self.offsets().coordinator(key) {
            Coordinator::Here => self.offsets().delete_group(key),
            Coordinator::Node(node) => Err(CoreError::NotCoordinator {
                group: key.to_owned(),
                coordinator: Some(node),
            }),
            Coordinator::Unavailable => Err(CoreError::NotCoordinator {
                group: key.to_owned(),
                coordinator: None,
            }),
        }
    }

    /// Stores every share-partition state changed since the last call
    /// (blocking); a state that could not be stored is tried again next
    /// time.
    pub fn store_share_state(&self) {
        // One store at a time: a newer snapshot is never overtaken by an
        // older one, and a request whose change another call took waits
        // here until it is stored.
        let _storing = self.share_groups().storing();
        let catalog = self.topic_catalog();
        self.share_groups().retain_led(|topic, partition, epoch| {
            catalog
                .name_of(topic)
                .and_then(|name| self.topics().get(name))
                .and_then(|t| t.local_partition(PartitionId::from(partition)).ok())
                .is_some_and(|p| p.leader_epoch().get() == epoch)
        });
        // Dead letters go out before the state that archived them is
        // stored (a state waits while it has letters not yet out): a crash
        // between the two redelivers the record, and may dead-letter it
        // twice, but never loses it.
        self.dead_letter();
        let dirty = self.share_groups().take_dirty(tokio::time::Instant::now());
        if dirty.is_empty() {
            return;
        }
        for (group, topic, partition, start, text) in dirty {
            let Some(name) = catalog.name_of(&topic).map(str::to_owned) else {
                continue; // the topic is gone
            };
            let offsets = [(
                name,
                partition,
                CommittedOffset {
                    offset: start,
                    leader_epoch: -1,
                    metadata: Some(text),
                },
            )];
            if let Err(error) = self.write_shares(&group, &offsets) {
                tracing::warn!(%error, group, partition, "share-partition state not stored yet");
                self.share_groups().mark_dirty(&group, topic, partition);
            }
        }
    }
}

impl Broker {
    /// Publishes the records share groups archived (rejected, or at the
    /// delivery limit) to the AMQP exchange the group's
    /// `sluice.share.dead.letter.exchange` names (or else their topic's),
    /// as RabbitMQ dead-letters: the record as the bridge maps it, routed
    /// by the group's `sluice.share.dead.letter.routing.key` or else its
    /// key, with
    /// `x-share-group`, `x-delivery-count` and `x-death-reason` headers.
    /// What cannot be published yet is tried again next time.
    fn dead_letter(&self) {
        let catalog = self.topic_catalog();
        for (group, topic_id, index, dead) in
            self.share_groups().take_dead(tokio::time::Instant::now())
        {
            let Some(name) = catalog.name_of(&topic_id).map(str::to_owned) else {
                continue;
            };
            let Some(topic) = self.topics().get(&name) else {
                continue;
            };
            // The group's own target (an empty exchange: none), else the
            // topic's, routed by the group's routing key or each record's.
            let config = self.group_config(&group);
            let target = config.share_dead_letter().unwrap_or_else(|| {
                topic
                    .config()
                    .share_dead_letter()
                    .map(|(vhost, exchange)| DeadLetterTarget {
                        vhost,
                        exchange,
                        routing_key: config.share_dead_letter_routing_key(),
                    })
            });
            let Some(target) = target else {
                continue;
            };
            let published = self.publish_dead(&group, &topic, index, &target, &dead);
            if let Err(error) = published {
                tracing::warn!(%error, group, topic = name, partition = index, "share dead letters not published yet");
                self.share_groups().restore_dead(
                    (&group, topic_id, index),
                    dead,
                    tokio::time::Instant::now(),
                );
            }
        }
    }

    fn publish_dead(
        &self,
        group: &str,
        topic: &crate::Topic,
        index: i32,
        target: &DeadLetterTarget,
        dead: &[DeadLetter],
    ) -> Result<(), String> {
        let (vhost, exchange) = (target.vhost.as_str(), target.exchange.as_str());
        let partition = topic
            .local_partition(PartitionId::from(index))
            .map_err(|e| e.to_string())?;
        let vhost = self
            .vhosts()
            .get(vhost)
            .ok_or_else(|| format!("no virtual host '{vhost}'"))?;
        let mut wanted: Vec<DeadLetter> = dead.to_vec();
        wanted.sort_by_key(|d| d.offset);
        let mut acks = Acks::default();
        let mut next = wanted.first().map_or(0, |d| d.offset);
        // Bounded: each read moves past at least one batch.
        for _ in 0..wanted.len().max(1) * 4 {
            let Some(letter) = wanted.iter().find(|d| d.offset >= next) else {
                break;
            };
            let Some(chunk) = partition
                .read_chunk(
                    Offset::from(letter.offset),
                    256 << 10,
                    Undecodable::SkipRest,
                )
                .map_err(|e| e.to_string())?
            else {
                break;
            };
            for record in chunk.deliverable(Offset::from(letter.offset)) {
                let Some(letter) = wanted.iter().find(|d| d.offset == record.offset) else {
                    continue;
                };
                let headers: Vec<(&str, Option<&[u8]>)> = record
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_ref().map(Bytes::as_ref)))
                    .collect();
                let reason = match letter.reason {
                    DeadReason::Rejected => "rejected",
                    DeadReason::DeliveryLimit => "delivery_limit",
                };
                let extra = [
                    ("x-share-group", AMQPValue::LongString(group.into())),
                    (
                        "x-delivery-count",
                        AMQPValue::LongLongInt(i64::from(letter.deliveries)),
                    ),
                    ("x-death-reason", AMQPValue::LongString(reason.into())),
                ];
                let mut message = record_to_message(
                    record.key.as_deref(),
                    record.value.as_deref(),
                    &headers,
                    &extra,
                );
                if message.properties.delivery_mode().is_none() {
                    message.properties =
                        std::mem::take(&mut message.properties).with_delivery_mode(2);
                }
                message.exchange = crate::messaging::short(exchange);
                if let Some(key) = &target.routing_key {
                    message.routing_key = crate::messaging::short(key);
                }
                let outcome = vhost
                    .publish_from(exchange, message, None)
                    .map_err(|e| e.to_string())?;
                acks.merge(outcome.acks);
            }
            if chunk.next.get() <= next {
                break;
            }
            next = chunk.next.get();
        }
        acks.wait().map_err(|e| e.to_string())
    }
}
