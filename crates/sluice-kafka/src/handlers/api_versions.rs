//! ApiVersions: derived from the handler table, never typed by hand.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsResponse, ResponseKind};

use super::SUPPORTED;

pub(crate) fn handle() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(table())
}

/// The v0 answer to an ApiVersions version this broker does not know.
pub(crate) fn unsupported() -> ResponseKind {
    ResponseKind::ApiVersions(
        ApiVersionsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_api_keys(table()),
    )
}

fn table() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::protocol::Encodable;

    use super::*;

    #[test]
    fn every_advertised_range_is_within_the_codec() {
        for (key, min, max) in SUPPORTED {
            let codec = key.valid_versions();
            assert!(
                codec.min <= *min && *max <= codec.max,
                "{key:?} {min}..={max} outside the codec's {}..={}",
                codec.min,
                codec.max
            );
        }
    }

    #[test]
    fn default_tagged_fields_are_not_written() {
        // librdkafka 2.0.2 (Debian's kcat) rejects an ApiVersions v3
        // response that carries tagged fields holding their defaults.
        let mut bytes = BytesMut::new();
        handle().encode(&mut bytes, 3).expect("encode");
        assert_eq!(bytes.last(), Some(&0), "empty tagged-field section");
        let entries = SUPPORTED.len();
        // error(2) + array len (1 varint byte) + entries*(2+2+2+1) + throttle(4) + tags(1)
        assert_eq!(bytes.len(), 2 + 1 + entries * 7 + 4 + 1);
        assert!(SUPPORTED.iter().any(|(k, _, _)| *k == ApiKey::ApiVersions));
    }
}
