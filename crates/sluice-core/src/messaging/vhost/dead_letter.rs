//! Dead-lettering: what died in a queue (expired, over a limit, rejected
//! without requeue) republished to its dead-letter exchange with an
//! `x-death` history, as RabbitMQ does.

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use super::VirtualHost;
use crate::messaging::message::{Message, short, string_value};
use crate::messaging::queue::{DeadLetter, DeadLetters, DeathReason};

impl VirtualHost {
    /// Republishes messages that died in a queue to its dead-letter
    /// exchange, and what dies in turn where they land.
    ///
    /// A dead letter its queue holds (`at-least-once`) is settled there
    /// once every queue it was routed to confirmed it; one routed nowhere,
    /// refused or unconfirmed stays held and is sent again later.
    pub fn dead_letter(&self, dead: DeadLetters) {
        let mut pending = vec![dead];
        while let Some(batch) = pending.pop() {
            let DeadLetters {
                queue,
                store_id,
                exchange,
                routing_key,
                letters,
            } = batch;
            let mut held = Vec::new();
            for letter in letters {
                let id = letter.held;
                let (died, confirm) =
                    self.republish_dead(&queue, &exchange, routing_key.as_deref(), letter);
                pending.extend(died);
                if let (Some(id), Some(acks)) = (id, confirm) {
                    held.push((id, acks));
                }
            }
            if !held.is_empty() {
                self.settle_when_confirmed(&queue, store_id.as_deref(), held);
            }
        }
    }

    /// Settles held dead letters of `queue` once their targets confirmed
    /// them (waited for off the caller's thread); until then they are not
    /// sent again, and those a target failed to confirm are sent again
    /// later.
    fn settle_when_confirmed(
        &self,
        queue: &str,
        store_id: Option<&str>,
        held: Vec<(u64, crate::Acks)>,
    ) {
        // The queue the letters died in, not one declared since by its name
        // (whose ids start again).
        let Some(source) = self
            .queue(queue)
            .filter(|q| q.remote_node().is_none() && q.store_id() == store_id)
        else {
            return;
        };
        let ids: Vec<u64> = held.iter().map(|(id, _)| *id).collect();
        source.held_in_flight(&ids);
        let settle = move || {
            let mut confirmed = Vec::new();
            let mut failed = Vec::new();
            for (id, acks) in held {
                if acks.wait().is_ok() {
                    confirmed.push(id);
                } else {
                    failed.push(id);
                }
            }
            if !confirmed.is_empty() {
                source.settle_held(&confirmed);
            }
            if !failed.is_empty() {
                source.release_held(&failed);
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            drop(tokio::task::spawn_blocking(settle));
        } else {
            settle();
        }
    }

    /// Republishes a message that died in `queue` to its dead-letter
    /// exchange with an `x-death` entry, as RabbitMQ does; returns what
    /// died making room for it. Dropped when the exchange does not exist
    /// or the message would cycle back without a rejection in between.
    fn republish_dead(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: Option<&str>,
        letter: DeadLetter,
    ) -> (Vec<DeadLetters>, Option<crate::Acks>) {
        let Some(target) = self.exchange(exchange) else {
            return (Vec::new(), None);
        };
        let original = &letter.message;
        let mut headers = original.headers().cloned().unwrap_or_default();
        let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
            Some(AMQPValue::FieldArray(array)) => array.as_slice().to_vec(),
            _ => Vec::new(),
        };
        let entry_of = |value: &AMQPValue| -> Option<(String, String)> {
            let AMQPValue::FieldTable(table) = value else {
                return None;
            };
            let queue = table.inner().get("queue").and_then(string_value)?;
            let reason = table.inner().get("reason").and_then(string_value)?;
            Some((queue, reason))
        };
        let reason = letter.reason.as_str();
        // Cycle detection: a message that already died here for the same
        // automatic reason would loop forever.
        if letter.reason != DeathReason::Rejected
            && deaths
                .iter()
                .filter_map(entry_of)
                .any(|(q, r)| q == queue && r == reason)
            && !deaths
                .iter()
                .filter_map(entry_of)
                .any(|(_, r)| r == DeathReason::Rejected.as_str())
        {
            tracing::debug!(queue, "dead-letter cycle; message dropped");
            return (Vec::new(), None);
        }
        let position = deaths
            .iter()
            .position(|d| entry_of(d).is_some_and(|(q, r)| q == queue && r == reason));
        let mut entry = match position {
            Some(at) => match deaths.remove(at) {
                AMQPValue::FieldTable(table) => table,
                _ => FieldTable::default(),
            },
            None => {
                let mut table = FieldTable::default();
                table.insert(
                    "queue".into(),
                    AMQPValue::LongString(LongString::from(queue)),
                );
                table.insert(
                    "reason".into(),
                    AMQPValue::LongString(LongString::from(reason)),
                );
                table.insert(
                    "exchange".into(),
                    AMQPValue::LongString(LongString::from(original.exchange.as_str())),
                );
                let mut keys = FieldArray::default();
                keys.push(AMQPValue::LongString(LongString::from(
                    original.routing_key.as_str(),
                )));
                table.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
                if let Some(expiration) = original.properties.expiration() {
                    table.insert(
                        "original-expiration".into(),
                        AMQPValue::LongString(LongString::from(expiration.as_str())),
                    );
                }
                table
            }
        };
        let count = match entry.inner().get("count") {
            Some(value) => crate::messaging::message::integer_value(value).unwrap_or(0) + 1,
            None => 1,
        };
        entry.insert("count".into(), AMQPValue::LongLongInt(count));
        entry.insert(
            "time".into(),
            AMQPValue::Timestamp(u64::try_from(self.clock.now_ms() / 1000).unwrap_or(0)),
        );
        deaths.insert(0, AMQPValue::FieldTable(entry));
        if !headers.contains_key("x-first-death-reason") {
            headers.insert(
                "x-first-death-reason".into(),
                AMQPValue::LongString(LongString::from(reason)),
            );
            headers.insert(
                "x-first-death-queue".into(),
                AMQPValue::LongString(LongString::from(queue)),
            );
            headers.insert(
                "x-first-death-exchange".into(),
                AMQPValue::LongString(LongString::from(original.exchange.as_str())),
            );
        }
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(deaths)),
        );
        let mut properties = original.properties.clone().with_headers(headers);
        if properties.expiration().is_some() {
            properties = clear_expiration(properties);
        }
        let routing_key: ShortString = match routing_key {
            Some(key) => short(key),
            None => original.routing_key.clone(),
        };
        let message = Message {
            exchange: short(exchange),
            routing_key,
            properties,
            body: original.body.clone(),
        };
        let message = Arc::new(message);
        let mut died = Vec::new();
        let (local, remote) = self.route(&target, &message);
        // What a held dead letter's settlement waits for (at most once,
        // RabbitMQ's default, waits for nothing): every target queue took
        // it, and its confirm.
        let (mut acks, mut confirmed) = self.send_to_homes(&remote, &message);
        confirmed &= !(local.is_empty() && remote.is_empty());
        for target_queue in local {
            match target_queue.enqueue(Arc::clone(&message)) {
                Ok(outcome) => {
                    confirmed &= !outcome.rejected && !outcome.gone;
                    if let Some(sync) = outcome.sync {
                        acks.add(sync);
                    }
                    died.push(outcome.dead);
                }
                Err(error) => {
                    confirmed = false;
                    tracing::warn!(queue = target_queue.name(), %error, "cannot dead-letter a message");
                }
            }
        }
        (died, confirmed.then_some(acks))
    }
}

/// Properties without `expiration` (the codec has no setter that clears one).
fn clear_expiration(
    properties: amq_protocol::protocol::BasicProperties,
) -> amq_protocol::protocol::BasicProperties {
    let mut out = amq_protocol::protocol::BasicProperties::default();
    if let Some(v) = properties.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = properties.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = properties.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = properties.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = properties.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = properties.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = properties.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = properties.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = properties.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = properties.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = properties.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = properties.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = properties.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}
