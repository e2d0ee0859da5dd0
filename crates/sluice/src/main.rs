//! The `sluice` binary: parses arguments, loads the configuration and runs a
//! broker node or a command. It holds no broker logic: configuration lives
//! in `sluice-config`, the node in `sluice-core`. Start at [`run`].
//!
//! Exit codes: 0 on success, 1 on any error (printed as `error: <chain>`),
//! 2 on a usage error (from clap).

mod cli;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve::run(&cli.settings),
        Some(Command::Serve(settings)) => serve::run(&settings),
        Some(Command::Config(ConfigCommand::Show(settings))) => {
            let loaded = settings.load()?;
            print!("{}", loaded.render());
            Ok(())
        }
    }
}
