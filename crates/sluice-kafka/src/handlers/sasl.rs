//! SaslHandshake and SaslAuthenticate (KIP-43, KIP-152): PLAIN,
//! SCRAM-SHA-256 and SCRAM-SHA-512 against the broker's users, by the
//! rsasl mechanisms; re-authentication on a live connection (KIP-368)
//! with `connections.max.reauth.ms`.
//!
//! A listener whose security protocol is `SASL_PLAINTEXT` or `SASL_SSL`
//! serves nothing but ApiVersions, SaslHandshake and SaslAuthenticate until
//! the client authenticated (the connection checks [`SaslState::admits`]);
//! a failed authentication is answered, then the connection is closed, as
//! Kafka does.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use rsasl::callback::{Context as SaslContext, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechname::Mechname;
use rsasl::prelude::{SASLConfig, SASLServer, Session, SessionError};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, Validation, ValidationError};
use sluice_core::{Broker, ScramMechanism};

use super::Context;

/// What a finished exchange hands back: the user, or why not.
struct Outcome;

impl Validation for Outcome {
    type Value = Result<String, String>;
}

/// Answers the mechanisms' questions from the broker's users.
struct Users {
    broker: Arc<Broker>,
    peer: IpAddr,
    /// The user the client named, for the log when it fails.
    named: Arc<Mutex<Option<String>>>,
}

impl SessionCallback for Users {
    fn callback(
        &self,
        session: &SessionData,
        context: &SaslContext<'_>,
        request: &mut Request<'_>,
    ) -> Result<(), SessionError> {
        let Some(mechanism) = ScramMechanism::parse(session.mechanism().mechanism.as_str()) else {
            return Ok(());
        };
        let Some(name) = context.get_ref::<AuthId>() else {
            return Ok(());
        };
        *self.named.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.to_owned());
        if let Some(credential) = self.broker.users().scram(name, mechanism) {
            request.satisfy::<ScramStoredPassword<'_>>(&ScramStoredPassword::new(
                credential.iterations,
                &credential.salt,
                &credential.stored_key,
                &credential.server_key,
            ))?;
        }
        Ok(())
    }

    fn validate(
        &self,
        session: &SessionData,
        context: &SaslContext<'_>,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let mechanism = session.mechanism().mechanism.as_str();
        let name = context.get_ref::<AuthId>().unwrap_or_default().to_owned();
        *self.named.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.clone());
        let authzid = context.get_ref::<AuthzId>();
        let outcome = if authzid.is_some_and(|a| !a.is_empty() && a != name) {
            Err(format!("user {name:?} may not act as {authzid:?}"))
        } else if mechanism == "PLAIN" {
            let password = context
                .get_ref::<Password>()
                .and_then(|p| std::str::from_utf8(p).ok())
                .unwrap_or_default();
            match self.broker.users().authenticate(&name, password, self.peer) {
                Some(principal) => Ok(principal.name),
                None => Err(format!("wrong password for {name:?}, or no such user")),
            }
        } else if let Some(user) = self.broker.users().get(&name) {
            // SCRAM checked the client's proof against the credential.
            if user.loopback_only && !self.peer.is_loopback() {
                Err(format!("user {name:?} may log in only from loopback"))
            } else {
                Ok(name)
            }
        } else {
            Err(format!("no user {name:?}"))
        };
        validate.with::<Outcome, _>(|| Ok(outcome))?;
        Ok(())
    }
}

/// A connection's authentication: the exchange under way, who the client
/// is once it finished, and until when.
#[derive(Default)]
pub(crate) struct SaslState {
    mechanism: Option<String>,
    session: Option<Session<Outcome>>,
    /// SCRAM messages the client sent in this exchange.
    scram_messages: u8,
    named: Arc<Mutex<Option<String>>>,
    principal: Option<String>,
    expires: Option<Instant>,
    /// The last exchange failed: the connection closes once its answer
    /// is written.
    close: bool,
}

impl std::fmt::Debug for SaslState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslState")
            .field("mechanism", &self.mechanism)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl SaslState {
    /// Whether a request of `api` may be served now.
    pub(crate) fn admits(&self, api: ApiKey) -> bool {
        if matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        ) {
            return true;
        }
        self.principal.is_some() && self.expires.is_none_or(|at| Instant::now() < at)
    }

    /// Whether the client authenticated (its session may have expired
    /// since).
    pub(crate) fn authenticated(&self) -> bool {
        self.principal.is_some()
    }

    /// The authenticated user's name.
    pub(crate) fn principal_name(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// Whether the connection must close after the answer it owes.
    pub(crate) fn must_close(&self) -> bool {
        self.close
    }
}

/// The connection's shared authentication state.
pub(crate) type SharedSasl = Arc<Mutex<SaslState>>;

pub(crate) fn handshake(
    context: &Context,
    request: SaslHandshakeRequest,
    version: i16,
) -> SaslHandshakeResponse {
    let enabled = &context.options.sasl.mechanisms;
    let mechanisms = enabled
        .iter()
        .map(|m| StrBytes::from_string(m.clone()))
        .collect();
    let response = SaslHandshakeResponse::default().with_mechanisms(mechanisms);
    if !context.options.protocol.sasl() {
        // Kafka's answer on a listener without SASL.
        return response.with_error_code(ResponseError::IllegalSaslState.code());
    }
    let mut state = context.sasl_state();
    let wanted = request.mechanism.as_str();
    if version == 0 {
        // v0 is followed by bare SASL tokens outside Kafka's framing;
        // clients that know v1 use it (the range advertises 0 because
        // librdkafka before 2.11.1 looks for it).
        tracing::info!(
            mechanism = wanted,
            "SaslHandshake v0 (unframed SASL tokens) is not supported; use v1"
        );
        state.close = true;
        return response.with_error_code(ResponseError::IllegalSaslState.code());
    }
    if !enabled.iter().any(|m| m == wanted) {
        tracing::info!(mechanism = wanted, "SASL mechanism not enabled");
        state.close = true;
        return response.with_error_code(ResponseError::UnsupportedSaslMechanism.code());
    }
    if state.session.is_some() {
        state.close = true;
        return response.with_error_code(ResponseError::IllegalSaslState.code());
    }
    if state.principal.is_some() && state.mechanism.as_deref() != Some(wanted) {
        // KIP-368: a re-authentication keeps the mechanism.
        tracing::info!(mechanism = wanted, before = ?state.mechanism, "re-authentication with another mechanism refused");
        state.close = true;
        return response.with_error_code(ResponseError::IllegalSaslState.code());
    }
    let peer = peer_ip(context);
    let started = SASLConfig::builder()
        .with_defaults()
        .with_callback(Users {
            broker: Arc::clone(&context.broker),
            peer,
            named: Arc::clone(&state.named),
        })
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let name = Mechname::parse(wanted.as_bytes()).map_err(|e| e.to_string())?;
            SASLServer::<Outcome>::new(config)
                .start_suggested(name)
                .map_err(|e| e.to_string())
        });
    match started {
        Ok(session) => {
            state.session = Some(session);
            state.scram_messages = 0;
            state.mechanism = Some(wanted.to_owned());
            response
        }
        Err(reason) => {
            tracing::warn!(mechanism = wanted, %reason, "cannot start a SASL exchange");
            state.close = true;
            response.with_error_code(ResponseError::UnsupportedSaslMechanism.code())
        }
    }
}

/// Whether a SCRAM client message has the shape RFC 5802 gives it: every
/// attribute at least `x=`, and in the client-first message a GS2 header
/// whose authzid is empty or `a=…`. rsasl 2.3's parsers index attributes
/// without checking their length, so a shorter one would panic in it.
fn scram_well_formed(message: &[u8], client_first: bool) -> bool {
    let mut parts = message.split(|b| *b == b',');
    if client_first {
        // The channel-binding flag (rsasl checks it), then the authzid.
        let _flag = parts.next();
        match parts.next() {
            Some(authzid) if authzid.is_empty() || authzid.starts_with(b"a=") => {}
            _ => return false,
        }
    }
    parts.all(|attribute| attribute.len() >= 2 && attribute[1] == b'=')
}

/// Ends the exchange as failed: the connection closes after `message`
/// (SASL_AUTHENTICATION_FAILED), and the failure is handed back for the
/// log and the delay; `reason` goes to the debug log only.
fn refuse(
    state: &mut SaslState,
    context: &Context,
    mechanism: &str,
    reason: &str,
    message: String,
) -> (SaslAuthenticateResponse, Option<Failure>) {
    let user = state
        .named
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default();
    tracing::debug!(peer = %context.peer, %user, %mechanism, %reason, "Kafka SASL authentication failed");
    state.session = None;
    state.close = true;
    let response = SaslAuthenticateResponse::default()
        .with_error_code(ResponseError::SaslAuthenticationFailed.code())
        .with_error_message(Some(StrBytes::from_string(message)));
    (
        response,
        Some(Failure {
            user,
            mechanism: mechanism.to_owned(),
        }),
    )
}

/// A failed authentication, for the log and the delay.
struct Failure {
    user: String,
    mechanism: String,
}

pub(crate) async fn authenticate(
    context: &Context,
    request: SaslAuthenticateRequest,
    version: i16,
) -> SaslAuthenticateResponse {
    // PLAIN checks a password with PBKDF2: off the async threads.
    let stepping = context.clone();
    let Ok((response, failure)) =
        tokio::task::spawn_blocking(move || step(&stepping, request, version)).await
    else {
        context.sasl_state().close = true;
        return SaslAuthenticateResponse::default()
            .with_error_code(ResponseError::SaslAuthenticationFailed.code())
            .with_error_message(Some(StrBytes::from_static_str("Authentication failed")));
    };
    if let Some(failure) = failure {
        context
            .broker
            .users()
            .login_refused(
                peer_ip(context),
                &failure.user,
                &format!("kafka SASL {}", failure.mechanism),
            )
            .await;
    }
    response
}

fn peer_ip(context: &Context) -> IpAddr {
    context
        .peer
        .trim_start_matches('/')
        .parse()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn step(
    context: &Context,
    request: SaslAuthenticateRequest,
    version: i16,
) -> (SaslAuthenticateResponse, Option<Failure>) {
    let mut state = context.sasl_state();
    let response = SaslAuthenticateResponse::default();
    let mechanism = state.mechanism.clone().unwrap_or_default();
    if state.session.is_none() {
        state.close = true;
        let response = response
            .with_error_code(ResponseError::IllegalSaslState.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "SaslAuthenticate before SaslHandshake",
            )));
        return (response, None);
    }
    if mechanism.starts_with("SCRAM-") {
        let first = state.scram_messages == 0;
        state.scram_messages = state.scram_messages.saturating_add(1);
        if !scram_well_formed(&request.auth_bytes, first) {
            return refuse(
                &mut state,
                context,
                &mechanism,
                "malformed SCRAM message",
                format!("Authentication failed: malformed {mechanism} message"),
            );
        }
    }
    let Some(session) = state.session.as_mut() else {
        return (response, None);
    };
    let mut out = Vec::new();
    let stepped = session.step(Some(&request.auth_bytes), &mut out);
    let outcome = match &stepped {
        Ok(step) if !step.is_running() => session.validation(),
        _ => None,
    };
    let deny = |state: &mut SaslState, reason: String| {
        refuse(
            state,
            context,
            &mechanism,
            &reason,
            format!(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
            ),
        )
    };
    match stepped {
        Ok(step) if step.is_running() => (
            response
                .with_error_message(None)
                .with_auth_bytes(Bytes::from(out)),
            None,
        ),
        Ok(_) => {
            state.session = None;
            match outcome {
                Some(Ok(name)) => {
                    if let Some(before) = state.principal.clone()
                        && before != name
                    {
                        // KIP-368: re-authentication may not change who the
                        // connection is.
                        return deny(
                            &mut state,
                            format!("re-authenticated as {name:?}, not {before:?}"),
                        );
                    }
                    let lifetime = context.options.sasl.reauth;
                    tracing::debug!(user = %name, %mechanism, "Kafka client authenticated");
                    if let Some(stats) = &context.connection {
                        stats.update_details(|details| details.user = Some(name.clone()));
                    }
                    state.principal = Some(name);
                    state.expires = lifetime.and_then(|l| Instant::now().checked_add(l));
                    let response = response
                        .with_error_message(None)
                        .with_auth_bytes(Bytes::from(out));
                    let response = if version >= 1 {
                        response.with_session_lifetime_ms(
                            lifetime
                                .map_or(0, |l| i64::try_from(l.as_millis()).unwrap_or(i64::MAX)),
                        )
                    } else {
                        response
                    };
                    (response, None)
                }
                Some(Err(reason)) => deny(&mut state, reason),
                // SCRAM ends without validating when the client's proof
                // does not match the stored key.
                None => deny(
                    &mut state,
                    "the client's proof does not match (wrong password, or no such user)"
                        .to_owned(),
                ),
            }
        }
        // SASLprep's errors quote the offending character, which for
        // PLAIN is one of the password's.
        Err(_) if mechanism == "PLAIN" => deny(
            &mut state,
            "the PLAIN message was refused (malformed, or SASLprep failed)".to_owned(),
        ),
        Err(error) => deny(&mut state, error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::scram_well_formed;

    #[test]
    fn scram_messages_with_short_attributes_are_refused_before_rsasl_sees_them() {
        assert!(scram_well_formed(
            b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            true
        ));
        assert!(scram_well_formed(b"n,a=user,n=user,r=abc", true));
        assert!(scram_well_formed(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            false
        ));
        // Each of these panicked in rsasl 2.3.1's parsers.
        for (message, first) in [
            (&b""[..], false),
            (b"c", false),
            (b"c=biws,r=abc,p=xyz,", false),
            (b"n,a,n=user,r=abc", true),
            (b"n,,n", true),
            (b"n,,n=user,r", true),
        ] {
            assert!(!scram_well_formed(message, first), "{message:?}");
        }
    }
}
