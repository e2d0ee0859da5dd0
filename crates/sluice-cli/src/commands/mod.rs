//! One file per command. Each turns its arguments into API requests and
//! prints the answers as tables or JSON; none keeps state between runs.

pub(crate) mod amqp;
pub(crate) mod cluster;
pub(crate) mod connections;
pub(crate) mod consume;
pub(crate) mod groups;
pub(crate) mod produce;
pub(crate) mod quorum;
pub(crate) mod status;
pub(crate) mod topics;
pub(crate) mod users;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::Value;

use crate::client::encode_component;

/// How message contents are shown (the API's `encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    /// UTF-8, invalid bytes replaced.
    Text,
    /// Two hex digits per byte.
    Hex,
    /// Standard base64.
    Base64,
}

impl Encoding {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Encoding::Text => "text",
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        }
    }
}

/// AMQP exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
            ExchangeType::Headers => "headers",
        }
    }
}

/// Where `groups reset-offsets` moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResetTo {
    /// The log start of each partition.
    Earliest,
    /// The high watermark of each partition: skip everything there is.
    Latest,
    /// The first record at or after `--timestamp`.
    Timestamp,
    /// `--offset`, clamped into each partition's log.
    Offset,
}

impl ResetTo {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResetTo::Earliest => "earliest",
            ResetTo::Latest => "latest",
            ResetTo::Timestamp => "timestamp",
            ResetTo::Offset => "offset",
        }
    }
}

/// A virtual host or other name as one path segment.
pub(crate) fn segment(name: &str) -> String {
    encode_component(name)
}

/// An exchange name as a path segment: the default exchange `""` is
/// `amq.default` in paths.
pub(crate) fn exchange_segment(name: &str) -> String {
    if name.is_empty() {
        "amq.default".to_owned()
    } else {
        encode_component(name)
    }
}

/// The items of a list answer.
pub(crate) fn items(list: &Value) -> &[Value] {
    list["items"].as_array().map_or(&[], Vec::as_slice)
}

/// Set by the first Ctrl-C while a command that runs until it
/// (`consume --follow`) watches: the command stops at its next step and
/// prints its summary.
#[derive(Debug, Clone)]
pub(crate) struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Takes over SIGINT: the first one sets the flag, a second ends the
    /// process at once with exit code 130. The handler is in place when
    /// this returns (or after a second, if the signal thread is slow).
    pub(crate) fn watch() -> Interrupt {
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        let (installed, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut interrupts) = signal(SignalKind::interrupt()) else {
                    return;
                };
                let _ = installed.send(());
                if interrupts.recv().await.is_none() {
                    return;
                }
                set.store(true, Ordering::SeqCst);
                let _ = interrupts.recv().await;
                std::process::exit(130);
            });
        });
        let _ = wait.recv_timeout(Duration::from_secs(1));
        Interrupt(flag)
    }

    /// Never set: for commands that let Ctrl-C end the process.
    pub(crate) fn none() -> Interrupt {
        Interrupt(Arc::new(AtomicBool::new(false)))
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// `1 record`, `2 records`: a count with its noun in agreement.
pub(crate) fn counted(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Counts records or messages moved by a long `produce` or `consume` and
/// reports the count and rate on stderr at an interval, then a summary.
#[derive(Debug)]
pub(crate) struct Progress {
    verb: &'static str,
    /// Singular (`record`); counts and rates add the plural.
    noun: &'static str,
    interval: Option<Duration>,
    quiet: bool,
    started: Instant,
    last_report: Instant,
    reported: u64,
    count: u64,
}

impl Progress {
    /// `interval` zero turns the periodic report off; `quiet` also the
    /// summary.
    pub(crate) fn new(
        verb: &'static str,
        noun: &'static str,
        interval_seconds: f64,
        quiet: bool,
    ) -> Progress {
        let now = Instant::now();
        let interval = (interval_seconds > 0.0 && !quiet)
            .then(|| Duration::try_from_secs_f64(interval_seconds).ok())
            .flatten();
        Progress {
            verb,
            noun,
            interval,
            quiet,
            started: now,
            last_report: now,
            reported: 0,
            count: 0,
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Counts `moved` more and reports when the interval has passed and
    /// something moved since the last report.
    pub(crate) fn add(&mut self, moved: u64) {
        self.count += moved;
        let Some(interval) = self.interval else {
            return;
        };
        let since = self.last_report.elapsed();
        if since < interval || self.count == self.reported {
            return;
        }
        let recent = (self.count - self.reported) as f64 / since.as_secs_f64().max(1e-9);
        let _ = writeln!(
            std::io::stderr(),
            "{} {} so far, {recent:.0} {}s/s now, {:.0}/s on average",
            self.verb,
            counted(self.count, self.noun),
            self.noun,
            self.average(),
        );
        self.last_report = Instant::now();
        self.reported = self.count;
    }

    fn average(&self) -> f64 {
        self.count as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// The closing line on stderr: `produced 1000 records to topic "t" in
    /// 0.4s (2500 records/s)`, unless quiet.
    pub(crate) fn finish(&self, target: &str) {
        if self.quiet {
            return;
        }
        let _ = writeln!(std::io::stderr(), "{}", self.summary(target));
    }

    fn summary(&self, target: &str) -> String {
        format!(
            "{} {} {target} in {} ({:.0} {}s/s)",
            self.verb,
            counted(self.count, self.noun),
            crate::output::duration(self.started.elapsed()),
            self.average(),
            self.noun,
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn default_exchange_is_amq_default_in_paths() {
        assert_eq!(exchange_segment(""), "amq.default");
        assert_eq!(exchange_segment("amq.topic"), "amq.topic");
        assert_eq!(segment("/"), "%2F");
    }

    #[test]
    fn items_of_a_list_or_nothing() {
        assert_eq!(items(&json!({"items": [1, 2]})).len(), 2);
        assert!(items(&json!({})).is_empty());
    }

    #[test]
    fn progress_counts_even_when_quiet() {
        let mut progress = Progress::new("produced", "record", 0.0, true);
        progress.add(3);
        progress.add(4);
        assert_eq!(progress.count(), 7);
    }

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(counted(1, "record"), "1 record");
        assert_eq!(counted(0, "message"), "0 messages");
        let mut progress = Progress::new("consumed", "message", 0.0, true);
        progress.add(1);
        let summary = progress.summary("from queue \"q\"");
        assert!(
            summary.starts_with("consumed 1 message from queue \"q\" in "),
            "{summary}"
        );
        assert!(summary.ends_with(" messages/s)"), "{summary}");
    }
}
