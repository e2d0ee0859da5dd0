//! `sluice-bench`: a benchmark tool that drives any broker through real
//! client libraries and knows nothing of Sluice's internals, so the same
//! command measures Sluice, RabbitMQ or any other Kafka-compatible broker.
//!
//! Start at `kafka.rs` (the Kafka workload), `amqp.rs` (the AMQP workload),
//! `mqtt.rs` (the MQTT workload), `payload.rs` (what every
//! message carries so that each one can be checked), `report.rs` (rates,
//! latency percentiles, verdict, JSON line) and `process.rs` (a broker's CPU
//! and memory by pid).

mod amqp;
mod crash;
mod kafka;
mod mqtt;
mod payload;
mod process;
mod report;
mod seen;

use clap::{Parser, Subcommand};

/// Benchmark a broker through real clients.
#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce and consume through librdkafka (the Kafka protocol).
    Kafka(kafka::KafkaArgs),
    /// Publish and consume through lapin (AMQP 0-9-1).
    Amqp(amqp::AmqpArgs),
    /// Publish and subscribe through rumqttc (MQTT 3.1.1).
    Mqtt(mqtt::MqttArgs),
    /// Kill the broker with SIGKILL at random moments under load from both
    /// protocols, restart it, and check that nothing acknowledged was lost.
    CrashLoop(crash::CrashArgs),
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Kafka(args) => kafka::run(&args),
        Command::Amqp(args) => amqp::run(&args),
        Command::Mqtt(args) => mqtt::run(args),
        // The crash loop prints its own report.
        Command::CrashLoop(args) => match crash::run(&args) {
            Ok(true) => return,
            Ok(false) => std::process::exit(1),
            Err(err) => {
                eprintln!("error: {err:#}");
                std::process::exit(2);
            }
        },
    };
    match outcome {
        Ok(report) => {
            let failed = !report.verdict.passed();
            report.print(report.json_only);
            if failed {
                std::process::exit(1);
            }
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    }
}
