//! What the fuzz targets share: one real broker per fuzzing process, with
//! its Kafka and AMQP listeners on loopback ports, and a way to throw bytes
//! at a listener. Inputs go through the real sockets, framing, decoders,
//! dispatch and connection state machines; a panic anywhere in the broker
//! (any thread) aborts the process, which libFuzzer reports as a crash.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sluice_core::{Broker, BrokerOptions};

/// The broker binary's allocator, so the targets see what it sees.
#[global_allocator]
static ALLOCATOR: sluice_alloc::Allocator = sluice_alloc::Allocator;

/// The broker under fuzzing and where it listens.
pub struct Harness {
    pub kafka: SocketAddr,
    pub amqp: SocketAddr,
    pub mqtt: SocketAddr,
    pub stomp: SocketAddr,
    /// A Kafka SASL_PLAINTEXT listener.
    pub kafka_sasl: SocketAddr,
    /// A Kafka SSL listener (a self-signed certificate made at start).
    pub kafka_tls: SocketAddr,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// The process's broker, started on first use.
pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Broker::open(BrokerOptions {
            log: sluice_log::LogConfig {
                // Fuzzing measures reach, not durability: no fsyncs.
                durability: sluice_log::Durability::Never,
                segment_bytes: 1 << 20,
                ..sluice_log::LogConfig::default()
            },
            default_partitions: 2,
            memory_high_watermark: 64 << 20,
            ..BrokerOptions::new(dir.path())
        })
        .expect("open broker");
        // Inputs fail logins on purpose, thousands of times a second.
        broker.users().disable_failure_delay();
        let broker = Arc::new(broker);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tls = self_signed_tls(dir.path());
        let (kafka, amqp, mqtt, stomp, kafka_sasl, kafka_tls) = runtime.block_on(async {
            let kafka = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let amqp = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let mqtt = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let stomp = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addresses = (
                kafka.local_addr().expect("address"),
                amqp.local_addr().expect("address"),
                mqtt.local_addr().expect("address"),
                stomp.local_addr().expect("address"),
            );
            let options = sluice_kafka::KafkaOptions {
                advertised_host: "127.0.0.1".to_owned(),
                advertised_port: addresses.0.port(),
                node_id: 1,
                max_request_bytes: 1 << 20,
                listener_name: "PLAINTEXT".to_owned(),
                protocol: sluice_kafka::SecurityProtocol::Plaintext,
                sasl: sluice_kafka::SaslOptions::default(),
                tls: None,
                principal_rules: sluice_kafka::PrincipalRules::default(),
                authorizer: None,
            };
            let mut secured = Vec::new();
            for protocol in [
                sluice_kafka::SecurityProtocol::SaslPlaintext,
                sluice_kafka::SecurityProtocol::Ssl,
            ] {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let address = listener.local_addr().expect("address");
                secured.push(address);
                tokio::spawn(sluice_kafka::serve(
                    listener,
                    Arc::clone(&broker),
                    sluice_kafka::KafkaOptions {
                        advertised_port: address.port(),
                        listener_name: protocol.name().to_owned(),
                        protocol,
                        tls: protocol.tls().then(|| Arc::clone(&tls)),
                        // The SASL listener authorizes by ACLs too.
                        authorizer: protocol
                            .sasl()
                            .then(|| Arc::new(sluice_kafka::AuthorizerOptions::default())),
                        ..options.clone()
                    },
                    stopped.clone(),
                ));
            }
            tokio::spawn(sluice_kafka::serve(
                kafka,
                Arc::clone(&broker),
                options,
                stopped.clone(),
            ));
            tokio::spawn(sluice_amqp::serve(
                amqp,
                Arc::clone(&broker),
                sluice_amqp::AmqpOptions::default(),
                None,
                stopped.clone(),
            ));
            tokio::spawn(sluice_mqtt::serve(
                mqtt,
                Arc::clone(&broker),
                sluice_mqtt::MqttNode::new(sluice_mqtt::MqttOptions {
                    max_packet_size: 1 << 20,
                    ..sluice_mqtt::MqttOptions::default()
                }),
                None,
                stopped.clone(),
            ));
            tokio::spawn(sluice_stomp::serve(
                stomp,
                Arc::clone(&broker),
                sluice_stomp::StompOptions {
                    max_body_bytes: 1 << 20,
                    ..sluice_stomp::StompOptions::default()
                },
                None,
                stopped,
            ));
            (
                addresses.0,
                addresses.1,
                addresses.2,
                addresses.3,
                secured[0],
                secured[1],
            )
        });
        Harness {
            kafka,
            amqp,
            mqtt,
            stomp,
            kafka_sasl,
            kafka_tls,
            _runtime: runtime,
            _dir: dir,
            _stop: stop,
        }
    })
}

/// A TLS configuration with a self-signed certificate for localhost,
/// made now (no key material in the repository).
fn self_signed_tls(dir: &std::path::Path) -> Arc<sluice_tls::Tls> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let cert_file = dir.join("fuzz-cert.pem");
    let key_file = dir.join("fuzz-key.pem");
    std::fs::write(&cert_file, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("write key");
    sluice_tls::Tls::load(sluice_tls::TlsSettings {
        cert_file,
        key_file,
        ca_file: None,
        client_auth: sluice_tls::ClientAuth::None,
        reload_interval: Duration::from_secs(3600),
    })
    .expect("TLS configuration")
}

/// A Kafka request frame (header v1: api key, version, correlation id,
/// client id) with `body`.
fn request_frame(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let client = b"fuzz";
    let mut frame = Vec::with_capacity(body.len() + 20);
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(&(client.len() as i16).to_be_bytes());
    frame.extend_from_slice(client);
    frame.extend_from_slice(body);
    let mut out = (frame.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

/// A SASL exchange: SaslHandshake v1 for `mechanism`, then each chunk of
/// `data` (split as [`kafka_frames`] splits) as the auth bytes of a
/// SaslAuthenticate v1, so the fuzzer works on the mechanisms' parsers.
pub fn sasl_exchange(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = (mechanism.len() as i16).to_be_bytes().to_vec();
    body.extend_from_slice(mechanism.as_bytes());
    let mut out = request_frame(17, 1, 1, &body);
    let mut rest = data;
    let mut correlation_id = 2;
    while let Some((&len, tail)) = rest.split_first() {
        let chunk = &tail[..tail.len().min(usize::from(len))];
        let mut body = (chunk.len() as i32).to_be_bytes().to_vec();
        body.extend_from_slice(chunk);
        out.extend_from_slice(&request_frame(36, 1, correlation_id, &body));
        correlation_id += 1;
        rest = &tail[chunk.len()..];
    }
    out
}

/// Connects to `address`, writes `bytes`, half-closes, and reads whatever
/// comes back until the broker closes the connection or `wait` passes.
/// Returns the bytes read.
pub fn exchange(address: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(5)) else {
        return Vec::new();
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(wait));
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + wait;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer
}

/// Splits `data` into Kafka request frames: each chunk is `[len:u8][len
/// bytes]` and goes out as `[len:i32][bytes]`, so that the fuzzer spends its
/// time on request bodies rather than on the size prefix.
pub fn kafka_frames(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let body = &tail[..tail.len().min(usize::from(len))];
        out.extend_from_slice(&(body.len() as i32).to_be_bytes());
        out.extend_from_slice(body);
        rest = &tail[body.len()..];
    }
    out
}

/// An MQTT CONNECT as guest (`version` 4: 3.1.1, 5: 5.0, with an empty
/// property list), clean session, no keep alive, so inputs can start at
/// the session.
pub fn mqtt_connect(version: u8) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', version, 0xC2, 0, 0];
    if version == 5 {
        body.push(0);
    }
    for field in [&b"fuzz"[..], b"guest", b"guest"] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// The client side of an AMQP handshake (protocol header, start-ok as
/// guest, tune-ok, open "/", channel.open 1), so inputs can start at the
/// channel state machine.
pub fn amqp_handshake() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
        use amq_protocol::protocol::{AMQPClass, channel, connection};
        let frames = [
            AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                    client_properties: Default::default(),
                    mechanism: "PLAIN".into(),
                    response: "\0guest\0guest".into(),
                    locale: "en_US".into(),
                })),
            ),
            AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max: 2047,
                    frame_max: 131_072,
                    heartbeat: 0,
                })),
            ),
            AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: "/".into(),
                })),
            ),
            AMQPFrame::Method(
                1,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            ),
        ];
        let mut out = b"AMQP\x00\x00\x09\x01".to_vec();
        for frame in &frames {
            let written = gen_frame(frame)(WriteContext::from(Vec::new())).expect("encode frame");
            out.extend_from_slice(&written.write);
        }
        out
    })
}
