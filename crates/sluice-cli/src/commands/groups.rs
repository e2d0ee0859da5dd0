//! `sluice groups list|describe|reset-offsets|delete`: Kafka consumer groups.

use std::io::Write;

use clap::Subcommand;
use serde_json::{Value, json};

use super::{ResetTo, items, segment};
use crate::args::{ApiArgs, Output};
use crate::client::{Api, Method};
use crate::error::CliResult;
use crate::output::{Align, Table, cell, write_fields, write_json};

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups with state, members and total lag.
    List {
        /// Only groups whose id contains TEXT (ignoring case).
        #[arg(long, value_name = "TEXT")]
        filter: Option<String>,
    },
    /// Show a group's members and assignments, and per partition its
    /// committed offset, log end and lag.
    Describe {
        /// The group's id.
        group: String,
    },
    /// Move a stopped group's committed offsets (it must have no members).
    ResetOffsets {
        /// The group's id.
        group: String,
        /// Only this topic (default: every topic the group has offsets for).
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition of --topic; repeatable.
        #[arg(long = "partition", value_name = "P", requires = "topic")]
        partitions: Vec<i32>,
        /// Where to: earliest, latest, timestamp (with --timestamp) or
        /// offset (with --offset).
        #[arg(long, value_enum)]
        to: ResetTo,
        /// Milliseconds since the Unix epoch: the first record at or after it.
        #[arg(long, value_name = "MS", required_if_eq("to", "timestamp"))]
        timestamp: Option<i64>,
        /// The offset, clamped into each partition's log.
        #[arg(
            long,
            value_name = "N",
            required_if_eq("to", "offset"),
            allow_negative_numbers = true
        )]
        offset: Option<i64>,
    },
    /// Delete a group without members and its committed offsets.
    Delete {
        /// The group's id.
        group: String,
    },
}

pub(crate) fn run(args: &ApiArgs, command: GroupsCommand, out: &mut dyn Write) -> CliResult<()> {
    let api = Api::new(args);
    let json = args.output == Output::Json;
    match command {
        GroupsCommand::List { filter } => {
            let query: Vec<(&str, String)> = filter.map(|f| ("filter", f)).into_iter().collect();
            let list = api.list("/api/groups", &query)?;
            if json {
                return write_json(out, &list);
            }
            let mut table = Table::new(&[
                ("GROUP", Align::Left),
                ("TYPE", Align::Left),
                ("STATE", Align::Left),
                ("MEMBERS", Align::Right),
                ("LAG", Align::Right),
                ("IN-FLIGHT", Align::Right),
                ("ARCHIVED", Align::Right),
                ("PROTOCOL-TYPE", Align::Left),
            ]);
            for group in items(&list) {
                // A share group's records, like a queue's; "-" elsewhere.
                let records = |key: &str| match &group["records"][key] {
                    Value::Null => "-".to_owned(),
                    value => cell(value),
                };
                table.row(vec![
                    cell(&group["group_id"]),
                    cell(&group["type"]),
                    cell(&group["state"]),
                    cell(&group["members"]),
                    cell(&group["lag"]),
                    records("in_flight"),
                    records("archived"),
                    cell(&group["protocol_type"]),
                ]);
            }
            table.write(out, "no consumer groups")
        }
        GroupsCommand::Describe { group } => {
            let described = api.get(&format!("/api/groups/{}", segment(&group)), &[])?;
            if json {
                return write_json(out, &described);
            }
            describe(&described, out)
        }
        GroupsCommand::ResetOffsets {
            group,
            topic,
            partitions,
            to,
            timestamp,
            offset,
        } => {
            let mut body = json!({"to": to.as_str()});
            if let Some(topic) = topic {
                body["topic"] = json!(topic);
            }
            if !partitions.is_empty() {
                body["partitions"] = json!(partitions);
            }
            if let Some(timestamp) = timestamp {
                body["timestamp"] = json!(timestamp);
            }
            if let Some(offset) = offset {
                body["offset"] = json!(offset);
            }
            let path = format!("/api/groups/{}/reset-offsets", segment(&group));
            let described = api.send(Method::Post, &path, &body)?;
            if json {
                return write_json(out, &described);
            }
            writeln!(
                out,
                "reset the offsets of group {group:?} to {}",
                reset_target(to, timestamp, offset)
            )?;
            offsets_table(&described, out)
        }
        GroupsCommand::Delete { group } => {
            api.delete(&format!("/api/groups/{}", segment(&group)), &[])?;
            if !json {
                writeln!(out, "deleted group {group:?}")?;
            }
            Ok(())
        }
    }
}

fn describe(group: &Value, out: &mut dyn Write) -> CliResult<()> {
    let protocol = match group["protocol"].as_str() {
        Some(protocol) if !protocol.is_empty() => format!(" ({protocol})"),
        _ => String::new(),
    };
    write_fields(
        out,
        &[
            ("group", cell(&group["group_id"])),
            ("type", cell(&group["type"])),
            ("state", cell(&group["state"])),
            (
                "protocol",
                format!("{}{protocol}", cell(&group["protocol_type"])),
            ),
        ],
    )?;
    writeln!(out)?;
    let mut members = Table::new(&[
        ("MEMBER", Align::Left),
        ("CLIENT-ID", Align::Left),
        ("HOST", Align::Left),
        ("ASSIGNMENTS", Align::Left),
    ]);
    for member in group["members"].as_array().map_or(&[][..], Vec::as_slice) {
        let assignments: Vec<String> = member["assignments"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|a| format!("{}:{}", cell(&a["topic"]), cell(&a["partition"])))
            .collect();
        members.row(vec![
            cell(&member["member_id"]),
            cell(&member["client_id"]),
            cell(&member["client_host"]),
            assignments.join(","),
        ]);
    }
    members.write(out, "no members")?;
    writeln!(out)?;
    if let Some(shares) = group["share_partitions"].as_array() {
        let mut table = Table::new(&[
            ("TOPIC", Align::Left),
            ("PARTITION", Align::Right),
            ("START", Align::Right),
            ("AVAILABLE", Align::Right),
            ("ACQUIRED", Align::Right),
            ("ARCHIVED", Align::Right),
        ]);
        for share in shares {
            table.row(vec![
                cell(&share["topic"]),
                cell(&share["partition"]),
                cell(&share["start_offset"]),
                cell(&share["available"]),
                cell(&share["acquired"]),
                cell(&share["archived"]),
            ]);
        }
        table.write(out, "no share partitions on this node")?;
        writeln!(out)?;
    }
    offsets_table(group, out)
}

fn offsets_table(group: &Value, out: &mut dyn Write) -> CliResult<()> {
    let mut offsets = Table::new(&[
        ("TOPIC", Align::Left),
        ("PARTITION", Align::Right),
        ("COMMITTED", Align::Right),
        ("LOG-END", Align::Right),
        ("LAG", Align::Right),
    ]);
    for offset in group["offsets"].as_array().map_or(&[][..], Vec::as_slice) {
        offsets.row(vec![
            cell(&offset["topic"]),
            cell(&offset["partition"]),
            cell(&offset["committed_offset"]),
            cell(&offset["log_end_offset"]),
            cell(&offset["lag"]),
        ]);
    }
    offsets.write(out, "no committed offsets")
}

/// Where a reset moved the offsets, with the value given: `offset 40`,
/// `timestamp 1763800000000`, `earliest`.
fn reset_target(to: ResetTo, timestamp: Option<i64>, offset: Option<i64>) -> String {
    match (to, timestamp, offset) {
        (ResetTo::Timestamp, Some(timestamp), _) => format!("timestamp {timestamp}"),
        (ResetTo::Offset, _, Some(offset)) => format!("offset {offset}"),
        _ => to.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_names_the_value_it_moved_to() {
        assert_eq!(reset_target(ResetTo::Offset, None, Some(40)), "offset 40");
        assert_eq!(
            reset_target(ResetTo::Timestamp, Some(1_763_800_000_000), None),
            "timestamp 1763800000000"
        );
        assert_eq!(reset_target(ResetTo::Earliest, None, None), "earliest");
    }

    #[test]
    fn describe_lists_members_and_lag() -> CliResult<()> {
        let group = json!({
            "group_id": "g1", "state": "Stable", "protocol_type": "consumer", "protocol": "range",
            "members": [{"member_id": "m-1", "client_id": "rdkafka", "client_host": "/127.0.0.1",
                         "assignments": [{"topic": "orders", "partition": 0},
                                         {"topic": "orders", "partition": 1}]}],
            "offsets": [{"topic": "orders", "partition": 0, "committed_offset": 40,
                         "log_end_offset": 42, "lag": 2, "metadata": ""}],
        });
        let mut out = Vec::new();
        describe(&group, &mut out)?;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("protocol  consumer (range)"), "{text}");
        assert!(text.contains("orders:0,orders:1"), "{text}");
        assert!(
            text.contains("orders          0         40       42    2"),
            "{text}"
        );
        Ok(())
    }
}
