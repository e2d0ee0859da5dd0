//! Consumer groups of Kafka's new protocol (KIP-848): the coordinator
//! assigns partitions itself and hands them over one heartbeat at a time.
//!
//! ```text
//!   member heartbeat ──▶ group epoch bumped? (join, leave, fence, new
//!        │               subscription, topic metadata changed)
//!        │                    └── yes: the assignor computes a new target
//!        ▼                             at assignment epoch = group epoch
//!   reconcile the member toward its target:
//!     owns partitions the target dropped ──▶ UNREVOKED: told to give them
//!        up, epoch unchanged, until a heartbeat no longer lists them
//!     then takes the target's new partitions that no other member still
//!     holds ──▶ STABLE at the target epoch (UNRELEASED while some are held)
//! ```
//!
//! So a partition moves to a new member only after its previous owner has
//! reported it gone, or has left, or was fenced (its session or its
//! revocation ran out). Membership is stored with the group's offsets
//! (`durable`), so a coordinator that restarts or moves goes on with the
//! members at their epochs.
//!
//! Time is passed in (`now`), so the state machine is tested with
//! simulated time. One lock guards every group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::group_config::GroupConfigs;

/// A topic's id (a UUID's bytes), as KIP-848 names topics.
pub type TopicId = [u8; 16];

/// Partitions by topic id.
pub type Assignment = BTreeMap<TopicId, BTreeSet<i32>>;

/// The server-side assignors (`group.consumer.assignors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// Balanced (member sizes differ by at most one where subscriptions
    /// allow) and sticky: partitions stay where they are unless balance
    /// needs them elsewhere.
    Uniform,
    /// Each topic's partitions cut into contiguous ranges over its
    /// subscribers, in member order (static members by instance id first).
    Range,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }

    pub fn parse(name: &str) -> Option<Assignor> {
        match name {
            "uniform" => Some(Assignor::Uniform),
            "range" => Some(Assignor::Range),
            _ => None,
        }
    }
}

/// The coordinator's settings, as Kafka's broker configuration names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupSettings {
    /// A member not heard from for this long is fenced
    /// (`group.consumer.session.timeout.ms`).
    pub session_timeout: Duration,
    /// How often members heartbeat (`group.consumer.heartbeat.interval.ms`).
    pub heartbeat_interval: Duration,
    /// Most members of one group (`group.consumer.max.size`).
    pub max_size: usize,
    /// The assignors members may name; the first is the default
    /// (`group.consumer.assignors`).
    pub assignors: Vec<Assignor>,
    /// Which online migrations happen (`group.consumer.migration.policy`).
    pub migration: MigrationPolicy,
}

/// Kafka's `group.consumer.migration.policy`: whether a classic group is
/// upgraded by a member of the new protocol joining, and whether a
/// consumer group left with classic members only is downgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationPolicy {
    Bidirectional,
    Upgrade,
    Downgrade,
    Disabled,
}

impl MigrationPolicy {
    pub fn parse(name: &str) -> Option<MigrationPolicy> {
        match name {
            "bidirectional" => Some(MigrationPolicy::Bidirectional),
            "upgrade" => Some(MigrationPolicy::Upgrade),
            "downgrade" => Some(MigrationPolicy::Downgrade),
            "disabled" => Some(MigrationPolicy::Disabled),
            _ => None,
        }
    }

    pub fn upgrades(self) -> bool {
        matches!(
            self,
            MigrationPolicy::Bidirectional | MigrationPolicy::Upgrade
        )
    }

    pub fn downgrades(self) -> bool {
        matches!(
            self,
            MigrationPolicy::Bidirectional | MigrationPolicy::Downgrade
        )
    }
}

impl Default for ConsumerGroupSettings {
    /// Kafka's defaults: 45 s, 5 s, no size cap, uniform then range.
    fn default() -> Self {
        ConsumerGroupSettings {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(5),
            max_size: usize::MAX,
            assignors: vec![Assignor::Uniform, Assignor::Range],
            migration: MigrationPolicy::Bidirectional,
        }
    }
}

/// Why a heartbeat or commit was refused; front-ends map these to codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerGroupError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("the member epoch is fenced: rejoin")]
    FencedMemberEpoch,
    #[error("the member epoch is not the member's current one")]
    StaleMemberEpoch,
    #[error("static member {0} has not left yet")]
    UnreleasedInstanceId(String),
    #[error("static member {0} was taken over by another member id")]
    FencedInstanceId(String),
    #[error("the group has reached its maximum size")]
    GroupMaxSizeReached,
    #[error("unknown server assignor {0}")]
    UnsupportedAssignor(String),
    #[error("invalid regular expression: {0}")]
    InvalidRegularExpression(String),
    #[error("group {0} is not a consumer group")]
    NotConsumerGroup(String),
    #[error(
        "OffsetCommit version 9 or above must be used by members using the consumer group protocol"
    )]
    UnsupportedVersion,
    /// A classic member's protocols are not the group's.
    #[error("{0}")]
    InconsistentGroupProtocol(String),
    /// A classic member's generation is not its member epoch.
    #[error("the generation is not the member's epoch")]
    IllegalGeneration,
    /// A classic member must rejoin to catch up with the group.
    #[error("the group is rebalancing: rejoin")]
    RebalanceInProgress,
}

/// The topics a heartbeat may subscribe to, by name: id and partition
/// count. Built by the caller from the broker's topics for each call.
#[derive(Debug, Clone, Default)]
pub struct TopicCatalog {
    topics: BTreeMap<String, (TopicId, u32)>,
    /// Internal topics: a name subscribes to them, a regex never does.
    internal: BTreeSet<String>,
}

impl TopicCatalog {
    pub fn new() -> TopicCatalog {
        TopicCatalog::default()
    }

    pub fn insert(&mut self, name: &str, id: TopicId, partitions: u32, internal: bool) {
        self.topics.insert(name.to_owned(), (id, partitions));
        if internal {
            self.internal.insert(name.to_owned());
        }
    }

    /// A topic's id and partition count.
    pub fn get(&self, name: &str) -> Option<(TopicId, u32)> {
        self.topics.get(name).copied()
    }

    pub fn name_of(&self, id: &TopicId) -> Option<&str> {
        self.topics
            .iter()
            .find(|(_, (topic, _))| topic == id)
            .map(|(name, _)| name.as_str())
    }
}

/// A ConsumerGroupHeartbeat, with the wire's "null: unchanged" fields as
/// options.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub group_id: String,
    pub member_id: String,
    /// 0 joins, -1 leaves, -2 leaves as a static member that returns.
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    pub subscribed_names: Option<Vec<String>>,
    /// `Some("")` means no regex, as librdkafka sends it.
    pub subscribed_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// The partitions the member owns now (null: unchanged).
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval: Duration,
    /// The member's assignment, when it is new to the member (or asked for
    /// by a join or a full heartbeat); `None` means unchanged.
    pub assignment: Option<Assignment>,
}

/// A member as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_names: Vec<String>,
    pub subscribed_regex: Option<String>,
    pub assignment: Assignment,
    pub target: Assignment,
    /// It speaks the classic protocol (ConsumerGroupDescribe v1's member
    /// type 0).
    pub classic: bool,
}

/// A group as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupDescription {
    pub group_id: String,
    /// Empty, Assigning, Reconciling or Stable.
    pub state: &'static str,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: &'static str,
    pub members: Vec<ConsumerMemberDescription>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberState {
    Stable,
    /// Told to give up `revoking`; its epoch waits until it has.
    UnrevokedPartitions,
    /// Waiting for partitions other members still hold.
    UnreleasedPartitions,
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    epoch: i32,
    previous_epoch: i32,
    state: MemberState,
    assigned: Assignment,
    revoking: Assignment,
    names: Vec<String>,
    regex: Option<(String, regex::Regex)>,
    rebalance_timeout: Duration,
    server_assignor: Option<Assignor>,
    session_deadline: Instant,
    revocation_deadline: Option<Instant>,
    /// A member speaking the classic protocol (JoinGroup, SyncGroup,
    /// Heartbeat) in a consumer group: Kafka's online migration.
    classic: Option<classic::ClassicMeta>,
}

impl Member {
    fn new(heartbeat: &Heartbeat, now: Instant) -> Member {
        Member {
            instance_id: heartbeat.instance_id.clone(),
            rack_id: None,
            client_id: heartbeat.client_id.clone(),
            client_host: heartbeat.client_host.clone(),
            epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            assigned: Assignment::new(),
            revoking: Assignment::new(),
            names: Vec::new(),
            regex: None,
            rebalance_timeout: Duration::from_secs(300),
            server_assignor: None,
            session_deadline: now,
            revocation_deadline: None,
            classic: None,
        }
    }

    /// Whether this member is subscribed to `topic`.
    fn subscribes(&self, topic: &str, catalog: &TopicCatalog) -> bool {
        self.names.iter().any(|n| n == topic)
            || self
                .regex
                .as_ref()
                .is_some_and(|(_, re)| !catalog.internal.contains(topic) && re.is_match(topic))
    }

    fn left_static(&self) -> bool {
        self.epoch == LEFT_STATIC
    }
}

/// The epoch of a static member that left and will return.
const LEFT_STATIC: i32 = -2;
const LEAVE: i32 = -1;

#[derive(Debug)]
struct Group {
    epoch: i32,
    assignment_epoch: i32,
    target: BTreeMap<String, Assignment>,
    members: BTreeMap<String, Member>,
    /// The subscribed topics' ids and partition counts the target was
    /// computed on: a change bumps the group epoch.
    subscribed: BTreeMap<String, (TopicId, u32)>,
    assignor: Assignor,
    /// A member was removed since the last check for a downgrade to a
    /// classic group.
    removed: bool,
    /// The coordinator epoch the group was made or loaded in (`None`: no
    /// stored membership, as in unit tests).
    coordinator_epoch: Option<i32>,
}

impl Group {
    fn new(assignor: Assignor) -> Group {
        Group {
            epoch: 0,
            assignment_epoch: 0,
            target: BTreeMap::new(),
            members: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            assignor,
            removed: false,
            coordinator_epoch: None,
        }
    }

    fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.epoch > self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| !m.left_static() && m.epoch != self.assignment_epoch)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    fn instance_owner(&self, instance: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id.clone())
    }

    /// Removes a member (left, fenced or expired): its partitions are free
    /// and the group rebalances.
    fn remove(&mut self, member_id: &str) {
        if self.members.remove(member_id).is_some() {
            self.target.remove(member_id);
            self.epoch += 1;
            self.removed = true;
        }
    }

    /// Every topic some member subscribes to, as the catalog has it now.
    fn resolve(&self, catalog: &TopicCatalog) -> BTreeMap<String, (TopicId, u32)> {
        catalog
            .topics
            .iter()
            .filter(|(name, _)| self.members.values().any(|m| m.subscribes(name, catalog)))
            .map(|(name, meta)| (name.clone(), *meta))
            .collect()
    }

    /// The assignor most members name, else the configured default.
    fn choose_assignor(&self, default: Assignor) -> Assignor {
        let mut votes: BTreeMap<&'static str, (usize, Assignor)> = BTreeMap::new();
        for assignor in self.members.values().filter_map(|m| m.server_assignor) {
            votes.entry(assignor.name()).or_insert((0, assignor)).0 += 1;
        }
        votes
            .into_values()
            .max_by_key(|(count, _)| *count)
            .map_or(default, |(_, assignor)| assignor)
    }

    /// A new target assignment for every member at the group's epoch.
    fn compute_target(&mut self, catalog: &TopicCatalog, default: Assignor) {
        self.assignor = self.choose_assignor(default);
        let members: Vec<Subscriber<'_>> = self
            .members
            .iter()
            .map(|(id, m)| Subscriber {
                id,
                instance_id: m.instance_id.as_deref(),
                topics: self
                    .subscribed
                    .keys()
                    .filter(|t| m.subscribes(t, catalog))
                    .cloned()
                    .collect(),
            })
            .collect();
        let target = match self.assignor {
            Assignor::Range => range(&members, &self.subscribed),
            Assignor::Uniform => uniform(&members, &self.subscribed, &self.target),
        };
        self.target = target;
        self.assignment_epoch = self.epoch;
    }

    /// A new group epoch when a subscription or a subscribed topic
    /// changed, and a new target for it.
    fn rebalance_if_changed(
        &mut self,
        subscription_changed: bool,
        catalog: &TopicCatalog,
        default: Assignor,
    ) {
        let subscribed = self.resolve(catalog);
        if subscription_changed || subscribed != self.subscribed {
            self.subscribed = subscribed;
            self.epoch += 1;
        }
        if self.epoch > self.assignment_epoch {
            self.compute_target(catalog, default);
        }
    }

    /// Whether a member other than `member_id` still holds `partition`.
    fn held_elsewhere(&self, member_id: &str, topic: &TopicId, partition: i32) -> bool {
        self.members.iter().any(|(id, m)| {
            id != member_id
                && (contains(&m.assigned, topic, partition)
                    || contains(&m.revoking, topic, partition))
        })
    }

    /// Moves `member_id` toward its target (Kafka's
    /// `CurrentAssignmentBuilder`); `owned` is what the member reported.
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now: Instant) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let target_epoch = self.assignment_epoch;
        let Some(member) = self.members.get(member_id) else {
            return;
        };
        match member.state {
            MemberState::Stable if member.epoch == target_epoch => return,
            MemberState::UnrevokedPartitions => {
                // A heartbeat without the list still owns them.
                let still_owned = owned.is_none_or(|owned| overlaps(owned, &member.revoking));
                if still_owned {
                    return;
                }
            }
            _ => {}
        }
        let mut assigned = Assignment::new();
        let mut revoke = Assignment::new();
        for (topic, partitions) in &member.assigned {
            for p in partitions {
                if contains(&target, topic, *p) {
                    insert(&mut assigned, *topic, *p);
                } else {
                    insert(&mut revoke, *topic, *p);
                }
            }
        }
        let rebalance_timeout = member.rebalance_timeout;
        // As Kafka's ownsRevokedPartitions: revocation waits only for
        // partitions the member reports owning (a heartbeat without the
        // list still owns what it had); one that owns none of them, like a
        // static member returning under a new id, goes straight on.
        let owns_revoked = owned.is_none_or(|owned| overlaps(owned, &revoke));
        if !revoke.is_empty() && owns_revoked {
            if let Some(member) = self.members.get_mut(member_id) {
                member.assigned = assigned;
                member.revoking = revoke;
                member.state = MemberState::UnrevokedPartitions;
                member.revocation_deadline = Some(now + rebalance_timeout);
            }
            return;
        }
        let mut unreleased = false;
        for (topic, partitions) in &target {
            for p in partitions {
                if contains(&assigned, topic, *p) {
                    continue;
                }
                if self.held_elsewhere(member_id, topic, *p) {
                    unreleased = true;
                } else {
                    insert(&mut assigned, *topic, *p);
                }
            }
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.assigned = assigned;
            member.revoking.clear();
            member.revocation_deadline = None;
            if member.epoch != target_epoch {
                member.previous_epoch = member.epoch;
                member.epoch = target_epoch;
            }
            member.state = if unreleased {
                MemberState::UnreleasedPartitions
            } else {
                MemberState::Stable
            };
        }
    }
}

/// A subscription regex as Kafka matches it: the whole topic name.
fn subscription_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

fn contains(assignment: &Assignment, topic: &TopicId, partition: i32) -> bool {
    assignment
        .get(topic)
        .is_some_and(|ps| ps.contains(&partition))
}

fn insert(assignment: &mut Assignment, topic: TopicId, partition: i32) {
    assignment.entry(topic).or_default().insert(partition);
}

fn overlaps(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .any(|(topic, ps)| ps.iter().any(|p| contains(b, topic, *p)))
}

fn is_subset(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .all(|(topic, ps)| ps.iter().all(|p| contains(b, topic, *p)))
}

/// A member as the assignors see it.
#[derive(Debug)]
struct Subscriber<'a> {
    id: &'a str,
    instance_id: Option<&'a str>,
    topics: BTreeSet<String>,
}

/// Kafka's range assignor: per topic, contiguous ranges over the sorted
/// subscribers, the first `n % m` one partition longer.
fn range(
    members: &[Subscriber<'_>],
    topics: &BTreeMap<String, (TopicId, u32)>,
) -> BTreeMap<String, Assignment> {
    let mut sorted: Vec<&Subscriber<'_>> = members.iter().collect();
    // Static members by instance id first, then the others by member id.
    sorted.sort_by(|a, b| {
        (a.instance_id.is_none(), a.instance_id, a.id).cmp(&(
            b.instance_id.is_none(),
            b.instance_id,
            b.id,
        ))
    });
    let mut target: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.to_owned(), Assignment::new()))
        .collect();
    for (name, (id, count)) in topics {
        let subscribers: Vec<&&Subscriber<'_>> =
            sorted.iter().filter(|m| m.topics.contains(name)).collect();
        if subscribers.is_empty() {
            continue;
        }
        let n = *count as usize;
        let m = subscribers.len();
        let mut next = 0usize;
        for (i, member) in subscribers.iter().enumerate() {
            let len = n / m + usize::from(i < n % m);
            for p in next..next + len {
                if let (Some(assignment), Ok(p)) = (target.get_mut(member.id), i32::try_from(p)) {
                    insert(assignment, *id, p);
                }
            }
            next += len;
        }
    }
    target
}

/// A balanced, sticky assignment: partitions keep their previous owner
/// while it still subscribes, the rest go to the least loaded subscriber,
/// then partitions move from the most to the least loaded members until
/// no two subscribers of a partition differ by more than one.
fn uniform(
    members: &[Subscriber<'_>],
    topics: &BTreeMap<String, (TopicId, u32)>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let by_id: BTreeMap<&TopicId, &str> = topics
        .iter()
        .map(|(name, (id, _))| (id, name.as_str()))
        .collect();
    let subscribed = |member: &Subscriber<'_>, topic: &TopicId| {
        by_id
            .get(topic)
            .is_some_and(|name| member.topics.contains(*name))
    };
    let mut owner: BTreeMap<(TopicId, i32), usize> = BTreeMap::new();
    let mut load = vec![0usize; members.len()];
    for (index, member) in members.iter().enumerate() {
        let Some(kept) = previous.get(member.id) else {
            continue;
        };
        for (topic, partitions) in kept {
            let Some(count) = by_id.get(topic).and_then(|name| topics.get(*name)) else {
                continue;
            };
            for p in partitions {
                if subscribed(member, topic)
                    && u32::try_from(*p).is_ok_and(|p| p < count.1)
                    && !owner.contains_key(&(*topic, *p))
                {
                    owner.insert((*topic, *p), index);
                    load[index] += 1;
                }
            }
        }
    }
    for (id, count) in topics.values() {
        for p in 0..i32::try_from(*count).unwrap_or(i32::MAX) {
            if owner.contains_key(&(*id, p)) {
                continue;
            }
            let least = (0..members.len())
                .filter(|i| subscribed(&members[*i], id))
                .min_by_key(|i| load[*i]);
            if let Some(least) = least {
                owner.insert((*id, p), least);
                load[least] += 1;
            }
        }
    }
    // Balance: each move lowers the spread, so this ends; the bound is a
    // guard against a mistake, never reached.
    let bound = owner.len() * members.len().max(1) + 1;
    for _ in 0..bound {
        let mut moved = false;
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by_key(|i| std::cmp::Reverse(load[*i]));
        'find: for &from in &order {
            let candidates: Vec<(TopicId, i32)> = owner
                .iter()
                .filter(|(_, o)| **o == from)
                .map(|(tp, _)| *tp)
                .collect();
            for (topic, p) in candidates.into_iter().rev() {
                let to = (0..members.len())
                    .filter(|i| *i != from && subscribed(&members[*i], &topic))
                    .min_by_key(|i| load[*i]);
                if let Some(to) = to
                    && load[to] + 1 < load[from]
                {
                    owner.insert((topic, p), to);
                    load[from] -= 1;
                    load[to] += 1;
                    moved = true;
                    break 'find;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let mut target: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.to_owned(), Assignment::new()))
        .collect();
    for ((topic, p), index) in owner {
        if let Some(assignment) = target.get_mut(members[index].id) {
            insert(assignment, topic, p);
        }
    }
    target
}

/// The coordinator of every consumer group (new protocol) on this broker.
#[derive(Debug)]
pub struct ConsumerGroups {
    groups: Mutex<HashMap<String, Group>>,
    settings: ConsumerGroupSettings,
    /// Groups' own settings over `settings`.
    configs: Arc<GroupConfigs>,
    /// Where stored memberships are read from (see `durable`).
    loader: std::sync::OnceLock<durable::Loader>,
    /// The membership text last stored of each group.
    stored: Mutex<HashMap<String, String>>,
    storing: Mutex<()>,
}

impl ConsumerGroups {
    pub fn new(settings: ConsumerGroupSettings, configs: Arc<GroupConfigs>) -> ConsumerGroups {
        ConsumerGroups {
            groups: Mutex::new(HashMap::new()),
            settings,
            configs,
            loader: std::sync::OnceLock::new(),
            stored: Mutex::new(HashMap::new()),
            storing: Mutex::new(()),
        }
    }

    /// The broker's consumer-group settings.
    pub fn base_settings(&self) -> &ConsumerGroupSettings {
        &self.settings
    }

    /// `group_id`'s settings: the broker's, with the group's own session
    /// timeout and heartbeat interval.
    pub fn settings(&self, group_id: &str) -> ConsumerGroupSettings {
        match self.configs.get(group_id) {
            Some(config) => config.consumer(&self.settings),
            None => self.settings.clone(),
        }
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn default_assignor(&self) -> Assignor {
        self.settings
            .assignors
            .first()
            .copied()
            .unwrap_or(Assignor::Uniform)
    }

    /// Kafka's checks of a heartbeat's fields, in Kafka's order.
    fn validate(&self, heartbeat: &Heartbeat) -> Result<(), ConsumerGroupError> {
        let invalid = |why: &str| Err(ConsumerGroupError::InvalidRequest(why.to_owned()));
        let epoch = heartbeat.member_epoch;
        if heartbeat.member_id.is_empty() {
            return invalid("MemberId can't be empty.");
        }
        if heartbeat.group_id.is_empty() {
            return invalid("GroupId can't be empty.");
        }
        if heartbeat.instance_id.as_deref() == Some("") {
            return invalid("InstanceId can't be empty.");
        }
        if heartbeat.rack_id.as_deref() == Some("") {
            return invalid("RackId can't be empty.");
        }
        if epoch == 0 {
            if heartbeat.rebalance_timeout_ms == -1 {
                return invalid("RebalanceTimeoutMs must be provided in first request.");
            }
            if heartbeat.owned.as_ref().is_none_or(|o| !o.is_empty()) {
                return invalid("TopicPartitions must be empty when (re-)joining.");
            }
            if heartbeat.subscribed_names.is_none() && heartbeat.subscribed_regex.is_none() {
                return invalid(
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                );
            }
        }
        if epoch == LEFT_STATIC && heartbeat.instance_id.is_none() {
            return invalid("InstanceId can't be null.");
        }
        if epoch < LEFT_STATIC {
            return invalid("MemberEpoch is invalid.");
        }
        if let Some(name) = &heartbeat.server_assignor
            && !Assignor::parse(name).is_some_and(|a| self.settings.assignors.contains(&a))
        {
            return Err(ConsumerGroupError::UnsupportedAssignor(name.clone()));
        }
        Ok(())
    }

    /// One ConsumerGroupHeartbeat. `catalog` is the broker's topics now.
    ///
    /// # Errors
    /// Every [`ConsumerGroupError`] but `StaleMemberEpoch`.
    pub fn heartbeat(
        &self,
        heartbeat: Heartbeat,
        catalog: &TopicCatalog,
        now: Instant,
    ) -> Result<HeartbeatAnswer, ConsumerGroupError> {
        self.heartbeat_upgrading(heartbeat, catalog, now, || Ok(None))
    }

    /// One ConsumerGroupHeartbeat that may upgrade a classic group: a join
    /// to a group with no members here first calls `upgrade` (with this
    /// coordinator's lock held, so the group is never in neither
    /// coordinator), which takes the classic group of the id out, if any
    /// (Kafka's online upgrade).
    ///
    /// # Errors
    /// As [`ConsumerGroups::heartbeat`], and `upgrade`'s.
    pub fn heartbeat_upgrading(
        &self,
        heartbeat: Heartbeat,
        catalog: &TopicCatalog,
        now: Instant,
        upgrade: impl FnOnce() -> Result<Option<(i32, Vec<ClassicMember>)>, ConsumerGroupError>,
    ) -> Result<HeartbeatAnswer, ConsumerGroupError> {
        self.validate(&heartbeat)?;
        let regex = match heartbeat.subscribed_regex.as_deref() {
            Some("") | None => None,
            Some(pattern) => Some((
                pattern.to_owned(),
                subscription_regex(pattern)
                    .map_err(|e| ConsumerGroupError::InvalidRegularExpression(e.to_string()))?,
            )),
        };
        let mut groups = self.groups();
        let coordinator_epoch = self.load(&mut groups, &heartbeat.group_id, now);
        let member_id = heartbeat.member_id.clone();
        if heartbeat.member_epoch == LEAVE || heartbeat.member_epoch == LEFT_STATIC {
            return self.leave(&mut groups, &heartbeat, now);
        }
        let joining = heartbeat.member_epoch == 0;
        if joining
            && groups
                .get(&heartbeat.group_id)
                .is_none_or(|g| g.members.is_empty())
            && let Some((generation, members)) = upgrade()?
        {
            let mut adopted = self.adopted(&heartbeat.group_id, generation, members, catalog, now);
            adopted.coordinator_epoch = coordinator_epoch;
            groups.insert(heartbeat.group_id.clone(), adopted);
        }
        let group = if joining {
            groups
                .entry(heartbeat.group_id.clone())
                .or_insert_with(|| Group {
                    coordinator_epoch,
                    ..Group::new(self.default_assignor())
                })
        } else {
            // A group this coordinator does not know (it restarted or took
            // over): the member rejoins, instead of Kafka's fatal
            // GROUP_ID_NOT_FOUND, since membership is not replicated here.
            groups
                .get_mut(&heartbeat.group_id)
                .ok_or(ConsumerGroupError::UnknownMemberId)?
        };
        let full = heartbeat.rebalance_timeout_ms != -1
            && (heartbeat.subscribed_names.is_some() || heartbeat.subscribed_regex.is_some())
            && heartbeat.owned.is_some();
        // A static member returning to its assignment is no change.
        let mut took_over = false;
        if joining {
            took_over = self.join(group, &heartbeat, now)?;
        } else {
            let member = group
                .members
                .get(&member_id)
                .ok_or(ConsumerGroupError::UnknownMemberId)?;
            if let Some(instance) = &heartbeat.instance_id
                && member.instance_id.as_deref() != Some(instance)
            {
                return Err(ConsumerGroupError::FencedInstanceId(instance.clone()));
            }
            let epoch = heartbeat.member_epoch;
            if epoch > member.epoch {
                return Err(ConsumerGroupError::FencedMemberEpoch);
            }
            if epoch < member.epoch {
                // An answer the member did not get: its previous epoch is
                // accepted while it owns nothing beyond its assignment.
                let owns_within = heartbeat
                    .owned
                    .as_ref()
                    .is_some_and(|owned| is_subset(owned, &member.assigned));
                if epoch != member.previous_epoch || !owns_within {
                    return Err(ConsumerGroupError::FencedMemberEpoch);
                }
            }
        }
        let Some(member) = group.members.get_mut(&member_id) else {
            return Err(ConsumerGroupError::UnknownMemberId);
        };
        member.session_deadline = now + self.settings(&heartbeat.group_id).session_timeout;
        if heartbeat.rack_id.is_some() {
            member.rack_id = heartbeat.rack_id.clone();
        }
        if heartbeat.rebalance_timeout_ms > 0 {
            member.rebalance_timeout =
                Duration::from_millis(u64::try_from(heartbeat.rebalance_timeout_ms).unwrap_or(0));
        }
        let mut subscription_changed = joining && !took_over;
        if let Some(names) = &heartbeat.subscribed_names {
            let mut names = names.clone();
            names.sort();
            names.dedup();
            if names != member.names {
                member.names = names;
                subscription_changed = true;
            }
        }
        if heartbeat.subscribed_regex.is_some() {
            let old = member.regex.as_ref().map(|(p, _)| p.as_str());
            if old != regex.as_ref().map(|(p, _)| p.as_str()) {
                member.regex = regex;
                subscription_changed = true;
            }
        }
        if let Some(name) = &heartbeat.server_assignor {
            let assignor = Assignor::parse(name);
            if assignor != member.server_assignor {
                member.server_assignor = assignor;
                subscription_changed = true;
            }
        }
        group.rebalance_if_changed(subscription_changed, catalog, self.default_assignor());
        let before = group
            .members
            .get(&member_id)
            .map(|m| m.assigned.clone())
            .unwrap_or_default();
        group.reconcile(&member_id, heartbeat.owned.as_ref(), now);
        let Some(member) = group.members.get(&member_id) else {
            return Err(ConsumerGroupError::UnknownMemberId);
        };
        let send = joining || full || member.assigned != before;
        Ok(HeartbeatAnswer {
            member_id,
            member_epoch: member.epoch,
            heartbeat_interval: self.settings(&heartbeat.group_id).heartbeat_interval,
            assignment: send.then(|| member.assigned.clone()),
        })
    }

    /// A join (epoch 0): a new member, a known one starting over, or a
    /// static member returning under a new id (`Ok(true)`).
    fn join(
        &self,
        group: &mut Group,
        heartbeat: &Heartbeat,
        now: Instant,
    ) -> Result<bool, ConsumerGroupError> {
        let member_id = &heartbeat.member_id;
        if let Some(instance) = &heartbeat.instance_id
            && let Some(holder) = group.instance_owner(instance)
            && &holder != member_id
        {
            // A classic holder is replaced at once, as Kafka does: a static
            // member restarted on the new protocol (classic members send no
            // leave when they stop).
            let left = group
                .members
                .get(&holder)
                .is_some_and(|m| m.left_static() || m.classic.is_some());
            if !left {
                return Err(ConsumerGroupError::UnreleasedInstanceId(instance.clone()));
            }
            // The returning static member takes over the one that left,
            // assignment and all, without a rebalance.
            if let Some(mut member) = group.members.remove(&holder) {
                if member.classic.take().is_some() {
                    // Its subscription is what this heartbeat names.
                    member.names.clear();
                }
                member.revoking.clear();
                member.revocation_deadline = None;
                member.epoch = 0;
                member.previous_epoch = 0;
                member.state = MemberState::Stable;
                member.client_id = heartbeat.client_id.clone();
                member.client_host = heartbeat.client_host.clone();
                member.session_deadline = now + self.settings(&heartbeat.group_id).session_timeout;
                group.members.insert(member_id.clone(), member);
            }
            if let Some(target) = group.target.remove(&holder) {
                group.target.insert(member_id.clone(), target);
            }
            return Ok(true);
        }
        if let Some(member) = group.members.get_mut(member_id) {
            // Kafka fences a known member rejoining at epoch 0 until its
            // session ends; Sluice takes the rejoin as the member having
            // let go of everything (it reports owning nothing).
            member.assigned.clear();
            member.revoking.clear();
            member.revocation_deadline = None;
            member.previous_epoch = member.epoch;
            member.epoch = 0;
            member.state = MemberState::Stable;
            group.epoch += 1;
            return Ok(false);
        }
        let active = group.members.len();
        if active >= self.settings.max_size {
            return Err(ConsumerGroupError::GroupMaxSizeReached);
        }
        let mut member = Member::new(heartbeat, now);
        member.session_deadline = now + self.settings(&heartbeat.group_id).session_timeout;
        group.members.insert(member_id.clone(), member);
        Ok(false)
    }

    fn leave(
        &self,
        groups: &mut HashMap<String, Group>,
        heartbeat: &Heartbeat,
        now: Instant,
    ) -> Result<HeartbeatAnswer, ConsumerGroupError> {
        let group = groups
            .get_mut(&heartbeat.group_id)
            .ok_or(ConsumerGroupError::UnknownMemberId)?;
        let member_id = match &heartbeat.instance_id {
            Some(instance) => group
                .instance_owner(instance)
                .ok_or(ConsumerGroupError::UnknownMemberId)?,
            None => heartbeat.member_id.clone(),
        };
        if member_id != heartbeat.member_id
            && let Some(instance) = &heartbeat.instance_id
        {
            return Err(ConsumerGroupError::FencedInstanceId(instance.clone()));
        }
        if !group.members.contains_key(&member_id) {
            return Err(ConsumerGroupError::UnknownMemberId);
        }
        if heartbeat.member_epoch == LEFT_STATIC {
            // Kept with its assignment until it returns or its session ends.
            if let Some(member) = group.members.get_mut(&member_id) {
                member.epoch = LEFT_STATIC;
                member.revoking.clear();
                member.revocation_deadline = None;
                member.state = MemberState::Stable;
                member.session_deadline = now + self.settings(&heartbeat.group_id).session_timeout;
            }
        } else {
            group.remove(&member_id);
        }
        Ok(HeartbeatAnswer {
            member_id,
            member_epoch: heartbeat.member_epoch,
            heartbeat_interval: self.settings(&heartbeat.group_id).heartbeat_interval,
            assignment: None,
        })
    }

    /// Fences members whose session ran out, or who kept partitions past
    /// their rebalance timeout; call periodically. Returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut fenced = 0;
        for (group_id, group) in self.groups().iter_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.session_deadline <= now || m.revocation_deadline.is_some_and(|d| d <= now)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for member_id in expired {
                tracing::info!(group = %group_id, member = %member_id, "consumer group member fenced (session or rebalance timeout)");
                group.remove(&member_id);
                fenced += 1;
            }
        }
        fenced
    }

    /// Checks an OffsetCommit (or an OffsetFetch naming a member) against a
    /// consumer group: `None` when there is no consumer group of that id.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
    ) -> Option<Result<(), ConsumerGroupError>> {
        let mut groups = self.groups();
        self.load(&mut groups, group_id, Instant::now());
        let group = groups.get(group_id)?;
        if member_epoch < 0 && member_id.is_empty() {
            return Some(if group.members.is_empty() {
                Ok(())
            } else {
                Err(ConsumerGroupError::UnknownMemberId)
            });
        }
        Some(match group.members.get(member_id) {
            None => Err(ConsumerGroupError::UnknownMemberId),
            // A classic member sends its generation: its member epoch.
            Some(member) if member.classic.is_some() && member.epoch != member_epoch => {
                Err(ConsumerGroupError::IllegalGeneration)
            }
            Some(member) if member.epoch != member_epoch => {
                Err(ConsumerGroupError::StaleMemberEpoch)
            }
            Some(_) => Ok(()),
        })
    }

    /// Checks an offset commit against a consumer group as Kafka does:
    /// `version` is the OffsetCommit's (below 9 is refused for a member,
    /// which must send its epoch), `None` for a TxnOffsetCommit, which may
    /// name no member at all; an epoch above the member's is fenced, one
    /// below it stale. `None` when there is no consumer group of that id.
    pub fn check_offset_commit(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
        version: Option<i16>,
    ) -> Option<Result<(), ConsumerGroupError>> {
        let mut groups = self.groups();
        self.load(&mut groups, group_id, Instant::now());
        let group = groups.get(group_id)?;
        if member_epoch < 0 && group.members.is_empty() {
            return Some(Ok(()));
        }
        if version.is_none() && member_epoch < 0 && member_id.is_empty() {
            return Some(Ok(()));
        }
        Some(match group.members.get(member_id) {
            None => Err(ConsumerGroupError::UnknownMemberId),
            // A classic member commits with its generation, its member
            // epoch, in any version (Kafka's online migration).
            Some(member) if member.classic.is_some() => {
                if member_epoch == member.epoch {
                    Ok(())
                } else {
                    Err(ConsumerGroupError::IllegalGeneration)
                }
            }
            Some(_) if version.is_some_and(|v| v < 9) => {
                Err(ConsumerGroupError::UnsupportedVersion)
            }
            Some(member) if member_epoch > member.epoch => {
                Err(ConsumerGroupError::FencedMemberEpoch)
            }
            Some(member) if member_epoch < member.epoch => {
                Err(ConsumerGroupError::StaleMemberEpoch)
            }
            Some(_) => Ok(()),
        })
    }

    /// Whether a consumer group of this id exists, and has members.
    pub fn exists(&self, group_id: &str) -> Option<bool> {
        let mut groups = self.groups();
        self.load(&mut groups, group_id, Instant::now());
        groups.get(group_id).map(|group| !group.members.is_empty())
    }

    /// Groups with their state, for ListGroups.
    pub fn list(&self) -> Vec<(String, &'static str)> {
        let mut listed: Vec<_> = self
            .groups()
            .iter()
            .map(|(id, group)| (id.clone(), group.state()))
            .collect();
        listed.sort();
        listed
    }

    pub fn describe(&self, group_id: &str) -> Option<ConsumerGroupDescription> {
        let mut groups = self.groups();
        self.load(&mut groups, group_id, Instant::now());
        let group = groups.get(group_id)?;
        Some(ConsumerGroupDescription {
            group_id: group_id.to_owned(),
            state: group.state(),
            group_epoch: group.epoch,
            assignment_epoch: group.assignment_epoch,
            assignor: group.assignor.name(),
            members: group
                .members
                .iter()
                .map(|(id, m)| ConsumerMemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_names: m.names.clone(),
                    subscribed_regex: m.regex.as_ref().map(|(p, _)| p.clone()),
                    assignment: m.assigned.clone(),
                    target: group.target.get(id).cloned().unwrap_or_default(),
                    classic: m.classic.is_some(),
                })
                .collect(),
        })
    }

    /// Forgets an empty group (DeleteGroups, or an upgrade of its id to a
    /// classic group). `Ok(false)`: there was none.
    ///
    /// # Errors
    /// `Err(())` while it has members.
    #[allow(clippy::result_unit_err)]
    pub fn remove_if_empty(&self, group_id: &str) -> Result<bool, ()> {
        let mut groups = self.groups();
        self.load(&mut groups, group_id, Instant::now());
        match groups.get(group_id) {
            Some(group) if !group.members.is_empty() => Err(()),
            Some(_) => {
                groups.remove(group_id);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

mod classic;
mod durable;
pub use classic::{
    CONSUMER_PROTOCOL_TYPE, ClassicJoin, ClassicJoined, ClassicMember, ClassicSynced,
};
pub use durable::{MEMBERSHIP_TOPIC, MembershipLoader};

#[cfg(test)]
mod tests;
