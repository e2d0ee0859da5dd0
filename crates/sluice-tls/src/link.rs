//! TLS between nodes (`cluster.tls`): every connection to `cluster.listen`
//! (the quorum's frames, followers' replica fetches, message links) is
//! mutual TLS. A node presents its certificate both as a server and as a
//! client, and accepts only peers whose certificate chains to the CA
//! bundle; a dialling node checks the peer's certificate against the
//! host it dials (so the certificate names each node's address, as an IP
//! or DNS subject alternative name).
//!
//! The server side reloads with the other listeners' files (it is a
//! [`Tls`] of its own, requiring client certificates); the client side
//! reads the files again on each dial, so a rotated certificate is used
//! from the next connection on.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::{ClientAuth, HANDSHAKE_TIMEOUT, Tls, TlsError, TlsSettings, certificates, read_error};

/// A connection between nodes: plain TCP, or TLS on either side.
#[derive(Debug)]
pub enum LinkStream {
    Plain(TcpStream),
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Dialled(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for LinkStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            LinkStream::Accepted(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            LinkStream::Dialled(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            LinkStream::Accepted(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            LinkStream::Dialled(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkStream::Plain(s) => Pin::new(s).poll_flush(cx),
            LinkStream::Accepted(s) => Pin::new(s.as_mut()).poll_flush(cx),
            LinkStream::Dialled(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            LinkStream::Accepted(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            LinkStream::Dialled(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            LinkStream::Accepted(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            LinkStream::Dialled(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            LinkStream::Plain(s) => s.is_write_vectored(),
            LinkStream::Accepted(s) => s.is_write_vectored(),
            LinkStream::Dialled(s) => s.is_write_vectored(),
        }
    }
}

impl LinkStream {
    /// Its halves, for loops that read and write on their own tasks.
    pub fn split(self) -> (crate::ReadHalf, crate::WriteHalf) {
        match self {
            LinkStream::Plain(stream) => {
                let (reader, writer) = stream.into_split();
                (Box::new(reader), Box::new(writer))
            }
            other => {
                let (reader, writer) = tokio::io::split(other);
                (Box::new(reader), Box::new(writer))
            }
        }
    }
}

/// The inter-node link's TLS: a server configuration requiring client
/// certificates, and the files a dialling node presents.
#[derive(Debug)]
pub struct LinkTls {
    server: Arc<Tls>,
    settings: TlsSettings,
}

impl LinkTls {
    /// Builds both sides from `settings` (its `client_auth` is ignored:
    /// peers always present certificates).
    ///
    /// # Errors
    /// As [`Tls::load`], and a missing CA file.
    pub fn load(settings: TlsSettings) -> Result<Arc<LinkTls>, TlsError> {
        let settings = TlsSettings {
            client_auth: ClientAuth::Required,
            ..settings
        };
        if settings.ca_file.is_none() {
            return Err(TlsError::Config {
                reason: "TLS between nodes needs a CA file (cluster.tls_ca_file)".to_owned(),
            });
        }
        let server = Tls::load(settings.clone())?;
        client_config(&settings)?;
        Ok(Arc::new(LinkTls { server, settings }))
    }

    /// The server side, for its reloads.
    pub fn server(&self) -> &Arc<Tls> {
        &self.server
    }

    /// Accepts a peer's connection: its handshake, within
    /// [`HANDSHAKE_TIMEOUT`].
    ///
    /// # Errors
    /// The handshake's failure (no certificate, an untrusted one, a
    /// plaintext peer) or timeout.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<LinkStream> {
        Ok(LinkStream::Accepted(Box::new(
            self.server.accept(stream).await?,
        )))
    }

    /// Dials over `stream`, connected to `addr` (`HOST:PORT`), checking
    /// the peer's certificate against `HOST`.
    ///
    /// # Errors
    /// The files cannot be read, or the handshake fails or times out.
    pub async fn connect(&self, stream: TcpStream, addr: &str) -> io::Result<LinkStream> {
        let config = client_config(&self.settings).map_err(io::Error::other)?;
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
            Ok(connected) => Ok(LinkStream::Dialled(Box::new(connected?))),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the TLS handshake with a peer did not finish in time",
            )),
        }
    }
}

fn client_config(settings: &TlsSettings) -> Result<ClientConfig, TlsError> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    if let Some(ca_file) = &settings.ca_file {
        for ca in certificates("CA certificates", ca_file)? {
            roots
                .add(ca)
                .map_err(|e| read_error("CA certificates", ca_file, e))?;
        }
    }
    let chain = certificates("certificate chain", &settings.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| read_error("private key", &settings.key_file, e))?;
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config {
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config {
            reason: format!("the key does not fit the certificate, or either is unusable: {e}"),
        })
}
