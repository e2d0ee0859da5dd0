//! `sluice connections list|close`: Kafka, AMQP, MQTT and STOMP client
//! connections.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use serde_json::Value;

use super::items;
use crate::args::{ApiArgs, Output};
use crate::client::Api;
use crate::error::CliResult;
use crate::output::{Align, Table, bytes, cell, duration, write_json};

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// List connections with protocol (and version), peer, user, client
    /// name, traffic and subscriptions (an MQTT session's topic filters, a
    /// STOMP connection's subscription ids).
    List {
        /// Only connections whose peer, client name or user contains TEXT.
        #[arg(long, value_name = "TEXT")]
        filter: Option<String>,
    },
    /// Close a connection: AMQP, STOMP and MQTT 5 clients are told the
    /// reason, Kafka and MQTT 3.1.1 connections are dropped.
    Close {
        /// The connection's id, from `sluice connections list`.
        id: u64,
        /// Told to AMQP, STOMP and MQTT 5 clients (at most 200 bytes).
        #[arg(long)]
        reason: Option<String>,
    },
}

pub(crate) fn run(
    args: &ApiArgs,
    command: ConnectionsCommand,
    out: &mut dyn Write,
) -> CliResult<()> {
    let api = Api::new(args);
    let json = args.output == Output::Json;
    match command {
        ConnectionsCommand::List { filter } => {
            let query: Vec<(&str, String)> = filter.map(|f| ("filter", f)).into_iter().collect();
            let list = api.list("/api/connections", &query)?;
            if json {
                return write_json(out, &list);
            }
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis());
            let mut table = Table::new(&[
                ("ID", Align::Right),
                ("PROTOCOL", Align::Left),
                ("PEER", Align::Left),
                ("USER", Align::Left),
                ("CLIENT", Align::Left),
                ("VHOST", Align::Left),
                ("CHANNELS", Align::Right),
                ("IN", Align::Right),
                ("OUT", Align::Right),
                ("AGE", Align::Right),
                ("SUBSCRIPTIONS", Align::Left),
            ]);
            for connection in items(&list) {
                table.row(vec![
                    cell(&connection["id"]),
                    protocol(connection),
                    cell(&connection["peer"]),
                    cell(&connection["user"]),
                    cell(&connection["client_name"]),
                    cell(&connection["vhost"]),
                    cell(&connection["channels"]),
                    bytes(&connection["bytes_in"]),
                    bytes(&connection["bytes_out"]),
                    age(&connection["connected_at"], now_ms),
                    subscriptions(&connection["subscriptions"]),
                ]);
            }
            table.write(out, "no connections")
        }
        ConnectionsCommand::Close { id, reason } => {
            let query: Vec<(&str, String)> = reason.map(|r| ("reason", r)).into_iter().collect();
            api.delete(&format!("/api/connections/{id}"), &query)?;
            if !json {
                writeln!(out, "closed connection {id}")?;
            }
            Ok(())
        }
    }
}

/// The protocol with the version a connection chose: `mqtt 5.0`.
fn protocol(connection: &Value) -> String {
    match connection["protocol_version"].as_str() {
        Some(version) => format!("{} {version}", cell(&connection["protocol"])),
        None => cell(&connection["protocol"]),
    }
}

/// A connection's subscriptions, comma-separated (control characters
/// escaped, so a client's names cannot break the table or the terminal);
/// `-` when it has none.
fn subscriptions(list: &Value) -> String {
    let printable = |name: &Value| -> String {
        cell(name)
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let names: Vec<String> = list
        .as_array()
        .map_or_else(Vec::new, |list| list.iter().map(printable).collect());
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

/// How long ago `connected_at` (milliseconds since the epoch) was.
fn age(connected_at: &Value, now_ms: u128) -> String {
    match connected_at.as_u64() {
        Some(at) => duration(Duration::from_millis(
            u64::try_from(now_ms.saturating_sub(u128::from(at))).unwrap_or(u64::MAX),
        )),
        None => cell(connected_at),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn age_counts_from_connected_at() {
        assert_eq!(age(&json!(1_000), 61_000), "1m 0s");
        assert_eq!(age(&json!(5_000), 1_000), "0.0s");
        assert_eq!(age(&Value::Null, 1), "-");
    }

    #[test]
    fn protocol_and_subscriptions_read_from_the_api() {
        let mqtt = json!({"protocol": "mqtt", "protocol_version": "5.0",
                          "subscriptions": ["a/+", "$share/g/b/#"]});
        assert_eq!(protocol(&mqtt), "mqtt 5.0");
        assert_eq!(subscriptions(&mqtt["subscriptions"]), "a/+,$share/g/b/#");
        let kafka = json!({"protocol": "kafka", "protocol_version": null, "subscriptions": []});
        assert_eq!(protocol(&kafka), "kafka");
        assert_eq!(subscriptions(&kafka["subscriptions"]), "-");
        assert_eq!(subscriptions(&Value::Null), "-");
        assert_eq!(
            subscriptions(&json!(["a\nb\u{1b}[2J"])),
            "a\\u{a}b\\u{1b}[2J"
        );
    }
}
