//! Test harness for end-to-end suites: the real `sluice` binary started as
//! a child process on a temporary data directory with every listener on a
//! free port of 127.0.0.1, waited for with a deadline, and killed by pid
//! when dropped. Tests that must crash the broker call
//! [`BrokerProcess::crash_and_restart`].
//!
//! The binary is the one cargo built for the calling test's profile
//! (`target/<profile>/sluice`); build it first with `cargo build -p sluice`
//! (scripts/test does).

pub mod cluster;
pub mod proxy;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started broker may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One running broker; killed when dropped.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    data: PathBuf,
    /// Kafka listener port.
    pub kafka_port: u16,
    /// AMQP listener port.
    pub amqp_port: u16,
    /// HTTP (admin API) listener port.
    pub http_port: u16,
    _dir: tempfile::TempDir,
}

/// `target/<profile>/sluice`, next to the calling test's `deps/` directory.
///
/// # Panics
/// When the test binary's path has no such parent.
pub fn broker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps")
        .join("sluice")
}

/// A port free on 127.0.0.1 right now, chosen below the kernel's
/// ephemeral range: a broker restarted on its old ports (after kill -9)
/// must find them free, and a client's outgoing connection may take any
/// ephemeral port while the broker is down.
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    for attempt in 0..200u64 {
        if low <= 11_000 {
            break;
        }
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let port = 10_000 + (hasher.finish() % u64::from(low - 10_000)) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            drop(listener);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

impl BrokerProcess {
    /// Starts a broker on a fresh data directory and waits until its Kafka,
    /// AMQP and HTTP listeners accept connections.
    ///
    /// # Panics
    /// When the binary is missing or the broker does not listen in time.
    pub fn start() -> BrokerProcess {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        // A port free a moment ago may be taken by another test's broker
        // before this one binds it; the broker then exits, and fresh ports
        // are tried.
        for _ in 1..START_ATTEMPTS {
            let ports = [free_port(), free_port(), free_port()];
            if let Some(child) = try_spawn(&data, ports, &[]) {
                return BrokerProcess::new(child, data, ports, dir);
            }
        }
        let ports = [free_port(), free_port(), free_port()];
        let child = spawn(&data, ports);
        BrokerProcess::new(child, data, ports, dir)
    }

    fn new(child: Child, data: PathBuf, ports: [u16; 3], dir: tempfile::TempDir) -> BrokerProcess {
        BrokerProcess {
            child,
            data,
            kafka_port: ports[0],
            amqp_port: ports[1],
            http_port: ports[2],
            _dir: dir,
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An AMQP URL for the guest user and the default virtual host.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The admin API's base URL, `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// SIGKILL, then a new broker on the same data directory and ports.
    ///
    /// # Panics
    /// As [`BrokerProcess::start`].
    pub fn crash_and_restart(&mut self) {
        self.child.kill().expect("kill -9 the broker");
        let _ = self.child.wait();
        self.child = spawn(
            &self.data,
            [self.kafka_port, self.amqp_port, self.http_port],
        );
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tries with fresh ports this many times in all.
const START_ATTEMPTS: usize = 3;

/// Starts the broker with Kafka, AMQP and HTTP on `ports`.
///
/// # Panics
/// When it does not listen in time.
fn spawn(data: &Path, ports: [u16; 3]) -> Child {
    try_spawn(data, ports, &[]).unwrap_or_else(|| {
        panic!("the broker did not listen on {ports:?} within {READY_TIMEOUT:?}")
    })
}

/// Starts the broker with Kafka, AMQP and HTTP on `ports` and `extra`
/// arguments; `None` when it exits first (a port taken) or does not listen
/// in time.
pub(crate) fn try_spawn(data: &Path, ports: [u16; 3], extra: &[String]) -> Option<Child> {
    try_spawn_logged(data, ports, extra, None)
}

/// As [`try_spawn`], the broker's output appended to `log` when given.
pub(crate) fn try_spawn_logged(
    data: &Path,
    ports: [u16; 3],
    extra: &[String],
    log: Option<&Path>,
) -> Option<Child> {
    let [kafka_port, amqp_port, http_port] = ports;
    let binary = broker_binary();
    assert!(
        binary.exists(),
        "build the broker first: cargo build -p sluice ({})",
        binary.display()
    );
    let mut command = Command::new(binary);
    match log {
        Some(_) => command.env("SLUICE_LOG", "info"),
        None => command.env_remove("SLUICE_LOG"),
    };
    let mut child = command
        .arg("--data-dir")
        .arg(data)
        .args(["--kafka-listen", &format!("127.0.0.1:{kafka_port}")])
        .args(["--amqp-listen", &format!("127.0.0.1:{amqp_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .args(["--mqtt-listen", "127.0.0.1:0"])
        .args(["--stomp-listen", "127.0.0.1:0"])
        // Groups of a test form at once, not after Kafka's 3 s wait for more members.
        .args(["--set", "kafka.group_initial_rebalance_delay=0s"])
        .args(extra)
        .stdout(output(log))
        .stderr(output(log))
        .spawn()
        .expect("start the broker");
    let deadline = Instant::now() + READY_TIMEOUT;
    while ports
        .iter()
        .any(|port| TcpStream::connect(("127.0.0.1", *port)).is_err())
    {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child)
}

/// Where a broker's output goes: appended to `log`, else nowhere.
fn output(log: Option<&Path>) -> Stdio {
    log.and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    })
    .map_or_else(Stdio::null, Stdio::from)
}
