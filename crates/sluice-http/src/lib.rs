//! Sluice's admin HTTP front-end: the JSON API under `/api/`, Prometheus
//! metrics at `/metrics` and the web UI at `/`, on one listener.
//!
//! Like the protocol front-ends it calls the core only: topics, groups and
//! offsets, virtual hosts, the connection registry and the request metrics
//! the other front-ends record. Start reading at [`serve`]; `api/` holds
//! one file per resource, `error.rs` the registry of error codes,
//! `metrics.rs` the exposition, `rates.rs` the sampler behind every rate,
//! `history.rs` the points kept for the UI's charts.
//! The API is described in `docs/http.md` and `/api/openapi.json`.

mod api;
mod auth;
mod error;
mod extract;
mod history;
mod metrics;
mod openapi;
mod rates;
mod ui;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use sluice_core::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::{ApiError, ErrorCode};
pub use websocket::{StreamHandler, WebSocketRoute};

/// One listener of the node, as the overview shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// `kafka`, `amqp` or `http`.
    pub protocol: &'static str,
    /// `HOST:PORT` it is bound to.
    pub address: String,
}

/// Settings of the HTTP front-end.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// The node's listeners, for the overview.
    pub listeners: Vec<ListenerInfo>,
    /// Protocols served over WebSocket (MQTT, STOMP).
    pub websockets: Vec<WebSocketRoute>,
}

/// What every handler reaches.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) options: HttpOptions,
    pub(crate) rates: rates::Rates,
    /// Rate and lag history for charts, recorded by the sampler.
    pub(crate) history: history::History,
    /// Next partition for keyless records produced through the API.
    pub(crate) round_robin: AtomicU32,
}

pub(crate) type AppState = Arc<Shared>;

/// How often the rates sampler reads the counters.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

fn shared(broker: Arc<Broker>, options: HttpOptions) -> AppState {
    Arc::new(Shared {
        broker,
        options,
        rates: rates::Rates::default(),
        history: history::History::default(),
        round_robin: AtomicU32::new(0),
    })
}

/// The whole application: API, metrics and UI.
fn app(shared: AppState) -> Router {
    let api = api::routes().layer(axum::middleware::from_fn_with_state(
        Arc::clone(&shared),
        auth::require_user,
    ));
    let mut router = Router::new().merge(api).merge(api::public_routes());
    for route in &shared.options.websockets {
        let route = route.clone();
        router = router.route(
            route.path,
            get(
                move |upgrade: axum::extract::ws::WebSocketUpgrade,
                      axum::extract::ConnectInfo(PeerAddr(peer)): axum::extract::ConnectInfo<
                    PeerAddr,
                >| async move { websocket::upgrade(&route, upgrade, peer) },
            ),
        );
    }
    router
        .route("/api/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::render))
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The client's address, as the authentication sees it, over HTTP and
/// HTTPS alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// An HTTPS listener: TCP connections accepted here, their TLS handshakes
/// run each on a task of its own (a slow client holds up no other), and
/// the finished ones handed to axum.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, tls: Arc<sluice_tls::Tls>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (sender, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "https accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let tls = Arc::clone(&tls);
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tls.accept(stream).await {
                        Ok(stream) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Err(error) => {
                            sluice_tls::log_handshake_failure(&error, "https", peer);
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The acceptor runs until this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves the admin API, metrics and UI until `shutdown` turns true, over
/// HTTPS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    options: HttpOptions,
    tls: Option<Arc<sluice_tls::Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = shared(broker, options);
    let sampler = {
        let shared = Arc::clone(&shared);
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                shared.rates.sample(&shared.broker);
                let now = history::now_ms();
                if shared.history.due(now) {
                    shared.history.record(now, api::history::snapshot(&shared));
                }
            }
        })
    };
    let local = listener.local_addr().ok();
    if let Some(addr) = local {
        // The binary logs each listener once at INFO.
        tracing::debug!(%addr, "http listener ready");
    }
    let app = app(shared).into_make_service_with_connect_info::<PeerAddr>();
    let stopped = async move {
        let _ = shutdown.changed().await;
    };
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
        Some(tls) => match TlsListener::new(listener, tls) {
            Ok(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            Err(error) => Err(error),
        },
    };
    if let Err(error) = served {
        tracing::warn!(%error, "http listener failed");
    }
    // The sampler ends on the shutdown signal; a listener that failed
    // without one must not leave it running.
    sampler.abort();
    let _ = sampler.await;
    tracing::info!("http listener stopped");
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Request, StatusCode, header};
    use sluice_core::BrokerOptions;
    use tower::ServiceExt as _;

    use super::*;

    fn test_app(dir: &std::path::Path) -> Router {
        let broker = Broker::open(BrokerOptions::new(dir)).expect("open a broker");
        app(shared(
            Arc::new(broker),
            HttpOptions {
                listeners: Vec::new(),
                websockets: Vec::new(),
            },
        ))
    }

    async fn call(app: &Router, method: &str, path: &str, peer: [u8; 4]) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .expect("a request");
        request
            .extensions_mut()
            .insert(ConnectInfo(PeerAddr(SocketAddr::from((peer, 40000)))));
        let response = app.clone().oneshot(request).await.expect("a response");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn every_documented_route_is_served() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let app = test_app(dir.path());
        for (method, path, _) in api::ROUTES {
            let concrete = path
                .replace("{vhost}", "%2F")
                .replace("{partition}", "0")
                .replace("{id}", "1")
                .replace(['{', '}'], "");
            let (status, body) =
                call(&app, &method.to_uppercase(), &concrete, [127, 0, 0, 1]).await;
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {body}"
            );
            assert!(
                !body.contains("no route"),
                "{method} {path} is not routed: {body}"
            );
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        }
        let (status, body) = call(&app, "GET", "/api/nothing", [127, 0, 0, 1]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no route"), "{body}");
    }

    #[tokio::test]
    async fn guest_is_refused_from_a_remote_address() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let app = test_app(dir.path());
        let (status, _) = call(&app, "GET", "/api/overview", [10, 1, 2, 3]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(&app, "GET", "/api/overview", [127, 0, 0, 1]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn health_answers_without_credentials() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let app = test_app(dir.path());
        for path in ["/api/health", "/api/health/ready"] {
            let mut request = Request::builder()
                .uri(path)
                .body(Body::empty())
                .expect("a request");
            request
                .extensions_mut()
                .insert(ConnectInfo(PeerAddr(SocketAddr::from((
                    [10, 1, 2, 3],
                    40000,
                )))));
            let response = app.clone().oneshot(request).await.expect("a response");
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
    }
}
