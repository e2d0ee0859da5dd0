//! Exchanges and their bindings, indexed per exchange type for routing.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use amq_protocol::types::FieldTable;

use super::MessagingError;
use super::message::{Message, encode_table};
use super::routing::headers::{headers_match, x_match};
use super::routing::topic::TopicMatcher;

/// The routing algorithm of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    Direct,
    /// Every bound destination.
    Fanout,
    /// Dot-separated words with `*` and `#` wildcards.
    Topic,
    /// Header values, `x-match` all or any.
    Headers,
}

impl ExchangeKind {
    /// The AMQP type name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl FromStr for ExchangeKind {
    type Err = MessagingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(MessagingError::CommandInvalid(format!(
                "unknown exchange type '{other}'"
            ))),
        }
    }
}

/// Where a binding leads.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// A queue of the same virtual host.
    Queue(String),
    /// An exchange of the same virtual host (exchange-to-exchange binding).
    Exchange(String),
}

impl Destination {
    /// The destination's name.
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(name) | Destination::Exchange(name) => name,
        }
    }
}

/// One binding.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The exchange messages come from.
    pub source: String,
    /// Where they go.
    pub destination: Destination,
    /// Binding key (a pattern for topic exchanges).
    pub routing_key: String,
    /// Binding arguments (`x-match` and header values for headers exchanges).
    pub arguments: FieldTable,
}

/// Binding identity within one exchange: destination, key and arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BindingKey {
    destination: Destination,
    routing_key: String,
    arguments: Vec<u8>,
}

impl BindingKey {
    fn new(destination: &Destination, routing_key: &str, arguments: &FieldTable) -> BindingKey {
        BindingKey {
            destination: destination.clone(),
            routing_key: routing_key.to_owned(),
            arguments: encode_table(arguments),
        }
    }
}

#[derive(Debug, Default)]
struct Routes {
    bindings: HashMap<BindingKey, FieldTable>,
    direct: HashMap<String, Vec<Destination>>,
    fanout: Vec<Destination>,
    topic: Option<TopicMatcher<Destination>>,
    headers: Vec<(FieldTable, Destination)>,
}

/// An exchange. Its bindings are guarded by their own lock; everything else
/// is fixed at declaration.
#[derive(Debug)]
pub struct Exchange {
    /// Name (empty for the default exchange).
    pub name: String,
    /// Routing algorithm.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding (as source) goes.
    pub auto_delete: bool,
    /// Publishers may not publish to it directly.
    pub internal: bool,
    /// Declaration arguments (`alternate-exchange`).
    pub arguments: FieldTable,
    routes: RwLock<Routes>,
}

impl Exchange {
    pub(crate) fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Exchange {
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            routes: RwLock::new(Routes::default()),
        }
    }

    fn routes(&self) -> RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn routes_mut(&self) -> RwLockWriteGuard<'_, Routes> {
        self.routes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The `alternate-exchange` argument.
    pub fn alternate_exchange(&self) -> Option<String> {
        self.arguments
            .inner()
            .get("alternate-exchange")
            .and_then(super::message::string_value)
    }

    /// Checks binding arguments for this exchange's type.
    pub(crate) fn validate_binding(&self, arguments: &FieldTable) -> Result<(), MessagingError> {
        if self.kind == ExchangeKind::Headers {
            x_match(arguments).map_err(MessagingError::PreconditionFailed)?;
        }
        Ok(())
    }

    /// Adds a binding; false if an identical one exists.
    pub(crate) fn bind(
        &self,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let key = BindingKey::new(&destination, routing_key, arguments);
        let mut routes = self.routes_mut();
        if routes.bindings.contains_key(&key) {
            return false;
        }
        routes.bindings.insert(key, arguments.clone());
        match self.kind {
            ExchangeKind::Direct => routes
                .direct
                .entry(routing_key.to_owned())
                .or_default()
                .push(destination),
            ExchangeKind::Fanout => routes.fanout.push(destination),
            ExchangeKind::Topic => {
                routes
                    .topic
                    .get_or_insert_with(TopicMatcher::new)
                    .insert(routing_key, destination);
            }
            ExchangeKind::Headers => routes.headers.push((arguments.clone(), destination)),
        }
        true
    }

    /// Removes a binding; false if there was none.
    pub(crate) fn unbind(
        &self,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let key = BindingKey::new(destination, routing_key, arguments);
        let mut routes = self.routes_mut();
        if routes.bindings.remove(&key).is_none() {
            return false;
        }
        let arguments_bytes = key.arguments;
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(list) = routes.direct.get_mut(routing_key) {
                    if let Some(at) = list.iter().position(|d| d == destination) {
                        list.swap_remove(at);
                    }
                    if list.is_empty() {
                        routes.direct.remove(routing_key);
                    }
                }
            }
            ExchangeKind::Fanout => {
                if let Some(at) = routes.fanout.iter().position(|d| d == destination) {
                    routes.fanout.swap_remove(at);
                }
            }
            ExchangeKind::Topic => {
                if let Some(topic) = routes.topic.as_mut() {
                    topic.remove(routing_key, destination);
                }
            }
            ExchangeKind::Headers => {
                if let Some(at) = routes
                    .headers
                    .iter()
                    .position(|(args, d)| d == destination && encode_table(args) == arguments_bytes)
                {
                    routes.headers.swap_remove(at);
                }
            }
        }
        true
    }

    /// Removes every binding to `destination`; returns how many went.
    pub(crate) fn unbind_destination(&self, destination: &Destination) -> Vec<Binding> {
        let doomed: Vec<Binding> = self
            .routes()
            .bindings
            .iter()
            .filter(|(key, _)| &key.destination == destination)
            .map(|(key, arguments)| Binding {
                source: self.name.clone(),
                destination: key.destination.clone(),
                routing_key: key.routing_key.clone(),
                arguments: arguments.clone(),
            })
            .collect();
        for binding in &doomed {
            self.unbind(
                &binding.destination,
                &binding.routing_key,
                &binding.arguments,
            );
        }
        doomed
    }

    /// Every binding with this exchange as source.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut out: Vec<Binding> = self
            .routes()
            .bindings
            .iter()
            .map(|(key, arguments)| Binding {
                source: self.name.clone(),
                destination: key.destination.clone(),
                routing_key: key.routing_key.clone(),
                arguments: arguments.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.destination, &a.routing_key).cmp(&(&b.destination, &b.routing_key)));
        out
    }

    /// Number of bindings with this exchange as source.
    pub fn binding_count(&self) -> usize {
        self.routes().bindings.len()
    }

    /// Calls `visit` for each destination the message is routed to by this
    /// exchange alone (no exchange-to-exchange or alternate-exchange hops).
    pub(crate) fn route(&self, message: &Message, visit: &mut dyn FnMut(&Destination)) {
        let routes = self.routes();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(list) = routes.direct.get(message.routing_key.as_str()) {
                    list.iter().for_each(&mut *visit);
                }
            }
            ExchangeKind::Fanout => routes.fanout.iter().for_each(&mut *visit),
            ExchangeKind::Topic => {
                if let Some(topic) = routes.topic.as_ref() {
                    topic.matches(message.routing_key.as_str(), visit);
                }
            }
            ExchangeKind::Headers => {
                let headers = message.headers();
                let mut seen = HashSet::new();
                for (arguments, destination) in &routes.headers {
                    if headers_match(arguments, headers) && seen.insert(destination) {
                        visit(destination);
                    }
                }
            }
        }
    }
}
