//! The transport between nodes of the quorum: each node listens on
//! `cluster.listen`; a peer holds one TCP connection to it, opened lazily
//! and reopened after an error, and sends one request at a time (openraft
//! drives one call at a time per peer). Frames are a `u32` big-endian
//! length and JSON: an envelope naming the node it is meant for (a request
//! that reaches the wrong node, say after an address was reused, is
//! refused instead of confusing openraft) and the request; the answer is
//! the receiving node's `Result`, as openraft returned it.
//!
//! Every connection opens with one byte naming what it carries:
//! [`PREFACE_QUORUM`] for the frames above, [`PREFACE_KAFKA`] for a
//! follower's replica fetches, which the listener hands to the broker's
//! Kafka connection handling, [`crate::messages::PREFACE_MESSAGES`] for
//! messages routed to this node's queues, so that all traffic between two
//! nodes goes over their inter-node link. A node dials a peer at the address its
//! `cluster.routes` names for it, else the address in the quorum's
//! membership. With `cluster.tls` every such connection is mutual TLS
//! ([`crate::link`]).

use std::io;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_tls::LinkStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{NodeId, Proposal, TypeConfig};

/// Largest frame either side accepts.
const MAX_FRAME: usize = 64 << 20;

/// The first byte of a connection carrying quorum frames.
pub const PREFACE_QUORUM: u8 = b'Q';
/// The first byte of a connection carrying Kafka requests (replica fetches).
pub const PREFACE_KAFKA: u8 = b'K';

/// Longest a new connection may take to send its first byte.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the listener hands connections that carry Kafka requests.
pub type KafkaStreams = tokio::sync::mpsc::Sender<(LinkStream, std::net::SocketAddr)>;

/// Where the listener hands connections that are not the quorum's.
#[derive(Debug, Clone, Default)]
pub(crate) struct Handoff {
    pub(crate) kafka: Option<KafkaStreams>,
    pub(crate) messages: Option<crate::messages::MessageStreams>,
}

/// The addresses this node dials its peers at where they differ from the
/// membership's (`cluster.routes`: a proxy, a NAT, a test's fault
/// injector).
pub type Routes = std::sync::Arc<std::collections::BTreeMap<NodeId, String>>;

/// The address to dial node `target` at: its route, else `addr`.
pub(crate) fn route(routes: &Routes, target: NodeId, addr: &str) -> String {
    routes
        .get(&target)
        .cloned()
        .unwrap_or_else(|| addr.to_owned())
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A command a follower proposes, for the leader to write.
    Forward(Proposal),
    /// A node tells the controller it is alive (KRaft's broker heartbeat).
    Heartbeat(NodeId),
    /// A node not in the quorum asks to follow the metadata log, reached
    /// at `addr` (it becomes a learner: a broker that does not vote).
    Join {
        node: NodeId,
        addr: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    to: NodeId,
    request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// A forwarded command's log index and answer once committed and
    /// applied on the leader, or why the leader did not write it.
    Forwarded(Result<(u64, String), String>),
    /// The controller heard the heartbeat.
    Heartbeat,
    /// The node joined, or why not (this node is not the controller, say).
    Joined(Result<(), String>),
    /// The request named another node; this one is `0`.
    WrongNode(NodeId),
}

/// When each node was last heard from (heartbeats), on the node that
/// receives them.
pub type Liveness =
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<NodeId, std::time::Instant>>>;

async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    value: &impl Serialize,
) -> io::Result<()> {
    let json = serde_json::to_vec(value).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&json);
    stream.write_all(&frame).await?;
    // TLS keeps what the socket did not take until flushed.
    stream.flush().await
}

async fn read_frame<T: DeserializeOwned>(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<T> {
    let len = stream.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a cluster frame of {len} bytes is over the {MAX_FRAME} limit"),
        ));
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Resolves once `stopping` turns `true` (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Serves peers' requests to `raft` (this node, `id`) until `stopping`;
/// connections carrying Kafka requests go to `kafka`.
pub(crate) async fn serve(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    id: NodeId,
    liveness: Liveness,
    handoff: Handoff,
    stopping: watch::Receiver<bool>,
) {
    let mut stop = stopping.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(dispatch(
                        stream,
                        raft.clone(),
                        id,
                        liveness.clone(),
                        handoff.clone(),
                        stopping.clone(),
                        peer,
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "cluster listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = stopped(&mut stop) => return,
        }
    }
}

/// Reads a connection's first byte (after its TLS handshake, with
/// `cluster.tls`) and serves it as it says.
async fn dispatch(
    stream: tokio::net::TcpStream,
    raft: Raft<TypeConfig>,
    id: NodeId,
    liveness: Liveness,
    handoff: Handoff,
    stopping: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) {
    let Some(mut stream) = crate::link::accept(stream, peer).await else {
        return;
    };
    let preface = match tokio::time::timeout(PREFACE_TIMEOUT, stream.read_u8()).await {
        Ok(Ok(byte)) => byte,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "cluster connection closed before its first byte");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "cluster connection closed: nothing sent within 10 s");
            return;
        }
    };
    if preface == crate::messages::PREFACE_MESSAGES {
        match handoff.messages {
            Some(messages) => {
                if messages.try_send((stream, peer)).is_err() {
                    tracing::debug!(%peer, "message link closed: the broker is not taking them now");
                }
            }
            None => tracing::warn!(%peer, "message link closed: this node serves no queues"),
        }
        return;
    }
    match (preface, handoff.kafka) {
        (PREFACE_QUORUM, _) => connection(stream, raft, id, liveness, stopping, peer).await,
        (PREFACE_KAFKA, Some(kafka)) => {
            // Not queued behind a broker still starting (the follower dials
            // again): closed when the front-end cannot take it now.
            if kafka.try_send((stream, peer)).is_err() {
                tracing::debug!(%peer, "replica connection closed: the Kafka front-end is not taking connections");
            }
        }
        (PREFACE_KAFKA, None) => {
            tracing::warn!(%peer, "replica connection closed: this node serves no Kafka requests");
        }
        (other, _) => {
            tracing::warn!(%peer, preface = other, "cluster connection closed: unknown first byte");
        }
    }
}

async fn connection(
    mut stream: LinkStream,
    raft: Raft<TypeConfig>,
    id: NodeId,
    liveness: Liveness,
    mut stopping: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) {
    loop {
        let envelope: Envelope = tokio::select! {
            read = read_frame(&mut stream) => match read {
                Ok(envelope) => envelope,
                Err(error) => {
                    if error.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(%peer, %error, "cluster connection closed");
                    }
                    return;
                }
            },
            () = stopped(&mut stopping) => return,
        };
        let response = if envelope.to == id {
            match envelope.request {
                Request::Append(request) => Response::Append(raft.append_entries(request).await),
                Request::Vote(request) => Response::Vote(raft.vote(request).await),
                Request::Snapshot(request) => {
                    Response::Snapshot(raft.install_snapshot(request).await)
                }
                Request::Heartbeat(node) => {
                    liveness
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(node, std::time::Instant::now());
                    Response::Heartbeat
                }
                Request::Forward(proposal) => {
                    tracing::debug!(%peer, "a forwarded command");
                    let written = raft
                        .client_write(proposal)
                        .await
                        .map(|written| (written.log_id.index, written.data))
                        .map_err(|error| error.to_string());
                    tracing::debug!(%peer, ok = written.is_ok(), "a forwarded command written");
                    Response::Forwarded(written)
                }
                Request::Join { node, addr } => {
                    tracing::info!(node, %addr, "a node asks to join the cluster");
                    Response::Joined(
                        raft.add_learner(node, BasicNode::new(addr), false)
                            .await
                            .map(|_| ())
                            .map_err(|error| error.to_string()),
                    )
                }
            }
        } else {
            tracing::warn!(%peer, meant_for = envelope.to, this_node = id, "cluster request for another node refused");
            Response::WrongNode(id)
        };
        if let Err(error) = write_frame(&mut stream, &response).await {
            tracing::debug!(%peer, %error, "cluster connection closed");
            return;
        }
    }
}

/// Makes a [`Peer`] per target node; connects nothing until the first call.
#[derive(Debug, Clone, Default)]
pub struct Network {
    pub(crate) routes: Routes,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer::new(target, &route(&self.routes, target, &node.addr))
    }
}

/// The link to one peer.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    addr: String,
    stream: Option<LinkStream>,
    /// A call is between writing its request and reading its answer.
    /// Still set when the next call starts, the previous one was dropped
    /// midway (openraft cancels calls that outlive its own timeout): its
    /// answer may still come on the connection and would be taken for the
    /// next call's (a Success for other entries), so the connection is
    /// dropped instead.
    in_flight: bool,
}

/// Why a call got no answer.
#[derive(Debug)]
enum CallError {
    /// The peer could not be reached (openraft backs off).
    Unreachable(io::Error),
    /// The connection failed mid-call (openraft retries).
    Network(io::Error),
}

impl CallError {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<NodeId, BasicNode, E> {
        match self {
            CallError::Unreachable(error) => RPCError::Unreachable(Unreachable::new(&error)),
            CallError::Network(error) => RPCError::Network(NetworkError::new(&error)),
        }
    }
}

impl Peer {
    async fn call(&mut self, request: Request, ttl: Duration) -> Result<Response, CallError> {
        if self.in_flight {
            self.stream = None;
            self.in_flight = false;
        }
        if self.stream.is_none() {
            let mut connected = tokio::time::timeout(ttl, crate::link::dial(&self.addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                .and_then(|r| r)
                .map_err(CallError::Unreachable)?;
            connected
                .write_all(&[PREFACE_QUORUM])
                .await
                .map_err(CallError::Unreachable)?;
            self.stream = Some(connected);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(CallError::Unreachable(io::Error::other("no connection")));
        };
        let envelope = Envelope {
            to: self.target,
            request,
        };
        self.in_flight = true;
        let exchanged = tokio::time::timeout(ttl, async {
            write_frame(stream, &envelope).await?;
            read_frame::<Response>(stream).await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
        .and_then(|r| r);
        self.in_flight = false;
        match exchanged {
            Ok(Response::WrongNode(actual)) => {
                self.stream = None;
                Err(CallError::Unreachable(io::Error::other(format!(
                    "{} is node {actual}, not node {}",
                    self.addr, self.target
                ))))
            }
            Ok(response) => Ok(response),
            Err(error) => {
                self.stream = None;
                Err(CallError::Network(error))
            }
        }
    }
}

/// Sends a command to the leader `target` at `addr` to write; answers its
/// log index and the machine's answer once committed and applied there.
///
/// # Errors
/// The link's failure, or the leader's refusal (it may no longer lead).
pub(crate) async fn forward(
    target: NodeId,
    addr: &str,
    command: String,
    ttl: Duration,
) -> Result<(u64, String), String> {
    let mut peer = Peer::new(target, addr);
    match peer.call(Request::Forward(Proposal(command)), ttl).await {
        Ok(Response::Forwarded(answer)) => answer,
        Ok(_) => Err("the leader answered another kind of request".to_owned()),
        Err(CallError::Unreachable(error) | CallError::Network(error)) => Err(error.to_string()),
    }
}

/// Asks node `target` at `addr` (the controller) to let node `node`,
/// reached at `own`, follow the metadata log.
///
/// # Errors
/// The link's failure, or the target's refusal (it is not the controller).
pub(crate) async fn join(
    target: NodeId,
    addr: &str,
    node: NodeId,
    own: &str,
    ttl: Duration,
) -> Result<(), String> {
    let mut peer = Peer::new(target, addr);
    let request = Request::Join {
        node,
        addr: own.to_owned(),
    };
    match peer.call(request, ttl).await {
        Ok(Response::Joined(answer)) => answer,
        Ok(_) => Err("the node answered another kind of request".to_owned()),
        Err(CallError::Unreachable(error) | CallError::Network(error)) => Err(error.to_string()),
    }
}

impl Peer {
    /// A link to node `target` at `addr`, connected on first use.
    pub(crate) fn new(target: NodeId, addr: &str) -> Peer {
        Peer {
            target,
            addr: addr.to_owned(),
            stream: None,
            in_flight: false,
        }
    }

    /// Tells `target` (the controller) that node `from` is alive.
    ///
    /// # Errors
    /// The link's failure.
    pub(crate) async fn heartbeat(&mut self, from: NodeId, ttl: Duration) -> Result<(), String> {
        match self.call(Request::Heartbeat(from), ttl).await {
            Ok(Response::Heartbeat) => Ok(()),
            Ok(_) => Err("the controller answered another kind of request".to_owned()),
            Err(CallError::Unreachable(error) | CallError::Network(error)) => {
                Err(error.to_string())
            }
        }
    }

    /// The peer's answer of the kind `pick` takes, as openraft wants it.
    #[allow(clippy::result_large_err, reason = "openraft's error type")]
    fn answered<T, E: std::error::Error>(
        &self,
        called: Result<Response, CallError>,
        pick: impl FnOnce(Response) -> Option<Result<T, RaftError<NodeId, E>>>,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        match called.map(pick) {
            Ok(Some(answer)) => {
                answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(None) => Err(RPCError::Network(NetworkError::new(&io::Error::other(
                "the peer answered another kind of request",
            )))),
            Err(error) => Err(error.into_rpc()),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let called = self.call(Request::Append(rpc), option.hard_ttl()).await;
        self.answered(called, |response| match response {
            Response::Append(answer) => Some(answer),
            _ => None,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let called = self.call(Request::Snapshot(rpc), option.hard_ttl()).await;
        self.answered(called, |response| match response {
            Response::Snapshot(answer) => Some(answer),
            _ => None,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let called = self.call(Request::Vote(rpc), option.hard_ttl()).await;
        self.answered(called, |response| match response {
            Response::Vote(answer) => Some(answer),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that answers each request with its own kind, the first one
    /// after `delay`.
    async fn slow_first_answer(listener: TcpListener, delay: Duration) {
        let mut first = true;
        while let Ok((mut stream, _)) = listener.accept().await {
            let wait = if first { delay } else { Duration::ZERO };
            first = false;
            tokio::spawn(async move {
                if stream.read_u8().await.ok() != Some(PREFACE_QUORUM) {
                    return;
                }
                let mut wait = wait;
                while let Ok(envelope) = read_frame::<Envelope>(&mut stream).await {
                    tokio::time::sleep(std::mem::take(&mut wait)).await;
                    let answer = match envelope.request {
                        Request::Heartbeat(_) => Response::Heartbeat,
                        _ => Response::Forwarded(Ok((7, "forwarded".to_owned()))),
                    };
                    if write_frame(&mut stream, &answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// openraft drops a call that outlives its own timeout; the answer to
    /// it must never be taken for the next call's (a stale Success once
    /// let a leader count entries a follower did not have).
    #[tokio::test]
    async fn an_answer_to_a_dropped_call_is_never_taken_for_the_next() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(slow_first_answer(listener, Duration::from_millis(300)));
        let mut peer = Peer::new(2, &addr);
        let dropped = tokio::time::timeout(
            Duration::from_millis(50),
            peer.call(
                Request::Forward(Proposal("{}".to_owned())),
                Duration::from_secs(5),
            ),
        )
        .await;
        assert!(dropped.is_err(), "the first call was cut short");
        // The next call on the same peer gets its own answer, even though
        // the first one's arrives meanwhile.
        tokio::time::sleep(Duration::from_millis(400)).await;
        peer.heartbeat(1, Duration::from_secs(5))
            .await
            .expect("the heartbeat's own answer");
    }
}
