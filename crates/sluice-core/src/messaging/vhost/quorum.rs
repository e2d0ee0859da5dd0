//! Quorum queues on a cluster: each is a replicated partition of its own
//! internal topic (`quorum_store.rs`), and the node leading that partition
//! runs the queue. Every other node holds a stand-in for it, as for a
//! classic queue living elsewhere, whose home is the partition's leader;
//! publishes, consumers and `basic.get` go there over the message link.
//!
//! [`VirtualHost::follow_quorum_leaders`] keeps this in line with the
//! partitions' leadership: a node that became leader rebuilds the queue
//! from the partition (every unsettled message ready again, flagged
//! redelivered); a node that lost the lead drops its queue (its consumers
//! are cancelled, its unacknowledged deliveries come back on the new
//! leader) and holds a stand-in for the new leader.

use std::sync::Arc;

use sluice_types::PartitionId;

use super::{VirtualHost, unique_token};
use crate::CoreError;
use crate::messaging::MessagingError;
use crate::messaging::definitions::QueueDefinition;
use crate::messaging::queue::{PEER_CONSUMER, Queue, QueueArgs, QueueOptions, Store};
use crate::messaging::queue_store::store_id;
use crate::messaging::quorum_store::{MessageRef, QuorumStore, quorum_topic};
use crate::metadata::MetadataCommand;

/// Where a quorum queue replicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumPlacement {
    pub leader: i32,
    /// The partition's leader epoch: one more at every leader change.
    pub leader_epoch: i32,
    pub members: Vec<i32>,
    pub in_sync: Vec<i32>,
    /// On the leader's node: records not yet on every in-sync replica
    /// (log end minus high watermark); `None` elsewhere.
    pub unreplicated: Option<i64>,
}

/// Replicas of a quorum queue when `x-quorum-initial-group-size` is not
/// given (RabbitMQ's default), fewer on a smaller cluster.
const DEFAULT_GROUP_SIZE: u64 = 3;

/// How long a new leader of a quorum queue waits before delivering the
/// messages it rebuilt: other nodes learn of it within a few follower
/// passes (200 ms each) and send the settlements made through the former
/// leader first.
const SETTLEMENTS_GRACE: std::time::Duration = std::time::Duration::from_millis(750);

/// Fault injection for the cluster tests only: a new leader of a quorum
/// queue waits this long between reading the queue from its partition
/// and running it (`SLUICE_TEST_QUORUM_REBUILD_PAUSE_MS`; none by
/// default), so that what other nodes send meanwhile reliably finds no
/// instance running yet.
fn rebuild_pause() -> Option<std::time::Duration> {
    static PAUSE: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *PAUSE.get_or_init(|| {
        let millis = std::env::var("SLUICE_TEST_QUORUM_REBUILD_PAUSE_MS").ok()?;
        millis
            .trim()
            .parse()
            .ok()
            .map(std::time::Duration::from_millis)
    })
}

impl VirtualHost {
    /// Whether quorum queues replicate here (the node is part of a
    /// cluster).
    pub(super) fn replicates_quorum_queues(&self) -> bool {
        self.topics.metadata().clustered()
    }

    /// The internal topic of a replicated quorum queue's definition.
    fn quorum_topic_of(&self, definition: &QueueDefinition) -> Option<Arc<crate::Topic>> {
        if definition.store_id.is_empty() {
            return None;
        }
        self.topics.get(&quorum_topic(&definition.store_id))
    }

    /// Whether `name` is a committed replicated quorum queue of this vhost
    /// (with store id `store_id`, when given).
    pub(super) fn is_quorum_definition(&self, name: &str, store_id: Option<&str>) -> bool {
        self.replicates_quorum_queues()
            && self
                .definitions
                .queue(&self.name, name)
                .is_some_and(|definition| {
                    store_id.is_none_or(|id| definition.store_id == id)
                        && self.is_replicated_quorum(&definition)
                })
    }

    /// Whether a definition is a quorum queue replicated in its own
    /// partition (not one declared before quorum queues replicated).
    pub(super) fn is_replicated_quorum(&self, definition: &QueueDefinition) -> bool {
        self.quorum_topic_of(definition).is_some()
    }

    /// Declares a new quorum queue on a cluster: its partition first
    /// (`x-quorum-initial-group-size` replicas, 3 by default, fewer when
    /// fewer nodes are up; a majority of them must be in sync for a
    /// confirm), then its definition, then the queue (here when this node
    /// leads the partition, a stand-in otherwise).
    pub(super) fn declare_quorum(
        &self,
        name: String,
        options: QueueOptions,
        args: &QueueArgs,
        connection: u64,
    ) -> Result<(String, usize, usize), MessagingError> {
        let live = self.topics.metadata().live_broker_count().max(1) as u64;
        let size = args
            .quorum_initial_group_size
            .unwrap_or(DEFAULT_GROUP_SIZE)
            .min(live);
        let majority = size / 2 + 1;
        let config = crate::TopicConfig::new([("min.insync.replicas", majority.to_string())])?;
        let store_id = store_id(&name, &unique_token());
        self.topics.create_internal(
            &quorum_topic(&store_id),
            1,
            u16::try_from(size).unwrap_or(u16::MAX),
            config,
        )?;
        let definition = QueueDefinition {
            vhost: self.name.clone(),
            name: name.clone(),
            store_id: store_id.clone(),
            auto_delete: false,
            arguments: options.arguments.clone(),
            home: None,
        };
        let committed = self
            .definitions
            .commit(MetadataCommand::DeclareQueue(definition.clone()));
        if let Err(CoreError::QueueExists { .. }) = &committed {
            // Declared elsewhere at the same time, committed first.
            self.drop_quorum_partition(&store_id);
            return self.declared_elsewhere(&name, &options, connection);
        }
        if let Err(error) = committed {
            self.drop_quorum_partition(&store_id);
            return Err(error.into());
        }
        self.follow_quorum(&definition);
        Ok((name, 0, 0))
    }

    /// Where quorum queue `name` replicates on a cluster: its leader (-1
    /// while it has none), its members and those in sync. `None` for any
    /// other queue.
    pub fn quorum_placement(&self, name: &str) -> Option<QuorumPlacement> {
        let definition = self.definitions.queue(&self.name, name)?;
        let topic = self.quorum_topic_of(&definition)?;
        let index = PartitionId::from(0);
        let (leader, leader_epoch) = topic.leader(index).unwrap_or((-1, -1));
        Some(QuorumPlacement {
            leader,
            leader_epoch,
            members: topic.replicas(index).unwrap_or_default(),
            in_sync: topic.in_sync(index),
            unreplicated: topic
                .partition(index)
                .filter(|partition| partition.is_leader())
                .map(|partition| {
                    (partition.log_end().get() - partition.high_watermark().get()).max(0)
                }),
        })
    }

    /// Every replicated quorum queue here with its placement, by name.
    pub fn quorum_placements(&self) -> Vec<(String, QuorumPlacement)> {
        let mut placements: Vec<(String, QuorumPlacement)> = self
            .definitions
            .quorum_queues(&self.name)
            .into_iter()
            .filter_map(|definition| {
                let placement = self.quorum_placement(&definition.name)?;
                Some((definition.name, placement))
            })
            .collect();
        placements.sort_by(|a, b| a.0.cmp(&b.0));
        placements
    }

    /// Deletes the partition (internal topic) of the quorum queue with
    /// store id `store_id`, if it has one (the queue is gone).
    pub(super) fn drop_quorum_partition(&self, store_id: &str) {
        let topic = quorum_topic(store_id);
        match self.topics.delete_any(&topic) {
            Ok(()) | Err(CoreError::UnknownTopic { .. }) => {}
            Err(error) => {
                tracing::warn!(vhost = %self.name, %topic, %error, "cannot delete a quorum queue's partition");
            }
        }
    }

    /// Brings every quorum queue of this virtual host in line with its
    /// partition's leadership. Blocking (a new leader reads the partition).
    pub fn follow_quorum_leaders(&self) {
        if !self.replicates_quorum_queues() {
            return;
        }
        for definition in self.definitions.quorum_queues(&self.name) {
            self.follow_quorum(&definition);
        }
        // Consumers waiting for a queue deleted meanwhile (lost as it
        // went, after its deletion cancelled those waiting then; its name
        // may be another queue's by now), or for one that has no next
        // leader (not replicated).
        if let Some(carrier) = self.carrier.get() {
            for (name, store_id) in carrier.orphaned_queues(&self.name) {
                if !self.is_quorum_definition(&name, Some(&store_id)) {
                    self.cancel_orphans(&name, Some(&store_id));
                }
            }
        }
    }

    /// Brings one quorum queue in line with its partition's leadership.
    pub(super) fn follow_quorum(&self, definition: &QueueDefinition) {
        let Some(topic) = self.quorum_topic_of(definition) else {
            return;
        };
        let _placing = self.placing.lock().unwrap_or_else(|e| e.into_inner());
        let index = PartitionId::from(0);
        let led_here = topic.partition(index).filter(|p| p.is_leader());
        let local = self
            .queue(&definition.name)
            .filter(|q| q.store_id() == Some(definition.store_id.as_str()));
        let mut adopt_now = true;
        match led_here {
            Some(partition) => {
                let epoch = partition.leader_epoch().get();
                if local.as_ref().and_then(|q| q.quorum_epoch()) != Some(epoch) {
                    self.lead_quorum(definition, topic, epoch, local);
                }
            }
            None => {
                if let Some(local) = local {
                    self.drop_local_quorum(&local);
                }
                let leader = topic.leader(index).map_or(-1, |(node, _)| node);
                let current = self
                    .remote_stand_in(&definition.name)
                    .map(|stand_in| stand_in.remote_node());
                if current != Some(Some(leader)) {
                    self.drop_stand_in(&definition.name);
                    self.remember_remote(QueueDefinition {
                        home: Some(leader),
                        ..definition.clone()
                    });
                    // The consumers waiting for the new leader register
                    // there on the next pass (200 ms on): acks their
                    // clients send meanwhile for what the former leader
                    // delivered reach it first, ahead of their CONSUME.
                    adopt_now = false;
                }
                // What this node settled lately goes to the new leader
                // once it is up, ahead of its consumers on the same link
                // (they register only with a leader that is up).
                if leader >= 0
                    && !self.definitions.is_down(leader)
                    && let Some(carrier) = self.carrier.get()
                    && let Some(recent) = self.settled.handover(
                        &definition.name,
                        leader,
                        carrier.link_failures(leader),
                    )
                {
                    if !recent.is_empty() {
                        tracing::debug!(vhost = %self.name, queue = %definition.name, leader, settled = recent.len(), "settlements sent to the quorum queue's new leader");
                        carrier.resettle(leader, &self.name, &definition.name, &recent);
                    }
                    self.hold_for_clients(&definition.name);
                }
            }
        }
        self.send_settlements_on(&definition.name);
        if adopt_now {
            self.adopt_orphans(&definition.name);
        }
    }

    /// The instance of quorum queue `name` this node runs, if it leads it.
    fn running_quorum(&self, name: &str) -> Option<Arc<Queue>> {
        self.queue(name)
            .filter(|q| q.quorum_epoch().is_some() && !q.is_deleted())
    }

    /// The live node leading quorum queue `name`, when another node than
    /// this one does.
    fn live_leader_elsewhere(&self, name: &str) -> Option<i32> {
        self.remote_stand_in(name)
            .filter(|stand_in| !stand_in.is_deleted())
            .and_then(|stand_in| stand_in.remote_node())
            .filter(|node| *node >= 0 && !self.definitions.is_down(*node))
    }

    /// Sends the stale settlements of quorum queue `name` (made through an
    /// instance no longer running it) to the queue as it runs now: here,
    /// or its live leader's node; kept for the next try without one.
    pub(crate) fn send_settlements_on(&self, name: &str) {
        let stale = self.settled.take_stale(name);
        if stale.is_empty() {
            return;
        }
        if let Some(local) = self.running_quorum(name) {
            local.settle_refs(&stale);
            return;
        }
        let leader = self.live_leader_elsewhere(name);
        match (leader, self.carrier.get()) {
            (Some(leader), Some(carrier)) => carrier.resettle(leader, &self.name, name, &stale),
            _ => self.settled.keep_stale(name, stale),
        }
    }

    /// Asks the queue as it runs now (here, or on its live leader's
    /// node) not to deliver again what this node's clients hold of quorum
    /// queue `name`, delivered by a former leader: they settle it.
    fn hold_for_clients(&self, name: &str) {
        let Some(carrier) = self.carrier.get() else {
            return;
        };
        // All they hold (also none): the leader gives back what it held
        // for them before and they no longer hold. Read and sent under
        // `dropped`, as their releases are (`release_quorum`): one given
        // back after this read reaches the queue after this hold.
        let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        let refs = self.held_by_clients(carrier.as_ref(), name, &mut dropped);
        if let Some(local) = self.running_quorum(name) {
            self.set_held(&local, 0, &refs);
            return;
        }
        if let Some(leader) = self.live_leader_elsewhere(name) {
            carrier.hold(leader, &self.name, name, &refs);
        }
    }

    /// Holds for `holder` what its clients hold of quorum queue instance
    /// `local` (`refs`), giving back what it held for them before and
    /// they no longer hold.
    fn set_held(&self, local: &Arc<Queue>, holder: u64, refs: &[MessageRef]) {
        match local.set_held(holder, refs) {
            Ok(dead) => self.dead_letter(dead),
            Err(error) => {
                tracing::warn!(vhost = %self.name, queue = %local.name(), %error, "cannot hold messages for clients");
            }
        }
        if !refs.is_empty() {
            tracing::debug!(vhost = %self.name, queue = %local.name(), holder, refs = refs.len(), "a former leader's deliveries held for clients");
        }
    }

    /// Another node's clients (`holder`, its link) hold the messages of
    /// `refs` of quorum queue `name`, delivered by a former leader:
    /// remembered for each instance this node runs of it (also one it
    /// rebuilds later), until the next word from that node or its link
    /// failing.
    pub fn hold_for_peer(&self, name: &str, holder: u64, refs: Vec<MessageRef>) {
        // Kept, and the running instance looked up, under the lock a
        // rebuilt instance takes its holds under: either it runs by now,
        // or it finds these when it does. Applied after the lock is
        // released (what it gives back may reach `release_quorum`, which
        // takes the lock); the holder's link failing, which gives back
        // what is held for it, is handled after this on the same thread.
        let running = {
            let mut held = self
                .held_for_peers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let queue = held.entry(name.to_owned()).or_default();
            if refs.is_empty() {
                queue.remove(&holder);
            } else {
                queue.insert(holder, refs.clone());
            }
            if queue.is_empty() {
                held.remove(name);
            }
            self.running_quorum(name)
        };
        if let Some(local) = running {
            self.set_held(&local, holder, &refs);
        }
    }

    /// Messages of quorum queue `name` settled or given back by whoever
    /// held them: no longer held for anyone by an instance this node
    /// rebuilds later.
    fn unhold_for_peers(&self, name: &str, refs: &[MessageRef]) {
        let mut held = self
            .held_for_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(holders) = held.get_mut(name) else {
            return;
        };
        let gone: std::collections::HashSet<&MessageRef> = refs.iter().collect();
        for holding in holders.values_mut() {
            holding.retain(|message| !gone.contains(message));
        }
        holders.retain(|_, holding| !holding.is_empty());
        if holders.is_empty() {
            held.remove(name);
        }
    }

    /// The link of another node (`holder`) failed: what its clients held
    /// goes back to the queues' ready lists (redelivered).
    pub fn release_held_for(&self, holder: u64) {
        let names: Vec<String> = self
            .definitions
            .quorum_queues(&self.name)
            .into_iter()
            .map(|definition| definition.name)
            .collect();
        // Forgotten first, under the lock a rebuilt instance takes its
        // holds under: either it never sees them, or it runs (in the map)
        // by the time they are given back below.
        self.held_for_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, holders| {
                holders.remove(&holder);
                !holders.is_empty()
            });
        for name in names {
            if let Some(local) = self.running_quorum(&name) {
                self.set_held(&local, holder, &[]);
            }
        }
    }

    /// Quorum queue `name` was deleted: what this node's clients settled
    /// or hold of it, and what it held for other nodes', is forgotten (a
    /// queue declared again under the name numbers its messages anew).
    pub(super) fn forget_quorum_clients(&self, name: &str, store_id: &str) {
        if store_id.is_empty()
            || self
                .definitions
                .queue(&self.name, name)
                .is_some_and(|definition| definition.store_id == store_id)
        {
            // Not a replicated quorum queue, or still there (its
            // definition changed).
            return;
        }
        self.settled.forget(name);
        let retired = self
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .unwrap_or_default();
        // Their clients' late settlements must not reach a queue declared
        // again under the name.
        for instance in retired.iter().filter_map(std::sync::Weak::upgrade) {
            instance.mark_deleted();
        }
        self.held_for_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(carrier) = self.carrier.get() {
            carrier.forget_deliveries(&self.name, name);
        }
    }

    /// What this node's clients hold of quorum queue `name`, delivered by
    /// a former leader: over other nodes' links, or by an instance this
    /// node ran (whose deliveries other nodes' clients hold are theirs to
    /// name).
    fn held_by_clients(
        &self,
        carrier: &dyn super::RemoteQueues,
        name: &str,
        dropped: &mut super::DroppedInstances,
    ) -> Vec<MessageRef> {
        let mut refs = carrier.held_refs(&self.name, name);
        if let Some(instances) = dropped.get_mut(name) {
            instances.retain(|instance| instance.strong_count() > 0);
            for instance in instances.iter().filter_map(std::sync::Weak::upgrade) {
                refs.extend(instance.local_client_refs());
            }
            if instances.is_empty() {
                dropped.remove(name);
            }
        }
        refs
    }

    /// An instance of a quorum queue this node stopped running: its
    /// clients' deliveries are held for them by the next leader.
    fn remember_dropped(&self, instance: &Arc<Queue>) {
        let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        let instances = dropped.entry(instance.name().to_owned()).or_default();
        instances.retain(|instance| instance.strong_count() > 0);
        if !instances
            .iter()
            .any(|held| std::ptr::eq(held.as_ptr(), Arc::as_ptr(instance)))
        {
            instances.push(Arc::downgrade(instance));
        }
    }

    /// Gives the messages of `refs` of quorum queue `name` (a former
    /// leader's deliveries, settled negatively by this node's clients)
    /// back to the queue as it runs now, which may hold them for them:
    /// requeued, or dead. Without a live leader nothing holds them (the
    /// next one rebuilds them as ready).
    pub fn release_quorum(&self, name: &str, requeue: bool, refs: &[MessageRef]) {
        if refs.is_empty() {
            return;
        }
        self.unhold_for_peers(name, refs);
        // Under `dropped`, as what this node's clients hold is read and
        // held (`hold_for_clients`, a rebuilt instance): a hold that named
        // these reaches the queue before this release does.
        let _clients = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(local) = self.running_quorum(name) {
            match local.release_refs(refs, requeue) {
                Ok(dead) => self.dead_letter(dead),
                Err(error) => {
                    tracing::warn!(vhost = %self.name, queue = %name, %error, "cannot give back messages held for clients");
                }
            }
            return;
        }
        let leader = self.live_leader_elsewhere(name);
        if let (Some(leader), Some(carrier)) = (leader, self.carrier.get()) {
            carrier.release(leader, &self.name, name, requeue, refs);
        }
    }

    /// Settlements of quorum queue `name` another node's consumers made
    /// through a former leader: settled now if this node runs the queue,
    /// and remembered (applied when this node rebuilds the queue; their
    /// node hands them to later leaders itself).
    pub fn settled_elsewhere(&self, name: &str, refs: &[MessageRef]) {
        self.settled.record_relayed(name, refs);
        self.unhold_for_peers(name, refs);
        if let Some(local) = self.running_quorum(name) {
            let settled = local.settle_refs(refs);
            tracing::debug!(vhost = %self.name, queue = %name, sent = refs.len(), settled, "settlements made through a former leader");
        }
    }

    /// Registers the consumers of quorum queue `name` that lost its former
    /// leader with the queue as it is now (run here, or a stand-in for a
    /// live leader), so that they go on consuming through a failover.
    fn adopt_orphans(&self, name: &str) {
        let target = self.queue(name).or_else(|| {
            self.remote_stand_in(name).filter(|stand_in| {
                stand_in
                    .remote_node()
                    .is_some_and(|node| node >= 0 && !self.definitions.is_down(node))
            })
        });
        let (Some(target), Some(carrier)) = (target, self.carrier.get()) else {
            return;
        };
        let orphans = carrier.take_orphans(&self.name, name, Some(target.instance_id()));
        if !orphans.is_empty() {
            // Ahead of their CONSUME: what they hold is not delivered
            // again.
            self.hold_for_clients(name);
        }
        for consumer in orphans {
            let (channel, tag, sink) = (
                consumer.channel,
                Arc::clone(&consumer.tag),
                consumer.sink.clone(),
            );
            match target.add_consumer(consumer) {
                Ok(dead) => {
                    tracing::debug!(vhost = %self.name, queue = %name, %tag, "a quorum queue consumer goes on with the queue's new leader");
                    self.dead_letter(dead);
                }
                Err(error) => {
                    tracing::info!(vhost = %self.name, queue = %name, %tag, %error, "a quorum queue consumer is cancelled");
                    let _ = sink.send(crate::messaging::ConsumerEvent::Cancelled {
                        channel,
                        consumer_tag: tag,
                    });
                }
            }
        }
    }

    /// Removes consumer `tag` of channel `channel` from `queue`, the queue
    /// it registered with; a quorum queue's consumer may have moved since
    /// (to the queue running here now, to a stand-in for another leader,
    /// or waiting for the next one), and is removed there too. Returns
    /// whether `queue` was left without consumers (auto-delete) and what
    /// died.
    pub fn remove_consumer(
        &self,
        queue: &Arc<Queue>,
        channel: u64,
        tag: &str,
    ) -> (bool, crate::messaging::DeadLetters) {
        let removed = queue.remove_consumer(channel, tag);
        if queue.queue_type() == crate::messaging::QueueType::Quorum
            && self.replicates_quorum_queues()
        {
            if let Some(current) = self
                .queue(queue.name())
                .filter(|current| !Arc::ptr_eq(current, queue))
                .filter(|current| current.remote_node().is_none())
            {
                let (_, dead) = current.remove_consumer(channel, tag);
                self.dead_letter(dead);
            }
            if let Some(carrier) = self.carrier.get() {
                carrier.forget_consumer(channel, tag);
            }
        }
        removed
    }

    /// Drops the stand-in of quorum queue `name` (its leader changed, or
    /// is this node now): the consumers registered through it wait for
    /// the queue as it is now.
    fn drop_stand_in(&self, name: &str) {
        let stand_in = self
            .remote
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some((_, stand_in)) = stand_in {
            if let Some(carrier) = self.carrier.get() {
                carrier.release_stand_in(&stand_in);
            }
            stand_in.mark_deleted();
        }
    }

    /// Cancels the consumers waiting for a deleted quorum queue's next
    /// leader (the one with store id `store_id`, or any named `name`).
    pub(super) fn cancel_orphans(&self, name: &str, store_id: Option<&str>) {
        let Some(carrier) = self.carrier.get() else {
            return;
        };
        for consumer in carrier.take_orphans(&self.name, name, store_id) {
            let _ = consumer
                .sink
                .send(crate::messaging::ConsumerEvent::Cancelled {
                    channel: consumer.channel,
                    consumer_tag: consumer.tag,
                });
        }
    }

    /// This node leads the quorum queue's partition in `epoch`: the queue
    /// is rebuilt from it and runs here.
    fn lead_quorum(
        &self,
        definition: &QueueDefinition,
        topic: Arc<crate::Topic>,
        epoch: i32,
        local: Option<Arc<Queue>>,
    ) {
        // The instance this node ran in an earlier epoch stops first (under
        // its lock, so an enqueue under way finishes): nothing it appends
        // can land after the read below and be missing from the new one.
        // It stays in the map until the new one replaces it, nacking what
        // still reaches it.
        let sealed = local.map(|old| {
            let mut consumers = old.take_consumers();
            consumers.extend(old.retire());
            self.remember_dropped(&old);
            (old, consumers)
        });
        let (store, messages) = match QuorumStore::open(
            topic,
            &definition.name,
            Arc::clone(&self.settled),
        ) {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(vhost = %self.name, queue = %definition.name, %error, "cannot rebuild a quorum queue from its partition");
                // Its consumers wait for the queue as the next pass
                // rebuilds it.
                if let Some((old, consumers)) = sealed {
                    self.orphan_consumers(&old, consumers);
                }
                return;
            }
        };
        if let Some(pause) = rebuild_pause() {
            tracing::warn!(vhost = %self.name, queue = %definition.name, ?pause, "pausing before running the rebuilt quorum queue (SLUICE_TEST_QUORUM_REBUILD_PAUSE_MS)");
            std::thread::sleep(pause);
        }
        let args = QueueArgs::parse(&definition.name, &self.name, &definition.arguments)
            .unwrap_or_default();
        let ready = messages.len();
        let queue = Queue::new(
            definition.name.clone(),
            QueueOptions {
                durable: true,
                exclusive_owner: None,
                auto_delete: false,
                arguments: definition.arguments.clone(),
            },
            args,
            Some((definition.store_id.clone(), Store::Replicated(store))),
            self.queue_home(),
            None,
        );
        queue.restore(messages, Vec::new());
        if ready > 0 {
            // Other nodes' consumers may have settled some of these
            // through the former leader, which may not have replicated
            // it: their nodes send those settlements as they learn of
            // this leader, and the queue waits for them before
            // delivering what it rebuilt.
            queue.hold_deliveries(SETTLEMENTS_GRACE);
        }
        // Replaced in one step, then the stand-in goes: a publish always
        // finds one of them.
        self.queues_mut()
            .insert(definition.name.clone(), Arc::clone(&queue));
        self.drop_stand_in(&definition.name);
        // What this node's clients hold of a former leader's deliveries
        // (over other nodes' links, or from an instance this node ran)
        // stays theirs to settle: looked up once this instance runs, so
        // that what they give back meanwhile finds it or is not held.
        if let Some(carrier) = self.carrier.get() {
            let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
            let refs = self.held_by_clients(carrier.as_ref(), &definition.name, &mut dropped);
            if !refs.is_empty() {
                self.set_held(&queue, 0, &refs);
            }
        }
        // Settlements other nodes sent while the partition was read came
        // after it took the remembered ones and found no instance running
        // (`settled_elsewhere` remembers before it looks): settled now.
        let late = self.settled.recent_of(&definition.name, false);
        if !late.is_empty() {
            let settled = queue.settle_refs(&late);
            if settled > 0 {
                tracing::debug!(vhost = %self.name, queue = %definition.name, settled, "settlements that came while the queue was rebuilt");
            }
        }
        // And what other nodes' clients hold, as they said (within the
        // wait above), under the lock a failed holder's link is forgotten
        // under: its holds are either not applied or given back.
        {
            let held = self
                .held_for_peers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(holders) = held.get(&definition.name) {
                for (holder, refs) in holders {
                    self.set_held(&queue, *holder, refs);
                }
            }
        }
        if let Some((old, consumers)) = sealed {
            self.orphan_consumers(&old, consumers);
        }
        tracing::info!(vhost = %self.name, queue = %definition.name, leader_epoch = epoch, ready, "this node leads the quorum queue now");
        let dead = queue.dispatch();
        self.dead_letter(dead);
    }

    /// This node no longer leads the quorum queue it ran: it stops (its
    /// consumers wait for the queue's next leader; its unsettled messages
    /// are that leader's to deliver).
    fn drop_local_quorum(&self, local: &Arc<Queue>) {
        let mut consumers = local.take_consumers();
        consumers.extend(local.retire());
        self.remember_dropped(local);
        {
            let mut queues = self.queues_mut();
            if queues
                .get(local.name())
                .is_some_and(|held| Arc::ptr_eq(held, local))
            {
                queues.remove(local.name());
            }
        }
        self.orphan_consumers(local, consumers);
        tracing::info!(vhost = %self.name, queue = %local.name(), "this node no longer leads the quorum queue");
    }

    /// The consumers of a quorum queue instance this node stopped running
    /// wait for the queue's next leader (or are cancelled without a
    /// carrier).
    ///
    /// Consumers another node registered here are cancelled back to it
    /// instead: that node registers them with the next leader itself
    /// (with what its clients hold), rather than through this one.
    fn orphan_consumers(&self, local: &Arc<Queue>, consumers: Vec<crate::messaging::ConsumerSpec>) {
        for consumer in consumers {
            match self.carrier.get() {
                Some(carrier) if consumer.connection != PEER_CONSUMER => {
                    carrier.orphan(&self.name, local.name(), local.instance_id(), consumer);
                }
                _ => {
                    let _ = consumer
                        .sink
                        .send(crate::messaging::ConsumerEvent::Cancelled {
                            channel: consumer.channel,
                            consumer_tag: consumer.tag,
                        });
                }
            }
        }
    }
}
