//! Helpers shared by the core integration tests.

#![allow(unreachable_pub)]

use bytes::BytesMut;
use sluice_core::records::{NewRecord, encode};

/// A batch of one record holding `value`, timestamped 1,000.
pub fn one(value: &[u8]) -> BytesMut {
    encode(&[NewRecord {
        key: None,
        value: Some(value),
        timestamp: 1_000,
    }])
    .expect("encode")
}
