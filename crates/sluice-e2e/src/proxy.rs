//! A fault-injecting TCP proxy for cluster tests: put one on every link
//! between nodes (on 127.0.0.1) and change what it does while the test
//! runs. A partition stalls the link the way a lost route does to a TCP
//! connection: bytes are held, not dropped, so streams stay well-formed and
//! resume on heal, unless the endpoints time out first. [`Fault::Sever`]
//! resets every connection instead, and refuses new ones until healed.
//!
//! Threads only (std), like the rest of the harness; every thread polls
//! with a short timeout and ends when the proxy is dropped.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often blocked threads look at the proxy's state.
const POLL: Duration = Duration::from_millis(10);

/// What the link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything at once.
    #[default]
    Heal,
    /// Forward everything after this long.
    Delay(Duration),
    /// Hold the bytes going one way or both: `forward` is client to
    /// upstream, `backward` upstream to client (a one-way or full partition).
    Stall { forward: bool, backward: bool },
    /// Reset every connection and refuse new ones.
    Sever,
}

#[derive(Debug, Default)]
struct State {
    fault: Mutex<Fault>,
    /// Bumped by every `Sever`, so pumps of older connections end.
    severed: AtomicU64,
    stop: AtomicBool,
}

impl State {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy from [`FaultProxy::addr`] to one upstream address.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let accept = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(&listener, upstream, &shared))?;
        Ok(FaultProxy {
            addr,
            state,
            accept: Some(accept),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the link does, for open connections and new ones.
    pub fn set(&self, fault: Fault) {
        if fault == Fault::Sever {
            self.state.severed.fetch_add(1, Ordering::SeqCst);
        }
        *self.state.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, state: &Arc<State>) {
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    while !state.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if state.fault() == Fault::Sever {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
                else {
                    continue;
                };
                let generation = state.severed.load(Ordering::SeqCst);
                for (from, to, forward) in [
                    (client.try_clone(), server.try_clone(), true),
                    (server.try_clone(), client.try_clone(), false),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let state = Arc::clone(state);
                    if let Ok(pump) = std::thread::Builder::new()
                        .name("proxy-pump".into())
                        .spawn(move || pump(from, to, forward, generation, &state))
                    {
                        pumps.push(pump);
                    }
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
        pumps.retain(|pump| !pump.is_finished());
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Copies `from` to `to` as the state allows, until either end closes, the
/// link is severed or the proxy stops.
fn pump(mut from: TcpStream, mut to: TcpStream, forward: bool, generation: u64, state: &State) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buffer = vec![0; 64 * 1024];
    loop {
        if state.stop.load(Ordering::SeqCst) || state.severed.load(Ordering::SeqCst) != generation {
            break;
        }
        let delay = match state.fault() {
            Fault::Stall {
                forward: f,
                backward: b,
            } if (forward && f) || (!forward && b) => {
                std::thread::sleep(POLL);
                continue;
            }
            Fault::Delay(delay) => delay,
            _ => Duration::ZERO,
        };
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        // A stall set while this read waited holds what it read.
        let mut delay = delay;
        loop {
            if state.stop.load(Ordering::SeqCst)
                || state.severed.load(Ordering::SeqCst) != generation
            {
                break;
            }
            match state.fault() {
                Fault::Stall {
                    forward: f,
                    backward: b,
                } if (forward && f) || (!forward && b) => {
                    std::thread::sleep(POLL);
                }
                Fault::Delay(now) => {
                    delay = now;
                    break;
                }
                _ => break,
            }
        }
        if state.stop.load(Ordering::SeqCst) || state.severed.load(Ordering::SeqCst) != generation {
            break;
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An upstream that echoes every byte back.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buffer = [0; 1024];
                    while let Ok(read) = stream.read(&mut buffer) {
                        if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn client(proxy: &FaultProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        stream
    }

    /// Sends `bytes` and reads as many back, or `None` on timeout or close.
    fn echo(stream: &mut TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
        stream.write_all(bytes).ok()?;
        let mut back = vec![0; bytes.len()];
        stream.read_exact(&mut back).ok()?;
        Some(back)
    }

    #[test]
    fn a_partition_holds_bytes_until_healed_and_a_sever_resets_connections() {
        let proxy = FaultProxy::start(echo_server()).expect("proxy");
        let mut stream = client(&proxy);
        assert_eq!(echo(&mut stream, b"one").as_deref(), Some(&b"one"[..]));

        proxy.set(Fault::Stall {
            forward: true,
            backward: true,
        });
        assert_eq!(
            echo(&mut stream, b"two"),
            None,
            "nothing crosses a partition"
        );
        proxy.set(Fault::Heal);
        let mut held = vec![0; 3];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .read_exact(&mut held)
            .expect("held bytes arrive after heal");
        assert_eq!(held, b"two", "held, not dropped");

        proxy.set(Fault::Stall {
            forward: false,
            backward: true,
        });
        let mut one_way = client(&proxy);
        assert_eq!(echo(&mut one_way, b"out"), None, "answers are held one way");
        proxy.set(Fault::Heal);

        proxy.set(Fault::Delay(Duration::from_millis(100)));
        let started = Instant::now();
        assert_eq!(echo(&mut stream, b"slow").as_deref(), Some(&b"slow"[..]));
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "delayed both ways"
        );

        proxy.set(Fault::Sever);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest).is_ok() || stream.write_all(b"x").is_err();
        assert!(closed, "a severed connection is closed");
        let mut refused = client(&proxy);
        assert_eq!(
            echo(&mut refused, b"new"),
            None,
            "new connections are refused"
        );
        proxy.set(Fault::Heal);
        let mut again = client(&proxy);
        assert_eq!(echo(&mut again, b"back").as_deref(), Some(&b"back"[..]));
    }
}
