//! Accepts AMQP connections, one task each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::connection::Connection;
use sluice_tls::ServerStream;

/// Settings of the AMQP listener.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// Largest frame, proposed in `connection.tune`.
    pub frame_max: u32,
    /// Most channels per connection, proposed in `connection.tune`.
    pub channel_max: u16,
    /// Heartbeat interval in seconds proposed in `connection.tune` (0: off).
    pub heartbeat: u16,
    /// SASL mechanisms offered (`PLAIN`, `AMQPLAIN`, `EXTERNAL`), in
    /// order; EXTERNAL only to a client that sent a certificate.
    pub mechanisms: Vec<String>,
    /// What names the user of an EXTERNAL login.
    pub cert_login_from: CertLoginFrom,
    /// With `kafka.acls`: the Kafka ACLs the bridge's paths into and out
    /// of topics are checked against, for the principal `User:<user>`.
    pub kafka_acls: Option<KafkaAcls>,
}

/// How the bridge checks Kafka ACLs for AMQP users.
#[derive(Debug, Clone, Default)]
pub struct KafkaAcls {
    /// Principals that pass every check (`kafka.super_users`).
    pub super_users: Vec<String>,
    /// Whether a topic no ACL names is open (`kafka.allow_everyone_if_no_acl_found`).
    pub everyone_if_none: bool,
}

/// Which part of a client certificate names the user of an EXTERNAL login
/// (RabbitMQ's `ssl_cert_login_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertLoginFrom {
    /// The subject's distinguished name, RFC 4514 (`CN=alice,O=Example`).
    #[default]
    DistinguishedName,
    /// The subject's common name.
    CommonName,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            mechanisms: vec!["PLAIN".to_owned(), "AMQPLAIN".to_owned()],
            cert_login_from: CertLoginFrom::DistinguishedName,
            kafka_acls: None,
        }
    }
}

/// Accepts AMQP connections until `shutdown` turns true. Open connections
/// are closed with `connection.close` 320 (CONNECTION_FORCED) on shutdown.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    options: AmqpOptions,
    tls: Option<Arc<sluice_tls::Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let options = Arc::new(options);
    crate::metrics::register(&broker);
    let local = listener.local_addr().ok();
    if let Some(addr) = local {
        // The binary logs each listener once at INFO.
        tracing::debug!(%addr, "amqp listener ready");
    }
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "amqp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let registration = match broker
            .connections()
            .register(sluice_core::Protocol::Amqp, peer)
        {
            Ok(registration) => registration,
            Err(refused) => {
                // RabbitMQ's connection_max stops accepting; closing at
                // once frees the descriptor and the client sees why in our log.
                tracing::warn!(%peer, reason = %refused, "amqp connection refused");
                drop(stream);
                continue;
            }
        };
        let conn_id = registration.id();
        let span = tracing::info_span!("conn", conn_id, %peer, protocol = "amqp");
        let tasks = Arc::clone(broker.tasks());
        let broker = Arc::clone(&broker);
        let options = Arc::clone(&options);
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(
            async move {
                let Some(stream) =
                    ServerStream::accept(stream, tls.as_deref(), "amqps", peer).await
                else {
                    return;
                };
                match Connection::run(registration, stream, peer, broker, options, shutdown).await {
                    Ok(()) => tracing::debug!("connection closed"),
                    Err(err) if err.is_disconnect() => {
                        tracing::debug!(reason = %sluice_types::ErrorChain(&err), "client disconnected");
                    }
                    Err(err) => tracing::info!(reason = %sluice_types::ErrorChain(&err), "connection closed"),
                }
            }
            .instrument(span),
        );
    }
    // Connections see the same shutdown signal and close with 320; the
    // broker's lifecycle waits for them, bounded, before the logs close.
    tracing::info!("amqp listener stopped");
}
