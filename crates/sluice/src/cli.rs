//! Command-line arguments. The flags only feed the config layers; every
//! setting they touch is documented once, in `sluice-config`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use sluice_config::{ConfigLoader, LoadedConfig, flag_help, settings_help};

/// One broker for event logs and message queues, speaking Kafka and AMQP 0-9-1.
///
/// With no command, `sluice` runs `sluice serve`.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    args_conflicts_with_subcommands = true,
    after_help = settings_help()
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Settings for the implied `serve`.
    #[command(flatten)]
    pub(crate) settings: SettingsArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a broker node (the default when no command is given).
    #[command(after_help = settings_help())]
    Serve(SettingsArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The everyday commands that talk to a running broker's admin API.
    #[command(flatten)]
    Admin(sluice_cli::AdminCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the effective configuration, each value with its source.
    #[command(after_help = settings_help())]
    Show(SettingsArgs),
}

/// Flags that set configuration keys. Accepted by `sluice`, `sluice serve`
/// and `sluice config show`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct SettingsArgs {
    /// TOML config file; environment variables and flags override its values.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "DIR", help = flag_help("data_dir"))]
    data_dir: Option<String>,
    #[arg(long, value_name = "HOST:PORT", help = flag_help("kafka.listen"))]
    kafka_listen: Option<String>,
    #[arg(long, value_name = "HOST:PORT", help = flag_help("amqp.listen"))]
    amqp_listen: Option<String>,
    #[arg(long, value_name = "HOST:PORT", help = flag_help("mqtt.listen"))]
    mqtt_listen: Option<String>,
    #[arg(long, value_name = "HOST:PORT", help = flag_help("stomp.listen"))]
    stomp_listen: Option<String>,
    #[arg(long, value_name = "HOST:PORT", help = flag_help("http.listen"))]
    http_listen: Option<String>,
    #[arg(
        long,
        value_name = "FORMAT",
        value_parser = ["text", "json"],
        help = flag_help("logging.format")
    )]
    log_format: Option<String>,
    #[arg(
        long,
        value_name = "MODE",
        value_parser = ["always", "interval", "never"],
        help = flag_help("log.durability")
    )]
    durability: Option<String>,
    /// Sets any config key, e.g. `--set log.segment_bytes=64MiB`; repeatable.
    /// Applied before the dedicated flags above.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl Cli {
    /// Parses the process arguments; on a usage error prints it and exits
    /// with code 2. Admin commands get the exit codes in their help.
    pub(crate) fn parse_args() -> Cli {
        let matches = sluice_cli::document_exit_codes(Cli::command()).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }
}

impl SettingsArgs {
    /// The dedicated flags: flag name, config key, value given.
    fn key_flags(&self) -> [(&'static str, &'static str, Option<&str>); 8] {
        [
            ("--data-dir", "data_dir", self.data_dir.as_deref()),
            (
                "--kafka-listen",
                "kafka.listen",
                self.kafka_listen.as_deref(),
            ),
            ("--amqp-listen", "amqp.listen", self.amqp_listen.as_deref()),
            ("--mqtt-listen", "mqtt.listen", self.mqtt_listen.as_deref()),
            (
                "--stomp-listen",
                "stomp.listen",
                self.stomp_listen.as_deref(),
            ),
            ("--http-listen", "http.listen", self.http_listen.as_deref()),
            ("--log-format", "logging.format", self.log_format.as_deref()),
            ("--durability", "log.durability", self.durability.as_deref()),
        ]
    }

    /// Loads the configuration: defaults, `--config`, the process
    /// environment, then these flags.
    pub(crate) fn load(&self) -> anyhow::Result<LoadedConfig> {
        let mut loader = ConfigLoader::new();
        if let Some(path) = &self.config {
            loader = loader.file(path);
        }
        loader = loader.env_vars(std::env::vars_os());
        for assignment in &self.set {
            loader = loader.set(assignment);
        }
        for (flag, key, value) in self.key_flags() {
            if let Some(value) = value {
                loader = loader.flag(flag, key, value);
            }
        }
        loader.load().context("invalid configuration")
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use sluice_config::key_doc;

    use super::*;

    #[test]
    fn arguments_are_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_dedicated_flag_sets_a_known_key() {
        for (flag, key, _) in SettingsArgs::default().key_flags() {
            assert!(key_doc(key).is_some(), "{flag} sets unknown key {key}");
        }
    }

    #[test]
    fn admin_commands_sit_beside_serve() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from(["sluice", "topics", "list", "--http", ":9"])?;
        assert!(
            matches!(
                cli.command,
                Some(Command::Admin(sluice_cli::AdminCommand::Topics(_)))
            ),
            "{:?}",
            cli.command
        );
        let mut command = sluice_cli::document_exit_codes(Cli::command());
        let help = command
            .find_subcommand_mut("queues")
            .map(|queues| queues.render_help().to_string())
            .unwrap_or_default();
        assert!(help.contains("Exit codes:"), "{help}");
        let serve = command
            .find_subcommand_mut("serve")
            .map(|serve| serve.render_help().to_string())
            .unwrap_or_default();
        assert!(!serve.contains("Exit codes:"), "{serve}");
        Ok(())
    }

    #[test]
    fn serve_flags_work_with_and_without_the_subcommand() -> Result<(), clap::Error> {
        let bare = Cli::try_parse_from(["sluice", "--data-dir", "d"])?;
        assert!(bare.command.is_none());
        assert_eq!(bare.settings.data_dir.as_deref(), Some("d"));
        let serve = Cli::try_parse_from(["sluice", "serve", "--data-dir", "d"])?;
        let Some(Command::Serve(settings)) = serve.command else {
            panic!("expected serve, got {:?}", serve.command);
        };
        assert_eq!(settings.data_dir.as_deref(), Some("d"));
        Ok(())
    }
}
