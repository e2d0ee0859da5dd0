//! `sluice-bench crash-loop`: the crash-loop verifier. It starts the broker
//! itself, drives it through real clients (an idempotent acks=all librdkafka
//! producer, a consumer group committing synchronously, a churn producer
//! into a topic with small retention, a lapin publisher of persistent
//! messages with confirms and a lapin consumer with manual acks), kills it
//! with SIGKILL at random moments and restarts it on the same data
//! directory, then reads everything back and checks what the clients were
//! told against what the broker kept:
//!
//! - Kafka: acknowledged-but-lost, duplicates, out of order within a
//!   partition, corrupted, and acknowledged records found at another offset
//!   than acknowledged: all must be 0; the producer must not hit a fatal
//!   (idempotence) error.
//! - Groups: after every restart, each partition's committed offset is at
//!   least the highest commit acknowledged before the kill.
//! - AMQP: confirmed-but-never-delivered must be 0; a message delivered
//!   twice must carry the redelivered flag the second time; corrupted 0.
//! - The churn topic reads back without corruption.
//!
//! Small segments and retention every second make kills land around
//! segment rolls, index writes and segment deletion as well as appends,
//! group-commit syncs, offset commits and queue acknowledgements; 1 KiB
//! segments of the committed-offsets log with a compaction check every
//! 500 ms make them land in its compaction; a 16 KiB memory budget for
//! queues and a consumer that pauses make them land in a queue paging its
//! backlog to disk.

mod amqp;
mod broker;
mod kafka;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::json;

use broker::Broker;

/// `sluice-bench crash-loop`.
#[derive(Debug, Args)]
pub(crate) struct CrashArgs {
    /// The broker binary (target/release/sluice or target/debug/sluice).
    #[arg(long)]
    broker: PathBuf,
    /// Data directory for the broker; a fresh one under the system's
    /// temporary directory when not given (removed after a passing run).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Kill-and-restart cycles.
    #[arg(long, default_value_t = 10)]
    cycles: u32,
    /// Shortest time the broker runs under load before a kill, in ms.
    #[arg(long, default_value_t = 300)]
    min_up_ms: u64,
    /// Longest time the broker runs under load before a kill, in ms.
    #[arg(long, default_value_t = 2500)]
    max_up_ms: u64,
    /// Seed of the kill schedule; from the clock when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Partitions of the verified topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Message size in bytes (at least 20).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Messages per second of each producer (Kafka verified, Kafka churn, AMQP).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// log.segment_bytes of the broker: small, so segments roll often.
    #[arg(long, default_value = "64KiB")]
    segment_bytes: String,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

/// The schedule's random numbers (splitmix64): reproducible from the seed.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high.saturating_sub(low) + 1)
    }
}

const TOPIC: &str = "crash-loop";
const CHURN_TOPIC: &str = "crash-loop-churn";
const GROUP: &str = "crash-loop-group";
const QUEUE: &str = "crash-loop-queue";

/// Runs the loop and prints the report; `Ok(false)` when a check failed.
pub(crate) fn run(args: &CrashArgs) -> anyhow::Result<bool> {
    if args.size < crate::payload::HEADER {
        bail!("--size must be at least {}", crate::payload::HEADER);
    }
    if args.min_up_ms > args.max_up_ms {
        bail!("--min-up-ms must not exceed --max-up-ms");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let (data_dir, made_up) = match &args.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("sluice-crash-loop-{}-{seed}", std::process::id())),
            true,
        ),
    };
    let mut broker = Broker::new(
        &args.broker,
        &data_dir,
        vec![
            format!("log.segment_bytes={}", args.segment_bytes),
            // Retention runs all through the run, so kills land in it too.
            "log.retention_check_interval=1s".to_owned(),
            // The AMQP queue keeps little in memory: its backlog is read
            // back from disk, so kills land in paging too.
            "amqp.queue_memory_bytes=16KiB".to_owned(),
            // The committed-offsets log rolls every few commits and is
            // compacted twice a second.
            "kafka.offsets_segment_bytes=1KiB".to_owned(),
            "log.compaction_check_interval=500ms".to_owned(),
            // The consumer group forms at once, not after a wait for more members.
            "kafka.group_initial_rebalance_delay=0s".to_owned(),
        ],
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("runtime")?;
    let started = Instant::now();
    broker.start()?;
    kafka::create_topics(&broker.bootstrap(), TOPIC, CHURN_TOPIC, args.partitions)?;

    let stop = Arc::new(AtomicBool::new(false));
    let stop_group = Arc::new(AtomicBool::new(false));
    let kafka_ledger = Arc::new(Mutex::new(kafka::KafkaLedger::default()));
    let amqp_ledger = Arc::new(Mutex::new(amqp::AmqpLedger::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let churn_sent = Arc::new(AtomicU64::new(0));
    let plan = |topic: &str, sent: &Arc<AtomicU64>| kafka::ProducePlan {
        bootstrap: broker.bootstrap(),
        topic: topic.to_owned(),
        size: args.size,
        rate: args.rate,
        stop: Arc::clone(&stop),
        sent: Arc::clone(sent),
    };
    let verified = {
        let plan = plan(TOPIC, &sent);
        let ledger = Arc::clone(&kafka_ledger);
        std::thread::spawn(move || kafka::produce(&plan, Some(ledger)))
    };
    let churn = {
        let plan = plan(CHURN_TOPIC, &churn_sent);
        std::thread::spawn(move || kafka::produce(&plan, None))
    };
    let group = {
        let (bootstrap, stop, ledger) = (
            broker.bootstrap(),
            Arc::clone(&stop_group),
            Arc::clone(&kafka_ledger),
        );
        std::thread::spawn(move || kafka::group_member(&bootstrap, TOPIC, GROUP, &stop, &ledger))
    };
    let publisher = runtime.spawn(amqp::publish(
        broker.amqp_url(),
        QUEUE.to_owned(),
        args.size,
        args.rate,
        Arc::clone(&stop),
        Arc::clone(&amqp_ledger),
    ));
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let consumer = runtime.spawn(amqp::consume(
        broker.amqp_url(),
        QUEUE.to_owned(),
        args.size,
        Arc::clone(&stop_consumer),
        Arc::clone(&amqp_ledger),
    ));

    let mut schedule = Schedule(seed);
    let mut recoveries = Vec::new();
    let mut commit_checks = 0u64;
    let mut commits_backwards = Vec::new();
    for cycle in 0..args.cycles {
        let up = schedule.between(args.min_up_ms, args.max_up_ms);
        std::thread::sleep(Duration::from_millis(up));
        broker.kill()?;
        let acknowledged: HashMap<i32, i64> = lock(&kafka_ledger).commits.clone();
        recoveries.push(broker.start()?);
        let committed = kafka::committed(&broker.bootstrap(), TOPIC, GROUP, args.partitions)?;
        for (partition, before) in acknowledged {
            commit_checks += 1;
            let now = committed.get(&partition).copied().unwrap_or(-1);
            if now < before {
                commits_backwards.push(format!(
                    "cycle {cycle}: partition {partition} committed {now} after {before} was acknowledged"
                ));
            }
        }
        if !args.json {
            eprintln!(
                "cycle {}/{}: killed after {up} ms, listening again after {} ms; kafka acked {}, amqp confirmed {}",
                cycle + 1,
                args.cycles,
                recoveries.last().map_or(0, Duration::as_millis),
                lock(&kafka_ledger).acked.len(),
                lock(&amqp_ledger).confirmed.len()
            );
        }
    }

    // Producers stop; what they still hold is retried until acknowledged.
    stop.store(true, Ordering::Relaxed);
    let fatal = verified
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    let _ = churn.join();
    runtime.block_on(publisher).context("publisher task")?;
    stop_group.store(true, Ordering::Relaxed);
    let _ = group.join();
    // The consumer drains the queue: done once nothing is ready and no
    // delivery came for two seconds (bounded).
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = (Instant::now(), total_deliveries(&amqp_ledger));
    let drained = loop {
        std::thread::sleep(Duration::from_millis(250));
        let delivered = total_deliveries(&amqp_ledger);
        if delivered != quiet_since.1 {
            quiet_since = (Instant::now(), delivered);
        }
        let ready = runtime
            .block_on(amqp::ready_count(&broker.amqp_url(), QUEUE))
            .unwrap_or(u32::MAX);
        if ready == 0 && quiet_since.0.elapsed() > Duration::from_secs(2) {
            break true;
        }
        if Instant::now() > drain_deadline {
            break false;
        }
    };
    stop_consumer.store(true, Ordering::Relaxed);
    let _ = runtime.block_on(consumer);

    let (records, _) = kafka::read_all(&broker.bootstrap(), TOPIC, args.partitions, args.size)?;
    let (churn_records, churn_starts) =
        kafka::read_all(&broker.bootstrap(), CHURN_TOPIC, 1, args.size)?;
    let (stopped_cleanly, stop_time) = broker.stop()?;
    let offsets_compactions = std::fs::read_to_string(broker.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("compacted") && line.contains("__consumer_offsets"))
        .count();

    let kafka_ledger = lock(&kafka_ledger);
    let amqp_ledger = lock(&amqp_ledger);
    let kafka_check = check_kafka(&kafka_ledger, &records);
    let amqp_check = check_amqp(&amqp_ledger);
    let churn_corrupt = churn_records.iter().filter(|r| r.checked.is_none()).count();

    let mut failures = Vec::new();
    for (name, value) in [
        ("kafka lost", kafka_check.lost),
        ("kafka duplicates", kafka_check.duplicates),
        ("kafka out of order", kafka_check.out_of_order),
        ("kafka corrupt", kafka_check.corrupt),
        ("kafka moved", kafka_check.moved),
        ("amqp lost", amqp_check.lost),
        ("amqp unflagged duplicates", amqp_check.unflagged_duplicates),
        ("amqp corrupt", amqp_ledger.corrupt),
        ("churn corrupt", churn_corrupt as u64),
        ("commits backwards", commits_backwards.len() as u64),
    ] {
        if value > 0 {
            failures.push(format!("{name}: {value}"));
        }
    }
    if let Some(fatal) = &fatal {
        failures.push(format!("kafka producer fatal error: {fatal}"));
    }
    if !drained {
        failures.push("the AMQP queue did not drain within 120 s".to_owned());
    }
    if !stopped_cleanly {
        failures.push("the broker did not stop cleanly on SIGTERM".to_owned());
    }
    failures.extend(commits_backwards.iter().take(5).cloned());

    let mut recovery_ms: Vec<u128> = recoveries.iter().map(Duration::as_millis).collect();
    recovery_ms.sort_unstable();
    let report = json!({
        "tool": "sluice-bench crash-loop",
        "seed": seed,
        "cycles": args.cycles,
        "seconds": started.elapsed().as_secs_f64().round(),
        "restart_ms": {
            "median": recovery_ms.get(recovery_ms.len() / 2),
            "max": recovery_ms.last(),
        },
        "kafka": {
            "sent": sent.load(Ordering::Relaxed),
            "acknowledged": kafka_ledger.acked.len(),
            "read_back": records.len(),
            "delivery_errors": kafka_ledger.errors,
            "lost": kafka_check.lost,
            "duplicates": kafka_check.duplicates,
            "out_of_order": kafka_check.out_of_order,
            "corrupt": kafka_check.corrupt,
            "moved": kafka_check.moved,
            "fatal": fatal,
        },
        "groups": {
            "commits_acknowledged": kafka_ledger.commits_acknowledged,
            "checks_after_restart": commit_checks,
            "went_backwards": commits_backwards.len(),
            "offsets_compactions": offsets_compactions,
        },
        "amqp": {
            "published": amqp_ledger.published,
            "confirmed": amqp_ledger.confirmed.len(),
            "nacked": amqp_ledger.nacked,
            "delivered": amqp_ledger.deliveries.len(),
            "lost": amqp_check.lost,
            "redelivered_duplicates": amqp_check.flagged_duplicates,
            "unflagged_duplicates": amqp_check.unflagged_duplicates,
            "corrupt": amqp_ledger.corrupt,
            "reconnects": amqp_ledger.reconnects,
            "max_backlog": amqp_ledger.max_backlog,
        },
        "churn": {
            "sent": churn_sent.load(Ordering::Relaxed),
            "read_back": churn_records.len(),
            "log_start": churn_starts.get(&0),
            "corrupt": churn_corrupt,
        },
        "shutdown": { "clean": stopped_cleanly, "ms": stop_time.as_millis() },
        "data_dir": data_dir.display().to_string(),
        "broker_log": broker.log_path().display().to_string(),
        "passed": failures.is_empty(),
        "failures": failures,
    });
    if !args.json {
        eprintln!(
            "{} cycles in {:.0} s: kafka {} acknowledged, {} lost, {} duplicated, {} out of order, {} corrupt; \
             amqp {} confirmed, {} lost, {} redelivered twice (flagged), {} unflagged, \
             backlog up to {} messages; {} commit checks, {} backwards",
            args.cycles,
            started.elapsed().as_secs_f64(),
            kafka_ledger.acked.len(),
            kafka_check.lost,
            kafka_check.duplicates,
            kafka_check.out_of_order,
            kafka_check.corrupt,
            amqp_ledger.confirmed.len(),
            amqp_check.lost,
            amqp_check.flagged_duplicates,
            amqp_check.unflagged_duplicates,
            amqp_ledger.max_backlog,
            commit_checks,
            commits_backwards.len(),
        );
    }
    println!("{report}");
    let passed = report["passed"].as_bool() == Some(true);
    if passed && made_up {
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_file(broker.log_path());
    }
    Ok(passed)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn total_deliveries(ledger: &Mutex<amqp::AmqpLedger>) -> usize {
    lock(ledger).deliveries.values().map(Vec::len).sum()
}

#[derive(Debug, Default, PartialEq, Eq)]
struct KafkaCheck {
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    corrupt: u64,
    /// Acknowledged at one offset, found at another.
    moved: u64,
}

fn check_kafka(ledger: &kafka::KafkaLedger, records: &[kafka::ReadRecord]) -> KafkaCheck {
    let mut check = KafkaCheck::default();
    let mut found: HashMap<u64, (i32, i64)> = HashMap::new();
    let mut last_in_partition: BTreeMap<i32, u64> = BTreeMap::new();
    for record in records {
        let Some(checked) = record.checked.filter(|c| c.producer == kafka::VERIFIED) else {
            check.corrupt += 1;
            continue;
        };
        if found
            .insert(checked.sequence, (record.partition, record.offset))
            .is_some()
        {
            check.duplicates += 1;
        }
        if let Some(last) = last_in_partition.insert(record.partition, checked.sequence)
            && last >= checked.sequence
        {
            check.out_of_order += 1;
        }
    }
    for (sequence, at) in &ledger.acked {
        match found.get(sequence) {
            None => check.lost += 1,
            Some(where_found) if where_found != at => check.moved += 1,
            Some(_) => {}
        }
    }
    check
}

#[derive(Debug, Default, PartialEq, Eq)]
struct AmqpCheck {
    lost: u64,
    flagged_duplicates: u64,
    unflagged_duplicates: u64,
}

fn check_amqp(ledger: &amqp::AmqpLedger) -> AmqpCheck {
    let mut check = AmqpCheck::default();
    for sequence in &ledger.confirmed {
        if !ledger.deliveries.contains_key(sequence) {
            check.lost += 1;
        }
    }
    for flags in ledger.deliveries.values() {
        for redelivered in flags.iter().skip(1) {
            if *redelivered {
                check.flagged_duplicates += 1;
            } else {
                check.unflagged_duplicates += 1;
            }
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload;

    fn record(partition: i32, offset: i64, sequence: u64) -> kafka::ReadRecord {
        let body = payload::build(kafka::VERIFIED, sequence, 32);
        kafka::ReadRecord {
            partition,
            offset,
            checked: payload::check(&body, 32),
        }
    }

    #[test]
    fn the_kafka_check_counts_each_kind_of_damage() {
        let mut ledger = kafka::KafkaLedger::default();
        for (sequence, at) in [
            (0, (0, 0)),
            (1, (0, 1)),
            (2, (1, 0)),
            (3, (1, 1)),
            (4, (0, 2)),
        ] {
            ledger.acked.insert(sequence, at);
        }
        let clean = [
            record(0, 0, 0),
            record(0, 1, 1),
            record(1, 0, 2),
            record(1, 1, 3),
            record(0, 2, 4),
        ];
        assert_eq!(check_kafka(&ledger, &clean), KafkaCheck::default());
        let damaged = [
            record(0, 0, 1), // 0 lost
            record(0, 1, 1), // 1 twice, and not after itself: out of order
            record(1, 0, 3), // 3 and 2 swapped: both moved, out of order
            record(1, 1, 2),
            kafka::ReadRecord {
                partition: 0,
                offset: 2,
                checked: None,
            }, // 4 corrupt, so lost
        ];
        let check = check_kafka(&ledger, &damaged);
        assert_eq!(
            check,
            KafkaCheck {
                lost: 2,
                duplicates: 1,
                out_of_order: 2,
                corrupt: 1,
                moved: 2
            }
        );
    }

    #[test]
    fn the_amqp_check_tells_flagged_from_unflagged_redeliveries() {
        let mut ledger = amqp::AmqpLedger::default();
        ledger.confirmed.extend([1, 2, 3]);
        ledger.deliveries.insert(1, vec![false]);
        ledger.deliveries.insert(2, vec![false, true]);
        ledger.deliveries.insert(4, vec![false, false]);
        assert_eq!(
            check_amqp(&ledger),
            AmqpCheck {
                lost: 1,
                flagged_duplicates: 1,
                unflagged_duplicates: 1
            }
        );
    }

    #[test]
    fn the_schedule_is_reproducible_and_stays_in_range() {
        let (mut a, mut b) = (Schedule(7), Schedule(7));
        for _ in 0..100 {
            let x = a.between(300, 2500);
            assert_eq!(x, b.between(300, 2500));
            assert!((300..=2500).contains(&x));
        }
    }
}
