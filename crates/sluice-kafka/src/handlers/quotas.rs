//! DescribeClientQuotas and AlterClientQuotas (KIP-546): the client
//! quotas of users and client ids, kept as metadata
//! (`sluice_core::quotas`). Describing needs DESCRIBE_CONFIGS on the
//! cluster, altering ALTER_CONFIGS, as in Kafka. IP quotas
//! (`connection_creation_rate`) are not kept: an entity naming an `ip` is
//! refused.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse, alter_client_quotas_response, describe_client_quotas_response,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::Operation;
use sluice_core::quotas::{EntityName, QuotaEntity};

use super::{Context, blocking};

const USER: &str = "user";
const CLIENT_ID: &str = "client-id";
const IP: &str = "ip";

fn text(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// The entity's parts as Kafka names them.
fn parts(entity: &QuotaEntity) -> Vec<(&'static str, Option<&str>)> {
    [
        (USER, entity.user.as_ref()),
        (CLIENT_ID, entity.client_id.as_ref()),
    ]
    .into_iter()
    .filter_map(|(kind, name)| Some((kind, name?.as_wire())))
    .collect()
}

/// What a filter asks for: each entity type's exact name (`Some(None)`
/// for the default), or just the type.
struct Filter {
    exact: Vec<(String, Option<String>)>,
    typed: Vec<String>,
    strict: bool,
}

fn filter(request: &DescribeClientQuotasRequest) -> Result<Filter, (ResponseError, String)> {
    let invalid = |message: String| (ResponseError::InvalidRequest, message);
    let mut filter = Filter {
        exact: Vec::new(),
        typed: Vec::new(),
        strict: request.strict,
    };
    for component in &request.components {
        let kind = component.entity_type.to_string();
        if kind.is_empty() {
            return Err(invalid("Invalid empty entity type.".to_owned()));
        }
        if filter.exact.iter().any(|(k, _)| *k == kind) || filter.typed.contains(&kind) {
            return Err(invalid(format!(
                "Entity type {kind} cannot appear more than once in the filter."
            )));
        }
        if ![USER, CLIENT_ID, IP].contains(&kind.as_str()) {
            return Err((
                ResponseError::UnsupportedVersion,
                format!("Unsupported entity type {kind}"),
            ));
        }
        let name = component._match.as_ref().map(ToString::to_string);
        match component.match_type {
            0 => {
                let Some(name) = name else {
                    return Err(invalid(
                        "Request specified MATCH_TYPE_EXACT, but set match string to null."
                            .to_owned(),
                    ));
                };
                filter.exact.push((kind, Some(name)));
            }
            1 | 2 if name.is_some() => {
                return Err(invalid(
                    "Request specified MATCH_TYPE_DEFAULT or MATCH_TYPE_SPECIFIED, but also specified a match string."
                        .to_owned(),
                ));
            }
            1 => filter.exact.push((kind, None)),
            2 => filter.typed.push(kind),
            other => return Err(invalid(format!("Unknown match type {other}"))),
        }
    }
    Ok(filter)
}

impl Filter {
    fn matches(&self, entity: &QuotaEntity) -> bool {
        let parts = parts(entity);
        if self.strict && parts.len() != self.exact.len() + self.typed.len() {
            return false;
        }
        let name_of = |kind: &str| parts.iter().find(|(k, _)| *k == kind).map(|(_, n)| *n);
        self.exact
            .iter()
            .all(|(kind, name)| name_of(kind).is_some_and(|n| n == name.as_deref()))
            && self.typed.iter().all(|kind| name_of(kind).is_some())
    }
}

pub(crate) fn describe(
    context: &Context,
    request: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    let response = DescribeClientQuotasResponse::default().with_error_message(None);
    if !context.allowed_on_cluster(Operation::DescribeConfigs) {
        return response
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_entries(None);
    }
    let filter = match filter(&request) {
        Ok(filter) => filter,
        Err((error, message)) => {
            return response
                .with_error_code(error.code())
                .with_error_message(Some(text(message)))
                .with_entries(None);
        }
    };
    let entries = context
        .broker
        .client_quotas()
        .all()
        .into_iter()
        .filter(|(entity, _)| filter.matches(entity))
        .map(|(entity, values)| {
            describe_client_quotas_response::EntryData::default()
                .with_entity(
                    parts(&entity)
                        .into_iter()
                        .map(|(kind, name)| {
                            describe_client_quotas_response::EntityData::default()
                                .with_entity_type(text(kind))
                                .with_entity_name(name.map(text))
                        })
                        .collect(),
                )
                .with_values(
                    values
                        .into_iter()
                        .map(|(key, value)| {
                            describe_client_quotas_response::ValueData::default()
                                .with_key(text(key))
                                .with_value(value)
                        })
                        .collect(),
                )
        })
        .collect();
    response.with_entries(Some(entries))
}

/// One entry's entity, as Sluice keeps quotas of it; Kafka's refusals
/// (an empty name, a type twice).
fn entity_of(
    entity: &[kafka_protocol::messages::alter_client_quotas_request::EntityData],
) -> Result<QuotaEntity, String> {
    let mut quota = QuotaEntity {
        user: None,
        client_id: None,
    };
    if entity.is_empty() {
        return Err("Invalid empty client quota entity".to_owned());
    }
    for part in entity {
        let name = match &part.entity_name {
            Some(name) if name.is_empty() => {
                return Err(format!("Empty {} not supported", part.entity_type.as_str()));
            }
            Some(name) => EntityName::Named(name.to_string()),
            None => EntityName::Default,
        };
        let slot = match part.entity_type.as_str() {
            USER => &mut quota.user,
            CLIENT_ID => &mut quota.client_id,
            IP => {
                return Err(
                    "ip quotas (connection_creation_rate) are not supported by Sluice".to_owned(),
                );
            }
            other => return Err(format!("Unhandled client quota entity type: {other}")),
        };
        if slot.replace(name).is_some() {
            return Err(format!(
                "Duplicate {} entity in the client quota entity",
                part.entity_type.as_str()
            ));
        }
    }
    Ok(quota)
}

pub(crate) async fn alter(
    context: &Context,
    request: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    let allowed = context.allowed_on_cluster(Operation::AlterConfigs);
    let mut entries = Vec::with_capacity(request.entries.len());
    for entry in request.entries {
        let answer = alter_client_quotas_response::EntryData::default()
            .with_entity(
                entry
                    .entity
                    .iter()
                    .map(|part| {
                        alter_client_quotas_response::EntityData::default()
                            .with_entity_type(part.entity_type.clone())
                            .with_entity_name(part.entity_name.clone())
                    })
                    .collect(),
            )
            .with_error_message(None);
        let outcome = if allowed {
            alter_one(context, &entry, request.validate_only).await
        } else {
            Err((ResponseError::ClusterAuthorizationFailed, None))
        };
        entries.push(match outcome {
            Ok(()) => answer,
            Err((error, message)) => answer
                .with_error_code(error.code())
                .with_error_message(message.map(text)),
        });
    }
    AlterClientQuotasResponse::default().with_entries(entries)
}

async fn alter_one(
    context: &Context,
    entry: &kafka_protocol::messages::alter_client_quotas_request::EntryData,
    validate_only: bool,
) -> Result<(), (ResponseError, Option<String>)> {
    let invalid = |message: String| (ResponseError::InvalidRequest, Some(message));
    let entity = entity_of(&entry.entity).map_err(invalid)?;
    let mut changes: Vec<(String, Option<f64>)> = Vec::with_capacity(entry.ops.len());
    for op in &entry.ops {
        let key = op.key.to_string();
        if changes.iter().any(|(k, _)| *k == key) {
            return Err(invalid(format!("Duplicate quota key {key}")));
        }
        let value = (!op.remove).then_some(op.value);
        // A removal is not checked, as in Kafka.
        if let Some(value) = value {
            sluice_core::quotas::validate(&key, value).map_err(invalid)?;
        }
        changes.push((key, value));
    }
    if validate_only || changes.is_empty() {
        return Ok(());
    }
    let broker = std::sync::Arc::clone(&context.broker);
    let Some(outcome) = blocking(move || broker.alter_client_quota(entity, changes)).await else {
        return Err((ResponseError::UnknownServerError, None));
    };
    outcome.map_err(|error| match error {
        sluice_core::CoreError::InvalidConfig { reason, .. } => invalid(reason),
        other => (crate::errors::code(&other), Some(other.to_string())),
    })
}

/// What a fetch's quotas make of its answer.
pub(crate) enum FetchThrottle {
    /// Within them: sent as it is.
    None,
    /// Sent, with this throttle time (an answer larger than the windows
    /// allow, let through when they were empty).
    Sent(std::time::Duration),
    /// Over one: an empty answer with this throttle time.
    Empty(std::time::Duration),
}

/// Longest throttle for a byte rate: the whole quota window (11 s).
const BYTE_THROTTLE_CAP: std::time::Duration = std::time::Duration::from_secs(11);
/// Longest throttle for request time: one window, as Kafka's request
/// quota caps it.
const REQUEST_THROTTLE_CAP: std::time::Duration = std::time::Duration::from_secs(1);

impl Context {
    /// Whether this connection's requests are measured against quotas:
    /// a client's (not another node's), once any quota is set.
    fn quotas_apply(&self) -> bool {
        !self.inter_node && self.broker.client_quotas().any()
    }

    /// The user a quota is looked up for: Kafka's principal name
    /// (`ANONYMOUS` for a client that is nobody).
    fn quota_user(&self) -> String {
        self.user().unwrap_or_else(|| "ANONYMOUS".to_owned())
    }

    /// Records a produce request of `bytes` and the time it took to
    /// write, against the producer byte rate and request quotas; the
    /// throttle it costs, and the connection is muted that long.
    pub(crate) fn produce_throttle(
        &self,
        client_id: &str,
        bytes: usize,
        took: std::time::Duration,
    ) -> std::time::Duration {
        if !self.quotas_apply() {
            return std::time::Duration::ZERO;
        }
        let user = self.quota_user();
        let quotas = self.broker.client_quotas();
        let bytes = quotas
            .record(
                sluice_core::quotas::PRODUCER_BYTE_RATE,
                &user,
                client_id,
                bytes as f64,
                BYTE_THROTTLE_CAP,
            )
            .time;
        let time = bytes.max(self.request_throttle(&user, client_id, took));
        self.mute(time);
        time
    }

    /// The most a fetch may answer with under the client's consumer byte
    /// rate: what its windows let through (Kafka's
    /// `getMaxValueInQuotaWindow`); `None` without such a quota.
    pub(crate) fn fetch_bytes_cap(&self, client_id: &str) -> Option<i32> {
        if !self.quotas_apply() {
            return None;
        }
        let (quota, _) = self.broker.client_quotas().quota(
            sluice_core::quotas::CONSUMER_BYTE_RATE,
            &self.quota_user(),
            client_id,
        )?;
        let cap = quota * sluice_core::quotas::COUNTED_WINDOW.as_secs_f64();
        Some(if cap >= f64::from(i32::MAX) {
            i32::MAX
        } else {
            (cap as i32).max(1)
        })
    }

    /// A fetch answer of `bytes` that took `took` of request time: recorded
    /// against the request quota, then against the consumer byte rate
    /// unless the client is already throttled. A throttled fetch is
    /// answered empty and its bytes are not counted, as in Kafka; the
    /// connection is muted for the throttle either way.
    pub(crate) fn fetch_throttle(
        &self,
        client_id: &str,
        bytes: usize,
        took: std::time::Duration,
    ) -> FetchThrottle {
        if !self.quotas_apply() {
            return FetchThrottle::None;
        }
        let user = self.quota_user();
        let request = self.request_throttle(&user, client_id, took);
        if !request.is_zero() {
            self.mute(request);
            return FetchThrottle::Empty(request);
        }
        let recorded = self.broker.client_quotas().record_if_within(
            sluice_core::quotas::CONSUMER_BYTE_RATE,
            &user,
            client_id,
            bytes as f64,
            BYTE_THROTTLE_CAP,
        );
        match recorded {
            Ok(time) if time.is_zero() => FetchThrottle::None,
            Ok(time) => {
                self.mute(time);
                FetchThrottle::Sent(time)
            }
            Err(time) => {
                self.mute(time);
                FetchThrottle::Empty(time)
            }
        }
    }

    /// Records `took` of request time for any other request; the
    /// connection is muted for the throttle it costs.
    pub(crate) fn other_throttle(&self, client_id: &str, took: std::time::Duration) {
        if !self.quotas_apply() {
            return;
        }
        let user = self.quota_user();
        let time = self.request_throttle(&user, client_id, took);
        self.mute(time);
    }

    /// Request time is recorded in percent-seconds: 100 per second of one
    /// thread's time.
    fn request_throttle(
        &self,
        user: &str,
        client_id: &str,
        took: std::time::Duration,
    ) -> std::time::Duration {
        self.broker
            .client_quotas()
            .record(
                sluice_core::quotas::REQUEST_PERCENTAGE,
                user,
                client_id,
                took.as_secs_f64() * 100.0,
                REQUEST_THROTTLE_CAP,
            )
            .time
    }

    /// The connection reads no request for `time` (Kafka mutes the
    /// channel of a throttled client, KIP-219).
    fn mute(&self, time: std::time::Duration) {
        if time.is_zero() {
            return;
        }
        let until = tokio::time::Instant::now() + time;
        let mut muted = self.muted_until.lock().unwrap_or_else(|e| e.into_inner());
        if muted.is_none_or(|at| at < until) {
            *muted = Some(until);
        }
    }
}
