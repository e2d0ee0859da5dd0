use std::net::SocketAddr;
use std::sync::Arc;

use sluice_core::{Broker, Protocol};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::connection::Connection;
use crate::handlers::acls::AuthorizerOptions;
use sluice_tls::ServerStream;

/// How a listener's clients connect (Kafka's `security.protocol`, which
/// names a listener by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// Every protocol, by Kafka's names.
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ];

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol Kafka names `name` (any case).
    pub fn parse(name: &str) -> Option<SecurityProtocol> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Whether clients authenticate with SASL.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// Whether the connection is TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// SASL on a listener.
#[derive(Debug, Clone)]
pub struct SaslOptions {
    /// Mechanisms clients may use (`sasl.enabled.mechanisms`).
    pub mechanisms: Vec<String>,
    /// How long an authentication holds before the client must
    /// re-authenticate (`connections.max.reauth.ms`); `None`: for ever.
    pub reauth: Option<std::time::Duration>,
}

impl Default for SaslOptions {
    fn default() -> Self {
        SaslOptions {
            mechanisms: ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
                .map(str::to_owned)
                .to_vec(),
            reauth: None,
        }
    }
}

/// Settings of a Kafka listener.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Host and port Metadata tells clients to connect to.
    pub advertised_host: String,
    pub advertised_port: u16,
    /// This broker's id in Metadata.
    pub node_id: i32,
    /// Requests larger than this close the connection before allocation.
    pub max_request_bytes: usize,
    /// The listener's name (its security protocol's name by default):
    /// Metadata answers with every node's address on the same listener.
    pub listener_name: String,
    /// How its clients connect.
    pub protocol: SecurityProtocol,
    /// SASL settings, for the SASL protocols.
    pub sasl: SaslOptions,
    /// The TLS configuration: set for the TLS protocols only, and every
    /// connection of the listener goes through its handshake.
    pub tls: Option<Arc<sluice_tls::Tls>>,
    /// How an `SSL` client's certificate names its principal (Kafka's
    /// `ssl.principal.mapping.rules`).
    pub principal_rules: crate::PrincipalRules,
    /// The ACL authorizer (`kafka.acls`); `None`: every client may do
    /// everything.
    pub authorizer: Option<Arc<AuthorizerOptions>>,
}

/// Accepts Kafka connections until `shutdown` turns true, one task each.
/// Returns once the listener stopped; open connections end at their next
/// request boundary after `shutdown`.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    options: KafkaOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let options = Arc::new(options);
    crate::connection::register_metrics(&broker);
    let local = listener.local_addr().ok();
    if let Some(addr) = local {
        // The binary logs each listener once at INFO.
        tracing::debug!(%addr, "kafka listener ready");
    }
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Running out of descriptors is transient; do not spin on it.
                tracing::warn!(error = %err, "kafka accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        spawn_connection(
            Accepted::Tcp(stream),
            peer,
            &broker,
            &options,
            &shutdown,
            false,
        );
    }
    tracing::info!(listener = %options.listener_name, "kafka listener stopped");
}

/// Serves Kafka connections another listener accepted (the inter-node
/// listener hands over other nodes' connections: followers' replica
/// fetches, coordinators' transaction markers) until
/// `shutdown` turns true or the sender is gone.
pub async fn serve_streams(
    mut streams: tokio::sync::mpsc::Receiver<(sluice_tls::LinkStream, SocketAddr)>,
    broker: Arc<Broker>,
    options: KafkaOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let options = Arc::new(options);
    loop {
        let (stream, peer) = tokio::select! {
            received = streams.recv() => match received {
                Some(pair) => pair,
                None => break,
            },
            _ = shutdown.changed() => break,
        };
        spawn_connection(
            Accepted::Link(stream),
            peer,
            &broker,
            &options,
            &shutdown,
            true,
        );
    }
}

/// A connection as its listener took it.
enum Accepted {
    /// A client's, on a Kafka listener: its TLS handshake comes first
    /// when the listener has TLS.
    Tcp(TcpStream),
    /// Another node's, on the inter-node link (already through its TLS).
    Link(sluice_tls::LinkStream),
}

/// Registers an accepted connection and serves it on its own task.
fn spawn_connection(
    stream: Accepted,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    options: &Arc<KafkaOptions>,
    shutdown: &watch::Receiver<bool>,
    inter_node: bool,
) {
    if let Accepted::Tcp(stream) = &stream {
        let _ = stream.set_nodelay(true);
    }
    let registration = match broker.connections().register(Protocol::Kafka, peer) {
        Ok(registration) => registration,
        Err(refused) => {
            // Kafka has no way to say why; the client sees a closed
            // connection and retries with backoff.
            tracing::warn!(%peer, reason = %refused, "kafka connection refused");
            return;
        }
    };
    let conn_id = registration.id();
    let span = tracing::info_span!("conn", conn_id, %peer, protocol = "kafka");
    let broker_for_task = Arc::clone(broker);
    let options = Arc::clone(options);
    let shutdown = shutdown.clone();
    broker.tasks().spawn(
        async move {
            let stream = match stream {
                Accepted::Tcp(stream) => {
                    let accepted = ServerStream::accept(
                        stream,
                        options.tls.as_deref(),
                        &options.listener_name,
                        peer,
                    )
                    .await;
                    let Some(stream) = accepted else {
                        return;
                    };
                    stream
                }
                Accepted::Link(stream) => ServerStream::Link(stream),
            };
            let tls_user = match stream.peer_certificate() {
                Some(Err(error)) if options.protocol == SecurityProtocol::Ssl => {
                    tracing::info!(%error, "kafka connection refused");
                    return;
                }
                Some(Ok(certificate)) if options.protocol == SecurityProtocol::Ssl => {
                    let Some(name) = options.principal_rules.map(&certificate.subject) else {
                        // Kafka closes the connection of a certificate no
                        // rule names.
                        tracing::info!(subject = %certificate.subject, "kafka connection refused: no ssl principal mapping rule matches the client certificate");
                        return;
                    };
                    registration
                        .stats()
                        .update_details(|details| details.user = Some(name.clone()));
                    Some(name)
                }
                _ => None,
            };
            let connection = Connection::new(
                stream,
                peer,
                broker_for_task,
                options,
                shutdown,
                registration,
                (inter_node, tls_user),
            );
            match connection.run().await {
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
