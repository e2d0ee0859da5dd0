//! The tool against a real Sluice broker with tiny Kafka and AMQP workloads:
//! every message is counted and checked, the JSON line carries the documented fields, and
//! the broker's CPU and memory are reported for the pid given.

use std::process::Command;

use sluice_e2e::BrokerProcess as Broker;

fn start_broker() -> Broker {
    Broker::start()
}

fn bench(broker: &Broker, extra: &[&str]) -> serde_json::Value {
    run_tool(
        broker,
        &[
            "kafka",
            "--bootstrap",
            &format!("127.0.0.1:{}", broker.kafka_port),
        ],
        extra,
    )
}

fn bench_amqp(broker: &Broker, extra: &[&str]) -> serde_json::Value {
    run_tool(broker, &["amqp", "--url", &broker.amqp_url()], extra)
}

fn run_tool(broker: &Broker, workload: &[&str], extra: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(workload)
        .arg("--json")
        .args(["--broker-pid", &broker.pid().to_string()])
        .args(extra)
        .output()
        .expect("run sluice-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sluice-bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().expect("one JSON line");
    serde_json::from_str(line).expect("valid JSON")
}

#[test]
fn a_tiny_run_counts_and_checks_every_message() {
    let broker = start_broker();
    let report = bench(
        &broker,
        &[
            "--count",
            "300",
            "--size",
            "64",
            "--partitions",
            "3",
            "--keyed",
        ],
    );
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["verdict"]["acknowledged"], 300);
    assert_eq!(report["verdict"]["consumed"], 300);
    assert_eq!(report["verdict"]["lost"], 0);
    assert_eq!(report["verdict"]["duplicates"], 0);
    assert_eq!(report["workload"]["partitions"], 3);
    assert!(
        report["produced_msgs_per_s"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    );
    assert!(
        report["latency"]["p99_us"]
            .as_f64()
            .is_some_and(|l| l > 0.0)
    );
    assert!(
        report["broker"]["peak_rss_mib"]
            .as_f64()
            .is_some_and(|m| m > 0.0),
        "{report}"
    );
}

#[test]
fn a_fixed_rate_run_with_two_producers_and_consumers() {
    let broker = start_broker();
    let report = bench(
        &broker,
        &[
            "--count",
            "200",
            "--rate",
            "400",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--partitions",
            "2",
            "--acks",
            "1",
            "--compression",
            "gzip",
        ],
    );
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["verdict"]["consumed"], 200);
    let seconds = report["seconds"].as_f64().unwrap_or(0.0);
    assert!(
        seconds >= 0.4,
        "200 messages at 400/s take at least half a second: {seconds}"
    );
}

#[test]
fn a_tiny_amqp_run_over_two_queues_with_confirms() {
    let broker = start_broker();
    let report = bench_amqp(
        &broker,
        &[
            "--count",
            "400",
            "--size",
            "64",
            "--queues",
            "2",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--persistent",
            "--confirms",
            "--prefetch",
            "10",
        ],
    );
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["protocol"], "amqp");
    assert_eq!(report["verdict"]["acknowledged"], 400);
    assert_eq!(report["verdict"]["consumed"], 400);
    assert_eq!(report["workload"]["queues"], 2);
    assert_eq!(
        report["workload"]["url"],
        format!("amqp://guest:***@127.0.0.1:{}/%2f", broker.amqp_port)
    );
    assert!(
        report["latency"]["p99_us"]
            .as_f64()
            .is_some_and(|l| l > 0.0)
    );
}

#[test]
fn a_fixed_rate_amqp_run_without_acks() {
    let broker = start_broker();
    let report = bench_amqp(
        &broker,
        &[
            "--count", "300", "--size", "100", "--rate", "1000", "--no-ack",
        ],
    );
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["verdict"]["consumed"], 300);
    let seconds = report["seconds"].as_f64().expect("seconds");
    assert!(
        seconds >= 0.25,
        "300 messages at 1000/s cannot finish in {seconds}s"
    );
}
