//! SASL on a Kafka SASL_PLAINTEXT listener: a SaslHandshake for the
//! mechanism the first byte chooses (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512,
//! or one the broker does not offer), then the rest as the auth bytes of
//! SaslAuthenticate requests, through the real listener, the rsasl
//! mechanisms and the user lookups. Odd modes send the rest raw instead,
//! so unauthenticated requests and broken frames reach the gate too.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

const MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI"];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let harness = sluice_fuzz::harness();
    let bytes = if mode % 2 == 0 {
        sluice_fuzz::sasl_exchange(MECHANISMS[usize::from(mode / 2) % MECHANISMS.len()], rest)
    } else {
        sluice_fuzz::kafka_frames(rest)
    };
    sluice_fuzz::exchange(harness.kafka_sasl, &bytes, Duration::from_millis(500));
});
