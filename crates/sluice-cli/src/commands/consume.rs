//! `sluice consume`: records of a topic read through the message browser
//! (`GET …/partitions/{p}/messages`), partition by partition from an offset
//! or a timestamp; or messages taken from a queue (`POST …/get` with ack).
//!
//! Without `--follow` a topic is read up to the high watermarks it had when
//! the command started, so the command ends even while producers write;
//! with `--follow` it polls every [`POLL_INTERVAL`] when nothing is new,
//! until Ctrl-C or `--max-messages`. Ctrl-C then ends it after the request
//! in flight, with the summary and exit code 0 (a second Ctrl-C at once).

use std::io::Write;
use std::time::Duration;

use clap::{ArgGroup, Args};
use serde_json::{Value, json};

use super::{Encoding, Interrupt, Progress, segment};
use crate::args::{ApiArgs, Output};
use crate::client::{Api, Method};
use crate::error::{CliError, CliResult};
use crate::output::cell;

/// Pause between polls when nothing new arrived (`--follow`).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Most records or messages one request asks for.
const MAX_PER_REQUEST: u64 = 1000;

/// `sluice consume`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["topic", "queue"])))]
#[command(group(ArgGroup::new("start").args(["offset", "from_beginning", "timestamp"])))]
pub struct ConsumeArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Read records of this topic (they stay in the topic).
    #[arg(long)]
    topic: Option<String>,
    /// Only this partition (default: every partition, one after another).
    #[arg(long, requires = "topic")]
    partition: Option<i32>,
    /// Start at this offset in each partition.
    #[arg(long, value_name = "N", requires = "topic")]
    offset: Option<i64>,
    /// Start at the log start: the default, except with --follow, which
    /// otherwise prints only new records.
    #[arg(long, requires = "topic")]
    from_beginning: bool,
    /// Start at the first record at or after this time (milliseconds since
    /// the Unix epoch).
    #[arg(long, value_name = "MS", requires = "topic")]
    timestamp: Option<i64>,
    /// Take messages from this queue; they are acknowledged, so they leave it.
    #[arg(long)]
    queue: Option<String>,
    /// The queue's virtual host.
    #[arg(long, default_value = "/", requires = "queue")]
    vhost: String,
    /// Keep waiting for new records or messages, until Ctrl-C or --max-messages.
    #[arg(long, short)]
    follow: bool,
    /// Stop after N records or messages.
    #[arg(long, short = 'n', value_name = "N")]
    max_messages: Option<u64>,
    /// How keys, values, header values and payloads are shown.
    #[arg(long, value_enum, default_value_t = Encoding::Text)]
    encoding: Encoding,
    /// Seconds between progress reports on stderr; 0 turns them off.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    progress: f64,
    /// No progress reports and no summary.
    #[arg(long, short)]
    quiet: bool,
}

pub(crate) fn run(args: ConsumeArgs, out: &mut dyn Write) -> CliResult<()> {
    let api = Api::new(&args.api);
    let interrupt = if args.follow {
        Interrupt::watch()
    } else {
        Interrupt::none()
    };
    match (&args.topic, &args.queue) {
        (Some(topic), _) => from_topic(&api, &args, topic, &interrupt, out),
        (None, Some(queue)) => from_queue(&api, &args, queue, &interrupt, out),
        (None, None) => Err(CliError::Local(anyhow::anyhow!("give --topic or --queue"))),
    }
}

/// Where a partition's next read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    LogStart,
    Offset(i64),
    Timestamp(i64),
}

/// One partition being read.
#[derive(Debug)]
struct Cursor {
    partition: i64,
    position: Position,
    /// Stop at this offset (the high watermark at start); `None` follows.
    end: Option<i64>,
    done: bool,
}

fn from_topic(
    api: &Api,
    args: &ConsumeArgs,
    topic: &str,
    interrupt: &Interrupt,
    out: &mut dyn Write,
) -> CliResult<()> {
    let described = api.get(&format!("/api/topics/{}", segment(topic)), &[])?;
    let mut cursors: Vec<Cursor> = described["partitions"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|partition| {
            let id = partition["partition"].as_i64()?;
            let high_watermark = partition["high_watermark"].as_i64().unwrap_or(0);
            let position = match (args.offset, args.timestamp) {
                (Some(offset), _) => Position::Offset(offset),
                (None, Some(timestamp)) => Position::Timestamp(timestamp),
                (None, None) if args.follow && !args.from_beginning => {
                    Position::Offset(high_watermark)
                }
                (None, None) => Position::LogStart,
            };
            Some(Cursor {
                partition: id,
                position,
                end: (!args.follow).then_some(high_watermark),
                done: false,
            })
        })
        .filter(|cursor| {
            args.partition
                .is_none_or(|p| i64::from(p) == cursor.partition)
        })
        .collect();
    if let (Some(partition), true) = (args.partition, cursors.is_empty()) {
        return Err(CliError::Refused {
            message: format!("topic {topic:?} has no partition {partition}"),
            hint: Some(format!(
                "`sluice topics describe {topic}` shows its partitions"
            )),
        });
    }
    let json_output = args.api.output == Output::Json;
    let mut progress = Progress::new("consumed", "record", args.progress, args.quiet);
    let limit_reached = |count: u64| args.max_messages.is_some_and(|max| count >= max);
    'reading: while !limit_reached(progress.count()) && !interrupt.is_set() {
        let mut moved = 0u64;
        for cursor in cursors.iter_mut().filter(|cursor| !cursor.done) {
            if interrupt.is_set() {
                break 'reading;
            }
            let remaining = args
                .max_messages
                .map_or(MAX_PER_REQUEST, |max| max.saturating_sub(progress.count()));
            let mut query = vec![
                ("limit", remaining.clamp(1, MAX_PER_REQUEST).to_string()),
                ("encoding", args.encoding.as_str().to_owned()),
            ];
            match cursor.position {
                Position::LogStart => {}
                Position::Offset(offset) => query.push(("offset", offset.to_string())),
                Position::Timestamp(timestamp) => {
                    query.push(("timestamp", timestamp.to_string()));
                }
            }
            let path = format!(
                "/api/topics/{}/partitions/{}/messages",
                segment(topic),
                cursor.partition
            );
            let page = api.get(&path, &query)?;
            let messages = page["messages"].as_array().map_or(&[][..], Vec::as_slice);
            for message in messages {
                let offset = message["offset"].as_i64().unwrap_or(i64::MAX);
                if cursor.end.is_some_and(|end| offset >= end) {
                    break;
                }
                if json_output {
                    let mut line = message.clone();
                    line["partition"] = json!(cursor.partition);
                    writeln!(out, "{line}")?;
                } else {
                    write_record(out, cursor.partition, message)?;
                }
                moved += 1;
                progress.add(1);
                if limit_reached(progress.count()) {
                    break 'reading;
                }
            }
            if let Some(next) = page["next_offset"].as_i64() {
                cursor.position = Position::Offset(next);
            }
            let caught_up = match (cursor.end, cursor.position) {
                (Some(end), Position::Offset(next)) => next >= end,
                (Some(_), _) => true,
                (None, _) => false,
            };
            // Without --follow, an empty page also ends the partition, so a
            // log cut below the starting high watermark cannot loop.
            cursor.done = caught_up || (cursor.end.is_some() && messages.is_empty());
        }
        if cursors.iter().all(|cursor| cursor.done) {
            break;
        }
        if moved == 0 {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    progress.finish(&format!("from topic {topic:?}"));
    Ok(())
}

fn from_queue(
    api: &Api,
    args: &ConsumeArgs,
    queue: &str,
    interrupt: &Interrupt,
    out: &mut dyn Write,
) -> CliResult<()> {
    let path = format!(
        "/api/queues/{}/{}/get",
        segment(&args.vhost),
        segment(queue)
    );
    let json_output = args.api.output == Output::Json;
    let mut progress = Progress::new("consumed", "message", args.progress, args.quiet);
    loop {
        let remaining = args
            .max_messages
            .map_or(MAX_PER_REQUEST, |max| max.saturating_sub(progress.count()));
        if remaining == 0 || interrupt.is_set() {
            break;
        }
        let body = json!({
            "count": remaining.min(MAX_PER_REQUEST),
            "ack": true,
            "encoding": args.encoding.as_str(),
        });
        let answer = api.send(Method::Post, &path, &body)?;
        let messages = answer["messages"].as_array().map_or(&[][..], Vec::as_slice);
        for message in messages {
            if json_output {
                writeln!(out, "{message}")?;
            } else {
                write_queue_message(out, message)?;
            }
        }
        progress.add(messages.len() as u64);
        if messages.is_empty() {
            if !args.follow {
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    progress.finish(&format!("from queue {queue:?} in vhost {}", args.vhost));
    Ok(())
}

/// `[partition:offset] key (name=value, …): value`; the key and the
/// headers only when the record has them, `(null)` for a null value.
fn write_record(out: &mut dyn Write, partition: i64, record: &Value) -> CliResult<()> {
    let mut line = format!("[{partition}:{}]", cell(&record["offset"]));
    if let Some(key) = record["key"].as_str() {
        line.push(' ');
        line.push_str(key);
    }
    let headers: Vec<String> = record["headers"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|header| match header["value"].as_str() {
            Some(value) => format!("{}={value}", cell(&header["key"])),
            None => cell(&header["key"]),
        })
        .collect();
    if !headers.is_empty() {
        line.push_str(&format!(" ({})", headers.join(", ")));
    }
    let value = record["value"].as_str().unwrap_or("(null)");
    writeln!(out, "{line}: {value}")?;
    Ok(())
}

/// `[exchange routing-key] (name=value, …): payload`, with `redelivered`
/// in the brackets when the message was delivered before.
pub(crate) fn write_queue_message(out: &mut dyn Write, message: &Value) -> CliResult<()> {
    let exchange = match message["exchange"].as_str() {
        Some("") => "(default)".to_owned(),
        _ => cell(&message["exchange"]),
    };
    let mut line = format!("[{exchange} {}", cell(&message["routing_key"]));
    if message["redelivered"].as_bool() == Some(true) {
        line.push_str(" redelivered");
    }
    line.push(']');
    if let Some(headers) = message["properties"]["headers"]
        .as_object()
        .filter(|headers| !headers.is_empty())
    {
        let pairs: Vec<String> = headers
            .iter()
            .map(|(name, value)| format!("{name}={}", cell(value)))
            .collect();
        line.push_str(&format!(" ({})", pairs.join(", ")));
    }
    writeln!(out, "{line}: {}", cell(&message["payload"]))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(write: impl FnOnce(&mut Vec<u8>) -> CliResult<()>) -> String {
        let mut out = Vec::new();
        let _ = write(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn records_print_offset_key_headers_and_value() {
        let record = json!({"offset": 10, "key": "k1", "value": "hello",
                            "headers": [{"key": "source", "value": "web"}, {"key": "flag", "value": null}]});
        assert_eq!(
            render(|out| write_record(out, 0, &record)),
            "[0:10] k1 (source=web, flag): hello\n"
        );
        let bare = json!({"offset": 3, "key": null, "value": null, "headers": []});
        assert_eq!(render(|out| write_record(out, 2, &bare)), "[2:3]: (null)\n");
    }

    #[test]
    fn queue_messages_print_exchange_routing_key_and_payload() {
        let message = json!({"exchange": "", "routing_key": "jobs", "redelivered": true,
                             "payload": "run", "properties": {"headers": {"attempt": 2}}});
        assert_eq!(
            render(|out| write_queue_message(out, &message)),
            "[(default) jobs redelivered] (attempt=2): run\n"
        );
    }
}
