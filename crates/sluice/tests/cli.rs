//! The `sluice` binary as an operator meets it, run as a child process in a
//! temporary directory.
//!
//! Contract under test: a bare `sluice` (or `sluice serve`) logs its
//! effective configuration, takes the data-directory lock, and exits 0 after
//! SIGTERM or SIGINT; a second broker on a locked directory exits non-zero
//! naming the lock while the first keeps running; configuration errors exit
//! 1 naming the key; flags beat environment beat file; `--help` lists every
//! key. Every wait has a deadline; every child is killed when its guard drops.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sluice_config::{KEYS, default_value, env_var_name};

/// How long a child gets to start, answer or stop.
const DEADLINE: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `sluice` with a clean environment: no inherited `SLUICE_…` or `RUST_LOG`
/// variable may change what a test sees.
fn sluice(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.current_dir(dir).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|name| name.starts_with("SLUICE_") || name == "RUST_LOG")
        {
            command.env_remove(name);
        }
    }
    command.env("SLUICE_LOG", "info");
    command
}

/// A child process killed (SIGKILL, by pid) when dropped, whatever happened.
struct ChildGuard {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ChildGuard {
    /// Spawns `command` with its output going to `<dir>/<name>.stdout|.stderr`.
    fn spawn(mut command: Command, dir: &Path, name: &str) -> anyhow::Result<ChildGuard> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = command
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .context("cannot start sluice")?;
        Ok(ChildGuard {
            child,
            stdout,
            stderr,
        })
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until stderr contains `needle`; fails if the child exits first.
    fn wait_for_log(&mut self, needle: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let log = self.stderr();
            if log.contains(needle) {
                return Ok(log);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("sluice exited ({status}) before logging {needle:?}; log:\n{log}");
            }
            if Instant::now() >= deadline {
                bail!("no {needle:?} in the log within {DEADLINE:?}; log:\n{log}");
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits for the child to exit.
    fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "sluice still running after {DEADLINE:?}; log:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends `signal` (`TERM`, `INT`) with kill(1) and waits for the exit.
    fn signal_and_wait(&mut self, signal: &str) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -{signal} failed: {status}");
        }
        self.wait_exit()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Already exited is fine: kill then fails and wait returns at once.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end within the deadline: (status, stdout, stderr).
fn run(command: Command, dir: &Path, name: &str) -> anyhow::Result<(ExitStatus, String, String)> {
    let mut child = ChildGuard::spawn(command, dir, name)?;
    let status = child.wait_exit()?;
    Ok((status, child.stdout(), child.stderr()))
}

/// The line setting `name` inside `[section]` of a rendered config.
fn config_line<'a>(rendered: &'a str, section: &str, name: &str) -> Option<&'a str> {
    let header = format!("[{section}]");
    rendered
        .lines()
        .skip_while(|line| line.trim() != header)
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .find(|line| line.starts_with(&format!("{name} =")))
}

#[test]
fn starts_logs_its_configuration_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut command = sluice(dir.path());
    let kafka = format!("127.0.0.1:{}", free_port()?);
    command.args(["--data-dir", "node", "--kafka-listen", &kafka]);
    command.args([
        "--amqp-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
        "--stomp-listen",
        "127.0.0.1:0",
    ]);
    // Every value is logged at DEBUG; INFO has only the non-default ones.
    command.env("SLUICE_LOG", "info,sluice::serve=debug");
    let mut broker = ChildGuard::spawn(command, dir.path(), "broker")?;
    let log = broker.wait_for_log("broker started")?;
    let changed = log
        .lines()
        .find(|line| line.contains("configuration (values other than the defaults)"))
        .unwrap_or_default();
    assert!(changed.contains("kafka.listen"), "{log}");
    assert!(!changed.contains("log.segment_bytes"), "{log}");
    for key in KEYS {
        assert!(
            log.contains(key.key),
            "{} missing from the startup log:\n{log}",
            key.key
        );
    }
    assert!(log.contains(&kafka), "{log}");
    assert!(log.contains("flag --kafka-listen"), "{log}");
    assert!(dir.path().join("node/.lock").exists());

    let status = broker.signal_and_wait("TERM")?;
    let log = broker.stderr();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(log.contains("broker stopped"), "{log}");
    assert!(!log.contains("ERROR") && !log.contains("error: "), "{log}");
    Ok(())
}

#[test]
fn second_broker_on_the_same_data_dir_fails_and_the_first_keeps_running() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut command = sluice(dir.path());
    command.args(["serve", "--data-dir", "shared", "--log-format", "json"]);
    command.args([
        "--kafka-listen",
        "127.0.0.1:0",
        "--amqp-listen",
        "127.0.0.1:0",
    ]);
    command.args([
        "--http-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
        "--stomp-listen",
        "127.0.0.1:0",
    ]);
    let mut first = ChildGuard::spawn(command, dir.path(), "first")?;
    let log = first.wait_for_log("broker started")?;
    let started = log
        .lines()
        .find(|line| line.contains("broker started"))
        .unwrap_or_default();
    assert!(
        started.starts_with('{') && started.ends_with('}'),
        "not JSON: {started}"
    );

    let mut command = sluice(dir.path());
    command.args(["--data-dir", "shared", "--kafka-listen", "127.0.0.1:0"]);
    command.args([
        "--amqp-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
        "--stomp-listen",
        "127.0.0.1:0",
    ]);
    let (status, _, stderr) = run(command, dir.path(), "second")?;
    assert!(!status.success(), "second broker started; log:\n{stderr}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: "), "{stderr}");
    assert!(stderr.contains("lock"), "{stderr}");
    assert!(
        stderr.contains("in use by another Sluice process"),
        "{stderr}"
    );

    assert!(
        first.child.try_wait()?.is_none(),
        "first broker died:\n{}",
        first.stderr()
    );
    let status = first.signal_and_wait("INT")?;
    assert!(status.success(), "exit {status}; log:\n{}", first.stderr());
    assert!(
        first.stderr().contains("broker stopped"),
        "{}",
        first.stderr()
    );
    Ok(())
}

#[test]
fn unknown_key_in_config_file_fails_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(
        dir.path().join("sluice.toml"),
        "[log]\nsegmnt_bytes = \"1MiB\"\n",
    )?;
    let mut command = sluice(dir.path());
    command.args(["--config", "sluice.toml", "--data-dir", "never"]);
    let (status, _, stderr) = run(command, dir.path(), "unknown-key")?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("log.segmnt_bytes"), "{stderr}");
    assert!(stderr.contains("sluice.toml"), "{stderr}");
    assert!(
        !dir.path().join("never").exists(),
        "started despite the bad config"
    );
    Ok(())
}

#[test]
fn bad_values_fail_naming_the_key_and_bad_flags_are_usage_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut command = sluice(dir.path());
    command.args([
        "serve",
        "--set",
        "log.segment_bytes=512",
        "--data-dir",
        "never",
    ]);
    let (status, _, stderr) = run(command, dir.path(), "too-small")?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("log.segment_bytes must be at least 1KiB, got 512"),
        "{stderr}"
    );

    let mut command = sluice(dir.path());
    command
        .args(["--data-dir", "never"])
        .env("SLUICE_KAFKA__LISTEN", "no-port");
    let (status, _, stderr) = run(command, dir.path(), "bad-env")?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("kafka.listen"), "{stderr}");
    assert!(stderr.contains("SLUICE_KAFKA__LISTEN"), "{stderr}");

    let mut command = sluice(dir.path());
    command.args(["--durability", "sometimes"]);
    let (status, _, stderr) = run(command, dir.path(), "usage")?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(!dir.path().join("never").exists());
    Ok(())
}

#[test]
fn flag_beats_env_and_env_beats_file_in_config_show() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(
        dir.path().join("sluice.toml"),
        "data_dir = \"from-file\"\n\
         [kafka]\nlisten = \"127.0.0.1:1001\"\n\
         [amqp]\nlisten = \"127.0.0.1:2001\"\n\
         [http]\nlisten = \"127.0.0.1:3001\"\n",
    )?;
    let mut command = sluice(dir.path());
    command
        .args(["config", "show", "--config", "sluice.toml"])
        .args(["--kafka-listen", "127.0.0.1:1003"])
        .args(["--set", "log.segment_bytes=64KiB"])
        .env("SLUICE_KAFKA__LISTEN", "127.0.0.1:1002")
        .env("SLUICE_AMQP__LISTEN", "127.0.0.1:2002");
    let (status, stdout, stderr) = run(command, dir.path(), "show")?;
    assert!(status.success(), "{stderr}");

    let line = |section, name| config_line(&stdout, section, name).unwrap_or_default();
    let kafka = line("kafka", "listen");
    assert!(
        kafka.contains("\"127.0.0.1:1003\"") && kafka.contains("# flag --kafka-listen"),
        "{stdout}"
    );
    let amqp = line("amqp", "listen");
    assert!(
        amqp.contains("\"127.0.0.1:2002\"") && amqp.contains("# env SLUICE_AMQP__LISTEN"),
        "{stdout}"
    );
    let http = line("http", "listen");
    assert!(
        http.contains("\"127.0.0.1:3001\"") && http.contains("# file sluice.toml"),
        "{stdout}"
    );
    let segment = line("log", "segment_bytes");
    assert!(
        segment.contains("\"64KiB\"") && segment.contains("# flag --set"),
        "{stdout}"
    );
    let durability = line("log", "durability");
    assert!(
        durability.contains("\"always\"") && durability.contains("# default"),
        "{stdout}"
    );
    let data_dir = stdout
        .lines()
        .find(|line| line.starts_with("data_dir ="))
        .unwrap_or_default();
    assert!(data_dir.contains("\"from-file\""), "{stdout}");
    assert!(
        !dir.path().join("from-file").exists(),
        "config show must not start a broker"
    );
    Ok(())
}

#[test]
fn help_lists_every_key_with_its_default_and_env_var() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for args in [
        &["--help"][..],
        &["serve", "--help"][..],
        &["config", "show", "--help"][..],
    ] {
        let mut command = sluice(dir.path());
        command.args(args);
        let (status, stdout, stderr) = run(command, dir.path(), "help")?;
        assert!(status.success(), "{args:?}: {stderr}");
        for key in KEYS {
            let row = stdout
                .lines()
                .find(|line| line.split_whitespace().next() == Some(key.key))
                .with_context(|| format!("{args:?}: {} missing:\n{stdout}", key.key))?;
            assert!(row.contains(&env_var_name(key.key)), "{args:?}: {row}");
            let default = default_value(key.key).unwrap_or_default();
            assert!(row.contains(&default), "{args:?}: {row}");
        }
        for flag in [
            "--config",
            "--data-dir",
            "--kafka-listen",
            "--amqp-listen",
            "--http-listen",
        ] {
            assert!(stdout.contains(flag), "{args:?}: {flag} missing");
        }
    }
    Ok(())
}
