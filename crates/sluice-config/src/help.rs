//! Help text generated from the model, so `--help` lists every key with its
//! default and environment variable and cannot drift from the code.

use crate::load::default_values;
use crate::model::{KEYS, env_var_name, key_doc};

/// The default of `key` as TOML (`"./data"`, `"1GiB"`), if it is a key.
pub fn default_value(key: &str) -> Option<String> {
    let defaults = default_values().ok()?;
    defaults
        .into_iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.to_string())
}

/// Help for a flag that sets `key`: its description, default and variable.
/// An unknown key gives the summary alone.
pub fn flag_help(key: &str) -> String {
    let Some(doc) = key_doc(key) else {
        return String::new();
    };
    let default = default_value(key).unwrap_or_default();
    format!(
        "{} [default: {default}] [env: {}] [key: {key}]",
        doc.description,
        env_var_name(key)
    )
}

/// A table of every setting: key, environment variable, default, and what
/// it does. Used as the `after_help` of `sluice` and `sluice serve`.
pub fn settings_help() -> String {
    let defaults = default_values().unwrap_or_default();
    let rows: Vec<(&str, String, String, &str)> = KEYS
        .iter()
        .map(|doc| {
            let default = defaults
                .iter()
                .find(|(name, _)| name == doc.key)
                .map(|(_, value)| value.to_string())
                .unwrap_or_default();
            (doc.key, env_var_name(doc.key), default, doc.description)
        })
        .collect();
    // Only the key column is padded: clap wraps help at 100 columns, and a
    // row wrapped there would part a key from its default.
    let key_width = rows.iter().map(|row| row.0.len()).max().unwrap_or(0).max(3);
    let mut out = String::from(
        "Settings (file key, environment variable, default). Layers, low to high: \
         defaults, --config FILE, SLUICE_* environment, flags; --set KEY=VALUE sets any key.\n\n",
    );
    out.push_str(&format!("  {:<key_width$}  ENV  DEFAULT\n", "KEY"));
    for (key, env, default, description) in rows {
        out.push_str(&format!("  {key:<key_width$}  {env}  {default}\n"));
        out.push_str(&format!("      {description}\n"));
    }
    out.push_str(
        "\nSizes take units (4096, \"64KiB\", \"1MiB\", \"1GB\"); durations too (\"500ms\", \"30s\", \"7d\").\n\
         Process log filter: SLUICE_LOG, else RUST_LOG, else info.",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where clap wraps help text when not on a terminal.
    const HELP_WIDTH: usize = 100;

    #[test]
    fn settings_help_lists_every_key_with_default_and_env_var() {
        let help = settings_help();
        for doc in KEYS {
            let line = help
                .lines()
                .find(|line| line.split_whitespace().next() == Some(doc.key))
                .unwrap_or_else(|| panic!("{} missing from help:\n{help}", doc.key));
            assert!(line.contains(&env_var_name(doc.key)), "{line}");
            let default = default_value(doc.key).unwrap_or_default();
            assert!(!default.is_empty() && line.contains(&default), "{line}");
            assert!(
                line.len() <= HELP_WIDTH,
                "clap wraps this row at {HELP_WIDTH} columns (shorten the key?): {line}"
            );
        }
        assert!(help.contains("SLUICE_LOG__SEGMENT_BYTES"), "{help}");
        assert!(help.contains("\"1GiB\""), "{help}");
    }

    #[test]
    fn flag_help_names_default_and_env_var() {
        let help = flag_help("kafka.listen");
        assert!(help.contains("[default: \"127.0.0.1:9092\"]"), "{help}");
        assert!(help.contains("[env: SLUICE_KAFKA__LISTEN]"), "{help}");
        assert_eq!(flag_help("no.such.key"), "");
    }
}
