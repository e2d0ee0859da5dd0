//! HTTP basic authentication with the broker's users. Users limited to
//! loopback (guest by default) are accepted only from a loopback peer.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::AppState;
use crate::error::{ApiError, ErrorCode};

/// The header the web UI sends so that a refusal does not make the browser
/// open its own login dialog.
const UI_CLIENT_HEADER: &str = "x-sluice-client";

/// Lets the request through when it carries a known user's credentials.
pub(crate) async fn require_user(
    State(shared): State<AppState>,
    ConnectInfo(crate::PeerAddr(peer)): ConnectInfo<crate::PeerAddr>,
    request: Request,
    next: Next,
) -> Response {
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(basic_credentials);
    let principal = match credentials.clone() {
        Some((name, password)) => {
            shared
                .broker
                .users()
                .authenticate_async(name, password, peer.ip())
                .await
        }
        None => None,
    };
    if let Some(principal) = principal {
        if let Err(reason) = permitted(&principal, request.method(), request.uri().path()) {
            return ApiError::new(ErrorCode::Forbidden, reason).into_response();
        }
        return next.run(request).await;
    }
    let from_ui = request.headers().contains_key(UI_CLIENT_HEADER);
    if let Some((user, _)) = &credentials {
        // A request without credentials is the usual first step of a
        // browser or client; wrong ones are worth an operator's look, and
        // a wait.
        shared
            .broker
            .users()
            .login_refused(peer.ip(), user, "http basic")
            .await;
    }
    let message = if credentials.is_some() {
        "wrong user name or password, or the user may log in only from loopback"
    } else {
        "log in with HTTP basic authentication as a broker user"
    };
    let mut response = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    if !from_ui {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"sluice\""),
        );
    }
    response
}

/// The tags that open the API, as RabbitMQ's management plugin has them.
const MANAGEMENT_TAGS: [&str; 4] = ["administrator", "monitoring", "management", "policymaker"];

/// What a user's tags let them do through the API, as RabbitMQ's
/// management tags do: a user with none of [`MANAGEMENT_TAGS`] (an
/// application's user, say) may not use it at all; `management`,
/// `policymaker` and `monitoring` users read everything and manage topics,
/// groups, queues, exchanges, bindings and messages; only administrators
/// manage users, close connections and run cluster operations (leader
/// elections, reassignments, quorum changes and quorum-queue members,
/// decommissioning).
fn permitted(
    principal: &sluice_core::Principal,
    method: &axum::http::Method,
    path: &str,
) -> Result<(), String> {
    if principal.has_tag("administrator") {
        return Ok(());
    }
    if !MANAGEMENT_TAGS.iter().any(|tag| principal.has_tag(tag)) {
        return Err(format!(
            "user {:?} may not use the admin API: give them a tag (administrator, monitoring, management or policymaker)",
            principal.name
        ));
    }
    let reading = matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD);
    let own_user = format!("/api/users/{}", principal.name);
    let administrative = path.starts_with("/api/users")
        || path.starts_with("/api/permissions")
        || path.starts_with("/api/topic-permissions")
        || (!reading
            && (path.starts_with("/api/user-limits") || path.starts_with("/api/vhost-limits")))
        || (path.starts_with("/api/vhosts/") && path.ends_with("/permissions"))
        || (!reading && path.starts_with("/api/queues/") && path.contains("/members"))
        || (!reading
            && [
                "/api/cluster",
                "/api/quorum",
                "/api/rebalance",
                "/api/connections",
            ]
            .iter()
            .any(|prefix| path.starts_with(prefix)));
    if administrative && !(reading && path == own_user) {
        return Err(format!(
            "user {:?} is not an administrator (tag 'administrator')",
            principal.name
        ));
    }
    Ok(())
}

/// `Basic base64(user:password)` as `(user, password)`.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        assert_eq!(
            basic_credentials("Basic Z3Vlc3Q6Z3Vlc3Q="),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(
            basic_credentials("basic YTpiOmM="),
            Some(("a".into(), "b:c".into()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        assert_eq!(basic_credentials("Basic bm9jb2xvbg=="), None);
    }
}
