//! Sluice's Kafka front-end.
//!
//! A thin adapter: it frames requests, decodes them with the `kafka-protocol`
//! crate, turns wire names into core calls, and encodes the answers. Topics,
//! partitions and offsets live in `sluice-core`; nothing here stores state.
//!
//! Start reading at `listener.rs` (accept), then `connection.rs` (framing,
//! order), `handlers/mod.rs` (the table of APIs and versions, from which
//! ApiVersions is derived) and one file per API; `errors.rs` maps core
//! errors to Kafka error codes in one place.

mod connection;
mod errors;
mod fetch_encode;
mod handlers;
mod listener;
mod ssl_principal;

pub use handlers::acls::AuthorizerOptions;
pub use listener::{KafkaOptions, SaslOptions, SecurityProtocol, serve, serve_streams};
pub use ssl_principal::PrincipalRules;
