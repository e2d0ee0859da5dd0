//! The crash-loop verifier's short run (the long one is a documented
//! command in RELIABILITY.md): five SIGKILL-and-restart cycles of the real
//! broker under load from librdkafka and lapin, after which nothing
//! acknowledged may be missing, duplicated, reordered, corrupted or moved,
//! no committed offset may have gone backwards, and every kind of activity
//! the kills are meant to hit must actually have happened.

use std::process::Command;

#[test]
fn five_kill_cycles_lose_nothing_acknowledged() {
    let broker = sluice_e2e::broker_binary();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        // Each cycle runs at least 1.5 s, so that the AMQP consumer's
        // pauses (1 s in every 3) build a backlog between kills.
        .args([
            "crash-loop",
            "--json",
            "--cycles",
            "5",
            "--rate",
            "1500",
            "--min-up-ms",
            "1500",
        ])
        .arg("--broker")
        .arg(&broker)
        .output()
        .expect("run sluice-bench crash-loop");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|err| panic!("no JSON report ({err}):\n{stdout}\n{stderr}"));
    assert!(
        output.status.success() && report["passed"] == true,
        "the crash loop failed: {}\n{stderr}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let kafka = &report["kafka"];
    let amqp = &report["amqp"];
    for (name, value) in [
        ("kafka lost", &kafka["lost"]),
        ("kafka duplicates", &kafka["duplicates"]),
        ("kafka out of order", &kafka["out_of_order"]),
        ("kafka corrupt", &kafka["corrupt"]),
        ("kafka moved", &kafka["moved"]),
        ("amqp lost", &amqp["lost"]),
        ("amqp unflagged duplicates", &amqp["unflagged_duplicates"]),
        ("commits backwards", &report["groups"]["went_backwards"]),
    ] {
        assert_eq!(value, 0, "{name}: {report}");
    }
    // The run did what it claims: traffic on both protocols across the
    // kills, committed offsets checked after restarts, retention deleting.
    assert!(kafka["acknowledged"].as_u64() > Some(1_000), "{report}");
    assert_eq!(kafka["acknowledged"], kafka["read_back"], "{report}");
    assert!(amqp["confirmed"].as_u64() > Some(1_000), "{report}");
    assert!(amqp["reconnects"].as_u64() >= Some(5), "{report}");
    // The queue outgrew its 16 KiB memory budget (81 bodies of 200 bytes),
    // so kills also hit messages paged to disk. (With a 64 KiB budget a CI
    // run on a loaded machine published too slowly to outgrow it: a
    // backlog of 164.)
    assert!(amqp["max_backlog"].as_u64() > Some(100), "{report}");
    assert!(
        report["groups"]["checks_after_restart"].as_u64() > Some(0),
        "{report}"
    );
    assert!(
        report["groups"]["offsets_compactions"].as_u64() > Some(0),
        "{report}"
    );
    assert!(report["churn"]["log_start"].as_i64() > Some(0), "{report}");
    assert_eq!(report["shutdown"]["clean"], true, "{report}");
}
