//! `sluice queues add-member | delete-member | grow | shrink | rebalance`:
//! quorum queue membership on a cluster, as RabbitMQ's `rabbitmq-queues`.

use std::io::Write;

use serde_json::{Value, json};

use super::amqp::{GrowSelector, QueuesCommand};
use super::segment;
use crate::client::{Api, Method};
use crate::error::CliResult;
use crate::output::{Align, Table, cell, write_json};

/// Runs one of the membership commands of `sluice queues`.
pub(crate) fn members(
    api: &Api,
    json: bool,
    command: QueuesCommand,
    out: &mut dyn Write,
) -> CliResult<()> {
    let answer = match command {
        QueuesCommand::AddMember { name, node, vhost } => {
            let path = format!("/api/queues/{}/{}/members", segment(&vhost), segment(&name));
            let answer = api.send(Method::Post, &path, &json!({ "node": node }))?;
            return members_of(out, json, &answer, &name);
        }
        QueuesCommand::DeleteMember { name, node, vhost } => {
            let path = format!(
                "/api/queues/{}/{}/members/{node}",
                segment(&vhost),
                segment(&name)
            );
            let answer = api.delete(&path, &[])?;
            return members_of(out, json, &answer, &name);
        }
        QueuesCommand::Grow {
            node,
            selector,
            vhost,
        } => {
            let selector = match selector {
                GrowSelector::All => "all",
                GrowSelector::Even => "even",
            };
            let body = json!({ "node": node, "selector": selector, "vhost": vhost });
            api.send(Method::Post, "/api/quorum/grow", &body)?
        }
        QueuesCommand::Shrink { node, vhost } => api.send(
            Method::Post,
            "/api/quorum/shrink",
            &json!({ "node": node, "vhost": vhost }),
        )?,
        QueuesCommand::Rebalance { vhost } => {
            let query: Vec<(&str, String)> =
                vhost.into_iter().map(|vhost| ("vhost", vhost)).collect();
            let answer = api.post_query("/api/rebalance/queues", &query, &json!({}))?;
            if json {
                return write_json(out, &answer);
            }
            let mut table = Table::new(&[
                ("VHOST", Align::Left),
                ("QUEUE", Align::Left),
                ("FROM", Align::Right),
                ("TO", Align::Right),
            ]);
            for moved in answer["moved"].as_array().map_or(&[][..], Vec::as_slice) {
                table.row(vec![
                    cell(&moved["vhost"]),
                    cell(&moved["queue"]),
                    cell(&moved["from"]),
                    cell(&moved["to"]),
                ]);
            }
            return table.write(out, "no leader moved: the quorum queue leaders are spread");
        }
        _ => unreachable!("not a membership command"),
    };
    if json {
        return write_json(out, &answer);
    }
    let mut table = Table::new(&[
        ("VHOST", Align::Left),
        ("QUEUE", Align::Left),
        ("MEMBERS", Align::Left),
        ("ERROR", Align::Left),
    ]);
    for queue in answer["queues"].as_array().map_or(&[][..], Vec::as_slice) {
        table.row(vec![
            cell(&queue["vhost"]),
            cell(&queue["queue"]),
            node_list(&queue["members"]),
            cell(&queue["error"]),
        ]);
    }
    table.write(out, "no quorum queue changed")
}

/// A list of node ids as `1,2,3`.
fn node_list(members: &Value) -> String {
    members
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|node| node.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn members_of(out: &mut dyn Write, json: bool, answer: &Value, name: &str) -> CliResult<()> {
    if json {
        return write_json(out, answer);
    }
    writeln!(
        out,
        "queue {name:?} moves to members {}",
        node_list(&answer["members"])
    )?;
    Ok(())
}
