//! `GET /metrics`: Prometheus text exposition (format 0.0.4), rendered from
//! the counters the core and the front-ends keep; nothing is recorded here.
//!
//! Series (all `sluice_<area>_<thing>_<unit>`):
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `sluice_kafka_partition_records_in_total` | counter | topic, partition |
//! | `sluice_kafka_partition_bytes_in_total` | counter | topic, partition |
//! | `sluice_kafka_partition_records_out_total` | counter | topic, partition |
//! | `sluice_kafka_partition_bytes_out_total` | counter | topic, partition |
//! | `sluice_kafka_partition_log_size_bytes` | gauge | topic, partition |
//! | `sluice_kafka_partition_log_start_offset` | gauge | topic, partition |
//! | `sluice_kafka_partition_high_watermark` | gauge | topic, partition |
//! | `sluice_kafka_group_lag_records` | gauge | group, topic, partition |
//! | `sluice_kafka_group_committed_offset` | gauge | group, topic, partition |
//! | `sluice_kafka_group_members` | gauge | group, type (classic, consumer, share) |
//! | `sluice_kafka_share_records` | gauge | group, topic, partition, state (available, acquired, archived) |
//! | `sluice_kafka_request_duration_microseconds` | histogram | api |
//! | `sluice_forward_lag_records` | gauge | topic, partition, exchange |
//! | `sluice_amqp_queue_messages_ready` | gauge | vhost, queue |
//! | `sluice_amqp_queue_messages_unacked` | gauge | vhost, queue |
//! | `sluice_amqp_queue_consumers` | gauge | vhost, queue |
//! | `sluice_amqp_queue_published_total` | counter | vhost, queue |
//! | `sluice_amqp_queue_delivered_total` | counter | vhost, queue |
//! | `sluice_amqp_queue_acked_total` | counter | vhost, queue |
//! | `sluice_amqp_queue_redelivered_total` | counter | vhost, queue |
//! | `sluice_amqp_quorum_queue_leader` | gauge | vhost, queue |
//! | `sluice_amqp_quorum_queue_leader_epoch` | gauge | vhost, queue |
//! | `sluice_amqp_quorum_queue_members_online` | gauge | vhost, queue |
//! | `sluice_amqp_quorum_queue_unreplicated_records` | gauge | vhost, queue |
//! | `sluice_amqp_method_duration_microseconds` | histogram | method |
//! | `sluice_amqp_queued_message_bytes` | gauge | |
//! | `sluice_alarm_active` | gauge | resource (memory, disk) |
//! | `sluice_cluster_under_replicated_partitions` | gauge | |
//! | `sluice_cluster_partitions_led` | gauge | |
//! | `sluice_cluster_controller` | gauge | |
//! | `sluice_cluster_offline_partitions` | gauge | |
//! | `sluice_cluster_fenced_nodes` | gauge | |
//! | `sluice_cluster_in_sync_shrinks_total` | counter | |
//! | `sluice_cluster_in_sync_expands_total` | counter | |
//! | `sluice_cluster_follower_lag_records` | gauge | |
//! | `sluice_cluster_follower_lag_seconds` | gauge | |
//! | `sluice_cluster_controller_changes_total` | counter | |
//! | `sluice_cluster_metadata_commit_seconds` | summary (sum, count) | |
//! | `sluice_connections_open` | gauge | protocol |
//! | `sluice_connections_opened_total` | counter | protocol |
//! | `sluice_connections_refused_total` | counter | |
//! | `sluice_kafka_quota_rate` | gauge | quota, user, client_id |
//! | `sluice_kafka_quota_throttle_seconds_total` | counter | quota, user, client_id |
//! | `sluice_kafka_quota_recorded_total` | counter | quota, user, client_id |
//! | `sluice_channels_open` | gauge | protocol |
//! | `sluice_log_fsync_duration_microseconds` | histogram | |
//! | `sluice_log_sync_batch_records` | histogram | |
//! | `sluice_process_resident_memory_bytes` | gauge | |
//! | `sluice_process_open_fds` | gauge | |
//! | `sluice_process_uptime_seconds` | gauge | |

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sluice_core::Protocol;
use sluice_types::Histogram;

use crate::AppState;

/// The exposition of every series.
pub(crate) async fn render(State(shared): State<AppState>) -> impl IntoResponse {
    let broker = &shared.broker;
    let mut out = Exposition::default();

    let counter = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    let partition_series: [(&str, &str, &str); 7] = [
        (
            "sluice_kafka_partition_records_in_total",
            "counter",
            "Records appended to the partition.",
        ),
        (
            "sluice_kafka_partition_bytes_in_total",
            "counter",
            "Record batch bytes appended to the partition.",
        ),
        (
            "sluice_kafka_partition_records_out_total",
            "counter",
            "Records returned by fetches.",
        ),
        (
            "sluice_kafka_partition_bytes_out_total",
            "counter",
            "Record batch bytes returned by fetches.",
        ),
        (
            "sluice_kafka_partition_log_size_bytes",
            "gauge",
            "Bytes of the partition's log on disk.",
        ),
        (
            "sluice_kafka_partition_log_start_offset",
            "gauge",
            "First offset still in the log.",
        ),
        (
            "sluice_kafka_partition_high_watermark",
            "gauge",
            "Offset after the last record consumers can read.",
        ),
    ];
    let mut partitions = Vec::new();
    let mut names = broker.topics().names();
    names.sort();
    for name in &names {
        if let Some(topic) = broker.topics().get(name) {
            partitions.extend(topic.partitions());
        }
    }
    for (index, (name, kind, help)) in partition_series.iter().enumerate() {
        out.header(name, kind, help);
        for partition in &partitions {
            let traffic = partition.traffic();
            let value = match index {
                0 => counter(&traffic.records_in),
                1 => counter(&traffic.bytes_in),
                2 => counter(&traffic.records_out),
                3 => counter(&traffic.bytes_out),
                4 => partition.size_bytes() as f64,
                5 => partition.log_start().get() as f64,
                _ => partition.high_watermark().get() as f64,
            };
            let id = partition.id().get().to_string();
            out.sample(
                name,
                &[("topic", partition.topic()), ("partition", &id)],
                value,
            );
        }
    }

    let mut groups = broker.offsets().group_ids();
    groups.sort();
    let mut lags = Vec::new();
    for group in &groups {
        for (topic, partition, committed) in broker.offsets().group(group) {
            let end = broker
                .topics()
                .get(&topic)
                .and_then(|t| t.partition(sluice_types::PartitionId::from(partition)))
                .map(|p| p.high_watermark().get());
            lags.push((group.clone(), topic, partition, committed.offset, end));
        }
    }
    out.header(
        "sluice_kafka_group_committed_offset",
        "gauge",
        "Offset a consumer group committed.",
    );
    for (group, topic, partition, offset, _) in &lags {
        let partition = partition.to_string();
        out.sample(
            "sluice_kafka_group_committed_offset",
            &[
                ("group", group),
                ("topic", topic),
                ("partition", &partition),
            ],
            *offset as f64,
        );
    }
    out.header(
        "sluice_kafka_group_lag_records",
        "gauge",
        "High watermark minus the committed offset.",
    );
    for (group, topic, partition, offset, end) in &lags {
        if let Some(end) = end {
            let partition = partition.to_string();
            out.sample(
                "sluice_kafka_group_lag_records",
                &[
                    ("group", group),
                    ("topic", topic),
                    ("partition", &partition),
                ],
                (end - offset).max(0) as f64,
            );
        }
    }
    out.header(
        "sluice_kafka_group_members",
        "gauge",
        "Members of a group this node coordinates, by the group's type.",
    );
    let mut members: Vec<(String, &str, usize)> = broker
        .groups()
        .list()
        .into_iter()
        .filter_map(|(id, _, _)| {
            let count = broker.groups().describe(&id)?.members.len();
            Some((id, "classic", count))
        })
        .collect();
    for (id, _) in broker.consumer_groups().list() {
        if let Some(group) = broker.consumer_groups().describe(&id) {
            members.push((id, "consumer", group.members.len()));
        }
    }
    for (id, _) in broker.share_groups().list() {
        if let Some(group) = broker.share_groups().describe(&id) {
            members.push((id, "share", group.members.len()));
        }
    }
    for (group, kind, count) in &members {
        out.sample(
            "sluice_kafka_group_members",
            &[("group", group), ("type", kind)],
            *count as f64,
        );
    }
    out.header(
        "sluice_kafka_share_records",
        "gauge",
        "Records of a share group's partition this node leads, by state (archived: since the state was loaded).",
    );
    let catalog = broker.topic_catalog();
    for (group, _) in broker.share_groups().list() {
        for (topic, partition, counts) in broker.share_groups().counts(&group) {
            let topic = catalog.name_of(&topic).unwrap_or_default().to_owned();
            let partition = partition.to_string();
            for (state, value) in [
                ("available", counts.available),
                ("acquired", counts.acquired),
                ("archived", counts.archived),
            ] {
                out.sample(
                    "sluice_kafka_share_records",
                    &[
                        ("group", &group),
                        ("topic", &topic),
                        ("partition", &partition),
                        ("state", state),
                    ],
                    value as f64,
                );
            }
        }
    }
    out.header(
        "sluice_forward_lag_records",
        "gauge",
        "Records of a forwarded partition not yet published to its exchange.",
    );
    for partition in &partitions {
        let Some(forwarding) = broker
            .topics()
            .get(partition.topic())
            .and_then(|t| t.config().forwarding())
        else {
            continue;
        };
        let group = sluice_core::forwarding::forward_group(&forwarding);
        let position = broker
            .offsets()
            .fetch(&group, partition.topic(), partition.id().get())
            .map_or(partition.log_start().get(), |c| c.offset);
        let id = partition.id().get().to_string();
        out.sample(
            "sluice_forward_lag_records",
            &[
                ("topic", partition.topic()),
                ("partition", &id),
                ("exchange", &forwarding.exchange),
            ],
            (partition.high_watermark().get() - position).max(0) as f64,
        );
    }
    if let Some(requests) = broker.metrics().kafka.get() {
        out.header(
            "sluice_kafka_request_duration_microseconds",
            "histogram",
            "Time from a decoded Kafka request to its response, per API.",
        );
        for (api, histogram) in requests.iter() {
            out.histogram(
                "sluice_kafka_request_duration_microseconds",
                &[("api", api)],
                histogram,
            );
        }
    }

    let queue_series: [(&str, &str, &str); 7] = [
        (
            "sluice_amqp_queue_messages_ready",
            "gauge",
            "Messages ready for delivery.",
        ),
        (
            "sluice_amqp_queue_messages_unacked",
            "gauge",
            "Messages delivered and not yet acknowledged.",
        ),
        (
            "sluice_amqp_queue_consumers",
            "gauge",
            "Consumers of the queue.",
        ),
        (
            "sluice_amqp_queue_published_total",
            "counter",
            "Messages enqueued.",
        ),
        (
            "sluice_amqp_queue_delivered_total",
            "counter",
            "Deliveries to consumers and basic.get.",
        ),
        (
            "sluice_amqp_queue_acked_total",
            "counter",
            "Deliveries acknowledged.",
        ),
        (
            "sluice_amqp_queue_redelivered_total",
            "counter",
            "Deliveries of messages delivered before.",
        ),
    ];
    let mut queues = Vec::new();
    for vhost in broker.vhosts().all() {
        let mut list = vhost.queues();
        list.sort_by(|a, b| a.name().cmp(b.name()));
        for queue in list {
            queues.push((vhost.name().to_owned(), queue));
        }
    }
    for (index, (name, kind, help)) in queue_series.iter().enumerate() {
        out.header(name, kind, help);
        for (vhost, queue) in &queues {
            let traffic = queue.traffic();
            let value = match index {
                0 => queue.message_count() as f64,
                1 => queue.unacked_count() as f64,
                2 => queue.consumer_count() as f64,
                3 => counter(&traffic.published),
                4 => counter(&traffic.delivered),
                5 => counter(&traffic.acked),
                _ => counter(&traffic.redelivered),
            };
            out.sample(name, &[("vhost", vhost), ("queue", queue.name())], value);
        }
    }
    quorum_queues(&mut out, broker);
    if let Some(methods) = broker.metrics().amqp.get() {
        out.header(
            "sluice_amqp_method_duration_microseconds",
            "histogram",
            "Time to handle an AMQP method (basic.publish: once its content is complete).",
        );
        for (method, histogram) in methods.iter() {
            out.histogram(
                "sluice_amqp_method_duration_microseconds",
                &[("method", method)],
                histogram,
            );
        }
    }
    let monitor = broker.vhosts().memory();
    out.header(
        "sluice_amqp_queued_message_bytes",
        "gauge",
        "Message body bytes held by queues.",
    );
    out.sample(
        "sluice_amqp_queued_message_bytes",
        &[],
        monitor.used() as f64,
    );
    out.header(
        "sluice_alarm_active",
        "gauge",
        "1 while a resource alarm blocks publishers.",
    );
    out.sample(
        "sluice_alarm_active",
        &[("resource", "memory")],
        f64::from(u8::from(monitor.memory_alarm())),
    );
    out.sample(
        "sluice_alarm_active",
        &[("resource", "disk")],
        f64::from(u8::from(monitor.disk_alarm())),
    );

    let cluster = broker.cluster_view();
    out.header(
        "sluice_cluster_under_replicated_partitions",
        "gauge",
        "Partitions with fewer in-sync replicas than replicas.",
    );
    out.sample(
        "sluice_cluster_under_replicated_partitions",
        &[],
        cluster.under_replicated as f64,
    );
    out.header(
        "sluice_cluster_partitions_led",
        "gauge",
        "Partitions this node leads.",
    );
    out.sample(
        "sluice_cluster_partitions_led",
        &[],
        cluster.led_here as f64,
    );
    out.header(
        "sluice_cluster_controller",
        "gauge",
        "1 on the node that is the controller (the metadata quorum's leader).",
    );
    out.sample(
        "sluice_cluster_controller",
        &[],
        f64::from(u8::from(cluster.controller == cluster.node_id)),
    );
    let gauges = [
        (
            "sluice_cluster_offline_partitions",
            "gauge",
            "Partitions whose leader is fenced and that no in-sync replica could take over.",
            cluster.offline as f64,
        ),
        (
            "sluice_cluster_fenced_nodes",
            "gauge",
            "Registered nodes the controller fenced (not heard from for cluster.session_timeout).",
            cluster.fenced.len() as f64,
        ),
        (
            "sluice_cluster_in_sync_shrinks_total",
            "counter",
            "In-sync replica sets that shrank on partitions while this node led them.",
            cluster.replication.in_sync_shrinks as f64,
        ),
        (
            "sluice_cluster_in_sync_expands_total",
            "counter",
            "In-sync replica sets that grew on partitions while this node led them.",
            cluster.replication.in_sync_expands as f64,
        ),
        (
            "sluice_cluster_follower_lag_records",
            "gauge",
            "Records the furthest-behind follower of a partition this node leads lacks.",
            cluster.replication.follower_lag_records as f64,
        ),
        (
            "sluice_cluster_follower_lag_seconds",
            "gauge",
            "Longest time since a follower of a partition this node leads last caught up.",
            cluster.replication.follower_lag_ms as f64 / 1000.0,
        ),
        (
            "sluice_cluster_controller_changes_total",
            "counter",
            "Times this node saw the controller change (the first one included).",
            cluster.controller_changes as f64,
        ),
    ];
    for (name, kind, help, value) in gauges {
        out.header(name, kind, help);
        out.sample(name, &[], value);
    }
    out.header(
        "sluice_cluster_metadata_commit_seconds",
        "summary",
        "Metadata commits by this node's writers (through the quorum on a cluster, until applied here).",
    );
    out.sample(
        "sluice_cluster_metadata_commit_seconds_sum",
        &[],
        cluster.commit_micros as f64 / 1e6,
    );
    out.sample(
        "sluice_cluster_metadata_commit_seconds_count",
        &[],
        cluster.commits as f64,
    );

    let connections = broker.connections().list();
    out.header(
        "sluice_connections_open",
        "gauge",
        "Open client connections.",
    );
    for protocol in [
        Protocol::Kafka,
        Protocol::Amqp,
        Protocol::Mqtt,
        Protocol::Stomp,
    ] {
        let open = connections
            .iter()
            .filter(|c| c.protocol() == protocol)
            .count();
        out.sample(
            "sluice_connections_open",
            &[("protocol", protocol.as_str())],
            open as f64,
        );
    }
    out.header(
        "sluice_connections_opened_total",
        "counter",
        "Client connections accepted.",
    );
    for protocol in [
        Protocol::Kafka,
        Protocol::Amqp,
        Protocol::Mqtt,
        Protocol::Stomp,
    ] {
        let opened = broker.connections().opened_total(protocol);
        out.sample(
            "sluice_connections_opened_total",
            &[("protocol", protocol.as_str())],
            opened as f64,
        );
    }
    out.header(
        "sluice_connections_refused_total",
        "counter",
        "Client connections closed at once for passing limits.max_connections(_per_ip).",
    );
    out.sample(
        "sluice_connections_refused_total",
        &[],
        broker.connections().refused_total() as f64,
    );
    kafka_quotas(&mut out, broker);
    out.header("sluice_channels_open", "gauge", "Open AMQP channels.");
    let channels: usize = connections.iter().map(|c| c.channel_count()).sum();
    out.sample(
        "sluice_channels_open",
        &[("protocol", "amqp")],
        channels as f64,
    );

    let storage = sluice_core::storage::metrics();
    out.header(
        "sluice_log_fsync_duration_microseconds",
        "histogram",
        "fdatasync of a log segment.",
    );
    out.histogram(
        "sluice_log_fsync_duration_microseconds",
        &[],
        &storage.fsync_latency,
    );
    out.header(
        "sluice_log_sync_batch_records",
        "histogram",
        "Records made durable by one sync (group commit).",
    );
    out.histogram(
        "sluice_log_sync_batch_records",
        &[],
        &storage.sync_batch_records,
    );

    out.header(
        "sluice_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the broker process.",
    );
    out.sample(
        "sluice_process_resident_memory_bytes",
        &[],
        resident_memory_bytes() as f64,
    );
    out.header(
        "sluice_process_open_fds",
        "gauge",
        "Open file descriptors of the broker process.",
    );
    out.sample("sluice_process_open_fds", &[], open_fds() as f64);
    out.header(
        "sluice_process_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
    );
    out.sample(
        "sluice_process_uptime_seconds",
        &[],
        broker.uptime().as_secs_f64(),
    );

    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.text,
    )
}

/// Resident memory of this process (Linux `/proc/self/status`), 0 where unknown.
pub(crate) fn resident_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

/// Open file descriptors of this process (Linux `/proc/self/fd`), 0 where unknown.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count())
}

/// The text being built.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let snapshot = histogram.snapshot();
        for (bound, count) in &snapshot.cumulative {
            let _ = write!(self.text, "{name}_bucket");
            write_labels(&mut self.text, labels, Some(&bound.to_string()));
            let _ = writeln!(self.text, " {count}");
        }
        let _ = write!(self.text, "{name}_bucket");
        write_labels(&mut self.text, labels, Some("+Inf"));
        let _ = writeln!(self.text, " {}", snapshot.count);
        let _ = write!(self.text, "{name}_sum");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", snapshot.sum);
        let _ = write!(self.text, "{name}_count");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", snapshot.count);
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (key, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{key}=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                other => out.push(other),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// Each Kafka client quota's measured rate, per quota entity as Kafka
/// tags it (an empty user or client id: the quota leaves that side out).
fn kafka_quotas(out: &mut Exposition, broker: &sluice_core::Broker) {
    let measured = broker.client_quotas().measured();
    for (name, kind, help) in [
        (
            "sluice_kafka_quota_rate",
            "gauge",
            "Rate a Kafka client quota is checked against: bytes per second, or percent of a request thread.",
        ),
        (
            "sluice_kafka_quota_throttle_seconds_total",
            "counter",
            "Throttle time handed to clients over a Kafka quota.",
        ),
        (
            "sluice_kafka_quota_recorded_total",
            "counter",
            "Amount recorded against a Kafka client quota: bytes, or percent-seconds of request time.",
        ),
    ] {
        out.header(name, kind, help);
        for (key, rate, throttled, recorded) in &measured {
            let value = match name {
                "sluice_kafka_quota_rate" => *rate,
                "sluice_kafka_quota_throttle_seconds_total" => throttled.as_secs_f64(),
                _ => *recorded,
            };
            out.sample(
                name,
                &[
                    ("quota", key.quota),
                    ("user", &key.user),
                    ("client_id", &key.client_id),
                ],
                value,
            );
        }
    }
}

/// Quorum queues on a cluster, as every node knows them (leader, leader
/// epoch, members in sync), and on the leader's node what its in-sync
/// replicas do not have yet.
fn quorum_queues(out: &mut Exposition, broker: &sluice_core::Broker) {
    let mut placements = Vec::new();
    for vhost in broker.vhosts().all() {
        for (queue, placement) in vhost.quorum_placements() {
            placements.push((vhost.name().to_owned(), queue, placement));
        }
    }
    let series: [(&str, &str); 4] = [
        (
            "sluice_amqp_quorum_queue_leader",
            "The node leading the quorum queue (-1: none).",
        ),
        (
            "sluice_amqp_quorum_queue_leader_epoch",
            "The quorum queue's leader epoch: one more at every leader change.",
        ),
        (
            "sluice_amqp_quorum_queue_members_online",
            "Members of the quorum queue in sync with its leader.",
        ),
        (
            "sluice_amqp_quorum_queue_unreplicated_records",
            "On the leader's node: records not yet on every in-sync member (replication lag).",
        ),
    ];
    for (index, (name, help)) in series.iter().enumerate() {
        out.header(name, "gauge", help);
        for (vhost, queue, placement) in &placements {
            let value = match index {
                0 => f64::from(placement.leader),
                1 => f64::from(placement.leader_epoch),
                2 => placement.in_sync.len() as f64,
                _ => match placement.unreplicated {
                    Some(records) => records as f64,
                    None => continue,
                },
            };
            out.sample(name, &[("vhost", vhost), ("queue", queue)], value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("m", &[("queue", "a\"b\\c\nd")], 1.0);
        assert_eq!(out.text, "m{queue=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let histogram = Histogram::new(&[10, 100]);
        histogram.observe(5);
        histogram.observe(50);
        histogram.observe(500);
        let mut out = Exposition::default();
        out.histogram("h", &[("api", "Fetch")], &histogram);
        assert_eq!(
            out.text,
            "h_bucket{api=\"Fetch\",le=\"10\"} 1\nh_bucket{api=\"Fetch\",le=\"100\"} 2\n\
             h_bucket{api=\"Fetch\",le=\"+Inf\"} 3\nh_sum{api=\"Fetch\"} 555\nh_count{api=\"Fetch\"} 3\n"
        );
    }
}
