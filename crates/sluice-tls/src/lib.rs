//! TLS for Sluice's listeners (Kafka `SSL` and `SASL_SSL`, AMQPS, HTTPS):
//! one server configuration built by rustls from PEM files, TLS 1.2 and
//! 1.3 only, optional or required client certificates checked against a
//! CA bundle, and reloads without a restart: the files are checked for
//! changes every `reload_interval` and read again at once on SIGHUP. A
//! reload that fails (a half-written file, a key that does not match)
//! keeps the configuration in use and says why.
//!
//! Each accepted connection takes the configuration current at its
//! handshake, so a reload reaches new connections while open ones go on.

mod link;

pub use link::{LinkStream, LinkTls};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Never asked for.
    None,
    /// Asked for and checked when sent.
    Optional,
    /// Required (mTLS): a client without a valid one fails its handshake.
    Required,
}

impl ClientAuth {
    /// `none`, `optional` or `required`.
    pub fn parse(text: &str) -> Option<ClientAuth> {
        match text {
            "none" => Some(ClientAuth::None),
            "optional" => Some(ClientAuth::Optional),
            "required" => Some(ClientAuth::Required),
            _ => None,
        }
    }
}

/// Where the PEM files are, and how clients authenticate.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA certificates client certificates must chain to (needed unless
    /// `client_auth` is `None`).
    pub ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the TLS configuration is refused: {reason}")]
    Config { reason: String },
}

/// A TLS server configuration that reloads.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' modification times and sizes when last read.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl Tls {
    /// Reads the files and builds the configuration.
    ///
    /// # Errors
    /// A file that cannot be read or holds nothing usable, or a key that
    /// does not match the certificate.
    pub fn load(settings: TlsSettings) -> Result<Arc<Tls>, TlsError> {
        let stamps = stamps(&settings);
        let config = build(&settings)?;
        Ok(Arc::new(Tls {
            settings,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs the TLS handshake of an accepted connection, bounded by
    /// [`HANDSHAKE_TIMEOUT`].
    ///
    /// # Errors
    /// The handshake's failure (a plaintext client, an untrusted or
    /// missing client certificate, a protocol version below 1.2), or its
    /// timeout.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(accepted) => accepted,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the TLS handshake did not finish in time",
            )),
        }
    }

    /// Reads the files again and, when they build, uses them for new
    /// connections. Returns whether the configuration changed.
    ///
    /// # Errors
    /// As [`Tls::load`]; the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.settings);
        let config = build(&self.settings)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(())
    }

    /// Whether a file changed since it was last read.
    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != stamps(&self.settings)
    }

    /// Reloads when the files change or on SIGHUP, until `stop` turns
    /// true.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot handle SIGHUP; TLS files reload on change only");
                None
            }
        };
        let mut tick = tokio::time::interval(
            self.settings
                .reload_interval
                .max(Duration::from_millis(100)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = tick.tick() => {
                    if !self.changed() {
                        continue;
                    }
                    "the files changed"
                }
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
                _ = stop.changed() => return,
            };
            match self.reload() {
                Ok(()) => tracing::info!(
                    cert = %self.settings.cert_file.display(),
                    reason = why,
                    "TLS certificate and key reloaded"
                ),
                Err(error) => {
                    // Checked again at the next change, not every tick.
                    *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.settings);
                    tracing::warn!(%error, reason = why, "TLS reload failed; the previous certificate stays in use");
                }
            }
        }
    }
}

/// Logs a failed handshake on `listener`: at DEBUG when the client closed
/// before sending anything (a port probe, a health check), at INFO with
/// the reason otherwise (an untrusted or missing client certificate, a
/// plaintext client, an old protocol version).
pub fn log_handshake_failure(error: &std::io::Error, listener: &str, peer: std::net::SocketAddr) {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        tracing::debug!(%peer, %error, %listener, "TLS handshake ended before it began");
    } else {
        tracing::info!(%peer, %error, %listener, "TLS handshake failed");
    }
}

/// A connection's two halves, whatever carries it (plain TCP or TLS), for
/// the protocol loops that read and write on their own tasks.
pub type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
/// See [`ReadHalf`].
pub type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// An accepted connection: plain TCP or TLS.
#[derive(Debug)]
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Another node's connection on the inter-node link.
    Link(LinkStream),
}

impl ServerStream {
    /// Its halves; plain TCP splits without a lock.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            ServerStream::Plain(stream) => {
                let (reader, writer) = stream.into_split();
                (Box::new(reader), Box::new(writer))
            }
            ServerStream::Tls(stream) => {
                let (reader, writer) = tokio::io::split(*stream);
                (Box::new(reader), Box::new(writer))
            }
            ServerStream::Link(stream) => stream.split(),
        }
    }

    /// The client's certificate, when it sent one over TLS: `Err` when
    /// rustls accepted it but its subject cannot be read (such a client
    /// must not pass for one without a certificate).
    pub fn peer_certificate(&self) -> Option<Result<PeerCertificate, UnreadableCertificate>> {
        let ServerStream::Tls(stream) = self else {
            return None;
        };
        let leaf = stream.get_ref().1.peer_certificates()?.first()?;
        Some(PeerCertificate::from_der(leaf.as_ref()).ok_or(UnreadableCertificate))
    }

    /// An accepted connection as its listener serves it: through the TLS
    /// handshake when the listener has `tls`, as it is otherwise. `None`
    /// when the handshake failed (logged, as [`log_handshake_failure`]).
    pub async fn accept(
        stream: TcpStream,
        tls: Option<&Tls>,
        listener: &str,
        peer: std::net::SocketAddr,
    ) -> Option<ServerStream> {
        let Some(tls) = tls else {
            return Some(ServerStream::Plain(stream));
        };
        match tls.accept(stream).await {
            Ok(stream) => Some(ServerStream::Tls(Box::new(stream))),
            Err(error) => {
                log_handshake_failure(&error, listener, peer);
                None
            }
        }
    }
}

/// A client certificate whose subject could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client certificate's subject cannot be read")]
pub struct UnreadableCertificate;

/// What a client's certificate says of who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's distinguished name as RFC 4514 writes it (the most
    /// specific name first: `CN=alice,O=Example`), the form Kafka's
    /// default principal and RabbitMQ's `distinguished_name` login use.
    pub subject: String,
    /// The subject's (last) common name, if it has one.
    pub common_name: Option<String>,
}

impl PeerCertificate {
    /// Reads the subject of a DER certificate; `None` when it does not
    /// parse (rustls already checked it, so only an oddity of encoding).
    pub fn from_der(der: &[u8]) -> Option<PeerCertificate> {
        use x509_cert::der::Decode as _;
        use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
        let certificate = x509_cert::Certificate::from_der(der).ok()?;
        let subject = &certificate.tbs_certificate.subject;
        let common_name = subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .rev()
            .filter(|attribute| attribute.oid == x509_cert::der::oid::db::rfc4519::CN)
            .find_map(|attribute| {
                let value = &attribute.value;
                Utf8StringRef::try_from(value)
                    .map(|s| s.as_str().to_owned())
                    .or_else(|_| PrintableStringRef::try_from(value).map(|s| s.as_str().to_owned()))
                    .or_else(|_| Ia5StringRef::try_from(value).map(|s| s.as_str().to_owned()))
                    .ok()
            });
        Some(PeerCertificate {
            subject: subject.to_string(),
            common_name,
        })
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&settings.cert_file),
        Some(&settings.key_file),
        settings.ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

fn read_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn build(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    // ring, not aws-lc-rs: no C build beyond ring's own on a two-core
    // machine. rustls marks it deprecated because it has no post-quantum
    // key exchange; the classical groups (X25519, P-256, P-384) remain.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("certificate chain", &settings.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| read_error("private key", &settings.key_file, e))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config {
            reason: e.to_string(),
        })?;
    let builder = match (settings.client_auth, &settings.ca_file) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (auth, Some(ca_file)) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("CA certificates", ca_file)? {
                roots
                    .add(ca)
                    .map_err(|e| read_error("CA certificates", ca_file, e))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config {
                reason: e.to_string(),
            })?)
        }
        (_, None) => {
            return Err(TlsError::Config {
                reason: "client certificates need a CA file (tls.ca_file)".to_owned(),
            });
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config {
            reason: format!("the key does not fit the certificate, or either is unusable: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> TlsSettings {
        TlsSettings {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            ca_file: None,
            client_auth: ClientAuth::None,
            reload_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn missing_and_empty_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = Tls::load(settings(dir.path())).expect_err("no files");
        assert!(missing.to_string().contains("cert.pem"), "{missing}");
        std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").expect("write");
        let empty = Tls::load(settings(dir.path())).expect_err("no PEM");
        assert!(
            empty.to_string().contains("holds no certificate chain"),
            "{empty}"
        );
    }

    #[test]
    fn client_auth_names_parse() {
        assert_eq!(ClientAuth::parse("required"), Some(ClientAuth::Required));
        assert_eq!(ClientAuth::parse("optional"), Some(ClientAuth::Optional));
        assert_eq!(ClientAuth::parse("none"), Some(ClientAuth::None));
        assert_eq!(ClientAuth::parse("yes"), None);
    }
}
