//! Accepts STOMP connections, one task each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::Broker;
use sluice_tls::ServerStream;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::connection::Connection;

/// Settings of the STOMP listeners.
#[derive(Debug, Clone)]
pub struct StompOptions {
    /// The virtual host of a client whose `host` header names none.
    pub vhost: String,
    /// Whether a client without `login` logs in as `default_user`.
    pub allow_anonymous: bool,
    /// The user and password of clients that send no `login`.
    pub default_user: String,
    pub default_pass: String,
    /// The heart-beat interval the server offers and asks for.
    pub heartbeat: Duration,
    /// Largest frame headers and body taken.
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

impl Default for StompOptions {
    fn default() -> Self {
        StompOptions {
            vhost: "/".to_owned(),
            allow_anonymous: true,
            default_user: "guest".to_owned(),
            default_pass: "guest".to_owned(),
            heartbeat: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Serves one client whose bytes come over another transport (STOMP over
/// WebSocket, `/ws/stomp` on the HTTP listener), until it ends.
pub async fn serve_stream(
    broker: Arc<Broker>,
    options: Arc<StompOptions>,
    halves: (sluice_tls::ReadHalf, sluice_tls::WriteHalf),
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let registration = match broker
        .connections()
        .register(sluice_core::Protocol::Stomp, peer)
    {
        Ok(registration) => registration,
        Err(refused) => {
            tracing::warn!(%peer, reason = %refused, "stomp over websocket refused");
            return;
        }
    };
    let span =
        tracing::info_span!("conn", conn_id = registration.id(), %peer, protocol = "stomp-ws");
    serve_connection(registration, halves, peer, broker, options, shutdown)
        .instrument(span)
        .await;
}

async fn serve_connection(
    registration: sluice_core::ConnectionHandle,
    halves: (sluice_tls::ReadHalf, sluice_tls::WriteHalf),
    peer: SocketAddr,
    broker: Arc<Broker>,
    options: Arc<StompOptions>,
    shutdown: watch::Receiver<bool>,
) {
    match Connection::run(registration, halves, peer, broker, options, shutdown).await {
        Ok(()) => tracing::debug!("connection closed"),
        Err(reason) if reason.is_disconnect() => {
            tracing::debug!(reason = %sluice_types::ErrorChain(&reason), "client disconnected");
        }
        Err(reason) => {
            tracing::info!(reason = %sluice_types::ErrorChain(&reason), "connection closed");
        }
    }
}

/// Accepts STOMP connections until `shutdown` turns true; `tls` makes it
/// the STOMP-over-TLS listener.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    options: StompOptions,
    tls: Option<Arc<sluice_tls::Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let options = Arc::new(options);
    let scheme = if tls.is_some() { "stomps" } else { "stomp" };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "stomp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let registration = match broker
            .connections()
            .register(sluice_core::Protocol::Stomp, peer)
        {
            Ok(registration) => registration,
            Err(refused) => {
                tracing::warn!(%peer, reason = %refused, "stomp connection refused");
                drop(stream);
                continue;
            }
        };
        let conn_id = registration.id();
        let span = tracing::info_span!("conn", conn_id, %peer, protocol = "stomp");
        let tasks = Arc::clone(broker.tasks());
        let broker = Arc::clone(&broker);
        let options = Arc::clone(&options);
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(
            async move {
                let Some(stream) = ServerStream::accept(stream, tls.as_deref(), scheme, peer).await
                else {
                    return;
                };
                serve_connection(
                    registration,
                    stream.split(),
                    peer,
                    broker,
                    options,
                    shutdown,
                )
                .await;
            }
            .instrument(span),
        );
    }
    tracing::info!(scheme, "stomp listener stopped");
}
