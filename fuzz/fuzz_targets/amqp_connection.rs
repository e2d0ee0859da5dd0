//! AMQP 0-9-1 through the real listener, frame parser and the connection
//! and channel state machines. The first byte chooses: even, a valid
//! handshake (header, start-ok, tune-ok, open, channel.open 1) comes first
//! and the rest follows as frames; odd, the rest is all the client sends.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let harness = sluice_fuzz::harness();
    let mut bytes = Vec::with_capacity(rest.len() + 128);
    if mode % 2 == 0 {
        bytes.extend_from_slice(sluice_fuzz::amqp_handshake());
    }
    bytes.extend_from_slice(rest);
    sluice_fuzz::exchange(harness.amqp, &bytes, Duration::from_millis(500));
});
