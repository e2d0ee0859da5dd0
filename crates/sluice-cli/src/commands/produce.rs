//! `sluice produce`: lines from stdin or a file, one record (or AMQP
//! message) per line, sent in batches of up to `--batch-size` per request
//! (`POST /api/topics/{t}/messages`, or `POST /api/exchanges/{v}/{e}/messages`
//! for an exchange). A batch is also sent when no line arrived for
//! [`LINGER`], so lines typed at a terminal go out as they are typed.
//!
//! Three stages overlap: a reader thread splits lines, an encoder thread
//! cuts and encodes batches, and the main thread sends them. The broker
//! answers a batch once it is durable (acks=all, or publisher confirms),
//! so the next batch is built while it syncs. One request is in flight at
//! a time, so records and messages keep their input order. Every channel
//! is bounded: a fast file never outruns the broker by more than a few
//! batches.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal as _, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{ArgGroup, Args};
use serde_json::{Map, Value, json};

use super::{Progress, counted, exchange_segment, segment};
use crate::args::{ApiArgs, Output, key_value, separator};
use crate::client::Api;
use crate::error::{CliError, CliResult};

/// How long a partial batch waits for more lines.
const LINGER: Duration = Duration::from_millis(100);
/// Most line bytes in one batch, so a request stays under the API's body
/// limit (2 MiB) even in base64.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Largest request body sent: the API refuses bodies over 2 MiB, and JSON
/// escaping, base64 and per-message properties can make a body much larger
/// than its lines, so an encoded batch over this is split in halves.
const MAX_BODY_BYTES: usize = (2 << 20) - (64 << 10);
/// Batches encoded and waiting while a request is in flight.
const BATCHES_AHEAD: usize = 2;

/// `sluice produce`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["topic", "exchange"])))]
pub struct ProduceArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Append records to this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Put every record in this partition (default: by the key's hash, or
    /// round-robin for records without a key).
    #[arg(long, requires = "topic")]
    partition: Option<i32>,
    /// Publish messages to this exchange (`""` is the default exchange).
    #[arg(long)]
    exchange: Option<String>,
    /// The exchange's virtual host.
    #[arg(long, default_value = "/", requires = "exchange")]
    vhost: String,
    /// The routing key of every message.
    #[arg(long, default_value = "", requires = "exchange")]
    routing_key: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value; with
    /// --exchange the key is the message's routing key. Lines without SEP
    /// have no key.
    #[arg(long, value_name = "SEP", value_parser = separator)]
    key_separator: Option<String>,
    /// A header on every record (with --exchange: in the message's
    /// headers table); repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = key_value)]
    headers: Vec<(String, String)>,
    /// Publish persistent messages (delivery_mode 2).
    #[arg(long, requires = "exchange")]
    persistent: bool,
    /// Most records or messages per request (a request is also kept under
    /// the API's 2 MiB body limit).
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
    /// Seconds between progress reports on stderr; 0 turns them off.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    progress: f64,
    /// No progress reports and no summary.
    #[arg(long, short)]
    quiet: bool,
}

/// One input line, split.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

pub(crate) fn run(args: ProduceArgs, out: &mut dyn Write) -> CliResult<()> {
    let input: Box<dyn BufRead + Send> = match &args.file {
        Some(path) => Box::new(BufReader::new(
            File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        )),
        None => {
            if std::io::stdin().is_terminal() && !args.quiet {
                let _ = writeln!(
                    std::io::stderr(),
                    "reading one record per line from the terminal; Ctrl-D ends"
                );
            }
            Box::new(BufReader::new(std::io::stdin()))
        }
    };
    let capacity = usize::try_from(args.batch_size).unwrap_or(500) * 2;
    let (sender, lines) = sync_channel(capacity);
    let separator = args.key_separator.clone();
    std::thread::spawn(move || read_lines(input, separator.as_deref(), &sender));
    let api = Api::new(&args.api);
    match (&args.topic, &args.exchange) {
        (Some(topic), _) => to_topic(&api, &args, topic, lines, out),
        (None, Some(exchange)) => to_exchange(&api, &args, exchange, lines, out),
        (None, None) => Err(CliError::Local(anyhow::anyhow!(
            "give --topic or --exchange"
        ))),
    }
}

/// Sends every non-empty line of `input` to `sender` until the end, a read
/// error (sent on) or the receiver leaving.
fn read_lines(
    mut input: Box<dyn BufRead + Send>,
    separator: Option<&str>,
    sender: &SyncSender<std::io::Result<Line>>,
) {
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match input.read_until(b'\n', &mut buffer) {
            Ok(0) => return,
            Ok(_) => {
                let Some(line) = split(&buffer, separator) else {
                    continue;
                };
                if sender.send(Ok(line)).is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = sender.send(Err(error));
                return;
            }
        }
    }
}

/// A line without its end (`\n` or `\r\n`) split at the first separator;
/// `None` for an empty line.
fn split(raw: &[u8], separator: Option<&str>) -> Option<Line> {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return None;
    }
    let separator = separator.map(str::as_bytes).filter(|s| !s.is_empty());
    let found = separator.and_then(|sep| {
        line.windows(sep.len())
            .position(|window| window == sep)
            .map(|at| (at, sep.len()))
    });
    Some(match found {
        Some((at, len)) => Line {
            key: Some(line.get(..at).unwrap_or_default().to_vec()),
            value: line.get(at + len..).unwrap_or_default().to_vec(),
        },
        None => Line {
            key: None,
            value: line.to_vec(),
        },
    })
}

/// The next batch: waits for a first line, then takes lines until `max`
/// lines or [`MAX_BATCH_BYTES`], the end of input, or [`LINGER`] without a
/// line. Empty at the end.
fn next_batch(lines: &Receiver<std::io::Result<Line>>, max: usize) -> CliResult<Vec<Line>> {
    let mut batch = Vec::new();
    let Ok(first) = lines.recv() else {
        return Ok(batch);
    };
    let first = first.context("cannot read the input")?;
    let mut bytes = first.size();
    batch.push(first);
    while batch.len() < max && bytes < MAX_BATCH_BYTES {
        match lines.recv_timeout(LINGER) {
            Ok(line) => {
                let line = line.context("cannot read the input")?;
                bytes += line.size();
                batch.push(line);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(batch)
}

impl Line {
    fn size(&self) -> usize {
        self.value.len() + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// A batch ready to send: how many lines, and the request body.
#[derive(Debug)]
struct Encoded {
    lines: u64,
    body: String,
}

/// Starts the stage between reading and sending: it cuts batches from
/// `lines` and encodes each with `encode`, keeping at most
/// [`BATCHES_AHEAD`] ready, so the next request body is built while the
/// broker makes the previous batch durable.
fn encode_batches(
    lines: Receiver<std::io::Result<Line>>,
    max: usize,
    encode: impl Fn(&[Line]) -> Value + Send + 'static,
) -> Receiver<CliResult<Encoded>> {
    let (sender, encoded) = sync_channel(BATCHES_AHEAD);
    std::thread::spawn(move || {
        loop {
            let batch = match next_batch(&lines, max) {
                Ok(batch) if batch.is_empty() => return,
                Ok(batch) => batch,
                Err(error) => {
                    let _ = sender.send(Err(error));
                    return;
                }
            };
            let mut ready = Vec::new();
            encode_within_limit(&batch, &encode, &mut ready);
            for encoded in ready {
                if sender.send(Ok(encoded)).is_err() {
                    return;
                }
            }
        }
    });
    encoded
}

/// Encodes `batch` as one request, or as several in order when its body
/// would exceed [`MAX_BODY_BYTES`]. A single line over the limit is sent
/// as it is, for the API to refuse with its own error.
fn encode_within_limit(batch: &[Line], encode: &impl Fn(&[Line]) -> Value, out: &mut Vec<Encoded>) {
    let body = encode(batch).to_string();
    if body.len() > MAX_BODY_BYTES && batch.len() > 1 {
        let (first, second) = batch.split_at(batch.len() / 2);
        encode_within_limit(first, encode, out);
        encode_within_limit(second, encode, out);
    } else {
        out.push(Encoded {
            lines: batch.len() as u64,
            body,
        });
    }
}

/// Bytes as the API's text encoding, or base64 when they are not UTF-8.
fn text(bytes: &[u8], base64: bool) -> String {
    if base64 {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// The produce request for one batch: `text` when every key and value is
/// UTF-8, else everything in base64.
fn produce_body(batch: &[Line], headers: &[(String, String)], partition: Option<i32>) -> Value {
    let base64 = batch.iter().any(|line| {
        std::str::from_utf8(&line.value).is_err()
            || line
                .key
                .as_deref()
                .is_some_and(|key| std::str::from_utf8(key).is_err())
    });
    let headers: Vec<Value> = headers
        .iter()
        .map(|(key, value)| json!({"key": key, "value": text(value.as_bytes(), base64)}))
        .collect();
    let records: Vec<Value> = batch
        .iter()
        .map(|line| {
            let mut record = json!({
                "value": text(&line.value, base64),
                "headers": headers,
            });
            if let Some(key) = &line.key {
                record["key"] = json!(text(key, base64));
            }
            if let Some(partition) = partition {
                record["partition"] = json!(partition);
            }
            record
        })
        .collect();
    json!({"records": records, "encoding": if base64 { "base64" } else { "text" }})
}

/// The batch publish request (`POST …/messages`): each line a message with
/// its key (or `routing_key`) as routing key; payloads in base64 when one
/// of them is not UTF-8.
fn publish_body(batch: &[Line], routing_key: &str, properties: &Value) -> Value {
    let base64 = batch
        .iter()
        .any(|line| std::str::from_utf8(&line.value).is_err());
    let messages: Vec<Value> = batch
        .iter()
        .map(|line| {
            let routing_key = match &line.key {
                Some(key) => String::from_utf8_lossy(key).into_owned(),
                None => routing_key.to_owned(),
            };
            json!({
                "routing_key": routing_key,
                "payload": text(&line.value, base64),
                "properties": properties,
            })
        })
        .collect();
    json!({"messages": messages, "encoding": if base64 { "base64" } else { "text" }})
}

fn to_topic(
    api: &Api,
    args: &ProduceArgs,
    topic: &str,
    lines: Receiver<std::io::Result<Line>>,
    out: &mut dyn Write,
) -> CliResult<()> {
    let path = format!("/api/topics/{}/messages", segment(topic));
    let max = usize::try_from(args.batch_size).unwrap_or(500);
    let json_output = args.api.output == Output::Json;
    let mut progress = Progress::new("produced", "record", args.progress, args.quiet);
    let (headers, partition) = (args.headers.clone(), args.partition);
    let batches = encode_batches(lines, max, move |batch| {
        produce_body(batch, &headers, partition)
    });
    if json_output {
        write!(out, "{{\"offsets\": [")?;
    }
    let mut written = 0u64;
    let result = (|| -> CliResult<()> {
        for batch in batches {
            let batch = batch?;
            let answer = api.send_text(&path, batch.body)?;
            if json_output {
                for offset in answer["offsets"].as_array().map_or(&[][..], Vec::as_slice) {
                    let comma = if written == 0 { "" } else { ", " };
                    write!(out, "{comma}{offset}")?;
                    written += 1;
                }
            }
            progress.add(batch.lines);
        }
        Ok(())
    })();
    if json_output {
        writeln!(out, "]}}")?;
    }
    stopped_after(&result, &progress, "records were produced");
    result.map_err(|error| unknown_topic_hint(error, topic))?;
    progress.finish(&format!("to topic {topic:?}"));
    Ok(())
}

/// A topic that does not exist (with `kafka.auto_create_topics` off): say
/// how to create it.
fn unknown_topic_hint(error: CliError, topic: &str) -> CliError {
    match error {
        CliError::Refused { message, .. } if message.contains("does not exist") => {
            CliError::Refused {
                message,
                hint: Some(format!(
                    "create it with `sluice topics create {topic}`, or let producers create \
                     topics with the broker setting kafka.auto_create_topics = true"
                )),
            }
        }
        other => other,
    }
}

fn to_exchange(
    api: &Api,
    args: &ProduceArgs,
    exchange: &str,
    lines: Receiver<std::io::Result<Line>>,
    out: &mut dyn Write,
) -> CliResult<()> {
    let path = format!(
        "/api/exchanges/{}/{}/messages",
        segment(&args.vhost),
        exchange_segment(exchange)
    );
    let mut properties = Map::new();
    if !args.headers.is_empty() {
        let headers: Map<String, Value> = args
            .headers
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect();
        properties.insert("headers".to_owned(), Value::Object(headers));
    }
    if args.persistent {
        properties.insert("delivery_mode".to_owned(), json!(2));
    }
    let properties = Value::Object(properties);
    let max = usize::try_from(args.batch_size).unwrap_or(500);
    let routing_key = args.routing_key.clone();
    let batches = encode_batches(lines, max, move |batch| {
        publish_body(batch, &routing_key, &properties)
    });
    let mut progress = Progress::new("published", "message", args.progress, args.quiet);
    let (mut unroutable, mut rejected) = (0u64, 0u64);
    let result = (|| -> CliResult<()> {
        for batch in batches {
            let batch = batch?;
            let answer = api.send_text(&path, batch.body)?;
            let count = |field: &str| answer[field].as_array().map_or(0, Vec::len) as u64;
            unroutable += count("unroutable");
            rejected += count("rejected");
            progress.add(batch.lines);
        }
        Ok(())
    })();
    stopped_after(&result, &progress, "messages were published");
    result?;
    if args.api.output == Output::Json {
        writeln!(
            out,
            "{}",
            json!({"published": progress.count(), "unroutable": unroutable, "rejected": rejected})
        )?;
    }
    let name = if exchange.is_empty() {
        "the default exchange".to_owned()
    } else {
        format!("exchange {exchange:?}")
    };
    progress.finish(&format!("to {name} in vhost {}", args.vhost));
    if !args.quiet {
        let verb = |n: u64| if n == 1 { "was" } else { "were" };
        if unroutable > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "warning: {} matched no binding and {} dropped",
                counted(unroutable, "message"),
                verb(unroutable)
            );
        }
        if rejected > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "warning: {} {} refused by a full queue (x-overflow reject-publish)",
                counted(rejected, "message"),
                verb(rejected)
            );
        }
    }
    Ok(())
}

/// After a failure, says on stderr how much went through before it.
fn stopped_after(result: &CliResult<()>, progress: &Progress, what: &str) {
    if result.is_err() && progress.count() > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "stopped: {} {what} before the error",
            progress.count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(
            split(b"k1:v:1\n", Some(":")),
            Some(Line {
                key: Some(b"k1".to_vec()),
                value: b"v:1".to_vec()
            })
        );
        assert_eq!(
            split(b"no separator\r\n", Some("::")),
            Some(Line {
                key: None,
                value: b"no separator".to_vec()
            })
        );
        assert_eq!(
            split(b"::v", Some("::")),
            Some(Line {
                key: Some(Vec::new()),
                value: b"v".to_vec()
            })
        );
        assert_eq!(split(b"\n", Some(":")), None);
        assert_eq!(split(b"\r\n", None), None);
        assert_eq!(
            split(b"last line without newline", None).map(|l| l.value),
            Some(b"last line without newline".to_vec())
        );
    }

    #[test]
    fn batches_switch_to_base64_for_binary_lines() {
        let batch = [
            Line {
                key: Some(b"k".to_vec()),
                value: b"text".to_vec(),
            },
            Line {
                key: None,
                value: vec![0xff, 0x00],
            },
        ];
        let body = produce_body(&batch, &[("h".into(), "v".into())], Some(2));
        assert_eq!(body["encoding"], "base64");
        assert_eq!(body["records"][0]["key"], "aw==");
        assert_eq!(body["records"][0]["headers"][0]["value"], "dg==");
        assert_eq!(body["records"][1]["value"], "/wA=");
        assert_eq!(body["records"][1]["partition"], 2);
        assert!(body["records"][1].get("key").is_none());
        let plain = produce_body(&batch[..1], &[], None);
        assert_eq!(plain["encoding"], "text");
        assert_eq!(plain["records"][0]["value"], "text");
        assert!(plain["records"][0].get("partition").is_none());
    }

    #[test]
    fn publish_batches_route_by_key_and_share_properties() {
        let batch = [
            Line {
                key: Some(b"eu.de".to_vec()),
                value: b"hello".to_vec(),
            },
            Line {
                key: None,
                value: b"plain".to_vec(),
            },
        ];
        let properties = json!({"delivery_mode": 2});
        let body = publish_body(&batch, "fallback", &properties);
        assert_eq!(body["encoding"], "text");
        assert_eq!(body["messages"][0]["routing_key"], "eu.de");
        assert_eq!(body["messages"][1]["routing_key"], "fallback");
        assert_eq!(body["messages"][1]["payload"], "plain");
        assert_eq!(body["messages"][1]["properties"]["delivery_mode"], 2);
        let binary = [Line {
            key: None,
            value: vec![0xff],
        }];
        assert_eq!(
            publish_body(&binary, "", &Value::Null)["encoding"],
            "base64"
        );
    }

    #[test]
    fn an_unknown_topic_gets_a_hint_to_create_it() {
        let refused = CliError::Refused {
            message: "topic \"t\" does not exist (kafka.auto_create_topics is off)".into(),
            hint: None,
        };
        let hint = unknown_topic_hint(refused, "t").hint().unwrap_or_default();
        assert!(hint.contains("sluice topics create t"), "{hint}");
        let other = CliError::Refused {
            message: "records: send 1 to 10000 records".into(),
            hint: None,
        };
        assert_eq!(unknown_topic_hint(other, "t").hint(), None);
    }

    #[test]
    fn encoded_batches_are_split_below_the_body_limit() {
        // Quotes double in JSON: 4,000 lines of 400 quotes are 1.6 MB of
        // lines but over 3 MB of body.
        let batch: Vec<Line> = (0..4000)
            .map(|_| Line {
                key: None,
                value: vec![b'"'; 400],
            })
            .collect();
        let encode = |lines: &[Line]| {
            serde_json::json!({"records": lines
                .iter()
                .map(|line| text(&line.value, false))
                .collect::<Vec<_>>()})
        };
        let mut out = Vec::new();
        encode_within_limit(&batch, &encode, &mut out);
        assert!(out.len() > 1, "{} requests", out.len());
        assert!(
            out.iter()
                .all(|encoded| encoded.body.len() <= MAX_BODY_BYTES)
        );
        assert_eq!(out.iter().map(|encoded| encoded.lines).sum::<u64>(), 4000);
        // A single line over the limit is still sent, for the API to refuse.
        let huge = [Line {
            key: None,
            value: vec![b'x'; MAX_BODY_BYTES + 1],
        }];
        let mut out = Vec::new();
        encode_within_limit(&huge, &encode, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn batches_stop_at_the_byte_limit() -> CliResult<()> {
        let (sender, receiver) = sync_channel(10);
        for _ in 0..3 {
            let _ = sender.send(Ok(Line {
                key: None,
                value: vec![b'x'; MAX_BATCH_BYTES / 2],
            }));
        }
        drop(sender);
        assert_eq!(next_batch(&receiver, 100)?.len(), 2);
        assert_eq!(next_batch(&receiver, 100)?.len(), 1);
        Ok(())
    }

    #[test]
    fn batches_end_at_the_size_limit_or_the_input_end() -> CliResult<()> {
        let (sender, receiver) = sync_channel(10);
        for n in 0..5 {
            let _ = sender.send(Ok(Line {
                key: None,
                value: vec![n],
            }));
        }
        drop(sender);
        assert_eq!(next_batch(&receiver, 3)?.len(), 3);
        assert_eq!(next_batch(&receiver, 3)?.len(), 2);
        assert!(next_batch(&receiver, 3)?.is_empty());
        Ok(())
    }
}
