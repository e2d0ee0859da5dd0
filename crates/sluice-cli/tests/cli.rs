//! The `sluice` admin commands as scripts and people meet them: the real
//! binary run as a child process against a real broker (one per test, on
//! free ports of 127.0.0.1, killed when the test ends).
//!
//! Contract under test: each command does what `docs/cli.md` says through
//! the admin API; tables are aligned, `--output json` is the API's JSON;
//! records produced with keys and headers come back intact; exit codes are
//! 0 success, 1 refused (with the API's message), 2 usage, 3 no broker,
//! 4 bad credentials, 5 not the API. Every child has a deadline and is
//! killed by pid when it passes.
//!
//! Build the broker first: `cargo build -p sluice` (scripts/test does).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sluice_e2e::{BrokerProcess, broker_binary, free_port};

/// How long one command may run.
const DEADLINE: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a finished command left.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Fails unless the command exited 0.
    fn ok(self) -> anyhow::Result<Run> {
        ensure!(self.code == 0, "expected success, got {self:#?}");
        Ok(self)
    }

    /// Fails unless the command exited with `code`.
    fn code(self, code: i32) -> anyhow::Result<Run> {
        ensure!(
            self.code == code,
            "expected exit code {code}, got {self:#?}"
        );
        Ok(self)
    }

    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {self:#?}"))
    }

    /// stdout as one JSON value per line.
    fn json_lines(&self) -> anyhow::Result<Vec<Value>> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
            .collect()
    }
}

/// `sluice ARGS` with nothing from the environment that could change it.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(broker_binary());
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|name| name.starts_with("SLUICE_"))
        {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `command` with `input` on stdin until it exits or the deadline
/// passes (then it is killed and the test fails).
fn run(mut command: Command, input: &[u8]) -> anyhow::Result<Run> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start sluice")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let code = wait(&mut child, DEADLINE)?;
    let _ = writer.join();
    Ok(Run {
        code,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// The child's exit code; kills it (by pid) if it outlives `deadline`.
fn wait(child: &mut Child, deadline: Duration) -> anyhow::Result<i32> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code().unwrap_or(-1));
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "sluice (pid {}) did not exit within {deadline:?}",
                child.id()
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// `sluice ARGS --http <broker>`.
fn sluice(broker: &BrokerProcess, args: &[&str]) -> anyhow::Result<Run> {
    sluice_with_input(broker, args, b"")
}

fn sluice_with_input(broker: &BrokerProcess, args: &[&str], input: &[u8]) -> anyhow::Result<Run> {
    let url = broker.http_url();
    let mut all = args.to_vec();
    all.extend(["--http", url.as_str()]);
    run(command(&all), input)
}

fn items(list: &Value) -> &[Value] {
    list["items"].as_array().map_or(&[], Vec::as_slice)
}

fn names(list: &Value, field: &str) -> BTreeSet<String> {
    items(list)
        .iter()
        .filter_map(|item| item[field].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn topics_are_created_listed_described_altered_and_deleted() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    let created = sluice(
        &broker,
        &[
            "topics",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=3600000",
        ],
    )?
    .ok()?;
    assert_eq!(
        created.stdout,
        "created topic \"orders\" with 3 partitions\n"
    );
    sluice(&broker, &["topics", "create", "audit"])?.ok()?;

    let table = sluice(&broker, &["topics", "list"])?.ok()?;
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("NAME    PARTITIONS  RECORDS  SIZE  IN/S  OUT/S"),
        "{table:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("orders           3        0")),
        "{table:#?}"
    );
    let list = sluice(&broker, &["topics", "list", "--output", "json"])?
        .ok()?
        .json()?;
    assert_eq!(list["total"], 2);
    assert_eq!(
        names(&list, "name"),
        BTreeSet::from(["audit".to_owned(), "orders".to_owned()])
    );
    let filtered = sluice(
        &broker,
        &["topics", "list", "--filter", "ORD", "--output", "json"],
    )?
    .ok()?
    .json()?;
    assert_eq!(
        names(&filtered, "name"),
        BTreeSet::from(["orders".to_owned()])
    );

    let described = sluice(
        &broker,
        &["topics", "describe", "orders", "--output", "json"],
    )?
    .ok()?
    .json()?;
    assert_eq!(described["partitions"].as_array().map(Vec::len), Some(3));
    let retention = described["configs"]
        .as_array()
        .and_then(|configs| configs.iter().find(|c| c["name"] == "retention.ms"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(retention["value"], "3600000");
    assert_eq!(retention["source"], "topic");
    let human = sluice(&broker, &["topics", "describe", "orders"])?.ok()?;
    assert!(
        human.stdout.starts_with("topic  orders\nid     "),
        "{human:#?}"
    );
    // Column widths follow the longest config name and value.
    assert!(
        human.stdout.lines().any(|line| line.split_whitespace().eq([
            "retention.ms",
            "3600000",
            "topic"
        ])),
        "{human:#?}"
    );

    let altered = sluice(
        &broker,
        &[
            "topics",
            "alter",
            "orders",
            "--set",
            "retention.bytes=1048576",
            "--delete",
            "retention.ms",
            "--output",
            "json",
        ],
    )?
    .ok()?
    .json()?;
    let source_of = |name: &str| {
        altered["configs"]
            .as_array()
            .and_then(|configs| configs.iter().find(|c| c["name"] == name))
            .map(|c| (c["value"].clone(), c["source"].clone()))
    };
    assert_eq!(
        source_of("retention.bytes"),
        Some((Value::from("1048576"), Value::from("topic")))
    );
    assert_eq!(
        source_of("retention.ms").map(|(_, source)| source),
        Some(Value::from("default"))
    );
    sluice(&broker, &["topics", "alter", "orders"])?.code(2)?;

    let grown = sluice(
        &broker,
        &["topics", "add-partitions", "orders", "--total", "5"],
    )?
    .ok()?;
    assert_eq!(grown.stdout, "topic \"orders\" now has 5 partitions\n");
    let shrink = sluice(
        &broker,
        &["topics", "add-partitions", "orders", "--total", "2"],
    )?
    .code(1)?;
    assert!(shrink.stderr.starts_with("error: "), "{shrink:#?}");

    let duplicate = sluice(&broker, &["topics", "create", "orders"])?.code(1)?;
    assert!(
        duplicate.stderr.contains("already exists"),
        "{duplicate:#?}"
    );
    let invalid = sluice(&broker, &["topics", "create", "bad", "--partitions", "0"])?.code(1)?;
    assert!(
        invalid.stderr.contains("between 1 and 10000"),
        "{invalid:#?}"
    );

    let deleted = sluice(&broker, &["topics", "delete", "orders"])?.ok()?;
    assert_eq!(deleted.stdout, "deleted topic \"orders\"\n");
    let gone = sluice(&broker, &["topics", "describe", "orders"])?.code(1)?;
    assert!(
        gone.stderr
            .contains("error: topic \"orders\" does not exist"),
        "{gone:#?}"
    );
    assert!(
        gone.stderr.contains("hint: `sluice topics list`"),
        "{gone:#?}"
    );
    let json_delete = sluice(&broker, &["topics", "delete", "audit", "--output", "json"])?.ok()?;
    assert_eq!(json_delete.stdout, "", "204 answers print nothing as JSON");
    let empty = sluice(&broker, &["topics", "list"])?.ok()?;
    assert_eq!(empty.stdout, "no topics\n");
    Ok(())
}

#[test]
fn produced_lines_come_back_with_keys_headers_and_values() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    sluice(
        &broker,
        &["topics", "create", "events", "--partitions", "2"],
    )?
    .ok()?;
    let input = "user-1:signed up\nuser-2:paid: 10 EUR\n\nno key here\r\nuser-1:left\n";
    let produced = sluice_with_input(
        &broker,
        &[
            "produce",
            "--topic",
            "events",
            "--key-separator",
            ":",
            "--header",
            "source=cli",
            "--header",
            "trace=a=b",
            "--output",
            "json",
        ],
        input.as_bytes(),
    )?
    .ok()?;
    let offsets = produced.json()?;
    assert_eq!(
        offsets["offsets"].as_array().map(Vec::len),
        Some(4),
        "{produced:#?}"
    );
    assert!(
        produced
            .stderr
            .contains("produced 4 records to topic \"events\""),
        "{produced:#?}"
    );

    let consumed = sluice(
        &broker,
        &["consume", "--topic", "events", "--output", "json"],
    )?
    .ok()?;
    let records = consumed.json_lines()?;
    assert_eq!(records.len(), 4, "{consumed:#?}");
    let mut by_value: Vec<(String, Value, Value)> = records
        .iter()
        .map(|r| {
            (
                r["value"].as_str().unwrap_or_default().to_owned(),
                r["key"].clone(),
                r["headers"].clone(),
            )
        })
        .collect();
    by_value.sort_by(|a, b| a.0.cmp(&b.0));
    let values: Vec<&str> = by_value.iter().map(|(v, _, _)| v.as_str()).collect();
    assert_eq!(values, ["left", "no key here", "paid: 10 EUR", "signed up"]);
    assert_eq!(by_value[3].1, "user-1");
    assert_eq!(by_value[1].1, Value::Null);
    assert_eq!(
        by_value[0].2,
        serde_json::json!([{"key": "source", "value": "cli"}, {"key": "trace", "value": "a=b"}])
    );
    // Same key, same partition, in order.
    let user_1: Vec<(i64, i64)> = records
        .iter()
        .filter(|r| r["key"] == "user-1")
        .map(|r| {
            (
                r["partition"].as_i64().unwrap_or(-1),
                r["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(user_1.len(), 2);
    assert_eq!(user_1[0].0, user_1[1].0);
    assert!(user_1[0].1 < user_1[1].1);
    let partition = user_1[0].0.to_string();

    let human = sluice(
        &broker,
        &["consume", "--topic", "events", "--partition", &partition],
    )?
    .ok()?;
    assert!(
        human.stdout.contains(&format!(
            "[{partition}:{}] user-1 (source=cli, trace=a=b): signed up\n",
            user_1[0].1
        )),
        "{human:#?}"
    );
    assert!(human.stderr.contains("consumed "), "{human:#?}");

    let from_offset = sluice(
        &broker,
        &[
            "consume",
            "--topic",
            "events",
            "--partition",
            &partition,
            "--offset",
            &user_1[1].1.to_string(),
            "--output",
            "json",
            "--quiet",
        ],
    )?
    .ok()?;
    let tail = from_offset.json_lines()?;
    assert_eq!(
        tail.first().map(|r| r["value"].clone()),
        Some(Value::from("left"))
    );
    assert_eq!(from_offset.stderr, "", "--quiet prints no summary");

    let limited = sluice(
        &broker,
        &[
            "consume",
            "--topic",
            "events",
            "--max-messages",
            "3",
            "--output",
            "json",
        ],
    )?
    .ok()?;
    assert_eq!(limited.json_lines()?.len(), 3);
    let future = sluice(
        &broker,
        &[
            "consume",
            "--topic",
            "events",
            "--timestamp",
            "99999999999999",
            "--output",
            "json",
        ],
    )?
    .ok()?;
    assert_eq!(future.stdout, "");
    let past = sluice(
        &broker,
        &[
            "consume",
            "--topic",
            "events",
            "--timestamp",
            "0",
            "--output",
            "json",
        ],
    )?
    .ok()?;
    assert_eq!(past.json_lines()?.len(), 4);

    let binary = sluice_with_input(
        &broker,
        &[
            "produce",
            "--topic",
            "events",
            "--partition",
            "0",
            "--quiet",
        ],
        &[0xff, 0xfe, b'\n'],
    )?
    .ok()?;
    assert_eq!(binary.stderr, "");
    let hex = sluice(
        &broker,
        &[
            "consume",
            "--topic",
            "events",
            "--partition",
            "0",
            "--encoding",
            "hex",
            "--output",
            "json",
        ],
    )?
    .ok()?;
    assert!(
        hex.json_lines()?.iter().any(|r| r["value"] == "fffe"),
        "{hex:#?}"
    );

    // An unknown topic is created (kafka.auto_create_topics), but only
    // under a legal name.
    let illegal =
        sluice_with_input(&broker, &["produce", "--topic", "bad name!"], b"x\n")?.code(1)?;
    assert!(illegal.stderr.contains("bad name!"), "{illegal:#?}");
    let no_partition = sluice(
        &broker,
        &["consume", "--topic", "events", "--partition", "7"],
    )?
    .code(1)?;
    assert!(
        no_partition.stderr.contains("no partition 7"),
        "{no_partition:#?}"
    );
    sluice(
        &broker,
        &[
            "consume",
            "--topic",
            "events",
            "--offset",
            "1",
            "--from-beginning",
        ],
    )?
    .code(2)?;
    sluice(&broker, &["consume"])?.code(2)?;
    sluice(&broker, &["produce", "--topic", "t", "--exchange", "e"])?.code(2)?;
    Ok(())
}

#[test]
fn long_produce_runs_batch_and_report_progress() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    sluice(&broker, &["topics", "create", "bulk", "--partitions", "3"])?.ok()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("lines.txt");
    let lines: String = (0..2500)
        .map(|n| format!("key-{}|value {n}\n", n % 7))
        .collect();
    std::fs::write(&file, lines)?;
    let produced = sluice(
        &broker,
        &[
            "produce",
            "--topic",
            "bulk",
            "--file",
            file.to_str().context("utf-8 path")?,
            "--key-separator",
            "|",
            "--batch-size",
            "300",
            "--progress",
            "0.000001",
        ],
    )?
    .ok()?;
    assert!(produced.stderr.contains("so far"), "{produced:#?}");
    assert!(
        produced
            .stderr
            .contains("produced 2500 records to topic \"bulk\" in "),
        "{produced:#?}"
    );
    assert_eq!(produced.stdout, "");
    let list = sluice(&broker, &["topics", "list", "--output", "json"])?
        .ok()?
        .json()?;
    assert_eq!(
        items(&list).first().map(|t| t["records"].clone()),
        Some(Value::from(2500))
    );
    let consumed = sluice(&broker, &["consume", "--topic", "bulk", "--output", "json"])?.ok()?;
    let values: BTreeSet<String> = consumed
        .json_lines()?
        .iter()
        .filter_map(|r| r["value"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(values.len(), 2500);
    let missing = sluice(
        &broker,
        &["produce", "--topic", "bulk", "--file", "/nonexistent/x"],
    )?
    .code(1)?;
    assert!(
        missing.stderr.contains("cannot read /nonexistent/x"),
        "{missing:#?}"
    );
    Ok(())
}

#[test]
fn follow_prints_records_produced_after_it_started() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    sluice(&broker, &["topics", "create", "live"])?.ok()?;
    sluice_with_input(
        &broker,
        &["produce", "--topic", "live", "--quiet"],
        b"old\n",
    )?
    .ok()?;
    let url = broker.http_url();
    let mut follower = command(&[
        "consume",
        "--topic",
        "live",
        "--follow",
        "--max-messages",
        "2",
        "--output",
        "json",
        "--http",
        &url,
    ]);
    let mut child = follower
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    // The follower starts at the end: give it time to read the high
    // watermark before the new records arrive, and produce until it exits.
    let until = Instant::now() + DEADLINE;
    let mut sent = 0;
    while child.try_wait()?.is_none() && Instant::now() < until {
        thread::sleep(Duration::from_millis(300));
        sluice_with_input(
            &broker,
            &["produce", "--topic", "live", "--quiet"],
            b"new\n",
        )?
        .ok()?;
        sent += 1;
    }
    let code = wait(&mut child, Duration::from_secs(5))?;
    let output = stdout.join().unwrap_or_default();
    let log = stderr.join().unwrap_or_default();
    assert_eq!(code, 0, "{output}\n{log}");
    let values: Vec<Value> = output
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(values.len(), 2, "after {sent} produced: {output}");
    assert!(values.iter().all(|r| r["value"] == "new"), "{output}");
    Ok(())
}

#[test]
fn queues_exchanges_and_bindings_round_trip() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    let declared = sluice(
        &broker,
        &[
            "exchanges",
            "declare",
            "orders",
            "--type",
            "topic",
            "--durable",
        ],
    )?
    .ok()?;
    assert_eq!(
        declared.stdout,
        "declared topic exchange \"orders\" in vhost /\n"
    );
    sluice(
        &broker,
        &[
            "queues",
            "declare",
            "eu-orders",
            "--durable",
            "--argument",
            "x-max-priority=5",
        ],
    )?
    .ok()?;
    sluice(
        &broker,
        &[
            "bindings",
            "create",
            "--source",
            "orders",
            "--destination",
            "eu-orders",
            "--routing-key",
            "eu.#",
        ],
    )?
    .ok()?;

    let exchanges = sluice(
        &broker,
        &["exchanges", "list", "--vhost", "/", "--output", "json"],
    )?
    .ok()?
    .json()?;
    let orders = items(&exchanges)
        .iter()
        .find(|e| e["name"] == "orders")
        .cloned()
        .unwrap_or_default();
    assert_eq!(orders["type"], "topic");
    assert_eq!(orders["durable"], true);
    assert_eq!(orders["bindings"], 1);
    let table = sluice(&broker, &["exchanges", "list"])?.ok()?;
    assert!(table.stdout.contains("(default)"), "{table:#?}");

    let queues = sluice(&broker, &["queues", "list", "--output", "json"])?
        .ok()?
        .json()?;
    assert_eq!(
        names(&queues, "name"),
        BTreeSet::from(["eu-orders".to_owned()])
    );
    assert_eq!(items(&queues)[0]["arguments"]["x-max-priority"], 5);
    let bindings = sluice(&broker, &["bindings", "list", "--output", "json"])?
        .ok()?
        .json()?;
    assert_eq!(items(&bindings).len(), 1);
    assert_eq!(items(&bindings)[0]["routing_key"], "eu.#");
    let binding_table = sluice(&broker, &["bindings", "list"])?.ok()?;
    assert_eq!(
        binding_table.stdout,
        "VHOST  SOURCE  DESTINATION  TYPE   ROUTING-KEY  ARGUMENTS\n\
         /      orders  eu-orders    queue  eu.#\n"
    );

    let published = sluice_with_input(
        &broker,
        &[
            "produce",
            "--exchange",
            "orders",
            "--key-separator",
            " ",
            "--header",
            "origin=test",
            "--persistent",
        ],
        b"eu.de first\nus.ny lost\neu.fr second\neu.it third\n",
    )?
    .ok()?;
    assert!(
        published
            .stderr
            .contains("published 4 messages to exchange \"orders\""),
        "{published:#?}"
    );
    assert!(
        published.stderr.contains("1 message matched no binding"),
        "{published:#?}"
    );

    let peeked = sluice(&broker, &["queues", "peek", "eu-orders", "--count", "2"])?.ok()?;
    assert_eq!(
        peeked.stdout,
        "[orders eu.de] (origin=test): first\n[orders eu.fr] (origin=test): second\n"
    );
    let ready = sluice(&broker, &["queues", "list", "--output", "json"])?
        .ok()?
        .json()?;
    assert_eq!(items(&ready)[0]["messages_ready"], 3, "peek takes nothing");

    let one = sluice(
        &broker,
        &[
            "consume",
            "--queue",
            "eu-orders",
            "--max-messages",
            "1",
            "--output",
            "json",
        ],
    )?
    .ok()?;
    let taken = one.json_lines()?;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0]["payload"], "first");
    assert_eq!(taken[0]["properties"]["delivery_mode"], 2);
    let rest = sluice(&broker, &["consume", "--queue", "eu-orders"])?.ok()?;
    assert_eq!(
        rest.stdout,
        "[orders eu.fr] (origin=test): second\n[orders eu.it] (origin=test): third\n"
    );
    assert!(rest.stderr.contains("consumed 2 messages"), "{rest:#?}");

    sluice_with_input(
        &broker,
        &[
            "produce",
            "--exchange",
            "",
            "--routing-key",
            "eu-orders",
            "--quiet",
        ],
        b"a\nb\n",
    )?
    .ok()?;
    let purged = sluice(&broker, &["queues", "purge", "eu-orders"])?.ok()?;
    assert_eq!(
        purged.stdout,
        "purged 2 messages from queue \"eu-orders\" in vhost /\n"
    );

    let unbind = [
        "bindings",
        "delete",
        "--source",
        "orders",
        "--destination",
        "eu-orders",
        "--routing-key",
        "eu.#",
    ];
    sluice(&broker, &unbind)?.ok()?;
    let again = sluice(&broker, &unbind)?.code(1)?;
    assert!(again.stderr.contains("no such binding"), "{again:#?}");
    sluice(&broker, &["queues", "delete", "eu-orders", "--if-empty"])?.ok()?;
    sluice(&broker, &["exchanges", "delete", "orders"])?.ok()?;
    let queues = sluice(&broker, &["queues", "list"])?.ok()?;
    assert_eq!(queues.stdout, "no queues\n");
    let missing = sluice(&broker, &["queues", "peek", "eu-orders"])?.code(1)?;
    assert!(
        missing.stderr.contains("hint: `sluice queues list`"),
        "{missing:#?}"
    );
    let no_vhost = sluice(&broker, &["queues", "declare", "q", "--vhost", "nope"])?.code(1)?;
    assert!(no_vhost.stderr.contains("nope"), "{no_vhost:#?}");
    sluice(&broker, &["exchanges", "declare", "x", "--type", "bogus"])?.code(2)?;
    Ok(())
}

/// A Kafka client of group `group` that commits `offset` on partition 0 of
/// `topic` and leaves, as an application that stopped would.
fn commit_offset(
    broker: &BrokerProcess,
    group: &str,
    topic: &str,
    offset: i64,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set(
            "bootstrap.servers",
            format!("127.0.0.1:{}", broker.kafka_port),
        )
        .set("group.id", group)
        .set("client.id", "sluice-cli-test")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Offset(offset))?;
    consumer.commit(&partitions, CommitMode::Sync)?;
    Ok(())
}

#[test]
fn groups_show_lag_and_reset_offsets() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    sluice(&broker, &["topics", "create", "payments"])?.ok()?;
    let lines: String = (0..10).map(|n| format!("payment {n}\n")).collect();
    sluice_with_input(
        &broker,
        &["produce", "--topic", "payments", "--quiet"],
        lines.as_bytes(),
    )?
    .ok()?;
    commit_offset(&broker, "billing", "payments", 4)?;

    let list = sluice(&broker, &["groups", "list", "--output", "json"])?
        .ok()?
        .json()?;
    let billing = items(&list)
        .iter()
        .find(|g| g["group_id"] == "billing")
        .cloned()
        .unwrap_or_default();
    assert_eq!(billing["state"], "Empty", "{list}");
    assert_eq!(billing["lag"], 6, "{list}");
    let table = sluice(&broker, &["groups", "list"])?.ok()?;
    assert_eq!(
        table.stdout,
        "GROUP    TYPE     STATE  MEMBERS  LAG  IN-FLIGHT  ARCHIVED  PROTOCOL-TYPE\nbilling  classic  Empty        0    6          -         -  consumer\n"
    );

    let described = sluice(&broker, &["groups", "describe", "billing"])?.ok()?;
    assert!(described.stdout.contains("no members"), "{described:#?}");
    assert!(
        described
            .stdout
            .contains("payments          0          4       10    6"),
        "{described:#?}"
    );

    let reset = sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            "billing",
            "--topic",
            "payments",
            "--to",
            "earliest",
            "--output",
            "json",
        ],
    )?
    .ok()?
    .json()?;
    assert_eq!(reset["offsets"][0]["committed_offset"], 0);
    assert_eq!(reset["offsets"][0]["lag"], 10);
    let to_offset = sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            "billing",
            "--to",
            "offset",
            "--offset",
            "7",
        ],
    )?
    .ok()?;
    assert!(
        to_offset
            .stdout
            .contains("payments          0          7       10    3"),
        "{to_offset:#?}"
    );
    assert!(
        to_offset
            .stdout
            .starts_with("reset the offsets of group \"billing\" to offset 7\n"),
        "{to_offset:#?}"
    );
    let latest = sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            "billing",
            "--to",
            "latest",
            "--output",
            "json",
        ],
    )?
    .ok()?
    .json()?;
    assert_eq!(latest["offsets"][0]["lag"], 0);
    sluice(
        &broker,
        &["groups", "reset-offsets", "billing", "--to", "timestamp"],
    )?
    .code(2)?;
    let by_time = sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            "billing",
            "--to",
            "timestamp",
            "--timestamp",
            "0",
            "--output",
            "json",
        ],
    )?
    .ok()?
    .json()?;
    assert_eq!(by_time["offsets"][0]["committed_offset"], 0);

    sluice(&broker, &["groups", "delete", "billing"])?.ok()?;
    let gone = sluice(&broker, &["groups", "describe", "billing"])?.code(1)?;
    assert!(gone.stderr.contains("does not exist"), "{gone:#?}");
    let none = sluice(&broker, &["groups", "list"])?.ok()?;
    assert_eq!(none.stdout, "no consumer groups\n");
    Ok(())
}

#[test]
fn connections_are_listed_and_closed() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    // A bare TCP connection is registered when accepted, before any request.
    let mut client = TcpStream::connect(("127.0.0.1", broker.kafka_port))?;
    let peer = client.local_addr()?.to_string();
    let until = Instant::now() + DEADLINE;
    let ours = loop {
        let list = sluice(&broker, &["connections", "list", "--output", "json"])?
            .ok()?
            .json()?;
        if let Some(found) = items(&list).iter().find(|c| c["peer"] == peer.as_str()) {
            break found.clone();
        }
        ensure!(
            Instant::now() < until,
            "no connection from {peer} in {list}"
        );
        thread::sleep(POLL_INTERVAL);
    };
    assert_eq!(ours["protocol"], "kafka");
    let table = sluice(&broker, &["connections", "list"])?.ok()?;
    assert!(table.stdout.starts_with("ID  PROTOCOL  PEER"), "{table:#?}");
    assert!(table.stdout.contains(&peer), "{table:#?}");
    let id = ours["id"].to_string();
    let closed = sluice(&broker, &["connections", "close", &id, "--reason", "test"])?.ok()?;
    assert_eq!(closed.stdout, format!("closed connection {id}\n"));
    client.set_read_timeout(Some(DEADLINE))?;
    let mut byte = [0u8; 1];
    assert_eq!(
        client.read(&mut byte)?,
        0,
        "the broker drops a closed Kafka connection"
    );
    let unknown = sluice(&broker, &["connections", "close", "999999"])?.code(1)?;
    assert!(
        unknown.stderr.contains("no connection 999999"),
        "{unknown:#?}"
    );
    sluice(&broker, &["connections", "close", "not-a-number"])?.code(2)?;
    Ok(())
}

#[test]
fn exit_codes_tell_scripts_what_went_wrong() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    let status = sluice(&broker, &["status", "--output", "json"])?
        .ok()?
        .json()?;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let human = sluice(&broker, &["status"])?.ok()?;
    assert!(
        human.stdout.starts_with("broker       sluice "),
        "{human:#?}"
    );
    assert!(human.stdout.contains("alarms       none"), "{human:#?}");
    assert!(
        human.stdout.contains("\nhealth       ready\n"),
        "{human:#?}"
    );
    assert_eq!(status["health"]["status"], "ready");

    let port = free_port();
    let unreachable = run(
        command(&["topics", "list", "--http", &format!("127.0.0.1:{port}")]),
        b"",
    )?
    .code(3)?;
    assert!(
        unreachable.stderr.starts_with(&format!(
            "error: no broker at 127.0.0.1:{port}: is `sluice` running?"
        )),
        "{unreachable:#?}"
    );
    assert!(unreachable.stderr.contains("hint: "), "{unreachable:#?}");
    let mut from_env = command(&["status"]);
    from_env.env("SLUICE_HTTP", format!("http://127.0.0.1:{port}"));
    run(from_env, b"")?.code(3)?;
    let mut env_ok = command(&["status", "--output", "json"]);
    env_ok.env("SLUICE_HTTP", broker.http_url());
    run(env_ok, b"")?.ok()?;

    let wrong = sluice(&broker, &["topics", "list", "--user", "guest:wrong"])?.code(4)?;
    assert!(
        wrong
            .stderr
            .contains("refused the credentials of user \"guest\""),
        "{wrong:#?}"
    );
    let mut env_credentials = command(&["status", "--http", &broker.http_url()]);
    env_credentials.env("SLUICE_CREDENTIALS", "nobody:x");
    let refused = run(env_credentials, b"")?.code(4)?;
    // Readiness needs no login: a wrong user still learns the broker is up.
    assert!(refused.stdout.contains("health: ready"), "{refused:#?}");

    let unknown = sluice(&broker, &["topics", "describe", "missing"])?.code(1)?;
    assert!(
        unknown.stderr.contains("topic \"missing\" does not exist"),
        "{unknown:#?}"
    );
    sluice(&broker, &["topics", "frobnicate"])?.code(2)?;
    sluice(&broker, &["topics", "list", "--output", "yaml"])?.code(2)?;
    sluice(&broker, &["status", "--user", "no-colon"])?.code(2)?;
    // https:// is taken (a listener with http.tls); other schemes are not.
    run(command(&["status", "--http", "ftp://127.0.0.1:1"]), b"")?.code(2)?;
    run(command(&["status", "--http", "https://127.0.0.1:1"]), b"")?.code(3)?;

    for (port, protocol) in [(broker.amqp_port, "AMQP"), (broker.kafka_port, "Kafka")] {
        let address = format!("127.0.0.1:{port}");
        let not_api = run(command(&["topics", "list", "--http", &address]), b"")?.code(5)?;
        assert!(
            not_api.stderr.contains(&format!(
                "error: the server at {address} is not a Sluice admin API: it speaks {protocol}, not HTTP"
            )),
            "{not_api:#?}"
        );
        assert!(
            not_api
                .stderr
                .contains(&format!("names the broker's {protocol} port")),
            "{not_api:#?}"
        );
    }

    let help = run(command(&["topics", "list", "--help"]), b"")?.ok()?;
    assert!(help.stdout.contains("Exit codes:"), "{help:#?}");
    assert!(
        help.stdout.contains("4  authentication failed"),
        "{help:#?}"
    );
    Ok(())
}

/// `produce --exchange` sends batches to `POST …/messages`: every line
/// arrives, in input order, across several requests; unroutable lines are
/// counted; one message reads as one message.
#[test]
fn exchange_produce_sends_batches_in_order() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    sluice(&broker, &["queues", "declare", "jobs", "--durable"])?.ok()?;
    let lines: String = (0..2500).map(|n| format!("job {n}\n")).collect();
    let published = sluice_with_input(
        &broker,
        &[
            "produce",
            "--exchange",
            "",
            "--routing-key",
            "jobs",
            "--persistent",
            "--batch-size",
            "300",
            "--output",
            "json",
        ],
        lines.as_bytes(),
    )?
    .ok()?;
    assert_eq!(
        published.json()?,
        serde_json::json!({"published": 2500, "unroutable": 0, "rejected": 0})
    );
    assert!(
        published
            .stderr
            .contains("published 2500 messages to the default exchange in vhost / in "),
        "{published:#?}"
    );
    let taken = sluice(&broker, &["consume", "--queue", "jobs", "--output", "json"])?.ok()?;
    let payloads: Vec<String> = taken
        .json_lines()?
        .iter()
        .filter_map(|m| m["payload"].as_str().map(str::to_owned))
        .collect();
    let expected: Vec<String> = (0..2500).map(|n| format!("job {n}")).collect();
    assert_eq!(payloads, expected);
    assert_eq!(taken.json_lines()?[0]["properties"]["delivery_mode"], 2);

    let one = sluice_with_input(
        &broker,
        &[
            "produce",
            "--exchange",
            "amq.topic",
            "--routing-key",
            "none",
        ],
        b"lost\n",
    )?
    .ok()?;
    assert!(
        one.stderr
            .contains("published 1 message to exchange \"amq.topic\""),
        "{one:#?}"
    );
    assert!(
        one.stderr
            .contains("warning: 1 message matched no binding and was dropped"),
        "{one:#?}"
    );
    Ok(())
}

/// A topic that does not exist is created by `produce`, as a Kafka
/// producer creates it (kafka.auto_create_topics is on by default).
#[test]
fn produce_creates_an_unknown_topic_like_kafka_does() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    let produced = sluice_with_input(&broker, &["produce", "--topic", "fresh"], b"one\n")?.ok()?;
    assert!(
        produced
            .stderr
            .contains("produced 1 record to topic \"fresh\""),
        "{produced:#?}"
    );
    let consumed = sluice(&broker, &["consume", "--topic", "fresh"])?.ok()?;
    assert_eq!(consumed.stdout, "[0:0]: one\n");
    assert!(
        consumed.stderr.contains("consumed 1 record from topic"),
        "{consumed:#?}"
    );
    Ok(())
}

/// Ctrl-C ends `consume --follow` with its summary and exit code 0.
#[test]
fn interrupted_follow_prints_its_summary() -> anyhow::Result<()> {
    let broker = BrokerProcess::start();
    sluice_with_input(
        &broker,
        &["produce", "--topic", "tail", "--quiet"],
        b"old\n",
    )?
    .ok()?;
    let url = broker.http_url();
    let mut follower = command(&["consume", "--topic", "tail", "--follow", "--http", &url]);
    let mut child = follower
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (line_sender, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().context("stdout")?;
    let forward = thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = line_sender.send(line);
        }
    });
    let stderr = reader(child.stderr.take());
    // The follower starts at the end: produce until it prints a record.
    let until = Instant::now() + DEADLINE;
    let mut printed = Vec::new();
    while printed.is_empty() {
        ensure!(Instant::now() < until, "the follower printed nothing");
        sluice_with_input(
            &broker,
            &["produce", "--topic", "tail", "--quiet"],
            b"new\n",
        )?
        .ok()?;
        printed.extend(lines.recv_timeout(Duration::from_millis(300)).ok());
    }
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    ensure!(interrupted.success(), "kill -INT {}", child.id());
    let code = wait(&mut child, Duration::from_secs(10))?;
    let _ = forward.join();
    printed.extend(lines.try_iter());
    let log = stderr.join().unwrap_or_default();
    assert_eq!(code, 0, "{printed:?}\n{log}");
    assert!(
        printed.iter().all(|line| line.ends_with("]: new")),
        "{printed:?}"
    );
    let noun = if printed.len() == 1 {
        "record"
    } else {
        "records"
    };
    assert!(
        log.contains(&format!(
            "consumed {} {noun} from topic \"tail\" in ",
            printed.len()
        )),
        "{printed:?}\n{log}"
    );
    Ok(())
}

#[test]
fn help_shows_no_empty_environment_value() -> anyhow::Result<()> {
    let help = run(command(&["topics", "--help"]), b"")?.ok()?;
    assert!(!help.stdout.contains("SLUICE_HTTP="), "{help:#?}");
    assert!(help.stdout.contains("SLUICE_HTTP"), "{help:#?}");
    Ok(())
}

#[test]
fn the_cli_variables_do_not_disturb_the_broker_config() -> anyhow::Result<()> {
    let mut show = command(&["config", "show"]);
    show.env("SLUICE_HTTP", "http://127.0.0.1:1")
        .env("SLUICE_CREDENTIALS", "admin:secret");
    let shown = run(show, b"")?.ok()?;
    assert!(
        shown.stdout.contains("listen = \"127.0.0.1:8080\""),
        "{shown:#?}"
    );
    assert!(!shown.stdout.contains("secret"), "{shown:#?}");
    Ok(())
}
