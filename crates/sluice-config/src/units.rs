//! Human units in configuration values: byte sizes (`"64KiB"`), durations
//! (`"30s"`) and the `"none"` that switches a limit off.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A number of bytes, written as an integer (`4096`) or a string with an
/// optional unit: `"4096"`, `"64KiB"`, `"1MiB"`, `"1GiB"` (powers of 1024) or
/// `"1KB"`, `"1MB"`, `"1GB"` (powers of 1000). Units ignore case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

/// Units a size may carry, longest names first so `"KiB"` is not read as `"B"`.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("b", 1),
];

/// Units used to print a size, largest first; a size prints with the largest
/// one that divides it exactly, else as a bare number. Decimal units are
/// there so that a size given as `"50MB"` prints as it was written.
const SIZE_DISPLAY_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
];

const SIZE_EXPECTED: &str = "expected a byte count such as 4096, \"64KiB\", \"1MiB\" or \"1GB\"";

impl ByteSize {
    /// A size of `bytes` bytes.
    pub const fn new(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }

    /// A size of `n` KiB.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n << 10)
    }

    /// A size of `n` MiB.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }

    /// A size of `n` GiB.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size did not parse; the message is the whole explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason}")]
pub struct ParseSizeError {
    input: String,
    reason: String,
}

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    fn from_str(input: &str) -> Result<ByteSize, ParseSizeError> {
        let fail = |reason: &str| ParseSizeError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = input.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits_end);
        let number: String = number.chars().filter(|&c| c != '_').collect();
        if number.is_empty() {
            return Err(fail(SIZE_EXPECTED));
        }
        let unit = unit.trim().to_ascii_lowercase();
        let multiplier = if unit.is_empty() {
            1
        } else {
            match SIZE_UNITS.iter().find(|(name, _)| *name == unit) {
                Some(&(_, multiplier)) => multiplier,
                None => return Err(fail(SIZE_EXPECTED)),
            }
        };
        let value: u64 = number
            .parse()
            .map_err(|_| fail("the number is too large"))?;
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| fail("the size does not fit in 64 bits"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for &(name, unit) in SIZE_DISPLAY_UNITS {
                if self.0.is_multiple_of(unit) {
                    return write!(f, "{}{name}", self.0 / unit);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    /// Whole units serialize as a string (`"1GiB"`, `"50MB"`), anything else as
    /// an integer, so the printed config reads like the example file.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.to_string();
        match text.parse::<u64>() {
            Ok(bytes) => serializer.serialize_u64(bytes),
            Err(_) => serializer.serialize_str(&text),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }

            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(bytes))
            }

            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<ByteSize, E> {
                u64::try_from(bytes).map(ByteSize).map_err(|_| {
                    E::custom(format!("invalid size {bytes}: a size cannot be negative"))
                })
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                text.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A span of time, written as a string with units that `humantime` reads:
/// `"500ms"`, `"30s"`, `"5m"`, `"7d"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(Duration);

/// Units used to print a duration, largest first; a duration prints with the
/// largest one that divides it exactly.
const DURATION_DISPLAY_UNITS: &[(&str, u128)] = &[
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
];

const DURATION_EXPECTED: &str =
    "expected a duration with a unit such as \"500ms\", \"30s\" or \"7d\"";

impl HumanDuration {
    /// Wraps a duration.
    pub const fn new(duration: Duration) -> HumanDuration {
        HumanDuration(duration)
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(secs))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct ParseDurationError {
    input: String,
    reason: String,
}

impl FromStr for HumanDuration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<HumanDuration, ParseDurationError> {
        humantime::parse_duration(input.trim())
            .map(HumanDuration)
            .map_err(|err| ParseDurationError {
                input: input.to_owned(),
                reason: format!("{err}; {DURATION_EXPECTED}"),
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos != 0 {
            for &(name, unit) in DURATION_DISPLAY_UNITS {
                if nanos.is_multiple_of(unit) {
                    return write!(f, "{}{name}", nanos / unit);
                }
            }
            return write!(f, "{nanos}ns");
        }
        f.write_str("0s")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HumanDuration, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }

            fn visit_i64<E: de::Error>(self, number: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "invalid duration {number}: a duration needs a unit, e.g. \"{number}s\" or \"{number}ms\""
                )))
            }

            fn visit_u64<E: de::Error>(self, number: u64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "invalid duration {number}: a duration needs a unit, e.g. \"{number}s\" or \"{number}ms\""
                )))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<HumanDuration, E> {
                text.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

/// `#[serde(with = "or_none")]` for an `Option<T>` written as `"none"` when
/// absent (TOML has no null).
pub(crate) mod or_none {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) const NONE: &str = "none";

    pub(crate) fn serialize<S, T>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        T: Serialize,
    {
        match value {
            Some(value) => value.serialize(serializer),
            None => serializer.serialize_str(NONE),
        }
    }

    pub(crate) fn deserialize<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        let value = toml::Value::deserialize(deserializer)?;
        if value.as_str() == Some(NONE) {
            return Ok(None);
        }
        T::deserialize(value)
            .map(Some)
            .map_err(|err| D::Error::custom(format!("{} (or \"{NONE}\")", err.message())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        let cases = [
            ("4096", 4096),
            ("0", 0),
            ("64KiB", 64 * 1024),
            ("64 kib", 64 * 1024),
            ("1MiB", 1 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("1GB", 1_000_000_000),
            ("5kb", 5_000),
            ("512B", 512),
            ("1_000", 1_000),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn garbage_sizes_are_rejected_with_the_input_in_the_message() {
        for text in [
            "",
            "GiB",
            "1.5GiB",
            "12 parsecs",
            "-1",
            "1GiBs",
            "99999999999999999999",
        ] {
            let err = text.parse::<ByteSize>().expect_err(text);
            assert!(err.to_string().starts_with("invalid size"), "{err}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
        let err = "20000000TiB".parse::<ByteSize>().expect_err("overflow");
        assert!(err.to_string().contains("64 bits"), "{err}");
    }

    #[test]
    fn sizes_print_with_the_largest_exact_unit() {
        assert_eq!(ByteSize::gib(1).to_string(), "1GiB");
        assert_eq!(ByteSize::kib(4).to_string(), "4KiB");
        assert_eq!(ByteSize::kib(1536).to_string(), "1536KiB");
        assert_eq!(ByteSize::new(1_048_588).to_string(), "1048588");
        assert_eq!(ByteSize::new(0).to_string(), "0");
        assert_eq!(ByteSize::new(50_000_000).to_string(), "50MB");
        assert_eq!(ByteSize::new(2_000_000_000_000).to_string(), "2TB");
        assert_eq!(ByteSize::new(1_024_000).to_string(), "1000KiB");
    }

    #[test]
    fn printed_sizes_parse_back() {
        for bytes in [
            0,
            1,
            1000,
            1023,
            1024,
            1_048_588,
            3 << 30,
            50_000_000,
            u64::MAX,
        ] {
            let size = ByteSize(bytes);
            assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
        }
    }

    #[test]
    fn durations_parse_and_print_in_human_units() -> Result<(), ParseDurationError> {
        assert_eq!(
            "7d".parse::<HumanDuration>()?,
            HumanDuration::from_secs(604_800)
        );
        assert_eq!(
            "30s".parse::<HumanDuration>()?,
            HumanDuration::from_secs(30)
        );
        assert_eq!(
            "500ms".parse::<HumanDuration>()?,
            HumanDuration::new(Duration::from_millis(500))
        );
        assert_eq!(HumanDuration::from_secs(604_800).to_string(), "7d");
        assert_eq!(HumanDuration::from_secs(90).to_string(), "90s");
        assert_eq!(
            HumanDuration::new(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
        assert_eq!(HumanDuration::new(Duration::ZERO).to_string(), "0s");
        Ok(())
    }

    #[test]
    fn durations_without_units_are_rejected() {
        let err = "30".parse::<HumanDuration>().expect_err("no unit");
        assert!(
            err.to_string().starts_with("invalid duration \"30\""),
            "{err}"
        );
        let err = "soon".parse::<HumanDuration>().expect_err("garbage");
        assert!(err.to_string().contains("\"soon\""), "{err}");
    }
}
