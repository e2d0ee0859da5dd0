//! Accepts AMQP connections, one task each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::connection::Connection;

/// A user that may log in (the broker's users, shared with the admin API).
pub use sluice_core::User as AmqpUser;

/// Settings of the AMQP listener.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// Largest frame, proposed in `connection.tune`.
    pub frame_max: u32,
    /// Most channels per connection, proposed in `connection.tune`.
    pub channel_max: u16,
    /// Heartbeat interval in seconds proposed in `connection.tune` (0: off).
    pub heartbeat: u16,
    /// Who may log in.
    pub users: Vec<AmqpUser>,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            users: vec![AmqpUser {
                name: "guest".to_owned(),
                password: "guest".to_owned(),
                loopback_only: true,
            }],
        }
    }
}

/// How often queues write settlements and expire messages and themselves,
/// and the disk's free space is checked.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(100);

/// Accepts AMQP connections until `shutdown` turns true. Open connections
/// are closed with `connection.close` 320 (CONNECTION_FORCED) on shutdown.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    options: AmqpOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let options = Arc::new(options);
    crate::metrics::register(&broker);
    let local = listener.local_addr().ok();
    let maintenance = {
        let broker = Arc::clone(&broker);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let broker = Arc::clone(&broker);
                        let _ = tokio::task::spawn_blocking(move || {
                            broker.vhosts().maintain();
                            broker.check_disk();
                        })
                        .await;
                    }
                    _ = shutdown.changed() => break,
                }
            }
        })
    };
    if let Some(addr) = local {
        // The binary logs each listener once at INFO.
        tracing::debug!(%addr, "amqp listener ready");
    }
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
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
        let broker = Arc::clone(&broker);
        let options = Arc::clone(&options);
        let shutdown = shutdown.clone();
        connections.spawn(
            async move {
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
    // Connections see the same shutdown signal and close with 320; give
    // them a bounded time to say so before the broker closes its logs.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    maintenance.abort();
    tracing::info!("amqp listener stopped");
}
