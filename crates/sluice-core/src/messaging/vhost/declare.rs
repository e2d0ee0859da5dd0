//! Declarations: exchanges and queues declared, checked for equivalence
//! and deleted, bindings made and removed; durable ones as metadata
//! commands before they take effect.

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::{ExchangeOptions, VirtualHost, unique_token};
use crate::CoreError;
use crate::messaging::MessagingError;
use crate::messaging::definitions::{BindingDefinition, ExchangeDefinition, QueueDefinition};
use crate::messaging::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::messaging::message::string_value;
use crate::messaging::queue::{Queue, QueueArgs, QueueOptions, QueueType, Store};
use crate::messaging::queue_store::{QueueStore, message_log_name, settlement_log_name, store_id};
use crate::metadata::MetadataCommand;

impl VirtualHost {
    /// `exchange.declare`.
    ///
    /// # Errors
    /// As RabbitMQ: NOT_FOUND (passive), ACCESS_REFUSED (reserved names),
    /// PRECONDITION_FAILED (inequivalent), COMMAND_INVALID (unknown type).
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        options: ExchangeOptions,
        passive: bool,
    ) -> Result<(), MessagingError> {
        if name.is_empty() {
            return Err(MessagingError::AccessRefused(
                "operation not permitted on the default exchange".to_owned(),
            ));
        }
        if passive {
            return self
                .exchange(name)
                .map(|_| ())
                .ok_or_else(|| self.no_exchange(name));
        }
        let kind_parsed: ExchangeKind = kind.parse()?;
        if let Some(existing) = self.exchange(name) {
            return self.check_exchange_equivalent(&existing, kind_parsed, &options);
        }
        if name.starts_with("amq.") {
            return Err(MessagingError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if options.durable {
            // Committed without holding the exchanges: on a cluster a
            // commit waits for the quorum, and routing must not wait.
            self.definitions
                .commit(MetadataCommand::DeclareExchange(ExchangeDefinition {
                    vhost: self.name.clone(),
                    name: name.to_owned(),
                    kind: kind_parsed.as_str().to_owned(),
                    auto_delete: options.auto_delete,
                    internal: options.internal,
                    arguments: options.arguments.clone(),
                }))?;
        }
        let mut exchanges = self.exchanges_mut();
        if let Some(existing) = exchanges.get(name) {
            // Declared meanwhile (here, or learnt from another node).
            return self.check_exchange_equivalent(existing, kind_parsed, &options);
        }
        exchanges.insert(
            name.to_owned(),
            Arc::new(Exchange::new(
                name.to_owned(),
                kind_parsed,
                options.durable,
                options.auto_delete,
                options.internal,
                options.arguments,
            )),
        );
        Ok(())
    }

    fn check_exchange_equivalent(
        &self,
        existing: &Exchange,
        kind: ExchangeKind,
        options: &ExchangeOptions,
    ) -> Result<(), MessagingError> {
        let inequivalent = |arg: &str, received: &str, current: &str| {
            Err(MessagingError::PreconditionFailed(format!(
                "inequivalent arg '{arg}' for exchange '{}' in vhost '{}': received '{received}' but current is '{current}'",
                existing.name, self.name
            )))
        };
        if existing.kind != kind {
            return inequivalent("type", kind.as_str(), existing.kind.as_str());
        }
        if existing.durable != options.durable {
            return inequivalent(
                "durable",
                &options.durable.to_string(),
                &existing.durable.to_string(),
            );
        }
        if existing.auto_delete != options.auto_delete {
            return inequivalent(
                "auto_delete",
                &options.auto_delete.to_string(),
                &existing.auto_delete.to_string(),
            );
        }
        if existing.internal != options.internal {
            return inequivalent(
                "internal",
                &options.internal.to_string(),
                &existing.internal.to_string(),
            );
        }
        if existing.alternate_exchange()
            != options
                .arguments
                .inner()
                .get("alternate-exchange")
                .and_then(string_value)
        {
            return Err(MessagingError::PreconditionFailed(format!(
                "inequivalent arg 'alternate-exchange' for exchange '{}' in vhost '{}'",
                existing.name, self.name
            )));
        }
        Ok(())
    }

    /// `exchange.delete`. Deleting an exchange that does not exist succeeds.
    ///
    /// # Errors
    /// ACCESS_REFUSED for the default and `amq.*` exchanges;
    /// PRECONDITION_FAILED for `if-unused` with bindings.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), MessagingError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(MessagingError::AccessRefused(format!(
                "operation not permitted on the {} exchange",
                if name.is_empty() {
                    "default".to_owned()
                } else {
                    format!("'{name}'")
                }
            )));
        }
        let Some(exchange) = self.exchange(name) else {
            return Ok(());
        };
        if if_unused && exchange.binding_count() > 0 {
            return Err(MessagingError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&exchange)?;
        Ok(())
    }

    fn remove_exchange(&self, exchange: &Arc<Exchange>) -> Result<(), CoreError> {
        for binding in exchange.bindings() {
            self.forget_binding(&binding)?;
        }
        let destination = Destination::Exchange(exchange.name.clone());
        let sources: Vec<Arc<Exchange>> = self.exchanges().values().cloned().collect();
        for source in sources {
            for binding in source.unbind_destination(&destination) {
                self.forget_binding(&binding)?;
            }
        }
        if exchange.durable {
            self.definitions.commit(MetadataCommand::DeleteExchange {
                vhost: self.name.clone(),
                name: exchange.name.clone(),
            })?;
        }
        self.exchanges_mut().remove(&exchange.name);
        Ok(())
    }

    pub(super) fn forget_binding(&self, binding: &Binding) -> Result<(), CoreError> {
        if self.binding_is_durable(&binding.source, &binding.destination) {
            self.definitions
                .commit(MetadataCommand::Unbind(BindingDefinition {
                    vhost: self.name.clone(),
                    source: binding.source.clone(),
                    destination: binding.destination.clone(),
                    routing_key: binding.routing_key.clone(),
                    arguments: binding.arguments.clone(),
                }))?;
        }
        Ok(())
    }

    fn binding_is_durable(&self, source: &str, destination: &Destination) -> bool {
        let source_durable = self.exchange(source).is_some_and(|e| e.durable);
        let destination_durable = match destination {
            Destination::Queue(name) => {
                self.queue(name)
                    .is_some_and(|q| q.options().durable && q.store_id().is_some())
                    || self.remote_queue(name).is_some()
            }
            Destination::Exchange(name) => self.exchange(name).is_some_and(|e| e.durable),
        };
        source_durable && destination_durable
    }

    /// `queue.declare`; returns the name (server-named when empty), ready
    /// message count and consumer count.
    ///
    /// # Errors
    /// As RabbitMQ: NOT_FOUND (passive), RESOURCE_LOCKED (another
    /// connection's exclusive queue), ACCESS_REFUSED (reserved names),
    /// PRECONDITION_FAILED (inequivalent or invalid arguments).
    pub fn declare_queue(
        &self,
        name: &str,
        options: QueueOptions,
        passive: bool,
        connection: u64,
    ) -> Result<(String, usize, usize), MessagingError> {
        if passive {
            if self.queue(name).is_none()
                && let Some(remote) = self.remote_queue(name)
            {
                return self.declare_remote_passive(&remote);
            }
            let queue = self.usable_queue(name, connection)?;
            return Ok((
                name.to_owned(),
                queue.message_count(),
                queue.consumer_count(),
            ));
        }
        let name = if name.is_empty() {
            format!("amq.gen-{}", unique_token())
        } else {
            if name.starts_with("amq.") {
                return Err(MessagingError::AccessRefused(format!(
                    "queue name '{name}' contains reserved prefix 'amq.*'"
                )));
            }
            name.to_owned()
        };
        let args = QueueArgs::parse(&name, &self.name, &options.arguments)?;
        if let Some(existing) = self.queue(&name) {
            return self.redeclare(&existing, &options, connection);
        }
        if let Some(remote) = self.remote_queue(&name) {
            return self.redeclare_remote(&remote, &options);
        }
        // The node's cap (`limits.max_queues`), and the virtual host's
        // `max-queues` limit over the queues this node knows: its own and
        // other nodes' durable classic queues.
        let known = self.queues_map().len() as u64;
        let limit = [
            self.max_queues
                .filter(|limit| known >= u64::from(*limit))
                .map(u64::from),
            self.definitions
                .queue_limit(&self.name)
                .filter(|limit| known + self.remote_count() >= *limit),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(limit) = limit {
            return Err(MessagingError::PreconditionFailed(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({limit}) is reached",
                self.name
            )));
        }
        if args.queue_type == QueueType::Stream {
            return self.declare_stream(name, options, args);
        }
        if args.queue_type == QueueType::Quorum {
            // RabbitMQ's words; a quorum queue lives as long as it is
            // not deleted.
            let refused = if !options.durable {
                Some("non-durable")
            } else if options.exclusive_owner.is_some() {
                Some("exclusive-owner")
            } else if options.auto_delete {
                Some("auto-delete")
            } else {
                None
            };
            if let Some(property) = refused {
                return Err(MessagingError::PreconditionFailed(format!(
                    "invalid property '{property}' for queue '{name}' in vhost '{}'",
                    self.name
                )));
            }
            if self.replicates_quorum_queues() {
                return self.declare_quorum(name, options, &args, connection);
            }
        }
        // Exclusive queues die with their connection: nothing to keep.
        let persisted = options.durable && options.exclusive_owner.is_none();
        if !persisted {
            let mut queues = self.queues_mut();
            if let Some(existing) = queues.get(&name).cloned() {
                drop(queues);
                return self.redeclare(&existing, &options, connection);
            }
            let queue = Queue::new(name.clone(), options, args, None, self.queue_home(), None);
            queues.insert(name.clone(), queue);
            return Ok((name, 0, 0));
        }
        // Committed without holding the queues: on a cluster a commit
        // waits for the quorum, and publishes and consumers must not wait.
        // Two declarers of one name: the first commit wins (the metadata
        // refuses the second), the other takes the winner's queue.
        let store = {
            let store_id = store_id(&name, &unique_token());
            let recovered = QueueStore::open(&self.logs, &store_id, u64::MAX)?;
            let committed =
                self.definitions
                    .commit(MetadataCommand::DeclareQueue(QueueDefinition {
                        vhost: self.name.clone(),
                        name: name.clone(),
                        store_id: store_id.clone(),
                        auto_delete: options.auto_delete,
                        arguments: options.arguments.clone(),
                        home: self.definitions.home(),
                    }));
            if let Err(CoreError::QueueExists { .. }) = &committed {
                // Declared elsewhere at the same time, committed first:
                // this declaration's store goes, the queue is that one.
                drop(recovered);
                for log in [message_log_name(&store_id), settlement_log_name(&store_id)] {
                    self.logs.delete(&log).map_err(CoreError::from)?;
                }
                return self.declared_elsewhere(&name, &options, connection);
            }
            committed?;
            Some((store_id, Store::Local(recovered.store)))
        };
        let queue = Queue::new(name.clone(), options, args, store, self.queue_home(), None);
        self.queues_mut().insert(name.clone(), queue);
        Ok((name, 0, 0))
    }

    /// Declares a stream queue: opens the topic of that name, or creates it
    /// with the stream's partitions and retention.
    fn declare_stream(
        &self,
        name: String,
        options: QueueOptions,
        args: QueueArgs,
    ) -> Result<(String, usize, usize), MessagingError> {
        let refuse = |property: &str| {
            Err(MessagingError::PreconditionFailed(format!(
                "invalid property '{property}' for queue '{name}' in vhost '{}'",
                self.name
            )))
        };
        if !options.durable {
            return refuse("non-durable");
        }
        if options.exclusive_owner.is_some() {
            return refuse("exclusive");
        }
        if options.auto_delete {
            return refuse("auto-delete");
        }
        let topic = self
            .stream_topic(&name, &args)
            .map_err(|error| match error {
                CoreError::InvalidTopicName { .. }
                | CoreError::InvalidConfig { .. }
                | CoreError::TopicLimit { .. } => MessagingError::PreconditionFailed(format!(
                    "cannot make queue '{name}' in vhost '{}' a stream: {error}",
                    self.name
                )),
                other => MessagingError::Core(other),
            })?;
        if let Some(existing) = self.queue(&name) {
            return self.redeclare(&existing, &options, 0);
        }
        // Committed without holding the queues (see declare_queue); two
        // declarers of one stream commit the same declaration.
        self.definitions
            .commit(MetadataCommand::DeclareQueue(QueueDefinition {
                vhost: self.name.clone(),
                name: name.clone(),
                store_id: String::new(),
                auto_delete: false,
                arguments: options.arguments.clone(),
                // A stream's records are its topic's, on every node.
                home: None,
            }))?;
        let mut queues = self.queues_mut();
        if let Some(existing) = queues.get(&name).cloned() {
            drop(queues);
            return self.redeclare(&existing, &options, 0);
        }
        let count = {
            let queue = Queue::new(
                name.clone(),
                options,
                args,
                None,
                self.queue_home(),
                Some(topic),
            );
            let count = queue.message_count();
            queues.insert(name.clone(), queue);
            count
        };
        Ok((name, count, 0))
    }

    /// The topic behind stream queue `name`, created if missing.
    pub(super) fn stream_topic(
        &self,
        name: &str,
        args: &QueueArgs,
    ) -> Result<Arc<crate::Topic>, CoreError> {
        if let Some(topic) = self.topics.get(name) {
            return Ok(topic);
        }
        let mut settings: Vec<(&str, String)> = Vec::new();
        if let Some(ms) = args.max_age_ms {
            settings.push(("retention.ms", ms.to_string()));
        }
        if let Some(bytes) = args.max_length_bytes {
            settings.push(("retention.bytes", bytes.to_string()));
        }
        let config = crate::TopicConfig::new(settings)?;
        self.topics
            .create_or_get(name, args.stream_partitions.unwrap_or(1), config)
    }

    pub(super) fn redeclare(
        &self,
        existing: &Arc<Queue>,
        options: &QueueOptions,
        connection: u64,
    ) -> Result<(String, usize, usize), MessagingError> {
        if !existing.usable_by(connection)
            || (options.exclusive_owner.is_some() && existing.options().exclusive_owner.is_none())
        {
            return Err(self.locked(existing.name()));
        }
        let inequivalent = |arg: &str, received: String, current: String| {
            Err(MessagingError::PreconditionFailed(format!(
                "inequivalent arg '{arg}' for queue '{}' in vhost '{}': received '{received}' but current is '{current}'",
                existing.name(),
                self.name
            )))
        };
        let current = existing.options();
        let declared_type = options
            .arguments
            .inner()
            .get("x-queue-type")
            .and_then(string_value);
        let is_stream = existing.stream_topic().is_some();
        if is_stream != (declared_type.as_deref() == Some("stream")) {
            let current_type = if is_stream { "stream" } else { "classic" };
            return inequivalent(
                "x-queue-type",
                declared_type.unwrap_or_else(|| "classic".to_owned()),
                current_type.to_owned(),
            );
        }
        if current.durable != options.durable {
            return inequivalent(
                "durable",
                options.durable.to_string(),
                current.durable.to_string(),
            );
        }
        if current.auto_delete != options.auto_delete {
            return inequivalent(
                "auto_delete",
                options.auto_delete.to_string(),
                current.auto_delete.to_string(),
            );
        }
        for key in [
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-overflow",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-priority",
            "x-single-active-consumer",
        ] {
            let received = options.arguments.inner().get(key);
            let had = current.arguments.inner().get(key);
            if !same_argument(received, had) {
                return inequivalent(key, describe(received), describe(had));
            }
        }
        existing.touch();
        Ok((
            existing.name().to_owned(),
            existing.message_count(),
            existing.consumer_count(),
        ))
    }

    /// `queue.delete`; returns the number of ready messages deleted.
    /// Deleting a queue that does not exist succeeds with 0.
    ///
    /// # Errors
    /// RESOURCE_LOCKED for another connection's exclusive queue;
    /// PRECONDITION_FAILED when `if-unused`/`if-empty` do not hold.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: u64,
    ) -> Result<usize, MessagingError> {
        let Some(queue) = self.queue(name) else {
            return match self.remote_queue(name) {
                Some(remote) => self.delete_remote(&remote, if_unused, if_empty),
                None => Ok(0),
            };
        };
        if !queue.usable_by(connection) {
            return Err(self.locked(name));
        }
        if if_unused && queue.consumer_count() > 0 {
            return Err(MessagingError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && queue.message_count() > 0 {
            return Err(MessagingError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' is not empty",
                self.name
            )));
        }
        Ok(self.remove_queue(&queue)?)
    }

    /// Removes (and forgets) every binding to queue `name`; the auto-delete
    /// exchanges that it left without bindings.
    pub(super) fn unbind_queue(&self, name: &str) -> Result<Vec<Arc<Exchange>>, CoreError> {
        let destination = Destination::Queue(name.to_owned());
        let sources: Vec<Arc<Exchange>> = self.exchanges().values().cloned().collect();
        let mut emptied = Vec::new();
        for source in sources {
            let removed = source.unbind_destination(&destination);
            for binding in &removed {
                self.forget_binding(binding)?;
            }
            if !removed.is_empty() && source.auto_delete && source.binding_count() == 0 {
                emptied.push(source);
            }
        }
        Ok(emptied)
    }

    pub(super) fn remove_queue(&self, queue: &Arc<Queue>) -> Result<usize, CoreError> {
        let emptied = self.unbind_queue(queue.name())?;
        let replicated = queue.is_replicated();
        if queue.stream_topic().is_some() || queue.store_id().is_some() {
            self.definitions.commit(MetadataCommand::DeleteQueue {
                vhost: self.name.clone(),
                name: queue.name().to_owned(),
            })?;
        }
        let count = queue.mark_deleted();
        self.queues_mut().remove(queue.name());
        match queue.store_id() {
            // A quorum queue on a cluster: its partition goes with it.
            Some(store_id) if replicated => self.drop_quorum_partition(store_id),
            Some(store_id) => {
                self.logs.delete(&message_log_name(store_id))?;
                self.logs.delete(&settlement_log_name(store_id))?;
            }
            None => {}
        }
        if let Some(topic) = queue.stream_topic() {
            // The stream is its topic: deleting one deletes the other.
            match self.topics.delete(topic.name()) {
                Ok(()) | Err(CoreError::UnknownTopic { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        self.delete_emptied(emptied)?;
        Ok(count)
    }

    pub(super) fn delete_emptied(&self, emptied: Vec<Arc<Exchange>>) -> Result<(), CoreError> {
        for exchange in emptied {
            if exchange.binding_count() == 0 {
                self.remove_exchange(&exchange)?;
            }
        }
        Ok(())
    }

    /// `queue.purge`; returns the number of messages removed.
    ///
    /// # Errors
    /// NOT_FOUND, RESOURCE_LOCKED, storage failures.
    pub fn purge_queue(&self, name: &str, connection: u64) -> Result<usize, MessagingError> {
        self.usable_queue(name, connection)?.purge()
    }

    /// The metadata record of a binding of this virtual host.
    fn binding_definition(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> BindingDefinition {
        BindingDefinition {
            vhost: self.name.clone(),
            source: source.to_owned(),
            destination,
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        }
    }

    /// `queue.bind` and `exchange.bind`.
    ///
    /// # Errors
    /// NOT_FOUND for a missing end; ACCESS_REFUSED for the default exchange;
    /// RESOURCE_LOCKED; PRECONDITION_FAILED for bad headers arguments.
    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
        connection: u64,
    ) -> Result<(), MessagingError> {
        let (exchange, durable) = self.binding_ends(source, &destination, connection)?;
        exchange.validate_binding(arguments)?;
        if exchange.bind(destination.clone(), routing_key, arguments) && durable {
            let stored = self
                .definitions
                .commit(MetadataCommand::Bind(self.binding_definition(
                    source,
                    destination.clone(),
                    routing_key,
                    arguments,
                )));
            if let Err(error) = stored {
                exchange.unbind(&destination, routing_key, arguments);
                return Err(error.into());
            }
        }
        Ok(())
    }

    /// `queue.unbind` and `exchange.unbind`. Removing a binding that does
    /// not exist succeeds.
    ///
    /// # Errors
    /// As [`VirtualHost::bind`].
    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
        connection: u64,
    ) -> Result<(), MessagingError> {
        let (exchange, durable) = self.binding_ends(source, &destination, connection)?;
        if exchange.unbind(&destination, routing_key, arguments) {
            if durable {
                self.definitions
                    .commit(MetadataCommand::Unbind(self.binding_definition(
                        source,
                        destination,
                        routing_key,
                        arguments,
                    )))?;
            }
            if exchange.auto_delete && exchange.binding_count() == 0 {
                self.remove_exchange(&exchange)?;
            }
        }
        Ok(())
    }

    fn binding_ends(
        &self,
        source: &str,
        destination: &Destination,
        connection: u64,
    ) -> Result<(Arc<Exchange>, bool), MessagingError> {
        if source.is_empty()
            || matches!(destination, Destination::Exchange(name) if name.is_empty())
        {
            return Err(MessagingError::AccessRefused(
                "operation not permitted on the default exchange".to_owned(),
            ));
        }
        let destination_durable = match destination {
            Destination::Queue(name)
                if self.queue(name).is_none() && self.remote_queue(name).is_some() =>
            {
                true
            }
            Destination::Queue(name) => {
                let queue = self.usable_queue(name, connection)?;
                queue.store_id().is_some() || queue.stream_topic().is_some()
            }
            Destination::Exchange(name) => {
                self.exchange(name)
                    .ok_or_else(|| self.no_exchange(name))?
                    .durable
            }
        };
        let exchange = self
            .exchange(source)
            .ok_or_else(|| self.no_exchange(source))?;
        let durable = exchange.durable && destination_durable;
        Ok((exchange, durable))
    }
}

/// Whether a declaration's argument equals the queue's: by value, so
/// that an integer of any width (AMQP clients and STOMP headers type them
/// differently) or a string of either kind matches its equal.
pub(super) fn same_argument(received: Option<&AMQPValue>, had: Option<&AMQPValue>) -> bool {
    use crate::messaging::message::integer_value;
    match (received, had) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a == b
                || matches!((integer_value(a), integer_value(b)), (Some(x), Some(y)) if x == y)
                || matches!((string_value(a), string_value(b)), (Some(x), Some(y)) if x == y)
        }
        _ => false,
    }
}

pub(super) fn describe(value: Option<&AMQPValue>) -> String {
    match value {
        None => "none".to_owned(),
        Some(v) => crate::messaging::message::integer_value(v)
            .map(|n| n.to_string())
            .or_else(|| string_value(v))
            .unwrap_or_else(|| format!("{v:?}")),
    }
}
