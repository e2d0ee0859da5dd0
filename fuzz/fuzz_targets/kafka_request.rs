//! Kafka requests through the real listener, framing, decoders and
//! handlers. The first byte chooses: even, the rest is framed into
//! size-prefixed requests (`sluice_fuzz::kafka_frames`); odd, the rest is
//! sent raw (size prefixes included, whatever they say).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let harness = sluice_fuzz::harness();
    let bytes = if mode % 2 == 0 {
        sluice_fuzz::kafka_frames(rest)
    } else {
        rest.to_vec()
    };
    sluice_fuzz::exchange(harness.kafka, &bytes, Duration::from_millis(500));
});
