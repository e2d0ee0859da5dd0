//! `sluice topics list|create|describe|alter|add-partitions|delete`.

use std::io::Write;

use clap::{ArgGroup, Subcommand};
use serde_json::{Map, Value, json};

use super::{counted, items, segment};
use crate::args::{ApiArgs, Output, key_value};
use crate::client::{Api, Method};
use crate::error::CliResult;
use crate::output::{Align, Table, bytes, cell, rate, write_fields, write_json};

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// List topics with partitions, records, size and rates.
    List {
        /// Only topics whose name contains TEXT (ignoring case).
        #[arg(long, value_name = "TEXT")]
        filter: Option<String>,
    },
    /// Create a topic.
    Create {
        /// The topic's name.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// A topic config such as `retention.ms=3600000`; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        configs: Vec<(String, String)>,
    },
    /// Show a topic's partitions with their offsets and sizes, and its configs.
    Describe {
        /// The topic's name.
        name: String,
    },
    /// Set or delete topic configs.
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["set", "delete"])))]
    Alter {
        /// The topic's name.
        name: String,
        /// Set a config, e.g. `retention.ms=1000`; repeatable.
        #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
        set: Vec<(String, String)>,
        /// Delete a config, back to its default; repeatable.
        #[arg(long, value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Grow a topic to a new total number of partitions.
    AddPartitions {
        /// The topic's name.
        name: String,
        /// The new total (more than the topic has).
        #[arg(long, value_name = "N")]
        total: u32,
    },
    /// Delete a topic and its records.
    Delete {
        /// The topic's name.
        name: String,
    },
}

pub(crate) fn run(args: &ApiArgs, command: TopicsCommand, out: &mut dyn Write) -> CliResult<()> {
    let api = Api::new(args);
    let json = args.output == Output::Json;
    match command {
        TopicsCommand::List { filter } => {
            let query: Vec<(&str, String)> = filter.map(|f| ("filter", f)).into_iter().collect();
            let list = api.list("/api/topics", &query)?;
            if json {
                return write_json(out, &list);
            }
            let mut table = Table::new(&[
                ("NAME", Align::Left),
                ("PARTITIONS", Align::Right),
                ("RECORDS", Align::Right),
                ("SIZE", Align::Right),
                ("IN/S", Align::Right),
                ("OUT/S", Align::Right),
            ]);
            for topic in items(&list) {
                table.row(vec![
                    cell(&topic["name"]),
                    cell(&topic["partitions"]),
                    cell(&topic["records"]),
                    bytes(&topic["size_bytes"]),
                    rate(&topic["records_in_rate"]),
                    rate(&topic["records_out_rate"]),
                ]);
            }
            table.write(out, "no topics")
        }
        TopicsCommand::Create {
            name,
            partitions,
            configs,
        } => {
            let configs: Map<String, Value> = configs
                .into_iter()
                .map(|(key, value)| (key, Value::String(value)))
                .collect();
            let body = json!({"name": name, "partitions": partitions, "configs": configs});
            let topic = api.send(Method::Post, "/api/topics", &body)?;
            if json {
                return write_json(out, &topic);
            }
            writeln!(
                out,
                "created topic {name:?} with {partitions} partition{}",
                if partitions == 1 { "" } else { "s" }
            )?;
            Ok(())
        }
        TopicsCommand::Describe { name } => {
            let topic = api.get(&format!("/api/topics/{}", segment(&name)), &[])?;
            if json {
                return write_json(out, &topic);
            }
            describe(&topic, out)
        }
        TopicsCommand::Alter { name, set, delete } => {
            let set: Map<String, Value> = set
                .into_iter()
                .map(|(key, value)| (key, Value::String(value)))
                .collect();
            let body = json!({"set": set, "delete": delete});
            let path = format!("/api/topics/{}/configs", segment(&name));
            let topic = api.send(Method::Patch, &path, &body)?;
            if json {
                return write_json(out, &topic);
            }
            writeln!(out, "updated the configs of topic {name:?}")?;
            configs_table(&topic, out)
        }
        TopicsCommand::AddPartitions { name, total } => {
            let path = format!("/api/topics/{}/partitions", segment(&name));
            let topic = api.send(Method::Post, &path, &json!({"count": total}))?;
            if json {
                return write_json(out, &topic);
            }
            let now = topic["partitions"].as_array().map_or(0, Vec::len);
            writeln!(
                out,
                "topic {name:?} now has {}",
                counted(now as u64, "partition")
            )?;
            Ok(())
        }
        TopicsCommand::Delete { name } => {
            api.delete(&format!("/api/topics/{}", segment(&name)), &[])?;
            if !json {
                writeln!(out, "deleted topic {name:?}")?;
            }
            Ok(())
        }
    }
}

fn describe(topic: &Value, out: &mut dyn Write) -> CliResult<()> {
    let mut fields = vec![("topic", cell(&topic["name"])), ("id", cell(&topic["id"]))];
    if let Some(queues) = topic["stream_queues"].as_array().filter(|q| !q.is_empty()) {
        let names: Vec<String> = queues
            .iter()
            .map(|queue| format!("{} (vhost {})", cell(&queue["name"]), cell(&queue["vhost"])))
            .collect();
        fields.push(("stream queues", names.join(", ")));
    }
    let forwarding = &topic["forwarding"];
    if forwarding.is_object() {
        let lag: i64 = forwarding["partitions"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(|partition| partition["lag"].as_i64())
            .sum();
        fields.push((
            "forwarding",
            format!(
                "to exchange {:?} in vhost {} (routing key: {}), {lag} records behind",
                cell(&forwarding["exchange"]),
                cell(&forwarding["vhost"]),
                cell(&forwarding["routing_key"]),
            ),
        ));
    }
    write_fields(out, &fields)?;
    writeln!(out)?;
    let mut partitions = Table::new(&[
        ("PARTITION", Align::Right),
        ("LOG-START", Align::Right),
        ("LOG-END", Align::Right),
        ("HIGH-WATERMARK", Align::Right),
        ("SIZE", Align::Right),
        ("SEGMENTS", Align::Right),
    ]);
    for partition in topic["partitions"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
    {
        partitions.row(vec![
            cell(&partition["partition"]),
            cell(&partition["log_start_offset"]),
            cell(&partition["log_end_offset"]),
            cell(&partition["high_watermark"]),
            bytes(&partition["size_bytes"]),
            cell(&partition["segments"]),
        ]);
    }
    partitions.write(out, "no partitions")?;
    writeln!(out)?;
    configs_table(topic, out)
}

fn configs_table(topic: &Value, out: &mut dyn Write) -> CliResult<()> {
    let mut configs = Table::new(&[
        ("CONFIG", Align::Left),
        ("VALUE", Align::Left),
        ("SOURCE", Align::Left),
    ]);
    for config in topic["configs"].as_array().map_or(&[][..], Vec::as_slice) {
        configs.row(vec![
            cell(&config["name"]),
            cell(&config["value"]),
            cell(&config["source"]),
        ]);
    }
    configs.write(out, "no configs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_partitions_and_configs() -> CliResult<()> {
        let topic = json!({
            "name": "orders", "id": "ab",
            "partitions": [{"partition": 0, "log_start_offset": 0, "log_end_offset": 42,
                            "high_watermark": 42, "size_bytes": 4096, "segments": 1}],
            "configs": [{"name": "retention.ms", "value": "3600000", "source": "topic"}],
            "stream_queues": [], "forwarding": null,
        });
        let mut out = Vec::new();
        describe(&topic, &mut out)?;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("topic  orders"), "{text}");
        assert!(
            text.contains("        0          0       42              42  4.0 KiB         1"),
            "{text}"
        );
        assert!(text.contains("retention.ms  3600000  topic"), "{text}");
        assert!(!text.contains("forwarding"), "{text}");
        Ok(())
    }
}
