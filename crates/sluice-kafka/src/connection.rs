//! One client connection: length-prefixed frames in, responses out, in
//! request order. A request is handled before the next is read, as Kafka
//! brokers do (they mute a connection while its request is in flight), so a
//! long-polling Fetch delays only its own connection.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use sluice_core::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::handlers::{self, Context};
use crate::listener::KafkaOptions;

/// Why a connection was closed by the broker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: i64, limit: usize },
    #[error("negative request size {size}")]
    NegativeSize { size: i32 },
    #[error("frame of {size} bytes is too short for a request header")]
    TooShort { size: usize },
    #[error("unknown api key {api_key}")]
    UnknownApi { api_key: i16 },
    #[error("{api:?} v{version} is not supported")]
    UnsupportedVersion { api: ApiKey, version: i16 },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("cannot encode {api:?} v{version} response: {reason}")]
    Encode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

pub(crate) struct Connection {
    stream: TcpStream,
    context: Context,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    pub(crate) fn new(
        stream: TcpStream,
        broker: Arc<Broker>,
        options: Arc<KafkaOptions>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| String::new(), |addr| format!("/{}", addr.ip()));
        Connection {
            stream,
            context: Context {
                broker,
                options,
                peer,
            },
            shutdown,
        }
    }

    pub(crate) async fn run(mut self) -> Result<(), ConnectionError> {
        loop {
            let mut size = [0u8; 4];
            let read = tokio::select! {
                read = self.stream.read_exact(&mut size) => read,
                _ = self.shutdown.changed() => return Ok(()),
            };
            match read {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(err) => return Err(err.into()),
            }
            let size = i32::from_be_bytes(size);
            let limit = self.context.options.max_request_bytes;
            let Ok(len) = usize::try_from(size) else {
                return Err(ConnectionError::NegativeSize { size });
            };
            if len > limit {
                return Err(ConnectionError::TooLarge {
                    size: i64::from(size),
                    limit,
                });
            }
            if len < 8 {
                return Err(ConnectionError::TooShort { size: len });
            }
            let mut body = BytesMut::zeroed(len);
            self.stream.read_exact(&mut body).await?;
            if let Some(response) = self.handle(body.freeze()).await? {
                self.stream.write_all(&response).await?;
            }
        }
    }

    /// Decodes, dispatches and encodes one request; `None` when no response
    /// is due (Produce with acks=0).
    async fn handle(&mut self, mut body: Bytes) -> Result<Option<BytesMut>, ConnectionError> {
        // `run` checked that the frame holds at least these 8 bytes.
        let mut fixed = body.clone();
        let api_key = fixed.get_i16();
        let version = fixed.get_i16();
        let correlation_id = fixed.get_i32();
        let api = ApiKey::try_from(api_key).map_err(|_| ConnectionError::UnknownApi { api_key })?;
        let supported = handlers::supported_versions(api);
        if api == ApiKey::ApiVersions
            && !supported.is_some_and(|(min, max)| (min..=max).contains(&version))
        {
            // KIP-511: answer an unknown ApiVersions version with v0 and
            // UNSUPPORTED_VERSION, so the client can retry with one we know.
            let response = handlers::api_versions::unsupported();
            return encode(api, 0, correlation_id, &response).map(Some);
        }
        if !supported.is_some_and(|(min, max)| (min..=max).contains(&version)) {
            // Kafka closes the connection on an unsupported version of any
            // other API: the client should have asked ApiVersions first.
            return Err(ConnectionError::UnsupportedVersion { api, version });
        }
        let header_version = api.request_header_version(version);
        let header = RequestHeader::decode(&mut body, header_version).map_err(|err| {
            ConnectionError::Malformed {
                api,
                version,
                reason: err.to_string(),
            }
        })?;
        let request = RequestKind::decode(api, &mut body, version).map_err(|err| {
            ConnectionError::Malformed {
                api,
                version,
                reason: err.to_string(),
            }
        })?;
        if body.has_remaining() {
            tracing::debug!(
                ?api,
                version,
                trailing = body.remaining(),
                "request has trailing bytes"
            );
        }
        let span = tracing::debug_span!("request", api = ?api, version, correlation_id = header.correlation_id);
        let _entered = span.enter();
        tracing::debug!(client_id = ?header.client_id, "request");
        drop(_entered);
        let client_id = header.client_id.as_deref().unwrap_or_default().to_owned();
        let response = handlers::dispatch(&self.context, request, version, &client_id).await;
        match response {
            Some(response) => encode(api, version, header.correlation_id, &response).map(Some),
            None => Ok(None),
        }
    }
}

fn encode(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &kafka_protocol::messages::ResponseKind,
) -> Result<BytesMut, ConnectionError> {
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut out, api.response_header_version(version))
        .map_err(|e| ConnectionError::Encode {
            api,
            version,
            reason: e.to_string(),
        })?;
    response
        .encode(&mut out, version)
        .map_err(|e| ConnectionError::Encode {
            api,
            version,
            reason: e.to_string(),
        })?;
    let len = (out.len() - 4) as i32;
    if let Some(prefix) = out.get_mut(..4) {
        prefix.copy_from_slice(&len.to_be_bytes());
    }
    Ok(out)
}
