use std::io;
use std::path::PathBuf;

use crate::load::Source;

/// Why the configuration could not be loaded. Every variant about a value
/// names its key and the layer it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", .path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Where and why, without the line itself: the line may hold a
    /// password (`users = admin:S3cret`, unquoted).
    #[error("config file {} is not valid TOML at line {line}, column {column}: {message}", .path.display())]
    ParseFile {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("unknown config key `{key}` (from {origin}); {hint}")]
    UnknownKey {
        key: String,
        origin: Source,
        hint: String,
    },
    #[error("`{key}` (from {origin}) is a section, not a value; set its keys instead: {keys}")]
    SectionAsValue {
        key: String,
        origin: Source,
        keys: String,
    },
    #[error("invalid value for {key} (from {origin}): {message}")]
    InvalidValue {
        key: String,
        origin: Source,
        message: String,
    },
    #[error("{message} (from {origin})")]
    OutOfRange {
        key: &'static str,
        origin: Source,
        message: String,
    },
    #[error("environment variable {name} is not valid UTF-8")]
    EnvNotUnicode { name: String },
    #[error("--set expects KEY=VALUE, got {argument:?}")]
    SetSyntax { argument: String },
    /// More than one problem, each reported as it would be alone.
    #[error("{} problems in the configuration:{}", .errors.len(), list(.errors))]
    Several { errors: Vec<ConfigError> },
    /// The layers each passed their checks but their combination did not
    /// deserialize: a bug in this crate, reported instead of a panic.
    #[error("configuration does not deserialize: {message}")]
    Combined { message: String },
}

impl ConfigError {
    /// The config key the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::SectionAsValue { key, .. }
            | ConfigError::InvalidValue { key, .. } => Some(key),
            ConfigError::OutOfRange { key, .. } => Some(key),
            ConfigError::ReadFile { .. }
            | ConfigError::ParseFile { .. }
            | ConfigError::EnvNotUnicode { .. }
            | ConfigError::SetSyntax { .. }
            | ConfigError::Several { .. }
            | ConfigError::Combined { .. } => None,
        }
    }
}

/// Each error on a line of its own, with its causes.
fn list(errors: &[ConfigError]) -> String {
    let mut out = String::new();
    for error in errors {
        out.push_str("\n  - ");
        out.push_str(&error.to_string());
        let mut cause = std::error::Error::source(error);
        while let Some(inner) = cause {
            out.push_str(&format!(": {inner}"));
            cause = inner.source();
        }
    }
    out
}
