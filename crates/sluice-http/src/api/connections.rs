//! `/api/connections` and `/api/channels`: who is connected over which
//! protocol, what they move, and closing a connection with a reason.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Paging;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};

pub(crate) async fn list(
    State(shared): State<AppState>,
    Query(paging): Query<Paging>,
) -> ApiResult<Json<Value>> {
    let all = shared.broker.connections().list();
    let (page, total) = paging.apply(all, |c| {
        let details = c.details();
        format!(
            "{} {} {} {:020}",
            c.peer(),
            details.client_name.unwrap_or_default(),
            details.user.unwrap_or_default(),
            c.id()
        )
    })?;
    let items = page
        .iter()
        .map(|connection| {
            let details = connection.details();
            let rates = shared.rates.connection(connection.id());
            json!({
                "id": connection.id(),
                "protocol": connection.protocol().as_str(),
                "peer": connection.peer().to_string(),
                "user": details.user,
                "client_name": details.client_name,
                "vhost": details.vhost,
                "protocol_version": details.protocol_version,
                "subscriptions": details.subscriptions,
                "connected_at": connection.connected_at_ms(),
                "channels": connection.channel_count(),
                "bytes_in": connection.bytes_in.load(Ordering::Relaxed),
                "bytes_out": connection.bytes_out.load(Ordering::Relaxed),
                "recv_rate": rates[0],
                "send_rate": rates[1],
            })
        })
        .collect();
    Ok(Json(paging.answer(items, total)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct CloseQuery {
    reason: Option<String>,
}

pub(crate) async fn close(
    State(shared): State<AppState>,
    Path(id): Path<u64>,
    Query(query): Query<CloseQuery>,
) -> ApiResult<StatusCode> {
    let connection = shared
        .broker
        .connections()
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no connection {id}")))?;
    let reason = query
        .reason
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "closed through the admin API".to_owned());
    if reason.len() > 200 {
        return Err(ApiError::field("reason", "reason is at most 200 bytes"));
    }
    connection.request_close(reason);
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn channels(
    State(shared): State<AppState>,
    Query(paging): Query<Paging>,
) -> ApiResult<Json<Value>> {
    let mut all = Vec::new();
    for connection in shared.broker.connections().list() {
        for (number, stats) in connection.channels() {
            all.push((connection.id(), number, stats));
        }
    }
    let (page, total) = paging.apply(all, |(id, number, _)| format!("{id:020}:{number:05}"))?;
    let items = page
        .iter()
        .map(|(id, number, stats)| {
            json!({
                "connection": id,
                "number": number,
                "consumers": stats.consumers.load(Ordering::Relaxed),
                "prefetch": stats.prefetch.load(Ordering::Relaxed),
                "unacked": stats.unacked.load(Ordering::Relaxed),
                "confirm": stats.confirm.load(Ordering::Relaxed),
                "transactional": stats.transactional.load(Ordering::Relaxed),
            })
        })
        .collect();
    Ok(Json(paging.answer(items, total)))
}
