//! Virtual hosts: each a namespace of exchanges, queues and bindings, with
//! the operations AMQP's `exchange.*`, `queue.*` and `basic.publish` reach.
//!
//! Lock order (see docs/locks.md): the vhost's `exchanges` map, then its
//! `queues` map, then one exchange's bindings or one queue's state. Routing
//! takes exchange binding locks one at a time and never a queue lock while
//! holding one.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use sluice_log::LogManager;

use super::MessagingError;
use super::alarms::ResourceMonitor;
use super::definitions::{
    BindingDefinition, Definition, DefinitionWriter, DurableDefinitions, ExchangeDefinition,
    QueueDefinition,
};
use super::exchange::{Binding, Destination, Exchange, ExchangeKind};
use super::message::{Message, short, string_value};
use super::queue::{DeadLetter, DeathReason, Queue, QueueArgs, QueueOptions, now_ms};
use super::queue_store::{QueueStore, Source, message_log_name, settlement_log_name, store_id};
use crate::metadata::MetadataCommand;
use crate::{Acks, CoreError, Topics};

/// How an exchange is declared.
#[derive(Debug, Clone, Default)]
pub struct ExchangeOptions {
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not published to directly.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
}

/// What a publish did.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Number of queues the message reached.
    pub queues: usize,
    /// What a confirm must wait for (one per durable queue log written).
    pub acks: Acks,
    /// A queue refused it (`x-overflow` reject-publish): nack, don't ack.
    pub rejected: bool,
}

/// Every virtual host of the broker.
#[derive(Debug)]
pub struct VirtualHosts {
    hosts: RwLock<HashMap<String, Arc<VirtualHost>>>,
    memory: Arc<ResourceMonitor>,
}

impl VirtualHosts {
    /// Opens the virtual hosts named (creating the standard exchanges) and
    /// restores durable definitions and queued messages.
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) fn open(
        logs: Arc<LogManager>,
        topics: Arc<Topics>,
        durable: DurableDefinitions,
        names: &[String],
        memory: Arc<ResourceMonitor>,
        max_queues: Option<u32>,
        restored: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<VirtualHosts, CoreError> {
        let DurableDefinitions { writer, stored } = durable;
        let total = stored.len();
        let definitions = Arc::new(writer);
        let mut hosts = HashMap::new();
        for name in names {
            hosts.insert(
                name.clone(),
                VirtualHost::new(
                    name.clone(),
                    Arc::clone(&logs),
                    Arc::clone(&topics),
                    Arc::clone(&definitions),
                    Arc::clone(&memory),
                    max_queues,
                ),
            );
        }
        for (index, definition) in stored.into_values().enumerate() {
            restored(index, total);
            let Some(vhost) = hosts.get(definition.vhost()) else {
                tracing::warn!(vhost = %definition.vhost(), "definitions of an unconfigured virtual host are kept but not loaded");
                continue;
            };
            vhost.restore(definition)?;
        }
        Ok(VirtualHosts {
            hosts: RwLock::new(hosts),
            memory,
        })
    }

    /// Counts of what the virtual hosts hold, for the recovery log line.
    pub(crate) fn recovered_summary(&self) -> RecoveredSummary {
        let mut summary = RecoveredSummary::default();
        for vhost in self.all() {
            summary.exchanges += vhost
                .exchange_list()
                .iter()
                .filter(|exchange| !exchange.name.is_empty() && !exchange.name.starts_with("amq."))
                .count();
            for queue in vhost.queues() {
                if queue.options().durable && queue.stream_topic().is_none() {
                    summary.durable_queues += 1;
                    summary.messages += queue.message_count() as u64;
                }
            }
            summary.bindings += vhost.bindings().len();
        }
        summary
    }

    /// The virtual host called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<VirtualHost>> {
        self.hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Memory held by queued messages, and its alarm.
    pub fn memory(&self) -> &Arc<ResourceMonitor> {
        &self.memory
    }

    /// Every virtual host, sorted by name.
    pub fn all(&self) -> Vec<Arc<VirtualHost>> {
        let mut all: Vec<Arc<VirtualHost>> = self
            .hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Periodic work: settlements written, expired messages and unused
    /// `x-expires` queues removed.
    pub fn maintain(&self) {
        for vhost in self.all() {
            vhost.maintain();
        }
    }

    /// Deletes the exclusive queues of a closed connection.
    pub fn connection_closed(&self, connection: u64) {
        for vhost in self.all() {
            vhost.connection_closed(connection);
        }
    }

    /// Writes pending settlements and marks durable queues closed cleanly
    /// (at shutdown).
    ///
    /// # Errors
    /// Storage failures.
    pub fn flush(&self) -> Result<(), CoreError> {
        for vhost in self.all() {
            for queue in vhost.queues() {
                queue.close_store()?;
            }
        }
        Ok(())
    }
}

/// One virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    name: String,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    logs: Arc<LogManager>,
    /// The broker's topics, which stream queues are views of.
    topics: Arc<Topics>,
    definitions: Arc<DefinitionWriter>,
    memory: Arc<ResourceMonitor>,
    /// Most queues; declaring one more is refused.
    max_queues: Option<u32>,
    me: std::sync::Weak<VirtualHost>,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A random-looking unique token (store ids, server-named queues).
fn unique_token() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(UNIQUE.fetch_add(1, Ordering::Relaxed));
    hasher.write_i64(now_ms());
    format!("{:016x}", hasher.finish())
}

/// What [`VirtualHosts::recovered_summary`] counts.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RecoveredSummary {
    /// Exchanges other than the default and `amq.*` ones.
    pub(crate) exchanges: usize,
    pub(crate) durable_queues: usize,
    /// Ready messages of durable queues (streams are counted as topics).
    pub(crate) messages: u64,
    pub(crate) bindings: usize,
}

const STANDARD_EXCHANGES: [(&str, ExchangeKind); 6] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

impl VirtualHost {
    fn new(
        name: String,
        logs: Arc<LogManager>,
        topics: Arc<Topics>,
        definitions: Arc<DefinitionWriter>,
        memory: Arc<ResourceMonitor>,
        max_queues: Option<u32>,
    ) -> Arc<VirtualHost> {
        let mut exchanges = HashMap::new();
        for (exchange, kind) in STANDARD_EXCHANGES {
            exchanges.insert(
                exchange.to_owned(),
                Arc::new(Exchange::new(
                    exchange.to_owned(),
                    kind,
                    true,
                    false,
                    false,
                    FieldTable::default(),
                )),
            );
        }
        Arc::new_cyclic(|me| VirtualHost {
            name,
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(HashMap::new()),
            logs,
            topics,
            definitions,
            memory,
            max_queues,
            me: me.clone(),
        })
    }

    fn exchanges(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Exchange>>> {
        self.exchanges.read().unwrap_or_else(|e| e.into_inner())
    }

    fn exchanges_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Exchange>>> {
        self.exchanges.write().unwrap_or_else(|e| e.into_inner())
    }

    fn queues_map(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Queue>>> {
        self.queues.read().unwrap_or_else(|e| e.into_inner())
    }

    fn queues_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Queue>>> {
        self.queues.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The virtual host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exchange called `name`.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges().get(name).cloned()
    }

    /// Every exchange, sorted by name.
    pub fn exchange_list(&self) -> Vec<Arc<Exchange>> {
        let mut all: Vec<Arc<Exchange>> = self.exchanges().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The queue called `name`.
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues_map().get(name).cloned()
    }

    /// Every queue, sorted by name.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<Arc<Queue>> = self.queues_map().values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    fn no_exchange(&self, name: &str) -> MessagingError {
        MessagingError::NotFound(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn no_queue(&self, name: &str) -> MessagingError {
        MessagingError::NotFound(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    /// The queue called `name`, if `connection` may use it.
    ///
    /// # Errors
    /// [`MessagingError::NotFound`]; [`MessagingError::ResourceLocked`] for
    /// another connection's exclusive queue.
    pub fn usable_queue(&self, name: &str, connection: u64) -> Result<Arc<Queue>, MessagingError> {
        let queue = self.queue(name).ok_or_else(|| self.no_queue(name))?;
        if !queue.usable_by(connection) {
            return Err(self.locked(name));
        }
        Ok(queue)
    }

    fn locked(&self, name: &str) -> MessagingError {
        MessagingError::ResourceLocked(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            self.name
        ))
    }

    fn restore(&self, definition: Definition) -> Result<(), CoreError> {
        match definition {
            Definition::Exchange(ExchangeDefinition {
                name,
                kind,
                auto_delete,
                internal,
                arguments,
                ..
            }) => {
                let Ok(kind) = kind.parse::<ExchangeKind>() else {
                    tracing::warn!(exchange = %name, %kind, "skipping a stored exchange of unknown type");
                    return Ok(());
                };
                self.exchanges_mut().insert(
                    name.clone(),
                    Arc::new(Exchange::new(
                        name,
                        kind,
                        true,
                        auto_delete,
                        internal,
                        arguments,
                    )),
                );
            }
            Definition::Queue(QueueDefinition {
                name,
                store_id,
                auto_delete,
                arguments,
                ..
            }) => {
                let args = QueueArgs::parse(&name, &self.name, &arguments).unwrap_or_default();
                // A stream's messages are its topic's records; a classic
                // queue reads back its own store.
                let (store, topic, messages, paged) = if args.stream {
                    (
                        None,
                        Some(self.stream_topic(&name, &args)?),
                        Vec::new(),
                        Vec::new(),
                    )
                } else {
                    let budget = Queue::memory_budget(&args, &self.memory);
                    let recovered = QueueStore::open(&self.logs, &store_id, budget)?;
                    (
                        Some((store_id, recovered.store)),
                        None,
                        recovered.messages,
                        recovered.paged,
                    )
                };
                let queue = Queue::new(
                    name.clone(),
                    QueueOptions {
                        durable: true,
                        exclusive_owner: None,
                        auto_delete,
                        arguments,
                    },
                    args,
                    store,
                    self.me.clone(),
                    Arc::clone(&self.memory),
                    topic,
                );
                queue.restore(messages, paged);
                self.queues_mut().insert(name, queue);
            }
            Definition::Binding(BindingDefinition {
                source,
                destination,
                routing_key,
                arguments,
                ..
            }) => {
                let present = match &destination {
                    Destination::Queue(name) => self.queue(name).is_some(),
                    Destination::Exchange(name) => self.exchange(name).is_some(),
                };
                if let (Some(exchange), true) = (self.exchange(&source), present) {
                    exchange.bind(destination, &routing_key, &arguments);
                }
            }
        }
        Ok(())
    }

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
        let mut exchanges = self.exchanges_mut();
        if let Some(existing) = exchanges.get(name) {
            return self.check_exchange_equivalent(existing, kind_parsed, &options);
        }
        if options.durable {
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

    fn forget_binding(&self, binding: &Binding) -> Result<(), CoreError> {
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
            Destination::Queue(name) => self
                .queue(name)
                .is_some_and(|q| q.options().durable && q.store_id().is_some()),
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
        let mut queues = self.queues_mut();
        if let Some(existing) = queues.get(&name).cloned() {
            drop(queues);
            return self.redeclare(&existing, &options, connection);
        }
        if let Some(limit) = self.max_queues
            && queues.len() >= limit as usize
        {
            return Err(MessagingError::PreconditionFailed(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({limit}) is reached",
                self.name
            )));
        }
        if args.stream {
            drop(queues);
            return self.declare_stream(name, options, args);
        }
        // Exclusive queues die with their connection: nothing to keep.
        let persisted = options.durable && options.exclusive_owner.is_none();
        let store = if persisted {
            let store_id = store_id(&name, &unique_token());
            let recovered = QueueStore::open(&self.logs, &store_id, u64::MAX)?;
            self.definitions
                .commit(MetadataCommand::DeclareQueue(QueueDefinition {
                    vhost: self.name.clone(),
                    name: name.clone(),
                    store_id: store_id.clone(),
                    auto_delete: options.auto_delete,
                    arguments: options.arguments.clone(),
                }))?;
            Some((store_id, recovered.store))
        } else {
            None
        };
        let queue = Queue::new(
            name.clone(),
            options,
            args,
            store,
            self.me.clone(),
            Arc::clone(&self.memory),
            None,
        );
        queues.insert(name.clone(), queue);
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
        let mut queues = self.queues_mut();
        if let Some(existing) = queues.get(&name).cloned() {
            drop(queues);
            return self.redeclare(&existing, &options, 0);
        }
        self.definitions
            .commit(MetadataCommand::DeclareQueue(QueueDefinition {
                vhost: self.name.clone(),
                name: name.clone(),
                store_id: String::new(),
                auto_delete: false,
                arguments: options.arguments.clone(),
            }))?;
        let count = {
            let queue = Queue::new(
                name.clone(),
                options,
                args,
                None,
                self.me.clone(),
                Arc::clone(&self.memory),
                Some(topic),
            );
            let count = queue.message_count();
            queues.insert(name.clone(), queue);
            count
        };
        Ok((name, count, 0))
    }

    /// The topic behind stream queue `name`, created if missing.
    fn stream_topic(&self, name: &str, args: &QueueArgs) -> Result<Arc<crate::Topic>, CoreError> {
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

    fn redeclare(
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
            let same = match (received, had) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a == b
                        || matches!(
                            (super::message::integer_value(a), super::message::integer_value(b)),
                            (Some(x), Some(y)) if x == y
                        )
                        || matches!((string_value(a), string_value(b)), (Some(x), Some(y)) if x == y)
                }
                _ => false,
            };
            if !same {
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
            return Ok(0);
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

    fn remove_queue(&self, queue: &Arc<Queue>) -> Result<usize, CoreError> {
        let destination = Destination::Queue(queue.name().to_owned());
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
        if queue.stream_topic().is_some() || queue.store_id().is_some() {
            self.definitions.commit(MetadataCommand::DeleteQueue {
                vhost: self.name.clone(),
                name: queue.name().to_owned(),
            })?;
        }
        let count = queue.mark_deleted();
        self.queues_mut().remove(queue.name());
        if let Some(store_id) = queue.store_id() {
            self.logs.delete(&message_log_name(store_id))?;
            self.logs.delete(&settlement_log_name(store_id))?;
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

    fn delete_emptied(&self, emptied: Vec<Arc<Exchange>>) -> Result<(), CoreError> {
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
                .commit(MetadataCommand::Bind(BindingDefinition {
                    vhost: self.name.clone(),
                    source: source.to_owned(),
                    destination: destination.clone(),
                    routing_key: routing_key.to_owned(),
                    arguments: arguments.clone(),
                }));
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
                    .commit(MetadataCommand::Unbind(BindingDefinition {
                        vhost: self.name.clone(),
                        source: source.to_owned(),
                        destination,
                        routing_key: routing_key.to_owned(),
                        arguments: arguments.clone(),
                    }))?;
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

    /// Every binding in the virtual host, default-exchange bindings excluded.
    pub fn bindings(&self) -> Vec<Binding> {
        self.exchange_list()
            .iter()
            .flat_map(|e| e.bindings())
            .collect()
    }

    /// The queues a message published to `exchange` reaches, following
    /// exchange-to-exchange bindings and alternate exchanges.
    fn route(&self, exchange: &Arc<Exchange>, message: &Message) -> Vec<Arc<Queue>> {
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
        }
        Ok(outcome)
    }

    /// Republishes a message that died in `queue` to its dead-letter
    /// exchange with an `x-death` entry, as RabbitMQ does. Dropped when the
    /// exchange does not exist or the message would cycle back without a
    /// rejection in between.
    pub(crate) fn dead_letter(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: Option<&str>,
        letter: DeadLetter,
    ) {
        let Some(target) = self.exchange(exchange) else {
            return;
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
            return;
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
            Some(value) => super::message::integer_value(value).unwrap_or(0) + 1,
            None => 1,
        };
        entry.insert("count".into(), AMQPValue::LongLongInt(count));
        entry.insert(
            "time".into(),
            AMQPValue::Timestamp(u64::try_from(now_ms() / 1000).unwrap_or(0)),
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
        for target_queue in self.route(&target, &message) {
            if let Err(error) = target_queue.enqueue(Arc::clone(&message)) {
                tracing::warn!(queue = target_queue.name(), %error, "cannot dead-letter a message");
            }
        }
    }

    fn maintain(&self) {
        for queue in self.queues() {
            if queue.maintain() {
                tracing::debug!(queue = queue.name(), "queue expired (x-expires)");
                if let Err(error) = self.remove_queue(&queue) {
                    tracing::warn!(queue = queue.name(), %error, "cannot delete an expired queue");
                }
            }
        }
    }

    fn connection_closed(&self, connection: u64) {
        let owned: Vec<Arc<Queue>> = self
            .queues()
            .into_iter()
            .filter(|q| q.options().exclusive_owner == Some(connection))
            .collect();
        for queue in owned {
            if let Err(error) = self.remove_queue(&queue) {
                tracing::warn!(queue = queue.name(), %error, "cannot delete an exclusive queue");
            }
        }
    }

    /// Deletes an auto-delete queue whose last consumer went.
    ///
    /// # Errors
    /// Storage failures.
    pub fn auto_delete_queue(&self, queue: &Arc<Queue>) -> Result<(), MessagingError> {
        if queue.consumer_count() == 0 && !queue.is_deleted() {
            self.remove_queue(queue)?;
        }
        Ok(())
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

fn describe(value: Option<&AMQPValue>) -> String {
    match value {
        None => "none".to_owned(),
        Some(v) => super::message::integer_value(v)
            .map(|n| n.to_string())
            .or_else(|| string_value(v))
            .unwrap_or_else(|| format!("{v:?}")),
    }
}
