//! The `sluice` binary: parses arguments, loads the configuration and runs a
//! broker node or a command. It holds no broker logic: configuration lives
//! in `sluice-config`, the node in `sluice-core`, the admin commands in
//! `sluice-cli`. Start at [`main`].
//!
//! Exit codes of `serve` and `config`: 0 on success, 1 on any error (printed
//! as `error: <chain>`), 2 on a usage error (from clap). The admin commands
//! (`topics`, `produce`, …) live in `sluice-cli`, which documents theirs.

mod cli;
mod serve;

use std::process::ExitCode;

use crate::cli::{Cli, Command, ConfigCommand, SettingsArgs};

/// Huge allocations are reserved lazily, so that a request declaring
/// billions of elements cannot abort the process (see `sluice-alloc`).
#[global_allocator]
static ALLOCATOR: sluice_alloc::Allocator = sluice_alloc::Allocator;

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let result = match cli.command {
        Some(Command::Admin(command)) => return sluice_cli::run(command),
        None => serve::run(&cli.settings),
        Some(Command::Serve(settings)) => serve::run(&settings),
        Some(Command::Config(ConfigCommand::Show(settings))) => show_config(&settings),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice config show`.
fn show_config(settings: &SettingsArgs) -> anyhow::Result<()> {
    let loaded = settings.load()?;
    print!("{}", loaded.render());
    Ok(())
}
