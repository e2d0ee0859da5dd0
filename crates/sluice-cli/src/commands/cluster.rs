//! `sluice cluster status|elect-leaders|reassign|decommission`: the nodes
//! of a cluster and its partitions' leaders, replicas and moves (`GET
//! /api/cluster`), leader elections through the controller (`POST
//! /api/cluster/elect-leaders`), moving a partition to other replicas
//! (`POST /api/cluster/reassign`) and taking a node out of the cluster
//! (`POST /api/cluster/nodes/{id}/decommission`).

use std::io::Write;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::args::{ApiArgs, Output};
use crate::client::{Api, Method};
use crate::error::CliResult;
use crate::output::{Align, Table, cell, write_json};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The nodes (controller, fenced) and the partitions that are
    /// under-replicated or offline (every partition with --all).
    Status {
        /// List every partition, not only those with fewer in-sync
        /// replicas than replicas or without a leader.
        #[arg(long)]
        all: bool,
    },
    /// Move leadership back to each partition's preferred replica (the
    /// first), or with --unclean give a partition whose leader is down any
    /// live replica (losing what only the others had).
    ElectLeaders {
        /// Only this topic's partitions.
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition of --topic.
        #[arg(long, requires = "topic")]
        partition: Option<u32>,
        #[arg(long)]
        unclean: bool,
    },
    /// Move a partition to other replicas (the first is its preferred
    /// leader); the new ones catch up, then the old ones are dropped.
    Reassign {
        topic: String,
        partition: u32,
        /// Node ids separated by commas, e.g. 1,2,4.
        #[arg(value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Vec<i32>,
        /// Cancel the move under way instead.
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
    },
    /// Move every replica off node ID, then take it out of the cluster
    /// (`cluster status` shows the moves; stop the node once it is gone).
    Decommission { node: i32 },
}

pub(crate) fn run(args: &ApiArgs, command: ClusterCommand, out: &mut dyn Write) -> CliResult<()> {
    let api = Api::new(args);
    let json = args.output == Output::Json;
    match command {
        ClusterCommand::Status { all } => {
            let cluster = api.get("/api/cluster", &[])?;
            if json {
                return write_json(out, &cluster);
            }
            write_status(out, &cluster, all)
        }
        ClusterCommand::ElectLeaders {
            topic,
            partition,
            unclean,
        } => {
            let body = json!({"topic": topic, "partition": partition, "unclean": unclean});
            let answer = api.send(Method::Post, "/api/cluster/elect-leaders", &body)?;
            if json {
                return write_json(out, &answer);
            }
            let mut table = Table::new(&[
                ("TOPIC", Align::Left),
                ("PARTITION", Align::Right),
                ("OUTCOME", Align::Left),
                ("LEADER", Align::Right),
            ]);
            for result in answer["results"].as_array().map_or(&[][..], Vec::as_slice) {
                table.row(vec![
                    cell(&result["topic"]),
                    cell(&result["partition"]),
                    cell(&result["outcome"]).replace('_', " "),
                    cell(&result["leader"]),
                ]);
            }
            table.write(out, "no partitions")
        }
        ClusterCommand::Reassign {
            topic,
            partition,
            replicas,
            cancel,
        } => {
            let replicas = (!cancel).then_some(replicas);
            let body = json!({"topic": topic, "partition": partition, "replicas": replicas});
            let answer = api.send(Method::Post, "/api/cluster/reassign", &body)?;
            if json {
                return write_json(out, &answer);
            }
            writeln!(
                out,
                "{topic} partition {partition}: move {}",
                cell(&answer["outcome"])
            )?;
            Ok(())
        }
        ClusterCommand::Decommission { node } => {
            let path = format!("/api/cluster/nodes/{node}/decommission");
            let answer = api.send(Method::Post, &path, &json!({}))?;
            if json {
                return write_json(out, &answer);
            }
            writeln!(
                out,
                "node {node}: decommissioning; its replicas move to other nodes, then it leaves the cluster"
            )?;
            Ok(())
        }
    }
}

fn write_status(out: &mut dyn Write, cluster: &Value, all: bool) -> CliResult<()> {
    if cluster["clustered"].as_bool() != Some(true) {
        writeln!(out, "one node (no cluster.voters): nothing is replicated")?;
        return Ok(());
    }
    let mut nodes = Table::new(&[
        ("NODE", Align::Right),
        ("KAFKA", Align::Left),
        ("ROLE", Align::Left),
        ("STATE", Align::Left),
        ("QUEUES", Align::Right),
        ("QQ LEADERS", Align::Right),
        ("KAFKA CONNS", Align::Right),
        ("AMQP CONNS", Align::Right),
    ]);
    for node in cluster["nodes"].as_array().map_or(&[][..], Vec::as_slice) {
        let mut role = cell(&node["role"]);
        if node["this_node"].as_bool() == Some(true) {
            role.push_str(" (this node)");
        }
        let state = if node["fenced"].as_bool() == Some(true) {
            "fenced"
        } else if node["decommissioning"].as_bool() == Some(true) {
            "decommissioning"
        } else {
            "live"
        };
        nodes.row(vec![
            cell(&node["id"]),
            cell(&node["kafka"]),
            role,
            state.to_owned(),
            cell(&node["queues"]),
            cell(&node["quorum_leaders"]),
            cell(&node["connections"]["kafka"]),
            cell(&node["connections"]["amqp"]),
        ]);
    }
    nodes.write(out, "no registered nodes")?;
    let partitions = cluster["partitions"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let moving = cluster["reassignments"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    writeln!(
        out,
        "\n{} partitions, {} under-replicated, {} offline, {} moving",
        partitions.len(),
        cell(&cluster["under_replicated_partitions"]),
        cell(&cluster["offline_partitions"]),
        moving.len(),
    )?;
    let list = |value: &Value| {
        value
            .as_array()
            .map(|ids| ids.iter().map(cell).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    if !moving.is_empty() {
        writeln!(out)?;
        let mut table = Table::new(&[
            ("TOPIC", Align::Left),
            ("PARTITION", Align::Right),
            ("REPLICAS", Align::Left),
            ("ADDING", Align::Left),
            ("REMOVING", Align::Left),
        ]);
        for m in moving {
            table.row(vec![
                cell(&m["topic"]),
                cell(&m["partition"]),
                list(&m["replicas"]),
                list(&m["adding_replicas"]),
                list(&m["removing_replicas"]),
            ]);
        }
        table.write(out, "")?;
    }
    let shown: Vec<&Value> = partitions
        .iter()
        .filter(|p| {
            all || p["under_replicated"].as_bool() == Some(true)
                || p["offline"].as_bool() == Some(true)
        })
        .collect();
    if shown.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    let mut table = Table::new(&[
        ("TOPIC", Align::Left),
        ("PARTITION", Align::Right),
        ("LEADER", Align::Right),
        ("EPOCH", Align::Right),
        ("REPLICAS", Align::Left),
        ("IN-SYNC", Align::Left),
        ("OFFLINE", Align::Left),
    ]);
    for p in shown {
        table.row(vec![
            cell(&p["topic"]),
            cell(&p["partition"]),
            cell(&p["leader"]),
            cell(&p["leader_epoch"]),
            list(&p["replicas"]),
            list(&p["in_sync_replicas"]),
            list(&p["offline_replicas"]),
        ]);
    }
    table.write(out, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_nodes_and_the_partitions_in_trouble() {
        let cluster = json!({
            "clustered": true, "node_id": 1, "controller": 2,
            "nodes": [
                {"id": 1, "kafka": "127.0.0.1:9091", "role": "broker", "fenced": false, "queues": 17, "this_node": true,
                 "quorum_leaders": 5, "connections": {"kafka": 31, "amqp": 42}},
                {"id": 2, "kafka": "127.0.0.1:9092", "role": "controller", "fenced": false, "this_node": false},
                {"id": 3, "kafka": "127.0.0.1:9093", "role": "broker", "fenced": true, "this_node": false},
                {"id": 4, "kafka": "127.0.0.1:9094", "role": "broker", "fenced": false, "decommissioning": true, "this_node": false},
            ],
            "reassignments": [
                {"topic": "a", "partition": 0, "replicas": [2, 3, 1], "adding_replicas": [3], "removing_replicas": [1]},
            ],
            "partitions": [
                {"topic": "a", "partition": 0, "leader": 1, "leader_epoch": 2, "replicas": [1, 2, 3],
                 "in_sync_replicas": [1, 2], "offline_replicas": [3], "under_replicated": true, "offline": false},
                {"topic": "b", "partition": 0, "leader": 2, "leader_epoch": 0, "replicas": [2, 1],
                 "in_sync_replicas": [2, 1], "offline_replicas": [], "under_replicated": false, "offline": false},
            ],
            "under_replicated_partitions": 1, "offline_partitions": 0,
        });
        let mut text = Vec::new();
        write_status(&mut text, &cluster, false).expect("write");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("broker (this node)"), "{text}");
        assert!(
            text.contains(" 17"),
            "classic queues living on node 1: {text}"
        );
        assert!(
            text.contains(" 5 ") && text.contains(" 31 ") && text.contains(" 42"),
            "quorum leaders and connections: {text}"
        );
        assert!(text.contains("fenced"), "{text}");
        assert!(text.contains("decommissioning"), "{text}");
        assert!(text.contains("2,3,1"), "the move: {text}");
        assert!(
            text.contains("2 partitions, 1 under-replicated, 0 offline, 1 moving"),
            "{text}"
        );
        assert!(text.contains("1,2,3"), "{text}");
        assert!(!text.contains("\nb "), "only partitions in trouble: {text}");
        let mut every = Vec::new();
        write_status(&mut every, &cluster, true).expect("write");
        assert!(String::from_utf8(every).expect("utf-8").contains("\nb "));

        let mut single = Vec::new();
        write_status(&mut single, &json!({"clustered": false}), false).expect("write");
        assert!(
            String::from_utf8(single)
                .expect("utf-8")
                .starts_with("one node")
        );
    }
}
