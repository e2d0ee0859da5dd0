//! Where share-partition state is kept: as committed offsets of the
//! broker's own group `__sluice_share-<group>` (the start offset, with the
//! in-flight records as the metadata text), in the offsets log, which a
//! cluster replicates. The partition's leader stores and loads it through
//! the group's coordinator, itself or another node over the inter-node
//! link, so a restart or a new leader finds acknowledged records still
//! acknowledged and acquired ones available again with their delivery
//! counts.

use crate::consumer_groups::TopicId;
use crate::{Broker, CommittedOffset, Coordinator, CoreError};

/// The offsets group that holds share group `group`'s state.
pub const SHARE_STATE_PREFIX: &str = "__sluice_share-";

fn state_group(group: &str) -> String {
    format!("{SHARE_STATE_PREFIX}{group}")
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

    /// Stores every share-partition state changed since the last call
    /// (blocking); a state that could not be stored is tried again next
    /// time.
    pub fn store_share_state(&self) {
        let dirty = self.share_groups().take_dirty();
        if dirty.is_empty() {
            return;
        }
        let catalog = self.topic_catalog();
        for (group, topic, partition, start, text) in dirty {
            let Some(name) = catalog.name_of(&topic).map(str::to_owned) else {
                continue; // the topic is gone
            };
            let key = state_group(&group);
            let offsets = [(
                name,
                partition,
                CommittedOffset {
                    offset: start,
                    leader_epoch: -1,
                    metadata: Some(text),
                },
            )];
            let stored = match self.offsets().coordinator(&key) {
                Coordinator::Here => self.offsets().commit(&key, &offsets),
                Coordinator::Node(node) => match self.transactions().peers() {
                    Some(peers) => peers.commit_offsets(node, &key, &offsets),
                    None => Err(CoreError::Internal {
                        reason: format!("no link to node {node}"),
                    }),
                },
                Coordinator::Unavailable => Err(CoreError::Internal {
                    reason: "the coordinator is not available".to_owned(),
                }),
            };
            if let Err(error) = stored {
                tracing::warn!(%error, group, partition, "share-partition state not stored yet");
                self.share_groups().mark_dirty(&group, topic, partition);
            }
        }
    }
}
