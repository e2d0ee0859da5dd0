//! Publishing: a message routed through exchanges (exchange-to-exchange
//! bindings, alternate exchanges) into the queues it reaches.

use std::collections::HashSet;
use std::sync::Arc;

use super::{PublishOutcome, VirtualHost};
use crate::messaging::MessagingError;
use crate::messaging::exchange::{Destination, Exchange};
use crate::messaging::message::Message;
use crate::messaging::queue::Queue;
use crate::messaging::queue_store::Source;

impl VirtualHost {
    /// The queues a message published to `exchange` reaches, following
    /// exchange-to-exchange bindings and alternate exchanges: those of this
    /// node, and the names of those living on other nodes.
    pub(super) fn route(
        &self,
        exchange: &Arc<Exchange>,
        message: &Message,
    ) -> (Vec<Arc<Queue>>, Vec<String>) {
        let mut queue_names: Vec<String> = Vec::new();
        let mut seen_queues = HashSet::new();
        let mut visited = HashSet::new();
        let mut pending = vec![Arc::clone(exchange)];
        while let Some(current) = pending.pop() {
            if !visited.insert(current.name.clone()) {
                continue;
            }
            if current.name.is_empty() {
                if seen_queues.insert(message.routing_key.as_str().to_owned()) {
                    queue_names.push(message.routing_key.as_str().to_owned());
                }
                continue;
            }
            let mut matched = false;
            current.route(message, &mut |destination| {
                matched = true;
                match destination {
                    Destination::Queue(name) => {
                        if seen_queues.insert(name.clone()) {
                            queue_names.push(name.clone());
                        }
                    }
                    Destination::Exchange(name) => {
                        if let Some(next) = self.exchange(name) {
                            pending.push(next);
                        }
                    }
                }
            });
            if !matched
                && let Some(next) = current
                    .alternate_exchange()
                    .and_then(|ae| self.exchange(&ae))
            {
                pending.push(next);
            }
        }
        let queues = self.queues_map();
        let mut local = Vec::with_capacity(queue_names.len());
        let mut remote = Vec::new();
        for name in queue_names {
            match queues.get(&name) {
                Some(queue) => local.push(Arc::clone(queue)),
                None => {
                    // A quorum queue between its local instance and its
                    // stand-in (its leadership moving) is neither here nor
                    // remote for a moment: refused as remote (a nack), not
                    // dropped as unroutable.
                    if self.remote_queue(&name).is_some() || self.is_quorum_definition(&name, None)
                    {
                        remote.push(name);
                    }
                }
            }
        }
        (local, remote)
    }

    /// Sends `message` to the queues `names` living on other nodes; the
    /// acknowledgements to wait for, and false when one could not be sent
    /// (no link yet).
    pub(super) fn send_to_homes(&self, names: &[String], message: &Message) -> (crate::Acks, bool) {
        let mut acks = crate::Acks::default();
        let mut carried = true;
        for name in names {
            let (Some(carrier), Some(home)) = (
                self.carrier.get(),
                self.remote_queue(name).and_then(|queue| queue.home),
            ) else {
                tracing::warn!(vhost = %self.name, queue = %name, "a message for a queue living on another node was refused");
                carried = false;
                continue;
            };
            acks.add(carrier.enqueue(home, &self.name, name, message));
        }
        (acks, carried)
    }

    /// The node leading the partition of stream `queue` that `message`
    /// goes to, when that is another node of a cluster: the message is
    /// written there, as a Kafka producer writes to the leader.
    fn stream_leader_elsewhere(&self, queue: &Queue, message: &Message) -> Option<i32> {
        let own = self.definitions.home()?;
        queue
            .stream_leader(message)
            .filter(|leader| *leader != own && *leader >= 0)
    }

    /// A message another node routed to queue `name` of this node.
    ///
    /// # Errors
    /// NOT_FOUND when the queue is not here (deleted since, or moved);
    /// storage failures.
    pub fn enqueue_forwarded(
        &self,
        name: &str,
        message: Message,
    ) -> Result<PublishOutcome, MessagingError> {
        let queue = self.queue(name).ok_or_else(|| self.no_queue(name))?;
        let enqueued = queue.enqueue_from(Arc::new(message), None)?;
        let mut outcome = PublishOutcome {
            queues: 1,
            rejected: enqueued.rejected,
            ..PublishOutcome::default()
        };
        outcome.acks.extend(enqueued.sync);
        self.dead_letter(enqueued.dead);
        Ok(outcome)
    }

    /// `basic.publish`: routes a message and enqueues it.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown exchange; ACCESS_REFUSED for an internal
    /// one; PRECONDITION_FAILED for an invalid `expiration`; storage failures.
    pub fn publish(
        &self,
        exchange: &str,
        message: Message,
    ) -> Result<PublishOutcome, MessagingError> {
        self.publish_from(exchange, message, None)
    }

    /// As [`VirtualHost::publish`], for a record forwarded from a topic
    /// (durable queues store each source offset once).
    ///
    /// # Errors
    /// As [`VirtualHost::publish`].
    pub fn publish_from(
        &self,
        exchange: &str,
        message: Message,
        source: Option<&Source>,
    ) -> Result<PublishOutcome, MessagingError> {
        self.publish_routed(exchange, message, source, None)
    }

    /// As [`VirtualHost::publish`], in a transaction (AMQP `tx.commit`):
    /// what is routed to streams on this node is not written but added to
    /// `writes`, to be written as one Kafka transaction
    /// ([`crate::transactions::TxnCoordinator::write_atomically`]); other
    /// queues get the message now.
    ///
    /// # Errors
    /// As [`VirtualHost::publish`].
    pub fn publish_in_transaction(
        &self,
        exchange: &str,
        message: Message,
        writes: &mut crate::transactions::TxnWrites,
    ) -> Result<PublishOutcome, MessagingError> {
        self.publish_routed(exchange, message, None, Some(writes))
    }

    fn publish_routed(
        &self,
        exchange: &str,
        message: Message,
        source: Option<&Source>,
        mut writes: Option<&mut crate::transactions::TxnWrites>,
    ) -> Result<PublishOutcome, MessagingError> {
        let target = self
            .exchange(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        if target.internal {
            return Err(MessagingError::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        message
            .expiration_ms()
            .map_err(MessagingError::PreconditionFailed)?;
        let (queues, remote) = self.route(&target, &message);
        let mut outcome = PublishOutcome {
            queues: queues.len() + remote.len(),
            ..PublishOutcome::default()
        };
        let (acks, carried) = self.send_to_homes(&remote, &message);
        outcome.acks.merge(acks);
        // Nothing carries them (the links are not up yet): refused
        // (basic.nack under confirms), never dropped in silence.
        outcome.rejected |= !carried;
        let message = Arc::new(message);
        for queue in queues {
            if let Some(writes) = writes.as_deref_mut()
                && queue.add_to_transaction(&message, writes)?
            {
                continue;
            }
            if let Some(leader) = self.stream_leader_elsewhere(&queue, &message) {
                // Refused, not dropped, while the links are not up (a
                // forwarder tries again).
                let carrier = self.carrier.get().ok_or_else(|| {
                    MessagingError::Core(crate::CoreError::Internal {
                        reason: format!(
                            "stream '{}' is led by node {leader}, which this node cannot reach yet",
                            queue.name()
                        ),
                    })
                })?;
                outcome
                    .acks
                    .add(carrier.enqueue(leader, &self.name, queue.name(), &message));
                continue;
            }
            let enqueued = queue.enqueue_from(Arc::clone(&message), source)?;
            outcome.rejected |= enqueued.rejected;
            outcome.acks.extend(enqueued.sync);
            self.dead_letter(enqueued.dead);
        }
        Ok(outcome)
    }
}
