//! The virtual hosts of a node of a cluster follow the durable definitions
//! every node commits: exchanges and bindings are on every node; a classic
//! queue lives on its home node (the one it was declared on) and is known
//! elsewhere as a remote queue, which can be declared, bound to and
//! deleted from any node; a stream queue is a view of its topic on every
//! node.
//!
//! [`VirtualHosts::reconcile`] applies what changed in the committed
//! definitions since its last call, locally only (it never commits): the
//! node that made a change has applied it already, so every step checks
//! before it acts, and a queue is removed only if it is the very queue the
//! removed definition named (its store id), never one declared again since.

use std::sync::Arc;

use super::{VirtualHost, VirtualHosts};
use crate::messaging::MessagingError;
use crate::messaging::definitions::{
    BindingDefinition, Definition, Definitions, ExchangeDefinition, QueueDefinition,
};
use crate::messaging::exchange::{Destination, Exchange, ExchangeKind};
use crate::messaging::queue::{Queue, QueueArgs, QueueOptions};
use crate::messaging::queue_store::{message_log_name, settlement_log_name};

impl VirtualHosts {
    /// Applies the definitions committed since the last call (or since
    /// open) to the virtual hosts of this node. Blocking.
    pub(crate) fn reconcile(&self, current: Definitions) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        // Bindings go before queues and exchanges, and come after them.
        let gone: Vec<&Definition> = applied
            .iter()
            .filter(|(key, definition)| current.get(*key) != Some(*definition))
            .map(|(_, definition)| definition)
            .collect();
        for definition in gone.into_iter().rev() {
            if let Some(vhost) = self.get(definition.vhost()) {
                vhost.forget(definition);
            }
        }
        for (key, definition) in &current {
            if applied.get(key) != Some(definition)
                && let Some(vhost) = self.get(definition.vhost())
            {
                vhost.learn(definition);
            }
        }
        *applied = current;
    }
}

impl VirtualHost {
    /// The classic queue `name` when it lives on another node.
    pub fn remote_queue(&self, name: &str) -> Option<QueueDefinition> {
        self.remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|(definition, _)| definition.clone())
    }

    /// The stand-in of classic queue `name` when it lives on another node
    /// (consumers and settlements go through it to the queue's home).
    pub(super) fn remote_stand_in(&self, name: &str) -> Option<Arc<Queue>> {
        self.remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|(_, stand_in)| Arc::clone(stand_in))
    }

    /// How many classic queues live on other nodes.
    pub(super) fn remote_count(&self) -> u64 {
        self.remote.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// The classic queues living on other nodes.
    pub fn remote_queues(&self) -> Vec<QueueDefinition> {
        let mut queues: Vec<QueueDefinition> = self
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(definition, _)| definition.clone())
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        queues
    }

    /// Whether a definition of a classic queue names another node as home.
    pub(super) fn lives_elsewhere(&self, queue: &QueueDefinition) -> bool {
        queue.home.is_some() && queue.home != self.definitions.home()
    }

    pub(super) fn remember_remote(&self, queue: QueueDefinition) {
        let args = QueueArgs::parse(&queue.name, &self.name, &queue.arguments).unwrap_or_default();
        let stand_in = Queue::remote_stand_in(
            queue.name.clone(),
            QueueOptions {
                durable: true,
                exclusive_owner: None,
                auto_delete: queue.auto_delete,
                arguments: queue.arguments.clone(),
            },
            args,
            self.queue_home(),
            (queue.home.unwrap_or(-1), queue.store_id.clone()),
            Arc::clone(&self.carrier),
        );
        self.remote
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.name.clone(), (queue, stand_in));
    }

    /// A passive declaration of a remote queue: RabbitMQ's NOT_FOUND
    /// while its home is down.
    pub(super) fn declare_remote_passive(
        &self,
        remote: &QueueDefinition,
    ) -> Result<(String, usize, usize), MessagingError> {
        self.check_home_up(remote)?;
        Ok((remote.name.clone(), 0, 0))
    }

    fn check_home_up(&self, remote: &QueueDefinition) -> Result<(), MessagingError> {
        match remote.home {
            Some(home) if self.definitions.is_down(home) => Err(MessagingError::NotFound(format!(
                "home node '{home}' of durable queue '{}' in vhost '{}' is down or inaccessible",
                remote.name, self.name
            ))),
            _ => Ok(()),
        }
    }

    /// A redeclaration of a remote queue: equivalent or refused, as for a
    /// local one (its counts are its home's, unknown here: 0); NOT_FOUND
    /// while its home is down, as RabbitMQ answers.
    pub(super) fn redeclare_remote(
        &self,
        remote: &QueueDefinition,
        options: &QueueOptions,
    ) -> Result<(String, usize, usize), MessagingError> {
        self.check_home_up(remote)?;
        let inequivalent = |arg: &str, received: String, current: String| {
            Err(MessagingError::PreconditionFailed(format!(
                "inequivalent arg '{arg}' for queue '{}' in vhost '{}': received '{received}' but current is '{current}'",
                remote.name, self.name
            )))
        };
        if !options.durable {
            return inequivalent("durable", "false".to_owned(), "true".to_owned());
        }
        if options.exclusive_owner.is_some() {
            return Err(self.locked(&remote.name));
        }
        if options.auto_delete != remote.auto_delete {
            return inequivalent(
                "auto_delete",
                options.auto_delete.to_string(),
                remote.auto_delete.to_string(),
            );
        }
        for (key, value) in remote.arguments.inner() {
            let received = options.arguments.inner().get(key);
            if !super::declare::same_argument(received, Some(value)) {
                return inequivalent(
                    key.as_str(),
                    super::declare::describe(received),
                    super::declare::describe(Some(value)),
                );
            }
        }
        Ok((remote.name.clone(), 0, 0))
    }

    /// A declaration that lost to another node's of the same queue: the
    /// winner's queue, as a redeclaration of it.
    pub(super) fn declared_elsewhere(
        &self,
        name: &str,
        options: &QueueOptions,
        connection: u64,
    ) -> Result<(String, usize, usize), MessagingError> {
        let gone = || {
            MessagingError::NotFound(format!(
                "queue '{name}' in vhost '{}' was declared elsewhere and is gone again",
                self.name
            ))
        };
        let winner = self.definitions.queue(&self.name, name).ok_or_else(gone)?;
        if self.is_replicated_quorum(&winner) {
            self.follow_quorum(&winner);
            return match self.queue(name) {
                Some(existing) => self.redeclare(&existing, options, connection),
                None => self.redeclare_remote(&winner, options),
            };
        }
        if self.lives_elsewhere(&winner) {
            if self.remote_queue(name).is_none() {
                self.remember_remote(winner.clone());
            }
            return self.redeclare_remote(&winner, options);
        }
        // Another declarer on this node won: its queue appears as soon as
        // its commit returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(existing) = self.queue(name) {
                return self.redeclare(&existing, options, connection);
            }
            if std::time::Instant::now() >= deadline {
                return Err(gone());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// `queue.delete` of a remote queue: its bindings and definition go
    /// (the home deletes its messages when it applies the deletion).
    pub(super) fn delete_remote(
        &self,
        remote: &QueueDefinition,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<usize, MessagingError> {
        if if_unused || if_empty {
            return Err(MessagingError::NotImplemented(format!(
                "queue '{}' in vhost '{}' lives on node {}: delete it there with if-unused or if-empty",
                remote.name,
                self.name,
                remote.home.unwrap_or(-1)
            )));
        }
        let emptied = self.unbind_queue(&remote.name)?;
        self.definitions
            .commit(crate::metadata::MetadataCommand::DeleteQueue {
                vhost: self.name.clone(),
                name: remote.name.clone(),
            })?;
        self.drop_quorum_partition(&remote.store_id);
        self.remote
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&remote.name);
        self.delete_emptied(emptied)?;
        Ok(0)
    }

    /// Takes a committed definition, unless this node has it already.
    fn learn(&self, definition: &Definition) {
        match definition {
            Definition::Exchange(exchange) => {
                if self.exchange(&exchange.name).is_none() {
                    self.learn_exchange(exchange);
                }
            }
            Definition::Queue(queue) if self.is_replicated_quorum(queue) => {
                self.follow_quorum(queue);
            }
            Definition::Queue(queue) => {
                if self.lives_elsewhere(queue) {
                    if self.queue(&queue.name).is_none() {
                        self.remember_remote(queue.clone());
                    }
                } else if queue.store_id.is_empty() && self.queue(&queue.name).is_none() {
                    // A stream declared on another node: its topic is
                    // everywhere already.
                    if let Err(error) = self.restore(definition.clone()) {
                        tracing::warn!(vhost = %self.name, queue = %queue.name, %error, "cannot open a stream queue declared on another node");
                    }
                }
                // A classic queue of this node's is its declarer's to
                // make (applying it again here would bring back one
                // deleted since).
            }
            Definition::Binding(binding) => self.learn_binding(binding),
        }
    }

    fn learn_exchange(&self, exchange: &ExchangeDefinition) {
        let Ok(kind) = exchange.kind.parse::<ExchangeKind>() else {
            tracing::warn!(vhost = %self.name, exchange = %exchange.name, kind = %exchange.kind, "skipping an exchange of unknown type");
            return;
        };
        self.exchanges_mut()
            .entry(exchange.name.clone())
            .or_insert_with(|| {
                Arc::new(Exchange::new(
                    exchange.name.clone(),
                    kind,
                    true,
                    exchange.auto_delete,
                    exchange.internal,
                    exchange.arguments.clone(),
                ))
            });
    }

    fn learn_binding(&self, binding: &BindingDefinition) {
        let present = match &binding.destination {
            Destination::Queue(name) => {
                self.queue(name).is_some() || self.remote_queue(name).is_some()
            }
            Destination::Exchange(name) => self.exchange(name).is_some(),
        };
        if let (Some(exchange), true) = (self.exchange(&binding.source), present) {
            exchange.bind(
                binding.destination.clone(),
                &binding.routing_key,
                &binding.arguments,
            );
        }
    }

    /// Drops what a definition removed by another node named, on this
    /// node only.
    fn forget(&self, definition: &Definition) {
        match definition {
            Definition::Exchange(exchange) => {
                let Some(local) = self.exchange(&exchange.name) else {
                    return;
                };
                if !local.durable {
                    return;
                }
                let destination = Destination::Exchange(exchange.name.clone());
                for source in self.exchange_list() {
                    source.unbind_destination(&destination);
                }
                let mut exchanges = self.exchanges_mut();
                if exchanges
                    .get(&exchange.name)
                    .is_some_and(|held| Arc::ptr_eq(held, &local))
                {
                    exchanges.remove(&exchange.name);
                }
            }
            Definition::Queue(queue) => self.forget_queue(queue),
            Definition::Binding(binding) => {
                if let Some(exchange) = self.exchange(&binding.source) {
                    exchange.unbind(
                        &binding.destination,
                        &binding.routing_key,
                        &binding.arguments,
                    );
                }
            }
        }
    }

    fn forget_queue(&self, queue: &QueueDefinition) {
        // Those of this queue only: a queue declared again under the name
        // meanwhile keeps its own.
        self.cancel_orphans(
            &queue.name,
            Some(queue.store_id.as_str()).filter(|id| !id.is_empty()),
        );
        self.forget_quorum_clients(&queue.name, &queue.store_id);
        let destination = Destination::Queue(queue.name.clone());
        {
            let mut remote = self.remote.write().unwrap_or_else(|e| e.into_inner());
            if remote
                .get(&queue.name)
                .is_some_and(|(held, _)| held.store_id == queue.store_id)
            {
                let stand_in = remote.remove(&queue.name).map(|(_, stand_in)| stand_in);
                drop(remote);
                if let Some(stand_in) = stand_in {
                    stand_in.mark_deleted();
                }
                for source in self.exchange_list() {
                    source.unbind_destination(&destination);
                }
                return;
            }
        }
        let Some(local) = self.queue(&queue.name) else {
            return;
        };
        let same = match local.store_id() {
            Some(store_id) => store_id == queue.store_id,
            None => queue.store_id.is_empty() && local.stream_topic().is_some(),
        };
        if !same {
            return;
        }
        for source in self.exchange_list() {
            source.unbind_destination(&destination);
        }
        let replicated = local.is_replicated();
        local.mark_deleted();
        {
            let mut queues = self.queues_mut();
            if queues
                .get(&queue.name)
                .is_some_and(|held| Arc::ptr_eq(held, &local))
            {
                queues.remove(&queue.name);
            }
        }
        // A quorum queue's partition is deleted by the node that deleted
        // the queue.
        if let Some(store_id) = local.store_id().filter(|_| !replicated) {
            for log in [message_log_name(store_id), settlement_log_name(store_id)] {
                if let Err(error) = self.logs.delete(&log) {
                    tracing::warn!(vhost = %self.name, queue = %queue.name, %error, "cannot delete a queue log");
                }
            }
        }
        tracing::info!(vhost = %self.name, queue = %queue.name, "queue deleted from another node");
    }
}
