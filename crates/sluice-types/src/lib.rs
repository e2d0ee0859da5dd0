//! Typed ids and small value types shared by every Sluice crate.
//!
//! Nothing here does I/O or knows a protocol. Ids are newtypes with no
//! `Deref` to the number: convert with `From`, `TryFrom`, `FromStr` or
//! `Display`, so an offset cannot be passed where a partition is meant.

mod clock;
mod errors;
mod histogram;

use std::fmt;

pub use clock::{Clock, ManualClock, SystemClock};
pub use errors::{ErrorChain, is_disconnect};
pub use histogram::{COUNT_BOUNDS, Histogram, HistogramSnapshot, LATENCY_BOUNDS_MICROS};
use std::str::FromStr;

/// Error for a string that does not parse as one of the ids here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be a whole number, got {input:?}")]
pub struct ParseIdError {
    kind: &'static str,
    input: String,
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident($inner:ty), $kind:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name($inner);

        impl $name {
            /// The id as its wire number.
            pub const fn get(self) -> $inner {
                self.0
            }

            /// The id of a wire number, in constant expressions too.
            pub const fn new(value: $inner) -> Self {
                Self(value)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }

        impl From<$name> for $inner {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.trim().parse::<$inner>().map(Self).map_err(|_| ParseIdError {
                    kind: $kind,
                    input: s.to_owned(),
                })
            }
        }
    };
}

id_type!(
    /// Position of a record in a partition log (Kafka's offset).
    Offset(i64),
    "offset"
);
id_type!(
    /// A partition leader's epoch, stamped into every batch it appends (KIP-101).
    LeaderEpoch(i32),
    "leader epoch"
);
id_type!(
    /// A partition's number within its topic.
    PartitionId(i32),
    "partition id"
);
id_type!(
    /// A broker's id within a cluster.
    NodeId(u64),
    "node id"
);

impl Offset {
    /// The offset `n` records after this one.
    #[must_use]
    pub const fn plus(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

/// Milliseconds since the Unix epoch, as Kafka stamps records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TimestampMs(pub i64);

impl fmt::Display for TimestampMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        let offset: Offset = "42".parse().expect("valid");
        assert_eq!(offset, Offset::from(42));
        assert_eq!(offset.to_string(), "42");
        assert_eq!(offset.plus(8).get(), 50);
    }

    #[test]
    fn bad_id_text_names_the_kind() {
        let err = "x1".parse::<PartitionId>().expect_err("not a number");
        assert_eq!(
            err.to_string(),
            "partition id must be a whole number, got \"x1\""
        );
    }
}
