//! One client connection: length-prefixed frames in, responses out, in
//! request order, with Produce durability waits and Fetch long polls
//! overlapping later requests (see [`Connection::run`]).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use sluice_core::{Broker, ConnectionHandle, RequestMetrics};
use sluice_tls::ServerStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::fetch_encode;
use crate::handlers::{self, Context};
use crate::listener::KafkaOptions;

/// Why a connection was closed by the broker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("socket error")]
    Io(#[from] std::io::Error),
    #[error("not a Kafka client: the connection opened with {protocol}")]
    WrongProtocol { protocol: &'static str },
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
    #[error("{api:?} before SASL authentication (or after it expired) on a {protocol} listener")]
    Unauthenticated { api: ApiKey, protocol: &'static str },
    #[error("a request's task failed: {reason}")]
    Task { reason: String },
    #[error("cannot encode {api:?} v{version} response: {reason}")]
    Encode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

impl ConnectionError {
    /// Whether the client just went away (end of stream mid-request, reset,
    /// broken pipe): nothing an operator needs to act on.
    pub(crate) fn is_disconnect(&self) -> bool {
        match self {
            ConnectionError::Io(error) => sluice_types::is_disconnect(error),
            _ => false,
        }
    }
}

/// What a connection's first four bytes say when they are not a Kafka size
/// prefix but another protocol's greeting: a browser, curl or a health
/// probe sent to the wrong port, a TLS client, an AMQP client. Read as a
/// size these would be a request of about a gigabyte.
fn foreign_protocol(first: [u8; 4]) -> Option<&'static str> {
    match &first {
        b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"OPTI" | b"PATC" | b"CONN" => {
            Some("an HTTP request")
        }
        b"PRI " => Some("an HTTP/2 preface"),
        b"AMQP" => Some("an AMQP protocol header"),
        [0x16, 0x03, ..] => Some("a TLS handshake (this listener does not speak TLS)"),
        _ => None,
    }
}

/// Largest request a SASL listener reads before the client authenticated
/// (Kafka's `sasl.server.max.receive.size` default).
const PRE_AUTH_MAX_BYTES: usize = 512 * 1024;

/// Responses a connection may owe at once; a client with more requests in
/// flight waits (TCP backpressure) until earlier ones are answered.
const MAX_IN_FLIGHT: usize = 64;

/// An encoded response: one or more chunks written back to back (a Fetch
/// passes its record bytes as chunks of their own, uncopied).
type Encoded = Vec<Bytes>;

/// A response due in request order: ready, or still being worked on.
enum Outcome {
    Ready(Option<Encoded>),
    Later(JoinHandle<Result<Option<Encoded>, ConnectionError>>),
}

pub(crate) struct Connection {
    stream: ServerStream,
    context: Context,
    shutdown: watch::Receiver<bool>,
    registration: ConnectionHandle,
}

/// Sets up the per-API request metrics, indexed like the handler table.
pub(crate) fn register_metrics(broker: &Broker) {
    broker.metrics().kafka.get_or_init(|| {
        RequestMetrics::new(
            handlers::SUPPORTED
                .iter()
                .map(|(api, _, _)| &*String::leak(format!("{api:?}")))
                .collect(),
        )
    });
}

impl Connection {
    pub(crate) fn new(
        stream: ServerStream,
        peer: std::net::SocketAddr,
        broker: Arc<Broker>,
        options: Arc<KafkaOptions>,
        shutdown: watch::Receiver<bool>,
        registration: ConnectionHandle,
        (inter_node, tls_user): (bool, Option<String>),
    ) -> Self {
        // An IPv4 client of a dual-stack listener as IPv4 (ACL hosts name it so).
        let peer = format!("/{}", peer.ip().to_canonical());
        Connection {
            stream,
            context: Context {
                broker,
                options,
                peer,
                connection: Some(Arc::clone(registration.stats())),
                inter_node,
                sasl: Arc::default(),
                tls_user,
                muted_until: Arc::default(),
            },
            shutdown,
            registration,
        }
    }

    /// Reads requests and writes responses, strictly in request order.
    /// Produce and Fetch may overlap with later requests: a Produce's
    /// batches are written before the next request is read (so appends keep
    /// the connection's order) and only its durability wait overlaps; a Fetch
    /// waits for data on its own. Everything else is handled in turn.
    pub(crate) async fn run(self) -> Result<(), ConnectionError> {
        let Connection {
            stream,
            context,
            mut shutdown,
            mut registration,
        } = self;
        let stats = Arc::clone(registration.stats());
        let written = Arc::clone(&stats);
        let broker = Arc::clone(&context.broker);
        let connection_id = stats.id();
        let (mut reader, mut writer) = stream.split();
        let (queue, mut due) = mpsc::channel::<Outcome>(MAX_IN_FLIGHT);
        let writing = async move {
            while let Some(outcome) = due.recv().await {
                let response = match outcome {
                    Outcome::Ready(response) => response,
                    Outcome::Later(task) => task.await.map_err(|err| ConnectionError::Task {
                        reason: err.to_string(),
                    })??,
                };
                for chunk in response.into_iter().flatten() {
                    writer.write_all(&chunk).await?;
                    written.add_bytes_out(chunk.len());
                }
                // TLS keeps what the socket did not take in its own
                // buffer until flushed (plain TCP has none): without this
                // the end of a response could wait for the next one.
                writer.flush().await?;
            }
            // TLS: close_notify, after the last answer (a refused
            // authentication's included).
            let _ = writer.shutdown().await;
            Ok::<(), ConnectionError>(())
        };
        let reading = async move {
            let mut first = true;
            loop {
                if !muted(&context, &mut shutdown, &mut registration).await {
                    return Ok(());
                }
                let mut size = [0u8; 4];
                let read = tokio::select! {
                    read = reader.read_exact(&mut size) => read,
                    _ = shutdown.changed() => return Ok(()),
                    reason = registration.close_requested() => {
                        tracing::info!(%reason, "closed through the admin API");
                        return Ok(());
                    }
                };
                match read {
                    Ok(_) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(err) => return Err(err.into()),
                }
                if std::mem::take(&mut first)
                    && let Some(protocol) = foreign_protocol(size)
                {
                    return Err(ConnectionError::WrongProtocol { protocol });
                }
                let size = i32::from_be_bytes(size);
                let limit = if context.sasl_gated() && !context.sasl_state().authenticated() {
                    // Before a client logged in, Kafka's
                    // sasl.server.max.receive.size: no unauthenticated
                    // client reserves 100 MiB.
                    context.options.max_request_bytes.min(PRE_AUTH_MAX_BYTES)
                } else {
                    context.options.max_request_bytes
                };
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
                reader.read_exact(&mut body).await?;
                stats.add_bytes_in(4 + len);
                // A fetch answered meanwhile may have throttled the client.
                if !muted(&context, &mut shutdown, &mut registration).await {
                    return Ok(());
                }
                let outcome = handle(&context, body.freeze()).await?;
                if queue.send(outcome).await.is_err() {
                    // The writer stopped on an error of its own.
                    return Ok(());
                }
                if context.sasl_gated() && context.sasl_state().must_close() {
                    // A failed authentication: its answer goes out, then
                    // the connection closes, as Kafka's does.
                    return Ok(());
                }
            }
        };
        // The reader ends first (end of stream, shutdown or error); the
        // writer then drains what is owed and ends when the queue closes.
        let (read, write) = tokio::join!(reading, writing);
        broker.share_groups().connection_closed(connection_id);
        read.and(write)
    }
}

/// Waits out a throttled client's mute (Kafka's muted channel, KIP-219);
/// false when the connection is to end instead.
async fn muted(
    context: &Context,
    shutdown: &mut watch::Receiver<bool>,
    registration: &mut ConnectionHandle,
) -> bool {
    let until = context
        .muted_until
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(until) = until else {
        return true;
    };
    tokio::select! {
        () = tokio::time::sleep_until(until) => true,
        _ = shutdown.changed() => false,
        reason = registration.close_requested() => {
            tracing::info!(%reason, "closed through the admin API");
            false
        }
    }
}

/// Runs `work`, counting only the time spent in its polls (the request
/// time a quota measures: not its waits for data, replicas or a
/// rebalance).
async fn polled<F: std::future::Future>(work: F) -> (F::Output, std::time::Duration) {
    let mut work = std::pin::pin!(work);
    let mut spent = std::time::Duration::ZERO;
    std::future::poll_fn(|cx| {
        let started = std::time::Instant::now();
        let polled = work.as_mut().poll(cx);
        spent += started.elapsed();
        polled.map(|output| (output, spent))
    })
    .await
}

/// Decodes one request and starts it; its response comes due in order.
async fn handle(context: &Context, mut body: Bytes) -> Result<Outcome, ConnectionError> {
    // `run` checked that the frame holds at least these 8 bytes.
    let request_bytes = body.len() + 4;
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
        return encode(api, 0, correlation_id, &response).map(|r| Outcome::Ready(Some(r)));
    }
    if !supported.is_some_and(|(min, max)| (min..=max).contains(&version)) {
        // Kafka closes the connection on an unsupported version of any
        // other API: the client should have asked ApiVersions first.
        return Err(ConnectionError::UnsupportedVersion { api, version });
    }
    if context.sasl_gated() && !context.sasl_state().admits(api) {
        return Err(ConnectionError::Unauthenticated {
            api,
            protocol: context.options.protocol.name(),
        });
    }
    let header_version = api.request_header_version(version);
    let header = RequestHeader::decode(&mut body, header_version).map_err(|err| {
        ConnectionError::Malformed {
            api,
            version,
            reason: err.to_string(),
        }
    })?;
    let request =
        RequestKind::decode(api, &mut body, version).map_err(|err| ConnectionError::Malformed {
            api,
            version,
            reason: err.to_string(),
        })?;
    if body.has_remaining() {
        tracing::debug!(
            ?api,
            version,
            trailing = body.remaining(),
            "request has trailing bytes"
        );
    }
    let correlation_id = header.correlation_id;
    tracing::debug!(?api, version, correlation_id, client_id = ?header.client_id, "request");
    if let (Some(stats), Some(client_id)) = (&context.connection, &header.client_id) {
        stats.update_details(|details| {
            if details.client_name.as_deref() != Some(client_id.as_str()) {
                details.client_name = Some(client_id.to_string());
            }
        });
    }
    let started = std::time::Instant::now();
    let metric = handlers::SUPPORTED
        .iter()
        .position(|(key, _, _)| *key == api);
    let observe = {
        let broker = Arc::clone(&context.broker);
        move || {
            if let (Some(index), Some(metrics)) = (metric, broker.metrics().kafka.get()) {
                metrics.observe(index, started.elapsed());
            }
        }
    };
    let client_id = header.client_id.as_deref().unwrap_or_default().to_owned();
    match request {
        RequestKind::Produce(request) => {
            let acks = request.acks;
            let (mut pending, took) =
                polled(handlers::produce::start(context, request, version)).await;
            pending.throttled(context.produce_throttle(
                &client_id,
                request_bytes,
                // Kafka counts no request time for acks=0.
                if acks == 0 {
                    std::time::Duration::ZERO
                } else {
                    took
                },
            ));
            Ok(Outcome::Later(tokio::spawn(async move {
                let finished = pending.finish().await;
                observe();
                match finished {
                    Some(response) => encode(
                        api,
                        version,
                        correlation_id,
                        &ResponseKind::Produce(response),
                    )
                    .map(Some),
                    None => Ok(None),
                }
            })))
        }
        RequestKind::Fetch(mut request) => {
            let context = context.clone();
            // No more than the consumer byte rate lets through in its
            // windows, or a small quota would never let a fetch pass.
            if let Some(cap) = context.fetch_bytes_cap(&client_id) {
                request.max_bytes = request.max_bytes.min(cap);
                for topic in &mut request.topics {
                    for partition in &mut topic.partitions {
                        partition.partition_max_bytes = partition.partition_max_bytes.min(cap);
                    }
                }
            }
            Ok(Outcome::Later(tokio::spawn(async move {
                let (response, took) =
                    polled(handlers::fetch::handle(&context, request, version)).await;
                observe();
                let building = std::time::Instant::now();
                let encoded = encode_fetch(correlation_id, version, &response)?;
                let bytes = encoded.iter().map(Bytes::len).sum();
                let throttle = context.fetch_throttle(&client_id, bytes, took + building.elapsed());
                match throttle {
                    handlers::quotas::FetchThrottle::None => Ok(Some(encoded)),
                    handlers::quotas::FetchThrottle::Sent(time) => {
                        let mut response = response;
                        response.throttle_time_ms = millis(time);
                        encode_fetch(correlation_id, version, &response).map(Some)
                    }
                    handlers::quotas::FetchThrottle::Empty(time) => {
                        // Over a quota: an empty answer, as Kafka's.
                        let empty = kafka_protocol::messages::FetchResponse::default()
                            .with_throttle_time_ms(millis(time))
                            .with_session_id(response.session_id);
                        encode_fetch(correlation_id, version, &empty).map(Some)
                    }
                }
            })))
        }
        request => {
            let exempt = matches!(
                api,
                ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
            );
            let (response, took) = polled(respond(
                context,
                request,
                api,
                version,
                correlation_id,
                &client_id,
            ))
            .await;
            observe();
            if !exempt {
                context.other_throttle(&client_id, took);
            }
            response.map(Outcome::Ready)
        }
    }
}

/// A fetch answer, encoded.
fn encode_fetch(
    correlation_id: i32,
    version: i16,
    response: &kafka_protocol::messages::FetchResponse,
) -> Result<Encoded, ConnectionError> {
    match fetch_encode::encode(correlation_id, version, response) {
        Some(chunks) => Ok(chunks),
        None => encode(
            ApiKey::Fetch,
            version,
            correlation_id,
            &ResponseKind::Fetch(response.clone()),
        ),
    }
}

/// A throttle time as Kafka's `throttle_time_ms`.
fn millis(time: std::time::Duration) -> i32 {
    i32::try_from(time.as_millis()).unwrap_or(i32::MAX)
}

async fn respond(
    context: &Context,
    request: RequestKind,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<Option<Encoded>, ConnectionError> {
    match handlers::dispatch(context, request, version, client_id).await {
        Some(response) => encode(api, version, correlation_id, &response).map(Some),
        None => Ok(None),
    }
}

fn encode(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<Encoded, ConnectionError> {
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
    Ok(vec![out.freeze()])
}

#[cfg(test)]
mod tests {
    use super::foreign_protocol;

    #[test]
    fn other_protocols_greetings_are_recognised() {
        assert_eq!(foreign_protocol(*b"GET "), Some("an HTTP request"));
        assert_eq!(foreign_protocol(*b"POST"), Some("an HTTP request"));
        assert_eq!(foreign_protocol(*b"AMQP"), Some("an AMQP protocol header"));
        assert!(foreign_protocol([0x16, 0x03, 0x01, 0x02]).is_some_and(|p| p.contains("TLS")));
        // Real size prefixes up to 100 MiB start with 0x00 to 0x06.
        assert_eq!(foreign_protocol(100u32.to_be_bytes()), None);
        assert_eq!(foreign_protocol((100u32 << 20).to_be_bytes()), None);
    }
}
