//! The `/api/` routes, one file per resource, and what they share: paging,
//! content encodings and running blocking core calls off the runtime.

mod amqp;
pub(crate) mod cluster;
mod connections;
pub(crate) mod groups;
mod health;
pub(crate) mod history;
mod limits;
mod messages;
mod overview;
mod permissions;
mod queue_move;
mod quorum;
mod search;
mod tables;
mod topics;
mod users;

use axum::Router;
use axum::routing::{delete, get, patch, post, put};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Every API route with its summary; `/api/openapi.json` is built from it
/// and a test checks the router answers each.
pub(crate) const ROUTES: &[(&str, &str, &str)] = &[
    (
        "get",
        "/api/overview",
        "Version, uptime, listeners, totals, rates and alarms",
    ),
    (
        "get",
        "/api/overview/history",
        "The overview's rates over the last hour, every 5 s",
    ),
    (
        "get",
        "/api/cluster",
        "The cluster: nodes (role, fenced) and every partition's leader, replicas and in-sync replicas",
    ),
    (
        "post",
        "/api/cluster/elect-leaders",
        "Preferred (or unclean) leader elections through the controller",
    ),
    (
        "post",
        "/api/cluster/reassign",
        "Move a partition to other replicas, or cancel its move (replicas null)",
    ),
    (
        "post",
        "/api/cluster/nodes/{id}/decommission",
        "Move a node's replicas to other nodes, then take it out of the cluster",
    ),
    (
        "get",
        "/api/health",
        "Liveness: the process answers (no authentication)",
    ),
    (
        "get",
        "/api/health/ready",
        "Readiness: recovered, listeners bound, no alarm; else 503 (no authentication)",
    ),
    ("get", "/api/topics", "List topics"),
    ("post", "/api/topics", "Create a topic"),
    (
        "get",
        "/api/topics/{topic}",
        "Describe a topic: partitions, offsets, sizes, configs",
    ),
    ("delete", "/api/topics/{topic}", "Delete a topic"),
    (
        "patch",
        "/api/topics/{topic}/configs",
        "Set and delete topic configs",
    ),
    ("post", "/api/topics/{topic}/partitions", "Add partitions"),
    (
        "get",
        "/api/topics/{topic}/groups",
        "The consumer groups of a topic (committed offsets or assigned members)",
    ),
    (
        "get",
        "/api/topics/{topic}/partitions/{partition}/messages",
        "Read records by offset or timestamp",
    ),
    (
        "get",
        "/api/topics/{topic}/messages",
        "Browse or search records over all partitions (bounded scan, cursor)",
    ),
    ("post", "/api/topics/{topic}/messages", "Produce records"),
    ("get", "/api/groups", "List consumer groups"),
    (
        "get",
        "/api/groups/{group}",
        "Describe a group: members, assignments, offsets, lag",
    ),
    (
        "delete",
        "/api/groups/{group}",
        "Delete a group without members",
    ),
    (
        "get",
        "/api/groups/{group}/lag-history",
        "A group's total lag over the last hour, every 5 s",
    ),
    (
        "post",
        "/api/groups/{group}/reset-offsets",
        "Reset a stopped group's offsets",
    ),
    ("get", "/api/vhosts", "List virtual hosts"),
    ("get", "/api/exchanges", "List exchanges"),
    (
        "get",
        "/api/exchanges/{vhost}/{exchange}",
        "Show an exchange",
    ),
    (
        "put",
        "/api/exchanges/{vhost}/{exchange}",
        "Declare an exchange",
    ),
    (
        "delete",
        "/api/exchanges/{vhost}/{exchange}",
        "Delete an exchange",
    ),
    (
        "post",
        "/api/exchanges/{vhost}/{exchange}/publish",
        "Publish a message",
    ),
    (
        "post",
        "/api/exchanges/{vhost}/{exchange}/messages",
        "Publish a batch of messages, answered once they are durable",
    ),
    ("get", "/api/queues", "List queues"),
    ("get", "/api/queues/{vhost}/{queue}", "Show a queue"),
    ("put", "/api/queues/{vhost}/{queue}", "Declare a queue"),
    ("delete", "/api/queues/{vhost}/{queue}", "Delete a queue"),
    (
        "delete",
        "/api/queues/{vhost}/{queue}/contents",
        "Purge a queue",
    ),
    (
        "get",
        "/api/queues/{vhost}/{queue}/messages",
        "Peek at a queue's head without consuming",
    ),
    (
        "post",
        "/api/queues/{vhost}/{queue}/get",
        "Take messages from a queue",
    ),
    (
        "post",
        "/api/queues/{vhost}/{queue}/move",
        "Move ready messages to another queue (as a shovel from a dead-letter queue)",
    ),
    (
        "post",
        "/api/queues/{vhost}/{queue}/members",
        "Add a node to a quorum queue's members",
    ),
    (
        "delete",
        "/api/queues/{vhost}/{queue}/members/{node}",
        "Remove a node from a quorum queue's members",
    ),
    (
        "post",
        "/api/quorum/grow",
        "Add a node to every quorum queue (all, or those with an even member count)",
    ),
    (
        "post",
        "/api/quorum/shrink",
        "Remove a node from every quorum queue it is a member of",
    ),
    (
        "post",
        "/api/rebalance/queues",
        "Spread quorum queue leaders over the live nodes",
    ),
    ("get", "/api/bindings", "List bindings"),
    ("post", "/api/bindings", "Create a binding"),
    ("delete", "/api/bindings", "Delete a binding"),
    ("get", "/api/connections", "List connections"),
    ("delete", "/api/connections/{id}", "Close a connection"),
    ("get", "/api/channels", "List AMQP channels"),
    ("get", "/api/users", "List users (administrators)"),
    ("get", "/api/users/{name}", "Show a user"),
    (
        "put",
        "/api/users/{name}",
        "Add or change a user (administrators)",
    ),
    (
        "delete",
        "/api/users/{name}",
        "Delete a user (administrators)",
    ),
    (
        "get",
        "/api/users/{name}/permissions",
        "A user's AMQP permissions (administrators)",
    ),
    (
        "get",
        "/api/permissions",
        "List AMQP permissions (administrators)",
    ),
    (
        "get",
        "/api/vhosts/{vhost}/permissions",
        "AMQP permissions on a virtual host (administrators)",
    ),
    (
        "get",
        "/api/permissions/{vhost}/{user}",
        "A user's permissions on a virtual host (administrators)",
    ),
    (
        "put",
        "/api/permissions/{vhost}/{user}",
        "Set a user's configure, write and read expressions on a virtual host (administrators)",
    ),
    (
        "delete",
        "/api/permissions/{vhost}/{user}",
        "Clear a user's permissions on a virtual host (administrators)",
    ),
    (
        "get",
        "/api/topic-permissions",
        "List AMQP topic permissions (administrators)",
    ),
    (
        "get",
        "/api/topic-permissions/{vhost}/{user}",
        "A user's topic permissions on a virtual host (administrators)",
    ),
    (
        "put",
        "/api/topic-permissions/{vhost}/{user}",
        "Set a user's topic permission on an exchange (administrators)",
    ),
    (
        "delete",
        "/api/topic-permissions/{vhost}/{user}",
        "Clear a user's topic permissions on a virtual host (administrators)",
    ),
    ("get", "/api/vhost-limits", "List virtual host limits"),
    (
        "get",
        "/api/vhost-limits/{vhost}",
        "A virtual host's limits",
    ),
    (
        "put",
        "/api/vhost-limits/{vhost}/{name}",
        "Set a virtual host's max-connections or max-queues (administrators)",
    ),
    (
        "delete",
        "/api/vhost-limits/{vhost}/{name}",
        "Clear a virtual host limit (administrators)",
    ),
    ("get", "/api/user-limits", "List user limits"),
    ("get", "/api/user-limits/{user}", "A user's limits"),
    (
        "put",
        "/api/user-limits/{user}/{name}",
        "Set a user's max-connections or max-channels (administrators)",
    ),
    (
        "delete",
        "/api/user-limits/{user}/{name}",
        "Clear a user limit (administrators)",
    ),
];

/// The authenticated part of the API.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/overview", get(overview::show))
        .route("/api/overview/history", get(history::overview))
        .route("/api/cluster", get(cluster::show))
        .route("/api/cluster/elect-leaders", post(cluster::elect_leaders))
        .route("/api/cluster/reassign", post(cluster::reassign))
        .route(
            "/api/cluster/nodes/{id}/decommission",
            post(cluster::decommission),
        )
        .route("/api/topics", get(topics::list).post(topics::create))
        .route(
            "/api/topics/{topic}",
            get(topics::describe).delete(topics::delete),
        )
        .route("/api/topics/{topic}/configs", patch(topics::alter_configs))
        .route(
            "/api/topics/{topic}/partitions",
            post(topics::add_partitions),
        )
        .route("/api/topics/{topic}/groups", get(groups::of_topic))
        .route(
            "/api/topics/{topic}/partitions/{partition}/messages",
            get(messages::read),
        )
        .route(
            "/api/topics/{topic}/messages",
            get(search::search).post(messages::produce),
        )
        .route("/api/groups", get(groups::list))
        .route(
            "/api/groups/{group}",
            get(groups::describe).delete(groups::delete),
        )
        .route("/api/groups/{group}/lag-history", get(history::group_lag))
        .route(
            "/api/groups/{group}/reset-offsets",
            post(groups::reset_offsets),
        )
        .route("/api/vhosts", get(amqp::vhosts))
        .route("/api/exchanges", get(amqp::exchanges))
        .route(
            "/api/exchanges/{vhost}/{exchange}",
            get(amqp::exchange)
                .put(amqp::declare_exchange)
                .delete(amqp::delete_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{exchange}/publish",
            post(amqp::publish),
        )
        .route(
            "/api/exchanges/{vhost}/{exchange}/messages",
            post(amqp::publish_batch),
        )
        .route("/api/queues", get(amqp::queues))
        .route(
            "/api/queues/{vhost}/{queue}",
            get(amqp::queue)
                .put(amqp::declare_queue)
                .delete(amqp::delete_queue),
        )
        .route("/api/queues/{vhost}/{queue}/contents", delete(amqp::purge))
        .route("/api/queues/{vhost}/{queue}/messages", get(amqp::peek))
        .route("/api/queues/{vhost}/{queue}/get", post(amqp::get))
        .route(
            "/api/queues/{vhost}/{queue}/move",
            post(queue_move::move_messages),
        )
        .route(
            "/api/queues/{vhost}/{queue}/members",
            post(quorum::add_member),
        )
        .route(
            "/api/queues/{vhost}/{queue}/members/{node}",
            delete(quorum::delete_member),
        )
        .route("/api/quorum/grow", post(quorum::grow))
        .route("/api/quorum/shrink", post(quorum::shrink))
        .route("/api/rebalance/queues", post(quorum::rebalance))
        .route(
            "/api/bindings",
            get(amqp::bindings).post(amqp::bind).delete(amqp::unbind),
        )
        .route("/api/connections", get(connections::list))
        .route("/api/connections/{id}", delete(connections::close))
        .route("/api/channels", get(connections::channels))
        .route("/api/users", get(users::list))
        .route(
            "/api/users/{name}",
            get(users::show).put(users::put).delete(users::delete),
        )
        .route("/api/users/{name}/permissions", get(permissions::of_user))
        .route("/api/permissions", get(permissions::list))
        .route(
            "/api/vhosts/{vhost}/permissions",
            get(permissions::of_vhost),
        )
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permissions::show)
                .put(permissions::put)
                .delete(permissions::delete),
        )
        .route("/api/topic-permissions", get(permissions::topic_list))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(permissions::topic_show)
                .put(permissions::topic_put)
                .delete(permissions::topic_delete),
        )
        .route("/api/vhost-limits", get(limits::vhosts))
        .route("/api/vhost-limits/{vhost}", get(limits::of_vhost))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(limits::put_vhost).delete(limits::delete_vhost),
        )
        .route("/api/user-limits", get(limits::users))
        .route("/api/user-limits/{user}", get(limits::of_user))
        .route(
            "/api/user-limits/{user}/{name}",
            put(limits::put_user).delete(limits::delete_user),
        )
}

/// The routes without authentication (health checks for load balancers and
/// orchestrators, which hold no credentials).
pub(crate) fn public_routes() -> Router<AppState> {
    Router::new()
        .route("/api/health", get(health::live))
        .route("/api/health/ready", get(health::ready))
}

/// `?filter=&page=&page_size=` of every list.
#[derive(Debug, Deserialize)]
pub(crate) struct Paging {
    /// Lists of AMQP objects: only this virtual host.
    #[serde(default)]
    pub(crate) vhost: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    page_size: Option<usize>,
}

/// Largest page a list returns.
const MAX_PAGE_SIZE: usize = 1000;
const DEFAULT_PAGE_SIZE: usize = 100;

impl Paging {
    /// Filters `names` (keeping those containing the filter, ignoring
    /// case), sorts them and returns the page asked for with the total.
    pub(crate) fn apply<T>(
        &self,
        mut items: Vec<T>,
        name: impl Fn(&T) -> String,
    ) -> ApiResult<(Vec<T>, usize)> {
        let page = self.page.unwrap_or(1);
        if page == 0 {
            return Err(ApiError::field("page", "page counts from 1"));
        }
        let size = self.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(ApiError::field(
                "page_size",
                format!("page_size must be between 1 and {MAX_PAGE_SIZE}, got {size}"),
            ));
        }
        if let Some(filter) = self.filter.as_deref().filter(|f| !f.is_empty()) {
            let filter = filter.to_lowercase();
            items.retain(|item| name(item).to_lowercase().contains(&filter));
        }
        items.sort_by_key(|item| name(item));
        let total = items.len();
        let start = (page - 1).saturating_mul(size).min(total);
        let end = start.saturating_add(size).min(total);
        let page_items = items.into_iter().skip(start).take(end - start).collect();
        Ok((page_items, total))
    }

    /// The list answer around a page of items.
    pub(crate) fn answer(&self, items: Vec<Value>, total: usize) -> Value {
        json!({
            "items": items,
            "total": total,
            "page": self.page.unwrap_or(1),
            "page_size": self.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
        })
    }
}

/// How message contents travel in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    #[default]
    Text,
    Hex,
    Base64,
}

impl Encoding {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Encoding::Text => "text",
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        }
    }

    /// Bytes as this encoding's text.
    pub(crate) fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Text => String::from_utf8_lossy(bytes).into_owned(),
            Encoding::Hex => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// This encoding's text as bytes; `field` names the input in errors.
    pub(crate) fn decode(self, text: &str, field: &'static str) -> ApiResult<Vec<u8>> {
        match self {
            Encoding::Text => Ok(text.as_bytes().to_vec()),
            Encoding::Hex => {
                let digits = text.as_bytes();
                if !digits.len().is_multiple_of(2) {
                    return Err(ApiError::field(
                        field,
                        "hex text has an odd number of digits",
                    ));
                }
                digits
                    .chunks(2)
                    .map(|pair| {
                        std::str::from_utf8(pair)
                            .ok()
                            .and_then(|p| u8::from_str_radix(p, 16).ok())
                            .ok_or_else(|| ApiError::field(field, "not hex text"))
                    })
                    .collect()
            }
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|error| ApiError::field(field, format!("not base64: {error}"))),
        }
    }
}

/// Runs blocking core work (disk writes, syncs) off the async runtime.
pub(crate) async fn blocking<T, F>(work: F) -> ApiResult<T>
where
    F: FnOnce() -> ApiResult<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        ApiError::new(ErrorCode::Storage, format!("request task failed: {error}"))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() -> ApiResult<()> {
        let bytes = [0u8, 1, 0xfe, b'a'];
        for encoding in [Encoding::Hex, Encoding::Base64] {
            let text = encoding.encode(&bytes);
            assert_eq!(encoding.decode(&text, "value")?, bytes);
        }
        assert_eq!(Encoding::Hex.encode(&bytes), "0001fe61");
        assert_eq!(
            Encoding::Hex.decode("0g", "value").map_err(|e| e.field),
            Err(Some("value"))
        );
        Ok(())
    }

    #[test]
    fn paging_filters_sorts_and_cuts() -> ApiResult<()> {
        let paging = Paging {
            vhost: None,
            filter: Some("A".into()),
            page: Some(2),
            page_size: Some(2),
        };
        let names = vec!["ca", "ab", "b", "aa", "ba"];
        let (page, total) = paging.apply(names, |n| n.to_string())?;
        assert_eq!(total, 4);
        assert_eq!(page, vec!["ba", "ca"]);
        let bad = Paging {
            vhost: None,
            filter: None,
            page: Some(1),
            page_size: Some(0),
        };
        assert_eq!(
            bad.apply(vec!["x"], |n| n.to_string()).map_err(|e| e.field),
            Err(Some("page_size"))
        );
        Ok(())
    }
}
