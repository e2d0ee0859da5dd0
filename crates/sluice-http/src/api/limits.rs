//! `/api/vhost-limits` and `/api/user-limits`: RabbitMQ's virtual host
//! limits (`max-connections`, `max-queues`) and user limits
//! (`max-connections`, `max-channels`), as its management API and
//! `rabbitmqctl set_vhost_limits` / `set_user_limits` have them. Anyone
//! with a management tag may read them; only administrators change them
//! (`auth::permitted`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::limits::{LimitMap, LimitScope};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};

use super::blocking;

/// `[{"vhost"|"user": key, "value": {name: value}}]`, of one key or all.
fn listed(map: &LimitMap, field: &str, only: Option<&str>) -> Value {
    Value::Array(
        map.iter()
            .filter(|(key, _)| only.is_none_or(|o| o == key.as_str()))
            .map(|(key, limits)| json!({ field: key, "value": limits }))
            .collect(),
    )
}

pub(crate) async fn vhosts(State(shared): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(listed(
        &shared.broker.limits().vhost_map(),
        "vhost",
        None,
    )))
}

pub(crate) async fn of_vhost(
    State(shared): State<AppState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    if shared.broker.vhosts().get(&vhost).is_none() {
        return Err(ApiError::not_found(format!("no virtual host {vhost:?}")));
    }
    Ok(Json(listed(
        &shared.broker.limits().vhost_map(),
        "vhost",
        Some(&vhost),
    )))
}

pub(crate) async fn users(State(shared): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(listed(
        &shared.broker.limits().user_map(),
        "user",
        None,
    )))
}

pub(crate) async fn of_user(
    State(shared): State<AppState>,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    if shared.broker.users().get(&user).is_none() {
        return Err(ApiError::not_found(format!("no user {user:?}")));
    }
    Ok(Json(listed(
        &shared.broker.limits().user_map(),
        "user",
        Some(&user),
    )))
}

/// A limit's value; RabbitMQ's API sends `{"value": N}`, a negative `N`
/// meaning no limit.
#[derive(Debug, Deserialize)]
pub(crate) struct PutLimit {
    value: i64,
}

pub(crate) async fn put_vhost(
    State(shared): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
    Body(body): Body<PutLimit>,
) -> ApiResult<StatusCode> {
    change(&shared, LimitScope::Vhost(vhost), name, Some(body.value)).await
}

pub(crate) async fn delete_vhost(
    State(shared): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    change(&shared, LimitScope::Vhost(vhost), name, None).await
}

pub(crate) async fn put_user(
    State(shared): State<AppState>,
    Path((user, name)): Path<(String, String)>,
    Body(body): Body<PutLimit>,
) -> ApiResult<StatusCode> {
    change(&shared, LimitScope::User(user), name, Some(body.value)).await
}

pub(crate) async fn delete_user(
    State(shared): State<AppState>,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    change(&shared, LimitScope::User(user), name, None).await
}

async fn change(
    shared: &AppState,
    scope: LimitScope,
    name: String,
    value: Option<i64>,
) -> ApiResult<StatusCode> {
    let broker = std::sync::Arc::clone(&shared.broker);
    blocking(move || {
        broker
            .set_limit(scope, &name, value)
            .map_err(|error| match error {
                sluice_core::CoreError::UnknownUser { name } => {
                    ApiError::bad_request(format!("no user {name:?}"))
                }
                sluice_core::CoreError::InvalidConfig { key, reason } if key == "vhost" => {
                    ApiError::not_found(reason)
                }
                sluice_core::CoreError::InvalidConfig { reason, .. } => {
                    ApiError::bad_request(reason)
                }
                other => other.into(),
            })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
