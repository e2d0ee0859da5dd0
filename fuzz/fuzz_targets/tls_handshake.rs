//! Bytes at a Kafka SSL listener: rustls's record layer and handshake
//! parser, the handshake timeout and the connection's end, through the
//! real listener. Whatever arrives, the broker must answer with a TLS
//! alert or a closed connection, never a panic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let harness = sluice_fuzz::harness();
    sluice_fuzz::exchange(harness.kafka_tls, data, Duration::from_millis(300));
});
