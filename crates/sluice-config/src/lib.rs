//! Sluice's configuration: one typed tree ([`Config`]) with a default for
//! every key, loaded in layers (defaults, a TOML file, `SLUICE_…` environment
//! variables, command-line flags; later layers win) and validated at load so
//! that an error names the key and the layer it came from.
//!
//! This crate knows no other Sluice crate and does no I/O beyond reading the
//! config file: the binary converts `[log]` into the storage engine's
//! settings. Start reading at [`ConfigLoader::load`]; the keys and their
//! documentation are in [`KEYS`].
//!
//! Environment variables map to keys by dropping `SLUICE_`, lowercasing, and
//! reading `__` as a dot: `SLUICE_KAFKA__LISTEN` is `kafka.listen`,
//! `SLUICE_DATA_DIR` is `data_dir`. `SLUICE_LOG` is the tracing filter, not a
//! key ([`NON_CONFIG_ENV_VARS`]); any other unknown `SLUICE_` variable is an
//! error. Values from the environment and flags are read as TOML values when
//! the key accepts them as such, else as strings.
//!
//! ```
//! use sluice_config::ConfigLoader;
//!
//! let loaded = ConfigLoader::new()
//!     .set("log.segment_bytes=64MiB")
//!     .flag("--data-dir", "data_dir", "/var/lib/sluice")
//!     .load()?;
//! assert_eq!(loaded.config().log.segment_bytes.bytes(), 64 << 20);
//! println!("{}", loaded.render()); // each value with its source
//! # Ok::<(), sluice_config::ConfigError>(())
//! ```

mod error;
mod help;
mod load;
mod model;
mod units;

pub use error::ConfigError;
pub use help::{default_value, flag_help, settings_help};
pub use load::{ConfigLoader, EffectiveValue, LoadedConfig, NON_CONFIG_ENV_VARS, Source};
pub use model::{
    AmqpConfig, ClusterConfig, Config, DurabilityMode, HttpConfig, KEYS, KafkaConfig, KeyDoc,
    LimitsConfig, ListenAddr, LogFormat, LogSettings, LoggingConfig, ParseListenAddrError,
    SECRET_KEYS, TlsConfig, env_var_name, key_doc, redact, split_list,
};
pub use units::{ByteSize, HumanDuration, ParseDurationError, ParseSizeError};
