//! `/api/users`: the broker's users (RabbitMQ's `/api/users`): listed with
//! their tags and the SCRAM mechanisms they hold credentials for, never a
//! password or a key; added, changed and deleted by administrators only
//! (the authentication layer's rule, `auth::permitted`, which also lets a
//! user read themselves).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::UserRecord;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};

/// What the API shows of a user.
fn describe(name: &str, user: &UserRecord) -> Value {
    json!({
        "name": name,
        "tags": user.tags,
        "loopback_only": user.loopback_only,
        "mechanisms": user.scram.keys().map(|m| m.name()).collect::<Vec<_>>(),
    })
}

pub(crate) async fn list(State(shared): State<AppState>) -> ApiResult<Json<Value>> {
    let users = shared.broker.users().list();
    Ok(Json(Value::Array(
        users
            .iter()
            .map(|(name, user)| describe(name, user))
            .collect(),
    )))
}

pub(crate) async fn show(
    State(shared): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = shared
        .broker
        .users()
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no user {name:?}")))?;
    Ok(Json(describe(&name, &user)))
}

/// Tags as RabbitMQ takes them: a comma-separated string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Tags {
    Text(String),
    List(Vec<String>),
}

impl Tags {
    fn into_list(self) -> Vec<String> {
        let list = match self {
            Tags::Text(text) => text.split(',').map(str::to_owned).collect(),
            Tags::List(list) => list,
        };
        let mut tags: Vec<String> = list
            .into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutUser {
    /// The new password; may be left out when changing only the tags of
    /// an existing user.
    password: Option<String>,
    tags: Option<Tags>,
    loopback_only: Option<bool>,
}

/// Adds a user or changes one: `201` when added, `204` when changed.
pub(crate) async fn put(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<PutUser>,
) -> ApiResult<StatusCode> {
    let existing = shared.broker.users().get(&name);
    if body.password.as_deref().is_some_and(str::is_empty) {
        return Err(ApiError::field("password", "the password is empty"));
    }
    let tags = body.tags.map(Tags::into_list);
    let created = existing.is_none();
    let user = match (existing, body.password) {
        (Some(mut user), None) => {
            if let Some(tags) = tags {
                user.tags = tags;
            }
            if let Some(loopback_only) = body.loopback_only {
                user.loopback_only = loopback_only;
            }
            user
        }
        (existing, Some(password)) => {
            let tags = tags
                .or_else(|| existing.as_ref().map(|u| u.tags.clone()))
                .unwrap_or_default();
            let loopback_only = body
                .loopback_only
                .or_else(|| existing.as_ref().map(|u| u.loopback_only))
                .unwrap_or(false);
            // PBKDF2 is slow on purpose: off the async threads.
            tokio::task::spawn_blocking(move || {
                UserRecord::with_password(&password, tags, loopback_only)
            })
            .await
            .map_err(|_| ApiError::bad_request("hashing the password failed"))?
        }
        (None, None) => {
            return Err(ApiError::field("password", "a new user needs a password"));
        }
    };
    let broker = std::sync::Arc::clone(&shared.broker);
    // A new user only if still new: of two creations at once, the second
    // gets 409 rather than replacing the first.
    tokio::task::spawn_blocking(move || broker.put_user(&name, user, created))
        .await
        .map_err(|_| ApiError::bad_request("changing the user failed"))??;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

pub(crate) async fn delete(
    State(shared): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let broker = std::sync::Arc::clone(&shared.broker);
    tokio::task::spawn_blocking(move || broker.delete_user(&name))
        .await
        .map_err(|_| ApiError::bad_request("deleting the user failed"))??;
    Ok(StatusCode::NO_CONTENT)
}
