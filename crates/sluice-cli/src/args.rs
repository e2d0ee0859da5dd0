//! Options every command shares (where the broker is, who we are, how to
//! print) and the parsers for `KEY=VALUE` style arguments. Parse failures
//! are usage errors, exit code 2, reported by clap.

use clap::{Args, ValueEnum};
use serde_json::Value;

/// Where the broker's admin API is and how to talk to it. Global: accepted
/// before or after the subcommand (`sluice topics --http URL list`).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The broker's admin API: its HTTP listener (`http.listen`).
    // The value is hidden as for SLUICE_CREDENTIALS: clap would otherwise
    // print `[env: SLUICE_HTTP=]` when the variable is unset.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "SLUICE_HTTP",
        hide_env_values = true,
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_http
    )]
    pub(crate) http: HttpAddress,
    /// A broker user (from `amqp.users`) as NAME:PASSWORD.
    #[arg(
        long,
        global = true,
        value_name = "NAME:PASSWORD",
        env = "SLUICE_CREDENTIALS",
        hide_env_values = true,
        default_value = "guest:guest",
        value_parser = parse_credentials
    )]
    pub(crate) user: Credentials,
    /// PEM CA certificates to trust for an https:// admin API (default:
    /// the public web roots).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "SLUICE_CACERT",
        hide_env_values = true
    )]
    pub(crate) cacert: Option<std::path::PathBuf>,
    /// `table` for people, `json` for scripts (the API's JSON).
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

/// The admin API's base URL, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAddress {
    /// `http://HOST:PORT`.
    pub(crate) base: String,
    /// `HOST:PORT`.
    pub(crate) address: String,
}

/// A broker user's name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub(crate) name: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns and short summaries.
    Table,
    /// The API's JSON (lists merged over pages; one object per line for
    /// `consume`).
    Json,
}

/// `http://host:port[/]`, `https://host:port[/]` (a listener with
/// `http.tls`), `host:port` or `:port`.
fn parse_http(text: &str) -> Result<HttpAddress, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some(("http", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        Some((scheme, _)) => {
            return Err(format!(
                "the admin API speaks http or https, not {scheme}: use http://HOST:PORT"
            ));
        }
        None => ("http", text),
    };
    let address = rest.trim_end_matches('/');
    if address.contains('/') || address.contains('?') || address.contains('@') {
        return Err("give only http://HOST:PORT, without a path or user".to_owned());
    }
    let address = match address.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => address.to_owned(),
    };
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    let host_ok = !address.is_empty() && !address.contains(':');
    if !port_ok && !host_ok {
        return Err(format!("expected http://HOST:PORT, got {text:?}"));
    }
    let address = if port_ok {
        address
    } else if scheme == "https" {
        format!("{address}:443")
    } else {
        format!("{address}:80")
    };
    Ok(HttpAddress {
        base: format!("{scheme}://{address}"),
        address,
    })
}

fn parse_credentials(text: &str) -> Result<Credentials, String> {
    match text.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok(Credentials {
            name: name.to_owned(),
            password: password.to_owned(),
        }),
        _ => Err("expected NAME:PASSWORD".to_owned()),
    }
}

/// `KEY=VALUE` with a non-empty key; the value may contain `=`.
pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// `KEY=VALUE` for AMQP arguments: the value is read as JSON when it is
/// JSON (`10`, `true`, `"x"`, `{…}`), else taken as a string, so
/// `x-max-priority=10` is a number and `x-queue-mode=lazy` a string.
pub(crate) fn argument(text: &str) -> Result<(String, Value), String> {
    let (key, value) = key_value(text)?;
    let value = serde_json::from_str(&value).unwrap_or(Value::String(value));
    Ok((key, value))
}

/// A non-empty separator.
pub(crate) fn separator(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("the separator must not be empty".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

/// `KEY=VALUE` pairs as a JSON object; a later key wins.
pub(crate) fn object(pairs: &[(String, Value)]) -> Value {
    Value::Object(pairs.iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_addresses_are_normalised() {
        let parsed = parse_http("http://127.0.0.1:8080/").map_err(|e| e.to_string());
        assert_eq!(
            parsed,
            Ok(HttpAddress {
                base: "http://127.0.0.1:8080".into(),
                address: "127.0.0.1:8080".into(),
            })
        );
        assert_eq!(
            parse_http("localhost:9000").map(|a| a.base),
            Ok("http://localhost:9000".to_owned())
        );
        assert_eq!(
            parse_http(":9000").map(|a| a.address),
            Ok("127.0.0.1:9000".to_owned())
        );
        assert_eq!(
            parse_http("http://broker").map(|a| a.address),
            Ok("broker:80".to_owned())
        );
        assert_eq!(
            parse_http("https://x:1").map(|a| a.base),
            Ok("https://x:1".to_owned())
        );
        assert_eq!(
            parse_http("https://broker").map(|a| a.address),
            Ok("broker:443".to_owned())
        );
        assert!(parse_http("ftp://x:1").is_err());
        assert!(parse_http("http://x:1/api").is_err());
        assert!(parse_http("x:notaport").is_err());
        assert!(parse_http("").is_err());
    }

    #[test]
    fn credentials_split_at_the_first_colon() {
        let parsed = parse_credentials("admin:s3:cret").map_err(|e| e.to_string());
        assert_eq!(
            parsed.map(|c| (c.name, c.password)),
            Ok(("admin".into(), "s3:cret".into()))
        );
        assert!(parse_credentials("admin").is_err());
        assert!(parse_credentials(":x").is_err());
    }

    #[test]
    fn credentials_debug_leaves_the_password_out() {
        let credentials = Credentials {
            name: "admin".into(),
            password: "secret".into(),
        };
        assert!(!format!("{credentials:?}").contains("secret"));
    }

    #[test]
    fn arguments_read_json_values_or_strings() {
        assert_eq!(
            argument("x-max-priority=10"),
            Ok(("x-max-priority".into(), Value::from(10)))
        );
        assert_eq!(
            argument("x-queue-mode=lazy"),
            Ok(("x-queue-mode".into(), Value::from("lazy")))
        );
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(key_value("=x").is_err());
        assert!(key_value("novalue").is_err());
    }
}
