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
    /// exchange-to-exchange bindings and alternate exchanges.
    pub(super) fn route(&self, exchange: &Arc<Exchange>, message: &Message) -> Vec<Arc<Queue>> {
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
        queue_names
            .iter()
            .filter_map(|name| queues.get(name).cloned())
            .collect()
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
        let queues = self.route(&target, &message);
        let mut outcome = PublishOutcome {
            queues: queues.len(),
            ..PublishOutcome::default()
        };
        let message = Arc::new(message);
        for queue in queues {
            let enqueued = queue.enqueue_from(Arc::clone(&message), source)?;
            outcome.rejected |= enqueued.rejected;
            outcome.acks.extend(enqueued.sync);
            self.dead_letter(enqueued.dead);
        }
        Ok(outcome)
    }
}
