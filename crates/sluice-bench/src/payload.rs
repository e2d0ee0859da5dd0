//! What every benchmark message carries, so that the consumer can check it.
//!
//! Layout: `[producer:4][sequence:8][sent_at_ns:8][filler…]`, big-endian;
//! the filler byte at position `i` is `(sequence + i) as u8`, so a damaged
//! byte anywhere is noticed. `sent_at_ns` counts from the tool's start
//! (one process sends and receives, so one monotonic clock serves both).

use std::sync::OnceLock;
use std::time::Instant;

pub(crate) const HEADER: usize = 20;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Nanoseconds since the tool started.
pub(crate) fn now_ns() -> u64 {
    u64::try_from(start().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A message of `size` bytes (at least the header).
pub(crate) fn build(producer: u32, sequence: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(HEADER));
    out.extend_from_slice(&producer.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&now_ns().to_be_bytes());
    for i in HEADER..size.max(HEADER) {
        out.push(sequence.wrapping_add(i as u64) as u8);
    }
    out
}

/// A checked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    pub(crate) producer: u32,
    pub(crate) sequence: u64,
    pub(crate) sent_at_ns: u64,
}

/// Reads and checks a message; `None` if it is damaged or of another size.
pub(crate) fn check(bytes: &[u8], size: usize) -> Option<Checked> {
    if bytes.len() != size.max(HEADER) {
        return None;
    }
    let producer = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?);
    let sequence = u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?);
    let sent_at_ns = u64::from_be_bytes(bytes.get(12..20)?.try_into().ok()?);
    let filler_ok = bytes
        .iter()
        .enumerate()
        .skip(HEADER)
        .all(|(i, b)| *b == sequence.wrapping_add(i as u64) as u8);
    filler_ok.then_some(Checked {
        producer,
        sequence,
        sent_at_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_messages_check_and_damage_is_caught() {
        let message = build(3, 77, 64);
        let checked = check(&message, 64).expect("intact");
        assert_eq!((checked.producer, checked.sequence), (3, 77));
        for at in 0..message.len() {
            let mut damaged = message.clone();
            if let Some(byte) = damaged.get_mut(at) {
                *byte ^= 0xff;
            }
            let result = check(&damaged, 64);
            // Header bytes change the identity; filler bytes fail the check.
            assert!(result != Some(checked), "flip at {at} went unnoticed");
        }
        assert!(check(&message, 65).is_none(), "wrong size");
    }
}
