//! `/api/permissions` and `/api/topic-permissions`: the users' AMQP
//! permissions per virtual host, as RabbitMQ's management API has them
//! (`rabbitmqctl set_permissions` and `set_topic_permissions`). Only
//! administrators may read or change them (the authentication layer's
//! rule, `auth::permitted`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::permissions::{TopicPermission, VhostPermission};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};

use super::blocking;

/// Every permission as RabbitMQ lists them, optionally of one user or one
/// virtual host.
fn permission_list(shared: &AppState, user: Option<&str>, vhost: Option<&str>) -> Vec<Value> {
    let (permissions, _) = shared.broker.permission_maps();
    permissions
        .iter()
        .filter(|(name, _)| user.is_none_or(|u| u == name.as_str()))
        .flat_map(|(name, vhosts)| {
            vhosts
                .iter()
                .filter(|(host, _)| vhost.is_none_or(|v| v == host.as_str()))
                .map(move |(host, p)| {
                    json!({
                        "user": name,
                        "vhost": host,
                        "configure": p.configure,
                        "write": p.write,
                        "read": p.read,
                    })
                })
        })
        .collect()
}

fn topic_permission_list(shared: &AppState, user: Option<&str>, vhost: Option<&str>) -> Vec<Value> {
    let (_, topics) = shared.broker.permission_maps();
    let mut listed = Vec::new();
    for (name, vhosts) in &topics {
        if user.is_some_and(|u| u != name) {
            continue;
        }
        for (host, exchanges) in vhosts {
            if vhost.is_some_and(|v| v != host) {
                continue;
            }
            for (exchange, p) in exchanges {
                listed.push(json!({
                    "user": name,
                    "vhost": host,
                    "exchange": exchange,
                    "write": p.write,
                    "read": p.read,
                }));
            }
        }
    }
    listed
}

pub(crate) async fn list(State(shared): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(permission_list(&shared, None, None))))
}

pub(crate) async fn of_user(
    State(shared): State<AppState>,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    if shared.broker.users().get(&user).is_none() {
        return Err(ApiError::not_found(format!("no user {user:?}")));
    }
    Ok(Json(Value::Array(permission_list(
        &shared,
        Some(&user),
        None,
    ))))
}

pub(crate) async fn of_vhost(
    State(shared): State<AppState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(permission_list(
        &shared,
        None,
        Some(&vhost),
    ))))
}

pub(crate) async fn show(
    State(shared): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    permission_list(&shared, Some(&user), Some(&vhost))
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "user {user:?} has no permissions on vhost {vhost:?}"
            ))
        })
}

// Other keys (rabbitmqadmin sends `vhost` and `user` too) are ignored,
// as RabbitMQ ignores them.
#[derive(Debug, Deserialize)]
pub(crate) struct PutPermission {
    configure: String,
    write: String,
    read: String,
}

/// Sets a user's permissions on a virtual host: `201` when new, `204`
/// when changed.
pub(crate) async fn put(
    State(shared): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
    Body(body): Body<PutPermission>,
) -> ApiResult<StatusCode> {
    let created = permission_list(&shared, Some(&user), Some(&vhost)).is_empty();
    let permission = VhostPermission {
        configure: body.configure,
        write: body.write,
        read: body.read,
    };
    let broker = std::sync::Arc::clone(&shared.broker);
    blocking(move || {
        broker
            .set_permission(&user, &vhost, Some(permission))
            .map_err(unknown_user_is_bad)
    })
    .await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

pub(crate) async fn delete(
    State(shared): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if permission_list(&shared, Some(&user), Some(&vhost)).is_empty() {
        return Err(ApiError::not_found(format!(
            "user {user:?} has no permissions on vhost {vhost:?}"
        )));
    }
    let broker = std::sync::Arc::clone(&shared.broker);
    blocking(move || Ok(broker.set_permission(&user, &vhost, None)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn topic_list(State(shared): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(topic_permission_list(
        &shared, None, None,
    ))))
}

pub(crate) async fn topic_show(
    State(shared): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(topic_permission_list(
        &shared,
        Some(&user),
        Some(&vhost),
    ))))
}

// Other keys (rabbitmqadmin sends `vhost` and `user` too) are ignored,
// as RabbitMQ ignores them.
#[derive(Debug, Deserialize)]
pub(crate) struct PutTopicPermission {
    exchange: String,
    write: String,
    read: String,
}

/// Sets a user's topic permission on one exchange of a virtual host.
pub(crate) async fn topic_put(
    State(shared): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
    Body(body): Body<PutTopicPermission>,
) -> ApiResult<StatusCode> {
    if body.exchange.is_empty() {
        return Err(ApiError::field("exchange", "the exchange is empty"));
    }
    let permission = TopicPermission {
        write: body.write,
        read: body.read,
    };
    let broker = std::sync::Arc::clone(&shared.broker);
    let created = !topic_permission_list(&shared, Some(&user), Some(&vhost))
        .iter()
        .any(|p| p["exchange"] == body.exchange.as_str());
    blocking(move || {
        broker
            .set_topic_permission(&user, &vhost, &body.exchange, Some(permission))
            .map_err(unknown_user_is_bad)
    })
    .await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// Clears every topic permission of a user on a virtual host.
pub(crate) async fn topic_delete(
    State(shared): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let exchanges: Vec<String> = topic_permission_list(&shared, Some(&user), Some(&vhost))
        .iter()
        .filter_map(|p| p["exchange"].as_str().map(str::to_owned))
        .collect();
    if exchanges.is_empty() {
        return Err(ApiError::not_found(format!(
            "user {user:?} has no topic permissions on vhost {vhost:?}"
        )));
    }
    let broker = std::sync::Arc::clone(&shared.broker);
    blocking(move || {
        for exchange in &exchanges {
            broker.set_topic_permission(&user, &vhost, exchange, None)?;
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// RabbitMQ answers a permission for an unknown user with 400
/// (`vhost_or_user_not_found`), not 404.
fn unknown_user_is_bad(error: sluice_core::CoreError) -> ApiError {
    match error {
        sluice_core::CoreError::UnknownUser { name } => {
            ApiError::bad_request(format!("no user {name:?}"))
        }
        other => other.into(),
    }
}
