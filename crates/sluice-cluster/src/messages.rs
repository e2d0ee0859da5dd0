//! Messages for queues living on other nodes. A node that routes a
//! message to a classic queue whose home is another node sends it there
//! over the inter-node listener (a connection opening with
//! [`PREFACE_MESSAGES`]); the home enqueues it as its own publishes and
//! answers once the queue has it with its guarantee (on disk for a durable
//! queue and a persistent message), or with why it refused it. The sender
//! confirms (or nacks) its publisher on that answer.
//!
//! One connection per peer carries a node's messages for that peer, in
//! the order they were routed; answers carry the request's id. A link
//! that fails refuses every message waiting on it (the publishers get
//! nacks) and is dialled again for the next message.
//!
//! Frames are a `u32` big-endian length, then
//! - request: `[id:8][vhost_len:1][vhost][queue_len:1][queue][message]`,
//!   the message as a queue log holds it (`Message::encode`);
//! - answer: `[id:8][refused:1][reason]`, the reason in UTF-8.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_core::messaging::{Message, RemoteQueues};
use sluice_core::{Acks, Broker, PendingAck, RemoteOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::MetadataNode;

/// The first byte of a connection carrying messages for queues.
pub const PREFACE_MESSAGES: u8 = b'M';

/// Largest frame either side accepts.
const MAX_FRAME: usize = 256 << 20;
/// Messages waiting for one peer's link; more are refused.
const LINK_QUEUE: usize = 8192;
/// Longest a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the inter-node listener hands connections that carry messages.
pub type MessageStreams = mpsc::Sender<(TcpStream, SocketAddr)>;

/// A message on its way, with the outcome its publisher waits on.
#[derive(Debug)]
struct Outgoing {
    /// The request without its id.
    body: Bytes,
    outcome: Arc<RemoteOutcome>,
}

/// Carries this node's messages to the queues of its peers.
#[derive(Debug)]
pub struct Carrier {
    node: Arc<MetadataNode>,
    runtime: tokio::runtime::Handle,
    links: Mutex<HashMap<i32, mpsc::Sender<Outgoing>>>,
}

impl Carrier {
    /// Links to peers are dialled on `runtime` as messages need them.
    pub fn new(node: Arc<MetadataNode>, runtime: tokio::runtime::Handle) -> Carrier {
        Carrier {
            node,
            runtime,
            links: Mutex::new(HashMap::new()),
        }
    }

    fn link(&self, home: i32) -> mpsc::Sender<Outgoing> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.get(&home)
            && !link.is_closed()
        {
            return link.clone();
        }
        let (sender, receiver) = mpsc::channel(LINK_QUEUE);
        self.runtime
            .spawn(run_link(Arc::clone(&self.node), home, receiver));
        links.insert(home, sender.clone());
        sender
    }
}

impl RemoteQueues for Carrier {
    fn enqueue(&self, home: i32, vhost: &str, queue: &str, message: &Message) -> PendingAck {
        let outcome = RemoteOutcome::new();
        match encode_request(vhost, queue, message) {
            Ok(body) => {
                let sent = self.link(home).try_send(Outgoing {
                    body,
                    outcome: Arc::clone(&outcome),
                });
                if sent.is_err() {
                    outcome.settle(Err(format!("the link to node {home} is full or closed")));
                }
            }
            Err(reason) => outcome.settle(Err(reason)),
        }
        PendingAck::remote(outcome)
    }
}

fn put_short(out: &mut BytesMut, text: &str) -> Result<(), String> {
    let len = u8::try_from(text.len()).map_err(|_| format!("name '{text}' over 255 bytes"))?;
    out.put_u8(len);
    out.put_slice(text.as_bytes());
    Ok(())
}

fn get_short(bytes: &mut Bytes) -> Option<String> {
    let len = usize::from(*bytes.first()?);
    bytes.advance(1);
    if bytes.remaining() < len {
        return None;
    }
    String::from_utf8(bytes.split_to(len).to_vec()).ok()
}

fn encode_request(vhost: &str, queue: &str, message: &Message) -> Result<Bytes, String> {
    let encoded = message.encode()?;
    let mut body = BytesMut::with_capacity(2 + vhost.len() + queue.len() + encoded.len());
    put_short(&mut body, vhost)?;
    put_short(&mut body, queue)?;
    body.put_slice(&encoded);
    Ok(body.freeze())
}

/// A request's parts: virtual host, queue and message.
fn decode_request(mut body: Bytes) -> Option<(String, String, Message)> {
    let vhost = get_short(&mut body)?;
    let queue = get_short(&mut body)?;
    Some((vhost, queue, Message::decode(body)?))
}

async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut W,
    id: u64,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(8 + body.len()).map_err(std::io::Error::other)?;
    let mut frame = BytesMut::with_capacity(12 + body.len());
    frame.put_u32(len);
    frame.put_u64(id);
    frame.put_slice(body);
    out.write_all(&frame).await
}

async fn read_frame<R: AsyncRead + Unpin>(input: &mut R) -> std::io::Result<(u64, Bytes)> {
    let len = input.read_u32().await? as usize;
    if !(8..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message frame of {len} bytes"),
        ));
    }
    let mut frame = vec![0; len];
    input.read_exact(&mut frame).await?;
    let mut frame = Bytes::from(frame);
    let id = frame.get_u64();
    Ok((id, frame))
}

type Waiting = Arc<Mutex<HashMap<u64, Arc<RemoteOutcome>>>>;

/// Refuses every message waiting on a link that failed.
fn fail_all(waiting: &Waiting, reason: &str) {
    let failed: Vec<Arc<RemoteOutcome>> = waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, outcome)| outcome)
        .collect();
    for outcome in failed {
        outcome.settle(Err(reason.to_owned()));
    }
}

/// One peer's link: dialled when a message needs it, again after a
/// failure; ends when the carrier drops its sender.
async fn run_link(node: Arc<MetadataNode>, home: i32, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut next_id: u64 = 0;
    while let Some(first) = outgoing.recv().await {
        let stream = match dial(&node, home).await {
            Ok(stream) => stream,
            Err(reason) => {
                tracing::debug!(home, %reason, "cannot reach a queue's node");
                first.outcome.settle(Err(reason.clone()));
                while let Ok(more) = outgoing.try_recv() {
                    more.outcome.settle(Err(reason.clone()));
                }
                continue;
            }
        };
        let (mut reader, mut writer) = stream.into_split();
        let waiting: Waiting = Arc::default();
        let answers = {
            let waiting = Arc::clone(&waiting);
            tokio::spawn(async move {
                loop {
                    let Ok((id, mut answer)) = read_frame(&mut reader).await else {
                        return;
                    };
                    let outcome = waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    if let Some(outcome) = outcome {
                        let refused = answer.first().copied().unwrap_or(1) != 0;
                        answer.advance(usize::from(!answer.is_empty()));
                        outcome.settle(if refused {
                            Err(String::from_utf8_lossy(&answer).into_owned())
                        } else {
                            Ok(())
                        });
                    }
                }
            })
        };
        let mut message = Some(first);
        loop {
            let Some(current) = message.take() else {
                break;
            };
            next_id += 1;
            waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(next_id, current.outcome);
            if let Err(error) = write_frame(&mut writer, next_id, &current.body).await {
                tracing::debug!(home, %error, "message link failed");
                break;
            }
            tokio::select! {
                next = outgoing.recv() => match next {
                    Some(next) => message = Some(next),
                    None => break,
                },
                _ = wait_finished(&answers) => break,
            }
        }
        answers.abort();
        fail_all(&waiting, &format!("the link to node {home} failed"));
    }
}

/// Resolves when `task` has finished (the peer closed the link).
async fn wait_finished(task: &tokio::task::JoinHandle<()>) {
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dial(node: &MetadataNode, home: i32) -> Result<TcpStream, String> {
    let addr = u64::try_from(home)
        .ok()
        .and_then(|id| node.address(id))
        .ok_or_else(|| format!("node {home} has no known address"))?;
    let connecting = async {
        let mut stream = TcpStream::connect(&addr).await?;
        let _ = stream.set_nodelay(true);
        stream.write_all(&[PREFACE_MESSAGES]).await?;
        Ok::<TcpStream, std::io::Error>(stream)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(format!("cannot reach node {home} at {addr}: {error}")),
        Err(_) => Err(format!("cannot reach node {home} at {addr}: timed out")),
    }
}

/// Serves the message links of peers until `stopping`.
pub async fn serve(
    broker: Arc<Broker>,
    mut streams: mpsc::Receiver<(TcpStream, SocketAddr)>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = streams.recv() => match accepted {
                Some((stream, peer)) => {
                    tokio::spawn(serve_link(Arc::clone(&broker), stream, peer));
                }
                None => return,
            },
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// A request enqueued, waiting for its queue's guarantee.
type Enqueued = (u64, Result<Acks, String>);

/// One peer's messages: enqueued in order on one thread, their
/// acknowledgements waited for together on another (one sync covers a
/// burst), answered as they complete.
async fn serve_link(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let (mut reader, mut writer) = stream.into_split();
    let (work, work_rx) = std::sync::mpsc::channel::<(u64, Bytes)>();
    let (enqueued, enqueued_rx) = std::sync::mpsc::channel::<Enqueued>();
    let (answers, mut answers_rx) = mpsc::unbounded_channel::<(u64, Result<(), String>)>();
    tokio::task::spawn_blocking(move || {
        for (id, body) in work_rx {
            let result = enqueue(&broker, body);
            if enqueued.send((id, result)).is_err() {
                return;
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        while let Ok(first) = enqueued_rx.recv() {
            let mut batch = vec![first];
            batch.extend(enqueued_rx.try_iter());
            let mut all = Acks::default();
            for (_, result) in &mut batch {
                if let Ok(acks) = result {
                    all.merge(std::mem::take(acks));
                }
            }
            let synced = all.wait().map_err(|error| error.to_string());
            for (id, result) in batch {
                let answer = result.and_then(|_| synced.clone());
                if answers.send((id, answer)).is_err() {
                    return;
                }
            }
        }
    });
    let writing = tokio::spawn(async move {
        while let Some((id, answer)) = answers_rx.recv().await {
            let mut body = BytesMut::new();
            match answer {
                Ok(()) => body.put_u8(0),
                Err(reason) => {
                    body.put_u8(1);
                    body.put_slice(reason.as_bytes());
                }
            }
            if write_frame(&mut writer, id, &body).await.is_err() {
                return;
            }
        }
    });
    loop {
        match read_frame(&mut reader).await {
            Ok(request) => {
                if work.send(request).is_err() {
                    break;
                }
            }
            Err(error) => {
                if error.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::info!(%peer, %error, "message link closed");
                }
                break;
            }
        }
    }
    drop(work);
    let _ = writing.await;
}

/// Enqueues one request on this node: the acknowledgement to wait for,
/// or why it was refused.
fn enqueue(broker: &Broker, body: Bytes) -> Result<Acks, String> {
    let (vhost, queue, message) =
        decode_request(body).ok_or_else(|| "a damaged message request".to_owned())?;
    let host = broker
        .vhosts()
        .get(&vhost)
        .ok_or_else(|| format!("no vhost '{vhost}'"))?;
    let outcome = host
        .enqueue_forwarded(&queue, message)
        .map_err(|error| error.to_string())?;
    if outcome.rejected {
        return Err(format!(
            "queue '{queue}' in vhost '{vhost}' refused the message (x-overflow reject-publish)"
        ));
    }
    Ok(outcome.acks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_parts() {
        let message = Message {
            exchange: "orders".into(),
            routing_key: "eu.paid".into(),
            properties: amq_protocol::protocol::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id("m-1".into()),
            body: Bytes::from_static(b"body"),
        };
        let body = encode_request("/", "q", &message).expect("encode");
        let (vhost, queue, decoded) = decode_request(body).expect("decode");
        assert_eq!((vhost.as_str(), queue.as_str()), ("/", "q"));
        assert_eq!(decoded, message);
        assert!(decode_request(Bytes::from_static(&[5, b'a'])).is_none());
    }
}
