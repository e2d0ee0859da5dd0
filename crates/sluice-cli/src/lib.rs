//! The everyday `sluice` commands: `status`, `topics`, `groups`, `queues`,
//! `exchanges`, `bindings`, `connections`, `produce` and `consume`. Each is
//! one or a few requests to a running broker's admin API (`docs/http.md`);
//! this crate depends on no other Sluice crate, so the API's JSON is the
//! whole contract and a CLI can drive a broker of another build.
//!
//! Start at [`AdminCommand`] and [`run`]. `client.rs` speaks HTTP and maps
//! every failure to an exit code (`error.rs`); `output.rs` draws tables;
//! `commands/` holds one file per command. The user guide is `docs/cli.md`.
//!
//! # Exit codes
//!
//! Scripts may rely on these; `--help` of every command repeats them.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | the broker refused the request (a 4xx answer other than 401; its message is printed), or the command's own input failed (an unreadable `--file`) |
//! | 2 | usage error: unknown command, bad or missing option (clap) |
//! | 3 | no broker answered at `--http`: not running, wrong address, no answer in time |
//! | 4 | authentication failed (401): wrong `--user`, or a loopback-only user from another host |
//! | 5 | the broker failed (5xx), or the address is not a Sluice admin API |
//!
//! Errors go to stderr as `error: …`, most followed by `hint: …` saying
//! what to do. Results go to stdout: tables for people, or with
//! `--output json` the API's JSON (lists merged over their pages, nothing
//! for answers without a body, one object per line for `consume`).
//! Progress and summaries of `produce` and `consume` go to stderr.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod args;
mod client;
mod commands;
mod error;
mod output;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use args::{ApiArgs, Credentials, HttpAddress, Output};
pub use commands::amqp::{
    BindingSpec, BindingsCommand, DestinationType, ExchangesCommand, QueuesCommand,
};
pub use commands::cluster::ClusterCommand;
pub use commands::connections::ConnectionsCommand;
pub use commands::consume::ConsumeArgs;
pub use commands::groups::GroupsCommand;
pub use commands::produce::ProduceArgs;
pub use commands::topics::TopicsCommand;
pub use commands::users::UsersCommand;
pub use commands::{Encoding, ExchangeType, ResetTo};

/// The exit codes, as `--help` prints them after each command's options.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the broker refused the request (4xx; its message is printed), or the
     command's own input failed
  2  usage error (bad or missing option)
  3  no broker answered at --http (not running, wrong address)
  4  authentication failed (401): check --user / SLUICE_CREDENTIALS
  5  the broker failed (5xx), or the address is not a Sluice admin API";

/// The commands that talk to a running broker. The binary flattens these
/// into its own command list next to `serve`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Show a running broker at a glance: version, listeners, totals,
    /// rates, alarms.
    Status(StatusArgs),
    /// Kafka topics: list, create, describe, alter configs, add
    /// partitions, delete.
    Topics(TopicsArgs),
    /// Kafka consumer groups: list, describe with lag, reset offsets, delete.
    Groups(GroupsArgs),
    /// AMQP queues: list, declare, delete, purge, peek.
    Queues(QueuesArgs),
    /// AMQP exchanges: list, declare, delete.
    Exchanges(ExchangesArgs),
    /// AMQP bindings: list, create, delete.
    Bindings(BindingsArgs),
    /// Client connections of both protocols: list, close.
    Connections(ConnectionsArgs),
    /// A cluster's nodes and partitions: status, elect-leaders, reassign,
    /// decommission.
    Cluster(ClusterArgs),
    /// The broker's users: list, add, passwd, tags, delete.
    Users(UsersArgs),
    /// Send lines from stdin or a file as records to a topic, or as
    /// messages to an exchange.
    Produce(ProduceArgs),
    /// Print records of a topic from an offset or timestamp, or take
    /// messages from a queue.
    Consume(ConsumeArgs),
}

/// `sluice status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
}

/// `sluice topics …`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: TopicsCommand,
}

/// `sluice groups …`.
#[derive(Debug, Args)]
pub struct GroupsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: GroupsCommand,
}

/// `sluice queues …`.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: QueuesCommand,
}

/// `sluice exchanges …`.
#[derive(Debug, Args)]
pub struct ExchangesArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: ExchangesCommand,
}

/// `sluice bindings …`.
#[derive(Debug, Args)]
pub struct BindingsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: BindingsCommand,
}

/// `sluice connections …`.
#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: ConnectionsCommand,
}

/// `sluice users …`.
#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: UsersCommand,
}

/// `sluice cluster …`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: ClusterCommand,
}

/// Runs one command against the broker and returns the exit code (see the
/// crate's documentation). Errors are printed to stderr here.
pub fn run(command: AdminCommand) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match command {
        AdminCommand::Status(args) => commands::status::run(&args.api, &mut out),
        AdminCommand::Topics(args) => commands::topics::run(&args.api, args.command, &mut out),
        AdminCommand::Groups(args) => commands::groups::run(&args.api, args.command, &mut out),
        AdminCommand::Queues(args) => commands::amqp::queues(&args.api, args.command, &mut out),
        AdminCommand::Exchanges(args) => {
            commands::amqp::exchanges(&args.api, args.command, &mut out)
        }
        AdminCommand::Bindings(args) => commands::amqp::bindings(&args.api, args.command, &mut out),
        AdminCommand::Connections(args) => {
            commands::connections::run(&args.api, args.command, &mut out)
        }
        AdminCommand::Cluster(args) => commands::cluster::run(&args.api, args.command, &mut out),
        AdminCommand::Users(args) => commands::users::run(&args.api, args.command, &mut out),
        AdminCommand::Produce(args) => commands::produce::run(args, &mut out),
        AdminCommand::Consume(args) => commands::consume::run(args, &mut out),
    };
    let result = result.and_then(|()| out.flush().map_err(error::CliError::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {error}");
            if let Some(hint) = error.hint() {
                let _ = writeln!(stderr, "hint: {hint}");
            }
            error.exit_code()
        }
    }
}

/// Adds [`EXIT_CODES`] to the help of every admin command in `command`
/// (the binary's clap command) and of their subcommands.
pub fn document_exit_codes(command: clap::Command) -> clap::Command {
    let admin: Vec<String> = AdminCommand::augment_subcommands(clap::Command::new("sluice"))
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    command.mut_subcommands(|sub| {
        if admin.iter().any(|name| name == sub.get_name()) {
            with_exit_codes(sub)
        } else {
            sub
        }
    })
}

fn with_exit_codes(command: clap::Command) -> clap::Command {
    command
        .after_help(EXIT_CODES)
        .mut_subcommands(with_exit_codes)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// The binary's shape: admin commands flattened next to others.
    #[derive(Debug, Parser)]
    #[command(name = "sluice")]
    struct Cli {
        #[command(subcommand)]
        command: AdminCommand,
    }

    #[test]
    fn arguments_are_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_documents_the_exit_codes() {
        let mut command = document_exit_codes(Cli::command());
        let mut help = command
            .find_subcommand_mut("topics")
            .and_then(|topics| topics.find_subcommand_mut("create"))
            .map(|create| create.render_help().to_string())
            .unwrap_or_default();
        assert!(help.contains("Exit codes:"), "{help}");
        help = command
            .find_subcommand_mut("produce")
            .map(|produce| produce.render_help().to_string())
            .unwrap_or_default();
        assert!(help.contains("4  authentication failed"), "{help}");
    }

    #[test]
    fn help_names_the_environment_without_an_empty_value() {
        let help = Cli::command()
            .find_subcommand_mut("topics")
            .map(|topics| topics.render_help().to_string())
            .unwrap_or_default();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("[env: SLUICE_HTTP]"), "{help}");
        assert!(!help.contains("SLUICE_HTTP="), "{help}");
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() -> Result<(), clap::Error> {
        for argv in [
            ["sluice", "topics", "--http", ":9", "list"],
            ["sluice", "topics", "list", "--http", ":9"],
        ] {
            let Cli {
                command: AdminCommand::Topics(args),
            } = Cli::try_parse_from(argv)?
            else {
                panic!("expected topics");
            };
            assert_eq!(args.api.http.address, "127.0.0.1:9");
        }
        Ok(())
    }
}
