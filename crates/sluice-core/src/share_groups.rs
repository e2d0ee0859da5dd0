//! Share groups (KIP-932): queues over a topic. Many members share a
//! partition; each record is acquired by one member at a time under a
//! lock, and acknowledged one by one.
//!
//! ```text
//!               fetch (delivery count + 1, lock starts)
//!   AVAILABLE ───────────────────────────────────────▶ ACQUIRED
//!       ▲   release, lock expiry (below the limit)         │ accept ──▶ ACKNOWLEDGED
//!       └──────────────────────────────────────────────────┤ reject, gap ──▶ ARCHIVED
//!                    release, expiry at the delivery limit └──────────────▶ ARCHIVED
//! ```
//!
//! Per (group, topic, partition) the state keeps the share-partition start
//! offset (SPSO: everything below it is done), the next offset never
//! acquired, and a record state for each offset in between. Membership
//! (ShareGroupHeartbeat) gives every member every partition of the topics
//! it subscribes to: records, not partitions, are what members share.
//! Share sessions (ShareFetch, ShareAcknowledge) are kept per member.
//!
//! The state is kept in memory on the partition's leader and stored
//! through the offsets log (`share_store.rs`) after every change, loaded
//! again by a new leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::consumer_groups::{Assignment, TopicCatalog, TopicId};
use crate::group_config::GroupConfigs;

/// Where a share partition starts the first time a member fetches it
/// (`share.auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareReset {
    Earliest,
    Latest,
}

/// Share group settings, as Kafka's broker configuration names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSettings {
    /// How long a fetched record stays acquired
    /// (`group.share.record.lock.duration.ms`).
    pub lock_duration: Duration,
    /// Deliveries before a record is archived
    /// (`group.share.delivery.count.limit`).
    pub delivery_limit: u16,
    /// Most records in flight per share partition
    /// (`group.share.partition.max.record.locks`).
    pub max_record_locks: usize,
    /// A member not heard from for this long leaves
    /// (`group.share.session.timeout.ms`).
    pub session_timeout: Duration,
    /// (`group.share.heartbeat.interval.ms`).
    pub heartbeat_interval: Duration,
    pub auto_offset_reset: ShareReset,
}

impl Default for ShareSettings {
    /// Kafka's defaults: 30 s, 5, 2000, 45 s, 5 s, latest.
    fn default() -> Self {
        ShareSettings {
            lock_duration: Duration::from_secs(30),
            delivery_limit: 5,
            max_record_locks: 2000,
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(5),
            auto_offset_reset: ShareReset::Latest,
        }
    }
}

/// Why a share request was refused; front-ends map these to codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("the member epoch is fenced: rejoin")]
    FencedMemberEpoch,
    #[error("group {0} is not a share group")]
    NotShareGroup(String),
    #[error("no share session for this member")]
    SessionNotFound,
    #[error("the share session epoch is not the expected one")]
    InvalidSessionEpoch,
    #[error("a record acknowledged is not acquired by this member")]
    InvalidRecordState,
}

/// How a member acknowledges a record (the wire's numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckType {
    /// An offset with no record (a control record, a compacted one).
    Gap,
    Accept,
    Release,
    Reject,
}

impl AckType {
    pub fn from_wire(value: i8) -> Option<AckType> {
        match value {
            0 => Some(AckType::Gap),
            1 => Some(AckType::Accept),
            2 => Some(AckType::Release),
            3 => Some(AckType::Reject),
            _ => None,
        }
    }
}

/// One range of acknowledged offsets, each with its type (one type for
/// all, or one per offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckBatch {
    pub first: i64,
    pub last: i64,
    pub types: Vec<AckType>,
}

impl AckBatch {
    fn type_at(&self, offset: i64) -> Option<AckType> {
        match self.types.as_slice() {
            [one] => Some(*one),
            many => usize::try_from(offset - self.first)
                .ok()
                .and_then(|i| many.get(i).copied()),
        }
    }
}

/// Acquired offsets `first..=last`, delivered `delivery_count` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    pub first: i64,
    pub last: i64,
    pub delivery_count: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RecordState {
    Available,
    Acquired { member: String, deadline: Instant },
    Acknowledged,
    Archived,
}

#[derive(Debug, Clone)]
struct InFlight {
    state: RecordState,
    deliveries: u16,
}

/// Why a record was archived with its data (a gap has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// A member rejected it.
    Rejected,
    /// Released or expired at the delivery limit.
    DeliveryLimit,
}

/// A record archived for a reason worth dead-lettering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter {
    pub offset: i64,
    pub reason: DeadReason,
    pub deliveries: u16,
}

/// Counts of a share partition's records, for the admin API and UI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareCounts {
    pub start: i64,
    pub available: u64,
    pub acquired: u64,
    pub archived: u64,
}

/// A share partition's records counted on a node for a question about
/// several groups: (the group's index in the question, topic, partition,
/// counts).
pub type CountedShares = (usize, TopicId, i32, ShareCounts);

/// How long a share partition's state waits to be stored for dead letters
/// that cannot be published (a missing exchange, say): after that it is
/// stored all the same, so that acknowledgements stay durable, and a crash
/// may then lose the letters still waiting.
pub const DEAD_LETTER_HOLD: Duration = Duration::from_secs(10);
/// Between two tries at publishing a state's dead letters that failed.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// Most in-flight records a stored state may hold: more than any
/// `group.share.partition.max.record.locks` allows, so only a state not
/// written by this broker is refused.
const MAX_RESTORED: i64 = 100_000;

/// One share partition's state.
#[derive(Debug)]
pub struct SharePartition {
    /// The share-partition start offset: everything below is done.
    start: i64,
    /// The first offset never acquired.
    next: i64,
    in_flight: BTreeMap<i64, InFlight>,
    /// Records archived since the partition was loaded.
    archived: u64,
    /// Changed since it was last stored.
    dirty: bool,
    /// Records archived since last taken, to be dead-lettered.
    dead: Vec<DeadLetter>,
    /// When publishing this state's dead letters first failed: the state
    /// waits for them for [`DEAD_LETTER_HOLD`] at most.
    dead_failing_since: Option<Instant>,
    /// No publishing of its dead letters is tried again before this.
    dead_retry_at: Option<Instant>,
    /// The partition's leader epoch when this state was loaded: a node
    /// that leads the partition again loads it afresh.
    leader_epoch: i32,
}

impl SharePartition {
    pub fn new(start: i64) -> SharePartition {
        SharePartition {
            start,
            next: start,
            in_flight: BTreeMap::new(),
            archived: 0,
            dirty: true,
            dead: Vec::new(),
            dead_failing_since: None,
            dead_retry_at: None,
            leader_epoch: -1,
        }
    }

    /// The state as stored (the offsets log keeps it as a committed
    /// offset, the start, with this text as its metadata): the topic's id
    /// (a topic created again under the name starts anew), the next offset
    /// and runs of equal records, `first-last:state:deliveries`, state `a`
    /// (available; acquired records are stored as available), `k`
    /// (acknowledged) or `x` (archived).
    pub fn snapshot(&self, topic: &TopicId) -> (i64, String) {
        let id: String = topic.iter().map(|b| format!("{b:02x}")).collect();
        let mut text = format!("v2 {id} {}", self.next);
        let mut run: Option<(i64, i64, char, u16)> = None;
        let flush = |text: &mut String, run: (i64, i64, char, u16)| {
            text.push_str(&format!(" {}-{}:{}:{}", run.0, run.1, run.2, run.3));
        };
        for (offset, record) in &self.in_flight {
            let state = match record.state {
                RecordState::Available | RecordState::Acquired { .. } => 'a',
                RecordState::Acknowledged => 'k',
                RecordState::Archived => 'x',
            };
            match &mut run {
                Some(r) if r.1 + 1 == *offset && r.2 == state && r.3 == record.deliveries => {
                    r.1 = *offset;
                }
                _ => {
                    if let Some(done) = run.take() {
                        flush(&mut text, done);
                    }
                    run = Some((*offset, *offset, state, record.deliveries));
                }
            }
        }
        if let Some(done) = run {
            flush(&mut text, done);
        }
        (self.start, text)
    }

    /// A state from [`SharePartition::snapshot`] of `topic`; `None` when
    /// the text is not one, or one of another topic of the same name.
    pub fn restore(start: i64, text: &str, topic: &TopicId) -> Option<SharePartition> {
        let mut words = text.split(' ');
        match words.next()? {
            "v1" => {}
            "v2" => {
                let id: String = topic.iter().map(|b| format!("{b:02x}")).collect();
                if words.next()? != id {
                    return None;
                }
            }
            _ => return None,
        }
        let next: i64 = words.next()?.parse().ok()?;
        let mut state = SharePartition::new(start);
        state.next = next.max(start);
        for word in words {
            let (range, rest) = word.split_once(':')?;
            let (kind, deliveries) = rest.split_once(':')?;
            let (first, last) = range.split_once('-')?;
            let (first, last): (i64, i64) = (first.parse().ok()?, last.parse().ok()?);
            let deliveries: u16 = deliveries.parse().ok()?;
            let kind = match kind {
                "a" => RecordState::Available,
                "k" => RecordState::Acknowledged,
                "x" => RecordState::Archived,
                _ => return None,
            };
            let after = state
                .in_flight
                .last_key_value()
                .map_or(start, |(o, _)| o + 1);
            if first < after || last < first || last >= state.next {
                return None;
            }
            let held = i64::try_from(state.in_flight.len()).unwrap_or(i64::MAX);
            if held.saturating_add(last - first) >= MAX_RESTORED {
                return None;
            }
            for offset in first..=last {
                state.in_flight.insert(
                    offset,
                    InFlight {
                        state: kind.clone(),
                        deliveries,
                    },
                );
            }
        }
        state.dirty = false;
        Some(state)
    }

    pub fn start(&self) -> i64 {
        self.start
    }

    /// Archives the available records already delivered `delivery_limit`
    /// times (a restored state stores acquired records as available with
    /// their delivery counted), so none is delivered once more.
    fn archive_exhausted(&mut self, delivery_limit: u16) {
        for (offset, record) in &mut self.in_flight {
            if record.state == RecordState::Available && record.deliveries >= delivery_limit {
                record.state = RecordState::Archived;
                self.archived += 1;
                self.dirty = true;
                self.dead.push(DeadLetter {
                    offset: *offset,
                    reason: DeadReason::DeliveryLimit,
                    deliveries: record.deliveries,
                });
            }
        }
        self.advance();
    }

    pub fn counts(&self) -> ShareCounts {
        let mut counts = ShareCounts {
            start: self.start,
            archived: self.archived,
            ..ShareCounts::default()
        };
        for record in self.in_flight.values() {
            match record.state {
                RecordState::Available => counts.available += 1,
                RecordState::Acquired { .. } => counts.acquired += 1,
                _ => {}
            }
        }
        counts
    }

    /// The log was truncated or trimmed below the start: nothing before
    /// `log_start` can be delivered.
    pub fn follow_log_start(&mut self, log_start: i64) {
        if log_start > self.start {
            self.dirty = true;
            self.in_flight.retain(|offset, _| *offset >= log_start);
            self.start = log_start;
            self.next = self.next.max(log_start);
        }
    }

    /// The first offset a fetch would read from: the lowest available
    /// record, else the next one never acquired below `end` (the high
    /// watermark); `None` when there is nothing to acquire.
    pub fn wanted_from(&self, end: i64, max_record_locks: usize) -> Option<i64> {
        let available = self
            .in_flight
            .iter()
            .find(|(_, r)| r.state == RecordState::Available)
            .map(|(offset, _)| *offset);
        let room = self.in_flight_count() < max_record_locks;
        available.or((self.next < end && room).then_some(self.next))
    }

    fn in_flight_count(&self) -> usize {
        usize::try_from(self.next - self.start).unwrap_or(usize::MAX)
    }

    /// Acquires for `member` up to `max_records` available records and new
    /// offsets in `covered` (what the caller read from the log, below the
    /// high watermark), as ranges of equal delivery counts.
    pub fn acquire(
        &mut self,
        member: &str,
        covered: std::ops::Range<i64>,
        max_records: usize,
        settings: &ShareSettings,
        now: Instant,
    ) -> Vec<Acquired> {
        let deadline = now + settings.lock_duration;
        let mut taken: Vec<(i64, u16)> = Vec::new();
        let covered_end = covered.end;
        for (offset, record) in self.in_flight.range_mut(covered) {
            if taken.len() >= max_records {
                break;
            }
            if record.state == RecordState::Available {
                record.deliveries = record.deliveries.saturating_add(1);
                record.state = RecordState::Acquired {
                    member: member.to_owned(),
                    deadline,
                };
                taken.push((*offset, record.deliveries));
            }
        }
        while taken.len() < max_records
            && self.next < covered_end
            && self.in_flight_count() < settings.max_record_locks
        {
            self.in_flight.insert(
                self.next,
                InFlight {
                    state: RecordState::Acquired {
                        member: member.to_owned(),
                        deadline,
                    },
                    deliveries: 1,
                },
            );
            taken.push((self.next, 1));
            self.next += 1;
        }
        self.dirty |= !taken.is_empty();
        let mut ranges: Vec<Acquired> = Vec::new();
        for (offset, count) in taken {
            match ranges.last_mut() {
                Some(last) if last.last + 1 == offset && last.delivery_count == count => {
                    last.last = offset;
                }
                _ => ranges.push(Acquired {
                    first: offset,
                    last: offset,
                    delivery_count: count,
                }),
            }
        }
        ranges
    }

    /// Applies a member's acknowledgements, all or nothing: every offset
    /// named must be acquired by `member` (offsets below the start are
    /// done already and skipped). Returns whether records became
    /// available again.
    ///
    /// # Errors
    /// [`ShareError::InvalidRecordState`], [`ShareError::InvalidRequest`]
    /// for a batch whose types do not fit its range.
    pub fn acknowledge(
        &mut self,
        member: &str,
        batches: &[AckBatch],
        delivery_limit: u16,
    ) -> Result<bool, ShareError> {
        let mut sorted: Vec<&AckBatch> = batches.iter().collect();
        sorted.sort_by_key(|b| b.first);
        let mut previous_last: Option<i64> = None;
        for batch in &sorted {
            let len = batch
                .last
                .checked_sub(batch.first)
                .and_then(|d| d.checked_add(1))
                .unwrap_or(0);
            if len <= 0
                || (batch.types.len() != 1 && i64::try_from(batch.types.len()).ok() != Some(len))
            {
                return Err(ShareError::InvalidRequest(format!(
                    "acknowledgement batch {}..={} with {} types",
                    batch.first,
                    batch.last,
                    batch.types.len()
                )));
            }
            // As Kafka: batches must not overlap (an accept then a release
            // of the same record would undo the accept).
            if previous_last.is_some_and(|last| batch.first <= last) {
                return Err(ShareError::InvalidRequest(format!(
                    "acknowledgement batches overlap at offset {}",
                    batch.first
                )));
            }
            previous_last = Some(batch.last);
            for offset in batch.first.max(self.start)..=batch.last {
                let held = self.in_flight.get(&offset).is_some_and(
                    |r| matches!(&r.state, RecordState::Acquired { member: m, .. } if m == member),
                );
                if !held {
                    return Err(ShareError::InvalidRecordState);
                }
            }
        }
        let mut released = false;
        self.dirty = true;
        for batch in sorted {
            for offset in batch.first.max(self.start)..=batch.last {
                let Some(kind) = batch.type_at(offset) else {
                    continue;
                };
                let Some(record) = self.in_flight.get_mut(&offset) else {
                    continue;
                };
                let dead = |reason| DeadLetter {
                    offset,
                    reason,
                    deliveries: record.deliveries,
                };
                let (state, dead) = match kind {
                    AckType::Accept => (RecordState::Acknowledged, None),
                    AckType::Gap => (RecordState::Archived, None),
                    AckType::Reject => (RecordState::Archived, Some(dead(DeadReason::Rejected))),
                    AckType::Release if record.deliveries >= delivery_limit => {
                        (RecordState::Archived, Some(dead(DeadReason::DeliveryLimit)))
                    }
                    AckType::Release => {
                        released = true;
                        (RecordState::Available, None)
                    }
                };
                record.state = state;
                self.dead.extend(dead);
                if record.state == RecordState::Archived {
                    self.archived += 1;
                }
            }
        }
        self.advance();
        Ok(released)
    }

    /// Releases what `member` holds (it left, or its session closed),
    /// without counting the interrupted delivery (Kafka's DECREASE).
    pub fn release_member(&mut self, member: &str) -> bool {
        let mut released = false;
        for record in self.in_flight.values_mut() {
            if matches!(&record.state, RecordState::Acquired { member: m, .. } if m == member) {
                record.state = RecordState::Available;
                record.deliveries = record.deliveries.saturating_sub(1);
                released = true;
            }
        }
        self.dirty |= released;
        released
    }

    /// Ends the locks that ran out: available again, or archived at the
    /// delivery limit. Returns whether any record became available.
    pub fn expire(&mut self, now: Instant, delivery_limit: u16) -> bool {
        let mut released = false;
        for (offset, record) in self.in_flight.iter_mut() {
            if matches!(&record.state, RecordState::Acquired { deadline, .. } if *deadline <= now) {
                self.dirty = true;
                if record.deliveries >= delivery_limit {
                    record.state = RecordState::Archived;
                    self.archived += 1;
                    self.dead.push(DeadLetter {
                        offset: *offset,
                        reason: DeadReason::DeliveryLimit,
                        deliveries: record.deliveries,
                    });
                } else {
                    record.state = RecordState::Available;
                    released = true;
                }
            }
        }
        self.advance();
        released
    }

    /// Moves the start past the records that are done.
    fn advance(&mut self) {
        while let Some(entry) = self.in_flight.first_entry() {
            let done = matches!(
                entry.get().state,
                RecordState::Acknowledged | RecordState::Archived
            );
            if !done {
                break;
            }
            let offset = *entry.key();
            entry.remove();
            self.start = offset + 1;
        }
        if self.in_flight.is_empty() {
            self.start = self.next;
        }
    }
}

/// A ShareGroupHeartbeat.
#[derive(Debug, Clone, Default)]
pub struct ShareHeartbeat {
    pub group_id: String,
    pub member_id: String,
    /// 0 joins, -1 leaves.
    pub member_epoch: i32,
    pub rack_id: Option<String>,
    pub subscribed_names: Option<Vec<String>>,
    pub client_id: String,
    pub client_host: String,
}

/// The answer to a share heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareHeartbeatAnswer {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval: Duration,
    pub assignment: Option<Assignment>,
}

#[derive(Debug)]
struct ShareMember {
    epoch: i32,
    names: Vec<String>,
    client_id: String,
    client_host: String,
    rack_id: Option<String>,
    assigned: Assignment,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct ShareGroup {
    epoch: i32,
    members: BTreeMap<String, ShareMember>,
}

/// A member of a share group as ShareGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMemberDescription {
    pub member_id: String,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub rack_id: Option<String>,
    pub subscribed_names: Vec<String>,
    pub assignment: Assignment,
}

/// A share group as ShareGroupDescribe and ListGroups show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGroupDescription {
    pub group_id: String,
    /// Empty or Stable.
    pub state: &'static str,
    pub group_epoch: i32,
    pub members: Vec<ShareMemberDescription>,
}

/// A member's share session on this node.
#[derive(Debug)]
struct Session {
    epoch: i32,
    partitions: BTreeSet<(TopicId, i32)>,
    /// The connection its last request came on: when it closes, the
    /// session ends and what the member holds is released (Kafka's
    /// behaviour), rather than waiting for the locks to run out.
    connection: Option<u64>,
}

/// Share groups' membership (on their coordinator), and share partitions
/// and sessions (on the partitions' leaders).
#[derive(Debug)]
pub struct ShareGroups {
    settings: ShareSettings,
    /// Groups' own settings over `settings`.
    configs: Arc<GroupConfigs>,
    groups: Mutex<HashMap<String, ShareGroup>>,
    partitions: Mutex<HashMap<(String, TopicId, i32), SharePartition>>,
    sessions: Mutex<HashMap<(String, String), Session>>,
    /// Held from taking the changed states to their stores' end, so that
    /// an older snapshot is never stored after a newer one, and a request
    /// that finds its change being stored waits for it.
    storing: Mutex<()>,
    /// Woken when records become available again (release, expiry).
    released: tokio::sync::Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ShareGroups {
    pub fn new(settings: ShareSettings, configs: Arc<GroupConfigs>) -> ShareGroups {
        ShareGroups {
            settings,
            configs,
            groups: Mutex::new(HashMap::new()),
            partitions: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            storing: Mutex::new(()),
            released: tokio::sync::Notify::new(),
        }
    }

    /// The broker's share settings.
    pub fn base_settings(&self) -> &ShareSettings {
        &self.settings
    }

    /// `group_id`'s settings: the broker's, with the group's own.
    pub fn settings(&self, group_id: &str) -> ShareSettings {
        match self.configs.get(group_id) {
            Some(config) => config.share(&self.settings),
            None => self.settings.clone(),
        }
    }

    /// Resolves when records may have become available again.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// One ShareGroupHeartbeat.
    ///
    /// # Errors
    /// [`ShareError::InvalidRequest`], [`ShareError::UnknownMemberId`],
    /// [`ShareError::FencedMemberEpoch`].
    pub fn heartbeat(
        &self,
        heartbeat: ShareHeartbeat,
        catalog: &TopicCatalog,
        now: Instant,
    ) -> Result<ShareHeartbeatAnswer, ShareError> {
        let invalid = |why: &str| Err(ShareError::InvalidRequest(why.to_owned()));
        if heartbeat.group_id.is_empty() {
            return invalid("GroupId can't be empty.");
        }
        if heartbeat.member_id.is_empty() {
            return invalid("MemberId can't be empty.");
        }
        if heartbeat.member_epoch < -1 {
            return invalid("MemberEpoch is invalid.");
        }
        if heartbeat.member_epoch == 0 && heartbeat.subscribed_names.is_none() {
            return invalid("SubscribedTopicNames must be set in first request.");
        }
        let settings = self.settings(&heartbeat.group_id);
        let mut groups = lock(&self.groups);
        let member_id = heartbeat.member_id.clone();
        if heartbeat.member_epoch == -1 {
            let group = groups
                .get_mut(&heartbeat.group_id)
                .ok_or(ShareError::UnknownMemberId)?;
            if group.members.remove(&member_id).is_none() {
                return Err(ShareError::UnknownMemberId);
            }
            group.epoch += 1;
            drop(groups);
            self.release_member(&heartbeat.group_id, &member_id);
            return Ok(ShareHeartbeatAnswer {
                member_id,
                member_epoch: -1,
                heartbeat_interval: settings.heartbeat_interval,
                assignment: None,
            });
        }
        let group = if heartbeat.member_epoch == 0 {
            groups.entry(heartbeat.group_id.clone()).or_default()
        } else {
            groups
                .get_mut(&heartbeat.group_id)
                .ok_or(ShareError::UnknownMemberId)?
        };
        let joining = heartbeat.member_epoch == 0;
        if joining {
            if !group.members.contains_key(&member_id) {
                group.epoch += 1;
            }
            let member = group
                .members
                .entry(member_id.clone())
                .or_insert_with(|| ShareMember {
                    epoch: 0,
                    names: Vec::new(),
                    client_id: heartbeat.client_id.clone(),
                    client_host: heartbeat.client_host.clone(),
                    rack_id: None,
                    assigned: Assignment::new(),
                    deadline: now,
                });
            member.assigned.clear();
        }
        let epoch = group.epoch;
        let Some(member) = group.members.get_mut(&member_id) else {
            return Err(ShareError::UnknownMemberId);
        };
        if !joining && heartbeat.member_epoch > member.epoch {
            return Err(ShareError::FencedMemberEpoch);
        }
        member.deadline = now + settings.session_timeout;
        if heartbeat.rack_id.is_some() {
            member.rack_id = heartbeat.rack_id.clone();
        }
        if let Some(names) = heartbeat.subscribed_names {
            let mut names = names;
            names.sort();
            names.dedup();
            member.names = names;
        }
        // Every partition of every subscribed topic: records are shared.
        let mut assignment = Assignment::new();
        for name in &member.names {
            if let Some((id, count)) = catalog.get(name) {
                assignment.insert(id, (0..i32::try_from(count).unwrap_or(0)).collect());
            }
        }
        let changed = assignment != member.assigned || joining;
        if changed {
            member.assigned = assignment;
            member.epoch = epoch;
        }
        Ok(ShareHeartbeatAnswer {
            member_id,
            member_epoch: member.epoch,
            heartbeat_interval: settings.heartbeat_interval,
            assignment: changed.then(|| member.assigned.clone()),
        })
    }

    /// Whether a share group of this id exists, and has members.
    pub fn exists(&self, group_id: &str) -> Option<bool> {
        lock(&self.groups)
            .get(group_id)
            .map(|g| !g.members.is_empty())
    }

    pub fn list(&self) -> Vec<(String, &'static str)> {
        let mut listed: Vec<_> = lock(&self.groups)
            .iter()
            .map(|(id, g)| {
                let state = if g.members.is_empty() {
                    "Empty"
                } else {
                    "Stable"
                };
                (id.clone(), state)
            })
            .collect();
        listed.sort();
        listed
    }

    pub fn describe(&self, group_id: &str) -> Option<ShareGroupDescription> {
        let groups = lock(&self.groups);
        let group = groups.get(group_id)?;
        Some(ShareGroupDescription {
            group_id: group_id.to_owned(),
            state: if group.members.is_empty() {
                "Empty"
            } else {
                "Stable"
            },
            group_epoch: group.epoch,
            members: group
                .members
                .iter()
                .map(|(id, m)| ShareMemberDescription {
                    member_id: id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rack_id: m.rack_id.clone(),
                    subscribed_names: m.names.clone(),
                    assignment: m.assigned.clone(),
                })
                .collect(),
        })
    }

    /// Forgets an empty share group and its partitions' state.
    /// `Ok(false)`: there was none.
    ///
    /// # Errors
    /// `Err(())` while it has members.
    #[allow(clippy::result_unit_err)]
    pub fn remove_if_empty(&self, group_id: &str) -> Result<bool, ()> {
        let mut groups = lock(&self.groups);
        match groups.get(group_id) {
            Some(group) if !group.members.is_empty() => Err(()),
            Some(_) => {
                groups.remove(group_id);
                drop(groups);
                self.forget_partitions(group_id);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Forgets this node's partition states of `group_id` (the group was
    /// deleted).
    pub fn forget_partitions(&self, group_id: &str) {
        lock(&self.partitions).retain(|(g, _, _), _| g != group_id);
    }

    /// Opens, checks or closes a member's share session for a request
    /// with `epoch` (0 opens, -1 closes, else the next expected epoch),
    /// adding and forgetting partitions; returns the session's partitions.
    /// A session opened anew releases what the member held before.
    ///
    /// # Errors
    /// [`ShareError::SessionNotFound`], [`ShareError::InvalidSessionEpoch`].
    pub fn session(
        &self,
        (group_id, member_id): (&str, &str),
        epoch: i32,
        add: &[(TopicId, i32)],
        forget: &[(TopicId, i32)],
        connection: Option<u64>,
    ) -> Result<Vec<(TopicId, i32)>, ShareError> {
        let key = (group_id.to_owned(), member_id.to_owned());
        let mut sessions = lock(&self.sessions);
        let partitions = match epoch {
            0 => {
                let replaced = sessions.remove(&key).is_some();
                let session = Session {
                    epoch: 1,
                    partitions: add.iter().copied().collect(),
                    connection,
                };
                let partitions = session.partitions.iter().copied().collect();
                sessions.insert(key, session);
                if replaced {
                    drop(sessions);
                    self.release_member(group_id, member_id);
                }
                return Ok(partitions);
            }
            -1 => {
                let session = sessions.remove(&key).ok_or(ShareError::SessionNotFound)?;
                session.partitions.into_iter().collect()
            }
            _ => {
                let session = sessions.get_mut(&key).ok_or(ShareError::SessionNotFound)?;
                if session.epoch != epoch {
                    return Err(ShareError::InvalidSessionEpoch);
                }
                session.epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
                session.connection = connection.or(session.connection);
                session.partitions.extend(add.iter().copied());
                for forgotten in forget {
                    session.partitions.remove(forgotten);
                }
                session.partitions.iter().copied().collect()
            }
        };
        drop(sessions);
        if !forget.is_empty() {
            let mut states = lock(&self.partitions);
            for (topic, partition) in forget {
                if let Some(state) = states.get_mut(&(group_id.to_owned(), *topic, *partition)) {
                    state.release_member(member_id);
                }
            }
        }
        Ok(partitions)
    }

    /// A client connection closed: the share sessions last used on it end,
    /// and what their members hold is available again.
    pub fn connection_closed(&self, connection: u64) {
        let mut ended: Vec<(String, String)> = Vec::new();
        lock(&self.sessions).retain(|key, session| {
            let open = session.connection != Some(connection);
            if !open {
                ended.push(key.clone());
            }
            open
        });
        for (group_id, member_id) in ended {
            self.release_member(&group_id, &member_id);
        }
    }

    /// Runs `work` on a share partition's state, creating it at
    /// `share.auto.offset.reset` (`log_start` or `high_watermark`) on first
    /// use, and wakes waiting fetches when it made records available.
    pub fn with_partition<T>(
        &self,
        group_id: &str,
        topic: TopicId,
        partition: i32,
        log_start: i64,
        high_watermark: i64,
        work: impl FnOnce(&mut SharePartition, &ShareSettings) -> T,
    ) -> T {
        let settings = self.settings(group_id);
        let mut states = lock(&self.partitions);
        let state = states
            .entry((group_id.to_owned(), topic, partition))
            .or_insert_with(|| {
                SharePartition::new(match settings.auto_offset_reset {
                    ShareReset::Earliest => log_start,
                    ShareReset::Latest => high_watermark,
                })
            });
        state.follow_log_start(log_start);
        work(state, &settings)
    }

    /// Whether a share partition's state must be loaded before use: this
    /// node has none, or had it under another leader epoch.
    pub fn needs_load(
        &self,
        group_id: &str,
        topic: TopicId,
        partition: i32,
        leader_epoch: i32,
    ) -> bool {
        lock(&self.partitions)
            .get(&(group_id.to_owned(), topic, partition))
            .is_none_or(|state| state.leader_epoch != leader_epoch)
    }

    /// Installs a share partition's state as loaded under `leader_epoch`:
    /// the stored one (acquired records come back available, their
    /// delivery counts kept), or a new one at `share.auto.offset.reset`.
    pub fn install(
        &self,
        key: (&str, TopicId, i32),
        leader_epoch: i32,
        stored: Option<(i64, String)>,
        log_start: i64,
        high_watermark: i64,
    ) {
        let (group_id, topic, partition) = key;
        let loaded = |states: &HashMap<(String, TopicId, i32), SharePartition>| {
            states
                .get(&(group_id.to_owned(), topic, partition))
                .is_some_and(|state| state.leader_epoch == leader_epoch)
        };
        // Two fetches may load at once: the first install stands, the
        // second would undo what was acquired since.
        if loaded(&lock(&self.partitions)) {
            return;
        }
        let stored = stored.filter(|(_, text)| text != crate::share_store::DELETED_STATE);
        let restored = stored.and_then(|(start, text)| {
            let state = SharePartition::restore(start, &text, &topic);
            if state.is_none() {
                tracing::warn!(
                    group = group_id,
                    partition,
                    "stored share-partition state unreadable or of an earlier topic of the name: starting anew"
                );
            }
            state
        });
        let settings = self.settings(group_id);
        let mut state = restored.unwrap_or_else(|| {
            SharePartition::new(match settings.auto_offset_reset {
                ShareReset::Earliest => log_start,
                ShareReset::Latest => high_watermark,
            })
        });
        state.leader_epoch = leader_epoch;
        state.follow_log_start(log_start);
        state.archive_exhausted(settings.delivery_limit);
        let mut states = lock(&self.partitions);
        if loaded(&states) {
            return;
        }
        states.insert((group_id.to_owned(), topic, partition), state);
        drop(states);
        self.released.notify_waiters();
    }

    /// Serialises stores of share state: held from
    /// [`ShareGroups::take_dirty`] until what it took is stored.
    pub fn storing(&self) -> MutexGuard<'_, ()> {
        lock(&self.storing)
    }

    /// Forgets the states of partitions this node no longer leads in the
    /// epoch it loaded them in (`led` answers for a topic, partition and
    /// epoch): a former leader neither expires locks nor stores a state
    /// over its next leader's.
    pub fn retain_led(&self, led: impl Fn(&TopicId, i32, i32) -> bool) {
        lock(&self.partitions).retain(|(group, topic, partition), state| {
            let keep = led(topic, *partition, state.leader_epoch);
            if !keep {
                tracing::info!(%group, partition, "share-partition state dropped: no longer led here");
            }
            keep
        });
    }

    /// The states changed since last taken, to be stored: (group, topic,
    /// partition, start, text). Their marks are cleared; a store that
    /// fails calls [`ShareGroups::mark_dirty`]. A state with dead letters
    /// still to publish waits for them (a crash then delivers the record
    /// again rather than losing its dead letter), for [`DEAD_LETTER_HOLD`]
    /// at most once publishing them fails.
    pub fn take_dirty(&self, now: Instant) -> Vec<(String, TopicId, i32, i64, String)> {
        let mut states = lock(&self.partitions);
        states
            .iter_mut()
            .filter_map(|((group, topic, partition), state)| {
                if state.dead.is_empty() {
                    state.dead_failing_since = None;
                    state.dead_retry_at = None;
                }
                let held = !state.dead.is_empty()
                    && state
                        .dead_failing_since
                        .is_none_or(|since| now < since + DEAD_LETTER_HOLD);
                if !state.dirty || held {
                    return None;
                }
                state.dirty = false;
                let (start, text) = state.snapshot(topic);
                Some((group.clone(), *topic, *partition, start, text))
            })
            .collect()
    }

    /// The records archived since last taken, by share partition, to be
    /// dead-lettered (those whose last try failed wait a while).
    pub fn take_dead(&self, now: Instant) -> Vec<(String, TopicId, i32, Vec<DeadLetter>)> {
        lock(&self.partitions)
            .iter_mut()
            .filter(|(_, state)| {
                !state.dead.is_empty() && state.dead_retry_at.is_none_or(|at| at <= now)
            })
            .map(|((group, topic, partition), state)| {
                (
                    group.clone(),
                    *topic,
                    *partition,
                    std::mem::take(&mut state.dead),
                )
            })
            .collect()
    }

    /// Puts back dead letters that could not be published at `now`: tried
    /// again a second later.
    pub fn restore_dead(
        &self,
        (group_id, topic, partition): (&str, TopicId, i32),
        dead: Vec<DeadLetter>,
        now: Instant,
    ) {
        if let Some(state) =
            lock(&self.partitions).get_mut(&(group_id.to_owned(), topic, partition))
        {
            let mut dead = dead;
            dead.append(&mut state.dead);
            state.dead = dead;
            state.dead_failing_since.get_or_insert(now);
            state.dead_retry_at = Some(now + DEAD_LETTER_RETRY);
        }
    }

    /// Marks a state to be stored again (its store failed).
    pub fn mark_dirty(&self, group_id: &str, topic: TopicId, partition: i32) {
        if let Some(state) =
            lock(&self.partitions).get_mut(&(group_id.to_owned(), topic, partition))
        {
            state.dirty = true;
        }
    }

    /// Acknowledges on a share partition this node has state for.
    ///
    /// # Errors
    /// As [`SharePartition::acknowledge`]; [`ShareError::InvalidRecordState`]
    /// when there is no state (nothing was ever acquired here).
    pub fn acknowledge(
        &self,
        group_id: &str,
        member_id: &str,
        topic: TopicId,
        partition: i32,
        batches: &[AckBatch],
    ) -> Result<(), ShareError> {
        let delivery_limit = self.settings(group_id).delivery_limit;
        let mut states = lock(&self.partitions);
        let state = states
            .get_mut(&(group_id.to_owned(), topic, partition))
            .ok_or(ShareError::InvalidRecordState)?;
        let released = state.acknowledge(member_id, batches, delivery_limit)?;
        drop(states);
        if released {
            self.released.notify_waiters();
        }
        Ok(())
    }

    /// Makes what `member_id` holds in `group_id` available again (its
    /// session closed, it left).
    pub fn release_member(&self, group_id: &str, member_id: &str) {
        let mut released = false;
        for ((group, _, _), state) in lock(&self.partitions).iter_mut() {
            if group == group_id {
                released |= state.release_member(member_id);
            }
        }
        if released {
            self.released.notify_waiters();
        }
    }

    /// Counts of every share partition of `group_id` on this node.
    pub fn counts(&self, group_id: &str) -> Vec<(TopicId, i32, ShareCounts)> {
        let mut counts: Vec<_> = lock(&self.partitions)
            .iter()
            .filter(|((g, _, _), _)| g == group_id)
            .map(|((_, topic, partition), state)| (*topic, *partition, state.counts()))
            .collect();
        counts.sort_by_key(|(topic, partition, _)| (*topic, *partition));
        counts
    }

    /// Ends expired locks and removes members whose session ran out;
    /// call periodically.
    pub fn expire(&self, now: Instant) {
        let mut released = false;
        for ((group_id, _, _), state) in lock(&self.partitions).iter_mut() {
            released |= state.expire(now, self.settings(group_id).delivery_limit);
        }
        let mut gone: Vec<(String, String)> = Vec::new();
        for (group_id, group) in lock(&self.groups).iter_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| m.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for member_id in expired {
                tracing::info!(group = %group_id, member = %member_id, "share group member's session expired");
                group.members.remove(&member_id);
                group.epoch += 1;
                gone.push((group_id.clone(), member_id));
            }
        }
        for (group_id, member_id) in &gone {
            lock(&self.sessions).remove(&(group_id.clone(), member_id.clone()));
            self.release_member(group_id, member_id);
        }
        if released {
            self.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests;
