//! Messages and consumers for queues living on other nodes, over the
//! inter-node listener (a connection opening with [`PREFACE_MESSAGES`]).
//!
//! - A node that routes a message to a classic queue whose home is another
//!   node sends it there; the home enqueues it as its own publishes and
//!   answers once the queue has it with its guarantee (on disk for a
//!   durable queue and a persistent message), or with why it refused it.
//!   The sender confirms (or nacks) its publisher on that answer.
//! - A consumer on a node of a queue living elsewhere is registered at the
//!   home, with the consumer's prefetch; the home's queue dispatches to it
//!   as to its own consumers, and each delivery comes back over the link
//!   to the consumer's channel. Acks, rejects and requeues go back to the
//!   home, which releases the consumer's credit, dead-letters and
//!   redelivers as for its own consumers.
//!
//! One connection per pair of nodes (dialled by the node with the
//! publishers or consumers) carries these in order. When it fails, the
//! sender's messages waiting for an answer are refused (nacks), its
//! remote consumers are cancelled (`basic.cancel` to their clients), and
//! the home requeues what those consumers had not settled; settlements of
//! deliveries made over a failed connection are dropped (the home
//! redelivers those messages). The link is dialled again when needed.
//!
//! Each side sends a heartbeat after 5 s without sending anything, and
//! closes a link that brought nothing for 20 s (its peer paused, cut off
//! or gone without closing it).
//!
//! Frames are a `u32` big-endian length, a kind byte and its fields;
//! names are a length byte and UTF-8, messages as a queue log holds them
//! (`Message::encode`). To the home: `ENQUEUE [id:8][vhost][queue][message]`,
//! `CONSUME [consumer:8][vhost][queue][tag][no_ack:1][exclusive:1][priority:4][prefetch:4]`,
//! `CANCEL [consumer:8]`, `SETTLE [vhost][queue][op:1][count:4][seq:8]*`,
//! `GET [id:8][vhost][queue][no_ack:1]`, `PURGE [id:8][vhost][queue]`,
//! `CONNECTIONS [id:8]`,
//! `RESETTLE [id:8][vhost][queue][count:4]([message:8][epoch:4])*`,
//! `HOLD` (as `RESETTLE`), `RELEASE [id:8][vhost][queue][op:1][count:4]([message:8][epoch:4])*`,
//! `SHARE_COUNTS [id:8][count:4]([length:2][group])*` (share groups'
//! records on the node, for the admin API),
//! `TAKEOVER [id:8][vhost][length:2][client id][clean start:1][since ms:8][node:4]`
//! (a client of the sender took an MQTT client id at that time: the
//! holder here ends unless it is still connecting and claimed it later, a
//! will waiting for its delay is settled). Every kind from `CONNECTIONS` on starts with its
//! call id: a node refuses a kind it does not know (a newer peer's) with
//! `ANSWER [id][1]` and keeps the link.
//! From it: `ANSWER [id:8][refused:1][reason]`,
//! `DELIVER [consumer:8][seq:8][redelivered:1][quorum:1]([message:8][epoch:4] if quorum)[message]`,
//! `CANCELLED [consumer:8][reason]`, `REFUSED [consumer:8][reason]` (the
//! queue refused the consumer: cancelled at its client, also a quorum
//! queue's, which would otherwise wait for the queue's next leader),
//! `GOT [id:8][0: empty | 1 [seq:8][redelivered:1][remaining:4][quorum:1](...)[message] | 2 reason]`,
//! `PURGED [id:8][0 [count:4] | 2 reason]`,
//! `CONNECTED [id:8][kafka:8][amqp:8]`,
//! `SHARES [id:8][count:4]([group:4][topic:16][partition:4][start:8][available:8][acquired:8][archived:8])*`
//! (`group` the index of the group in the call),
//! `TAKEN [id:8]` (the holder of a taken client id let its session go, or
//! there was none).
//!
//! A quorum queue's delivery names its message as every leader knows it
//! (its id and the leader epoch of its enqueue record). The consumer's
//! node remembers the acks of such deliveries, also those
//! made after the link failed, and hands them to each new leader of the
//! queue (`RESETTLE`, ahead of its consumers' `CONSUME`), and again to a
//! leader after the link to it failed (killed and started again before
//! the controller noticed, it leads on in the same epoch without what it
//! had not replicated), so that a settlement the former leader did not
//! replicate does not bring its message back. With them (and whenever
//! its consumers register again) it sends `HOLD`: the messages its
//! clients still hold of a former leader's deliveries, which the leader
//! takes off its ready list as delivered over this link (requeued if the
//! link fails) instead of delivering them again; the client's ack reaches
//! it as a settlement by id, a reject or requeue as `RELEASE`. A node
//! that stops leading a quorum queue cancels the consumers other nodes
//! registered with it (they register with the next leader from their own
//! node).
//!
//! `basic.get` and `queue.purge` of a remote queue wait for the home's
//! answer (at most 30 s) on the calling thread, out of the async
//! workers' way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_core::messaging::{
    ConsumerEvent, ConsumerSpec, Credit, Delivery, Message, MessageRef, MessagingError,
    PEER_CONSUMER, Queue, QueueType, RemoteQueues, RemoteSettled, RemoteSettlement, VirtualHost,
};
use sluice_core::share_groups::ShareCounts;
use sluice_core::{Acks, Broker, PendingAck, RemoteOutcome};
use sluice_tls::LinkStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::MetadataNode;

/// The first byte of a connection carrying messages for queues.
pub const PREFACE_MESSAGES: u8 = b'M';

/// Both ways, when a side has sent nothing for [`HEARTBEAT_EVERY`].
const HEARTBEAT: u8 = 0;
const ENQUEUE: u8 = 1;
const CONSUME: u8 = 2;
const CANCEL: u8 = 3;
const SETTLE: u8 = 4;
const GET: u8 = 5;
const PURGE: u8 = 6;
const CONNECTIONS: u8 = 7;
const RESETTLE: u8 = 8;
const HOLD: u8 = 9;
const RELEASE: u8 = 10;
const SHARE_COUNTS: u8 = 11;
const TAKEOVER: u8 = 12;
/// The top bit marks a call's id (`GET`, `PURGE`, `CONNECTIONS`,
/// `SHARE_COUNTS`, `TAKEOVER`), apart from enqueue ids.
const CALL_IDS: u64 = 1 << 63;
const ANSWER: u8 = 1;
const DELIVER: u8 = 2;
const CANCELLED: u8 = 3;
const GOT: u8 = 4;
const PURGED: u8 = 5;
const CONNECTED: u8 = 6;
const REFUSED: u8 = 7;
const SHARES: u8 = 8;
const TAKEN: u8 = 9;

/// A side that has sent nothing for this long sends a heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A link that brought nothing for this long is dead (a node paused,
/// cut off or gone without closing it): closed, with what that means for
/// its messages and consumers.
const LINK_SILENCE: Duration = Duration::from_secs(20);

/// Longest a `basic.get` or a purge waits for the queue's node.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

const OP_ACK: u8 = 0;
const OP_REJECT: u8 = 1;
const OP_REQUEUE: u8 = 2;

/// Largest frame either side accepts.
const MAX_FRAME: usize = 256 << 20;
/// Messages waiting for one peer's answer or link; more are refused.
const LINK_QUEUE: usize = 8192;
/// Longest a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the inter-node listener hands connections that carry messages.
pub type MessageStreams = mpsc::Sender<(LinkStream, SocketAddr)>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

// --- frames ---------------------------------------------------------------

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

fn get_u64(bytes: &mut Bytes) -> Option<u64> {
    (bytes.remaining() >= 8).then(|| bytes.get_u64())
}

/// `[quorum:1]([message:8][epoch:4] if quorum)`: a quorum queue's message
/// as every leader knows it.
fn put_quorum_ref(out: &mut BytesMut, quorum: Option<MessageRef>) {
    match quorum {
        Some(quorum) => {
            out.put_u8(1);
            out.put_u64(quorum.id);
            out.put_i32(quorum.epoch);
        }
        None => out.put_u8(0),
    }
}

/// What [`put_quorum_ref`] wrote; `None` when damaged.
fn get_quorum_ref(bytes: &mut Bytes) -> Option<Option<MessageRef>> {
    if get_u8(bytes)? == 0 {
        return Some(None);
    }
    let id = get_u64(bytes)?;
    if bytes.remaining() < 4 {
        return None;
    }
    Some(Some(MessageRef {
        id,
        epoch: bytes.get_i32(),
    }))
}

/// A `[count:4]` ahead of exactly `count` items of `size` bytes each.
fn get_count(bytes: &mut Bytes, size: usize) -> Option<usize> {
    if bytes.remaining() < 4 {
        return None;
    }
    let count = bytes.get_u32() as usize;
    (bytes.remaining() == count.checked_mul(size)?).then_some(count)
}

fn get_u8(bytes: &mut Bytes) -> Option<u8> {
    (bytes.remaining() >= 1).then(|| bytes.get_u8())
}

/// A frame: length, kind, fields.
fn frame(kind: u8, fields: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + fields.len());
    out.put_u32(u32::try_from(1 + fields.len()).unwrap_or(u32::MAX));
    out.put_u8(kind);
    out.put_slice(fields);
    out.freeze()
}

/// A frame of `kind` whose fields `fill` writes in place (about
/// `capacity` bytes of them): no copy of a message between its encoding
/// and the link's writer.
fn frame_with(
    kind: u8,
    capacity: usize,
    fill: impl FnOnce(&mut BytesMut) -> Result<(), String>,
) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(5 + capacity);
    out.put_u32(0);
    out.put_u8(kind);
    fill(&mut out)?;
    let len = u32::try_from(out.len() - 4).map_err(|_| "a frame over 4 GiB")?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out.freeze())
}

fn encode_enqueue(id: u64, vhost: &str, queue: &str, message: &Message) -> Result<Bytes, String> {
    let capacity = 10 + vhost.len() + queue.len() + message.encoded_len_hint() + 64;
    frame_with(ENQUEUE, capacity, |fields| {
        fields.put_u64(id);
        put_short(fields, vhost)?;
        put_short(fields, queue)?;
        message.encode_into(fields)
    })
}

/// An ENQUEUE's fields: id, virtual host, queue and message.
fn decode_enqueue(mut fields: Bytes) -> Option<(u64, String, String, Message)> {
    let id = get_u64(&mut fields)?;
    let vhost = get_short(&mut fields)?;
    let queue = get_short(&mut fields)?;
    Some((id, vhost, queue, Message::decode(fields)?))
}

fn encode_settle(vhost: &str, queue: &str, op: u8, seqs: &[u64]) -> Result<Bytes, String> {
    let mut fields = BytesMut::with_capacity(8 + vhost.len() + queue.len() + 8 * seqs.len());
    put_short(&mut fields, vhost)?;
    put_short(&mut fields, queue)?;
    fields.put_u8(op);
    fields.put_u32(u32::try_from(seqs.len()).map_err(|_| "too many settlements")?);
    for seq in seqs {
        fields.put_u64(*seq);
    }
    Ok(frame(SETTLE, &fields))
}

fn decode_settle(mut fields: Bytes) -> Option<(String, String, u8, Vec<u64>)> {
    let vhost = get_short(&mut fields)?;
    let queue = get_short(&mut fields)?;
    let op = get_u8(&mut fields)?;
    let count = get_count(&mut fields, 8)?;
    Some((
        vhost,
        queue,
        op,
        (0..count).map(|_| fields.get_u64()).collect(),
    ))
}

/// A consumer as CONSUME carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConsumeRequest {
    consumer: u64,
    vhost: String,
    queue: String,
    tag: String,
    no_ack: bool,
    exclusive: bool,
    priority: i32,
    prefetch: u32,
}

impl ConsumeRequest {
    fn encode(&self) -> Result<Bytes, String> {
        let mut fields = BytesMut::new();
        fields.put_u64(self.consumer);
        put_short(&mut fields, &self.vhost)?;
        put_short(&mut fields, &self.queue)?;
        put_short(&mut fields, &self.tag)?;
        fields.put_u8(u8::from(self.no_ack));
        fields.put_u8(u8::from(self.exclusive));
        fields.put_i32(self.priority);
        fields.put_u32(self.prefetch);
        Ok(frame(CONSUME, &fields))
    }

    fn decode(mut fields: Bytes) -> Option<ConsumeRequest> {
        let consumer = get_u64(&mut fields)?;
        let vhost = get_short(&mut fields)?;
        let queue = get_short(&mut fields)?;
        let tag = get_short(&mut fields)?;
        if fields.remaining() != 10 {
            return None;
        }
        Some(ConsumeRequest {
            consumer,
            vhost,
            queue,
            tag,
            no_ack: fields.get_u8() != 0,
            exclusive: fields.get_u8() != 0,
            priority: fields.get_i32(),
            prefetch: fields.get_u32(),
        })
    }
}

async fn write_all<W: AsyncWrite + Unpin>(out: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await
}

/// Bytes a link buffers on each side: frames queued together go out in
/// one write, and a burst of frames is read with few reads.
const LINK_BUFFER: usize = 64 << 10;

/// Reads one frame: its kind and fields.
async fn read_frame<R: AsyncRead + Unpin>(input: &mut R) -> std::io::Result<(u8, Bytes)> {
    let len = input.read_u32().await? as usize;
    if !(1..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message link frame of {len} bytes"),
        ));
    }
    let mut frame = vec![0; len];
    input.read_exact(&mut frame).await?;
    let mut frame = Bytes::from(frame);
    let kind = frame.get_u8();
    Ok((kind, frame))
}

// --- the side with the publishers and consumers -----------------------------

/// What a link writes, in order.
#[derive(Debug)]
enum Outgoing {
    Enqueue {
        vhost: String,
        queue: String,
        message: Box<Message>,
        outcome: Arc<RemoteOutcome>,
    },
    Consume(ConsumeRequest),
    Cancel(u64),
    /// A request waiting for its answer (GET, PURGE), already framed.
    Call {
        id: u64,
        frame: Bytes,
    },
    Heartbeat,
    /// Messages of a quorum queue for its leader (`RESETTLE`, `HOLD`,
    /// `RELEASE`), framed.
    Framed(Bytes),
    /// Settlements by the home's sequence numbers (a consumer's, or of
    /// deliveries no consumer here could take), of deliveries made over
    /// connection `connection` (dropped on any other: the home requeued
    /// them when that one closed).
    SettleHome {
        connection: u64,
        vhost: String,
        queue: String,
        op: u8,
        seqs: Vec<u64>,
    },
}

/// A consumer of a queue of the link's peer.
#[derive(Debug)]
struct LocalConsumer {
    channel: u64,
    tag: Arc<str>,
    vhost: String,
    queue: String,
    /// Where its deliveries go; `None` once cancelled here (deliveries
    /// still on their way go back to the queue).
    sink: Option<mpsc::UnboundedSender<ConsumerEvent>>,
    /// The consumer's credit on its channel: taken for each delivery, as
    /// the channel gives it back on settlement.
    credit: Arc<Credit>,
    stand_in: Weak<Queue>,
    /// A quorum queue's: when lost, it waits for the queue's next leader
    /// (known at registration: the stand-in may be gone by then).
    quorum: bool,
    /// Its queue's store id (empty for a queue without one).
    store_id: String,
    /// Its deliveries are settled on delivery (nothing to map back).
    no_ack: bool,
    /// The connection its CONSUME went over (0: not sent yet).
    connection: u64,
    exclusive: bool,
    priority: i32,
}

/// Consumers of quorum queues whose leader went away, until the queue's
/// next leader takes them.
type Orphans = Arc<Mutex<Vec<Orphan>>>;

/// A consumer waiting for its quorum queue's next leader.
#[derive(Debug)]
struct Orphan {
    vhost: String,
    queue: String,
    /// The queue's store id: a queue declared again under the name is
    /// another queue, which the consumer never subscribed to.
    store_id: String,
    consumer: ConsumerSpec,
}

/// A consumer this node no longer reaches its queue for: a quorum queue's
/// (its leader went away) waits to be registered with the next leader;
/// any other's is cancelled (`basic.cancel` to its client).
fn lose(state: &LinkState, consumer: LocalConsumer) {
    let Some(sink) = consumer.sink else {
        return;
    };
    if consumer.quorum {
        tracing::debug!(queue = %consumer.queue, tag = %consumer.tag, "a quorum queue consumer waits for the queue's next leader");
        lock(&state.orphans).push(Orphan {
            vhost: consumer.vhost,
            queue: consumer.queue,
            store_id: consumer.store_id,
            consumer: ConsumerSpec {
                tag: consumer.tag,
                channel: consumer.channel,
                connection: 0,
                no_ack: consumer.no_ack,
                exclusive: consumer.exclusive,
                priority: consumer.priority,
                credit: consumer.credit,
                sink,
                stream_start: None,
            },
        });
    } else {
        let _ = sink.send(ConsumerEvent::Cancelled {
            channel: consumer.channel,
            consumer_tag: consumer.tag,
        });
    }
}

/// A delivery this node took.
#[derive(Debug)]
struct Sent {
    /// The connection it came over.
    over: u64,
    /// The home's sequence number.
    home_seq: u64,
    /// A quorum queue's: the message as every leader knows it, and the
    /// stand-in it came through (its queue's name).
    quorum: Option<(MessageRef, Arc<Queue>)>,
}

/// Where a call's answer goes: the connection it came over, and its fields.
type Answer = std::sync::mpsc::SyncSender<(u64, Bytes)>;

/// What a link knows, shared by the carrier, the writer and the reader.
#[derive(Debug, Default)]
struct LinkState {
    consumers: Mutex<HashMap<u64, LocalConsumer>>,
    /// Deliveries not settled yet: this node's sequence number to the
    /// connection they came over, the home's sequence number and, for a
    /// quorum queue's, the message as every leader knows it (kept after
    /// their connection failed, so that their settlement reaches the
    /// queue's next leader).
    deliveries: Mutex<HashMap<u64, Sent>>,
    /// The connection now up (counts from 1).
    connection: AtomicU64,
    /// Connections that failed and dials that did: what the peer was
    /// handed before may be lost with it.
    failures: AtomicU64,
    /// The last connection that failed (0: none): until the next one is
    /// up, nothing is sent over `connection`.
    lost: AtomicU64,
    next_seq: AtomicU64,
    /// Messages sent and not answered, or waiting to be sent.
    in_flight: AtomicUsize,
    /// Calls waiting for their answer (the connection it came over, and
    /// its fields), with the connection each was sent over (0: not yet).
    calls: Mutex<HashMap<u64, (u64, Answer)>>,
    next_call: AtomicU64,
    /// The carrier's, shared by every link.
    orphans: Orphans,
}

#[derive(Debug)]
struct Link {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    state: Arc<LinkState>,
}

/// Carries this node's messages and consumers to the queues of its peers.
#[derive(Debug)]
pub struct Carrier {
    node: Arc<MetadataNode>,
    runtime: tokio::runtime::Handle,
    links: Mutex<HashMap<i32, Link>>,
    next_consumer: AtomicU64,
    orphans: Orphans,
}

impl Carrier {
    /// Links to peers are dialled on `runtime` as they are needed.
    pub fn new(node: Arc<MetadataNode>, runtime: tokio::runtime::Handle) -> Carrier {
        Carrier {
            node,
            runtime,
            links: Mutex::new(HashMap::new()),
            next_consumer: AtomicU64::new(1),
            orphans: Orphans::default(),
        }
    }

    /// Every link dialled so far (a consumer may be on any of them).
    fn links(&self) -> Vec<(mpsc::UnboundedSender<Outgoing>, Arc<LinkState>)> {
        lock(&self.links)
            .values()
            .map(|link| (link.outgoing.clone(), Arc::clone(&link.state)))
            .collect()
    }

    fn link(&self, home: i32) -> (mpsc::UnboundedSender<Outgoing>, Arc<LinkState>) {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(&home)
            && !link.outgoing.is_closed()
        {
            return (link.outgoing.clone(), Arc::clone(&link.state));
        }
        let (outgoing, receiver) = mpsc::unbounded_channel();
        let state = Arc::new(LinkState {
            orphans: Arc::clone(&self.orphans),
            ..LinkState::default()
        });
        self.runtime.spawn(run_link(
            Arc::clone(&self.node),
            home,
            receiver,
            outgoing.clone(),
            Arc::clone(&state),
        ));
        links.insert(
            home,
            Link {
                outgoing: outgoing.clone(),
                state: Arc::clone(&state),
            },
        );
        (outgoing, state)
    }
}

fn op_of(settlement: RemoteSettlement) -> u8 {
    match settlement {
        RemoteSettlement::Ack => OP_ACK,
        RemoteSettlement::Reject { requeue: false } => OP_REJECT,
        RemoteSettlement::Reject { requeue: true } => OP_REQUEUE,
    }
}

impl Carrier {
    /// Sends a call built by `request` (given its id) to node `home` and
    /// waits for the answer: the connection it came over and its fields.
    /// Blocking.
    fn call(
        &self,
        home: i32,
        request: impl FnOnce(u64) -> Result<Bytes, String>,
    ) -> Result<(u64, Bytes), MessagingError> {
        self.call_within(home, CALL_TIMEOUT, request)
    }

    /// [`Carrier::call`], waiting at most `timeout` for the answer.
    fn call_within(
        &self,
        home: i32,
        timeout: Duration,
        request: impl FnOnce(u64) -> Result<Bytes, String>,
    ) -> Result<(u64, Bytes), MessagingError> {
        let (outgoing, state) = self.link(home);
        // Apart from enqueue ids: a peer's refusal of an unknown kind
        // (`ANSWER [id][1]`) must end this call, not settle an enqueue.
        let id = CALL_IDS | state.next_call.fetch_add(1, Ordering::Relaxed);
        let frame = request(id)
            .map_err(|reason| MessagingError::Core(sluice_core::CoreError::Internal { reason }))?;
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        lock(&state.calls).insert(id, (0, answer));
        if outgoing.send(Outgoing::Call { id, frame }).is_err() {
            lock(&state.calls).remove(&id);
        }
        let answer = wait_answer(&answered, timeout);
        // Unanswered in time: a late answer is dropped.
        lock(&state.calls).remove(&id);
        answer
    }
}

/// Cancels the consumer `tag` of channel `channel` on one link, if it is
/// registered there.
fn cancel_on(
    outgoing: &mpsc::UnboundedSender<Outgoing>,
    state: &LinkState,
    channel: u64,
    tag: &str,
) {
    let cancelled: Vec<u64> = {
        let mut consumers = lock(&state.consumers);
        consumers
            .iter_mut()
            .filter(|(_, c)| c.channel == channel && &*c.tag == tag && c.sink.is_some())
            .map(|(id, c)| {
                c.sink = None;
                *id
            })
            .collect()
    };
    for id in cancelled {
        let _ = outgoing.send(Outgoing::Cancel(id));
    }
}

/// A refusal from the queue's node.
fn refused_there(mut fields: Bytes) -> MessagingError {
    let reason = String::from_utf8_lossy(&fields.split_off(0)).into_owned();
    MessagingError::Core(sluice_core::CoreError::Internal { reason })
}

fn call_frame(kind: u8, id: u64, vhost: &str, queue: &str, extra: &[u8]) -> Result<Bytes, String> {
    let mut fields = BytesMut::new();
    fields.put_u64(id);
    put_short(&mut fields, vhost)?;
    put_short(&mut fields, queue)?;
    fields.put_slice(extra);
    Ok(frame(kind, &fields))
}

/// A `RESETTLE`, `HOLD` or `RELEASE` frame (`op` first) for `refs`, call
/// id 0 (no answer is waited for).
fn refs_frame(
    kind: u8,
    vhost: &str,
    queue: &str,
    op: Option<u8>,
    refs: &[MessageRef],
) -> Result<Bytes, String> {
    let mut extra = BytesMut::with_capacity(5 + 12 * refs.len());
    if let Some(op) = op {
        extra.put_u8(op);
    }
    extra.put_u32(u32::try_from(refs.len()).map_err(|_| "too many messages")?);
    for message in refs {
        extra.put_u64(message.id);
        extra.put_i32(message.epoch);
    }
    call_frame(kind, 0, vhost, queue, &extra)
}

impl RemoteQueues for Carrier {
    fn get(
        &self,
        home: i32,
        vhost: &str,
        queue: &Arc<Queue>,
        no_ack: bool,
    ) -> Result<Option<sluice_core::messaging::GetResult>, MessagingError> {
        let (connection, mut fields) = self.call(home, |id| {
            call_frame(GET, id, vhost, queue.name(), &[u8::from(no_ack)])
        })?;
        let damaged = || {
            MessagingError::Core(sluice_core::CoreError::Internal {
                reason: "a damaged answer from the queue's node".to_owned(),
            })
        };
        match get_u8(&mut fields).ok_or_else(damaged)? {
            0 => Ok(None),
            1 => {
                let home_seq = get_u64(&mut fields).ok_or_else(damaged)?;
                let redelivered = get_u8(&mut fields).ok_or_else(damaged)? != 0;
                if fields.remaining() < 4 {
                    return Err(damaged());
                }
                let remaining = fields.get_u32() as usize;
                let quorum = get_quorum_ref(&mut fields).ok_or_else(damaged)?;
                let message = Message::decode(fields).ok_or_else(damaged)?;
                let (_, state) = self.link(home);
                let seq = state.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
                if !no_ack {
                    let sent = Sent {
                        over: connection,
                        home_seq,
                        quorum: quorum.map(|message| (message, Arc::clone(queue))),
                    };
                    lock(&state.deliveries).insert(seq, sent);
                }
                Ok(Some((seq, Arc::new(message), redelivered, remaining)))
            }
            _ => Err(refused_there(fields)),
        }
    }

    fn connections_on(&self, node: i32, timeout: Duration) -> Option<(u64, u64)> {
        let (_, mut fields) = self
            .call_within(node, timeout, |id| {
                let mut fields = BytesMut::new();
                fields.put_u64(id);
                Ok(frame(CONNECTIONS, &fields))
            })
            .ok()?;
        (fields.remaining() >= 16).then(|| (fields.get_u64(), fields.get_u64()))
    }

    fn amqp_counts_on(
        &self,
        node: i32,
        vhost: &str,
        user: &str,
        timeout: Duration,
    ) -> Option<sluice_core::AmqpCounts> {
        // A connections request with a virtual host and a user after its
        // id: the answer's totals are followed by their counts.
        let (_, mut fields) = self
            .call_within(node, timeout, |id| {
                let mut fields = BytesMut::new();
                fields.put_u64(id);
                put_short(&mut fields, vhost)?;
                put_short(&mut fields, user)?;
                Ok(frame(CONNECTIONS, &fields))
            })
            .ok()?;
        (fields.remaining() >= 40).then(|| {
            fields.advance(16);
            sluice_core::AmqpCounts {
                vhost_connections: fields.get_u64(),
                user_connections: fields.get_u64(),
                user_channels: fields.get_u64(),
            }
        })
    }

    fn take_over_on(&self, node: i32, takeover: &sluice_core::Takeover, timeout: Duration) -> bool {
        self.call_within(node, timeout, |id| takeover_frame(id, takeover))
            .is_ok()
    }

    fn share_counts_on(
        &self,
        node: i32,
        groups: &[String],
        timeout: Duration,
    ) -> Option<Vec<sluice_core::share_groups::CountedShares>> {
        let (_, mut fields) = self
            .call_within(node, timeout, |id| {
                let mut fields = BytesMut::new();
                fields.put_u64(id);
                fields.put_u32(u32::try_from(groups.len()).map_err(|e| e.to_string())?);
                for group in groups {
                    fields.put_u16(u16::try_from(group.len()).map_err(|e| e.to_string())?);
                    fields.put_slice(group.as_bytes());
                }
                Ok(frame(SHARE_COUNTS, &fields))
            })
            .ok()?;
        let count = (fields.remaining() >= 4).then(|| fields.get_u32())? as usize;
        let mut counts = Vec::new();
        for _ in 0..count {
            if fields.remaining() < 4 + 16 + 4 + 8 * 4 {
                return None;
            }
            let group = fields.get_u32() as usize;
            let mut topic = [0u8; 16];
            fields.copy_to_slice(&mut topic);
            let partition = fields.get_i32();
            counts.push((
                group,
                topic,
                partition,
                ShareCounts {
                    start: fields.get_i64(),
                    available: fields.get_u64(),
                    acquired: fields.get_u64(),
                    archived: fields.get_u64(),
                },
            ));
        }
        Some(counts)
    }

    fn purge(&self, home: i32, vhost: &str, queue: &str) -> Result<usize, MessagingError> {
        let (_, mut fields) = self.call(home, |id| call_frame(PURGE, id, vhost, queue, &[]))?;
        match get_u8(&mut fields) {
            Some(0) if fields.remaining() >= 4 => Ok(fields.get_u32() as usize),
            _ => Err(refused_there(fields)),
        }
    }

    fn enqueue(&self, home: i32, vhost: &str, queue: &str, message: &Message) -> PendingAck {
        let outcome = RemoteOutcome::new();
        let (outgoing, state) = self.link(home);
        if state.in_flight.fetch_add(1, Ordering::AcqRel) >= LINK_QUEUE {
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
            outcome.settle(Err(format!(
                "too many messages on their way to node {home}"
            )));
            return PendingAck::remote(outcome);
        }
        let sent = outgoing.send(Outgoing::Enqueue {
            vhost: vhost.to_owned(),
            queue: queue.to_owned(),
            message: Box::new(message.clone()),
            outcome: Arc::clone(&outcome),
        });
        if sent.is_err() {
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
            outcome.settle(Err(format!("the link to node {home} is closed")));
        }
        PendingAck::remote(outcome)
    }

    fn consume(
        &self,
        home: i32,
        vhost: &str,
        queue: &Arc<Queue>,
        consumer: ConsumerSpec,
    ) -> Result<(), MessagingError> {
        let (outgoing, state) = self.link(home);
        let id = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        let request = ConsumeRequest {
            consumer: id,
            vhost: vhost.to_owned(),
            queue: queue.name().to_owned(),
            tag: consumer.tag.to_string(),
            no_ack: consumer.no_ack,
            exclusive: consumer.exclusive,
            priority: consumer.priority,
            prefetch: consumer.credit.limit(),
        };
        lock(&state.consumers).insert(
            id,
            LocalConsumer {
                channel: consumer.channel,
                tag: Arc::clone(&consumer.tag),
                vhost: vhost.to_owned(),
                queue: queue.name().to_owned(),
                sink: Some(consumer.sink),
                credit: Arc::clone(&consumer.credit),
                stand_in: Arc::downgrade(queue),
                quorum: queue.queue_type() == QueueType::Quorum,
                store_id: queue.instance_id().to_owned(),
                no_ack: consumer.no_ack,
                connection: 0,
                exclusive: consumer.exclusive,
                priority: consumer.priority,
            },
        );
        outgoing.send(Outgoing::Consume(request)).map_err(|_| {
            lock(&state.consumers).remove(&id);
            MessagingError::NotFound(format!(
                "queue '{}' in vhost '{vhost}' lives on node {home}, which cannot be reached",
                queue.name()
            ))
        })
    }

    fn cancel(&self, home: i32, channel: u64, tag: &str) {
        // A quorum queue's consumer may have moved to another leader's
        // link (or wait for one) since its channel registered it.
        self.forget_consumer(channel, tag);
        let (outgoing, state) = self.link(home);
        cancel_on(&outgoing, &state, channel, tag);
    }

    fn release_stand_in(&self, stand_in: &Arc<Queue>) {
        for (outgoing, state) in self.links() {
            let released: Vec<(u64, LocalConsumer)> = {
                let mut consumers = lock(&state.consumers);
                let ids: Vec<u64> = consumers
                    .iter()
                    .filter(|(_, c)| {
                        c.sink.is_some() && std::ptr::eq(c.stand_in.as_ptr(), Arc::as_ptr(stand_in))
                    })
                    .map(|(id, _)| *id)
                    .collect();
                ids.into_iter()
                    .filter_map(|id| consumers.remove(&id).map(|c| (id, c)))
                    .collect()
            };
            for (id, consumer) in released {
                let _ = outgoing.send(Outgoing::Cancel(id));
                lose(&state, consumer);
            }
        }
    }

    fn forget_consumer(&self, channel: u64, tag: &str) {
        lock(&self.orphans)
            .retain(|orphan| !(orphan.consumer.channel == channel && &*orphan.consumer.tag == tag));
        for (outgoing, state) in self.links() {
            cancel_on(&outgoing, &state, channel, tag);
        }
    }

    fn orphan(&self, vhost: &str, queue: &str, store_id: &str, consumer: ConsumerSpec) {
        lock(&self.orphans).push(Orphan {
            vhost: vhost.to_owned(),
            queue: queue.to_owned(),
            store_id: store_id.to_owned(),
            consumer,
        });
    }

    fn orphaned_queues(&self, vhost: &str) -> Vec<(String, String)> {
        let mut queues: Vec<(String, String)> = lock(&self.orphans)
            .iter()
            .filter(|orphan| orphan.vhost == vhost)
            .map(|orphan| (orphan.queue.clone(), orphan.store_id.clone()))
            .collect();
        queues.sort_unstable();
        queues.dedup();
        queues
    }

    fn take_orphans(&self, vhost: &str, queue: &str, store_id: Option<&str>) -> Vec<ConsumerSpec> {
        lock(&self.orphans)
            .extract_if(.., |orphan| {
                orphan.vhost == vhost
                    && orphan.queue == queue
                    && store_id.is_none_or(|id| orphan.store_id == id)
            })
            .map(|orphan| orphan.consumer)
            .collect()
    }

    fn settle(
        &self,
        home: i32,
        vhost: &str,
        queue: &str,
        seqs: &[u64],
        settlement: RemoteSettlement,
    ) -> RemoteSettled {
        let (outgoing, state) = self.link(home);
        let current = state.connection.load(Ordering::Acquire);
        let up = state.lost.load(Ordering::Acquire) != current;
        let mut settled = RemoteSettled::default();
        let mut home_seqs = Vec::with_capacity(seqs.len());
        {
            let mut deliveries = lock(&state.deliveries);
            for seq in seqs {
                let Some(Sent {
                    over,
                    home_seq,
                    quorum,
                }) = deliveries.remove(seq)
                else {
                    continue;
                };
                let sent = up && over == current;
                if let Some((quorum, _)) = quorum {
                    if sent {
                        settled.sent.push(quorum);
                    } else {
                        settled.unsent.push(quorum);
                    }
                }
                // Made over a connection that failed: nothing to send
                // (its home requeued it when the connection closed; a
                // quorum queue's settlement goes on to its current
                // leader).
                if sent {
                    home_seqs.push(home_seq);
                }
            }
        }
        if !home_seqs.is_empty() {
            // Dropped by the writer if this connection fails first.
            let _ = outgoing.send(Outgoing::SettleHome {
                connection: current,
                vhost: vhost.to_owned(),
                queue: queue.to_owned(),
                op: op_of(settlement),
                seqs: home_seqs,
            });
        }
        settled
    }

    fn link_failures(&self, node: i32) -> u64 {
        lock(&self.links)
            .get(&node)
            .map_or(0, |link| link.state.failures.load(Ordering::Acquire))
    }

    fn resettle(&self, home: i32, vhost: &str, queue: &str, refs: &[MessageRef]) {
        self.send_refs(home, RESETTLE, vhost, queue, None, refs);
    }

    fn held_refs(&self, vhost: &str, queue: &str) -> Vec<MessageRef> {
        let mut refs = Vec::new();
        for (_, state) in self.links() {
            refs.extend(lock(&state.deliveries).values().filter_map(|sent| {
                let (message, stand_in) = sent.quorum.as_ref()?;
                (stand_in.name() == queue && stand_in.vhost() == vhost).then_some(*message)
            }));
        }
        refs
    }

    fn forget_deliveries(&self, vhost: &str, queue: &str) {
        for (_, state) in self.links() {
            lock(&state.deliveries).retain(|_, sent| {
                sent.quorum.as_ref().is_none_or(|(_, stand_in)| {
                    stand_in.name() != queue || stand_in.vhost() != vhost
                })
            });
        }
    }

    fn hold(&self, home: i32, vhost: &str, queue: &str, refs: &[MessageRef]) {
        self.send_refs(home, HOLD, vhost, queue, None, refs);
    }

    fn release(&self, home: i32, vhost: &str, queue: &str, requeue: bool, refs: &[MessageRef]) {
        let op = if requeue { OP_REQUEUE } else { OP_REJECT };
        self.send_refs(home, RELEASE, vhost, queue, Some(op), refs);
    }
}

impl Carrier {
    /// Sends [`refs_frame`] to node `home`.
    fn send_refs(
        &self,
        home: i32,
        kind: u8,
        vhost: &str,
        queue: &str,
        op: Option<u8>,
        refs: &[MessageRef],
    ) {
        match refs_frame(kind, vhost, queue, op, refs) {
            Ok(frame) => {
                let (outgoing, _) = self.link(home);
                let _ = outgoing.send(Outgoing::Framed(frame));
            }
            Err(reason) => {
                tracing::warn!(%reason, kind, "cannot encode messages for a quorum queue's leader")
            }
        }
    }
}

type Waiting = Arc<Mutex<HashMap<u64, Arc<RemoteOutcome>>>>;

/// After a connection failed: refuses the messages waiting for an answer
/// and cancels the consumers registered over it.
fn connection_lost(state: &LinkState, waiting: &Waiting, connection: u64, reason: &str) {
    // Counted first: the consumers lost below register with the peer
    // again only behind the settlements handed to it again.
    state.lost.store(connection, Ordering::Release);
    state.failures.fetch_add(1, Ordering::AcqRel);
    let failed: Vec<Arc<RemoteOutcome>> = lock(waiting).drain().map(|(_, o)| o).collect();
    state.in_flight.fetch_sub(failed.len(), Ordering::AcqRel);
    for outcome in failed {
        outcome.settle(Err(reason.to_owned()));
    }
    let lost: Vec<LocalConsumer> = {
        let mut consumers = lock(&state.consumers);
        let ids: Vec<u64> = consumers
            .iter()
            .filter(|(_, c)| c.connection == connection)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| consumers.remove(&id))
            .collect()
    };
    for consumer in lost {
        lose(state, consumer);
    }
    // A quorum queue's deliveries are kept: their settlements go to the
    // queue's next leader.
    lock(&state.deliveries).retain(|_, sent| sent.over != connection || sent.quorum.is_some());
    // Calls sent over it fail (their senders dropped); those not sent
    // yet go over the next one.
    lock(&state.calls).retain(|_, (over, _)| *over != connection);
}

/// One peer's link: dialled when something needs it, again after a
/// failure; ends when the carrier drops it.
async fn run_link(
    node: Arc<MetadataNode>,
    home: i32,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    requeue: mpsc::UnboundedSender<Outgoing>,
    state: Arc<LinkState>,
) {
    let mut next_id: u64 = 0;
    let mut pending: Option<Outgoing> = None;
    loop {
        let first = match pending.take() {
            Some(first) => first,
            None => match outgoing.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let stream = match dial(&node, home).await {
            Ok(stream) => stream,
            Err(reason) => {
                tracing::debug!(home, %reason, "cannot reach a queue's node");
                state.failures.fetch_add(1, Ordering::AcqRel);
                refuse(&state, first, &reason);
                while let Ok(more) = outgoing.try_recv() {
                    refuse(&state, more, &reason);
                }
                continue;
            }
        };
        let connection = state.connection.fetch_add(1, Ordering::AcqRel) + 1;
        let (reader, writer) = stream.split();
        let mut writer = tokio::io::BufWriter::with_capacity(LINK_BUFFER, writer);
        let waiting: Waiting = Arc::default();
        let reading = tokio::spawn(read_from_home(
            tokio::io::BufReader::with_capacity(LINK_BUFFER, reader),
            Arc::clone(&state),
            Arc::clone(&waiting),
            requeue.clone(),
            connection,
        ));
        let mut current = Some(first);
        while let Some(item) = current.take() {
            let Some(bytes) = outgoing_frame(&state, &waiting, &mut next_id, connection, item)
            else {
                // Nothing to send for it (settlements of an older link).
                current = next_outgoing(&mut outgoing, &reading).await;
                continue;
            };
            if let Err(error) = write_all(&mut writer, &bytes).await {
                tracing::debug!(home, %error, "message link failed");
                break;
            }
            // What is queued already goes out in the same write.
            if let Ok(next) = outgoing.try_recv() {
                current = Some(next);
                continue;
            }
            if let Err(error) = writer.flush().await {
                tracing::debug!(home, %error, "message link failed");
                break;
            }
            current = next_outgoing(&mut outgoing, &reading).await;
        }
        reading.abort();
        connection_lost(
            &state,
            &waiting,
            connection,
            &format!("the link to node {home} failed"),
        );
        if outgoing.is_closed() && outgoing.is_empty() {
            return;
        }
    }
}

/// The next thing to write, or `None` once the peer closed the link or
/// the carrier dropped it.
async fn next_outgoing(
    outgoing: &mut mpsc::UnboundedReceiver<Outgoing>,
    reading: &tokio::task::JoinHandle<()>,
) -> Option<Outgoing> {
    tokio::select! {
        next = outgoing.recv() => next,
        () = wait_finished(reading) => None,
        () = tokio::time::sleep(HEARTBEAT_EVERY) => Some(Outgoing::Heartbeat),
    }
}

/// The next frame from a link's peer; an error when it has been silent
/// for [`LINK_SILENCE`].
async fn read_live<R: AsyncRead + Unpin>(input: &mut R) -> std::io::Result<(u8, Bytes)> {
    tokio::time::timeout(LINK_SILENCE, read_frame(input))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing heard for {} s", LINK_SILENCE.as_secs()),
            )
        })?
}

/// Refuses what could not be sent.
fn refuse(state: &LinkState, item: Outgoing, reason: &str) {
    match item {
        Outgoing::Enqueue { outcome, .. } => {
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
            outcome.settle(Err(reason.to_owned()));
        }
        Outgoing::Consume(request) => {
            let consumer = lock(&state.consumers).remove(&request.consumer);
            if let Some(consumer) = consumer {
                lose(state, consumer);
            }
        }
        Outgoing::Cancel(id) => {
            lock(&state.consumers).remove(&id);
        }
        Outgoing::Call { id, .. } => {
            lock(&state.calls).remove(&id);
        }
        Outgoing::SettleHome { .. } | Outgoing::Framed(_) | Outgoing::Heartbeat => {}
    }
}

/// The bytes of one outgoing item on connection `connection`, or `None`
/// when nothing is left to send for it.
fn outgoing_frame(
    state: &LinkState,
    waiting: &Waiting,
    next_id: &mut u64,
    connection: u64,
    item: Outgoing,
) -> Option<Bytes> {
    let encoded = match item {
        Outgoing::Enqueue {
            vhost,
            queue,
            message,
            outcome,
        } => {
            *next_id += 1;
            match encode_enqueue(*next_id, &vhost, &queue, &message) {
                Ok(bytes) => {
                    lock(waiting).insert(*next_id, outcome);
                    Ok(bytes)
                }
                Err(reason) => {
                    state.in_flight.fetch_sub(1, Ordering::AcqRel);
                    outcome.settle(Err(reason));
                    return None;
                }
            }
        }
        Outgoing::Consume(request) => {
            let mut consumers = lock(&state.consumers);
            match consumers.get_mut(&request.consumer) {
                Some(consumer) if consumer.sink.is_some() => consumer.connection = connection,
                _ => {
                    consumers.remove(&request.consumer);
                    return None;
                }
            }
            drop(consumers);
            request.encode()
        }
        Outgoing::Cancel(id) => {
            let mut fields = BytesMut::new();
            fields.put_u64(id);
            // Kept until the link changes: deliveries on their way go back.
            Ok(frame(CANCEL, &fields))
        }
        Outgoing::SettleHome {
            connection: over,
            vhost,
            queue,
            op,
            seqs,
        } => {
            if over != connection {
                return None;
            }
            encode_settle(&vhost, &queue, op, &seqs)
        }
        Outgoing::Call { id, frame } => {
            match lock(&state.calls).get_mut(&id) {
                Some((over, _)) => *over = connection,
                // Given up on already.
                None => return None,
            }
            Ok(frame)
        }
        Outgoing::Framed(frame) => Ok(frame),
        Outgoing::Heartbeat => Ok(frame(HEARTBEAT, &[])),
    };
    match encoded {
        Ok(bytes) => Some(bytes),
        Err(reason) => {
            tracing::warn!(%reason, "cannot encode a message link frame");
            None
        }
    }
}

/// Reads what the home sends over connection `connection`: answers to
/// messages and deliveries to consumers.
async fn read_from_home(
    mut reader: tokio::io::BufReader<sluice_tls::ReadHalf>,
    state: Arc<LinkState>,
    waiting: Waiting,
    requeue: mpsc::UnboundedSender<Outgoing>,
    connection: u64,
) {
    loop {
        let (kind, fields) = match read_live(&mut reader).await {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(%error, "message link closed");
                return;
            }
        };
        let understood = match kind {
            HEARTBEAT => Some(()),
            ANSWER => answered(&state, &waiting, fields),
            DELIVER => delivered(&state, &requeue, connection, fields),
            CANCELLED => ended_there(&state, fields, false),
            REFUSED => ended_there(&state, fields, true),
            GOT | PURGED | CONNECTED | SHARES | TAKEN => called_back(&state, connection, fields),
            _ => None,
        };
        if understood.is_none() {
            tracing::warn!(kind, "a damaged frame on a message link; closing it");
            return;
        }
    }
}

fn answered(state: &LinkState, waiting: &Waiting, mut fields: Bytes) -> Option<()> {
    let id = get_u64(&mut fields)?;
    let refused = get_u8(&mut fields)? != 0;
    if id & CALL_IDS != 0 {
        // A call the peer refused (a kind it does not know): its caller
        // stops waiting at once (the answer channel closes).
        lock(&state.calls).remove(&id);
        return Some(());
    }
    if let Some(outcome) = lock(waiting).remove(&id) {
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
        outcome.settle(if refused {
            Err(String::from_utf8_lossy(&fields).into_owned())
        } else {
            Ok(())
        });
    }
    Some(())
}

/// A delivery to a consumer of this node: to its channel with a sequence
/// number of this node's, or back to the queue when the consumer is gone.
fn delivered(
    state: &LinkState,
    requeue: &mpsc::UnboundedSender<Outgoing>,
    connection: u64,
    mut fields: Bytes,
) -> Option<()> {
    let consumer = get_u64(&mut fields)?;
    let home_seq = get_u64(&mut fields)?;
    let redelivered = get_u8(&mut fields)? != 0;
    let quorum = get_quorum_ref(&mut fields)?;
    let message = Message::decode(fields)?;
    let consumers = lock(&state.consumers);
    let Some(target) = consumers.get(&consumer) else {
        tracing::debug!(
            consumer,
            "a delivery for a consumer this node no longer has"
        );
        return Some(());
    };
    let back = |target: &LocalConsumer| {
        let _ = requeue.send(Outgoing::SettleHome {
            connection,
            vhost: target.vhost.clone(),
            queue: target.queue.clone(),
            op: OP_REQUEUE,
            seqs: vec![home_seq],
        });
    };
    let (Some(sink), Some(stand_in)) = (&target.sink, target.stand_in.upgrade()) else {
        tracing::debug!(consumer, queue = %target.queue, cancelled = target.sink.is_none(), "a delivery goes back: its consumer or stand-in is gone");
        back(target);
        return Some(());
    };
    let seq = state.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
    if !target.no_ack {
        let sent = Sent {
            over: connection,
            home_seq,
            quorum: quorum.map(|message| (message, Arc::clone(&stand_in))),
        };
        lock(&state.deliveries).insert(seq, sent);
    }
    // The home held the consumer to its prefetch; the channel's count
    // (and its global prefetch) sees the delivery too.
    target.credit.take();
    let sent = sink.send(ConsumerEvent::Deliver(Delivery {
        channel: target.channel,
        queue: stand_in,
        seq,
        consumer_tag: Arc::clone(&target.tag),
        message: Arc::new(message),
        redelivered,
        quorum,
    }));
    if sent.is_err() {
        lock(&state.deliveries).remove(&seq);
        back(target);
    }
    Some(())
}

/// The answer to a call: to the thread waiting for it.
fn called_back(state: &LinkState, connection: u64, mut fields: Bytes) -> Option<()> {
    let id = get_u64(&mut fields)?;
    if let Some((_, waiting)) = lock(&state.calls).remove(&id) {
        let _ = waiting.try_send((connection, fields));
    }
    Some(())
}

/// Waits for a call's answer without holding up an async worker.
fn wait_answer(
    answer: &std::sync::mpsc::Receiver<(u64, Bytes)>,
    timeout: Duration,
) -> Result<(u64, Bytes), MessagingError> {
    let waited = crate::wait_blocking(answer, timeout);
    // As RabbitMQ answers for a queue whose node is down: NOT_FOUND, a
    // channel error the client can recover from (the node may be back, or
    // a quorum queue led elsewhere, by the next try).
    waited.map_err(|error| {
        MessagingError::NotFound(format!(
            "the queue's node did not answer ({error}): it is down or inaccessible"
        ))
    })
}

/// The home ended a consumer: `CANCELLED` (its queue went or stopped
/// there) or, `refused`, `REFUSED` (an exclusive consumer there, say). A
/// refused one is cancelled at its client whatever the queue's type;
/// otherwise as [`lose`] has it.
fn ended_there(state: &LinkState, mut fields: Bytes, refused: bool) -> Option<()> {
    let consumer = get_u64(&mut fields)?;
    let reason = String::from_utf8_lossy(&fields).into_owned();
    let target = lock(&state.consumers).remove(&consumer);
    if let Some(mut target) = target {
        // A consumer cancelled here has no sink left: the answer to its
        // CANCEL, nothing to tell.
        if target.sink.is_some() {
            tracing::info!(queue = %target.queue, tag = %target.tag, %reason, refused, "the queue's node ended a consumer");
        }
        // Refused: no next leader would take it either.
        target.quorum &= !refused;
        lose(state, target);
    }
    Some(())
}

/// Resolves when `task` has finished (the peer closed the link).
async fn wait_finished(task: &tokio::task::JoinHandle<()>) {
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dial(node: &MetadataNode, home: i32) -> Result<LinkStream, String> {
    let addr = u64::try_from(home)
        .ok()
        .and_then(|id| node.address(id))
        .ok_or_else(|| format!("node {home} has no known address"))?;
    let connecting = async {
        let mut stream = crate::link::dial(&addr).await?;
        stream.write_all(&[PREFACE_MESSAGES]).await?;
        Ok::<LinkStream, std::io::Error>(stream)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(format!("cannot reach node {home} at {addr}: {error}")),
        Err(_) => Err(format!("cannot reach node {home} at {addr}: timed out")),
    }
}

// --- the home's side ----------------------------------------------------------

/// Serves the message links of peers until `stopping`.
pub async fn serve(
    broker: Arc<Broker>,
    mut streams: mpsc::Receiver<(LinkStream, SocketAddr)>,
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

/// Channel keys of consumers registered by peers: apart from the keys of
/// this node's own channels (which count up from 1).
static REMOTE_CHANNELS: AtomicU64 = AtomicU64::new(1 << 62);

/// A peer's consumer, registered on a queue of this node.
#[derive(Debug)]
struct HomeConsumer {
    id: u64,
    vhost: Arc<VirtualHost>,
    queue: Arc<Queue>,
    channel: u64,
    tag: Arc<str>,
    credit: Arc<Credit>,
    no_ack: bool,
}

/// A peer's consumers and their deliveries not settled yet.
#[derive(Debug)]
struct HomeState {
    /// Names the link as the holder of what it holds (never 0: this
    /// node's own clients).
    id: u64,
    /// By channel key.
    consumers: HashMap<u64, HomeConsumer>,
    /// Deliveries and gets not settled yet, by sequence number (every
    /// queue instance of this node numbers its deliveries in its own
    /// range).
    unsettled: HashMap<u64, Unsettled>,
}

/// A delivery (to a consumer, or a `basic.get`) the peer has not settled.
#[derive(Debug)]
struct Unsettled {
    /// The consumer's channel key (none for a get).
    channel: Option<u64>,
    vhost: Arc<VirtualHost>,
    queue: Arc<Queue>,
}

/// What a peer asked for, in its order, for the link's worker.
#[derive(Debug)]
enum Work {
    Enqueue(Bytes),
    Consume(Bytes),
    Cancel(Bytes),
    Settle(Bytes),
    Get(Bytes),
    Purge(Bytes),
    Connections(Bytes),
    ShareCounts(Bytes),
    Resettle(Bytes),
    Hold(Bytes),
    Release(Bytes),
}

/// One peer's link: its requests handled in order on one thread, the
/// acknowledgements of its messages waited for together on another (one
/// sync covers a burst), deliveries to its consumers sent as the queues
/// dispatch them.
async fn serve_link(broker: Arc<Broker>, stream: LinkStream, peer: SocketAddr) {
    let (reader, writer) = stream.split();
    let mut reader = tokio::io::BufReader::with_capacity(LINK_BUFFER, reader);
    let mut writer = tokio::io::BufWriter::with_capacity(LINK_BUFFER, writer);
    let (frames, mut frames_rx) = mpsc::unbounded_channel::<Bytes>();
    let (events, mut events_rx) = mpsc::unbounded_channel::<ConsumerEvent>();
    let (work, work_rx) = std::sync::mpsc::channel::<Work>();
    let (enqueued, enqueued_rx) = std::sync::mpsc::channel::<(u64, Result<Acks, String>)>();
    let state = Arc::new(Mutex::new(HomeState {
        id: REMOTE_CHANNELS.fetch_add(1, Ordering::Relaxed),
        consumers: HashMap::new(),
        unsettled: HashMap::new(),
    }));

    let worker = {
        let (broker, state, frames, events) = (
            Arc::clone(&broker),
            Arc::clone(&state),
            frames.clone(),
            events.clone(),
        );
        tokio::task::spawn_blocking(move || {
            for request in work_rx {
                let handled = match request {
                    Work::Enqueue(fields) => {
                        decode_enqueue(fields).map(|(id, vhost, queue, message)| {
                            let _ = enqueued.send((id, enqueue(&broker, &vhost, &queue, message)));
                        })
                    }
                    Work::Consume(fields) => ConsumeRequest::decode(fields)
                        .map(|request| consume(&broker, &state, &frames, &events, request)),
                    Work::Cancel(mut fields) => {
                        get_u64(&mut fields).map(|id| cancel_consumer(&state, &frames, id))
                    }
                    Work::Settle(fields) => decode_settle(fields)
                        .map(|(vhost, queue, op, seqs)| settle(&state, &vhost, &queue, op, &seqs)),
                    Work::Get(fields) => get_for_peer(&broker, &state, fields).map(|answer| {
                        let _ = frames.send(answer);
                    }),
                    Work::Purge(fields) => purge_for_peer(&broker, fields).map(|answer| {
                        let _ = frames.send(answer);
                    }),
                    Work::Connections(fields) => {
                        connections_for_peer(&broker, fields).map(|answer| {
                            let _ = frames.send(answer);
                        })
                    }
                    Work::ShareCounts(fields) => {
                        share_counts_for_peer(&broker, fields).map(|answer| {
                            let _ = frames.send(answer);
                        })
                    }
                    Work::Resettle(fields) => resettled(&broker, fields),
                    Work::Hold(fields) => hold_for_peer(&broker, &state, fields),
                    Work::Release(fields) => release_for_peer(&broker, fields),
                };
                if handled.is_none() {
                    tracing::warn!(%peer, "a damaged request on a message link");
                }
            }
            // The link is gone: its consumers go, what they held goes back,
            // and so does what quorum queues held for the peer's clients.
            drop_consumers(&state);
            let holder = lock(&state).id;
            for host in broker.vhosts().all() {
                host.release_held_for(holder);
            }
        })
    };
    {
        let frames = frames.clone();
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
                    let mut fields = BytesMut::new();
                    fields.put_u64(id);
                    match result.and_then(|_| synced.clone()) {
                        Ok(()) => fields.put_u8(0),
                        Err(reason) => {
                            fields.put_u8(1);
                            fields.put_slice(reason.as_bytes());
                        }
                    }
                    if frames.send(frame(ANSWER, &fields)).is_err() {
                        return;
                    }
                }
            }
        });
    }
    let delivering = {
        let (broker, state, frames) = (Arc::clone(&broker), Arc::clone(&state), frames.clone());
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                deliver(&broker, &state, &frames, event);
            }
        })
    };
    let writing = tokio::spawn(async move {
        loop {
            let bytes = tokio::select! {
                next = frames_rx.recv() => match next {
                    Some(bytes) => bytes,
                    None => return,
                },
                () = tokio::time::sleep(HEARTBEAT_EVERY) => frame(HEARTBEAT, &[]),
            };
            if write_all(&mut writer, &bytes).await.is_err() {
                return;
            }
            // Answers and deliveries queued already go out in the same
            // write.
            while let Ok(more) = frames_rx.try_recv() {
                if write_all(&mut writer, &more).await.is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
    });
    // Refusals of unknown calls, from the reading loop.
    let frames_out = frames.clone();
    drop(frames);
    drop(events);
    loop {
        match read_live(&mut reader).await {
            Ok((HEARTBEAT, _)) => {}
            Ok((kind, fields)) => {
                let request = match kind {
                    ENQUEUE => Work::Enqueue(fields),
                    CONSUME => Work::Consume(fields),
                    CANCEL => Work::Cancel(fields),
                    SETTLE => Work::Settle(fields),
                    GET => Work::Get(fields),
                    PURGE => Work::Purge(fields),
                    CONNECTIONS => Work::Connections(fields),
                    SHARE_COUNTS => Work::ShareCounts(fields),
                    RESETTLE => Work::Resettle(fields),
                    HOLD => Work::Hold(fields),
                    RELEASE => Work::Release(fields),
                    TAKEOVER => {
                        // Answered once the holder let its session go (it
                        // may take seconds): out of the worker's way.
                        if take_over_for_peer(&broker, fields, &frames_out).is_none() {
                            tracing::warn!(%peer, "a damaged request on a message link");
                        }
                        continue;
                    }
                    other => {
                        // A newer peer's call (every kind from CONNECTIONS
                        // on starts with its call id): refused, the link
                        // stays up for what both sides know.
                        tracing::warn!(%peer, kind = other, "an unknown request on a message link; refused");
                        if let Some(id) = get_u64(&mut fields.clone()) {
                            let mut answer = BytesMut::new();
                            answer.put_u64(id);
                            answer.put_u8(1);
                            answer.put_slice(format!("unknown request kind {other}").as_bytes());
                            let _ = frames_out.send(frame(ANSWER, &answer));
                        }
                        continue;
                    }
                };
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
    drop(frames_out);
    drop(work);
    let _ = worker.await;
    // The consumers are off their queues: the deliveries still on their
    // way find none and go back (the channel ends once the queues have
    // dropped their senders).
    if tokio::time::timeout(Duration::from_secs(5), delivering)
        .await
        .is_err()
    {
        tracing::warn!(%peer, "deliveries of a closed message link still pending after 5 s");
    }
    writing.abort();
}

/// The fields of `RESETTLE`, `HOLD` and `RELEASE` after the call id,
/// virtual host, queue (and `RELEASE`'s op): `[count:4]([message:8][epoch:4])*`.
fn get_refs(fields: &mut Bytes) -> Option<Vec<MessageRef>> {
    let count = get_count(fields, 12)?;
    Some(
        (0..count)
            .map(|_| MessageRef {
                id: fields.get_u64(),
                epoch: fields.get_i32(),
            })
            .collect(),
    )
}

/// Settlements a peer's consumers made through a quorum queue's former
/// leader, for this node as its new one.
fn resettled(broker: &Broker, mut fields: Bytes) -> Option<()> {
    let _id = get_u64(&mut fields)?;
    let vhost = get_short(&mut fields)?;
    let queue = get_short(&mut fields)?;
    let refs = get_refs(&mut fields)?;
    if let Some(host) = broker.vhosts().get(&vhost) {
        host.settled_elsewhere(&queue, &refs);
    }
    Some(())
}

/// A peer's clients hold these messages of a quorum queue, delivered by
/// a former leader (all they hold of it): held for them, as this link's,
/// by each instance this node runs of the queue, until the peer says
/// otherwise or this link fails.
fn hold_for_peer(broker: &Broker, state: &Mutex<HomeState>, mut fields: Bytes) -> Option<()> {
    let _id = get_u64(&mut fields)?;
    let vhost = get_short(&mut fields)?;
    let queue = get_short(&mut fields)?;
    let refs = get_refs(&mut fields)?;
    let holder = lock(state).id;
    if let Some(host) = broker.vhosts().get(&vhost) {
        host.hold_for_peer(&queue, holder, refs);
    }
    Some(())
}

/// A peer's clients gave back messages of a quorum queue a former leader
/// delivered to them: requeued, or dead, where the queue runs now.
fn release_for_peer(broker: &Broker, mut fields: Bytes) -> Option<()> {
    let _id = get_u64(&mut fields)?;
    let vhost = get_short(&mut fields)?;
    let queue = get_short(&mut fields)?;
    let op = get_u8(&mut fields)?;
    let refs = get_refs(&mut fields)?;
    if let Some(host) = broker.vhosts().get(&vhost) {
        host.release_quorum(&queue, op == OP_REQUEUE, &refs);
    }
    Some(())
}

/// Enqueues one message on this node: the acknowledgement to wait for,
/// or why it was refused.
fn enqueue(broker: &Broker, vhost: &str, queue: &str, message: Message) -> Result<Acks, String> {
    let host = broker
        .vhosts()
        .get(vhost)
        .ok_or_else(|| format!("no vhost '{vhost}'"))?;
    let outcome = host
        .enqueue_forwarded(queue, message)
        .map_err(|error| error.to_string())?;
    if outcome.rejected {
        return Err(format!(
            "queue '{queue}' in vhost '{vhost}' refused the message (x-overflow reject-publish)"
        ));
    }
    Ok(outcome.acks)
}

fn send_cancelled(frames: &mpsc::UnboundedSender<Bytes>, id: u64, reason: &str) {
    send_ended(frames, CANCELLED, id, reason);
}

/// Tells the peer its consumer `id` ended here (`CANCELLED`: the queue
/// went or stopped here; `REFUSED`: the queue refused it).
fn send_ended(frames: &mpsc::UnboundedSender<Bytes>, kind: u8, id: u64, reason: &str) {
    let mut fields = BytesMut::new();
    fields.put_u64(id);
    fields.put_slice(reason.as_bytes());
    let _ = frames.send(frame(kind, &fields));
}

/// Registers a peer's consumer on a queue of this node.
fn consume(
    broker: &Broker,
    state: &Mutex<HomeState>,
    frames: &mpsc::UnboundedSender<Bytes>,
    events: &mpsc::UnboundedSender<ConsumerEvent>,
    request: ConsumeRequest,
) {
    let found = broker
        .vhosts()
        .get(&request.vhost)
        .and_then(|vhost| vhost.queue(&request.queue).map(|queue| (vhost, queue)));
    let Some((vhost, queue)) = found.filter(|(_, queue)| queue.remote_node().is_none()) else {
        send_cancelled(
            frames,
            request.consumer,
            &format!(
                "no queue '{}' in vhost '{}' on this node",
                request.queue, request.vhost
            ),
        );
        return;
    };
    let channel = REMOTE_CHANNELS.fetch_add(1, Ordering::Relaxed);
    let tag: Arc<str> = Arc::from(request.tag.as_str());
    let credit = Credit::new(request.prefetch, None);
    lock(state).consumers.insert(
        channel,
        HomeConsumer {
            id: request.consumer,
            vhost: Arc::clone(&vhost),
            queue: Arc::clone(&queue),
            channel,
            tag: Arc::clone(&tag),
            credit: Arc::clone(&credit),
            no_ack: request.no_ack,
        },
    );
    let spec = ConsumerSpec {
        tag,
        channel,
        // Remote queues are never exclusive to a connection.
        connection: PEER_CONSUMER,
        no_ack: request.no_ack,
        exclusive: request.exclusive,
        priority: request.priority,
        credit,
        sink: events.clone(),
        stream_start: None,
    };
    match queue.add_consumer(spec) {
        Ok(dead) => vhost.dead_letter(dead),
        Err(error) => {
            lock(state).consumers.remove(&channel);
            // Gone (deleted, or stopped here as a quorum queue's leader
            // moved): the peer may wait for its next leader. Anything
            // else is the queue's refusal.
            let kind = match error {
                MessagingError::NotFound(_) => CANCELLED,
                _ => REFUSED,
            };
            send_ended(frames, kind, request.consumer, &error.to_string());
        }
    }
}

/// A peer cancelled its consumer `id`: taken off its queue, and the
/// peer told (it then forgets the consumer; deliveries sent before stay
/// its to settle).
fn cancel_consumer(state: &Mutex<HomeState>, frames: &mpsc::UnboundedSender<Bytes>, id: u64) {
    let removed = {
        let mut held = lock(state);
        let channel = held
            .consumers
            .iter()
            .find(|(_, c)| c.id == id)
            .map(|(channel, _)| *channel);
        channel.and_then(|channel| held.consumers.remove(&channel))
    };
    if let Some(consumer) = removed {
        consumer.remove();
    }
    send_cancelled(frames, id, "cancelled");
}

impl HomeConsumer {
    /// Takes the consumer off its queue, which goes if it is auto-delete
    /// and this was its last consumer.
    fn remove(&self) {
        // A quorum queue rebuilt here since may hold it now.
        let (last, dead) = self
            .vhost
            .remove_consumer(&self.queue, self.channel, &self.tag);
        self.vhost.dead_letter(dead);
        if last && let Err(error) = self.vhost.auto_delete_queue(&self.queue) {
            tracing::warn!(queue = self.queue.name(), %error, "cannot auto-delete a queue");
        }
    }
}

/// A peer settled deliveries of one of this node's queues: only those
/// this link delivered and has not seen settled, on the very queue that
/// delivered them (a queue deleted and declared again since numbers its
/// messages anew).
fn settle(state: &Mutex<HomeState>, vhost: &str, queue: &str, op: u8, seqs: &[u64]) {
    let (held, credits): (Vec<(u64, Unsettled)>, Vec<Arc<Credit>>) = {
        let mut held = lock(state);
        let found: Vec<(u64, Unsettled)> = seqs
            .iter()
            .filter_map(|seq| {
                let named = held.unsettled.get(seq).is_some_and(|unsettled| {
                    unsettled.queue.name() == queue && unsettled.queue.vhost() == vhost
                });
                named
                    .then(|| held.unsettled.remove(seq))
                    .flatten()
                    .map(|unsettled| (*seq, unsettled))
            })
            .collect();
        // The consumers' credit comes back as their deliveries are settled.
        let credits = found
            .iter()
            .filter_map(|(_, unsettled)| unsettled.channel)
            .filter_map(|channel| held.consumers.get(&channel).map(|c| Arc::clone(&c.credit)))
            .collect();
        (found, credits)
    };
    let Some((_, first)) = held.first() else {
        return;
    };
    let (host, target) = (Arc::clone(&first.vhost), Arc::clone(&first.queue));
    let seqs: Vec<u64> = held
        .iter()
        .filter(|(_, unsettled)| Arc::ptr_eq(&unsettled.queue, &target))
        .map(|(seq, _)| *seq)
        .collect();
    let settled = match op {
        OP_ACK => target
            .ack(&seqs)
            .map(|()| sluice_core::messaging::DeadLetters::default()),
        OP_REJECT => target.reject(&seqs, false),
        _ => target.reject(&seqs, true),
    };
    for credit in credits {
        credit.release(1);
    }
    match settled {
        Ok(dead) => {
            host.dead_letter(dead);
            host.dead_letter(target.dispatch());
        }
        Err(error) => tracing::warn!(%queue, %error, "cannot settle deliveries for another node"),
    }
}

/// Puts a delivery no consumer took back on its queue; what dies there
/// goes to its dead-letter exchange.
fn give_back(broker: &Broker, queue: &Arc<Queue>, seq: u64) {
    match queue.requeue(&[seq]) {
        Ok(dead) => {
            if let Some(host) = broker.vhosts().get(queue.vhost()) {
                host.dead_letter(dead);
            }
        }
        Err(error) => tracing::warn!(queue = queue.name(), %error, "cannot requeue a delivery"),
    }
}

/// A delivery of one of this node's queues to a peer's consumer: over the
/// link, or back to the queue when the consumer is gone.
fn deliver(
    broker: &Broker,
    state: &Mutex<HomeState>,
    frames: &mpsc::UnboundedSender<Bytes>,
    event: ConsumerEvent,
) {
    let delivery = match event {
        ConsumerEvent::Deliver(delivery) => delivery,
        ConsumerEvent::Cancelled { channel, .. } => {
            if let Some(consumer) = lock(state).consumers.remove(&channel) {
                send_cancelled(
                    frames,
                    consumer.id,
                    "the queue stopped on this node (deleted, or led elsewhere now)",
                );
            }
            return;
        }
    };
    let mut held = lock(state);
    let Some(consumer) = held.consumers.get(&delivery.channel) else {
        drop(held);
        give_back(broker, &delivery.queue, delivery.seq);
        return;
    };
    let (id, no_ack, credit) = (consumer.id, consumer.no_ack, Arc::clone(&consumer.credit));
    if !no_ack {
        let vhost = Arc::clone(&consumer.vhost);
        held.unsettled.insert(
            delivery.seq,
            Unsettled {
                channel: Some(delivery.channel),
                vhost,
                queue: Arc::clone(&delivery.queue),
            },
        );
    }
    drop(held);
    let capacity = 30 + delivery.message.encoded_len_hint() + 64;
    let encoded = frame_with(DELIVER, capacity, |fields| {
        fields.put_u64(id);
        fields.put_u64(delivery.seq);
        fields.put_u8(u8::from(delivery.redelivered));
        put_quorum_ref(fields, delivery.quorum);
        delivery.message.encode_into(fields)
    });
    let Ok(encoded) = encoded else {
        give_back(broker, &delivery.queue, delivery.seq);
        return;
    };
    let _ = frames.send(encoded);
    if no_ack {
        // A no-ack consumer's window counts deliveries not yet sent.
        credit.release(1);
        let dead = delivery.queue.dispatch();
        if let Some(host) = broker.vhosts().get(delivery.queue.vhost()) {
            host.dead_letter(dead);
        }
    }
}

/// A queue of this node and its virtual host.
type Target = (Arc<VirtualHost>, Arc<Queue>);

/// A call's id and target: virtual host and queue of this node.
fn call_target(broker: &Broker, fields: &mut Bytes) -> Option<(u64, Result<Target, String>)> {
    let id = get_u64(fields)?;
    let vhost = get_short(fields)?;
    let queue = get_short(fields)?;
    let found = broker
        .vhosts()
        .get(&vhost)
        .and_then(|host| host.queue(&queue).map(|target| (host, target)))
        .filter(|(_, target)| target.remote_node().is_none())
        .ok_or_else(|| format!("no queue '{queue}' in vhost '{vhost}' on this node"));
    Some((id, found))
}

fn refusal(kind: u8, id: u64, reason: &str) -> Bytes {
    let mut fields = BytesMut::new();
    fields.put_u64(id);
    fields.put_u8(2);
    fields.put_slice(reason.as_bytes());
    frame(kind, &fields)
}

/// A peer's `basic.get` of a queue of this node: the answer.
fn get_for_peer(broker: &Broker, state: &Mutex<HomeState>, mut fields: Bytes) -> Option<Bytes> {
    let (id, found) = call_target(broker, &mut fields)?;
    let no_ack = get_u8(&mut fields)? != 0;
    let (host, target) = match found {
        Ok(found) => found,
        Err(reason) => return Some(refusal(GOT, id, &reason)),
    };
    let (taken, dead) = match target.get(no_ack) {
        Ok(taken) => taken,
        Err(error) => return Some(refusal(GOT, id, &error.to_string())),
    };
    host.dead_letter(dead);
    let mut answer = BytesMut::new();
    answer.put_u64(id);
    match taken {
        None => answer.put_u8(0),
        Some((seq, message, redelivered, remaining)) => {
            let Ok(encoded) = message.encode() else {
                let _ = target.requeue(&[seq]);
                return Some(refusal(GOT, id, "cannot encode the message"));
            };
            if !no_ack {
                lock(state).unsettled.insert(
                    seq,
                    Unsettled {
                        channel: None,
                        vhost: Arc::clone(&host),
                        queue: Arc::clone(&target),
                    },
                );
            }
            answer.put_u8(1);
            answer.put_u64(seq);
            answer.put_u8(u8::from(redelivered));
            answer.put_u32(u32::try_from(remaining).unwrap_or(u32::MAX));
            put_quorum_ref(&mut answer, target.quorum_ref(seq));
            answer.put_slice(&encoded);
        }
    }
    Some(frame(GOT, &answer))
}

/// A peer asks how many client connections this node has open: the
/// answer, `[id:8][kafka:8][amqp:8]`.
/// A peer's question for share groups' records on this node (the
/// partitions it leads): the answer.
fn share_counts_for_peer(broker: &Broker, mut fields: Bytes) -> Option<Bytes> {
    let id = get_u64(&mut fields)?;
    let groups = (fields.remaining() >= 4).then(|| fields.get_u32())?;
    let mut items = BytesMut::new();
    let mut count = 0u32;
    for index in 0..groups {
        let length = (fields.remaining() >= 2).then(|| usize::from(fields.get_u16()))?;
        if fields.remaining() < length {
            return None;
        }
        let group = String::from_utf8(fields.split_to(length).to_vec()).ok()?;
        for (topic, partition, counted) in broker.share_groups().counts(&group) {
            items.put_u32(index);
            items.put_slice(&topic);
            items.put_i32(partition);
            items.put_i64(counted.start);
            items.put_u64(counted.available);
            items.put_u64(counted.acquired);
            items.put_u64(counted.archived);
            count += 1;
        }
    }
    let mut answer = BytesMut::new();
    answer.put_u64(id);
    answer.put_u32(count);
    answer.put_slice(&items);
    Some(frame(SHARES, &answer))
}

/// `TAKEOVER [id:8][vhost][length:2][client id][clean start:1][since ms:8][node:4]`.
fn takeover_frame(id: u64, takeover: &sluice_core::Takeover) -> Result<Bytes, String> {
    let mut fields = BytesMut::new();
    fields.put_u64(id);
    put_short(&mut fields, &takeover.vhost)?;
    let client_id = takeover.client_id.as_bytes();
    fields.put_u16(u16::try_from(client_id.len()).map_err(|e| e.to_string())?);
    fields.put_slice(client_id);
    fields.put_u8(u8::from(takeover.clean_start));
    fields.put_i64(takeover.claim.since_ms);
    fields.put_i32(takeover.claim.node);
    Ok(frame(TAKEOVER, &fields))
}

/// The fields of `TAKEOVER` after its call id.
fn decode_takeover(mut fields: Bytes) -> Option<sluice_core::Takeover> {
    let vhost = get_short(&mut fields)?;
    let len = (fields.remaining() >= 2).then(|| usize::from(fields.get_u16()))?;
    if fields.remaining() < len + 1 + 8 + 4 {
        return None;
    }
    let client_id = String::from_utf8(fields.split_to(len).to_vec()).ok()?;
    Some(sluice_core::Takeover {
        vhost,
        client_id,
        clean_start: fields.get_u8() != 0,
        claim: sluice_core::Claim {
            since_ms: fields.get_i64(),
            node: fields.get_i32(),
        },
    })
}

/// A peer's client took an MQTT client id: this node's holder of it
/// ends; `TAKEN` goes back once it let its session go. A damaged request
/// is refused (`ANSWER [id][1]`) so its caller stops waiting; `None` when
/// not even its call id could be read.
fn take_over_for_peer(
    broker: &Broker,
    mut fields: Bytes,
    frames: &mpsc::UnboundedSender<Bytes>,
) -> Option<()> {
    let id = get_u64(&mut fields)?;
    let Some(takeover) = decode_takeover(fields) else {
        let mut answer = BytesMut::new();
        answer.put_u64(id);
        answer.put_u8(1);
        answer.put_slice(b"a damaged takeover");
        let _ = frames.send(frame(ANSWER, &answer));
        return Some(());
    };
    let released = broker.connections().take_over_here(&takeover);
    let frames = frames.clone();
    tokio::spawn(async move {
        released.await;
        let _ = frames.send(frame(TAKEN, &id.to_be_bytes()));
    });
    Some(())
}

/// A peer's count of this node's client connections: the totals, then,
/// when it named a virtual host and a user, what the AMQP limits count
/// of them.
fn connections_for_peer(broker: &Broker, mut fields: Bytes) -> Option<Bytes> {
    let id = get_u64(&mut fields)?;
    let (kafka, amqp) = broker.connections().open_counts();
    let mut answer = BytesMut::new();
    answer.put_u64(id);
    answer.put_u64(kafka);
    answer.put_u64(amqp);
    if fields.has_remaining() {
        let vhost = get_short(&mut fields)?;
        let user = get_short(&mut fields)?;
        let counts = broker.connections().amqp_counts(&vhost, &user);
        answer.put_u64(counts.vhost_connections);
        answer.put_u64(counts.user_connections);
        answer.put_u64(counts.user_channels);
    }
    Some(frame(CONNECTED, &answer))
}

/// A peer's `queue.purge` of a queue of this node: the answer.
fn purge_for_peer(broker: &Broker, mut fields: Bytes) -> Option<Bytes> {
    let (id, found) = call_target(broker, &mut fields)?;
    let purged = found.and_then(|(_, target)| target.purge().map_err(|error| error.to_string()));
    Some(match purged {
        Ok(count) => {
            let mut answer = BytesMut::new();
            answer.put_u64(id);
            answer.put_u8(0);
            answer.put_u32(u32::try_from(count).unwrap_or(u32::MAX));
            frame(PURGED, &answer)
        }
        Err(reason) => refusal(PURGED, id, &reason),
    })
}

/// The link is gone: its consumers are removed and their unsettled
/// deliveries go back to their queues (redelivered).
fn drop_consumers(state: &Mutex<HomeState>) {
    let (consumers, unsettled) = {
        let mut held = lock(state);
        (
            std::mem::take(&mut held.consumers),
            std::mem::take(&mut held.unsettled),
        )
    };
    for consumer in consumers.values() {
        consumer.remove();
    }
    // Grouped by the queue that delivered them.
    let mut by_queue: Vec<(Unsettled, Vec<u64>)> = Vec::new();
    for (seq, unsettled) in unsettled {
        match by_queue
            .iter_mut()
            .find(|(held, _)| Arc::ptr_eq(&held.queue, &unsettled.queue))
        {
            Some((_, seqs)) => seqs.push(seq),
            None => by_queue.push((unsettled, vec![seq])),
        }
    }
    for (held, seqs) in by_queue {
        match held.queue.requeue_for_closed_link(&seqs) {
            Ok(dead) => held.vhost.dead_letter(dead),
            Err(error) => {
                tracing::warn!(queue = held.queue.name(), %error, "cannot requeue deliveries of a closed link")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HOLD, RELEASE and RESETTLE carry their refs as the serving side
    /// reads them.
    #[test]
    fn held_and_released_refs_round_trip() {
        let refs = [
            MessageRef { id: 7, epoch: 3 },
            MessageRef {
                id: 1 << 40,
                epoch: -1,
            },
        ];
        for (kind, op) in [(HOLD, None), (RELEASE, Some(OP_REQUEUE)), (RESETTLE, None)] {
            let mut framed = refs_frame(kind, "/", "q", op, &refs).expect("frame");
            assert_eq!(framed.get_u32() as usize, framed.remaining());
            assert_eq!(framed.get_u8(), kind);
            assert_eq!(get_u64(&mut framed), Some(0));
            assert_eq!(get_short(&mut framed).as_deref(), Some("/"));
            assert_eq!(get_short(&mut framed).as_deref(), Some("q"));
            if op.is_some() {
                assert_eq!(get_u8(&mut framed), op);
            }
            assert_eq!(get_refs(&mut framed), Some(refs.to_vec()));
        }
    }

    /// A request kind this node does not know (a newer peer's call) is
    /// refused by its call id, and the link goes on serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_call_is_refused_and_the_link_stays_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Arc::new(
            Broker::open(sluice_core::BrokerOptions::new(dir.path())).expect("open broker"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let serving = tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.expect("accept");
            serve_link(broker, LinkStream::Plain(stream), peer).await;
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&frame(99, &5u64.to_be_bytes()))
            .await
            .expect("send");
        let (kind, mut fields) = read_frame(&mut stream).await.expect("an answer");
        assert_eq!((kind, fields.get_u64(), fields.get_u8()), (ANSWER, 5, 1));
        assert_eq!(&fields[..], b"unknown request kind 99");
        stream
            .write_all(&frame(CONNECTIONS, &6u64.to_be_bytes()))
            .await
            .expect("send");
        let (kind, mut fields) = read_frame(&mut stream).await.expect("an answer");
        assert_eq!((kind, fields.get_u64()), (CONNECTED, 6));
        drop(stream);
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the link ends when its peer goes")
            .expect("served");
    }

    /// Records the takeovers asked of it; each is released when the test
    /// says so.
    struct Recorder {
        asked: Mutex<Vec<sluice_core::Takeover>>,
        release: watch::Receiver<bool>,
    }

    impl sluice_core::SessionTakeover for Recorder {
        fn take_over(
            &self,
            takeover: &sluice_core::Takeover,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
            lock(&self.asked).push(takeover.clone());
            let mut release = self.release.clone();
            Box::pin(async move {
                let _ = release.wait_for(|go| *go).await;
            })
        }
    }

    /// `TAKEOVER` reaches the node's session takeover with its fields,
    /// and `TAKEN` answers only once the holder let the session go,
    /// while the link serves other calls meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_takeover_is_answered_once_the_holder_let_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Arc::new(
            Broker::open(sluice_core::BrokerOptions::new(dir.path())).expect("open broker"),
        );
        let (go, release) = watch::channel(false);
        let recorder = Arc::new(Recorder {
            asked: Mutex::new(Vec::new()),
            release,
        });
        broker.connections().set_session_takeover(recorder.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.expect("accept");
            serve_link(broker, LinkStream::Plain(stream), peer).await;
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let takeover = sluice_core::Takeover {
            vhost: "/".to_owned(),
            client_id: "c".repeat(300),
            clean_start: true,
            claim: sluice_core::Claim {
                since_ms: 1_700_000_000_123,
                node: 3,
            },
        };
        let request = takeover_frame(CALL_IDS | 4, &takeover).expect("frame");
        stream.write_all(&request).await.expect("send");
        stream
            .write_all(&frame(CONNECTIONS, &6u64.to_be_bytes()))
            .await
            .expect("send");
        let (kind, mut fields) = read_frame(&mut stream).await.expect("an answer");
        assert_eq!(
            (kind, fields.get_u64()),
            (CONNECTED, 6),
            "the link answers other calls while a takeover waits"
        );
        assert_eq!(*lock(&recorder.asked), vec![takeover]);
        go.send_replace(true);
        let (kind, mut fields) = read_frame(&mut stream).await.expect("an answer");
        assert_eq!((kind, fields.get_u64()), (TAKEN, CALL_IDS | 4));
        // A damaged request is refused by its call id, the link goes on.
        stream
            .write_all(&frame(TAKEOVER, &7u64.to_be_bytes()))
            .await
            .expect("send");
        let (kind, mut fields) = read_frame(&mut stream).await.expect("an answer");
        assert_eq!((kind, fields.get_u64(), fields.get_u8()), (ANSWER, 7, 1));
        stream
            .write_all(&frame(CONNECTIONS, &8u64.to_be_bytes()))
            .await
            .expect("send");
        let (kind, mut fields) = read_frame(&mut stream).await.expect("an answer");
        assert_eq!((kind, fields.get_u64()), (CONNECTED, 8));
    }

    #[test]
    fn frames_keep_their_fields() {
        let message = Message {
            exchange: "orders".into(),
            routing_key: "eu.paid".into(),
            properties: amq_protocol::protocol::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id("m-1".into()),
            body: Bytes::from_static(b"body"),
        };
        let mut enqueue = encode_enqueue(7, "/", "q", &message).expect("encode");
        enqueue.advance(4);
        assert_eq!(enqueue.get_u8(), ENQUEUE);
        let (id, vhost, queue, decoded) = decode_enqueue(enqueue).expect("decode");
        assert_eq!((id, vhost.as_str(), queue.as_str()), (7, "/", "q"));
        assert_eq!(decoded, message);
        assert!(decode_enqueue(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 1, 5, b'a'])).is_none());

        let request = ConsumeRequest {
            consumer: 3,
            vhost: "/".into(),
            queue: "q".into(),
            tag: "ctag".into(),
            no_ack: false,
            exclusive: true,
            priority: -2,
            prefetch: 10,
        };
        let mut consume = request.encode().expect("encode");
        consume.advance(5);
        assert_eq!(ConsumeRequest::decode(consume), Some(request));

        let mut settle = encode_settle("/", "q", OP_REQUEUE, &[4, 9]).expect("encode");
        settle.advance(5);
        assert_eq!(
            decode_settle(settle),
            Some(("/".into(), "q".into(), OP_REQUEUE, vec![4, 9]))
        );
    }
}
