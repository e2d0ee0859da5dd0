//! `sluice users list|add|passwd|tags|delete`: the broker's users
//! (administrators only). Passwords are read from `--password` or, when
//! it is left out, from the first line of stdin, so that they stay out of
//! shell history; the broker keeps only SCRAM credentials.

use std::io::{BufRead as _, Write};

use clap::Subcommand;
use serde_json::{Value, json};

use crate::args::{ApiArgs, Output};
use crate::client::{Api, Method, encode_component};
use crate::error::{CliError, CliResult};
use crate::output::{Align, Table, cell, write_json};

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users with their tags and credential mechanisms.
    List,
    /// Add a user.
    Add {
        name: String,
        /// The password (default: the first line of stdin).
        #[arg(long)]
        password: Option<String>,
        /// Comma-separated tags: administrator, monitoring, management,
        /// policymaker.
        #[arg(long, default_value = "")]
        tags: String,
        /// The user may log in only from loopback addresses.
        #[arg(long)]
        loopback_only: bool,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        /// The new password (default: the first line of stdin).
        #[arg(long)]
        password: Option<String>,
    },
    /// Replace a user's tags.
    Tags {
        name: String,
        /// Comma-separated tags; empty for none.
        tags: String,
    },
    /// Delete a user.
    Delete { name: String },
}

/// `--password`, or the first line of stdin.
fn password(given: Option<String>) -> CliResult<String> {
    let password = match given {
        Some(password) => password,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::Local(e.into()))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        return Err(CliError::Local(anyhow::anyhow!(
            "the password is empty (give --password or a line on stdin)"
        )));
    }
    Ok(password)
}

pub(crate) fn run(args: &ApiArgs, command: UsersCommand, out: &mut dyn Write) -> CliResult<()> {
    let api = Api::new(args);
    let path = |name: &str| format!("/api/users/{}", encode_component(name));
    match command {
        UsersCommand::List => {
            let list = api.get("/api/users", &[])?;
            if args.output == Output::Json {
                return write_json(out, &list);
            }
            let mut table = Table::new(&[
                ("NAME", Align::Left),
                ("TAGS", Align::Left),
                ("MECHANISMS", Align::Left),
                ("LOOPBACK ONLY", Align::Left),
            ]);
            for user in list.as_array().into_iter().flatten() {
                let joined = |key: &str| {
                    user[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                table.row(vec![
                    cell(&user["name"]),
                    joined("tags"),
                    joined("mechanisms"),
                    cell(&user["loopback_only"]),
                ]);
            }
            table.write(out, "no users")?;
        }
        UsersCommand::Add {
            name,
            password: given,
            tags,
            loopback_only,
        } => {
            if api.get(&path(&name), &[]).is_ok() {
                return Err(CliError::Refused {
                    message: format!("user {name:?} already exists"),
                    hint: Some(
                        "change it with `sluice users passwd` or `sluice users tags`".into(),
                    ),
                });
            }
            let body = json!({
                "password": password(given)?,
                "tags": tags,
                "loopback_only": loopback_only,
            });
            api.send(Method::Put, &path(&name), &body)?;
            writeln!(out, "added user {name}")?;
        }
        UsersCommand::Passwd {
            name,
            password: given,
        } => {
            // The user must exist: a typo must not create one.
            api.get(&path(&name), &[])?;
            api.send(
                Method::Put,
                &path(&name),
                &json!({"password": password(given)?}),
            )?;
            writeln!(out, "changed the password of {name}")?;
        }
        UsersCommand::Tags { name, tags } => {
            api.get(&path(&name), &[])?;
            api.send(Method::Put, &path(&name), &json!({"tags": tags}))?;
            writeln!(out, "set the tags of {name}")?;
        }
        UsersCommand::Delete { name } => {
            api.delete(&path(&name), &[])?;
            writeln!(out, "deleted user {name}")?;
        }
    }
    Ok(())
}
