//! Topics that feed exchanges: a topic whose config names
//! `sluice.forward.exchange` has every record published to that exchange as
//! an AMQP message (the mapping in `messaging/bridge.rs`), routed like any
//! publish into queues with their priorities, TTL, dead-lettering and
//! acknowledgements.
//!
//! One task per forwarded partition reads from a stored position, publishes
//! a batch of records, waits until every durable queue has them on disk,
//! then stores the next position as the committed offset of the group
//! [`forward_group`] (so the admin API shows a forwarder's position and lag
//! like any group's). After a crash the task resumes from the stored
//! position; records published after it but before the crash reach durable
//! queues again, which keep only the first copy (each remembers the
//! highest offset it stored per source partition). Forwarding is therefore
//! exactly once per record and durable queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::Record;
use sluice_types::Offset;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::messaging::{Source, record_to_message};
use crate::{Acks, Broker, CommittedOffset, CoreError, Forwarding, Partition, Topic, Undecodable};

/// Prefix of the group ids that hold forwarding positions.
pub const FORWARD_GROUP_PREFIX: &str = "__sluice_forward:";

/// How often the set of forwarded partitions is compared with the topics'
/// configs.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// Bytes read from a partition per step.
const READ_BYTES: usize = 512 << 10;
/// Pause after a failure (no such exchange or vhost, a storage error)
/// before the same records are tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The group whose committed offsets are the positions of forwarding to
/// `exchange` in `vhost`.
pub fn forward_group(forwarding: &Forwarding) -> String {
    format!(
        "{FORWARD_GROUP_PREFIX}{}:{}",
        forwarding.vhost, forwarding.exchange
    )
}

/// Runs the forwarders until `shutdown` turns true: starts a task for each
/// partition of a topic with forwarding configured, and stops tasks whose
/// topic was deleted or whose forwarding changed.
pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tasks: HashMap<(String, i32), (Forwarding, JoinHandle<()>)> = HashMap::new();
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        let mut wanted: HashMap<(String, i32), Wanted> = HashMap::new();
        for name in broker.topics().names() {
            let Some(topic) = broker.topics().get(&name) else {
                continue;
            };
            let Some(forwarding) = topic.config().forwarding() else {
                continue;
            };
            // On a cluster, a partition forwards from its leader only, and
            // its forwarder moves with the leadership.
            for partition in topic.partitions().into_iter().filter(|p| p.is_leader()) {
                wanted.insert(
                    (name.clone(), partition.id().get()),
                    (forwarding.clone(), Arc::clone(&topic), partition),
                );
            }
        }
        if *shutdown.borrow() {
            break;
        }
        tasks.retain(|key, (forwarding, task)| {
            let keep = !task.is_finished()
                && wanted
                    .get(key)
                    .is_some_and(|(wanted, _, _)| wanted == forwarding);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, (forwarding, topic, partition)) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            tracing::info!(topic = %key.0, partition = key.1, exchange = %forwarding.exchange, vhost = %forwarding.vhost, "forwarding records to an exchange");
            let forwarder = Forwarder {
                broker: Arc::clone(&broker),
                topic,
                partition,
                forwarding: forwarding.clone(),
            };
            let stop = shutdown.clone();
            tasks.insert(key, (forwarding, tokio::spawn(forwarder.run(stop))));
        }
    }
    // Each task finishes the step it is in (so its position is stored).
    for (_, (_, task)) in tasks {
        if tokio::time::timeout(STOP_WAIT, task).await.is_err() {
            tracing::warn!("a forwarder did not stop in time");
        }
    }
}

/// How long shutdown waits for a forwarder to finish its step.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A partition that should be forwarded, and where to.
type Wanted = (Forwarding, Arc<Topic>, Arc<Partition>);

/// Forwards one partition.
struct Forwarder {
    broker: Arc<Broker>,
    topic: Arc<Topic>,
    partition: Arc<Partition>,
    forwarding: Forwarding,
}

impl Forwarder {
    fn group(&self) -> String {
        forward_group(&self.forwarding)
    }

    /// The stored position, else the log start.
    fn position(&self) -> i64 {
        let log_start = self.partition.log_start().get();
        self.broker
            .offsets()
            .fetch(&self.group(), self.topic.name(), self.partition.id().get())
            .map_or(log_start, |committed| committed.offset.max(log_start))
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut next = this.position();
        while !*stop.borrow() {
            let appended = this.partition.appended();
            tokio::pin!(appended);
            appended.as_mut().enable();
            next = next.max(this.partition.log_start().get());
            // Forwarding reads what is committed (read_committed): up to
            // the last stable offset, aborted transactions left out.
            if next >= this.partition.last_stable_offset().get() {
                tokio::select! {
                    _ = appended => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            let step = Arc::clone(&this);
            let forwarded = tokio::task::spawn_blocking(move || step.forward_from(next)).await;
            match forwarded {
                Ok(Ok(after)) => next = after,
                Ok(Err(error)) => {
                    tracing::warn!(topic = this.topic.name(), partition = this.partition.id().get(), %error, "forwarding stalled; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = stop.changed() => return,
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Publishes the records from `next` that one read returns, waits for
    /// the durable queues, stores the position after them and returns it.
    /// Blocking.
    fn forward_from(&self, next: i64) -> Result<i64, String> {
        // A batch that cannot be decoded stops forwarding here (and is
        // retried) rather than being skipped: nothing is lost silently.
        let Some(chunk) = self
            .partition
            .read_chunk(Offset::from(next), READ_BYTES, Undecodable::Fail)
            .map_err(|e| e.to_string())?
        else {
            return Ok(next);
        };
        let after = chunk.next.get();
        let vhost = self
            .broker
            .vhosts()
            .get(&self.forwarding.vhost)
            .ok_or_else(|| format!("no virtual host '{}'", self.forwarding.vhost))?;
        let name = format!("{}/{}", self.topic.name(), self.partition.id().get());
        let mut acks = Acks::default();
        for record in chunk.deliverable(Offset::from(next)) {
            let message = self.message(record);
            let source = Source {
                name: name.clone(),
                offset: record.offset,
            };
            let outcome = vhost
                .publish_from(&self.forwarding.exchange, message, Some(&source))
                .map_err(|e| e.to_string())?;
            acks.merge(outcome.acks);
        }
        acks.wait().map_err(|e| e.to_string())?;
        self.broker
            .offsets()
            .commit(
                &self.group(),
                &[(
                    self.topic.name().to_owned(),
                    self.partition.id().get(),
                    CommittedOffset {
                        offset: after,
                        leader_epoch: -1,
                        metadata: None,
                    },
                )],
            )
            .map_err(|e: CoreError| e.to_string())?;
        Ok(after)
    }

    /// The AMQP message a record becomes: the bridge mapping, the routing
    /// key the topic's config names, persistent unless the record says
    /// otherwise.
    fn message(&self, record: &Record) -> crate::messaging::Message {
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_ref().map(Bytes::as_ref)))
            .collect();
        let routing_key = match &self.forwarding.routing_key_header {
            None => record.key.as_deref(),
            Some(header) => headers
                .iter()
                .find(|(name, _)| name == header)
                .and_then(|(_, value)| *value),
        };
        let mut message = record_to_message(routing_key, record.value.as_deref(), &headers, &[]);
        if message.properties.delivery_mode().is_none() {
            message.properties = std::mem::take(&mut message.properties).with_delivery_mode(2);
        }
        message.exchange = crate::messaging::short(&self.forwarding.exchange);
        message
    }
}
