//! The connection handshake: protocol header,
//! `connection.start`/`start-ok` with SASL PLAIN or AMQPLAIN login, or
//! EXTERNAL (the client certificate names the user),
//! `connection.tune`/`tune-ok` and `connection.open`, plus the server
//! properties and capabilities announced in `connection.start`.

use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Connection, ConnectionError, Reader};
use crate::errors::{ACCESS_REFUSED, AmqpError, COMMAND_INVALID, NOT_ALLOWED};
use crate::frames::{self, Frame};
use crate::listener::CertLoginFrom;

const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The handshake must finish within this.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frame size allowed before tune-ok (AMQP's frame-min-size is 4096; a
/// start-ok with many client properties can exceed it, so be generous).
pub(super) const HANDSHAKE_FRAME_MAX: usize = 131_072;

impl Connection {
    /// Runs start/start-ok, tune/tune-ok and open. False when the server
    /// refused the client (a connection.close is queued in `out`).
    pub(super) async fn handshake(
        &mut self,
        reader: &mut Reader,
        write_tx: &mpsc::Sender<Bytes>,
    ) -> Result<bool, ConnectionError> {
        while reader.buf.len() < 8 {
            if reader.fill().await? == 0 {
                return Err(ConnectionError::HandshakeEof);
            }
        }
        let header = reader.buf.split_to(8);
        if &header[..] != PROTOCOL_HEADER {
            // AMQP 0-9-1 §4.2.2: answer with the header we support, then close.
            let _ = write_tx.send(Bytes::from_static(PROTOCOL_HEADER)).await;
            return Err(ConnectionError::BadHeader(header.to_vec()));
        }
        let mechanisms = self.offered_mechanisms().join(" ");
        frames::put_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: LongString::from(mechanisms),
                locales: LongString::from("en_US"),
            })),
        );
        self.flush(write_tx).await;

        let start_ok = match self.handshake_method(reader).await? {
            AMQPClass::Connection(connection::AMQPMethod::StartOk(m)) => m,
            other => return Ok(self.handshake_unexpected(&other)),
        };
        self.blocked_capable = start_ok
            .client_properties
            .inner()
            .get("capabilities")
            .and_then(|c| match c {
                AMQPValue::FieldTable(table) => table.inner().get("connection.blocked"),
                _ => None,
            })
            .is_some_and(|v| matches!(v, AMQPValue::Boolean(true)));
        let mechanism = start_ok.mechanism.as_str();
        if !self.offered_mechanisms().contains(&mechanism) {
            // RabbitMQ's answer to a mechanism it did not offer.
            self.closing = Some(AmqpError::connection(
                COMMAND_INVALID,
                format!("invalid authentication mechanism '{mechanism}'"),
            ));
            self.queue_close();
            return Ok(false);
        }
        let (named, accepted) = if mechanism == "EXTERNAL" {
            let named = self.certificate_user();
            let accepted = named.clone().filter(|name| self.external_login(name));
            (named, accepted)
        } else {
            let credentials = self.credentials(&start_ok);
            let accepted = match credentials.clone() {
                Some((user, password)) => self
                    .broker
                    .users()
                    .authenticate_async(user, password, self.peer.ip())
                    .await
                    .map(|principal| principal.name),
                None => None,
            };
            (credentials.map(|(user, _)| user), accepted)
        };
        let Some(user) = accepted else {
            self.closing = Some(AmqpError::connection(
                ACCESS_REFUSED,
                format!(
                    "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                    start_ok.mechanism.as_str()
                ),
            ));
            // The user name (never the password) tells the operator whose
            // login failed; an unreadable response has none.
            let user = named.unwrap_or_else(|| "(unreadable)".to_owned());
            self.broker
                .users()
                .login_refused(
                    self.peer.ip(),
                    &user,
                    &format!("amqp {}", start_ok.mechanism.as_str()),
                )
                .await;
            self.queue_close();
            return Ok(false);
        };
        frames::put_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: self.channel_max,
                frame_max: self.options.frame_max,
                heartbeat: self.options.heartbeat,
            })),
        );
        self.flush(write_tx).await;

        let tune_ok = match self.handshake_method(reader).await? {
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(m)) => m,
            other => return Ok(self.handshake_unexpected(&other)),
        };
        if tune_ok.frame_max != 0 && tune_ok.frame_max < 4096 {
            self.closing = Some(AmqpError::connection(
                NOT_ALLOWED,
                format!("frame_max={} < 4096 min size", tune_ok.frame_max),
            ));
            self.queue_close();
            return Ok(false);
        }
        if tune_ok.frame_max > self.options.frame_max {
            self.closing = Some(AmqpError::connection(
                NOT_ALLOWED,
                format!(
                    "frame_max={} > {} max size",
                    tune_ok.frame_max, self.options.frame_max
                ),
            ));
            self.queue_close();
            return Ok(false);
        }
        if tune_ok.frame_max != 0 {
            self.frame_max = tune_ok.frame_max as usize;
        }
        if tune_ok.channel_max != 0 {
            self.channel_max = tune_ok.channel_max.min(self.options.channel_max);
        }
        self.heartbeat = tune_ok.heartbeat;

        let open = match self.handshake_method(reader).await? {
            AMQPClass::Connection(connection::AMQPMethod::Open(m)) => m,
            other => return Ok(self.handshake_unexpected(&other)),
        };
        let Some(vhost) = self.broker.vhosts().get(open.virtual_host.as_str()) else {
            self.closing = Some(AmqpError::connection(
                NOT_ALLOWED,
                format!("vhost {} not found", open.virtual_host.as_str()),
            ));
            self.queue_close();
            return Ok(false);
        };
        if !self.broker.permissions().may_open(&user, vhost.name()) {
            tracing::info!(user = %user, vhost = vhost.name(), "AMQP connection refused: no permissions on the virtual host");
            self.closing = Some(AmqpError::connection(
                NOT_ALLOWED,
                format!(
                    "access to vhost '{}' refused for user '{user}'",
                    vhost.name()
                ),
            ));
            self.queue_close();
            return Ok(false);
        }
        if let Some(refusal) = self.over_connection_limit(vhost.name(), &user).await {
            tracing::info!(user = %user, vhost = vhost.name(), reason = %refusal, "AMQP connection refused by a limit");
            self.closing = Some(AmqpError::connection(NOT_ALLOWED, refusal));
            self.queue_close();
            return Ok(false);
        }
        tracing::debug!(user = %user, vhost = vhost.name(), heartbeat = self.heartbeat, frame_max = self.frame_max, "AMQP connection open");
        let client_name = client_name(&start_ok.client_properties);
        self.registration.stats().update_details(|details| {
            details.user = Some(user.clone());
            details.vhost = Some(vhost.name().to_owned());
            details.client_name = client_name;
        });
        self.kafka_principal = self.options.kafka_acls.as_ref().and_then(|rules| {
            let principal = format!("User:{user}");
            // Super users and administrators pass, as on the Kafka side.
            let super_user = rules.super_users.contains(&principal)
                || self.broker.users().has_tag(&user, "administrator");
            (!super_user).then(|| (principal, self.peer.ip().to_canonical().to_string()))
        });
        self.vhost = Some(vhost);
        self.user = user;
        frames::put_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.flush(write_tx).await;
        Ok(true)
    }

    /// Why opening `vhost` as `user` would pass the virtual host's or the
    /// user's `max-connections` limit, in RabbitMQ's words; `None` when
    /// it would not (or neither has one).
    async fn over_connection_limit(&self, vhost: &str, user: &str) -> Option<String> {
        let limits = self.broker.limits();
        let vhost_limit = limits.vhost(vhost, "max-connections");
        let user_limit = limits.user(user, "max-connections");
        if vhost_limit.is_none() && user_limit.is_none() {
            return None;
        }
        let counts = self.limit_counts(vhost, user).await;
        if let Some(limit) = vhost_limit
            && counts.vhost_connections >= limit
        {
            return Some(format!(
                "access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached"
            ));
        }
        if let Some(limit) = user_limit
            && counts.user_connections >= limit
        {
            return Some(format!(
                "connection refused for user '{user}': user connection limit ({limit}) is reached"
            ));
        }
        None
    }

    fn handshake_unexpected(&mut self, class: &AMQPClass) -> bool {
        self.closing = Some(
            AmqpError::connection(
                COMMAND_INVALID,
                format!(
                    "unexpected method {}.{} during the handshake",
                    class.get_amqp_class_id(),
                    class.get_amqp_method_id()
                ),
            )
            .during(class.get_amqp_class_id(), class.get_amqp_method_id()),
        );
        self.queue_close();
        false
    }

    async fn handshake_method(
        &mut self,
        reader: &mut Reader,
    ) -> Result<AMQPClass, ConnectionError> {
        loop {
            match frames::parse(&mut reader.buf, HANDSHAKE_FRAME_MAX) {
                Ok(Some(Frame::Method(0, class))) => return Ok(*class),
                Ok(Some(Frame::Heartbeat)) => continue,
                Ok(Some(_)) => {
                    return Err(ConnectionError::Closed(
                        "unexpected frame during the handshake".to_owned(),
                    ));
                }
                Ok(None) => {
                    if reader.fill().await? == 0 {
                        return Err(ConnectionError::HandshakeEof);
                    }
                }
                Err(error) => return Err(ConnectionError::Closed(error.text)),
            }
        }
    }

    /// The mechanisms offered: the configured ones, EXTERNAL only to a
    /// client that sent a certificate (no other could use it).
    fn offered_mechanisms(&self) -> Vec<&str> {
        self.options
            .mechanisms
            .iter()
            .map(String::as_str)
            .filter(|m| *m != "EXTERNAL" || self.certificate.is_some())
            .collect()
    }

    /// The user the client certificate names (`amqp.ssl_cert_login_from`),
    /// if the client sent one.
    fn certificate_user(&self) -> Option<String> {
        let certificate = self.certificate.as_ref()?;
        match self.options.cert_login_from {
            CertLoginFrom::DistinguishedName => Some(certificate.subject.clone()),
            CertLoginFrom::CommonName => certificate.common_name.clone(),
        }
    }

    /// Whether `name`, named by the client's certificate, may log in with
    /// EXTERNAL: the user exists (whatever its password, as RabbitMQ's
    /// internal backend decides) and, if it may log in only from
    /// loopback, the client is on loopback.
    fn external_login(&self, name: &str) -> bool {
        self.broker
            .users()
            .get(name)
            .is_some_and(|user| !user.loopback_only || self.peer.ip().is_loopback())
    }

    /// The user name and password of a start-ok, if its mechanism is one we
    /// offer and its response parses.
    fn credentials(&self, start_ok: &connection::StartOk) -> Option<(String, String)> {
        let response = start_ok.response.as_bytes();
        let (user, password) = match start_ok.mechanism.as_str() {
            "PLAIN" => {
                // authzid NUL authcid NUL password (RFC 4616).
                let mut parts = response.split(|b| *b == 0);
                let _authzid = parts.next()?;
                let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
                let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
                (user, password)
            }
            "AMQPLAIN" => {
                // A field table without its length prefix (RabbitMQ's AMQPLAIN).
                let mut framed = Vec::with_capacity(response.len() + 4);
                framed.extend_from_slice(&u32::try_from(response.len()).ok()?.to_be_bytes());
                framed.extend_from_slice(response);
                let (_, table) = parse_field_table(&framed[..]).ok()?;
                let text = |key: &str| {
                    table
                        .inner()
                        .get(key)
                        .and_then(sluice_core::messaging::string_value)
                };
                (text("LOGIN")?, text("PASSWORD")?)
            }
            _ => return None,
        };
        Some((user, password))
    }

    async fn flush(&mut self, write_tx: &mpsc::Sender<Bytes>) {
        if !self.out.is_empty() {
            let _ = write_tx.send(self.out.split().freeze()).await;
        }
    }
}

/// The `connection_name` client property, else `product`.
fn client_name(properties: &FieldTable) -> Option<String> {
    ["connection_name", "product"]
        .iter()
        .find_map(|key| match properties.inner().get(*key)? {
            AMQPValue::LongString(text) => {
                Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
            }
            AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
            _ => None,
        })
}

fn server_properties() -> FieldTable {
    let mut capabilities = FieldTable::default();
    for flag in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        capabilities.insert(flag.into(), AMQPValue::Boolean(true));
    }
    capabilities.insert("direct_reply_to".into(), AMQPValue::Boolean(false));
    let mut properties = FieldTable::default();
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    properties.insert("product".into(), text("Sluice"));
    properties.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    properties.insert("platform".into(), text("Rust"));
    properties.insert("cluster_name".into(), text("sluice"));
    properties.insert("copyright".into(), text("The Sluice authors"));
    properties.insert(
        "information".into(),
        text("Sluice: one broker for Kafka and AMQP 0-9-1 clients"),
    );
    properties
}
