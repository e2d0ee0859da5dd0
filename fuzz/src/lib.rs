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
        let broker = Arc::new(broker);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (kafka, amqp) = runtime.block_on(async {
            let kafka = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let amqp = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addresses = (
                kafka.local_addr().expect("address"),
                amqp.local_addr().expect("address"),
            );
            let options = sluice_kafka::KafkaOptions {
                advertised_host: "127.0.0.1".to_owned(),
                advertised_port: addresses.0.port(),
                node_id: 1,
                max_request_bytes: 1 << 20,
            };
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
                stopped,
            ));
            addresses
        });
        Harness {
            kafka,
            amqp,
            _runtime: runtime,
            _dir: dir,
            _stop: stop,
        }
    })
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
