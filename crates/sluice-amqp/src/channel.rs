//! One AMQP channel: content assembly for `basic.publish`, delivery tags,
//! consumers, prefetch credit, publisher confirms and transactions.
//!
//! Owned and mutated only by its connection's task. Methods of the
//! `exchange`, `queue` and `basic` classes are handled in `handlers/`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, confirm};
use bytes::{Bytes, BytesMut};
use sluice_core::Acks;
use sluice_core::ChannelStats;
use sluice_core::messaging::{ConsumerEvent, Credit, Message, Queue, VirtualHost};
use tokio::sync::mpsc::UnboundedSender;

use sluice_core::permissions::Access;

use crate::errors::{AmqpError, PRECONDITION_FAILED, UNEXPECTED_FRAME};
use crate::frames;

/// Largest message body accepted (RabbitMQ's default `max_message_size`).
pub(crate) const MAX_MESSAGE_BYTES: u64 = 128 << 20;
/// Deliveries a no-ack consumer may have queued toward the socket.
pub(crate) const NO_ACK_WINDOW: u32 = 2000;

/// What the connection gives a channel while it handles a frame.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub(crate) connection: u64,
    /// The user who logged in (a publish's `user_id` must match it).
    pub(crate) user: &'a str,
    pub(crate) vhost: &'a Arc<VirtualHost>,
    pub(crate) out: &'a mut BytesMut,
    pub(crate) frame_max: usize,
    pub(crate) events: &'a UnboundedSender<ConsumerEvent>,
    /// Queues to dispatch once the current burst of frames is handled.
    pub(crate) dispatch: &'a mut Vec<Arc<Queue>>,
    /// The users' permissions, as applied.
    pub(crate) permissions: &'a sluice_core::permissions::Permissions,
    /// With `kafka.acls`, the Kafka ACL check of the bridge's paths
    /// (`None`: nothing to check).
    pub(crate) kafka: Option<KafkaCheck<'a>>,
}

/// The connection's user as a Kafka principal, for the bridge's checks.
#[derive(Debug)]
pub(crate) struct KafkaCheck<'a> {
    pub(crate) acls: &'a sluice_core::acls::Acls,
    pub(crate) principal: &'a str,
    pub(crate) host: &'a str,
    pub(crate) everyone_if_none: bool,
}

impl Context<'_> {
    /// RabbitMQ's permission check: `access` to the queue or exchange
    /// (`kind`) `name`, else ACCESS_REFUSED with RabbitMQ's text. The
    /// default exchange is checked as `amq.default`.
    pub(crate) fn check(&self, access: Access, kind: &str, name: &str) -> Result<(), AmqpError> {
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let vhost = self.vhost.name();
        if self.permissions.allows(self.user, vhost, access, name) {
            return Ok(());
        }
        Err(AmqpError::channel(
            crate::errors::ACCESS_REFUSED,
            format!(
                "access to {kind} '{name}' in vhost '{vhost}' refused for user '{}'",
                self.user
            ),
        ))
    }

    /// The bridge's rule: the Kafka ACLs of topic `topic` must allow
    /// `operation` for the user (as `User:<name>`), as for a Kafka client,
    /// else ACCESS_REFUSED. Nothing is checked without `kafka.acls`.
    pub(crate) fn check_kafka(
        &self,
        operation: sluice_core::acls::Operation,
        topic: &str,
    ) -> Result<(), AmqpError> {
        use sluice_core::acls::{Requester, ResourceType};
        let Some(kafka) = &self.kafka else {
            return Ok(());
        };
        let who = Requester {
            principal: kafka.principal,
            host: kafka.host,
        };
        let allows = |operation, resource, name: &str| {
            kafka
                .acls
                .authorize(who, operation, resource, name, kafka.everyone_if_none)
        };
        // A topic is created with CREATE on it or on the cluster.
        let allowed = allows(operation, ResourceType::Topic, topic)
            || (operation == sluice_core::acls::Operation::Create
                && allows(
                    operation,
                    ResourceType::Cluster,
                    sluice_core::acls::CLUSTER_NAME,
                ));
        if allowed {
            return Ok(());
        }
        Err(AmqpError::channel(
            crate::errors::ACCESS_REFUSED,
            format!(
                "access to topic '{topic}' refused for user '{}': no Kafka {} ACL",
                self.user,
                format!("{operation:?}").to_uppercase()
            ),
        ))
    }

    /// RabbitMQ's topic permission check: publishing (`Write`) or binding
    /// (`Read`) with `routing_key` on `exchange`, when it is a topic
    /// exchange.
    pub(crate) fn check_topic(
        &self,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        let vhost = self.vhost.name();
        // The permission first: almost always none names the exchange, and
        // then the exchange is not looked up at all.
        if self
            .permissions
            .allows_topic(self.user, vhost, exchange, access, routing_key)
            || self
                .vhost
                .exchange(exchange)
                .is_none_or(|e| e.kind.as_str() != "topic")
        {
            return Ok(());
        }
        Err(AmqpError::channel(
            crate::errors::ACCESS_REFUSED,
            format!(
                "{} access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{}'",
                access.as_str(),
                self.user
            ),
        ))
    }

    pub(crate) fn reply(&mut self, channel: u16, method: AMQPClass) {
        frames::put_method(self.out, channel, method);
    }

    pub(crate) fn dispatch_later(&mut self, queue: &Arc<Queue>) {
        if !self.dispatch.iter().any(|q| Arc::ptr_eq(q, queue)) {
            self.dispatch.push(Arc::clone(queue));
        }
    }
}

#[derive(Debug)]
struct PendingPublish {
    method: basic::Publish,
    properties: BasicProperties,
    body_size: u64,
    body: BytesMut,
    header_seen: bool,
}

#[derive(Debug)]
pub(crate) struct Consumer {
    pub(crate) queue: Arc<Queue>,
    pub(crate) no_ack: bool,
    pub(crate) credit: Arc<Credit>,
}

#[derive(Debug)]
pub(crate) struct Unacked {
    pub(crate) queue: Arc<Queue>,
    pub(crate) seq: u64,
    /// Consumer credit to return on settlement (none for `basic.get`).
    pub(crate) credit: Option<Arc<Credit>>,
}

/// Publisher confirms in flight, in tag order.
#[derive(Debug, Default)]
pub(crate) struct Confirms {
    next_tag: u64,
    open: Option<ConfirmBatch>,
    waiting: VecDeque<ConfirmBatch>,
    next_batch: u64,
}

#[derive(Debug)]
pub(crate) struct ConfirmBatch {
    pub(crate) id: u64,
    first: u64,
    last: u64,
    nacks: Vec<u64>,
    pub(crate) acks: Acks,
    done: bool,
    failed: bool,
}

/// A buffered action of a transactional channel (`tx.select`).
#[derive(Debug)]
pub(crate) enum TxAction {
    Publish(Box<(basic::Publish, Message)>),
    Ack(u64, bool),
    Reject(u64, bool, bool),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChannelState {
    Open,
    /// The server sent `channel.close` and waits for `close-ok`.
    Closing,
}

#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) id: u16,
    /// Unique in the broker: connection id and channel id.
    pub(crate) key: u64,
    pub(crate) state: ChannelState,
    pending: Option<PendingPublish>,
    pub(crate) next_delivery_tag: u64,
    pub(crate) unacked: BTreeMap<u64, Unacked>,
    pub(crate) consumers: HashMap<Arc<str>, Consumer>,
    /// `basic.qos` prefetch for consumers created from now on.
    pub(crate) prefetch: u16,
    /// Channel-wide credit: global `basic.qos` and `channel.flow`.
    pub(crate) channel_credit: Arc<Credit>,
    pub(crate) confirms: Option<Confirms>,
    pub(crate) tx: Option<Vec<TxAction>>,
    /// What the admin API shows of this channel.
    stats: Arc<ChannelStats>,
}

impl Channel {
    pub(crate) fn new(id: u16, connection: u64, stats: Arc<ChannelStats>) -> Channel {
        Channel {
            id,
            key: (connection << 16) | u64::from(id),
            state: ChannelState::Open,
            pending: None,
            next_delivery_tag: 1,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            prefetch: 0,
            channel_credit: Credit::new(0, None),
            confirms: None,
            tx: None,
            stats,
        }
    }

    /// Copies the channel's state to its admin API counters.
    pub(crate) fn refresh_stats(&self) {
        let stats = &self.stats;
        stats
            .consumers
            .store(self.consumers.len() as u32, Ordering::Relaxed);
        stats
            .prefetch
            .store(u32::from(self.prefetch), Ordering::Relaxed);
        stats
            .unacked
            .store(self.unacked.len() as u64, Ordering::Relaxed);
        stats
            .confirm
            .store(self.confirms.is_some(), Ordering::Relaxed);
        stats
            .transactional
            .store(self.tx.is_some(), Ordering::Relaxed);
    }

    /// Whether a publish waits for its content frames.
    pub(crate) fn expects_content(&self) -> bool {
        self.pending.is_some()
    }

    pub(crate) fn start_publish(&mut self, method: basic::Publish) {
        self.pending = Some(PendingPublish {
            method,
            properties: BasicProperties::default(),
            body_size: 0,
            body: BytesMut::new(),
            header_seen: false,
        });
    }

    /// A content header arrived; returns a complete publish when the body is empty.
    pub(crate) fn content_header(
        &mut self,
        header: AMQPContentHeader,
    ) -> Result<Option<(basic::Publish, Message)>, AmqpError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                format!(
                    "expected method frame, got content header on channel {}",
                    self.id
                ),
            ));
        };
        if pending.header_seen {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "expected content body, got content header",
            ));
        }
        if header.class_id != 60 {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                format!("content header for class {}, expected 60", header.class_id),
            ));
        }
        if header.body_size > MAX_MESSAGE_BYTES {
            self.pending = None;
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                format!(
                    "message size {} is larger than configured max size {MAX_MESSAGE_BYTES}",
                    header.body_size
                ),
            )
            .during(60, 40));
        }
        pending.header_seen = true;
        pending.properties = header.properties;
        pending.body_size = header.body_size;
        pending
            .body
            .reserve(usize::try_from(header.body_size).unwrap_or(0));
        Ok(self.complete_if_done())
    }

    /// A body frame arrived; returns a complete publish once all of it is here.
    pub(crate) fn content_body(
        &mut self,
        body: Bytes,
    ) -> Result<Option<(basic::Publish, Message)>, AmqpError> {
        let Some(pending) = self.pending.as_mut().filter(|p| p.header_seen) else {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                format!(
                    "expected method frame, got content body on channel {}",
                    self.id
                ),
            ));
        };
        if pending.body.len() as u64 + body.len() as u64 > pending.body_size {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "content body exceeds the size in its header",
            ));
        }
        pending.body.extend_from_slice(&body);
        Ok(self.complete_if_done())
    }

    fn complete_if_done(&mut self) -> Option<(basic::Publish, Message)> {
        let done = self
            .pending
            .as_ref()
            .is_some_and(|p| p.header_seen && p.body.len() as u64 == p.body_size);
        if !done {
            return None;
        }
        let pending = self.pending.take()?;
        let message = Message {
            exchange: pending.method.exchange.clone(),
            routing_key: pending.method.routing_key.clone(),
            properties: pending.properties,
            body: pending.body.freeze(),
        };
        Some((pending.method, message))
    }

    /// Records a delivery and returns its tag.
    pub(crate) fn track_delivery(&mut self, unacked: Option<Unacked>) -> u64 {
        let tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        if let Some(unacked) = unacked {
            self.unacked.insert(tag, unacked);
        }
        tag
    }

    /// Removes the deliveries a `basic.ack`/`nack`/`reject` names.
    ///
    /// # Errors
    /// PRECONDITION_FAILED for an unknown delivery tag (RabbitMQ's
    /// "unknown delivery tag").
    pub(crate) fn take_unacked(
        &mut self,
        tag: u64,
        multiple: bool,
    ) -> Result<Vec<Unacked>, AmqpError> {
        if multiple {
            if tag == 0 {
                return Ok(std::mem::take(&mut self.unacked).into_values().collect());
            }
            if tag >= self.next_delivery_tag {
                return Err(unknown_tag(tag));
            }
            let rest = self.unacked.split_off(&(tag + 1));
            let taken = std::mem::replace(&mut self.unacked, rest);
            return Ok(taken.into_values().collect());
        }
        self.unacked
            .remove(&tag)
            .map(|u| vec![u])
            .ok_or_else(|| unknown_tag(tag))
    }

    /// Settles deliveries: positive, or negative with or without requeue.
    pub(crate) fn settle(
        ctx: &mut Context<'_>,
        taken: Vec<Unacked>,
        outcome: Settlement,
    ) -> Result<(), AmqpError> {
        for (queue, seqs) in release_by_queue(taken) {
            match outcome {
                Settlement::Ack => queue.ack(&seqs)?,
                Settlement::Reject { requeue } => {
                    ctx.vhost.dead_letter(queue.reject(&seqs, requeue)?)
                }
            }
            ctx.dispatch_later(&queue);
        }
        Ok(())
    }

    /// Tears the channel down: consumers leave their queues, unsettled
    /// deliveries go back (RabbitMQ requeues them on channel close).
    pub(crate) fn close(&mut self, vhost: &VirtualHost) {
        self.pending = None;
        for (tag, consumer) in std::mem::take(&mut self.consumers) {
            let (last, dead) = vhost.remove_consumer(&consumer.queue, self.key, &tag);
            vhost.dead_letter(dead);
            if last && let Err(error) = vhost.auto_delete_queue(&consumer.queue) {
                tracing::warn!(queue = consumer.queue.name(), %error, "cannot auto-delete a queue");
            }
        }
        let taken: Vec<Unacked> = std::mem::take(&mut self.unacked).into_values().collect();
        for (queue, seqs) in release_by_queue(taken) {
            match queue.requeue(&seqs) {
                Ok(dead) => vhost.dead_letter(dead),
                Err(error) => {
                    tracing::warn!(queue = queue.name(), %error, "cannot requeue on channel close");
                }
            }
        }
    }
}

/// How deliveries are settled.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Settlement {
    Ack,
    Reject { requeue: bool },
}

/// Returns the deliveries' credit and groups them by queue, so that each
/// queue settles its messages in one call.
fn release_by_queue(taken: Vec<Unacked>) -> Vec<(Arc<Queue>, Vec<u64>)> {
    let mut groups: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
    for unacked in taken {
        if let Some(credit) = &unacked.credit {
            credit.release(1);
        }
        match groups
            .iter_mut()
            .find(|(q, _)| Arc::ptr_eq(q, &unacked.queue))
        {
            Some((_, seqs)) => seqs.push(unacked.seq),
            None => groups.push((unacked.queue, vec![unacked.seq])),
        }
    }
    groups
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::channel(PRECONDITION_FAILED, format!("unknown delivery tag {tag}"))
}

impl Confirms {
    pub(crate) fn new() -> Confirms {
        Confirms {
            next_tag: 1,
            ..Confirms::default()
        }
    }

    /// Registers a publish; returns its confirm tag.
    pub(crate) fn published(&mut self, acks: Acks, rejected: bool) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        let id = self.next_batch;
        let batch = self.open.get_or_insert_with(|| ConfirmBatch {
            id,
            first: tag,
            last: tag,
            nacks: Vec::new(),
            acks: Acks::default(),
            done: false,
            failed: false,
        });
        batch.last = tag;
        if rejected {
            batch.nacks.push(tag);
        }
        batch.acks.merge(acks);
        tag
    }

    /// Closes the open batch at the end of a burst of frames; returns the
    /// acknowledgements to wait for (with the batch id) if there are any.
    pub(crate) fn seal(&mut self) -> Option<(u64, Acks)> {
        let mut batch = self.open.take()?;
        self.next_batch += 1;
        let acks = std::mem::take(&mut batch.acks);
        let id = batch.id;
        batch.done = acks.is_empty();
        self.waiting.push_back(batch);
        (!acks.is_empty()).then_some((id, acks))
    }

    /// Marks a batch's syncs finished.
    pub(crate) fn finished(&mut self, id: u64, ok: bool) {
        if let Some(batch) = self.waiting.iter_mut().find(|b| b.id == id) {
            batch.done = true;
            batch.failed = !ok;
        }
    }

    /// Writes `basic.ack`/`basic.nack` for every finished batch at the front.
    pub(crate) fn emit(&mut self, channel: u16, out: &mut BytesMut) {
        while self.waiting.front().is_some_and(|b| b.done) {
            let Some(batch) = self.waiting.pop_front() else {
                break;
            };
            if batch.nacks.is_empty() && !batch.failed {
                frames::put_method(
                    out,
                    channel,
                    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: batch.last,
                        multiple: batch.last > batch.first,
                    })),
                );
                continue;
            }
            for tag in batch.first..=batch.last {
                let method = if batch.failed || batch.nacks.contains(&tag) {
                    basic::AMQPMethod::Nack(basic::Nack {
                        delivery_tag: tag,
                        multiple: false,
                        requeue: false,
                    })
                } else {
                    basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: tag,
                        multiple: false,
                    })
                };
                frames::put_method(out, channel, AMQPClass::Basic(method));
            }
        }
    }
}

/// `confirm.select`.
pub(crate) fn confirm_select(
    ctx: &mut Context<'_>,
    channel: &mut Channel,
    method: confirm::Select,
) -> Result<(), AmqpError> {
    if channel.tx.is_some() {
        return Err(AmqpError::channel(
            PRECONDITION_FAILED,
            "cannot switch from tx to confirm mode",
        )
        .during(85, 10));
    }
    if channel.confirms.is_none() {
        channel.confirms = Some(Confirms::new());
    }
    if !method.nowait {
        ctx.reply(
            channel.id,
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_ack_contiguous_batches_with_multiple() {
        let mut confirms = Confirms::new();
        assert_eq!(confirms.published(Acks::default(), false), 1);
        assert_eq!(confirms.published(Acks::default(), false), 2);
        assert!(confirms.seal().is_none());
        confirms.published(Acks::default(), true);
        assert!(confirms.seal().is_none());
        let mut out = BytesMut::new();
        confirms.emit(1, &mut out);
        let mut methods = Vec::new();
        while let Some(frames::Frame::Method(_, class)) =
            frames::parse(&mut out, 1 << 20).expect("valid")
        {
            methods.push(*class);
        }
        assert_eq!(
            methods,
            vec![
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: 2,
                    multiple: true
                })),
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: 3,
                    multiple: false,
                    requeue: false
                })),
            ]
        );
    }
}
