//! `GET /api/health` (liveness) and `GET /api/health/ready` (readiness),
//! without authentication, for load balancers, orchestrators and
//! `sluice status`.
//!
//! The node opens its HTTP listener only after the broker has recovered its
//! logs and queues and the Kafka and AMQP listeners are bound, so a node
//! that answers here has done both; what remains to check is the alarms,
//! which block publishers while they last.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;

/// Liveness: the process answers. Always `200 {"status": "ok"}`.
pub(crate) async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: `200` with `status` `ready`, or `503` with `not_ready` and a
/// `reasons` line per failed check.
pub(crate) async fn ready(State(shared): State<AppState>) -> (StatusCode, Json<Value>) {
    let monitor = shared.broker.vhosts().memory();
    let (memory, disk) = (monitor.memory_alarm(), monitor.disk_alarm());
    let mut reasons = Vec::new();
    if memory {
        reasons.push(
            "memory alarm: queued messages are over amqp.memory_high_watermark; publishers are blocked",
        );
    }
    if disk {
        reasons.push(
            "disk alarm: free disk space is under amqp.disk_free_limit; publishers are blocked",
        );
    }
    let listeners = super::overview::listeners(&shared);
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if reasons.is_empty() { "ready" } else { "not_ready" },
            "reasons": reasons,
            "checks": {
                "recovery": true,
                "listeners": listeners,
                "memory_alarm": memory,
                "disk_alarm": disk,
            },
        })),
    )
}
