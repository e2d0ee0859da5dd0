//! STOMP through the real listener, the frame parser and the connection.
//! The first byte chooses: even, a valid STOMP 1.2 CONNECT as guest comes
//! first; odd, the rest is all the client sends.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

const CONNECT: &[u8] = b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let harness = sluice_fuzz::harness();
    let mut bytes = Vec::with_capacity(rest.len() + CONNECT.len());
    if mode % 2 == 0 {
        bytes.extend_from_slice(CONNECT);
    }
    bytes.extend_from_slice(rest);
    sluice_fuzz::exchange(harness.stomp, &bytes, Duration::from_millis(500));
});
