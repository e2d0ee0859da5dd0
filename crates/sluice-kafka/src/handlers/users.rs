//! DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554):
//! the broker's users as Kafka's admin tools see them. The client sends a
//! salted password, never the password; the broker keeps the stored and
//! server keys derived from it, as a metadata command that reaches every
//! node. Only administrators (users tagged `administrator`) logged in on
//! a SASL listener may use them: these users also log in to the admin API
//! and AMQP, so an unauthenticated listener (Kafka without an authorizer
//! would allow it) may not change or list them.

use std::collections::BTreeSet;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::{MAX_ITERATIONS, MIN_ITERATIONS, ScramCredential, ScramMechanism};

use super::{Context, blocking};

/// Whether the connection may manage users: an administrator logged in
/// on a SASL listener; nobody else (a certificate's name is no login).
fn allowed(context: &Context) -> bool {
    if !context.sasl_gated() {
        return false;
    }
    context
        .user()
        .and_then(|name| context.broker.users().get(&name))
        .is_some_and(|user| user.has_tag("administrator"))
}

fn message(text: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(text.into()))
}

pub(crate) fn describe(
    context: &Context,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let response = DescribeUserScramCredentialsResponse::default();
    if !allowed(context) {
        // No message at this level: Kafka sends none, and librdkafka 2.16
        // mishandles one here (it crashes the client).
        return response
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(None);
    }
    let users = context.broker.users().list();
    let asked: Vec<String> = match request.users {
        Some(names) if !names.is_empty() => names.into_iter().map(|u| u.name.to_string()).collect(),
        // Null or empty: every user with a credential.
        _ => users
            .iter()
            .filter(|(_, user)| !user.scram.is_empty())
            .map(|(name, _)| name.clone())
            .collect(),
    };
    let mut seen = BTreeSet::new();
    let duplicated: BTreeSet<&String> = asked.iter().filter(|n| !seen.insert(*n)).collect();
    let mut answered = BTreeSet::new();
    let results = asked
        .iter()
        .filter(|name| answered.insert(*name))
        .map(|name| {
            let result = DescribeUserScramCredentialsResult::default()
                .with_user(StrBytes::from_string(name.clone()));
            if duplicated.contains(name) {
                return result
                    .with_error_code(ResponseError::DuplicateResource.code())
                    .with_error_message(message(format!("user {name} is named twice")));
            }
            match users.get(name).filter(|u| !u.scram.is_empty()) {
                None => result
                    .with_error_code(ResponseError::ResourceNotFound.code())
                    .with_error_message(message(format!(
                        "Attempt to describe a user credential that does not exist: {name}"
                    ))),
                Some(user) => result.with_credential_infos(
                    user.scram
                        .iter()
                        .map(|(mechanism, credential)| {
                            CredentialInfo::default()
                                .with_mechanism(mechanism.kafka_type())
                                .with_iterations(
                                    i32::try_from(credential.iterations).unwrap_or(i32::MAX),
                                )
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    response.with_results(results)
}

/// One change the request asks for, checked.
struct Change {
    user: String,
    mechanism: ScramMechanism,
    credential: Option<(Vec<u8>, Vec<u8>, u32)>,
}

pub(crate) async fn alter(
    context: &Context,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut names: Vec<String> = request
        .deletions
        .iter()
        .map(|d| d.name.to_string())
        .chain(request.upsertions.iter().map(|u| u.name.to_string()))
        .collect();
    names.sort();
    names.dedup();
    let result = |user: &str, error: ResponseError, text: String| {
        AlterUserScramCredentialsResult::default()
            .with_user(StrBytes::from_string(user.to_owned()))
            .with_error_code(error.code())
            .with_error_message(message(text))
    };
    if !allowed(context) {
        return AlterUserScramCredentialsResponse::default().with_results(
            names
                .iter()
                .map(|name| {
                    result(
                        name,
                        ResponseError::ClusterAuthorizationFailed,
                        "only administrators logged in on a SASL listener may change users"
                            .to_owned(),
                    )
                })
                .collect(),
        );
    }
    // Each (user, mechanism) at most once in the whole request.
    let mut pairs = BTreeSet::new();
    let mut duplicated = BTreeSet::new();
    for (name, mechanism) in request
        .deletions
        .iter()
        .map(|d| (d.name.to_string(), d.mechanism))
        .chain(
            request
                .upsertions
                .iter()
                .map(|u| (u.name.to_string(), u.mechanism)),
        )
    {
        if !pairs.insert((name.clone(), mechanism)) {
            duplicated.insert(name);
        }
    }
    let mut refused: std::collections::BTreeMap<String, (ResponseError, String)> =
        std::collections::BTreeMap::new();
    let mut changes = Vec::new();
    for deletion in &request.deletions {
        let user = deletion.name.to_string();
        match ScramMechanism::from_kafka_type(deletion.mechanism) {
            Some(mechanism) => changes.push(Change {
                user,
                mechanism,
                credential: None,
            }),
            None => {
                refused.entry(user).or_insert((
                    ResponseError::UnsupportedSaslMechanism,
                    format!("unknown SCRAM mechanism {}", deletion.mechanism),
                ));
            }
        }
    }
    for upsertion in &request.upsertions {
        let user = upsertion.name.to_string();
        let mechanism = ScramMechanism::from_kafka_type(upsertion.mechanism);
        let iterations = u32::try_from(upsertion.iterations).unwrap_or(0);
        let problem = if mechanism.is_none() {
            Some((
                ResponseError::UnsupportedSaslMechanism,
                format!("unknown SCRAM mechanism {}", upsertion.mechanism),
            ))
        } else if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            Some((
                ResponseError::UnacceptableCredential,
                format!(
                    "iterations must be {MIN_ITERATIONS} to {MAX_ITERATIONS}, got {}",
                    upsertion.iterations
                ),
            ))
        } else if user.is_empty() || !sluice_core::valid_user_name(&user) {
            Some((
                ResponseError::UnacceptableCredential,
                "the user name is empty or has ':' or control characters".to_owned(),
            ))
        } else if upsertion.salt.is_empty() || upsertion.salted_password.is_empty() {
            Some((
                ResponseError::UnacceptableCredential,
                "the salt and the salted password may not be empty".to_owned(),
            ))
        } else {
            None
        };
        match (problem, mechanism) {
            (Some(problem), _) => {
                refused.entry(user).or_insert(problem);
            }
            (None, Some(mechanism)) => changes.push(Change {
                user,
                mechanism,
                credential: Some((
                    upsertion.salted_password.to_vec(),
                    upsertion.salt.to_vec(),
                    iterations,
                )),
            }),
            (None, None) => {}
        }
    }
    for name in &duplicated {
        refused.insert(
            name.clone(),
            (
                ResponseError::DuplicateResource,
                format!("a credential of {name} is changed twice in one request"),
            ),
        );
    }
    // A user with any refused change has none of its changes made.
    let changes: Vec<Change> = changes
        .into_iter()
        .filter(|c| !refused.contains_key(&c.user))
        .collect();
    let broker = Arc::clone(&context.broker);
    let users_changed: Vec<String> = changes.iter().map(|c| c.user.clone()).collect();
    let outcomes = blocking(move || {
        // A user's changes stop at the first that fails.
        let mut failed: BTreeSet<String> = BTreeSet::new();
        changes
            .into_iter()
            .filter_map(|change| {
                if failed.contains(&change.user) {
                    return None;
                }
                let credential = change.credential.map(|(salted, salt, iterations)| {
                    ScramCredential::from_salted_password(
                        change.mechanism,
                        &salted,
                        salt,
                        iterations,
                    )
                });
                let outcome =
                    broker.set_scram_credential(&change.user, change.mechanism, credential);
                if outcome.is_err() {
                    failed.insert(change.user.clone());
                }
                Some((change.user, outcome))
            })
            .collect::<Vec<_>>()
    })
    .await;
    match outcomes {
        Some(outcomes) => {
            for (user, outcome) in outcomes {
                if let Err(error) = outcome {
                    refused
                        .entry(user)
                        .or_insert((crate::errors::code(&error), error.to_string()));
                }
            }
        }
        None => {
            // The work did not finish: nothing may be reported done.
            for user in users_changed {
                refused.entry(user).or_insert((
                    ResponseError::UnknownServerError,
                    "the change could not be completed".to_owned(),
                ));
            }
        }
    }
    AlterUserScramCredentialsResponse::default().with_results(
        names
            .iter()
            .map(|name| match refused.get(name) {
                Some((error, text)) => result(name, *error, text.clone()),
                None => AlterUserScramCredentialsResult::default()
                    .with_user(StrBytes::from_string(name.clone())),
            })
            .collect(),
    )
}
