//! The admin API over plain HTTP/1.1 (ureq): basic authentication, JSON in
//! and out, and every answer that is not a success turned into a
//! [`CliError`] with its exit code. Requests carry no proxy settings from
//! the environment: the broker is addressed directly.

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::args::ApiArgs;
use crate::error::{CliError, CliResult};

/// How long connecting to the broker may take before it counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take; a large produce waits for its fsync.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read; a page of 1000 large records fits.
const MAX_ANSWER_BYTES: u64 = 512 << 20;
/// The page size lists are fetched with (the API's maximum).
const PAGE_SIZE: usize = 1000;
/// Most pages one list fetches: a million items.
const MAX_PAGES: usize = 1000;

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// The certificates of the PEM file `path` as TLS roots; `None` (after
/// saying why on stderr) when it cannot be read or holds none, so the
/// request fails on the untrusted certificate with the usual message.
fn trusted_roots(path: &std::path::Path) -> Option<ureq::tls::RootCerts> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(error) => {
            eprintln!("warning: cannot read --cacert {}: {error}", path.display());
            return None;
        }
    };
    let certificates: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(certificate)) => Some(certificate),
            _ => None,
        })
        .collect();
    if certificates.is_empty() {
        eprintln!("warning: --cacert {} holds no certificate", path.display());
        return None;
    }
    Some(certificates.into())
}

/// A connection to one broker's admin API.
#[derive(Debug)]
pub(crate) struct Api {
    agent: ureq::Agent,
    /// `http://HOST:PORT`, no trailing slash.
    base: String,
    /// `HOST:PORT`, for messages.
    address: String,
    user: String,
    authorization: String,
}

impl Api {
    pub(crate) fn new(args: &ApiArgs) -> Api {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(roots) = args.cacert.as_deref().and_then(trusted_roots) {
            tls = tls.root_certs(roots);
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("sluice-cli/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build();
        let credentials = format!("{}:{}", args.user.name, args.user.password);
        Api {
            agent: ureq::Agent::new_with_config(config),
            base: args.http.base.clone(),
            address: args.http.address.clone(),
            user: args.user.name.clone(),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
        }
    }

    /// `GET path?query`.
    pub(crate) fn get(&self, path: &str, query: &[(&str, String)]) -> CliResult<Value> {
        self.call(Method::Get, path, query, None)
    }

    /// Every item of a paged list (`{"items", "total", …}`), fetched page
    /// by page, answered as `{"items": [...], "total": N}`.
    pub(crate) fn list(&self, path: &str, query: &[(&str, String)]) -> CliResult<Value> {
        let mut items = Vec::new();
        let mut total = 0;
        for page in 1..=MAX_PAGES {
            let mut paged = query.to_vec();
            paged.push(("page", page.to_string()));
            paged.push(("page_size", PAGE_SIZE.to_string()));
            let answer = self.get(path, &paged)?;
            let Some(page_items) = answer["items"].as_array() else {
                return Err(self.not_api("a list answer without items"));
            };
            total = answer["total"].as_u64().unwrap_or(0);
            let count = page_items.len();
            items.extend(page_items.iter().cloned());
            if count < PAGE_SIZE || items.len() as u64 >= total {
                break;
            }
        }
        Ok(json!({"items": items, "total": total}))
    }

    /// A request with a JSON body; the answer's JSON, `null` when empty.
    pub(crate) fn send(&self, method: Method, path: &str, body: &Value) -> CliResult<Value> {
        self.call(method, path, &[], Some(body))
    }

    /// `POST path?query` with a JSON body; the answer's JSON.
    pub(crate) fn post_query(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &Value,
    ) -> CliResult<Value> {
        self.call(Method::Post, path, query, Some(body))
    }

    /// `DELETE path?query`; the answer's JSON, `null` when empty (204).
    pub(crate) fn delete(&self, path: &str, query: &[(&str, String)]) -> CliResult<Value> {
        self.call(Method::Delete, path, query, None)
    }

    /// `GET /api/health/ready`: the readiness answer, which a `503` carries
    /// as well as a `200`; `None` from a broker without the route.
    pub(crate) fn readiness(&self) -> CliResult<Option<Value>> {
        let path = "/api/health/ready";
        let (status, bytes) = self.exchange(Method::Get, path, &[], None)?;
        match status {
            200 | 503 => match serde_json::from_slice::<Value>(&bytes) {
                Ok(value) if value["status"].is_string() => Ok(Some(value)),
                _ => Err(self.not_api("GET /api/health/ready answered without its JSON")),
            },
            404 => Ok(None),
            _ => self.answer(Method::Get, path, status, &bytes).map(Some),
        }
    }

    /// A request with a JSON body (`body_text`, already serialised); the
    /// answer's JSON. For producers that build large bodies on another
    /// thread.
    pub(crate) fn send_text(&self, path: &str, body_text: String) -> CliResult<Value> {
        let (status, bytes) = self.exchange_text(Method::Post, path, &[], Some(body_text))?;
        self.answer(Method::Post, path, status, &bytes)
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> CliResult<Value> {
        let (status, bytes) = self.exchange(method, path, query, body)?;
        self.answer(method, path, status, &bytes)
    }

    fn exchange(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> CliResult<(u16, Vec<u8>)> {
        self.exchange_text(method, path, query, body.map(Value::to_string))
    }

    /// One request; the status and body of the answer.
    fn exchange_text(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<String>,
    ) -> CliResult<(u16, Vec<u8>)> {
        let mut url = format!("{}{path}", self.base);
        for (index, (name, value)) in query.iter().enumerate() {
            url.push(if index == 0 { '?' } else { '&' });
            url.push_str(&encode_component(name));
            url.push('=');
            url.push_str(&encode_component(value));
        }
        let request = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(&url)
            .header("authorization", &self.authorization)
            .header("accept", "application/json");
        let sent = match body {
            None => request.body(()).map(|request| self.agent.run(request)),
            Some(body) => request
                .header("content-type", "application/json")
                .body(body)
                .map(|request| self.agent.run(request)),
        };
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(self.transport(error)),
            Err(error) => {
                return Err(CliError::Local(anyhow::anyhow!(
                    "cannot build a request for {url}: {error}"
                )));
            }
        };
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|error| self.transport(error))?;
        Ok((status, bytes))
    }

    /// An answer as the API's JSON, or the error its status means.
    fn answer(&self, method: Method, path: &str, status: u16, bytes: &[u8]) -> CliResult<Value> {
        let parsed: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            serde_json::from_slice(bytes).ok()
        };
        match status {
            200..=299 => match parsed {
                Some(value) => Ok(value),
                None if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Value::Null),
                None => Err(self.not_api(&format!(
                    "{} {path} answered {status} without JSON",
                    method.as_str()
                ))),
            },
            401 => Err(CliError::Unauthorized {
                user: self.user.clone(),
                message: error_message(parsed.as_ref())
                    .unwrap_or_else(|| "401 Unauthorized".to_owned()),
            }),
            400..=499 => {
                let Some(message) = error_message(parsed.as_ref()) else {
                    return Err(self.not_api(&format!(
                        "{} {path} answered {status} without the API's error JSON",
                        method.as_str()
                    )));
                };
                let name = parsed
                    .as_ref()
                    .and_then(|value| value["error"]["name"].as_str())
                    .unwrap_or_default();
                Err(CliError::Refused {
                    message,
                    hint: hint(path, name),
                })
            }
            500..=599 => Err(CliError::Server {
                status,
                message: error_message(parsed.as_ref()).unwrap_or_else(|| {
                    String::from_utf8_lossy(bytes)
                        .chars()
                        .take(200)
                        .collect::<String>()
                }),
            }),
            _ => Err(self.not_api(&format!(
                "{} {path} answered HTTP {status}",
                method.as_str()
            ))),
        }
    }

    /// The answer is not the admin API's; when the address turns out to
    /// be a Kafka or AMQP listener, that is the error.
    fn not_api(&self, detail: &str) -> CliError {
        if let Some(protocol) = identify(&self.address) {
            return CliError::WrongPort {
                address: self.address.clone(),
                protocol,
            };
        }
        CliError::NotApi {
            address: self.address.clone(),
            detail: detail.to_owned(),
        }
    }

    fn transport(&self, error: ureq::Error) -> CliError {
        let detail = match error {
            ureq::Error::Protocol(error) => {
                return self.not_api(&format!("no HTTP answer ({error})"));
            }
            ureq::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof => {
                    // A Kafka listener drops a request it cannot frame.
                    if let Some(protocol) = identify(&self.address) {
                        return CliError::WrongPort {
                            address: self.address.clone(),
                            protocol,
                        };
                    }
                    "the connection was closed without an answer".to_owned()
                }
                _ => io.to_string(),
            },
            ureq::Error::Timeout(which) => format!("no answer in time ({which})"),
            ureq::Error::HostNotFound => "host not found".to_owned(),
            ureq::Error::BodyExceedsLimit(limit) => {
                return self.not_api(&format!("an answer larger than {limit} bytes"));
            }
            other => other.to_string(),
        };
        CliError::Unreachable {
            address: self.address.clone(),
            detail,
        }
    }
}

/// How long the probe behind [`identify`] waits for each step.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The correlation id of the probe's Kafka request.
const PROBE_CORRELATION_ID: [u8; 4] = *b"SLC1";
/// A Kafka ApiVersions v0 request (header v1, client id `sluice-cli`).
/// Layout: `[size:4][api_key=18:2][api_version=0:2][correlation_id:4][client_id_len:2][client_id]`.
const PROBE_REQUEST: [u8; 24] = [
    0, 0, 0, 20, 0, 18, 0, 0, b'S', b'L', b'C', b'1', 0, 10, b's', b'l', b'u', b'i', b'c', b'e',
    b'-', b'c', b'l', b'i',
];

/// What speaks at `address` when HTTP got no proper answer: `Kafka` or
/// `AMQP`, told apart by one Kafka ApiVersions request. A Kafka listener
/// answers it with the same correlation id; an AMQP server answers bytes
/// that are not its protocol header with its own, `AMQP\0\0\x09\x01`.
fn identify(address: &str) -> Option<&'static str> {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpStream, ToSocketAddrs as _};

    let target = address.to_socket_addrs().ok()?.next()?;
    let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.write_all(&PROBE_REQUEST).ok()?;
    let mut answer = [0u8; 8];
    let mut filled = 0;
    while filled < answer.len() {
        match stream.read(answer.get_mut(filled..)?) {
            Ok(0) | Err(_) => break,
            Ok(read) => filled += read,
        }
    }
    protocol_of(answer.get(..filled)?)
}

/// The protocol an answer to [`PROBE_REQUEST`] shows.
fn protocol_of(answer: &[u8]) -> Option<&'static str> {
    if answer.starts_with(b"AMQP") {
        Some("AMQP")
    } else if answer.get(4..8) == Some(&PROBE_CORRELATION_ID[..]) {
        Some("Kafka")
    } else {
        None
    }
}

/// The `message` of the API's error body.
fn error_message(body: Option<&Value>) -> Option<String> {
    body.and_then(|value| value["error"]["message"].as_str())
        .map(str::to_owned)
}

/// What to run next when the API refuses a request on `path`.
fn hint(path: &str, error_name: &str) -> Option<String> {
    let resource = path
        .strip_prefix("/api/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    let listing = match resource {
        "topics" => "sluice topics list",
        "groups" => "sluice groups list",
        "queues" => "sluice queues list",
        "exchanges" => "sluice exchanges list",
        "bindings" => "sluice bindings list",
        "connections" => "sluice connections list",
        _ => return None,
    };
    match error_name {
        "not_found" => Some(format!("`{listing}` shows what exists")),
        "already_exists" => Some(format!(
            "`{listing}` shows what exists; delete it first or pick another name"
        )),
        _ => None,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a
/// path segment or a query component: a vhost `/` becomes `%2F`.
pub(crate) fn encode_component(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode_component("/"), "%2F");
        assert_eq!(encode_component("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode_component("orders-1.v2_x~"), "orders-1.v2_x~");
        assert_eq!(encode_component("é"), "%C3%A9");
    }

    #[test]
    fn refusals_point_at_the_list_command() {
        assert_eq!(
            hint("/api/topics/nope", "not_found").as_deref(),
            Some("`sluice topics list` shows what exists")
        );
        assert!(hint("/api/topics", "already_exists").is_some());
        assert_eq!(hint("/api/overview", "not_found"), None);
        assert_eq!(hint("/api/topics/x", "invalid_field"), None);
    }

    #[test]
    fn probe_answers_name_the_protocol() {
        assert_eq!(protocol_of(b"AMQP\x00\x00\x09\x01"), Some("AMQP"));
        assert_eq!(protocol_of(b"\x00\x00\x01\x00SLC1"), Some("Kafka"));
        assert_eq!(protocol_of(b"HTTP/1.1"), None);
        assert_eq!(protocol_of(b""), None);
        let size = u32::from_be_bytes([0, 0, 0, 20]) as usize;
        assert_eq!(PROBE_REQUEST.len(), size + 4);
    }

    #[test]
    fn error_message_reads_the_error_body() {
        let body = json!({"error": {"code": 3, "name": "not_found", "message": "no topic"}});
        assert_eq!(error_message(Some(&body)).as_deref(), Some("no topic"));
        assert_eq!(error_message(Some(&json!({"x": 1}))), None);
        assert_eq!(error_message(None), None);
    }
}
