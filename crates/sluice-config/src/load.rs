//! Layering: defaults, then the TOML file, then `SLUICE_…` environment
//! variables, then flags; a later layer replaces a key an earlier one set.
//!
//! Each layer is checked key by key before it is applied, so an error names
//! the key and the layer that brought it; the merged tree is then
//! deserialized once into [`Config`] and range-checked.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use crate::error::ConfigError;
use crate::model::{Config, KEYS, SECRET_KEYS, env_var_name, key_doc, redact};

/// Environment variables that start with `SLUICE_` but are not config keys.
/// `SLUICE_LOG` is the tracing filter; `SLUICE_HTTP`, `SLUICE_CACERT` and
/// `SLUICE_CREDENTIALS` tell the CLI commands (`sluice topics`, …) where the
/// admin API is, which CA to trust and who to be, and may be exported in a shell that also
/// starts the broker. `SLUICE_TEST_QUORUM_REBUILD_PAUSE_MS` and
/// `SLUICE_TEST_APPEND_PAUSE` are fault injection for the cluster tests
/// (docs/cluster.md).
pub const NON_CONFIG_ENV_VARS: &[&str] = &[
    "SLUICE_LOG",
    "SLUICE_HTTP",
    "SLUICE_CREDENTIALS",
    "SLUICE_CACERT",
    "SLUICE_TEST_QUORUM_REBUILD_PAUSE_MS",
    "SLUICE_TEST_APPEND_PAUSE",
];

const ENV_PREFIX: &str = "SLUICE_";

/// Where a key's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The config file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line flag (`--data-dir`, `--set log.segment_bytes`).
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Collects the layers and loads them into a [`LoadedConfig`].
#[derive(Debug, Default)]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    flags: Vec<FlagSetting>,
}

#[derive(Debug)]
enum FlagSetting {
    Key {
        flag: String,
        key: String,
        value: String,
    },
    Set {
        assignment: String,
    },
}

impl ConfigLoader {
    /// A loader with only the defaults.
    pub fn new() -> ConfigLoader {
        ConfigLoader::default()
    }

    /// Reads this TOML file as the file layer.
    pub fn file(mut self, path: impl Into<PathBuf>) -> ConfigLoader {
        self.file = Some(path.into());
        self
    }

    /// Uses these variables as the environment layer, usually
    /// `std::env::vars_os()`. Only `SLUICE_` variables count; those in
    /// [`NON_CONFIG_ENV_VARS`] are skipped.
    pub fn env_vars(
        mut self,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> ConfigLoader {
        self.env = vars.into_iter().collect();
        self
    }

    /// Sets `key` from a dedicated flag such as `--data-dir`. The value is read
    /// as a TOML value when it parses as one, else as a string.
    pub fn flag(mut self, flag: &str, key: &str, value: &str) -> ConfigLoader {
        self.flags.push(FlagSetting::Key {
            flag: flag.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    /// Applies a `--set KEY=VALUE` flag; the value is read as in [`Self::flag`].
    pub fn set(mut self, assignment: &str) -> ConfigLoader {
        self.flags.push(FlagSetting::Set {
            assignment: assignment.to_owned(),
        });
        self
    }

    /// Loads every layer in order, then validates the result.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, variable, flag or key at fault.
    /// Every problem of every layer is reported at once
    /// ([`ConfigError::Several`] when there is more than one), except a
    /// file that cannot be read or parsed, which stops the load.
    pub fn load(self) -> Result<LoadedConfig, ConfigError> {
        let mut layers = Layers::defaults()?;
        if let Some(path) = &self.file {
            layers.apply_file(path)?;
        }
        layers.apply_env(self.env);
        for setting in self.flags {
            match setting {
                FlagSetting::Key { flag, key, value } => {
                    layers.apply_raw(&key, &value, Source::Flag(flag));
                }
                FlagSetting::Set { assignment } => match assignment.split_once('=') {
                    Some((key, value)) if !key.trim().is_empty() => {
                        let key = key.trim();
                        let source = Source::Flag(format!("--set {key}"));
                        layers.apply_raw(key, value, source);
                    }
                    _ => layers.errors.push(ConfigError::SetSyntax {
                        argument: assignment,
                    }),
                },
            }
        }
        layers.finish()
    }
}

/// A configuration and where each of its values came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    config: Config,
    values: Vec<EffectiveValue>,
}

/// One key's effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveValue {
    /// Dotted key, e.g. `log.segment_bytes`.
    pub key: &'static str,
    /// The value as TOML, e.g. `"1GiB"` or `1048588`; secrets are masked
    /// (`"admin:****"`).
    pub value: String,
    /// The layer that set it.
    pub source: Source,
}

impl LoadedConfig {
    /// The typed configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every key's value and source, in the order of [`KEYS`].
    pub fn values(&self) -> &[EffectiveValue] {
        &self.values
    }

    /// The effective configuration as a TOML document, each value followed by
    /// a comment naming its source. The document loads back as a config file;
    /// secrets ([`SECRET_KEYS`]) are masked in it and must be set again.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut section: Option<&str> = None;
        let width = self
            .values
            .iter()
            .map(|entry| leaf_name(entry.key).len() + 3 + entry.value.len())
            .max()
            .unwrap_or(0);
        for entry in &self.values {
            let (entry_section, name) = match entry.key.split_once('.') {
                Some((entry_section, name)) => (Some(entry_section), name),
                None => (None, entry.key),
            };
            if entry_section != section {
                if let Some(entry_section) = entry_section {
                    out.push_str(&format!("\n[{entry_section}]\n"));
                }
                section = entry_section;
            }
            let assignment = format!("{name} = {}", entry.value);
            out.push_str(&format!("{assignment:<width$}  # {}\n", entry.source));
        }
        out
    }
}

fn leaf_name(key: &str) -> &str {
    key.split_once('.').map_or(key, |(_, name)| name)
}

/// The value and source of every key, as the layers are applied.
struct Layers {
    values: BTreeMap<&'static str, (Value, Source)>,
    /// Problems found so far; a key that failed keeps its earlier value.
    errors: Vec<ConfigError>,
}

impl Layers {
    fn defaults() -> Result<Layers, ConfigError> {
        let mut values = BTreeMap::new();
        for (key, value) in default_values()? {
            let key = key_doc(&key)
                .ok_or_else(|| ConfigError::Combined {
                    message: format!("default key {key} is missing from KEYS"),
                })?
                .key;
            values.insert(key, (value, Source::Default));
        }
        Ok(Layers {
            values,
            errors: Vec::new(),
        })
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let table: Table = toml::from_str(&text).map_err(|error| {
            let at = error.span().map_or(0, |span| span.start).min(text.len());
            let before = text.get(..at).unwrap_or_default();
            ConfigError::ParseFile {
                path: path.to_path_buf(),
                line: before.matches('\n').count() + 1,
                column: before
                    .rsplit('\n')
                    .next()
                    .map_or(0, |line| line.chars().count())
                    + 1,
                message: error.message().trim().to_owned(),
            }
        })?;
        let source = Source::File(path.to_path_buf());
        let mut leaves = Vec::new();
        collect_leaves(table, "", &source, &mut leaves, &mut self.errors);
        for (key, value) in leaves {
            self.apply(&key, vec![value], source.clone());
        }
        Ok(())
    }

    fn apply_env(&mut self, vars: Vec<(OsString, OsString)>) {
        let mut config_vars = BTreeMap::new();
        for (name, value) in vars {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(ENV_PREFIX) || NON_CONFIG_ENV_VARS.contains(&name) {
                continue;
            }
            match value.into_string() {
                Ok(value) => {
                    config_vars.insert(name.to_owned(), value);
                }
                Err(_) => self.errors.push(ConfigError::EnvNotUnicode {
                    name: name.to_owned(),
                }),
            }
        }
        for (name, value) in config_vars {
            let key = name[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            self.apply_raw(&key, &value, Source::Env(name));
        }
    }

    /// Applies a value given as text (environment, flags): as TOML when it
    /// parses as a TOML value the key accepts, else as a plain string.
    fn apply_raw(&mut self, key: &str, raw: &str, source: Source) {
        let mut candidates = Vec::with_capacity(2);
        if let Ok(mut table) = toml::from_str::<Table>(&format!("value = {raw}"))
            && table.len() == 1
            && let Some(value) = table.remove("value")
        {
            candidates.push(value);
        }
        candidates.push(Value::String(raw.to_owned()));
        self.apply(key, candidates, source)
    }

    /// Sets `key` to the first candidate it accepts, or records why none fits.
    fn apply(&mut self, key: &str, candidates: Vec<Value>, source: Source) {
        let Some(doc) = key_doc(key) else {
            self.errors.push(unknown_key(key, source));
            return;
        };
        let mut first_error = None;
        for candidate in candidates {
            match Config::deserialize(Value::Table(nest(doc.key, candidate.clone()))) {
                Ok(_) => {
                    self.values.insert(doc.key, (candidate, source));
                    return;
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let message = if SECRET_KEYS.contains(&doc.key) {
            // Serde's message quotes the value, which may be a password.
            "expected a string".to_owned()
        } else {
            first_error.map_or_else(String::new, |err| plain_message(err.message()))
        };
        self.errors.push(ConfigError::InvalidValue {
            key: doc.key.to_owned(),
            origin: source,
            message,
        });
    }

    fn finish(mut self) -> Result<LoadedConfig, ConfigError> {
        let mut tree = Table::new();
        for (key, (value, _)) in &self.values {
            merge(&mut tree, nest(key, value.clone()));
        }
        let config =
            Config::deserialize(Value::Table(tree)).map_err(|err| ConfigError::Combined {
                message: err.message().trim().to_owned(),
            })?;
        let mut values = Vec::with_capacity(KEYS.len());
        for doc in KEYS {
            let Some((value, source)) = self.values.get(doc.key) else {
                return Err(ConfigError::Combined {
                    message: format!("key {} has no default", doc.key),
                });
            };
            let shown = match value {
                Value::String(text) if SECRET_KEYS.contains(&doc.key) => {
                    Value::String(redact(doc.key, text))
                }
                other => other.clone(),
            };
            values.push(EffectiveValue {
                key: doc.key,
                value: shown.to_string(),
                source: source.clone(),
            });
        }
        for problem in config.validate() {
            let origin = self
                .values
                .get(problem.key)
                .map_or(Source::Default, |(_, source)| source.clone());
            self.errors.push(ConfigError::OutOfRange {
                key: problem.key,
                origin,
                message: problem.message,
            });
        }
        match self.errors.len() {
            0 => Ok(LoadedConfig { config, values }),
            1 => Err(self.errors.remove(0)),
            _ => Err(ConfigError::Several {
                errors: self.errors,
            }),
        }
    }
}

/// Every key of `Config::default()` with its value, flattened to dotted keys.
pub(crate) fn default_values() -> Result<Vec<(String, Value)>, ConfigError> {
    let value = Value::try_from(Config::default()).map_err(|err| ConfigError::Combined {
        message: err.to_string(),
    })?;
    let Value::Table(table) = value else {
        return Err(ConfigError::Combined {
            message: "defaults do not serialize to a table".to_owned(),
        });
    };
    let mut leaves = Vec::new();
    flatten(table, "", &mut leaves);
    Ok(leaves)
}

fn flatten(table: Table, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (name, value) in table {
        let key = join(prefix, &name);
        match value {
            Value::Table(inner) => flatten(inner, &key, out),
            leaf => out.push((key, leaf)),
        }
    }
}

/// Flattens a file's table to `(key, value)` pairs, refusing keys the model
/// does not have.
fn collect_leaves(
    table: Table,
    prefix: &str,
    source: &Source,
    out: &mut Vec<(String, Value)>,
    errors: &mut Vec<ConfigError>,
) {
    for (name, value) in table {
        let key = join(prefix, &name);
        if key_doc(&key).is_some() {
            out.push((key, value));
        } else if is_section(&key) {
            match value {
                Value::Table(inner) => collect_leaves(inner, &key, source, out, errors),
                _ => errors.push(ConfigError::SectionAsValue {
                    keys: children(&key).join(", "),
                    key,
                    origin: source.clone(),
                }),
            }
        } else {
            errors.push(unknown_key(&key, source.clone()));
        }
    }
}

fn unknown_key(key: &str, origin: Source) -> ConfigError {
    if is_section(key) {
        return ConfigError::SectionAsValue {
            keys: children(key).join(", "),
            key: key.to_owned(),
            origin,
        };
    }
    if let Some(suggestion) = closest_key(key) {
        let suggestion = match &origin {
            Source::Env(_) => env_var_name(suggestion),
            _ => suggestion.to_owned(),
        };
        return ConfigError::UnknownKey {
            key: key.to_owned(),
            origin,
            hint: format!("did you mean `{suggestion}`?"),
        };
    }
    let parent = key.rsplit_once('.').map_or("", |(parent, _)| parent);
    let hint = if is_section(parent) {
        format!("keys under [{parent}] are: {}", children(parent).join(", "))
    } else {
        let env_hint = match &origin {
            Source::Env(_) => format!(
                " (environment variables map to keys as {} for log.segment_bytes)",
                env_var_name("log.segment_bytes")
            ),
            _ => String::new(),
        };
        format!(
            "known keys are: {}{env_hint}",
            KEYS.iter()
                .map(|doc| doc.key)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    ConfigError::UnknownKey {
        key: key.to_owned(),
        origin,
        hint,
    }
}

/// The known key nearest to a misspelt `key`, if one is near enough to be
/// what was meant: a few edits away, or the same name in another section.
fn closest_key(key: &str) -> Option<&'static str> {
    let leaf = leaf_name(key);
    let near = |a: &str, b: &str| {
        let distance = strsim::damerau_levenshtein(a, b);
        distance <= 2.max(b.len() / 4) && distance < b.len()
    };
    KEYS.iter()
        .map(|doc| doc.key)
        .map(|candidate| (strsim::damerau_levenshtein(key, candidate), candidate))
        .filter(|(_, candidate)| near(key, candidate))
        .min()
        .map(|(_, candidate)| candidate)
        .or_else(|| {
            KEYS.iter()
                .map(|doc| doc.key)
                .find(|candidate| leaf_name(candidate) == leaf)
        })
}

/// A serde message with Rust's type names (`u16`, `u64`) replaced by words.
fn plain_message(message: &str) -> String {
    const TYPES: &[(&str, &str)] = &[
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected usize", "expected a whole number of 0 or more"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ];
    let mut message = message.trim().to_owned();
    for (rust, words) in TYPES {
        message = message.replace(rust, words);
    }
    message
}

/// Whether `key` is a table that holds other keys.
fn is_section(key: &str) -> bool {
    KEYS.iter().any(|doc| {
        doc.key
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The names directly under section `section`.
fn children(section: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for doc in KEYS {
        if let Some(rest) = doc
            .key
            .strip_prefix(section)
            .and_then(|rest| rest.strip_prefix('.'))
        {
            let name = rest.split('.').next().unwrap_or(rest);
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `log.segment_bytes` and a value as the table `{ log = { segment_bytes = value } }`.
fn nest(key: &str, value: Value) -> Table {
    let mut parts = key.rsplit('.');
    let mut table = Table::new();
    table.insert(parts.next().unwrap_or(key).to_owned(), value);
    for part in parts {
        let mut outer = Table::new();
        outer.insert(part.to_owned(), Value::Table(table));
        table = outer;
    }
    table
}

/// Deep-merges `overlay` into `base`; values in `overlay` win.
fn merge(base: &mut Table, overlay: Table) {
    for (name, value) in overlay {
        match (base.get_mut(&name), value) {
            (Some(Value::Table(base_inner)), Value::Table(overlay_inner)) => {
                merge(base_inner, overlay_inner);
            }
            (_, value) => {
                base.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::model::{DurabilityMode, LogFormat};
    use crate::units::{ByteSize, HumanDuration};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect()
    }

    fn config_file(text: &str) -> Result<tempfile::NamedTempFile, std::io::Error> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile()?;
        file.write_all(text.as_bytes())?;
        Ok(file)
    }

    fn value_of<'a>(loaded: &'a LoadedConfig, key: &str) -> Option<&'a EffectiveValue> {
        loaded.values().iter().find(|entry| entry.key == key)
    }

    #[test]
    fn no_layers_give_the_defaults() -> TestResult {
        let loaded = ConfigLoader::new().load()?;
        assert_eq!(loaded.config(), &Config::default());
        assert!(
            loaded
                .values()
                .iter()
                .all(|entry| entry.source == Source::Default)
        );
        assert_eq!(loaded.values().len(), KEYS.len());
        Ok(())
    }

    #[test]
    fn keys_table_lists_exactly_the_fields_of_the_model() -> TestResult {
        let from_model: Vec<String> = default_values()?.into_iter().map(|(key, _)| key).collect();
        let documented: BTreeSet<&str> = KEYS.iter().map(|doc| doc.key).collect();
        assert_eq!(
            from_model
                .iter()
                .map(String::as_str)
                .collect::<BTreeSet<_>>(),
            documented
        );
        assert_eq!(documented.len(), KEYS.len(), "a key is listed twice");
        Ok(())
    }

    #[test]
    fn later_layers_override_earlier_ones() -> TestResult {
        let file = config_file(
            "data_dir = \"/from/file\"\n\
             [kafka]\nlisten = \"127.0.0.1:1001\"\n\
             [amqp]\nlisten = \"127.0.0.1:2001\"\n\
             [http]\nlisten = \"127.0.0.1:3001\"\n",
        )?;
        let loaded = ConfigLoader::new()
            .file(file.path())
            .env_vars(env(&[
                ("SLUICE_KAFKA__LISTEN", "127.0.0.1:1002"),
                ("SLUICE_AMQP__LISTEN", "127.0.0.1:2002"),
            ]))
            .flag("--kafka-listen", "kafka.listen", "127.0.0.1:1003")
            .load()?;
        let config = loaded.config();
        assert_eq!(config.data_dir, PathBuf::from("/from/file"));
        assert_eq!(config.kafka.listen.as_str(), "127.0.0.1:1003");
        assert_eq!(config.amqp.listen.as_str(), "127.0.0.1:2002");
        assert_eq!(config.http.listen.as_str(), "127.0.0.1:3001");
        let file_source = Source::File(file.path().to_path_buf());
        let source_of = |key| value_of(&loaded, key).map(|entry| entry.source.clone());
        assert_eq!(source_of("data_dir"), Some(file_source.clone()));
        assert_eq!(
            source_of("kafka.listen"),
            Some(Source::Flag("--kafka-listen".into()))
        );
        assert_eq!(
            source_of("amqp.listen"),
            Some(Source::Env("SLUICE_AMQP__LISTEN".into()))
        );
        assert_eq!(source_of("http.listen"), Some(file_source));
        assert_eq!(source_of("log.durability"), Some(Source::Default));
        Ok(())
    }

    #[test]
    fn set_flags_reach_any_key() -> TestResult {
        let loaded = ConfigLoader::new()
            .set("log.segment_bytes=64KiB")
            .set("log.retention_time=none")
            .set("log.durability=interval")
            .set("log.flush_interval = 250ms")
            .load()?;
        let log = &loaded.config().log;
        assert_eq!(log.segment_bytes, ByteSize::kib(64));
        assert_eq!(log.retention_time, None);
        assert_eq!(log.durability, DurabilityMode::Interval);
        assert_eq!(
            log.flush_interval,
            HumanDuration::new(Duration::from_millis(250))
        );
        assert_eq!(
            value_of(&loaded, "log.segment_bytes").map(|entry| entry.source.clone()),
            Some(Source::Flag("--set log.segment_bytes".into()))
        );
        Ok(())
    }

    #[test]
    fn set_without_equals_sign_is_a_syntax_error() {
        let err = ConfigLoader::new()
            .set("log.segment_bytes")
            .load()
            .expect_err("no =");
        assert!(matches!(err, ConfigError::SetSyntax { .. }), "{err}");
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn unknown_key_in_file_names_the_key_and_the_file() -> TestResult {
        let file = config_file("[log]\nsegmnt_bytes = \"1MiB\"\n")?;
        let err = ConfigLoader::new()
            .file(file.path())
            .load()
            .expect_err("unknown key");
        let message = err.to_string();
        assert_eq!(err.key(), Some("log.segmnt_bytes"));
        assert!(message.contains("`log.segmnt_bytes`"), "{message}");
        assert!(
            message.contains(&file.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("segment_bytes"), "{message}");
        Ok(())
    }

    #[test]
    fn unknown_section_and_top_level_key_are_refused() -> TestResult {
        for text in ["[kafak]\nlisten = \"127.0.0.1:1\"\n", "datadir = \"x\"\n"] {
            let file = config_file(text)?;
            let err = ConfigLoader::new()
                .file(file.path())
                .load()
                .expect_err(text);
            assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err}");
        }
        let file = config_file("kafka = \"127.0.0.1:1\"\n")?;
        let err = ConfigLoader::new()
            .file(file.path())
            .load()
            .expect_err("section");
        assert!(matches!(err, ConfigError::SectionAsValue { .. }), "{err}");
        assert!(err.to_string().contains("`kafka`"), "{err}");
        Ok(())
    }

    #[test]
    fn bad_value_in_file_names_the_key() -> TestResult {
        let file = config_file("[log]\nsegment_bytes = \"lots\"\n")?;
        let err = ConfigLoader::new()
            .file(file.path())
            .load()
            .expect_err("bad size");
        let message = err.to_string();
        assert!(
            message.starts_with("invalid value for log.segment_bytes"),
            "{message}"
        );
        assert!(message.contains("invalid size \"lots\""), "{message}");
        let file = config_file("[log]\ndurability = \"sometimes\"\n")?;
        let err = ConfigLoader::new()
            .file(file.path())
            .load()
            .expect_err("bad durability");
        let message = err.to_string();
        assert!(message.contains("log.durability"), "{message}");
        assert!(message.contains("sometimes"), "{message}");
        Ok(())
    }

    #[test]
    fn unreadable_and_malformed_files_name_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("missing.toml");
        let err = ConfigLoader::new()
            .file(&missing)
            .load()
            .expect_err("missing");
        assert!(err.to_string().contains("missing.toml"), "{err}");
        let file = config_file("[log\n")?;
        let err = ConfigLoader::new()
            .file(file.path())
            .load()
            .expect_err("bad toml");
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{err}");
        // The offending line is not echoed: it may hold a password.
        let file = config_file("[amqp]\nheartbeat = \"10s\"\nusers = admin:S3cret\n")?;
        let err = ConfigLoader::new()
            .file(file.path())
            .load()
            .expect_err("unquoted string");
        let message = format!("{err:#}");
        assert!(!message.contains("S3cret"), "{message}");
        assert!(message.contains("line 3"), "{message}");
        Ok(())
    }

    #[test]
    fn out_of_range_value_names_key_limit_and_source() {
        let err = ConfigLoader::new()
            .set("log.segment_bytes=512")
            .load()
            .expect_err("too small");
        assert_eq!(
            err.to_string(),
            "log.segment_bytes must be at least 1KiB, got 512 (from flag --set log.segment_bytes)"
        );
        let err = ConfigLoader::new()
            .env_vars(env(&[("SLUICE_LOG__FLUSH_INTERVAL", "0s")]))
            .load()
            .expect_err("zero interval");
        assert_eq!(err.key(), Some("log.flush_interval"));
        assert!(
            err.to_string().contains("env SLUICE_LOG__FLUSH_INTERVAL"),
            "{err}"
        );
    }

    #[test]
    fn env_vars_map_to_keys_and_values_parse_as_toml_or_strings() -> TestResult {
        let loaded = ConfigLoader::new()
            .env_vars(env(&[
                ("SLUICE_DATA_DIR", "123"),
                ("SLUICE_LOG__SEGMENT_BYTES", "2048"),
                ("SLUICE_LOG__INDEX_INTERVAL_BYTES", "\"1KiB\""),
                ("SLUICE_LOG__RETENTION_BYTES", "10GiB"),
                ("SLUICE_LOGGING__FORMAT", "json"),
                ("SLUICE_HTTP__LISTEN", "localhost:8081"),
                ("PATH", "/usr/bin"),
                ("SLUICE_LOG", "debug"),
            ]))
            .load()?;
        let config = loaded.config();
        assert_eq!(config.data_dir, PathBuf::from("123"));
        assert_eq!(config.log.segment_bytes, ByteSize::new(2048));
        assert_eq!(config.log.index_interval_bytes, ByteSize::kib(1));
        assert_eq!(config.log.retention_bytes, Some(ByteSize::gib(10)));
        assert_eq!(config.logging.format, LogFormat::Json);
        assert_eq!(config.http.listen.as_str(), "localhost:8081");
        Ok(())
    }

    #[test]
    fn cli_env_vars_are_not_config_keys() -> TestResult {
        let loaded = ConfigLoader::new()
            .env_vars(env(&[
                ("SLUICE_HTTP", "http://127.0.0.1:9000"),
                ("SLUICE_CREDENTIALS", "admin:secret"),
                ("SLUICE_HTTP__LISTEN", "127.0.0.1:9000"),
            ]))
            .load()?;
        assert_eq!(loaded.config().http.listen.as_str(), "127.0.0.1:9000");
        assert!(
            loaded
                .values()
                .iter()
                .all(|entry| !matches!(&entry.source, Source::Env(name) if name == "SLUICE_HTTP" || name == "SLUICE_CREDENTIALS"))
        );
        Ok(())
    }

    #[test]
    fn unknown_sluice_env_var_is_an_error_naming_the_variable() {
        let err = ConfigLoader::new()
            .env_vars(env(&[("SLUICE_KAFKA__LISTN", "127.0.0.1:1")]))
            .load()
            .expect_err("unknown variable");
        let message = err.to_string();
        assert!(message.contains("SLUICE_KAFKA__LISTN"), "{message}");
        assert!(message.contains("`kafka.listn`"), "{message}");
        let err = ConfigLoader::new()
            .env_vars(env(&[("SLUICE_KAFKA", "x")]))
            .load()
            .expect_err("section");
        assert!(err.to_string().contains("SLUICE_KAFKA"), "{err}");
    }

    #[test]
    fn bad_env_value_names_key_and_variable() {
        let err = ConfigLoader::new()
            .env_vars(env(&[("SLUICE_LOG__RETENTION_TIME", "-5")]))
            .load()
            .expect_err("bad duration");
        let message = err.to_string();
        assert!(message.contains("log.retention_time"), "{message}");
        assert!(message.contains("SLUICE_LOG__RETENTION_TIME"), "{message}");
        assert!(message.contains("\"none\""), "{message}");
    }

    #[test]
    fn listen_addresses_take_ips_and_host_names_and_refuse_the_rest() {
        for good in [
            "127.0.0.1:9092",
            "0.0.0.0:0",
            "[::1]:5672",
            "localhost:8080",
            "broker-1.example:9092",
        ] {
            let loaded = ConfigLoader::new()
                .flag("--kafka-listen", "kafka.listen", good)
                .load();
            assert!(loaded.is_ok(), "{good}: {:?}", loaded.err());
        }
        for bad in [
            "9092",
            "localhost",
            "localhost:99999",
            ":9092",
            "a b:1",
            "::1:9092x",
            "host:port",
        ] {
            let err = ConfigLoader::new()
                .flag("--kafka-listen", "kafka.listen", bad)
                .load()
                .expect_err(bad);
            let message = err.to_string();
            assert!(message.contains("kafka.listen"), "{message}");
            assert!(message.contains("flag --kafka-listen"), "{message}");
        }
    }

    #[test]
    fn render_prints_each_value_with_its_source_and_loads_back() -> TestResult {
        let loaded = ConfigLoader::new()
            .env_vars(env(&[("SLUICE_LOG__DURABILITY", "never")]))
            .flag("--data-dir", "data_dir", "/tmp/x")
            .load()?;
        let text = loaded.render();
        assert!(text.contains("durability = \"never\""), "{text}");
        assert!(text.contains("# env SLUICE_LOG__DURABILITY"), "{text}");
        assert!(text.contains("data_dir = \"/tmp/x\""), "{text}");
        assert!(text.contains("# flag --data-dir"), "{text}");
        assert!(text.contains("[log]"), "{text}");
        let file = config_file(&text)?;
        let reloaded = ConfigLoader::new().file(file.path()).load()?;
        let mut expected = loaded.config().clone();
        expected.amqp.users = "guest:****".to_owned();
        expected.mqtt.default_pass = "****".to_owned();
        expected.stomp.default_pass = "****".to_owned();
        assert_eq!(reloaded.config(), &expected);
        Ok(())
    }

    #[test]
    fn passwords_are_masked_in_values_render_and_errors() -> TestResult {
        let loaded = ConfigLoader::new()
            .set("amqp.users=admin:S3cret,guest:guest")
            .load()?;
        assert_eq!(loaded.config().amqp.users, "admin:S3cret,guest:guest");
        let text = loaded.render();
        assert!(!text.contains("S3cret"), "{text}");
        assert!(text.contains("admin:****,guest:****"), "{text}");
        let shown = value_of(&loaded, "amqp.users").map(|value| value.value.clone());
        assert_eq!(shown.as_deref(), Some("\"admin:****,guest:****\""));
        for bad in [":S3cret", "adminS3cret"] {
            let err = ConfigLoader::new()
                .set(&format!("amqp.users=guest:guest,{bad}"))
                .load()
                .expect_err(bad);
            let message = err.to_string();
            assert!(!message.contains("S3cret"), "{message}");
            assert!(message.contains("entry 2"), "{message}");
        }
        let file = config_file("[amqp]\nusers = 987654\n")?;
        let err = ConfigLoader::new()
            .file(file.path())
            .load()
            .expect_err("not a string");
        assert!(!err.to_string().contains("987654"), "{err}");
        Ok(())
    }

    #[test]
    fn every_problem_of_a_file_is_reported_at_once() -> TestResult {
        let file = config_file(
            "[log]\nsegmnt_bytes = \"1MiB\"\ndurability = \"sometimes\"\n\
             [amqp]\nchannel_max = 0\nframe_max = \"1KiB\"\n",
        )?;
        let err = ConfigLoader::new()
            .file(file.path())
            .load()
            .expect_err("four problems");
        let message = err.to_string();
        assert!(message.starts_with("4 problems"), "{message}");
        for part in [
            "log.segmnt_bytes",
            "log.durability",
            "amqp.channel_max",
            "amqp.frame_max",
        ] {
            assert!(message.contains(part), "{part} missing from: {message}");
        }
        Ok(())
    }

    #[test]
    fn misspelt_keys_get_a_suggestion() {
        let suggestion = |loader: ConfigLoader| {
            loader
                .load()
                .map(|_| String::new())
                .unwrap_or_else(|err| err.to_string())
        };
        let message = suggestion(ConfigLoader::new().set("log.segmnt_bytes=1MiB"));
        assert!(
            message.contains("did you mean `log.segment_bytes`?"),
            "{message}"
        );
        let message = suggestion(ConfigLoader::new().set("kafka.segment_bytes=1MiB"));
        assert!(
            message.contains("did you mean `log.segment_bytes`?"),
            "{message}"
        );
        let message =
            suggestion(ConfigLoader::new().env_vars(env(&[("SLUICE_AMQP__HEARTBEET", "10s")])));
        assert!(
            message.contains("did you mean `SLUICE_AMQP__HEARTBEAT`?"),
            "{message}"
        );
        let message = suggestion(ConfigLoader::new().set("completely.different=1"));
        assert!(!message.contains("did you mean"), "{message}");
        assert!(message.contains("known keys are"), "{message}");
    }

    #[test]
    fn messages_name_no_rust_types() {
        for (assignment, words) in [
            ("amqp.channel_max=70000", "from 0 to 65535"),
            ("amqp.channel_max=-1", "from 0 to 65535"),
            ("kafka.default_partitions=\"many\"", "whole number"),
            (
                "kafka.group_consumer_assignors=\"sticky\"",
                "uniform and/or range",
            ),
            (
                "kafka.group_consumer_heartbeat_interval=\"1m\"",
                "less than kafka.group_consumer_session_timeout",
            ),
            (
                "kafka.group_share_heartbeat_interval=\"1m\"",
                "less than kafka.group_share_session_timeout",
            ),
            ("kafka.group_consumer_max_size=0", "from 1 to 2147483647"),
            (
                "kafka.group_migration_policy=\"both\"",
                "bidirectional, upgrade, downgrade or disabled",
            ),
        ] {
            let message = ConfigLoader::new()
                .set(assignment)
                .load()
                .map(|_| String::new())
                .unwrap_or_else(|err| err.to_string());
            assert!(message.contains(words), "{assignment}: {message}");
            for rust in ["u16", "u32", "u64", "i32", "i64", "usize"] {
                assert!(!message.contains(rust), "{assignment}: {message}");
            }
        }
    }

    #[test]
    fn example_file_sets_every_key_to_its_default() -> TestResult {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/sluice.example.toml");
        let text = fs::read_to_string(&path)?;
        let table: Table = toml::from_str(&text)?;
        let mut leaves = Vec::new();
        flatten(table, "", &mut leaves);
        let in_example: BTreeSet<&str> = leaves.iter().map(|(key, _)| key.as_str()).collect();
        let documented: BTreeSet<&str> = KEYS.iter().map(|doc| doc.key).collect();
        assert_eq!(in_example, documented, "the example must set every key");
        let mut previous = "";
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
            if !line.starts_with('#') && !line.starts_with('[') {
                assert!(previous.starts_with('#'), "no comment above `{line}`");
                let name = line.split('=').next().unwrap_or_default().trim();
                let default = line.split_once('=').map_or("", |(_, value)| value.trim());
                assert!(
                    previous.contains(&format!("Default: {default}.")),
                    "the comment above `{name}` must state its default {default}"
                );
            }
            previous = line;
        }
        let loaded = ConfigLoader::new().file(&path).load()?;
        assert_eq!(loaded.config(), &Config::default());
        Ok(())
    }
}
