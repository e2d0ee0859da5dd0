//! Why a command failed, and the exit code and advice each reason gets.
//! The codes are a contract with scripts (see the crate's doc); a code is
//! never given a second meaning.

use std::fmt;
use std::process::ExitCode;

/// Exit code: the API refused the request (4xx other than 401), or the
/// command could not do its own part (an unreadable `--file`).
pub(crate) const EXIT_REFUSED: u8 = 1;
/// Exit code: no broker answered at the `--http` address.
pub(crate) const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the broker refused the credentials (401).
pub(crate) const EXIT_UNAUTHORIZED: u8 = 4;
/// Exit code: the broker failed (5xx) or answered with something that is
/// not the admin API.
pub(crate) const EXIT_SERVER: u8 = 5;

/// A failed command: what went wrong, and what to do about it.
#[derive(Debug)]
pub(crate) enum CliError {
    /// A 4xx answer other than 401, with the API's error body.
    Refused {
        message: String,
        hint: Option<String>,
    },
    /// Nothing answered at the address, or the connection broke.
    Unreachable {
        /// `HOST:PORT` of `--http`.
        address: String,
        /// What the transport said (connection refused, timed out, …).
        detail: String,
    },
    /// The credentials were refused (401).
    Unauthorized { user: String, message: String },
    /// A 5xx answer.
    Server { status: u16, message: String },
    /// An answer that is not the admin API's JSON.
    NotApi { address: String, detail: String },
    /// `--http` points at a broker's Kafka or AMQP port: the server
    /// answered that protocol instead of HTTP.
    WrongPort {
        address: String,
        /// `Kafka` or `AMQP`.
        protocol: &'static str,
    },
    /// The command's own work failed (reading input, writing output).
    Local(anyhow::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Refused { .. } | CliError::Local(_) => EXIT_REFUSED,
            CliError::Unreachable { .. } => EXIT_UNREACHABLE,
            CliError::Unauthorized { .. } => EXIT_UNAUTHORIZED,
            CliError::Server { .. } | CliError::NotApi { .. } | CliError::WrongPort { .. } => {
                EXIT_SERVER
            }
        })
    }

    /// A line of advice printed after the error, when there is one.
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            CliError::Refused { hint, .. } => hint.clone(),
            CliError::Unreachable { .. } => Some(
                "start one with `sluice serve`, or point --http (or SLUICE_HTTP) at its \
                 HTTP listener (the http.listen setting, not the Kafka or AMQP port)"
                    .to_owned(),
            ),
            CliError::Unauthorized { .. } => Some(
                "pass --user NAME:PASSWORD (or set SLUICE_CREDENTIALS) with a user from the \
                 broker's amqp.users; amqp.loopback_users may log in only from 127.0.0.1"
                    .to_owned(),
            ),
            CliError::Server { .. } => Some(
                "the broker's log says more; the request changed nothing and may be retried"
                    .to_owned(),
            ),
            CliError::NotApi { .. } => Some(
                "point --http (or SLUICE_HTTP) at the broker's HTTP listener (http.listen), \
                 not its Kafka or AMQP port"
                    .to_owned(),
            ),
            CliError::WrongPort { protocol, .. } => Some(format!(
                "--http (or SLUICE_HTTP) names the broker's {protocol} port; give its HTTP \
                 listener instead: the http.listen setting, 127.0.0.1:8080 by default"
            )),
            CliError::Local(_) => None,
        }
    }

    /// A write to stdout failed because the reader went away (`| head`):
    /// not worth an error message.
    pub(crate) fn is_broken_pipe(&self) -> bool {
        match self {
            CliError::Local(error) => error
                .chain()
                .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe),
            _ => false,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Refused { message, .. } => f.write_str(message),
            CliError::Unreachable { address, detail } => {
                write!(f, "no broker at {address}: is `sluice` running? ({detail})")
            }
            CliError::Unauthorized { user, message } => {
                write!(
                    f,
                    "the broker refused the credentials of user {user:?}: {message}"
                )
            }
            CliError::Server { status, message } => {
                write!(f, "the broker failed (HTTP {status}): {message}")
            }
            CliError::NotApi { address, detail } => {
                write!(
                    f,
                    "the server at {address} is not a Sluice admin API: {detail}"
                )
            }
            CliError::WrongPort { address, protocol } => write!(
                f,
                "the server at {address} is not a Sluice admin API: it speaks {protocol}, not HTTP"
            ),
            CliError::Local(error) => write!(f, "{error:#}"),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> CliError {
        CliError::Local(error)
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> CliError {
        CliError::Local(anyhow::Error::new(error).context("cannot write the output"))
    }
}

/// What commands return.
pub(crate) type CliResult<T> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_names_the_address_and_what_to_do() {
        let error = CliError::Unreachable {
            address: "127.0.0.1:8080".into(),
            detail: "connection refused".into(),
        };
        assert!(
            error
                .to_string()
                .starts_with("no broker at 127.0.0.1:8080: is `sluice` running?")
        );
        assert!(error.hint().is_some_and(|hint| hint.contains("--http")));
    }

    #[test]
    fn each_failure_has_its_own_exit_code() {
        let codes = [
            (
                CliError::Refused {
                    message: String::new(),
                    hint: None,
                },
                ExitCode::from(1),
            ),
            (
                CliError::Unreachable {
                    address: String::new(),
                    detail: String::new(),
                },
                ExitCode::from(3),
            ),
            (
                CliError::Unauthorized {
                    user: String::new(),
                    message: String::new(),
                },
                ExitCode::from(4),
            ),
            (
                CliError::Server {
                    status: 500,
                    message: String::new(),
                },
                ExitCode::from(5),
            ),
            (
                CliError::WrongPort {
                    address: String::new(),
                    protocol: "AMQP",
                },
                ExitCode::from(5),
            ),
        ];
        for (error, code) in codes {
            assert_eq!(error.exit_code(), code, "{error:?}");
        }
    }

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(CliError::from(io).is_broken_pipe());
        let other = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!CliError::from(other).is_broken_pipe());
    }
}
