//! `sluice status`: readiness (`GET /api/health/ready`, which needs no
//! credentials, so a wrong `--user` still learns whether the broker is up)
//! and the overview (`GET /api/overview`) in a few lines.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::args::{ApiArgs, Output};
use crate::client::Api;
use crate::error::{CliError, CliResult};
use crate::output::{bytes, cell, count, duration, rate, write_fields, write_json};

pub(crate) fn run(args: &ApiArgs, out: &mut dyn Write) -> CliResult<()> {
    let api = Api::new(args);
    let readiness = api.readiness()?;
    let mut overview = match api.get("/api/overview", &[]) {
        Ok(overview) => overview,
        Err(error @ CliError::Unauthorized { .. }) => {
            // Readiness needs no login: say it before the refusal (exit 4).
            writeln!(out, "health: {}", health(readiness.as_ref()))?;
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    match args.output {
        Output::Json => {
            overview["health"] = readiness.unwrap_or(Value::Null);
            write_json(out, &overview)
        }
        Output::Table => {
            let mut lines = fields(&overview);
            lines.insert(1, ("health", health(readiness.as_ref())));
            write_fields(out, &lines)
        }
    }
}

/// `ready`, or `not ready: ` and the broker's reasons.
fn health(readiness: Option<&Value>) -> String {
    let Some(readiness) = readiness else {
        return "unknown (this broker has no /api/health/ready)".to_owned();
    };
    if readiness["status"] == "ready" {
        return "ready".to_owned();
    }
    let reasons: Vec<&str> = readiness["reasons"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    format!("not ready: {}", reasons.join("; "))
}

/// `node 1 of 3, controller 2, 0 partitions under-replicated`, or `one
/// node` on a cluster of one.
fn cluster(cluster: &Value) -> String {
    if cluster["clustered"].as_bool() != Some(true) {
        return "one node".to_owned();
    }
    let nodes = cluster["nodes"].as_array().map_or(0, Vec::len);
    let controller = match cluster["controller"].as_i64() {
        Some(id) if id >= 0 => format!("controller {id}"),
        _ => "no controller".to_owned(),
    };
    format!(
        "node {} of {nodes}, {controller}, leads {}, {} under-replicated",
        cell(&cluster["node_id"]),
        count(&cluster["partitions_led_here"], "partition"),
        count(&cluster["under_replicated_partitions"], "partition"),
    )
}

fn fields(overview: &Value) -> Vec<(&'static str, String)> {
    let totals = &overview["totals"];
    let rates = &overview["rates"];
    let uptime = Duration::from_millis(overview["uptime_ms"].as_u64().unwrap_or(0));
    let listeners: Vec<String> = overview["listeners"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|listener| {
            format!(
                "{} {}",
                cell(&listener["protocol"]),
                cell(&listener["address"])
            )
        })
        .collect();
    let alarms: Vec<&str> = ["memory", "disk"]
        .into_iter()
        .filter(|name| overview["alarms"][*name].as_bool() == Some(true))
        .collect();
    vec![
        (
            "broker",
            format!(
                "sluice {}, up {}",
                cell(&overview["version"]),
                duration(uptime)
            ),
        ),
        ("listeners", listeners.join(", ")),
        ("cluster", cluster(&overview["cluster"])),
        (
            "kafka",
            format!(
                "{}, {}, {}",
                count(&totals["topics"], "topic"),
                count(&totals["partitions"], "partition"),
                count(&totals["groups"], "group"),
            ),
        ),
        (
            "kafka rates",
            format!(
                "in {} records/s ({}/s), out {} records/s ({}/s)",
                rate(&rates["kafka_records_in"]),
                bytes(&rates["kafka_bytes_in"]),
                rate(&rates["kafka_records_out"]),
                bytes(&rates["kafka_bytes_out"]),
            ),
        ),
        (
            "amqp",
            format!(
                "{}, {}, {}; {} ready, {} unacknowledged",
                count(&totals["vhosts"], "vhost"),
                count(&totals["exchanges"], "exchange"),
                count(&totals["queues"], "queue"),
                cell(&totals["messages_ready"]),
                cell(&totals["messages_unacknowledged"]),
            ),
        ),
        (
            "amqp rates",
            format!(
                "publish {}/s, deliver {}/s, ack {}/s",
                rate(&rates["amqp_publish"]),
                rate(&rates["amqp_deliver"]),
                rate(&rates["amqp_ack"]),
            ),
        ),
        (
            "clients",
            format!(
                "{}, {}",
                count(&totals["connections"], "connection"),
                count(&totals["channels"], "channel"),
            ),
        ),
        (
            "alarms",
            if alarms.is_empty() {
                "none".to_owned()
            } else {
                format!("{} (publishers are blocked)", alarms.join(", "))
            },
        ),
        ("memory", bytes(&overview["memory_bytes"])),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn overview_reads_as_lines() {
        let overview = json!({
            "version": "0.1.0", "uptime_ms": 192_000,
            "listeners": [{"protocol": "kafka", "address": "127.0.0.1:9092"}],
            "totals": {"topics": 1, "partitions": 3, "groups": 0, "vhosts": 1,
                       "exchanges": 7, "queues": 2, "connections": 0, "channels": 0,
                       "messages_ready": 10, "messages_unacknowledged": 2},
            "rates": {"kafka_records_in": 1.5},
            "alarms": {"memory": false, "disk": true},
            "memory_bytes": 2048,
        });
        let lines = fields(&overview);
        let get = |name: &str| {
            lines
                .iter()
                .find(|(field, _)| *field == name)
                .map(|(_, value)| value.clone())
                .unwrap_or_default()
        };
        assert_eq!(get("broker"), "sluice 0.1.0, up 3m 12s");
        assert_eq!(get("listeners"), "kafka 127.0.0.1:9092");
        assert_eq!(get("kafka"), "1 topic, 3 partitions, 0 groups");
        assert!(get("kafka rates").starts_with("in 1.5 records/s"));
        assert_eq!(get("alarms"), "disk (publishers are blocked)");
        assert_eq!(get("memory"), "2.0 KiB");
    }

    #[test]
    fn health_reads_ready_or_the_reasons() {
        assert_eq!(
            health(Some(&json!({"status": "ready", "reasons": []}))),
            "ready"
        );
        let alarm =
            json!({"status": "not_ready", "reasons": ["disk alarm: low", "memory alarm: high"]});
        assert_eq!(
            health(Some(&alarm)),
            "not ready: disk alarm: low; memory alarm: high"
        );
        assert!(health(None).starts_with("unknown"));
    }
}
