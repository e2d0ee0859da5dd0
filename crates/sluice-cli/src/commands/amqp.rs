//! `sluice queues …`, `sluice exchanges …`, `sluice bindings …`: the AMQP
//! side, per virtual host (`--vhost`, `/` unless given).

use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::consume::write_queue_message;
use super::{Encoding, ExchangeType, counted, exchange_segment, items, segment};
use crate::args::{ApiArgs, Output, argument, object};
use crate::client::{Api, Method};
use crate::error::CliResult;
use crate::output::{Align, Table, cell, rate, write_json};

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// List queues with message counts, consumers and rates.
    List {
        /// Only this virtual host (default: all).
        #[arg(long)]
        vhost: Option<String>,
        /// Only queues whose name contains TEXT (ignoring case).
        #[arg(long, value_name = "TEXT")]
        filter: Option<String>,
    },
    /// Declare a queue (nothing changes if it exists with the same settings).
    Declare {
        /// The queue's name.
        name: String,
        /// Its virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Survive a broker restart.
        #[arg(long)]
        durable: bool,
        /// Delete it when its last consumer goes.
        #[arg(long)]
        auto_delete: bool,
        /// An argument such as `x-max-priority=10` (JSON values are read as
        /// JSON, anything else as a string); repeatable.
        #[arg(long = "argument", value_name = "KEY=VALUE", value_parser = argument)]
        arguments: Vec<(String, Value)>,
    },
    /// Delete a queue and its messages.
    Delete {
        /// The queue's name.
        name: String,
        /// Its virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Only if it has no consumers.
        #[arg(long)]
        if_unused: bool,
        /// Only if it has no messages.
        #[arg(long)]
        if_empty: bool,
    },
    /// Drop every ready message of a queue.
    Purge {
        /// The queue's name.
        name: String,
        /// Its virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Show the messages at a queue's head without taking them.
    Peek {
        /// The queue's name.
        name: String,
        /// Its virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// How many messages (1 to 1000).
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// How payloads are shown.
        #[arg(long, value_enum, default_value_t = Encoding::Text)]
        encoding: Encoding,
    },
    /// Add a node to a quorum queue's members (a cluster).
    AddMember {
        /// The queue's name.
        name: String,
        /// The node's id.
        node: i32,
        /// Its virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Remove a node from a quorum queue's members (a cluster).
    DeleteMember {
        /// The queue's name.
        name: String,
        /// The node's id.
        node: i32,
        /// Its virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Add a node to every quorum queue it is not a member of.
    Grow {
        /// The node's id.
        node: i32,
        /// `all`, or `even`: only queues with an even number of members.
        #[arg(value_enum, default_value_t = GrowSelector::All)]
        selector: GrowSelector,
        /// Only this virtual host's queues (default: all).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Remove a node from every quorum queue it is a member of.
    Shrink {
        /// The node's id.
        node: i32,
        /// Only this virtual host's queues (default: all).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Spread quorum queue leaders over the live nodes.
    Rebalance {
        /// Only this virtual host's queues (default: all).
        #[arg(long)]
        vhost: Option<String>,
    },
}

/// Which quorum queues `sluice queues grow` adds a node to.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GrowSelector {
    All,
    Even,
}

#[derive(Debug, Subcommand)]
pub enum ExchangesCommand {
    /// List exchanges with their type, flags and bindings.
    List {
        /// Only this virtual host (default: all).
        #[arg(long)]
        vhost: Option<String>,
        /// Only exchanges whose name contains TEXT (ignoring case).
        #[arg(long, value_name = "TEXT")]
        filter: Option<String>,
    },
    /// Declare an exchange (nothing changes if it exists with the same settings).
    Declare {
        /// The exchange's name.
        name: String,
        /// How it routes: by exact key, to all, by key pattern, by headers.
        #[arg(long = "type", value_enum)]
        kind: ExchangeType,
        /// Its virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Survive a broker restart.
        #[arg(long)]
        durable: bool,
        /// Delete it when its last binding goes.
        #[arg(long)]
        auto_delete: bool,
        /// Only other exchanges may publish to it.
        #[arg(long)]
        internal: bool,
        /// An argument such as `alternate-exchange=ae`; repeatable.
        #[arg(long = "argument", value_name = "KEY=VALUE", value_parser = argument)]
        arguments: Vec<(String, Value)>,
    },
    /// Delete an exchange and its bindings.
    Delete {
        /// The exchange's name.
        name: String,
        /// Its virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Only if it has no bindings.
        #[arg(long)]
        if_unused: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BindingsCommand {
    /// List bindings.
    List {
        /// Only this virtual host (default: all).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Bind a queue (or exchange) to an exchange.
    Create(BindingSpec),
    /// Remove a binding.
    Delete(BindingSpec),
}

/// One binding, as `bindings create` and `bindings delete` name it.
#[derive(Debug, Args)]
pub struct BindingSpec {
    /// The exchange messages come from.
    #[arg(long)]
    source: String,
    /// The queue (or exchange) they go to.
    #[arg(long)]
    destination: String,
    /// Whether the destination is a queue or an exchange.
    #[arg(long, value_enum, default_value_t = DestinationType::Queue)]
    destination_type: DestinationType,
    /// The binding key (a pattern for topic exchanges).
    #[arg(long, default_value = "")]
    routing_key: String,
    /// The virtual host of both ends.
    #[arg(long, default_value = "/")]
    vhost: String,
    /// A binding argument such as `x-match=all`; repeatable.
    #[arg(long = "argument", value_name = "KEY=VALUE", value_parser = argument)]
    arguments: Vec<(String, Value)>,
}

/// What a binding points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DestinationType {
    Queue,
    Exchange,
}

impl DestinationType {
    fn as_str(self) -> &'static str {
        match self {
            DestinationType::Queue => "queue",
            DestinationType::Exchange => "exchange",
        }
    }
}

fn vhost_query(vhost: Option<String>, filter: Option<String>) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(vhost) = vhost {
        query.push(("vhost", vhost));
    }
    if let Some(filter) = filter {
        query.push(("filter", filter));
    }
    query
}

/// The default exchange's name as people read it.
fn exchange_name(value: &Value) -> String {
    match value.as_str() {
        Some("") => "(default)".to_owned(),
        _ => cell(value),
    }
}

pub(crate) fn queues(args: &ApiArgs, command: QueuesCommand, out: &mut dyn Write) -> CliResult<()> {
    let api = Api::new(args);
    let json = args.output == Output::Json;
    match command {
        QueuesCommand::List { vhost, filter } => {
            let list = api.list("/api/queues", &vhost_query(vhost, filter))?;
            if json {
                return write_json(out, &list);
            }
            let mut table = Table::new(&[
                ("VHOST", Align::Left),
                ("NAME", Align::Left),
                ("TYPE", Align::Left),
                ("READY", Align::Right),
                ("UNACKED", Align::Right),
                ("CONSUMERS", Align::Right),
                ("PUBLISH/S", Align::Right),
                ("DELIVER/S", Align::Right),
                ("ACK/S", Align::Right),
            ]);
            for queue in items(&list) {
                table.row(vec![
                    cell(&queue["vhost"]),
                    cell(&queue["name"]),
                    cell(&queue["type"]),
                    cell(&queue["messages_ready"]),
                    cell(&queue["messages_unacknowledged"]),
                    cell(&queue["consumers"]),
                    rate(&queue["publish_rate"]),
                    rate(&queue["deliver_rate"]),
                    rate(&queue["ack_rate"]),
                ]);
            }
            table.write(out, "no queues")
        }
        QueuesCommand::Declare {
            name,
            vhost,
            durable,
            auto_delete,
            arguments,
        } => {
            let body = json!({
                "durable": durable,
                "auto_delete": auto_delete,
                "arguments": object(&arguments),
            });
            let path = format!("/api/queues/{}/{}", segment(&vhost), segment(&name));
            let queue = api.send(Method::Put, &path, &body)?;
            if json {
                return write_json(out, &queue);
            }
            writeln!(out, "declared queue {name:?} in vhost {vhost}")?;
            Ok(())
        }
        QueuesCommand::Delete {
            name,
            vhost,
            if_unused,
            if_empty,
        } => {
            let path = format!("/api/queues/{}/{}", segment(&vhost), segment(&name));
            let mut query = Vec::new();
            if if_unused {
                query.push(("if_unused", "true".to_owned()));
            }
            if if_empty {
                query.push(("if_empty", "true".to_owned()));
            }
            api.delete(&path, &query)?;
            if !json {
                writeln!(out, "deleted queue {name:?} in vhost {vhost}")?;
            }
            Ok(())
        }
        QueuesCommand::Purge { name, vhost } => {
            let path = format!(
                "/api/queues/{}/{}/contents",
                segment(&vhost),
                segment(&name)
            );
            let purged = api.delete(&path, &[])?;
            if json {
                return write_json(out, &purged);
            }
            writeln!(
                out,
                "purged {} from queue {name:?} in vhost {vhost}",
                counted(purged["purged"].as_u64().unwrap_or(0), "message")
            )?;
            Ok(())
        }
        QueuesCommand::Peek {
            name,
            vhost,
            count,
            encoding,
        } => {
            let path = format!(
                "/api/queues/{}/{}/messages",
                segment(&vhost),
                segment(&name)
            );
            let query = [
                ("count", count.to_string()),
                ("encoding", encoding.as_str().to_owned()),
            ];
            let peeked = api.get(&path, &query)?;
            if json {
                return write_json(out, &peeked);
            }
            let messages = peeked["messages"].as_array().map_or(&[][..], Vec::as_slice);
            if messages.is_empty() {
                writeln!(out, "queue {name:?} has no ready messages")?;
            }
            for message in messages {
                write_queue_message(out, message)?;
            }
            Ok(())
        }
        membership => super::quorum::members(&api, json, membership, out),
    }
}

pub(crate) fn exchanges(
    args: &ApiArgs,
    command: ExchangesCommand,
    out: &mut dyn Write,
) -> CliResult<()> {
    let api = Api::new(args);
    let json = args.output == Output::Json;
    match command {
        ExchangesCommand::List { vhost, filter } => {
            let list = api.list("/api/exchanges", &vhost_query(vhost, filter))?;
            if json {
                return write_json(out, &list);
            }
            let mut table = Table::new(&[
                ("VHOST", Align::Left),
                ("NAME", Align::Left),
                ("TYPE", Align::Left),
                ("DURABLE", Align::Left),
                ("AUTO-DELETE", Align::Left),
                ("INTERNAL", Align::Left),
                ("BINDINGS", Align::Right),
            ]);
            for exchange in items(&list) {
                table.row(vec![
                    cell(&exchange["vhost"]),
                    exchange_name(&exchange["name"]),
                    cell(&exchange["type"]),
                    cell(&exchange["durable"]),
                    cell(&exchange["auto_delete"]),
                    cell(&exchange["internal"]),
                    cell(&exchange["bindings"]),
                ]);
            }
            table.write(out, "no exchanges")
        }
        ExchangesCommand::Declare {
            name,
            kind,
            vhost,
            durable,
            auto_delete,
            internal,
            arguments,
        } => {
            let body = json!({
                "type": kind.as_str(),
                "durable": durable,
                "auto_delete": auto_delete,
                "internal": internal,
                "arguments": object(&arguments),
            });
            let path = format!(
                "/api/exchanges/{}/{}",
                segment(&vhost),
                exchange_segment(&name)
            );
            let exchange = api.send(Method::Put, &path, &body)?;
            if json {
                return write_json(out, &exchange);
            }
            writeln!(
                out,
                "declared {} exchange {name:?} in vhost {vhost}",
                kind.as_str()
            )?;
            Ok(())
        }
        ExchangesCommand::Delete {
            name,
            vhost,
            if_unused,
        } => {
            let path = format!(
                "/api/exchanges/{}/{}",
                segment(&vhost),
                exchange_segment(&name)
            );
            let query: Vec<(&str, String)> = if if_unused {
                vec![("if_unused", "true".to_owned())]
            } else {
                Vec::new()
            };
            api.delete(&path, &query)?;
            if !json {
                writeln!(out, "deleted exchange {name:?} in vhost {vhost}")?;
            }
            Ok(())
        }
    }
}

pub(crate) fn bindings(
    args: &ApiArgs,
    command: BindingsCommand,
    out: &mut dyn Write,
) -> CliResult<()> {
    let api = Api::new(args);
    let json = args.output == Output::Json;
    match command {
        BindingsCommand::List { vhost } => {
            let list = api.list("/api/bindings", &vhost_query(vhost, None))?;
            if json {
                return write_json(out, &list);
            }
            let mut table = Table::new(&[
                ("VHOST", Align::Left),
                ("SOURCE", Align::Left),
                ("DESTINATION", Align::Left),
                ("TYPE", Align::Left),
                ("ROUTING-KEY", Align::Left),
                ("ARGUMENTS", Align::Left),
            ]);
            for binding in items(&list) {
                let arguments = match &binding["arguments"] {
                    Value::Object(map) if map.is_empty() => String::new(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                table.row(vec![
                    cell(&binding["vhost"]),
                    exchange_name(&binding["source"]),
                    cell(&binding["destination"]),
                    cell(&binding["destination_type"]),
                    cell(&binding["routing_key"]),
                    arguments,
                ]);
            }
            table.write(out, "no bindings")
        }
        BindingsCommand::Create(spec) => {
            let body = json!({
                "vhost": spec.vhost,
                "source": spec.source,
                "destination": spec.destination,
                "destination_type": spec.destination_type.as_str(),
                "routing_key": spec.routing_key,
                "arguments": object(&spec.arguments),
            });
            let answer = api.send(Method::Post, "/api/bindings", &body)?;
            if json {
                if !answer.is_null() {
                    write_json(out, &answer)?;
                }
                return Ok(());
            }
            writeln!(
                out,
                "bound {} {:?} to exchange {:?} with routing key {:?}",
                spec.destination_type.as_str(),
                spec.destination,
                spec.source,
                spec.routing_key
            )?;
            Ok(())
        }
        BindingsCommand::Delete(spec) => {
            let mut query = vec![
                ("vhost", spec.vhost.clone()),
                ("source", spec.source.clone()),
                ("destination", spec.destination.clone()),
                (
                    "destination_type",
                    spec.destination_type.as_str().to_owned(),
                ),
                ("routing_key", spec.routing_key.clone()),
            ];
            if !spec.arguments.is_empty() {
                query.push(("arguments", object(&spec.arguments).to_string()));
            }
            api.delete("/api/bindings", &query)?;
            if !json {
                writeln!(
                    out,
                    "unbound {} {:?} from exchange {:?} (routing key {:?})",
                    spec.destination_type.as_str(),
                    spec.destination,
                    spec.source,
                    spec.routing_key
                )?;
            }
            Ok(())
        }
    }
}
