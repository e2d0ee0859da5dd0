//! How nodes connect to each other's `cluster.listen`: plain TCP, or
//! mutual TLS once [`use_tls`] set the node's certificate (`cluster.tls`).
//! Every dial (quorum, replica fetches, message links) and every accepted
//! connection goes through here, so no part of the inter-node traffic
//! skips it.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use sluice_tls::{LinkStream, LinkTls};
use tokio::net::TcpStream;

static TLS: OnceLock<Arc<LinkTls>> = OnceLock::new();

/// Makes every inter-node connection of this process mutual TLS (once;
/// a second call is ignored).
pub fn use_tls(tls: Arc<LinkTls>) {
    let _ = TLS.set(tls);
}

/// Connects to a peer's `cluster.listen` at `addr`: TCP, then TLS when set.
///
/// # Errors
/// The connection's or the handshake's failure.
pub(crate) async fn dial(addr: &str) -> io::Result<LinkStream> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    match TLS.get() {
        Some(tls) => tls.connect(stream, addr).await,
        None => Ok(LinkStream::Plain(stream)),
    }
}

/// An accepted connection on `cluster.listen`: through the TLS handshake
/// when set; `None` when it failed (logged: a peer without a trusted
/// certificate, or a plaintext client).
pub(crate) async fn accept(stream: TcpStream, peer: SocketAddr) -> Option<LinkStream> {
    let _ = stream.set_nodelay(true);
    let Some(tls) = TLS.get() else {
        return Some(LinkStream::Plain(stream));
    };
    match tls.accept(stream).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            sluice_tls::log_handshake_failure(&error, "cluster", peer);
            None
        }
    }
}
