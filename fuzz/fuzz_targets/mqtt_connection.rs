//! MQTT through the real listener, the codec and the session. The first
//! byte chooses: 0 mod 3, a valid MQTT 3.1.1 CONNECT comes first; 1 mod 3,
//! an MQTT 5.0 one; else the rest is all the client sends.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let harness = sluice_fuzz::harness();
    let mut bytes = match mode % 3 {
        0 => sluice_fuzz::mqtt_connect(4),
        1 => sluice_fuzz::mqtt_connect(5),
        _ => Vec::new(),
    };
    bytes.extend_from_slice(rest);
    sluice_fuzz::exchange(harness.mqtt, &bytes, Duration::from_millis(500));
});
