//! The broker under test as a child process: started on fixed ports (so
//! clients reconnect to the same address after every restart), killed with
//! SIGKILL, restarted on the same data directory, stopped with SIGTERM.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long a start may take before the run gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd broker gets before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Broker {
    binary: PathBuf,
    data_dir: PathBuf,
    settings: Vec<String>,
    pub(crate) kafka_port: u16,
    pub(crate) amqp_port: u16,
    http_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Broker {
    /// A broker on free ports of 127.0.0.1, not started yet. `settings` are
    /// `KEY=VALUE` pairs passed with `--set`.
    pub(crate) fn new(
        binary: &Path,
        data_dir: &Path,
        settings: Vec<String>,
    ) -> anyhow::Result<Broker> {
        Ok(Broker {
            binary: binary.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            settings,
            kafka_port: free_port()?,
            amqp_port: free_port()?,
            http_port: free_port()?,
            child: None,
            log: data_dir.with_extension("log"),
        })
    }

    pub(crate) fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    pub(crate) fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// Where the broker's output goes (appended across restarts).
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts the broker and waits until both listeners accept; the time
    /// that took (recovery included).
    pub(crate) fn start(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--kafka-listen", &format!("127.0.0.1:{}", self.kafka_port)])
            .args(["--amqp-listen", &format!("127.0.0.1:{}", self.amqp_port)])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--mqtt-listen", "127.0.0.1:0"])
            .args(["--stomp-listen", "127.0.0.1:0"]);
        for setting in &self.settings {
            command.args(["--set", setting]);
        }
        // The broker reads every SLUICE_* variable as configuration.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SLUICE_") {
                command.env_remove(name);
            }
        }
        let child = command
            // Warnings, and what the log maintenance did (the report
            // counts compactions of the committed-offsets log).
            .env("SLUICE_LOG", "warn,sluice_log::manager=info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().context("log handle")?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        while started.elapsed() < READY_TIMEOUT {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait().context("wait")?
            {
                bail!(
                    "the broker exited with {status} during start; see {}",
                    self.log.display()
                );
            }
            if accepts(self.kafka_port) && accepts(self.amqp_port) {
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the broker did not listen within {READY_TIMEOUT:?}; see {}",
            self.log.display()
        )
    }

    /// SIGKILL, then waits for the process to be gone.
    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("SIGKILL")?;
            child.wait().context("wait")?;
        }
        Ok(())
    }

    /// SIGTERM and waits (SIGKILL after [`STOP_TIMEOUT`]); whether it
    /// stopped by itself, and how long it took.
    pub(crate) fn stop(&mut self) -> anyhow::Result<(bool, Duration)> {
        let started = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Ok((true, Duration::ZERO));
        };
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        while started.elapsed() < STOP_TIMEOUT {
            if let Some(status) = child.try_wait().context("wait")? {
                return Ok((status.success(), started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().context("SIGKILL")?;
        child.wait().context("wait")?;
        Ok((false, started.elapsed()))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let probe = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(probe.local_addr().context("local address")?.port())
}

fn accepts(port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
}
