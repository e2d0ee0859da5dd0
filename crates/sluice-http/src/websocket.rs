//! MQTT and STOMP over WebSocket on the HTTP listener (`/ws/mqtt`,
//! `/ws/stomp`), as RabbitMQ's Web MQTT and Web STOMP plugins serve them.
//!
//! The HTTP crate knows no protocol: the binary hands it one
//! [`WebSocketRoute`] per path, whose handler serves a byte stream. Here
//! the upgraded socket becomes that stream: each WebSocket message's bytes
//! are read in order (a packet or frame may span messages, or share one),
//! and what the handler writes goes out as messages (binary for MQTT, text
//! for STOMP when it is UTF-8).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves one client's byte stream until it ends.
pub type StreamHandler = Arc<
    dyn Fn(
            (sluice_tls::ReadHalf, sluice_tls::WriteHalf),
            SocketAddr,
        ) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A protocol served over WebSocket at `path`.
#[derive(Clone)]
pub struct WebSocketRoute {
    /// `/ws/mqtt`, say.
    pub path: &'static str,
    /// Subprotocols accepted (`mqtt`; `v12.stomp`, ...), in preference order.
    pub subprotocols: Vec<&'static str>,
    /// Whether what the server writes goes out as text messages.
    pub text: bool,
    pub handler: StreamHandler,
}

impl fmt::Debug for WebSocketRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketRoute")
            .field("path", &self.path)
            .field("subprotocols", &self.subprotocols)
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}

/// Bytes buffered between the socket and the protocol in each direction.
const PIPE_BYTES: usize = 256 * 1024;

/// The upgrade of a request to `route`.
pub(crate) fn upgrade(
    route: &WebSocketRoute,
    upgrade: WebSocketUpgrade,
    peer: SocketAddr,
) -> Response {
    let route = route.clone();
    upgrade
        .protocols(route.subprotocols.clone())
        .on_upgrade(move |socket| bridge(socket, route, peer))
        .into_response()
}

/// Pumps the socket into the protocol's stream and back until either ends.
async fn bridge(mut socket: WebSocket, route: WebSocketRoute, peer: SocketAddr) {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let (their_reader, their_writer) = tokio::io::split(theirs);
    let served = (route.handler)((Box::new(their_reader), Box::new(their_writer)), peer);
    let session = tokio::spawn(served);
    let (mut from_protocol, mut to_protocol) = tokio::io::split(ours);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(bytes))) => {
                    if to_protocol.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if to_protocol.write_all(text.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = to_protocol.shutdown().await;
                    break;
                }
            },
            read = from_protocol.read(&mut buffer) => match read {
                Ok(0) | Err(_) => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
                Ok(n) => {
                    let bytes = buffer.get(..n).unwrap_or_default().to_vec();
                    let message = match (route.text, String::from_utf8(bytes)) {
                        (true, Ok(text)) => Message::Text(text.into()),
                        (_, Ok(text)) => Message::Binary(text.into_bytes().into()),
                        (_, Err(bytes)) => Message::Binary(bytes.into_bytes().into()),
                    };
                    if socket.send(message).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    drop(to_protocol);
    // The protocol sees its input end and closes; what it still writes
    // after that has nowhere to go.
    drop(from_protocol);
    let _ = session.await;
}
